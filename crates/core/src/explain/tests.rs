//! Each reason and ETA method produced by a real situation, built through
//! the scheduler's and pool's public API.

use super::*;
use crate::command::{AssignCall, Batch, Command, Notification, NotifyCall, NotifyKind};
use crate::reconciler::IdleBot;
use crate::scheduler::{NewRequest, Scheduler};
use std::collections::BTreeMap;

fn t(secs: i64) -> Time {
    Time::from_secs(1_700_000_000 + secs)
}

fn labels(l: &[&str]) -> Vec<String> {
    l.iter().map(|s| s.to_string()).collect()
}

fn request(s: &mut Scheduler, id: &str, account: &str, base: &[&str], enq: i64) {
    s.add_request(
        &NewRequest {
            id: id.into(),
            account: account.into(),
            base_labels: labels(base),
            provisionable_labels: Vec::new(),
            enqueue_time: t(enq),
        },
        t(enq),
        &[],
    );
}

fn account(rates: &[f32]) -> AccountConfig {
    AccountConfig {
        charge_rate: AccountConfig::rates_from_slice(rates).unwrap(),
        max_charge_seconds: 3600.0,
        ..Default::default()
    }
}

fn codes(e: &Explanation) -> Vec<&'static str> {
    e.reasons.iter().map(Reason::code).collect()
}

#[test]
fn unknown_task() {
    let pool = Pool::new(t(0));
    let e = explain(&pool, "nope", None);
    assert_eq!(e.state, TaskState::Unknown);
    assert!(matches!(e.eta, Eta::Unknown { .. }));
}

#[test]
fn no_bot_has_its_labels() {
    let mut s = Scheduler::new(t(0));
    s.mark_idle("bot1", &labels(&["os:linux"]), t(0));
    request(&mut s, "t1", "", &["gpu:a100"], 0);
    let e = explain(&Pool::from_scheduler(s), "t1", None);
    assert_eq!(e.state, TaskState::Queued);
    assert_eq!(e.bots.matching, 0);
    assert_eq!(
        e.reasons[0],
        Reason::NoMatchingBot {
            base_labels: labels(&["gpu:a100"])
        }
    );
    assert_eq!(
        e.eta,
        Eta::Unknown {
            why: "no bot has its base labels".into()
        }
    );
}

/// Two bots run tasks of account "a" at P0; "b" queues behind "a"'s other
/// tasks, all bots busy, and nothing is cheap enough to preempt.
#[test]
fn busy_bots_tasks_ahead_and_no_preemption() {
    let mut s = Scheduler::new(t(0));
    s.add_account(
        "a",
        account(&[2.0]),
        Some(Balance([1000.0, 0.0, 0.0, 0.0, 0.0])),
    );
    s.add_account(
        "b",
        account(&[1.0]),
        Some(Balance([5.0, 0.0, 0.0, 0.0, 0.0])),
    );
    for b in ["bot1", "bot2"] {
        s.mark_idle(b, &labels(&["os:linux"]), t(0));
    }
    request(&mut s, "a1", "a", &["os:linux"], 0);
    request(&mut s, "a2", "a", &["os:linux"], 1);
    s.update_time(t(2));
    assert_eq!(s.run_once().len(), 2);
    request(&mut s, "a3", "a", &["os:linux"], 3);
    request(&mut s, "a4", "a", &["os:linux"], 4);
    request(&mut s, "b1", "b", &["os:linux"], 5);
    request(&mut s, "c1", "", &["os:mac"], 5);
    s.update_time(t(10));
    let pool = Pool::from_scheduler(s);

    let running = explain(&pool, "a1", None);
    assert!(matches!(running.state, TaskState::Running { level: 0, .. }));

    let e = explain(&pool, "b1", None);
    assert_eq!(e.level.as_ref().unwrap().level, Some(0));
    assert_eq!(
        e.bots,
        BotCounts {
            matching: 2,
            idle: 0,
            busy: 2,
            provisioned: 2,
            provisioned_idle: 0
        }
    );
    let st = e.standing.clone().unwrap();
    assert_eq!(
        (st.competing, st.ahead_same_level, st.ahead_better_level),
        (2, 2, 0)
    );
    assert_eq!(e.position, Some(3));
    assert_eq!(
        codes(&e),
        vec![
            "queued_ahead",
            "matching_bots_busy",
            "no_cheaper_task_to_preempt"
        ]
    );
    assert_eq!(
        e.reasons[2],
        Reason::NoCheaperTaskToPreempt {
            worse_level: 0,
            cheaper: 0
        }
    );

    // With 6 completions in 60 s on a pool of 2 bots (both match), three
    // tasks must finish before it: (2 ahead + 1) / (6/60 * 2/2) = 30 s.
    let e = explain(
        &pool,
        "b1",
        Some(Turnover {
            window_secs: 60.0,
            completions: 6,
        }),
    );
    match e.eta {
        Eta::Known { secs, method, .. } => {
            assert_eq!(method, "turnover");
            assert!((secs - 30.0).abs() < 1e-9, "{secs}");
        }
        other => panic!("{other:?}"),
    }
    let e = explain(
        &pool,
        "b1",
        Some(Turnover {
            window_secs: 60.0,
            completions: 0,
        }),
    );
    assert_eq!(
        e.eta,
        Eta::Unknown {
            why: "no task finished in the window".into()
        }
    );
}

#[test]
fn preemption_disabled() {
    let mut s = Scheduler::new(t(0));
    s.set_settings(crate::account::PoolSettings {
        disable_preemption: true,
        ..Default::default()
    });
    s.add_account(
        "rich",
        account(&[1.0]),
        Some(Balance([100.0, 0.0, 0.0, 0.0, 0.0])),
    );
    s.mark_idle("bot1", &labels(&[]), t(0));
    request(&mut s, "free1", "", &[], 0);
    assert_eq!(s.run_once().len(), 1);
    request(&mut s, "r1", "rich", &[], 1);
    let e = explain(&Pool::from_scheduler(s), "r1", None);
    assert_eq!(codes(&e), vec!["matching_bots_busy", "preemption_disabled"]);
}

#[test]
fn fanout_limit_puts_it_at_the_free_level() {
    let mut s = Scheduler::new(t(0));
    let mut cfg = account(&[1.0]);
    cfg.max_fanout = 1;
    s.add_account("a", cfg, Some(Balance([100.0, 0.0, 0.0, 0.0, 0.0])));
    s.mark_idle("bot1", &labels(&["x"]), t(0));
    request(&mut s, "a1", "a", &["x"], 0);
    request(&mut s, "a2", "a", &["x"], 1);
    assert_eq!(s.run_once().len(), 1);
    let e = explain(&Pool::from_scheduler(s), "a2", None);
    let lw = e.level.clone().unwrap();
    assert!(lw.fanout_throttled);
    assert_eq!(lw.level, Some(FREE_PRIORITY));
    assert_eq!(
        e.reasons[0],
        Reason::FanoutLimit {
            limit: 1,
            running: 1
        }
    );
    assert!(codes(&e).contains(&"free_level"));
}

#[test]
fn per_label_limit_blocks_idle_bots() {
    let mut s = Scheduler::new(t(0));
    let mut cfg = account(&[1.0]);
    cfg.per_label_task_limits = BTreeMap::from([("rack:".to_string(), 1)]);
    s.add_account("a", cfg, Some(Balance([100.0, 0.0, 0.0, 0.0, 0.0])));
    s.mark_idle("bot1", &labels(&["rack:1"]), t(0));
    request(&mut s, "a1", "a", &[], 0);
    assert_eq!(s.run_once().len(), 1);
    s.mark_idle("bot2", &labels(&["rack:1"]), t(1));
    request(&mut s, "a2", "a", &[], 1);
    // The pass leaves a2 queued: bot2's rack already runs a1.
    assert!(s.run_once().is_empty());
    let e = explain(&Pool::from_scheduler(s), "a2", None);
    assert_eq!(e.bots.idle, 1);
    assert_eq!(
        e.reasons,
        vec![Reason::PerLabelLimit {
            key: "rack:".into(),
            label: "rack:1".into(),
            running: 1,
            limit: 1
        }]
    );
    assert!(matches!(e.eta, Eta::Unknown { .. }));
}

#[test]
fn free_tasks_disabled_waits_for_recharge() {
    let mut s = Scheduler::new(t(0));
    let mut cfg = account(&[0.5]);
    cfg.disable_free_tasks = true;
    s.add_account("poor", cfg, Some(Balance([-10.0, 0.0, 0.0, 0.0, 0.0])));
    s.mark_idle("bot1", &labels(&[]), t(0));
    request(&mut s, "p1", "poor", &[], 0);
    assert!(s.run_once().is_empty());
    let e = explain(&Pool::from_scheduler(s), "p1", None);
    assert_eq!(e.level.as_ref().unwrap().level, None);
    assert_eq!(codes(&e), vec!["free_tasks_disabled"]);
    // -10 at +0.5/s: positive in 20 s.
    let change = e.level.as_ref().unwrap().pending_change.clone().unwrap();
    assert_eq!(change.to, 0);
    assert!((change.in_secs - 20.0).abs() < 1e-9);
    match e.eta {
        Eta::Known { secs, method, .. } => {
            assert_eq!(method, "recharge");
            assert!((secs - 20.0).abs() < 1e-9);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn demotion_pending_and_better_level_ahead() {
    let mut s = Scheduler::new(t(0));
    s.add_account(
        "hi",
        account(&[1.0]),
        Some(Balance([100.0, 0.0, 0.0, 0.0, 0.0])),
    );
    // Level 1 with two tasks running and a rate of 1: spends 1/s.
    s.add_account(
        "lo",
        account(&[0.0, 1.0]),
        Some(Balance([0.0, 50.0, 0.0, 0.0, 0.0])),
    );
    for b in ["b1", "b2"] {
        s.mark_idle(b, &labels(&[]), t(0));
    }
    request(&mut s, "lo1", "lo", &[], 0);
    request(&mut s, "lo2", "lo", &[], 0);
    assert_eq!(s.run_once().len(), 2);
    request(&mut s, "hi1", "hi", &[], 1);
    request(&mut s, "lo3", "lo", &[], 1);
    let pool = Pool::from_scheduler(s);
    let e = explain(&pool, "lo3", None);
    let lw = e.level.clone().unwrap();
    assert_eq!(lw.level, Some(1));
    assert_eq!(lw.running_by_level[1], 2);
    assert_eq!(
        lw.pending_change,
        Some(LevelChange {
            to: FREE_PRIORITY,
            in_secs: 50.0
        })
    );
    assert_eq!(
        e.reasons[0],
        Reason::QueuedAhead {
            better_level: 1,
            same_level_earlier: 0
        }
    );
    // hi1 can preempt either of lo's tasks (cost 0 < its balance).
    let e = explain(&pool, "hi1", None);
    assert_eq!(codes(&e), vec!["matching_bots_busy"]);
}

#[test]
fn assigned_awaiting_pickup_and_idle_bot_next_pass() {
    let mut pool = Pool::new(t(0));
    let waiting = |id: &str| Notification {
        time: t(0),
        task_id: id.into(),
        kind: NotifyKind::Waiting {
            account: String::new(),
            base_labels: Vec::new(),
            provisionable_labels: Vec::new(),
            enqueue_time: t(0),
            tags: Vec::new(),
        },
    };
    pool.apply(&Command::Batch(Batch {
        notifies: vec![NotifyCall {
            notifications: vec![waiting("t1")],
            is_callback: false,
        }],
        assigns: vec![AssignCall {
            time: t(1),
            bots: vec![IdleBot {
                id: "bot1".into(),
                labels: Vec::new(),
            }],
        }],
    }))
    .unwrap();
    let e = explain(&pool, "t1", None);
    assert_eq!(
        e.state,
        TaskState::AssignedAwaitingPickup {
            bot: "bot1".into(),
            since: t(1)
        }
    );
    // A second task with an idle bot and nothing ahead starts at the next pass.
    pool.apply(&Command::Batch(Batch {
        notifies: vec![NotifyCall {
            notifications: vec![waiting("t2")],
            is_callback: false,
        }],
        assigns: vec![],
    }))
    .unwrap();
    let mut s = pool.scheduler().clone();
    s.mark_idle("bot2", &[], t(2));
    let e = explain(&Pool::from_scheduler(s), "t2", None);
    assert!(
        e.reasons.iter().all(|r| *r == Reason::FreeLevel),
        "{:?}",
        e.reasons
    );
    assert!(matches!(
        e.eta,
        Eta::Known {
            method: "next_pass",
            ..
        }
    ));
}

/// Latency of one explanation on a large pool. Run with
/// `cargo test -p qscheduler-core --release --lib -- --ignored explain_latency --nocapture`;
/// the figures are printed, not asserted. Two shapes: ten accounts over
/// twenty label sets (typical), and one account with one label set (the
/// worst case: every queued task is a same-level competitor).
#[test]
#[ignore]
fn explain_latency() {
    for (n, accounts, sets) in [
        (100_000u32, 10u32, 20u32),
        (1_000_000, 10, 20),
        (100_000, 1, 1),
        (1_000_000, 1, 1),
    ] {
        let mut s = Scheduler::new(t(0));
        for a in 0..accounts {
            s.add_account(
                &format!("acct{a}"),
                account(&[1.0, 1.0]),
                Some(Balance([10.0 * a as f32, 5.0, 0.0, 0.0, 0.0])),
            );
        }
        for b in 0..2000 {
            let set = format!("pool:{}", b % sets);
            s.mark_idle(&format!("bot{b}"), &labels(&["os:linux", &set]), t(0));
        }
        for i in 0..2000u32 {
            let set = format!("pool:{}", i % sets);
            request(&mut s, &format!("run{i}"), "acct0", &["os:linux", &set], 0);
        }
        s.update_time(t(1));
        assert_eq!(s.run_once().len(), 2000);
        for i in 0..n {
            let set = format!("pool:{}", i % sets);
            let acct = format!("acct{}", i % accounts);
            request(
                &mut s,
                &format!("task{i:07}"),
                &acct,
                &["os:linux", &set],
                i64::from(i % 1000) + 2,
            );
        }
        s.update_time(t(2000));
        // Richer accounts may preempt some of acct0's tasks.
        let _ = s.run_once();
        s.update_time(t(2001));
        let pool = Pool::from_scheduler(s);
        // The last task: every same-level competitor is walked.
        let probe = format!("task{:07}", n - 1);
        let turnover = Some(Turnover {
            window_secs: 600.0,
            completions: 1200,
        });
        let mut times = Vec::new();
        for _ in 0..20 {
            let start = std::time::Instant::now();
            let e = explain(&pool, &probe, turnover);
            times.push(start.elapsed());
            assert_eq!(e.state, TaskState::Queued);
        }
        times.sort();
        // Enqueued at the median enqueue time: the middle of the order.
        let middle = format!("task{:07}", 500);
        let start = std::time::Instant::now();
        let e = explain(&pool, &middle, turnover);
        println!(
            "  a task in the middle: {:?}, standing {:?}",
            start.elapsed(),
            e.standing
        );
        println!(
            "explain at {n} queued ({accounts} accounts, {sets} label sets): median {:?}, max {:?}",
            times[times.len() / 2],
            times[times.len() - 1]
        );
    }
}
