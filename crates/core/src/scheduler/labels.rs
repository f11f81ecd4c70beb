//! Label and label-set interning: names live once, sets are sorted label
//! ids shared by requests, and a set used by a request is "active", which
//! registers it for eligibility (`eligibility.rs`).
//!
//! Invariants: a label's `refs` counts the workers and sets holding it, a
//! set's `refs` the requests and groups holding it, and `req_refs` the
//! requests using it; nothing with a zero count is kept (but the empty
//! set, which lives forever).

use super::idmap::hash_ids;
use super::*;
use crate::event::Labels;
use std::sync::Arc;

/// `small ⊆ big` for sorted, duplicate-free slices.
pub(crate) fn is_subset(small: &[u32], big: &[u32]) -> bool {
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

impl Scheduler {
    // ---------------------------------------------------------------- labels

    pub(crate) fn intern_label(&mut self, name: &str) -> u32 {
        if let Some(&l) = self.label_ids.get(name) {
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
        self.label_ids.insert(name, l);
        l
    }

    pub(crate) fn release_label(&mut self, l: u32) {
        let e = &mut self.labels[l];
        e.refs -= 1;
        if e.refs == 0 {
            let name = e.name.clone();
            self.label_ids.remove(&name);
            self.labels.remove(l);
        }
    }

    /// Interns each label (one reference each), sorted and without
    /// duplicates.
    pub(super) fn intern_labels(&mut self, names: &[String]) -> Vec<u32> {
        let mut ids: Vec<u32> = names.iter().map(|n| self.intern_label(n)).collect();
        ids.sort_unstable();
        let mut out: Vec<u32> = Vec::with_capacity(ids.len());
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
    pub(super) fn name_order(&self, ids: &[u32]) -> Box<[u32]> {
        let mut v = ids.to_vec();
        v.sort_unstable_by(|&a, &b| self.labels[a].name.cmp(&self.labels[b].name));
        v.into_boxed_slice()
    }

    /// A worker's label names, sorted.
    pub(crate) fn worker_names(&self, w: u32) -> Labels {
        self.workers[w]
            .by_name
            .iter()
            .map(|&l| self.labels[l].name.clone())
            .collect()
    }

    pub(crate) fn sorted_names(&self, ids: &[u32]) -> Labels {
        let mut names: Vec<Arc<str>> = ids.iter().map(|&l| self.labels[l].name.clone()).collect();
        names.sort_unstable();
        names.into()
    }

    // ------------------------------------------------------------------ sets

    /// A set's label names, sorted. Built on demand (for events and views)
    /// rather than kept: with many distinct label sets, a names list per set
    /// cost more memory than the rest of the set.
    pub(crate) fn set_names(&self, s: u32) -> Labels {
        self.sorted_names(&self.sets[s].labels)
    }

    /// Interns a set given as sorted, distinct label ids whose references
    /// the caller hands over. Returns the set with one new reference.
    pub(crate) fn intern_set_ids(&mut self, ids: Vec<u32>) -> u32 {
        let hash = hash_ids(ids.iter().copied());
        let sets = &self.sets;
        if let Some(s) = self.set_ids.get(hash, |s| *sets[s].labels == *ids) {
            for l in ids {
                self.release_label(l);
            }
            self.sets[s].refs += 1;
            return s;
        }
        let labels: Box<[u32]> = ids.into_boxed_slice();
        let s = self.sets.insert(SetEntry {
            labels,
            refs: 1,
            queued_base: 0,
            queued_prov: 0,
            req_refs: 0,
            anchor: NO_ANCHOR,
            cell: CellRef::NONE,
        });
        let sets = &self.sets;
        self.set_ids
            .insert(hash, s, |x| hash_ids(sets[x].labels.iter().copied()));
        s
    }

    pub(crate) fn intern_set(&mut self, names: &[String]) -> u32 {
        let ids = self.intern_labels(names);
        self.intern_set_ids(ids)
    }

    pub(crate) fn release_set(&mut self, s: u32) {
        let e = &mut self.sets[s];
        e.refs -= 1;
        if e.refs == 0 && s != self.empty_set {
            debug_assert!(!e.active());
            self.set_ids.remove(hash_ids(e.labels.iter().copied()), s);
            let labels = self.sets.remove(s).map(|e| e.labels).unwrap_or_default();
            for &l in labels.iter() {
                self.release_label(l);
            }
        }
    }

    // ----------------------------------------------------------- eligibility

    /// Counts a queued request's use of a set as base or provisionable
    /// labels.
    pub(super) fn set_queued(&mut self, s: u32, as_base: bool, add: bool) {
        let e = &mut self.sets[s];
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
    pub(super) fn set_request_ref(&mut self, s: u32, add: bool) {
        let e = &mut self.sets[s];
        let was_active = e.active();
        if add {
            e.req_refs += 1;
        } else {
            e.req_refs -= 1;
        }
        let active = e.active();
        if s == self.empty_set || active == was_active {
            return;
        }
        if active {
            self.activate_set(s);
        } else {
            self.deactivate_set(s);
        }
    }
}
