//! Liveness, readiness and gRPC health on a real socket: what each phase of
//! the server's life answers, and that the answers need no credentials.

mod common;

use std::sync::Arc;

use common::get;
use qscheduler_server::health::{Health, Phase, Readiness, SERVICES};
use qscheduler_server::pool::{NoObserver, PoolOptions};
use qscheduler_server::registry::Registry;
use qscheduler_server::{Server, ServerOptions};
use qscheduler_store::{Store, StoreOptions};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

async fn grpc_status(
    addr: std::net::SocketAddr,
    service: &str,
) -> Result<ServingStatus, tonic::Code> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("gRPC connects");
    let mut client = HealthClient::new(channel);
    client
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .map(|r| r.into_inner().status())
        .map_err(|s| s.code())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_then_draining_over_http_and_grpc() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(ServerOptions {
        listen: "127.0.0.1:0".parse().expect("addr"),
        store: dir.path().join("store").to_str().expect("utf-8").to_owned(),
        ..ServerOptions::default()
    })
    .await
    .expect("server starts");
    let addr = server.local_addr().expect("addr");
    let health = server.health().clone();
    // Recovery finished before start returned.
    assert_eq!(health.phase(), Phase::Serving);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));

    assert_eq!(get(addr, "/healthz").await, (200, "ok\n".to_owned()));
    assert_eq!(get(addr, "/readyz").await, (200, "ready\n".to_owned()));
    assert_eq!(grpc_status(addr, "").await, Ok(ServingStatus::Serving));
    for s in SERVICES {
        assert_eq!(
            grpc_status(addr, s).await,
            Ok(ServingStatus::Serving),
            "{s}"
        );
    }
    // A service the server does not have is unknown to health checking.
    assert_eq!(
        grpc_status(addr, "no.such.Service").await,
        Err(tonic::Code::NotFound)
    );

    // Draining: liveness stays, readiness and gRPC health turn.
    health.set_phase(Phase::Draining).await;
    let (code, body) = get(addr, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("draining"), "{body}");
    assert_eq!(get(addr, "/healthz").await.0, 200);
    assert_eq!(grpc_status(addr, "").await, Ok(ServingStatus::NotServing));
    for s in SERVICES {
        assert_eq!(
            grpc_status(addr, s).await,
            Ok(ServingStatus::NotServing),
            "{s}"
        );
    }
    // There is no way back from draining.
    health.set_phase(Phase::Serving).await;
    assert_eq!(health.phase(), Phase::Draining);

    let _ = stop.send(());
    task.await.expect("join").expect("server stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_the_pools_are_recovered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(
        dir.path().join("store").to_str().expect("utf-8"),
        StoreOptions::default(),
    )
    .await
    .expect("store opens");
    let registry = Registry::new(store, PoolOptions::default(), Arc::new(NoObserver));
    let (health, _service) = Health::new(registry.clone());
    assert_eq!(
        health.readiness(),
        Readiness::NotReady("recovering pools".to_owned())
    );
    // Serving, but the registry has not recovered yet: still not ready.
    health.set_phase(Phase::Serving).await;
    assert_eq!(
        health.readiness(),
        Readiness::NotReady("recovering pools".to_owned())
    );
    registry.recover_all().await.expect("recovers");
    assert_eq!(health.readiness(), Readiness::Ready);
    let s = registry.settlement();
    assert!(s.recovered && s.registered, "{s:?}");
    assert_eq!(s.pending, 0);
    registry.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_during_recovery_then_ready() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store").to_str().expect("utf-8").to_owned();
    // A first life creates a pool, so that the second has one to recover.
    {
        let server = common::TestServer::start(ServerOptions {
            store: store.clone(),
            ..ServerOptions::default()
        })
        .await;
        common::prpc(
            server.addr,
            "qscheduler.QSchedulerAdmin/CreateSchedulerPool",
            serde_json::json!({"poolId": "p-health"}),
        )
        .await;
        server.stop().await;
    }
    let server = Server::start(ServerOptions {
        listen: "127.0.0.1:0".parse().expect("addr"),
        store,
        recover_in_background: true,
        ..ServerOptions::default()
    })
    .await
    .expect("server starts");
    let addr = server.local_addr().expect("addr");
    let health = server.health().clone();
    let registry = server.registry().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    // Whatever the phase when the first probe lands, liveness answers and
    // readiness agrees with the registry; then it settles to ready.
    assert_eq!(get(addr, "/healthz").await.0, 200);
    let mut probes = 0;
    loop {
        let (code, body) = get(addr, "/readyz").await;
        probes += 1;
        if code == 200 {
            assert!(registry.settlement().recovered);
            break;
        }
        assert_eq!(code, 503, "{body}");
        assert!(body.contains("recovering"), "{body}");
        // Two minutes: a hang fails the test, a slow machine does not.
        assert!(probes < 2400, "never became ready: {body}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(health.phase(), Phase::Serving);
    assert_eq!(registry.open_ids(), vec!["p-health".to_owned()]);
    assert_eq!(grpc_status(addr, "").await, Ok(ServingStatus::Serving));
    let _ = stop.send(());
    task.await.expect("join").expect("server stops cleanly");
}
