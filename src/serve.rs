//! `qscheduler serve`: runs the server until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use qscheduler_server::{Server, ServerOptions};
use tracing_subscriber::EnvFilter;

/// Options of `qscheduler serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on for gRPC, pRPC and HTTP (/healthz).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:8082")]
    listen: SocketAddr,
    /// Directory of the embedded store (created if missing). Only one
    /// server may use it at a time.
    #[arg(long, value_name = "DIR", default_value = "qscheduler-data")]
    data_dir: PathBuf,
    /// Use this PostgreSQL database instead of the data directory, e.g.
    /// postgres://user@host:5432/db (several replicas may share it).
    #[arg(long, value_name = "URL", env = "QSCHEDULER_STORE")]
    store: Option<String>,
    /// How long the first call of a batch waits for others, in
    /// milliseconds (0 = take whatever is already queued).
    #[arg(long, value_name = "MS", default_value_t = 2)]
    batch_window_ms: u64,
    /// Most calls per batch.
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    max_batch: u64,
    /// Most calls waiting per pool before new ones get RESOURCE_EXHAUSTED.
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    queue_capacity: u64,
    /// Upper bound on every call's deadline, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    request_timeout: u64,
    /// This replica's id in the PostgreSQL lease and replica tables; unique
    /// per live process. Restarting with the same id takes the replica's
    /// pools back at once instead of after the lease expires.
    #[arg(long, value_name = "ID", env = "QSCHEDULER_REPLICA_ID")]
    replica_id: Option<String>,
    /// Address other replicas use to forward calls to this one
    /// [default: the --listen address].
    #[arg(long, value_name = "HOST:PORT")]
    advertise: Option<String>,
    /// Write a pool snapshot at least every N log records (smaller means
    /// faster recovery and more snapshot writes).
    #[arg(long, value_name = "N", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    snapshot_every_records: u64,
    /// Log format: "text" for people, "json" for log collectors.
    #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

fn init_logging(format: &str) {
    // RUST_LOG overrides; the default keeps transport internals quiet.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,h2=warn,hyper=warn,tower=warn,sqlx=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

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
    init_logging(&args.log_format);
    let store = match &args.store {
        Some(url) => url.clone(),
        None => args
            .data_dir
            .to_str()
            .context("--data-dir must be valid UTF-8")?
            .to_owned(),
    };
    let mut options = ServerOptions {
        listen: args.listen,
        store,
        request_timeout: Duration::from_secs(args.request_timeout),
        ..ServerOptions::default()
    };
    options.pool.batch_window = Duration::from_millis(args.batch_window_ms);
    options.pool.max_batch = args.max_batch as usize;
    options.pool.queue_capacity = args.queue_capacity as usize;
    options.pool.snapshot_every_records = args.snapshot_every_records;
    if let Some(id) = args.replica_id {
        options.store_options.replica_id = id;
    }
    // Empty: the address the server binds (which resolves --listen's port 0).
    options.store_options.advertise_address = args.advertise.unwrap_or_default();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let server = Server::start(options)
            .await
            .context("starting the server")?;
        let addr = server.local_addr().context("reading the bound address")?;
        tracing::info!(%addr, "ready");
        server.run(shutdown_signal()).await.context("serving")
    })
}
