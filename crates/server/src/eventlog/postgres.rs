//! The PostgreSQL sink: rows of one table (created if missing), one
//! INSERT per chunk of events, retried with backoff while the database is
//! away; the queue in front of it drops the oldest events meanwhile.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use qscheduler_wire::metrics::{TaskEvent, task_event};
use tracing::{info, warn};

use super::{Queue, Throttle, encode_chunk};

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

pub(super) async fn run_postgres_sink(queue: Arc<Queue>, options: PostgresSinkOptions) {
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
