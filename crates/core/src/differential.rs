//! Differential tests: the optimized scheduler against the naive model.
//!
//! The optimized [`Scheduler`] maintains an incremental queue index whose
//! bugs would show up only for particular histories (a bucket moved while
//! dirty, a settled key left behind by an account that sat out a pass, an
//! eligibility list missing a set). Rather than guess those histories, the
//! property test generates random operation sequences over small universes
//! (few labels, workers, requests and accounts, so that everything
//! collides), applies each operation to both implementations and compares
//! after every step: the returned values, the events and the full
//! [`StateDump`]. It also runs the scheduler's own invariant check.
//!
//! The model does its own balance arithmetic (it does not call the
//! scheduler's helpers), and a second property puts the reconciler on top
//! of each side (the optimized [`crate::reconciler::Reconciler`] against
//! the model's). Two further tests sample the generators and fail if the
//! sequences stop reaching the rules that are easy to miss: preemption,
//! fanout throttling, per-label limits, promotion, demotion, bot expiry,
//! the pickup timeout and cancellations.
//!
//! `PROPTEST_CASES` overrides the number of sequences for longer local runs.
//! Bugs found this way are kept below as fixed regression sequences.

use proptest::prelude::*;

use crate::Scheduler;
use crate::account::{AccountConfig, Balance, PoolSettings};
use crate::model::{Coverage, Model};
use crate::scheduler::{NewRequest, StateDump};
use crate::time::{NANOS_PER_SEC, Time};

const SEC: i64 = NANOS_PER_SEC;
const HOUR: i64 = 3600 * SEC;

const LABELS: [&str; 6] = ["gpu", "model:a", "model:b", "os:l", "os:m", "pool"];
const ACCOUNTS: [&str; 4] = ["a", "b", "c", "u"];
const WORKERS: usize = 8;
const REQUESTS: usize = 12;

fn worker_id(i: u8) -> String {
    format!("w{}", i as usize % WORKERS)
}

fn request_id(i: u8) -> String {
    format!("r{:02}", i as usize % REQUESTS)
}

fn label_names(idx: &[u8]) -> Vec<String> {
    idx.iter()
        .map(|&i| LABELS[i as usize % LABELS.len()].to_owned())
        .collect()
}

/// The labels a worker usually announces, so that most polls do not change
/// them (as with real bots) and eligibility survives between passes.
fn usual_labels(worker: u8) -> Vec<String> {
    let i = worker as usize % WORKERS;
    let mut v = vec![
        "pool".to_owned(),
        if i.is_multiple_of(2) { "os:l" } else { "os:m" }.to_owned(),
    ];
    match i % 3 {
        0 => v.push("model:a".to_owned()),
        1 => v.push("model:b".to_owned()),
        _ => {}
    }
    if i.is_multiple_of(4) {
        v.push("gpu".to_owned());
    }
    v
}

/// How an operation picks a (request, worker) pair.
#[derive(Clone, Debug)]
enum Pair {
    /// The k-th running pair (modulo their number), if any; else `Any`.
    Running(u8),
    /// Any request and worker.
    Any(u8, u8),
}

#[derive(Clone, Debug)]
enum Op {
    AddAccount {
        acc: u8,
        config: AccountConfig,
        balance: Option<Balance>,
    },
    UpdateAccountConfig {
        acc: u8,
        config: AccountConfig,
    },
    DeleteAccount {
        acc: u8,
    },
    ResetBalance {
        acc: u8,
    },
    SetSettings {
        disable_preemption: bool,
        expiry: i64,
    },
    AddRequest {
        req: u8,
        acc: u8,
        base: Vec<u8>,
        prov: Vec<u8>,
        age: i64,
        dt: i64,
    },
    MarkIdle {
        worker: u8,
        labels: Option<Vec<u8>>,
        dt: i64,
    },
    NotifyRunning {
        pair: Pair,
        dt: i64,
    },
    NotifyAbsent {
        req: u8,
        dt: i64,
    },
    UpdateTime {
        dt: i64,
    },
    RunOnce,
    Unassign {
        pair: Pair,
        dt: i64,
    },
}

fn rate() -> impl Strategy<Value = f32> {
    prop_oneof![3 => Just(0.0f32), 2 => Just(1.0), 1 => Just(0.5), 1 => Just(2.0), 1 => Just(3.0)]
}

fn config() -> BoxedStrategy<AccountConfig> {
    let limits = prop_oneof![
        4 => Just(vec![]),
        1 => Just(vec![("model:", 1)]),
        1 => Just(vec![("model:", 2)]),
        1 => Just(vec![("os:", 1), ("model:", 0)]),
        1 => Just(vec![("os:m", 1)]),
    ];
    (
        proptest::array::uniform5(rate()),
        prop_oneof![Just(0.0f32), Just(10.0), Just(300.0), Just(1000.0)],
        prop_oneof![3 => Just(0), 1 => Just(1), 1 => Just(2)],
        prop::bool::weighted(0.25),
        limits,
    )
        .prop_map(
            |(charge_rate, max_charge_seconds, max_fanout, disable_free_tasks, limits)| {
                AccountConfig {
                    charge_rate,
                    max_charge_seconds,
                    max_fanout,
                    disable_free_tasks,
                    description: String::new(),
                    per_label_task_limits: limits
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v))
                        .collect(),
                }
            },
        )
        .boxed()
}

fn balance_value() -> impl Strategy<Value = f32> {
    prop_oneof![
        2 => Just(0.0f32),
        1 => Just(-1000.0),
        1 => Just(-700.0),
        1 => Just(-5.0),
        2 => Just(1.0),
        2 => Just(50.0),
        3 => Just(700.0),
        2 => Just(2000.0),
    ]
}

fn balance() -> impl Strategy<Value = Option<Balance>> {
    prop::option::weighted(
        0.8,
        proptest::array::uniform5(balance_value()).prop_map(Balance),
    )
}

/// Offsets of notification and clock times from the latest time used so
/// far: mostly forward, sometimes late (out of order).
fn dt() -> impl Strategy<Value = i64> {
    prop_oneof![
        4 => Just(0i64),
        6 => (1i64..=30).prop_map(|s| s * SEC),
        2 => Just(60 * SEC),
        1 => Just(SEC / 4),
        1 => Just(400 * SEC),
        2 => (-30i64..0).prop_map(|s| s * SEC),
    ]
}

fn labels(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(0u8..LABELS.len() as u8, 0..=max)
}

/// Base labels of a request: mostly a few common shapes, so that requests
/// often share a fanout group, a bucket or a container; sometimes anything.
fn base_labels() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => Just(vec![]),
        3 => Just(vec![5]),
        2 => Just(vec![5, 3]),
        1 => Just(vec![4]),
        1 => Just(vec![1]),
        1 => Just(vec![0, 5]),
        2 => labels(2),
    ]
}

fn provisionable_labels() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![5 => Just(vec![]), 2 => Just(vec![1]), 1 => Just(vec![2]), 1 => labels(1)]
}

fn pair() -> impl Strategy<Value = Pair> {
    prop_oneof![
        3 => any::<u8>().prop_map(Pair::Running),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(r, w)| Pair::Any(r, w)),
    ]
}

fn op(workers: u8) -> BoxedStrategy<Op> {
    let acc = 0u8..ACCOUNTS.len() as u8;
    prop_oneof![
        1 => (acc.clone(), config(), balance())
            .prop_map(|(acc, config, balance)| Op::AddAccount { acc, config, balance }),
        1 => (acc.clone(), config()).prop_map(|(acc, config)| Op::UpdateAccountConfig { acc, config }),
        1 => acc.clone().prop_map(|acc| Op::DeleteAccount { acc }),
        1 => acc.clone().prop_map(|acc| Op::ResetBalance { acc }),
        1 => (
            prop::bool::weighted(0.2),
            prop_oneof![Just(0i64), Just(30 * SEC), Just(600 * SEC), Just(-SEC)],
        )
            .prop_map(|(disable_preemption, expiry)| Op::SetSettings { disable_preemption, expiry }),
        10 => (
            0u8..REQUESTS as u8,
            acc,
            base_labels(),
            provisionable_labels(),
            prop_oneof![4 => Just(0i64), 2 => Just(10 * SEC), 1 => Just(47 * HOUR)],
            dt(),
        )
            .prop_map(|(req, acc, base, prov, age, dt)| Op::AddRequest { req, acc, base, prov, age, dt }),
        5 => (0u8..workers, prop::option::weighted(0.2, labels(4)), dt())
            .prop_map(|(worker, labels, dt)| Op::MarkIdle { worker, labels, dt }),
        3 => (pair(), dt()).prop_map(|(pair, dt)| Op::NotifyRunning { pair, dt }),
        2 => (0u8..REQUESTS as u8, dt()).prop_map(|(req, dt)| Op::NotifyAbsent { req, dt }),
        5 => dt().prop_map(|dt| Op::UpdateTime { dt }),
        8 => Just(Op::RunOnce),
        2 => (pair(), dt()).prop_map(|(pair, dt)| Op::Unassign { pair, dt }),
    ]
    .boxed()
}

/// Accounts `a` (any config), `b` (free tasks disabled) and `c` (fanout and
/// label limits likely) are configured up front; `u` starts unconfigured.
fn setup() -> impl Strategy<Value = Vec<Op>> {
    (
        config(),
        balance(),
        config(),
        balance(),
        config(),
        balance(),
        1i32..=2,
    )
        .prop_map(|(a, ab, mut b, bb, mut c, cb, fanout)| {
            b.disable_free_tasks = true;
            if c.max_fanout == 0 {
                c.max_fanout = fanout;
            }
            vec![
                Op::AddAccount {
                    acc: 0,
                    config: a,
                    balance: ab,
                },
                Op::AddAccount {
                    acc: 1,
                    config: b,
                    balance: bb,
                },
                Op::AddAccount {
                    acc: 2,
                    config: c,
                    balance: cb,
                },
            ]
        })
}

fn case() -> impl Strategy<Value = Vec<Op>> {
    (setup(), prop::collection::vec(op(WORKERS as u8), 1..70)).prop_map(|(mut s, ops)| {
        s.extend(ops);
        s
    })
}

/// Fanout limits, label limits and disabled free tasks everywhere, and more
/// requests than the three workers can take: requests stay queued across
/// many passes, groups fill up mid-pass and accounts sit passes out, which
/// is where the index's settled examined times and group moves matter.
fn crowded_case() -> impl Strategy<Value = Vec<Op>> {
    (
        setup(),
        proptest::array::uniform3(1i32..=2),
        proptest::array::uniform3(any::<bool>()),
        prop::collection::vec(op(3), 1..70),
    )
        .prop_map(|(mut s, fanouts, no_free, ops)| {
            for (i, op) in s.iter_mut().enumerate() {
                if let Op::AddAccount { config, .. } = op {
                    config.max_fanout = fanouts[i];
                    config.disable_free_tasks |= no_free[i];
                    if i == 0 {
                        config.per_label_task_limits.insert("model:".to_owned(), 1);
                    }
                }
            }
            // Few label shapes, so that requests share fanout groups.
            s.extend(ops.into_iter().map(|op| match op {
                Op::AddRequest {
                    req,
                    acc,
                    base,
                    prov,
                    age,
                    dt,
                } => Op::AddRequest {
                    req,
                    acc,
                    base: if base.is_empty() { vec![] } else { vec![5] },
                    prov: if req % 3 == 0 { prov } else { vec![] },
                    age,
                    dt,
                },
                op => op,
            }));
            s
        })
}

/// Applies operations to both implementations, comparing as it goes.
struct Driver {
    opt: Scheduler,
    model: Model,
    /// The latest time used by any operation.
    clock: Time,
}

/// Start far enough from the epoch that old enqueue times stay valid.
const START: i64 = 1_000_000 * SEC;

impl Driver {
    fn new() -> Driver {
        let start = Time::from_nanos(START);
        Driver {
            opt: Scheduler::new(start),
            model: Model::new(start),
            clock: start,
        }
    }

    fn time(&mut self, dt: i64) -> Time {
        let t = self.clock.add_nanos(dt);
        self.clock = self.clock.max(t);
        t
    }

    fn pick(&self, pair: &Pair) -> (String, String) {
        if let Pair::Running(k) = pair {
            let running: Vec<(String, String)> = self
                .model
                .dump()
                .workers
                .into_iter()
                .filter_map(|w| w.running.map(|(r, _, _)| (r.id, w.id)))
                .collect();
            if !running.is_empty() {
                return running[*k as usize % running.len()].clone();
            }
        }
        match pair {
            Pair::Any(r, w) | Pair::Running(r @ w) => (request_id(*r), worker_id(*w)),
        }
    }

    /// Applies `op` to both and returns a description of the first
    /// difference, if any.
    fn step(&mut self, op: &Op) -> Result<(), String> {
        match op {
            Op::AddAccount {
                acc,
                config,
                balance,
            } => {
                let id = ACCOUNTS[*acc as usize];
                self.opt.add_account(id, config.clone(), *balance);
                self.model.add_account(id, config.clone(), *balance);
            }
            Op::UpdateAccountConfig { acc, config } => {
                let id = ACCOUNTS[*acc as usize];
                let a = self.opt.update_account_config(id, config.clone());
                let b = self.model.update_account_config(id, config.clone());
                same("update_account_config result", &a, &b)?;
            }
            Op::DeleteAccount { acc } => {
                let id = ACCOUNTS[*acc as usize];
                self.opt.delete_account(id);
                self.model.delete_account(id);
            }
            Op::ResetBalance { acc } => {
                let id = ACCOUNTS[*acc as usize];
                self.opt.reset_balance(id);
                self.model.reset_balance(id);
            }
            Op::SetSettings {
                disable_preemption,
                expiry,
            } => {
                let s = PoolSettings {
                    disable_preemption: *disable_preemption,
                    bot_expiration_nanos: *expiry,
                };
                self.opt.set_settings(s.clone());
                self.model.set_settings(s);
            }
            Op::AddRequest {
                req,
                acc,
                base,
                prov,
                age,
                dt,
            } => {
                let t = self.time(*dt);
                let new = NewRequest {
                    id: request_id(*req),
                    account: ACCOUNTS[*acc as usize].to_owned(),
                    base_labels: label_names(base),
                    provisionable_labels: label_names(prov),
                    enqueue_time: t.add_nanos(-age),
                };
                let tags = vec![format!("t:{}", req)];
                self.opt.add_request(&new, t, &tags);
                self.model.add_request(&new, t, &tags);
            }
            Op::MarkIdle { worker, labels, dt } => {
                let t = self.time(*dt);
                let labels = labels
                    .as_ref()
                    .map_or_else(|| usual_labels(*worker), |l| label_names(l));
                self.opt.mark_idle(&worker_id(*worker), &labels, t);
                self.model.mark_idle(&worker_id(*worker), &labels, t);
            }
            Op::NotifyRunning { pair, dt } => {
                let t = self.time(*dt);
                let (r, w) = self.pick(pair);
                same(
                    "is_assigned",
                    &self.opt.is_assigned(&r, &w),
                    &self.model.is_assigned(&r, &w),
                )?;
                self.opt.notify_running(&r, &w, t);
                self.model.notify_running(&r, &w, t);
            }
            Op::NotifyAbsent { req, dt } => {
                let t = self.time(*dt);
                self.opt.notify_absent(&request_id(*req), t);
                self.model.notify_absent(&request_id(*req), t);
            }
            Op::UpdateTime { dt } => {
                let t = self.time(*dt);
                self.opt.update_time(t);
                self.model.update_time(t);
            }
            Op::RunOnce => {
                let a = self.opt.run_once();
                let b = self.model.run_once();
                same("assignments", &a, &b)?;
            }
            Op::Unassign { pair, dt } => {
                let t = self.time(*dt);
                let (r, w) = self.pick(pair);
                let a = self.opt.unassign(&r, &w, t);
                let b = self.model.unassign(&r, &w, t);
                same("unassign result", &a, &b)?;
            }
        }
        self.opt.check_invariants();
        same("events", &self.opt.take_events(), &self.model.take_events())?;
        same_dump(&self.opt.dump(), &self.model.dump())
    }
}

fn same<T: PartialEq + std::fmt::Debug>(what: &str, opt: &T, model: &T) -> Result<(), String> {
    if opt == model {
        Ok(())
    } else {
        Err(format!(
            "{what} differ:\noptimized: {opt:#?}\nmodel:     {model:#?}"
        ))
    }
}

/// Compares dumps part by part, so that a failure names the part.
fn same_dump(opt: &StateDump, model: &StateDump) -> Result<(), String> {
    same("now", &opt.now, &model.now)?;
    same("settings", &opt.settings, &model.settings)?;
    same("accounts", &opt.accounts, &model.accounts)?;
    same("queued requests", &opt.queued, &model.queued)?;
    same("workers", &opt.workers, &model.workers)
}

/// Runs a sequence, reporting the first difference with its step number;
/// else the rules the sequence reached.
fn run(ops: &[Op]) -> Result<Coverage, String> {
    let mut d = Driver::new();
    for (i, op) in ops.iter().enumerate() {
        d.step(op).map_err(|e| format!("step {i} ({op:?}): {e}"))?;
    }
    Ok(d.model.coverage())
}

/// `PROPTEST_CASES`, or `default` sequences.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn config_with(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Failures are turned into the named regression tests below.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// Two profiles, each its own test so that they run in parallel.
proptest! {
    #![proptest_config(config_with(cases(4000)))]

    #[test]
    fn optimized_matches_model(ops in case()) {
        if let Err(e) = run(&ops) {
            return Err(TestCaseError::fail(e));
        }
    }
}

proptest! {
    #![proptest_config(config_with(cases(3000)))]

    #[test]
    fn optimized_matches_model_crowded(ops in crowded_case()) {
        if let Err(e) = run(&ops) {
            return Err(TestCaseError::fail(e));
        }
    }
}

/// The generated sequences reach the rules that are easy to miss: a
/// generator that stopped producing preemptions (say) would leave the
/// comparison above passing while testing much less. Runs a sample of each
/// profile and demands that every counted rule came into play.
#[test]
fn generated_sequences_reach_every_rule() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut total = Coverage::default();
    let mut add = |c: Coverage| {
        total.preemptions += c.preemptions;
        total.fanout_throttled += c.fanout_throttled;
        total.label_limited += c.label_limited;
        total.promotions += c.promotions;
        total.demotions += c.demotions;
        total.bots_expired += c.bots_expired;
    };
    for _ in 0..300 {
        let ops = case().new_tree(&mut runner).expect("case").current();
        add(run(&ops).unwrap_or_else(|e| panic!("{e}")));
        let ops = crowded_case()
            .new_tree(&mut runner)
            .expect("case")
            .current();
        add(run(&ops).unwrap_or_else(|e| panic!("{e}")));
    }
    println!("rules reached by 600 sequences: {total:?}");
    let Coverage {
        preemptions,
        fanout_throttled,
        label_limited,
        promotions,
        demotions,
        bots_expired,
    } = total;
    for (rule, n) in [
        ("preemption", preemptions),
        ("fanout throttling", fanout_throttled),
        ("per-label limits", label_limited),
        ("promotion", promotions),
        ("demotion", demotions),
        ("bot expiry", bots_expired),
    ] {
        assert!(n > 0, "no generated sequence reached {rule}: {total:?}");
    }
}

/// Short constructors for the regression sequences.
mod seq {
    use super::*;

    pub(super) fn cfg(rates: [f32; 5], max: f32, fanout: i32, no_free: bool) -> AccountConfig {
        AccountConfig {
            charge_rate: rates,
            max_charge_seconds: max,
            max_fanout: fanout,
            disable_free_tasks: no_free,
            ..AccountConfig::default()
        }
    }

    pub(super) fn account(acc: u8, config: AccountConfig, balance: Option<[f32; 5]>) -> Op {
        Op::AddAccount {
            acc,
            config,
            balance: balance.map(Balance),
        }
    }

    pub(super) fn request(req: u8, acc: u8, base: &[u8], prov: &[u8], dt: i64) -> Op {
        Op::AddRequest {
            req,
            acc,
            base: base.to_vec(),
            prov: prov.to_vec(),
            age: 0,
            dt: dt * SEC,
        }
    }

    pub(super) fn idle(worker: u8, dt: i64) -> Op {
        Op::MarkIdle {
            worker,
            labels: None,
            dt: dt * SEC,
        }
    }

    pub(super) fn check(ops: &[Op]) {
        if let Err(e) = run(ops) {
            panic!("{e}");
        }
    }
}

/// A group freed while listed as dirty (its last request completed) was
/// still indexed when the account's fanout changed.
#[test]
fn regression_freed_group_left_in_dirty_list() {
    use seq::*;
    check(&[
        account(1, cfg([0.0, 0.0, 0.0, 1.0, 0.0], 10.0, 1, true), None),
        idle(2, 0),
        Op::UpdateTime { dt: SEC },
        request(0, 1, &[], &[], 0),
        Op::RunOnce,
        idle(2, 0),
        Op::DeleteAccount { acc: 1 },
    ]);
}

/// A group's fanout count starts from its running tasks at the start of the
/// pass; a preemption of one of them earlier in the pass must not give the
/// group an extra paid slot.
#[test]
fn regression_fanout_counts_from_pass_start() {
    use seq::*;
    check(&[
        account(
            0,
            cfg([0.0; 5], 0.0, 2, false),
            Some([0.0, 100.0, 0.0, 0.0, 0.0]),
        ),
        account(
            1,
            cfg([0.0; 5], 0.0, 0, false),
            Some([100.0, 0.0, 0.0, 0.0, 0.0]),
        ),
        idle(0, 0),
        request(0, 0, &[], &[], 0),
        Op::RunOnce,
        idle(1, 0),
        idle(2, 0),
        request(1, 0, &[], &[], 0),
        request(2, 0, &[], &[], 0),
        // Only w0 has "gpu": the request must preempt w0's P1 task.
        request(3, 1, &[0], &[], 0),
        Op::RunOnce,
    ]);
}

/// The reconciler on top: the optimized [`Reconciler`] over the
/// [`Scheduler`] against the model's reconciler over the model, driven
/// through AssignTasks batches, notifications, task errors and clock jumps
/// past the ten-minute pickup timeout, compared after every step (answers,
/// cancellations, pending assignments, events and state).
mod with_reconciler {
    use super::*;
    use std::collections::BTreeMap;

    use crate::model::ModelReconciler;
    use crate::reconciler::{IdleBot, Reconciler};

    #[derive(Clone, Debug)]
    pub(super) enum ROp {
        Account {
            acc: u8,
            config: AccountConfig,
            balance: Option<Balance>,
        },
        Settings {
            disable_preemption: bool,
            expiry: i64,
        },
        Request {
            req: u8,
            acc: u8,
            base: Vec<u8>,
            prov: Vec<u8>,
            dt: i64,
        },
        Assign {
            bots: Vec<(u8, Option<Vec<u8>>)>,
            dt: i64,
        },
        Running {
            pair: Pair,
            dt: i64,
        },
        Absent {
            req: u8,
            dt: i64,
        },
        Error {
            req: u8,
        },
    }

    /// Mostly `dt()`, sometimes past the pickup timeout.
    fn rdt() -> impl Strategy<Value = i64> {
        prop_oneof![8 => dt(), 1 => Just(11 * 60 * SEC)]
    }

    fn rop() -> BoxedStrategy<ROp> {
        let acc = 0u8..ACCOUNTS.len() as u8;
        prop_oneof![
            1 => (acc.clone(), config(), balance())
                .prop_map(|(acc, config, balance)| ROp::Account { acc, config, balance }),
            1 => (prop::bool::weighted(0.2), prop_oneof![Just(0i64), Just(600 * SEC), Just(30 * SEC)])
                .prop_map(|(disable_preemption, expiry)| ROp::Settings { disable_preemption, expiry }),
            8 => (0u8..REQUESTS as u8, acc, base_labels(), provisionable_labels(), rdt())
                .prop_map(|(req, acc, base, prov, dt)| ROp::Request { req, acc, base, prov, dt }),
            8 => (
                prop::collection::vec(
                    (0u8..WORKERS as u8, prop::option::weighted(0.2, labels(4))),
                    1..4,
                ),
                rdt(),
            )
                .prop_map(|(bots, dt)| ROp::Assign { bots, dt }),
            4 => (pair(), rdt()).prop_map(|(pair, dt)| ROp::Running { pair, dt }),
            2 => (0u8..REQUESTS as u8, rdt()).prop_map(|(req, dt)| ROp::Absent { req, dt }),
            1 => (0u8..REQUESTS as u8).prop_map(|req| ROp::Error { req }),
        ]
        .boxed()
    }

    pub(super) fn rcase() -> impl Strategy<Value = Vec<ROp>> {
        (
            proptest::collection::vec((config(), balance()), 3),
            prop::collection::vec(rop(), 1..80),
        )
            .prop_map(|(accounts, ops)| {
                let mut v: Vec<ROp> = accounts
                    .into_iter()
                    .enumerate()
                    .map(|(i, (config, balance))| ROp::Account {
                        acc: i as u8,
                        config,
                        balance,
                    })
                    .collect();
                v.extend(ops);
                v
            })
    }

    /// What a run reached.
    #[derive(Default, Debug)]
    pub(super) struct Reached {
        pub(super) rules: Coverage,
        pub(super) timeouts: u64,
        pub(super) preempt_cancellations: u64,
        pub(super) error_cancellations: u64,
    }

    struct RDriver {
        opt: Scheduler,
        rec: Reconciler,
        model: Model,
        mrec: ModelReconciler,
        clock: Time,
        reached: Reached,
    }

    impl RDriver {
        fn time(&mut self, dt: i64) -> Time {
            let t = self.clock.add_nanos(dt);
            self.clock = self.clock.max(t);
            t
        }

        fn pick(&self, pair: &Pair) -> (String, String) {
            if let Pair::Running(k) = pair {
                let running: Vec<(String, String)> = self
                    .model
                    .dump()
                    .workers
                    .into_iter()
                    .filter_map(|w| w.running.map(|(r, _, _)| (r.id, w.id)))
                    .collect();
                if !running.is_empty() {
                    return running[*k as usize % running.len()].clone();
                }
            }
            match pair {
                Pair::Any(r, w) | Pair::Running(r @ w) => (request_id(*r), worker_id(*w)),
            }
        }

        fn step(&mut self, op: &ROp) -> Result<(), String> {
            match op {
                ROp::Account {
                    acc,
                    config,
                    balance,
                } => {
                    let id = ACCOUNTS[*acc as usize];
                    self.opt.add_account(id, config.clone(), *balance);
                    self.model.add_account(id, config.clone(), *balance);
                }
                ROp::Settings {
                    disable_preemption,
                    expiry,
                } => {
                    let s = PoolSettings {
                        disable_preemption: *disable_preemption,
                        bot_expiration_nanos: *expiry,
                    };
                    self.opt.set_settings(s.clone());
                    self.model.set_settings(s);
                }
                ROp::Request {
                    req,
                    acc,
                    base,
                    prov,
                    dt,
                } => {
                    let t = self.time(*dt);
                    let new = NewRequest {
                        id: request_id(*req),
                        account: ACCOUNTS[*acc as usize].to_owned(),
                        base_labels: label_names(base),
                        provisionable_labels: label_names(prov),
                        enqueue_time: t,
                    };
                    self.opt.add_request(&new, t, &[]);
                    self.model.add_request(&new, t, &[]);
                }
                ROp::Assign { bots, dt } => {
                    let t = self.time(*dt);
                    let bots: Vec<IdleBot> = bots
                        .iter()
                        .map(|(w, l)| IdleBot {
                            id: worker_id(*w),
                            labels: l
                                .as_ref()
                                .map_or_else(|| usual_labels(*w), |l| label_names(l)),
                        })
                        .collect();
                    let a = self.rec.assign_tasks(&mut self.opt, t, &bots);
                    let b = self.mrec.assign_tasks(&mut self.model, t, &bots);
                    same("AssignTasks answers", &a, &b)?;
                }
                ROp::Running { pair, dt } => {
                    let t = self.time(*dt);
                    let (r, w) = self.pick(pair);
                    self.rec.notify_running(&mut self.opt, &r, &w, t);
                    self.mrec.notify_running(&mut self.model, &r, &w, t);
                }
                ROp::Absent { req, dt } => {
                    let t = self.time(*dt);
                    let r = request_id(*req);
                    self.rec.notify_absent(&mut self.opt, &r, t);
                    self.mrec.notify_absent(&mut self.model, &r, t);
                }
                ROp::Error { req } => {
                    let r = request_id(*req);
                    self.rec.add_task_error(&r, format!("error of {r}"));
                    self.mrec.add_task_error(&r, format!("error of {r}"));
                }
            }
            self.opt.check_invariants();
            let cancellations = self.rec.cancellations();
            same("cancellations", &cancellations, &self.mrec.cancellations())?;
            for c in &cancellations {
                match c.reason {
                    crate::reconciler::CancelReason::Preempted => {
                        self.reached.preempt_cancellations += 1
                    }
                    crate::reconciler::CancelReason::Error => self.reached.error_cancellations += 1,
                }
            }
            let pending: BTreeMap<String, (Time, String, Option<String>)> = self
                .rec
                .pending()
                .iter()
                .map(|(b, p)| {
                    (
                        b.to_string(),
                        (
                            p.enqueue_time,
                            p.task_to_assign.to_string(),
                            p.task_to_abort.as_ref().map(|a| a.to_string()),
                        ),
                    )
                })
                .collect();
            same("pending assignments", &pending, &self.mrec.pending())?;
            same("events", &self.opt.take_events(), &self.model.take_events())?;
            same_dump(&self.opt.dump(), &self.model.dump())
        }
    }

    pub(super) fn rrun(ops: &[ROp]) -> Result<Reached, String> {
        let start = Time::from_nanos(START);
        let mut d = RDriver {
            opt: Scheduler::new(start),
            rec: Reconciler::default(),
            model: Model::new(start),
            mrec: ModelReconciler::default(),
            clock: start,
            reached: Reached::default(),
        };
        for (i, op) in ops.iter().enumerate() {
            d.step(op).map_err(|e| format!("step {i} ({op:?}): {e}"))?;
        }
        d.reached.rules = d.model.coverage();
        d.reached.timeouts = d.mrec.timeouts;
        Ok(d.reached)
    }

    proptest! {
        #![proptest_config(config_with(cases(1500)))]

        #[test]
        fn reconciler_matches_model(ops in rcase()) {
            if let Err(e) = rrun(&ops) {
                return Err(TestCaseError::fail(e));
            }
        }
    }

    /// The reconciler sequences reach the pickup timeout, preemption
    /// cancellations and task errors.
    #[test]
    fn reconciler_sequences_reach_timeouts_and_cancellations() {
        use proptest::strategy::ValueTree;
        use proptest::test_runner::TestRunner;
        let mut runner = TestRunner::deterministic();
        let (mut timeouts, mut preempt, mut errors, mut preemptions) = (0, 0, 0, 0);
        for _ in 0..300 {
            let ops = rcase().new_tree(&mut runner).expect("case").current();
            let r = rrun(&ops).unwrap_or_else(|e| panic!("{e}"));
            timeouts += r.timeouts;
            preempt += r.preempt_cancellations;
            errors += r.error_cancellations;
            preemptions += r.rules.preemptions;
        }
        println!(
            "300 reconciler sequences: {timeouts} pickup timeouts, {preemptions} preemptions, \
             {preempt} preemption and {errors} error cancellations seen"
        );
        assert!(timeouts > 0, "no pickup timeout");
        assert!(preemptions > 0 && preempt > 0, "no preemption cancellation");
        assert!(errors > 0, "no task error");
    }
}
