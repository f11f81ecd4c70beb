//! Worked examples of the rules, run against both implementations.
//!
//! Each example is written once, generically over [`Sched`], and run on the
//! optimized [`Scheduler`] and on the naive [`Model`]: an example that
//! passes on both pins the intended behaviour, and one that passes on only
//! one points at the culprit. The examples come from reference §6.4–§6.14,
//! its Appendix A and the project's deliberate differences (DECISIONS 1–4),
//! and each asserts assignments together with the events and state that
//! should accompany them.

use crate::Scheduler;
use crate::account::{AccountConfig, Balance, PoolSettings};
use crate::event::{Assignment, Event};
use crate::model::Model;
use crate::scheduler::{NewRequest, NotAssigned, StateDump};
use crate::time::Time;

/// The operations both implementations offer.
pub(crate) trait Sched {
    fn new(now: Time) -> Self;
    fn set_settings(&mut self, settings: PoolSettings);
    fn add_account(&mut self, id: &str, config: AccountConfig, balance: Option<Balance>);
    fn update_account_config(&mut self, id: &str, config: AccountConfig) -> bool;
    fn delete_account(&mut self, id: &str);
    fn reset_balance(&mut self, id: &str);
    fn add_request(&mut self, new: &NewRequest, t: Time, tags: &[String]);
    fn mark_idle(&mut self, worker: &str, labels: &[String], t: Time);
    fn notify_running(&mut self, request: &str, worker: &str, t: Time);
    fn notify_absent(&mut self, request: &str, t: Time);
    fn update_time(&mut self, t: Time);
    fn run_once(&mut self) -> Vec<Assignment>;
    fn unassign(&mut self, request: &str, worker: &str, t: Time) -> Result<(), NotAssigned>;
    fn is_assigned(&self, request: &str, worker: &str) -> bool;
    fn take_events(&mut self) -> Vec<Event>;
    fn dump(&self) -> StateDump;
    /// Checks internal consistency, where the implementation has any.
    fn check(&self) {}
}

macro_rules! forward_sched {
    ($t:ty $(, $check:ident)?) => {
        impl Sched for $t {
            fn new(now: Time) -> Self {
                <$t>::new(now)
            }
            fn set_settings(&mut self, settings: PoolSettings) {
                <$t>::set_settings(self, settings)
            }
            fn add_account(&mut self, id: &str, config: AccountConfig, balance: Option<Balance>) {
                <$t>::add_account(self, id, config, balance)
            }
            fn update_account_config(&mut self, id: &str, config: AccountConfig) -> bool {
                <$t>::update_account_config(self, id, config)
            }
            fn delete_account(&mut self, id: &str) {
                <$t>::delete_account(self, id)
            }
            fn reset_balance(&mut self, id: &str) {
                <$t>::reset_balance(self, id)
            }
            fn add_request(&mut self, new: &NewRequest, t: Time, tags: &[String]) {
                <$t>::add_request(self, new, t, tags)
            }
            fn mark_idle(&mut self, worker: &str, labels: &[String], t: Time) {
                <$t>::mark_idle(self, worker, labels, t)
            }
            fn notify_running(&mut self, request: &str, worker: &str, t: Time) {
                <$t>::notify_running(self, request, worker, t)
            }
            fn notify_absent(&mut self, request: &str, t: Time) {
                <$t>::notify_absent(self, request, t)
            }
            fn update_time(&mut self, t: Time) {
                <$t>::update_time(self, t)
            }
            fn run_once(&mut self) -> Vec<Assignment> {
                <$t>::run_once(self)
            }
            fn unassign(&mut self, request: &str, worker: &str, t: Time) -> Result<(), NotAssigned> {
                <$t>::unassign(self, request, worker, t)
            }
            fn is_assigned(&self, request: &str, worker: &str) -> bool {
                <$t>::is_assigned(self, request, worker)
            }
            fn take_events(&mut self) -> Vec<Event> {
                <$t>::take_events(self)
            }
            fn dump(&self) -> StateDump {
                <$t>::dump(self)
            }
            $(
                fn check(&self) {
                    <$t>::$check(self)
                }
            )?
        }
    };
}

forward_sched!(Scheduler, check_invariants);
forward_sched!(Model);

// ------------------------------------------------------------------ helpers

use std::sync::Arc;

use crate::account::FREE_PRIORITY;
use crate::event::{AssignmentKind, CompletedReason, EventKind};
use crate::time::{MAX_QUEUEING_AGE_NANOS, NANOS_PER_SEC};

/// Far enough from the epoch for enqueue times 46 hours in the past.
const BASE_SECS: i64 = 1_000_000;

fn t(secs: i64) -> Time {
    Time::from_secs(BASE_SECS + secs)
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn req(id: &str, account: &str, base: &[&str], prov: &[&str], enqueue: Time) -> NewRequest {
    NewRequest {
        id: id.to_owned(),
        account: account.to_owned(),
        base_labels: strs(base),
        provisionable_labels: strs(prov),
        enqueue_time: enqueue,
    }
}

fn cfg(rates: &[f32], max_charge_seconds: f32) -> AccountConfig {
    AccountConfig {
        charge_rate: AccountConfig::rates_from_slice(rates).unwrap(),
        max_charge_seconds,
        ..AccountConfig::default()
    }
}

fn bal(v: [f32; 5]) -> Option<Balance> {
    Some(Balance(v))
}

/// Adds a request at time `at` (enqueued then too), without tags.
fn add<S: Sched>(s: &mut S, id: &str, account: &str, base: &[&str], at: Time) {
    s.add_request(&req(id, account, base, &[], at), at, &[]);
}

/// An assignment as (worker, request, priority, preempted task).
type A = (String, String, u8, Option<String>);

fn pass<S: Sched>(s: &mut S) -> Vec<A> {
    let out = s.run_once();
    s.check();
    let now = s.dump().now;
    out.into_iter()
        .map(|a| {
            assert_eq!(a.time, now, "assignments carry the pass time");
            let abort = match a.kind {
                AssignmentKind::Idle => None,
                AssignmentKind::Preempt { task_to_abort } => Some(task_to_abort.to_string()),
            };
            (
                a.worker_id.to_string(),
                a.request_id.to_string(),
                a.priority,
                abort,
            )
        })
        .collect()
}

fn idle(w: &str, r: &str, p: u8) -> A {
    (w.to_owned(), r.to_owned(), p, None)
}

fn preempt(w: &str, r: &str, p: u8, abort: &str) -> A {
    (w.to_owned(), r.to_owned(), p, Some(abort.to_owned()))
}

/// Events as (type, task, bot), for order checks.
fn summary(events: &[Event]) -> Vec<(&'static str, String, Option<String>)> {
    events
        .iter()
        .map(|e| {
            (
                e.kind.type_name(),
                e.task_id.to_string(),
                e.bot_id.as_ref().map(|b| b.to_string()),
            )
        })
        .collect()
}

fn ev(kind: &'static str, task: &str, bot: Option<&str>) -> (&'static str, String, Option<String>) {
    (kind, task.to_owned(), bot.map(str::to_owned))
}

/// (worker, request, priority, cost) of every running task.
fn running<S: Sched>(s: &S) -> Vec<(String, String, u8, Balance)> {
    s.dump()
        .workers
        .into_iter()
        .filter_map(|w| w.running.map(|(r, p, c)| (w.id, r.id, p, c)))
        .collect()
}

fn queued<S: Sched>(s: &S) -> Vec<String> {
    s.dump().queued.into_iter().map(|r| r.id).collect()
}

fn workers<S: Sched>(s: &S) -> Vec<String> {
    s.dump().workers.into_iter().map(|w| w.id).collect()
}

fn balance<S: Sched>(s: &S, account: &str) -> Option<Balance> {
    s.dump()
        .accounts
        .into_iter()
        .find(|(id, _, _)| id == account)
        .map(|(_, _, b)| b)
}

fn examined<S: Sched>(s: &S, id: &str) -> Time {
    s.dump()
        .queued
        .into_iter()
        .find(|r| r.id == id)
        .expect("queued")
        .examined_time
}

fn completed(
    reason: CompletedReason,
    other_task: Option<&str>,
    other_bot: Option<&str>,
) -> EventKind {
    EventKind::Completed {
        reason,
        other_task: other_task.map(Arc::from),
        other_bot: other_bot.map(Arc::from),
    }
}

const ZERO: Balance = Balance::ZERO;

// ------------------------------------------------------- §6.4 time, balances

fn recharge_from_zero_and_cap<S: Sched>() {
    let mut s = S::new(t(0));
    s.add_account("a", cfg(&[1.0, 2.0, 3.0], 2.0), None);
    s.update_time(t(1));
    assert_eq!(balance(&s, "a"), bal([1.0, 2.0, 3.0, 0.0, 0.0]));
    s.update_time(t(11));
    assert_eq!(balance(&s, "a"), bal([2.0, 4.0, 6.0, 0.0, 0.0]));

    // Two tasks at P0 from a zero balance: charged 2, recharged 1.
    let mut s = S::new(t(0));
    s.add_account(
        "a",
        cfg(&[1.0, 2.0, 3.0], 2.0),
        bal([1.0, 0.0, 0.0, 0.0, 0.0]),
    );
    s.mark_idle("w1", &[], t(0));
    s.mark_idle("w2", &[], t(0));
    add(&mut s, "r1", "a", &[], t(0));
    add(&mut s, "r2", "a", &[], t(0));
    assert_eq!(pass(&mut s), vec![idle("w1", "r1", 0), idle("w2", "r2", 0)]);
    s.reset_balance("a");
    s.update_time(t(1));
    assert_eq!(balance(&s, "a"), bal([-1.0, 2.0, 3.0, 0.0, 0.0]));
    let one = Balance([1.0, 0.0, 0.0, 0.0, 0.0]);
    assert_eq!(
        running(&s),
        vec![
            ("w1".into(), "r1".into(), 0, one),
            ("w2".into(), "r2".into(), 0, one)
        ]
    );
}

fn recharge_with_tasks_at_several_levels<S: Sched>() {
    let c = cfg(&[1.0, 1.0, 1.0, 0.0], 10.0);
    let mut s = S::new(t(0));
    // One task each at P1, P2 and P3: the balance decides the level.
    for (i, p) in [1usize, 2, 3].into_iter().enumerate() {
        let mut b = [0.0; 5];
        b[p] = 1.0;
        s.add_account("a", c.clone(), bal(b));
        let (w, r) = (format!("w{i}"), format!("r{i}"));
        s.mark_idle(&w, &[], t(0));
        add(&mut s, &r, "a", &[], t(0));
        assert_eq!(pass(&mut s), vec![idle(&w, &r, p as u8)]);
    }
    s.add_account("a", c, bal([9.5, 12.0, 10.5, 0.0, 0.0]));
    s.update_time(t(1));
    // Above the cap (P1) a balance is only spent, not recharged.
    assert_eq!(balance(&s, "a"), bal([10.0, 11.0, 10.0, -1.0, 0.0]));
    let costs: Vec<Balance> = running(&s).into_iter().map(|r| r.3).collect();
    assert_eq!(
        costs,
        vec![
            Balance([0.0, 1.0, 0.0, 0.0, 0.0]),
            Balance([0.0, 0.0, 1.0, 0.0, 0.0]),
            Balance([0.0, 0.0, 0.0, 1.0, 0.0])
        ]
    );
}

fn update_time_backwards_changes_nothing<S: Sched>() {
    let mut s = S::new(t(10));
    s.set_settings(PoolSettings {
        disable_preemption: false,
        bot_expiration_nanos: -1,
    });
    s.add_account("a", cfg(&[1.0], 100.0), None);
    s.mark_idle("w1", &[], t(0));
    let before = s.dump();
    s.update_time(t(9));
    assert_eq!(s.dump(), before, "no recharge, no expiry, clock unchanged");
    s.update_time(t(10));
    assert_eq!(
        workers(&s),
        Vec::<String>::new(),
        "an update to the same time expires"
    );
}

// ------------------------------------------------------------ §6.7 matching

fn rare_worker_gets_rare_request<S: Sched>() {
    let mut s = S::new(t(0));
    // The rare worker comes first in id order, the rare request last in
    // FIFO order: match quality must still pair them.
    s.mark_idle("a-rare", &strs(&["common", "rare"]), t(0));
    for i in 0..10 {
        s.mark_idle(&format!("w{i}"), &strs(&["common"]), t(0));
        add(&mut s, &format!("c{i}"), "", &["common"], t(0));
    }
    add(&mut s, "z-rare", "", &["common", "rare"], t(1));
    let mut want = vec![idle("a-rare", "z-rare", FREE_PRIORITY)];
    for i in 0..10 {
        want.push(idle(&format!("w{i}"), &format!("c{i}"), FREE_PRIORITY));
    }
    assert_eq!(pass(&mut s), want);
    assert!(queued(&s).is_empty());
}

fn examined_time_limits_idle_matching<S: Sched>() {
    let mut c = cfg(&[], 0.0);
    c.per_label_task_limits.insert("m".into(), 1);
    let mut s = S::new(t(0));
    s.add_account("a", c, bal([1.0, 0.0, 0.0, 0.0, 0.0]));
    s.mark_idle("w1", &strs(&["m:1"]), t(0));
    s.mark_idle("w2", &strs(&["m:1"]), t(0));
    add(&mut s, "r1", "a", &[], t(0));
    add(&mut s, "r2", "a", &[], t(0));
    s.update_time(t(5));
    // r2 fits w2 but the label limit holds it back; it is examined at t(5).
    assert_eq!(pass(&mut s), vec![idle("w1", "r1", 0)]);
    assert_eq!(examined(&s, "r2"), t(5));
    s.notify_absent("r1", t(5));
    s.update_time(t(6));
    // The limit no longer applies, but w2 has not changed since before r2
    // was examined, so the shortcut keeps them apart, even when w2 polls
    // again with the same labels.
    assert_eq!(pass(&mut s), vec![]);
    s.mark_idle("w2", &strs(&["m:1"]), t(6));
    assert_eq!(pass(&mut s), vec![]);
    assert_eq!(examined(&s, "r2"), t(6));
    // A change of labels makes w2 a changed worker (modified = now).
    s.mark_idle("w2", &strs(&["m:1", "x"]), t(7));
    assert_eq!(s.dump().workers[0].modified_time, t(6));
    assert_eq!(pass(&mut s), vec![idle("w2", "r2", 0)]);
}

// ---------------------------------------------------------- §6.8 preemption

/// Reference §6.8 test set-up: two P1 tasks of a1, w1 costing (0,1,0),
/// w2 free of cost, at T = 1 s.
fn two_p1_tasks<S: Sched>() -> S {
    let c = cfg(&[1.0, 1.0, 1.0], 1000.0);
    let mut s = S::new(t(0));
    s.add_account("a1", c.clone(), bal([0.0, 1.0, 0.0, 0.0, 0.0]));
    s.mark_idle("w1", &[], t(0));
    add(&mut s, "r1", "a1", &[], t(0));
    assert_eq!(pass(&mut s), vec![idle("w1", "r1", 1)]);
    s.update_time(t(1));
    s.add_account("a1", c, bal([0.0, 1.0, 0.0, 0.0, 0.0]));
    s.mark_idle("w2", &[], t(1));
    add(&mut s, "r2", "a1", &[], t(1));
    assert_eq!(pass(&mut s), vec![idle("w2", "r2", 1)]);
    s.take_events();
    s
}

fn preempts_the_cheaper_task<S: Sched>() {
    let mut s = two_p1_tasks::<S>();
    s.add_account("a2", cfg(&[1.0], 1000.0), bal([1.0, 0.0, 0.0, 0.0, 0.0]));
    add(&mut s, "r3", "a2", &[], t(1));
    s.take_events();
    assert_eq!(pass(&mut s), vec![preempt("w2", "r3", 0, "r2")]);
    let events = s.take_events();
    assert_eq!(
        summary(&events),
        vec![
            ev("QSCHEDULER_ASSIGNED", "r3", Some("w2")),
            ev("QSCHEDULER_PREEMPTED", "r2", Some("w2"))
        ]
    );
    assert_eq!(
        events[0].kind,
        EventKind::Assigned {
            provision_required: false,
            priority: 0,
            preempting: true,
            preemption_cost: Some(ZERO),
            preempted_task_id: Some(Arc::from("r2")),
        }
    );
    assert_eq!(
        events[0].account_balance,
        Balance([1.0, 0.0, 0.0, 0.0, 0.0])
    );
    assert_eq!(events[0].time, t(1));
    assert_eq!(
        events[1].kind,
        EventKind::Preempted {
            preempting_account_id: Arc::from("a2"),
            preempting_task_id: Arc::from("r3"),
            priority: 1,
            preempting_priority: 0,
        }
    );
    assert_eq!(events[1].account_id.as_ref(), "a1");
    assert_eq!(events[1].cost, Some(ZERO));
    let w1_cost = Balance([0.0, 1.0, 0.0, 0.0, 0.0]);
    assert_eq!(
        running(&s),
        vec![
            ("w1".into(), "r1".into(), 1, w1_cost),
            ("w2".into(), "r3".into(), 0, ZERO)
        ]
    );
    assert!(queued(&s).is_empty(), "the preempted request is forgotten");
}

fn no_preemption_without_balance<S: Sched>() {
    let mut s = two_p1_tasks::<S>();
    s.add_account("a2", cfg(&[1.0], 1000.0), None);
    add(&mut s, "r3", "a2", &[], t(1));
    assert_eq!(pass(&mut s), vec![]);
    assert_eq!(queued(&s), vec!["r3"]);
    assert_eq!(examined(&s, "r3"), t(1));
}

fn own_account_cannot_preempt<S: Sched>() {
    let mut s = two_p1_tasks::<S>();
    s.add_account(
        "a1",
        cfg(&[1.0, 1.0, 1.0], 1000.0),
        bal([300.0, 1.0, 0.0, 0.0, 0.0]),
    );
    add(&mut s, "r3", "a1", &[], t(1));
    assert_eq!(pass(&mut s), vec![]);
    assert_eq!(queued(&s), vec!["r3"]);
    assert_eq!(running(&s).len(), 2);
}

fn preemption_refunds_and_charges<S: Sched>() {
    let none = cfg(&[], 0.0);
    let mut s = S::new(t(0));
    s.add_account("a1", none.clone(), bal([1.0, 0.0, 0.0, 0.0, 0.0]));
    s.mark_idle("w1", &[], t(0));
    add(&mut s, "r1", "a1", &[], t(0));
    assert_eq!(pass(&mut s), vec![idle("w1", "r1", 0)]);
    s.update_time(t(1));
    // Demote r1 to P1 so that a P0 request can preempt it, keeping its cost.
    s.add_account("a1", none.clone(), bal([-700.0, 0.0, 0.0, 0.0, 0.0]));
    assert_eq!(pass(&mut s), vec![]);
    s.add_account("a1", none.clone(), bal([1.0, 0.0, 0.0, 0.0, 0.0]));
    s.add_account("a2", none, bal([2.0, 0.0, 0.0, 0.0, 0.0]));
    add(&mut s, "r2", "a2", &[], t(1));
    s.take_events();
    assert_eq!(pass(&mut s), vec![preempt("w1", "r2", 0, "r1")]);
    let cost = Balance([1.0, 0.0, 0.0, 0.0, 0.0]);
    assert_eq!(balance(&s, "a1"), bal([2.0, 0.0, 0.0, 0.0, 0.0]));
    assert_eq!(balance(&s, "a2"), bal([1.0, 0.0, 0.0, 0.0, 0.0]));
    assert_eq!(running(&s), vec![("w1".into(), "r2".into(), 0, cost)]);
    let events = s.take_events();
    // Balances in the events are those before the refund and the charge.
    assert_eq!(
        events[0].account_balance,
        Balance([2.0, 0.0, 0.0, 0.0, 0.0])
    );
    assert_eq!(events[0].cost, Some(cost));
    assert_eq!(
        events[1].account_balance,
        Balance([1.0, 0.0, 0.0, 0.0, 0.0])
    );
    assert_eq!(events[1].cost, Some(cost));
}

// ----------------------------------------------------- §6.9 reprioritisation

fn demotes_the_cheaper_task<S: Sched>() {
    let c = cfg(&[1.1, 0.9], 1000.0);
    let mut s = S::new(t(0));
    s.add_account("a", c.clone(), bal([1.0, 0.0, 0.0, 0.0, 0.0]));
    s.mark_idle("w1", &[], t(0));
    add(&mut s, "r1", "a", &[], t(0));
    assert_eq!(pass(&mut s), vec![idle("w1", "r1", 0)]);
    s.update_time(t(1));
    s.mark_idle("w2", &[], t(1));
    add(&mut s, "r2", "a", &[], t(1));
    assert_eq!(pass(&mut s), vec![idle("w2", "r2", 0)]);
    s.add_account("a", c, bal([-1200.0, 1200.0, 1200.0, 0.0, 0.0]));
    s.take_events();
    // P0: net = 1.1 - 2 = -0.9, one demotion; P1: net = 0.9 - 1 < 0, no
    // promotion.
    assert_eq!(pass(&mut s), vec![]);
    let events = s.take_events();
    assert_eq!(
        summary(&events),
        vec![ev("QSCHEDULER_REPRIORITIZED", "r2", Some("w2"))]
    );
    assert_eq!(
        events[0].kind,
        EventKind::Reprioritized {
            old_priority: 0,
            new_priority: 1
        }
    );
    assert_eq!(
        running(&s),
        vec![
            (
                "w1".into(),
                "r1".into(),
                0,
                Balance([1.0, 0.0, 0.0, 0.0, 0.0])
            ),
            ("w2".into(), "r2".into(), 1, ZERO)
        ]
    );
}

fn promotes_the_costlier_task<S: Sched>() {
    let c = cfg(&[1.1, 0.9], 1000.0);
    let mut s = S::new(t(0));
    s.add_account("a", c.clone(), bal([0.0, 0.0, 1.0, 0.0, 0.0]));
    s.mark_idle("w1", &[], t(0));
    add(&mut s, "r1", "a", &[], t(0));
    assert_eq!(pass(&mut s), vec![idle("w1", "r1", 2)]);
    s.update_time(t(1));
    s.add_account("a", c.clone(), bal([0.0, 0.0, 1.0, 0.0, 0.0]));
    s.mark_idle("w2", &[], t(1));
    add(&mut s, "r2", "a", &[], t(1));
    assert_eq!(pass(&mut s), vec![idle("w2", "r2", 2)]);
    s.add_account("a", c, bal([-1200.0, 1200.0, 1200.0, 0.0, 0.0]));
    s.take_events();
    assert_eq!(pass(&mut s), vec![]);
    let events = s.take_events();
    assert_eq!(
        summary(&events),
        vec![ev("QSCHEDULER_REPRIORITIZED", "r1", Some("w1"))]
    );
    // DECISIONS 4: the event names the level the task moved to.
    assert_eq!(
        events[0].kind,
        EventKind::Reprioritized {
            old_priority: 2,
            new_priority: 1
        }
    );
    assert_eq!(events[0].cost, Some(Balance([0.0, 0.0, 1.0, 0.0, 0.0])));
    let prios: Vec<u8> = running(&s).into_iter().map(|r| r.2).collect();
    assert_eq!(prios, vec![1, 2]);
}

// --------------------------------------------------------- §6.10 notifications

fn waiting_notifications<S: Sched>() {
    let mut s = S::new(t(0));
    let tags = strs(&["k:v"]);
    s.add_request(
        &req("r1", "acc", &["b", "a", "a"], &["p"], t(-10)),
        t(5),
        &tags,
    );
    let events = s.take_events();
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(
        e.kind,
        EventKind::Enqueued {
            tags: tags.clone().into()
        }
    );
    assert_eq!(
        (e.task_id.as_ref(), e.time, e.account_id.as_ref()),
        ("r1", t(5), "acc")
    );
    assert_eq!(
        (e.account_valid, e.account_balance, e.cost),
        (false, ZERO, None)
    );
    assert_eq!((e.bot_id.clone(), e.bot_dimensions.len()), (None, 0));
    let names: Vec<&str> = e.base_labels.iter().map(|l| &**l).collect();
    assert_eq!(names, vec!["a", "b"], "labels are sets, sorted");
    let r = &s.dump().queued[0];
    assert_eq!(
        (r.enqueue_time, r.confirmed_time, r.examined_time),
        (t(-10), t(5), Time::EPOCH)
    );

    // Known and queued: only the confirmed time moves, and only forward.
    s.add_request(&req("r1", "other", &["c"], &[], t(0)), t(7), &tags);
    s.add_request(&req("r1", "other", &["c"], &[], t(0)), t(6), &tags);
    assert!(s.take_events().is_empty());
    let r = &s.dump().queued[0];
    assert_eq!((r.account.as_str(), r.confirmed_time), ("acc", t(7)));
    assert_eq!(r.base_labels, strs(&["a", "b"]));

    // Known and running: stale news is ignored; fresh news forgets the bot
    // and re-queues the request as new, without a completion.
    s.mark_idle("w1", &strs(&["a", "b", "p"]), t(0));
    assert_eq!(pass(&mut s), vec![idle("w1", "r1", FREE_PRIORITY)]);
    s.notify_running("r1", "w1", t(8));
    s.take_events();
    s.add_request(&req("r1", "acc2", &["c"], &[], t(1)), t(7), &tags);
    assert!(s.is_assigned("r1", "w1"));
    s.add_request(&req("r1", "acc2", &["c"], &[], t(1)), t(8), &tags);
    assert_eq!(
        summary(&s.take_events()),
        vec![ev("SWARMING_ENQUEUED", "r1", None)]
    );
    assert_eq!(workers(&s), Vec::<String>::new());
    let r = &s.dump().queued[0];
    assert_eq!((r.account.as_str(), r.confirmed_time), ("acc2", t(8)));
    assert_eq!(
        (r.base_labels.clone(), r.examined_time),
        (strs(&["c"]), Time::EPOCH)
    );
}

fn idle_notifications<S: Sched>() {
    let mut s = S::new(t(0));
    s.update_time(t(10));
    s.mark_idle("w1", &strs(&["b", "a", "a"]), t(3));
    let w = &s.dump().workers[0];
    assert_eq!(w.labels, strs(&["a", "b"]));
    assert_eq!((w.confirmed_time, w.modified_time), (t(3), t(10)));
    s.update_time(t(20));
    s.mark_idle("w1", &strs(&["x"]), t(2));
    let w = &s.dump().workers[0];
    assert_eq!(
        (w.labels.clone(), w.confirmed_time),
        (strs(&["a", "b"]), t(3)),
        "stale"
    );
    s.mark_idle("w1", &strs(&["a", "b"]), t(4));
    let w = &s.dump().workers[0];
    assert_eq!(
        (w.confirmed_time, w.modified_time),
        (t(4), t(10)),
        "same labels"
    );
    s.mark_idle("w1", &strs(&["a"]), t(4));
    let w = &s.dump().workers[0];
    assert_eq!(
        (w.confirmed_time, w.modified_time),
        (t(4), t(20)),
        "labels changed"
    );

    // A running bot that asks for work has finished its task.
    add(&mut s, "r1", "", &["a"], t(20));
    assert_eq!(pass(&mut s), vec![idle("w1", "r1", FREE_PRIORITY)]);
    s.update_time(t(30));
    s.take_events();
    s.mark_idle("w1", &strs(&["a"]), t(25));
    let events = s.take_events();
    assert_eq!(
        summary(&events),
        vec![ev("SWARMING_COMPLETED", "r1", Some("w1"))]
    );
    assert_eq!(
        events[0].kind,
        completed(CompletedReason::BotIdle, None, None)
    );
    assert_eq!((events[0].time, events[0].cost), (t(25), Some(ZERO)));
    let w = &s.dump().workers[0];
    assert_eq!(
        (w.confirmed_time, w.modified_time, w.running.is_none()),
        (t(25), t(30), true)
    );
    assert!(queued(&s).is_empty());

    // The running request's confirmed time counts too.
    s.add_request(&req("r2", "", &["a"], &[], t(30)), t(50), &[]);
    assert_eq!(pass(&mut s), vec![idle("w1", "r2", FREE_PRIORITY)]);
    s.mark_idle("w1", &strs(&["a"]), t(40));
    assert!(
        s.is_assigned("r2", "w1"),
        "older than the request's confirmation"
    );
    s.mark_idle("w1", &strs(&["a"]), t(50));
    assert!(!s.is_assigned("r2", "w1"));
}

fn running_notifications<S: Sched>() {
    let mut s = S::new(t(0));
    for w in ["w1", "w2", "w3"] {
        s.mark_idle(w, &strs(&["a"]), t(0));
    }
    add(&mut s, "r1", "", &["a"], t(0));
    add(&mut s, "r2", "", &["a"], t(0));
    assert_eq!(
        pass(&mut s),
        vec![
            idle("w1", "r1", FREE_PRIORITY),
            idle("w2", "r2", FREE_PRIORITY)
        ]
    );
    s.take_events();

    // The expected pairing: both confirmed.
    s.notify_running("r1", "w1", t(5));
    let d = s.dump();
    assert_eq!(d.workers[0].confirmed_time, t(5));
    assert_eq!(
        d.workers[0].running.as_ref().unwrap().0.confirmed_time,
        t(5)
    );

    // Older than the request's confirmation: ignored entirely.
    s.notify_running("r1", "w3", t(4));
    assert_eq!(workers(&s), strs(&["w1", "w2", "w3"]));

    // On another bot: the old bot and the task are forgotten, and the new
    // bot (idle, confirmed earlier) too.
    s.notify_running("r1", "w3", t(6));
    let events = s.take_events();
    assert_eq!(
        summary(&events),
        vec![ev("SWARMING_COMPLETED", "r1", Some("w1"))]
    );
    assert_eq!(
        events[0].kind,
        completed(CompletedReason::InconsistentBotForTask, None, Some("w3"))
    );
    assert_eq!(workers(&s), strs(&["w2"]));

    // A queued request reported running stays queued; the bot's own task
    // is over.
    add(&mut s, "r4", "", &["zzz"], t(6));
    s.take_events();
    s.notify_running("r4", "w2", t(7));
    let events = s.take_events();
    assert_eq!(
        summary(&events),
        vec![ev("SWARMING_COMPLETED", "r2", Some("w2"))]
    );
    assert_eq!(
        events[0].kind,
        completed(CompletedReason::InconsistentTaskForBot, Some("r4"), None)
    );
    assert_eq!(queued(&s), vec!["r4"]);
    assert_eq!(s.dump().queued[0].confirmed_time, t(6));
    assert_eq!(workers(&s), Vec::<String>::new());

    // Unknown request: the bot goes only if the news is not older.
    s.mark_idle("w5", &[], t(10));
    s.notify_running("nope", "w5", t(9));
    assert_eq!(workers(&s), vec!["w5"]);
    s.notify_running("nope", "w5", t(10));
    assert_eq!(workers(&s), Vec::<String>::new());
    assert!(s.take_events().is_empty());
}

fn absent_notifications<S: Sched>() {
    let mut s = S::new(t(0));
    s.mark_idle("w1", &strs(&["a"]), t(0));
    add(&mut s, "r1", "", &["a"], t(0));
    add(&mut s, "r2", "", &["zzz"], t(3));
    assert_eq!(pass(&mut s), vec![idle("w1", "r1", FREE_PRIORITY)]);
    s.take_events();

    s.notify_absent("unknown", t(9));
    s.notify_absent("r2", t(2));
    assert!(s.take_events().is_empty());
    assert_eq!(queued(&s), vec!["r2"]);
    s.notify_absent("r2", t(3));
    let events = s.take_events();
    assert_eq!(summary(&events), vec![ev("SWARMING_COMPLETED", "r2", None)]);
    assert_eq!(
        events[0].kind,
        completed(CompletedReason::IdleTaskAbsent, None, None)
    );
    assert_eq!(events[0].cost, None);
    assert!(queued(&s).is_empty());

    s.notify_running("r1", "w1", t(5));
    s.notify_absent("r1", t(4));
    assert!(s.is_assigned("r1", "w1"));
    s.notify_absent("r1", t(5));
    let events = s.take_events();
    assert_eq!(
        summary(&events),
        vec![ev("SWARMING_COMPLETED", "r1", Some("w1"))]
    );
    assert_eq!(
        events[0].kind,
        completed(CompletedReason::RunningTaskAbsent, None, None)
    );
    assert_eq!(events[0].cost, Some(ZERO));
    assert_eq!(
        workers(&s),
        Vec::<String>::new(),
        "the bot must announce itself again"
    );
}

// ------------------------------------------------------------ §6.11 unassign

fn unassign_requeues<S: Sched>() {
    let mut s = S::new(t(0));
    s.add_request(&req("r1", "", &["a"], &[], t(-100)), t(0), &[]);
    s.update_time(t(5));
    assert_eq!(pass(&mut s), vec![]);
    s.mark_idle("w1", &strs(&["a"]), t(6));
    s.mark_idle("w2", &strs(&["b"]), t(6));
    s.update_time(t(10));
    assert_eq!(pass(&mut s), vec![idle("w1", "r1", FREE_PRIORITY)]);
    s.take_events();
    let err = NotAssigned {
        request: "r1".into(),
        worker: "w2".into(),
    };
    assert_eq!(s.unassign("r1", "w2", t(11)), Err(err));
    assert!(s.unassign("r9", "w1", t(11)).is_err());
    assert!(s.unassign("r1", "w9", t(11)).is_err());
    assert!(s.take_events().is_empty());

    assert_eq!(s.unassign("r1", "w1", t(12)), Ok(()));
    let events = s.take_events();
    assert_eq!(
        summary(&events),
        vec![ev("QSCHEDULER_UNASSIGNED", "r1", Some("w1"))]
    );
    assert_eq!((events[0].time, events[0].cost), (t(12), Some(ZERO)));
    assert_eq!(workers(&s), vec!["w2"]);
    let r = &s.dump().queued[0];
    assert_eq!(
        (r.id.as_str(), r.confirmed_time, r.examined_time),
        ("r1", t(0), t(5))
    );
}

fn unassign_drops_requests_older_than_46_hours<S: Sched>() {
    let age = MAX_QUEUEING_AGE_NANOS;
    let mut s = S::new(t(0));
    s.mark_idle("w1", &[], t(0));
    s.mark_idle("w2", &[], t(0));
    s.mark_idle("w3", &[], t(0));
    s.add_request(&req("r1", "", &[], &[], t(0).add_nanos(-age)), t(0), &[]);
    s.add_request(&req("r2", "", &[], &[], t(0).add_nanos(-age)), t(0), &[]);
    s.add_request(&req("r3", "", &[], &[], t(0).add_nanos(-age)), t(0), &[]);
    assert_eq!(pass(&mut s).len(), 3);
    // Exactly 46 hours: kept.
    s.unassign("r1", "w1", t(0)).unwrap();
    assert_eq!(queued(&s), vec!["r1"]);
    // The withdrawal's time counts when it is later than the clock...
    s.unassign("r2", "w2", t(0).add_nanos(1)).unwrap();
    assert_eq!(queued(&s), vec!["r1"]);
    // ... and the clock when it is later.
    s.update_time(t(1));
    s.unassign("r3", "w3", t(0)).unwrap();
    assert_eq!(queued(&s), vec!["r1"]);
    let kinds: Vec<&str> = s.take_events().iter().map(|e| e.kind.type_name()).collect();
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == "QSCHEDULER_UNASSIGNED")
            .count(),
        3
    );
    assert_eq!(workers(&s), Vec::<String>::new());
}

// ------------------------------------------------------------ §6.12 accounts

fn account_api<S: Sched>() {
    let c1 = cfg(&[1.0], 10.0);
    let c2 = cfg(&[2.0, 1.0], 20.0);
    let mut s = S::new(t(0));
    assert!(!s.update_account_config("a", c1.clone()));
    assert!(s.dump().accounts.is_empty());
    s.add_account("a", c1.clone(), bal([5.0, 0.0, 0.0, 0.0, 0.0]));
    assert!(s.update_account_config("a", c2.clone()));
    assert_eq!(
        s.dump().accounts,
        vec![(
            "a".to_owned(),
            c2.clone(),
            Balance([5.0, 0.0, 0.0, 0.0, 0.0])
        )]
    );
    // Re-creating resets the balance.
    s.add_account("a", c1.clone(), None);
    assert_eq!(balance(&s, "a"), Some(ZERO));
    s.add_account("a", c1, bal([3.0, 0.0, 0.0, 0.0, 0.0]));
    s.reset_balance("a");
    s.reset_balance("nope");
    assert_eq!(balance(&s, "a"), Some(ZERO));
    s.delete_account("a");
    s.delete_account("nope");
    assert!(s.dump().accounts.is_empty());
    assert!(!s.update_account_config("a", c2));
}

fn deleted_account_keeps_its_tasks<S: Sched>() {
    let mut s = S::new(t(0));
    s.add_account("a", cfg(&[1.0], 100.0), bal([10.0, 0.0, 0.0, 0.0, 0.0]));
    s.mark_idle("w1", &[], t(0));
    add(&mut s, "r1", "a", &[], t(0));
    add(&mut s, "r2", "a", &["x"], t(0));
    assert_eq!(pass(&mut s), vec![idle("w1", "r1", 0)]);
    assert!(s.is_assigned("r1", "w1"));
    assert!(!s.is_assigned("r2", "w1"));
    assert!(!s.is_assigned("r1", "nope"));
    s.delete_account("a");
    s.update_time(t(10));
    // Still P0, still costed, no longer charged or reprioritised.
    assert_eq!(
        running(&s),
        vec![(
            "w1".into(),
            "r1".into(),
            0,
            Balance([10.0, 0.0, 0.0, 0.0, 0.0])
        )]
    );
    assert!(s.dump().accounts.is_empty());
    s.mark_idle("w2", &strs(&["x"]), t(10));
    s.take_events();
    assert_eq!(pass(&mut s), vec![idle("w2", "r2", FREE_PRIORITY)]);
    let events = s.take_events();
    assert_eq!(
        summary(&events),
        vec![ev("QSCHEDULER_ASSIGNED", "r2", Some("w2"))]
    );
    assert_eq!(
        (events[0].account_valid, events[0].account_balance),
        (false, ZERO)
    );
    assert_eq!(events[0].bot_dimensions.len(), 1);
}

// ----------------------------------------------- §6.14 fanout and label limits

fn fanout_example<S: Sched>() {
    let mut c = cfg(&[1.0], 100.0);
    c.max_fanout = 1;
    let mut s = S::new(t(0));
    s.add_account("a", c, bal([10.0, 0.0, 0.0, 0.0, 0.0]));
    for w in ["w1", "w2", "w3"] {
        s.mark_idle(w, &strs(&["x", "y"]), t(0));
    }
    add(&mut s, "rA1", "a", &["x"], t(0));
    add(&mut s, "rA2", "a", &["x"], t(1));
    add(&mut s, "rB", "a", &["y"], t(2));
    assert_eq!(
        pass(&mut s),
        vec![
            idle("w1", "rA1", 0),
            idle("w2", "rB", 0),
            idle("w3", "rA2", FREE_PRIORITY)
        ]
    );
    // Throttled from the start of the next pass: running tasks count at any
    // level.
    s.mark_idle("w4", &strs(&["x"]), t(0));
    add(&mut s, "rA3", "a", &["x"], t(3));
    assert_eq!(pass(&mut s), vec![idle("w4", "rA3", FREE_PRIORITY)]);
}

fn fanout_without_free_tasks<S: Sched>() {
    let mut c = cfg(&[1.0], 100.0);
    c.max_fanout = 1;
    c.disable_free_tasks = true;
    let mut s = S::new(t(0));
    s.add_account("a", c, bal([10.0, 0.0, 0.0, 0.0, 0.0]));
    for w in ["w1", "w2", "w3"] {
        s.mark_idle(w, &strs(&["x", "y"]), t(0));
    }
    add(&mut s, "rA1", "a", &["x"], t(0));
    add(&mut s, "rA2", "a", &["x"], t(1));
    add(&mut s, "rB", "a", &["y"], t(2));
    s.update_time(t(5));
    assert_eq!(
        pass(&mut s),
        vec![idle("w1", "rA1", 0), idle("w2", "rB", 0)]
    );
    // Left out of the pass when its group filled up: not examined.
    assert_eq!(examined(&s, "rA2"), Time::EPOCH);
    s.update_time(t(6));
    assert_eq!(pass(&mut s), vec![]);
    assert_eq!(examined(&s, "rA2"), Time::EPOCH);
}

fn per_label_limit<S: Sched>() {
    let mut c = cfg(&[1.0], 100.0);
    c.per_label_task_limits.insert("label-model".into(), 2);
    let mut s = S::new(t(0));
    s.add_account("a", c, bal([10.0, 0.0, 0.0, 0.0, 0.0]));
    for w in ["m1", "m2", "m3"] {
        s.mark_idle(w, &strs(&["label-model:x", "pool"]), t(0));
    }
    s.mark_idle("m4", &strs(&["label-model:y", "pool"]), t(0));
    for r in ["r1", "r2", "r3", "r4"] {
        add(&mut s, r, "a", &["pool"], t(0));
    }
    add(&mut s, "rb", "b", &["pool"], t(1));
    assert_eq!(
        pass(&mut s),
        vec![
            idle("m1", "r1", 0),
            idle("m2", "r2", 0),
            idle("m4", "r3", 0),
            idle("m3", "rb", FREE_PRIORITY)
        ]
    );
    // Counts start from the running tasks at each pass.
    s.mark_idle("m5", &strs(&["label-model:x"]), t(0));
    add(&mut s, "r5", "a", &[], t(0));
    assert_eq!(pass(&mut s), vec![]);
    s.update_time(t(1));
    s.mark_idle("m1", &strs(&["label-model:x", "pool"]), t(1));
    assert_eq!(pass(&mut s), vec![idle("m1", "r4", 0)]);
}

// ----------------------------------------------------------- Appendix A

fn a1_basic_assignment<S: Sched>() {
    let mut s = S::new(t(0));
    add(&mut s, "T1", "", &["label1"], t(0));
    s.mark_idle("B1", &strs(&["label1"]), t(0));
    s.take_events();
    assert_eq!(pass(&mut s), vec![idle("B1", "T1", FREE_PRIORITY)]);
    let events = s.take_events();
    assert_eq!(
        events[0].kind,
        EventKind::Assigned {
            provision_required: false,
            priority: FREE_PRIORITY,
            preempting: false,
            preemption_cost: None,
            preempted_task_id: None,
        }
    );
    assert_eq!((events[0].cost, events[0].time), (Some(ZERO), t(0)));
    s.notify_running("T1", "B1", t(1));
    assert!(s.take_events().is_empty());
    s.mark_idle("B1", &strs(&["label1"]), t(2));
    assert_eq!(
        summary(&s.take_events()),
        vec![ev("SWARMING_COMPLETED", "T1", Some("B1"))]
    );
    assert_eq!(pass(&mut s), vec![]);
}

fn a2_provisioning<S: Sched>() {
    let r = req("T", "", &["pool:p", "os:x"], &["fw:2"], t(0));
    let mut s = S::new(t(0));
    s.mark_idle("b1", &strs(&["pool:p", "os:x", "fw:1"]), t(0));
    s.mark_idle("b2", &strs(&["pool:p", "os:x", "fw:2"]), t(0));
    s.add_request(&r, t(0), &[]);
    let out = s.run_once();
    assert_eq!(out.len(), 1);
    assert_eq!(
        (&*out[0].worker_id, out[0].provision_required),
        ("b2", false)
    );
    let mut s = S::new(t(0));
    s.mark_idle("b1", &strs(&["pool:p", "os:x", "fw:1"]), t(0));
    s.add_request(&r, t(0), &[]);
    s.take_events();
    let out = s.run_once();
    assert_eq!(
        (&*out[0].worker_id, out[0].provision_required),
        ("b1", true)
    );
    assert!(matches!(
        s.take_events()[0].kind,
        EventKind::Assigned {
            provision_required: true,
            ..
        }
    ));
}

fn a3_quota<S: Sched>() {
    let mut s = S::new(t(0));
    s.add_account("A", cfg(&[1.0], 3600.0), bal([10.0, 0.0, 0.0, 0.0, 0.0]));
    for i in 1..=3 {
        s.mark_idle(&format!("w{i}"), &[], t(0));
        add(&mut s, &format!("r{i}"), "A", &[], t(0));
    }
    assert_eq!(
        pass(&mut s),
        vec![
            idle("w1", "r1", 0),
            idle("w2", "r2", 0),
            idle("w3", "r3", 0)
        ]
    );
    s.update_time(t(10));
    assert_eq!(balance(&s, "A"), bal([-10.0, 0.0, 0.0, 0.0, 0.0]));
    s.mark_idle("w4", &[], t(10));
    add(&mut s, "r4", "A", &[], t(10));
    s.take_events();
    assert_eq!(pass(&mut s), vec![idle("w4", "r4", FREE_PRIORITY)]);
    assert_eq!(s.take_events().len(), 1, "no demotion above -600");
    s.update_time(t(310));
    assert_eq!(balance(&s, "A"), bal([-610.0, 0.0, 0.0, 0.0, 0.0]));
    // Three tasks at a rate of one: ceil(2) demotions, cheapest first, ties
    // by worker id.
    assert_eq!(pass(&mut s), vec![]);
    let events = s.take_events();
    assert_eq!(
        summary(&events),
        vec![
            ev("QSCHEDULER_REPRIORITIZED", "r1", Some("w1")),
            ev("QSCHEDULER_REPRIORITIZED", "r2", Some("w2"))
        ]
    );
    let cost = Balance([310.0, 0.0, 0.0, 0.0, 0.0]);
    assert_eq!(
        running(&s),
        vec![
            ("w1".into(), "r1".into(), 1, cost),
            ("w2".into(), "r2".into(), 1, cost),
            ("w3".into(), "r3".into(), 0, cost),
            ("w4".into(), "r4".into(), FREE_PRIORITY, ZERO)
        ]
    );
}

// ------------------------------------------------------------ DECISIONS 1-4

fn fifo_tie_break<S: Sched>() {
    let mut s = S::new(t(0));
    add(&mut s, "r-b", "", &[], t(0));
    add(&mut s, "r-a", "", &[], t(1));
    add(&mut s, "r-c", "", &[], t(0));
    s.update_time(t(2));
    assert_eq!(pass(&mut s), vec![]);
    add(&mut s, "r-new", "", &[], t(3));
    s.mark_idle("w1", &[], t(3));
    s.mark_idle("w2", &[], t(3));
    s.mark_idle("w3", &[], t(3));
    s.update_time(t(4));
    // Never examined comes first; then enqueue time; then id.
    assert_eq!(
        pass(&mut s),
        vec![
            idle("w1", "r-new", FREE_PRIORITY),
            idle("w2", "r-b", FREE_PRIORITY),
            idle("w3", "r-c", FREE_PRIORITY)
        ]
    );
    assert_eq!(queued(&s), vec!["r-a"]);
}

fn one_preemption_per_worker<S: Sched>() {
    let none = cfg(&[], 0.0);
    let mut s = S::new(t(0));
    s.mark_idle("w1", &[], t(0));
    add(&mut s, "r0", "", &[], t(0));
    assert_eq!(pass(&mut s), vec![idle("w1", "r0", FREE_PRIORITY)]);
    s.add_account("a2", none.clone(), bal([5.0, 0.0, 0.0, 0.0, 0.0]));
    s.add_account("a3", none, bal([10.0, 0.0, 0.0, 0.0, 0.0]));
    add(&mut s, "ra2", "a2", &[], t(0));
    add(&mut s, "ra3", "a3", &[], t(0));
    assert_eq!(pass(&mut s), vec![preempt("w1", "ra2", 0, "r0")]);
    assert_eq!(queued(&s), vec!["ra3"]);
    assert_eq!(balance(&s, "a2"), bal([5.0, 0.0, 0.0, 0.0, 0.0]));
}

fn preemption_ignores_examined_time<S: Sched>() {
    let mut s = S::new(t(0));
    s.mark_idle("w1", &[], t(0));
    add(&mut s, "r0", "", &[], t(0));
    assert_eq!(pass(&mut s), vec![idle("w1", "r0", FREE_PRIORITY)]);
    s.update_time(t(10));
    s.add_account("a2", cfg(&[], 0.0), None);
    add(&mut s, "r1", "a2", &[], t(10));
    assert_eq!(pass(&mut s), vec![]);
    assert_eq!(examined(&s, "r1"), t(10));
    // Examined after w1 last changed, yet it may preempt once it can pay.
    s.add_account("a2", cfg(&[], 0.0), bal([1.0, 0.0, 0.0, 0.0, 0.0]));
    assert_eq!(pass(&mut s), vec![preempt("w1", "r1", 0, "r0")]);
}

fn disabled_preemption<S: Sched>() {
    let mut s = S::new(t(0));
    s.set_settings(PoolSettings {
        disable_preemption: true,
        bot_expiration_nanos: 0,
    });
    s.mark_idle("w1", &[], t(0));
    add(&mut s, "r0", "", &[], t(0));
    assert_eq!(pass(&mut s), vec![idle("w1", "r0", FREE_PRIORITY)]);
    s.add_account("a2", cfg(&[], 0.0), bal([1.0, 0.0, 0.0, 0.0, 0.0]));
    add(&mut s, "r1", "a2", &[], t(0));
    assert_eq!(pass(&mut s), vec![]);
}

// -------------------------------------------------------- bot expiration

fn bot_expiration<S: Sched>() {
    // Default (0 means 300 s), strictly greater; running bots stay.
    let mut s = S::new(t(0));
    s.mark_idle("w1", &[], t(0));
    s.mark_idle("w2", &strs(&["x"]), t(0));
    add(&mut s, "r", "", &["x"], t(0));
    assert_eq!(pass(&mut s).len(), 1);
    s.update_time(t(300));
    assert_eq!(workers(&s), strs(&["w1", "w2"]));
    s.update_time(t(300).add_nanos(1));
    assert_eq!(workers(&s), vec!["w2"]);

    let mut s = S::new(t(0));
    s.set_settings(PoolSettings {
        disable_preemption: false,
        bot_expiration_nanos: 10 * NANOS_PER_SEC,
    });
    s.mark_idle("w1", &[], t(0));
    s.update_time(t(10));
    assert_eq!(workers(&s), vec!["w1"]);
    s.update_time(t(11));
    assert!(workers(&s).is_empty());

    // Negative: gone at the next update, unless confirmed after it.
    let mut s = S::new(t(0));
    s.set_settings(PoolSettings {
        disable_preemption: false,
        bot_expiration_nanos: -1,
    });
    s.mark_idle("w1", &[], t(0));
    s.mark_idle("w2", &[], t(5));
    s.update_time(t(0));
    assert_eq!(workers(&s), vec!["w2"]);
    assert!(s.take_events().is_empty());
}

macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod optimized {
            $(
                #[test]
                fn $name() {
                    super::$name::<crate::Scheduler>();
                }
            )*
        }
        mod model {
            $(
                #[test]
                fn $name() {
                    super::$name::<crate::model::Model>();
                }
            )*
        }
    };
}

both!(
    recharge_from_zero_and_cap,
    recharge_with_tasks_at_several_levels,
    update_time_backwards_changes_nothing,
    rare_worker_gets_rare_request,
    examined_time_limits_idle_matching,
    preempts_the_cheaper_task,
    no_preemption_without_balance,
    own_account_cannot_preempt,
    preemption_refunds_and_charges,
    demotes_the_cheaper_task,
    promotes_the_costlier_task,
    waiting_notifications,
    idle_notifications,
    running_notifications,
    absent_notifications,
    unassign_requeues,
    unassign_drops_requests_older_than_46_hours,
    account_api,
    deleted_account_keeps_its_tasks,
    fanout_example,
    fanout_without_free_tasks,
    per_label_limit,
    a1_basic_assignment,
    a2_provisioning,
    a3_quota,
    fifo_tie_break,
    one_preemption_per_worker,
    preemption_ignores_examined_time,
    disabled_preemption,
    bot_expiration,
);
