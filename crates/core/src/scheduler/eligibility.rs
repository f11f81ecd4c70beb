//! Eligibility: which active label sets each idle worker can run.
//!
//! A pass looks, for an idle worker, only at the cells of the base sets its
//! labels include, so it needs each idle worker's list of such sets. Keeping
//! that list for every worker at all times, as an earlier version did,
//! compared each new set with the workers sharing one of its labels and
//! each new worker with the sets registered under each of its labels: with
//! many distinct label sets that is (workers × sets) work spread over adding
//! requests and workers, and all of it again when a snapshot is decoded.
//!
//! Here the list is **lazy**: a worker gets one when a pass first looks for
//! work for it (`list_worker`): when it is idle, or a candidate for
//! preemption. It keeps the list (new and vanishing sets update it) until
//! it leaves or changes labels, or starts a task while the pool does not
//! preempt (then only idle workers need lists). Adding a request, adding a
//! worker and decoding a snapshot therefore cost time in proportion to
//! their own labels; the lists are built by passes, for the workers that
//! need them.
//!
//! To build a list without scanning every set, each active non-empty set is
//! registered under an **anchor pair** of its labels `(a, b)` (`a == b` for
//! a set of one label), in `a`'s `anchored` table keyed by `b`. A set can
//! only be eligible for a worker that has both labels, so a worker looks at
//! the pairs of its own labels: for each of its labels `a`, either the
//! entries under `a` whose `b` it has, or, when `a` holds many entries, a
//! lookup of each of its labels as `b`. The anchor pair is the set's two
//! labels that the fewest workers have when the set appears, so that few
//! workers ever look at it. Each entry also carries a third label of the
//! set, so that a worker with the pair but not that label skips the set
//! without reading its labels (a cache miss per set). Registering under one label instead of two
//! leaves every worker looking at about `labels × sets / distinct labels`
//! sets, which is what made the earlier version quadratic.
//!
//! The invariants (checked by `check_invariants`):
//!
//! * a listed worker is idle or the pool preempts, and its `eligible` list
//!   holds exactly the active non-empty sets its labels include; an
//!   unlisted worker's list is empty;
//! * a label's `workers` are exactly the listed workers with that label,
//!   sorted; its `worker_count` counts every worker with it;
//! * an active non-empty set is in exactly one `anchored` table, under the
//!   pair its `anchor` names; an inactive set has none.

use std::num::NonZeroU32;

use super::Scheduler;
use super::ids::{LabelId, SetId, WorkerIdx};
use super::labels::is_subset;

/// Above this many entries per label of the worker, a label's `anchored`
/// table is probed by the worker's labels instead of being read in full.
/// Reading is sequential and probing is not, so reading wins up to tables
/// many times longer than the worker's label list.
const SCAN_PER_LABEL: usize = 64;

/// The positions in a set's labels of its two anchor labels
/// (`SetEntry::anchor`), packed in four bytes that `Option` does not grow:
/// every label set carries one. Positions past `u16::MAX - 1` are never
/// chosen (see `anchor_positions`), so the packing is exact and the packed
/// value is never `u32::MAX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Anchor(NonZeroU32);

impl Anchor {
    fn new(i: usize, j: usize) -> Anchor {
        let narrow = |x: usize| u32::from(u16::try_from(x).unwrap_or(u16::MAX - 1));
        let packed = (narrow(i) << 16) | narrow(j);
        // `packed < u32::MAX`, so its complement is not zero.
        Anchor(NonZeroU32::new(!packed).unwrap_or(NonZeroU32::MIN))
    }

    fn positions(self) -> (usize, usize) {
        let x = !self.0.get();
        ((x >> 16) as usize, (x & 0xffff) as usize)
    }
}

/// The common elements of two sorted, duplicate-free lists; searches the
/// longer one when it is much longer than the other.
fn intersect_sorted<T: Ord + Copy>(a: &[T], b: &[T]) -> Vec<T> {
    let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    let mut out = Vec::new();
    if short.len().saturating_mul(16) < long.len() {
        let mut rest = long;
        for &x in short {
            match rest.binary_search(&x) {
                Ok(i) => {
                    out.push(x);
                    rest = &rest[i + 1..];
                }
                Err(i) => rest = &rest[i..],
            }
        }
        return out;
    }
    let (mut i, mut j) = (0, 0);
    while i < short.len() && j < long.len() {
        match short[i].cmp(&long[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(short[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out
}

impl Scheduler {
    /// The positions of the two labels of `labels` (non-empty) that the
    /// fewest workers have, then the fewest active sets use.
    fn anchor_positions(&self, labels: &[LabelId]) -> (usize, usize) {
        let key = |i: usize| {
            let l = labels[i];
            let e = &self.labels[l];
            (e.worker_count, e.active_sets, l)
        };
        let n = labels.len().min(usize::from(u16::MAX));
        let (mut first, mut second) = (0, None::<usize>);
        for i in 1..n {
            if key(i) < key(first) {
                second = Some(first);
                first = i;
            } else if second.is_none_or(|j| key(i) < key(j)) {
                second = Some(i);
            }
        }
        (first, second.unwrap_or(first))
    }

    /// A set becomes active: register it under its anchor pair and add it
    /// to the listed workers that can run it.
    pub(crate) fn activate_set(&mut self, s: SetId) {
        let labels = self.labels[s].labels().to_vec();
        if labels.is_empty() {
            return;
        }
        let (i, j) = self.anchor_positions(&labels);
        // A third label rides along, so that a worker lacking it skips the
        // set without reading the set's labels.
        let third = (0..labels.len().min(usize::from(u16::MAX)))
            .filter(|&k| k != i && k != j)
            .min_by_key(|&k| {
                let e = &self.labels[labels[k]];
                (e.worker_count, e.active_sets, labels[k])
            })
            .map_or(labels[j], |k| labels[k]);
        for &l in labels.iter() {
            self.labels[l].active_sets += 1;
        }
        self.labels[s].anchor = Some(Anchor::new(i, j));
        let anchored = &mut self.labels[labels[i]].anchored;
        let key = (labels[j], s);
        if let Some(touched) = &mut self.deferred_anchoring {
            anchored.push((labels[j], s, third));
            touched.push(labels[i]);
        } else if let Err(k) = anchored.binary_search_by_key(&key, |&(b, x, _)| (b, x)) {
            anchored.insert(k, (labels[j], s, third));
        }
        for w in self.listed_candidates(&labels) {
            let worker = &mut self.workers[w];
            if is_subset(&labels, &worker.labels) {
                worker.eligible.push(s);
            }
        }
    }

    /// The listed workers that have the two labels of `labels` (non-empty)
    /// with the fewest listed workers: a superset of those that can run the
    /// set, found by merging two sorted lists rather than by reading every
    /// candidate's labels.
    fn listed_candidates(&self, labels: &[LabelId]) -> Vec<WorkerIdx> {
        let listed = |l: LabelId| &self.labels[l].workers;
        let mut two: [Option<&Vec<WorkerIdx>>; 2] = [None, None];
        for &l in labels {
            let v = listed(l);
            match two {
                [None, _] => two[0] = Some(v),
                [Some(a), _] if v.len() < a.len() => two = [Some(v), Some(a)],
                [Some(_), None] => two[1] = Some(v),
                [Some(_), Some(b)] if v.len() < b.len() => two[1] = Some(v),
                _ => {}
            }
        }
        match two {
            [Some(a), None] => a.clone(),
            [Some(a), Some(b)] => intersect_sorted(a, b),
            _ => Vec::new(),
        }
    }

    /// Starts a bulk load: until [`Scheduler::finish_bulk_anchoring`],
    /// newly active sets are appended to their anchor tables unsorted.
    /// Only for a pool without workers, and nothing may read or remove
    /// anchors until the load is finished.
    pub(crate) fn start_bulk_anchoring(&mut self) {
        debug_assert!(self.workers.len() == 0, "bulk anchoring with workers");
        self.deferred_anchoring = Some(Vec::new());
    }

    /// Ends a bulk load: sorts the anchor tables it appended to.
    pub(crate) fn finish_bulk_anchoring(&mut self) {
        let Some(mut touched) = self.deferred_anchoring.take() else {
            return;
        };
        touched.sort_unstable();
        touched.dedup();
        for l in touched {
            self.labels[l].anchored.sort_unstable();
        }
    }

    /// A set stops being active: the reverse of [`Scheduler::activate_set`].
    pub(crate) fn deactivate_set(&mut self, s: SetId) {
        debug_assert!(self.deferred_anchoring.is_none(), "a bulk load removes");
        let Some(anchor) = self.labels[s].anchor.take() else {
            return;
        };
        let labels = self.labels[s].labels().to_vec();
        let (i, j) = anchor.positions();
        let anchored = &mut self.labels[labels[i]].anchored;
        if let Ok(k) = anchored.binary_search_by_key(&(labels[j], s), |&(b, x, _)| (b, x)) {
            anchored.remove(k);
            if anchored.capacity() > 4 * anchored.len() {
                anchored.shrink_to(2 * anchored.len());
            }
        }
        for &l in labels.iter() {
            self.labels[l].active_sets -= 1;
        }
        for w in self.listed_candidates(&labels) {
            let worker = &mut self.workers[w];
            if is_subset(&labels, &worker.labels)
                && let Some(k) = worker.eligible.iter().position(|&x| x == s)
            {
                worker.eligible.swap_remove(k);
            }
        }
    }

    /// The active non-empty sets that `labels` (sorted) include, through
    /// the anchor pairs of those labels.
    fn eligible_sets(&self, labels: &[LabelId]) -> Vec<SetId> {
        let mut out = Vec::new();
        let mut offer = |s: SetId, third: LabelId| {
            if labels.binary_search(&third).is_ok() && is_subset(self.labels[s].labels(), labels) {
                out.push(s);
            }
        };
        for &a in labels {
            let anchored = &self.labels[a].anchored;
            if anchored.is_empty() {
                continue;
            }
            if anchored.len() <= SCAN_PER_LABEL * labels.len() {
                // Both sides are sorted by label: a merge join.
                let mut rest = labels;
                for &(b, s, third) in anchored {
                    while rest.first().is_some_and(|&l| l < b) {
                        rest = &rest[1..];
                    }
                    match rest.first() {
                        Some(&l) if l == b => offer(s, third),
                        Some(_) => {}
                        None => break,
                    }
                }
            } else {
                let mut rest = &anchored[..];
                for &b in labels {
                    rest = &rest[rest.partition_point(|&(x, _, _)| x < b)..];
                    let n = rest.partition_point(|&(x, _, _)| x == b);
                    for &(_, s, third) in &rest[..n] {
                        offer(s, third);
                    }
                    rest = &rest[n..];
                }
            }
        }
        out
    }

    /// Gives idle worker `w` its eligible list, if it has none.
    pub(crate) fn list_worker(&mut self, w: WorkerIdx) {
        if self.workers[w].listed {
            return;
        }
        let labels = self.workers[w].labels.clone();
        let eligible = self.eligible_sets(&labels);
        for &l in labels.iter() {
            let workers = &mut self.labels[l].workers;
            if let Err(i) = workers.binary_search(&w) {
                workers.insert(i, w);
            }
        }
        let worker = &mut self.workers[w];
        worker.eligible = eligible;
        worker.listed = true;
    }

    /// Drops worker `w`'s eligible list, if it has one.
    pub(crate) fn unlist_worker(&mut self, w: WorkerIdx) {
        if !self.workers[w].listed {
            return;
        }
        let labels = self.workers[w].labels.clone();
        for &l in labels.iter() {
            let workers = &mut self.labels[l].workers;
            if let Ok(i) = workers.binary_search(&w) {
                workers.remove(i);
                if workers.capacity() > 4 * workers.len() {
                    workers.shrink_to(2 * workers.len());
                }
            }
        }
        let worker = &mut self.workers[w];
        worker.eligible = Vec::new();
        worker.listed = false;
    }

    /// Counts worker `w`'s labels (`add`) or stops counting them, for
    /// anchor choices.
    pub(crate) fn count_worker_labels(&mut self, w: WorkerIdx, add: bool) {
        for &l in self.workers[w].labels.iter() {
            let e = &mut self.labels[l];
            if add {
                e.worker_count += 1;
            } else {
                e.worker_count -= 1;
            }
        }
    }
}

#[cfg(any(test, debug_assertions))]
impl Scheduler {
    /// Recomputes eligibility from scratch and compares.
    pub(crate) fn check_eligibility(&self) {
        use std::collections::BTreeMap;
        let mut counts: BTreeMap<LabelId, u32> = BTreeMap::new();
        let mut listed: BTreeMap<LabelId, Vec<WorkerIdx>> = BTreeMap::new();
        for (w, worker) in self.workers.iter() {
            for &l in worker.labels.iter() {
                *counts.entry(l).or_default() += 1;
                if worker.listed {
                    listed.entry(l).or_default().push(w);
                }
            }
            if !worker.listed {
                assert!(
                    worker.eligible.is_empty(),
                    "unlisted worker {}",
                    worker.id()
                );
                continue;
            }
            assert!(
                worker.running().is_none() || !self.settings.disable_preemption,
                "listed worker {} runs without preemption",
                worker.id()
            );
            let mut want: Vec<SetId> = self
                .labels
                .iter_sets()
                .filter(|(s, e)| {
                    *s != self.labels.empty_set()
                        && e.active()
                        && is_subset(e.labels(), &worker.labels)
                })
                .map(|(s, _)| s)
                .collect();
            let mut have = worker.eligible.clone();
            want.sort_unstable();
            have.sort_unstable();
            assert_eq!(have, want, "eligible sets of worker {}", worker.id());
        }
        let mut anchored = 0;
        for (l, e) in self.labels.iter_labels() {
            assert_eq!(e.worker_count, counts.get(&l).copied().unwrap_or(0));
            let want = listed.remove(&l).unwrap_or_default();
            assert_eq!(e.workers, want, "listed workers of label {l}");
            assert!(
                e.anchored.windows(2).all(|p| p[0] < p[1]),
                "anchored table of label {l} not sorted"
            );
            anchored += e.anchored.len();
        }
        let mut active = 0;
        for (s, e) in self.labels.iter_sets() {
            let anchor = match e.anchor {
                _ if !e.active() || e.labels().is_empty() => {
                    assert_eq!(e.anchor, None, "anchor of inactive set {s}");
                    continue;
                }
                Some(anchor) => anchor,
                None => panic!("active set {s} without an anchor"),
            };
            active += 1;
            let (i, j) = anchor.positions();
            let table = &self.labels[e.labels()[i]].anchored;
            let k = table.binary_search_by_key(&(e.labels()[j], s), |&(b, x, _)| (b, x));
            assert!(k.is_ok(), "set {s} not under its anchor pair");
            if let Ok(k) = k {
                assert!(
                    e.labels().binary_search(&table[k].2).is_ok(),
                    "third label of set {s} not in the set"
                );
            }
        }
        assert_eq!(anchored, active, "anchored sets");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intersections() {
        assert_eq!(intersect_sorted(&[1, 3, 5], &[2, 3, 4, 5]), vec![3, 5]);
        let long: Vec<u32> = (0..1000).map(|x| x * 2).collect();
        assert_eq!(intersect_sorted(&[3, 4, 1998, 2000], &long), vec![4, 1998]);
        assert_eq!(intersect_sorted(&long, &[]), Vec::<u32>::new());
    }

    #[test]
    fn anchors_pack() {
        assert_eq!(Anchor::new(3, 70).positions(), (3, 70));
        assert_eq!(Anchor::new(65_534, 0).positions(), (65_534, 0));
        assert_eq!(Anchor::new(65_534, 65_534).positions(), (65_534, 65_534));
        assert_eq!(std::mem::size_of::<Option<Anchor>>(), 4);
    }
}
