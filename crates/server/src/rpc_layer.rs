//! What the server records about each RPC, for both transports at once: a
//! tracing span (`rpc`, with service, method, transport, and the pool once
//! the handler knows it), a debug line when it ends, and its latency in
//! `qscheduler_rpc_duration_seconds` by service, method, status code and
//! transport.
//!
//! It is a tower layer over the whole HTTP router rather than the wire
//! crate's interceptor, because the interceptor runs before the handler
//! and never sees the outcome. The status code comes from where each
//! transport puts it: pRPC's `X-Prpc-Grpc-Code` header, gRPC's
//! `grpc-status` header (errors without a body) or trailers (everything
//! else) — for the latter the response body is watched until its trailers
//! go out, so the latency includes sending the response.
//!
//! Only the methods of our three services are measured; other paths
//! (health, metrics, reflection, unknown services) pass through untouched,
//! which also keeps label values bounded whatever clients send.

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::Frame;
use tower::{Layer, Service};
use tracing::{Instrument, Span, debug, field};

use crate::audit::{AuditLog, AuditSlot};
use crate::metrics::{RpcHistograms, RpcLabels};

/// The service whose calls are audited.
const ADMIN_SERVICE: &str = "qscheduler.QSchedulerAdmin";

/// The services whose calls are measured.
const SERVICES: [&str; 3] = [
    "swarming.v1.ExternalScheduler",
    "qscheduler.QSchedulerAdmin",
    "qscheduler.QSchedulerView",
];

/// `service/method` of every method of [`SERVICES`].
static METHODS: LazyLock<HashSet<String>> = LazyLock::new(|| {
    let pool = qscheduler_wire::descriptor_pool();
    SERVICES
        .iter()
        .filter_map(|s| pool.get_service_by_name(s))
        .flat_map(|s| {
            s.methods()
                .map(|m| format!("{}/{}", s.full_name(), m.name()))
                .collect::<Vec<_>>()
        })
        .collect()
});

/// Records the pool of the current RPC on its span (called by the
/// handlers once they have validated the pool id).
pub fn record_pool(pool: &str) {
    Span::current().record("pool", field::display(pool));
}

/// The layer. `histograms` is `None` when metrics are off: spans and logs
/// still happen.
#[derive(Clone)]
pub struct RpcLayer {
    histograms: Option<RpcHistograms>,
    audit: Option<Arc<AuditLog>>,
}

impl RpcLayer {
    /// A layer recording into `histograms`, if any, and administrative
    /// calls into `audit`.
    pub(crate) fn new(histograms: Option<RpcHistograms>, audit: Option<Arc<AuditLog>>) -> Self {
        RpcLayer { histograms, audit }
    }
}

impl<S> Layer<S> for RpcLayer {
    type Service = RpcService<S>;
    fn layer(&self, inner: S) -> RpcService<S> {
        RpcService {
            inner,
            histograms: self.histograms.clone(),
            audit: self.audit.clone(),
        }
    }
}

/// The service of [`RpcLayer`].
#[derive(Clone)]
pub struct RpcService<S> {
    inner: S,
    histograms: Option<RpcHistograms>,
    audit: Option<Arc<AuditLog>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    Grpc,
    Prpc,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Grpc => "grpc",
            Transport::Prpc => "prpc",
        }
    }
}

/// The service and method a request calls, if it is one of ours.
fn classify<B>(req: &Request<B>) -> Option<(String, String, Transport)> {
    let path = req.uri().path();
    let (rest, transport) = match path.strip_prefix("/prpc/") {
        Some(rest) if req.method() == http::Method::POST => (rest, Transport::Prpc),
        Some(_) => return None,
        None => {
            let grpc = req
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/grpc"));
            if !grpc {
                return None;
            }
            (path.strip_prefix('/')?, Transport::Grpc)
        }
    };
    if !METHODS.contains(rest) {
        return None;
    }
    let (service, method) = rest.split_once('/')?;
    Some((service.to_owned(), method.to_owned(), transport))
}

/// The canonical name of a gRPC status code.
fn code_name(code: &str) -> &'static str {
    match code.trim() {
        "0" => "OK",
        "1" => "CANCELLED",
        "2" => "UNKNOWN",
        "3" => "INVALID_ARGUMENT",
        "4" => "DEADLINE_EXCEEDED",
        "5" => "NOT_FOUND",
        "6" => "ALREADY_EXISTS",
        "7" => "PERMISSION_DENIED",
        "8" => "RESOURCE_EXHAUSTED",
        "9" => "FAILED_PRECONDITION",
        "10" => "ABORTED",
        "11" => "OUT_OF_RANGE",
        "12" => "UNIMPLEMENTED",
        "13" => "INTERNAL",
        "14" => "UNAVAILABLE",
        "15" => "DATA_LOSS",
        "16" => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

fn header_code(headers: &HeaderMap, name: &str) -> Option<&'static str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(code_name)
}

/// Everything needed to record the end of a call.
struct Call {
    histograms: Option<RpcHistograms>,
    service: String,
    method: String,
    transport: Transport,
    start: Instant,
    span: Span,
    audit: Option<(Arc<AuditLog>, AuditSlot)>,
}

impl Call {
    fn finish(self, code: &'static str) {
        let elapsed = self.start.elapsed();
        if let Some((log, slot)) = &self.audit {
            log.record(&self.method, code, slot);
        }
        self.span.record("code", code);
        debug!(
            parent: &self.span,
            code,
            elapsed_us = elapsed.as_micros() as u64,
            "rpc finished"
        );
        if let Some(h) = self.histograms {
            h.get_or_create(&RpcLabels {
                service: self.service,
                method: self.method,
                code,
                transport: self.transport.name(),
            })
            .observe(elapsed.as_secs_f64());
        }
    }
}

impl<S> Service<Request<Body>> for RpcService<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        // The clone that was made ready is the one to call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let Some((service, method, transport)) = classify(&req) else {
            return Box::pin(inner.call(req));
        };
        let audit = match &self.audit {
            Some(log) if service == ADMIN_SERVICE => {
                let slot = AuditSlot::default();
                req.extensions_mut().insert(slot.clone());
                Some((Arc::clone(log), slot))
            }
            _ => None,
        };
        let span = tracing::info_span!(
            "rpc",
            service = %service,
            method = %method,
            transport = transport.name(),
            pool = field::Empty,
            code = field::Empty,
        );
        let call = Call {
            histograms: self.histograms.clone(),
            service,
            method,
            transport,
            start: Instant::now(),
            span: span.clone(),
            audit,
        };
        let fut = span.in_scope(|| inner.call(req));
        Box::pin(async move {
            let Ok(resp) = fut.instrument(span).await;
            let code = match transport {
                Transport::Prpc => {
                    Some(header_code(resp.headers(), "x-prpc-grpc-code").unwrap_or("UNKNOWN"))
                }
                Transport::Grpc => header_code(resp.headers(), "grpc-status"),
            };
            Ok(match code {
                Some(code) => {
                    call.finish(code);
                    resp
                }
                None => resp.map(|body| {
                    Body::new(WatchedBody {
                        inner: body,
                        call: Some(call),
                    })
                }),
            })
        })
    }
}

/// A gRPC response body that records the call when its trailers pass (or
/// when it ends or is dropped without them).
struct WatchedBody {
    inner: Body,
    call: Option<Call>,
}

impl http_body::Body for WatchedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let res = Pin::new(&mut this.inner).poll_frame(cx);
        let code = match &res {
            Poll::Ready(Some(Ok(frame))) => frame
                .trailers_ref()
                .map(|t| header_code(t, "grpc-status").unwrap_or("UNKNOWN")),
            Poll::Ready(Some(Err(_))) | Poll::Ready(None) => Some("UNKNOWN"),
            Poll::Pending => None,
        };
        if let Some(code) = code
            && let Some(call) = this.call.take()
        {
            call.finish(code);
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for WatchedBody {
    fn drop(&mut self) {
        // The client went away before the end of the response.
        if let Some(call) = self.call.take() {
            call.finish("CANCELLED");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_methods_are_measured() {
        let req = |path: &str, ct: &str| {
            Request::post(path)
                .header(http::header::CONTENT_TYPE, ct)
                .body(())
                .unwrap()
        };
        let r = classify(&req(
            "/prpc/swarming.v1.ExternalScheduler/AssignTasks",
            "application/json",
        ));
        assert_eq!(
            r.map(|(s, m, t)| (s, m, t.name())),
            Some((
                "swarming.v1.ExternalScheduler".into(),
                "AssignTasks".into(),
                "prpc"
            ))
        );
        let r = classify(&req(
            "/qscheduler.QSchedulerAdmin/CreateAccount",
            "application/grpc+proto",
        ));
        assert_eq!(
            r.map(|(_, m, t)| (m, t.name())),
            Some(("CreateAccount".into(), "grpc"))
        );
        assert!(classify(&req("/qscheduler.QSchedulerAdmin/Nope", "application/grpc")).is_none());
        assert!(classify(&req("/prpc/evil.Service/X", "application/json")).is_none());
        assert!(classify(&req("/metrics", "text/plain")).is_none());
        assert_eq!(code_name("8"), "RESOURCE_EXHAUSTED");
        assert_eq!(code_name("x"), "UNKNOWN");
    }
}
