//! Logs and traces of the server: a `tracing` subscriber that prints
//! structured logs (text or JSON) and, when an OTLP endpoint is configured,
//! exports spans to it over gRPC.
//!
//! The OTLP exporter uses the same tonic as the server; its crates
//! (`opentelemetry*`, `tracing-opentelemetry`) move in lock-step and are
//! pinned together in the workspace manifest.

use anyhow::{Context, anyhow};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use qscheduler_server::config::{LogFormat, LoggingSection, TracingSection};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// What must be flushed at exit.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the spans still buffered and stops the exporter.
    pub async fn shutdown(self) {
        if let Some(p) = self.provider {
            // The SDK's shutdown blocks until the exporter is done.
            let res = tokio::task::spawn_blocking(move || p.shutdown()).await;
            if let Ok(Err(e)) = res {
                eprintln!("qscheduler: flushing traces failed: {e}");
            }
        }
    }
}

/// Installs the global subscriber. Must run inside the Tokio runtime (the
/// exporter's gRPC channel lives there).
pub fn init(logging: &LoggingSection, tracing: &TracingSection) -> anyhow::Result<Telemetry> {
    // RUST_LOG wins over the file, as operators expect; a broken RUST_LOG
    // is reported rather than silently ignored.
    let (filter, bad_env) = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => match EnvFilter::builder().parse(&v) {
            Ok(f) => (f, None),
            Err(e) => (
                EnvFilter::builder().parse(&logging.filter)?,
                Some(format!("RUST_LOG={v:?} ignored: {e}")),
            ),
        },
        _ => (EnvFilter::builder().parse(&logging.filter)?, None),
    };
    let fmt: Box<dyn Layer<Registry> + Send + Sync> = match logging.format {
        LogFormat::Json => tracing_subscriber::fmt::layer().json().boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer().boxed(),
    };
    let mut layers = vec![fmt];
    let mut provider = None;
    if let Some(endpoint) = &tracing.otlp_endpoint {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .build()
            .with_context(|| format!("OTLP exporter for {endpoint}"))?;
        let p = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                Resource::builder()
                    .with_service_name(tracing.service_name.clone())
                    .build(),
            )
            .build();
        let tracer = p.tracer("qscheduler");
        layers.push(tracing_opentelemetry::layer().with_tracer(tracer).boxed());
        provider = Some(p);
    }
    tracing_subscriber::registry()
        .with(layers)
        .with(filter)
        .try_init()
        .map_err(|e| anyhow!("installing the log subscriber: {e}"))?;
    if let Some(msg) = bad_env {
        tracing::warn!("{msg}");
    }
    if let Some(endpoint) = &tracing.otlp_endpoint {
        tracing::info!(%endpoint, "exporting traces over OTLP");
    }
    Ok(Telemetry { provider })
}
