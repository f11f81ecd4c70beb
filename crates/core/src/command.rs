//! Commands: every input that changes a pool, as data.
//!
//! The server turns RPCs into [`Command`]s, writes them to the pool's log,
//! and applies them to the [`crate::pool::Pool`]. Recovery decodes the same
//! bytes and applies them again; because the pool is deterministic, it ends
//! in the same state. Each command carries every time it needs (Swarming's
//! times, or the time the server stamped on an admin call), so nothing
//! depends on when it is replayed.
//!
//! [`Command::validate`] holds the rules that do not depend on state (ids
//! non-empty, configs in range). The server checks them before logging, and
//! decoding checks them again, so neither a bad request nor a corrupt log
//! record can reach the scheduler.

use std::collections::BTreeMap;

use crate::account::{AccountConfig, NUM_PRIORITIES};
use crate::codec::{DecodeError, Reader, Writer};
use crate::reconciler::IdleBot;
use crate::time::Time;

/// What a notification says about a task (reference §5.1–§5.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotifyKind {
    /// The task is pending.
    Waiting {
        /// Quota account ("" for none).
        account: String,
        /// Labels a bot must have.
        base_labels: Vec<String>,
        /// Labels a bot should have to avoid provisioning.
        provisionable_labels: Vec<String>,
        /// When Swarming created the task.
        enqueue_time: Time,
        /// The task's tags (for the enqueued event).
        tags: Vec<String>,
    },
    /// The task runs on a bot.
    Running {
        /// The bot (non-empty).
        bot_id: String,
    },
    /// The task is finished or gone.
    Absent,
    /// The scheduler cannot handle the task: it will be cancelled.
    Error {
        /// Why.
        message: String,
    },
}

/// One notification item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    /// When Swarming observed the state.
    pub time: Time,
    /// The task (non-empty).
    pub task_id: String,
    /// The state.
    pub kind: NotifyKind,
}

/// One NotifyTasks call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NotifyCall {
    /// Items, applied in order.
    pub notifications: Vec<Notification>,
    /// Sent because of a callback request (marks the events).
    pub is_callback: bool,
}

/// Upper bound of the bytes of an encoded [`Command::Batch`] beyond those
/// of its calls (see [`NotifyCall::size_bound`]).
pub const BATCH_SIZE_BOUND: usize = 64;

/// Upper bound of the encoded size of a string.
fn str_bound(s: &str) -> usize {
    s.len() + 10
}

/// Upper bound of the encoded size of a list of strings.
fn strs_bound(v: &[String]) -> usize {
    10 + v.iter().map(|s| str_bound(s)).sum::<usize>()
}

impl NotifyCall {
    /// An upper bound of the bytes this call adds to an encoded
    /// [`Command::Batch`], cheap to compute: lets a writer keep batches
    /// under a record size limit without encoding twice.
    pub fn size_bound(&self) -> usize {
        16 + self
            .notifications
            .iter()
            .map(|n| {
                // Time, kind tag, enqueue time, lengths and flags: at most
                // a 10-byte varint each.
                96 + str_bound(&n.task_id)
                    + match &n.kind {
                        NotifyKind::Waiting {
                            account,
                            base_labels,
                            provisionable_labels,
                            tags,
                            ..
                        } => {
                            str_bound(account)
                                + strs_bound(base_labels)
                                + strs_bound(provisionable_labels)
                                + strs_bound(tags)
                        }
                        NotifyKind::Running { bot_id } => str_bound(bot_id),
                        NotifyKind::Absent => 0,
                        NotifyKind::Error { message } => str_bound(message),
                    }
            })
            .sum::<usize>()
    }

    /// Checks every item: ids present.
    pub fn validate(&self) -> Result<(), CommandError> {
        for (i, n) in self.notifications.iter().enumerate() {
            if n.task_id.is_empty() {
                return Err(CommandError::Invalid(format!(
                    "notifications[{i}].task.id: a task id is required"
                )));
            }
            if let NotifyKind::Running { bot_id } = &n.kind
                && bot_id.is_empty()
            {
                return Err(CommandError::Invalid(format!(
                    "notifications[{i}].task.bot_id: a bot id is required for a running task"
                )));
            }
        }
        Ok(())
    }
}

impl AssignCall {
    /// An upper bound of the bytes this call adds to an encoded
    /// [`Command::Batch`] (see [`NotifyCall::size_bound`]).
    pub fn size_bound(&self) -> usize {
        32 + self
            .bots
            .iter()
            .map(|b| str_bound(&b.id) + strs_bound(&b.labels))
            .sum::<usize>()
    }

    /// Checks every bot: ids present.
    pub fn validate(&self) -> Result<(), CommandError> {
        for (i, bot) in self.bots.iter().enumerate() {
            if bot.id.is_empty() {
                return Err(CommandError::Invalid(format!(
                    "idle_bots[{i}].bot_id: a bot id is required"
                )));
            }
        }
        Ok(())
    }
}

/// One AssignTasks call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AssignCall {
    /// Swarming's current time.
    pub time: Time,
    /// The bots asking for work.
    pub bots: Vec<IdleBot>,
}

/// Concurrent Swarming calls executed together: notifications first (in
/// arrival order), then one scheduling pass for all assign calls.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// NotifyTasks calls in arrival order.
    pub notifies: Vec<NotifyCall>,
    /// AssignTasks calls in arrival order.
    pub assigns: Vec<AssignCall>,
}

/// Changes to an account; `None` fields stay as they are.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AccountChanges {
    /// New charge rates (up to five; missing levels become zero).
    pub charge_rate: Option<Vec<f32>>,
    /// New `max_charge_seconds`.
    pub max_charge_seconds: Option<f32>,
    /// New `max_fanout`.
    pub max_fanout: Option<i32>,
    /// New `disable_free_tasks`.
    pub disable_free_tasks: Option<bool>,
    /// New description.
    pub description: Option<String>,
    /// New per-label limits (replaces the whole map).
    pub per_label_task_limits: Option<BTreeMap<String, i32>>,
    /// Zero the balance.
    pub reset_balance: bool,
}

impl AccountChanges {
    /// The configuration after applying these changes to `config`.
    pub fn apply_to(&self, config: &AccountConfig) -> Result<AccountConfig, CommandError> {
        let mut c = config.clone();
        if let Some(r) = &self.charge_rate {
            c.charge_rate = AccountConfig::rates_from_slice(r).map_err(CommandError::Config)?;
        }
        if let Some(v) = self.max_charge_seconds {
            c.max_charge_seconds = v;
        }
        if let Some(v) = self.max_fanout {
            c.max_fanout = v;
        }
        if let Some(v) = self.disable_free_tasks {
            c.disable_free_tasks = v;
        }
        if let Some(v) = &self.description {
            c.description = v.clone();
        }
        if let Some(v) = &self.per_label_task_limits {
            c.per_label_task_limits = v.clone();
        }
        c.validate().map_err(CommandError::Config)?;
        Ok(c)
    }
}

/// Every input that changes a pool.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// Swarming's calls.
    Batch(Batch),
    /// Create or replace an account (resets its balance).
    CreateAccount {
        /// Account id (non-empty).
        account_id: String,
        /// Its configuration.
        config: AccountConfig,
    },
    /// Change an existing account.
    ModAccount {
        /// Account id.
        account_id: String,
        /// What to change.
        changes: AccountChanges,
    },
    /// Remove an account.
    DeleteAccount {
        /// Account id.
        account_id: String,
    },
    /// Change pool settings.
    ModPool {
        /// New preemption setting.
        disable_preemption: Option<bool>,
        /// New bot expiration in seconds (0 = default 300 s).
        bot_expiration_secs: Option<i32>,
    },
    /// Start the pool afresh: no accounts, default settings, the clock at
    /// `time`. The first record of every pool's log.
    Create {
        /// The server's time when the pool was created.
        time: Time,
    },
    /// Forget all tasks, bots and balances; keep the configuration.
    Wipe {
        /// The server's time when the wipe was requested.
        time: Time,
    },
}

/// Why a command was refused.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum CommandError {
    /// A field is missing or malformed.
    #[error("{0}")]
    Invalid(String),
    /// An account configuration value is out of range.
    #[error(transparent)]
    Config(#[from] crate::account::ConfigError),
    /// The account does not exist.
    #[error("no account with id {0:?}")]
    NoSuchAccount(String),
}

impl Command {
    /// Checks everything that does not depend on the pool's state.
    pub fn validate(&self) -> Result<(), CommandError> {
        let invalid = |m: String| Err(CommandError::Invalid(m));
        match self {
            Command::Batch(b) => {
                for (ci, call) in b.notifies.iter().enumerate() {
                    call.validate()
                        .map_err(|e| CommandError::Invalid(format!("notify call {ci}: {e}")))?;
                }
                for (ci, call) in b.assigns.iter().enumerate() {
                    call.validate()
                        .map_err(|e| CommandError::Invalid(format!("assign call {ci}: {e}")))?;
                }
                Ok(())
            }
            Command::CreateAccount { account_id, config } => {
                if account_id.is_empty() {
                    return invalid("account id is required".into());
                }
                config.validate()?;
                Ok(())
            }
            Command::ModAccount {
                account_id,
                changes,
            } => {
                if account_id.is_empty() {
                    return invalid("account id is required".into());
                }
                if let Some(r) = &changes.charge_rate
                    && r.len() > NUM_PRIORITIES
                {
                    return Err(crate::account::ConfigError::TooManyRates(r.len()).into());
                }
                // Range checks need the current config; apply_to does them.
                let probe = AccountConfig::default();
                changes.apply_to(&probe).map(|_| ())
            }
            Command::DeleteAccount { account_id } => {
                if account_id.is_empty() {
                    return invalid("account id is required".into());
                }
                Ok(())
            }
            Command::ModPool { .. } | Command::Wipe { .. } | Command::Create { .. } => Ok(()),
        }
    }

    /// Encodes the command for the pool's log.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(COMMAND_VERSION);
        match self {
            Command::Batch(b) => {
                w.u8(0);
                w.len(b.notifies.len());
                for call in &b.notifies {
                    w.bool(call.is_callback);
                    w.len(call.notifications.len());
                    for n in &call.notifications {
                        w.time(n.time);
                        w.str(&n.task_id);
                        match &n.kind {
                            NotifyKind::Waiting {
                                account,
                                base_labels,
                                provisionable_labels,
                                enqueue_time,
                                tags,
                            } => {
                                w.u8(0);
                                w.str(account);
                                write_strs(&mut w, base_labels);
                                write_strs(&mut w, provisionable_labels);
                                w.time(*enqueue_time);
                                write_strs(&mut w, tags);
                            }
                            NotifyKind::Running { bot_id } => {
                                w.u8(1);
                                w.str(bot_id);
                            }
                            NotifyKind::Absent => w.u8(2),
                            NotifyKind::Error { message } => {
                                w.u8(3);
                                w.str(message);
                            }
                        }
                    }
                }
                w.len(b.assigns.len());
                for call in &b.assigns {
                    w.time(call.time);
                    w.len(call.bots.len());
                    for bot in &call.bots {
                        w.str(&bot.id);
                        write_strs(&mut w, &bot.labels);
                    }
                }
            }
            Command::CreateAccount { account_id, config } => {
                w.u8(1);
                w.str(account_id);
                write_config(&mut w, config);
            }
            Command::ModAccount {
                account_id,
                changes: c,
            } => {
                w.u8(2);
                w.str(account_id);
                write_opt(&mut w, c.charge_rate.as_ref(), |w, r| {
                    w.len(r.len());
                    r.iter().for_each(|&v| w.f32(v));
                });
                write_opt(&mut w, c.max_charge_seconds.as_ref(), |w, &v| w.f32(v));
                write_opt(&mut w, c.max_fanout.as_ref(), |w, &v| w.zigzag(v.into()));
                write_opt(&mut w, c.disable_free_tasks.as_ref(), |w, &v| w.bool(v));
                write_opt(&mut w, c.description.as_ref(), |w, v| w.str(v));
                write_opt(&mut w, c.per_label_task_limits.as_ref(), write_limits);
                w.bool(c.reset_balance);
            }
            Command::DeleteAccount { account_id } => {
                w.u8(3);
                w.str(account_id);
            }
            Command::ModPool {
                disable_preemption,
                bot_expiration_secs,
            } => {
                w.u8(4);
                write_opt(&mut w, disable_preemption.as_ref(), |w, &v| w.bool(v));
                write_opt(&mut w, bot_expiration_secs.as_ref(), |w, &v| {
                    w.zigzag(v.into())
                });
            }
            Command::Wipe { time } => {
                w.u8(5);
                w.time(*time);
            }
            Command::Create { time } => {
                w.u8(6);
                w.time(*time);
            }
        }
        w.buf
    }

    /// Decodes and validates a logged command.
    pub fn decode(bytes: &[u8]) -> Result<Command, DecodeError> {
        let mut r = Reader::new(bytes);
        let version = r.u8()?;
        if version != COMMAND_VERSION {
            return Err(DecodeError::Version {
                what: "command",
                version: version.into(),
            });
        }
        let cmd = match r.u8()? {
            0 => {
                let mut b = Batch::default();
                for _ in 0..r.len(2)? {
                    let is_callback = r.bool()?;
                    let mut notifications = Vec::new();
                    for _ in 0..r.len(4)? {
                        let time = r.time()?;
                        let task_id = r.str()?.to_owned();
                        let kind = match r.u8()? {
                            0 => NotifyKind::Waiting {
                                account: r.str()?.to_owned(),
                                base_labels: read_strs(&mut r)?,
                                provisionable_labels: read_strs(&mut r)?,
                                enqueue_time: r.time()?,
                                tags: read_strs(&mut r)?,
                            },
                            1 => NotifyKind::Running {
                                bot_id: r.str()?.to_owned(),
                            },
                            2 => NotifyKind::Absent,
                            3 => NotifyKind::Error {
                                message: r.str()?.to_owned(),
                            },
                            k => {
                                return Err(DecodeError::Invalid(format!("notification kind {k}")));
                            }
                        };
                        notifications.push(Notification {
                            time,
                            task_id,
                            kind,
                        });
                    }
                    b.notifies.push(NotifyCall {
                        notifications,
                        is_callback,
                    });
                }
                for _ in 0..r.len(2)? {
                    let time = r.time()?;
                    let mut bots = Vec::new();
                    for _ in 0..r.len(2)? {
                        let id = r.str()?.to_owned();
                        bots.push(IdleBot {
                            id,
                            labels: read_strs(&mut r)?,
                        });
                    }
                    b.assigns.push(AssignCall { time, bots });
                }
                Command::Batch(b)
            }
            1 => Command::CreateAccount {
                account_id: r.str()?.to_owned(),
                config: read_config(&mut r)?,
            },
            2 => {
                let account_id = r.str()?.to_owned();
                let changes = AccountChanges {
                    charge_rate: read_opt(&mut r, |r| {
                        let n = r.len(4)?;
                        (0..n).map(|_| r.f32()).collect()
                    })?,
                    max_charge_seconds: read_opt(&mut r, |r| r.f32())?,
                    max_fanout: read_opt(&mut r, read_i32)?,
                    disable_free_tasks: read_opt(&mut r, |r| r.bool())?,
                    description: read_opt(&mut r, |r| r.str().map(str::to_owned))?,
                    per_label_task_limits: read_opt(&mut r, read_limits)?,
                    reset_balance: r.bool()?,
                };
                Command::ModAccount {
                    account_id,
                    changes,
                }
            }
            3 => Command::DeleteAccount {
                account_id: r.str()?.to_owned(),
            },
            4 => Command::ModPool {
                disable_preemption: read_opt(&mut r, |r| r.bool())?,
                bot_expiration_secs: read_opt(&mut r, read_i32)?,
            },
            5 => Command::Wipe { time: r.time()? },
            6 => Command::Create { time: r.time()? },
            k => return Err(DecodeError::Invalid(format!("command kind {k}"))),
        };
        r.finish()?;
        cmd.validate()
            .map_err(|e| DecodeError::Invalid(format!("logged command: {e}")))?;
        Ok(cmd)
    }
}

const COMMAND_VERSION: u8 = 1;

fn write_strs(w: &mut Writer, v: &[String]) {
    w.len(v.len());
    for s in v {
        w.str(s);
    }
}

fn read_strs(r: &mut Reader<'_>) -> Result<Vec<String>, DecodeError> {
    let n = r.len(1)?;
    (0..n).map(|_| r.str().map(str::to_owned)).collect()
}

fn write_opt<T>(w: &mut Writer, v: Option<&T>, f: impl FnOnce(&mut Writer, &T)) {
    match v {
        None => w.bool(false),
        Some(v) => {
            w.bool(true);
            f(w, v);
        }
    }
}

fn read_opt<T>(
    r: &mut Reader<'_>,
    f: impl FnOnce(&mut Reader<'_>) -> Result<T, DecodeError>,
) -> Result<Option<T>, DecodeError> {
    if r.bool()? { f(r).map(Some) } else { Ok(None) }
}

fn read_i32(r: &mut Reader<'_>) -> Result<i32, DecodeError> {
    i32::try_from(r.zigzag()?).map_err(|_| DecodeError::Invalid("int32 out of range".into()))
}

fn write_limits(w: &mut Writer, m: &BTreeMap<String, i32>) {
    w.len(m.len());
    for (k, &v) in m {
        w.str(k);
        w.zigzag(v.into());
    }
}

fn read_limits(r: &mut Reader<'_>) -> Result<BTreeMap<String, i32>, DecodeError> {
    let n = r.len(2)?;
    let mut m = BTreeMap::new();
    for _ in 0..n {
        let k = r.str()?.to_owned();
        m.insert(k, read_i32(r)?);
    }
    Ok(m)
}

pub(crate) fn write_config(w: &mut Writer, c: &AccountConfig) {
    c.charge_rate.iter().for_each(|&v| w.f32(v));
    w.f32(c.max_charge_seconds);
    w.zigzag(c.max_fanout.into());
    w.bool(c.disable_free_tasks);
    w.str(&c.description);
    write_limits(w, &c.per_label_task_limits);
}

pub(crate) fn read_config(r: &mut Reader<'_>) -> Result<AccountConfig, DecodeError> {
    let mut c = AccountConfig::default();
    for v in c.charge_rate.iter_mut() {
        *v = r.f32()?;
    }
    c.max_charge_seconds = r.f32()?;
    c.max_fanout = read_i32(r)?;
    c.disable_free_tasks = r.bool()?;
    c.description = r.str()?.to_owned();
    c.per_label_task_limits = read_limits(r)?;
    c.validate()
        .map_err(|e| DecodeError::Invalid(format!("account config: {e}")))?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample_batch() -> Command {
        Command::Batch(Batch {
            notifies: vec![NotifyCall {
                is_callback: true,
                notifications: vec![
                    Notification {
                        time: Time::from_secs(10),
                        task_id: "t1".into(),
                        kind: NotifyKind::Waiting {
                            account: "a".into(),
                            base_labels: vec!["os:linux".into()],
                            provisionable_labels: vec!["cache:1".into()],
                            enqueue_time: Time::from_secs(5),
                            tags: vec!["qs_account:a".into()],
                        },
                    },
                    Notification {
                        time: Time::from_secs(11),
                        task_id: "t2".into(),
                        kind: NotifyKind::Running {
                            bot_id: "b1".into(),
                        },
                    },
                    Notification {
                        time: Time::from_secs(12),
                        task_id: "t3".into(),
                        kind: NotifyKind::Absent,
                    },
                    Notification {
                        time: Time::from_secs(13),
                        task_id: "t4".into(),
                        kind: NotifyKind::Error {
                            message: "bad".into(),
                        },
                    },
                ],
            }],
            assigns: vec![AssignCall {
                time: Time::from_secs(20),
                bots: vec![IdleBot {
                    id: "b2".into(),
                    labels: vec!["os:linux".into()],
                }],
            }],
        })
    }

    #[test]
    fn round_trip_every_kind() {
        let cmds = vec![
            sample_batch(),
            Command::CreateAccount {
                account_id: "a".into(),
                config: AccountConfig {
                    charge_rate: [1.0, 2.0, 0.0, 0.0, 0.5],
                    max_charge_seconds: 60.0,
                    max_fanout: 3,
                    disable_free_tasks: true,
                    description: "team a".into(),
                    per_label_task_limits: [("label-model".to_string(), 2)].into(),
                },
            },
            Command::ModAccount {
                account_id: "a".into(),
                changes: AccountChanges {
                    charge_rate: Some(vec![3.0]),
                    max_charge_seconds: None,
                    max_fanout: Some(1),
                    disable_free_tasks: Some(false),
                    description: Some("x".into()),
                    per_label_task_limits: None,
                    reset_balance: true,
                },
            },
            Command::DeleteAccount {
                account_id: "a".into(),
            },
            Command::ModPool {
                disable_preemption: Some(true),
                bot_expiration_secs: Some(-5),
            },
            Command::Wipe {
                time: Time::from_secs(99),
            },
            Command::Create {
                time: Time::from_secs(7),
            },
        ];
        for c in cmds {
            let bytes = c.encode();
            assert_eq!(Command::decode(&bytes).unwrap(), c);
            // Every strict prefix is rejected, never accepted or panicking.
            for n in 0..bytes.len() {
                assert!(Command::decode(&bytes[..n]).is_err());
            }
        }
    }

    #[test]
    fn validation_names_the_problem() {
        let mut b = Batch::default();
        b.notifies.push(NotifyCall {
            is_callback: false,
            notifications: vec![Notification {
                time: Time::EPOCH,
                task_id: "t".into(),
                kind: NotifyKind::Running { bot_id: "".into() },
            }],
        });
        let err = Command::Batch(b).validate().unwrap_err().to_string();
        assert!(err.contains("notifications[0].task.bot_id"), "{err}");
        let err = Command::CreateAccount {
            account_id: "a".into(),
            config: AccountConfig {
                charge_rate: [-1.0, 0.0, 0.0, 0.0, 0.0],
                ..Default::default()
            },
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(err.contains("charge_rate[0]"), "{err}");
    }

    fn arb_label() -> impl Strategy<Value = String> {
        // Lengths around the varint boundaries of 128 and 16384.
        prop_oneof![
            "[a-z:]{0,8}",
            (120usize..140).prop_map(|n| "x".repeat(n)),
            (16_380usize..16_390).prop_map(|n| "y".repeat(n)),
        ]
    }

    fn arb_notification() -> impl Strategy<Value = Notification> {
        let labels = || proptest::collection::vec(arb_label(), 0..4);
        let kind = prop_oneof![
            (arb_label(), labels(), labels(), any::<u32>(), labels()).prop_map(
                |(account, base_labels, provisionable_labels, t, tags)| NotifyKind::Waiting {
                    account,
                    base_labels,
                    provisionable_labels,
                    enqueue_time: Time::from_secs(i64::from(t)),
                    tags,
                }
            ),
            arb_label().prop_map(|bot_id| NotifyKind::Running { bot_id }),
            Just(NotifyKind::Absent),
            arb_label().prop_map(|message| NotifyKind::Error { message }),
        ];
        (any::<u32>(), arb_label(), kind).prop_map(|(t, task_id, kind)| Notification {
            time: Time::from_secs(i64::from(t)),
            task_id,
            kind,
        })
    }

    proptest! {
        #[test]
        fn size_bounds_bound_the_encoding(
            notifies in proptest::collection::vec(
                (proptest::collection::vec(arb_notification(), 0..5), any::<bool>()), 0..4),
            assigns in proptest::collection::vec(
                (any::<u32>(), proptest::collection::vec(
                    (arb_label(), proptest::collection::vec(arb_label(), 0..4)), 0..4)), 0..4),
        ) {
            let batch = Batch {
                notifies: notifies
                    .into_iter()
                    .map(|(notifications, is_callback)| NotifyCall { notifications, is_callback })
                    .collect(),
                assigns: assigns
                    .into_iter()
                    .map(|(t, bots)| AssignCall {
                        time: Time::from_secs(i64::from(t)),
                        bots: bots.into_iter().map(|(id, labels)| IdleBot { id, labels }).collect(),
                    })
                    .collect(),
            };
            let bound = BATCH_SIZE_BOUND
                + batch.notifies.iter().map(NotifyCall::size_bound).sum::<usize>()
                + batch.assigns.iter().map(AssignCall::size_bound).sum::<usize>();
            let encoded = Command::Batch(batch).encode().len();
            prop_assert!(encoded <= bound, "{encoded} > {bound}");
        }
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Command::decode(&bytes);
        }

        #[test]
        fn decode_survives_bit_flips(i in 0usize..10_000, bit in 0u8..8) {
            let mut bytes = sample_batch().encode();
            let i = i % bytes.len();
            bytes[i] ^= 1 << bit;
            let _ = Command::decode(&bytes);
        }
    }
}
