//! A pool: scheduler and reconciler together, driven by [`Command`]s.
//!
//! This is the unit the server runs (one single writer per pool), logs
//! (each applied command) and snapshots. It also answers the read-only
//! questions of the API — cancellations, callbacks, inspection — from its
//! in-memory state.

use std::sync::Arc;

use crate::account::{AccountConfig, PoolSettings};
use crate::command::{Batch, Command, CommandError, NotifyKind};
use crate::event::Event;
use crate::reconciler::{BotAssignment, Cancellation, Reconciler};
use crate::scheduler::{NewRequest, Scheduler};
use crate::time::{NANOS_PER_SEC, Time};

/// An event and whether it came from a callback notification.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolEvent {
    /// The event.
    pub event: Event,
    /// Produced while handling a NotifyTasks call with `is_callback`.
    pub is_callback: bool,
}

/// What applying a command produced.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    /// For each assign call of a batch, in order: the assignments of its
    /// bots, in the call's bot order.
    pub assignments: Vec<Vec<BotAssignment>>,
    /// Events, in order.
    pub events: Vec<PoolEvent>,
}

/// One pool's complete scheduling state.
#[derive(Clone, Debug)]
pub struct Pool {
    pub(crate) scheduler: Scheduler,
    pub(crate) reconciler: Reconciler,
}

impl Pool {
    /// An empty pool created at `now`.
    pub fn new(now: Time) -> Pool {
        Pool {
            scheduler: Scheduler::new(now),
            reconciler: Reconciler::default(),
        }
    }

    /// A pool around an existing scheduler, with no pending assignments.
    pub fn from_scheduler(scheduler: Scheduler) -> Pool {
        Pool {
            scheduler,
            reconciler: Reconciler::default(),
        }
    }

    /// The scheduler (read-only).
    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    /// The reconciler (read-only).
    pub fn reconciler(&self) -> &Reconciler {
        &self.reconciler
    }

    /// Checks the state-dependent preconditions of a command: if this
    /// returns `Ok`, [`Pool::apply`] will succeed. (Stateless rules are in
    /// [`Command::validate`].)
    pub fn check(&self, cmd: &Command) -> Result<(), CommandError> {
        cmd.validate()?;
        if let Command::ModAccount {
            account_id,
            changes,
        } = cmd
        {
            let config = self
                .scheduler
                .account_config(account_id)
                .ok_or_else(|| CommandError::NoSuchAccount(account_id.clone()))?;
            changes.apply_to(config)?;
        }
        Ok(())
    }

    /// Applies a command. On error nothing changed.
    pub fn apply(&mut self, cmd: &Command) -> Result<Outcome, CommandError> {
        self.check(cmd)?;
        let mut out = Outcome::default();
        match cmd {
            Command::Batch(b) => self.apply_batch(b, &mut out),
            Command::CreateAccount { account_id, config } => {
                self.scheduler.add_account(account_id, config.clone(), None);
            }
            Command::ModAccount {
                account_id,
                changes,
            } => {
                if let Some(old) = self.scheduler.account_config(account_id) {
                    let new = changes.apply_to(old)?;
                    self.scheduler.update_account_config(account_id, new);
                    if changes.reset_balance {
                        self.scheduler.reset_balance(account_id);
                    }
                }
            }
            Command::DeleteAccount { account_id } => self.scheduler.delete_account(account_id),
            Command::ModPool {
                disable_preemption,
                bot_expiration_secs,
            } => {
                let mut s = self.scheduler.settings().clone();
                if let Some(v) = disable_preemption {
                    s.disable_preemption = *v;
                }
                if let Some(v) = bot_expiration_secs {
                    s.bot_expiration_nanos = i64::from(*v) * NANOS_PER_SEC;
                }
                self.scheduler.set_settings(s);
            }
            Command::Wipe { time } => self.wipe(*time),
            Command::Create { time } => *self = Pool::new(*time),
        }
        Ok(out)
    }

    fn apply_batch(&mut self, b: &Batch, out: &mut Outcome) {
        let s = &mut self.scheduler;
        for call in &b.notifies {
            for n in &call.notifications {
                match &n.kind {
                    NotifyKind::Waiting {
                        account,
                        base_labels,
                        provisionable_labels,
                        enqueue_time,
                        tags,
                    } => s.add_request(
                        &NewRequest {
                            id: n.task_id.clone(),
                            account: account.clone(),
                            base_labels: base_labels.clone(),
                            provisionable_labels: provisionable_labels.clone(),
                            enqueue_time: *enqueue_time,
                        },
                        n.time,
                        tags,
                    ),
                    NotifyKind::Running { bot_id } => self
                        .reconciler
                        .notify_running(s, &n.task_id, bot_id, n.time),
                    NotifyKind::Absent => self.reconciler.notify_absent(s, &n.task_id, n.time),
                    NotifyKind::Error { message } => {
                        self.reconciler.add_task_error(&n.task_id, message.clone())
                    }
                }
            }
            out.events
                .extend(s.take_events().into_iter().map(|event| PoolEvent {
                    event,
                    is_callback: call.is_callback,
                }));
        }
        if b.assigns.is_empty() {
            return;
        }
        let t = b
            .assigns
            .iter()
            .map(|c| c.time)
            .max()
            .unwrap_or(Time::EPOCH);
        let bots: Vec<_> = b
            .assigns
            .iter()
            .flat_map(|c| c.bots.iter().cloned())
            .collect();
        let mut results = self.reconciler.assign_tasks(s, t, &bots).into_iter();
        for call in &b.assigns {
            let mine: Vec<BotAssignment> =
                results.by_ref().take(call.bots.len()).flatten().collect();
            out.assignments.push(mine);
        }
        out.events
            .extend(s.take_events().into_iter().map(|event| PoolEvent {
                event,
                is_callback: false,
            }));
    }

    fn wipe(&mut self, time: Time) {
        let settings = self.scheduler.settings().clone();
        let accounts: Vec<(String, AccountConfig)> = self
            .scheduler
            .accounts()
            .map(|(id, c, _)| (id.to_owned(), c.clone()))
            .collect();
        let mut s = Scheduler::new(time);
        s.set_settings(settings);
        for (id, c) in accounts {
            s.add_account(&id, c, None);
        }
        self.scheduler = s;
        self.reconciler = Reconciler::default();
    }

    /// Tasks Swarming should cancel.
    pub fn cancellations(&self) -> Vec<Cancellation> {
        self.reconciler.cancellations()
    }

    /// Tasks whose state Swarming should re-send, stalest first: about 1% of
    /// the waiting tasks (oldest confirmation first), then about 5% of the
    /// running ones.
    pub fn callbacks(&self) -> Vec<Arc<str>> {
        let mut waiting: Vec<(Time, &str)> = self
            .scheduler
            .queued_requests()
            .into_iter()
            .map(|q| (q.confirmed_time, q.id))
            .collect();
        let mut running: Vec<(Time, &str)> = self
            .scheduler
            .worker_views()
            .into_iter()
            .filter_map(|w| {
                let r = w.running?;
                Some((w.confirmed_time.max(r.request.confirmed_time), r.request.id))
            })
            .collect();
        let mut out = Vec::new();
        for (list, per) in [(&mut waiting, 100), (&mut running, 20)] {
            let k = list.len().div_ceil(per);
            if k > 0 && k < list.len() {
                list.select_nth_unstable(k - 1);
            }
            list.truncate(k);
            list.sort_unstable();
            out.extend(list.iter().map(|&(_, id)| Arc::from(id)));
        }
        out
    }

    /// Pool settings.
    pub fn settings(&self) -> &PoolSettings {
        self.scheduler.settings()
    }
}
