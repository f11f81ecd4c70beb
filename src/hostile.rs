//! `qscheduler loadgen --hostile`: the calls of a buggy, careless or
//! hostile caller, each sent to a running server, with what the server
//! answered and what it cost.
//!
//! Each case sends one kind of abuse (an oversized or over-shaped request,
//! a call from the future, idle and slow connections, a flood of unknown
//! accounts, heavy reads next to writes) and records the status, the growth
//! of the server's resident memory (with `--server-pid`, from
//! `/proc/PID/status`) and, where it matters, latencies. The report is the
//! same against any build of the server, so two builds can be compared case
//! by case; the bounds the cases are meant to meet are printed next to the
//! figures, as facts to read rather than as pass or fail.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, anyhow};
use prost::Message;
use qscheduler_wire::prpc::PrpcClient;
use qscheduler_wire::qscheduler as adm;
use qscheduler_wire::swarming::v1 as pb;
use serde_json::json;

/// Options of the hostile cases.
#[derive(clap::Args, Debug, Clone)]
pub struct HostileArgs {
    /// Run the hostile cases instead of a throughput run.
    #[arg(long)]
    pub hostile: bool,
    /// The server's process id, to report its resident memory per case.
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// Tasks queued in the pool of the InspectPool-under-load case.
    #[arg(long, default_value_t = 200_000, value_name = "N")]
    pub hostile_tasks: u32,
    /// Seconds of NotifyTasks calls measured with and without concurrent
    /// InspectPool calls.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    pub hostile_seconds: f64,
    /// Idle connections opened in the idle-connections case.
    #[arg(long, default_value_t = 300, value_name = "N")]
    pub idle_connections: u32,
    /// Distinct unknown accounts in the metrics-cardinality case.
    #[arg(long, default_value_t = 20_000, value_name = "N")]
    pub unknown_accounts: u32,
    /// Pools to try to create in the pool-cap case (0 skips it).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub max_pools_probe: u32,
    /// Most seconds to wait for the server to close idle and slow
    /// connections.
    #[arg(long, default_value_t = 200, value_name = "SECONDS")]
    pub close_wait: u64,
}

/// What one case saw.
#[derive(Debug, Default, serde::Serialize)]
struct Case {
    name: &'static str,
    /// What the abusive call got: a gRPC code name (OK if it succeeded).
    status: String,
    /// Growth of the server's resident memory over the case, in MiB.
    rss_growth_mib: Option<f64>,
    /// Other figures of the case.
    figures: serde_json::Map<String, serde_json::Value>,
    /// The bound the case is meant to meet, for the reader.
    bound: &'static str,
}

fn rss_kib(pid: Option<u32>) -> Option<u64> {
    let pid = pid?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Measures the server's memory around `f`.
struct Rss {
    pid: Option<u32>,
    before: Option<u64>,
}

impl Rss {
    fn start(pid: Option<u32>) -> Rss {
        Rss {
            pid,
            before: rss_kib(pid),
        }
    }

    async fn growth_mib(&self) -> Option<f64> {
        // Let freed memory settle back (allocator purge, dropped buffers).
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = rss_kib(self.pid)?;
        Some((after as f64 - self.before? as f64) / 1024.0)
    }
}

fn now() -> prost_types::Timestamp {
    prost_types::Timestamp::from(SystemTime::now())
}

/// Appends a protobuf key and length prefix.
fn put_len(out: &mut Vec<u8>, field: u32, len: usize) {
    prost::encoding::encode_key(field, prost::encoding::WireType::LengthDelimited, out);
    prost::encoding::encode_varint(len as u64, out);
}

/// An encoded AssignTasksRequest of one bot with `dims` empty dimensions,
/// written without building the message (it would take gigabytes here).
fn assign_with_empty_dims(pool: &str, dims: usize) -> Vec<u8> {
    let mut bot = pb::IdleBot {
        bot_id: "hostile-bot".into(),
        dimensions: vec![],
    }
    .encode_to_vec();
    bot.reserve(dims * 2);
    for _ in 0..dims {
        bot.extend_from_slice(&[0x12, 0x00]);
    }
    let mut out = pb::AssignTasksRequest {
        scheduler_id: pool.into(),
        idle_bots: vec![],
        time: Some(now()),
    }
    .encode_to_vec();
    put_len(&mut out, 2, bot.len());
    out.extend_from_slice(&bot);
    out
}

/// A NotifyTasks request in proto JSON with one task of `labels` dimensions,
/// each `label` (quoted).
fn notify_json_with_labels(pool: &str, labels: usize, label: &str) -> Vec<u8> {
    let t = chrono_like(SystemTime::now());
    let mut s = format!(
        r#"{{"schedulerId":"{pool}","notifications":[{{"time":"{t}","task":{{"id":"hostile-json","state":"PENDING","enqueuedTime":"{t}","slices":[{{"dimensions":["#
    );
    s.reserve(labels * (label.len() + 3));
    for i in 0..labels {
        if i > 0 {
            s.push(',');
        }
        s.push('"');
        s.push_str(label);
        s.push('"');
    }
    s.push_str("]}]}}]}");
    s.into_bytes()
}

/// An RFC 3339 UTC time, as proto JSON writes timestamps.
fn chrono_like(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// One raw HTTP/1.1 POST: returns the HTTP status and X-Prpc-Grpc-Code (or
/// an error text if the server closed the connection first).
fn raw_post(addr: SocketAddr, path: &str, content_type: &str, body: &[u8]) -> String {
    let run = || -> std::io::Result<String> {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\n\
             Accept: application/prpc; encoding=binary\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes())?;
        // The server may answer (and close) before reading it all.
        let _ = s.write_all(body);
        let mut resp = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    resp.extend_from_slice(&buf[..n]);
                    if resp.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                Err(e) if resp.is_empty() => return Err(e),
                Err(_) => break,
            }
        }
        let text = String::from_utf8_lossy(&resp);
        let code = text
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("x-prpc-grpc-code:")
                    .map(|v| v.trim().to_owned())
            })
            .and_then(|c| c.parse::<i32>().ok())
            .map(|c| crate::cli::code_name(tonic::Code::from_i32(c)).to_owned());
        Ok(code.unwrap_or_else(|| {
            format!(
                "no pRPC code ({})",
                text.lines().next().unwrap_or("no response")
            )
        }))
    };
    run().unwrap_or_else(|e| format!("connection error: {e}"))
}

fn code(r: &Result<impl Sized, tonic::Status>) -> String {
    match r {
        Ok(_) => "OK".to_owned(),
        Err(s) => crate::cli::code_name(s.code()).to_owned(),
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

const SCHED: &str = "swarming.v1.ExternalScheduler";
const ADMIN: &str = "qscheduler.QSchedulerAdmin";
const VIEW: &str = "qscheduler.QSchedulerView";

/// Runs every case against `server`; prints the report.
pub async fn run(server: &str, args: &HostileArgs, json_out: bool) -> anyhow::Result<()> {
    let url = reqwest_like_url(server)?;
    let addr: SocketAddr = tokio::net::lookup_host(&url)
        .await
        .with_context(|| format!("resolving {url}"))?
        .next()
        .ok_or_else(|| anyhow!("{url}: no address"))?;
    let client = PrpcClient::new(server)
        .map_err(|e| anyhow!("--server: {e}"))?
        .with_timeout(Duration::from_secs(120));
    let pid = args.server_pid;
    let pool = format!(
        "hostile-{}",
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    );
    let create = client
        .call::<_, adm::CreateSchedulerPoolResponse>(
            ADMIN,
            "CreateSchedulerPool",
            &adm::CreateSchedulerPoolRequest {
                pool_id: pool.clone(),
                config: None,
            },
        )
        .await;
    create.map_err(|s| anyhow!("creating pool {pool}: {s}"))?;
    client
        .call::<_, adm::CreateAccountResponse>(
            ADMIN,
            "CreateAccount",
            &adm::CreateAccountRequest {
                pool_id: pool.clone(),
                account_id: "known".into(),
                config: Some(qscheduler_wire::protos::AccountConfig {
                    charge_rate: vec![1.0; 5],
                    max_charge_seconds: 3600.0,
                    ..Default::default()
                }),
            },
        )
        .await
        .map_err(|s| anyhow!("creating an account: {s}"))?;

    let mut cases = Vec::new();
    let prpc_path = |m: &str| format!("/prpc/{SCHED}/{m}");
    let binary = "application/prpc; encoding=binary";
    let json_type = "application/json";

    // 1. One AssignTasks of 57 MiB: one bot, 30M empty dimensions.
    {
        let rss = Rss::start(pid);
        let body = assign_with_empty_dims(&pool, 30_000_000);
        let size = body.len();
        let path = prpc_path("AssignTasks");
        let status =
            tokio::task::spawn_blocking(move || raw_post(addr, &path, binary, &body)).await?;
        let mut c = Case {
            name: "assign_57mib_30m_empty_dimensions",
            status,
            rss_growth_mib: rss.growth_mib().await,
            bound: "refused; a few MiB at most",
            ..Default::default()
        };
        c.figures.insert("body_bytes".into(), json!(size));
        cases.push(c);
    }
    // 2. Within the body limit, but millions of items.
    {
        let rss = Rss::start(pid);
        let body = assign_with_empty_dims(&pool, 3_900_000);
        let size = body.len();
        let path = prpc_path("AssignTasks");
        let status =
            tokio::task::spawn_blocking(move || raw_post(addr, &path, binary, &body)).await?;
        let mut c = Case {
            name: "assign_7.8mib_3.9m_empty_dimensions",
            status,
            rss_growth_mib: rss.growth_mib().await,
            bound: "INVALID_ARGUMENT naming the field and the setting; a few MiB at most",
            ..Default::default()
        };
        c.figures.insert("body_bytes".into(), json!(size));
        cases.push(c);
    }
    // 3. The same over gRPC (a smaller message: the client builds it).
    {
        let rss = Rss::start(pid);
        let channel = tonic::transport::Endpoint::from_shared(server.to_owned())?
            .connect()
            .await
            .with_context(|| format!("connecting to {server} over gRPC"))?;
        let mut grpc = pb::external_scheduler_client::ExternalSchedulerClient::new(channel)
            .max_encoding_message_size(64 << 20);
        let req = pb::AssignTasksRequest {
            scheduler_id: pool.clone(),
            idle_bots: vec![pb::IdleBot {
                bot_id: "hostile-grpc".into(),
                dimensions: vec![String::new(); 1_000_000],
            }],
            time: Some(now()),
        };
        let r = grpc.assign_tasks(req).await;
        let message = r.as_ref().err().map(|s| s.message().to_owned());
        let mut c = Case {
            name: "assign_grpc_1m_empty_dimensions",
            status: code(&r),
            rss_growth_mib: rss.growth_mib().await,
            bound: "INVALID_ARGUMENT naming the field and the setting",
            ..Default::default()
        };
        c.figures.insert("message".into(), json!(message));
        cases.push(c);
    }
    // 4. pRPC JSON: 12 MiB with 1M labels, and 3 MiB with 1M empty labels.
    for (name, label) in [
        ("notify_json_12mib_1m_labels", "abcdefghij"),
        ("notify_json_3mib_1m_empty_labels", ""),
    ] {
        let rss = Rss::start(pid);
        let body = notify_json_with_labels(&pool, 1_000_000, label);
        let size = body.len();
        let path = prpc_path("NotifyTasks");
        let status =
            tokio::task::spawn_blocking(move || raw_post(addr, &path, json_type, &body)).await?;
        let mut c = Case {
            name,
            status,
            rss_growth_mib: rss.growth_mib().await,
            bound: "refused; a few MiB at most",
            ..Default::default()
        };
        c.figures.insert("body_bytes".into(), json!(size));
        cases.push(c);
    }
    // 5. Eight over-shaped calls at once.
    {
        let rss = Rss::start(pid);
        let body = Arc::new(assign_with_empty_dims(&pool, 3_900_000));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let body = body.clone();
            let path = prpc_path("AssignTasks");
            tasks.push(tokio::task::spawn_blocking(move || {
                raw_post(addr, &path, binary, &body)
            }));
        }
        let mut statuses = Vec::new();
        for t in tasks {
            statuses.push(t.await?);
        }
        statuses.dedup();
        cases.push(Case {
            name: "eight_oversized_calls_at_once",
            status: statuses.join(","),
            rss_growth_mib: rss.growth_mib().await,
            bound: "all refused; a few MiB each at most",
            ..Default::default()
        });
    }
    // 6. A call from the future, a bad bot expiration, a forged log line.
    {
        let r = client
            .call::<_, pb::AssignTasksResponse>(
                SCHED,
                "AssignTasks",
                &pb::AssignTasksRequest {
                    scheduler_id: pool.clone(),
                    idle_bots: vec![pb::IdleBot {
                        bot_id: "from-2262".into(),
                        dimensions: vec![],
                    }],
                    time: Some(prost_types::Timestamp {
                        seconds: 9_214_646_400,
                        nanos: 0,
                    }),
                },
            )
            .await;
        cases.push(Case {
            name: "assign_dated_2262",
            status: code(&r),
            bound: "INVALID_ARGUMENT; the pool's clock does not move",
            ..Default::default()
        });
        let r = client
            .call::<_, adm::ModSchedulerPoolResponse>(
                ADMIN,
                "ModSchedulerPool",
                &adm::ModSchedulerPoolRequest {
                    pool_id: pool.clone(),
                    bot_expiration_seconds: Some(-5),
                    ..Default::default()
                },
            )
            .await;
        cases.push(Case {
            name: "negative_bot_expiration",
            status: code(&r),
            bound: "INVALID_ARGUMENT",
            ..Default::default()
        });
        let r = client
            .call::<_, adm::CreateSchedulerPoolResponse>(
                ADMIN,
                "CreateSchedulerPool",
                &adm::CreateSchedulerPoolRequest {
                    pool_id: "forged\nINFO pool deleted".into(),
                    config: None,
                },
            )
            .await;
        cases.push(Case {
            name: "newline_in_pool_id",
            status: code(&r),
            bound: "INVALID_ARGUMENT",
            ..Default::default()
        });
    }
    // 7. 20,000 unknown accounts.
    {
        let metrics_before = get(addr, "/metrics").await.unwrap_or_default();
        let rss = Rss::start(pid);
        let mut status = "OK".to_owned();
        let mut i = 0;
        while i < args.unknown_accounts {
            let n = (args.unknown_accounts - i).min(500);
            let notifications = (i..i + n)
                .map(|k| pb::NotifyTasksItem {
                    time: Some(now()),
                    task: Some(pb::TaskSpec {
                        id: format!("unknown-{k}"),
                        state: pb::task_spec::State::Pending as i32,
                        tags: vec![format!("qs_account:unknown-{k}")],
                        slices: vec![pb::SliceSpec {
                            dimensions: vec!["pool:hostile".into()],
                        }],
                        enqueued_time: Some(now()),
                        ..Default::default()
                    }),
                })
                .collect();
            let r = client
                .call::<_, pb::NotifyTasksResponse>(
                    SCHED,
                    "NotifyTasks",
                    &pb::NotifyTasksRequest {
                        scheduler_id: pool.clone(),
                        notifications,
                        is_callback: false,
                    },
                )
                .await;
            if r.is_err() {
                status = code(&r);
                break;
            }
            i += n;
        }
        let metrics = get(addr, "/metrics").await.unwrap_or_default();
        let series = |m: &str| {
            m.lines()
                .filter(|l| !l.starts_with('#') && !l.is_empty())
                .count()
        };
        let account_series = metrics
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains("account=\""))
            .count();
        let mut c = Case {
            name: "unknown_accounts",
            status,
            rss_growth_mib: rss.growth_mib().await,
            bound: "series bounded by configured accounts, not by traffic",
            ..Default::default()
        };
        c.figures
            .insert("accounts".into(), json!(args.unknown_accounts));
        c.figures
            .insert("metrics_bytes_before".into(), json!(metrics_before.len()));
        c.figures
            .insert("metrics_bytes_after".into(), json!(metrics.len()));
        c.figures
            .insert("series_before".into(), json!(series(&metrics_before)));
        c.figures
            .insert("series_after".into(), json!(series(&metrics)));
        c.figures
            .insert("account_series_after".into(), json!(account_series));
        cases.push(c);
    }
    // 8. Idle connections, then /healthz.
    {
        let rss = Rss::start(pid);
        let mut idle = Vec::new();
        let mut refused = 0;
        for _ in 0..args.idle_connections {
            match tokio::net::TcpStream::connect(addr).await {
                Ok(s) => idle.push(s),
                Err(_) => refused += 1,
            }
        }
        // Let the server accept them all.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let started = Instant::now();
        let health = tokio::time::timeout(Duration::from_secs(30), get(addr, "/healthz")).await;
        let health_ms = started.elapsed().as_secs_f64() * 1000.0;
        let inspect = client
            .call::<_, adm::InspectPoolResponse>(
                VIEW,
                "InspectPool",
                &adm::InspectPoolRequest {
                    pool_id: pool.clone(),
                    page_size: 10,
                    ..Default::default()
                },
            )
            .await;
        let healthy = matches!(&health, Ok(Ok(b)) if b.starts_with("ok"));
        let mut c = Case {
            name: "idle_connections_then_healthz",
            status: if healthy {
                code(&inspect)
            } else {
                format!("healthz failed: {health:?}")
            },
            rss_growth_mib: rss.growth_mib().await,
            bound: "/healthz answers within 1 s; calls still work",
            ..Default::default()
        };
        c.figures
            .insert("idle_connections".into(), json!(idle.len()));
        c.figures.insert("refused".into(), json!(refused));
        c.figures.insert("healthz_ms".into(), json!(health_ms));
        // How long until the server closes them (bounded wait).
        let started = Instant::now();
        let mut closed = 0usize;
        let deadline = Duration::from_secs(args.close_wait);
        for s in &idle {
            let left = deadline.saturating_sub(started.elapsed());
            let mut buf = [0u8; 1];
            if let Ok(Ok(0)) = tokio::time::timeout(left, peek_eof(s, &mut buf)).await {
                closed += 1;
            }
        }
        c.figures.insert("closed_by_server".into(), json!(closed));
        c.figures.insert(
            "seconds_until_closed".into(),
            json!(started.elapsed().as_secs_f64()),
        );
        cases.push(c);
    }
    // 9. A slow body: headers, a few bytes, then nothing.
    {
        let started = Instant::now();
        let wait = Duration::from_secs(args.close_wait);
        let outcome = tokio::task::spawn_blocking(move || slow_body(addr, wait)).await?;
        let mut c = Case {
            name: "slow_body",
            status: outcome,
            bound: "answered DEADLINE_EXCEEDED and closed by the call's deadline (2 s here)",
            ..Default::default()
        };
        c.figures.insert(
            "seconds_until_closed".into(),
            json!(started.elapsed().as_secs_f64()),
        );
        cases.push(c);
    }
    // 10. The pool cap.
    if args.max_pools_probe > 0 {
        let mut created = Vec::new();
        let mut status = "OK".to_owned();
        for i in 0..args.max_pools_probe {
            let id = format!("{pool}-cap-{i}");
            let r = client
                .call::<_, adm::CreateSchedulerPoolResponse>(
                    ADMIN,
                    "CreateSchedulerPool",
                    &adm::CreateSchedulerPoolRequest {
                        pool_id: id.clone(),
                        config: None,
                    },
                )
                .await;
            if r.is_err() {
                status = code(&r);
                break;
            }
            created.push(id);
        }
        for id in &created {
            let _ = client
                .call::<_, adm::DeleteSchedulerPoolResponse>(
                    ADMIN,
                    "DeleteSchedulerPool",
                    &adm::DeleteSchedulerPoolRequest {
                        pool_id: id.clone(),
                    },
                )
                .await;
        }
        let mut c = Case {
            name: "pool_cap",
            status,
            bound: "RESOURCE_EXHAUSTED past limits.max_pools",
            ..Default::default()
        };
        c.figures.insert("created".into(), json!(created.len()));
        cases.push(c);
    }
    // 11. NotifyTasks latency next to eight InspectPool loops.
    {
        let big = format!("{pool}-big");
        client
            .call::<_, adm::CreateSchedulerPoolResponse>(
                ADMIN,
                "CreateSchedulerPool",
                &adm::CreateSchedulerPoolRequest {
                    pool_id: big.clone(),
                    config: None,
                },
            )
            .await
            .map_err(|s| anyhow!("creating {big}: {s}"))?;
        let rss = Rss::start(pid);
        let mut k = 0;
        while k < args.hostile_tasks {
            let n = (args.hostile_tasks - k).min(500);
            let notifications = (k..k + n)
                .map(|i| pb::NotifyTasksItem {
                    time: Some(now()),
                    task: Some(pb::TaskSpec {
                        id: format!("big-{i}"),
                        state: pb::task_spec::State::Pending as i32,
                        tags: vec!["qs_account:known".into()],
                        slices: vec![pb::SliceSpec {
                            dimensions: vec![format!("os:linux-{}", i % 100)],
                        }],
                        enqueued_time: Some(now()),
                        ..Default::default()
                    }),
                })
                .collect();
            client
                .call::<_, pb::NotifyTasksResponse>(
                    SCHED,
                    "NotifyTasks",
                    &pb::NotifyTasksRequest {
                        scheduler_id: big.clone(),
                        notifications,
                        is_callback: false,
                    },
                )
                .await
                .map_err(|s| anyhow!("prefilling {big}: {s}"))?;
            k += n;
        }
        let prefill_growth = rss.growth_mib().await;
        let seconds = Duration::from_secs_f64(args.hostile_seconds);
        let quiet = notify_latencies(&client, &big, "quiet", seconds).await;
        let stop = Arc::new(AtomicBool::new(false));
        let mut readers = Vec::new();
        for _ in 0..8 {
            let client = client.clone();
            let big = big.clone();
            let stop = stop.clone();
            readers.push(tokio::spawn(async move {
                let mut n = 0u64;
                let mut status = "OK".to_owned();
                while !stop.load(Ordering::Relaxed) {
                    let r = client
                        .call::<_, adm::InspectPoolResponse>(
                            VIEW,
                            "InspectPool",
                            &adm::InspectPoolRequest {
                                pool_id: big.clone(),
                                ..Default::default()
                            },
                        )
                        .await;
                    if r.is_err() {
                        status = code(&r);
                    }
                    n += 1;
                }
                (n, status)
            }));
        }
        // Let the readers get going.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let loaded = notify_latencies(&client, &big, "loaded", seconds).await;
        stop.store(true, Ordering::Relaxed);
        let mut inspections = 0;
        let mut status = "OK".to_owned();
        for r in readers {
            let (n, s) = r.await?;
            inspections += n;
            if s != "OK" {
                status = s;
            }
        }
        let mut c = Case {
            name: "notify_next_to_eight_inspectpool",
            status,
            rss_growth_mib: rss.growth_mib().await,
            bound: "NotifyTasks p99 under 20 ms with eight InspectPool loops",
            ..Default::default()
        };
        c.figures.insert("tasks".into(), json!(args.hostile_tasks));
        c.figures
            .insert("prefill_rss_growth_mib".into(), json!(prefill_growth));
        c.figures.insert("inspections".into(), json!(inspections));
        for (label, l) in [("quiet", &quiet), ("loaded", &loaded)] {
            c.figures
                .insert(format!("{label}_notify_calls"), json!(l.len()));
            c.figures
                .insert(format!("{label}_notify_p50_ms"), json!(percentile(l, 50.0)));
            c.figures
                .insert(format!("{label}_notify_p99_ms"), json!(percentile(l, 99.0)));
            c.figures.insert(
                format!("{label}_notify_max_ms"),
                json!(l.last().copied().unwrap_or(0.0)),
            );
        }
        cases.push(c);
        let _ = client
            .call::<_, adm::DeleteSchedulerPoolResponse>(
                ADMIN,
                "DeleteSchedulerPool",
                &adm::DeleteSchedulerPoolRequest { pool_id: big },
            )
            .await;
    }
    let _ = client
        .call::<_, adm::DeleteSchedulerPoolResponse>(
            ADMIN,
            "DeleteSchedulerPool",
            &adm::DeleteSchedulerPoolRequest {
                pool_id: pool.clone(),
            },
        )
        .await;

    if json_out {
        println!("{}", serde_json::to_string(&json!({ "cases": cases }))?);
    } else {
        for c in &cases {
            println!(
                "{:<40} {:<28} rss {:>9} MiB  {}",
                c.name,
                c.status,
                c.rss_growth_mib
                    .map_or("-".to_owned(), |g| format!("{g:+.1}")),
                serde_json::Value::Object(c.figures.clone())
            );
            println!("{:<40} bound: {}", "", c.bound);
        }
    }
    Ok(())
}

/// host:port of an http:// URL.
fn reqwest_like_url(server: &str) -> anyhow::Result<String> {
    let rest = server
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("--server must be an http:// URL for --hostile"))?;
    Ok(rest.trim_end_matches('/').to_owned())
}

/// Waits until the peer closes `s` (a read of 0 bytes) or sends something.
async fn peek_eof(s: &tokio::net::TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        s.readable().await?;
        match s.try_read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(0),
            Err(e) => return Err(e),
        }
    }
}

/// A plain HTTP GET; the body as text.
async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)?;
        let text = String::from_utf8_lossy(&out).into_owned();
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok(body)
    })
    .await?
}

/// Sends a pRPC call's headers (with a 2 s timeout) and 10 of its 1000
/// bytes of body, then nothing; reports what the server did within `wait`.
fn slow_body(addr: SocketAddr, wait: Duration) -> String {
    let run = || -> std::io::Result<String> {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(wait))?;
        let head = format!(
            "POST /prpc/{SCHED}/NotifyTasks HTTP/1.1\r\nHost: {addr}\r\n\
             Content-Type: application/prpc; encoding=binary\r\nX-Prpc-Grpc-Timeout: 2S\r\n\
             Content-Length: 1000\r\n\r\n"
        );
        s.write_all(head.as_bytes())?;
        s.write_all(&[0u8; 10])?;
        let mut resp = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => resp.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => {
                    return Ok(format!(
                        "still open after {} s ({e}); answered: {}",
                        wait.as_secs(),
                        !resp.is_empty()
                    ));
                }
            }
        }
        let text = String::from_utf8_lossy(&resp);
        let code = text
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("x-prpc-grpc-code:")
                    .map(|v| v.trim().to_owned())
            })
            .and_then(|c| c.parse::<i32>().ok())
            .map(|c| crate::cli::code_name(tonic::Code::from_i32(c)).to_owned())
            .unwrap_or_else(|| "no answer".to_owned());
        Ok(format!("{code}, closed"))
    };
    run().unwrap_or_else(|e| format!("connection error: {e}"))
}

/// NotifyTasks latencies (ms, sorted) of one caller for `seconds`.
async fn notify_latencies(
    client: &PrpcClient,
    pool: &str,
    tag: &str,
    seconds: Duration,
) -> Vec<f64> {
    let mut out = Vec::new();
    let started = Instant::now();
    let mut i = 0u64;
    while started.elapsed() < seconds {
        i += 1;
        let req = pb::NotifyTasksRequest {
            scheduler_id: pool.to_owned(),
            notifications: vec![pb::NotifyTasksItem {
                time: Some(now()),
                task: Some(pb::TaskSpec {
                    id: format!("lat-{tag}-{i}"),
                    state: pb::task_spec::State::Pending as i32,
                    tags: vec!["qs_account:known".into()],
                    slices: vec![pb::SliceSpec {
                        dimensions: vec!["os:linux-1".into()],
                    }],
                    enqueued_time: Some(now()),
                    ..Default::default()
                }),
            }],
            is_callback: false,
        };
        let t = Instant::now();
        let r = client
            .call::<_, pb::NotifyTasksResponse>(SCHED, "NotifyTasks", &req)
            .await;
        if r.is_ok() {
            out.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    out.sort_by(f64::total_cmp);
    out
}
