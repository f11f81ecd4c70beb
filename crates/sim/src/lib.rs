//! What if we changed the quotas? Workloads run through the real
//! scheduling core.
//!
//! A **workload** ([`workload`]) is what a pool was asked to do: tasks
//! arriving with their accounts, labels and run times, and a fleet of bots
//! with their labels and availability. It comes from a small declarative
//! model ([`model`], seeded and deterministic) or from a server's task
//! event log ([`extract`]). The **simulation** ([`engine`]) runs a workload
//! against any pool configuration by driving [`qscheduler_core::Pool`] with
//! the same batches the server's pool writer builds; the **ledger**
//! ([`ledger`]) measures a run from the core's events, and measures a
//! recorded run from the event log the same way, so simulated and recorded
//! figures compare directly. [`render`] prints reports as tables, JSON and
//! a self-contained HTML page with SVG charts.
//!
//! Must not: reach into the core's internals (only its public API: `Pool`,
//! commands, events, views), read the clock, or use randomness other than
//! [`rng`] with an explicit seed. The same inputs give the same report.

pub mod clock;
pub mod engine;
pub mod extract;
pub mod html;
pub mod ledger;
pub mod model;
pub mod render;
pub mod report;
pub mod rng;
pub mod workload;

pub use engine::{PoolSetup, SimError, SimOptions, SimOutcome, SimStats, simulate};
pub use report::RunReport;
pub use workload::{Workload, WorkloadError};
