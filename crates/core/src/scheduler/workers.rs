//! Workers: creation, labels, idleness and expiry, and the tasks they run.
//!
//! Invariants: a worker is idle (in `idle` and `idle_expiry`) iff it runs
//! nothing; a running worker is in `running` at its task's level, and its
//! request is `Place::Running` on it.

use super::*;
use crate::account::Balance;
use crate::time::Time;
use std::sync::Arc;

impl Scheduler {
    /// The id of worker `w`'s smallest label starting with `key`: the
    /// label a per-label task limit with that key counts the worker under.
    pub(super) fn label_for_key(&self, w: u32, key: &str) -> Option<u32> {
        let by_name = &self.workers[w].by_name;
        let i = by_name.partition_point(|&l| &*self.labels[l].name < key);
        by_name
            .get(i)
            .copied()
            .filter(|&l| self.labels[l].name.starts_with(key))
    }

    // --------------------------------------------------------------- workers

    /// Creates an idle worker.
    pub(crate) fn create_worker(
        &mut self,
        id: &str,
        labels: &[String],
        confirmed: Time,
        modified: Time,
    ) -> u32 {
        let ids = self.intern_labels(labels);
        self.create_worker_interned(id, ids, confirmed, modified)
    }

    /// Creates an idle worker from sorted, distinct label ids whose
    /// references the caller hands over.
    pub(crate) fn create_worker_interned(
        &mut self,
        id: &str,
        ids: Vec<u32>,
        confirmed: Time,
        modified: Time,
    ) -> u32 {
        let by_name = self.name_order(&ids);
        let id: Arc<str> = Arc::from(id);
        let w = self.workers.insert(Worker {
            id: id.clone(),
            labels: ids.into_boxed_slice(),
            by_name,
            confirmed,
            modified,
            running: None,
            eligible: Vec::new(),
            listed: false,
        });
        let workers = &self.workers;
        self.worker_ids.insert(&id, w, |x| &workers[x].id);
        self.attach_worker_labels(w);
        self.make_idle(w);
        w
    }

    pub(super) fn attach_worker_labels(&mut self, w: u32) {
        self.count_worker_labels(w, true);
    }

    pub(super) fn detach_worker_labels(&mut self, w: u32) {
        self.unlist_worker(w);
        self.count_worker_labels(w, false);
        let labels = std::mem::take(&mut self.workers[w].labels);
        for &l in labels.iter() {
            self.release_label(l);
        }
    }

    /// Replaces a worker's labels; returns true if the set changed.
    pub(crate) fn set_worker_labels(&mut self, w: u32, labels: &[String]) -> bool {
        let ids = self.intern_labels(labels);
        if *ids == *self.workers[w].labels {
            for l in ids {
                self.release_label(l);
            }
            return false;
        }
        self.detach_worker_labels(w);
        self.workers[w].by_name = self.name_order(&ids);
        self.workers[w].labels = ids.into_boxed_slice();
        self.attach_worker_labels(w);
        true
    }

    pub(crate) fn make_idle(&mut self, w: u32) {
        let worker = &self.workers[w];
        self.idle.insert(worker.id.clone(), w);
        self.idle_expiry.insert((worker.confirmed, w));
    }

    pub(super) fn unmake_idle(&mut self, w: u32) {
        if self.settings.disable_preemption {
            // Only idle workers and preemption candidates need their list.
            self.unlist_worker(w);
        }
        let worker = &self.workers[w];
        self.idle.remove(&worker.id);
        self.idle_expiry.remove(&(worker.confirmed, w));
    }

    /// `confirm(W, t)`: moves the confirmed time forward.
    pub(crate) fn confirm_worker(&mut self, w: u32, t: Time) {
        let worker = &self.workers[w];
        if t <= worker.confirmed {
            return;
        }
        let idle = worker.running.is_none();
        if idle {
            self.idle_expiry.remove(&(worker.confirmed, w));
            self.idle_expiry.insert((t, w));
        }
        self.workers[w].confirmed = t;
    }

    /// Forgets a worker and the request it runs (no events).
    pub(crate) fn delete_worker(&mut self, w: u32) {
        if let Some(r) = self.stop_task(w) {
            self.free_request(r);
        } else {
            self.unmake_idle(w);
        }
        self.detach_worker_labels(w);
        let id = self.workers[w].id.clone();
        let workers = &self.workers;
        self.worker_ids.remove(&id, |x| &workers[x].id);
        self.workers.remove(w);
    }

    /// The later of the worker's and its running request's confirmed times.
    pub(crate) fn latest_confirmed(&self, w: u32) -> Time {
        let worker = &self.workers[w];
        match &worker.running {
            Some(run) => worker.confirmed.max(self.requests[run.req].confirmed),
            None => worker.confirmed,
        }
    }

    // --------------------------------------------------------- running tasks

    /// Puts request `r` (queued or detached) on idle worker `w`.
    pub(crate) fn start_task(&mut self, r: u32, w: u32, priority: u8, cost: Balance) {
        if let Place::Queued(_) = self.requests[r].place {
            self.dequeue(r);
        }
        if self.workers[w].running.is_none() {
            self.unmake_idle(w);
        }
        self.requests[r].place = Place::Running(w);
        self.workers[w].running = Some(TaskRun {
            req: r,
            priority,
            cost,
        });
        self.running[priority as usize].insert(w);
        let a = self.requests[r].account;
        let acc = &mut self.accounts[a];
        acc.running_by_prio[priority as usize] += 1;
        acc.running.insert(w);
        let g = self.requests[r].group;
        if has_group(g) {
            self.groups[g].running += 1;
            self.mark_group_dirty(g);
        }
    }

    /// Takes the running request off worker `w`, leaving the request
    /// detached and the worker without a task (and not idle). `None` if
    /// the worker runs nothing (callers check first).
    pub(crate) fn stop_task(&mut self, w: u32) -> Option<u32> {
        let run = self.workers[w].running.take()?;
        self.running[run.priority as usize].remove(&w);
        let r = run.req;
        let a = self.requests[r].account;
        let acc = &mut self.accounts[a];
        acc.running_by_prio[run.priority as usize] -= 1;
        acc.running.remove(&w);
        let g = self.requests[r].group;
        if has_group(g) {
            self.groups[g].running -= 1;
            self.mark_group_dirty(g);
        }
        self.requests[r].place = Place::Detached;
        Some(r)
    }

    /// Moves a running task to another level.
    pub(crate) fn set_task_priority(&mut self, w: u32, priority: u8) {
        let Some(run) = self.workers[w].running.as_mut() else {
            return;
        };
        let old = run.priority;
        run.priority = priority;
        let r = run.req;
        self.running[old as usize].remove(&w);
        self.running[priority as usize].insert(w);
        let a = self.requests[r].account;
        let acc = &mut self.accounts[a];
        acc.running_by_prio[old as usize] -= 1;
        acc.running_by_prio[priority as usize] += 1;
    }
}
