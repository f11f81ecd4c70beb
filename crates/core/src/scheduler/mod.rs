//! The quotascheduler: state, time, notifications and the scheduling pass.
//!
//! # How it stays fast
//!
//! A naive pass compares every idle worker with every queued request and
//! re-sorts the whole queue; at 50,000 bots and 1,000,000 queued tasks that
//! is hopeless. This implementation keeps the queue in an index that a pass
//! can query instead of scanning:
//!
//! * Requests with the same account, base labels and provisionable labels
//!   sit together in a **bucket**, ordered by the in-level order (examined
//!   time, enqueue time, id). Every member of a bucket is interchangeable
//!   for matching, so only the bucket's head matters.
//! * Each account placement (`Virt`) has one **entry** per base label
//!   set: its only bucket with those base labels, or a **container** of two
//!   or more such buckets, ordered by their heads.
//! * For each base label set there is a **cell**: the heads of its entries
//!   in every placement, each marked with its placement and so its level. A
//!   worker's best candidate at a level is found by looking only at the
//!   cells of the base label sets it can run (usually a few dozen), not at
//!   the queue.
//! * Each idle worker keeps the list of active label sets it is a superset
//!   of ("eligible sets"). The list is built by the first pass that finds
//!   the worker idle, by looking up the pairs of its labels under which
//!   sets are registered, and then maintained as sets appear or disappear;
//!   it is dropped when the worker starts a task. So adding a worker or a
//!   request, or decoding a snapshot, never compares every worker with
//!   every set (see `eligibility.rs`).
//! * When an account changes level, only counters change: cells are ordered
//!   by key, whatever the level.
//! * After a pass every listed request's examined time becomes the pass
//!   time. Rather than re-key the whole queue, requests are "settled": their
//!   key carries a marker meaning "examined at the last pass", which keeps
//!   its place in every order when the next pass stamps a later time. Only
//!   requests that joined since the last pass, or whose account sat out the
//!   pass, change keys.
//!
//! # How it stays small
//!
//! Memory per queued task is dominated by the index when tasks have label
//! sets of their own: each brings a label set, a bucket and, in principle, a
//! cell, a container and a fanout group. So structures of one are not built,
//! and derived data is not stored twice:
//!
//! * a base set with one entry has no stored cell: a pass reads its one
//!   entry directly (`CellKind::Single`);
//! * a lone bucket is its own entry; a container is built for a second
//!   bucket and goes when one is left;
//! * a fanout group is built for a second request with its key; a group of
//!   one cannot be throttled (`LONE`);
//! * label names live once, in the label table; sets and workers keep ids,
//!   and sorted names are built when an event or a view needs them;
//! * the set, bucket and group tables store slot numbers only and compare
//!   keys through the slabs (`idmap::SlotIndex`);
//! * a fanout group keeps references to its first request's sets instead of
//!   interning the union of their labels;
//! * slabs grow in fixed chunks, never by doubling;
//! * one-element ordered sets and lists are stored inline;
//! * flags and optional ids ride in sentinel values of fields that are
//!   there anyway, where a separate field would pad a struct per task.
//!
//! `layout_tests` pins the sizes of the per-task structures.
//!
//! The rules implemented are those of the crate documentation; the test
//! suite checks this implementation against a direct, slow transcription of
//! the same rules on random operation sequences.

mod eligibility;
mod groups;
mod idmap;
mod index;
#[cfg(any(test, debug_assertions))]
mod invariants;
mod labels;
mod notify;
pub(crate) mod ordset;
mod pass;
mod probe;
mod requests;
pub(crate) mod slab;
mod view;
mod workers;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};
use smallvec::SmallVec;

use crate::account::{AccountConfig, Balance, NUM_PRIORITIES, PoolSettings};
use crate::event::Event;
use crate::time::Time;
use ordset::OrdSet;
use slab::Slab;

pub use probe::{BotProbe, STANDING_WALK_BUDGET, Standing, TaskProbe};
pub use view::{QueuedView, RequestDump, RunningView, StateDump, WorkerDump, WorkerView};

/// A request as Swarming describes it, before the scheduler knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRequest {
    /// Task id (non-empty).
    pub id: String,
    /// Quota account ("" for none).
    pub account: String,
    /// Labels a worker must have to run the task.
    pub base_labels: Vec<String>,
    /// Labels a worker should have to avoid re-provisioning.
    pub provisionable_labels: Vec<String>,
    /// When Swarming created the task.
    pub enqueue_time: Time,
}

/// Why [`Scheduler::unassign`] did nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unassign: request {request} not on worker {worker}")]
pub struct NotAssigned {
    /// The request.
    pub request: String,
    /// The worker.
    pub worker: String,
}

/// The group of a request whose account does not use fanout. Groups are
/// only kept for accounts with `max_fanout > 0`: each costs a struct, a map
/// entry and references to two label sets, which most accounts never need.
pub(crate) const NO_GROUP: u32 = u32::MAX;

/// The group of a request whose account uses fanout but which is, so far,
/// the only request with its key: a group of one can never be throttled,
/// so it is not built until a second request joins (see
/// `Scheduler::group_ref`). With labels of its own per task, that saves a
/// group per task.
pub(crate) const LONE: u32 = u32::MAX - 1;

/// Whether a request's or bucket's `group` names a built group.
pub(crate) fn has_group(g: u32) -> bool {
    g < LONE
}

/// Marks a level cell for accounts that sit out the pass (free level with
/// free tasks disabled).
pub(crate) const OMITTED: u8 = 6;
/// Number of level cells: five paid levels and the free level.
pub(crate) const LEVELS: usize = NUM_PRIORITIES + 1;
/// The examined-time field of a settled request's key: "examined at the last
/// pass", sorting after every explicit examined time.
pub(crate) const SETTLED: i64 = i64::MAX;

/// The position of a queued request in every order: examined time, enqueue
/// time, id. `req` rides along to find the request; it never decides order
/// because ids are unique.
#[derive(Clone, Debug)]
pub(crate) struct QKey {
    pub(crate) ex: i64,
    pub(crate) enq: i64,
    pub(crate) id: Arc<str>,
    pub(crate) req: u32,
    /// In a cell: the placement (see [`Virt`]) of the entry whose head
    /// this is, which gives its level (unused elsewhere).
    pub(crate) v: u32,
}

impl PartialEq for QKey {
    fn eq(&self, o: &Self) -> bool {
        self.ex == o.ex && self.enq == o.enq && self.id == o.id
    }
}
impl Eq for QKey {}
impl PartialOrd for QKey {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for QKey {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.ex
            .cmp(&o.ex)
            .then(self.enq.cmp(&o.enq))
            .then_with(|| self.id.cmp(&o.id))
    }
}

/// An interned label.
#[derive(Clone, Debug)]
pub(crate) struct LabelEntry {
    pub(crate) name: Arc<str>,
    /// Workers and label sets holding this label.
    pub(crate) refs: u32,
    /// Workers that have this label and keep an eligible list (see
    /// `eligibility`), sorted. A sorted vector costs half what a hash set
    /// does per entry; the price, a shift on insert and removal, is paid
    /// only when such a worker comes or goes.
    pub(crate) workers: Vec<u32>,
    /// Workers that have this label, whether or not they keep an eligible
    /// list (to pick good anchors).
    pub(crate) worker_count: u32,
    /// Active label sets anchored at this label, as (second anchor label,
    /// set, a third label of the set or the second again), sorted: see
    /// `eligibility`. A sorted vector rather than a tree
    /// because listing a worker reads these tables end to end, which a
    /// vector does at memory speed; anchors are spread over the rarest
    /// labels, which keeps each table short.
    pub(crate) anchored: Vec<(u32, u32, u32)>,
    /// Active label sets containing this label (to pick good anchors).
    pub(crate) active_sets: u32,
}

/// An interned label set (sorted label ids).
#[derive(Clone, Debug)]
pub(crate) struct SetEntry {
    pub(crate) labels: Box<[u32]>,
    /// Requests and groups holding this set.
    pub(crate) refs: u32,
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
    /// which the set is registered for eligibility (see `eligibility`),
    /// packed; [`NO_ANCHOR`] otherwise.
    pub(crate) anchor: u32,
    /// While some placement has an entry with this base set: its cell.
    pub(crate) cell: CellRef,
}

impl SetEntry {
    fn active(&self) -> bool {
        self.req_refs > 0
    }
}

/// `SetEntry::anchor` of an inactive set.
pub(crate) const NO_ANCHOR: u32 = u32::MAX;

/// How a base set's cell is stored.
///
/// Most base sets with queued work have one entry (one placement uses
/// them): every task with labels of its own brings one. Such a cell is
/// [`CellKind::Single`]: nothing is stored, its one entry (a lone bucket or
/// a container) is read when a pass looks. A second entry makes it a stored
/// [`Cell`], which stays until the set's last entry goes. Packed in a `u32`
/// because every label set carries one.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct CellRef(u32);

/// [`CellRef`] unpacked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CellKind {
    /// No placement has queued work with this base set.
    None,
    /// It has exactly this entry (see [`Container`]); the cell is derived
    /// from it.
    Single(u32),
    /// A stored cell, in `Scheduler::cells`.
    Many(u32),
}

impl CellRef {
    pub(crate) const NONE: CellRef = CellRef(u32::MAX);
    const MANY: u32 = 1 << 31;

    pub(crate) fn single(e: u32) -> CellRef {
        assert!(e < Self::MANY, "entry id out of range");
        CellRef(e)
    }

    pub(crate) fn many(i: u32) -> CellRef {
        assert!(i < Self::MANY - 1, "cell index out of range");
        CellRef(Self::MANY | i)
    }

    pub(crate) fn kind(self) -> CellKind {
        if self == Self::NONE {
            CellKind::None
        } else if self.0 & Self::MANY != 0 {
            CellKind::Many(self.0 & !Self::MANY)
        } else {
            CellKind::Single(self.0)
        }
    }

    pub(crate) fn is_some(self) -> bool {
        self != Self::NONE
    }
}

impl std::fmt::Debug for CellRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.kind().fmt(f)
    }
}

/// The heads of every container of one base label set, whatever its
/// account's level: a pass at level `p` skips entries of other levels.
/// Keeping one ordered set per base set (rather than one per level) means an
/// account that changes level moves nothing but counters.
///
/// Keys here are in pool-wide terms: a settled key (`ex == SETTLED`) means
/// "examined at the last pass"; a settled request of a placement whose stamp
/// is older carries that stamp explicitly (see [`Scheduler::translate`]).
#[derive(Clone, Debug, Default)]
pub(crate) struct Cell {
    /// Container heads; each key's `c` names its container.
    pub(crate) heads: OrdSet<QKey>,
    /// Number of container heads per placement level (0..=5, and
    /// [`OMITTED`]).
    pub(crate) per_level: [u32; LEVELS + 1],
    /// Bucket heads by provisionable set (sorted by set id), so that a
    /// worker looking for provisioned work looks only at the provisionable
    /// sets it has. Each key's `c` names the bucket's container.
    pub(crate) by_prov: SmallVec<[(u32, OrdSet<QKey>); 1]>,
    /// Entries with this base set (with or without a head).
    pub(crate) entries: u32,
}

/// Where a request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Place {
    /// In the queue, in this bucket.
    Queued(u32),
    /// Running on this worker.
    Running(u32),
    /// Detached for a moment (being moved).
    Detached,
}

#[derive(Clone, Debug)]
pub(crate) struct Request {
    pub(crate) id: Arc<str>,
    pub(crate) account: u32,
    pub(crate) base: u32,
    pub(crate) prov: u32,
    pub(crate) group: u32,
    pub(crate) enqueue: Time,
    pub(crate) confirmed: Time,
    /// Examined time, or [`Time::SETTLED_MARK`] while settled: examined at
    /// its placement's stamp (see [`Scheduler::examined`]).
    pub(crate) examined: Time,
    pub(crate) place: Place,
}

impl Request {
    pub(crate) fn settled(&self) -> bool {
        self.examined == Time::SETTLED_MARK
    }
}

#[derive(Clone, Debug)]
pub(crate) struct TaskRun {
    pub(crate) req: u32,
    pub(crate) priority: u8,
    pub(crate) cost: Balance,
}

#[derive(Clone, Debug)]
pub(crate) struct Worker {
    pub(crate) id: Arc<str>,
    /// Sorted label ids.
    pub(crate) labels: Box<[u32]>,
    /// The same label ids in name order, for lookups by name prefix and
    /// for building the sorted names on demand (a list of names per worker
    /// would hold a pointer per label instead of an id).
    pub(crate) by_name: Box<[u32]>,
    pub(crate) confirmed: Time,
    pub(crate) modified: Time,
    pub(crate) running: Option<TaskRun>,
    /// While `listed`: the active non-empty label sets this worker's labels
    /// include (empty otherwise).
    pub(crate) eligible: Vec<u32>,
    /// Whether `eligible` is kept: from the first pass that looks for work
    /// for the worker (idle, or as a preemption candidate) until it leaves
    /// or changes labels, or runs a task while preemption is disabled.
    pub(crate) listed: bool,
}

/// An account as the queue index sees it: one for the account's normal
/// placement, one for its fanout-throttled requests.
#[derive(Clone, Debug, Default)]
pub(crate) struct Virt {
    /// Current level cell (0..=5) or [`OMITTED`].
    pub(crate) level: u8,
    /// The examined time of this placement's settled requests: the last pass
    /// it took part in. Requests of placements that sat out later passes
    /// keep this older time without being touched.
    pub(crate) stamp: Time,
    /// Base set → entry (see [`Container`]).
    pub(crate) entries: FxHashMap<u32, u32>,
    /// Buckets that may hold explicit (unsettled) members.
    pub(crate) dirty: Vec<u32>,
    /// Number of settled members in this placement's buckets.
    pub(crate) settled: u64,
}

#[derive(Clone, Debug)]
pub(crate) struct Account {
    pub(crate) id: Arc<str>,
    pub(crate) config: Option<AccountConfig>,
    /// Meaningful only when configured; zero while `balance_listed` is
    /// false.
    pub(crate) balance: Balance,
    /// Whether the pool holds a balance for this configured account. After
    /// a wipe it holds none until the next clock update creates them
    /// (reference §6.4 step 4); passes read a missing balance as zero.
    pub(crate) balance_listed: bool,
    /// Requests (queued or running) of this account.
    pub(crate) requests: u32,
    pub(crate) running_by_prio: [u32; LEVELS],
    pub(crate) running: FxHashSet<u32>,
    /// `[normal, throttled]`.
    pub(crate) virt: [Virt; 2],
}

/// The buckets of one placement with the same base set, when there are two
/// or more of them.
///
/// The queue index keeps one **entry** per (placement, base set) in the
/// base set's cell: a lone bucket, or a container holding the order of its
/// buckets' heads. Entry ids are bucket ids, or container ids tagged with
/// [`CONTAINER_TAG`]. With labels of their own, most tasks sit in a lone
/// bucket, so a container is built only for a second bucket and goes when
/// one is left.
#[derive(Clone, Debug)]
pub(crate) struct Container {
    pub(crate) virt: u32,
    pub(crate) base: u32,
    /// Provisionable set → bucket, sorted by set id (two or more).
    pub(crate) buckets: SmallVec<[(u32, u32); 2]>,
    /// The heads of the buckets.
    pub(crate) heads: OrdSet<QKey>,
}

/// Marks a container's id among entry ids (see [`Container`]).
pub(crate) const CONTAINER_TAG: u32 = 1 << 30;
/// `Bucket::container` of a lone bucket.
pub(crate) const NO_CONTAINER: u32 = u32::MAX;

#[derive(Clone, Debug)]
pub(crate) struct Bucket {
    pub(crate) virt: u32,
    pub(crate) container: u32,
    pub(crate) account: u32,
    pub(crate) base: u32,
    pub(crate) prov: u32,
    pub(crate) group: u32,
    pub(crate) members: OrdSet<QKey>,
    pub(crate) explicit: u32,
    pub(crate) dirty: bool,
}

/// A fanout group: one account's requests with identical labels, once
/// there are two or more (see [`LONE`]).
#[derive(Clone, Debug)]
pub(crate) struct Group {
    pub(crate) account: u32,
    /// Base and provisionable sets of the request that created the group;
    /// their union is the group's key.
    pub(crate) base: u32,
    pub(crate) prov: u32,
    /// Requests (queued or running) in the group.
    pub(crate) requests: u32,
    /// Running tasks in the group.
    pub(crate) running: u32,
    pub(crate) buckets: SmallVec<[u32; 1]>,
    pub(crate) throttled: bool,
    pub(crate) dirty: bool,
    pub(crate) pass_stamp: u64,
    pub(crate) pass_base: u32,
    pub(crate) pass_assigned: u32,
}

/// One pool's quotascheduler.
#[derive(Clone, Debug)]
pub struct Scheduler {
    pub(crate) settings: PoolSettings,
    pub(crate) now: Time,
    /// Time of the last pass: the examined time of settled requests.
    pub(crate) last_pass: Time,
    pub(crate) pass_no: u64,

    pub(crate) label_ids: FxHashMap<Arc<str>, u32>,
    pub(crate) labels: Slab<LabelEntry>,
    pub(crate) set_ids: idmap::SlotIndex,
    pub(crate) sets: Slab<SetEntry>,
    pub(crate) empty_set: u32,
    /// Stored cells ([`CellKind::Many`]).
    pub(crate) cells: Slab<Cell>,

    pub(crate) account_ids: FxHashMap<Arc<str>, u32>,
    pub(crate) accounts: Slab<Account>,
    /// Configured accounts by id.
    pub(crate) configured: BTreeMap<Arc<str>, u32>,

    pub(crate) request_ids: idmap::IdIndex,
    pub(crate) requests: Slab<Request>,
    pub(crate) queued: usize,

    pub(crate) worker_ids: idmap::IdIndex,
    pub(crate) workers: Slab<Worker>,
    /// Idle workers by id.
    pub(crate) idle: BTreeMap<Arc<str>, u32>,
    /// Idle workers by confirmed time, for expiry.
    pub(crate) idle_expiry: BTreeSet<(Time, u32)>,
    /// Running workers by their task's level.
    pub(crate) running: [FxHashSet<u32>; LEVELS],

    pub(crate) bucket_ids: idmap::SlotIndex,
    pub(crate) buckets: Slab<Bucket>,
    pub(crate) containers: Slab<Container>,
    pub(crate) group_ids: idmap::SlotIndex,
    pub(crate) groups: Slab<Group>,
    pub(crate) dirty_groups: Vec<u32>,
    /// Number of non-empty cells per level.
    pub(crate) nonempty_cells: [usize; LEVELS],

    pub(crate) events: Vec<Event>,
    /// During a bulk load (a snapshot decode, before any worker exists):
    /// the labels whose `anchored` tables took entries unsorted, to be
    /// sorted once by [`Scheduler::finish_bulk_anchoring`] instead of one
    /// sorted insertion per set. `None` at all other times.
    pub(crate) deferred_anchoring: Option<Vec<u32>>,
}

impl Scheduler {
    /// The slot of request `id`.
    pub(crate) fn request_idx(&self, id: &str) -> Option<u32> {
        self.request_ids.get(id, |r| &self.requests[r].id)
    }

    /// The slot of worker `id`.
    pub(crate) fn worker_idx(&self, id: &str) -> Option<u32> {
        self.worker_ids.get(id, |w| &self.workers[w].id)
    }

    /// An empty scheduler whose clock reads `now`.
    pub fn new(now: Time) -> Scheduler {
        let mut s = Scheduler {
            settings: PoolSettings::default(),
            now,
            last_pass: Time::EPOCH,
            pass_no: 0,
            label_ids: FxHashMap::default(),
            labels: Slab::default(),
            set_ids: idmap::SlotIndex::default(),
            sets: Slab::default(),
            empty_set: 0,
            cells: Slab::default(),
            account_ids: FxHashMap::default(),
            accounts: Slab::default(),
            configured: BTreeMap::new(),
            request_ids: idmap::IdIndex::default(),
            requests: Slab::default(),
            queued: 0,
            worker_ids: idmap::IdIndex::default(),
            workers: Slab::default(),
            idle: BTreeMap::new(),
            idle_expiry: BTreeSet::new(),
            running: Default::default(),
            bucket_ids: idmap::SlotIndex::default(),
            buckets: Slab::default(),
            containers: Slab::default(),
            group_ids: idmap::SlotIndex::default(),
            groups: Slab::default(),
            dirty_groups: Vec::new(),
            nonempty_cells: [0; LEVELS],
            events: Vec::new(),
            deferred_anchoring: None,
        };
        // The empty set lives forever: it is everybody's subset.
        s.empty_set = s.intern_set_ids(Vec::new());
        s
    }

    /// The scheduler's clock: the latest time given to [`Scheduler::update_time`].
    pub fn now(&self) -> Time {
        self.now
    }

    /// Pool-wide settings.
    pub fn settings(&self) -> &PoolSettings {
        &self.settings
    }

    /// Replaces the pool-wide settings.
    pub fn set_settings(&mut self, settings: PoolSettings) {
        let stop_preempting = settings.disable_preemption && !self.settings.disable_preemption;
        self.settings = settings;
        if stop_preempting {
            // Without preemption only idle workers need eligible lists.
            let running: Vec<u32> = self.running.iter().flatten().copied().collect();
            for w in running {
                self.unlist_worker(w);
            }
        }
    }

    /// Events produced since the last call, in order.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Number of queued requests.
    pub fn queued_len(&self) -> usize {
        self.queued
    }

    /// Number of known workers.
    pub fn workers_len(&self) -> usize {
        self.workers.len()
    }

    /// Number of idle workers.
    pub fn idle_len(&self) -> usize {
        self.idle.len()
    }

    /// Number of running workers.
    pub fn running_len(&self) -> usize {
        self.workers.len() - self.idle.len()
    }

    /// Creates or replaces an account: sets its configuration and its
    /// balance (zero if `initial_balance` is `None`). Re-creating an account
    /// therefore resets its balance.
    pub fn add_account(
        &mut self,
        id: &str,
        config: AccountConfig,
        initial_balance: Option<Balance>,
    ) {
        let a = self.account_get_or_create(id);
        self.set_account_config(a, Some(config));
        self.accounts[a].balance = initial_balance.unwrap_or(Balance::ZERO);
        self.accounts[a].balance_listed = true;
    }

    /// Forgets every balance, keeping the configurations: until the next
    /// clock update, configured accounts have no balance (as after the
    /// original's Wipe) and passes read them as zero.
    pub fn forget_balances(&mut self) {
        for &a in self.configured.values() {
            let acc = &mut self.accounts[a];
            acc.balance = Balance::ZERO;
            acc.balance_listed = false;
        }
    }

    /// Forgets one configured account's balance (see
    /// [`Scheduler::forget_balances`]).
    pub fn forget_balance(&mut self, id: &str) {
        if let Some(&a) = self.configured.get(id) {
            let acc = &mut self.accounts[a];
            acc.balance = Balance::ZERO;
            acc.balance_listed = false;
        }
    }

    /// Changes an existing account's configuration, keeping its balance.
    /// Returns false if the account is not configured.
    pub fn update_account_config(&mut self, id: &str, config: AccountConfig) -> bool {
        match self.account_ids.get(id) {
            Some(&a) if self.accounts[a].config.is_some() => {
                self.set_account_config(a, Some(config));
                true
            }
            _ => false,
        }
    }

    /// Removes an account's configuration and balance. Its queued requests
    /// fall to the free level; its running tasks keep their level.
    pub fn delete_account(&mut self, id: &str) {
        if let Some(&a) = self.account_ids.get(id) {
            self.set_account_config(a, None);
            self.accounts[a].balance = Balance::ZERO;
            self.account_maybe_free(a);
        }
    }

    /// Zeroes an account's balance, if it has one.
    pub fn reset_balance(&mut self, id: &str) {
        if let Some(&a) = self.account_ids.get(id)
            && self.accounts[a].config.is_some()
        {
            self.accounts[a].balance = Balance::ZERO;
            self.accounts[a].balance_listed = true;
        }
    }

    /// The account's configuration, if configured.
    pub fn account_config(&self, id: &str) -> Option<&AccountConfig> {
        let &a = self.account_ids.get(id)?;
        self.accounts[a].config.as_ref()
    }

    /// Configured accounts in id order, with their balances (zero where
    /// the pool holds none; see [`Scheduler::balance`]).
    pub fn accounts(&self) -> impl Iterator<Item = (&str, &AccountConfig, &Balance)> {
        self.configured.iter().filter_map(|(id, &a)| {
            let acc = &self.accounts[a];
            acc.config.as_ref().map(|c| (&**id, c, &acc.balance))
        })
    }

    /// The balance of a configured account, if the pool holds one (after
    /// [`Scheduler::forget_balances`] it holds none until the next clock
    /// update).
    pub fn balance(&self, id: &str) -> Option<Balance> {
        let &a = self.account_ids.get(id)?;
        let acc = &self.accounts[a];
        acc.config
            .as_ref()
            .filter(|_| acc.balance_listed)
            .map(|_| acc.balance)
    }

    /// Advances the clock to `t` (reference §6.4): charges running tasks,
    /// recharges balances, expires idle workers. Earlier times are ignored.
    pub fn update_time(&mut self, t: Time) {
        if t < self.now {
            return;
        }
        let elapsed = t.elapsed_secs_f32(self.now);
        for p in 0..NUM_PRIORITIES {
            for &w in &self.running[p] {
                if let Some(run) = self.workers[w].running.as_mut() {
                    run.cost.0[p] += elapsed;
                }
            }
        }
        for &a in self.configured.values() {
            let acc = &mut self.accounts[a];
            if let Some(cfg) = acc.config.as_ref() {
                let mut running = [0u32; NUM_PRIORITIES];
                running.copy_from_slice(&acc.running_by_prio[..NUM_PRIORITIES]);
                cfg.recharge(&mut acc.balance, elapsed, &running);
                acc.balance_listed = true;
            }
        }
        self.now = t;
        let expiry = self.settings.effective_bot_expiration();
        while let Some(&(confirmed, w)) = self.idle_expiry.first() {
            if self.now.nanos_since(confirmed) > expiry {
                self.delete_worker(w);
            } else {
                break;
            }
        }
    }
}

#[cfg(test)]
mod layout_tests {
    use super::*;
    use std::mem::size_of;

    /// The index's per-task structures: these sizes are what a queued task
    /// with labels of its own costs, so growth here should be deliberate.
    #[test]
    fn index_structures_stay_small() {
        for (name, size, limit) in [
            ("QKey", size_of::<QKey>(), 40),
            ("OrdSet<QKey>", size_of::<OrdSet<QKey>>(), 48),
            ("Request", size_of::<Request>(), 64),
            ("SetEntry", size_of::<SetEntry>(), 40),
            ("Cell", size_of::<Cell>(), 152),
            ("Container", size_of::<Container>(), 80),
            ("Bucket", size_of::<Bucket>(), 80),
            ("Group", size_of::<Group>(), 64),
        ] {
            assert!(size <= limit, "{name} is {size} bytes, more than {limit}");
        }
    }
}
