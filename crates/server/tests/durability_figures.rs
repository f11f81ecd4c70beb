//! Durability figures: bytes written per batch, snapshot stall, recovery
//! time and durable-ack throughput. Timings depend on the machine, so these
//! tests assert nothing about them and are ignored by default; run them in
//! release:
//!
//! ```sh
//! cargo test --release -p qscheduler-server --test durability_figures -- --ignored --nocapture --test-threads 1
//! ```
//!
//! `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`) is used
//! for the PostgreSQL throughput figure, in a schema of its own.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qscheduler_core::{
    AccountConfig, AssignCall, Command, IdleBot, Notification, NotifyCall, NotifyKind, Time,
};
use qscheduler_server::pool::{CommitInfo, Observer, PoolOptions, PoolRef};
use qscheduler_server::registry::Registry;
use qscheduler_store::{Store, StoreOptions};

const T0: i64 = 1_900_000_000;

/// Remembers the size and apply time of every committed batch.
#[derive(Default)]
struct Bytes(Mutex<Vec<(usize, u64)>>, Mutex<Vec<Duration>>);

impl Observer for Bytes {
    fn committed(&self, _pool: &str, c: &CommitInfo<'_>) {
        self.0.lock().expect("lock").push((c.calls, c.bytes));
        self.1.lock().expect("lock").push(c.apply_latency);
    }
}

impl Bytes {
    /// The batches since the last call. The observer runs after the calls
    /// are answered, so the first entry may belong to the previous phase:
    /// it is dropped.
    fn take(&self) -> Vec<(usize, u64)> {
        let mut v = std::mem::take(&mut *self.0.lock().expect("lock"));
        if !v.is_empty() {
            v.remove(0);
        }
        v
    }

    fn mean_apply(&self) -> Duration {
        let v = std::mem::take(&mut *self.1.lock().expect("lock"));
        v.iter().sum::<Duration>() / (v.len().max(1) as u32)
    }
}

fn t(secs: i64) -> Time {
    Time::from_secs(T0 + secs)
}

/// Tasks shaped like the benchmark traces: a few base labels out of a
/// small corpus, one provisionable label, 20 accounts.
fn tasks(from: usize, n: usize, at: i64) -> NotifyCall {
    let os = ["os:linux", "os:mac", "os:win", "os:android"];
    NotifyCall {
        notifications: (from..from + n)
            .map(|i| Notification {
                time: t(at),
                task_id: format!("task-{i:08}-abcdefgh"),
                kind: NotifyKind::Waiting {
                    account: format!("account-{}", i % 20),
                    base_labels: {
                        let mut l = vec!["pool:main".to_string(), os[i % 4].to_string()];
                        if i % 3 == 0 {
                            l.push(format!("cap:{}", i % 100));
                        }
                        l.sort();
                        l
                    },
                    provisionable_labels: vec![format!("cache:{}", i % 64)],
                    enqueue_time: t(at - 60),
                    tags: vec![format!("qs_account:account-{}", i % 20)],
                },
            })
            .collect(),
        is_callback: false,
    }
}

fn bots(from: usize, n: usize, at: i64) -> AssignCall {
    AssignCall {
        time: t(at),
        bots: (from..from + n)
            .map(|i| IdleBot {
                id: format!("bot-{i:06}"),
                labels: vec![
                    "pool:main".into(),
                    "os:linux".into(),
                    format!("cache:{}", i % 64),
                    format!("cap:{}", i % 100),
                ],
            })
            .collect(),
    }
}

async fn open(dir: &std::path::Path, options: PoolOptions, observer: Arc<Bytes>) -> Arc<Registry> {
    let store = Store::open(dir.to_str().expect("utf-8"), StoreOptions::default())
        .await
        .expect("store");
    let r = Registry::new(store, options, observer);
    r.recover_all().await.expect("recover");
    r
}

/// Fills `pool` with `n` queued tasks, 1,000 per call, and 20 funded
/// accounts (balances so low that most tasks stay queued at the free level
/// behind the bots).
async fn fill(p: &PoolRef, n: usize) {
    for a in 0..20 {
        p.admin(
            Command::CreateAccount {
                account_id: format!("account-{a}"),
                config: AccountConfig {
                    charge_rate: [1.0, 0.5, 0.0, 0.0, 0.0],
                    max_charge_seconds: 600.0,
                    ..AccountConfig::default()
                },
            },
            None,
        )
        .await
        .expect("account");
    }
    for i in (0..n).step_by(1000) {
        p.notify(tasks(i, 1000.min(n - i), 1), None)
            .await
            .expect("notify");
    }
}

fn report(label: &str, v: &[(usize, u64)]) {
    let n = v.len().max(1) as u64;
    let bytes: u64 = v.iter().map(|x| x.1).sum();
    let calls: usize = v.iter().map(|x| x.0).sum();
    println!(
        "{label}: {} batches, {calls} calls, {:.0} bytes per batch on average (min {}, max {})",
        v.len(),
        bytes as f64 / n as f64,
        v.iter().map(|x| x.1).min().unwrap_or(0),
        v.iter().map(|x| x.1).max().unwrap_or(0),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "prints figures; run in release"]
async fn bytes_per_batch_at_100k_queued_tasks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let observer = Arc::new(Bytes::default());
    let r = open(dir.path(), PoolOptions::default(), observer.clone()).await;
    r.create("p", t(0)).await.expect("create");
    let p = r.get("p").await.expect("pool");
    fill(&p, 100_000).await;
    // 2,000 bots take work, so the pool runs with a full fleet.
    for i in (0..2000).step_by(100) {
        p.assign(bots(i, 100, 2), None).await.expect("assign");
    }
    observer.take();
    observer.mean_apply();
    println!(
        "pool: {} queued, {} running",
        p.read().scheduler().queued_len(),
        p.read().scheduler().running_len()
    );

    // Typical calls, one per batch.
    for i in 0..200 {
        p.notify(tasks(200_000 + i, 1, 10), None)
            .await
            .expect("notify");
    }
    report("NotifyTasks, 1 new task", &observer.take());
    for i in 0..200 {
        p.notify(tasks(300_000 + 10 * i, 10, 10), None)
            .await
            .expect("notify");
    }
    report("NotifyTasks, 10 new tasks", &observer.take());
    for i in 0..200 {
        p.assign(bots(5000 + i, 1, 11), None).await.expect("assign");
    }
    report("AssignTasks, 1 bot", &observer.take());
    // 100 concurrent calls gathered into one batch.
    for round in 0..20 {
        let mut calls = Vec::new();
        for i in 0..50 {
            let p = p.clone();
            calls.push(tokio::spawn(async move {
                p.notify(tasks(400_000 + 1000 * round + i, 1, 12), None)
                    .await
                    .expect("notify")
            }));
        }
        for i in 0..50 {
            let p = p.clone();
            calls.push(tokio::spawn(async move {
                p.assign(bots(6000 + 100 * round + i, 1, 12), None)
                    .await
                    .map(|_| ())
                    .expect("assign")
            }));
        }
        for c in calls {
            c.await.expect("call");
        }
    }
    report(
        "100 concurrent calls (50 NotifyTasks + 50 AssignTasks)",
        &observer.take(),
    );
    println!(
        "mean apply time of these batches: {:?}",
        observer.mean_apply()
    );
    let snap = qscheduler_core::snapshot::encode(&p.read());
    println!(
        "a full snapshot of this pool is {} bytes, written once per snapshot interval (the original rewrote its whole state, 7.6 MB at this size, on every batch)",
        snap.len()
    );
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "prints figures; run in release"]
async fn snapshot_stall_and_recovery_at_1m_queued_tasks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let observer = Arc::new(Bytes::default());
    // No automatic snapshot while filling: the figures below take them
    // explicitly.
    let quiet = PoolOptions {
        snapshot_every_records: u64::MAX,
        snapshot_every_bytes: u64::MAX,
        snapshot_every_apply: Duration::MAX,
        ..PoolOptions::default()
    };
    let r = open(dir.path(), quiet.clone(), observer.clone()).await;
    r.create("big", t(0)).await.expect("create");
    let p = r.get("big").await.expect("pool");
    let filled = Instant::now();
    fill(&p, 1_000_000).await;
    for i in (0..10_000).step_by(500) {
        p.assign(bots(i, 500, 2), None).await.expect("assign");
    }
    println!(
        "filled: {} queued, {} running in {:?}",
        p.read().scheduler().queued_len(),
        p.read().scheduler().running_len(),
        filled.elapsed()
    );

    let (copy, clone_time, bytes, encode_time) = {
        let state = p.read();
        let start = Instant::now();
        let copy = state.clone();
        let clone_time = start.elapsed();
        let start = Instant::now();
        let bytes = qscheduler_core::snapshot::encode(&state);
        (copy, clone_time, bytes, start.elapsed())
    };
    let start = Instant::now();
    drop(copy);
    let free_time = start.elapsed();
    let start = Instant::now();
    let decoded = qscheduler_core::snapshot::decode(&bytes).expect("decode");
    let decode_time = start.elapsed();
    drop(decoded);
    drop(p);
    println!(
        "snapshot of 1M queued tasks: {} bytes; writer stall with encoding on the writer: {encode_time:?}; \
         with clone-then-encode: {clone_time:?} (clone), encode {encode_time:?} and free {free_time:?} off the writer; decode {decode_time:?}",
        bytes.len()
    );
    r.shutdown().await;
    drop(r);

    // Recovery: snapshot + 1,000 logged batches after it.
    let snapshotting = PoolOptions {
        snapshot_every_records: 1,
        ..quiet.clone()
    };
    let r = open(dir.path(), snapshotting, observer.clone()).await;
    let p = r.get("big").await.expect("pool");
    // One batch triggers the snapshot; wait for it to be written.
    p.notify(tasks(2_000_000, 1, 20), None)
        .await
        .expect("notify");
    observer.mean_apply();
    drop(p);
    r.shutdown().await;
    drop(r);
    let r = open(dir.path(), quiet.clone(), observer.clone()).await;
    let p = r.get("big").await.expect("pool");
    for i in 0..1000 {
        p.notify(tasks(3_000_000 + 5 * i, 5, 30), None)
            .await
            .expect("notify");
        if i % 10 == 0 {
            p.assign(bots(20_000 + i, 5, 30), None)
                .await
                .expect("assign");
        }
    }
    println!(
        "mean apply time of a batch at 1M queued tasks: {:?}",
        observer.mean_apply()
    );
    drop(p);
    r.shutdown().await;
    drop(r);
    // What a restart does, step by step.
    let store = Store::open(dir.path().to_str().expect("utf-8"), StoreOptions::default())
        .await
        .expect("store");
    let start = Instant::now();
    let (handle, rec) = store.open_pool("big").await.expect("open");
    let load = start.elapsed();
    let (snapshot_seq, snapshot) = rec.snapshot.as_ref().expect("a snapshot");
    let start = Instant::now();
    let decoded = qscheduler_core::snapshot::decode(snapshot).expect("decode");
    let decode = start.elapsed();
    drop(decoded);
    let start = Instant::now();
    let pool = qscheduler_server::pool::recover("big", &rec).expect("recover");
    let recover = start.elapsed();
    println!(
        "recovery of a pool with {} queued tasks from a {} byte snapshot (seq {snapshot_seq}) and {} log records: \
         {:?} in total = read {load:?} + decode {decode:?} + replay {:?}",
        pool.scheduler().queued_len(),
        snapshot.len(),
        rec.records.len(),
        load + recover,
        recover.saturating_sub(decode),
    );
    drop(handle);
}

/// Durable-ack throughput over gRPC: `clients` concurrent clients each
/// loop on NotifyTasks (one new task) then AssignTasks (one bot), against
/// an in-process server. Every OK answer is durable.
async fn throughput(label: &str, store: String, store_options: StoreOptions, pools: usize) {
    use qscheduler_wire::qscheduler::q_scheduler_admin_client::QSchedulerAdminClient;
    use qscheduler_wire::swarming::v1 as pb;
    use qscheduler_wire::swarming::v1::external_scheduler_client::ExternalSchedulerClient;

    let options = qscheduler_server::ServerOptions {
        listen: "127.0.0.1:0".parse().expect("addr"),
        store,
        store_options,
        ..Default::default()
    };
    let server = qscheduler_server::Server::start(options)
        .await
        .expect("start");
    let addr = server.local_addr().expect("addr");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async {
        let _ = stop_rx.await;
    }));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut admin = QSchedulerAdminClient::new(channel.clone());
    for p in 0..pools {
        admin
            .create_scheduler_pool(qscheduler_wire::qscheduler::CreateSchedulerPoolRequest {
                pool_id: format!("tp-{p}"),
                ..Default::default()
            })
            .await
            .expect("create");
    }
    let clients = 64;
    let duration = Duration::from_secs(8);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut sched = ExternalSchedulerClient::new(channel.clone());
        let pool = format!("tp-{}", c % pools);
        tasks.push(tokio::spawn(async move {
            let mut calls = 0u64;
            let mut i = 0u64;
            while start.elapsed() < duration {
                let now =
                    qscheduler_server::translate::timestamp(qscheduler_server::service::wall_now());
                i += 1;
                sched
                    .notify_tasks(pb::NotifyTasksRequest {
                        scheduler_id: pool.clone(),
                        notifications: vec![pb::NotifyTasksItem {
                            time: Some(now),
                            task: Some(pb::TaskSpec {
                                id: format!("c{c}-t{i}"),
                                state: pb::task_spec::State::Pending as i32,
                                slices: vec![pb::SliceSpec {
                                    dimensions: vec!["pool:main".into()],
                                }],
                                enqueued_time: Some(now),
                                ..Default::default()
                            }),
                        }],
                        is_callback: false,
                    })
                    .await
                    .expect("notify");
                sched
                    .assign_tasks(pb::AssignTasksRequest {
                        scheduler_id: pool.clone(),
                        idle_bots: vec![pb::IdleBot {
                            bot_id: format!("c{c}-bot{}", i % 4),
                            dimensions: vec!["pool:main".into()],
                        }],
                        time: Some(now),
                    })
                    .await
                    .expect("assign");
                calls += 2;
            }
            calls
        }));
    }
    let mut calls = 0;
    for t in tasks {
        calls += t.await.expect("client");
    }
    let elapsed = start.elapsed();
    println!(
        "{label}: {pools} pool(s), {clients} clients: {:.0} durable calls/s ({calls} calls in {elapsed:?})",
        calls as f64 / elapsed.as_secs_f64()
    );
    let _ = stop_tx.send(());
    serving.await.expect("join").expect("serve");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "prints figures; run in release"]
async fn durable_ack_throughput_embedded() {
    for pools in [1, 4] {
        let dir = tempfile::tempdir().expect("tempdir");
        throughput(
            "embedded",
            dir.path().join("data").to_str().expect("utf-8").into(),
            StoreOptions::default(),
            pools,
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "prints figures; run in release"]
async fn durable_ack_throughput_postgres() {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    for pools in [1, 4] {
        let schema = format!("qs_figures_{}_{pools}", std::process::id());
        throughput(
            "postgres",
            url.clone(),
            StoreOptions {
                replica_id: "figures".into(),
                pg_schema: Some(schema.clone()),
                ..StoreOptions::default()
            },
            pools,
        )
        .await;
        let db = sqlx::PgPool::connect(&url).await.expect("connect");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
        )))
        .execute(&db)
        .await
        .expect("drop schema");
    }
}

/// Opens a registry as replica `id` on the PostgreSQL schema `schema`.
async fn pg_registry(url: &str, schema: &str, id: &str, options: PoolOptions) -> Arc<Registry> {
    let store = Store::open(
        url,
        StoreOptions {
            replica_id: id.into(),
            advertise_address: format!("{id}.invalid:1"),
            pg_schema: Some(schema.into()),
            ..StoreOptions::default()
        },
    )
    .await
    .expect("store");
    Registry::new(store, options, Arc::new(Bytes::default()))
}

/// Calls `get` on `r` until it serves `pool`; the time it took.
async fn until_served(r: &Registry, pool: &str) -> Duration {
    let start = Instant::now();
    loop {
        if r.get(pool).await.is_ok() {
            return start.elapsed();
        }
        assert!(start.elapsed() < Duration::from_secs(120), "never served");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// How long a pool of 1M queued tasks is unserved when its replica stops
/// gracefully (drain: the lease is released at once, so the time is the new
/// owner's recovery; after a crash the lease TTL comes first, see the
/// takeover test in `tests/durable_replicas.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "prints figures; run in release"]
async fn graceful_handoff_at_1m_queued_tasks() {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = format!("qs_handoff_{}", std::process::id());
    // A snapshot every 100 batches, as a busy pool would have one.
    let options = PoolOptions {
        snapshot_every_records: 100,
        ..PoolOptions::default()
    };
    let a = pg_registry(&url, &schema, "a", options.clone()).await;
    a.create("big", t(0)).await.expect("create");
    let p = a.get("big").await.expect("pool");
    let filled = Instant::now();
    fill(&p, 1_000_000).await;
    for i in (0..10_000).step_by(500) {
        p.assign(bots(i, 500, 2), None).await.expect("assign");
    }
    println!(
        "filled: {} queued, {} running in {:?}",
        p.read().scheduler().queued_len(),
        p.read().scheduler().running_len(),
        filled.elapsed()
    );
    drop(p);
    let b = pg_registry(&url, &schema, "b", options.clone()).await;

    // Graceful: a drains, b serves on the first call after the release.
    let start = Instant::now();
    let drain = a.drain().await;
    let drained = start.elapsed();
    let served = until_served(&b, "big").await;
    println!(
        "graceful hand-off of 1M queued tasks: a released {drain} pool(s) in {drained:?}; \
         b served the pool {:?} after the drain began",
        drained + served
    );
    a.shutdown().await;
    b.shutdown().await;
    let db = sqlx::PgPool::connect(&url).await.expect("connect");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
    )))
    .execute(&db)
    .await
    .expect("drop schema");
}
