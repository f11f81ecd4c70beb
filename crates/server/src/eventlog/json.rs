//! Core events as `metrics.TaskEvent`, and a `TaskEvent` as one JSON line.
//!
//! Lines are the proto3 JSON mapping of `TaskEvent` with the proto field
//! names and every field present; the encoder is written by hand and
//! checked against the descriptor-driven encoding of the wire crate, so
//! the JSON cannot drift from the proto. What must not change: the bytes
//! of a line, which readers of the files and the database depend on.

use std::sync::Arc;

use qscheduler_core::{Balance, CompletedReason, EventKind, PoolEvent};
use qscheduler_wire::metrics::TaskEvent;
use qscheduler_wire::metrics::task_event::{
    AssignedDetails, CompletedDetails, Details, EnqueuedDetails, EventCategory, EventType,
    PreemptedDetails, ReprioritizedDetails, UnassignedDetails, completed_details,
};

fn balance_vec(b: &Balance) -> Vec<f32> {
    b.0.to_vec()
}

fn labels_vec(l: &[Arc<str>]) -> Vec<String> {
    l.iter().map(|s| s.to_string()).collect()
}

/// The `metrics.TaskEvent` of a core event of pool `pool`.
pub fn task_event(pool: &str, pe: &PoolEvent) -> TaskEvent {
    let e = &pe.event;
    let (event_type, details) = match &e.kind {
        EventKind::Enqueued { tags } => (
            EventType::SwarmingEnqueued,
            Details::EnqueuedDetails(EnqueuedDetails {
                tags: tags.to_vec(),
            }),
        ),
        EventKind::Completed {
            reason,
            other_task,
            other_bot,
        } => (
            EventType::SwarmingCompleted,
            Details::CompletedDetails(CompletedDetails {
                reason: completed_reason(*reason) as i32,
                other_task: other_task.as_deref().unwrap_or_default().to_owned(),
                other_bot: other_bot.as_deref().unwrap_or_default().to_owned(),
            }),
        ),
        EventKind::Assigned {
            provision_required,
            priority,
            preempting,
            preemption_cost,
            preempted_task_id,
        } => (
            EventType::QschedulerAssigned,
            Details::AssignedDetails(AssignedDetails {
                provision_required: *provision_required,
                priority: i32::from(*priority),
                preempting: *preempting,
                preemption_cost: preemption_cost
                    .as_ref()
                    .map(balance_vec)
                    .unwrap_or_default(),
                preempted_task_id: preempted_task_id.as_deref().unwrap_or_default().to_owned(),
            }),
        ),
        EventKind::Preempted {
            preempting_account_id,
            preempting_task_id,
            priority,
            preempting_priority,
        } => (
            EventType::QschedulerPreempted,
            Details::PreemptedDetails(PreemptedDetails {
                preempting_account_id: preempting_account_id.to_string(),
                preempting_task_id: preempting_task_id.to_string(),
                priority: i32::from(*priority),
                preempting_priority: i32::from(*preempting_priority),
            }),
        ),
        EventKind::Reprioritized {
            old_priority,
            new_priority,
        } => (
            EventType::QschedulerReprioritized,
            Details::ReprioritizedDetails(ReprioritizedDetails {
                old_priority: i32::from(*old_priority),
                new_priority: i32::from(*new_priority),
            }),
        ),
        EventKind::Unassigned => (
            EventType::QschedulerUnassigned,
            Details::UnassignedDetails(UnassignedDetails {}),
        ),
    };
    let category = if e.kind.is_swarming_category() {
        EventCategory::CategorySwarming
    } else {
        EventCategory::CategoryQscheduler
    };
    let (seconds, nanos) = e.time.to_unix();
    TaskEvent {
        event_type: event_type as i32,
        scheduler_id: pool.to_owned(),
        task_id: e.task_id.to_string(),
        time: Some(prost_types::Timestamp { seconds, nanos }),
        base_labels: labels_vec(&e.base_labels),
        provisionable_labels: labels_vec(&e.provisionable_labels),
        account_id: e.account_id.to_string(),
        account_valid: e.account_valid,
        account_balance: balance_vec(&e.account_balance),
        cost: e.cost.as_ref().map(balance_vec).unwrap_or_default(),
        bot_id: e.bot_id.as_deref().unwrap_or_default().to_owned(),
        bot_dimensions: labels_vec(&e.bot_dimensions),
        category: category as i32,
        is_callback: pe.is_callback,
        details: Some(details),
    }
}

fn completed_reason(r: CompletedReason) -> completed_details::Reason {
    use completed_details::Reason;
    match r {
        CompletedReason::BotIdle => Reason::BotIdle,
        CompletedReason::IdleTaskAbsent => Reason::IdleTaskAbsent,
        CompletedReason::RunningTaskAbsent => Reason::RunningTaskAbsent,
        CompletedReason::InconsistentBotForTask => Reason::InconsistentBotForTask,
        CompletedReason::InconsistentTaskForBot => Reason::InconsistentTaskForBot,
    }
}

/// Why an event could not be turned into JSON (a build defect: the
/// generated types hold a value the proto does not define).
#[derive(Debug, thiserror::Error)]
#[error("cannot encode a TaskEvent as JSON: {0}")]
pub struct EncodeError(String);

/// One event as a JSON line (without the newline): the proto3 JSON mapping
/// of `metrics.TaskEvent` with proto field names and defaults included.
///
/// Written by hand because it runs for every event under full load: going
/// through the descriptor pool (encode, decode as a dynamic message,
/// serialize) cost a sixth of the server's CPU time per call. A test checks
/// it against the descriptor-driven encoding on many random events, so the
/// two cannot drift apart.
pub fn to_json(event: &TaskEvent) -> Result<String, EncodeError> {
    use completed_details::Reason;
    let mut j = Json(String::with_capacity(512));
    j.0.push('{');
    let event_type = EventType::try_from(event.event_type)
        .map_err(|_| EncodeError(format!("unknown event_type {}", event.event_type)))?;
    j.key("event_type", true);
    j.string(event_type.as_str_name());
    j.key("scheduler_id", false);
    j.string(&event.scheduler_id);
    j.key("task_id", false);
    j.string(&event.task_id);
    if let Some(t) = &event.time {
        j.key("time", false);
        j.timestamp(t)?;
    }
    j.key("base_labels", false);
    j.strings(&event.base_labels);
    j.key("provisionable_labels", false);
    j.strings(&event.provisionable_labels);
    j.key("account_id", false);
    j.string(&event.account_id);
    j.key("account_valid", false);
    j.bool(event.account_valid);
    j.key("account_balance", false);
    j.floats(&event.account_balance);
    j.key("cost", false);
    j.floats(&event.cost);
    j.key("bot_id", false);
    j.string(&event.bot_id);
    j.key("bot_dimensions", false);
    j.strings(&event.bot_dimensions);
    let category = EventCategory::try_from(event.category)
        .map_err(|_| EncodeError(format!("unknown category {}", event.category)))?;
    j.key("category", false);
    j.string(category.as_str_name());
    j.key("is_callback", false);
    j.bool(event.is_callback);
    match &event.details {
        None => {}
        Some(Details::EnqueuedDetails(d)) => {
            j.key("enqueued_details", false);
            j.0.push('{');
            j.key("tags", true);
            j.strings(&d.tags);
            j.0.push('}');
        }
        Some(Details::AssignedDetails(d)) => {
            j.key("assigned_details", false);
            j.0.push('{');
            j.key("provision_required", true);
            j.bool(d.provision_required);
            j.key("priority", false);
            j.int(d.priority);
            j.key("preempting", false);
            j.bool(d.preempting);
            j.key("preemption_cost", false);
            j.floats(&d.preemption_cost);
            j.key("preempted_task_id", false);
            j.string(&d.preempted_task_id);
            j.0.push('}');
        }
        Some(Details::PreemptedDetails(d)) => {
            j.key("preempted_details", false);
            j.0.push('{');
            j.key("preempting_account_id", true);
            j.string(&d.preempting_account_id);
            j.key("preempting_task_id", false);
            j.string(&d.preempting_task_id);
            j.key("priority", false);
            j.int(d.priority);
            j.key("preempting_priority", false);
            j.int(d.preempting_priority);
            j.0.push('}');
        }
        Some(Details::ReprioritizedDetails(d)) => {
            j.key("reprioritized_details", false);
            j.0.push('{');
            j.key("old_priority", true);
            j.int(d.old_priority);
            j.key("new_priority", false);
            j.int(d.new_priority);
            j.0.push('}');
        }
        Some(Details::CompletedDetails(d)) => {
            let reason = Reason::try_from(d.reason)
                .map_err(|_| EncodeError(format!("unknown completed reason {}", d.reason)))?;
            j.key("completed_details", false);
            j.0.push('{');
            j.key("reason", true);
            j.string(reason.as_str_name());
            j.key("other_task", false);
            j.string(&d.other_task);
            j.key("other_bot", false);
            j.string(&d.other_bot);
            j.0.push('}');
        }
        Some(Details::UnassignedDetails(UnassignedDetails {})) => {
            j.key("unassigned_details", false);
            j.0.push_str("{}");
        }
    }
    j.0.push('}');
    Ok(j.0)
}

/// A JSON text under construction.
struct Json(String);

impl Json {
    fn key(&mut self, name: &str, first: bool) {
        if !first {
            self.0.push(',');
        }
        self.0.push('"');
        self.0.push_str(name);
        self.0.push_str("\":");
    }

    fn string(&mut self, s: &str) {
        self.0.push('"');
        for c in s.chars() {
            match c {
                '"' => self.0.push_str("\\\""),
                '\\' => self.0.push_str("\\\\"),
                '\n' => self.0.push_str("\\n"),
                '\r' => self.0.push_str("\\r"),
                '\t' => self.0.push_str("\\t"),
                c if u32::from(c) < 0x20 => {
                    use std::fmt::Write as _;
                    let _ = write!(self.0, "\\u{:04x}", u32::from(c));
                }
                c => self.0.push(c),
            }
        }
        self.0.push('"');
    }

    fn strings(&mut self, v: &[String]) {
        self.0.push('[');
        for (i, s) in v.iter().enumerate() {
            if i > 0 {
                self.0.push(',');
            }
            self.string(s);
        }
        self.0.push(']');
    }

    fn bool(&mut self, b: bool) {
        self.0.push_str(if b { "true" } else { "false" });
    }

    fn int(&mut self, v: i32) {
        use std::fmt::Write as _;
        let _ = write!(self.0, "{v}");
    }

    /// proto3 JSON: the shortest text that reads back as the same `f32`;
    /// the non-finite values as the strings the mapping defines.
    fn floats(&mut self, v: &[f32]) {
        self.0.push('[');
        for (i, f) in v.iter().enumerate() {
            if i > 0 {
                self.0.push(',');
            }
            if f.is_nan() {
                self.0.push_str("\"NaN\"");
            } else if f.is_infinite() {
                self.0.push_str(if *f > 0.0 {
                    "\"Infinity\""
                } else {
                    "\"-Infinity\""
                });
            } else {
                // serde_json prints an f32 with ryu: shortest round trip,
                // always with a fraction or exponent ("1.0").
                match serde_json::to_string(f) {
                    Ok(text) => self.0.push_str(&text),
                    Err(_) => self.0.push_str("null"),
                }
            }
        }
        self.0.push(']');
    }

    /// RFC 3339 in UTC with 0, 3, 6 or 9 fractional digits, as the proto3
    /// mapping of `google.protobuf.Timestamp` asks.
    fn timestamp(&mut self, t: &prost_types::Timestamp) -> Result<(), EncodeError> {
        use std::fmt::Write as _;
        // The mapping's range: 0001-01-01 to 9999-12-31.
        if !(-62_135_596_800..=253_402_300_799).contains(&t.seconds)
            || !(0..1_000_000_000).contains(&t.nanos)
        {
            return Err(EncodeError(format!("timestamp out of range: {t:?}")));
        }
        let (y, m, d, rem) = civil(t.seconds);
        let _ = write!(
            self.0,
            "\"{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        );
        let n = t.nanos;
        if n != 0 {
            if n % 1_000_000 == 0 {
                let _ = write!(self.0, ".{:03}", n / 1_000_000);
            } else if n % 1_000 == 0 {
                let _ = write!(self.0, ".{:06}", n / 1_000);
            } else {
                let _ = write!(self.0, ".{n:09}");
            }
        }
        self.0.push_str("Z\"");
        Ok(())
    }
}

pub(super) use qscheduler_core::time::civil_from_unix as civil;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eventlog::test_event as event;
    use proptest::prelude::*;

    fn json(kind: EventKind) -> serde_json::Value {
        serde_json::from_str(&to_json(&task_event("pool", &event(kind))).unwrap()).unwrap()
    }

    #[test]
    fn every_kind_has_its_type_category_and_details() {
        let v = json(EventKind::Reprioritized {
            old_priority: 1,
            new_priority: 0,
        });
        assert_eq!(
            v,
            serde_json::json!({
                "event_type": "QSCHEDULER_REPRIORITIZED",
                "scheduler_id": "pool",
                "task_id": "t1",
                "time": "2030-01-01T00:00:05.500Z",
                "base_labels": ["a:1", "b:2"],
                "provisionable_labels": ["p:1"],
                "account_id": "acc",
                "account_valid": false,
                "account_balance": [0.0, 0.0, 0.0, 0.0, 0.0],
                "cost": [1.5, 0.0, 0.0, 0.0, 0.25],
                "bot_id": "bot",
                "bot_dimensions": ["a:1"],
                "category": "CATEGORY_QSCHEDULER",
                "is_callback": true,
                "reprioritized_details": {"old_priority": 1, "new_priority": 0},
            })
        );
        let v = json(EventKind::Unassigned);
        assert_eq!(v["event_type"], "QSCHEDULER_UNASSIGNED");
        assert_eq!(v["unassigned_details"], serde_json::json!({}));
        let v = json(EventKind::Completed {
            reason: CompletedReason::InconsistentTaskForBot,
            other_task: Some(Arc::from("t2")),
            other_bot: None,
        });
        assert_eq!(v["category"], "CATEGORY_SWARMING");
        assert_eq!(
            v["completed_details"],
            serde_json::json!({"reason": "INCONSISTENT_TASK_FOR_BOT", "other_task": "t2", "other_bot": ""})
        );
        let v = json(EventKind::Completed {
            reason: CompletedReason::InconsistentBotForTask,
            other_task: None,
            other_bot: Some(Arc::from("b2")),
        });
        assert_eq!(
            v["completed_details"]["reason"],
            "INCONSISTENT_BOT_FOR_TASK"
        );
        assert_eq!(v["completed_details"]["other_bot"], "b2");
        let v = json(EventKind::Completed {
            reason: CompletedReason::IdleTaskAbsent,
            other_task: None,
            other_bot: None,
        });
        assert_eq!(v["completed_details"]["reason"], "IDLE_TASK_ABSENT");
    }

    /// The descriptor-driven proto3 JSON encoding: the oracle of
    /// [`to_json`].
    fn reflect_json(event: &TaskEvent) -> serde_json::Value {
        use prost::Message;
        use prost_reflect::{DynamicMessage, SerializeOptions};
        let options = SerializeOptions::new()
            .use_proto_field_name(true)
            .skip_default_fields(false);
        let desc = qscheduler_wire::descriptor_pool()
            .get_message_by_name("metrics.TaskEvent")
            .unwrap();
        let msg = DynamicMessage::decode(desc, event.encode_to_vec().as_slice()).unwrap();
        let mut out = serde_json::Serializer::new(Vec::new());
        msg.serialize_with_options(&mut out, &options).unwrap();
        serde_json::from_slice(&out.into_inner()).unwrap()
    }

    fn arb_string() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            "[a-z0-9:_-]{1,12}",
            any::<String>(),
            Just("quote\" back\\ nl\n tab\t ctl\u{1} del\u{7f} é 😀".to_string()),
        ]
    }

    fn arb_floats() -> impl Strategy<Value = Vec<f32>> {
        proptest::collection::vec(
            prop_oneof![
                any::<f32>(),
                Just(0.0f32),
                Just(-0.0f32),
                Just(0.1f32),
                Just(f32::NAN),
                Just(f32::INFINITY),
                Just(f32::NEG_INFINITY),
                Just(f32::MAX),
                Just(f32::MIN_POSITIVE),
                (-1_000_000i32..1_000_000).prop_map(|i| i as f32 / 8.0),
            ],
            0..6,
        )
    }

    fn arb_details() -> impl Strategy<Value = Option<Details>> {
        use completed_details::Reason;
        prop_oneof![
            Just(None),
            proptest::collection::vec(arb_string(), 0..3)
                .prop_map(|tags| Some(Details::EnqueuedDetails(EnqueuedDetails { tags }))),
            (
                any::<bool>(),
                -1i32..6,
                any::<bool>(),
                arb_floats(),
                arb_string()
            )
                .prop_map(
                    |(
                        provision_required,
                        priority,
                        preempting,
                        preemption_cost,
                        preempted_task_id,
                    )| {
                        Some(Details::AssignedDetails(AssignedDetails {
                            provision_required,
                            priority,
                            preempting,
                            preemption_cost,
                            preempted_task_id,
                        }))
                    }
                ),
            (arb_string(), arb_string(), any::<i32>(), any::<i32>()).prop_map(|(a, t, p, pp)| {
                Some(Details::PreemptedDetails(PreemptedDetails {
                    preempting_account_id: a,
                    preempting_task_id: t,
                    priority: p,
                    preempting_priority: pp,
                }))
            }),
            (any::<i32>(), any::<i32>()).prop_map(|(o, n)| {
                Some(Details::ReprioritizedDetails(ReprioritizedDetails {
                    old_priority: o,
                    new_priority: n,
                }))
            }),
            (0i32..6, arb_string(), arb_string()).prop_map(|(r, t, b)| {
                Some(Details::CompletedDetails(CompletedDetails {
                    reason: Reason::try_from(r).unwrap() as i32,
                    other_task: t,
                    other_bot: b,
                }))
            }),
            Just(Some(Details::UnassignedDetails(UnassignedDetails {}))),
        ]
    }

    fn arb_event() -> impl Strategy<Value = TaskEvent> {
        let types = [
            EventType::Unspecified,
            EventType::SwarmingEnqueued,
            EventType::SwarmingCompleted,
            EventType::QschedulerAssigned,
            EventType::QschedulerPreempted,
            EventType::QschedulerReprioritized,
            EventType::QschedulerUnassigned,
        ];
        let categories = [
            EventCategory::CategoryUnspecified,
            EventCategory::CategorySwarming,
            EventCategory::CategoryQscheduler,
        ];
        let time = (
            -62_135_596_800i64..=253_402_300_799,
            prop_oneof![
                Just(0i32),
                (0i32..1000).prop_map(|m| m * 1_000_000),
                (0i32..1_000_000).prop_map(|u| u * 1000),
                0i32..1_000_000_000,
            ],
        )
            .prop_map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos });
        (
            (
                proptest::sample::select(types.to_vec()),
                arb_string(),
                arb_string(),
                time,
                proptest::collection::vec(arb_string(), 0..4),
                proptest::collection::vec(arb_string(), 0..3),
                arb_string(),
                any::<bool>(),
            ),
            (
                arb_floats(),
                arb_floats(),
                arb_string(),
                proptest::collection::vec(arb_string(), 0..4),
                proptest::sample::select(categories.to_vec()),
                any::<bool>(),
                arb_details(),
            ),
        )
            .prop_map(
                |(
                    (event_type, scheduler_id, task_id, time, base, prov, account_id, valid),
                    (balance, cost, bot_id, dims, category, is_callback, details),
                )| TaskEvent {
                    event_type: event_type as i32,
                    scheduler_id,
                    task_id,
                    time: Some(time),
                    base_labels: base,
                    provisionable_labels: prov,
                    account_id,
                    account_valid: valid,
                    account_balance: balance,
                    cost,
                    bot_id,
                    bot_dimensions: dims,
                    category: category as i32,
                    is_callback,
                    details,
                },
            )
    }

    /// Same JSON value as the descriptor-driven encoding, except that NaN
    /// compares by its text (both give the string "NaN").
    fn same(a: &serde_json::Value, b: &serde_json::Value) -> bool {
        use serde_json::Value;
        match (a, b) {
            (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
            (Value::Array(x), Value::Array(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
            }
            (Value::Object(x), Value::Object(y)) => {
                x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
            }
            _ => a == b,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn hand_written_json_equals_the_descriptor_encoding(event in arb_event()) {
            let line = to_json(&event).unwrap();
            prop_assert!(!line.contains('\n'));
            let ours: serde_json::Value = serde_json::from_str(&line).unwrap();
            let theirs = reflect_json(&event);
            prop_assert!(same(&ours, &theirs), "ours:   {ours}\ntheirs: {theirs}");
            // Floats read back as the very same f32.
            let back = ours["account_balance"].as_array().unwrap();
            for (f, v) in event.account_balance.iter().zip(back) {
                if f.is_finite() {
                    prop_assert_eq!(v.as_f64().unwrap() as f32, *f);
                }
            }
        }
    }
}
