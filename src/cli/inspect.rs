//! `qscheduler inspect POOL`: a summary, or the original tool's views of
//! accounts, idle bots and tasks, or the whole `InspectPool` response as
//! JSON.
//!
//! The pool is read page by page (`InspectPool`'s `page_size` and
//! `page_token`) and the pages are joined into the one response an unpaged
//! call gives, so every view prints the same as before; a large pool no
//! longer needs one response (and one server allocation) holding all of
//! it. A server without paging ignores the fields and answers everything
//! in the first page.

use std::collections::{BTreeMap, HashSet};

use clap::Args;
use qscheduler_core::NUM_PRIORITIES;
use qscheduler_wire::qscheduler as adm;

use super::account::rate_cells;
use super::table::Table;
use super::values::parse_pool_id;
use super::{Conn, OutputArg, block_on};

/// Arguments of `qscheduler inspect`.
#[derive(Args, Debug)]
#[command(after_help = "\
Without a view flag, prints a summary: task and bot counts and, per account, \
its running and waiting tasks and its balance. View flags may be combined.

Balances are in bot-seconds, as of the pool's last scheduling pass. Ages are \
seconds since Swarming last confirmed the task or bot. Priorities are 0 (best) \
to 4, and 5 for the free level.")]
pub struct InspectArgs {
    #[command(flatten)]
    conn: Conn,
    /// The pool id.
    #[arg(value_name = "POOL", value_parser = parse_pool_id)]
    pool: String,
    /// Accounts: descriptions, balances, charge rates and policies.
    #[arg(long)]
    accounts: bool,
    /// Idle bots, with their dimensions one per line.
    #[arg(long)]
    bots: bool,
    /// Running and waiting tasks.
    #[arg(long)]
    tasks: bool,
    /// Tasks and bots asked for per call; the pool is read in as many calls
    /// as it takes. Each call walks the whole pool on the server, so larger
    /// pages cost the server less in all; 0 asks for everything in one
    /// call.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_PAGE_SIZE,
          value_parser = clap::value_parser!(u32).range(0..=i32::MAX as i64))]
    page_size: u32,
    #[command(flatten)]
    output: OutputArg,
}

/// Entries per InspectPool call by default: a page of idle bots with a few
/// dozen dimensions each stays within a few MiB.
const DEFAULT_PAGE_SIZE: u32 = 5000;

/// Runs `qscheduler inspect`.
pub fn run(args: InspectArgs) -> anyhow::Result<()> {
    if args.output.is_document() && (args.accounts || args.bots || args.tasks) {
        super::usage!(
            "--output json and yaml print the whole response; they cannot be combined with \
             --accounts, --bots or --tasks"
        );
    }
    block_on(async move {
        let client = args.conn.client()?;
        let resp = inspect_all(&client, &args.pool, args.page_size).await?;
        let text = if args.output.is_document() {
            args.output.document(&resp)?
        } else {
            let mut parts = Vec::new();
            if args.accounts {
                parts.push(accounts_view(&resp));
            }
            if args.bots {
                parts.push(bots_view(&resp));
            }
            if args.tasks {
                parts.push(tasks_view(&resp));
            }
            if parts.is_empty() {
                parts.push(summary(&args.pool, &resp));
            }
            parts.concat()
        };
        print!("{text}");
        anyhow::Ok(())
    })?
}

/// Every page of the pool, joined into the response of an unpaged call.
///
/// Counts, balances, account configs and the preemption setting are in
/// every page; those of the last page (the freshest) are kept. The lists
/// are concatenated: each page continues where the previous one ended, in
/// the same order an unpaged call lists them. An entry whose position
/// changed while the pages were read (Swarming confirmed it again) may come
/// twice; it is kept once, where it came first.
async fn inspect_all(
    client: &super::Client,
    pool: &str,
    page_size: u32,
) -> anyhow::Result<adm::InspectPoolResponse> {
    let what = format!("inspecting pool {pool:?}");
    let page_size = i32::try_from(page_size).unwrap_or(i32::MAX);
    let mut token = String::new();
    let mut all: Option<adm::InspectPoolResponse> = None;
    let mut seen: [HashSet<String>; 3] = Default::default();
    loop {
        let mut page = client
            .inspect_pool(
                &what,
                adm::InspectPoolRequest {
                    pool_id: pool.to_owned(),
                    page_size,
                    page_token: token.clone(),
                },
            )
            .await?;
        let next = std::mem::take(&mut page.next_page_token);
        let [waiting, running, idle] = &mut seen;
        page.waiting_tasks.retain(|t| waiting.insert(t.id.clone()));
        page.running_tasks.retain(|t| running.insert(t.id.clone()));
        page.idle_bots.retain(|b| idle.insert(b.id.clone()));
        all = Some(match all {
            None => page,
            Some(mut all) => {
                all.waiting_tasks.append(&mut page.waiting_tasks);
                all.running_tasks.append(&mut page.running_tasks);
                all.idle_bots.append(&mut page.idle_bots);
                adm::InspectPoolResponse {
                    waiting_tasks: all.waiting_tasks,
                    running_tasks: all.running_tasks,
                    idle_bots: all.idle_bots,
                    ..page
                }
            }
        });
        if next.is_empty() {
            break;
        }
        if next == token {
            anyhow::bail!("{what}: the server gave the same page token twice");
        }
        token = next;
    }
    Ok(all.unwrap_or_default())
}

fn balance_cells(values: Option<&Vec<f32>>) -> Vec<String> {
    (0..NUM_PRIORITIES)
        .map(|p| {
            let v = values.and_then(|v| v.get(p)).copied().unwrap_or(0.0);
            format!("{v:.1}")
        })
        .collect()
}

const LEVELS: [&str; NUM_PRIORITIES] = ["P0", "P1", "P2", "P3", "P4"];

fn with_levels(first: &str) -> Vec<&str> {
    let mut h = vec![first];
    h.extend(LEVELS);
    h
}

/// Go's `fmt` rendering of a `map[string]int32`, as the original printed it.
fn go_map(m: &BTreeMap<String, i32>) -> String {
    let items: Vec<String> = m.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    format!("map[{}]", items.join(" "))
}

fn accounts_view(resp: &adm::InspectPoolResponse) -> String {
    let configs = &resp.account_configs;
    let mut desc = Table::new(&["Account", "Description"]).titled("Account Description");
    let mut bal = Table::new(&with_levels("Account")).titled("Account Balance(bot seconds)");
    let mut rates =
        Table::new(&with_levels("Account")).titled("Account Charge Rate(bot seconds per second)");
    let mut policy = Table::new(&[
        "Account",
        "MaxChargeSec",
        "MaxFanout",
        "PerLabelTaskLimits",
        "DisableFreeTasks",
    ])
    .titled("Account Policy");
    // Every account with a config or a balance, sorted by id (the maps are
    // ordered).
    let mut ids: Vec<&String> = configs.keys().chain(resp.account_balances.keys()).collect();
    ids.sort();
    ids.dedup();
    for id in ids {
        let c = configs.get(id).cloned().unwrap_or_default();
        desc.row(vec![id.clone(), c.description.clone()]);
        let mut row = vec![id.clone()];
        row.extend(balance_cells(
            resp.account_balances.get(id).map(|b| &b.value),
        ));
        bal.row(row);
        let mut row = vec![id.clone()];
        row.extend(rate_cells(&c.charge_rate));
        rates.row(row);
        policy.row(vec![
            id.clone(),
            format!("{:.1}", c.max_charge_seconds),
            c.max_fanout.to_string(),
            go_map(&c.per_label_task_limits),
            c.disable_free_tasks.to_string(),
        ]);
    }
    [desc, bal, rates, policy]
        .iter()
        .map(|t| t.render() + "\n")
        .collect()
}

fn bots_view(resp: &adm::InspectPoolResponse) -> String {
    let mut t = Table::new(&["IdleBot", "Age(Seconds)", "Dimensions"]).titled("Bot Summary");
    for bot in &resp.idle_bots {
        let mut dims = bot.dimensions.iter();
        t.row(vec![
            bot.id.clone(),
            bot.age_seconds.to_string(),
            dims.next().cloned().unwrap_or_default(),
        ]);
        for d in dims {
            t.row(vec![String::new(), String::new(), d.clone()]);
        }
    }
    t.render() + "\n"
}

fn tasks_view(resp: &adm::InspectPoolResponse) -> String {
    let mut running = Table::new(&[
        "RequestId",
        "BotId",
        "Priority",
        "AccountId",
        "Age(Seconds)",
    ])
    .titled("Running Tasks");
    let mut tasks: Vec<_> = resp.running_tasks.iter().collect();
    tasks.sort_by(|a, b| a.id.cmp(&b.id));
    for t in tasks {
        running.row(vec![
            t.id.clone(),
            t.bot_id.clone(),
            t.priority.to_string(),
            t.account_id.clone(),
            t.age_seconds.to_string(),
        ]);
    }
    let mut waiting =
        Table::new(&["RequestId", "AccountId", "Age(Seconds)"]).titled("Waiting Tasks");
    let mut tasks: Vec<_> = resp.waiting_tasks.iter().collect();
    tasks.sort_by(|a, b| a.id.cmp(&b.id));
    for t in tasks {
        waiting.row(vec![
            t.id.clone(),
            t.account_id.clone(),
            t.age_seconds.to_string(),
        ]);
    }
    running.render() + "\n" + &waiting.render() + "\n"
}

fn summary(pool: &str, resp: &adm::InspectPoolResponse) -> String {
    let mut out = format!(
        "Pool {pool}\n\
         Preemption:     {}\n\
         Waiting tasks:  {}\n\
         Running tasks:  {}\n\
         Idle bots:      {}\n\n",
        if resp.disable_preemption {
            "disabled"
        } else {
            "allowed"
        },
        resp.num_waiting_tasks,
        resp.num_running_tasks,
        resp.num_idle_bots,
    );
    // Per account: configured accounts, plus accounts that only appear on
    // tasks (unknown accounts run at the free level).
    let mut counts: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for id in resp.account_configs.keys() {
        counts.entry(id).or_default();
    }
    for t in &resp.running_tasks {
        counts.entry(&t.account_id).or_default().0 += 1;
    }
    for t in &resp.waiting_tasks {
        counts.entry(&t.account_id).or_default().1 += 1;
    }
    let mut header = vec!["Account", "Running", "Waiting"];
    header.extend(LEVELS);
    let mut t = Table::new(&header).titled("Accounts (balances in bot-seconds)");
    for (id, (running, waiting)) in &counts {
        let name = match (*id, resp.account_configs.contains_key(*id)) {
            ("", _) => "(no account)".to_string(),
            (id, true) => id.to_string(),
            (id, false) => format!("{id} (not configured)"),
        };
        let mut row = vec![name, running.to_string(), waiting.to_string()];
        if resp.account_configs.contains_key(*id) {
            row.extend(balance_cells(
                resp.account_balances.get(*id).map(|b| &b.value),
            ));
        } else {
            row.extend(std::iter::repeat_n("-".to_string(), NUM_PRIORITIES));
        }
        t.row(row);
    }
    out.push_str(&t.render());
    if counts.is_empty() {
        out.push_str("(no accounts)\n");
    }
    out
}
