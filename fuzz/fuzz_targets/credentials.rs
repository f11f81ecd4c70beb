//! Credential parsing: an `Authorization` header (bytes as a client may
//! send them) with static tokens and JWTs (RS256 and ES256 against a JWKS),
//! the SANs of a client certificate (DER) and their mapping to a
//! principal, the SHA-256 hex of the configuration, and a whole `[auth]`
//! section of a configuration file. Every input is tried every way; the
//! seeds (`seeds/credentials/`) hold one of each kind.
//!
//! No panic may escape, and the answers must be consistent: a header is
//! accepted only as `Bearer <token>` with a printable token, a principal
//! only for a token whose SHA-256 is configured, never for a JWT (the
//! fuzzer does not have the keys' private halves; the seed signed with one
//! has expired), a certificate's principal only for a SAN the policy
//! names, a hash only as 64 lower-case hex digits (which print back the
//! same), and a parsed `[auth]` section always turns into a policy.

#![no_main]

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use qscheduler_server::auth::oidc::{OidcGrant, OidcOptions, OidcVerifier};
use qscheduler_server::auth::{
    CertificateEntry, Grant, Kind, Policy, Pools, Principal, Role, Sha256Hash, TokenEntry,
    bearer_token,
};
use qscheduler_server::config::Config;
use qscheduler_server::tls::sans_of;

const KNOWN: &str = "qs_known-token";
const SAN: &str = "spiffe://example/swarming";
const SUBJECT: &str = "system:serviceaccount:swarming:server";

/// An RSA key (kid `r1`) and a P-256 key (kid `e1`), public halves only.
const JWKS: &str = r#"{"keys": [{"kty": "RSA", "alg": "RS256", "use": "sig", "kid": "r1", "n": "0efPKg-HYOpPKIemnu4WApZVizrz7Oz_pPsy2df3fzlH-pgMPO2FdM7EDUsvZiYvnWOJb2PFC_qK5kq9cgA58lgk6THGXig6V9LhTs4j1jixeGUO7ph058f9qr1lryHrPIWn5rLXOKuxNcTLxq37uVRZ6cxgomLZi4Fe7pIttMeqch35sBE3mGauLLPlrmRksJu--mkN4vXX9tmhtMEIn-js9DNBQuOKhRceuG5WUnX5BuOdrUdaFajsVQghl8MbpC2MvjUgVQVhN4gdlp8ih3ce9QKAcZPdwyoke0u0PEOcGzdO2HBVo3UmlqwFgdOySisiDSwLIYDta_qo-FcXOw", "e": "AQAB"}, {"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": "e1", "x": "ZWn5FDfDALLWKPhIYSf_h1C5OfBR_FI3aCQ3shKFNbI", "y": "gM8OaGCUFnzXkNpLycrkO-zJ9F1YK_NTj_RPQTROCPs"}]}"#;

fn principal(name: &str, kind: Kind) -> Arc<Principal> {
    Arc::new(Principal {
        name: name.into(),
        kind,
        grants: vec![Grant {
            roles: vec![Role::View],
            pools: Pools::All,
        }],
    })
}

/// The policy, with its JWKS file (kept for the whole run).
fn policy() -> &'static Policy {
    static POLICY: OnceLock<(tempfile::TempDir, Policy)> = OnceLock::new();
    &POLICY
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("a temporary directory");
            let jwks = dir.path().join("jwks.json");
            std::fs::write(&jwks, JWKS).expect("the JWKS written");
            let verifier = OidcVerifier::new(OidcOptions {
                issuer: "https://issuer.example".into(),
                audience: "qscheduler".into(),
                jwks_file: jwks,
                grants: vec![
                    OidcGrant {
                        subject: Some(SUBJECT.into()),
                        email: None,
                        principal: principal(SUBJECT, Kind::Oidc),
                    },
                    OidcGrant {
                        subject: None,
                        email: Some("ops@example.com".into()),
                        principal: principal("ops@example.com", Kind::Oidc),
                    },
                ],
                leeway: Duration::from_secs(60),
            })
            .expect("the JWKS loads");
            let policy = Policy {
                tokens: vec![TokenEntry {
                    sha256: Sha256Hash::of(KNOWN.as_bytes()),
                    principal: principal("known", Kind::Token),
                }],
                certificates: vec![CertificateEntry {
                    san: SAN.into(),
                    principal: principal(SAN, Kind::Certificate),
                }],
                oidc: Some(Arc::new(verifier)),
                ..Policy::default()
            };
            (dir, policy)
        })
        .1
}

fuzz_target!(|data: &[u8]| {
    let policy = policy();

    if let Some(token) = bearer_token(data) {
        assert!(!token.is_empty());
        assert!(token.bytes().all(|b| b.is_ascii_graphic()));
        let text = std::str::from_utf8(data).expect("accepted headers are text");
        assert!(text.len() > 6 && text[..6].eq_ignore_ascii_case("bearer"));
    }
    match policy.authenticate(Some(data)) {
        Ok(p) => {
            assert_eq!(p.name, "known");
            assert_eq!(bearer_token(data), Some(KNOWN));
        }
        Err(_) => assert_ne!(bearer_token(data), Some(KNOWN)),
    }
    assert!(policy.metrics_allowed(Some(data)));

    // A JWT alone, as the verifier sees it after the header.
    if let (Some(oidc), Ok(text)) = (&policy.oidc, std::str::from_utf8(data)) {
        let token = bearer_token(data).unwrap_or(text);
        assert!(oidc.verify(token).is_err(), "a forged JWT was accepted");
    }

    // A client certificate: its SANs, and who they are.
    let sans = sans_of(data);
    match policy.certificate_principal(&sans) {
        Ok(p) => {
            assert_eq!(p.name, SAN);
            assert!(sans.iter().any(|s| s == SAN));
        }
        Err(_) => assert!(!sans.iter().any(|s| s == SAN)),
    }

    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(h) = Sha256Hash::parse(text) {
            assert_eq!(h.to_hex(), text);
        }
        let config = format!("[auth]\n{text}");
        if let Ok(c) = Config::parse(&config, Path::new("fuzz.toml")) {
            let _ = c.auth_policy();
        }
    }
});
