//! What Swarming tells the scheduler (reference §6.10, §6.11).
//!
//! Notifications carry the time at which Swarming observed a state. They
//! may arrive late, twice or out of order, so each one is compared with the
//! confirmed times the scheduler already has ("not before" checks,
//! inclusive) and older news never overrides newer news.

use std::sync::Arc;

use super::ids::{ReqIdx, WorkerIdx};
use super::{NewRequest, NotAssigned, Place, Scheduler};
use crate::account::Balance;
use crate::event::{CompletedReason, Event, EventKind};
use crate::time::{MAX_QUEUEING_AGE_NANOS, Time};

impl Scheduler {
    /// A waiting notification: queues a new request, or confirms a known
    /// one. A request reported waiting while the scheduler believes it runs
    /// (and the news is not older) is re-queued as new and its worker
    /// forgotten.
    pub fn add_request(&mut self, new: &NewRequest, t: Time, tags: &[String]) {
        if let Some(r) = self.request_idx(&new.id) {
            match self.requests[r].place {
                Place::Running(w) => {
                    if t >= self.requests[r].confirmed && t >= self.workers[w].confirmed() {
                        self.delete_worker(w);
                    } else {
                        return;
                    }
                }
                _ => {
                    let req = &mut self.requests[r];
                    if t > req.confirmed {
                        req.confirmed = t;
                    }
                    return;
                }
            }
        }
        let r = self.create_request(
            &new.id,
            &new.account,
            &new.base_labels,
            &new.provisionable_labels,
            new.enqueue_time,
            t,
            Time::EPOCH,
        );
        self.enqueue(r);
        let tags: Arc<[String]> = tags.into();
        self.emit(EventKind::Enqueued { tags }, r, t, None, None);
    }

    /// An idle bot: creates it, updates its labels, or completes the task
    /// it was believed to run.
    pub fn mark_idle(&mut self, worker: &str, labels: &[String], t: Time) {
        let Some(w) = self.worker_idx(worker) else {
            self.create_worker(worker, labels, t, self.now);
            return;
        };
        if t < self.latest_confirmed(w) {
            return;
        }
        if self.set_worker_labels(w, labels) {
            self.workers[w].modified = self.now;
        }
        self.workers.confirm(w, t);
        if let Some(run) = self.workers[w].running().cloned() {
            self.workers[w].modified = self.now;
            self.emit(
                EventKind::Completed {
                    reason: CompletedReason::BotIdle,
                    other_task: None,
                    other_bot: None,
                },
                run.req,
                t,
                Some(w),
                Some(run.cost),
            );
            if let Some(r) = self.stop_task(w) {
                self.free_request(r);
            }
            self.workers.make_idle(w);
        }
    }

    /// A running notification (reference §6.10): confirms a known pairing
    /// or clears contradicted state. A queued request stays queued.
    pub fn notify_running(&mut self, request: &str, worker: &str, t: Time) {
        if let Some(r) = self.request_idx(request) {
            if t < self.requests[r].confirmed {
                return;
            }
            if let Place::Running(w_now) = self.requests[r].place {
                if &**self.workers[w_now].id() == worker {
                    self.requests[r].confirmed = t.max(self.requests[r].confirmed);
                    self.workers.confirm(w_now, t);
                    return;
                }
                let cost = self.workers[w_now].running().map(|run| run.cost);
                self.emit(
                    EventKind::Completed {
                        reason: CompletedReason::InconsistentBotForTask,
                        other_task: None,
                        other_bot: Some(Arc::from(worker)),
                    },
                    r,
                    t,
                    Some(w_now),
                    cost,
                );
                self.delete_worker(w_now);
            }
        }
        self.delete_worker_if_older(worker, t, request);
    }

    fn delete_worker_if_older(&mut self, worker: &str, t: Time, request: &str) {
        let Some(w) = self.worker_idx(worker) else {
            return;
        };
        if t < self.latest_confirmed(w) {
            return;
        }
        if let Some(run) = self.workers[w].running().cloned() {
            self.emit(
                EventKind::Completed {
                    reason: CompletedReason::InconsistentTaskForBot,
                    other_task: Some(Arc::from(request)),
                    other_bot: None,
                },
                run.req,
                t,
                Some(w),
                Some(run.cost),
            );
        }
        self.delete_worker(w);
    }

    /// An absent notification: the task is gone. A running task takes its
    /// worker with it (the bot must announce itself again).
    pub fn notify_absent(&mut self, request: &str, t: Time) {
        let Some(r) = self.request_idx(request) else {
            return;
        };
        match self.requests[r].place {
            Place::Running(w) => {
                if t >= self.workers[w].confirmed() && t >= self.requests[r].confirmed {
                    let cost = self.workers[w].running().map(|run| run.cost);
                    self.emit(
                        EventKind::Completed {
                            reason: CompletedReason::RunningTaskAbsent,
                            other_task: None,
                            other_bot: None,
                        },
                        r,
                        t,
                        Some(w),
                        cost,
                    );
                    self.delete_worker(w);
                }
            }
            _ => {
                if t >= self.requests[r].confirmed {
                    self.emit(
                        EventKind::Completed {
                            reason: CompletedReason::IdleTaskAbsent,
                            other_task: None,
                            other_bot: None,
                        },
                        r,
                        t,
                        None,
                        None,
                    );
                    self.dequeue(r);
                    self.free_request(r);
                }
            }
        }
    }

    /// Withdraws an assignment that was not picked up (reference §6.11):
    /// forgets the worker and re-queues the request, unless it was enqueued
    /// more than 46 hours before the later of the scheduler's time and `t`.
    pub fn unassign(&mut self, request: &str, worker: &str, t: Time) -> Result<(), NotAssigned> {
        let not_assigned = || NotAssigned {
            request: request.to_owned(),
            worker: worker.to_owned(),
        };
        let (Some(r), Some(w)) = (self.request_idx(request), self.worker_idx(worker)) else {
            return Err(not_assigned());
        };
        if self.requests[r].place != Place::Running(w) {
            return Err(not_assigned());
        }
        let cost = self.workers[w].running().map(|run| run.cost);
        self.emit(EventKind::Unassigned, r, t, Some(w), cost);
        let Some(r) = self.stop_task(w) else {
            return Err(not_assigned());
        };
        self.delete_worker(w);
        let now = self.now.max(t);
        if now.nanos_since(self.requests[r].enqueue) > MAX_QUEUEING_AGE_NANOS {
            self.free_request(r);
        } else {
            self.enqueue(r);
        }
        Ok(())
    }

    /// True iff worker `worker` is running request `request`.
    pub fn is_assigned(&self, request: &str, worker: &str) -> bool {
        match (self.request_idx(request), self.worker_idx(worker)) {
            (Some(r), Some(w)) => self.requests[r].place == Place::Running(w),
            _ => false,
        }
    }

    /// Records an event about request `r` (and worker `w`, if any).
    pub(crate) fn emit(
        &mut self,
        kind: EventKind,
        r: ReqIdx,
        time: Time,
        w: Option<WorkerIdx>,
        cost: Option<Balance>,
    ) {
        let event = self.make_event(kind, r, time, w, cost);
        self.events.push(event);
    }

    pub(crate) fn make_event(
        &self,
        kind: EventKind,
        r: ReqIdx,
        time: Time,
        w: Option<WorkerIdx>,
        cost: Option<Balance>,
    ) -> Event {
        let req = &self.requests[r];
        let acc = &self.accounts[req.account];
        let valid = acc.config().is_some();
        let (bot_id, bot_dimensions) = match w {
            Some(w) => (Some(self.workers[w].id().clone()), self.worker_names(w)),
            None => (None, Arc::from(Vec::<Arc<str>>::new())),
        };
        Event {
            kind,
            task_id: req.id.clone(),
            time,
            base_labels: self.set_names(req.base),
            provisionable_labels: self.set_names(req.prov),
            account_id: acc.id().clone(),
            account_valid: valid,
            account_balance: if valid { *acc.balance() } else { Balance::ZERO },
            cost,
            bot_id,
            bot_dimensions,
        }
    }
}
