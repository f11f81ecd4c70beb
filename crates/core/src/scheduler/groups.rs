//! Accounts and fanout groups: configuration, the requests of an account,
//! and the groups that throttle an account's requests with identical labels.
//!
//! Invariants: requests with one (account, label union) key share one group,
//! or the only one is lone (`LONE`); both are findable in the group index;
//! a group counts its requests and running tasks.

use super::idmap::hash_ids;
use super::slab::Slab;
use super::*;
use crate::account::{AccountConfig, Balance};
use rustc_hash::FxHashSet;
use smallvec::SmallVec;
use std::sync::Arc;

/// The sorted, distinct union of two sorted, distinct label-id slices.
pub(super) fn union_ids<'a>(a: &'a [u32], b: &'a [u32]) -> impl Iterator<Item = u32> + 'a {
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
pub(super) fn same_union(sets: &Slab<SetEntry>, x: (u32, u32), y: (u32, u32)) -> bool {
    union_ids(&sets[x.0].labels, &sets[x.1].labels)
        .eq(union_ids(&sets[y.0].labels, &sets[y.1].labels))
}

/// The hash of a fanout group's key: its account and label union.
pub(super) fn group_hash(sets: &Slab<SetEntry>, a: u32, base: u32, prov: u32) -> u64 {
    hash_ids(std::iter::once(a).chain(union_ids(&sets[base].labels, &sets[prov].labels)))
}

/// Marks a lone request's slot in `group_ids`.
pub(super) const LONE_TAG: u32 = 1 << 31;

pub(super) fn lone_slot(r: u32) -> u32 {
    assert!(r < LONE_TAG, "request index out of range");
    r | LONE_TAG
}

/// The (account, base, provisionable) sets that key an entry of the group
/// index: a group, or a lone request (tagged).
pub(super) fn group_key_of(
    groups: &Slab<Group>,
    requests: &Slab<Request>,
    x: u32,
) -> (u32, u32, u32) {
    if x & LONE_TAG != 0 {
        let req = &requests[x & !LONE_TAG];
        (req.account, req.base, req.prov)
    } else {
        let g = &groups[x];
        (g.account, g.base, g.prov)
    }
}

/// The hash of an entry of the group index: a group or a lone request.
pub(super) fn group_slot_hash(
    sets: &Slab<SetEntry>,
    groups: &Slab<Group>,
    requests: &Slab<Request>,
    x: u32,
) -> u64 {
    let (a, base, prov) = group_key_of(groups, requests, x);
    group_hash(sets, a, base, prov)
}

impl Scheduler {
    /// Makes room for a bulk load (a snapshot decode) of `requests` more
    /// requests over at most `group_keys` distinct fanout keys and `sets`
    /// more label sets, so that the id tables do not rehash every entry
    /// each time they grow.
    pub(crate) fn reserve_for_load(&mut self, requests: usize, group_keys: usize, sets: usize) {
        let requests_slab = &self.requests;
        self.request_ids.reserve(requests, |r| &requests_slab[r].id);
        let (sets_slab, groups, requests_slab) = (&self.sets, &self.groups, &self.requests);
        self.group_ids.reserve(group_keys, |x| {
            group_slot_hash(sets_slab, groups, requests_slab, x)
        });
        let sets_slab = &self.sets;
        self.set_ids.reserve(sets, |x| {
            super::idmap::hash_ids(sets_slab[x].labels.iter().copied())
        });
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
    pub(super) fn build_groups(&mut self, a: u32) {
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
    pub(super) fn drop_groups(&mut self, a: u32) {
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

    // ---------------------------------------------------------------- groups

    /// The fanout group of request `r` (of an account with fanout): groups
    /// are keyed by account and the union of base and provisionable labels
    /// (reference §6.14), compared exactly. A group holds a reference to the
    /// sets of the request that created it and recomputes the union from
    /// them when needed, rather than interning the union as a set of its own.
    ///
    /// The first request with a key gets [`LONE`] and is indexed itself; the
    /// second builds the group for both.
    pub(super) fn group_ref(&mut self, r: u32) -> u32 {
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
    pub(super) fn lone_forget(&mut self, r: u32) {
        let hash = group_slot_hash(&self.sets, &self.groups, &self.requests, lone_slot(r));
        self.group_ids.remove(hash, lone_slot(r));
    }

    pub(super) fn group_unref(&mut self, g: u32) {
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

    pub(super) fn mark_group_dirty(&mut self, g: u32) {
        if !has_group(g) {
            return;
        }
        let group = &self.groups[g];
        if !group.dirty && self.max_fanout_of(group.account) > 0 {
            self.groups[g].dirty = true;
            self.dirty_groups.push(g);
        }
    }

    pub(super) fn max_fanout_of(&self, a: u32) -> i32 {
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
}
