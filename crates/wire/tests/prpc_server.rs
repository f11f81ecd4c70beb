//! The pRPC server against a real socket: encodings, negotiation, errors,
//! limits, compression, deadlines and metadata, as a pRPC client sees them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use common::*;
use prost::Message;
use qscheduler_wire::luci::prpc::{ErrorDetails, error_details};
use qscheduler_wire::prpc::XSSI_PREFIX;
use qscheduler_wire::swarming::v1::*;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn decode_assign(body: &[u8]) -> AssignTasksResponse {
    AssignTasksResponse::decode(body).unwrap()
}

fn expected_echo(id: &str) -> AssignTasksResponse {
    AssignTasksResponse {
        assignments: vec![
            TaskAssignment {
                bot_id: "b1".into(),
                task_id: format!("{id}/task-for-b1"),
                slice_number: 0,
            },
            TaskAssignment {
                bot_id: "b2".into(),
                task_id: format!("{id}/task-for-b2"),
                slice_number: 1,
            },
        ],
    }
}

/// The request of `assign_request("p")` in each encoding.
fn request_body(format: &str) -> Vec<u8> {
    match format {
        BINARY => assign_request("p").encode_to_vec(),
        JSON => br#"{"schedulerId":"p","idleBots":[{"botId":"b1","dimensions":["pool:p","os:linux"]},{"botId":"b2"}],"time":"2023-11-14T22:13:20.500Z"}"#.to_vec(),
        TEXT => br#"scheduler_id: "p" idle_bots { bot_id: "b1" dimensions: "pool:p" dimensions: "os:linux" } idle_bots { bot_id: "b2" } time { seconds: 1700000000 nanos: 500000000 }"#.to_vec(),
        other => panic!("{other}"),
    }
}

const WANT_JSON: &str = r#"{"assignments":[{"botId":"b1","taskId":"p/task-for-b1"},{"botId":"b2","taskId":"p/task-for-b2","sliceNumber":1}]}"#;

#[tokio::test]
async fn every_encoding_in_and_out() {
    let server = start_dummy().await;
    for input in [BINARY, JSON, TEXT] {
        for output in [BINARY, JSON, TEXT] {
            let r = post(
                server.addr,
                ASSIGN,
                &[("content-type", input), ("accept", output)],
                request_body(input),
            )
            .await;
            assert_eq!(r.status, 200, "{input} -> {output}: {}", r.text());
            assert_eq!(r.code(), 0);
            assert_eq!(r.header("content-type"), Some(output));
            assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
            match output {
                BINARY => assert_eq!(decode_assign(&r.body), expected_echo("p")),
                JSON => {
                    // XSSI prefix, the document, a trailing newline.
                    let want = format!(")]}}'\n{WANT_JSON}\n");
                    assert_eq!(r.text(), want);
                }
                TEXT => {
                    let text = r.text();
                    assert!(text.contains(r#"task_id: "p/task-for-b2""#), "{text}");
                    assert!(text.contains("slice_number: 1"), "{text}");
                    assert!(text.ends_with('\n'));
                }
                _ => unreachable!(),
            }
        }
    }
}

#[tokio::test]
async fn content_type_variants() {
    let server = start_dummy().await;
    let binary = request_body(BINARY);
    // Without a Content-Type a web page could send the request without
    // asking the browser first: refused.
    for ct in [None, Some("")] {
        let headers: Vec<(&str, &str)> = ct.map(|c| ("content-type", c)).into_iter().collect();
        let r = post_exact(server.addr, ASSIGN, &headers, binary.clone()).await;
        assert_eq!(r.status, 415, "{ct:?}");
    }
    for ct in [
        Some("application/prpc"),
        Some("*/*"),
        Some("application/*"),
        Some("application/grpc"),
    ] {
        let headers: Vec<(&str, &str)> = ct.map(|c| ("content-type", c)).into_iter().collect();
        let r = post(server.addr, ASSIGN, &headers, binary.clone()).await;
        assert_eq!(r.status, 200, "{ct:?}");
        assert_eq!(
            r.header("content-type"),
            Some(BINARY),
            "no Accept means binary"
        );
        assert_eq!(decode_assign(&r.body), expected_echo("p"));
    }
    // The legacy JSON media type.
    let r = post(
        server.addr,
        ASSIGN,
        &[
            ("content-type", "application/prpc; encoding=json"),
            ("accept", JSON),
        ],
        request_body(JSON),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), format!(")]}}'\n{WANT_JSON}\n"));
}

#[tokio::test]
async fn json_input_is_lenient() {
    let server = start_dummy().await;
    for body in [
        // Unknown fields are discarded.
        r#"{"schedulerId":"p","bogus":{"x":1},"idleBots":[{"botId":"b1","dimensions":["a"],"more":true}]}"#,
        // Original field names are accepted.
        r#"{"scheduler_id":"p","idle_bots":[{"bot_id":"b1","dimensions":["a"]}]}"#,
    ] {
        let r = post(server.addr, ASSIGN, &[("content-type", JSON)], body).await;
        assert_eq!(r.status, 200, "{body}: {}", r.text());
        let resp = decode_assign(&r.body);
        assert_eq!(resp.assignments.len(), 1);
        assert_eq!(resp.assignments[0].task_id, "p/task-for-b1");
    }
    // An empty JSON body is the empty message.
    let r = post(server.addr, ASSIGN, &[("content-type", JSON)], "").await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn json_output_uses_proto_json_defaults() {
    let server = start_dummy().await;
    let body = GetCancellationsRequest {
        scheduler_id: "s".into(),
    }
    .encode_to_vec();
    let r = post(
        server.addr,
        "/prpc/swarming.v1.ExternalScheduler/GetCancellations",
        &[("accept", JSON)],
        body,
    )
    .await;
    assert_eq!(r.status, 200);
    // lowerCamelCase, enums by name, empty strings omitted.
    assert_eq!(
        r.text(),
        ")]}'\n{\"cancellations\":[{\"botId\":\"bot-1\",\"taskId\":\"s-t1\",\"reason\":\"PREEMPTED\"},{\"taskId\":\"s-t2\",\"reason\":\"ERROR\",\"extraInfo\":\"bad dimensions\"}]}\n"
    );

    // Maps, nested messages and floats from the view service.
    let r = post(
        server.addr,
        "/prpc/qscheduler.QSchedulerView/ListAccounts",
        &[("content-type", JSON), ("accept", JSON)],
        r#"{"poolId":"p"}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.text(),
        ")]}'\n{\"accounts\":{\"acct\":{\"chargeRate\":[1.5,0,0,0,0],\"maxChargeSeconds\":600,\"description\":\"an account\",\"perLabelTaskLimits\":{\"label-model\":2}}}}\n"
    );
}

#[tokio::test]
async fn wrapper_fields_keep_presence_in_every_encoding() {
    let server = start_dummy().await;
    let path = "/prpc/qscheduler.QSchedulerAdmin/ModAccount";
    let want = "max_charge_seconds=Some(0.0) max_fanout=None disable_free_tasks=Some(false) description=Some(\"\")";
    let cases: [(&str, Vec<u8>); 3] = [
        (
            BINARY,
            qscheduler_wire::qscheduler::ModAccountRequest {
                max_charge_seconds: Some(0.0),
                disable_free_tasks: Some(false),
                description: Some(String::new()),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            JSON,
            br#"{"maxChargeSeconds":0,"disableFreeTasks":false,"description":""}"#.to_vec(),
        ),
        (
            TEXT,
            br#"max_charge_seconds { value: 0 } disable_free_tasks {} description {}"#.to_vec(),
        ),
    ];
    for (ct, body) in cases {
        let r = post(server.addr, path, &[("content-type", ct)], body).await;
        assert_eq!(r.status, 400, "{ct}");
        let (code, msg) = r.error();
        assert_eq!(code, 9, "FAILED_PRECONDITION");
        assert_eq!(msg, want, "{ct}");
    }
}

#[tokio::test]
async fn accept_negotiation_with_q_values() {
    let server = start_dummy().await;
    let body = request_body(BINARY);
    let cases = [
        (
            "application/json;q=0.9, application/prpc; encoding=text;q=0.95",
            TEXT,
        ),
        (
            "application/json, application/prpc; encoding=binary",
            BINARY,
        ),
        ("application/prpc; encoding=text, application/json", JSON),
        ("text/html, application/json; q=0.1", JSON),
        ("*/*;q=0.2, application/json;q=0.3", JSON),
        ("*/*", BINARY),
        ("", BINARY),
    ];
    for (accept, want) in cases {
        let r = post(server.addr, ASSIGN, &[("accept", accept)], body.clone()).await;
        assert_eq!(r.status, 200, "{accept}");
        assert_eq!(r.header("content-type"), Some(want), "{accept}");
    }

    let r = post(
        server.addr,
        ASSIGN,
        &[("accept", "text/html, image/png")],
        body.clone(),
    )
    .await;
    assert_eq!(r.status, 406);
    let (code, msg) = r.error();
    assert_eq!(code, 3);
    assert!(msg.starts_with("bad Accept header"), "{msg}");

    for bad in ["application/json;q=abc", "application/json;q=1.5"] {
        let r = post(server.addr, ASSIGN, &[("accept", bad)], body.clone()).await;
        assert_eq!(r.status, 400, "{bad}");
        let (code, msg) = r.error();
        assert_eq!(code, 3);
        assert!(msg.starts_with("bad Accept header"), "{msg}");
    }
}

#[tokio::test]
async fn xssi_prefix_only_on_successful_json() {
    let server = start_dummy().await;
    let ok = post(
        server.addr,
        ASSIGN,
        &[("accept", JSON)],
        request_body(BINARY),
    )
    .await;
    assert!(ok.body.starts_with(XSSI_PREFIX));
    assert!(ok.body.ends_with(b"}\n"));

    let err = post(
        server.addr,
        ASSIGN,
        &[("accept", JSON)],
        assign_request("error:5:no such pool").encode_to_vec(),
    )
    .await;
    assert_eq!(err.status, 404);
    assert!(!err.body.starts_with(XSSI_PREFIX));
    assert_eq!(err.error(), (5, "no such pool".to_string()));

    let bin = post(
        server.addr,
        ASSIGN,
        &[("accept", BINARY)],
        request_body(BINARY),
    )
    .await;
    assert!(!bin.body.starts_with(XSSI_PREFIX));
}

async fn handler_error(server: &TestServer, code: i32, msg: &str) -> (u16, i32, String) {
    let r = post(
        server.addr,
        ASSIGN,
        &[],
        assign_request(&format!("error:{code}:{msg}")).encode_to_vec(),
    )
    .await;
    let (c, m) = r.error();
    (r.status, c, m)
}

#[tokio::test]
async fn client_errors_map_to_4xx_and_keep_their_message() {
    let server = start_dummy().await;
    for (code, http) in [
        (3, 400),
        (5, 404),
        (6, 409),
        (7, 403),
        (8, 429),
        (9, 400),
        (10, 409),
        (11, 400),
        (16, 401),
    ] {
        let (status, c, m) = handler_error(&server, code, "details for the caller").await;
        assert_eq!((status, c), (http, code), "code {code}");
        assert_eq!(m, "details for the caller");
    }
}

#[tokio::test]
async fn canceled_maps_to_499() {
    let server = start_dummy().await;
    let (status, code, msg) = handler_error(&server, 1, "caller went away").await;
    assert_eq!((status, code), (499, 1));
    assert_eq!(msg, "caller went away");
}

#[tokio::test]
async fn server_errors_map_to_5xx_with_generic_messages() {
    let server = start_dummy().await;
    for (code, http, generic) in [
        (2, 500, "Unknown server error"),
        (4, 504, "Request deadline exceeded"),
        (12, 501, "API method not implemented by the server"),
        (13, 500, "Internal server error"),
        (14, 503, "Service unavailable"),
        (15, 500, "Unrecoverable data loss or data corruption"),
    ] {
        let (status, c, m) = handler_error(&server, code, "secret internal detail").await;
        assert_eq!((status, c), (http, code), "code {code}");
        assert_eq!(m, generic, "code {code}");
    }
}

#[tokio::test]
async fn an_error_with_code_ok_is_not_a_success() {
    let server = start_dummy().await;
    let (status, code, _) = handler_error(&server, 0, "oops").await;
    assert_eq!((status, code), (500, 2));
}

#[tokio::test]
async fn bad_content_type_is_415() {
    let server = start_dummy().await;
    for ct in [
        "text/plain",
        "application/prpc; encoding=yaml",
        "application/prpc; charset=utf-8",
        "application/x-protobuf",
    ] {
        let r = post(
            server.addr,
            ASSIGN,
            &[("content-type", ct)],
            request_body(BINARY),
        )
        .await;
        assert_eq!(r.status, 415, "{ct}");
        let (code, msg) = r.error();
        assert_eq!(code, 3);
        assert!(msg.starts_with("bad Content-Type header: "), "{msg}");
    }
}

#[tokio::test]
async fn undecodable_body_is_400() {
    let server = start_dummy().await;
    for (ct, body) in [
        (BINARY, b"\xff\xff\xff\xff".to_vec()),
        (BINARY, b"\x0a\x05ab".to_vec()),
        (JSON, b"{not json".to_vec()),
        (JSON, b"{\"schedulerId\": 5}".to_vec()),
        (JSON, b")]}'\n{}".to_vec()),
        (TEXT, b"scheduler_id: {".to_vec()),
        (TEXT, b"\xff\xfe".to_vec()),
    ] {
        let r = post(server.addr, ASSIGN, &[("content-type", ct)], body.clone()).await;
        assert_eq!(r.status, 400, "{ct} {body:?}");
        let (code, msg) = r.error();
        assert_eq!(code, 3);
        assert!(msg.starts_with("could not decode body: "), "{msg}");
    }
}

#[tokio::test]
async fn unknown_service_and_method_are_501() {
    let server = start_dummy().await;
    let r = post(server.addr, "/prpc/foo.Bar/Baz", &[], "").await;
    assert_eq!(r.status, 501);
    assert_eq!(
        r.error(),
        (12, r#"service "foo.Bar" is not implemented"#.into())
    );

    let r = post(
        server.addr,
        "/prpc/swarming.v1.ExternalScheduler/Nope",
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 501);
    assert_eq!(
        r.error(),
        (
            12,
            r#"method "Nope" in service "swarming.v1.ExternalScheduler" is not implemented"#.into()
        )
    );

    // Not a pRPC path at all, but still a pRPC answer.
    for path in [
        "/prpc/only-a-service",
        "/prpc",
        "/prpc/",
        "/prpc/a/b/c",
        "/prpc//m",
    ] {
        let r = post(server.addr, path, &[], "").await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.error().0, 5, "{path}");
    }
}

#[tokio::test]
async fn only_post_is_allowed() {
    let server = start_dummy().await;
    for method in ["GET", "PUT", "DELETE"] {
        let r = raw(server.addr, method, ASSIGN, &[], "").await;
        assert_eq!(r.status, 405, "{method}");
        assert_eq!(r.header("allow"), Some("POST, OPTIONS"));
        assert_eq!(r.error().0, 12);
    }
}

#[tokio::test]
async fn bad_timeout_header_is_400() {
    let server = start_dummy().await;
    for bad in ["abc", "10", "10s", "-1S", "1.5S", "S"] {
        let r = post(
            server.addr,
            ASSIGN,
            &[("x-prpc-grpc-timeout", bad)],
            request_body(BINARY),
        )
        .await;
        assert_eq!(r.status, 400, "{bad}");
        let (code, msg) = r.error();
        assert_eq!(code, 3);
        assert!(msg.starts_with("bad request headers: "), "{msg}");
    }
}

#[tokio::test]
async fn deadline_expiry_is_deadline_exceeded() {
    let server = start_dummy().await;
    // The handler sleeps ten minutes: an answer at all means it was cut
    // off at the deadline (the outer timeout only stops a hung test).
    let r = tokio::time::timeout(
        Duration::from_secs(120),
        post(
            server.addr,
            ASSIGN,
            &[("x-prpc-grpc-timeout", "100m")],
            assign_request("sleep:600000").encode_to_vec(),
        ),
    )
    .await
    .expect("the handler was not cut off at the deadline");
    assert_eq!(r.status, 504);
    assert_eq!(r.error(), (4, "Request deadline exceeded".into()));
}

#[tokio::test]
async fn handler_sees_its_deadline() {
    let server = start_dummy().await;
    let left = |r: &RawResponse| -> u128 {
        let resp = decode_assign(&r.body);
        assert_eq!(resp.assignments[0].bot_id, "deadline-ms");
        resp.assignments[0].task_id.parse().unwrap()
    };
    // From the client's timeout.
    let r = post(
        server.addr,
        ASSIGN,
        &[("x-prpc-grpc-timeout", "3S")],
        assign_request("deadline").encode_to_vec(),
    )
    .await;
    let ms = left(&r);
    assert!(ms > 1000 && ms <= 3000, "{ms}");
    // Without one, the server's cap (60 s by default).
    let r = post(
        server.addr,
        ASSIGN,
        &[],
        assign_request("deadline").encode_to_vec(),
    )
    .await;
    let ms = left(&r);
    assert!(ms > 50_000 && ms <= 60_000, "{ms}");
    // The client cannot ask for more than the cap.
    let r = post(
        server.addr,
        ASSIGN,
        &[("x-prpc-grpc-timeout", "2H")],
        assign_request("deadline").encode_to_vec(),
    )
    .await;
    let ms = left(&r);
    assert!(ms <= 60_000, "{ms}");
}

#[tokio::test]
async fn no_cap_means_no_deadline_without_a_timeout() {
    let server = start(dummy_services().request_timeout(None)).await;
    let r = post(
        server.addr,
        ASSIGN,
        &[],
        assign_request("deadline").encode_to_vec(),
    )
    .await;
    assert_eq!(decode_assign(&r.body).assignments[0].task_id, "none");
}

#[tokio::test]
async fn too_large_request_is_503() {
    let server = start(dummy_services().max_request_size(1024)).await;
    let mut big = assign_request("p");
    big.idle_bots[0].dimensions.push("x".repeat(2000));
    let r = post(server.addr, ASSIGN, &[], big.encode_to_vec()).await;
    assert_eq!(r.status, 503);
    assert_eq!(
        r.error(),
        (14, "the request size exceeds the server limit".into())
    );

    // Small on the wire, too big once decompressed.
    let bomb = gzip(&vec![0u8; 4096]);
    assert!(bomb.len() < 1024);
    let r = post(server.addr, ASSIGN, &[("content-encoding", "gzip")], bomb).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.error().0, 14);

    // At the limit is fine.
    let ok = assign_request("p").encode_to_vec();
    assert!(ok.len() <= 1024);
    let r = post(server.addr, ASSIGN, &[], ok).await;
    assert_eq!(r.status, 200);
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[tokio::test]
async fn gzip_request_body() {
    let server = start_dummy().await;
    for ct in [BINARY, JSON] {
        let r = post(
            server.addr,
            ASSIGN,
            &[("content-type", ct), ("content-encoding", "gzip")],
            gzip(&request_body(ct)),
        )
        .await;
        assert_eq!(r.status, 200, "{ct}");
        assert_eq!(decode_assign(&r.body), expected_echo("p"));
    }
    let r = post(
        server.addr,
        ASSIGN,
        &[("content-encoding", "gzip")],
        b"definitely not gzip".to_vec(),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.error().1.starts_with("could not decode body: "));

    let r = post(server.addr, ASSIGN, &[("content-encoding", "br")], "").await;
    assert_eq!(r.status, 415);
    assert_eq!(r.error().0, 3);
}

#[tokio::test]
async fn gzip_response_when_allowed_and_large() {
    let server = start_dummy().await;
    let big = assign_request("big:200").encode_to_vec();
    for accept in [BINARY, JSON] {
        let r = post(
            server.addr,
            ASSIGN,
            &[("accept", accept), ("accept-encoding", "deflate, gzip")],
            big.clone(),
        )
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-encoding"), Some("gzip"), "{accept}");
        let plain = gunzip(&r.body);
        assert!(plain.len() > r.body.len());
        if accept == BINARY {
            assert_eq!(decode_assign(&plain).assignments.len(), 200);
        } else {
            assert!(plain.starts_with(XSSI_PREFIX));
        }
    }
    // Not asked for: plain.
    let r = post(server.addr, ASSIGN, &[], big.clone()).await;
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(decode_assign(&r.body).assignments.len(), 200);
    // Refused with q=0: plain.
    let r = post(server.addr, ASSIGN, &[("accept-encoding", "gzip;q=0")], big).await;
    assert_eq!(r.header("content-encoding"), None);
    // Small: not worth it.
    let r = post(
        server.addr,
        ASSIGN,
        &[("accept-encoding", "gzip")],
        request_body(BINARY),
    )
    .await;
    assert!(r.body.len() <= 1024);
    assert_eq!(r.header("content-encoding"), None);
}

#[tokio::test]
async fn max_response_size() {
    let server = start_dummy().await;
    let big = assign_request("big:50").encode_to_vec();
    let r = post(
        server.addr,
        ASSIGN,
        &[("x-prpc-max-response-size", "100")],
        big.clone(),
    )
    .await;
    assert_eq!(r.status, 503);
    let (code, msg) = r.error();
    assert_eq!(code, 14);
    assert!(msg.contains("exceeds the client limit 100"), "{msg}");
    // The ResponseTooBig detail, as a binary Any.
    let detail = r.header("x-prpc-status-details-bin").unwrap();
    let any = prost_types::Any::decode(B64.decode(detail).unwrap().as_slice()).unwrap();
    assert_eq!(any.type_url, "type.googleapis.com/luci.prpc.ErrorDetails");
    let details = ErrorDetails::decode(any.value.as_slice()).unwrap();
    let Some(error_details::Error::ResponseTooBig(too_big)) = details.error else {
        panic!("{details:?}");
    };
    assert_eq!(too_big.response_limit, 100);
    assert!(too_big.response_size > 100);

    // The limit counts the JSON prefix too; a generous limit passes.
    let r = post(
        server.addr,
        ASSIGN,
        &[("x-prpc-max-response-size", "1000000"), ("accept", JSON)],
        big,
    )
    .await;
    assert_eq!(r.status, 200);

    for bad in ["0", "-1", "abc", "1e3"] {
        let r = post(
            server.addr,
            ASSIGN,
            &[("x-prpc-max-response-size", bad)],
            request_body(BINARY),
        )
        .await;
        assert_eq!(r.status, 400, "{bad}");
        assert_eq!(r.error().0, 3);
    }
}

#[tokio::test]
async fn headers_become_metadata() {
    let server = start_dummy().await;
    let bin = B64.encode(b"\x00\xffbinary");
    let two = format!("{}, {}", B64.encode(b"one"), B64.encode(b"two"));
    let r = post(
        server.addr,
        ASSIGN,
        &[
            ("X-Custom-Thing", "Hello"),
            ("authorization", "Bearer token"),
            ("trace-bin", &bin),
            ("multi-bin", &two),
            ("x-prpc-grpc-timeout", "10S"),
            ("accept", BINARY),
            ("access-control-request-method", "POST"),
        ],
        assign_request("metadata").encode_to_vec(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let got: Vec<(String, String)> = decode_assign(&r.body)
        .assignments
        .into_iter()
        .map(|a| (a.bot_id, a.task_id))
        .collect();
    let has = |k: &str, v: &str| got.iter().any(|(gk, gv)| gk == k && gv == v);
    assert!(has("x-custom-thing", "Hello"), "{got:?}");
    assert!(has("authorization", "Bearer token"), "{got:?}");
    assert!(has("trace-bin", "\u{0}\u{fffd}binary"), "{got:?}");
    assert!(
        has("multi-bin", "one") && has("multi-bin", "two"),
        "{got:?}"
    );
    assert!(got.iter().any(|(k, _)| k == "host"), "{got:?}");
    for reserved in [
        "x-prpc-grpc-timeout",
        "accept",
        "content-type",
        "content-length",
        "access-control-request-method",
    ] {
        assert!(
            !got.iter().any(|(k, _)| k == reserved),
            "{reserved}: {got:?}"
        );
    }
    // Response metadata comes back as headers; reserved names are not
    // overridden by the handler.
    assert_eq!(r.header("x-echo"), Some("yes"));
    assert_eq!(
        r.header("echo-bin"),
        Some(B64.encode(b"\x00\x01hi").as_str())
    );
    assert_eq!(r.code(), 0);

    let r = post(
        server.addr,
        ASSIGN,
        &[("trace-bin", "!!!not base64")],
        request_body(BINARY),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.error().1.starts_with("bad request headers: "));
}

#[tokio::test]
async fn interceptor_runs_on_prpc_with_the_method_name() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let services = dummy_services().interceptor(Arc::new(move |req: tonic::Request<()>| {
        let m = qscheduler_wire::context::rpc_method(&req).cloned();
        log.lock().unwrap().push(m);
        if req.metadata().get("authorization").is_none() {
            return Err(tonic::Status::permission_denied("permission denied"));
        }
        Ok(req)
    }));
    let server = start(services).await;
    let r = post(server.addr, ASSIGN, &[], request_body(BINARY)).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.error(), (7, "permission denied".into()));
    // The body is decoded first: garbage is reported as such to anyone.
    let r = post(server.addr, ASSIGN, &[], b"\xff\xff".to_vec()).await;
    assert_eq!(r.status, 400);
    let r = post(
        server.addr,
        ASSIGN,
        &[("authorization", "Bearer x")],
        request_body(BINARY),
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen.len(),
        2,
        "the interceptor never sees undecodable calls"
    );
    let m = seen[0].as_ref().unwrap();
    assert_eq!(&*m.service, "swarming.v1.ExternalScheduler");
    assert_eq!(&*m.method, "AssignTasks");
    assert_eq!(m.transport, qscheduler_wire::Transport::Prpc);
}

#[tokio::test]
async fn extra_routes_share_the_port() {
    let server = start_dummy().await;
    let r = raw(server.addr, "GET", "/healthz", &[], "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "ok\n");
}

#[tokio::test]
async fn cors_when_enabled() {
    use qscheduler_wire::prpc::CorsPolicy;
    let server = start(dummy_services().cors(CorsPolicy::AllowList {
        origins: vec!["https://ui.example".into()],
        allow_credentials: true,
    }))
    .await;
    let r = raw(
        server.addr,
        "OPTIONS",
        ASSIGN,
        &[("origin", "https://ui.example")],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://ui.example")
    );
    assert_eq!(
        r.header("access-control-allow-methods"),
        Some("OPTIONS, POST")
    );
    let r = post(
        server.addr,
        ASSIGN,
        &[("origin", "https://ui.example")],
        request_body(BINARY),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-expose-headers"),
        Some("X-Prpc-Grpc-Code, X-Prpc-Status-Details-Bin")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    let r = post(
        server.addr,
        ASSIGN,
        &[("origin", "https://evil.example")],
        request_body(BINARY),
    )
    .await;
    assert_eq!(r.header("access-control-allow-origin"), None);
}
