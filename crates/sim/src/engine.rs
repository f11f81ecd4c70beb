//! The simulation: a workload's bots and tasks driving the real scheduling
//! core, the way Swarming drives a server.
//!
//! Time advances in steps (one second by default). At each step where
//! something happens, the simulation sends the pool one batch, exactly the
//! command the server's pool writer builds from concurrent calls: first the
//! NotifyTasks items Swarming would send (new tasks as PENDING, tasks bots
//! picked up as RUNNING, cancelled and preempted tasks as ABSENT, preempted
//! tasks queued again as PENDING), then one AssignTasks call with every bot
//! that polls at that step. [`Pool::apply`] runs it, and the simulation
//! acts on the answers:
//!
//! * a bot given a task runs it for its (remaining) duration, then polls
//!   at once; Swarming reports the task RUNNING in the next batch;
//! * a bot given nothing polls again after the poll interval (the first
//!   re-poll after joining is spread over the interval, so a fleet that
//!   starts together does not poll in lock-step);
//! * when the pool preempts a task, its bot learns it as Swarming does,
//!   from [`Pool::cancellations`] (reason PREEMPTED), at the next
//!   cancellation check: it stops, Swarming reports the task ABSENT and
//!   queues it again with the run time it has left, and the bot polls and
//!   receives the preempting task;
//! * a bot that leaves the fleet finishes its task and reports it, then
//!   stops polling: the scheduler forgets it after the bot expiration, and
//!   an assignment made to it meanwhile is withdrawn by the 10-minute
//!   pickup timeout;
//! * a task cancelled by the workload is reported ABSENT; its bot, if it
//!   had one, polls at once.
//!
//! Everything else (balances, levels, promotion and demotion, fanout,
//! preemption, pickup timeouts, bot expiry) is the core's own behaviour.
//! Events of the core feed the [`Ledger`], which measures the run.
//!
//! Approximations (also in the docs): events happening within a step are
//! applied together at the end of the step, so waits are quantised by the
//! step (an arrival waits at least until the step's end); Swarming's own
//! latencies (notification queues, the bot's reaction to a poll answer)
//! are zero.
//!
//! The run is deterministic: the same workload, configuration and options
//! give the same events and the same report. Pending work lives in a binary
//! heap ordered by (time, insertion number); arrivals are read in order from
//! the workload, and steps where nothing happens are skipped.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use qscheduler_core::{
    AccountConfig, AssignCall, Batch, CancelReason, Command, EventKind, IdleBot, Notification,
    NotifyCall, NotifyKind, Pool, PoolSettings, Scheduler, Time,
};
use rustc_hash::FxHashMap;

use crate::clock::ceil_div;
use crate::ledger::{Kind, Ledger, LedgerEvent};
use crate::report::{RunReport, SimSettings, bucket_for};
use crate::workload::Workload;

/// How the simulation approximates Swarming.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Step in milliseconds: events within a step are applied together.
    pub step_ms: i64,
    /// An idle bot asks for work this often (milliseconds).
    pub poll_ms: i64,
    /// Preempted bots learn of their cancellation at multiples of this
    /// interval (milliseconds); 0: at the next step.
    pub cancel_check_ms: i64,
    /// Start accounts with the balances the workload gives (extracted
    /// workloads carry them); otherwise at zero.
    pub workload_balances: bool,
    /// Length of one time bucket of the series; `None`: chosen from the
    /// window (at most 150 buckets).
    pub bucket_ms: Option<i64>,
}

impl SimOptions {
    /// Checks the ranges: a step from 1 ms to an hour, a poll interval of
    /// at least a step and at most a day, a cancellation check interval up
    /// to a day.
    pub fn validate(&self) -> Result<(), SimError> {
        if self.step_ms < 1 || self.step_ms > 3_600_000 {
            return Err(SimError::Options(
                "the step must be from 1 ms to 1 hour".into(),
            ));
        }
        if self.poll_ms < self.step_ms || self.poll_ms > 86_400_000 {
            return Err(SimError::Options(
                "the poll interval must be at least one step and at most a day".into(),
            ));
        }
        if self.cancel_check_ms < 0 || self.cancel_check_ms > 86_400_000 {
            return Err(SimError::Options(
                "the cancellation check interval must be from 0 to a day".into(),
            ));
        }
        if self.bucket_ms.is_some_and(|b| b < 1) {
            return Err(SimError::Options("the bucket must be at least 1 ms".into()));
        }
        Ok(())
    }
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            step_ms: 1_000,
            poll_ms: 10_000,
            cancel_check_ms: 0,
            workload_balances: true,
            bucket_ms: None,
        }
    }
}

/// The pool configuration a workload is simulated under.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PoolSetup {
    /// Preemption disabled.
    pub disable_preemption: bool,
    /// Bot expiration in seconds (0: the default, 300 s).
    pub bot_expiration_secs: i32,
    /// Accounts and their configurations.
    pub accounts: BTreeMap<String, AccountConfig>,
}

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// An option is out of range.
    #[error("{0}")]
    Options(String),
    /// The pool refused a command: a defect of the simulation, since it
    /// only sends valid commands.
    #[error("the scheduling core refused a batch at {at_s} s: {message}")]
    Core {
        /// Simulated time, seconds from the start.
        at_s: f64,
        /// The core's error.
        message: String,
    },
    /// The pool's answers contradict the simulation's state: a defect.
    #[error("inconsistent simulation at {at_s} s: {message}")]
    Inconsistent {
        /// Simulated time, seconds from the start.
        at_s: f64,
        /// What did not fit.
        message: String,
    },
}

/// Counters of a run, beyond the report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Batches applied.
    pub batches: u64,
    /// AssignTasks polls.
    pub polls: u64,
    /// NotifyTasks items.
    pub notifications: u64,
    /// Events the core produced.
    pub events: u64,
    /// Preempted tasks whose bot stopped and which queued again.
    pub requeued: u64,
}

/// A simulated run.
#[derive(Clone, Debug)]
pub struct SimOutcome {
    /// The measured figures.
    pub report: RunReport,
    /// Counters.
    pub stats: SimStats,
}

const NONE: u32 = u32::MAX;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum TaskState {
    Future,
    Queued,
    Running,
    Finished,
    Cancelled,
}

#[derive(Clone, Copy, Debug)]
enum Ev {
    Finish { bot: u32, epoch: u32 },
    Poll { bot: u32, epoch: u32 },
    Join { bot: u32 },
    Leave { bot: u32 },
    Cancel { task: u32 },
    CancelCheck,
}

struct Timed {
    t: i64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Timed {
    fn eq(&self, other: &Self) -> bool {
        (self.t, self.seq) == (other.t, other.seq)
    }
}
impl Eq for Timed {}
impl PartialOrd for Timed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Timed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.t, self.seq).cmp(&(other.t, other.seq))
    }
}

struct BotState {
    idle: IdleBot,
    online: bool,
    running: u32,
    since: i64,
    epoch: u32,
    first_repoll: bool,
    polling: bool,
}

struct Sim<'w> {
    w: &'w Workload,
    o: SimOptions,
    start_ns: i64,
    pool: Pool,
    heap: BinaryHeap<Reverse<Timed>>,
    seq: u64,
    tasks: Vec<(TaskState, i64, u32)>,
    bots: Vec<BotState>,
    task_ids: FxHashMap<&'w str, u32>,
    bot_ids: FxHashMap<&'w str, u32>,
    account_ids: FxHashMap<String, u32>,
    ledger: Ledger,
    stats: SimStats,
    /// Notifications for the next batch.
    notes: Vec<Notification>,
    /// Bots polling in the next batch.
    polls: Vec<u32>,
    check_scheduled: bool,
    now: i64,
}

/// Runs `w` under `setup`; `label` names the run in the report.
pub fn simulate(
    w: &Workload,
    setup: &PoolSetup,
    o: &SimOptions,
    label: &str,
) -> Result<SimOutcome, SimError> {
    o.validate()?;
    for (id, c) in &setup.accounts {
        c.validate()
            .map_err(|e| SimError::Options(format!("account {id:?}: {e}")))?;
    }
    let mut sim = Sim::new(w, setup, o.clone());
    sim.run()?;
    let Sim {
        ledger,
        stats,
        pool,
        ..
    } = sim;
    let mut report = ledger.finish(w, label);
    report.simulation = Some(SimSettings {
        step_s: o.step_ms as f64 / 1e3,
        poll_s: o.poll_ms as f64 / 1e3,
        cancel_check_s: o.cancel_check_ms as f64 / 1e3,
        disable_preemption: setup.disable_preemption,
        bot_expiration_s: pool.settings().effective_bot_expiration() as f64 / 1e9,
        batches: stats.batches,
        polls: stats.polls,
    });
    Ok(SimOutcome { report, stats })
}

impl<'w> Sim<'w> {
    fn new(w: &'w Workload, setup: &PoolSetup, o: SimOptions) -> Self {
        let start_ns = w.start.as_nanos();
        let mut scheduler = Scheduler::new(w.start);
        scheduler.set_settings(PoolSettings {
            disable_preemption: setup.disable_preemption,
            bot_expiration_nanos: i64::from(setup.bot_expiration_secs) * 1_000_000_000,
        });
        for (id, config) in &setup.accounts {
            let balance = if o.workload_balances {
                w.balances.get(id).copied().map(qscheduler_core::Balance)
            } else {
                None
            };
            scheduler.add_account(id, config.clone(), balance);
        }
        let pool = Pool::from_scheduler(scheduler);

        // The report lists the workload's accounts, then configured
        // accounts that have no tasks (their entitlement still shows).
        let mut names = w.accounts.clone();
        for id in setup.accounts.keys() {
            if !w.accounts.iter().any(|a| a == id) {
                names.push(id.clone());
            }
        }
        let account_ids: FxHashMap<String, u32> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i as u32))
            .collect();
        let rates = names
            .iter()
            .map(|n| setup.accounts.get(n).map(|c| c.charge_rate))
            .collect();
        let bucket = o.bucket_ms.unwrap_or_else(|| bucket_for(w.duration));
        let ledger = Ledger::new(names, rates, w.duration, bucket, w.tasks.len());

        let task_ids = w
            .tasks
            .iter()
            .enumerate()
            .map(|(i, t)| (&*t.id, i as u32))
            .collect();
        let bot_ids = w
            .bots
            .iter()
            .enumerate()
            .map(|(i, b)| (&*b.id, i as u32))
            .collect();
        let bots = w
            .bots
            .iter()
            .map(|b| BotState {
                idle: IdleBot {
                    id: b.id.to_string(),
                    labels: w.set(b.labels).to_vec(),
                },
                online: false,
                running: NONE,
                since: 0,
                epoch: 0,
                first_repoll: true,
                polling: false,
            })
            .collect();
        let mut sim = Sim {
            w,
            o,
            start_ns,
            pool,
            heap: BinaryHeap::new(),
            seq: 0,
            tasks: vec![(TaskState::Future, 0, NONE); w.tasks.len()],
            bots,
            task_ids,
            bot_ids,
            account_ids,
            ledger,
            stats: SimStats::default(),
            notes: Vec::new(),
            polls: Vec::new(),
            check_scheduled: false,
            now: -1,
        };
        for (i, t) in w.tasks.iter().enumerate() {
            sim.tasks[i].1 = t.duration.unwrap_or(-1);
        }
        for (i, b) in w.bots.iter().enumerate() {
            sim.push(b.from, Ev::Join { bot: i as u32 });
            if let Some(to) = b.to {
                sim.push(to, Ev::Leave { bot: i as u32 });
            }
        }
        sim
    }

    fn push(&mut self, t: i64, ev: Ev) {
        self.seq += 1;
        self.heap.push(Reverse(Timed {
            t,
            seq: self.seq,
            ev,
        }));
    }

    fn time(&self, ms: i64) -> Time {
        Time::from_nanos(self.start_ns + ms * 1_000_000)
    }

    fn inconsistent(&self, message: String) -> SimError {
        SimError::Inconsistent {
            at_s: self.now as f64 / 1e3,
            message,
        }
    }

    fn run(&mut self) -> Result<(), SimError> {
        // Arrivals in time order (ties in file order).
        let mut order: Vec<u32> = (0..self.w.tasks.len() as u32).collect();
        order.sort_by_key(|&i| (self.w.tasks[i as usize].at, i));
        let mut next_arrival = 0usize;
        let step = self.o.step_ms;
        loop {
            let a = order
                .get(next_arrival)
                .map(|&i| self.w.tasks[i as usize].at);
            let h = self.heap.peek().map(|e| e.0.t);
            let next = match (a, h) {
                (Some(a), Some(h)) => a.min(h),
                (Some(x), None) | (None, Some(x)) => x,
                (None, None) if !self.notes.is_empty() => self.now + step,
                (None, None) => break,
            };
            let mut t = (ceil_div(next, step) * step).max(self.now + step);
            if self.now < 0 {
                t = ceil_div(next, step) * step;
            }
            let t = t.min(self.w.duration);
            if t <= self.now || next > self.w.duration {
                break;
            }
            self.now = t;
            while let Some(&i) = order.get(next_arrival) {
                let task = &self.w.tasks[i as usize];
                if task.at > t {
                    break;
                }
                next_arrival += 1;
                self.arrive(i);
            }
            while self.heap.peek().is_some_and(|e| e.0.t <= t) {
                let Some(Reverse(e)) = self.heap.pop() else {
                    break;
                };
                self.handle(e.t, e.ev)?;
            }
            self.step()?;
        }
        Ok(())
    }

    fn arrive(&mut self, i: u32) {
        let task = &self.w.tasks[i as usize];
        self.tasks[i as usize].0 = TaskState::Queued;
        let at = self.time(task.at);
        self.notes.push(Notification {
            time: at,
            task_id: task.id.to_string(),
            kind: NotifyKind::Waiting {
                account: self.w.accounts[task.account as usize].clone(),
                base_labels: self.w.set(task.labels).to_vec(),
                provisionable_labels: self.w.set(task.provisionable).to_vec(),
                enqueue_time: at,
                tags: self.w.set(task.tags).to_vec(),
            },
        });
        if let Some(c) = task.cancel {
            self.push(c, Ev::Cancel { task: i });
        }
    }

    fn absent(&mut self, task: u32, t: i64) {
        self.notes.push(Notification {
            time: self.time(t),
            task_id: self.w.tasks[task as usize].id.to_string(),
            kind: NotifyKind::Absent,
        });
    }

    fn poll(&mut self, bot: u32) {
        let b = &mut self.bots[bot as usize];
        if !b.polling {
            b.polling = true;
            self.polls.push(bot);
        }
    }

    /// Stops the bot's task at `t`; returns the task.
    fn stop(&mut self, bot: u32, t: i64) -> u32 {
        let b = &mut self.bots[bot as usize];
        let task = b.running;
        let ran = t - b.since;
        b.running = NONE;
        b.epoch += 1;
        let rec = &mut self.tasks[task as usize];
        if rec.1 >= 0 {
            rec.1 = (rec.1 - ran).max(0);
        }
        task
    }

    fn handle(&mut self, t: i64, ev: Ev) -> Result<(), SimError> {
        match ev {
            Ev::Join { bot } => {
                let b = &mut self.bots[bot as usize];
                b.online = true;
                b.first_repoll = true;
                b.epoch += 1;
                if b.running == NONE {
                    self.poll(bot);
                }
            }
            Ev::Leave { bot } => {
                // A running task is finished first (see Finish).
                self.bots[bot as usize].online = false;
            }
            Ev::Poll { bot, epoch } => {
                let b = &self.bots[bot as usize];
                if b.epoch == epoch && b.online && b.running == NONE {
                    self.poll(bot);
                }
            }
            Ev::Finish { bot, epoch } => {
                if self.bots[bot as usize].epoch != epoch {
                    return Ok(());
                }
                let task = self.stop(bot, t);
                self.tasks[task as usize].0 = TaskState::Finished;
                if self.bots[bot as usize].online {
                    // Asking for work tells the scheduler the task is over.
                    self.poll(bot);
                } else {
                    // A bot leaving reports its task and goes.
                    self.absent(task, t);
                }
            }
            Ev::Cancel { task } => match self.tasks[task as usize].0 {
                TaskState::Queued => {
                    self.tasks[task as usize].0 = TaskState::Cancelled;
                    self.absent(task, t);
                }
                TaskState::Running => {
                    let bot = self.tasks[task as usize].2;
                    self.stop(bot, t);
                    self.tasks[task as usize].0 = TaskState::Cancelled;
                    self.absent(task, t);
                    if self.bots[bot as usize].online {
                        self.poll(bot);
                    }
                }
                TaskState::Future | TaskState::Finished | TaskState::Cancelled => {}
            },
            Ev::CancelCheck => {
                self.check_scheduled = false;
                for c in self.pool.cancellations() {
                    if c.reason != CancelReason::Preempted {
                        continue;
                    }
                    let Some(bot) = c
                        .bot_id
                        .as_deref()
                        .and_then(|b| self.bot_ids.get(b))
                        .copied()
                    else {
                        continue;
                    };
                    let Some(&task) = self.task_ids.get(&*c.task_id) else {
                        continue;
                    };
                    if self.bots[bot as usize].running != task {
                        // Finished (or cancelled) before it heard.
                        continue;
                    }
                    self.stop(bot, t);
                    self.stats.requeued += 1;
                    self.tasks[task as usize].0 = TaskState::Queued;
                    self.absent(task, t);
                    let spec = &self.w.tasks[task as usize];
                    self.notes.push(Notification {
                        time: self.time(t),
                        task_id: spec.id.to_string(),
                        kind: NotifyKind::Waiting {
                            account: self.w.accounts[spec.account as usize].clone(),
                            base_labels: self.w.set(spec.labels).to_vec(),
                            provisionable_labels: self.w.set(spec.provisionable).to_vec(),
                            enqueue_time: self.time(spec.at),
                            tags: self.w.set(spec.tags).to_vec(),
                        },
                    });
                    if self.bots[bot as usize].online {
                        self.poll(bot);
                    }
                }
            }
        }
        Ok(())
    }

    /// Sends the batch of this step and acts on the answers.
    fn step(&mut self) -> Result<(), SimError> {
        if self.notes.is_empty() && self.polls.is_empty() {
            return Ok(());
        }
        let t = self.now;
        let at = self.time(t);
        self.polls.sort_unstable();
        let polls = std::mem::take(&mut self.polls);
        let notifications = std::mem::take(&mut self.notes);
        self.stats.polls += polls.len() as u64;
        self.stats.notifications += notifications.len() as u64;
        let batch = Batch {
            notifies: if notifications.is_empty() {
                Vec::new()
            } else {
                vec![NotifyCall {
                    notifications,
                    is_callback: false,
                }]
            },
            assigns: if polls.is_empty() {
                Vec::new()
            } else {
                vec![AssignCall {
                    time: at,
                    bots: polls
                        .iter()
                        .map(|&b| self.bots[b as usize].idle.clone())
                        .collect(),
                }]
            },
        };
        let out = self
            .pool
            .apply(&Command::Batch(batch))
            .map_err(|e| SimError::Core {
                at_s: t as f64 / 1e3,
                message: e.to_string(),
            })?;
        self.stats.batches += 1;
        self.stats.events += out.events.len() as u64;

        let mut preempted = false;
        for pe in &out.events {
            let e = &pe.event;
            let Some(&task) = self.task_ids.get(&*e.task_id) else {
                return Err(self.inconsistent(format!("event for unknown task {:?}", e.task_id)));
            };
            let ms = (e.time.as_nanos() - self.start_ns).div_euclid(1_000_000);
            let kind = match &e.kind {
                EventKind::Enqueued { .. } => Kind::Enqueued {
                    account: self.w.tasks[task as usize].account,
                },
                EventKind::Assigned { priority, .. } => Kind::Assigned { level: *priority },
                EventKind::Preempted {
                    preempting_account_id,
                    priority,
                    preempting_priority,
                    ..
                } => {
                    preempted = true;
                    Kind::Preempted {
                        level: *priority,
                        by_account: self.account_ids.get(&**preempting_account_id).copied(),
                        by_level: *preempting_priority,
                    }
                }
                EventKind::Reprioritized {
                    old_priority,
                    new_priority,
                } => Kind::Reprioritized {
                    old: *old_priority,
                    new: *new_priority,
                },
                EventKind::Completed { .. } => Kind::Completed,
                EventKind::Unassigned => Kind::Unassigned,
            };
            self.ledger.record(LedgerEvent { t: ms, task, kind });
        }

        let got = out.assignments.into_iter().next().unwrap_or_default();
        for a in &got {
            let (Some(&bot), Some(&task)) =
                (self.bot_ids.get(&*a.bot_id), self.task_ids.get(&*a.task_id))
            else {
                return Err(self.inconsistent(format!(
                    "assignment of unknown task {:?} or bot {:?}",
                    a.task_id, a.bot_id
                )));
            };
            if self.tasks[task as usize].0 != TaskState::Queued {
                return Err(self.inconsistent(format!(
                    "task {:?} assigned while {:?}",
                    a.task_id, self.tasks[task as usize].0
                )));
            }
            let b = &mut self.bots[bot as usize];
            if b.running != NONE {
                return Err(self.inconsistent(format!("bot {:?} assigned while busy", a.bot_id)));
            }
            b.running = task;
            b.since = t;
            b.epoch += 1;
            b.first_repoll = false;
            let epoch = b.epoch;
            let rec = &mut self.tasks[task as usize];
            rec.0 = TaskState::Running;
            rec.2 = bot;
            if rec.1 >= 0 {
                let end = t + rec.1;
                self.push(end, Ev::Finish { bot, epoch });
            }
            // Swarming reports the pick-up; it reaches the pool with the
            // next batch, stamped with the time it happened.
            self.notes.push(Notification {
                time: at,
                task_id: a.task_id.to_string(),
                kind: NotifyKind::Running {
                    bot_id: a.bot_id.to_string(),
                },
            });
        }
        for &bot in &polls {
            let b = &mut self.bots[bot as usize];
            b.polling = false;
            if b.running != NONE || !b.online {
                continue;
            }
            let delay = if b.first_repoll {
                b.first_repoll = false;
                first_repoll_delay(bot, self.o.poll_ms)
            } else {
                self.o.poll_ms
            };
            let epoch = b.epoch;
            self.push(t + delay, Ev::Poll { bot, epoch });
        }
        if preempted && !self.check_scheduled {
            self.check_scheduled = true;
            let when = if self.o.cancel_check_ms == 0 {
                t + self.o.step_ms
            } else {
                (t / self.o.cancel_check_ms + 1) * self.o.cancel_check_ms
            };
            self.push(when, Ev::CancelCheck);
        }
        Ok(())
    }
}

/// A bot's first re-poll delay after joining: a fixed fraction of the
/// interval derived from its index (the golden-ratio sequence spreads them
/// evenly). `workload play` uses it too, so its bots poll as these do.
pub fn first_repoll_delay(bot: u32, poll_ms: i64) -> i64 {
    let frac =
        (u64::from(bot).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as f64 / (1u64 << 53) as f64;
    ((frac * poll_ms as f64) as i64).clamp(1, poll_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::LevelRow;

    const HEAD: &str = r#"{"format":"qscheduler-workload","version":1,"pool":"p","start":"2030-01-01T00:00:00Z","duration":200}"#;

    fn workload(body: &str) -> Workload {
        Workload::read(format!("{HEAD}\n{body}").as_bytes()).unwrap()
    }

    fn row<'a>(r: &'a RunReport, account: &str, level: &str) -> &'a LevelRow {
        let a = r
            .accounts
            .iter()
            .find(|a| a.account == account)
            .unwrap_or_else(|| panic!("no account {account}"));
        if level == "all" {
            return &a.all;
        }
        a.levels
            .iter()
            .find(|l| l.level == level)
            .unwrap_or_else(|| panic!("no level {level} for {account}: {:?}", a.levels))
    }

    fn opts() -> SimOptions {
        SimOptions::default()
    }

    /// One bot, three tasks without quota (free level). Worked by hand:
    /// t1 arrives at 0 with the bot's first poll and starts at once; t2
    /// (5 s) and t3 (12.5 s) arrive while the bot is busy and no pass runs
    /// (nobody polls); the bot finishes t1 at 30 and polls: t2, the older,
    /// starts (waited 25 s); at 40 t3 starts (waited 27.5 s); at 45 the bot
    /// polls, gets nothing, and re-polls later.
    #[test]
    fn hand_computed_waits_on_one_bot() {
        let w = workload(
            r#"{"bot":"b1","labels":["x"]}
{"task":"t1","at":0,"account":"a","labels":["x"],"duration":30}
{"task":"t2","at":5,"account":"b","labels":["x"],"duration":10}
{"task":"t3","at":12.5,"account":"c","labels":["x"],"duration":5}"#,
        );
        let out = simulate(&w, &PoolSetup::default(), &opts(), "test").unwrap();
        let r = &out.report;
        assert_eq!(row(r, "a", "free").wait_p50_s, Some(0.0));
        assert_eq!(row(r, "b", "free").wait_p50_s, Some(25.0));
        assert_eq!(row(r, "c", "free").wait_p50_s, Some(27.5));
        // Usage: 30 + 10 + 5 bot-seconds of 200 available.
        assert_eq!(row(r, "a", "free").used_bot_s, 30.0);
        assert_eq!(row(r, "b", "free").used_bot_s, 10.0);
        assert_eq!(row(r, "c", "free").used_bot_s, 5.0);
        assert_eq!(r.fleet.used_bot_s, 45.0);
        assert_eq!(r.fleet.utilisation, 45.0 / 200.0);
        assert_eq!(r.counts.started, 3);
        assert_eq!(r.counts.running_at_end, 0);
        // Batches: 0 (t1 + poll), 5, 13 (arrivals), 30, 40, 45 (polls),
        // then the idle bot's re-polls: first at 45 + 6.18 s (its spread),
        // then every 10 s up to 200.
        let repolls = (52..=200).step_by(10).count() as u64;
        assert_eq!(out.stats.batches, 6 + repolls);
        assert_eq!(out.stats.polls, 4 + repolls);
    }

    /// Preemption, worked by hand. `low` (no quota, free level) runs on b1
    /// from 0. `high` (account hi, 1 bot-second per second at P0) arrives at
    /// 10 s. b2 cannot run either task but polls, which runs passes: its
    /// first re-poll is at 6.18 s (step 7), then 17, 27, ... At 17 hi's
    /// balance is 17 > 0, so high preempts low on b1. At the next step (18)
    /// b1 learns it from the cancellations, stops low (82 s left), Swarming
    /// queues low again, and b1 polls and receives high, which runs 20 s, to
    /// 38. Then b1 polls and low resumes (waited 18 → 38 = 20 s) and runs to
    /// 120.
    #[test]
    fn hand_computed_preemption() {
        let w = workload(
            r#"{"bot":"b1","labels":["x"]}
{"bot":"b2","labels":["other"]}
{"task":"low","at":0,"labels":["x"],"duration":100}
{"task":"high","at":10,"account":"hi","labels":["x"],"duration":20}"#,
        );
        let mut setup = PoolSetup::default();
        setup.accounts.insert(
            "hi".into(),
            AccountConfig {
                charge_rate: [1.0, 0.0, 0.0, 0.0, 0.0],
                max_charge_seconds: 1000.0,
                ..Default::default()
            },
        );
        let out = simulate(&w, &setup, &opts(), "test").unwrap();
        let r = &out.report;
        let high = row(r, "hi", "P0");
        assert_eq!(high.wait_p50_s, Some(7.0));
        assert_eq!(high.used_bot_s, 21.0);
        assert_eq!(high.preempting, 1);
        assert_eq!(high.entitled_bot_s, Some(200.0));
        let low = row(r, "", "free");
        assert_eq!(low.wait_p50_s, Some(20.0));
        assert_eq!(low.used_bot_s, 17.0 + 82.0);
        assert_eq!(low.preempted, 1);
        assert_eq!(r.counts.preemptions, 1);
        assert_eq!(out.stats.requeued, 1);
        assert_eq!(r.counts.running_at_end, 0);

        // With preemption disabled, high waits for low to finish at 100.
        setup.disable_preemption = true;
        let out = simulate(&w, &setup, &opts(), "test").unwrap();
        assert_eq!(row(&out.report, "hi", "P0").wait_p50_s, Some(90.0));
        assert_eq!(out.report.counts.preemptions, 0);
    }

    /// A cancellation check every 60 s: b1 keeps running low until 60,
    /// when it hears of the preemption; low then has 40 s left.
    #[test]
    fn preempted_bots_hear_at_the_cancellation_check() {
        let w = workload(
            r#"{"bot":"b1","labels":["x"]}
{"bot":"b2","labels":["other"]}
{"task":"low","at":0,"labels":["x"],"duration":100}
{"task":"high","at":10,"account":"hi","labels":["x"],"duration":20}"#,
        );
        let mut setup = PoolSetup::default();
        setup.accounts.insert(
            "hi".into(),
            AccountConfig {
                charge_rate: [1.0, 0.0, 0.0, 0.0, 0.0],
                max_charge_seconds: 1000.0,
                ..Default::default()
            },
        );
        let o = SimOptions {
            cancel_check_ms: 60_000,
            ..opts()
        };
        let out = simulate(&w, &setup, &o, "test").unwrap();
        let r = &out.report;
        // high is assigned at 17 (its wait), starts at 60, ends at 80; low
        // resumes at 80 (requeued at 60: waited 20 s) with 40 s left.
        assert_eq!(row(r, "hi", "P0").wait_p50_s, Some(7.0));
        assert_eq!(row(r, "hi", "P0").used_bot_s, 80.0 - 17.0);
        assert_eq!(row(r, "", "free").wait_p50_s, Some(20.0));
        assert_eq!(row(r, "", "free").used_bot_s, 17.0 + 40.0);
    }

    /// A bot that leaves finishes its task and reports it; an assignment
    /// made to it afterwards is withdrawn after ten minutes and the task
    /// runs elsewhere.
    #[test]
    fn leaving_bots_and_the_pickup_timeout() {
        let head = r#"{"format":"qscheduler-workload","version":1,"pool":"p","start":"2030-01-01T00:00:00Z","duration":1200}"#;
        let w = Workload::read(
            format!(
                "{head}\n{}",
                r#"{"bot":"a","labels":["x"],"to":100}
{"bot":"z","labels":["x"],"from":200}
{"bot":"poller","labels":["other"]}
{"task":"t1","at":0,"labels":["x"],"duration":50}
{"task":"t2","at":150,"labels":["x"],"duration":10}"#
            )
            .as_bytes(),
        )
        .unwrap();
        let out = simulate(&w, &PoolSetup::default(), &opts(), "test").unwrap();
        let r = &out.report;
        // t1 runs on a from 0 to 50. a leaves at 100 but the scheduler
        // still counts it idle (expiry is 300 s after its last poll): a
        // pass at 153 (the poller's) gives t2 to a, which never picks it
        // up. z joins at 200 and polls, but t2 is assigned to a. At a's
        // assignment + 600 s the assignment is withdrawn and t2 goes to z.
        assert_eq!(r.counts.pickup_timeouts, 1);
        assert_eq!(r.counts.started, 2);
        let waits = row(r, "", "all");
        assert_eq!(waits.tasks, 2);
        // a polls every 10 s after t1 (60, 70, 80, 90) and leaves at 100;
        // the poller's re-polls fall at 3, 13, ..., 153 (its spread is
        // 2.36 s). t2's wait runs from 150 through the assignment to a at
        // 153 to the withdrawal at 753 (the poller's pass), which gives it
        // to z at once.
        assert_eq!(waits.wait_p99_s, Some(753.0 - 150.0));
    }

    #[test]
    fn same_inputs_same_report() {
        let w = workload(
            r#"{"bot":"b1","labels":["x"]}
{"bot":"b2","labels":["x"]}
{"task":"t1","at":0,"account":"a","labels":["x"],"duration":30}
{"task":"t2","at":1,"account":"b","labels":["x"],"duration":60}
{"task":"t3","at":2,"account":"a","labels":["x"],"duration":5}
{"task":"t4","at":3,"account":"b","labels":["x"]}"#,
        );
        let a = simulate(&w, &PoolSetup::default(), &opts(), "x").unwrap();
        let b = simulate(&w, &PoolSetup::default(), &opts(), "x").unwrap();
        assert_eq!(a.report, b.report);
        assert_eq!(a.stats, b.stats);
        // t4 runs until the end (no duration).
        assert_eq!(a.report.counts.running_at_end, 1);
    }

    #[test]
    fn options_are_checked() {
        let w = workload("");
        for o in [
            SimOptions {
                step_ms: 0,
                ..opts()
            },
            SimOptions {
                poll_ms: 500,
                ..opts()
            },
            SimOptions {
                cancel_check_ms: -1,
                ..opts()
            },
        ] {
            assert!(matches!(
                simulate(&w, &PoolSetup::default(), &o, "x"),
                Err(SimError::Options(_))
            ));
        }
    }
}
