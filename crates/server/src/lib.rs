//! The qscheduler service.
//!
//! Owns everything between the network and the scheduling core: one
//! single-writer actor per pool ([`pool`]) that batches calls and makes them
//! durable before answering, and the registry of pools.

pub mod pool;
