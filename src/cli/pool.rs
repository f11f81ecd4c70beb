//! `qscheduler pool create|mod|delete|wipe`.

use clap::{Args, Subcommand};
use qscheduler_wire::qscheduler as adm;

use super::table::Table;
use super::values::{parse_bool, parse_bot_expiration, parse_pool_id};
use super::{Conn, OutputArg, block_on, usage};

/// Arguments of `qscheduler pool`.
#[derive(Args, Debug)]
#[command(
    after_help = "A pool is one independent scheduler: Swarming's scheduler_id. Its accounts \
                  are managed with `qscheduler account`."
)]
pub struct PoolArgs {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    command: PoolCommand,
}

/// Pool settings that `create` and `mod` accept.
#[derive(Args, Debug)]
struct PoolSettings {
    /// Whether tasks of accounts with more quota may preempt running tasks
    /// of accounts with less ("true" or "false"). A new pool allows it.
    #[arg(long, value_name = "true|false", value_parser = parse_bool)]
    allow_preemption: Option<bool>,
    /// Forget idle bots not heard from for this many seconds. 0 means the
    /// server's default, 300 seconds, which a new pool has.
    #[arg(long, allow_hyphen_values = true, value_name = "SECONDS", value_parser = parse_bot_expiration)]
    bot_expiration: Option<i32>,
}

impl PoolSettings {
    fn is_empty(&self) -> bool {
        self.allow_preemption.is_none() && self.bot_expiration.is_none()
    }

    fn request(&self, pool: &str) -> adm::ModSchedulerPoolRequest {
        adm::ModSchedulerPoolRequest {
            pool_id: pool.to_string(),
            disable_preemption: self.allow_preemption.map(|allow| !allow),
            bot_expiration_seconds: self.bot_expiration,
        }
    }
}

#[derive(Subcommand, Debug)]
enum PoolCommand {
    /// List every pool of the server's store, and which replica serves it.
    ///
    /// With several replicas on PostgreSQL, any replica answers for all of
    /// them. A pool whose stored data could not be recovered is FAILED, with
    /// the error; one nobody holds right now is UNOWNED (it is adopted
    /// within seconds).
    List {
        #[command(flatten)]
        output: OutputArg,
    },
    /// Create a pool.
    ///
    /// A new pool has no accounts (until some are added, every task runs at
    /// the free level), allows preemption and forgets idle bots after 300 s.
    #[command(after_help = "Example: qscheduler pool create pool1 --bot-expiration 600")]
    Create {
        /// The pool id (Swarming's scheduler_id).
        #[arg(value_name = "POOL", value_parser = parse_pool_id)]
        pool: String,
        #[command(flatten)]
        settings: PoolSettings,
    },
    /// Change a pool's settings.
    ///
    /// Settings not given stay as they are.
    #[command(after_help = "Example: qscheduler pool mod pool1 --allow-preemption false")]
    Mod {
        /// The pool id.
        #[arg(value_name = "POOL", value_parser = parse_pool_id)]
        pool: String,
        #[command(flatten)]
        settings: PoolSettings,
    },
    /// Delete a pool.
    ///
    /// Its accounts, tasks and bots go with it; Swarming's calls for it then
    /// fail with NOT_FOUND.
    Delete {
        /// The pool id.
        #[arg(value_name = "POOL", value_parser = parse_pool_id)]
        pool: String,
    },
    /// Forget every task, bot and balance of a pool.
    ///
    /// Its accounts and settings stay. Swarming re-sends what is still
    /// current.
    Wipe {
        /// The pool id.
        #[arg(value_name = "POOL", value_parser = parse_pool_id)]
        pool: String,
        /// Confirms the wipe; without it nothing is done.
        #[arg(long)]
        yes_wipe_everything: bool,
    },
}

/// Runs `qscheduler pool ...`.
pub fn run(args: PoolArgs) -> anyhow::Result<()> {
    // Refusals come before any connection, so they hold even when the
    // server is down.
    match &args.command {
        PoolCommand::Mod { settings, .. } if settings.is_empty() => {
            usage!("nothing to change: give --allow-preemption and/or --bot-expiration")
        }
        PoolCommand::Wipe {
            pool,
            yes_wipe_everything: false,
        } => usage!(
            "refusing to wipe pool {pool:?} without --yes-wipe-everything: a wipe forgets \
             every task, bot and balance of the pool (its accounts and settings stay)"
        ),
        _ => {}
    }
    block_on(async move {
        let client = args.conn.client()?;
        match args.command {
            PoolCommand::List { output } => {
                let resp = client
                    .list_pools("listing pools", adm::ListPoolsRequest {})
                    .await?;
                if output.is_document() {
                    print!("{}", output.document(&resp)?);
                } else {
                    print!("{}", pools_table(&resp));
                }
            }
            PoolCommand::Create { pool, settings } => {
                client
                    .create_scheduler_pool(
                        &format!("creating pool {pool:?}"),
                        adm::CreateSchedulerPoolRequest {
                            pool_id: pool.clone(),
                            config: None,
                        },
                    )
                    .await?;
                if !settings.is_empty() {
                    client
                        .mod_scheduler_pool(
                            &format!("pool {pool:?} was created, but setting its options"),
                            settings.request(&pool),
                        )
                        .await?;
                }
                println!("Created pool {pool}.");
            }
            PoolCommand::Mod { pool, settings } => {
                client
                    .mod_scheduler_pool(&format!("changing pool {pool:?}"), settings.request(&pool))
                    .await?;
                println!("Modified pool {pool}.");
            }
            PoolCommand::Delete { pool } => {
                client
                    .delete_scheduler_pool(
                        &format!("deleting pool {pool:?}"),
                        adm::DeleteSchedulerPoolRequest {
                            pool_id: pool.clone(),
                        },
                    )
                    .await?;
                println!("Deleted pool {pool}.");
            }
            PoolCommand::Wipe { pool, .. } => {
                client
                    .wipe(
                        &format!("wiping pool {pool:?}"),
                        adm::WipeRequest {
                            pool_id: pool.clone(),
                        },
                    )
                    .await?;
                println!("Wiped pool {pool}.");
            }
        }
        Ok(())
    })?
}

/// `pool list` for people: one line per pool.
fn pools_table(resp: &adm::ListPoolsResponse) -> String {
    use adm::list_pools_response::pool::State;
    if resp.pools.is_empty() {
        return "No pools. Create one with `qscheduler pool create POOL`.\n".to_string();
    }
    let mut t = Table::new(&["POOL", "STATE", "REPLICA", "ERROR"]);
    for p in &resp.pools {
        let state = match State::try_from(p.state) {
            Ok(State::Serving) => "SERVING",
            Ok(State::Unowned) => "UNOWNED",
            Ok(State::Failed) => "FAILED",
            Ok(State::Unspecified) | Err(_) => "UNKNOWN",
        };
        t.row(vec![
            p.pool_id.clone(),
            state.to_string(),
            p.replica_id.clone(),
            p.error.clone(),
        ]);
    }
    t.render()
}
