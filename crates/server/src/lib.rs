//! The qscheduler service.
//!
//! Owns everything between the network and the scheduling core:
//!
//! * [`pool`]: one single-writer actor per pool that batches calls and makes
//!   them durable before answering;
//! * [`registry`]: which pools this server runs, their creation, recovery
//!   and deletion;
//! * [`translate`]: Swarming's messages to core commands and back;
//! * [`service`]: the gRPC/pRPC services;
//! * [`server`]: startup, serving and graceful shutdown.
//!
//! It must not contain scheduling rules (those live in `qscheduler-core`),
//! wire-format details (`qscheduler-wire`) or storage formats
//! (`qscheduler-store`).

pub mod pool;
pub mod registry;
pub mod server;
pub mod service;
pub mod translate;

pub use server::{Server, ServerError, ServerOptions};
