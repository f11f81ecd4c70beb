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
    let ring = RETAINED_MINUTES * size_of::<Option<Arc<Minute>>>();
    let minute = size_of::<Minute>();
    let account = size_of::<(Arc<str>, AccountMinute)>();
    println!("ring {ring} B, minute {minute} B, account-minute {account} B + waits");
    assert!(ring <= 100_000);
    assert!(minute <= 128);
    assert!(account <= 256);
}

/// The commands of the hand-computed scenario above, accounts included.
fn scenario() -> Vec<Command> {
    let rate = |r: f32| AccountConfig {
        charge_rate: [r, 0.0, 0.0, 0.0, 0.0],
        max_charge_seconds: 3600.0,
        ..Default::default()
    };
    let mut cmds: Vec<Command> = [("a", 1.0), ("b", 0.0), ("c", 1.0)]
        .into_iter()
        .map(|(id, r)| Command::CreateAccount {
            account_id: id.into(),
            config: rate(r),
        })
        .collect();
    cmds.push(batch(
        vec![waiting("a1", "a", &[], 60), waiting("b1", "b", &[], 60)],
        60,
        vec![],
    ));
    cmds.push(batch(
        vec![],
        70,
        vec![bot("bot1", &[]), bot("bot2", &["gpu"])],
    ));
    cmds.push(batch(
        vec![running("a1", "bot1", 80), running("b1", "bot2", 80)],
        80,
        vec![],
    ));
    cmds.push(batch(
        vec![waiting("c1", "c", &["gpu"], 190)],
        190,
        vec![bot("bot1", &[])],
    ));
    // Minutes later: a second task of a, assigned and finished.
    cmds.push(batch(
        vec![waiting("a2", "a", &[], 400)],
        430,
        vec![bot("bot3", &[])],
    ));
    cmds.push(batch(vec![running("a2", "bot3", 431)], 431, vec![]));
    cmds.push(batch(vec![], 700, vec![bot("bot3", &[])]));
    cmds
}

/// What a restart does: the image a snapshot took after `k` commands, then
/// the rest replayed through a [`Rebuild`], must give the figures the
/// writer had, whatever `k`.
#[test]
fn an_image_and_the_replayed_log_rebuild_the_live_figures() {
    let cmds = scenario();
    let mut live_pool = Pool::new(t(0));
    let mut live = PoolFigures::default();
    let mut images = Vec::new();
    for cmd in &cmds {
        images.push(image::encode(&live));
        let out = live_pool.apply(cmd).unwrap();
        live.record(&out.events, &live_pool);
    }
    let now = t(700);
    let want = live.report(now, 3600, &live_pool);
    assert_eq!(want.accounts.iter().map(|a| a.completed).sum::<u64>(), 2);
    for (k, img) in images.iter().enumerate() {
        let reports = Reports::new();
        let mut pool = Pool::new(t(0));
        for cmd in &cmds[..k] {
            pool.apply(cmd).unwrap();
        }
        let mut rebuild = reports.recovering("p", Some(img.as_slice())).unwrap();
        for cmd in &cmds[k..] {
            let out = pool.apply(cmd).unwrap();
            rebuild.replayed(&out.events, &pool);
        }
        rebuild.finish();
        let got = reports.pool("p").unwrap();
        let got = lock(&got);
        assert_eq!(*got, live, "image after {k} commands");
        assert_eq!(got.report(now, 3600, &pool), want);
        // The image's bytes are canonical.
        assert_eq!(image::encode(&got), image::encode(&live));
    }
}

/// Without an image (a pool whose log starts at record 1) the replay alone
/// gives the same figures.
#[test]
fn a_full_log_rebuilds_the_figures_without_an_image() {
    let cmds = scenario();
    let mut pool = Pool::new(t(0));
    let mut live = PoolFigures::default();
    let reports = Reports::new();
    let mut rebuild = reports.recovering("p", None).unwrap();
    for cmd in &cmds {
        let out = pool.apply(cmd).unwrap();
        live.record(&out.events, &pool);
        rebuild.replayed(&out.events, &pool);
    }
    rebuild.finish();
    assert_eq!(*lock(&reports.pool("p").unwrap()), live);
}

#[test]
fn damaged_images_are_refused_without_panicking() {
    let cmds = scenario();
    let mut pool = Pool::new(t(0));
    let mut f = PoolFigures::default();
    for cmd in &cmds {
        let out = pool.apply(cmd).unwrap();
        f.record(&out.events, &pool);
    }
    let bytes = image::encode(&f);
    assert_eq!(image::decode(&bytes).unwrap(), f);
    for n in 0..bytes.len() {
        assert!(image::decode(&bytes[..n]).is_err(), "cut at {n}");
    }
    for i in 0..bytes.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut b = bytes.clone();
            b[i] ^= flip;
            // Either refused or a valid image; never a panic.
            let _ = image::decode(&b);
        }
    }
    // An image that does not decode leaves the figures to the log.
    let reports = Reports::new();
    let rebuild = reports.recovering("p", Some(&b"garbage"[..])).unwrap();
    rebuild.finish();
    assert_eq!(*lock(&reports.pool("p").unwrap()), PoolFigures::default());
}

/// What the image costs when balance samples dominate (seven busy days):
/// per minute a few bytes, per account and minute about 22.
#[test]
fn images_of_balance_samples_are_compact() {
    let size = |accounts: usize| {
        let mut f = PoolFigures::default();
        let ids: Vec<Arc<str>> = (0..accounts)
            .map(|i| Arc::from(format!("account-{i}")))
            .collect();
        for m in 0..1000 {
            let minute = f.minute(m);
            for id in &ids {
                minute.account(id).balance = Some([1.5, 2.5, 0.0, -3.0, 600.0]);
            }
        }
        let bytes = image::encode(&f);
        assert_eq!(image::decode(&bytes).unwrap(), f);
        bytes.len()
    };
    let one = size(1);
    let ten = size(10);
    let per_account = (ten - one) as f64 / 9.0 / 1000.0;
    println!(
        "image: {:.1} B per minute with one account, {per_account:.1} B per further account-minute",
        one as f64 / 1000.0
    );
    assert!(one <= 30 * 1000, "{one}");
    assert!(per_account <= 24.0, "{per_account}");
}
