//! Interning, eligibility and the queue index (see the parent module's docs).
//!
//! Everything here maintains derived structures; none of it decides what the
//! scheduler does. The invariants, checked by `check_invariants` in tests:
//!
//! * a queued request is a member of exactly one bucket, the one for its
//!   (account, base set, provisionable set), placed in its account's normal
//!   or throttled placement according to its fanout group;
//! * a placement has one entry per base set: a lone bucket, or a container
//!   of two or more buckets whose `heads` are their heads; a base set's cell
//!   is derived from its only entry, or stored and holding the head of every
//!   entry, whatever its placement's level;
//! * a worker's `eligible` list holds exactly the active non-empty sets its
//!   labels include;
//! * a request key is settled (`ex == SETTLED`) iff its examined time equals
//!   the last pass's time, and explicit keys are strictly earlier.

use std::sync::Arc;

use rustc_hash::FxHashSet;

use super::idmap::hash_ids;
use super::slab::Slab;
use super::{
    Account, Bucket, CONTAINER_TAG, Cell, CellKind, CellRef, Container, Group, LEVELS, LONE,
    LabelEntry, NO_ANCHOR, NO_CONTAINER, NO_GROUP, Place, QKey, Request, SETTLED, Scheduler,
    SetEntry, TaskRun, Virt, Worker, has_group,
};
use crate::account::{AccountConfig, Balance};
use crate::event::Labels;
use crate::time::Time;
use smallvec::SmallVec;

/// The sorted, distinct union of two sorted, distinct label-id slices.
fn union_ids<'a>(a: &'a [u32], b: &'a [u32]) -> impl Iterator<Item = u32> + 'a {
    let (mut a, mut b) = (a.iter().copied().peekable(), b.iter().copied().peekable());
    std::iter::from_fn(move || match (a.peek().copied(), b.peek().copied()) {
        (Some(x), Some(y)) if x == y => {
            a.next();
            b.next()
        }
        (Some(x), Some(y)) if x < y => a.next(),
        (Some(_), Some(_)) | (None, Some(_)) => b.next(),
        (Some(_), None) => a.next(),
        (None, None) => None,
    })
}

/// Whether two (base, provisionable) set pairs have the same label union.
fn same_union(sets: &Slab<SetEntry>, x: (u32, u32), y: (u32, u32)) -> bool {
    union_ids(&sets[x.0].labels, &sets[x.1].labels)
        .eq(union_ids(&sets[y.0].labels, &sets[y.1].labels))
}

/// The hash of a fanout group's key: its account and label union.
fn group_hash(sets: &Slab<SetEntry>, a: u32, base: u32, prov: u32) -> u64 {
    hash_ids(std::iter::once(a).chain(union_ids(&sets[base].labels, &sets[prov].labels)))
}

/// Marks a lone request's slot in `group_ids`.
const LONE_TAG: u32 = 1 << 31;

fn lone_slot(r: u32) -> u32 {
    assert!(r < LONE_TAG, "request index out of range");
    r | LONE_TAG
}

/// The (account, base, provisionable) sets that key an entry of the group
/// index: a group, or a lone request (tagged).
fn group_key_of(groups: &Slab<Group>, requests: &Slab<Request>, x: u32) -> (u32, u32, u32) {
    if x & LONE_TAG != 0 {
        let req = &requests[x & !LONE_TAG];
        (req.account, req.base, req.prov)
    } else {
        let g = &groups[x];
        (g.account, g.base, g.prov)
    }
}

/// The hash of an entry of the group index: a group or a lone request.
fn group_slot_hash(
    sets: &Slab<SetEntry>,
    groups: &Slab<Group>,
    requests: &Slab<Request>,
    x: u32,
) -> u64 {
    let (a, base, prov) = group_key_of(groups, requests, x);
    group_hash(sets, a, base, prov)
}

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
            anchored: std::collections::BTreeSet::new(),
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
    fn intern_labels(&mut self, names: &[String]) -> Vec<u32> {
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
    fn name_order(&self, ids: &[u32]) -> Box<[u32]> {
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
    fn set_queued(&mut self, s: u32, as_base: bool, add: bool) {
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
    fn set_request_ref(&mut self, s: u32, add: bool) {
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

    // --------------------------------------------------------------- workers

    /// Creates an idle worker.
    pub(crate) fn create_worker(
        &mut self,
        id: &str,
        labels: &[String],
        confirmed: Time,
        modified: Time,
    ) -> u32 {
        let ids = self.intern_labels(labels);
        self.create_worker_interned(id, ids, confirmed, modified)
    }

    /// Creates an idle worker from sorted, distinct label ids whose
    /// references the caller hands over.
    pub(crate) fn create_worker_interned(
        &mut self,
        id: &str,
        ids: Vec<u32>,
        confirmed: Time,
        modified: Time,
    ) -> u32 {
        let by_name = self.name_order(&ids);
        let id: Arc<str> = Arc::from(id);
        let w = self.workers.insert(Worker {
            id: id.clone(),
            labels: ids.into_boxed_slice(),
            by_name,
            confirmed,
            modified,
            running: None,
            eligible: Vec::new(),
            listed: false,
        });
        let workers = &self.workers;
        self.worker_ids.insert(&id, w, |x| &workers[x].id);
        self.attach_worker_labels(w);
        self.make_idle(w);
        w
    }

    fn attach_worker_labels(&mut self, w: u32) {
        self.count_worker_labels(w, true);
    }

    fn detach_worker_labels(&mut self, w: u32) {
        self.unlist_worker(w);
        self.count_worker_labels(w, false);
        let labels = std::mem::take(&mut self.workers[w].labels);
        for &l in labels.iter() {
            self.release_label(l);
        }
    }

    /// Replaces a worker's labels; returns true if the set changed.
    pub(crate) fn set_worker_labels(&mut self, w: u32, labels: &[String]) -> bool {
        let ids = self.intern_labels(labels);
        if *ids == *self.workers[w].labels {
            for l in ids {
                self.release_label(l);
            }
            return false;
        }
        self.detach_worker_labels(w);
        self.workers[w].by_name = self.name_order(&ids);
        self.workers[w].labels = ids.into_boxed_slice();
        self.attach_worker_labels(w);
        true
    }

    pub(crate) fn make_idle(&mut self, w: u32) {
        let worker = &self.workers[w];
        self.idle.insert(worker.id.clone(), w);
        self.idle_expiry.insert((worker.confirmed, w));
    }

    fn unmake_idle(&mut self, w: u32) {
        if self.settings.disable_preemption {
            // Only idle workers and preemption candidates need their list.
            self.unlist_worker(w);
        }
        let worker = &self.workers[w];
        self.idle.remove(&worker.id);
        self.idle_expiry.remove(&(worker.confirmed, w));
    }

    /// `confirm(W, t)`: moves the confirmed time forward.
    pub(crate) fn confirm_worker(&mut self, w: u32, t: Time) {
        let worker = &self.workers[w];
        if t <= worker.confirmed {
            return;
        }
        let idle = worker.running.is_none();
        if idle {
            self.idle_expiry.remove(&(worker.confirmed, w));
            self.idle_expiry.insert((t, w));
        }
        self.workers[w].confirmed = t;
    }

    /// Forgets a worker and the request it runs (no events).
    pub(crate) fn delete_worker(&mut self, w: u32) {
        if self.workers[w].running.is_some() {
            let r = self.stop_task(w);
            self.free_request(r);
        } else {
            self.unmake_idle(w);
        }
        self.detach_worker_labels(w);
        let id = self.workers[w].id.clone();
        let workers = &self.workers;
        self.worker_ids.remove(&id, |x| &workers[x].id);
        self.workers.remove(w);
    }

    /// The later of the worker's and its running request's confirmed times.
    pub(crate) fn latest_confirmed(&self, w: u32) -> Time {
        let worker = &self.workers[w];
        match &worker.running {
            Some(run) => worker.confirmed.max(self.requests[run.req].confirmed),
            None => worker.confirmed,
        }
    }

    // -------------------------------------------------------------- accounts

    pub(crate) fn account_get_or_create(&mut self, id: &str) -> u32 {
        if let Some(&a) = self.account_ids.get(id) {
            return a;
        }
        let id: Arc<str> = Arc::from(id);
        let a = self.accounts.insert(Account {
            id: id.clone(),
            config: None,
            balance: Balance::ZERO,
            balance_listed: false,
            requests: 0,
            running_by_prio: [0; LEVELS],
            running: FxHashSet::default(),
            virt: [
                Virt {
                    level: crate::account::FREE_PRIORITY,
                    ..Virt::default()
                },
                Virt {
                    level: crate::account::FREE_PRIORITY,
                    ..Virt::default()
                },
            ],
        });
        self.account_ids.insert(id, a);
        a
    }

    pub(crate) fn account_maybe_free(&mut self, a: u32) {
        let acc = &self.accounts[a];
        if acc.requests == 0 && acc.config.is_none() {
            debug_assert!(acc.virt.iter().all(|v| v.entries.is_empty()));
            let id = acc.id.clone();
            self.account_ids.remove(&id);
            self.accounts.remove(a);
        }
    }

    pub(crate) fn set_account_config(&mut self, a: u32, config: Option<AccountConfig>) {
        let fanout = |c: &Option<AccountConfig>| c.as_ref().map_or(0, |c| c.max_fanout);
        let acc = &mut self.accounts[a];
        let fanout_changed = fanout(&acc.config) != fanout(&config);
        match &config {
            Some(_) => {
                self.configured.insert(acc.id.clone(), a);
            }
            None => {
                self.configured.remove(&acc.id);
            }
        }
        let (old, new) = (fanout(&acc.config), fanout(&config));
        acc.config = config;
        if !fanout_changed {
            return;
        }
        if old <= 0 && new > 0 {
            self.build_groups(a);
        } else if old > 0 && new <= 0 {
            self.drop_groups(a);
            return;
        }
        // Only the groups marked here: `dirty_groups` may also list
        // groups freed since they were marked.
        let stale: Vec<u32> = self
            .groups
            .iter()
            .filter(|(_, group)| group.account == a && !group.dirty)
            .map(|(g, _)| g)
            .collect();
        for g in stale {
            self.groups[g].dirty = true;
            self.dirty_groups.push(g);
        }
    }

    /// An account starts using fanout: puts each of its requests in its
    /// group.
    fn build_groups(&mut self, a: u32) {
        let reqs: Vec<u32> = self
            .requests
            .iter()
            .filter(|(_, r)| r.account == a)
            .map(|(r, _)| r)
            .collect();
        for r in reqs {
            let place = self.requests[r].place;
            let g = self.group_ref(r);
            self.requests[r].group = g;
            match place {
                Place::Running(_) if has_group(g) => self.groups[g].running += 1,
                Place::Queued(b) => {
                    if self.buckets[b].group == NO_GROUP {
                        self.buckets[b].group = g;
                        if has_group(g) {
                            self.groups[g].buckets.push(b);
                        }
                    }
                }
                Place::Running(_) | Place::Detached => {}
            }
        }
    }

    /// An account stops using fanout: throttling ends and its groups go.
    fn drop_groups(&mut self, a: u32) {
        let groups: Vec<u32> = self
            .groups
            .iter()
            .filter(|(_, g)| g.account == a)
            .map(|(g, _)| g)
            .collect();
        for &g in &groups {
            self.set_group_throttled(g, false);
            for b in std::mem::take(&mut self.groups[g].buckets) {
                self.buckets[b].group = NO_GROUP;
            }
            self.groups[g].running = 0;
        }
        let reqs: Vec<u32> = self
            .requests
            .iter()
            .filter(|(_, r)| r.account == a && r.group != NO_GROUP)
            .map(|(r, _)| r)
            .collect();
        for r in reqs {
            if self.requests[r].group == LONE {
                self.lone_forget(r);
                if let Place::Queued(b) = self.requests[r].place {
                    self.buckets[b].group = NO_GROUP;
                }
            } else {
                self.group_unref(self.requests[r].group);
            }
            self.requests[r].group = NO_GROUP;
        }
    }

    pub(crate) fn max_fanout(&self, a: u32) -> i32 {
        self.accounts[a].config.as_ref().map_or(0, |c| c.max_fanout)
    }

    // -------------------------------------------------------------- requests

    /// Creates a detached request (not queued, not running).
    // One argument per stored field reads better at the call sites (new
    // requests and snapshot loading) than a one-off struct.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn create_request(
        &mut self,
        id: &str,
        account: &str,
        base_labels: &[String],
        provisionable_labels: &[String],
        enqueue: Time,
        confirmed: Time,
        examined: Time,
    ) -> u32 {
        let a = self.account_get_or_create(account);
        let base = self.intern_set(base_labels);
        let prov = self.intern_set(provisionable_labels);
        self.create_request_interned(id, a, base, prov, enqueue, confirmed, examined)
    }

    /// Creates a detached request from interned parts; takes over one
    /// reference to each of `base` and `prov`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn create_request_interned(
        &mut self,
        id: &str,
        a: u32,
        base: u32,
        prov: u32,
        enqueue: Time,
        confirmed: Time,
        examined: Time,
    ) -> u32 {
        self.accounts[a].requests += 1;
        self.set_request_ref(base, true);
        self.set_request_ref(prov, true);
        let id: Arc<str> = Arc::from(id);
        let r = self.requests.insert(Request {
            id: id.clone(),
            account: a,
            base,
            prov,
            group: NO_GROUP,
            enqueue,
            confirmed,
            examined,
            place: Place::Detached,
        });
        let requests = &self.requests;
        self.request_ids.insert(&id, r, |x| &requests[x].id);
        if self.max_fanout(a) > 0 {
            self.requests[r].group = self.group_ref(r);
        }
        r
    }

    /// Forgets a detached request.
    pub(crate) fn free_request(&mut self, r: u32) {
        let Some(id) = self.requests.get(r).map(|req| req.id.clone()) else {
            return;
        };
        match self.requests[r].group {
            NO_GROUP => {}
            // Before its sets go: they make its key.
            LONE => self.lone_forget(r),
            g => self.group_unref(g),
        }
        let requests = &self.requests;
        self.request_ids.remove(&id, |x| &requests[x].id);
        let Some(req) = self.requests.remove(r) else {
            return;
        };
        debug_assert_eq!(req.place, Place::Detached);
        self.set_request_ref(req.base, false);
        self.set_request_ref(req.prov, false);
        self.release_set(req.base);
        self.release_set(req.prov);
        self.accounts[req.account].requests -= 1;
        self.account_maybe_free(req.account);
    }

    /// The request's examined time, resolving the settled marker.
    pub(crate) fn examined(&self, r: u32) -> Time {
        let req = &self.requests[r];
        match req.place {
            Place::Queued(b) if req.settled() => self.virt(self.buckets[b].virt).stamp,
            _ => req.examined,
        }
    }

    fn qkey(&self, r: u32) -> QKey {
        let req = &self.requests[r];
        QKey {
            ex: if req.settled() {
                SETTLED
            } else {
                req.examined.as_nanos()
            },
            enq: req.enqueue.as_nanos(),
            id: req.id.clone(),
            req: r,
            v: 0,
        }
    }

    /// The effective examined time encoded in a key.
    pub(crate) fn key_examined(&self, k: &QKey) -> i64 {
        if k.ex == SETTLED {
            self.last_pass.as_nanos()
        } else {
            k.ex
        }
    }

    // ---------------------------------------------------------------- groups

    /// The fanout group of request `r` (of an account with fanout): groups
    /// are keyed by account and the union of base and provisionable labels
    /// (reference §6.14), compared exactly. A group holds a reference to the
    /// sets of the request that created it and recomputes the union from
    /// them when needed, rather than interning the union as a set of its own.
    ///
    /// The first request with a key gets [`LONE`] and is indexed itself; the
    /// second builds the group for both.
    fn group_ref(&mut self, r: u32) -> u32 {
        let (a, base, prov) = {
            let req = &self.requests[r];
            (req.account, req.base, req.prov)
        };
        let hash = group_hash(&self.sets, a, base, prov);
        let (sets, groups, requests) = (&self.sets, &self.groups, &self.requests);
        let found = self.group_ids.get(hash, |x| {
            let (xa, xbase, xprov) = group_key_of(groups, requests, x);
            xa == a && same_union(sets, (xbase, xprov), (base, prov))
        });
        let Some(x) = found else {
            let (sets, groups, requests) = (&self.sets, &self.groups, &self.requests);
            self.group_ids.insert(hash, lone_slot(r), |x| {
                group_slot_hash(sets, groups, requests, x)
            });
            return LONE;
        };
        if x & LONE_TAG == 0 {
            self.groups[x].requests += 1;
            return x;
        }
        // A second request with the key of a lone one: build their group.
        let r0 = x & !LONE_TAG;
        self.group_ids.remove(hash, x);
        let (base0, prov0, place0) = {
            let req = &self.requests[r0];
            (req.base, req.prov, req.place)
        };
        self.sets[base0].refs += 1;
        self.sets[prov0].refs += 1;
        let g = self.groups.insert(Group {
            account: a,
            base: base0,
            prov: prov0,
            requests: 2,
            running: u32::from(matches!(place0, Place::Running(_))),
            buckets: SmallVec::new(),
            throttled: false,
            dirty: false,
            pass_stamp: 0,
            pass_base: 0,
            pass_assigned: 0,
        });
        self.requests[r0].group = g;
        if let Place::Queued(b0) = place0 {
            self.buckets[b0].group = g;
            self.groups[g].buckets.push(b0);
        }
        // Throttling follows the running count from the next pass on, as
        // for any group whose running count changed.
        self.mark_group_dirty(g);
        let (sets, groups, requests) = (&self.sets, &self.groups, &self.requests);
        self.group_ids
            .insert(hash, g, |x| group_slot_hash(sets, groups, requests, x));
        g
    }

    /// Takes lone request `r` out of the group index.
    fn lone_forget(&mut self, r: u32) {
        let hash = group_slot_hash(&self.sets, &self.groups, &self.requests, lone_slot(r));
        self.group_ids.remove(hash, lone_slot(r));
    }

    fn group_unref(&mut self, g: u32) {
        let group = &mut self.groups[g];
        group.requests -= 1;
        if group.requests == 0 {
            debug_assert!(group.buckets.is_empty() && group.running == 0);
            let (a, base, prov) = (group.account, group.base, group.prov);
            self.group_ids
                .remove(group_hash(&self.sets, a, base, prov), g);
            self.groups.remove(g);
            self.release_set(base);
            self.release_set(prov);
        }
    }

    fn mark_group_dirty(&mut self, g: u32) {
        if !has_group(g) {
            return;
        }
        let group = &self.groups[g];
        if !group.dirty && self.max_fanout_of(group.account) > 0 {
            self.groups[g].dirty = true;
            self.dirty_groups.push(g);
        }
    }

    fn max_fanout_of(&self, a: u32) -> i32 {
        self.accounts
            .get(a)
            .and_then(|acc| acc.config.as_ref())
            .map_or(0, |c| c.max_fanout)
    }

    /// Moves a group's buckets to its account's normal or throttled
    /// placement.
    pub(crate) fn set_group_throttled(&mut self, g: u32, throttled: bool) {
        if self.groups[g].throttled == throttled {
            return;
        }
        self.groups[g].throttled = throttled;
        let v = self.groups[g].account * 2 + u32::from(throttled);
        for b in self.groups[g].buckets.clone() {
            self.move_bucket(b, v);
        }
    }

    // --------------------------------------------------------- running tasks

    /// Puts request `r` (queued or detached) on idle worker `w`.
    pub(crate) fn start_task(&mut self, r: u32, w: u32, priority: u8, cost: Balance) {
        if let Place::Queued(_) = self.requests[r].place {
            self.dequeue(r);
        }
        if self.workers[w].running.is_none() {
            self.unmake_idle(w);
        }
        self.requests[r].place = Place::Running(w);
        self.workers[w].running = Some(TaskRun {
            req: r,
            priority,
            cost,
        });
        self.running[priority as usize].insert(w);
        let a = self.requests[r].account;
        let acc = &mut self.accounts[a];
        acc.running_by_prio[priority as usize] += 1;
        acc.running.insert(w);
        let g = self.requests[r].group;
        if has_group(g) {
            self.groups[g].running += 1;
            self.mark_group_dirty(g);
        }
    }

    /// Takes the running request off worker `w`, leaving the request
    /// detached and the worker without a task (and not idle).
    pub(crate) fn stop_task(&mut self, w: u32) -> u32 {
        let run = self.workers[w]
            .running
            .take()
            .expect("stop_task on a worker without a task");
        self.running[run.priority as usize].remove(&w);
        let r = run.req;
        let a = self.requests[r].account;
        let acc = &mut self.accounts[a];
        acc.running_by_prio[run.priority as usize] -= 1;
        acc.running.remove(&w);
        let g = self.requests[r].group;
        if has_group(g) {
            self.groups[g].running -= 1;
            self.mark_group_dirty(g);
        }
        self.requests[r].place = Place::Detached;
        r
    }

    /// Moves a running task to another level.
    pub(crate) fn set_task_priority(&mut self, w: u32, priority: u8) {
        let Some(run) = self.workers[w].running.as_mut() else {
            return;
        };
        let old = run.priority;
        run.priority = priority;
        let r = run.req;
        self.running[old as usize].remove(&w);
        self.running[priority as usize].insert(w);
        let a = self.requests[r].account;
        let acc = &mut self.accounts[a];
        acc.running_by_prio[old as usize] -= 1;
        acc.running_by_prio[priority as usize] += 1;
    }

    // ----------------------------------------------------------- queue index

    fn virt_mut(&mut self, v: u32) -> &mut Virt {
        &mut self.accounts[v >> 1].virt[(v & 1) as usize]
    }

    pub(crate) fn virt(&self, v: u32) -> &Virt {
        &self.accounts[v >> 1].virt[(v & 1) as usize]
    }

    /// Placement `v`'s key `k` as a cell stores it: in pool-wide terms (see
    /// [`super::Cell`]), where a settled key of a placement whose stamp is
    /// older than the last pass carries the stamp, and marked with the
    /// placement.
    pub(crate) fn translate(&self, v: u32, k: &QKey) -> QKey {
        let mut k = k.clone();
        k.v = v;
        if k.ex == SETTLED {
            let stamp = self.virt(v).stamp;
            if stamp != self.last_pass {
                k.ex = stamp.as_nanos();
            }
        }
        k
    }

    /// Queues a detached request, keeping its examined time.
    pub(crate) fn enqueue(&mut self, r: u32) {
        let (a, base, prov, g, examined) = {
            let req = &self.requests[r];
            (req.account, req.base, req.prov, req.group, req.examined)
        };
        self.set_queued(base, true, true);
        self.set_queued(prov, false, true);
        let b = self.bucket_for(a, base, prov, g);
        let v = self.buckets[b].virt;
        if examined > self.virt(v).stamp {
            self.raise_stamp(v, examined);
        }
        let settled = examined == self.virt(v).stamp;
        if settled {
            self.requests[r].examined = Time::SETTLED_MARK;
        }
        self.requests[r].place = Place::Queued(b);
        let key = self.qkey(r);
        let old_head = self.buckets[b].members.first().cloned();
        self.buckets[b].members.insert(key);
        if settled {
            self.virt_mut(v).settled += 1;
        } else {
            self.buckets[b].explicit += 1;
            self.mark_bucket_dirty(b);
        }
        self.bucket_members_changed(b, old_head);
        self.queued += 1;
    }

    /// Takes a queued request out of the queue, leaving it detached with an
    /// explicit examined time.
    pub(crate) fn dequeue(&mut self, r: u32) {
        let Place::Queued(b) = self.requests[r].place else {
            return;
        };
        let key = self.qkey(r);
        let examined = self.examined(r);
        let old_head = self.buckets[b].members.first().cloned();
        self.buckets[b].members.remove(&key);
        let v = self.buckets[b].virt;
        if self.requests[r].settled() {
            self.virt_mut(v).settled -= 1;
        } else {
            self.buckets[b].explicit -= 1;
        }
        self.bucket_members_changed(b, old_head);
        if self.buckets[b].members.is_empty() {
            self.free_bucket(b);
        }
        let (base, prov) = (self.requests[r].base, self.requests[r].prov);
        self.set_queued(base, true, false);
        self.set_queued(prov, false, false);
        let req = &mut self.requests[r];
        req.examined = examined;
        req.place = Place::Detached;
        self.queued -= 1;
    }

    fn mark_bucket_dirty(&mut self, b: u32) {
        let bucket = &mut self.buckets[b];
        if !bucket.dirty {
            bucket.dirty = true;
            let v = bucket.virt;
            self.virt_mut(v).dirty.push(b);
        }
    }

    fn bucket_for(&mut self, a: u32, base: u32, prov: u32, g: u32) -> u32 {
        let hash = hash_ids([a, base, prov]);
        let buckets = &self.buckets;
        let key_of = |b: &Bucket| (b.account, b.base, b.prov);
        if let Some(b) = self
            .bucket_ids
            .get(hash, |b| key_of(&buckets[b]) == (a, base, prov))
        {
            return b;
        }
        let throttled = has_group(g) && self.groups[g].throttled;
        let v = a * 2 + u32::from(throttled);
        let b = self.buckets.insert(Bucket {
            virt: v,
            container: NO_CONTAINER,
            account: a,
            base,
            prov,
            group: g,
            members: Default::default(),
            explicit: 0,
            dirty: false,
        });
        // Bucket ids double as entry ids (see `super::Container`).
        assert!(b < CONTAINER_TAG, "too many buckets");
        self.attach_bucket(b, v);
        if has_group(g) {
            self.groups[g].buckets.push(b);
        }
        let buckets = &self.buckets;
        self.bucket_ids.insert(hash, b, |x| {
            let bucket = &buckets[x];
            hash_ids([bucket.account, bucket.base, bucket.prov])
        });
        b
    }

    /// The placement of entry `e` (see [`super::Container`]).
    pub(crate) fn entry_virt(&self, e: u32) -> u32 {
        if e & CONTAINER_TAG != 0 {
            self.containers[e & !CONTAINER_TAG].virt
        } else {
            self.buckets[e].virt
        }
    }

    /// The head of entry `e`: the best head of its buckets.
    pub(crate) fn entry_head(&self, e: u32) -> Option<&QKey> {
        if e & CONTAINER_TAG != 0 {
            let cont = &self.containers[e & !CONTAINER_TAG];
            cont.heads.first()
        } else {
            self.buckets[e].members.first()
        }
    }

    /// The buckets of entry `e`, as (provisionable set, bucket) sorted by
    /// set.
    pub(crate) fn entry_buckets(&self, e: u32) -> impl Iterator<Item = (u32, u32)> + '_ {
        let mut lone = None;
        let mut many: &[(u32, u32)] = &[];
        if e & CONTAINER_TAG != 0 {
            many = &self.containers[e & !CONTAINER_TAG].buckets;
        } else {
            lone = Some((self.buckets[e].prov, e));
        }
        lone.into_iter().chain(many.iter().copied())
    }

    /// Entry `e`'s bucket for provisionable set `prov`, if any.
    pub(crate) fn entry_bucket_for(&self, e: u32, prov: u32) -> Option<u32> {
        if e & CONTAINER_TAG != 0 {
            let buckets = &self.containers[e & !CONTAINER_TAG].buckets;
            let i = buckets.binary_search_by_key(&prov, |&(p, _)| p).ok()?;
            Some(buckets[i].1)
        } else {
            (self.buckets[e].prov == prov).then_some(e)
        }
    }

    /// The entry bucket `b` belongs to.
    pub(crate) fn entry_of(&self, b: u32) -> u32 {
        match self.buckets[b].container {
            NO_CONTAINER => b,
            c => c | CONTAINER_TAG,
        }
    }

    /// Counts a new entry in base set `base`'s cell.
    fn cell_add_entry(&mut self, base: u32, e: u32) {
        match self.sets[base].cell.kind() {
            CellKind::None => self.sets[base].cell = CellRef::single(e),
            CellKind::Single(e0) => {
                let mut cell = self.derived_cell(e0);
                cell.entries += 1;
                let i = self.cells.insert(cell);
                self.sets[base].cell = CellRef::many(i);
            }
            CellKind::Many(i) => self.cells[i].entries += 1,
        }
    }

    /// Forgets entry `e` of base set `base`'s cell (its head is out).
    fn cell_remove_entry(&mut self, base: u32, e: u32) {
        match self.sets[base].cell.kind() {
            CellKind::None => debug_assert!(false, "entry without a cell"),
            CellKind::Single(e0) => {
                debug_assert_eq!(e0, e);
                self.sets[base].cell = CellRef::NONE;
            }
            CellKind::Many(i) => {
                let cell = &mut self.cells[i];
                cell.entries -= 1;
                if cell.entries == 0 {
                    debug_assert!(cell.heads.is_empty() && cell.by_prov.is_empty());
                    self.cells.remove(i);
                    self.sets[base].cell = CellRef::NONE;
                }
            }
        }
    }

    /// Entry `old` of base set `base` becomes `new` (a lone bucket gains a
    /// container or a container goes back to its last bucket). The head,
    /// and so the cell's stored keys, stay the same.
    fn cell_rename_entry(&mut self, base: u32, old: u32, new: u32) {
        if self.sets[base].cell.kind() == CellKind::Single(old) {
            self.sets[base].cell = CellRef::single(new);
        }
    }

    /// The cell of a base set whose only entry is `e`, as it would be
    /// stored.
    fn derived_cell(&self, e: u32) -> Cell {
        let v = self.entry_virt(e);
        let mut cell = Cell {
            entries: 1,
            ..Cell::default()
        };
        if let Some(head) = self.entry_head(e) {
            cell.heads.insert(self.translate(v, head));
            cell.per_level[self.virt(v).level as usize] = 1;
        }
        for (prov, b) in self.entry_buckets(e) {
            if let Some(head) = self.buckets[b].members.first() {
                let mut sub = super::ordset::OrdSet::default();
                sub.insert(self.translate(v, head));
                cell.by_prov.push((prov, sub));
            }
        }
        cell
    }

    /// Puts bucket `b` into placement `v`: it becomes the entry for its
    /// base set there, or joins (or creates) that entry's container; its
    /// head goes into the cells.
    fn attach_bucket(&mut self, b: u32, v: u32) {
        let (base, prov) = (self.buckets[b].base, self.buckets[b].prov);
        let bucket = &mut self.buckets[b];
        bucket.virt = v;
        bucket.container = NO_CONTAINER;
        let e = match self.virt(v).entries.get(&base).copied() {
            None => {
                self.virt_mut(v).entries.insert(base, b);
                self.cell_add_entry(base, b);
                b
            }
            Some(e0) if e0 & CONTAINER_TAG == 0 => {
                // A second bucket: the pair needs a container and an order
                // of heads.
                let b0 = e0;
                let prov0 = self.buckets[b0].prov;
                let mut heads = super::ordset::OrdSet::default();
                if let Some(head) = self.buckets[b0].members.first() {
                    heads.insert(head.clone());
                }
                let mut buckets: SmallVec<[(u32, u32); 2]> = SmallVec::new();
                buckets.push((prov0, b0));
                buckets.push((prov, b));
                buckets.sort_unstable();
                let c = self.containers.insert(Container {
                    virt: v,
                    base,
                    buckets,
                    heads,
                });
                assert!(c < CONTAINER_TAG, "too many containers");
                self.buckets[b0].container = c;
                self.buckets[b].container = c;
                let e = c | CONTAINER_TAG;
                self.virt_mut(v).entries.insert(base, e);
                self.cell_rename_entry(base, b0, e);
                e
            }
            Some(e) => {
                let c = e & !CONTAINER_TAG;
                let cb = &mut self.containers[c].buckets;
                let i = cb.partition_point(|&(p, _)| p < prov);
                cb.insert(i, (prov, b));
                self.buckets[b].container = c;
                e
            }
        };
        if let Some(head) = self.buckets[b].members.first().cloned() {
            self.bucket_head_entry(b, None, Some(&head));
            self.entry_head_changed(e, None, Some(head));
        }
    }

    /// Takes bucket `b` out of its placement (and its head out of the
    /// cells), undoing what `attach_bucket` did.
    fn detach_bucket(&mut self, b: u32) {
        let e = self.entry_of(b);
        if let Some(head) = self.buckets[b].members.first().cloned() {
            self.bucket_head_entry(b, Some(&head), None);
            self.entry_head_changed(e, Some(head), None);
        }
        let bucket = &mut self.buckets[b];
        let (v, base, prov, c) = (bucket.virt, bucket.base, bucket.prov, bucket.container);
        bucket.container = NO_CONTAINER;
        if c == NO_CONTAINER {
            self.virt_mut(v).entries.remove(&base);
            self.cell_remove_entry(base, b);
            return;
        }
        let cont = &mut self.containers[c];
        if let Ok(i) = cont.buckets.binary_search_by_key(&prov, |&(p, _)| p) {
            cont.buckets.remove(i);
        }
        if cont.buckets.len() == 1 {
            // The last bucket stands alone again; its head is the
            // container's head already.
            let b1 = cont.buckets[0].1;
            debug_assert!(cont.heads.len() <= 1);
            self.containers.remove(c);
            self.buckets[b1].container = NO_CONTAINER;
            self.virt_mut(v).entries.insert(base, b1);
            self.cell_rename_entry(base, c | CONTAINER_TAG, b1);
        }
    }

    fn free_bucket(&mut self, b: u32) {
        self.detach_bucket(b);
        let Some(bucket) = self.buckets.remove(b) else {
            return;
        };
        if has_group(bucket.group) {
            let gb = &mut self.groups[bucket.group].buckets;
            if let Some(i) = gb.iter().position(|&x| x == b) {
                gb.swap_remove(i);
            }
        }
        self.bucket_ids
            .remove(hash_ids([bucket.account, bucket.base, bucket.prov]), b);
    }

    /// Moves a bucket to another placement of its account (fanout throttling
    /// on or off), keeping every member's examined time.
    fn move_bucket(&mut self, b: u32, v_new: u32) {
        let v_old = self.buckets[b].virt;
        if v_old == v_new {
            return;
        }
        let (old_stamp, new_stamp) = (self.virt(v_old).stamp, self.virt(v_new).stamp);
        self.detach_bucket(b);
        let settled = self.buckets[b].members.len() as u64 - u64::from(self.buckets[b].explicit);
        self.virt_mut(v_old).settled -= settled;
        if old_stamp != new_stamp {
            // Members are stored relative to their placement's stamp;
            // restate them relative to the new one.
            let latest = if settled > 0 {
                old_stamp
            } else {
                let mut latest = Time::EPOCH;
                self.buckets[b].members.for_each_while(|k| {
                    latest = latest.max(Time::from_nanos(k.ex));
                    true
                });
                latest
            };
            if latest > new_stamp {
                self.raise_stamp(v_new, latest);
            }
            let stamp = self.virt(v_new).stamp;
            let members = self.buckets[b].members.to_vec();
            let mut restated = super::ordset::OrdSet::default();
            let mut explicit = 0;
            for mut k in members {
                let t = if k.ex == SETTLED {
                    old_stamp
                } else {
                    Time::from_nanos(k.ex)
                };
                let req = &mut self.requests[k.req];
                if t == stamp {
                    k.ex = SETTLED;
                    req.examined = Time::SETTLED_MARK;
                } else {
                    k.ex = t.as_nanos();
                    req.examined = t;
                    explicit += 1;
                }
                restated.insert(k);
            }
            let bucket = &mut self.buckets[b];
            bucket.members = restated;
            bucket.explicit = explicit;
        }
        let settled = self.buckets[b].members.len() as u64 - u64::from(self.buckets[b].explicit);
        self.virt_mut(v_new).settled += settled;
        self.attach_bucket(b, v_new);
        // The old placement's dirty list may name this bucket; the new one
        // must, if the bucket has explicit members.
        self.buckets[b].dirty = false;
        if self.buckets[b].explicit > 0 {
            self.mark_bucket_dirty(b);
        }
    }

    /// Makes `t` the stamp of placement `v` (`t` later than its stamp).
    /// Settled members must keep their examined time, so they are first
    /// restated explicitly; a placement without any costs nothing.
    fn raise_stamp(&mut self, v: u32, t: Time) {
        if self.virt(v).settled > 0 {
            let at = self.virt(v).stamp;
            self.unsettle_virt(v, at);
        }
        self.virt_mut(v).stamp = t;
    }

    /// Propagates a change of bucket `b`'s head (previously `old_head`).
    fn bucket_members_changed(&mut self, b: u32, old_head: Option<QKey>) {
        let new_head = self.buckets[b].members.first().cloned();
        if old_head == new_head {
            return;
        }
        self.bucket_head_entry(b, old_head.as_ref(), new_head.as_ref());
        self.entry_head_changed(self.entry_of(b), old_head, new_head);
    }

    /// Replaces bucket `b`'s head in its cell's provisionable sub-cell.
    fn bucket_head_entry(&mut self, b: u32, old: Option<&QKey>, new: Option<&QKey>) {
        let (v, base, prov) = {
            let bucket = &self.buckets[b];
            (bucket.virt, bucket.base, bucket.prov)
        };
        let CellKind::Many(ci) = self.sets[base].cell.kind() else {
            // A derived cell stores nothing.
            return;
        };
        let old = old.map(|k| self.translate(v, k));
        let new = new.map(|k| self.translate(v, k));
        let cell = &mut self.cells[ci];
        let i = match cell.by_prov.binary_search_by_key(&prov, |(p, _)| *p) {
            Ok(i) => i,
            Err(i) => {
                if new.is_none() {
                    return;
                }
                cell.by_prov.insert(i, (prov, Default::default()));
                i
            }
        };
        let sub = &mut cell.by_prov[i].1;
        if let Some(o) = &old {
            sub.remove(o);
        }
        if let Some(n) = new {
            sub.insert(n);
        }
        if sub.is_empty() {
            cell.by_prov.remove(i);
        }
    }

    /// One of entry `e`'s buckets changed its head from `old` to `new`:
    /// keeps the container's order, if any, and the entry's key in the cell.
    fn entry_head_changed(&mut self, e: u32, old: Option<QKey>, new: Option<QKey>) {
        if e & CONTAINER_TAG == 0 {
            // A lone bucket's head is the entry's.
            self.cell_replace(e, old, new);
            return;
        }
        let heads = &mut self.containers[e & !CONTAINER_TAG].heads;
        let before = heads.first().cloned();
        if let Some(o) = &old {
            heads.remove(o);
        }
        if let Some(n) = new {
            heads.insert(n);
        }
        let after = heads.first().cloned();
        if before != after {
            self.cell_replace(e, before, after);
        }
    }

    /// Replaces entry `e`'s head (placement-relative keys) in its base set's
    /// cell.
    fn cell_replace(&mut self, e: u32, old: Option<QKey>, new: Option<QKey>) {
        let v = self.entry_virt(e);
        let base = if e & CONTAINER_TAG != 0 {
            self.containers[e & !CONTAINER_TAG].base
        } else {
            self.buckets[e].base
        };
        let level = self.virt(v).level as usize;
        let delta: i32 = match (&old, &new) {
            (None, Some(_)) => 1,
            (Some(_), None) => -1,
            _ => 0,
        };
        if let CellKind::Many(ci) = self.sets[base].cell.kind() {
            let old = old.map(|k| self.translate(v, &k));
            let new = new.map(|k| self.translate(v, &k));
            let cell = &mut self.cells[ci];
            if let Some(o) = &old {
                cell.heads.remove(o);
            }
            if let Some(n) = new {
                cell.heads.insert(n);
            }
        }
        if delta != 0 {
            self.count_cell_level(base, level, delta);
        }
    }

    /// Adjusts how many entries of `base`'s cell sit at `level`, keeping the
    /// per-level count of non-empty cells.
    fn count_cell_level(&mut self, base: u32, level: usize, delta: i32) {
        let (was, now) = match self.sets[base].cell.kind() {
            CellKind::None => return,
            // One container: its head is the only entry.
            CellKind::Single(_) => (u32::from(delta < 0), u32::from(delta > 0)),
            CellKind::Many(ci) => {
                let n = &mut self.cells[ci].per_level[level];
                let was = *n;
                *n = n.wrapping_add_signed(delta);
                (was, *n)
            }
        };
        if level < LEVELS {
            if was == 0 && now > 0 {
                self.nonempty_cells[level] += 1;
            } else if was > 0 && now == 0 {
                self.nonempty_cells[level] -= 1;
            }
        }
    }

    /// Placement `v`'s entries as (base set, entry), for walking them
    /// while changing the index.
    fn virt_entries(&self, v: u32) -> Vec<(u32, u32)> {
        self.virt(v).entries.iter().map(|(&s, &e)| (s, e)).collect()
    }

    /// Places an account's entries at another level: only counters
    /// change, the cells' order does not depend on levels.
    pub(crate) fn set_virt_level(&mut self, v: u32, level: u8) {
        let old = self.virt(v).level;
        if old == level {
            return;
        }
        self.virt_mut(v).level = level;
        let entries = self.virt_entries(v);
        for (base, e) in entries {
            if self.entry_head(e).is_none() {
                continue;
            }
            self.count_cell_level(base, old as usize, -1);
            self.count_cell_level(base, level as usize, 1);
        }
    }

    /// Takes every cell entry of placement `v` out (`insert == false`) or
    /// puts it back (`true`), under the current translation. Used around a
    /// change of the placement's stamp or of the last pass's time, which
    /// changes how its settled heads read pool-wide.
    pub(crate) fn virt_cell_entries(&mut self, v: u32, insert: bool) {
        let entries = self.virt_entries(v);
        for (base, e) in entries {
            let CellKind::Many(ci) = self.sets[base].cell.kind() else {
                // Derived cells read keys under the current translation.
                continue;
            };
            let buckets: SmallVec<[u32; 4]> = self.entry_buckets(e).map(|(_, b)| b).collect();
            for b in buckets {
                if let Some(h) = self.buckets[b].members.first().cloned() {
                    if insert {
                        self.bucket_head_entry(b, None, Some(&h));
                    } else {
                        self.bucket_head_entry(b, Some(&h), None);
                    }
                }
            }
            if let Some(k) = self.entry_head(e).map(|h| self.translate(v, h)) {
                // Entries leave and return at the same level: the counts
                // stay as they are.
                let cell = &mut self.cells[ci];
                if insert {
                    cell.heads.insert(k);
                } else {
                    cell.heads.remove(&k);
                }
            }
        }
    }

    /// The explicit members of bucket `b` become settled (examined at the
    /// placement's stamp). With `propagate`, heads are updated in the cells
    /// too; without, the caller has taken the placement's entries out.
    pub(crate) fn settle_bucket(&mut self, b: u32, propagate: bool) {
        let n = u64::from(self.buckets[b].explicit);
        if n == 0 {
            self.buckets[b].dirty = false;
            return;
        }
        let old_head = self.buckets[b].members.first().cloned();
        if n * 4 >= self.buckets[b].members.len() as u64 {
            // Mostly new members (a burst, a restored snapshot): rebuild in
            // O(k log k) rather than re-key k entries of a vector one by one.
            let mut members = std::mem::take(&mut self.buckets[b].members).to_vec();
            for k in members.iter_mut() {
                if k.ex != SETTLED {
                    k.ex = SETTLED;
                    self.requests[k.req].examined = Time::SETTLED_MARK;
                }
            }
            members.sort_unstable();
            self.buckets[b].members = super::ordset::OrdSet::from_sorted(members);
        } else {
            let mut explicit = Vec::new();
            self.buckets[b].members.for_each_while(|k| {
                if k.ex == SETTLED {
                    false
                } else {
                    explicit.push(k.clone());
                    true
                }
            });
            for mut k in explicit {
                self.buckets[b].members.remove(&k);
                self.requests[k.req].examined = Time::SETTLED_MARK;
                k.ex = SETTLED;
                self.buckets[b].members.insert(k);
            }
        }
        let bucket = &mut self.buckets[b];
        bucket.explicit = 0;
        bucket.dirty = false;
        let v = bucket.virt;
        self.virt_mut(v).settled += n;
        if propagate {
            self.bucket_members_changed(b, old_head);
        } else {
            let new_head = self.buckets[b].members.first().cloned();
            let c = self.buckets[b].container;
            if old_head != new_head && c != NO_CONTAINER {
                let heads = &mut self.containers[c].heads;
                if let Some(o) = &old_head {
                    heads.remove(o);
                }
                if let Some(n) = new_head {
                    heads.insert(n);
                }
            }
        }
    }

    /// Queues many detached requests at once (loading a snapshot): each
    /// bucket's members are built in one go and its head placed once.
    pub(crate) fn enqueue_many(&mut self, reqs: &[u32]) {
        let mut by_bucket: Vec<(u32, u32)> = Vec::with_capacity(reqs.len());
        for &r in reqs {
            let (a, base, prov, g, examined) = {
                let req = &self.requests[r];
                (req.account, req.base, req.prov, req.group, req.examined)
            };
            self.set_queued(base, true, true);
            self.set_queued(prov, false, true);
            let b = self.bucket_for(a, base, prov, g);
            let v = self.buckets[b].virt;
            if examined > self.virt(v).stamp {
                self.raise_stamp(v, examined);
            }
            by_bucket.push((b, r));
        }
        by_bucket.sort_unstable();
        let mut i = 0;
        while i < by_bucket.len() {
            let b = by_bucket[i].0;
            let j = i + by_bucket[i..].partition_point(|&(x, _)| x == b);
            let v = self.buckets[b].virt;
            let stamp = self.virt(v).stamp;
            let old_head = self.buckets[b].members.first().cloned();
            let mut members = std::mem::take(&mut self.buckets[b].members).to_vec();
            let (mut settled, mut explicit) = (0u64, 0u32);
            for &(_, r) in &by_bucket[i..j] {
                let req = &mut self.requests[r];
                let is_settled = req.examined == stamp;
                req.place = Place::Queued(b);
                if is_settled {
                    req.examined = Time::SETTLED_MARK;
                    settled += 1;
                } else {
                    explicit += 1;
                }
                members.push(self.qkey(r));
            }
            members.sort_unstable();
            let bucket = &mut self.buckets[b];
            bucket.members = super::ordset::OrdSet::from_sorted(members);
            bucket.explicit += explicit;
            self.virt_mut(v).settled += settled;
            if explicit > 0 {
                self.mark_bucket_dirty(b);
            }
            self.bucket_members_changed(b, old_head);
            self.queued += j - i;
            i = j;
        }
    }

    /// The settled members of placement `v` are restated as explicitly
    /// examined at `at` (its stamp), so that the stamp can change.
    pub(crate) fn unsettle_virt(&mut self, v: u32, at: Time) {
        for (_, e) in self.virt_entries(v) {
            let buckets: SmallVec<[u32; 4]> = self.entry_buckets(e).map(|(_, b)| b).collect();
            for b in buckets {
                let mut settled = Vec::new();
                self.buckets[b].members.for_each_while(|k| {
                    if k.ex == SETTLED {
                        settled.push(k.clone());
                    }
                    true
                });
                if settled.is_empty() {
                    continue;
                }
                let old_head = self.buckets[b].members.first().cloned();
                let n = settled.len() as u32;
                for mut k in settled {
                    self.buckets[b].members.remove(&k);
                    let req = &mut self.requests[k.req];
                    req.examined = at;
                    k.ex = at.as_nanos();
                    self.buckets[b].members.insert(k);
                }
                self.buckets[b].explicit += n;
                self.mark_bucket_dirty(b);
                self.bucket_members_changed(b, old_head);
            }
        }
        self.virt_mut(v).settled = 0;
    }
}

#[cfg(any(test, debug_assertions))]
// Invariant checks panic on a broken invariant: that is their purpose.
#[allow(clippy::unwrap_used, clippy::expect_used)]
impl Scheduler {
    /// Recomputes every derived structure from scratch and compares.
    pub(crate) fn check_invariants(&self) {
        use std::collections::BTreeMap;
        // Requests: each queued one in its bucket, with the right key.
        let mut queued = 0;
        for (r, req) in self.requests.iter() {
            assert_eq!(self.request_idx(&req.id), Some(r));
            match req.place {
                Place::Queued(b) => {
                    queued += 1;
                    let bucket = &self.buckets[b];
                    assert_eq!(
                        (bucket.account, bucket.base, bucket.prov, bucket.group),
                        (req.account, req.base, req.prov, req.group)
                    );
                    assert!(bucket.members.to_vec().iter().any(|k| k.req == r));
                    assert_eq!(
                        bucket.virt,
                        req.account * 2
                            + u32::from(has_group(req.group) && self.groups[req.group].throttled)
                    );
                    let stamp = self.virt(bucket.virt).stamp;
                    assert!(
                        stamp <= self.last_pass,
                        "a placement stamp after the last pass"
                    );
                    if !req.settled() {
                        assert!(
                            req.examined < stamp,
                            "explicit examined time not earlier than its placement's stamp"
                        );
                    }
                }
                Place::Running(w) => {
                    assert_eq!(self.workers[w].running.as_ref().map(|t| t.req), Some(r));
                }
                Place::Detached => panic!("detached request {} between operations", req.id),
            }
        }
        assert_eq!(queued, self.queued);
        assert_eq!(self.request_ids.len(), self.requests.len());
        assert_eq!(self.worker_ids.len(), self.workers.len());
        // Entries: lone buckets and containers, reached through their
        // placements.
        let mut expect_cells: BTreeMap<u32, Vec<(QKey, u32, u8)>> = BTreeMap::new();
        let mut expect_provs: BTreeMap<(u32, u32), Vec<QKey>> = BTreeMap::new();
        let mut entries_of: BTreeMap<u32, u32> = BTreeMap::new();
        let (mut buckets_seen, mut containers_seen) = (0, 0);
        for (a, acc) in self.accounts.iter() {
            for (half, virt) in acc.virt.iter().enumerate() {
                let v = a * 2 + half as u32;
                for (&base, &e) in &virt.entries {
                    *entries_of.entry(base).or_default() += 1;
                    assert_eq!(self.entry_virt(e), v);
                    if e & CONTAINER_TAG != 0 {
                        containers_seen += 1;
                        let c = e & !CONTAINER_TAG;
                        let cont = &self.containers[c];
                        assert_eq!(cont.base, base);
                        assert!(
                            cont.buckets.len() >= 2,
                            "container {c} of fewer than two buckets"
                        );
                        assert!(cont.buckets.windows(2).all(|w| w[0].0 < w[1].0));
                    }
                    let mut heads = Vec::new();
                    for (prov, b) in self.entry_buckets(e) {
                        buckets_seen += 1;
                        let bucket = &self.buckets[b];
                        assert_eq!(self.entry_of(b), e);
                        assert_eq!((bucket.base, bucket.prov, bucket.virt), (base, prov, v));
                        assert!(!bucket.members.is_empty());
                        let explicit = bucket
                            .members
                            .to_vec()
                            .iter()
                            .filter(|k| k.ex != SETTLED)
                            .count();
                        assert_eq!(explicit as u32, bucket.explicit);
                        if explicit > 0 {
                            assert!(bucket.dirty);
                            assert!(self.virt(bucket.virt).dirty.contains(&b));
                        }
                        let head = bucket.members.first().cloned().unwrap();
                        let t = self.translate(v, &head);
                        expect_provs.entry((base, prov)).or_default().push(t);
                        heads.push(head);
                    }
                    heads.sort();
                    if e & CONTAINER_TAG != 0 {
                        assert_eq!(heads, self.containers[e & !CONTAINER_TAG].heads.to_vec());
                    }
                    let t = self.translate(v, self.entry_head(e).unwrap());
                    expect_cells
                        .entry(base)
                        .or_default()
                        .push((t, e, virt.level));
                }
            }
        }
        assert_eq!(
            buckets_seen,
            self.buckets.len(),
            "buckets outside their placement"
        );
        assert_eq!(
            containers_seen,
            self.containers.len(),
            "containers outside their placement"
        );
        let mut nonempty = [0usize; LEVELS];
        let mut stored_cells = 0;
        let mut uses_of: BTreeMap<u32, u32> = BTreeMap::new();
        for (_, r) in self.requests.iter() {
            *uses_of.entry(r.base).or_default() += 1;
            *uses_of.entry(r.prov).or_default() += 1;
        }
        for (s, set) in self.sets.iter() {
            let n_entries = entries_of.get(&s).copied().unwrap_or(0);
            match set.cell.kind() {
                CellKind::None => {
                    assert_eq!(n_entries, 0, "entries of set {s} without a cell")
                }
                CellKind::Single(e) => {
                    assert_eq!(n_entries, 1, "derived cell of set {s}");
                    let want = expect_cells.remove(&s).unwrap_or_default();
                    assert_eq!(want.len(), 1);
                    assert_eq!(want[0].1, e);
                    if (want[0].2 as usize) < LEVELS {
                        nonempty[want[0].2 as usize] += 1;
                    }
                    for (prov, _) in self.entry_buckets(e) {
                        assert!(expect_provs.remove(&(s, prov)).is_some());
                    }
                }
                CellKind::Many(ci) => {
                    stored_cells += 1;
                    let cell = &self.cells[ci];
                    assert_eq!(cell.entries, n_entries, "entries of cell {s}");
                    self.check_stored_cell(
                        s,
                        cell,
                        &mut expect_cells,
                        &mut expect_provs,
                        &mut nonempty,
                    );
                }
            }
            let uses = uses_of.get(&s).copied().unwrap_or(0);
            assert_eq!(uses, set.req_refs, "request references of set {s}");
        }
        assert_eq!(stored_cells, self.cells.len(), "stored cells without a set");
        assert!(expect_cells.is_empty());
        assert!(expect_provs.is_empty(), "missing provisionable sub-cells");
        assert_eq!(nonempty, self.nonempty_cells);
        self.check_workers_and_groups();
    }

    /// Compares a stored cell with what its entries say it should hold.
    #[allow(clippy::type_complexity)]
    fn check_stored_cell(
        &self,
        s: u32,
        cell: &Cell,
        expect_cells: &mut std::collections::BTreeMap<u32, Vec<(QKey, u32, u8)>>,
        expect_provs: &mut std::collections::BTreeMap<(u32, u32), Vec<QKey>>,
        nonempty: &mut [usize; LEVELS],
    ) {
        let mut want = expect_cells.remove(&s).unwrap_or_default();
        want.sort_by(|a, b| a.0.cmp(&b.0));
        let have = cell.heads.to_vec();
        assert_eq!(have.len(), want.len(), "cell of set {s}");
        let mut per_level = [0u32; LEVELS + 1];
        for (h, (k, _, level)) in have.iter().zip(&want) {
            assert_eq!(h, k, "cell of set {s}");
            assert_eq!(h.v, k.v, "cell entry names its placement");
            per_level[*level as usize] += 1;
        }
        assert_eq!(per_level, cell.per_level, "cell level counts of set {s}");
        for (prov, sub) in &cell.by_prov {
            let mut want = expect_provs.remove(&(s, *prov)).unwrap_or_default();
            want.sort();
            let have = sub.to_vec();
            assert_eq!(have, want, "provisionable sub-cell ({s}, {prov})");
            for (h, k) in have.iter().zip(&want) {
                assert_eq!(h.v, k.v, "sub-cell entry names its placement");
            }
        }
        for level in 0..LEVELS {
            if per_level[level] > 0 {
                nonempty[level] += 1;
            }
        }
    }

    fn check_workers_and_groups(&self) {
        use std::collections::BTreeMap;
        // Fanout groups: requests with one key share one group, or the only
        // one is lone; both are findable in the group index.
        let mut by_key: std::collections::BTreeMap<(u32, Vec<u32>), Vec<u32>> = Default::default();
        for (r, req) in self.requests.iter() {
            let fanout = self.max_fanout_of(req.account) > 0;
            assert_eq!(req.group != NO_GROUP, fanout, "group of request {}", req.id);
            if fanout {
                let union = union_ids(&self.sets[req.base].labels, &self.sets[req.prov].labels);
                by_key
                    .entry((req.account, union.collect()))
                    .or_default()
                    .push(r);
            }
        }
        let mut indexed = 0;
        for reqs in by_key.values() {
            let g = self.requests[reqs[0]].group;
            assert!(
                reqs.iter().all(|&r| self.requests[r].group == g),
                "one key, one group"
            );
            indexed += 1;
            if g == LONE {
                assert_eq!(reqs.len(), 1, "a lone request is alone with its key");
                let r = reqs[0];
                let hash = group_slot_hash(&self.sets, &self.groups, &self.requests, lone_slot(r));
                assert_eq!(
                    self.group_ids.get(hash, |x| x == lone_slot(r)),
                    Some(lone_slot(r))
                );
            } else {
                assert_eq!(
                    self.groups[g].requests as usize,
                    reqs.len(),
                    "requests of group {g}"
                );
            }
        }
        assert_eq!(indexed, self.group_ids.len(), "group index entries");
        assert_eq!(
            self.groups.len(),
            by_key
                .values()
                .filter(|r| self.requests[r[0]].group != LONE)
                .count()
        );
        self.check_eligibility();
        for (w, worker) in self.workers.iter() {
            assert_eq!(self.idle.contains_key(&worker.id), worker.running.is_none());
            assert_eq!(
                self.idle_expiry.contains(&(worker.confirmed, w)),
                worker.running.is_none()
            );
        }
        // Running counts.
        let mut by_account: BTreeMap<u32, [u32; LEVELS]> = BTreeMap::new();
        let mut by_group: BTreeMap<u32, u32> = BTreeMap::new();
        for (_, worker) in self.workers.iter() {
            if let Some(run) = &worker.running {
                let req = &self.requests[run.req];
                by_account.entry(req.account).or_default()[run.priority as usize] += 1;
                *by_group.entry(req.group).or_default() += 1;
            }
        }
        for (a, acc) in self.accounts.iter() {
            let by_prio = by_account.get(&a).copied().unwrap_or_default();
            assert_eq!(by_prio, acc.running_by_prio);
        }
        for (gi, g) in self.groups.iter() {
            let running = by_group.get(&gi).copied().unwrap_or(0);
            let hash = group_hash(&self.sets, g.account, g.base, g.prov);
            assert_eq!(
                self.group_ids.get(hash, |x| x == gi),
                Some(gi),
                "group not findable by its key"
            );
            assert_eq!(running, g.running);
        }
    }
}
