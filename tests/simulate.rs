//! The simulation's pipeline against a real server: a workload generated
//! from a model is played against `qscheduler serve` by simulated bots,
//! the server's event log (files and PostgreSQL) is extracted back into a
//! workload, and that workload is simulated beside the recorded outcome.
//!
//! Nothing here depends on how fast the machine is: the checks are about
//! what the extraction must recover exactly (arrivals, accounts, labels),
//! bounds that hold whatever the timing (a task never runs shorter than it
//! was asked to), and the agreement of the two event sinks.

mod cli_support;
mod durable_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use cli_support::{Run, run_env};
use durable_support::{ServerProc, TestDb};
use serde_json::Value;

const MODEL: &str = r#"
seed = 3
pool = "sim-test"
duration = 40

[fleet.linux]
count = 3
labels = ["pool:sim-test", "os:linux"]
rotate = ["cache:a", "cache:b", "cache:c"]

[fleet.mac]
count = 1
labels = ["pool:sim-test", "os:mac"]
to = 25

[accounts.paid]
tasks_per_hour = 1800
duration = { distribution = "uniform", min = 2, max = 6 }
[[accounts.paid.tasks]]
labels = ["pool:sim-test", "os:linux"]
provisionable = ["cache:b"]

[accounts.free]
tasks_per_hour = 2400
duration = { distribution = "uniform", min = 4, max = 10 }
until_cancelled = { fraction = 0.1, after = { distribution = "fixed", value = 8 } }
[[accounts.free.tasks]]
weight = 3
labels = ["pool:sim-test", "os:linux"]
[[accounts.free.tasks]]
labels = ["pool:sim-test", "os:mac"]
"#;

const POOLS: &str = r#"
[pools.sim-test]
allow_preemption = true

[pools.sim-test.accounts.paid]
charge_rate = [1]
max_charge_seconds = 30
"#;

fn cli(args: &[&str]) -> Run {
    run_env(args, None)
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Tasks of a workload file by id: (arrival ms, account, labels,
/// provisionable, duration ms).
fn tasks(text: &str) -> BTreeMap<String, (i64, String, Value, Value, Option<i64>)> {
    text.lines()
        .skip(1)
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("task").is_some())
        .map(|v| {
            let ms = |x: &Value| x.as_f64().map(|s| (s * 1000.0).round() as i64);
            (
                v["task"].as_str().unwrap_or_default().to_owned(),
                (
                    ms(&v["at"]).unwrap_or(-1),
                    v["account"].as_str().unwrap_or_default().to_owned(),
                    v["labels"].clone(),
                    v.get("provisionable")
                        .cloned()
                        .unwrap_or(Value::Array(vec![])),
                    ms(&v["duration"]),
                ),
            )
        })
        .collect()
}

#[test]
fn play_extract_and_simulate_a_recorded_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let model = d.join("model.toml");
    let pools = d.join("pools.toml");
    let planned = d.join("planned.jsonl");
    std::fs::write(&model, MODEL).expect("write model");
    std::fs::write(&pools, POOLS).expect("write pools");
    cli(&[
        "workload",
        "generate",
        "--model",
        path(&model),
        "--out",
        path(&planned),
    ])
    .ok();
    let planned_text = std::fs::read_to_string(&planned).expect("read planned");
    let planned_tasks = tasks(&planned_text);
    assert!(planned_tasks.len() >= 20, "{}", planned_tasks.len());

    // A server writing its event log to files and to a PostgreSQL table in
    // a database of this test's own.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let db = rt.block_on(TestDb::create("simulate"));
    let config = d.join("server.toml");
    std::fs::write(
        &config,
        format!(
            "[event_log.postgres]\nenabled = true\nurl = \"{}\"\nschema = \"sim_events\"\n",
            db.url
        ),
    )
    .expect("write config");
    let data = d.join("data");
    let mut server = ServerProc::start(&["--config", path(&config), "--data-dir", path(&data)]);
    let url = server.url();
    run_env(&["apply", "-f", path(&pools)], Some(&url)).ok();
    let played = run_env(
        &[
            "workload",
            "play",
            "--workload",
            path(&planned),
            "--speed",
            "2",
            "--poll-interval",
            "2s",
            "--cancel-check",
            "1s",
        ],
        Some(&url),
    );
    let out = played.ok();
    assert!(out.contains("; 0 errors"), "{played:#?}");
    // A clean stop writes every queued event.
    server.terminate();

    // From the files.
    let from_files = d.join("from-files.jsonl");
    let x = cli(&[
        "workload",
        "extract",
        "--events",
        path(&data.join("events")),
        "--pool",
        "sim-test",
        "--out",
        path(&from_files),
    ]);
    x.ok();
    assert!(x.stderr.contains("estimated:"), "{x:#?}");
    let text = std::fs::read_to_string(&from_files).expect("read extracted");
    let got = tasks(&text);

    // Every task arrives exactly when it was sent, relative to the first,
    // with its account and labels.
    assert_eq!(
        got.keys().collect::<BTreeSet<_>>(),
        planned_tasks.keys().collect::<BTreeSet<_>>()
    );
    let first = planned_tasks.values().map(|t| t.0).min().unwrap_or(0);
    let mut preempted = BTreeSet::new();
    for f in std::fs::read_dir(data.join("events")).expect("events dir") {
        let f = f.expect("entry").path();
        for line in std::fs::read_to_string(&f).expect("read events").lines() {
            let v: Value = serde_json::from_str(line).expect("event JSON");
            if v["event_type"] == "QSCHEDULER_PREEMPTED" {
                preempted.insert(v["task_id"].as_str().unwrap_or_default().to_owned());
            }
        }
    }
    for (id, p) in &planned_tasks {
        let g = &got[id];
        assert_eq!(g.0, p.0 - first, "{id}: arrival");
        assert_eq!(
            (&g.1, &g.2, &g.3),
            (&p.1, &p.2, &p.3),
            "{id}: account, labels"
        );
        // A task the recording finished without preemption ran at least
        // its planned time (a bot cannot finish early; it may be late).
        if let (Some(planned), Some(extracted)) = (p.4, g.4)
            && !preempted.contains(id)
            && !text.contains("still running at the end")
        {
            assert!(
                extracted >= planned - 1,
                "{id}: ran {extracted} ms of {planned}"
            );
        }
    }
    // The fleet: the bots that did work, with their labels.
    let bots: BTreeMap<String, Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("bot").is_some())
        .map(|v| {
            (
                v["bot"].as_str().unwrap_or_default().to_owned(),
                v["labels"].clone(),
            )
        })
        .collect();
    let planned_bots: BTreeMap<String, Value> = planned_text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("bot").is_some())
        .map(|v| {
            (
                v["bot"].as_str().unwrap_or_default().to_owned(),
                v["labels"].clone(),
            )
        })
        .collect();
    assert!(!bots.is_empty());
    for (b, labels) in &bots {
        assert_eq!(Some(labels), planned_bots.get(b), "{b}");
    }

    // The PostgreSQL table holds the same events: the same workload.
    let from_db = d.join("from-db.jsonl");
    cli(&[
        "workload",
        "extract",
        "--events-db",
        &db.url,
        "--events-schema",
        "sim_events",
        "--pool",
        "sim-test",
        "--out",
        path(&from_db),
    ])
    .ok();
    assert_eq!(
        std::fs::read_to_string(&from_db).expect("read db extract"),
        text,
        "files and table disagree"
    );

    // The simulation of the extracted workload beside the recording.
    let sim = cli(&[
        "simulate",
        "--workload",
        path(&from_files),
        "--pools",
        path(&pools),
        "--poll-interval",
        "2s",
        "--compare",
        "recorded",
        "-o",
        "json",
    ]);
    let doc = sim.json();
    let (a, b) = (&doc["runs"][0], &doc["runs"][1]);
    assert_eq!(b["label"], "recorded");
    assert_eq!(a["counts"]["arrived"], b["counts"]["arrived"]);
    assert_eq!(
        a["counts"]["arrived"].as_u64(),
        Some(planned_tasks.len() as u64)
    );
    // Usage: the simulation runs each task for its extracted duration, so
    // per account it uses what was recorded, give or take the step (1 s)
    // and a poll interval (2 s) of pick-up per task.
    for acc in a["accounts"].as_array().expect("accounts") {
        let name = acc["account"].as_str().unwrap_or_default();
        let rec = b["accounts"]
            .as_array()
            .and_then(|v| v.iter().find(|x| x["account"] == name))
            .unwrap_or_else(|| panic!("{name} not recorded"));
        let n = rec["all"]["tasks"].as_f64().unwrap_or(0.0);
        let (s, r) = (
            acc["all"]["used_bot_s"].as_f64().unwrap_or(0.0),
            rec["all"]["used_bot_s"].as_f64().unwrap_or(0.0),
        );
        assert!(
            s >= r - 2.0 * n - 1.0 && s <= r + 3.0 * n + 1.0,
            "{name}: simulated {s} bot-s, recorded {r} ({n} tasks)"
        );
    }
    assert!(doc["differences"].as_array().is_some_and(|d| !d.is_empty()));

    // The HTML report of the same comparison.
    let html = d.join("report.html");
    cli(&[
        "simulate",
        "--workload",
        path(&from_files),
        "--pools",
        path(&pools),
        "--compare",
        "recorded",
        "--html",
        path(&html),
    ])
    .ok();
    let page = std::fs::read_to_string(&html).expect("read report");
    assert!(page.contains("recorded") && page.contains("<svg"));
}

#[test]
fn helpful_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let w = d.join("w.jsonl");
    std::fs::write(
        &w,
        "{\"format\":\"qscheduler-workload\",\"version\":1,\"pool\":\"p\",\"start\":\"2030-01-01T00:00:00Z\",\"duration\":10}\n{\"task\":\"t\",\"at\":1}\n",
    )
    .expect("write");
    let pools = d.join("pools.toml");
    std::fs::write(&pools, "[pools.a]\n[pools.b]\n").expect("write");
    let e = cli(&[
        "simulate",
        "--workload",
        path(&w),
        "--pools",
        path(&pools),
        "--pool",
        "a",
        "--step",
        "0",
    ]);
    assert!(e.fails().contains("the step must be"), "{e:#?}");
    let e = cli(&["simulate", "--workload", path(&w), "--pools", path(&pools)]);
    assert!(e.fails().contains("choose one with --pool"), "{e:#?}");
    let e = cli(&[
        "simulate",
        "--workload",
        path(&w),
        "--pools",
        path(&pools),
        "--pool",
        "a",
        "--compare",
        "recorded",
    ]);
    assert!(e.fails().contains("carries no recorded outcome"), "{e:#?}");
    std::fs::write(&pools, "[pools.a.accounts.x]\ncharge_rate = [-1]\n").expect("write");
    let e = cli(&["simulate", "--workload", path(&w), "--pools", path(&pools)]);
    assert!(
        e.fails().contains("pools.toml:2:16: charge_rate[0]"),
        "{e:#?}"
    );
    std::fs::write(&w, "{\"bot\":\"b\"}\n").expect("write");
    let e = cli(&["simulate", "--workload", path(&w), "--pools", path(&pools)]);
    assert!(
        e.fails()
            .contains("line 1: the first line must be the header"),
        "{e:#?}"
    );
    let e = cli(&["workload", "extract", "--events", path(d)]);
    assert!(e.fails().contains("no event log files"), "{e:#?}");
    let e = cli(&["workload", "extract"]);
    e.usage_error();
}

/// The same model and seed give the same workload file, and the same
/// workload and configuration give the same report, byte for byte.
#[test]
fn same_seed_same_output() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let model = d.join("model.toml");
    let pools = d.join("pools.toml");
    std::fs::write(&model, MODEL).expect("write model");
    std::fs::write(&pools, POOLS).expect("write pools");
    let mut outputs = Vec::new();
    for n in 0..2 {
        let w = d.join(format!("w{n}.jsonl"));
        cli(&[
            "workload",
            "generate",
            "--model",
            path(&model),
            "--out",
            path(&w),
        ])
        .ok();
        let report = cli(&[
            "simulate",
            "--workload",
            path(&w),
            "--pools",
            path(&pools),
            "-o",
            "json",
        ]);
        outputs.push((
            std::fs::read(&w).expect("read workload"),
            report.ok().to_owned(),
        ));
    }
    assert_eq!(outputs[0], outputs[1]);
    let other = d.join("other.jsonl");
    cli(&[
        "workload",
        "generate",
        "--model",
        path(&model),
        "--seed",
        "4",
        "--out",
        path(&other),
    ])
    .ok();
    assert_ne!(std::fs::read(&other).expect("read"), outputs[0].0);
}
