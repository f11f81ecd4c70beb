//! Whole HTTP requests, pRPC and gRPC, sent to the real server in process:
//! the one-port router, the pRPC protocol layer (headers, encodings,
//! compression, limits) and tonic's decoding in front of the real services,
//! pool writers, store, event log and metrics. Requests of one group are
//! sent concurrently (so the pool writer batches them), groups one after
//! the other. At the end the metrics are scraped and, for most inputs, the
//! data directory is recovered and must give back the same pools.

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use axum::body::Body;
use libfuzzer_sys::fuzz_target;
use qscheduler_fuzz::calls::Call;
use qscheduler_fuzz::inprocess::{InProcess, Tuning, scratch_dir};

#[derive(Debug)]
struct Input {
    tuning: Tuning,
    check_recovery: bool,
    groups: Vec<Vec<Call>>,
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let tuning = Tuning {
            snapshot_every_records: *u.choose(&[3, 7, 100_000])?,
            follower: u.arbitrary()?,
        };
        let check_recovery = u.ratio(3, 4)?;
        let mut groups = Vec::new();
        while !u.is_empty() && groups.len() < 12 {
            let n = u.int_in_range(1..=4)?;
            let mut group = Vec::new();
            for _ in 0..n {
                group.push(u.arbitrary()?);
            }
            groups.push(group);
        }
        Ok(Input {
            tuning,
            check_recovery,
            groups,
        })
    }
}

fn get(path: &str) -> http::Request<Body> {
    let mut req = http::Request::new(Body::empty());
    if let Ok(uri) = http::Uri::try_from(path) {
        *req.uri_mut() = uri;
    }
    req
}

fuzz_target!(|input: Input| {
    let dir = scratch_dir();
    qscheduler_fuzz::runtime().block_on(async {
        let server = InProcess::start(dir.path(), input.tuning).await;
        for group in &input.groups {
            let sends = group.iter().map(|c| server.send(c.request()));
            for reply in futures_join(sends).await {
                let code = reply.headers.get("x-prpc-grpc-code");
                // pRPC never answers an error with HTTP 200.
                if reply.status == http::StatusCode::OK
                    && let Some(code) = code
                {
                    assert_eq!(code, "0", "an error with HTTP 200: {reply:?}");
                }
                // A server error is a bug, unless the request itself asked
                // for it (a deadline, a size limit: 503/504 are fine).
                assert!(
                    reply.status != http::StatusCode::INTERNAL_SERVER_ERROR,
                    "500 for a request: {reply:?}"
                );
            }
        }
        let metrics = server.send(get("/metrics")).await;
        assert_eq!(metrics.status, http::StatusCode::OK, "{metrics:?}");
        server.stop(input.check_recovery).await;
    });
});

/// Runs the futures concurrently on the current task; results in order.
async fn futures_join<F: std::future::Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futs {
        set.push(Box::pin(f));
    }
    let mut out: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}
