//! A pool: scheduler and reconciler together, driven by [`Command`]s.
//!
//! This is the unit the server runs (one single writer per pool), logs
//! (each applied command) and snapshots. It also answers the read-only
//! questions of the API — cancellations, callbacks, inspection — from its
//! in-memory state.

use std::collections::BTreeMap;
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

/// Debug builds check the invariants after each command on pools up to this
/// many requests and workers.
#[cfg(any(test, debug_assertions))]
pub const DEBUG_CHECK_UP_TO: usize = 2_000;

/// Admission of a sequence of commands (see [`Pool::admission`]).
#[derive(Debug)]
pub struct Admission<'a> {
    pool: &'a Pool,
    /// A `Create` was admitted: the pool's own accounts are gone.
    cleared: bool,
    /// Account configurations as the admitted commands leave them, where
    /// they differ from the pool's (`None`: not configured).
    accounts: BTreeMap<String, Option<AccountConfig>>,
}

impl Admission<'_> {
    /// The configuration of `id` after the commands admitted so far.
    fn config(&self, id: &str) -> Option<&AccountConfig> {
        match self.accounts.get(id) {
            Some(c) => c.as_ref(),
            None if self.cleared => None,
            None => self.pool.scheduler.account_config(id),
        }
    }

    /// Checks `cmd` against the pool as the commands admitted so far leave
    /// it, and admits it if it passes. A refused command changes nothing.
    pub fn admit(&mut self, cmd: &Command) -> Result<(), CommandError> {
        cmd.validate()?;
        match cmd {
            Command::ModAccount {
                account_id,
                changes,
            } => {
                let config = self
                    .config(account_id)
                    .ok_or_else(|| CommandError::NoSuchAccount(account_id.clone()))?;
                let new = changes.apply_to(config)?;
                self.accounts.insert(account_id.clone(), Some(new));
            }
            Command::CreateAccount { account_id, config } => {
                self.accounts
                    .insert(account_id.clone(), Some(config.clone()));
            }
            Command::DeleteAccount { account_id } => {
                self.accounts.insert(account_id.clone(), None);
            }
            Command::Create { .. } => {
                self.cleared = true;
                self.accounts.clear();
            }
            Command::Batch(_) | Command::ModPool { .. } | Command::Wipe { .. } => {}
        }
        Ok(())
    }
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
    /// [`Command::validate`], which this runs too.)
    pub fn check(&self, cmd: &Command) -> Result<(), CommandError> {
        self.admission().admit(cmd)
    }

    /// Starts admitting a sequence of commands that will be applied in
    /// order: each is checked against the pool as the commands admitted
    /// before it will leave it (a `ModAccount` after a `DeleteAccount` of
    /// the same account fails). This is the one admission check: whoever
    /// logs commands before applying them (the server's pool writer, the
    /// fuzz targets) must ask it, since a logged command that does not
    /// apply would stop recovery.
    pub fn admission(&self) -> Admission<'_> {
        Admission {
            pool: self,
            cleared: false,
            accounts: BTreeMap::new(),
        }
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
        #[cfg(debug_assertions)]
        if self.scheduler.requests.len() + self.scheduler.workers_len() <= DEBUG_CHECK_UP_TO {
            self.check_invariants();
        }
        Ok(out)
    }

    /// Recomputes the scheduler's derived structures from scratch and
    /// panics if they differ from the maintained ones. Debug builds run it
    /// after every command on pools of up to [`DEBUG_CHECK_UP_TO`] requests
    /// and workers (it costs far more than the command); the fuzz targets,
    /// built with debug assertions, thereby check every batch they apply.
    #[cfg(any(test, debug_assertions))]
    pub fn check_invariants(&self) {
        self.scheduler.check_invariants();
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
        // The original's wipe keeps the configurations but not the
        // balances, which its next clock update creates again.
        s.forget_balances();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: i64) -> Time {
        Time::from_secs(1_700_000_000 + s)
    }

    fn create(id: &str) -> Command {
        Command::CreateAccount {
            account_id: id.into(),
            config: AccountConfig {
                charge_rate: [1.0, 0.0, 0.0, 0.0, 0.0],
                max_charge_seconds: 100.0,
                ..AccountConfig::default()
            },
        }
    }

    /// Reference, admin `Wipe`: the configuration stays, the balances go
    /// until the pool's next clock update creates them again.
    #[test]
    fn wipe_leaves_no_balances_until_the_clock_moves() {
        let mut pool = Pool::new(secs(0));
        pool.apply(&create("a")).unwrap();
        pool.scheduler.update_time(secs(10));
        assert_eq!(pool.scheduler().balance("a").map(|b| b.0[0]), Some(10.0));
        pool.apply(&Command::Wipe { time: secs(20) }).unwrap();
        assert!(pool.scheduler().account_config("a").is_some());
        assert_eq!(pool.scheduler().balance("a"), None);
        // An account created after the wipe has its balance at once.
        pool.apply(&create("b")).unwrap();
        assert!(pool.scheduler().balance("b").is_some());
        // A clock update that goes back in time changes nothing.
        pool.scheduler.update_time(secs(5));
        assert_eq!(pool.scheduler().balance("a"), None);
        pool.scheduler.update_time(secs(21));
        assert_eq!(pool.scheduler().balance("a").map(|b| b.0[0]), Some(1.0));
    }

    /// Commands are admitted against the state the earlier ones leave.
    #[test]
    fn admission_follows_the_batch() {
        let mut pool = Pool::new(secs(0));
        pool.apply(&create("a")).unwrap();
        let modify = |id: &str| Command::ModAccount {
            account_id: id.into(),
            changes: crate::command::AccountChanges::default(),
        };
        let mut adm = pool.admission();
        assert!(adm.admit(&modify("a")).is_ok());
        assert!(adm.admit(&modify("b")).is_err());
        assert!(adm.admit(&create("b")).is_ok());
        assert!(adm.admit(&modify("b")).is_ok());
        assert!(
            adm.admit(&Command::DeleteAccount {
                account_id: "a".into()
            })
            .is_ok()
        );
        assert!(adm.admit(&modify("a")).is_err());
        assert!(adm.admit(&create("a")).is_ok());
        assert!(adm.admit(&Command::Create { time: secs(1) }).is_ok());
        assert!(adm.admit(&modify("a")).is_err());
        assert!(adm.admit(&modify("b")).is_err());
        // A refused change of configuration is refused in admission, not
        // when applied.
        let bad = Command::ModAccount {
            account_id: "a".into(),
            changes: crate::command::AccountChanges {
                max_charge_seconds: Some(f32::NAN),
                ..Default::default()
            },
        };
        assert!(pool.admission().admit(&bad).is_err());
    }
}
