//! What the pools' collector writes on each scrape: one function per
//! metric family, called in a fixed order.
//!
//! The order of the calls in `encode` is the order of the families in
//! `/metrics`; with the names, help texts and the order of labels it is
//! the endpoint's text, which dashboards and alerts read. Keep it when
//! adding or splitting a family.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType::{self, Counter, Gauge, Histogram as Hg};
use prometheus_client::metrics::exemplar::Exemplar;
use qscheduler_core::{FREE_PRIORITY, NUM_PRIORITIES};

use super::{AccountStats, Hist, PoolGauges, PoolStats, PoolsCollector, lock};
use crate::eventlog::SinkStats;
use crate::registry::{OwnershipChanges, Settlement};

const PRIORITY: [&str; 6] = ["0", "1", "2", "3", "4", "5"];
const REASONS: [&str; 6] = [
    "UNSPECIFIED",
    "BOT_IDLE",
    "IDLE_TASK_ABSENT",
    "RUNNING_TASK_ABSENT",
    "INCONSISTENT_BOT_FOR_TASK",
    "INCONSISTENT_TASK_FOR_BOT",
];

fn bool_str(b: bool) -> &'static str {
    if b { "true" } else { "false" }
}

/// A value of one series.
enum V<'a> {
    U(u64),
    F(f64),
    H(&'a Hist),
}

impl V<'_> {
    fn encode(&self, mut e: MetricEncoder<'_>, ty: MetricType) -> fmt::Result {
        match (self, ty) {
            (V::U(v), MetricType::Counter) => {
                e.encode_counter::<NoLabelSet, _, u64>(v, None::<&Exemplar<NoLabelSet, u64>>)
            }
            (V::F(v), MetricType::Counter) => {
                e.encode_counter::<NoLabelSet, _, f64>(v, None::<&Exemplar<NoLabelSet, f64>>)
            }
            (V::U(v), _) => e.encode_gauge(&(*v as i64)),
            (V::F(v), _) => e.encode_gauge(v),
            (V::H(h), _) => h.encode(e),
        }
    }
}

/// Writes one metric family; nothing at all if it has no series.
fn family<'a, S: EncodeLabelSet>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    ty: MetricType,
    rows: impl IntoIterator<Item = (S, V<'a>)>,
) -> fmt::Result {
    let mut rows = rows.into_iter().peekable();
    if rows.peek().is_none() {
        return Ok(());
    }
    // Registered metrics get a full stop appended by the encoder; these get
    // one too, so every help text reads the same.
    let help = format!("{help}.");
    let mut m = enc.encode_descriptor(name, &help, None, ty)?;
    for (labels, v) in rows {
        v.encode(m.encode_family(&labels)?, ty)?;
    }
    Ok(())
}

/// Where families are written.
type Enc<'a, 'b> = &'a mut DescriptorEncoder<'b>;

/// The event counters and histograms of each pool open here, locked for
/// the scrape.
type Counters<'a> = [(&'a str, MutexGuard<'a, PoolStats>)];

/// The state gauges of each pool open here.
type Gauges = [(String, PoolGauges)];

impl Collector for PoolsCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        let open = self
            .registry
            .get()
            .and_then(Weak::upgrade)
            .map(|r| r.open_pools())
            .unwrap_or_default();
        // Gauges first, one pool lock at a time, none held while encoding.
        let gauges: Vec<(String, PoolGauges)> = open
            .iter()
            .map(|p| {
                let gauges = p.read_recent(|state| PoolGauges::of(state, &self.options));
                (p.id().to_owned(), gauges)
            })
            .collect();
        // Counters of pools open here: a pool that moved to another replica
        // is reported there.
        let stats: Vec<(Arc<str>, Arc<Mutex<PoolStats>>)> = {
            let map = lock(&self.stats);
            gauges
                .iter()
                .filter_map(|(id, _)| map.get_key_value(id.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        let guards: Vec<(&str, MutexGuard<'_, PoolStats>)> =
            stats.iter().map(|(id, s)| (&**id, lock(s))).collect();
        let enc = &mut enc;

        tasks_enqueued(enc, &guards)?;
        tasks_completed(enc, &guards)?;
        tasks_assigned(enc, &guards)?;
        tasks_preempted(enc, &guards)?;
        tasks_reprioritized(enc, &guards)?;
        account_spend_seconds(enc, &guards)?;
        account_label_spend_seconds(enc, &guards)?;

        account_balance_seconds(enc, &gauges)?;
        queue_size(enc, &gauges)?;
        tasks(enc, &gauges)?;
        account_tasks(enc, &gauges)?;
        bots(enc, &gauges)?;
        task_labels(enc, &gauges)?;
        bot_labels(enc, &gauges)?;

        batch_calls(enc, &guards)?;
        batch_apply_seconds(enc, &guards)?;
        store_append_seconds(enc, &guards)?;
        store_append_bytes(enc, &guards)?;
        snapshot_bytes(enc, &guards)?;
        snapshot_encode_seconds(enc, &guards)?;
        snapshot_write_seconds(enc, &guards)?;
        snapshot_failures(enc, &guards)?;
        pool_writer_panics(enc, &guards)?;
        pools(enc, gauges.len())?;

        let registry = self.registry.get().and_then(Weak::upgrade);
        if let Some(r) = &registry {
            let waiting = r.waiting_calls();
            pool_waiting_calls(enc, &waiting)?;
            queue_capacity(enc, &waiting)?;
            pool_unserved(enc, &waiting, &r.settlement())?;
            pool_ownership_changes(enc, &r.ownership_changes())?;
        }

        event_log_written(enc, &self.sinks)?;
        event_log_dropped(enc, &self.sinks)?;
        event_log_errors(enc, &self.sinks)?;
        event_log_queued(enc, &self.sinks)?;
        Ok(())
    }
}

/// Every account of every pool, with its pool: the rows of the event
/// counters.
fn accounts<'a>(
    guards: &'a Counters<'_>,
) -> impl Iterator<Item = (&'a str, &'a str, &'a AccountStats)> {
    guards
        .iter()
        .flat_map(|(p, s)| s.accounts.iter().map(move |(a, st)| (*p, &**a, st)))
}

/// One histogram of each pool.
fn per_pool<'a>(
    guards: &'a Counters<'_>,
    f: fn(&PoolStats) -> &Hist,
) -> impl Iterator<Item = ([(&'static str, &'a str); 1], V<'a>)> {
    guards
        .iter()
        .map(move |(p, s)| ([("pool", *p)], V::H(f(s))))
}

/// One counter of each event-log sink.
fn sink(
    sinks: &[Arc<SinkStats>],
    f: fn(&SinkStats) -> u64,
) -> impl Iterator<Item = ([(&'static str, &'static str); 1], V<'static>)> {
    sinks.iter().map(move |s| ([("sink", s.sink)], V::U(f(s))))
}

fn tasks_enqueued(enc: Enc<'_, '_>, guards: &Counters<'_>) -> fmt::Result {
    family(
        enc,
        "qscheduler_tasks_enqueued",
        "Tasks Swarming reported queued (SWARMING_ENQUEUED events)",
        Counter,
        accounts(guards).map(|(p, a, s)| ([("pool", p), ("account", a)], V::U(s.enqueued))),
    )
}

fn tasks_completed(enc: Enc<'_, '_>, guards: &Counters<'_>) -> fmt::Result {
    family(
        enc,
        "qscheduler_tasks_completed",
        "Tasks the scheduler considers finished (SWARMING_COMPLETED events), by reason",
        Counter,
        accounts(guards).flat_map(|(p, a, s)| {
            (1..REASONS.len())
                .filter(|r| s.completed[*r] > 0)
                .map(move |r| {
                    (
                        [("pool", p), ("account", a), ("reason", REASONS[r])],
                        V::U(s.completed[r]),
                    )
                })
        }),
    )
}

fn tasks_assigned(enc: Enc<'_, '_>, guards: &Counters<'_>) -> fmt::Result {
    family(
        enc,
        "qscheduler_tasks_assigned",
        "Tasks given a bot (QSCHEDULER_ASSIGNED events)",
        Counter,
        accounts(guards).flat_map(|(p, a, s)| {
            (0..4).filter(|i| s.assigned[*i] > 0).map(move |i| {
                (
                    [
                        ("pool", p),
                        ("account", a),
                        ("preempting", bool_str(i >= 2)),
                        ("provision_required", bool_str(i % 2 == 1)),
                    ],
                    V::U(s.assigned[i]),
                )
            })
        }),
    )
}

fn tasks_preempted(enc: Enc<'_, '_>, guards: &Counters<'_>) -> fmt::Result {
    family(
        enc,
        "qscheduler_tasks_preempted",
        "Running tasks that lost their bot (QSCHEDULER_PREEMPTED events)",
        Counter,
        accounts(guards)
            .filter(|(_, _, s)| s.preempted > 0)
            .map(|(p, a, s)| ([("pool", p), ("account", a)], V::U(s.preempted))),
    )
}

fn tasks_reprioritized(enc: Enc<'_, '_>, guards: &Counters<'_>) -> fmt::Result {
    family(
        enc,
        "qscheduler_tasks_reprioritized",
        "Running tasks moved to another priority (QSCHEDULER_REPRIORITIZED events)",
        Counter,
        accounts(guards)
            .filter(|(_, _, s)| s.reprioritized > 0)
            .map(|(p, a, s)| ([("pool", p), ("account", a)], V::U(s.reprioritized))),
    )
}

fn account_spend_seconds(enc: Enc<'_, '_>, guards: &Counters<'_>) -> fmt::Result {
    family(
        enc,
        "qscheduler_account_spend_seconds",
        "Quota spent by completed tasks of configured accounts, per priority",
        Counter,
        accounts(guards)
            .filter(|(_, _, s)| s.completed.iter().any(|c| *c > 0))
            .flat_map(|(p, a, s)| {
                (0..NUM_PRIORITIES).map(move |i| {
                    (
                        [("pool", p), ("account", a), ("priority", PRIORITY[i])],
                        V::F(s.spend[i]),
                    )
                })
            }),
    )
}

fn account_label_spend_seconds(enc: Enc<'_, '_>, guards: &Counters<'_>) -> fmt::Result {
    family(
        enc,
        "qscheduler_account_label_spend_seconds",
        "Quota spent by completed tasks, per base label of the task and priority",
        Counter,
        accounts(guards).flat_map(|(p, a, s)| {
            s.label_spend.iter().flat_map(move |(l, v)| {
                (0..NUM_PRIORITIES).map(move |i| {
                    (
                        [
                            ("pool", p),
                            ("account", a),
                            ("label", &**l),
                            ("priority", PRIORITY[i]),
                        ],
                        V::F(v[i]),
                    )
                })
            })
        }),
    )
}

fn account_balance_seconds(enc: Enc<'_, '_>, gauges: &Gauges) -> fmt::Result {
    family(
        enc,
        "qscheduler_account_balance_seconds",
        "Quota balance of each configured account, per priority",
        Gauge,
        gauges.iter().flat_map(|(p, g)| {
            g.balances.iter().flat_map(move |(a, b)| {
                (0..NUM_PRIORITIES).map(move |i| {
                    (
                        [
                            ("pool", p.as_str()),
                            ("account", a.as_str()),
                            ("priority", PRIORITY[i]),
                        ],
                        V::F(f64::from(b[i])),
                    )
                })
            })
        }),
    )
}

fn queue_size(enc: Enc<'_, '_>, gauges: &Gauges) -> fmt::Result {
    family(
        enc,
        "qscheduler_queue_size",
        "Queued (waiting) tasks",
        Gauge,
        gauges
            .iter()
            .map(|(p, g)| ([("pool", p.as_str())], V::U(g.queued))),
    )
}

fn tasks(enc: Enc<'_, '_>, gauges: &Gauges) -> fmt::Result {
    family(
        enc,
        "qscheduler_tasks",
        "Tasks by state; running ones by the priority they run at, waiting ones \
         always under priority 5 (their priority is decided only when they are matched)",
        Gauge,
        gauges.iter().flat_map(|(p, g)| {
            std::iter::once((
                [
                    ("pool", p.as_str()),
                    ("state", "waiting"),
                    ("priority", PRIORITY[FREE_PRIORITY as usize]),
                ],
                V::U(g.queued),
            ))
            .chain(g.running.iter().enumerate().map(move |(i, n)| {
                (
                    [
                        ("pool", p.as_str()),
                        ("state", "running"),
                        ("priority", PRIORITY[i]),
                    ],
                    V::U(*n),
                )
            }))
        }),
    )
}

fn account_tasks(enc: Enc<'_, '_>, gauges: &Gauges) -> fmt::Result {
    family(
        enc,
        "qscheduler_account_tasks",
        "Tasks per account (accounts the pool does not configure under account=\"\"): \
         waiting ones under priority 5, running ones by the priority they run at",
        Gauge,
        gauges.iter().flat_map(|(p, g)| {
            g.account_tasks
                .iter()
                .flat_map(move |(a, waiting, running)| {
                    std::iter::once((
                        [
                            ("pool", p.as_str()),
                            ("account", a.as_str()),
                            ("state", "waiting"),
                            ("priority", PRIORITY[FREE_PRIORITY as usize]),
                        ],
                        V::U(*waiting),
                    ))
                    .chain(running.iter().enumerate().map(move |(i, n)| {
                        (
                            [
                                ("pool", p.as_str()),
                                ("account", a.as_str()),
                                ("state", "running"),
                                ("priority", PRIORITY[i]),
                            ],
                            V::U(*n),
                        )
                    }))
                })
        }),
    )
}

fn bots(enc: Enc<'_, '_>, gauges: &Gauges) -> fmt::Result {
    family(
        enc,
        "qscheduler_bots",
        "Bots by state; running ones by the priority of their task, idle ones under priority 5",
        Gauge,
        gauges.iter().flat_map(|(p, g)| {
            std::iter::once((
                [
                    ("pool", p.as_str()),
                    ("state", "idle"),
                    ("priority", PRIORITY[FREE_PRIORITY as usize]),
                ],
                V::U(g.idle),
            ))
            .chain(g.running.iter().enumerate().map(move |(i, n)| {
                (
                    [
                        ("pool", p.as_str()),
                        ("state", "running"),
                        ("priority", PRIORITY[i]),
                    ],
                    V::U(*n),
                )
            }))
        }),
    )
}

fn task_labels(enc: Enc<'_, '_>, gauges: &Gauges) -> fmt::Result {
    family(
        enc,
        "qscheduler_task_labels",
        "Tasks having each base label in use: waiting (running=false) and running (running=true)",
        Gauge,
        gauges.iter().flat_map(|(p, g)| {
            g.labels.iter().flat_map(move |(l, c)| {
                [false, true].into_iter().map(move |r| {
                    (
                        [
                            ("pool", p.as_str()),
                            ("label", &**l),
                            ("running", bool_str(r)),
                        ],
                        V::U(c[usize::from(r)]),
                    )
                })
            })
        }),
    )
}

fn bot_labels(enc: Enc<'_, '_>, gauges: &Gauges) -> fmt::Result {
    family(
        enc,
        "qscheduler_bot_labels",
        "Bots having each base label in use by tasks: idle (running=false) and running (running=true)",
        Gauge,
        gauges.iter().flat_map(|(p, g)| {
            g.labels.iter().flat_map(move |(l, c)| {
                [false, true].into_iter().map(move |r| {
                    (
                        [
                            ("pool", p.as_str()),
                            ("label", &**l),
                            ("running", bool_str(r)),
                        ],
                        V::U(c[2 + usize::from(r)]),
                    )
                })
            })
        }),
    )
}

fn batch_calls(enc: Enc<'_, '_>, guards: &Counters<'_>) -> fmt::Result {
    family(
        enc,
        "qscheduler_batch_calls",
        "Calls (NotifyTasks, AssignTasks, admin) per committed batch",
        Hg,
        per_pool(guards, |s| &s.batch_calls),
    )
}

fn batch_apply_seconds(enc: Enc<'_, '_>, guards: &Counters<'_>) -> fmt::Result {
    family(
        enc,
        "qscheduler_batch_apply_seconds",
        "Time to apply a committed batch to the pool (scheduling included)",
        Hg,
        per_pool(guards, |s| &s.apply_seconds),
    )
}

fn store_append_seconds(enc: Enc<'_, '_>, guards: &Counters<'_>) -> fmt::Result {
    family(
        enc,
        "qscheduler_store_append_seconds",
        "Time until a batch's log write was durable",
        Hg,
        per_pool(guards, |s| &s.append_seconds),
    )
}

fn store_append_bytes(enc: Enc<'_, '_>, guards: &Counters<'_>) -> fmt::Result {
    family(
        enc,
        "qscheduler_store_append_bytes",
        "Bytes written to the pool's log per batch",
        Hg,
        per_pool(guards, |s| &s.append_bytes),
    )
}

fn snapshot_bytes(enc: Enc<'_, '_>, guards: &Counters<'_>) -> fmt::Result {
    family(
        enc,
        "qscheduler_snapshot_bytes",
        "Size of the pool's latest snapshot (its serialized state)",
        Gauge,
        guards
            .iter()
            .filter_map(|(p, s)| Some(([("pool", *p)], V::U(s.snapshot_bytes?)))),
    )
}

fn snapshot_encode_seconds(enc: Enc<'_, '_>, guards: &Counters<'_>) -> fmt::Result {
    family(
        enc,
        "qscheduler_snapshot_encode_seconds",
        "Time to encode a snapshot (the pool's writer waits for it)",
        Hg,
        per_pool(guards, |s| &s.snapshot_encode)
            .filter(|(_, v)| matches!(v, V::H(h) if h.count > 0)),
    )
}

fn snapshot_write_seconds(enc: Enc<'_, '_>, guards: &Counters<'_>) -> fmt::Result {
    family(
        enc,
        "qscheduler_snapshot_write_seconds",
        "Time to write a snapshot (in the background)",
        Hg,
        per_pool(guards, |s| &s.snapshot_write)
            .filter(|(_, v)| matches!(v, V::H(h) if h.count > 0)),
    )
}

fn snapshot_failures(enc: Enc<'_, '_>, guards: &Counters<'_>) -> fmt::Result {
    family(
        enc,
        "qscheduler_snapshot_failures",
        "Snapshot writes that failed (retried later)",
        Counter,
        guards
            .iter()
            .map(|(p, s)| ([("pool", *p)], V::U(s.snapshot_failures))),
    )
}

fn pool_writer_panics(enc: Enc<'_, '_>, guards: &Counters<'_>) -> fmt::Result {
    family(
        enc,
        "qscheduler_pool_writer_panics",
        "Panics of the pool's writer (a bug): the pool was closed and reopened from its log",
        Counter,
        guards
            .iter()
            .map(|(p, s)| ([("pool", *p)], V::U(s.writer_panics))),
    )
}

fn pools(enc: Enc<'_, '_>, n: usize) -> fmt::Result {
    family(
        enc,
        "qscheduler_pools",
        "Pools this server runs",
        Gauge,
        [([("", ""); 0], V::U(n as u64))],
    )
}

fn pool_waiting_calls(enc: Enc<'_, '_>, waiting: &[(String, usize, usize)]) -> fmt::Result {
    family(
        enc,
        "qscheduler_pool_waiting_calls",
        "Calls waiting for the pool's writer",
        Gauge,
        waiting
            .iter()
            .map(|(p, n, _)| ([("pool", p.as_str())], V::U(*n as u64))),
    )
}

fn queue_capacity(enc: Enc<'_, '_>, waiting: &[(String, usize, usize)]) -> fmt::Result {
    family(
        enc,
        "qscheduler_queue_capacity",
        "Most calls that may wait for the pool's writer (batching.queue_capacity); \
         beyond it callers get RESOURCE_EXHAUSTED",
        Gauge,
        waiting
            .iter()
            .map(|(p, _, c)| ([("pool", p.as_str())], V::U(*c as u64))),
    )
}

fn pool_unserved(
    enc: Enc<'_, '_>,
    waiting: &[(String, usize, usize)],
    settlement: &Settlement,
) -> fmt::Result {
    // 0 for the pools served here, 1 for those nobody serves; the
    // pools other replicas serve are theirs to report.
    let mut unserved: BTreeMap<&str, u64> =
        waiting.iter().map(|(p, _, _)| (p.as_str(), 0)).collect();
    for p in &settlement.unserved {
        unserved.insert(p.as_str(), 1);
    }
    family(
        enc,
        "qscheduler_pool_unserved",
        "1 for a stored pool nobody served at this replica's last adoption round \
         (unowned, or failed to recover), 0 for a pool served here",
        Gauge,
        unserved.iter().map(|(p, v)| ([("pool", *p)], V::U(*v))),
    )
}

fn pool_ownership_changes(enc: Enc<'_, '_>, changes: &[(String, OwnershipChanges)]) -> fmt::Result {
    family(
        enc,
        "qscheduler_pool_ownership_changes",
        "Pools opened (adopted), given back (handed_off) or stopped without being \
         given back (lost) at this replica",
        Counter,
        changes.iter().flat_map(|(p, c)| {
            [
                ("adopted", c.adopted),
                ("handed_off", c.handed_off),
                ("lost", c.lost),
            ]
            .into_iter()
            .map(move |(change, n)| ([("pool", p.as_str()), ("change", change)], V::U(n)))
        }),
    )
}

fn event_log_written(enc: Enc<'_, '_>, sinks: &[Arc<SinkStats>]) -> fmt::Result {
    family(
        enc,
        "qscheduler_event_log_written",
        "Task events written, by sink (files, postgres)",
        Counter,
        sink(sinks, |s| s.written.load(Ordering::Relaxed)),
    )
}

fn event_log_dropped(enc: Enc<'_, '_>, sinks: &[Arc<SinkStats>]) -> fmt::Result {
    family(
        enc,
        "qscheduler_event_log_dropped",
        "Task events lost because the sink fell behind (oldest dropped) or failed",
        Counter,
        sink(sinks, |s| s.dropped.load(Ordering::Relaxed)),
    )
}

fn event_log_errors(enc: Enc<'_, '_>, sinks: &[Arc<SinkStats>]) -> fmt::Result {
    family(
        enc,
        "qscheduler_event_log_errors",
        "Failed event log writes, by sink",
        Counter,
        sink(sinks, |s| s.errors.load(Ordering::Relaxed)),
    )
}

fn event_log_queued(enc: Enc<'_, '_>, sinks: &[Arc<SinkStats>]) -> fmt::Result {
    family(
        enc,
        "qscheduler_event_log_queued",
        "Task events waiting to be written, by sink",
        Gauge,
        sink(sinks, |s| s.queued.load(Ordering::Relaxed)),
    )
}
