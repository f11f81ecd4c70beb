//! Prometheus metrics, served on the server's own port (`/metrics` by
//! default): every metric of the original's ts_mon set (reference §11.1)
//! under Prometheus names, labelled by `pool` rather than `scheduler_id`,
//! plus RPC latencies, batching, storage, snapshot and event-log figures.
//!
//! Three kinds of sources, each read the cheapest way:
//!
//! * **event counters** (tasks enqueued, assigned, completed, ...; account
//!   spend) are added up from the events of each committed batch, in the
//!   pool writer's [`Observer`] call — a few map updates per event;
//! * **state gauges** (queue, running and idle by priority, balances, label
//!   utilisation) are computed when Prometheus scrapes, from the committed
//!   state (a large pool's follower copy, which may be a few batches
//!   behind), so batches pay nothing for them and they can never be stale:
//!   a pool or account that no longer exists has no series;
//! * **histograms** of batches (calls, append latency and bytes, apply
//!   latency) and snapshots come from [`CommitInfo`] and [`SnapshotInfo`];
//!   RPC latencies from [`crate::rpc_layer`].
//!
//! A scrape walks each pool's queued requests and bots (label sets are
//! shared, so labels are counted once per distinct set): O(tasks + bots)
//! per pool and scrape. For a small pool it holds the pool's read lock, so
//! the writer waits that long; a large pool is read from its follower copy
//! and its writer does not wait. `label_metrics = false` leaves only the
//! bots walk.
//!
//! Per-account series exist only for the accounts configured in a pool;
//! tasks of any other account (or of none) are counted under
//! `account=""`, so the number of series is set by the configuration, not
//! by the tags callers put on tasks.
//!
//! Deleted pools and accounts disappear from the output (the original kept
//! their last values until a restart): a pool's series go when the
//! registry reports its deletion, an account's counters when a commit shows
//! it is no longer configured.
//!
//! Library choice: `prometheus-client` rather than the `metrics` facade.
//! The facade's recorder is process-global, so two servers in one process
//! (the integration tests run several) would share and mix their series;
//! and its exporter can neither compute series at scrape time nor remove
//! one label value's series. `prometheus-client` has explicit registries
//! and a [`Collector`](prometheus_client::collector::Collector) hook
//! called on each scrape, which is exactly the shape needed here.
//!
//! This module keeps the figures; `families.rs` writes them, one function
//! per metric family.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use prometheus_client::encoding::{EncodeLabelSet, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry as PromRegistry;
use qscheduler_core::{EventKind, FREE_PRIORITY, NUM_PRIORITIES, Pool, PoolEvent};

use crate::eventlog::SinkStats;
use crate::pool::{CommitInfo, Observer, SnapshotInfo};
use crate::registry::Registry;

mod families;

/// What to export, and where.
#[derive(Clone, Debug)]
pub struct MetricsOptions {
    /// Serve the endpoint at all.
    pub enabled: bool,
    /// Its HTTP path.
    pub path: String,
    /// Export per-label series (label utilisation gauges, spend per label).
    pub label_metrics: bool,
    /// Most labels per pool in the label utilisation gauges; the ones with
    /// the most tasks are kept.
    pub max_labels_per_pool: usize,
}

impl Default for MetricsOptions {
    fn default() -> Self {
        MetricsOptions {
            enabled: true,
            path: "/metrics".to_owned(),
            label_metrics: true,
            max_labels_per_pool: 1000,
        }
    }
}

/// The Prometheus text format's content type.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Latency buckets, seconds: from half a millisecond (a batch's fsync) to a
/// minute (the default request timeout).
pub(crate) const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];
const CALLS_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
];
const BYTES_BUCKETS: &[f64] = &[
    256.0,
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262144.0,
    1048576.0,
    4194304.0,
    16777216.0,
    67108864.0,
    268435456.0,
];

/// Labels of the RPC latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RpcLabels {
    pub service: String,
    pub method: String,
    pub code: &'static str,
    pub transport: &'static str,
}

pub(crate) type RpcHistograms = Family<RpcLabels, Histogram, fn() -> Histogram>;

fn rpc_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS.iter().copied())
}

/// The server's metrics: a registry to render, and the observer that feeds
/// it.
pub struct Metrics {
    registry: PromRegistry,
    rpc: RpcHistograms,
    pools: Arc<PoolsCollector>,
    insecure: prometheus_client::metrics::gauge::Gauge,
    admin_calls: crate::audit::AdminCalls,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Metrics with these options, reporting the given event-log sinks.
    pub fn new(options: MetricsOptions, sinks: Vec<Arc<SinkStats>>) -> Arc<Metrics> {
        let mut registry = PromRegistry::default();
        let rpc: RpcHistograms = Family::new_with_constructor(rpc_histogram);
        registry.register(
            "qscheduler_rpc_duration_seconds",
            "Time to answer an RPC, by service, method, gRPC status code and transport (grpc or prpc)",
            rpc.clone(),
        );
        let pools = Arc::new(PoolsCollector {
            options,
            registry: OnceLock::new(),
            stats: Mutex::new(BTreeMap::new()),
            sinks,
        });
        registry.register_collector(Box::new(pools.clone()));
        let insecure = prometheus_client::metrics::gauge::Gauge::default();
        registry.register(
            "qscheduler_insecure",
            "1 when the server serves a non-loopback address without [auth] (serve --insecure)",
            insecure.clone(),
        );
        let admin_calls = crate::audit::AdminCalls::default();
        registry.register(
            "qscheduler_admin_calls",
            "Administrative calls (QSchedulerAdmin), by method and gRPC status code",
            admin_calls.clone(),
        );
        Arc::new(Metrics {
            registry,
            rpc,
            pools,
            insecure,
            admin_calls,
        })
    }

    /// Lets scrapes read the pools' committed state.
    pub fn attach(&self, registry: &Arc<Registry>) {
        let _ = self.pools.registry.set(Arc::downgrade(registry));
    }

    /// `qscheduler_admin_calls_total`.
    pub fn admin_calls(&self) -> crate::audit::AdminCalls {
        self.admin_calls.clone()
    }

    /// Sets the `qscheduler_insecure` gauge.
    pub fn set_insecure(&self, insecure: bool) {
        self.insecure.set(i64::from(insecure));
    }

    pub(crate) fn rpc_histograms(&self) -> RpcHistograms {
        self.rpc.clone()
    }

    /// The whole exposition, in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 << 10);
        // Writing into a String cannot fail; a collector error would only
        // truncate the output.
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            tracing::warn!(error = %e, "rendering metrics failed");
        }
        out
    }

    /// An axum router serving the metrics at `path`.
    pub fn router(self: &Arc<Self>, path: &str) -> axum::Router {
        let me = self.clone();
        axum::Router::new().route(
            path,
            axum::routing::get(move || {
                let me = me.clone();
                async move {
                    // Gauges walk pool states: keep that off the async
                    // workers.
                    let body = tokio::task::spawn_blocking(move || me.render())
                        .await
                        .unwrap_or_default();
                    ([(http::header::CONTENT_TYPE, CONTENT_TYPE)], body)
                }
            }),
        )
    }
}

impl Observer for Metrics {
    fn committed(&self, pool: &str, commit: &CommitInfo<'_>) {
        self.pools.committed(pool, commit);
    }

    fn snapshot(&self, pool: &str, snapshot: &SnapshotInfo) {
        let stats = self.pools.pool_stats(pool);
        let mut s = lock(&stats);
        match snapshot.write_latency {
            Some(w) => {
                s.snapshot_bytes = Some(snapshot.bytes);
                s.snapshot_encode
                    .observe(snapshot.encode_latency.as_secs_f64());
                s.snapshot_write.observe(w.as_secs_f64());
            }
            None => s.snapshot_failures += 1,
        }
    }

    fn writer_panicked(&self, pool: &str) {
        lock(&self.pools.stats_of(pool)).writer_panics += 1;
    }

    fn pool_deleted(&self, pool: &str) {
        lock(&self.pools.stats).remove(pool);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

// ---- per-pool state kept between scrapes ----

/// A fixed-bucket histogram updated under its pool's lock.
#[derive(Clone, Debug)]
struct Hist {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Hist {
    fn new(bounds: &'static [f64]) -> Hist {
        Hist {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        if let Some(c) = self.counts.get_mut(i) {
            *c += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    fn encode(&self, mut e: MetricEncoder<'_>) -> fmt::Result {
        let buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.counts.iter().copied())
            .collect();
        e.encode_histogram::<NoLabelSet>(self.sum, self.count, &buckets, None)
    }
}

/// Event counters of one account in one pool.
#[derive(Debug)]
struct AccountStats {
    enqueued: u64,
    /// By `CompletedReason` value (1..=5; 0 unused).
    completed: [u64; 6],
    /// By `preempting * 2 + provision_required`.
    assigned: [u64; 4],
    preempted: u64,
    reprioritized: u64,
    /// Seconds of quota spent per level, from completed tasks' costs.
    spend: [f64; NUM_PRIORITIES],
    /// The same per base label of the completed tasks.
    label_spend: BTreeMap<Arc<str>, [f64; NUM_PRIORITIES]>,
}

impl Default for AccountStats {
    fn default() -> Self {
        AccountStats {
            enqueued: 0,
            completed: [0; 6],
            assigned: [0; 4],
            preempted: 0,
            reprioritized: 0,
            spend: [0.0; NUM_PRIORITIES],
            label_spend: BTreeMap::new(),
        }
    }
}

#[derive(Debug)]
struct PoolStats {
    accounts: BTreeMap<Arc<str>, AccountStats>,
    /// Accounts configured after the last commit, to notice deletions.
    configured: BTreeSet<Box<str>>,
    batch_calls: Hist,
    append_seconds: Hist,
    append_bytes: Hist,
    apply_seconds: Hist,
    snapshot_bytes: Option<u64>,
    snapshot_encode: Hist,
    snapshot_write: Hist,
    snapshot_failures: u64,
    writer_panics: u64,
}

impl Default for PoolStats {
    fn default() -> Self {
        PoolStats {
            accounts: BTreeMap::new(),
            configured: BTreeSet::new(),
            batch_calls: Hist::new(CALLS_BUCKETS),
            append_seconds: Hist::new(LATENCY_BUCKETS),
            append_bytes: Hist::new(BYTES_BUCKETS),
            apply_seconds: Hist::new(LATENCY_BUCKETS),
            snapshot_bytes: None,
            snapshot_encode: Hist::new(LATENCY_BUCKETS),
            snapshot_write: Hist::new(LATENCY_BUCKETS),
            snapshot_failures: 0,
            writer_panics: 0,
        }
    }
}

impl PoolStats {
    fn account(&mut self, id: &Arc<str>) -> &mut AccountStats {
        self.accounts.entry(id.clone()).or_default()
    }

    fn count(&mut self, pe: &PoolEvent, per_label: bool) {
        let e = &pe.event;
        // Only configured accounts get series of their own: account ids
        // come from task tags, which any caller writes, so a series per
        // id would let traffic, not configuration, decide how many series
        // there are. Every other account is counted under the empty
        // account, which cannot be configured.
        let a = if e.account_valid {
            self.account(&e.account_id)
        } else {
            self.accounts.entry(Arc::from("")).or_default()
        };
        match &e.kind {
            EventKind::Enqueued { .. } => a.enqueued += 1,
            EventKind::Completed { reason, .. } => {
                if let Some(c) = a.completed.get_mut(*reason as usize) {
                    *c += 1;
                }
                // Spend is final only at completion (a preempted task's is
                // refunded), and only a configured account spends.
                if e.account_valid
                    && let Some(cost) = &e.cost
                {
                    for (p, v) in cost.0.iter().enumerate() {
                        a.spend[p] += f64::from(*v);
                    }
                    if per_label {
                        for l in e.base_labels.iter() {
                            let s = a
                                .label_spend
                                .entry(l.clone())
                                .or_insert([0.0; NUM_PRIORITIES]);
                            for (p, v) in cost.0.iter().enumerate() {
                                s[p] += f64::from(*v);
                            }
                        }
                    }
                }
            }
            EventKind::Assigned {
                preempting,
                provision_required,
                ..
            } => a.assigned[usize::from(*preempting) * 2 + usize::from(*provision_required)] += 1,
            EventKind::Preempted { .. } => a.preempted += 1,
            EventKind::Reprioritized { .. } => a.reprioritized += 1,
            EventKind::Unassigned => {}
        }
    }

    /// Drops the counters of accounts that were configured at the last
    /// commit and are not any more.
    fn forget_deleted_accounts(&mut self, pool: &Pool) {
        let mut n = 0;
        let mut same = true;
        for (id, _, _) in pool.scheduler().accounts() {
            n += 1;
            same = same && self.configured.contains(id);
        }
        if same && n == self.configured.len() {
            return;
        }
        let now: BTreeSet<Box<str>> = pool
            .scheduler()
            .accounts()
            .map(|(id, _, _)| Box::from(id))
            .collect();
        for gone in self.configured.difference(&now) {
            self.accounts.remove(&**gone);
        }
        self.configured = now;
    }
}

/// Everything per pool, and the scrape-time collector.
struct PoolsCollector {
    options: MetricsOptions,
    registry: OnceLock<Weak<Registry>>,
    stats: Mutex<BTreeMap<Arc<str>, Arc<Mutex<PoolStats>>>>,
    sinks: Vec<Arc<SinkStats>>,
}

impl fmt::Debug for PoolsCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolsCollector").finish_non_exhaustive()
    }
}

impl PoolsCollector {
    fn stats_of(&self, pool: &str) -> Arc<Mutex<PoolStats>> {
        self.pool_stats(pool)
    }

    fn pool_stats(&self, pool: &str) -> Arc<Mutex<PoolStats>> {
        let mut map = lock(&self.stats);
        if let Some(s) = map.get(pool) {
            return s.clone();
        }
        let s = Arc::new(Mutex::new(PoolStats::default()));
        map.insert(Arc::from(pool), s.clone());
        s
    }

    fn committed(&self, pool: &str, c: &CommitInfo<'_>) {
        let stats = self.pool_stats(pool);
        let mut s = lock(&stats);
        s.batch_calls.observe(c.calls as f64);
        s.append_seconds.observe(c.append_latency.as_secs_f64());
        s.append_bytes.observe(c.bytes as f64);
        s.apply_seconds.observe(c.apply_latency.as_secs_f64());
        for e in c.events {
            s.count(e, self.options.label_metrics);
        }
        s.forget_deleted_accounts(c.pool);
    }
}

/// Gauges of one pool, computed from its committed state at scrape time.
struct PoolGauges {
    queued: u64,
    /// Running tasks (= running bots) by priority 0..=5.
    running: [u64; FREE_PRIORITY as usize + 1],
    idle: u64,
    balances: Vec<(String, [f32; NUM_PRIORITIES])>,
    /// Per configured account (others under ""): waiting tasks, and running
    /// tasks by the priority they run at.
    account_tasks: Vec<(String, u64, [u64; FREE_PRIORITY as usize + 1])>,
    /// Per label: waiting tasks, running tasks, idle bots, running bots.
    labels: Vec<(Arc<str>, [u64; 4])>,
}

impl PoolGauges {
    fn of(pool: &Pool, options: &MetricsOptions) -> PoolGauges {
        let s = pool.scheduler();
        let workers = s.worker_views();
        let mut running = [0u64; FREE_PRIORITY as usize + 1];
        for w in &workers {
            if let Some(r) = &w.running
                && let Some(c) = running.get_mut(usize::from(r.priority))
            {
                *c += 1;
            }
        }
        let balances: Vec<(String, [f32; NUM_PRIORITIES])> = s
            .accounts()
            .map(|(id, _, b)| (id.to_owned(), b.0))
            .collect();
        // Configured accounts only (see the module docs): the rest under "".
        let mut per_account: std::collections::BTreeMap<String, (u64, [u64; 6])> = balances
            .iter()
            .map(|(id, _)| (id.clone(), (0, [0; 6])))
            .collect();
        fn entry<'a>(
            m: &'a mut std::collections::BTreeMap<String, (u64, [u64; 6])>,
            id: &str,
        ) -> &'a mut (u64, [u64; 6]) {
            let key = if m.contains_key(id) { id } else { "" };
            m.entry(key.to_owned()).or_default()
        }
        for (id, n) in s.queued_per_account() {
            entry(&mut per_account, id).0 += n;
        }
        for w in &workers {
            if let Some(r) = &w.running
                && let Some(c) = entry(&mut per_account, r.request.account)
                    .1
                    .get_mut(usize::from(r.priority))
            {
                *c += 1;
            }
        }
        let account_tasks = per_account
            .into_iter()
            .map(|(id, (waiting, running))| (id, waiting, running))
            .collect();
        let labels = if options.label_metrics {
            label_counts(pool, &workers, options.max_labels_per_pool)
        } else {
            Vec::new()
        };
        PoolGauges {
            queued: s.queued_len() as u64,
            running,
            idle: s.idle_len() as u64,
            balances,
            account_tasks,
            labels,
        }
    }
}

/// Label utilisation (reference §11.1): for every base label of a waiting
/// or running task, how many waiting and running tasks have it, and how
/// many idle and running bots. Queued requests are counted by the core per
/// distinct label set; running ones and bots (at most one per bot) here.
fn label_counts(
    pool: &Pool,
    workers: &[qscheduler_core::scheduler::WorkerView<'_>],
    max: usize,
) -> Vec<(Arc<str>, [u64; 4])> {
    let mut counts: HashMap<Arc<str>, [u64; 4]> = HashMap::new();
    for (l, n) in pool.scheduler().queued_base_label_counts() {
        counts.entry(l).or_default()[0] += n;
    }
    for w in workers {
        if let Some(r) = &w.running {
            for l in r.request.base_labels.iter() {
                counts.entry(l.clone()).or_default()[1] += 1;
            }
        }
    }
    // Bots count only towards labels that tasks use, as in the original:
    // bots carry many labels nobody asks for.
    for w in workers {
        let i = if w.running.is_some() { 3 } else { 2 };
        for l in w.labels.iter() {
            if let Some(c) = counts.get_mut(l) {
                c[i] += 1;
            }
        }
    }
    let mut v: Vec<(Arc<str>, [u64; 4])> = counts.into_iter().collect();
    if v.len() > max {
        v.sort_unstable_by(|a, b| {
            (b.1[0] + b.1[1])
                .cmp(&(a.1[0] + a.1[1]))
                .then(a.0.cmp(&b.0))
        });
        v.truncate(max);
    }
    v.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets() {
        let mut h = Hist::new(&[1.0, 10.0]);
        for v in [0.5, 1.0, 5.0, 50.0] {
            h.observe(v);
        }
        assert_eq!(h.counts, vec![2, 1, 1]);
        assert_eq!(h.count, 4);
        assert_eq!(h.sum, 56.5);
    }
}
