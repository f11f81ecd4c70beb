//! pRPC: unary RPCs over plain HTTP POST, as spoken by Swarming and the LUCI
//! tools, served from the same service implementations as gRPC.
//!
//! The server side ([`PrpcRouter`]) implements the protocol up to v1.5:
//! binary, JSON and text encodings; `Accept` negotiation; the XSSI prefix on
//! JSON; `X-Prpc-Grpc-Code` and the code-to-HTTP-status table; timeouts;
//! gzip both ways; request and response size limits; headers as call
//! metadata. The client side ([`PrpcClient`]) is what this project's own
//! tools use.

mod client;
pub(crate) mod codec;
pub mod codes;
pub mod headers;
mod server;

pub use client::{ClientError, PrpcClient};
pub use codec::XSSI_PREFIX;
pub use headers::Format;
pub use server::{
    CorsPolicy, DEFAULT_MAX_REQUEST_SIZE, DEFAULT_REQUEST_TIMEOUT, GZIP_THRESHOLD,
    HEADER_GRPC_CODE, HEADER_MAX_RESPONSE_SIZE, HEADER_STATUS_DETAILS, HEADER_TIMEOUT, PrpcRouter,
};
