//! Label and label-set interning: names live once, sets are sorted label
//! ids shared by requests, workers keep label ids.
//!
//! [`LabelTable`] owns both tables and is the only code that creates,
//! counts or frees their entries; the rest of the scheduler holds ids and
//! references handed out by it. Each entry also carries data that other
//! parts keep about it (eligibility's anchors and listed workers, the queue
//! index's cell and counts); those fields are theirs, and the table only
//! stores them.
//!
//! Invariants (`LabelTable::check_invariants`): a label's reference count
//! is the number of workers and sets holding it, a set's the number of
//! requests and fanout groups holding it (plus one for the empty set, which
//! lives forever); nothing with a count of zero is kept; every entry is
//! found by its name or labels; a set's labels are sorted and distinct.

use std::sync::Arc;

use rustc_hash::FxHashMap;

use super::Scheduler;
use super::eligibility::Anchor;
use super::idmap::{SlotIndex, hash_ids};
use super::ids::{CellRef, LabelId, SetId, SlotId, WorkerIdx};
use super::slab::Slab;
use crate::event::Labels;

/// `small ⊆ big` for sorted, duplicate-free slices.
pub(crate) fn is_subset<T: Ord>(small: &[T], big: &[T]) -> bool {
    if small.len() > big.len() {
        return false;
    }
    let mut rest = big;
    for x in small {
        match rest.binary_search(x) {
            Ok(i) => rest = &rest[i + 1..],
            Err(_) => return false,
        }
    }
    true
}

/// The hash of a sorted label-id sequence, as the set index keys it.
fn hash_labels(ids: &[LabelId]) -> u64 {
    hash_ids(ids.iter().map(|l| l.slot()))
}

/// An interned label.
#[derive(Clone, Debug)]
pub(crate) struct LabelEntry {
    name: Arc<str>,
    /// Workers and label sets holding this label.
    refs: u32,
    /// Workers that have this label and keep an eligible list (see
    /// `eligibility`), sorted. A sorted vector costs half what a hash set
    /// does per entry; the price, a shift on insert and removal, is paid
    /// only when such a worker comes or goes.
    pub(crate) workers: Vec<WorkerIdx>,
    /// Workers that have this label, whether or not they keep an eligible
    /// list (to pick good anchors).
    pub(crate) worker_count: u32,
    /// Active label sets anchored at this label, as (second anchor label,
    /// set, a third label of the set or the second again), sorted: see
    /// `eligibility`. A sorted vector rather than a tree
    /// because listing a worker reads these tables end to end, which a
    /// vector does at memory speed; anchors are spread over the rarest
    /// labels, which keeps each table short.
    pub(crate) anchored: Vec<(LabelId, SetId, LabelId)>,
    /// Active label sets containing this label (to pick good anchors).
    pub(crate) active_sets: u32,
}

impl LabelEntry {
    pub(crate) fn name(&self) -> &Arc<str> {
        &self.name
    }
}

/// An interned label set (sorted label ids).
#[derive(Clone, Debug)]
pub(crate) struct SetEntry {
    labels: Box<[LabelId]>,
    /// Requests and groups holding this set.
    refs: u32,
    /// Queued requests with this set as base labels.
    pub(crate) queued_base: u32,
    /// Queued requests with this set as provisionable labels.
    pub(crate) queued_prov: u32,
    /// Requests (queued or running) with this set as base or provisionable
    /// labels. While positive the set is "active": registered for
    /// eligibility. Counting running requests too keeps sets from flapping
    /// in and out as their last queued request comes and goes.
    pub(crate) req_refs: u32,
    /// While active: the positions in `labels` of the two labels under
    /// which the set is registered for eligibility (see `eligibility`).
    pub(crate) anchor: Option<Anchor>,
    /// While some placement has an entry with this base set: its cell.
    /// Stored here for the queue index, which alone sets it.
    pub(crate) cell: CellRef,
}

impl SetEntry {
    /// The set's label ids, sorted.
    pub(crate) fn labels(&self) -> &[LabelId] {
        &self.labels
    }

    pub(crate) fn active(&self) -> bool {
        self.req_refs > 0
    }
}

/// The label and label-set tables (see the module docs).
#[derive(Clone, Debug)]
pub(crate) struct LabelTable {
    ids: FxHashMap<Arc<str>, LabelId>,
    labels: Slab<LabelId, LabelEntry>,
    set_ids: SlotIndex<SetId>,
    sets: Slab<SetId, SetEntry>,
    empty: SetId,
}

impl Default for LabelTable {
    fn default() -> Self {
        let mut t = LabelTable {
            ids: FxHashMap::default(),
            labels: Slab::default(),
            set_ids: SlotIndex::default(),
            sets: Slab::default(),
            empty: SetId::from_slot(0),
        };
        // The empty set lives forever: it is everybody's subset.
        t.empty = t.intern_set_ids(Vec::new());
        t
    }
}

impl std::ops::Index<LabelId> for LabelTable {
    type Output = LabelEntry;
    fn index(&self, l: LabelId) -> &LabelEntry {
        &self.labels[l]
    }
}

impl std::ops::IndexMut<LabelId> for LabelTable {
    fn index_mut(&mut self, l: LabelId) -> &mut LabelEntry {
        &mut self.labels[l]
    }
}

impl std::ops::Index<SetId> for LabelTable {
    type Output = SetEntry;
    fn index(&self, s: SetId) -> &SetEntry {
        &self.sets[s]
    }
}

impl std::ops::IndexMut<SetId> for LabelTable {
    fn index_mut(&mut self, s: SetId) -> &mut SetEntry {
        &mut self.sets[s]
    }
}

impl LabelTable {
    /// The empty set, which every worker can run.
    pub(crate) fn empty_set(&self) -> SetId {
        self.empty
    }

    /// Labels in slot order.
    #[cfg(any(test, debug_assertions))]
    pub(crate) fn iter_labels(&self) -> impl Iterator<Item = (LabelId, &LabelEntry)> {
        self.labels.iter()
    }

    /// Sets in slot order.
    pub(crate) fn iter_sets(&self) -> impl Iterator<Item = (SetId, &SetEntry)> {
        self.sets.iter()
    }

    /// Interns a label; the caller holds one new reference.
    pub(crate) fn intern_label(&mut self, name: &str) -> LabelId {
        if let Some(&l) = self.ids.get(name) {
            self.labels[l].refs += 1;
            return l;
        }
        let name: Arc<str> = Arc::from(name);
        let l = self.labels.insert(LabelEntry {
            name: name.clone(),
            refs: 1,
            workers: Vec::new(),
            worker_count: 0,
            anchored: Vec::new(),
            active_sets: 0,
        });
        self.ids.insert(name, l);
        l
    }

    /// Takes one more reference to a label.
    pub(crate) fn retain_label(&mut self, l: LabelId) {
        self.labels[l].refs += 1;
    }

    /// Gives back one reference to a label, freeing it with the last.
    pub(crate) fn release_label(&mut self, l: LabelId) {
        let e = &mut self.labels[l];
        e.refs -= 1;
        if e.refs == 0 {
            let name = e.name.clone();
            self.ids.remove(&name);
            self.labels.remove(l);
        }
    }

    /// Interns each label (one reference each), sorted and without
    /// duplicates.
    pub(crate) fn intern_labels(&mut self, names: &[String]) -> Vec<LabelId> {
        let mut ids: Vec<LabelId> = names.iter().map(|n| self.intern_label(n)).collect();
        ids.sort_unstable();
        let mut out: Vec<LabelId> = Vec::with_capacity(ids.len());
        for l in ids {
            if out.last() == Some(&l) {
                self.release_label(l);
            } else {
                out.push(l);
            }
        }
        out
    }

    /// Label ids sorted by name.
    pub(crate) fn name_order(&self, ids: &[LabelId]) -> Box<[LabelId]> {
        let mut v = ids.to_vec();
        v.sort_unstable_by(|&a, &b| self.labels[a].name.cmp(&self.labels[b].name));
        v.into_boxed_slice()
    }

    /// The names of labels, sorted.
    pub(crate) fn sorted_names(&self, ids: &[LabelId]) -> Labels {
        let mut names: Vec<Arc<str>> = ids.iter().map(|&l| self.labels[l].name.clone()).collect();
        names.sort_unstable();
        names.into()
    }

    /// A set's label names, sorted. Built on demand (for events and views)
    /// rather than kept: with many distinct label sets, a names list per set
    /// cost more memory than the rest of the set.
    pub(crate) fn set_names(&self, s: SetId) -> Labels {
        self.sorted_names(&self.sets[s].labels)
    }

    /// Interns a set given as sorted, distinct label ids whose references
    /// the caller hands over. Returns the set with one new reference.
    /// Makes room for `additional` more sets (a bulk load).
    pub(crate) fn reserve_sets(&mut self, additional: usize) {
        let sets = &self.sets;
        self.set_ids
            .reserve(additional, |x| hash_labels(&sets[x].labels));
    }

    pub(crate) fn intern_set_ids(&mut self, ids: Vec<LabelId>) -> SetId {
        let hash = hash_labels(&ids);
        let sets = &self.sets;
        if let Some(s) = self.set_ids.get(hash, |s| *sets[s].labels == *ids) {
            for l in ids {
                self.release_label(l);
            }
            self.sets[s].refs += 1;
            return s;
        }
        let labels: Box<[LabelId]> = ids.into_boxed_slice();
        let s = self.sets.insert(SetEntry {
            labels,
            refs: 1,
            queued_base: 0,
            queued_prov: 0,
            req_refs: 0,
            anchor: None,
            cell: CellRef::NONE,
        });
        let sets = &self.sets;
        self.set_ids
            .insert(hash, s, |x| hash_labels(&sets[x].labels));
        s
    }

    /// Interns a set of label names; the caller holds one new reference.
    pub(crate) fn intern_set(&mut self, names: &[String]) -> SetId {
        let ids = self.intern_labels(names);
        self.intern_set_ids(ids)
    }

    /// Takes one more reference to a set.
    pub(crate) fn retain_set(&mut self, s: SetId) {
        self.sets[s].refs += 1;
    }

    /// Gives back one reference to a set, freeing it (and its references
    /// to its labels) with the last, unless it is the empty set. A set is
    /// never freed while active: requests hold it.
    pub(crate) fn release_set(&mut self, s: SetId) {
        let e = &mut self.sets[s];
        e.refs -= 1;
        if e.refs == 0 && s != self.empty {
            debug_assert!(!e.active());
            self.set_ids.remove(hash_labels(&e.labels), s);
            let labels = self.sets.remove(s).map(|e| e.labels).unwrap_or_default();
            for &l in labels.iter() {
                self.release_label(l);
            }
        }
    }

    /// Checks the tables against their holders: `label_holders` lists the
    /// label ids of every worker, `set_refs` the references requests and
    /// groups hold to each set.
    #[cfg(any(test, debug_assertions))]
    pub(crate) fn check_invariants<'a>(
        &self,
        label_holders: impl IntoIterator<Item = &'a [LabelId]>,
        set_refs: &std::collections::BTreeMap<SetId, u32>,
    ) {
        use std::collections::BTreeMap;
        assert_eq!(self.ids.len(), self.labels.len(), "label index entries");
        for (name, &l) in &self.ids {
            assert_eq!(self.labels[l].name, *name, "label {l} under another name");
        }
        let mut label_refs: BTreeMap<LabelId, u32> = BTreeMap::new();
        for labels in label_holders {
            for &l in labels {
                *label_refs.entry(l).or_default() += 1;
            }
        }
        assert_eq!(self.set_ids.len(), self.sets.len(), "set index entries");
        for (s, e) in self.sets.iter() {
            assert!(
                e.labels.windows(2).all(|p| p[0] < p[1]),
                "labels of set {s} not sorted and distinct"
            );
            let hash = hash_labels(&e.labels);
            assert_eq!(
                self.set_ids.get(hash, |x| x == s),
                Some(s),
                "set {s} not indexed"
            );
            for &l in e.labels.iter() {
                *label_refs.entry(l).or_default() += 1;
            }
            let held = set_refs.get(&s).copied().unwrap_or(0) + u32::from(s == self.empty);
            assert_eq!(e.refs, held, "references to set {s}");
            assert!(e.refs > 0, "set {s} kept without references");
        }
        assert!(self.sets[self.empty].labels.is_empty(), "the empty set");
        for (l, e) in self.labels.iter() {
            let held = label_refs.get(&l).copied().unwrap_or(0);
            assert_eq!(e.refs, held, "references to label {l}");
            assert!(e.refs > 0, "label {l} kept without references");
        }
    }
}

impl Scheduler {
    /// A worker's label names, sorted.
    pub(crate) fn worker_names(&self, w: WorkerIdx) -> Labels {
        self.workers[w]
            .by_name
            .iter()
            .map(|&l| self.labels[l].name.clone())
            .collect()
    }

    /// A set's label names, sorted.
    pub(crate) fn set_names(&self, s: SetId) -> Labels {
        self.labels.set_names(s)
    }

    // ----------------------------------------------------------- eligibility

    /// Counts a queued request's use of a set as base or provisionable
    /// labels.
    pub(super) fn set_queued(&mut self, s: SetId, as_base: bool, add: bool) {
        let e = &mut self.labels[s];
        let n = if as_base {
            &mut e.queued_base
        } else {
            &mut e.queued_prov
        };
        if add {
            *n += 1;
        } else {
            *n -= 1;
        }
    }

    /// Counts a request's use of a set (queued or running), registering
    /// the set for eligibility while it is used at all.
    pub(super) fn set_request_ref(&mut self, s: SetId, add: bool) {
        let e = &mut self.labels[s];
        let was_active = e.active();
        if add {
            e.req_refs += 1;
        } else {
            e.req_refs -= 1;
        }
        let active = e.active();
        if s == self.labels.empty_set() || active == was_active {
            return;
        }
        if active {
            self.activate_set(s);
        } else {
            self.deactivate_set(s);
        }
    }
}
