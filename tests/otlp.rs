//! `qscheduler serve` exports its spans over OTLP/gRPC when configured to:
//! a stand-in collector on a local port receives the RPC and batch spans.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

/// A minimal OTLP trace collector: keeps the raw request bodies and
/// answers each Export with an empty response and status OK.
async fn collector(received: Arc<Mutex<Vec<u8>>>) -> std::net::SocketAddr {
    let app = axum::Router::new().route(
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
        axum::routing::post(move |body: Bytes| {
            let received = received.clone();
            async move {
                received.lock().unwrap().extend_from_slice(&body);
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                // One empty message: no compression flag, zero length.
                let body = Full::new(Bytes::from_static(&[0, 0, 0, 0, 0]))
                    .with_trailers(async move { Some(Ok(trailers)) });
                http::Response::builder()
                    .header("content-type", "application/grpc")
                    .body(axum::body::Body::new(body))
                    .unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn prpc(addr: &str, method: &str, body: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST /prpc/qscheduler.QSchedulerAdmin/{method} HTTP/1.1\r\nHost: x\r\n\
         Content-Type: application/json\r\nAccept: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_the_otlp_collector() {
    let received = Arc::new(Mutex::new(Vec::new()));
    let otlp = collector(received.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("qscheduler.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\
             [store]\ndata_dir = {:?}\n\
             [logging]\nformat = \"json\"\n\
             [tracing]\notlp_endpoint = \"http://{otlp}\"\nservice_name = \"qs-otlp-test\"\n",
            dir.path().join("data").to_str().unwrap()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_qscheduler"))
        .args(["serve", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (addr, rest) = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            let line = line.unwrap();
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            if v["fields"]["message"] == "ready" {
                let addr = v["fields"]["addr"].as_str().unwrap().to_owned();
                return (addr, lines);
            }
        }
        panic!("the server did not start");
    })
    .await
    .unwrap();
    let drain = std::thread::spawn(move || rest.count());

    // Pool creation is an RPC; account creation also goes through the
    // pool's writer as a batch.
    let answers = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || {
            [
                prpc(&addr, "CreateSchedulerPool", r#"{"poolId":"traced-pool"}"#),
                prpc(
                    &addr,
                    "CreateAccount",
                    r#"{"poolId":"traced-pool","accountId":"a","config":{}}"#,
                ),
            ]
        }
    })
    .await
    .unwrap();
    for answer in answers {
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    // SIGTERM: a graceful stop flushes the exporter.
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "the server did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drain.join().unwrap();

    // The export is protobuf; its strings are stored verbatim.
    let got = received.lock().unwrap().clone();
    let has = |s: &str| got.windows(s.len()).any(|w| w == s.as_bytes());
    assert!(
        has("qs-otlp-test"),
        "service.name missing ({} bytes)",
        got.len()
    );
    assert!(has("rpc"), "no rpc span");
    assert!(has("CreateSchedulerPool"), "rpc span without its method");
    assert!(has("traced-pool"), "rpc span without its pool");
    assert!(has("batch"), "no batch span");
}
