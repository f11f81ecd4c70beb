//! End-to-end tests of `qscheduler apply`: the real binary against a real
//! server process.

mod cli_support;

use std::path::PathBuf;

use cli_support::{Server, cli, server, swarming};
use serde_json::{Value, json};

/// A pools file in its own temp dir (kept alive by the returned guard).
fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("pools.toml");
    std::fs::write(&path, text).expect("write pools file");
    (dir, path)
}

fn apply(s: &Server, path: &std::path::Path, extra: &[&str]) -> cli_support::Run {
    let path = path.to_str().expect("utf-8 path");
    let mut args = vec!["apply", "-f", path];
    args.extend(extra);
    cli(s, &args)
}

fn inspect(s: &Server, pool: &str) -> Value {
    cli(s, &["inspect", pool, "--output", "json"]).json()
}

fn rates(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap_or(f64::NAN))
        .collect()
}

const FIRST: &str = r#"
[pools.ap-one]
allow_preemption = false
bot_expiration_seconds = 600

[pools.ap-one.accounts.builders]
charge_rate = [5, 2]
max_charge_seconds = 3600
max_fanout = 10
disable_free_tasks = true
description = "CI builders"
per_label_task_limits = { label-model = 2 }

[pools.ap-one.accounts.try]
charge_rate = [1, 1, 0.5]

[pools.ap-two]
accounts.solo = { charge_rate = [3], max_charge_seconds = 60 }
"#;

#[test]
fn dry_run_apply_and_reapply() {
    let s = server();
    let (_dir, path) = write(FIRST);

    // A dry run shows the plan and changes nothing.
    let out = apply(&s, &path, &["--dry-run"]);
    let plan = out.ok();
    assert!(plan.contains("pool ap-one: create\n"), "{plan}");
    assert!(plan.contains("    allow_preemption: false\n"), "{plan}");
    assert!(plan.contains("  + account builders: create\n"), "{plan}");
    assert!(
        plan.contains("        charge_rate: [5, 2, 0, 0, 0]\n"),
        "{plan}"
    );
    assert!(plan.contains("pool ap-two: create\n"), "{plan}");
    assert!(plan.contains("Dry run: nothing was changed."), "{plan}");
    let err = cli(&s, &["inspect", "ap-one"]).fails().to_string();
    assert!(err.contains("NOT_FOUND"), "{err}");

    let out = apply(&s, &path, &[]);
    let text = out.ok();
    assert!(
        text.contains("Applied: 2 pools to create; 3 accounts to create."),
        "{text}"
    );

    let v = inspect(&s, "ap-one");
    assert_eq!(v["disablePreemption"], json!(true));
    let b = &v["accountConfigs"]["builders"];
    assert_eq!(rates(&b["chargeRate"]), vec![5.0, 2.0, 0.0, 0.0, 0.0]);
    assert_eq!(b["maxChargeSeconds"], json!(3600.0));
    assert_eq!(b["maxFanout"], json!(10));
    assert_eq!(b["disableFreeTasks"], json!(true));
    assert_eq!(b["description"], json!("CI builders"));
    assert_eq!(b["perLabelTaskLimits"], json!({"label-model": 2}));
    let t = &v["accountConfigs"]["try"];
    assert_eq!(rates(&t["chargeRate"]), vec![1.0, 1.0, 0.5, 0.0, 0.0]);
    assert_eq!(t["maxChargeSeconds"], json!(0.0));
    let v = inspect(&s, "ap-two");
    assert_eq!(v["disablePreemption"], json!(false));
    assert_eq!(rates(&v["accountConfigs"]["solo"]["chargeRate"])[0], 3.0);

    // The second apply finds nothing to do.
    let again = apply(&s, &path, &[]);
    let text = again.ok();
    assert!(text.contains("pool ap-one: no changes\n"), "{text}");
    assert!(text.contains("pool ap-two: no changes\n"), "{text}");
    assert!(
        text.contains("No changes: the server already matches"),
        "{text}"
    );
    assert!(!text.contains("Applied"), "{text}");

    // Change one rate, drop an account, add one; unlisted accounts are kept
    // without --prune.
    let second = FIRST
        .replace(
            "charge_rate = [1, 1, 0.5]",
            "charge_rate = [1, 1, 0.25]\ndescription = \"try jobs\"",
        )
        .replace(
            "accounts.solo = { charge_rate = [3], max_charge_seconds = 60 }",
            "accounts.new = {}",
        );
    let (_dir2, path2) = write(&second);
    let plan = apply(&s, &path2, &["--dry-run"]).ok().to_string();
    assert!(
        plan.contains("  ~ account try: modify (balance kept)\n"),
        "{plan}"
    );
    assert!(
        plan.contains("        charge_rate: [1, 1, 0.5, 0, 0] -> [1, 1, 0.25, 0, 0]\n"),
        "{plan}"
    );
    assert!(
        plan.contains("        description: \"\" -> \"try jobs\"\n"),
        "{plan}"
    );
    assert!(plan.contains("  + account new: create\n"), "{plan}");
    assert!(
        plan.contains("    account solo: not in the file; kept (--prune deletes it)\n"),
        "{plan}"
    );
    assert!(
        !plan.contains("builders"),
        "unchanged accounts are not listed: {plan}"
    );
    assert_eq!(
        rates(&inspect(&s, "ap-one")["accountConfigs"]["try"]["chargeRate"])[2],
        0.5,
        "a dry run changes nothing"
    );

    apply(&s, &path2, &[]).ok();
    let v = inspect(&s, "ap-one");
    assert_eq!(rates(&v["accountConfigs"]["try"]["chargeRate"])[2], 0.25);
    assert_eq!(v["accountConfigs"]["try"]["description"], json!("try jobs"));
    let two = inspect(&s, "ap-two");
    assert!(
        two["accountConfigs"]["solo"].is_object(),
        "kept without --prune"
    );
    assert!(two["accountConfigs"]["new"].is_object());

    // --prune deletes it.
    let out = apply(&s, &path2, &["--prune"]);
    let text = out.ok();
    assert!(text.contains("  - account solo: delete\n"), "{text}");
    let two = inspect(&s, "ap-two");
    assert!(two["accountConfigs"]["solo"].is_null(), "{two}");
    assert!(apply(&s, &path2, &["--prune"]).ok().contains("No changes"));
}

/// Removing every per-label limit needs a replacement, which zeroes the
/// balance: refused without --allow-balance-reset; other changes keep the
/// balance.
#[test]
fn balances_are_kept_unless_a_reset_is_allowed() {
    let s = server();
    let file = |limits: &str, description: &str| {
        write(&format!(
            "[pools.ap-bal.accounts.a]\ncharge_rate = [1]\nmax_charge_seconds = 3600\n\
             description = \"{description}\"\n{limits}\n"
        ))
    };
    let (_d1, with_limits) = file("per_label_task_limits = { k = 1 }", "one");
    apply(&s, &with_limits, &[]).ok();
    // A scheduling pass 100 s after the pool was created charges P0.
    swarming::assign(&s.url, "ap-bal", swarming::now() + 100, &[]);
    let p0 = |v: &Value| rates(&v["accountBalances"]["a"]["value"])[0];
    let before = p0(&inspect(&s, "ap-bal"));
    assert!(before >= 90.0, "balance {before}");

    let (_d2, changed) = file("per_label_task_limits = { k = 2 }", "two");
    apply(&s, &changed, &[]).ok();
    let v = inspect(&s, "ap-bal");
    assert_eq!(p0(&v), before, "a modify keeps the balance");
    assert_eq!(
        v["accountConfigs"]["a"]["perLabelTaskLimits"],
        json!({"k": 2})
    );

    let (_d3, cleared) = file("", "two");
    let plan = apply(&s, &cleared, &["--dry-run"]).ok().to_string();
    assert!(
        plan.contains("  ! account a: replace (its balance is reset to zero"),
        "{plan}"
    );
    assert!(
        plan.contains("per_label_task_limits: {k = 2} -> {}"),
        "{plan}"
    );
    assert!(plan.contains("needs --allow-balance-reset"), "{plan}");
    let err = apply(&s, &cleared, &[]).fails().to_string();
    assert!(
        err.contains("--allow-balance-reset") && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(
        inspect(&s, "ap-bal")["accountConfigs"]["a"]["perLabelTaskLimits"],
        json!({"k": 2})
    );

    apply(&s, &cleared, &["--allow-balance-reset"]).ok();
    let v = inspect(&s, "ap-bal");
    assert_eq!(v["accountConfigs"]["a"]["perLabelTaskLimits"], json!({}));
    assert_eq!(v["accountConfigs"]["a"]["description"], json!("two"));
    assert_eq!(p0(&v), 0.0);
    assert!(apply(&s, &cleared, &[]).ok().contains("No changes"));
}

#[test]
fn invalid_files_change_nothing() {
    let s = server();
    let (_d, path) = write(
        "[pools.ap-bad.accounts.a]\ncharge_rate = [1, -2]\n\
         [pools.ap-bad.accounts.b]\nmax_fanout = -1\nper_label_task_limits = { k = 1.5 }\n",
    );
    let err = apply(&s, &path, &[]).fails().to_string();
    assert!(
        err.contains("not valid") && err.contains("nothing was changed"),
        "{err}"
    );
    assert!(err.contains("pools.toml:"), "{err}");

    let (_d, path) = write(
        "[pools.ap-bad.accounts.a]\ncharge_rate = [1, -2]\n\
         [pools.ap-bad.accounts.b]\nmax_fanout = -1\n",
    );
    let err = apply(&s, &path, &[]).fails().to_string();
    assert!(err.contains("(2 problems)"), "{err}");
    assert!(
        err.contains("pools.toml:2:19: charge_rate[1] (P1): -2 is negative"),
        "{err}"
    );
    assert!(
        err.contains("pools.toml:4:14: max_fanout: -1 is negative"),
        "{err}"
    );

    let (_d, path) = write("[pools.ap-bad.accounts.a]\nchrge_rate = [1]\n");
    let err = apply(&s, &path, &[]).fails().to_string();
    assert!(
        err.contains("pools.toml:2:1: unknown field `chrge_rate`"),
        "{err}"
    );

    let err = cli(&s, &["inspect", "ap-bad"]).fails().to_string();
    assert!(err.contains("NOT_FOUND"), "{err}");

    let err = cli(&s, &["apply", "-f", "/nonexistent/pools.toml"])
        .fails()
        .to_string();
    assert!(err.contains("reading /nonexistent/pools.toml"), "{err}");
}

#[test]
fn the_example_file_applies() {
    let s = server();
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/pools.example.toml");
    apply(&s, &path, &[]).ok();
    let v = inspect(&s, "chromium-ci");
    assert_eq!(
        v["accountConfigs"]["builders"]["perLabelTaskLimits"],
        json!({"label-model": 2})
    );
    assert!(apply(&s, &path, &[]).ok().contains("No changes"));
}
