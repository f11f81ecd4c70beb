//! Fanout groups: the groups that throttle an account's requests with
//! identical labels.
//!
//! [`Groups`] owns the groups, the index that finds them (and lone
//! requests) by key, and the list of groups to recheck at the next pass;
//! only this file changes a group's key, counts, buckets or throttling.
//!
//! Invariants (`Scheduler::check_groups`): requests with one (account,
//! label union) key share one group, or the only one is lone
//! ([`GroupKind::Lone`]); both are findable in the group index; a group
//! counts its requests and running tasks and lists its buckets.

use super::idmap::{SlotIndex, hash_ids};
use super::ids::{GroupKey, GroupKind};
use super::labels::LabelTable;
use super::slab::Slab;
use super::*;
use smallvec::SmallVec;

/// A fanout group: one account's requests with identical labels, once
/// there are two or more (see [`GroupKind::Lone`]).
#[derive(Clone, Debug)]
pub(crate) struct Group {
    account: AccountIdx,
    /// Base and provisionable sets of the request that created the group;
    /// their union is the group's key.
    base: SetId,
    prov: SetId,
    /// Requests (queued or running) in the group.
    requests: u32,
    /// Running tasks in the group.
    running: u32,
    buckets: SmallVec<[BucketId; 1]>,
    throttled: bool,
    dirty: bool,
    /// The pass's own count (see `Scheduler::fanout_snapshot`): the pass
    /// that last counted, the running count at its start, and what it
    /// assigned since.
    pub(crate) pass_stamp: u64,
    pub(crate) pass_base: u32,
    pub(crate) pass_assigned: u32,
}

impl Group {
    pub(crate) fn account(&self) -> AccountIdx {
        self.account
    }

    /// The base and provisionable sets the group holds (its key).
    #[cfg(any(test, debug_assertions))]
    pub(crate) fn sets(&self) -> (SetId, SetId) {
        (self.base, self.prov)
    }

    pub(crate) fn requests(&self) -> u32 {
        self.requests
    }

    pub(crate) fn running(&self) -> u32 {
        self.running
    }

    /// Whether its buckets sit in the account's throttled placement.
    pub(crate) fn throttled(&self) -> bool {
        self.throttled
    }
}

/// The fanout groups of a pool (see the module docs).
#[derive(Clone, Debug, Default)]
pub(crate) struct Groups {
    /// Groups and lone requests, by (account, label union).
    index: SlotIndex<GroupSlot>,
    slab: Slab<GroupId, Group>,
    /// Groups whose throttling the next pass rechecks (may name groups
    /// freed since).
    dirty: Vec<GroupId>,
}

impl std::ops::Index<GroupId> for Groups {
    type Output = Group;
    fn index(&self, g: GroupId) -> &Group {
        &self.slab[g]
    }
}

impl std::ops::IndexMut<GroupId> for Groups {
    fn index_mut(&mut self, g: GroupId) -> &mut Group {
        &mut self.slab[g]
    }
}

impl Groups {
    pub(crate) fn get(&self, g: GroupId) -> Option<&Group> {
        self.slab.get(g)
    }

    /// Groups in slot order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (GroupId, &Group)> {
        self.slab.iter()
    }

    /// The groups to recheck, in the order they were marked; they are no
    /// longer marked.
    pub(crate) fn take_dirty(&mut self) -> Vec<GroupId> {
        let dirty = std::mem::take(&mut self.dirty);
        for &g in &dirty {
            if self.slab.get(g).is_some() {
                self.slab[g].dirty = false;
            }
        }
        dirty
    }

    /// Bucket `b` holds requests of group `g`.
    pub(crate) fn add_bucket(&mut self, g: GroupId, b: BucketId) {
        self.slab[g].buckets.push(b);
    }

    /// Bucket `b` is gone.
    pub(crate) fn remove_bucket(&mut self, g: GroupId, b: BucketId) {
        let gb = &mut self.slab[g].buckets;
        if let Some(i) = gb.iter().position(|&x| x == b) {
            gb.swap_remove(i);
        }
    }
}

/// The sorted, distinct union of two sorted, distinct label-id slices.
pub(super) fn union_ids<'a>(
    a: &'a [LabelId],
    b: &'a [LabelId],
) -> impl Iterator<Item = LabelId> + 'a {
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
fn same_union(sets: &LabelTable, x: (SetId, SetId), y: (SetId, SetId)) -> bool {
    union_ids(sets[x.0].labels(), sets[x.1].labels())
        .eq(union_ids(sets[y.0].labels(), sets[y.1].labels()))
}

/// The hash of a fanout group's key: its account and label union.
fn group_hash(sets: &LabelTable, a: AccountIdx, base: SetId, prov: SetId) -> u64 {
    let union = union_ids(sets[base].labels(), sets[prov].labels()).map(|l| l.slot());
    hash_ids(std::iter::once(a.slot()).chain(union))
}

/// The (account, base, provisionable) sets that key an entry of the group
/// index: a group, or a lone request.
fn group_key_of(
    groups: &Slab<GroupId, Group>,
    requests: &Slab<ReqIdx, Request>,
    x: GroupSlot,
) -> (AccountIdx, SetId, SetId) {
    match x.get() {
        GroupKey::Lone(r) => {
            let req = &requests[r];
            (req.account, req.base, req.prov)
        }
        GroupKey::Group(g) => {
            let g = &groups[g];
            (g.account, g.base, g.prov)
        }
    }
}

/// The hash of an entry of the group index: a group or a lone request.
fn group_slot_hash(
    sets: &LabelTable,
    groups: &Slab<GroupId, Group>,
    requests: &Slab<ReqIdx, Request>,
    x: GroupSlot,
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
        let (labels, requests_slab) = (&self.labels, &self.requests);
        let Groups { index, slab, .. } = &mut self.groups;
        index.reserve(group_keys, |x| {
            group_slot_hash(labels, slab, requests_slab, x)
        });
        self.labels.reserve_sets(sets);
    }

    /// Account `a`'s `max_fanout` changed from `old` to `new`: groups are
    /// built or dropped when fanout starts or stops, and rechecked at the
    /// next pass otherwise.
    pub(super) fn fanout_changed(&mut self, a: AccountIdx, old: i32, new: i32) {
        if old <= 0 && new > 0 {
            self.build_groups(a);
        } else if old > 0 && new <= 0 {
            self.drop_groups(a);
            return;
        }
        // Only the groups marked here: `dirty_groups` may also list
        // groups freed since they were marked.
        let stale: Vec<GroupId> = self
            .groups
            .iter()
            .filter(|(_, group)| group.account == a && !group.dirty)
            .map(|(g, _)| g)
            .collect();
        for g in stale {
            self.groups[g].dirty = true;
            self.groups.dirty.push(g);
        }
    }

    /// An account starts using fanout: puts each of its requests in its
    /// group.
    pub(super) fn build_groups(&mut self, a: AccountIdx) {
        let reqs: Vec<ReqIdx> = self
            .requests
            .iter()
            .filter(|(_, r)| r.account == a)
            .map(|(r, _)| r)
            .collect();
        for r in reqs {
            let place = self.requests[r].place;
            let g = self.group_ref(r);
            self.requests[r].group = g;
            match (place, g.group()) {
                (Place::Running(_), Some(g)) => self.groups[g].running += 1,
                (Place::Queued(b), _) => {
                    if self.index.bucket(b).group() == GroupRef::NO_FANOUT {
                        self.index.set_bucket_group(b, g);
                        if let Some(g) = g.group() {
                            self.groups.add_bucket(g, b);
                        }
                    }
                }
                (Place::Running(_), None) | (Place::Detached, _) => {}
            }
        }
    }

    /// An account stops using fanout: throttling ends and its groups go.
    pub(super) fn drop_groups(&mut self, a: AccountIdx) {
        let groups: Vec<GroupId> = self
            .groups
            .iter()
            .filter(|(_, g)| g.account == a)
            .map(|(g, _)| g)
            .collect();
        for &g in &groups {
            self.set_group_throttled(g, false);
            for b in std::mem::take(&mut self.groups[g].buckets) {
                self.index.set_bucket_group(b, GroupRef::NO_FANOUT);
            }
            self.groups[g].running = 0;
        }
        let reqs: Vec<ReqIdx> = self
            .requests
            .iter()
            .filter(|(_, r)| r.account == a && r.group != GroupRef::NO_FANOUT)
            .map(|(r, _)| r)
            .collect();
        for r in reqs {
            match self.requests[r].group.kind() {
                GroupKind::Lone => {
                    self.lone_forget(r);
                    if let Place::Queued(b) = self.requests[r].place {
                        self.index.set_bucket_group(b, GroupRef::NO_FANOUT);
                    }
                }
                GroupKind::Group(g) => self.group_unref(g),
                GroupKind::NoFanout => {}
            }
            self.requests[r].group = GroupRef::NO_FANOUT;
        }
    }

    // ---------------------------------------------------------------- groups

    /// The fanout group of request `r` (of an account with fanout): groups
    /// are keyed by account and the union of base and provisionable labels
    /// (reference §6.14), compared exactly. A group holds a reference to the
    /// sets of the request that created it and recomputes the union from
    /// them when needed, rather than interning the union as a set of its own.
    ///
    /// The first request with a key is lone ([`GroupRef::LONE`]) and is
    /// indexed itself; the second builds the group for both.
    pub(super) fn group_ref(&mut self, r: ReqIdx) -> GroupRef {
        let (a, base, prov) = {
            let req = &self.requests[r];
            (req.account, req.base, req.prov)
        };
        let hash = group_hash(&self.labels, a, base, prov);
        let (sets, groups, requests) = (&self.labels, &self.groups.slab, &self.requests);
        let found = self.groups.index.get(hash, |x| {
            let (xa, xbase, xprov) = group_key_of(groups, requests, x);
            xa == a && same_union(sets, (xbase, xprov), (base, prov))
        });
        let Some(x) = found else {
            let (sets, requests) = (&self.labels, &self.requests);
            let Groups { index, slab, .. } = &mut self.groups;
            index.insert(hash, GroupSlot::lone(r), |x| {
                group_slot_hash(sets, slab, requests, x)
            });
            return GroupRef::LONE;
        };
        let r0 = match x.get() {
            GroupKey::Group(g) => {
                self.groups[g].requests += 1;
                return GroupRef::built(g);
            }
            GroupKey::Lone(r0) => r0,
        };
        // A second request with the key of a lone one: build their group.
        self.groups.index.remove(hash, x);
        let (base0, prov0, place0) = {
            let req = &self.requests[r0];
            (req.base, req.prov, req.place)
        };
        self.labels.retain_set(base0);
        self.labels.retain_set(prov0);
        let g = self.groups.slab.insert(Group {
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
        self.requests[r0].group = GroupRef::built(g);
        if let Place::Queued(b0) = place0 {
            self.index.set_bucket_group(b0, GroupRef::built(g));
            self.groups[g].buckets.push(b0);
        }
        // Throttling follows the running count from the next pass on, as
        // for any group whose running count changed.
        self.mark_group_dirty(g);
        let (sets, requests) = (&self.labels, &self.requests);
        let Groups { index, slab, .. } = &mut self.groups;
        index.insert(hash, GroupSlot::group(g), |x| {
            group_slot_hash(sets, slab, requests, x)
        });
        GroupRef::built(g)
    }

    /// Takes lone request `r` out of the group index.
    pub(super) fn lone_forget(&mut self, r: ReqIdx) {
        let x = GroupSlot::lone(r);
        let hash = group_slot_hash(&self.labels, &self.groups.slab, &self.requests, x);
        self.groups.index.remove(hash, x);
    }

    pub(super) fn group_unref(&mut self, g: GroupId) {
        let group = &mut self.groups[g];
        group.requests -= 1;
        if group.requests == 0 {
            debug_assert!(group.buckets.is_empty() && group.running == 0);
            let (a, base, prov) = (group.account, group.base, group.prov);
            self.groups
                .index
                .remove(group_hash(&self.labels, a, base, prov), GroupSlot::group(g));
            self.groups.slab.remove(g);
            self.labels.release_set(base);
            self.labels.release_set(prov);
        }
    }

    fn mark_group_dirty(&mut self, g: GroupId) {
        let group = &self.groups[g];
        if !group.dirty && self.max_fanout_of(group.account) > 0 {
            self.groups[g].dirty = true;
            self.groups.dirty.push(g);
        }
    }

    /// A task of group `g` starts: throttling follows from the next pass.
    pub(super) fn group_task_started(&mut self, g: GroupId) {
        self.groups[g].running += 1;
        self.mark_group_dirty(g);
    }

    /// A task of group `g` stops.
    pub(super) fn group_task_stopped(&mut self, g: GroupId) {
        self.groups[g].running -= 1;
        self.mark_group_dirty(g);
    }

    pub(super) fn max_fanout_of(&self, a: AccountIdx) -> i32 {
        self.accounts.get(a).map_or(0, |acc| acc.max_fanout())
    }

    /// Moves a group's buckets to its account's normal or throttled
    /// placement.
    pub(crate) fn set_group_throttled(&mut self, g: GroupId, throttled: bool) {
        if self.groups[g].throttled == throttled {
            return;
        }
        self.groups[g].throttled = throttled;
        let v = VirtId::new(self.groups[g].account, throttled);
        for b in self.groups[g].buckets.clone() {
            self.move_bucket(b, v);
        }
    }
}

#[cfg(any(test, debug_assertions))]
// Invariant checks panic on a broken invariant: that is their purpose.
#[allow(clippy::unwrap_used, clippy::expect_used)]
impl Scheduler {
    /// Recomputes the groups and their index from the requests and
    /// compares.
    pub(super) fn check_groups(&self) {
        use std::collections::BTreeMap;
        let mut by_key: BTreeMap<(AccountIdx, Vec<LabelId>), Vec<ReqIdx>> = Default::default();
        for (r, req) in self.requests.iter() {
            let fanout = self.max_fanout_of(req.account) > 0;
            assert_eq!(
                req.group != GroupRef::NO_FANOUT,
                fanout,
                "group of request {}",
                req.id
            );
            if fanout {
                let union = union_ids(
                    self.labels[req.base].labels(),
                    self.labels[req.prov].labels(),
                );
                by_key
                    .entry((req.account, union.collect()))
                    .or_default()
                    .push(r);
            }
        }
        let groups = &self.groups;
        let mut indexed = 0;
        for reqs in by_key.values() {
            let g = self.requests[reqs[0]].group;
            assert!(
                reqs.iter().all(|&r| self.requests[r].group == g),
                "one key, one group"
            );
            indexed += 1;
            match g.kind() {
                GroupKind::Lone => {
                    assert_eq!(reqs.len(), 1, "a lone request is alone with its key");
                    let x = GroupSlot::lone(reqs[0]);
                    let hash = group_slot_hash(&self.labels, &groups.slab, &self.requests, x);
                    assert_eq!(groups.index.get(hash, |y| y == x), Some(x));
                }
                GroupKind::Group(g) => assert_eq!(
                    groups[g].requests as usize,
                    reqs.len(),
                    "requests of group {g}"
                ),
                GroupKind::NoFanout => panic!("a request of a fanout account without a group"),
            }
        }
        assert_eq!(indexed, groups.index.len(), "group index entries");
        assert_eq!(
            groups.slab.len(),
            by_key
                .values()
                .filter(|r| self.requests[r[0]].group != GroupRef::LONE)
                .count()
        );
        let mut running: BTreeMap<GroupId, u32> = BTreeMap::new();
        for (_, worker) in self.workers.iter() {
            if let Some(run) = worker.running()
                && let Some(g) = self.requests[run.req].group.group()
            {
                *running.entry(g).or_default() += 1;
            }
        }
        let mut buckets: BTreeMap<GroupId, Vec<BucketId>> = BTreeMap::new();
        for (b, bucket) in self.index.buckets() {
            if let Some(g) = bucket.group().group() {
                buckets.entry(g).or_default().push(b);
            }
        }
        for (gi, g) in groups.slab.iter() {
            let hash = group_hash(&self.labels, g.account, g.base, g.prov);
            let x = GroupSlot::group(gi);
            assert_eq!(
                groups.index.get(hash, |y| y == x),
                Some(x),
                "group not findable by its key"
            );
            assert_eq!(running.get(&gi).copied().unwrap_or(0), g.running);
            let mut have = g.buckets.to_vec();
            have.sort_unstable();
            let want = buckets.remove(&gi).unwrap_or_default();
            assert_eq!(have, want, "buckets of group {gi}");
        }
        assert!(buckets.is_empty(), "buckets of a group that is gone");
    }
}
