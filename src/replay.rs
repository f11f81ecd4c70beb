//! `qscheduler replay`: runs a workload trace through the scheduling core.
//!
//! Traces are JSON Lines in the `qsched-trace/1` format (see the bench
//! folder's TRACE.md): scheduler-level operations with their times. The
//! replayer applies them in order, honours the trace's `ack_assignments`
//! policy, times every `run_once`, and reports per-phase statistics, the
//! final state, peak memory and the cost of a full snapshot.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use qscheduler_core::{
    AccountConfig, AssignmentKind, Balance, NewRequest, PoolSettings, Scheduler, Time,
};
use serde::Deserialize;

/// One trace line.
#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Op {
    Meta {
        #[serde(default)]
        format: Option<String>,
        #[serde(default)]
        preset: Option<String>,
    },
    Init {
        t: i64,
    },
    Config {
        #[serde(default)]
        disable_preemption: bool,
        #[serde(default)]
        bot_expiration_s: i64,
        #[serde(default)]
        ack_assignments: bool,
    },
    AddAccount {
        id: String,
        charge_rate: Vec<f32>,
        max_charge_seconds: f32,
        #[serde(default)]
        max_fanout: i32,
        #[serde(default)]
        disable_free_tasks: bool,
        #[serde(default)]
        per_label_task_limits: BTreeMap<String, i32>,
    },
    AddRequest {
        id: String,
        account: String,
        #[serde(default)]
        provisionable_labels: Vec<String>,
        #[serde(default)]
        base_labels: Vec<String>,
        enqueue_time: i64,
        t: i64,
    },
    MarkIdle {
        worker: String,
        #[serde(default)]
        labels: Vec<String>,
        t: i64,
    },
    NotifyRunning {
        request: String,
        worker: String,
        t: i64,
    },
    NotifyAbsent {
        request: String,
        t: i64,
    },
    UpdateTime {
        t: i64,
    },
    RunOnce {},
    Phase {
        name: String,
    },
    Iter {},
}

/// Timing of the `run_once` calls of one phase.
#[derive(Default, serde::Serialize)]
struct PhaseStats {
    count: usize,
    total_ms: f64,
    median_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    idle_assignments: u64,
    preempt_assignments: u64,
}

#[derive(serde::Serialize)]
struct Report {
    trace: String,
    preset: Option<String>,
    ops: u64,
    wall_s: f64,
    scheduler_s: f64,
    idle_assignments: u64,
    preempt_assignments: u64,
    phases: BTreeMap<String, PhaseStats>,
    workers: usize,
    idle: usize,
    running: usize,
    queued: usize,
    peak_rss_bytes: Option<u64>,
    rss_bytes_per_queued_task: Option<f64>,
    snapshot_bytes: usize,
    snapshot_encode_ms: f64,
    snapshot_decode_ms: f64,
    /// FNV-1a of every assignment in order (kind, worker, task, level,
    /// provisioning flag): two builds that print the same digest for a trace
    /// made the same decisions.
    assignments_digest: String,
    /// FNV-1a of the final snapshot's bytes.
    snapshot_digest: String,
}

/// 64-bit FNV-1a, enough to tell two replays apart (not a security hash).
#[derive(Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    const fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn bytes(&mut self, b: &[u8]) {
        for &x in b {
            self.0 ^= u64::from(x);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// A field, length-prefixed so that adjacent fields cannot blur.
    fn field(&mut self, b: &[u8]) {
        self.bytes(&(b.len() as u64).to_le_bytes());
        self.bytes(b);
    }

    fn hex(self) -> String {
        format!("{:016x}", self.0)
    }
}

fn time_of(secs: i64, line: u64, field: &str) -> anyhow::Result<Time> {
    if secs < 0 {
        bail!("line {line}: {field} = {secs} is before 1970");
    }
    Ok(Time::from_secs(secs))
}

/// Replays `path` and prints the report (JSON if `json`).
pub fn run(path: &Path, json: bool) -> anyhow::Result<()> {
    let file = File::open(path).with_context(|| format!("cannot open trace {}", path.display()))?;
    let total = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let started = Instant::now();
    let mut sched: Option<Scheduler> = None;
    let mut ack = false;
    let mut t_now = Time::EPOCH;
    let mut preset = None;
    let mut phase = String::from("(none)");
    let mut durations: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
    let mut phase_counts: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut in_sched = Duration::ZERO;
    let (mut ops, mut idle_n, mut preempt_n) = (0u64, 0u64, 0u64);
    let mut line_no = 0u64;
    let mut consumed = 0u64;
    let mut last_progress = Instant::now();
    let mut buf = String::new();
    let mut digest = Fnv::new();

    loop {
        buf.clear();
        let n = reader
            .read_line(&mut buf)
            .with_context(|| format!("reading line {}", line_no + 1))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        consumed += n as u64;
        let line = buf.trim();
        if line.is_empty() {
            continue;
        }
        let op: Op = serde_json::from_str(line)
            .with_context(|| format!("line {line_no}: not a valid trace operation"))?;
        ops += 1;
        if let Op::Meta { format, preset: p } = &op {
            if let Some(f) = format
                && f != "qsched-trace/1"
            {
                bail!("line {line_no}: unsupported trace format {f:?} (expected qsched-trace/1)");
            }
            preset = p.clone();
            continue;
        }
        if let Op::Init { t } = op {
            t_now = time_of(t, line_no, "t")?;
            sched = Some(Scheduler::new(t_now));
            continue;
        }
        let Some(s) = sched.as_mut() else {
            bail!("line {line_no}: operation before init");
        };
        let op_start = Instant::now();
        match op {
            Op::Meta { .. } | Op::Init { .. } => {}
            Op::Config {
                disable_preemption,
                bot_expiration_s,
                ack_assignments,
            } => {
                s.set_settings(PoolSettings {
                    disable_preemption,
                    bot_expiration_nanos: bot_expiration_s.saturating_mul(1_000_000_000),
                });
                ack = ack_assignments;
            }
            Op::AddAccount {
                id,
                charge_rate,
                max_charge_seconds,
                max_fanout,
                disable_free_tasks,
                per_label_task_limits,
            } => {
                let config = AccountConfig {
                    charge_rate: AccountConfig::rates_from_slice(&charge_rate)
                        .with_context(|| format!("line {line_no}"))?,
                    max_charge_seconds,
                    max_fanout,
                    disable_free_tasks,
                    description: String::new(),
                    per_label_task_limits,
                };
                config
                    .validate()
                    .with_context(|| format!("line {line_no}"))?;
                s.add_account(&id, config, Some(Balance::ZERO));
            }
            Op::AddRequest {
                id,
                account,
                provisionable_labels,
                base_labels,
                enqueue_time,
                t,
            } => {
                if id.is_empty() {
                    bail!("line {line_no}: empty request id");
                }
                let req = NewRequest {
                    id,
                    account,
                    base_labels,
                    provisionable_labels,
                    enqueue_time: time_of(enqueue_time, line_no, "enqueue_time")?,
                };
                s.add_request(&req, time_of(t, line_no, "t")?, &[]);
            }
            Op::MarkIdle { worker, labels, t } => {
                if worker.is_empty() {
                    bail!("line {line_no}: empty worker id");
                }
                s.mark_idle(&worker, &labels, time_of(t, line_no, "t")?);
            }
            Op::NotifyRunning { request, worker, t } => {
                if request.is_empty() || worker.is_empty() {
                    bail!("line {line_no}: empty request or worker id");
                }
                s.notify_running(&request, &worker, time_of(t, line_no, "t")?);
            }
            Op::NotifyAbsent { request, t } => {
                s.notify_absent(&request, time_of(t, line_no, "t")?);
            }
            Op::UpdateTime { t } => {
                t_now = time_of(t, line_no, "t")?;
                s.update_time(t_now);
            }
            Op::RunOnce {} => {
                let pass_start = Instant::now();
                let assignments = s.run_once();
                let d = pass_start.elapsed();
                durations.entry(phase.clone()).or_default().push(d);
                let counts = phase_counts.entry(phase.clone()).or_default();
                for a in &assignments {
                    match &a.kind {
                        AssignmentKind::Idle => digest.field(b"idle"),
                        AssignmentKind::Preempt { task_to_abort } => {
                            digest.field(b"preempt");
                            digest.field(task_to_abort.as_bytes());
                        }
                    }
                    digest.field(a.worker_id.as_bytes());
                    digest.field(a.request_id.as_bytes());
                    digest.field(&[a.priority, u8::from(a.provision_required)]);
                    match a.kind {
                        AssignmentKind::Idle => {
                            idle_n += 1;
                            counts.0 += 1;
                        }
                        AssignmentKind::Preempt { .. } => {
                            preempt_n += 1;
                            counts.1 += 1;
                        }
                    }
                }
                if ack {
                    // The last assignment per worker is the one Swarming
                    // would see and confirm.
                    let mut last: BTreeMap<&str, &str> = BTreeMap::new();
                    for a in &assignments {
                        last.insert(&a.worker_id, &a.request_id);
                    }
                    for (w, r) in last {
                        s.notify_running(r, w, t_now);
                    }
                }
            }
            Op::Phase { name } => phase = name,
            Op::Iter {} => {}
        }
        // Events are for the server; a replay only discards them.
        drop(s.take_events());
        in_sched += op_start.elapsed();
        if last_progress.elapsed() > Duration::from_secs(2) {
            last_progress = Instant::now();
            let pct = (consumed * 100).checked_div(total).unwrap_or(0);
            eprint!(
                "\rreplay: {pct:3}% line {line_no} queued {} workers {}   ",
                s.queued_len(),
                s.workers_len()
            );
            let _ = std::io::stderr().flush();
        }
    }
    if last_progress != started {
        eprintln!();
    }
    let Some(s) = sched else {
        bail!("trace has no init operation");
    };

    // Peak memory of the replay itself, before the snapshot round trip
    // below builds a second copy of the state.
    let peak = peak_rss_bytes();
    let enc_start = Instant::now();
    let pool = qscheduler_core::Pool::from_scheduler(s);
    let bytes = qscheduler_core::snapshot::encode(&pool);
    let snapshot_encode_ms = enc_start.elapsed().as_secs_f64() * 1e3;
    let dec_start = Instant::now();
    let decoded = qscheduler_core::snapshot::decode(&bytes).context("decoding our own snapshot")?;
    let snapshot_decode_ms = dec_start.elapsed().as_secs_f64() * 1e3;
    drop(decoded);
    let s = pool.scheduler();

    let mut phases = BTreeMap::new();
    for (name, mut ds) in durations {
        ds.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let pick = |q: f64| ds[((ds.len() as f64 - 1.0) * q).round() as usize];
        let (i, p) = phase_counts.get(&name).copied().unwrap_or_default();
        phases.insert(
            name,
            PhaseStats {
                count: ds.len(),
                total_ms: ds.iter().map(|&d| ms(d)).sum(),
                median_ms: ms(pick(0.5)),
                p99_ms: ms(pick(0.99)),
                max_ms: ms(*ds.last().unwrap_or(&Duration::ZERO)),
                idle_assignments: i,
                preempt_assignments: p,
            },
        );
    }
    let report = Report {
        trace: path.display().to_string(),
        preset,
        ops,
        wall_s: started.elapsed().as_secs_f64(),
        scheduler_s: in_sched.as_secs_f64(),
        idle_assignments: idle_n,
        preempt_assignments: preempt_n,
        phases,
        workers: s.workers_len(),
        idle: s.idle_len(),
        running: s.running_len(),
        queued: s.queued_len(),
        peak_rss_bytes: peak,
        rss_bytes_per_queued_task: peak
            .filter(|_| s.queued_len() > 0)
            .map(|p| p as f64 / s.queued_len() as f64),
        snapshot_bytes: bytes.len(),
        snapshot_encode_ms,
        snapshot_decode_ms,
        assignments_digest: digest.hex(),
        snapshot_digest: {
            let mut h = Fnv::new();
            h.bytes(&bytes);
            h.hex()
        },
    };
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

fn print_report(r: &Report) {
    println!("trace            {}", r.trace);
    if let Some(p) = &r.preset {
        println!("preset           {p}");
    }
    println!("operations       {}", r.ops);
    println!(
        "wall time        {:.2} s ({:.2} s in the scheduler)",
        r.wall_s, r.scheduler_s
    );
    println!(
        "assignments      {} idle, {} preempt",
        r.idle_assignments, r.preempt_assignments
    );
    for (name, p) in &r.phases {
        println!(
            "run_once [{name}]  n={} total={:.1} ms median={:.3} ms p99={:.3} ms max={:.3} ms ({} idle, {} preempt)",
            p.count,
            p.total_ms,
            p.median_ms,
            p.p99_ms,
            p.max_ms,
            p.idle_assignments,
            p.preempt_assignments
        );
    }
    println!(
        "final state      {} workers ({} idle, {} running), {} queued",
        r.workers, r.idle, r.running, r.queued
    );
    if let Some(p) = r.peak_rss_bytes {
        print!("peak RSS         {:.1} MiB", p as f64 / (1 << 20) as f64);
        if let Some(b) = r.rss_bytes_per_queued_task {
            print!(" ({b:.0} bytes per queued task)");
        }
        println!();
    }
    println!(
        "snapshot         {} bytes, encode {:.1} ms, decode {:.1} ms",
        r.snapshot_bytes, r.snapshot_encode_ms, r.snapshot_decode_ms
    );
    println!(
        "digests          assignments {}, snapshot {}",
        r.assignments_digest, r.snapshot_digest
    );
}

/// Peak resident set size of this process (Linux), in bytes.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
