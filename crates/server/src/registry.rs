//! The pools this server runs: creating, recovering, finding, adopting,
//! handing off and deleting them.
//!
//! A pool is "open" here when this process holds its writer (the store's
//! handle) and its state is in memory behind a [`PoolRef`].
//!
//! # Ownership across replicas
//!
//! With the embedded store this process is the only replica and opens every
//! pool. With PostgreSQL several replicas share the pools, and the store's
//! lease (with a fencing token on every write) guarantees one writer per
//! pool. On top of that guarantee this module decides *which* replica should
//! be the writer, so that pools spread over the live replicas and a dead
//! replica's pools are taken over without waiting for a request:
//!
//! * **Rendezvous hashing.** Every replica ranks the live replicas (the
//!   store's registry of heartbeats) by a hash of (replica id, pool id) and
//!   considers the highest-ranked one the pool's *home*. Every replica
//!   computes the same answer from the same registry, and when a replica
//!   joins or leaves only the pools whose home it is (or becomes) move.
//! * **Adoption loop** ([`Registry::spawn_adoption`]). Every second or so a
//!   replica lists the pools nobody holds a live lease on and opens those
//!   whose home it is. A killed replica's leases expire after the lease TTL
//!   (its heartbeat expires at the same time), so its pools are reopened
//!   elsewhere within TTL + one round + recovery time.
//! * **Rebalancing.** The same loop gives back (at most one per round) a pool
//!   held here whose home is another live replica: the writer finishes its
//!   batch and releases the lease, and the home replica adopts it. Without
//!   this, a rolling restart would leave every pool on the last replica
//!   standing.
//! * **Routing** ([`Registry::locate`]). A request for a pool open here is
//!   served here. Otherwise the pool's lease holder, or for an unowned pool
//!   its home, is where the service layer forwards the request. A forwarded
//!   request is never sent to another lease holder; it may go on once more,
//!   to the home of a pool that was handed off while it travelled, and is
//!   then served there or refused with `UNAVAILABLE` (at most two hops, no
//!   loops).
//!
//! The lease, not this placement logic, is what keeps a pool safe: two
//! replicas that briefly disagree about a pool's home can only race for the
//! lease, and the loser forwards to the winner.
//!
//! # Pools that cannot be recovered
//!
//! Damaged stored data stops the recovery of that pool only. The error is
//! remembered for a while, so that requests for the pool get it at once
//! (`DATA_LOSS`) instead of re-reading the whole log each time, and the
//! adoption loop retries it now and then rather than every round.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qscheduler_core::{Command, Pool, PoolEvent, Time};
use qscheduler_store::{self as store, Owner, Replica, Store};
use tracing::{error, info, warn};

use crate::pool::{Observer, PoolOptions, PoolRef, RecoverError, recover_observed};

/// Most times a call is forwarded between replicas (see
/// [`Registry::locate`]).
pub const MAX_HOPS: usize = 2;

/// How long a pool that failed to recover is left alone before it is tried
/// again.
const FAILURE_BACKOFF: Duration = Duration::from_secs(30);

/// Why a pool could not be found, created, opened or deleted.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No such pool.
    #[error("no pool with id {0:?}")]
    NotFound(String),
    /// The pool already exists.
    #[error("pool {0:?} already exists")]
    AlreadyExists(String),
    /// Another replica owns the pool.
    #[error("pool {pool:?} is owned by another replica{}", owner_suffix(.owner))]
    NotOwner {
        /// The pool.
        pool: String,
        /// Its owner, if known.
        owner: Option<store::Owner>,
    },
    /// The stored state could not be rebuilt.
    #[error(transparent)]
    Recover(#[from] RecoverError),
    /// The pool failed to recover recently; it is retried later.
    #[error("pool {pool:?} cannot be recovered: {error} (retried every {}s)", FAILURE_BACKOFF.as_secs())]
    Unrecoverable {
        /// The pool.
        pool: String,
        /// The recovery error.
        error: Arc<str>,
    },
    /// The server is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The pool's store failed recently; it is reopened after a delay that
    /// doubles with each failure in a row.
    #[error(
        "pool {pool:?} is unavailable: its storage failed {failures} time(s) in a row; \
         reopening it in {} ms; retry later",
        retry_in.as_millis()
    )]
    BackingOff {
        /// The pool.
        pool: String,
        /// Failures in a row.
        failures: u32,
        /// Time until it is tried again.
        retry_in: Duration,
    },
    /// Creating the pool would exceed the number of pools allowed.
    #[error(
        "cannot create pool {pool:?}: the store already holds {limit} pools, the most \
         allowed (setting limits.max_pools); delete unused pools or raise the limit"
    )]
    TooManyPools {
        /// The pool.
        pool: String,
        /// The limit.
        limit: usize,
    },
    /// The store failed.
    #[error("storage: {0}")]
    Store(store::Error),
}

fn owner_suffix(owner: &Option<Owner>) -> String {
    match owner {
        Some(o) => format!(" ({} at {})", o.replica_id, o.address),
        None => String::new(),
    }
}

impl RegistryError {
    /// True for damaged stored data, as opposed to a transient failure.
    pub fn is_data_loss(&self) -> bool {
        matches!(
            self,
            RegistryError::Recover(_)
                | RegistryError::Unrecoverable { .. }
                | RegistryError::Store(store::Error::Corrupt { .. })
        )
    }
}

impl From<store::Error> for RegistryError {
    fn from(e: store::Error) -> Self {
        match e {
            store::Error::NotFound { pool } => RegistryError::NotFound(pool),
            store::Error::AlreadyExists { pool } => RegistryError::AlreadyExists(pool),
            store::Error::NotOwner { pool, owner } => RegistryError::NotOwner { pool, owner },
            e => RegistryError::Store(e),
        }
    }
}

/// Where a request for a pool should be served.
#[derive(Clone)]
pub enum Location {
    /// Here.
    Local(PoolRef),
    /// On another replica: forward the request to it.
    Remote(Owner),
}

struct Failure {
    at: Instant,
    error: Arc<str>,
}

/// Who serves a stored pool, as this replica sees it (ListPools).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoolStatus {
    /// Served by the replica with this id (this one, or the lease holder).
    Serving {
        /// The serving replica.
        replica_id: String,
    },
    /// Nobody holds the pool's lease now; its home adopts it shortly.
    Unowned,
    /// Its recovery failed here (the error), and it is retried later.
    Failed {
        /// Why.
        error: Arc<str>,
    },
}

/// Store failures of a pool in a row, and when it may be reopened.
struct StoreBackoff {
    failures: u32,
    last: Instant,
    until: Instant,
}

/// The first wait before reopening a pool whose store failed; it doubles
/// with each failure in a row, up to [`STORE_BACKOFF_MAX`].
const STORE_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// The longest wait before reopening a pool whose store failed.
const STORE_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A pool that has not failed for this long starts again from the first
/// wait.
const STORE_BACKOFF_RESET: Duration = Duration::from_secs(300);

/// The wait after the `failures`-th store failure in a row.
pub fn store_backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    STORE_BACKOFF_MIN
        .saturating_mul(1 << doublings)
        .min(STORE_BACKOFF_MAX)
}

/// The pools of this server.
pub struct Registry {
    store: Store,
    options: PoolOptions,
    observer: Arc<dyn Observer>,
    me: String,
    open: Mutex<BTreeMap<String, PoolRef>>,
    /// Serializes opening, creating, handing off and deleting, so a pool is
    /// never opened twice.
    lifecycle: tokio::sync::Mutex<()>,
    failed: Mutex<HashMap<String, Failure>>,
    store_failures: Mutex<HashMap<String, StoreBackoff>>,
    shutting_down: AtomicBool,
    /// Most pools the store may hold (checked when creating one).
    max_pools: std::sync::atomic::AtomicUsize,
    /// Wakes the adoption loop up to stop.
    stop_adoption: tokio::sync::watch::Sender<bool>,
    adoption: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Set when a graceful hand-off starts: this replica no longer counts
    /// itself among the live replicas and opens no pool.
    draining: AtomicBool,
    /// What readiness and the metrics report; see [`Settlement`].
    settlement: Mutex<Settlement>,
    /// Pools opened, handed off and lost here, per pool.
    ownership: Mutex<BTreeMap<String, OwnershipChanges>>,
}

/// How far this replica is from serving every pool it should, as of the
/// last adoption round.
#[derive(Clone, Debug, Default)]
pub struct Settlement {
    /// The first recovery of the pools finished.
    pub recovered: bool,
    /// The store counts this replica among the live ones (always true for
    /// the embedded store).
    pub registered: bool,
    /// Pools whose home is this replica and that nobody serves yet, apart
    /// from those that failed to recover.
    pub pending: usize,
    /// Pools that nobody serves, as this replica saw them at the end of its
    /// last round (failed ones included): what `qscheduler_pool_unserved`
    /// reports.
    pub unserved: Vec<String>,
}

/// Changes of a pool's owner seen from this replica (the counters of
/// `qscheduler_pool_ownership_changes_total`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OwnershipChanges {
    /// Opened here (recovered at start, adopted, or opened for a call).
    pub adopted: u64,
    /// Given back on purpose (rebalancing or a graceful hand-off).
    pub handed_off: u64,
    /// Stopped without being given back: the lease was lost or the store
    /// failed.
    pub lost: u64,
}

/// The rendezvous score of `replica` for `pool`: FNV-1a over both ids, then
/// a 64-bit finalizer so that similar ids spread well. Spelled out rather
/// than taken from `std`, whose hasher may change between releases, because
/// replicas of different builds must agree on it during a rolling upgrade.
fn score(replica: &str, pool: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in replica
        .bytes()
        .chain(std::iter::once(0xff))
        .chain(pool.bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The replica that should own `pool` among `replicas`.
pub fn home<'a>(pool: &str, replicas: &'a [Replica]) -> Option<&'a Replica> {
    replicas.iter().max_by(|a, b| {
        score(&a.replica_id, pool)
            .cmp(&score(&b.replica_id, pool))
            .then_with(|| a.replica_id.cmp(&b.replica_id))
    })
}

impl Registry {
    /// A registry over `store`; no pool is opened yet.
    pub fn new(store: Store, options: PoolOptions, observer: Arc<dyn Observer>) -> Arc<Registry> {
        Arc::new(Registry {
            me: store.replica_id().to_owned(),
            store,
            options,
            observer,
            open: Mutex::new(BTreeMap::new()),
            lifecycle: tokio::sync::Mutex::new(()),
            failed: Mutex::new(HashMap::new()),
            store_failures: Mutex::new(HashMap::new()),
            shutting_down: AtomicBool::new(false),
            max_pools: std::sync::atomic::AtomicUsize::new(usize::MAX),
            stop_adoption: tokio::sync::watch::Sender::new(false),
            adoption: Mutex::new(None),
            draining: AtomicBool::new(false),
            settlement: Mutex::new(Settlement::default()),
            ownership: Mutex::new(BTreeMap::new()),
        })
    }

    /// Caps the number of pools the store may hold: creating one more is
    /// refused.
    pub fn set_max_pools(&self, n: usize) {
        self.max_pools.store(n, Ordering::Release);
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// This replica's id.
    pub fn replica_id(&self) -> &str {
        &self.me
    }

    fn open_map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, PoolRef>> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn failed_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Failure>> {
        self.failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn ownership_map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, OwnershipChanges>> {
        self.ownership
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn settlement_mut(&self) -> std::sync::MutexGuard<'_, Settlement> {
        self.settlement
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Marks the first recovery as over even though it failed as a whole
    /// (the adoption loop retries the pools one by one).
    pub fn mark_recovered(&self) {
        self.settlement_mut().recovered = true;
    }

    /// Readiness as of the last adoption round (see [`Settlement`]).
    pub fn settlement(&self) -> Settlement {
        self.settlement_mut().clone()
    }

    /// Ownership changes per pool since the start (bounded by the pools
    /// the store holds: a deleted pool's counters go with it).
    pub fn ownership_changes(&self) -> Vec<(String, OwnershipChanges)> {
        self.ownership_map()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// True once a graceful hand-off started ([`Registry::drain`]).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Calls waiting for each open pool's writer, and how many may wait.
    pub fn waiting_calls(&self) -> Vec<(String, usize, usize)> {
        self.open_map()
            .iter()
            .map(|(id, p)| (id.clone(), p.waiting_calls(), p.call_capacity()))
            .collect()
    }

    fn running(&self, id: &str) -> Option<PoolRef> {
        self.open_map().get(id).filter(|p| !p.is_closed()).cloned()
    }

    /// The error of a recovery that failed less than [`FAILURE_BACKOFF`] ago.
    fn recent_failure(&self, id: &str) -> Option<RegistryError> {
        let mut failed = self.failed_map();
        let f = failed.get(id)?;
        if f.at.elapsed() >= FAILURE_BACKOFF {
            failed.remove(id);
            return None;
        }
        Some(RegistryError::Unrecoverable {
            pool: id.to_owned(),
            error: f.error.clone(),
        })
    }

    /// The live replicas, this one included even if its own heartbeat is
    /// late, so that it never hands everything away because of a slow
    /// database round trip.
    async fn candidates(&self) -> Result<Vec<Replica>, RegistryError> {
        let mut live = self.store.live_replicas().await?;
        if self.is_draining() {
            // Handing everything over: never the home of anything.
            live.retain(|r| r.replica_id != self.me);
            return Ok(live);
        }
        let registered = live.iter().any(|r| r.replica_id == self.me);
        self.settlement_mut().registered = registered;
        if !registered {
            live.push(Replica {
                replica_id: self.me.clone(),
                address: String::new(),
            });
        }
        Ok(live)
    }

    /// The replica other than this one that should adopt `id`, if there is
    /// one this replica can forward to.
    fn other_home(&self, id: &str, live: &[Replica]) -> Option<Owner> {
        home(id, live)
            .filter(|r| r.replica_id != self.me && !r.address.is_empty())
            .map(|r| Owner {
                replica_id: r.replica_id.clone(),
                address: r.address.clone(),
            })
    }

    /// Opens every stored pool this replica should own (all of them with the
    /// embedded store). A pool that fails to recover is reported and left
    /// closed; the others are served.
    pub async fn recover_all(&self) -> Result<(), RegistryError> {
        let ids = self.store.list_pools().await?;
        info!(pools = ids.len(), replica = %self.me, "recovering pools");
        self.adopt_unowned().await?;
        self.settlement_mut().recovered = true;
        info!(pools = self.open_ids().len(), "recovery finished");
        Ok(())
    }

    /// Opens the unowned pools whose home is this replica. Returns how many
    /// it opened.
    async fn adopt_unowned(&self) -> Result<usize, RegistryError> {
        let live = self.candidates().await?;
        let unowned = self.store.unowned_pools().await?;
        let mut adopted = 0;
        let mut pending = 0;
        let mut unserved = Vec::new();
        for id in unowned {
            if self.running(&id).is_some() {
                continue;
            }
            if self.shutting_down.load(Ordering::Acquire) || self.is_draining() {
                unserved.push(id);
                continue;
            }
            if self.recent_failure(&id).is_some() {
                unserved.push(id);
                continue;
            }
            if self.other_home(&id, &live).is_some() {
                // Its home adopts it; until then nobody serves it.
                unserved.push(id);
                continue;
            }
            match self.get(&id).await {
                Ok(_) => adopted += 1,
                // Someone else was faster, or the pool was just deleted.
                Err(RegistryError::NotOwner { .. } | RegistryError::NotFound(_)) => {}
                Err(e) => {
                    if !matches!(e, RegistryError::Unrecoverable { .. }) && !e.is_data_loss() {
                        pending += 1;
                    }
                    unserved.push(id.clone());
                    error!(pool = %id, error = %e, "pool not recovered; it stays unavailable until the problem is fixed")
                }
            }
        }
        let mut s = self.settlement_mut();
        s.pending = pending;
        s.unserved = unserved;
        Ok(adopted)
    }

    /// One round of the adoption loop: adopt the unowned pools whose home is
    /// here, then give back at most one pool whose home is elsewhere.
    pub async fn adopt_round(&self) -> Result<(), RegistryError> {
        if self.adopt_unowned().await? > 0 || !self.store.is_shared() {
            return Ok(());
        }
        let live = self.candidates().await?;
        if live.len() < 2 {
            return Ok(());
        }
        let ids: Vec<String> = self.open_map().keys().cloned().collect();
        for id in ids {
            if let Some(to) = self.other_home(&id, &live) {
                self.hand_off(&id, &to).await;
                break;
            }
        }
        Ok(())
    }

    /// Runs [`Registry::adopt_round`] every `every` until shutdown.
    pub fn spawn_adoption(self: &Arc<Self>, every: Duration) {
        let weak = Arc::downgrade(self);
        let mut stop = self.stop_adoption.subscribe();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                let Some(registry) = weak.upgrade() else {
                    return;
                };
                if registry.shutting_down.load(Ordering::Acquire) {
                    return;
                }
                if let Err(e) = registry.adopt_round().await {
                    warn!(error = %e, "pool adoption round failed; retrying");
                }
            }
        });
        let old = self
            .adoption
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .replace(task);
        if let Some(old) = old {
            old.abort();
        }
    }

    /// Stops serving `id` here so that `to` can adopt it.
    async fn hand_off(&self, id: &str, to: &Owner) {
        let _guard = self.lifecycle.lock().await;
        let Some(p) = self.open_map().remove(id) else {
            return;
        };
        // The writer finishes its batch, answers queued calls "closed" (the
        // service retries them at the new home) and releases the lease.
        p.stop();
        p.closed().await;
        self.ownership_map()
            .entry(id.to_owned())
            .or_default()
            .handed_off += 1;
        info!(pool = %id, to = %to.replica_id, "pool handed off to its home replica");
    }

    /// Where a request for `id` should be served. `hops` is how many
    /// replicas already forwarded it:
    ///
    /// * 0 (it reached this replica directly): here if the pool is open here
    ///   or this is its home, else at its lease holder, or at its home if
    ///   nobody holds it;
    /// * 1 (sent here as the pool's owner or home): here if possible; if the
    ///   pool was handed off meanwhile and is unowned, on to its home (a
    ///   call racing a hand-off then still succeeds, and this replica does
    ///   not take back the pool it just gave away); never to another lease
    ///   holder;
    /// * [`MAX_HOPS`]: here, or refused.
    pub async fn locate(&self, id: &str, hops: usize) -> Result<Location, RegistryError> {
        if let Some(p) = self.running(id) {
            return Ok(Location::Local(p));
        }
        if let Some(e) = self.recent_failure(id) {
            return Err(e);
        }
        if self.store.is_shared() {
            match self.store.owner_of(id).await? {
                Some(o) if o.replica_id != self.me => {
                    if hops > 0 || o.address.is_empty() {
                        return Err(RegistryError::NotOwner {
                            pool: id.to_owned(),
                            owner: Some(o),
                        });
                    }
                    return Ok(Location::Remote(o));
                }
                Some(_) => {}
                None if hops >= MAX_HOPS => {}
                None => {
                    let live = self.candidates().await?;
                    if let Some(o) = self.other_home(id, &live) {
                        if !self.store.pool_exists(id).await? {
                            return Err(RegistryError::NotFound(id.to_owned()));
                        }
                        return Ok(Location::Remote(o));
                    }
                }
            }
        }
        match self.get(id).await {
            Ok(p) => Ok(Location::Local(p)),
            Err(RegistryError::NotOwner {
                owner: Some(o),
                pool,
            }) => {
                if hops > 0 || o.replica_id == self.me || o.address.is_empty() {
                    Err(RegistryError::NotOwner {
                        pool,
                        owner: Some(o),
                    })
                } else {
                    Ok(Location::Remote(o))
                }
            }
            Err(e) => Err(e),
        }
    }

    /// The replica a request for `id` that does not need the pool's state
    /// (a deletion) should be forwarded to: its lease holder if that is
    /// another replica and the request was not forwarded already.
    pub async fn remote_owner(
        &self,
        id: &str,
        hops: usize,
    ) -> Result<Option<Owner>, RegistryError> {
        if hops > 0 || !self.store.is_shared() || self.running(id).is_some() {
            return Ok(None);
        }
        Ok(self
            .store
            .owner_of(id)
            .await?
            .filter(|o| o.replica_id != self.me && !o.address.is_empty()))
    }

    /// The running pool `id`, opening (recovering) it here if needed.
    pub async fn get(&self, id: &str) -> Result<PoolRef, RegistryError> {
        if let Some(p) = self.running(id) {
            return Ok(p);
        }
        let _guard = self.lifecycle.lock().await;
        if let Some(p) = self.running(id) {
            return Ok(p);
        }
        if self.shutting_down.load(Ordering::Acquire) || self.is_draining() {
            return Err(RegistryError::ShuttingDown);
        }
        if let Some(e) = self.recent_failure(id) {
            return Err(e);
        }
        let stopped = self.open_map().remove(id);
        if let Some(old) = stopped {
            // Its writer stopped on its own (lease lost, store failure);
            // wait until it let go of the store handle.
            self.ownership_map().entry(id.to_owned()).or_default().lost += 1;
            old.closed().await;
            if old.store_failed() {
                self.note_store_failure(id);
            }
        }
        self.store_backoff_check(id)?;
        let started = Instant::now();
        let (handle, rec) = match self.store.open_pool(id).await {
            Ok(v) => v,
            Err(e) => {
                let e = RegistryError::from(e);
                if matches!(e, RegistryError::Store(_)) && !e.is_data_loss() {
                    self.note_store_failure(id);
                }
                self.note_failure(id, &e);
                return Err(e);
            }
        };
        let loaded = started.elapsed();
        for note in &rec.notes {
            warn!(pool = %id, note = ?note, "the store repaired the pool's log while opening it");
        }
        let records = rec.records.len();
        let snapshot_seq = rec.snapshot.as_ref().map(|(s, _)| *s);
        let snapshot_bytes = rec.snapshot.as_ref().map_or(0, |(_, b)| b.len());
        let replay_started = Instant::now();
        // Derived state kept with the snapshot (the reports) is brought up
        // to the log's end by the same replay.
        let mut derived = self.observer.recovering(id, rec.snapshot_extra.as_deref());
        // A panic while replaying is a bug (a logged command the core
        // cannot apply); it fails this pool alone, like damaged data.
        let recovered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            recover_observed(id, &rec, &mut |events: &[PoolEvent], pool: &Pool| {
                if let Some(d) = derived.as_mut() {
                    d.replayed(events, pool);
                }
            })
        }))
        .unwrap_or_else(|_| {
            Err(RecoverError {
                pool: id.to_owned(),
                seq: rec.snapshot.as_ref().map_or(0, |(s, _)| *s),
                what: "replaying the pool's log panicked (a bug); see the log".to_owned(),
            })
        });
        let pool = match recovered {
            Ok(p) => p,
            Err(e) => {
                let _ = handle.release().await;
                let e = RegistryError::from(e);
                self.note_failure(id, &e);
                return Err(e);
            }
        };
        drop(rec);
        if let Some(d) = derived {
            d.finish();
        }
        info!(
            pool = %id,
            elapsed_ms = started.elapsed().as_millis() as u64,
            load_ms = loaded.as_millis() as u64,
            replay_ms = replay_started.elapsed().as_millis() as u64,
            snapshot_seq = ?snapshot_seq,
            snapshot_bytes,
            records_replayed = records,
            queued = pool.scheduler().queued_len(),
            workers = pool.scheduler().workers_len(),
            "pool recovered"
        );
        let p = PoolRef::spawn(
            id.to_owned(),
            pool,
            handle,
            self.options.clone(),
            self.observer.clone(),
        );
        self.open_map().insert(id.to_owned(), p.clone());
        self.ownership_map()
            .entry(id.to_owned())
            .or_default()
            .adopted += 1;
        Ok(p)
    }

    /// Counts a store failure of pool `id` and sets when it may be reopened.
    fn note_store_failure(&self, id: &str) {
        let mut map = self
            .store_failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        let b = map.entry(id.to_owned()).or_insert(StoreBackoff {
            failures: 0,
            last: now,
            until: now,
        });
        if now.duration_since(b.last) >= STORE_BACKOFF_RESET {
            b.failures = 0;
        }
        b.failures = b.failures.saturating_add(1);
        b.last = now;
        b.until = now + store_backoff(b.failures);
        warn!(
            pool = %id,
            failures = b.failures,
            retry_ms = store_backoff(b.failures).as_millis() as u64,
            "the pool's storage failed; reopening it after a delay"
        );
    }

    /// Refuses to reopen pool `id` while its store backoff lasts.
    fn store_backoff_check(&self, id: &str) -> Result<(), RegistryError> {
        let map = self
            .store_failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match map.get(id) {
            Some(b) if b.until > Instant::now() => Err(RegistryError::BackingOff {
                pool: id.to_owned(),
                failures: b.failures,
                retry_in: b.until - Instant::now(),
            }),
            _ => Ok(()),
        }
    }

    fn note_failure(&self, id: &str, e: &RegistryError) {
        if e.is_data_loss() {
            error!(pool = %id, error = %e, "pool cannot be recovered; other pools are not affected");
            self.failed_map().insert(
                id.to_owned(),
                Failure {
                    at: Instant::now(),
                    error: Arc::from(e.to_string()),
                },
            );
        }
    }

    /// Creates a pool whose clock starts at `now`, and opens it here if this
    /// is its home (otherwise its home adopts it).
    pub async fn create(&self, id: &str, now: Time) -> Result<(), RegistryError> {
        {
            let _guard = self.lifecycle.lock().await;
            let limit = self.max_pools.load(Ordering::Acquire);
            // Replicas sharing a store may each admit one pool at the limit
            // at the same moment; the cap is about resources, not exact.
            if limit != usize::MAX && self.store.list_pools().await?.len() >= limit {
                return Err(RegistryError::TooManyPools {
                    pool: id.to_owned(),
                    limit,
                });
            }
            let first = Command::Create { time: now }.encode();
            self.store.create_pool(id, first).await?;
            self.failed_map().remove(id);
            info!(pool = %id, "pool created");
        }
        if self.store.is_shared() {
            let live = self.candidates().await?;
            if self.other_home(id, &live).is_some() {
                return Ok(());
            }
        }
        match self.get(id).await {
            Ok(_) | Err(RegistryError::NotOwner { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Deletes a pool and everything stored for it.
    pub async fn delete(&self, id: &str) -> Result<(), RegistryError> {
        let _guard = self.lifecycle.lock().await;
        self.store.delete_pool(id).await?;
        self.failed_map().remove(id);
        self.ownership_map().remove(id);
        let old = self.open_map().remove(id);
        if let Some(old) = old {
            old.stop();
            old.closed().await;
        }
        self.observer.pool_deleted(id);
        info!(pool = %id, "pool deleted");
        Ok(())
    }

    /// The pools open here, in id order (for gauges read at scrape time).
    pub fn open_pools(&self) -> Vec<PoolRef> {
        self.open_map()
            .values()
            .filter(|p| !p.is_closed())
            .cloned()
            .collect()
    }

    /// Every stored pool, in id order, with who serves it.
    pub async fn list(&self) -> Result<Vec<(String, PoolStatus)>, RegistryError> {
        let mut ids = self.store.list_pools().await?;
        ids.sort();
        let unowned: std::collections::BTreeSet<String> = if self.store.is_shared() {
            self.store.unowned_pools().await?.into_iter().collect()
        } else {
            Default::default()
        };
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let status = if self.running(&id).is_some() {
                PoolStatus::Serving {
                    replica_id: self.me.clone(),
                }
            } else if let Some(f) = self.failed_map().get(&id) {
                PoolStatus::Failed {
                    error: f.error.clone(),
                }
            } else if self.store.is_shared() && !unowned.contains(&id) {
                match self.store.owner_of(&id).await? {
                    Some(owner) => PoolStatus::Serving {
                        replica_id: owner.replica_id,
                    },
                    None => PoolStatus::Unowned,
                }
            } else {
                PoolStatus::Unowned
            };
            out.push((id, status));
        }
        Ok(out)
    }

    /// Ids of the pools open here.
    pub fn open_ids(&self) -> Vec<String> {
        self.open_map().keys().cloned().collect()
    }

    /// Stops the adoption loop and waits for a round in progress to end.
    async fn stop_adoption_loop(&self) {
        self.stop_adoption.send_replace(true);
        let adoption = self
            .adoption
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        // Not aborted: a round in the middle of opening a pool must finish
        // (it stops before the next pool), or the pool's lease would be
        // dropped without being given back.
        if let Some(t) = adoption {
            let _ = t.await;
        }
    }

    /// Graceful hand-off (SIGTERM): leaves the store's registry of live
    /// replicas so that peers stop choosing this one as a home, then gives
    /// back every pool at once (each writer finishes its batch, answers the
    /// calls still queued as "closed" so the service retries them at the
    /// new home, and releases the lease). The server keeps serving while
    /// this runs: calls for a pool given back are forwarded to its new home,
    /// or refused with the retriable `UNAVAILABLE` when there is none.
    /// Returns how many pools were handed off.
    pub async fn drain(&self) -> usize {
        if self.draining.swap(true, Ordering::AcqRel) {
            return 0;
        }
        self.stop_adoption_loop().await;
        if let Err(e) = self.store.leave_registry().await {
            warn!(error = %e, "cannot leave the registry of live replicas; peers adopt this replica's pools when its heartbeat expires");
        }
        let _guard = self.lifecycle.lock().await;
        let pools: Vec<(String, PoolRef)> =
            std::mem::take(&mut *self.open_map()).into_iter().collect();
        for (_, p) in &pools {
            p.stop();
        }
        for (id, p) in &pools {
            p.closed().await;
            self.ownership_map()
                .entry(id.clone())
                .or_default()
                .handed_off += 1;
        }
        info!(pools = pools.len(), "handed off every pool");
        pools.len()
    }

    /// Stops adopting pools, waits for every pool writer to finish its
    /// current batch and stop, then releases the store.
    pub async fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
        self.stop_adoption_loop().await;
        // No pool can be opened any more past this point.
        let _guard = self.lifecycle.lock().await;
        let pools: Vec<PoolRef> = std::mem::take(&mut *self.open_map())
            .into_values()
            .collect();
        for p in &pools {
            p.stop();
        }
        for p in &pools {
            p.closed().await;
        }
        if let Err(e) = self.store.shutdown().await {
            warn!(error = %e, "store shutdown");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replicas(ids: &[&str]) -> Vec<Replica> {
        ids.iter()
            .map(|id| Replica {
                replica_id: (*id).to_owned(),
                address: format!("{id}:1"),
            })
            .collect()
    }

    #[test]
    fn home_spreads_pools_and_moves_only_what_it_must() {
        let three = replicas(&["a", "b", "c"]);
        let two = replicas(&["a", "b"]);
        let pools: Vec<String> = (0..3000).map(|i| format!("pool-{i}")).collect();
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for p in &pools {
            let h3 = home(p, &three).expect("home");
            *counts.entry(h3.replica_id.as_str()).or_default() += 1;
            // Removing c moves only c's pools.
            let h2 = home(p, &two).expect("home");
            if h3.replica_id != "c" {
                assert_eq!(h2.replica_id, h3.replica_id, "{p}");
            }
        }
        for (r, n) in &counts {
            assert!((800..1200).contains(n), "{r} homes {n} of 3000 pools");
        }
        // Order of the list does not matter.
        let mut reversed = three.clone();
        reversed.reverse();
        for p in &pools[..100] {
            assert_eq!(home(p, &three), home(p, &reversed));
        }
    }

    #[test]
    fn store_backoff_doubles_up_to_its_cap() {
        assert_eq!(store_backoff(1), Duration::from_millis(100));
        assert_eq!(store_backoff(2), Duration::from_millis(200));
        assert_eq!(store_backoff(5), Duration::from_millis(1600));
        assert_eq!(
            store_backoff(9),
            Duration::from_secs(25) + Duration::from_millis(600)
        );
        assert_eq!(store_backoff(10), Duration::from_secs(30));
        assert_eq!(store_backoff(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn score_is_stable() {
        // Replicas of different builds must agree: pin a few values
        // (computed independently of this code).
        assert_eq!(score("a", "p"), 0x6749_281b_9514_d621);
        assert_eq!(score("replica-1", "pool-1"), 0x9b0e_8156_c3ba_bf24);
        assert_eq!(score("replica-2", "pool-1"), 0x4a1f_37a5_58fd_c0c3);
        assert_ne!(score("ab", "c"), score("a", "bc"));
    }
}
