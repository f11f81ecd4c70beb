//! The RPC services: `swarming.v1.ExternalScheduler`,
//! `qscheduler.QSchedulerAdmin` and `qscheduler.QSchedulerView`.
//!
//! Each method validates and translates its request, hands it to the pool's
//! writer (changes) or reads the pool's committed state (views), and maps
//! errors to the gRPC status a client can act on: `INVALID_ARGUMENT` names
//! the field, a missing pool is `NOT_FOUND`, an overloaded pool
//! `RESOURCE_EXHAUSTED`, a storage failure `UNAVAILABLE` (retry), damaged
//! stored data `DATA_LOSS`.
//!
//! # Forwarding
//!
//! Swarming knows one address (a load balancer in front of the replicas), so
//! a call may reach a replica that does not own its pool. The service then
//! forwards the call, over gRPC, to the replica the registry names (the
//! lease holder, or the home of an unowned pool; see [`crate::registry`]),
//! and returns that replica's answer, errors included, as its own. The
//! forwarded call carries the caller's remaining deadline and its
//! `authorization` metadata, and the ids of the replicas it passed through,
//! which bounds how far it can travel (two hops). Channels to other replicas
//! are created lazily and kept.
//!
//! A call answered "pool closed" (the pool was handed to another replica
//! or lost its lease while the call waited in its queue, so it was not
//! logged) is located and tried once more.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qscheduler_core::{Command, CommandError, Time};
use qscheduler_store::Owner;
use qscheduler_wire::protos;
use qscheduler_wire::qscheduler as adm;
use qscheduler_wire::qscheduler::q_scheduler_admin_client::QSchedulerAdminClient;
use qscheduler_wire::qscheduler::q_scheduler_admin_server::QSchedulerAdmin;
use qscheduler_wire::qscheduler::q_scheduler_view_client::QSchedulerViewClient;
use qscheduler_wire::qscheduler::q_scheduler_view_server::QSchedulerView;
use qscheduler_wire::request_deadline;
use qscheduler_wire::swarming::v1 as pb;
use qscheduler_wire::swarming::v1::external_scheduler_client::ExternalSchedulerClient;
use qscheduler_wire::swarming::v1::external_scheduler_server::ExternalScheduler;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::audit;
use crate::auth::layer::{FORWARDED_PRINCIPAL, PEER_SECRET_HEADER};
use crate::auth::{Access, check_pool};
use crate::limits::Limits;
use crate::pool::{PoolError, PoolRef};
use crate::registry::{Location, PoolStatus, Registry, RegistryError};
use crate::rpc_layer::record_pool;
use crate::secret::Secret;
use crate::translate;

/// Metadata key marking a call forwarded by other replicas, one value per
/// replica it passed through (their ids).
pub const FORWARDED_BY: &str = "x-qscheduler-forwarded-by";

/// Largest message a forwarded call may carry either way (InspectPool of a
/// million-task pool is tens of MB).
const MAX_FORWARDED_MESSAGE: usize = 1 << 30;

/// The wall clock, read only at the edge: for pool creation and wipes, and
/// for the ages shown by InspectPool.
pub fn wall_now() -> Time {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Time::from_nanos(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

impl From<PoolError> for Status {
    fn from(e: PoolError) -> Status {
        let msg = e.to_string();
        match e {
            PoolError::Busy(_) | PoolError::OverBudget { .. } => Status::resource_exhausted(msg),
            PoolError::DeadlineExceeded => Status::deadline_exceeded(msg),
            PoolError::Command(CommandError::NoSuchAccount(_)) => Status::not_found(msg),
            PoolError::Command(_) => Status::invalid_argument(msg),
            PoolError::Store { .. } | PoolError::Closed(_) => Status::unavailable(msg),
        }
    }
}

impl From<RegistryError> for Status {
    fn from(e: RegistryError) -> Status {
        let msg = e.to_string();
        match e {
            RegistryError::NotFound(_) => Status::not_found(msg),
            RegistryError::AlreadyExists(_) => Status::already_exists(msg),
            RegistryError::TooManyPools { .. } => Status::resource_exhausted(msg),
            e if e.is_data_loss() => Status::data_loss(msg),
            RegistryError::NotOwner { .. }
            | RegistryError::ShuttingDown
            | RegistryError::BackingOff { .. }
            | RegistryError::Recover(_)
            | RegistryError::Unrecoverable { .. }
            | RegistryError::Store(_) => Status::unavailable(msg),
        }
    }
}

/// What a call needs to be forwarded: the replicas it already passed
/// through, the caller's credentials and its deadline.
pub(crate) struct Origin {
    forwarded_by: Vec<MetadataValue<tonic::metadata::Ascii>>,
    authorization: Option<MetadataValue<tonic::metadata::Ascii>>,
    deadline: Option<Instant>,
    /// The caller and the role its method needs (with `[auth]`).
    access: Option<Access>,
}

impl Origin {
    pub(crate) fn of<T>(request: &Request<T>) -> Origin {
        let md: &MetadataMap = request.metadata();
        Origin {
            forwarded_by: md.get_all(FORWARDED_BY).iter().cloned().collect(),
            authorization: md.get("authorization").cloned(),
            deadline: request_deadline(request),
            access: request.extensions().get::<Access>().cloned(),
        }
    }

    fn hops(&self) -> usize {
        self.forwarded_by.len()
    }
}

/// Why a local attempt did not produce an answer.
pub(crate) enum Fail {
    /// The pool closed before the call was logged; locate it again.
    Retry(Status),
    /// The answer.
    Status(Status),
}

impl From<Status> for Fail {
    fn from(s: Status) -> Fail {
        Fail::Status(s)
    }
}

impl From<PoolError> for Fail {
    fn from(e: PoolError) -> Fail {
        match e {
            PoolError::Closed(_) => Fail::Retry(e.into()),
            e => Fail::Status(e.into()),
        }
    }
}

/// gRPC channels to the other replicas, by advertised address.
struct Forwarder {
    me: String,
    channels: Mutex<HashMap<String, Channel>>,
    /// Proves to the other replicas that a call comes from a peer.
    peer_secret: Option<MetadataValue<tonic::metadata::Ascii>>,
    /// With TLS on the replicas' ports: how to check their certificates.
    tls: Option<tonic::transport::ClientTlsConfig>,
}

impl Forwarder {
    fn channel(&self, address: &str) -> Result<Channel, Status> {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = channels.get(address) {
            return Ok(c.clone());
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let uri = if address.contains("://") {
            address.to_owned()
        } else {
            format!("{scheme}://{address}")
        };
        let mut endpoint = Endpoint::from_shared(uri).map_err(|e| {
            Status::unavailable(format!(
                "cannot forward to the pool's owner: bad address {address:?}: {e}"
            ))
        })?;
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone()).map_err(|e| {
                Status::unavailable(format!(
                    "cannot forward to the pool's owner at {address:?}: TLS: {e}"
                ))
            })?;
        }
        let channel = endpoint
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .connect_lazy();
        // Replicas restarting on new ports leave stale entries; a handful of
        // replicas never need many.
        if channels.len() >= 64 {
            channels.clear();
        }
        channels.insert(address.to_owned(), channel.clone());
        Ok(channel)
    }

    /// Sends `msg` to `owner` with `call` and returns its answer as ours.
    async fn forward<Req, Resp, F, Fut>(
        &self,
        owner: &Owner,
        origin: &Origin,
        msg: Req,
        call: F,
    ) -> Result<Response<Resp>, Status>
    where
        F: FnOnce(Channel, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let channel = self.channel(&owner.address)?;
        let mut request = Request::new(msg);
        if let Some(d) = origin.deadline {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(PoolError::DeadlineExceeded.into());
            }
            request.set_timeout(left);
        }
        let md = request.metadata_mut();
        for v in &origin.forwarded_by {
            md.append(FORWARDED_BY, v.clone());
        }
        // An id that is not valid metadata still counts as a hop.
        md.append(
            FORWARDED_BY,
            MetadataValue::try_from(self.me.as_str())
                .unwrap_or_else(|_| MetadataValue::from_static("replica")),
        );
        if let Some(a) = &origin.authorization {
            md.insert("authorization", a.clone());
        }
        if let Some(secret) = &self.peer_secret {
            md.insert(PEER_SECRET_HEADER, secret.clone());
            // The owner authorizes the original caller, not this replica.
            if let Some(access) = &origin.access
                && let Ok(name) = MetadataValue::try_from(access.principal.name.as_str())
            {
                md.insert(FORWARDED_PRINCIPAL, name);
            }
        }
        match call(channel, request).await {
            Ok(r) => Ok(Response::new(r.into_inner())),
            // A status of our own transport (the owner did not answer), not
            // the owner's answer: say where it was going.
            Err(s) if std::error::Error::source(&s).is_some() => Err(Status::unavailable(format!(
                "the pool's owner, replica {} at {}, did not answer: {}; retry",
                owner.replica_id,
                owner.address,
                s.message()
            ))),
            Err(s) => Err(s),
        }
    }
}

/// The three services over one registry of pools.
#[derive(Clone)]
pub struct PoolServices {
    registry: Arc<Registry>,
    forwarder: Arc<Forwarder>,
    limits: Arc<Limits>,
    /// Calls without an [`Access`] are refused (the server has `[auth]`).
    auth_required: bool,
}

fn scheduler_client(c: Channel) -> ExternalSchedulerClient<Channel> {
    ExternalSchedulerClient::new(c)
        .max_decoding_message_size(MAX_FORWARDED_MESSAGE)
        .max_encoding_message_size(MAX_FORWARDED_MESSAGE)
}

fn admin_client(c: Channel) -> QSchedulerAdminClient<Channel> {
    QSchedulerAdminClient::new(c)
        .max_decoding_message_size(MAX_FORWARDED_MESSAGE)
        .max_encoding_message_size(MAX_FORWARDED_MESSAGE)
}

fn view_client(c: Channel) -> QSchedulerViewClient<Channel> {
    QSchedulerViewClient::new(c)
        .max_decoding_message_size(MAX_FORWARDED_MESSAGE)
        .max_encoding_message_size(MAX_FORWARDED_MESSAGE)
}

impl PoolServices {
    /// The services over `registry`, refusing requests over `limits`.
    pub fn new(registry: Arc<Registry>, limits: Limits) -> Self {
        let forwarder = Arc::new(Forwarder {
            me: registry.replica_id().to_owned(),
            channels: Mutex::new(HashMap::new()),
            peer_secret: None,
            tls: None,
        });
        PoolServices {
            registry,
            forwarder,
            limits: Arc::new(limits),
            auth_required: false,
        }
    }

    /// Requires an authorized caller on every call (`required`), and proves
    /// forwarded calls with `peer_secret`.
    pub fn with_auth(mut self, required: bool, peer_secret: Option<Secret>) -> Self {
        self.auth_required = required;
        let secret = peer_secret
            .and_then(|s| MetadataValue::try_from(s.expose()).ok())
            .map(|mut v| {
                // Kept out of `Debug` and of HTTP/2 header compression tables.
                v.set_sensitive(true);
                v
            });
        self.forwarder = Arc::new(Forwarder {
            me: self.forwarder.me.clone(),
            channels: Mutex::new(HashMap::new()),
            peer_secret: secret,
            tls: self.forwarder.tls.clone(),
        });
        self
    }

    /// Forwards calls over TLS, checking the other replicas' certificates
    /// against `ca_pem` (PEM CA certificates) and the system's roots.
    pub fn with_forwarding_tls(mut self, ca_pem: Option<Vec<u8>>) -> Self {
        let mut tls = tonic::transport::ClientTlsConfig::new().with_native_roots();
        if let Some(ca) = ca_pem {
            tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(ca));
        }
        self.forwarder = Arc::new(Forwarder {
            me: self.forwarder.me.clone(),
            channels: Mutex::new(HashMap::new()),
            peer_secret: self.forwarder.peer_secret.clone(),
            tls: Some(tls),
        });
        self
    }

    /// `PERMISSION_DENIED` unless the caller may call for `pool`.
    fn authorize(&self, access: Option<&Access>, pool: &str) -> Result<(), Status> {
        check_pool(access, self.auth_required, pool)
    }

    /// Serves a call for pool `id`: with `local` if the pool is (or can be
    /// opened) here, else by forwarding `msg` with `remote`.
    pub(crate) async fn route<Req, Resp, L, LF, R, RF>(
        &self,
        id: &str,
        field: &str,
        origin: &Origin,
        msg: Req,
        local: L,
        remote: R,
    ) -> Result<Response<Resp>, Status>
    where
        L: Fn(PoolRef) -> LF,
        LF: Future<Output = Result<Resp, Fail>>,
        R: FnOnce(Channel, Request<Req>) -> RF,
        RF: Future<Output = Result<Response<Resp>, Status>>,
    {
        translate::pool_id(id, field, &self.limits)?;
        record_pool(id);
        self.authorize(origin.access.as_ref(), id)?;
        let mut retried = false;
        loop {
            match self.registry.locate(id, origin.hops()).await? {
                Location::Local(pool) => match local(pool).await {
                    Ok(r) => return Ok(Response::new(r)),
                    Err(Fail::Retry(s)) if retried => return Err(s),
                    Err(Fail::Retry(_)) => retried = true,
                    Err(Fail::Status(s)) => return Err(s),
                },
                Location::Remote(owner) => {
                    return self.forwarder.forward(&owner, origin, msg, remote).await;
                }
            }
        }
    }
}

#[tonic::async_trait]
impl ExternalScheduler for PoolServices {
    async fn assign_tasks(
        &self,
        request: Request<pb::AssignTasksRequest>,
    ) -> Result<Response<pb::AssignTasksResponse>, Status> {
        let origin = Origin::of(&request);
        let req = request.into_inner();
        let call = translate::assign_call(&req, &self.limits, wall_now())?;
        let id = req.scheduler_id.clone();
        self.route(
            &id,
            "scheduler_id",
            &origin,
            req,
            |pool| {
                let call = call.clone();
                async move {
                    let assignments = pool.assign(call, origin.deadline).await?;
                    Ok(translate::assign_response(assignments))
                }
            },
            |c, r| async move { scheduler_client(c).assign_tasks(r).await },
        )
        .await
    }

    async fn get_cancellations(
        &self,
        request: Request<pb::GetCancellationsRequest>,
    ) -> Result<Response<pb::GetCancellationsResponse>, Status> {
        let origin = Origin::of(&request);
        let req = request.into_inner();
        let id = req.scheduler_id.clone();
        self.route(
            &id,
            "scheduler_id",
            &origin,
            req,
            |pool| async move {
                let list = pool.view(|p| p.cancellations()).await;
                Ok(translate::cancellations_response(list))
            },
            |c, r| async move { scheduler_client(c).get_cancellations(r).await },
        )
        .await
    }

    async fn notify_tasks(
        &self,
        request: Request<pb::NotifyTasksRequest>,
    ) -> Result<Response<pb::NotifyTasksResponse>, Status> {
        let origin = Origin::of(&request);
        let req = request.into_inner();
        let call = translate::notify_call(&req, &self.limits, wall_now())?;
        let id = req.scheduler_id.clone();
        self.route(
            &id,
            "scheduler_id",
            &origin,
            req,
            |pool| {
                let call = call.clone();
                async move {
                    pool.notify(call, origin.deadline).await?;
                    Ok(pb::NotifyTasksResponse {})
                }
            },
            |c, r| async move { scheduler_client(c).notify_tasks(r).await },
        )
        .await
    }

    async fn get_callbacks(
        &self,
        request: Request<pb::GetCallbacksRequest>,
    ) -> Result<Response<pb::GetCallbacksResponse>, Status> {
        let origin = Origin::of(&request);
        let req = request.into_inner();
        let id = req.scheduler_id.clone();
        self.route(
            &id,
            "scheduler_id",
            &origin,
            req,
            |pool| async move {
                let task_ids = pool
                    .view(|p| p.callbacks().iter().map(|s| s.to_string()).collect())
                    .await;
                Ok(pb::GetCallbacksResponse { task_ids })
            },
            |c, r| async move { scheduler_client(c).get_callbacks(r).await },
        )
        .await
    }
}

impl PoolServices {
    /// Runs an administrative command on pool `id`, wherever it lives.
    async fn admin<Req, Resp, R, RF>(
        &self,
        id: &str,
        origin: &Origin,
        msg: Req,
        cmd: Command,
        answer: Resp,
        remote: R,
    ) -> Result<Response<Resp>, Status>
    where
        Resp: Clone,
        R: FnOnce(Channel, Request<Req>) -> RF,
        RF: Future<Output = Result<Response<Resp>, Status>>,
    {
        self.route(
            id,
            "pool_id",
            origin,
            msg,
            |pool| {
                let cmd = cmd.clone();
                let answer = answer.clone();
                async move {
                    pool.admin(cmd, origin.deadline).await?;
                    Ok(answer)
                }
            },
            remote,
        )
        .await
    }
}

#[tonic::async_trait]
impl QSchedulerAdmin for PoolServices {
    async fn create_scheduler_pool(
        &self,
        request: Request<adm::CreateSchedulerPoolRequest>,
    ) -> Result<Response<adm::CreateSchedulerPoolResponse>, Status> {
        audit::note(&request, &request.get_ref().pool_id);
        let access = request.extensions().get::<Access>().cloned();
        let req = request.into_inner();
        translate::pool_id(&req.pool_id, "pool_id", &self.limits)?;
        record_pool(&req.pool_id);
        self.authorize(access.as_ref(), &req.pool_id)?;
        if req.config.is_some() {
            return Err(Status::invalid_argument(
                "config: deprecated; create the pool, then set accounts and settings with \
                 CreateAccount and ModSchedulerPool",
            ));
        }
        // Any replica can create a pool in the shared store; its home
        // replica adopts it.
        self.registry.create(&req.pool_id, wall_now()).await?;
        Ok(Response::new(adm::CreateSchedulerPoolResponse {}))
    }

    async fn create_account(
        &self,
        request: Request<adm::CreateAccountRequest>,
    ) -> Result<Response<adm::CreateAccountResponse>, Status> {
        audit::note(&request, &request.get_ref().pool_id);
        let origin = Origin::of(&request);
        let req = request.into_inner();
        let cmd = translate::create_account_command(&req, &self.limits)?;
        let id = req.pool_id.clone();
        self.admin(
            &id,
            &origin,
            req,
            cmd,
            adm::CreateAccountResponse {},
            |c, r| async move { admin_client(c).create_account(r).await },
        )
        .await
    }

    async fn wipe(
        &self,
        request: Request<adm::WipeRequest>,
    ) -> Result<Response<adm::WipeResponse>, Status> {
        audit::note(&request, &request.get_ref().pool_id);
        let origin = Origin::of(&request);
        let req = request.into_inner();
        let id = req.pool_id.clone();
        // The owner stamps the time when the call is forwarded.
        let cmd = Command::Wipe { time: wall_now() };
        self.admin(
            &id,
            &origin,
            req,
            cmd,
            adm::WipeResponse {},
            |c, r| async move { admin_client(c).wipe(r).await },
        )
        .await
    }

    async fn mod_account(
        &self,
        request: Request<adm::ModAccountRequest>,
    ) -> Result<Response<adm::ModAccountResponse>, Status> {
        audit::note(&request, &request.get_ref().pool_id);
        let origin = Origin::of(&request);
        let req = request.into_inner();
        let cmd = translate::mod_account_command(&req, &self.limits)?;
        let id = req.pool_id.clone();
        self.admin(
            &id,
            &origin,
            req,
            cmd,
            adm::ModAccountResponse {},
            |c, r| async move { admin_client(c).mod_account(r).await },
        )
        .await
    }

    async fn mod_scheduler_pool(
        &self,
        request: Request<adm::ModSchedulerPoolRequest>,
    ) -> Result<Response<adm::ModSchedulerPoolResponse>, Status> {
        audit::note(&request, &request.get_ref().pool_id);
        let origin = Origin::of(&request);
        let req = request.into_inner();
        let id = req.pool_id.clone();
        let cmd = translate::mod_pool_command(&req, &self.limits)?;
        self.admin(
            &id,
            &origin,
            req,
            cmd,
            adm::ModSchedulerPoolResponse {},
            |c, r| async move { admin_client(c).mod_scheduler_pool(r).await },
        )
        .await
    }

    async fn delete_account(
        &self,
        request: Request<adm::DeleteAccountRequest>,
    ) -> Result<Response<adm::DeleteAccountResponse>, Status> {
        audit::note(&request, &request.get_ref().pool_id);
        let origin = Origin::of(&request);
        let req = request.into_inner();
        let cmd = translate::delete_account_command(&req, &self.limits)?;
        let id = req.pool_id.clone();
        self.admin(
            &id,
            &origin,
            req,
            cmd,
            adm::DeleteAccountResponse {},
            |c, r| async move { admin_client(c).delete_account(r).await },
        )
        .await
    }

    async fn delete_scheduler_pool(
        &self,
        request: Request<adm::DeleteSchedulerPoolRequest>,
    ) -> Result<Response<adm::DeleteSchedulerPoolResponse>, Status> {
        audit::note(&request, &request.get_ref().pool_id);
        let origin = Origin::of(&request);
        let req = request.into_inner();
        translate::pool_id(&req.pool_id, "pool_id", &self.limits)?;
        record_pool(&req.pool_id);
        self.authorize(origin.access.as_ref(), &req.pool_id)?;
        // The owner deletes, so that it stops serving the pool at once
        // rather than when its next write or lease renewal finds it gone.
        if let Some(owner) = self
            .registry
            .remote_owner(&req.pool_id, origin.hops())
            .await?
        {
            return self
                .forwarder
                .forward(&owner, &origin, req, |c, r| async move {
                    admin_client(c).delete_scheduler_pool(r).await
                })
                .await;
        }
        self.registry.delete(&req.pool_id).await?;
        Ok(Response::new(adm::DeleteSchedulerPoolResponse {}))
    }
}

/// Whole seconds from `t` to `now`, as InspectPool reports ages.
fn age_seconds(now: Time, t: Time) -> i32 {
    let secs = now.nanos_since(t) / 1_000_000_000;
    secs.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32
}

#[tonic::async_trait]
impl QSchedulerView for PoolServices {
    async fn list_accounts(
        &self,
        request: Request<adm::ListAccountsRequest>,
    ) -> Result<Response<adm::ListAccountsResponse>, Status> {
        let origin = Origin::of(&request);
        let req = request.into_inner();
        let id = req.pool_id.clone();
        self.route(
            &id,
            "pool_id",
            &origin,
            req,
            |pool| async move {
                let accounts = pool
                    .view(|state| {
                        state
                            .scheduler()
                            .accounts()
                            .map(|(id, c, _)| (id.to_owned(), translate::account_config_pb(c)))
                            .collect()
                    })
                    .await;
                Ok(adm::ListAccountsResponse { accounts })
            },
            |c, r| async move { view_client(c).list_accounts(r).await },
        )
        .await
    }

    async fn inspect_pool(
        &self,
        request: Request<adm::InspectPoolRequest>,
    ) -> Result<Response<adm::InspectPoolResponse>, Status> {
        let origin = Origin::of(&request);
        let req = request.into_inner();
        let id = req.pool_id.clone();
        let page = Page::of(&req)?;
        self.route(
            &id,
            "pool_id",
            &origin,
            req,
            |pool| {
                let page = page.clone();
                async move {
                    let now = wall_now();
                    Ok(pool
                        .view_heavy(move |state| inspect(state, now, &page))
                        .await)
                }
            },
            |c, r| async move { view_client(c).inspect_pool(r).await },
        )
        .await
    }

    async fn list_pools(
        &self,
        request: Request<adm::ListPoolsRequest>,
    ) -> Result<Response<adm::ListPoolsResponse>, Status> {
        use adm::list_pools_response::{Pool, pool::State};
        let access = request.extensions().get::<Access>().cloned();
        if access.is_none() && self.auth_required {
            check_pool(None, true, "")?;
        }
        // A principal sees the pools it may view, and no others.
        let pools = self
            .registry
            .list()
            .await?
            .into_iter()
            .filter(|(pool_id, _)| {
                access
                    .as_ref()
                    .is_none_or(|a| a.check_pool(pool_id).is_ok())
            })
            .map(|(pool_id, status)| match status {
                PoolStatus::Serving { replica_id } => Pool {
                    pool_id,
                    state: State::Serving.into(),
                    replica_id,
                    error: String::new(),
                },
                PoolStatus::Unowned => Pool {
                    pool_id,
                    state: State::Unowned.into(),
                    ..Default::default()
                },
                PoolStatus::Failed { error } => Pool {
                    pool_id,
                    state: State::Failed.into(),
                    replica_id: String::new(),
                    error: error.to_string(),
                },
            })
            .collect();
        Ok(Response::new(adm::ListPoolsResponse { pools }))
    }
}

/// Which part of InspectPool's lists to answer: entries after a cursor,
/// at most `size` of them.
#[derive(Clone, Debug, Default)]
struct Page {
    /// 0: everything.
    size: usize,
    /// Resume after this entry: (list, confirmed time, id).
    after: Option<(u8, i64, String)>,
}

/// The lists, in the order pages fill them.
const WAITING: u8 = 0;
const RUNNING: u8 = 1;
const IDLE: u8 = 2;

impl Page {
    fn of(req: &adm::InspectPoolRequest) -> Result<Page, Status> {
        let size = usize::try_from(req.page_size).map_err(|_| {
            Status::invalid_argument("page_size: must not be negative (0 means everything)")
        })?;
        if req.page_token.is_empty() {
            return Ok(Page { size, after: None });
        }
        let bad = || {
            Status::invalid_argument(
                "page_token: not a token this server gave; start again with an empty one",
            )
        };
        let mut parts = req.page_token.splitn(4, ':');
        if parts.next() != Some("v1") {
            return Err(bad());
        }
        let list: u8 = parts.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
        let time: i64 = parts.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
        let id = parts.next().ok_or_else(bad)?.to_owned();
        if list > IDLE {
            return Err(bad());
        }
        Ok(Page {
            size,
            after: Some((list, time, id)),
        })
    }

    fn token(list: u8, time: Time, id: &str) -> String {
        format!("v1:{list}:{}:{id}", time.as_nanos())
    }
}

/// The entries of `list` after the page's cursor, at most `room` of them,
/// in order (oldest first, then by id); sorts only what it returns.
fn page_of<T>(
    list: u8,
    mut entries: Vec<(Time, T)>,
    id: impl Fn(&T) -> &str,
    page: &Page,
    room: usize,
) -> Vec<(Time, T)> {
    match &page.after {
        Some((l, _, _)) if *l > list => return Vec::new(),
        Some((l, time, after)) if *l == list => {
            entries.retain(|(t, e)| (t.as_nanos(), id(e)) > (*time, after.as_str()))
        }
        _ => {}
    }
    let cmp = |a: &(Time, T), b: &(Time, T)| a.0.cmp(&b.0).then_with(|| id(&a.1).cmp(id(&b.1)));
    if room < entries.len() {
        if room == 0 {
            return Vec::new();
        }
        entries.select_nth_unstable_by(room - 1, cmp);
        entries.truncate(room);
    }
    entries.sort_by(cmp);
    entries
}

/// InspectPool's answer from the committed state `state`, with ages as of
/// `now`.
fn inspect(state: &qscheduler_core::Pool, now: Time, page: &Page) -> adm::InspectPoolResponse {
    let s = state.scheduler();
    let mut resp = adm::InspectPoolResponse {
        num_waiting_tasks: s.queued_len().try_into().unwrap_or(i32::MAX),
        num_running_tasks: s.running_len().try_into().unwrap_or(i32::MAX),
        num_idle_bots: s.idle_len().try_into().unwrap_or(i32::MAX),
        disable_preemption: s.settings().disable_preemption,
        ..Default::default()
    };
    for (id, c, _) in s.accounts() {
        // After a wipe, accounts have no balance until the next clock update.
        if let Some(b) = s.balance(id) {
            resp.account_balances.insert(
                id.to_owned(),
                protos::scheduler_state::Balance {
                    value: b.0.to_vec(),
                },
            );
        }
        resp.account_configs
            .insert(id.to_owned(), translate::account_config_pb(c));
    }
    let size = if page.size == 0 {
        usize::MAX
    } else {
        page.size
    };
    let mut room = size;
    // The position of the last entry returned, for the next page's token.
    let mut last: Option<(u8, Time, String)> = None;

    let waiting: Vec<_> = s
        .queued_requests()
        .into_iter()
        .map(|q| {
            (
                q.confirmed_time,
                adm::inspect_pool_response::WaitingTask {
                    id: q.id.to_owned(),
                    account_id: q.account.to_owned(),
                    age_seconds: age_seconds(now, q.confirmed_time),
                },
            )
        })
        .collect();
    let waiting = page_of(WAITING, waiting, |t| &t.id, page, room);
    room -= waiting.len();
    if let Some((t, e)) = waiting.last() {
        last = Some((WAITING, *t, e.id.clone()));
    }
    resp.waiting_tasks = waiting.into_iter().map(|(_, t)| t).collect();

    let mut running = Vec::new();
    let mut idle = Vec::new();
    for w in s.worker_views() {
        match &w.running {
            Some(r) => {
                let confirmed = w.confirmed_time.max(r.request.confirmed_time);
                running.push((
                    confirmed,
                    adm::inspect_pool_response::RunningTask {
                        id: r.request.id.to_owned(),
                        bot_id: w.id.to_owned(),
                        priority: i32::from(r.priority),
                        account_id: r.request.account.to_owned(),
                        age_seconds: age_seconds(now, confirmed),
                    },
                ));
            }
            None => idle.push((
                w.confirmed_time,
                adm::inspect_pool_response::IdleBot {
                    id: w.id.to_owned(),
                    dimensions: w.labels.iter().map(|l| l.to_string()).collect(),
                    age_seconds: age_seconds(now, w.confirmed_time),
                },
            )),
        }
    }
    let running = page_of(RUNNING, running, |t| &t.id, page, room);
    room -= running.len();
    if let Some((t, e)) = running.last() {
        last = Some((RUNNING, *t, e.id.clone()));
    }
    resp.running_tasks = running.into_iter().map(|(_, t)| t).collect();
    let idle = page_of(IDLE, idle, |b| &b.id, page, room);
    room -= idle.len();
    if let Some((t, e)) = idle.last() {
        last = Some((IDLE, *t, e.id.clone()));
    }
    resp.idle_bots = idle.into_iter().map(|(_, t)| t).collect();

    // A full page may have a successor; the page after the last one is
    // empty and ends the walk.
    if page.size > 0
        && room == 0
        && let Some((list, time, id)) = last
    {
        resp.next_page_token = Page::token(list, time, &id);
    }
    resp
}
