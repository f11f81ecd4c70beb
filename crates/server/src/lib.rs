//! The qscheduler service.
//!
//! Owns everything between the network and the scheduling core:
//!
//! * [`pool`]: a pool's handle, options, observers and recovery; its
//!   single writer (`pool/writer.rs`) batches calls and makes them durable
//!   before answering;
//! * [`registry`]: which pools this server runs, their creation, recovery
//!   and deletion;
//! * [`translate`]: Swarming's messages and the administrative requests to
//!   core commands, and back;
//! * [`limits`]: what one request may hold, and how much may wait;
//! * [`service`]: the gRPC/pRPC services; [`insight`]: explanations and
//!   reports; [`report`]: the rolling figures behind them; [`ui`]: the
//!   dashboard at `/ui/`;
//! * [`server`]: startup, serving and graceful shutdown;
//! * [`config`]: the configuration file;
//! * [`metrics`]: the Prometheus endpoint;
//! * [`eventlog`]: the task event log (JSON-lines files, PostgreSQL);
//! * [`rpc_layer`]: per-RPC spans, logs and latency histograms;
//! * [`auth`]: who may call what (principals, roles, the auth layer);
//! * [`tls`]: TLS and client certificates on the server's port;
//! * [`audit`]: the audit log of administrative calls;
//! * [`secret`]: values that `Debug` must not print.
//!
//! It must not contain scheduling rules (those live in `qscheduler-core`),
//! wire-format details (`qscheduler-wire`) or storage formats
//! (`qscheduler-store`).

pub mod audit;
pub mod auth;
pub mod config;
pub mod eventlog;
pub mod health;
pub mod insight;
pub mod limits;
pub mod metrics;
pub mod pool;
pub mod registry;
pub mod report;
pub mod rpc_layer;
pub mod secret;
pub mod server;
pub mod service;
pub mod tls;
pub mod translate;
pub mod ui;

pub use server::{Server, ServerError, ServerOptions};
