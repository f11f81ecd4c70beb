//! A pool's single writer: the task that owns every change to the pool.
//!
//! The writer collects concurrent calls into a batch (Swarming's
//! NotifyTasks in arrival order, then one scheduling pass for all
//! AssignTasks of the batch), writes the batch's commands to the pool's
//! log in one durable commit, applies them to the in-memory [`Pool`], and
//! only then answers. "OK" therefore always means "durable", and one fsync
//! serves a whole batch. What must not break: a command reaches the shared
//! state only after its log write succeeded, so reads never see a change
//! that recovery would not replay.
//!
//! Each call keeps its own deadline: a call whose deadline passed while it
//! waited is answered `DEADLINE_EXCEEDED` and left out of the batch; once in
//! a batch it is committed even if its caller has gone (the next AssignTasks
//! of that bot returns the same assignment).
//!
//! Snapshots are taken off the writer, from a copy of the state or, for a
//! large pool, from a follower: a second copy that applies every committed
//! batch again on a thread of its own and also serves the pool's reads.

use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use qscheduler_core::{Batch, BotAssignment, Command, CommandError, Outcome, Pool};
use qscheduler_store as store;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{Instrument, debug, error, info, warn};

use super::{
    CommitInfo, ExtraImage, Held, Msg, Observer, PoolError, PoolOptions, ReadCopy, Shared,
    SnapshotInfo, read_lock,
};

/// Starts the writer of the pool `shared`, taking its calls from `rx`,
/// and the supervisor that closes the pool if the writer panics.
pub(super) fn start(
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Msg>,
    handle: store::PoolHandle,
    options: PoolOptions,
    observer: Arc<dyn Observer>,
) {
    let writer = Writer {
        shared: shared.clone(),
        rx,
        handle,
        options,
        observer: observer.clone(),
        since_snapshot_records: 0,
        since_snapshot_bytes: 0,
        since_snapshot_apply: Duration::ZERO,
        last_snapshot_bytes: 0,
        last_snapshot_cost: Duration::ZERO,
        snapshot_in_flight: None,
        snapshot_report: Arc::default(),
        follower: None,
    };
    // A panic in the writer is a bug; it fails this pool alone. The
    // state may be half-changed, so the pool is closed (its queued calls
    // get UNAVAILABLE and are retried once) and the next call reopens it
    // from its log.
    let task = tokio::spawn(writer.run());
    tokio::spawn(async move {
        if let Err(e) = task.await {
            let what = if e.is_panic() {
                panic_message(&e.into_panic())
            } else {
                "cancelled".to_owned()
            };
            error!(
                pool = %shared.id,
                panic = %what,
                "the pool's writer panicked; the pool is closed and will be reopened \
                 from its log; other pools are not affected"
            );
            observer.writer_panicked(&shared.id);
            *shared
                .read_copy
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
            shared.closed.send_replace(true);
        }
    });
}

/// The message of a panic's payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_owned()
    }
}

/// A call waiting for its batch's outcome.
enum Responder {
    Notify(oneshot::Sender<Result<(), PoolError>>),
    Assign(oneshot::Sender<Result<Vec<BotAssignment>, PoolError>>),
    Admin(oneshot::Sender<Result<(), PoolError>>),
}

impl Responder {
    fn fail(self, e: PoolError) {
        match self {
            Responder::Notify(r) | Responder::Admin(r) => {
                let _ = r.send(Err(e));
            }
            Responder::Assign(r) => {
                let _ = r.send(Err(e));
            }
        }
    }
}

/// One command of a batch and the calls it answers.
struct Step {
    cmd: Command,
    responders: Vec<Responder>,
}

/// The pool's writer: its queue of calls, its log, and when to snapshot.
struct Writer {
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Msg>,
    handle: store::PoolHandle,
    options: PoolOptions,
    observer: Arc<dyn Observer>,
    since_snapshot_records: u64,
    since_snapshot_bytes: u64,
    since_snapshot_apply: Duration,
    last_snapshot_bytes: u64,
    /// Writer stall plus encoding time of the last snapshot.
    last_snapshot_cost: Duration,
    snapshot_in_flight: Option<tokio::task::JoinHandle<()>>,
    /// Where the background snapshot reports its size and cost.
    snapshot_report: Arc<std::sync::Mutex<Option<SnapshotDone>>>,
    follower: Option<Follower>,
}

/// A second copy of a large pool, kept at the writer's committed state by
/// applying every committed batch again on a blocking thread. Snapshots are
/// encoded from it, so the writer never stops for them.
struct Follower {
    tx: mpsc::Sender<FollowerMsg>,
    task: tokio::task::JoinHandle<()>,
    /// A snapshot is being encoded or written.
    busy: Arc<std::sync::atomic::AtomicBool>,
}

enum FollowerMsg {
    /// The commands of a committed batch, in order, and the seq of the
    /// last one.
    Apply(Vec<Command>, u64),
    /// Take a snapshot: every batch up to this seq has been sent. With
    /// the observers' image of the same seq.
    Snapshot(u64, Option<ExtraImage>),
}

/// How many committed batches the follower may lag behind before the
/// writer waits for it.
const FOLLOWER_LAG: usize = 4096;

/// What a finished background snapshot reports back to the writer.
struct SnapshotDone {
    bytes: u64,
    cost: Duration,
}

impl Writer {
    async fn run(mut self) {
        let mut lease = self.handle.lease();
        let mut stop = self.shared.stop.subscribe();
        loop {
            let first = tokio::select! {
                m = self.rx.recv() => m,
                _ = lease.wait_for(|s| *s == store::LeaseState::Lost) => {
                    warn!(pool = %self.shared.id, "lost the pool's writer lease; closing it here");
                    None
                }
                _ = stop.wait_for(|s| *s) => None,
            };
            let Some(first) = first else { break };
            let mut msgs = vec![first];
            let until = tokio::time::Instant::now() + self.options.batch_window;
            while msgs.len() < self.options.max_batch {
                match self.rx.try_recv() {
                    Ok(m) => msgs.push(m),
                    // No window: take what is queued. (A timer would still
                    // wait for the runtime's next millisecond tick.)
                    Err(_) if self.options.batch_window.is_zero() => break,
                    Err(_) => match tokio::time::timeout_at(until, self.rx.recv()).await {
                        Ok(Some(m)) => msgs.push(m),
                        _ => break,
                    },
                }
            }
            let span = tracing::info_span!("batch", pool = %self.shared.id, calls = msgs.len());
            if !self.execute(msgs).instrument(span).await {
                break;
            }
        }
        self.rx.close();
        while let Ok(m) = self.rx.try_recv() {
            let id = self.shared.id.clone();
            match m {
                Msg::Notify { reply, .. } | Msg::Admin { reply, .. } => {
                    let _ = reply.send(Err(PoolError::Closed(id)));
                }
                Msg::Assign { reply, .. } => {
                    let _ = reply.send(Err(PoolError::Closed(id)));
                }
            }
        }
        if let Some(t) = self.snapshot_in_flight.take() {
            let _ = t.await;
        }
        if let Some(f) = self.follower.take() {
            // It finishes the snapshot it may be writing, then stops.
            drop(f.tx);
            let _ = f.task.await;
        }
        // Give the pool back before announcing the stop, so that whoever
        // waits for it can reopen it at once, here or (PostgreSQL) on another
        // replica without waiting for the lease to expire. After a lost lease
        // or a deletion this is a no-op.
        let Writer { shared, handle, .. } = self;
        if let Err(e) = handle.release().await {
            warn!(pool = %shared.id, error = %e, "could not give the pool's lease back; it will expire");
        }
        shared.closed.send_replace(true);
        debug!(pool = %shared.id, "pool writer stopped");
    }

    /// Groups messages into commands: runs of Swarming calls become one
    /// batch; each admin command stands alone, in arrival order.
    fn plan(&self, msgs: Vec<Msg>, held: &mut Vec<Held>) -> Vec<Step> {
        let now = Instant::now();
        let expired = |d: &Option<Instant>| d.is_some_and(|d| d <= now);
        let mut steps: Vec<Step> = Vec::new();
        let mut batch = Batch::default();
        let mut batch_responders: Vec<Responder> = Vec::new();
        // A batch is cut before a call that would take its record past
        // the bound (see PoolOptions::max_batch_bytes).
        let max_bytes = self.options.max_batch_bytes;
        let mut batch_bytes = qscheduler_core::BATCH_SIZE_BOUND;
        let flush = |steps: &mut Vec<Step>, batch: &mut Batch, rs: &mut Vec<Responder>| {
            if !rs.is_empty() {
                steps.push(Step {
                    cmd: Command::Batch(std::mem::take(batch)),
                    responders: std::mem::take(rs),
                });
            }
        };
        for m in msgs {
            let size = match &m {
                Msg::Notify { call, .. } => call.size_bound(),
                Msg::Assign { call, .. } => call.size_bound(),
                Msg::Admin { .. } => 0,
            };
            if batch_bytes + size > max_bytes && !batch_responders.is_empty() {
                flush(&mut steps, &mut batch, &mut batch_responders);
                batch_bytes = qscheduler_core::BATCH_SIZE_BOUND;
            }
            batch_bytes += size;
            match m {
                Msg::Notify {
                    call,
                    deadline,
                    reply,
                    held: h,
                } => {
                    held.push(h);
                    if expired(&deadline) {
                        let _ = reply.send(Err(PoolError::DeadlineExceeded));
                        continue;
                    }
                    batch.notifies.push(call);
                    batch_responders.push(Responder::Notify(reply));
                }
                Msg::Assign {
                    call,
                    deadline,
                    reply,
                    held: h,
                } => {
                    held.push(h);
                    if expired(&deadline) {
                        let _ = reply.send(Err(PoolError::DeadlineExceeded));
                        continue;
                    }
                    batch.assigns.push(call);
                    batch_responders.push(Responder::Assign(reply));
                }
                Msg::Admin {
                    cmd,
                    deadline,
                    reply,
                    held: h,
                } => {
                    held.push(h);
                    if expired(&deadline) {
                        let _ = reply.send(Err(PoolError::DeadlineExceeded));
                        continue;
                    }
                    flush(&mut steps, &mut batch, &mut batch_responders);
                    batch_bytes = qscheduler_core::BATCH_SIZE_BOUND;
                    steps.push(Step {
                        cmd,
                        responders: vec![Responder::Admin(reply)],
                    });
                }
            }
        }
        flush(&mut steps, &mut batch, &mut batch_responders);
        steps
    }

    fn read_state(&self) -> RwLockReadGuard<'_, Pool> {
        self.shared
            .state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Commits and applies one batch of messages. Returns false if the
    /// writer must stop.
    async fn execute(&mut self, msgs: Vec<Msg>) -> bool {
        let calls = msgs.len();
        // Given back when this function returns: the calls' memory is
        // freed with their batch.
        let mut held = Vec::with_capacity(calls);
        let mut steps = self.plan(msgs, &mut held);
        // Never log a command that would not apply: recovery would stop at
        // it. The core admits the steps in order, each against the state
        // the ones before it leave.
        {
            let state = self.read_state();
            let mut admission = state.admission();
            steps.retain_mut(|step| match admission.admit(&step.cmd) {
                Ok(()) => true,
                Err(e) => {
                    for r in step.responders.drain(..) {
                        r.fail(PoolError::Command(e.clone()));
                    }
                    false
                }
            });
        }
        if steps.is_empty() {
            return true;
        }
        let records: Vec<Vec<u8>> = steps.iter().map(|s| s.cmd.encode()).collect();
        let n_records = records.len();
        let stats = match self.handle.append(records).await {
            Ok(stats) => stats,
            Err(e) => {
                let fatal = !matches!(e, store::Error::InvalidArgument(_));
                error!(pool = %self.shared.id, error = %e, "log write failed; the batch was not applied");
                let msg = e.to_string();
                for step in steps {
                    for r in step.responders {
                        r.fail(PoolError::Store {
                            pool: self.shared.id.clone(),
                            source: store::Error::Internal(msg.clone()),
                        });
                    }
                }
                // After a failed write the log's end is unknown: stop, so the
                // pool is reopened (and recovered) before it is used again.
                if fatal {
                    self.shared
                        .store_failed
                        .store(true, std::sync::atomic::Ordering::Release);
                }
                return !fatal;
            }
        };
        let for_follower: Option<Vec<Command>> = self
            .follower
            .as_ref()
            .map(|_| steps.iter().map(|s| s.cmd.clone()).collect());
        let apply_start = Instant::now();
        let mut events = Vec::new();
        let mut answers: Vec<(Vec<Responder>, Result<Outcome, CommandError>)> = Vec::new();
        {
            let mut state = self
                .shared
                .state
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for step in steps {
                let res = state.apply(&step.cmd);
                if let Ok(out) = &res {
                    events.extend(out.events.iter().cloned());
                }
                answers.push((step.responders, res));
            }
        }
        self.shared
            .committed_seq
            .store(stats.last_seq, std::sync::atomic::Ordering::Release);
        let apply_latency = apply_start.elapsed();
        for (responders, res) in answers {
            match res {
                Ok(out) => {
                    let mut assignments = out.assignments.into_iter();
                    for r in responders {
                        match r {
                            Responder::Notify(r) | Responder::Admin(r) => {
                                let _ = r.send(Ok(()));
                            }
                            Responder::Assign(r) => {
                                let _ = r.send(Ok(assignments.next().unwrap_or_default()));
                            }
                        }
                    }
                }
                Err(e) => {
                    // Cannot happen after the checks above; answer honestly.
                    error!(pool = %self.shared.id, error = %e, "logged command failed to apply");
                    for r in responders {
                        r.fail(PoolError::Command(e.clone()));
                    }
                }
            }
        }
        {
            let state = self.read_state();
            self.observer.committed(
                &self.shared.id,
                &CommitInfo {
                    calls,
                    records: n_records,
                    bytes: stats.bytes,
                    append_latency: stats.elapsed,
                    apply_latency,
                    events: &events,
                    pool: &state,
                },
            );
        }
        if let (Some(f), Some(cmds)) = (&self.follower, for_follower)
            && f.tx
                .send(FollowerMsg::Apply(cmds, stats.last_seq))
                .await
                .is_err()
        {
            warn!(pool = %self.shared.id, "the pool's follower stopped; snapshots are taken from copies again");
            self.drop_follower();
        }
        self.since_snapshot_records += n_records as u64;
        self.since_snapshot_bytes += stats.bytes;
        self.since_snapshot_apply += apply_latency;
        self.maybe_snapshot(stats.last_seq).await;
        true
    }

    /// Starts a background snapshot when enough log has accumulated.
    ///
    /// A snapshot needs a consistent state, and only the writer changes the
    /// state. Encoding on the writer would stop every call of the pool for
    /// the whole encoding (seconds at a million queued tasks), so:
    ///
    /// * a small pool is copied (a deep clone, several times cheaper than
    ///   encoding) and a blocking thread encodes and writes the copy while
    ///   the writer goes on; the copy's memory is freed afterwards;
    /// * once making that copy took longer than
    ///   [`PoolOptions::follower_above`], the copy is kept as a *follower*:
    ///   every committed batch is applied to it again on its own thread
    ///   (the core is deterministic, so it stays identical), and later
    ///   snapshots are encoded from it at the seq the writer names. The
    ///   writer then never stops for a snapshot; the price is a second copy
    ///   of the pool in memory and applying every batch twice (on another
    ///   core). Incremental snapshots would avoid both, but the scheduler's
    ///   index is not built for them.
    async fn maybe_snapshot(&mut self, last_seq: u64) {
        self.maybe_start_read_copy(last_seq);
        let busy = match &self.follower {
            Some(f) => f.busy.load(std::sync::atomic::Ordering::Acquire),
            None => self
                .snapshot_in_flight
                .as_ref()
                .is_some_and(|t| !t.is_finished()),
        };
        if busy {
            return;
        }
        if let Some(done) = self
            .snapshot_report
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            self.last_snapshot_bytes = done.bytes;
            self.last_snapshot_cost = done.cost;
        }
        let due = self.since_snapshot_records >= self.options.snapshot_every_records
            || self.since_snapshot_bytes
                >= self
                    .options
                    .snapshot_every_bytes
                    .max(self.last_snapshot_bytes)
            || self.since_snapshot_apply
                >= self
                    .options
                    .snapshot_every_apply
                    .max(self.last_snapshot_cost * 2);
        if !due {
            return;
        }
        self.since_snapshot_records = 0;
        self.since_snapshot_bytes = 0;
        self.since_snapshot_apply = Duration::ZERO;
        let extra = self.observer.snapshot_extra(&self.shared.id);
        if let Some(f) = &self.follower {
            f.busy.store(true, std::sync::atomic::Ordering::Release);
            if f.tx
                .send(FollowerMsg::Snapshot(last_seq, extra))
                .await
                .is_err()
            {
                warn!(pool = %self.shared.id, "the pool's follower stopped; snapshots are taken from copies again");
                self.drop_follower();
            }
            return;
        }
        let started = Instant::now();
        let copy = self.read_state().clone();
        let stall = started.elapsed();
        let snapshotter = Snapshotter {
            pool: self.shared.id.clone(),
            handle: self.handle.clone(),
            report: self.snapshot_report.clone(),
            runtime: tokio::runtime::Handle::current(),
            observer: self.observer.clone(),
        };
        if stall >= self.options.follower_above {
            info!(
                pool = %self.shared.id,
                copy_ms = stall.as_millis() as u64,
                "the pool is large: keeping a follower copy for snapshots and reads"
            );
            self.start_follower(snapshotter, copy, last_seq, Some((stall, extra)));
            return;
        }
        self.snapshot_in_flight = Some(tokio::task::spawn_blocking(move || {
            snapshotter.snapshot(&copy, last_seq, stall, extra);
            // Free the copy here, off the async threads.
            drop(copy);
        }));
    }
}

impl Writer {
    fn snapshotter(&self) -> Snapshotter {
        Snapshotter {
            pool: self.shared.id.clone(),
            handle: self.handle.clone(),
            report: self.snapshot_report.clone(),
            runtime: tokio::runtime::Handle::current(),
            observer: self.observer.clone(),
        }
    }

    /// Starts a follower from `copy` (the state at `seq`), taking a
    /// snapshot from it first if `snapshot_stall` is given, and serves
    /// reads from it from now on.
    fn start_follower(
        &mut self,
        snapshotter: Snapshotter,
        copy: Pool,
        seq: u64,
        snapshot_stall: Option<(Duration, Option<ExtraImage>)>,
    ) {
        let (tx, rx) = mpsc::channel(FOLLOWER_LAG);
        let busy = Arc::new(std::sync::atomic::AtomicBool::new(snapshot_stall.is_some()));
        let b = busy.clone();
        let state = Arc::new(RwLock::new(copy));
        let (applied_tx, applied) = watch::channel(seq);
        *self
            .shared
            .read_copy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(ReadCopy {
            state: Arc::clone(&state),
            applied,
        });
        let task = tokio::task::spawn_blocking(move || {
            snapshotter.follow(&state, seq, snapshot_stall, rx, &b, &applied_tx)
        });
        self.follower = Some(Follower { tx, task, busy });
    }

    /// Reads stop using the follower, which is going away.
    fn drop_follower(&mut self) {
        *self
            .shared
            .read_copy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        self.follower = None;
    }

    /// Gives a pool that has grown past [`PoolOptions::read_copy_above`] its
    /// follower, for reads. The copy is made once, on the writer.
    fn maybe_start_read_copy(&mut self, last_seq: u64) {
        if self.follower.is_some() {
            return;
        }
        let copy = {
            let state = self.read_state();
            let s = state.scheduler();
            let size = s.queued_len() + s.workers_len();
            if size <= self.options.read_copy_above {
                return;
            }
            let started = Instant::now();
            let copy = state.clone();
            info!(
                pool = %self.shared.id,
                tasks_and_bots = size,
                copy_ms = started.elapsed().as_millis() as u64,
                "the pool is large: keeping a follower copy for reads and snapshots"
            );
            copy
        };
        let snapshotter = self.snapshotter();
        self.start_follower(snapshotter, copy, last_seq, None);
    }
}

/// Encodes and writes snapshots, on a blocking thread.
struct Snapshotter {
    pool: String,
    handle: store::PoolHandle,
    report: Arc<std::sync::Mutex<Option<SnapshotDone>>>,
    runtime: tokio::runtime::Handle,
    observer: Arc<dyn Observer>,
}

impl Snapshotter {
    /// Encodes `state` (which includes every record up to `seq`) and writes
    /// it. `stall` is what the writer spent on it.
    fn snapshot(&self, state: &Pool, seq: u64, stall: Duration, extra: Option<ExtraImage>) {
        let started = Instant::now();
        let bytes = qscheduler_core::snapshot::encode(state);
        let extra = extra.map(|f| f());
        let encode = started.elapsed();
        *self
            .report
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(SnapshotDone {
            bytes: bytes.len() as u64,
            cost: stall + encode,
        });
        let size = bytes.len() as u64;
        let res = self
            .runtime
            .block_on(self.handle.write_snapshot_with_extra(seq, bytes, extra));
        self.observer.snapshot(
            &self.pool,
            &SnapshotInfo {
                bytes: size,
                encode_latency: encode,
                write_latency: res.as_ref().ok().map(|s| s.elapsed),
            },
        );
        match res {
            Ok(s) => info!(
                pool = %self.pool,
                seq = s.seq,
                bytes = s.bytes,
                stall_ms = stall.as_millis() as u64,
                encode_ms = encode.as_millis() as u64,
                write_ms = s.elapsed.as_millis() as u64,
                compacted = s.records_compacted,
                "snapshot written"
            ),
            Err(e) => {
                warn!(pool = %self.pool, error = %e, "snapshot write failed; will retry later")
            }
        }
    }

    /// The follower's loop: snapshot the initial copy (at `seq`) if asked
    /// to, then apply committed batches and take snapshots as the writer
    /// asks, until the writer goes away. Readers share the copy: applying
    /// waits for the reads in progress, snapshots run alongside them.
    fn follow(
        &self,
        state: &RwLock<Pool>,
        seq: u64,
        snapshot_stall: Option<(Duration, Option<ExtraImage>)>,
        mut rx: mpsc::Receiver<FollowerMsg>,
        busy: &std::sync::atomic::AtomicBool,
        applied: &watch::Sender<u64>,
    ) {
        if let Some((stall, extra)) = snapshot_stall {
            self.snapshot(&read_lock(state), seq, stall, extra);
            busy.store(false, std::sync::atomic::Ordering::Release);
        }
        while let Some(msg) = rx.blocking_recv() {
            match msg {
                FollowerMsg::Apply(cmds, seq) => {
                    let mut state = state
                        .write()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    for cmd in &cmds {
                        if let Err(e) = state.apply(cmd) {
                            // The writer applied the same command to the
                            // same state; this is a bug, not bad input.
                            error!(pool = %self.pool, error = %e, "the follower copy diverged; dropping it");
                            return;
                        }
                    }
                    drop(state);
                    applied.send_replace(seq);
                }
                FollowerMsg::Snapshot(seq, extra) => {
                    self.snapshot(&read_lock(state), seq, Duration::ZERO, extra);
                    busy.store(false, std::sync::atomic::Ordering::Release);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::NoObserver;
    use crate::registry::Registry;
    use qscheduler_core::{AccountConfig, NotifyCall, Time};

    /// An administrative call whose deadline passes while it waits for its
    /// batch is refused and never logged, like a Swarming call.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn expired_admin_commands_are_left_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().to_str().expect("utf-8").to_owned();
        let options = PoolOptions {
            batch_window: Duration::from_millis(200),
            ..PoolOptions::default()
        };
        let store = store::Store::open(&path, store::StoreOptions::default())
            .await
            .expect("store");
        let r = Registry::new(store, options, Arc::new(NoObserver));
        r.create("p", Time::from_secs(1)).await.expect("create");
        let p = r.get("p").await.expect("pool");
        let account = |id: &str| Command::CreateAccount {
            account_id: id.into(),
            config: AccountConfig::default(),
        };
        let soon = Instant::now() + Duration::from_millis(1);
        let late = p.admin(account("late"), Some(soon)).await;
        assert!(matches!(late, Err(PoolError::DeadlineExceeded)), "{late:?}");
        let later = Instant::now() + Duration::from_secs(60);
        p.admin(account("patient"), Some(later))
            .await
            .expect("in time");
        p.admin(account("unhurried"), None)
            .await
            .expect("no deadline");
        let ids: Vec<String> = p
            .read()
            .scheduler()
            .accounts()
            .map(|(id, _, _)| id.to_owned())
            .collect();
        assert_eq!(ids, ["patient", "unhurried"]);
        drop(p);
        r.shutdown().await;
        drop(r);

        let store = store::Store::open(&path, store::StoreOptions::default())
            .await
            .expect("reopen");
        let (_, rec) = store.open_pool("p").await.expect("open");
        let logged: Vec<Command> = rec
            .records
            .iter()
            .map(|(_, b)| Command::decode(b).expect("decodes"))
            .collect();
        assert_eq!(
            logged,
            [
                Command::Create {
                    time: Time::from_secs(1)
                },
                account("patient"),
                account("unhurried")
            ]
        );
    }

    /// Calls that would make one oversized log record together are split
    /// over several records, in arrival order, and all succeed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn large_calls_are_split_over_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().to_str().expect("utf-8").to_owned();
        let options = PoolOptions {
            batch_window: Duration::from_millis(300),
            max_batch_bytes: 4000,
            ..PoolOptions::default()
        };
        let store = store::Store::open(&path, store::StoreOptions::default())
            .await
            .expect("store");
        let r = Registry::new(store, options, Arc::new(NoObserver));
        r.create("p", Time::from_secs(1)).await.expect("create");
        let p = r.get("p").await.expect("pool");
        let call = |i: u32| NotifyCall {
            notifications: vec![qscheduler_core::Notification {
                time: Time::from_secs(2),
                task_id: format!("t{i}"),
                kind: qscheduler_core::NotifyKind::Waiting {
                    account: String::new(),
                    base_labels: vec!["x".repeat(1500)],
                    provisionable_labels: vec![],
                    enqueue_time: Time::from_secs(2),
                    tags: vec![],
                },
            }],
            is_callback: false,
        };
        // Sent together, in this order, into one batch window: a call is
        // queued by the first poll of `notify`, so polling the calls once
        // each, in order, fixes their order of arrival.
        let mut calls: Vec<_> = (0..5)
            .map(|i| {
                let p = p.clone();
                let c = call(i);
                Some(Box::pin(async move { p.notify(c, None).await }))
            })
            .collect();
        let mut done = Vec::new();
        std::future::poll_fn(|cx| {
            for c in &mut calls {
                if let Some(f) = c
                    && let std::task::Poll::Ready(r) = f.as_mut().poll(cx)
                {
                    done.push(r);
                    *c = None;
                }
            }
            std::task::Poll::Ready(())
        })
        .await;
        for c in calls.into_iter().flatten() {
            done.push(c.await);
        }
        for r in done {
            r.expect("notify");
        }
        assert_eq!(p.read().scheduler().queued_len(), 5);
        drop(p);
        r.shutdown().await;
        drop(r);

        let store = store::Store::open(&path, store::StoreOptions::default())
            .await
            .expect("reopen");
        let (_, rec) = store.open_pool("p").await.expect("open");
        let mut ids = Vec::new();
        for (_, bytes) in &rec.records[1..] {
            assert!(bytes.len() <= 4000, "a record of {} bytes", bytes.len());
            let Command::Batch(b) = Command::decode(bytes).expect("decodes") else {
                panic!("not a batch");
            };
            assert!(
                b.notifies.len() <= 2,
                "{} calls in one record",
                b.notifies.len()
            );
            ids.extend(
                b.notifies
                    .iter()
                    .flat_map(|n| n.notifications.iter().map(|x| x.task_id.clone())),
            );
        }
        assert_eq!(ids, ["t0", "t1", "t2", "t3", "t4"]);
        assert!(rec.records.len() >= 4, "{} records", rec.records.len());
    }
}
