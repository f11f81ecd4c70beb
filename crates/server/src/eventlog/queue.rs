//! The queue between the pool writers and one sink: bounded, and when
//! full it drops its *oldest* events, so a sink that falls behind loses
//! history rather than holding up scheduling. Pushing takes one short lock
//! and never waits.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use qscheduler_core::PoolEvent;
use tokio::sync::{Notify, watch};

use super::SinkStats;

pub(super) type Item = (Arc<str>, PoolEvent);

/// A bounded queue that drops its oldest items when full.
pub(super) struct Queue {
    items: Mutex<VecDeque<Item>>,
    capacity: usize,
    pub(super) ready: Notify,
    pub(super) closed: watch::Sender<bool>,
    pub(super) stats: Arc<SinkStats>,
}

impl Queue {
    pub(super) fn new(capacity: usize, stats: Arc<SinkStats>) -> Arc<Queue> {
        Arc::new(Queue {
            items: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            ready: Notify::new(),
            closed: watch::channel(false).0,
            stats,
        })
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Item>> {
        self.items
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn push(&self, pool: &Arc<str>, events: &[PoolEvent]) {
        let mut dropped = 0;
        let len = {
            let mut q = self.lock();
            for e in events {
                if q.len() >= self.capacity {
                    q.pop_front();
                    dropped += 1;
                }
                q.push_back((pool.clone(), e.clone()));
            }
            q.len()
        };
        self.stats.queued.store(len as u64, Ordering::Relaxed);
        if dropped > 0 {
            self.stats.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
        self.ready.notify_one();
    }

    pub(super) fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Up to `max` items, waiting for at least one; `None` once closed and
    /// drained.
    pub(super) async fn next_chunk(&self, max: usize) -> Option<Vec<Item>> {
        loop {
            let notified = self.ready.notified();
            {
                let mut q = self.lock();
                if !q.is_empty() {
                    let n = q.len().min(max);
                    let chunk: Vec<Item> = q.drain(..n).collect();
                    self.stats.queued.store(q.len() as u64, Ordering::Relaxed);
                    return Some(chunk);
                }
                if self.is_closed() {
                    return None;
                }
            }
            let mut closed = self.closed.subscribe();
            tokio::select! {
                _ = notified => {}
                _ = closed.wait_for(|c| *c) => {}
            }
        }
    }

    /// Resolves once the queue is closed.
    pub(super) async fn wait_closed(&self) {
        let mut closed = self.closed.subscribe();
        let _ = closed.wait_for(|c| *c).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eventlog::test_event as event;
    use qscheduler_core::EventKind;

    #[test]
    fn a_full_queue_drops_its_oldest_events() {
        let stats = SinkStats::new("test");
        let q = Queue::new(3, stats.clone());
        let pool: Arc<str> = Arc::from("p");
        let events: Vec<PoolEvent> = (0..5)
            .map(|i| {
                let mut e = event(EventKind::Unassigned);
                e.event.task_id = Arc::from(format!("t{i}"));
                e
            })
            .collect();
        q.push(&pool, &events[..2]);
        q.push(&pool, &events[2..]);
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 2);
        assert_eq!(stats.queued.load(Ordering::Relaxed), 3);
        let ids: Vec<String> = q
            .lock()
            .iter()
            .map(|(_, e)| e.event.task_id.to_string())
            .collect();
        assert_eq!(ids, ["t2", "t3", "t4"]);
    }
}
