//! The tower layer that decides, for both transports and every HTTP path,
//! whether a request may go on, before its body is read.
//!
//! In order:
//!
//! 1. **Browser safety** (with or without `[auth]`): a pRPC request with an
//!    `Origin` header not in `[auth] allowed_origins` is refused with 403,
//!    so a web page cannot drive a server it happens to reach (even one on
//!    loopback).
//! 2. **Replica forwarding**: the `x-qscheduler-forwarded-by` marker and
//!    the forwarded principal are only believed from a peer that presents
//!    the shared peer secret; from anyone else they are removed, so a
//!    client cannot pose as a replica.
//! 3. **Authentication and roles** (only with `[auth]`): `/healthz` stays
//!    open, the metrics path needs the metrics token when one is set, a
//!    method of the three services needs a principal holding the method's
//!    role for at least one pool (the pool itself is checked by the
//!    handler, which knows it), and anything else needs a known principal.
//! 4. **The dashboard** (`/ui/`, only with `[auth]`): the sign-in and
//!    sign-out pages are open, but a form posted to them must come from
//!    the dashboard's own origin (or an allowed one); every other page
//!    needs a principal with `view` on some pool, found from the
//!    configured proxy header, the session cookie ([`super::session`]), a
//!    bearer token or a client certificate, in that order. A browser with
//!    none is sent to the sign-in page. The pages check each pool against
//!    the [`Access`] left here, as the RPCs do.
//!
//! Refusals take the form the caller's transport expects: gRPC status
//! headers, pRPC's HTTP 401/403 with `X-Prpc-Grpc-Code`, or plain HTTP.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use axum::body::Body;
use http::header::{AUTHORIZATION, CONTENT_TYPE, ORIGIN};
use http::{HeaderValue, Request, Response, StatusCode};
use tonic::{Code, Status};
use tower::{Layer, Service};

use super::session::{Sessions, session_cookie};
use super::{Access, AuthError, Policy, Principal, Role, Sha256Hash};
use crate::audit::AuditSlot;
use crate::service::FORWARDED_BY;
use crate::tls::PeerCertificate;

/// Header a replica proves itself with when it forwards a call: the shared
/// peer secret.
pub const PEER_SECRET_HEADER: &str = "x-qscheduler-peer";

/// Header naming the original caller of a forwarded call (believed only
/// together with a valid [`PEER_SECRET_HEADER`]).
pub const FORWARDED_PRINCIPAL: &str = "x-qscheduler-principal";

/// Paths that are open whatever the configuration: probes.
const OPEN_PATHS: [&str; 3] = ["/healthz", "/readyz", "/livez"];

/// gRPC health checking, open like the probes (Kubernetes' gRPC probes
/// carry no credentials); it reveals only whether the server is ready.
const OPEN_PREFIXES: [&str; 1] = ["/grpc.health.v1.Health/"];

/// The read-only dashboard: the `view` role, checked per pool by its pages.
const DASHBOARD_PREFIX: &str = "/ui";

/// The dashboard's sign-in page.
pub const SIGN_IN: &str = "/ui/signin";

/// The dashboard's sign-out.
pub const SIGN_OUT: &str = "/ui/signout";

/// The `[auth]` policy, replaceable while the server runs (a configuration
/// reload revokes tokens without a restart).
#[derive(Debug, Default)]
pub struct PolicyCell(RwLock<Arc<Policy>>);

impl PolicyCell {
    /// A cell holding `policy`.
    pub fn new(policy: Policy) -> Self {
        PolicyCell(RwLock::new(Arc::new(policy)))
    }

    /// The current policy.
    pub fn get(&self) -> Arc<Policy> {
        Arc::clone(
            &self
                .0
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Replaces the policy; calls already admitted keep the old one.
    pub fn set(&self, policy: Policy) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(policy);
    }
}

/// What the layer enforces.
#[derive(Clone, Debug, Default)]
pub struct AuthSettings {
    /// `[auth]`, when the configuration has it.
    pub policy: Option<Arc<PolicyCell>>,
    /// Hash of the replicas' shared secret, when set.
    pub peer_secret: Option<Sha256Hash>,
    /// The metrics endpoint's path, when metrics are on.
    pub metrics_path: Option<String>,
    /// The dashboard's sessions (shared with its sign-in page).
    pub sessions: Arc<Sessions>,
}

/// The layer.
#[derive(Clone, Debug)]
pub struct AuthLayer {
    settings: Arc<AuthSettings>,
}

impl AuthLayer {
    /// A layer enforcing `settings`.
    pub fn new(settings: AuthSettings) -> Self {
        AuthLayer {
            settings: Arc::new(settings),
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            settings: Arc::clone(&self.settings),
        }
    }
}

/// The service of [`AuthLayer`].
#[derive(Clone, Debug)]
pub struct AuthService<S> {
    inner: S,
    settings: Arc<AuthSettings>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Form {
    Grpc,
    Prpc,
    Http,
}

fn form_of<B>(req: &Request<B>) -> Form {
    if req.uri().path().starts_with("/prpc/") {
        Form::Prpc
    } else if req
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
    {
        Form::Grpc
    } else {
        Form::Http
    }
}

/// A refusal in the caller's form.
fn refuse(form: Form, status: Status) -> Box<Response<Body>> {
    Box::new(refusal(form, status))
}

fn refusal(form: Form, status: Status) -> Response<Body> {
    let http_status = match status.code() {
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        _ => StatusCode::FORBIDDEN,
    };
    match form {
        Form::Grpc => status.into_http::<Body>(),
        Form::Prpc | Form::Http => {
            let mut resp = Response::new(Body::from(format!("{}\n", status.message())));
            *resp.status_mut() = http_status;
            let h = resp.headers_mut();
            h.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            h.insert(
                "x-content-type-options",
                HeaderValue::from_static("nosniff"),
            );
            if form == Form::Prpc {
                h.insert(
                    qscheduler_wire::prpc::HEADER_GRPC_CODE,
                    HeaderValue::from(status.code() as i32),
                );
            }
            if http_status == StatusCode::UNAUTHORIZED {
                h.insert(
                    http::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer"),
                );
            }
            resp
        }
    }
}

/// The service and method of a call to one of the three services.
fn rpc_of<B>(req: &Request<B>) -> Option<(&str, &str)> {
    let path = req.uri().path();
    let rest = path
        .strip_prefix("/prpc/")
        .or_else(|| path.strip_prefix('/'))?;
    let (service, method) = rest.split_once('/')?;
    (Role::for_service(service).is_some() && !method.is_empty() && !method.contains('/'))
        .then_some((service, method))
}

impl AuthSettings {
    /// Whether the request carries the peer secret.
    fn is_peer<B>(&self, req: &Request<B>) -> bool {
        match (&self.peer_secret, req.headers().get(PEER_SECRET_HEADER)) {
            (Some(want), Some(got)) => Sha256Hash::of(got.as_bytes()).ct_eq(want),
            _ => false,
        }
    }

    /// Decides about `req`, possibly changing it (removing headers only a
    /// peer may send, adding the caller's [`Access`]).
    fn admit(&self, req: &mut Request<Body>) -> Result<(), Box<Response<Body>>> {
        let form = form_of(req);
        let policy = self.policy.as_ref().map(|p| p.get());
        if form == Form::Prpc
            && let Some(origin) = req.headers().get(ORIGIN)
        {
            let allowed = match (&policy, origin.to_str()) {
                (Some(p), Ok(o)) => p.origin_allowed(o),
                _ => false,
            };
            if !allowed {
                return Err(refuse(
                    form,
                    Status::permission_denied(format!(
                        "browser origin {:?} may not call this server; list it in [auth] \
                         allowed_origins",
                        String::from_utf8_lossy(origin.as_bytes())
                    )),
                ));
            }
        }
        let peer = self.is_peer(req);
        // Without a peer secret and without [auth], every caller is trusted
        // anyway (loopback, or --insecure): the marker keeps bounding how
        // far a call travels between replicas.
        if !peer && (self.peer_secret.is_some() || policy.is_some()) {
            let h = req.headers_mut();
            while h.remove(FORWARDED_BY).is_some() {}
            h.remove(FORWARDED_PRINCIPAL);
        }
        req.headers_mut().remove(PEER_SECRET_HEADER);
        let Some(policy) = policy else {
            return Ok(());
        };
        let path = req.uri().path();
        if OPEN_PATHS.contains(&path) || OPEN_PREFIXES.iter().any(|p| path.starts_with(p)) {
            return Ok(());
        }
        let authorization = req.headers().get(AUTHORIZATION).map(HeaderValue::as_bytes);
        if self.metrics_path.as_deref() == Some(path) {
            return if policy.metrics_allowed(authorization) {
                Ok(())
            } else {
                Err(refuse(
                    form,
                    Status::unauthenticated(
                        "the metrics endpoint needs the metrics bearer token \
                         ([auth] metrics_token_sha256)",
                    ),
                ))
            };
        }
        // A CORS preflight carries no credentials; its origin was checked.
        if form == Form::Prpc && req.method() == http::Method::OPTIONS {
            return Ok(());
        }
        if path == DASHBOARD_PREFIX || path.starts_with("/ui/") {
            return self.admit_dashboard(req, &policy);
        }
        let forwarded = req
            .headers()
            .get(FORWARDED_PRINCIPAL)
            .and_then(|v| v.to_str().ok())
            .filter(|_| peer)
            .map(str::to_owned);
        let certificate = req.extensions().get::<PeerCertificate>();
        let principal = match (forwarded, authorization, certificate) {
            (Some(name), _, _) => policy.principal_named(&name).ok_or(AuthError::Unknown),
            // A token wins over the certificate: one connection (a proxy's)
            // may carry several callers.
            (None, None, Some(cert)) => policy.certificate_principal(&cert.sans),
            (None, authorization, _) => policy.authenticate(authorization),
        }
        .map_err(|e| refuse(form, Status::unauthenticated(e.to_string())))?;
        if let Some(slot) = req.extensions().get::<AuditSlot>() {
            slot.update(|n| {
                n.principal = Some(format!("{}:{}", principal.kind.name(), principal.name))
            });
        }
        if let Some((service, method)) = rpc_of(req) {
            let role = Role::for_service(service).unwrap_or(Role::Admin);
            if !principal.may(role, None) {
                return Err(refuse(
                    form,
                    Status::permission_denied(format!(
                        "{} {:?} does not have role {role} (needed by {service}/{method}) for \
                         any pool",
                        principal.kind.name(),
                        principal.name
                    )),
                ));
            }
            req.extensions_mut().insert(Access { principal, role });
        }
        Ok(())
    }
}

impl AuthSettings {
    /// Admits a request for a dashboard page (see the module docs, step 4).
    fn admit_dashboard(
        &self,
        req: &mut Request<Body>,
        policy: &Policy,
    ) -> Result<(), Box<Response<Body>>> {
        let path = req.uri().path();
        if path == SIGN_IN || path == SIGN_OUT {
            if req.method() != http::Method::GET && !same_origin(req, policy) {
                return Err(refuse(
                    Form::Http,
                    Status::permission_denied(
                        "a sign-in or sign-out form must be posted from the dashboard's own \
                         pages (the Origin is neither this server nor in [auth] \
                         allowed_origins)",
                    ),
                ));
            }
            return Ok(());
        }
        let unauthenticated =
            |e: AuthError| refuse(Form::Http, Status::unauthenticated(e.to_string()));
        let proxied = policy
            .dashboard
            .proxy_user_header
            .as_ref()
            .and_then(|h| req.headers().get(h));
        let principal: Arc<Principal> = if let Some(user) = proxied {
            let name = user.to_str().unwrap_or("");
            policy.principal_named(name).ok_or_else(|| {
                refuse(
                    Form::Http,
                    Status::unauthenticated(format!(
                        "the authenticating proxy names {:?}, who is not a principal of [auth]",
                        name.chars().take(200).collect::<String>()
                    )),
                )
            })?
        } else if let Some(p) =
            session_cookie(req.headers()).and_then(|id| self.sessions.principal(policy, id))
        {
            p
        } else if let Some(a) = req.headers().get(AUTHORIZATION) {
            policy
                .authenticate(Some(a.as_bytes()))
                .map_err(unauthenticated)?
        } else if let Some(cert) = req.extensions().get::<PeerCertificate>() {
            policy
                .certificate_principal(&cert.sans)
                .map_err(unauthenticated)?
        } else if matches!(*req.method(), http::Method::GET | http::Method::HEAD) {
            return Err(Box::new(to_sign_in(req.uri())));
        } else {
            return Err(unauthenticated(AuthError::Missing));
        };
        if !principal.may(Role::View, None) {
            return Err(refuse(
                Form::Http,
                Status::permission_denied(format!(
                    "{} {:?} does not have role view for any pool, which the dashboard needs",
                    principal.kind.name(),
                    principal.name
                )),
            ));
        }
        req.extensions_mut().insert(Access {
            principal,
            role: Role::View,
        });
        Ok(())
    }
}

/// Whether a form post comes from a page of this server (or of an allowed
/// origin). Browsers send `Origin` with every POST; a client without it is
/// not a browser, which cross-site request forgery needs.
fn same_origin<B>(req: &Request<B>, policy: &Policy) -> bool {
    let headers = req.headers();
    let Some(origin) = headers.get(ORIGIN) else {
        return headers
            .get("sec-fetch-site")
            .is_none_or(|v| v == "same-origin" || v == "none");
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if policy.origin_allowed(origin) {
        return true;
    }
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    let authority = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    matches!((authority, host), (Some(a), Some(h)) if a.eq_ignore_ascii_case(h))
}

/// Sends a browser without credentials to the sign-in page, to come back.
fn to_sign_in(uri: &http::Uri) -> Response<Body> {
    let back = uri.path_and_query().map_or("/ui/", |p| p.as_str());
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SEE_OTHER;
    let location = format!("{SIGN_IN}?next={}", crate::ui::enc(back));
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(http::header::LOCATION, v);
    }
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    resp
}

impl<S> Service<Request<Body>> for AuthService<S>
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
        match self.settings.admit(&mut req) {
            Ok(()) => Box::pin(inner.call(req)),
            Err(resp) => Box::pin(async move { Ok(*resp) }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_paths() {
        let req = |p: &str| Request::post(p).body(()).unwrap();
        assert_eq!(
            rpc_of(&req("/prpc/qscheduler.QSchedulerAdmin/Wipe")),
            Some(("qscheduler.QSchedulerAdmin", "Wipe"))
        );
        assert_eq!(
            rpc_of(&req("/swarming.v1.ExternalScheduler/AssignTasks")),
            Some(("swarming.v1.ExternalScheduler", "AssignTasks"))
        );
        assert_eq!(rpc_of(&req("/metrics")), None);
        assert_eq!(rpc_of(&req("/prpc/evil.X/Y")), None);
    }
}
