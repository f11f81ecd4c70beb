//! The real server, in process: an embedded store in a fresh directory,
//! the registry and pool writers, the event log (files) and metrics as
//! observers, and the same one-port router `Server` serves (gRPC, pRPC,
//! health, metrics), driven with `tower::ServiceExt::oneshot` instead of a
//! socket.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http_body_util::BodyExt;
use qscheduler_core::{Time, snapshot};
use qscheduler_server::eventlog::{EventLog, EventLogOptions, FileSinkOptions};
use qscheduler_server::metrics::{Metrics, MetricsOptions};
use qscheduler_server::pool::{CommitInfo, Observer, PoolOptions, SnapshotInfo};
use qscheduler_server::registry::Registry;
use qscheduler_server::{ServerOptions, server};
use qscheduler_store::{Store, StoreOptions};
use tower::ServiceExt;

use crate::requests::{BASE_SECS, POOL};

/// A scratch directory in memory when the machine has one.
pub fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let builder = {
        let mut b = tempfile::Builder::new();
        b.prefix("qs-fuzz-");
        b
    };
    let dir = if shm.is_dir() {
        builder.tempdir_in(shm)
    } else {
        builder.tempdir()
    };
    match dir {
        Ok(d) => d,
        Err(e) => panic!("cannot make a scratch directory: {e}"),
    }
}

struct Observers(Vec<Arc<dyn Observer>>);

impl Observer for Observers {
    fn committed(&self, pool: &str, commit: &CommitInfo<'_>) {
        for o in &self.0 {
            o.committed(pool, commit);
        }
    }
    fn snapshot(&self, pool: &str, snapshot: &SnapshotInfo) {
        for o in &self.0 {
            o.snapshot(pool, snapshot);
        }
    }
    fn pool_deleted(&self, pool: &str) {
        for o in &self.0 {
            o.pool_deleted(pool);
        }
    }
}

/// How the pools of a run are tuned.
#[derive(Clone, Copy, Debug)]
pub struct Tuning {
    /// Snapshot after this many log records.
    pub snapshot_every_records: u64,
    /// Keep a follower copy for snapshots (see the pool writer).
    pub follower: bool,
}

/// A running server.
pub struct InProcess {
    router: Option<axum::Router>,
    registry: Arc<Registry>,
    event_log: Arc<EventLog>,
    data: PathBuf,
    tuning: Tuning,
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

fn pool_options(t: Tuning) -> PoolOptions {
    PoolOptions {
        batch_window: Duration::ZERO,
        snapshot_every_records: t.snapshot_every_records,
        follower_above: if t.follower {
            Duration::ZERO
        } else {
            Duration::MAX
        },
        ..PoolOptions::default()
    }
}

fn must<T, E: std::fmt::Display>(r: Result<T, E>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e}"),
    }
}

impl InProcess {
    /// A server over a new data directory under `dir`, with pool [`POOL`].
    pub async fn start(dir: &Path, tuning: Tuning) -> InProcess {
        let data = dir.join("data");
        let store = must(
            Store::open(data.to_string_lossy().as_ref(), StoreOptions::default()).await,
            "open the store",
        );
        let event_log = must(
            EventLog::start(&EventLogOptions {
                files: Some(FileSinkOptions::new(dir.join("events"))),
                ..EventLogOptions::default()
            }),
            "start the event log",
        );
        let metrics = Metrics::new(MetricsOptions::default(), event_log.stats());
        let registry = Registry::new(
            store,
            pool_options(tuning),
            Arc::new(Observers(vec![event_log.clone(), metrics.clone()])),
        );
        metrics.attach(&registry);
        must(
            registry.create(POOL, Time::from_secs(BASE_SECS)).await,
            "create the pool",
        );
        let mut options = ServerOptions {
            request_timeout: Duration::from_secs(10),
            max_request_bytes: 1 << 20,
            ..ServerOptions::default()
        };
        // The fuzzed calls run on a clock of their own, years from now.
        options.limits.max_clock_skew = Duration::from_secs(1000 * 365 * 86_400);
        let router = must(
            server::router(&registry, Some(&metrics), &options, axum::Router::new()),
            "build the router",
        );
        InProcess {
            router: Some(router),
            registry,
            event_log,
            data,
            tuning,
        }
    }

    /// Sends one request and reads the whole response.
    pub async fn send(&self, req: http::Request<Body>) -> Reply {
        let Some(router) = &self.router else {
            panic!("the server was stopped");
        };
        let resp = match router.clone().oneshot(req).await {
            Ok(r) => r,
            Err(e) => match e {},
        };
        let (parts, body) = resp.into_parts();
        // A body that fails to stream is an answer too (the client sees a
        // reset); only a panic is a failure.
        let body = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// Stops the server; then, if `check_recovery`, opens the data
    /// directory again, recovers every pool and checks that each comes back
    /// exactly as it was (its snapshot bytes), which is what the log and
    /// snapshots written while serving promise.
    pub async fn stop(mut self, check_recovery: bool) {
        let pools = self.registry.open_pools();
        self.router = None;
        self.registry.shutdown().await;
        self.event_log.shutdown(Duration::from_secs(5)).await;
        // Read after the writers stopped: a call whose caller gave up may
        // still have been committed, and what was committed is what must
        // come back.
        let before: Vec<(String, Vec<u8>)> = pools
            .iter()
            .map(|p| (p.id().to_owned(), snapshot::encode(&p.read())))
            .collect();
        drop(pools);
        let InProcess {
            registry,
            data,
            tuning,
            ..
        } = self;
        drop(registry);
        if !check_recovery {
            return;
        }
        let store = must(
            Store::open(data.to_string_lossy().as_ref(), StoreOptions::default()).await,
            "reopen the store",
        );
        let registry = Registry::new(
            store,
            pool_options(tuning),
            Arc::new(qscheduler_server::pool::NoObserver),
        );
        must(registry.recover_all().await, "recover");
        for (id, image) in before {
            let pool = must(registry.get(&id).await, &format!("reopen pool {id:?}"));
            let after = snapshot::encode(&pool.read());
            assert!(
                after == image,
                "pool {id:?} recovered from its log and snapshots differs from the pool that wrote them"
            );
        }
        registry.shutdown().await;
    }
}
