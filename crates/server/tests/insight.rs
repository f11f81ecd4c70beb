//! `qscheduler.QSchedulerInsight` on a real server, over gRPC, pRPC binary
//! and pRPC JSON, and the `/ui/` dashboard in a real headless Chromium.
//!
//! Chromium is required, not optional: without it the browser test fails
//! and says how to install it (`.ci/run` installs it when missing). Set
//! `QSCHEDULER_SCREENSHOTS` to a directory to keep the screenshots (the
//! README's come from `docs/images`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::rpc::*;
use common::{TestServer, get};
use qscheduler_server::ServerOptions;
use qscheduler_wire::qscheduler as adm;
use tonic::Code;

fn options(dir: &Path) -> ServerOptions {
    ServerOptions {
        store: dir.join("store").to_str().unwrap().to_owned(),
        ..ServerOptions::default()
    }
}

/// A pool with two Linux bots busy with `ci` tasks, one more `ci` task
/// waiting for them, a GPU task no bot can run, and a `frugal` account
/// that disables free tasks and has no balance.
async fn populate(rpc: &Rpc, pool: &str) {
    rpc.create_pool(pool).await;
    rpc.add_account(pool, "ci", &[1.0], 600.0).await;
    rpc.create_account(adm::CreateAccountRequest {
        pool_id: pool.into(),
        account_id: "frugal".into(),
        config: Some(qscheduler_wire::protos::AccountConfig {
            charge_rate: vec![0.0],
            disable_free_tasks: true,
            ..Default::default()
        }),
    })
    .await
    .unwrap();
    rpc.notify(
        pool,
        vec![
            item(0, pending("ci-1", Some("ci"), &["os:linux"], 0)),
            item(0, pending("ci-2", Some("ci"), &["os:linux"], 0)),
            item(0, pending("ci-3", Some("ci"), &["os:linux"], 0)),
            item(0, pending("gpu-1", Some("ci"), &["gpu:a100"], 0)),
            item(0, pending("frugal-1", Some("frugal"), &["os:linux"], 0)),
        ],
    )
    .await;
    let linux = ["os:linux", "pool:ci"];
    rpc.assign(pool, 10, vec![bot("bot1", &linux), bot("bot2", &linux)])
        .await;
}

async fn explain(rpc: &Rpc, pool: &str, task: &str) -> adm::ExplainTaskResponse {
    rpc.explain_task(adm::ExplainTaskRequest {
        pool_id: pool.into(),
        task_id: task.into(),
    })
    .await
    .unwrap_or_else(|e| panic!("explain {task}: {e}"))
}

fn codes(e: &adm::ExplainTaskResponse) -> Vec<&str> {
    e.reasons.iter().map(|r| r.code.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_report_and_overview_on_every_transport() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(options(dir.path())).await;
    for transport in Transport::ALL {
        let rpc = Rpc::connect(server.addr, transport).await;
        let pool = format!("insight-{}", transport.name());
        populate(&rpc, &pool).await;

        let e = explain(&rpc, &pool, "ci-1").await;
        assert_eq!(e.state, "assigned_awaiting_pickup", "{transport:?}");
        assert_eq!(e.bot_id, "bot1");

        rpc.notify(
            &pool,
            vec![
                item(20, running("ci-1", "bot1")),
                item(20, running("ci-2", "bot2")),
            ],
        )
        .await;
        let e = explain(&rpc, &pool, "ci-1").await;
        assert_eq!((e.state.as_str(), e.running_level), ("running", 0));

        let e = explain(&rpc, &pool, "ci-3").await;
        assert_eq!(e.state, "queued");
        let bots = e.bots.unwrap();
        assert_eq!((bots.matching, bots.idle, bots.busy), (2, 0, 2));
        assert_eq!(
            codes(&e),
            vec!["matching_bots_busy", "no_cheaper_task_to_preempt"]
        );
        let level = e.level.clone().unwrap();
        assert_eq!((level.account_id.as_str(), level.level), ("ci", 0));
        assert_eq!(e.standing.unwrap().position, 1);
        // No task has finished yet: no turnover to estimate from.
        let eta = e.eta.clone().unwrap();
        assert!(!eta.known);
        assert_eq!(eta.unknown_reason, "no task finished in the window");

        let e = explain(&rpc, &pool, "gpu-1").await;
        assert_eq!(codes(&e), vec!["no_matching_bot"]);
        assert!(e.reasons[0].message.contains("gpu:a100"));

        let e = explain(&rpc, &pool, "frugal-1").await;
        assert_eq!(e.level.clone().unwrap().level, -1);
        assert!(
            codes(&e).contains(&"free_tasks_disabled"),
            "{:?}",
            codes(&e)
        );

        let e = explain(&rpc, &pool, "no-such-task").await;
        assert_eq!(e.state, "unknown");

        // bot1 asks again at t=100: ci-1 ran 90 s at P0 and is over; ci-3
        // takes bot1 after a 100 s wait.
        rpc.assign(&pool, 100, vec![bot("bot1", &["os:linux", "pool:ci"])])
            .await;
        let r = rpc
            .account_report(adm::AccountReportRequest {
                pool_id: pool.clone(),
                window_seconds: 0,
            })
            .await
            .unwrap();
        assert_eq!(r.window_seconds, 24 * 3600);
        let ci = r.accounts.iter().find(|a| a.account_id == "ci").unwrap();
        assert_eq!(ci.tasks_completed, 1);
        assert_eq!(ci.used_bot_seconds, 90.0);
        assert_eq!(ci.share, 1.0);
        let p0 = &ci.levels[0];
        assert_eq!(p0.assigned, 3);
        let wait = p0.wait.unwrap();
        assert_eq!(wait.count, 3);
        assert!(
            wait.p50_seconds >= 10.0 && wait.p50_seconds < 12.0,
            "{wait:?}"
        );
        assert!(
            wait.p99_seconds >= 100.0 && wait.p99_seconds < 120.0,
            "{wait:?}"
        );
        assert!(r.accounts.iter().any(|a| a.account_id == "frugal"));

        let o = rpc
            .pool_overview(adm::PoolOverviewRequest {
                pool_id: pool.clone(),
            })
            .await
            .unwrap();
        assert_eq!((o.queued, o.running, o.bots), (2, 2, 2));
        let ci = o.accounts.iter().find(|a| a.account_id == "ci").unwrap();
        assert_eq!((ci.queued, ci.running_by_level[0]), (1, 2));
        assert_eq!(ci.level, 0);
        let frugal = o
            .accounts
            .iter()
            .find(|a| a.account_id == "frugal")
            .unwrap();
        assert_eq!((frugal.level, frugal.queued), (-1, 1));
        assert_eq!(o.minutes.iter().map(|m| m.assigned).sum::<u64>(), 3);

        // Bad requests name the field.
        let bad = |s: tonic::Status, field: &str| {
            assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
            assert!(s.message().contains(field), "{s:?}");
        };
        bad(
            rpc.explain_task(adm::ExplainTaskRequest {
                pool_id: pool.clone(),
                task_id: String::new(),
            })
            .await
            .unwrap_err(),
            "task_id",
        );
        bad(
            rpc.explain_task(adm::ExplainTaskRequest {
                pool_id: String::new(),
                task_id: "x".into(),
            })
            .await
            .unwrap_err(),
            "pool_id",
        );
        bad(
            rpc.account_report(adm::AccountReportRequest {
                pool_id: pool.clone(),
                window_seconds: 8 * 86_400,
            })
            .await
            .unwrap_err(),
            "window_seconds",
        );
        let missing = rpc
            .explain_task(adm::ExplainTaskRequest {
                pool_id: "no-such-pool".into(),
                task_id: "x".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    }
    server.stop().await;
}

async fn report(rpc: &Rpc, pool: &str) -> adm::AccountReportResponse {
    rpc.account_report(adm::AccountReportRequest {
        pool_id: pool.into(),
        window_seconds: 0,
    })
    .await
    .unwrap()
}

/// The report's figures outlive the process: the pool's snapshots carry
/// them and recovery replays the log after the last one. Snapshots are
/// taken every few records, so the log before the restart is compacted and
/// the figures cannot come from it alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_figures_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path());
    opts.pool.snapshot_every_records = 2;
    opts.store_options.keep_snapshots = 1;
    let server = TestServer::start(opts.clone()).await;
    let rpc = Rpc::connect(server.addr, Transport::Grpc).await;
    let pool = "restart";
    populate(&rpc, pool).await;
    rpc.notify(
        pool,
        vec![
            item(20, running("ci-1", "bot1")),
            item(20, running("ci-2", "bot2")),
        ],
    )
    .await;
    // ci-1 ran 90 s at P0; ci-3 takes bot1 after waiting 100 s.
    rpc.assign(pool, 100, vec![bot("bot1", &["os:linux", "pool:ci"])])
        .await;
    let before = report(&rpc, pool).await;
    let overview_before = rpc
        .pool_overview(adm::PoolOverviewRequest {
            pool_id: pool.into(),
        })
        .await
        .unwrap();
    let ci = before
        .accounts
        .iter()
        .find(|a| a.account_id == "ci")
        .unwrap();
    assert_eq!(ci.tasks_completed, 1);
    assert_eq!(ci.used_bot_seconds, 90.0);
    assert_eq!(ci.levels[0].assigned, 3);
    assert_eq!(ci.levels[0].wait.unwrap().count, 3);
    assert!(before.covered_seconds > 0.0, "{before:?}");
    server.stop().await;

    // What the store holds: a snapshot with the figures' image, and a log
    // that no longer starts at record 1.
    {
        let store =
            qscheduler_store::Store::open(&opts.store, qscheduler_store::StoreOptions::default())
                .await
                .unwrap();
        let (h, rec) = store.open_pool(pool).await.unwrap();
        assert!(rec.snapshot.is_some(), "no snapshot was taken");
        assert!(rec.snapshot_extra.is_some(), "the snapshot has no figures");
        assert!(
            rec.records.first().is_none_or(|(s, _)| *s > 1),
            "the log was not compacted"
        );
        h.release().await.unwrap();
        store.shutdown().await.unwrap();
    }

    let server = TestServer::start(opts.clone()).await;
    let rpc = Rpc::connect(server.addr, Transport::Grpc).await;
    let after = report(&rpc, pool).await;
    assert_eq!(after, before);
    let overview_after = rpc
        .pool_overview(adm::PoolOverviewRequest {
            pool_id: pool.into(),
        })
        .await
        .unwrap();
    assert_eq!(overview_after.minutes, overview_before.minutes);
    // New events add to the restored figures: ci-2 finishes.
    rpc.assign(pool, 200, vec![bot("bot2", &["os:linux", "pool:ci"])])
        .await;
    let later = report(&rpc, pool).await;
    let ci = later
        .accounts
        .iter()
        .find(|a| a.account_id == "ci")
        .unwrap();
    assert_eq!(ci.tasks_completed, 2, "{later:?}");
    assert!(ci.used_bot_seconds > 90.0, "{later:?}");
    server.stop().await;
}

fn chromium() -> PathBuf {
    for candidate in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(candidate).exists() {
            return PathBuf::from(candidate);
        }
    }
    panic!(
        "this test needs headless Chromium, which is not installed; install it with: \
         apt-get update && apt-get install -y chromium"
    );
}

/// Runs headless Chromium with the flags a closed, root-run machine needs;
/// returns its stdout and stderr (where it logs the pages' console).
fn run_chromium(profile: &Path, args: &[String]) -> (String, String) {
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--no-first-run",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match child.try_wait().expect("wait for chromium") {
            Some(status) => {
                assert!(status.success(), "chromium failed: {status}");
                break;
            }
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("chromium did not finish within two minutes");
            }
            None => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    (out.join().expect("stdout"), err.join().expect("stderr"))
}

/// Console messages Chromium logged for the page (errors and warnings).
fn console_errors(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.contains("CONSOLE") || l.contains("Uncaught"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_pages_render_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(options(dir.path())).await;
    let rpc = Rpc::connect(server.addr, Transport::PrpcJson).await;
    let pool = "fleet <main>";
    populate(&rpc, pool).await;
    rpc.notify(
        pool,
        vec![
            item(20, running("ci-1", "bot1")),
            item(20, running("ci-2", "bot2")),
        ],
    )
    .await;
    rpc.assign(pool, 100, vec![bot("bot1", &["os:linux", "pool:ci"])])
        .await;
    rpc.notify(
        pool,
        vec![item(110, pending("ci-4", Some("ci"), &["os:linux"], 110))],
    )
    .await;
    rpc.assign(pool, 130, vec![bot("bot3", &["os:mac"])]).await;

    let enc = "fleet%20%3Cmain%3E";
    let pages = [
        (
            "pools",
            "/ui/".to_owned(),
            vec!["fleet &lt;main&gt;", "serving"],
        ),
        (
            "pool",
            format!("/ui/pool?id={enc}"),
            vec![
                "Pool fleet &lt;main&gt;",
                "<td class=\"l\">",
                "ci",
                "frugal",
                "os:mac",
                "<svg",
            ],
        ),
        (
            "task",
            format!("/ui/task?pool={enc}&id=ci-4"),
            vec![
                "Task ci-4",
                "all 2 bots with its labels are busy",
                "matching_bots_busy",
                "method <span class=\"code\">turnover",
            ],
        ),
        (
            "task-gpu",
            format!("/ui/task?pool={enc}&id=gpu-1"),
            vec![
                "Task gpu-1",
                "no bot in the pool has all of its base labels (gpu:a100)",
                "no_matching_bot",
            ],
        ),
        (
            "task-frugal",
            format!("/ui/task?pool={enc}&id=frugal-1"),
            vec!["sits out", "free_tasks_disabled"],
        ),
        (
            "account",
            format!("/ui/account?pool={enc}&id=ci&window=1h"),
            vec!["Account ci", "90</strong> bot-seconds", "1 tasks completed"],
        ),
    ];
    let shots = std::env::var_os("QSCHEDULER_SCREENSHOTS").map(PathBuf::from);
    for (name, path, needles) in pages {
        let (status, body) = get(server.addr, &path).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert!(!body.contains("<script"), "{path} has a script");
        let url = format!("http://{}{}", server.addr, path);
        let profile = dir.path().join(format!("profile-{name}"));
        let (dom, log) = tokio::task::spawn_blocking({
            let url = url.clone();
            let profile = profile.clone();
            move || run_chromium(&profile, &["--dump-dom".into(), url])
        })
        .await
        .unwrap();
        for needle in needles {
            assert!(
                dom.contains(needle),
                "{needle:?} missing from {path}:\n{dom}"
            );
        }
        assert!(
            console_errors(&log).is_empty(),
            "{path}: {:?}",
            console_errors(&log)
        );
        let shot = match &shots {
            Some(d) => d.join(format!("dashboard-{name}.png")),
            None => dir.path().join(format!("{name}.png")),
        };
        let shot_arg = format!("--screenshot={}", shot.display());
        tokio::task::spawn_blocking(move || {
            run_chromium(
                &profile.with_extension("shot"),
                &["--window-size=1200,1100".into(), shot_arg, url],
            )
        })
        .await
        .unwrap();
        let png = std::fs::read(&shot).expect("screenshot written");
        assert_eq!(
            &png[..8],
            b"\x89PNG\r\n\x1a\n",
            "{name} screenshot is a PNG"
        );
    }
    // A missing task is explained as unknown, not an error; a bad window
    // is refused.
    let (status, body) = get(server.addr, &format!("/ui/task?pool={enc}&id=nope")).await;
    assert_eq!(status, 200);
    assert!(body.contains("unknown to the pool"));
    let (status, _) = get(
        server.addr,
        &format!("/ui/account?pool={enc}&id=ci&window=1y"),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = get(server.addr, "/ui/pool?id=missing").await;
    assert_eq!(status, 404);
    let (status, body) = get(server.addr, "/ui/pool?id=a%00b").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = get(server.addr, &format!("/ui/task?pool={enc}&id=")).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("task id"), "{body}");
    server.stop().await;
}
