//! Typed ids for the scheduler's tables, and the packed ids that ride in
//! fields every queued task pays for.
//!
//! Every table of the scheduler is a [`Slab`](super::slab::Slab) addressed
//! by a slot number, and each table has its own id type, so that the
//! compiler keeps requests, workers, label sets, buckets and groups apart.
//! An id holds its slot plus one in a `NonZeroU32`: `Option<Id>` is as small
//! as the id, so an optional id needs no reserved value.
//!
//! A few fields hold one of several kinds of reference in one `u32` (an
//! entry of the queue index is a bucket or a container; a request's fanout
//! group is absent, lone or built). Each has a packed type here whose only
//! ways in and out are a constructor per kind and an unpacking method, so
//! that no code outside this file sees a tag bit or a reserved value. The
//! one thing not to break: ids hash and sort as their slot numbers do, so
//! hash tables keyed by ids lay out as bare slot numbers did.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::num::NonZeroU32;

/// A slot number of a [`Slab`](super::slab::Slab), typed by table.
pub(crate) trait SlotId: Copy {
    /// The id of slot `slot`.
    fn from_slot(slot: u32) -> Self;
    /// The slot this id names.
    fn slot(self) -> u32;
    /// The slot as an index into a vector kept beside the table.
    fn index(self) -> usize {
        self.slot() as usize
    }
}

#[cfg(test)]
impl SlotId for u32 {
    fn from_slot(slot: u32) -> Self {
        slot
    }
    fn slot(self) -> u32 {
        self
    }
}

macro_rules! slot_ids {
    ($($(#[$doc:meta])* $name:ident;)*) => {$(
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
        pub(crate) struct $name(NonZeroU32);

        impl SlotId for $name {
            #[inline]
            fn from_slot(slot: u32) -> Self {
                match NonZeroU32::new(slot.wrapping_add(1)) {
                    Some(n) => $name(n),
                    // A slab never hands out slot `u32::MAX`: it would
                    // have to hold four billion entries first.
                    None => panic!(concat!(stringify!($name), ": slot out of range")),
                }
            }

            #[inline]
            fn slot(self) -> u32 {
                self.0.get() - 1
            }
        }

        impl Hash for $name {
            fn hash<H: Hasher>(&self, h: &mut H) {
                self.slot().hash(h)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.slot())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.slot())
            }
        }
    )*};
}

slot_ids! {
    /// An interned label.
    LabelId;
    /// An interned label set.
    SetId;
    /// A request (queued, running, or detached for a moment).
    ReqIdx;
    /// A worker (a bot).
    WorkerIdx;
    /// An account, configured or only named by requests.
    AccountIdx;
    /// A bucket of the queue index.
    BucketId;
    /// A container of the queue index (two or more buckets of one
    /// placement with one base set).
    ContainerId;
    /// A stored cell of the queue index.
    CellId;
    /// A built fanout group.
    GroupId;
}

/// One of an account's two placements in the queue index: its normal one
/// or the one for its fanout-throttled requests (see `Virt`). Packed as
/// `account slot * 2 + throttled`, because every key in a cell carries one.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub(crate) struct VirtId(u32);

impl VirtId {
    /// Account `a`'s normal (`throttled == false`) or throttled placement.
    pub(crate) fn new(a: AccountIdx, throttled: bool) -> VirtId {
        VirtId(a.slot() * 2 + u32::from(throttled))
    }

    pub(crate) fn account(self) -> AccountIdx {
        AccountIdx::from_slot(self.0 >> 1)
    }

    /// 0 for the normal placement, 1 for the throttled one.
    pub(crate) fn half(self) -> usize {
        (self.0 & 1) as usize
    }
}

impl fmt::Debug for VirtId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VirtId({}, {})", self.0 >> 1, self.0 & 1)
    }
}

/// An entry of the queue index: a lone bucket or a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Entry {
    Bucket(BucketId),
    Container(ContainerId),
}

/// An [`Entry`] packed in a `u32` (bit 30 tags containers), so that a
/// placement's entry table and a base set's [`CellRef`] stay four bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct EntryId(u32);

impl EntryId {
    const CONTAINER: u32 = 1 << 30;

    pub(crate) fn bucket(b: BucketId) -> EntryId {
        assert!(b.slot() < Self::CONTAINER, "too many buckets");
        EntryId(b.slot())
    }

    pub(crate) fn container(c: ContainerId) -> EntryId {
        assert!(c.slot() < Self::CONTAINER, "too many containers");
        EntryId(c.slot() | Self::CONTAINER)
    }

    pub(crate) fn get(self) -> Entry {
        if self.0 & Self::CONTAINER != 0 {
            Entry::Container(ContainerId::from_slot(self.0 & !Self::CONTAINER))
        } else {
            Entry::Bucket(BucketId::from_slot(self.0))
        }
    }
}

impl From<Entry> for EntryId {
    fn from(e: Entry) -> EntryId {
        match e {
            Entry::Bucket(b) => EntryId::bucket(b),
            Entry::Container(c) => EntryId::container(c),
        }
    }
}

impl fmt::Debug for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.get().fmt(f)
    }
}

/// How a base set's cell is stored.
///
/// Most base sets with queued work have one entry (one placement uses
/// them): every task with labels of its own brings one. Such a cell is
/// [`CellKind::Single`]: nothing is stored, and its one entry (a lone
/// bucket or a container of buckets) is read when a pass looks. A second
/// entry makes it a stored `Cell`, which stays until the set's last entry
/// goes. Packed in a `u32` (bit 31 tags stored cells, `u32::MAX` is "no
/// cell") because every label set carries one.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct CellRef(u32);

/// [`CellRef`] unpacked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CellKind {
    /// No placement has queued work with this base set.
    None,
    /// It has exactly this entry; the cell is derived from it.
    Single(EntryId),
    /// A stored cell.
    Many(CellId),
}

impl CellRef {
    /// No cell: no placement has an entry with the set as its base.
    pub(crate) const NONE: CellRef = CellRef(u32::MAX);
    const MANY: u32 = 1 << 31;

    pub(crate) fn single(e: EntryId) -> CellRef {
        // Entry ids stay below bit 31 (see `EntryId`).
        CellRef(e.0)
    }

    pub(crate) fn many(i: CellId) -> CellRef {
        assert!(i.slot() < Self::MANY - 1, "cell index out of range");
        CellRef(Self::MANY | i.slot())
    }

    pub(crate) fn kind(self) -> CellKind {
        if self == Self::NONE {
            CellKind::None
        } else if self.0 & Self::MANY != 0 {
            CellKind::Many(CellId::from_slot(self.0 & !Self::MANY))
        } else {
            CellKind::Single(EntryId(self.0))
        }
    }

    pub(crate) fn is_some(self) -> bool {
        self != Self::NONE
    }
}

impl fmt::Debug for CellRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.kind().fmt(f)
    }
}

/// A request's (or bucket's) fanout group, unpacked from [`GroupRef`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GroupKind {
    /// The account does not use fanout. Groups are only kept for accounts
    /// with `max_fanout > 0`: each costs a struct, an index entry and
    /// references to two label sets, which most accounts never need.
    NoFanout,
    /// The account uses fanout, but this is, so far, the only request with
    /// its key: a group of one can never be throttled, so it is not built
    /// until a second request joins (see `Scheduler::group_ref`). With
    /// labels of their own per task, that saves a group per task.
    Lone,
    /// A built group.
    Group(GroupId),
}

/// A [`GroupKind`] packed in a `u32` (the two top values mark the kinds
/// without a group), because every request carries one.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct GroupRef(u32);

impl GroupRef {
    /// See [`GroupKind::NoFanout`].
    pub(crate) const NO_FANOUT: GroupRef = GroupRef(u32::MAX);
    /// See [`GroupKind::Lone`].
    pub(crate) const LONE: GroupRef = GroupRef(u32::MAX - 1);

    pub(crate) fn built(g: GroupId) -> GroupRef {
        assert!(g.slot() < u32::MAX - 1, "too many groups");
        GroupRef(g.slot())
    }

    pub(crate) fn kind(self) -> GroupKind {
        match self {
            Self::NO_FANOUT => GroupKind::NoFanout,
            Self::LONE => GroupKind::Lone,
            GroupRef(g) => GroupKind::Group(GroupId::from_slot(g)),
        }
    }

    /// The built group, if any.
    pub(crate) fn group(self) -> Option<GroupId> {
        match self.kind() {
            GroupKind::Group(g) => Some(g),
            GroupKind::NoFanout | GroupKind::Lone => None,
        }
    }
}

impl fmt::Debug for GroupRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.kind().fmt(f)
    }
}

/// An entry of the fanout group index, unpacked from [`GroupSlot`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GroupKey {
    /// A lone request, indexed under its own key.
    Lone(ReqIdx),
    /// A built group.
    Group(GroupId),
}

/// A [`GroupKey`] packed in a `u32` (bit 31 tags lone requests), as the
/// group index stores it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct GroupSlot(u32);

impl GroupSlot {
    const LONE: u32 = 1 << 31;

    pub(crate) fn lone(r: ReqIdx) -> GroupSlot {
        assert!(r.slot() < Self::LONE, "request index out of range");
        GroupSlot(r.slot() | Self::LONE)
    }

    pub(crate) fn group(g: GroupId) -> GroupSlot {
        assert!(g.slot() < Self::LONE, "too many groups");
        GroupSlot(g.slot())
    }

    pub(crate) fn get(self) -> GroupKey {
        if self.0 & Self::LONE != 0 {
            GroupKey::Lone(ReqIdx::from_slot(self.0 & !Self::LONE))
        } else {
            GroupKey::Group(GroupId::from_slot(self.0))
        }
    }
}

impl fmt::Debug for GroupSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.get().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optional_ids_cost_nothing() {
        use std::mem::size_of;
        assert_eq!(size_of::<Option<ContainerId>>(), 4);
        assert_eq!(size_of::<GroupRef>(), 4);
        assert_eq!(size_of::<CellRef>(), 4);
    }

    #[test]
    fn packed_ids_round_trip() {
        let b = BucketId::from_slot(7);
        let c = ContainerId::from_slot(7);
        assert_eq!(EntryId::bucket(b).get(), Entry::Bucket(b));
        assert_eq!(EntryId::container(c).get(), Entry::Container(c));
        assert_ne!(EntryId::bucket(b), EntryId::container(c));
        for e in [EntryId::bucket(b), EntryId::container(c)] {
            assert_eq!(CellRef::single(e).kind(), CellKind::Single(e));
        }
        let cell = CellId::from_slot(3);
        assert_eq!(CellRef::many(cell).kind(), CellKind::Many(cell));
        assert_eq!(CellRef::NONE.kind(), CellKind::None);
        let g = GroupId::from_slot(0);
        assert_eq!(GroupRef::built(g).group(), Some(g));
        assert_eq!(GroupRef::LONE.kind(), GroupKind::Lone);
        assert_eq!(GroupRef::NO_FANOUT.group(), None);
        let r = ReqIdx::from_slot(0);
        assert_eq!(GroupSlot::lone(r).get(), GroupKey::Lone(r));
        assert_eq!(GroupSlot::group(g).get(), GroupKey::Group(g));
        let a = AccountIdx::from_slot(5);
        assert_eq!(VirtId::new(a, true).account(), a);
        assert_eq!(VirtId::new(a, true).half(), 1);
        assert_eq!(VirtId::new(a, false).half(), 0);
    }

    #[test]
    fn ids_order_and_hash_as_their_slots() {
        use std::hash::BuildHasher;
        let h = rustc_hash::FxBuildHasher;
        for slot in [0u32, 1, 1000, u32::MAX - 1] {
            let id = SetId::from_slot(slot);
            assert_eq!(id.slot(), slot);
            assert_eq!(h.hash_one(id), h.hash_one(slot));
        }
        assert!(SetId::from_slot(1) < SetId::from_slot(2));
    }
}
