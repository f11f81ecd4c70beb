//! pRPC: unary RPCs over plain HTTP POST, as spoken by Swarming and the LUCI
//! tools, served from the same service implementations as gRPC.
//!
//! The server side ([`PrpcRouter`]) implements the protocol up to v1.5:
//! binary, JSON and text encodings; `Accept` negotiation; the XSSI prefix on
//! JSON; `X-Prpc-Grpc-Code` and the code-to-HTTP-status table; timeouts;
//! gzip both ways; request and response size limits; headers as call
//! metadata. The client side ([`PrpcClient`]) is what this project's own
//! tools use.
//!
//! Where this implementation knowingly differs from the reference server:
//!
//! * text-format request bodies with unknown field names are rejected
//!   (400), not silently stripped: the text parser has no option to skip
//!   them. JSON bodies do drop unknown fields.
//! * An empty JSON body is read as the empty message, as binary is.
//! * A `Date` header is sent (the HTTP stack adds it).
//! * An `Accept` entry with `q=0` still counts as acceptable, at the
//!   lowest rank; a `q` outside `[0, 1]` is malformed.
//! * Non-POST requests get 405 with `UNIMPLEMENTED`; malformed paths under
//!   `/prpc/` get 404 with `NOT_FOUND`; an unsupported `Content-Encoding`
//!   gets 415 with `INVALID_ARGUMENT`.

mod client;
pub(crate) mod codec;
pub mod codes;
pub mod headers;
mod server;

pub use client::{ClientError, PrpcClient, client_tls_config, crypto_provider};
pub use codec::XSSI_PREFIX;
pub use headers::Format;
pub use server::{
    CorsPolicy, DEFAULT_MAX_REQUEST_SIZE, DEFAULT_REQUEST_TIMEOUT, GZIP_THRESHOLD,
    HEADER_GRPC_CODE, HEADER_MAX_RESPONSE_SIZE, HEADER_STATUS_DETAILS, HEADER_TIMEOUT, PrpcRouter,
};
