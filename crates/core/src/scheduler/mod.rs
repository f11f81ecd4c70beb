//! The quotascheduler: state, time, notifications and the scheduling pass.
//!
//! # Parts
//!
//! The state is split into parts that own their fields, change them only
//! through a small API and check their own invariants: the label table
//! (`labels.rs`), the workers (`workers.rs`), the accounts (`accounts.rs`),
//! the fanout groups (`groups.rs`) and the queue index (`queue/`: buckets,
//! containers, cells and each account's placements). The requests are
//! fields of [`Scheduler`] itself, maintained by `requests.rs`, which also
//! queues and dequeues them; the operations that move a request or a worker
//! keep every part in step, handing the queue index the requests and the
//! label table it reads and writes rather than letting other code reach
//! into it. Tables are addressed by typed ids (`ids.rs`). The one thing not
//! to break: a part's fields change only through its own methods, so that
//! its `check_invariants` stays true; `invariants.rs` checks what spans
//! parts.
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
//!   one cannot be throttled (`GroupKind::Lone`);
//! * label names live once, in the label table; sets and workers keep ids,
//!   and sorted names are built when an event or a view needs them;
//! * the set, bucket and group tables store slot numbers only and compare
//!   keys through the slabs (`idmap::SlotIndex`);
//! * a fanout group keeps references to its first request's sets instead of
//!   interning the union of their labels;
//! * slabs grow in fixed chunks, never by doubling;
//! * one-element ordered sets and lists are stored inline;
//! * ids are typed slot numbers whose `Option` costs nothing, and where a
//!   field holds one of several kinds of reference (a bucket or a
//!   container, a group or none) it is packed in a `u32` behind a type
//!   with a safe API (`ids.rs`), where a tag would pad a struct per task.
//!
//! `layout_tests` pins the sizes of the per-task structures.
//!
//! The rules implemented are those of the crate documentation; the test
//! suite checks this implementation against a direct, slow transcription of
//! the same rules on random operation sequences.

mod accounts;
mod eligibility;
mod groups;
mod idmap;
pub(crate) mod ids;
#[cfg(any(test, debug_assertions))]
mod invariants;
mod labels;
mod notify;
pub(crate) mod ordset;
mod pass;
mod probe;
mod queue;
mod requests;
pub(crate) mod slab;
mod view;
mod workers;

use std::sync::Arc;

use crate::account::{AccountConfig, Balance, NUM_PRIORITIES, PoolSettings};
use crate::event::Event;
use crate::time::Time;
use accounts::Accounts;
use groups::Groups;
use ids::{
    AccountIdx, BucketId, GroupId, GroupRef, GroupSlot, LabelId, ReqIdx, SetId, SlotId, VirtId,
    WorkerIdx,
};
use labels::LabelTable;
use queue::QueueIndex;
use slab::Slab;
use workers::Workers;

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

/// Number of level cells: five paid levels and the free level.
pub(crate) const LEVELS: usize = NUM_PRIORITIES + 1;

/// The examined time in a request's key: explicit nanoseconds, or settled,
/// "examined at the last pass", which sorts after every explicit time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ExKey(i64);

impl ExKey {
    /// Examined at the last pass (see the module docs).
    pub(crate) const SETTLED: ExKey = ExKey(i64::MAX);

    /// Examined at `t`.
    pub(crate) fn at(t: Time) -> ExKey {
        ExKey(t.as_nanos())
    }

    pub(crate) fn is_settled(self) -> bool {
        self == Self::SETTLED
    }

    /// The explicit examined time in nanoseconds, `None` if settled.
    pub(crate) fn explicit(self) -> Option<i64> {
        (!self.is_settled()).then_some(self.0)
    }
}

/// The position of a queued request in every order: examined time, enqueue
/// time, id. `req` rides along to find the request; it never decides order
/// because ids are unique.
#[derive(Clone, Debug)]
pub(crate) struct QKey {
    pub(crate) ex: ExKey,
    pub(crate) enq: i64,
    pub(crate) id: Arc<str>,
    pub(crate) req: ReqIdx,
    /// In a cell: the placement (see [`queue::Virt`]) of the entry whose head
    /// this is, which gives its level (meaningless elsewhere).
    pub(crate) v: VirtId,
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

/// Where a request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Place {
    /// In the queue, in this bucket.
    Queued(BucketId),
    /// Running on this worker.
    Running(WorkerIdx),
    /// Detached for a moment (being moved).
    Detached,
}

#[derive(Clone, Debug)]
pub(crate) struct Request {
    pub(crate) id: Arc<str>,
    pub(crate) account: AccountIdx,
    pub(crate) base: SetId,
    pub(crate) prov: SetId,
    pub(crate) group: GroupRef,
    pub(crate) enqueue: Time,
    pub(crate) confirmed: Time,
    /// Examined time, explicit or settled (see [`Examined`]).
    pub(crate) examined: Examined,
    pub(crate) place: Place,
}

impl Request {
    pub(crate) fn settled(&self) -> bool {
        self.examined.is_settled()
    }
}

/// A request's examined time as stored: explicit, or settled, "examined at
/// its placement's stamp" (only while queued; see
/// [`Scheduler::examined`]). Packed in the one `Time` every request
/// carries: a settled request holds [`Time::SETTLED_MARK`], which no real
/// instant equals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Examined(Time);

impl Examined {
    /// Examined at its placement's stamp.
    pub(crate) const SETTLED: Examined = Examined(Time::SETTLED_MARK);

    /// Examined at `t`.
    pub(crate) fn at(t: Time) -> Examined {
        debug_assert!(t != Time::SETTLED_MARK);
        Examined(t)
    }

    pub(crate) fn is_settled(self) -> bool {
        self == Self::SETTLED
    }

    /// The explicit examined time, `None` if settled.
    pub(crate) fn explicit(self) -> Option<Time> {
        (!self.is_settled()).then_some(self.0)
    }

    /// The examined time of a request that is not queued, which is always
    /// explicit (the epoch if it were not).
    pub(crate) fn detached(self) -> Time {
        self.explicit().unwrap_or(Time::EPOCH)
    }
}

/// One pool's quotascheduler.
#[derive(Clone, Debug)]
pub struct Scheduler {
    pub(crate) settings: PoolSettings,
    pub(crate) now: Time,
    /// Time of the last pass: the examined time of settled requests.
    pub(crate) last_pass: Time,
    pub(crate) pass_no: u64,

    /// Labels and label sets.
    pub(crate) labels: LabelTable,

    pub(crate) accounts: Accounts,

    pub(crate) request_ids: idmap::IdIndex<ReqIdx>,
    pub(crate) requests: Slab<ReqIdx, Request>,
    pub(crate) queued: usize,

    pub(crate) workers: Workers,

    /// The queue index: buckets, containers, cells and placements.
    pub(crate) index: QueueIndex,
    pub(crate) groups: Groups,

    pub(crate) events: Vec<Event>,
    /// During a bulk load (a snapshot decode, before any worker exists):
    /// the labels whose `anchored` tables took entries unsorted, to be
    /// sorted once by [`Scheduler::finish_bulk_anchoring`] instead of one
    /// sorted insertion per set. `None` at all other times.
    pub(crate) deferred_anchoring: Option<Vec<LabelId>>,
}

impl Scheduler {
    /// The slot of request `id`.
    pub(crate) fn request_idx(&self, id: &str) -> Option<ReqIdx> {
        self.request_ids.get(id, |r| &self.requests[r].id)
    }

    /// The slot of worker `id`.
    pub(crate) fn worker_idx(&self, id: &str) -> Option<WorkerIdx> {
        self.workers.find(id)
    }

    /// An empty scheduler whose clock reads `now`.
    pub fn new(now: Time) -> Scheduler {
        Scheduler {
            settings: PoolSettings::default(),
            now,
            last_pass: Time::EPOCH,
            pass_no: 0,
            labels: LabelTable::default(),
            accounts: Accounts::default(),
            request_ids: idmap::IdIndex::default(),
            requests: Slab::default(),
            queued: 0,
            workers: Workers::default(),
            index: QueueIndex::default(),
            groups: Groups::default(),
            events: Vec::new(),
            deferred_anchoring: None,
        }
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
            let running: Vec<WorkerIdx> = self.workers.running().collect();
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
        self.workers.idle_len()
    }

    /// Number of running workers.
    pub fn running_len(&self) -> usize {
        self.workers.len() - self.workers.idle_len()
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
        let a = self.account_named(id);
        self.set_account_config(a, Some(config));
        self.accounts
            .set_balance(a, initial_balance.unwrap_or(Balance::ZERO));
    }

    /// Forgets every balance, keeping the configurations: until the next
    /// clock update, configured accounts have no balance (as after the
    /// original's Wipe) and passes read them as zero.
    pub fn forget_balances(&mut self) {
        let configured: Vec<AccountIdx> = self.accounts.configured().collect();
        for a in configured {
            self.accounts.forget_balance(a);
        }
    }

    /// Forgets one configured account's balance (see
    /// [`Scheduler::forget_balances`]).
    pub fn forget_balance(&mut self, id: &str) {
        if let Some(a) = self.accounts.find_configured(id) {
            self.accounts.forget_balance(a);
        }
    }

    /// Changes an existing account's configuration, keeping its balance.
    /// Returns false if the account is not configured.
    pub fn update_account_config(&mut self, id: &str, config: AccountConfig) -> bool {
        match self.accounts.find(id) {
            Some(a) if self.accounts[a].config().is_some() => {
                self.set_account_config(a, Some(config));
                true
            }
            _ => false,
        }
    }

    /// Removes an account's configuration and balance. Its queued requests
    /// fall to the free level; its running tasks keep their level.
    pub fn delete_account(&mut self, id: &str) {
        if let Some(a) = self.accounts.find(id) {
            self.set_account_config(a, None);
            self.maybe_free_account(a);
        }
    }

    /// Zeroes an account's balance, if it has one.
    pub fn reset_balance(&mut self, id: &str) {
        if let Some(a) = self.accounts.find(id) {
            self.accounts.set_balance(a, Balance::ZERO);
        }
    }

    /// The account's configuration, if configured.
    pub fn account_config(&self, id: &str) -> Option<&AccountConfig> {
        let a = self.accounts.find(id)?;
        self.accounts[a].config()
    }

    /// Configured accounts in id order, with their balances (zero where
    /// the pool holds none; see [`Scheduler::balance`]).
    pub fn accounts(&self) -> impl Iterator<Item = (&str, &AccountConfig, &Balance)> {
        self.accounts.configured().filter_map(|a| {
            let acc = &self.accounts[a];
            acc.config().map(|c| (&**acc.id(), c, acc.balance()))
        })
    }

    /// The balance of a configured account, if the pool holds one (after
    /// [`Scheduler::forget_balances`] it holds none until the next clock
    /// update).
    pub fn balance(&self, id: &str) -> Option<Balance> {
        let a = self.accounts.find(id)?;
        self.accounts.listed_balance(a)
    }

    /// Advances the clock to `t` (reference §6.4): charges running tasks,
    /// recharges balances, expires idle workers. Earlier times are ignored.
    pub fn update_time(&mut self, t: Time) {
        if t < self.now {
            return;
        }
        let elapsed = t.elapsed_secs_f32(self.now);
        self.workers.charge(elapsed);
        self.accounts.recharge(elapsed);
        self.now = t;
        let expiry = self.settings.effective_bot_expiration();
        while let Some((confirmed, w)) = self.workers.first_to_expire() {
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
            ("OrdSet<QKey>", size_of::<super::ordset::OrdSet<QKey>>(), 48),
            ("Request", size_of::<Request>(), 64),
            ("SetEntry", size_of::<labels::SetEntry>(), 40),
            ("Cell", size_of::<super::queue::Cell>(), 152),
            ("Container", size_of::<super::queue::Container>(), 80),
            ("Bucket", size_of::<super::queue::Bucket>(), 80),
            ("Group", size_of::<groups::Group>(), 64),
        ] {
            assert!(size <= limit, "{name} is {size} bytes, more than {limit}");
        }
    }
}
