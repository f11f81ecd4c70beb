//! PostgreSQL backend against a real database (`DATABASE_URL`, default the local test database).
//! Each test works in its own schema, dropped at the end.

// A test that cannot unwrap has failed; the panic is the report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

/// How long a wait may last before the test counts as hung: only a hang
/// fails a test, never a slow machine.
const HUNG: Duration = Duration::from_secs(120);

/// Polls `cond` until it holds; panics, naming `what`, if it never does.
async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = std::time::Instant::now() + HUNG;
    while !cond().await {
        assert!(std::time::Instant::now() < until, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

use common::{database_url, open_pg, open_pg_stalled, pg_options, rec, with_schema};
use qscheduler_store::{Error, LeaseState, Owner, RecoveryNote, Store};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_snapshot_compaction_reopen() {
    with_schema("roundtrip", |schema| async move {
        let store = open_pg(&schema, "a").await;
        store.create_pool("p", rec(1, 40)).await.expect("create");
        assert!(matches!(
            store.create_pool("p", rec(1, 40)).await,
            Err(Error::AlreadyExists { .. })
        ));
        assert_eq!(
            store.list_pools().await.expect("list"),
            vec!["p".to_string()]
        );
        assert!(store.pool_exists("p").await.expect("exists"));
        let (h, r) = store.open_pool("p").await.expect("open");
        assert_eq!(r.records, vec![(1, rec(1, 40))]);
        for s in 2..=20u64 {
            assert_eq!(
                h.append(vec![rec(s, 40)]).await.expect("append").last_seq,
                s
            );
        }
        h.write_snapshot(5, b"state@5".to_vec())
            .await
            .expect("snap");
        h.write_snapshot(12, b"state@12".to_vec())
            .await
            .expect("snap");
        let st = h
            .write_snapshot(15, b"state@15".to_vec())
            .await
            .expect("snap");
        // Keeps snapshots 12 and 15, and the log after 12.
        assert_eq!(st.records_compacted, 7, "{st:?}");
        assert!(matches!(
            h.write_snapshot(21, vec![]).await,
            Err(Error::InvalidArgument(_))
        ));
        h.append(vec![rec(21, 5), rec(22, 5)])
            .await
            .expect("append");
        h.release().await.expect("release");

        let (h, r) = store.open_pool("p").await.expect("reopen");
        assert_eq!(r.snapshot, Some((15, b"state@15".to_vec())));
        let want: Vec<(u64, Vec<u8>)> = (16..=20)
            .map(|s| (s, rec(s, 40)))
            .chain([(21, rec(21, 5)), (22, rec(22, 5))])
            .collect();
        assert_eq!(r.records, want);
        assert_eq!(h.last_seq(), 22);

        // Delete fences the open handle and frees the rows.
        store.delete_pool("p").await.expect("delete");
        assert!(matches!(
            h.append(vec![b"x".to_vec()]).await,
            Err(Error::Fenced { .. })
        ));
        assert_eq!(*h.lease().borrow(), LeaseState::Lost);
        assert!(matches!(
            store.delete_pool("p").await,
            Err(Error::NotFound { .. })
        ));
        assert!(matches!(
            store.open_pool("p").await,
            Err(Error::NotFound { .. })
        ));
        let Store::Postgres(pg) = &store else {
            panic!("not postgres")
        };
        let rows: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM qs_log) + (SELECT count(*) FROM qs_snapshot)",
        )
        .fetch_one(pg.db())
        .await
        .expect("count");
        assert_eq!(rows, 0);
        store.shutdown().await.expect("shutdown");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_is_one_statement() {
    with_schema("group", |schema| async move {
        let store = open_pg(&schema, "a").await;
        store.create_pool("g", rec(1, 10)).await.expect("create");
        let (h, _) = store.open_pool("g").await.expect("open");
        let batch: Vec<Vec<u8>> = (2..=1001).map(|s| rec(s, 100)).collect();
        let st = h.append(batch).await.expect("append");
        assert_eq!((st.last_seq, st.records), (1001, 1000));
        h.release().await.expect("release");
        let (_, r) = store.open_pool("g").await.expect("reopen");
        assert_eq!(r.records.len(), 1001);
        assert!(
            r.records
                .iter()
                .enumerate()
                .all(|(i, (s, v))| *s == i as u64 + 1 && *v == rec(*s, v.len()))
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_writer_is_fenced_after_takeover() {
    with_schema("fence", |schema| async move {
        let a = open_pg_stalled(&schema, "a", Duration::from_secs(30)).await;
        let b = open_pg(&schema, "b").await;
        a.create_pool("p", rec(1, 10)).await.expect("create");
        let (ha, _) = a.open_pool("p").await.expect("a owns");
        ha.append(vec![rec(2, 10)]).await.expect("a appends");
        // b cannot take a live lease, and learns who owns the pool.
        match b.open_pool("p").await {
            Err(Error::NotOwner { owner, .. }) => assert_eq!(
                owner,
                Some(Owner {
                    replica_id: "a".into(),
                    address: "a.example:7000".into()
                })
            ),
            Err(e) => panic!("expected NotOwner, got {e}"),
            Ok(_) => panic!("b took a live lease"),
        }
        // a's lease runs out (a is hung); b takes over.
        let Store::Postgres(pg) = &b else {
            panic!("not postgres")
        };
        sqlx::query("UPDATE qs_pool SET lease_expires_at = now() - interval '1 second'")
            .execute(pg.db())
            .await
            .expect("expire");
        let (hb, r) = b.open_pool("p").await.expect("b takes over");
        assert_eq!(r.records.len(), 2);
        let mut a_lease = ha.lease();
        // The stale writer can never append again, nor snapshot.
        assert!(matches!(
            ha.append(vec![rec(3, 10)]).await,
            Err(Error::Fenced { .. })
        ));
        assert_eq!(*a_lease.borrow_and_update(), LeaseState::Lost);
        assert!(matches!(
            ha.write_snapshot(2, b"s".to_vec()).await,
            Err(Error::Fenced { .. })
        ));
        hb.append(vec![rec(3, 20)]).await.expect("b appends");
        hb.write_snapshot(3, b"state@3".to_vec())
            .await
            .expect("b snapshots");
        assert_eq!(
            b.owner_of("p").await.expect("owner").map(|o| o.replica_id),
            Some("b".into())
        );
        hb.release().await.expect("release");
        let (_, r) = b.open_pool("p").await.expect("reopen");
        assert_eq!(r.snapshot, Some((3, b"state@3".to_vec())));
        assert!(r.records.is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_expiry_takeover_and_renewal() {
    with_schema("expiry", |schema| async move {
        // a renews (a long lease, renewed often, so that only renewals
        // that hang for a minute could lose it); c is hung (never renews,
        // a 1 s lease).
        let renewing = qscheduler_store::StoreOptions {
            lease_ttl: Duration::from_secs(60),
            lease_renew_every: Some(Duration::from_millis(100)),
            ..pg_options(&schema, "a")
        };
        let a = Store::open(&database_url(), renewing)
            .await
            .expect("open a");
        let c = open_pg_stalled(&schema, "c", Duration::from_secs(1)).await;
        let b = open_pg(&schema, "b").await;
        a.create_pool("kept", rec(1, 10)).await.expect("create");
        a.create_pool("dropped", rec(1, 10)).await.expect("create");
        let (ha, _) = a.open_pool("kept").await.expect("a owns");
        let (hc, _) = c.open_pool("dropped").await.expect("c owns");
        assert!(b.unowned_pools().await.expect("unowned").is_empty());
        let Store::Postgres(pg) = &b else {
            panic!("not postgres")
        };
        let expires = move || async move {
            sqlx::query_scalar::<_, f64>(
                "SELECT extract(epoch FROM lease_expires_at)::float8 FROM qs_pool \
                 WHERE pool_id = 'kept'",
            )
            .fetch_one(pg.db())
            .await
            .expect("lease expiry")
        };
        // a's renewals move its lease's expiry forward.
        let first = expires().await;
        eventually("a renews its lease", move || async move {
            expires().await > first
        })
        .await;
        // c's lease expires: b sees the pool unowned and takes it over.
        let b = &b;
        eventually("c's lease expires", move || async move {
            b.unowned_pools().await.expect("unowned") == vec!["dropped".to_string()]
        })
        .await;
        assert!(matches!(
            b.open_pool("kept").await,
            Err(Error::NotOwner { .. })
        ));
        assert_eq!(b.owner_of("dropped").await.expect("owner"), None);
        let (hb, _) = b.open_pool("dropped").await.expect("takeover");
        assert!(matches!(
            hc.append(vec![rec(2, 1)]).await,
            Err(Error::Fenced { .. })
        ));
        ha.append(vec![rec(2, 1)]).await.expect("a still writes");
        hb.append(vec![rec(2, 1)]).await.expect("b writes");
        // A renewal that finds the lease gone flips the handle to Lost without any write.
        let mut lease = ha.lease();
        sqlx::query(
            "UPDATE qs_pool SET lease_generation = lease_generation + 1 WHERE pool_id = 'kept'",
        )
        .execute(pg.db())
        .await
        .expect("steal");
        tokio::time::timeout(HUNG, lease.wait_for(|s| *s == LeaseState::Lost))
            .await
            .expect("renewal noticed the loss")
            .expect("watch");
        a.shutdown().await.expect("shutdown");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_owner_lookup_and_clean_release() {
    with_schema("registry", |schema| async move {
        let a = open_pg(&schema, "a").await;
        let b = open_pg(&schema, "b").await;
        let ids = |v: Vec<qscheduler_store::Replica>| {
            v.into_iter().map(|r| r.replica_id).collect::<Vec<_>>()
        };
        assert_eq!(ids(a.live_replicas().await.expect("live")), vec!["a", "b"]);
        let hung = open_pg_stalled(&schema, "h", Duration::from_secs(2)).await;
        // Registered, then gone once its heartbeat expires (it never
        // renews). Until then it may already have expired on a slow
        // machine, so only the order of the two states is asserted.
        let mut seen: Vec<Vec<String>> = Vec::new();
        let until = std::time::Instant::now() + HUNG;
        loop {
            let live = ids(a.live_replicas().await.expect("live"));
            if seen.last() != Some(&live) {
                seen.push(live.clone());
            }
            if live == ["a", "b"] {
                break;
            }
            assert!(std::time::Instant::now() < until, "never expired: {seen:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            seen.iter()
                .all(|l| l == &["a", "b", "h"] || l == &["a", "b"]),
            "{seen:?}"
        );
        drop(hung);

        a.create_pool("p", rec(1, 1)).await.expect("create");
        assert_eq!(b.owner_of("p").await.expect("owner"), None);
        assert_eq!(b.owner_of("missing").await.expect("owner"), None);
        let (ha, _) = a.open_pool("p").await.expect("open");
        assert!(matches!(
            a.open_pool("p").await,
            Err(Error::AlreadyOpen { .. })
        ));
        assert_eq!(
            b.owner_of("p").await.expect("owner"),
            Some(Owner {
                replica_id: "a".into(),
                address: "a.example:7000".into()
            })
        );
        // Clean shutdown: the pool is free at once, a leaves the registry, its handle is fenced.
        a.shutdown().await.expect("shutdown");
        assert_eq!(b.owner_of("p").await.expect("owner"), None);
        assert_eq!(ids(b.live_replicas().await.expect("live")), vec!["b"]);
        assert!(matches!(
            ha.append(vec![rec(2, 1)]).await,
            Err(Error::Fenced { .. })
        ));
        let (hb, _) = b.open_pool("p").await.expect("b takes it at once");
        hb.release().await.expect("release");
        assert_eq!(b.owner_of("p").await.expect("owner"), None);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_from_one_handle() {
    with_schema("concurrent", |schema| async move {
        let store = open_pg(&schema, "a").await;
        store
            .create_pool("p", b"first".to_vec())
            .await
            .expect("create");
        let (h, _) = store.open_pool("p").await.expect("open");
        let mut tasks = Vec::new();
        for t in 0..8u8 {
            let h = h.clone();
            tasks.push(tokio::spawn(async move {
                let mut seqs = Vec::new();
                for i in 0..10u8 {
                    let st = h
                        .append(vec![vec![t, i], vec![t, i, 1]])
                        .await
                        .expect("append");
                    seqs.push(st.last_seq);
                }
                seqs
            }));
        }
        // A snapshot running alongside the appends must not disturb them.
        h.write_snapshot(1, b"state@1".to_vec())
            .await
            .expect("snap");
        let mut last = Vec::new();
        for t in tasks {
            last.extend(t.await.expect("join"));
        }
        last.sort_unstable();
        let want: Vec<u64> = (0..80).map(|i| 3 + 2 * i).collect();
        assert_eq!(last, want);
        h.release().await.expect("release");
        let (_, r) = store.open_pool("p").await.expect("reopen");
        assert_eq!(r.snapshot, Some((1, b"state@1".to_vec())));
        assert_eq!(r.records.len(), 160);
        // Each append's two records are adjacent.
        for pair in r.records.chunks(2) {
            assert_eq!(pair[0].1[..2], pair[1].1[..2]);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_idempotent_and_concurrent_safe() {
    with_schema("migrate", |schema| async move {
        // Three replicas starting at once on an empty schema.
        let url = database_url();
        let (a, b, c) = tokio::join!(
            Store::open(&url, pg_options(&schema, "a")),
            Store::open(&url, pg_options(&schema, "b")),
            Store::open(&url, pg_options(&schema, "c")),
        );
        let a = a.expect("a");
        b.expect("b");
        c.expect("c");
        let Store::Postgres(pg) = &a else {
            panic!("not postgres")
        };
        qscheduler_store::postgres::migrate(pg.db(), Some(&schema))
            .await
            .expect("again");
        let versions: Vec<i32> =
            sqlx::query_scalar("SELECT version FROM qs_schema_version ORDER BY version")
                .fetch_all(pg.db())
                .await
                .expect("versions");
        assert_eq!(versions, vec![1, 2], "each migration recorded once");
        // A bad schema name is refused before it reaches SQL.
        let bad = qscheduler_store::StoreOptions {
            pg_schema: Some("x\"; DROP TABLE qs_pool; --".into()),
            ..pg_options(&schema, "d")
        };
        assert!(matches!(
            Store::open(&database_url(), bad).await,
            Err(Error::InvalidArgument(_))
        ));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_rows_are_reported_not_loaded() {
    with_schema("corrupt", |schema| async move {
        let store = open_pg(&schema, "a").await;
        let Store::Postgres(pg) = &store else {
            panic!("not postgres")
        };
        for p in ["rec", "snap", "fallback", "fine"] {
            store.create_pool(p, rec(1, 10)).await.expect("create");
            let (h, _) = store.open_pool(p).await.expect("open");
            for s in 2..=6 {
                h.append(vec![rec(s, 10)]).await.expect("append");
            }
            if p == "fallback" || p == "snap" {
                h.write_snapshot(2, b"state@2".to_vec())
                    .await
                    .expect("snap");
            }
            h.write_snapshot(4, b"state@4".to_vec())
                .await
                .expect("snap");
            h.release().await.expect("release");
        }
        sqlx::query("UPDATE qs_log SET record = 'x'::bytea WHERE pool_id = 'rec' AND seq = 5")
            .execute(pg.db())
            .await
            .expect("damage");
        // "snap" loses both snapshots (and its log up to 2 was compacted): nothing to fall back on.
        sqlx::query(
            "UPDATE qs_snapshot SET bytes = 'x'::bytea
             WHERE (pool_id = 'fallback' AND seq = 4) OR pool_id = 'snap'",
        )
        .execute(pg.db())
        .await
        .expect("damage");
        assert!(matches!(
            store.open_pool("rec").await,
            Err(Error::Corrupt { seq: 5, .. })
        ));
        // The failed recovery gave the lease back.
        assert_eq!(store.owner_of("rec").await.expect("owner"), None);
        match store.open_pool("snap").await {
            Err(Error::Corrupt { seq: 4, what, .. }) => {
                assert!(what.contains("snapshot"), "{what}")
            }
            Err(e) => panic!("expected Corrupt, got {e}"),
            Ok((_, r)) => panic!("loaded damaged state: {r:?}"),
        }
        let (_, r) = store.open_pool("fallback").await.expect("falls back");
        assert_eq!(r.snapshot, Some((2, b"state@2".to_vec())));
        assert_eq!(r.records.first().map(|r| r.0), Some(3));
        assert!(matches!(
            r.notes.as_slice(),
            [RecoveryNote::SkippedSnapshot { seq: 4, .. }]
        ));
        store.open_pool("fine").await.expect("other pools load");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_upload_does_not_block_appends() {
    with_schema("snapblock", |schema| async move {
        let store = open_pg(&schema, "a").await;
        store.create_pool("s", rec(1, 20)).await.expect("create");
        let (h, _) = store.open_pool("s").await.expect("open");
        let Store::Postgres(pg) = &store else {
            panic!("not postgres")
        };
        // Hold the snapshot's insert inside the database (a lock that
        // conflicts with inserts into the snapshot table only), so that the
        // upload is certainly in progress while the appends run.
        let mut blocker = pg.db().begin().await.expect("begin");
        sqlx::query("LOCK TABLE qs_snapshot IN SHARE MODE")
            .execute(&mut *blocker)
            .await
            .expect("lock the snapshot table");
        let big: Vec<u8> = (0..30u32 << 20).map(|i| (i % 251) as u8).collect();
        let snap = {
            let h = h.clone();
            tokio::spawn(async move { h.write_snapshot(1, big).await })
        };
        eventually(
            "the snapshot's insert waits for the lock",
            move || async move {
                sqlx::query_scalar::<_, i64>(
                    "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
                 WHERE NOT l.granted AND l.relation = 'qs_snapshot'::regclass",
                )
                .fetch_one(pg.db())
                .await
                .expect("pg_locks")
                    > 0
            },
        )
        .await;
        let appended = 5;
        for _ in 0..appended {
            h.append(vec![rec(h.last_seq() + 1, 20)])
                .await
                .expect("append while the snapshot is being written");
        }
        assert!(
            !snap.is_finished(),
            "the snapshot did not wait for the lock"
        );
        blocker.rollback().await.expect("unlock");
        let st = snap.await.expect("join").expect("snapshot");
        println!("a 30 MiB snapshot uploaded in {:?}", st.elapsed);
        h.release().await.expect("release");
        let (_, r) = store.open_pool("s").await.expect("reopen");
        assert_eq!(r.snapshot.map(|(s, b)| (s, b.len())), Some((1, 30 << 20)));
        assert_eq!(r.records.len(), appended);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_renewals_hang_fences_itself() {
    with_schema("selffence", |schema| async move {
        let opts = qscheduler_store::StoreOptions {
            lease_ttl: Duration::from_millis(1500),
            lease_renew_every: Some(Duration::from_millis(300)),
            ..pg_options(&schema, "a")
        };
        let a = Store::open(&database_url(), opts).await.expect("open a");
        a.create_pool("p", rec(1, 10)).await.expect("create");
        let (h, _) = a.open_pool("p").await.expect("open");
        let mut lease = h.lease();
        // Renewals that find the database slow (here: the pool's row locked) must not keep the
        // handle believing it holds a lease that may have expired.
        let Store::Postgres(pg) = &a else {
            panic!("not postgres")
        };
        let mut blocker = pg.db().begin().await.expect("begin");
        sqlx::query("SELECT 1 FROM qs_pool WHERE pool_id = 'p' FOR UPDATE")
            .execute(&mut *blocker)
            .await
            .expect("lock the row");
        let started = std::time::Instant::now();
        tokio::time::timeout(HUNG, lease.wait_for(|s| *s == LeaseState::Lost))
            .await
            .expect("the handle fenced itself while renewals hung")
            .expect("watch");
        // A figure, not an assertion: a loaded machine may be slower.
        println!(
            "fenced {:?} after renewals started to hang",
            started.elapsed()
        );
        blocker.rollback().await.expect("unlock");
        assert!(matches!(
            h.append(vec![rec(2, 1)]).await,
            Err(Error::Fenced { .. })
        ));
        // Nothing else happened: the replica can take the pool back.
        drop(h);
        let (h, r) = a.open_pool("p").await.expect("reopen");
        assert_eq!(r.last_seq(), 1);
        h.release().await.expect("release");
        a.shutdown().await.expect("shutdown");
    })
    .await;
}

/// A snapshot's extra image comes back with it (the column an additive
/// migration added), and a snapshot without one has none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_extras_come_back_with_their_snapshot() {
    with_schema("extras", |schema| async move {
        let store = open_pg(&schema, "a").await;
        store.create_pool("p", rec(1, 40)).await.expect("create");
        let (h, _) = store.open_pool("p").await.expect("open");
        for s in 2..=10u64 {
            h.append(vec![rec(s, 40)]).await.expect("append");
        }
        h.write_snapshot_with_extra(6, b"state@6".to_vec(), Some(b"figures@6".to_vec()))
            .await
            .expect("snap 6");
        h.release().await.expect("release");
        let (h, r) = store.open_pool("p").await.expect("reopen");
        assert_eq!(r.snapshot, Some((6, b"state@6".to_vec())));
        assert_eq!(r.snapshot_extra, Some(b"figures@6".to_vec()));
        h.write_snapshot(9, b"state@9".to_vec())
            .await
            .expect("snap 9");
        h.release().await.expect("release");
        let (h, r) = store.open_pool("p").await.expect("reopen");
        assert_eq!(r.snapshot, Some((9, b"state@9".to_vec())));
        assert_eq!(r.snapshot_extra, None);
        h.write_snapshot_with_extra(10, b"state@10".to_vec(), Some(b"figures@10".to_vec()))
            .await
            .expect("snap 10");
        h.release().await.expect("release");
        // Damage to the extra: the snapshot loads, the extra is skipped.
        let Store::Postgres(pg) = &store else {
            panic!("not postgres")
        };
        sqlx::query("UPDATE qs_snapshot SET extra = set_byte(extra, 6, 0) WHERE seq = 10")
            .execute(pg.db())
            .await
            .expect("damage");
        let (_h, r) = store.open_pool("p").await.expect("reopen after damage");
        assert_eq!(r.snapshot, Some((10, b"state@10".to_vec())));
        assert_eq!(r.snapshot_extra, None);
        assert!(
            r.notes
                .iter()
                .any(|n| matches!(n, RecoveryNote::SkippedSnapshotExtra { seq: 10, .. })),
            "{:?}",
            r.notes
        );
        store.shutdown().await.expect("shutdown");
    })
    .await;
}
