//! The wire layer of qscheduler.
//!
//! This crate owns everything a client sees of the scheduler on the network,
//! and nothing else:
//!
//! * the protobuf definitions, with the packages, message and field names and
//!   numbers of the original system, so existing clients and stored data keep
//!   working: [`swarming::v1`] (the external scheduler API Swarming calls),
//!   [`qscheduler`] (the admin and view services, and qscheduler's own
//!   read-only insight service), [`protos`] (the serialized
//!   scheduler and reconciler state) and [`metrics`] (task events);
//! * the generated gRPC servers and clients (tonic);
//! * a pRPC server ([`prpc::PrpcRouter`]) that dispatches to the *same* tonic
//!   service traits, so each service is implemented once for both
//!   transports, and a small pRPC client ([`prpc::PrpcClient`]);
//! * the one-port assembly of gRPC, gRPC reflection, pRPC and the server's
//!   other HTTP routes ([`serve::Services`], [`serve::serve`]);
//! * what a handler may learn about its call on either transport: deadline,
//!   RPC name ([`context`]).
//!
//! It must not contain scheduling logic, translation rules, validation of
//! request contents, storage or authorization policy: those belong to the
//! crates that implement the service traits. Authorization plugs in through
//! one [`context::RequestInterceptor`].
//!
//! Maps in generated messages are `BTreeMap`s, so encodings are
//! deterministic.
//!
//! # Use
//!
//! * A server implements the tonic traits
//!   (`swarming::v1::external_scheduler_server::ExternalScheduler`,
//!   `qscheduler::q_scheduler_admin_server::QSchedulerAdmin`,
//!   `qscheduler::q_scheduler_view_server::QSchedulerView`), registers them
//!   once with [`serve::Services`], passes its own routes (health, metrics)
//!   to [`serve::Services::into_router`], and serves the result with
//!   [`serve::serve`] (connection limits: [`conn`]). Request limits on
//!   the number of items are the server's to give ([`shape`]).
//! * A handler reads its deadline with [`request_deadline`] and the RPC it
//!   serves with [`context::rpc_method`], whichever transport carried it.
//! * Tools call pRPC with [`prpc::PrpcClient`] and gRPC with the generated
//!   `*_client` modules.

pub mod conn;
pub mod context;
pub mod prpc;
pub mod serve;
pub mod shape;

pub use context::{RequestDeadline, RpcMethod, Transport, request_deadline};

/// Package `swarming`.
pub mod swarming {
    /// Package `swarming.v1`: the external scheduler plugin API.
    pub mod v1 {
        #![allow(missing_docs, clippy::doc_lazy_continuation)]
        include!(concat!(env!("OUT_DIR"), "/swarming.v1.rs"));
    }
}

/// Package `protos`: the serialized scheduler and reconciler state and
/// scheduler configuration.
pub mod protos {
    #![allow(missing_docs, clippy::doc_lazy_continuation)]
    include!(concat!(env!("OUT_DIR"), "/protos.rs"));
}

/// Package `qscheduler`: the admin, view and insight services.
pub mod qscheduler {
    #![allow(missing_docs, clippy::doc_lazy_continuation)]
    include!(concat!(env!("OUT_DIR"), "/qscheduler.rs"));
}

/// Package `metrics`: task lifecycle events.
pub mod metrics {
    #![allow(missing_docs, clippy::doc_lazy_continuation)]
    include!(concat!(env!("OUT_DIR"), "/metrics.rs"));
}

/// Package `luci.prpc`: status details of pRPC protocol errors.
pub mod luci {
    /// Package `luci.prpc`.
    pub mod prpc {
        #![allow(missing_docs, clippy::doc_lazy_continuation)]
        include!(concat!(env!("OUT_DIR"), "/luci.prpc.rs"));
    }
}

/// The encoded `google.protobuf.FileDescriptorSet` of every proto of this
/// crate and of the well-known types they import.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/file_descriptor_set.bin"));

/// The descriptors of [`FILE_DESCRIPTOR_SET`], decoded once.
pub fn descriptor_pool() -> &'static prost_reflect::DescriptorPool {
    static POOL: std::sync::LazyLock<prost_reflect::DescriptorPool> =
        std::sync::LazyLock::new(|| {
            // The set is produced by this crate's build script from its own
            // protos; failing to decode it is a build defect, not an input
            // error, and the unit tests exercise it.
            #[allow(clippy::expect_used)]
            prost_reflect::DescriptorPool::decode(FILE_DESCRIPTOR_SET)
                .expect("embedded descriptor set is valid")
        });
    &POOL
}
