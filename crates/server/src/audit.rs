//! The audit log: one JSON line per administrative call (QSchedulerAdmin),
//! whoever made it and whatever came of it — time, principal, method,
//! pool, a summary of the request and the result code — in files of their
//! own (`audit-<unix nanos>.jsonl` under the audit directory, a new file
//! past a size, the oldest deleted past a count), the same record as a row
//! of a PostgreSQL table when the server has a PostgreSQL database (its
//! event table's, else its store's), and the counter
//! `qscheduler_admin_calls_total{method,code}`.
//!
//! Three places know a part of a record, so they share an [`AuditSlot`]
//! through the request's extensions: the RPC layer creates it and writes
//! the record when the call ends (it knows the result code, for gRPC from
//! the trailers), the auth layer fills in the principal, and the handler
//! the pool and the summary once it has validated them ([`note`]).
//! Records are written to the files synchronously: administrative calls
//! are rare, and a record must not be lost to a queue. The database is
//! written by a task of its own (the call that ends cannot wait on the
//! network); it keeps retrying while the database is away, holding up to
//! [`DB_QUEUE`] records, and the server flushes it when it stops. The
//! files stay the record of last resort. A record holds no credential:
//! the principal is a name from the configuration, and no request of
//! QSchedulerAdmin carries a token.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::secret::RedactedUrl;

/// Where the audit records go: files (how many), and a table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditOptions {
    /// Their directory (created if missing).
    pub dir: PathBuf,
    /// A new file once the current one reaches this size.
    pub max_file_bytes: u64,
    /// Files kept, the current one included.
    pub max_files: usize,
    /// Also a table in this PostgreSQL database.
    pub postgres: Option<AuditPostgres>,
}

impl AuditOptions {
    /// The defaults, in `dir`, files only.
    pub fn new(dir: PathBuf) -> Self {
        AuditOptions {
            dir,
            max_file_bytes: 64 << 20,
            max_files: 16,
            postgres: None,
        }
    }
}

/// The table of audit records in a PostgreSQL database.
#[derive(Clone, PartialEq, Eq)]
pub struct AuditPostgres {
    /// The database.
    pub url: String,
    /// Schema of the table (created if missing); `None`: the connection's
    /// `search_path`. An identifier (`[a-z_][a-z0-9_]*`).
    pub schema: Option<String>,
    /// The table (created if missing). An identifier.
    pub table: String,
}

/// The table's name.
pub const AUDIT_TABLE: &str = "audit_log";

impl AuditPostgres {
    /// Table [`AUDIT_TABLE`] in the database at `url`.
    pub fn new(url: String, schema: Option<String>) -> Self {
        AuditPostgres {
            url,
            schema,
            table: AUDIT_TABLE.to_owned(),
        }
    }
}

impl std::fmt::Debug for AuditPostgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditPostgres")
            .field("url", &RedactedUrl(&self.url))
            .field("schema", &self.schema)
            .field("table", &self.table)
            .finish()
    }
}

/// Records waiting for the database at most; past it a record is only in
/// the files (and an error is logged).
pub const DB_QUEUE: usize = 10_000;

/// Labels of `qscheduler_admin_calls_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdminCallLabels {
    /// The QSchedulerAdmin method (one of seven).
    pub method: String,
    /// The gRPC status code name.
    pub code: &'static str,
}

/// The counter family.
pub type AdminCalls = Family<AdminCallLabels, Counter>;

/// What the handler and the auth layer add to a call's record.
#[derive(Clone, Debug, Default)]
pub struct AuditNote {
    /// `kind:name` of the caller, when known.
    pub principal: Option<String>,
    /// The pool the call named.
    pub pool: Option<String>,
    /// A short description of the request.
    pub summary: Option<String>,
}

/// A call's note, shared through the request's extensions.
#[derive(Clone, Debug, Default)]
pub struct AuditSlot(pub Arc<Mutex<AuditNote>>);

impl AuditSlot {
    /// Changes the note.
    pub fn update(&self, f: impl FnOnce(&mut AuditNote)) {
        f(&mut self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner));
    }
}

/// Notes the pool and a summary of an administrative call (no-op when the
/// call is not audited).
pub fn note<T: std::fmt::Debug>(request: &tonic::Request<T>, pool: &str) {
    if let Some(slot) = request.extensions().get::<AuditSlot>() {
        let mut summary = format!("{:?}", request.get_ref());
        if summary.len() > 1024 {
            let mut cut = 1024;
            while !summary.is_char_boundary(cut) {
                cut -= 1;
            }
            summary.truncate(cut);
            summary.push('…');
        }
        slot.update(|n| {
            n.pool = Some(pool.chars().take(256).collect());
            n.summary = Some(summary);
        });
    }
}

struct Current {
    file: File,
    bytes: u64,
}

/// One record: the JSON line's fields, in order.
#[derive(Clone, Debug, Serialize)]
struct Record {
    time: String,
    principal: String,
    method: String,
    pool: Option<String>,
    request: Option<String>,
    code: &'static str,
    /// `time` for the database.
    #[serde(skip)]
    micros: i64,
}

/// The database's writer task and the way to it.
struct Db {
    tx: Mutex<Option<mpsc::Sender<Record>>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// The sink.
pub struct AuditLog {
    options: Option<AuditOptions>,
    current: Mutex<Option<Current>>,
    calls: Option<AdminCalls>,
    db: Option<Db>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

impl AuditLog {
    /// Writes into `options.dir` (none: only counts), and into
    /// `options.postgres` if set, counting into `calls`. The directory is
    /// created now, so that a server that cannot keep an audit log does
    /// not start; the database is connected to by the writer task (started
    /// now, so this needs a Tokio runtime when `postgres` is set), which
    /// keeps trying.
    pub fn new(
        options: Option<AuditOptions>,
        calls: Option<AdminCalls>,
    ) -> std::io::Result<Arc<AuditLog>> {
        if let Some(o) = &options {
            std::fs::create_dir_all(&o.dir)?;
        }
        let db = match options.as_ref().and_then(|o| o.postgres.clone()) {
            Some(pg) => {
                let rt = tokio::runtime::Handle::try_current().map_err(|_| {
                    std::io::Error::other("the PostgreSQL audit table needs a Tokio runtime")
                })?;
                let (tx, rx) = mpsc::channel(DB_QUEUE);
                let task = rt.spawn(run_db(rx, pg));
                Some(Db {
                    tx: Mutex::new(Some(tx)),
                    task: Mutex::new(Some(task)),
                })
            }
            None => None,
        };
        Ok(Arc::new(AuditLog {
            options,
            current: Mutex::new(None),
            calls,
            db,
        }))
    }

    /// Writes what waits for the database, within `timeout`; records that
    /// come later go to the files only.
    pub async fn shutdown(&self, timeout: Duration) {
        let Some(db) = &self.db else {
            return;
        };
        // Closing the channel lets the task end once it has written the rest.
        drop(lock(&db.tx).take());
        let Some(mut task) = lock(&db.task).take() else {
            return;
        };
        if tokio::time::timeout(timeout, &mut task).await.is_err() {
            task.abort();
            tracing::error!(
                "audit log: PostgreSQL did not take the last records in time; they are in the \
                 files only"
            );
        }
    }

    /// Records one call that ended with `code`.
    pub fn record(&self, method: &str, code: &'static str, slot: &AuditSlot) {
        if let Some(c) = &self.calls {
            c.get_or_create(&AdminCallLabels {
                method: method.to_owned(),
                code,
            })
            .inc();
        }
        let Some(options) = &self.options else {
            return;
        };
        let note = lock(&slot.0).clone();
        let now = SystemTime::now();
        let record = Record {
            time: humantime_rfc3339(now),
            principal: note.principal.unwrap_or_else(|| "anonymous".to_owned()),
            method: method.to_owned(),
            pool: note.pool,
            request: note.summary,
            code,
            micros: now
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX)),
        };
        match serde_json::to_string(&record) {
            Ok(line) => {
                if let Err(e) = self.write(options, &format!("{line}\n")) {
                    tracing::error!(error = %e, dir = %options.dir.display(), "cannot write the audit log");
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot encode an audit record"),
        }
        if let Some(db) = &self.db {
            let sent = match lock(&db.tx).as_ref() {
                Some(tx) => tx.try_send(record).map_err(|e| match e {
                    mpsc::error::TrySendError::Full(_) => "its queue is full",
                    mpsc::error::TrySendError::Closed(_) => "its writer has stopped",
                }),
                None => Err("the server is stopping"),
            };
            if let Err(why) = sent {
                tracing::error!(
                    method,
                    code,
                    "audit log: a record is not going to PostgreSQL ({why}); it is in the files"
                );
            }
        }
    }

    fn write(&self, options: &AuditOptions, line: &str) -> std::io::Result<()> {
        let mut current = lock(&self.current);
        if current
            .as_ref()
            .is_none_or(|c| c.bytes + line.len() as u64 > options.max_file_bytes)
        {
            let path = options.dir.join(format!("audit-{}.jsonl", unix_nanos()));
            let file = OpenOptions::new().create(true).append(true).open(&path)?;
            *current = Some(Current { file, bytes: 0 });
            prune(&options.dir, options.max_files);
        }
        if let Some(c) = current.as_mut() {
            c.file.write_all(line.as_bytes())?;
            c.bytes += line.len() as u64;
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

// ---- PostgreSQL ----

/// Most records per INSERT.
const DB_BATCH: usize = 100;

struct Table {
    pool: sqlx::PgPool,
    /// `"schema"."table"` or `"table"`.
    name: String,
}

async fn connect(o: &AuditPostgres) -> Result<Table, sqlx::Error> {
    use sqlx::Executor;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&o.url)
        .await?;
    // Schema and table are identifiers checked by the configuration.
    let name = match &o.schema {
        Some(s) => {
            pool.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "CREATE SCHEMA IF NOT EXISTS \"{s}\""
            ))))
            .await?;
            format!("\"{s}\".\"{}\"", o.table)
        }
        None => format!("\"{}\"", o.table),
    };
    pool.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE IF NOT EXISTS {name} (
            id BIGSERIAL PRIMARY KEY,
            \"time\" TIMESTAMPTZ NOT NULL,
            principal TEXT NOT NULL,
            method TEXT NOT NULL,
            pool TEXT,
            request TEXT,
            code TEXT NOT NULL
        );
        CREATE INDEX IF NOT EXISTS \"{table}_time\" ON {name} (\"time\");",
        table = o.table
    ))))
    .await?;
    Ok(Table { pool, name })
}

async fn insert(t: &Table, records: &[Record]) -> Result<(), sqlx::Error> {
    let col = |f: fn(&Record) -> Option<String>| records.iter().map(f).collect::<Vec<_>>();
    let micros: Vec<i64> = records.iter().map(|r| r.micros).collect();
    // One statement per batch: UNNEST turns the arrays back into rows.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {} (\"time\", principal, method, pool, request, code)
         SELECT timestamptz 'epoch' + us * interval '1 microsecond', pr, m, p, rq, c
         FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
              AS r(us, pr, m, p, rq, c)",
        t.name
    )))
    .bind(micros)
    .bind(col(|r| Some(r.principal.clone())))
    .bind(col(|r| Some(r.method.clone())))
    .bind(col(|r| r.pool.clone()))
    .bind(col(|r| r.request.clone()))
    .bind(col(|r| Some(r.code.to_owned())))
    .execute(&t.pool)
    .await?;
    Ok(())
}

/// Writes the records in order, reconnecting and retrying (200 ms,
/// doubling to 30 s) while the database fails; once the channel is closed
/// (the server stops) a failing batch is given up after one more try.
async fn run_db(mut rx: mpsc::Receiver<Record>, options: AuditPostgres) {
    let mut table: Option<Table> = None;
    let mut batch = Vec::with_capacity(DB_BATCH);
    while rx.recv_many(&mut batch, DB_BATCH).await > 0 {
        let mut backoff = Duration::from_millis(200);
        loop {
            if table.is_none() {
                match connect(&options).await {
                    Ok(t) => {
                        tracing::info!(table = %t.name, "audit log: writing to PostgreSQL");
                        table = Some(t);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "audit log: cannot reach PostgreSQL; retrying")
                    }
                }
            }
            if let Some(t) = &table {
                match insert(t, &batch).await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "audit log: PostgreSQL write failed; retrying");
                        // A new connection (and table) next time: the
                        // database may have been restarted or the table
                        // dropped.
                        if let Some(t) = table.take() {
                            t.pool.close().await;
                        }
                    }
                }
            }
            if rx.is_closed() && backoff > Duration::from_millis(200) {
                tracing::error!(
                    records = batch.len(),
                    "audit log: giving up on PostgreSQL while stopping; the records are in the \
                     files"
                );
                break;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
        batch.clear();
    }
    if let Some(t) = table {
        t.pool.close().await;
    }
}

/// Deletes the oldest audit files beyond `keep`.
fn prune(dir: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("audit-") && n.ends_with(".jsonl"))
        })
        .collect();
    // Names hold the creation time in nanoseconds: all the same width for
    // centuries, so they sort by age.
    files.sort();
    let excess = files.len().saturating_sub(keep.max(1));
    for f in files.into_iter().take(excess) {
        let _ = std::fs::remove_file(f);
    }
}

/// RFC 3339 UTC with milliseconds, from the civil-from-days algorithm.
fn humantime_rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let (year, month, day, rem) =
        qscheduler_core::time::civil_from_unix(d.as_secs().try_into().unwrap_or(i64::MAX));
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_764_931_200_123);
        assert_eq!(humantime_rfc3339(t), "2025-12-05T10:40:00.123Z");
        assert_eq!(
            humantime_rfc3339(SystemTime::UNIX_EPOCH),
            "1970-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn files_rotate_and_the_oldest_go() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::new(
            Some(AuditOptions {
                dir: dir.path().to_owned(),
                max_file_bytes: 200,
                max_files: 3,
                postgres: None,
            }),
            None,
        )
        .unwrap();
        let slot = AuditSlot::default();
        slot.update(|n| n.pool = Some("p".into()));
        for _ in 0..20 {
            log.record("Wipe", "OK", &slot);
        }
        let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(files.len(), 3);
        for f in files {
            let text = std::fs::read_to_string(f.unwrap().path()).unwrap();
            for line in text.lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                assert_eq!(v["method"], "Wipe");
                assert_eq!(v["principal"], "anonymous");
                assert_eq!(v["pool"], "p");
            }
        }
    }
}
