//! The pRPC server: an axum router for `/prpc/{service}/{method}` that
//! decodes requests, calls the same tonic service implementations that gRPC
//! calls, and encodes answers and errors by the rules of the pRPC protocol.
//!
//! Every response this module produces, successful or not, carries
//! `X-Prpc-Grpc-Code` and `X-Content-Type-Options: nosniff`, and no error is
//! ever sent with HTTP 200: some clients look at the code only when the HTTP
//! status says something went wrong.

use std::collections::HashMap;
use std::future::Future;
use std::io::{Read, Write};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use http::header::{
    ACCEPT, ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, HOST, ORIGIN, VARY,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use prost::Message;
use prost_reflect::{DynamicMessage, MessageDescriptor};
use tonic::metadata::{KeyAndValueRef, MetadataMap};
use tonic::{Code, Status};

use super::codec;
use super::codes::{generic_message, http_status};
use super::headers::{
    AcceptError, Format, accepts_gzip, parse_accept, parse_content_type, parse_max_response_size,
    parse_timeout,
};
use crate::context::{RequestDeadline, RequestInterceptor, RpcMethod, Transport, deadline_from};
use crate::qscheduler::q_scheduler_admin_server::{self, QSchedulerAdmin};
use crate::qscheduler::q_scheduler_insight_server::{self, QSchedulerInsight};
use crate::qscheduler::q_scheduler_view_server::{self, QSchedulerView};
use crate::shape::{ShapeError, ShapeLimits};
use crate::swarming::v1::external_scheduler_server::{self, ExternalScheduler};

/// Requests larger than this (before or after decompression) are refused.
pub const DEFAULT_MAX_REQUEST_SIZE: usize = 8 << 20;
/// Handlers never get more time than this, whatever the client asks.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Responses at most this big are not worth compressing.
pub const GZIP_THRESHOLD: usize = 1024;

/// `X-Prpc-Grpc-Code`: the gRPC code of the response, on every response.
pub const HEADER_GRPC_CODE: &str = "x-prpc-grpc-code";
/// `X-Prpc-Grpc-Timeout`: the client's timeout.
pub const HEADER_TIMEOUT: &str = "x-prpc-grpc-timeout";
/// `X-Prpc-Max-Response-Size`: the largest response the client accepts.
pub const HEADER_MAX_RESPONSE_SIZE: &str = "x-prpc-max-response-size";
/// `X-Prpc-Status-Details-Bin`: one `google.protobuf.Any` per value.
pub const HEADER_STATUS_DETAILS: &str = "x-prpc-status-details-bin";

const TEXT_PLAIN: &str = "text/plain; charset=utf-8";
const NOSNIFF: (&str, &str) = ("x-content-type-options", "nosniff");

/// Standard base64 that accepts input with or without padding: pRPC says
/// padded, gRPC metadata usually is not, and refusing either helps nobody.
const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// `google.rpc.Status`, to read the details a handler attached to a
/// [`Status`] and to build our own.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
    #[prost(message, repeated, tag = "3")]
    pub details: Vec<prost_types::Any>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What a call returns once type-erased: response metadata and the binary
/// encoding of the response message.
type ErasedResult = Result<(MetadataMap, Vec<u8>), Status>;

/// A decoded request waiting for its metadata and extensions.
type PreparedCall = Box<dyn FnOnce(tonic::Request<()>) -> BoxFuture<ErasedResult> + Send>;

/// One unary method, with its types erased so all methods of all services
/// can sit in one table.
trait UnaryMethod: Send + Sync {
    fn input(&self) -> Option<&MessageDescriptor>;
    fn output(&self) -> Option<&MessageDescriptor>;
    /// Decodes the binary request. Decoding comes before the interceptor,
    /// as in the original server: a malformed body is reported as such
    /// whoever sends it.
    fn prepare(self: Arc<Self>, body: &[u8]) -> Result<PreparedCall, prost::DecodeError>;
}

struct TypedMethod<Req, Resp, F> {
    handler: F,
    input: Option<MessageDescriptor>,
    output: Option<MessageDescriptor>,
    _types: PhantomData<fn(Req) -> Resp>,
}

impl<Req, Resp, F, Fut> UnaryMethod for TypedMethod<Req, Resp, F>
where
    Req: Message + prost::Name + Default + Send + 'static,
    Resp: Message + prost::Name + 'static,
    F: Fn(tonic::Request<Req>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>> + Send + 'static,
{
    fn input(&self) -> Option<&MessageDescriptor> {
        self.input.as_ref()
    }

    fn output(&self) -> Option<&MessageDescriptor> {
        self.output.as_ref()
    }

    fn prepare(self: Arc<Self>, body: &[u8]) -> Result<PreparedCall, prost::DecodeError> {
        let message = Req::decode(body)?;
        Ok(Box::new(move |request: tonic::Request<()>| {
            let (metadata, extensions, ()) = request.into_parts();
            let fut = (self.handler)(tonic::Request::from_parts(metadata, extensions, message));
            Box::pin(async move {
                let (metadata, message, _) = fut.await?.into_parts();
                Ok((metadata, message.encode_to_vec()))
            }) as BoxFuture<ErasedResult>
        }))
    }
}

/// Which browser origins may call the pRPC endpoints (CORS). Off unless set.
#[derive(Clone, Debug, Default)]
pub enum CorsPolicy {
    /// No CORS headers are sent; browsers refuse cross-origin calls.
    #[default]
    Disabled,
    /// Any origin may call.
    AllowAny {
        /// Send `Access-Control-Allow-Credentials: true`.
        allow_credentials: bool,
    },
    /// Only the listed origins (exact match, e.g. `https://ui.example.com`).
    AllowList {
        /// Allowed origins.
        origins: Vec<String>,
        /// Send `Access-Control-Allow-Credentials: true`.
        allow_credentials: bool,
    },
}

impl CorsPolicy {
    /// Whether `origin` is allowed, and if so whether credentials are.
    fn check(&self, origin: &str) -> Option<bool> {
        match self {
            CorsPolicy::Disabled => None,
            CorsPolicy::AllowAny { allow_credentials } => Some(*allow_credentials),
            CorsPolicy::AllowList {
                origins,
                allow_credentials,
            } => origins
                .iter()
                .any(|o| o == origin)
                .then_some(*allow_credentials),
        }
    }
}

/// The pRPC endpoints of a set of services.
///
/// ```no_run
/// # use std::sync::Arc;
/// # fn f<E, A, V>(e: Arc<E>, a: Arc<A>, v: Arc<V>) -> axum::Router
/// # where E: qscheduler_wire::swarming::v1::external_scheduler_server::ExternalScheduler,
/// #       A: qscheduler_wire::qscheduler::q_scheduler_admin_server::QSchedulerAdmin,
/// #       V: qscheduler_wire::qscheduler::q_scheduler_view_server::QSchedulerView {
/// qscheduler_wire::prpc::PrpcRouter::new()
///     .external_scheduler(e)
///     .admin(a)
///     .view(v)
///     .into_router()
/// # }
/// ```
#[derive(Clone)]
pub struct PrpcRouter {
    services: HashMap<String, HashMap<String, Arc<dyn UnaryMethod>>>,
    max_request_size: usize,
    request_timeout: Option<Duration>,
    interceptor: Option<RequestInterceptor>,
    cors: CorsPolicy,
    shape: Option<Arc<ShapeLimits>>,
}

impl Default for PrpcRouter {
    fn default() -> Self {
        Self::new()
    }
}

/// Registers the methods of one tonic service trait. Each entry names the
/// proto method and the trait function that implements it.
macro_rules! register_service {
    ($router:expr, $service:expr, $svc:expr, { $($method:literal => $func:ident),* $(,)? }) => {{
        let mut router = $router;
        $(
            let svc = Arc::clone(&$svc);
            router = router.add_unary($service, $method, move |req| {
                let svc = Arc::clone(&svc);
                async move { svc.$func(req).await }
            });
        )*
        router
    }};
}

impl PrpcRouter {
    /// An empty router with the default limits: 8 MiB requests, handlers
    /// cut off after 60 s.
    pub fn new() -> Self {
        PrpcRouter {
            services: HashMap::new(),
            max_request_size: DEFAULT_MAX_REQUEST_SIZE,
            request_timeout: Some(DEFAULT_REQUEST_TIMEOUT),
            interceptor: None,
            cors: CorsPolicy::Disabled,
            shape: None,
        }
    }

    /// Serves `swarming.v1.ExternalScheduler` with `svc`.
    pub fn external_scheduler<T: ExternalScheduler>(self, svc: Arc<T>) -> Self {
        register_service!(self, external_scheduler_server::SERVICE_NAME, svc, {
            "AssignTasks" => assign_tasks,
            "GetCancellations" => get_cancellations,
            "NotifyTasks" => notify_tasks,
            "GetCallbacks" => get_callbacks,
        })
    }

    /// Serves `qscheduler.QSchedulerAdmin` with `svc`.
    pub fn admin<T: QSchedulerAdmin>(self, svc: Arc<T>) -> Self {
        register_service!(self, q_scheduler_admin_server::SERVICE_NAME, svc, {
            "CreateSchedulerPool" => create_scheduler_pool,
            "CreateAccount" => create_account,
            "Wipe" => wipe,
            "ModAccount" => mod_account,
            "ModSchedulerPool" => mod_scheduler_pool,
            "DeleteAccount" => delete_account,
            "DeleteSchedulerPool" => delete_scheduler_pool,
        })
    }

    /// Serves `qscheduler.QSchedulerView` with `svc`.
    pub fn view<T: QSchedulerView>(self, svc: Arc<T>) -> Self {
        register_service!(self, q_scheduler_view_server::SERVICE_NAME, svc, {
            "ListAccounts" => list_accounts,
            "InspectPool" => inspect_pool,
            "ListPools" => list_pools,
        })
    }

    /// Serves `qscheduler.QSchedulerInsight` with `svc`.
    pub fn insight<T: QSchedulerInsight>(self, svc: Arc<T>) -> Self {
        register_service!(self, q_scheduler_insight_server::SERVICE_NAME, svc, {
            "ExplainTask" => explain_task,
            "AccountReport" => account_report,
            "PoolOverview" => pool_overview,
        })
    }

    /// Serves one unary method with a handler of the tonic shape. The
    /// request and response types must be messages of this crate's
    /// descriptors for JSON and text to work; binary works for any message.
    pub fn add_unary<Req, Resp, F, Fut>(mut self, service: &str, method: &str, handler: F) -> Self
    where
        Req: Message + prost::Name + Default + Send + 'static,
        Resp: Message + prost::Name + 'static,
        F: Fn(tonic::Request<Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>> + Send + 'static,
    {
        let pool = crate::descriptor_pool();
        let entry = TypedMethod {
            handler,
            input: pool.get_message_by_name(&Req::full_name()),
            output: pool.get_message_by_name(&Resp::full_name()),
            _types: PhantomData,
        };
        self.services
            .entry(service.to_string())
            .or_default()
            .insert(method.to_string(), Arc::new(entry));
        self
    }

    /// Caps every handler's time (and gives a deadline to calls that come
    /// without one); `None` lets calls without a timeout run unbounded.
    pub fn request_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Largest accepted request body, also after decompression.
    pub fn max_request_size(mut self, bytes: usize) -> Self {
        self.max_request_size = bytes;
        self
    }

    /// Counts the items of every request against `limits` before decoding
    /// it (see [`crate::shape`]). Text-format bodies, which can only be
    /// counted once parsed, are held to a sixteenth of the request size.
    pub fn shape_limits(mut self, limits: Arc<ShapeLimits>) -> Self {
        self.shape = Some(limits);
        self
    }

    /// Runs `interceptor` before every handler (see [`RequestInterceptor`]).
    pub fn interceptor(mut self, interceptor: RequestInterceptor) -> Self {
        self.interceptor = Some(interceptor);
        self
    }

    /// Sets which browser origins may call (see [`CorsPolicy`]).
    pub fn cors(mut self, policy: CorsPolicy) -> Self {
        self.cors = policy;
        self
    }

    /// The registered services and, for each, its method names (sorted).
    pub fn methods(&self) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = self
            .services
            .iter()
            .map(|(s, m)| {
                let mut names: Vec<String> = m.keys().cloned().collect();
                names.sort();
                (s.clone(), names)
            })
            .collect();
        out.sort();
        out
    }

    /// The axum router serving `/prpc/...`. Every method of every registered
    /// service is reached through the one route; unknown names are answered
    /// by the protocol's own errors.
    pub fn into_router(self) -> axum::Router {
        // The bare prefix routes exist so that even a malformed path under
        // the prefix gets a pRPC answer (with its code header).
        axum::Router::new()
            .route("/prpc", axum::routing::any(handle))
            .route("/prpc/", axum::routing::any(handle))
            .route("/prpc/{*rest}", axum::routing::any(handle))
            .with_state(Arc::new(self))
    }
}

/// An error on its way to becoming a response.
struct PrpcError {
    status: Status,
    /// Produced by the protocol layer itself: its message is always shown.
    /// Handler errors that map to HTTP 5xx get a generic message instead.
    protocol: bool,
}

impl PrpcError {
    fn protocol(code: Code, message: impl Into<String>) -> Self {
        PrpcError {
            status: Status::new(code, message),
            protocol: true,
        }
    }

    fn handler(status: Status) -> Self {
        PrpcError {
            status,
            protocol: false,
        }
    }
}

async fn handle(State(router): State<Arc<PrpcRouter>>, req: Request) -> Response {
    let cors = req
        .headers()
        .get(ORIGIN)
        .and_then(|o| o.to_str().ok())
        .and_then(|o| router.cors.check(o).map(|cred| (o.to_string(), cred)));
    let mut response = match *req.method() {
        Method::POST => serve_post(&router, req).await,
        Method::OPTIONS => preflight(cors.is_some()),
        ref other => error_response(
            PrpcError::protocol(
                Code::Unimplemented,
                format!("HTTP method {other} is not allowed; pRPC calls use POST"),
            ),
            Format::Binary,
            Some(StatusCode::METHOD_NOT_ALLOWED),
        ),
    };
    let not_allowed = response.status() == StatusCode::METHOD_NOT_ALLOWED;
    let headers = response.headers_mut();
    if not_allowed {
        headers.insert(
            http::header::ALLOW,
            HeaderValue::from_static("POST, OPTIONS"),
        );
    }
    if let Some((origin, credentials)) = cors
        && let Ok(origin) = HeaderValue::from_str(&origin)
    {
        headers.insert("access-control-allow-origin", origin);
        headers.append(VARY, HeaderValue::from_static("Origin"));
        if credentials {
            headers.insert(
                "access-control-allow-credentials",
                HeaderValue::from_static("true"),
            );
        }
        headers.insert(
            "access-control-expose-headers",
            HeaderValue::from_static("X-Prpc-Grpc-Code, X-Prpc-Status-Details-Bin"),
        );
    }
    response
}

fn preflight(allowed: bool) -> Response {
    let mut response = StatusCode::OK.into_response();
    let headers = response.headers_mut();
    headers.insert(HEADER_GRPC_CODE, HeaderValue::from_static("0"));
    headers.insert(NOSNIFF.0, HeaderValue::from_static(NOSNIFF.1));
    if allowed {
        headers.insert(
            "access-control-allow-headers",
            HeaderValue::from_static(
                "Origin, Content-Type, Accept, Authorization, X-Prpc-Grpc-Timeout, X-Prpc-Max-Response-Size",
            ),
        );
        headers.insert(
            "access-control-allow-methods",
            HeaderValue::from_static("OPTIONS, POST"),
        );
        headers.insert("access-control-max-age", HeaderValue::from_static("600"));
    }
    response
}

/// Reads a header as text. Values that are not visible ASCII are treated as
/// malformed by every caller.
fn header_str(
    headers: &HeaderMap,
    name: impl http::header::AsHeaderName,
) -> Result<Option<&str>, ()> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v.to_str().map(Some).map_err(|_| ()),
    }
}

/// All values of a header joined as one list, as HTTP allows.
fn joined_header(headers: &HeaderMap, name: HeaderName) -> Result<Option<String>, ()> {
    let mut values = headers.get_all(name).iter().peekable();
    if values.peek().is_none() {
        return Ok(None);
    }
    let parts: Result<Vec<&str>, ()> = values.map(|v| v.to_str().map_err(|_| ())).collect();
    Ok(Some(parts?.join(", ")))
}

fn bad_headers(msg: impl std::fmt::Display) -> PrpcError {
    PrpcError::protocol(Code::InvalidArgument, format!("bad request headers: {msg}"))
}

fn too_large() -> PrpcError {
    PrpcError::protocol(
        Code::Unavailable,
        "the request size exceeds the server limit",
    )
}

/// The negotiated shape of the call, known before the body is read.
struct CallPlan {
    method: Arc<dyn UnaryMethod>,
    info: RpcMethod,
    input: Format,
    output: Format,
    deadline: Option<Instant>,
    max_response_size: Option<u64>,
    gzip_request: bool,
    gzip_response: bool,
}

async fn serve_post(router: &PrpcRouter, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    // Error bodies are text, but status details use the negotiated format
    // when there is one.
    let details_format =
        parse_accept(header_str(&parts.headers, ACCEPT).ok().flatten()).unwrap_or(Format::Binary);
    let plan = match plan_call(router, &parts) {
        Ok(plan) => plan,
        Err((err, status)) => return error_response(err, details_format, status),
    };
    let output = plan.output;
    match run_call(router, plan, parts, body).await {
        Ok(response) => response,
        Err(err) => error_response(err, output, None),
    }
}

/// Everything that can be decided from the request line and headers.
/// Errors come with an HTTP status when it differs from the code's.
fn plan_call(
    router: &PrpcRouter,
    parts: &http::request::Parts,
) -> Result<CallPlan, (PrpcError, Option<StatusCode>)> {
    let path = parts.uri.path();
    let rest = path.strip_prefix("/prpc/").unwrap_or(path);
    let Some((service, method)) = rest
        .split_once('/')
        .filter(|(s, m)| !s.is_empty() && !m.is_empty() && !m.contains('/'))
    else {
        return Err((
            PrpcError::protocol(
                Code::NotFound,
                format!("{path:?} is not a pRPC path; expected /prpc/<service>/<method>"),
            ),
            None,
        ));
    };
    let Some(methods) = router.services.get(service) else {
        return Err((
            PrpcError::protocol(
                Code::Unimplemented,
                format!("service {service:?} is not implemented"),
            ),
            None,
        ));
    };
    let Some(entry) = methods.get(method) else {
        return Err((
            PrpcError::protocol(
                Code::Unimplemented,
                format!("method {method:?} in service {service:?} is not implemented"),
            ),
            None,
        ));
    };
    let headers = &parts.headers;

    let content_type = header_str(headers, CONTENT_TYPE).map_err(|()| {
        (
            PrpcError::protocol(
                Code::InvalidArgument,
                "bad Content-Type header: not valid ASCII",
            ),
            Some(StatusCode::UNSUPPORTED_MEDIA_TYPE),
        )
    })?;
    let input = parse_content_type(content_type).map_err(|e| {
        (
            PrpcError::protocol(Code::InvalidArgument, e.0),
            Some(StatusCode::UNSUPPORTED_MEDIA_TYPE),
        )
    })?;

    let accept = joined_header(headers, ACCEPT).map_err(|()| {
        (
            PrpcError::protocol(Code::InvalidArgument, "bad Accept header: not valid ASCII"),
            None,
        )
    })?;
    let output = parse_accept(accept.as_deref()).map_err(|e| {
        let status = match e {
            AcceptError::Malformed(_) => None,
            AcceptError::NotSupported => Some(StatusCode::NOT_ACCEPTABLE),
        };
        (
            PrpcError::protocol(Code::InvalidArgument, e.to_string()),
            status,
        )
    })?;

    let timeout = match header_str(headers, HEADER_TIMEOUT) {
        Err(()) => return Err((bad_headers("bad timeout: not valid ASCII"), None)),
        Ok(None) => None,
        Ok(Some(v)) => Some(parse_timeout(v).map_err(|e| (bad_headers(e), None))?),
    };
    let deadline = deadline_from(Instant::now(), timeout, router.request_timeout);

    let max_response_size = match header_str(headers, HEADER_MAX_RESPONSE_SIZE) {
        Err(()) => {
            return Err((
                bad_headers("bad X-Prpc-Max-Response-Size: not valid ASCII"),
                None,
            ));
        }
        Ok(None) => None,
        Ok(Some(v)) => Some(parse_max_response_size(v).map_err(|e| (bad_headers(e), None))?),
    };

    let gzip_request = match header_str(headers, CONTENT_ENCODING) {
        Ok(None) => false,
        Ok(Some(v)) if v.trim().eq_ignore_ascii_case("gzip") => true,
        Ok(Some(v)) if v.trim().is_empty() || v.trim().eq_ignore_ascii_case("identity") => false,
        _ => {
            return Err((
                PrpcError::protocol(
                    Code::InvalidArgument,
                    "bad Content-Encoding header: only gzip is supported",
                ),
                Some(StatusCode::UNSUPPORTED_MEDIA_TYPE),
            ));
        }
    };
    let gzip_response = joined_header(headers, ACCEPT_ENCODING)
        .ok()
        .flatten()
        .is_some_and(|v| accepts_gzip(&v));

    Ok(CallPlan {
        method: Arc::clone(entry),
        info: RpcMethod {
            service: Arc::from(service),
            method: Arc::from(method),
            transport: Transport::Prpc,
        },
        input,
        output,
        deadline,
        max_response_size,
        gzip_request,
        gzip_response,
    })
}

async fn run_call(
    router: &PrpcRouter,
    plan: CallPlan,
    parts: http::request::Parts,
    body: Body,
) -> Result<Response, PrpcError> {
    let metadata = headers_to_metadata(&parts.headers, &parts.uri)?;

    let limit = router.max_request_size;
    if let Ok(Some(len)) = header_str(&parts.headers, CONTENT_LENGTH)
        && len.parse::<u64>().is_ok_and(|n| n > limit as u64)
    {
        return Err(too_large());
    }
    // The call's deadline covers reading its body: a client that trickles
    // a body holds a connection and a buffer no longer than its call could.
    let read = async {
        let raw = read_body(body, limit).await?;
        if plan.gzip_request {
            gunzip(raw, limit).await
        } else {
            Ok(raw)
        }
    };
    let raw = match plan.deadline {
        Some(deadline) => tokio::time::timeout_at(deadline.into(), read)
            .await
            .unwrap_or_else(|_| {
                Err(PrpcError::protocol(
                    Code::DeadlineExceeded,
                    "deadline exceeded while reading the request body",
                ))
            })?,
        None => read.await?,
    };

    let shape = router.shape.as_deref();
    let shape_error = |e: ShapeError| PrpcError::protocol(Code::InvalidArgument, e.to_string());
    let binary = match plan.input {
        Format::Binary => {
            if let (Some(shape), Some(desc)) = (shape, plan.method.input()) {
                shape.check_binary(desc, &raw).map_err(shape_error)?;
            }
            raw
        }
        format => {
            let desc = plan.method.input().ok_or_else(|| {
                PrpcError::handler(Status::internal("no descriptor for the request message"))
            })?;
            if let Some(shape) = shape {
                match format {
                    Format::Json => shape.check_json(desc, &raw).map_err(shape_error)?,
                    _ if raw.len() > limit / 16 => {
                        return Err(PrpcError::protocol(
                            Code::InvalidArgument,
                            format!(
                                "a text-format request body may be at most {} bytes; \
                                 use the binary or JSON format",
                                limit / 16
                            ),
                        ));
                    }
                    _ => {}
                }
            }
            let converted = codec::to_binary(format, desc, &raw).map_err(|e| {
                PrpcError::protocol(Code::InvalidArgument, format!("could not decode body: {e}"))
            })?;
            drop(raw);
            if let Some(shape) = shape {
                shape.check_binary(desc, &converted).map_err(shape_error)?;
            }
            Bytes::from(converted)
        }
    };
    let call = Arc::clone(&plan.method).prepare(&binary).map_err(|e| {
        PrpcError::protocol(Code::InvalidArgument, format!("could not decode body: {e}"))
    })?;
    drop(binary);

    let mut extensions = parts.extensions;
    if let Some(deadline) = plan.deadline {
        extensions.insert(RequestDeadline(deadline));
    }
    extensions.insert(plan.info);
    let mut request = tonic::Request::from_parts(metadata, extensions, ());
    if let Some(interceptor) = &router.interceptor {
        request = interceptor(request).map_err(PrpcError::handler)?;
    }
    let call = call(request);
    let result = match plan.deadline {
        Some(deadline) => tokio::time::timeout_at(deadline.into(), call)
            .await
            .unwrap_or_else(|_| Err(Status::deadline_exceeded("deadline exceeded"))),
        None => call.await,
    };
    let (response_metadata, response_binary) = match result {
        Ok(ok) => ok,
        Err(status) if status.code() == Code::Ok => {
            // An error must never look like a success.
            return Err(PrpcError::handler(Status::unknown(format!(
                "handler failed with code OK: {}",
                status.message()
            ))));
        }
        Err(status) => return Err(PrpcError::handler(status)),
    };

    let body = match plan.output {
        Format::Binary => response_binary,
        format => {
            let desc = plan.method.output().ok_or_else(|| {
                PrpcError::handler(Status::internal("no descriptor for the response message"))
            })?;
            codec::from_binary(format, desc, response_binary).map_err(|e| {
                PrpcError::handler(Status::internal(format!("could not encode response: {e}")))
            })?
        }
    };

    if let Some(limit) = plan.max_response_size
        && body.len() as u64 > limit
    {
        return Err(response_too_big(body.len() as u64, limit));
    }

    let (body, gzipped) = if plan.gzip_response && body.len() > GZIP_THRESHOLD {
        (gzip(body).await?, true)
    } else {
        (body, false)
    };

    let mut response = Response::new(Body::from(body));
    let headers = response.headers_mut();
    metadata_to_headers(&response_metadata, headers);
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(plan.output.media_type()),
    );
    headers.insert(HEADER_GRPC_CODE, HeaderValue::from_static("0"));
    headers.insert(NOSNIFF.0, HeaderValue::from_static(NOSNIFF.1));
    if gzipped {
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    if plan.gzip_response {
        headers.append(VARY, HeaderValue::from_static("Accept-Encoding"));
    }
    Ok(response)
}

fn response_too_big(size: u64, limit: u64) -> PrpcError {
    let details = crate::luci::prpc::ErrorDetails {
        error: Some(crate::luci::prpc::error_details::Error::ResponseTooBig(
            crate::luci::prpc::ResponseTooBig {
                response_size: i64::try_from(size).unwrap_or(i64::MAX),
                response_limit: i64::try_from(limit).unwrap_or(i64::MAX),
            },
        )),
    };
    let message = format!("the response size {size} exceeds the client limit {limit}");
    let status = RpcStatus {
        code: Code::Unavailable as i32,
        message: message.clone(),
        details: vec![prost_types::Any {
            type_url: "type.googleapis.com/luci.prpc.ErrorDetails".to_string(),
            value: details.encode_to_vec(),
        }],
    };
    PrpcError {
        status: Status::with_details(
            Code::Unavailable,
            message,
            Bytes::from(status.encode_to_vec()),
        ),
        protocol: true,
    }
}

/// Reads the whole body, refusing more than `limit` bytes.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, PrpcError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        // The client went away or sent less than it announced.
        Err(e) => Err(PrpcError::protocol(
            Code::Cancelled,
            format!("could not read body: {e}"),
        )),
    }
}

/// Bodies at least this big are (de)compressed off the async workers.
const BLOCKING_THRESHOLD: usize = 256 << 10;

async fn off_async<T: Send + 'static>(
    size: usize,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, PrpcError> {
    if size < BLOCKING_THRESHOLD {
        return Ok(work());
    }
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| PrpcError::handler(Status::internal(format!("compression task failed: {e}"))))
}

/// Decompresses a gzip body (several members allowed), refusing more than
/// `limit` bytes of output.
async fn gunzip(raw: Bytes, limit: usize) -> Result<Bytes, PrpcError> {
    off_async(raw.len(), move || {
        let mut out = Vec::new();
        let decoder = flate2::read::MultiGzDecoder::new(raw.as_ref());
        match decoder.take(limit as u64 + 1).read_to_end(&mut out) {
            Ok(_) if out.len() > limit => Err(too_large()),
            Ok(_) => Ok(Bytes::from(out)),
            Err(e) => Err(PrpcError::protocol(
                Code::InvalidArgument,
                format!("could not decode body: bad gzip: {e}"),
            )),
        }
    })
    .await?
}

async fn gzip(body: Vec<u8>) -> Result<Vec<u8>, PrpcError> {
    off_async(body.len(), move || {
        let mut encoder = flate2::write::GzEncoder::new(
            Vec::with_capacity(body.len() / 4),
            flate2::Compression::default(),
        );
        encoder
            .write_all(&body)
            .and_then(|()| encoder.finish())
            .map_err(|e| PrpcError::handler(Status::internal(format!("gzip failed: {e}"))))
    })
    .await?
}

/// Headers that belong to the protocol or the connection and never become
/// call metadata (nor come from it).
fn is_reserved_header(name: &str) -> bool {
    matches!(
        name,
        "accept"
            | "accept-encoding"
            | "content-encoding"
            | "content-length"
            | "content-type"
            | "vary"
            | "x-content-type-options"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
    ) || name.starts_with("x-prpc-")
        || name.starts_with("access-control-")
        || name.starts_with("grpc-")
}

/// Turns request headers into the call's metadata, the way gRPC delivers
/// them: `-bin` values base64-decoded (several per header, comma-separated).
fn headers_to_metadata(headers: &HeaderMap, uri: &http::Uri) -> Result<MetadataMap, PrpcError> {
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let key = name.as_str();
        if is_reserved_header(key) {
            continue;
        }
        if key.ends_with("-bin") {
            let text = value
                .to_str()
                .map_err(|_| bad_headers(format!("{key}: not valid base64")))?;
            for part in text.split(',') {
                let decoded = BASE64
                    .decode(part.trim())
                    .map_err(|e| bad_headers(format!("{key}: not valid base64: {e}")))?;
                // tonic keeps binary metadata in its encoded form.
                let encoded = HeaderValue::from_str(&BASE64.encode(decoded))
                    .map_err(|e| bad_headers(format!("{key}: {e}")))?;
                out.append(name.clone(), encoded);
            }
        } else {
            out.append(name.clone(), value.clone());
        }
    }
    // Over HTTP/2 the host travels in the request line, not in a header.
    if !out.contains_key(HOST)
        && let Some(authority) = uri.authority()
        && let Ok(v) = HeaderValue::from_str(authority.as_str())
    {
        out.insert(HOST, v);
    }
    Ok(MetadataMap::from_headers(out))
}

/// Emits the handler's response metadata as headers; `-bin` values in
/// padded standard base64 as pRPC wants. Reserved names are dropped: a
/// handler cannot override the protocol's own headers.
fn metadata_to_headers(metadata: &MetadataMap, headers: &mut HeaderMap) {
    for entry in metadata.iter() {
        match entry {
            KeyAndValueRef::Ascii(key, value) => {
                if is_reserved_header(key.as_str()) {
                    continue;
                }
                if let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(key.as_str().as_bytes()),
                    HeaderValue::from_bytes(value.as_encoded_bytes()),
                ) {
                    headers.append(name, value);
                }
            }
            KeyAndValueRef::Binary(key, value) => {
                if is_reserved_header(key.as_str()) {
                    continue;
                }
                let Ok(bytes) = value.to_bytes() else {
                    continue;
                };
                if let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(key.as_str().as_bytes()),
                    HeaderValue::from_str(&BASE64.encode(bytes)),
                ) {
                    headers.append(name, value);
                }
            }
        }
    }
}

/// Encodes one status detail in the response format, for
/// `X-Prpc-Status-Details-Bin`.
fn encode_detail(any: &prost_types::Any, format: Format) -> Option<Vec<u8>> {
    let binary = any.encode_to_vec();
    match format {
        Format::Binary => Some(binary),
        Format::Json | Format::Text => {
            let desc = crate::descriptor_pool().get_message_by_name("google.protobuf.Any")?;
            let msg = DynamicMessage::decode(desc, binary.as_slice()).ok()?;
            if format == Format::Json {
                codec::message_to_json(&msg).ok()
            } else {
                Some(msg.to_text_format().into_bytes())
            }
        }
    }
}

/// Builds an error response. `http` overrides the status the code maps to
/// (415, 406 and 405 are protocol-specific).
fn error_response(err: PrpcError, details_format: Format, http: Option<StatusCode>) -> Response {
    let PrpcError { status, protocol } = err;
    // An error must never travel with HTTP 200.
    let code = if status.code() == Code::Ok {
        Code::Unknown
    } else {
        status.code()
    };
    let http = http.unwrap_or_else(|| http_status(code));
    let message = if !protocol && http.is_server_error() {
        if !status.message().is_empty() {
            tracing::warn!(
                code = ?code,
                message = status.message(),
                "pRPC handler error; the client sees a generic message"
            );
        }
        generic_message(code).to_string()
    } else {
        status.message().to_string()
    };
    let mut response = (http, format!("{message}\n")).into_response();
    let headers = response.headers_mut();
    metadata_to_headers(status.metadata(), headers);
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(TEXT_PLAIN));
    headers.insert(
        HEADER_GRPC_CODE,
        HeaderValue::from((code as i32).max(0) as u32),
    );
    headers.insert(NOSNIFF.0, HeaderValue::from_static(NOSNIFF.1));
    if !status.details().is_empty()
        && let Ok(rpc_status) = RpcStatus::decode(status.details())
    {
        for any in &rpc_status.details {
            if let Some(encoded) = encode_detail(any, details_format)
                && let Ok(v) = HeaderValue::from_str(&BASE64.encode(encoded))
            {
                headers.append(HEADER_STATUS_DETAILS, v);
            }
        }
    }
    response
}
