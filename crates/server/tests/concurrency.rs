//! Many concurrent callers, several pools, all three transports: nothing
//! acknowledged is lost, and the outcome is that of a serial order — the
//! order of the pool's durable log.
//!
//! After the run, each pool's log is read back from the store and replayed
//! command by command through the core. The replay must reproduce exactly
//! what the callers were told (every assignment of every AssignTasks), the
//! state the server held at the end (canonical snapshot bytes, and what
//! InspectPool reported), and account for every acknowledged call once.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use common::TestServer;
use common::observe::Recorder;
use common::rpc::*;
use qscheduler_core::{Command, Pool, Time};
use qscheduler_server::ServerOptions;
use qscheduler_store::{Store, StoreOptions};
use qscheduler_wire::qscheduler as adm;

const POOLS: [&str; 3] = ["busy", "side-1", "side-2"];
const CALLERS: usize = 24;
const ROUNDS: usize = 4;

/// What one caller was told.
#[derive(Default)]
struct Told {
    /// Acknowledged NotifyTasks: (pool, task ids).
    notified: Vec<(String, Vec<String>)>,
    /// Answered AssignTasks: (pool, bot ids, assignments).
    assigned: Vec<(String, Vec<String>, Vec<Assigned>)>,
}

/// Caller `i`: a pool (half of the callers share the first), a transport,
/// and `ROUNDS` of (NotifyTasks of three new tasks, AssignTasks of two new
/// bots), with times that interleave with other callers' and go back and
/// forth. Bots with `os:c` ask early, when there is nothing for them; the
/// `os:c` tasks come in the last round and go to them while other bots
/// ask.
async fn caller(i: usize, rpc: Rpc) -> Told {
    let pool = if i.is_multiple_of(2) {
        POOLS[0]
    } else {
        POOLS[1 + i / 2 % 2]
    };
    let mut told = Told::default();
    for r in 0..ROUNDS {
        let time = (r * 10 + i % 7) as i64;
        let ids: Vec<String> = (0..3).map(|k| format!("t-{i}-{r}-{k}")).collect();
        let items = ids
            .iter()
            .enumerate()
            .map(|(k, id)| {
                let os = match k {
                    2 if r == ROUNDS - 1 => "os:c",
                    2 => "os:b",
                    _ if (i + k).is_multiple_of(3) => "os:b",
                    _ => "os:a",
                };
                let account = (k == 0).then_some("acc");
                item(time, pending(id, account, &[os], time))
            })
            .collect();
        rpc.notify(pool, items).await;
        told.notified.push((pool.to_owned(), ids));
        let bots: Vec<String> = (0..2).map(|j| format!("b-{i}-{r}-{j}")).collect();
        let idle = bots
            .iter()
            .enumerate()
            .map(|(j, id)| {
                let os = match j {
                    1 if r < 2 => "os:c",
                    _ if (i + j + r).is_multiple_of(4) => "os:b",
                    _ => "os:a",
                };
                bot(id, &[os])
            })
            .collect();
        let got = rpc.assign(pool, time + 1, idle).await;
        told.assigned.push((pool.to_owned(), bots, got));
    }
    told
}

/// A pool's log replayed serially, and what each logged call produced.
struct Replay {
    pool: Pool,
    /// Task ids of each logged NotifyTasks call.
    notifies: Vec<Vec<String>>,
    /// Bot ids of each logged AssignTasks call → its assignments.
    assigns: BTreeMap<Vec<String>, Vec<Assigned>>,
    /// Calls per logged batch.
    batch_sizes: Vec<usize>,
}

async fn replay(store: &Store, pool_id: &str) -> Replay {
    let (_handle, rec) = store.open_pool(pool_id).await.unwrap();
    assert!(
        rec.snapshot.is_none(),
        "snapshots are off: the log is complete"
    );
    let mut out = Replay {
        pool: Pool::new(Time::EPOCH),
        notifies: Vec::new(),
        assigns: BTreeMap::new(),
        batch_sizes: Vec::new(),
    };
    for (seq, bytes) in &rec.records {
        let cmd = Command::decode(bytes).unwrap_or_else(|e| panic!("{pool_id} #{seq}: {e}"));
        let outcome = out
            .pool
            .apply(&cmd)
            .unwrap_or_else(|e| panic!("{pool_id} #{seq} does not apply: {e}"));
        let Command::Batch(batch) = &cmd else {
            continue;
        };
        out.batch_sizes
            .push(batch.notifies.len() + batch.assigns.len());
        for call in &batch.notifies {
            out.notifies.push(
                call.notifications
                    .iter()
                    .map(|n| n.task_id.clone())
                    .collect(),
            );
        }
        assert_eq!(outcome.assignments.len(), batch.assigns.len());
        for (call, answers) in batch.assigns.iter().zip(outcome.assignments) {
            let bots: Vec<String> = call.bots.iter().map(|b| b.id.clone()).collect();
            let answers = answers
                .into_iter()
                .map(|a| {
                    (
                        a.bot_id.to_string(),
                        a.task_id.to_string(),
                        i32::from(a.provision_required),
                    )
                })
                .collect();
            assert!(
                out.assigns.insert(bots.clone(), answers).is_none(),
                "{pool_id}: AssignTasks of {bots:?} logged twice"
            );
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_callers_equal_the_serial_replay_of_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let store_path = dir.path().join("store").to_str().unwrap().to_owned();
    let mut options = ServerOptions {
        store: store_path.clone(),
        ..ServerOptions::default()
    };
    // Snapshots would compact the log away.
    options.pool.snapshot_every_records = u64::MAX;
    options.pool.snapshot_every_bytes = u64::MAX;
    options.pool.snapshot_every_apply = Duration::MAX;
    let recorder = Arc::new(Recorder::default());
    let server = TestServer::start_with(options, recorder.clone()).await;
    let mut clients = Vec::new();
    for t in Transport::ALL {
        clients.push(Rpc::connect(server.addr, t).await);
    }
    let admin = &clients[0];
    for pool in POOLS {
        admin.create_pool(pool).await;
        admin.add_account(pool, "acc", &[1.0, 1.0], 100.0).await;
        // A preempted task is forgotten by the scheduler; keep every task
        // so that "each task exactly once" holds.
        admin
            .mod_scheduler_pool(adm::ModSchedulerPoolRequest {
                pool_id: pool.into(),
                disable_preemption: Some(true),
                bot_expiration_seconds: None,
            })
            .await
            .unwrap();
    }

    // Hold the busy pool's writer while the callers start, so that its
    // calls pile up and are committed in shared batches.
    recorder.hold_next(POOLS[0]);
    admin
        .notify(
            POOLS[0],
            vec![item(0, pending("warm-up", None, &["os:c"], 0))],
        )
        .await;
    recorder.wait_holding().await;
    let mut callers = tokio::task::JoinSet::new();
    for i in 0..CALLERS {
        callers.spawn(caller(i, clients[i % clients.len()].clone()));
    }
    // Release the writer once every caller of the busy pool has its first
    // call queued behind it (calls are queued in the order they arrive).
    let busy = server.registry.get(POOLS[0]).await.unwrap();
    let queued = CALLERS / 2;
    let until = std::time::Instant::now() + Duration::from_secs(60);
    while busy.waiting_calls() < queued {
        assert!(
            std::time::Instant::now() < until,
            "only {} of {queued} calls reached the held pool",
            busy.waiting_calls()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(busy);
    recorder.release();
    let mut told = Vec::new();
    while let Some(t) = callers.join_next().await {
        told.push(t.unwrap());
    }

    // The live state, before the server stops.
    let mut live = BTreeMap::new();
    for pool in POOLS {
        let p = server.registry.get(pool).await.unwrap();
        let bytes = qscheduler_core::snapshot::encode(&p.read());
        live.insert(pool, (bytes, admin.inspect(pool).await));
    }
    server.stop().await;

    let store = Store::open(&store_path, StoreOptions::default())
        .await
        .unwrap();
    for pool in POOLS {
        let replay = replay(&store, pool).await;
        let (live_bytes, inspect) = &live[pool];

        // The same state, bit for bit.
        let replayed_bytes = qscheduler_core::snapshot::encode(&replay.pool);
        if &replayed_bytes != live_bytes {
            let live_pool = qscheduler_core::snapshot::decode(live_bytes).unwrap();
            assert_eq!(
                replay.pool.scheduler().dump(),
                live_pool.scheduler().dump(),
                "{pool}"
            );
            assert_eq!(replay.pool.reconciler(), live_pool.reconciler(), "{pool}");
            panic!("{pool}: the replayed snapshot differs from the live one");
        }

        // Every acknowledged call is in the log exactly once, with exactly
        // the answer its caller got; and nothing else is.
        let mut notified: Vec<Vec<String>> = Vec::new();
        let mut assigned = BTreeMap::new();
        for t in &told {
            notified.extend(
                t.notified
                    .iter()
                    .filter(|(p, _)| p == pool)
                    .map(|(_, ids)| ids.clone()),
            );
            for (p, bots, got) in &t.assigned {
                if p == pool {
                    assigned.insert(bots.clone(), got.clone());
                }
            }
        }
        if pool == POOLS[0] {
            notified.push(vec!["warm-up".to_owned()]);
        }
        let mut logged = replay.notifies.clone();
        logged.sort();
        notified.sort();
        assert_eq!(
            logged, notified,
            "{pool}: acknowledged NotifyTasks vs the log"
        );
        assert_eq!(
            replay.assigns, assigned,
            "{pool}: answers vs the replayed log"
        );
        assert!(!assigned.is_empty());

        // Each task is queued or running exactly once; no bot runs two.
        let all_tasks: BTreeSet<String> = notified.into_iter().flatten().collect();
        let mut seen: Vec<String> = inspect.waiting_tasks.iter().map(|w| w.id.clone()).collect();
        seen.extend(inspect.running_tasks.iter().map(|r| r.id.clone()));
        let unique: BTreeSet<String> = seen.iter().cloned().collect();
        assert_eq!(seen.len(), unique.len(), "{pool}: a task is in two places");
        assert_eq!(unique, all_tasks, "{pool}: tasks lost or invented");
        let bots: BTreeSet<&str> = inspect
            .running_tasks
            .iter()
            .map(|r| r.bot_id.as_str())
            .collect();
        assert_eq!(
            bots.len(),
            inspect.running_tasks.len(),
            "{pool}: a bot runs two tasks"
        );

        // Each assignment a caller got is running on its bot; the other
        // running tasks went to bots that were not asking at the time and
        // wait for them in the reconciler.
        let running: BTreeMap<&str, &str> = inspect
            .running_tasks
            .iter()
            .map(|r| (r.bot_id.as_str(), r.id.as_str()))
            .collect();
        let mut handed_out = BTreeSet::new();
        for (bot, task, _) in assigned.values().flatten() {
            assert_eq!(
                running.get(bot.as_str()),
                Some(&task.as_str()),
                "{pool}: {bot}"
            );
            handed_out.insert(bot.as_str());
        }
        let pending = replay.pool.reconciler().pending();
        let mut untold = 0;
        for (bot, task) in &running {
            if !handed_out.contains(bot) {
                untold += 1;
                assert_eq!(
                    pending.get(*bot).map(|p| &*p.task_to_assign),
                    Some(*task),
                    "{pool}: {bot} runs {task} but was never told"
                );
            }
        }
        assert!(untold > 0, "{pool}: os:c tasks go to bots not asking");

        // What InspectPool said is the replayed state.
        let dump = replay.pool.scheduler().dump();
        let queued: BTreeSet<String> = dump.queued.iter().map(|q| q.id.clone()).collect();
        let waiting: BTreeSet<String> =
            inspect.waiting_tasks.iter().map(|w| w.id.clone()).collect();
        assert_eq!(queued, waiting, "{pool}");
        let replayed_running: BTreeSet<(String, String, i32)> = dump
            .workers
            .iter()
            .filter_map(|w| {
                w.running
                    .as_ref()
                    .map(|(r, prio, _)| (r.id.clone(), w.id.clone(), i32::from(*prio)))
            })
            .collect();
        let reported: BTreeSet<(String, String, i32)> = inspect
            .running_tasks
            .iter()
            .map(|r| (r.id.clone(), r.bot_id.clone(), r.priority))
            .collect();
        assert_eq!(replayed_running, reported, "{pool}");
        assert_eq!(
            inspect.account_balances["acc"].value,
            dump.accounts[0].2.0.to_vec(),
            "{pool}"
        );

        // The writer did batch concurrent calls.
        if pool == POOLS[0] {
            let max = replay.batch_sizes.iter().max().copied().unwrap_or(0);
            assert!(max > 1, "{pool}: batches {:?}", replay.batch_sizes);
            assert_eq!(recorder.batches(pool).iter().max().copied(), Some(max));
        }
    }
}
