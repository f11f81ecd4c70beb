//! "Acknowledged means durable", under `kill -9`.
//!
//! The real server binary runs as a child process. Clients stream
//! notifications (new tasks), AssignTasks calls (bots taking, running and
//! finishing tasks) and admin calls (new accounts) into two pools, and
//! record every OK answer. The server is killed with SIGKILL at a random
//! moment, restarted on the same store, and the pools' state must contain
//! every acknowledged operation (see `Model::check` for the exact rules,
//! including "no task is handed to a second bot"). Snapshots are taken
//! every few dozen records, so crashes also land during snapshot writes and
//! recovery goes through snapshot + log.
//!
//! A third pool gets every other mutating call, one at a time, with
//! preemption on (see `durable_support::facts`): every admin call,
//! NotifyTasks with PENDING, RUNNING, done (ABSENT) and invalid (task error)
//! states, AssignTasks that preempt. After each recovery it must read
//! exactly as after its last acknowledged call: account configurations and
//! balances, the preemption flag, waiting tasks, running tasks with their
//! bots and priorities, idle bots and pending cancellations.
//!
//! Each round also creates a small pool, so that every restart recovers
//! pools from a bare log as well as from a snapshot and the log after it;
//! the test asserts that both happened (from the "pool recovered" lines).
//!
//! Rounds are driven by a seeded generator; the seed is printed.
//! `QSCHEDULER_CRASH_ROUNDS` multiplies the number of rounds (for soak runs).

mod durable_support;

use std::time::{Duration, Instant};

use durable_support::*;

const POOLS: [&str; 2] = ["crash-a", "crash-b"];

async fn crash_rounds(label: &str, rounds: usize, store_args: Vec<String>) {
    let rounds = rounds
        * std::env::var("QSCHEDULER_CRASH_ROUNDS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(1)
            .max(1);
    let seed = seed(label);
    let mut rng = Rng::new(seed);
    let args: Vec<&str> = store_args.iter().map(String::as_str).collect();
    let started = Instant::now();
    let mut server = ServerProc::start(&args);
    let mut clients = server.clients().await;
    for p in POOLS {
        clients.create_pool(p).await.expect("create pool");
        clients.create_account(p, "first").await.expect("account");
    }
    let workloads: Vec<_> = POOLS
        .iter()
        .map(|p| {
            let w = Workload::new(p, 6, vec![clients.clone()]);
            let mut m = w.model.lock().expect("model");
            m.accounts.insert("first".into());
            m.accounts_sent.insert("first".into());
            drop(m);
            w
        })
        .collect();
    let mut facts = facts::Facts::new("crash-facts", rng.next_u64());
    let mut fc = clients.clone();
    facts.setup(&mut fc).await;
    let mut recoveries = Vec::new();
    let (mut from_snapshot, mut from_log) = (0u64, 0u64);
    for round in 0..rounds {
        let mut handles = Vec::new();
        for w in &workloads {
            handles.push(w.start(rng.next_u64()));
        }
        // The facts pool's calls, while the other pools are busy; it is
        // left between calls when the server is killed.
        let steps = rng.range(10, 40) as usize;
        let violations = facts.steps(&mut fc, steps).await;
        assert!(
            violations.is_empty(),
            "{label} round {round} (seed {seed}), facts pool before the crash:\n  {}",
            violations.join("\n  ")
        );
        let fresh = format!("fresh-{round}");
        fc.create_pool(&fresh).await.expect("create a fresh pool");
        fc.notify_pending(&fresh, &[(format!("{fresh}-t"), "none".into())])
            .await
            .expect("notify the fresh pool");
        // Let traffic build up, then kill at a random moment.
        tokio::time::sleep(Duration::from_millis(rng.range(80, 600))).await;
        server.kill9();
        for (w, h) in workloads.iter().zip(handles) {
            stop_drivers(w, h).await;
            w.model.lock().expect("model").settle_in_doubt();
        }
        let restart = Instant::now();
        server = ServerProc::start(&args);
        let ready = restart.elapsed();
        let mut clients = server.clients().await;
        fc = clients.clone();
        let violations = facts.check_recovered(&mut fc).await;
        assert!(
            violations.is_empty(),
            "{label} round {round} (seed {seed}), facts pool after recovery ({}):\n  {}",
            facts.summary(),
            violations.join("\n  ")
        );
        for w in &workloads {
            let violations = w.check(&mut clients).await;
            assert!(
                violations.is_empty(),
                "{label} round {round} (seed {seed}), pool {}: {} violations:\n  {}\n{}",
                w.pool,
                violations.len(),
                violations.join("\n  "),
                w.model.lock().expect("model").summary()
            );
            w.set_targets(vec![clients.clone()]);
        }
        for v in server.logs_with("pool recovered") {
            let replayed = v["fields"]["records_replayed"].as_u64().unwrap_or(0);
            // Logged with `?`: "Some(n)" or "None".
            let snapshot = v["fields"]["snapshot_seq"]
                .as_str()
                .is_some_and(|s| s.starts_with("Some("));
            if replayed > 0 {
                if snapshot {
                    from_snapshot += 1;
                } else {
                    from_log += 1;
                }
            }
            recoveries.push((replayed, snapshot));
        }
        println!(
            "{label} round {round}: restarted and ready in {ready:?}; {}",
            workloads
                .iter()
                .map(|w| format!("{}: {}", w.pool, w.model.lock().expect("model").summary()))
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    let total_acked: u64 = workloads
        .iter()
        .map(|w| w.model.lock().expect("model").acked_ops)
        .sum();
    assert!(
        total_acked > 50 * rounds as u64,
        "too little traffic to mean anything: {total_acked} acknowledged calls"
    );
    assert!(
        from_snapshot > 0 && from_log > 0,
        "recoveries must go through a snapshot and the log after it, and through a bare log: \
         {from_snapshot} and {from_log} did; {recoveries:?}"
    );
    println!(
        "{label}: {rounds} crashes, {total_acked} acknowledged calls checked in {:?}; \
         recoveries from a snapshot and a log suffix: {from_snapshot}, from a bare log: \
         {from_log}; facts pool: {}",
        started.elapsed(),
        facts.summary()
    );
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_embedded_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    crash_rounds(
        "embedded",
        20,
        vec![
            "--data-dir".into(),
            data.to_str().expect("utf-8 path").into(),
            "--snapshot-every-records".into(),
            "40".into(),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_postgres_store() {
    let db = TestDb::create("crash").await;
    crash_rounds(
        "postgres",
        10,
        vec![
            "--store".into(),
            db.url.clone(),
            // The same id across restarts takes the leases back at once.
            "--replica-id".into(),
            "crash-replica".into(),
            "--snapshot-every-records".into(),
            "40".into(),
        ],
    )
    .await;
}
