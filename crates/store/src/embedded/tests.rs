//! Unit tests of the redb backend that look inside pool files or inject faults.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};

use super::*;

fn rec(seq: u64) -> Vec<u8> {
    format!("record-{seq:08}|payload").into_bytes()
}

async fn store(dir: &Path, keep: usize) -> EmbeddedStore {
    EmbeddedStore::open(
        dir,
        StoreOptions {
            keep_snapshots: keep,
            ..StoreOptions::default()
        },
    )
    .await
    .expect("open store")
}

/// A pool with records 1..=n.
async fn pool_with(s: &EmbeddedStore, pool: &str, n: u64) -> EmbeddedPoolHandle {
    s.create_pool(pool, rec(1)).await.expect("create");
    let (h, _) = s.open_pool(pool).await.expect("open");
    for seq in 2..=n {
        h.append(vec![rec(seq)]).await.expect("append");
    }
    h
}

fn file_of(dir: &Path, pool: &str) -> PathBuf {
    dir.join("pools").join(pool).join(POOL_FILE)
}

/// Opens a released pool's file directly.
fn raw(dir: &Path, pool: &str) -> Database {
    Database::open(file_of(dir, pool)).expect("open pool file")
}

fn snapshot_rows(db: &Database) -> Vec<(u64, (u64, u32, u32))> {
    let tx = db.begin_read().expect("read");
    let t = tx.open_table(SNAPSHOTS).expect("table");
    t.iter()
        .expect("iter")
        .map(|e| {
            let (k, v) = e.expect("entry");
            (k.value(), v.value())
        })
        .collect()
}

fn chunk_seqs(db: &Database) -> Vec<u64> {
    let tx = db.begin_read().expect("read");
    let t = tx.open_table(SNAPSHOT_CHUNKS).expect("table");
    let mut v: Vec<u64> = t
        .iter()
        .expect("iter")
        .map(|e| e.expect("entry").0.value().0)
        .collect();
    v.dedup();
    v
}

fn log_keys(db: &Database) -> Vec<u64> {
    let tx = db.begin_read().expect("read");
    let t = tx.open_table(LOG).expect("table");
    t.iter()
        .expect("iter")
        .map(|e| e.expect("entry").0.value())
        .collect()
}

fn image(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ salt)
        .collect()
}

#[tokio::test]
async fn chunked_snapshots_round_trip_at_every_boundary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path(), 2).await;
    let h = pool_with(&s, "c", 1).await;
    let sizes = [
        0,
        1,
        SNAPSHOT_CHUNK_BYTES - 1,
        SNAPSHOT_CHUNK_BYTES,
        SNAPSHOT_CHUNK_BYTES + 1,
        3 * SNAPSHOT_CHUNK_BYTES,
    ];
    let mut h = h;
    for (i, &len) in sizes.iter().enumerate() {
        let seq = h.last_seq();
        let img = image(len, i as u8);
        let st = h.write_snapshot(seq, img.clone()).await.expect("snapshot");
        assert_eq!(st.bytes, len as u64);
        h.release().await.expect("release");
        {
            let db = raw(dir.path(), "c");
            let rows = snapshot_rows(&db);
            let (_, (row_len, _, chunks)) = *rows.last().expect("a row");
            assert_eq!(row_len, len as u64);
            assert_eq!(
                chunks as usize,
                len.div_ceil(SNAPSHOT_CHUNK_BYTES),
                "size {len}"
            );
        }
        let (h2, r) = s.open_pool("c").await.expect("reopen");
        assert_eq!(r.snapshot, Some((seq, img)), "size {len}");
        assert!(r.records.is_empty());
        assert!(r.notes.is_empty(), "{:?}", r.notes);
        h2.append(vec![rec(seq + 1)]).await.expect("append");
        h = h2;
    }
}

#[tokio::test]
async fn chunks_left_by_an_interrupted_snapshot_are_deleted_on_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path(), 2).await;
    let h = pool_with(&s, "l", 5).await;
    h.write_snapshot(3, image(100, 1)).await.expect("snapshot");
    // What a crash after some chunk commits (made durable by an append) leaves: chunks of seq 5
    // without a row.
    h.shared
        .with_db("test", |db| {
            let tx = begin(db, Durability::Immediate).map_err(|e| redb_error("l", "t", e))?;
            {
                let mut t = tx
                    .open_table(SNAPSHOT_CHUNKS)
                    .map_err(|e| redb_error("l", "t", e))?;
                for i in 0..3u32 {
                    t.insert((5, i), &b"partial"[..])
                        .map_err(|e| redb_error("l", "t", e))?;
                }
            }
            tx.commit().map_err(|e| redb_error("l", "t", e))
        })
        .expect("write leftovers");
    h.release().await.expect("release");
    assert_eq!(chunk_seqs(&raw(dir.path(), "l")), vec![3, 5]);

    let (h, r) = s.open_pool("l").await.expect("reopen");
    assert_eq!(r.snapshot, Some((3, image(100, 1))));
    assert_eq!(r.records.len(), 2);
    assert!(r.notes.is_empty(), "{:?}", r.notes);
    h.release().await.expect("release");
    assert_eq!(chunk_seqs(&raw(dir.path(), "l")), vec![3]);
    // And a real snapshot at that seq can still be written.
    let (h, _) = s.open_pool("l").await.expect("reopen");
    h.write_snapshot(5, image(10, 2)).await.expect("snapshot");
    h.release().await.expect("release");
    let (_, r) = s.open_pool("l").await.expect("reopen");
    assert_eq!(r.snapshot, Some((5, image(10, 2))));
}

#[tokio::test]
async fn retention_keeps_the_newest_snapshots_and_the_log_since_the_oldest() {
    for keep in [1usize, 2, 3] {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path(), keep).await;
        let h = pool_with(&s, "r", 10).await;
        let mut compacted = 0;
        for seq in [3u64, 6, 9] {
            compacted += h
                .write_snapshot(seq, image(50, seq as u8))
                .await
                .expect("snapshot")
                .records_compacted;
        }
        h.release().await.expect("release");
        let db = raw(dir.path(), "r");
        let rows: Vec<u64> = snapshot_rows(&db).iter().map(|r| r.0).collect();
        let (want_rows, first_log): (Vec<u64>, u64) = match keep {
            1 => (vec![9], 10),
            2 => (vec![6, 9], 7),
            _ => (vec![3, 6, 9], 4),
        };
        assert_eq!(rows, want_rows, "keep {keep}");
        assert_eq!(chunk_seqs(&db), want_rows, "keep {keep}");
        assert_eq!(log_keys(&db), (first_log..=10).collect::<Vec<_>>());
        assert_eq!(compacted, first_log - 1, "keep {keep}");
        drop(db);
        let (_, r) = s.open_pool("r").await.expect("reopen");
        assert_eq!(r.snapshot, Some((9, image(50, 9))));
        assert_eq!(r.records, vec![(10, rec(10))]);
    }
}

#[tokio::test]
async fn a_mostly_free_large_file_is_compacted_after_a_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path(), 1).await;
    let h = pool_with(&s, "k", 3).await;
    let big = (COMPACT_MIN_FILE_BYTES + (8 << 20)) as usize;
    h.write_snapshot(2, image(big, 7))
        .await
        .expect("big snapshot");
    let file = file_of(dir.path(), "k");
    let before = fs::metadata(&file).expect("meta").len();
    assert!(before >= COMPACT_MIN_FILE_BYTES, "file {before}");
    // The big image is deleted by this one, leaving the file almost empty: it is compacted.
    h.write_snapshot(3, image(1000, 8))
        .await
        .expect("small snapshot");
    let after = fs::metadata(&file).expect("meta").len();
    assert!(
        after < before / 4,
        "compacted from {before} to {after} bytes"
    );
    h.append(vec![rec(4)])
        .await
        .expect("append after compaction");
    h.release().await.expect("release");
    let (_, r) = s.open_pool("k").await.expect("reopen");
    assert_eq!(r.snapshot, Some((3, image(1000, 8))));
    assert_eq!(r.records, vec![(4, rec(4))]);
}

/// Rewrites a released pool's log with `f`.
fn edit_log(dir: &Path, pool: &str, f: impl FnOnce(&mut redb::Table<u64, &'static [u8]>)) {
    let db = raw(dir, pool);
    let tx = db.begin_write().expect("write");
    {
        let mut t = tx.open_table(LOG).expect("table");
        f(&mut t);
    }
    tx.commit().expect("commit");
}

#[tokio::test]
async fn gaps_moved_and_short_records_are_corrupt_naming_the_seq() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path(), 2).await;
    for p in ["gap", "moved", "short", "head"] {
        pool_with(&s, p, 5).await.release().await.expect("release");
    }
    edit_log(dir.path(), "gap", |t| {
        t.remove(3).expect("remove");
    });
    edit_log(dir.path(), "moved", |t| {
        // Record 5's value stored as seq 6: its checksum is bound to seq 5.
        let v = t.get(5).expect("get").expect("record 5").value().to_vec();
        t.insert(6, v.as_slice()).expect("insert");
    });
    edit_log(dir.path(), "short", |t| {
        t.insert(4, &b"ab"[..]).expect("insert");
    });
    edit_log(dir.path(), "head", |t| {
        t.remove(1).expect("remove");
    });
    let cases = [
        ("gap", 3, "missing"),
        ("moved", 6, "checksum"),
        ("short", 4, "too short"),
        ("head", 1, "starts at seq 2"),
    ];
    for (p, want_seq, want_text) in cases {
        match s.open_pool(p).await {
            Err(Error::Corrupt { pool, seq, what }) => {
                assert_eq!((pool.as_str(), seq), (p, want_seq), "{what}");
                assert!(what.contains(want_text), "{p}: {what}");
            }
            Err(e) => panic!("{p}: expected Corrupt, got {e}"),
            Ok((_, r)) => panic!("{p}: loaded {r:?}"),
        }
    }
}

fn inject(pool: &str, site: &str) {
    test_hooks::PANIC_AT
        .lock()
        .expect("hooks")
        .push((pool.to_string(), site.to_string()));
}

fn clear(pool: &str) {
    test_hooks::PANIC_AT
        .lock()
        .expect("hooks")
        .retain(|(p, _)| p != pool);
}

#[tokio::test]
async fn a_panic_in_the_engine_is_contained_to_its_pool() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path(), 2).await;
    for p in ["pr", "pa", "ps", "fine"] {
        pool_with(&s, p, 3).await.release().await.expect("release");
    }

    // During recovery: the pool is reported corrupt, the database is dropped (so the file can be
    // opened again), and other pools are unaffected.
    inject("pr", "recover");
    match s.open_pool("pr").await {
        Err(Error::Corrupt { pool, what, .. }) => {
            assert_eq!(pool, "pr");
            assert!(what.contains("panicked"), "{what}");
        }
        Err(e) => panic!("expected Corrupt, got {e}"),
        Ok(_) => panic!("opened through a panic"),
    }
    let (fine, r) = s.open_pool("fine").await.expect("other pool opens");
    assert_eq!(r.records.len(), 3);
    clear("pr");
    let (_, r) = s
        .open_pool("pr")
        .await
        .expect("opens once the fault is gone");
    assert_eq!(r.records.len(), 3);

    // During an append: an internal error naming the pool, then the handle is poisoned and the
    // database discarded; the append did not happen.
    let (h, _) = s.open_pool("pa").await.expect("open");
    inject("pa", "append");
    match h.append(vec![rec(4)]).await {
        Err(Error::Internal(m)) => assert!(m.contains("\"pa\"") && m.contains("panicked"), "{m}"),
        other => panic!("expected Internal, got {other:?}"),
    }
    clear("pa");
    assert!(matches!(
        h.append(vec![rec(4)]).await,
        Err(Error::Poisoned { .. })
    ));
    assert!(matches!(
        h.write_snapshot(3, vec![1]).await,
        Err(Error::Poisoned { .. })
    ));
    drop(h);
    let (h, r) = s.open_pool("pa").await.expect("reopen");
    assert_eq!(r.records.len(), 3);
    h.append(vec![rec(4)]).await.expect("append after reopen");

    // During a snapshot chunk: the snapshot fails, later writes are refused.
    let (h, _) = s.open_pool("ps").await.expect("open");
    inject("ps", "snapshot chunk");
    assert!(matches!(
        h.write_snapshot(3, vec![1; 10]).await,
        Err(Error::Internal(_))
    ));
    clear("ps");
    assert!(matches!(
        h.append(vec![rec(4)]).await,
        Err(Error::Poisoned { .. })
    ));
    drop(h);
    let (_, r) = s.open_pool("ps").await.expect("reopen");
    assert_eq!((r.snapshot, r.records.len()), (None, 3));

    fine.append(vec![rec(4)])
        .await
        .expect("the other pool still writes");
}

#[tokio::test]
async fn a_file_redb_rejects_is_corrupt_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path(), 2).await;
    pool_with(&s, "x", 2)
        .await
        .release()
        .await
        .expect("release");
    let file = file_of(dir.path(), "x");
    let mut b = fs::read(&file).expect("read");
    b[..9].copy_from_slice(b"not-redb!");
    fs::write(&file, b).expect("write");
    match s.open_pool("x").await {
        Err(e @ Error::Corrupt { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("\"x\"") && text.contains("pool.redb") && text.contains("delete"),
                "{text}"
            );
        }
        Err(e) => panic!("expected Corrupt, got {e}"),
        Ok(_) => panic!("opened a foreign file"),
    }
}

#[test]
fn metadata_rows_count_chunks() {
    // Keeps the table types honest: a row is (length, crc, chunk count).
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Database::create(dir.path().join("t.redb")).expect("create");
    let tx = db.begin_write().expect("write");
    tx.open_table(SNAPSHOTS)
        .expect("table")
        .insert(1, (5u64, 7u32, 1u32))
        .expect("insert");
    tx.commit().expect("commit");
    let tx = db.begin_read().expect("read");
    assert_eq!(tx.open_table(SNAPSHOTS).expect("t").len().expect("len"), 1);
}

/// A snapshot is written in chunks, each its own short transaction, so that
/// appends go on while it is written: here the writing is paused after its
/// first chunk, and appends succeed until it is let go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_write_does_not_block_appends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path(), 2).await;
    let h = pool_with(&s, "s", 1).await;
    let (reached, reached_rx) = std::sync::mpsc::channel();
    let (go, go_rx) = std::sync::mpsc::channel();
    test_hooks::PAUSE_AT
        .lock()
        .expect("hooks")
        .push(test_hooks::Pause {
            pool: "s".into(),
            site: "between snapshot chunks".into(),
            reached,
            go: go_rx,
        });
    let big = vec![7u8; 3 * SNAPSHOT_CHUNK_BYTES];
    let snap = {
        let h = h.clone();
        tokio::spawn(async move { h.write_snapshot(1, big).await })
    };
    tokio::task::spawn_blocking(move || {
        reached_rx.recv_timeout(std::time::Duration::from_secs(120))
    })
    .await
    .expect("join")
    .expect("the snapshot reached its pause");
    let appended = 5;
    for seq in 2..2 + appended {
        h.append(vec![rec(seq)])
            .await
            .expect("append while the snapshot is being written");
    }
    assert!(!snap.is_finished(), "the snapshot did not pause");
    go.send(()).expect("let the snapshot go");
    snap.await.expect("join").expect("snapshot");
    drop(h);
    let (_, r) = s.open_pool("s").await.expect("reopen");
    assert_eq!(
        r.snapshot.map(|(s, b)| (s, b.len())),
        Some((1, 3 * SNAPSHOT_CHUNK_BYTES))
    );
    assert_eq!(r.records.len() as u64, appended);
}
