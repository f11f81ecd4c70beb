//! Two replicas with `[auth]` on one PostgreSQL database: calls forwarded
//! to a pool's owner keep the caller's identity, and a client can neither
//! pose as a replica (a spoofed `x-qscheduler-forwarded-by` marker, a
//! forwarded principal or a wrong peer secret) nor make a replica delete a
//! pool another replica owns.

mod common;

use std::time::{Duration, Instant};

use common::TestServer;
use qscheduler_server::ServerOptions;
use qscheduler_server::auth::layer::{FORWARDED_PRINCIPAL, PEER_SECRET_HEADER};
use qscheduler_server::auth::{
    Grant, Kind, Policy, Pools, Principal, Role, Sha256Hash, TokenEntry,
};
use qscheduler_server::registry::home;
use qscheduler_store::Replica;
use qscheduler_wire::qscheduler as adm;
use qscheduler_wire::qscheduler::q_scheduler_admin_client::QSchedulerAdminClient;
use qscheduler_wire::qscheduler::q_scheduler_view_client::QSchedulerViewClient;
use tonic::Code;
use tonic::transport::Channel;

const ADMIN: &str = "qs_admin-token-0123456789";
const VIEWER: &str = "qs_viewer-token-0123456789";
const PEER_SECRET: &str = "peer-secret-0123456789abcdef";

fn token(t: &str, name: &str, role: Role, pools: Pools) -> TokenEntry {
    TokenEntry {
        sha256: Sha256Hash::of(t.as_bytes()),
        principal: std::sync::Arc::new(Principal {
            name: name.into(),
            kind: Kind::Token,
            grants: vec![Grant {
                roles: vec![role],
                pools,
            }],
        }),
    }
}

async fn replica(id: &str, schema: &str, pool_for_viewer: &str) -> TestServer {
    replica_with(id, schema, pool_for_viewer, None).await
}

async fn replica_with(
    id: &str,
    schema: &str,
    pool_for_viewer: &str,
    tls: Option<qscheduler_server::tls::TlsOptions>,
) -> TestServer {
    let mut o = ServerOptions {
        store: common::database_url(),
        auth: Some(Policy {
            tokens: vec![
                token(ADMIN, "operators", Role::Admin, Pools::All),
                token(
                    VIEWER,
                    "dashboards",
                    Role::View,
                    Pools::Only(vec![pool_for_viewer.into()]),
                ),
            ],
            ..Policy::default()
        }),
        peer_secret: Some(PEER_SECRET.into()),
        tls,
        adopt_every: Duration::from_millis(200),
        ..ServerOptions::default()
    };
    o.store_options.replica_id = id.into();
    o.store_options.pg_schema = Some(schema.into());
    o.event_log = Default::default();
    TestServer::start(o).await
}

fn request<T>(msg: T, token: &str, extra: &[(&str, &str)]) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    let md = r.metadata_mut();
    md.insert("authorization", format!("Bearer {token}").parse().unwrap());
    for (k, v) in extra {
        md.append(
            tonic::metadata::MetadataKey::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    r
}

async fn channel(server: &TestServer) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_forwarding_markers_are_ignored_and_identity_travels() {
    let schema = common::unique_name("qs_test_auth_replicas");
    // The pool is chosen once both replicas are up: its home must be a.
    let probe = "auth-fwd-0";
    let a = replica("a", &schema, probe).await;
    let b = replica("b", &schema, probe).await;
    let live = vec![
        Replica {
            replica_id: "a".into(),
            address: a.addr.to_string(),
        },
        Replica {
            replica_id: "b".into(),
            address: b.addr.to_string(),
        },
    ];
    let homed_at_a: Vec<String> = (0..200)
        .map(|i| format!("auth-fwd-{i}"))
        .filter(|p| home(p, &live).is_some_and(|h| h.replica_id == "a"))
        .take(2)
        .collect();
    let (pool, other) = (homed_at_a[0].clone(), homed_at_a[1].clone());

    let (ca, cb) = (channel(&a).await, channel(&b).await);
    let mut admin_a = QSchedulerAdminClient::new(ca.clone());
    let mut admin_b = QSchedulerAdminClient::new(cb.clone());
    let mut view_b = QSchedulerViewClient::new(cb.clone());
    for p in [&pool, &other] {
        admin_b
            .create_scheduler_pool(request(
                adm::CreateSchedulerPoolRequest {
                    pool_id: p.clone(),
                    config: None,
                },
                ADMIN,
                &[],
            ))
            .await
            .expect("create through b");
    }
    let until = Instant::now() + Duration::from_secs(20);
    while !(a.registry.open_ids().contains(&pool) && a.registry.open_ids().contains(&other)) {
        assert!(Instant::now() < until, "a adopts its pools");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Through b, calls reach a and are authorized there as their caller.
    view_b
        .list_accounts(request(
            adm::ListAccountsRequest {
                pool_id: pool.clone(),
            },
            ADMIN,
            &[],
        ))
        .await
        .expect("forwarded view");

    // A marker that the call already passed through a replica, from a
    // client: ignored, so b still forwards to the owner (it used to refuse
    // the call, or serve it itself).
    for hops in [1, 2] {
        let markers: Vec<(&str, &str)> = (0..hops)
            .map(|_| ("x-qscheduler-forwarded-by", "a"))
            .collect();
        view_b
            .list_accounts(request(
                adm::ListAccountsRequest {
                    pool_id: pool.clone(),
                },
                ADMIN,
                &markers,
            ))
            .await
            .expect("spoofed markers are ignored");
    }
    // A wrong peer secret proves nothing either.
    view_b
        .list_accounts(request(
            adm::ListAccountsRequest {
                pool_id: pool.clone(),
            },
            ADMIN,
            &[
                ("x-qscheduler-forwarded-by", "a"),
                (PEER_SECRET_HEADER, "not-the-secret-0123456789"),
            ],
        ))
        .await
        .expect("a wrong peer secret is ignored");

    // A viewer of `probe` only cannot borrow another principal's identity.
    let e = view_b
        .list_accounts(request(
            adm::ListAccountsRequest {
                pool_id: other.clone(),
            },
            VIEWER,
            &[(FORWARDED_PRINCIPAL, "operators")],
        ))
        .await
        .expect_err("the forwarded principal header is a peer's only");
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    assert!(e.message().contains("dashboards"), "{e}");

    // A spoofed marker on a deletion sent to the replica that does not own
    // the pool: b forwards it to a, which deletes the pool and stops
    // serving it at once (b deleting it behind a's back would leave a
    // serving a pool that no longer exists).
    admin_b
        .delete_scheduler_pool(request(
            adm::DeleteSchedulerPoolRequest {
                pool_id: other.clone(),
            },
            ADMIN,
            &[("x-qscheduler-forwarded-by", "a")],
        ))
        .await
        .expect("deleted through the owner");
    assert!(
        !a.registry.open_ids().contains(&other),
        "the owner deleted the pool itself"
    );
    let e = admin_a
        .wipe(request(
            adm::WipeRequest {
                pool_id: other.clone(),
            },
            ADMIN,
            &[],
        ))
        .await
        .expect_err("gone");
    assert_eq!(e.code(), Code::NotFound, "{e}");

    a.stop().await;
    b.stop().await;
    if let Ok(pg) = sqlx::PgPool::connect(&common::database_url()).await {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
        )))
        .execute(&pg)
        .await;
    }
}

/// With TLS on the replicas' ports, forwarding goes over TLS, the peers
/// checked against the client CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_over_tls() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![
        SanType::IpAddress("127.0.0.1".parse().unwrap()),
        SanType::DnsName("localhost".try_into().unwrap()),
    ];
    let cert = params.signed_by(&key, &issuer).unwrap();
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let tls = qscheduler_server::tls::TlsOptions {
        cert: file("tls.crt", &cert.pem()),
        key: file("tls.key", &key.serialize_pem()),
        client_ca: Some(file("ca.crt", &ca_pem)),
    };
    let schema = common::unique_name("qs_test_auth_tls");
    let a = replica_with("a", &schema, "-", Some(tls.clone())).await;
    let b = replica_with("b", &schema, "-", Some(tls)).await;
    let live = vec![
        Replica {
            replica_id: "a".into(),
            address: a.addr.to_string(),
        },
        Replica {
            replica_id: "b".into(),
            address: b.addr.to_string(),
        },
    ];
    let pool = (0..200)
        .map(|i| format!("auth-tls-{i}"))
        .find(|p| home(p, &live).is_some_and(|h| h.replica_id == "a"))
        .unwrap();
    let cb = tonic::transport::Endpoint::from_shared(format!("https://{}", b.addr))
        .unwrap()
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&ca_pem)),
        )
        .unwrap()
        .connect()
        .await
        .expect("TLS to b");
    QSchedulerAdminClient::new(cb.clone())
        .create_scheduler_pool(request(
            adm::CreateSchedulerPoolRequest {
                pool_id: pool.clone(),
                config: None,
            },
            ADMIN,
            &[],
        ))
        .await
        .expect("create through b");
    let until = Instant::now() + Duration::from_secs(20);
    while !a.registry.open_ids().contains(&pool) {
        assert!(Instant::now() < until, "a adopts its pool");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    QSchedulerViewClient::new(cb)
        .list_accounts(request(
            adm::ListAccountsRequest {
                pool_id: pool.clone(),
            },
            ADMIN,
            &[],
        ))
        .await
        .expect("forwarded to a over TLS");
    a.stop().await;
    b.stop().await;
    if let Ok(pg) = sqlx::PgPool::connect(&common::database_url()).await {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
        )))
        .execute(&pg)
        .await;
    }
}
