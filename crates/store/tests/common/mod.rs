//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use qscheduler_store::{Store, StoreOptions};
use sqlx::{Connection, Executor};

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// `DATABASE_URL` if set, else the local test database.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_string())
}

fn no_database(e: impl std::fmt::Display) -> ! {
    panic!(
        "these tests need PostgreSQL and could not reach {}: {e}\n\
         Set DATABASE_URL to a database the tests may create schemas in \
         (default {DEFAULT_DATABASE_URL}), or start one, for example:\n  \
         apt-get install -y postgresql && install -d -o postgres /tmp/pg && \
         su postgres -c '/usr/lib/postgresql/15/bin/initdb -D /tmp/pg/data -U postgres -A trust' && \
         su postgres -c \"/usr/lib/postgresql/15/bin/pg_ctl -D /tmp/pg/data -l /tmp/pg/log -w start \
         -o '-c listen_addresses=127.0.0.1 -p 5432 -k /tmp/pg'\" && \
         psql -h 127.0.0.1 -U postgres -c 'CREATE DATABASE test'",
        database_url()
    )
}

/// A schema name no other test (or test run) uses.
pub fn unique_schema(tag: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "qs_test_{tag}_{}_{nanos}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub async fn drop_schema(schema: &str) {
    let mut conn = sqlx::PgConnection::connect(&database_url())
        .await
        .unwrap_or_else(|e| no_database(e));
    conn.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
    ))))
    .await
    .expect("drop test schema");
}

/// Runs `test` with a fresh schema, dropping the schema afterwards even if the test panics.
pub async fn with_schema<F, Fut>(tag: &str, test: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    // Fail loudly (never skip) if there is no database.
    if let Err(e) = sqlx::PgConnection::connect(&database_url()).await {
        no_database(e);
    }
    let schema = unique_schema(tag);
    let result = tokio::spawn(test(schema.clone())).await;
    drop_schema(&schema).await;
    if let Err(e) = result {
        match e.try_into_panic() {
            Ok(p) => std::panic::resume_unwind(p),
            Err(e) => panic!("test task failed: {e}"),
        }
    }
}

pub fn pg_options(schema: &str, replica: &str) -> StoreOptions {
    StoreOptions {
        replica_id: replica.to_string(),
        advertise_address: format!("{replica}.example:7000"),
        pg_schema: Some(schema.to_string()),
        pg_max_connections: 4,
        ..StoreOptions::default()
    }
}

pub async fn open_pg(schema: &str, replica: &str) -> Store {
    Store::open(&database_url(), pg_options(schema, replica))
        .await
        .unwrap_or_else(|e| no_database(e))
}

/// Same, with a short lease and a renewal period that never comes: a replica that stopped
/// renewing (hung, partitioned) without releasing anything.
pub async fn open_pg_stalled(schema: &str, replica: &str, ttl: Duration) -> Store {
    let opts = StoreOptions {
        lease_ttl: ttl,
        lease_renew_every: Some(Duration::from_secs(3600)),
        ..pg_options(schema, replica)
    };
    Store::open(&database_url(), opts)
        .await
        .unwrap_or_else(|e| no_database(e))
}

/// A record whose content says which seq it should have, and some padding.
pub fn rec(seq: u64, len: usize) -> Vec<u8> {
    let mut v = format!("record-{seq:08}|").into_bytes();
    while v.len() < len {
        v.push(b'a' + (v.len() % 26) as u8);
    }
    v
}
