//! The RPC services: `swarming.v1.ExternalScheduler`,
//! `qscheduler.QSchedulerAdmin` and `qscheduler.QSchedulerView`.
//!
//! Each method validates and translates its request, hands it to the pool's
//! writer (changes) or reads the pool's committed state (views), and maps
//! errors to the gRPC status a client can act on: `INVALID_ARGUMENT` names
//! the field, a missing pool is `NOT_FOUND`, an overloaded pool
//! `RESOURCE_EXHAUSTED`, a storage failure `UNAVAILABLE` (retry).

use std::sync::Arc;

use qscheduler_core::{AccountChanges, AccountConfig, Command, CommandError, Time};
use qscheduler_wire::protos;
use qscheduler_wire::qscheduler as adm;
use qscheduler_wire::qscheduler::q_scheduler_admin_server::QSchedulerAdmin;
use qscheduler_wire::qscheduler::q_scheduler_view_server::QSchedulerView;
use qscheduler_wire::request_deadline;
use qscheduler_wire::swarming::v1 as pb;
use qscheduler_wire::swarming::v1::external_scheduler_server::ExternalScheduler;
use tonic::{Request, Response, Status};

use crate::pool::{PoolError, PoolRef};
use crate::registry::{Registry, RegistryError};
use crate::rpc_layer::record_pool;
use crate::translate;

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
            PoolError::Busy(_) => Status::resource_exhausted(msg),
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
            RegistryError::NotOwner { .. } => Status::unavailable(msg),
            RegistryError::Recover(_) => Status::data_loss(msg),
            RegistryError::Store(_) => Status::unavailable(msg),
        }
    }
}

/// The three services over one registry of pools.
#[derive(Clone)]
pub struct Scheduler {
    registry: Arc<Registry>,
}

impl Scheduler {
    /// Services over `registry`.
    pub fn new(registry: Arc<Registry>) -> Self {
        Scheduler { registry }
    }

    async fn pool(&self, id: &str, field: &str) -> Result<PoolRef, Status> {
        translate::pool_id(id, field)?;
        record_pool(id);
        Ok(self.registry.get(id).await?)
    }
}

#[tonic::async_trait]
impl ExternalScheduler for Scheduler {
    async fn assign_tasks(
        &self,
        request: Request<pb::AssignTasksRequest>,
    ) -> Result<Response<pb::AssignTasksResponse>, Status> {
        let deadline = request_deadline(&request);
        let req = request.into_inner();
        let call = translate::assign_call(&req)?;
        let pool = self.pool(&req.scheduler_id, "scheduler_id").await?;
        let assignments = pool.assign(call, deadline).await?;
        Ok(Response::new(translate::assign_response(assignments)))
    }

    async fn get_cancellations(
        &self,
        request: Request<pb::GetCancellationsRequest>,
    ) -> Result<Response<pb::GetCancellationsResponse>, Status> {
        let req = request.into_inner();
        let pool = self.pool(&req.scheduler_id, "scheduler_id").await?;
        let list = pool.read().cancellations();
        Ok(Response::new(translate::cancellations_response(list)))
    }

    async fn notify_tasks(
        &self,
        request: Request<pb::NotifyTasksRequest>,
    ) -> Result<Response<pb::NotifyTasksResponse>, Status> {
        let deadline = request_deadline(&request);
        let req = request.into_inner();
        let call = translate::notify_call(&req)?;
        let pool = self.pool(&req.scheduler_id, "scheduler_id").await?;
        pool.notify(call, deadline).await?;
        Ok(Response::new(pb::NotifyTasksResponse {}))
    }

    async fn get_callbacks(
        &self,
        request: Request<pb::GetCallbacksRequest>,
    ) -> Result<Response<pb::GetCallbacksResponse>, Status> {
        let req = request.into_inner();
        let pool = self.pool(&req.scheduler_id, "scheduler_id").await?;
        let ids = pool.read().callbacks();
        Ok(Response::new(pb::GetCallbacksResponse {
            task_ids: ids.iter().map(|s| s.to_string()).collect(),
        }))
    }
}

/// An account configuration from the API, checked, naming `field` on error.
pub fn account_config(
    c: Option<&protos::AccountConfig>,
    field: &str,
) -> Result<AccountConfig, Status> {
    let Some(c) = c else {
        return Ok(AccountConfig::default());
    };
    let invalid = |e: &dyn std::fmt::Display| Status::invalid_argument(format!("{field}.{e}"));
    let config = AccountConfig {
        charge_rate: AccountConfig::rates_from_slice(&c.charge_rate).map_err(|e| invalid(&e))?,
        max_charge_seconds: c.max_charge_seconds,
        max_fanout: c.max_fanout,
        disable_free_tasks: c.disable_free_tasks,
        description: c.description.clone(),
        per_label_task_limits: c
            .per_label_task_limits
            .iter()
            .map(|(k, &v)| (k.clone(), v))
            .collect(),
    };
    config.validate().map_err(|e| invalid(&e))?;
    Ok(config)
}

/// The API form of an account configuration (always five rates).
pub fn account_config_pb(c: &AccountConfig) -> protos::AccountConfig {
    protos::AccountConfig {
        charge_rate: c.charge_rate.to_vec(),
        max_charge_seconds: c.max_charge_seconds,
        max_fanout: c.max_fanout,
        disable_free_tasks: c.disable_free_tasks,
        description: c.description.clone(),
        per_label_task_limits: c
            .per_label_task_limits
            .iter()
            .map(|(k, &v)| (k.clone(), v))
            .collect(),
    }
}

fn account_id(id: &str) -> Result<(), Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument("account_id is required"));
    }
    Ok(())
}

#[tonic::async_trait]
impl QSchedulerAdmin for Scheduler {
    async fn create_scheduler_pool(
        &self,
        request: Request<adm::CreateSchedulerPoolRequest>,
    ) -> Result<Response<adm::CreateSchedulerPoolResponse>, Status> {
        let req = request.into_inner();
        translate::pool_id(&req.pool_id, "pool_id")?;
        record_pool(&req.pool_id);
        if req.config.is_some() {
            return Err(Status::invalid_argument(
                "config: deprecated; create the pool, then set accounts and settings with \
                 CreateAccount and ModSchedulerPool",
            ));
        }
        self.registry.create(&req.pool_id, wall_now()).await?;
        Ok(Response::new(adm::CreateSchedulerPoolResponse {}))
    }

    async fn create_account(
        &self,
        request: Request<adm::CreateAccountRequest>,
    ) -> Result<Response<adm::CreateAccountResponse>, Status> {
        let req = request.into_inner();
        translate::pool_id(&req.pool_id, "pool_id")?;
        account_id(&req.account_id)?;
        let config = account_config(req.config.as_ref(), "config")?;
        let pool = self.pool(&req.pool_id, "pool_id").await?;
        pool.admin(Command::CreateAccount {
            account_id: req.account_id,
            config,
        })
        .await?;
        Ok(Response::new(adm::CreateAccountResponse {}))
    }

    async fn wipe(
        &self,
        request: Request<adm::WipeRequest>,
    ) -> Result<Response<adm::WipeResponse>, Status> {
        let req = request.into_inner();
        let pool = self.pool(&req.pool_id, "pool_id").await?;
        pool.admin(Command::Wipe { time: wall_now() }).await?;
        Ok(Response::new(adm::WipeResponse {}))
    }

    async fn mod_account(
        &self,
        request: Request<adm::ModAccountRequest>,
    ) -> Result<Response<adm::ModAccountResponse>, Status> {
        let req = request.into_inner();
        translate::pool_id(&req.pool_id, "pool_id")?;
        account_id(&req.account_id)?;
        let changes = AccountChanges {
            charge_rate: (!req.charge_rate.is_empty()).then(|| req.charge_rate.clone()),
            max_charge_seconds: req.max_charge_seconds,
            max_fanout: req.max_fanout,
            disable_free_tasks: req.disable_free_tasks,
            description: req.description.clone(),
            per_label_task_limits: (!req.per_label_task_limits.is_empty()).then(|| {
                req.per_label_task_limits
                    .iter()
                    .map(|(k, &v)| (k.clone(), v))
                    .collect()
            }),
            reset_balance: req.reset_balance,
        };
        // Range checks against a neutral config name the bad field before
        // anything is queued.
        changes
            .apply_to(&AccountConfig::default())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let pool = self.pool(&req.pool_id, "pool_id").await?;
        pool.admin(Command::ModAccount {
            account_id: req.account_id,
            changes,
        })
        .await?;
        Ok(Response::new(adm::ModAccountResponse {}))
    }

    async fn mod_scheduler_pool(
        &self,
        request: Request<adm::ModSchedulerPoolRequest>,
    ) -> Result<Response<adm::ModSchedulerPoolResponse>, Status> {
        let req = request.into_inner();
        let pool = self.pool(&req.pool_id, "pool_id").await?;
        pool.admin(Command::ModPool {
            disable_preemption: req.disable_preemption,
            bot_expiration_secs: req.bot_expiration_seconds,
        })
        .await?;
        Ok(Response::new(adm::ModSchedulerPoolResponse {}))
    }

    async fn delete_account(
        &self,
        request: Request<adm::DeleteAccountRequest>,
    ) -> Result<Response<adm::DeleteAccountResponse>, Status> {
        let req = request.into_inner();
        translate::pool_id(&req.pool_id, "pool_id")?;
        account_id(&req.account_id)?;
        let pool = self.pool(&req.pool_id, "pool_id").await?;
        pool.admin(Command::DeleteAccount {
            account_id: req.account_id,
        })
        .await?;
        Ok(Response::new(adm::DeleteAccountResponse {}))
    }

    async fn delete_scheduler_pool(
        &self,
        request: Request<adm::DeleteSchedulerPoolRequest>,
    ) -> Result<Response<adm::DeleteSchedulerPoolResponse>, Status> {
        let req = request.into_inner();
        translate::pool_id(&req.pool_id, "pool_id")?;
        record_pool(&req.pool_id);
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
impl QSchedulerView for Scheduler {
    async fn list_accounts(
        &self,
        request: Request<adm::ListAccountsRequest>,
    ) -> Result<Response<adm::ListAccountsResponse>, Status> {
        let req = request.into_inner();
        let pool = self.pool(&req.pool_id, "pool_id").await?;
        let state = pool.read();
        let accounts = state
            .scheduler()
            .accounts()
            .map(|(id, c, _)| (id.to_owned(), account_config_pb(c)))
            .collect();
        Ok(Response::new(adm::ListAccountsResponse { accounts }))
    }

    async fn inspect_pool(
        &self,
        request: Request<adm::InspectPoolRequest>,
    ) -> Result<Response<adm::InspectPoolResponse>, Status> {
        let req = request.into_inner();
        let pool = self.pool(&req.pool_id, "pool_id").await?;
        let now = wall_now();
        let state = pool.read();
        let s = state.scheduler();
        let mut resp = adm::InspectPoolResponse {
            num_waiting_tasks: s.queued_len().try_into().unwrap_or(i32::MAX),
            num_running_tasks: s.running_len().try_into().unwrap_or(i32::MAX),
            num_idle_bots: s.idle_len().try_into().unwrap_or(i32::MAX),
            disable_preemption: s.settings().disable_preemption,
            ..Default::default()
        };
        for (id, c, b) in s.accounts() {
            resp.account_balances.insert(
                id.to_owned(),
                protos::scheduler_state::Balance {
                    value: b.0.to_vec(),
                },
            );
            resp.account_configs
                .insert(id.to_owned(), account_config_pb(c));
        }
        // Oldest first (largest age), then by id: ascending confirmed time.
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
        let mut waiting: Vec<_> = s
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
        drop(state);
        running.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.id.cmp(&b.1.id)));
        waiting.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.id.cmp(&b.1.id)));
        idle.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.id.cmp(&b.1.id)));
        resp.running_tasks = running.into_iter().map(|(_, t)| t).collect();
        resp.waiting_tasks = waiting.into_iter().map(|(_, t)| t).collect();
        resp.idle_bots = idle.into_iter().map(|(_, t)| t).collect();
        Ok(Response::new(resp))
    }
}
