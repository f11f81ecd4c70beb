//! The queue index: the orders of the queued requests that a pass queries
//! instead of scanning the queue (buckets, containers, cells and the
//! settled marker; see the parent module's docs).
//!
//! [`QueueIndex`] owns the buckets, the containers, the stored cells, each
//! account's two placements ([`Virt`]) and the count of entry heads per
//! level, and only its methods change them. It decides nothing about
//! scheduling: it keeps derived orders. What it reads or writes of other
//! parts is handed to it in an [`Outside`]: the requests (their keys,
//! examined times and places), the label table (which stores each base
//! set's cell reference for it) and the time of the last pass. The one thing
//! not to break: every change to a bucket's members ends in
//! `bucket_members_changed` (or, for a placement whose entries are taken
//! out, in putting them back), so that containers and cells follow the
//! bucket's head.
//!
//! Invariants (`QueueIndex::check_invariants`):
//!
//! * a placement has one entry per base set: a lone bucket, or a container
//!   of two or more buckets (sorted by provisionable set) whose `heads` are
//!   their heads; every bucket and container is reached from its
//!   placement, every bucket is non-empty and found by its (account, base
//!   set, provisionable set) key;
//! * a base set's cell is derived from its only entry, or stored and
//!   holding the head of every entry, whatever its placement's level, with
//!   provisionable sub-cells to match; every entry has a head, a placement
//!   counts its entries' heads, and the count of heads per level is the sum
//!   over the placements at that level (so a level change is constant-time);
//! * a bucket counts its explicit (unsettled) members and, while it has
//!   any, is on its placement's dirty list; a placement counts its settled
//!   members, and a placement with entries has a stamp no later than the
//!   last pass.
//!
//! What spans parts is checked by the scheduler's `check_invariants`: a
//! queued request is a member of exactly one bucket, the one for its
//! (account, base set, provisionable set), placed in its account's normal
//! or throttled placement according to its fanout group; its key is
//! settled ([`ExKey::SETTLED`]) iff its examined time equals its
//! placement's stamp, and explicit keys are strictly earlier.

#[cfg(any(test, debug_assertions))]
mod check;
mod update;

use rustc_hash::FxHashMap;
use smallvec::SmallVec;

use super::idmap::{SlotIndex, hash_ids};
use super::ids::{
    AccountIdx, BucketId, CellId, ContainerId, Entry, EntryId, GroupRef, ReqIdx, SetId, SlotId,
    VirtId,
};
use super::labels::LabelTable;
use super::ordset::OrdSet;
use super::slab::Slab;
use super::{ExKey, LEVELS, QKey, Request};
use crate::account::FREE_PRIORITY;
use crate::time::Time;

/// What the index reads or writes of the parts around it (see the module
/// docs). Built by the scheduler for one call; the index keeps none of it.
pub(crate) struct Outside<'a> {
    /// The requests: the index builds their keys, and moves their examined
    /// times between explicit and settled and their places in and out of
    /// buckets.
    pub(crate) requests: &'a mut Slab<ReqIdx, Request>,
    /// The label table, where each base set's cell reference is stored.
    pub(crate) labels: &'a mut LabelTable,
    /// The examined time of settled keys in a cell (see [`Cell`]).
    pub(crate) last_pass: Time,
}

/// The heads of every entry (lone bucket or container) of one base label
/// set, whatever its placement's level: a pass at level `p` skips entries
/// of other levels.
/// Keeping one ordered set per base set (rather than one per level) means an
/// account that changes level moves nothing but its placement's counters.
///
/// Keys here are in pool-wide terms: a settled key ([`ExKey::SETTLED`]) means
/// "examined at the last pass"; a settled request of a placement whose stamp
/// is older carries that stamp explicitly (see [`QueueIndex::translate`]).
#[derive(Clone, Debug, Default)]
pub(crate) struct Cell {
    /// Entry heads; each key's `v` names its entry's placement, whose
    /// level is the head's level. Levels are not counted per cell: an
    /// account that changes level would then touch every cell it is in.
    heads: OrdSet<QKey>,
    /// Bucket heads by provisionable set (sorted by set id), so that a
    /// worker looking for provisioned work looks only at the provisionable
    /// sets it has. Each key's `v` names the bucket's placement.
    by_prov: SmallVec<[(SetId, OrdSet<QKey>); 1]>,
    /// Entries with this base set (with or without a head).
    entries: u32,
}

impl Cell {
    /// The heads of the cell's entries, in key order.
    #[inline]
    pub(crate) fn heads(&self) -> &OrdSet<QKey> {
        &self.heads
    }

    /// The heads of the buckets with provisionable set `prov`, if any.
    #[inline]
    pub(crate) fn prov_heads(&self, prov: SetId) -> Option<&OrdSet<QKey>> {
        let i = self.by_prov.binary_search_by_key(&prov, |(p, _)| *p).ok()?;
        Some(&self.by_prov[i].1)
    }
}

/// Where a placement's heads are counted in [`QueueIndex`]'s per-level
/// count: its level, or one past the levels for placements that sit out the
/// pass (free level with free tasks disabled).
pub(crate) fn level_slot(level: Option<u8>) -> usize {
    level.map_or(LEVELS, usize::from)
}

/// An account as the queue index sees it: one for the account's normal
/// placement, one for its fanout-throttled requests.
#[derive(Clone, Debug, Default)]
pub(crate) struct Virt {
    /// Current level (0..=5), `None` while it sits out passes (free level
    /// with free tasks disabled).
    level: Option<u8>,
    /// The examined time of this placement's settled requests: the last pass
    /// it took part in. Requests of placements that sat out later passes
    /// keep this older time without being touched.
    stamp: Time,
    /// Base set → entry (see [`Container`]).
    entries: FxHashMap<SetId, EntryId>,
    /// Buckets that may hold explicit (unsettled) members.
    dirty: Vec<BucketId>,
    /// Number of settled members in this placement's buckets.
    settled: u64,
    /// Number of its entries that have a head (a queued request).
    headed: u64,
}

impl Virt {
    /// The level the placement sits at, `None` while it sits out passes.
    #[inline]
    pub(crate) fn level(&self) -> Option<u8> {
        self.level
    }

    /// Whether it has queued requests.
    #[inline]
    pub(crate) fn has_entries(&self) -> bool {
        !self.entries.is_empty()
    }
}

/// The buckets of one placement with the same base set, when there are two
/// or more of them.
///
/// The queue index keeps one **entry** per (placement, base set) in the
/// base set's cell: a lone bucket, or a container holding the order of its
/// buckets' heads (see [`EntryId`]). With labels of their own, most tasks
/// sit in a lone bucket, so a container is built only for a second bucket
/// and goes when one is left.
#[derive(Clone, Debug)]
pub(crate) struct Container {
    virt: VirtId,
    base: SetId,
    /// Provisionable set → bucket, sorted by set id (two or more).
    buckets: SmallVec<[(SetId, BucketId); 2]>,
    /// The heads of the buckets.
    heads: OrdSet<QKey>,
}

/// The queued requests of one account with one base set and one
/// provisionable set, in key order: every member is interchangeable for
/// matching, so only the head matters to a pass.
#[derive(Clone, Debug)]
pub(crate) struct Bucket {
    virt: VirtId,
    /// `None` for a lone bucket (its own entry).
    container: Option<ContainerId>,
    account: AccountIdx,
    base: SetId,
    prov: SetId,
    group: GroupRef,
    members: OrdSet<QKey>,
    explicit: u32,
    dirty: bool,
}

impl Bucket {
    /// Its members in key order (keys relative to its placement's stamp).
    #[inline]
    pub(crate) fn members(&self) -> &OrdSet<QKey> {
        &self.members
    }

    /// Its placement.
    #[cfg(any(test, debug_assertions))]
    pub(crate) fn virt(&self) -> VirtId {
        self.virt
    }

    pub(crate) fn account(&self) -> AccountIdx {
        self.account
    }

    /// Its base set.
    pub(crate) fn base(&self) -> SetId {
        self.base
    }

    /// Its provisionable set.
    #[cfg(any(test, debug_assertions))]
    pub(crate) fn prov(&self) -> SetId {
        self.prov
    }

    /// The fanout group of its members.
    pub(crate) fn group(&self) -> GroupRef {
        self.group
    }
}

/// The queue index (see the module docs).
#[derive(Clone, Debug, Default)]
pub(crate) struct QueueIndex {
    /// Stored cells ([`CellKind::Many`](super::ids::CellKind::Many)).
    cells: Slab<CellId, Cell>,
    /// Buckets by (account, base set, provisionable set).
    bucket_ids: SlotIndex<BucketId>,
    buckets: Slab<BucketId, Bucket>,
    containers: Slab<ContainerId, Container>,
    /// Each account's placements, `[normal, throttled]`, by account slot;
    /// the slot of an account that is gone holds empty placements.
    placements: Vec<[Virt; 2]>,
    /// Number of entry heads per level slot (see [`level_slot`]): the sum
    /// of `headed` over the placements at that level, so that a placement
    /// changes level in constant time.
    headed_at: [u64; LEVELS + 1],
}

/// A request's key as it sits in its bucket.
pub(crate) fn qkey(req: &Request, r: ReqIdx) -> QKey {
    QKey {
        ex: req.examined.explicit().map_or(ExKey::SETTLED, ExKey::at),
        enq: req.enqueue.as_nanos(),
        id: req.id.clone(),
        req: r,
        v: VirtId::default(),
    }
}

/// The hash of a bucket's key in the bucket index.
fn bucket_hash(a: AccountIdx, base: SetId, prov: SetId) -> u64 {
    hash_ids([a.slot(), base.slot(), prov.slot()])
}

impl QueueIndex {
    /// Gives new account `a` its two placements, at the free level until
    /// a pass places them.
    pub(crate) fn open_account(&mut self, a: AccountIdx) {
        let i = a.index();
        if self.placements.len() <= i {
            self.placements.resize_with(i + 1, Default::default);
        }
        let open = || Virt {
            level: Some(FREE_PRIORITY),
            ..Virt::default()
        };
        self.placements[i] = [open(), open()];
    }

    /// Account `a`, which has no queued request, is gone.
    pub(crate) fn close_account(&mut self, a: AccountIdx) {
        let placements = &mut self.placements[a.index()];
        debug_assert!(placements.iter().all(|v| v.entries.is_empty()));
        *placements = Default::default();
    }

    /// Placement `v`.
    #[inline]
    pub(crate) fn placement(&self, v: VirtId) -> &Virt {
        &self.placements[v.account().index()][v.half()]
    }

    #[inline]
    fn placement_mut(&mut self, v: VirtId) -> &mut Virt {
        &mut self.placements[v.account().index()][v.half()]
    }

    /// The level placement `v` sits at.
    #[inline]
    pub(crate) fn level(&self, v: VirtId) -> Option<u8> {
        self.placement(v).level
    }

    /// Whether some cell has an entry head at level `p`.
    #[inline]
    pub(crate) fn has_cells_at(&self, p: u8) -> bool {
        self.headed_at[usize::from(p)] > 0
    }

    /// Stored cell `c`.
    #[inline]
    pub(crate) fn cell(&self, c: CellId) -> &Cell {
        &self.cells[c]
    }

    /// Bucket `b`.
    #[inline]
    pub(crate) fn bucket(&self, b: BucketId) -> &Bucket {
        &self.buckets[b]
    }

    /// Buckets in slot order.
    pub(crate) fn buckets(&self) -> impl Iterator<Item = (BucketId, &Bucket)> {
        self.buckets.iter()
    }

    /// The examined time of bucket `b`'s settled members.
    pub(crate) fn bucket_stamp(&self, b: BucketId) -> Time {
        self.placement(self.buckets[b].virt).stamp
    }

    /// Bucket `b`'s members belong to fanout group `g` (or, with
    /// [`GroupRef::NO_FANOUT`], to none) from now on.
    pub(crate) fn set_bucket_group(&mut self, b: BucketId, g: GroupRef) {
        self.buckets[b].group = g;
    }

    /// Placement `v`'s key `k` as a cell stores it: in pool-wide terms (see
    /// [`Cell`]), where a settled key of a placement whose stamp is older
    /// than the last pass carries the stamp, and marked with the
    /// placement.
    pub(crate) fn translate(&self, last_pass: Time, v: VirtId, k: &QKey) -> QKey {
        let mut k = k.clone();
        k.v = v;
        if k.ex.is_settled() {
            let stamp = self.placement(v).stamp;
            if stamp != last_pass {
                k.ex = ExKey::at(stamp);
            }
        }
        k
    }

    /// The placement of entry `e` (see [`Container`]).
    #[inline]
    pub(crate) fn entry_virt(&self, e: EntryId) -> VirtId {
        match e.get() {
            Entry::Container(c) => self.containers[c].virt,
            Entry::Bucket(b) => self.buckets[b].virt,
        }
    }

    /// The base set of entry `e`.
    fn entry_base(&self, e: EntryId) -> SetId {
        match e.get() {
            Entry::Container(c) => self.containers[c].base,
            Entry::Bucket(b) => self.buckets[b].base,
        }
    }

    /// The head of entry `e`: the best head of its buckets.
    #[inline]
    pub(crate) fn entry_head(&self, e: EntryId) -> Option<&QKey> {
        match e.get() {
            Entry::Container(c) => self.containers[c].heads.first(),
            Entry::Bucket(b) => self.buckets[b].members.first(),
        }
    }

    /// The buckets of entry `e`, as (provisionable set, bucket) sorted by
    /// set.
    fn entry_buckets(&self, e: EntryId) -> impl Iterator<Item = (SetId, BucketId)> + '_ {
        let mut lone = None;
        let mut many: &[(SetId, BucketId)] = &[];
        match e.get() {
            Entry::Container(c) => many = &self.containers[c].buckets,
            Entry::Bucket(b) => lone = Some((self.buckets[b].prov, b)),
        }
        lone.into_iter().chain(many.iter().copied())
    }

    /// The head of entry `e`'s bucket for provisionable set `prov`, if
    /// any.
    #[inline]
    pub(crate) fn entry_prov_head(&self, e: EntryId, prov: SetId) -> Option<&QKey> {
        let b = match e.get() {
            Entry::Container(c) => {
                let buckets = &self.containers[c].buckets;
                let i = buckets.binary_search_by_key(&prov, |&(p, _)| p).ok()?;
                buckets[i].1
            }
            Entry::Bucket(b) => (self.buckets[b].prov == prov).then_some(b)?,
        };
        self.buckets[b].members.first()
    }

    /// The entry bucket `b` belongs to.
    fn entry_of(&self, b: BucketId) -> EntryId {
        match self.buckets[b].container {
            None => EntryId::bucket(b),
            Some(c) => EntryId::container(c),
        }
    }

    /// Placement `v`'s entries as (base set, entry), for walking them
    /// while changing the index.
    fn virt_entries(&self, v: VirtId) -> Vec<(SetId, EntryId)> {
        self.placement(v)
            .entries
            .iter()
            .map(|(&s, &e)| (s, e))
            .collect()
    }
}
