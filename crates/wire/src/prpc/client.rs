//! A small pRPC client, for the command-line tool, tests and load
//! generation: HTTP/1.1 over plain `http://`, and over `https://` HTTP/2
//! when the server offers it by ALPN (else HTTP/1.1), as Go's clients do.
//!
//! It speaks the protocol as the server expects it (timeout header, gzip,
//! XSSI prefix) and turns every failure into a [`tonic::Status`], so callers
//! handle gRPC and pRPC errors alike.

use std::io::Read;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::header::{ACCEPT, ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_TYPE, USER_AGENT};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prost::Message;
use thiserror::Error;
use tonic::{Code, Status};

use super::codec::{self, XSSI_PREFIX};
use super::codes::code_without_header;
use super::headers::{Format, encode_timeout};
use super::server::{
    HEADER_GRPC_CODE, HEADER_MAX_RESPONSE_SIZE, HEADER_STATUS_DETAILS, HEADER_TIMEOUT, RpcStatus,
};

/// Error bodies longer than this are cut: they are meant for humans.
const MAX_ERROR_BODY: usize = 4096;

/// Why a client could not be built.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The base URL is not an absolute `http://host[:port]` URL.
    #[error("bad base URL {url:?}: {reason}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A header name or value is not valid HTTP.
    #[error("bad header {0:?}")]
    BadHeader(String),
    /// The TLS settings could not be used.
    #[error("TLS: {0}")]
    Tls(String),
}

/// The cryptography of every TLS connection: rustls's ring provider. It is
/// marked deprecated because ring has no post-quantum key exchange; the
/// alternative, aws-lc-rs, needs cmake and a C toolchain to build, which
/// the project's builds avoid.
#[allow(deprecated)]
pub fn crypto_provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls client configuration: the system's root certificates plus the
/// PEM CA certificates `ca_pem`, and a client certificate (PEM chain and
/// key) to present when the server asks for one.
pub fn client_tls_config(
    ca_pem: Option<&[u8]>,
    identity: Option<(&[u8], &[u8])>,
) -> Result<rustls::ClientConfig, ClientError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let tls = |e: &dyn std::fmt::Display| ClientError::Tls(e.to_string());
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for c in native.certs {
        // A system certificate rustls cannot use is not ours to report.
        let _ = roots.add(c);
    }
    if let Some(pem) = ca_pem {
        let mut any = false;
        for c in CertificateDer::pem_slice_iter(pem) {
            roots.add(c.map_err(|e| tls(&e))?).map_err(|e| tls(&e))?;
            any = true;
        }
        if !any {
            return Err(ClientError::Tls("no PEM certificate in the CA file".into()));
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .with_root_certificates(roots);
    match identity {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| tls(&e))?;
            if chain.is_empty() {
                return Err(ClientError::Tls(
                    "no PEM certificate in the client certificate file".into(),
                ));
            }
            let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| tls(&e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| tls(&e))
        }
        None => Ok(builder.with_no_client_auth()),
    }
}

/// A pRPC client for one server.
///
/// ```no_run
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// use qscheduler_wire::prpc::PrpcClient;
/// use qscheduler_wire::swarming::v1::{GetCallbacksRequest, GetCallbacksResponse};
///
/// let client = PrpcClient::new("http://127.0.0.1:8082")?;
/// let req = GetCallbacksRequest { scheduler_id: "pool".into() };
/// let resp: GetCallbacksResponse = client
///     .call("swarming.v1.ExternalScheduler", "GetCallbacks", &req)
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct PrpcClient {
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    prefix: String,
    format: Format,
    timeout: Option<Duration>,
    max_response_size: Option<u64>,
    headers: HeaderMap,
}

impl PrpcClient {
    /// A client for the server at `base_url` (`http://host:port`), binary
    /// encoding, no timeout.
    pub fn new(base_url: &str) -> Result<Self, ClientError> {
        Self::with_tls(base_url, None)
    }

    /// A client for `http://` or `https://` URLs; `tls` checks the server's
    /// certificate (default: against the system's roots) and may present a
    /// client certificate (see [`client_tls_config`]).
    pub fn with_tls(
        base_url: &str,
        tls: Option<rustls::ClientConfig>,
    ) -> Result<Self, ClientError> {
        let bad = |reason: &str| ClientError::BadUrl {
            url: base_url.to_string(),
            reason: reason.to_string(),
        };
        let uri: Uri = base_url
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        let scheme = uri.scheme().cloned().ok_or_else(|| bad("no scheme"))?;
        let https = scheme == http::uri::Scheme::HTTPS;
        if scheme != http::uri::Scheme::HTTP && !https {
            return Err(bad("expected http:// or https://"));
        }
        let authority = uri.authority().cloned().ok_or_else(|| bad("no host"))?;
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(false);
        let tls = match tls {
            Some(t) => t,
            // Plain HTTP never uses it: skip reading the system's roots.
            None if !https => rustls::ClientConfig::builder_with_provider(crypto_provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| ClientError::Tls(e.to_string()))?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
            None => client_tls_config(None, None)?,
        };
        let http = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            // Over TLS, offer HTTP/2 by ALPN as Go's pRPC clients (Swarming's)
            // do: concurrent calls then share a connection, and a TLS record
            // can carry several of them. Plain `http://` stays HTTP/1.1.
            .enable_all_versions()
            .wrap_connector(http);
        let mut default_headers = HeaderMap::new();
        default_headers.insert(USER_AGENT, HeaderValue::from_static("pRPC Client 1.5"));
        Ok(PrpcClient {
            http: Client::builder(TokioExecutor::new()).build(http),
            scheme,
            authority,
            prefix: "/prpc".to_string(),
            format: Format::Binary,
            timeout: None,
            max_response_size: None,
            headers: default_headers,
        })
    }

    /// Encodes requests and asks for responses in `format`. JSON and text
    /// work for the messages of this crate.
    pub fn with_format(mut self, format: Format) -> Self {
        self.format = format;
        self
    }

    /// Sends this timeout with every call, and gives up locally after it.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Asks the server to refuse responses bigger than `bytes`.
    pub fn with_max_response_size(mut self, bytes: u64) -> Self {
        self.max_response_size = Some(bytes);
        self
    }

    /// Uses another path prefix than `/prpc`.
    pub fn with_prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.trim_end_matches('/').to_string();
        self
    }

    /// Sends this header with every call (for example `authorization`).
    pub fn with_header(mut self, name: &str, value: &str) -> Result<Self, ClientError> {
        let n = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| ClientError::BadHeader(name.to_string()))?;
        let mut v =
            HeaderValue::from_str(value).map_err(|_| ClientError::BadHeader(name.to_string()))?;
        // Extra headers are credentials as a rule: kept out of `Debug` and
        // of HTTP/2 header compression tables.
        v.set_sensitive(true);
        self.headers.insert(n, v);
        Ok(self)
    }

    /// Calls `service`/`method` with `request`.
    pub async fn call<Req, Resp>(
        &self,
        service: &str,
        method: &str,
        request: &Req,
    ) -> Result<Resp, Status>
    where
        Req: Message + prost::Name,
        Resp: Message + prost::Name + Default,
    {
        self.call_with_metadata(service, method, request, &HeaderMap::new())
            .await
            .map(|(resp, _)| resp)
    }

    /// Like [`PrpcClient::call`], with extra request headers for this call,
    /// returning the response headers too.
    pub async fn call_with_metadata<Req, Resp>(
        &self,
        service: &str,
        method: &str,
        request: &Req,
        extra_headers: &HeaderMap,
    ) -> Result<(Resp, HeaderMap), Status>
    where
        Req: Message + prost::Name,
        Resp: Message + prost::Name + Default,
    {
        let fut = self.call_inner::<Req, Resp>(service, method, request, extra_headers);
        match self.timeout {
            Some(t) => tokio::time::timeout(t, fut)
                .await
                .unwrap_or_else(|_| Err(Status::deadline_exceeded("pRPC call timed out"))),
            None => fut.await,
        }
    }

    async fn call_inner<Req, Resp>(
        &self,
        service: &str,
        method: &str,
        request: &Req,
        extra_headers: &HeaderMap,
    ) -> Result<(Resp, HeaderMap), Status>
    where
        Req: Message + prost::Name,
        Resp: Message + prost::Name + Default,
    {
        let body = encode_request(self.format, request)?;
        let uri = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(format!("{}/{service}/{method}", self.prefix))
            .build()
            .map_err(|e| Status::invalid_argument(format!("bad pRPC method path: {e}")))?;
        let mut req = http::Request::builder()
            .method(Method::POST)
            .uri(uri)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| Status::internal(format!("could not build request: {e}")))?;
        let headers = req.headers_mut();
        headers.extend(self.headers.clone());
        headers.extend(extra_headers.clone());
        let media = HeaderValue::from_static(self.format.media_type());
        headers.insert(CONTENT_TYPE, media.clone());
        headers.insert(ACCEPT, media);
        headers.insert(ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        if let Some(t) = self.timeout
            && let Ok(v) = HeaderValue::from_str(&encode_timeout(t))
        {
            headers.insert(HEADER_TIMEOUT, v);
        }
        if let Some(n) = self.max_response_size {
            headers.insert(HEADER_MAX_RESPONSE_SIZE, HeaderValue::from(n));
        }

        let response = self
            .http
            .request(req)
            .await
            .map_err(|e| Status::unavailable(format!("pRPC request failed: {e}")))?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| Status::unavailable(format!("reading pRPC response failed: {e}")))?
            .to_bytes();
        let body = if parts
            .headers
            .get(CONTENT_ENCODING)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"))
        {
            let mut out = Vec::new();
            flate2::read::MultiGzDecoder::new(body.as_ref())
                .read_to_end(&mut out)
                .map_err(|e| Status::internal(format!("bad gzip response: {e}")))?;
            Bytes::from(out)
        } else {
            body
        };

        let code = parts
            .headers
            .get(HEADER_GRPC_CODE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i32>().ok())
            .map(Code::from_i32);
        match code {
            Some(Code::Ok) if parts.status == StatusCode::OK => {
                let resp = decode_response::<Resp>(self.format, &body)?;
                Ok((resp, parts.headers))
            }
            Some(Code::Ok) => Err(Status::internal(format!(
                "pRPC response has code OK but HTTP status {}",
                parts.status
            ))),
            Some(code) => Err(error_status(code, &body, &parts.headers, self.format)),
            None => {
                let code = code_without_header(parts.status);
                let msg = if code == Code::Internal && !parts.status.is_server_error() {
                    "no X-Prpc-Grpc-Code header".to_string()
                } else {
                    format!("HTTP {}: {}", parts.status, error_text(&body))
                };
                Err(Status::new(code, msg))
            }
        }
    }
}

fn error_text(body: &[u8]) -> String {
    let body = &body[..body.len().min(MAX_ERROR_BODY)];
    String::from_utf8_lossy(body)
        .trim_end_matches('\n')
        .to_string()
}

/// Rebuilds the server's status, with its details when they came in binary.
fn error_status(code: Code, body: &[u8], headers: &HeaderMap, format: Format) -> Status {
    let message = error_text(body);
    let details: Vec<prost_types::Any> = if format == Format::Binary {
        headers
            .get_all(HEADER_STATUS_DETAILS)
            .iter()
            .filter_map(|v| {
                let raw = v.to_str().ok()?;
                let bytes = base64::engine::general_purpose::STANDARD.decode(raw).ok()?;
                prost_types::Any::decode(bytes.as_slice()).ok()
            })
            .collect()
    } else {
        Vec::new()
    };
    if details.is_empty() {
        return Status::new(code, message);
    }
    let encoded = RpcStatus {
        code: code as i32,
        message: message.clone(),
        details,
    }
    .encode_to_vec();
    Status::with_details(code, message, Bytes::from(encoded))
}

fn descriptor_for<M: prost::Name>() -> Result<prost_reflect::MessageDescriptor, Status> {
    crate::descriptor_pool()
        .get_message_by_name(&M::full_name())
        .ok_or_else(|| Status::internal(format!("no descriptor for {}", M::full_name())))
}

fn encode_request<Req: Message + prost::Name>(
    format: Format,
    request: &Req,
) -> Result<Vec<u8>, Status> {
    let binary = request.encode_to_vec();
    if format == Format::Binary {
        return Ok(binary);
    }
    let mut body = codec::from_binary(format, &descriptor_for::<Req>()?, binary)
        .map_err(|e| Status::internal(format!("could not encode request: {e}")))?;
    // Requests carry no XSSI prefix.
    if format == Format::Json && body.starts_with(XSSI_PREFIX) {
        body.drain(..XSSI_PREFIX.len());
    }
    Ok(body)
}

fn decode_response<Resp: Message + prost::Name + Default>(
    format: Format,
    body: &[u8],
) -> Result<Resp, Status> {
    let bad = |e: String| Status::internal(format!("could not decode pRPC response: {e}"));
    let binary = match format {
        Format::Binary => return Resp::decode(body).map_err(|e| bad(e.to_string())),
        Format::Json => {
            let json = body.strip_prefix(XSSI_PREFIX).unwrap_or(body);
            codec::to_binary(Format::Json, &descriptor_for::<Resp>()?, json).map_err(bad)?
        }
        Format::Text => {
            codec::to_binary(Format::Text, &descriptor_for::<Resp>()?, body).map_err(bad)?
        }
    };
    Resp::decode(binary.as_slice()).map_err(|e| bad(e.to_string()))
}
