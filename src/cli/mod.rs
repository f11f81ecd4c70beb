//! The administration commands: `pool`, `account`, `inspect` and `apply`,
//! and the insight commands `explain`, `report` and `top`.
//!
//! They cover `qscheduler.QSchedulerAdmin` and `qscheduler.QSchedulerView`
//! over pRPC or gRPC. Two rules shape them:
//!
//! * **Nothing malformed is sent.** Every value is parsed and range-checked
//!   locally ([`values`]) with the server's own bounds, so a typo is an error
//!   naming the flag (or the file line), never a silent zero.
//! * **Balances are not reset by accident.** `CreateAccount` replaces an
//!   account and zeroes its balance, so `account add` refuses an existing
//!   account unless told to replace it, `account mod` and `apply` change
//!   accounts with `ModAccount`, and `apply` only recreates an account when
//!   explicitly allowed (see [`apply`]).
//!
//! Output meant for people goes to stdout, errors to stderr as
//! `qscheduler: error: ...` (printed by `main`). A command line that cannot
//! be parsed exits with status 2, every other failure with 1.
//!
//! # Differences from the original tool (reference §9.3)
//!
//! * Commands are grouped (`pool create|mod|delete|wipe`, `account
//!   add|mod|delete|list`) and cover every admin RPC, including the deletes
//!   and `ListAccounts` the original lacked; `apply` is new.
//! * `pool create` applies `--allow-preemption` and `--bot-expiration` (the
//!   original ignored the first and crashed on the second).
//! * `account add` refuses an existing account unless `--replace` is given;
//!   `account mod --description ""` clears a description; `account delete`
//!   of a missing account is an error.
//! * The wipe confirmation is `--yes-wipe-everything` (was `-X`).
//! * `inspect` without a view prints a summary instead of the response in
//!   protobuf text format; `--output json` gives the whole response. The
//!   view flags may be combined. The `--accounts` tables keep the original
//!   layout, except that charge rates are printed exactly (a rate of 0.05
//!   showed as 0.1 with the original's `%.1f`). It reads the pool in pages
//!   (`--page-size`), so a large pool is never one response.
//! * No authentication flags yet.

mod account;
mod apply;
mod client;
mod insight;
mod inspect;
mod pool;
mod table;
mod values;

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};

pub(crate) use apply::{Desired as PoolsFileEntry, load as load_pools_file};
pub use client::{Bearer, Client, Credentials, Transport, code_name, grpc_endpoint, prpc_client};

/// A command line that parsed but makes no sense (flags that contradict
/// each other, nothing to do, a missing confirmation). Like clap's own
/// usage errors it exits with status 2, so scripts can tell "you called it
/// wrong" from "it failed".
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Returns a [`UsageError`] from the enclosing function.
macro_rules! usage {
    ($($arg:tt)*) => {
        return Err($crate::cli::UsageError(format!($($arg)*)).into())
    };
}
pub(crate) use usage;

/// How to reach the server; accepted by every administration command.
#[derive(Args, Debug, Clone)]
pub struct Conn {
    /// The server's URL (http://HOST:PORT).
    #[arg(
        long,
        global = true,
        help_heading = "Connection",
        value_name = "URL",
        env = "QSCHEDULER_SERVER",
        default_value = "http://127.0.0.1:8082"
    )]
    server: String,
    /// Protocol: pRPC (HTTP/1.1, what the original tool spoke) or gRPC.
    #[arg(
        long,
        global = true,
        help_heading = "Connection",
        value_enum,
        default_value = "prpc"
    )]
    transport: Transport,
    /// Give up on a call after this many seconds.
    #[arg(long, global = true, help_heading = "Connection", value_name = "SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..))]
    timeout: u64,
    #[command(flatten)]
    credentials: Credentials,
}

impl Conn {
    fn client(&self) -> anyhow::Result<Client> {
        Client::new(
            &self.server,
            self.transport,
            Duration::from_secs(self.timeout),
            &self.credentials,
        )
    }
}

/// How to print a view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned tables for people.
    Table,
    /// The whole response as JSON (the protobuf JSON mapping, as pRPC's
    /// JSON encoding returns it, with zero values included).
    Json,
    /// The same document as `json`, in YAML.
    Yaml,
}

/// `-o/--output`, the same on every command that prints a view.
#[derive(Args, Debug, Clone, Copy)]
pub struct OutputArg {
    /// "table" for people; "json" or "yaml" print the whole response for
    /// scripts (field names as in pRPC's JSON: numWaitingTasks,
    /// accountBalances, ...).
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub format: Output,
}

impl OutputArg {
    /// True when the output is a document (JSON or YAML), not a table.
    pub fn is_document(self) -> bool {
        self.format != Output::Table
    }

    /// `message` as the chosen document format. Panics never; a table is the
    /// caller's to print, so asking for one here is an error.
    pub fn document<M: prost::Message + prost::Name>(self, message: &M) -> anyhow::Result<String> {
        let value = proto_value(message)?;
        match self.format {
            Output::Json => json_text(&value),
            Output::Yaml => yaml_text(&value),
            Output::Table => anyhow::bail!("a table is printed by the command itself"),
        }
    }
}

/// The administration commands, as top-level subcommands of `qscheduler`.
#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Create, change, wipe or delete pools (schedulers).
    Pool(pool::PoolArgs),
    /// Add, change, delete or list the quota accounts of a pool.
    Account(account::AccountArgs),
    /// Show a pool: a summary, or its accounts, idle bots or tasks.
    Inspect(inspect::InspectArgs),
    /// Make the server's pools and accounts match a TOML file.
    ///
    /// Creates missing pools, sets the pool settings the file gives,
    /// creates accounts that are missing and changes those whose
    /// configuration differs (keeping their balances). With --prune,
    /// deletes the accounts of the file's pools that the file does not
    /// list. Pools that are not in the file are never touched. The whole
    /// file is checked before anything is sent; --dry-run shows the plan
    /// and changes nothing. See docs/pools.example.toml for the format.
    Apply(apply::ApplyArgs),
    /// Why a task waits, what blocks it, and when it may start.
    Explain(insight::ExplainArgs),
    /// Per account and level over a window: entitlement, usage, waits,
    /// preemptions.
    Report(insight::ReportArgs),
    /// A live view of a pool, refreshed every few seconds, in the spirit
    /// of `top`.
    Top(insight::TopArgs),
}

/// Runs an administration command.
pub fn run(command: ClientCommand) -> anyhow::Result<()> {
    match command {
        ClientCommand::Pool(args) => pool::run(args),
        ClientCommand::Account(args) => account::run(args),
        ClientCommand::Inspect(args) => inspect::run(args),
        ClientCommand::Apply(args) => apply::run(args),
        ClientCommand::Explain(args) => insight::explain(args),
        ClientCommand::Report(args) => insight::report(args),
        ClientCommand::Top(args) => insight::top(args),
    }
}

/// Runs `f` on a small runtime: one command is a handful of sequential
/// calls.
fn block_on<F: Future>(f: F) -> anyhow::Result<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    Ok(rt.block_on(f))
}

/// A response as a JSON value in the protobuf JSON mapping (the names and
/// shapes pRPC's JSON encoding and grpcurl use), with zero values spelled
/// out so scripts need not know the proto defaults.
fn proto_value<M: prost::Message + prost::Name>(message: &M) -> anyhow::Result<serde_json::Value> {
    let name = M::full_name();
    let desc = qscheduler_wire::descriptor_pool()
        .get_message_by_name(&name)
        .with_context(|| format!("no descriptor for {name}"))?;
    let dynamic = prost_reflect::DynamicMessage::decode(desc, message.encode_to_vec().as_slice())
        .with_context(|| format!("re-decoding {name}"))?;
    let options = prost_reflect::SerializeOptions::new().skip_default_fields(false);
    // Written as text first: serde_json writes an f32 in its shortest form
    // (a rate of 0.05 stays 0.05, where widening it to f64 would print
    // 0.05000000074505806). Re-read as a `serde_json::Value`, whose objects
    // are sorted, so map entries (accounts) come out in the same order every
    // time.
    let mut compact = Vec::new();
    dynamic
        .serialize_with_options(&mut serde_json::Serializer::new(&mut compact), &options)
        .with_context(|| format!("writing {name} as JSON"))?;
    serde_json::from_slice(&compact).with_context(|| format!("re-reading {name} as JSON"))
}

fn json_text(value: &serde_json::Value) -> anyhow::Result<String> {
    let mut text = serde_json::to_string_pretty(value).context("writing JSON")?;
    text.push('\n');
    Ok(text)
}

fn yaml_text(value: &serde_json::Value) -> anyhow::Result<String> {
    serde_yaml_ng::to_string(value).context("writing YAML")
}
