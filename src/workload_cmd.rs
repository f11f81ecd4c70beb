//! `qscheduler workload`: make workloads for `simulate`.
//!
//! * `generate` turns a declarative model into a workload (seeded,
//!   deterministic);
//! * `extract` derives one from a server's task event log (files, or the
//!   PostgreSQL table), with the outcome that was recorded, so a simulation
//!   can be checked against reality;
//! * `play` runs a workload against a live server in real time, as a fleet
//!   of bots and a stream of tasks would: the way to record a run whose
//!   event log `extract` can read back.

use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use qscheduler_server::secret::SecretUrl;
use qscheduler_sim::Workload;
use qscheduler_sim::extract::{ExtractOptions, Extractor};

/// `qscheduler workload ...`
#[derive(Subcommand, Debug)]
pub enum WorkloadCommand {
    /// Generate a workload from a model (TOML; see docs/workload.example.toml).
    ///
    /// The same model and seed always give the same file.
    Generate(GenerateArgs),
    /// Derive a workload from a server's task event log (files, or the
    /// PostgreSQL table), with the outcome that was recorded.
    ///
    /// Arrivals, run durations (assignment to completion), cancellations,
    /// the fleet seen and the accounts' balances at the start come from
    /// the events; what the log cannot tell is estimated and reported
    /// (also in the workload's notes). `simulate --compare recorded` then
    /// sets a simulation beside what really happened.
    Extract(ExtractArgs),
    /// Play a workload against a running server in real time (or faster),
    /// as bots and Swarming would: records a run whose event log `extract`
    /// reads back. The pool and its accounts must exist.
    Play(crate::play::PlayArgs),
}

/// Arguments of `workload extract`.
#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["events", "events_db"])))]
pub struct ExtractArgs {
    /// The event log directory (the server's `events` directory, holding
    /// task-events-*.jsonl).
    #[arg(long, value_name = "DIR")]
    events: Option<PathBuf>,
    /// Read the PostgreSQL event table instead (postgres://...).
    #[arg(long, value_name = "URL")]
    events_db: Option<SecretUrl>,
    /// The table (with --events-db).
    #[arg(
        long,
        value_name = "TABLE",
        default_value = "task_events",
        requires = "events_db"
    )]
    events_table: String,
    /// The table's schema (with --events-db; default: the search path).
    #[arg(long, value_name = "SCHEMA", requires = "events_db")]
    events_schema: Option<String>,
    /// The pool (required when the log holds several).
    #[arg(long, value_name = "POOL")]
    pool: Option<String>,
    /// Start of the window (RFC 3339, e.g. 2030-01-01T00:00:00Z; default:
    /// the pool's first event).
    #[arg(long, value_name = "TIME", value_parser = timestamp)]
    from: Option<qscheduler_core::Time>,
    /// End of the window (default: the pool's last event).
    #[arg(long, value_name = "TIME", value_parser = timestamp)]
    to: Option<qscheduler_core::Time>,
    /// Where to write the workload (default: stdout).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

fn timestamp(s: &str) -> Result<qscheduler_core::Time, String> {
    qscheduler_sim::clock::parse_rfc3339(s)
}

/// Arguments of `workload generate`.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// The model file.
    #[arg(long, value_name = "FILE")]
    model: PathBuf,
    /// Where to write the workload (default: stdout).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Override the model's seed.
    #[arg(long)]
    seed: Option<u64>,
}

/// Writes a workload to a file or stdout.
pub fn write_workload(w: &Workload, out: Option<&PathBuf>) -> anyhow::Result<()> {
    match out {
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("creating {}", path.display()))?;
            let mut buf = BufWriter::with_capacity(1 << 20, file);
            w.write(&mut buf)
                .with_context(|| format!("writing {}", path.display()))?;
            buf.flush()
                .with_context(|| format!("writing {}", path.display()))?;
        }
        None => {
            let stdout = std::io::stdout();
            let mut buf = BufWriter::with_capacity(1 << 20, stdout.lock());
            w.write(&mut buf)
                .context("writing the workload to stdout")?;
        }
    }
    Ok(())
}

/// Runs `qscheduler workload ...`.
pub fn run(command: WorkloadCommand) -> anyhow::Result<()> {
    match command {
        WorkloadCommand::Play(args) => crate::play::run(args),
        WorkloadCommand::Extract(args) => extract(args),
        WorkloadCommand::Generate(args) => {
            let text = std::fs::read_to_string(&args.model)
                .with_context(|| format!("reading {}", args.model.display()))?;
            let text = match args.seed {
                // The model's own `seed` key is replaced by prepending one:
                // parsing the model again keeps its errors' line numbers
                // meaningful only without --seed, which is fine for a flag
                // meant for quick variations.
                Some(seed) => override_seed(&text, seed),
                None => text,
            };
            let w = qscheduler_sim::model::generate(&args.model.display().to_string(), &text)?;
            write_workload(&w, args.out.as_ref())?;
            eprintln!(
                "workload: {} tasks, {} bots, {} accounts over {}{}",
                w.tasks.len(),
                w.bots.len(),
                w.accounts.len(),
                qscheduler_sim::clock::human(w.duration),
                args.out
                    .as_ref()
                    .map(|p| format!(", written to {}", p.display()))
                    .unwrap_or_default()
            );
            Ok(())
        }
    }
}

fn override_seed(text: &str, seed: u64) -> String {
    let mut out = format!("seed = {seed}\n");
    for line in text.lines() {
        if line.trim_start().starts_with("seed") && line.contains('=') {
            out.push_str("# (seed replaced by --seed)\n");
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn extract(args: ExtractArgs) -> anyhow::Result<()> {
    let mut x = Extractor::new();
    let source = if let Some(dir) = &args.events {
        let n = x.add_dir(dir)?;
        format!("{n} files in {}", dir.display())
    } else if let Some(url) = &args.events_db {
        let rows = read_table(
            &mut x,
            url.expose(),
            args.events_schema.as_deref(),
            &args.events_table,
            args.pool.as_deref(),
        )?;
        format!("{rows} rows of table {}", args.events_table)
    } else {
        anyhow::bail!("give --events DIR or --events-db URL");
    };
    let out = x.finish(&ExtractOptions {
        pool: args.pool.clone(),
        from: args.from,
        to: args.to,
    })?;
    write_workload(&out.workload, args.out.as_ref())?;
    let w = &out.workload;
    eprintln!(
        "workload: pool {:?}, {} from {}: {} tasks, {} bots, {} accounts, from {} events ({source})",
        w.pool,
        qscheduler_sim::clock::human(w.duration),
        qscheduler_sim::clock::format_rfc3339(w.start),
        w.tasks.len(),
        w.bots.len(),
        w.accounts.len(),
        out.events
    );
    for e in &out.estimates {
        eprintln!("estimated: {e}");
    }
    Ok(())
}

/// A PostgreSQL identifier as the server accepts them, quoted.
fn ident(s: &str, what: &str) -> anyhow::Result<String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        anyhow::bail!(
            "{what} {s:?}: use letters, digits and _ (at most 63, not starting with a digit)"
        );
    }
    Ok(format!("\"{s}\""))
}

/// Feeds the event table's rows, in insertion order, to the extractor.
fn read_table(
    x: &mut Extractor,
    url: &str,
    schema: Option<&str>,
    table: &str,
    pool: Option<&str>,
) -> anyhow::Result<u64> {
    use sqlx::Row;
    let name = match schema {
        Some(s) => format!(
            "{}.{}",
            ident(s, "--events-schema")?,
            ident(table, "--events-table")?
        ),
        None => ident(table, "--events-table")?,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let db = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect(url)
            .await
            .context("connecting to the event database (--events-db)")?;
        // Pages by id: the insertion order is the order the server logged
        // the events in, and a page at a time keeps memory bounded.
        let mut last: i64 = 0;
        let mut rows_read = 0u64;
        loop {
            let sql = format!(
                "SELECT id, event::text FROM {name} WHERE id > $1 AND ($2::text IS NULL OR pool_id = $2) ORDER BY id LIMIT 10000"
            );
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(last)
                .bind(pool)
                .fetch_all(&db)
                .await
                .with_context(|| format!("reading {name}"))?;
            if rows.is_empty() {
                break;
            }
            for row in &rows {
                let id: i64 = row.try_get(0)?;
                let text: String = row.try_get(1)?;
                x.add_line(&name, id as u64, &text)?;
                last = id;
                rows_read += 1;
            }
        }
        db.close().await;
        Ok(rows_read)
    })
}
