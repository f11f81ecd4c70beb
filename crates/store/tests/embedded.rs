//! Embedded backend: round trips, catalogue, locking, group commit, corruption and torn tails.

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

fn files(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .expect("read pool dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .collect();
    v.sort();
    v
}

fn flip_byte_of(path: &Path, needle: &[u8]) {
    let mut b = fs::read(path).expect("read");
    let at = b
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("needle in file");
    b[at + needle.len() - 1] ^= 0x55;
    fs::write(path, b).expect("write");
}

#[tokio::test]
async fn round_trip_snapshot_compaction_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = StoreOptions {
        segment_bytes: 300,
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
    let segs_before = files(&pool_dir(dir.path(), "p"), "log-").len();
    assert!(segs_before > 3, "segments roll: {segs_before}");
    h.write_snapshot(10, b"state@10".to_vec())
        .await
        .expect("snap 10");
    h.write_snapshot(25, b"state@25".to_vec())
        .await
        .expect("snap 25");
    let st = h
        .write_snapshot(28, b"state@28".to_vec())
        .await
        .expect("snap 28");
    assert!(
        st.records_compacted > 0,
        "compaction deleted records: {st:?}"
    );
    let pd = pool_dir(dir.path(), "p");
    let snaps = files(&pd, "snap-");
    assert_eq!(snaps.len(), 2, "keeps 2 snapshots: {snaps:?}");
    assert!(files(&pd, "log-").len() < segs_before);
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
    // Bytes written grow with the records (payload + fixed framing), nothing else.
    assert_eq!(st.bytes, payload + 1000 * 32);
    let small = h.append(vec![rec(1002, 100)]).await.expect("append");
    assert_eq!(small.bytes, 100 + 32);
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

/// Creates pool `name` with records 1..=5, each appended alone, and returns the segment path.
async fn five_records(store: &Store, root: &Path, name: &str) -> PathBuf {
    store.create_pool(name, rec(1, 50)).await.expect("create");
    let (h, _) = store.open_pool(name).await.expect("open");
    for s in 2..=5 {
        h.append(vec![rec(s, 50)]).await.expect("append");
    }
    h.release().await.expect("release");
    files(&pool_dir(root, name), "log-").remove(0)
}

#[tokio::test]
async fn flipped_byte_in_the_middle_is_corrupt_and_other_pools_still_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), opts()).await;
    let seg = five_records(&store, dir.path(), "bad").await;
    five_records(&store, dir.path(), "good").await;
    flip_byte_of(&seg, b"record-00000003|");
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
async fn damaged_frame_header_in_the_middle_is_corrupt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), opts()).await;
    let seg = five_records(&store, dir.path(), "hdr").await;
    // Break the length field of record 4 (the 32 bytes before its payload).
    let mut b = fs::read(&seg).expect("read");
    let at = b
        .windows(16)
        .position(|w| w == b"record-00000004|")
        .expect("record 4");
    b[at - 32] ^= 0xff;
    b[at - 31] ^= 0xff;
    fs::write(&seg, b).expect("write");
    assert!(matches!(
        store.open_pool("hdr").await,
        Err(Error::Corrupt { seq: 4, .. })
    ));
}

#[tokio::test]
async fn torn_tail_is_cut_and_the_torn_append_dropped_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), opts()).await;
    let seg = five_records(&store, dir.path(), "t").await;
    let (h, _) = store.open_pool("t").await.expect("open");
    h.append(vec![rec(6, 50), rec(7, 50), rec(8, 50)])
        .await
        .expect("append");
    h.release().await.expect("release");
    // A crash while writing the last append: its last record is cut mid-way.
    let len = fs::metadata(&seg).expect("meta").len();
    let f = fs::OpenOptions::new().write(true).open(&seg).expect("open");
    f.set_len(len - 20).expect("truncate");
    drop(f);

    let (h, r) = store.open_pool("t").await.expect("recovers");
    assert_eq!(
        r.records.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert!(matches!(
        r.notes.as_slice(),
        [RecoveryNote::TornTail {
            last_good_seq: 5,
            ..
        }]
    ));
    // The log goes on from the cut.
    assert_eq!(h.append(vec![rec(6, 9)]).await.expect("append").last_seq, 6);
    h.release().await.expect("release");
    let (_, r) = store.open_pool("t").await.expect("reopen");
    assert_eq!(r.records.last(), Some(&(6, rec(6, 9))));
    assert!(r.notes.is_empty());
}

#[tokio::test]
async fn tail_cut_at_a_record_boundary_drops_the_incomplete_append() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), opts()).await;
    let seg = five_records(&store, dir.path(), "b").await;
    let len5 = fs::metadata(&seg).expect("meta").len();
    let (h, _) = store.open_pool("b").await.expect("open");
    h.append(vec![rec(6, 50), rec(7, 50)])
        .await
        .expect("append");
    h.release().await.expect("release");
    // Keep record 6 whole but lose record 7: the append is incomplete, so 6 goes too.
    let f = fs::OpenOptions::new().write(true).open(&seg).expect("open");
    f.set_len(len5 + 32 + 50).expect("truncate");
    drop(f);
    let (_, r) = store.open_pool("b").await.expect("recovers");
    assert_eq!(r.records.len(), 5);
    assert!(matches!(
        r.notes.as_slice(),
        [RecoveryNote::TornTail {
            last_good_seq: 5,
            bytes_dropped: 82
        }]
    ));
}

#[tokio::test]
async fn garbage_after_the_last_append_is_a_torn_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), opts()).await;
    let seg = five_records(&store, dir.path(), "z").await;
    // Zeros where a crash extended the file without writing the data.
    let mut b = fs::read(&seg).expect("read");
    b.extend_from_slice(&[0u8; 4096]);
    fs::write(&seg, b).expect("write");
    let (_, r) = store.open_pool("z").await.expect("recovers");
    assert_eq!(r.records.len(), 5);
    assert!(matches!(
        r.notes.as_slice(),
        [RecoveryNote::TornTail {
            last_good_seq: 5,
            bytes_dropped: 4096
        }]
    ));
}

/// A crash right after a new segment file was created, before its header was written, leaves a
/// segment shorter than a header. Recovery removes it; appends must then continue at the end of
/// the segment before it, not at its start (found by the `log_record_decode` fuzz target: the
/// next append overwrote the previous segment's header and records).
#[tokio::test]
async fn appends_after_a_torn_new_segment_continue_the_previous_one() {
    for torn in [&b""[..], &b"QSLOG"[..]] {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path(), opts()).await;
        let seg = five_records(&store, dir.path(), "t").await;
        let next = seg.with_file_name(format!("log-{:020}.seg", 6));
        fs::write(&next, torn).expect("write torn segment");

        let (h, r) = store.open_pool("t").await.expect("recovers");
        assert_eq!(r.records.len(), 5);
        assert!(!next.exists(), "the torn segment is removed");
        h.append(vec![rec(6, 10)]).await.expect("append");
        h.release().await.expect("release");

        let (_, r) = store
            .open_pool("t")
            .await
            .expect("recovers after the append");
        assert!(r.notes.is_empty(), "{:?}", r.notes);
        assert_eq!(r.records.len(), 6);
        assert_eq!(r.records[5], (6, rec(6, 10)));
    }
}

/// The same crash when the only segment recovery reads is the torn one (the segments before it
/// are covered by a snapshot): appends start a fresh segment rather than writing over the start
/// of an older one.
#[tokio::test]
async fn appends_after_a_torn_segment_behind_a_snapshot_start_a_new_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = StoreOptions {
        keep_snapshots: 1,
        ..opts()
    };
    let store = open(dir.path(), o).await;
    let seg = five_records(&store, dir.path(), "s").await;
    let (h, _) = store.open_pool("s").await.expect("open");
    h.write_snapshot(5, b"state@5".to_vec())
        .await
        .expect("snapshot");
    h.release().await.expect("release");
    let next = seg.with_file_name(format!("log-{:020}.seg", 6));
    fs::write(&next, b"").expect("write torn segment");

    let (h, r) = store.open_pool("s").await.expect("recovers");
    assert_eq!(r.snapshot, Some((5, b"state@5".to_vec())));
    assert!(r.records.is_empty());
    h.append(vec![rec(6, 10)]).await.expect("append");
    h.release().await.expect("release");

    let (_, r) = store
        .open_pool("s")
        .await
        .expect("recovers after the append");
    assert_eq!(r.snapshot, Some((5, b"state@5".to_vec())));
    assert_eq!(r.records, vec![(6, rec(6, 10))]);
}

#[tokio::test]
async fn corrupt_snapshot_falls_back_or_fails_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Every append starts a segment, so compaction really deletes the log.
    let two = StoreOptions {
        segment_bytes: 1,
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
    let snap8 = pool_dir(dir.path(), "fb").join(format!("snap-{:020}.snap", 8));
    flip_byte_of(&snap8, b"state@8");
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
    let snap5 = pool_dir(dir.path(), "solo").join(format!("snap-{:020}.snap", 5));
    flip_byte_of(&snap5, b"state@5");
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

#[tokio::test]
async fn snapshot_write_does_not_block_appends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), opts()).await;
    store.create_pool("s", rec(1, 20)).await.expect("create");
    let (h, _) = store.open_pool("s").await.expect("open");
    let big = vec![7u8; 40 << 20];
    let snap = {
        let h = h.clone();
        tokio::spawn(async move { h.write_snapshot(1, big).await })
    };
    let mut appended = 0;
    while !snap.is_finished() {
        h.append(vec![rec(h.last_seq() + 1, 20)])
            .await
            .expect("append");
        appended += 1;
    }
    let st = snap.await.expect("join").expect("snapshot");
    println!(
        "appends while a 40 MiB snapshot was written ({:?}): {appended}",
        st.elapsed
    );
    assert!(appended > 1, "appends stalled behind the snapshot");
    drop(h);
    let (_, r) = store.open_pool("s").await.expect("reopen");
    assert_eq!(r.snapshot.map(|(s, b)| (s, b.len())), Some((1, 40 << 20)));
    assert_eq!(r.records.len(), appended);
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
