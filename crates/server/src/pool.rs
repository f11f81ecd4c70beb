//! A pool as the rest of the server sees it: a handle ([`PoolRef`]) that
//! hands changes to the pool's single writer and reads its committed
//! state, the pool's batching and snapshot policy ([`PoolOptions`]), the
//! byte budgets of waiting calls, the [`Observer`]s of commits, and
//! recovery of a pool from its log.
//!
//! Every change goes through the pool's writer (see [`writer`]), which
//! answers only once the change is durable. Reads (cancellations,
//! callbacks, inspection) see the in-memory state, which only ever holds
//! committed changes.
//!
//! A full queue answers `RESOURCE_EXHAUSTED` at once instead of piling up:
//! each waiting call holds its size against the pool's budget and the
//! server's, until its batch is done.

use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use qscheduler_core::{
    AssignCall, BotAssignment, Command, CommandError, NotifyCall, Pool, PoolEvent,
};
use qscheduler_store as store;
use tokio::sync::{mpsc, oneshot, watch};

mod writer;

/// Batching and snapshot policy of a pool.
#[derive(Clone, Debug)]
pub struct PoolOptions {
    /// How long the first call of a batch waits for company.
    pub batch_window: Duration,
    /// Most calls in one batch.
    pub max_batch: usize,
    /// Most bytes of one batch's log record (an upper bound computed from
    /// the calls): a batch is one record, and several large calls together
    /// must not exceed the store's record limit, or they would fail on
    /// every retry. A call bigger than this still goes, alone.
    pub max_batch_bytes: usize,
    /// Most calls waiting for a pool; beyond it calls get `RESOURCE_EXHAUSTED`.
    pub queue_capacity: usize,
    /// Take a snapshot once this many log records were written since the
    /// last one...
    pub snapshot_every_records: u64,
    /// ...or once this many log bytes were (whichever comes first; at least
    /// the size of the last snapshot, so snapshots never dominate writes)...
    pub snapshot_every_bytes: u64,
    /// ...or once applying the batches logged since the last snapshot took
    /// this long. Recovery replays those batches through the same code, so
    /// this bounds the replay part of a restart or a takeover. It is raised
    /// to twice the cost of taking the last snapshot, so that snapshots never
    /// take more than a third of the pool's CPU time.
    pub snapshot_every_apply: Duration,
    /// A pool whose copy for a snapshot took longer than this to make gets
    /// a follower: a second copy kept up to date on a thread of its own,
    /// from which later snapshots are taken without stopping the writer
    /// (see [`writer::Writer::maybe_snapshot`]). `Duration::MAX` turns
    /// followers off.
    pub follower_above: Duration,
    /// A pool with more than this many tasks and bots gets a follower even
    /// before its first snapshot, so that reads of it (served from the
    /// follower) never hold up its writer. `usize::MAX`: only for
    /// snapshots.
    pub read_copy_above: usize,
    /// Most bytes of calls waiting for this pool (an estimate of their
    /// size in memory); beyond it calls get `RESOURCE_EXHAUSTED` at once.
    pub queue_bytes: usize,
    /// The bytes of calls waiting for all pools together, shared by every
    /// pool of the server.
    pub total_queue_bytes: Arc<ByteBudget>,
    /// Heavy reads (whole-pool listings such as InspectPool) running at once
    /// on the whole server, shared by every pool: they take a core each
    /// while they run, and the writers need the others.
    pub heavy_reads: Arc<tokio::sync::Semaphore>,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            batch_window: Duration::from_millis(2),
            max_batch: 1000,
            max_batch_bytes: qscheduler_store::MAX_RECORD_BYTES / 2,
            queue_capacity: 10_000,
            snapshot_every_records: 100_000,
            snapshot_every_bytes: 64 << 20,
            snapshot_every_apply: Duration::from_secs(2),
            follower_above: Duration::from_millis(100),
            read_copy_above: 20_000,
            queue_bytes: 64 << 20,
            total_queue_bytes: ByteBudget::new("limits.total_queue_bytes", 512 << 20),
            heavy_reads: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
            )),
        }
    }
}

/// A number of bytes that calls may hold while they wait, shared by
/// whoever takes from it.
#[derive(Debug)]
pub struct ByteBudget {
    setting: &'static str,
    limit: usize,
    used: std::sync::atomic::AtomicUsize,
}

impl ByteBudget {
    /// A budget of `limit` bytes, set by `setting` (for error messages).
    pub fn new(setting: &'static str, limit: usize) -> Arc<ByteBudget> {
        Arc::new(ByteBudget {
            setting,
            limit,
            used: Default::default(),
        })
    }

    /// Bytes taken now.
    pub fn used(&self) -> usize {
        self.used.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Takes `n` bytes until the returned reservation is dropped, or
    /// `None` if that would exceed the limit.
    fn take(self: &Arc<Self>, n: usize) -> Option<Reservation> {
        use std::sync::atomic::Ordering;
        let mut used = self.used.load(Ordering::Acquire);
        loop {
            let next = used.checked_add(n).filter(|&v| v <= self.limit)?;
            match self
                .used
                .compare_exchange_weak(used, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    return Some(Reservation {
                        budget: Arc::clone(self),
                        bytes: n,
                    });
                }
                Err(now) => used = now,
            }
        }
    }
}

/// Bytes taken from a [`ByteBudget`], given back when dropped.
#[derive(Debug)]
struct Reservation {
    budget: Arc<ByteBudget>,
    bytes: usize,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget
            .used
            .fetch_sub(self.bytes, std::sync::atomic::Ordering::AcqRel);
    }
}

/// An estimate of a waiting call's size in memory from the bound of its
/// encoded size: decoded strings and vectors take more than their bytes.
fn memory_estimate(encoded_bound: usize) -> usize {
    encoded_bound.saturating_mul(2).saturating_add(256)
}

/// Why a pool call failed.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The pool's queue is full.
    #[error("pool {0:?} is overloaded: too many calls waiting; retry with backoff")]
    Busy(String),
    /// The calls waiting (for this pool, or for all pools) hold too many
    /// bytes.
    #[error(
        "pool {pool:?} is overloaded: the calls waiting hold more than {limit} bytes \
         (setting {setting}); retry with backoff"
    )]
    OverBudget {
        /// The pool.
        pool: String,
        /// The budget's limit.
        limit: usize,
        /// Its setting.
        setting: &'static str,
    },
    /// The call's deadline passed before it could run.
    #[error("deadline exceeded before the call could be scheduled")]
    DeadlineExceeded,
    /// The command is invalid or refers to something missing.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The pool's log could not be written; nothing was applied.
    #[error("pool {pool:?}: storage failed: {source}")]
    Store {
        /// The pool.
        pool: String,
        /// What failed.
        source: store::Error,
    },
    /// The pool is shutting down, was deleted, or lost its writer lease.
    #[error("pool {0:?} is not available on this server (closed or moved); retry")]
    Closed(String),
}

/// What the service layer wants to know about committed batches (metrics,
/// event log). Implementations must be quick: they run on the pool's
/// writer.
pub trait Observer: Send + Sync + 'static {
    /// A batch of commands was committed and applied.
    fn committed(&self, pool: &str, commit: &CommitInfo<'_>) {
        let _ = (pool, commit);
    }

    /// A background snapshot write finished (or failed).
    fn snapshot(&self, pool: &str, snapshot: &SnapshotInfo) {
        let _ = (pool, snapshot);
    }

    /// The pool was deleted: forget everything kept about it.
    fn pool_deleted(&self, pool: &str) {
        let _ = pool;
    }

    /// The pool's writer panicked (a bug); the pool was closed, and is
    /// reopened from its log by the next call.
    fn writer_panicked(&self, pool: &str) {
        let _ = pool;
    }

    /// An image of derived state to store with the snapshot the writer is
    /// starting, as of the batch just committed (the snapshot's seq). Runs
    /// on the writer, so it must only take what it needs (say, clone a few
    /// `Arc`s); the returned closure encodes it on the snapshot's thread.
    /// One observer of a server provides it.
    fn snapshot_extra(&self, pool: &str) -> Option<ExtraImage> {
        let _ = pool;
        None
    }

    /// Pool `pool` is being opened from a snapshot that carried `extra`
    /// (what [`Observer::snapshot_extra`] gave, `None` if nothing or no
    /// snapshot): returns what to feed with the events of every log record
    /// replayed after it. Its [`Recovering::finish`] runs only if the pool
    /// recovered, before its writer starts.
    fn recovering(&self, pool: &str, extra: Option<&[u8]>) -> Option<Box<dyn Recovering>> {
        let _ = (pool, extra);
        None
    }
}

/// Encodes an image for [`Observer::snapshot_extra`], off the writer.
pub type ExtraImage = Box<dyn FnOnce() -> Vec<u8> + Send>;

/// Derived state being rebuilt while a pool recovers (see
/// [`Observer::recovering`]).
pub trait Recovering: Send {
    /// One replayed log record's events, and the pool after it.
    fn replayed(&mut self, events: &[PoolEvent], pool: &Pool);
    /// The pool recovered: the state is complete.
    fn finish(self: Box<Self>);
}

/// Facts about one snapshot.
#[derive(Clone, Debug)]
pub struct SnapshotInfo {
    /// Size of the encoded state.
    pub bytes: u64,
    /// Time to encode it (off the writer, from a copy of the state).
    pub encode_latency: Duration,
    /// Time to write it; `None` if the write failed.
    pub write_latency: Option<Duration>,
}

/// An [`Observer`] that ignores everything.
pub struct NoObserver;
impl Observer for NoObserver {}

/// Facts about one committed batch.
pub struct CommitInfo<'a> {
    /// Swarming calls and admin commands in the batch.
    pub calls: usize,
    /// Log records written.
    pub records: usize,
    /// Bytes written to the log.
    pub bytes: u64,
    /// Time until the write was durable.
    pub append_latency: Duration,
    /// Time spent applying the commands (scheduling included).
    pub apply_latency: Duration,
    /// Events produced, in order.
    pub events: &'a [PoolEvent],
    /// The pool after the batch (read lock held).
    pub pool: &'a Pool,
}

enum Msg {
    Notify {
        call: NotifyCall,
        deadline: Option<Instant>,
        reply: oneshot::Sender<Result<(), PoolError>>,
        held: Held,
    },
    Assign {
        call: AssignCall,
        deadline: Option<Instant>,
        reply: oneshot::Sender<Result<Vec<BotAssignment>, PoolError>>,
        held: Held,
    },
    Admin {
        cmd: Command,
        deadline: Option<Instant>,
        reply: oneshot::Sender<Result<(), PoolError>>,
        held: Held,
    },
}

/// The bytes a waiting call holds of its pool's budget and of the total,
/// until its batch is done.
type Held = [Reservation; 2];

struct Shared {
    id: String,
    heavy_reads: Arc<tokio::sync::Semaphore>,
    queue_bytes: Arc<ByteBudget>,
    total_bytes: Arc<ByteBudget>,
    state: RwLock<Pool>,
    /// The seq of the last record applied to `state`: a read that starts
    /// now must see at least this.
    committed_seq: std::sync::atomic::AtomicU64,
    /// The follower's copy, when there is one: reads are served from it.
    read_copy: std::sync::Mutex<Option<ReadCopy>>,
    /// The writer stopped because the store failed (the registry waits
    /// before reopening the pool; see `Registry::get`).
    store_failed: std::sync::atomic::AtomicBool,
    closed: watch::Sender<bool>,
    stop: watch::Sender<bool>,
}

/// A running pool: cheap to clone, shared by every request for it.
#[derive(Clone)]
pub struct PoolRef {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Msg>,
    lease: watch::Receiver<store::LeaseState>,
}

impl PoolRef {
    /// Starts the writer of a recovered pool.
    pub fn spawn(
        id: String,
        pool: Pool,
        handle: store::PoolHandle,
        options: PoolOptions,
        observer: Arc<dyn Observer>,
    ) -> PoolRef {
        let (tx, rx) = mpsc::channel(options.queue_capacity.max(1));
        let lease = handle.lease();
        let (closed, _) = watch::channel(false);
        let (stop, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            id,
            heavy_reads: options.heavy_reads.clone(),
            queue_bytes: ByteBudget::new("limits.pool_queue_bytes", options.queue_bytes),
            total_bytes: options.total_queue_bytes.clone(),
            state: RwLock::new(pool),
            committed_seq: std::sync::atomic::AtomicU64::new(handle.last_seq()),
            read_copy: std::sync::Mutex::new(None),
            store_failed: Default::default(),
            closed,
            stop,
        });
        writer::start(shared.clone(), rx, handle, options, observer);
        PoolRef { shared, tx, lease }
    }

    /// The pool id.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// True if the writer stopped because the pool's store failed.
    pub fn store_failed(&self) -> bool {
        self.shared
            .store_failed
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// True once the writer has stopped (deleted, shut down, lease lost or
    /// storage failed); the pool must be reopened to be used again.
    ///
    /// A lost lease counts at once, before the writer has noticed: another
    /// replica may already be changing the pool, so this copy of the state
    /// must not answer reads any more.
    pub fn is_closed(&self) -> bool {
        *self.shared.closed.borrow()
            || self.tx.is_closed()
            || *self.lease.borrow() == store::LeaseState::Lost
    }

    /// Asks the writer to stop after its current batch; calls still queued
    /// are answered with [`PoolError::Closed`].
    pub fn stop(&self) {
        self.shared.stop.send_replace(true);
    }

    /// Calls waiting for the writer now.
    pub fn waiting_calls(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Most calls that may wait for the writer (`batching.queue_capacity`);
    /// beyond it callers get `RESOURCE_EXHAUSTED`.
    pub fn call_capacity(&self) -> usize {
        self.tx.max_capacity()
    }

    /// Waits until the writer has stopped.
    pub async fn closed(&self) {
        let mut rx = self.shared.closed.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// Takes `encoded_bound`'s worth of memory from the pool's budget and
    /// the server's, or refuses the call.
    fn reserve(&self, encoded_bound: usize) -> Result<Held, PoolError> {
        let n = memory_estimate(encoded_bound);
        let over = |b: &ByteBudget| PoolError::OverBudget {
            pool: self.shared.id.clone(),
            limit: b.limit,
            setting: b.setting,
        };
        let pool = self
            .shared
            .queue_bytes
            .take(n)
            .ok_or_else(|| over(&self.shared.queue_bytes))?;
        let total = self
            .shared
            .total_bytes
            .take(n)
            .ok_or_else(|| over(&self.shared.total_bytes))?;
        Ok([pool, total])
    }

    fn send(&self, msg: Msg) -> Result<(), PoolError> {
        self.tx.try_send(msg).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => PoolError::Busy(self.shared.id.clone()),
            mpsc::error::TrySendError::Closed(_) => PoolError::Closed(self.shared.id.clone()),
        })
    }

    async fn wait<T>(&self, rx: oneshot::Receiver<Result<T, PoolError>>) -> Result<T, PoolError> {
        rx.await
            .unwrap_or_else(|_| Err(PoolError::Closed(self.shared.id.clone())))
    }

    /// A NotifyTasks call; returns once its effect is durable.
    pub async fn notify(
        &self,
        call: NotifyCall,
        deadline: Option<Instant>,
    ) -> Result<(), PoolError> {
        call.validate()?;
        let held = self.reserve(call.size_bound())?;
        let (reply, rx) = oneshot::channel();
        self.send(Msg::Notify {
            call,
            deadline,
            reply,
            held,
        })?;
        self.wait(rx).await
    }

    /// An AssignTasks call; returns the assignments of its bots, in order,
    /// once the pass that made them is durable.
    pub async fn assign(
        &self,
        call: AssignCall,
        deadline: Option<Instant>,
    ) -> Result<Vec<BotAssignment>, PoolError> {
        call.validate()?;
        let held = self.reserve(call.size_bound())?;
        let (reply, rx) = oneshot::channel();
        self.send(Msg::Assign {
            call,
            deadline,
            reply,
            held,
        })?;
        self.wait(rx).await
    }

    /// An administrative command; returns once durable. Like the calls
    /// of Swarming, it is left out (and answered `DEADLINE_EXCEEDED`) if
    /// its deadline passes before its batch is committed.
    pub async fn admin(&self, cmd: Command, deadline: Option<Instant>) -> Result<(), PoolError> {
        cmd.validate()?;
        let held = self.reserve(cmd.encode().len())?;
        let (reply, rx) = oneshot::channel();
        self.send(Msg::Admin {
            cmd,
            deadline,
            reply,
            held,
        })?;
        self.wait(rx).await
    }

    /// Runs `f` on the committed state, as of this call or later, without
    /// holding up the writer: on the follower's copy when the pool has one
    /// (once the copy has applied everything committed when the call
    /// started), else on the pool itself, which is then small. `f` runs on
    /// a blocking thread, so a long read keeps no async worker either.
    ///
    /// Every read of the services goes through here (InspectPool,
    /// ListAccounts, GetCancellations, GetCallbacks...), so a write that was
    /// acknowledged is seen by every read that starts after it.
    pub async fn view<R, F>(&self, f: F) -> R
    where
        F: FnOnce(&Pool) -> R + Send + 'static,
        R: Send + 'static,
    {
        let seq = self
            .shared
            .committed_seq
            .load(std::sync::atomic::Ordering::Acquire);
        let copy = self
            .shared
            .read_copy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(mut copy) = copy
            && copy.applied.wait_for(|&a| a >= seq).await.is_ok()
        {
            let state = copy.state;
            return run_blocking(move || f(&read_lock(&state))).await;
        }
        // No follower (or it stopped): the pool is read in place.
        let shared = Arc::clone(&self.shared);
        run_blocking(move || f(&read_lock(&shared.state))).await
    }

    /// [`PoolRef::view`] for a read that walks the whole pool (InspectPool):
    /// it waits for one of the server's heavy-read slots first
    /// ([`PoolOptions::heavy_reads`]), so such reads never take every core
    /// from the writers.
    pub async fn view_heavy<R, F>(&self, f: F) -> R
    where
        F: FnOnce(&Pool) -> R + Send + 'static,
        R: Send + 'static,
    {
        let _permit = self.shared.heavy_reads.acquire().await;
        self.view(f).await
    }

    /// Runs `f` at once on the follower's copy when the pool has one (it
    /// may lag the writer by a few batches), else on the pool itself: for
    /// figures such as metrics gauges, which need no read-your-writes but
    /// must not hold up the writer of a large pool.
    pub fn read_recent<R>(&self, f: impl FnOnce(&Pool) -> R) -> R {
        let copy = self
            .shared
            .read_copy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .map(|c| Arc::clone(&c.state));
        match copy {
            Some(state) => f(&read_lock(&state)),
            None => f(&read_lock(&self.shared.state)),
        }
    }

    /// Reads the committed state in place, holding the pool's lock (the
    /// writer waits for it): for quick reads and tests. Services use
    /// [`PoolRef::view`].
    pub fn read(&self) -> RwLockReadGuard<'_, Pool> {
        // A panic while holding the lock would be a bug in the core; the
        // state it left is still the last committed one plus a partial
        // apply, so serving reads from it is better than failing them all.
        self.shared
            .state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn read_lock(state: &RwLock<Pool>) -> RwLockReadGuard<'_, Pool> {
    // A panic while holding the lock would be a bug in the core; the
    // pool's writer stops on it (see `Writer::execute`).
    state
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs `f` on a blocking thread; a panic in it is raised again here.
async fn run_blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// What readers need of a follower: its copy and how far it got.
#[derive(Clone)]
struct ReadCopy {
    state: Arc<RwLock<Pool>>,
    /// The seq of the last record applied to the copy.
    applied: watch::Receiver<u64>,
}

/// Rebuilds a pool from what the store recovered: the snapshot, then every
/// logged command after it, through the deterministic core.
pub fn recover(pool_id: &str, rec: &store::Recovered) -> Result<Pool, RecoverError> {
    recover_observed(pool_id, rec, &mut |_: &[PoolEvent], _: &Pool| {})
}

/// [`recover`], showing `replayed` the events of every log record replayed
/// after the snapshot and the pool after it.
pub fn recover_observed(
    pool_id: &str,
    rec: &store::Recovered,
    replayed: &mut dyn FnMut(&[PoolEvent], &Pool),
) -> Result<Pool, RecoverError> {
    let mut pool = match &rec.snapshot {
        Some((seq, bytes)) => {
            qscheduler_core::snapshot::decode(bytes).map_err(|e| RecoverError {
                pool: pool_id.to_owned(),
                seq: *seq,
                what: format!("snapshot does not decode: {e}"),
            })?
        }
        None => Pool::new(qscheduler_core::Time::EPOCH),
    };
    for (seq, bytes) in &rec.records {
        let cmd = Command::decode(bytes).map_err(|e| RecoverError {
            pool: pool_id.to_owned(),
            seq: *seq,
            what: format!("log record does not decode: {e}"),
        })?;
        let out = pool.apply(&cmd).map_err(|e| RecoverError {
            pool: pool_id.to_owned(),
            seq: *seq,
            what: format!("log record does not apply: {e}"),
        })?;
        replayed(&out.events, &pool);
    }
    Ok(pool)
}

/// A pool's stored state could not be rebuilt.
#[derive(Debug, thiserror::Error)]
#[error("pool {pool:?}: cannot recover at log record {seq}: {what}")]
pub struct RecoverError {
    /// The pool.
    pub pool: String,
    /// The record (or snapshot seq).
    pub seq: u64,
    /// What is wrong.
    pub what: String,
}
