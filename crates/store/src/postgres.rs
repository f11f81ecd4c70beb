//! The PostgreSQL backend: the same log and snapshots in tables shared by several replicas, with
//! one writer per pool enforced by the database.
//!
//! # Schema (created by [`migrate`], run by [`PgStore::open`]; idempotent and safe to run from
//! several replicas at once: it holds a transaction-scoped advisory lock)
//!
//! ```sql
//! qs_pool     (pool_id text PK, created_at, lease_holder text NULL, lease_address text NULL,
//!              lease_generation bigint, lease_expires_at timestamptz NULL)
//! qs_log      (pool_id FK→qs_pool ON DELETE CASCADE, seq bigint, generation bigint,
//!              crc integer, record bytea, PK (pool_id, seq))
//! qs_snapshot (pool_id FK→qs_pool ON DELETE CASCADE, seq bigint, generation bigint,
//!              crc integer, size bigint, bytes bytea STORAGE EXTERNAL, created_at,
//!              extra bytea NULL (framed extra image, migration 2), PK (pool_id, seq))
//! qs_replica  (replica_id text PK, address text, started_at, heartbeat_at, expires_at)
//! qs_schema_version (version integer PK, applied_at)
//! ```
//!
//! `crc` is the CRC-32C of the seq and the bytes, checked on load, so damage (or a bug that moves
//! rows) is reported as [`Error::Corrupt`] instead of being replayed. Snapshot bytes are stored
//! uncompressed by PostgreSQL (`STORAGE EXTERNAL`): compressing is the caller's choice, and pglz
//! on tens of MB costs the database CPU for little gain on already-compact data.
//!
//! # Lease protocol
//!
//! The lease lives in the pool's `qs_pool` row; all times are the database's `now()`, so replica
//! clocks do not matter.
//!
//! * **Acquire** ([`PgStore::open_pool`]): one `UPDATE … SET lease_holder = me,
//!   lease_generation = lease_generation + 1, lease_expires_at = now() + ttl WHERE pool_id = $1 AND
//!   (lease_holder IS NULL OR lease_expires_at <= now() OR lease_holder = me) RETURNING
//!   lease_generation`. The new generation is the handle's **fencing token**. Re-acquiring as the
//!   same replica id also bumps it, which fences any older handle of a previous incarnation.
//! * **Fencing**: every append and snapshot is one statement
//!   `WITH lease AS (SELECT … FROM qs_pool WHERE pool_id = $1 AND lease_holder = me AND
//!   lease_generation = token FOR SHARE) INSERT … SELECT … FROM lease, …`. If the token is stale
//!   nothing is inserted (`rows_affected = 0`) and the handle gets [`Error::Fenced`]. The
//!   `FOR SHARE` row lock is what makes this airtight: a takeover's `UPDATE` waits for an
//!   in-flight append to commit (and then the new owner's recovery reads it), and an append that
//!   starts after a takeover re-checks the updated row and finds the new generation. Appends of one
//!   handle share the lock (`FOR SHARE` does not conflict with itself), so a snapshot upload never
//!   blocks appends; it does delay a renewal or a takeover of that pool until it commits.
//! * **Renewal**: one background task per store, every `lease_renew_every` (default TTL/3), renews
//!   all leases this replica holds in one `UPDATE … FROM UNNEST(pool_ids, generations)` and
//!   refreshes its registry row. A held pool missing from the result has lost its lease: its
//!   handle switches to [`LeaseState::Lost`]. A lease that expired but was not taken over is
//!   renewed (the generation still matches, so nobody else can have written).
//! * **Self-fencing**: a handle also switches to [`LeaseState::Lost`] on its own once the lease
//!   may have expired without a successful renewal (database unreachable, replica partitioned):
//!   each acquisition or renewal is known to last at least until the instant its statement was
//!   *sent* plus the TTL, since the database computes the expiry later than that. Writes are
//!   fenced by the database either way; this is what stops a cut-off replica from serving reads
//!   of a pool that another replica may already have taken over. The check runs every renewal
//!   period even while a renewal round hangs.
//! * **Release** (handle release, pool delete, [`PgStore::shutdown`]): clears the holder, so other
//!   replicas can take the pool at once. Deleting the pool row fences its writer too.
//! * **Registry**: `qs_replica` rows with a heartbeat expiry. [`PgStore::owner_of`] reads the
//!   holder and its advertised address from the pool row, only while the lease is live.
//!
//! Failover time is about the TTL (5 s by default) plus the new owner's snapshot load and replay.
//! Advisory locks and LISTEN/NOTIFY are not used for correctness, so PostgreSQL-compatible
//! services should work; only vanilla PostgreSQL 15 is tested.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Instant;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, Executor, Row};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::db;
use crate::{
    AppendStats, Error, LeaseState, Owner, Recovered, RecoveryNote, Replica, Result, SnapshotStats,
    StoreOptions, check_pool_id, check_records, checksum,
};

/// Schema migrations, applied in order; each runs once per schema, in one transaction.
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        r#"
CREATE TABLE qs_pool (
    pool_id          text PRIMARY KEY,
    created_at       timestamptz NOT NULL DEFAULT now(),
    lease_holder     text,
    lease_address    text,
    lease_generation bigint NOT NULL DEFAULT 0,
    lease_expires_at timestamptz
);
CREATE TABLE qs_log (
    pool_id    text NOT NULL REFERENCES qs_pool (pool_id) ON DELETE CASCADE,
    seq        bigint NOT NULL,
    generation bigint NOT NULL,
    crc        integer NOT NULL,
    record     bytea NOT NULL,
    PRIMARY KEY (pool_id, seq)
);
CREATE TABLE qs_snapshot (
    pool_id    text NOT NULL REFERENCES qs_pool (pool_id) ON DELETE CASCADE,
    seq        bigint NOT NULL,
    generation bigint NOT NULL,
    crc        integer NOT NULL,
    size       bigint NOT NULL,
    bytes      bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pool_id, seq)
);
ALTER TABLE qs_snapshot ALTER COLUMN bytes SET STORAGE EXTERNAL;
CREATE TABLE qs_replica (
    replica_id   text PRIMARY KEY,
    address      text NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL
);
"#,
    ),
    // The extra image of derived state stored with a snapshot; additive, so a replica of the
    // previous release keeps reading the table.
    (2, "ALTER TABLE qs_snapshot ADD COLUMN extra bytea;"),
];

/// Serialises concurrent migrations of replicas starting together ("qschstor").
const MIGRATION_LOCK: i64 = 0x7173_6368_7374_6f72;

const APPEND: &str = "
WITH lease AS (
    SELECT pool_id FROM qs_pool
    WHERE pool_id = $1 AND lease_holder = $2 AND lease_generation = $3
    FOR SHARE
)
INSERT INTO qs_log (pool_id, seq, generation, crc, record)
SELECT lease.pool_id, r.seq, $3, r.crc, r.record
FROM lease, UNNEST($4::bigint[], $5::integer[], $6::bytea[]) AS r (seq, crc, record)";

const INSERT_SNAPSHOT: &str = "
WITH lease AS (
    SELECT pool_id FROM qs_pool
    WHERE pool_id = $1 AND lease_holder = $2 AND lease_generation = $3
    FOR SHARE
)
INSERT INTO qs_snapshot (pool_id, seq, generation, crc, size, bytes, extra)
SELECT lease.pool_id, $4, $3, $5, $6, $7, $8 FROM lease
ON CONFLICT (pool_id, seq) DO UPDATE
SET generation = EXCLUDED.generation, crc = EXCLUDED.crc, size = EXCLUDED.size,
    bytes = EXCLUDED.bytes, extra = EXCLUDED.extra, created_at = now()";

const CHECK_LEASE: &str = "
SELECT 1 FROM qs_pool
WHERE pool_id = $1 AND lease_holder = $2 AND lease_generation = $3
FOR SHARE";

const ACQUIRE: &str = "
UPDATE qs_pool
SET lease_holder = $2, lease_address = $3, lease_generation = lease_generation + 1,
    lease_expires_at = now() + $4 * interval '1 millisecond'
WHERE pool_id = $1
  AND (lease_holder IS NULL OR lease_expires_at IS NULL OR lease_expires_at <= now()
       OR lease_holder = $2)
RETURNING lease_generation";

const RENEW: &str = "
UPDATE qs_pool AS p
SET lease_expires_at = now() + $3 * interval '1 millisecond'
FROM UNNEST($1::text[], $2::bigint[]) AS h (pool_id, generation)
WHERE p.pool_id = h.pool_id AND p.lease_generation = h.generation AND p.lease_holder = $4
RETURNING p.pool_id";

const RELEASE: &str = "
UPDATE qs_pool AS p
SET lease_holder = NULL, lease_address = NULL, lease_expires_at = NULL
FROM UNNEST($1::text[], $2::bigint[]) AS h (pool_id, generation)
WHERE p.pool_id = h.pool_id AND p.lease_generation = h.generation AND p.lease_holder = $3";

const HEARTBEAT: &str = "
INSERT INTO qs_replica (replica_id, address, heartbeat_at, expires_at)
VALUES ($1, $2, now(), now() + $3 * interval '1 millisecond')
ON CONFLICT (replica_id) DO UPDATE
SET address = EXCLUDED.address, heartbeat_at = EXCLUDED.heartbeat_at,
    expires_at = EXCLUDED.expires_at";

/// The PostgreSQL store. Cheap to clone.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<PgInner>,
}

struct PgInner {
    db: sqlx::PgPool,
    options: StoreOptions,
    ttl_ms: f64,
    /// Pools this replica holds. Weak so that dropping every handle stops renewing the lease
    /// (it then expires and the pool can be taken over).
    held: Mutex<HashMap<String, Weak<PgShared>>>,
    keeper: Mutex<Option<JoinHandle<()>>>,
    /// Set once the replica has left the registry (it is draining): the keeper then renews the
    /// leases it still holds but no longer its heartbeat, so peers stop counting it as a home.
    left_registry: AtomicBool,
}

impl Drop for PgInner {
    fn drop(&mut self) {
        if let Ok(mut k) = self.keeper.lock()
            && let Some(k) = k.take()
        {
            k.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> Result<MutexGuard<'_, T>> {
    m.lock()
        .map_err(|_| Error::Internal("a store lock was poisoned by a panic".into()))
}

fn valid_schema_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_lowercase() || c == b'_')
        && b.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
        && s.len() <= 63
}

fn to_i64(seq: u64) -> Result<i64> {
    i64::try_from(seq).map_err(|_| Error::InvalidArgument(format!("seq {seq} out of range")))
}

/// Runs the schema migrations (also done by [`PgStore::open`]). Idempotent.
pub async fn migrate(db: &sqlx::PgPool, schema: Option<&str>) -> Result<()> {
    let mut tx = db.begin().await.map_err(db_err("migrate: begin"))?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *tx)
        .await
        .map_err(db_err("migrate: lock"))?;
    if let Some(schema) = schema {
        // The name was checked by valid_schema_name, so it cannot inject anything.
        tx.execute(sqlx::raw_sql(AssertSqlSafe(format!(
            "CREATE SCHEMA IF NOT EXISTS \"{schema}\""
        ))))
        .await
        .map_err(db_err("migrate: create schema"))?;
    }
    tx.execute(sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS qs_schema_version (
             version integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now())",
    ))
    .await
    .map_err(db_err("migrate: version table"))?;
    let current: i32 =
        sqlx::query_scalar("SELECT COALESCE(max(version), 0) FROM qs_schema_version")
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err("migrate: read version"))?;
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tx.execute(sqlx::raw_sql(*sql))
            .await
            .map_err(db_err("migrate: apply"))?;
        sqlx::query("INSERT INTO qs_schema_version (version) VALUES ($1)")
            .bind(version)
            .execute(&mut *tx)
            .await
            .map_err(db_err("migrate: record version"))?;
    }
    tx.commit().await.map_err(db_err("migrate: commit"))?;
    Ok(())
}

fn db_err(context: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
    db(context)
}

impl PgStore {
    /// Connects, runs the migrations, registers this replica and starts the lease keeper.
    pub async fn open(url: &str, options: StoreOptions) -> Result<PgStore> {
        if options.replica_id.is_empty() {
            return Err(Error::InvalidArgument("replica id is empty".into()));
        }
        if options.lease_ttl.is_zero() || options.renew_every().is_zero() {
            return Err(Error::InvalidArgument(
                "lease TTL and renewal period must be > 0".into(),
            ));
        }
        let mut connect = PgConnectOptions::from_str(url)
            .map_err(db_err("parse database URL"))?
            .application_name("qscheduler");
        if let Some(schema) = &options.pg_schema {
            if !valid_schema_name(schema) {
                return Err(Error::InvalidArgument(format!(
                    "schema name {schema:?}: use lower-case letters, digits and '_'"
                )));
            }
            connect = connect.options([("search_path", schema.as_str())]);
        }
        let db = PgPoolOptions::new()
            .max_connections(options.pg_max_connections.max(2))
            .connect_with(connect)
            .await
            .map_err(db_err("connect"))?;
        migrate(&db, options.pg_schema.as_deref()).await?;
        let inner = Arc::new(PgInner {
            db,
            ttl_ms: options.lease_ttl.as_secs_f64() * 1000.0,
            options,
            held: Mutex::new(HashMap::new()),
            keeper: Mutex::new(None),
            left_registry: AtomicBool::new(false),
        });
        inner.heartbeat().await?;
        let weak = Arc::downgrade(&inner);
        let every = inner.options.renew_every();
        let keeper = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            let mut round: Option<JoinHandle<()>> = None;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                // Fencing runs on its own schedule, whatever the database does.
                inner.fence_expired();
                // A round still in progress (slow or unreachable database) is left to finish,
                // not cancelled: its renewals may have been applied. A failed round is retried
                // at the next tick; fencing keeps writes safe meanwhile.
                if round.as_ref().is_none_or(|r| r.is_finished()) {
                    round = Some(tokio::spawn(async move {
                        let _ = inner.renew_round().await;
                        inner.fence_expired();
                    }));
                }
            }
        });
        *lock(&inner.keeper)? = Some(keeper);
        Ok(PgStore { inner })
    }

    /// This replica's id.
    pub fn replica_id(&self) -> &str {
        &self.inner.options.replica_id
    }

    /// The connection pool, for the server's own tables (for example an event log).
    pub fn db(&self) -> &sqlx::PgPool {
        &self.inner.db
    }

    /// See [`crate::Store::create_pool`].
    pub async fn create_pool(&self, pool: &str, first_record: Vec<u8>) -> Result<()> {
        check_pool_id(pool)?;
        check_records(std::slice::from_ref(&first_record))?;
        let mut tx = self.inner.db.begin().await.map_err(db_err("create pool"))?;
        let created =
            sqlx::query("INSERT INTO qs_pool (pool_id) VALUES ($1) ON CONFLICT DO NOTHING")
                .bind(pool)
                .execute(&mut *tx)
                .await
                .map_err(db_err("create pool"))?
                .rows_affected();
        if created == 0 {
            return Err(Error::AlreadyExists { pool: pool.into() });
        }
        sqlx::query(
            "INSERT INTO qs_log (pool_id, seq, generation, crc, record) VALUES ($1, 1, 0, $2, $3)",
        )
        .bind(pool)
        .bind(checksum(1, &first_record) as i32)
        .bind(&first_record)
        .execute(&mut *tx)
        .await
        .map_err(db_err("create pool: first record"))?;
        tx.commit().await.map_err(db_err("create pool: commit"))
    }

    /// See [`crate::Store::delete_pool`].
    pub async fn delete_pool(&self, pool: &str) -> Result<()> {
        check_pool_id(pool)?;
        let deleted = sqlx::query("DELETE FROM qs_pool WHERE pool_id = $1")
            .bind(pool)
            .execute(&self.inner.db)
            .await
            .map_err(db_err("delete pool"))?
            .rows_affected();
        let held = lock(&self.inner.held)?.remove(pool);
        if let Some(h) = held.and_then(|w| w.upgrade()) {
            h.mark_lost();
        }
        if deleted == 0 {
            return Err(Error::NotFound { pool: pool.into() });
        }
        Ok(())
    }

    /// See [`crate::Store::list_pools`].
    pub async fn list_pools(&self) -> Result<Vec<String>> {
        sqlx::query_scalar("SELECT pool_id FROM qs_pool ORDER BY pool_id")
            .fetch_all(&self.inner.db)
            .await
            .map_err(db_err("list pools"))
    }

    /// See [`crate::Store::pool_exists`].
    pub async fn pool_exists(&self, pool: &str) -> Result<bool> {
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM qs_pool WHERE pool_id = $1)")
            .bind(pool)
            .fetch_one(&self.inner.db)
            .await
            .map_err(db_err("pool exists"))
    }

    /// See [`crate::Store::owner_of`].
    pub async fn owner_of(&self, pool: &str) -> Result<Option<Owner>> {
        let row: Option<(String, Option<String>)> = sqlx::query_as(
            "SELECT lease_holder, lease_address FROM qs_pool
             WHERE pool_id = $1 AND lease_holder IS NOT NULL AND lease_expires_at > now()",
        )
        .bind(pool)
        .fetch_optional(&self.inner.db)
        .await
        .map_err(db_err("owner of pool"))?;
        Ok(row.map(|(replica_id, address)| Owner {
            replica_id,
            address: address.unwrap_or_default(),
        }))
    }

    /// See [`crate::Store::unowned_pools`].
    pub async fn unowned_pools(&self) -> Result<Vec<String>> {
        sqlx::query_scalar(
            "SELECT pool_id FROM qs_pool
             WHERE lease_holder IS NULL OR lease_expires_at IS NULL OR lease_expires_at <= now()
             ORDER BY pool_id",
        )
        .fetch_all(&self.inner.db)
        .await
        .map_err(db_err("unowned pools"))
    }

    /// See [`crate::Store::live_replicas`].
    pub async fn live_replicas(&self) -> Result<Vec<Replica>> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT replica_id, address FROM qs_replica WHERE expires_at > now() ORDER BY replica_id",
        )
        .fetch_all(&self.inner.db)
        .await
        .map_err(db_err("live replicas"))?;
        Ok(rows
            .into_iter()
            .map(|(replica_id, address)| Replica {
                replica_id,
                address,
            })
            .collect())
    }

    /// Leaves the registry of live replicas while keeping (and renewing) the leases held, so
    /// that peers no longer pick this replica as any pool's home while it hands its pools over.
    pub async fn leave_registry(&self) -> Result<()> {
        self.inner.left_registry.store(true, Ordering::Release);
        sqlx::query("DELETE FROM qs_replica WHERE replica_id = $1")
            .bind(&self.inner.options.replica_id)
            .execute(&self.inner.db)
            .await
            .map_err(db_err("leave registry"))?;
        Ok(())
    }

    /// Releases every held lease, leaves the registry and stops the lease keeper.
    pub async fn shutdown(&self) -> Result<()> {
        if let Some(k) = lock(&self.inner.keeper)?.take() {
            k.abort();
        }
        let held: Vec<Arc<PgShared>> = lock(&self.inner.held)?
            .drain()
            .filter_map(|(_, w)| w.upgrade())
            .collect();
        for h in &held {
            h.mark_lost();
        }
        let (ids, gens): (Vec<String>, Vec<i64>) =
            held.iter().map(|h| (h.pool.clone(), h.generation)).unzip();
        sqlx::query(RELEASE)
            .bind(ids)
            .bind(gens)
            .bind(&self.inner.options.replica_id)
            .execute(&self.inner.db)
            .await
            .map_err(db_err("release leases"))?;
        sqlx::query("DELETE FROM qs_replica WHERE replica_id = $1")
            .bind(&self.inner.options.replica_id)
            .execute(&self.inner.db)
            .await
            .map_err(db_err("leave registry"))?;
        Ok(())
    }

    /// See [`crate::Store::open_pool`].
    pub async fn open_pool(&self, pool: &str) -> Result<(PgPoolHandle, Recovered)> {
        check_pool_id(pool)?;
        let inner = &self.inner;
        if lock(&inner.held)?
            .get(pool)
            .is_some_and(|w| w.upgrade().is_some_and(|h| !h.lost.load(Ordering::Acquire)))
        {
            return Err(Error::AlreadyOpen { pool: pool.into() });
        }
        let me = &inner.options.replica_id;
        let sent = Instant::now();
        let generation: Option<i64> = sqlx::query_scalar(ACQUIRE)
            .bind(pool)
            .bind(me)
            .bind(&inner.options.advertise_address)
            .bind(inner.ttl_ms)
            .fetch_optional(&inner.db)
            .await
            .map_err(db_err("acquire lease"))?;
        let Some(generation) = generation else {
            let row: Option<(Option<String>, Option<String>)> = sqlx::query_as(
                "SELECT lease_holder, lease_address FROM qs_pool WHERE pool_id = $1",
            )
            .bind(pool)
            .fetch_optional(&inner.db)
            .await
            .map_err(db_err("lease holder"))?;
            return Err(match row {
                None => Error::NotFound { pool: pool.into() },
                Some((holder, address)) => Error::NotOwner {
                    pool: pool.into(),
                    owner: holder.map(|replica_id| Owner {
                        replica_id,
                        address: address.unwrap_or_default(),
                    }),
                },
            });
        };
        let (lease, _) = watch::channel(LeaseState::Held);
        let shared = Arc::new(PgShared {
            store: inner.clone(),
            pool: pool.to_string(),
            generation,
            lease,
            lost: AtomicBool::new(false),
            valid_until: Mutex::new(sent + inner.options.lease_ttl),
            poisoned: AtomicBool::new(false),
            append_lock: tokio::sync::Mutex::new(()),
            newest_snapshot: tokio::sync::Mutex::new(0),
            last_seq: AtomicU64::new(0),
        });
        lock(&inner.held)?.insert(pool.to_string(), Arc::downgrade(&shared));
        match shared.recover().await {
            Ok(recovered) => Ok((PgPoolHandle { shared }, recovered)),
            Err(e) => {
                // Do not sit on a pool we cannot serve.
                let _ = PgPoolHandle { shared }.release().await;
                Err(e)
            }
        }
    }
}

impl PgInner {
    async fn heartbeat(&self) -> Result<()> {
        if self.left_registry.load(Ordering::Acquire) {
            return Ok(());
        }
        sqlx::query(HEARTBEAT)
            .bind(&self.options.replica_id)
            .bind(&self.options.advertise_address)
            .bind(self.ttl_ms)
            .execute(&self.db)
            .await
            .map_err(db_err("registry heartbeat"))?;
        Ok(())
    }

    /// One keeper round: heartbeat, then renew every held lease in one statement.
    async fn renew_round(&self) -> Result<()> {
        self.heartbeat().await?;
        let held: Vec<Arc<PgShared>> = {
            let mut h = lock(&self.held)?;
            h.retain(|_, w| w.strong_count() > 0);
            h.values().filter_map(|w| w.upgrade()).collect()
        };
        let held: Vec<Arc<PgShared>> = held
            .into_iter()
            .filter(|h| !h.lost.load(Ordering::Acquire))
            .collect();
        if held.is_empty() {
            return Ok(());
        }
        let (ids, gens): (Vec<String>, Vec<i64>) =
            held.iter().map(|h| (h.pool.clone(), h.generation)).unzip();
        let sent = Instant::now();
        let renewed: Vec<String> = sqlx::query_scalar(RENEW)
            .bind(ids)
            .bind(gens)
            .bind(self.ttl_ms)
            .bind(&self.options.replica_id)
            .fetch_all(&self.db)
            .await
            .map_err(db_err("renew leases"))?;
        let renewed: std::collections::HashSet<String> = renewed.into_iter().collect();
        let until = sent + self.options.lease_ttl;
        for h in held {
            if renewed.contains(&h.pool) {
                if let Ok(mut v) = h.valid_until.lock() {
                    *v = (*v).max(until);
                }
            } else {
                h.mark_lost();
            }
        }
        Ok(())
    }

    /// Marks lost every held lease that may have expired: its last successful acquisition or
    /// renewal was sent more than a TTL ago.
    fn fence_expired(&self) {
        let held: Vec<Arc<PgShared>> = match self.held.lock() {
            Ok(h) => h.values().filter_map(|w| w.upgrade()).collect(),
            Err(_) => return,
        };
        let now = Instant::now();
        for h in held {
            let expired = h.valid_until.lock().map_or(true, |v| *v <= now);
            if expired && !h.lost.load(Ordering::Acquire) {
                h.mark_lost();
            }
        }
    }
}

/// The writer of one pool on PostgreSQL. Cheap to clone.
#[derive(Clone)]
pub struct PgPoolHandle {
    shared: Arc<PgShared>,
}

struct PgShared {
    store: Arc<PgInner>,
    pool: String,
    /// The fencing token.
    generation: i64,
    lease: watch::Sender<LeaseState>,
    lost: AtomicBool,
    /// The lease certainly lasts until then (see "Self-fencing" above).
    valid_until: Mutex<Instant>,
    /// Set when an append's outcome is unknown (database error): the next seq might be taken.
    poisoned: AtomicBool,
    /// Serialises appends so seqs are assigned in commit order.
    append_lock: tokio::sync::Mutex<()>,
    /// Seq of the newest snapshot; also serialises snapshot writes.
    newest_snapshot: tokio::sync::Mutex<u64>,
    last_seq: AtomicU64,
}

impl PgShared {
    fn mark_lost(self: &Arc<Self>) {
        self.lost.store(true, Ordering::Release);
        self.lease.send_replace(LeaseState::Lost);
        if let Ok(mut held) = self.store.held.lock()
            && held
                .get(&self.pool)
                .is_some_and(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(self)))
        {
            held.remove(&self.pool);
        }
    }

    fn fenced(self: &Arc<Self>) -> Error {
        self.mark_lost();
        Error::Fenced {
            pool: self.pool.clone(),
        }
    }

    fn check_usable(&self) -> Result<()> {
        if self.lost.load(Ordering::Acquire) {
            return Err(Error::Fenced {
                pool: self.pool.clone(),
            });
        }
        if self.poisoned.load(Ordering::Acquire) {
            return Err(Error::Poisoned {
                pool: self.pool.clone(),
            });
        }
        Ok(())
    }

    async fn recover(&self) -> Result<Recovered> {
        let db = &self.store.db;
        let pool = self.pool.as_str();
        let corrupt = |seq: u64, what: String| Error::Corrupt {
            pool: pool.to_string(),
            seq,
            what,
        };
        let snaps: Vec<(i64, i32, i64)> = sqlx::query_as(
            "SELECT seq, crc, size FROM qs_snapshot WHERE pool_id = $1 ORDER BY seq DESC",
        )
        .bind(pool)
        .fetch_all(db)
        .await
        .map_err(db_err("recover: list snapshots"))?;
        let log_range: (Option<i64>, Option<i64>) =
            sqlx::query_as("SELECT min(seq), max(seq) FROM qs_log WHERE pool_id = $1")
                .bind(pool)
                .fetch_one(db)
                .await
                .map_err(db_err("recover: log range"))?;
        let newest = snaps.first().map(|s| s.0);
        let covered = |s: i64| match log_range.0 {
            Some(first) => first <= s.saturating_add(1),
            None => Some(s) == newest,
        };
        let mut notes = Vec::new();
        let mut snapshot: Option<(u64, Vec<u8>)> = None;
        let mut snapshot_extra: Option<Vec<u8>> = None;
        let mut first_problem: Option<(u64, String)> = None;
        for &(seq, crc, size) in &snaps {
            let useq = u64::try_from(seq).map_err(|_| corrupt(0, format!("snapshot seq {seq}")))?;
            let why = if !covered(seq) {
                "the log after it was already compacted".to_string()
            } else {
                let (bytes, extra): (Vec<u8>, Option<Vec<u8>>) = sqlx::query_as(
                    "SELECT bytes, extra FROM qs_snapshot WHERE pool_id = $1 AND seq = $2",
                )
                .bind(pool)
                .bind(seq)
                .fetch_one(db)
                .await
                .map_err(db_err("recover: read snapshot"))?;
                if bytes.len() as i64 != size {
                    format!("snapshot should hold {size} bytes, holds {}", bytes.len())
                } else if checksum(useq, &bytes) as i32 != crc {
                    "snapshot checksum mismatch".to_string()
                } else {
                    snapshot = Some((useq, bytes));
                    snapshot_extra = match extra.map(|e| crate::unframe_extra(useq, &e)) {
                        Some(Ok(e)) => Some(e),
                        Some(Err(why)) => {
                            notes.push(RecoveryNote::SkippedSnapshotExtra { seq: useq, why });
                            None
                        }
                        None => None,
                    };
                    break;
                }
            };
            first_problem.get_or_insert((useq, why.clone()));
            notes.push(RecoveryNote::SkippedSnapshot { seq: useq, why });
        }
        let base = snapshot.as_ref().map_or(0, |(s, _)| *s);
        if snapshot.is_none() && !covered(0) {
            return Err(match first_problem {
                Some((s, why)) => corrupt(
                    s,
                    format!(
                        "snapshot unusable ({why}) and no older snapshot or full log to fall back on"
                    ),
                ),
                None => corrupt(1, "neither a snapshot nor a log starting at seq 1".into()),
            });
        }
        let rows = sqlx::query(
            "SELECT seq, crc, record FROM qs_log WHERE pool_id = $1 AND seq > $2 ORDER BY seq",
        )
        .bind(pool)
        .bind(to_i64(base)?)
        .fetch_all(db)
        .await
        .map_err(db_err("recover: read log"))?;
        let mut records = Vec::with_capacity(rows.len());
        let mut expected = base + 1;
        for row in rows {
            let seq: i64 = row.try_get(0).map_err(db_err("recover: decode log row"))?;
            let crc: i32 = row.try_get(1).map_err(db_err("recover: decode log row"))?;
            let record: Vec<u8> = row.try_get(2).map_err(db_err("recover: decode log row"))?;
            if seq != expected as i64 {
                return Err(corrupt(
                    expected,
                    format!("log jumps from seq {} to {seq}", expected - 1),
                ));
            }
            if checksum(expected, &record) as i32 != crc {
                return Err(corrupt(expected, "record checksum mismatch".into()));
            }
            records.push((expected, record));
            expected += 1;
        }
        self.last_seq.store(expected - 1, Ordering::Release);
        // A damaged newer snapshot is overwritten when the same seq is written again.
        *self.newest_snapshot.lock().await = base;
        Ok(Recovered {
            snapshot,
            snapshot_extra,
            records,
            notes,
        })
    }
}

impl PgPoolHandle {
    /// See [`crate::PoolHandle::pool`].
    pub fn pool(&self) -> &str {
        &self.shared.pool
    }

    /// See [`crate::PoolHandle::last_seq`].
    pub fn last_seq(&self) -> u64 {
        self.shared.last_seq.load(Ordering::Acquire)
    }

    /// The fencing token this handle writes with.
    pub fn generation(&self) -> i64 {
        self.shared.generation
    }

    /// See [`crate::PoolHandle::lease`].
    pub fn lease(&self) -> watch::Receiver<LeaseState> {
        self.shared.lease.subscribe()
    }

    /// See [`crate::PoolHandle::append`].
    pub async fn append(&self, records: Vec<Vec<u8>>) -> Result<AppendStats> {
        let start = Instant::now();
        check_records(&records)?;
        let s = &self.shared;
        let _turn = s.append_lock.lock().await;
        s.check_usable()?;
        let first = s.last_seq.load(Ordering::Acquire) + 1;
        if records.is_empty() {
            return Ok(AppendStats {
                last_seq: first - 1,
                records: 0,
                bytes: 0,
                elapsed: start.elapsed(),
            });
        }
        let n = records.len();
        let last = first + n as u64 - 1;
        let mut seqs = Vec::with_capacity(n);
        let mut crcs = Vec::with_capacity(n);
        let mut bytes = 0u64;
        for (i, r) in records.iter().enumerate() {
            let seq = first + i as u64;
            seqs.push(to_i64(seq)?);
            crcs.push(checksum(seq, r) as i32);
            // Payload plus the seq and crc columns.
            bytes += r.len() as u64 + 12;
        }
        let result = sqlx::query(APPEND)
            .bind(&s.pool)
            .bind(&s.store.options.replica_id)
            .bind(s.generation)
            .bind(seqs)
            .bind(crcs)
            .bind(records)
            .execute(&s.store.db)
            .await;
        match result {
            Ok(r) if r.rows_affected() == n as u64 => {
                s.last_seq.store(last, Ordering::Release);
                Ok(AppendStats {
                    last_seq: last,
                    records: n,
                    bytes,
                    elapsed: start.elapsed(),
                })
            }
            Ok(r) if r.rows_affected() == 0 => Err(s.fenced()),
            Ok(r) => {
                s.poisoned.store(true, Ordering::Release);
                Err(Error::Internal(format!(
                    "pool {:?}: append of {n} records inserted {} rows",
                    s.pool,
                    r.rows_affected()
                )))
            }
            Err(e) => {
                // The commit may or may not have happened; only a reopen can tell.
                s.poisoned.store(true, Ordering::Release);
                Err(db_err("append")(e))
            }
        }
    }

    /// See [`crate::PoolHandle::write_snapshot`].
    pub async fn write_snapshot(&self, seq: u64, bytes: Vec<u8>) -> Result<SnapshotStats> {
        self.write_snapshot_with_extra(seq, bytes, None).await
    }

    /// See [`crate::PoolHandle::write_snapshot_with_extra`]; `extra` comes framed.
    pub(crate) async fn write_snapshot_with_extra(
        &self,
        seq: u64,
        bytes: Vec<u8>,
        extra: Option<Vec<u8>>,
    ) -> Result<SnapshotStats> {
        let start = Instant::now();
        let s = &self.shared;
        if bytes.len() > crate::MAX_SNAPSHOT_BYTES {
            return Err(Error::InvalidArgument(format!(
                "snapshot is {} bytes, more than {}",
                bytes.len(),
                crate::MAX_SNAPSHOT_BYTES
            )));
        }
        let mut newest = s.newest_snapshot.lock().await;
        if s.lost.load(Ordering::Acquire) {
            return Err(Error::Fenced {
                pool: s.pool.clone(),
            });
        }
        let last = s.last_seq.load(Ordering::Acquire);
        if seq == 0 || seq > last {
            return Err(Error::InvalidArgument(format!(
                "pool {:?}: snapshot at seq {seq}, but the log holds seqs 1..={last}",
                s.pool
            )));
        }
        if seq < *newest {
            return Err(Error::InvalidArgument(format!(
                "pool {:?}: snapshot at seq {seq} is older than the stored one at {}",
                s.pool, *newest
            )));
        }
        if seq == *newest {
            return Ok(SnapshotStats {
                seq,
                bytes: 0,
                elapsed: start.elapsed(),
                records_compacted: 0,
            });
        }
        let size = bytes.len() as u64;
        let inserted = sqlx::query(INSERT_SNAPSHOT)
            .bind(&s.pool)
            .bind(&s.store.options.replica_id)
            .bind(s.generation)
            .bind(to_i64(seq)?)
            .bind(checksum(seq, &bytes) as i32)
            .bind(size as i64)
            .bind(bytes)
            .bind(extra)
            .execute(&s.store.db)
            .await
            .map_err(db_err("write snapshot"))?
            .rows_affected();
        if inserted == 0 {
            return Err(s.fenced());
        }
        *newest = seq;

        // Compaction, fenced like the writes: keep the newest `keep_snapshots` snapshots and the
        // log after the oldest of them.
        let keep = s.store.options.keep_snapshots.max(1) as i64;
        let mut tx = s.store.db.begin().await.map_err(db_err("compact"))?;
        let held = sqlx::query(CHECK_LEASE)
            .bind(&s.pool)
            .bind(&s.store.options.replica_id)
            .bind(s.generation)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err("compact: check lease"))?;
        if held.is_none() {
            return Err(s.fenced());
        }
        let oldest_kept: Option<i64> = sqlx::query_scalar(
            "SELECT seq FROM qs_snapshot WHERE pool_id = $1 ORDER BY seq DESC OFFSET $2 LIMIT 1",
        )
        .bind(&s.pool)
        .bind(keep - 1)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err("compact: oldest kept snapshot"))?;
        let mut records_compacted = 0;
        if let Some(oldest_kept) = oldest_kept {
            sqlx::query("DELETE FROM qs_snapshot WHERE pool_id = $1 AND seq < $2")
                .bind(&s.pool)
                .bind(oldest_kept)
                .execute(&mut *tx)
                .await
                .map_err(db_err("compact: snapshots"))?;
            records_compacted = sqlx::query("DELETE FROM qs_log WHERE pool_id = $1 AND seq <= $2")
                .bind(&s.pool)
                .bind(oldest_kept)
                .execute(&mut *tx)
                .await
                .map_err(db_err("compact: log"))?
                .rows_affected();
        }
        tx.commit().await.map_err(db_err("compact: commit"))?;
        Ok(SnapshotStats {
            seq,
            bytes: size,
            elapsed: start.elapsed(),
            records_compacted,
        })
    }

    /// Gives the lease back (if still held) and fences every clone of this handle.
    pub async fn release(self) -> Result<()> {
        let s = &self.shared;
        let _turn = s.append_lock.lock().await;
        let was_lost = s.lost.load(Ordering::Acquire);
        s.mark_lost();
        if was_lost {
            return Ok(());
        }
        sqlx::query(RELEASE)
            .bind(vec![s.pool.clone()])
            .bind(vec![s.generation])
            .bind(&s.store.options.replica_id)
            .execute(&s.store.db)
            .await
            .map_err(db_err("release lease"))?;
        Ok(())
    }
}
