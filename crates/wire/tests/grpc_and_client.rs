//! gRPC and pRPC on the same port reaching the same implementation, gRPC
//! reflection, gRPC deadlines, and the pRPC client.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use qscheduler_wire::prpc::{Format, PrpcClient};
use qscheduler_wire::qscheduler::q_scheduler_view_client::QSchedulerViewClient;
use qscheduler_wire::qscheduler::{InspectPoolRequest, InspectPoolResponse};
use qscheduler_wire::swarming::v1::external_scheduler_client::ExternalSchedulerClient;
use qscheduler_wire::swarming::v1::*;
use tonic::Code;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

const ES: &str = "swarming.v1.ExternalScheduler";

#[tokio::test]
async fn grpc_and_prpc_answer_the_same_call_on_one_port() {
    let server = start_dummy().await;
    let mut grpc = ExternalSchedulerClient::connect(server.url())
        .await
        .unwrap();
    let via_grpc = grpc
        .assign_tasks(assign_request("same"))
        .await
        .unwrap()
        .into_inner();

    let prpc = PrpcClient::new(&server.url()).unwrap();
    let via_prpc: AssignTasksResponse = prpc
        .call(ES, "AssignTasks", &assign_request("same"))
        .await
        .unwrap();
    assert_eq!(via_grpc, via_prpc);
    assert_eq!(via_grpc.assignments.len(), 2);

    let json = prpc.clone().with_format(Format::Json);
    let via_json: AssignTasksResponse = json
        .call(ES, "AssignTasks", &assign_request("same"))
        .await
        .unwrap();
    assert_eq!(via_json, via_prpc);

    let text = prpc.with_format(Format::Text);
    let via_text: AssignTasksResponse = text
        .call(ES, "AssignTasks", &assign_request("same"))
        .await
        .unwrap();
    assert_eq!(via_text, via_prpc);

    // The view service too, with maps and nested messages.
    let mut view = QSchedulerViewClient::connect(server.url()).await.unwrap();
    let g = view
        .inspect_pool(InspectPoolRequest {
            pool_id: "p".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let j: InspectPoolResponse = PrpcClient::new(&server.url())
        .unwrap()
        .with_format(Format::Json)
        .call(
            "qscheduler.QSchedulerView",
            "InspectPool",
            &InspectPoolRequest {
                pool_id: "p".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(g, j);
    assert!(g.disable_preemption);
}

#[tokio::test]
async fn grpc_errors_and_method_info() {
    let server = start_dummy().await;
    let mut grpc = ExternalSchedulerClient::connect(server.url())
        .await
        .unwrap();
    let err = grpc
        .assign_tasks(assign_request("error:5:no such pool"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "no such pool");

    let resp = grpc
        .assign_tasks(assign_request("method"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resp.assignments[0].bot_id,
        "swarming.v1.ExternalScheduler/AssignTasks"
    );
    assert_eq!(resp.assignments[0].task_id, "Grpc");

    let prpc = PrpcClient::new(&server.url()).unwrap();
    let resp: AssignTasksResponse = prpc
        .call(ES, "AssignTasks", &assign_request("method"))
        .await
        .unwrap();
    assert_eq!(resp.assignments[0].task_id, "Prpc");
}

#[tokio::test]
async fn grpc_handler_sees_its_deadline_and_is_cut_off() {
    let server = start(dummy_services().request_timeout(Some(Duration::from_millis(300)))).await;
    let mut grpc = ExternalSchedulerClient::connect(server.url())
        .await
        .unwrap();

    let mut req = tonic::Request::new(assign_request("deadline"));
    req.set_timeout(Duration::from_secs(5));
    let resp = grpc.assign_tasks(req).await.unwrap().into_inner();
    // Capped by the server's 300 ms.
    let ms: u128 = resp.assignments[0].task_id.parse().unwrap();
    assert!(ms <= 300, "{ms}");

    // The handler sleeps ten minutes: an answer at all means the server cut
    // it off (the outer timeout only stops a hung test).
    let err = tokio::time::timeout(
        Duration::from_secs(120),
        grpc.assign_tasks(assign_request("sleep:600000")),
    )
    .await
    .expect("the handler was not cut off at the server's deadline")
    .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded);
}

#[tokio::test]
async fn grpc_interceptor_sees_the_method() {
    let services = dummy_services().interceptor(Arc::new(|req: tonic::Request<()>| {
        let m = qscheduler_wire::context::rpc_method(&req)
            .cloned()
            .ok_or_else(|| tonic::Status::internal("no method info"))?;
        if &*m.method == "GetCallbacks" {
            return Err(tonic::Status::permission_denied("not for you"));
        }
        Ok(req)
    }));
    let server = start(services).await;
    let mut grpc = ExternalSchedulerClient::connect(server.url())
        .await
        .unwrap();
    let err = grpc
        .get_callbacks(GetCallbacksRequest {
            scheduler_id: "p".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    grpc.get_cancellations(GetCancellationsRequest {
        scheduler_id: "p".into(),
    })
    .await
    .unwrap();

    let prpc = PrpcClient::new(&server.url()).unwrap();
    let err = prpc
        .call::<_, GetCallbacksResponse>(
            ES,
            "GetCallbacks",
            &GetCallbacksRequest {
                scheduler_id: "p".into(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(err.message(), "not for you");
}

#[tokio::test]
async fn grpc_reflection_lists_the_services() {
    let server = start_dummy().await;
    let channel = tonic::transport::Endpoint::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(tonic::codegen::tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("{response:?}");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    for want in [
        "qscheduler.QSchedulerAdmin",
        "qscheduler.QSchedulerView",
        "swarming.v1.ExternalScheduler",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }

    // A symbol lookup returns the file that defines it.
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(
            "swarming.v1.AssignTasksRequest".into(),
        )),
    };
    let mut stream = client
        .server_reflection_info(tonic::codegen::tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = stream.message().await.unwrap().unwrap();
    assert!(
        matches!(
            response.message_response,
            Some(MessageResponse::FileDescriptorResponse(_))
        ),
        "{response:?}"
    );
}

#[tokio::test]
async fn unknown_grpc_service_is_unimplemented() {
    let server = start_dummy().await;
    // Only ExternalScheduler registered: the admin client hits nothing.
    let only_es =
        start(qscheduler_wire::serve::Services::new().external_scheduler(Arc::new(Dummy))).await;
    let mut admin =
        qscheduler_wire::qscheduler::q_scheduler_admin_client::QSchedulerAdminClient::connect(
            only_es.url(),
        )
        .await
        .unwrap();
    let err = admin
        .wipe(qscheduler_wire::qscheduler::WipeRequest {
            pool_id: "p".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    drop(server);
}

#[tokio::test]
async fn client_maps_errors_to_status() {
    let server = start_dummy().await;
    for format in [Format::Binary, Format::Json] {
        let client = PrpcClient::new(&server.url()).unwrap().with_format(format);
        let err = client
            .call::<_, AssignTasksResponse>(ES, "AssignTasks", &assign_request("error:6:dup"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists);
        assert_eq!(err.message(), "dup");

        let err = client
            .call::<_, AssignTasksResponse>(ES, "Nope", &assign_request("p"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unimplemented);

        let err = client
            .call::<_, AssignTasksResponse>(ES, "AssignTasks", &assign_request("error:13:secret"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Internal);
        assert_eq!(err.message(), "Internal server error");
    }

    // Not a pRPC endpoint: no code header.
    let client = PrpcClient::new(&server.url())
        .unwrap()
        .with_prefix("/elsewhere");
    let err = client
        .call::<_, AssignTasksResponse>(ES, "AssignTasks", &assign_request("p"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Internal);
    assert_eq!(err.message(), "no X-Prpc-Grpc-Code header");

    // Nobody listening.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let err = PrpcClient::new(&dead)
        .unwrap()
        .call::<_, AssignTasksResponse>(ES, "AssignTasks", &assign_request("p"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
}

#[tokio::test]
async fn client_timeout_and_limits() {
    let server = start_dummy().await;
    let client = PrpcClient::new(&server.url())
        .unwrap()
        .with_timeout(Duration::from_millis(200));
    let err = client
        .call::<_, AssignTasksResponse>(ES, "AssignTasks", &assign_request("sleep:3000"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded);

    // The timeout travels to the server.
    let resp: AssignTasksResponse = PrpcClient::new(&server.url())
        .unwrap()
        .with_timeout(Duration::from_secs(2))
        .call(ES, "AssignTasks", &assign_request("deadline"))
        .await
        .unwrap();
    let ms: u128 = resp.assignments[0].task_id.parse().unwrap();
    assert!(ms <= 2000 && ms > 500, "{ms}");

    let err = PrpcClient::new(&server.url())
        .unwrap()
        .with_max_response_size(64)
        .call::<_, AssignTasksResponse>(ES, "AssignTasks", &assign_request("big:10"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    // The ResponseTooBig detail survives into the status.
    assert!(!err.details().is_empty());

    // Large responses come back gzipped and are unpacked.
    let resp: AssignTasksResponse = PrpcClient::new(&server.url())
        .unwrap()
        .call(ES, "AssignTasks", &assign_request("big:500"))
        .await
        .unwrap();
    assert_eq!(resp.assignments.len(), 500);

    // Extra headers reach the handler as metadata.
    let resp: AssignTasksResponse = PrpcClient::new(&server.url())
        .unwrap()
        .with_header("authorization", "Bearer abc")
        .unwrap()
        .call(ES, "AssignTasks", &assign_request("metadata"))
        .await
        .unwrap();
    assert!(
        resp.assignments
            .iter()
            .any(|a| a.bot_id == "authorization" && a.task_id == "Bearer abc")
    );
    assert!(
        resp.assignments
            .iter()
            .any(|a| a.bot_id == "user-agent" && a.task_id == "pRPC Client 1.5")
    );

    assert!(PrpcClient::new("not a url").is_err());
    assert!(PrpcClient::new("ftp://tls.example").is_err());
    assert!(PrpcClient::new("https://tls.example").is_ok());
}
