//! Helpers of the server's integration tests: a server on a real socket,
//! raw HTTP (pRPC JSON calls, plain GETs, any bytes and headers a test
//! wants) over it, typed calls of every RPC over gRPC, pRPC binary and pRPC
//! JSON ([`rpc`]), an observer that records events and can hold a pool's
//! writer ([`observe`]), and the scripted scenario the metrics and event
//! log tests check.
#![allow(dead_code)]

pub mod observe;
pub mod rpc;

use std::net::SocketAddr;
use std::sync::Arc;

use qscheduler_server::auth::layer::PolicyCell;
use qscheduler_server::limits::Limits;
use qscheduler_server::pool::{NoObserver, Observer};
use qscheduler_server::registry::Registry;
use qscheduler_server::{Server, ServerOptions};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The PostgreSQL the tests use: `DATABASE_URL`, by default the local
/// server (trust auth, database `test`).
pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// `prefix` made unique to this test run (process id and a clock reading),
/// for a schema or database a test creates.
pub fn unique_name(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{prefix}_{}_{nanos}", std::process::id())
}

/// A running server and the means to stop it.
pub struct TestServer {
    pub addr: SocketAddr,
    /// The server's pools, for comparing what the RPCs say with the state
    /// itself.
    pub registry: Arc<Registry>,
    /// The `[auth]` policy in force, replaceable (as a changed
    /// configuration file replaces it).
    pub auth_policy: Option<Arc<PolicyCell>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start(options: ServerOptions) -> TestServer {
        TestServer::start_with(options, Arc::new(NoObserver)).await
    }

    /// A server whose pool writers also report to `observer`.
    pub async fn start_with(mut options: ServerOptions, observer: Arc<dyn Observer>) -> TestServer {
        options.listen = "127.0.0.1:0".parse().unwrap();
        // The scenarios run on a clock in 2030, ahead of the wall clock;
        // the clock-skew limit is tested on its own (unit tests and the
        // hostile test).
        if options.limits.max_clock_skew == Limits::default().max_clock_skew {
            options.limits.max_clock_skew = std::time::Duration::from_secs(100 * 365 * 86_400);
        }
        let server = Server::start_with(options, observer, axum::Router::new())
            .await
            .expect("server starts");
        let addr = server.local_addr().unwrap();
        let registry = server.registry().clone();
        let auth_policy = server.auth_policy().cloned();
        let (stop, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            server
                .run(async {
                    let _ = rx.await;
                })
                .await
                .expect("server runs");
        });
        TestServer {
            addr,
            registry,
            auth_policy,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Graceful shutdown: pools stop, the event log is flushed.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }
}

/// An HTTP response as received.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one HTTP/1.1 request with exactly these extra headers and body
/// (`Host`, `Connection: close` and, unless the body is chunked,
/// `Content-Length` are added) and reads the whole response.
pub async fn http_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    let chunked = headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("transfer-encoding"));
    if method != "GET" && !chunked {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    // The server may answer (and close) before reading a body it refuses.
    let _ = s.write_all(body).await;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP response");
    let head = String::from_utf8(out[..split].to_vec()).unwrap();
    let rest = &out[split + 4..];
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    HttpResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut s: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = s.windows(2).position(|w| w == b"\r\n").unwrap();
        let len = std::str::from_utf8(&s[..eol]).unwrap();
        let len = len.split(';').next().unwrap();
        let n = usize::from_str_radix(len.trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        let rest = &s[eol + 2..];
        out.extend_from_slice(&rest[..n]);
        s = &rest[n + 2..];
    }
}

/// GET `path`; returns status and body.
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let r = http_raw(addr, "GET", path, &[], b"").await;
    (r.status, r.text())
}

/// A pRPC call with JSON; panics unless it succeeds.
pub async fn prpc(addr: SocketAddr, method: &str, body: Value) -> Value {
    let r = http_raw(
        addr,
        "POST",
        &format!("/prpc/{method}"),
        &[
            ("Content-Type", "application/json"),
            ("Accept", "application/json"),
        ],
        body.to_string().as_bytes(),
    )
    .await;
    let text = r.text();
    assert_eq!(r.status, 200, "{method} failed: {text}");
    let json = text.trim_start_matches(")]}'").trim();
    serde_json::from_str(json).unwrap()
}

/// `2030-01-01T00:00:SSZ`, the scenario's clock.
pub fn at(secs: u32) -> String {
    format!("2030-01-01T00:00:{secs:02}Z")
}

fn task(id: &str, state: &str, account: &str, os: &str, bot: &str) -> Value {
    json!({
        "id": id, "state": state, "botId": bot,
        "tags": [format!("qs_account:{account}"), "purpose:test"],
        "slices": [{"dimensions": [format!("os:{os}")]}],
        "enqueuedTime": at(0),
    })
}

async fn notify(addr: SocketAddr, pool: &str, callback: bool, items: &[(u32, Value)]) {
    let notifications: Vec<Value> = items
        .iter()
        .map(|(t, task)| json!({"time": at(*t), "task": task}))
        .collect();
    prpc(
        addr,
        "swarming.v1.ExternalScheduler/NotifyTasks",
        json!({"schedulerId": pool, "isCallback": callback, "notifications": notifications}),
    )
    .await;
}

pub async fn assign(addr: SocketAddr, pool: &str, t: u32, bots: &[(&str, &str)]) -> Value {
    let bots: Vec<Value> = bots
        .iter()
        .map(|(id, os)| json!({"botId": id, "dimensions": [format!("os:{os}")]}))
        .collect();
    prpc(
        addr,
        "swarming.v1.ExternalScheduler/AssignTasks",
        json!({"schedulerId": pool, "time": at(t), "idleBots": bots}),
    )
    .await
}

/// The scripted scenario, on pool `pool`:
///
/// * accounts `hi` (0.5 s/s at P0, 100 s max), `lo` (no quota: free
///   tasks only), `gone` (1 s/s at P0, 10 s max);
/// * t=0: L1 (lo) and G1 (gone) queued, linux;
/// * t=1: bot1, bot2 (linux) ask: G1 → bot1 at P0, L1 → bot2 free (P5);
/// * t=2: both confirmed running; H1 (hi, linux) queued;
/// * t=3: bot3 (mac) asks: H1 cannot use it and preempts L1 on bot2 at P0;
/// * t=4: H1 running on bot2, L1 preempted (gone from Swarming);
/// * t=10: a callback says G1 completed (RUNNING_TASK_ABSENT, 2 s of P0
///   spent); Q1 (lo, windows: no bot) and R1 (hi, linux) queued;
/// * t=11: bot2 asks: H1 completed (BOT_IDLE, 8 s of P0), R1 → bot2 at P0.
///
/// End state: 1 queued (Q1), 1 running at P0 (R1 on bot2), 1 idle (bot3);
/// hi's P0 balance 50 − 8 + 0.5 × 8 = 46.
pub async fn scenario(addr: SocketAddr, pool: &str) {
    let admin = "qscheduler.QSchedulerAdmin";
    prpc(
        addr,
        &format!("{admin}/CreateSchedulerPool"),
        json!({"poolId": pool}),
    )
    .await;
    for (account, rates, max) in [
        ("hi", json!([0.5]), 100),
        ("lo", json!([]), 0),
        ("gone", json!([1]), 10),
    ] {
        prpc(
            addr,
            &format!("{admin}/CreateAccount"),
            json!({"poolId": pool, "accountId": account,
                   "config": {"chargeRate": rates, "maxChargeSeconds": max}}),
        )
        .await;
    }
    notify(
        addr,
        pool,
        false,
        &[
            (0, task("L1", "PENDING", "lo", "linux", "")),
            (0, task("G1", "PENDING", "gone", "linux", "")),
        ],
    )
    .await;
    let r = assign(addr, pool, 1, &[("bot1", "linux"), ("bot2", "linux")]).await;
    assert_eq!(r["assignments"].as_array().map(Vec::len), Some(2), "{r}");
    notify(
        addr,
        pool,
        false,
        &[
            (2, task("G1", "RUNNING", "gone", "linux", "bot1")),
            (2, task("L1", "RUNNING", "lo", "linux", "bot2")),
            (2, task("H1", "PENDING", "hi", "linux", "")),
        ],
    )
    .await;
    let r = assign(addr, pool, 3, &[("bot3", "mac")]).await;
    assert!(r.get("assignments").is_none(), "bot3 gets nothing: {r}");
    notify(
        addr,
        pool,
        false,
        &[
            (4, task("H1", "RUNNING", "hi", "linux", "bot2")),
            (4, task("L1", "PREEMPTED", "lo", "linux", "bot2")),
        ],
    )
    .await;
    notify(
        addr,
        pool,
        true,
        &[(10, task("G1", "COMPLETED", "gone", "linux", "bot1"))],
    )
    .await;
    notify(
        addr,
        pool,
        false,
        &[
            (10, task("Q1", "PENDING", "lo", "windows", "")),
            (10, task("R1", "PENDING", "hi", "linux", "")),
        ],
    )
    .await;
    let r = assign(addr, pool, 11, &[("bot2", "linux")]).await;
    assert_eq!(r["assignments"][0]["taskId"], "R1", "{r}");
}
