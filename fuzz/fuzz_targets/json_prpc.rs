//! Text as a pRPC JSON (or text-format) body: the pRPC server's JSON
//! decoding (proto JSON through the descriptors, unknown fields dropped)
//! and its text-format decoding, then the server's translation and the
//! core, behind the real pRPC router. The first byte picks the method and
//! the encoding; the rest is the body. Responses are encoded back in the
//! negotiated format.

#![no_main]

use std::sync::Arc;

use axum::body::Body;
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use qscheduler_fuzz::core_services::CoreServices;
use qscheduler_fuzz::requests::METHODS;
use qscheduler_wire::prpc::PrpcRouter;
use tower::ServiceExt;

fuzz_target!(|data: &[u8]| {
    let Some((&first, body)) = data.split_first() else {
        return;
    };
    let method = METHODS[usize::from(first & 0x0F) % METHODS.len()];
    let (content_type, accept) = match first >> 4 {
        0 => (
            "application/prpc; encoding=text",
            "application/prpc; encoding=text",
        ),
        1 => ("application/json", "application/prpc; encoding=text"),
        2 => ("application/json", "application/prpc; encoding=binary"),
        _ => ("application/json", "application/json"),
    };
    let services = Arc::new(CoreServices::default());
    let router = PrpcRouter::new()
        .external_scheduler(services.clone())
        .admin(services.clone())
        .view(services.clone())
        .into_router();
    let req = http::Request::builder()
        .method(http::Method::POST)
        .uri(format!("/prpc/{}/{}", method.service, method.method))
        .header("content-type", content_type)
        .header("accept", accept)
        .body(Body::from(body.to_vec()));
    let Ok(req) = req else {
        return;
    };
    qscheduler_fuzz::runtime().block_on(async {
        let resp = match router.oneshot(req).await {
            Ok(r) => r,
            Err(e) => match e {},
        };
        let status = resp.status();
        let _ = resp.into_body().collect().await;
        assert!(
            status != http::StatusCode::INTERNAL_SERVER_ERROR,
            "500 for {} with {content_type}",
            method.method
        );
    });
    services
        .core
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .check_snapshots();
});
