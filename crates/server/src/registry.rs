//! The pools this server runs: creating, recovering, finding and deleting
//! them.
//!
//! A pool is "open" here when this process holds its writer (the store's
//! handle) and its state is in memory behind a [`PoolRef`]. Pools are
//! recovered at startup and reopened on demand when their writer stopped
//! (after a storage failure, say).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use qscheduler_core::{Command, Time};
use qscheduler_store::{self as store, Store};
use tracing::{error, info, warn};

use crate::pool::{Observer, PoolOptions, PoolRef, RecoverError, recover};

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
    #[error("pool {pool:?} is owned by another replica")]
    NotOwner {
        /// The pool.
        pool: String,
        /// Its owner, if known.
        owner: Option<store::Owner>,
    },
    /// The stored state could not be rebuilt.
    #[error(transparent)]
    Recover(#[from] RecoverError),
    /// The store failed.
    #[error("storage: {0}")]
    Store(store::Error),
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

/// The pools of this server.
pub struct Registry {
    store: Store,
    options: PoolOptions,
    observer: Arc<dyn Observer>,
    open: Mutex<BTreeMap<String, PoolRef>>,
    /// Serializes opening, creating and deleting, so a pool is never opened
    /// twice.
    lifecycle: tokio::sync::Mutex<()>,
}

impl Registry {
    /// A registry over `store`; no pool is opened yet.
    pub fn new(store: Store, options: PoolOptions, observer: Arc<dyn Observer>) -> Arc<Registry> {
        Arc::new(Registry {
            store,
            options,
            observer,
            open: Mutex::new(BTreeMap::new()),
            lifecycle: tokio::sync::Mutex::new(()),
        })
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn open_map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, PoolRef>> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn running(&self, id: &str) -> Option<PoolRef> {
        self.open_map().get(id).filter(|p| !p.is_closed()).cloned()
    }

    /// Opens every stored pool this server can own. A pool that fails to
    /// recover is reported and left closed; the others are served.
    pub async fn recover_all(&self) -> Result<(), RegistryError> {
        let ids = self.store.list_pools().await?;
        info!(pools = ids.len(), "recovering pools");
        for id in ids {
            match self.get(&id).await {
                Ok(_) => {}
                Err(RegistryError::NotOwner { .. }) => {}
                Err(e) => {
                    error!(pool = %id, error = %e, "pool not recovered; it stays unavailable until the problem is fixed")
                }
            }
        }
        Ok(())
    }

    /// The running pool `id`, opening (recovering) it if needed.
    pub async fn get(&self, id: &str) -> Result<PoolRef, RegistryError> {
        if let Some(p) = self.running(id) {
            return Ok(p);
        }
        let _guard = self.lifecycle.lock().await;
        if let Some(p) = self.running(id) {
            return Ok(p);
        }
        let stopped = self.open_map().remove(id);
        if let Some(old) = stopped {
            // Its writer stopped; wait until it let go of the store handle.
            old.closed().await;
        }
        let started = Instant::now();
        let (handle, rec) = self.store.open_pool(id).await?;
        for note in &rec.notes {
            warn!(pool = %id, note = ?note, "the store repaired the pool's log while opening it");
        }
        let records = rec.records.len();
        let snapshot_seq = rec.snapshot.as_ref().map(|(s, _)| *s);
        let pool = match recover(id, &rec) {
            Ok(p) => p,
            Err(e) => {
                let _ = handle.release().await;
                return Err(e.into());
            }
        };
        info!(
            pool = %id,
            elapsed_ms = started.elapsed().as_millis() as u64,
            snapshot_seq = ?snapshot_seq,
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
        Ok(p)
    }

    /// Creates a pool whose clock starts at `now`.
    pub async fn create(&self, id: &str, now: Time) -> Result<(), RegistryError> {
        {
            let _guard = self.lifecycle.lock().await;
            let first = Command::Create { time: now }.encode();
            self.store.create_pool(id, first).await?;
            info!(pool = %id, "pool created");
        }
        self.get(id).await.map(|_| ())
    }

    /// Deletes a pool and everything stored for it.
    pub async fn delete(&self, id: &str) -> Result<(), RegistryError> {
        let _guard = self.lifecycle.lock().await;
        self.store.delete_pool(id).await?;
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

    /// Ids of the pools open here.
    pub fn open_ids(&self) -> Vec<String> {
        self.open_map().keys().cloned().collect()
    }

    /// Waits for every pool writer to finish its current batch and stop,
    /// then releases the store.
    pub async fn shutdown(&self) {
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
