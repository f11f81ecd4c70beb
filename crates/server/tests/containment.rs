//! Staying up: a panicking pool writer fails its pool alone, reads come
//! from the follower copy and still see every acknowledged write,
//! InspectPool pages, the byte budgets and pool cap refuse calls with
//! `RESOURCE_EXHAUSTED`, and a call from the future leaves the pool's
//! clock alone. Real server, real sockets.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::TestServer;
use common::rpc::{Rpc, Transport, bot, item, pending};
use qscheduler_server::ServerOptions;
use qscheduler_server::metrics::MetricsOptions;
use qscheduler_server::pool::{CommitInfo, Observer, PoolOptions};
use qscheduler_wire::qscheduler as adm;
use qscheduler_wire::swarming::v1 as pb;
use tonic::Code;

/// Panics on the writer of pool "boom" while armed.
struct PanicOn {
    armed: AtomicBool,
}

impl Observer for PanicOn {
    fn committed(&self, pool: &str, _: &CommitInfo<'_>) {
        if pool == "boom" && self.armed.swap(false, Ordering::AcqRel) {
            panic!("injected panic in the writer of {pool}");
        }
    }
}

fn options() -> (ServerOptions, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = ServerOptions {
        store: dir.path().to_str().expect("utf-8").to_owned(),
        metrics: MetricsOptions::default(),
        ..ServerOptions::default()
    };
    (options, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_writer_fails_its_pool_alone() {
    let (mut options, _dir) = options();
    options.event_log.files = None;
    let observer = Arc::new(PanicOn {
        armed: AtomicBool::new(false),
    });
    let server = TestServer::start_with(options, observer.clone()).await;
    let rpc = Rpc::connect(server.addr, Transport::Grpc).await;
    rpc.create_pool("boom").await;
    rpc.create_pool("calm").await;
    observer.armed.store(true, Ordering::Release);
    // The call that triggers the panic was answered before the observer
    // ran; the pool then closes and is reopened from its log by the next
    // call, which succeeds.
    rpc.notify("boom", vec![item(10, pending("t1", None, &["a"], 10))])
        .await;
    let mut waiting = Vec::new();
    // Up to two minutes: only a pool that never comes back fails the test.
    for _ in 0..4800 {
        let r = rpc
            .notify_tasks(pb::NotifyTasksRequest {
                scheduler_id: "boom".into(),
                notifications: vec![item(11, pending("t2", None, &["a"], 11))],
                is_callback: false,
            })
            .await;
        match r.map(drop) {
            Ok(()) => {
                waiting = rpc.waiting("boom").await;
                break;
            }
            // Calls racing the reopening may get UNAVAILABLE.
            Err(s) if s.code() == Code::Unavailable => {
                tokio::time::sleep(std::time::Duration::from_millis(25)).await;
            }
            Err(s) => panic!("unexpected error after the panic: {s:?}"),
        }
    }
    assert_eq!(waiting, ["t1", "t2"], "the pool came back with its log");
    // Other pools, creation and deletion were never affected.
    rpc.notify("calm", vec![item(10, pending("c1", None, &["a"], 10))])
        .await;
    rpc.create_pool("fresh").await;
    rpc.delete_scheduler_pool(adm::DeleteSchedulerPoolRequest {
        pool_id: "fresh".into(),
    })
    .await
    .expect("delete");
    let (_, metrics) = common::get(server.addr, "/metrics").await;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("qscheduler_pool_writer_panics_total{pool=\"boom\"}"))
        .unwrap_or_else(|| panic!("no panic counter in\n{metrics}"));
    assert!(line.ends_with(" 1"), "{line}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_from_the_follower_see_every_acknowledged_write_and_page() {
    let (mut options, _dir) = options();
    // Every pool gets its follower at once, so every read below goes
    // through it.
    options.pool = PoolOptions {
        read_copy_above: 0,
        ..PoolOptions::default()
    };
    let server = TestServer::start(options).await;
    let rpc = Rpc::connect(server.addr, Transport::PrpcBinary).await;
    rpc.create_pool("p").await;
    for i in 0..30 {
        let account = format!("a{i}");
        rpc.add_account("p", &account, &[1.0], 10.0).await;
        let accounts = rpc
            .list_accounts(adm::ListAccountsRequest {
                pool_id: "p".into(),
            })
            .await
            .expect("list");
        assert!(
            accounts.accounts.contains_key(&account),
            "write {i} not seen by the read that followed it"
        );
    }
    let items = (0..25)
        .map(|i| item(10 + i, pending(&format!("t{i:02}"), None, &["a"], 10 + i)))
        .collect();
    rpc.notify("p", items).await;
    let everything = rpc.inspect("p").await;
    assert_eq!(everything.waiting_tasks.len(), 25);
    assert!(everything.next_page_token.is_empty());
    let mut paged = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = rpc
            .inspect_pool(adm::InspectPoolRequest {
                pool_id: "p".into(),
                page_size: 10,
                page_token: token.clone(),
            })
            .await
            .expect("page");
        pages += 1;
        assert!(page.waiting_tasks.len() <= 10);
        assert_eq!(page.num_waiting_tasks, 25, "counts are in every page");
        paged.extend(page.waiting_tasks.into_iter().map(|t| t.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        assert!(pages < 10, "paging does not end");
    }
    let all: Vec<String> = everything.waiting_tasks.into_iter().map(|t| t.id).collect();
    assert_eq!(paged, all, "the pages, in order, are the whole list");
    for (size, token, field) in [(-1, "", "page_size"), (10, "nonsense", "page_token")] {
        let e = rpc
            .inspect_pool(adm::InspectPoolRequest {
                pool_id: "p".into(),
                page_size: size,
                page_token: token.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().starts_with(field), "{e:?}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_and_the_pool_cap_refuse_with_resource_exhausted() {
    let (mut options, _dir) = options();
    options.limits.pool_queue_bytes = 300;
    options.limits.max_pools = 2;
    let server = TestServer::start(options).await;
    let rpc = Rpc::connect(server.addr, Transport::Grpc).await;
    rpc.create_pool("p1").await;
    rpc.create_pool("p2").await;
    let e = rpc
        .create_scheduler_pool(adm::CreateSchedulerPoolRequest {
            pool_id: "p3".into(),
            config: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("limits.max_pools"), "{e:?}");
    // A call whose size alone is over the pool's budget.
    let big: Vec<_> = (0..20)
        .map(|i| item(10, pending(&format!("task-{i}"), None, &["a"], 10)))
        .collect();
    let e = rpc
        .notify_tasks(pb::NotifyTasksRequest {
            scheduler_id: "p1".into(),
            notifications: big,
            is_callback: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("limits.pool_queue_bytes"), "{e:?}");
    // Nothing of it was applied; a small call still goes through.
    assert!(rpc.waiting("p1").await.is_empty());
    server.stop().await;
}

/// A call dated further ahead of the server's clock than `max_clock_skew`
/// is refused, AssignTasks and NotifyTasks alike, and leaves the pool's
/// clock where it was: a clock moved into the future never comes back
/// (time only moves forward), and charging and bot expiry would stop until
/// real time caught up. A call within the skew moves it as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_from_the_future_leaves_the_pool_clock_alone() {
    let (mut options, _dir) = options();
    options.event_log.files = None;
    // Not the default, which the test server widens for its scenarios
    // dated 2030.
    options.limits.max_clock_skew = Duration::from_secs(2 * 3600);
    let server = TestServer::start(options).await;
    let rpc = Rpc::connect(server.addr, Transport::Grpc).await;
    rpc.create_pool("clock").await;
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64;
    let at = |seconds: i64| Some(prost_types::Timestamp { seconds, nanos: 0 });
    let assign = |time: i64, id: &str| pb::AssignTasksRequest {
        scheduler_id: "clock".into(),
        idle_bots: vec![bot(id, &["os:linux"])],
        time: at(time),
    };
    rpc.assign_tasks(assign(wall, "present"))
        .await
        .expect("a call of the present");
    let pool = server.registry.get("clock").await.expect("the pool");
    let before = pool.read().scheduler().now();

    // In 2262, and three hours ahead.
    for future in [9_214_646_400, wall + 3 * 3600] {
        let e = rpc
            .assign_tasks(assign(future, "from-the-future"))
            .await
            .expect_err("refused");
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains("limits.max_clock_skew"), "{e:?}");
        let e = rpc
            .notify_tasks(pb::NotifyTasksRequest {
                scheduler_id: "clock".into(),
                notifications: vec![pb::NotifyTasksItem {
                    time: at(future),
                    task: Some(pb::TaskSpec {
                        id: "from-the-future".into(),
                        state: pb::task_spec::State::Pending as i32,
                        slices: vec![pb::SliceSpec {
                            dimensions: vec!["os:linux".into()],
                        }],
                        enqueued_time: at(wall),
                        ..Default::default()
                    }),
                }],
                is_callback: false,
            })
            .await
            .expect_err("refused");
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains("limits.max_clock_skew"), "{e:?}");
        let state = pool.read();
        let s = state.scheduler();
        assert_eq!(s.now(), before, "the clock moved to {future}");
        assert_eq!((s.idle_len(), s.queued_len()), (1, 0), "applied anyway");
    }

    // An hour ahead is within the skew.
    rpc.assign_tasks(assign(wall + 3600, "present"))
        .await
        .expect("within the skew");
    let expected = qscheduler_core::time::Time::from_unix(wall + 3600, 0).expect("a time");
    assert_eq!(pool.read().scheduler().now(), expected);
    server.stop().await;
}
