//! Read-only views of the scheduler state, in id order.
//!
//! Snapshots, the view API, metrics and callbacks read the state through
//! these; every list comes sorted by id so that nothing downstream depends
//! on internal storage order.

use std::sync::Arc;

use super::ids::{LabelId, ReqIdx};
use super::{Place, Scheduler};
use crate::account::Balance;
use crate::event::Labels;
use crate::time::Time;

/// A request, queued or running.
#[derive(Clone, Debug, PartialEq)]
pub struct QueuedView<'a> {
    /// Task id.
    pub id: &'a str,
    /// Account id.
    pub account: &'a str,
    /// Base labels, sorted.
    pub base_labels: Labels,
    /// Provisionable labels, sorted.
    pub provisionable_labels: Labels,
    /// When Swarming created the task.
    pub enqueue_time: Time,
    /// Latest time Swarming confirmed the task's state.
    pub confirmed_time: Time,
    /// Last pass that considered the task without assigning it.
    pub examined_time: Time,
}

/// A running task.
#[derive(Clone, Debug, PartialEq)]
pub struct RunningView<'a> {
    /// The request.
    pub request: QueuedView<'a>,
    /// Level it runs at.
    pub priority: u8,
    /// Quota spent so far per level.
    pub cost: Balance,
}

/// A worker.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerView<'a> {
    /// Bot id.
    pub id: &'a str,
    /// Labels, sorted.
    pub labels: Labels,
    /// Latest time Swarming confirmed the worker's state.
    pub confirmed_time: Time,
    /// Scheduler time at which it last became idle or changed labels.
    pub modified_time: Time,
    /// Its task, if running.
    pub running: Option<RunningView<'a>>,
}

impl Scheduler {
    fn request_view(&self, r: ReqIdx) -> QueuedView<'_> {
        let req = &self.requests[r];
        QueuedView {
            id: &req.id,
            account: self.accounts[req.account].id(),
            base_labels: self.set_names(req.base),
            provisionable_labels: self.set_names(req.prov),
            enqueue_time: req.enqueue,
            confirmed_time: req.confirmed,
            examined_time: self.examined(r),
        }
    }

    /// Queued requests, sorted by id.
    pub fn queued_requests(&self) -> Vec<QueuedView<'_>> {
        let mut v: Vec<QueuedView<'_>> = self
            .requests
            .iter()
            .filter(|(_, req)| matches!(req.place, Place::Queued(_)))
            .map(|(r, _)| self.request_view(r))
            .collect();
        v.sort_unstable_by(|a, b| a.id.cmp(b.id));
        v
    }

    /// How many requests each account has queued, in account id order;
    /// accounts with none are left out. One step per request.
    pub fn queued_per_account(&self) -> Vec<(&str, u64)> {
        let mut counts: std::collections::BTreeMap<&str, u64> = Default::default();
        for (_, req) in self.requests.iter() {
            if matches!(req.place, Place::Queued(_)) {
                *counts
                    .entry(&**self.accounts[req.account].id())
                    .or_default() += 1;
            }
        }
        counts.into_iter().collect()
    }

    /// Workers, sorted by id.
    pub fn worker_views(&self) -> Vec<WorkerView<'_>> {
        let mut v: Vec<WorkerView<'_>> = self
            .workers
            .iter()
            .map(|(i, w)| WorkerView {
                id: w.id(),
                labels: self.worker_names(i),
                confirmed_time: w.confirmed(),
                modified_time: w.modified,
                running: w.running().map(|run| RunningView {
                    request: self.request_view(run.req),
                    priority: run.priority,
                    cost: run.cost,
                }),
            })
            .collect();
        v.sort_unstable_by(|a, b| a.id.cmp(b.id));
        v
    }

    /// A request by id, with the worker running it, if any.
    pub fn request(&self, id: &str) -> Option<(QueuedView<'_>, Option<&str>)> {
        let r = self.request_idx(id)?;
        let worker = match self.requests[r].place {
            Place::Running(w) => Some(&**self.workers[w].id()),
            _ => None,
        };
        Some((self.request_view(r), worker))
    }

    /// For every label some queued request has among its base labels, how
    /// many queued requests have it, in name order. Computed from the
    /// per-set counts, so it costs one step per distinct label set rather
    /// than per request.
    pub fn queued_base_label_counts(&self) -> Vec<(Arc<str>, u64)> {
        let mut counts: rustc_hash::FxHashMap<LabelId, u64> = Default::default();
        for (_, set) in self.labels.iter_sets() {
            if set.queued_base > 0 {
                for &l in set.labels() {
                    *counts.entry(l).or_default() += u64::from(set.queued_base);
                }
            }
        }
        let mut v: Vec<(Arc<str>, u64)> = counts
            .into_iter()
            .map(|(l, n)| (self.labels[l].name().clone(), n))
            .collect();
        v.sort_unstable();
        v
    }

    /// The provisionable labels of a request, if known.
    pub fn provisionable_labels(&self, id: &str) -> Option<Labels> {
        let r = self.request_idx(id)?;
        Some(self.set_names(self.requests[r].prov))
    }
}

/// An owned, canonical description of a scheduler's state: everything that
/// determines its future behaviour, in id order. Two schedulers with equal
/// dumps behave identically.
#[derive(Clone, Debug, PartialEq)]
pub struct StateDump {
    /// The scheduler clock.
    pub now: Time,
    /// Pool settings.
    pub settings: crate::account::PoolSettings,
    /// Configured accounts: (id, config, balance).
    pub accounts: Vec<(String, crate::account::AccountConfig, Balance)>,
    /// Queued requests.
    pub queued: Vec<RequestDump>,
    /// Workers.
    pub workers: Vec<WorkerDump>,
}

/// A request in a [`StateDump`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestDump {
    /// Task id.
    pub id: String,
    /// Account id.
    pub account: String,
    /// Sorted base labels.
    pub base_labels: Vec<String>,
    /// Sorted provisionable labels.
    pub provisionable_labels: Vec<String>,
    /// Enqueue time.
    pub enqueue_time: Time,
    /// Confirmed time.
    pub confirmed_time: Time,
    /// Examined time.
    pub examined_time: Time,
}

/// A worker in a [`StateDump`].
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerDump {
    /// Bot id.
    pub id: String,
    /// Sorted labels.
    pub labels: Vec<String>,
    /// Confirmed time.
    pub confirmed_time: Time,
    /// Modified time.
    pub modified_time: Time,
    /// Running task: (request, priority, cost).
    pub running: Option<(RequestDump, u8, Balance)>,
}

impl From<&QueuedView<'_>> for RequestDump {
    fn from(v: &QueuedView<'_>) -> Self {
        RequestDump {
            id: v.id.to_owned(),
            account: v.account.to_owned(),
            base_labels: v.base_labels.iter().map(|l| l.to_string()).collect(),
            provisionable_labels: v
                .provisionable_labels
                .iter()
                .map(|l| l.to_string())
                .collect(),
            enqueue_time: v.enqueue_time,
            confirmed_time: v.confirmed_time,
            examined_time: v.examined_time,
        }
    }
}

impl Scheduler {
    /// The canonical state (see [`StateDump`]).
    pub fn dump(&self) -> StateDump {
        StateDump {
            now: self.now,
            settings: self.settings.clone(),
            accounts: self
                .accounts()
                .map(|(id, c, b)| (id.to_owned(), c.clone(), *b))
                .collect(),
            queued: self
                .queued_requests()
                .iter()
                .map(RequestDump::from)
                .collect(),
            workers: self
                .worker_views()
                .iter()
                .map(|w| WorkerDump {
                    id: w.id.to_owned(),
                    labels: w.labels.iter().map(|l| l.to_string()).collect(),
                    confirmed_time: w.confirmed_time,
                    modified_time: w.modified_time,
                    running: w
                        .running
                        .as_ref()
                        .map(|r| (RequestDump::from(&r.request), r.priority, r.cost)),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::NewRequest;
    use std::collections::BTreeMap;

    #[test]
    fn queued_base_label_counts_match_a_count_over_requests() {
        let t = Time::from_nanos(1_000_000_000);
        let mut s = Scheduler::new(t);
        let sets: [&[&str]; 4] = [&["a", "b"], &["b"], &["a", "b"], &["c", "a"]];
        for (i, labels) in sets.iter().enumerate() {
            s.add_request(
                &NewRequest {
                    id: format!("r{i}"),
                    account: String::new(),
                    base_labels: labels.iter().map(|l| l.to_string()).collect(),
                    provisionable_labels: vec!["p".into()],
                    enqueue_time: t,
                },
                t,
                &[],
            );
        }
        s.notify_absent("r1", t);
        let mut expect: BTreeMap<Arc<str>, u64> = BTreeMap::new();
        for q in s.queued_requests() {
            for l in q.base_labels.iter() {
                *expect.entry(l.clone()).or_default() += 1;
            }
        }
        let got = s.queued_base_label_counts();
        assert_eq!(got, expect.into_iter().collect::<Vec<_>>());
        assert_eq!(
            got,
            vec![
                (Arc::from("a"), 3),
                (Arc::from("b"), 2),
                (Arc::from("c"), 1)
            ]
        );
    }
}
