//! Parsing and checking of the values people type.
//!
//! Every value is checked here, before anything is sent, with the same
//! bounds the server enforces (the core's constants), so that a typo fails
//! with a message naming the flag instead of reaching the server as a zero
//! or coming back as a terse `INVALID_ARGUMENT`. The same checks serve the
//! command-line flags and the `apply` file.

use std::collections::BTreeMap;

use qscheduler_core::NUM_PRIORITIES;
use qscheduler_core::account::{MAX_CHARGE_RATE, MAX_CHARGE_SECONDS};
use qscheduler_core::id_rule::{self as ids, IdBounds};

/// Checks one charge rate (bot-seconds per second).
pub fn check_rate(value: f64) -> Result<f32, String> {
    if !value.is_finite() {
        return Err(format!("{value} is not a finite number"));
    }
    if value < 0.0 {
        return Err(format!("{value} is negative; rates are 0 or more"));
    }
    // The bound is checked on the f64 so that a huge value is refused
    // instead of rounding to infinity as an f32.
    if value > f64::from(MAX_CHARGE_RATE) {
        return Err(format!("{value} is larger than {MAX_CHARGE_RATE}"));
    }
    Ok(value as f32)
}

/// Parses one `--rate` argument: a number, or several separated by commas
/// (`5`, `5,2,0.5`).
pub fn parse_rates(arg: &str) -> Result<Vec<f32>, String> {
    let mut out = Vec::new();
    for (i, part) in arg.split(',').enumerate() {
        let part = part.trim();
        let value: f64 = part.parse().map_err(|_| {
            if arg.contains(',') {
                format!("item {} of {arg:?}: {part:?} is not a number", i + 1)
            } else {
                format!("{part:?} is not a number")
            }
        })?;
        // `f64::from_str` accepts "inf" and "NaN"; they are not rates.
        out.push(check_rate(value).map_err(|e| format!("{part:?}: {e}"))?);
    }
    Ok(out)
}

/// Joins the values of repeated `--rate` flags into the P0..P4 list.
pub fn join_rates(groups: &[Vec<f32>]) -> Result<Vec<f32>, String> {
    let rates: Vec<f32> = groups.iter().flatten().copied().collect();
    if rates.len() > NUM_PRIORITIES {
        return Err(format!(
            "{} charge rates given; at most {NUM_PRIORITIES} are allowed (P0..P4)",
            rates.len()
        ));
    }
    Ok(rates)
}

/// Checks `max_charge_seconds`.
pub fn check_charge_seconds(value: f64) -> Result<f32, String> {
    if !value.is_finite() {
        return Err(format!("{value} is not a finite number"));
    }
    if value < 0.0 {
        return Err(format!("{value} is negative"));
    }
    if value > f64::from(MAX_CHARGE_SECONDS) {
        return Err(format!("{value} is larger than {MAX_CHARGE_SECONDS}"));
    }
    Ok(value as f32)
}

/// Parses `--charge-time SECONDS`.
pub fn parse_charge_seconds(arg: &str) -> Result<f32, String> {
    let value: f64 = arg
        .trim()
        .parse()
        .map_err(|_| format!("{arg:?} is not a number of seconds"))?;
    check_charge_seconds(value)
}

/// Checks a non-negative 32-bit count (fanout, a per-label limit).
pub fn check_count(value: i64) -> Result<i32, String> {
    if value < 0 {
        return Err(format!("{value} is negative"));
    }
    i32::try_from(value).map_err(|_| format!("{value} is larger than {}", i32::MAX))
}

/// Parses `--fanout N`.
pub fn parse_fanout(arg: &str) -> Result<i32, String> {
    let value: i64 = arg
        .trim()
        .parse()
        .map_err(|_| format!("{arg:?} is not a whole number"))?;
    check_count(value)
}

/// Parses `--bot-expiration SECONDS`: 0 means the server's default of
/// 300 s.
pub fn parse_bot_expiration(arg: &str) -> Result<i32, String> {
    let value: i64 = arg
        .trim()
        .parse()
        .map_err(|_| format!("{arg:?} is not a whole number of seconds"))?;
    check_count(value)
}

/// Parses a `true`/`false` flag value. Only these two words are accepted:
/// `--allow-preemption no` silently meaning something would be worse than
/// an error.
pub fn parse_bool(arg: &str) -> Result<bool, String> {
    match arg.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(format!("{other:?} is not true or false")),
    }
}

/// Parses one `--per-label-limit KEY=N`. The key is a label key prefix
/// such as `label-model`; it may itself contain `:` (labels are
/// `key:value`), so only `=` separates.
pub fn parse_label_limit(arg: &str) -> Result<(String, i32), String> {
    let Some((key, n)) = arg.rsplit_once('=') else {
        return Err(format!("{arg:?} is not KEY=N (for example label-model=2)"));
    };
    let key = key.trim();
    check_label_key(key)?;
    let value: i64 = n
        .trim()
        .parse()
        .map_err(|_| format!("{arg:?}: {n:?} is not a whole number"))?;
    let limit = check_count(value).map_err(|e| format!("{arg:?}: {e}"))?;
    Ok((key.to_string(), limit))
}

/// Checks a per-label limit key.
pub fn check_label_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("the label key of a per-label limit must not be empty".into());
    }
    Ok(())
}

/// Collects repeated `--per-label-limit` flags, refusing a key given twice.
pub fn join_label_limits(pairs: &[(String, i32)]) -> Result<BTreeMap<String, i32>, String> {
    let mut out = BTreeMap::new();
    for (key, limit) in pairs {
        if out.insert(key.clone(), *limit).is_some() {
            return Err(format!(
                "per-label limit key {key:?} is given more than once"
            ));
        }
    }
    Ok(out)
}

/// Checks a pool id the way the server will (with its default bounds).
pub fn check_pool_id(id: &str) -> Result<(), String> {
    ids::check_pool_id(id, IdBounds::default()).map_err(|e| format!("pool id {id:?} {e}"))
}

/// Checks an account id the way the server will (with its default bounds).
pub fn check_account_id(id: &str) -> Result<(), String> {
    ids::check_id(id, IdBounds::default()).map_err(|e| format!("account id {id:?} {e}"))
}

/// clap value parser for pool ids.
pub fn parse_pool_id(arg: &str) -> Result<String, String> {
    check_pool_id(arg)?;
    Ok(arg.to_string())
}

/// clap value parser for account ids.
pub fn parse_account_id(arg: &str) -> Result<String, String> {
    check_account_id(arg)?;
    Ok(arg.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rates("5").unwrap(), vec![5.0]);
        assert_eq!(parse_rates("1, 2,0.5").unwrap(), vec![1.0, 2.0, 0.5]);
        for bad in [
            "1,o", "", "1,", "-1", "nan", "NaN", "inf", "-inf", "1e40", "2e9", "x",
        ] {
            assert!(parse_rates(bad).is_err(), "{bad:?} accepted");
        }
        let e = parse_rates("1,o").unwrap_err();
        assert!(e.contains("\"o\" is not a number"), "{e}");
        assert!(join_rates(&[vec![1.0; 3], vec![2.0; 2]]).is_ok());
        assert!(join_rates(&[vec![1.0; 3], vec![2.0; 3]]).is_err());
    }

    #[test]
    fn counts_and_seconds() {
        assert_eq!(parse_fanout("3"), Ok(3));
        assert!(parse_fanout("-1").is_err());
        assert!(parse_fanout("1.5").is_err());
        assert!(parse_fanout("99999999999").is_err());
        assert_eq!(parse_charge_seconds("3600"), Ok(3600.0));
        assert!(parse_charge_seconds("-1").is_err());
        assert!(parse_charge_seconds("inf").is_err());
        assert!(parse_charge_seconds("1e11").is_err());
        assert_eq!(parse_bot_expiration("0"), Ok(0));
        assert!(parse_bot_expiration("-5").is_err());
        assert_eq!(parse_bool("false"), Ok(false));
        assert!(parse_bool("no").is_err());
    }

    #[test]
    fn label_limits() {
        assert_eq!(
            parse_label_limit("label-model=2"),
            Ok(("label-model".into(), 2))
        );
        assert_eq!(parse_label_limit("a:b=0"), Ok(("a:b".into(), 0)));
        for bad in ["label-model", "=2", "k=", "k=-1", "k=x", "k=2.5"] {
            assert!(parse_label_limit(bad).is_err(), "{bad:?} accepted");
        }
        let pairs = vec![("a".to_string(), 1), ("a".to_string(), 2)];
        assert!(join_label_limits(&pairs).is_err());
    }

    #[test]
    fn ids() {
        assert!(check_pool_id("").is_err());
        assert!(check_pool_id(&"x".repeat(ids::MAX_POOL_ID_BYTES + 1)).is_err());
        assert!(check_pool_id("pool-1").is_ok());
        assert!(check_pool_id("a\0b").is_err());
        assert!(check_account_id("").is_err());
    }
}
