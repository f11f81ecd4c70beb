//! The reconciler: Swarming's per-bot pull model on top of the global pass
//! (reference §7).
//!
//! Swarming asks "what should this bot run?" one bot at a time, while the
//! scheduler decides for the whole pool at once and may pick bots that are
//! not asking right now. The reconciler remembers, per bot, the one decision
//! Swarming has not yet acknowledged, hands it out when that bot asks,
//! withdraws it if the bot does not come within ten minutes, and keeps the
//! errors of tasks the scheduler cannot handle until Swarming cancels them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::event::AssignmentKind;
use crate::scheduler::Scheduler;
use crate::time::{Time, WORKER_QUEUE_TIMEOUT_NANOS};

/// The assignment a bot has not yet acknowledged (`protos.WorkerQueue`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingAssignment {
    /// Scheduler time of the pass that decided it.
    pub enqueue_time: Time,
    /// The task the bot should run.
    pub task_to_assign: Arc<str>,
    /// The task the bot should stop (a preemption), if any.
    pub task_to_abort: Option<Arc<str>>,
}

/// An idle bot as it asked for work.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdleBot {
    /// Bot id (non-empty).
    pub id: String,
    /// The bot's labels (dimensions) as sent in this call.
    pub labels: Vec<String>,
}

/// What a bot should run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BotAssignment {
    /// The bot.
    pub bot_id: Arc<str>,
    /// The task.
    pub task_id: Arc<str>,
    /// The bot (as it described itself in this call) lacks some of the
    /// task's provisionable labels: Swarming should use the task's second
    /// slice.
    pub provision_required: bool,
}

/// Why Swarming should stop a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelReason {
    /// A higher-priority task took its bot.
    Preempted,
    /// The scheduler cannot handle the task.
    Error,
}

/// A task Swarming should cancel (`Cancellation`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cancellation {
    /// The bot to kill it on; `None` for errors (cancel wherever it is).
    pub bot_id: Option<Arc<str>>,
    /// The task.
    pub task_id: Arc<str>,
    /// Why.
    pub reason: CancelReason,
    /// The error message, for errors.
    pub extra_info: String,
}

/// Pending assignments and task errors of one pool.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reconciler {
    pub(crate) pending: BTreeMap<Arc<str>, PendingAssignment>,
    /// (enqueue time, bot) of every pending assignment, for timeouts.
    by_time: BTreeSet<(Time, Arc<str>)>,
    /// Task to abort → bots whose pending assignment aborts it.
    by_abort: BTreeMap<Arc<str>, BTreeSet<Arc<str>>>,
    pub(crate) task_errors: BTreeMap<Arc<str>, String>,
}

impl Reconciler {
    /// Pending assignments by bot id.
    pub fn pending(&self) -> &BTreeMap<Arc<str>, PendingAssignment> {
        &self.pending
    }

    /// Task errors by task id.
    pub fn task_errors(&self) -> &BTreeMap<Arc<str>, String> {
        &self.task_errors
    }

    pub(crate) fn set_pending(&mut self, bot: Arc<str>, p: PendingAssignment) {
        self.remove_pending(&bot);
        self.by_time.insert((p.enqueue_time, bot.clone()));
        if let Some(abort) = &p.task_to_abort {
            self.by_abort
                .entry(abort.clone())
                .or_default()
                .insert(bot.clone());
        }
        self.pending.insert(bot, p);
    }

    fn remove_pending(&mut self, bot: &str) -> Option<PendingAssignment> {
        let (bot, p) = self.pending.remove_entry(bot)?;
        self.by_time.remove(&(p.enqueue_time, bot.clone()));
        if let Some(abort) = &p.task_to_abort
            && let Some(set) = self.by_abort.get_mut(abort)
        {
            set.remove(&bot);
            if set.is_empty() {
                self.by_abort.remove(abort);
            }
        }
        Some(p)
    }

    /// One AssignTasks batch at time `t` (reference §7.3): withdraw stale
    /// assignments, advance time, mark the bots idle, run a pass, and return
    /// for each bot (in order, duplicates included) its pending assignment.
    pub fn assign_tasks(
        &mut self,
        s: &mut Scheduler,
        t: Time,
        bots: &[IdleBot],
    ) -> Vec<Option<BotAssignment>> {
        self.expire(s, t);
        s.update_time(t);
        for bot in bots {
            let consistent = self
                .pending
                .get(bot.id.as_str())
                .is_some_and(|p| s.is_assigned(&p.task_to_assign, &bot.id));
            if !consistent {
                s.mark_idle(&bot.id, &bot.labels, t);
                self.remove_pending(&bot.id);
            }
        }
        for a in s.run_once() {
            let task_to_abort = match a.kind {
                AssignmentKind::Idle => None,
                AssignmentKind::Preempt { task_to_abort } => Some(task_to_abort),
            };
            self.set_pending(
                a.worker_id,
                PendingAssignment {
                    enqueue_time: a.time,
                    task_to_assign: a.request_id,
                    task_to_abort,
                },
            );
        }
        bots.iter().map(|bot| self.yield_to(s, bot)).collect()
    }

    /// The pending assignment for a bot that is asking for work. The bot is
    /// evidently idle, so a preemption it carries has nothing left to abort.
    fn yield_to(&mut self, s: &Scheduler, bot: &IdleBot) -> Option<BotAssignment> {
        let p = self.pending.get(bot.id.as_str())?.clone();
        if p.task_to_abort.is_some() {
            let (bot_id, _) = self.pending.get_key_value(bot.id.as_str())?;
            let bot_id = bot_id.clone();
            self.set_pending(
                bot_id,
                PendingAssignment {
                    task_to_abort: None,
                    ..p.clone()
                },
            );
        }
        let prov = s.provisionable_labels(&p.task_to_assign)?;
        let provision_required = !prov.iter().all(|l| bot.labels.iter().any(|b| **b == **l));
        Some(BotAssignment {
            bot_id: Arc::from(bot.id.as_str()),
            task_id: p.task_to_assign,
            provision_required,
        })
    }

    /// Withdraws every pending assignment at least ten minutes old
    /// (reference §7.4), oldest first.
    fn expire(&mut self, s: &mut Scheduler, t: Time) {
        while let Some((enq, bot)) = self.by_time.first().cloned() {
            if t.nanos_since(enq) < WORKER_QUEUE_TIMEOUT_NANOS {
                break;
            }
            if let Some(p) = self.remove_pending(&bot) {
                // "Not on worker" only means state moved on; nothing to undo.
                let _ = s.unassign(&p.task_to_assign, &bot, t);
            }
        }
    }

    /// A running notification (reference §7.5).
    pub fn notify_running(&mut self, s: &mut Scheduler, request: &str, worker: &str, t: Time) {
        s.notify_running(request, worker, t);
        if self
            .pending
            .get(worker)
            .is_some_and(|p| t >= p.enqueue_time)
        {
            self.remove_pending(worker);
        }
    }

    /// An absent notification (reference §7.6).
    pub fn notify_absent(&mut self, s: &mut Scheduler, request: &str, t: Time) {
        s.notify_absent(request, t);
        if let Some(bots) = self.by_abort.get(request).cloned() {
            for bot in bots {
                if self.pending.get(&bot).is_some_and(|p| p.enqueue_time < t) {
                    self.remove_pending(&bot);
                }
            }
        }
        self.task_errors.remove(request);
    }

    /// Records that the scheduler cannot handle a task.
    pub fn add_task_error(&mut self, task: &str, message: String) {
        self.task_errors.insert(Arc::from(task), message);
    }

    /// Tasks Swarming should cancel: preempted tasks (by bot id), then task
    /// errors (by task id).
    pub fn cancellations(&self) -> Vec<Cancellation> {
        let mut out: Vec<Cancellation> = self
            .pending
            .iter()
            .filter_map(|(bot, p)| {
                p.task_to_abort.as_ref().map(|abort| Cancellation {
                    bot_id: Some(bot.clone()),
                    task_id: abort.clone(),
                    reason: CancelReason::Preempted,
                    extra_info: String::new(),
                })
            })
            .collect();
        out.extend(self.task_errors.iter().map(|(task, msg)| Cancellation {
            bot_id: None,
            task_id: task.clone(),
            reason: CancelReason::Error,
            extra_info: msg.clone(),
        }));
        out
    }
}
