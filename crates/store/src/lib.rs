//! Durable per-pool state for qscheduler.
//!
//! The scheduling core is a deterministic state machine, so a pool's state is fully determined by
//! the inputs fed to it. This crate therefore stores, per pool:
//!
//! * a **log** of opaque input records numbered 1, 2, 3, … without gaps. [`PoolHandle::append`]
//!   writes one or many records in one durable commit (the server's group commit); the bytes it
//!   writes grow with the records, never with the pool's state, which is what lets a batch stay
//!   cheap however large the queue is (the original rewrote the whole state on every batch);
//! * **snapshots**: opaque state images tagged with the last record they include. Writing one
//!   lets the store drop the log records it covers (and older snapshots). A snapshot may carry
//!   an *extra* image of derived state taken at the same seq (the server's report figures),
//!   checked and returned with it, and dropped with it; an extra that fails its check is
//!   skipped with a note and never fails the pool;
//! * **recovery**: [`Store::open_pool`] returns the latest good snapshot and every record after it,
//!   in order. The server replays them through the core.
//!
//! Every record and snapshot carries a CRC-32C checked on load. Damage is reported as
//! [`Error::Corrupt`] naming the pool and sequence number (0 when the damage is in the structure
//! of an embedded pool's file and no record can be named); it stops recovery of that pool only.
//! The bytes are never interpreted here.
//!
//! Two backends share one API ([`Store`] and [`PoolHandle`] are enums over them):
//!
//! * [`embedded`] (default, zero setup): one [redb](https://docs.rs/redb) database file per pool
//!   in a data directory, holding the pool's log and its snapshots (cut in chunks). Pools commit
//!   in parallel and damage stays in one pool's file. One process owns the data directory.
//! * [`postgres`]: tables in a PostgreSQL database shared by several replicas. One writer per
//!   pool is enforced by the database with a lease and a fencing token checked by every write,
//!   plus a replica registry used to find a pool's owner.
//!
//! The API is async (tokio). The embedded backend runs its file I/O on `spawn_blocking`.

pub mod embedded;
mod error;
pub mod postgres;

use std::time::Duration;

pub use error::{Error, Result};
use tokio::sync::watch;

/// Pool ids are untrusted input that end up in file names and SQL parameters; this bound keeps
/// them reasonable for both (file names are escaped and hashed when long, see [`embedded`]).
pub const MAX_POOL_ID_BYTES: usize = 1024;

/// Largest accepted record. Records are "tens of bytes to a few MB"; the bound keeps a corrupt
/// length field from asking for an absurd allocation and stays below PostgreSQL's 1 GB `bytea`.
pub const MAX_RECORD_BYTES: usize = 256 << 20;

/// Largest accepted snapshot (PostgreSQL stores a `bytea` of at most 1 GB).
pub const MAX_SNAPSHOT_BYTES: usize = 1000 << 20;

/// How to open a [`Store`]. The defaults suit the embedded backend; a PostgreSQL deployment sets
/// at least `replica_id` and `advertise_address`.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// This replica's id in the lease and registry tables (PostgreSQL). Must be unique per live
    /// process; reusing the id of a crashed process lets the restarted one take its pools back at
    /// once instead of after the lease TTL.
    pub replica_id: String,
    /// Address other replicas forward requests to (PostgreSQL registry).
    pub advertise_address: String,
    /// Lease lifetime (PostgreSQL). A dead replica's pools can be taken over this long after its
    /// last renewal.
    pub lease_ttl: Duration,
    /// How often leases and the registry heartbeat are renewed. `None` means `lease_ttl / 3`.
    pub lease_renew_every: Option<Duration>,
    /// Schema holding the tables (PostgreSQL). `None` uses the connection's `search_path`.
    pub pg_schema: Option<String>,
    /// Connections in the PostgreSQL pool.
    pub pg_max_connections: u32,
    /// Snapshots kept per pool (at least 1). Keeping 2 means a damaged newest snapshot falls back
    /// to the previous one, at the cost of keeping the log since that previous one. Until a pool
    /// has that many snapshots, its whole log is kept (the log from seq 1 is the fallback).
    pub keep_snapshots: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            replica_id: format!("replica-{}", std::process::id()),
            advertise_address: String::new(),
            lease_ttl: Duration::from_secs(5),
            lease_renew_every: None,
            pg_schema: None,
            pg_max_connections: 10,
            keep_snapshots: 2,
        }
    }
}

impl StoreOptions {
    pub(crate) fn renew_every(&self) -> Duration {
        self.lease_renew_every.unwrap_or(self.lease_ttl / 3)
    }
}

/// A replica holding a pool's live lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// The holder's replica id.
    pub replica_id: String,
    /// Where the holder serves calls (its advertised address).
    pub address: String,
}

/// A replica in the registry whose heartbeat has not expired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replica {
    /// The replica's id.
    pub replica_id: String,
    /// Where the replica serves calls (its advertised address).
    pub address: String,
}

/// What [`Store::open_pool`] found on disk or in the database.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// The latest good snapshot: (seq of the last record it includes, bytes).
    pub snapshot: Option<(u64, Vec<u8>)>,
    /// The extra image stored with that snapshot, if any passed its check.
    pub snapshot_extra: Option<Vec<u8>>,
    /// Every record after the snapshot, in order, with its seq.
    pub records: Vec<(u64, Vec<u8>)>,
    /// Repairs made while recovering; the server should log them.
    pub notes: Vec<RecoveryNote>,
}

impl Recovered {
    /// Seq of the last record the recovered state includes (0 for an empty pool).
    pub fn last_seq(&self) -> u64 {
        self.records
            .last()
            .map(|(s, _)| *s)
            .or(self.snapshot.as_ref().map(|(s, _)| *s))
            .unwrap_or(0)
    }
}

/// A repair made during recovery. None of these loses an acknowledged write unless the damage
/// went beyond what a crash can do (see [`embedded`] for the recovery rules).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecoveryNote {
    /// The end of the log was incomplete (a crash during an append that was therefore never
    /// acknowledged) and was cut after `last_good_seq`. The embedded store reports it when redb
    /// went back to the previous commit of a file written with one-phase commits; it then does
    /// not know `bytes_dropped` and says 0.
    TornTail {
        /// The last record kept.
        last_good_seq: u64,
        /// Bytes cut from the end (0 when unknown).
        bytes_dropped: u64,
    },
    /// A snapshot failed its checks and an older one (or the log from the start) was used.
    SkippedSnapshot {
        /// The skipped snapshot's seq.
        seq: u64,
        /// What was wrong with it.
        why: String,
    },
    /// The extra image stored with the snapshot failed its check and was left out.
    SkippedSnapshotExtra {
        /// The snapshot's seq.
        seq: u64,
        /// What was wrong with it.
        why: String,
    },
    /// The storage engine found damage in the pool's file and repaired it (embedded store).
    Repaired {
        /// What the engine reported.
        what: String,
    },
}

/// Cost of one [`PoolHandle::append`], for the "bytes written per batch" and "store append
/// latency" metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendStats {
    /// Seq of the last record written.
    pub last_seq: u64,
    /// Records written.
    pub records: usize,
    /// Bytes handed to the disk or database, keys, framing and checksums included (the embedded
    /// store's engine writes whole 4 KiB pages, so its file grows by more; see its docs).
    pub bytes: u64,
    /// Wall time until the commit was durable (lock wait included).
    pub elapsed: Duration,
}

/// Cost of one [`PoolHandle::write_snapshot`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotStats {
    /// The seq the snapshot covers.
    pub seq: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Wall time until the snapshot was durable.
    pub elapsed: Duration,
    /// Log records deleted by the compaction that followed.
    pub records_compacted: u64,
}

/// Whether a handle is still its pool's writer. Watch it with [`PoolHandle::lease`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseState {
    /// This handle is the pool's writer.
    Held,
    /// The lease is gone (taken over, released, pool deleted). Every later write returns
    /// [`Error::Fenced`]; drop the pool's in-memory state.
    Lost,
}

/// A store: either backend, chosen by [`Store::open`]. Cheap to clone.
#[derive(Clone)]
pub enum Store {
    /// One redb file per pool under a data directory.
    Embedded(embedded::EmbeddedStore),
    /// Tables in a PostgreSQL database, shared by replicas.
    Postgres(postgres::PgStore),
}

impl Store {
    /// Opens the store at `location`: a `postgres://` or `postgresql://` URL selects PostgreSQL
    /// (and runs its migrations), anything else is a data directory (created if missing).
    pub async fn open(location: &str, options: StoreOptions) -> Result<Store> {
        if location.starts_with("postgres://") || location.starts_with("postgresql://") {
            Ok(Store::Postgres(
                postgres::PgStore::open(location, options).await?,
            ))
        } else {
            Ok(Store::Embedded(
                embedded::EmbeddedStore::open(location, options).await?,
            ))
        }
    }

    /// This replica's id, as recorded in leases and the registry.
    pub fn replica_id(&self) -> &str {
        match self {
            Store::Embedded(s) => s.replica_id(),
            Store::Postgres(s) => s.replica_id(),
        }
    }

    /// True if several processes may share the store's pools (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        matches!(self, Store::Postgres(_))
    }

    /// Creates a pool whose log starts with `first_record` (seq 1), atomically and durably.
    /// Fails with [`Error::AlreadyExists`] if the pool exists.
    pub async fn create_pool(&self, pool: &str, first_record: Vec<u8>) -> Result<()> {
        match self {
            Store::Embedded(s) => s.create_pool(pool, first_record).await,
            Store::Postgres(s) => s.create_pool(pool, first_record).await,
        }
    }

    /// Deletes a pool and everything stored for it. A missing pool is [`Error::NotFound`]. An open
    /// handle of the pool (here or on another replica) is fenced.
    pub async fn delete_pool(&self, pool: &str) -> Result<()> {
        match self {
            Store::Embedded(s) => s.delete_pool(pool).await,
            Store::Postgres(s) => s.delete_pool(pool).await,
        }
    }

    /// All pool ids, sorted.
    pub async fn list_pools(&self) -> Result<Vec<String>> {
        match self {
            Store::Embedded(s) => s.list_pools().await,
            Store::Postgres(s) => s.list_pools().await,
        }
    }

    /// Whether the pool exists.
    pub async fn pool_exists(&self, pool: &str) -> Result<bool> {
        match self {
            Store::Embedded(s) => s.pool_exists(pool).await,
            Store::Postgres(s) => s.pool_exists(pool).await,
        }
    }

    /// Becomes the pool's writer and recovers its state. With PostgreSQL this first takes the
    /// pool's lease ([`Error::NotOwner`] names the live owner otherwise). On a recovery error the
    /// lease is given back.
    pub async fn open_pool(&self, pool: &str) -> Result<(PoolHandle, Recovered)> {
        match self {
            Store::Embedded(s) => {
                let (h, r) = s.open_pool(pool).await?;
                Ok((PoolHandle::Embedded(h), r))
            }
            Store::Postgres(s) => {
                let (h, r) = s.open_pool(pool).await?;
                Ok((PoolHandle::Postgres(h), r))
            }
        }
    }

    /// The replica holding a live lease on the pool, if any. The embedded store answers with
    /// itself when the pool is open in this process.
    pub async fn owner_of(&self, pool: &str) -> Result<Option<Owner>> {
        match self {
            Store::Embedded(s) => s.owner_of(pool).await,
            Store::Postgres(s) => s.owner_of(pool).await,
        }
    }

    /// Pools nobody holds a live lease on: candidates for this replica to take over.
    pub async fn unowned_pools(&self) -> Result<Vec<String>> {
        match self {
            Store::Embedded(s) => s.unowned_pools().await,
            Store::Postgres(s) => s.unowned_pools().await,
        }
    }

    /// Replicas whose registry heartbeat is live (the embedded store: only itself).
    pub async fn live_replicas(&self) -> Result<Vec<Replica>> {
        match self {
            Store::Embedded(s) => Ok(vec![s.this_replica()]),
            Store::Postgres(s) => s.live_replicas().await,
        }
    }

    /// Starts a graceful hand-off: this replica stops announcing itself as live, so peers
    /// stop choosing it as a pool's home, while it keeps the leases it holds until it releases
    /// them one by one (the embedded store has no peers: nothing to do).
    pub async fn leave_registry(&self) -> Result<()> {
        match self {
            Store::Embedded(_) => Ok(()),
            Store::Postgres(s) => s.leave_registry().await,
        }
    }

    /// Clean shutdown: releases every lease this replica holds and leaves the registry, so other
    /// replicas take the pools over at once instead of after the lease TTL. Handles still in use
    /// are fenced.
    pub async fn shutdown(&self) -> Result<()> {
        match self {
            Store::Embedded(s) => s.shutdown().await,
            Store::Postgres(s) => s.shutdown().await,
        }
    }
}

/// The writer of one pool. Cheap to clone; clones share the same writer, and concurrent appends
/// are serialised (each still one commit).
#[derive(Clone)]
pub enum PoolHandle {
    /// A pool of the embedded store.
    Embedded(embedded::EmbeddedPoolHandle),
    /// A pool of the PostgreSQL store.
    Postgres(postgres::PgPoolHandle),
}

impl PoolHandle {
    /// The pool id.
    pub fn pool(&self) -> &str {
        match self {
            PoolHandle::Embedded(h) => h.pool(),
            PoolHandle::Postgres(h) => h.pool(),
        }
    }

    /// Seq of the last record appended (or recovered).
    pub fn last_seq(&self) -> u64 {
        match self {
            PoolHandle::Embedded(h) => h.last_seq(),
            PoolHandle::Postgres(h) => h.last_seq(),
        }
    }

    /// Appends `records` (numbered from `last_seq() + 1`) in one durable commit and returns once
    /// it is durable. An empty batch writes nothing. On an error other than [`Error::Fenced`] or
    /// [`Error::InvalidArgument`] the outcome is unknown: the handle refuses further appends
    /// ([`Error::Poisoned`]) and the pool must be reopened, which tells what was kept.
    pub async fn append(&self, records: Vec<Vec<u8>>) -> Result<AppendStats> {
        match self {
            PoolHandle::Embedded(h) => h.append(records).await,
            PoolHandle::Postgres(h) => h.append(records).await,
        }
    }

    /// Stores a state image that includes every record up to `seq` (which must be already
    /// appended), then deletes what it makes unnecessary. Appends may run concurrently.
    pub async fn write_snapshot(&self, seq: u64, bytes: Vec<u8>) -> Result<SnapshotStats> {
        self.write_snapshot_with_extra(seq, bytes, None).await
    }

    /// [`PoolHandle::write_snapshot`] with an extra image of derived state at the same seq,
    /// stored, returned by recovery ([`Recovered::snapshot_extra`]) and deleted with the
    /// snapshot. Its bytes count in the snapshot's size.
    pub async fn write_snapshot_with_extra(
        &self,
        seq: u64,
        bytes: Vec<u8>,
        extra: Option<Vec<u8>>,
    ) -> Result<SnapshotStats> {
        let extra_len = extra.as_ref().map_or(0, Vec::len);
        if bytes.len().saturating_add(extra_len) > MAX_SNAPSHOT_BYTES {
            return Err(Error::InvalidArgument(format!(
                "snapshot and its extra are {} bytes, more than {MAX_SNAPSHOT_BYTES}",
                bytes.len().saturating_add(extra_len)
            )));
        }
        let extra = extra.map(|e| frame_extra(seq, &e));
        match self {
            PoolHandle::Embedded(h) => h.write_snapshot_with_extra(seq, bytes, extra).await,
            PoolHandle::Postgres(h) => h.write_snapshot_with_extra(seq, bytes, extra).await,
        }
    }

    /// Tells whether this handle is still the writer; changes to [`LeaseState::Lost`] when the
    /// lease is lost (seen by the renewal task or by a fenced write).
    pub fn lease(&self) -> watch::Receiver<LeaseState> {
        match self {
            PoolHandle::Embedded(h) => h.lease(),
            PoolHandle::Postgres(h) => h.lease(),
        }
    }

    /// Stops being the pool's writer (PostgreSQL: gives the lease back so another replica can
    /// take the pool at once). Every clone of the handle is fenced afterwards.
    pub async fn release(self) -> Result<()> {
        match self {
            PoolHandle::Embedded(h) => h.release().await,
            PoolHandle::Postgres(h) => h.release().await,
        }
    }
}

pub(crate) fn check_pool_id(pool: &str) -> Result<()> {
    if pool.is_empty() {
        return Err(Error::InvalidArgument("pool id is empty".into()));
    }
    if pool.len() > MAX_POOL_ID_BYTES {
        return Err(Error::InvalidArgument(format!(
            "pool id is {} bytes long, more than {MAX_POOL_ID_BYTES}",
            pool.len()
        )));
    }
    if pool.contains('\0') {
        return Err(Error::InvalidArgument("pool id contains a NUL byte".into()));
    }
    Ok(())
}

pub(crate) fn check_records(records: &[Vec<u8>]) -> Result<()> {
    if let Some((i, r)) = records
        .iter()
        .enumerate()
        .find(|(_, r)| r.len() > MAX_RECORD_BYTES)
    {
        return Err(Error::InvalidArgument(format!(
            "record {i} of the batch is {} bytes, more than {MAX_RECORD_BYTES}",
            r.len()
        )));
    }
    Ok(())
}

/// A snapshot's extra image as stored: its checksum (bound to the snapshot's seq, with a
/// different seed than the snapshot's own) then the bytes.
pub(crate) fn frame_extra(seq: u64, extra: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(extra.len() + 4);
    out.extend_from_slice(&extra_checksum(seq, extra).to_le_bytes());
    out.extend_from_slice(extra);
    out
}

/// The bytes of a stored extra image, or why it is unusable.
pub(crate) fn unframe_extra(seq: u64, stored: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let Some((crc, payload)) = stored.split_first_chunk::<4>() else {
        return Err(format!("extra image is {} bytes, too short", stored.len()));
    };
    if extra_checksum(seq, payload) != u32::from_le_bytes(*crc) {
        return Err("extra image checksum mismatch".into());
    }
    Ok(payload.to_vec())
}

fn extra_checksum(seq: u64, bytes: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&(!seq).to_le_bytes()), bytes)
}

/// CRC-32C of a record or snapshot bound to its seq, so a record moved to another position (or a
/// snapshot renamed) fails its check too.
pub(crate) fn checksum(seq: u64, bytes: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&seq.to_le_bytes()), bytes)
}
