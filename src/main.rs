//! The `qscheduler` command: server, administration and simulation tools.

mod auth_cmd;
mod cli;
mod config_cmd;
mod hostile;
mod loadgen;
mod play;
mod replay;
mod serve;
mod simulate;
mod telemetry;
mod workload_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};

/// Under load the server allocates many small, short-lived buffers per RPC
/// on one thread and frees them on another; glibc's allocator spent about a
/// fifth of the server's CPU time on that (arena locking and
/// consolidation), mimalloc a fraction of it. Built without transparent
/// huge pages (the `no_thp` feature): with them a pool held about 50% more
/// memory per queued task, as mostly empty 2 MiB pages stayed resident.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The version `--version` prints and the server logs at start: the
/// crate's version and the commit it was built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("QSCHEDULER_COMMIT"),
    ")"
);

/// A quota scheduler for fleets of bots: Swarming's external scheduler.
///
/// `qscheduler serve` runs the server (gRPC and pRPC on one port) with an
/// embedded store in ./qscheduler-data; no other setup is needed. `pool`,
/// `account`, `inspect` and `apply` administer a running server (see
/// --server on each).
#[derive(Parser)]
#[command(name = "qscheduler", version = VERSION, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the scheduler server.
    Serve(serve::ServeArgs),
    /// Check a configuration file, or print the documented example.
    #[command(subcommand)]
    Config(config_cmd::ConfigCommand),
    /// Make credentials for the server's [auth] section.
    #[command(subcommand)]
    Auth(auth_cmd::AuthCommand),
    /// Replay a workload trace (qsched-trace/1 JSON Lines) through the
    /// scheduling core and report timings, assignments, memory and
    /// snapshot size.
    Replay {
        /// The trace file (see the bench folder's TRACE.md for the format).
        #[arg(long, value_name = "FILE")]
        trace: PathBuf,
        /// Print one JSON object on stdout instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Drive a running server like a Swarming fleet (one bot per
    /// AssignTasks, one item per NotifyTasks, many concurrent callers) and
    /// report throughput and latency.
    Loadgen(loadgen::LoadgenArgs),
    /// Simulate a workload under a pool configuration (a pools file as for
    /// `apply`), or two side by side: waits, usage against entitlement,
    /// preemptions and level changes per account, fleet utilisation.
    Simulate(simulate::SimulateArgs),
    /// Make workloads for `simulate`: generate one from a model, extract
    /// one from a server's event log, or play one against a server.
    #[command(subcommand)]
    Workload(workload_cmd::WorkloadCommand),
    #[command(flatten)]
    Client(cli::ClientCommand),
    /// Print a shell completion script.
    ///
    /// bash: `qscheduler completions bash > /etc/bash_completion.d/qscheduler`;
    /// zsh: write it as `_qscheduler` into a directory of your `fpath`;
    /// fish: `qscheduler completions fish > ~/.config/fish/completions/qscheduler.fish`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the manual pages (qscheduler.1 and one per subcommand, such as
    /// qscheduler-pool-list.1) into DIR, from the same definitions as --help.
    ///
    /// Read one with `man -l DIR/qscheduler-serve.1`, or install them into
    /// a man1 directory of your MANPATH.
    Man {
        /// The directory (created if missing).
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

/// Exit status of a command line clap cannot parse (clap's convention, and
/// that of most Unix tools); every other failure exits with 1.
const USAGE_ERROR: u8 = 2;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            return ExitCode::from(USAGE_ERROR);
        }
        Err(e) if e.use_stderr() => {
            // clap's message starts with "error: "; the prefix gives it the
            // same shape as every other error of the tool.
            eprint!("qscheduler: {}", e.render());
            return ExitCode::from(USAGE_ERROR);
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Config(cmd) => config_cmd::run(cmd),
        Command::Auth(cmd) => auth_cmd::run(cmd),
        Command::Replay { trace, json } => replay::run(&trace, json),
        Command::Loadgen(args) => loadgen::run(args),
        Command::Simulate(args) => simulate::run(args),
        Command::Workload(command) => workload_cmd::run(command),
        Command::Client(command) => cli::run(command),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "qscheduler",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Man { dir } => write_man_pages(&dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qscheduler: error: {}", describe(&e));
            if e.downcast_ref::<cli::UsageError>().is_some() {
                ExitCode::from(USAGE_ERROR)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Writes `qscheduler.1` and a page per subcommand into `dir`.
fn write_man_pages(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cmd = Cli::command().version(VERSION);
    clap_mangen::generate_to(cmd, dir)
        .with_context(|| format!("writing manual pages into {}", dir.display()))?;
    println!("Wrote the manual pages into {}.", dir.display());
    Ok(())
}

/// An error and its causes joined by ": ", like `{:#}`, except that a cause
/// is left out when the message before it already contains it: many errors
/// repeat their source's text in their own message, and the chain then said
/// everything twice.
fn describe(e: &anyhow::Error) -> String {
    let mut out = String::new();
    let mut previous = String::new();
    for cause in e.chain() {
        let msg = cause.to_string();
        if !previous.contains(&msg) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&msg);
        }
        previous = msg;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::describe;

    /// An error that repeats its source's text, as many do.
    #[derive(Debug)]
    struct Repeats {
        source: std::io::Error,
    }

    impl std::fmt::Display for Repeats {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "cannot open the store at \"d\": {}", self.source)
        }
    }

    impl std::error::Error for Repeats {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.source)
        }
    }

    #[test]
    fn causes_repeated_by_their_parent_are_said_once() {
        let inner = std::io::Error::other("format 1, expected 2");
        let e = anyhow::Error::new(Repeats { source: inner }).context("starting the server");
        assert_eq!(
            describe(&e),
            "starting the server: cannot open the store at \"d\": format 1, expected 2"
        );
        let plain = anyhow::anyhow!("disk full").context("writing the snapshot");
        assert_eq!(describe(&plain), "writing the snapshot: disk full");
    }
}
