//! `qscheduler loadgen`: drives a running server the way a Swarming fleet
//! does, and reports sustained throughput and latency.
//!
//! Swarming talks to its external scheduler in small calls: every bot that
//! polls for work becomes one `AssignTasks` with one idle bot, and every
//! task state change becomes one `NotifyTasks` with one item. The load
//! generator reproduces that shape, closed-loop, on every pool it drives:
//!
//! * **notifiers** each send `NotifyTasks` with one new PENDING task, over
//!   and over;
//! * **bots** each call `AssignTasks` for themselves; when they get a task
//!   they report it RUNNING (one more one-item `NotifyTasks`, as Swarming
//!   does when a bot picks a task up) and poll again at once, which tells
//!   the scheduler the task finished (the bot is idle again).
//!
//! Every call carries the wall-clock time, as Swarming's do. Tasks are
//! spread over `--accounts` accounts with quota and `--label-sets`
//! distinct label sets; bots are spread over the same label sets, so
//! every bot can run some of the work. After `--warmup`, calls finishing
//! within `--duration` are counted and their latencies kept; the report
//! gives calls per second, notification items per second, assignments,
//! p50/p99/max per method, and errors by status code. Throughput is bounded
//! by whichever of the server and this process runs out of CPU first: on a
//! small machine, run both and read the figures as a lower bound.
//!
//! `--hostile` runs the calls of careless and hostile callers instead (see
//! the `hostile` module).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use qscheduler_wire::protos::AccountConfig;
use qscheduler_wire::prpc::PrpcClient;
use qscheduler_wire::qscheduler as adm;
use qscheduler_wire::swarming::v1 as pb;
use qscheduler_wire::swarming::v1::external_scheduler_client::ExternalSchedulerClient;
use tonic::Code;
use tonic::transport::Channel;

use crate::cli::{Bearer, Client, Credentials, Transport, grpc_endpoint, prpc_client};

/// Options of `qscheduler loadgen`.
#[derive(clap::Args, Debug)]
pub struct LoadgenArgs {
    /// The server's URL (http://HOST:PORT).
    #[arg(
        long,
        value_name = "URL",
        env = "QSCHEDULER_SERVER",
        default_value = "http://127.0.0.1:8082"
    )]
    server: String,
    /// Protocol: pRPC with binary protobuf (what Swarming speaks) or gRPC.
    #[arg(long, value_enum, default_value = "prpc")]
    transport: Transport,
    /// Number of pools to drive, named PREFIX-0 .. PREFIX-(N-1). Missing
    /// pools are created, with the accounts.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pools: u32,
    /// Name prefix of the pools.
    #[arg(long, default_value = "loadgen", value_name = "PREFIX")]
    pool_prefix: String,
    /// Concurrent NotifyTasks callers per pool, each sending one new task
    /// per call.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    notifiers: u32,
    /// Bots per pool; each is a caller polling AssignTasks for itself.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    bots: u32,
    /// Quota accounts per pool that the tasks are spread over (each gets
    /// 1 bot-second per second at every level, capped at an hour).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    accounts: u32,
    /// Distinct label sets the tasks and bots are spread over.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    label_sets: u32,
    /// Tasks queued in each pool before the run starts (sent 500 per call).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=10_000_000))]
    prefill: u32,
    /// Seconds of load before measuring (connections, caches, first
    /// passes).
    #[arg(long, default_value_t = 2.0, value_name = "SECONDS", value_parser = seconds)]
    warmup: f64,
    /// Seconds to measure.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS", value_parser = seconds)]
    duration: f64,
    /// Give up on a call after this many seconds.
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS", value_parser = seconds)]
    timeout: f64,
    /// Print one JSON object on stdout instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    credentials: Credentials,
    #[command(flatten)]
    hostile: crate::hostile::HostileArgs,
}

fn seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(v.is_finite() && v > 0.0 && v <= 86_400.0) {
        return Err(format!(
            "{s:?} must be more than 0 and at most 86400 seconds"
        ));
    }
    Ok(v)
}

const SCHED: &str = "swarming.v1.ExternalScheduler";

/// One connection pool to the server, over either protocol (also used by
/// `workload play`).
#[derive(Clone)]
pub(crate) enum Conn {
    Prpc(Box<PrpcClient>),
    Grpc(Channel, Bearer),
}

impl Conn {
    /// Connects to `server` (pRPC connections are made lazily, per call).
    pub(crate) async fn open(
        server: &str,
        transport: Transport,
        timeout: Duration,
        credentials: &Credentials,
    ) -> anyhow::Result<Conn> {
        let token = credentials.token()?;
        let tls = credentials.tls()?;
        Ok(match transport {
            Transport::Prpc => Conn::Prpc(Box::new(prpc_client(
                server,
                timeout,
                token.as_deref(),
                &tls,
            )?)),
            Transport::Grpc => Conn::Grpc(
                grpc_endpoint(server, timeout, &tls)?
                    .tcp_nodelay(true)
                    .connect()
                    .await
                    .with_context(|| {
                        format!("connecting to {server}; is the server running? (--server)")
                    })?,
                Bearer::new(token.as_deref())?,
            ),
        })
    }

    pub(crate) async fn notify(&self, req: pb::NotifyTasksRequest) -> Result<(), tonic::Status> {
        match self {
            Conn::Prpc(c) => c
                .call::<_, pb::NotifyTasksResponse>(SCHED, "NotifyTasks", &req)
                .await
                .map(drop),
            Conn::Grpc(ch, bearer) => {
                let mut req = tonic::Request::new(req);
                bearer.apply(&mut req);
                ExternalSchedulerClient::new(ch.clone())
                    .notify_tasks(req)
                    .await
                    .map(drop)
            }
        }
    }

    pub(crate) async fn assign(
        &self,
        req: pb::AssignTasksRequest,
    ) -> Result<pb::AssignTasksResponse, tonic::Status> {
        match self {
            Conn::Prpc(c) => c.call(SCHED, "AssignTasks", &req).await,
            Conn::Grpc(ch, bearer) => {
                let mut req = tonic::Request::new(req);
                bearer.apply(&mut req);
                ExternalSchedulerClient::new(ch.clone())
                    .assign_tasks(req)
                    .await
                    .map(tonic::Response::into_inner)
            }
        }
    }

    pub(crate) async fn cancellations(
        &self,
        req: pb::GetCancellationsRequest,
    ) -> Result<pb::GetCancellationsResponse, tonic::Status> {
        match self {
            Conn::Prpc(c) => c.call(SCHED, "GetCancellations", &req).await,
            Conn::Grpc(ch, bearer) => {
                let mut req = tonic::Request::new(req);
                bearer.apply(&mut req);
                ExternalSchedulerClient::new(ch.clone())
                    .get_cancellations(req)
                    .await
                    .map(tonic::Response::into_inner)
            }
        }
    }
}

/// What the workload looks like; shared by every caller.
struct Workload {
    /// Makes this run's task ids unique on a server that saw earlier runs.
    run: String,
    accounts: u32,
    label_sets: u32,
}

impl Workload {
    fn dims(&self, label_set: u32) -> Vec<String> {
        vec!["pool:loadgen".into(), format!("os:linux-{label_set}")]
    }

    /// The task `seq` of caller `caller`; everything about it follows from
    /// its id, so a bot can report it RUNNING knowing only the id.
    fn task_id(&self, caller: &str, seq: u64) -> String {
        format!("{}-{caller}-{seq}", self.run)
    }

    fn task(&self, id: &str, state: pb::task_spec::State, bot: &str) -> pb::TaskSpec {
        let seq: u64 = id
            .rsplit('-')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        // The run's own ids always parse; a foreign id would only land in
        // account 0 and label set 0.
        let account = (seq % u64::from(self.accounts)) as u32;
        let labels = (seq / u64::from(self.accounts) % u64::from(self.label_sets)) as u32;
        pb::TaskSpec {
            id: id.to_string(),
            state: state as i32,
            bot_id: bot.to_string(),
            tags: vec![format!("qs_account:acct-{account}")],
            slices: vec![pb::SliceSpec {
                dimensions: self.dims(labels),
            }],
            enqueued_time: Some(now()),
        }
    }
}

fn now() -> prost_types::Timestamp {
    prost_types::Timestamp::from(SystemTime::now())
}

/// What one caller saw in the measured window.
#[derive(Default)]
struct Tally {
    notify_calls: u64,
    notify_items: u64,
    assign_calls: u64,
    assignments: u64,
    notify_us: Vec<u32>,
    assign_us: Vec<u32>,
    errors: BTreeMap<String, u64>,
    first_error: Option<String>,
}

impl Tally {
    fn error(&mut self, what: &str, status: &tonic::Status) {
        *self
            .errors
            .entry(crate::cli::code_name(status.code()).to_string())
            .or_default() += 1;
        if self.first_error.is_none() {
            self.first_error = Some(format!(
                "{what}: {}: {}",
                crate::cli::code_name(status.code()),
                status.message()
            ));
        }
    }

    fn merge(&mut self, other: Tally) {
        self.notify_calls += other.notify_calls;
        self.notify_items += other.notify_items;
        self.assign_calls += other.assign_calls;
        self.assignments += other.assignments;
        self.notify_us.extend(other.notify_us);
        self.assign_us.extend(other.assign_us);
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// The measured window, shared by every caller.
#[derive(Clone, Copy)]
struct Window {
    from: Instant,
    to: Instant,
}

impl Window {
    fn counts(&self, done: Instant) -> bool {
        done >= self.from && done < self.to
    }
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

async fn notifier(
    conn: Conn,
    pool: String,
    caller: String,
    work: Arc<Workload>,
    window: Window,
    stop: Arc<AtomicBool>,
) -> Tally {
    let mut tally = Tally::default();
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let id = work.task_id(&caller, seq);
        let req = pb::NotifyTasksRequest {
            scheduler_id: pool.clone(),
            notifications: vec![pb::NotifyTasksItem {
                time: Some(now()),
                task: Some(work.task(&id, pb::task_spec::State::Pending, "")),
            }],
            is_callback: false,
        };
        let started = Instant::now();
        let result = conn.notify(req).await;
        let done = Instant::now();
        if !window.counts(done) {
            if let Err(status) = result {
                backoff(&status).await;
            }
            continue;
        }
        match result {
            Ok(()) => {
                tally.notify_calls += 1;
                tally.notify_items += 1;
                tally.notify_us.push(micros(done - started));
            }
            Err(status) => {
                tally.error("NotifyTasks", &status);
                backoff(&status).await;
            }
        }
    }
    tally
}

async fn bot(
    conn: Conn,
    pool: String,
    bot_id: String,
    label_set: u32,
    work: Arc<Workload>,
    window: Window,
    stop: Arc<AtomicBool>,
) -> Tally {
    let mut tally = Tally::default();
    let dims = work.dims(label_set);
    while !stop.load(Ordering::Relaxed) {
        let req = pb::AssignTasksRequest {
            scheduler_id: pool.clone(),
            time: Some(now()),
            idle_bots: vec![pb::IdleBot {
                bot_id: bot_id.clone(),
                dimensions: dims.clone(),
            }],
        };
        let started = Instant::now();
        let result = conn.assign(req).await;
        let done = Instant::now();
        let counted = window.counts(done);
        let assignment = match result {
            Ok(resp) => {
                if counted {
                    tally.assign_calls += 1;
                    tally.assign_us.push(micros(done - started));
                }
                resp.assignments.into_iter().find(|a| a.bot_id == bot_id)
            }
            Err(status) => {
                if counted {
                    tally.error("AssignTasks", &status);
                }
                backoff(&status).await;
                None
            }
        };
        let Some(a) = assignment else { continue };
        if counted {
            tally.assignments += 1;
        }
        // The bot picked the task up: Swarming reports it RUNNING.
        let req = pb::NotifyTasksRequest {
            scheduler_id: pool.clone(),
            notifications: vec![pb::NotifyTasksItem {
                time: Some(now()),
                task: Some(work.task(&a.task_id, pb::task_spec::State::Running, &bot_id)),
            }],
            is_callback: false,
        };
        let started = Instant::now();
        let result = conn.notify(req).await;
        let done = Instant::now();
        if !window.counts(done) {
            continue;
        }
        match result {
            Ok(()) => {
                tally.notify_calls += 1;
                tally.notify_items += 1;
                tally.notify_us.push(micros(done - started));
            }
            Err(status) => {
                tally.error("NotifyTasks", &status);
                backoff(&status).await;
            }
        }
    }
    tally
}

/// A caller whose call failed waits a little before the next one, so an
/// overloaded or missing server is not hammered in a tight loop.
async fn backoff(status: &tonic::Status) {
    let wait = match status.code() {
        Code::ResourceExhausted | Code::Unavailable => 20,
        _ => 5,
    };
    tokio::time::sleep(Duration::from_millis(wait)).await;
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    f64::from(sorted[rank.clamp(1, sorted.len()) - 1]) / 1000.0
}

async fn connect(args: &LoadgenArgs, timeout: Duration) -> anyhow::Result<Vec<Conn>> {
    // A few independent connections (pools of them for pRPC, HTTP/2
    // channels for gRPC) so one connection is never the bottleneck.
    let n = 4;
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(Conn::open(&args.server, args.transport, timeout, &args.credentials).await?);
    }
    Ok(conns)
}

/// Creates the pool and its accounts unless the pool exists.
async fn prepare_pool(admin: &Client, pool: &str, args: &LoadgenArgs) -> anyhow::Result<()> {
    let created = admin
        .create_scheduler_pool(
            &format!("creating pool {pool}"),
            adm::CreateSchedulerPoolRequest {
                pool_id: pool.to_string(),
                config: None,
            },
        )
        .await;
    match created {
        Ok(_) => {}
        Err(e) if e.code() == Code::AlreadyExists => {}
        Err(e) => return Err(e.into()),
    }
    for a in 0..args.accounts {
        admin
            .create_account(
                &format!("creating account acct-{a} in {pool}"),
                adm::CreateAccountRequest {
                    pool_id: pool.to_string(),
                    account_id: format!("acct-{a}"),
                    config: Some(AccountConfig {
                        charge_rate: vec![1.0; 5],
                        max_charge_seconds: 3600.0,
                        ..Default::default()
                    }),
                },
            )
            .await?;
    }
    Ok(())
}

async fn prefill(conn: &Conn, pool: &str, work: &Workload, n: u32) -> anyhow::Result<()> {
    let mut seq = 0u64;
    while seq < u64::from(n) {
        let batch = (u64::from(n) - seq).min(500);
        let notifications = (0..batch)
            .map(|i| pb::NotifyTasksItem {
                time: Some(now()),
                task: Some(work.task(
                    &work.task_id("prefill", seq + i + 1),
                    pb::task_spec::State::Pending,
                    "",
                )),
            })
            .collect();
        conn.notify(pb::NotifyTasksRequest {
            scheduler_id: pool.to_string(),
            notifications,
            is_callback: false,
        })
        .await
        .map_err(|s| {
            anyhow::anyhow!(
                "prefilling {pool}: {}: {}",
                crate::cli::code_name(s.code()),
                s.message()
            )
        })?;
        seq += batch;
    }
    Ok(())
}

/// Runs `qscheduler loadgen`.
pub fn run(args: LoadgenArgs) -> anyhow::Result<()> {
    if args.hostile.hostile {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        return rt.block_on(crate::hostile::run(&args.server, &args.hostile, args.json));
    }
    if args.notifiers == 0 && args.bots == 0 {
        bail!("--notifiers and --bots are both 0: nothing to do");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run_async(args))
}

async fn run_async(args: LoadgenArgs) -> anyhow::Result<()> {
    let timeout = Duration::from_secs_f64(args.timeout);
    let admin = Client::new(&args.server, args.transport, timeout, &args.credentials)?;
    let conns = connect(&args, timeout).await?;
    let run = format!(
        "lg{}",
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    );
    let work = Arc::new(Workload {
        run,
        accounts: args.accounts,
        label_sets: args.label_sets,
    });
    let pools: Vec<String> = (0..args.pools)
        .map(|p| format!("{}-{p}", args.pool_prefix))
        .collect();
    for pool in &pools {
        prepare_pool(&admin, pool, &args).await?;
        if args.prefill > 0 {
            eprintln!("prefilling {pool} with {} tasks", args.prefill);
            prefill(&conns[0], pool, &work, args.prefill).await?;
        }
    }

    let start = Instant::now();
    let window = Window {
        from: start + Duration::from_secs_f64(args.warmup),
        to: start + Duration::from_secs_f64(args.warmup + args.duration),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let mut callers = Vec::new();
    let mut k = 0usize;
    for (p, pool) in pools.iter().enumerate() {
        for n in 0..args.notifiers {
            k += 1;
            callers.push(tokio::spawn(notifier(
                conns[k % conns.len()].clone(),
                pool.clone(),
                format!("p{p}n{n}"),
                work.clone(),
                window,
                stop.clone(),
            )));
        }
        for b in 0..args.bots {
            k += 1;
            callers.push(tokio::spawn(bot(
                conns[k % conns.len()].clone(),
                pool.clone(),
                format!("{}-p{p}-bot{b}", work.run),
                b % args.label_sets,
                work.clone(),
                window,
                stop.clone(),
            )));
        }
    }
    eprintln!(
        "{} callers on {} pool(s): {:.0} s warm-up, {:.0} s measured",
        callers.len(),
        pools.len(),
        args.warmup,
        args.duration
    );
    tokio::time::sleep_until(window.to.into()).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = Tally::default();
    for c in callers {
        total.merge(c.await.context("a caller panicked")?);
    }
    let mut queued = 0i64;
    let mut running = 0i64;
    for pool in &pools {
        let r = admin
            .inspect_pool(
                &format!("inspecting {pool}"),
                // The counts are in every page: the smallest will do.
                adm::InspectPoolRequest {
                    pool_id: pool.clone(),
                    page_size: 1,
                    ..Default::default()
                },
            )
            .await?;
        queued += i64::from(r.num_waiting_tasks);
        running += i64::from(r.num_running_tasks);
    }
    report(&args, total, queued, running)
}

fn report(args: &LoadgenArgs, mut t: Tally, queued: i64, running: i64) -> anyhow::Result<()> {
    t.notify_us.sort_unstable();
    t.assign_us.sort_unstable();
    let secs = args.duration;
    let pools = f64::from(args.pools);
    let errors: u64 = t.errors.values().sum();
    let result = serde_json::json!({
        "server": args.server,
        "transport": format!("{:?}", args.transport).to_lowercase(),
        "pools": args.pools,
        "notifiers_per_pool": args.notifiers,
        "bots_per_pool": args.bots,
        "accounts_per_pool": args.accounts,
        "label_sets": args.label_sets,
        "prefill_per_pool": args.prefill,
        "measured_seconds": secs,
        "notify_calls": t.notify_calls,
        "notify_items_per_sec": t.notify_items as f64 / secs,
        "notify_items_per_sec_per_pool": t.notify_items as f64 / secs / pools,
        "notify_p50_ms": percentile(&t.notify_us, 50.0),
        "notify_p99_ms": percentile(&t.notify_us, 99.0),
        "notify_max_ms": percentile(&t.notify_us, 100.0),
        "assign_calls": t.assign_calls,
        "assign_calls_per_sec": t.assign_calls as f64 / secs,
        "assign_calls_per_sec_per_pool": t.assign_calls as f64 / secs / pools,
        "assignments": t.assignments,
        "assign_p50_ms": percentile(&t.assign_us, 50.0),
        "assign_p99_ms": percentile(&t.assign_us, 99.0),
        "assign_max_ms": percentile(&t.assign_us, 100.0),
        "errors": t.errors,
        "first_error": t.first_error,
        "final_queued": queued,
        "final_running": running,
    });
    if args.json {
        println!("{result}");
    } else {
        println!(
            "{} pool(s) over {}, {} notifiers and {} bots per pool, {:.0} s measured",
            args.pools, result["transport"], args.notifiers, args.bots, secs
        );
        println!(
            "NotifyTasks  {:>9.0} items/s ({:.0} per pool)   p50 {:>7.2} ms   p99 {:>7.2} ms   max {:>8.2} ms",
            t.notify_items as f64 / secs,
            t.notify_items as f64 / secs / pools,
            percentile(&t.notify_us, 50.0),
            percentile(&t.notify_us, 99.0),
            percentile(&t.notify_us, 100.0),
        );
        println!(
            "AssignTasks  {:>9.0} calls/s ({:.0} per pool)   p50 {:>7.2} ms   p99 {:>7.2} ms   max {:>8.2} ms",
            t.assign_calls as f64 / secs,
            t.assign_calls as f64 / secs / pools,
            percentile(&t.assign_us, 50.0),
            percentile(&t.assign_us, 99.0),
            percentile(&t.assign_us, 100.0),
        );
        println!(
            "assignments  {} ({:.0}/s); at the end {queued} queued, {running} running",
            t.assignments,
            t.assignments as f64 / secs
        );
        if errors > 0 {
            println!("errors       {errors}: {:?}", t.errors);
        }
    }
    if let Some(e) = &t.first_error {
        eprintln!("first error: {e}");
    }
    if t.notify_calls + t.assign_calls == 0 {
        bail!("no call succeeded in the measured window");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u32> = (1..=100).map(|x| x * 1000).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[], 99.0), 0.0);
    }

    #[test]
    fn a_task_is_known_by_its_id_alone() {
        let w = Workload {
            run: "lg1".into(),
            accounts: 3,
            label_sets: 2,
        };
        let id = w.task_id("p0n1", 7);
        let pending = w.task(&id, pb::task_spec::State::Pending, "");
        let running = w.task(&id, pb::task_spec::State::Running, "bot");
        assert_eq!(pending.tags, running.tags);
        assert_eq!(pending.slices, running.slices);
        assert_eq!(pending.tags, vec!["qs_account:acct-1".to_string()]);
        assert_eq!(pending.slices[0].dimensions[1], "os:linux-0");
        assert_eq!(running.bot_id, "bot");
    }

    #[test]
    fn seconds_are_checked() {
        assert!(seconds("1.5").is_ok());
        assert!(seconds("0").is_err());
        assert!(seconds("nan").is_err());
        assert!(seconds("ten").is_err());
    }
}
