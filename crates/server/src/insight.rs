//! `qscheduler.QSchedulerInsight`: explanations, account reports and the
//! pool overview, over gRPC and pRPC like the other services.
//!
//! Every method is a read. Explanations and overviews read the committed
//! pool through [`PoolRef::view`] (the follower copy of a large pool, so the
//! writer never waits); reports read the rolling figures the writer keeps
//! through [`Reports`]. Calls for a pool owned by another replica are
//! forwarded to it, like every other call.

use std::sync::Arc;

use qscheduler_core::Pool;
use qscheduler_core::explain::{self, Eta, Explanation, Reason, TaskState, Turnover};
use qscheduler_wire::qscheduler as ins;
use qscheduler_wire::qscheduler::q_scheduler_insight_client::QSchedulerInsightClient;
use qscheduler_wire::qscheduler::q_scheduler_insight_server::QSchedulerInsight;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::limits::{Limits, check_id};
use crate::pool::PoolRef;
use crate::report::{MINUTE_NANOS, PoolFigures, Report, Reports};
use crate::service::{Origin, PoolServices};
use crate::translate::timestamp;

/// Default report window.
pub const DEFAULT_REPORT_WINDOW_SECS: i64 = 24 * 3600;
/// Longest report window: what the figures keep.
pub const MAX_REPORT_WINDOW_SECS: i64 = 7 * 24 * 3600;
/// The window of pool turnover an ETA uses.
pub const TURNOVER_WINDOW_MINUTES: i64 = 10;

/// The insight service over the same pools as [`PoolServices`].
#[derive(Clone)]
pub struct Insight {
    svc: PoolServices,
    reports: Arc<Reports>,
    limits: Arc<Limits>,
}

fn client(c: Channel) -> QSchedulerInsightClient<Channel> {
    QSchedulerInsightClient::new(c)
}

impl Insight {
    /// The service over `svc`'s pools, with the figures `reports` keeps.
    pub fn new(svc: PoolServices, reports: Arc<Reports>, limits: Limits) -> Self {
        Insight {
            svc,
            reports,
            limits: Arc::new(limits),
        }
    }

    /// The limits requests are checked against.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The figures kept for the pools.
    pub fn reports(&self) -> &Arc<Reports> {
        &self.reports
    }

    /// Explains `task` of `pool` (local), with the pool's recent turnover.
    pub async fn explain_local(&self, pool: &PoolRef, task: String) -> Explanation {
        let figures = self.reports.pool(pool.id());
        pool.view(move |state| {
            let turnover = figures.as_ref().map(|f| turnover(&lock(f), state));
            explain::explain(state, &task, turnover)
        })
        .await
    }

    /// The report of `pool` (local) over `window_secs`.
    pub async fn report_local(&self, pool: &PoolRef, window_secs: i64) -> Report {
        let figures = self.reports.pool(pool.id());
        pool.view(move |state| {
            let now = state.scheduler().now();
            match &figures {
                Some(f) => lock(f).report(now, window_secs, state),
                None => PoolFigures::default().report(now, window_secs, state),
            }
        })
        .await
    }

    /// The overview of `pool` (local). Counts queued tasks per account, so
    /// it walks the queue: a heavy read.
    pub async fn overview_local(&self, pool: &PoolRef) -> ins::PoolOverviewResponse {
        let figures = self.reports.pool(pool.id());
        let id = pool.id().to_owned();
        pool.view_heavy(move |state| overview(&id, state, figures.as_deref()))
            .await
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Tasks finished over the last [`TURNOVER_WINDOW_MINUTES`] of pool time
/// (or the part of it the figures cover).
fn turnover(f: &PoolFigures, pool: &Pool) -> Turnover {
    let now = pool.scheduler().now();
    let from = now.add_nanos(-(TURNOVER_WINDOW_MINUTES - 1) * MINUTE_NANOS);
    let minutes = f.minutes(from, now);
    let completions = minutes.iter().map(|(_, m)| m.completed).sum();
    let oldest = minutes.first().map_or(now, |(t, _)| *t);
    Turnover {
        window_secs: (now.nanos_since(oldest) as f64 / 1e9).max(60.0),
        completions,
    }
}

fn overview(
    id: &str,
    state: &Pool,
    figures: Option<&std::sync::Mutex<PoolFigures>>,
) -> ins::PoolOverviewResponse {
    let s = state.scheduler();
    let queued: std::collections::BTreeMap<&str, u64> =
        s.queued_per_account().into_iter().collect();
    let mut accounts: Vec<ins::AccountOverview> = s
        .accounts()
        .map(|(aid, c, b)| ins::AccountOverview {
            account_id: aid.to_owned(),
            configured: true,
            balance: b.0.to_vec(),
            charge_rate: c.charge_rate.to_vec(),
            max_charge_seconds: c.max_charge_seconds,
            level: s.account_next_level(aid).map_or(-1, i32::from),
            running_by_level: s.running_by_level(aid).to_vec(),
            queued: queued.get(aid).copied().unwrap_or(0),
        })
        .collect();
    // Accounts with queued tasks but no configuration run at the free level.
    for (aid, n) in &queued {
        if s.account_config(aid).is_none() {
            accounts.push(ins::AccountOverview {
                account_id: (*aid).to_owned(),
                configured: false,
                level: i32::from(qscheduler_core::FREE_PRIORITY),
                running_by_level: s.running_by_level(aid).to_vec(),
                queued: *n,
                ..Default::default()
            });
        }
    }
    accounts.sort_by(|a, b| a.account_id.cmp(&b.account_id));
    let now = s.now();
    let minutes = figures
        .map(|f| {
            lock(f)
                .minutes(now.add_nanos(-59 * MINUTE_NANOS), now)
                .into_iter()
                .map(|(t, m)| ins::MinuteSample {
                    start: Some(timestamp(t)),
                    assigned: m.assigned,
                    completed: m.completed,
                    preempted: m.preempted,
                    enqueued: m.enqueued,
                })
                .collect()
        })
        .unwrap_or_default();
    let mut groups: std::collections::BTreeMap<Vec<String>, u64> = Default::default();
    for w in s.worker_views() {
        if w.running.is_none() {
            *groups
                .entry(w.labels.iter().map(|l| l.to_string()).collect())
                .or_default() += 1;
        }
    }
    ins::PoolOverviewResponse {
        pool_id: id.to_owned(),
        pool_time: Some(timestamp(now)),
        queued: s.queued_len() as u64,
        running: s.running_len() as u64,
        idle_bots: s.idle_len() as u64,
        bots: s.workers_len() as u64,
        disable_preemption: s.settings().disable_preemption,
        accounts,
        minutes,
        idle_bot_groups: groups
            .into_iter()
            .map(|(labels, bots)| ins::IdleBotGroup { labels, bots })
            .collect(),
    }
}

/// An explanation as the API returns it.
pub fn explanation_pb(e: &Explanation) -> ins::ExplainTaskResponse {
    let (bot_id, running_level) = match &e.state {
        TaskState::Running { bot, level } => (bot.clone(), i32::from(*level)),
        TaskState::AssignedAwaitingPickup { bot, .. } => (bot.clone(), -1),
        _ => (String::new(), -1),
    };
    let level = e.level.as_ref().map(|l| {
        let change = l.pending_change.as_ref();
        ins::LevelExplanation {
            account_id: l.account.clone(),
            configured: l.config.is_some(),
            balance: l.balance.map(|b| b.0.to_vec()).unwrap_or_default(),
            charge_rate: l
                .config
                .as_ref()
                .map(|c| c.charge_rate.to_vec())
                .unwrap_or_default(),
            max_charge_seconds: l.config.as_ref().map_or(0.0, |c| c.max_charge_seconds),
            disable_free_tasks: l.config.as_ref().is_some_and(|c| c.disable_free_tasks),
            max_fanout: l.config.as_ref().map_or(0, |c| c.max_fanout),
            level: l.level.map_or(-1, i32::from),
            fanout_throttled: l.fanout_throttled,
            running_by_level: l.running_by_level.to_vec(),
            change_pending: change.is_some(),
            change_to_level: change.map_or(0, |c| i32::from(c.to)),
            change_in_seconds: change.map_or(0.0, |c| c.in_secs),
        }
    });
    let reasons = e.reasons.iter().map(reason_pb).collect();
    let standing = e.standing.as_ref().map(|s| ins::Standing {
        competing: s.competing,
        ahead_better_level: s.ahead_better_level,
        ahead_same_level: s.ahead_same_level,
        sitting_out: s.sitting_out,
        position: e.position.unwrap_or(0),
        estimated: s.estimated,
    });
    let eta = match &e.eta {
        Eta::Known {
            secs,
            method,
            inputs,
        } => ins::Eta {
            known: true,
            seconds: *secs,
            method: (*method).to_owned(),
            inputs: inputs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
            unknown_reason: String::new(),
        },
        Eta::Unknown { why } => ins::Eta {
            known: false,
            unknown_reason: why.clone(),
            ..Default::default()
        },
    };
    ins::ExplainTaskResponse {
        task_id: e.task_id.clone(),
        state: e.state.code().to_owned(),
        bot_id,
        running_level,
        pool_time: Some(timestamp(e.now)),
        level,
        bots: Some(ins::BotCounts {
            matching: e.bots.matching,
            idle: e.bots.idle,
            busy: e.bots.busy,
            provisioned: e.bots.provisioned,
            provisioned_idle: e.bots.provisioned_idle,
        }),
        reasons,
        standing,
        eta: Some(eta),
    }
}

fn reason_pb(r: &Reason) -> ins::BlockingReason {
    let (key, label) = match r {
        Reason::PerLabelLimit { key, label, .. } => (key.clone(), label.clone()),
        _ => (String::new(), String::new()),
    };
    ins::BlockingReason {
        code: r.code().to_owned(),
        message: r.message(),
        numbers: r
            .numbers()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        key,
        label,
    }
}

/// A report as the API returns it.
pub fn report_pb(pool_id: &str, r: &Report) -> ins::AccountReportResponse {
    ins::AccountReportResponse {
        pool_id: pool_id.to_owned(),
        window_seconds: r.window_secs,
        covered_seconds: r.covered_secs,
        pool_used_bot_seconds: r.pool_used,
        window_start: Some(timestamp(r.window_start)),
        window_end: Some(timestamp(r.window_end)),
        accounts: r
            .accounts
            .iter()
            .map(|a| ins::AccountReportEntry {
                account_id: a.account.clone(),
                levels: a
                    .levels
                    .iter()
                    .map(|l| ins::LevelReport {
                        level: i32::from(l.level),
                        entitlement_bot_seconds: l.entitlement,
                        balance_cap: l.balance_cap,
                        used_bot_seconds: l.used,
                        share: l.share,
                        wait: Some(ins::WaitPercentiles {
                            count: l.wait.count,
                            p50_seconds: l.wait.p50,
                            p95_seconds: l.wait.p95,
                            p99_seconds: l.wait.p99,
                        }),
                        assigned: l.assigned,
                    })
                    .collect(),
                used_bot_seconds: a.used,
                share: a.share,
                free_level_seconds: a.free_level_secs,
                promotions: a.promotions,
                demotions: a.demotions,
                preemptions_suffered: a.preemptions_suffered,
                preemptions_caused: a.preemptions_caused,
                refunds: a.refunds,
                refunded_bot_seconds: a.refunded,
                tasks_completed: a.completed,
            })
            .collect(),
    }
}

/// The report window a request asks for, checked.
pub fn report_window(secs: i64) -> Result<i64, Status> {
    match secs {
        0 => Ok(DEFAULT_REPORT_WINDOW_SECS),
        s if (60..=MAX_REPORT_WINDOW_SECS).contains(&s) => Ok(s),
        s => Err(Status::invalid_argument(format!(
            "window_seconds = {s} must be 0 (24 hours) or between 60 and {MAX_REPORT_WINDOW_SECS}"
        ))),
    }
}

#[tonic::async_trait]
impl QSchedulerInsight for Insight {
    async fn explain_task(
        &self,
        request: Request<ins::ExplainTaskRequest>,
    ) -> Result<Response<ins::ExplainTaskResponse>, Status> {
        let origin = Origin::of(&request);
        let req = request.into_inner();
        check_id(&req.task_id, "task_id", &self.limits)?;
        let id = req.pool_id.clone();
        let task = req.task_id.clone();
        self.svc
            .route(
                &id,
                "pool_id",
                &origin,
                req,
                |pool| {
                    let task = task.clone();
                    async move {
                        let e = self.explain_local(&pool, task).await;
                        Ok(explanation_pb(&e))
                    }
                },
                |c, r| async move { client(c).explain_task(r).await },
            )
            .await
    }

    async fn account_report(
        &self,
        request: Request<ins::AccountReportRequest>,
    ) -> Result<Response<ins::AccountReportResponse>, Status> {
        let origin = Origin::of(&request);
        let req = request.into_inner();
        let window = report_window(req.window_seconds)?;
        let id = req.pool_id.clone();
        self.svc
            .route(
                &id,
                "pool_id",
                &origin,
                req,
                |pool| async move {
                    let r = self.report_local(&pool, window).await;
                    Ok(report_pb(pool.id(), &r))
                },
                |c, r| async move { client(c).account_report(r).await },
            )
            .await
    }

    async fn pool_overview(
        &self,
        request: Request<ins::PoolOverviewRequest>,
    ) -> Result<Response<ins::PoolOverviewResponse>, Status> {
        let origin = Origin::of(&request);
        let req = request.into_inner();
        let id = req.pool_id.clone();
        self.svc
            .route(
                &id,
                "pool_id",
                &origin,
                req,
                |pool| async move { Ok(self.overview_local(&pool).await) },
                |c, r| async move { client(c).pool_overview(r).await },
            )
            .await
    }
}
