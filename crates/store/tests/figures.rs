//! Throughput figures for both backends: a benchmark, kept out of the default test run. Run it with
//!
//! ```text
//! cargo test --release -p qscheduler-store --test figures -- --ignored --nocapture
//! ```
//!
//! Timings are machine-dependent and never asserted. The default run only does the same work at
//! a small size, on both backends, so that the benchmark keeps working.

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

/// How much work one run does.
struct Size {
    /// Appends of one record.
    single: u32,
    /// Appends of 100 records.
    batches: u32,
    /// Bytes of the snapshot written and loaded.
    snapshot: u32,
}

/// The benchmark: 30 MiB snapshots, as a large pool makes.
const BENCH: Size = Size {
    single: 200,
    batches: 50,
    snapshot: 30 << 20,
};

/// The default run's check that the benchmark still works.
const SMALL: Size = Size {
    single: 10,
    batches: 2,
    snapshot: 1 << 20,
};

async fn measure(label: &str, store: &Store, size: Size) {
    store
        .create_pool("bench", vec![0u8; 200])
        .await
        .expect("create");
    let (h, _) = store.open_pool("bench").await.expect("open");

    let n = size.single;
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

    let batches = size.batches;
    let t = Instant::now();
    for _ in 0..batches {
        h.append((0..100).map(|_| vec![2u8; 200]).collect())
            .await
            .expect("append");
    }
    let hundred = t.elapsed();

    let blob: Vec<u8> = (0..size.snapshot)
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
    assert_eq!(r.snapshot.map(|s| s.1.len()), Some(size.snapshot as usize));
    assert_eq!(r.records.len(), 1);

    let rate = |count: u32, d: Duration| f64::from(count) / d.as_secs_f64();
    println!(
        "{label}: 1 record x 200 B per append: {:.0} appends/s ({:.2} ms each, p99 {:.2} ms; \
         {} B handed to the store and {syscall_bytes} written per append); \
         100 records per append: {:.0} appends/s = {:.0} records/s ({:.2} ms each); \
         {} MiB snapshot write: {:?} (then {} log records compacted); \
         open_pool with the snapshot: {:?}",
        rate(n, one),
        one.as_secs_f64() * 1000.0 / f64::from(n),
        p99.as_secs_f64() * 1000.0,
        handed / u64::from(n),
        rate(batches, hundred),
        rate(batches * 100, hundred),
        hundred.as_secs_f64() * 1000.0 / f64::from(batches),
        f64::from(size.snapshot) / f64::from(1u32 << 20),
        snap,
        st.records_compacted,
        load,
    );
}

async fn embedded(size: Size) {
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
    measure("embedded", &store, size).await;
}

async fn postgres(size: Size) {
    common::with_schema("figures", |schema| async move {
        let opts = StoreOptions {
            keep_snapshots: 1,
            ..common::pg_options(&schema, "bench")
        };
        let store = Store::open(&common::database_url(), opts)
            .await
            .expect("open");
        measure("postgres", &store, size).await;
        store.shutdown().await.expect("shutdown");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: cargo test --release -p qscheduler-store --test figures -- --ignored --nocapture"]
async fn figures_embedded() {
    embedded(BENCH).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: cargo test --release -p qscheduler-store --test figures -- --ignored --nocapture"]
async fn figures_postgres() {
    postgres(BENCH).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn benchmark_works_embedded() {
    embedded(SMALL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn benchmark_works_postgres() {
    postgres(SMALL).await;
}
