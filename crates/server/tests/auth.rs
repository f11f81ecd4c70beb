//! Who may call, against the real server: static tokens (good, absent,
//! wrong, revoked), each role on each service over gRPC and pRPC,
//! pool-scoped grants, the metrics token, the Origin and Content-Type rules
//! for browsers, and the loopback rule with `--insecure`.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::rpc::*;
use common::{TestServer, http_raw};
use qscheduler_server::audit::AuditOptions;
use qscheduler_server::auth::layer::PolicyCell;
use qscheduler_server::auth::{Policy, Sha256Hash};
use qscheduler_server::config::Config;
use qscheduler_server::{Server, ServerError, ServerOptions};
use qscheduler_wire::qscheduler as adm;
use qscheduler_wire::swarming::v1 as pb;
use tonic::{Code, Status};

const SWARMING: &str = "qs_swarming-token-0123456789";
const ADMIN: &str = "qs_admin-token-0123456789";
const VIEWER: &str = "qs_viewer-token-0123456789";
const P2_ADMIN: &str = "qs_p2-admin-token-0123456789";
const METRICS: &str = "qs_metrics-token-0123456789";

fn hash(t: &str) -> String {
    Sha256Hash::of(t.as_bytes()).to_hex()
}

fn auth_toml() -> String {
    format!(
        r#"
[auth]
allowed_origins = ["https://ui.example.com"]
metrics_token_sha256 = "{}"

[[auth.tokens]]
name = "swarming-prod"
sha256 = "{}"
roles = ["swarming"]
pools = ["p1"]

[[auth.tokens]]
name = "operators"
sha256 = "{}"
roles = ["admin"]

[[auth.tokens]]
name = "dashboards"
sha256 = "{}"
roles = ["view"]
pools = ["p1"]

[[auth.tokens]]
name = "p2-admins"
sha256 = "{}"
roles = ["admin"]
pools = ["p2"]
"#,
        hash(METRICS),
        hash(SWARMING),
        hash(ADMIN),
        hash(VIEWER),
        hash(P2_ADMIN)
    )
}

fn policy() -> Policy {
    Config::parse(&auth_toml(), Path::new("auth.toml"))
        .expect("config parses")
        .auth_policy()
        .expect("policy")
        .expect("[auth] present")
}

fn options(dir: &Path, auth: Option<Policy>) -> ServerOptions {
    ServerOptions {
        store: dir.join("store").to_str().unwrap().to_owned(),
        auth,
        ..ServerOptions::default()
    }
}

const TRANSPORTS: [Transport; 3] = [Transport::Grpc, Transport::PrpcBinary, Transport::PrpcJson];

fn assert_denied(r: Result<impl std::fmt::Debug, Status>, code: Code, words: &[&str]) {
    let e = r.expect_err("refused");
    assert_eq!(e.code(), code, "{e:?}");
    for w in words {
        assert!(e.message().contains(w), "{w:?} not in {:?}", e.message());
    }
    for secret in [SWARMING, ADMIN, VIEWER, P2_ADMIN, METRICS, "qs_wrong"] {
        assert!(!e.message().contains(secret), "a token echoed: {e:?}");
    }
}

fn notify(pool: &str) -> pb::NotifyTasksRequest {
    pb::NotifyTasksRequest {
        scheduler_id: pool.into(),
        notifications: vec![item(0, pending("t1", None, &["os:x"], 0))],
        is_callback: false,
    }
}

fn list(pool: &str) -> adm::ListAccountsRequest {
    adm::ListAccountsRequest {
        pool_id: pool.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_and_pools_on_every_service_over_both_transports() {
    let dir = tempfile::tempdir().unwrap();
    let audit_dir = dir.path().join("audit");
    let server = TestServer::start(ServerOptions {
        audit: Some(AuditOptions::new(audit_dir.clone())),
        ..options(dir.path(), Some(policy()))
    })
    .await;
    let admin = Rpc::connect(server.addr, Transport::Grpc)
        .await
        .with_token(ADMIN);
    for pool in ["p1", "p2"] {
        admin
            .create_scheduler_pool(adm::CreateSchedulerPoolRequest {
                pool_id: pool.into(),
                config: None,
            })
            .await
            .expect("admin creates pools");
    }

    for t in TRANSPORTS {
        let anon = Rpc::connect(server.addr, t).await;
        let c = |token: &str| anon.clone().with_token(token);
        // No credentials, or unknown ones: UNAUTHENTICATED (pRPC 401).
        assert_denied(
            anon.list_accounts(list("p1")).await,
            Code::Unauthenticated,
            &["credentials"],
        );
        assert_denied(
            anon.notify_tasks(notify("p1")).await,
            Code::Unauthenticated,
            &[],
        );
        assert_denied(
            c("qs_wrong")
                .wipe(adm::WipeRequest {
                    pool_id: "p1".into(),
                })
                .await,
            Code::Unauthenticated,
            &["not valid"],
        );

        // swarming: the scheduler API on its pool only.
        let swarming = c(SWARMING);
        swarming
            .notify_tasks(notify("p1"))
            .await
            .expect("swarming on p1");
        swarming
            .get_callbacks(pb::GetCallbacksRequest {
                scheduler_id: "p1".into(),
            })
            .await
            .expect("swarming on p1");
        assert_denied(
            swarming.notify_tasks(notify("p2")).await,
            Code::PermissionDenied,
            &["swarming-prod", "swarming", "\"p2\""],
        );
        assert_denied(
            swarming.list_accounts(list("p1")).await,
            Code::PermissionDenied,
            &["view"],
        );
        assert_denied(
            swarming
                .wipe(adm::WipeRequest {
                    pool_id: "p1".into(),
                })
                .await,
            Code::PermissionDenied,
            &["admin"],
        );

        // view: the views of its pool; ListPools shows only that pool.
        let viewer = c(VIEWER);
        viewer.list_accounts(list("p1")).await.expect("view p1");
        viewer
            .inspect_pool(adm::InspectPoolRequest {
                pool_id: "p1".into(),
                ..Default::default()
            })
            .await
            .expect("inspect p1");
        assert_denied(
            viewer.list_accounts(list("p2")).await,
            Code::PermissionDenied,
            &["view", "\"p2\""],
        );
        let pools = viewer
            .list_pools(adm::ListPoolsRequest::default())
            .await
            .expect("list pools");
        let ids: Vec<_> = pools.pools.iter().map(|p| p.pool_id.as_str()).collect();
        assert_eq!(ids, ["p1"]);
        assert_denied(
            viewer
                .create_account(adm::CreateAccountRequest {
                    pool_id: "p1".into(),
                    account_id: "a".into(),
                    config: None,
                })
                .await,
            Code::PermissionDenied,
            &["admin"],
        );
        assert_denied(
            viewer
                .get_callbacks(pb::GetCallbacksRequest {
                    scheduler_id: "p1".into(),
                })
                .await,
            Code::PermissionDenied,
            &["swarming"],
        );

        // admin implies view, on every pool.
        let admin = c(ADMIN);
        admin.list_accounts(list("p2")).await.expect("admin views");
        let all = admin
            .list_pools(adm::ListPoolsRequest::default())
            .await
            .expect("list pools");
        assert_eq!(all.pools.len(), 2);
        assert_denied(
            admin.notify_tasks(notify("p1")).await,
            Code::PermissionDenied,
            &["swarming"],
        );

        // A pool-scoped admin.
        let p2 = c(P2_ADMIN);
        p2.create_account(adm::CreateAccountRequest {
            pool_id: "p2".into(),
            account_id: "a".into(),
            config: None,
        })
        .await
        .expect("admin of p2");
        for pool in ["p1", "p3"] {
            assert_denied(
                p2.delete_scheduler_pool(adm::DeleteSchedulerPoolRequest {
                    pool_id: pool.into(),
                })
                .await,
                Code::PermissionDenied,
                &["p2-admins", "admin", pool],
            );
            assert_denied(
                p2.create_scheduler_pool(adm::CreateSchedulerPoolRequest {
                    pool_id: pool.into(),
                    config: None,
                })
                .await,
                Code::PermissionDenied,
                &["admin", pool],
            );
        }
    }

    // Probes stay open; metrics need their own token.
    let r = http_raw(server.addr, "GET", "/healthz", &[], b"").await;
    assert_eq!(r.status, 200);
    let r = http_raw(server.addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(r.status, 401, "{r:?}");
    let r = http_raw(
        server.addr,
        "GET",
        "/metrics",
        &[("Authorization", &format!("Bearer {ADMIN}"))],
        b"",
    )
    .await;
    assert_eq!(r.status, 401, "an API token is not the metrics token");
    let r = http_raw(
        server.addr,
        "GET",
        "/metrics",
        &[("Authorization", &format!("Bearer {METRICS}"))],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    let text = r.text();
    assert!(text.contains("qscheduler_insecure 0"), "{text}");
    assert!(
        text.contains("code=\"PERMISSION_DENIED\"") && text.contains("code=\"UNAUTHENTICATED\""),
        "refusals are measured"
    );
    assert!(
        text.contains("qscheduler_admin_calls_total{method=\"Wipe\",code=\"UNAUTHENTICATED\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("qscheduler_admin_calls_total{method=\"CreateSchedulerPool\",code=\"OK\"} 2"),
        "{text}"
    );
    // Anything else needs a known principal too (reflection, unknown paths).
    let r = http_raw(server.addr, "GET", "/nothing-here", &[], b"").await;
    assert_eq!(r.status, 401);
    server.stop().await;

    // Every administrative call is in the audit log, refused ones too.
    let mut records = Vec::new();
    for f in std::fs::read_dir(&audit_dir).unwrap() {
        let text = std::fs::read_to_string(f.unwrap().path()).unwrap();
        for line in text.lines() {
            records.push(serde_json::from_str::<serde_json::Value>(line).unwrap());
        }
    }
    let find = |principal: &str, method: &str, pool: Option<&str>, code: &str| {
        records.iter().any(|r| {
            r["principal"] == principal
                && r["method"] == method
                && pool.is_none_or(|p| r["pool"] == p)
                && r["code"] == code
        })
    };
    assert!(find(
        "token:operators",
        "CreateSchedulerPool",
        Some("p1"),
        "OK"
    ));
    assert!(find("anonymous", "Wipe", None, "UNAUTHENTICATED"));
    assert!(find("token:p2-admins", "CreateAccount", Some("p2"), "OK"));
    assert!(find(
        "token:p2-admins",
        "DeleteSchedulerPool",
        Some("p1"),
        "PERMISSION_DENIED"
    ));
    assert!(find(
        "token:swarming-prod",
        "Wipe",
        None,
        "PERMISSION_DENIED"
    ));
    assert!(
        records
            .iter()
            .all(|r| r["time"].as_str().is_some_and(|t| t.ends_with('Z')))
    );
    let all = serde_json::to_string(&records).unwrap();
    for secret in [SWARMING, ADMIN, VIEWER, P2_ADMIN] {
        assert!(!all.contains(secret), "a token in the audit log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_need_an_allowed_origin_and_a_content_type() {
    let dir = tempfile::tempdir().unwrap();
    let path = "/prpc/qscheduler.QSchedulerView/ListPools";
    let json = [
        ("Content-Type", "application/json"),
        ("Accept", "application/json"),
    ];
    // Without [auth] (loopback): no origin is allowed, and a body without
    // Content-Type is not taken as binary.
    let open = TestServer::start(options(&dir.path().join("open"), None)).await;
    let r = http_raw(open.addr, "POST", path, &json, b"{}").await;
    assert_eq!(r.status, 200, "{r:?}");
    let mut with_origin = json.to_vec();
    with_origin.push(("Origin", "http://evil.example"));
    let r = http_raw(open.addr, "POST", path, &with_origin, b"{}").await;
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.header("x-prpc-grpc-code"), Some("7"));
    assert!(r.text().contains("allowed_origins"), "{r:?}");
    assert!(r.header("access-control-allow-origin").is_none());
    let r = http_raw(
        open.addr,
        "POST",
        "/prpc/qscheduler.QSchedulerAdmin/DeleteSchedulerPool",
        &[],
        b"\x0a\x01p",
    )
    .await;
    assert_eq!(r.status, 415, "{r:?}");
    open.stop().await;

    let server = TestServer::start(options(&dir.path().join("auth"), Some(policy()))).await;
    let bearer = format!("Bearer {ADMIN}");
    let mut allowed = json.to_vec();
    allowed.push(("Origin", "https://ui.example.com"));
    allowed.push(("Authorization", &bearer));
    let r = http_raw(server.addr, "POST", path, &allowed, b"{}").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://ui.example.com")
    );
    // A preflight from the allowed origin needs no credentials.
    let r = http_raw(
        server.addr,
        "OPTIONS",
        path,
        &[("Origin", "https://ui.example.com")],
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.header("access-control-allow-headers").is_some());
    let mut evil = json.to_vec();
    evil.push(("Origin", "https://ui.example.com.evil.example"));
    evil.push(("Authorization", &bearer));
    let r = http_raw(server.addr, "POST", path, &evil, b"{}").await;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.header("access-control-allow-origin").is_none());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_removed_from_the_policy_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    // On a port of its own (port 0), like every test server.
    let server = TestServer::start(options(dir.path(), Some(policy()))).await;
    let cell: Arc<PolicyCell> = server.auth_policy.clone().expect("[auth]");
    let addr = server.addr;
    for t in TRANSPORTS {
        let viewer = Rpc::connect(addr, t).await.with_token(VIEWER);
        viewer
            .list_pools(adm::ListPoolsRequest::default())
            .await
            .expect("known");
    }
    let mut revoked = policy();
    revoked.tokens.retain(|t| t.principal.name != "dashboards");
    cell.set(revoked);
    for t in TRANSPORTS {
        let viewer = Rpc::connect(addr, t).await.with_token(VIEWER);
        assert_denied(
            viewer.list_pools(adm::ListPoolsRequest::default()).await,
            Code::Unauthenticated,
            &["revoked"],
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_addresses_than_loopback_need_auth_or_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(&dir.path().join("a"), None);
    o.listen = "0.0.0.0:0".parse().unwrap();
    match Server::start(o.clone()).await {
        Err(e @ ServerError::Insecure { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("[auth]") && msg.contains("--insecure"),
                "{msg}"
            );
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("started without [auth] on all interfaces"),
    }
    o.insecure = true;
    let server = Server::start(o).await.expect("--insecure starts");
    let text = server.metrics().expect("metrics").render();
    assert!(text.contains("qscheduler_insecure 1"), "{text}");
    drop(server);

    // Replicas with [auth] must be able to tell each other from clients.
    let o = ServerOptions {
        store: "postgres://nobody@127.0.0.1:1/none".into(),
        ..options(&dir.path().join("pg"), Some(policy()))
    };
    match Server::start(o).await {
        Err(e @ ServerError::PeerSecret) => {
            assert!(e.to_string().contains("QSCHEDULER_PEER_SECRET"), "{e}")
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("started without a peer secret"),
    }

    let mut o = options(&dir.path().join("b"), Some(policy()));
    o.listen = "0.0.0.0:0".parse().unwrap();
    let server = Server::start(o).await.expect("[auth] starts");
    let text = server.metrics().expect("metrics").render();
    assert!(text.contains("qscheduler_insecure 0"), "{text}");
}

/// With the event log in PostgreSQL, every administrative call is also a
/// row of the audit table in that database (created by the server), the
/// same record as the file's line; refused calls included, and never a
/// token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_records_go_to_the_event_tables_database() {
    use sqlx::{Connection, Executor, Row};
    let url = common::database_url();
    let schema = common::unique_name("qs_test_audit");
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[store]\ndata_dir = {:?}\n[event_log.postgres]\nenabled = true\nurl = {url:?}\n\
         schema = {schema:?}\n{}",
        dir.path().to_str().unwrap(),
        auth_toml()
    );
    let options = Config::parse(&toml, Path::new("audit.toml"))
        .expect("parses")
        .server_options()
        .expect("options");
    let audit_dir = dir.path().join("audit");
    assert_eq!(
        options.audit.as_ref().map(|a| a.dir.clone()),
        Some(audit_dir.clone())
    );
    let server = TestServer::start(options).await;
    let rpc = Rpc::connect(server.addr, Transport::PrpcBinary).await;
    let admin = rpc.clone().with_token(ADMIN);
    admin.create_pool("p1").await;
    admin.add_account("p1", "a", &[1.0], 10.0).await;
    assert_denied(
        rpc.clone()
            .with_token(SWARMING)
            .wipe(adm::WipeRequest {
                pool_id: "p1".into(),
            })
            .await,
        Code::PermissionDenied,
        &["admin"],
    );
    assert_denied(
        rpc.clone()
            .with_token("qs_wrong-token-0123456789")
            .delete_scheduler_pool(adm::DeleteSchedulerPoolRequest {
                pool_id: "p1".into(),
            })
            .await,
        Code::Unauthenticated,
        &[],
    );
    assert_denied(
        rpc.clone()
            .with_token(P2_ADMIN)
            .delete_scheduler_pool(adm::DeleteSchedulerPoolRequest {
                pool_id: "p1".into(),
            })
            .await,
        Code::PermissionDenied,
        &["p2-admins"],
    );
    // Stopping writes what still waits for the database.
    server.stop().await;

    let mut conn = sqlx::PgConnection::connect(&url)
        .await
        .expect("PostgreSQL at DATABASE_URL (default 127.0.0.1:5432/test)");
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT to_char(\"time\" AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS t,
                principal, method, pool, request, code
         FROM \"{schema}\".audit_log ORDER BY id"
    )))
    .fetch_all(&mut conn)
    .await;
    conn.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
    ))))
    .await
    .unwrap();
    let rows: Vec<serde_json::Value> = rows
        .expect("the audit table exists")
        .iter()
        .map(|r| {
            serde_json::json!({
                "time": r.get::<String, _>("t"),
                "principal": r.get::<String, _>("principal"),
                "method": r.get::<String, _>("method"),
                "pool": r.get::<Option<String>, _>("pool"),
                "request": r.get::<Option<String>, _>("request"),
                "code": r.get::<String, _>("code"),
            })
        })
        .collect();
    let summary: Vec<(&str, &str, Option<&str>, &str)> = rows
        .iter()
        .map(|r| {
            (
                r["principal"].as_str().unwrap(),
                r["method"].as_str().unwrap(),
                r["pool"].as_str(),
                r["code"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("token:operators", "CreateSchedulerPool", Some("p1"), "OK"),
            ("token:operators", "CreateAccount", Some("p1"), "OK"),
            ("token:swarming-prod", "Wipe", None, "PERMISSION_DENIED"),
            ("anonymous", "DeleteSchedulerPool", None, "UNAUTHENTICATED"),
            (
                "token:p2-admins",
                "DeleteSchedulerPool",
                Some("p1"),
                "PERMISSION_DENIED"
            ),
        ]
    );
    assert!(
        rows[1]["request"]
            .as_str()
            .is_some_and(|r| r.contains("account_id: \"a\"")),
        "{rows:?}"
    );

    // The same records as the files' lines.
    let mut lines = Vec::new();
    for f in std::fs::read_dir(&audit_dir).unwrap() {
        let text = std::fs::read_to_string(f.unwrap().path()).unwrap();
        for line in text.lines() {
            lines.push(serde_json::from_str::<serde_json::Value>(line).unwrap());
        }
    }
    assert_eq!(rows, lines);
    let all = serde_json::to_string(&rows).unwrap();
    for secret in [SWARMING, ADMIN, P2_ADMIN, "qs_wrong"] {
        assert!(!all.contains(secret), "a token in the audit table");
    }
}

/// QSchedulerInsight needs `view` on the pool it names, like
/// QSchedulerView; the dashboard lists every pool, so it needs `view` on
/// all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insight_and_the_dashboard_need_view() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(options(dir.path(), Some(policy()))).await;
    let admin = Rpc::connect(server.addr, Transport::Grpc)
        .await
        .with_token(ADMIN);
    admin.create_pool("p1").await;
    admin.create_pool("p2").await;
    let overview = |pool: &str| adm::PoolOverviewRequest {
        pool_id: pool.into(),
    };
    for t in TRANSPORTS {
        let anon = Rpc::connect(server.addr, t).await;
        let c = |token: &str| anon.clone().with_token(token);
        assert_denied(
            anon.pool_overview(overview("p1")).await,
            Code::Unauthenticated,
            &["credentials"],
        );
        c(VIEWER)
            .pool_overview(overview("p1"))
            .await
            .expect("view on p1");
        c(VIEWER)
            .account_report(adm::AccountReportRequest {
                pool_id: "p1".into(),
                window_seconds: 0,
            })
            .await
            .expect("view on p1");
        assert_denied(
            c(VIEWER).pool_overview(overview("p2")).await,
            Code::PermissionDenied,
            &["dashboards", "view", "\"p2\""],
        );
        assert_denied(
            c(VIEWER)
                .explain_task(adm::ExplainTaskRequest {
                    pool_id: "p2".into(),
                    task_id: "t".into(),
                })
                .await,
            Code::PermissionDenied,
            &["view", "\"p2\""],
        );
        assert_denied(
            c(SWARMING).pool_overview(overview("p1")).await,
            Code::PermissionDenied,
            &["swarming-prod", "view"],
        );
        c(ADMIN)
            .pool_overview(overview("p2"))
            .await
            .expect("admin implies view");
    }

    let bearer = |t: &str| format!("Bearer {t}");
    // Without credentials a browser is sent to sign in.
    let r = http_raw(server.addr, "GET", "/ui/", &[], b"").await;
    assert_eq!(r.status, 303, "{r:?}");
    // A viewer of one pool sees that pool only: the list leaves the other
    // out, and its page is refused.
    let r = http_raw(
        server.addr,
        "GET",
        "/ui/",
        &[("Authorization", &bearer(VIEWER))],
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(!r.text().contains("/ui/pool?id=p2"), "{r:?}");
    let r = http_raw(
        server.addr,
        "GET",
        "/ui/pool?id=p2",
        &[("Authorization", &bearer(VIEWER))],
        b"",
    )
    .await;
    assert_eq!(r.status, 403, "view on p1 only: {r:?}");
    let r = http_raw(
        server.addr,
        "GET",
        "/ui/",
        &[("Authorization", &bearer(ADMIN))],
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.text().contains("p2"), "the pools are listed");
    server.stop().await;
}
