//! `qscheduler config check` and `serve --config`, as a user runs them.

use std::process::Command;

fn qscheduler() -> Command {
    Command::new(env!("CARGO_BIN_EXE_qscheduler"))
}

#[test]
fn the_example_file_is_valid() {
    let out = qscheduler()
        .args(["config", "check", "docs/qscheduler.example.toml"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));

    // `config example` prints the same file.
    let out = qscheduler().args(["config", "example"]).output().unwrap();
    assert!(out.status.success());
    let example = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/qscheduler.example.toml"),
    )
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), example);
}

/// Runs `config check` on `text`; returns (exit code, stderr).
fn check(text: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, text).unwrap();
    let out = qscheduler()
        .args(["config", "check"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn broken_files_are_rejected_with_line_and_reason() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "[server]\nlisten = \"127.0.0.1:8082\"\n\n[batching]\nwindow = \"-5ms\"\n",
            "bad.toml:5:10:",
            "must not be negative",
        ),
        (
            "[batching]\nmax_batch = \"many\"\n",
            "bad.toml:2:13:",
            "invalid type: string \"many\"",
        ),
        (
            "[metrics]\nenabled = true\nscrape_every = \"10s\"\n",
            "bad.toml:3:1:",
            "unknown field `scrape_every`",
        ),
        (
            "[server]\nlisten = \"not an address\"\n",
            "bad.toml:2:10:",
            "invalid address",
        ),
        (
            "[store]\npostgres_url = \"mysql://db/x\"\n",
            "bad.toml:2:16:",
            "unsupported URL scheme \"mysql\"",
        ),
        (
            "[event_log.files]\nmax_files = 0\n",
            "bad.toml:2:13:",
            "must be at least 1",
        ),
        (
            "[limits]\nmax_dimensions_per_bot = 0\n",
            "bad.toml:2:26:",
            "must be at least 1",
        ),
        (
            "[connections]\nhttp2_max_concurrent_streams = -4\n",
            "bad.toml:2:32:",
            "must be at least 1",
        ),
        (
            "[limits]\npool_queue_bytes = \"1MiB\"\n",
            "",
            "limits.pool_queue_bytes",
        ),
    ];
    for (text, position, reason) in cases {
        let (code, err) = check(text);
        assert_eq!(code, 1, "{text}: {err}");
        assert!(err.contains(position), "{text}: want {position} in {err}");
        assert!(err.contains(reason), "{text}: want {reason:?} in {err}");
    }
}

#[test]
fn serve_refuses_a_broken_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "[batching]\nwindow = \"-1s\"\n").unwrap();
    let out = qscheduler()
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("c.toml:2:10:"), "{err}");
}
