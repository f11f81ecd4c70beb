//! The task event log: every event of the scheduling core, as
//! `metrics.TaskEvent` (reference §11.2), written as JSON lines to rotated
//! files and, optionally, to a PostgreSQL table.
//!
//! Writing must never slow scheduling down, so the pool writers only put
//! events into a bounded in-memory queue per sink ([`Observer::committed`]
//! clones a few `Arc`s per event) and each sink drains its queue from its
//! own task. A sink that falls behind (a slow disk, an unreachable
//! database) loses its *oldest* queued events once its queue is full, and
//! counts them; the original was lossy in the same way. Each sink has its
//! own queue so that a slow database never costs the files any events.
//! Everything still queued is written on graceful shutdown.
//!
//! Lines are the proto3 JSON mapping of `TaskEvent` with the proto field
//! names (`event_type`, `scheduler_id`, ... — the column names of the
//! original's BigQuery table) and every field present, defaults included,
//! so each line carries the whole schema; of the `details` oneof only the
//! member that is set appears. The encoder is hand-written for speed and
//! tested against the descriptor pool of the wire crate, so the JSON cannot
//! drift from the proto.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use qscheduler_core::{Balance, CompletedReason, EventKind, PoolEvent};
use qscheduler_wire::metrics::TaskEvent;
use qscheduler_wire::metrics::task_event::{
    self, AssignedDetails, CompletedDetails, Details, EnqueuedDetails, EventCategory, EventType,
    PreemptedDetails, ReprioritizedDetails, UnassignedDetails, completed_details,
};
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

use crate::pool::{CommitInfo, Observer};

/// Where events go and how much may wait.
#[derive(Clone, Debug)]
pub struct EventLogOptions {
    /// Events queued per sink; beyond it the oldest are dropped.
    pub buffer_events: usize,
    /// JSON-lines files, if any.
    pub files: Option<FileSinkOptions>,
    /// A PostgreSQL table, if any.
    pub postgres: Option<PostgresSinkOptions>,
}

impl Default for EventLogOptions {
    /// No sink: the server library writes no files unless asked to (the
    /// `serve` command turns files on by default).
    fn default() -> Self {
        EventLogOptions {
            buffer_events: 100_000,
            files: None,
            postgres: None,
        }
    }
}

/// Rotated JSON-lines files.
#[derive(Clone, Debug)]
pub struct FileSinkOptions {
    /// The directory (created if missing).
    pub dir: PathBuf,
    /// A new file is started once the current one reaches this size.
    pub max_file_bytes: u64,
    /// ...or is this old.
    pub max_file_age: Duration,
    /// Files kept, the current one included; the oldest are deleted.
    pub max_files: usize,
    /// The disk budget of the files together: the oldest are deleted to
    /// stay under it.
    pub max_total_bytes: u64,
    /// Events are dropped (and counted) rather than written while the
    /// directory's file system has less free space than this, so the event
    /// log never takes the last of a disk the store may share.
    pub min_free_disk_bytes: u64,
}

impl FileSinkOptions {
    /// Files in `dir` with the default rotation: 64 MiB or one hour, 48
    /// files, 1 GiB in all, writing only while 1 GiB of disk stays free.
    pub fn new(dir: PathBuf) -> Self {
        FileSinkOptions {
            dir,
            max_file_bytes: 64 << 20,
            max_file_age: Duration::from_secs(3600),
            max_files: 48,
            max_total_bytes: 1 << 30,
            min_free_disk_bytes: 1 << 30,
        }
    }
}

/// Free bytes for unprivileged writers on the file system holding `dir`.
fn free_disk_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statvfs only reads the NUL-terminated path and writes the
    // struct we pass; both live across the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // The field types differ between platforms (u32 on some).
    #[allow(clippy::useless_conversion)]
    Ok(u64::from(st.f_bavail).saturating_mul(u64::from(st.f_frsize)))
}

/// A PostgreSQL table. Its `Debug` hides the password of the URL.
#[derive(Clone)]
pub struct PostgresSinkOptions {
    /// The database.
    pub url: String,
    /// Schema of the table (created if missing); `None`: the connection's
    /// `search_path`.
    pub schema: Option<String>,
    /// The table (created if missing).
    pub table: String,
    /// Most rows per INSERT.
    pub batch_rows: usize,
}

impl std::fmt::Debug for PostgresSinkOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSinkOptions")
            .field("url", &crate::secret::RedactedUrl(&self.url))
            .field("schema", &self.schema)
            .field("table", &self.table)
            .field("batch_rows", &self.batch_rows)
            .finish()
    }
}

impl PostgresSinkOptions {
    /// Table `task_events` in the database at `url`, 500 rows per INSERT.
    pub fn new(url: String) -> Self {
        PostgresSinkOptions {
            url,
            schema: None,
            table: "task_events".to_owned(),
            batch_rows: 500,
        }
    }
}

/// Why the event log could not start.
#[derive(Debug, thiserror::Error)]
pub enum EventLogError {
    /// The file sink's directory is unusable.
    #[error("event log directory {}: {source}", dir.display())]
    Dir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Counters of one sink, read by the metrics endpoint.
#[derive(Debug)]
pub struct SinkStats {
    /// `files` or `postgres`.
    pub sink: &'static str,
    /// Events written.
    pub written: AtomicU64,
    /// Events lost: pushed out of a full queue, or given up after a write
    /// error.
    pub dropped: AtomicU64,
    /// Failed writes.
    pub errors: AtomicU64,
    /// Events waiting now.
    pub queued: AtomicU64,
}

impl SinkStats {
    fn new(sink: &'static str) -> Arc<Self> {
        Arc::new(SinkStats {
            sink,
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            queued: AtomicU64::new(0),
        })
    }
}

type Item = (Arc<str>, PoolEvent);

/// A bounded queue that drops its oldest items when full.
struct Queue {
    items: Mutex<VecDeque<Item>>,
    capacity: usize,
    ready: Notify,
    closed: watch::Sender<bool>,
    stats: Arc<SinkStats>,
}

impl Queue {
    fn new(capacity: usize, stats: Arc<SinkStats>) -> Arc<Queue> {
        Arc::new(Queue {
            items: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            ready: Notify::new(),
            closed: watch::channel(false).0,
            stats,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Item>> {
        self.items
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn push(&self, pool: &Arc<str>, events: &[PoolEvent]) {
        let mut dropped = 0;
        let len = {
            let mut q = self.lock();
            for e in events {
                if q.len() >= self.capacity {
                    q.pop_front();
                    dropped += 1;
                }
                q.push_back((pool.clone(), e.clone()));
            }
            q.len()
        };
        self.stats.queued.store(len as u64, Ordering::Relaxed);
        if dropped > 0 {
            self.stats.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
        self.ready.notify_one();
    }

    fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Up to `max` items, waiting for at least one; `None` once closed and
    /// drained.
    async fn next_chunk(&self, max: usize) -> Option<Vec<Item>> {
        loop {
            let notified = self.ready.notified();
            {
                let mut q = self.lock();
                if !q.is_empty() {
                    let n = q.len().min(max);
                    let chunk: Vec<Item> = q.drain(..n).collect();
                    self.stats.queued.store(q.len() as u64, Ordering::Relaxed);
                    return Some(chunk);
                }
                if self.is_closed() {
                    return None;
                }
            }
            let mut closed = self.closed.subscribe();
            tokio::select! {
                _ = notified => {}
                _ = closed.wait_for(|c| *c) => {}
            }
        }
    }

    /// Resolves once the queue is closed.
    async fn wait_closed(&self) {
        let mut closed = self.closed.subscribe();
        let _ = closed.wait_for(|c| *c).await;
    }
}

/// The event log: its queues and the tasks that drain them.
pub struct EventLog {
    queues: Vec<Arc<Queue>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    closed: AtomicBool,
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog")
            .field("sinks", &self.queues.len())
            .finish()
    }
}

impl EventLog {
    /// Starts the configured sinks. Fails only if the files' directory is
    /// unusable: a database that is down is retried in the background,
    /// because the event log must not keep the scheduler from starting.
    pub fn start(options: &EventLogOptions) -> Result<Arc<EventLog>, EventLogError> {
        let mut queues = Vec::new();
        let mut tasks = Vec::new();
        if let Some(f) = &options.files {
            let writer = FileWriter::open(f.clone()).map_err(|source| EventLogError::Dir {
                dir: f.dir.clone(),
                source,
            })?;
            let q = Queue::new(options.buffer_events, SinkStats::new("files"));
            tasks.push(tokio::spawn(run_file_sink(q.clone(), writer)));
            queues.push(q);
        }
        if let Some(p) = &options.postgres {
            let q = Queue::new(options.buffer_events, SinkStats::new("postgres"));
            tasks.push(tokio::spawn(run_postgres_sink(q.clone(), p.clone())));
            queues.push(q);
        }
        Ok(Arc::new(EventLog {
            queues,
            tasks: Mutex::new(tasks),
            closed: AtomicBool::new(false),
        }))
    }

    /// The sinks' counters.
    pub fn stats(&self) -> Vec<Arc<SinkStats>> {
        self.queues.iter().map(|q| q.stats.clone()).collect()
    }

    /// Writes everything queued and stops the sinks; gives up after
    /// `timeout` (a database that does not answer), counting what was not
    /// written as dropped.
    pub async fn shutdown(&self, timeout: Duration) {
        self.closed.store(true, Ordering::Relaxed);
        for q in &self.queues {
            q.closed.send_replace(true);
            q.ready.notify_one();
        }
        let tasks = std::mem::take(
            &mut *self
                .tasks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let deadline = tokio::time::Instant::now() + timeout;
        for mut t in tasks {
            if tokio::time::timeout_at(deadline, &mut t).await.is_err() {
                warn!("event log sink did not finish in time; abandoning its queued events");
                t.abort();
            }
        }
        for q in &self.queues {
            let left = std::mem::take(&mut *q.lock()).len() as u64;
            if left > 0 {
                q.stats.dropped.fetch_add(left, Ordering::Relaxed);
                q.stats.queued.store(0, Ordering::Relaxed);
            }
        }
    }
}

impl Observer for EventLog {
    fn committed(&self, pool: &str, commit: &CommitInfo<'_>) {
        if commit.events.is_empty() || self.queues.is_empty() {
            return;
        }
        if self.closed.load(Ordering::Relaxed) {
            // Writers finish their last batch during shutdown; the sinks
            // are gone by then.
            for q in &self.queues {
                q.stats
                    .dropped
                    .fetch_add(commit.events.len() as u64, Ordering::Relaxed);
            }
            return;
        }
        let pool: Arc<str> = Arc::from(pool);
        for q in &self.queues {
            q.push(&pool, commit.events);
        }
    }
}

// ---- the record ----

fn balance_vec(b: &Balance) -> Vec<f32> {
    b.0.to_vec()
}

fn labels_vec(l: &[Arc<str>]) -> Vec<String> {
    l.iter().map(|s| s.to_string()).collect()
}

/// The `metrics.TaskEvent` of a core event of pool `pool`.
pub fn task_event(pool: &str, pe: &PoolEvent) -> TaskEvent {
    let e = &pe.event;
    let (event_type, details) = match &e.kind {
        EventKind::Enqueued { tags } => (
            EventType::SwarmingEnqueued,
            Details::EnqueuedDetails(EnqueuedDetails {
                tags: tags.to_vec(),
            }),
        ),
        EventKind::Completed {
            reason,
            other_task,
            other_bot,
        } => (
            EventType::SwarmingCompleted,
            Details::CompletedDetails(CompletedDetails {
                reason: completed_reason(*reason) as i32,
                other_task: other_task.as_deref().unwrap_or_default().to_owned(),
                other_bot: other_bot.as_deref().unwrap_or_default().to_owned(),
            }),
        ),
        EventKind::Assigned {
            provision_required,
            priority,
            preempting,
            preemption_cost,
            preempted_task_id,
        } => (
            EventType::QschedulerAssigned,
            Details::AssignedDetails(AssignedDetails {
                provision_required: *provision_required,
                priority: i32::from(*priority),
                preempting: *preempting,
                preemption_cost: preemption_cost
                    .as_ref()
                    .map(balance_vec)
                    .unwrap_or_default(),
                preempted_task_id: preempted_task_id.as_deref().unwrap_or_default().to_owned(),
            }),
        ),
        EventKind::Preempted {
            preempting_account_id,
            preempting_task_id,
            priority,
            preempting_priority,
        } => (
            EventType::QschedulerPreempted,
            Details::PreemptedDetails(PreemptedDetails {
                preempting_account_id: preempting_account_id.to_string(),
                preempting_task_id: preempting_task_id.to_string(),
                priority: i32::from(*priority),
                preempting_priority: i32::from(*preempting_priority),
            }),
        ),
        EventKind::Reprioritized {
            old_priority,
            new_priority,
        } => (
            EventType::QschedulerReprioritized,
            Details::ReprioritizedDetails(ReprioritizedDetails {
                old_priority: i32::from(*old_priority),
                new_priority: i32::from(*new_priority),
            }),
        ),
        EventKind::Unassigned => (
            EventType::QschedulerUnassigned,
            Details::UnassignedDetails(UnassignedDetails {}),
        ),
    };
    let category = if e.kind.is_swarming_category() {
        EventCategory::CategorySwarming
    } else {
        EventCategory::CategoryQscheduler
    };
    let (seconds, nanos) = e.time.to_unix();
    TaskEvent {
        event_type: event_type as i32,
        scheduler_id: pool.to_owned(),
        task_id: e.task_id.to_string(),
        time: Some(prost_types::Timestamp { seconds, nanos }),
        base_labels: labels_vec(&e.base_labels),
        provisionable_labels: labels_vec(&e.provisionable_labels),
        account_id: e.account_id.to_string(),
        account_valid: e.account_valid,
        account_balance: balance_vec(&e.account_balance),
        cost: e.cost.as_ref().map(balance_vec).unwrap_or_default(),
        bot_id: e.bot_id.as_deref().unwrap_or_default().to_owned(),
        bot_dimensions: labels_vec(&e.bot_dimensions),
        category: category as i32,
        is_callback: pe.is_callback,
        details: Some(details),
    }
}

fn completed_reason(r: CompletedReason) -> completed_details::Reason {
    use completed_details::Reason;
    match r {
        CompletedReason::BotIdle => Reason::BotIdle,
        CompletedReason::IdleTaskAbsent => Reason::IdleTaskAbsent,
        CompletedReason::RunningTaskAbsent => Reason::RunningTaskAbsent,
        CompletedReason::InconsistentBotForTask => Reason::InconsistentBotForTask,
        CompletedReason::InconsistentTaskForBot => Reason::InconsistentTaskForBot,
    }
}

/// Why an event could not be turned into JSON (a build defect: the
/// generated types hold a value the proto does not define).
#[derive(Debug, thiserror::Error)]
#[error("cannot encode a TaskEvent as JSON: {0}")]
pub struct EncodeError(String);

/// One event as a JSON line (without the newline): the proto3 JSON mapping
/// of `metrics.TaskEvent` with proto field names and defaults included.
///
/// Written by hand because it runs for every event under full load: going
/// through the descriptor pool (encode, decode as a dynamic message,
/// serialize) cost a sixth of the server's CPU time per call. A test checks
/// it against the descriptor-driven encoding on many random events, so the
/// two cannot drift apart.
pub fn to_json(event: &TaskEvent) -> Result<String, EncodeError> {
    use completed_details::Reason;
    let mut j = Json(String::with_capacity(512));
    j.0.push('{');
    let event_type = EventType::try_from(event.event_type)
        .map_err(|_| EncodeError(format!("unknown event_type {}", event.event_type)))?;
    j.key("event_type", true);
    j.string(event_type.as_str_name());
    j.key("scheduler_id", false);
    j.string(&event.scheduler_id);
    j.key("task_id", false);
    j.string(&event.task_id);
    if let Some(t) = &event.time {
        j.key("time", false);
        j.timestamp(t)?;
    }
    j.key("base_labels", false);
    j.strings(&event.base_labels);
    j.key("provisionable_labels", false);
    j.strings(&event.provisionable_labels);
    j.key("account_id", false);
    j.string(&event.account_id);
    j.key("account_valid", false);
    j.bool(event.account_valid);
    j.key("account_balance", false);
    j.floats(&event.account_balance);
    j.key("cost", false);
    j.floats(&event.cost);
    j.key("bot_id", false);
    j.string(&event.bot_id);
    j.key("bot_dimensions", false);
    j.strings(&event.bot_dimensions);
    let category = EventCategory::try_from(event.category)
        .map_err(|_| EncodeError(format!("unknown category {}", event.category)))?;
    j.key("category", false);
    j.string(category.as_str_name());
    j.key("is_callback", false);
    j.bool(event.is_callback);
    match &event.details {
        None => {}
        Some(Details::EnqueuedDetails(d)) => {
            j.key("enqueued_details", false);
            j.0.push('{');
            j.key("tags", true);
            j.strings(&d.tags);
            j.0.push('}');
        }
        Some(Details::AssignedDetails(d)) => {
            j.key("assigned_details", false);
            j.0.push('{');
            j.key("provision_required", true);
            j.bool(d.provision_required);
            j.key("priority", false);
            j.int(d.priority);
            j.key("preempting", false);
            j.bool(d.preempting);
            j.key("preemption_cost", false);
            j.floats(&d.preemption_cost);
            j.key("preempted_task_id", false);
            j.string(&d.preempted_task_id);
            j.0.push('}');
        }
        Some(Details::PreemptedDetails(d)) => {
            j.key("preempted_details", false);
            j.0.push('{');
            j.key("preempting_account_id", true);
            j.string(&d.preempting_account_id);
            j.key("preempting_task_id", false);
            j.string(&d.preempting_task_id);
            j.key("priority", false);
            j.int(d.priority);
            j.key("preempting_priority", false);
            j.int(d.preempting_priority);
            j.0.push('}');
        }
        Some(Details::ReprioritizedDetails(d)) => {
            j.key("reprioritized_details", false);
            j.0.push('{');
            j.key("old_priority", true);
            j.int(d.old_priority);
            j.key("new_priority", false);
            j.int(d.new_priority);
            j.0.push('}');
        }
        Some(Details::CompletedDetails(d)) => {
            let reason = Reason::try_from(d.reason)
                .map_err(|_| EncodeError(format!("unknown completed reason {}", d.reason)))?;
            j.key("completed_details", false);
            j.0.push('{');
            j.key("reason", true);
            j.string(reason.as_str_name());
            j.key("other_task", false);
            j.string(&d.other_task);
            j.key("other_bot", false);
            j.string(&d.other_bot);
            j.0.push('}');
        }
        Some(Details::UnassignedDetails(UnassignedDetails {})) => {
            j.key("unassigned_details", false);
            j.0.push_str("{}");
        }
    }
    j.0.push('}');
    Ok(j.0)
}

/// A JSON text under construction.
struct Json(String);

impl Json {
    fn key(&mut self, name: &str, first: bool) {
        if !first {
            self.0.push(',');
        }
        self.0.push('"');
        self.0.push_str(name);
        self.0.push_str("\":");
    }

    fn string(&mut self, s: &str) {
        self.0.push('"');
        for c in s.chars() {
            match c {
                '"' => self.0.push_str("\\\""),
                '\\' => self.0.push_str("\\\\"),
                '\n' => self.0.push_str("\\n"),
                '\r' => self.0.push_str("\\r"),
                '\t' => self.0.push_str("\\t"),
                c if u32::from(c) < 0x20 => {
                    use std::fmt::Write as _;
                    let _ = write!(self.0, "\\u{:04x}", u32::from(c));
                }
                c => self.0.push(c),
            }
        }
        self.0.push('"');
    }

    fn strings(&mut self, v: &[String]) {
        self.0.push('[');
        for (i, s) in v.iter().enumerate() {
            if i > 0 {
                self.0.push(',');
            }
            self.string(s);
        }
        self.0.push(']');
    }

    fn bool(&mut self, b: bool) {
        self.0.push_str(if b { "true" } else { "false" });
    }

    fn int(&mut self, v: i32) {
        use std::fmt::Write as _;
        let _ = write!(self.0, "{v}");
    }

    /// proto3 JSON: the shortest text that reads back as the same `f32`;
    /// the non-finite values as the strings the mapping defines.
    fn floats(&mut self, v: &[f32]) {
        self.0.push('[');
        for (i, f) in v.iter().enumerate() {
            if i > 0 {
                self.0.push(',');
            }
            if f.is_nan() {
                self.0.push_str("\"NaN\"");
            } else if f.is_infinite() {
                self.0.push_str(if *f > 0.0 {
                    "\"Infinity\""
                } else {
                    "\"-Infinity\""
                });
            } else {
                // serde_json prints an f32 with ryu: shortest round trip,
                // always with a fraction or exponent ("1.0").
                match serde_json::to_string(f) {
                    Ok(text) => self.0.push_str(&text),
                    Err(_) => self.0.push_str("null"),
                }
            }
        }
        self.0.push(']');
    }

    /// RFC 3339 in UTC with 0, 3, 6 or 9 fractional digits, as the proto3
    /// mapping of `google.protobuf.Timestamp` asks.
    fn timestamp(&mut self, t: &prost_types::Timestamp) -> Result<(), EncodeError> {
        use std::fmt::Write as _;
        // The mapping's range: 0001-01-01 to 9999-12-31.
        if !(-62_135_596_800..=253_402_300_799).contains(&t.seconds)
            || !(0..1_000_000_000).contains(&t.nanos)
        {
            return Err(EncodeError(format!("timestamp out of range: {t:?}")));
        }
        let (y, m, d, rem) = civil(t.seconds);
        let _ = write!(
            self.0,
            "\"{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        );
        let n = t.nanos;
        if n != 0 {
            if n % 1_000_000 == 0 {
                let _ = write!(self.0, ".{:03}", n / 1_000_000);
            } else if n % 1_000 == 0 {
                let _ = write!(self.0, ".{:06}", n / 1_000);
            } else {
                let _ = write!(self.0, ".{n:09}");
            }
        }
        self.0.push_str("Z\"");
        Ok(())
    }
}

/// Civil UTC date and seconds of the day of a Unix time (Howard Hinnant's
/// days-to-civil algorithm).
fn civil(secs: i64) -> (i64, i64, i64, i64) {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, rem)
}

/// Lines for a chunk; events that cannot be encoded are counted as errors.
fn encode_chunk(chunk: &[Item], stats: &SinkStats) -> Vec<(TaskEvent, String)> {
    let mut out = Vec::with_capacity(chunk.len());
    for (pool, pe) in chunk {
        let ev = task_event(pool, pe);
        match to_json(&ev) {
            Ok(line) => out.push((ev, line)),
            Err(e) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                warn!(error = %e, "event not logged");
            }
        }
    }
    out
}

/// Logs a sink's write failure at most every ten seconds, so an unwritable
/// disk or a database outage does not flood the logs.
struct Throttle(Option<Instant>);

impl Throttle {
    fn ready(&mut self) -> bool {
        let now = Instant::now();
        if self
            .0
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(10))
        {
            return false;
        }
        self.0 = Some(now);
        true
    }
}

// ---- files ----

const FILE_PREFIX: &str = "task-events-";
const FILE_SUFFIX: &str = ".jsonl";

struct CurrentFile {
    out: std::io::BufWriter<std::fs::File>,
    bytes: u64,
    opened: Instant,
}

/// Appends lines to the current file, rotating by size and age and keeping
/// at most `max_files` files.
///
/// Files are named `task-events-<sequence>-<UTC start time>.jsonl`; the
/// sequence number orders them even when the clock jumps, and continues
/// after a restart (which always starts a new file, so a file is never
/// appended to by two processes' lifetimes).
struct FileWriter {
    options: FileSinkOptions,
    current: Option<CurrentFile>,
    next_seq: u64,
}

impl FileWriter {
    fn open(options: FileSinkOptions) -> std::io::Result<FileWriter> {
        std::fs::create_dir_all(&options.dir)?;
        let next_seq = list_files(&options.dir)?
            .last()
            .map(|(seq, _)| seq + 1)
            .unwrap_or(1);
        Ok(FileWriter {
            options,
            current: None,
            next_seq,
        })
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.close()?;
        let name = format!(
            "{FILE_PREFIX}{:08}-{}{FILE_SUFFIX}",
            self.next_seq,
            utc_stamp(SystemTime::now())
        );
        self.next_seq += 1;
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(self.options.dir.join(&name))?;
        debug!(file = %name, "event log: new file");
        self.current = Some(CurrentFile {
            out: std::io::BufWriter::with_capacity(256 << 10, file),
            bytes: 0,
            opened: Instant::now(),
        });
        self.prune()
    }

    /// Deletes the oldest files beyond `max_files`, and beyond the disk
    /// budget: the current file counts as full, so writing it to its size
    /// limit keeps the files within `max_total_bytes`.
    fn prune(&self) -> std::io::Result<()> {
        let files = list_files(&self.options.dir)?;
        let excess = files.len().saturating_sub(self.options.max_files.max(1));
        let sizes: Vec<u64> = files
            .iter()
            .map(|(_, p)| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .collect();
        // The newest file is the current one.
        let mut total: u64 = sizes.iter().rev().skip(1).sum::<u64>() + self.options.max_file_bytes;
        for (i, (_, path)) in files.iter().enumerate() {
            let last = i + 1 == files.len();
            if last || (i >= excess && total <= self.options.max_total_bytes) {
                break;
            }
            match std::fs::remove_file(path) {
                Ok(()) => total = total.saturating_sub(sizes[i]),
                Err(e) => {
                    warn!(file = %path.display(), error = %e, "event log: cannot delete an old file")
                }
            }
        }
        Ok(())
    }

    /// True if the disk has room to write (see
    /// [`FileSinkOptions::min_free_disk_bytes`]).
    fn disk_has_room(&self) -> bool {
        match free_disk_bytes(&self.options.dir) {
            Ok(free) => free >= self.options.min_free_disk_bytes,
            // Unknown: let the write itself fail if it must.
            Err(_) => true,
        }
    }

    fn write_lines<'a>(&mut self, lines: impl Iterator<Item = &'a str>) -> std::io::Result<()> {
        for line in lines {
            let len = line.len() as u64 + 1;
            let rotate = match &self.current {
                None => true,
                Some(c) => {
                    (c.bytes > 0 && c.bytes + len > self.options.max_file_bytes)
                        || c.opened.elapsed() >= self.options.max_file_age
                }
            };
            if rotate {
                self.rotate()?;
            }
            if let Some(c) = &mut self.current {
                c.out.write_all(line.as_bytes())?;
                c.out.write_all(b"\n")?;
                c.bytes += len;
            }
        }
        // One sync per chunk: a crash loses at most the chunk in flight.
        if let Some(c) = &mut self.current {
            c.out.flush()?;
            c.out.get_ref().sync_data()?;
        }
        Ok(())
    }

    fn close(&mut self) -> std::io::Result<()> {
        if let Some(mut c) = self.current.take() {
            c.out.flush()?;
            c.out.get_ref().sync_all()?;
        }
        Ok(())
    }
}

/// The event files in `dir`, oldest (lowest sequence) first.
fn list_files(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name
            .strip_prefix(FILE_PREFIX)
            .filter(|_| name.ends_with(FILE_SUFFIX))
        else {
            continue;
        };
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if let Ok(seq) = digits.parse::<u64>() {
            files.push((seq, entry.path()));
        }
    }
    files.sort();
    Ok(files)
}

/// `YYYYMMDDTHHMMSSZ` for a wall-clock time.
fn utc_stamp(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (y, m, d, rem) = civil(secs);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

async fn run_file_sink(queue: Arc<Queue>, writer: FileWriter) {
    let mut writer = Some(writer);
    let mut throttle = Throttle(None);
    while let Some(chunk) = queue.next_chunk(4096).await {
        let Some(mut w) = writer.take() else { break };
        let stats = queue.stats.clone();
        let n = chunk.len() as u64;
        let res = tokio::task::spawn_blocking(move || {
            if !w.disk_has_room() {
                let err = std::io::Error::other(format!(
                    "less than {} bytes free on the disk (event_log.files.min_free_disk); \
                     events are dropped until there is room",
                    w.options.min_free_disk_bytes
                ));
                return (w, Err(err), chunk.len() as u64);
            }
            let lines = encode_chunk(&chunk, &stats);
            let res = w.write_lines(lines.iter().map(|(_, l)| l.as_str()));
            if res.is_err() {
                // The file's end is unknown after a failed write; the next
                // chunk starts a new file.
                w.current = None;
            }
            (w, res, lines.len() as u64)
        })
        .await;
        match res {
            Ok((w, Ok(()), written)) => {
                queue.stats.written.fetch_add(written, Ordering::Relaxed);
                writer = Some(w);
            }
            Ok((w, Err(e), written)) => {
                queue.stats.errors.fetch_add(1, Ordering::Relaxed);
                queue.stats.dropped.fetch_add(written, Ordering::Relaxed);
                if throttle.ready() {
                    warn!(error = %e, dir = %w.options.dir.display(), "event log: write failed; events lost");
                }
                writer = Some(w);
            }
            Err(e) => {
                queue.stats.errors.fetch_add(1, Ordering::Relaxed);
                queue.stats.dropped.fetch_add(n, Ordering::Relaxed);
                warn!(error = %e, "event log: file writer failed; no more events go to files");
                return;
            }
        }
    }
    if let Some(mut w) = writer {
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = w.close() {
                warn!(error = %e, "event log: closing the current file failed");
            }
        })
        .await;
    }
}

// ---- PostgreSQL ----

struct PgTable {
    pool: sqlx::PgPool,
    /// `"schema"."table"` or `"table"`, validated and quoted.
    name: String,
}

fn quoted_table(o: &PostgresSinkOptions) -> String {
    match &o.schema {
        Some(s) => format!("\"{s}\".\"{}\"", o.table),
        None => format!("\"{}\"", o.table),
    }
}

async fn connect(o: &PostgresSinkOptions) -> Result<PgTable, sqlx::Error> {
    use sqlx::Executor;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&o.url)
        .await?;
    let name = quoted_table(o);
    if let Some(s) = &o.schema {
        pool.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE SCHEMA IF NOT EXISTS \"{s}\""
        ))))
        .await?;
    }
    pool.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE IF NOT EXISTS {name} (
            id BIGSERIAL PRIMARY KEY,
            pool_id TEXT NOT NULL,
            task_id TEXT NOT NULL,
            event_type TEXT NOT NULL,
            event_time TIMESTAMPTZ NOT NULL,
            event JSONB NOT NULL,
            logged_at TIMESTAMPTZ NOT NULL DEFAULT now()
        );
        CREATE INDEX IF NOT EXISTS \"{table}_pool_time\" ON {name} (pool_id, event_time);",
        table = o.table
    ))))
    .await?;
    Ok(PgTable { pool, name })
}

async fn insert(t: &PgTable, rows: &[(TaskEvent, String)]) -> Result<(), sqlx::Error> {
    let mut pools = Vec::with_capacity(rows.len());
    let mut tasks = Vec::with_capacity(rows.len());
    let mut types = Vec::with_capacity(rows.len());
    let mut micros = Vec::with_capacity(rows.len());
    let mut events = Vec::with_capacity(rows.len());
    for (ev, line) in rows {
        pools.push(ev.scheduler_id.clone());
        tasks.push(ev.task_id.clone());
        types.push(
            task_event::EventType::try_from(ev.event_type)
                .map(|t| t.as_str_name())
                .unwrap_or("UNSPECIFIED")
                .to_owned(),
        );
        let ts = ev.time.unwrap_or_default();
        micros.push(ts.seconds * 1_000_000 + i64::from(ts.nanos / 1000));
        events.push(line.clone());
    }
    // One statement per chunk: UNNEST turns the arrays back into rows.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {} (pool_id, task_id, event_type, event_time, event)
         SELECT p, t, ty, timestamptz 'epoch' + us * interval '1 microsecond', ev::jsonb
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[])
              AS r(p, t, ty, us, ev)",
        t.name
    )))
    .bind(pools)
    .bind(tasks)
    .bind(types)
    .bind(micros)
    .bind(events)
    .execute(&t.pool)
    .await?;
    Ok(())
}

async fn run_postgres_sink(queue: Arc<Queue>, options: PostgresSinkOptions) {
    let mut table: Option<PgTable> = None;
    let mut throttle = Throttle(None);
    while let Some(chunk) = queue.next_chunk(options.batch_rows.max(1)).await {
        let rows = encode_chunk(&chunk, &queue.stats);
        let mut backoff = Duration::from_millis(200);
        loop {
            let res = match &table {
                Some(t) => insert(t, &rows).await,
                None => match connect(&options).await {
                    Ok(t) => {
                        info!(table = %t.name, "event log: writing to PostgreSQL");
                        let r = insert(&t, &rows).await;
                        table = Some(t);
                        r
                    }
                    Err(e) => Err(e),
                },
            };
            match res {
                Ok(()) => {
                    queue
                        .stats
                        .written
                        .fetch_add(rows.len() as u64, Ordering::Relaxed);
                    break;
                }
                Err(e) => {
                    queue.stats.errors.fetch_add(1, Ordering::Relaxed);
                    if throttle.ready() {
                        warn!(error = %e, "event log: PostgreSQL write failed; retrying (the oldest events are dropped if the buffer fills)");
                    }
                    if queue.is_closed() {
                        // Shutting down: one try per chunk, then give up.
                        queue
                            .stats
                            .dropped
                            .fetch_add(rows.len() as u64, Ordering::Relaxed);
                        break;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = queue.wait_closed() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
    if let Some(t) = table {
        t.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn event(kind: EventKind) -> PoolEvent {
        let labels =
            |v: &[&str]| -> qscheduler_core::Labels { v.iter().map(|s| Arc::from(*s)).collect() };
        PoolEvent {
            event: qscheduler_core::Event {
                kind,
                task_id: Arc::from("t1"),
                time: qscheduler_core::Time::from_unix(1_893_456_005, 500_000_000).unwrap(),
                base_labels: labels(&["a:1", "b:2"]),
                provisionable_labels: labels(&["p:1"]),
                account_id: Arc::from("acc"),
                account_valid: false,
                account_balance: Balance([0.0; 5]),
                cost: Some(Balance([1.5, 0.0, 0.0, 0.0, 0.25])),
                bot_id: Some(Arc::from("bot")),
                bot_dimensions: labels(&["a:1"]),
            },
            is_callback: true,
        }
    }

    fn json(kind: EventKind) -> serde_json::Value {
        serde_json::from_str(&to_json(&task_event("pool", &event(kind))).unwrap()).unwrap()
    }

    #[test]
    fn every_kind_has_its_type_category_and_details() {
        let v = json(EventKind::Reprioritized {
            old_priority: 1,
            new_priority: 0,
        });
        assert_eq!(
            v,
            serde_json::json!({
                "event_type": "QSCHEDULER_REPRIORITIZED",
                "scheduler_id": "pool",
                "task_id": "t1",
                "time": "2030-01-01T00:00:05.500Z",
                "base_labels": ["a:1", "b:2"],
                "provisionable_labels": ["p:1"],
                "account_id": "acc",
                "account_valid": false,
                "account_balance": [0.0, 0.0, 0.0, 0.0, 0.0],
                "cost": [1.5, 0.0, 0.0, 0.0, 0.25],
                "bot_id": "bot",
                "bot_dimensions": ["a:1"],
                "category": "CATEGORY_QSCHEDULER",
                "is_callback": true,
                "reprioritized_details": {"old_priority": 1, "new_priority": 0},
            })
        );
        let v = json(EventKind::Unassigned);
        assert_eq!(v["event_type"], "QSCHEDULER_UNASSIGNED");
        assert_eq!(v["unassigned_details"], serde_json::json!({}));
        let v = json(EventKind::Completed {
            reason: CompletedReason::InconsistentTaskForBot,
            other_task: Some(Arc::from("t2")),
            other_bot: None,
        });
        assert_eq!(v["category"], "CATEGORY_SWARMING");
        assert_eq!(
            v["completed_details"],
            serde_json::json!({"reason": "INCONSISTENT_TASK_FOR_BOT", "other_task": "t2", "other_bot": ""})
        );
        let v = json(EventKind::Completed {
            reason: CompletedReason::InconsistentBotForTask,
            other_task: None,
            other_bot: Some(Arc::from("b2")),
        });
        assert_eq!(
            v["completed_details"]["reason"],
            "INCONSISTENT_BOT_FOR_TASK"
        );
        assert_eq!(v["completed_details"]["other_bot"], "b2");
        let v = json(EventKind::Completed {
            reason: CompletedReason::IdleTaskAbsent,
            other_task: None,
            other_bot: None,
        });
        assert_eq!(v["completed_details"]["reason"], "IDLE_TASK_ABSENT");
    }

    /// The descriptor-driven proto3 JSON encoding: the oracle of
    /// [`to_json`].
    fn reflect_json(event: &TaskEvent) -> serde_json::Value {
        use prost::Message;
        use prost_reflect::{DynamicMessage, SerializeOptions};
        let options = SerializeOptions::new()
            .use_proto_field_name(true)
            .skip_default_fields(false);
        let desc = qscheduler_wire::descriptor_pool()
            .get_message_by_name("metrics.TaskEvent")
            .unwrap();
        let msg = DynamicMessage::decode(desc, event.encode_to_vec().as_slice()).unwrap();
        let mut out = serde_json::Serializer::new(Vec::new());
        msg.serialize_with_options(&mut out, &options).unwrap();
        serde_json::from_slice(&out.into_inner()).unwrap()
    }

    fn arb_string() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            "[a-z0-9:_-]{1,12}",
            any::<String>(),
            Just("quote\" back\\ nl\n tab\t ctl\u{1} del\u{7f} é 😀".to_string()),
        ]
    }

    fn arb_floats() -> impl Strategy<Value = Vec<f32>> {
        proptest::collection::vec(
            prop_oneof![
                any::<f32>(),
                Just(0.0f32),
                Just(-0.0f32),
                Just(0.1f32),
                Just(f32::NAN),
                Just(f32::INFINITY),
                Just(f32::NEG_INFINITY),
                Just(f32::MAX),
                Just(f32::MIN_POSITIVE),
                (-1_000_000i32..1_000_000).prop_map(|i| i as f32 / 8.0),
            ],
            0..6,
        )
    }

    fn arb_details() -> impl Strategy<Value = Option<Details>> {
        use completed_details::Reason;
        prop_oneof![
            Just(None),
            proptest::collection::vec(arb_string(), 0..3)
                .prop_map(|tags| Some(Details::EnqueuedDetails(EnqueuedDetails { tags }))),
            (
                any::<bool>(),
                -1i32..6,
                any::<bool>(),
                arb_floats(),
                arb_string()
            )
                .prop_map(
                    |(
                        provision_required,
                        priority,
                        preempting,
                        preemption_cost,
                        preempted_task_id,
                    )| {
                        Some(Details::AssignedDetails(AssignedDetails {
                            provision_required,
                            priority,
                            preempting,
                            preemption_cost,
                            preempted_task_id,
                        }))
                    }
                ),
            (arb_string(), arb_string(), any::<i32>(), any::<i32>()).prop_map(|(a, t, p, pp)| {
                Some(Details::PreemptedDetails(PreemptedDetails {
                    preempting_account_id: a,
                    preempting_task_id: t,
                    priority: p,
                    preempting_priority: pp,
                }))
            }),
            (any::<i32>(), any::<i32>()).prop_map(|(o, n)| {
                Some(Details::ReprioritizedDetails(ReprioritizedDetails {
                    old_priority: o,
                    new_priority: n,
                }))
            }),
            (0i32..6, arb_string(), arb_string()).prop_map(|(r, t, b)| {
                Some(Details::CompletedDetails(CompletedDetails {
                    reason: Reason::try_from(r).unwrap() as i32,
                    other_task: t,
                    other_bot: b,
                }))
            }),
            Just(Some(Details::UnassignedDetails(UnassignedDetails {}))),
        ]
    }

    fn arb_event() -> impl Strategy<Value = TaskEvent> {
        let types = [
            EventType::Unspecified,
            EventType::SwarmingEnqueued,
            EventType::SwarmingCompleted,
            EventType::QschedulerAssigned,
            EventType::QschedulerPreempted,
            EventType::QschedulerReprioritized,
            EventType::QschedulerUnassigned,
        ];
        let categories = [
            EventCategory::CategoryUnspecified,
            EventCategory::CategorySwarming,
            EventCategory::CategoryQscheduler,
        ];
        let time = (
            -62_135_596_800i64..=253_402_300_799,
            prop_oneof![
                Just(0i32),
                (0i32..1000).prop_map(|m| m * 1_000_000),
                (0i32..1_000_000).prop_map(|u| u * 1000),
                0i32..1_000_000_000,
            ],
        )
            .prop_map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos });
        (
            (
                proptest::sample::select(types.to_vec()),
                arb_string(),
                arb_string(),
                time,
                proptest::collection::vec(arb_string(), 0..4),
                proptest::collection::vec(arb_string(), 0..3),
                arb_string(),
                any::<bool>(),
            ),
            (
                arb_floats(),
                arb_floats(),
                arb_string(),
                proptest::collection::vec(arb_string(), 0..4),
                proptest::sample::select(categories.to_vec()),
                any::<bool>(),
                arb_details(),
            ),
        )
            .prop_map(
                |(
                    (event_type, scheduler_id, task_id, time, base, prov, account_id, valid),
                    (balance, cost, bot_id, dims, category, is_callback, details),
                )| TaskEvent {
                    event_type: event_type as i32,
                    scheduler_id,
                    task_id,
                    time: Some(time),
                    base_labels: base,
                    provisionable_labels: prov,
                    account_id,
                    account_valid: valid,
                    account_balance: balance,
                    cost,
                    bot_id,
                    bot_dimensions: dims,
                    category: category as i32,
                    is_callback,
                    details,
                },
            )
    }

    /// Same JSON value as the descriptor-driven encoding, except that NaN
    /// compares by its text (both give the string "NaN").
    fn same(a: &serde_json::Value, b: &serde_json::Value) -> bool {
        use serde_json::Value;
        match (a, b) {
            (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
            (Value::Array(x), Value::Array(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
            }
            (Value::Object(x), Value::Object(y)) => {
                x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
            }
            _ => a == b,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn hand_written_json_equals_the_descriptor_encoding(event in arb_event()) {
            let line = to_json(&event).unwrap();
            prop_assert!(!line.contains('\n'));
            let ours: serde_json::Value = serde_json::from_str(&line).unwrap();
            let theirs = reflect_json(&event);
            prop_assert!(same(&ours, &theirs), "ours:   {ours}\ntheirs: {theirs}");
            // Floats read back as the very same f32.
            let back = ours["account_balance"].as_array().unwrap();
            for (f, v) in event.account_balance.iter().zip(back) {
                if f.is_finite() {
                    prop_assert_eq!(v.as_f64().unwrap() as f32, *f);
                }
            }
        }
    }

    #[test]
    fn a_full_queue_drops_its_oldest_events() {
        let stats = SinkStats::new("test");
        let q = Queue::new(3, stats.clone());
        let pool: Arc<str> = Arc::from("p");
        let events: Vec<PoolEvent> = (0..5)
            .map(|i| {
                let mut e = event(EventKind::Unassigned);
                e.event.task_id = Arc::from(format!("t{i}"));
                e
            })
            .collect();
        q.push(&pool, &events[..2]);
        q.push(&pool, &events[2..]);
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 2);
        assert_eq!(stats.queued.load(Ordering::Relaxed), 3);
        let ids: Vec<String> = q
            .lock()
            .iter()
            .map(|(_, e)| e.event.task_id.to_string())
            .collect();
        assert_eq!(ids, ["t2", "t3", "t4"]);
    }

    #[test]
    fn stamps_are_utc_civil_times() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_893_456_005);
        assert_eq!(utc_stamp(t), "20300101T000005Z");
        assert_eq!(utc_stamp(SystemTime::UNIX_EPOCH), "19700101T000000Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(utc_stamp(leap), "20000229T000000Z");
    }

    #[test]
    fn files_stay_within_their_disk_budget() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = FileSinkOptions::new(dir.path().to_owned());
        options.max_file_bytes = 25;
        options.max_files = 100;
        // Room for the current file (counted as full) and two more.
        options.max_total_bytes = 3 * 15 + 25;
        let mut w = FileWriter::open(options).unwrap();
        let lines: Vec<String> = (0..10).map(|i| format!("line number {i:02}")).collect();
        w.write_lines(lines.iter().map(String::as_str)).unwrap();
        w.close().unwrap();
        let files = list_files(dir.path()).unwrap();
        let total: u64 = files
            .iter()
            .map(|(_, p)| std::fs::metadata(p).unwrap().len())
            .sum();
        assert!(
            total <= 3 * 15 + 25,
            "{total} bytes in {} files",
            files.len()
        );
        assert_eq!(files.last().unwrap().0, 10, "the newest file is kept");
    }

    #[tokio::test]
    async fn a_disk_without_room_drops_events_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = FileSinkOptions::new(dir.path().to_owned());
        // No disk has this much free.
        options.min_free_disk_bytes = u64::MAX;
        let stats = SinkStats::new("files");
        let queue = Queue::new(100, stats.clone());
        let writer = FileWriter::open(options).unwrap();
        let sink = tokio::spawn(run_file_sink(queue.clone(), writer));
        let pool: Arc<str> = Arc::from("p");
        queue.push(
            &pool,
            &[event(EventKind::Enqueued {
                tags: Arc::from(Vec::<String>::new()),
            })],
        );
        queue.closed.send_replace(true);
        sink.await.unwrap();
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 1);
        assert_eq!(stats.written.load(Ordering::Relaxed), 0);
        let files = list_files(dir.path()).unwrap();
        assert!(files.is_empty(), "{files:?}");
    }

    #[test]
    fn files_rotate_by_size_and_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = FileSinkOptions::new(dir.path().to_owned());
        options.max_file_bytes = 25;
        options.max_files = 3;
        let mut w = FileWriter::open(options.clone()).unwrap();
        let lines: Vec<String> = (0..10).map(|i| format!("line number {i:02}")).collect();
        w.write_lines(lines.iter().map(String::as_str)).unwrap();
        w.close().unwrap();
        // 15 bytes per line: one line per file, only the last three kept.
        let files = list_files(dir.path()).unwrap();
        assert_eq!(
            files.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            vec![8, 9, 10]
        );
        let last = std::fs::read_to_string(&files[2].1).unwrap();
        assert_eq!(last, "line number 09\n");
        // A restart continues the sequence.
        let mut w = FileWriter::open(options).unwrap();
        w.write_lines(["again"].into_iter()).unwrap();
        w.close().unwrap();
        let files = list_files(dir.path()).unwrap();
        assert_eq!(files.last().unwrap().0, 11);
        assert_eq!(files.len(), 3);
    }
}
