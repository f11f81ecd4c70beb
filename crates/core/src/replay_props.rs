//! Properties of the pool as a replayable state machine.
//!
//! The server's durability rests on two facts checked here on random
//! command sequences (notifications, assign calls, admin commands, pickup
//! timeouts): applying the same commands twice gives the same outcomes and
//! byte-identical snapshots, and restoring a snapshot taken anywhere in the
//! sequence and applying the rest gives exactly what the uninterrupted run
//! gave. Commands also go through their log encoding, as in recovery.

use proptest::prelude::*;

use crate::account::AccountConfig;
use crate::command::{
    AccountChanges, AssignCall, Batch, Command, Notification, NotifyCall, NotifyKind,
};
use crate::pool::{Outcome, Pool};
use crate::reconciler::IdleBot;
use crate::snapshot;
use crate::time::Time;

const T0: i64 = 1_700_000_000;

fn labels(mask: u8) -> Vec<String> {
    (0..6)
        .filter(|i| mask & (1 << i) != 0)
        .map(|i| format!("l{i}"))
        .collect()
}

fn account() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_owned()),
        Just("b".to_owned()),
        Just("c".to_owned()),
        Just(String::new())
    ]
}

fn config() -> impl Strategy<Value = AccountConfig> {
    (
        proptest::array::uniform5(prop_oneof![Just(0.0f32), Just(0.5), Just(1.0), Just(3.0)]),
        prop_oneof![Just(0.0f32), Just(60.0), Just(1000.0)],
        0..3i32,
        prop::bool::weighted(0.3),
        prop::bool::weighted(0.3),
    )
        .prop_map(|(charge_rate, max, fanout, no_free, limit)| AccountConfig {
            charge_rate,
            max_charge_seconds: max,
            max_fanout: fanout,
            disable_free_tasks: no_free,
            description: String::new(),
            per_label_task_limits: if limit {
                [("l1".to_owned(), 1)].into()
            } else {
                Default::default()
            },
        })
}

/// A notification at `t` (seconds after T0, possibly late).
fn notification() -> impl Strategy<Value = (i64, Notification)> {
    let kind = prop_oneof![
        4 => (account(), 0u8..64, 0u8..8).prop_map(|(account, base, prov)| NotifyKind::Waiting {
            account,
            base_labels: labels(base & 0b111),
            provisionable_labels: labels(prov << 3),
            enqueue_time: Time::from_secs(T0),
            tags: vec![],
        }),
        2 => (0u8..6).prop_map(|b| NotifyKind::Running { bot_id: format!("bot{b}") }),
        2 => Just(NotifyKind::Absent),
        1 => Just(NotifyKind::Error { message: "Invalid slice count 3".into() }),
    ];
    (-30i64..5, 0u8..10, kind).prop_map(|(dt, task, kind)| {
        (
            dt,
            Notification {
                time: Time::EPOCH,
                task_id: format!("task{task}"),
                kind,
            },
        )
    })
}

#[derive(Clone, Debug)]
enum Step {
    Batch {
        notifies: Vec<Vec<(i64, Notification)>>,
        assigns: Vec<Vec<(u8, u8)>>,
        advance: i64,
    },
    Admin(Command),
}

fn step() -> impl Strategy<Value = Step> {
    let batch = (
        proptest::collection::vec(proptest::collection::vec(notification(), 1..3), 0..3),
        proptest::collection::vec(proptest::collection::vec((0u8..6, 0u8..64), 1..3), 0..3),
        prop_oneof![5 => 0i64..90, 1 => Just(700i64)],
    )
        .prop_map(|(notifies, assigns, advance)| Step::Batch {
            notifies,
            assigns,
            advance,
        });
    let admin = prop_oneof![
        (account(), config()).prop_filter_map("non-empty account", |(a, c)| {
            (!a.is_empty()).then_some(Command::CreateAccount {
                account_id: a,
                config: c,
            })
        }),
        (account(), proptest::option::of(0..3i32), any::<bool>()).prop_filter_map(
            "non-empty account",
            |(a, fanout, reset)| {
                (!a.is_empty()).then_some(Command::ModAccount {
                    account_id: a,
                    changes: AccountChanges {
                        max_fanout: fanout,
                        reset_balance: reset,
                        ..Default::default()
                    },
                })
            }
        ),
        account().prop_filter_map("non-empty account", |a| {
            (!a.is_empty()).then_some(Command::DeleteAccount { account_id: a })
        }),
        (
            proptest::option::of(any::<bool>()),
            proptest::option::of(-5..400i32)
        )
            .prop_map(|(p, e)| Command::ModPool {
                disable_preemption: p,
                bot_expiration_secs: e,
            }),
    ];
    prop_oneof![8 => batch, 2 => admin.prop_map(Step::Admin)]
}

/// The commands of a step sequence, with absolute times.
fn commands(steps: &[Step]) -> Vec<Command> {
    let mut now = T0 + 10;
    let mut out = vec![Command::Create {
        time: Time::from_secs(T0),
    }];
    for s in steps {
        match s {
            Step::Admin(c) => out.push(c.clone()),
            Step::Batch {
                notifies,
                assigns,
                advance,
            } => {
                now += advance;
                let notifies = notifies
                    .iter()
                    .map(|items| NotifyCall {
                        notifications: items
                            .iter()
                            .map(|(dt, n)| Notification {
                                time: Time::from_secs(now + dt),
                                ..n.clone()
                            })
                            .collect(),
                        is_callback: false,
                    })
                    .collect();
                let assigns = assigns
                    .iter()
                    .map(|bots| AssignCall {
                        time: Time::from_secs(now),
                        bots: bots
                            .iter()
                            .map(|&(b, l)| IdleBot {
                                id: format!("bot{b}"),
                                labels: labels(l),
                            })
                            .collect(),
                    })
                    .collect();
                out.push(Command::Batch(Batch { notifies, assigns }));
            }
        }
    }
    out
}

/// Applies `cmds` as recovery would (through the log encoding), checking
/// the index invariants after each; returns the outcomes.
fn run(pool: &mut Pool, cmds: &[Command]) -> Vec<Result<Outcome, String>> {
    cmds.iter()
        .map(|c| {
            let logged = Command::decode(&c.encode()).expect("logged command decodes");
            assert_eq!(&logged, c);
            let out = pool.apply(&logged).map_err(|e| e.to_string());
            pool.scheduler.check_invariants();
            out
        })
        .collect()
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
    #![proptest_config(config_with(400))]

    #[test]
    fn same_commands_same_outcomes_and_bytes(steps in proptest::collection::vec(step(), 1..40)) {
        let cmds = commands(&steps);
        let mut a = Pool::new(Time::EPOCH);
        let mut b = Pool::new(Time::EPOCH);
        let out_a = run(&mut a, &cmds);
        let out_b = run(&mut b, &cmds);
        prop_assert_eq!(out_a, out_b);
        prop_assert_eq!(snapshot::encode(&a), snapshot::encode(&b));
    }

    #[test]
    fn snapshot_anywhere_changes_nothing(
        steps in proptest::collection::vec(step(), 1..40),
        cut in any::<prop::sample::Index>(),
    ) {
        let cmds = commands(&steps);
        let k = cut.index(cmds.len() + 1);
        let mut whole = Pool::new(Time::EPOCH);
        let out_whole = run(&mut whole, &cmds);

        let mut first = Pool::new(Time::EPOCH);
        let out_first = run(&mut first, &cmds[..k]);
        let bytes = snapshot::encode(&first);
        let mut restored = snapshot::decode(&bytes).expect("our own snapshot decodes");
        restored.scheduler.check_invariants();
        prop_assert_eq!(restored.scheduler.dump(), first.scheduler.dump());
        prop_assert_eq!(&snapshot::encode(&restored), &bytes);
        let out_rest = run(&mut restored, &cmds[k..]);

        let mut joined = out_first;
        joined.extend(out_rest);
        prop_assert_eq!(joined, out_whole);
        prop_assert_eq!(restored.scheduler.dump(), whole.scheduler.dump());
        prop_assert_eq!(restored.reconciler(), whole.reconciler());
        prop_assert_eq!(snapshot::encode(&restored), snapshot::encode(&whole));
    }
}

/// The sequences above must exercise the scheduler, not just exist: over a
/// sample of them, assignments, preemptions, task errors, pending
/// assignments and both queued and running tasks all occur.
#[test]
fn generated_sequences_exercise_the_scheduler() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let mut runner = TestRunner::deterministic();
    let strategy = proptest::collection::vec(step(), 20..40);
    let (mut assigned, mut preempted, mut errors, mut pending, mut queued, mut running) =
        (0, 0, 0, 0, 0, 0);
    for _ in 0..200 {
        let steps = strategy.new_tree(&mut runner).unwrap().current();
        let mut pool = Pool::new(Time::EPOCH);
        for out in run(&mut pool, &commands(&steps)).into_iter().flatten() {
            assigned += out.assignments.iter().map(Vec::len).sum::<usize>();
            preempted += out
                .events
                .iter()
                .filter(|e| matches!(e.event.kind, crate::event::EventKind::Preempted { .. }))
                .count();
        }
        errors += usize::from(!pool.reconciler().task_errors().is_empty());
        pending += usize::from(!pool.reconciler().pending().is_empty());
        queued += usize::from(pool.scheduler().queued_len() > 0);
        running += usize::from(pool.scheduler().running_len() > 0);
    }
    assert!(assigned > 500, "{assigned} assignments");
    assert!(preempted > 5, "{preempted} preemptions");
    for (what, n) in [
        ("task errors", errors),
        ("pending", pending),
        ("queued", queued),
        ("running", running),
    ] {
        assert!(n > 20, "only {n} of 200 sequences end with {what}");
    }
}
