//! Rolling per-account figures of each pool, for `AccountReport`, the
//! `PoolOverview` history and the dashboard.
//!
//! The pool writer reports every committed batch's events to [`Reports`]
//! (an [`Observer`], like the metrics); each event updates one minute
//! bucket of one account in constant time, and once a minute (pool time)
//! the configured accounts' balances are sampled. A pool keeps at most
//! [`RETAINED_MINUTES`] buckets (seven days) in a ring indexed by minute, so
//! its memory is bounded whatever the traffic; a report merges the buckets
//! of its window.
//!
//! The figures survive a restart and a move to another replica the way the
//! pool itself does: each snapshot of the pool carries an image of its
//! figures at the snapshot's seq (the store keeps it beside the snapshot,
//! see [`Observer::snapshot_extra`]), and recovery replays the log records
//! after the snapshot through the figures as well as through the pool
//! ([`Observer::recovering`]). The figures are a function of the events,
//! and the events of the commands, so the rebuilt figures are those the
//! writer had (balance samples may fall a record or two apart, as the
//! writer samples after a batch and recovery after each record). The log
//! alone could not rebuild seven days: it is compacted at every snapshot.
//! Taking the image costs the writer one `Arc` clone per stored minute at
//! each snapshot (the minutes are shared, copied on their next write);
//! encoding runs on the snapshot's thread. A pool whose snapshot has no
//! image (written before images existed, or damaged) starts from the log
//! after it, and `covered_secs` says how much of a window the figures
//! cover. Times are pool times (the scheduler's clock), never the wall
//! clock, so a report is a pure function of the events seen.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use qscheduler_core::{EventKind, FREE_PRIORITY, NUM_PRIORITIES, Pool, PoolEvent, Time};

use crate::pool::{CommitInfo, ExtraImage, Observer, Recovering};

/// Nanoseconds per bucket.
pub const MINUTE_NANOS: i64 = 60_000_000_000;
/// Buckets kept per pool: seven days of minutes.
pub const RETAINED_MINUTES: usize = 7 * 24 * 60;
/// Levels, the free one included.
const LEVELS: usize = NUM_PRIORITIES + 1;
/// Wait histogram buckets: four per doubling, from 1 s to beyond 46 hours.
const WAIT_BUCKETS: usize = 72;

/// The histogram bucket of a wait: 0 below one second, then four buckets
/// per doubling.
fn wait_bucket(secs: f64) -> u8 {
    if secs < 1.0 {
        return 0;
    }
    ((secs.log2() * 4.0).floor() as usize + 1).min(WAIT_BUCKETS - 1) as u8
}

/// The upper bound of a wait bucket, seconds.
fn wait_bucket_upper(b: usize) -> f64 {
    if b == 0 {
        1.0
    } else {
        2f64.powf(b as f64 / 4.0)
    }
}

/// One account's events in one minute.
#[derive(Clone, Debug, Default, PartialEq)]
struct AccountMinute {
    /// Quota charged for tasks that finished, per paid level.
    used: [f64; NUM_PRIORITIES],
    assigned: [u32; LEVELS],
    /// (level, wait bucket, count).
    waits: Vec<(u8, u8, u32)>,
    promotions: u32,
    demotions: u32,
    preempted: u32,
    preempting: u32,
    refunds: u32,
    refunded: f64,
    completed: u32,
    /// Seconds the account spent with no positive balance, attributed to
    /// the minute of the sample that saw it so.
    free_secs: f64,
    /// Balance sampled in this minute.
    balance: Option<[f32; NUM_PRIORITIES]>,
}

/// The pool's counts in one minute.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolMinute {
    /// Tasks assigned.
    pub assigned: u64,
    /// Running tasks that finished.
    pub completed: u64,
    /// Tasks preempted.
    pub preempted: u64,
    /// Tasks enqueued.
    pub enqueued: u64,
}

#[derive(Clone, Debug, PartialEq)]
struct Minute {
    minute: i64,
    pool: PoolMinute,
    accounts: Vec<(Arc<str>, AccountMinute)>,
}

impl Minute {
    fn account(&mut self, id: &Arc<str>) -> &mut AccountMinute {
        // Linear: a minute holds the few accounts active in it.
        match self.accounts.iter().position(|(a, _)| a == id) {
            Some(i) => &mut self.accounts[i].1,
            None => {
                self.accounts.push((id.clone(), AccountMinute::default()));
                let last = self.accounts.len() - 1;
                &mut self.accounts[last].1
            }
        }
    }
}

/// One pool's rolling figures.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolFigures {
    /// Shared with the images snapshots take; copied on write.
    ring: Vec<Option<Arc<Minute>>>,
    /// The first minute seen.
    first: Option<i64>,
    /// The last balance sample: its time and the accounts then at the free
    /// level.
    last_sample: Option<(Time, Vec<Arc<str>>)>,
}

impl Default for PoolFigures {
    fn default() -> Self {
        PoolFigures {
            ring: vec![None; RETAINED_MINUTES],
            first: None,
            last_sample: None,
        }
    }
}

fn minute_of(t: Time) -> i64 {
    t.as_nanos().div_euclid(MINUTE_NANOS)
}

impl PoolFigures {
    /// The bucket of minute `m`, replacing one more than seven days older.
    fn minute(&mut self, m: i64) -> &mut Minute {
        self.first = Some(self.first.map_or(m, |f| f.min(m)));
        let slot = &mut self.ring[m.rem_euclid(RETAINED_MINUTES as i64) as usize];
        if slot.as_ref().is_none_or(|b| b.minute != m) {
            *slot = Some(Arc::new(Minute {
                minute: m,
                pool: PoolMinute::default(),
                accounts: Vec::new(),
            }));
        }
        // Just filled when empty or stale.
        match slot {
            Some(b) => Arc::make_mut(b),
            None => unreachable!("slot filled above"),
        }
    }

    /// Records one committed batch: its events, then a balance sample if a
    /// new minute of pool time began. Constant work per event; the sample
    /// costs one step per configured account, once a minute.
    pub fn record(&mut self, events: &[PoolEvent], pool: &Pool) {
        for pe in events {
            let e = &pe.event;
            let m = minute_of(e.time);
            match &e.kind {
                EventKind::Enqueued { .. } => self.minute(m).pool.enqueued += 1,
                EventKind::Assigned { priority, .. } => {
                    let wait = pool
                        .scheduler()
                        .request(&e.task_id)
                        .map(|(q, _)| e.time.nanos_since(q.enqueue_time).max(0) as f64 / 1e9);
                    let minute = self.minute(m);
                    minute.pool.assigned += 1;
                    let acc = minute.account(&e.account_id);
                    let level = (*priority).min(FREE_PRIORITY);
                    acc.assigned[usize::from(level)] += 1;
                    if let Some(w) = wait {
                        let b = wait_bucket(w);
                        match acc.waits.iter_mut().find(|x| x.0 == level && x.1 == b) {
                            Some(x) => x.2 += 1,
                            None => acc.waits.push((level, b, 1)),
                        }
                    }
                }
                EventKind::Preempted {
                    preempting_account_id,
                    ..
                } => {
                    let minute = self.minute(m);
                    minute.pool.preempted += 1;
                    let acc = minute.account(&e.account_id);
                    acc.preempted += 1;
                    if e.account_valid {
                        acc.refunds += 1;
                        acc.refunded += e
                            .cost
                            .map_or(0.0, |c| c.0.iter().map(|&v| f64::from(v)).sum());
                    }
                    minute.account(preempting_account_id).preempting += 1;
                }
                EventKind::Reprioritized {
                    old_priority,
                    new_priority,
                } => {
                    let acc = self.minute(m).account(&e.account_id);
                    if new_priority < old_priority {
                        acc.promotions += 1;
                    } else {
                        acc.demotions += 1;
                    }
                }
                EventKind::Completed { .. } => {
                    // Only a task that ran has a cost: a queued task that
                    // went away is not a completion.
                    if let Some(cost) = e.cost {
                        let minute = self.minute(m);
                        minute.pool.completed += 1;
                        let acc = minute.account(&e.account_id);
                        acc.completed += 1;
                        for (u, c) in acc.used.iter_mut().zip(cost.0) {
                            *u += f64::from(c);
                        }
                    }
                }
                EventKind::Unassigned => {}
            }
        }
        self.sample(pool);
    }

    /// Samples balances at most once per minute of pool time.
    fn sample(&mut self, pool: &Pool) {
        let s = pool.scheduler();
        let now = s.now();
        if let Some((t, _)) = &self.last_sample
            && minute_of(*t) >= minute_of(now)
        {
            return;
        }
        if let Some((t, free)) = self.last_sample.take() {
            // The state seen at the last sample held until now; a gap of
            // more than an hour (an idle pool) counts as one hour.
            let secs = (now.nanos_since(t) as f64 / 1e9).clamp(0.0, 3600.0);
            let minute = self.minute(minute_of(t));
            for a in &free {
                minute.account(a).free_secs += secs;
            }
        }
        let m = minute_of(now);
        let mut free = Vec::new();
        let mut samples = Vec::new();
        for (id, _, balance) in s.accounts() {
            let id: Arc<str> = Arc::from(id);
            if balance.best_priority() == FREE_PRIORITY {
                free.push(id.clone());
            }
            samples.push((id, balance.0));
        }
        let minute = self.minute(m);
        for (id, b) in samples {
            minute.account(&id).balance = Some(b);
        }
        self.last_sample = Some((now, free));
    }

    /// Pool counts per minute from `from` to `to` (inclusive), oldest
    /// first; minutes without events are left out.
    pub fn minutes(&self, from: Time, to: Time) -> Vec<(Time, PoolMinute)> {
        let mut out: Vec<(Time, PoolMinute)> = self
            .in_window(from, to)
            .map(|b| (Time::from_nanos(b.minute * MINUTE_NANOS), b.pool))
            .collect();
        out.sort_unstable_by_key(|(t, _)| *t);
        out
    }

    /// Balance samples of each account from `from` to `to`, oldest first.
    pub fn balances(
        &self,
        from: Time,
        to: Time,
    ) -> BTreeMap<String, Vec<(Time, [f32; NUM_PRIORITIES])>> {
        let mut out: BTreeMap<String, Vec<(Time, [f32; NUM_PRIORITIES])>> = BTreeMap::new();
        for b in self.in_window(from, to) {
            for (id, a) in &b.accounts {
                if let Some(bal) = a.balance {
                    out.entry(id.to_string())
                        .or_default()
                        .push((Time::from_nanos(b.minute * MINUTE_NANOS), bal));
                }
            }
        }
        for v in out.values_mut() {
            v.sort_unstable_by_key(|(t, _)| *t);
        }
        out
    }

    fn in_window(&self, from: Time, to: Time) -> impl Iterator<Item = &Minute> {
        let (lo, hi) = (minute_of(from), minute_of(to));
        self.ring
            .iter()
            .flatten()
            .map(|b| &**b)
            .filter(move |b| b.minute >= lo && b.minute <= hi)
    }

    /// The report for the window ending at `now`, `window_secs` long
    /// (whole minutes), with the accounts' configurations for entitlements.
    pub fn report(&self, now: Time, window_secs: i64, pool: &Pool) -> Report {
        let window_minutes = (window_secs / 60).clamp(1, RETAINED_MINUTES as i64);
        let end = minute_of(now);
        let start = end - window_minutes + 1;
        let covered_minutes = match self.first {
            Some(f) => (end - f.max(start) + 1).max(0),
            None => 0,
        };
        let covered = covered_minutes as f64 * 60.0;
        let mut acc: BTreeMap<String, Totals> = BTreeMap::new();
        for (id, _, _) in pool.scheduler().accounts() {
            acc.entry(id.to_owned()).or_default();
        }
        let from = Time::from_nanos(start.saturating_mul(MINUTE_NANOS));
        for b in self.in_window(from, now) {
            for (id, a) in &b.accounts {
                acc.entry(id.to_string()).or_default().add(a);
            }
        }
        let mut pool_used = [0.0f64; NUM_PRIORITIES];
        for t in acc.values() {
            for (p, u) in pool_used.iter_mut().zip(t.used) {
                *p += u;
            }
        }
        let pool_total: f64 = pool_used.iter().sum();
        let share = |u: f64, total: f64| if total > 0.0 { u / total } else { 0.0 };
        let s = pool.scheduler();
        let accounts = acc
            .into_iter()
            .map(|(id, t)| {
                let cfg = s.account_config(&id);
                let levels = (0..LEVELS)
                    .map(|p| {
                        let (entitlement, cap) = match (cfg, p < NUM_PRIORITIES) {
                            (Some(c), true) => (
                                f64::from(c.charge_rate[p]) * covered,
                                f64::from(c.charge_rate[p]) * f64::from(c.max_charge_seconds),
                            ),
                            _ => (0.0, 0.0),
                        };
                        let used = if p < NUM_PRIORITIES { t.used[p] } else { 0.0 };
                        LevelFigures {
                            level: p as u8,
                            entitlement,
                            balance_cap: cap,
                            used,
                            share: if p < NUM_PRIORITIES {
                                share(used, pool_used[p])
                            } else {
                                0.0
                            },
                            assigned: t.assigned[p],
                            wait: Percentiles::of(&t.waits[p]),
                        }
                    })
                    .collect();
                let used: f64 = t.used.iter().sum();
                AccountFigures {
                    account: id,
                    levels,
                    used,
                    share: share(used, pool_total),
                    free_level_secs: t.free_secs,
                    promotions: t.promotions,
                    demotions: t.demotions,
                    preemptions_suffered: t.preempted,
                    preemptions_caused: t.preempting,
                    refunds: t.refunds,
                    refunded: t.refunded,
                    completed: t.completed,
                }
            })
            .collect();
        Report {
            window_start: from,
            window_end: now,
            window_secs: window_minutes * 60,
            covered_secs: covered,
            pool_used: pool_total,
            accounts,
        }
    }
}

/// Sums over a window.
#[derive(Clone, Debug)]
struct Totals {
    used: [f64; NUM_PRIORITIES],
    assigned: [u64; LEVELS],
    waits: [[u64; WAIT_BUCKETS]; LEVELS],
    promotions: u64,
    demotions: u64,
    preempted: u64,
    preempting: u64,
    refunds: u64,
    refunded: f64,
    completed: u64,
    free_secs: f64,
}

impl Default for Totals {
    fn default() -> Self {
        Totals {
            used: [0.0; NUM_PRIORITIES],
            assigned: [0; LEVELS],
            waits: [[0; WAIT_BUCKETS]; LEVELS],
            promotions: 0,
            demotions: 0,
            preempted: 0,
            preempting: 0,
            refunds: 0,
            refunded: 0.0,
            completed: 0,
            free_secs: 0.0,
        }
    }
}

impl Totals {
    fn add(&mut self, a: &AccountMinute) {
        for (t, u) in self.used.iter_mut().zip(a.used) {
            *t += u;
        }
        for (t, n) in self.assigned.iter_mut().zip(a.assigned) {
            *t += u64::from(n);
        }
        for &(l, b, n) in &a.waits {
            self.waits[usize::from(l)][usize::from(b)] += u64::from(n);
        }
        self.promotions += u64::from(a.promotions);
        self.demotions += u64::from(a.demotions);
        self.preempted += u64::from(a.preempted);
        self.preempting += u64::from(a.preempting);
        self.refunds += u64::from(a.refunds);
        self.refunded += a.refunded;
        self.completed += u64::from(a.completed);
        self.free_secs += a.free_secs;
    }
}

/// Wait percentiles from a histogram: each the upper bound of the bucket
/// holding it (four buckets per doubling, so within 19% above).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Percentiles {
    /// Waits counted.
    pub count: u64,
    /// Median, seconds.
    pub p50: f64,
    /// 95th percentile, seconds.
    pub p95: f64,
    /// 99th percentile, seconds.
    pub p99: f64,
}

impl Percentiles {
    fn of(h: &[u64; WAIT_BUCKETS]) -> Percentiles {
        let count: u64 = h.iter().sum();
        if count == 0 {
            return Percentiles::default();
        }
        let at = |q: f64| {
            let rank = ((q * count as f64).ceil() as u64).max(1);
            let mut seen = 0;
            for (b, &n) in h.iter().enumerate() {
                seen += n;
                if seen >= rank {
                    return wait_bucket_upper(b);
                }
            }
            wait_bucket_upper(WAIT_BUCKETS - 1)
        };
        Percentiles {
            count,
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
        }
    }
}

/// One level of one account over a window.
#[derive(Clone, Debug, PartialEq)]
pub struct LevelFigures {
    /// 0..=4 paid, 5 free.
    pub level: u8,
    /// Charge rate × covered time, bot-seconds.
    pub entitlement: f64,
    /// Charge rate × max_charge_seconds.
    pub balance_cap: f64,
    /// Quota charged for tasks that finished in the window.
    pub used: f64,
    /// Of the pool's use at this level.
    pub share: f64,
    /// Tasks assigned at this level.
    pub assigned: u64,
    /// Their waits.
    pub wait: Percentiles,
}

/// One account over a window.
#[derive(Clone, Debug, PartialEq)]
pub struct AccountFigures {
    /// Account id.
    pub account: String,
    /// Levels 0..=5.
    pub levels: Vec<LevelFigures>,
    /// Bot-seconds charged, all levels.
    pub used: f64,
    /// Of the pool's use.
    pub share: f64,
    /// Seconds with no positive balance.
    pub free_level_secs: f64,
    /// Running tasks moved up.
    pub promotions: u64,
    /// Running tasks moved down.
    pub demotions: u64,
    /// Its tasks preempted.
    pub preemptions_suffered: u64,
    /// Tasks it preempted.
    pub preemptions_caused: u64,
    /// Refunded preemptions.
    pub refunds: u64,
    /// Bot-seconds refunded.
    pub refunded: f64,
    /// Tasks that ran and finished.
    pub completed: u64,
}

/// A pool's figures over a window.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// Start of the window (minute-aligned).
    pub window_start: Time,
    /// End (the pool's time).
    pub window_end: Time,
    /// Length, seconds.
    pub window_secs: i64,
    /// The part the server has figures for.
    pub covered_secs: f64,
    /// Bot-seconds charged in the pool.
    pub pool_used: f64,
    /// Accounts, by id.
    pub accounts: Vec<AccountFigures>,
}

type PoolMap = Mutex<HashMap<String, Arc<Mutex<PoolFigures>>>>;

/// Every pool's figures: the observer that feeds them and the map reads
/// use.
#[derive(Default)]
pub struct Reports {
    pools: Arc<PoolMap>,
}

impl Reports {
    /// No pools yet.
    pub fn new() -> Arc<Reports> {
        Arc::new(Reports::default())
    }

    /// Pool `id`'s figures, if any batch was seen.
    pub fn pool(&self, id: &str) -> Option<Arc<Mutex<PoolFigures>>> {
        lock(&self.pools).get(id).cloned()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Observer for Reports {
    fn committed(&self, pool: &str, commit: &CommitInfo<'_>) {
        let figures = {
            let mut pools = lock(&self.pools);
            match pools.get(pool) {
                Some(f) => f.clone(),
                None => {
                    let f = Arc::new(Mutex::new(PoolFigures::default()));
                    pools.insert(pool.to_owned(), f.clone());
                    f
                }
            }
        };
        lock(&figures).record(commit.events, commit.pool);
    }

    fn pool_deleted(&self, pool: &str) {
        lock(&self.pools).remove(pool);
    }

    fn snapshot_extra(&self, pool: &str) -> Option<ExtraImage> {
        let figures = self.pool(pool)?;
        let image = image::Image::of(&lock(&figures));
        Some(Box::new(move || image.encode()))
    }

    fn recovering(&self, pool: &str, extra: Option<&[u8]>) -> Option<Box<dyn Recovering>> {
        let figures = match extra.map(image::decode) {
            Some(Ok(f)) => f,
            Some(Err(e)) => {
                tracing::warn!(pool, error = %e, "the report figures stored with the snapshot do not decode; they start from the log after it");
                PoolFigures::default()
            }
            None => PoolFigures::default(),
        };
        Some(Box::new(Rebuild {
            pools: self.pools.clone(),
            pool: pool.to_owned(),
            figures,
        }))
    }
}

/// A pool's figures being brought to the end of its log while it recovers.
struct Rebuild {
    pools: Arc<PoolMap>,
    pool: String,
    figures: PoolFigures,
}

impl Recovering for Rebuild {
    fn replayed(&mut self, events: &[PoolEvent], pool: &Pool) {
        self.figures.record(events, pool);
    }

    /// Replaces what this process had: the stored figures and the log are
    /// the truth (the pool may have been served elsewhere meanwhile).
    fn finish(self: Box<Self>) {
        let Rebuild {
            pools,
            pool,
            figures,
        } = *self;
        lock(&pools).insert(pool, Arc::new(Mutex::new(figures)));
    }
}

mod image;

#[cfg(test)]
mod tests;
