//! The wire contract: hand-built byte strings pin field numbers and types of
//! key messages, the descriptors pin names, nesting and reserved numbers, and
//! pRPC dispatch covers every method of every service.
//!
//! Also: arbitrary request bodies, in every encoding, never panic the server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use prost::Message;
use prost_reflect::{Kind, MessageDescriptor};
use qscheduler_wire::descriptor_pool;
use qscheduler_wire::metrics::TaskEvent;
use qscheduler_wire::metrics::task_event;
use qscheduler_wire::prpc::PrpcRouter;
use qscheduler_wire::swarming::v1::get_cancellations_response::{Cancellation, cancellation};
use qscheduler_wire::swarming::v1::task_spec::State;
use qscheduler_wire::swarming::v1::*;
use tower::ServiceExt;

fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(msg: &M, bytes: &[u8]) {
    assert_eq!(msg.encode_to_vec(), bytes, "encoding of {msg:?}");
    assert_eq!(&M::decode(bytes).unwrap(), msg);
}

#[test]
fn assign_tasks_request_bytes() {
    let msg = AssignTasksRequest {
        scheduler_id: "p".into(),
        idle_bots: vec![IdleBot {
            bot_id: "b".into(),
            dimensions: vec!["k:v".into()],
        }],
        time: Some(prost_types::Timestamp {
            seconds: 1,
            nanos: 2,
        }),
    };
    #[rustfmt::skip]
    let bytes = [
        0x0a, 0x01, b'p',                       // 1 scheduler_id
        0x12, 0x08,                             // 2 idle_bots, 8 bytes
            0x0a, 0x01, b'b',                   //   1 bot_id
            0x12, 0x03, b'k', b':', b'v',       //   2 dimensions
        0x1a, 0x04,                             // 3 time, 4 bytes
            0x08, 0x01,                         //   1 seconds
            0x10, 0x02,                         //   2 nanos
    ];
    round_trip(&msg, &bytes);
}

#[test]
fn task_assignment_bytes() {
    let msg = TaskAssignment {
        bot_id: "b".into(),
        task_id: "t".into(),
        slice_number: 1,
    };
    round_trip(&msg, &[0x0a, 0x01, b'b', 0x12, 0x01, b't', 0x18, 0x01]);
    // Slice 0 is absent on the wire.
    let zero = TaskAssignment {
        slice_number: 0,
        ..msg
    };
    round_trip(&zero, &[0x0a, 0x01, b'b', 0x12, 0x01, b't']);
}

#[test]
fn cancellation_bytes() {
    let msg = GetCancellationsResponse {
        cancellations: vec![Cancellation {
            bot_id: "b".into(),
            task_id: "t".into(),
            reason: cancellation::Reason::Error as i32,
            extra_info: "x".into(),
        }],
    };
    #[rustfmt::skip]
    let bytes = [
        0x0a, 0x0b,
            0x0a, 0x01, b'b',
            0x12, 0x01, b't',
            0x18, 0x02,
            0x22, 0x01, b'x',
    ];
    round_trip(&msg, &bytes);
}

#[test]
fn notify_tasks_request_bytes() {
    let msg = NotifyTasksRequest {
        scheduler_id: "p".into(),
        notifications: vec![NotifyTasksItem {
            time: Some(prost_types::Timestamp {
                seconds: 5,
                nanos: 0,
            }),
            task: Some(TaskSpec {
                id: "t0".into(),
                tags: vec!["a:b".into()],
                slices: vec![SliceSpec {
                    dimensions: vec!["d".into()],
                }],
                state: State::Running as i32,
                bot_id: "b".into(),
                enqueued_time: Some(prost_types::Timestamp {
                    seconds: 3,
                    nanos: 0,
                }),
            }),
        }],
        is_callback: true,
    };
    #[rustfmt::skip]
    let bytes = [
        0x0a, 0x01, b'p',                       // 1 scheduler_id
        0x12, 0x1d,                             // 2 notifications, 29 bytes
            0x0a, 0x02, 0x08, 0x05,             //   1 time {seconds: 5}
            0x12, 0x17,                         //   2 task, 23 bytes
                0x0a, 0x02, b't', b'0',         //     1 id
                0x12, 0x03, b'a', b':', b'b',   //     2 tags
                0x1a, 0x03, 0x0a, 0x01, b'd',   //     3 slices {dimensions}
                0x20, 0x20,                     //     4 state RUNNING (0x20)
                0x2a, 0x01, b'b',               //     5 bot_id
                0x32, 0x02, 0x08, 0x03,         //     6 enqueued_time {seconds: 3}
        0x18, 0x01,                             // 3 is_callback
    ];
    round_trip(&msg, &bytes);
}

#[test]
fn task_event_bytes() {
    let msg = TaskEvent {
        event_type: task_event::EventType::QschedulerAssigned as i32,
        category: task_event::EventCategory::CategoryQscheduler as i32,
        cost: vec![1.0],
        details: Some(task_event::Details::AssignedDetails(
            task_event::AssignedDetails {
                priority: 2,
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    #[rustfmt::skip]
    let bytes = [
        0x08, 0x81, 0x04,                       // 1 event_type 0x201
        0x52, 0x04, 0x00, 0x00, 0x80, 0x3f,     // 10 cost, packed float 1.0
        0x68, 0x80, 0x04,                       // 13 category 0x200
        0xaa, 0x06, 0x02, 0x10, 0x02,           // 101 assigned_details {2 priority: 2}
    ];
    round_trip(&msg, &bytes);
}

#[test]
fn scheduler_state_bytes() {
    use qscheduler_wire::protos::*;
    let msg = SchedulerState {
        label_map: [(7u64, "os:linux".to_string())].into_iter().collect(),
        queued_requests: [(
            "r".to_string(),
            TaskRequest {
                account_id: "a".into(),
                base_label_ids: vec![7],
                ..Default::default()
            },
        )]
        .into_iter()
        .collect(),
        ..Default::default()
    };
    #[rustfmt::skip]
    let bytes = [
        0x0a, 0x0b,                             // 1 queued_requests entry, 11 bytes
            0x0a, 0x01, b'r',                   //   key
            0x12, 0x06,                         //   value TaskRequest, 6 bytes
                0x0a, 0x01, b'a',               //     1 account_id
                0x3a, 0x01, 0x07,               //     7 base_label_ids, packed
        0x2a, 0x0c,                             // 5 label_map entry, 12 bytes
            0x08, 0x07,                         //   key 7
            0x12, 0x08, b'o', b's', b':', b'l', b'i', b'n', b'u', b'x',
    ];
    round_trip(&msg, &bytes);
}

fn message(name: &str) -> MessageDescriptor {
    descriptor_pool()
        .get_message_by_name(name)
        .unwrap_or_else(|| panic!("no message {name}"))
}

fn field_number(msg: &str, field: &str) -> u32 {
    message(msg)
        .get_field_by_name(field)
        .unwrap_or_else(|| panic!("no field {msg}.{field}"))
        .number()
}

#[test]
fn descriptor_names_and_numbers() {
    let cases = [
        ("swarming.v1.TaskSpec", "enqueued_time", 6),
        (
            "swarming.v1.GetCancellationsResponse.Cancellation",
            "extra_info",
            4,
        ),
        ("swarming.v1.NotifyTasksRequest", "is_callback", 3),
        ("protos.SchedulerConfig", "bot_expiration", 4),
        ("protos.AccountConfig", "per_label_task_limits", 6),
        ("protos.SchedulerState", "label_map", 5),
        ("protos.SchedulerState.Balance", "value", 1),
        ("protos.TaskRequest", "examined_time", 8),
        ("protos.TaskRun", "priority", 4),
        ("protos.Worker", "modified_time", 5),
        ("protos.Scheduler", "config", 2),
        ("protos.Reconciler", "task_errors", 2),
        ("protos.WorkerQueue", "task_to_abort", 3),
        ("qscheduler.ModAccountRequest", "per_label_task_limits", 9),
        (
            "qscheduler.ModSchedulerPoolRequest",
            "bot_expiration_seconds",
            3,
        ),
        ("qscheduler.InspectPoolResponse", "account_configs", 9),
        ("qscheduler.InspectPoolResponse", "disable_preemption", 10),
        (
            "qscheduler.InspectPoolResponse.RunningTask",
            "age_seconds",
            5,
        ),
        ("qscheduler.InspectPoolResponse.IdleBot", "dimensions", 2),
        ("metrics.TaskEvent", "is_callback", 14),
        ("metrics.TaskEvent", "unassigned_details", 105),
        ("metrics.TaskEvent.CompletedDetails", "other_bot", 3),
        ("luci.prpc.ResponseTooBig", "response_limit", 2),
    ];
    for (msg, field, number) in cases {
        assert_eq!(field_number(msg, field), number, "{msg}.{field}");
    }

    // Nullable admin fields are wrappers.
    let f = message("qscheduler.ModAccountRequest")
        .get_field_by_name("max_charge_seconds")
        .unwrap();
    let Kind::Message(m) = f.kind() else {
        panic!("{f:?}")
    };
    assert_eq!(m.full_name(), "google.protobuf.FloatValue");

    // Enum values.
    let state = descriptor_pool()
        .get_enum_by_name("swarming.v1.TaskSpec.State")
        .unwrap();
    assert_eq!(
        state.get_value_by_name("CLIENT_ERROR").unwrap().number(),
        0x57
    );
    assert_eq!(
        state.get_value_by_name("COMPLETING").unwrap().number(),
        0x2f
    );
    let reason = descriptor_pool()
        .get_enum_by_name("swarming.v1.GetCancellationsResponse.Cancellation.Reason")
        .unwrap();
    assert_eq!(reason.get_value_by_name("ERROR").unwrap().number(), 2);
    let event = descriptor_pool()
        .get_enum_by_name("metrics.TaskEvent.EventType")
        .unwrap();
    assert_eq!(
        event
            .get_value_by_name("QSCHEDULER_UNASSIGNED")
            .unwrap()
            .number(),
        0x204
    );
}

#[test]
fn reserved_numbers_are_reserved() {
    use prost_types::FileDescriptorSet;
    let fds = FileDescriptorSet::decode(qscheduler_wire::FILE_DESCRIPTOR_SET).unwrap();
    let find = |pkg: &str, name: &str| {
        fds.file
            .iter()
            .filter(|f| f.package() == pkg)
            .flat_map(|f| f.message_type.iter())
            .find(|m| m.name() == name)
            .unwrap_or_else(|| panic!("{pkg}.{name}"))
            .clone()
    };
    let reserved = |m: &prost_types::DescriptorProto| -> Vec<(i32, i32)> {
        m.reserved_range
            .iter()
            .map(|r| (r.start(), r.end()))
            .collect()
    };
    // Ranges are half-open: [start, end).
    assert_eq!(reserved(&find("protos", "SchedulerConfig")), vec![(3, 4)]);
    assert_eq!(
        reserved(&find("protos", "TaskRequest")),
        vec![(3, 4), (5, 6)]
    );
    assert_eq!(reserved(&find("protos", "Worker")), vec![(1, 2)]);
    assert_eq!(
        reserved(&find("qscheduler", "InspectPoolResponse")),
        vec![(8, 9)]
    );
    assert_eq!(reserved(&find("metrics", "TaskEvent")), vec![(15, 100)]);
}

#[test]
fn prpc_dispatch_covers_every_method() {
    let d = Arc::new(common::Dummy);
    let router = PrpcRouter::new()
        .external_scheduler(Arc::clone(&d))
        .admin(Arc::clone(&d))
        .view(Arc::clone(&d))
        .insight(d);
    let registered = router.methods();
    let mut expected: Vec<(String, Vec<String>)> = descriptor_pool()
        .services()
        .map(|s| {
            let mut methods: Vec<String> = s.methods().map(|m| m.name().to_string()).collect();
            methods.sort();
            (s.full_name().to_string(), methods)
        })
        .collect();
    expected.sort();
    assert_eq!(registered, expected);
}

mod bodies_never_panic {
    use super::*;
    use proptest::prelude::*;

    fn router() -> axum::Router {
        let d = Arc::new(common::Dummy);
        PrpcRouter::new()
            .external_scheduler(Arc::clone(&d))
            .admin(Arc::clone(&d))
            .view(d)
            .max_request_size(1 << 16)
            .into_router()
    }

    const PATHS: [&str; 4] = [
        "/prpc/swarming.v1.ExternalScheduler/NotifyTasks",
        "/prpc/swarming.v1.ExternalScheduler/AssignTasks",
        "/prpc/qscheduler.QSchedulerAdmin/ModAccount",
        "/prpc/qscheduler.QSchedulerView/ListAccounts",
    ];
    const TYPES: [&str; 4] = [
        "application/prpc; encoding=binary",
        "application/json",
        "application/prpc; encoding=text",
        "application/prpc; encoding=binary",
    ];

    fn run(path: &str, content_type: &str, gzip: bool, body: Vec<u8>) -> u16 {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut req = http::Request::builder()
                .method("POST")
                .uri(path)
                .header("content-type", content_type)
                .header("accept", "application/json");
            if gzip {
                req = req.header("content-encoding", "gzip");
            }
            let req = req.body(axum::body::Body::from(body)).unwrap();
            let resp = router().oneshot(req).await.unwrap();
            assert!(resp.headers().contains_key("x-prpc-grpc-code"));
            resp.status().as_u16()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, .. ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes(
            path in 0..PATHS.len(),
            ct in 0..TYPES.len(),
            gzip in any::<bool>(),
            body in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let status = run(PATHS[path], TYPES[ct], gzip, body);
            prop_assert!([200, 400, 404, 503].contains(&status), "{}", status);
        }

        #[test]
        fn arbitrary_json(body in "[{}\\[\\]\":,a-zA-Z0-9 .eE+-]{0,200}") {
            let _ = run(PATHS[0], "application/json", false, body.into_bytes());
        }

        #[test]
        fn arbitrary_text(body in "[{}<>:;,\"a-z_0-9 .\\[\\]\n-]{0,200}") {
            let _ = run(PATHS[1], "application/prpc; encoding=text", false, body.into_bytes());
        }

        #[test]
        fn arbitrary_protobuf_like(
            fields in proptest::collection::vec((1u32..12, 0u8..6, proptest::collection::vec(any::<u8>(), 0..20)), 0..10),
        ) {
            // Plausible tags with random payloads reach deeper into the decoder.
            let mut body = Vec::new();
            for (number, wire, payload) in fields {
                prost::encoding::encode_key(number, prost::encoding::WireType::try_from(u64::from(wire)).unwrap_or(prost::encoding::WireType::LengthDelimited), &mut body);
                prost::encoding::encode_varint(payload.len() as u64, &mut body);
                body.extend_from_slice(&payload);
            }
            let _ = run(PATHS[0], "application/prpc; encoding=binary", false, body);
        }
    }
}

#[tokio::test]
async fn truncated_body_is_canceled() {
    use bytes::Bytes;
    use http_body::Frame;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// One chunk, then the connection "breaks".
    struct Broken(bool);
    impl http_body::Body for Broken {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            if self.0 {
                return Poll::Ready(Some(Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "unexpected EOF",
                ))));
            }
            self.0 = true;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"\x0a\x05ab")))))
        }
    }

    let d = Arc::new(common::Dummy);
    let router = PrpcRouter::new().external_scheduler(d).into_router();
    let req = http::Request::builder()
        .method("POST")
        .uri(common::ASSIGN)
        .header("content-type", common::BINARY)
        .body(axum::body::Body::new(Broken(false)))
        .unwrap();
    let resp = router.oneshot(req).await.unwrap();
    assert_eq!(resp.status().as_u16(), 499);
    assert_eq!(resp.headers()["x-prpc-grpc-code"], "1");
}

#[tokio::test]
async fn default_limit_is_64_mib() {
    let d = Arc::new(common::Dummy);
    let router = PrpcRouter::new().external_scheduler(d).into_router();
    let body = vec![0u8; (64 << 20) + 1];
    let req = http::Request::builder()
        .method("POST")
        .uri(common::ASSIGN)
        .header("content-type", common::BINARY)
        .body(axum::body::Body::from(body))
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    assert_eq!(resp.headers()["x-prpc-grpc-code"], "14");

    // Announced too big: refused before reading.
    let req = http::Request::builder()
        .method("POST")
        .uri(common::ASSIGN)
        .header("content-type", common::BINARY)
        .header("content-length", (64u64 << 20) + 1)
        .body(axum::body::Body::empty())
        .unwrap();
    let resp = router.oneshot(req).await.unwrap();
    assert_eq!(resp.status().as_u16(), 503);
}
