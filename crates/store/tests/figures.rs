//! Prints throughput figures for both backends (run with `--nocapture` to see them). Timings are
//! machine-dependent and not asserted; the test only checks the work was done.

// A test that cannot unwrap has failed; the panic is the report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use qscheduler_store::{Store, StoreOptions};

/// Bytes this process has passed to `write`-like system calls so far (Linux), to see what an
/// append costs in the file rather than what the store was handed.
fn written_so_far() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("wchar: "))
        .and_then(|v| v.trim().parse().ok())
}

async fn measure(label: &str, store: &Store) {
    store
        .create_pool("bench", vec![0u8; 200])
        .await
        .expect("create");
    let (h, _) = store.open_pool("bench").await.expect("open");

    let n = 200;
    let before = written_so_far();
    let mut handed = 0;
    let mut latencies = Vec::new();
    let t = Instant::now();
    for _ in 0..n {
        let st = h.append(vec![vec![1u8; 200]]).await.expect("append");
        handed += st.bytes;
        latencies.push(st.elapsed);
    }
    let one = t.elapsed();
    let syscall_bytes = match (before, written_so_far()) {
        (Some(b), Some(a)) => format!("{} B", (a - b) / u64::from(n)),
        _ => "unknown".to_string(),
    };
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];

    let batches = 50;
    let t = Instant::now();
    for _ in 0..batches {
        h.append((0..100).map(|_| vec![2u8; 200]).collect())
            .await
            .expect("append");
    }
    let hundred = t.elapsed();

    let blob: Vec<u8> = (0..30u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let t = Instant::now();
    let st = h
        .write_snapshot(h.last_seq(), blob)
        .await
        .expect("snapshot");
    let snap = t.elapsed();
    h.append(vec![vec![3u8; 200]]).await.expect("append");
    h.release().await.expect("release");

    let t = Instant::now();
    let (_, r) = store.open_pool("bench").await.expect("reopen");
    let load = t.elapsed();
    assert_eq!(r.snapshot.map(|s| s.1.len()), Some(30 << 20));
    assert_eq!(r.records.len(), 1);

    let rate = |count: u32, d: Duration| f64::from(count) / d.as_secs_f64();
    println!(
        "{label}: 1 record x 200 B per append: {:.0} appends/s ({:.2} ms each, p99 {:.2} ms; \
         {} B handed to the store and {syscall_bytes} written per append); \
         100 records per append: {:.0} appends/s = {:.0} records/s ({:.2} ms each); \
         30 MiB snapshot write: {:?} (then {} log records compacted); \
         open_pool with the 30 MiB snapshot: {:?}",
        rate(n, one),
        one.as_secs_f64() * 1000.0 / f64::from(n),
        p99.as_secs_f64() * 1000.0,
        handed / u64::from(n),
        rate(batches, hundred),
        rate(batches * 100, hundred),
        hundred.as_secs_f64() * 1000.0 / f64::from(batches),
        snap,
        st.records_compacted,
        load,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn figures_embedded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(
        dir.path().to_str().expect("path"),
        StoreOptions {
            keep_snapshots: 1,
            ..StoreOptions::default()
        },
    )
    .await
    .expect("open");
    measure("embedded", &store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn figures_postgres() {
    common::with_schema("figures", |schema| async move {
        let opts = StoreOptions {
            keep_snapshots: 1,
            ..common::pg_options(&schema, "bench")
        };
        let store = Store::open(&common::database_url(), opts)
            .await
            .expect("open");
        measure("postgres", &store).await;
        store.shutdown().await.expect("shutdown");
    })
    .await;
}
