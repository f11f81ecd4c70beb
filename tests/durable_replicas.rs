//! Several replicas on one PostgreSQL database: forwarding, placement and
//! takeover, with the real server binary.
//!
//! * `forwarding_...`: calls for one pool sent to both replicas all succeed
//!   (errors included come back as the owner gave them), over gRPC and
//!   pRPC, and land in one log in the order they were acknowledged.
//! * `takeover_...`: the owner of a busy pool is killed with SIGKILL; the
//!   other replica serves the pool once the lease expires, with every
//!   acknowledged operation present and no task handed to a second bot. How
//!   long that took is printed, not asserted: it is a figure for the report,
//!   and a loaded machine must not fail the test.
//! * `sigterm_...`: the owner of a busy pool gets SIGTERM (a rolling
//!   restart); it hands its pools over and exits 0, the other replica serves
//!   them without waiting for a lease to expire, callers see only the
//!   retriable `UNAVAILABLE`, and nothing acknowledged is lost.

mod durable_support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use durable_support::*;
use qscheduler_core::Command;
use qscheduler_server::registry::home;
use qscheduler_store::Replica;
use qscheduler_wire::prpc::PrpcClient;
use qscheduler_wire::qscheduler as adm;

/// How long a wait may last before the test counts as hung: generous, so
/// that only a hang fails the test, never a slow machine.
const HUNG: Duration = Duration::from_secs(120);

/// Waits until every pool in `pools` has the lease holder `expected` says.
async fn wait_for_owners(
    db: &sqlx::PgPool,
    expected: &BTreeMap<String, String>,
    timeout: Duration,
) -> BTreeMap<String, Option<String>> {
    let until = Instant::now() + timeout;
    loop {
        let mut now = BTreeMap::new();
        for p in expected.keys() {
            now.insert(p.clone(), lease_holder(db, p).await);
        }
        if expected
            .iter()
            .all(|(p, r)| now.get(p).and_then(|o| o.as_deref()) == Some(r.as_str()))
            || Instant::now() >= until
        {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn replicas(servers: &[(&str, &ServerProc)]) -> Vec<Replica> {
    servers
        .iter()
        .map(|(id, s)| Replica {
            replica_id: (*id).to_string(),
            address: s.addr.to_string(),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_between_replicas_lands_in_one_log() {
    let started = Instant::now();
    let db = TestDb::create("fwd").await;
    let a = ServerProc::start(&["--store", &db.url, "--replica-id", "a"]);
    let b = ServerProc::start(&["--store", &db.url, "--replica-id", "b"]);
    let pg = db.connect().await;
    let mut ca = a.clients().await;
    let mut cb = b.clients().await;

    // Pools spread by rendezvous hashing over the live replicas: find one
    // pool whose home is each replica, create them through the *other*
    // replica, and see each adopted by its home.
    let live = replicas(&[("a", &a), ("b", &b)]);
    let pool_homed = |r: &str| {
        (0..100)
            .map(|i| format!("fwd-{i}"))
            .find(|p| home(p, &live).is_some_and(|h| h.replica_id == r))
            .expect("a pool for each replica")
    };
    let pa = pool_homed("a");
    let pb = pool_homed("b");
    cb.create_pool(&pa).await.expect("create through b");
    ca.create_pool(&pb).await.expect("create through a");
    let expected: BTreeMap<String, String> =
        [(pa.clone(), "a".to_string()), (pb.clone(), "b".to_string())].into();
    let owners = wait_for_owners(&pg, &expected, HUNG).await;
    assert_eq!(
        owners,
        expected
            .iter()
            .map(|(p, r)| (p.clone(), Some(r.clone())))
            .collect::<BTreeMap<_, _>>(),
        "pools are adopted by their home replica"
    );

    // A sequence of calls for pool pa, alternating between the replicas.
    // Each call is alone in its batch, so each write is one log record.
    let pool = pa.as_str();
    let mut expect_log = vec!["Create", "ModPool"];
    for i in 0..12 {
        let c = if i % 2 == 0 { &mut ca } else { &mut cb };
        match i % 4 {
            0 => {
                c.create_account(pool, &format!("acct{i}"))
                    .await
                    .expect("CreateAccount");
                expect_log.push("CreateAccount");
            }
            1 => {
                c.notify_pending(pool, &[(format!("task{i}"), format!("acct{}", i - 1))])
                    .await
                    .expect("NotifyTasks");
                expect_log.push("Batch");
            }
            2 => {
                let got = c
                    .assign(pool, &format!("bot{i}"))
                    .await
                    .expect("AssignTasks");
                assert_eq!(got, Some(format!("task{}", i - 1)));
                expect_log.push("Batch");
            }
            _ => {
                c.notify_running(pool, &format!("task{}", i - 2), &format!("bot{}", i - 1))
                    .await
                    .expect("NotifyTasks(RUNNING)");
                expect_log.push("Batch");
            }
        }
    }
    // Errors come back as the owner gave them, through either replica.
    for c in [&mut ca, &mut cb] {
        let e = c
            .admin
            .mod_account(adm::ModAccountRequest {
                pool_id: pool.into(),
                account_id: "nobody".into(),
                ..Default::default()
            })
            .await
            .expect_err("no such account");
        assert_eq!(e.code(), tonic::Code::NotFound, "{e}");
        let e = c.inspect("no-such-pool").await.expect_err("no such pool");
        assert_eq!(e.code(), tonic::Code::NotFound, "{e}");
    }
    // Calls already forwarded are not sent to another lease holder, so
    // forwarding cannot loop: b refuses them rather than passing them on.
    for hops in [1, 2] {
        let mut request = tonic::Request::new(adm::ListAccountsRequest {
            pool_id: pool.into(),
        });
        for h in 0..hops {
            request.metadata_mut().append(
                "x-qscheduler-forwarded-by",
                format!("r{h}").parse().expect("ascii"),
            );
        }
        let e = cb
            .view
            .list_accounts(request)
            .await
            .expect_err("not forwarded again");
        assert_eq!(e.code(), tonic::Code::Unavailable, "{e}");
    }
    // pRPC reaches the same pool through the non-owner too.
    let prpc = PrpcClient::new(&b.url()).expect("pRPC client");
    let accounts: adm::ListAccountsResponse = prpc
        .call(
            "qscheduler.QSchedulerView",
            "ListAccounts",
            &adm::ListAccountsRequest {
                pool_id: pool.into(),
            },
        )
        .await
        .expect("pRPC ListAccounts via the non-owner");
    assert_eq!(accounts.accounts.len(), 3);

    // Both replicas answer with the same state.
    let sa = ca.inspect(pool).await.expect("inspect via a");
    let sb = cb.inspect(pool).await.expect("inspect via b");
    let ids = |s: &adm::InspectPoolResponse| {
        (
            s.waiting_tasks
                .iter()
                .map(|t| t.id.clone())
                .collect::<Vec<_>>(),
            s.running_tasks
                .iter()
                .map(|t| (t.id.clone(), t.bot_id.clone()))
                .collect::<Vec<_>>(),
            s.account_configs.keys().cloned().collect::<Vec<_>>(),
        )
    };
    assert_eq!(ids(&sa), ids(&sb));
    assert_eq!(sa.running_tasks.len(), 3);

    // One log, in acknowledgement order, written by the owner only.
    let rows: Vec<(i64, i64, Vec<u8>)> = sqlx::query_as(
        "SELECT seq, generation, record FROM qs_log WHERE pool_id = $1 ORDER BY seq",
    )
    .bind(pool)
    .fetch_all(&pg)
    .await
    .expect("read the log");
    let kinds: Vec<&str> = rows
        .iter()
        .map(
            |(_, _, r)| match Command::decode(r).expect("record decodes") {
                Command::Create { .. } => "Create",
                Command::CreateAccount { .. } => "CreateAccount",
                Command::Batch(_) => "Batch",
                Command::ModPool { .. } => "ModPool",
                _ => "other",
            },
        )
        .collect();
    assert_eq!(kinds, expect_log);
    let seqs: Vec<i64> = rows.iter().map(|r| r.0).collect();
    assert_eq!(seqs, (1..=rows.len() as i64).collect::<Vec<_>>());
    let generations: std::collections::BTreeSet<i64> = rows[1..].iter().map(|r| r.1).collect();
    assert_eq!(generations.len(), 1, "one writer (one lease) wrote the log");

    // A clean stop hands the pool over at once: b adopts a's pool.
    let mut a = a;
    a.terminate();
    let expected: BTreeMap<String, String> =
        [(pa.clone(), "b".to_string()), (pb.clone(), "b".to_string())].into();
    let owners = wait_for_owners(&pg, &expected, HUNG).await;
    assert_eq!(owners.get(&pa).cloned().flatten().as_deref(), Some("b"));
    let sb2 = cb
        .inspect(pool)
        .await
        .expect("inspect via b after a stopped");
    assert_eq!(ids(&sb2), ids(&sb));

    // A new replica gets its pools back from b (rebalancing).
    let a2 = ServerProc::start(&["--store", &db.url, "--replica-id", "a"]);
    let expected: BTreeMap<String, String> =
        [(pa.clone(), "a".to_string()), (pb.clone(), "b".to_string())].into();
    let owners = wait_for_owners(&pg, &expected, HUNG).await;
    assert_eq!(owners.get(&pa).cloned().flatten().as_deref(), Some("a"));
    let mut ca2 = a2.clients().await;
    assert_eq!(
        ids(&ca2.inspect(pool).await.expect("inspect via a")),
        ids(&sb)
    );
    println!("forwarding test took {:?}", started.elapsed());
}

/// Two replicas on a database of their own, six pools spread over them
/// (each already held by its home), and one pool, the victim, whose home
/// is replica a.
struct TwoReplicas {
    db: TestDb,
    a: ServerProc,
    b: ServerProc,
    pg: sqlx::PgPool,
    ca: Clients,
    cb: Clients,
    pools: Vec<String>,
    victim: String,
    /// Each pool's home.
    expected: BTreeMap<String, String>,
}

impl TwoReplicas {
    async fn start(tag: &str, prefix: &str) -> TwoReplicas {
        let db = TestDb::create(tag).await;
        let a = ServerProc::start(&["--store", &db.url, "--replica-id", "a"]);
        let b = ServerProc::start(&["--store", &db.url, "--replica-id", "b"]);
        let pg = db.connect().await;
        let ca = a.clients().await;
        let cb = b.clients().await;
        let live = replicas(&[("a", &a), ("b", &b)]);
        let pools: Vec<String> = (0..6).map(|i| format!("{prefix}-{i}")).collect();
        let victim = pools
            .iter()
            .find(|p| home(p, &live).is_some_and(|h| h.replica_id == "a"))
            .expect("a pool homed on a")
            .clone();
        let mut c = cb.clone();
        for p in &pools {
            c.create_pool(p).await.expect("create");
        }
        let expected: BTreeMap<String, String> = pools
            .iter()
            .map(|p| (p.clone(), home(p, &live).expect("home").replica_id.clone()))
            .collect();
        wait_for_owners(&pg, &expected, HUNG).await;
        assert_eq!(lease_holder(&pg, &victim).await.as_deref(), Some("a"));
        TwoReplicas {
            db,
            a,
            b,
            pg,
            ca,
            cb,
            pools,
            victim,
            expected,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_after_kill_without_loss_or_double_assignment() {
    let seed = seed("takeover");
    let mut rng = Rng::new(seed);
    let TwoReplicas {
        db,
        a,
        b,
        pg,
        ca,
        cb,
        pools,
        victim,
        expected,
    } = TwoReplicas::start("takeover", "busy").await;

    // Traffic through both replicas, then kill the owner.
    let w = Workload::new(&victim, 8, vec![ca.clone(), cb.clone()]);
    let drivers = w.start(rng.next_u64());
    tokio::time::sleep(Duration::from_millis(rng.range(1000, 2000))).await;
    let before = w.model.lock().expect("model").acked_ops;
    let mut a = a;
    a.kill9();
    let killed = Instant::now();
    w.set_targets(vec![cb.clone()]);
    // The first write acknowledged after the kill, through b.
    let served = loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        // Answers already on their way from a when it died are not b's.
        if let Some(t) = w.model.lock().expect("model").last_write_ack
            && t > killed + Duration::from_millis(200)
        {
            break t - killed;
        }
        assert!(
            killed.elapsed() < HUNG,
            "b never served the pool (seed {seed})"
        );
    };
    // Keep going for a while on b alone.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop_drivers(&w, drivers).await;
    w.model.lock().expect("model").settle_in_doubt();
    let mut c = cb.clone();
    let violations = w.check(&mut c).await;
    assert!(
        violations.is_empty(),
        "takeover (seed {seed}): {} violations:\n  {}\n{}",
        violations.len(),
        violations.join("\n  "),
        w.model.lock().expect("model").summary()
    );
    let summary = w.model.lock().expect("model").summary();
    println!(
        "takeover: a killed after {before} acknowledged calls; b acknowledged a write for the pool {served:?} after the kill; {summary}"
    );
    if let Some(v) = b
        .logs_with("pool recovered")
        .iter()
        .find(|v| v["fields"]["pool"] == victim.as_str())
    {
        println!("takeover: b's recovery of {victim}: {}", v["fields"]);
    }
    // Every pool is now b's.
    let all_b: BTreeMap<String, String> =
        pools.iter().map(|p| (p.clone(), "b".to_string())).collect();
    let owners = wait_for_owners(&pg, &all_b, HUNG).await;
    assert!(
        owners.values().all(|o| o.as_deref() == Some("b")),
        "{owners:?}"
    );

    // a comes back: its pools are handed back to it while traffic goes on
    // through both replicas, still without loss or double assignment.
    let a2 = ServerProc::start(&["--store", &db.url, "--replica-id", "a"]);
    let ca2 = a2.clients().await;
    w.set_targets(vec![ca2.clone(), cb.clone()]);
    let drivers = w.start(rng.next_u64());
    let homes = wait_for_owners(&pg, &expected, HUNG).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop_drivers(&w, drivers).await;
    w.model.lock().expect("model").settle_in_doubt();
    assert_eq!(
        homes.get(&victim).cloned().flatten().as_deref(),
        Some("a"),
        "the pool went back to its home: {homes:?}"
    );
    for c in [ca2, cb] {
        let mut c = c;
        let violations = w.check(&mut c).await;
        assert!(
            violations.is_empty(),
            "after the hand-back (seed {seed}): {} violations:\n  {}\n{}",
            violations.len(),
            violations.join("\n  "),
            w.model.lock().expect("model").summary()
        );
    }
    println!(
        "takeover: after the hand-back to a: {}",
        w.model.lock().expect("model").summary()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_pools_over_without_loss() {
    let seed = seed("handoff");
    let mut rng = Rng::new(seed);
    let TwoReplicas {
        db: _db,
        mut a,
        b,
        pg,
        ca,
        cb,
        pools,
        victim,
        expected: _,
    } = TwoReplicas::start("handoff", "drain").await;

    // Traffic through both replicas, then SIGTERM to the owner.
    let w = Workload::new(&victim, 8, vec![ca.clone(), cb.clone()]);
    let drivers = w.start(rng.next_u64());
    tokio::time::sleep(Duration::from_millis(rng.range(1000, 2000))).await;
    let before = w.model.lock().expect("model").acked_ops;
    let failed_before = w.model.lock().expect("model").failed_ops;
    assert_eq!(
        failed_before,
        0,
        "{}",
        w.model.lock().expect("model").summary()
    );
    a.signal_term();
    let signalled = Instant::now();
    // b holds the lease: taken over from a hand-off, not from an expiry.
    let moved = loop {
        if lease_holder(&pg, &victim).await.as_deref() == Some("b") {
            break signalled.elapsed();
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(60),
            "b never took the pool over (seed {seed})"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // a exits on its own, with 0.
    let status = loop {
        if let Some(s) = a.exited() {
            break s;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(60),
            "a did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let exited = signalled.elapsed();
    assert!(status.success(), "a exited with {status}");
    w.set_targets(vec![cb.clone()]);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop_drivers(&w, drivers).await;
    w.model.lock().expect("model").settle_in_doubt();
    let mut c = cb.clone();
    let violations = w.check(&mut c).await;
    let summary = w.model.lock().expect("model").summary();
    assert!(
        violations.is_empty(),
        "hand-off (seed {seed}): {} violations:\n  {}\n{summary}",
        violations.len(),
        violations.join("\n  "),
    );
    // Callers saw nothing but retriable refusals while the pool moved:
    // UNAVAILABLE from the server, or, when a's connections closed, the
    // client's own "operation was canceled" for a request the connection
    // dropped before sending it (tonic reports it as CANCELLED; gRPC
    // clients retry such calls transparently).
    let (codes, examples) = {
        let m = w.model.lock().expect("model");
        (m.failures_by_code.clone(), m.failure_examples.clone())
    };
    assert!(
        codes.keys().all(|c| c == "Unavailable"
            || (c == "Cancelled"
                && examples.get(c).map(String::as_str) == Some("operation was canceled"))),
        "errors other than UNAVAILABLE during the hand-off (seed {seed}): {codes:?}; {:?}",
        w.model.lock().expect("model").failure_examples
    );
    // Every pool is b's now, and a left the registry.
    let all_b: BTreeMap<String, String> =
        pools.iter().map(|p| (p.clone(), "b".to_string())).collect();
    let owners = wait_for_owners(&pg, &all_b, HUNG).await;
    assert!(
        owners.values().all(|o| o.as_deref() == Some("b")),
        "{owners:?}"
    );
    let handed = a.logs_with("handed off every pool");
    assert_eq!(handed.len(), 1, "a's log says it handed its pools over");
    let recovery = b
        .logs_with("pool recovered")
        .iter()
        .find(|v| v["fields"]["pool"] == victim.as_str())
        .map(|v| v["fields"]["elapsed_ms"].clone());
    println!(
        "hand-off: SIGTERM after {before} acknowledged calls; b held the lease {moved:?} after \
         the signal (b's recovery of the pool: {recovery:?} ms); a exited 0 after {exited:?}; \
         failures by code {codes:?}; {summary}"
    );
}
