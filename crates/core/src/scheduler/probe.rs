//! Read accessors for explanations: one task's standing, the bots that can
//! run it, and how many queued tasks compete with it.
//!
//! `crate::explain` turns these into reasons; this module only reads the
//! index and never changes it. Each accessor costs one step per matching bot
//! or one step per queued request, never a sort of the queue, so that an
//! explanation stays cheap on a pool of a million queued tasks.

use super::ids::{AccountIdx, ReqIdx, SetId, SlotId, WorkerIdx};
use super::ordset::OrdSet;
use super::{Place, QKey, QueuedView, Scheduler, labels::is_subset};
use crate::account::{Balance, FREE_PRIORITY};

/// One task as an explanation needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskProbe<'a> {
    /// The request.
    pub request: QueuedView<'a>,
    /// The bot running it (or assigned it), and the level it runs at.
    pub running: Option<(&'a str, u8)>,
    /// Running tasks and requests of its fanout group, when its account
    /// limits fanout and the group has two or more requests.
    pub fanout_group: Option<(u32, u32)>,
}

/// A bot whose labels include a task's base labels.
#[derive(Clone, Debug, PartialEq)]
pub struct BotProbe<'a> {
    /// Bot id.
    pub id: &'a str,
    /// It has the task's provisionable labels too.
    pub provisioned: bool,
    /// What it runs: (task, account, level, cost so far), or `None` if idle.
    pub running: Option<(&'a str, &'a str, u8, Balance)>,
}

/// How many queued tasks compete with one task for its bots (base labels a
/// bot that matches the task also has), and where the task stands among
/// them in the order the next pass would use: level first, then the
/// in-level order (examined time, enqueue time, id).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Standing {
    /// Competing queued tasks, the task itself excluded.
    pub competing: u64,
    /// Competitors at a better (lower) level.
    pub ahead_better_level: u64,
    /// Competitors at the same level, earlier in the in-level order.
    pub ahead_same_level: u64,
    /// Competitors that sit out the pass (free level, free tasks disabled).
    pub sitting_out: u64,
    /// `ahead_same_level` is interpolated rather than counted: the task
    /// sits deep inside a bucket too large to walk within
    /// [`STANDING_WALK_BUDGET`] steps (see [`Scheduler::standing`]).
    pub estimated: bool,
}

/// Members of same-level buckets a standing walks one by one before it
/// estimates: keeps an explanation within a few milliseconds when a
/// million tasks share one account and one label set.
pub const STANDING_WALK_BUDGET: usize = 50_000;

/// Steps a large bucket is walked even when other buckets spent the
/// budget.
const MIN_WALK: usize = 1000;

/// The keys of a bucket in order, from either end.
fn keys(set: &OrdSet<QKey>) -> Box<dyn DoubleEndedIterator<Item = &QKey> + '_> {
    match set {
        OrdSet::One(k) => Box::new(std::iter::once(k)),
        OrdSet::Small(v) => Box::new(v.iter()),
        OrdSet::Large(s) => Box::new(s.iter()),
    }
}

/// How many members of a same-level bucket come before `me` in the
/// in-level order, and whether the count is exact. `stamp` resolves the
/// bucket's settled keys. A bucket that fits the budget is counted in full;
/// a larger one is walked from both ends (stored order is the in-level
/// order), and if the budget runs out before either walk reaches `me`, the
/// unwalked middle is split by interpolating enqueue times.
fn count_before(
    members: &OrdSet<QKey>,
    stamp: i64,
    me: (i64, i64, &str),
    budget: &mut usize,
) -> (u64, bool) {
    let eff = |k: &QKey| (k.ex.explicit().unwrap_or(stamp), k.enq);
    let before = |k: &QKey| {
        let (ex, enq) = eff(k);
        (ex, enq, &*k.id) < me
    };
    let n = members.len();
    if n <= *budget {
        *budget -= n;
        return (keys(members).filter(|k| before(k)).count() as u64, true);
    }
    let steps = (*budget).max(MIN_WALK) / 2;
    *budget = budget.saturating_sub(2 * steps);
    let (mut fwd, mut back) = (keys(members), keys(members).rev());
    let (mut ahead, mut behind) = (0u64, 0u64);
    let (mut lo, mut hi) = (None, None);
    for _ in 0..steps {
        match fwd.next() {
            Some(k) if before(k) => {
                ahead += 1;
                lo = Some(eff(k).1);
            }
            _ => return (ahead, true),
        }
        match back.next() {
            Some(k) if !before(k) => {
                behind += 1;
                hi = Some(eff(k).1);
            }
            _ => return (n as u64 - behind, true),
        }
    }
    let middle = (n as u64).saturating_sub(ahead + behind);
    let frac = match (lo, hi) {
        (Some(lo), Some(hi)) if hi > lo => ((me.1 - lo) as f64 / (hi - lo) as f64).clamp(0.0, 1.0),
        _ => 0.5,
    };
    (ahead + (middle as f64 * frac).round() as u64, false)
}

impl Scheduler {
    /// The level each placement of account slot `a` takes at the next pass
    /// (`[normal, fanout-throttled]`), `None` for "sits out". Mirrors the
    /// placement step at the start of a pass.
    fn next_levels(&self, a: AccountIdx) -> [Option<u8>; 2] {
        let acc = &self.accounts[a];
        match acc.config() {
            Some(cfg) => {
                let p = acc.balance().best_priority();
                let omit = cfg.disable_free_tasks;
                let normal = (!(p == FREE_PRIORITY && omit)).then_some(p);
                [normal, (!omit).then_some(FREE_PRIORITY)]
            }
            None => [Some(FREE_PRIORITY), Some(FREE_PRIORITY)],
        }
    }

    /// Whether request slot `r` will be fanout-throttled at the next pass.
    fn next_throttled(&self, r: ReqIdx) -> bool {
        let Some(g) = self.requests[r].group.group() else {
            return false;
        };
        let group = &self.groups[g];
        let max = self.max_fanout(group.account());
        max > 0 && group.running() >= max as u32
    }

    /// The level task `id` takes at the next pass if it is still queued
    /// (`Some(None)`: it sits out), or `None` if the task is unknown.
    pub fn next_level(&self, id: &str) -> Option<Option<u8>> {
        let r = self.request_idx(id)?;
        let levels = self.next_levels(self.requests[r].account);
        Some(levels[usize::from(self.next_throttled(r))])
    }

    /// The level account `id`'s tasks (those not fanout-throttled) take at
    /// the next pass; `None` when they sit it out. Unknown accounts run at
    /// the free level.
    pub fn account_next_level(&self, id: &str) -> Option<u8> {
        match self.accounts.find(id) {
            Some(a) => self.next_levels(a)[0],
            None => Some(FREE_PRIORITY),
        }
    }

    /// Task `id` with its bot and fanout group.
    pub fn probe_task(&self, id: &str) -> Option<TaskProbe<'_>> {
        let (request, _) = self.request(id)?;
        let r = self.request_idx(id)?;
        let req = &self.requests[r];
        let running = match req.place {
            Place::Running(w) => self.workers[w]
                .running()
                .map(|run| (&**self.workers[w].id(), run.priority)),
            _ => None,
        };
        let fanout_group = req.group.group().map(|g| {
            let g = &self.groups[g];
            (g.running(), g.requests())
        });
        Some(TaskProbe {
            request,
            running,
            fanout_group,
        })
    }

    /// Worker slots whose labels include every label of set `s`, by
    /// intersecting the per-label posting lists (shortest first).
    fn workers_with_set(&self, s: SetId) -> Vec<WorkerIdx> {
        let labels = self.labels[s].labels();
        let shortest = labels.iter().min_by_key(|&&l| self.labels[l].workers.len());
        match shortest {
            None => self.workers.iter().map(|(w, _)| w).collect(),
            Some(&l) => self.labels[l]
                .workers
                .iter()
                .copied()
                .filter(|&w| is_subset(labels, &self.workers[w].labels))
                .collect(),
        }
    }

    /// The bots that have task `id`'s base labels, in bot id order.
    pub fn bots_for_task(&self, id: &str) -> Option<Vec<BotProbe<'_>>> {
        let r = self.request_idx(id)?;
        let req = &self.requests[r];
        let prov = self.labels[req.prov].labels();
        let mut out: Vec<BotProbe<'_>> = self
            .workers_with_set(req.base)
            .into_iter()
            .map(|w| {
                let worker = &self.workers[w];
                BotProbe {
                    id: worker.id(),
                    provisioned: is_subset(prov, &worker.labels),
                    running: worker.running().map(|run| {
                        let task = &self.requests[run.req];
                        (
                            &*task.id,
                            &**self.accounts[task.account].id(),
                            run.priority,
                            run.cost,
                        )
                    }),
                }
            })
            .collect();
        out.sort_unstable_by(|a, b| a.id.cmp(b.id));
        Some(out)
    }

    /// For each per-label limit key of the task's account: the label that
    /// key gives bot `bot`, and how many tasks of the account run on bots
    /// with that label. `None` if the task or bot is unknown.
    pub fn label_limit_usage(&self, id: &str, bot: &str) -> Option<Vec<(String, String, u32)>> {
        let r = self.request_idx(id)?;
        let w = self.worker_idx(bot)?;
        let a = self.requests[r].account;
        let acc = &self.accounts[a];
        let Some(cfg) = acc.config() else {
            return Some(Vec::new());
        };
        let mut out = Vec::new();
        for key in cfg.per_label_task_limits.keys() {
            let Some(label) = self.key_label(w, key) else {
                continue;
            };
            // A count, so the set's iteration order does not matter.
            let running = acc
                .running()
                .iter()
                .filter(|&&rw| self.key_label(rw, key) == Some(label))
                .count() as u32;
            out.push((key.clone(), label.to_owned(), running));
        }
        Some(out)
    }

    /// Tasks of account `id` running per level (0..=5).
    pub fn running_by_level(&self, id: &str) -> [u32; FREE_PRIORITY as usize + 1] {
        let mut out = [0; FREE_PRIORITY as usize + 1];
        if let Some(a) = self.accounts.find(id) {
            out.copy_from_slice(self.accounts[a].running_by_prio());
        }
        out
    }

    /// Worker `w`'s smallest label starting with `key`.
    fn key_label(&self, w: WorkerIdx, key: &str) -> Option<&str> {
        self.label_for_key(w, key).map(|l| &**self.labels[l].name())
    }

    /// Where queued task `id` stands among the queued tasks competing for
    /// its bots. One step per queued request; `None` if the task is not
    /// queued.
    pub fn standing(&self, id: &str) -> Option<Standing> {
        let r = self.request_idx(id)?;
        let me = &self.requests[r];
        if !matches!(me.place, Place::Queued(_)) {
            return None;
        }
        // Base sets some bot of this task can run: the candidates of every
        // matching bot, whose eligibility lists the index keeps.
        let mut competing_sets: Vec<bool> = Vec::new();
        let mut mark = |s: SetId| {
            let i = s.index();
            if competing_sets.len() <= i {
                competing_sets.resize(i + 1, false);
            }
            competing_sets[i] = true;
        };
        let bots = self.workers_with_set(me.base);
        if !bots.is_empty() {
            mark(self.labels.empty_set());
            mark(me.base);
        }
        for w in bots {
            for &s in &self.workers[w].eligible {
                mark(s);
            }
        }
        let levels: Vec<[Option<u8>; 2]> = {
            let mut v = Vec::new();
            for (a, _) in self.accounts.iter() {
                let i = a.index();
                if v.len() <= i {
                    v.resize(i + 1, [None, None]);
                }
                v[i] = self.next_levels(a);
            }
            v
        };
        let my_bucket = match me.place {
            Place::Queued(b) => b,
            _ => return None,
        };
        let my_level =
            levels[me.account.index()][usize::from(self.next_throttled(r))].unwrap_or(u8::MAX);
        let my_key = (self.examined(r).as_nanos(), me.enqueue.as_nanos(), &*me.id);
        let mut st = Standing::default();
        let mut budget = STANDING_WALK_BUDGET;
        // By bucket: every member of a bucket has the same account, labels
        // and group, so the level is decided once per bucket and only
        // buckets at the task's own level are walked member by member.
        for (b, bucket) in self.index.buckets() {
            if !competing_sets
                .get(bucket.base().index())
                .copied()
                .unwrap_or(false)
            {
                continue;
            }
            let n = bucket.members().len() as u64 - u64::from(b == my_bucket);
            if n == 0 {
                continue;
            }
            st.competing += n;
            let throttled = bucket.group().group().is_some_and(|g| {
                let g = &self.groups[g];
                let max = self.max_fanout(g.account());
                max > 0 && g.running() >= max as u32
            });
            match levels[bucket.account().index()][usize::from(throttled)] {
                None => st.sitting_out += n,
                Some(l) if l < my_level => st.ahead_better_level += n,
                Some(l) if l == my_level => {
                    let stamp = self.index.bucket_stamp(b).as_nanos();
                    let (ahead, exact) = count_before(bucket.members(), stamp, my_key, &mut budget);
                    st.ahead_same_level += ahead;
                    st.estimated |= !exact;
                }
                Some(_) => {}
            }
        }
        Some(st)
    }
}

#[cfg(test)]
mod tests {
    use super::super::ExKey;
    use super::*;
    use std::sync::Arc;

    fn bucket(n: i64) -> OrdSet<QKey> {
        OrdSet::from_sorted(
            (0..n)
                .map(|i| QKey {
                    ex: ExKey::SETTLED,
                    enq: i * 10,
                    id: Arc::from(format!("t{i:05}")),
                    req: ReqIdx::from_slot(i as u32),
                    v: Default::default(),
                })
                .collect(),
        )
    }

    #[test]
    fn small_buckets_are_counted_exactly() {
        let b = bucket(1000);
        for pos in [0i64, 1, 500, 998, 999] {
            let id = format!("t{pos:05}");
            let mut budget = 5000;
            assert_eq!(
                count_before(&b, 7, (7, pos * 10, &id), &mut budget),
                (pos as u64, true)
            );
            assert_eq!(budget, 4000);
        }
        // Examined earlier than the bucket's stamp: ahead of all of it.
        let mut budget = 5000;
        assert_eq!(
            count_before(&b, 7, (6, 99_999, "z"), &mut budget),
            (0, true)
        );
    }

    #[test]
    fn large_buckets_walk_from_both_ends_then_interpolate() {
        let b = bucket(10_000);
        for pos in [0i64, 3, 9996, 9999] {
            let id = format!("t{pos:05}");
            let mut budget = 20;
            assert_eq!(
                count_before(&b, 7, (7, pos * 10, &id), &mut budget),
                (pos as u64, true),
                "{pos}"
            );
        }
        // Deep inside: estimated from enqueue times (uniform here, so the
        // estimate is close).
        let mut budget = 20;
        let (n, exact) = count_before(&b, 7, (7, 50_000, "t05000"), &mut budget);
        assert!(!exact);
        assert!((4990..=5010).contains(&n), "{n}");
    }
}
