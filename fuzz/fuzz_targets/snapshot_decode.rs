//! Bytes as a stored snapshot: the core's snapshot decoder, which must
//! refuse anything it cannot load rather than panic. An input is either
//! raw bytes, or the snapshot of a real pool (built from structured
//! requests through the server's translation) with byte edits, a cut and
//! an insertion, so the decoder's deep parts see almost-valid images.
//!
//! What the decoder accepts must be a usable pool: it encodes canonically
//! (decoding the encoding gives the same bytes again), answers reads, and
//! takes Swarming's calls.

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use qscheduler_core::{AssignCall, Batch, Command, IdleBot, Time, snapshot};
use qscheduler_fuzz::core_services::Core;
use qscheduler_fuzz::requests::{POOL, Req};

#[derive(Debug)]
enum Input {
    Raw(Vec<u8>),
    Damaged {
        reqs: Vec<Req>,
        edits: Vec<(u32, u8)>,
        cut: Option<u32>,
        insert: Option<(u32, Vec<u8>)>,
    },
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(if u.ratio(1, 4)? {
            Input::Raw(u.arbitrary()?)
        } else {
            Input::Damaged {
                reqs: u.arbitrary()?,
                edits: u.arbitrary()?,
                cut: u.arbitrary()?,
                insert: u.arbitrary()?,
            }
        })
    }
}

fn bytes_of(input: Input) -> Vec<u8> {
    match input {
        Input::Raw(b) => b,
        Input::Damaged {
            reqs,
            edits,
            cut,
            insert,
        } => {
            let mut core = Core::new();
            for r in reqs {
                let _ = core.call(r);
            }
            let Some(pool) = core.pools().get(POOL) else {
                return Vec::new();
            };
            let mut b = snapshot::encode(pool);
            for (at, v) in edits {
                if !b.is_empty() {
                    let i = at as usize % b.len();
                    b[i] = v;
                }
            }
            if let Some(n) = cut {
                b.truncate(n as usize % (b.len() + 1));
            }
            if let Some((at, bytes)) = insert {
                let i = at as usize % (b.len() + 1);
                b.splice(i..i, bytes);
            }
            b
        }
    }
}

fuzz_target!(|input: Input| {
    let data = bytes_of(input);
    let Ok(mut pool) = snapshot::decode(&data) else {
        return;
    };
    let bytes = snapshot::encode(&pool);
    let again = match snapshot::decode(&bytes) {
        Ok(p) => p,
        Err(e) => panic!("the encoding of a decoded snapshot does not decode: {e}"),
    };
    assert!(
        snapshot::encode(&again) == bytes,
        "snapshot encoding is not canonical"
    );
    // A restored pool must answer reads and take calls like any other.
    let _ = pool.cancellations();
    let _ = pool.callbacks();
    let _ = pool.scheduler().queued_requests();
    let now = pool.scheduler().now().add_nanos(700_000_000_000);
    let mut bots: Vec<IdleBot> = pool
        .scheduler()
        .worker_views()
        .iter()
        .map(|w| IdleBot {
            id: w.id.to_string(),
            labels: w.labels.iter().map(|l| l.to_string()).collect(),
        })
        .collect();
    bots.push(IdleBot {
        id: "fuzz-bot".into(),
        labels: vec!["pool:p".into()],
    });
    for time in [now, Time::MAX] {
        let cmd = Command::Batch(Batch {
            notifies: vec![],
            assigns: vec![AssignCall {
                time,
                bots: bots.clone(),
            }],
        });
        if let Err(e) = pool.apply(&cmd) {
            panic!("a restored pool refuses a valid call: {e}");
        }
    }
    let _ = snapshot::encode(&pool);
});
