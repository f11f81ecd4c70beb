//! What a run produced, per account and level, as data.
//!
//! A [`RunReport`] is built by the [`crate::ledger::Ledger`] from the
//! scheduling events of one run (simulated, or recorded in the event log)
//! and is what every output shows: the tables, `-o json`, the HTML report,
//! and the `recorded` line of an extracted workload. Because a recorded run
//! and a simulated one are measured by the same code from the same kind of
//! events, they can be compared figure by figure.
//!
//! Must not: hold anything that depends on the machine or the wall clock;
//! the same run gives the same report, byte for byte.

use serde::{Deserialize, Serialize};

use crate::clock::ceil_div;

/// Figures of one account at one level (or over all levels).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LevelRow {
    /// `P0`..`P4`, `free`, or `all`.
    pub level: String,
    /// Tasks that started at this level (their first run); for `all`, every
    /// task that arrived, started or not.
    pub tasks: u64,
    /// Tasks still waiting at the end (only in `all`: they never started).
    pub waiting_at_end: u64,
    /// Median wait in seconds: time queued before running, summed over a
    /// task's spells in the queue (a preempted task queues again). Tasks
    /// still waiting at the end count with the time they waited so far.
    pub wait_p50_s: Option<f64>,
    /// 95th percentile wait (nearest rank), seconds.
    pub wait_p95_s: Option<f64>,
    /// 99th percentile wait (nearest rank), seconds.
    pub wait_p99_s: Option<f64>,
    /// Bot-seconds the scheduler counted as running this account's tasks at
    /// this level (from assignment to completion or preemption).
    pub used_bot_s: f64,
    /// What the charge rate at this level pays for over the window
    /// (`charge_rate[p] × duration`), when the account's configuration is
    /// known.
    pub entitled_bot_s: Option<f64>,
    /// `used_bot_s / entitled_bot_s`.
    pub used_of_entitled: Option<f64>,
    /// `used_bot_s` over the fleet's available bot-seconds.
    pub fleet_share: f64,
    /// Running tasks of this account preempted at this level.
    pub preempted: u64,
    /// Tasks of other accounts this account's tasks preempted, counted at
    /// the preempting task's level.
    pub preempting: u64,
    /// Running tasks promoted into this level.
    pub promoted: u64,
    /// Running tasks demoted out of this level.
    pub demoted: u64,
}

/// One account.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AccountReport {
    /// The account id (`""`: tasks without a `qs_account` tag).
    pub account: String,
    /// Its charge rates, when its configuration is known (none for a
    /// recorded run, or an account the configuration does not list).
    pub charge_rate: Option<Vec<f32>>,
    /// Rows for the levels where anything happened, best first.
    pub levels: Vec<LevelRow>,
    /// All levels together.
    pub all: LevelRow,
    /// Average bots busy with this account's tasks, per time bucket.
    pub usage_series: Vec<f64>,
    /// 95th percentile wait (seconds) of the tasks that arrived in each
    /// time bucket; `None` where none arrived.
    pub wait_p95_series: Vec<Option<f64>>,
}

/// The fleet as a whole.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FleetReport {
    /// Bots in the workload.
    pub bots: u64,
    /// Bot-seconds of availability over the window.
    pub available_bot_s: f64,
    /// Bot-seconds the scheduler counted as running a task.
    pub used_bot_s: f64,
    /// `used / available`.
    pub utilisation: f64,
    /// Utilisation per time bucket.
    pub utilisation_series: Vec<f64>,
    /// Bots available, on average, per time bucket.
    pub available_series: Vec<f64>,
}

/// Totals over every account.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    /// Tasks that arrived in the window.
    pub arrived: u64,
    /// Tasks that ran at least once.
    pub started: u64,
    /// Tasks still waiting at the end.
    pub waiting_at_end: u64,
    /// Tasks still running at the end.
    pub running_at_end: u64,
    /// Tasks cancelled (or otherwise gone) before they ever ran.
    pub gone_before_start: u64,
    /// Preemptions.
    pub preemptions: u64,
    /// Promotions.
    pub promotions: u64,
    /// Demotions.
    pub demotions: u64,
    /// Assignments withdrawn because their bot did not pick them up within
    /// ten minutes.
    pub pickup_timeouts: u64,
}

/// The simulation's own settings, for the record (absent for a recorded
/// run).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SimSettings {
    /// Simulation step, seconds.
    pub step_s: f64,
    /// Idle bots' poll interval, seconds.
    pub poll_s: f64,
    /// Interval at which preempted bots learn of their cancellation,
    /// seconds (0: at the next step).
    pub cancel_check_s: f64,
    /// Preemption disabled in the pool.
    pub disable_preemption: bool,
    /// Bot expiration applied, seconds.
    pub bot_expiration_s: f64,
    /// Batches applied to the pool (one per step with something to do).
    pub batches: u64,
    /// AssignTasks polls made by bots.
    pub polls: u64,
}

/// One run: recorded or simulated.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// What produced it: `recorded`, or the pools file of a simulation.
    pub label: String,
    /// The pool.
    pub pool: String,
    /// Start of the window (RFC 3339).
    pub start: String,
    /// Length of the window, seconds.
    pub duration_s: f64,
    /// Length of one time bucket of the series, seconds.
    pub bucket_s: f64,
    /// The simulation's settings (simulated runs only).
    pub simulation: Option<SimSettings>,
    /// The fleet.
    pub fleet: FleetReport,
    /// Totals.
    pub counts: Counts,
    /// Accounts, by id.
    pub accounts: Vec<AccountReport>,
}

/// The bucket length for a window: the smallest of a few round lengths
/// that gives at most 150 buckets.
pub fn bucket_for(duration_ms: i64) -> i64 {
    const CHOICES: [i64; 12] = [
        1_000, 5_000, 10_000, 30_000, 60_000, 300_000, 600_000, 900_000, 1_800_000, 3_600_000,
        7_200_000, 21_600_000,
    ];
    for c in CHOICES {
        if ceil_div(duration_ms, c) <= 150 {
            return c;
        }
    }
    ceil_div(duration_ms, 150).max(1)
}

/// The level name of `p` (5 = free).
pub fn level_name(p: usize) -> String {
    if p >= qscheduler_core::NUM_PRIORITIES {
        "free".to_owned()
    } else {
        format!("P{p}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_round_and_few() {
        assert_eq!(bucket_for(60_000), 1_000);
        assert_eq!(bucket_for(3_600_000), 30_000);
        assert_eq!(bucket_for(86_400_000), 600_000);
        assert_eq!(bucket_for(7 * 86_400_000), 7_200_000);
        assert!(bucket_for(1000 * 86_400_000) > 21_600_000);
        assert_eq!(level_name(0), "P0");
        assert_eq!(level_name(5), "free");
    }
}
