//! Instants and durations as integers.
//!
//! The core never reads a clock: every input carries its own [`Time`]. Times
//! are whole nanoseconds since the Unix epoch in an `i64`, which covers the
//! years 1970 to 2262 — the range the edge accepts (see [`Time::from_unix`]).
//! Integer times compare exactly, so "not before" checks and replays agree
//! bit for bit.

use std::fmt;

/// Nanoseconds in one second.
pub const NANOS_PER_SEC: i64 = 1_000_000_000;

/// An instant: nanoseconds since 1970-01-01T00:00:00Z, never negative.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(i64);

/// The error for a timestamp the core cannot represent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("timestamp {seconds}s {nanos}ns is outside 1970-01-01..2262-04-11")]
pub struct TimeOutOfRange {
    /// Seconds part as given.
    pub seconds: i64,
    /// Nanoseconds part as given.
    pub nanos: i32,
}

impl Time {
    /// The Unix epoch, the earliest representable instant.
    pub const EPOCH: Time = Time(0);
    /// The latest representable instant.
    pub const MAX: Time = Time(i64::MAX);

    /// An instant from a protobuf-style `(seconds, nanos)` pair.
    ///
    /// Rejects instants before the epoch, after 2262, and `nanos` outside
    /// `0..1e9` (protobuf's own rule for `Timestamp`).
    pub fn from_unix(seconds: i64, nanos: i32) -> Result<Time, TimeOutOfRange> {
        let err = TimeOutOfRange { seconds, nanos };
        if !(0..1_000_000_000).contains(&nanos) || seconds < 0 {
            return Err(err);
        }
        seconds
            .checked_mul(NANOS_PER_SEC)
            .and_then(|n| n.checked_add(i64::from(nanos)))
            .map(Time)
            .ok_or(err)
    }

    /// Not an instant: the examined time of a settled queued request,
    /// which is its placement's stamp (see the scheduler's docs). The
    /// public constructors never produce it.
    pub(crate) const SETTLED_MARK: Time = Time(-1);

    /// An instant `secs` whole seconds after the epoch (saturating).
    pub fn from_secs(secs: i64) -> Time {
        Time(secs.max(0).saturating_mul(NANOS_PER_SEC))
    }

    /// An instant from raw nanoseconds since the epoch; negative values clamp
    /// to the epoch.
    pub fn from_nanos(nanos: i64) -> Time {
        Time(nanos.max(0))
    }

    /// Nanoseconds since the epoch.
    pub fn as_nanos(self) -> i64 {
        self.0
    }

    /// The `(seconds, nanos)` pair of a protobuf `Timestamp`.
    pub fn to_unix(self) -> (i64, i32) {
        // Non-negative by construction, so plain division is floor division.
        (self.0 / NANOS_PER_SEC, (self.0 % NANOS_PER_SEC) as i32)
    }

    /// `self - earlier` in nanoseconds (negative if `earlier` is later).
    pub fn nanos_since(self, earlier: Time) -> i64 {
        // Both are in 0..=i64::MAX, so the difference cannot overflow.
        self.0 - earlier.0
    }

    /// This instant shifted by `nanos` (saturating at both ends).
    pub fn add_nanos(self, nanos: i64) -> Time {
        Time(self.0.saturating_add(nanos).max(0))
    }

    /// Seconds elapsed from `earlier` to `self` as `f32`, computed the way
    /// the original does (whole seconds and remaining nanoseconds as `f64`,
    /// then one rounding to `f32`), so that balances match bit for bit.
    pub fn elapsed_secs_f32(self, earlier: Time) -> f32 {
        let d = self.nanos_since(earlier);
        let secs = d / NANOS_PER_SEC;
        let nanos = d % NANOS_PER_SEC;
        (secs as f64 + nanos as f64 / 1e9) as f32
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (s, n) = self.to_unix();
        if n == 0 {
            write!(f, "{s}s")
        } else {
            write!(f, "{s}.{n:09}s")
        }
    }
}

/// Ten minutes: how long a pending assignment waits for its bot.
pub const WORKER_QUEUE_TIMEOUT_NANOS: i64 = 10 * 60 * NANOS_PER_SEC;

/// 300 s: the bot expiration used when the pool's setting is zero.
pub const DEFAULT_BOT_EXPIRATION_NANOS: i64 = 300 * NANOS_PER_SEC;

/// 46 hours: requests older than this are dropped instead of re-queued when
/// their assignment times out.
pub const MAX_QUEUEING_AGE_NANOS: i64 = 46 * 3600 * NANOS_PER_SEC;

/// The proleptic Gregorian date `(year, month 1..=12, day 1..=31)` of a
/// day counted from 1970-01-01 (Howard Hinnant's `civil_from_days`). The
/// workspace's one calendar rule: every place that prints or parses a UTC
/// date uses it and [`days_from_civil`].
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Days from 1970-01-01 to a proleptic Gregorian date, the inverse of
/// [`civil_from_days`].
pub fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The UTC date and the seconds into that day of `secs` since the Unix
/// epoch: `(year, month, day, seconds of the day)`.
pub fn civil_from_unix(secs: i64) -> (i64, i64, i64, i64) {
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    (y, m, d, secs.rem_euclid(86_400))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_round_trip() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_unix(1_700_000_000), (2023, 11, 14, 80_000)); // 22:13:20
        assert_eq!(civil_from_unix(-1), (1969, 12, 31, 86_399));
        for days in (-800_000..800_000).step_by(97) {
            let (y, m, d) = civil_from_days(days);
            assert!((1..=12).contains(&m) && (1..=31).contains(&d), "{days}");
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn from_unix_validates() {
        assert_eq!(Time::from_unix(1, 5).unwrap().as_nanos(), 1_000_000_005);
        assert!(Time::from_unix(-1, 0).is_err());
        assert!(Time::from_unix(0, -1).is_err());
        assert!(Time::from_unix(0, 1_000_000_000).is_err());
        assert!(Time::from_unix(i64::MAX / 1_000_000_000 + 1, 0).is_err());
        let t = Time::from_unix(1_700_000_000, 123).unwrap();
        assert_eq!(t.to_unix(), (1_700_000_000, 123));
    }

    #[test]
    fn elapsed_matches_go_duration_seconds() {
        let a = Time::from_secs(100);
        assert_eq!(Time::from_secs(101).elapsed_secs_f32(a), 1.0);
        let b = Time::from_unix(100, 500_000_000).unwrap();
        assert_eq!(b.elapsed_secs_f32(a), 0.5);
        assert_eq!(a.elapsed_secs_f32(b), -0.5);
    }
}
