//! End-to-end tests of `qscheduler explain`, `report` and `top`: the real
//! binary against a real server process.

mod cli_support;

use cli_support::{cli, server, swarming};
use serde_json::json;

#[test]
fn explain_report_and_top() {
    let s = server();
    let pool = "p-insight";
    cli(&s, &["pool", "create", pool]).ok();
    cli(
        &s,
        &[
            "account",
            "add",
            pool,
            "team-a",
            "--rate",
            "1",
            "--charge-time",
            "600",
        ],
    )
    .ok();
    let t0 = swarming::now();
    let linux: &[&str] = &["os:linux"];
    let gpu: &[&str] = &["gpu:a100"];
    swarming::notify_pending(
        &s.url,
        pool,
        t0,
        &[
            ("t1", "team-a", linux),
            ("t2", "team-a", linux),
            ("g1", "team-a", gpu),
        ],
    );
    let got = swarming::assign(&s.url, pool, t0 + 1, &[("bot1", linux)]);
    assert_eq!(got.len(), 1);

    // A table for people...
    let out = cli(&s, &["explain", pool, "g1"]).ok().to_string();
    assert!(out.starts_with("Task g1: queued\n"), "{out}");
    assert!(out.contains("[no_matching_bot]"), "{out}");
    assert!(
        out.contains("ETA: unknown (no bot has its base labels)"),
        "{out}"
    );
    let out = cli(&s, &["explain", pool, "t2"]).ok().to_string();
    assert!(
        out.contains("Bots with its labels: 1 (0 idle, 1 busy)"),
        "{out}"
    );
    assert!(out.contains("[matching_bots_busy]"), "{out}");

    // ...and the whole response for scripts.
    let v = cli(&s, &["explain", pool, "t1", "-o", "json"]).json();
    assert_eq!(v["state"], json!("assigned_awaiting_pickup"));
    assert_eq!(v["botId"], json!("bot1"));
    let v = cli(&s, &["explain", pool, "nope", "-o", "json"]).json();
    assert_eq!(v["state"], json!("unknown"));
    let y = cli(&s, &["explain", pool, "g1", "-o", "yaml"])
        .ok()
        .to_string();
    assert!(y.contains("code: no_matching_bot"), "{y}");

    let out = cli(&s, &["report", pool, "--window", "1h"])
        .ok()
        .to_string();
    assert!(out.contains("team-a"), "{out}");
    let v = cli(&s, &["report", pool, "--window", "2h", "-o", "json"]).json();
    assert_eq!(v["windowSeconds"], json!("7200"));
    let err = cli(&s, &["report", pool, "--window", "8d"])
        .usage_error()
        .to_string();
    assert!(err.contains("--window"), "{err}");
    let err = cli(&s, &["report", pool, "--window", "soon"])
        .usage_error()
        .to_string();
    assert!(err.contains("soon"), "{err}");

    let out = cli(&s, &["top", pool, "-n", "1"]).ok().to_string();
    assert!(
        out.contains("qscheduler top - pool p-insight - 2 queued, 1 running"),
        "{out}"
    );
    assert!(out.contains("team-a"), "{out}");
    let v = cli(&s, &["top", pool, "-n", "1", "-o", "json"]).json();
    assert_eq!(v["queued"], json!("2"));

    let err = cli(&s, &["explain", "no-such-pool", "t1"])
        .fails()
        .to_string();
    assert!(err.contains("NOT_FOUND"), "{err}");
}
