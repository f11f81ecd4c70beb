//! "Write what changed": the bytes a batch writes depend on the batch, not
//! on how many tasks the pool holds (the original rewrote the whole state on
//! every batch).

use std::sync::{Arc, Mutex};

use qscheduler_core::{AssignCall, IdleBot, Notification, NotifyCall, NotifyKind, Time};
use qscheduler_server::pool::{CommitInfo, Observer, PoolOptions, PoolRef};
use qscheduler_server::registry::Registry;
use qscheduler_store::{Store, StoreOptions};

#[derive(Default)]
struct Bytes(Mutex<Vec<u64>>);

impl Observer for Bytes {
    fn committed(&self, _pool: &str, c: &CommitInfo<'_>) {
        self.0.lock().expect("lock").push(c.bytes);
    }
}

fn t(s: i64) -> Time {
    Time::from_secs(1_900_000_000 + s)
}

fn notify(from: usize, n: usize) -> NotifyCall {
    NotifyCall {
        notifications: (from..from + n)
            .map(|i| Notification {
                time: t(1),
                task_id: format!("task-{i:08}"),
                kind: NotifyKind::Waiting {
                    account: String::new(),
                    base_labels: vec!["pool:x".into(), format!("os:{}", i % 3)],
                    provisionable_labels: vec![],
                    enqueue_time: t(0),
                    tags: vec![],
                },
            })
            .collect(),
        is_callback: false,
    }
}

fn assign(bot: usize) -> AssignCall {
    AssignCall {
        time: t(2),
        bots: vec![IdleBot {
            id: format!("bot-{bot:06}"),
            labels: vec!["pool:x".into(), "os:1".into()],
        }],
    }
}

/// Waits until the observer has seen `n` batches. It runs right after a
/// batch's calls are answered, so it may lag behind them a little.
async fn seen(observer: &Bytes, n: usize) -> Vec<u64> {
    loop {
        let v = observer.0.lock().expect("lock").clone();
        if v.len() >= n {
            return v;
        }
        tokio::task::yield_now().await;
    }
}

/// Bytes written by one NotifyTasks of one new task and by one AssignTasks
/// of one bot (sequential calls: one batch each). `batches` counts the
/// batches committed so far.
async fn one_of_each(p: &PoolRef, observer: &Bytes, batches: &mut usize, n: usize) -> (u64, u64) {
    p.notify(notify(90_000_000 + n, 1), None)
        .await
        .expect("notify");
    p.assign(assign(900_000 + n), None).await.expect("assign");
    *batches += 2;
    let v = seen(observer, *batches).await;
    (v[*batches - 2], v[*batches - 1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_bytes_do_not_grow_with_the_queue() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path().to_str().expect("utf-8"), StoreOptions::default())
        .await
        .expect("store");
    let observer = Arc::new(Bytes::default());
    let r = Registry::new(store, PoolOptions::default(), observer.clone());
    r.create("p", t(0)).await.expect("create");
    let p = r.get("p").await.expect("pool");
    // The pool's first record is written at creation, not by its writer.
    let mut batches = 0;
    let small = one_of_each(&p, &observer, &mut batches, 0).await;
    for i in (0..20_000).step_by(2000) {
        p.notify(notify(i, 2000), None).await.expect("fill");
        batches += 1;
    }
    assert!(p.read().scheduler().queued_len() >= 20_000);
    let large = one_of_each(&p, &observer, &mut batches, 1).await;
    assert_eq!(
        small, large,
        "bytes written by (NotifyTasks, AssignTasks) with an empty pool vs 20,000 queued tasks"
    );
    assert!(small.0 < 300 && small.1 < 300, "{small:?}");
    drop(p);
    r.shutdown().await;
}
