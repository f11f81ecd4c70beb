//! Accounts: quota configuration and balances.
//!
//! Balances, charge rates and costs are `f32`, as in the original, so that
//! an operator comparing the two systems sees the same numbers. Every
//! operation on them is written out in the same order as the reference
//! formula (reference §6.4).

use std::collections::BTreeMap;
use std::fmt;

/// Number of paid priority levels (P0 is the best).
pub const NUM_PRIORITIES: usize = 5;

/// The free level: tasks here run only on spare capacity and are never
/// charged.
pub const FREE_PRIORITY: u8 = NUM_PRIORITIES as u8;

/// Balance above which an account's lower-priority tasks are promoted.
pub const PROMOTE_THRESHOLD: f32 = 600.0;

/// Balance below which an account's tasks are demoted.
pub const DEMOTE_THRESHOLD: f32 = -600.0;

/// Largest accepted charge rate (bot-seconds per second). Bounds keep every
/// balance finite: no NaN or infinity can ever arise from valid configs.
pub const MAX_CHARGE_RATE: f32 = 1e9;

/// Largest accepted `max_charge_seconds`.
pub const MAX_CHARGE_SECONDS: f32 = 1e10;

/// Quota per priority level, in bot-seconds; also used for task costs.
#[derive(Clone, Copy, Default, PartialEq)]
pub struct Balance(pub [f32; NUM_PRIORITIES]);

impl Balance {
    /// All levels zero.
    pub const ZERO: Balance = Balance([0.0; NUM_PRIORITIES]);

    /// The best (lowest) level with a strictly positive balance, or
    /// [`FREE_PRIORITY`] if none.
    pub fn best_priority(&self) -> u8 {
        self.0
            .iter()
            .position(|&v| v > 0.0)
            .map_or(FREE_PRIORITY, |p| p as u8)
    }

    /// Lexicographic "strictly less": the first level where the two differ
    /// decides; equal vectors are not less. This is the preemption test
    /// `cost < balance` of reference §6.8.
    pub fn lex_less(&self, other: &Balance) -> bool {
        for (a, b) in self.0.iter().zip(other.0.iter()) {
            if a < b {
                return true;
            }
            if a > b {
                return false;
            }
        }
        false
    }

    /// Total order consistent with [`Balance::lex_less`] (values are always
    /// finite, and `-0.0` equals `0.0` as in the comparison above).
    pub fn lex_cmp(&self, other: &Balance) -> std::cmp::Ordering {
        if self.lex_less(other) {
            std::cmp::Ordering::Less
        } else if other.lex_less(self) {
            std::cmp::Ordering::Greater
        } else {
            std::cmp::Ordering::Equal
        }
    }

    /// Component-wise `self += other`.
    pub fn add(&mut self, other: &Balance) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a += *b;
        }
    }

    /// Component-wise `self -= other`.
    pub fn sub(&mut self, other: &Balance) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a -= *b;
        }
    }
}

impl fmt::Debug for Balance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.iter()).finish()
    }
}

/// Per-account quota policy (`protos.AccountConfig`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AccountConfig {
    /// Recharge rate per level, bot-seconds per second.
    pub charge_rate: [f32; NUM_PRIORITIES],
    /// The balance of level `p` recharges up to `charge_rate[p] * max_charge_seconds`.
    pub max_charge_seconds: f32,
    /// Maximum concurrently running tasks per group of identical labels that
    /// may start at a paid level; 0 means unlimited.
    pub max_fanout: i32,
    /// If set, tasks of this account never run at the free level.
    pub disable_free_tasks: bool,
    /// Free text for operators.
    pub description: String,
    /// Label key prefix → maximum concurrent tasks of this account per
    /// distinct worker label with that prefix.
    pub per_label_task_limits: BTreeMap<String, i32>,
}

/// Why an account configuration was rejected.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// More than five charge rates.
    #[error("charge_rate has {0} values; at most {NUM_PRIORITIES} are allowed (P0..P4)")]
    TooManyRates(usize),
    /// A rate that is negative, NaN, infinite or absurdly large.
    #[error(
        "charge_rate[{index}] = {value} must be a finite number between 0 and {MAX_CHARGE_RATE}"
    )]
    BadRate {
        /// Level of the bad rate.
        index: usize,
        /// The value given.
        value: f32,
    },
    /// `max_charge_seconds` out of range.
    #[error("max_charge_seconds = {0} must be a finite number between 0 and {MAX_CHARGE_SECONDS}")]
    BadMaxChargeSeconds(f32),
    /// Negative fanout.
    #[error("max_fanout = {0} must not be negative (0 means unlimited)")]
    BadFanout(i32),
    /// A per-label limit with an empty key or a negative limit.
    #[error(
        "per_label_task_limits[{key:?}] = {limit}: keys must be non-empty and limits non-negative"
    )]
    BadLabelLimit {
        /// The key.
        key: String,
        /// The limit.
        limit: i32,
    },
}

impl AccountConfig {
    /// Builds `charge_rate` from a list of up to five values (missing levels
    /// are zero), checking each.
    pub fn rates_from_slice(rates: &[f32]) -> Result<[f32; NUM_PRIORITIES], ConfigError> {
        if rates.len() > NUM_PRIORITIES {
            return Err(ConfigError::TooManyRates(rates.len()));
        }
        let mut out = [0.0; NUM_PRIORITIES];
        out[..rates.len()].copy_from_slice(rates);
        Ok(out)
    }

    /// Checks every value; the scheduler relies on these bounds to keep
    /// balances finite.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (index, &value) in self.charge_rate.iter().enumerate() {
            if !(0.0..=MAX_CHARGE_RATE).contains(&value) {
                return Err(ConfigError::BadRate { index, value });
            }
        }
        if !(0.0..=MAX_CHARGE_SECONDS).contains(&self.max_charge_seconds) {
            return Err(ConfigError::BadMaxChargeSeconds(self.max_charge_seconds));
        }
        if self.max_fanout < 0 {
            return Err(ConfigError::BadFanout(self.max_fanout));
        }
        for (key, &limit) in &self.per_label_task_limits {
            if key.is_empty() || limit < 0 {
                return Err(ConfigError::BadLabelLimit {
                    key: key.clone(),
                    limit,
                });
            }
        }
        Ok(())
    }

    /// One step of reference §6.4 for one account: charge `running[p]`
    /// tasks for `elapsed` seconds and recharge, capped.
    pub fn recharge(&self, balance: &mut Balance, elapsed: f32, running: &[u32; NUM_PRIORITIES]) {
        for (p, &n) in running.iter().enumerate() {
            let mut v = balance.0[p] - elapsed * n as f32;
            let cap = self.charge_rate[p] * self.max_charge_seconds;
            if v < cap {
                v += elapsed * self.charge_rate[p];
                if v > cap {
                    v = cap;
                }
            }
            balance.0[p] = v;
        }
    }
}

/// Pool-wide settings (`protos.SchedulerConfig` without the accounts).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolSettings {
    /// Never preempt running tasks.
    pub disable_preemption: bool,
    /// Idle bots not heard from for longer than this are forgotten; 0 means
    /// the default of 300 s; negative values expire idle bots at the next
    /// time update.
    pub bot_expiration_nanos: i64,
}

impl PoolSettings {
    /// The expiration actually applied.
    pub fn effective_bot_expiration(&self) -> i64 {
        if self.bot_expiration_nanos == 0 {
            crate::time::DEFAULT_BOT_EXPIRATION_NANOS
        } else {
            self.bot_expiration_nanos
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(rates: &[f32], max: f32) -> AccountConfig {
        AccountConfig {
            charge_rate: AccountConfig::rates_from_slice(rates).unwrap(),
            max_charge_seconds: max,
            ..Default::default()
        }
    }

    // Worked examples of reference §6.4.
    #[test]
    fn recharge_examples() {
        let c = cfg(&[1.0, 2.0, 3.0], 2.0);
        let mut b = Balance::ZERO;
        c.recharge(&mut b, 1.0, &[0; 5]);
        assert_eq!(b.0, [1.0, 2.0, 3.0, 0.0, 0.0]);
        let mut b = Balance::ZERO;
        c.recharge(&mut b, 10.0, &[0; 5]);
        assert_eq!(b.0, [2.0, 4.0, 6.0, 0.0, 0.0]);
        let mut b = Balance::ZERO;
        c.recharge(&mut b, 1.0, &[2, 0, 0, 0, 0]);
        assert_eq!(b.0, [-1.0, 2.0, 3.0, 0.0, 0.0]);

        let c = cfg(&[1.0, 1.0, 1.0, 0.0], 10.0);
        let mut b = Balance([9.5, 12.0, 10.5, 0.0, 0.0]);
        c.recharge(&mut b, 1.0, &[0, 1, 1, 1, 0]);
        assert_eq!(b.0, [10.0, 11.0, 10.0, -1.0, 0.0]);
    }

    #[test]
    fn best_priority_and_lex() {
        assert_eq!(Balance::ZERO.best_priority(), FREE_PRIORITY);
        assert_eq!(Balance([0.0, -1.0, 0.5, 9.0, 0.0]).best_priority(), 2);
        let a = Balance([0.0, 1.0, 0.0, 0.0, 0.0]);
        let b = Balance([0.0, 2.0, -5.0, 0.0, 0.0]);
        assert!(a.lex_less(&b));
        assert!(!b.lex_less(&a));
        assert!(!a.lex_less(&a));
        // A negative balance at a better level blocks, whatever comes after.
        let cost = Balance([0.0, 0.0, 0.0, 0.0, 0.0]);
        assert!(!cost.lex_less(&Balance([-1.0, 1000.0, 0.0, 0.0, 0.0])));
    }

    #[test]
    fn validation() {
        assert!(cfg(&[1.0], 10.0).validate().is_ok());
        assert!(AccountConfig::rates_from_slice(&[1.0; 6]).is_err());
        assert!(cfg(&[-1.0], 1.0).validate().is_err());
        assert!(cfg(&[f32::NAN], 1.0).validate().is_err());
        assert!(cfg(&[f32::INFINITY], 1.0).validate().is_err());
        assert!(cfg(&[1.0], f32::NAN).validate().is_err());
        let mut c = cfg(&[1.0], 1.0);
        c.max_fanout = -1;
        assert!(c.validate().is_err());
    }
}
