//! Starting and stopping the server: open the store, start the event log
//! and metrics, recover the pools, serve gRPC, pRPC and plain HTTP
//! (health, readiness, metrics) on one port, and stop gracefully.
//!
//! # Stopping
//!
//! When the shutdown future completes (SIGTERM), the server goes
//! [`Phase::Draining`] (readiness and gRPC health turn `NOT_SERVING`), leaves
//! the store's registry of live replicas and hands every pool over
//! ([`Registry::drain`]) while it still answers calls: a call for a pool
//! already handed over is forwarded to its new home, or refused with the
//! retriable `UNAVAILABLE`. Then it stops accepting connections, lets calls
//! in flight finish, stops the writers, releases the store and flushes the
//! event log. All of it within [`ServerOptions::shutdown_grace`]; past that
//! it stops waiting.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use qscheduler_store::{Store, StoreOptions};
use qscheduler_wire::conn::{ConnectionOptions, effective_max_connections, raise_open_file_limit};
use qscheduler_wire::prpc::CorsPolicy;
use qscheduler_wire::serve::Services;
use tokio::net::TcpListener;
use tracing::{error, info, warn};

use crate::audit::{AuditLog, AuditOptions};
use crate::auth::Policy;
use crate::auth::layer::{AuthLayer, AuthSettings, PolicyCell};
use crate::eventlog::{EventLog, EventLogError, EventLogOptions};
use crate::health::{Health, Phase};
use crate::insight::Insight;
use crate::limits::Limits;
use crate::metrics::{Metrics, MetricsOptions};
use crate::pool::{
    ByteBudget, CommitInfo, ExtraImage, NoObserver, Observer, PoolOptions, Recovering, SnapshotInfo,
};
use crate::registry::Registry;
use crate::report::Reports;
use crate::rpc_layer::RpcLayer;
use crate::secret::{RedactedUrl, Secret, redact_url};
use crate::service::PoolServices;
use crate::tls::{TlsAcceptorCell, TlsError, TlsOptions};

/// Everything the server needs to start. Its `Debug` hides the peer
/// secret and the password of a database URL.
#[derive(Clone)]
pub struct ServerOptions {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Where pools are stored: a data directory, or a `postgres://` URL.
    pub store: String,
    /// Store tuning (replica id, lease TTL...).
    pub store_options: StoreOptions,
    /// Batching and snapshot policy.
    pub pool: PoolOptions,
    /// Upper bound on every call's deadline (and the deadline of calls that
    /// send none).
    pub request_timeout: Duration,
    /// Largest accepted request body.
    pub max_request_bytes: usize,
    /// The Prometheus endpoint.
    pub metrics: MetricsOptions,
    /// The task event log's sinks (none by default).
    pub event_log: EventLogOptions,
    /// How often the replica looks for pools to adopt or hand off (see
    /// [`crate::registry`]).
    pub adopt_every: Duration,
    /// Request limits and memory budgets (they override the budgets of
    /// `pool`).
    pub limits: Limits,
    /// Connection limits.
    pub connections: ConnectionOptions,
    /// Longest a graceful stop takes (see the module docs).
    pub shutdown_grace: Duration,
    /// Start serving before the pools are recovered: [`Server::start_with`]
    /// returns at once and recovery runs in the background, reported by
    /// `/readyz` and gRPC health (what `qscheduler serve` does). When false
    /// it returns after recovery, with readiness already settled.
    pub recover_in_background: bool,
    /// `[auth]`: who may call. `None`: anyone who reaches the port, which
    /// is only allowed on loopback addresses unless `insecure`.
    pub auth: Option<Policy>,
    /// The secret replicas prove themselves to each other with when they
    /// forward calls.
    pub peer_secret: Option<Secret>,
    /// Serve a non-loopback address without `[auth]`.
    pub insecure: bool,
    /// TLS on the port (`[tls]`).
    pub tls: Option<TlsOptions>,
    /// The audit log's files and table (`None`: administrative calls are
    /// only counted).
    pub audit: Option<AuditOptions>,
}

impl std::fmt::Debug for ServerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Every field, so that a new one is not forgotten here silently.
        let ServerOptions {
            listen,
            store,
            store_options,
            pool,
            request_timeout,
            max_request_bytes,
            metrics,
            event_log,
            adopt_every,
            limits,
            connections,
            shutdown_grace,
            recover_in_background,
            auth,
            peer_secret,
            insecure,
            tls,
            audit,
        } = self;
        f.debug_struct("ServerOptions")
            .field("listen", listen)
            .field("store", &RedactedUrl(store))
            .field("store_options", store_options)
            .field("pool", pool)
            .field("request_timeout", request_timeout)
            .field("max_request_bytes", max_request_bytes)
            .field("metrics", metrics)
            .field("event_log", event_log)
            .field("adopt_every", adopt_every)
            .field("limits", limits)
            .field("connections", connections)
            .field("shutdown_grace", shutdown_grace)
            .field("recover_in_background", recover_in_background)
            .field("auth", auth)
            .field("peer_secret", peer_secret)
            .field("insecure", insecure)
            .field("tls", tls)
            .field("audit", audit)
            .finish()
    }
}

/// Default of [`ServerOptions::shutdown_grace`], below the 40 s the
/// Kubernetes manifests give the pod.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 8082)),
            store: "qscheduler-data".into(),
            store_options: StoreOptions::default(),
            pool: PoolOptions::default(),
            request_timeout: Duration::from_secs(60),
            max_request_bytes: qscheduler_wire::prpc::DEFAULT_MAX_REQUEST_SIZE,
            metrics: MetricsOptions::default(),
            event_log: EventLogOptions::default(),
            adopt_every: Duration::from_secs(1),
            limits: Limits::default(),
            connections: ConnectionOptions::default(),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            recover_in_background: false,
            auth: None,
            peer_secret: None,
            insecure: false,
            tls: None,
            audit: None,
        }
    }
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The store could not be opened.
    #[error("cannot open the store at {location:?}: {source}")]
    Store {
        /// Where.
        location: String,
        /// Why.
        source: qscheduler_store::Error,
    },
    /// Recovery failed as a whole (a single bad pool does not stop the server).
    #[error("recovery: {0}")]
    Recover(#[from] crate::registry::RegistryError),
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The event log could not start.
    #[error(transparent)]
    EventLog(#[from] EventLogError),
    /// Other replicas could not reach this one at the address it would
    /// advertise.
    #[error(
        "cannot advertise {address} to the other replicas: it is not an address they can \
         reach (the server listens on all interfaces); set --advertise HOST:PORT, \
         QSCHEDULER_ADVERTISE or store.advertise_address to this replica's own address \
         (in Kubernetes, the pod IP from the downward API)"
    )]
    Advertise {
        /// The unusable address.
        address: String,
    },
    /// A non-loopback address without `[auth]` and without `--insecure`.
    #[error(
        "refusing to serve {addr} without authentication: anyone who can reach it could \
         change or delete every pool. Add an [auth] section to the configuration (see \
         `qscheduler auth new-token`), listen on a loopback address, or accept the risk \
         with `serve --insecure`"
    )]
    Insecure {
        /// The listen address.
        addr: SocketAddr,
    },
    /// Replicas with `[auth]` that could not tell each other from clients.
    #[error(
        "replicas sharing a PostgreSQL store with [auth] need a peer secret to forward calls \
         to each other: set QSCHEDULER_PEER_SECRET (the same random string, at least 16 \
         characters, on every replica) or [auth] peer_secret_file"
    )]
    PeerSecret,
    /// The audit log could not start (its directory could not be
    /// created).
    #[error("cannot start the audit log: {0}")]
    Audit(std::io::Error),
    /// The TLS certificate, key or client CA could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Route assembly failed.
    #[error("routes: {0}")]
    Routes(#[from] qscheduler_wire::serve::WireError),
    /// The transport failed.
    #[error("transport: {0}")]
    Transport(#[from] std::io::Error),
}

/// A started server.
pub struct Server {
    registry: Arc<Registry>,
    listener: TcpListener,
    router: axum::Router,
    connections: ConnectionOptions,
    event_log: Arc<EventLog>,
    audit: Arc<AuditLog>,
    metrics: Option<Arc<Metrics>>,
    health: Arc<Health>,
    shutdown_grace: Duration,
    recovery: Option<tokio::task::JoinHandle<()>>,
    auth_policy: Option<Arc<PolicyCell>>,
    tls: Option<Arc<TlsAcceptorCell>>,
}

/// How long shutdown waits for the event log to write what is queued.
const EVENT_LOG_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// Passes every observation to several observers, in order.
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

    fn writer_panicked(&self, pool: &str) {
        for o in &self.0 {
            o.writer_panicked(pool);
        }
    }

    /// The first observer's image: one of them keeps derived state.
    fn snapshot_extra(&self, pool: &str) -> Option<ExtraImage> {
        self.0.iter().find_map(|o| o.snapshot_extra(pool))
    }

    fn recovering(&self, pool: &str, extra: Option<&[u8]>) -> Option<Box<dyn Recovering>> {
        self.0.iter().find_map(|o| o.recovering(pool, extra))
    }
}

/// Everything the server answers on its port, over `registry`: the three
/// services on gRPC and pRPC, `/healthz`, the metrics endpoint (when
/// `metrics` is given) and `extra`, behind the per-RPC layer.
/// [`Server::start_with`] serves exactly this; it is public so the whole
/// request path can also be driven in process (the fuzz targets do).
pub fn router(
    registry: &Arc<Registry>,
    metrics: Option<&Arc<Metrics>>,
    options: &ServerOptions,
    extra: axum::Router,
) -> Result<axum::Router, ServerError> {
    let policy = options.auth.clone().map(|p| Arc::new(PolicyCell::new(p)));
    let audit = AuditLog::new(options.audit.clone(), metrics.map(|m| m.admin_calls()))
        .map_err(ServerError::Audit)?;
    router_with(
        registry,
        metrics,
        options,
        extra,
        policy,
        audit,
        Reports::new(),
        |s| s,
    )
}

/// [`router`] with the `[auth]` policy in a cell the caller keeps (to
/// replace it when the configuration changes), the insight reports the
/// pool writers feed, and `more` adding services (gRPC health).
#[allow(clippy::too_many_arguments)]
fn router_with(
    registry: &Arc<Registry>,
    metrics: Option<&Arc<Metrics>>,
    options: &ServerOptions,
    extra: axum::Router,
    policy: Option<Arc<PolicyCell>>,
    audit: Arc<AuditLog>,
    reports: Arc<Reports>,
    more: impl FnOnce(Services) -> Services,
) -> Result<axum::Router, ServerError> {
    let mut pool_services = PoolServices::new(registry.clone(), options.limits.clone())
        .with_auth(options.auth.is_some(), options.peer_secret.clone());
    if let Some(tls) = &options.tls {
        // The CA of client certificates is usually the replicas' CA too.
        let ca = match &tls.client_ca {
            Some(path) => Some(std::fs::read(path).map_err(|e| TlsError::File {
                path: path.clone(),
                reason: e.to_string(),
            })?),
            None => None,
        };
        pool_services = pool_services.with_forwarding_tls(ca);
    }
    let svc = Arc::new(pool_services);
    let insight = Arc::new(Insight::new(
        (*svc).clone(),
        reports,
        options.limits.clone(),
    ));
    let auth = AuthSettings {
        policy,
        peer_secret: options
            .peer_secret
            .as_ref()
            .map(|s| crate::auth::Sha256Hash::of(s.expose().as_bytes())),
        metrics_path: metrics.map(|_| options.metrics.path.clone()),
        sessions: crate::auth::session::Sessions::new(),
    };
    let origins = options
        .auth
        .as_ref()
        .map(|p| p.allowed_origins.clone())
        .unwrap_or_default();
    let mut extra = extra
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(crate::ui::router(
            insight.clone(),
            registry.clone(),
            auth.policy.clone(),
            auth.sessions.clone(),
        ));
    if let Some(m) = metrics {
        extra = extra.merge(m.router(&options.metrics.path));
    }
    let services = Services::new()
        .external_scheduler(svc.clone())
        .admin(svc.clone())
        .view(svc)
        .insight(insight);
    let mut services = more(services)
        .request_timeout(Some(options.request_timeout))
        .max_request_size(options.max_request_bytes)
        .shape_limits(options.limits.shape());
    if !origins.is_empty() {
        services = services.cors(CorsPolicy::AllowList {
            origins,
            allow_credentials: false,
        });
    }
    // The RPC layer is outside the auth layer, so refused calls are
    // measured too.
    Ok(services
        .into_router(extra)?
        .layer(AuthLayer::new(auth))
        .layer(RpcLayer::new(
            metrics.map(|m| m.rpc_histograms()),
            Some(audit),
        )))
}

/// How often the TLS files are checked for a new certificate.
const TLS_RELOAD_EVERY: Duration = Duration::from_secs(5);

/// Serves over TLS: every connection's handshake first.
async fn serve_tls(
    listener: TcpListener,
    router: axum::Router,
    connections: ConnectionOptions,
    shutdown: impl Future<Output = ()>,
    tls: Arc<TlsAcceptorCell>,
) -> std::io::Result<()> {
    tls.spawn_reload(TLS_RELOAD_EVERY);
    qscheduler_wire::conn::serve_with(listener, router, connections, shutdown, move |tcp| {
        let tls = Arc::clone(&tls);
        async move { tls.accept(tcp).await }
    })
    .await
}

/// Refuses a non-loopback listen address without `[auth]`, unless
/// `--insecure` was given; then warns, and returns true (for the
/// `qscheduler_insecure` gauge).
fn check_exposure(options: &ServerOptions) -> Result<bool, ServerError> {
    if options.auth.is_some() || options.listen.ip().is_loopback() {
        return Ok(false);
    }
    if !options.insecure {
        return Err(ServerError::Insecure {
            addr: options.listen,
        });
    }
    tracing::warn!(
        addr = %options.listen,
        "serving a non-loopback address without [auth] (--insecure): anyone who can reach \
         it may change or delete every pool"
    );
    Ok(true)
}

/// First recovery of the pools, then the adoption loop and the ticker that
/// keeps gRPC health in line with readiness.
async fn recover(
    registry: &Arc<Registry>,
    health: &Arc<Health>,
    adopt_every: Duration,
) -> Result<(), ServerError> {
    registry.recover_all().await?;
    registry.spawn_adoption(adopt_every);
    health.set_phase(Phase::Serving).await;
    spawn_health_ticker(registry, health, adopt_every);
    Ok(())
}

/// [`recover`] in the background; a failure is retried by the adoption
/// loop, which starts anyway.
fn spawn_recovery(
    registry: Arc<Registry>,
    health: Arc<Health>,
    adopt_every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = recover(&registry, &health, adopt_every).await {
            error!(error = %e, "recovering the pools failed; the adoption loop retries");
            registry.mark_recovered();
            registry.spawn_adoption(adopt_every);
            health.set_phase(Phase::Serving).await;
            spawn_health_ticker(&registry, &health, adopt_every);
        }
    })
}

/// Refreshes gRPC health every `every` (readiness moves with the adoption
/// loop), until the registry is gone.
fn spawn_health_ticker(registry: &Arc<Registry>, health: &Arc<Health>, every: Duration) {
    let weak = Arc::downgrade(registry);
    let health = Arc::downgrade(health);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let (Some(_r), Some(h)) = (weak.upgrade(), health.upgrade()) else {
                return;
            };
            h.refresh().await;
        }
    });
}

/// True when `location` names a store several replicas share (PostgreSQL),
/// so that the advertised address matters.
fn is_shared_store(location: &str) -> bool {
    location.starts_with("postgres://") || location.starts_with("postgresql://")
}

/// False for an address no other host can connect to: an unspecified IP
/// (0.0.0.0, ::) or port 0. Host names are taken as they are.
fn is_reachable(address: &str) -> bool {
    match address.parse::<SocketAddr>() {
        Ok(a) => !a.ip().is_unspecified() && a.port() != 0,
        Err(_) => !address.trim().is_empty(),
    }
}

impl Server {
    /// Opens the store, recovers every pool, and binds the listener.
    pub async fn start(options: ServerOptions) -> Result<Server, ServerError> {
        Server::start_with(options, Arc::new(NoObserver), axum::Router::new()).await
    }

    /// Like [`Server::start`], with an observer of committed batches and
    /// extra HTTP routes (metrics, dashboards).
    pub async fn start_with(
        options: ServerOptions,
        observer: Arc<dyn Observer>,
        extra: axum::Router,
    ) -> Result<Server, ServerError> {
        let insecure = check_exposure(&options)?;
        let tls = options.tls.clone().map(TlsAcceptorCell::new).transpose()?;
        // Bind first, so that the address other replicas forward to can
        // default to the one actually bound (port 0 included).
        let listener =
            TcpListener::bind(options.listen)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: options.listen,
                    source,
                })?;
        let mut store_options = options.store_options.clone();
        if store_options.advertise_address.is_empty()
            && let Ok(addr) = listener.local_addr()
        {
            store_options.advertise_address = addr.to_string();
        }
        if is_shared_store(&options.store)
            && options.auth.is_some()
            && options.peer_secret.is_none()
        {
            return Err(ServerError::PeerSecret);
        }
        if is_shared_store(&options.store) && !is_reachable(&store_options.advertise_address) {
            return Err(ServerError::Advertise {
                address: store_options.advertise_address,
            });
        }
        let store = Store::open(&options.store, store_options)
            .await
            .map_err(|source| ServerError::Store {
                location: redact_url(&options.store).into_owned(),
                source,
            })?;
        let event_log = EventLog::start(&options.event_log)?;
        let metrics = options
            .metrics
            .enabled
            .then(|| Metrics::new(options.metrics.clone(), event_log.stats()));
        let reports = Reports::new();
        let mut observers: Vec<Arc<dyn Observer>> =
            vec![event_log.clone(), observer, reports.clone()];
        if let Some(m) = &metrics {
            observers.push(m.clone());
        }
        let mut pool_options = options.pool.clone();
        pool_options.queue_bytes = options.limits.pool_queue_bytes;
        pool_options.total_queue_bytes =
            ByteBudget::new("limits.total_queue_bytes", options.limits.total_queue_bytes);
        let registry = Registry::new(store, pool_options, Arc::new(Observers(observers)));
        registry.set_max_pools(options.limits.max_pools);
        if let Some(m) = &metrics {
            m.attach(&registry);
            m.set_insecure(insecure);
        }
        let (health, health_service) = Health::new(registry.clone());
        health.refresh().await;
        let recovery = if options.recover_in_background {
            Some(spawn_recovery(
                registry.clone(),
                health.clone(),
                options.adopt_every,
            ))
        } else {
            recover(&registry, &health, options.adopt_every).await?;
            None
        };
        let readyz = {
            let health = health.clone();
            axum::Router::new().route(
                "/readyz",
                get(move || {
                    let health = health.clone();
                    async move { health.readyz() }
                }),
            )
        };
        let auth_policy = options.auth.clone().map(|p| Arc::new(PolicyCell::new(p)));
        let audit = AuditLog::new(
            options.audit.clone(),
            metrics.as_ref().map(|m| m.admin_calls()),
        )
        .map_err(ServerError::Audit)?;
        let router = router_with(
            &registry,
            metrics.as_ref(),
            &options,
            extra.merge(readyz),
            auth_policy.clone(),
            audit.clone(),
            reports,
            |s| s.open_grpc_service(health_service),
        )?;
        let mut connections = options.connections.clone();
        match raise_open_file_limit() {
            Ok(files) => {
                connections.max_connections =
                    effective_max_connections(connections.max_connections, Some(files));
                info!(
                    soft_limit_at_start = files.before,
                    soft_limit = files.now,
                    hard_limit = files.hard,
                    max_connections = connections.max_connections,
                    "open-file limit"
                );
            }
            Err(e) => tracing::warn!(error = %e, "cannot read or raise the open-file limit"),
        }
        Ok(Server {
            registry,
            listener,
            router,
            connections,
            event_log,
            audit,
            metrics,
            health,
            shutdown_grace: options.shutdown_grace,
            recovery,
            auth_policy,
            tls,
        })
    }

    /// The server's phase and readiness.
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// The `[auth]` policy in force, replaceable while serving (`None`
    /// without `[auth]`).
    pub fn auth_policy(&self) -> Option<&Arc<PolicyCell>> {
        self.auth_policy.as_ref()
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The pools.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The metrics, when enabled.
    pub fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.metrics.as_ref()
    }

    /// Serves until `shutdown` completes, then stops accepting calls, lets
    /// calls in flight finish (their batches included), stops every pool
    /// writer and releases the store.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        let addr = self.listener.local_addr().ok();
        info!(addr = ?addr, pools = self.registry.open_ids().len(), "serving gRPC and pRPC");
        let grace = self.shutdown_grace;
        let registry = self.registry.clone();
        let health = self.health.clone();
        // When the drain is over (or the grace period), the listener
        // stops; `deadline` then bounds what follows.
        let (deadline_tx, deadline_rx) = tokio::sync::oneshot::channel::<tokio::time::Instant>();
        let drained = async move {
            shutdown.await;
            let deadline = tokio::time::Instant::now() + grace;
            let _ = deadline_tx.send(deadline);
            info!(
                grace_ms = grace.as_millis() as u64,
                "stopping: handing pools over"
            );
            health.set_phase(Phase::Draining).await;
            match tokio::time::timeout_at(deadline, registry.drain()).await {
                Ok(n) => info!(pools = n, "pools handed over; no longer accepting calls"),
                Err(_) => warn!("the grace period ended while handing pools over; stopping anyway"),
            }
        };
        let serve = async move {
            match self.tls {
                None => {
                    qscheduler_wire::serve::serve(
                        self.listener,
                        self.router,
                        self.connections,
                        drained,
                    )
                    .await
                }
                Some(tls) => {
                    serve_tls(self.listener, self.router, self.connections, drained, tls).await
                }
            }
        };
        let mut deadline_rx = deadline_rx;
        let res = tokio::select! {
            r = serve => r,
            // The deadline is known once shutdown started; the listener's
            // own graceful stop (calls in flight) must end by then too.
            r = async {
                let deadline = (&mut deadline_rx).await;
                match deadline {
                    Ok(d) => tokio::time::sleep_until(d).await,
                    Err(_) => std::future::pending::<()>().await,
                }
            } => {
                let () = r;
                warn!("the grace period ended with calls still in flight; stopping anyway");
                Ok(())
            }
        };
        if let Some(r) = self.recovery {
            r.abort();
        }
        info!("stopping pool writers");
        let rest = async {
            self.registry.shutdown().await;
            // Every writer has stopped, so no event can follow; no call is
            // left, so no audit record.
            self.event_log.shutdown(EVENT_LOG_FLUSH_TIMEOUT).await;
            self.audit.shutdown(EVENT_LOG_FLUSH_TIMEOUT).await;
        };
        let left = deadline_rx
            .try_recv()
            .ok()
            .map(|d| d.saturating_duration_since(tokio::time::Instant::now()));
        match left {
            Some(left) => {
                if tokio::time::timeout(left.max(Duration::from_secs(1)), rest)
                    .await
                    .is_err()
                {
                    warn!("the grace period ended before the event log was flushed");
                }
            }
            None => rest.await,
        }
        info!("stopped");
        res.map_err(ServerError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_addresses_cannot_be_advertised() {
        for bad in ["0.0.0.0:8082", "[::]:8082", "10.0.0.5:0", ""] {
            assert!(!is_reachable(bad), "{bad}");
        }
        for good in ["10.0.0.5:8082", "[fd00::5]:8082", "qscheduler-0.peers:8082"] {
            assert!(is_reachable(good), "{good}");
        }
        assert!(is_shared_store("postgres://u@h/db"));
        assert!(is_shared_store("postgresql://u@h/db"));
        assert!(!is_shared_store("qscheduler-data"));
    }
}
