//! RFC 3339 timestamps and durations as people write them.
//!
//! Workloads, models and the event log name instants in RFC 3339 UTC
//! (`2030-01-01T00:00:00Z`, as the event log writes `metrics.TaskEvent`
//! times) and the command line takes durations such as `90s`, `15m` or
//! `24h`. Inside the simulation every instant is whole milliseconds since
//! the workload's start: fine enough for waits measured in seconds, and
//! integer, so two runs agree exactly.

use qscheduler_core::Time;
use qscheduler_core::time::{civil_from_days, days_from_civil};

/// Milliseconds per second.
pub const MS: i64 = 1000;

/// Parses an RFC 3339 timestamp (`Z` or a `±HH:MM` offset, optional
/// fraction of up to nine digits) into a core [`Time`].
pub fn parse_rfc3339(s: &str) -> Result<Time, String> {
    let bad = || format!("{s:?} is not an RFC 3339 time such as 2030-01-01T00:00:00Z");
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<i64, String> {
        let part = s.get(r).ok_or_else(bad)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        part.parse::<i64>().map_err(|_| bad())
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if b[13] != b':' || b[16] != b':' {
        return Err(bad());
    }
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=days_in_month(year, month)).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err(bad());
    }
    let mut i = 19;
    let mut nanos = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let digits = &s[start..i];
        if digits.is_empty() || digits.len() > 9 {
            return Err(bad());
        }
        nanos = digits.parse::<i64>().map_err(|_| bad())? * 10i64.pow(9 - digits.len() as u32);
    }
    let offset = match &s[i..] {
        "Z" | "z" => 0,
        rest if rest.len() == 6
            && matches!(rest.as_bytes()[0], b'+' | b'-')
            && rest.as_bytes()[3] == b':' =>
        {
            let h = num(i + 1..i + 3)?;
            let m = num(i + 4..i + 6)?;
            if h > 23 || m > 59 {
                return Err(bad());
            }
            let v = h * 3600 + m * 60;
            if rest.starts_with('-') { -v } else { v }
        }
        _ => return Err(bad()),
    };
    let secs =
        days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second.min(59)
            - offset;
    Time::from_unix(secs, nanos as i32).map_err(|e| format!("{s:?}: {e}"))
}

/// A core [`Time`] in RFC 3339 UTC, with milliseconds when they are not zero.
pub fn format_rfc3339(t: Time) -> String {
    let (secs, nanos) = t.to_unix();
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    let mut out = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    if nanos != 0 {
        if nanos % 1_000_000 == 0 {
            out.push_str(&format!(".{:03}", nanos / 1_000_000));
        } else {
            out.push_str(&format!(".{nanos:09}"));
        }
    }
    out.push('Z');
    out
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Parses a duration: a number with an optional unit `ms`, `s`, `m`, `h`
/// or `d` (no unit: seconds), such as `1.5s`, `15m`, `24h`. Returns
/// milliseconds.
pub fn parse_duration(s: &str) -> Result<i64, String> {
    let t = s.trim();
    let (num, unit_ms) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1e3)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60e3)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3600e3)
    } else if let Some(n) = t.strip_suffix('d') {
        (n, 86_400e3)
    } else {
        (t, 1e3)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 90s, 15m or 24h"))?;
    let ms = v * unit_ms;
    if !ms.is_finite() || ms < 0.0 || ms > MAX_SPAN_MS as f64 {
        return Err(format!(
            "{s:?} is out of range (0 to {} days)",
            MAX_SPAN_MS / 86_400_000
        ));
    }
    Ok(ms.round() as i64)
}

/// The longest span a workload may cover: ten years, far beyond any
/// useful simulation, and small enough that no sum of times overflows.
pub const MAX_SPAN_MS: i64 = 10 * 366 * 86_400_000;

/// Seconds as a JSON number (milliseconds kept) to milliseconds, checked.
pub fn secs_to_ms(v: f64, field: &str) -> Result<i64, String> {
    if !v.is_finite() || v < 0.0 || v > MAX_SPAN_MS as f64 / 1e3 {
        return Err(format!(
            "{field}: {v} is not a number of seconds from 0 to {}",
            MAX_SPAN_MS / 1000
        ));
    }
    Ok((v * 1e3).round() as i64)
}

/// `a / b` rounded up, for `a >= 0` and `b > 0`.
pub fn ceil_div(a: i64, b: i64) -> i64 {
    a / b + i64::from(a % b != 0)
}

/// Milliseconds as seconds for JSON.
pub fn ms_to_secs(ms: i64) -> f64 {
    ms as f64 / 1e3
}

/// A short human form of a span: `850ms`, `12s`, `4m05s`, `3h20m`, `2d04h`.
pub fn human(ms: i64) -> String {
    let neg = ms < 0;
    let ms = ms.unsigned_abs() as i64;
    let s = ms / 1000;
    let body = if ms < 1000 && ms != 0 {
        format!("{ms}ms")
    } else if s < 60 {
        let tenths = (ms % 1000) / 100;
        if tenths == 0 || s >= 10 {
            format!("{s}s")
        } else {
            format!("{s}.{tenths}s")
        }
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else if s < 86_400 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else {
        format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600)
    };
    if neg { format!("-{body}") } else { body }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_and_checks() {
        let t = parse_rfc3339("2030-01-01T00:00:00Z").unwrap();
        assert_eq!(t.to_unix().0, 1_893_456_000);
        assert_eq!(format_rfc3339(t), "2030-01-01T00:00:00Z");
        let t = parse_rfc3339("2024-02-29T23:59:58.250Z").unwrap();
        assert_eq!(format_rfc3339(t), "2024-02-29T23:59:58.250Z");
        let t = parse_rfc3339("2030-01-01T02:00:00+02:00").unwrap();
        assert_eq!(format_rfc3339(t), "2030-01-01T00:00:00Z");
        let t = parse_rfc3339("2030-01-01T00:00:00.000000001Z").unwrap();
        assert_eq!(format_rfc3339(t), "2030-01-01T00:00:00.000000001Z");
        for bad in [
            "2030-01-01",
            "2030-13-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2030-01-01T24:00:00Z",
            "2030-01-01T00:00:00",
            "1969-12-31T23:59:59Z",
            "2030-01-01T00:00:00.Z",
            "2030-01-01T00:00:00.1234567890Z",
            "２030-01-01T00:00:00Z",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), 90_000);
        assert_eq!(parse_duration("1.5s").unwrap(), 1500);
        assert_eq!(parse_duration("250ms").unwrap(), 250);
        assert_eq!(parse_duration("15m").unwrap(), 900_000);
        assert_eq!(parse_duration("24h").unwrap(), 86_400_000);
        assert_eq!(parse_duration("2d").unwrap(), 172_800_000);
        for bad in ["", "x", "-1s", "nan", "1e30h", "5w"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(human(850), "850ms");
        assert_eq!(human(1500), "1.5s");
        assert_eq!(human(12_000), "12s");
        assert_eq!(human(245_000), "4m05s");
        assert_eq!(human(12_000_000), "3h20m");
        assert_eq!(human(-12_000), "-12s");
        assert_eq!(human(0), "0s");
    }
}
