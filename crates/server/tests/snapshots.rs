//! Background snapshots, taken from a copy or from a follower, recover the
//! exact state the writer had: the newest snapshot plus the log after it,
//! replayed, equals the live pool, byte for byte in snapshot form.

use std::sync::Arc;
use std::time::Duration;

use qscheduler_core::{
    AccountConfig, AssignCall, Command, IdleBot, Notification, NotifyCall, NotifyKind, Time,
};
use qscheduler_server::pool::{NoObserver, PoolOptions, recover};
use qscheduler_server::registry::Registry;
use qscheduler_store::{Store, StoreOptions};

fn t(s: i64) -> Time {
    Time::from_secs(1_900_000_000 + s)
}

fn waiting(id: String, account: &str, at: i64) -> Notification {
    Notification {
        time: t(at),
        task_id: id,
        kind: NotifyKind::Waiting {
            account: account.into(),
            base_labels: vec!["pool:x".into()],
            provisionable_labels: vec![],
            enqueue_time: t(at),
            tags: vec![],
        },
    }
}

async fn run(follower_above: Duration) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_str().expect("utf-8").to_owned();
    let options = PoolOptions {
        snapshot_every_records: 4,
        follower_above,
        ..PoolOptions::default()
    };
    let store = Store::open(&path, StoreOptions::default())
        .await
        .expect("store");
    let r = Registry::new(store, options, Arc::new(NoObserver));
    r.create("p", t(0)).await.expect("create");
    let p = r.get("p").await.expect("pool");
    p.admin(
        Command::CreateAccount {
            account_id: "a".into(),
            config: AccountConfig {
                charge_rate: [1.0, 0.0, 0.0, 0.0, 0.0],
                max_charge_seconds: 100.0,
                ..AccountConfig::default()
            },
        },
        None,
    )
    .await
    .expect("account");
    for i in 0..60i64 {
        let notifications = (0..3)
            .map(|k| waiting(format!("t{i}-{k}"), if k == 0 { "a" } else { "" }, i))
            .collect();
        p.notify(
            NotifyCall {
                notifications,
                is_callback: false,
            },
            None,
        )
        .await
        .expect("notify");
        let bots = (0..2)
            .map(|b| IdleBot {
                id: format!("bot{}", (i * 2 + b) % 7),
                labels: vec!["pool:x".into()],
            })
            .collect();
        p.assign(AssignCall { time: t(i), bots }, None)
            .await
            .expect("assign");
    }
    let expected = qscheduler_core::snapshot::encode(&p.read());
    drop(p);
    r.shutdown().await;
    drop(r);

    let store = Store::open(&path, StoreOptions::default())
        .await
        .expect("reopen");
    let (_, rec) = store.open_pool("p").await.expect("open");
    let (seq, _) = rec.snapshot.as_ref().expect("snapshots were written");
    assert!(*seq > 60, "a recent snapshot: seq {seq}");
    let recovered = recover("p", &rec).expect("recover");
    assert!(
        qscheduler_core::snapshot::encode(&recovered) == expected,
        "snapshot + log replay differs from the live state (follower_above {follower_above:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_from_copies_recover_the_live_state() {
    run(Duration::MAX).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_from_a_follower_recover_the_live_state() {
    // Every pool gets a follower at its first snapshot.
    run(Duration::ZERO).await;
}
