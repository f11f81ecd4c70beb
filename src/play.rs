//! `qscheduler workload play`: a workload played against a live server, in
//! real time, by a fleet of simulated bots and a stream of tasks.
//!
//! This is how a recording for the simulation's fidelity check is made: the
//! bots and tasks behave as the simulation models them, but the scheduler
//! is a real server with its batching, its durable log and its event log,
//! and the bots are concurrent callers on real sockets:
//!
//! * tasks are sent as PENDING (one `NotifyTasks` each) at their arrival
//!   times, and reported ABSENT at their cancellation times;
//! * each bot calls `AssignTasks` for itself when it joins, after each
//!   task, and every poll interval while idle (its first re-poll spread as
//!   in the simulation); a task it gets is reported RUNNING and runs for
//!   its remaining duration;
//! * a checker calls `GetCancellations` every `--cancel-check`: a bot whose
//!   task was preempted stops it, Swarming's ABSENT and a new PENDING for
//!   the rest of the task are sent, and the bot polls at once;
//! * a bot leaving the fleet finishes its task, reports it ABSENT, and stops
//!   polling.
//!
//! Times sent are the workload's own, mapped onto a clock that runs
//! `--speed` times faster than the wall clock; the scheduler has no clock of
//! its own, so a faster replay only compresses the bots' reaction times.
//! The pool and its accounts must exist (`qscheduler apply -f pools.toml`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use qscheduler_core::Time;
use qscheduler_sim::Workload;
use qscheduler_wire::qscheduler as adm;
use qscheduler_wire::swarming::v1 as pb;
use tokio::sync::mpsc;

use crate::cli::{Client, Credentials, Transport, code_name};
use crate::loadgen::Conn;

/// Where the workload's time 0 is put.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StartAt {
    /// The moment the play starts (a fresh pool's clock is never ahead).
    Now,
    /// The workload's own start time.
    Workload,
}

/// Arguments of `workload play`.
#[derive(Args, Debug)]
pub struct PlayArgs {
    /// The workload to play.
    #[arg(long, value_name = "FILE")]
    workload: PathBuf,
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
    #[command(flatten)]
    credentials: Credentials,
    /// The pool (default: the workload's).
    #[arg(long, value_name = "POOL")]
    pool: Option<String>,
    /// Play this many times faster than real time.
    #[arg(long, default_value_t = 1.0, value_parser = speed)]
    speed: f64,
    /// How often an idle bot asks for work (workload time).
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = duration)]
    poll_interval: i64,
    /// How often preemptions are looked up with GetCancellations
    /// (workload time).
    #[arg(long, default_value = "1s", value_name = "DURATION", value_parser = duration)]
    cancel_check: i64,
    /// Which instant the workload's time 0 stands for.
    #[arg(long, value_enum, default_value = "now")]
    start: StartAt,
    /// Give up on a call after this many seconds.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    timeout: u64,
}

fn speed(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if !(v.is_finite() && (0.01..=1000.0).contains(&v)) {
        return Err(format!("{s:?} must be from 0.01 to 1000"));
    }
    Ok(v)
}

fn duration(s: &str) -> Result<i64, String> {
    let v = qscheduler_sim::clock::parse_duration(s)?;
    if v < 1 {
        return Err("must be more than 0".into());
    }
    Ok(v)
}

/// The workload's clock: milliseconds since its start, running `speed`
/// times faster than the wall clock.
struct Clock {
    t0: Instant,
    base: Time,
    speed: f64,
}

impl Clock {
    fn now_ms(&self) -> i64 {
        (self.t0.elapsed().as_secs_f64() * 1e3 * self.speed) as i64
    }

    fn stamp(&self, ms: i64) -> prost_types::Timestamp {
        let (seconds, nanos) = self.base.add_nanos(ms.saturating_mul(1_000_000)).to_unix();
        prost_types::Timestamp { seconds, nanos }
    }

    async fn sleep_until(&self, ms: i64) {
        let real = Duration::from_secs_f64((ms.max(0) as f64 / 1e3) / self.speed);
        tokio::time::sleep_until((self.t0 + real).into()).await;
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Future,
    Waiting,
    Running(u32),
    Done,
    Cancelled,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stop {
    Preempted,
    Cancelled,
}

#[derive(Default)]
struct Tally {
    notify: AtomicU64,
    assign: AtomicU64,
    started: AtomicU64,
    finished: AtomicU64,
    requeued: AtomicU64,
    cancelled: AtomicU64,
    errors: AtomicU64,
}

struct Shared {
    w: Workload,
    pool: String,
    conn: Conn,
    clock: Clock,
    poll_ms: i64,
    /// (state, remaining run time in ms or -1 for "until cancelled").
    tasks: Mutex<Vec<(State, i64)>>,
    task_ids: HashMap<String, u32>,
    bot_ids: HashMap<String, u32>,
    stops: Vec<mpsc::UnboundedSender<(u32, Stop)>>,
    tally: Tally,
    first_error: Mutex<Option<String>>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(State, i64)>> {
        self.tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn error(&self, what: &str, s: &tonic::Status) {
        self.tally.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self
            .first_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if first.is_none() {
            *first = Some(format!("{what}: {}: {}", code_name(s.code()), s.message()));
        }
    }

    fn spec(&self, task: u32, state: pb::task_spec::State, bot: &str) -> pb::TaskSpec {
        let t = &self.w.tasks[task as usize];
        let mut slices = vec![pb::SliceSpec {
            dimensions: self
                .w
                .set(t.labels)
                .iter()
                .chain(self.w.set(t.provisionable))
                .cloned()
                .collect(),
        }];
        if !self.w.set(t.provisionable).is_empty() {
            // Two slices: the second without the provisionable labels.
            slices.push(pb::SliceSpec {
                dimensions: self.w.set(t.labels).to_vec(),
            });
        }
        let account = &self.w.accounts[t.account as usize];
        let mut tags: Vec<String> = self.w.set(t.tags).to_vec();
        if !account.is_empty() {
            tags.push(format!("qs_account:{account}"));
        }
        pb::TaskSpec {
            id: t.id.to_string(),
            tags,
            slices,
            state: state as i32,
            bot_id: bot.to_owned(),
            enqueued_time: Some(self.clock.stamp(t.at)),
        }
    }

    async fn notify(&self, items: Vec<(i64, pb::TaskSpec)>) {
        let req = pb::NotifyTasksRequest {
            scheduler_id: self.pool.clone(),
            notifications: items
                .into_iter()
                .map(|(ms, task)| pb::NotifyTasksItem {
                    time: Some(self.clock.stamp(ms)),
                    task: Some(task),
                })
                .collect(),
            is_callback: false,
        };
        self.tally.notify.fetch_add(1, Ordering::Relaxed);
        if let Err(s) = self.conn.notify(req).await {
            self.error("NotifyTasks", &s);
        }
    }
}

/// Runs `workload play`.
pub fn run(args: PlayArgs) -> anyhow::Result<()> {
    let w = crate::simulate::read_workload(&args.workload)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(play(args, w))
}

async fn play(args: PlayArgs, w: Workload) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(args.timeout);
    let pool = args.pool.clone().unwrap_or_else(|| w.pool.clone());
    if pool.is_empty() {
        bail!("the workload names no pool; give one with --pool");
    }
    // The pool must exist, with its accounts: say so clearly if not.
    let admin = Client::new(&args.server, args.transport, timeout, &args.credentials)?;
    let accounts = admin
        .list_accounts(
            &format!("reading the accounts of pool {pool:?}"),
            adm::ListAccountsRequest {
                pool_id: pool.clone(),
            },
        )
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "{e}\nhint: create the pool and its accounts first: qscheduler apply -f pools.toml"
            )
        })?;
    let configured: Vec<&String> = accounts.accounts.keys().collect();
    let missing: Vec<&String> = w
        .accounts
        .iter()
        .filter(|a| !a.is_empty() && !accounts.accounts.contains_key(*a))
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "play: note: accounts {missing:?} are not configured in pool {pool:?} (it has {configured:?}); their tasks run at the free level"
        );
    }
    let conn = Conn::open(&args.server, args.transport, timeout, &args.credentials).await?;
    let base = match args.start {
        StartAt::Workload => w.start,
        StartAt::Now => {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .context("the system clock is before 1970")?;
            Time::from_nanos(now.as_nanos() as i64)
        }
    };
    let mut receivers = Vec::with_capacity(w.bots.len());
    let mut stops = Vec::with_capacity(w.bots.len());
    for _ in 0..w.bots.len() {
        let (tx, rx) = mpsc::unbounded_channel();
        stops.push(tx);
        receivers.push(rx);
    }
    let tasks = w
        .tasks
        .iter()
        .map(|t| (State::Future, t.duration.unwrap_or(-1)))
        .collect();
    let sh = Arc::new(Shared {
        task_ids: w
            .tasks
            .iter()
            .enumerate()
            .map(|(i, t)| (t.id.to_string(), i as u32))
            .collect(),
        bot_ids: w
            .bots
            .iter()
            .enumerate()
            .map(|(i, b)| (b.id.to_string(), i as u32))
            .collect(),
        tasks: Mutex::new(tasks),
        w,
        pool,
        conn,
        clock: Clock {
            t0: Instant::now(),
            base,
            speed: args.speed,
        },
        poll_ms: args.poll_interval,
        stops,
        tally: Tally::default(),
        first_error: Mutex::new(None),
    });
    eprintln!(
        "play: {} tasks and {} bots over {} of workload time, {}× real time ({:.0} s)",
        sh.w.tasks.len(),
        sh.w.bots.len(),
        qscheduler_sim::clock::human(sh.w.duration),
        args.speed,
        sh.w.duration as f64 / 1e3 / args.speed
    );
    let mut handles = Vec::new();
    for (b, rx) in receivers.into_iter().enumerate() {
        handles.push(tokio::spawn(bot(sh.clone(), b as u32, rx)));
    }
    handles.push(tokio::spawn(arrivals(sh.clone())));
    handles.push(tokio::spawn(cancels(sh.clone())));
    let checker = tokio::spawn(preemptions(sh.clone(), args.cancel_check));
    for h in handles {
        h.await.context("a player task panicked")?;
    }
    checker.abort();
    let t = &sh.tally;
    println!(
        "played {} of pool {:?}: {} NotifyTasks and {} AssignTasks calls; {} task starts, {} finished, {} requeued after preemption, {} cancelled; {} errors",
        qscheduler_sim::clock::human(sh.w.duration),
        sh.pool,
        t.notify.load(Ordering::Relaxed),
        t.assign.load(Ordering::Relaxed),
        t.started.load(Ordering::Relaxed),
        t.finished.load(Ordering::Relaxed),
        t.requeued.load(Ordering::Relaxed),
        t.cancelled.load(Ordering::Relaxed),
        t.errors.load(Ordering::Relaxed),
    );
    if let Some(e) = sh
        .first_error
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .as_ref()
    {
        eprintln!("play: first error: {e}");
    }
    Ok(())
}

async fn arrivals(sh: Arc<Shared>) {
    let mut order: Vec<u32> = (0..sh.w.tasks.len() as u32).collect();
    order.sort_by_key(|&i| (sh.w.tasks[i as usize].at, i));
    for i in order {
        let at = sh.w.tasks[i as usize].at;
        sh.clock.sleep_until(at).await;
        sh.lock()[i as usize].0 = State::Waiting;
        let spec = sh.spec(i, pb::task_spec::State::Pending, "");
        sh.notify(vec![(at, spec)]).await;
    }
}

async fn cancels(sh: Arc<Shared>) {
    let mut order: Vec<(i64, u32)> =
        sh.w.tasks
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.cancel.map(|c| (c, i as u32)))
            .filter(|(c, _)| *c <= sh.w.duration)
            .collect();
    order.sort_unstable();
    for (at, i) in order {
        sh.clock.sleep_until(at).await;
        let before = {
            let mut tasks = sh.lock();
            let before = tasks[i as usize].0;
            if matches!(before, State::Waiting | State::Running(_)) {
                tasks[i as usize].0 = State::Cancelled;
            }
            before
        };
        match before {
            State::Waiting | State::Running(_) => {
                sh.tally.cancelled.fetch_add(1, Ordering::Relaxed);
                let spec = sh.spec(i, pb::task_spec::State::Canceled, "");
                sh.notify(vec![(at, spec)]).await;
                if let State::Running(b) = before {
                    let _ = sh.stops[b as usize].send((i, Stop::Cancelled));
                }
            }
            _ => {}
        }
    }
}

async fn preemptions(sh: Arc<Shared>, every_ms: i64) {
    let mut next = every_ms;
    let mut told: std::collections::HashSet<(u32, u32)> = Default::default();
    loop {
        sh.clock.sleep_until(next).await;
        next += every_ms;
        let req = pb::GetCancellationsRequest {
            scheduler_id: sh.pool.clone(),
        };
        let list = match sh.conn.cancellations(req).await {
            Ok(r) => r.cancellations,
            Err(s) => {
                sh.error("GetCancellations", &s);
                continue;
            }
        };
        for c in list {
            if c.reason != pb::get_cancellations_response::cancellation::Reason::Preempted as i32 {
                continue;
            }
            let (Some(&b), Some(&t)) = (sh.bot_ids.get(&c.bot_id), sh.task_ids.get(&c.task_id))
            else {
                continue;
            };
            let running_there = sh.lock()[t as usize].0 == State::Running(b);
            if running_there && told.insert((b, t)) {
                let _ = sh.stops[b as usize].send((t, Stop::Preempted));
            }
        }
    }
}

async fn bot(sh: Arc<Shared>, b: u32, mut stop: mpsc::UnboundedReceiver<(u32, Stop)>) {
    let spec = &sh.w.bots[b as usize];
    let id = spec.id.to_string();
    let dims = sh.w.set(spec.labels).to_vec();
    let end = spec.to.unwrap_or(sh.w.duration).min(sh.w.duration);
    sh.clock.sleep_until(spec.from).await;
    let mut first = true;
    loop {
        let now = sh.clock.now_ms();
        if now >= end {
            return;
        }
        let req = pb::AssignTasksRequest {
            scheduler_id: sh.pool.clone(),
            time: Some(sh.clock.stamp(now)),
            idle_bots: vec![pb::IdleBot {
                bot_id: id.clone(),
                dimensions: dims.clone(),
            }],
        };
        sh.tally.assign.fetch_add(1, Ordering::Relaxed);
        let got = match sh.conn.assign(req).await {
            Ok(r) => r.assignments.into_iter().find(|a| a.bot_id == id),
            Err(s) => {
                sh.error("AssignTasks", &s);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let task = got.and_then(|a| sh.task_ids.get(&a.task_id).copied());
        let Some(task) = task else {
            let delay = if first {
                qscheduler_sim::engine::first_repoll_delay(b, sh.poll_ms)
            } else {
                sh.poll_ms
            };
            first = false;
            sh.clock.sleep_until((now + delay).min(end)).await;
            continue;
        };
        first = false;
        let remaining = {
            let mut tasks = sh.lock();
            let slot = &mut tasks[task as usize];
            if slot.0 != State::Waiting {
                // Cancelled while it was being handed out.
                continue;
            }
            slot.0 = State::Running(b);
            slot.1
        };
        sh.tally.started.fetch_add(1, Ordering::Relaxed);
        let started = sh.clock.now_ms();
        sh.notify(vec![(
            started,
            sh.spec(task, pb::task_spec::State::Running, &id),
        )])
        .await;
        let finish_at = if remaining >= 0 {
            started + remaining
        } else {
            i64::MAX / 4
        };
        let stopped = loop {
            tokio::select! {
                _ = sh.clock.sleep_until(finish_at.min(sh.w.duration)) => break None,
                msg = stop.recv() => match msg {
                    Some((t, why)) if t == task => break Some(why),
                    Some(_) => continue,
                    None => break None,
                },
            }
        };
        let now = sh.clock.now_ms();
        match stopped {
            None if now < finish_at => {
                // The workload ended while it ran.
                return;
            }
            None => {
                sh.lock()[task as usize].0 = State::Done;
                sh.tally.finished.fetch_add(1, Ordering::Relaxed);
                if now >= end {
                    // Leaving: report the task and go.
                    sh.notify(vec![(
                        now,
                        sh.spec(task, pb::task_spec::State::Completed, &id),
                    )])
                    .await;
                    return;
                }
            }
            Some(Stop::Preempted) => {
                {
                    let mut tasks = sh.lock();
                    let slot = &mut tasks[task as usize];
                    slot.0 = State::Waiting;
                    if slot.1 >= 0 {
                        slot.1 = (slot.1 - (now - started)).max(0);
                    }
                }
                sh.tally.requeued.fetch_add(1, Ordering::Relaxed);
                sh.notify(vec![
                    (now, sh.spec(task, pb::task_spec::State::Killed, &id)),
                    (now, sh.spec(task, pb::task_spec::State::Pending, "")),
                ])
                .await;
            }
            Some(Stop::Cancelled) => {}
        }
    }
}
