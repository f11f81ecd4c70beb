//! Request messages as a gRPC (or binary pRPC) body delivers them: bytes
//! decoded by prost as the request of each method, then the server's
//! translation and validation, the pool writer's checks and batching, the
//! log encoding and decoding of the resulting commands, and the core
//! pools applying them. Steps are either raw bytes for a method or a
//! structured request (encoded and decoded again), so both the decoder's
//! edge cases and deep scheduler states are reached. Several steps may form
//! one batch, as concurrent calls do.
//!
//! Panics if a command the checks let through does not apply, if a logged
//! command does not decode to itself, or if a pool's snapshot does not
//! survive a round trip.

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use qscheduler_fuzz::core_services::Core;
use qscheduler_fuzz::requests::{METHODS, Req};

#[derive(Debug)]
enum Step {
    Raw(usize, Vec<u8>),
    Structured(Req),
}

impl<'a> Arbitrary<'a> for Step {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(if u.ratio(1, 3)? {
            Step::Raw(u.choose_index(METHODS.len())?, u.arbitrary()?)
        } else {
            Step::Structured(u.arbitrary()?)
        })
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    batches: Vec<Vec<Step>>,
}

fuzz_target!(|input: Input| {
    let mut core = Core::new();
    for batch in input.batches {
        let mut reqs = Vec::new();
        for step in batch {
            let (index, bytes) = match step {
                Step::Raw(i, b) => (i, b),
                Step::Structured(r) => (r.index(), r.encode()),
            };
            // What tonic and the pRPC server do with a body.
            if let Ok(req) = Req::decode(index, &bytes) {
                reqs.push(req);
            }
        }
        let _ = core.call_batch(reqs);
    }
    core.check_snapshots();
});
