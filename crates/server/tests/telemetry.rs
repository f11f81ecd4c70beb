//! Metrics and the task event log, checked against a scripted scenario
//! (see `common::scenario`) run over real sockets.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::*;
use qscheduler_server::ServerOptions;
use qscheduler_server::eventlog::{FileSinkOptions, PostgresSinkOptions};
use serde_json::{Value, json};

/// One scrape, parsed: (name, labels, value) per sample.
struct Scrape(Vec<(String, BTreeMap<String, String>, f64)>);

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut out = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let value: f64 = value.parse().unwrap();
            let (name, labels) = match series.split_once('{') {
                None => (series.to_owned(), BTreeMap::new()),
                Some((name, rest)) => {
                    let mut labels = BTreeMap::new();
                    let mut rest = rest.strip_suffix('}').unwrap();
                    while !rest.is_empty() {
                        let (k, v) = rest.split_once("=\"").unwrap();
                        let end = v.find('"').unwrap();
                        labels.insert(k.to_owned(), v[..end].to_owned());
                        rest = v[end + 1..].trim_start_matches(',');
                    }
                    (name.to_owned(), labels)
                }
            };
            out.push((name, labels, value));
        }
        Scrape(out)
    }

    /// The value of the sample with exactly these labels.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.0
            .iter()
            .find(|(n, l, _)| n == name && *l == want)
            .map(|(_, _, v)| *v)
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
    }

    fn any_label(&self, key: &str, value: &str) -> bool {
        self.0
            .iter()
            .any(|(_, l, _)| l.get(key).is_some_and(|v| v == value))
    }
}

async fn scrape(addr: std::net::SocketAddr) -> Scrape {
    let (status, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    Scrape::parse(&body)
}

fn options(dir: &Path) -> ServerOptions {
    ServerOptions {
        store: dir.join("store").to_str().unwrap().to_owned(),
        ..ServerOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_the_scenario_and_forget_deleted_things() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path());
    opts.event_log.files = Some(FileSinkOptions::new(dir.path().join("events")));
    // A snapshot after every batch, so snapshot figures exist.
    opts.pool.snapshot_every_records = 1;
    let server = TestServer::start(opts).await;
    let addr = server.addr;
    scenario(addr, "p1").await;
    prpc(
        addr,
        "qscheduler.QSchedulerAdmin/CreateSchedulerPool",
        json!({"poolId": "p2"}),
    )
    .await;
    prpc(
        addr,
        "qscheduler.QSchedulerAdmin/CreateAccount",
        json!({"poolId": "p2", "accountId": "x", "config": {"chargeRate": [2], "maxChargeSeconds": 5}}),
    )
    .await;
    // One call over gRPC, one that fails.
    let mut view =
        qscheduler_wire::qscheduler::q_scheduler_view_client::QSchedulerViewClient::connect(
            format!("http://{addr}"),
        )
        .await
        .unwrap();
    view.inspect_pool(qscheduler_wire::qscheduler::InspectPoolRequest {
        pool_id: "p1".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let err = view
        .inspect_pool(qscheduler_wire::qscheduler::InspectPoolRequest {
            pool_id: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    let m = scrape(addr).await;
    let p = ("pool", "p1");
    let counter = "qscheduler_tasks_enqueued_total";
    assert_eq!(m.value(counter, &[p, ("account", "lo")]), 2.0);
    assert_eq!(m.value(counter, &[p, ("account", "hi")]), 2.0);
    assert_eq!(m.value(counter, &[p, ("account", "gone")]), 1.0);

    let assigned = |account, preempting, provision| {
        m.get(
            "qscheduler_tasks_assigned_total",
            &[
                p,
                ("account", account),
                ("preempting", preempting),
                ("provision_required", provision),
            ],
        )
    };
    assert_eq!(assigned("hi", "false", "false"), Some(1.0), "R1");
    assert_eq!(
        assigned("hi", "true", "false"),
        Some(1.0),
        "H1 preempting L1"
    );
    assert_eq!(assigned("lo", "false", "false"), Some(1.0), "L1");
    assert_eq!(assigned("gone", "false", "false"), Some(1.0), "G1");
    assert_eq!(assigned("lo", "true", "false"), None);

    assert_eq!(
        m.value("qscheduler_tasks_preempted_total", &[p, ("account", "lo")]),
        1.0
    );
    assert_eq!(
        m.get("qscheduler_tasks_preempted_total", &[p, ("account", "hi")]),
        None
    );
    let completed = "qscheduler_tasks_completed_total";
    assert_eq!(
        m.value(
            completed,
            &[p, ("account", "gone"), ("reason", "RUNNING_TASK_ABSENT")]
        ),
        1.0
    );
    assert_eq!(
        m.value(completed, &[p, ("account", "hi"), ("reason", "BOT_IDLE")]),
        1.0
    );
    assert_eq!(
        m.get(
            "qscheduler_tasks_reprioritized_total",
            &[p, ("account", "hi")]
        ),
        None
    );

    let spend = "qscheduler_account_spend_seconds_total";
    assert_eq!(
        m.value(spend, &[p, ("account", "hi"), ("priority", "0")]),
        8.0
    );
    assert_eq!(
        m.value(spend, &[p, ("account", "hi"), ("priority", "1")]),
        0.0
    );
    assert_eq!(
        m.value(spend, &[p, ("account", "gone"), ("priority", "0")]),
        2.0
    );
    assert_eq!(
        m.value(
            "qscheduler_account_label_spend_seconds_total",
            &[
                p,
                ("account", "hi"),
                ("label", "os:linux"),
                ("priority", "0")
            ]
        ),
        8.0
    );

    let balance = "qscheduler_account_balance_seconds";
    assert_eq!(
        m.value(balance, &[p, ("account", "hi"), ("priority", "0")]),
        46.0
    );
    assert_eq!(
        m.value(balance, &[p, ("account", "hi"), ("priority", "4")]),
        0.0
    );
    assert_eq!(
        m.value(balance, &[p, ("account", "lo"), ("priority", "0")]),
        0.0
    );
    assert_eq!(
        m.value(balance, &[p, ("account", "gone"), ("priority", "0")]),
        10.0
    );
    assert_eq!(
        m.value(
            balance,
            &[("pool", "p2"), ("account", "x"), ("priority", "0")]
        ),
        0.0
    );

    assert_eq!(m.value("qscheduler_queue_size", &[p]), 1.0);
    let tasks = |state, prio| {
        m.value(
            "qscheduler_tasks",
            &[p, ("state", state), ("priority", prio)],
        )
    };
    assert_eq!(tasks("waiting", "5"), 1.0);
    assert_eq!(tasks("running", "0"), 1.0);
    assert_eq!(tasks("running", "5"), 0.0);
    let bots = |state, prio| {
        m.value(
            "qscheduler_bots",
            &[p, ("state", state), ("priority", prio)],
        )
    };
    assert_eq!(bots("idle", "5"), 1.0, "bot3");
    assert_eq!(bots("running", "0"), 1.0, "bot2 runs R1");
    assert_eq!(bots("running", "5"), 0.0);
    // The same tasks, split by account.
    let per_account = |state: &str, prio: &str| -> f64 {
        m.0.iter()
            .filter(|(n, l, _)| {
                n == "qscheduler_account_tasks"
                    && l.get("pool").map(String::as_str) == Some("p1")
                    && l.get("state").map(String::as_str) == Some(state)
                    && l.get("priority").map(String::as_str) == Some(prio)
            })
            .map(|(_, _, v)| v)
            .sum()
    };
    assert_eq!(per_account("waiting", "5"), tasks("waiting", "5"));
    assert_eq!(per_account("running", "0"), tasks("running", "0"));
    assert_eq!(
        m.value(
            "qscheduler_account_tasks",
            &[
                p,
                ("account", "hi"),
                ("state", "running"),
                ("priority", "0")
            ]
        ),
        1.0,
        "R1 runs at priority 0 for hi"
    );
    // Ownership, the writer's call queue and whether the pool is served.
    assert_eq!(
        m.value(
            "qscheduler_pool_ownership_changes_total",
            &[p, ("change", "adopted")]
        ),
        1.0
    );
    assert_eq!(
        m.value(
            "qscheduler_pool_ownership_changes_total",
            &[p, ("change", "lost")]
        ),
        0.0
    );
    assert_eq!(m.value("qscheduler_pool_waiting_calls", &[p]), 0.0);
    assert_eq!(m.value("qscheduler_queue_capacity", &[p]), 10_000.0);
    assert_eq!(m.value("qscheduler_pool_unserved", &[p]), 0.0);

    let labels =
        |metric, label, running| m.get(metric, &[p, ("label", label), ("running", running)]);
    assert_eq!(
        labels("qscheduler_task_labels", "os:windows", "false"),
        Some(1.0)
    );
    assert_eq!(
        labels("qscheduler_task_labels", "os:windows", "true"),
        Some(0.0)
    );
    assert_eq!(
        labels("qscheduler_task_labels", "os:linux", "true"),
        Some(1.0)
    );
    assert_eq!(
        labels("qscheduler_task_labels", "os:linux", "false"),
        Some(0.0)
    );
    assert_eq!(
        labels("qscheduler_bot_labels", "os:linux", "true"),
        Some(1.0)
    );
    assert_eq!(
        labels("qscheduler_bot_labels", "os:linux", "false"),
        Some(0.0)
    );
    assert_eq!(
        labels("qscheduler_bot_labels", "os:windows", "false"),
        Some(0.0)
    );
    assert!(!m.any_label("label", "os:mac"), "no task uses os:mac");

    // 3 account creations, 5 notifications, 3 assignments (the pool's
    // creation is written by the registry, not by its writer): the batches
    // hold 11 calls in all, however they were grouped.
    assert_eq!(m.value("qscheduler_batch_calls_sum", &[p]), 11.0);
    assert!(m.value("qscheduler_store_append_seconds_count", &[p]) >= 1.0);
    assert!(m.value("qscheduler_store_append_bytes_sum", &[p]) > 0.0);
    assert_eq!(m.value("qscheduler_pools", &[]), 2.0);
    // Snapshots are written in the background; the first ones finished
    // long ago.
    assert!(m.value("qscheduler_snapshot_bytes", &[p]) > 0.0);
    assert!(m.value("qscheduler_snapshot_write_seconds_count", &[p]) >= 1.0);
    assert!(m.value("qscheduler_snapshot_encode_seconds_count", &[p]) >= 1.0);
    assert_eq!(m.value("qscheduler_snapshot_failures_total", &[p]), 0.0);

    let rpc = |service, method, code, transport| {
        m.get(
            "qscheduler_rpc_duration_seconds_count",
            &[
                ("service", service),
                ("method", method),
                ("code", code),
                ("transport", transport),
            ],
        )
    };
    let es = "swarming.v1.ExternalScheduler";
    assert_eq!(rpc(es, "NotifyTasks", "OK", "prpc"), Some(5.0));
    assert_eq!(rpc(es, "AssignTasks", "OK", "prpc"), Some(3.0));
    let view_svc = "qscheduler.QSchedulerView";
    assert_eq!(rpc(view_svc, "InspectPool", "OK", "grpc"), Some(1.0));
    assert_eq!(rpc(view_svc, "InspectPool", "NOT_FOUND", "grpc"), Some(1.0));
    assert_eq!(
        m.value("qscheduler_event_log_dropped_total", &[("sink", "files")]),
        0.0
    );

    // A deleted account's series go, the others stay.
    assert!(m.any_label("account", "gone"));
    prpc(
        addr,
        "qscheduler.QSchedulerAdmin/DeleteAccount",
        json!({"poolId": "p1", "accountId": "gone"}),
    )
    .await;
    let m = scrape(addr).await;
    assert!(
        !m.any_label("account", "gone"),
        "deleted account still exported"
    );
    assert_eq!(
        m.value(spend, &[p, ("account", "hi"), ("priority", "0")]),
        8.0
    );

    // A deleted pool's series go, the other pool's stay.
    prpc(
        addr,
        "qscheduler.QSchedulerAdmin/DeleteSchedulerPool",
        json!({"poolId": "p1"}),
    )
    .await;
    let m = scrape(addr).await;
    assert!(!m.any_label("pool", "p1"), "deleted pool still exported");
    assert_eq!(
        m.value(
            balance,
            &[("pool", "p2"), ("account", "x"), ("priority", "0")]
        ),
        0.0
    );
    assert_eq!(m.value("qscheduler_pools", &[]), 1.0);
    server.stop().await;
}

/// Every line of every event file in `dir`, oldest first.
fn read_events(dir: &Path) -> Vec<Value> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect::<Vec<Value>>()
        })
        .collect()
}

/// An event with the fields every event has, and `extra` on top.
fn event(kind: &str, task: &str, t: u32, account: &str, extra: Value) -> Value {
    let (os, tags) = match task {
        "Q1" => (
            "os:windows",
            json!([format!("qs_account:{account}"), "purpose:test"]),
        ),
        _ => (
            "os:linux",
            json!([format!("qs_account:{account}"), "purpose:test"]),
        ),
    };
    let category = if kind.starts_with("SWARMING") {
        "CATEGORY_SWARMING"
    } else {
        "CATEGORY_QSCHEDULER"
    };
    let mut e = json!({
        "event_type": kind,
        "scheduler_id": "p1",
        "task_id": task,
        "time": at(t),
        "base_labels": [os],
        "provisionable_labels": [],
        "account_id": account,
        "account_valid": true,
        "account_balance": [0.0, 0.0, 0.0, 0.0, 0.0],
        "cost": [],
        "bot_id": "",
        "bot_dimensions": [],
        "category": category,
        "is_callback": false,
    });
    if kind == "SWARMING_ENQUEUED" {
        e["enqueued_details"] = json!({ "tags": tags });
    }
    for (k, v) in extra.as_object().unwrap() {
        e[k] = v.clone();
    }
    e
}

fn balance(p0: f64) -> Value {
    json!([p0, 0.0, 0.0, 0.0, 0.0])
}

/// The events of `common::scenario`, in order, with every field.
fn expected_events() -> Vec<Value> {
    let zero = balance(0.0);
    let linux = json!(["os:linux"]);
    vec![
        event("SWARMING_ENQUEUED", "L1", 0, "lo", json!({})),
        event("SWARMING_ENQUEUED", "G1", 0, "gone", json!({})),
        event(
            "QSCHEDULER_ASSIGNED",
            "G1",
            1,
            "gone",
            json!({
                "account_balance": balance(10.0), "cost": zero, "bot_id": "bot1",
                "bot_dimensions": linux,
                "assigned_details": {"provision_required": false, "priority": 0,
                    "preempting": false, "preemption_cost": [], "preempted_task_id": ""},
            }),
        ),
        event(
            "QSCHEDULER_ASSIGNED",
            "L1",
            1,
            "lo",
            json!({
                "cost": zero, "bot_id": "bot2", "bot_dimensions": linux,
                "assigned_details": {"provision_required": false, "priority": 5,
                    "preempting": false, "preemption_cost": [], "preempted_task_id": ""},
            }),
        ),
        event(
            "SWARMING_ENQUEUED",
            "H1",
            2,
            "hi",
            json!({"account_balance": balance(50.0)}),
        ),
        event(
            "QSCHEDULER_ASSIGNED",
            "H1",
            3,
            "hi",
            json!({
                "account_balance": balance(50.0), "cost": zero, "bot_id": "bot2",
                "bot_dimensions": linux,
                "assigned_details": {"provision_required": false, "priority": 0,
                    "preempting": true, "preemption_cost": zero, "preempted_task_id": "L1"},
            }),
        ),
        event(
            "QSCHEDULER_PREEMPTED",
            "L1",
            3,
            "lo",
            json!({
                "cost": zero, "bot_id": "bot2", "bot_dimensions": linux,
                "preempted_details": {"preempting_account_id": "hi",
                    "preempting_task_id": "H1", "priority": 5, "preempting_priority": 0},
            }),
        ),
        event(
            "SWARMING_COMPLETED",
            "G1",
            10,
            "gone",
            json!({
                "account_balance": balance(10.0), "cost": balance(2.0), "bot_id": "bot1",
                "bot_dimensions": linux, "is_callback": true,
                "completed_details": {"reason": "RUNNING_TASK_ABSENT", "other_task": "",
                    "other_bot": ""},
            }),
        ),
        event("SWARMING_ENQUEUED", "Q1", 10, "lo", json!({})),
        event(
            "SWARMING_ENQUEUED",
            "R1",
            10,
            "hi",
            json!({"account_balance": balance(50.0)}),
        ),
        event(
            "SWARMING_COMPLETED",
            "H1",
            11,
            "hi",
            json!({
                "account_balance": balance(46.0), "cost": balance(8.0), "bot_id": "bot2",
                "bot_dimensions": linux,
                "completed_details": {"reason": "BOT_IDLE", "other_task": "", "other_bot": ""},
            }),
        ),
        event(
            "QSCHEDULER_ASSIGNED",
            "R1",
            11,
            "hi",
            json!({
                "account_balance": balance(46.0), "cost": zero, "bot_id": "bot2",
                "bot_dimensions": linux,
                "assigned_details": {"provision_required": false, "priority": 0,
                    "preempting": false, "preemption_cost": [], "preempted_task_id": ""},
            }),
        ),
    ]
}

fn assert_events(got: &[Value]) {
    let want = expected_events();
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "event {i}:\n got  {g}\n want {w}");
    }
    assert_eq!(got.len(), want.len(), "all events: {got:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_log_files_hold_every_event_with_every_field() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events");
    let mut opts = options(dir.path());
    opts.event_log.files = Some(FileSinkOptions::new(events.clone()));
    let server = TestServer::start(opts).await;
    scenario(server.addr, "p1").await;
    // Shutdown flushes the queue: everything is on disk afterwards.
    server.stop().await;
    assert_events(&read_events(&events));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_log_postgres_table_holds_the_same_rows() {
    use sqlx::{Connection, Executor, Row};
    let url = database_url();
    let schema = unique_name("qs_test_events");
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events");
    let mut opts = options(dir.path());
    opts.event_log.files = Some(FileSinkOptions::new(events.clone()));
    let mut pg = PostgresSinkOptions::new(url.clone());
    pg.schema = Some(schema.clone());
    pg.batch_rows = 5;
    opts.event_log.postgres = Some(pg);
    let server = TestServer::start(opts).await;
    scenario(server.addr, "p1").await;
    server.stop().await;

    let mut conn = sqlx::PgConnection::connect(&url)
        .await
        .expect("PostgreSQL at DATABASE_URL (default 127.0.0.1:5432/test)");
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT pool_id, task_id, event_type,
                to_char(event_time AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS t,
                event::text AS event
         FROM \"{schema}\".task_events ORDER BY id"
    )))
    .fetch_all(&mut conn)
    .await;
    conn.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
    ))))
    .await
    .unwrap();
    let rows = rows.unwrap();
    let got: Vec<Value> = rows
        .iter()
        .map(|r| {
            let e: Value = serde_json::from_str(r.get::<&str, _>("event")).unwrap();
            assert_eq!(r.get::<&str, _>("pool_id"), e["scheduler_id"]);
            assert_eq!(r.get::<&str, _>("task_id"), e["task_id"]);
            assert_eq!(r.get::<&str, _>("event_type"), e["event_type"]);
            assert_eq!(r.get::<&str, _>("t"), e["time"]);
            e
        })
        .collect();
    assert_events(&got);
    assert_eq!(got, read_events(&events), "both sinks got the same events");
}

/// The names `qscheduler_...` that `text` mentions (PromQL in the alert
/// rules and the dashboard).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("qscheduler_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        // Not the tail of a longer identifier (a rule group's name).
        let before = rest[..i].chars().last();
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            out.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_deploy_files_use_exists() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path());
    opts.event_log.files = Some(FileSinkOptions::new(dir.path().join("events")));
    // Snapshot figures exist once a snapshot was written.
    opts.pool.snapshot_every_records = 1;
    let server = TestServer::start(opts).await;
    scenario(server.addr, "p1").await;
    let m = scrape(server.addr).await;
    let exposed: BTreeSet<String> = m.0.iter().map(|(n, _, _)| n.clone()).collect();
    let files = [
        (
            "deploy/prometheus/alerts.yaml",
            include_str!("../../../deploy/prometheus/alerts.yaml"),
        ),
        (
            "deploy/kubernetes/base/prometheusrule.yaml",
            include_str!("../../../deploy/kubernetes/base/prometheusrule.yaml"),
        ),
        (
            "deploy/grafana/qscheduler.json",
            include_str!("../../../deploy/grafana/qscheduler.json"),
        ),
    ];
    let mut missing = Vec::new();
    for (file, text) in files {
        let names = metric_names(text);
        assert!(!names.is_empty(), "{file} names no metric");
        for name in names {
            // A histogram's series carry suffixes the queries name.
            let found = exposed.contains(&name)
                || ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| exposed.contains(&format!("{name}{s}")));
            if !found {
                missing.push(format!("{file}: {name}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "metrics the deploy files use but /metrics lacks:\n  {}",
        missing.join("\n  ")
    );
    server.stop().await;
}
