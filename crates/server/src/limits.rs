//! Limits on what one caller can make the server hold: the size and shape
//! of a request, the ids and labels in it, how far its clock may run ahead,
//! and how many bytes of calls may wait for the pools.
//!
//! Every value a caller controls has a limit here, with a setting of the
//! `[limits]` section of the configuration file. A request over a limit is
//! refused with `INVALID_ARGUMENT` naming the field, the limit and the
//! setting, before anything of it is queued for a pool; so a careless or
//! hostile caller costs the server at most one bounded request at a time,
//! never its memory or a pool's clock.
//!
//! The limits are checked in two places, and both take them from here:
//!
//! * the number of items of each repeated field, before the body is decoded
//!   into messages ([`Limits::shape`], enforced by the wire layer while it
//!   scans the encoded bytes), because decoding is where an empty string
//!   of two bytes on the wire becomes a heap allocation;
//! * everything else (id and label lengths, control characters, clock skew,
//!   pool settings) right after decoding, in `translate` and `service`.
//!
//! The rule *ids are printable* ([`check_id`]) is stated once here and used
//! for every kind of id.

use std::time::Duration;

use qscheduler_core::Time;
use qscheduler_core::id_rule::{self as ids, IdBounds, IdError};
use qscheduler_wire::shape::ShapeLimits;
use tonic::Status;

/// The request limits and memory budgets of the server.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Most notifications in one NotifyTasks call.
    pub max_notifications_per_call: usize,
    /// Most bots in one AssignTasks call.
    pub max_bots_per_call: usize,
    /// Most dimensions of one idle bot.
    pub max_dimensions_per_bot: usize,
    /// Most dimensions of one task slice.
    pub max_dimensions_per_slice: usize,
    /// Most slices of one task.
    pub max_slices_per_task: usize,
    /// Most tags of one task.
    pub max_tags_per_task: usize,
    /// Most items (repeated elements, at every depth) in one request: bounds
    /// what a request may allocate when decoded, whatever its shape.
    pub max_items_per_call: usize,
    /// Most bytes of one dimension, tag or label.
    pub max_label_bytes: usize,
    /// Most bytes of a pool, account, task or bot id.
    pub max_id_bytes: usize,
    /// Most characters of a pool, account, task or bot id.
    pub max_id_chars: usize,
    /// How far ahead of the server's clock a call's time may be.
    pub max_clock_skew: Duration,
    /// Largest bot expiration a pool may be given.
    pub max_bot_expiration: Duration,
    /// Most pools in the store.
    pub max_pools: usize,
    /// Most bytes of calls waiting for one pool.
    pub pool_queue_bytes: usize,
    /// Most bytes of calls waiting for all pools together.
    pub total_queue_bytes: usize,
}

impl Limits {
    /// The bounds on ids these limits set.
    pub fn id_bounds(&self) -> IdBounds {
        IdBounds {
            max_bytes: self.max_id_bytes,
            max_chars: self.max_id_chars,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_notifications_per_call: 1000,
            max_bots_per_call: 1000,
            max_dimensions_per_bot: 512,
            max_dimensions_per_slice: 256,
            max_slices_per_task: 8,
            max_tags_per_task: 256,
            max_items_per_call: 100_000,
            max_label_bytes: 1024,
            max_id_bytes: ids::DEFAULT_MAX_ID_BYTES,
            max_id_chars: ids::DEFAULT_MAX_ID_CHARS,
            max_clock_skew: Duration::from_secs(3600),
            max_bot_expiration: Duration::from_secs(7 * 24 * 3600),
            max_pools: 10_000,
            pool_queue_bytes: 64 << 20,
            total_queue_bytes: 512 << 20,
        }
    }
}

/// `INVALID_ARGUMENT` for `field` over the limit `limit` of `setting`.
fn over(field: &str, what: &str, limit: usize, setting: &str) -> Status {
    Status::invalid_argument(format!(
        "{field}: {what} exceeds the limit of {limit} (setting limits.{setting})"
    ))
}

/// Checks an id (pool, account, task or bot) with the one rule of
/// [`qscheduler_core::id_rule`] and the configured bounds; the error names the
/// field and the setting.
pub fn check_id(id: &str, field: &str, limits: &Limits) -> Result<(), Status> {
    ids::check_id(id, limits.id_bounds()).map_err(|e| id_status(field, e, limits))
}

/// Checks a pool id: [`check_id`], within the store's bound on pool ids.
pub fn check_pool_id(id: &str, field: &str, limits: &Limits) -> Result<(), Status> {
    ids::check_pool_id(id, limits.id_bounds()).map_err(|e| id_status(field, e, limits))
}

/// `INVALID_ARGUMENT` for an id refused by the rule.
fn id_status(field: &str, e: IdError, limits: &Limits) -> Status {
    match e {
        IdError::Empty => Status::invalid_argument(format!("{field} is required")),
        IdError::TooManyBytes { len, limit } if limit < limits.max_id_bytes => {
            Status::invalid_argument(format!(
                "{field}: length {len} bytes exceeds the limit of {limit} (the store's bound on pool ids)"
            ))
        }
        IdError::TooManyBytes { len, limit } => {
            over(field, &format!("length {len} bytes"), limit, "max_id_bytes")
        }
        IdError::TooManyChars { chars, limit } => over(
            field,
            &format!("length {chars} characters"),
            limit,
            "max_id_chars",
        ),
        IdError::Control { .. } => Status::invalid_argument(format!("{field}: {e}")),
    }
}

/// Checks the labels (dimensions or tags) of `field`: their number and each
/// one's length.
pub fn check_labels(
    labels: &[String],
    field: &str,
    max_items: (usize, &str),
    limits: &Limits,
) -> Result<(), Status> {
    if labels.len() > max_items.0 {
        return Err(over(
            field,
            &format!("{} items", labels.len()),
            max_items.0,
            max_items.1,
        ));
    }
    for (i, l) in labels.iter().enumerate() {
        if l.len() > limits.max_label_bytes {
            return Err(over(
                &format!("{field}[{i}]"),
                &format!("length {} bytes", l.len()),
                limits.max_label_bytes,
                "max_label_bytes",
            ));
        }
    }
    Ok(())
}

/// Checks the number of items of a repeated field.
pub fn check_count(n: usize, field: &str, limit: usize, setting: &str) -> Result<(), Status> {
    if n > limit {
        return Err(over(field, &format!("{n} items"), limit, setting));
    }
    Ok(())
}

/// Refuses a call time more than [`Limits::max_clock_skew`] ahead of the
/// server's clock `now`: the pool's clock only moves forward, so one call
/// from the future would stop charging, recharge and bot expiry until real
/// time caught up.
pub fn check_clock(t: Time, now: Time, field: &str, limits: &Limits) -> Result<(), Status> {
    let skew = i64::try_from(limits.max_clock_skew.as_nanos()).unwrap_or(i64::MAX);
    if t.nanos_since(now) > skew {
        return Err(Status::invalid_argument(format!(
            "{field}: {} s ahead of the server's clock, more than the {} s allowed \
             (setting limits.max_clock_skew); check the caller's clock",
            t.nanos_since(now) / 1_000_000_000,
            limits.max_clock_skew.as_secs()
        )));
    }
    Ok(())
}

/// Checks a pool's bot expiration setting: not negative, not absurd.
pub fn check_bot_expiration(secs: i64, field: &str, limits: &Limits) -> Result<(), Status> {
    let max = i64::try_from(limits.max_bot_expiration.as_secs()).unwrap_or(i64::MAX);
    if secs < 0 {
        return Err(Status::invalid_argument(format!(
            "{field}: {secs} is negative; give the seconds after which an idle bot \
             that stopped calling is forgotten (0 for the default)"
        )));
    }
    if secs > max {
        return Err(over(
            field,
            &format!("{secs} seconds"),
            usize::try_from(max).unwrap_or(usize::MAX),
            "max_bot_expiration",
        ));
    }
    Ok(())
}

impl Limits {
    /// The item counts the wire layer enforces while scanning an encoded
    /// request, before it is decoded.
    pub fn shape(&self) -> ShapeLimits {
        ShapeLimits::new(self.max_items_per_call, "limits.max_items_per_call")
            .repeated(
                "swarming.v1.NotifyTasksRequest.notifications",
                self.max_notifications_per_call,
                "limits.max_notifications_per_call",
            )
            .repeated(
                "swarming.v1.AssignTasksRequest.idle_bots",
                self.max_bots_per_call,
                "limits.max_bots_per_call",
            )
            .repeated(
                "swarming.v1.IdleBot.dimensions",
                self.max_dimensions_per_bot,
                "limits.max_dimensions_per_bot",
            )
            .repeated(
                "swarming.v1.SliceSpec.dimensions",
                self.max_dimensions_per_slice,
                "limits.max_dimensions_per_slice",
            )
            .repeated(
                "swarming.v1.TaskSpec.slices",
                self.max_slices_per_task,
                "limits.max_slices_per_task",
            )
            .repeated(
                "swarming.v1.TaskSpec.tags",
                self.max_tags_per_task,
                "limits.max_tags_per_task",
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        let l = Limits::default();
        assert!(check_id("bot-1.example", "bot_id", &l).is_ok());
        assert!(check_id("ünïcödé", "bot_id", &l).is_ok());
        for bad in ["", "a\nb", "a\0", "tab\there", "\u{7f}", "\u{85}"] {
            let e = check_id(bad, "bot_id", &l).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}");
            assert!(e.message().starts_with("bot_id"), "{e}");
        }
        let e = check_id(&"x".repeat(1025), "task_id", &l).unwrap_err();
        assert!(e.message().contains("limits.max_id_bytes"), "{e}");
        let id = format!("{}{}", "x".repeat(200), "é".repeat(57));
        let e = check_id(&id, "task_id", &l).unwrap_err();
        assert!(e.message().contains("limits.max_id_chars"), "{e}");
    }

    #[test]
    fn labels_and_counts() {
        let l = Limits::default();
        let ok = vec!["a:b".to_owned(); 3];
        assert!(check_labels(&ok, "d", (3, "x"), &l).is_ok());
        let e = check_labels(&ok, "d", (2, "max_x"), &l).unwrap_err();
        assert!(e.message().contains("limits.max_x"), "{e}");
        let long = vec!["x".repeat(1025)];
        let e = check_labels(&long, "tags", (3, "x"), &l).unwrap_err();
        assert!(e.message().starts_with("tags[0]"), "{e}");
        assert!(e.message().contains("max_label_bytes"), "{e}");
    }

    #[test]
    fn clock_skew() {
        let l = Limits::default();
        let now = Time::from_secs(1_000_000);
        assert!(check_clock(Time::from_secs(1_003_600), now, "time", &l).is_ok());
        assert!(check_clock(Time::from_secs(1), now, "time", &l).is_ok());
        let e = check_clock(Time::from_secs(1_003_601), now, "time", &l).unwrap_err();
        assert!(e.message().contains("limits.max_clock_skew"), "{e}");
    }

    #[test]
    fn bot_expiration() {
        let l = Limits::default();
        assert!(check_bot_expiration(0, "f", &l).is_ok());
        assert!(check_bot_expiration(600, "f", &l).is_ok());
        assert!(check_bot_expiration(-1, "f", &l).is_err());
        assert!(check_bot_expiration(i64::MAX, "f", &l).is_err());
    }
}
