//! An observer of the pool writers for tests: it records the events and
//! the size of every committed batch, and can hold a pool's writer inside a
//! commit (the writer calls observers after answering the batch's calls and
//! before taking the next batch), so that a test can make calls pile up in
//! the pool's queue deterministically. Holding needs the multi-threaded
//! runtime.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use qscheduler_core::PoolEvent;
use qscheduler_server::pool::{CommitInfo, Observer};

/// Longest a writer is held, so that a failing test cannot hang the
/// runtime's shutdown.
const MAX_HOLD: Duration = Duration::from_secs(120);

/// Longest a wait for an event lasts: generous, so that only a hang fails a
/// test, never a slow machine.
const HUNG: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Gate {
    /// Hold the writer of this pool at its next commit.
    armed: Option<String>,
    holding: bool,
    released: bool,
}

/// Records events and batches; holds a writer on request.
#[derive(Default)]
pub struct Recorder {
    events: Mutex<Vec<(String, PoolEvent)>>,
    batches: Mutex<Vec<(String, usize)>>,
    gate: Mutex<Gate>,
    cv: Condvar,
}

impl Observer for Recorder {
    fn committed(&self, pool: &str, commit: &CommitInfo<'_>) {
        self.events
            .lock()
            .unwrap()
            .extend(commit.events.iter().map(|e| (pool.to_owned(), e.clone())));
        self.batches
            .lock()
            .unwrap()
            .push((pool.to_owned(), commit.calls));
        let mut g = self.gate.lock().unwrap();
        if g.armed.as_deref() != Some(pool) {
            return;
        }
        g.armed = None;
        g.holding = true;
        // The calls just answered were woken from this thread, so they may
        // sit in its run queue: hand it to another thread before blocking.
        tokio::task::block_in_place(|| {
            let until = Instant::now() + MAX_HOLD;
            while !g.released && Instant::now() < until {
                g = self.cv.wait_timeout(g, MAX_HOLD).unwrap().0;
            }
            g.holding = false;
            g.released = false;
        });
    }
}

impl Recorder {
    /// The events of `pool` so far, in order.
    pub fn events(&self, pool: &str) -> Vec<PoolEvent> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == pool)
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// The events of `pool` so far as (type, task, bot).
    pub fn summary(&self, pool: &str) -> Vec<(&'static str, String, Option<String>)> {
        self.events(pool)
            .into_iter()
            .map(|e| {
                (
                    e.event.kind.type_name(),
                    e.event.task_id.to_string(),
                    e.event.bot_id.as_deref().map(str::to_owned),
                )
            })
            .collect()
    }

    /// Waits (observers run just after a batch's calls are answered) until
    /// `pool` has an event matching `pred`, and returns it.
    pub async fn wait_event(&self, pool: &str, pred: impl Fn(&PoolEvent) -> bool) -> PoolEvent {
        let until = Instant::now() + HUNG;
        loop {
            if let Some(e) = self.events(pool).into_iter().find(&pred) {
                return e;
            }
            assert!(
                Instant::now() < until,
                "no such event in pool {pool}: {:#?}",
                self.events(pool)
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Calls per committed batch of `pool`, in commit order.
    pub fn batches(&self, pool: &str) -> Vec<usize> {
        self.batches
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == pool)
            .map(|(_, n)| *n)
            .collect()
    }

    /// Holds the writer of `pool` at its next commit, until [`release`].
    ///
    /// [`release`]: Recorder::release
    pub fn hold_next(&self, pool: &str) {
        let mut g = self.gate.lock().unwrap();
        g.armed = Some(pool.to_owned());
        g.released = false;
    }

    /// Waits until a writer is being held.
    pub async fn wait_holding(&self) {
        let until = Instant::now() + HUNG;
        while !self.gate.lock().unwrap().holding {
            assert!(Instant::now() < until, "the writer was never held");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Lets the held writer go on.
    pub fn release(&self) {
        let mut g = self.gate.lock().unwrap();
        g.released = true;
        self.cv.notify_all();
    }
}
