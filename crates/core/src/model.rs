//! A naive reference model of the quotascheduler.
//!
//! [`crate::scheduler::Scheduler`] is built for a million queued requests:
//! it keeps an incremental index (buckets, containers, per-level cells,
//! "settled" examined times, per-worker eligibility lists) whose
//! correctness is anything but obvious. This module states the same rules
//! (the crate documentation, reference §6 and the project's deliberate
//! differences) in the most direct way we could write them: plain ordered
//! maps, a full scan of the queue for every decision and an explicit sort
//! wherever an order matters. It is meant to be read next to the rules and
//! checked line by line, not to be fast.
//!
//! The test suite runs the worked examples against both implementations and
//! drives both with random operation sequences, comparing assignments,
//! events and the full state after every step. Any difference is a bug in
//! one of them; the rules decide which.
//!
//! The public API mirrors the scheduler's so that the tests (and anyone
//! wanting an executable statement of the rules, via the `model` feature)
//! can use either.

// The model is a test oracle: a broken expectation in it is a failed test.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::account::{
    AccountConfig, Balance, DEMOTE_THRESHOLD, FREE_PRIORITY, NUM_PRIORITIES, PROMOTE_THRESHOLD,
    PoolSettings,
};
use crate::event::{Assignment, AssignmentKind, CompletedReason, Event, EventKind, Labels};
use crate::scheduler::{NewRequest, NotAssigned, RequestDump, StateDump, WorkerDump};
use crate::time::{MAX_QUEUEING_AGE_NANOS, NANOS_PER_SEC, Time};

type LabelSet = BTreeSet<String>;

/// A request, queued or running.
#[derive(Clone, Debug)]
struct Req {
    id: String,
    account: String,
    base: LabelSet,
    prov: LabelSet,
    enqueue: Time,
    confirmed: Time,
    examined: Time,
}

/// A running task.
#[derive(Clone, Debug)]
struct Run {
    req: Req,
    priority: u8,
    cost: Balance,
}

#[derive(Clone, Debug)]
struct Wrk {
    id: String,
    labels: LabelSet,
    confirmed: Time,
    modified: Time,
    running: Option<Run>,
}

impl Wrk {
    /// Reference §6.2 `latest_confirmed_time`.
    fn latest_confirmed(&self) -> Time {
        match &self.running {
            Some(run) => self.confirmed.max(run.req.confirmed),
            None => self.confirmed,
        }
    }

    fn confirm(&mut self, t: Time) {
        self.confirmed = self.confirmed.max(t);
    }
}

/// A fanout group: the account and the union of base and provisionable
/// labels (exact, no hashing).
type GroupKey = (String, LabelSet);

fn group_of(r: &Req) -> GroupKey {
    (r.account.clone(), r.base.union(&r.prov).cloned().collect())
}

fn set_of(labels: &[String]) -> LabelSet {
    labels.iter().cloned().collect()
}

fn labels_of(set: &LabelSet) -> Labels {
    set.iter()
        .map(|l| Arc::from(l.as_str()))
        .collect::<Vec<_>>()
        .into()
}

/// The worker's label for a per-label limit key: its smallest label that
/// starts with the key.
fn label_for_key<'a>(worker: &'a LabelSet, key: &str) -> Option<&'a String> {
    worker.iter().find(|l| l.starts_with(key))
}

/// The order of candidate requests for one worker: more base labels first,
/// then the order within a level (examined, enqueue, id).
fn rank(a: &Req, b: &Req) -> Ordering {
    b.base
        .len()
        .cmp(&a.base.len())
        .then(a.examined.cmp(&b.examined))
        .then(a.enqueue.cmp(&b.enqueue))
        .then(a.id.cmp(&b.id))
}

/// `min(len, ceil(x))` for a positive count given as `f32`.
fn ceil_count(x: f32, len: usize) -> usize {
    (x.ceil() as usize).min(len)
}

// ------------------------------------------------------------ arithmetic
//
// The model states the balance arithmetic itself, from the rules
// (reference §6.1, §6.4, §6.8), instead of calling the methods of
// `Balance`, `AccountConfig` and `PoolSettings` that the scheduler uses: a
// bug there would otherwise show up on both sides and go unnoticed.

/// Reference §6.4: `elapsed` seconds, from the scheduler's clock, as `f32`
/// (whole seconds and the fraction added in `f64`, then narrowed once).
fn elapsed_secs(later: Time, earlier: Time) -> f32 {
    let nanos = later.nanos_since(earlier);
    let whole = nanos.div_euclid(NANOS_PER_SEC);
    let frac = nanos.rem_euclid(NANOS_PER_SEC);
    (whole as f64 + frac as f64 / 1e9) as f32
}

/// Reference §6.4 step 4 for one account, level by level, in `f32` and in
/// the order written there: spend, then recharge up to the cap unless the
/// balance is already at or above it.
fn recharge(
    config: &AccountConfig,
    balance: &mut Balance,
    elapsed: f32,
    running: &[u32; NUM_PRIORITIES],
) {
    for (p, &tasks) in running.iter().enumerate() {
        let cap = config.charge_rate[p] * config.max_charge_seconds;
        let spent = balance.0[p] - elapsed * tasks as f32;
        balance.0[p] = if spent < cap {
            (spent + elapsed * config.charge_rate[p]).min(cap)
        } else {
            spent
        };
    }
}

/// Reference §6.4 `BestPriorityFor`: the first level with a strictly
/// positive balance, else the free level.
fn best_priority(b: &Balance) -> u8 {
    let mut p = 0;
    while p < NUM_PRIORITIES && b.0[p] <= 0.0 {
        p += 1;
    }
    p as u8
}

/// Reference §6.8: `a` lexicographically below `b`, P0 first; the first
/// level where they differ decides; equal vectors are not below.
fn lex_below(a: &Balance, b: &Balance) -> bool {
    let mut p = 0;
    while p < NUM_PRIORITIES && a.0[p] == b.0[p] {
        p += 1;
    }
    p < NUM_PRIORITIES && a.0[p] < b.0[p]
}

/// The order of [`lex_below`].
fn lex_order(a: &Balance, b: &Balance) -> Ordering {
    match (lex_below(a, b), lex_below(b, a)) {
        (true, _) => Ordering::Less,
        (_, true) => Ordering::Greater,
        _ => Ordering::Equal,
    }
}

/// Level by level `to + what` (a refund, reference §6.8).
fn plus(to: &Balance, what: &Balance) -> Balance {
    let mut out = Balance::ZERO;
    for p in 0..NUM_PRIORITIES {
        out.0[p] = to.0[p] + what.0[p];
    }
    out
}

/// Level by level `to - what` (a charge, reference §6.8).
fn minus(to: &Balance, what: &Balance) -> Balance {
    let mut out = Balance::ZERO;
    for p in 0..NUM_PRIORITIES {
        out.0[p] = to.0[p] - what.0[p];
    }
    out
}

/// Reference §6.2 and §6.4 step 6: the idle-bot expiry, 300 s when unset.
fn bot_expiry(settings: &PoolSettings) -> i64 {
    match settings.bot_expiration_nanos {
        0 => 300 * NANOS_PER_SEC,
        n => n,
    }
}

/// How often the rules that are easy to miss came into play, so that a
/// test can demand that generated sequences reach them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Coverage {
    /// Tasks started by preempting another.
    pub preemptions: u64,
    /// Requests put in the free level or left out because their fanout
    /// group was full (at the start of a pass or during it).
    pub fanout_throttled: u64,
    /// Matches refused because of a per-label task limit.
    pub label_limited: u64,
    /// Running tasks moved to a better level.
    pub promotions: u64,
    /// Running tasks moved to a worse level.
    pub demotions: u64,
    /// Idle bots forgotten after their expiry.
    pub bots_expired: u64,
}

/// The reference model. See the module documentation.
#[derive(Clone, Debug)]
pub struct Model {
    settings: PoolSettings,
    now: Time,
    /// Configured accounts only: an account has a balance iff it has a
    /// configuration.
    accounts: BTreeMap<String, (AccountConfig, Balance)>,
    queued: BTreeMap<String, Req>,
    workers: BTreeMap<String, Wrk>,
    events: Vec<Event>,
    /// Rules reached so far (a cell, so that checks can count too).
    coverage: std::cell::Cell<Coverage>,
}

/// Bookkeeping that lives for one pass.
struct Pass {
    /// The level list each queued request is in during this pass; a request
    /// without an entry is not in the pass (free level with free tasks
    /// disabled) and keeps its examined time.
    level: BTreeMap<String, u8>,
    /// Workers idle at the start of the pass and not yet given a task.
    idle: BTreeSet<String>,
    /// Running tasks per fanout group at the start of the pass.
    fanout_start: BTreeMap<GroupKey, u32>,
    /// Assignments at paid levels per fanout group during the pass.
    fanout_assigned: BTreeMap<GroupKey, u32>,
    /// (account, worker label) → tasks, for per-label limits.
    label_counts: BTreeMap<(String, String), u32>,
    /// Workers preempted in this pass.
    preempted: BTreeSet<String>,
    out: Vec<Assignment>,
}

impl Model {
    /// An empty model whose clock reads `now`.
    pub fn new(now: Time) -> Model {
        Model {
            settings: PoolSettings::default(),
            now,
            accounts: BTreeMap::new(),
            queued: BTreeMap::new(),
            workers: BTreeMap::new(),
            events: Vec::new(),
            coverage: std::cell::Cell::default(),
        }
    }

    /// The rules reached so far.
    pub fn coverage(&self) -> Coverage {
        self.coverage.get()
    }

    fn note(&self, f: impl FnOnce(&mut Coverage)) {
        let mut c = self.coverage.get();
        f(&mut c);
        self.coverage.set(c);
    }

    /// The clock.
    pub fn now(&self) -> Time {
        self.now
    }

    /// Replaces the pool settings.
    pub fn set_settings(&mut self, settings: PoolSettings) {
        self.settings = settings;
    }

    /// Events since the last call.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    // ------------------------------------------------------------ accounts

    /// Reference §6.12 `AddAccount`: overwrites the config and the balance.
    pub fn add_account(
        &mut self,
        id: &str,
        config: AccountConfig,
        initial_balance: Option<Balance>,
    ) {
        self.accounts.insert(
            id.to_owned(),
            (config, initial_balance.unwrap_or(Balance::ZERO)),
        );
    }

    /// Replaces the config of a configured account, keeping its balance.
    pub fn update_account_config(&mut self, id: &str, config: AccountConfig) -> bool {
        match self.accounts.get_mut(id) {
            Some(entry) => {
                entry.0 = config;
                true
            }
            None => false,
        }
    }

    /// Reference §6.12 `DeleteAccount`: config and balance go, tasks stay.
    pub fn delete_account(&mut self, id: &str) {
        self.accounts.remove(id);
    }

    /// Reference §6.12 `ResetBalance`.
    pub fn reset_balance(&mut self, id: &str) {
        if let Some(entry) = self.accounts.get_mut(id) {
            entry.1 = Balance::ZERO;
        }
    }

    /// The balance of a configured account.
    pub fn balance(&self, id: &str) -> Option<Balance> {
        self.accounts.get(id).map(|e| e.1)
    }

    /// The balance used in comparisons: zero for unconfigured accounts.
    fn balance_or_zero(&self, account: &str) -> Balance {
        self.balance(account).unwrap_or(Balance::ZERO)
    }

    // ---------------------------------------------------------------- time

    /// Reference §6.4.
    pub fn update_time(&mut self, t: Time) {
        if t < self.now {
            return;
        }
        let elapsed = elapsed_secs(t, self.now);
        let mut running: BTreeMap<String, [u32; NUM_PRIORITIES]> = BTreeMap::new();
        for w in self.workers.values_mut() {
            if let Some(run) = &mut w.running {
                let p = run.priority as usize;
                if p < NUM_PRIORITIES {
                    run.cost.0[p] += elapsed;
                    running.entry(run.req.account.clone()).or_default()[p] += 1;
                }
            }
        }
        for (id, (config, balance)) in self.accounts.iter_mut() {
            let counts = running.get(id).copied().unwrap_or_default();
            recharge(config, balance, elapsed, &counts);
        }
        self.now = t;
        let expiry = bot_expiry(&self.settings);
        let now = self.now;
        let before = self.workers.len();
        self.workers
            .retain(|_, w| w.running.is_some() || now.nanos_since(w.latest_confirmed()) <= expiry);
        let expired = (before - self.workers.len()) as u64;
        self.note(|c| c.bots_expired += expired);
    }

    // ------------------------------------------------------- notifications

    /// Where a request is running, if it is.
    fn running_worker_of(&self, request: &str) -> Option<String> {
        self.workers
            .values()
            .find(|w| w.running.as_ref().is_some_and(|r| r.req.id == request))
            .map(|w| w.id.clone())
    }

    fn event(
        &self,
        kind: EventKind,
        req: &Req,
        time: Time,
        worker: Option<&Wrk>,
        cost: Option<Balance>,
    ) -> Event {
        let balance = self.balance(&req.account);
        Event {
            kind,
            task_id: Arc::from(req.id.as_str()),
            time,
            base_labels: labels_of(&req.base),
            provisionable_labels: labels_of(&req.prov),
            account_id: Arc::from(req.account.as_str()),
            account_valid: balance.is_some(),
            account_balance: balance.unwrap_or(Balance::ZERO),
            cost,
            bot_id: worker.map(|w| Arc::from(w.id.as_str())),
            bot_dimensions: worker
                .map_or_else(|| labels_of(&LabelSet::new()), |w| labels_of(&w.labels)),
        }
    }

    fn completed(reason: CompletedReason) -> EventKind {
        EventKind::Completed {
            reason,
            other_task: None,
            other_bot: None,
        }
    }

    /// Reference §6.10, waiting notification.
    pub fn add_request(&mut self, new: &NewRequest, t: Time, tags: &[String]) {
        if let Some(r) = self.queued.get_mut(&new.id) {
            r.confirmed = r.confirmed.max(t);
            return;
        }
        if let Some(w) = self.running_worker_of(&new.id) {
            let worker = &self.workers[&w];
            let run = worker.running.as_ref().expect("running");
            if t >= run.req.confirmed && t >= worker.confirmed {
                // The bot and its task are forgotten without an event; the
                // request comes back as new.
                self.workers.remove(&w);
            } else {
                return;
            }
        }
        let req = Req {
            id: new.id.clone(),
            account: new.account.clone(),
            base: set_of(&new.base_labels),
            prov: set_of(&new.provisionable_labels),
            enqueue: new.enqueue_time,
            confirmed: t,
            examined: Time::EPOCH,
        };
        let ev = self.event(
            EventKind::Enqueued { tags: tags.into() },
            &req,
            t,
            None,
            None,
        );
        self.events.push(ev);
        self.queued.insert(req.id.clone(), req);
    }

    /// Reference §6.10, `MarkIdle`.
    pub fn mark_idle(&mut self, worker: &str, labels: &[String], t: Time) {
        let now = self.now;
        let labels = set_of(labels);
        let Some(w) = self.workers.get_mut(worker) else {
            self.workers.insert(
                worker.to_owned(),
                Wrk {
                    id: worker.to_owned(),
                    labels,
                    confirmed: t,
                    modified: now,
                    running: None,
                },
            );
            return;
        };
        if t < w.latest_confirmed() {
            return;
        }
        if w.labels != labels {
            w.labels = labels;
            w.modified = now;
        }
        w.confirm(t);
        if w.running.is_some() {
            w.modified = now;
            let w = w.clone();
            let run = w.running.as_ref().expect("running");
            let ev = self.event(
                Self::completed(CompletedReason::BotIdle),
                &run.req,
                t,
                Some(&w),
                Some(run.cost),
            );
            self.events.push(ev);
            self.workers.get_mut(worker).expect("known").running = None;
        }
    }

    /// Reference §6.10, `NotifyTaskRunning`.
    pub fn notify_running(&mut self, request: &str, worker: &str, t: Time) {
        let running_on = self.running_worker_of(request);
        let confirmed = match (&running_on, self.queued.get(request)) {
            (Some(w), _) => Some(
                self.workers[w]
                    .running
                    .as_ref()
                    .expect("running")
                    .req
                    .confirmed,
            ),
            (None, Some(r)) => Some(r.confirmed),
            (None, None) => None,
        };
        if let Some(confirmed) = confirmed {
            if t < confirmed {
                return;
            }
            if let Some(w_now) = running_on {
                if w_now == worker {
                    let w = self.workers.get_mut(&w_now).expect("known");
                    w.confirm(t);
                    let run = w.running.as_mut().expect("running");
                    run.req.confirmed = run.req.confirmed.max(t);
                    return;
                }
                let w = self.workers.remove(&w_now).expect("known");
                let run = w.running.as_ref().expect("running");
                let ev = self.event(
                    EventKind::Completed {
                        reason: CompletedReason::InconsistentBotForTask,
                        other_task: None,
                        other_bot: Some(Arc::from(worker)),
                    },
                    &run.req,
                    t,
                    Some(&w),
                    Some(run.cost),
                );
                self.events.push(ev);
            }
        }
        // "Delete the worker if older": the bot is busy with `request`, so
        // whatever the scheduler believed about it is stale.
        let Some(w) = self.workers.get(worker) else {
            return;
        };
        if t < w.latest_confirmed() {
            return;
        }
        let w = self.workers.remove(worker).expect("known");
        if let Some(run) = &w.running {
            let ev = self.event(
                EventKind::Completed {
                    reason: CompletedReason::InconsistentTaskForBot,
                    other_task: Some(Arc::from(request)),
                    other_bot: None,
                },
                &run.req,
                t,
                Some(&w),
                Some(run.cost),
            );
            self.events.push(ev);
        }
    }

    /// Reference §6.10, `NotifyTaskAbsent`.
    pub fn notify_absent(&mut self, request: &str, t: Time) {
        if let Some(w) = self.running_worker_of(request) {
            let worker = &self.workers[&w];
            let run = worker.running.as_ref().expect("running");
            if t >= worker.confirmed && t >= run.req.confirmed {
                let ev = self.event(
                    Self::completed(CompletedReason::RunningTaskAbsent),
                    &run.req,
                    t,
                    Some(worker),
                    Some(run.cost),
                );
                self.events.push(ev);
                self.workers.remove(&w);
            }
        } else if let Some(r) = self.queued.get(request)
            && t >= r.confirmed
        {
            let ev = self.event(
                Self::completed(CompletedReason::IdleTaskAbsent),
                r,
                t,
                None,
                None,
            );
            self.events.push(ev);
            self.queued.remove(request);
        }
    }

    /// Reference §6.11 with the 46-hour rule on scheduler time.
    pub fn unassign(&mut self, request: &str, worker: &str, t: Time) -> Result<(), NotAssigned> {
        if !self.is_assigned(request, worker) {
            return Err(NotAssigned {
                request: request.to_owned(),
                worker: worker.to_owned(),
            });
        }
        let w = self.workers.remove(worker).expect("known");
        let run = w.running.clone().expect("running");
        let ev = self.event(EventKind::Unassigned, &run.req, t, Some(&w), Some(run.cost));
        self.events.push(ev);
        let now = self.now.max(t);
        if now.nanos_since(run.req.enqueue) <= MAX_QUEUEING_AGE_NANOS {
            self.queued.insert(run.req.id.clone(), run.req);
        }
        Ok(())
    }

    /// The provisionable labels of a queued or running request.
    pub fn provisionable_of(&self, request: &str) -> Option<BTreeSet<String>> {
        if let Some(r) = self.queued.get(request) {
            return Some(r.prov.clone());
        }
        self.workers
            .values()
            .filter_map(|w| w.running.as_ref())
            .find(|run| run.req.id == request)
            .map(|run| run.req.prov.clone())
    }

    /// True iff `worker` runs `request`.
    pub fn is_assigned(&self, request: &str, worker: &str) -> bool {
        self.workers
            .get(worker)
            .and_then(|w| w.running.as_ref())
            .is_some_and(|run| run.req.id == request)
    }

    // ---------------------------------------------------------------- pass

    fn max_fanout(&self, account: &str) -> u32 {
        self.accounts
            .get(account)
            .map_or(0, |(c, _)| c.max_fanout.max(0) as u32)
    }

    fn free_disabled(&self, account: &str) -> bool {
        self.accounts
            .get(account)
            .is_some_and(|(c, _)| c.disable_free_tasks)
    }

    fn running_in_group(&self, g: &GroupKey) -> u32 {
        self.workers
            .values()
            .filter_map(|w| w.running.as_ref())
            .filter(|run| group_of(&run.req) == *g)
            .count() as u32
    }

    fn start_pass(&self) -> Pass {
        let mut pass = Pass {
            level: BTreeMap::new(),
            idle: self
                .workers
                .values()
                .filter(|w| w.running.is_none())
                .map(|w| w.id.clone())
                .collect(),
            fanout_start: BTreeMap::new(),
            fanout_assigned: BTreeMap::new(),
            label_counts: BTreeMap::new(),
            preempted: BTreeSet::new(),
            out: Vec::new(),
        };
        for r in self.queued.values() {
            let g = group_of(r);
            let running = self.running_in_group(&g);
            pass.fanout_start.insert(g, running);
            let max = self.max_fanout(&r.account);
            let throttled = max > 0 && running >= max;
            if throttled {
                self.note(|c| c.fanout_throttled += 1);
            }
            let level = if throttled {
                FREE_PRIORITY
            } else {
                best_priority(&self.balance_or_zero(&r.account))
            };
            if level == FREE_PRIORITY && self.free_disabled(&r.account) {
                continue;
            }
            pass.level.insert(r.id.clone(), level);
        }
        for w in self.workers.values() {
            if let Some(run) = &w.running {
                self.count_labels(&mut pass, &run.req.account, w);
            }
        }
        pass
    }

    /// Adds one task of `account` on worker `w` to the per-label counts.
    fn count_labels(&self, pass: &mut Pass, account: &str, w: &Wrk) {
        let Some((config, _)) = self.accounts.get(account) else {
            return;
        };
        for key in config.per_label_task_limits.keys() {
            if let Some(label) = label_for_key(&w.labels, key) {
                *pass
                    .label_counts
                    .entry((account.to_owned(), label.clone()))
                    .or_default() += 1;
            }
        }
    }

    fn label_blocked(&self, pass: &Pass, account: &str, w: &Wrk) -> bool {
        let Some((config, _)) = self.accounts.get(account) else {
            return false;
        };
        let blocked = config.per_label_task_limits.iter().any(|(key, &limit)| {
            label_for_key(&w.labels, key).is_some_and(|label| {
                let n = pass
                    .label_counts
                    .get(&(account.to_owned(), label.clone()))
                    .copied()
                    .unwrap_or(0);
                i64::from(n) >= i64::from(limit)
            })
        });
        if blocked {
            self.note(|c| c.label_limited += 1);
        }
        blocked
    }

    /// Counts an assignment at level `p` against the request's fanout group;
    /// a group that reaches its limit leaves its level at once.
    fn count_fanout(&self, pass: &mut Pass, req: &Req, p: u8) {
        let max = self.max_fanout(&req.account);
        if max == 0 || p >= FREE_PRIORITY {
            return;
        }
        let g = group_of(req);
        let assigned = pass.fanout_assigned.entry(g.clone()).or_default();
        *assigned += 1;
        let total = pass.fanout_start.get(&g).copied().unwrap_or(0) + *assigned;
        if total < max {
            return;
        }
        let free_disabled = self.free_disabled(&req.account);
        for r in self.queued.values().filter(|r| group_of(r) == g) {
            if pass.level.get(&r.id).is_some_and(|&l| l < FREE_PRIORITY) {
                self.note(|c| c.fanout_throttled += 1);
            }
            if free_disabled {
                pass.level.remove(&r.id);
            } else if pass.level.contains_key(&r.id) {
                pass.level.insert(r.id.clone(), FREE_PRIORITY);
            }
        }
    }

    /// Steps 1 (`require_provision`) and 2 at level `p`.
    fn assign_idle(&mut self, pass: &mut Pass, p: u8, require_provision: bool) {
        let idle: Vec<String> = pass.idle.iter().cloned().collect();
        for wid in idle {
            let w = &self.workers[&wid];
            let best = self
                .queued
                .values()
                .filter(|r| pass.level.get(&r.id) == Some(&p))
                .filter(|r| r.examined <= w.modified)
                .filter(|r| r.base.is_subset(&w.labels))
                .filter(|r| !require_provision || r.prov.is_subset(&w.labels))
                .filter(|r| !self.label_blocked(pass, &r.account, w))
                .min_by(|a, b| rank(a, b))
                .cloned();
            let Some(req) = best else { continue };
            let provision_required = !req.prov.is_subset(&w.labels);
            self.queued.remove(&req.id);
            pass.idle.remove(&wid);
            let w = self.workers[&wid].clone();
            self.count_fanout(pass, &req, p);
            self.count_labels(pass, &req.account, &w);
            let ev = self.event(
                EventKind::Assigned {
                    provision_required,
                    priority: p,
                    preempting: false,
                    preemption_cost: None,
                    preempted_task_id: None,
                },
                &req,
                self.now,
                Some(&w),
                Some(Balance::ZERO),
            );
            self.events.push(ev);
            pass.out.push(Assignment {
                kind: AssignmentKind::Idle,
                worker_id: Arc::from(wid.as_str()),
                request_id: Arc::from(req.id.as_str()),
                priority: p,
                time: self.now,
                provision_required,
            });
            self.workers.get_mut(&wid).expect("known").running = Some(Run {
                req,
                priority: p,
                cost: Balance::ZERO,
            });
        }
    }

    /// The account's running tasks as (worker id, priority, cost).
    fn tasks_of(&self, account: &str) -> Vec<(String, u8, Balance)> {
        self.workers
            .values()
            .filter_map(|w| {
                let run = w.running.as_ref()?;
                (run.req.account == account).then(|| (w.id.clone(), run.priority, run.cost))
            })
            .collect()
    }

    fn set_priority(&mut self, wid: &str, new: u8) {
        let w = self.workers[wid].clone();
        let run = w.running.as_ref().expect("running");
        let ev = self.event(
            EventKind::Reprioritized {
                old_priority: run.priority,
                new_priority: new,
            },
            &run.req,
            self.now,
            Some(&w),
            Some(run.cost),
        );
        self.events.push(ev);
        let run = self.workers.get_mut(wid).expect("known").running.as_mut();
        run.expect("running").priority = new;
    }

    /// Step 3 at level `p` (reference §6.9, promotion event per DECISIONS 4).
    fn reprioritize(&mut self, p: u8) {
        let pi = p as usize;
        let accounts: Vec<String> = self.accounts.keys().cloned().collect();
        for a in accounts {
            let (config, balance) = &self.accounts[&a];
            let b = balance.0[pi];
            let tasks = self.tasks_of(&a);
            let at_p = tasks.iter().filter(|t| t.1 == p).count();
            let net = config.charge_rate[pi] - at_p as f32;
            if b < DEMOTE_THRESHOLD && net < 0.0 {
                let mut at: Vec<_> = tasks.into_iter().filter(|t| t.1 == p).collect();
                at.sort_by(|x, y| lex_order(&x.2, &y.2).then(x.0.cmp(&y.0)));
                let n = ceil_count(-net, at.len());
                for (w, _, _) in &at[..n] {
                    self.set_priority(w, p + 1);
                }
                self.note(|c| c.demotions += n as u64);
            } else if b > PROMOTE_THRESHOLD && net > 0.0 {
                let mut below: Vec<_> = tasks.into_iter().filter(|t| t.1 > p).collect();
                below.sort_by(|x, y| lex_order(&y.2, &x.2).then(x.0.cmp(&y.0)));
                let n = ceil_count(net, below.len());
                for (w, _, _) in &below[..n] {
                    self.set_priority(w, p);
                }
                self.note(|c| c.promotions += n as u64);
            }
        }
    }

    /// Step 4 at level `p` (reference §6.8 with DECISIONS 2 and 3).
    fn preempt(&mut self, pass: &mut Pass, p: u8) {
        let mut candidates: Vec<(String, Balance)> = self
            .workers
            .values()
            .filter_map(|w| {
                let run = w.running.as_ref()?;
                (run.priority > p).then(|| (w.id.clone(), run.cost))
            })
            .collect();
        candidates.sort_by(|x, y| lex_order(&x.1, &y.1).then(x.0.cmp(&y.0)));
        let banned: BTreeSet<String> = candidates
            .iter()
            .map(|(w, _)| {
                self.workers[w]
                    .running
                    .as_ref()
                    .expect("running")
                    .req
                    .account
                    .clone()
            })
            .collect();
        for (wid, _) in candidates {
            if pass.preempted.contains(&wid) {
                continue;
            }
            let w = &self.workers[&wid];
            let old = w.running.clone().expect("running");
            let best = self
                .queued
                .values()
                .filter(|r| pass.level.get(&r.id) == Some(&p))
                .filter(|r| r.base.is_subset(&w.labels))
                .filter(|r| !banned.contains(&r.account))
                .filter(|r| lex_below(&old.cost, &self.balance_or_zero(&r.account)))
                .filter(|r| !self.label_blocked(pass, &r.account, w))
                .min_by(|a, b| rank(a, b))
                .cloned();
            let Some(req) = best else { continue };
            let w = w.clone();
            let provision_required = !req.prov.is_subset(&w.labels);
            let now = self.now;
            let ev = self.event(
                EventKind::Assigned {
                    provision_required,
                    priority: p,
                    preempting: true,
                    preemption_cost: Some(old.cost),
                    preempted_task_id: Some(Arc::from(old.req.id.as_str())),
                },
                &req,
                now,
                Some(&w),
                Some(old.cost),
            );
            self.events.push(ev);
            let ev = self.event(
                EventKind::Preempted {
                    preempting_account_id: Arc::from(req.account.as_str()),
                    preempting_task_id: Arc::from(req.id.as_str()),
                    priority: old.priority,
                    preempting_priority: p,
                },
                &old.req,
                now,
                Some(&w),
                Some(old.cost),
            );
            self.events.push(ev);
            if let Some((_, b)) = self.accounts.get_mut(&old.req.account) {
                *b = plus(b, &old.cost);
            }
            if let Some((_, b)) = self.accounts.get_mut(&req.account) {
                *b = minus(b, &old.cost);
            }
            self.note(|c| c.preemptions += 1);
            self.queued.remove(&req.id);
            pass.preempted.insert(wid.clone());
            self.count_fanout(pass, &req, p);
            self.count_labels(pass, &req.account, &w);
            pass.out.push(Assignment {
                kind: AssignmentKind::Preempt {
                    task_to_abort: Arc::from(old.req.id.as_str()),
                },
                worker_id: Arc::from(wid.as_str()),
                request_id: Arc::from(req.id.as_str()),
                priority: p,
                time: now,
                provision_required,
            });
            self.workers.get_mut(&wid).expect("known").running = Some(Run {
                req,
                priority: p,
                cost: old.cost,
            });
        }
    }

    /// One scheduling pass at the current time (reference §6.5).
    pub fn run_once(&mut self) -> Vec<Assignment> {
        let mut pass = self.start_pass();
        for p in 0..NUM_PRIORITIES as u8 {
            self.assign_idle(&mut pass, p, true);
            self.assign_idle(&mut pass, p, false);
            self.reprioritize(p);
            if !self.settings.disable_preemption {
                self.preempt(&mut pass, p);
            }
        }
        self.assign_idle(&mut pass, FREE_PRIORITY, true);
        self.assign_idle(&mut pass, FREE_PRIORITY, false);
        let now = self.now;
        for r in self.queued.values_mut() {
            if pass.level.contains_key(&r.id) {
                r.examined = now;
            }
        }
        pass.out
    }

    // ---------------------------------------------------------------- dump

    fn request_dump(r: &Req) -> RequestDump {
        RequestDump {
            id: r.id.clone(),
            account: r.account.clone(),
            base_labels: r.base.iter().cloned().collect(),
            provisionable_labels: r.prov.iter().cloned().collect(),
            enqueue_time: r.enqueue,
            confirmed_time: r.confirmed,
            examined_time: r.examined,
        }
    }

    /// The canonical state, comparable with [`crate::Scheduler::dump`].
    pub fn dump(&self) -> StateDump {
        StateDump {
            now: self.now,
            settings: self.settings.clone(),
            accounts: self
                .accounts
                .iter()
                .map(|(id, (c, b))| (id.clone(), c.clone(), *b))
                .collect(),
            queued: self.queued.values().map(Self::request_dump).collect(),
            workers: self
                .workers
                .values()
                .map(|w| WorkerDump {
                    id: w.id.clone(),
                    labels: w.labels.iter().cloned().collect(),
                    confirmed_time: w.confirmed,
                    modified_time: w.modified,
                    running: w
                        .running
                        .as_ref()
                        .map(|run| (Self::request_dump(&run.req), run.priority, run.cost)),
                })
                .collect(),
        }
    }
}

// ---------------------------------------------------------- reconciler

/// The reconciler's rules (reference §7, with the project's decisions: a
/// preemption handed to a bot that asks is a plain assignment, and news
/// that the aborted task is gone drops only the abort), over [`Model`]:
/// one plain map of pending assignments, scanned in full, and the task
/// errors.
#[derive(Clone, Debug, Default)]
pub struct ModelReconciler {
    /// Bot → (enqueue time, task to assign, task to abort).
    pending: BTreeMap<String, (Time, String, Option<String>)>,
    errors: BTreeMap<String, String>,
    /// Pending assignments withdrawn after the pickup timeout.
    pub timeouts: u64,
}

impl ModelReconciler {
    /// Reference §7.3.
    pub fn assign_tasks(
        &mut self,
        s: &mut Model,
        t: Time,
        bots: &[crate::reconciler::IdleBot],
    ) -> Vec<Option<crate::reconciler::BotAssignment>> {
        // §7.4: every entry at least ten minutes old, oldest first (ties by
        // bot id), is withdrawn.
        let mut stale: Vec<(Time, String)> = self
            .pending
            .iter()
            .filter(|(_, (enq, _, _))| t.nanos_since(*enq) >= 10 * 60 * NANOS_PER_SEC)
            .map(|(bot, (enq, _, _))| (*enq, bot.clone()))
            .collect();
        stale.sort();
        for (_, bot) in stale {
            let (_, task, _) = self.pending.remove(&bot).expect("pending");
            self.timeouts += 1;
            let _ = s.unassign(&task, &bot, t);
        }
        s.update_time(t);
        for bot in bots {
            let consistent = self
                .pending
                .get(&bot.id)
                .is_some_and(|(_, task, _)| s.is_assigned(task, &bot.id));
            if !consistent {
                s.mark_idle(&bot.id, &bot.labels, t);
                self.pending.remove(&bot.id);
            }
        }
        for a in s.run_once() {
            let abort = match a.kind {
                AssignmentKind::Idle => None,
                AssignmentKind::Preempt { task_to_abort } => Some(task_to_abort.to_string()),
            };
            self.pending.insert(
                a.worker_id.to_string(),
                (a.time, a.request_id.to_string(), abort),
            );
        }
        let mut out = Vec::new();
        for bot in bots {
            let Some(entry) = self.pending.get_mut(&bot.id) else {
                out.push(None);
                continue;
            };
            // The bot asks, so it is idle: nothing is left to abort.
            entry.2 = None;
            let task = entry.1.clone();
            let Some(prov) = s.provisionable_of(&task) else {
                out.push(None);
                continue;
            };
            let offered: LabelSet = bot.labels.iter().cloned().collect();
            out.push(Some(crate::reconciler::BotAssignment {
                bot_id: Arc::from(bot.id.as_str()),
                task_id: Arc::from(task.as_str()),
                provision_required: !prov.is_subset(&offered),
            }));
        }
        out
    }

    /// Reference §7.5.
    pub fn notify_running(&mut self, s: &mut Model, request: &str, worker: &str, t: Time) {
        s.notify_running(request, worker, t);
        if self
            .pending
            .get(worker)
            .is_some_and(|(enq, _, _)| t >= *enq)
        {
            self.pending.remove(worker);
        }
    }

    /// Reference §7.6, keeping the preempting task assigned.
    pub fn notify_absent(&mut self, s: &mut Model, request: &str, t: Time) {
        s.notify_absent(request, t);
        for (enq, _, abort) in self.pending.values_mut() {
            if abort.as_deref() == Some(request) && *enq < t {
                *abort = None;
            }
        }
        self.errors.remove(request);
    }

    /// Reference §7.8.
    pub fn add_task_error(&mut self, task: &str, message: String) {
        self.errors.insert(task.to_owned(), message);
    }

    /// Reference §7.8: preemptions by bot, then errors by task.
    pub fn cancellations(&self) -> Vec<crate::reconciler::Cancellation> {
        use crate::reconciler::{CancelReason, Cancellation};
        let mut out = Vec::new();
        for (bot, (_, _, abort)) in &self.pending {
            if let Some(task) = abort {
                out.push(Cancellation {
                    bot_id: Some(Arc::from(bot.as_str())),
                    task_id: Arc::from(task.as_str()),
                    reason: CancelReason::Preempted,
                    extra_info: String::new(),
                });
            }
        }
        for (task, msg) in &self.errors {
            out.push(Cancellation {
                bot_id: None,
                task_id: Arc::from(task.as_str()),
                reason: CancelReason::Error,
                extra_info: msg.clone(),
            });
        }
        out
    }

    /// Pending assignments as the reconciler shows them.
    pub fn pending(&self) -> BTreeMap<String, (Time, String, Option<String>)> {
        self.pending.clone()
    }
}
