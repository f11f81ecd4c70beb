//! Workers: the table of bots, which of them are idle (by id, and by
//! confirmed time for expiry), and which run a task at which level.
//!
//! [`Workers`] owns these and is the only code that changes a worker's
//! confirmed time or task, so that its indexes cannot drift from the
//! workers. A worker's labels and eligible list are the business of the
//! label table and of `eligibility`, which the scheduler keeps in step.
//!
//! Invariants (`Workers::check_invariants`): every worker is found by its
//! id; between operations a worker is idle (in `idle` and `idle_expiry`,
//! under its confirmed time) iff it runs nothing; a running worker is in
//! `running` at its task's level, and nowhere else.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rustc_hash::FxHashSet;

use super::idmap::IdIndex;
use super::ids::{LabelId, ReqIdx, SetId, WorkerIdx};
use super::slab::Slab;
use super::{LEVELS, Place, Scheduler};
use crate::account::{Balance, NUM_PRIORITIES};
use crate::time::Time;

/// A running task: its request, level and the quota spent on it so far.
#[derive(Clone, Debug)]
pub(crate) struct TaskRun {
    pub(crate) req: ReqIdx,
    pub(crate) priority: u8,
    pub(crate) cost: Balance,
}

#[derive(Clone, Debug)]
pub(crate) struct Worker {
    id: Arc<str>,
    /// Sorted label ids.
    pub(crate) labels: Box<[LabelId]>,
    /// The same label ids in name order, for lookups by name prefix and
    /// for building the sorted names on demand (a list of names per worker
    /// would hold a pointer per label instead of an id).
    pub(crate) by_name: Box<[LabelId]>,
    confirmed: Time,
    pub(crate) modified: Time,
    running: Option<TaskRun>,
    /// While `listed`: the active non-empty label sets this worker's labels
    /// include (empty otherwise).
    pub(crate) eligible: Vec<SetId>,
    /// Whether `eligible` is kept: from the first pass that looks for work
    /// for the worker (idle, or as a preemption candidate) until it leaves
    /// or changes labels, or runs a task while preemption is disabled.
    pub(crate) listed: bool,
}

impl Worker {
    pub(crate) fn id(&self) -> &Arc<str> {
        &self.id
    }

    /// The latest time Swarming confirmed the worker's state.
    pub(crate) fn confirmed(&self) -> Time {
        self.confirmed
    }

    /// Its task, if it runs one.
    pub(crate) fn running(&self) -> Option<&TaskRun> {
        self.running.as_ref()
    }
}

/// The workers of a pool (see the module docs).
#[derive(Clone, Debug, Default)]
pub(crate) struct Workers {
    ids: IdIndex<WorkerIdx>,
    slab: Slab<WorkerIdx, Worker>,
    /// Idle workers by id.
    idle: BTreeMap<Arc<str>, WorkerIdx>,
    /// Idle workers by confirmed time, for expiry.
    idle_expiry: BTreeSet<(Time, WorkerIdx)>,
    /// Running workers by their task's level.
    running: [FxHashSet<WorkerIdx>; LEVELS],
}

impl std::ops::Index<WorkerIdx> for Workers {
    type Output = Worker;
    fn index(&self, w: WorkerIdx) -> &Worker {
        &self.slab[w]
    }
}

impl std::ops::IndexMut<WorkerIdx> for Workers {
    fn index_mut(&mut self, w: WorkerIdx) -> &mut Worker {
        &mut self.slab[w]
    }
}

impl Workers {
    /// The worker with bot id `id`.
    pub(crate) fn find(&self, id: &str) -> Option<WorkerIdx> {
        self.ids.get(id, |w| &self.slab[w].id)
    }

    pub(crate) fn len(&self) -> usize {
        self.slab.len()
    }

    pub(crate) fn idle_len(&self) -> usize {
        self.idle.len()
    }

    /// Workers in slot order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (WorkerIdx, &Worker)> {
        self.slab.iter()
    }

    /// Idle workers in id order.
    pub(crate) fn idle(&self) -> impl Iterator<Item = WorkerIdx> + '_ {
        self.idle.values().copied()
    }

    /// Workers running a task at `level`, in no particular order.
    pub(crate) fn running_at(&self, level: usize) -> impl Iterator<Item = WorkerIdx> + '_ {
        self.running[level].iter().copied()
    }

    /// Workers running a task, in no particular order.
    pub(crate) fn running(&self) -> impl Iterator<Item = WorkerIdx> + '_ {
        self.running.iter().flatten().copied()
    }

    /// The idle worker confirmed longest ago, with its confirmed time.
    pub(crate) fn first_to_expire(&self) -> Option<(Time, WorkerIdx)> {
        self.idle_expiry.first().copied()
    }

    /// Adds an idle worker whose id is not yet known.
    pub(crate) fn insert(
        &mut self,
        id: &str,
        labels: Box<[LabelId]>,
        by_name: Box<[LabelId]>,
        confirmed: Time,
        modified: Time,
    ) -> WorkerIdx {
        let id: Arc<str> = Arc::from(id);
        let w = self.slab.insert(Worker {
            id: id.clone(),
            labels,
            by_name,
            confirmed,
            modified,
            running: None,
            eligible: Vec::new(),
            listed: false,
        });
        let slab = &self.slab;
        self.ids.insert(&id, w, |x| &slab[x].id);
        self.make_idle(w);
        w
    }

    /// Forgets a worker that runs nothing.
    pub(crate) fn remove(&mut self, w: WorkerIdx) {
        debug_assert!(self.slab[w].running.is_none());
        self.unmake_idle(w);
        let id = self.slab[w].id.clone();
        let slab = &self.slab;
        self.ids.remove(&id, |x| &slab[x].id);
        self.slab.remove(w);
    }

    /// Makes a worker that runs nothing idle.
    pub(crate) fn make_idle(&mut self, w: WorkerIdx) {
        let worker = &self.slab[w];
        self.idle.insert(worker.id.clone(), w);
        self.idle_expiry.insert((worker.confirmed, w));
    }

    fn unmake_idle(&mut self, w: WorkerIdx) {
        let worker = &self.slab[w];
        self.idle.remove(&worker.id);
        self.idle_expiry.remove(&(worker.confirmed, w));
    }

    /// `confirm(W, t)`: moves the confirmed time forward.
    pub(crate) fn confirm(&mut self, w: WorkerIdx, t: Time) {
        let worker = &self.slab[w];
        if t <= worker.confirmed {
            return;
        }
        if worker.running.is_none() {
            self.idle_expiry.remove(&(worker.confirmed, w));
            self.idle_expiry.insert((t, w));
        }
        self.slab[w].confirmed = t;
    }

    /// Gives a worker that runs nothing (idle or not) a task.
    pub(crate) fn start(&mut self, w: WorkerIdx, run: TaskRun) {
        if self.slab[w].running.is_none() {
            self.unmake_idle(w);
        }
        self.running[run.priority as usize].insert(w);
        self.slab[w].running = Some(run);
    }

    /// Takes a worker's task, leaving the worker neither idle nor running
    /// until it is made idle or removed.
    pub(crate) fn stop(&mut self, w: WorkerIdx) -> Option<TaskRun> {
        let run = self.slab[w].running.take()?;
        self.running[run.priority as usize].remove(&w);
        Some(run)
    }

    /// Moves a worker's task to another level; returns the old level.
    pub(crate) fn set_priority(&mut self, w: WorkerIdx, priority: u8) -> Option<u8> {
        let run = self.slab[w].running.as_mut()?;
        let old = std::mem::replace(&mut run.priority, priority);
        self.running[old as usize].remove(&w);
        self.running[priority as usize].insert(w);
        Some(old)
    }

    /// Adds `elapsed` seconds to the cost of every task at a paid level, at
    /// its level.
    pub(crate) fn charge(&mut self, elapsed: f32) {
        for p in 0..NUM_PRIORITIES {
            for &w in &self.running[p] {
                if let Some(run) = self.slab[w].running.as_mut() {
                    run.cost.0[p] += elapsed;
                }
            }
        }
    }

    /// Recomputes the indexes from the workers and compares.
    #[cfg(any(test, debug_assertions))]
    pub(crate) fn check_invariants(&self) {
        assert_eq!(self.ids.len(), self.slab.len(), "worker index entries");
        let mut idle = 0;
        for (w, worker) in self.slab.iter() {
            assert_eq!(self.find(&worker.id), Some(w), "worker {} by id", worker.id);
            let is_idle = worker.running.is_none();
            idle += usize::from(is_idle);
            assert_eq!(self.idle.get(&worker.id), is_idle.then_some(&w));
            assert_eq!(
                self.idle_expiry.contains(&(worker.confirmed, w)),
                is_idle,
                "expiry of worker {}",
                worker.id
            );
            for (level, running) in self.running.iter().enumerate() {
                let here = worker.running.as_ref().map(|r| r.priority as usize) == Some(level);
                assert_eq!(running.contains(&w), here, "level of worker {}", worker.id);
            }
        }
        assert_eq!(self.idle.len(), idle, "idle workers");
        assert_eq!(self.idle_expiry.len(), idle, "idle workers by expiry");
    }
}

impl Scheduler {
    /// The id of worker `w`'s smallest label starting with `key`: the
    /// label a per-label task limit with that key counts the worker under.
    pub(super) fn label_for_key(&self, w: WorkerIdx, key: &str) -> Option<LabelId> {
        let by_name = &self.workers[w].by_name;
        let i = by_name.partition_point(|&l| &**self.labels[l].name() < key);
        by_name
            .get(i)
            .copied()
            .filter(|&l| self.labels[l].name().starts_with(key))
    }

    /// Creates an idle worker.
    pub(crate) fn create_worker(
        &mut self,
        id: &str,
        labels: &[String],
        confirmed: Time,
        modified: Time,
    ) -> WorkerIdx {
        let ids = self.labels.intern_labels(labels);
        self.create_worker_interned(id, ids, confirmed, modified)
    }

    /// Creates an idle worker from sorted, distinct label ids whose
    /// references the caller hands over.
    pub(crate) fn create_worker_interned(
        &mut self,
        id: &str,
        ids: Vec<LabelId>,
        confirmed: Time,
        modified: Time,
    ) -> WorkerIdx {
        let by_name = self.labels.name_order(&ids);
        let w = self
            .workers
            .insert(id, ids.into_boxed_slice(), by_name, confirmed, modified);
        self.count_worker_labels(w, true);
        w
    }

    fn detach_worker_labels(&mut self, w: WorkerIdx) {
        self.unlist_worker(w);
        self.count_worker_labels(w, false);
        let labels = std::mem::take(&mut self.workers[w].labels);
        for &l in labels.iter() {
            self.labels.release_label(l);
        }
    }

    /// Replaces a worker's labels; returns true if the set changed.
    pub(crate) fn set_worker_labels(&mut self, w: WorkerIdx, labels: &[String]) -> bool {
        let ids = self.labels.intern_labels(labels);
        if *ids == *self.workers[w].labels {
            for l in ids {
                self.labels.release_label(l);
            }
            return false;
        }
        self.detach_worker_labels(w);
        self.workers[w].by_name = self.labels.name_order(&ids);
        self.workers[w].labels = ids.into_boxed_slice();
        self.count_worker_labels(w, true);
        true
    }

    /// Forgets a worker and the request it runs (no events).
    pub(crate) fn delete_worker(&mut self, w: WorkerIdx) {
        if let Some(r) = self.stop_task(w) {
            self.free_request(r);
        }
        self.detach_worker_labels(w);
        self.workers.remove(w);
    }

    /// The later of the worker's and its running request's confirmed times.
    pub(crate) fn latest_confirmed(&self, w: WorkerIdx) -> Time {
        let worker = &self.workers[w];
        match worker.running() {
            Some(run) => worker.confirmed().max(self.requests[run.req].confirmed),
            None => worker.confirmed(),
        }
    }

    // --------------------------------------------------------- running tasks

    /// Puts request `r` (queued or detached) on worker `w`, which runs
    /// nothing.
    pub(crate) fn start_task(&mut self, r: ReqIdx, w: WorkerIdx, priority: u8, cost: Balance) {
        if let Place::Queued(_) = self.requests[r].place {
            self.dequeue(r);
        }
        if self.workers[w].running().is_none() && self.settings.disable_preemption {
            // Only idle workers and preemption candidates need their list.
            self.unlist_worker(w);
        }
        self.requests[r].place = Place::Running(w);
        self.workers.start(
            w,
            TaskRun {
                req: r,
                priority,
                cost,
            },
        );
        self.accounts
            .task_started(self.requests[r].account, w, priority);
        if let Some(g) = self.requests[r].group.group() {
            self.group_task_started(g);
        }
    }

    /// Takes the running request off worker `w`, leaving the request
    /// detached and the worker without a task (and not idle). `None` if
    /// the worker runs nothing (callers check first).
    pub(crate) fn stop_task(&mut self, w: WorkerIdx) -> Option<ReqIdx> {
        let run = self.workers.stop(w)?;
        let r = run.req;
        self.accounts
            .task_stopped(self.requests[r].account, w, run.priority);
        if let Some(g) = self.requests[r].group.group() {
            self.group_task_stopped(g);
        }
        self.requests[r].place = Place::Detached;
        Some(r)
    }

    /// Moves a running task to another level.
    pub(crate) fn set_task_priority(&mut self, w: WorkerIdx, priority: u8) {
        let Some(old) = self.workers.set_priority(w, priority) else {
            return;
        };
        let Some(r) = self.workers[w].running().map(|run| run.req) else {
            return;
        };
        self.accounts
            .task_moved(self.requests[r].account, old, priority);
    }
}
