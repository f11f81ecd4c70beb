//! OIDC / JWT bearer tokens against the real server, with ES256 keys made
//! by rcgen and a JWKS file: a good token (by subject and by verified
//! email, over gRPC and pRPC), and absent, malformed, expired, not yet
//! valid, wrong-audience, wrong-issuer, wrong-key and unknown-subject ones;
//! the clock-skew allowance; and a key rotation in the JWKS file taking
//! effect without a restart. Then RS256 (the keys of Google and of
//! Kubernetes) next to ES256 in one JWKS: good tokens with and without a
//! key id, wrong keys, key ids and algorithms, and a grant the
//! configuration drops.

mod common;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use common::TestServer;
use common::rpc::*;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use qscheduler_server::ServerOptions;
use qscheduler_server::config::Config;
use qscheduler_wire::qscheduler as adm;
use qscheduler_wire::swarming::v1 as pb;
use rcgen::KeyPair;
use serde_json::json;
use tonic::{Code, Status};

const ISSUER: &str = "https://kubernetes.default.svc";
const AUDIENCE: &str = "qscheduler";
const SUBJECT: &str = "system:serviceaccount:swarming:server";

struct Key {
    kid: String,
    pair: KeyPair,
}

impl Key {
    fn new(kid: &str) -> Key {
        Key {
            kid: kid.into(),
            pair: KeyPair::generate().unwrap(),
        }
    }

    fn jwk(&self) -> serde_json::Value {
        let raw = self.pair.public_key_raw();
        assert_eq!(raw.len(), 65, "an uncompressed P-256 point");
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        json!({
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": self.kid,
            "x": b64(&raw[1..33]), "y": b64(&raw[33..65]),
        })
    }

    fn sign(&self, claims: serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(
            &header,
            &claims,
            &EncodingKey::from_ec_der(&self.pair.serialize_der()),
        )
        .unwrap()
    }
}

/// An RSA key of `tests/keys` (generating one takes long in a debug build).
struct RsaKey {
    kid: String,
    key: EncodingKey,
}

impl RsaKey {
    fn new(kid: &str, pem: &str) -> RsaKey {
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        RsaKey {
            kid: kid.into(),
            key: EncodingKey::from_rsa_der(&der),
        }
    }

    fn jwk(&self) -> serde_json::Value {
        let mut jwk = Jwk::from_encoding_key(&self.key, Algorithm::RS256).unwrap();
        jwk.common.key_id = Some(self.kid.clone());
        let v = serde_json::to_value(jwk).unwrap();
        assert_eq!(v["kty"], "RSA");
        assert_eq!(v["alg"], "RS256");
        v
    }

    /// Signed with `alg`, naming key `kid` (`None`: no key id).
    fn sign_as(&self, alg: Algorithm, kid: Option<&str>, claims: serde_json::Value) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, &claims, &self.key).unwrap()
    }

    fn sign(&self, claims: serde_json::Value) -> String {
        self.sign_as(Algorithm::RS256, Some(&self.kid), claims)
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn claims(sub: &str, exp_in: i64) -> serde_json::Value {
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now(), "exp": now() + exp_in})
}

fn write_jwks(path: &Path, keys: &[&Key]) {
    let doc = json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()});
    std::fs::write(path, doc.to_string()).unwrap();
}

/// An `[auth.oidc]` policy reading `jwks` that grants `swarming` and
/// `admin` to `subject`.
fn oidc_policy(jwks: &Path, subject: &str) -> qscheduler_server::auth::Policy {
    let config = format!(
        r#"
[auth]
[auth.oidc]
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
jwks_file = {:?}

[[auth.oidc.grants]]
subject = "{subject}"
roles = ["swarming", "admin"]
"#,
        jwks.to_str().unwrap()
    );
    Config::parse(&config, Path::new("oidc.toml"))
        .expect("parses")
        .auth_policy()
        .expect("policy")
        .expect("[auth]")
}

fn notify() -> pb::NotifyTasksRequest {
    pb::NotifyTasksRequest {
        scheduler_id: "p".into(),
        notifications: vec![],
        is_callback: false,
    }
}

fn refused(r: Result<impl std::fmt::Debug, Status>, code: Code, why: &str, token: &str) {
    let e = r.expect_err("refused");
    assert_eq!(e.code(), code, "{e:?}");
    assert!(e.message().contains(why), "{why:?} not in {e:?}");
    assert!(
        token.is_empty() || !e.message().contains(token),
        "the token was echoed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_bearer_tokens_from_a_jwks_file() {
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    let k1 = Key::new("k1");
    write_jwks(&jwks, &[&k1]);
    let config = format!(
        r#"
[auth]
[auth.oidc]
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
jwks_file = {:?}
clock_skew = "60s"

[[auth.oidc.grants]]
subject = "{SUBJECT}"
roles = ["swarming"]

[[auth.oidc.grants]]
email = "ops@example.com"
roles = ["admin"]
"#,
        jwks.to_str().unwrap()
    );
    let policy = Config::parse(&config, Path::new("oidc.toml"))
        .expect("parses")
        .auth_policy()
        .expect("policy")
        .expect("[auth]");
    let server = TestServer::start(ServerOptions {
        store: dir.path().join("store").to_str().unwrap().to_owned(),
        auth: Some(policy),
        ..ServerOptions::default()
    })
    .await;
    let ops = k1.sign(json!({
        "iss": ISSUER, "aud": [AUDIENCE, "other"], "sub": "1234", "email": "ops@example.com",
        "email_verified": true, "exp": now() + 600,
    }));
    Rpc::connect(server.addr, Transport::Grpc)
        .await
        .with_token(&ops)
        .create_pool("p")
        .await;

    let good = k1.sign(claims(SUBJECT, 600));
    for t in [Transport::Grpc, Transport::PrpcBinary] {
        let anon = Rpc::connect(server.addr, t).await;
        let c = |token: &str| anon.clone().with_token(token);
        c(&good).notify_tasks(notify()).await.expect("good token");
        // Cached: the same token again.
        c(&good).notify_tasks(notify()).await.expect("good token");
        refused(
            c(&good)
                .wipe(adm::WipeRequest {
                    pool_id: "p".into(),
                })
                .await,
            Code::PermissionDenied,
            SUBJECT,
            &good,
        );
        refused(
            anon.notify_tasks(notify()).await,
            Code::Unauthenticated,
            "credentials",
            "",
        );
        let garbage = "eyJhbGciOiJFUzI1NiJ9.e30.c2ln";
        refused(
            c(garbage).notify_tasks(notify()).await,
            Code::Unauthenticated,
            "not valid",
            garbage,
        );
        let cases = [
            (k1.sign(claims(SUBJECT, -3600)), "expired"),
            (
                k1.sign(json!({"iss": ISSUER, "aud": AUDIENCE, "sub": SUBJECT,
                               "nbf": now() + 3600, "exp": now() + 7200})),
                "not valid yet",
            ),
            (
                k1.sign(json!({"iss": ISSUER, "aud": "someone-else", "sub": SUBJECT,
                               "exp": now() + 600})),
                "another audience",
            ),
            (
                k1.sign(
                    json!({"iss": "https://evil.example", "aud": AUDIENCE, "sub": SUBJECT,
                               "exp": now() + 600}),
                ),
                "another issuer",
            ),
            (
                Key::new("k1").sign(claims(SUBJECT, 600)),
                "signed by no key",
            ),
            (
                k1.sign(json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "nobody",
                               "email": "ops@example.com", "email_verified": false,
                               "exp": now() + 600})),
                "\"nobody\"",
            ),
        ];
        for (token, why) in &cases {
            refused(
                c(token).notify_tasks(notify()).await,
                Code::Unauthenticated,
                why,
                token,
            );
        }
        // Expired, but within the clock-skew allowance.
        c(&k1.sign(claims(SUBJECT, -10)))
            .notify_tasks(notify())
            .await
            .expect("within the skew");
    }

    // The issuer rotates its key: the file changes, the new key's tokens
    // are accepted and the old key's refused, without a restart.
    let k2 = Key::new("k2");
    write_jwks(&jwks, &[&k2]);
    let rpc = Rpc::connect(server.addr, Transport::Grpc).await;
    let fresh = k2.sign(claims(SUBJECT, 600));
    let until = Instant::now() + Duration::from_secs(30);
    while rpc
        .clone()
        .with_token(&fresh)
        .notify_tasks(notify())
        .await
        .is_err()
    {
        assert!(Instant::now() < until, "the new key is not used");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    refused(
        rpc.clone().with_token(&good).notify_tasks(notify()).await,
        Code::Unauthenticated,
        "signed by no key",
        &good,
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_and_es256_keys_in_one_jwks() {
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    let r1 = RsaKey::new("r1", include_str!("keys/rsa-test-1.pem"));
    let r2 = RsaKey::new("r2", include_str!("keys/rsa-test-2.pem"));
    let e1 = Key::new("e1");
    // The EC key first: a token without a key id must not stop at it.
    let doc = json!({"keys": [e1.jwk(), r1.jwk()]});
    std::fs::write(&jwks, doc.to_string()).unwrap();
    let server = TestServer::start(ServerOptions {
        store: dir.path().join("store").to_str().unwrap().to_owned(),
        auth: Some(oidc_policy(&jwks, SUBJECT)),
        ..ServerOptions::default()
    })
    .await;
    let good = claims(SUBJECT, 600);
    Rpc::connect(server.addr, Transport::Grpc)
        .await
        .with_token(&r1.sign(good.clone()))
        .create_pool("p")
        .await;

    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let unsigned = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(good.to_string().as_str())
    );
    // HS256 keyed with the RSA key's public modulus: the classic
    // algorithm confusion.
    let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(r1.jwk()["n"].as_str().unwrap())
        .unwrap();
    let mut hs256 = Header::new(Algorithm::HS256);
    hs256.kid = Some("r1".into());
    let confused =
        jsonwebtoken::encode(&hs256, &good, &EncodingKey::from_secret(&n).unwrap()).unwrap();
    for t in [Transport::Grpc, Transport::PrpcBinary] {
        let anon = Rpc::connect(server.addr, t).await;
        let c = |token: &str| anon.clone().with_token(token);
        for (token, what) in [
            (r1.sign(good.clone()), "RS256 with its key id"),
            (
                r1.sign_as(Algorithm::RS256, None, claims(SUBJECT, 601)),
                "RS256 without a key id",
            ),
            (e1.sign(claims(SUBJECT, 602)), "ES256 from the same JWKS"),
        ] {
            c(&token).notify_tasks(notify()).await.expect(what);
        }
        let cases = [
            // Wrong key: not in the JWKS, under a listed key id or none.
            (
                r2.sign_as(Algorithm::RS256, Some("r1"), good.clone()),
                "signed by no key",
            ),
            (
                r2.sign_as(Algorithm::RS256, None, good.clone()),
                "signed by no key",
            ),
            // Wrong key id: unknown, or the EC key's for an RS256 token.
            (
                r1.sign_as(Algorithm::RS256, Some("r9"), good.clone()),
                "signed by no key",
            ),
            (
                r1.sign_as(Algorithm::RS256, Some("e1"), good.clone()),
                "signed by no key",
            ),
            // Wrong algorithm: another RSA one, HMAC, none.
            (
                r1.sign_as(Algorithm::RS384, Some("r1"), good.clone()),
                "algorithm other than RS256 or ES256",
            ),
            (confused.clone(), "algorithm other than RS256 or ES256"),
            (unsigned.clone(), "a JWT that is not valid"),
            // The claims are checked as for ES256.
            (r1.sign(claims(SUBJECT, -3600)), "expired"),
            (
                r1.sign(json!({"iss": ISSUER, "aud": "someone-else", "sub": SUBJECT,
                               "exp": now() + 600})),
                "another audience",
            ),
        ];
        for (token, why) in &cases {
            refused(
                c(token).notify_tasks(notify()).await,
                Code::Unauthenticated,
                why,
                token,
            );
        }
    }

    // The configuration no longer grants the subject anything: its tokens,
    // verified and cached a moment ago, are refused from the next call on.
    server
        .auth_policy
        .as_ref()
        .expect("[auth]")
        .set(oidc_policy(&jwks, "system:serviceaccount:swarming:other"));
    for t in [Transport::Grpc, Transport::PrpcBinary] {
        let token = r1.sign(good.clone());
        refused(
            Rpc::connect(server.addr, t)
                .await
                .with_token(&token)
                .notify_tasks(notify())
                .await,
            Code::Unauthenticated,
            "not named in [[auth.oidc.grants]]",
            &token,
        );
    }
    server.stop().await;
}

/// The cost of verifying a JWT (ES256 and RS256) and of a cache hit;
/// prints the figures, asserts nothing about time. Run with `--ignored
/// --nocapture`, ideally with `--release`.
#[test]
#[ignore]
fn jwt_validation_cost() {
    use qscheduler_server::auth::oidc::{OidcGrant, OidcOptions, OidcVerifier};
    use qscheduler_server::auth::{Grant, Kind, Pools, Principal, Role};
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    let e1 = Key::new("e1");
    let r1 = RsaKey::new("r1", include_str!("keys/rsa-test-1.pem"));
    std::fs::write(&jwks, json!({"keys": [e1.jwk(), r1.jwk()]}).to_string()).unwrap();
    let verifier = OidcVerifier::new(OidcOptions {
        issuer: ISSUER.into(),
        audience: AUDIENCE.into(),
        jwks_file: jwks,
        grants: vec![OidcGrant {
            subject: Some(SUBJECT.into()),
            email: None,
            principal: std::sync::Arc::new(Principal {
                name: SUBJECT.into(),
                kind: Kind::Oidc,
                grants: vec![Grant {
                    roles: vec![Role::Swarming],
                    pools: Pools::All,
                }],
            }),
        }],
        leeway: Duration::from_secs(60),
    })
    .unwrap();
    let n = 500;
    let sign: [(&str, &dyn Fn(serde_json::Value) -> String); 2] =
        [("ES256", &|c| e1.sign(c)), ("RS256", &|c| r1.sign(c))];
    for (i, (alg, sign)) in sign.into_iter().enumerate() {
        // Distinct tokens (different exp), so none is a cache hit.
        let base = 600 + 10_000 * i as i64;
        let tokens: Vec<String> = (0..n).map(|k| sign(claims(SUBJECT, base + k))).collect();
        let start = Instant::now();
        for t in &tokens {
            verifier.verify(t).unwrap();
        }
        let full = start.elapsed() / n as u32;
        let start = Instant::now();
        for _ in 0..10 {
            for t in &tokens {
                verifier.verify(t).unwrap();
            }
        }
        let cached = start.elapsed() / (10 * n) as u32;
        println!("{alg} JWT: {full:?} per verification, {cached:?} per cache hit");
    }
}
