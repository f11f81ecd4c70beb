//! Damaged embedded-store files, seen through the server.
//!
//! * A flipped byte in a log record in the middle of a pool's log stops the
//!   recovery of that pool with an error naming the pool and the record
//!   (`DATA_LOSS` for calls to it); the other pools are served.
//! * A log cut in the middle of its last append (a crash during a write
//!   that was therefore never acknowledged) loses that append only, and the
//!   pool goes on.
//! * A damaged newest snapshot is skipped for the previous one plus the log.
//! * Startup logs, per pool, how long recovery took and how many records it
//!   replayed.

mod durable_support;

use std::path::Path;
use std::time::Duration;

use durable_support::*;

const SEGMENT_HEADER: usize = 24;
const FRAME_HEADER: usize = 32;

/// (seq, offset of the frame, payload length) of every frame of a segment.
fn frames(seg: &[u8]) -> Vec<(u64, usize, usize)> {
    let mut out = Vec::new();
    let mut at = SEGMENT_HEADER;
    while at + FRAME_HEADER <= seg.len() {
        let len = u32::from_le_bytes(seg[at..at + 4].try_into().expect("4 bytes")) as usize;
        let seq = u64::from_le_bytes(seg[at + 8..at + 16].try_into().expect("8 bytes"));
        out.push((seq, at, len));
        at += FRAME_HEADER + len;
    }
    out
}

fn first_segment(data: &Path, pool: &str) -> std::path::PathBuf {
    pool_dir(data, pool).join(format!("log-{:020}.seg", 1))
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
async fn damaged_log_and_torn_tail_through_the_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let data_arg = data.to_str().expect("utf-8").to_string();
    let mut server = ServerProc::start(&["--data-dir", &data_arg]);
    let mut c = server.clients().await;
    for p in ["flip", "torn", "intact"] {
        c.create_pool(p).await.expect("create");
        // Record 2 turns preemption off; records 3..=12 are one call each.
        notify_one_by_one(&mut c, p, 10).await;
    }
    server.kill9();

    // A flipped payload byte in record 4 of "flip".
    let path = first_segment(&data, "flip");
    let mut seg = std::fs::read(&path).expect("read segment");
    let (seq, at, len) = frames(&seg)[3];
    assert_eq!(seq, 4);
    seg[at + FRAME_HEADER + len / 2] ^= 0x40;
    std::fs::write(&path, &seg).expect("write segment");
    // "torn" loses half of its last append (record 12).
    let path = first_segment(&data, "torn");
    let seg = std::fs::read(&path).expect("read segment");
    let (seq, at, len) = *frames(&seg).last().expect("frames");
    assert_eq!(seq, 12);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    f.set_len((at + FRAME_HEADER + len / 2) as u64)
        .expect("truncate");
    drop(f);

    let mut server = ServerProc::start(&["--data-dir", &data_arg]);
    let mut c = server.clients().await;
    let logs = server.logs();
    // Startup reports each recovered pool: time and records replayed.
    let intact = recovered(&logs, "intact").expect("intact recovered");
    assert_eq!(intact["fields"]["records_replayed"], 12);
    assert!(intact["fields"]["elapsed_ms"].is_u64());
    let torn = recovered(&logs, "torn").expect("torn recovered");
    assert_eq!(torn["fields"]["records_replayed"], 11);
    assert!(
        logs.iter().any(|v| v["fields"]["pool"] == "torn"
            && v["fields"]["note"]
                .as_str()
                .is_some_and(|n| n.contains("TornTail"))),
        "the cut tail is reported"
    );
    assert!(recovered(&logs, "flip").is_none());
    let flip_error = logs
        .iter()
        .find(|v| v["level"] == "ERROR" && v["fields"]["pool"] == "flip")
        .expect("an error is logged for the damaged pool");
    let text = flip_error["fields"]["error"].as_str().unwrap_or_default();
    assert!(text.contains("seq 4") && text.contains("flip"), "{text}");

    // Calls to the damaged pool say what is wrong; the others work.
    let e = c.inspect("flip").await.expect_err("damaged pool");
    assert_eq!(e.code(), tonic::Code::DataLoss, "{e}");
    assert!(e.message().contains("seq 4"), "{}", e.message());
    let e = c
        .notify_pending("flip", &[("x".into(), "none".into())])
        .await
        .expect_err("damaged pool");
    assert_eq!(e.code(), tonic::Code::DataLoss, "{e}");
    assert_eq!(waiting(&mut c, "intact").await.len(), 10);
    let torn_tasks = waiting(&mut c, "torn").await;
    assert_eq!(torn_tasks.len(), 9);
    assert!(!torn_tasks.contains(&"torn-task09".to_string()));

    // The pool with the cut tail takes new writes, which survive a crash.
    c.notify_pending("torn", &[("torn-after".into(), "none".into())])
        .await
        .expect("write after the cut");
    server.kill9();
    let mut server = ServerProc::start(&["--data-dir", &data_arg]);
    let mut c = server.clients().await;
    let torn_tasks = waiting(&mut c, "torn").await;
    assert_eq!(torn_tasks.len(), 10);
    assert!(torn_tasks.contains(&"torn-after".to_string()));
    let e = c.inspect("flip").await.expect_err("still damaged");
    assert_eq!(e.code(), tonic::Code::DataLoss);

    // The operator's way out: delete the damaged pool and start it again.
    c.admin
        .delete_scheduler_pool(qscheduler_wire::qscheduler::DeleteSchedulerPoolRequest {
            pool_id: "flip".into(),
        })
        .await
        .expect("delete the damaged pool");
    c.create_pool("flip").await.expect("recreate");
    assert!(waiting(&mut c, "flip").await.is_empty());
    server.terminate();
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

    let pool = pool_dir(&data, "snap");
    let mut snaps: Vec<_> = std::fs::read_dir(&pool)
        .expect("pool dir")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "snap"))
        .collect();
    snaps.sort();
    assert!(snaps.len() >= 2, "two snapshots are kept: {snaps:?}");
    let newest = snaps.last().expect("a snapshot");
    let mut bytes = std::fs::read(newest).expect("read snapshot");
    let mid = bytes.len() / 2 + 10;
    bytes[mid] ^= 0x01;
    std::fs::write(newest, &bytes).expect("write snapshot");

    let server = ServerProc::start(&args);
    let mut c = server.clients().await;
    assert_eq!(waiting(&mut c, "snap").await.len(), 12);
    let logs = server.logs();
    assert!(
        logs.iter().any(|v| v["fields"]["pool"] == "snap"
            && v["fields"]["note"]
                .as_str()
                .is_some_and(|n| n.contains("SkippedSnapshot"))),
        "the skipped snapshot is reported"
    );
    let rec = recovered(&logs, "snap").expect("recovered");
    assert!(rec["fields"]["records_replayed"].as_u64().unwrap_or(0) > 0);
}
