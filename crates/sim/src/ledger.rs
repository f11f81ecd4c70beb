//! The ledger: per-account figures measured from scheduling events.
//!
//! Both a simulated run and a recorded one are a stream of the core's task
//! events (enqueued, assigned, preempted, reprioritised, completed,
//! unassigned); the ledger reads that stream and nothing else, so the two
//! are measured the same way. It keeps one small record per task (when it
//! queued, how long it has waited, the level it runs at) and per account
//! and level the bot-seconds used and the preemptions and level changes;
//! [`Ledger::finish`] turns them into a [`RunReport`].
//!
//! Definitions (also in the simulation docs):
//! * a task's **wait** is the time it spent queued before running, summed
//!   over its spells in the queue (a preempted task queues again). An
//!   assignment withdrawn because its bot never picked it up does not end
//!   the wait. A task still queued at the end counts with what it waited
//!   so far;
//! * a task's **level** in the tables is the level of its first run;
//! * **used** bot-seconds run from the assignment to the completion or
//!   preemption, at the level the task runs at (reprioritisation moves the
//!   rest of a run to the new level), as the scheduler charges them.

use qscheduler_core::NUM_PRIORITIES;

use crate::clock::ceil_div;
use crate::report::{AccountReport, Counts, FleetReport, LevelRow, RunReport, level_name};
use crate::workload::Workload;

const LEVELS: usize = NUM_PRIORITIES + 1;
const NONE: u8 = u8::MAX;
const NOT: i64 = -1;

/// What happened to a task, with the level details the figures need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Queued (again), for `account`.
    Enqueued {
        /// The task's account.
        account: u32,
    },
    /// Given a bot, at `level`.
    Assigned {
        /// Level it runs at (5 = free).
        level: u8,
    },
    /// Lost its bot to a task of `by_account` at `by_level`.
    Preempted {
        /// Level it ran at.
        level: u8,
        /// The preempting task's account, if it is one the ledger knows.
        by_account: Option<u32>,
        /// The preempting task's level.
        by_level: u8,
    },
    /// Moved from one level to another while running.
    Reprioritized {
        /// Old level.
        old: u8,
        /// New level.
        new: u8,
    },
    /// Gone from the scheduler (finished, cancelled, or its bot forgotten).
    Completed,
    /// Its assignment was withdrawn (pickup timeout); it queues again.
    Unassigned,
}

/// One event: time in milliseconds from the start, and the task's index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LedgerEvent {
    /// Milliseconds from the start of the window.
    pub t: i64,
    /// The task's index (the caller's numbering, dense from 0).
    pub task: u32,
    /// What happened.
    pub kind: Kind,
}

#[derive(Clone, Copy)]
struct TaskRec {
    account: u32,
    arrival: i64,
    queued_since: i64,
    wait: i64,
    /// The `queued_since` and the wait added by the last assignment, to
    /// undo them if the assignment is withdrawn.
    undo_since: i64,
    undo_wait: i64,
    level: u8,
    assign_level: u8,
    first_level: u8,
    gone_unstarted: bool,
    run_since: i64,
}

impl Default for TaskRec {
    fn default() -> Self {
        TaskRec {
            account: u32::MAX,
            arrival: NOT,
            queued_since: NOT,
            wait: 0,
            undo_since: NOT,
            undo_wait: 0,
            level: NONE,
            assign_level: NONE,
            first_level: NONE,
            gone_unstarted: false,
            run_since: NOT,
        }
    }
}

#[derive(Clone, Copy, Default)]
struct LevelAcc {
    used_ms: i64,
    preempted: u64,
    preempting: u64,
    promoted: u64,
    demoted: u64,
}

/// Figures accumulated from events; see the module docs.
pub struct Ledger {
    accounts: Vec<String>,
    rates: Vec<Option<[f32; NUM_PRIORITIES]>>,
    duration: i64,
    bucket: i64,
    buckets: usize,
    tasks: Vec<TaskRec>,
    levels: Vec<[LevelAcc; LEVELS]>,
    /// Per account, bot-milliseconds per bucket.
    usage: Vec<Vec<i64>>,
    counts: Counts,
}

impl Ledger {
    /// A ledger for a window of `duration` ms cut into buckets of `bucket`
    /// ms, for the given accounts (with their charge rates when known).
    pub fn new(
        accounts: Vec<String>,
        rates: Vec<Option<[f32; NUM_PRIORITIES]>>,
        duration: i64,
        bucket: i64,
        tasks_hint: usize,
    ) -> Ledger {
        let buckets = ceil_div(duration, bucket).max(1) as usize;
        let n = accounts.len();
        Ledger {
            rates,
            duration,
            bucket,
            buckets,
            tasks: Vec::with_capacity(tasks_hint),
            levels: vec![[LevelAcc::default(); LEVELS]; n],
            usage: vec![vec![0; buckets]; n],
            counts: Counts::default(),
            accounts,
        }
    }

    fn task(&mut self, i: u32) -> &mut TaskRec {
        let i = i as usize;
        if i >= self.tasks.len() {
            self.tasks.resize(i + 1, TaskRec::default());
        }
        &mut self.tasks[i]
    }

    /// Adds `[from, to)` at `level` to the account's usage.
    fn use_bot(&mut self, account: u32, level: u8, from: i64, to: i64) {
        let (from, to) = (from.max(0), to.min(self.duration));
        if account as usize >= self.accounts.len() || to <= from || level as usize >= LEVELS {
            return;
        }
        self.levels[account as usize][level as usize].used_ms += to - from;
        let series = &mut self.usage[account as usize];
        let mut t = from;
        while t < to {
            let b = (t / self.bucket) as usize;
            let end = ((b as i64 + 1) * self.bucket).min(to);
            if let Some(slot) = series.get_mut(b) {
                *slot += end - t;
            }
            t = end;
        }
    }

    /// Ends a task's current run at `t`.
    fn end_run(&mut self, task: u32, t: i64) {
        let r = *self.task(task);
        if r.level == NONE {
            return;
        }
        self.use_bot(r.account, r.level, r.run_since, t);
        let r = self.task(task);
        if r.first_level == NONE {
            r.first_level = r.assign_level;
        }
        r.level = NONE;
        r.run_since = NOT;
    }

    /// Records one event. Events must come in time order.
    pub fn record(&mut self, e: LedgerEvent) {
        let t = e.t.clamp(0, self.duration);
        match e.kind {
            Kind::Enqueued { account } => {
                let r = self.task(e.task);
                if r.arrival == NOT {
                    r.arrival = t;
                    r.account = account;
                    self.counts.arrived += 1;
                }
                let r = self.task(e.task);
                if r.queued_since == NOT && r.level == NONE {
                    r.queued_since = t;
                }
                r.gone_unstarted = false;
            }
            Kind::Assigned { level } => {
                let r = self.task(e.task);
                if r.level != NONE {
                    // Assigned while running: the old run ends here.
                    self.end_run(e.task, t);
                }
                let r = self.task(e.task);
                if r.queued_since != NOT {
                    r.undo_since = r.queued_since;
                    r.undo_wait = (t - r.queued_since).max(0);
                    r.wait += r.undo_wait;
                    r.queued_since = NOT;
                } else {
                    r.undo_since = NOT;
                    r.undo_wait = 0;
                }
                r.level = level;
                r.assign_level = level;
                r.run_since = t;
            }
            Kind::Unassigned => {
                self.counts.pickup_timeouts += 1;
                let r = *self.task(e.task);
                if r.level != NONE {
                    // The scheduler did count the bot as busy until now.
                    self.use_bot(r.account, r.level, r.run_since, t);
                }
                let r = self.task(e.task);
                r.level = NONE;
                r.run_since = NOT;
                if r.undo_since != NOT {
                    r.wait -= r.undo_wait;
                    r.queued_since = r.undo_since;
                    r.undo_since = NOT;
                    r.undo_wait = 0;
                } else {
                    r.queued_since = t;
                }
            }
            Kind::Preempted {
                level,
                by_account,
                by_level,
            } => {
                self.counts.preemptions += 1;
                let account = self.task(e.task).account;
                self.end_run(e.task, t);
                if let Some(a) = self.levels.get_mut(account as usize) {
                    a[(level as usize).min(LEVELS - 1)].preempted += 1;
                }
                if let Some(b) = by_account.and_then(|b| self.levels.get_mut(b as usize)) {
                    b[(by_level as usize).min(LEVELS - 1)].preempting += 1;
                }
            }
            Kind::Reprioritized { old, new } => {
                let r = *self.task(e.task);
                if r.level != NONE {
                    self.use_bot(r.account, r.level, r.run_since, t);
                    let r = self.task(e.task);
                    r.level = new;
                    r.run_since = t;
                }
                let account = self.task(e.task).account;
                if let Some(a) = self.levels.get_mut(account as usize) {
                    if new < old {
                        self.counts.promotions += 1;
                        a[(new as usize).min(LEVELS - 1)].promoted += 1;
                    } else if new > old {
                        self.counts.demotions += 1;
                        a[(old as usize).min(LEVELS - 1)].demoted += 1;
                    }
                }
            }
            Kind::Completed => {
                let r = *self.task(e.task);
                if r.level != NONE {
                    self.end_run(e.task, t);
                } else if r.queued_since != NOT {
                    let r = self.task(e.task);
                    r.queued_since = NOT;
                    if r.first_level == NONE {
                        r.gone_unstarted = true;
                    }
                }
            }
        }
    }

    /// The report at the end of the window. `fleet` gives the bots'
    /// availability; `label` names the run.
    pub fn finish(mut self, w: &Workload, label: &str) -> RunReport {
        let end = self.duration;
        let n_acc = self.accounts.len();
        let mut waits: Vec<[Vec<i64>; LEVELS]> = vec![Default::default(); n_acc];
        let mut unstarted: Vec<Vec<i64>> = vec![Vec::new(); n_acc];
        let mut arrivals_by_bucket: Vec<Vec<Vec<i64>>> =
            vec![vec![Vec::new(); self.buckets]; n_acc];
        for i in 0..self.tasks.len() {
            let i = i as u32;
            if self.tasks[i as usize].level != NONE {
                self.counts.running_at_end += 1;
                self.end_run(i, end);
            }
            let r = self.tasks[i as usize];
            if r.account as usize >= n_acc || r.arrival == NOT {
                continue;
            }
            let a = r.account as usize;
            let bucket = ((r.arrival / self.bucket) as usize).min(self.buckets - 1);
            if r.first_level != NONE {
                self.counts.started += 1;
                waits[a][r.first_level as usize].push(r.wait);
                arrivals_by_bucket[a][bucket].push(r.wait);
            } else if r.queued_since != NOT {
                self.counts.waiting_at_end += 1;
                let w = r.wait + (end - r.queued_since);
                unstarted[a].push(w);
                arrivals_by_bucket[a][bucket].push(w);
            } else if r.gone_unstarted {
                self.counts.gone_before_start += 1;
            }
        }

        let (available_series_ms, available_ms) = availability(w, self.bucket, self.buckets, end);
        let available_s = available_ms as f64 / 1e3;
        let share = |ms: i64| {
            if available_ms > 0 {
                ms as f64 / available_ms as f64
            } else {
                0.0
            }
        };
        let duration_s = end as f64 / 1e3;
        let mut accounts = Vec::with_capacity(n_acc);
        let mut used_total = 0i64;
        let mut busy_series = vec![0i64; self.buckets];
        for a in 0..n_acc {
            let rates = self.rates.get(a).copied().flatten();
            let mut levels = Vec::new();
            let mut all_waits = Vec::new();
            let mut all = LevelRow {
                level: "all".into(),
                ..Default::default()
            };
            let mut entitled_all = 0.0f64;
            for p in 0..LEVELS {
                let acc = self.levels[a][p];
                let mut ws = std::mem::take(&mut waits[a][p]);
                let entitled = rates
                    .filter(|_| p < NUM_PRIORITIES)
                    .map(|r| f64::from(r[p]) * duration_s)
                    .filter(|&e| e > 0.0);
                entitled_all += entitled.unwrap_or(0.0);
                let used_s = acc.used_ms as f64 / 1e3;
                all.tasks += ws.len() as u64;
                all.used_bot_s += used_s;
                all.preempted += acc.preempted;
                all.preempting += acc.preempting;
                all.promoted += acc.promoted;
                all.demoted += acc.demoted;
                let any = !ws.is_empty()
                    || acc.used_ms > 0
                    || entitled.is_some()
                    || acc.preempted + acc.preempting + acc.promoted + acc.demoted > 0;
                if !any {
                    continue;
                }
                ws.sort_unstable();
                all_waits.extend_from_slice(&ws);
                levels.push(LevelRow {
                    level: level_name(p),
                    tasks: ws.len() as u64,
                    waiting_at_end: 0,
                    wait_p50_s: percentile_s(&ws, 50.0),
                    wait_p95_s: percentile_s(&ws, 95.0),
                    wait_p99_s: percentile_s(&ws, 99.0),
                    used_bot_s: used_s,
                    entitled_bot_s: entitled,
                    used_of_entitled: entitled.map(|e| used_s / e),
                    fleet_share: share(acc.used_ms),
                    preempted: acc.preempted,
                    preempting: acc.preempting,
                    promoted: acc.promoted,
                    demoted: acc.demoted,
                });
            }
            let un = std::mem::take(&mut unstarted[a]);
            all.tasks += un.len() as u64;
            all.waiting_at_end = un.len() as u64;
            all_waits.extend_from_slice(&un);
            all_waits.sort_unstable();
            all.wait_p50_s = percentile_s(&all_waits, 50.0);
            all.wait_p95_s = percentile_s(&all_waits, 95.0);
            all.wait_p99_s = percentile_s(&all_waits, 99.0);
            let used_ms: i64 = self.levels[a].iter().map(|l| l.used_ms).sum();
            used_total += used_ms;
            all.fleet_share = share(used_ms);
            if rates.is_some() {
                all.entitled_bot_s = Some(entitled_all);
                all.used_of_entitled = (entitled_all > 0.0).then(|| all.used_bot_s / entitled_all);
            }
            for (b, v) in self.usage[a].iter().enumerate() {
                busy_series[b] += v;
            }
            let usage_series = self.usage[a]
                .iter()
                .enumerate()
                .map(|(b, &v)| v as f64 / bucket_len(b, self.bucket, end) as f64)
                .collect();
            let wait_p95_series = arrivals_by_bucket[a]
                .iter_mut()
                .map(|v| {
                    v.sort_unstable();
                    percentile_s(v, 95.0)
                })
                .collect();
            accounts.push(AccountReport {
                account: self.accounts[a].clone(),
                charge_rate: rates.map(|r| r.to_vec()),
                levels,
                all,
                usage_series,
                wait_p95_series,
            });
        }
        let utilisation_series = busy_series
            .iter()
            .zip(&available_series_ms)
            .map(|(&b, &a)| if a > 0 { b as f64 / a as f64 } else { 0.0 })
            .collect();
        let available_series = available_series_ms
            .iter()
            .enumerate()
            .map(|(b, &a)| a as f64 / bucket_len(b, self.bucket, end) as f64)
            .collect();
        RunReport {
            label: label.to_owned(),
            pool: w.pool.clone(),
            start: crate::clock::format_rfc3339(w.start),
            duration_s,
            bucket_s: self.bucket as f64 / 1e3,
            simulation: None,
            fleet: FleetReport {
                bots: w.bots.len() as u64,
                available_bot_s: available_s,
                used_bot_s: used_total as f64 / 1e3,
                utilisation: share(used_total),
                utilisation_series,
                available_series,
            },
            counts: self.counts,
            accounts,
        }
    }
}

fn bucket_len(b: usize, bucket: i64, end: i64) -> i64 {
    let from = b as i64 * bucket;
    ((from + bucket).min(end) - from).max(1)
}

/// Bot-milliseconds of availability per bucket, and in all.
fn availability(w: &Workload, bucket: i64, buckets: usize, end: i64) -> (Vec<i64>, i64) {
    let mut series = vec![0i64; buckets];
    let mut total = 0;
    for b in &w.bots {
        let (from, to) = (b.from.min(end), b.to.unwrap_or(end).min(end));
        total += (to - from).max(0);
        let mut t = from;
        while t < to {
            let k = (t / bucket) as usize;
            let e = ((k as i64 + 1) * bucket).min(to);
            if let Some(s) = series.get_mut(k) {
                *s += e - t;
            }
            t = e;
        }
    }
    (series, total)
}

/// Nearest-rank percentile of sorted milliseconds, in seconds.
pub fn percentile_s(sorted_ms: &[i64], p: f64) -> Option<f64> {
    if sorted_ms.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted_ms.len() as f64).ceil() as usize;
    Some(sorted_ms[rank.clamp(1, sorted_ms.len()) - 1] as f64 / 1e3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use qscheduler_core::Time;

    fn ev(t: i64, task: u32, kind: Kind) -> LedgerEvent {
        LedgerEvent { t, task, kind }
    }

    fn workload(bots: usize, duration: i64) -> Workload {
        let (mut w, mut i) = Workload::new("p", Time::from_secs(1_000), duration, "test");
        let set = w.intern_set(&mut i, vec![]);
        for b in 0..bots {
            w.bots.push(crate::workload::Bot {
                id: format!("b{b}").into(),
                labels: set,
                from: 0,
                to: None,
            });
        }
        w
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<i64> = (1..=100).map(|x| x * 1000).collect();
        assert_eq!(percentile_s(&v, 50.0), Some(50.0));
        assert_eq!(percentile_s(&v, 99.0), Some(99.0));
        assert_eq!(percentile_s(&[7000], 99.0), Some(7.0));
        assert_eq!(percentile_s(&[], 50.0), None);
    }

    /// Waits sum the spells in the queue; a withdrawn assignment does not
    /// end a wait; usage follows reprioritisation; shares are of the
    /// fleet's availability.
    #[test]
    fn waits_usage_and_counts() {
        let w = workload(2, 100_000);
        let mut l = Ledger::new(
            vec!["a".into(), "b".into()],
            vec![Some([1.0, 0.0, 0.0, 0.0, 0.0]), None],
            100_000,
            50_000,
            3,
        );
        use Kind::*;
        // Task 0 (a): queued at 0, assigned P0 at 10 s, demoted to P1 at
        // 30 s, preempted by task 1 (b, free level... P0 for the test) at
        // 40 s, queued again at 41 s, assigned at 45 s, done at 60 s.
        l.record(ev(0, 0, Enqueued { account: 0 }));
        l.record(ev(10_000, 0, Assigned { level: 0 }));
        l.record(ev(20_000, 1, Enqueued { account: 1 }));
        l.record(ev(30_000, 0, Reprioritized { old: 0, new: 1 }));
        l.record(ev(40_000, 1, Assigned { level: 0 }));
        l.record(ev(
            40_000,
            0,
            Preempted {
                level: 1,
                by_account: Some(1),
                by_level: 0,
            },
        ));
        l.record(ev(41_000, 0, Enqueued { account: 0 }));
        l.record(ev(45_000, 0, Assigned { level: 1 }));
        l.record(ev(60_000, 0, Completed));
        // Task 2 (a): assigned at 50 s to a bot that never comes, withdrawn
        // at 70 s, assigned again at 80 s, still running at the end.
        l.record(ev(42_000, 2, Enqueued { account: 0 }));
        l.record(ev(50_000, 2, Assigned { level: 0 }));
        l.record(ev(70_000, 2, Unassigned));
        l.record(ev(80_000, 2, Assigned { level: 0 }));
        // Task 3 (b): queued at 90 s, never runs.
        l.record(ev(90_000, 3, Enqueued { account: 1 }));
        let r = l.finish(&w, "t");
        let a = &r.accounts[0];
        // Task 0 waited 10 + 4 s; task 2 waited 42→80 s = 38 s.
        assert_eq!(a.all.tasks, 2);
        assert_eq!(a.levels[0].level, "P0");
        assert_eq!(a.levels[0].tasks, 2);
        assert_eq!(a.levels[0].wait_p50_s, Some(14.0));
        assert_eq!(a.levels[0].wait_p99_s, Some(38.0));
        // P0: task 0 10→30, task 2 50→70 and 80→100: 60 s; P1: 30→40 and
        // 45→60: 25 s.
        assert_eq!(a.levels[0].used_bot_s, 60.0);
        assert_eq!(a.levels[1].used_bot_s, 25.0);
        assert_eq!(a.levels[0].entitled_bot_s, Some(100.0));
        assert_eq!(a.levels[0].used_of_entitled, Some(0.6));
        assert_eq!(a.levels[0].demoted, 1);
        assert_eq!(a.levels[1].preempted, 1);
        assert_eq!(a.all.fleet_share, 85.0 / 200.0);
        let b = &r.accounts[1];
        assert_eq!(b.levels[0].preempting, 1);
        // Task 1 runs 40→100 at P0; task 3 waits 10 s at the end.
        assert_eq!(b.levels[0].used_bot_s, 60.0);
        assert_eq!(b.all.waiting_at_end, 1);
        assert_eq!(b.all.wait_p99_s, Some(20.0));
        assert_eq!(r.counts.arrived, 4);
        assert_eq!(r.counts.started, 3);
        assert_eq!(r.counts.running_at_end, 2);
        assert_eq!(r.counts.pickup_timeouts, 1);
        assert_eq!(r.counts.preemptions, 1);
        assert_eq!(r.counts.demotions, 1);
        assert_eq!(r.fleet.available_bot_s, 200.0);
        assert_eq!(r.fleet.used_bot_s, 145.0);
        // Buckets of 50 s: a used 10→40 and 45→50 (35 s), b 40→50 (10 s);
        // then both bots are busy to the end.
        assert_eq!(r.fleet.utilisation_series, vec![0.45, 1.0]);
        assert_eq!(a.usage_series[0], 35.0 / 50.0);
    }
}
