//! A real server on a loopback socket with dummy implementations of the
//! three services, and a raw HTTP helper to send exactly the bytes and
//! headers a test wants.
//!
//! The dummy `ExternalScheduler` is steered by `scheduler_id`, so each test
//! can make the handler fail, sleep, echo its metadata or its deadline, or
//! answer with a large message.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use qscheduler_wire::context::rpc_method;
use qscheduler_wire::qscheduler::q_scheduler_admin_server::QSchedulerAdmin;
use qscheduler_wire::qscheduler::q_scheduler_insight_server::QSchedulerInsight;
use qscheduler_wire::qscheduler::q_scheduler_view_server::QSchedulerView;
use qscheduler_wire::qscheduler::*;
use qscheduler_wire::serve::{Services, serve};
use qscheduler_wire::swarming::v1::external_scheduler_server::ExternalScheduler;
use qscheduler_wire::swarming::v1::get_cancellations_response::{Cancellation, cancellation};
use qscheduler_wire::swarming::v1::*;
use qscheduler_wire::{protos, request_deadline};
use tonic::metadata::{KeyAndValueRef, MetadataValue};
use tonic::{Code, Request, Response, Status};

pub struct Dummy;

fn assignment(bot: &str, task: &str) -> TaskAssignment {
    TaskAssignment {
        bot_id: bot.to_string(),
        task_id: task.to_string(),
        slice_number: 0,
    }
}

#[tonic::async_trait]
impl ExternalScheduler for Dummy {
    async fn assign_tasks(
        &self,
        request: Request<AssignTasksRequest>,
    ) -> Result<Response<AssignTasksResponse>, Status> {
        let deadline = request_deadline(&request);
        let method = rpc_method(&request).cloned();
        let metadata = request.metadata().clone();
        let req = request.into_inner();
        let id = req.scheduler_id.as_str();
        if let Some(rest) = id.strip_prefix("error:") {
            let (code, msg) = rest.split_once(':').unwrap_or((rest, ""));
            return Err(Status::new(Code::from_i32(code.parse().unwrap()), msg));
        }
        if let Some(ms) = id.strip_prefix("sleep:") {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
        }
        if id == "deadline" {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()).as_millis());
            let text = left.map_or("none".to_string(), |l| l.to_string());
            return Ok(Response::new(AssignTasksResponse {
                assignments: vec![assignment("deadline-ms", &text)],
            }));
        }
        if id == "method" {
            let m = method.unwrap();
            return Ok(Response::new(AssignTasksResponse {
                assignments: vec![assignment(
                    &format!("{}/{}", m.service, m.method),
                    &format!("{:?}", m.transport),
                )],
            }));
        }
        if id == "metadata" {
            let mut assignments = Vec::new();
            for entry in metadata.iter() {
                match entry {
                    KeyAndValueRef::Ascii(k, v) => assignments.push(assignment(
                        k.as_str(),
                        &String::from_utf8_lossy(v.as_encoded_bytes()),
                    )),
                    KeyAndValueRef::Binary(k, v) => assignments.push(assignment(
                        k.as_str(),
                        // A client may send any text in a -bin header;
                        // only valid base64 decodes.
                        &v.to_bytes()
                            .map(|b| String::from_utf8_lossy(&b).into_owned())
                            .unwrap_or_else(|_| "<not base64>".to_owned()),
                    )),
                }
            }
            let mut response = Response::new(AssignTasksResponse { assignments });
            response
                .metadata_mut()
                .insert("x-echo", MetadataValue::from_static("yes"));
            response
                .metadata_mut()
                .insert_bin("echo-bin", MetadataValue::from_bytes(b"\x00\x01hi"));
            // Reserved for the protocol: must not reach the client.
            response
                .metadata_mut()
                .insert("x-prpc-grpc-code", MetadataValue::from_static("7"));
            return Ok(response);
        }
        if let Some(n) = id.strip_prefix("big:") {
            let n: usize = n.parse().unwrap();
            let assignments = (0..n)
                .map(|i| TaskAssignment {
                    bot_id: format!("bot-{i}"),
                    task_id: format!("task-{i}"),
                    slice_number: (i % 2) as i32,
                })
                .collect();
            return Ok(Response::new(AssignTasksResponse { assignments }));
        }
        // Echo: one assignment per idle bot, slice 1 when the bot has no
        // dimensions.
        let assignments = req
            .idle_bots
            .iter()
            .map(|b| TaskAssignment {
                bot_id: b.bot_id.clone(),
                task_id: format!("{id}/task-for-{}", b.bot_id),
                slice_number: i32::from(b.dimensions.is_empty()),
            })
            .collect();
        Ok(Response::new(AssignTasksResponse { assignments }))
    }

    async fn get_cancellations(
        &self,
        request: Request<GetCancellationsRequest>,
    ) -> Result<Response<GetCancellationsResponse>, Status> {
        let id = request.into_inner().scheduler_id;
        Ok(Response::new(GetCancellationsResponse {
            cancellations: vec![
                Cancellation {
                    bot_id: "bot-1".into(),
                    task_id: format!("{id}-t1"),
                    reason: cancellation::Reason::Preempted as i32,
                    extra_info: String::new(),
                },
                Cancellation {
                    bot_id: String::new(),
                    task_id: format!("{id}-t2"),
                    reason: cancellation::Reason::Error as i32,
                    extra_info: "bad dimensions".into(),
                },
            ],
        }))
    }

    async fn notify_tasks(
        &self,
        request: Request<NotifyTasksRequest>,
    ) -> Result<Response<NotifyTasksResponse>, Status> {
        let req = request.into_inner();
        if req.scheduler_id.is_empty() {
            return Err(Status::invalid_argument("SchedulerId is required"));
        }
        Ok(Response::new(NotifyTasksResponse {}))
    }

    async fn get_callbacks(
        &self,
        request: Request<GetCallbacksRequest>,
    ) -> Result<Response<GetCallbacksResponse>, Status> {
        Ok(Response::new(GetCallbacksResponse {
            task_ids: vec![request.into_inner().scheduler_id],
        }))
    }
}

#[tonic::async_trait]
impl QSchedulerAdmin for Dummy {
    async fn create_scheduler_pool(
        &self,
        request: Request<CreateSchedulerPoolRequest>,
    ) -> Result<Response<CreateSchedulerPoolResponse>, Status> {
        if request.get_ref().pool_id == "exists" {
            return Err(Status::already_exists("pool exists already"));
        }
        Ok(Response::new(CreateSchedulerPoolResponse {}))
    }
    async fn create_account(
        &self,
        _: Request<CreateAccountRequest>,
    ) -> Result<Response<CreateAccountResponse>, Status> {
        Ok(Response::new(CreateAccountResponse {}))
    }
    async fn wipe(&self, _: Request<WipeRequest>) -> Result<Response<WipeResponse>, Status> {
        Ok(Response::new(WipeResponse {}))
    }
    async fn mod_account(
        &self,
        request: Request<ModAccountRequest>,
    ) -> Result<Response<ModAccountResponse>, Status> {
        // Echo what arrived through the wrappers as an error, so tests can
        // see the nullable fields.
        let r = request.into_inner();
        Err(Status::failed_precondition(format!(
            "max_charge_seconds={:?} max_fanout={:?} disable_free_tasks={:?} description={:?}",
            r.max_charge_seconds, r.max_fanout, r.disable_free_tasks, r.description
        )))
    }
    async fn mod_scheduler_pool(
        &self,
        _: Request<ModSchedulerPoolRequest>,
    ) -> Result<Response<ModSchedulerPoolResponse>, Status> {
        Ok(Response::new(ModSchedulerPoolResponse {}))
    }
    async fn delete_account(
        &self,
        _: Request<DeleteAccountRequest>,
    ) -> Result<Response<DeleteAccountResponse>, Status> {
        Ok(Response::new(DeleteAccountResponse {}))
    }
    async fn delete_scheduler_pool(
        &self,
        _: Request<DeleteSchedulerPoolRequest>,
    ) -> Result<Response<DeleteSchedulerPoolResponse>, Status> {
        Ok(Response::new(DeleteSchedulerPoolResponse {}))
    }
}

pub fn account(rate: f32) -> protos::AccountConfig {
    protos::AccountConfig {
        charge_rate: vec![rate, 0.0, 0.0, 0.0, 0.0],
        max_charge_seconds: 600.0,
        max_fanout: 0,
        disable_free_tasks: false,
        description: "an account".into(),
        per_label_task_limits: [("label-model".to_string(), 2)].into_iter().collect(),
    }
}

#[tonic::async_trait]
impl QSchedulerView for Dummy {
    async fn list_accounts(
        &self,
        request: Request<ListAccountsRequest>,
    ) -> Result<Response<ListAccountsResponse>, Status> {
        if request.get_ref().pool_id.is_empty() {
            return Err(Status::not_found("no such pool"));
        }
        Ok(Response::new(ListAccountsResponse {
            accounts: [("acct".to_string(), account(1.5))].into_iter().collect(),
        }))
    }
    async fn inspect_pool(
        &self,
        _: Request<InspectPoolRequest>,
    ) -> Result<Response<InspectPoolResponse>, Status> {
        Ok(Response::new(InspectPoolResponse {
            num_waiting_tasks: 1,
            num_running_tasks: 1,
            num_idle_bots: 1,
            account_balances: [(
                "acct".to_string(),
                protos::scheduler_state::Balance {
                    value: vec![1.0, 2.0, 0.0, 0.0, 0.0],
                },
            )]
            .into_iter()
            .collect(),
            running_tasks: vec![inspect_pool_response::RunningTask {
                id: "r1".into(),
                bot_id: "b1".into(),
                priority: 5,
                account_id: "acct".into(),
                age_seconds: 12,
            }],
            waiting_tasks: vec![inspect_pool_response::WaitingTask {
                id: "w1".into(),
                account_id: "acct".into(),
                age_seconds: 3,
            }],
            idle_bots: vec![inspect_pool_response::IdleBot {
                id: "b2".into(),
                dimensions: vec!["pool:p".into()],
                age_seconds: 1,
            }],
            account_configs: [("acct".to_string(), account(1.5))].into_iter().collect(),
            disable_preemption: true,
            next_page_token: String::new(),
        }))
    }
    async fn list_pools(
        &self,
        _: Request<ListPoolsRequest>,
    ) -> Result<Response<ListPoolsResponse>, Status> {
        Ok(Response::new(ListPoolsResponse {
            pools: vec![list_pools_response::Pool {
                pool_id: "p".into(),
                state: list_pools_response::pool::State::Serving.into(),
                replica_id: "r1".into(),
                error: String::new(),
            }],
        }))
    }
}

#[tonic::async_trait]
impl QSchedulerInsight for Dummy {
    async fn explain_task(
        &self,
        r: Request<ExplainTaskRequest>,
    ) -> Result<Response<ExplainTaskResponse>, Status> {
        Ok(Response::new(ExplainTaskResponse {
            task_id: r.into_inner().task_id,
            state: "unknown".into(),
            ..Default::default()
        }))
    }
    async fn account_report(
        &self,
        r: Request<AccountReportRequest>,
    ) -> Result<Response<AccountReportResponse>, Status> {
        Ok(Response::new(AccountReportResponse {
            pool_id: r.into_inner().pool_id,
            ..Default::default()
        }))
    }
    async fn pool_overview(
        &self,
        r: Request<PoolOverviewRequest>,
    ) -> Result<Response<PoolOverviewResponse>, Status> {
        Ok(Response::new(PoolOverviewResponse {
            pool_id: r.into_inner().pool_id,
            ..Default::default()
        }))
    }
}

/// Every service on the dummy.
pub fn dummy_services() -> Services {
    let d = Arc::new(Dummy);
    Services::new()
        .external_scheduler(Arc::clone(&d))
        .admin(Arc::clone(&d))
        .view(Arc::clone(&d))
        .insight(d)
}

pub struct TestServer {
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl TestServer {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Serves `services` plus a `/healthz` route on a fresh loopback port.
pub async fn start(services: Services) -> TestServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let extra = axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok\n" }));
    let router = services.into_router(extra).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let options = qscheduler_wire::conn::ConnectionOptions::default();
        serve(listener, router, options, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    TestServer {
        addr,
        shutdown: Some(tx),
    }
}

pub async fn start_dummy() -> TestServer {
    start(dummy_services()).await
}

#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    pub fn code(&self) -> i32 {
        self.header("x-prpc-grpc-code")
            .expect("every pRPC response has X-Prpc-Grpc-Code")
            .parse()
            .unwrap()
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.body.to_vec()).unwrap()
    }

    /// Checks the invariants of every pRPC error response and returns the
    /// gRPC code and message.
    pub fn error(&self) -> (i32, String) {
        assert_ne!(self.status, 200, "errors never come with HTTP 200");
        assert_eq!(
            self.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(self.header("x-content-type-options"), Some("nosniff"));
        let text = self.text();
        assert!(text.ends_with('\n'), "{text:?}");
        (self.code(), text.trim_end_matches('\n').to_string())
    }
}

/// Sends one HTTP/1.1 request with exactly these headers and body.
pub async fn raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> RawResponse {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body.into())).unwrap();
    let resp = client.request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    RawResponse {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    }
}

/// A POST; a request without a `Content-Type` among `headers` is sent as
/// binary pRPC (the server refuses requests without one).
pub async fn post(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> RawResponse {
    let mut all = headers.to_vec();
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        all.push(("content-type", BINARY));
    }
    raw(addr, "POST", path, &all, body).await
}

/// A POST with exactly `headers`.
pub async fn post_exact(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> RawResponse {
    raw(addr, "POST", path, headers, body).await
}

pub const ASSIGN: &str = "/prpc/swarming.v1.ExternalScheduler/AssignTasks";
pub const BINARY: &str = "application/prpc; encoding=binary";
pub const JSON: &str = "application/json";
pub const TEXT: &str = "application/prpc; encoding=text";

pub fn assign_request(scheduler_id: &str) -> AssignTasksRequest {
    AssignTasksRequest {
        scheduler_id: scheduler_id.to_string(),
        idle_bots: vec![
            IdleBot {
                bot_id: "b1".into(),
                dimensions: vec!["pool:p".into(), "os:linux".into()],
            },
            IdleBot {
                bot_id: "b2".into(),
                dimensions: vec![],
            },
        ],
        time: Some(prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 500_000_000,
        }),
    }
}
