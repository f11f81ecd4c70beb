//! Requests to scheduler inputs, and back: Swarming's messages (reference
//! §5) and the administrative API's (accounts and pool settings). Every
//! value a caller sends is checked here, against the [`Limits`] and the
//! core's own rules, before anything is queued for a pool.
//!
//! Two kinds of problems are told apart in Swarming's messages, as Swarming
//! expects:
//!
//! * A malformed request (a missing time, an empty task or bot id, a
//!   timestamp out of range) is refused as a whole with `INVALID_ARGUMENT`
//!   and a message naming the item and field; nothing of it is applied.
//! * A well-formed item the scheduler cannot handle (three slices, two
//!   account tags, an unknown state) becomes a *task error*: the call
//!   succeeds and the task is cancelled through `GetCancellations`, with the
//!   reason in `extra_info`.

use std::collections::BTreeSet;

use qscheduler_core::{
    AccountChanges, AccountConfig, AssignCall, BotAssignment, CancelReason, Cancellation, Command,
    IdleBot, Notification, NotifyCall, NotifyKind, Time,
};
use qscheduler_wire::protos;
use qscheduler_wire::qscheduler as adm;
use qscheduler_wire::swarming::v1 as pb;
use tonic::Status;

use crate::limits::{
    Limits, check_bot_expiration, check_clock, check_count, check_id, check_labels,
};

/// The tag key that names a task's quota account.
pub const ACCOUNT_TAG_KEY: &str = "qs_account";

/// A protobuf timestamp as a core time, or `INVALID_ARGUMENT` naming `field`.
pub fn time(ts: Option<&prost_types::Timestamp>, field: &str) -> Result<Time, Status> {
    let ts = ts.ok_or_else(|| Status::invalid_argument(format!("{field} is required")))?;
    Time::from_unix(ts.seconds, ts.nanos)
        .map_err(|e| Status::invalid_argument(format!("{field}: {e}")))
}

/// A core time as a protobuf timestamp.
pub fn timestamp(t: Time) -> prost_types::Timestamp {
    let (seconds, nanos) = t.to_unix();
    prost_types::Timestamp { seconds, nanos }
}

/// Checks a pool id from a request (see [`crate::limits::check_pool_id`]).
pub fn pool_id(id: &str, field: &str, limits: &Limits) -> Result<(), Status> {
    crate::limits::check_pool_id(id, field, limits)
}

// The store refuses longer pool ids as a storage failure (UNAVAILABLE,
// which tells clients to retry); the id rule must refuse them first.
const _: () =
    assert!(qscheduler_store::MAX_POOL_ID_BYTES == qscheduler_core::id_rule::MAX_POOL_ID_BYTES);

/// A NotifyTasks request as a core call, given the server's clock `now`.
/// Refuses malformed requests and requests over the [`Limits`]; turns
/// unhandleable items into task errors.
pub fn notify_call(
    req: &pb::NotifyTasksRequest,
    limits: &Limits,
    now: Time,
) -> Result<NotifyCall, Status> {
    pool_id(&req.scheduler_id, "scheduler_id", limits)?;
    check_count(
        req.notifications.len(),
        "notifications",
        limits.max_notifications_per_call,
        "max_notifications_per_call",
    )?;
    let mut notifications = Vec::with_capacity(req.notifications.len());
    for (i, item) in req.notifications.iter().enumerate() {
        let at = |f: &str| format!("notifications[{i}].{f}");
        let time = time(item.time.as_ref(), &at("time"))?;
        check_clock(time, now, &at("time"), limits)?;
        let task = item
            .task
            .as_ref()
            .ok_or_else(|| Status::invalid_argument(format!("{} is required", at("task"))))?;
        let enqueue_time = self::time(task.enqueued_time.as_ref(), &at("task.enqueued_time"))?;
        check_clock(enqueue_time, now, &at("task.enqueued_time"), limits)?;
        if task.id.is_empty() {
            return Err(Status::invalid_argument(format!(
                "{} is required (the task id)",
                at("task.id")
            )));
        }
        check_id(&task.id, &at("task.id"), limits)?;
        check_labels(
            &task.tags,
            &at("task.tags"),
            (limits.max_tags_per_task, "max_tags_per_task"),
            limits,
        )?;
        check_count(
            task.slices.len(),
            &at("task.slices"),
            limits.max_slices_per_task,
            "max_slices_per_task",
        )?;
        for (s, slice) in task.slices.iter().enumerate() {
            check_labels(
                &slice.dimensions,
                &at(&format!("task.slices[{s}].dimensions")),
                (limits.max_dimensions_per_slice, "max_dimensions_per_slice"),
                limits,
            )?;
        }
        let kind = match task.state & !0x0F {
            0x10 => waiting(task, enqueue_time),
            0x20 => {
                if task.bot_id.is_empty() {
                    return Err(Status::invalid_argument(format!(
                        "{} is required for a running task",
                        at("task.bot_id")
                    )));
                }
                check_id(&task.bot_id, &at("task.bot_id"), limits)?;
                NotifyKind::Running {
                    bot_id: task.bot_id.clone(),
                }
            }
            0x30 | 0x40 | 0x50 => NotifyKind::Absent,
            _ => NotifyKind::Error {
                message: format!(
                    "Invalid notification with unhandled state {}.",
                    state_name(task.state)
                ),
            },
        };
        notifications.push(Notification {
            time,
            task_id: task.id.clone(),
            kind,
        });
    }
    Ok(NotifyCall {
        notifications,
        is_callback: req.is_callback,
    })
}

/// The upstream name of a task state, or its number if unknown.
fn state_name(state: i32) -> String {
    pb::task_spec::State::try_from(state)
        .map(|s| s.as_str_name().to_owned())
        .unwrap_or_else(|_| state.to_string())
}

/// A pending task's labels and account (reference §5.3, §5.4), or the
/// task error that makes it unschedulable.
fn waiting(task: &pb::TaskSpec, enqueue_time: Time) -> NotifyKind {
    let (base_labels, provisionable_labels) = match labels(&task.slices) {
        Ok(l) => l,
        Err(message) => return NotifyKind::Error { message },
    };
    let account = match account(&task.tags) {
        Ok(a) => a,
        Err(message) => return NotifyKind::Error { message },
    };
    NotifyKind::Waiting {
        account,
        base_labels,
        provisionable_labels,
        enqueue_time,
        tags: task.tags.clone(),
    }
}

/// Base and provisionable labels from a task's slices.
pub fn labels(slices: &[pb::SliceSpec]) -> Result<(Vec<String>, Vec<String>), String> {
    match slices {
        [only] => Ok((set(&only.dimensions).into_iter().collect(), Vec::new())),
        [first, second] => {
            let s0 = set(&first.dimensions);
            let s1 = set(&second.dimensions);
            if !s1.is_subset(&s0) {
                return Err(
                    "Invalid slice dimensions; task's 2nd slice dimensions are not a \
                            subset of 1st slice dimensions."
                        .to_owned(),
                );
            }
            let prov = s0.difference(&s1).cloned().collect();
            Ok((s1.into_iter().collect(), prov))
        }
        _ => Err(format!(
            "Invalid slice count {}; quotascheduler only supports 1-slice or 2-slice tasks.",
            slices.len()
        )),
    }
}

fn set(v: &[String]) -> BTreeSet<String> {
    v.iter().cloned().collect()
}

/// The quota account named by a task's `qs_account` tag ("" if none).
pub fn account(tags: &[String]) -> Result<String, String> {
    let mut found = tags.iter().filter_map(|t| {
        let (k, v) = t.split_once(':').unwrap_or((t, ""));
        (k == ACCOUNT_TAG_KEY).then_some(v)
    });
    match (found.next(), found.next()) {
        (None, _) => Ok(String::new()),
        (Some(v), None) => Ok(v.to_owned()),
        (Some(_), Some(_)) => Err("Too many account tags.".to_owned()),
    }
}

/// An AssignTasks request as a core call, given the server's clock `now`.
pub fn assign_call(
    req: &pb::AssignTasksRequest,
    limits: &Limits,
    now: Time,
) -> Result<AssignCall, Status> {
    pool_id(&req.scheduler_id, "scheduler_id", limits)?;
    let time = time(req.time.as_ref(), "time")?;
    check_clock(time, now, "time", limits)?;
    check_count(
        req.idle_bots.len(),
        "idle_bots",
        limits.max_bots_per_call,
        "max_bots_per_call",
    )?;
    let mut bots = Vec::with_capacity(req.idle_bots.len());
    for (i, bot) in req.idle_bots.iter().enumerate() {
        check_id(&bot.bot_id, &format!("idle_bots[{i}].bot_id"), limits)?;
        check_labels(
            &bot.dimensions,
            &format!("idle_bots[{i}].dimensions"),
            (limits.max_dimensions_per_bot, "max_dimensions_per_bot"),
            limits,
        )?;
        bots.push(IdleBot {
            id: bot.bot_id.clone(),
            labels: bot.dimensions.clone(),
        });
    }
    Ok(AssignCall { time, bots })
}

/// The response to an AssignTasks call.
pub fn assign_response(assignments: Vec<BotAssignment>) -> pb::AssignTasksResponse {
    pb::AssignTasksResponse {
        assignments: assignments
            .into_iter()
            .map(|a| pb::TaskAssignment {
                bot_id: a.bot_id.to_string(),
                task_id: a.task_id.to_string(),
                slice_number: i32::from(a.provision_required),
            })
            .collect(),
    }
}

/// The response to a GetCancellations call.
pub fn cancellations_response(list: Vec<Cancellation>) -> pb::GetCancellationsResponse {
    use pb::get_cancellations_response::{Cancellation as PbCancellation, cancellation::Reason};
    pb::GetCancellationsResponse {
        cancellations: list
            .into_iter()
            .map(|c| PbCancellation {
                bot_id: c.bot_id.map(|b| b.to_string()).unwrap_or_default(),
                task_id: c.task_id.to_string(),
                reason: match c.reason {
                    CancelReason::Preempted => Reason::Preempted,
                    CancelReason::Error => Reason::Error,
                } as i32,
                extra_info: c.extra_info,
            })
            .collect(),
    }
}

// ---- administration ----

/// An account configuration from the API, checked, naming `field` on error.
pub fn account_config(
    c: Option<&protos::AccountConfig>,
    field: &str,
) -> Result<AccountConfig, Status> {
    let Some(c) = c else {
        return Ok(AccountConfig::default());
    };
    let invalid = |e: &dyn std::fmt::Display| Status::invalid_argument(format!("{field}.{e}"));
    let config = AccountConfig {
        charge_rate: AccountConfig::rates_from_slice(&c.charge_rate).map_err(|e| invalid(&e))?,
        max_charge_seconds: c.max_charge_seconds,
        max_fanout: c.max_fanout,
        disable_free_tasks: c.disable_free_tasks,
        description: c.description.clone(),
        per_label_task_limits: c
            .per_label_task_limits
            .iter()
            .map(|(k, &v)| (k.clone(), v))
            .collect(),
    };
    config.validate().map_err(|e| invalid(&e))?;
    Ok(config)
}

/// The API form of an account configuration (always five rates).
pub fn account_config_pb(c: &AccountConfig) -> protos::AccountConfig {
    protos::AccountConfig {
        charge_rate: c.charge_rate.to_vec(),
        max_charge_seconds: c.max_charge_seconds,
        max_fanout: c.max_fanout,
        disable_free_tasks: c.disable_free_tasks,
        description: c.description.clone(),
        per_label_task_limits: c
            .per_label_task_limits
            .iter()
            .map(|(k, &v)| (k.clone(), v))
            .collect(),
    }
}

/// A CreateAccount request as the command to log, or `INVALID_ARGUMENT`
/// naming the field.
pub fn create_account_command(
    req: &adm::CreateAccountRequest,
    limits: &Limits,
) -> Result<Command, Status> {
    pool_id(&req.pool_id, "pool_id", limits)?;
    check_id(&req.account_id, "account_id", limits)?;
    let config = account_config(req.config.as_ref(), "config")?;
    Ok(Command::CreateAccount {
        account_id: req.account_id.clone(),
        config,
    })
}

/// A ModAccount request as the command to log, or `INVALID_ARGUMENT`
/// naming the field. Whether the account exists is the pool writer's
/// question (`NOT_FOUND`).
pub fn mod_account_command(
    req: &adm::ModAccountRequest,
    limits: &Limits,
) -> Result<Command, Status> {
    pool_id(&req.pool_id, "pool_id", limits)?;
    check_id(&req.account_id, "account_id", limits)?;
    let changes = AccountChanges {
        charge_rate: (!req.charge_rate.is_empty()).then(|| req.charge_rate.clone()),
        max_charge_seconds: req.max_charge_seconds,
        max_fanout: req.max_fanout,
        disable_free_tasks: req.disable_free_tasks,
        description: req.description.clone(),
        per_label_task_limits: (!req.per_label_task_limits.is_empty()).then(|| {
            req.per_label_task_limits
                .iter()
                .map(|(k, &v)| (k.clone(), v))
                .collect()
        }),
        reset_balance: req.reset_balance,
    };
    // Range checks against a neutral config name the bad field before
    // anything is queued.
    changes
        .apply_to(&AccountConfig::default())
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(Command::ModAccount {
        account_id: req.account_id.clone(),
        changes,
    })
}

/// A ModSchedulerPool request as the command to log.
pub fn mod_pool_command(
    req: &adm::ModSchedulerPoolRequest,
    limits: &Limits,
) -> Result<Command, Status> {
    pool_id(&req.pool_id, "pool_id", limits)?;
    if let Some(secs) = req.bot_expiration_seconds {
        check_bot_expiration(i64::from(secs), "bot_expiration_seconds", limits)?;
    }
    Ok(Command::ModPool {
        disable_preemption: req.disable_preemption,
        bot_expiration_secs: req.bot_expiration_seconds,
    })
}

/// A DeleteAccount request as the command to log.
pub fn delete_account_command(
    req: &adm::DeleteAccountRequest,
    limits: &Limits,
) -> Result<Command, Status> {
    pool_id(&req.pool_id, "pool_id", limits)?;
    check_id(&req.account_id, "account_id", limits)?;
    Ok(Command::DeleteAccount {
        account_id: req.account_id.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_ids() {
        let l = Limits::default();
        assert!(pool_id("pool-1", "pool_id", &l).is_ok());
        for bad in ["", "a\0b", "a\nb"] {
            let e = pool_id(bad, "pool_id", &l).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}");
        }
        let lax = Limits {
            max_id_bytes: usize::MAX,
            max_id_chars: usize::MAX,
            ..Limits::default()
        };
        let long = "x".repeat(qscheduler_store::MAX_POOL_ID_BYTES + 1);
        assert_eq!(
            pool_id(&long, "pool_id", &lax).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }

    fn notify_call_now(req: &pb::NotifyTasksRequest) -> Result<NotifyCall, Status> {
        notify_call(req, &Limits::default(), Time::from_secs(1000))
    }

    fn assign_call_now(req: &pb::AssignTasksRequest) -> Result<AssignCall, Status> {
        assign_call(req, &Limits::default(), Time::from_secs(1000))
    }

    #[test]
    fn limits_name_the_field_and_the_setting() {
        let l = Limits::default();
        let now = Time::from_secs(1000);
        let mut req = notify(vec![task("p", 0x10, vec![vec!["a"]], vec![])]);
        req.notifications[0].time = ts(1000 + 3601);
        let e = notify_call(&req, &l, now).unwrap_err();
        assert!(e.message().starts_with("notifications[0].time"), "{e}");
        assert!(e.message().contains("max_clock_skew"), "{e}");
        let req = notify(vec![task("p\nforged", 0x10, vec![vec!["a"]], vec![])]);
        let e = notify_call(&req, &l, now).unwrap_err();
        assert!(e.message().starts_with("notifications[0].task.id"), "{e}");
        let long = "t".repeat(l.max_label_bytes + 1);
        let req = notify(vec![task("p", 0x10, vec![vec!["a"]], vec![&long])]);
        let e = notify_call(&req, &l, now).unwrap_err();
        assert!(
            e.message().starts_with("notifications[0].task.tags[0]"),
            "{e}"
        );
        let req = pb::AssignTasksRequest {
            scheduler_id: "p".into(),
            idle_bots: vec![pb::IdleBot {
                bot_id: "b".into(),
                dimensions: vec![String::new(); l.max_dimensions_per_bot + 1],
            }],
            time: ts(5),
        };
        let e = assign_call(&req, &l, now).unwrap_err();
        assert!(e.message().starts_with("idle_bots[0].dimensions"), "{e}");
        assert!(e.message().contains("limits.max_dimensions_per_bot"), "{e}");
        let req = pb::AssignTasksRequest {
            scheduler_id: "p".into(),
            idle_bots: vec![],
            time: ts(1000 + 7200),
        };
        let e = assign_call(&req, &l, now).unwrap_err();
        assert!(e.message().starts_with("time"), "{e}");
    }

    fn ts(s: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp {
            seconds: s,
            nanos: 0,
        })
    }

    fn task(id: &str, state: i32, slices: Vec<Vec<&str>>, tags: Vec<&str>) -> pb::TaskSpec {
        pb::TaskSpec {
            id: id.into(),
            tags: tags.into_iter().map(String::from).collect(),
            slices: slices
                .into_iter()
                .map(|d| pb::SliceSpec {
                    dimensions: d.into_iter().map(String::from).collect(),
                })
                .collect(),
            state,
            bot_id: String::new(),
            enqueued_time: ts(100),
        }
    }

    fn notify(tasks: Vec<pb::TaskSpec>) -> pb::NotifyTasksRequest {
        pb::NotifyTasksRequest {
            scheduler_id: "pool".into(),
            notifications: tasks
                .into_iter()
                .map(|t| pb::NotifyTasksItem {
                    time: ts(200),
                    task: Some(t),
                })
                .collect(),
            is_callback: false,
        }
    }

    #[test]
    fn slices_to_labels() {
        let one = labels(&[pb::SliceSpec {
            dimensions: vec!["b".into(), "a".into(), "a".into()],
        }])
        .unwrap();
        assert_eq!(one, (vec!["a".to_string(), "b".to_string()], vec![]));
        let two = labels(&[
            pb::SliceSpec {
                dimensions: vec!["pool:p".into(), "os:x".into(), "fw:2".into()],
            },
            pb::SliceSpec {
                dimensions: vec!["pool:p".into(), "os:x".into()],
            },
        ])
        .unwrap();
        assert_eq!(
            two,
            (
                vec!["os:x".to_string(), "pool:p".to_string()],
                vec!["fw:2".to_string()]
            )
        );
        let bad = labels(&[
            pb::SliceSpec {
                dimensions: vec!["a".into()],
            },
            pb::SliceSpec {
                dimensions: vec!["b".into()],
            },
        ]);
        assert!(bad.unwrap_err().contains("not a subset"));
        assert!(labels(&[]).unwrap_err().contains("Invalid slice count 0"));
    }

    #[test]
    fn account_tags() {
        assert_eq!(account(&[]).unwrap(), "");
        assert_eq!(
            account(&["x:y".into(), "qs_account:team:a".into()]).unwrap(),
            "team:a"
        );
        assert_eq!(account(&["qs_account".into()]).unwrap(), "");
        assert!(account(&["qs_account:a".into(), "qs_account:a".into()]).is_err());
    }

    #[test]
    fn states_and_task_errors() {
        let call = notify_call_now(&notify(vec![
            task("p", 0x11, vec![vec!["a"]], vec!["qs_account:acc"]),
            task("r", 0x20, vec![vec!["a"]], vec![]),
            task("d", 0x43, vec![vec!["a"]], vec![]),
            task("x", 0, vec![vec!["a"]], vec![]),
            task("y", 0x99, vec![vec!["a"]], vec![]),
            task("z", 0x10, vec![vec!["a"], vec!["b"], vec!["c"]], vec![]),
        ]));
        // A running task without a bot is a malformed request.
        let err = call.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(
            err.message().contains("notifications[1].task.bot_id"),
            "{err}"
        );

        let mut running = task("r", 0x20, vec![vec!["a"]], vec![]);
        running.bot_id = "bot".into();
        let call = notify_call_now(&notify(vec![
            task("p", 0x11, vec![vec!["a"]], vec!["qs_account:acc"]),
            running,
            task("d", 0x43, vec![vec!["a"]], vec![]),
            task("x", 0, vec![vec!["a"]], vec![]),
            task("y", 0x99, vec![vec!["a"]], vec![]),
            task("z", 0x10, vec![vec!["a"], vec!["b"], vec!["c"]], vec![]),
        ]))
        .unwrap();
        let kinds: Vec<&NotifyKind> = call.notifications.iter().map(|n| &n.kind).collect();
        assert!(matches!(kinds[0], NotifyKind::Waiting { account, .. } if account == "acc"));
        assert!(matches!(kinds[1], NotifyKind::Running { bot_id } if bot_id == "bot"));
        assert_eq!(kinds[2], &NotifyKind::Absent);
        assert_eq!(
            kinds[3],
            &NotifyKind::Error {
                message: "Invalid notification with unhandled state TASK_STATE_INVALID.".into()
            }
        );
        assert_eq!(
            kinds[4],
            &NotifyKind::Error {
                message: "Invalid notification with unhandled state 153.".into()
            }
        );
        assert!(
            matches!(kinds[5], NotifyKind::Error { message } if message.contains("slice count 3"))
        );
    }

    #[test]
    fn malformed_requests_name_the_field() {
        let mut req = notify(vec![task("p", 0x10, vec![vec!["a"]], vec![])]);
        req.notifications[0].time = None;
        assert!(
            notify_call_now(&req)
                .unwrap_err()
                .message()
                .contains("notifications[0].time")
        );
        let mut req = notify(vec![task("", 0x10, vec![vec!["a"]], vec![])]);
        assert!(
            notify_call_now(&req)
                .unwrap_err()
                .message()
                .contains("notifications[0].task.id")
        );
        req.notifications[0].task.as_mut().unwrap().enqueued_time = None;
        assert!(
            notify_call_now(&req)
                .unwrap_err()
                .message()
                .contains("task.enqueued_time")
        );
        let mut req = notify(vec![]);
        req.scheduler_id.clear();
        assert!(
            notify_call_now(&req)
                .unwrap_err()
                .message()
                .contains("scheduler_id")
        );
        let req = pb::NotifyTasksRequest {
            scheduler_id: "p".into(),
            notifications: vec![pb::NotifyTasksItem {
                time: Some(prost_types::Timestamp {
                    seconds: -5,
                    nanos: 0,
                }),
                task: None,
            }],
            is_callback: false,
        };
        assert!(
            notify_call_now(&req)
                .unwrap_err()
                .message()
                .contains("notifications[0].time")
        );
        let req = pb::AssignTasksRequest {
            scheduler_id: "p".into(),
            idle_bots: vec![pb::IdleBot {
                bot_id: String::new(),
                dimensions: vec![],
            }],
            time: ts(5),
        };
        assert!(
            assign_call_now(&req)
                .unwrap_err()
                .message()
                .contains("idle_bots[0].bot_id")
        );
        let req = pb::AssignTasksRequest {
            scheduler_id: "p".into(),
            idle_bots: vec![],
            time: None,
        };
        assert_eq!(
            assign_call_now(&req).unwrap_err().message(),
            "time is required"
        );
    }
}
