//! Signing in to the dashboard when `[auth]` is on, against the real server:
//! the redirect to the sign-in page, bad and good tokens, the session
//! cookie's attributes, per-pool grants on every page, the Origin rule on
//! the form, the authenticating proxy's header, and sign-out.

mod common;

use std::path::Path;

use common::rpc::*;
use common::{HttpResponse, TestServer, http_raw};
use qscheduler_server::ServerOptions;
use qscheduler_server::auth::Sha256Hash;
use qscheduler_server::config::Config;
use qscheduler_wire::qscheduler as adm;

const ADMIN: &str = "qs_admin-token-0123456789";
const VIEW_ALL: &str = "qs_view-all-token-0123456789";
const VIEW_P1: &str = "qs_view-p1-token-0123456789";
const SWARMING: &str = "qs_swarming-token-0123456789";
const WRONG: &str = "qs_wrong-token-0123456789";

fn hash(t: &str) -> String {
    Sha256Hash::of(t.as_bytes()).to_hex()
}

fn config() -> Config {
    let toml = format!(
        r#"
[auth]
dashboard_session_ttl = "1h"
dashboard_max_sessions = 50
proxy_user_header = "X-Forwarded-User"

[[auth.tokens]]
name = "operators"
sha256 = "{}"
roles = ["admin"]

[[auth.tokens]]
name = "dashboards"
sha256 = "{}"
roles = ["view"]

[[auth.tokens]]
name = "p1-viewers"
sha256 = "{}"
roles = ["view"]
pools = ["p1"]

[[auth.tokens]]
name = "bots"
sha256 = "{}"
roles = ["swarming"]
"#,
        hash(ADMIN),
        hash(VIEW_ALL),
        hash(VIEW_P1),
        hash(SWARMING)
    );
    Config::parse(&toml, Path::new("auth.toml")).expect("the new [auth] settings parse")
}

fn form(token: &str, next: &str) -> Vec<u8> {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    };
    format!("token={}&next={}", enc(token), enc(next)).into_bytes()
}

const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");

fn assert_no_secret(r: &HttpResponse) {
    let all = format!("{:?} {}", r.headers, r.text());
    for secret in [ADMIN, VIEW_ALL, VIEW_P1, SWARMING, WRONG] {
        assert!(!all.contains(secret), "a token echoed: {all}");
    }
}

/// Signs in with `token`; returns the session cookie (`name=value`).
async fn sign_in(addr: std::net::SocketAddr, token: &str) -> String {
    let r = http_raw(addr, "POST", "/ui/signin", &[FORM], &form(token, "/ui/")).await;
    assert_eq!(r.status, 303, "{}", r.text());
    assert_no_secret(&r);
    let cookie = r.header("set-cookie").expect("a session cookie").to_owned();
    cookie.split(';').next().unwrap().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_sign_in_sessions_and_grants() {
    let dir = tempfile::tempdir().unwrap();
    let config = config();
    let options = ServerOptions {
        store: dir.path().join("store").to_str().unwrap().to_owned(),
        auth: config.auth_policy().expect("policy"),
        ..ServerOptions::default()
    };
    let server = TestServer::start(options).await;
    let addr = server.addr;
    let admin = Rpc::connect(addr, Transport::Grpc).await.with_token(ADMIN);
    for pool in ["p1", "p2"] {
        admin
            .create_scheduler_pool(adm::CreateSchedulerPoolRequest {
                pool_id: pool.into(),
                config: None,
            })
            .await
            .expect("admin creates pools");
    }

    // No session: a browser is sent to sign in, and comes back after.
    let r = http_raw(addr, "GET", "/ui/pool?id=p1", &[], b"").await;
    assert_eq!(r.status, 303);
    assert_eq!(
        r.header("location"),
        Some("/ui/signin?next=%2Fui%2Fpool%3Fid%3Dp1")
    );
    assert!(r.header("set-cookie").is_none());
    let r = http_raw(addr, "POST", "/ui/signout", &[], b"").await;
    assert_eq!(r.status, 303, "sign-out without a session is harmless");
    let r = http_raw(
        addr,
        "GET",
        "/ui/signin?next=%2Fui%2Fpool%3Fid%3Dp1",
        &[],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    let page = r.text();
    assert!(page.contains("type=\"password\""), "{page}");
    assert!(page.contains("value=\"/ui/pool?id=p1\""), "{page}");
    // A non-browser POST without credentials: 401, not a redirect.
    let r = http_raw(addr, "POST", "/ui/pool?id=p1", &[], b"").await;
    assert_eq!(r.status, 401);

    // A bad token: an error, no cookie, the token not shown back.
    let r = http_raw(addr, "POST", "/ui/signin", &[FORM], &form(WRONG, "/ui/")).await;
    assert_eq!(r.status, 401);
    assert!(r.header("set-cookie").is_none());
    assert!(r.text().contains("not valid"), "{}", r.text());
    assert_no_secret(&r);
    let r = http_raw(addr, "POST", "/ui/signin", &[FORM], &form("", "/ui/")).await;
    assert_eq!(r.status, 401);
    assert!(r.header("set-cookie").is_none());
    // A token that may not view anything.
    let r = http_raw(addr, "POST", "/ui/signin", &[FORM], &form(SWARMING, "/ui/")).await;
    assert_eq!(r.status, 401);
    assert!(r.text().contains("may not view any pool"), "{}", r.text());
    assert!(r.header("set-cookie").is_none());
    assert_no_secret(&r);

    // A form posted from another site is refused (with a good token too).
    let r = http_raw(
        addr,
        "POST",
        "/ui/signin",
        &[FORM, ("Origin", "https://evil.example")],
        &form(VIEW_ALL, "/ui/"),
    )
    .await;
    assert_eq!(r.status, 403);
    assert!(r.header("set-cookie").is_none());
    assert_no_secret(&r);

    // A good token, from the dashboard's own origin: a session cookie with
    // the right attributes, holding a fresh id rather than the token.
    let r = http_raw(
        addr,
        "POST",
        "/ui/signin",
        &[FORM, ("Origin", "http://test")],
        &form(VIEW_P1, "/ui/pool?id=p1"),
    )
    .await;
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(r.header("location"), Some("/ui/pool?id=p1"));
    let set = r.header("set-cookie").expect("cookie").to_owned();
    for attr in [
        "qs_session=",
        "Path=/ui",
        "Secure",
        "HttpOnly",
        "SameSite=Strict",
        "Max-Age=3600",
    ] {
        assert!(set.contains(attr), "{attr} missing from {set}");
    }
    assert_no_secret(&r);
    let p1_viewer = set.split(';').next().unwrap().to_owned();

    // Its pages load; a pool it has no grant on is refused on every page,
    // whether or not the pool exists, and is not listed.
    let get = |path: &'static str, cookie: String| async move {
        http_raw(addr, "GET", path, &[("Cookie", cookie.as_str())], b"").await
    };
    let r = get("/ui/", p1_viewer.clone()).await;
    assert_eq!(r.status, 200);
    let body = r.text();
    assert!(body.contains("/ui/pool?id=p1"), "{body}");
    assert!(!body.contains("/ui/pool?id=p2"), "{body}");
    assert!(body.contains("signed in as p1-viewers"), "{body}");
    assert_eq!(get("/ui/pool?id=p1", p1_viewer.clone()).await.status, 200);
    assert_eq!(
        get("/ui/account?pool=p1&id=a", p1_viewer.clone())
            .await
            .status,
        404
    );
    for path in [
        "/ui/pool?id=p2",
        "/ui/task?pool=p2&id=t",
        "/ui/account?pool=p2&id=a",
        "/ui/pool?id=no-such-pool",
    ] {
        let r = get(path, p1_viewer.clone()).await;
        assert_eq!(r.status, 403, "{path}: {}", r.text());
    }

    // A viewer of every pool sees both.
    let all = sign_in(addr, VIEW_ALL).await;
    let body = get("/ui/", all.clone()).await.text();
    assert!(body.contains("/ui/pool?id=p1") && body.contains("/ui/pool?id=p2"));
    assert_eq!(get("/ui/pool?id=p2", all.clone()).await.status, 200);

    // A bearer token still works, with the same grants.
    let bearer = format!("Bearer {VIEW_P1}");
    let r = http_raw(
        addr,
        "GET",
        "/ui/pool?id=p2",
        &[("Authorization", bearer.as_str())],
        b"",
    )
    .await;
    assert_eq!(r.status, 403);

    // The authenticating proxy's header names the principal.
    let r = http_raw(
        addr,
        "GET",
        "/ui/",
        &[("X-Forwarded-User", "dashboards")],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("/ui/pool?id=p2"));
    let r = http_raw(
        addr,
        "GET",
        "/ui/pool?id=p2",
        &[("X-Forwarded-User", "p1-viewers")],
        b"",
    )
    .await;
    assert_eq!(r.status, 403);
    let r = http_raw(addr, "GET", "/ui/", &[("X-Forwarded-User", "mallory")], b"").await;
    assert_eq!(r.status, 401);

    // A forged or stale cookie is no session.
    let r = get("/ui/", "qs_session=qs_forged".to_owned()).await;
    assert_eq!(r.status, 303);

    // Sign-out ends the session: the cookie is cleared and no longer works.
    let r = http_raw(
        addr,
        "POST",
        "/ui/signout",
        &[("Cookie", p1_viewer.as_str()), ("Origin", "http://test")],
        b"",
    )
    .await;
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("/ui/signin"));
    assert!(r.header("set-cookie").unwrap().contains("Max-Age=0"));
    let r = get("/ui/", p1_viewer.clone()).await;
    assert_eq!(r.status, 303, "the session ended");
    // The other session is untouched; a cross-site sign-out is refused.
    let r = http_raw(
        addr,
        "POST",
        "/ui/signout",
        &[("Cookie", all.as_str()), ("Origin", "https://evil.example")],
        b"",
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(get("/ui/", all.clone()).await.status, 200);

    // The RPCs are as before: the session cookie is no credential there.
    let r = http_raw(
        addr,
        "POST",
        "/prpc/qscheduler.QSchedulerView/InspectPool",
        &[
            ("Content-Type", "application/json"),
            ("Accept", "application/json"),
            ("Cookie", all.as_str()),
        ],
        br#"{"poolId":"p1"}"#,
    )
    .await;
    assert_eq!(r.status, 401);
    server.stop().await;
}
