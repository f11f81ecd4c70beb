//! Damaged embedded-store files, seen through the server.
//!
//! * A flipped byte in a log record of a pool's file stops the recovery of
//!   that pool with an error naming the pool and the record (`DATA_LOSS` for
//!   calls to it); the other pools are served.
//! * A truncated pool file stops the recovery of that pool with a clear
//!   error; the other pools are served, and deleting the pool lets it start
//!   again.
//! * A damaged newest snapshot is skipped for the previous one plus the log.
//! * Startup logs, per pool, how long recovery took and how many records it
//!   replayed.
//!
//! The server is killed with SIGKILL before the damage is done, so recovery
//! also starts from a file that was not closed cleanly.

mod durable_support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use durable_support::*;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

fn pool_file(data: &Path, pool: &str) -> PathBuf {
    pool_dir(data, pool).join("pool.redb")
}

/// Flips one byte in the middle of every occurrence of `needle` in `file` (the live copy and
/// any stale copy in pages redb freed); returns how many there were.
fn flip_every(file: &Path, needle: &[u8]) -> usize {
    let mut bytes = std::fs::read(file).expect("read pool file");
    let hits: Vec<usize> = bytes
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect();
    for at in &hits {
        bytes[at + needle.len() / 2] ^= 0x40;
    }
    std::fs::write(file, &bytes).expect("write pool file");
    hits.len()
}

/// The newest snapshot image stored in a pool file (read with redb directly, from a copy: a
/// read-only open refuses a file that was not closed cleanly).
fn newest_snapshot_image(file: &Path) -> (u64, Vec<u8>) {
    const SNAPSHOTS: TableDefinition<u64, (u64, u32, u32)> = TableDefinition::new("snapshots");
    const CHUNKS: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("snapshot_chunks");
    let scratch = tempfile::tempdir().expect("tempdir");
    let copy = scratch.path().join("copy.redb");
    std::fs::copy(file, &copy).expect("copy pool file");
    let db = redb::Database::open(&copy).expect("open pool file");
    let tx = db.begin_read().expect("read");
    let rows = tx.open_table(SNAPSHOTS).expect("snapshots");
    let (seq, (_, _, chunks)) = {
        let (k, v) = rows.last().expect("read").expect("a snapshot");
        (k.value(), v.value())
    };
    let table = tx.open_table(CHUNKS).expect("chunks");
    let mut image = Vec::new();
    for i in 0..chunks {
        image.extend_from_slice(table.get((seq, i)).expect("get").expect("chunk").value());
    }
    (seq, image)
}

async fn notify_one_by_one(c: &mut Clients, pool: &str, n: usize) {
    for i in 0..n {
        c.notify_pending(pool, &[(format!("{pool}-task{i:02}"), "none".into())])
            .await
            .expect("notify");
    }
}

async fn waiting(c: &mut Clients, pool: &str) -> Vec<String> {
    c.inspect(pool)
        .await
        .expect("inspect")
        .waiting_tasks
        .into_iter()
        .map(|t| t.id)
        .collect()
}

fn recovered<'a>(logs: &'a [serde_json::Value], pool: &str) -> Option<&'a serde_json::Value> {
    logs.iter()
        .find(|v| v["fields"]["message"] == "pool recovered" && v["fields"]["pool"] == pool)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_record_and_truncated_file_through_the_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let data_arg = data.to_str().expect("utf-8").to_string();
    let mut server = ServerProc::start(&["--data-dir", &data_arg]);
    let mut c = server.clients().await;
    for p in ["flip", "cut", "intact"] {
        c.create_pool(p).await.expect("create");
        // Record 2 turns preemption off; records 3..=12 are one call each.
        notify_one_by_one(&mut c, p, 10).await;
    }
    server.kill9();

    // A flipped byte in the payload of record 4 of "flip" (the task "flip-task01").
    let hits = flip_every(&pool_file(&data, "flip"), b"flip-task01");
    assert!(hits >= 1, "record 4 is in the file");
    // "cut" loses the second half of its file.
    let path = pool_file(&data, "cut");
    let len = std::fs::metadata(&path).expect("stat").len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    f.set_len(len / 2).expect("truncate");
    drop(f);

    let mut server = ServerProc::start(&["--data-dir", &data_arg]);
    let mut c = server.clients().await;
    let logs = server.logs();
    // Startup reports each recovered pool: time and records replayed.
    let intact = recovered(&logs, "intact").expect("intact recovered");
    assert_eq!(intact["fields"]["records_replayed"], 12);
    assert!(intact["fields"]["elapsed_ms"].is_u64());
    for (pool, want) in [("flip", "seq 4"), ("cut", "pool.redb")] {
        assert!(recovered(&logs, pool).is_none(), "{pool} must not recover");
        let error = logs
            .iter()
            .find(|v| v["level"] == "ERROR" && v["fields"]["pool"] == pool)
            .expect("an error is logged for the damaged pool");
        let text = error["fields"]["error"].as_str().unwrap_or_default();
        assert!(text.contains(want) && text.contains(pool), "{text}");
    }

    // Calls to the damaged pools say what is wrong; the other works.
    let e = c.inspect("flip").await.expect_err("damaged pool");
    assert_eq!(e.code(), tonic::Code::DataLoss, "{e}");
    assert!(e.message().contains("seq 4"), "{}", e.message());
    let e = c
        .notify_pending("flip", &[("x".into(), "none".into())])
        .await
        .expect_err("damaged pool");
    assert_eq!(e.code(), tonic::Code::DataLoss, "{e}");
    let e = c.inspect("cut").await.expect_err("truncated pool");
    assert_eq!(e.code(), tonic::Code::DataLoss, "{e}");
    assert_eq!(waiting(&mut c, "intact").await.len(), 10);

    // Still refused after another restart (nothing was "repaired" away).
    server.kill9();
    let mut server = ServerProc::start(&["--data-dir", &data_arg]);
    let mut c = server.clients().await;
    let e = c.inspect("flip").await.expect_err("still damaged");
    assert_eq!(e.code(), tonic::Code::DataLoss);

    // The operator's way out: delete the damaged pools and start them again.
    for pool in ["flip", "cut"] {
        c.admin
            .delete_scheduler_pool(qscheduler_wire::qscheduler::DeleteSchedulerPoolRequest {
                pool_id: pool.into(),
            })
            .await
            .expect("delete the damaged pool");
        c.create_pool(pool).await.expect("recreate");
        assert!(waiting(&mut c, pool).await.is_empty());
    }
    c.notify_pending("cut", &[("cut-after".into(), "none".into())])
        .await
        .expect("write to the re-created pool");
    server.kill9();
    let server = ServerProc::start(&["--data-dir", &data_arg]);
    let mut c = server.clients().await;
    assert_eq!(waiting(&mut c, "cut").await, vec!["cut-after".to_string()]);
    assert_eq!(waiting(&mut c, "intact").await.len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_snapshot_falls_back_to_the_previous_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let data_arg = data.to_str().expect("utf-8").to_string();
    let args = ["--data-dir", &data_arg, "--snapshot-every-records", "3"];
    let mut server = ServerProc::start(&args);
    let mut c = server.clients().await;
    c.create_pool("snap").await.expect("create");
    notify_one_by_one(&mut c, "snap", 12).await;
    // Snapshots are written in the background: wait for a few.
    let written = |s: &ServerProc| {
        s.logs_with("snapshot written")
            .iter()
            .filter(|v| v["fields"]["pool"] == "snap")
            .count()
    };
    for _ in 0..200 {
        if written(&server) >= 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(written(&server) >= 3, "snapshots were written");
    server.kill9();

    let file = pool_file(&data, "snap");
    let (seq, image) = newest_snapshot_image(&file);
    assert!(!image.is_empty());
    assert!(flip_every(&file, &image) >= 1, "the image is in the file");

    let server = ServerProc::start(&args);
    let mut c = server.clients().await;
    assert_eq!(waiting(&mut c, "snap").await.len(), 12);
    let logs = server.logs();
    assert!(
        logs.iter().any(|v| v["fields"]["pool"] == "snap"
            && v["fields"]["note"].as_str().is_some_and(
                |n| n.contains("SkippedSnapshot") && n.contains(&format!("seq: {seq}"))
            )),
        "the skipped snapshot is reported"
    );
    let rec = recovered(&logs, "snap").expect("recovered");
    assert!(rec["fields"]["records_replayed"].as_u64().unwrap_or(0) > 0);
}
