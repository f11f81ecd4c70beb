//! Property tests: nothing a client sends can panic the server.
//!
//! * Arbitrary bytes decoded as each request message, and when they decode,
//!   translated and validated by the service, and the commands that pass
//!   checked the way the pool writer checks them, logged (encoded and
//!   decoded) and applied to a core pool: what the checks let through must
//!   apply.
//! * Random sequences of requests over pRPC (binary and JSON) and gRPC,
//!   through the same router `Server` serves, to the real services, pool
//!   writers and store; afterwards the data directory must recover to the
//!   same pools.
//!
//! The fuzz targets in `fuzz/` (`grpc_messages`, `prpc_request`) explore
//! the same entry points for much longer; these keep the property checked
//! on every test run, in a few seconds. A panic anywhere in the process
//! (pool writers and blocking store tasks included) fails the test.

use qscheduler_server::limits::Limits;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Body;
use http_body_util::BodyExt;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use prost::Message;
use qscheduler_core::{Batch, Command, Pool, Time, snapshot};
use qscheduler_server::metrics::{Metrics, MetricsOptions};
use qscheduler_server::pool::{NoObserver, PoolOptions};
use qscheduler_server::registry::Registry;
use qscheduler_server::{ServerOptions, server, translate};
use qscheduler_store::{Store, StoreOptions};
use qscheduler_wire::qscheduler as adm;
use qscheduler_wire::swarming::v1 as pb;
use tower::ServiceExt;

const BASE: i64 = 1_700_000_000;

static PANICKED: AtomicBool = AtomicBool::new(false);

/// Records panics of every thread and task; tokio would otherwise swallow
/// a panic of a spawned pool writer.
fn watch_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICKED.store(true, Ordering::SeqCst);
        default(info);
    }));
}

fn timestamp() -> impl Strategy<Value = Option<prost_types::Timestamp>> {
    prop_oneof![
        1 => Just(None),
        1 => (any::<i64>(), any::<i32>())
            .prop_map(|(seconds, nanos)| Some(prost_types::Timestamp { seconds, nanos })),
        1 => (0i64..3600).prop_map(|s| Some(prost_types::Timestamp {
            seconds: i64::MAX / 1_000_000_000 - s,
            nanos: 0,
        })),
        8 => (0i64..3600, 0i32..1_000_000_000).prop_map(|(s, nanos)| Some(prost_types::Timestamp {
            seconds: BASE + s,
            nanos,
        })),
    ]
}

fn small_id(prefix: &'static str) -> impl Strategy<Value = String> {
    prop_oneof![
        8 => (0u8..4).prop_map(move |i| format!("{prefix}{i}")),
        1 => Just(String::new()),
        1 => ".{0,6}",
    ]
}

fn labels() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec(
        proptest::sample::select(&["pool:p", "os:linux", "os:mac", "gpu:1", "fw:2"][..])
            .prop_map(String::from),
        0..4,
    )
}

fn pool_id() -> impl Strategy<Value = String> {
    prop_oneof![
        10 => Just("p".to_string()),
        1 => Just(String::new()),
        1 => Just("q".to_string()),
        1 => ".{0,4}",
    ]
}

fn task() -> impl Strategy<Value = pb::TaskSpec> {
    (
        small_id("t"),
        proptest::collection::vec(
            prop_oneof![
                Just("qs_account:a0".to_string()),
                Just("qs_account:a1".to_string()),
                Just("x:y".to_string()),
            ],
            0..3,
        ),
        proptest::collection::vec(labels(), 0..4),
        prop_oneof![
            4 => proptest::sample::select(&[0x10, 0x11, 0x20, 0x21, 0x30, 0x40, 0x50, 0][..]),
            1 => any::<i32>(),
        ],
        small_id("b"),
        timestamp(),
    )
        .prop_map(
            |(id, tags, slices, state, bot_id, enqueued_time)| pb::TaskSpec {
                id,
                tags,
                slices: slices
                    .into_iter()
                    .map(|dimensions| pb::SliceSpec { dimensions })
                    .collect(),
                state,
                bot_id,
                enqueued_time,
            },
        )
}

fn float() -> impl Strategy<Value = f32> {
    prop_oneof![
        4 => 0.0f32..1000.0,
        1 => any::<f32>(),
        1 => proptest::sample::select(&[f32::NAN, f32::INFINITY, -1.0, f32::MAX][..]),
    ]
}

fn int() -> impl Strategy<Value = i32> {
    prop_oneof![3 => -2i32..10, 1 => any::<i32>()]
}

fn limits() -> impl Strategy<Value = std::collections::BTreeMap<String, i32>> {
    proptest::collection::btree_map(
        proptest::sample::select(&["os", "", "gpu:"][..]).prop_map(String::from),
        int(),
        0..2,
    )
}

/// A request of any method, as a message of its own type.
#[derive(Clone, Debug)]
enum Req {
    Notify(pb::NotifyTasksRequest),
    Assign(pb::AssignTasksRequest),
    Cancellations(pb::GetCancellationsRequest),
    CreateAccount(adm::CreateAccountRequest),
    ModAccount(adm::ModAccountRequest),
    ModPool(adm::ModSchedulerPoolRequest),
    DeleteAccount(adm::DeleteAccountRequest),
    Wipe(adm::WipeRequest),
    Inspect(adm::InspectPoolRequest),
    List(adm::ListAccountsRequest),
}

fn req() -> impl Strategy<Value = Req> {
    let notify = (
        pool_id(),
        proptest::collection::vec(
            (timestamp(), proptest::option::weighted(0.95, task())),
            0..4,
        ),
        any::<bool>(),
    )
        .prop_map(|(scheduler_id, items, is_callback)| {
            Req::Notify(pb::NotifyTasksRequest {
                scheduler_id,
                notifications: items
                    .into_iter()
                    .map(|(time, task)| pb::NotifyTasksItem { time, task })
                    .collect(),
                is_callback,
            })
        });
    let assign = (
        pool_id(),
        proptest::collection::vec((small_id("b"), labels()), 0..3),
        timestamp(),
    )
        .prop_map(|(scheduler_id, bots, time)| {
            Req::Assign(pb::AssignTasksRequest {
                scheduler_id,
                idle_bots: bots
                    .into_iter()
                    .map(|(bot_id, dimensions)| pb::IdleBot { bot_id, dimensions })
                    .collect(),
                time,
            })
        });
    let config = (
        proptest::collection::vec(float(), 0..7),
        float(),
        int(),
        any::<bool>(),
        limits(),
    )
        .prop_map(
            |(charge_rate, max_charge_seconds, max_fanout, disable_free_tasks, l)| {
                qscheduler_wire::protos::AccountConfig {
                    charge_rate,
                    max_charge_seconds,
                    max_fanout,
                    disable_free_tasks,
                    description: String::new(),
                    per_label_task_limits: l,
                }
            },
        );
    let create = (pool_id(), small_id("a"), proptest::option::of(config)).prop_map(
        |(pool_id, account_id, config)| {
            Req::CreateAccount(adm::CreateAccountRequest {
                pool_id,
                account_id,
                config,
            })
        },
    );
    let modify = (
        pool_id(),
        small_id("a"),
        proptest::collection::vec(float(), 0..7),
        proptest::option::of(float()),
        proptest::option::of(int()),
        proptest::option::of(any::<bool>()),
        any::<bool>(),
        limits(),
    )
        .prop_map(
            |(pool_id, account_id, charge_rate, mcs, fanout, dft, reset, l)| {
                Req::ModAccount(adm::ModAccountRequest {
                    pool_id,
                    account_id,
                    charge_rate,
                    max_charge_seconds: mcs,
                    max_fanout: fanout,
                    disable_free_tasks: dft,
                    reset_balance: reset,
                    description: None,
                    per_label_task_limits: l,
                })
            },
        );
    let mod_pool = (
        pool_id(),
        proptest::option::of(any::<bool>()),
        proptest::option::of(int()),
    )
        .prop_map(|(pool_id, disable_preemption, bot_expiration_seconds)| {
            Req::ModPool(adm::ModSchedulerPoolRequest {
                pool_id,
                disable_preemption,
                bot_expiration_seconds,
            })
        });
    prop_oneof![
        8 => notify,
        6 => assign,
        1 => pool_id().prop_map(|scheduler_id| Req::Cancellations(pb::GetCancellationsRequest { scheduler_id })),
        2 => create,
        2 => modify,
        1 => mod_pool,
        1 => (pool_id(), small_id("a")).prop_map(|(pool_id, account_id)| {
            Req::DeleteAccount(adm::DeleteAccountRequest { pool_id, account_id })
        }),
        1 => pool_id().prop_map(|pool_id| Req::Wipe(adm::WipeRequest { pool_id })),
        1 => pool_id().prop_map(|pool_id| Req::Inspect(adm::InspectPoolRequest { pool_id, ..Default::default() })),
        1 => pool_id().prop_map(|pool_id| Req::List(adm::ListAccountsRequest { pool_id })),
    ]
}

impl Req {
    fn path(&self) -> (&'static str, &'static str) {
        const S: &str = "swarming.v1.ExternalScheduler";
        const A: &str = "qscheduler.QSchedulerAdmin";
        const V: &str = "qscheduler.QSchedulerView";
        match self {
            Req::Notify(_) => (S, "NotifyTasks"),
            Req::Assign(_) => (S, "AssignTasks"),
            Req::Cancellations(_) => (S, "GetCancellations"),
            Req::CreateAccount(_) => (A, "CreateAccount"),
            Req::ModAccount(_) => (A, "ModAccount"),
            Req::ModPool(_) => (A, "ModSchedulerPool"),
            Req::DeleteAccount(_) => (A, "DeleteAccount"),
            Req::Wipe(_) => (A, "Wipe"),
            Req::Inspect(_) => (V, "InspectPool"),
            Req::List(_) => (V, "ListAccounts"),
        }
    }

    fn encode(&self) -> Vec<u8> {
        match self {
            Req::Notify(m) => m.encode_to_vec(),
            Req::Assign(m) => m.encode_to_vec(),
            Req::Cancellations(m) => m.encode_to_vec(),
            Req::CreateAccount(m) => m.encode_to_vec(),
            Req::ModAccount(m) => m.encode_to_vec(),
            Req::ModPool(m) => m.encode_to_vec(),
            Req::DeleteAccount(m) => m.encode_to_vec(),
            Req::Wipe(m) => m.encode_to_vec(),
            Req::Inspect(m) => m.encode_to_vec(),
            Req::List(m) => m.encode_to_vec(),
        }
    }

    /// What the service turns it into, if it changes a pool.
    fn command(&self) -> Option<Result<Command, tonic::Status>> {
        let batch = |b: Batch| Command::Batch(b);
        Some(match self {
            Req::Notify(r) => translate::notify_call(r, &Limits::default(), Time::MAX).map(|c| {
                batch(Batch {
                    notifies: vec![c],
                    assigns: vec![],
                })
            }),
            Req::Assign(r) => translate::assign_call(r, &Limits::default(), Time::MAX).map(|c| {
                batch(Batch {
                    notifies: vec![],
                    assigns: vec![c],
                })
            }),
            Req::CreateAccount(r) => translate::create_account_command(r, &Limits::default()),
            Req::ModAccount(r) => translate::mod_account_command(r, &Limits::default()),
            Req::ModPool(r) => translate::mod_pool_command(r, &Limits::default()),
            Req::DeleteAccount(r) => translate::delete_account_command(r, &Limits::default()),
            Req::Wipe(_) => Ok(Command::Wipe {
                time: Time::from_secs(BASE),
            }),
            _ => return None,
        })
    }
}

/// The pool writer's promise, checked on a core pool: a command that
/// passed validation (and, for ModAccount, names an account that exists)
/// is logged, decodes to itself, and applies.
fn writer_accepts(pool: &mut Pool, cmd: &Command) -> Result<(), TestCaseError> {
    if cmd.validate().is_err() {
        return Ok(());
    }
    if let Command::ModAccount { account_id, .. } = cmd
        && pool.scheduler().account_config(account_id).is_none()
    {
        return Ok(());
    }
    let record = cmd.encode();
    let decoded = Command::decode(&record)
        .map_err(|e| TestCaseError::fail(format!("logged {cmd:?} does not decode: {e}")))?;
    prop_assert_eq!(decoded.encode(), record);
    if let Err(e) = pool.apply(&decoded) {
        return Err(TestCaseError::fail(format!(
            "{cmd:?} passed the checks but does not apply: {e}"
        )));
    }
    Ok(())
}

#[test]
fn requests_translate_and_apply_or_are_refused() {
    watch_panics();
    let step = prop_oneof![
        3 => req().prop_map(|r| (r.path().1, r.encode())),
        1 => (
            proptest::sample::select(&[
                "NotifyTasks", "AssignTasks", "CreateAccount", "ModAccount",
                "ModSchedulerPool", "DeleteAccount", "Wipe", "GetCancellations",
                "InspectPool", "ListAccounts",
            ][..]),
            proptest::collection::vec(any::<u8>(), 0..80),
        ),
    ];
    let mut runner = TestRunner::new(Config {
        cases: 1000,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&proptest::collection::vec(step, 1..12), |steps| {
            let mut pool = Pool::new(Time::from_secs(BASE));
            for (method, bytes) in steps {
                // What the transports' decoding produces from the bytes.
                let req =
                    match method {
                        "NotifyTasks" => {
                            pb::NotifyTasksRequest::decode(bytes.as_slice()).map(Req::Notify)
                        }
                        "AssignTasks" => {
                            pb::AssignTasksRequest::decode(bytes.as_slice()).map(Req::Assign)
                        }
                        "CreateAccount" => adm::CreateAccountRequest::decode(bytes.as_slice())
                            .map(Req::CreateAccount),
                        "ModAccount" => {
                            adm::ModAccountRequest::decode(bytes.as_slice()).map(Req::ModAccount)
                        }
                        "ModSchedulerPool" => {
                            adm::ModSchedulerPoolRequest::decode(bytes.as_slice()).map(Req::ModPool)
                        }
                        "DeleteAccount" => adm::DeleteAccountRequest::decode(bytes.as_slice())
                            .map(Req::DeleteAccount),
                        "Wipe" => adm::WipeRequest::decode(bytes.as_slice()).map(Req::Wipe),
                        "GetCancellations" => pb::GetCancellationsRequest::decode(bytes.as_slice())
                            .map(Req::Cancellations),
                        "InspectPool" => {
                            adm::InspectPoolRequest::decode(bytes.as_slice()).map(Req::Inspect)
                        }
                        _ => adm::ListAccountsRequest::decode(bytes.as_slice()).map(Req::List),
                    };
                let Ok(req) = req else { continue };
                if let Some(Ok(cmd)) = req.command() {
                    writer_accepts(&mut pool, &cmd)?;
                }
            }
            let image = snapshot::encode(&pool);
            let back = snapshot::decode(&image)
                .map_err(|e| TestCaseError::fail(format!("snapshot does not decode: {e}")))?;
            prop_assert!(snapshot::encode(&back) == image, "snapshot not canonical");
            Ok(())
        })
        .unwrap();
    assert!(!PANICKED.load(Ordering::SeqCst), "something panicked");
}

/// How a request travels.
#[derive(Clone, Copy, Debug)]
enum Wire {
    Binary,
    Json,
    Grpc,
}

fn http_request(r: &Req, wire: Wire) -> http::Request<Body> {
    let (service, method) = r.path();
    let binary = r.encode();
    let (path, content_type, body) = match wire {
        Wire::Binary => (
            format!("/prpc/{service}/{method}"),
            "application/prpc; encoding=binary",
            binary,
        ),
        Wire::Json => {
            let desc = qscheduler_wire::descriptor_pool()
                .get_message_by_name(&format!(
                    "{}.{method}Request",
                    service.rsplit_once('.').map_or("", |s| s.0),
                ))
                .unwrap();
            let msg = prost_reflect::DynamicMessage::decode(desc, binary.as_slice()).unwrap();
            let json = serde_json::to_vec(&msg).unwrap_or_default();
            (
                format!("/prpc/{service}/{method}"),
                "application/json",
                json,
            )
        }
        Wire::Grpc => {
            let mut framed = vec![0];
            framed.extend_from_slice(&(binary.len() as u32).to_be_bytes());
            framed.extend_from_slice(&binary);
            (format!("/{service}/{method}"), "application/grpc", framed)
        }
    };
    http::Request::builder()
        .method(http::Method::POST)
        .uri(path)
        .header("content-type", content_type)
        .header("te", "trailers")
        .body(Body::from(body))
        .unwrap()
}

async fn open(dir: &std::path::Path) -> Arc<Registry> {
    let store = Store::open(dir.to_str().unwrap(), StoreOptions::default())
        .await
        .unwrap();
    let options = PoolOptions {
        batch_window: Duration::ZERO,
        snapshot_every_records: 5,
        ..PoolOptions::default()
    };
    Registry::new(store, options, Arc::new(NoObserver))
}

async fn serve_and_recover(calls: Vec<(Req, Wire)>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let registry = open(dir.path()).await;
    registry.create("p", Time::from_secs(BASE)).await.unwrap();
    let metrics = Metrics::new(MetricsOptions::default(), vec![]);
    metrics.attach(&registry);
    let router = server::router(
        &registry,
        Some(&metrics),
        &ServerOptions::default(),
        axum::Router::new(),
    )
    .unwrap();
    for (r, wire) in &calls {
        let resp = router
            .clone()
            .oneshot(http_request(r, *wire))
            .await
            .unwrap();
        let status = resp.status();
        let _ = resp.into_body().collect().await;
        prop_assert!(
            status != http::StatusCode::INTERNAL_SERVER_ERROR,
            "500 for {r:?} over {wire:?}"
        );
    }
    let scrape = router
        .clone()
        .oneshot(
            http::Request::builder()
                .uri("/metrics")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    prop_assert_eq!(scrape.status(), http::StatusCode::OK);
    drop(router);
    let pools = registry.open_pools();
    registry.shutdown().await;
    let before: Vec<(String, Vec<u8>)> = pools
        .iter()
        .map(|p| (p.id().to_owned(), snapshot::encode(&p.read())))
        .collect();
    drop((pools, registry));
    let registry = open(dir.path()).await;
    registry.recover_all().await.unwrap();
    for (id, image) in before {
        let pool = registry
            .get(&id)
            .await
            .map_err(|e| TestCaseError::fail(format!("pool {id:?} does not recover: {e}")))?;
        prop_assert!(
            snapshot::encode(&pool.read()) == image,
            "pool {id:?} recovers to another state"
        );
    }
    registry.shutdown().await;
    Ok(())
}

#[test]
fn requests_over_the_wire_never_panic_and_recover() {
    watch_panics();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let wire = prop_oneof![
        3 => Just(Wire::Binary),
        1 => Just(Wire::Json),
        1 => Just(Wire::Grpc),
    ];
    let mut runner = TestRunner::new(Config {
        cases: 120,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&proptest::collection::vec((req(), wire), 1..16), |calls| {
            rt.block_on(serve_and_recover(calls))
        })
        .unwrap();
    assert!(!PANICKED.load(Ordering::SeqCst), "something panicked");
}
