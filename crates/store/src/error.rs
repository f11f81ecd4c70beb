//! The store's error type.
//!
//! Each variant is something the server has to react to differently (a gRPC code, dropping a pool,
//! forwarding to another replica), so they stay distinct instead of collapsing into one string.

use std::path::PathBuf;

use crate::Owner;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The pool does not exist (`NOT_FOUND`).
    #[error("pool {pool:?} not found")]
    NotFound {
        /// The pool.
        pool: String,
    },

    /// `create_pool` on a pool that exists (`ALREADY_EXISTS`).
    #[error("pool {pool:?} already exists")]
    AlreadyExists {
        /// The pool.
        pool: String,
    },

    /// Another live replica holds the pool's lease. `owner` says where to forward requests
    /// (`None` if the lease is held but the holder is unknown, which should not happen).
    #[error("pool {pool:?} is owned by another replica{}", owner_suffix(.owner))]
    NotOwner {
        /// The pool.
        pool: String,
        /// The lease holder, if known.
        owner: Option<Owner>,
    },

    /// The pool is already open in this process; a pool has at most one handle at a time.
    #[error("pool {pool:?} is already open in this process")]
    AlreadyOpen {
        /// The pool.
        pool: String,
    },

    /// This handle is no longer the pool's writer: another replica took the lease, the lease was
    /// released, or the pool was deleted. Nothing was written; the caller must drop the pool.
    #[error("pool {pool:?}: this handle lost the pool's lease (fenced); nothing was written")]
    Fenced {
        /// The pool.
        pool: String,
    },

    /// A previous write of this handle failed half-way (for example `fsync` returned an error),
    /// so what is on disk is unknown. The pool must be reopened, which re-runs recovery.
    #[error("pool {pool:?}: an earlier write failed, reopen the pool to recover")]
    Poisoned {
        /// The pool.
        pool: String,
    },

    /// Stored data failed its checks. Recovery of this pool stops here; other pools are not
    /// affected. `seq` is the record's sequence number, or the snapshot's for a snapshot; 0 when
    /// the damage is in the file's structure and no record can be named.
    #[error("pool {pool:?}: corrupt data{}: {what}", seq_suffix(*.seq))]
    Corrupt {
        /// The pool.
        pool: String,
        /// The damaged record's or snapshot's seq (0 if none can be named).
        seq: u64,
        /// What failed.
        what: String,
    },

    /// The caller passed something the store cannot accept (empty pool id, snapshot beyond the
    /// log, record too large, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// Another process owns the embedded data directory.
    #[error("data directory {path} is in use by another process (lock file {lock} is held)")]
    Locked {
        /// The data directory.
        path: PathBuf,
        /// Its lock file.
        lock: PathBuf,
    },

    /// A file-system operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What the store was doing.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },

    /// A PostgreSQL operation failed (connection, statement, ...).
    #[error("database: {context}: {source}")]
    Db {
        /// What the store was doing.
        context: String,
        /// The error.
        #[source]
        source: sqlx::Error,
    },

    /// A bug or a panic inside the store (for example a blocking task that panicked).
    #[error("internal store error: {0}")]
    Internal(String),
}

fn seq_suffix(seq: u64) -> String {
    if seq == 0 {
        String::new()
    } else {
        format!(" at seq {seq}")
    }
}

fn owner_suffix(owner: &Option<Owner>) -> String {
    match owner {
        Some(o) => format!(" ({} at {})", o.replica_id, o.address),
        None => String::new(),
    }
}

/// The store's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

pub(crate) fn db(context: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
    move |source| Error::Db {
        context: context.to_string(),
        source,
    }
}
