//! Structured requests: every request message of the three services, built
//! from fuzzer bytes with small alphabets of ids, labels and times so that
//! calls refer to each other (a task notified, then assigned to a bot that
//! asked, then reported running...) and reach deep scheduler states, with
//! now and then an arbitrary value or an extreme one to probe validation.

use arbitrary::{Arbitrary, Result, Unstructured};
use prost::Message;
use prost_reflect::{DynamicMessage, MessageDescriptor, SerializeOptions};
use qscheduler_wire::protos;
use qscheduler_wire::qscheduler as adm;
use qscheduler_wire::swarming::v1 as pb;

/// Seconds of the Unix time around which generated calls happen.
pub const BASE_SECS: i64 = 1_700_000_000;

/// The last second a core time can represent (year 2262).
pub const MAX_SECS: i64 = i64::MAX / 1_000_000_000;

/// The pool that exists when a target starts.
pub const POOL: &str = "p";

/// One RPC of the three services: (service, method, request message).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Method {
    pub service: &'static str,
    pub method: &'static str,
    pub input: &'static str,
}

const SCHED: &str = "swarming.v1.ExternalScheduler";
const ADMIN: &str = "qscheduler.QSchedulerAdmin";
const VIEW: &str = "qscheduler.QSchedulerView";

/// Every method served, in the order of [`Req`]'s variants.
pub const METHODS: [Method; 13] = [
    Method {
        service: SCHED,
        method: "NotifyTasks",
        input: "swarming.v1.NotifyTasksRequest",
    },
    Method {
        service: SCHED,
        method: "AssignTasks",
        input: "swarming.v1.AssignTasksRequest",
    },
    Method {
        service: SCHED,
        method: "GetCancellations",
        input: "swarming.v1.GetCancellationsRequest",
    },
    Method {
        service: SCHED,
        method: "GetCallbacks",
        input: "swarming.v1.GetCallbacksRequest",
    },
    Method {
        service: ADMIN,
        method: "CreateSchedulerPool",
        input: "qscheduler.CreateSchedulerPoolRequest",
    },
    Method {
        service: ADMIN,
        method: "CreateAccount",
        input: "qscheduler.CreateAccountRequest",
    },
    Method {
        service: ADMIN,
        method: "Wipe",
        input: "qscheduler.WipeRequest",
    },
    Method {
        service: ADMIN,
        method: "ModAccount",
        input: "qscheduler.ModAccountRequest",
    },
    Method {
        service: ADMIN,
        method: "ModSchedulerPool",
        input: "qscheduler.ModSchedulerPoolRequest",
    },
    Method {
        service: ADMIN,
        method: "DeleteAccount",
        input: "qscheduler.DeleteAccountRequest",
    },
    Method {
        service: ADMIN,
        method: "DeleteSchedulerPool",
        input: "qscheduler.DeleteSchedulerPoolRequest",
    },
    Method {
        service: VIEW,
        method: "ListAccounts",
        input: "qscheduler.ListAccountsRequest",
    },
    Method {
        service: VIEW,
        method: "InspectPool",
        input: "qscheduler.InspectPoolRequest",
    },
];

impl Method {
    /// The descriptor of the request message.
    pub fn input_descriptor(&self) -> MessageDescriptor {
        // The names above are those of the crate's own protos; a test of
        // this crate would fail first.
        #[allow(clippy::expect_used)]
        qscheduler_wire::descriptor_pool()
            .get_message_by_name(self.input)
            .expect("request message is in the descriptor pool")
    }
}

/// A request of any method.
#[derive(Clone, Debug, PartialEq)]
pub enum Req {
    Notify(pb::NotifyTasksRequest),
    Assign(pb::AssignTasksRequest),
    GetCancellations(pb::GetCancellationsRequest),
    GetCallbacks(pb::GetCallbacksRequest),
    CreatePool(adm::CreateSchedulerPoolRequest),
    CreateAccount(adm::CreateAccountRequest),
    Wipe(adm::WipeRequest),
    ModAccount(adm::ModAccountRequest),
    ModPool(adm::ModSchedulerPoolRequest),
    DeleteAccount(adm::DeleteAccountRequest),
    DeletePool(adm::DeleteSchedulerPoolRequest),
    ListAccounts(adm::ListAccountsRequest),
    InspectPool(adm::InspectPoolRequest),
}

impl Req {
    /// Index of the method in [`METHODS`].
    pub fn index(&self) -> usize {
        match self {
            Req::Notify(_) => 0,
            Req::Assign(_) => 1,
            Req::GetCancellations(_) => 2,
            Req::GetCallbacks(_) => 3,
            Req::CreatePool(_) => 4,
            Req::CreateAccount(_) => 5,
            Req::Wipe(_) => 6,
            Req::ModAccount(_) => 7,
            Req::ModPool(_) => 8,
            Req::DeleteAccount(_) => 9,
            Req::DeletePool(_) => 10,
            Req::ListAccounts(_) => 11,
            Req::InspectPool(_) => 12,
        }
    }

    /// The method this request is for.
    pub fn method(&self) -> Method {
        METHODS[self.index()]
    }

    /// The protobuf binary encoding.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Req::Notify(m) => m.encode_to_vec(),
            Req::Assign(m) => m.encode_to_vec(),
            Req::GetCancellations(m) => m.encode_to_vec(),
            Req::GetCallbacks(m) => m.encode_to_vec(),
            Req::CreatePool(m) => m.encode_to_vec(),
            Req::CreateAccount(m) => m.encode_to_vec(),
            Req::Wipe(m) => m.encode_to_vec(),
            Req::ModAccount(m) => m.encode_to_vec(),
            Req::ModPool(m) => m.encode_to_vec(),
            Req::DeleteAccount(m) => m.encode_to_vec(),
            Req::DeletePool(m) => m.encode_to_vec(),
            Req::ListAccounts(m) => m.encode_to_vec(),
            Req::InspectPool(m) => m.encode_to_vec(),
        }
    }

    /// Decodes `bytes` as the request of method `index` (modulo the number
    /// of methods), as the gRPC and pRPC servers do.
    pub fn decode(index: usize, bytes: &[u8]) -> std::result::Result<Req, prost::DecodeError> {
        Ok(match index % METHODS.len() {
            0 => Req::Notify(Message::decode(bytes)?),
            1 => Req::Assign(Message::decode(bytes)?),
            2 => Req::GetCancellations(Message::decode(bytes)?),
            3 => Req::GetCallbacks(Message::decode(bytes)?),
            4 => Req::CreatePool(Message::decode(bytes)?),
            5 => Req::CreateAccount(Message::decode(bytes)?),
            6 => Req::Wipe(Message::decode(bytes)?),
            7 => Req::ModAccount(Message::decode(bytes)?),
            8 => Req::ModPool(Message::decode(bytes)?),
            9 => Req::DeleteAccount(Message::decode(bytes)?),
            10 => Req::DeletePool(Message::decode(bytes)?),
            11 => Req::ListAccounts(Message::decode(bytes)?),
            _ => Req::InspectPool(Message::decode(bytes)?),
        })
    }

    /// The proto JSON encoding (as a pRPC client would send it), or `None`
    /// if the message has none (a timestamp out of JSON's range).
    pub fn to_json(&self) -> Option<Vec<u8>> {
        let msg = self.dynamic()?;
        let mut out = Vec::new();
        let mut ser = serde_json::Serializer::new(&mut out);
        msg.serialize_with_options(&mut ser, &SerializeOptions::new())
            .ok()?;
        Some(out)
    }

    /// The protobuf text format.
    pub fn to_text(&self) -> Option<Vec<u8>> {
        Some(self.dynamic()?.to_text_format().into_bytes())
    }

    fn dynamic(&self) -> Option<DynamicMessage> {
        DynamicMessage::decode(self.method().input_descriptor(), self.encode().as_slice()).ok()
    }
}

fn pick<T: Copy>(u: &mut Unstructured<'_>, xs: &[T]) -> Result<T> {
    Ok(*u.choose(xs)?)
}

/// `prefix` + a small number mostly; sometimes empty or arbitrary.
fn id(u: &mut Unstructured<'_>, prefix: &str, n: u8) -> Result<String> {
    Ok(match u.int_in_range(0..=31u8)? {
        0 => String::new(),
        1 => u.arbitrary()?,
        _ => format!("{prefix}{}", u.int_in_range(0..=n.saturating_sub(1))?),
    })
}

fn pool_id(u: &mut Unstructured<'_>) -> Result<String> {
    Ok(match u.int_in_range(0..=31u8)? {
        0 => String::new(),
        1 => u.arbitrary()?,
        2 => "q".into(),
        3 => "a\0b".into(),
        4 => "x".repeat(1025),
        _ => POOL.into(),
    })
}

const DIMS: [&str; 8] = [
    "pool:p", "os:linux", "os:mac", "gpu:none", "gpu:1", "cpu:4", "cpu:8", "fw:2",
];

fn labels(u: &mut Unstructured<'_>, max: usize) -> Result<Vec<String>> {
    let n = u.int_in_range(0..=max)?;
    (0..n)
        .map(|_| {
            Ok(if u.ratio(1, 32)? {
                u.arbitrary()?
            } else {
                pick(u, &DIMS)?.to_string()
            })
        })
        .collect()
}

/// A timestamp: mostly within an hour of [`BASE_SECS`]; sometimes absent,
/// arbitrary, or at the ends of the core's range.
pub fn timestamp(u: &mut Unstructured<'_>) -> Result<Option<prost_types::Timestamp>> {
    let (seconds, nanos) = match u.int_in_range(0..=63u8)? {
        0 => return Ok(None),
        1 => (u.arbitrary()?, u.arbitrary()?),
        2 => (MAX_SECS - i64::from(u.int_in_range(0..=3600u16)?), 0),
        3 => (MAX_SECS, u.int_in_range(0..=999_999_999)?),
        4 => (i64::from(u.int_in_range(0..=3600u16)?), 0),
        5 => (BASE_SECS - 47 * 3600, 0),
        _ => (
            BASE_SECS + i64::from(u.int_in_range(0..=3600u16)?),
            if u.ratio(1, 4)? {
                u.int_in_range(0..=999_999_999)?
            } else {
                0
            },
        ),
    };
    Ok(Some(prost_types::Timestamp { seconds, nanos }))
}

const STATES: [i32; 12] = [
    0x10, 0x11, 0x20, 0x21, 0x2F, 0x30, 0x33, 0x40, 0x43, 0x50, 0x55, 0,
];

fn task(u: &mut Unstructured<'_>) -> Result<pb::TaskSpec> {
    let ntags = u.int_in_range(0..=3)?;
    let tags = (0..ntags)
        .map(|_| {
            Ok(match u.int_in_range(0..=7u8)? {
                0 => u.arbitrary()?,
                1 => "qs_account".into(),
                2 => "x:y".into(),
                n => format!("qs_account:a{}", n % 3),
            })
        })
        .collect::<Result<Vec<String>>>()?;
    let nslices = match u.int_in_range(0..=15u8)? {
        0 => 0,
        1 => 3,
        2..=5 => 2,
        _ => 1,
    };
    let mut slices: Vec<pb::SliceSpec> = Vec::new();
    for i in 0..nslices {
        let mut dimensions = labels(u, 4)?;
        // A second slice is usually the first minus provisionable labels.
        if i == 1 && u.ratio(3, 4)? {
            let first = &slices[0].dimensions;
            dimensions = first
                .iter()
                .filter(|_| u.ratio(2, 3).unwrap_or(true))
                .cloned()
                .collect();
        }
        slices.push(pb::SliceSpec { dimensions });
    }
    Ok(pb::TaskSpec {
        id: id(u, "t", 8)?,
        tags,
        slices,
        state: if u.ratio(1, 32)? {
            u.arbitrary()?
        } else {
            pick(u, &STATES)?
        },
        bot_id: id(u, "b", 4)?,
        enqueued_time: timestamp(u)?,
    })
}

/// A float of the kinds that probe range checks.
fn float(u: &mut Unstructured<'_>) -> Result<f32> {
    Ok(match u.int_in_range(0..=15u8)? {
        0 => f32::NAN,
        1 => f32::INFINITY,
        2 => f32::NEG_INFINITY,
        3 => -1.0,
        4 => f32::MAX,
        5 => f32::MIN_POSITIVE / 2.0,
        6 => u.arbitrary()?,
        7 => 0.0,
        8 => 600.0,
        9 => 86400.0,
        n => f32::from(n) / 4.0,
    })
}

fn int(u: &mut Unstructured<'_>) -> Result<i32> {
    Ok(match u.int_in_range(0..=7u8)? {
        0 => u.arbitrary()?,
        1 => -1,
        2 => i32::MAX,
        3 => i32::MIN,
        n => i32::from(n) - 4,
    })
}

fn limits(u: &mut Unstructured<'_>) -> Result<std::collections::BTreeMap<String, i32>> {
    let n = u.int_in_range(0..=2)?;
    (0..n)
        .map(|_| {
            let key = match u.int_in_range(0..=4u8)? {
                0 => u.arbitrary()?,
                1 => String::new(),
                2 => "os".into(),
                3 => "gpu:".into(),
                _ => "cpu".into(),
            };
            Ok((key, int(u)?))
        })
        .collect()
}

fn account_config(u: &mut Unstructured<'_>) -> Result<protos::AccountConfig> {
    let nrates = u.int_in_range(0..=6)?;
    Ok(protos::AccountConfig {
        charge_rate: (0..nrates).map(|_| float(u)).collect::<Result<_>>()?,
        max_charge_seconds: float(u)?,
        max_fanout: int(u)?,
        disable_free_tasks: u.arbitrary()?,
        description: if u.ratio(1, 8)? {
            u.arbitrary()?
        } else {
            String::new()
        },
        per_label_task_limits: limits(u)?,
    })
}

impl<'a> Arbitrary<'a> for Req {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        // Swarming's calls are the common case.
        let which = match u.int_in_range(0..=31u8)? {
            0..=11 => 0,
            12..=19 => 1,
            20..=21 => 2,
            22 => 3,
            n => usize::from(n - 19),
        };
        Ok(match which {
            0 => {
                let n = u.int_in_range(0..=4)?;
                Req::Notify(pb::NotifyTasksRequest {
                    scheduler_id: pool_id(u)?,
                    notifications: (0..n)
                        .map(|_| {
                            Ok(pb::NotifyTasksItem {
                                time: timestamp(u)?,
                                task: if u.ratio(1, 32)? {
                                    None
                                } else {
                                    Some(task(u)?)
                                },
                            })
                        })
                        .collect::<Result<_>>()?,
                    is_callback: u.arbitrary()?,
                })
            }
            1 => {
                let n = u.int_in_range(0..=3)?;
                Req::Assign(pb::AssignTasksRequest {
                    scheduler_id: pool_id(u)?,
                    idle_bots: (0..n)
                        .map(|_| {
                            Ok(pb::IdleBot {
                                bot_id: id(u, "b", 4)?,
                                dimensions: labels(u, 5)?,
                            })
                        })
                        .collect::<Result<_>>()?,
                    time: timestamp(u)?,
                })
            }
            2 => Req::GetCancellations(pb::GetCancellationsRequest {
                scheduler_id: pool_id(u)?,
            }),
            3 => Req::GetCallbacks(pb::GetCallbacksRequest {
                scheduler_id: pool_id(u)?,
            }),
            4 => Req::CreatePool(adm::CreateSchedulerPoolRequest {
                pool_id: pool_id(u)?,
                config: if u.ratio(1, 8)? {
                    Some(protos::SchedulerConfig::default())
                } else {
                    None
                },
            }),
            5 => Req::CreateAccount(adm::CreateAccountRequest {
                pool_id: pool_id(u)?,
                account_id: id(u, "a", 3)?,
                config: if u.ratio(1, 8)? {
                    None
                } else {
                    Some(account_config(u)?)
                },
            }),
            6 => Req::Wipe(adm::WipeRequest {
                pool_id: pool_id(u)?,
            }),
            7 => {
                let nrates = u.int_in_range(0..=6)?;
                Req::ModAccount(adm::ModAccountRequest {
                    pool_id: pool_id(u)?,
                    account_id: id(u, "a", 3)?,
                    charge_rate: (0..nrates).map(|_| float(u)).collect::<Result<_>>()?,
                    max_charge_seconds: if u.arbitrary()? {
                        Some(float(u)?)
                    } else {
                        None
                    },
                    max_fanout: if u.arbitrary()? { Some(int(u)?) } else { None },
                    disable_free_tasks: u.arbitrary()?,
                    reset_balance: u.arbitrary()?,
                    description: u.arbitrary()?,
                    per_label_task_limits: limits(u)?,
                })
            }
            8 => Req::ModPool(adm::ModSchedulerPoolRequest {
                pool_id: pool_id(u)?,
                disable_preemption: u.arbitrary()?,
                bot_expiration_seconds: if u.arbitrary()? { Some(int(u)?) } else { None },
            }),
            9 => Req::DeleteAccount(adm::DeleteAccountRequest {
                pool_id: pool_id(u)?,
                account_id: id(u, "a", 3)?,
            }),
            10 => Req::DeletePool(adm::DeleteSchedulerPoolRequest {
                pool_id: pool_id(u)?,
            }),
            11 => Req::ListAccounts(adm::ListAccountsRequest {
                pool_id: pool_id(u)?,
            }),
            _ => Req::InspectPool(adm::InspectPoolRequest {
                pool_id: pool_id(u)?, ..Default::default() }),
        })
    }
}
