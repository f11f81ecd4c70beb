//! A decoded snapshot schedules exactly like the pool it was taken from,
//! for pools with many distinct label sets.
//!
//! Decoding rebuilds the derived structures (interning, the queue index,
//! eligibility) by its own route: requests and workers arrive in id order,
//! no worker has an eligible list yet, and label sets are registered under
//! anchors chosen from different counts. None of that may change a
//! decision, so the next pass on the decoded pool must equal the next pass
//! on the original, and so must the state after it.

use proptest::prelude::*;

use crate::account::{AccountConfig, Balance};
use crate::pool::Pool;
use crate::scheduler::{NewRequest, Scheduler};
use crate::snapshot;
use crate::time::Time;

const T0: i64 = 1_700_000_000;

/// A label set drawn from a corpus of `CORPUS` labels, so that most sets
/// of a few labels are distinct.
const CORPUS: u8 = 24;

fn label_set(max: usize) -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec(0..CORPUS, 0..=max)
        .prop_map(|v| v.into_iter().map(|i| format!("label-{i}")).collect())
}

#[derive(Clone, Debug)]
enum Op {
    Request {
        account: u8,
        base: Vec<String>,
        prov: Vec<String>,
    },
    Idle {
        worker: u8,
        labels: Vec<String>,
    },
    Absent {
        request: u16,
    },
    Pass {
        dt: i64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..4, label_set(4), label_set(1))
            .prop_map(|(account, base, prov)| Op::Request { account, base, prov }),
        3 => (0u8..30, label_set(14)).prop_map(|(worker, labels)| Op::Idle { worker, labels }),
        1 => (0u16..400).prop_map(|request| Op::Absent { request }),
        2 => (0i64..120).prop_map(|dt| Op::Pass { dt }),
    ]
}

fn config(i: u8) -> AccountConfig {
    AccountConfig {
        charge_rate: [1.0 + f32::from(i), 1.0, 0.5, 0.0, 0.0],
        max_charge_seconds: 600.0,
        max_fanout: i32::from(i % 3),
        disable_free_tasks: i == 2,
        description: String::new(),
        per_label_task_limits: if i == 1 {
            [("label-1".to_owned(), 2)].into()
        } else {
            Default::default()
        },
    }
}

/// Builds a pool from `ops`; returns it with its clock in seconds.
fn build(ops: &[Op]) -> (Pool, i64) {
    let mut secs = T0;
    let mut t = Time::from_secs(secs);
    let mut s = Scheduler::new(t);
    for i in 0..3u8 {
        s.add_account(&format!("account{i}"), config(i), Some(Balance::ZERO));
    }
    let mut next = 0u16;
    for op in ops {
        match op {
            Op::Request {
                account,
                base,
                prov,
            } => {
                let req = NewRequest {
                    id: format!("task{next:04}"),
                    account: format!("account{account}"),
                    base_labels: base.clone(),
                    provisionable_labels: prov.clone(),
                    enqueue_time: t,
                };
                next += 1;
                s.add_request(&req, t, &[]);
            }
            Op::Idle { worker, labels } => s.mark_idle(&format!("bot{worker:02}"), labels, t),
            Op::Absent { request } => s.notify_absent(&format!("task{request:04}"), t),
            Op::Pass { dt } => {
                secs += dt;
                t = Time::from_secs(secs);
                s.update_time(t);
                s.run_once();
            }
        }
        drop(s.take_events());
    }
    (Pool::from_scheduler(s), secs)
}

fn config_with(default: u32) -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config_with(200))]

    #[test]
    fn decoded_pool_passes_like_the_original(
        ops in proptest::collection::vec(op(), 1..160),
        dt in 0i64..90,
    ) {
        let (mut original, t) = build(&ops);
        original.scheduler.check_invariants();
        let bytes = snapshot::encode(&original);
        let mut decoded = snapshot::decode(&bytes).expect("our own snapshot decodes");
        decoded.scheduler.check_invariants();
        prop_assert_eq!(decoded.scheduler.dump(), original.scheduler.dump());

        let later = Time::from_secs(t + dt);
        let pass = |pool: &mut Pool| {
            pool.scheduler.update_time(later);
            let out = pool.scheduler.run_once();
            let events = pool.scheduler.take_events();
            pool.scheduler.check_invariants();
            (out, events)
        };
        let want = pass(&mut original);
        let have = pass(&mut decoded);
        prop_assert_eq!(have, want);
        prop_assert_eq!(decoded.scheduler.dump(), original.scheduler.dump());
        prop_assert_eq!(snapshot::encode(&decoded), snapshot::encode(&original));
    }
}

/// The pools above must have many distinct label sets, some workers able
/// to run several of them and assignments on both sides of the cut.
#[test]
fn generated_pools_have_many_label_sets() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = proptest::collection::vec(op(), 120..160);
    let (mut sets, mut assigned) = (0usize, 0usize);
    for _ in 0..20 {
        let ops = strategy
            .new_tree(&mut runner)
            .expect("strategy builds")
            .current();
        let (mut pool, t) = build(&ops);
        sets = sets.max(pool.scheduler.labels.iter_sets().count());
        pool.scheduler.update_time(Time::from_secs(t + 60));
        assigned += pool.scheduler.run_once().len();
    }
    assert!(sets >= 40, "at most {sets} distinct label sets");
    assert!(assigned > 0, "no pass after a cut assigned anything");
}
