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
//!
//! The parts: [`EventLog`] (here) is the observer that fans events out to
//! one bounded queue per sink (`queue.rs`); `json.rs` turns core events
//! into `TaskEvent`s and JSON lines; `file.rs` is the rotated file sink and
//! `postgres.rs` the PostgreSQL one.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qscheduler_wire::metrics::TaskEvent;
use tracing::warn;

use crate::pool::{CommitInfo, Observer};

mod file;
mod json;
mod postgres;
mod queue;

pub use file::FileSinkOptions;
pub use json::{EncodeError, task_event, to_json};
pub use postgres::PostgresSinkOptions;

use queue::{Item, Queue};

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
            let writer =
                file::FileWriter::open(f.clone()).map_err(|source| EventLogError::Dir {
                    dir: f.dir.clone(),
                    source,
                })?;
            let q = Queue::new(options.buffer_events, SinkStats::new("files"));
            tasks.push(tokio::spawn(file::run_file_sink(q.clone(), writer)));
            queues.push(q);
        }
        if let Some(p) = &options.postgres {
            let q = Queue::new(options.buffer_events, SinkStats::new("postgres"));
            tasks.push(tokio::spawn(postgres::run_postgres_sink(
                q.clone(),
                p.clone(),
            )));
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

/// A core event of every field, for the tests of the parts.
#[cfg(test)]
fn test_event(kind: qscheduler_core::EventKind) -> qscheduler_core::PoolEvent {
    let labels =
        |v: &[&str]| -> qscheduler_core::Labels { v.iter().map(|s| Arc::from(*s)).collect() };
    qscheduler_core::PoolEvent {
        event: qscheduler_core::Event {
            kind,
            task_id: Arc::from("t1"),
            time: qscheduler_core::Time::from_unix(1_893_456_005, 500_000_000).unwrap(),
            base_labels: labels(&["a:1", "b:2"]),
            provisionable_labels: labels(&["p:1"]),
            account_id: Arc::from("acc"),
            account_valid: false,
            account_balance: qscheduler_core::Balance([0.0; 5]),
            cost: Some(qscheduler_core::Balance([1.5, 0.0, 0.0, 0.0, 0.25])),
            bot_id: Some(Arc::from("bot")),
            bot_dimensions: labels(&["a:1"]),
        },
        is_callback: true,
    }
}
