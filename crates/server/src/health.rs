//! Is this replica alive, and should it get traffic? The answers probes
//! and load balancers ask for.
//!
//! Three signals, from cheapest to strictest:
//!
//! * `GET /healthz` (liveness): the process answers HTTP. It says nothing
//!   about pools, so that a slow recovery never gets the process killed.
//! * `GET /readyz` (readiness): 200 only while the server is [`Phase::Serving`]
//!   and its pools are settled: the first recovery finished, the store counts
//!   this replica among the live ones (PostgreSQL), and no pool whose home is
//!   this replica waits to be opened. Otherwise 503 with the reason.
//! * `grpc.health.v1.Health`: `SERVING` for the overall server (`""`) and
//!   each of the three services exactly when `/readyz` would answer 200,
//!   `NOT_SERVING` otherwise.
//!
//! None of them needs credentials, and none reveals more than these states.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use axum::http::StatusCode;
use axum::response::IntoResponse;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::registry::Registry;

/// The services whose gRPC health is reported, besides the server's own
/// (`""`).
pub const SERVICES: [&str; 3] = [
    "swarming.v1.ExternalScheduler",
    "qscheduler.QSchedulerAdmin",
    "qscheduler.QSchedulerView",
];

/// Where the server is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Recovering its pools (calls are served meanwhile, those for pools not
    /// yet open wait for them).
    Recovering = 0,
    /// Recovered; serving.
    Serving = 1,
    /// Handing its pools over before it stops (SIGTERM).
    Draining = 2,
}

/// Whether the replica should get traffic, and why not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// It should.
    Ready,
    /// It should not, for this reason (shown to the probe).
    NotReady(String),
}

/// The server's phase and its gRPC health reporter.
pub struct Health {
    phase: AtomicU8,
    reporter: HealthReporter,
    registry: Arc<Registry>,
}

impl Health {
    /// Health over `registry`, starting in [`Phase::Recovering`], and the
    /// gRPC service that reports it.
    pub fn new(
        registry: Arc<Registry>,
    ) -> (
        Arc<Health>,
        tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    ) {
        let (reporter, service) = tonic_health::server::health_reporter();
        let health = Arc::new(Health {
            phase: AtomicU8::new(Phase::Recovering as u8),
            reporter,
            registry,
        });
        (health, service)
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Recovering,
            1 => Phase::Serving,
            _ => Phase::Draining,
        }
    }

    /// Moves to `phase` (never back from [`Phase::Draining`]) and updates the
    /// gRPC health of every service.
    pub async fn set_phase(&self, phase: Phase) {
        let _ = self
            .phase
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |old| {
                (old != Phase::Draining as u8).then_some(phase as u8)
            });
        self.refresh().await;
    }

    /// Readiness now (see the module docs).
    pub fn readiness(&self) -> Readiness {
        let not = |why: &str| Readiness::NotReady(why.to_owned());
        match self.phase() {
            Phase::Recovering => return not("recovering pools"),
            Phase::Draining => return not("draining: handing pools over before stopping"),
            Phase::Serving => {}
        }
        let s = self.registry.settlement();
        if !s.recovered {
            return not("recovering pools");
        }
        if !s.registered {
            return not("not registered among the live replicas in the store");
        }
        if s.pending > 0 {
            return Readiness::NotReady(format!(
                "{} pool(s) whose home is this replica are not open yet",
                s.pending
            ));
        }
        Readiness::Ready
    }

    /// Brings the gRPC health statuses in line with [`Health::readiness`].
    /// Called on every phase change and by the adoption loop's ticker.
    pub async fn refresh(&self) {
        let status = match self.readiness() {
            Readiness::Ready => ServingStatus::Serving,
            Readiness::NotReady(_) => ServingStatus::NotServing,
        };
        self.reporter.set_service_status("", status).await;
        for s in SERVICES {
            self.reporter.set_service_status(s, status).await;
        }
    }

    /// `GET /readyz`.
    pub fn readyz(&self) -> axum::response::Response {
        match self.readiness() {
            Readiness::Ready => (StatusCode::OK, "ready\n").into_response(),
            Readiness::NotReady(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            )
                .into_response(),
        }
    }
}
