//! The server's configuration file (TOML).
//!
//! Every setting has a default, so an empty file (or none at all) gives the
//! zero-configuration server; `docs/qscheduler.example.toml` lists every
//! key with its default. Command-line flags of `qscheduler serve` override
//! the file.
//!
//! Validation happens while the file is parsed: each value is checked by
//! the deserializer of its field, so an error carries the position of the
//! offending value (or key, for unknown keys) and `qscheduler config check`
//! can point at the line. The few rules that relate two settings keep the
//! position of the setting that has to change.
//!
//! Durations are strings with a unit (`"2ms"`, `"1.5s"`, `"1h"`) so a value
//! can never be read in the wrong unit; byte sizes are integers (bytes) or
//! strings with a unit (`"64MiB"`).

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};
use toml::Spanned;

use qscheduler_wire::conn::ConnectionOptions;

use crate::audit::{AuditOptions, AuditPostgres};
use crate::auth::oidc::{OidcGrant, OidcOptions, OidcVerifier};
use crate::auth::{
    CertificateEntry, Grant, Kind, Policy, Pools, Principal, Role, Sha256Hash, TokenEntry,
};
use crate::eventlog::{EventLogOptions, FileSinkOptions, PostgresSinkOptions};
use crate::limits::Limits;
use crate::metrics::MetricsOptions;
use crate::pool::PoolOptions;
use crate::secret::{RedactedUrl, Secret, redact_url};
use crate::server::ServerOptions;
use crate::tls::TlsOptions;

/// The whole configuration file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Network settings.
    pub server: ServerSection,
    /// Where pools are stored.
    pub store: StoreSection,
    /// Batching of calls per pool, deadlines, snapshots.
    pub batching: BatchingSection,
    /// The task event log.
    pub event_log: EventLogSection,
    /// The Prometheus endpoint.
    pub metrics: MetricsSection,
    /// Log output.
    pub logging: LoggingSection,
    /// Trace export.
    pub tracing: TracingSection,
    /// Request limits and memory budgets.
    pub limits: LimitsSection,
    /// Connection limits.
    pub connections: ConnectionsSection,
    /// Who may call. Its presence alone turns authorization on: every call
    /// is then refused unless a credential grants it.
    pub auth: Option<AuthSection>,
    /// TLS on the server's port.
    pub tls: Option<TlsSection>,
}

/// `[server]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Address for gRPC, pRPC and HTTP.
    #[serde(deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    /// Longest a graceful stop (SIGTERM) takes: handing the pools over,
    /// finishing calls in flight and flushing the event log. Past it the
    /// server exits anyway. Keep it below the orchestrator's own grace
    /// period (Kubernetes: terminationGracePeriodSeconds).
    #[serde(deserialize_with = "positive_duration")]
    pub shutdown_grace: Duration,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            listen: SocketAddr::from(([127, 0, 0, 1], 8082)),
            shutdown_grace: crate::server::DEFAULT_SHUTDOWN_GRACE,
        }
    }
}

/// `[store]`. Its `Debug` hides the password of `postgres_url`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// Directory of the embedded store, and the default home of the event
    /// log files (also when the pools live in PostgreSQL).
    #[serde(deserialize_with = "path")]
    pub data_dir: PathBuf,
    /// Keep the pools in this PostgreSQL database instead of `data_dir`.
    #[serde(deserialize_with = "postgres_url_opt")]
    pub postgres_url: Option<String>,
    /// This replica's id among the replicas sharing a PostgreSQL store.
    /// `None`: the host name (a pod's name in Kubernetes), or
    /// `replica-<process id>` when it has none.
    #[serde(deserialize_with = "non_empty_opt")]
    pub replica_id: Option<String>,
    /// Address other replicas use to reach this one. `None`: the listen
    /// address.
    #[serde(deserialize_with = "non_empty_opt")]
    pub advertise_address: Option<String>,
    /// How long a pool's writer lease lasts without renewal (PostgreSQL).
    #[serde(deserialize_with = "positive_duration")]
    pub lease_ttl: Duration,
    /// Schema of the tables (PostgreSQL). `None`: the connection's
    /// `search_path`.
    #[serde(deserialize_with = "identifier_opt")]
    pub pg_schema: Option<String>,
    /// Connections to PostgreSQL.
    #[serde(deserialize_with = "positive_u32")]
    pub pg_max_connections: u32,
}

impl std::fmt::Debug for StoreSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let StoreSection {
            data_dir,
            postgres_url,
            replica_id,
            advertise_address,
            lease_ttl,
            pg_schema,
            pg_max_connections,
        } = self;
        f.debug_struct("StoreSection")
            .field("data_dir", data_dir)
            .field("postgres_url", &postgres_url.as_deref().map(RedactedUrl))
            .field("replica_id", replica_id)
            .field("advertise_address", advertise_address)
            .field("lease_ttl", lease_ttl)
            .field("pg_schema", pg_schema)
            .field("pg_max_connections", pg_max_connections)
            .finish()
    }
}

impl Default for StoreSection {
    fn default() -> Self {
        let store = qscheduler_store::StoreOptions::default();
        StoreSection {
            data_dir: PathBuf::from("qscheduler-data"),
            postgres_url: None,
            replica_id: None,
            advertise_address: None,
            lease_ttl: store.lease_ttl,
            pg_schema: None,
            pg_max_connections: store.pg_max_connections,
        }
    }
}

/// `[batching]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchingSection {
    /// How long the first call of a batch waits for others.
    #[serde(deserialize_with = "duration")]
    pub window: Duration,
    /// Most calls in one batch.
    #[serde(deserialize_with = "positive_usize")]
    pub max_batch: usize,
    /// Most calls waiting per pool before `RESOURCE_EXHAUSTED`.
    #[serde(deserialize_with = "positive_usize")]
    pub queue_capacity: usize,
    /// Upper bound on every call's deadline.
    #[serde(deserialize_with = "positive_duration")]
    pub request_timeout: Duration,
    /// Largest accepted request.
    #[serde(deserialize_with = "positive_byte_size")]
    pub max_request_size: u64,
    /// Snapshot after this many log records...
    #[serde(deserialize_with = "positive_u64")]
    pub snapshot_every_records: u64,
    /// ...or this many log bytes, whichever comes first.
    #[serde(deserialize_with = "positive_byte_size")]
    pub snapshot_every_bytes: u64,
}

impl Default for BatchingSection {
    fn default() -> Self {
        let pool = PoolOptions::default();
        let server = ServerOptions::default();
        BatchingSection {
            window: pool.batch_window,
            max_batch: pool.max_batch,
            queue_capacity: pool.queue_capacity,
            request_timeout: server.request_timeout,
            max_request_size: server.max_request_bytes as u64,
            snapshot_every_records: pool.snapshot_every_records,
            snapshot_every_bytes: pool.snapshot_every_bytes,
        }
    }
}

/// `[limits]`: what one request may hold, how far ahead its clock may be,
/// and how many bytes of calls may wait (see [`crate::limits`]).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Most notifications in one NotifyTasks call.
    #[serde(deserialize_with = "positive_usize")]
    pub max_notifications_per_call: usize,
    /// Most bots in one AssignTasks call.
    #[serde(deserialize_with = "positive_usize")]
    pub max_bots_per_call: usize,
    /// Most dimensions of one bot.
    #[serde(deserialize_with = "positive_usize")]
    pub max_dimensions_per_bot: usize,
    /// Most dimensions of one task slice.
    #[serde(deserialize_with = "positive_usize")]
    pub max_dimensions_per_slice: usize,
    /// Most slices of one task.
    #[serde(deserialize_with = "positive_usize")]
    pub max_slices_per_task: usize,
    /// Most tags of one task.
    #[serde(deserialize_with = "positive_usize")]
    pub max_tags_per_task: usize,
    /// Most items in one request, all repeated fields together.
    #[serde(deserialize_with = "positive_usize")]
    pub max_items_per_call: usize,
    /// Most bytes of one dimension or tag.
    #[serde(deserialize_with = "positive_usize")]
    pub max_label_bytes: usize,
    /// Most bytes of a pool, account, task or bot id.
    #[serde(deserialize_with = "positive_usize")]
    pub max_id_bytes: usize,
    /// Most characters of such an id.
    #[serde(deserialize_with = "positive_usize")]
    pub max_id_chars: usize,
    /// How far ahead of the server's clock a call's time may be.
    #[serde(deserialize_with = "positive_duration")]
    pub max_clock_skew: Duration,
    /// Largest bot expiration a pool may be given.
    #[serde(deserialize_with = "positive_duration")]
    pub max_bot_expiration: Duration,
    /// Most pools in the store.
    #[serde(deserialize_with = "positive_usize")]
    pub max_pools: usize,
    /// Most bytes of calls waiting for one pool.
    #[serde(deserialize_with = "positive_byte_size")]
    pub pool_queue_bytes: u64,
    /// Most bytes of calls waiting for all pools.
    #[serde(deserialize_with = "positive_byte_size")]
    pub total_queue_bytes: u64,
}

impl Default for LimitsSection {
    fn default() -> Self {
        let l = Limits::default();
        LimitsSection {
            max_notifications_per_call: l.max_notifications_per_call,
            max_bots_per_call: l.max_bots_per_call,
            max_dimensions_per_bot: l.max_dimensions_per_bot,
            max_dimensions_per_slice: l.max_dimensions_per_slice,
            max_slices_per_task: l.max_slices_per_task,
            max_tags_per_task: l.max_tags_per_task,
            max_items_per_call: l.max_items_per_call,
            max_label_bytes: l.max_label_bytes,
            max_id_bytes: l.max_id_bytes,
            max_id_chars: l.max_id_chars,
            max_clock_skew: l.max_clock_skew,
            max_bot_expiration: l.max_bot_expiration,
            max_pools: l.max_pools,
            pool_queue_bytes: l.pool_queue_bytes as u64,
            total_queue_bytes: l.total_queue_bytes as u64,
        }
    }
}

/// `[connections]`: limits on the connections callers hold (see
/// `qscheduler_wire::conn`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionsSection {
    /// Most connections open at once.
    #[serde(deserialize_with = "positive_usize")]
    pub max_connections: usize,
    /// Time to send a request's headers.
    #[serde(deserialize_with = "positive_duration")]
    pub header_read_timeout: Duration,
    /// A connection without a call for this long is closed.
    #[serde(deserialize_with = "positive_duration")]
    pub idle_timeout: Duration,
    /// Most concurrent calls on one HTTP/2 connection.
    #[serde(deserialize_with = "positive_u32")]
    pub http2_max_concurrent_streams: u32,
    /// Streams a client may reset before they are accepted.
    #[serde(deserialize_with = "positive_usize")]
    pub http2_max_pending_accept_reset_streams: usize,
    /// Streams reset for the client's errors before the connection closes.
    #[serde(deserialize_with = "positive_usize")]
    pub http2_max_local_error_reset_streams: usize,
    /// Interval of HTTP/2 keepalive pings ("0": none).
    #[serde(deserialize_with = "duration")]
    pub http2_keepalive_interval: Duration,
    /// A ping unanswered this long closes the connection.
    #[serde(deserialize_with = "positive_duration")]
    pub http2_keepalive_timeout: Duration,
}

impl Default for ConnectionsSection {
    fn default() -> Self {
        let c = ConnectionOptions::default();
        ConnectionsSection {
            max_connections: c.max_connections,
            header_read_timeout: c.header_read_timeout,
            idle_timeout: c.idle_timeout,
            http2_max_concurrent_streams: c.http2_max_concurrent_streams,
            http2_max_pending_accept_reset_streams: c.http2_max_pending_accept_reset_streams,
            http2_max_local_error_reset_streams: c.http2_max_local_error_reset_streams,
            http2_keepalive_interval: c.http2_keepalive_interval.unwrap_or_default(),
            http2_keepalive_timeout: c.http2_keepalive_timeout,
        }
    }
}

/// `[event_log]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventLogSection {
    /// Events held in memory per sink while it catches up; beyond it the
    /// oldest are dropped (and counted).
    #[serde(deserialize_with = "positive_usize")]
    pub buffer_events: usize,
    /// `[event_log.files]`.
    pub files: FilesSection,
    /// `[event_log.postgres]`.
    pub postgres: PostgresSection,
}

impl Default for EventLogSection {
    fn default() -> Self {
        EventLogSection {
            buffer_events: EventLogOptions::default().buffer_events,
            files: FilesSection::default(),
            postgres: PostgresSection::default(),
        }
    }
}

/// `[event_log.files]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilesSection {
    /// Write JSON-lines files.
    pub enabled: bool,
    /// Their directory. `None`: `events` under `store.data_dir`.
    #[serde(deserialize_with = "path_opt")]
    pub dir: Option<PathBuf>,
    /// Start a new file once the current one reaches this size.
    #[serde(deserialize_with = "positive_byte_size")]
    pub max_file_size: u64,
    /// Start a new file once the current one is this old.
    #[serde(deserialize_with = "positive_duration")]
    pub max_file_age: Duration,
    /// Files kept (the current one included); older ones are deleted.
    #[serde(deserialize_with = "positive_usize")]
    pub max_files: usize,
    /// Disk budget of the files together; the oldest are deleted to stay
    /// under it.
    #[serde(deserialize_with = "positive_byte_size")]
    pub max_total_size: u64,
    /// Events are dropped rather than written while less than this is free
    /// on the disk.
    #[serde(deserialize_with = "byte_size")]
    pub min_free_disk: u64,
}

impl Default for FilesSection {
    fn default() -> Self {
        let f = FileSinkOptions::new(PathBuf::new());
        FilesSection {
            enabled: true,
            dir: None,
            max_file_size: f.max_file_bytes,
            max_file_age: f.max_file_age,
            max_files: f.max_files,
            max_total_size: f.max_total_bytes,
            min_free_disk: f.min_free_disk_bytes,
        }
    }
}

/// `[event_log.postgres]`. Its `Debug` hides the password of `url`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresSection {
    /// Also insert events into a PostgreSQL table.
    pub enabled: Option<Spanned<bool>>,
    /// The database. `None`: the store's, when the store is PostgreSQL.
    #[serde(deserialize_with = "postgres_url_opt")]
    pub url: Option<String>,
    /// Schema of the table. `None`: the connection's `search_path`.
    #[serde(deserialize_with = "identifier_opt")]
    pub schema: Option<String>,
    /// The table (created if missing).
    #[serde(deserialize_with = "identifier")]
    pub table: String,
    /// Most rows per INSERT.
    #[serde(deserialize_with = "positive_usize")]
    pub batch_rows: usize,
}

impl std::fmt::Debug for PostgresSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let PostgresSection {
            enabled,
            url,
            schema,
            table,
            batch_rows,
        } = self;
        f.debug_struct("PostgresSection")
            .field("enabled", enabled)
            .field("url", &url.as_deref().map(RedactedUrl))
            .field("schema", schema)
            .field("table", table)
            .field("batch_rows", batch_rows)
            .finish()
    }
}

impl Default for PostgresSection {
    fn default() -> Self {
        let p = PostgresSinkOptions::new(String::new());
        PostgresSection {
            enabled: None,
            url: None,
            schema: None,
            table: p.table,
            batch_rows: p.batch_rows,
        }
    }
}

impl PostgresSection {
    /// Whether the PostgreSQL sink is on.
    pub fn is_enabled(&self) -> bool {
        self.enabled.as_ref().is_some_and(|e| *e.get_ref())
    }
}

/// `[metrics]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// Serve Prometheus metrics.
    pub enabled: bool,
    /// On this HTTP path of the server's port.
    #[serde(deserialize_with = "http_path")]
    pub path: String,
    /// Export the per-label series (label utilisation gauges, spend per
    /// label).
    pub label_metrics: bool,
    /// At most this many labels per pool in the label utilisation gauges
    /// (the most used ones).
    #[serde(deserialize_with = "positive_usize")]
    pub max_labels_per_pool: usize,
}

impl Default for MetricsSection {
    fn default() -> Self {
        let m = MetricsOptions::default();
        MetricsSection {
            enabled: m.enabled,
            path: m.path,
            label_metrics: m.label_metrics,
            max_labels_per_pool: m.max_labels_per_pool,
        }
    }
}

/// Log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// For people.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// `[logging]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingSection {
    /// Which events to log, in `RUST_LOG` syntax (`RUST_LOG` overrides it).
    #[serde(deserialize_with = "log_filter")]
    pub filter: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

/// The log filter when neither the file nor `RUST_LOG` sets one: transport
/// internals are only interesting when something is wrong.
pub const DEFAULT_LOG_FILTER: &str = "info,h2=warn,hyper=warn,tower=warn,sqlx=warn";

impl Default for LoggingSection {
    fn default() -> Self {
        LoggingSection {
            filter: DEFAULT_LOG_FILTER.to_owned(),
            format: LogFormat::Text,
        }
    }
}

/// `[tracing]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingSection {
    /// Export spans over OTLP/gRPC to this collector (`http://host:4317`).
    /// `None`: no export.
    #[serde(deserialize_with = "http_url_opt")]
    pub otlp_endpoint: Option<String>,
    /// The `service.name` resource attribute of exported spans.
    #[serde(deserialize_with = "non_empty")]
    pub service_name: String,
}

impl Default for TracingSection {
    fn default() -> Self {
        TracingSection {
            otlp_endpoint: None,
            service_name: "qscheduler".to_owned(),
        }
    }
}

/// `[auth]`: principals and what they may do (see [`crate::auth`]).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// Browser origins (`https://host[:port]`) allowed to call pRPC; none
    /// by default.
    #[serde(deserialize_with = "origins")]
    pub allowed_origins: Vec<String>,
    /// `[[auth.tokens]]`: static bearer tokens, by their SHA-256.
    pub tokens: Vec<TokenSection>,
    /// When set, `/metrics` needs a bearer token with this SHA-256.
    #[serde(deserialize_with = "sha256_opt")]
    pub metrics_token_sha256: Option<Sha256Hash>,
    /// A file holding the secret replicas prove themselves to each other
    /// with (`QSCHEDULER_PEER_SECRET` overrides it).
    #[serde(deserialize_with = "readable_file_opt")]
    pub peer_secret_file: Option<PathBuf>,
    /// `[auth.oidc]`: JWT bearer tokens checked against a JWKS file.
    pub oidc: Option<OidcSection>,
    /// How long a dashboard sign-in lasts (at most 30 days).
    #[serde(deserialize_with = "session_ttl")]
    pub dashboard_session_ttl: Duration,
    /// Dashboard sessions kept at most; the oldest makes room.
    #[serde(deserialize_with = "positive_usize")]
    pub dashboard_max_sessions: usize,
    /// A header an authenticating proxy in front of the server sets to the
    /// principal's name; believed on `/ui/` requests when set. Only for a
    /// server no client can reach except through that proxy.
    #[serde(deserialize_with = "proxy_header_opt")]
    pub proxy_user_header: Option<String>,
}

impl Default for AuthSection {
    fn default() -> Self {
        AuthSection {
            allowed_origins: Vec::new(),
            tokens: Vec::new(),
            metrics_token_sha256: None,
            peer_secret_file: None,
            oidc: None,
            dashboard_session_ttl: crate::auth::session::DEFAULT_TTL,
            dashboard_max_sessions: crate::auth::session::DEFAULT_MAX_SESSIONS,
            proxy_user_header: None,
        }
    }
}

/// One `[[auth.tokens]]` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSection {
    /// The principal's name (in logs, audit records and messages).
    pub name: Spanned<String>,
    /// Lower-case hex SHA-256 of the token.
    #[serde(deserialize_with = "sha256")]
    pub sha256: Sha256Hash,
    /// `swarming`, `admin` and/or `view`.
    pub roles: Spanned<Vec<Role>>,
    /// Pools the roles apply to (`"*"`: all, the default).
    pub pools: Option<Spanned<Vec<String>>>,
}

/// `[auth.oidc]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcSection {
    /// The tokens' `iss`.
    #[serde(deserialize_with = "non_empty")]
    pub issuer: String,
    /// The `aud` the tokens must carry.
    #[serde(deserialize_with = "non_empty")]
    pub audience: String,
    /// The issuer's signing keys (a JWKS document), re-read when it changes.
    #[serde(deserialize_with = "jwks_file")]
    pub jwks_file: PathBuf,
    /// `[[auth.oidc.grants]]`: what each subject or email may do.
    #[serde(default)]
    pub grants: Vec<OidcGrantSection>,
    /// How far `exp` and `nbf` may be off the server's clock.
    #[serde(default = "default_clock_skew", deserialize_with = "duration")]
    pub clock_skew: Duration,
}

fn default_clock_skew() -> Duration {
    Duration::from_secs(60)
}

/// One `[[auth.oidc.grants]]` entry: a `subject` or an `email`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcGrantSection {
    /// The token's `sub`.
    pub subject: Option<Spanned<String>>,
    /// The token's `email` (verified).
    pub email: Option<Spanned<String>>,
    /// Roles.
    pub roles: Spanned<Vec<Role>>,
    /// Pools (`"*"`: all, the default).
    pub pools: Option<Spanned<Vec<String>>>,
}

/// `[tls]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM certificate chain, re-read when it changes.
    #[serde(deserialize_with = "readable_file")]
    pub cert: PathBuf,
    /// PEM private key, re-read when it changes.
    #[serde(deserialize_with = "readable_file")]
    pub key: PathBuf,
    /// PEM CA certificates of client certificates; turns mTLS on.
    #[serde(default, deserialize_with = "readable_file_opt")]
    pub client_ca: Option<PathBuf>,
    /// `[[tls.grants]]`: principals named by a certificate SAN.
    #[serde(default)]
    pub grants: Vec<TlsGrantSection>,
}

/// One `[[tls.grants]]` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsGrantSection {
    /// A DNS name or URI SAN of the client certificate.
    pub san: Spanned<String>,
    /// Roles.
    pub roles: Spanned<Vec<Role>>,
    /// Pools (`"*"`: all, the default).
    pub pools: Option<Spanned<Vec<String>>>,
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a valid configuration.
    #[error("{}:{}:{}: {}", path.display(), at.line, at.column, message)]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Where (1-based).
        at: Position,
        /// The source line, for display.
        source_line: String,
        /// What is wrong.
        message: String,
    },
    /// The settings (file and flags together) contradict each other.
    #[error("{0}")]
    Unusable(String),
}

/// A position in the file, 1-based.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    /// Line number.
    pub line: usize,
    /// Column, in characters.
    pub column: usize,
}

impl ConfigError {
    /// A human-readable report: the error, and the offending line with a
    /// marker under the column.
    pub fn report(&self) -> String {
        match self {
            ConfigError::Read { .. } | ConfigError::Unusable(_) => self.to_string(),
            ConfigError::Invalid {
                at, source_line, ..
            } => {
                let gutter = at.line.to_string().len();
                format!(
                    "{self}\n{:gutter$} |\n{} | {source_line}\n{:gutter$} | {:>col$}",
                    "",
                    at.line,
                    "",
                    "^",
                    col = at.column
                )
            }
        }
    }
}

/// The host name, when it is a usable replica id: in a container it is the
/// pod's (or container's) name, unique among the live replicas, and stable
/// across restarts of a StatefulSet's pod.
fn default_replica_id() -> Option<String> {
    let name = gethostname::gethostname().into_string().ok()?;
    let name = name.trim();
    let usable = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    usable.then(|| name.to_owned())
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates configuration text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let invalid = |span: Option<Range<usize>>, message: String| {
            let offset = span.map(|s| s.start).unwrap_or(0);
            let (at, source_line) = position(text, offset);
            ConfigError::Invalid {
                path: path.to_owned(),
                at,
                source_line,
                message,
            }
        };
        let config: Config =
            toml::from_str(text).map_err(|e| invalid(e.span(), clean_message(e.message())))?;
        // Whether the PostgreSQL event log has a database is checked by
        // `server_options`, once flags and the environment (the store's URL
        // often comes from QSCHEDULER_STORE) are applied.
        config.check_auth(&invalid)?;
        Ok(config)
    }

    /// The rules of `[auth]` and `[tls]` that span several values: unique
    /// names and hashes, grants with roles, well-formed pool lists.
    fn check_auth(
        &self,
        invalid: &dyn Fn(Option<Range<usize>>, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let check_grant = |roles: &Spanned<Vec<Role>>,
                           pools: &Option<Spanned<Vec<String>>>|
         -> Result<(), ConfigError> {
            if roles.get_ref().is_empty() {
                return Err(invalid(
                    Some(roles.span()),
                    "roles must not be empty: give one or more of \"swarming\", \"admin\", \"view\""
                        .to_owned(),
                ));
            }
            if let Some(pools) = pools {
                if pools.get_ref().is_empty() {
                    return Err(invalid(
                        Some(pools.span()),
                        "pools must not be empty: list pool ids, or \"*\" for all (the default)"
                            .to_owned(),
                    ));
                }
                for p in pools.get_ref() {
                    if p.trim().is_empty() || p.chars().any(char::is_control) || p.contains(' ') {
                        return Err(invalid(
                            Some(pools.span()),
                            format!("invalid pool {p:?}: a pool id, or \"*\" for all"),
                        ));
                    }
                }
            }
            Ok(())
        };
        if let Some(auth) = &self.auth {
            let mut names = std::collections::HashSet::new();
            let mut hashes = std::collections::HashSet::new();
            for t in &auth.tokens {
                let name = t.name.get_ref();
                if name.trim().is_empty() || name.chars().any(char::is_control) {
                    return Err(invalid(
                        Some(t.name.span()),
                        "invalid token name: must not be empty".to_owned(),
                    ));
                }
                if !names.insert(name.clone()) {
                    return Err(invalid(
                        Some(t.name.span()),
                        format!("duplicate token name {name:?}: names must be unique"),
                    ));
                }
                if !hashes.insert(t.sha256.0) {
                    return Err(invalid(
                        Some(t.name.span()),
                        format!(
                            "token {name:?} has the same sha256 as an earlier token: give each \
                             caller its own token"
                        ),
                    ));
                }
                check_grant(&t.roles, &t.pools)?;
            }
            if let Some(oidc) = &auth.oidc {
                for g in &oidc.grants {
                    match (&g.subject, &g.email) {
                        (None, None) => {
                            return Err(invalid(
                                Some(g.roles.span()),
                                "an [[auth.oidc.grants]] entry needs a subject or an email"
                                    .to_owned(),
                            ));
                        }
                        (Some(_), Some(e)) => {
                            return Err(invalid(
                                Some(e.span()),
                                "an [[auth.oidc.grants]] entry has either a subject or an email, \
                                 not both"
                                    .to_owned(),
                            ));
                        }
                        (Some(v), None) | (None, Some(v)) if v.get_ref().trim().is_empty() => {
                            return Err(invalid(Some(v.span()), "must not be empty".to_owned()));
                        }
                        _ => {}
                    }
                    check_grant(&g.roles, &g.pools)?;
                }
            }
        }
        if let Some(tls) = &self.tls {
            for g in &tls.grants {
                if g.san.get_ref().trim().is_empty() {
                    return Err(invalid(Some(g.san.span()), "must not be empty".to_owned()));
                }
                check_grant(&g.roles, &g.pools)?;
            }
            if !tls.grants.is_empty() && tls.client_ca.is_none() {
                return Err(invalid(
                    Some(tls.grants[0].san.span()),
                    "[[tls.grants]] need [tls] client_ca: without it no client certificate \
                     is asked for"
                        .to_owned(),
                ));
            }
        }
        Ok(())
    }

    /// The `[auth]` policy, when the section exists.
    pub fn auth_policy(&self) -> Result<Option<Policy>, ConfigError> {
        let Some(auth) = &self.auth else {
            return Ok(None);
        };
        let grant = |roles: &Spanned<Vec<Role>>, pools: &Option<Spanned<Vec<String>>>| Grant {
            roles: roles.get_ref().clone(),
            pools: Pools::from_list(pools.as_ref().map(|p| p.get_ref().as_slice())),
        };
        let tokens = auth
            .tokens
            .iter()
            .map(|t| TokenEntry {
                sha256: t.sha256,
                principal: std::sync::Arc::new(Principal {
                    name: t.name.get_ref().clone(),
                    kind: Kind::Token,
                    grants: vec![grant(&t.roles, &t.pools)],
                }),
            })
            .collect();
        let certificates = self
            .tls
            .iter()
            .flat_map(|t| &t.grants)
            .map(|g| CertificateEntry {
                san: g.san.get_ref().clone(),
                principal: std::sync::Arc::new(Principal {
                    name: g.san.get_ref().clone(),
                    kind: Kind::Certificate,
                    grants: vec![grant(&g.roles, &g.pools)],
                }),
            })
            .collect();
        let oidc = match &auth.oidc {
            Some(o) => {
                let grants = o
                    .grants
                    .iter()
                    .map(|g| {
                        let subject = g.subject.as_ref().map(|v| v.get_ref().clone());
                        let email = g.email.as_ref().map(|v| v.get_ref().clone());
                        OidcGrant {
                            principal: std::sync::Arc::new(Principal {
                                name: subject
                                    .clone()
                                    .or_else(|| email.clone())
                                    .unwrap_or_default(),
                                kind: Kind::Oidc,
                                grants: vec![grant(&g.roles, &g.pools)],
                            }),
                            subject,
                            email,
                        }
                    })
                    .collect();
                let verifier = OidcVerifier::new(OidcOptions {
                    issuer: o.issuer.clone(),
                    audience: o.audience.clone(),
                    jwks_file: o.jwks_file.clone(),
                    grants,
                    leeway: o.clock_skew,
                })
                .map_err(ConfigError::Unusable)?;
                Some(std::sync::Arc::new(verifier))
            }
            None => None,
        };
        Ok(Some(Policy {
            tokens,
            allowed_origins: auth.allowed_origins.clone(),
            metrics_token: auth.metrics_token_sha256,
            certificates,
            oidc,
            dashboard: crate::auth::DashboardAuth {
                session_ttl: auth.dashboard_session_ttl,
                max_sessions: auth.dashboard_max_sessions,
                proxy_user_header: auth
                    .proxy_user_header
                    .as_deref()
                    .and_then(|h| http::HeaderName::from_bytes(h.as_bytes()).ok()),
            },
        }))
    }

    /// Where the store lives: the PostgreSQL URL, or the data directory.
    pub fn store_location(&self) -> Result<String, ConfigError> {
        match &self.store.postgres_url {
            Some(url) => Ok(url.clone()),
            None => self
                .store
                .data_dir
                .to_str()
                .map(str::to_owned)
                .ok_or_else(|| {
                    ConfigError::Unusable("store.data_dir must be valid UTF-8".to_owned())
                }),
        }
    }

    /// The server options this configuration describes.
    pub fn server_options(&self) -> Result<ServerOptions, ConfigError> {
        let mut options = ServerOptions {
            listen: self.server.listen,
            shutdown_grace: self.server.shutdown_grace,
            store: self.store_location()?,
            request_timeout: self.batching.request_timeout,
            max_request_bytes: usize::try_from(self.batching.max_request_size)
                .unwrap_or(usize::MAX),
            ..ServerOptions::default()
        };
        let so = &mut options.store_options;
        so.replica_id = match &self.store.replica_id {
            Some(id) => id.clone(),
            None => default_replica_id().unwrap_or_else(|| so.replica_id.clone()),
        };
        // Empty means the address the server actually binds (so port 0
        // works for replicas too).
        so.advertise_address = self.store.advertise_address.clone().unwrap_or_default();
        so.lease_ttl = self.store.lease_ttl;
        so.pg_schema = self.store.pg_schema.clone();
        so.pg_max_connections = self.store.pg_max_connections;

        let b = &self.batching;
        options.pool = PoolOptions {
            batch_window: b.window,
            max_batch: b.max_batch,
            queue_capacity: b.queue_capacity,
            snapshot_every_records: b.snapshot_every_records,
            snapshot_every_bytes: b.snapshot_every_bytes,
            ..PoolOptions::default()
        };

        let l = &self.limits;
        let pool_queue_bytes = usize::try_from(l.pool_queue_bytes).unwrap_or(usize::MAX);
        if pool_queue_bytes / 2 < options.max_request_bytes {
            return Err(ConfigError::Unusable(format!(
                "limits.pool_queue_bytes ({}) must hold at least one largest request, twice \
                 batching.max_request_size ({}) in memory",
                l.pool_queue_bytes, self.batching.max_request_size
            )));
        }
        if l.total_queue_bytes < l.pool_queue_bytes {
            return Err(ConfigError::Unusable(format!(
                "limits.total_queue_bytes ({}) must be at least limits.pool_queue_bytes ({})",
                l.total_queue_bytes, l.pool_queue_bytes
            )));
        }
        options.limits = Limits {
            max_notifications_per_call: l.max_notifications_per_call,
            max_bots_per_call: l.max_bots_per_call,
            max_dimensions_per_bot: l.max_dimensions_per_bot,
            max_dimensions_per_slice: l.max_dimensions_per_slice,
            max_slices_per_task: l.max_slices_per_task,
            max_tags_per_task: l.max_tags_per_task,
            max_items_per_call: l.max_items_per_call,
            max_label_bytes: l.max_label_bytes,
            max_id_bytes: l.max_id_bytes,
            max_id_chars: l.max_id_chars,
            max_clock_skew: l.max_clock_skew,
            max_bot_expiration: l.max_bot_expiration,
            max_pools: l.max_pools,
            pool_queue_bytes,
            total_queue_bytes: usize::try_from(l.total_queue_bytes).unwrap_or(usize::MAX),
        };
        let c = &self.connections;
        options.connections = ConnectionOptions {
            max_connections: c.max_connections,
            header_read_timeout: c.header_read_timeout,
            idle_timeout: c.idle_timeout,
            http2_max_concurrent_streams: c.http2_max_concurrent_streams,
            http2_max_pending_accept_reset_streams: c.http2_max_pending_accept_reset_streams,
            http2_max_local_error_reset_streams: c.http2_max_local_error_reset_streams,
            http2_keepalive_interval: (!c.http2_keepalive_interval.is_zero())
                .then_some(c.http2_keepalive_interval),
            http2_keepalive_timeout: c.http2_keepalive_timeout,
        };

        let m = &self.metrics;
        options.metrics = MetricsOptions {
            enabled: m.enabled,
            path: m.path.clone(),
            label_metrics: m.label_metrics,
            max_labels_per_pool: m.max_labels_per_pool,
        };

        let e = &self.event_log;
        let files = e.files.enabled.then(|| FileSinkOptions {
            dir: e
                .files
                .dir
                .clone()
                .unwrap_or_else(|| self.store.data_dir.join("events")),
            max_file_bytes: e.files.max_file_size,
            max_file_age: e.files.max_file_age,
            max_files: e.files.max_files,
            max_total_bytes: e.files.max_total_size,
            min_free_disk_bytes: e.files.min_free_disk,
        });
        let postgres = if e.postgres.is_enabled() {
            let url = e
                .postgres
                .url
                .clone()
                .or_else(|| self.store.postgres_url.clone())
                .ok_or_else(|| {
                    ConfigError::Unusable(
                        "the PostgreSQL event log needs event_log.postgres.url or \
                         store.postgres_url"
                            .to_owned(),
                    )
                })?;
            Some(PostgresSinkOptions {
                url,
                schema: e.postgres.schema.clone(),
                table: e.postgres.table.clone(),
                batch_rows: e.postgres.batch_rows,
            })
        } else {
            None
        };
        // The audit table goes where the event table goes, or else into
        // the store's database.
        let audit_postgres = match (&postgres, &self.store.postgres_url) {
            (Some(p), _) => Some(AuditPostgres::new(p.url.clone(), p.schema.clone())),
            (None, Some(url)) => Some(AuditPostgres::new(
                url.clone(),
                self.store.pg_schema.clone(),
            )),
            (None, None) => None,
        };
        options.event_log = EventLogOptions {
            buffer_events: e.buffer_events,
            files,
            postgres,
        };
        options.auth = self.auth_policy()?;
        options.audit = Some(AuditOptions {
            postgres: audit_postgres,
            ..AuditOptions::new(self.store.data_dir.join("audit"))
        });
        if let Some(auth) = &self.auth
            && let Some(path) = &auth.peer_secret_file
        {
            options.peer_secret = Some(read_secret(path)?);
        }
        if let Some(tls) = &self.tls {
            if !tls.grants.is_empty() && self.auth.is_none() {
                return Err(ConfigError::Unusable(
                    "[[tls.grants]] name principals, which only an [auth] section uses: add \
                     [auth]"
                        .to_owned(),
                ));
            }
            options.tls = Some(TlsOptions {
                cert: tls.cert.clone(),
                key: tls.key.clone(),
                client_ca: tls.client_ca.clone(),
            });
        }

        Ok(options)
    }
}

/// A secret from a file: its content without surrounding white space.
fn read_secret(path: &Path) -> Result<Secret, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let secret = text.trim();
    if secret.len() < 16 {
        return Err(ConfigError::Unusable(format!(
            "the peer secret in {} is too short: use at least 16 random characters",
            path.display()
        )));
    }
    Ok(secret.into())
}

/// The line and column of a byte offset, and the text of that line.
fn position(text: &str, offset: usize) -> (Position, String) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line = before.matches('\n').count() + 1;
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    let source_line = text
        .get(line_start..)
        .and_then(|rest| rest.lines().next())
        .unwrap_or("");
    // The line is shown with the error: not a database password in it.
    (
        Position { line, column },
        redact_url(source_line).into_owned(),
    )
}

/// toml's messages end with a newline and sometimes repeat themselves; one
/// line reads better after `file:line:col:`.
fn clean_message(m: &str) -> String {
    m.trim().replace('\n', "; ")
}

// ---- value parsers: each returns the reason a value is refused ----

/// Parses `"<number><unit>"` with unit ns, us, ms, s, m or h; `"0"` is zero.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    if t.starts_with('-') {
        return Err(format!("invalid duration {s:?}: must not be negative"));
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| {
            format!("invalid duration {s:?}: missing unit (ns, us, ms, s, m or h), e.g. \"2ms\"")
        })?;
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected a number followed by a unit"))?;
    let scale = match unit.trim() {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "invalid duration {s:?}: unknown unit {other:?} (use ns, us, ms, s, m or h)"
            ));
        }
    };
    Duration::try_from_secs_f64(value * scale)
        .map_err(|_| format!("invalid duration {s:?}: out of range"))
}

/// Parses a byte size: a plain number of bytes, or a number with a unit
/// (B, KB, MB, GB = powers of 1000; KiB, MiB, GiB = powers of 1024).
pub fn parse_byte_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.starts_with('-') {
        return Err(format!("invalid size {s:?}: must not be negative"));
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected a number of bytes, e.g. \"64MiB\""))?;
    let scale: f64 = match unit.trim() {
        "" | "B" => 1.0,
        "KB" | "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "invalid size {s:?}: unknown unit {other:?} (use B, KB, MB, GB, KiB, MiB or GiB)"
            ));
        }
    };
    let bytes = value * scale;
    if !bytes.is_finite() || bytes > u64::MAX as f64 {
        return Err(format!("invalid size {s:?}: too large"));
    }
    Ok(bytes as u64)
}

/// Checks a `postgres://` or `postgresql://` URL. The messages show it
/// without its password.
pub fn check_postgres_url(s: &str) -> Result<(), String> {
    let shown = redact_url(s);
    let scheme = s.split_once("://").map(|(scheme, _)| scheme);
    match scheme {
        Some("postgres" | "postgresql") => {}
        Some(other) => {
            return Err(format!(
                "unsupported URL scheme {other:?} in {shown:?}: expected postgres:// or postgresql://"
            ));
        }
        None => {
            return Err(format!(
                "invalid URL {shown:?}: expected postgres://user@host:port/database"
            ));
        }
    }
    // Parsing the rest is sqlx's job, but a syntax error is better caught
    // here, with a line number, than at startup. sqlx's message may quote
    // the URL.
    s.parse::<sqlx::postgres::PgConnectOptions>()
        .map(|_| ())
        .map_err(|e| {
            let e = e.to_string();
            let e = match s.split_once("://").and_then(|(_, r)| r.split_once('@')) {
                Some((user_info, _)) => match user_info.split_once(':') {
                    Some((_, password)) if !password.is_empty() => {
                        e.replace(password, "<redacted>")
                    }
                    _ => e,
                },
                None => e,
            };
            format!("invalid PostgreSQL URL {shown:?}: {e}")
        })
}

fn check_identifier(s: &str) -> Result<(), String> {
    let mut chars = s.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && s.len() <= 63;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid SQL name {s:?}: use lowercase letters, digits and '_', \
             starting with a letter or '_', at most 63 characters"
        ))
    }
}

// ---- serde adapters ----

/// A number or a string, for settings that accept both (sizes) or that
/// want to explain why a bare number is refused (durations).
enum IntOrString {
    Int(i64),
    Float(f64),
    String(String),
}

impl<'de> Deserialize<'de> for IntOrString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = IntOrString;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string with a unit, or a number")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<IntOrString, E> {
                Ok(IntOrString::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<IntOrString, E> {
                i64::try_from(v)
                    .map(IntOrString::Int)
                    .map_err(|_| E::custom(format!("invalid value {v}: too large")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<IntOrString, E> {
                Ok(IntOrString::Float(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<IntOrString, E> {
                Ok(IntOrString::String(v.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(|_| {
        de::Error::custom(format!(
            "invalid address {s:?}: expected IP:PORT, e.g. \"127.0.0.1:8082\" or \"[::]:8082\""
        ))
    })
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    match IntOrString::deserialize(d)? {
        IntOrString::String(s) => parse_duration(&s).map_err(de::Error::custom),
        IntOrString::Int(0) => Ok(Duration::ZERO),
        IntOrString::Int(n) => Err(de::Error::custom(format!(
            "invalid duration {n}: give a unit, e.g. \"{n}ms\" or \"{n}s\""
        ))),
        IntOrString::Float(n) => Err(de::Error::custom(format!(
            "invalid duration {n}: give a unit, e.g. \"{n}s\""
        ))),
    }
}

fn positive_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let v = duration(d)?;
    if v.is_zero() {
        return Err(de::Error::custom("must be greater than zero"));
    }
    Ok(v)
}

fn session_ttl<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let v = duration(d)?;
    if v < Duration::from_secs(60) || v > Duration::from_secs(30 * 86_400) {
        return Err(de::Error::custom(
            "a dashboard session lasts from one minute to 30 days",
        ));
    }
    Ok(v)
}

fn proxy_header_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?.to_ascii_lowercase();
    if http::HeaderName::from_bytes(s.as_bytes()).is_err() {
        return Err(de::Error::custom(format!("{s:?} is not a header name")));
    }
    // Headers that carry credentials or routing of their own.
    let reserved = ["authorization", "cookie", "host", "origin", "content-type"];
    if reserved.contains(&s.as_str()) || s.starts_with("x-qscheduler-") {
        return Err(de::Error::custom(format!(
            "{s:?} cannot name the dashboard's user: choose the header the proxy sets, such as \"x-forwarded-user\""
        )));
    }
    Ok(Some(s))
}

fn positive_byte_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = byte_size(d)?;
    if v == 0 {
        return Err(de::Error::custom("must be greater than zero"));
    }
    Ok(v)
}

fn byte_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = match IntOrString::deserialize(d)? {
        IntOrString::String(s) => parse_byte_size(&s).map_err(de::Error::custom)?,
        IntOrString::Int(n) => u64::try_from(n)
            .map_err(|_| de::Error::custom(format!("invalid size {n}: must not be negative")))?,
        IntOrString::Float(n) => {
            return Err(de::Error::custom(format!(
                "invalid size {n}: a whole number of bytes, or a string like \"1.5MiB\""
            )));
        }
    };
    Ok(v)
}

fn positive_i64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let n = i64::deserialize(d)?;
    if n <= 0 {
        return Err(de::Error::custom(format!(
            "invalid value {n}: must be at least 1"
        )));
    }
    Ok(n)
}

fn positive_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    positive_i64(d).map(|n| n as u64)
}

fn positive_usize<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let n = positive_i64(d)?;
    usize::try_from(n).map_err(|_| de::Error::custom(format!("invalid value {n}: too large")))
}

fn positive_u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = positive_i64(d)?;
    u32::try_from(n).map_err(|_| de::Error::custom(format!("invalid value {n}: too large")))
}

fn non_empty<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if s.trim().is_empty() {
        return Err(de::Error::custom("must not be empty"));
    }
    Ok(s)
}

fn path<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    non_empty(d).map(PathBuf::from)
}

fn path_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    path(d).map(Some)
}

fn non_empty_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    non_empty(d).map(Some)
}

fn postgres_url_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    check_postgres_url(&s).map_err(de::Error::custom)?;
    Ok(Some(s))
}

fn http_url_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    match s.split_once("://") {
        Some(("http" | "https", rest)) if !rest.is_empty() => Ok(Some(s)),
        Some((scheme, _)) if scheme != "http" && scheme != "https" => Err(de::Error::custom(
            format!("unsupported URL scheme {scheme:?} in {s:?}: expected http:// or https://"),
        )),
        _ => Err(de::Error::custom(format!(
            "invalid URL {s:?}: expected http://host:port"
        ))),
    }
}

fn identifier<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    check_identifier(&s).map_err(de::Error::custom)?;
    Ok(s)
}

fn identifier_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    identifier(d).map(Some)
}

fn http_path<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    // Only plain characters: the router reads `{`, `*` and `:` as route
    // syntax (and refuses some of it by panicking).
    let plain = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.'));
    if !s.starts_with('/') || s.len() < 2 || !plain || s.contains("//") {
        return Err(de::Error::custom(format!(
            "invalid path {s:?}: expected an absolute path of letters, digits, '-', '_', \
             '.' and '/', like \"/metrics\""
        )));
    }
    // gRPC routes are `/<package.Service>/<Method>`.
    let first = s[1..].split('/').next().unwrap_or_default();
    if s == "/healthz" || first == "prpc" || first.contains('.') {
        return Err(de::Error::custom(format!(
            "invalid path {s:?}: it is taken by the server's own routes"
        )));
    }
    Ok(s)
}

fn sha256<'de, D: Deserializer<'de>>(d: D) -> Result<Sha256Hash, D::Error> {
    let s = String::deserialize(d)?;
    Sha256Hash::parse(&s).map_err(de::Error::custom)
}

fn sha256_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Sha256Hash>, D::Error> {
    sha256(d).map(Some)
}

fn readable_file<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    let p = path(d)?;
    std::fs::File::open(&p)
        .and_then(|f| f.metadata())
        .and_then(|m| {
            if m.is_file() {
                Ok(())
            } else {
                Err(std::io::Error::other("not a regular file"))
            }
        })
        .map_err(|e| de::Error::custom(format!("cannot read {}: {e}", p.display())))?;
    Ok(p)
}

fn readable_file_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    readable_file(d).map(Some)
}

fn jwks_file<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    let p = readable_file(d)?;
    crate::auth::oidc::read_jwks(&p).map_err(de::Error::custom)?;
    Ok(p)
}

fn origins<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let list = Vec::<String>::deserialize(d)?;
    for o in &list {
        let ok = match o.split_once("://") {
            Some(("http" | "https", host)) => {
                !host.is_empty()
                    && !host.contains('/')
                    && host.chars().all(|c| {
                        c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']')
                    })
            }
            _ => false,
        };
        if !ok {
            return Err(de::Error::custom(format!(
                "invalid origin {o:?}: expected scheme://host[:port] with no path, e.g. \
                 \"https://ui.example.com\""
            )));
        }
    }
    Ok(list)
}

fn log_filter<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    tracing_subscriber::EnvFilter::builder()
        .parse(&s)
        .map_err(|e| de::Error::custom(format!("invalid log filter {s:?}: {e}")))?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> (usize, String) {
        match Config::parse(text, Path::new("t.toml")) {
            Ok(_) => panic!("accepted: {text}"),
            Err(ConfigError::Invalid { at, message, .. }) => (at.line, message),
            Err(e) => panic!("unexpected error {e}"),
        }
    }

    #[test]
    fn empty_file_is_the_default() {
        let c = Config::parse("", Path::new("t.toml")).unwrap();
        let o = c.server_options().unwrap();
        let d = ServerOptions::default();
        assert_eq!(o.listen, d.listen);
        assert_eq!(o.store, d.store);
        assert_eq!(o.pool.batch_window, d.pool.batch_window);
        assert_eq!(o.pool.max_batch, d.pool.max_batch);
        assert_eq!(o.pool.queue_capacity, d.pool.queue_capacity);
        assert_eq!(o.request_timeout, d.request_timeout);
        assert_eq!(o.max_request_bytes, d.max_request_bytes);
        assert_eq!(
            o.event_log.files.unwrap().dir,
            PathBuf::from("qscheduler-data/events")
        );
        assert!(o.event_log.postgres.is_none());
        assert!(o.metrics.enabled);
    }

    #[test]
    fn the_audit_table_follows_the_event_table_or_the_store() {
        let audit = |toml: &str| {
            Config::parse(toml, Path::new("t.toml"))
                .unwrap()
                .server_options()
                .unwrap()
                .audit
                .expect("an audit log")
        };
        let a = audit("[store]\ndata_dir = \"d\"\n");
        assert_eq!(a.dir, PathBuf::from("d/audit"));
        assert!(a.postgres.is_none(), "files only without a database");
        let pg = audit(
            "[store]\npostgres_url = \"postgres://u@store/db\"\npg_schema = \"qs\"\n\
             [event_log.postgres]\nenabled = true\nurl = \"postgres://u@events/db\"\n\
             schema = \"ev\"\n",
        )
        .postgres
        .expect("a table");
        assert_eq!(
            pg,
            AuditPostgres::new("postgres://u@events/db".into(), Some("ev".into()))
        );
        let pg = audit("[store]\npostgres_url = \"postgres://u@store/db\"\npg_schema = \"qs\"\n")
            .postgres
            .expect("a table");
        assert_eq!(
            pg,
            AuditPostgres::new("postgres://u@store/db".into(), Some("qs".into()))
        );
        assert_eq!(pg.table, crate::audit::AUDIT_TABLE);
    }

    #[test]
    fn debug_never_prints_a_secret() {
        let dir = tempfile::tempdir().unwrap();
        let secret_file = dir.path().join("peer");
        std::fs::write(&secret_file, "peer-secret-hunter2-0123456789\n").unwrap();
        let token_hash = crate::auth::Sha256Hash::of(b"qs_token-hunter2").to_hex();
        let toml = format!(
            "[store]\npostgres_url = \"postgres://qs:db-hunter2@store/db\"\n\
             [event_log.postgres]\nenabled = true\n\
             url = \"postgres://qs:ev-hunter2@events/db\"\n\
             [auth]\npeer_secret_file = {:?}\nmetrics_token_sha256 = \"{token_hash}\"\n\
             [[auth.tokens]]\nname = \"ops\"\nsha256 = \"{token_hash}\"\nroles = [\"admin\"]\n",
            secret_file.to_str().unwrap()
        );
        let config = Config::parse(&toml, Path::new("t.toml")).unwrap();
        let options = config.server_options().unwrap();
        assert_eq!(
            options.peer_secret.as_ref().map(Secret::expose),
            Some("peer-secret-hunter2-0123456789")
        );
        for printed in [
            format!("{config:?}"),
            format!("{options:?}"),
            format!("{options:#?}"),
            format!("{:?}", options.auth),
            format!("{:?}", options.audit),
        ] {
            assert!(!printed.contains("hunter2"), "{printed}");
            assert!(!printed.contains(&token_hash), "a token's hash: {printed}");
        }
        assert!(format!("{options:?}").contains("qs:<redacted>@store/db"));
        // Nor an error about a URL.
        let e = check_postgres_url("postgres://qs:hunter2@h:notaport/db").unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
        let e = check_postgres_url("mysql://qs:hunter2@h/db").unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
        let (_, line) = position("x = \"postgres://qs:hunter2@h/db\"\n", 4);
        assert!(!line.contains("hunter2"), "{line}");
    }

    #[test]
    fn budgets_must_hold_the_largest_request() {
        let c = Config::parse(
            "[batching]\nmax_request_size = \"8MiB\"\n[limits]\npool_queue_bytes = \"10MiB\"\n",
            Path::new("t.toml"),
        )
        .unwrap();
        let e = c.server_options().unwrap_err().to_string();
        assert!(e.contains("limits.pool_queue_bytes"), "{e}");
        let c = Config::parse(
            "[limits]\npool_queue_bytes = \"64MiB\"\ntotal_queue_bytes = \"32MiB\"\n",
            Path::new("t.toml"),
        )
        .unwrap();
        let e = c.server_options().unwrap_err().to_string();
        assert!(e.contains("limits.total_queue_bytes"), "{e}");
        let (line, msg) = err("[limits]\nmax_clock_skew = \"0\"\n");
        assert_eq!(line, 2, "{msg}");
        let (line, msg) = err("[connections]\nmax_connections = 0\n");
        assert_eq!(line, 2, "{msg}");
        let c = Config::parse(
            "[connections]\nhttp2_keepalive_interval = \"0\"\n[limits]\nmax_pools = 3\n",
            Path::new("t.toml"),
        )
        .unwrap();
        let o = c.server_options().unwrap();
        assert_eq!(o.connections.http2_keepalive_interval, None);
        assert_eq!(o.limits.max_pools, 3);
    }

    #[test]
    fn the_example_file_shows_the_defaults() {
        let text = include_str!("../../../docs/qscheduler.example.toml");
        let mut c = Config::parse(text, Path::new("example.toml")).unwrap();
        assert!(!c.event_log.postgres.is_enabled());
        c.event_log.postgres.enabled = None;
        let d = Config::default();
        assert_eq!(format!("{c:?}"), format!("{d:?}"));
        // Every commented-out key is a real key too.
        let uncommented: String = text
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest) if rest.contains(" = ") => rest,
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        Config::parse(&uncommented, Path::new("example.toml")).unwrap();
    }

    /// The keys of the table at `path` (`""`: the top level) as the parser
    /// knows them: it refuses an unknown key with the list of the known
    /// ones. `None` when `path` is not a table of keys (a plain setting).
    fn known_keys(path: &str) -> Option<Vec<String>> {
        let text = if path.is_empty() {
            "qscheduler_probe = 1\n".to_owned()
        } else {
            format!("[{path}]\nqscheduler_probe = 1\n")
        };
        match Config::parse(&text, Path::new("probe.toml")) {
            Err(ConfigError::Invalid { message, .. })
                if message.contains("unknown field `qscheduler_probe`") =>
            {
                let (_, expected) = message.split_once("expected")?;
                Some(
                    expected
                        .split('`')
                        .skip(1)
                        .step_by(2)
                        .map(str::to_owned)
                        .collect(),
                )
            }
            _ => None,
        }
    }

    /// Every setting of the file, as (table, key), found by walking the
    /// tables from the top.
    fn every_setting(table: &str, out: &mut Vec<(String, String)>) {
        for key in known_keys(table).unwrap_or_default() {
            let path = if table.is_empty() {
                key.clone()
            } else {
                format!("{table}.{key}")
            };
            if known_keys(&path).is_some() {
                every_setting(&path, out);
            } else {
                out.push((table.to_owned(), key));
            }
        }
    }

    /// Every setting (limits, budgets and connection settings among them)
    /// is in the example file, in its table, set or commented out; the
    /// test above checks that the values shown are the defaults. Only
    /// `[auth]` and `[tls]`, whose presence is the setting, are described
    /// rather than listed.
    #[test]
    fn the_example_file_lists_every_setting() {
        let text = include_str!("../../../docs/qscheduler.example.toml");
        let mut listed = std::collections::BTreeSet::new();
        let mut table = String::new();
        for line in text.lines() {
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                table = name.to_owned();
            } else if let Some((key, _)) = line.trim_start_matches("# ").split_once(" = ") {
                listed.insert((table.clone(), key.to_owned()));
            }
        }
        let mut settings = Vec::new();
        every_setting("", &mut settings);
        let tables: std::collections::BTreeSet<&str> =
            settings.iter().map(|(t, _)| t.as_str()).collect();
        for t in ["limits", "connections", "batching", "event_log.files"] {
            assert!(tables.contains(t), "the walk missed [{t}]: {tables:?}");
        }
        let mut missing = Vec::new();
        for (table, key) in &settings {
            if table == "auth" || table.starts_with("auth.") || table == "tls" {
                continue;
            }
            if !listed.contains(&(table.clone(), key.clone())) {
                missing.push(format!("[{table}] {key}"));
            }
        }
        assert!(missing.is_empty(), "not in the example file: {missing:?}");
        for section in ["[auth]", "[tls]"] {
            assert!(text.contains(section), "{section} is not described");
        }

        // And `config check` (the same parser) refuses a nonsensical value
        // of each of them at its line.
        for (table, key) in &settings {
            if table == "auth" || table.starts_with("auth.") || table == "tls" {
                continue;
            }
            let (line, msg) = err(&format!("[{table}]\n\n{key} = -1\n"));
            assert_eq!(line, 3, "[{table}] {key}: {msg}");
        }
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("2ms"), Ok(Duration::from_millis(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("-2ms").unwrap_err().contains("negative"));
        assert!(parse_duration("2").unwrap_err().contains("unit"));
        assert!(parse_duration("2 fortnights").unwrap_err().contains("unit"));
        assert_eq!(parse_byte_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_byte_size("1KB"), Ok(1000));
        assert_eq!(parse_byte_size("17"), Ok(17));
        assert!(parse_byte_size("1 XB").is_err());
    }

    #[test]
    fn errors_point_at_the_line() {
        let (line, msg) = err("[batching]\nmax_batch = 10\nwindow = \"-2ms\"\n");
        assert_eq!(line, 3);
        assert!(msg.contains("negative"), "{msg}");

        let (line, msg) = err("\n[server]\nlistne = \"127.0.0.1:1\"\n");
        assert_eq!(line, 3);
        assert!(msg.contains("unknown field `listne`"), "{msg}");

        let (line, msg) = err("[server]\nlisten = \"localhost\"\n");
        assert_eq!(line, 2);
        assert!(msg.contains("invalid address"), "{msg}");

        let (line, msg) = err("[store]\n\npostgres_url = \"mysql://x/y\"\n");
        assert_eq!(line, 3);
        assert!(msg.contains("scheme \"mysql\""), "{msg}");

        let (line, msg) = err("[batching]\nmax_batch = \"ten\"\n");
        assert_eq!(line, 2);
        assert!(msg.contains("invalid type"), "{msg}");

        let (line, msg) = err("[batching]\nqueue_capacity = 0\n");
        assert_eq!(line, 2);
        assert!(msg.contains("at least 1"), "{msg}");

        let (line, msg) = err("[logging]\nformat = \"xml\"\n");
        assert_eq!(line, 2);
        assert!(msg.contains("xml"), "{msg}");

        let (line, msg) = err("[logging]\nfilter = \"info,[[\"\n");
        assert_eq!(line, 2);
        assert!(msg.contains("log filter"), "{msg}");

        let (line, msg) = err("[tracing]\notlp_endpoint = \"ftp://x\"\n");
        assert_eq!(line, 2);
        assert!(msg.contains("scheme"), "{msg}");

        for taken in ["/healthz", "/prpc/x", "/qscheduler.QSchedulerAdmin/Wipe"] {
            let (line, msg) = err(&format!("[metrics]\npath = \"{taken}\"\n"));
            assert_eq!(line, 2);
            assert!(msg.contains("taken"), "{msg}");
        }
        for bad in ["metrics", "/:id", "/{x}", "/a b", "//"] {
            let (_, msg) = err(&format!("[metrics]\npath = \"{bad}\"\n"));
            assert!(msg.contains("invalid path"), "{bad}: {msg}");
        }

        // Only an error once nothing (flag, environment) gave the store a
        // PostgreSQL URL.
        let c = Config::parse(
            "[event_log.postgres]\nenabled = true\n",
            Path::new("t.toml"),
        )
        .expect("parses");
        let msg = c.server_options().expect_err("no database").to_string();
        assert!(msg.contains("needs event_log.postgres.url"), "{msg}");
        let mut c = c;
        c.store.postgres_url = Some("postgres://u@h/db".to_owned());
        assert!(c.server_options().is_ok());

        let (line, msg) = err("[batching]\nwindow = 1.5\n");
        assert_eq!(line, 2);
        assert!(msg.contains("give a unit"), "{msg}");

        let (line, msg) = err("[batching]\nmax_request_size = true\n");
        assert_eq!(line, 2);
        assert!(msg.contains("a string with a unit, or a number"), "{msg}");

        let (line, msg) = err("[event_log.files]\ndir = \"\"\n");
        assert_eq!(line, 2);
        assert!(msg.contains("must not be empty"), "{msg}");

        let (line, _) = err("[server\nlisten = 1\n");
        assert_eq!(line, 1);
    }

    #[test]
    fn auth_and_tls_errors_point_at_the_line() {
        let good = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let token = |extra: &str| {
            format!(
                "[auth]\n[[auth.tokens]]\nname = \"a\"\nsha256 = \"{good}\"\nroles = [\"view\"]\n{extra}"
            )
        };
        let c = Config::parse(&token("pools = [\"p1\"]\n"), Path::new("t.toml")).unwrap();
        let p = c.auth_policy().unwrap().unwrap();
        assert_eq!(p.tokens.len(), 1);
        assert_eq!(p.tokens[0].principal.name, "a");
        assert!(
            Config::parse("", Path::new("t.toml"))
                .unwrap()
                .auth
                .is_none()
        );
        assert!(
            Config::parse("[auth]\n", Path::new("t.toml"))
                .unwrap()
                .auth
                .is_some()
        );

        let (line, msg) = err(&token("").replace(good, "ABC"));
        assert_eq!(line, 4, "{msg}");
        assert!(msg.contains("malformed SHA-256"), "{msg}");
        let (line, msg) = err(&token("").replace(good, &good.to_uppercase()));
        assert_eq!(line, 4, "{msg}");
        let (line, msg) = err(&token("").replace("\"view\"", "\"root\""));
        assert_eq!(line, 5, "{msg}");
        assert!(msg.contains("root") && msg.contains("swarming"), "{msg}");
        let (line, msg) = err(&token("").replace("[\"view\"]", "[]"));
        assert_eq!(line, 5, "{msg}");
        let (line, msg) = err(&token("pools = []\n"));
        assert_eq!(line, 6, "{msg}");
        let dup = format!(
            "{}[[auth.tokens]]\nname = \"a\"\nsha256 = \"{}\"\nroles = [\"admin\"]\n",
            token(""),
            good.replace('0', "1")
        );
        let (line, msg) = err(&dup);
        assert_eq!(line, 7, "{msg}");
        assert!(msg.contains("duplicate"), "{msg}");
        let (line, msg) = err("[auth]\nmetrics_token_sha256 = \"xyz\"\n");
        assert_eq!(line, 2, "{msg}");
        let (line, msg) = err("[auth]\nallowed_origins = [\"https://a.example/path\"]\n");
        assert_eq!(line, 2, "{msg}");
        assert!(msg.contains("invalid origin"), "{msg}");

        // The dashboard's sign-in settings.
        let c = Config::parse(
            "[auth]\ndashboard_session_ttl = \"2h\"\ndashboard_max_sessions = 7\nproxy_user_header = \"X-Forwarded-User\"\n",
            Path::new("t.toml"),
        )
        .unwrap();
        let d = c.auth_policy().unwrap().unwrap().dashboard;
        assert_eq!(d.session_ttl, Duration::from_secs(7200));
        assert_eq!(d.max_sessions, 7);
        assert_eq!(d.proxy_user_header.unwrap().as_str(), "x-forwarded-user");
        let d = Config::parse("[auth]\n", Path::new("t.toml"))
            .unwrap()
            .auth_policy()
            .unwrap()
            .unwrap()
            .dashboard;
        assert_eq!(d.session_ttl, crate::auth::session::DEFAULT_TTL);
        assert_eq!(d.max_sessions, crate::auth::session::DEFAULT_MAX_SESSIONS);
        assert!(d.proxy_user_header.is_none());
        let (line, msg) = err("[auth]\n\ndashboard_session_ttl = \"1s\"\n");
        assert_eq!(line, 3, "{msg}");
        assert!(msg.contains("one minute to 30 days"), "{msg}");
        let (line, _) = err("[auth]\ndashboard_max_sessions = 0\n");
        assert_eq!(line, 2);
        let (line, msg) = err("[auth]\nproxy_user_header = \"Authorization\"\n");
        assert_eq!(line, 2, "{msg}");
        let (line, msg) = err("[auth]\nproxy_user_header = \"bad header\"\n");
        assert_eq!(line, 2, "{msg}");

        let (line, msg) = err("[tls]\ncert = \"/nonexistent/tls.crt\"\nkey = \"/nonexistent/k\"\n");
        assert_eq!(line, 2, "{msg}");
        assert!(msg.contains("cannot read /nonexistent/tls.crt"), "{msg}");

        let dir = tempfile::tempdir().unwrap();
        let jwks = dir.path().join("jwks.json");
        std::fs::write(&jwks, r#"{"keys": []}"#).unwrap();
        let oidc = format!(
            "[auth]\n[auth.oidc]\nissuer = \"https://i\"\naudience = \"q\"\njwks_file = {:?}\n",
            jwks.display().to_string()
        );
        let (line, msg) = err(&oidc);
        assert_eq!(line, 5, "{msg}");
        assert!(msg.contains("no keys"), "{msg}");
        std::fs::write(
            &jwks,
            r#"{"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}]}"#,
        )
        .unwrap();
        Config::parse(&oidc, Path::new("t.toml")).unwrap();
        let (line, msg) = err(&format!("{oidc}[[auth.oidc.grants]]\nroles = [\"view\"]\n"));
        assert_eq!(line, 7, "{msg}");
        assert!(msg.contains("subject or an email"), "{msg}");
    }

    #[test]
    fn report_shows_the_line() {
        let e = Config::parse("[batching]\nwindow = \"-1s\"\n", Path::new("c.toml")).unwrap_err();
        let r = e.report();
        assert!(r.starts_with("c.toml:2:10: "), "{r}");
        assert!(r.contains("2 | window = \"-1s\""), "{r}");
    }
}
