//! One port for everything: gRPC (with server reflection), pRPC, and any
//! extra HTTP routes of the server (health, metrics, UI).
//!
//! Each service implementation is registered once and reached by both
//! transports, so the two can never disagree. The deadline and RPC name of a
//! call are attached here, the same way for both, before any interceptor or
//! handler runs.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tonic::server::NamedService;
use tonic::service::interceptor::InterceptedService;
use tower::Service;

use crate::conn::ConnectionOptions;
use crate::context::{
    RequestDeadline, RequestInterceptor, RpcMethod, TonicInterceptor, Transport, deadline_from,
};
use crate::prpc::headers::parse_timeout;
use crate::prpc::{CorsPolicy, DEFAULT_MAX_REQUEST_SIZE, DEFAULT_REQUEST_TIMEOUT, PrpcRouter};
use crate::qscheduler::q_scheduler_admin_server::{QSchedulerAdmin, QSchedulerAdminServer};
use crate::qscheduler::q_scheduler_insight_server::{QSchedulerInsight, QSchedulerInsightServer};
use crate::qscheduler::q_scheduler_view_server::{QSchedulerView, QSchedulerViewServer};
use crate::shape::ShapeLimits;
use crate::swarming::v1::external_scheduler_server::{ExternalScheduler, ExternalSchedulerServer};

/// Why the service set could not be built.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The embedded descriptors could not be loaded for gRPC reflection.
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

type GrpcRegistration = Box<dyn FnOnce(&GrpcConfig, axum::Router) -> axum::Router + Send>;

struct GrpcConfig {
    request_timeout: Option<Duration>,
    max_request_size: usize,
    interceptor: Option<RequestInterceptor>,
    shape: Option<Arc<ShapeLimits>>,
}

/// The services of one server, reachable over gRPC and pRPC on one port.
///
/// ```no_run
/// # use std::sync::Arc;
/// # async fn f<E, A, V>(e: Arc<E>, a: Arc<A>, v: Arc<V>) -> Result<(), Box<dyn std::error::Error>>
/// # where E: qscheduler_wire::swarming::v1::external_scheduler_server::ExternalScheduler,
/// #       A: qscheduler_wire::qscheduler::q_scheduler_admin_server::QSchedulerAdmin,
/// #       V: qscheduler_wire::qscheduler::q_scheduler_view_server::QSchedulerView {
/// use qscheduler_wire::conn::ConnectionOptions;
/// use qscheduler_wire::serve::{Services, serve};
///
/// let extra = axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok" }));
/// let router = Services::new()
///     .external_scheduler(e)
///     .admin(a)
///     .view(v)
///     .into_router(extra)?;
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8082").await?;
/// serve(listener, router, ConnectionOptions::default(), std::future::pending()).await?;
/// # Ok(()) }
/// ```
pub struct Services {
    grpc: Vec<GrpcRegistration>,
    service_names: Vec<&'static str>,
    prpc: PrpcRouter,
    request_timeout: Option<Duration>,
    max_request_size: usize,
    interceptor: Option<RequestInterceptor>,
    shape: Option<Arc<ShapeLimits>>,
    /// Services every caller may use, whatever the interceptor says (gRPC
    /// health checking: probes carry no credentials).
    open_grpc: Vec<GrpcRegistration>,
}

impl Default for Services {
    fn default() -> Self {
        Self::new()
    }
}

impl Services {
    /// No services yet; 8 MiB requests; handlers cut off after 60 s.
    pub fn new() -> Self {
        Services {
            grpc: Vec::new(),
            service_names: Vec::new(),
            prpc: PrpcRouter::new(),
            request_timeout: Some(DEFAULT_REQUEST_TIMEOUT),
            max_request_size: DEFAULT_MAX_REQUEST_SIZE,
            interceptor: None,
            shape: None,
            open_grpc: Vec::new(),
        }
    }

    /// Serves the gRPC-only service `svc` (for example `grpc.health.v1.Health`)
    /// without the interceptor: it must reveal nothing a caller without
    /// credentials may not know. It is not listed by reflection.
    pub fn open_grpc_service<S>(mut self, svc: S) -> Self
    where
        S: Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = Infallible,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.open_grpc.push(Box::new(move |config, router| {
            add_grpc_route(router, S::NAME, svc, config)
        }));
        self
    }

    /// Serves `swarming.v1.ExternalScheduler` with `svc`, over both transports.
    pub fn external_scheduler<T: ExternalScheduler>(mut self, svc: Arc<T>) -> Self {
        self.prpc = self.prpc.external_scheduler(Arc::clone(&svc));
        self.add_grpc::<ExternalSchedulerServer<T>>(move |max| {
            ExternalSchedulerServer::from_arc(svc).max_decoding_message_size(max)
        })
    }

    /// Serves `qscheduler.QSchedulerAdmin` with `svc`, over both transports.
    pub fn admin<T: QSchedulerAdmin>(mut self, svc: Arc<T>) -> Self {
        self.prpc = self.prpc.admin(Arc::clone(&svc));
        self.add_grpc::<QSchedulerAdminServer<T>>(move |max| {
            QSchedulerAdminServer::from_arc(svc).max_decoding_message_size(max)
        })
    }

    /// Serves `qscheduler.QSchedulerView` with `svc`, over both transports.
    pub fn view<T: QSchedulerView>(mut self, svc: Arc<T>) -> Self {
        self.prpc = self.prpc.view(Arc::clone(&svc));
        self.add_grpc::<QSchedulerViewServer<T>>(move |max| {
            QSchedulerViewServer::from_arc(svc).max_decoding_message_size(max)
        })
    }

    /// Serves `qscheduler.QSchedulerInsight` with `svc`, over both transports.
    pub fn insight<T: QSchedulerInsight>(mut self, svc: Arc<T>) -> Self {
        self.prpc = self.prpc.insight(Arc::clone(&svc));
        self.add_grpc::<QSchedulerInsightServer<T>>(move |max| {
            QSchedulerInsightServer::from_arc(svc).max_decoding_message_size(max)
        })
    }

    fn add_grpc<S>(mut self, make: impl FnOnce(usize) -> S + Send + 'static) -> Self
    where
        S: Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = Infallible,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.service_names.push(S::NAME);
        self.grpc.push(Box::new(move |config, router| {
            let svc = make(config.max_request_size);
            match &config.interceptor {
                Some(i) => add_grpc_route(
                    router,
                    S::NAME,
                    InterceptedService::new(svc, TonicInterceptor(Arc::clone(i))),
                    config,
                ),
                None => add_grpc_route(router, S::NAME, svc, config),
            }
        }));
        self
    }

    /// Caps every handler's time on both transports, and gives a deadline to
    /// calls that come without one. `None`: calls without a timeout run
    /// unbounded.
    pub fn request_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Largest accepted request (pRPC body, also after decompression; gRPC
    /// message).
    pub fn max_request_size(mut self, bytes: usize) -> Self {
        self.max_request_size = bytes;
        self
    }

    /// Counts the items of every request against `limits` before it is
    /// decoded, on both transports (see [`crate::shape`]).
    pub fn shape_limits(mut self, limits: ShapeLimits) -> Self {
        self.shape = Some(Arc::new(limits));
        self
    }

    /// Runs `interceptor` before every handler, on both transports (gRPC
    /// reflection excepted: it only describes the API).
    pub fn interceptor(mut self, interceptor: RequestInterceptor) -> Self {
        self.interceptor = Some(interceptor);
        self
    }

    /// Lets browsers from the given origins call the pRPC endpoints.
    pub fn cors(mut self, policy: CorsPolicy) -> Self {
        self.prpc = self.prpc.cors(policy);
        self
    }

    /// One axum router with gRPC, gRPC reflection, pRPC and `extra`.
    ///
    /// `extra` must not route `/prpc/...` or `/<grpc service>/...` (axum
    /// panics on overlapping routes when they are merged, at startup). It may
    /// have a fallback; without one, unknown paths get an empty 404, which
    /// gRPC clients read as `UNIMPLEMENTED`.
    pub fn into_router(self, extra: axum::Router) -> Result<axum::Router, WireError> {
        let config = GrpcConfig {
            request_timeout: self.request_timeout,
            max_request_size: self.max_request_size,
            interceptor: self.interceptor.clone(),
            shape: self.shape.clone(),
        };
        let mut grpc = axum::Router::new();
        for register in self.grpc {
            grpc = register(&config, grpc);
        }

        let mut reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::FILE_DESCRIPTOR_SET);
        for name in &self.service_names {
            reflection = reflection.with_service_name(*name);
        }
        let v1 = reflection.build_v1()?;
        let mut reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::FILE_DESCRIPTOR_SET);
        for name in &self.service_names {
            reflection = reflection.with_service_name(*name);
        }
        let v1alpha = reflection.build_v1alpha()?;
        let no_interceptor = GrpcConfig {
            interceptor: None,
            ..config
        };
        grpc = add_grpc_route(grpc, name_of(&v1), v1, &no_interceptor);
        grpc = add_grpc_route(grpc, name_of(&v1alpha), v1alpha, &no_interceptor);
        for register in self.open_grpc {
            grpc = register(&no_interceptor, grpc);
        }

        let mut prpc = self
            .prpc
            .request_timeout(self.request_timeout)
            .max_request_size(self.max_request_size);
        if let Some(shape) = self.shape {
            prpc = prpc.shape_limits(shape);
        }
        if let Some(i) = self.interceptor {
            prpc = prpc.interceptor(i);
        }
        Ok(extra.merge(grpc).merge(prpc.into_router()))
    }

    /// [`Services::into_router`] as tonic `Routes`, for
    /// `tonic::transport::Server::add_routes` (remember `accept_http1(true)`
    /// for pRPC over HTTP/1.1), or use [`serve`].
    pub fn into_routes(self, extra: axum::Router) -> Result<tonic::service::Routes, WireError> {
        Ok(tonic::service::Routes::from(self.into_router(extra)?))
    }
}

fn name_of<S: NamedService>(_: &S) -> &'static str {
    S::NAME
}

/// Serves `router` on `listener` until `shutdown` completes: HTTP/2 (gRPC,
/// pRPC) and HTTP/1.1 (pRPC, plain HTTP) on the same port, within the
/// connection limits of `options` (see [`crate::conn`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    options: ConnectionOptions,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    crate::conn::serve(listener, router, options, shutdown).await
}

fn add_grpc_route<S, B>(
    router: axum::Router,
    name: &'static str,
    svc: S,
    config: &GrpcConfig,
) -> axum::Router
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    router.route_service(
        &format!("/{name}/{{*rest}}"),
        GrpcEdge {
            inner: svc,
            service: Arc::from(name),
            request_timeout: config.request_timeout,
            max_request_size: config.max_request_size,
            shape: config.shape.clone(),
        },
    )
}

/// Wraps a tonic service: attaches [`RequestDeadline`] and [`RpcMethod`],
/// and answers `DEADLINE_EXCEEDED` when the deadline passes. tonic's own
/// server enforces `grpc-timeout`, but not the server-side cap, and does
/// not tell the handler its deadline.
///
/// With shape limits, it also reads the request's body (within the call's
/// deadline and the size limit) and counts its items before tonic decodes
/// it.
#[derive(Clone)]
struct GrpcEdge<S> {
    inner: S,
    service: Arc<str>,
    request_timeout: Option<Duration>,
    max_request_size: usize,
    shape: Option<Arc<ShapeLimits>>,
}

/// Reads a gRPC request body and checks each uncompressed message in it
/// against `shape`; the body is handed on unchanged. (A compressed message
/// is refused by tonic, which accepts none.)
async fn check_grpc_body(
    req: http::Request<tonic::body::Body>,
    shape: &ShapeLimits,
    desc: Option<prost_reflect::MessageDescriptor>,
    max: usize,
) -> Result<http::Request<tonic::body::Body>, tonic::Status> {
    use http_body_util::BodyExt;
    let (parts, body) = req.into_parts();
    // Five bytes of framing per message; a unary call has one.
    let bytes = match http_body_util::Limited::new(body, max.saturating_add(5))
        .collect()
        .await
    {
        Ok(c) => c.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return Err(tonic::Status::out_of_range(format!(
                "the request message is too large: more than the server's limit of {max} bytes"
            )));
        }
        Err(e) => {
            return Err(tonic::Status::cancelled(format!(
                "could not read the request: {e}"
            )));
        }
    };
    if let Some(desc) = desc {
        let mut rest = &bytes[..];
        while let Some((&flag, tail)) = rest.split_first() {
            let Some((len, tail)) = tail.split_first_chunk::<4>() else {
                break;
            };
            let len = u32::from_be_bytes(*len) as usize;
            let Some((message, tail)) = tail.split_at_checked(len) else {
                break;
            };
            if flag == 0 {
                shape
                    .check_binary(&desc, message)
                    .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
            }
            rest = tail;
        }
    }
    Ok(http::Request::from_parts(
        parts,
        tonic::body::Body::new(http_body_util::Full::new(bytes)),
    ))
}

/// The request message of `service`/`method`, from the embedded descriptors.
fn input_descriptor(service: &str, method: &str) -> Option<prost_reflect::MessageDescriptor> {
    crate::descriptor_pool()
        .get_service_by_name(service)?
        .methods()
        .find(|m| m.name() == method)
        .map(|m| m.input())
}

impl<S, B> Service<http::Request<axum::body::Body>> for GrpcEdge<S>
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = http::Response<axum::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<axum::body::Body>) -> Self::Future {
        let mut req = req.map(tonic::body::Body::new);
        let timeout = req
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_timeout(v).ok());
        let deadline = deadline_from(Instant::now(), timeout, self.request_timeout);
        if let Some(d) = deadline {
            req.extensions_mut().insert(RequestDeadline(d));
        }
        let method = req.uri().path().rsplit('/').next().unwrap_or_default();
        let desc = self
            .shape
            .as_ref()
            .and_then(|_| input_descriptor(&self.service, method));
        let info = RpcMethod {
            service: Arc::clone(&self.service),
            method: Arc::from(method),
            transport: Transport::Grpc,
        };
        req.extensions_mut().insert(info);

        // The clone that was made ready is the one to call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shape = self.shape.clone();
        let max = self.max_request_size;
        Box::pin(async move {
            let call = async move {
                let req = match &shape {
                    Some(shape) => match check_grpc_body(req, shape, desc, max).await {
                        Ok(req) => req,
                        Err(status) => return Ok(status.into_http()),
                    },
                    None => req,
                };
                inner.call(req).await.map(|r| r.map(axum::body::Body::new))
            };
            match deadline {
                None => call.await,
                Some(d) => match tokio::time::timeout_at(d.into(), call).await {
                    Ok(result) => result,
                    Err(_) => Ok(tonic::Status::deadline_exceeded("deadline exceeded").into_http()),
                },
            }
        })
    }
}
