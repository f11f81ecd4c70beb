//! The worked scenarios of the reference's Appendix A (A1–A6), end to end
//! through the server: each on every transport (gRPC, pRPC binary, pRPC
//! JSON), asserting the answers, the state InspectPool reports, and the
//! events the pool writer emits. Where qscheduler deliberately differs from
//! the original (DECISIONS.md, docs/compatibility.md), the scenario checks
//! qscheduler's behaviour and says which decision applies.
//!
//! The core runs the same scenarios directly (`crates/core/src/conformance.rs`);
//! these check that translation, batching and the reconciler deliver them
//! over the wire.

mod common;

use std::sync::Arc;

use common::TestServer;
use common::observe::Recorder;
use common::rpc::*;
use qscheduler_core::{CompletedReason, EventKind, Time};
use qscheduler_server::ServerOptions;
use qscheduler_wire::swarming::v1::get_cancellations_response::cancellation::Reason;
use qscheduler_wire::swarming::v1::task_spec::State;

/// A server reporting to a recorder, and a client per transport with a
/// pool of its own (`{name}-{transport}`).
struct Setup {
    server: TestServer,
    recorder: Arc<Recorder>,
    _dir: tempfile::TempDir,
}

impl Setup {
    async fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let recorder = Arc::new(Recorder::default());
        let server = TestServer::start_with(
            ServerOptions {
                store: dir.path().join("store").to_str().unwrap().to_owned(),
                ..ServerOptions::default()
            },
            recorder.clone(),
        )
        .await;
        Setup {
            server,
            recorder,
            _dir: dir,
        }
    }

    /// A client on `t` and a new pool for it.
    async fn pool(&self, t: Transport, name: &str) -> (Rpc, String) {
        let rpc = Rpc::connect(self.server.addr, t).await;
        let pool = format!("{name}-{}", t.name());
        rpc.create_pool(&pool).await;
        (rpc, pool)
    }
}

fn at(secs: i64) -> Time {
    Time::from_secs(BASE_SECS + secs)
}

fn cancel(bot: &str, task: &str, reason: Reason, info: &str) -> Cancelled {
    (bot.to_owned(), task.to_owned(), reason, info.to_owned())
}

fn ev(kind: &'static str, task: &str, bot: Option<&str>) -> (&'static str, String, Option<String>) {
    (kind, task.to_owned(), bot.map(str::to_owned))
}

/// A1. A task without an account runs at the free level; the assignment is
/// repeated until Swarming acknowledges it; once the bot is idle again its
/// task is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a1_basic_assignment() {
    let s = Setup::new().await;
    for t in Transport::ALL {
        let (rpc, p) = s.pool(t, "a1").await;
        rpc.notify(&p, vec![item(0, pending("T1", None, &["label1"], 0))])
            .await;
        let b1 = || vec![bot("B1", &["label1"])];
        assert_eq!(rpc.assign(&p, 1, b1()).await, [a("B1", "T1", 0)], "{t:?}");
        assert_eq!(
            rpc.running(&p).await,
            [("T1".into(), "B1".into(), 5, String::new())],
            "{t:?}: free level"
        );
        // Not acknowledged yet: the same answer, and B1 is not made idle.
        assert_eq!(rpc.assign(&p, 2, b1()).await, [a("B1", "T1", 0)], "{t:?}");
        // A bot listed twice gets two identical entries (reference §2.4).
        assert_eq!(
            rpc.assign(&p, 2, [b1(), b1()].concat()).await,
            [a("B1", "T1", 0), a("B1", "T1", 0)],
            "{t:?}"
        );
        assert_eq!(rpc.inspect(&p).await.num_running_tasks, 1);

        rpc.notify(&p, vec![item(3, running("T1", "B1"))]).await;
        assert!(rpc.assign(&p, 4, b1()).await.is_empty(), "{t:?}");
        let inspect = rpc.inspect(&p).await;
        assert_eq!(
            (
                inspect.num_waiting_tasks,
                inspect.num_running_tasks,
                inspect.num_idle_bots
            ),
            (0, 0, 1),
            "{t:?}"
        );
        let done = s
            .recorder
            .wait_event(&p, |e| e.event.kind.type_name() == "SWARMING_COMPLETED")
            .await;
        assert_eq!(
            done.event.kind,
            EventKind::Completed {
                reason: CompletedReason::BotIdle,
                other_task: None,
                other_bot: None
            }
        );
        assert_eq!(
            (
                &*done.event.task_id,
                done.event.bot_id.as_deref(),
                done.event.time
            ),
            ("T1", Some("B1"), at(4))
        );
        assert_eq!(
            s.recorder.summary(&p),
            [
                ev("SWARMING_ENQUEUED", "T1", None),
                ev("QSCHEDULER_ASSIGNED", "T1", Some("B1")),
                ev("SWARMING_COMPLETED", "T1", Some("B1")),
            ],
            "{t:?}"
        );
    }
    s.server.stop().await;
}

/// A2. A two-slice task: base labels from the second slice, provisionable
/// ones the difference. A bot that has them is preferred and gets slice 0;
/// one that lacks them gets slice 1, computed from the dimensions it sends
/// in each call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a2_provisioning() {
    let s = Setup::new().await;
    let slices: &[&[&str]] = &[&["pool:p", "os:x", "fw:2"], &["pool:p", "os:x"]];
    let fw1 = ["pool:p", "os:x", "fw:1"];
    let fw2 = ["pool:p", "os:x", "fw:2"];
    for t in Transport::ALL {
        // b1 comes first in bot order; only provisioning makes b2 win.
        let (rpc, p) = s.pool(t, "a2-prefer").await;
        rpc.notify(
            &p,
            vec![item(0, task("T", State::Pending, None, slices, "", 0))],
        )
        .await;
        let got = rpc
            .assign(&p, 0, vec![bot("b1", &fw1), bot("b2", &fw2)])
            .await;
        assert_eq!(got, [a("b2", "T", 0)], "{t:?}");
        let assigned = s
            .recorder
            .wait_event(&p, |e| e.event.kind.type_name() == "QSCHEDULER_ASSIGNED")
            .await;
        assert!(
            matches!(
                assigned.event.kind,
                EventKind::Assigned {
                    provision_required: false,
                    priority: 5,
                    ..
                }
            ),
            "{t:?}: {assigned:?}"
        );
        let labels: Vec<&str> = assigned.event.base_labels.iter().map(|l| &**l).collect();
        assert_eq!(labels, ["os:x", "pool:p"]);
        let labels: Vec<&str> = assigned
            .event
            .provisionable_labels
            .iter()
            .map(|l| &**l)
            .collect();
        assert_eq!(labels, ["fw:2"]);

        let (rpc, p) = s.pool(t, "a2-provision").await;
        rpc.notify(
            &p,
            vec![item(0, task("T", State::Pending, None, slices, "", 0))],
        )
        .await;
        assert_eq!(
            rpc.assign(&p, 0, vec![bot("b1", &fw1)]).await,
            [a("b1", "T", 1)],
            "{t:?}"
        );
        // The slice follows the dimensions of the asking call.
        assert_eq!(
            rpc.assign(&p, 1, vec![bot("b1", &fw2)]).await,
            [a("b1", "T", 0)],
            "{t:?}"
        );
        assert_eq!(
            rpc.assign(&p, 2, vec![bot("b1", &fw1)]).await,
            [a("b1", "T", 1)],
            "{t:?}"
        );
        // A bot without the base labels never gets it.
        let (rpc, p) = s.pool(t, "a2-base").await;
        rpc.notify(
            &p,
            vec![item(0, task("T", State::Pending, None, slices, "", 0))],
        )
        .await;
        assert!(
            rpc.assign(&p, 0, vec![bot("b0", &["pool:p", "fw:2"])])
                .await
                .is_empty()
        );
        assert_eq!(rpc.waiting(&p).await, ["T"]);
    }
    s.server.stop().await;
}

/// A3. Account A (rates 1,0,0,0,0; max 3600 s): its tasks run at P0 while
/// its P0 balance is positive, each draining one bot-second per second;
/// at zero new tasks go to the free level; running tasks are demoted only
/// below −600, and only as many as run beyond the rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a3_quota() {
    let s = Setup::new().await;
    for t in Transport::ALL {
        let (rpc, p) = s.pool(t, "a3").await;
        rpc.add_account(&p, "A", &[1.0], 3600.0).await;
        let x = ["x"];
        rpc.notify(
            &p,
            (1..=3)
                .map(|i| item(0, pending(&format!("r{i}"), Some("A"), &x, 0)))
                .collect(),
        )
        .await;
        let got = rpc
            .assign(&p, 0, (1..=3).map(|i| bot(&format!("w{i}"), &x)).collect())
            .await;
        assert_eq!(
            got,
            [a("w1", "r1", 0), a("w2", "r2", 0), a("w3", "r3", 0)],
            "{t:?}"
        );
        // The first pass recharged A from zero to its cap.
        assert_eq!(rpc.balance(&p, "A").await, [3600.0, 0.0, 0.0, 0.0, 0.0]);
        let priorities = |rpc: Rpc, p: String| async move {
            rpc.running(&p)
                .await
                .into_iter()
                .map(|(task, bot, prio, _)| (task, bot, prio))
                .collect::<Vec<_>>()
        };
        let r = |task: &str, bot: &str, prio: i32| (task.to_owned(), bot.to_owned(), prio);
        assert_eq!(
            priorities(rpc.clone(), p.clone()).await,
            [r("r1", "w1", 0), r("r2", "w2", 0), r("r3", "w3", 0)]
        );
        rpc.notify(
            &p,
            (1..=3)
                .map(|i| item(1, running(&format!("r{i}"), &format!("w{i}"))))
                .collect(),
        )
        .await;

        // 1800 s later: 3 × 1800 spent, 1800 recharged: exactly zero.
        rpc.notify(&p, vec![item(1800, pending("r4", Some("A"), &x, 1800))])
            .await;
        assert_eq!(
            rpc.assign(&p, 1800, vec![bot("w4", &x)]).await,
            [a("w4", "r4", 0)]
        );
        assert_eq!(rpc.balance(&p, "A").await, [0.0; 5], "{t:?}");
        assert_eq!(
            priorities(rpc.clone(), p.clone()).await,
            [
                r("r1", "w1", 0),
                r("r2", "w2", 0),
                r("r3", "w3", 0),
                r("r4", "w4", 5)
            ],
            "{t:?}: a new task at zero balance runs free"
        );
        rpc.notify(&p, vec![item(1801, running("r4", "w4"))]).await;

        // −600 exactly: not below the threshold, nobody is demoted.
        assert!(
            rpc.assign(&p, 2100, vec![bot("w9", &["y"])])
                .await
                .is_empty()
        );
        assert_eq!(rpc.balance(&p, "A").await, [-600.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(
            priorities(rpc.clone(), p.clone()).await,
            [
                r("r1", "w1", 0),
                r("r2", "w2", 0),
                r("r3", "w3", 0),
                r("r4", "w4", 5)
            ],
            "{t:?}"
        );
        // −800: three tasks at a rate of one, ceil(2) demotions; equal costs
        // go by bot id.
        assert!(
            rpc.assign(&p, 2200, vec![bot("w9", &["y"])])
                .await
                .is_empty()
        );
        assert_eq!(rpc.balance(&p, "A").await, [-800.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(
            priorities(rpc.clone(), p.clone()).await,
            [
                r("r1", "w1", 1),
                r("r2", "w2", 1),
                r("r3", "w3", 0),
                r("r4", "w4", 5)
            ],
            "{t:?}"
        );
        s.recorder
            .wait_event(&p, |e| {
                e.event.kind.type_name() == "QSCHEDULER_REPRIORITIZED" && &*e.event.task_id == "r2"
            })
            .await;
        let demotions: Vec<_> = s
            .recorder
            .events(&p)
            .into_iter()
            .filter_map(|e| match e.event.kind {
                EventKind::Reprioritized {
                    old_priority,
                    new_priority,
                } => Some((
                    e.event.task_id.to_string(),
                    old_priority,
                    new_priority,
                    e.event.time,
                )),
                _ => None,
            })
            .collect();
        assert_eq!(
            demotions,
            [
                ("r1".to_owned(), 0, 1, at(2200)),
                ("r2".to_owned(), 0, 1, at(2200))
            ],
            "{t:?}"
        );
    }
    s.server.stop().await;
}

/// Up to a preemption: L1 (no account) runs free on bot1; H1 of account
/// "hi" arrives; a pass (another bot asking) preempts L1 for H1 at P0.
async fn preempted(s: &Setup, t: Transport, name: &str) -> (Rpc, String) {
    let (rpc, p) = s.pool(t, name).await;
    rpc.add_account(&p, "hi", &[1.0], 100.0).await;
    rpc.notify(&p, vec![item(0, pending("L1", None, &["x"], 0))])
        .await;
    assert_eq!(
        rpc.assign(&p, 0, vec![bot("bot1", &["x"])]).await,
        [a("bot1", "L1", 0)]
    );
    rpc.notify(&p, vec![item(1, running("L1", "bot1"))]).await;
    rpc.notify(&p, vec![item(2, pending("H1", Some("hi"), &["x"], 2))])
        .await;
    assert!(
        rpc.assign(&p, 3, vec![bot("bot9", &["y"])])
            .await
            .is_empty(),
        "{t:?}: bot9 cannot run H1"
    );
    assert_eq!(
        rpc.running(&p).await,
        [("H1".into(), "bot1".into(), 0, "hi".into())],
        "{t:?}"
    );
    assert!(
        rpc.waiting(&p).await.is_empty(),
        "the preempted task is forgotten"
    );
    let preempting = [cancel("bot1", "L1", Reason::Preempted, "")];
    assert_eq!(rpc.cancellations(&p).await, preempting, "{t:?}");
    // Reading does not clear it.
    assert_eq!(rpc.cancellations(&p).await, preempting, "{t:?}");
    s.recorder
        .wait_event(&p, |e| e.event.kind.type_name() == "QSCHEDULER_PREEMPTED")
        .await;
    let events = s.recorder.events(&p);
    let last_two: Vec<_> = events[events.len() - 2..]
        .iter()
        .map(|e| e.event.kind.clone())
        .collect();
    assert!(
        matches!(
            &last_two[0],
            EventKind::Assigned { preempting: true, priority: 0, preempted_task_id: Some(id), .. }
                if &**id == "L1"
        ),
        "{t:?}: {last_two:?}"
    );
    assert!(
        matches!(
            &last_two[1],
            EventKind::Preempted { preempting_task_id, priority: 5, preempting_priority: 0, .. }
                if &**preempting_task_id == "H1"
        ),
        "{t:?}: {last_two:?}"
    );
    (rpc, p)
}

/// A4. The preempting assignment is {bot, new task}; GetCancellations
/// lists {bot, old task} until Swarming reports the old task absent (after
/// the preemption) or a task running on that bot. As decided (DECISIONS 5,
/// compatibility #5), the bot keeps the preempting task when the old one
/// is reported gone, and a bot that asks for work while its preemption is
/// pending gets a plain assignment, its cancellation dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a4_preemption() {
    let s = Setup::new().await;
    for t in Transport::ALL {
        // The old task reported absent.
        let (rpc, p) = preempted(&s, t, "a4-absent").await;
        rpc.notify(&p, vec![item(3, done("L1", State::Preempted))])
            .await;
        assert_eq!(
            rpc.cancellations(&p).await,
            [cancel("bot1", "L1", Reason::Preempted, "")],
            "{t:?}: news as old as the preemption does not clear it"
        );
        rpc.notify(&p, vec![item(4, done("L1", State::Preempted))])
            .await;
        assert!(rpc.cancellations(&p).await.is_empty(), "{t:?}");
        assert_eq!(
            rpc.assign(&p, 5, vec![bot("bot1", &["x"])]).await,
            [a("bot1", "H1", 0)],
            "{t:?}: the preempting task waits for its bot"
        );
        rpc.notify(&p, vec![item(6, running("H1", "bot1"))]).await;
        assert_eq!(
            rpc.running(&p).await,
            [("H1".into(), "bot1".into(), 0, "hi".into())]
        );

        // A task reported running on the bot.
        let (rpc, p) = preempted(&s, t, "a4-running").await;
        rpc.notify(&p, vec![item(2, running("H1", "bot1"))]).await;
        assert_eq!(
            rpc.cancellations(&p).await,
            [cancel("bot1", "L1", Reason::Preempted, "")],
            "{t:?}: older news does not clear it"
        );
        rpc.notify(&p, vec![item(4, running("H1", "bot1"))]).await;
        assert!(rpc.cancellations(&p).await.is_empty(), "{t:?}");
        assert_eq!(
            rpc.running(&p).await,
            [("H1".into(), "bot1".into(), 0, "hi".into())]
        );

        // The bot asks for work while the preemption is pending.
        let (rpc, p) = preempted(&s, t, "a4-poll").await;
        assert_eq!(
            rpc.assign(&p, 4, vec![bot("bot1", &["x"])]).await,
            [a("bot1", "H1", 0)],
            "{t:?}"
        );
        assert!(rpc.cancellations(&p).await.is_empty(), "{t:?}");
    }
    s.server.stop().await;
}

/// A5. An assignment not picked up within 10 minutes (of scheduler time,
/// from later AssignTasks batches) is withdrawn: its bot is forgotten, the
/// task re-queued (UNASSIGNED event) and given to a bot that asks. A task
/// enqueued more than 46 hours before is dropped instead (measured in
/// scheduler time: DECISIONS 6).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a5_pickup_timeout() {
    let s = Setup::new().await;
    for t in Transport::ALL {
        let (rpc, p) = s.pool(t, "a5").await;
        rpc.notify(&p, vec![item(0, pending("T", None, &["x"], 0))])
            .await;
        assert_eq!(
            rpc.assign(&p, 0, vec![bot("A", &["x"])]).await,
            [a("A", "T", 0)]
        );
        assert!(
            rpc.assign(&p, 599, vec![bot("B", &["x"])]).await.is_empty(),
            "{t:?}: still A's"
        );
        assert_eq!(
            rpc.assign(&p, 600, vec![bot("B", &["x"])]).await,
            [a("B", "T", 0)],
            "{t:?}"
        );
        let inspect = rpc.inspect(&p).await;
        assert_eq!(inspect.running_tasks.len(), 1);
        assert_eq!(inspect.running_tasks[0].bot_id, "B");
        assert!(inspect.idle_bots.is_empty(), "A is forgotten: {inspect:?}");
        assert!(rpc.assign(&p, 601, vec![bot("A", &["x"])]).await.is_empty());
        // The 600 s batch has reported its events by now.
        let unassigned: Vec<_> = s
            .recorder
            .events(&p)
            .into_iter()
            .filter(|e| e.event.kind == EventKind::Unassigned)
            .map(|e| {
                (
                    e.event.task_id.to_string(),
                    e.event.bot_id.as_deref().map(str::to_owned),
                    e.event.time,
                )
            })
            .collect();
        assert_eq!(
            unassigned,
            [("T".to_owned(), Some("A".to_owned()), at(600))],
            "{t:?}"
        );

        let (rpc, p) = s.pool(t, "a5-old").await;
        let hours_47 = 47 * 3600;
        rpc.notify(&p, vec![item(0, pending("T", None, &["x"], -hours_47))])
            .await;
        assert_eq!(
            rpc.assign(&p, 0, vec![bot("A", &["x"])]).await,
            [a("A", "T", 0)]
        );
        assert!(rpc.assign(&p, 600, vec![bot("B", &["x"])]).await.is_empty());
        let inspect = rpc.inspect(&p).await;
        assert_eq!(
            (inspect.num_waiting_tasks, inspect.num_running_tasks),
            (0, 0),
            "{t:?}: dropped"
        );
    }
    s.server.stop().await;
}

/// A6. A task the scheduler cannot handle does not fail the call: it
/// becomes a task error, listed by GetCancellations with an empty bot id
/// until Swarming reports the task absent. As decided (DECISIONS 11), the
/// cancellation says why: reason ERROR, the message in extra_info.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a6_bad_task() {
    let s = Setup::new().await;
    for t in Transport::ALL {
        let (rpc, p) = s.pool(t, "a6").await;
        let three: &[&[&str]] = &[&["x"], &["x"], &["x"]];
        let unrelated: &[&[&str]] = &[&["x"], &["y"]];
        let mut odd_state = pending("Z", None, &["x"], 0);
        odd_state.state = 0x99;
        let mut two_accounts = pending("Y", None, &["x"], 0);
        two_accounts.tags = vec!["qs_account:a".into(), "qs_account:b".into()];
        rpc.notify(
            &p,
            vec![
                item(0, task("X", State::Pending, None, three, "", 0)),
                item(0, two_accounts),
                item(0, odd_state),
                item(0, task("W", State::Pending, None, unrelated, "", 0)),
                item(0, pending("OK", None, &["x"], 0)),
            ],
        )
        .await;
        let all = [
            cancel(
                "",
                "W",
                Reason::Error,
                "Invalid slice dimensions; task's 2nd slice dimensions are not a subset of \
                 1st slice dimensions.",
            ),
            cancel(
                "",
                "X",
                Reason::Error,
                "Invalid slice count 3; quotascheduler only supports 1-slice or 2-slice tasks.",
            ),
            cancel("", "Y", Reason::Error, "Too many account tags."),
            cancel(
                "",
                "Z",
                Reason::Error,
                "Invalid notification with unhandled state 153.",
            ),
        ];
        assert_eq!(rpc.cancellations(&p).await, all, "{t:?}");
        assert_eq!(
            rpc.waiting(&p).await,
            ["OK"],
            "{t:?}: only the good task is queued"
        );
        assert_eq!(
            rpc.assign(&p, 1, vec![bot("b1", &["x", "y"]), bot("b2", &["x", "y"])])
                .await,
            [a("b1", "OK", 0)],
            "{t:?}"
        );
        assert_eq!(
            rpc.cancellations(&p).await,
            all,
            "{t:?}: reading clears nothing"
        );

        rpc.notify(&p, vec![item(2, done("X", State::Canceled))])
            .await;
        let mut rest = all.to_vec();
        rest.remove(1);
        assert_eq!(rpc.cancellations(&p).await, rest, "{t:?}");
        rpc.notify(
            &p,
            ["W", "Y", "Z"]
                .iter()
                .map(|id| item(2, done(id, State::Canceled)))
                .collect(),
        )
        .await;
        assert!(rpc.cancellations(&p).await.is_empty(), "{t:?}");
    }
    s.server.stop().await;
}
