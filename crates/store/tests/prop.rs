//! Property test: any sequence of appends, snapshots and reopens gives back exactly the latest
//! snapshot and the records after it, on both backends. The PostgreSQL cases share one database
//! schema (a pool each), as replicas share one database.

// A test that cannot unwrap has failed; the panic is the report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use qscheduler_store::{PoolHandle, Store, StoreOptions};

#[derive(Clone, Debug)]
enum Op {
    /// Records of these lengths in one append.
    Append(Vec<usize>),
    /// Snapshot `back` records before the end of the log (clamped to what is allowed).
    Snapshot(u8),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => prop::collection::vec(0usize..300, 1..6).prop_map(Op::Append),
        2 => any::<u8>().prop_map(Op::Snapshot),
        1 => Just(Op::Reopen),
    ]
}

/// What the store must give back.
#[derive(Default)]
struct Model {
    records: Vec<Vec<u8>>,
    snapshot: Option<(u64, Vec<u8>)>,
}

fn payload(seq: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (seq as usize * 31 + i) as u8).collect()
}

async fn check(store: &Store, pool: &str, m: &Model) -> Result<PoolHandle, TestCaseError> {
    let (h, r) = store
        .open_pool(pool)
        .await
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&r.snapshot, &m.snapshot);
    let base = m.snapshot.as_ref().map_or(0, |s| s.0);
    let want: Vec<(u64, Vec<u8>)> = m
        .records
        .iter()
        .enumerate()
        .map(|(i, v)| (i as u64 + 1, v.clone()))
        .filter(|(s, _)| *s > base)
        .collect();
    prop_assert_eq!(r.records, want);
    prop_assert!(r.notes.is_empty(), "{:?}", r.notes);
    prop_assert_eq!(h.last_seq(), m.records.len() as u64);
    Ok(h)
}

async fn run(store: &Store, pool: &str, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let fail = |e: qscheduler_store::Error| TestCaseError::fail(e.to_string());
    let mut m = Model::default();
    m.records.push(payload(1, 10));
    store
        .create_pool(pool, payload(1, 10))
        .await
        .map_err(fail)?;
    let mut h = check(store, pool, &m).await?;
    for op in ops {
        match op {
            Op::Append(lens) => {
                let first = m.records.len() as u64 + 1;
                let recs: Vec<Vec<u8>> = lens
                    .iter()
                    .enumerate()
                    .map(|(i, &l)| payload(first + i as u64, l))
                    .collect();
                m.records.extend(recs.iter().cloned());
                let st = h.append(recs).await.map_err(fail)?;
                prop_assert_eq!(st.last_seq, m.records.len() as u64);
            }
            Op::Snapshot(back) => {
                let last = m.records.len() as u64;
                let newest = m.snapshot.as_ref().map_or(0, |s| s.0);
                if last > newest {
                    let seq = last - u64::from(back) % (last - newest);
                    let bytes = format!("state@{seq}").into_bytes();
                    h.write_snapshot(seq, bytes.clone()).await.map_err(fail)?;
                    m.snapshot = Some((seq, bytes));
                }
            }
            Op::Reopen => {
                h.release().await.map_err(fail)?;
                h = check(store, pool, &m).await?;
            }
        }
    }
    h.release().await.map_err(fail)?;
    check(store, pool, &m)
        .await?
        .release()
        .await
        .map_err(fail)?;
    Ok(())
}

/// Hundreds of cases by default (a few seconds per backend); `PROPTEST_CASES` asks for more
/// or fewer.
fn config(default_cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

#[test]
fn embedded_log_snapshot_reopen() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let strategy = (prop::collection::vec(op(), 0..40), 1usize..4);
    TestRunner::new(config(200))
        .run(&strategy, |(ops, keep)| {
            rt.block_on(async {
                let dir = tempfile::tempdir().expect("tempdir");
                let opts = StoreOptions {
                    keep_snapshots: keep,
                    ..StoreOptions::default()
                };
                let store = Store::open(dir.path().to_str().expect("path"), opts)
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                run(&store, "pool", ops).await?;
                // And once more from a fresh process's point of view.
                drop(store);
                Ok(())
            })
        })
        .expect("property holds");
}

#[test]
fn postgres_log_snapshot_reopen() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let schema = common::unique_schema("prop");
    let result = {
        let store = rt.block_on(common::open_pg(&schema, "prop"));
        let case = std::cell::Cell::new(0u32);
        let r = TestRunner::new(config(256)).run(&prop::collection::vec(op(), 0..25), |ops| {
            case.set(case.get() + 1);
            rt.block_on(run(&store, &format!("pool-{}", case.get()), ops))
        });
        rt.block_on(async { store.shutdown().await.expect("shutdown") });
        r
    };
    rt.block_on(common::drop_schema(&schema));
    result.expect("property holds");
}
