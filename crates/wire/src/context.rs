//! What a handler may learn about the call it serves, the same way whether
//! the call came over gRPC or pRPC: its deadline, which RPC it is, and which
//! transport carried it.
//!
//! Both transports put these values into the request extensions before the
//! interceptor and the handler run, so per-request deadlines, authorization
//! and metrics can be written once for both.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::{Request, Status};

use crate::prpc::headers::parse_timeout;

/// The instant by which the call must be answered. Past it the transport
/// abandons the handler and answers `DEADLINE_EXCEEDED`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestDeadline(pub Instant);

/// The transport that carried a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// gRPC over HTTP/2.
    Grpc,
    /// pRPC over HTTP/1.1 or HTTP/2.
    Prpc,
}

/// The RPC being called, as fully-qualified service name and method name
/// (e.g. `swarming.v1.ExternalScheduler` and `AssignTasks`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RpcMethod {
    /// Fully-qualified proto service name.
    pub service: Arc<str>,
    /// Method name as in the proto.
    pub method: Arc<str>,
    /// The transport that carried the call.
    pub transport: Transport,
}

/// The deadline of a call.
///
/// Calls served through this crate always carry a [`RequestDeadline`]
/// extension when they have a deadline (the client's timeout, capped by the
/// server's request timeout). For a request built elsewhere (a test calling a
/// handler directly, a service mounted without this crate), the `grpc-timeout`
/// metadata is read relative to now, which is the best available guess.
pub fn request_deadline<T>(request: &Request<T>) -> Option<Instant> {
    if let Some(d) = request.extensions().get::<RequestDeadline>() {
        return Some(d.0);
    }
    let raw = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let timeout = parse_timeout(raw).ok()?;
    Instant::now().checked_add(timeout)
}

/// The time left until the call's deadline (zero once it has passed).
pub fn request_time_left<T>(request: &Request<T>) -> Option<Duration> {
    request_deadline(request).map(|d| d.saturating_duration_since(Instant::now()))
}

/// The RPC a request is for, when served through this crate.
pub fn rpc_method<T>(request: &Request<T>) -> Option<&RpcMethod> {
    request.extensions().get::<RpcMethod>()
}

/// A hook run before every handler, on both transports, with the call's
/// metadata and extensions (including [`RpcMethod`] and [`RequestDeadline`]).
/// It may add extensions (an authenticated identity, say) or refuse the call
/// with a status. This is the one place for authentication and authorization.
pub type RequestInterceptor =
    Arc<dyn Fn(Request<()>) -> Result<Request<()>, Status> + Send + Sync + 'static>;

/// Adapts a [`RequestInterceptor`] to tonic's interceptor trait.
#[derive(Clone)]
pub(crate) struct TonicInterceptor(pub(crate) RequestInterceptor);

impl tonic::service::Interceptor for TonicInterceptor {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        (self.0)(request)
    }
}

/// Computes a deadline from an optional client timeout and the server's cap.
pub(crate) fn deadline_from(
    now: Instant,
    client_timeout: Option<Duration>,
    server_cap: Option<Duration>,
) -> Option<Instant> {
    let timeout = match (client_timeout, server_cap) {
        (Some(c), Some(s)) => Some(c.min(s)),
        (c, s) => c.or(s),
    }?;
    // An unrepresentable instant is as good as no deadline.
    now.checked_add(timeout)
}
