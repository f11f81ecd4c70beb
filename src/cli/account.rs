//! `qscheduler account add|mod|delete|list`.

use std::collections::BTreeMap;

use anyhow::bail;
use clap::{Args, Subcommand};
use qscheduler_core::NUM_PRIORITIES;
use qscheduler_wire::protos;
use qscheduler_wire::qscheduler as adm;

use super::client::Client;
use super::table::Table;
use super::values::{
    join_label_limits, join_rates, parse_account_id, parse_bool, parse_charge_seconds,
    parse_fanout, parse_label_limit, parse_pool_id, parse_rates,
};
use super::{Conn, OutputArg, block_on, usage};

/// Arguments of `qscheduler account`.
#[derive(Args, Debug)]
#[command(after_help = "\
An account holds quota: for each priority level P0 (best) to P4 it earns \
`rate` bot-seconds per second, up to `rate × charge-time`, and pays one \
bot-second per second for each of its running tasks. Tasks name their \
account with the Swarming tag qs_account:ACCOUNT.")]
pub struct AccountArgs {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    command: AccountCommand,
}

/// Charge rates as given to one `--rate` flag.
#[derive(Clone, Debug)]
struct Rates(Vec<f32>);

fn rates_arg(arg: &str) -> Result<Rates, String> {
    parse_rates(arg).map(Rates)
}

/// The account settings `add` and `mod` accept.
#[derive(Args, Debug)]
struct AccountFlags {
    /// Charge rate in bot-seconds per second, P0 first. Repeat the flag or
    /// separate with commas: `--rate 5 --rate 2` and `--rate 5,2` both set
    /// P0=5, P1=2 (levels not given are 0). At most five; each must be a
    /// number between 0 and 1e9.
    #[arg(long, alias = "rates", allow_hyphen_values = true, value_name = "RATE[,RATE...]", value_parser = rates_arg)]
    rate: Vec<Rates>,
    /// How many seconds of charge the balance can hold: each level's
    /// balance stops growing at rate × charge-time bot-seconds.
    #[arg(long, allow_hyphen_values = true, value_name = "SECONDS", value_parser = parse_charge_seconds)]
    charge_time: Option<f32>,
    /// Most tasks with identical labels that may run at once at a paid
    /// level; beyond that they run at the free level. 0 means no limit.
    #[arg(long, allow_hyphen_values = true, value_name = "N", value_parser = parse_fanout)]
    fanout: Option<i32>,
    /// "true": this account's tasks never run at the free level (on spare
    /// capacity, when it has no quota left).
    #[arg(long, value_name = "true|false", value_parser = parse_bool)]
    disable_free_tasks: Option<bool>,
    /// Free text shown by `inspect --accounts`.
    #[arg(long, value_name = "TEXT")]
    description: Option<String>,
    /// At most N of this account's tasks at once on bots with each distinct
    /// value of the label KEY (for example label-model=2: two per bot
    /// model). Repeatable, one KEY=N per flag.
    #[arg(long, value_name = "KEY=N", value_parser = parse_label_limit)]
    per_label_limit: Vec<(String, i32)>,
}

impl AccountFlags {
    fn rates(&self) -> anyhow::Result<Option<Vec<f32>>> {
        if self.rate.is_empty() {
            return Ok(None);
        }
        let groups: Vec<Vec<f32>> = self.rate.iter().map(|r| r.0.clone()).collect();
        match join_rates(&groups) {
            Ok(rates) => Ok(Some(rates)),
            Err(e) => usage!("--rate: {e}"),
        }
    }

    fn limits(&self) -> anyhow::Result<BTreeMap<String, i32>> {
        match join_label_limits(&self.per_label_limit) {
            Ok(limits) => Ok(limits),
            Err(e) => usage!("--per-label-limit: {e}"),
        }
    }

    fn is_empty(&self) -> bool {
        self.rate.is_empty()
            && self.charge_time.is_none()
            && self.fanout.is_none()
            && self.disable_free_tasks.is_none()
            && self.description.is_none()
            && self.per_label_limit.is_empty()
    }
}

#[derive(Subcommand, Debug)]
enum AccountCommand {
    /// Add an account to a pool.
    ///
    /// Settings not given are 0, false or empty: an account without rates
    /// never earns quota, so its tasks run only at the free level.
    #[command(after_help = "\
Example: qscheduler account add pool1 team-a --rate 5,2 --charge-time 3600 \
--description 'Team A builders'")]
    Add {
        /// The pool id.
        #[arg(value_name = "POOL", value_parser = parse_pool_id)]
        pool: String,
        /// The account id (the value of the tasks' qs_account tag).
        #[arg(value_name = "ACCOUNT", value_parser = parse_account_id)]
        account: String,
        #[command(flatten)]
        flags: AccountFlags,
        /// Replace the account if it exists, which zeroes its balance.
        /// Without it an existing account is an error; `account mod`
        /// changes an account and keeps its balance.
        #[arg(long)]
        replace: bool,
    },
    /// Change an account, keeping its balance.
    ///
    /// Settings not given stay as they are; the balance is kept unless
    /// --reset-balance is given.
    #[command(after_help = "\
Per-label limits replace the account's whole set when any is given; they \
cannot be removed with `mod` (the API reads no limits as \"unchanged\"): \
use `account add --replace` or `apply` for that.

Example: qscheduler account mod pool1 team-a --rate 10 --fanout 20")]
    Mod {
        /// The pool id.
        #[arg(value_name = "POOL", value_parser = parse_pool_id)]
        pool: String,
        /// The account id.
        #[arg(value_name = "ACCOUNT", value_parser = parse_account_id)]
        account: String,
        #[command(flatten)]
        flags: AccountFlags,
        /// Set the account's balance to zero at every level.
        #[arg(long)]
        reset_balance: bool,
    },
    /// Delete an account and its balance.
    ///
    /// Its tasks stay and run at the free level.
    Delete {
        /// The pool id.
        #[arg(value_name = "POOL", value_parser = parse_pool_id)]
        pool: String,
        /// The account id.
        #[arg(value_name = "ACCOUNT", value_parser = parse_account_id)]
        account: String,
    },
    /// List a pool's accounts and their settings.
    ///
    /// Balances are shown by `inspect --accounts`.
    List {
        /// The pool id.
        #[arg(value_name = "POOL", value_parser = parse_pool_id)]
        pool: String,
        #[command(flatten)]
        output: OutputArg,
    },
}

/// Runs `qscheduler account ...`.
pub fn run(args: AccountArgs) -> anyhow::Result<()> {
    // Everything is checked before connecting.
    match &args.command {
        AccountCommand::Add { flags, .. } => {
            flags.rates()?;
            flags.limits()?;
        }
        AccountCommand::Mod {
            flags,
            reset_balance,
            ..
        } => {
            flags.rates()?;
            flags.limits()?;
            if flags.is_empty() && !reset_balance {
                usage!(
                    "nothing to change: give at least one of --rate, --charge-time, --fanout, \
                     --disable-free-tasks, --description, --per-label-limit, --reset-balance"
                );
            }
        }
        AccountCommand::Delete { .. } | AccountCommand::List { .. } => {}
    }
    block_on(async move {
        let client = args.conn.client()?;
        match args.command {
            AccountCommand::Add {
                pool,
                account,
                flags,
                replace,
            } => add(&client, &pool, &account, &flags, replace).await,
            AccountCommand::Mod {
                pool,
                account,
                flags,
                reset_balance,
            } => {
                let req = adm::ModAccountRequest {
                    pool_id: pool.clone(),
                    account_id: account.clone(),
                    charge_rate: flags.rates()?.unwrap_or_default(),
                    max_charge_seconds: flags.charge_time,
                    max_fanout: flags.fanout,
                    disable_free_tasks: flags.disable_free_tasks,
                    reset_balance,
                    description: flags.description.clone(),
                    per_label_task_limits: flags.limits()?,
                };
                client
                    .mod_account(
                        &format!("changing account {account:?} of pool {pool:?}"),
                        req,
                    )
                    .await?;
                println!("Modified account {account} of pool {pool}.");
                Ok(())
            }
            AccountCommand::Delete { pool, account } => {
                // The API deletes a missing account without complaint; a
                // typo deserves an error.
                let accounts = list(&client, &pool).await?;
                if !accounts.contains_key(&account) {
                    bail!("pool {pool:?} has no account {account:?}");
                }
                client
                    .delete_account(
                        &format!("deleting account {account:?} of pool {pool:?}"),
                        adm::DeleteAccountRequest {
                            pool_id: pool.clone(),
                            account_id: account.clone(),
                        },
                    )
                    .await?;
                println!("Deleted account {account} of pool {pool}.");
                Ok(())
            }
            AccountCommand::List { pool, output } => {
                let resp = client
                    .list_accounts(
                        &format!("listing the accounts of pool {pool:?}"),
                        adm::ListAccountsRequest {
                            pool_id: pool.clone(),
                        },
                    )
                    .await?;
                if output.is_document() {
                    print!("{}", output.document(&resp)?);
                } else {
                    print!("{}", accounts_table(&resp.accounts));
                }
                Ok(())
            }
        }
    })?
}

async fn list(
    client: &Client,
    pool: &str,
) -> anyhow::Result<BTreeMap<String, protos::AccountConfig>> {
    Ok(client
        .list_accounts(
            &format!("listing the accounts of pool {pool:?}"),
            adm::ListAccountsRequest {
                pool_id: pool.to_string(),
            },
        )
        .await?
        .accounts)
}

async fn add(
    client: &Client,
    pool: &str,
    account: &str,
    flags: &AccountFlags,
    replace: bool,
) -> anyhow::Result<()> {
    if !replace && list(client, pool).await?.contains_key(account) {
        bail!(
            "pool {pool:?} already has an account {account:?}; `qscheduler account mod` \
             changes it and keeps its balance, `account add --replace` replaces it and zeroes \
             its balance"
        );
    }
    let config = protos::AccountConfig {
        charge_rate: flags.rates()?.unwrap_or_default(),
        max_charge_seconds: flags.charge_time.unwrap_or(0.0),
        max_fanout: flags.fanout.unwrap_or(0),
        disable_free_tasks: flags.disable_free_tasks.unwrap_or(false),
        description: flags.description.clone().unwrap_or_default(),
        per_label_task_limits: flags.limits()?,
    };
    client
        .create_account(
            &format!("adding account {account:?} to pool {pool:?}"),
            adm::CreateAccountRequest {
                pool_id: pool.to_string(),
                account_id: account.to_string(),
                config: Some(config),
            },
        )
        .await?;
    if replace {
        println!("Added account {account} to pool {pool} (replacing any previous one).");
    } else {
        println!("Added account {account} to pool {pool}.");
    }
    Ok(())
}

/// `k1=v1,k2=v2`, the syntax `--per-label-limit` takes; `-` for none.
pub fn limits_text(limits: &BTreeMap<String, i32>) -> String {
    if limits.is_empty() {
        return "-".into();
    }
    limits
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Rates as given: exact shortest decimals, so 0.05 does not show as 0.1.
pub fn rate_cells(rates: &[f32]) -> Vec<String> {
    (0..NUM_PRIORITIES)
        .map(|p| rates.get(p).copied().unwrap_or(0.0).to_string())
        .collect()
}

fn accounts_table(accounts: &BTreeMap<String, protos::AccountConfig>) -> String {
    let mut t = Table::new(&[
        "Account",
        "P0",
        "P1",
        "P2",
        "P3",
        "P4",
        "ChargeTime(s)",
        "Fanout",
        "FreeTasks",
        "PerLabelLimits",
        "Description",
    ]);
    for (id, c) in accounts {
        let mut row = vec![id.clone()];
        row.extend(rate_cells(&c.charge_rate));
        row.push(c.max_charge_seconds.to_string());
        row.push(if c.max_fanout == 0 {
            "unlimited".into()
        } else {
            c.max_fanout.to_string()
        });
        row.push(if c.disable_free_tasks { "no" } else { "yes" }.into());
        row.push(limits_text(&c.per_label_task_limits));
        row.push(c.description.clone());
        t.row(row);
    }
    let mut out = String::from("Charge rates P0..P4 in bot-seconds per second\n");
    out.push_str(&t.render());
    if accounts.is_empty() {
        out.push_str("(no accounts)\n");
    }
    out
}
