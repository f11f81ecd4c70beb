//! Every RPC of the three services, over gRPC, pRPC binary and pRPC JSON,
//! against the real server: one scenario that uses all thirteen methods,
//! checked step by step on each transport, and then across transports: the
//! same calls must give the same answers whichever way they travel.

mod common;

use std::collections::BTreeMap;

use common::TestServer;
use common::rpc::*;
use qscheduler_server::ServerOptions;
use qscheduler_wire::qscheduler as adm;
use qscheduler_wire::swarming::v1 as pb;
use qscheduler_wire::swarming::v1::get_cancellations_response::cancellation::Reason;
use qscheduler_wire::swarming::v1::task_spec::State;
use serde_json::json;
use tonic::Code;

fn options(dir: &std::path::Path) -> ServerOptions {
    ServerOptions {
        store: dir.join("store").to_str().unwrap().to_owned(),
        ..ServerOptions::default()
    }
}

/// InspectPool without the ages, which follow the wall clock.
fn without_ages(mut r: adm::InspectPoolResponse) -> adm::InspectPoolResponse {
    r.running_tasks.iter_mut().for_each(|t| t.age_seconds = 0);
    r.waiting_tasks.iter_mut().for_each(|t| t.age_seconds = 0);
    r.idle_bots.iter_mut().for_each(|t| t.age_seconds = 0);
    r
}

/// Every answer of the scenario, for comparing transports.
#[derive(Debug, Default, PartialEq)]
struct Transcript {
    accounts: Vec<adm::ListAccountsResponse>,
    assignments: Vec<Vec<Assigned>>,
    cancellations: Vec<Vec<Cancelled>>,
    callbacks: Vec<Vec<String>>,
    inspections: Vec<adm::InspectPoolResponse>,
    errors: Vec<(Code, String)>,
}

const ERROR_TEXT: &str =
    "Invalid slice count 3; quotascheduler only supports 1-slice or 2-slice tasks.";

/// The scenario, on pool `pool`, with assertions on every answer.
async fn scenario(rpc: &Rpc, pool: &str) -> Transcript {
    let mut out = Transcript::default();
    let t = rpc.transport;

    // Admin: a pool, three accounts, changes, a deletion.
    rpc.create_pool(pool).await;
    rpc.create_account(adm::CreateAccountRequest {
        pool_id: pool.into(),
        account_id: "hi".into(),
        config: Some(qscheduler_wire::protos::AccountConfig {
            charge_rate: vec![1.0, 0.5],
            max_charge_seconds: 600.0,
            description: "high".into(),
            ..Default::default()
        }),
    })
    .await
    .unwrap();
    rpc.add_account(pool, "lo", &[], 0.0).await;
    rpc.add_account(pool, "tmp", &[3.0], 10.0).await;
    let list = rpc
        .list_accounts(adm::ListAccountsRequest {
            pool_id: pool.into(),
        })
        .await
        .unwrap();
    assert_eq!(
        list.accounts.keys().collect::<Vec<_>>(),
        ["hi", "lo", "tmp"],
        "{t:?}"
    );
    let hi = &list.accounts["hi"];
    assert_eq!(
        hi.charge_rate,
        [1.0, 0.5, 0.0, 0.0, 0.0],
        "always five rates"
    );
    assert_eq!(
        (hi.max_charge_seconds, hi.description.as_str()),
        (600.0, "high")
    );
    assert_eq!(list.accounts["lo"].charge_rate, [0.0; 5]);
    out.accounts.push(list);

    rpc.mod_account(adm::ModAccountRequest {
        pool_id: pool.into(),
        account_id: "hi".into(),
        max_fanout: Some(3),
        description: Some("high, modified".into()),
        per_label_task_limits: BTreeMap::from([("os".to_owned(), 7)]),
        ..Default::default()
    })
    .await
    .unwrap();
    rpc.delete_account(adm::DeleteAccountRequest {
        pool_id: pool.into(),
        account_id: "tmp".into(),
    })
    .await
    .unwrap();
    let list = rpc
        .list_accounts(adm::ListAccountsRequest {
            pool_id: pool.into(),
        })
        .await
        .unwrap();
    assert_eq!(
        list.accounts.keys().collect::<Vec<_>>(),
        ["hi", "lo"],
        "{t:?}"
    );
    let hi = &list.accounts["hi"];
    assert_eq!(
        (hi.max_fanout, hi.description.as_str()),
        (3, "high, modified")
    );
    assert_eq!(
        hi.per_label_task_limits,
        BTreeMap::from([("os".to_owned(), 7)])
    );
    assert_eq!(
        hi.charge_rate,
        [1.0, 0.5, 0.0, 0.0, 0.0],
        "fields not in ModAccount stay"
    );
    assert_eq!(hi.max_charge_seconds, 600.0);
    out.accounts.push(list);

    rpc.mod_scheduler_pool(adm::ModSchedulerPoolRequest {
        pool_id: pool.into(),
        disable_preemption: Some(true),
        bot_expiration_seconds: Some(1000),
    })
    .await
    .unwrap();
    assert!(rpc.inspect(pool).await.disable_preemption, "{t:?}");
    rpc.mod_scheduler_pool(adm::ModSchedulerPoolRequest {
        pool_id: pool.into(),
        disable_preemption: Some(false),
        bot_expiration_seconds: None,
    })
    .await
    .unwrap();
    assert!(!rpc.inspect(pool).await.disable_preemption, "{t:?}");

    // Swarming: four tasks, two bots.
    rpc.notify(
        pool,
        vec![
            item(0, pending("T-hi", Some("hi"), &["os:linux"], 0)),
            item(0, pending("T-lo", Some("lo"), &["os:win"], 0)),
            item(
                0,
                task(
                    "T-prov",
                    State::Pending,
                    None,
                    &[&["os:mac", "fw:2"], &["os:mac"]],
                    "",
                    0,
                ),
            ),
            item(
                0,
                task(
                    "T-bad",
                    State::Pending,
                    None,
                    &[&["os:mac"], &["os:mac"], &["os:mac"]],
                    "",
                    0,
                ),
            ),
        ],
    )
    .await;
    let got = rpc
        .assign(
            pool,
            1,
            vec![
                bot("b-linux", &["os:linux"]),
                bot("b-mac", &["os:mac", "fw:1"]),
            ],
        )
        .await;
    assert_eq!(
        got,
        [a("b-linux", "T-hi", 0), a("b-mac", "T-prov", 1)],
        "{t:?}: the mac bot lacks fw:2, so it needs the second slice"
    );
    out.assignments.push(got);

    let cancellations = rpc.cancellations(pool).await;
    assert_eq!(
        cancellations,
        [(
            String::new(),
            "T-bad".to_owned(),
            Reason::Error,
            ERROR_TEXT.to_owned()
        )],
        "{t:?}"
    );
    out.cancellations.push(cancellations);

    // One of the waiting tasks, then the stalest running one (both were
    // confirmed at t=1; ties go by id).
    let callbacks = rpc.callbacks(pool).await;
    assert_eq!(callbacks, ["T-lo", "T-hi"], "{t:?}");
    out.callbacks.push(callbacks);

    rpc.notify(
        pool,
        vec![
            item(2, running("T-hi", "b-linux")),
            item(2, running("T-prov", "b-mac")),
            item(2, done("T-bad", State::Canceled)),
        ],
    )
    .await;
    let cancellations = rpc.cancellations(pool).await;
    assert!(cancellations.is_empty(), "{t:?}: {cancellations:?}");
    out.cancellations.push(cancellations);

    let inspect = without_ages(rpc.inspect(pool).await);
    assert_eq!(
        (
            inspect.num_waiting_tasks,
            inspect.num_running_tasks,
            inspect.num_idle_bots
        ),
        (1, 2, 0),
        "{t:?}"
    );
    let running: Vec<_> = inspect
        .running_tasks
        .iter()
        .map(|r| {
            (
                r.id.as_str(),
                r.bot_id.as_str(),
                r.priority,
                r.account_id.as_str(),
            )
        })
        .collect();
    assert_eq!(
        running,
        [("T-hi", "b-linux", 0, "hi"), ("T-prov", "b-mac", 5, "")],
        "{t:?}"
    );
    let waiting: Vec<_> = inspect
        .waiting_tasks
        .iter()
        .map(|w| (w.id.as_str(), w.account_id.as_str()))
        .collect();
    assert_eq!(waiting, [("T-lo", "lo")], "{t:?}");
    // Recharged to the caps (rate × max charge seconds) by the first pass;
    // the pass time is the latest the pool has seen.
    assert_eq!(
        inspect.account_balances["hi"].value,
        [600.0, 300.0, 0.0, 0.0, 0.0],
        "{t:?}"
    );
    assert_eq!(inspect.account_balances["lo"].value, [0.0; 5], "{t:?}");
    assert_eq!(
        inspect.account_configs.keys().collect::<Vec<_>>(),
        ["hi", "lo"]
    );
    assert_eq!(inspect.account_configs["hi"].max_fanout, 3);
    out.inspections.push(inspect);

    // A bot that asks again is idle: its task is over.
    let got = rpc
        .assign(pool, 3, vec![bot("b-linux", &["os:linux"])])
        .await;
    assert!(got.is_empty(), "{t:?}: {got:?}");
    out.assignments.push(got);
    let inspect = without_ages(rpc.inspect(pool).await);
    assert_eq!(inspect.idle_bots.len(), 1);
    assert_eq!(inspect.idle_bots[0].id, "b-linux");
    assert_eq!(inspect.idle_bots[0].dimensions, ["os:linux"]);
    assert_eq!(inspect.running_tasks.len(), 1);
    out.inspections.push(inspect);

    // Wipe: tasks, bots and balances go, the configuration stays; the
    // balances come back at the pool's next clock update (reference, admin
    // Wipe).
    rpc.wipe(adm::WipeRequest {
        pool_id: pool.into(),
    })
    .await
    .unwrap();
    let inspect = without_ages(rpc.inspect(pool).await);
    assert_eq!(
        (
            inspect.num_waiting_tasks,
            inspect.num_running_tasks,
            inspect.num_idle_bots
        ),
        (0, 0, 0),
        "{t:?}"
    );
    assert!(inspect.account_balances.is_empty(), "{t:?}");
    assert_eq!(
        inspect.account_configs.keys().collect::<Vec<_>>(),
        ["hi", "lo"]
    );
    out.inspections.push(inspect);
    assert!(rpc.callbacks(pool).await.is_empty());

    // Delete: the pool is gone for every method.
    rpc.delete_scheduler_pool(adm::DeleteSchedulerPoolRequest {
        pool_id: pool.into(),
    })
    .await
    .unwrap();
    let e = rpc
        .inspect_pool(adm::InspectPoolRequest {
            pool_id: pool.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{t:?}: {e:?}");
    out.errors.push((e.code(), e.message().to_owned()));
    let e = rpc
        .assign_tasks(pb::AssignTasksRequest {
            scheduler_id: pool.into(),
            idle_bots: vec![bot("b", &[])],
            time: ts(4),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{t:?}: {e:?}");
    assert!(e.message().contains(pool), "{e:?}");
    out.errors.push((e.code(), e.message().to_owned()));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_over_every_transport_gives_the_same_answers() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(options(dir.path())).await;
    let mut transcripts = Vec::new();
    for t in Transport::ALL {
        let rpc = Rpc::connect(server.addr, t).await;
        // The same pool id on each transport (the pool is deleted at the
        // end), so that messages naming it compare equal too.
        transcripts.push((t, scenario(&rpc, "every-method").await));
    }
    let (first, reference) = &transcripts[0];
    for (t, transcript) in &transcripts[1..] {
        assert_eq!(transcript, reference, "{t:?} differs from {first:?}");
    }
    server.stop().await;
}

/// The JSON a client writes by hand (lowerCamelCase names, enums by name
/// or number, timestamps as RFC 3339, unknown fields) is understood, and
/// answers use proto JSON's forms: default values omitted, enums by name,
/// whole floats without a fraction, as the reference implementation writes
/// them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_written_json() {
    use common::prpc;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(options(dir.path())).await;
    let addr = server.addr;
    let es = "swarming.v1.ExternalScheduler";
    let admin = "qscheduler.QSchedulerAdmin";
    prpc(
        addr,
        &format!("{admin}/CreateSchedulerPool"),
        json!({"poolId": "j"}),
    )
    .await;
    prpc(
        addr,
        &format!("{admin}/CreateAccount"),
        json!({"poolId": "j", "accountId": "acc",
               "config": {"chargeRate": [2, 1], "maxChargeSeconds": 50, "description": "d"}}),
    )
    .await;
    prpc(
        addr,
        &format!("{es}/NotifyTasks"),
        json!({"schedulerId": "j", "notifications": [
            {"time": "2030-01-01T00:00:00Z", "task": {
                "id": "t1", "state": "PENDING", "tags": ["qs_account:acc"],
                "enqueuedTime": "2030-01-01T00:00:00Z",
                "slices": [{"dimensions": ["os:a", "fw:2"]}, {"dimensions": ["os:a"]}]}},
            {"time": "2030-01-01T00:00:00.5Z", "task": {
                "id": "t2", "state": 16, "enqueuedTime": "2030-01-01T00:00:00Z",
                "slices": [{"dimensions": ["os:a"]}], "unknownField": 1}},
            {"time": "2030-01-01T00:00:00Z", "task": {
                "id": "bad", "state": "PENDING", "enqueuedTime": "2030-01-01T00:00:00Z",
                "tags": ["qs_account:a", "qs_account:b"],
                "slices": [{"dimensions": ["os:a"]}]}}
        ]}),
    )
    .await;
    let r = prpc(
        addr,
        &format!("{es}/AssignTasks"),
        json!({"schedulerId": "j", "time": "2030-01-01T00:00:01Z",
               "idleBots": [{"botId": "b1", "dimensions": ["os:a"]}]}),
    )
    .await;
    assert_eq!(
        r,
        json!({"assignments": [{"botId": "b1", "taskId": "t1", "sliceNumber": 1}]})
    );
    let r = prpc(
        addr,
        &format!("{es}/GetCancellations"),
        json!({"schedulerId": "j"}),
    )
    .await;
    assert_eq!(
        r,
        json!({"cancellations": [{"taskId": "bad", "reason": "ERROR",
                                  "extraInfo": "Too many account tags."}]})
    );
    let r = prpc(
        addr,
        "qscheduler.QSchedulerView/ListAccounts",
        json!({"poolId": "j"}),
    )
    .await;
    assert_eq!(
        r,
        json!({"accounts": {"acc": {"chargeRate": [2, 1, 0, 0, 0],
                                    "maxChargeSeconds": 50, "description": "d"}}})
    );
    let r = prpc(
        addr,
        "qscheduler.QSchedulerView/InspectPool",
        json!({"poolId": "j"}),
    )
    .await;
    assert_eq!(r["numWaitingTasks"], 1);
    assert_eq!(r["numRunningTasks"], 1);
    assert_eq!(r["runningTasks"][0]["id"], "t1");
    assert_eq!(r["runningTasks"][0]["botId"], "b1");
    assert_eq!(r["runningTasks"][0]["accountId"], "acc");
    assert!(
        r["runningTasks"][0].get("priority").is_none(),
        "priority 0 is a default value, omitted: {r}"
    );
    assert_eq!(r["waitingTasks"][0]["id"], "t2");
    assert_eq!(
        r["accountBalances"]["acc"]["value"],
        json!([100, 50, 0, 0, 0])
    );
    // Wrapper fields of ModAccount keep their presence in JSON.
    prpc(
        addr,
        &format!("{admin}/ModAccount"),
        json!({"poolId": "j", "accountId": "acc", "maxFanout": 0, "disableFreeTasks": true,
               "maxChargeSeconds": 20}),
    )
    .await;
    let r = prpc(
        addr,
        "qscheduler.QSchedulerView/ListAccounts",
        json!({"poolId": "j"}),
    )
    .await;
    assert_eq!(
        r["accounts"]["acc"],
        json!({"chargeRate": [2, 1, 0, 0, 0], "maxChargeSeconds": 20,
               "disableFreeTasks": true, "description": "d"})
    );
    server.stop().await;
}
