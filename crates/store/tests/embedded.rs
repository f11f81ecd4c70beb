//! Embedded backend: round trips, catalogue, locking, group commit, damaged and crashed pool files.

// A test that cannot unwrap has failed; the panic is the report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::rec;
use qscheduler_store::{Error, LeaseState, RecoveryNote, Store, StoreOptions};

fn opts() -> StoreOptions {
    StoreOptions::default()
}

async fn open(dir: &Path, o: StoreOptions) -> Store {
    Store::open(dir.to_str().expect("utf-8 temp path"), o)
        .await
        .expect("open store")
}

fn pool_dir(root: &Path, pool: &str) -> PathBuf {
    // Plain lower-case ids map to themselves.
    root.join("pools").join(pool)
}

fn pool_file(root: &Path, pool: &str) -> PathBuf {
    pool_dir(root, pool).join("pool.redb")
}

/// Flips the last byte of every occurrence of `needle` in the file (the live copy of a value and
/// any stale copy in pages redb has freed) and returns how many there were.
fn flip_byte_of(path: &Path, needle: &[u8]) -> usize {
    let mut b = fs::read(path).expect("read");
    let hits: Vec<usize> = b
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect();
    assert!(!hits.is_empty(), "needle in file");
    for at in &hits {
        b[at + needle.len() - 1] ^= 0x55;
    }
    fs::write(path, b).expect("write");
    hits.len()
}

/// Copies a data directory while its store is open: the files as a crash (kill -9) at this
/// moment would leave them, since every acknowledged commit is already in the file.
fn crash_image(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("mkdir");
    for entry in fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            crash_image(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).expect("copy");
        }
    }
}

#[tokio::test]
async fn round_trip_snapshot_compaction_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = StoreOptions {
        keep_snapshots: 2,
        ..opts()
    };
    let store = open(dir.path(), o.clone()).await;
    store.create_pool("p", rec(1, 40)).await.expect("create");
    let (h, r) = store.open_pool("p").await.expect("open");
    assert_eq!(r.snapshot, None);
    assert_eq!(r.records, vec![(1, rec(1, 40))]);
    for s in 2..=30u64 {
        let st = h.append(vec![rec(s, 40)]).await.expect("append");
        assert_eq!(st.last_seq, s);
    }
    assert_eq!(h.last_seq(), 30);
    let st = h
        .write_snapshot(10, b"state@10".to_vec())
        .await
        .expect("snap 10");
    // With fewer than 2 snapshots the whole log is the fallback.
    assert_eq!(st.records_compacted, 0);
    let st = h
        .write_snapshot(25, b"state@25".to_vec())
        .await
        .expect("snap 25");
    assert_eq!(
        st.records_compacted, 10,
        "the log up to the oldest kept snapshot"
    );
    let st = h
        .write_snapshot(28, b"state@28".to_vec())
        .await
        .expect("snap 28");
    assert_eq!(st.records_compacted, 15, "records 11..=25: {st:?}");
    // Snapshots older than the stored one are refused; beyond the log too.
    assert!(matches!(
        h.write_snapshot(20, vec![]).await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        h.write_snapshot(31, vec![]).await,
        Err(Error::InvalidArgument(_))
    ));
    h.append(vec![rec(31, 10), rec(32, 10)])
        .await
        .expect("append");
    drop(h);
    drop(store);

    let store = open(dir.path(), o).await;
    let (h, r) = store.open_pool("p").await.expect("reopen");
    assert_eq!(r.snapshot, Some((28, b"state@28".to_vec())));
    let expect: Vec<(u64, Vec<u8>)> = (29..=30)
        .map(|s| (s, rec(s, 40)))
        .chain([(31, rec(31, 10)), (32, rec(32, 10))])
        .collect();
    assert_eq!(r.records, expect);
    assert!(r.notes.is_empty());
    assert_eq!(h.last_seq(), 32);
    assert_eq!(
        h.append(vec![rec(33, 5)]).await.expect("append").last_seq,
        33
    );
}

#[tokio::test]
async fn catalogue_create_delete_list() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), opts()).await;
    let weird = "Pool/../with spaces & ünïcode";
    let long = "x".repeat(600);
    for p in ["b", "a", weird, long.as_str()] {
        store.create_pool(p, rec(1, 3)).await.expect("create");
    }
    assert!(matches!(
        store.create_pool("a", rec(1, 3)).await,
        Err(Error::AlreadyExists { .. })
    ));
    assert!(matches!(
        store.create_pool("", rec(1, 3)).await,
        Err(Error::InvalidArgument(_))
    ));
    let mut want = vec!["a".to_string(), "b".into(), weird.into(), long.clone()];
    want.sort();
    assert_eq!(store.list_pools().await.expect("list"), want);
    assert!(store.pool_exists(weird).await.expect("exists"));
    assert!(!store.pool_exists("zzz").await.expect("exists"));

    let (h, r) = store.open_pool(&long).await.expect("open long");
    assert_eq!(r.records.len(), 1);
    assert!(matches!(
        store.open_pool(&long).await,
        Err(Error::AlreadyOpen { .. })
    ));
    assert_eq!(
        store
            .owner_of(&long)
            .await
            .expect("owner")
            .map(|o| o.replica_id),
        Some(StoreOptions::default().replica_id)
    );
    assert!(
        !store
            .unowned_pools()
            .await
            .expect("unowned")
            .contains(&long)
    );
    let mut lease = h.lease();
    // Deleting an open pool fences its handle.
    store.delete_pool(&long).await.expect("delete");
    assert!(matches!(
        h.append(vec![b"x".to_vec()]).await,
        Err(Error::Fenced { .. })
    ));
    assert_eq!(*lease.borrow_and_update(), LeaseState::Lost);
    assert!(matches!(
        store.delete_pool(&long).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        store.open_pool("missing").await,
        Err(Error::NotFound { .. })
    ));
    // Re-creating a deleted pool starts afresh.
    store.create_pool(&long, rec(1, 7)).await.expect("recreate");
    let (_h2, r) = store.open_pool(&long).await.expect("open");
    assert_eq!(r.records, vec![(1, rec(1, 7))]);
    // Dropping every handle (without release) lets the pool be opened again.
    let (h, _) = store.open_pool("a").await.expect("open a");
    drop(h);
    let (h, _) = store.open_pool("a").await.expect("reopen a");
    h.release().await.expect("release");
    store.open_pool("a").await.expect("open after release");
}

#[tokio::test]
async fn data_dir_is_locked_by_one_owner() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), opts()).await;
    let second = Store::open(dir.path().to_str().expect("path"), opts()).await;
    match second {
        Err(e @ Error::Locked { .. }) => assert!(e.to_string().contains("in use")),
        Err(e) => panic!("expected Locked, got {e}"),
        Ok(_) => panic!("a second owner opened the data directory"),
    }
    // An open pool keeps the directory locked even after the store itself is dropped.
    store.create_pool("p", rec(1, 3)).await.expect("create");
    let (h, _) = store.open_pool("p").await.expect("open");
    drop(store);
    assert!(matches!(
        Store::open(dir.path().to_str().expect("path"), opts()).await,
        Err(Error::Locked { .. })
    ));
    drop(h);
    open(dir.path(), opts()).await;
}

#[tokio::test]
async fn group_commit_many_records_one_append() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), opts()).await;
    store.create_pool("g", rec(1, 10)).await.expect("create");
    let (h, _) = store.open_pool("g").await.expect("open");
    let batch: Vec<Vec<u8>> = (2..=1001).map(|s| rec(s, 100)).collect();
    let payload: u64 = batch.iter().map(|r| r.len() as u64).sum();
    let st = h.append(batch).await.expect("append");
    assert_eq!((st.last_seq, st.records), (1001, 1000));
    // Bytes handed to the engine grow with the records (payload + key + checksum), nothing else.
    assert_eq!(st.bytes, payload + 1000 * 12);
    let small = h.append(vec![rec(1002, 100)]).await.expect("append");
    assert_eq!(small.bytes, 100 + 12);
    drop(h);
    let (_, r) = store.open_pool("g").await.expect("reopen");
    assert_eq!(r.records.len(), 1002);
    assert!(
        r.records
            .iter()
            .enumerate()
            .all(|(i, (s, v))| *s == i as u64 + 1 && *v == rec(*s, v.len()))
    );
}

/// Creates pool `name` with records 1..=5, each appended alone, and returns its file.
async fn five_records(store: &Store, root: &Path, name: &str) -> PathBuf {
    store.create_pool(name, rec(1, 50)).await.expect("create");
    let (h, _) = store.open_pool(name).await.expect("open");
    for s in 2..=5 {
        h.append(vec![rec(s, 50)]).await.expect("append");
    }
    h.release().await.expect("release");
    pool_file(root, name)
}

#[tokio::test]
async fn flipped_byte_in_the_middle_is_corrupt_and_other_pools_still_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), opts()).await;
    let file = five_records(&store, dir.path(), "bad").await;
    five_records(&store, dir.path(), "good").await;
    flip_byte_of(&file, b"record-00000003|");
    match store.open_pool("bad").await {
        Err(Error::Corrupt { pool, seq, what }) => {
            assert_eq!((pool.as_str(), seq), ("bad", 3), "{what}");
            assert!(what.contains("checksum"), "{what}");
        }
        Err(e) => panic!("expected Corrupt, got {e}"),
        Ok((_, r)) => panic!("loaded damaged state: {r:?}"),
    }
    // Still refused on a second try (nothing was "repaired" away).
    assert!(matches!(
        store.open_pool("bad").await,
        Err(Error::Corrupt { seq: 3, .. })
    ));
    let (_, r) = store.open_pool("good").await.expect("other pool loads");
    assert_eq!(r.records.len(), 5);
    // The damage is also reported from a fresh process.
    drop(store);
    let store = open(dir.path(), opts()).await;
    assert!(matches!(
        store.open_pool("bad").await,
        Err(Error::Corrupt { seq: 3, .. })
    ));
}

#[tokio::test]
async fn corrupt_snapshot_falls_back_or_fails_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let two = StoreOptions {
        keep_snapshots: 2,
        ..opts()
    };
    let store = open(dir.path(), two.clone()).await;
    store.create_pool("fb", rec(1, 20)).await.expect("create");
    let (h, _) = store.open_pool("fb").await.expect("open");
    for s in 2..=9 {
        h.append(vec![rec(s, 20)]).await.expect("append");
    }
    h.write_snapshot(3, b"state@3".to_vec())
        .await
        .expect("snap");
    h.write_snapshot(6, b"state@6".to_vec())
        .await
        .expect("snap");
    h.write_snapshot(8, b"state@8".to_vec())
        .await
        .expect("snap");
    h.release().await.expect("release");
    flip_byte_of(&pool_file(dir.path(), "fb"), b"state@8");
    let (h, r) = store.open_pool("fb").await.expect("falls back");
    assert_eq!(r.snapshot, Some((6, b"state@6".to_vec())));
    assert_eq!(
        r.records.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![7, 8, 9]
    );
    assert!(matches!(
        r.notes.as_slice(),
        [RecoveryNote::SkippedSnapshot { seq: 8, .. }]
    ));
    // A new snapshot at the damaged one's seq replaces it.
    h.write_snapshot(8, b"state@8 again".to_vec())
        .await
        .expect("snap");
    h.release().await.expect("release");
    let (_, r) = store.open_pool("fb").await.expect("reopen");
    assert_eq!(r.snapshot, Some((8, b"state@8 again".to_vec())));

    // With one snapshot kept, the log before it is gone: nothing to fall back on.
    let one = StoreOptions {
        keep_snapshots: 1,
        ..two
    };
    drop(store);
    let store = open(dir.path(), one).await;
    store.create_pool("solo", rec(1, 20)).await.expect("create");
    store
        .create_pool("other", rec(1, 20))
        .await
        .expect("create");
    let (h, _) = store.open_pool("solo").await.expect("open");
    for s in 2..=6 {
        h.append(vec![rec(s, 20)]).await.expect("append");
    }
    h.write_snapshot(5, b"state@5".to_vec())
        .await
        .expect("snap");
    h.release().await.expect("release");
    flip_byte_of(&pool_file(dir.path(), "solo"), b"state@5");
    match store.open_pool("solo").await {
        Err(Error::Corrupt { pool, seq, what }) => {
            assert_eq!((pool.as_str(), seq), ("solo", 5));
            assert!(what.contains("snapshot"), "{what}");
        }
        Err(e) => panic!("expected Corrupt, got {e}"),
        Ok((_, r)) => panic!("loaded without the snapshot: {r:?}"),
    }
    store.open_pool("other").await.expect("other pool loads");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_open_in_parallel_and_delete_waits_for_an_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), opts()).await;
    for i in 0..8 {
        store
            .create_pool(&format!("p{i}"), rec(1, 10))
            .await
            .expect("create");
    }
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .open_pool(&format!("p{i}"))
                .await
                .map(|(h, r)| (h, r.records.len()))
        }));
    }
    // Racing a delete against the opens: it either fences an opened handle or wins outright.
    let del = {
        let store = store.clone();
        tokio::spawn(async move { store.delete_pool("p3").await })
    };
    let mut handles = Vec::new();
    for t in tasks {
        match t.await.expect("join") {
            Ok((h, n)) => {
                assert_eq!(n, 1);
                handles.push(h);
            }
            Err(Error::NotFound { pool }) => assert_eq!(pool, "p3"),
            Err(e) => panic!("open failed: {e}"),
        }
    }
    del.await.expect("join").expect("delete");
    for h in handles {
        let r = h.append(vec![rec(2, 10)]).await;
        if h.pool() == "p3" {
            assert!(matches!(r, Err(Error::Fenced { .. })));
        } else {
            r.expect("append");
        }
    }
    assert_eq!(store.list_pools().await.expect("list").len(), 7);
}

/// What recovery of a damaged file may do: fail for that pool with a clear error, or give back the
/// last committed state (or, when it says so with a torn-tail note, the state of an earlier
/// commit). Never a panic, never records that differ from what was written.
fn acceptable(
    label: &str,
    result: Result<(qscheduler_store::PoolHandle, qscheduler_store::Recovered), Error>,
    all: &[(u64, Vec<u8>)],
) -> bool {
    match result {
        Ok((_, r)) => {
            let prefix = all.starts_with(&r.records) && r.snapshot.is_none();
            let whole = r.records == all;
            let noted = r
                .notes
                .iter()
                .any(|n| matches!(n, RecoveryNote::TornTail { .. }));
            assert!(
                whole || (prefix && noted),
                "{label}: recovered a wrong state: {} records, notes {:?}",
                r.records.len(),
                r.notes
            );
            true
        }
        Err(Error::Corrupt { pool, what, .. }) => {
            assert!(!what.is_empty() && !pool.is_empty(), "{label}");
            false
        }
        Err(Error::Io { .. }) | Err(Error::Internal(_)) => false,
        Err(e) => panic!("{label}: unexpected error {e}"),
    }
}

#[tokio::test]
async fn truncated_or_foreign_pool_files_fail_that_pool_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), opts()).await;
    let file = five_records(&store, dir.path(), "t").await;
    five_records(&store, dir.path(), "good").await;
    let all: Vec<(u64, Vec<u8>)> = (1..=5).map(|s| (s, rec(s, 50))).collect();
    let original = fs::read(&file).expect("read");
    let len = original.len();
    for cut in [0, 1, 100, 511, 4096, len / 2, len - 4096, len - 1] {
        fs::write(&file, &original[..cut]).expect("truncate");
        let r = store.open_pool("t").await;
        if let Err(e) = &r {
            assert!(e.to_string().contains("\"t\""), "names the pool: {e}");
        }
        acceptable(&format!("cut at {cut}"), r, &all);
    }
    fs::write(&file, vec![0x5a; 64 << 10]).expect("garbage");
    match store.open_pool("t").await {
        Err(Error::Corrupt { .. }) => {}
        other => panic!("expected Corrupt, got {:?}", other.map(|(_, r)| r)),
    }
    fs::remove_file(&file).expect("remove");
    match store.open_pool("t").await {
        Err(Error::Corrupt { what, .. }) => assert!(what.contains("missing"), "{what}"),
        other => panic!("expected Corrupt, got {:?}", other.map(|(_, r)| r)),
    }
    let (_, r) = store.open_pool("good").await.expect("other pool loads");
    assert_eq!(r.records, all);
}

/// Byte damage anywhere in the file, after a clean close and in a crash image: recovery never
/// panics and never returns records that were not written.
#[tokio::test]
async fn byte_damage_anywhere_never_panics_nor_returns_wrong_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clean = dir.path().join("clean");
    let crashed = dir.path().join("crashed");
    let store = open(&clean, opts()).await;
    store.create_pool("d", rec(1, 50)).await.expect("create");
    let (h, _) = store.open_pool("d").await.expect("open");
    for s in 2..=40 {
        h.append(vec![rec(s, 50)]).await.expect("append");
    }
    crash_image(&clean, &crashed);
    h.release().await.expect("release");
    drop(store);
    let all: Vec<(u64, Vec<u8>)> = (1..=40).map(|s| (s, rec(s, 50))).collect();
    for root in [&clean, &crashed] {
        let file = pool_file(root, "d");
        let original = fs::read(&file).expect("read");
        let mut loaded = 0;
        let mut refused = 0;
        // A pseudo-random walk over the file, denser at the start (headers, commit slots).
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..120usize {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let at = if i < 40 {
                (x % 4096) as usize
            } else {
                (x % original.len() as u64) as usize
            };
            let mut damaged = original.clone();
            damaged[at] ^= 1 << (x >> 61);
            let scratch = tempfile::tempdir().expect("tempdir");
            crash_image(root, scratch.path());
            fs::write(pool_file(scratch.path(), "d"), &damaged).expect("write");
            let store = open(scratch.path(), opts()).await;
            if acceptable(
                &format!("{} at {at}", root.display()),
                store.open_pool("d").await,
                &all,
            ) {
                loaded += 1;
            } else {
                refused += 1;
            }
        }
        println!("{}: {loaded} loaded, {refused} refused", root.display());
    }
}

#[tokio::test]
async fn a_crash_image_recovers_every_acknowledged_append() {
    let dir = tempfile::tempdir().expect("tempdir");
    let live = dir.path().join("live");
    let image = dir.path().join("image");
    let store = open(&live, opts()).await;
    store.create_pool("c", rec(1, 30)).await.expect("create");
    let (h, _) = store.open_pool("c").await.expect("open");
    for s in 2..=20 {
        h.append(vec![rec(s, 30)]).await.expect("append");
    }
    h.write_snapshot(15, b"state@15".to_vec())
        .await
        .expect("snapshot");
    h.append(vec![rec(21, 30), rec(22, 30)])
        .await
        .expect("append");
    crash_image(&live, &image);
    let store2 = open(&image, opts()).await;
    let (h2, r) = store2.open_pool("c").await.expect("recovers");
    assert_eq!(r.snapshot, Some((15, b"state@15".to_vec())));
    assert_eq!(
        r.records.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        (16..=22).collect::<Vec<_>>()
    );
    assert!(r.notes.is_empty(), "{:?}", r.notes);
    assert_eq!(
        h2.append(vec![rec(23, 5)]).await.expect("append").last_seq,
        23
    );
}

#[tokio::test]
async fn a_data_dir_of_the_old_format_is_refused_with_advice() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("FORMAT"), "qscheduler-store embedded 1\n").expect("write");
    match Store::open(dir.path().to_str().expect("path"), opts()).await {
        Err(Error::InvalidArgument(m)) => {
            assert!(m.contains("older qscheduler"), "{m}");
            assert!(m.contains("empty data directory"), "{m}");
        }
        Err(e) => panic!("expected InvalidArgument, got {e}"),
        Ok(_) => panic!("opened a data directory of the old format"),
    }
}

/// A snapshot's extra image comes back with it, goes with it, and a damaged
/// one is left out with a note instead of failing the pool.
#[tokio::test]
async fn snapshot_extras_come_back_with_their_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = StoreOptions {
        keep_snapshots: 2,
        ..opts()
    };
    let store = open(dir.path(), o.clone()).await;
    store.create_pool("p", rec(1, 40)).await.expect("create");
    let (h, _) = store.open_pool("p").await.expect("open");
    for s in 2..=12u64 {
        h.append(vec![rec(s, 40)]).await.expect("append");
    }
    h.write_snapshot_with_extra(5, b"state@5".to_vec(), Some(b"figures@5".to_vec()))
        .await
        .expect("snap 5");
    h.write_snapshot(8, b"state@8".to_vec())
        .await
        .expect("snap 8");
    h.write_snapshot_with_extra(10, b"state@10".to_vec(), Some(b"figures@10".to_vec()))
        .await
        .expect("snap 10");
    drop(h);
    drop(store);

    let store = open(dir.path(), o.clone()).await;
    let (h, r) = store.open_pool("p").await.expect("reopen");
    assert_eq!(r.snapshot, Some((10, b"state@10".to_vec())));
    assert_eq!(r.snapshot_extra, Some(b"figures@10".to_vec()));
    assert!(r.notes.is_empty(), "{:?}", r.notes);
    // A snapshot without an extra has none, even after one that had.
    h.write_snapshot(12, b"state@12".to_vec())
        .await
        .expect("snap 12");
    drop(h);
    drop(store);
    let store = open(dir.path(), o.clone()).await;
    let (_h, r) = store.open_pool("p").await.expect("reopen");
    assert_eq!(r.snapshot, Some((12, b"state@12".to_vec())));
    assert_eq!(r.snapshot_extra, None);
    drop(_h);
    drop(store);
    // Damage inside the file is caught by redb's own page checksums
    // before the extra's checksum is read, and fails the pool as any damage
    // to its file does (see the corruption tests). An extra whose own frame
    // is wrong (a value rewritten, a checksum that does not match) is
    // skipped with a note: the figures start afresh, the pool recovers.
    {
        const EXTRAS: redb::TableDefinition<u64, &[u8]> =
            redb::TableDefinition::new("snapshot_extra");
        let db = redb::Database::open(pool_file(dir.path(), "p")).expect("open the pool file");
        let tx = db.begin_write().expect("write");
        {
            let mut t = tx.open_table(EXTRAS).expect("extras");
            t.insert(12u64, &b"\x01\x02\x03\x04not the framed image"[..])
                .expect("insert");
        }
        tx.commit().expect("commit");
    }
    let store = open(dir.path(), o.clone()).await;
    let (_h, r) = store
        .open_pool("p")
        .await
        .expect("reopen after a bad extra");
    assert_eq!(r.snapshot, Some((12, b"state@12".to_vec())));
    assert_eq!(r.snapshot_extra, None);
    assert!(
        matches!(
            r.notes.as_slice(),
            [RecoveryNote::SkippedSnapshotExtra { seq: 12, .. }]
        ),
        "{:?}",
        r.notes
    );
}
