//! Property test: no request can make the pRPC (or gRPC) router panic, and
//! every pRPC answer follows the protocol's rules (a code header on every
//! response, never an error with HTTP 200).
//!
//! The `prpc_request` and `json_prpc` fuzz targets (see `fuzz/`) explore
//! the same entry point for much longer, with the real services behind it;
//! this keeps the property checked on every test run, in a few seconds.

// A test that cannot unwrap has failed; the panic is the report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::time::Duration;

use axum::body::Body;
use http_body_util::BodyExt;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use prost::Message;
use qscheduler_wire::swarming::v1::{AssignTasksRequest, IdleBot};
use tower::ServiceExt;

#[derive(Clone, Debug)]
struct Req {
    grpc: bool,
    path: String,
    method: http::Method,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

/// One of `xs`, or any printable text.
fn header_value(xs: &'static [&'static str]) -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        2 => Just(None),
        3 => proptest::sample::select(xs).prop_map(|s| Some(s.to_string())),
        1 => "[ -~]{0,24}".prop_map(Some),
    ]
}

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => proptest::sample::select(&[
            "/prpc/swarming.v1.ExternalScheduler/AssignTasks",
            "/prpc/swarming.v1.ExternalScheduler/NotifyTasks",
            "/prpc/qscheduler.QSchedulerAdmin/ModAccount",
            "/prpc/qscheduler.QSchedulerView/InspectPool",
        ][..]).prop_map(String::from),
        1 => proptest::sample::select(&[
            "/prpc", "/prpc/", "/prpc/a", "/prpc/a/b/c", "/prpc/swarming.v1.ExternalScheduler/",
        ][..]).prop_map(String::from),
        1 => "/prpc/[ -~]{0,20}",
    ]
}

fn body(encoding: u8) -> impl Strategy<Value = Vec<u8>> {
    let message = (
        proptest::sample::select(&["p", "metadata", "method", "deadline", "big:3", ""][..]),
        proptest::collection::vec("[a-z0-9:]{0,8}", 0..3),
        proptest::option::of((any::<i64>(), any::<i32>())),
    )
        .prop_map(move |(id, bots, time)| {
            let req = AssignTasksRequest {
                scheduler_id: id.to_string(),
                idle_bots: bots
                    .into_iter()
                    .map(|b| IdleBot {
                        bot_id: b,
                        dimensions: vec!["pool:p".into()],
                    })
                    .collect(),
                time: time.map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }),
            };
            match encoding {
                0 => req.encode_to_vec(),
                _ => {
                    let time = req.time.as_ref().map_or(String::new(), |t| {
                        format!(",\"time\":\"{}s{}\"", t.seconds, t.nanos)
                    });
                    format!("{{\"schedulerId\":{:?}{time}}}", req.scheduler_id).into_bytes()
                }
            }
        });
    prop_oneof![
        4 => message,
        1 => proptest::collection::vec(any::<u8>(), 0..64),
        1 => "[ -~]{0,64}".prop_map(String::into_bytes),
    ]
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn request() -> impl Strategy<Value = Req> {
    (
        any::<u8>(),
        path(),
        prop_oneof![8 => Just(http::Method::POST), 1 => Just(http::Method::GET), 1 => Just(http::Method::OPTIONS)],
        header_value(&[
            "application/prpc; encoding=binary",
            "application/json",
            "application/prpc; encoding=text",
            "application/prpc",
            "text/plain",
        ]),
        header_value(&["application/json", "*/*", "application/prpc; encoding=text", "x/y"]),
        header_value(&["10S", "1n", "99999999H", "18446744073709551615H", "S"]),
        header_value(&["gzip", "identity", "br"]),
        header_value(&["gzip", "*"]),
        header_value(&["1", "0", "100000", "-1"]),
        proptest::collection::vec(
            (
                proptest::sample::select(&["x-a-bin", "x-b", "authorization", "origin"][..]),
                proptest::collection::vec(any::<u8>(), 0..12),
            ),
            0..3,
        ),
        any::<bool>(),
    )
        .prop_flat_map(
            |(kind, path, method, ct, accept, timeout, enc, accept_enc, max, extra, grpc)| {
                let encoding = match ct.as_deref() {
                    Some("application/json") => 1,
                    _ => 0,
                };
                body(encoding).prop_map(move |mut body| {
                    let grpc = grpc && kind % 4 == 0;
                    let mut headers: Vec<(String, Vec<u8>)> = Vec::new();
                    let mut set = |k: &str, v: &Option<String>| {
                        if let Some(v) = v {
                            headers.push((k.to_string(), v.clone().into_bytes()));
                        }
                    };
                    let path = if grpc {
                        set("grpc-timeout", &timeout);
                        set("content-type", &Some("application/grpc".into()));
                        let mut framed = vec![0];
                        framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
                        framed.extend_from_slice(&body);
                        body = framed;
                        path.trim_start_matches("/prpc").to_string()
                    } else {
                        set("content-type", &ct);
                        set("accept", &accept);
                        set("x-prpc-grpc-timeout", &timeout);
                        set("content-encoding", &enc);
                        set("accept-encoding", &accept_enc);
                        set("x-prpc-max-response-size", &max);
                        if enc.as_deref() == Some("gzip") && kind % 2 == 0 {
                            body = gzip(&body);
                        }
                        path.clone()
                    };
                    for (k, v) in &extra {
                        headers.push((k.to_string(), v.clone()));
                    }
                    Req {
                        grpc,
                        path,
                        method: method.clone(),
                        headers,
                        body,
                    }
                })
            },
        )
}

async fn check(router: axum::Router, r: Req) -> Result<(), TestCaseError> {
    let mut req = http::Request::new(Body::from(r.body.clone()));
    *req.method_mut() = r.method.clone();
    if let Ok(uri) = http::Uri::try_from(r.path.as_str()) {
        *req.uri_mut() = uri;
    }
    for (k, v) in &r.headers {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(k.as_bytes()),
            http::HeaderValue::from_bytes(v),
        ) {
            req.headers_mut().append(k, v);
        }
    }
    // Paths that are not valid URIs never reach the router as such.
    let prpc = !r.grpc && req.uri().path().starts_with("/prpc");
    let resp = router.oneshot(req).await.unwrap();
    let status = resp.status();
    let code = resp
        .headers()
        .get("x-prpc-grpc-code")
        .map(|v| v.to_str().unwrap_or("?").to_string());
    let _ = resp.into_body().collect().await;
    if prpc {
        prop_assert!(code.is_some(), "no code header: {status} for {r:?}");
        if status == http::StatusCode::OK {
            prop_assert_eq!(
                code.as_deref(),
                Some("0"),
                "an error with HTTP 200: {:?}",
                r
            );
        }
    }
    prop_assert!(
        status != http::StatusCode::INTERNAL_SERVER_ERROR,
        "500 for {r:?}"
    );
    Ok(())
}

#[test]
fn no_request_panics_the_router() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let router = common::dummy_services()
        .request_timeout(Some(Duration::from_secs(5)))
        .max_request_size(1 << 16)
        .into_router(axum::Router::new())
        .unwrap();
    let mut runner = TestRunner::new(Config {
        cases: 1000,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&request(), |r| rt.block_on(check(router.clone(), r)))
        .unwrap();
}
