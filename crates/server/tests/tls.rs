//! TLS on the server's one port, against the real server with certificates
//! made by rcgen: gRPC and pRPC over TLS with a token, client certificates
//! naming principals by a URI SAN (mTLS), certificates from another CA,
//! expired ones, ones whose SAN has no grant and ones whose grant the
//! configuration dropped refused, plain-text clients refused, and the
//! server certificate replaced in place (as cert-manager does) taking
//! effect without a restart.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TestServer;
use qscheduler_server::ServerOptions;
use qscheduler_server::auth::{
    CertificateEntry, Grant, Kind, Policy, Pools, Principal, Role, Sha256Hash, TokenEntry,
};
use qscheduler_server::tls::TlsOptions;
use qscheduler_wire::prpc::{PrpcClient, client_tls_config};
use qscheduler_wire::qscheduler as adm;
use qscheduler_wire::qscheduler::q_scheduler_admin_client::QSchedulerAdminClient;
use qscheduler_wire::swarming::v1 as pb;
use qscheduler_wire::swarming::v1::external_scheduler_client::ExternalSchedulerClient;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

const ADMIN: &str = "qs_admin-token-0123456789";
const SPIFFE: &str = "spiffe://example/swarming";

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let pem = params.self_signed(&key).unwrap().pem();
    Ca {
        issuer: Issuer::new(params, key),
        pem,
    }
}

/// A leaf certificate (PEM) and its key (PEM).
fn leaf(ca: &Ca, sans: Vec<SanType>) -> (String, String) {
    leaf_with(ca, sans, |_| {})
}

/// [`leaf`] with `edit` applied to its parameters.
fn leaf_with(
    ca: &Ca,
    sans: Vec<SanType>,
    edit: impl FnOnce(&mut CertificateParams),
) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = sans;
    edit(&mut params);
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn uri(s: &str) -> Vec<SanType> {
    vec![SanType::URI(rcgen::string::Ia5String::try_from(s).unwrap())]
}

fn server_sans() -> Vec<SanType> {
    vec![
        SanType::DnsName("localhost".try_into().unwrap()),
        SanType::IpAddress("127.0.0.1".parse().unwrap()),
    ]
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn policy() -> Policy {
    let principal = |name: &str, kind, role| {
        Arc::new(Principal {
            name: name.into(),
            kind,
            grants: vec![Grant {
                roles: vec![role],
                pools: Pools::All,
            }],
        })
    };
    Policy {
        tokens: vec![TokenEntry {
            sha256: Sha256Hash::of(ADMIN.as_bytes()),
            principal: principal("operators", Kind::Token, Role::Admin),
        }],
        certificates: vec![CertificateEntry {
            san: SPIFFE.into(),
            principal: principal(SPIFFE, Kind::Certificate, Role::Swarming),
        }],
        ..Policy::default()
    }
}

fn tonic_tls(ca_pem: &str, identity: Option<&(String, String)>) -> ClientTlsConfig {
    let mut c = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        c = c.identity(Identity::from_pem(cert, key));
    }
    c
}

async fn grpc(
    addr: std::net::SocketAddr,
    tls: ClientTlsConfig,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    Endpoint::from_shared(format!("https://localhost:{}", addr.port()))
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

fn with_token<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {ADMIN}").parse().unwrap());
    r
}

fn notify(pool: &str) -> pb::NotifyTasksRequest {
    pb::NotifyTasksRequest {
        scheduler_id: pool.into(),
        notifications: vec![],
        is_callback: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_and_prpc_over_tls_with_tokens_and_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let ca1 = ca("qscheduler test CA");
    let (cert, key) = leaf(&ca1, server_sans());
    let client = leaf(
        &ca1,
        vec![SanType::URI(
            rcgen::string::Ia5String::try_from(SPIFFE).unwrap(),
        )],
    );
    let stranger_ca = ca("another CA");
    let stranger = leaf(
        &stranger_ca,
        vec![SanType::URI(
            rcgen::string::Ia5String::try_from(SPIFFE).unwrap(),
        )],
    );
    let tls = TlsOptions {
        cert: write(dir.path(), "tls.crt", &cert),
        key: write(dir.path(), "tls.key", &key),
        client_ca: Some(write(dir.path(), "ca.crt", &ca1.pem)),
    };
    let server = TestServer::start(ServerOptions {
        store: dir.path().join("store").to_str().unwrap().to_owned(),
        auth: Some(policy()),
        tls: Some(tls.clone()),
        ..ServerOptions::default()
    })
    .await;
    let addr = server.addr;

    // gRPC with a token.
    let ch = grpc(addr, tonic_tls(&ca1.pem, None)).await.expect("TLS");
    QSchedulerAdminClient::new(ch.clone())
        .create_scheduler_pool(with_token(adm::CreateSchedulerPoolRequest {
            pool_id: "p".into(),
            config: None,
        }))
        .await
        .expect("admin over TLS");
    // Without credentials over TLS: still refused.
    let e = ExternalSchedulerClient::new(ch)
        .notify_tasks(notify("p"))
        .await
        .expect_err("no credentials");
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");

    // gRPC with a client certificate: the principal its SAN names.
    let ch = grpc(addr, tonic_tls(&ca1.pem, Some(&client)))
        .await
        .expect("mTLS");
    ExternalSchedulerClient::new(ch.clone())
        .notify_tasks(notify("p"))
        .await
        .expect("swarming by certificate");
    let e = QSchedulerAdminClient::new(ch)
        .wipe(adm::WipeRequest {
            pool_id: "p".into(),
        })
        .await
        .expect_err("a swarming certificate is not an admin");
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    assert!(e.message().contains(SPIFFE), "{e}");

    // pRPC over TLS: a token, then a client certificate.
    let url = format!("https://localhost:{}", addr.port());
    let prpc = PrpcClient::with_tls(
        &url,
        Some(client_tls_config(Some(ca1.pem.as_bytes()), None).unwrap()),
    )
    .unwrap()
    .with_header("authorization", &format!("Bearer {ADMIN}"))
    .unwrap();
    let pools: adm::ListPoolsResponse = prpc
        .call(
            "qscheduler.QSchedulerView",
            "ListPools",
            &adm::ListPoolsRequest::default(),
        )
        .await
        .expect("pRPC over TLS");
    assert_eq!(pools.pools.len(), 1);
    let identity = (client.0.as_bytes(), client.1.as_bytes());
    let prpc = PrpcClient::with_tls(
        &url,
        Some(client_tls_config(Some(ca1.pem.as_bytes()), Some(identity)).unwrap()),
    )
    .unwrap();
    let _: pb::NotifyTasksResponse = prpc
        .call("swarming.v1.ExternalScheduler", "NotifyTasks", &notify("p"))
        .await
        .expect("pRPC with a client certificate");

    // A certificate from another CA does not get through the handshake.
    let stranger_identity = (stranger.0.as_bytes(), stranger.1.as_bytes());
    let prpc = PrpcClient::with_tls(
        &url,
        Some(client_tls_config(Some(ca1.pem.as_bytes()), Some(stranger_identity)).unwrap()),
    )
    .unwrap();
    let e = prpc
        .call::<_, pb::NotifyTasksResponse>(
            "swarming.v1.ExternalScheduler",
            "NotifyTasks",
            &notify("p"),
        )
        .await
        .expect_err("unknown CA");
    assert_eq!(e.code(), Code::Unavailable, "{e}");

    // Plain text to a TLS port gets nowhere.
    let plain = PrpcClient::new(&format!("http://{addr}")).unwrap();
    assert!(
        plain
            .call::<_, adm::ListPoolsResponse>(
                "qscheduler.QSchedulerView",
                "ListPools",
                &adm::ListPoolsRequest::default(),
            )
            .await
            .is_err()
    );

    // Rotate the server certificate in place, to one from a new CA: new
    // connections get it without a restart.
    let ca2 = ca("rotated CA");
    let (cert2, key2) = leaf(&ca2, server_sans());
    std::fs::write(&tls.key, &key2).unwrap();
    std::fs::write(&tls.cert, &cert2).unwrap();
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let ok = match grpc(addr, tonic_tls(&ca2.pem, None)).await {
            Ok(ch) => QSchedulerAdminClient::new(ch)
                .wipe(with_token(adm::WipeRequest {
                    pool_id: "p".into(),
                }))
                .await
                .is_ok(),
            Err(_) => false,
        };
        if ok {
            break;
        }
        assert!(Instant::now() < until, "the new certificate is not served");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let old = grpc(addr, tonic_tls(&ca1.pem, None)).await;
    let refused = match old {
        Err(_) => true,
        Ok(ch) => QSchedulerAdminClient::new(ch)
            .wipe(with_token(adm::WipeRequest {
                pool_id: "p".into(),
            }))
            .await
            .is_err(),
    };
    assert!(
        refused,
        "clients trusting only the old CA no longer connect"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_unknown_expired_or_revoked_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca1 = ca("qscheduler test CA");
    let (cert, key) = leaf(&ca1, server_sans());
    let client = leaf(&ca1, uri(SPIFFE));
    let unknown = leaf(&ca1, uri("spiffe://example/intruder"));
    let expired = leaf_with(&ca1, uri(SPIFFE), |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    let server = TestServer::start(ServerOptions {
        store: dir.path().join("store").to_str().unwrap().to_owned(),
        auth: Some(policy()),
        tls: Some(TlsOptions {
            cert: write(dir.path(), "tls.crt", &cert),
            key: write(dir.path(), "tls.key", &key),
            client_ca: Some(write(dir.path(), "ca.crt", &ca1.pem)),
        }),
        ..ServerOptions::default()
    })
    .await;
    let addr = server.addr;
    let ch = grpc(addr, tonic_tls(&ca1.pem, None)).await.expect("TLS");
    QSchedulerAdminClient::new(ch)
        .create_scheduler_pool(with_token(adm::CreateSchedulerPoolRequest {
            pool_id: "p".into(),
            config: None,
        }))
        .await
        .expect("admin over TLS");
    let url = format!("https://localhost:{}", addr.port());
    let notify_as = |identity: &(String, String)| {
        let prpc = PrpcClient::with_tls(
            &url,
            Some(
                client_tls_config(
                    Some(ca1.pem.as_bytes()),
                    Some((identity.0.as_bytes(), identity.1.as_bytes())),
                )
                .unwrap(),
            ),
        )
        .unwrap();
        async move {
            prpc.call::<_, pb::NotifyTasksResponse>(
                "swarming.v1.ExternalScheduler",
                "NotifyTasks",
                &notify("p"),
            )
            .await
        }
    };
    notify_as(&client).await.expect("the granted certificate");

    // The right CA, but a SAN no grant names: over gRPC and pRPC.
    let e = notify_as(&unknown).await.expect_err("unknown SAN");
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    assert!(e.message().contains("[[tls.grants]]"), "{e}");
    let ch = grpc(addr, tonic_tls(&ca1.pem, Some(&unknown)))
        .await
        .expect("the handshake passes");
    let e = ExternalSchedulerClient::new(ch)
        .notify_tasks(notify("p"))
        .await
        .expect_err("unknown SAN");
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");

    // Expired: the handshake fails.
    let e = notify_as(&expired).await.expect_err("expired");
    assert_eq!(e.code(), Code::Unavailable, "{e}");

    // The configuration drops the grant: the same certificate is refused
    // from the next call on.
    let mut revoked = policy();
    revoked.certificates.clear();
    server.auth_policy.as_ref().expect("[auth]").set(revoked);
    let e = notify_as(&client).await.expect_err("revoked");
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    assert!(e.message().contains(SPIFFE), "{e}");
    server.stop().await;
}
