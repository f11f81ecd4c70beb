//! Shared by the CLI end-to-end tests: a real `qscheduler serve` process
//! and a way to run the `qscheduler` binary against it.
//!
//! One server is shared by the tests of a file that run at the same time
//! (each test uses its own pool ids); it is stopped when the last of them
//! drops its handle, so no process outlives the test binary.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Weak, mpsc};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_qscheduler");

/// A running server.
pub struct Server {
    child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

static SHARED: Mutex<Weak<Server>> = Mutex::new(Weak::new());

/// The file's shared server, started if no test holds it.
pub fn server() -> Arc<Server> {
    let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = shared.upgrade() {
        return s;
    }
    let s = Arc::new(start());
    *shared = Arc::downgrade(&s);
    s
}

/// Starts a server on a free port chosen by the OS, learning the port from
/// its "ready" log line.
fn start() -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start qscheduler serve");
    // The server logs to stdout.
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        // Keeps draining after "ready" so the server never blocks on a
        // full pipe.
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if sent {
                continue;
            }
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if v["fields"]["message"] == "ready"
                && let Some(addr) = v["fields"]["addr"].as_str()
            {
                let _ = tx.send(addr.to_string());
                sent = true;
            }
        }
    });
    let addr = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(addr) => addr,
        Err(_) => {
            let _ = child.kill();
            panic!("the server did not report its address");
        }
    };
    Server {
        child,
        url: format!("http://{addr}"),
        _dir: dir,
    }
}

/// What one run of the CLI did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Asserts success and returns stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "expected success: {self:#?}");
        &self.stdout
    }

    /// Asserts exit status 1 and returns stderr.
    #[track_caller]
    pub fn fails(&self) -> &str {
        assert_eq!(self.code, 1, "expected failure: {self:#?}");
        assert!(
            self.stderr.starts_with("qscheduler: error: "),
            "error not in the usual form: {self:#?}"
        );
        &self.stderr
    }

    /// Asserts exit status 2 (the command line could not be parsed) and
    /// returns stderr.
    #[track_caller]
    pub fn usage_error(&self) -> &str {
        assert_eq!(self.code, 2, "expected a usage error: {self:#?}");
        assert!(
            self.stderr.starts_with("qscheduler: error: "),
            "error not in the usual form: {self:#?}"
        );
        &self.stderr
    }

    /// stdout as JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.ok()).unwrap_or_else(|e| panic!("not JSON ({e}): {self:#?}"))
    }
}

/// Runs `qscheduler ARGS` with the server given by QSCHEDULER_SERVER.
pub fn cli(server: &Server, args: &[&str]) -> Run {
    run_env(args, Some(&server.url))
}

/// Runs `qscheduler ARGS` with QSCHEDULER_SERVER set to `server_env` (or
/// unset).
pub fn run_env(args: &[&str], server_env: Option<&str>) -> Run {
    let mut cmd = Command::new(BIN);
    cmd.args(args).stdin(Stdio::null());
    match server_env {
        Some(url) => cmd.env("QSCHEDULER_SERVER", url),
        None => cmd.env_remove("QSCHEDULER_SERVER"),
    };
    let out = cmd.output().expect("run qscheduler");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Swarming's side, to give pools tasks, bots and balances to show.
pub mod swarming {
    use prost_types::Timestamp;
    use qscheduler_wire::prpc::PrpcClient;
    use qscheduler_wire::swarming::v1 as pb;

    const SVC: &str = "swarming.v1.ExternalScheduler";

    fn ts(unix: i64) -> Option<Timestamp> {
        Some(Timestamp {
            seconds: unix,
            nanos: 0,
        })
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    /// Now, in Unix seconds.
    pub fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64
    }

    /// Queues `tasks` (id, account, dimensions) at time `at`.
    pub fn notify_pending(url: &str, pool: &str, at: i64, tasks: &[(&str, &str, &[&str])]) {
        let notifications = tasks
            .iter()
            .map(|(id, account, dims)| pb::NotifyTasksItem {
                time: ts(at),
                task: Some(pb::TaskSpec {
                    id: id.to_string(),
                    state: pb::task_spec::State::Pending as i32,
                    tags: vec![format!("qs_account:{account}")],
                    slices: vec![pb::SliceSpec {
                        dimensions: dims.iter().map(|d| d.to_string()).collect(),
                    }],
                    enqueued_time: ts(at),
                    ..Default::default()
                }),
            })
            .collect();
        let req = pb::NotifyTasksRequest {
            scheduler_id: pool.to_string(),
            notifications,
            is_callback: false,
        };
        block_on(async {
            let c = PrpcClient::new(url).expect("client");
            let _: pb::NotifyTasksResponse =
                c.call(SVC, "NotifyTasks", &req).await.expect("NotifyTasks");
        });
    }

    /// Asks for work for idle `bots` (id, dimensions) at time `at`;
    /// returns (bot, task) pairs.
    pub fn assign(
        url: &str,
        pool: &str,
        at: i64,
        bots: &[(&str, &[&str])],
    ) -> Vec<(String, String)> {
        let req = pb::AssignTasksRequest {
            scheduler_id: pool.to_string(),
            time: ts(at),
            idle_bots: bots
                .iter()
                .map(|(id, dims)| pb::IdleBot {
                    bot_id: id.to_string(),
                    dimensions: dims.iter().map(|d| d.to_string()).collect(),
                })
                .collect(),
        };
        block_on(async {
            let c = PrpcClient::new(url).expect("client");
            let resp: pb::AssignTasksResponse =
                c.call(SVC, "AssignTasks", &req).await.expect("AssignTasks");
            resp.assignments
                .into_iter()
                .map(|a| (a.bot_id, a.task_id))
                .collect()
        })
    }
}
