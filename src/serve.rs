//! `qscheduler serve`: runs the server until SIGINT or SIGTERM.
//!
//! Settings come from, in increasing precedence: built-in defaults, the
//! configuration file (`--config`), and the command-line flags (and the
//! environment variables that stand for them). `RUST_LOG` overrides the
//! file's log filter.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, anyhow};
use clap::Args;
use qscheduler_server::Server;
use qscheduler_server::config::{Config, LogFormat, check_postgres_url};
use qscheduler_server::health::Phase;
use qscheduler_server::secret::{Secret, SecretUrl};

use crate::telemetry;

/// Options of `qscheduler serve`. Flags without a value keep the setting
/// of the configuration file, or the default shown. Every flag can also be
/// given as the environment variable shown (handy in containers); a flag on
/// the command line wins over the variable.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Configuration file (TOML); see docs/qscheduler.example.toml. Flags
    /// override it.
    #[arg(long, value_name = "FILE", env = "QSCHEDULER_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on for gRPC, pRPC and HTTP (/healthz, /metrics)
    /// [default: 127.0.0.1:8082].
    #[arg(long, env = "QSCHEDULER_LISTEN", value_name = "HOST:PORT")]
    listen: Option<SocketAddr>,
    /// Directory of the embedded store (created if missing), also the home
    /// of the event log files. Only one server may use it at a time
    /// [default: qscheduler-data].
    #[arg(long, env = "QSCHEDULER_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Use this PostgreSQL database instead of the data directory, e.g.
    /// postgres://user@host:5432/db (several replicas may share it).
    #[arg(long, value_name = "URL", env = "QSCHEDULER_STORE")]
    store: Option<SecretUrl>,
    /// How long the first call of a batch waits for others, in
    /// milliseconds (0 = take whatever is already queued) [default: 2].
    #[arg(long, env = "QSCHEDULER_BATCH_WINDOW_MS", value_name = "MS")]
    batch_window_ms: Option<u64>,
    /// Most calls per batch [default: 1000].
    #[arg(long, env = "QSCHEDULER_MAX_BATCH", value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_batch: Option<u64>,
    /// Most calls waiting per pool before new ones get RESOURCE_EXHAUSTED
    /// [default: 10000].
    #[arg(long, env = "QSCHEDULER_QUEUE_CAPACITY", value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    queue_capacity: Option<u64>,
    /// Upper bound on every call's deadline, in seconds [default: 60].
    #[arg(long, env = "QSCHEDULER_REQUEST_TIMEOUT", value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    request_timeout: Option<u64>,
    /// This replica's id in the PostgreSQL lease and replica tables; unique
    /// per live process. Restarting with the same id takes the replica's
    /// pools back at once instead of after the lease expires [default: the
    /// host name, which in Kubernetes is the pod's name; give each replica
    /// its own id when several run on one host].
    #[arg(long, value_name = "ID", env = "QSCHEDULER_REPLICA_ID")]
    replica_id: Option<String>,
    /// Address other replicas use to forward calls to this one
    /// [default: the address the server binds; a replica listening on all
    /// interfaces (0.0.0.0, ::) must set it].
    #[arg(long, env = "QSCHEDULER_ADVERTISE", value_name = "HOST:PORT")]
    advertise: Option<String>,
    /// Write a pool snapshot at least every N log records (smaller means
    /// faster recovery and more snapshot writes) [default: 100000].
    #[arg(long, env = "QSCHEDULER_SNAPSHOT_EVERY_RECORDS", value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    snapshot_every_records: Option<u64>,
    /// Log format: "text" for people, "json" for log collectors
    /// [default: text].
    #[arg(long, env = "QSCHEDULER_LOG_FORMAT", value_name = "FORMAT", value_parser = ["text", "json"])]
    log_format: Option<String>,
    /// Serve a non-loopback address even without an [auth] section: anyone
    /// who reaches the port may then change or delete every pool. The
    /// server warns at start and sets the gauge qscheduler_insecure to 1.
    #[arg(long)]
    insecure: bool,
    /// The secret replicas share to prove forwarded calls come from a peer
    /// (at least 16 characters). Give it through the environment rather
    /// than the command line, which other users of the host can read
    /// [default: [auth] peer_secret_file].
    #[arg(
        long,
        env = "QSCHEDULER_PEER_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    peer_secret: Option<Secret>,
}

impl ServeArgs {
    /// Applies the flags given on the command line to `config`.
    fn apply(&self, config: &mut Config) -> anyhow::Result<()> {
        if let Some(v) = self.listen {
            config.server.listen = v;
        }
        if let Some(v) = &self.data_dir {
            config.store.data_dir = v.clone();
        }
        if let Some(v) = &self.store {
            let v = v.expose();
            if v.contains("://") {
                check_postgres_url(v).map_err(|e| anyhow!("--store: {e}"))?;
                config.store.postgres_url = Some(v.to_owned());
            } else {
                // A plain path names an embedded store, as it always did.
                config.store.postgres_url = None;
                config.store.data_dir = PathBuf::from(v);
            }
        }
        if let Some(v) = self.batch_window_ms {
            config.batching.window = Duration::from_millis(v);
        }
        if let Some(v) = self.max_batch {
            config.batching.max_batch = usize::try_from(v).unwrap_or(usize::MAX);
        }
        if let Some(v) = self.queue_capacity {
            config.batching.queue_capacity = usize::try_from(v).unwrap_or(usize::MAX);
        }
        if let Some(v) = self.request_timeout {
            config.batching.request_timeout = Duration::from_secs(v);
        }
        if let Some(v) = &self.replica_id {
            config.store.replica_id = Some(v.clone());
        }
        if let Some(v) = &self.advertise {
            config.store.advertise_address = Some(v.clone());
        }
        if let Some(v) = self.snapshot_every_records {
            config.batching.snapshot_every_records = v;
        }
        if let Some(v) = &self.log_format {
            config.logging.format = if v == "json" {
                LogFormat::Json
            } else {
                LogFormat::Text
            };
        }
        Ok(())
    }
}

/// How often the configuration file is checked for [auth] changes.
const RELOAD_EVERY: Duration = Duration::from_secs(5);

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutdown requested");
}

/// Runs the server.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::load(path).map_err(|e| anyhow!("{}", e.report()))?,
        None => Config::default(),
    };
    args.apply(&mut config)?;
    let mut options = config.server_options()?;
    // Answer probes (and calls) while the pools recover; /readyz and gRPC
    // health say when recovery is over.
    options.recover_in_background = true;
    options.insecure = args.insecure;
    if let Some(secret) = &args.peer_secret {
        let secret = secret.expose().trim();
        if secret.len() < 16 {
            anyhow::bail!(
                "QSCHEDULER_PEER_SECRET (--peer-secret) is too short: use at least 16 random \
                 characters"
            );
        }
        options.peer_secret = Some(secret.into());
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // The OTLP exporter spawns onto the runtime, so logging starts inside it.
    let telemetry = rt.block_on(async { telemetry::init(&config.logging, &config.tracing) })?;
    tracing::info!(version = crate::VERSION, "qscheduler starting");
    if let Some(path) = &args.config {
        tracing::info!(config = %path.display(), "configuration loaded");
    }
    let result = rt.block_on(async {
        let server = Server::start(options)
            .await
            .context("starting the server")?;
        let addr = server.local_addr().context("reading the bound address")?;
        if let (Some(path), Some(policy)) = (&args.config, server.auth_policy()) {
            qscheduler_server::auth::spawn_reload(path.clone(), policy.clone(), RELOAD_EVERY);
        }
        tracing::info!(%addr, "listening; recovering pools (GET /readyz says when done)");
        // "ready" (with the address) once the pools are recovered: what
        // scripts and tests wait for, like the readiness probe.
        let health = server.health().clone();
        tokio::spawn(async move {
            while health.phase() == Phase::Recovering {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if health.phase() == Phase::Serving {
                tracing::info!(%addr, "ready");
            }
        });
        server.run(shutdown_signal()).await.context("serving")
    });
    rt.block_on(telemetry.shutdown());
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        serve: ServeArgs,
    }

    #[test]
    fn debug_never_prints_a_secret() {
        let cmd = Cmd::try_parse_from([
            "serve",
            "--peer-secret",
            "peer-hunter2-0123456789",
            "--store",
            "postgres://qs:db-hunter2@db:5432/qs",
        ])
        .unwrap();
        let printed = format!("{:?}", cmd.serve);
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(
            printed.contains("postgres://qs:<redacted>@db:5432/qs"),
            "{printed}"
        );
        let mut config = Config::default();
        cmd.serve.apply(&mut config).unwrap();
        assert_eq!(
            config.store.postgres_url.as_deref(),
            Some("postgres://qs:db-hunter2@db:5432/qs")
        );
    }
}
