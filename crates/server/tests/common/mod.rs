//! Helpers of the server's integration tests: a server on a real socket,
//! pRPC JSON calls and plain HTTP GETs over it, and the scripted scenario
//! the metrics and event log tests check.
#![allow(dead_code)]

use std::net::SocketAddr;

use qscheduler_server::{Server, ServerOptions};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A running server and the means to stop it.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start(mut options: ServerOptions) -> TestServer {
        options.listen = "127.0.0.1:0".parse().unwrap();
        let server = Server::start(options).await.expect("server starts");
        let addr = server.local_addr().unwrap();
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

async fn http(addr: SocketAddr, request: String) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8(out).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    loop {
        let (len, rest) = s.split_once("\r\n").unwrap();
        let n = usize::from_str_radix(len.trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
}

/// GET `path`; returns status and body.
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"),
    )
    .await
}

/// A pRPC call with JSON; panics unless it succeeds.
pub async fn prpc(addr: SocketAddr, method: &str, body: Value) -> Value {
    let body = body.to_string();
    let (status, text) = http(
        addr,
        format!(
            "POST /prpc/{method} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
             Accept: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    assert_eq!(status, 200, "{method} failed: {text}");
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
