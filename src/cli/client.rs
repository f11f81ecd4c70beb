//! The admin and view calls over either transport, and their errors as a
//! person should read them.
//!
//! pRPC is the default because it is what the original tool spoke and works
//! through plain HTTP proxies; gRPC is there for deployments that only
//! expose it. Both end in a [`tonic::Status`], so the commands handle one
//! kind of error.

use std::fmt;
use std::time::Duration;

use qscheduler_server::secret::Secret;
use qscheduler_wire::prpc::PrpcClient;
use qscheduler_wire::qscheduler as adm;
use qscheduler_wire::qscheduler::q_scheduler_admin_client::QSchedulerAdminClient;
use qscheduler_wire::qscheduler::q_scheduler_insight_client::QSchedulerInsightClient;
use qscheduler_wire::qscheduler::q_scheduler_view_client::QSchedulerViewClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// Which protocol to speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// pRPC (HTTP POST, binary protobuf; HTTP/1.1, or HTTP/2 when an https:// server offers it).
    Prpc,
    /// gRPC (HTTP/2).
    Grpc,
}

/// A failed call: what was being done, on which server, and the status.
#[derive(Debug)]
pub struct RpcError {
    what: String,
    server: String,
    status: Status,
    /// The call never reached the server (connection refused, DNS, ...).
    unreachable: bool,
}

impl RpcError {
    /// The status code.
    pub fn code(&self) -> Code {
        self.status.code()
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: {}",
            self.what,
            code_name(self.status.code()),
            self.status.message()
        )?;
        if self.unreachable {
            write!(
                f,
                "\nhint: is the server running at {}? Choose another with --server or \
                 QSCHEDULER_SERVER.",
                self.server
            )?;
        } else if self.status.code() == Code::Unauthenticated {
            write!(
                f,
                "\nhint: give a bearer token with --token-file, --token or QSCHEDULER_TOKEN."
            )?;
        } else if self.status.code() == Code::DeadlineExceeded {
            write!(
                f,
                "\nhint: the server at {} did not answer in time; try a longer --timeout.",
                self.server
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for RpcError {}

/// The canonical name of a status code, as gRPC tools print it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The caller's credentials, shared by every client command and loadgen.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Credentials {
    /// Bearer token to send (a server with [auth] requires one). Prefer
    /// QSCHEDULER_TOKEN or --token-file: a command line is visible to other
    /// users of the host.
    #[arg(
        long,
        global = true,
        help_heading = "Connection",
        value_name = "TOKEN",
        env = "QSCHEDULER_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    token: Option<Secret>,
    /// Read the bearer token from this file (surrounding white space is
    /// ignored).
    #[arg(long, global = true, help_heading = "Connection", value_name = "FILE")]
    token_file: Option<std::path::PathBuf>,
    /// PEM CA certificates to check an https:// server's certificate with
    /// (in addition to the system's).
    #[arg(long, global = true, help_heading = "Connection", value_name = "FILE")]
    ca_cert: Option<std::path::PathBuf>,
    /// PEM client certificate (chain) to present to a server that accepts
    /// them (with --client-key).
    #[arg(
        long,
        global = true,
        help_heading = "Connection",
        value_name = "FILE",
        requires = "client_key"
    )]
    client_cert: Option<std::path::PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(
        long,
        global = true,
        help_heading = "Connection",
        value_name = "FILE",
        requires = "client_cert"
    )]
    client_key: Option<std::path::PathBuf>,
}

/// TLS settings read from [`Credentials`]' files.
#[derive(Clone, Default)]
pub struct TlsFiles {
    ca: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// Says which files were given, never what the private key is.
impl fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsFiles")
            .field(
                "ca",
                &self.ca.as_ref().map(|c| format!("{} bytes", c.len())),
            )
            .field(
                "identity",
                &self.identity.as_ref().map(|_| "<certificate and key>"),
            )
            .finish()
    }
}

impl TlsFiles {
    /// The rustls configuration for pRPC (`None`: the defaults).
    pub fn rustls(&self) -> anyhow::Result<Option<rustls::ClientConfig>> {
        if self.ca.is_none() && self.identity.is_none() {
            return Ok(None);
        }
        let identity = self
            .identity
            .as_ref()
            .map(|(c, k)| (c.as_slice(), k.as_slice()));
        qscheduler_wire::prpc::client_tls_config(self.ca.as_deref(), identity)
            .map(Some)
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// The tonic configuration for gRPC over https.
    pub fn tonic(&self) -> tonic::transport::ClientTlsConfig {
        let mut c = tonic::transport::ClientTlsConfig::new().with_native_roots();
        if let Some(ca) = &self.ca {
            c = c.ca_certificate(tonic::transport::Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = &self.identity {
            c = c.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        c
    }
}

impl Credentials {
    /// The bearer token, if any, checked to be sendable as a header.
    pub fn token(&self) -> anyhow::Result<Option<String>> {
        let token = match (&self.token, &self.token_file) {
            (Some(t), _) => t.expose().trim().to_owned(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("--token-file {}: {e}", path.display()))?
                .trim()
                .to_owned(),
            (None, None) => return Ok(None),
        };
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            anyhow::bail!(
                "the bearer token (--token, QSCHEDULER_TOKEN or --token-file) must be one word \
                 of printable ASCII"
            );
        }
        Ok(Some(token))
    }

    /// The TLS files, read.
    pub fn tls(&self) -> anyhow::Result<TlsFiles> {
        let read = |flag: &str, p: &std::path::Path| {
            std::fs::read(p).map_err(|e| anyhow::anyhow!("{flag} {}: {e}", p.display()))
        };
        Ok(TlsFiles {
            ca: self
                .ca_cert
                .as_deref()
                .map(|p| read("--ca-cert", p))
                .transpose()?,
            identity: match (&self.client_cert, &self.client_key) {
                (Some(c), Some(k)) => Some((read("--client-cert", c)?, read("--client-key", k)?)),
                _ => None,
            },
        })
    }
}

/// A pRPC client for `server` with the caller's token and TLS settings.
pub fn prpc_client(
    server: &str,
    timeout: Duration,
    token: Option<&str>,
    tls: &TlsFiles,
) -> anyhow::Result<PrpcClient> {
    let mut c = PrpcClient::with_tls(server, tls.rustls()?)
        .map_err(|e| anyhow::anyhow!("--server: {e}"))?
        .with_timeout(timeout);
    if let Some(t) = token {
        c = c
            .with_header("authorization", &format!("Bearer {t}"))
            .map_err(|_| anyhow::anyhow!("the bearer token is not a valid header value"))?;
    }
    Ok(c)
}

/// A gRPC endpoint for `server`, over TLS for https:// URLs.
pub fn grpc_endpoint(server: &str, timeout: Duration, tls: &TlsFiles) -> anyhow::Result<Endpoint> {
    let mut endpoint = Endpoint::from_shared(server.to_string())
        .map_err(|e| anyhow::anyhow!("--server: bad URL {server:?}: {e}"))?
        .timeout(timeout)
        .connect_timeout(timeout);
    if server.starts_with("https://") {
        endpoint = endpoint
            .tls_config(tls.tonic())
            .map_err(|e| anyhow::anyhow!("--server: TLS: {e}"))?;
    }
    Ok(endpoint)
}

/// Adds the bearer token to every gRPC call.
#[derive(Clone)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl Bearer {
    /// The `authorization` value for `token`.
    pub fn new(token: Option<&str>) -> anyhow::Result<Bearer> {
        token
            .map(|t| {
                let mut v = tonic::metadata::MetadataValue::try_from(format!("Bearer {t}"))
                    .map_err(|_| anyhow::anyhow!("the bearer token is not a valid header value"))?;
                // Kept out of `Debug` and of HTTP/2 header compression tables.
                v.set_sensitive(true);
                Ok(v)
            })
            .transpose()
            .map(Bearer)
    }

    /// Puts the token on `request`.
    pub fn apply<T>(&self, request: &mut tonic::Request<T>) {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        self.apply(&mut request);
        Ok(request)
    }
}

type Authed = InterceptedService<Channel, Bearer>;

enum Inner {
    Prpc(PrpcClient),
    Grpc {
        admin: QSchedulerAdminClient<Authed>,
        view: QSchedulerViewClient<Authed>,
        insight: QSchedulerInsightClient<Authed>,
    },
}

/// A client of one server's admin and view services.
pub struct Client {
    inner: Inner,
    server: String,
}

const ADMIN: &str = "qscheduler.QSchedulerAdmin";
const VIEW: &str = "qscheduler.QSchedulerView";
const INSIGHT: &str = "qscheduler.QSchedulerInsight";

/// One method per RPC, the same over both transports.
macro_rules! rpcs {
    ($($(#[$doc:meta])* $name:ident: $svc:ident / $method:literal, $field:ident,
       $req:ty => $resp:ty;)*) => {
        $(
            $(#[$doc])*
            pub async fn $name(&self, what: &str, req: $req) -> Result<$resp, RpcError> {
                let result = match &self.inner {
                    Inner::Prpc(c) => c.call($svc, $method, &req).await,
                    Inner::Grpc { $field, .. } => {
                        // tonic clients are cheap clones of one channel.
                        $field.clone().$name(req).await.map(tonic::Response::into_inner)
                    }
                };
                result.map_err(|status| self.error(what, status))
            }
        )*
    };
}

impl Client {
    /// A client for `server` (`http://host:port`). Nothing is sent yet: a
    /// server that is down shows up at the first call, with a hint.
    pub fn new(
        server: &str,
        transport: Transport,
        timeout: Duration,
        credentials: &Credentials,
    ) -> anyhow::Result<Client> {
        let token = credentials.token()?;
        let tls = credentials.tls()?;
        let bearer = Bearer::new(token.as_deref())?;
        let inner = match transport {
            Transport::Prpc => Inner::Prpc(prpc_client(server, timeout, token.as_deref(), &tls)?),
            Transport::Grpc => {
                let channel = grpc_endpoint(server, timeout, &tls)?.connect_lazy();
                Inner::Grpc {
                    admin: QSchedulerAdminClient::with_interceptor(channel.clone(), bearer.clone()),
                    insight: QSchedulerInsightClient::with_interceptor(
                        channel.clone(),
                        bearer.clone(),
                    ),
                    // The view of a pool with 100k queued tasks is far
                    // larger than tonic's 4 MiB default; pRPC has no limit
                    // either unless asked for one.
                    view: QSchedulerViewClient::with_interceptor(channel, bearer)
                        .max_decoding_message_size(usize::MAX),
                }
            }
        };
        Ok(Client {
            inner,
            server: server.to_string(),
        })
    }

    fn error(&self, what: &str, status: Status) -> RpcError {
        let unreachable = match &self.inner {
            // The pRPC client reports transport failures this way.
            Inner::Prpc(_) => {
                status.code() == Code::Unavailable
                    && status.message().starts_with("pRPC request failed")
            }
            // tonic marks connection failures as UNAVAILABLE with a
            // transport error as the source.
            Inner::Grpc { .. } => {
                status.code() == Code::Unavailable && std::error::Error::source(&status).is_some()
            }
        };
        RpcError {
            what: what.to_string(),
            server: self.server.clone(),
            status,
            unreachable,
        }
    }

    rpcs! {
        /// `CreateSchedulerPool`.
        create_scheduler_pool: ADMIN / "CreateSchedulerPool", admin,
            adm::CreateSchedulerPoolRequest => adm::CreateSchedulerPoolResponse;
        /// `ModSchedulerPool`.
        mod_scheduler_pool: ADMIN / "ModSchedulerPool", admin,
            adm::ModSchedulerPoolRequest => adm::ModSchedulerPoolResponse;
        /// `DeleteSchedulerPool`.
        delete_scheduler_pool: ADMIN / "DeleteSchedulerPool", admin,
            adm::DeleteSchedulerPoolRequest => adm::DeleteSchedulerPoolResponse;
        /// `Wipe`.
        wipe: ADMIN / "Wipe", admin, adm::WipeRequest => adm::WipeResponse;
        /// `CreateAccount` (replaces an existing account and zeroes its
        /// balance).
        create_account: ADMIN / "CreateAccount", admin,
            adm::CreateAccountRequest => adm::CreateAccountResponse;
        /// `ModAccount`.
        mod_account: ADMIN / "ModAccount", admin,
            adm::ModAccountRequest => adm::ModAccountResponse;
        /// `DeleteAccount`.
        delete_account: ADMIN / "DeleteAccount", admin,
            adm::DeleteAccountRequest => adm::DeleteAccountResponse;
        /// `ListAccounts`.
        list_accounts: VIEW / "ListAccounts", view,
            adm::ListAccountsRequest => adm::ListAccountsResponse;
        /// `InspectPool`.
        inspect_pool: VIEW / "InspectPool", view,
            adm::InspectPoolRequest => adm::InspectPoolResponse;
        /// `ListPools`.
        list_pools: VIEW / "ListPools", view,
            adm::ListPoolsRequest => adm::ListPoolsResponse;
        /// `ExplainTask`.
        explain_task: INSIGHT / "ExplainTask", insight,
            adm::ExplainTaskRequest => adm::ExplainTaskResponse;
        /// `AccountReport`.
        account_report: INSIGHT / "AccountReport", insight,
            adm::AccountReportRequest => adm::AccountReportResponse;
        /// `PoolOverview`.
        pool_overview: INSIGHT / "PoolOverview", insight,
            adm::PoolOverviewRequest => adm::PoolOverviewResponse;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        credentials: Credentials,
    }

    #[test]
    fn debug_never_prints_a_secret() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert, "CERTIFICATE").unwrap();
        std::fs::write(&key, "PRIVATE KEY hunter2").unwrap();
        let cmd = Cmd::try_parse_from([
            "x",
            "--token",
            "qs_hunter2-token",
            "--client-cert",
            cert.to_str().unwrap(),
            "--client-key",
            key.to_str().unwrap(),
        ])
        .unwrap();
        let c = &cmd.credentials;
        let tls = c.tls().unwrap();
        let bearer = Bearer::new(c.token().unwrap().as_deref()).unwrap();
        let mut request = tonic::Request::new(());
        bearer.apply(&mut request);
        let prpc = prpc_client(
            "http://127.0.0.1:1",
            Duration::from_secs(1),
            c.token().unwrap().as_deref(),
            &TlsFiles::default(),
        )
        .unwrap();
        for printed in [
            format!("{c:?}"),
            format!("{tls:?}"),
            format!("{:?}", request.metadata()),
            format!("{prpc:?}"),
        ] {
            assert!(!printed.contains("hunter2"), "{printed}");
        }
        assert_eq!(c.token().unwrap().as_deref(), Some("qs_hunter2-token"));
    }
}
