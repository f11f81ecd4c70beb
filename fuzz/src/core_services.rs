//! The server's request path without storage: each request goes through the
//! server's own translation and validation (`translate.rs`, the request
//! functions of `service.rs`), then through the pool writer's checks, and
//! the resulting commands are logged (encoded and decoded again) and
//! applied to core pools.
//!
//! What it asserts, besides "nothing panics":
//!
//! * a command that passed the checks applies (the writer's promise that
//!   recovery never stops at a logged command);
//! * a logged command decodes, to a command that encodes to the same bytes;
//! * a pool's snapshot decodes to a pool with the same snapshot.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use qscheduler_core::{AssignCall, Batch, Command, NotifyCall, Pool, Time, snapshot};
use qscheduler_server::translate;
use qscheduler_wire::qscheduler as adm;
use qscheduler_wire::qscheduler::q_scheduler_admin_server::QSchedulerAdmin;
use qscheduler_wire::qscheduler::q_scheduler_view_server::QSchedulerView;
use qscheduler_wire::swarming::v1 as pb;
use qscheduler_wire::swarming::v1::external_scheduler_server::ExternalScheduler;
use tonic::{Request, Response, Status};

use crate::requests::{BASE_SECS, POOL, Req};

/// A successful answer.
#[derive(Debug)]
pub enum Answer {
    Done,
    Assign(pb::AssignTasksResponse),
    Cancellations(pb::GetCancellationsResponse),
    Callbacks(pb::GetCallbacksResponse),
    Accounts(adm::ListAccountsResponse),
    Inspect(adm::InspectPoolResponse),
}

/// Pools by id, each a core [`Pool`], and the admin clock.
pub struct Core {
    pools: BTreeMap<String, Pool>,
    /// What the server would read from the wall clock for admin calls.
    wall: Time,
}

impl Default for Core {
    fn default() -> Self {
        Self::new()
    }
}

/// What the pool writer makes of one translated call.
enum Work {
    Notify(NotifyCall),
    Assign(AssignCall),
    Admin(Command),
}

impl Core {
    /// One pool, [`POOL`], created at [`BASE_SECS`].
    pub fn new() -> Core {
        let wall = Time::from_secs(BASE_SECS);
        let mut core = Core {
            pools: BTreeMap::new(),
            wall,
        };
        core.create(POOL);
        core
    }

    fn create(&mut self, id: &str) {
        let mut pool = Pool::new(Time::EPOCH);
        log_and_apply(&mut pool, vec![Command::Create { time: self.wall }]);
        self.pools.insert(id.to_owned(), pool);
    }

    /// The pools.
    pub fn pools(&self) -> &BTreeMap<String, Pool> {
        &self.pools
    }

    /// Serves one request.
    pub fn call(&mut self, req: Req) -> Result<Answer, Status> {
        self.call_batch(vec![req])
            .pop()
            .unwrap_or_else(|| Err(Status::internal("no answer")))
    }

    /// Serves requests that reached the writers together: Swarming's calls
    /// for one pool are batched (notifications first, then one pass), admin
    /// calls stand alone, as the pool writer does. Answers in request order.
    pub fn call_batch(&mut self, reqs: Vec<Req>) -> Vec<Result<Answer, Status>> {
        self.wall = self.wall.add_nanos(1_000_000_000);
        let mut answers: Vec<Option<Result<Answer, Status>>> = Vec::new();
        // Per pool, the writer's queue: (answer slot, work).
        let mut queues: BTreeMap<String, Vec<(usize, Work)>> = BTreeMap::new();
        for req in reqs {
            let slot = answers.len();
            answers.push(None);
            match self.route(req) {
                Ok(Routed::Answer(a)) => answers[slot] = Some(Ok(a)),
                Ok(Routed::Queue(pool, work)) => queues.entry(pool).or_default().push((slot, work)),
                Err(s) => answers[slot] = Some(Err(s)),
            }
        }
        for (id, queue) in queues {
            let Some(pool) = self.pools.get_mut(&id) else {
                for (slot, _) in queue {
                    answers[slot] = Some(Err(Status::not_found("no pool")));
                }
                continue;
            };
            for (slot, answer) in execute(pool, queue) {
                answers[slot] = Some(answer);
            }
        }
        answers
            .into_iter()
            .map(|a| a.unwrap_or_else(|| Err(Status::internal("unanswered"))))
            .collect()
    }

    /// Translates a request as the service does; reads are answered at once.
    fn route(&mut self, req: Req) -> Result<Routed, Status> {
        let exists = |core: &Core, id: &str| -> Result<(), Status> {
            translate::pool_id(id, "pool_id", limits())?;
            if core.pools.contains_key(id) {
                Ok(())
            } else {
                Err(Status::not_found(format!("no pool {id:?}")))
            }
        };
        Ok(match req {
            Req::Notify(r) => {
                let call = translate::notify_call(&r, limits(), Time::MAX)?;
                exists(self, &r.scheduler_id)?;
                Routed::Queue(r.scheduler_id, Work::Notify(call))
            }
            Req::Assign(r) => {
                let call = translate::assign_call(&r, limits(), Time::MAX)?;
                exists(self, &r.scheduler_id)?;
                Routed::Queue(r.scheduler_id, Work::Assign(call))
            }
            Req::GetCancellations(r) => {
                exists(self, &r.scheduler_id)?;
                let pool = &self.pools[&r.scheduler_id];
                Routed::Answer(Answer::Cancellations(translate::cancellations_response(
                    pool.cancellations(),
                )))
            }
            Req::GetCallbacks(r) => {
                exists(self, &r.scheduler_id)?;
                let pool = &self.pools[&r.scheduler_id];
                Routed::Answer(Answer::Callbacks(pb::GetCallbacksResponse {
                    task_ids: pool.callbacks().iter().map(|s| s.to_string()).collect(),
                }))
            }
            Req::CreatePool(r) => {
                translate::pool_id(&r.pool_id, "pool_id", limits())?;
                if r.config.is_some() {
                    return Err(Status::invalid_argument("config: deprecated"));
                }
                if self.pools.contains_key(&r.pool_id) {
                    return Err(Status::already_exists("pool exists"));
                }
                self.create(&r.pool_id);
                Routed::Answer(Answer::Done)
            }
            Req::CreateAccount(r) => {
                let cmd = translate::create_account_command(&r, limits())?;
                exists(self, &r.pool_id)?;
                Routed::Queue(r.pool_id, Work::Admin(cmd))
            }
            Req::Wipe(r) => {
                exists(self, &r.pool_id)?;
                Routed::Queue(r.pool_id, Work::Admin(Command::Wipe { time: self.wall }))
            }
            Req::ModAccount(r) => {
                let cmd = translate::mod_account_command(&r, limits())?;
                exists(self, &r.pool_id)?;
                Routed::Queue(r.pool_id, Work::Admin(cmd))
            }
            Req::ModPool(r) => {
                let cmd = translate::mod_pool_command(&r, limits())?;
                exists(self, &r.pool_id)?;
                Routed::Queue(r.pool_id, Work::Admin(cmd))
            }
            Req::DeleteAccount(r) => {
                let cmd = translate::delete_account_command(&r, limits())?;
                exists(self, &r.pool_id)?;
                Routed::Queue(r.pool_id, Work::Admin(cmd))
            }
            Req::DeletePool(r) => {
                exists(self, &r.pool_id)?;
                self.pools.remove(&r.pool_id);
                Routed::Answer(Answer::Done)
            }
            Req::ListAccounts(r) => {
                exists(self, &r.pool_id)?;
                let accounts = self.pools[&r.pool_id]
                    .scheduler()
                    .accounts()
                    .map(|(id, c, _)| (id.to_owned(), translate::account_config_pb(c)))
                    .collect();
                Routed::Answer(Answer::Accounts(adm::ListAccountsResponse { accounts }))
            }
            Req::InspectPool(r) => {
                exists(self, &r.pool_id)?;
                Routed::Answer(Answer::Inspect(inspect(&self.pools[&r.pool_id])))
            }
        })
    }

    /// Checks that every pool survives a snapshot round trip.
    pub fn check_snapshots(&self) {
        for (id, pool) in &self.pools {
            check_snapshot(id, pool);
        }
    }
}

enum Routed {
    Answer(Answer),
    Queue(String, Work),
}

/// The read-only parts of InspectPool that touch the state.
fn inspect(pool: &Pool) -> adm::InspectPoolResponse {
    let s = pool.scheduler();
    let mut resp = adm::InspectPoolResponse {
        num_waiting_tasks: s.queued_len().try_into().unwrap_or(i32::MAX),
        num_running_tasks: s.running_len().try_into().unwrap_or(i32::MAX),
        num_idle_bots: s.idle_len().try_into().unwrap_or(i32::MAX),
        ..Default::default()
    };
    for w in s.worker_views() {
        if let Some(r) = &w.running {
            resp.running_tasks
                .push(adm::inspect_pool_response::RunningTask {
                    id: r.request.id.to_owned(),
                    bot_id: w.id.to_owned(),
                    priority: i32::from(r.priority),
                    account_id: r.request.account.to_owned(),
                    age_seconds: 0,
                });
        }
    }
    for q in s.queued_requests() {
        resp.waiting_tasks
            .push(adm::inspect_pool_response::WaitingTask {
                id: q.id.to_owned(),
                account_id: q.account.to_owned(),
                age_seconds: 0,
            });
    }
    resp
}

/// The pool writer's handling of one batch of queued work: Swarming's calls
/// gathered into one `Batch` command, admin commands alone; the writer's
/// checks; then log (encode, decode) and apply.
fn execute(pool: &mut Pool, queue: Vec<(usize, Work)>) -> Vec<(usize, Result<Answer, Status>)> {
    let mut out = Vec::new();
    let mut steps: Vec<(Vec<(usize, bool)>, Command)> = Vec::new();
    let mut batch = Batch::default();
    let mut slots: Vec<(usize, bool)> = Vec::new();
    for (slot, work) in queue {
        match work {
            Work::Notify(c) => {
                batch.notifies.push(c);
                slots.push((slot, false));
            }
            Work::Assign(c) => {
                batch.assigns.push(c);
                slots.push((slot, true));
            }
            Work::Admin(cmd) => {
                if !slots.is_empty() {
                    steps.push((
                        std::mem::take(&mut slots),
                        Command::Batch(std::mem::take(&mut batch)),
                    ));
                }
                steps.push((vec![(slot, false)], cmd));
            }
        }
    }
    if !slots.is_empty() {
        steps.push((slots, Command::Batch(batch)));
    }
    // The writer's admission check, in order.
    let mut logged = Vec::new();
    {
        let mut admission = pool.admission();
        for (slots, cmd) in steps {
            match admission.admit(&cmd) {
                Ok(()) => logged.push((slots, cmd)),
                Err(e) => out.extend(
                    slots
                        .into_iter()
                        .map(|(s, _)| (s, Err(Status::invalid_argument(e.to_string())))),
                ),
            }
        }
    }
    let records: Vec<Vec<u8>> = logged.iter().map(|(_, c)| c.encode()).collect();
    for ((slots, cmd), record) in logged.into_iter().zip(records) {
        let replayed = check_record(&cmd, &record);
        let outcome = match pool.apply(&replayed) {
            Ok(o) => o,
            Err(e) => {
                panic!("a command that passed the writer's checks does not apply: {e}\n{cmd:?}")
            }
        };
        let mut assignments = outcome.assignments.into_iter();
        for (slot, is_assign) in slots {
            let answer = if is_assign {
                Answer::Assign(translate::assign_response(
                    assignments.next().unwrap_or_default(),
                ))
            } else {
                Answer::Done
            };
            out.push((slot, Ok(answer)));
        }
    }
    out
}

/// A logged record must decode, to a command with the same encoding.
fn check_record(cmd: &Command, record: &[u8]) -> Command {
    let decoded = match Command::decode(record) {
        Ok(c) => c,
        Err(e) => panic!("a logged command does not decode: {e}\n{cmd:?}"),
    };
    assert_eq!(
        decoded.encode(),
        record,
        "a logged command decodes to another command: {cmd:?} became {decoded:?}"
    );
    decoded
}

/// Logs and applies commands that must apply (pool creation).
fn log_and_apply(pool: &mut Pool, cmds: Vec<Command>) {
    for cmd in cmds {
        let record = cmd.encode();
        let replayed = check_record(&cmd, &record);
        if let Err(e) = pool.apply(&replayed) {
            panic!("{cmd:?} does not apply: {e}");
        }
    }
}

/// A snapshot of a live pool must decode, to a pool with the same snapshot.
pub fn check_snapshot(id: &str, pool: &Pool) {
    let bytes = snapshot::encode(pool);
    let restored = match snapshot::decode(&bytes) {
        Ok(p) => p,
        Err(e) => panic!("the snapshot of pool {id:?} does not decode: {e}"),
    };
    assert!(
        snapshot::encode(&restored) == bytes,
        "the snapshot of pool {id:?} does not survive a round trip"
    );
}

/// The three services over a [`Core`], for the pRPC and gRPC routers: the
/// transports' decoding in front of the server's translation and the core.
#[derive(Clone, Default)]
pub struct CoreServices {
    pub core: Arc<Mutex<Core>>,
}

impl CoreServices {
    fn call(&self, req: Req) -> Result<Answer, Status> {
        self.core
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .call(req)
    }
}

fn done<T: Default>(a: Result<Answer, Status>) -> Result<Response<T>, Status> {
    a.map(|_| Response::new(T::default()))
}

#[tonic::async_trait]
impl ExternalScheduler for CoreServices {
    async fn assign_tasks(
        &self,
        request: Request<pb::AssignTasksRequest>,
    ) -> Result<Response<pb::AssignTasksResponse>, Status> {
        match self.call(Req::Assign(request.into_inner()))? {
            Answer::Assign(r) => Ok(Response::new(r)),
            _ => Ok(Response::new(Default::default())),
        }
    }

    async fn get_cancellations(
        &self,
        request: Request<pb::GetCancellationsRequest>,
    ) -> Result<Response<pb::GetCancellationsResponse>, Status> {
        match self.call(Req::GetCancellations(request.into_inner()))? {
            Answer::Cancellations(r) => Ok(Response::new(r)),
            _ => Ok(Response::new(Default::default())),
        }
    }

    async fn notify_tasks(
        &self,
        request: Request<pb::NotifyTasksRequest>,
    ) -> Result<Response<pb::NotifyTasksResponse>, Status> {
        done(self.call(Req::Notify(request.into_inner())))
    }

    async fn get_callbacks(
        &self,
        request: Request<pb::GetCallbacksRequest>,
    ) -> Result<Response<pb::GetCallbacksResponse>, Status> {
        match self.call(Req::GetCallbacks(request.into_inner()))? {
            Answer::Callbacks(r) => Ok(Response::new(r)),
            _ => Ok(Response::new(Default::default())),
        }
    }
}

#[tonic::async_trait]
impl QSchedulerAdmin for CoreServices {
    async fn create_scheduler_pool(
        &self,
        request: Request<adm::CreateSchedulerPoolRequest>,
    ) -> Result<Response<adm::CreateSchedulerPoolResponse>, Status> {
        done(self.call(Req::CreatePool(request.into_inner())))
    }

    async fn create_account(
        &self,
        request: Request<adm::CreateAccountRequest>,
    ) -> Result<Response<adm::CreateAccountResponse>, Status> {
        done(self.call(Req::CreateAccount(request.into_inner())))
    }

    async fn wipe(
        &self,
        request: Request<adm::WipeRequest>,
    ) -> Result<Response<adm::WipeResponse>, Status> {
        done(self.call(Req::Wipe(request.into_inner())))
    }

    async fn mod_account(
        &self,
        request: Request<adm::ModAccountRequest>,
    ) -> Result<Response<adm::ModAccountResponse>, Status> {
        done(self.call(Req::ModAccount(request.into_inner())))
    }

    async fn mod_scheduler_pool(
        &self,
        request: Request<adm::ModSchedulerPoolRequest>,
    ) -> Result<Response<adm::ModSchedulerPoolResponse>, Status> {
        done(self.call(Req::ModPool(request.into_inner())))
    }

    async fn delete_account(
        &self,
        request: Request<adm::DeleteAccountRequest>,
    ) -> Result<Response<adm::DeleteAccountResponse>, Status> {
        done(self.call(Req::DeleteAccount(request.into_inner())))
    }

    async fn delete_scheduler_pool(
        &self,
        request: Request<adm::DeleteSchedulerPoolRequest>,
    ) -> Result<Response<adm::DeleteSchedulerPoolResponse>, Status> {
        done(self.call(Req::DeletePool(request.into_inner())))
    }
}

#[tonic::async_trait]
impl QSchedulerView for CoreServices {
    async fn list_accounts(
        &self,
        request: Request<adm::ListAccountsRequest>,
    ) -> Result<Response<adm::ListAccountsResponse>, Status> {
        match self.call(Req::ListAccounts(request.into_inner()))? {
            Answer::Accounts(r) => Ok(Response::new(r)),
            _ => Ok(Response::new(Default::default())),
        }
    }

    async fn inspect_pool(
        &self,
        request: Request<adm::InspectPoolRequest>,
    ) -> Result<Response<adm::InspectPoolResponse>, Status> {
        match self.call(Req::InspectPool(request.into_inner()))? {
            Answer::Inspect(r) => Ok(Response::new(r)),
            _ => Ok(Response::new(Default::default())),
        }
    }

    async fn list_pools(
        &self,
        _: Request<adm::ListPoolsRequest>,
    ) -> Result<Response<adm::ListPoolsResponse>, Status> {
        // The stand-in serves one pool at a time; listing it touches no state.
        Ok(Response::new(adm::ListPoolsResponse::default()))
    }
}

/// The server's default limits; the clock-skew limit is left out (the
/// fuzzed calls run on their own clock, and the in-process server allows
/// any skew).
fn limits() -> &'static qscheduler_server::limits::Limits {
    static LIMITS: std::sync::LazyLock<qscheduler_server::limits::Limits> =
        std::sync::LazyLock::new(qscheduler_server::limits::Limits::default);
    &LIMITS
}
