//! A sequential workload over every mutating call, whose acknowledged state
//! is known exactly.
//!
//! One driver owns one pool and sends one call at a time: every admin call
//! (CreateAccount, ModAccount, DeleteAccount, ModSchedulerPool, Wipe),
//! NotifyTasks with PENDING, RUNNING, a done state (ABSENT) and an invalid
//! state (a task error), and AssignTasks with preemption on, so that tasks
//! are preempted and cancellations pile up. After each acknowledged call it
//! reads the pool back (InspectPool, ListAccounts, GetCancellations): that
//! reading is the acknowledged state, checked on the spot against what the
//! client knows from the calls themselves (account configurations, the
//! preemption flag, where each assigned, running or finished task is), and
//! kept. After a crash and a recovery the pool must read exactly the same:
//! configurations, balances, waiting tasks, running tasks with their bots
//! and priorities, idle bots and pending cancellations.
//!
//! The driver is stopped between calls when the server is killed, so the
//! last acknowledged state is known; the concurrent workloads cover calls
//! cut off by the crash.

use std::collections::{BTreeMap, BTreeSet};

use qscheduler_wire::protos;
use qscheduler_wire::qscheduler as adm;
use qscheduler_wire::swarming::v1 as pb;

use super::{Clients, Rng, Violations, now_ts};

/// Where the client knows a task to be.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Place {
    /// PENDING acknowledged; waiting, or handed out by a pass the client
    /// has not heard of, or preempted.
    Notified,
    /// An AssignTasks answer gave it to this bot.
    Assigned(String),
    /// Its RUNNING notification on this bot was acknowledged.
    Running(String),
    /// A done state (ABSENT) was acknowledged, or the pool was wiped.
    Gone,
}

/// The pool as read back, without the ages (which depend on the time of
/// the read).
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    pub configs: BTreeMap<String, protos::AccountConfig>,
    pub listed: BTreeMap<String, protos::AccountConfig>,
    pub balances: BTreeMap<String, Vec<f32>>,
    pub disable_preemption: bool,
    pub waiting: BTreeSet<(String, String)>,
    /// (task, bot, priority, account)
    pub running: BTreeSet<(String, String, i32, String)>,
    pub idle: BTreeSet<(String, Vec<String>)>,
    /// (bot, task, reason)
    pub cancellations: BTreeSet<(String, String, i32)>,
    pub counts: (i32, i32, i32),
}

/// The driver of one pool.
pub struct Facts {
    pub pool: String,
    rng: Rng,
    bots: Vec<String>,
    accounts: BTreeMap<String, protos::AccountConfig>,
    disable_preemption: bool,
    tasks: BTreeMap<String, Place>,
    next: u64,
    /// The state read after the last acknowledged call.
    pub last: Option<Observed>,
    /// Acknowledged calls by kind.
    pub acked: BTreeMap<&'static str, u64>,
    /// Preemptions and task errors seen in the cancellations.
    pub preempted: u64,
    pub errored: u64,
    seen: BTreeSet<(String, String, i32)>,
}

const LABELS: [&str; 2] = ["label:x", "label:y"];

fn item(
    id: &str,
    state: pb::task_spec::State,
    bot: &str,
    tags: Vec<String>,
    dims: Vec<String>,
) -> pb::NotifyTasksItem {
    let now = now_ts();
    pb::NotifyTasksItem {
        time: Some(now),
        task: Some(pb::TaskSpec {
            id: id.into(),
            state: state as i32,
            bot_id: bot.into(),
            tags,
            slices: vec![pb::SliceSpec { dimensions: dims }],
            enqueued_time: Some(now),
        }),
    }
}

impl Facts {
    pub fn new(pool: &str, seed: u64) -> Facts {
        Facts {
            pool: pool.into(),
            rng: Rng::new(seed),
            bots: (0..5).map(|i| format!("{pool}-bot{i}")).collect(),
            accounts: BTreeMap::new(),
            disable_preemption: false,
            tasks: BTreeMap::new(),
            next: 0,
            last: None,
            acked: BTreeMap::new(),
            preempted: 0,
            errored: 0,
            seen: BTreeSet::new(),
        }
    }

    /// Creates the pool (preemption on).
    pub async fn setup(&mut self, c: &mut Clients) {
        c.admin
            .create_scheduler_pool(adm::CreateSchedulerPoolRequest {
                pool_id: self.pool.clone(),
                ..Default::default()
            })
            .await
            .expect("create the facts pool");
        self.last = Some(self.observe(c).await);
    }

    fn config(&mut self) -> protos::AccountConfig {
        let r = &mut self.rng;
        let rates = r.range(1, 4);
        let mut per_label = BTreeMap::new();
        if r.chance(40) {
            per_label.insert(
                LABELS[r.range(0, 2) as usize].to_string(),
                r.range(1, 3) as i32,
            );
        }
        protos::AccountConfig {
            charge_rate: (0..rates).map(|_| r.range(1, 10) as f32 / 2.0).collect(),
            max_charge_seconds: r.range(60, 3600) as f32,
            max_fanout: r.range(0, 4) as i32,
            disable_free_tasks: r.chance(20),
            description: format!("d{}", r.range(0, 100)),
            per_label_task_limits: per_label,
        }
    }

    fn pick<T: Clone>(&mut self, v: &[T]) -> Option<T> {
        (!v.is_empty()).then(|| v[self.rng.range(0, v.len() as u64) as usize].clone())
    }

    fn tasks_where(&self, f: impl Fn(&Place) -> bool) -> Vec<String> {
        self.tasks
            .iter()
            .filter(|(_, p)| f(p))
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// `n` acknowledged calls (and the deliberate errors among them), each
    /// checked against the state read right after it.
    pub async fn steps(&mut self, c: &mut Clients, n: usize) -> Violations {
        let mut v = Vec::new();
        for _ in 0..n {
            let kind = self.step(c).await;
            *self.acked.entry(kind).or_default() += 1;
            let seen = self.observe(c).await;
            self.count_cancellations(&seen);
            v.extend(
                self.check_known(&seen)
                    .into_iter()
                    .map(|e| format!("after {kind}: {e}")),
            );
            self.last = Some(seen);
        }
        v
    }

    /// One call; panics on an unexpected failure (the server is up).
    async fn step(&mut self, c: &mut Clients) -> &'static str {
        let pool = self.pool.clone();
        let accounts: Vec<String> = self.accounts.keys().cloned().collect();
        let roll = self.rng.range(0, 100);
        match roll {
            0..8 => {
                self.next += 1;
                let id = format!("acct{}", self.next);
                let config = self.config();
                c.admin
                    .create_account(adm::CreateAccountRequest {
                        pool_id: pool,
                        account_id: id.clone(),
                        config: Some(config.clone()),
                    })
                    .await
                    .expect("CreateAccount");
                self.accounts.insert(id, config);
                "CreateAccount"
            }
            8..14 if !accounts.is_empty() => {
                let id = self.pick(&accounts).expect("account");
                let new = self.config();
                let r = &mut self.rng;
                let mut req = adm::ModAccountRequest {
                    pool_id: pool,
                    account_id: id.clone(),
                    reset_balance: r.chance(30),
                    ..Default::default()
                };
                let cfg = self.accounts.get_mut(&id).expect("account");
                if r.chance(50) {
                    req.charge_rate = new.charge_rate.clone();
                    cfg.charge_rate = new.charge_rate;
                }
                if r.chance(50) {
                    req.max_charge_seconds = Some(new.max_charge_seconds);
                    cfg.max_charge_seconds = new.max_charge_seconds;
                }
                if r.chance(50) {
                    req.max_fanout = Some(new.max_fanout);
                    cfg.max_fanout = new.max_fanout;
                }
                if r.chance(30) {
                    req.disable_free_tasks = Some(new.disable_free_tasks);
                    cfg.disable_free_tasks = new.disable_free_tasks;
                }
                if r.chance(30) {
                    req.description = Some(new.description.clone());
                    cfg.description = new.description;
                }
                if !new.per_label_task_limits.is_empty() && r.chance(50) {
                    req.per_label_task_limits = new.per_label_task_limits.clone();
                    cfg.per_label_task_limits = new.per_label_task_limits;
                }
                c.admin.mod_account(req).await.expect("ModAccount");
                "ModAccount"
            }
            14..17 if accounts.len() > 1 => {
                let id = self.pick(&accounts).expect("account");
                c.admin
                    .delete_account(adm::DeleteAccountRequest {
                        pool_id: pool,
                        account_id: id.clone(),
                    })
                    .await
                    .expect("DeleteAccount");
                self.accounts.remove(&id);
                "DeleteAccount"
            }
            17..21 => {
                let off = self.rng.chance(30);
                let expiry = self
                    .rng
                    .chance(50)
                    .then(|| self.rng.range(120, 1200) as i32);
                c.admin
                    .mod_scheduler_pool(adm::ModSchedulerPoolRequest {
                        pool_id: pool,
                        disable_preemption: Some(off),
                        bot_expiration_seconds: expiry,
                    })
                    .await
                    .expect("ModSchedulerPool");
                self.disable_preemption = off;
                "ModSchedulerPool"
            }
            21..22 => {
                c.admin
                    .wipe(adm::WipeRequest { pool_id: pool })
                    .await
                    .expect("Wipe");
                for p in self.tasks.values_mut() {
                    *p = Place::Gone;
                }
                "Wipe"
            }
            22..45 => {
                let n = self.rng.range(1, 5);
                let mut items = Vec::new();
                let mut ids = Vec::new();
                for _ in 0..n {
                    self.next += 1;
                    let id = format!("task{}", self.next);
                    // Tasks of no account run at the free level, and are the
                    // first to be preempted.
                    let mut tags = Vec::new();
                    if self.rng.chance(65)
                        && let Some(a) = self.pick(&accounts)
                    {
                        tags.push(format!("qs_account:{a}"));
                    }
                    let mut dims = vec!["pool:facts".to_string()];
                    if self.rng.chance(50) {
                        dims.push(LABELS[self.rng.range(0, 2) as usize].into());
                    }
                    items.push(item(&id, pb::task_spec::State::Pending, "", tags, dims));
                    ids.push(id);
                }
                self.notify(c, items).await;
                for id in ids {
                    self.tasks.insert(id, Place::Notified);
                }
                "NotifyTasks PENDING"
            }
            45..55 => {
                let assigned = self.tasks_where(|p| matches!(p, Place::Assigned(_)));
                let Some(t) = self.pick(&assigned) else {
                    return Box::pin(self.step(c)).await;
                };
                let Place::Assigned(bot) = self.tasks[&t].clone() else {
                    unreachable!()
                };
                let dims = vec!["pool:facts".to_string()];
                self.notify(
                    c,
                    vec![item(&t, pb::task_spec::State::Running, &bot, vec![], dims)],
                )
                .await;
                self.tasks.insert(t, Place::Running(bot));
                "NotifyTasks RUNNING"
            }
            55..62 => {
                let live = self.tasks_where(|p| *p != Place::Gone);
                let Some(t) = self.pick(&live) else {
                    return Box::pin(self.step(c)).await;
                };
                let state = if self.rng.chance(50) {
                    pb::task_spec::State::Completed
                } else {
                    pb::task_spec::State::Canceled
                };
                self.notify(
                    c,
                    vec![item(&t, state, "", vec![], vec!["pool:facts".into()])],
                )
                .await;
                self.tasks.insert(t, Place::Gone);
                "NotifyTasks ABSENT"
            }
            62..66 => {
                // A task in a state the scheduler does not handle: a task
                // error, which Swarming hears of through GetCancellations.
                let live = self.tasks_where(|p| matches!(p, Place::Notified));
                let Some(t) = self.pick(&live) else {
                    return Box::pin(self.step(c)).await;
                };
                self.notify(
                    c,
                    vec![item(
                        &t,
                        pb::task_spec::State::TaskStateInvalid,
                        "",
                        vec![],
                        vec!["pool:facts".into()],
                    )],
                )
                .await;
                "NotifyTasks error"
            }
            66..68 => {
                // Refused calls change nothing.
                let e = c
                    .admin
                    .create_account(adm::CreateAccountRequest {
                        pool_id: pool,
                        account_id: String::new(),
                        config: None,
                    })
                    .await
                    .expect_err("an empty account id is refused");
                assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
                "refused call"
            }
            _ => {
                // Bots mostly stay busy until they have nothing to do, so
                // that new tasks of accounts with quota preempt. A call from
                // a bot that matches no task runs a pass without freeing
                // any busy bot.
                let busy: BTreeSet<String> = self
                    .tasks
                    .values()
                    .filter_map(|p| match p {
                        Place::Assigned(b) | Place::Running(b) => Some(b.clone()),
                        _ => None,
                    })
                    .collect();
                let free: Vec<String> = self
                    .bots
                    .iter()
                    .filter(|b| !busy.contains(*b))
                    .cloned()
                    .collect();
                let mut bots = Vec::new();
                if self.rng.chance(40) {
                    bots.push(format!("{}-watcher", self.pool));
                } else {
                    for _ in 0..self.rng.range(1, 4) {
                        let from = if free.is_empty() || self.rng.chance(15) {
                            self.bots.clone()
                        } else {
                            free.clone()
                        };
                        let b = self.pick(&from).expect("bot");
                        if !bots.contains(&b) {
                            bots.push(b);
                        }
                    }
                }
                let idle: Vec<pb::IdleBot> = bots
                    .iter()
                    .map(|b| {
                        let mut dims = vec!["pool:facts".to_string()];
                        if b.ends_with("-watcher") {
                            dims = vec!["pool:elsewhere".to_string()];
                        }
                        dims.push(LABELS[self.rng.range(0, 2) as usize].into());
                        pb::IdleBot {
                            bot_id: b.clone(),
                            dimensions: dims,
                        }
                    })
                    .collect();
                let got = c
                    .sched
                    .assign_tasks(pb::AssignTasksRequest {
                        scheduler_id: pool,
                        idle_bots: idle,
                        time: Some(now_ts()),
                    })
                    .await
                    .expect("AssignTasks")
                    .into_inner();
                let answers: BTreeMap<String, String> = got
                    .assignments
                    .into_iter()
                    .map(|a| (a.bot_id, a.task_id))
                    .collect();
                for b in &bots {
                    for (t, p) in self.tasks.iter_mut() {
                        match p {
                            // A bot idle again finished the task it ran.
                            Place::Running(x) if x == b => *p = Place::Gone,
                            // Not reported running: handed out again, or
                            // (if the answer differs) no longer known.
                            Place::Assigned(x) if x == b && answers.get(b) != Some(t) => {
                                *p = Place::Notified
                            }
                            _ => {}
                        }
                    }
                }
                for (b, t) in answers {
                    self.tasks.insert(t, Place::Assigned(b));
                }
                "AssignTasks"
            }
        }
    }

    async fn notify(&mut self, c: &mut Clients, items: Vec<pb::NotifyTasksItem>) {
        c.sched
            .notify_tasks(pb::NotifyTasksRequest {
                scheduler_id: self.pool.clone(),
                notifications: items,
                is_callback: false,
            })
            .await
            .expect("NotifyTasks");
    }

    /// Reads the pool.
    pub async fn observe(&self, c: &mut Clients) -> Observed {
        let s = c
            .inspect(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("InspectPool({}): {e}", self.pool));
        let listed = c
            .view
            .list_accounts(adm::ListAccountsRequest {
                pool_id: self.pool.clone(),
            })
            .await
            .expect("ListAccounts")
            .into_inner()
            .accounts
            .into_iter()
            .collect();
        let cancellations = c
            .sched
            .get_cancellations(pb::GetCancellationsRequest {
                scheduler_id: self.pool.clone(),
            })
            .await
            .expect("GetCancellations")
            .into_inner()
            .cancellations
            .into_iter()
            .map(|c| (c.bot_id, c.task_id, c.reason))
            .collect();
        Observed {
            configs: s.account_configs.into_iter().collect(),
            listed,
            balances: s
                .account_balances
                .into_iter()
                .map(|(a, b)| (a, b.value))
                .collect(),
            disable_preemption: s.disable_preemption,
            waiting: s
                .waiting_tasks
                .into_iter()
                .map(|t| (t.id, t.account_id))
                .collect(),
            running: s
                .running_tasks
                .into_iter()
                .map(|t| (t.id, t.bot_id, t.priority, t.account_id))
                .collect(),
            idle: s
                .idle_bots
                .into_iter()
                .map(|b| (b.id, b.dimensions))
                .collect(),
            cancellations,
            counts: (s.num_waiting_tasks, s.num_running_tasks, s.num_idle_bots),
        }
    }

    /// What the client knows from its calls, against a reading.
    fn check_known(&mut self, s: &Observed) -> Violations {
        let mut v = Vec::new();
        // Charge rates are kept for every priority level (5), zero-padded.
        let mut sent = self.accounts.clone();
        for c in sent.values_mut() {
            c.charge_rate.resize(c.charge_rate.len().max(5), 0.0);
        }
        if s.listed != sent {
            v.push(format!(
                "accounts {:?}, but the acknowledged configurations are {:?}",
                s.listed, sent
            ));
        }
        if s.configs != s.listed {
            v.push("InspectPool and ListAccounts disagree on the accounts".into());
        }
        if s.disable_preemption != self.disable_preemption {
            v.push(format!("disable_preemption is {}", s.disable_preemption));
        }
        let running: BTreeMap<&str, &str> = s
            .running
            .iter()
            .map(|(t, b, _, _)| (t.as_str(), b.as_str()))
            .collect();
        let waiting: BTreeSet<&str> = s.waiting.iter().map(|(t, _)| t.as_str()).collect();
        let cancelled: BTreeSet<&str> =
            s.cancellations.iter().map(|(_, t, _)| t.as_str()).collect();
        for (t, p) in &self.tasks {
            let here = (
                waiting.contains(t.as_str()),
                running.get(t.as_str()).copied(),
            );
            match p {
                Place::Gone if here != (false, None) => v.push(format!(
                    "task {t}, acknowledged as done, is present: {here:?}"
                )),
                Place::Assigned(b) | Place::Running(b)
                    if here.1 != Some(b.as_str()) && !cancelled.contains(t.as_str()) =>
                {
                    v.push(format!(
                        "task {t}, acknowledged on bot {b} ({p:?}), is {here:?}"
                    ))
                }
                _ => {}
            }
        }
        for (t, b) in &running {
            if !self.tasks.contains_key(*t) {
                v.push(format!("task {t} running on {b} was never sent"));
            }
        }
        // A preempted task leaves the scheduler; the client hears of it
        // through GetCancellations, as Swarming does.
        for (bot, t, reason) in &s.cancellations {
            if *reason == pb::get_cancellations_response::cancellation::Reason::Preempted as i32
                && let Some(Place::Assigned(b) | Place::Running(b)) = self.tasks.get(t)
                && b == bot
                && running.get(t.as_str()) != Some(&bot.as_str())
            {
                self.tasks.insert(t.clone(), Place::Gone);
            }
        }
        v
    }

    /// Counts the preemptions and task errors not seen before.
    fn count_cancellations(&mut self, s: &Observed) {
        for c in &s.cancellations {
            if self.seen.insert(c.clone()) {
                if c.2 == pb::get_cancellations_response::cancellation::Reason::Preempted as i32 {
                    self.preempted += 1;
                } else {
                    self.errored += 1;
                }
            }
        }
    }

    /// After a recovery: the pool reads exactly as after the last
    /// acknowledged call.
    pub async fn check_recovered(&self, c: &mut Clients) -> Violations {
        let now = self.observe(c).await;
        let Some(last) = &self.last else {
            return vec!["no acknowledged state".into()];
        };
        if &now == last {
            return Vec::new();
        }
        let mut v = Vec::new();
        macro_rules! diff {
            ($f:ident) => {
                if now.$f != last.$f {
                    v.push(format!(
                        "{}: recovered {:?}, acknowledged {:?}",
                        stringify!($f),
                        now.$f,
                        last.$f
                    ));
                }
            };
        }
        diff!(configs);
        diff!(listed);
        diff!(balances);
        diff!(disable_preemption);
        diff!(waiting);
        diff!(running);
        diff!(idle);
        diff!(cancellations);
        diff!(counts);
        v
    }

    /// Acknowledged calls by kind, and the cancellations last seen.
    pub fn summary(&self) -> String {
        format!(
            "{:?}; tasks known {}; preemptions {}, task errors {}; cancellations pending: {}",
            self.acked,
            self.tasks.len(),
            self.preempted,
            self.errored,
            self.last.as_ref().map_or(0, |l| l.cancellations.len())
        )
    }
}
