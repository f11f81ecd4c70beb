//! A pool directory of the embedded store with arbitrary contents: log
//! segments made of frames (valid checksums mostly, so the fuzzer gets past
//! them, with damage, gaps, foreign seqs and garbage tails), snapshot files
//! (valid images of real pools or arbitrary bytes, right or wrong headers),
//! and records that are real commands, damaged ones or arbitrary bytes.
//! The store's recovery reads it (segment headers, frames, torn-tail
//! detection and cutting, snapshot checks), then the server's pool
//! recovery decodes the snapshot and the commands and replays them.
//!
//! What recovery accepts must then behave as a log: one more append must
//! come back, after the records recovered, when the pool is opened again,
//! and the pool rebuilt from it must equal the pool that made the append;
//! with a snapshot written too, the same holds from the snapshot.

#![no_main]

use std::path::Path;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use qscheduler_core::{AssignCall, Batch, Command, IdleBot, Pool, Time, snapshot};
use qscheduler_fuzz::inprocess::scratch_dir;
use qscheduler_fuzz::requests::{BASE_SECS, Req};
use qscheduler_server::{pool::recover, service, translate};
use qscheduler_store::{Store, StoreOptions};

const FORMAT_LINE: &str = "qscheduler-store embedded 1\n";
const POOL: &str = "p";

/// A command as the server would log it, if the request translates.
fn command(req: &Req) -> Option<Command> {
    Some(match req {
        Req::Notify(r) => Command::Batch(Batch {
            notifies: vec![translate::notify_call(r).ok()?],
            assigns: vec![],
        }),
        Req::Assign(r) => Command::Batch(Batch {
            notifies: vec![],
            assigns: vec![translate::assign_call(r).ok()?],
        }),
        Req::CreateAccount(r) => service::create_account_command(r).ok()?,
        Req::ModAccount(r) => service::mod_account_command(r).ok()?,
        Req::ModPool(r) => service::mod_pool_command(r).ok()?,
        Req::DeleteAccount(r) => service::delete_account_command(r).ok()?,
        Req::Wipe(_) => Command::Wipe {
            time: Time::from_secs(BASE_SECS + 100),
        },
        _ => Command::Create {
            time: Time::from_secs(BASE_SECS),
        },
    })
}

#[derive(Debug)]
enum Payload {
    Command(Vec<u8>),
    Raw(Vec<u8>),
}

impl<'a> Arbitrary<'a> for Payload {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        if u.ratio(1, 8)? {
            return Ok(Payload::Raw(u.arbitrary()?));
        }
        let req: Req = u.arbitrary()?;
        let mut bytes = command(&req).map(|c| c.encode()).unwrap_or_default();
        if u.ratio(1, 8)? && !bytes.is_empty() {
            let i = u.choose_index(bytes.len())?;
            bytes[i] ^= u.arbitrary::<u8>()?;
        }
        Ok(Payload::Command(bytes))
    }
}

impl Payload {
    fn bytes(&self) -> &[u8] {
        match self {
            Payload::Command(b) | Payload::Raw(b) => b,
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Frame {
    /// Added to the expected seq (0 mostly).
    seq_skew: i8,
    /// The append this frame belongs to: (first, last) relative to `seq`.
    batch_back: u8,
    batch_ahead: u8,
    bad_crc: bool,
    payload: Payload,
}

#[derive(Arbitrary, Debug)]
enum Header {
    Valid,
    OtherFirst(u64),
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Segment {
    header: Header,
    frames: Vec<Frame>,
    tail: Vec<u8>,
    /// (offset, xor) byte damage after writing.
    flips: Vec<(u16, u8)>,
    truncate: Option<u16>,
}

#[derive(Arbitrary, Debug)]
enum SnapBody {
    /// The snapshot of a pool built from these requests.
    Pool(Vec<Req>),
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Snap {
    /// Its seq (1 + this).
    seq: u8,
    body: SnapBody,
    bad_header: bool,
    flips: Vec<(u16, u8)>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    segments: Vec<Segment>,
    /// Skips before each segment's first seq (0: contiguous).
    gaps: Vec<u8>,
    snaps: Vec<Snap>,
    /// Write a snapshot after the extra append.
    snapshot_after: bool,
}

fn segment_header(first: u64) -> Vec<u8> {
    let mut h = Vec::with_capacity(24);
    h.extend_from_slice(b"QSLOGv1\n");
    h.extend_from_slice(&first.to_le_bytes());
    let crc = crc32c::crc32c(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h
}

fn frame(out: &mut Vec<u8>, seq: u64, batch: (u64, u64), payload: &[u8], bad_crc: bool) {
    let len = payload.len() as u32;
    let mut tail = Vec::with_capacity(24);
    tail.extend_from_slice(&seq.to_le_bytes());
    tail.extend_from_slice(&batch.0.to_le_bytes());
    tail.extend_from_slice(&batch.1.to_le_bytes());
    let mut crc = crc32c::crc32c(&len.to_le_bytes());
    crc = crc32c::crc32c_append(crc, &tail);
    crc = crc32c::crc32c_append(crc, payload);
    if bad_crc {
        crc ^= 1;
    }
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&tail);
    out.extend_from_slice(payload);
}

fn snapshot_file(seq: u64, payload: &[u8], bad_header: bool) -> Vec<u8> {
    let mut h = Vec::with_capacity(32 + payload.len());
    h.extend_from_slice(b"QSSNPv1\n");
    h.extend_from_slice(&seq.to_le_bytes());
    h.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&seq.to_le_bytes()), payload);
    h.extend_from_slice(&crc.to_le_bytes());
    let mut hcrc = crc32c::crc32c(&h);
    if bad_header {
        hcrc ^= 1;
    }
    h.extend_from_slice(&hcrc.to_le_bytes());
    h.extend_from_slice(payload);
    h
}

fn damage(bytes: &mut [u8], flips: &[(u16, u8)]) {
    if bytes.is_empty() {
        return;
    }
    for &(at, x) in flips {
        let i = usize::from(at) % bytes.len();
        bytes[i] ^= x;
    }
}

fn write(path: &Path, bytes: &[u8]) {
    if let Err(e) = std::fs::write(path, bytes) {
        panic!("write {}: {e}", path.display());
    }
}

/// A pool built by the server's commands for `reqs` (those that apply).
fn pool_of(reqs: &[Req]) -> Pool {
    let mut pool = Pool::new(Time::EPOCH);
    let _ = pool.apply(&Command::Create {
        time: Time::from_secs(BASE_SECS),
    });
    for r in reqs {
        if let Some(c) = command(r) {
            let _ = pool.apply(&c);
        }
    }
    pool
}

fn lay_out(dir: &Path, input: &Input) {
    write(&dir.join("FORMAT"), FORMAT_LINE.as_bytes());
    let pool_dir = dir.join("pools").join(POOL);
    if let Err(e) = std::fs::create_dir_all(&pool_dir) {
        panic!("mkdir: {e}");
    }
    write(&pool_dir.join("pool-id"), POOL.as_bytes());
    let mut seq: u64 = 1;
    for (i, s) in input.segments.iter().enumerate() {
        seq += u64::from(input.gaps.get(i).copied().unwrap_or(0) % 4);
        let first = seq;
        let mut buf = match &s.header {
            Header::Valid => segment_header(first),
            Header::OtherFirst(f) => segment_header(*f),
            Header::Raw(b) => b.clone(),
        };
        for f in &s.frames {
            let fseq = seq.saturating_add_signed(i64::from(f.seq_skew / 32));
            let batch = (
                fseq.saturating_sub(u64::from(f.batch_back % 4)),
                fseq.saturating_add(u64::from(f.batch_ahead % 4)),
            );
            frame(&mut buf, fseq, batch, f.payload.bytes(), f.bad_crc);
            seq = fseq + 1;
        }
        buf.extend_from_slice(&s.tail);
        damage(&mut buf, &s.flips);
        if let Some(n) = s.truncate {
            buf.truncate(usize::from(n));
        }
        write(&pool_dir.join(format!("log-{first:020}.seg")), &buf);
    }
    for s in &input.snaps {
        let sseq = 1 + u64::from(s.seq);
        let payload = match &s.body {
            SnapBody::Pool(reqs) => snapshot::encode(&pool_of(reqs)),
            SnapBody::Raw(b) => b.clone(),
        };
        let mut file = snapshot_file(sseq, &payload, s.bad_header);
        damage(&mut file, &s.flips);
        write(&pool_dir.join(format!("snap-{sseq:020}.snap")), &file);
    }
}

fn must<T, E: std::fmt::Display>(r: Result<T, E>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e}"),
    }
}

fuzz_target!(|input: Input| {
    let scratch = scratch_dir();
    let dir = scratch.path().join("data");
    if let Err(e) = std::fs::create_dir_all(&dir) {
        panic!("mkdir: {e}");
    }
    lay_out(&dir, &input);
    let location = dir.to_string_lossy().into_owned();
    qscheduler_fuzz::runtime().block_on(async {
        let store = must(
            Store::open(&location, StoreOptions::default()).await,
            "open the store",
        );
        let Ok((handle, rec)) = store.open_pool(POOL).await else {
            return;
        };
        let Ok(mut pool) = recover(POOL, &rec) else {
            return;
        };
        // Recovery accepted the directory: it must now work as a log.
        let last = rec.last_seq();
        assert_eq!(
            handle.last_seq(),
            last,
            "the handle disagrees with what it recovered"
        );
        let bots: Vec<IdleBot> = (0..3)
            .map(|i| IdleBot {
                id: format!("b{i}"),
                labels: vec!["pool:p".into()],
            })
            .collect();
        let time = pool.scheduler().now().add_nanos(1_000_000_000);
        let cmd = Command::Batch(Batch {
            notifies: vec![],
            assigns: vec![AssignCall { time, bots }],
        });
        must(pool.check(&cmd), "a valid call does not pass the checks");
        let record = cmd.encode();
        must(
            handle.append(vec![record.clone()]).await,
            "append after recovery",
        );
        must(pool.apply(&cmd), "apply after recovery");
        let image = snapshot::encode(&pool);
        if input.snapshot_after {
            must(
                handle.write_snapshot(last + 1, image.clone()).await,
                "snapshot after recovery",
            );
        }
        must(handle.release().await, "release");
        let (handle, rec2) = must(store.open_pool(POOL).await, "reopen after an append");
        assert_eq!(
            rec2.last_seq(),
            last + 1,
            "the append was lost: {:?}",
            rec2.notes
        );
        if !input.snapshot_after {
            assert_eq!(
                rec2.records.last().map(|(s, r)| (*s, r.as_slice())),
                Some((last + 1, record.as_slice())),
                "the appended record does not come back"
            );
        }
        let again = must(recover(POOL, &rec2), "recover the log just written");
        assert!(
            snapshot::encode(&again) == image,
            "the pool recovered after the append differs from the pool that appended"
        );
        let _ = handle.release().await;
    });
});
