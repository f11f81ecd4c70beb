//! `qscheduler simulate`: a workload under one pool configuration, or two
//! side by side.
//!
//! The configurations are pools files in the format of `qscheduler apply`
//! (read by the same parser, so a file that applies is a file that
//! simulates). The simulation itself lives in the `qscheduler-sim` crate;
//! this command reads the files, runs it (twice with `--compare`, in
//! parallel), and prints the report as a table, JSON or YAML, and
//! optionally as an HTML page. Timings and peak memory go to stderr so
//! that stdout stays a clean document.

use std::collections::BTreeMap;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use qscheduler_sim::{PoolSetup, RunReport, SimOptions, Workload, render};

use crate::cli::{Output, OutputArg, PoolsFileEntry, load_pools_file};

/// Arguments of `qscheduler simulate`.
#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  qscheduler workload generate --model docs/workload.example.toml --out day.jsonl
  qscheduler simulate --workload day.jsonl --pools pools.toml
  qscheduler simulate --workload day.jsonl --pools pools.toml --compare proposed.toml --html report.html
  qscheduler simulate --workload recorded.jsonl --pools pools.toml --compare recorded

Waits are quantised by --step: events within a step are applied together at its end. \
See docs/simulation.md for the model and its approximations.")]
pub struct SimulateArgs {
    /// The workload (JSON Lines: `qscheduler workload generate` or
    /// `extract` write them; see docs/workload-format.md).
    #[arg(long, value_name = "FILE")]
    workload: PathBuf,
    /// The pool configuration to simulate (A): a pools file as for
    /// `qscheduler apply`.
    #[arg(long, value_name = "FILE")]
    pools: PathBuf,
    /// The pool of the pools files to use. Default: the workload's pool if
    /// the file has it, else the file's only pool.
    #[arg(long, value_name = "POOL")]
    pool: Option<String>,
    /// A second configuration (B) to compare with A: another pools file, or
    /// `recorded` for the outcome recorded in an extracted workload.
    #[arg(long, value_name = "FILE|recorded")]
    compare: Option<String>,
    #[command(flatten)]
    output: OutputArg,
    /// Also write a self-contained HTML report (SVG charts, no scripts).
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// Simulation step: events within a step are applied together, so
    /// waits are measured to this resolution.
    #[arg(long, default_value = "1s", value_name = "DURATION", value_parser = duration)]
    step: i64,
    /// How often an idle bot asks for work (polls are spread over bots).
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = duration)]
    poll_interval: i64,
    /// How often preempted bots learn of their cancellation (Swarming's
    /// GetCancellations); 0: at the next step.
    #[arg(long, default_value = "0s", value_name = "DURATION", value_parser = duration)]
    cancel_check: i64,
    /// Start every account at a zero balance, even if the workload carries
    /// the balances recorded at its start.
    #[arg(long)]
    zero_balances: bool,
}

fn duration(s: &str) -> Result<i64, String> {
    qscheduler_sim::clock::parse_duration(s)
}

/// Reads a workload file.
pub fn read_workload(path: &Path) -> anyhow::Result<Workload> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot open the workload {}", path.display()))?;
    Workload::read(BufReader::with_capacity(1 << 20, file))
        .with_context(|| format!("reading the workload {}", path.display()))
}

/// The pool of a pools file that the simulation uses.
fn pool_setup(
    path: &Path,
    pool: Option<&str>,
    w: &Workload,
) -> anyhow::Result<(String, PoolSetup)> {
    let (name, pools) = load_pools_file(path, "")?;
    let chosen: &PoolsFileEntry = match pool {
        Some(p) => pools
            .iter()
            .find(|d| d.id == p)
            .with_context(|| format!("{name} has no pool {p:?} (it has {})", list(&pools)))?,
        None => match pools.iter().find(|d| d.id == w.pool) {
            Some(d) => d,
            None if pools.len() == 1 => &pools[0],
            None if pools.is_empty() => bail!("{name} describes no pool"),
            None => bail!(
                "{name} has several pools ({}) and none is the workload's ({:?}); choose one with --pool",
                list(&pools),
                w.pool
            ),
        },
    };
    let mut accounts = BTreeMap::new();
    for (id, c) in &chosen.accounts {
        let config = qscheduler_server::translate::account_config(Some(c), id)
            .map_err(|s| anyhow::anyhow!("{name}: pool {}: account {}", chosen.id, s.message()))?;
        accounts.insert(id.clone(), config);
    }
    Ok((
        name,
        PoolSetup {
            disable_preemption: chosen.allow_preemption == Some(false),
            bot_expiration_secs: chosen.bot_expiration_seconds.unwrap_or(0),
            accounts,
        },
    ))
}

fn list(pools: &[PoolsFileEntry]) -> String {
    pools
        .iter()
        .map(|p| format!("{:?}", p.id))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs `qscheduler simulate`.
pub fn run(args: SimulateArgs) -> anyhow::Result<()> {
    let options = SimOptions {
        step_ms: args.step,
        poll_ms: args.poll_interval,
        cancel_check_ms: args.cancel_check,
        workload_balances: !args.zero_balances,
        bucket_ms: None,
    };
    options.validate()?;
    let started = Instant::now();
    let w = read_workload(&args.workload)?;
    let read_s = started.elapsed().as_secs_f64();
    let (name_a, setup_a) = pool_setup(&args.pools, args.pool.as_deref(), &w)?;
    enum B {
        None,
        Recorded(Box<RunReport>),
        Config(String, PoolSetup),
    }
    let b = match args.compare.as_deref() {
        None => B::None,
        Some("recorded") => {
            let Some(rec) = &w.recorded else {
                bail!(
                    "--compare recorded: {} carries no recorded outcome (only workloads written by \
                     `qscheduler workload extract` do)",
                    args.workload.display()
                );
            };
            let r: RunReport = serde_json::from_value(rec.clone()).with_context(|| {
                format!(
                    "{}: the recorded outcome is not readable",
                    args.workload.display()
                )
            })?;
            B::Recorded(Box::new(r))
        }
        Some(path) => {
            let (n, s) = pool_setup(Path::new(path), args.pool.as_deref(), &w)?;
            B::Config(n, s)
        }
    };
    eprintln!(
        "simulate: read {} tasks and {} bots in {read_s:.1} s",
        w.tasks.len(),
        w.bots.len()
    );
    let sim_started = Instant::now();
    let (a, b) = std::thread::scope(|scope| -> anyhow::Result<(RunReport, Option<RunReport>)> {
        let second = match &b {
            B::Config(n, s) => {
                let (w, o) = (&w, &options);
                Some(scope.spawn(move || qscheduler_sim::simulate(w, s, o, n)))
            }
            _ => None,
        };
        let a = qscheduler_sim::simulate(&w, &setup_a, &options, &name_a)
            .with_context(|| format!("simulating {name_a}"))?;
        let b = match (second, &b) {
            (Some(h), _) => Some(
                h.join()
                    .map_err(|_| anyhow::anyhow!("the second simulation panicked"))??
                    .report,
            ),
            (None, B::Recorded(r)) => Some((**r).clone()),
            _ => None,
        };
        Ok((a.report, b))
    })?;
    let sim_s = sim_started.elapsed().as_secs_f64();
    let batches = a.simulation.as_ref().map_or(0, |s| s.batches);
    eprintln!(
        "simulate: {} of pool {:?} simulated in {sim_s:.1} s ({batches} batches{}); peak memory {}",
        qscheduler_sim::clock::human(w.duration),
        w.pool,
        if matches!(b, Some(ref r) if r.simulation.is_some()) {
            ", two configurations in parallel"
        } else {
            ""
        },
        peak_rss().map_or_else(
            || "unknown".into(),
            |b| format!("{:.0} MiB", b as f64 / 1048576.0)
        )
    );

    if let Some(path) = &args.html {
        let page = qscheduler_sim::html::page(&a, b.as_ref());
        std::fs::write(path, page).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("simulate: wrote {}", path.display());
    }
    let doc = render::Document::new(&a, b.as_ref());
    match args.output.format {
        Output::Table => match &b {
            Some(b) => print!("{}", render::compare_table(&a, b)),
            None => print!("{}", render::table(&a)),
        },
        Output::Json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&doc).context("writing JSON")?
            )
        }
        Output::Yaml => print!(
            "{}",
            serde_yaml_ng::to_string(&doc).context("writing YAML")?
        ),
    }
    Ok(())
}

/// Peak resident set size of this process (Linux), in bytes.
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
