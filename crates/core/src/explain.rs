//! Why a task waits, and when it may run.
//!
//! [`explain`] reads a [`Pool`] and answers the question every user of a
//! quota scheduler asks: what state the task is in, at which level its
//! account places it and why, which bots could run it, what blocks it now
//! (each blocker a [`Reason`] with its numbers), where it stands among the
//! tasks competing for the same bots, and an [`Eta`] with the method and
//! inputs used, or "unknown" with the reason.
//!
//! It is a pure read: it never changes the pool, and it answers for the
//! *next* pass (levels computed from the balances now, as the pass will).
//! The one thing not to break: the cost stays one step per queued request
//! and per matching bot, never a sort of the queue, because the server
//! calls it on pools of a million tasks. The reasons and the ETA method are
//! documented for users in the project's `docs/explain.md`.

use crate::account::{AccountConfig, Balance, FREE_PRIORITY, NUM_PRIORITIES};
use crate::pool::Pool;
use crate::scheduler::Standing;
use crate::time::Time;

/// Where a task is.
#[derive(Clone, Debug, PartialEq)]
pub enum TaskState {
    /// Waiting in the queue.
    Queued,
    /// Given to a bot that has not yet reported running it.
    AssignedAwaitingPickup {
        /// The bot.
        bot: String,
        /// When the pass decided it.
        since: Time,
    },
    /// Running on a bot.
    Running {
        /// The bot.
        bot: String,
        /// The level it runs at.
        level: u8,
    },
    /// The pool does not know the task (finished, never notified, or
    /// forgotten).
    Unknown,
}

impl TaskState {
    /// A stable machine-readable name.
    pub fn code(&self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::AssignedAwaitingPickup { .. } => "assigned_awaiting_pickup",
            TaskState::Running { .. } => "running",
            TaskState::Unknown => "unknown",
        }
    }
}

/// The account's level and what decides it.
#[derive(Clone, Debug, PartialEq)]
pub struct LevelWhy {
    /// Account id ("" for none).
    pub account: String,
    /// The account's configuration, if it is configured (an unconfigured
    /// account always sits at the free level).
    pub config: Option<AccountConfig>,
    /// Its balance per paid level, if configured.
    pub balance: Option<Balance>,
    /// Its tasks running per level (0..=5).
    pub running_by_level: [u32; NUM_PRIORITIES + 1],
    /// The level the task takes at the next pass; `None` when it sits the
    /// pass out (free level with free tasks disabled).
    pub level: Option<u8>,
    /// The task's fanout group has reached the account's `max_fanout`, which
    /// puts it at the free level.
    pub fanout_throttled: bool,
    /// A level change that the balances alone will bring, if any.
    pub pending_change: Option<LevelChange>,
}

/// A promotion or demotion the account's balance is heading for.
#[derive(Clone, Debug, PartialEq)]
pub struct LevelChange {
    /// The level the account will move to.
    pub to: u8,
    /// In how many seconds, at today's charge rates and running counts.
    pub in_secs: f64,
}

/// How many bots have the task's labels.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BotCounts {
    /// Bots with its base labels.
    pub matching: u64,
    /// Of those, idle.
    pub idle: u64,
    /// Of those, busy.
    pub busy: u64,
    /// Bots with its base and provisionable labels.
    pub provisioned: u64,
    /// Of those, idle.
    pub provisioned_idle: u64,
}

/// Something that keeps a task from running now.
#[derive(Clone, Debug, PartialEq)]
pub enum Reason {
    /// No bot in the pool has the task's base labels.
    NoMatchingBot {
        /// The base labels no bot has.
        base_labels: Vec<String>,
    },
    /// Every bot that could run it is busy.
    MatchingBotsBusy {
        /// Busy matching bots.
        busy: u64,
    },
    /// Its account's fanout limit for tasks with these labels is reached,
    /// which puts it at the free level.
    FanoutLimit {
        /// `max_fanout`.
        limit: u32,
        /// Running tasks of its group.
        running: u32,
    },
    /// Every idle matching bot carries a label whose per-label limit its
    /// account has reached.
    PerLabelLimit {
        /// The limit's key (a label prefix).
        key: String,
        /// The bot label it applies to.
        label: String,
        /// Tasks of the account running on bots with that label.
        running: u32,
        /// The limit.
        limit: u32,
    },
    /// Competing tasks come before it in the next pass.
    QueuedAhead {
        /// At a better level.
        better_level: u64,
        /// At its level, earlier in the order (examined time, enqueue time,
        /// id).
        same_level_earlier: u64,
    },
    /// Its account is at the free level and disables free tasks: it sits
    /// out every pass until its balance turns positive.
    FreeTasksDisabled,
    /// It is at the free level: it runs only on idle bots and never
    /// preempts.
    FreeLevel,
    /// Preemption is off for the pool, and every matching bot is busy.
    PreemptionDisabled,
    /// No busy matching bot runs a task it could preempt: a worse level and
    /// a cost below its account's balance.
    NoCheaperTaskToPreempt {
        /// Busy matching bots running at a worse level than the task's.
        worse_level: u64,
        /// Of those, with a cost its balance could take over.
        cheaper: u64,
    },
    /// Swarming reported an error for the task; it will be cancelled.
    TaskError {
        /// The message.
        message: String,
    },
}

impl Reason {
    /// A stable machine-readable name.
    pub fn code(&self) -> &'static str {
        match self {
            Reason::NoMatchingBot { .. } => "no_matching_bot",
            Reason::MatchingBotsBusy { .. } => "matching_bots_busy",
            Reason::FanoutLimit { .. } => "fanout_limit",
            Reason::PerLabelLimit { .. } => "per_label_limit",
            Reason::QueuedAhead { .. } => "queued_ahead",
            Reason::FreeTasksDisabled => "free_tasks_disabled",
            Reason::FreeLevel => "free_level",
            Reason::PreemptionDisabled => "preemption_disabled",
            Reason::NoCheaperTaskToPreempt { .. } => "no_cheaper_task_to_preempt",
            Reason::TaskError { .. } => "task_error",
        }
    }

    /// The reason's numbers, by name, for machine readers.
    pub fn numbers(&self) -> Vec<(&'static str, f64)> {
        match self {
            Reason::MatchingBotsBusy { busy } => vec![("busy", *busy as f64)],
            Reason::FanoutLimit { limit, running } => {
                vec![
                    ("limit", f64::from(*limit)),
                    ("running", f64::from(*running)),
                ]
            }
            Reason::PerLabelLimit { running, limit, .. } => {
                vec![
                    ("limit", f64::from(*limit)),
                    ("running", f64::from(*running)),
                ]
            }
            Reason::QueuedAhead {
                better_level,
                same_level_earlier,
            } => vec![
                ("better_level", *better_level as f64),
                ("same_level_earlier", *same_level_earlier as f64),
            ],
            Reason::NoCheaperTaskToPreempt {
                worse_level,
                cheaper,
            } => vec![
                ("worse_level", *worse_level as f64),
                ("cheaper", *cheaper as f64),
            ],
            _ => Vec::new(),
        }
    }

    /// One sentence for a person.
    pub fn message(&self) -> String {
        match self {
            Reason::NoMatchingBot { base_labels } => format!(
                "no bot in the pool has all of its base labels ({})",
                base_labels.join(", ")
            ),
            Reason::MatchingBotsBusy { busy } => {
                format!("all {busy} bots with its labels are busy")
            }
            Reason::FanoutLimit { limit, running } => format!(
                "its account's fanout limit of {limit} for these labels is reached ({running} running), so it waits at the free level"
            ),
            Reason::PerLabelLimit {
                key,
                label,
                running,
                limit,
            } => format!(
                "its account runs {running} tasks on bots labelled {label}, the limit for {key} is {limit}"
            ),
            Reason::QueuedAhead {
                better_level,
                same_level_earlier,
            } => format!(
                "{} competing tasks come first: {better_level} at a better level, {same_level_earlier} earlier at its level",
                better_level + same_level_earlier
            ),
            Reason::FreeTasksDisabled => "its account has no positive balance and disables free tasks, so it sits out every pass until the balance recharges".into(),
            Reason::FreeLevel => "it is at the free level: it runs only on idle bots and cannot preempt".into(),
            Reason::PreemptionDisabled => "preemption is disabled for the pool".into(),
            Reason::NoCheaperTaskToPreempt { worse_level, cheaper } => format!(
                "no running task it could preempt ({worse_level} run at a worse level, {cheaper} of them cheaper than its balance)"
            ),
            Reason::TaskError { message } => format!("Swarming reported an error: {message}"),
        }
    }
}

/// Recent turnover of the pool, which the caller measures (the core keeps
/// no history): tasks completed over a window, and the bots it had.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Turnover {
    /// Length of the window, seconds.
    pub window_secs: f64,
    /// Tasks that finished in the window.
    pub completions: u64,
}

/// An estimate of when the task starts.
#[derive(Clone, Debug, PartialEq)]
pub enum Eta {
    /// Seconds from now, how they were computed, and the inputs.
    Known {
        /// Seconds from the pool's time.
        secs: f64,
        /// The method's name (see [`Eta::method`]).
        method: &'static str,
        /// The inputs, by name.
        inputs: Vec<(&'static str, f64)>,
    },
    /// No estimate, and why.
    Unknown {
        /// Why.
        why: String,
    },
}

/// Everything [`explain`] says about a task.
#[derive(Clone, Debug, PartialEq)]
pub struct Explanation {
    /// The task.
    pub task_id: String,
    /// The pool's clock.
    pub now: Time,
    /// Where it is.
    pub state: TaskState,
    /// Its level and why (absent for unknown tasks).
    pub level: Option<LevelWhy>,
    /// Bots with its labels.
    pub bots: BotCounts,
    /// What blocks it now, most fundamental first.
    pub reasons: Vec<Reason>,
    /// Its standing among competing queued tasks (queued tasks only).
    pub standing: Option<Standing>,
    /// Its position among competitors (1 = next), queued tasks only.
    pub position: Option<u64>,
    /// When it may start.
    pub eta: Eta,
}

/// Idle bots examined for per-label limits: enough to tell whether the
/// limit blocks the task, bounded so an explanation stays cheap.
const LABEL_LIMIT_BOTS: usize = 64;

/// Explains task `task_id` of `pool`; `turnover` is the pool's recent
/// throughput, if the caller measured it.
pub fn explain(pool: &Pool, task_id: &str, turnover: Option<Turnover>) -> Explanation {
    let s = pool.scheduler();
    let now = s.now();
    let Some(probe) = s.probe_task(task_id) else {
        return Explanation {
            task_id: task_id.to_owned(),
            now,
            state: TaskState::Unknown,
            level: None,
            bots: BotCounts::default(),
            reasons: Vec::new(),
            standing: None,
            position: None,
            eta: Eta::Unknown {
                why: "the pool does not know the task: it has finished, was never notified, or was forgotten".into(),
            },
        };
    };
    let account = probe.request.account.to_owned();
    let base_labels: Vec<String> = probe
        .request
        .base_labels
        .iter()
        .map(|l| l.to_string())
        .collect();

    let state = match probe.running {
        Some((bot, level)) => {
            match pool
                .reconciler()
                .pending()
                .get(bot)
                .filter(|p| &*p.task_to_assign == task_id)
            {
                Some(p) => TaskState::AssignedAwaitingPickup {
                    bot: bot.to_owned(),
                    since: p.enqueue_time,
                },
                None => TaskState::Running {
                    bot: bot.to_owned(),
                    level,
                },
            }
        }
        None => TaskState::Queued,
    };

    let config = s.account_config(&account).cloned();
    let balance = s.balance(&account);
    let running_by_level = s.running_by_level(&account);
    let next = s.next_level(task_id).flatten();
    let fanout_throttled = match (&config, probe.fanout_group) {
        (Some(c), Some((running, _))) => c.max_fanout > 0 && running >= c.max_fanout as u32,
        _ => false,
    };
    let pending_change = match (&config, &balance) {
        (Some(c), Some(b)) => level_change(c, b, &running_by_level),
        _ => None,
    };
    let level = LevelWhy {
        account: account.clone(),
        config: config.clone(),
        balance,
        running_by_level,
        level: next,
        fanout_throttled,
        pending_change,
    };

    let bots = s.bots_for_task(task_id).unwrap_or_default();
    let mut counts = BotCounts {
        matching: bots.len() as u64,
        ..Default::default()
    };
    for b in &bots {
        let idle = b.running.is_none();
        counts.idle += u64::from(idle);
        counts.busy += u64::from(!idle);
        counts.provisioned += u64::from(b.provisioned);
        counts.provisioned_idle += u64::from(b.provisioned && idle);
    }

    let mut reasons = Vec::new();
    if let Some(message) = pool.reconciler().task_errors().get(task_id) {
        reasons.push(Reason::TaskError {
            message: message.clone(),
        });
    }
    let queued = state == TaskState::Queued;
    let standing = if queued { s.standing(task_id) } else { None };
    let mut eta = Eta::Known {
        secs: 0.0,
        method: "already_started",
        inputs: Vec::new(),
    };
    if queued {
        if bots.is_empty() {
            reasons.push(Reason::NoMatchingBot {
                base_labels: base_labels.clone(),
            });
        }
        if fanout_throttled && let (Some(c), Some((running, _))) = (&config, probe.fanout_group) {
            reasons.push(Reason::FanoutLimit {
                limit: c.max_fanout as u32,
                running,
            });
        }
        if next.is_none() {
            reasons.push(Reason::FreeTasksDisabled);
        } else if next == Some(FREE_PRIORITY) {
            reasons.push(Reason::FreeLevel);
        }
        // Per-label limits: blocking only if every idle matching bot (of
        // those examined) is over a limit.
        if let Some(c) = &config
            && !c.per_label_task_limits.is_empty()
            && counts.idle > 0
        {
            let mut blocked = None;
            let mut all_blocked = true;
            for b in bots
                .iter()
                .filter(|b| b.running.is_none())
                .take(LABEL_LIMIT_BOTS)
            {
                let usage = s.label_limit_usage(task_id, b.id).unwrap_or_default();
                let hit = usage.into_iter().find(|(key, _, running)| {
                    c.per_label_task_limits
                        .get(key)
                        .is_some_and(|&limit| *running >= limit.max(0) as u32)
                });
                match hit {
                    Some(h) => {
                        blocked.get_or_insert(h);
                    }
                    None => {
                        all_blocked = false;
                        break;
                    }
                }
            }
            if all_blocked && let Some((key, label, running)) = blocked {
                let limit = c
                    .per_label_task_limits
                    .get(&key)
                    .copied()
                    .unwrap_or(0)
                    .max(0) as u32;
                reasons.push(Reason::PerLabelLimit {
                    key,
                    label,
                    running,
                    limit,
                });
            }
        }
        if let Some(st) = &standing
            && st.ahead_better_level + st.ahead_same_level > 0
        {
            reasons.push(Reason::QueuedAhead {
                better_level: st.ahead_better_level,
                same_level_earlier: st.ahead_same_level,
            });
        }
        if !bots.is_empty() && counts.idle == 0 {
            reasons.push(Reason::MatchingBotsBusy { busy: counts.busy });
            if let Some(p) = next.filter(|&p| p < FREE_PRIORITY) {
                if s.settings().disable_preemption {
                    reasons.push(Reason::PreemptionDisabled);
                } else {
                    let my_balance = balance.unwrap_or(Balance::ZERO);
                    let worse: Vec<_> = bots
                        .iter()
                        .filter_map(|b| b.running)
                        .filter(|&(_, _, level, _)| level > p)
                        .collect();
                    let cheaper = worse
                        .iter()
                        .filter(|&&(_, acc, _, cost)| acc != account && cost.lex_less(&my_balance))
                        .count() as u64;
                    if cheaper == 0 {
                        reasons.push(Reason::NoCheaperTaskToPreempt {
                            worse_level: worse.len() as u64,
                            cheaper,
                        });
                    }
                }
            }
        }
        eta = estimate(
            &level,
            &counts,
            standing.as_ref(),
            &reasons,
            turnover,
            s.workers_len(),
        );
    }
    let position = standing
        .as_ref()
        .map(|st| st.ahead_better_level + st.ahead_same_level + 1);
    Explanation {
        task_id: task_id.to_owned(),
        now,
        state,
        level: Some(level),
        bots: counts,
        reasons,
        standing,
        position,
        eta,
    }
}

/// The next level change the balance alone brings: a promotion when a
/// better level's balance recharges past zero, or a demotion when the
/// current level's balance is spent (reference §6.4 rates, ignoring caps
/// that are not yet reached).
fn level_change(
    c: &AccountConfig,
    b: &Balance,
    running: &[u32; NUM_PRIORITIES + 1],
) -> Option<LevelChange> {
    let p = b.best_priority();
    let mut best: Option<LevelChange> = None;
    // Indexes three arrays by level.
    #[allow(clippy::needless_range_loop)]
    for q in 0..usize::from(p).min(NUM_PRIORITIES) {
        let net = f64::from(c.charge_rate[q]) - f64::from(running[q]);
        let cap = f64::from(c.charge_rate[q]) * f64::from(c.max_charge_seconds);
        if net > 0.0 && cap > 0.0 {
            let secs = -f64::from(b.0[q]) / net;
            if best.as_ref().is_none_or(|x| secs < x.in_secs) {
                best = Some(LevelChange {
                    to: q as u8,
                    in_secs: secs.max(0.0),
                });
            }
        }
    }
    if best.is_none() && usize::from(p) < NUM_PRIORITIES {
        let q = usize::from(p);
        let net = f64::from(c.charge_rate[q]) - f64::from(running[q]);
        if net < 0.0 {
            let next = b.0[q + 1..]
                .iter()
                .position(|&v| v > 0.0)
                .map_or(FREE_PRIORITY, |i| (q + 1 + i) as u8);
            best = Some(LevelChange {
                to: next,
                in_secs: f64::from(b.0[q]) / -net,
            });
        }
    }
    best
}

/// The ETA from the explanation so far (see the module docs of the
/// project's `docs/explain.md` for the method).
fn estimate(
    level: &LevelWhy,
    bots: &BotCounts,
    standing: Option<&Standing>,
    reasons: &[Reason],
    turnover: Option<Turnover>,
    total_bots: usize,
) -> Eta {
    let unknown = |why: &str| Eta::Unknown { why: why.into() };
    if bots.matching == 0 {
        return unknown("no bot has its base labels");
    }
    if reasons
        .iter()
        .any(|r| matches!(r, Reason::TaskError { .. }))
    {
        return unknown("Swarming reported an error for the task");
    }
    if reasons
        .iter()
        .any(|r| matches!(r, Reason::PerLabelLimit { .. }))
    {
        return unknown(
            "a per-label limit blocks it until one of its account's tasks on that label ends",
        );
    }
    let ahead = standing.map_or(0, |s| s.ahead_better_level + s.ahead_same_level);
    if level.level.is_none() {
        // Sits out until a level's balance turns positive.
        return match &level.pending_change {
            Some(ch) if ch.to < FREE_PRIORITY => Eta::Known {
                secs: ch.in_secs,
                method: "recharge",
                inputs: vec![
                    ("to_level", f64::from(ch.to)),
                    ("recharge_secs", ch.in_secs),
                ],
            },
            _ => unknown("its account sits out at the free level and no balance recharges"),
        };
    }
    if bots.idle > ahead {
        return Eta::Known {
            secs: 0.0,
            method: "next_pass",
            inputs: vec![
                ("idle_matching_bots", bots.idle as f64),
                ("ahead", ahead as f64),
            ],
        };
    }
    let Some(t) = turnover.filter(|t| t.window_secs > 0.0) else {
        return unknown("no turnover measured for the pool");
    };
    if t.completions == 0 || total_bots == 0 {
        return unknown("no task finished in the window");
    }
    // The pool's completion rate, scaled to the bots that can run the task.
    let rate = t.completions as f64 / t.window_secs * bots.matching as f64 / total_bots as f64;
    let waiting = (ahead + 1).saturating_sub(bots.idle) as f64;
    Eta::Known {
        secs: waiting / rate,
        method: "turnover",
        inputs: vec![
            ("ahead", ahead as f64),
            ("idle_matching_bots", bots.idle as f64),
            ("matching_bots", bots.matching as f64),
            ("pool_bots", total_bots as f64),
            ("completions", t.completions as f64),
            ("window_secs", t.window_secs),
        ],
    }
}

#[cfg(test)]
mod tests;
