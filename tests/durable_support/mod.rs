//! Helpers of the durability tests: the real server binary as a child
//! process, throwaway PostgreSQL databases, a seeded random generator, gRPC
//! clients, and a workload whose every acknowledged effect is tracked so
//! that it can be checked after a crash or a takeover.
#![allow(dead_code)]

pub mod facts;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use qscheduler_wire::protos;
use qscheduler_wire::qscheduler as adm;
use qscheduler_wire::qscheduler::q_scheduler_admin_client::QSchedulerAdminClient;
use qscheduler_wire::qscheduler::q_scheduler_view_client::QSchedulerViewClient;
use qscheduler_wire::swarming::v1 as pb;
use qscheduler_wire::swarming::v1::external_scheduler_client::ExternalSchedulerClient;
use tonic::transport::Channel;

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// `DATABASE_URL` if set, else the local test database.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_string())
}

// ---------------------------------------------------------------------------
// Random numbers

/// A small seeded generator (splitmix64), so a failing run can be repeated
/// with its printed seed.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo).max(1)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.range(0, 100) < percent
    }
}

/// The seed of this run: `QSCHEDULER_TEST_SEED` or the clock. Printed.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("QSCHEDULER_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    println!("{test}: seed {seed} (set QSCHEDULER_TEST_SEED={seed} to repeat)");
    seed
}

// ---------------------------------------------------------------------------
// The server process

/// A `qscheduler serve` child process. Killed (SIGKILL) when dropped.
pub struct ServerProc {
    child: Child,
    pub addr: SocketAddr,
    logs: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl ServerProc {
    /// Starts `qscheduler serve` with `args` (plus `--listen 127.0.0.1:0
    /// --log-format json`) and waits until it serves.
    pub fn start(args: &[&str]) -> ServerProc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_qscheduler"))
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
            .args(args)
            .env("RUST_LOG", "info,h2=warn,hyper=warn,tower=warn,sqlx=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the server binary");
        let stdout = child.stdout.take().expect("stdout");
        let logs: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                        continue;
                    };
                    if v["fields"]["message"] == "ready"
                        && let Some(addr) = v["fields"]["addr"].as_str()
                        && let Ok(addr) = addr.parse::<SocketAddr>()
                    {
                        let _ = ready_tx.send(addr);
                    }
                    logs.lock().expect("logs").push(v);
                }
            });
        }
        let addr = match ready_rx.recv_timeout(Duration::from_secs(120)) {
            Ok(a) => a,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("server did not become ready: {e}");
            }
        };
        ServerProc { child, addr, logs }
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn terminate(&mut self) {
        self.signal_term();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and returns at once (see [`ServerProc::exited`]).
    pub fn signal_term(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
    }

    /// The exit status, if the process has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The log lines so far (JSON objects).
    pub fn logs(&self) -> Vec<serde_json::Value> {
        self.logs.lock().expect("logs").clone()
    }

    /// Log lines whose message is `message`.
    pub fn logs_with(&self, message: &str) -> Vec<serde_json::Value> {
        self.logs()
            .into_iter()
            .filter(|v| v["fields"]["message"] == message)
            .collect()
    }

    /// Waits up to `timeout` for a log line with `message` and `pred`.
    pub fn wait_log(
        &self,
        message: &str,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        let until = Instant::now() + timeout;
        loop {
            if let Some(v) = self.logs_with(message).into_iter().find(|v| pred(v)) {
                return Some(v);
            }
            if Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub async fn clients(&self) -> Clients {
        Clients::connect(&self.url()).await
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

// ---------------------------------------------------------------------------
// Clients

/// gRPC clients of one server.
#[derive(Clone)]
pub struct Clients {
    pub sched: ExternalSchedulerClient<Channel>,
    pub admin: QSchedulerAdminClient<Channel>,
    pub view: QSchedulerViewClient<Channel>,
}

impl Clients {
    pub async fn connect(url: &str) -> Clients {
        let channel = tonic::transport::Endpoint::from_shared(url.to_string())
            .expect("url")
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(20))
            .connect_lazy();
        let big = 1 << 30;
        Clients {
            sched: ExternalSchedulerClient::new(channel.clone()).max_decoding_message_size(big),
            admin: QSchedulerAdminClient::new(channel.clone()).max_decoding_message_size(big),
            view: QSchedulerViewClient::new(channel).max_decoding_message_size(big),
        }
    }

    /// Creates a pool with preemption off: a preempted task leaves the
    /// scheduler (Swarming is told to cancel it), which the workload model
    /// would have to follow; without preemption an assignment only ends
    /// when its bot finishes the task, which makes "no task handed to a
    /// second bot" a simple, strict check.
    pub async fn create_pool(&mut self, pool: &str) -> Result<(), tonic::Status> {
        self.admin
            .create_scheduler_pool(adm::CreateSchedulerPoolRequest {
                pool_id: pool.into(),
                ..Default::default()
            })
            .await?;
        self.admin
            .mod_scheduler_pool(adm::ModSchedulerPoolRequest {
                pool_id: pool.into(),
                disable_preemption: Some(true),
                bot_expiration_seconds: None,
            })
            .await
            .map(|_| ())
    }

    pub async fn create_account(&mut self, pool: &str, account: &str) -> Result<(), tonic::Status> {
        self.admin
            .create_account(adm::CreateAccountRequest {
                pool_id: pool.into(),
                account_id: account.into(),
                config: Some(protos::AccountConfig {
                    charge_rate: vec![1.0, 1.0],
                    max_charge_seconds: 600.0,
                    ..Default::default()
                }),
            })
            .await
            .map(|_| ())
    }

    pub async fn inspect(&mut self, pool: &str) -> Result<adm::InspectPoolResponse, tonic::Status> {
        self.view
            .inspect_pool(adm::InspectPoolRequest {
                pool_id: pool.into(),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner())
    }

    pub async fn accounts(&mut self, pool: &str) -> Result<BTreeSet<String>, tonic::Status> {
        self.view
            .list_accounts(adm::ListAccountsRequest {
                pool_id: pool.into(),
            })
            .await
            .map(|r| r.into_inner().accounts.into_keys().collect())
    }

    pub async fn notify_pending(
        &mut self,
        pool: &str,
        tasks: &[(String, String)],
    ) -> Result<(), tonic::Status> {
        let now = now_ts();
        let notifications = tasks
            .iter()
            .map(|(id, account)| pb::NotifyTasksItem {
                time: Some(now),
                task: Some(pb::TaskSpec {
                    id: id.clone(),
                    state: pb::task_spec::State::Pending as i32,
                    tags: vec![format!("qs_account:{account}")],
                    slices: vec![pb::SliceSpec {
                        dimensions: vec!["pool:durable".into()],
                    }],
                    enqueued_time: Some(now),
                    ..Default::default()
                }),
            })
            .collect();
        self.sched
            .notify_tasks(pb::NotifyTasksRequest {
                scheduler_id: pool.into(),
                notifications,
                is_callback: false,
            })
            .await
            .map(|_| ())
    }

    pub async fn notify_running(
        &mut self,
        pool: &str,
        task: &str,
        bot: &str,
    ) -> Result<(), tonic::Status> {
        let now = now_ts();
        self.sched
            .notify_tasks(pb::NotifyTasksRequest {
                scheduler_id: pool.into(),
                notifications: vec![pb::NotifyTasksItem {
                    time: Some(now),
                    task: Some(pb::TaskSpec {
                        id: task.into(),
                        state: pb::task_spec::State::Running as i32,
                        bot_id: bot.into(),
                        slices: vec![pb::SliceSpec {
                            dimensions: vec!["pool:durable".into()],
                        }],
                        enqueued_time: Some(now),
                        ..Default::default()
                    }),
                }],
                is_callback: false,
            })
            .await
            .map(|_| ())
    }

    /// AssignTasks for one bot; the task it should run, if any.
    pub async fn assign(&mut self, pool: &str, bot: &str) -> Result<Option<String>, tonic::Status> {
        let resp = self
            .sched
            .assign_tasks(pb::AssignTasksRequest {
                scheduler_id: pool.into(),
                idle_bots: vec![pb::IdleBot {
                    bot_id: bot.into(),
                    dimensions: vec!["pool:durable".into()],
                }],
                time: Some(now_ts()),
            })
            .await?
            .into_inner();
        Ok(resp
            .assignments
            .into_iter()
            .find(|a| a.bot_id == bot)
            .map(|a| a.task_id))
    }
}

pub fn now_ts() -> prost_types::Timestamp {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    prost_types::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

// ---------------------------------------------------------------------------
// PostgreSQL

/// A database of its own for one test, dropped (connections and all) when
/// this guard goes, even if the test panicked.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

fn admin_url() -> String {
    database_url()
}

fn with_db_name(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let cut = base.rfind('/').expect("database URL has a path");
    let mut out = format!("{}/{name}", &base[..cut]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

impl TestDb {
    pub async fn create(tag: &str) -> TestDb {
        use sqlx::Connection;
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "qs_durable_{tag}_{}_{nanos}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let mut conn = sqlx::PgConnection::connect(&admin_url())
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "these tests need PostgreSQL at {} (set DATABASE_URL): {e}",
                    admin_url()
                )
            });
        sqlx::Executor::execute(
            &mut conn,
            sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")),
        )
        .await
        .expect("create test database");
        TestDb {
            url: with_db_name(&admin_url(), &name),
            name,
        }
    }

    pub async fn connect(&self) -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&self.url)
            .await
            .expect("connect to the test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime: use a thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                use sqlx::Connection;
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin_url()).await {
                    let _ = sqlx::Executor::execute(
                        &mut conn,
                        sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                        )),
                    )
                    .await;
                }
            });
        })
        .join();
    }
}

/// The replica holding `pool`'s live lease, read from the database.
pub async fn lease_holder(db: &sqlx::PgPool, pool: &str) -> Option<String> {
    sqlx::query_scalar(
        "SELECT lease_holder FROM qs_pool WHERE pool_id = $1 AND lease_expires_at > now()",
    )
    .bind(pool)
    .fetch_optional(db)
    .await
    .ok()
    .flatten()
    .flatten()
}

// ---------------------------------------------------------------------------
// The tracked workload

/// What the client knows about a task from acknowledged calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    /// Its PENDING notification was sent but not acknowledged.
    Sent,
    /// Its PENDING notification was acknowledged.
    Known,
    /// Its bot reported it running, then asked for work again, and that
    /// call was acknowledged: it is finished and gone.
    Completed,
    /// Same, but the final call was not acknowledged: running or gone.
    MaybeCompleted,
}

/// What the client knows about a bot.
#[derive(Clone, Debug, Default)]
pub struct Bot {
    /// The task acknowledged as assigned to it, and whether its RUNNING
    /// notification was acknowledged.
    pub current: Option<(String, bool)>,
    /// An AssignTasks call of this bot is unanswered (in flight or failed).
    pub assign_in_doubt: bool,
    /// A RUNNING notification of this bot is unanswered.
    pub running_in_doubt: bool,
    /// Its task, reported running, that an unanswered call may have
    /// finished.
    pub maybe_done: Option<String>,
}

/// Every acknowledged effect on one pool.
#[derive(Default)]
pub struct Model {
    pub tasks: BTreeMap<String, Task>,
    pub bots: BTreeMap<String, Bot>,
    /// Accounts whose creation was acknowledged.
    pub accounts: BTreeSet<String>,
    /// Accounts whose creation was sent.
    pub accounts_sent: BTreeSet<String>,
    pub acked_ops: u64,
    pub failed_ops: u64,
    /// Failed calls by gRPC code.
    pub failures_by_code: BTreeMap<String, u64>,
    /// The first message of each code.
    pub failure_examples: BTreeMap<String, String>,
    /// Time of the last acknowledged write.
    pub last_write_ack: Option<Instant>,
    next_task: u64,
    next_account: u64,
}

/// A workload on one pool, driven against a changing set of replicas.
pub struct Workload {
    pub pool: String,
    pub model: Mutex<Model>,
    /// The replicas to send calls to (one picked at random per call).
    pub targets: Mutex<Vec<Clients>>,
    stop: AtomicBool,
}

/// Where a check against the server's state failed.
pub type Violations = Vec<String>;

impl Workload {
    pub fn new(pool: &str, bots: usize, targets: Vec<Clients>) -> Arc<Workload> {
        let mut model = Model::default();
        for i in 0..bots {
            model.bots.insert(format!("{pool}-bot{i}"), Bot::default());
        }
        Arc::new(Workload {
            pool: pool.to_string(),
            model: Mutex::new(model),
            targets: Mutex::new(targets),
            stop: AtomicBool::new(false),
        })
    }

    fn model(&self) -> std::sync::MutexGuard<'_, Model> {
        self.model.lock().expect("model")
    }

    fn client(&self, rng: &mut Rng) -> Clients {
        let t = self.targets.lock().expect("targets");
        t[rng.range(0, t.len() as u64) as usize].clone()
    }

    pub fn set_targets(&self, targets: Vec<Clients>) {
        *self.targets.lock().expect("targets") = targets;
    }

    fn acked(&self) {
        let mut m = self.model();
        m.acked_ops += 1;
        m.last_write_ack = Some(Instant::now());
    }

    /// Runs the drivers (a notifier, an admin, one loop per bot) until
    /// [`Workload::stop`]; returns their join handles.
    pub fn start(self: &Arc<Self>, seed: u64) -> Vec<tokio::task::JoinHandle<()>> {
        self.stop.store(false, Ordering::SeqCst);
        let mut handles = Vec::new();
        let bots: Vec<String> = self.model().bots.keys().cloned().collect();
        let w = self.clone();
        handles.push(tokio::spawn(
            async move { w.notifier(Rng::new(seed)).await },
        ));
        let w = self.clone();
        handles.push(tokio::spawn(async move {
            w.admin(Rng::new(seed ^ 0xadad)).await
        }));
        for (i, bot) in bots.into_iter().enumerate() {
            let w = self.clone();
            let rng = Rng::new(seed.wrapping_add(1000 + i as u64));
            handles.push(tokio::spawn(async move { w.bot(bot, rng).await }));
        }
        handles
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    async fn pause(&self, rng: &mut Rng, max_ms: u64) {
        tokio::time::sleep(Duration::from_millis(rng.range(0, max_ms))).await;
    }

    async fn notifier(&self, mut rng: Rng) {
        while !self.stopped() {
            let batch: Vec<(String, String)> = {
                let mut m = self.model();
                let n = rng.range(1, 6);
                let accounts: Vec<String> = m.accounts_sent.iter().cloned().collect();
                (0..n)
                    .map(|_| {
                        m.next_task += 1;
                        let id =
                            format!("{}-t{}-{}", self.pool, rng.range(0, 1 << 30), m.next_task);
                        m.tasks.insert(id.clone(), Task::Sent);
                        let account = if accounts.is_empty() || rng.chance(20) {
                            "none".to_string()
                        } else {
                            accounts[rng.range(0, accounts.len() as u64) as usize].clone()
                        };
                        (id, account)
                    })
                    .collect()
            };
            let res = self
                .client(&mut rng)
                .notify_pending(&self.pool, &batch)
                .await;
            match res {
                Ok(()) => {
                    let mut m = self.model();
                    for (id, _) in &batch {
                        if m.tasks.get(id) == Some(&Task::Sent) {
                            m.tasks.insert(id.clone(), Task::Known);
                        }
                    }
                    drop(m);
                    self.acked();
                }
                Err(e) => {
                    self.model().failed(&e);
                    self.pause(&mut rng, 50).await;
                }
            }
            self.pause(&mut rng, 8).await;
        }
    }

    async fn admin(&self, mut rng: Rng) {
        while !self.stopped() {
            let account = {
                let mut m = self.model();
                m.next_account += 1;
                let a = format!("acct-{}-{}", m.next_account, rng.range(0, 1000));
                m.accounts_sent.insert(a.clone());
                a
            };
            match self
                .client(&mut rng)
                .create_account(&self.pool, &account)
                .await
            {
                Ok(()) => {
                    self.model().accounts.insert(account);
                    self.acked();
                }
                Err(e) => {
                    self.model().failed(&e);
                }
            }
            self.pause(&mut rng, 100).await;
        }
    }

    async fn bot(&self, bot: String, mut rng: Rng) {
        while !self.stopped() {
            let (current, running_in_doubt) = {
                let m = self.model();
                let b = &m.bots[&bot];
                (b.current.clone(), b.running_in_doubt)
            };
            match current {
                // Assigned, RUNNING not yet acknowledged: report it.
                Some((task, false)) if running_in_doubt || rng.chance(90) => {
                    self.model()
                        .bots
                        .get_mut(&bot)
                        .expect("bot")
                        .running_in_doubt = true;
                    match self
                        .client(&mut rng)
                        .notify_running(&self.pool, &task, &bot)
                        .await
                    {
                        Ok(()) => {
                            let mut m = self.model();
                            let b = m.bots.get_mut(&bot).expect("bot");
                            b.running_in_doubt = false;
                            b.current = Some((task, true));
                            drop(m);
                            self.acked();
                        }
                        Err(e) => {
                            self.model().failed(&e);
                            self.pause(&mut rng, 50).await;
                        }
                    }
                }
                // Otherwise ask for work (which finishes a running task).
                _ => {
                    self.model()
                        .bots
                        .get_mut(&bot)
                        .expect("bot")
                        .assign_in_doubt = true;
                    match self.client(&mut rng).assign(&self.pool, &bot).await {
                        Ok(got) => {
                            let mut m = self.model();
                            if let Err(v) = m.on_assign(&bot, got) {
                                panic!("pool {}: {v}", self.pool);
                            }
                            drop(m);
                            self.acked();
                        }
                        Err(e) => {
                            self.model().failed(&e);
                            self.pause(&mut rng, 50).await;
                        }
                    }
                }
            }
            self.pause(&mut rng, 15).await;
        }
    }

    /// Checks the pool's state on `clients` against everything
    /// acknowledged. Call with the drivers stopped.
    pub async fn check(&self, clients: &mut Clients) -> Violations {
        let state = clients
            .inspect(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("InspectPool({}) failed: {e}", self.pool));
        let accounts = clients
            .accounts(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("ListAccounts({}) failed: {e}", self.pool));
        self.model().check(&state, &accounts)
    }
}

impl Model {
    /// Counts a failed call.
    pub fn failed(&mut self, e: &tonic::Status) {
        self.failed_ops += 1;
        let code = format!("{:?}", e.code());
        self.failure_examples
            .entry(code.clone())
            .or_insert_with(|| e.message().to_owned());
        *self.failures_by_code.entry(code).or_default() += 1;
    }

    /// An acknowledged AssignTasks answer for `bot`. Checks that it agrees
    /// with what was acknowledged before; in particular that no task is
    /// handed to a second bot.
    pub fn on_assign(&mut self, bot: &str, got: Option<String>) -> Result<(), String> {
        let b = self.bots.get(bot).cloned().unwrap_or_default();
        if let Some(t) = &b.maybe_done {
            // The earlier call either finished it, or this one did.
            self.tasks.insert(t.clone(), Task::Completed);
        }
        let mut new_task = got.is_some();
        match &b.current {
            Some((task, false)) => {
                // Not yet reported running: the same assignment again.
                if got.as_deref() != Some(task.as_str()) {
                    return Err(format!(
                        "bot {bot} was assigned {task} (acknowledged) and then got {got:?}"
                    ));
                }
                new_task = false;
            }
            Some((task, true)) => {
                // Reported running, then idle again: the task is finished.
                self.tasks.insert(task.clone(), Task::Completed);
            }
            None => {}
        }
        if new_task && let Some(t) = &got {
            match self.tasks.get(t) {
                Some(Task::Sent | Task::Known) => {}
                other => {
                    return Err(format!(
                        "bot {bot} got task {t}, which is {other:?} for the client"
                    ));
                }
            }
            if let Some((other, _)) = self.bots.iter().find(|(id, o)| {
                id.as_str() != bot && o.current.as_ref().is_some_and(|(c, _)| c == t)
            }) {
                return Err(format!(
                    "task {t} was given to bot {bot} while acknowledged as assigned to bot {other}"
                ));
            }
        }
        let b = self.bots.get_mut(bot).expect("bot");
        b.assign_in_doubt = false;
        b.maybe_done = None;
        if new_task {
            b.current = got.map(|t| (t, false));
        } else if got.is_none() {
            b.current = None;
        }
        Ok(())
    }

    /// Folds the calls left unanswered by a crash into the model: a bot
    /// whose "finish and ask again" call is in doubt may or may not have
    /// finished its task.
    pub fn settle_in_doubt(&mut self) {
        let mut maybe_done = Vec::new();
        for b in self.bots.values_mut() {
            if b.assign_in_doubt
                && let Some((task, true)) = &b.current
            {
                maybe_done.push(task.clone());
                b.maybe_done = Some(task.clone());
                b.current = None;
            }
            b.assign_in_doubt = false;
        }
        for t in maybe_done {
            self.tasks.insert(t, Task::MaybeCompleted);
        }
    }

    /// Compares the server's state with the acknowledged history. The
    /// rules, for each kind of fact:
    ///
    /// * an acknowledged account exists;
    /// * a task acknowledged as assigned to a bot (reported running or not)
    ///   runs on that bot;
    /// * a task whose PENDING notification was acknowledged and that is not
    ///   finished is still known: waiting, or running on some bot that the
    ///   client does not believe busy with another task (a scheduling pass
    ///   started by another bot's call may have given it to a bot that has
    ///   not asked since);
    /// * a finished task is gone;
    /// * every task the server knows was sent by the client.
    pub fn check(
        &self,
        state: &adm::InspectPoolResponse,
        accounts: &BTreeSet<String>,
    ) -> Violations {
        let mut v = Vec::new();
        let waiting: BTreeSet<&str> = state.waiting_tasks.iter().map(|t| t.id.as_str()).collect();
        let running: BTreeMap<&str, &str> = state
            .running_tasks
            .iter()
            .map(|t| (t.id.as_str(), t.bot_id.as_str()))
            .collect();
        for a in &self.accounts {
            if !accounts.contains(a) {
                v.push(format!("acknowledged account {a} is missing"));
            }
        }
        for a in accounts {
            if !self.accounts_sent.contains(a) {
                v.push(format!("account {a} was never created"));
            }
        }
        let mut claimed: BTreeMap<&str, &str> = BTreeMap::new();
        for (bot, b) in &self.bots {
            if let Some((task, reported)) = &b.current {
                claimed.insert(task.as_str(), bot.as_str());
                match running.get(task.as_str()) {
                    Some(on) if on == bot => {}
                    other => v.push(format!(
                        "task {task}, acknowledged as assigned to bot {bot} (running reported: {reported}), is {}",
                        match other {
                            Some(on) => format!("running on bot {on}"),
                            None if waiting.contains(task.as_str()) => "waiting".to_string(),
                            None => "unknown".to_string(),
                        }
                    )),
                }
            }
        }
        for (task, bot) in &running {
            match self.tasks.get(*task) {
                None => v.push(format!("task {task} running on {bot} was never sent")),
                Some(Task::Completed) => {
                    v.push(format!("finished task {task} is running again on {bot}"))
                }
                Some(_) => {}
            }
            if let Some(b) = self.bots.get(*bot)
                && let Some((mine, _)) = &b.current
                && mine != task
            {
                v.push(format!(
                    "bot {bot} runs {task}, but {mine} was acknowledged as its task"
                ));
            }
        }
        for task in &waiting {
            match self.tasks.get(*task) {
                None => v.push(format!("waiting task {task} was never sent")),
                Some(Task::Completed | Task::MaybeCompleted) => {
                    v.push(format!("finished task {task} is waiting again"))
                }
                Some(_) => {}
            }
            if let Some(bot) = claimed.get(task) {
                v.push(format!(
                    "task {task} is waiting although acknowledged as assigned to {bot}"
                ));
            }
        }
        for (task, t) in &self.tasks {
            let present = waiting.contains(task.as_str()) || running.contains_key(task.as_str());
            match t {
                Task::Known if !present => v.push(format!("acknowledged task {task} is missing")),
                Task::Completed if present => v.push(format!("finished task {task} is present")),
                _ => {}
            }
        }
        v
    }

    /// Counts for reports.
    pub fn summary(&self) -> String {
        let count = |k: Task| self.tasks.values().filter(|t| **t == k).count();
        format!(
            "{} acknowledged calls ({} failed); tasks: {} known, {} unacknowledged, {} finished, {} maybe finished; {} bots busy; {} accounts",
            self.acked_ops,
            self.failed_ops,
            count(Task::Known),
            count(Task::Sent),
            count(Task::Completed),
            count(Task::MaybeCompleted),
            self.bots.values().filter(|b| b.current.is_some()).count(),
            self.accounts.len()
        )
    }
}

/// Stops the drivers and waits for them (their calls fail fast once the
/// server is gone).
pub async fn stop_drivers(w: &Workload, handles: Vec<tokio::task::JoinHandle<()>>) {
    w.stop();
    for h in handles {
        match tokio::time::timeout(Duration::from_secs(30), h).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => match e.try_into_panic() {
                Ok(p) => std::panic::resume_unwind(p),
                Err(e) => panic!("driver failed: {e}"),
            },
            Err(_) => panic!("a driver did not stop"),
        }
    }
}

/// A directory name for a pool in the embedded store (ids of lower-case
/// letters, digits, '-' and '_' map to themselves).
pub fn pool_dir(data: &Path, pool: &str) -> std::path::PathBuf {
    data.join("pools").join(pool)
}
