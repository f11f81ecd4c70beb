//! Every RPC of the three services, typed, over each transport the server
//! speaks: gRPC (the tonic clients of `qscheduler-wire`), pRPC with binary
//! protobuf bodies and pRPC with JSON bodies (both over raw HTTP/1.1, so
//! that the exact headers and bodies are checked here rather than trusted to
//! a client).
//!
//! A test written against [`Rpc`] runs unchanged on each [`Transport`];
//! errors come back as [`Status`] on all three. Every pRPC response is
//! checked on the way: it carries `X-Prpc-Grpc-Code` and `nosniff`, a
//! success is HTTP 200 with the negotiated content type (JSON with its XSSI
//! prefix), and an error is never HTTP 200 but the status of reference
//! §3.5's table for its code, with a plain-text message.

use std::net::SocketAddr;
use std::time::Duration;

use prost::Message;
use prost_reflect::DynamicMessage;
use qscheduler_wire::qscheduler::{
    self as adm, q_scheduler_admin_client::QSchedulerAdminClient,
    q_scheduler_insight_client::QSchedulerInsightClient,
    q_scheduler_view_client::QSchedulerViewClient,
};
use qscheduler_wire::swarming::v1::{
    self as pb, external_scheduler_client::ExternalSchedulerClient,
    get_cancellations_response::cancellation::Reason, task_spec::State,
};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use super::http_raw;

/// How a call travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Grpc,
    PrpcBinary,
    PrpcJson,
}

impl Transport {
    pub const ALL: [Transport; 3] = [Transport::Grpc, Transport::PrpcBinary, Transport::PrpcJson];

    /// A short name, usable in pool ids.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Grpc => "grpc",
            Transport::PrpcBinary => "prpc-binary",
            Transport::PrpcJson => "prpc-json",
        }
    }

    /// The pRPC media type of requests and responses.
    fn media_type(self) -> &'static str {
        match self {
            Transport::PrpcJson => "application/json",
            _ => "application/prpc; encoding=binary",
        }
    }
}

/// The HTTP status of a gRPC code in pRPC (reference §3.5).
pub fn prpc_http_status(code: i32) -> u16 {
    match code {
        0 => 200,
        1 => 499,
        2 => 500,
        3 => 400,
        4 => 504,
        5 => 404,
        6 => 409,
        7 => 403,
        8 => 429,
        9 => 400,
        10 => 409,
        11 => 400,
        12 => 501,
        13 => 500,
        14 => 503,
        15 => 500,
        16 => 401,
        _ => 500,
    }
}

/// Checks what every pRPC response must carry and turns it into the
/// response message or a [`Status`]. `format` is the negotiated response
/// format.
pub fn prpc_result<Resp>(r: &super::HttpResponse, format: Transport) -> Result<Resp, Status>
where
    Resp: Message + prost::Name + Default,
{
    let code: i32 = r
        .header("x-prpc-grpc-code")
        .unwrap_or_else(|| panic!("no X-Prpc-Grpc-Code on a pRPC response: {r:?}"))
        .parse()
        .expect("X-Prpc-Grpc-Code is a number");
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"), "{r:?}");
    if code != 0 {
        assert_ne!(r.status, 200, "an error with HTTP 200: {r:?}");
        assert_eq!(
            r.status,
            prpc_http_status(code),
            "HTTP status of code {code}: {r:?}"
        );
        assert_eq!(
            r.header("content-type"),
            Some("text/plain; charset=utf-8"),
            "{r:?}"
        );
        let text = r.text();
        let message = text.strip_suffix('\n').unwrap_or(&text);
        return Err(Status::new(Code::from_i32(code), message));
    }
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-type"), Some(format.media_type()), "{r:?}");
    match format {
        Transport::PrpcJson => {
            let body = r
                .body
                .strip_prefix(b")]}'\n")
                .unwrap_or_else(|| panic!("JSON success without the XSSI prefix: {r:?}"));
            Ok(from_json(body))
        }
        _ => Ok(Resp::decode(r.body.as_slice()).expect("a binary response decodes")),
    }
}

fn descriptor<M: prost::Name>() -> prost_reflect::MessageDescriptor {
    qscheduler_wire::descriptor_pool()
        .get_message_by_name(&M::full_name())
        .unwrap_or_else(|| panic!("no descriptor for {}", M::full_name()))
}

/// The proto JSON form of `m` (lowerCamelCase names, defaults omitted).
pub fn to_json<M: Message + prost::Name>(m: &M) -> Vec<u8> {
    let dm = DynamicMessage::decode(descriptor::<M>(), m.encode_to_vec().as_slice()).unwrap();
    serde_json::to_vec(&dm).unwrap()
}

/// Parses proto JSON strictly: a field the schema does not know fails.
pub fn from_json<M: Message + prost::Name + Default>(body: &[u8]) -> M {
    let mut de = serde_json::Deserializer::from_slice(body);
    let dm = DynamicMessage::deserialize(descriptor::<M>(), &mut de)
        .unwrap_or_else(|e| panic!("bad JSON response {}: {e}", String::from_utf8_lossy(body)));
    de.end().unwrap();
    M::decode(dm.encode_to_vec().as_slice()).unwrap()
}

/// A client of one server over one transport.
#[derive(Clone)]
pub struct Rpc {
    pub transport: Transport,
    addr: SocketAddr,
    channel: Option<Channel>,
    timeout: Option<Duration>,
    /// Sent as `Authorization: Bearer <token>`.
    token: Option<String>,
}

impl Rpc {
    pub async fn connect(addr: SocketAddr, transport: Transport) -> Rpc {
        let channel = match transport {
            Transport::Grpc => Some(
                Endpoint::from_shared(format!("http://{addr}"))
                    .unwrap()
                    .connect()
                    .await
                    .expect("gRPC connects"),
            ),
            _ => None,
        };
        Rpc {
            transport,
            addr,
            channel,
            timeout: None,
            token: None,
        }
    }

    /// Sends `token` as the bearer token of every call.
    pub fn with_token(mut self, token: &str) -> Rpc {
        self.token = Some(token.to_owned());
        self
    }

    /// Sends this timeout with every call (`grpc-timeout` or
    /// `X-Prpc-Grpc-Timeout`).
    pub fn with_timeout(mut self, timeout: Duration) -> Rpc {
        self.timeout = Some(timeout);
        self
    }

    fn channel(&self) -> Channel {
        self.channel.clone().expect("a gRPC client")
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if let Some(t) = self.timeout {
            r.set_timeout(t);
        }
        if let Some(t) = &self.token {
            r.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        r
    }

    /// One pRPC call in this client's format.
    pub async fn prpc<Req, Resp>(
        &self,
        service: &str,
        method: &str,
        req: &Req,
    ) -> Result<Resp, Status>
    where
        Req: Message + prost::Name,
        Resp: Message + prost::Name + Default,
    {
        let body = match self.transport {
            Transport::PrpcJson => to_json(req),
            _ => req.encode_to_vec(),
        };
        self.prpc_body(service, method, body).await
    }

    /// One pRPC call with a body already in this client's format.
    pub async fn prpc_body<Resp>(
        &self,
        service: &str,
        method: &str,
        body: Vec<u8>,
    ) -> Result<Resp, Status>
    where
        Resp: Message + prost::Name + Default,
    {
        let media = self.transport.media_type();
        let timeout = self.timeout.map(|t| format!("{}u", t.as_micros()));
        let mut headers = vec![("Content-Type", media), ("Accept", media)];
        if let Some(t) = &timeout {
            headers.push(("X-Prpc-Grpc-Timeout", t.as_str()));
        }
        let bearer = self.token.as_ref().map(|t| format!("Bearer {t}"));
        if let Some(b) = &bearer {
            headers.push(("Authorization", b.as_str()));
        }
        let r = http_raw(
            self.addr,
            "POST",
            &format!("/prpc/{service}/{method}"),
            &headers,
            &body,
        )
        .await;
        prpc_result(&r, self.transport)
    }
}

macro_rules! methods {
    ($($name:ident: $client:ident $service:literal $method:literal $req:ty => $resp:ty;)*) => {
        impl Rpc {
            $(
                pub async fn $name(&self, req: $req) -> Result<$resp, Status> {
                    match self.transport {
                        Transport::Grpc => $client::new(self.channel())
                            .$name(self.request(req))
                            .await
                            .map(tonic::Response::into_inner),
                        _ => self.prpc($service, $method, &req).await,
                    }
                }
            )*
        }
    };
}

methods! {
    assign_tasks: ExternalSchedulerClient "swarming.v1.ExternalScheduler" "AssignTasks"
        pb::AssignTasksRequest => pb::AssignTasksResponse;
    notify_tasks: ExternalSchedulerClient "swarming.v1.ExternalScheduler" "NotifyTasks"
        pb::NotifyTasksRequest => pb::NotifyTasksResponse;
    get_cancellations: ExternalSchedulerClient "swarming.v1.ExternalScheduler" "GetCancellations"
        pb::GetCancellationsRequest => pb::GetCancellationsResponse;
    get_callbacks: ExternalSchedulerClient "swarming.v1.ExternalScheduler" "GetCallbacks"
        pb::GetCallbacksRequest => pb::GetCallbacksResponse;
    create_scheduler_pool: QSchedulerAdminClient "qscheduler.QSchedulerAdmin" "CreateSchedulerPool"
        adm::CreateSchedulerPoolRequest => adm::CreateSchedulerPoolResponse;
    create_account: QSchedulerAdminClient "qscheduler.QSchedulerAdmin" "CreateAccount"
        adm::CreateAccountRequest => adm::CreateAccountResponse;
    wipe: QSchedulerAdminClient "qscheduler.QSchedulerAdmin" "Wipe"
        adm::WipeRequest => adm::WipeResponse;
    mod_account: QSchedulerAdminClient "qscheduler.QSchedulerAdmin" "ModAccount"
        adm::ModAccountRequest => adm::ModAccountResponse;
    mod_scheduler_pool: QSchedulerAdminClient "qscheduler.QSchedulerAdmin" "ModSchedulerPool"
        adm::ModSchedulerPoolRequest => adm::ModSchedulerPoolResponse;
    delete_account: QSchedulerAdminClient "qscheduler.QSchedulerAdmin" "DeleteAccount"
        adm::DeleteAccountRequest => adm::DeleteAccountResponse;
    delete_scheduler_pool: QSchedulerAdminClient "qscheduler.QSchedulerAdmin" "DeleteSchedulerPool"
        adm::DeleteSchedulerPoolRequest => adm::DeleteSchedulerPoolResponse;
    list_accounts: QSchedulerViewClient "qscheduler.QSchedulerView" "ListAccounts"
        adm::ListAccountsRequest => adm::ListAccountsResponse;
    inspect_pool: QSchedulerViewClient "qscheduler.QSchedulerView" "InspectPool"
        adm::InspectPoolRequest => adm::InspectPoolResponse;
    explain_task: QSchedulerInsightClient "qscheduler.QSchedulerInsight" "ExplainTask"
        adm::ExplainTaskRequest => adm::ExplainTaskResponse;
    account_report: QSchedulerInsightClient "qscheduler.QSchedulerInsight" "AccountReport"
        adm::AccountReportRequest => adm::AccountReportResponse;
    pool_overview: QSchedulerInsightClient "qscheduler.QSchedulerInsight" "PoolOverview"
        adm::PoolOverviewRequest => adm::PoolOverviewResponse;
    list_pools: QSchedulerViewClient "qscheduler.QSchedulerView" "ListPools"
        adm::ListPoolsRequest => adm::ListPoolsResponse;
}

// ------------------------------------------------------------- messages

/// 2030-01-01T00:00:00Z: the scenarios' clock starts here, after any wall
/// clock the tests run at (pools start at the wall clock, and scheduler
/// time never goes back).
pub const BASE_SECS: i64 = 1_893_456_000;

/// `BASE_SECS + secs` as a protobuf timestamp.
pub fn ts(secs: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: BASE_SECS + secs,
        nanos: 0,
    })
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// A task: `account` becomes a `qs_account` tag; each slice is a list of
/// dimensions; enqueued at `enqueued` (scenario seconds).
pub fn task(
    id: &str,
    state: State,
    account: Option<&str>,
    slices: &[&[&str]],
    bot: &str,
    enqueued: i64,
) -> pb::TaskSpec {
    pb::TaskSpec {
        id: id.to_owned(),
        tags: account
            .map(|a| vec![format!("qs_account:{a}"), "purpose:test".to_owned()])
            .unwrap_or_default(),
        slices: slices
            .iter()
            .map(|d| pb::SliceSpec {
                dimensions: strings(d),
            })
            .collect(),
        state: state as i32,
        bot_id: bot.to_owned(),
        enqueued_time: ts(enqueued),
    }
}

/// A pending one-slice task enqueued at `at`.
pub fn pending(id: &str, account: Option<&str>, dims: &[&str], at: i64) -> pb::TaskSpec {
    task(id, State::Pending, account, &[dims], "", at)
}

/// `task` running on `bot` (enqueued at 0).
pub fn running(id: &str, bot: &str) -> pb::TaskSpec {
    task(id, State::Running, None, &[&[]], bot, 0)
}

/// `task` in a terminal state.
pub fn done(id: &str, state: State) -> pb::TaskSpec {
    task(id, state, None, &[&[]], "", 0)
}

/// A notification item at scenario time `at`.
pub fn item(at: i64, task: pb::TaskSpec) -> pb::NotifyTasksItem {
    pb::NotifyTasksItem {
        time: ts(at),
        task: Some(task),
    }
}

pub fn bot(id: &str, dims: &[&str]) -> pb::IdleBot {
    pb::IdleBot {
        bot_id: id.to_owned(),
        dimensions: strings(dims),
    }
}

pub fn account_config(
    rates: &[f32],
    max_charge_seconds: f32,
) -> qscheduler_wire::protos::AccountConfig {
    qscheduler_wire::protos::AccountConfig {
        charge_rate: rates.to_vec(),
        max_charge_seconds,
        ..Default::default()
    }
}

/// An assignment as (bot, task, slice number).
pub type Assigned = (String, String, i32);

/// A cancellation as (bot, task, reason, extra info).
pub type Cancelled = (String, String, Reason, String);

/// Shorthands for the common calls; each panics unless the call succeeds.
impl Rpc {
    pub async fn create_pool(&self, pool: &str) {
        self.create_scheduler_pool(adm::CreateSchedulerPoolRequest {
            pool_id: pool.to_owned(),
            config: None,
        })
        .await
        .unwrap_or_else(|e| panic!("create pool {pool}: {e}"));
    }

    pub async fn add_account(&self, pool: &str, account: &str, rates: &[f32], max: f32) {
        self.create_account(adm::CreateAccountRequest {
            pool_id: pool.to_owned(),
            account_id: account.to_owned(),
            config: Some(account_config(rates, max)),
        })
        .await
        .unwrap_or_else(|e| panic!("create account {account}: {e}"));
    }

    pub async fn notify(&self, pool: &str, items: Vec<pb::NotifyTasksItem>) {
        self.notify_tasks(pb::NotifyTasksRequest {
            scheduler_id: pool.to_owned(),
            notifications: items,
            is_callback: false,
        })
        .await
        .unwrap_or_else(|e| panic!("notify {pool}: {e}"));
    }

    /// AssignTasks at scenario time `at`.
    pub async fn assign(&self, pool: &str, at: i64, bots: Vec<pb::IdleBot>) -> Vec<Assigned> {
        self.assign_tasks(pb::AssignTasksRequest {
            scheduler_id: pool.to_owned(),
            idle_bots: bots,
            time: ts(at),
        })
        .await
        .unwrap_or_else(|e| panic!("assign {pool}: {e}"))
        .assignments
        .into_iter()
        .map(|a| (a.bot_id, a.task_id, a.slice_number))
        .collect()
    }

    pub async fn cancellations(&self, pool: &str) -> Vec<Cancelled> {
        self.get_cancellations(pb::GetCancellationsRequest {
            scheduler_id: pool.to_owned(),
        })
        .await
        .unwrap_or_else(|e| panic!("cancellations {pool}: {e}"))
        .cancellations
        .into_iter()
        .map(|c| {
            let reason = c.reason();
            (c.bot_id, c.task_id, reason, c.extra_info)
        })
        .collect()
    }

    pub async fn callbacks(&self, pool: &str) -> Vec<String> {
        self.get_callbacks(pb::GetCallbacksRequest {
            scheduler_id: pool.to_owned(),
        })
        .await
        .unwrap_or_else(|e| panic!("callbacks {pool}: {e}"))
        .task_ids
    }

    pub async fn inspect(&self, pool: &str) -> adm::InspectPoolResponse {
        self.inspect_pool(adm::InspectPoolRequest {
            pool_id: pool.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("inspect {pool}: {e}"))
    }

    /// Running tasks as (task, bot, priority, account), in InspectPool's
    /// order.
    pub async fn running(&self, pool: &str) -> Vec<(String, String, i32, String)> {
        self.inspect(pool)
            .await
            .running_tasks
            .into_iter()
            .map(|r| (r.id, r.bot_id, r.priority, r.account_id))
            .collect()
    }

    /// Waiting task ids, in InspectPool's order.
    pub async fn waiting(&self, pool: &str) -> Vec<String> {
        self.inspect(pool)
            .await
            .waiting_tasks
            .into_iter()
            .map(|w| w.id)
            .collect()
    }

    /// The balance of `account` as InspectPool reports it.
    pub async fn balance(&self, pool: &str, account: &str) -> Vec<f32> {
        self.inspect(pool)
            .await
            .account_balances
            .get(account)
            .unwrap_or_else(|| panic!("no balance for {account}"))
            .value
            .clone()
    }
}

/// Owned strings, for comparing with answers.
pub fn a(bot: &str, task: &str, slice: i32) -> Assigned {
    (bot.to_owned(), task.to_owned(), slice)
}
