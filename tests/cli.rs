//! End-to-end tests of `qscheduler pool`, `account` and `inspect`: the real
//! binary against a real server process.

mod cli_support;

use cli_support::{cli, run_env, server, swarming};
use serde_json::{Value, json};

/// An address where nothing listens: a value error must be reported before
/// anything tries to reach it.
const NOWHERE: &str = "http://127.0.0.1:1";

fn rates(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap_or(f64::NAN))
        .collect()
}

#[test]
fn pool_create_mod_delete() {
    let s = server();
    let out = cli(
        &s,
        &[
            "pool",
            "create",
            "p-life",
            "--allow-preemption",
            "false",
            "--bot-expiration",
            "600",
        ],
    );
    assert_eq!(out.ok(), "Created pool p-life.\n");
    let v = cli(&s, &["inspect", "p-life", "--output", "json"]).json();
    assert_eq!(v["disablePreemption"], json!(true));
    assert_eq!(v["numWaitingTasks"], json!(0));

    let err = cli(&s, &["pool", "create", "p-life"]).fails().to_string();
    assert!(err.contains("ALREADY_EXISTS"), "{err}");

    cli(&s, &["pool", "mod", "p-life", "--allow-preemption", "true"]).ok();
    let v = cli(&s, &["inspect", "p-life", "--output", "json"]).json();
    assert_eq!(v["disablePreemption"], json!(false));

    let err = cli(&s, &["pool", "mod", "p-life"])
        .usage_error()
        .to_string();
    assert!(err.contains("nothing to change"), "{err}");

    assert_eq!(
        cli(&s, &["pool", "delete", "p-life"]).ok(),
        "Deleted pool p-life.\n"
    );
    let err = cli(&s, &["inspect", "p-life"]).fails().to_string();
    assert!(err.contains("NOT_FOUND") && err.contains("p-life"), "{err}");
    let err = cli(&s, &["pool", "delete", "p-life"]).fails().to_string();
    assert!(err.contains("NOT_FOUND"), "{err}");
    let err = cli(&s, &["pool", "mod", "p-life", "--bot-expiration", "5"])
        .fails()
        .to_string();
    assert!(err.contains("NOT_FOUND"), "{err}");
}

#[test]
fn account_add_mod_list_delete() {
    let s = server();
    cli(&s, &["pool", "create", "p-acct"]).ok();
    let out = cli(
        &s,
        &[
            "account",
            "add",
            "p-acct",
            "team-a",
            "--rate",
            "5,2",
            "--rate",
            "0.5",
            "--charge-time",
            "3600",
            "--fanout",
            "4",
            "--disable-free-tasks",
            "true",
            "--description",
            "Team A",
            "--per-label-limit",
            "label-model=2",
            "--per-label-limit",
            "label-os=1",
        ],
    );
    assert_eq!(out.ok(), "Added account team-a to pool p-acct.\n");
    cli(&s, &["account", "add", "p-acct", "team-b", "--rates", "1"]).ok();
    // Rates are f32 on the wire; JSON shows them as typed.
    cli(
        &s,
        &["account", "add", "p-acct", "team-c", "--rate", "0.05"],
    )
    .ok();
    let raw = cli(&s, &["account", "list", "p-acct", "--output", "json"]);
    assert!(raw.ok().contains("0.05,"), "{raw:?}");
    cli(&s, &["account", "delete", "p-acct", "team-c"]).ok();

    let v = cli(&s, &["account", "list", "p-acct", "--output", "json"]).json();
    let a = &v["accounts"]["team-a"];
    assert_eq!(rates(&a["chargeRate"]), vec![5.0, 2.0, 0.5, 0.0, 0.0]);
    assert_eq!(a["maxChargeSeconds"], json!(3600.0));
    assert_eq!(a["maxFanout"], json!(4));
    assert_eq!(a["disableFreeTasks"], json!(true));
    assert_eq!(a["description"], json!("Team A"));
    assert_eq!(
        a["perLabelTaskLimits"],
        json!({"label-model": 2, "label-os": 1})
    );
    let b = &v["accounts"]["team-b"];
    assert_eq!(rates(&b["chargeRate"]), vec![1.0, 0.0, 0.0, 0.0, 0.0]);
    assert_eq!(b["maxFanout"], json!(0));
    assert_eq!(b["description"], json!(""));

    // Adding an existing account would zero its balance: refused.
    let err = cli(&s, &["account", "add", "p-acct", "team-b", "--rate", "3"])
        .fails()
        .to_string();
    assert!(err.contains("already has an account \"team-b\""), "{err}");
    cli(
        &s,
        &[
            "account",
            "add",
            "p-acct",
            "team-b",
            "--rate",
            "3",
            "--replace",
        ],
    )
    .ok();

    // mod changes only what is given.
    let out = cli(
        &s,
        &[
            "account",
            "mod",
            "p-acct",
            "team-a",
            "--rate",
            "7",
            "--description",
            "",
            "--fanout",
            "0",
        ],
    );
    assert_eq!(out.ok(), "Modified account team-a of pool p-acct.\n");
    let v = cli(&s, &["account", "list", "p-acct", "--output", "json"]).json();
    let a = &v["accounts"]["team-a"];
    assert_eq!(rates(&a["chargeRate"]), vec![7.0, 0.0, 0.0, 0.0, 0.0]);
    assert_eq!(a["maxChargeSeconds"], json!(3600.0));
    assert_eq!(a["maxFanout"], json!(0));
    assert_eq!(a["disableFreeTasks"], json!(true));
    assert_eq!(a["description"], json!(""));
    assert_eq!(
        a["perLabelTaskLimits"],
        json!({"label-model": 2, "label-os": 1})
    );
    assert_eq!(rates(&v["accounts"]["team-b"]["chargeRate"])[0], 3.0);
    cli(
        &s,
        &["account", "mod", "p-acct", "team-a", "--reset-balance"],
    )
    .ok();
    cli(
        &s,
        &[
            "account",
            "mod",
            "p-acct",
            "team-a",
            "--per-label-limit",
            "label-os=3",
        ],
    )
    .ok();
    let v = cli(&s, &["account", "list", "p-acct", "--output", "json"]).json();
    assert_eq!(
        v["accounts"]["team-a"]["perLabelTaskLimits"],
        json!({"label-os": 3})
    );

    let table = cli(&s, &["account", "list", "p-acct"]).ok().to_string();
    let row = table
        .lines()
        .find(|l| l.starts_with("team-a "))
        .unwrap_or_else(|| panic!("{table}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cells,
        [
            "team-a",
            "7",
            "0",
            "0",
            "0",
            "0",
            "3600",
            "unlimited",
            "no",
            "label-os=3"
        ]
    );

    let err = cli(&s, &["account", "mod", "p-acct", "nobody", "--rate", "1"])
        .fails()
        .to_string();
    assert!(err.contains("NOT_FOUND") && err.contains("nobody"), "{err}");

    assert_eq!(
        cli(&s, &["account", "delete", "p-acct", "team-b"]).ok(),
        "Deleted account team-b of pool p-acct.\n"
    );
    let err = cli(&s, &["account", "delete", "p-acct", "team-b"])
        .fails()
        .to_string();
    assert!(err.contains("has no account \"team-b\""), "{err}");
    let v = cli(&s, &["account", "list", "p-acct", "--output", "json"]).json();
    assert_eq!(v["accounts"].as_object().map(|m| m.len()), Some(1));

    let err = cli(&s, &["account", "list", "no-such-pool"])
        .fails()
        .to_string();
    assert!(err.contains("NOT_FOUND"), "{err}");
    let err = cli(&s, &["account", "add", "no-such-pool", "x", "--rate", "1"])
        .fails()
        .to_string();
    assert!(err.contains("NOT_FOUND"), "{err}");
}

#[test]
fn bad_values_are_refused_before_sending() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["account", "add", "p", "a", "--rate", "1,o"],
            "\"o\" is not a number",
        ),
        (&["account", "add", "p", "a", "--rate", "-1"], "negative"),
        (
            &["account", "add", "p", "a", "--rate", "nan"],
            "not a finite number",
        ),
        (
            &["account", "add", "p", "a", "--rate", "inf"],
            "not a finite number",
        ),
        (
            &["account", "add", "p", "a", "--rate", "1e40"],
            "larger than",
        ),
        (
            &[
                "account", "add", "p", "a", "--rate", "1,2,3", "--rate", "4,5,6",
            ],
            "6 charge rates given",
        ),
        (&["account", "add", "p", "a", "--fanout", "-1"], "negative"),
        (
            &["account", "add", "p", "a", "--fanout", "2.5"],
            "not a whole number",
        ),
        (
            &["account", "add", "p", "a", "--charge-time", "-5"],
            "negative",
        ),
        (
            &[
                "account",
                "add",
                "p",
                "a",
                "--per-label-limit",
                "label-model",
            ],
            "is not KEY=N",
        ),
        (
            &["account", "add", "p", "a", "--per-label-limit", "k=-1"],
            "negative",
        ),
        (
            &["account", "add", "p", "a", "--per-label-limit", "=1"],
            "must not be empty",
        ),
        (
            &[
                "account",
                "add",
                "p",
                "a",
                "--per-label-limit",
                "k=1",
                "--per-label-limit",
                "k=2",
            ],
            "given more than once",
        ),
        (
            &["account", "add", "p", "a", "--disable-free-tasks", "yes"],
            "not true or false",
        ),
        (&["account", "add", "p", ""], "is required"),
        (&["account", "mod", "p", "a"], "nothing to change"),
        (&["account", "mod", "p", "a", "--rate", "x"], "not a number"),
        (&["pool", "create", ""], "is required"),
        // The server's id rule, applied before sending.
        (&["pool", "create", "a\nb"], "control character U+000A"),
        (
            &["pool", "mod", "p", "--allow-preemption", "maybe"],
            "not true or false",
        ),
        (&["pool", "mod", "p", "--bot-expiration", "-1"], "negative"),
        (&["pool", "wipe", "p"], "without --yes-wipe-everything"),
        (
            &["inspect", "p", "--output", "json", "--tasks"],
            "cannot be combined",
        ),
        (&["inspect", "p", "--output", "xml"], "invalid value"),
        (&["inspect"], "required"),
        (&["account", "add", "p"], "required"),
    ];
    // Each is a usage error (exit status 2): clap refuses the value, or the
    // command refuses a combination before connecting.
    for (args, expected) in cases {
        let out = run_env(args, Some(NOWHERE));
        let err = out.usage_error();
        assert!(
            err.contains(expected),
            "{args:?}: expected {expected:?} in {err}"
        );
        assert!(
            !err.contains("hint: is the server running"),
            "{args:?} reached for the server: {err}"
        );
    }
}

#[test]
fn unreachable_server_gets_a_hint() {
    for transport in ["prpc", "grpc"] {
        let out = run_env(
            &[
                "inspect",
                "p",
                "--transport",
                transport,
                "--server",
                NOWHERE,
            ],
            None,
        );
        let err = out.fails();
        assert!(err.contains("UNAVAILABLE"), "{transport}: {err}");
        assert!(
            err.contains("hint: is the server running at http://127.0.0.1:1?"),
            "{transport}: {err}"
        );
    }
    // The default server is 127.0.0.1:8082, named in the hint when unset.
    let help = run_env(&["inspect", "--help"], None);
    assert!(help.ok().contains("http://127.0.0.1:8082"), "{help:?}");
}

#[test]
fn grpc_transport() {
    let s = server();
    let g = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--transport", "grpc", "--server", &s.url]);
        run_env(&all, None)
    };
    g(&["pool", "create", "p-grpc"]).ok();
    g(&[
        "account",
        "add",
        "p-grpc",
        "a",
        "--rate",
        "2",
        "--per-label-limit",
        "k=1",
    ])
    .ok();
    g(&["account", "mod", "p-grpc", "a", "--charge-time", "60"]).ok();
    let v = g(&["inspect", "p-grpc", "--output", "json"]).json();
    assert_eq!(rates(&v["accountConfigs"]["a"]["chargeRate"])[0], 2.0);
    assert_eq!(v["accountConfigs"]["a"]["maxChargeSeconds"], json!(60.0));
    let err = g(&["account", "add", "p-grpc", "a", "--rate", "1"])
        .fails()
        .to_string();
    assert!(err.contains("already has"), "{err}");
    let err = g(&["inspect", "p-missing"]).fails().to_string();
    assert!(err.contains("NOT_FOUND"), "{err}");
    g(&["pool", "delete", "p-grpc"]).ok();
}

#[test]
fn inspect_views_and_wipe() {
    let s = server();
    let pool = "p-inspect";
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
            "--description",
            "Team A",
        ],
    )
    .ok();
    let t0 = swarming::now();
    let linux: &[&str] = &["os:linux"];
    swarming::notify_pending(
        &s.url,
        pool,
        t0,
        &[
            ("t1", "team-a", linux),
            ("t2", "team-a", linux),
            ("t3", "other", linux),
        ],
    );
    let got = swarming::assign(
        &s.url,
        pool,
        t0 + 1,
        &[
            ("bot1", &["os:linux", "pool:x"]),
            ("bot2", &["os:mac", "cpu:arm64"]),
        ],
    );
    assert_eq!(got, vec![("bot1".to_string(), "t1".to_string())]);

    // The whole response as JSON, checked against what was set.
    let v = cli(&s, &["inspect", pool, "--output", "json"]).json();
    assert_eq!(v["numWaitingTasks"], json!(2));
    assert_eq!(v["numRunningTasks"], json!(1));
    assert_eq!(v["numIdleBots"], json!(1));
    assert_eq!(v["disablePreemption"], json!(false));
    let cfg = &v["accountConfigs"]["team-a"];
    assert_eq!(rates(&cfg["chargeRate"]), vec![5.0, 2.0, 0.0, 0.0, 0.0]);
    assert_eq!(cfg["maxChargeSeconds"], json!(3600.0));
    assert_eq!(cfg["description"], json!("Team A"));
    assert_eq!(rates(&v["accountBalances"]["team-a"]["value"]).len(), 5);
    let running = &v["runningTasks"][0];
    assert_eq!(running["id"], json!("t1"));
    assert_eq!(running["botId"], json!("bot1"));
    assert_eq!(running["priority"], json!(0));
    assert_eq!(running["accountId"], json!("team-a"));
    let mut waiting: Vec<&str> = v["waitingTasks"]
        .as_array()
        .expect("waitingTasks")
        .iter()
        .filter_map(|t| t["id"].as_str())
        .collect();
    waiting.sort();
    assert_eq!(waiting, ["t2", "t3"]);
    assert_eq!(v["idleBots"][0]["id"], json!("bot2"));
    assert_eq!(
        v["idleBots"][0]["dimensions"],
        json!(["cpu:arm64", "os:mac"])
    );

    let summary = cli(&s, &["inspect", pool]).ok().to_string();
    assert!(summary.starts_with("Pool p-inspect\n"), "{summary}");
    assert!(summary.contains("Waiting tasks:  2\n"), "{summary}");
    assert!(summary.contains("Running tasks:  1\n"), "{summary}");
    assert!(summary.contains("Idle bots:      1\n"), "{summary}");
    let words = |line: &str| {
        line.split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let row = summary
        .lines()
        .find(|l| l.starts_with("team-a "))
        .map(words);
    assert_eq!(
        row.as_ref().map(|r| &r[1..3]),
        Some(&["1".to_string(), "1".to_string()][..]),
        "{summary}"
    );
    assert!(summary.contains("other (not configured)"), "{summary}");

    let accounts = cli(&s, &["inspect", pool, "--accounts"]).ok().to_string();
    for title in [
        "Account Description",
        "Account Balance(bot seconds)",
        "Account Charge Rate(bot seconds per second)",
        "Account Policy",
    ] {
        assert!(
            accounts.contains(&format!("{title}\n{}\n", "=".repeat(64))),
            "{accounts}"
        );
    }
    let lines: Vec<&str> = accounts.lines().collect();
    let find = |after: &str| {
        let i = lines
            .iter()
            .position(|l| *l == after)
            .unwrap_or_else(|| panic!("{accounts}"));
        words(lines[i + 3])
    };
    assert_eq!(find("Account Description"), ["team-a", "Team", "A"]);
    assert_eq!(
        find("Account Charge Rate(bot seconds per second)"),
        ["team-a", "5", "2", "0", "0", "0"]
    );
    assert_eq!(
        find("Account Policy"),
        ["team-a", "3600.0", "0", "map[]", "false"]
    );
    let balance = find("Account Balance(bot seconds)");
    assert_eq!(balance.len(), 6);
    assert!(
        balance[1..]
            .iter()
            .all(|b| b.contains('.') && b.parse::<f64>().is_ok()),
        "{balance:?}"
    );

    let bots = cli(&s, &["inspect", pool, "--bots"]).ok().to_string();
    let lines: Vec<&str> = bots.lines().collect();
    assert_eq!(lines[0], "Bot Summary");
    assert_eq!(words(lines[2]), ["IdleBot", "Age(Seconds)", "Dimensions"]);
    let first = words(lines[3]);
    assert_eq!(
        (first[0].as_str(), first[2].as_str()),
        ("bot2", "cpu:arm64"),
        "{bots}"
    );
    assert_eq!(words(lines[4]), ["os:mac"], "{bots}");
    assert!(
        lines[4].starts_with(' '),
        "continuation rows leave the first columns empty: {bots}"
    );

    let tasks = cli(&s, &["inspect", pool, "--tasks"]).ok().to_string();
    let lines: Vec<&str> = tasks.lines().collect();
    assert_eq!(lines[0], "Running Tasks");
    assert_eq!(words(lines[3])[..4], ["t1", "bot1", "0", "team-a"]);
    let w = lines
        .iter()
        .position(|l| *l == "Waiting Tasks")
        .expect("waiting table");
    assert_eq!(words(lines[w + 3])[..2], ["t2", "team-a"]);
    assert_eq!(words(lines[w + 4])[..2], ["t3", "other"]);

    // Views combine.
    let both = cli(&s, &["inspect", pool, "--bots", "--tasks"])
        .ok()
        .to_string();
    assert_eq!(both, bots + &tasks);

    // A wipe needs its confirmation; then it drops tasks and bots, not
    // accounts.
    let err = cli(&s, &["pool", "wipe", pool]).usage_error().to_string();
    assert!(err.contains("--yes-wipe-everything"), "{err}");
    assert_eq!(
        cli(&s, &["inspect", pool, "--output", "json"]).json()["numRunningTasks"],
        json!(1)
    );
    assert_eq!(
        cli(&s, &["pool", "wipe", pool, "--yes-wipe-everything"]).ok(),
        "Wiped pool p-inspect.\n"
    );
    let v = cli(&s, &["inspect", pool, "--output", "json"]).json();
    assert_eq!(v["numRunningTasks"], json!(0));
    assert_eq!(v["numWaitingTasks"], json!(0));
    assert_eq!(v["numIdleBots"], json!(0));
    assert_eq!(
        v["accountConfigs"]["team-a"]["description"],
        json!("Team A")
    );
}

#[test]
fn help_explains_units_and_exit_codes() {
    let out = run_env(&["account", "add", "--help"], None);
    let help = out.ok();
    assert!(help.contains("bot-seconds per second"), "{help}");
    assert!(help.contains("--per-label-limit <KEY=N>"), "{help}");
    assert!(help.contains("QSCHEDULER_SERVER"), "{help}");
    let help = run_env(&["apply", "--help"], None).ok().to_string();
    assert!(
        help.contains("--dry-run") && help.contains("--prune"),
        "{help}"
    );
    assert!(
        run_env(&["pool", "wipe", "--help"], None)
            .ok()
            .contains("--yes-wipe-everything")
    );
    // Usage errors exit with 2 (clap's convention), other failures with 1.
    let out = run_env(&["pool", "frobnicate"], None);
    out.usage_error();
    let out = run_env(&["pool"], None);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("Usage: qscheduler pool"), "{out:?}");
}

#[test]
fn pool_list_in_every_output_format() {
    let s = server();
    for p in ["pl-a", "pl-b"] {
        cli(&s, &["pool", "create", p]).ok();
    }
    // The server is shared with other tests: look for our pools only.
    let table = cli(&s, &["pool", "list"]).ok().to_string();
    let header = table.lines().next().unwrap_or_default();
    assert!(
        header.starts_with("POOL") && header.contains("STATE"),
        "{table}"
    );
    for p in ["pl-a", "pl-b"] {
        let line = table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(p))
            .unwrap_or_else(|| panic!("{p} missing: {table}"));
        assert!(line.contains("SERVING"), "{line}");
    }

    let v = cli(&s, &["pool", "list", "-o", "json"]).json();
    let pools = v["pools"].as_array().expect("pools");
    let ids: Vec<&str> = pools.iter().filter_map(|p| p["poolId"].as_str()).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert_eq!(ids, sorted, "sorted by id");
    let a = pools.iter().find(|p| p["poolId"] == "pl-a").expect("pl-a");
    assert_eq!(a["state"], json!("SERVING"));
    assert!(
        !a["replicaId"].as_str().unwrap_or_default().is_empty(),
        "{a}"
    );

    // YAML carries the same document as JSON.
    let yaml = cli(&s, &["pool", "list", "--output", "yaml"])
        .ok()
        .to_string();
    let from_yaml: Value = serde_yaml_ng::from_str(&yaml).expect("YAML");
    // Other tests create and delete pools between the two listings, so
    // compare the entries of this test's pools, which nothing else touches.
    let ours = |doc: &Value| -> Vec<Value> {
        doc["pools"]
            .as_array()
            .expect("pools")
            .iter()
            .filter(|p| p["poolId"] == "pl-a" || p["poolId"] == "pl-b")
            .cloned()
            .collect()
    };
    assert_eq!(ours(&from_yaml).len(), 2, "{yaml}");
    assert_eq!(ours(&from_yaml), ours(&v), "{yaml}");

    // So do the other read commands.
    let yaml = cli(&s, &["inspect", "pl-a", "-o", "yaml"]).ok().to_string();
    let from_yaml: Value = serde_yaml_ng::from_str(&yaml).expect("YAML");
    assert_eq!(from_yaml["numWaitingTasks"], json!(0), "{yaml}");
    let yaml = cli(&s, &["account", "list", "pl-a", "-o", "yaml"])
        .ok()
        .to_string();
    let from_yaml: Value = serde_yaml_ng::from_str(&yaml).expect("YAML");
    assert_eq!(from_yaml["accounts"], json!({}), "{yaml}");
}

#[test]
fn version_completions_and_man_pages() {
    let version = run_env(&["--version"], None).ok().to_string();
    assert!(
        version.starts_with(&format!(
            "qscheduler {} (commit ",
            env!("CARGO_PKG_VERSION")
        )),
        "{version}"
    );
    for shell in ["bash", "zsh", "fish"] {
        let script = run_env(&["completions", shell], None).ok().to_string();
        // Subcommands and their flags are in the script.
        for word in ["inspect", "pool", "output"] {
            assert!(script.contains(word), "{shell}: {word} missing");
        }
    }
    run_env(&["completions", "tcsh"], None).usage_error();

    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("man");
    let path = out.to_str().expect("utf-8 path");
    run_env(&["man", path], None).ok();
    for page in [
        "qscheduler.1",
        "qscheduler-serve.1",
        "qscheduler-pool-list.1",
    ] {
        let text =
            std::fs::read_to_string(out.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(
            text.starts_with(".ie") || text.contains(".TH"),
            "{page} is not a man page"
        );
    }
    let serve = std::fs::read_to_string(out.join("qscheduler-serve.1")).expect("serve page");
    assert!(
        serve.contains("QSCHEDULER_LISTEN"),
        "env vars are documented"
    );
}
