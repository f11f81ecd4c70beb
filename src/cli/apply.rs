//! `qscheduler apply -f pools.toml`: declarative pools and accounts.
//!
//! The file describes, per pool, some pool settings and the complete set of
//! its accounts. `apply` reads the file and checks all of it (reporting
//! every problem with its line and column) before it contacts the server;
//! then it reads the current state of the file's pools, computes a plan,
//! prints it, and carries it out unless `--dry-run` is given.
//!
//! Semantics, and why:
//!
//! * **Accounts are whole records.** A field the file omits takes its
//!   default (0, false, empty), exactly as `CreateAccount` would, so the file
//!   alone says what an account is.
//! * **Pool settings are optional.** `allow_preemption` and
//!   `bot_expiration_seconds` are only set when the file gives them.
//!   `bot_expiration_seconds` cannot be read back (no view reports it), so
//!   when given for an existing pool it is re-sent on every apply; that is
//!   harmless (the same value again) and is shown as a note, not a change.
//! * **Balances are kept.** Existing accounts are changed with `ModAccount`,
//!   which keeps balances; `CreateAccount` would zero them. The one thing
//!   `ModAccount` cannot do is remove every per-label limit (an empty map
//!   means "unchanged" in the API), so such an account must be replaced with
//!   `CreateAccount`, which zeroes its balance. The plan marks it
//!   "replace", and `apply` refuses to run a plan with a replacement unless
//!   `--allow-balance-reset` is given: losing accumulated quota is the kind
//!   of surprise a declarative tool must not spring. (Removing *some* limits
//!   is an ordinary modify: a non-empty map replaces the whole set.)
//! * **Deleting is opt-in.** Accounts of the file's pools that the file does
//!   not list are reported and kept, unless `--prune` is given. Pools that
//!   are not in the file are never touched: the API has no way to list
//!   pools, and deleting a pool is `qscheduler pool delete`.
//! * **Idempotent.** A second `apply` of the same file finds nothing to do
//!   and says so. If an apply fails half-way, running it again finishes it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use qscheduler_core::NUM_PRIORITIES;
use qscheduler_wire::protos;
use qscheduler_wire::qscheduler as adm;
use serde::Deserialize;
use toml::Spanned;
use tonic::Code;

use super::client::{Client, RpcError};
use super::values::{
    check_account_id, check_charge_seconds, check_count, check_label_key, check_pool_id, check_rate,
};
use super::{Conn, block_on};

/// Arguments of `qscheduler apply`.
#[derive(Args, Debug)]
#[command(after_help = "\
File format (TOML; see docs/pools.example.toml):

  [pools.pool1]
  allow_preemption = true          # optional: left as is when absent
  bot_expiration_seconds = 600     # optional: 0 = the default, 300 s

  [pools.pool1.accounts.team-a]
  charge_rate = [5, 2]             # P0..P4, bot-seconds per second
  max_charge_seconds = 3600
  max_fanout = 0                   # 0 = unlimited
  disable_free_tasks = false
  description = \"Team A\"
  per_label_task_limits = { label-model = 2 }

Account fields not given are 0, false or empty.")]
pub struct ApplyArgs {
    #[command(flatten)]
    conn: Conn,
    /// The TOML file describing the pools and their accounts.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: PathBuf,
    /// Show what would change and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Also delete the accounts of the file's pools that the file does not
    /// list (without it they are reported and kept).
    #[arg(long)]
    prune: bool,
    /// Allow replacing an account whose per-label limits the file removes
    /// entirely: the API can only do that by recreating the account, which
    /// sets its balance to zero.
    #[arg(long)]
    allow_balance_reset: bool,
}

// ---------------------------------------------------------------------------
// The file.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    #[serde(default)]
    pools: BTreeMap<Spanned<String>, PoolDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolDoc {
    allow_preemption: Option<bool>,
    bot_expiration_seconds: Option<Spanned<i64>>,
    #[serde(default)]
    accounts: BTreeMap<Spanned<String>, AccountDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountDoc {
    charge_rate: Option<Spanned<Vec<Spanned<f64>>>>,
    max_charge_seconds: Option<Spanned<f64>>,
    max_fanout: Option<Spanned<i64>>,
    #[serde(default)]
    disable_free_tasks: bool,
    #[serde(default)]
    description: String,
    #[serde(default)]
    per_label_task_limits: BTreeMap<Spanned<String>, Spanned<i64>>,
}

/// A pool as the file wants it, checked.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Desired {
    pub(crate) id: String,
    pub(crate) allow_preemption: Option<bool>,
    pub(crate) bot_expiration_seconds: Option<i32>,
    /// Charge rates always have five entries, as the server reports them.
    pub(crate) accounts: BTreeMap<String, protos::AccountConfig>,
}

/// Collects problems with their positions, so one run reports them all.
struct Problems<'a> {
    name: &'a str,
    text: &'a str,
    list: Vec<String>,
}

impl Problems<'_> {
    fn at(&mut self, span: std::ops::Range<usize>, message: impl std::fmt::Display) {
        let (line, col) = line_col(self.text, span.start);
        self.list
            .push(format!("{}:{line}:{col}: {message}", self.name));
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Parses and checks a whole file; on failure, every problem found.
fn parse_file(name: &str, text: &str) -> Result<Vec<Desired>, Vec<String>> {
    let doc: FileDoc = match toml::from_str(text) {
        Ok(doc) => doc,
        Err(e) => {
            // The TOML error names its line and column and quotes the line.
            let msg = e.to_string();
            let msg = match e.span() {
                Some(span) => {
                    let (line, col) = line_col(text, span.start);
                    format!("{name}:{line}:{col}: {}", e.message())
                }
                None => format!("{name}: {}", msg.trim_end()),
            };
            return Err(vec![msg]);
        }
    };
    let mut p = Problems {
        name,
        text,
        list: Vec::new(),
    };
    let mut pools = Vec::new();
    for (pool_key, pool) in doc.pools {
        let pool_id = pool_key.get_ref().clone();
        if let Err(e) = check_pool_id(&pool_id) {
            p.at(pool_key.span(), e);
        }
        let bot_expiration_seconds =
            pool.bot_expiration_seconds
                .and_then(|v| match check_count(*v.get_ref()) {
                    Ok(n) => Some(n),
                    Err(e) => {
                        p.at(
                            v.span(),
                            format!("bot_expiration_seconds: {e} (0 means the default, 300 s)"),
                        );
                        None
                    }
                });
        let mut accounts = BTreeMap::new();
        for (acct_key, a) in pool.accounts {
            let acct_id = acct_key.get_ref().clone();
            if let Err(e) = check_account_id(&acct_id) {
                p.at(acct_key.span(), e);
            }
            accounts.insert(acct_id, account_config(&mut p, a));
        }
        pools.push(Desired {
            id: pool_id,
            allow_preemption: pool.allow_preemption,
            bot_expiration_seconds,
            accounts,
        });
    }
    if p.list.is_empty() {
        Ok(pools)
    } else {
        Err(p.list)
    }
}

fn account_config(p: &mut Problems<'_>, a: AccountDoc) -> protos::AccountConfig {
    let mut charge_rate = vec![0.0f32; NUM_PRIORITIES];
    if let Some(rates) = a.charge_rate {
        if rates.get_ref().len() > NUM_PRIORITIES {
            p.at(
                rates.span(),
                format!(
                    "charge_rate has {} values; at most {NUM_PRIORITIES} are allowed (P0..P4)",
                    rates.get_ref().len()
                ),
            );
        }
        for (i, r) in rates.get_ref().iter().enumerate().take(NUM_PRIORITIES) {
            match check_rate(*r.get_ref()) {
                Ok(v) => charge_rate[i] = v,
                Err(e) => p.at(r.span(), format!("charge_rate[{i}] (P{i}): {e}")),
            }
        }
    }
    let max_charge_seconds = a.max_charge_seconds.map_or(0.0, |v| {
        check_charge_seconds(*v.get_ref()).unwrap_or_else(|e| {
            p.at(v.span(), format!("max_charge_seconds: {e}"));
            0.0
        })
    });
    let max_fanout = a.max_fanout.map_or(0, |v| {
        check_count(*v.get_ref()).unwrap_or_else(|e| {
            p.at(v.span(), format!("max_fanout: {e} (0 means unlimited)"));
            0
        })
    });
    let mut per_label_task_limits = BTreeMap::new();
    for (key, limit) in a.per_label_task_limits {
        if let Err(e) = check_label_key(key.get_ref()) {
            p.at(key.span(), e);
        }
        match check_count(*limit.get_ref()) {
            Ok(n) => {
                per_label_task_limits.insert(key.into_inner(), n);
            }
            Err(e) => p.at(
                limit.span(),
                format!("per_label_task_limits[{:?}]: {e}", key.get_ref()),
            ),
        }
    }
    protos::AccountConfig {
        charge_rate,
        max_charge_seconds,
        max_fanout,
        disable_free_tasks: a.disable_free_tasks,
        description: a.description,
        per_label_task_limits,
    }
}

// ---------------------------------------------------------------------------
// The plan.

/// What the server has of a pool.
#[derive(Debug, Clone, Default)]
struct Current {
    exists: bool,
    /// Only read when the file sets it (reading it means InspectPool, which
    /// carries every task of the pool).
    allow_preemption: Option<bool>,
    accounts: BTreeMap<String, protos::AccountConfig>,
}

/// One changed field, for display.
#[derive(Debug, Clone, PartialEq)]
struct FieldChange {
    field: &'static str,
    old: String,
    new: String,
}

#[derive(Debug, Clone, PartialEq)]
enum AccountStep {
    Create(protos::AccountConfig),
    Modify {
        changes: Vec<FieldChange>,
        request: adm::ModAccountRequest,
    },
    /// CreateAccount over an existing account: zeroes its balance.
    Replace {
        changes: Vec<FieldChange>,
        config: protos::AccountConfig,
    },
    Delete,
    /// Not in the file and not pruned.
    Keep,
}

#[derive(Debug, Clone, PartialEq)]
struct PoolPlan {
    id: String,
    create: bool,
    /// (old, new) when the preemption setting must change.
    preemption: Option<(Option<bool>, bool)>,
    /// Sent whenever the file gives it (see the module docs).
    bot_expiration_seconds: Option<i32>,
    accounts: Vec<(String, AccountStep)>,
}

impl PoolPlan {
    /// Whether anything observable changes (a re-sent bot expiration on an
    /// existing pool does not count).
    fn changes(&self) -> bool {
        self.create
            || self.preemption.is_some()
            || self
                .accounts
                .iter()
                .any(|(_, s)| !matches!(s, AccountStep::Keep))
    }
}

fn fmt_rates(r: &[f32]) -> String {
    let items: Vec<String> = (0..NUM_PRIORITIES)
        .map(|i| r.get(i).copied().unwrap_or(0.0).to_string())
        .collect();
    format!("[{}]", items.join(", "))
}

fn fmt_limits(m: &BTreeMap<String, i32>) -> String {
    let items: Vec<String> = m.iter().map(|(k, v)| format!("{k} = {v}")).collect();
    format!("{{{}}}", items.join(", "))
}

/// Every field of a config, formatted; the order of the file's example.
fn fields(c: &protos::AccountConfig) -> Vec<(&'static str, String)> {
    vec![
        ("charge_rate", fmt_rates(&c.charge_rate)),
        ("max_charge_seconds", c.max_charge_seconds.to_string()),
        ("max_fanout", c.max_fanout.to_string()),
        ("disable_free_tasks", c.disable_free_tasks.to_string()),
        ("description", format!("{:?}", c.description)),
        (
            "per_label_task_limits",
            fmt_limits(&c.per_label_task_limits),
        ),
    ]
}

fn padded_rates(r: &[f32]) -> Vec<f32> {
    (0..NUM_PRIORITIES)
        .map(|i| r.get(i).copied().unwrap_or(0.0))
        .collect()
}

/// The step that turns `old` into `new`.
fn account_step(
    pool: &str,
    id: &str,
    old: &protos::AccountConfig,
    new: &protos::AccountConfig,
) -> AccountStep {
    let changes: Vec<FieldChange> = fields(old)
        .into_iter()
        .zip(fields(new))
        .filter(|(a, b)| a.1 != b.1)
        .map(|(a, b)| FieldChange {
            field: a.0,
            old: a.1,
            new: b.1,
        })
        .collect();
    if changes.is_empty() {
        return AccountStep::Keep;
    }
    if new.per_label_task_limits.is_empty() && !old.per_label_task_limits.is_empty() {
        return AccountStep::Replace {
            changes,
            config: new.clone(),
        };
    }
    let old_rates = padded_rates(&old.charge_rate);
    let request = adm::ModAccountRequest {
        pool_id: pool.to_string(),
        account_id: id.to_string(),
        charge_rate: if old_rates != new.charge_rate {
            new.charge_rate.clone()
        } else {
            Vec::new()
        },
        max_charge_seconds: (old.max_charge_seconds != new.max_charge_seconds)
            .then_some(new.max_charge_seconds),
        max_fanout: (old.max_fanout != new.max_fanout).then_some(new.max_fanout),
        disable_free_tasks: (old.disable_free_tasks != new.disable_free_tasks)
            .then_some(new.disable_free_tasks),
        reset_balance: false,
        description: (old.description != new.description).then(|| new.description.clone()),
        per_label_task_limits: if old.per_label_task_limits != new.per_label_task_limits {
            new.per_label_task_limits.clone()
        } else {
            BTreeMap::new()
        },
    };
    AccountStep::Modify { changes, request }
}

fn plan_pool(want: &Desired, have: &Current, prune: bool) -> PoolPlan {
    let preemption = match want.allow_preemption {
        Some(new) if !have.exists || have.allow_preemption != Some(new) => {
            Some((have.allow_preemption, new))
        }
        _ => None,
    };
    let mut accounts = Vec::new();
    for (id, config) in &want.accounts {
        let step = match have.accounts.get(id) {
            None => AccountStep::Create(config.clone()),
            Some(old) => account_step(&want.id, id, old, config),
        };
        accounts.push((id.clone(), step));
    }
    for id in have.accounts.keys() {
        if !want.accounts.contains_key(id) {
            let step = if prune {
                AccountStep::Delete
            } else {
                AccountStep::Keep
            };
            accounts.push((id.clone(), step));
        }
    }
    PoolPlan {
        id: want.id.clone(),
        create: !have.exists,
        preemption,
        bot_expiration_seconds: want.bot_expiration_seconds,
        accounts,
    }
}

/// The plan as text (the same for --dry-run and a real apply).
fn render(plans: &[PoolPlan], want: &[Desired]) -> String {
    let mut out = String::new();
    for (plan, desired) in plans.iter().zip(want) {
        let head = if plan.create {
            "create"
        } else if plan.changes() {
            "change"
        } else {
            "no changes"
        };
        let _ = writeln!(out, "pool {}: {head}", plan.id);
        if let Some((old, new)) = plan.preemption {
            match old {
                Some(old) if !plan.create => {
                    let _ = writeln!(out, "    allow_preemption: {old} -> {new}");
                }
                _ => {
                    let _ = writeln!(out, "    allow_preemption: {new}");
                }
            }
        }
        if let Some(secs) = plan.bot_expiration_seconds {
            if plan.create {
                let _ = writeln!(out, "    bot_expiration_seconds: {secs}");
            } else {
                let _ = writeln!(
                    out,
                    "    bot_expiration_seconds: {secs} (re-sent on every apply: the server \
                     does not report it)"
                );
            }
        }
        for (id, step) in &plan.accounts {
            match step {
                AccountStep::Create(config) => {
                    let _ = writeln!(out, "  + account {id}: create");
                    // The quota fields always, the others when set.
                    let defaults = fields(&protos::AccountConfig::default());
                    for ((field, value), (_, default)) in fields(config).into_iter().zip(defaults) {
                        let quota = matches!(field, "charge_rate" | "max_charge_seconds");
                        if quota || value != default {
                            let _ = writeln!(out, "        {field}: {value}");
                        }
                    }
                }
                AccountStep::Modify { changes, .. } => {
                    let _ = writeln!(out, "  ~ account {id}: modify (balance kept)");
                    for c in changes {
                        let _ = writeln!(out, "        {}: {} -> {}", c.field, c.old, c.new);
                    }
                }
                AccountStep::Replace { changes, .. } => {
                    let _ = writeln!(
                        out,
                        "  ! account {id}: replace (its balance is reset to zero: removing all \
                         per-label limits needs CreateAccount)"
                    );
                    for c in changes {
                        let _ = writeln!(out, "        {}: {} -> {}", c.field, c.old, c.new);
                    }
                }
                AccountStep::Delete => {
                    let _ = writeln!(out, "  - account {id}: delete");
                }
                AccountStep::Keep if !desired.accounts.contains_key(id) => {
                    let _ = writeln!(
                        out,
                        "    account {id}: not in the file; kept (--prune deletes it)"
                    );
                }
                AccountStep::Keep => {}
            }
        }
    }
    out
}

#[derive(Default)]
struct Counts {
    pools_created: usize,
    pools_changed: usize,
    created: usize,
    modified: usize,
    replaced: usize,
    deleted: usize,
}

impl Counts {
    fn of(plans: &[PoolPlan]) -> Counts {
        let mut c = Counts::default();
        for p in plans {
            if p.create {
                c.pools_created += 1;
            } else if p.preemption.is_some() {
                c.pools_changed += 1;
            }
            for (_, s) in &p.accounts {
                match s {
                    AccountStep::Create(_) => c.created += 1,
                    AccountStep::Modify { .. } => c.modified += 1,
                    AccountStep::Replace { .. } => c.replaced += 1,
                    AccountStep::Delete => c.deleted += 1,
                    AccountStep::Keep => {}
                }
            }
        }
        c
    }

    fn summary(&self) -> String {
        let count =
            |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        let mut parts = Vec::new();
        if self.pools_created > 0 {
            parts.push(format!(
                "{} to create",
                count(self.pools_created, "pool", "pools")
            ));
        }
        if self.pools_changed > 0 {
            parts.push(format!(
                "{} to change",
                count(self.pools_changed, "pool setting", "pool settings")
            ));
        }
        // "3 accounts to create, 1 to modify".
        let accounts: Vec<String> = [
            (self.created, "to create"),
            (self.modified, "to modify"),
            (self.replaced, "to replace"),
            (self.deleted, "to delete"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .enumerate()
        .map(|(i, (n, what))| {
            if i == 0 {
                format!("{} {what}", count(*n, "account", "accounts"))
            } else {
                format!("{n} {what}")
            }
        })
        .collect();
        if !accounts.is_empty() {
            parts.push(accounts.join(", "));
        }
        parts.join("; ")
    }
}

// ---------------------------------------------------------------------------
// Talking to the server.

async fn read_current(client: &Client, want: &Desired) -> anyhow::Result<Current> {
    let listed = client
        .list_accounts(
            &format!("reading the accounts of pool {:?}", want.id),
            adm::ListAccountsRequest {
                pool_id: want.id.clone(),
            },
        )
        .await;
    let accounts = match listed {
        Ok(resp) => resp.accounts,
        Err(e) if e.code() == Code::NotFound => return Ok(Current::default()),
        Err(e) => return Err(e.into()),
    };
    let allow_preemption = if want.allow_preemption.is_some() {
        let resp = client
            .inspect_pool(
                &format!("reading the settings of pool {:?}", want.id),
                // Only the pool's settings are needed, which every page
                // carries: the smallest page.
                adm::InspectPoolRequest {
                    pool_id: want.id.clone(),
                    page_size: 1,
                    ..Default::default()
                },
            )
            .await?;
        Some(!resp.disable_preemption)
    } else {
        None
    };
    Ok(Current {
        exists: true,
        allow_preemption,
        accounts,
    })
}

/// Carries out one pool's plan; counts the calls that succeeded so a
/// failure can say how far it got.
async fn execute(client: &Client, plan: &PoolPlan, done: &mut usize) -> Result<(), RpcError> {
    let pool = &plan.id;
    if plan.create {
        client
            .create_scheduler_pool(
                &format!("creating pool {pool:?}"),
                adm::CreateSchedulerPoolRequest {
                    pool_id: pool.clone(),
                    config: None,
                },
            )
            .await?;
        *done += 1;
    }
    if plan.preemption.is_some() || plan.bot_expiration_seconds.is_some() {
        client
            .mod_scheduler_pool(
                &format!("setting the options of pool {pool:?}"),
                adm::ModSchedulerPoolRequest {
                    pool_id: pool.clone(),
                    disable_preemption: plan.preemption.map(|(_, allow)| !allow),
                    bot_expiration_seconds: plan.bot_expiration_seconds,
                },
            )
            .await?;
        *done += 1;
    }
    // Creations and changes first, deletions last.
    let mut steps: Vec<&(String, AccountStep)> = plan.accounts.iter().collect();
    steps.sort_by_key(|(_, s)| matches!(s, AccountStep::Delete));
    for (id, step) in steps {
        match step {
            AccountStep::Create(config) | AccountStep::Replace { config, .. } => {
                client
                    .create_account(
                        &format!("creating account {id:?} in pool {pool:?}"),
                        adm::CreateAccountRequest {
                            pool_id: pool.clone(),
                            account_id: id.clone(),
                            config: Some(config.clone()),
                        },
                    )
                    .await?;
            }
            AccountStep::Modify { request, .. } => {
                client
                    .mod_account(
                        &format!("modifying account {id:?} in pool {pool:?}"),
                        request.clone(),
                    )
                    .await?;
            }
            AccountStep::Delete => {
                client
                    .delete_account(
                        &format!("deleting account {id:?} from pool {pool:?}"),
                        adm::DeleteAccountRequest {
                            pool_id: pool.clone(),
                            account_id: id.clone(),
                        },
                    )
                    .await?;
            }
            AccountStep::Keep => continue,
        }
        *done += 1;
    }
    Ok(())
}

fn read_file(path: &Path) -> anyhow::Result<(String, String)> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {name}"))?;
    Ok((name, text))
}

/// Reads and checks a pools file, reporting every problem with its line;
/// `consequence` completes the error's first sentence. `qscheduler
/// simulate` reads its configurations through this too, so a file that
/// applies is a file that simulates, and the other way round.
pub(crate) fn load(path: &Path, consequence: &str) -> anyhow::Result<(String, Vec<Desired>)> {
    let (name, text) = read_file(path)?;
    match parse_file(&name, &text) {
        Ok(want) => Ok((name, want)),
        Err(problems) => {
            let n = problems.len();
            bail!(
                "{name} is not valid ({n} problem{}){consequence}:\n  {}",
                if n == 1 { "" } else { "s" },
                problems.join("\n  ")
            );
        }
    }
}

/// Runs `qscheduler apply`.
pub fn run(args: ApplyArgs) -> anyhow::Result<()> {
    let (name, want) = load(&args.file, "; nothing was changed")?;
    if want.is_empty() {
        println!("{name} lists no pools; nothing to do.");
        return Ok(());
    }
    block_on(async move {
        let client = args.conn.client()?;
        let mut plans = Vec::with_capacity(want.len());
        for w in &want {
            let have = read_current(&client, w).await?;
            plans.push(plan_pool(w, &have, args.prune));
        }
        print!("{}", render(&plans, &want));
        let counts = Counts::of(&plans);
        if !plans.iter().any(PoolPlan::changes) {
            println!("No changes: the server already matches {name}.");
            if !args.dry_run {
                // Re-send what cannot be compared, so the result is the
                // file's even if someone changed it by hand.
                let mut done = 0;
                for plan in plans.iter().filter(|p| p.bot_expiration_seconds.is_some()) {
                    execute(&client, plan, &mut done).await?;
                }
            }
            return Ok(());
        }
        let replacing: Vec<String> = plans
            .iter()
            .flat_map(|p| {
                p.accounts
                    .iter()
                    .filter(|(_, s)| matches!(s, AccountStep::Replace { .. }))
                    .map(move |(id, _)| format!("{}/{id}", p.id))
            })
            .collect();
        if args.dry_run {
            println!("Plan: {}. Dry run: nothing was changed.", counts.summary());
            if !replacing.is_empty() && !args.allow_balance_reset {
                println!(
                    "Note: applying this plan needs --allow-balance-reset (it replaces {}).",
                    replacing.join(", ")
                );
            }
            return Ok(());
        }
        if !replacing.is_empty() && !args.allow_balance_reset {
            bail!(
                "the plan replaces {} to remove all per-label limits, which resets the balance \
                 to zero; nothing was changed. Re-run with --allow-balance-reset to accept that, \
                 or keep at least one limit",
                replacing.join(", ")
            );
        }
        let total: usize = plans
            .iter()
            .map(|p| {
                usize::from(p.create)
                    + usize::from(p.preemption.is_some() || p.bot_expiration_seconds.is_some())
                    + p.accounts
                        .iter()
                        .filter(|(_, s)| !matches!(s, AccountStep::Keep))
                        .count()
            })
            .sum();
        let mut done = 0;
        for plan in &plans {
            execute(&client, plan, &mut done).await.map_err(|e| {
                anyhow::anyhow!(
                    "{e}\n{done} of {total} calls were made before this error; running apply \
                     again finishes the rest"
                )
            })?;
        }
        println!("Applied: {}.", counts.summary());
        Ok(())
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<Desired>, Vec<String>> {
        parse_file("f.toml", text)
    }

    #[test]
    fn parses_the_example_file() {
        let text = include_str!("../../docs/pools.example.toml");
        let pools = parse_file("pools.example.toml", text).unwrap();
        assert!(!pools.is_empty());
    }

    #[test]
    fn defaults_and_padding() {
        let pools = parse(
            "[pools.p]\n[pools.p.accounts.a]\ncharge_rate = [5, 2.5]\n\
             per_label_task_limits = { \"label-model\" = 2 }\n",
        )
        .unwrap();
        assert_eq!(pools.len(), 1);
        assert_eq!(pools[0].allow_preemption, None);
        let a = &pools[0].accounts["a"];
        assert_eq!(a.charge_rate, vec![5.0, 2.5, 0.0, 0.0, 0.0]);
        assert_eq!(a.max_charge_seconds, 0.0);
        assert_eq!(a.per_label_task_limits["label-model"], 2);
    }

    #[test]
    fn reports_every_problem_with_its_line() {
        let text = "[pools.p]\nbot_expiration_seconds = -1\n\
                    [pools.p.accounts.a]\ncharge_rate = [1, -2, nan]\nmax_fanout = -3\n\
                    per_label_task_limits = { k = -1 }\n\
                    [pools.p.accounts.b]\ncharge_rate = [1, 1, 1, 1, 1, 1]\nmax_charge_seconds = inf\n";
        let errors = parse(text).unwrap_err();
        let joined = errors.join("\n");
        assert_eq!(errors.len(), 7, "{joined}");
        assert!(
            joined.contains("f.toml:2:26: bot_expiration_seconds"),
            "{joined}"
        );
        assert!(
            joined.contains("f.toml:4:19: charge_rate[1] (P1)"),
            "{joined}"
        );
        assert!(
            joined.contains("f.toml:4:23: charge_rate[2] (P2)"),
            "{joined}"
        );
        assert!(joined.contains("f.toml:5:14: max_fanout"), "{joined}");
        assert!(
            joined.contains("f.toml:6:31: per_label_task_limits"),
            "{joined}"
        );
        assert!(
            joined.contains("f.toml:8:15: charge_rate has 6 values"),
            "{joined}"
        );
        assert!(
            joined.contains("f.toml:9:22: max_charge_seconds"),
            "{joined}"
        );
    }

    #[test]
    fn unknown_fields_and_syntax_errors_have_lines() {
        let errors = parse("[pools.p.accounts.a]\ncharge_rates = [1]\n").unwrap_err();
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].starts_with("f.toml:2:1: unknown field `charge_rates`"),
            "{errors:?}"
        );
        let errors = parse("[pools.p]\nallow_preemption = yes\n").unwrap_err();
        assert!(errors[0].starts_with("f.toml:2:"), "{errors:?}");
        let errors = parse("[pools.\"\"]\n[pools.p.accounts.\"\"]\n").unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
    }

    fn config(rates: &[f32]) -> protos::AccountConfig {
        protos::AccountConfig {
            charge_rate: padded_rates(rates),
            ..Default::default()
        }
    }

    #[test]
    fn plans_minimal_changes() {
        let mut old = config(&[1.0]);
        old.per_label_task_limits.insert("k".into(), 1);
        let mut new = config(&[2.0]);
        new.per_label_task_limits.insert("k".into(), 1);
        new.description = "d".into();
        let AccountStep::Modify { changes, request } = account_step("p", "a", &old, &new) else {
            panic!("not a modify");
        };
        assert_eq!(changes.len(), 2);
        assert_eq!(request.charge_rate, vec![2.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(request.description.as_deref(), Some("d"));
        assert!(request.per_label_task_limits.is_empty());
        assert_eq!(request.max_fanout, None);
        assert!(!request.reset_balance);

        // The server always reports five rates; the comparison does too.
        assert_eq!(
            account_step(
                "p",
                "a",
                &config(&[1.0, 0.0, 0.0, 0.0, 0.0]),
                &config(&[1.0])
            ),
            AccountStep::Keep
        );
        // Removing every limit needs a replacement.
        let cleared = config(&[1.0]);
        assert!(matches!(
            account_step("p", "a", &old, &cleared),
            AccountStep::Replace { .. }
        ));
    }

    #[test]
    fn prune_and_keep() {
        let want = Desired {
            id: "p".into(),
            allow_preemption: Some(false),
            bot_expiration_seconds: None,
            accounts: BTreeMap::from([("a".to_string(), config(&[1.0]))]),
        };
        let have = Current {
            exists: true,
            allow_preemption: Some(true),
            accounts: BTreeMap::from([
                ("a".to_string(), config(&[1.0])),
                ("old".to_string(), config(&[1.0])),
            ]),
        };
        let plan = plan_pool(&want, &have, false);
        assert_eq!(plan.preemption, Some((Some(true), false)));
        assert_eq!(plan.accounts[1], ("old".to_string(), AccountStep::Keep));
        let plan = plan_pool(&want, &have, true);
        assert_eq!(plan.accounts[1], ("old".to_string(), AccountStep::Delete));
        let text = render(
            &[plan_pool(&want, &have, false)],
            std::slice::from_ref(&want),
        );
        assert!(text.contains("allow_preemption: true -> false"), "{text}");
        assert!(
            text.contains("account old: not in the file; kept"),
            "{text}"
        );
    }
}
