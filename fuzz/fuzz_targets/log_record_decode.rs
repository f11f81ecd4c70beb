//! A damaged pool file of the embedded store. A valid pool is built through
//! the store's API (records that are real commands, damaged ones or
//! arbitrary bytes; snapshots that are images of real pools or arbitrary
//! bytes; one or two snapshots kept), left either closed cleanly or as a
//! crash would leave it (the files copied while the pool is open), and its
//! `pool.redb` is then damaged at fuzzer-chosen places: flipped bytes,
//! zeroed runs, a truncation, a copy of one page over another.
//!
//! The store's recovery (redb's open, our record and snapshot checksums,
//! seq contiguity, redb's integrity check, panics of redb contained) and the
//! server's pool recovery (snapshot and command decoding, replay) read it.
//! No panic may escape; what recovery returns must be what was written (a
//! record it returns has the bytes appended at that seq, a snapshot the
//! bytes written at that seq), and it must work as a log: one more append
//! must come back, after the records recovered, when the pool is opened
//! again, and the pool rebuilt from it must equal the pool that made the
//! append; with a snapshot written too, the same holds from the snapshot.

#![no_main]

use std::collections::HashMap;
use std::path::Path;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use qscheduler_core::{AssignCall, Batch, Command, IdleBot, Pool, Time, snapshot};
use qscheduler_fuzz::inprocess::scratch_dir;
use qscheduler_fuzz::requests::{BASE_SECS, Req};
use qscheduler_server::limits::Limits;
use qscheduler_server::{pool::recover, translate};
use qscheduler_store::{Store, StoreOptions};

const POOL: &str = "p";
/// redb's page size.
const PAGE: usize = 4096;
/// A command as the server would log it, if the request translates.
fn command(req: &Req) -> Option<Command> {
    Some(match req {
        Req::Notify(r) => Command::Batch(Batch {
            notifies: vec![translate::notify_call(r, &Limits::default(), Time::MAX).ok()?],
            assigns: vec![],
        }),
        Req::Assign(r) => Command::Batch(Batch {
            notifies: vec![],
            assigns: vec![translate::assign_call(r, &Limits::default(), Time::MAX).ok()?],
        }),
        Req::CreateAccount(r) => translate::create_account_command(r, &Limits::default()).ok()?,
        Req::ModAccount(r) => translate::mod_account_command(r, &Limits::default()).ok()?,
        Req::ModPool(r) => translate::mod_pool_command(r, &Limits::default()).ok()?,
        Req::DeleteAccount(r) => translate::delete_account_command(r, &Limits::default()).ok()?,
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
enum SnapBody {
    /// The snapshot of a pool built from these requests.
    Pool(Vec<Req>),
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Step {
    /// One append of these records.
    Append(Vec<Payload>),
    /// A snapshot at the last seq.
    Snapshot(SnapBody),
}

#[derive(Arbitrary, Debug)]
enum Damage {
    Flip { at: u32, xor: u8 },
    Zero { at: u32, len: u16 },
    Truncate { at: u32 },
    /// Page `from` copied over page `to` (a misdirected write).
    CopyPage { from: u16, to: u16 },
}

#[derive(Arbitrary, Debug)]
struct Input {
    steps: Vec<Step>,
    keep_two: bool,
    /// The files as a crash leaves them rather than after a clean close.
    crashed: bool,
    damage: Vec<Damage>,
    /// Write a snapshot after the extra append.
    snapshot_after: bool,
}

fn damage(bytes: &mut Vec<u8>, damage: &[Damage]) {
    for d in damage {
        if bytes.is_empty() {
            return;
        }
        let len = bytes.len();
        match *d {
            Damage::Flip { at, xor } => bytes[at as usize % len] ^= xor,
            Damage::Zero { at, len: n } => {
                let start = at as usize % len;
                let end = (start + usize::from(n)).min(len);
                bytes[start..end].fill(0);
            }
            Damage::Truncate { at } => bytes.truncate(at as usize % len),
            Damage::CopyPage { from, to } => {
                let pages = len / PAGE;
                if pages > 1 {
                    let (f, t) = (usize::from(from) % pages, usize::from(to) % pages);
                    let page = bytes[f * PAGE..(f + 1) * PAGE].to_vec();
                    bytes[t * PAGE..(t + 1) * PAGE].copy_from_slice(&page);
                }
            }
        }
    }
}

/// Copies a directory tree (the data directory as a crash at this moment would leave it: every
/// acknowledged commit is in the files).
fn copy_tree(from: &Path, to: &Path) {
    must(std::fs::create_dir_all(to), "mkdir");
    for entry in must(std::fs::read_dir(from), "read dir") {
        let entry = must(entry, "dir entry");
        let target = to.join(entry.file_name());
        if must(entry.file_type(), "file type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            must(std::fs::copy(entry.path(), &target), "copy");
        }
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

fn must<T, E: std::fmt::Display>(r: Result<T, E>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e}"),
    }
}

/// redb can panic on a damaged file; the store contains those panics (`catch_unwind` around every
/// redb call). libfuzzer-sys aborts on any panic, contained or not, so panics raised inside redb
/// are let through to the store's containment here; any other panic still aborts. A redb panic
/// the store failed to contain would surface as a failed blocking task, which is checked below.
fn let_redb_panics_unwind() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let abort = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_redb = info
                .location()
                .is_some_and(|l| l.file().contains("/redb-"));
            if !in_redb {
                abort(info);
            }
        }));
    });
}

/// An error that says a panic escaped the store's containment.
fn escaped(e: &qscheduler_store::Error) -> bool {
    matches!(e, qscheduler_store::Error::Internal(m) if m.contains("blocking store task failed"))
}

/// What was written: every record by seq, every snapshot by seq.
#[derive(Default)]
struct Written {
    records: HashMap<u64, Vec<u8>>,
    snapshots: HashMap<u64, Vec<u8>>,
    last: u64,
}

/// Builds the pool through the store in `dir/data`, and returns the data directory to damage.
async fn build(dir: &Path, input: &Input) -> (std::path::PathBuf, Written) {
    let live = dir.join("live");
    let options = StoreOptions {
        keep_snapshots: if input.keep_two { 2 } else { 1 },
        ..StoreOptions::default()
    };
    let store = must(
        Store::open(&live.to_string_lossy(), options).await,
        "open the store",
    );
    let first = Command::Create {
        time: Time::from_secs(BASE_SECS),
    }
    .encode();
    must(store.create_pool(POOL, first.clone()).await, "create");
    let (handle, _) = must(store.open_pool(POOL).await, "open");
    let mut w = Written::default();
    w.records.insert(1, first);
    w.last = 1;
    for step in input.steps.iter().take(24) {
        match step {
            Step::Append(payloads) => {
                let records: Vec<Vec<u8>> =
                    payloads.iter().take(16).map(|p| p.bytes().to_vec()).collect();
                let st = must(handle.append(records.clone()).await, "append");
                for (i, r) in records.into_iter().enumerate() {
                    w.records.insert(w.last + 1 + i as u64, r);
                }
                w.last = st.last_seq.max(w.last);
            }
            Step::Snapshot(body) => {
                let image = match body {
                    SnapBody::Pool(reqs) => snapshot::encode(&pool_of(reqs)),
                    SnapBody::Raw(b) => b.clone(),
                };
                must(
                    handle.write_snapshot(w.last, image.clone()).await,
                    "snapshot",
                );
                w.snapshots.entry(w.last).or_insert(image);
            }
        }
    }
    if input.crashed {
        let image = dir.join("crashed");
        copy_tree(&live, &image);
        drop(handle);
        drop(store);
        (image, w)
    } else {
        must(handle.release().await, "release");
        drop(store);
        (live, w)
    }
}

fuzz_target!(|input: Input| {
    let_redb_panics_unwind();
    let scratch = scratch_dir();
    qscheduler_fuzz::runtime().block_on(async {
        let (data, written) = build(scratch.path(), &input).await;
        let file = data.join("pools").join(POOL).join("pool.redb");
        let mut bytes = must(std::fs::read(&file), "read the pool file");
        damage(&mut bytes, &input.damage);
        must(std::fs::write(&file, &bytes), "write the pool file");

        let location = data.to_string_lossy().into_owned();
        let store = must(
            Store::open(&location, StoreOptions::default()).await,
            "open the store",
        );
        let (handle, rec) = match store.open_pool(POOL).await {
            Ok(opened) => opened,
            Err(e) => {
                assert!(!escaped(&e), "a panic escaped the store: {e}");
                return;
            }
        };
        // What recovery returns was written, at that seq.
        for (seq, r) in &rec.records {
            assert!(
                written.records.get(seq) == Some(r),
                "recovered record {seq} was not written so"
            );
        }
        if let Some((seq, image)) = &rec.snapshot {
            assert!(
                written.snapshots.get(seq) == Some(image),
                "recovered snapshot {seq} was not written so"
            );
        }
        let Ok(mut pool) = recover(POOL, &rec) else {
            return;
        };
        // Recovery accepted the file: it must now work as a log.
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
