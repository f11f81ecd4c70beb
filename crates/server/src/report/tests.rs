//! The report's figures against a scenario computed by hand.

use super::*;
use qscheduler_core::command::{AssignCall, Batch, Notification, NotifyCall, NotifyKind};
use qscheduler_core::{AccountConfig, Command, IdleBot};

/// A minute-aligned base, so minute boundaries are easy to follow.
const BASE: i64 = 28_333_333 * 60;

fn t(secs: i64) -> Time {
    Time::from_secs(BASE + secs)
}

fn waiting(id: &str, account: &str, base: &[&str], at: i64) -> Notification {
    Notification {
        time: t(at),
        task_id: id.into(),
        kind: NotifyKind::Waiting {
            account: account.into(),
            base_labels: base.iter().map(|s| s.to_string()).collect(),
            provisionable_labels: Vec::new(),
            enqueue_time: t(at),
            tags: Vec::new(),
        },
    }
}

fn running(id: &str, bot: &str, at: i64) -> Notification {
    Notification {
        time: t(at),
        task_id: id.into(),
        kind: NotifyKind::Running { bot_id: bot.into() },
    }
}

fn bot(id: &str, labels: &[&str]) -> IdleBot {
    IdleBot {
        id: id.into(),
        labels: labels.iter().map(|s| s.to_string()).collect(),
    }
}

fn batch(notes: Vec<Notification>, at: i64, bots: Vec<IdleBot>) -> Command {
    Command::Batch(Batch {
        notifies: vec![NotifyCall {
            notifications: notes,
            is_callback: false,
        }],
        assigns: if bots.is_empty() {
            Vec::new()
        } else {
            vec![AssignCall { time: t(at), bots }]
        },
    })
}

/// a (1 bot-second per second at P0) and c (the same) against b (no
/// quota): a's task waits 10 s and runs 120 s at P0; b's runs free and is
/// preempted by c's, which needs b's GPU bot.
#[test]
fn figures_match_a_hand_computed_scenario() {
    let mut pool = Pool::new(t(0));
    let mut figures = PoolFigures::default();
    let rate = |r: f32| AccountConfig {
        charge_rate: [r, 0.0, 0.0, 0.0, 0.0],
        max_charge_seconds: 3600.0,
        ..Default::default()
    };
    for (id, r) in [("a", 1.0), ("b", 0.0), ("c", 1.0)] {
        pool.apply(&Command::CreateAccount {
            account_id: id.into(),
            config: rate(r),
        })
        .unwrap();
    }
    let mut apply = |pool: &mut Pool, cmd: Command| {
        let out = pool.apply(&cmd).unwrap();
        figures.record(&out.events, pool);
    };
    // t=60: both tasks arrive. t=70: two bots ask; a (balance 70 > 0) is
    // at P0, b (balance 0) at the free level.
    apply(
        &mut pool,
        batch(
            vec![waiting("a1", "a", &[], 60), waiting("b1", "b", &[], 60)],
            60,
            vec![],
        ),
    );
    apply(
        &mut pool,
        batch(vec![], 70, vec![bot("bot1", &[]), bot("bot2", &["gpu"])]),
    );
    apply(
        &mut pool,
        batch(
            vec![running("a1", "bot1", 80), running("b1", "bot2", 80)],
            80,
            vec![],
        ),
    );
    // t=190: c's GPU task arrives; bot1 asks again (a1 is over after 120 s
    // at P0) and c preempts b's free task on the GPU bot.
    apply(
        &mut pool,
        batch(
            vec![waiting("c1", "c", &["gpu"], 190)],
            190,
            vec![bot("bot1", &[])],
        ),
    );

    let r = figures.report(t(190), 3600, &pool);
    let by = |id: &str| r.accounts.iter().find(|a| a.account == id).unwrap().clone();
    let (a, b, c) = (by("a"), by("b"), by("c"));

    // The first batch sampled balances at pool time t=0 (the pool's clock
    // moves only with assign calls), so minutes 0 to 3 are covered.
    assert_eq!(r.covered_secs, 240.0);
    assert_eq!(a.levels[0].entitlement, 240.0);
    assert_eq!(a.levels[0].balance_cap, 3600.0);
    assert_eq!(a.completed, 1);
    assert_eq!(a.used, 120.0);
    assert_eq!(a.levels[0].used, 120.0);
    assert_eq!(r.pool_used, 120.0);
    assert_eq!(a.share, 1.0);
    assert_eq!(a.levels[0].assigned, 1);
    // A 10 s wait falls in the bucket [2^3.25, 2^3.5).
    assert_eq!(a.levels[0].wait.count, 1);
    assert!((a.levels[0].wait.p50 - 2f64.powf(3.5)).abs() < 1e-9);
    assert_eq!(a.levels[0].wait.p99, a.levels[0].wait.p50);

    assert_eq!(b.levels[5].assigned, 1);
    assert_eq!(b.preemptions_suffered, 1);
    assert_eq!(b.refunds, 1);
    assert_eq!(b.refunded, 0.0);
    assert_eq!(b.completed, 0);
    assert_eq!(c.preemptions_caused, 1);
    assert_eq!(c.levels[0].assigned, 1);
    assert_eq!(c.levels[0].wait.p50, 1.0);

    // b's balance never rises above zero: free for every sampled second.
    // Samples at t=0 (pool time before the first pass), 70 and 190.
    assert_eq!(b.free_level_secs, 190.0);
    // a was free from the t=0 sample until t=70.
    assert_eq!(a.free_level_secs, 70.0);

    let minutes = figures.minutes(t(0), t(190));
    let total = |f: fn(&PoolMinute) -> u64| minutes.iter().map(|(_, m)| f(m)).sum::<u64>();
    assert_eq!(total(|m| m.enqueued), 3);
    assert_eq!(total(|m| m.assigned), 3);
    assert_eq!(total(|m| m.completed), 1);
    assert_eq!(total(|m| m.preempted), 1);
}

#[test]
fn the_ring_forgets_minutes_older_than_seven_days() {
    let pool = Pool::new(t(0));
    let mut f = PoolFigures::default();
    f.minute(minute_of(t(0))).pool.assigned = 5;
    let later = t(RETAINED_MINUTES as i64 * 60);
    f.minute(minute_of(later)).pool.assigned = 1;
    let r = f.minutes(t(0), later);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].1.assigned, 1);
    let _ = pool;
}

#[test]
fn wait_buckets_are_monotonic() {
    let mut last = 0;
    for s in [
        0.0, 0.5, 1.0, 1.5, 2.0, 10.0, 100.0, 3600.0, 200_000.0, 1e12,
    ] {
        let b = wait_bucket(s);
        assert!(b >= last);
        assert!(s <= wait_bucket_upper(usize::from(b)) || usize::from(b) == WAIT_BUCKETS - 1);
        last = b;
    }
}

/// What a pool's figures can cost, whatever the traffic: the ring, plus per
/// minute a bucket and one entry per account active in it.
#[test]
fn memory_per_pool_is_bounded() {
    use std::mem::size_of;
    let ring = RETAINED_MINUTES * size_of::<Option<Box<Minute>>>();
    let minute = size_of::<Minute>();
    let account = size_of::<(Arc<str>, AccountMinute)>();
    println!("ring {ring} B, minute {minute} B, account-minute {account} B + waits");
    assert!(ring <= 100_000);
    assert!(minute <= 128);
    assert!(account <= 256);
}
