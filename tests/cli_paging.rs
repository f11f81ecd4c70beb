//! `qscheduler inspect` reads a pool page by page and prints what one
//! unpaged call would: the real binary against a real server process, with
//! more tasks and bots than one page holds. (A file of its own, so the
//! server's count of InspectPool calls is this test's alone.)

mod cli_support;

use std::io::{Read, Write};

use cli_support::{cli, server, swarming};
use serde_json::Value;

/// Successful InspectPool calls the server has answered, from its
/// Prometheus endpoint.
fn inspect_calls(url: &str) -> u64 {
    let addr = url.strip_prefix("http://").expect("an http:// URL");
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    text.lines()
        .filter(|l| l.starts_with("qscheduler_rpc_duration_seconds_count{"))
        .filter(|l| l.contains("method=\"InspectPool\"") && l.contains("code=\"OK\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// The response without the ages, which follow the wall clock and so may
/// differ between two calls a second apart.
fn without_ages(mut v: Value) -> Value {
    for list in ["waitingTasks", "runningTasks", "idleBots"] {
        for entry in v[list].as_array_mut().into_iter().flatten() {
            if let Some(e) = entry.as_object_mut() {
                e.remove("ageSeconds");
            }
        }
    }
    v
}

/// A table view without the numbers standing alone (ages, and priorities
/// with them): everything else, ids and order included, must match.
fn without_numbers(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .map(|l| {
            l.split_whitespace()
                .filter(|w| !w.chars().all(|c| c.is_ascii_digit()))
                .map(str::to_owned)
                .collect()
        })
        .collect()
}

#[test]
fn inspect_pages_through_the_pool_and_prints_the_same() {
    let s = server();
    let pool = "p-paged";
    cli(&s, &["pool", "create", pool]).ok();
    cli(
        &s,
        &[
            "account",
            "add",
            pool,
            "team-a",
            "--rate",
            "5,2",
            "--charge-time",
            "3600",
        ],
    )
    .ok();
    let t0 = swarming::now();
    let linux: &[&str] = &["os:linux"];
    let ids: Vec<String> = (0..40).map(|i| format!("task-{i:02}")).collect();
    let tasks: Vec<(&str, &str, &[&str])> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let account = if i % 3 == 0 { "other" } else { "team-a" };
            (id.as_str(), account, linux)
        })
        .collect();
    swarming::notify_pending(&s.url, pool, t0, &tasks);
    let bots: Vec<String> = (0..11).map(|i| format!("bot-{i:02}")).collect();
    let mac: &[&str] = &["os:mac", "cpu:arm64"];
    let asking: Vec<(&str, &[&str])> = bots
        .iter()
        .enumerate()
        .map(|(i, b)| (b.as_str(), if i < 5 { linux } else { mac }))
        .collect();
    let assigned = swarming::assign(&s.url, pool, t0 + 1, &asking);
    assert_eq!(assigned.len(), 5, "{assigned:?}");
    // 35 waiting, 5 running and 6 idle: 46 entries, seven pages of 7.

    let before = inspect_calls(&s.url);
    let paged = cli(&s, &["inspect", pool, "-o", "json", "--page-size", "7"]).json();
    let calls = inspect_calls(&s.url) - before;
    assert_eq!(calls, 7, "InspectPool calls for 46 entries in pages of 7");
    let counts = |v: &Value, list: &str| v[list].as_array().map_or(0, Vec::len);
    assert_eq!(counts(&paged, "waitingTasks"), 35, "{paged}");
    assert_eq!(counts(&paged, "runningTasks"), 5, "{paged}");
    assert_eq!(counts(&paged, "idleBots"), 6, "{paged}");
    assert_eq!(paged["numWaitingTasks"], 35);
    assert_eq!(paged["nextPageToken"], "", "{paged}");

    // One call for everything, and the default page size (which holds the
    // whole pool here), give the same document.
    let before = inspect_calls(&s.url);
    let whole = cli(&s, &["inspect", pool, "-o", "json", "--page-size", "0"]).json();
    assert_eq!(inspect_calls(&s.url) - before, 1);
    let default = cli(&s, &["inspect", pool, "-o", "json"]).json();
    let paged = without_ages(paged);
    assert_eq!(paged, without_ages(whole));
    assert_eq!(paged, without_ages(default));

    // Every view prints the same, paged or not. Summaries and account
    // tables have no ages and must be equal to the byte.
    for view in [&[][..], &["--accounts"][..], &["--bots", "--tasks"][..]] {
        let run = |size: &str| {
            let mut args = vec!["inspect", pool, "--page-size", size];
            args.extend_from_slice(view);
            cli(&s, &args).ok().to_owned()
        };
        let (small, all) = (run("3"), run("0"));
        if view.contains(&"--tasks") {
            assert_eq!(
                without_numbers(&small),
                without_numbers(&all),
                "{small}\n{all}"
            );
            assert!(
                small.contains("task-39") && small.contains("bot-10"),
                "{small}"
            );
        } else {
            assert_eq!(small, all, "inspect {view:?}");
        }
    }

    // Bad page sizes are usage errors, as every bad flag value is.
    for bad in ["-1", "many", "2147483648"] {
        cli(&s, &["inspect", pool, "--page-size", bad]).usage_error();
    }
    cli(&s, &["pool", "delete", pool]).ok();
}
