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

    /// An absent notification (reference §7.6): the task is gone, so a
    /// cancellation of it that is older than the news is done. Unlike the
    /// original, which dropped the bot's whole pending entry (and with it
    /// the preempting task, which the bot's next poll then "completed"),
    /// only the abort is dropped: the preempting task stays assigned to the
    /// bot, which will ask for work now that its old task is gone.
    pub fn notify_absent(&mut self, s: &mut Scheduler, request: &str, t: Time) {
        s.notify_absent(request, t);
        if let Some(bots) = self.by_abort.get(request).cloned() {
            for bot in bots {
                if let Some(p) = self.pending.get(&bot)
                    && p.enqueue_time < t
                {
                    let p = PendingAssignment {
                        task_to_abort: None,
                        ..p.clone()
                    };
                    self.set_pending(bot, p);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::account::AccountConfig;
    use crate::scheduler::NewRequest;

    const T0: i64 = 1_700_000_000;

    fn t(s: i64) -> Time {
        Time::from_secs(T0 + s)
    }

    fn bot(id: &str, labels: &[&str]) -> IdleBot {
        IdleBot {
            id: id.into(),
            labels: labels.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn task(s: &mut Scheduler, id: &str, account: &str, base: &[&str], prov: &[&str], at: i64) {
        s.add_request(
            &NewRequest {
                id: id.into(),
                account: account.into(),
                base_labels: base.iter().map(|x| x.to_string()).collect(),
                provisionable_labels: prov.iter().map(|x| x.to_string()).collect(),
                enqueue_time: t(at),
            },
            t(at),
            &[],
        );
    }

    fn ids(out: &[Option<BotAssignment>]) -> Vec<Option<(String, String, bool)>> {
        out.iter()
            .map(|a| {
                a.as_ref().map(|a| {
                    (
                        a.bot_id.to_string(),
                        a.task_id.to_string(),
                        a.provision_required,
                    )
                })
            })
            .collect()
    }

    /// §7.3 step 5 and §5.3: the slice number follows the labels the bot
    /// sends in this call; a bot listed twice gets two identical answers;
    /// the same assignment is returned until it is acknowledged.
    #[test]
    fn yield_uses_current_labels_and_repeats_until_acknowledged() {
        let mut s = Scheduler::new(t(0));
        let mut r = Reconciler::default();
        task(&mut s, "t1", "", &["os:linux"], &["fw:2"], 1);
        let out = r.assign_tasks(&mut s, t(5), &[bot("b1", &["os:linux", "fw:1"])]);
        assert_eq!(ids(&out), vec![Some(("b1".into(), "t1".into(), true))]);
        // Same bot, now with the provisionable label: slice 0, same task.
        let b = bot("b1", &["os:linux", "fw:2"]);
        let out = r.assign_tasks(&mut s, t(6), &[b.clone(), b]);
        assert_eq!(
            ids(&out),
            vec![
                Some(("b1".into(), "t1".into(), false)),
                Some(("b1".into(), "t1".into(), false))
            ]
        );
        // A RUNNING notification older than the assignment does not clear it.
        r.notify_running(&mut s, "t1", "b1", t(4));
        assert!(r.pending().contains_key("b1"));
        // One at (or after) the assignment time acknowledges it.
        r.notify_running(&mut s, "t1", "b1", t(5));
        assert!(r.pending().is_empty());
        // The bot asks again: its task is over (BOT_IDLE), nothing new.
        let out = r.assign_tasks(&mut s, t(7), &[bot("b1", &["os:linux"])]);
        assert_eq!(ids(&out), vec![None]);
        assert_eq!(s.queued_len(), 0);
        assert_eq!(s.idle_len(), 1);
    }

    /// §7.3 "queued assignment" and §7.4: a task given to a bot known from
    /// an earlier poll waits for it; after ten minutes it is withdrawn and
    /// another bot can get it.
    #[test]
    fn assignment_waits_for_its_bot_then_times_out() {
        let mut s = Scheduler::new(t(0));
        let mut r = Reconciler::default();
        // Bot A is known and idle (an earlier poll), then a task arrives.
        assert_eq!(
            ids(&r.assign_tasks(&mut s, t(1), &[bot("a", &["x"])])),
            vec![None]
        );
        task(&mut s, "t1", "", &["x"], &[], 2);
        // Bot B polls: the pass gives the task to A (first by id), B gets
        // nothing.
        let out = r.assign_tasks(&mut s, t(3), &[bot("b", &["x"])]);
        assert_eq!(ids(&out), vec![None]);
        assert_eq!(r.pending()["a"].task_to_assign.as_ref(), "t1");
        // Nine minutes later it still waits for A.
        let out = r.assign_tasks(&mut s, t(3 + 540), &[bot("b", &["x"])]);
        assert_eq!(ids(&out), vec![None]);
        let events = s.take_events();
        assert!(
            !events
                .iter()
                .any(|e| e.kind == crate::event::EventKind::Unassigned)
        );
        // Ten minutes after the assignment: withdrawn, A forgotten, and B
        // gets the task in the same call.
        let out = r.assign_tasks(&mut s, t(3 + 600), &[bot("b", &["x"])]);
        assert_eq!(ids(&out), vec![Some(("b".into(), "t1".into(), false))]);
        let events = s.take_events();
        let unassigned: Vec<_> = events
            .iter()
            .filter(|e| e.kind == crate::event::EventKind::Unassigned)
            .collect();
        assert_eq!(unassigned.len(), 1);
        assert_eq!(unassigned[0].bot_id.as_deref(), Some("a"));
        assert!(s.worker_views().iter().all(|w| w.id != "a"));
    }

    fn preempting_setup() -> (Scheduler, Reconciler) {
        let mut s = Scheduler::new(t(0));
        let mut r = Reconciler::default();
        s.add_account(
            "hi",
            AccountConfig {
                charge_rate: [1.0, 0.0, 0.0, 0.0, 0.0],
                max_charge_seconds: 1000.0,
                ..Default::default()
            },
            None,
        );
        // A free-level task runs on bot b.
        task(&mut s, "low", "", &["x"], &[], 1);
        let out = r.assign_tasks(&mut s, t(2), &[bot("b", &["x"])]);
        assert_eq!(ids(&out), vec![Some(("b".into(), "low".into(), false))]);
        r.notify_running(&mut s, "low", "b", t(2));
        // A paid task arrives; the next pass (someone else polling)
        // preempts b.
        task(&mut s, "high", "hi", &["x"], &[], 20);
        let out = r.assign_tasks(&mut s, t(30), &[bot("other", &["y"])]);
        assert_eq!(ids(&out), vec![None]);
        let p = &r.pending()["b"];
        assert_eq!(p.task_to_assign.as_ref(), "high");
        assert_eq!(p.task_to_abort.as_deref(), Some("low"));
        (s, r)
    }

    /// §7.8 and DECISIONS 11: a preemption shows as a cancellation with its
    /// bot and reason PREEMPTED; task errors follow with reason ERROR and
    /// their message; an ABSENT notification of the aborted task (after the
    /// assignment) clears the cancellation, and one for an errored task
    /// clears the error.
    #[test]
    fn cancellations_and_how_they_clear() {
        let (mut s, mut r) = preempting_setup();
        r.add_task_error("bad", "Invalid slice count 3; ...".into());
        assert_eq!(
            r.cancellations(),
            vec![
                Cancellation {
                    bot_id: Some("b".into()),
                    task_id: "low".into(),
                    reason: CancelReason::Preempted,
                    extra_info: String::new(),
                },
                Cancellation {
                    bot_id: None,
                    task_id: "bad".into(),
                    reason: CancelReason::Error,
                    extra_info: "Invalid slice count 3; ...".into(),
                },
            ]
        );
        // Absent at exactly the assignment time: not strictly later, kept.
        r.notify_absent(&mut s, "low", t(30));
        assert_eq!(r.cancellations().len(), 2);
        r.notify_absent(&mut s, "low", t(31));
        r.notify_absent(&mut s, "bad", t(0));
        assert!(r.cancellations().is_empty());
        // The preempting assignment itself is still pending for b, and b
        // gets it when it asks for work.
        assert_eq!(r.pending()["b"].task_to_assign.as_ref(), "high");
        let out = r.assign_tasks(&mut s, t(40), &[bot("b", &["x"])]);
        assert_eq!(ids(&out), vec![Some(("b".into(), "high".into(), false))]);
        assert!(s.is_assigned("high", "b"));
    }

    /// DECISIONS 5: a pending preemption handed to a bot that is asking for
    /// work becomes a plain assignment; its cancellation goes away.
    #[test]
    fn preemption_handed_to_an_idle_bot_becomes_plain() {
        let (mut s, mut r) = preempting_setup();
        let out = r.assign_tasks(&mut s, t(31), &[bot("b", &["x"])]);
        assert_eq!(ids(&out), vec![Some(("b".into(), "high".into(), false))]);
        assert_eq!(r.pending()["b"].task_to_abort, None);
        assert!(r.cancellations().is_empty());
        // Any RUNNING report on that bot at or after the assignment clears
        // the entry, even for another task (§7.5).
        r.notify_running(&mut s, "high", "b", t(32));
        assert!(r.pending().is_empty());
    }
}
