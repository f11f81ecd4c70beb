//! `qscheduler explain POOL TASK`, `qscheduler report POOL` and
//! `qscheduler top POOL`: the `qscheduler.QSchedulerInsight` calls for
//! people (tables) and scripts (`-o json|yaml`, the whole response).

use std::time::Duration;

use clap::Args;
use qscheduler_core::NUM_PRIORITIES;
use qscheduler_wire::qscheduler as adm;

use super::table::Table;
use super::values::parse_pool_id;
use super::{Conn, OutputArg, block_on};

/// Arguments of `qscheduler explain`.
#[derive(Args, Debug)]
#[command(after_help = "\
Reasons carry a stable code (no_matching_bot, matching_bots_busy, fanout_limit, \
per_label_limit, queued_ahead, free_tasks_disabled, free_level, preemption_disabled, \
no_cheaper_task_to_preempt, task_error) and their numbers; see docs/explain.md. \
Levels are P0 (best) to P4, and free.")]
pub struct ExplainArgs {
    #[command(flatten)]
    conn: Conn,
    /// The pool id.
    #[arg(value_name = "POOL", value_parser = parse_pool_id)]
    pool: String,
    /// The task id.
    #[arg(value_name = "TASK", value_parser = parse_task_id)]
    task: String,
    #[command(flatten)]
    output: OutputArg,
}

/// Arguments of `qscheduler report`.
#[derive(Args, Debug)]
pub struct ReportArgs {
    #[command(flatten)]
    conn: Conn,
    /// The pool id.
    #[arg(value_name = "POOL", value_parser = parse_pool_id)]
    pool: String,
    /// The window, ending now: 90s, 30m, 1h, 7d (at most 7 days).
    #[arg(long, default_value = "24h", value_parser = parse_window)]
    window: i64,
    #[command(flatten)]
    output: OutputArg,
}

/// Arguments of `qscheduler top`.
#[derive(Args, Debug)]
pub struct TopArgs {
    #[command(flatten)]
    conn: Conn,
    /// The pool id.
    #[arg(value_name = "POOL", value_parser = parse_pool_id)]
    pool: String,
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=3600))]
    interval: u64,
    /// Stop after this many refreshes (0: until interrupted).
    #[arg(long, short = 'n', default_value_t = 0)]
    iterations: u64,
    #[command(flatten)]
    output: OutputArg,
}

fn parse_task_id(arg: &str) -> Result<String, String> {
    if arg.is_empty() {
        return Err("a task id is required".into());
    }
    if arg.len() > 1024 {
        return Err("a task id is at most 1024 bytes".into());
    }
    Ok(arg.to_string())
}

fn parse_window(arg: &str) -> Result<i64, String> {
    let secs = qscheduler_server::ui::parse_window(arg)
        .ok_or_else(|| format!("{arg:?} is not a duration such as 90s, 30m, 1h or 7d"))?;
    qscheduler_server::insight::report_window(secs)
        .map_err(|s| s.message().replace("window_seconds", "--window"))
}

fn level_name(l: i32) -> String {
    match l {
        -1 => "sits out".into(),
        5 => "free".into(),
        l => format!("P{l}"),
    }
}

fn dur(secs: f64) -> String {
    if secs < 120.0 {
        format!("{secs:.0}s")
    } else if secs < 7200.0 {
        format!("{:.1}m", secs / 60.0)
    } else {
        format!("{:.1}h", secs / 3600.0)
    }
}

/// Runs `qscheduler explain`.
pub fn explain(args: ExplainArgs) -> anyhow::Result<()> {
    block_on(async move {
        let client = args.conn.client()?;
        let e = client
            .explain_task(
                &format!("explaining task {:?} of pool {:?}", args.task, args.pool),
                adm::ExplainTaskRequest {
                    pool_id: args.pool.clone(),
                    task_id: args.task.clone(),
                },
            )
            .await?;
        let text = if args.output.is_document() {
            args.output.document(&e)?
        } else {
            explanation_text(&e)
        };
        print!("{text}");
        anyhow::Ok(())
    })?
}

/// An explanation for people.
pub fn explanation_text(e: &adm::ExplainTaskResponse) -> String {
    let mut out = format!("Task {}: {}", e.task_id, e.state.replace('_', " "));
    if !e.bot_id.is_empty() {
        out.push_str(&format!(" (bot {})", e.bot_id));
    }
    out.push('\n');
    if let Some(l) = &e.level {
        let account = if l.account_id.is_empty() {
            "(none)"
        } else {
            &l.account_id
        };
        out.push_str(&format!(
            "Account {account}{}: next pass at {}{}\n",
            if l.configured {
                ""
            } else {
                " (not configured)"
            },
            level_name(l.level),
            if l.fanout_throttled {
                " (fanout limit reached)"
            } else {
                ""
            }
        ));
        if l.configured {
            let mut t = Table::new(&["", "P0", "P1", "P2", "P3", "P4"]);
            let cells = |v: &[f32]| -> Vec<String> {
                (0..NUM_PRIORITIES)
                    .map(|p| format!("{:.1}", v.get(p).copied().unwrap_or(0.0)))
                    .collect()
            };
            let mut row = vec!["balance".to_owned()];
            row.extend(cells(&l.balance));
            t.row(row);
            let mut row = vec!["charge rate".to_owned()];
            row.extend(cells(&l.charge_rate));
            t.row(row);
            let mut row = vec!["running".to_owned()];
            row.extend(
                l.running_by_level
                    .iter()
                    .take(NUM_PRIORITIES)
                    .map(|n| n.to_string()),
            );
            t.row(row);
            out.push_str(&t.render());
            if l.change_pending {
                out.push_str(&format!(
                    "Moves to {} in {} at today's rates\n",
                    level_name(l.change_to_level),
                    dur(l.change_in_seconds)
                ));
            }
        }
    }
    if let Some(b) = &e.bots {
        out.push_str(&format!(
            "Bots with its labels: {} ({} idle, {} busy); with its provisionable labels too: {} ({} idle)\n",
            b.matching, b.idle, b.busy, b.provisioned, b.provisioned_idle
        ));
    }
    if e.reasons.is_empty() {
        out.push_str("Blocked by: nothing\n");
    } else {
        out.push_str("Blocked by:\n");
        for r in &e.reasons {
            out.push_str(&format!("  - {} [{}]\n", r.message, r.code));
        }
    }
    if let Some(s) = &e.standing {
        out.push_str(&format!(
            "Position: {} of {} competing ({} ahead at a better level, {} at its level{})\n",
            s.position,
            s.competing + 1,
            s.ahead_better_level,
            s.ahead_same_level,
            if s.estimated { ", estimated" } else { "" }
        ));
    }
    if let Some(eta) = &e.eta {
        if eta.known {
            let inputs: Vec<String> = eta.inputs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out.push_str(&format!(
                "ETA: {} (method {}; {})\n",
                dur(eta.seconds),
                eta.method,
                inputs.join(", ")
            ));
        } else {
            out.push_str(&format!("ETA: unknown ({})\n", eta.unknown_reason));
        }
    }
    out
}

/// Runs `qscheduler report`.
pub fn report(args: ReportArgs) -> anyhow::Result<()> {
    block_on(async move {
        let client = args.conn.client()?;
        let r = client
            .account_report(
                &format!("reporting on pool {:?}", args.pool),
                adm::AccountReportRequest {
                    pool_id: args.pool.clone(),
                    window_seconds: args.window,
                },
            )
            .await?;
        let text = if args.output.is_document() {
            args.output.document(&r)?
        } else {
            report_text(&r)
        };
        print!("{text}");
        anyhow::Ok(())
    })?
}

/// A report for people: one table of accounts, one of levels.
pub fn report_text(r: &adm::AccountReportResponse) -> String {
    let mut out = format!(
        "Pool {}: {} window, figures for {}; {:.0} bot-seconds used\n\n",
        r.pool_id,
        dur(r.window_seconds as f64),
        dur(r.covered_seconds),
        r.pool_used_bot_seconds
    );
    let mut t = Table::new(&[
        "Account",
        "Used(bot-s)",
        "Share",
        "Completed",
        "FreeTime",
        "Promoted",
        "Demoted",
        "Preempted",
        "Preempting",
        "Refunds",
    ])
    .titled("Accounts");
    for a in &r.accounts {
        t.row(vec![
            a.account_id.clone(),
            format!("{:.0}", a.used_bot_seconds),
            format!("{:.1}%", a.share * 100.0),
            a.tasks_completed.to_string(),
            dur(a.free_level_seconds),
            a.promotions.to_string(),
            a.demotions.to_string(),
            a.preemptions_suffered.to_string(),
            a.preemptions_caused.to_string(),
            a.refunds.to_string(),
        ]);
    }
    out.push_str(&t.render());
    out.push('\n');
    let mut t = Table::new(&[
        "Account",
        "Level",
        "Entitlement",
        "Used",
        "Share",
        "Assigned",
        "WaitP50",
        "WaitP95",
        "WaitP99",
    ])
    .titled("Levels (bot-seconds; waits from enqueue to assignment)");
    for a in &r.accounts {
        for l in &a.levels {
            let w = l.wait.unwrap_or_default();
            if l.entitlement_bot_seconds == 0.0 && l.used_bot_seconds == 0.0 && l.assigned == 0 {
                continue;
            }
            let wait = |v: f64| if w.count == 0 { "-".into() } else { dur(v) };
            t.row(vec![
                a.account_id.clone(),
                level_name(l.level),
                format!("{:.0}", l.entitlement_bot_seconds),
                format!("{:.0}", l.used_bot_seconds),
                format!("{:.1}%", l.share * 100.0),
                l.assigned.to_string(),
                wait(w.p50_seconds),
                wait(w.p95_seconds),
                wait(w.p99_seconds),
            ]);
        }
    }
    out.push_str(&t.render());
    out
}

/// Runs `qscheduler top`.
pub fn top(args: TopArgs) -> anyhow::Result<()> {
    block_on(async move {
        let client = args.conn.client()?;
        let mut n = 0u64;
        loop {
            let o = client
                .pool_overview(
                    &format!("reading pool {:?}", args.pool),
                    adm::PoolOverviewRequest {
                        pool_id: args.pool.clone(),
                    },
                )
                .await?;
            let text = if args.output.is_document() {
                args.output.document(&o)?
            } else {
                // Home and clear, as top does, unless this is the only
                // frame.
                let clear = if args.iterations == 1 {
                    ""
                } else {
                    "\x1b[H\x1b[2J"
                };
                format!("{clear}{}", top_text(&o))
            };
            print!("{text}");
            n += 1;
            if args.iterations != 0 && n >= args.iterations {
                break;
            }
            tokio::time::sleep(Duration::from_secs(args.interval)).await;
        }
        anyhow::Ok(())
    })?
}

/// One frame of `top`.
pub fn top_text(o: &adm::PoolOverviewResponse) -> String {
    let last = o.minutes.last().copied().unwrap_or_default();
    let recent: Vec<&adm::MinuteSample> = o.minutes.iter().rev().take(10).collect();
    let per_min = |f: fn(&adm::MinuteSample) -> u64| {
        if recent.is_empty() {
            0.0
        } else {
            recent.iter().map(|m| f(m)).sum::<u64>() as f64 / recent.len() as f64
        }
    };
    let mut out = format!(
        "qscheduler top - pool {} - {} queued, {} running, {} of {} bots idle, preemption {}\n\
         Last minute: {} assigned, {} completed, {} enqueued, {} preempted; \
         assignments/min (busy minutes of the last 10): {:.1}, completions/min: {:.1}\n\n",
        o.pool_id,
        o.queued,
        o.running,
        o.idle_bots,
        o.bots,
        if o.disable_preemption { "off" } else { "on" },
        last.assigned,
        last.completed,
        last.enqueued,
        last.preempted,
        per_min(|m| m.assigned),
        per_min(|m| m.completed),
    );
    let mut header = vec!["Account", "Level", "Waiting"];
    header.extend(["Run P0", "Run P1", "Run P2", "Run P3", "Run P4", "Run free"]);
    header.extend(["Bal P0", "Bal P1", "Bal P2", "Bal P3", "Bal P4"]);
    let mut t = Table::new(&header);
    for a in &o.accounts {
        let mut row = vec![
            if a.account_id.is_empty() {
                "(none)".into()
            } else {
                a.account_id.clone()
            },
            level_name(a.level),
            a.queued.to_string(),
        ];
        row.extend(
            (0..=NUM_PRIORITIES)
                .map(|p| a.running_by_level.get(p).copied().unwrap_or(0).to_string()),
        );
        row.extend((0..NUM_PRIORITIES).map(|p| {
            if a.configured {
                format!("{:.0}", a.balance.get(p).copied().unwrap_or(0.0))
            } else {
                "-".into()
            }
        }));
        t.row(row);
    }
    out.push_str(&t.render());
    out
}
