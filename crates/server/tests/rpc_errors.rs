//! Every error path of the real server, over the wire.
//!
//! * pRPC protocol errors (bad content type, undecodable body, unknown
//!   service or method, bad timeout header, body too large), checked on raw
//!   HTTP responses: status, `X-Prpc-Grpc-Code`, message;
//! * errors of the services (invalid arguments naming the field, missing
//!   pools and accounts, existing pools, overload, deadlines), checked on
//!   all three transports with the same expectations, and checked to change
//!   nothing.
//!
//! Every pRPC response goes through `common::rpc::prpc_result` or
//! `expect_error`, which insist on the code header and on errors never
//! being HTTP 200.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::observe::Recorder;
use common::rpc::*;
use common::{HttpResponse, TestServer, http_raw};
use prost::Message;
use qscheduler_server::ServerOptions;
use qscheduler_wire::protos;
use qscheduler_wire::qscheduler as adm;
use qscheduler_wire::swarming::v1 as pb;
use tonic::{Code, Status};

fn options(dir: &std::path::Path) -> ServerOptions {
    ServerOptions {
        store: dir.join("store").to_str().unwrap().to_owned(),
        ..ServerOptions::default()
    }
}

/// Checks a pRPC error response: HTTP status, code header, plain-text
/// message containing `message`.
fn expect_error(r: &HttpResponse, status: u16, code: i32, message: &str) {
    assert_eq!(r.status, status, "{r:?}");
    assert_eq!(
        r.header("x-prpc-grpc-code"),
        Some(code.to_string().as_str()),
        "{r:?}"
    );
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"), "{r:?}");
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; charset=utf-8"),
        "{r:?}"
    );
    assert!(
        r.text().contains(message),
        "expected {message:?} in {:?}",
        r.text()
    );
    assert!(r.text().ends_with('\n'), "{r:?}");
}

const NOTIFY: &str = "/prpc/swarming.v1.ExternalScheduler/NotifyTasks";
const BINARY: &str = "application/prpc; encoding=binary";

fn notify_body(pool: &str, task_id: &str) -> Vec<u8> {
    pb::NotifyTasksRequest {
        scheduler_id: pool.into(),
        notifications: vec![item(0, pending(task_id, None, &["os:x"], 0))],
        is_callback: false,
    }
    .encode_to_vec()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_of_the_real_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(ServerOptions {
        max_request_bytes: 2048,
        ..options(dir.path())
    })
    .await;
    let addr = server.addr;
    let rpc = Rpc::connect(addr, Transport::PrpcBinary).await;
    rpc.create_pool("p").await;

    // Content types the protocol does not know: 415.
    for ct in [
        "text/plain",
        "application/xml",
        "application/prpc; encoding=yaml",
        "application/prpc; encoding=binary; charset=utf-8",
    ] {
        let r = http_raw(
            addr,
            "POST",
            NOTIFY,
            &[("Content-Type", ct)],
            &notify_body("p", "ct"),
        )
        .await;
        expect_error(&r, 415, 3, "bad Content-Type header");
    }
    // Accept headers naming nothing the server produces: 406.
    let r = http_raw(
        addr,
        "POST",
        NOTIFY,
        &[("Content-Type", BINARY), ("Accept", "image/png")],
        &notify_body("p", "acc"),
    )
    .await;
    expect_error(&r, 406, 3, "bad Accept header");

    // Bodies that do not decode as the request message: 400.
    for (ct, body) in [
        (BINARY, &b"\xff\xff\xff\xff"[..]),
        (BINARY, &b"\x0a\x05ab"[..]),
        ("application/json", &b"{\"schedulerId\": "[..]),
        ("application/json", &b"{\"schedulerId\": 5}"[..]),
        (
            "application/json",
            &b"{\"notifications\": [{\"time\": \"yesterday\"}]}"[..],
        ),
        ("application/prpc; encoding=text", &b"scheduler_id: "[..]),
    ] {
        let r = http_raw(addr, "POST", NOTIFY, &[("Content-Type", ct)], body).await;
        expect_error(&r, 400, 3, "could not decode body");
    }

    // Unknown services and methods: 501, with the protocol's own messages.
    let r = http_raw(
        addr,
        "POST",
        "/prpc/swarming.v1.Nope/AssignTasks",
        &[("Content-Type", BINARY)],
        b"",
    )
    .await;
    expect_error(
        &r,
        501,
        12,
        "service \"swarming.v1.Nope\" is not implemented",
    );
    let r = http_raw(
        addr,
        "POST",
        "/prpc/swarming.v1.ExternalScheduler/Nope",
        &[("Content-Type", BINARY)],
        b"",
    )
    .await;
    expect_error(
        &r,
        501,
        12,
        "method \"Nope\" in service \"swarming.v1.ExternalScheduler\" is not implemented",
    );
    // A method of another service.
    let r = http_raw(
        addr,
        "POST",
        "/prpc/qscheduler.QSchedulerView/Wipe",
        &[("Content-Type", BINARY)],
        b"",
    )
    .await;
    expect_error(
        &r,
        501,
        12,
        "method \"Wipe\" in service \"qscheduler.QSchedulerView\" is not implemented",
    );

    // Malformed timeouts: 400.
    for timeout in ["abc", "10", "5x", "1.5S", "S", "-1S"] {
        let r = http_raw(
            addr,
            "POST",
            NOTIFY,
            &[("Content-Type", BINARY), ("X-Prpc-Grpc-Timeout", timeout)],
            &notify_body("p", "timeout"),
        )
        .await;
        expect_error(&r, 400, 3, "bad request headers");
    }

    // Bodies over the server's limit (2 KiB here): 503, whether the
    // length is announced, streamed, or only known after decompression.
    let big = pb::NotifyTasksRequest {
        scheduler_id: "p".into(),
        notifications: (0..60)
            .map(|i| item(0, pending(&format!("big-{i:04}"), None, &["os:x"], 0)))
            .collect(),
        is_callback: false,
    }
    .encode_to_vec();
    assert!(big.len() > 2048 && big.len() < 4096, "{}", big.len());
    let r = http_raw(addr, "POST", NOTIFY, &[("Content-Type", BINARY)], &big).await;
    expect_error(&r, 503, 14, "the request size exceeds the server limit");
    let mut chunked = format!("{:x}\r\n", big.len()).into_bytes();
    chunked.extend_from_slice(&big);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    let r = http_raw(
        addr,
        "POST",
        NOTIFY,
        &[("Content-Type", BINARY), ("Transfer-Encoding", "chunked")],
        &chunked,
    )
    .await;
    expect_error(&r, 503, 14, "the request size exceeds the server limit");
    let zipped = gzip(&big);
    assert!(zipped.len() < 2048);
    let r = http_raw(
        addr,
        "POST",
        NOTIFY,
        &[("Content-Type", BINARY), ("Content-Encoding", "gzip")],
        &zipped,
    )
    .await;
    expect_error(&r, 503, 14, "the request size exceeds the server limit");
    // The same over gRPC is refused too (tonic's own code for it).
    let grpc = Rpc::connect(addr, Transport::Grpc).await;
    let e = grpc
        .notify_tasks(pb::NotifyTasksRequest::decode(big.as_slice()).unwrap())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
    assert!(e.message().contains("too large"), "{e:?}");

    // Only POST calls methods.
    let r = http_raw(addr, "GET", NOTIFY, &[], b"").await;
    expect_error(&r, 405, 12, "pRPC calls use POST");
    assert_eq!(r.header("allow"), Some("POST, OPTIONS"));

    // Under the limit the same call works, compressed or not. Without a
    // content type it is refused: a web page could send it unasked.
    let r = http_raw(addr, "POST", NOTIFY, &[], &notify_body("p", "untyped")).await;
    expect_error(&r, 415, 3, "bad Content-Type header: missing");
    let r = http_raw(
        addr,
        "POST",
        NOTIFY,
        &[("Content-Type", BINARY)],
        &notify_body("p", "typed"),
    )
    .await;
    prpc_result::<pb::NotifyTasksResponse>(&r, Transport::PrpcBinary).unwrap();
    let small = notify_body("p", "small");
    let r = http_raw(
        addr,
        "POST",
        NOTIFY,
        &[("Content-Type", BINARY), ("Content-Encoding", "gzip")],
        &gzip(&small),
    )
    .await;
    prpc_result::<pb::NotifyTasksResponse>(&r, Transport::PrpcBinary).unwrap();

    // A response bigger than the client accepts: 503, and nothing else
    // about the call changes (it is a read).
    let inspect = adm::InspectPoolRequest {
        pool_id: "p".into(),
        ..Default::default()
    }
    .encode_to_vec();
    let r = http_raw(
        addr,
        "POST",
        "/prpc/qscheduler.QSchedulerView/InspectPool",
        &[("Content-Type", BINARY), ("X-Prpc-Max-Response-Size", "3")],
        &inspect,
    )
    .await;
    expect_error(&r, 503, 14, "exceeds the client limit 3");
    assert!(r.header("x-prpc-status-details-bin").is_some(), "{r:?}");
    for bad in ["0", "-1", "many"] {
        let r = http_raw(
            addr,
            "POST",
            "/prpc/qscheduler.QSchedulerView/InspectPool",
            &[("Content-Type", BINARY), ("X-Prpc-Max-Response-Size", bad)],
            &inspect,
        )
        .await;
        expect_error(&r, 400, 3, "bad request headers");
    }

    // None of the refused calls changed the pool.
    assert_eq!(rpc.waiting("p").await, ["small", "typed"]);
    server.stop().await;
}

/// Runs `f` on each transport against one server; `f` gets the client and
/// a pool of its own, already created, with account "acc".
async fn on_each_transport<F, Fut>(server: &TestServer, f: F)
where
    F: Fn(Rpc, String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for t in Transport::ALL {
        let rpc = Rpc::connect(server.addr, t).await;
        let pool = format!("pool-{}", t.name());
        rpc.create_pool(&pool).await;
        rpc.add_account(&pool, "acc", &[1.0], 100.0).await;
        f(rpc, pool).await;
    }
}

fn expect(res: Result<impl std::fmt::Debug, Status>, code: Code, message: &str, t: Transport) {
    let e = match res {
        Ok(ok) => panic!("{t:?}: the call must fail with {message:?}, got {ok:?}"),
        Err(e) => e,
    };
    assert_eq!(e.code(), code, "{t:?}: {e:?}");
    assert!(
        e.message().contains(message),
        "{t:?}: expected {message:?} in {:?}",
        e.message()
    );
}

fn notify_req(pool: &str, items: Vec<pb::NotifyTasksItem>) -> pb::NotifyTasksRequest {
    pb::NotifyTasksRequest {
        scheduler_id: pool.into(),
        notifications: items,
        is_callback: false,
    }
}

fn account_req(
    pool: &str,
    account: &str,
    config: protos::AccountConfig,
) -> adm::CreateAccountRequest {
    adm::CreateAccountRequest {
        pool_id: pool.into(),
        account_id: account.into(),
        config: Some(config),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_arguments_name_the_item_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(options(dir.path())).await;
    on_each_transport(&server, |rpc, pool| async move {
        let t = rpc.transport;
        let p = pool.as_str();
        let ok = |id: &str| item(0, pending(id, None, &["os:x"], 0));
        let inv = Code::InvalidArgument;

        // NotifyTasks: the first bad item is named; nothing of the call is
        // applied, not even its good items.
        let mut no_time = ok("t-1");
        no_time.time = None;
        let r = rpc
            .notify_tasks(notify_req(p, vec![ok("t-0"), no_time]))
            .await;
        expect(r, inv, "notifications[1].time is required", t);
        let r = rpc
            .notify_tasks(notify_req(
                p,
                vec![pb::NotifyTasksItem {
                    time: ts(0),
                    task: None,
                }],
            ))
            .await;
        expect(r, inv, "notifications[0].task is required", t);
        let mut no_enqueued = pending("t-0", None, &["os:x"], 0);
        no_enqueued.enqueued_time = None;
        let r = rpc
            .notify_tasks(notify_req(p, vec![item(0, no_enqueued)]))
            .await;
        expect(r, inv, "notifications[0].task.enqueued_time is required", t);
        let r = rpc
            .notify_tasks(notify_req(p, vec![ok("t-0"), ok("t-1"), ok("")]))
            .await;
        expect(r, inv, "notifications[2].task.id is required", t);
        let r = rpc
            .notify_tasks(notify_req(p, vec![ok("t-0"), item(0, running("t-1", ""))]))
            .await;
        expect(
            r,
            inv,
            "notifications[1].task.bot_id is required for a running task",
            t,
        );
        // Times the core cannot represent: before 1970, after 2262.
        let mut early = ok("t-0");
        early.time = Some(prost_types::Timestamp {
            seconds: -1,
            nanos: 0,
        });
        let r = rpc.notify_tasks(notify_req(p, vec![early])).await;
        expect(r, inv, "notifications[0].time", t);
        let mut late = pending("t-0", None, &["os:x"], 0);
        late.enqueued_time = Some(prost_types::Timestamp {
            seconds: 253_402_300_799,
            nanos: 0,
        });
        let r = rpc.notify_tasks(notify_req(p, vec![item(0, late)])).await;
        expect(r, inv, "notifications[0].task.enqueued_time", t);
        let r = rpc.notify_tasks(notify_req("", vec![ok("t-0")])).await;
        expect(r, inv, "scheduler_id is required", t);
        if t != Transport::PrpcJson {
            // Timestamps proto JSON cannot even spell.
            for nanos in [-1, 1_000_000_000] {
                let mut bad = ok("t-0");
                bad.time = Some(prost_types::Timestamp {
                    seconds: BASE_SECS,
                    nanos,
                });
                let r = rpc.notify_tasks(notify_req(p, vec![bad])).await;
                expect(r, inv, "notifications[0].time", t);
            }
        }

        // AssignTasks.
        let assign = |bots: Vec<pb::IdleBot>, time| pb::AssignTasksRequest {
            scheduler_id: pool.clone(),
            idle_bots: bots,
            time,
        };
        let r = rpc
            .assign_tasks(assign(vec![bot("b0", &[]), bot("", &["os:x"])], ts(1)))
            .await;
        expect(r, inv, "idle_bots[1].bot_id is required", t);
        let r = rpc.assign_tasks(assign(vec![bot("b0", &[])], None)).await;
        expect(r, inv, "time is required", t);
        let r = rpc
            .assign_tasks(pb::AssignTasksRequest {
                scheduler_id: String::new(),
                idle_bots: vec![],
                time: ts(1),
            })
            .await;
        expect(r, inv, "scheduler_id is required", t);
        let r = rpc
            .get_cancellations(pb::GetCancellationsRequest {
                scheduler_id: String::new(),
            })
            .await;
        expect(r, inv, "scheduler_id is required", t);
        let r = rpc
            .get_callbacks(pb::GetCallbacksRequest {
                scheduler_id: String::new(),
            })
            .await;
        expect(r, inv, "scheduler_id is required", t);

        // Account configurations out of range.
        let r = rpc
            .create_account(account_req(p, "bad", account_config(&[1.0, -2.0], 10.0)))
            .await;
        expect(
            r,
            inv,
            "config.charge_rate[1] = -2 must be a finite number",
            t,
        );
        let r = rpc
            .create_account(account_req(p, "bad", account_config(&[f32::NAN], 10.0)))
            .await;
        expect(r, inv, "config.charge_rate[0] = NaN", t);
        let r = rpc
            .create_account(account_req(p, "bad", account_config(&[1.0], f32::INFINITY)))
            .await;
        expect(r, inv, "config.max_charge_seconds = inf", t);
        let r = rpc
            .create_account(account_req(p, "bad", account_config(&[1.0; 6], 10.0)))
            .await;
        expect(r, inv, "config.charge_rate has 6 values", t);
        let mut fanout = account_config(&[1.0], 10.0);
        fanout.max_fanout = -1;
        let r = rpc.create_account(account_req(p, "bad", fanout)).await;
        expect(r, inv, "config.max_fanout = -1", t);
        let r = rpc
            .create_account(account_req(p, "", account_config(&[1.0], 10.0)))
            .await;
        expect(r, inv, "account_id is required", t);
        let r = rpc
            .mod_account(adm::ModAccountRequest {
                pool_id: pool.clone(),
                account_id: "acc".into(),
                charge_rate: vec![-1.0],
                ..Default::default()
            })
            .await;
        expect(r, inv, "charge_rate[0] = -1", t);
        let r = if t == Transport::PrpcJson {
            // The test's JSON encoder writes a NaN wrapper value as null
            // (absent); proto JSON spells it "NaN".
            let body =
                format!(r#"{{"poolId": {pool:?}, "accountId": "acc", "maxChargeSeconds": "NaN"}}"#);
            rpc.prpc_body::<adm::ModAccountResponse>(
                "qscheduler.QSchedulerAdmin",
                "ModAccount",
                body.into_bytes(),
            )
            .await
        } else {
            rpc.mod_account(adm::ModAccountRequest {
                pool_id: pool.clone(),
                account_id: "acc".into(),
                max_charge_seconds: Some(f32::NAN),
                ..Default::default()
            })
            .await
        };
        expect(r, inv, "max_charge_seconds = NaN", t);

        // Pool ids.
        let r = rpc
            .create_scheduler_pool(adm::CreateSchedulerPoolRequest {
                pool_id: "with-config".into(),
                config: Some(protos::SchedulerConfig::default()),
            })
            .await;
        expect(r, inv, "config: deprecated", t);
        for (id, message) in [
            (String::new(), "pool_id is required"),
            ("a\0b".to_owned(), "pool_id: control character U+0000"),
            (
                "a\nINFO forged".to_owned(),
                "pool_id: control character U+000A",
            ),
            (
                "x".repeat(1025),
                "pool_id: length 1025 bytes exceeds the limit of 1024 (setting limits.max_id_bytes)",
            ),
        ] {
            let r = rpc
                .create_scheduler_pool(adm::CreateSchedulerPoolRequest {
                    pool_id: id.clone(),
                    config: None,
                })
                .await;
            expect(r, inv, message, t);
            let r = rpc
                .inspect_pool(adm::InspectPoolRequest {
                    pool_id: id.clone(),
                    ..Default::default()
                })
                .await;
            expect(r, inv, message, t);
        }
        let r = rpc
            .wipe(adm::WipeRequest {
                pool_id: String::new(),
            })
            .await;
        expect(r, inv, "pool_id is required", t);
        let r = rpc
            .mod_scheduler_pool(adm::ModSchedulerPoolRequest {
                pool_id: String::new(),
                ..Default::default()
            })
            .await;
        expect(r, inv, "pool_id is required", t);
        let r = rpc
            .delete_scheduler_pool(adm::DeleteSchedulerPoolRequest {
                pool_id: String::new(),
            })
            .await;
        expect(r, inv, "pool_id is required", t);
        let r = rpc
            .list_accounts(adm::ListAccountsRequest {
                pool_id: String::new(),
            })
            .await;
        expect(r, inv, "pool_id is required", t);
        let r = rpc
            .delete_account(adm::DeleteAccountRequest {
                pool_id: pool.clone(),
                account_id: String::new(),
            })
            .await;
        expect(r, inv, "account_id is required", t);

        // Nothing of it reached the pool.
        let inspect = rpc.inspect(p).await;
        assert_eq!(
            (inspect.num_waiting_tasks, inspect.num_idle_bots),
            (0, 0),
            "{t:?}"
        );
        let accounts = rpc
            .list_accounts(adm::ListAccountsRequest {
                pool_id: pool.clone(),
            })
            .await
            .unwrap();
        assert_eq!(accounts.accounts.keys().collect::<Vec<_>>(), ["acc"]);
        assert_eq!(
            accounts.accounts["acc"].charge_rate,
            [1.0, 0.0, 0.0, 0.0, 0.0]
        );
        assert_eq!(accounts.accounts["acc"].max_charge_seconds, 100.0);
    })
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_and_existing_things() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(options(dir.path())).await;
    on_each_transport(&server, |rpc, pool| async move {
        let t = rpc.transport;
        let nf = Code::NotFound;
        let ghost = "ghost-pool";
        let named = "no pool with id \"ghost-pool\"";
        let r = rpc
            .assign_tasks(pb::AssignTasksRequest {
                scheduler_id: ghost.into(),
                idle_bots: vec![bot("b", &[])],
                time: ts(0),
            })
            .await;
        expect(r, nf, named, t);
        let r = rpc
            .notify_tasks(notify_req(ghost, vec![item(0, pending("x", None, &[], 0))]))
            .await;
        expect(r, nf, named, t);
        let r = rpc
            .get_cancellations(pb::GetCancellationsRequest {
                scheduler_id: ghost.into(),
            })
            .await;
        expect(r, nf, named, t);
        let r = rpc
            .get_callbacks(pb::GetCallbacksRequest {
                scheduler_id: ghost.into(),
            })
            .await;
        expect(r, nf, named, t);
        let r = rpc
            .inspect_pool(adm::InspectPoolRequest {
                pool_id: ghost.into(),
                ..Default::default()
            })
            .await;
        expect(r, nf, named, t);
        let r = rpc
            .list_accounts(adm::ListAccountsRequest {
                pool_id: ghost.into(),
            })
            .await;
        expect(r, nf, named, t);
        let r = rpc
            .create_account(account_req(ghost, "a", account_config(&[1.0], 1.0)))
            .await;
        expect(r, nf, named, t);
        let r = rpc
            .wipe(adm::WipeRequest {
                pool_id: ghost.into(),
            })
            .await;
        expect(r, nf, named, t);
        let r = rpc
            .delete_scheduler_pool(adm::DeleteSchedulerPoolRequest {
                pool_id: ghost.into(),
            })
            .await;
        expect(r, nf, named, t);

        // An account that does not exist cannot be modified; deleting it is
        // not an error.
        let r = rpc
            .mod_account(adm::ModAccountRequest {
                pool_id: pool.clone(),
                account_id: "ghost".into(),
                max_fanout: Some(1),
                ..Default::default()
            })
            .await;
        expect(r, nf, "no account with id \"ghost\"", t);
        rpc.delete_account(adm::DeleteAccountRequest {
            pool_id: pool.clone(),
            account_id: "ghost".into(),
        })
        .await
        .unwrap();

        // A pool exists once.
        let r = rpc
            .create_scheduler_pool(adm::CreateSchedulerPoolRequest {
                pool_id: pool.clone(),
                config: None,
            })
            .await;
        expect(
            r,
            Code::AlreadyExists,
            &format!("pool {pool:?} already exists"),
            t,
        );

        // An account created again is replaced, balance included
        // (reference §9.1): charge it first.
        rpc.assign(&pool, 0, vec![bot("b", &[])]).await;
        assert_eq!(rpc.balance(&pool, "acc").await, [100.0, 0.0, 0.0, 0.0, 0.0]);
        rpc.add_account(&pool, "acc", &[2.0, 1.0], 5.0).await;
        assert_eq!(rpc.balance(&pool, "acc").await, [0.0; 5], "{t:?}");
        let accounts = rpc
            .list_accounts(adm::ListAccountsRequest {
                pool_id: pool.clone(),
            })
            .await
            .unwrap();
        assert_eq!(
            accounts.accounts["acc"].charge_rate,
            [2.0, 1.0, 0.0, 0.0, 0.0]
        );
        assert_eq!(accounts.accounts["acc"].max_charge_seconds, 5.0);
    })
    .await;
    server.stop().await;
}

/// A full pool queue answers RESOURCE_EXHAUSTED at once. The pool's writer
/// is held (inside an observer) so that calls pile up deterministically: a
/// queue of one takes one call, and the others are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_queue_is_resource_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path());
    opts.pool.queue_capacity = 1;
    let recorder = Arc::new(Recorder::default());
    let server = TestServer::start_with(opts, recorder.clone()).await;
    for t in Transport::ALL {
        let rpc = Rpc::connect(server.addr, t).await;
        let pool = format!("busy-{}", t.name());
        rpc.create_pool(&pool).await;
        recorder.hold_next(&pool);
        rpc.notify(&pool, vec![item(0, pending("first", None, &["x"], 0))])
            .await;
        recorder.wait_holding().await;

        let mut calls = tokio::task::JoinSet::new();
        for i in 0..4 {
            let rpc = rpc.clone();
            let pool = pool.clone();
            calls.spawn(async move {
                let id = format!("queued-{i}");
                let r = rpc
                    .notify_tasks(notify_req(
                        &pool,
                        vec![item(1, pending(&id, None, &["x"], 0))],
                    ))
                    .await;
                (id, r)
            });
        }
        let mut refused = Vec::new();
        for _ in 0..3 {
            let (id, r) = tokio::time::timeout(Duration::from_secs(10), calls.join_next())
                .await
                .expect("refusals are immediate")
                .unwrap()
                .unwrap();
            let e = r.expect_err("only one call fits in the queue");
            assert_eq!(e.code(), Code::ResourceExhausted, "{t:?}: {e:?}");
            assert!(
                e.message().contains(&format!(
                    "pool {pool:?} is overloaded: too many calls waiting"
                )),
                "{t:?}: {e:?}"
            );
            refused.push(id);
        }
        // The fourth waits in the queue until the writer goes on.
        assert!(
            tokio::time::timeout(Duration::from_millis(100), calls.join_next())
                .await
                .is_err(),
            "{t:?}: the queued call must wait for the held writer"
        );
        recorder.release();
        let (accepted, r) = calls.join_next().await.unwrap().unwrap();
        r.unwrap_or_else(|e| panic!("{t:?}: the queued call: {e:?}"));
        assert!(!refused.contains(&accepted));

        let mut waiting = rpc.waiting(&pool).await;
        waiting.sort();
        assert_eq!(waiting, ["first".to_owned(), accepted], "{t:?}");
    }
    server.stop().await;
}

/// A call whose deadline passes before its batch runs is answered
/// DEADLINE_EXCEEDED and left out of the batch: with a batching window far
/// longer than the call's time, that is always the case. The time is the
/// server's cap on every call (gRPC clients give up on their own timeout
/// before the server answers), or, on pRPC, the client's timeout header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_calls_are_deadline_exceeded_and_not_applied() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path());
    opts.pool.batch_window = Duration::from_millis(300);
    opts.request_timeout = Duration::from_millis(50);
    let server = TestServer::start(opts).await;
    for t in Transport::ALL {
        let rpc = Rpc::connect(server.addr, t).await;
        let pool = format!("slow-{}", t.name());
        // Set up directly: creating a pool (files and fsyncs) can take
        // longer than the 50 ms every call is held to here.
        server
            .registry
            .create(&pool, qscheduler_server::service::wall_now())
            .await
            .expect("create the pool");
        let mut callers = vec![rpc.clone()];
        if t != Transport::Grpc {
            callers.push(rpc.clone().with_timeout(Duration::from_millis(1)));
        }
        for (i, caller) in callers.iter().enumerate() {
            let r = caller
                .notify_tasks(notify_req(
                    &pool,
                    vec![item(0, pending(&format!("late-{i}"), None, &["x"], 0))],
                ))
                .await;
            let e = r.expect_err("the call cannot wait for a 300 ms window");
            assert_eq!(e.code(), Code::DeadlineExceeded, "{t:?} {i}: {e:?}");
            let r = caller
                .assign_tasks(pb::AssignTasksRequest {
                    scheduler_id: pool.clone(),
                    idle_bots: vec![bot(&format!("late-bot-{i}"), &["x"])],
                    time: ts(1),
                })
                .await;
            let e = r.expect_err("the call cannot wait for a 300 ms window");
            assert_eq!(e.code(), Code::DeadlineExceeded, "{t:?} {i}: {e:?}");
            // Administrative calls keep their deadline too.
            let r = caller
                .create_account(account_req(
                    &pool,
                    &format!("late-account-{i}"),
                    account_config(&[1.0], 1.0),
                ))
                .await;
            let e = r.expect_err("the call cannot wait for a 300 ms window");
            assert_eq!(e.code(), Code::DeadlineExceeded, "{t:?} {i}: {e:?}");
        }
        // A call without a deadline, queued after them, is applied; they
        // are not.
        let patient = qscheduler_server::translate::notify_call(
            &notify_req(&pool, vec![item(2, pending("patient", None, &["x"], 0))]),
            &qscheduler_server::limits::Limits::default(),
            qscheduler_core::Time::MAX,
        )
        .unwrap();
        let p = server.registry.get(&pool).await.unwrap();
        p.notify(patient, None).await.unwrap();
        // Read the state itself: an InspectPool call would be held to the
        // same 50 ms, which a loaded machine may not meet.
        let state = p.read();
        let s = state.scheduler();
        let waiting: Vec<&str> = s.queued_requests().iter().map(|w| w.id).collect();
        assert_eq!(waiting, ["patient"], "{t:?}");
        assert_eq!(s.idle_len(), 0, "{t:?}: a late AssignTasks left its bot");
        let accounts: Vec<&str> = s.accounts().map(|(id, _, _)| id).collect();
        assert!(
            accounts.is_empty(),
            "{t:?}: an account created after its caller was told DEADLINE_EXCEEDED: {accounts:?}"
        );
    }
    server.stop().await;
}

/// Pool ids are names, whatever characters they hold: nothing in them
/// reaches the file system as a path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_pool_ids_are_just_names() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = options(dir.path());
    // Pool ids as long as the store allows (and task ids a little longer).
    options.limits.max_id_chars = 2048;
    options.limits.max_id_bytes = 2048;
    let server = TestServer::start(options).await;
    let rpc = Rpc::connect(server.addr, Transport::PrpcJson).await;
    let long = "x".repeat(1024);
    let ids = [
        "../escape",
        "a/b",
        ".",
        "..",
        "/abs",
        "ünï cødé",
        "CON",
        long.as_str(),
    ];
    for id in ids {
        rpc.create_pool(id).await;
        rpc.notify(
            id,
            vec![item(0, pending(&format!("in {id}"), None, &["x"], 0))],
        )
        .await;
    }
    for id in ids {
        assert_eq!(rpc.waiting(id).await, [format!("in {id}")], "{id:?}");
    }
    let outside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(outside, ["store"], "nothing written outside the store");
    for id in ids {
        rpc.delete_scheduler_pool(adm::DeleteSchedulerPoolRequest { pool_id: id.into() })
            .await
            .unwrap();
    }
    for id in ids {
        let e = rpc
            .inspect_pool(adm::InspectPoolRequest {
                pool_id: id.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{id:?}");
    }
    server.stop().await;
}
