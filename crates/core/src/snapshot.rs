//! Snapshots: a versioned, canonical binary image of a [`Pool`].
//!
//! The same logical state always encodes to the same bytes: every list is
//! in id order, and labels, label sets and account ids are written once in
//! sorted tables and referred to by index (which also keeps a million-task
//! snapshot compact). Times are written relative to the scheduler clock, so
//! recent times take a few bytes.
//!
//! Decoding checks every index, count, time and value and rebuilds the pool
//! through the same code paths as live operation; a snapshot that decodes
//! is a valid pool, and bad bytes give a [`DecodeError`], never a panic.
//!
//! Layout (version 3): magic `QSCHEDP\0`, `u32` version, then the clock,
//! settings and the time of the last pass, the label table, the label-set
//! table, the account-id table, configured accounts (each with whether the
//! pool holds its balance, and the balance if so), queued requests, workers
//! (with their running tasks), pending assignments, task errors. Versions 1
//! and 2 still load.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::account::{AccountConfig, Balance, FREE_PRIORITY, PoolSettings};
use crate::codec::{DecodeError, Reader, Writer};
use crate::command::{read_config, write_config};
use crate::pool::Pool;
use crate::reconciler::{PendingAssignment, Reconciler};
use rustc_hash::{FxHashMap, FxHashSet};

use crate::scheduler::ids::{AccountIdx, LabelId, ReqIdx, SetId, VirtId, WorkerIdx};
use crate::scheduler::{Place, Scheduler};
use crate::time::Time;

const MAGIC: &[u8; 8] = b"QSCHEDP\0";
/// Version 2 added the time of the last pass (version 1 derived it from the
/// queued requests, which loses it when none is queued; see [`decode`]).
/// Version 3 added accounts without a balance (after a wipe, until the next
/// clock update); earlier versions hold a balance for every account.
const VERSION: u32 = 3;

/// Encodes a pool.
pub fn encode(pool: &Pool) -> Vec<u8> {
    encode_as(pool, VERSION)
}

/// Encodes a pool in format `version` (earlier versions for tests only:
/// they cannot say that an account has no balance, nor version 1 when
/// the last pass was).
fn encode_as(pool: &Pool, version: u32) -> Vec<u8> {
    let s = &pool.scheduler;
    let now = s.now();

    // What is written, in id order: queued requests, and workers (each
    // with its running request).
    let mut queued: Vec<ReqIdx> = s
        .requests
        .iter()
        .filter(|(_, r)| matches!(r.place, Place::Queued(_)))
        .map(|(i, _)| i)
        .collect();
    queued.sort_unstable_by(|&a, &b| s.requests[a].id.cmp(&s.requests[b].id));
    let mut workers: Vec<WorkerIdx> = s.workers.iter().map(|(i, _)| i).collect();
    workers.sort_unstable_by(|&a, &b| s.workers[a].id().cmp(s.workers[b].id()));
    let running = workers
        .iter()
        .filter_map(|&w| s.workers[w].running().map(|run| run.req));
    let all_requests: Vec<ReqIdx> = queued.iter().copied().chain(running).collect();

    // Tables, in canonical order (by content, never by internal index).
    let mut set_ids: Vec<SetId> = all_requests
        .iter()
        .flat_map(|&r| [s.requests[r].base, s.requests[r].prov])
        .collect();
    set_ids.sort_unstable();
    set_ids.dedup();
    set_ids.sort_by_cached_key(|&x| s.set_names(x));
    let set_pos: FxHashMap<SetId, usize> =
        set_ids.iter().enumerate().map(|(i, &x)| (x, i)).collect();
    let mut label_ids: Vec<LabelId> = set_ids
        .iter()
        .flat_map(|&x| s.labels[x].labels().iter().copied())
        .chain(
            workers
                .iter()
                .flat_map(|&w| s.workers[w].labels.iter().copied()),
        )
        .collect();
    label_ids.sort_unstable();
    label_ids.dedup();
    label_ids.sort_unstable_by(|&a, &b| s.labels[a].name().cmp(s.labels[b].name()));
    let label_pos: FxHashMap<LabelId, usize> =
        label_ids.iter().enumerate().map(|(i, &x)| (x, i)).collect();
    let mut account_ids: Vec<AccountIdx> = all_requests
        .iter()
        .map(|&r| s.requests[r].account)
        .collect();
    account_ids.sort_unstable();
    account_ids.dedup();
    account_ids.sort_unstable_by(|&a, &b| s.accounts[a].id().cmp(s.accounts[b].id()));
    let account_pos: FxHashMap<AccountIdx, usize> = account_ids
        .iter()
        .enumerate()
        .map(|(i, &x)| (x, i))
        .collect();

    let mut w = Writer::default();
    w.buf.reserve(64 + all_requests.len() * 48);
    w.bytes(MAGIC);
    w.u32_le(version);
    w.time(now);
    w.bool(s.settings().disable_preemption);
    w.zigzag(s.settings().bot_expiration_nanos);
    if version >= 2 {
        w.time_rel(s.last_pass, now);
    }
    w.len(label_ids.len());
    for &l in &label_ids {
        w.str(s.labels[l].name());
    }
    // A set's labels are written in name order, as its names are sorted.
    let name_order = |ids: &[LabelId]| {
        let mut v: Vec<usize> = ids.iter().map(|l| label_pos[l]).collect();
        v.sort_unstable();
        v
    };
    w.len(set_ids.len());
    for &x in &set_ids {
        let v = name_order(s.labels[x].labels());
        w.len(v.len());
        v.iter().for_each(|&i| w.len(i));
    }
    w.len(account_ids.len());
    for &a in &account_ids {
        w.str(s.accounts[a].id());
    }
    let configured: Vec<_> = s.accounts().collect();
    w.len(configured.len());
    for (id, cfg, bal) in configured {
        w.str(id);
        write_config(&mut w, cfg);
        let listed = s.balance(id).is_some();
        if version >= 3 {
            w.bool(listed);
        }
        if listed || version < 3 {
            bal.0.iter().for_each(|&v| w.f32(v));
        }
    }
    let write_request = |w: &mut Writer, r: ReqIdx| {
        let req = &s.requests[r];
        w.str(&req.id);
        w.len(account_pos[&req.account]);
        w.len(set_pos[&req.base]);
        w.len(set_pos[&req.prov]);
        w.time_rel(req.enqueue, now);
        w.time_rel(req.confirmed, now);
        w.time_rel(s.examined(r), now);
    };
    w.len(queued.len());
    for &r in &queued {
        write_request(&mut w, r);
    }
    w.len(workers.len());
    for &wi in &workers {
        let worker = &s.workers[wi];
        w.str(worker.id());
        let v = name_order(&worker.labels);
        w.len(v.len());
        v.iter().for_each(|&i| w.len(i));
        w.time_rel(worker.confirmed(), now);
        w.time_rel(worker.modified, now);
        match worker.running() {
            None => w.bool(false),
            Some(run) => {
                w.bool(true);
                write_request(&mut w, run.req);
                w.u8(run.priority);
                run.cost.0.iter().for_each(|&v| w.f32(v));
            }
        }
    }

    let rec = &pool.reconciler;
    w.len(rec.pending().len());
    for (bot, p) in rec.pending() {
        w.str(bot);
        w.time_rel(p.enqueue_time, now);
        w.str(&p.task_to_assign);
        match &p.task_to_abort {
            None => w.bool(false),
            Some(a) => {
                w.bool(true);
                w.str(a);
            }
        }
    }
    w.len(rec.task_errors().len());
    for (task, msg) in rec.task_errors() {
        w.str(task);
        w.str(msg);
    }
    w.buf
}

/// A request as read from a snapshot.
struct RequestRec {
    id: String,
    account: usize,
    base: usize,
    prov: usize,
    enqueue: Time,
    confirmed: Time,
    examined: Time,
}

/// Decodes a pool.
pub fn decode(bytes: &[u8]) -> Result<Pool, DecodeError> {
    let bad = |m: &str| DecodeError::Invalid(m.to_owned());
    let mut r = Reader::new(bytes);
    if r.bytes(MAGIC.len()).ok() != Some(&MAGIC[..]) {
        return Err(DecodeError::BadMagic("qscheduler pool snapshot"));
    }
    let version = r.u32_le()?;
    if !(1..=VERSION).contains(&version) {
        return Err(DecodeError::Version {
            what: "snapshot",
            version,
        });
    }
    let now = r.time()?;
    let settings = PoolSettings {
        disable_preemption: r.bool()?,
        bot_expiration_nanos: r.zigzag()?,
    };
    // The last pass decides how a request that returns to the queue with
    // an old examined time sorts against settled ones, so it is part of the
    // state even when nothing is queued.
    let last_pass = if version >= 2 {
        Some(r.time_rel(now)?)
    } else {
        None
    };

    let n = r.len(1)?;
    let mut labels: Vec<String> = Vec::with_capacity(n);
    for _ in 0..n {
        let l = r.str()?.to_owned();
        if labels.last().is_some_and(|prev| *prev >= l) {
            return Err(bad("label table not sorted"));
        }
        labels.push(l);
    }
    let n = r.len(1)?;
    let mut sets: Vec<Vec<usize>> = Vec::with_capacity(n);
    for _ in 0..n {
        let k = r.len(1)?;
        let mut set = Vec::with_capacity(k);
        for _ in 0..k {
            set.push(r.index(labels.len(), "label")?);
        }
        sets.push(set);
    }
    let n = r.len(1)?;
    let mut accounts: Vec<String> = Vec::with_capacity(n);
    for _ in 0..n {
        accounts.push(r.str()?.to_owned());
    }

    let mut configured: Vec<(String, AccountConfig, Option<Balance>)> = Vec::new();
    for _ in 0..r.len(1)? {
        let id = r.str()?.to_owned();
        if id.is_empty() || configured.last().is_some_and(|(prev, _, _)| *prev >= id) {
            return Err(bad("configured accounts not sorted or empty id"));
        }
        let cfg = read_config(&mut r)?;
        let listed = version < 3 || r.bool()?;
        let bal = if listed {
            let mut bal = Balance::ZERO;
            for v in bal.0.iter_mut() {
                *v = r.finite_f32("balance")?;
            }
            Some(bal)
        } else {
            None
        };
        configured.push((id, cfg, bal));
    }

    let read_request = |r: &mut Reader<'_>| -> Result<RequestRec, DecodeError> {
        let id = r.str()?.to_owned();
        if id.is_empty() {
            return Err(bad("empty request id"));
        }
        Ok(RequestRec {
            id,
            account: r.index(accounts.len(), "account")?,
            base: r.index(sets.len(), "label set")?,
            prov: r.index(sets.len(), "label set")?,
            enqueue: r.time_rel(now)?,
            confirmed: r.time_rel(now)?,
            examined: r.time_rel(now)?,
        })
    };
    let mut queued: Vec<RequestRec> = Vec::new();
    for _ in 0..r.len(8)? {
        queued.push(read_request(&mut r)?);
    }
    struct WorkerRec {
        id: String,
        labels: Vec<usize>,
        confirmed: Time,
        modified: Time,
        running: Option<(RequestRec, u8, Balance)>,
    }
    let mut workers: Vec<WorkerRec> = Vec::new();
    for _ in 0..r.len(4)? {
        let id = r.str()?.to_owned();
        if id.is_empty() {
            return Err(bad("empty worker id"));
        }
        let k = r.len(1)?;
        let mut wl = Vec::with_capacity(k);
        for _ in 0..k {
            wl.push(r.index(labels.len(), "label")?);
        }
        let confirmed = r.time_rel(now)?;
        let modified = r.time_rel(now)?;
        let running = if r.bool()? {
            let req = read_request(&mut r)?;
            let priority = r.u8()?;
            if priority > FREE_PRIORITY {
                return Err(bad("task priority above the free level"));
            }
            let mut cost = Balance::ZERO;
            for v in cost.0.iter_mut() {
                *v = r.finite_f32("cost")?;
            }
            Some((req, priority, cost))
        } else {
            None
        };
        workers.push(WorkerRec {
            id,
            labels: wl,
            confirmed,
            modified,
            running,
        });
    }

    let mut rec = Reconciler::default();
    for _ in 0..r.len(4)? {
        let bot: Arc<str> = Arc::from(r.str()?);
        let enqueue_time = r.time_rel(now)?;
        let task_to_assign: Arc<str> = Arc::from(r.str()?);
        let task_to_abort = if r.bool()? {
            Some(Arc::from(r.str()?))
        } else {
            None
        };
        if rec.pending.contains_key(&bot) {
            return Err(bad("duplicate pending assignment"));
        }
        rec.set_pending(
            bot,
            PendingAssignment {
                enqueue_time,
                task_to_assign,
                task_to_abort,
            },
        );
    }
    let mut errors = BTreeMap::new();
    for _ in 0..r.len(2)? {
        let task: Arc<str> = Arc::from(r.str()?);
        let msg = r.str()?.to_owned();
        errors.insert(task, msg);
    }
    rec.task_errors = errors;
    r.finish()?;

    // Cross-checks before building anything. Only membership is asked, so
    // a hash set's order cannot leak into the result.
    let running = workers.iter().filter(|w| w.running.is_some()).count();
    let mut ids: FxHashSet<&str> =
        FxHashSet::with_capacity_and_hasher(queued.len() + running, Default::default());
    for q in queued.iter().chain(
        workers
            .iter()
            .filter_map(|w| w.running.as_ref().map(|r| &r.0)),
    ) {
        if !ids.insert(&q.id) {
            return Err(bad("request id appears twice"));
        }
    }
    let mut worker_ids: FxHashSet<&str> =
        FxHashSet::with_capacity_and_hasher(workers.len(), Default::default());
    for w in &workers {
        if !worker_ids.insert(&w.id) {
            return Err(bad("worker id appears twice"));
        }
    }

    drop(ids);
    drop(worker_ids);

    let mut s = Scheduler::new(now);
    s.set_settings(settings);
    // Distinct (account, base, provisionable) triples bound the fanout
    // keys from above without over-reserving a pool of few shapes.
    let group_keys = {
        let mut keys: Vec<(usize, usize, usize)> = queued
            .iter()
            .chain(
                workers
                    .iter()
                    .filter_map(|w| w.running.as_ref().map(|r| &r.0)),
            )
            .map(|q| (q.account, q.base, q.prov))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        keys.len()
    };
    s.reserve_for_load(queued.len() + running, group_keys, sets.len());
    for (id, cfg, bal) in configured {
        let listed = bal.is_some();
        s.add_account(&id, cfg, bal);
        if !listed {
            s.forget_balance(&id);
        }
    }
    // The tables hold one reference to each label and set while requests
    // and workers are built from them, so that nothing is interned twice.
    let label_ids: Vec<LabelId> = labels.iter().map(|l| s.labels.intern_label(l)).collect();
    let interned = |s: &mut Scheduler, idx: &[usize]| {
        let mut ids: Vec<LabelId> = idx.iter().map(|&i| label_ids[i]).collect();
        ids.sort_unstable();
        ids.dedup();
        for &l in &ids {
            s.labels.retain_label(l);
        }
        ids
    };
    let set_ids: Vec<SetId> = sets
        .iter()
        .map(|set| {
            let ids = interned(&mut s, set);
            s.labels.intern_set_ids(ids)
        })
        .collect();
    let account_ids: Vec<AccountIdx> = accounts.iter().map(|a| s.account_named(a)).collect();
    // A placement's settled requests are those examined at its latest
    // examined time; the last pass is the latest of all.
    let mut stamps: FxHashMap<AccountIdx, Time> = FxHashMap::default();
    for q in &queued {
        let t = stamps.entry(account_ids[q.account]).or_insert(Time::EPOCH);
        *t = (*t).max(q.examined);
    }
    let latest_examined = stamps.values().copied().max().unwrap_or(Time::EPOCH);
    s.last_pass = match last_pass {
        Some(t) if t < latest_examined => {
            return Err(DecodeError::Invalid(
                "a queued request examined after the last pass".into(),
            ));
        }
        Some(t) => t,
        None => latest_examined,
    };
    for (&a, &t) in &stamps {
        s.index.load_stamp(VirtId::new(a, false), t);
    }
    let create = |s: &mut Scheduler, q: &RequestRec| {
        let (base, prov) = (set_ids[q.base], set_ids[q.prov]);
        s.labels.retain_set(base);
        s.labels.retain_set(prov);
        s.create_request_interned(
            &q.id,
            account_ids[q.account],
            base,
            prov,
            q.enqueue,
            q.confirmed,
            q.examined,
        )
    };
    // No worker exists yet, so the anchor tables of the sets that become
    // active can be sorted once at the end rather than kept sorted.
    s.start_bulk_anchoring();
    let created: Vec<ReqIdx> = queued.iter().map(|q| create(&mut s, q)).collect();
    s.finish_bulk_anchoring();
    s.enqueue_many(&created);
    for w in &workers {
        let ids = interned(&mut s, &w.labels);
        let widx = s.create_worker_interned(&w.id, ids, w.confirmed, w.modified);
        if let Some((q, priority, cost)) = &w.running {
            let ridx = create(&mut s, q);
            s.start_task(ridx, widx, *priority, *cost);
        }
    }
    for set in set_ids {
        s.labels.release_set(set);
    }
    for l in label_ids {
        s.labels.release_label(l);
    }
    for a in account_ids {
        s.maybe_free_account(a);
    }
    Ok(Pool {
        scheduler: s,
        reconciler: rec,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{AssignCall, Batch, Command, Notification, NotifyCall, NotifyKind};
    use crate::reconciler::IdleBot;

    fn secs(s: i64) -> Time {
        Time::from_secs(1_700_000_000 + s)
    }

    /// A pool with accounts, queued and running tasks, idle bots, a pending
    /// assignment and a task error.
    pub(crate) fn sample_pool() -> Pool {
        let mut pool = Pool::new(secs(0));
        let cfg = AccountConfig {
            charge_rate: [1.0, 0.5, 0.0, 0.0, 0.0],
            max_charge_seconds: 100.0,
            max_fanout: 2,
            per_label_task_limits: [("zone".to_string(), 3)].into(),
            ..Default::default()
        };
        pool.apply(&Command::CreateAccount {
            account_id: "a".into(),
            config: cfg,
        })
        .unwrap();
        let waiting = |id: &str, acct: &str, base: &[&str], prov: &[&str], t: i64| Notification {
            time: secs(t),
            task_id: id.into(),
            kind: NotifyKind::Waiting {
                account: acct.into(),
                base_labels: base.iter().map(|s| s.to_string()).collect(),
                provisionable_labels: prov.iter().map(|s| s.to_string()).collect(),
                enqueue_time: secs(t - 5),
                tags: vec![],
            },
        };
        let mut notes = vec![
            waiting("t1", "a", &["os:linux"], &["cache:1"], 1),
            waiting("t2", "a", &["os:linux"], &[], 1),
            waiting("t3", "", &["os:mac"], &[], 2),
            waiting("t4", "b", &["os:linux", "gpu:t4"], &[], 2),
        ];
        notes.push(Notification {
            time: secs(3),
            task_id: "bad".into(),
            kind: NotifyKind::Error {
                message: "Invalid slice count 3".into(),
            },
        });
        let bots = |ids: &[(&str, &[&str])]| {
            ids.iter()
                .map(|(id, l)| IdleBot {
                    id: id.to_string(),
                    labels: l.iter().map(|s| s.to_string()).collect(),
                })
                .collect()
        };
        pool.apply(&Command::Batch(Batch {
            notifies: vec![NotifyCall {
                notifications: notes,
                is_callback: false,
            }],
            assigns: vec![AssignCall {
                time: secs(10),
                bots: bots(&[
                    ("b1", &["os:linux", "cache:1", "zone:1"]),
                    ("b2", &["os:win"]),
                ]),
            }],
        }))
        .unwrap();
        pool.apply(&Command::Batch(Batch {
            notifies: vec![],
            assigns: vec![AssignCall {
                time: secs(20),
                bots: bots(&[("b3", &["os:linux"]), ("b4", &["os:mac"])]),
            }],
        }))
        .unwrap();
        pool
    }

    #[test]
    fn round_trip_is_exact_and_canonical() {
        let pool = sample_pool();
        assert!(pool.scheduler().running_len() > 0);
        assert!(pool.scheduler().queued_len() > 0);
        let bytes = encode(&pool);
        let back = decode(&bytes).unwrap();
        assert_eq!(back.scheduler().dump(), pool.scheduler().dump());
        assert_eq!(back.reconciler(), pool.reconciler());
        assert_eq!(encode(&back), bytes, "re-encoding changed the bytes");
    }

    /// Version 1 had no last-pass field: it is derived from the queued
    /// requests, which is exact whenever one was examined at the last pass.
    /// Version 2 had a balance for every account.
    #[test]
    fn earlier_versions_still_load() {
        let pool = sample_pool();
        let now = encode(&pool);
        for version in [1, 2] {
            let old = encode_as(&pool, version);
            assert_eq!(&old[8..12], &version.to_le_bytes());
            let decoded = decode(&old).expect("an earlier version decodes");
            assert_eq!(encode(&decoded), now, "version {version}");
        }
        let mut next = now.clone();
        next[8..12].copy_from_slice(&(VERSION + 1).to_le_bytes());
        assert!(decode(&next).is_err());
    }

    /// After a wipe the accounts have no balance until the clock moves, and
    /// a snapshot says so.
    #[test]
    fn wiped_balances_survive_a_snapshot() {
        let mut pool = sample_pool();
        let t = pool.scheduler().now();
        pool.apply(&crate::command::Command::Wipe { time: t })
            .unwrap();
        let ids: Vec<String> = pool
            .scheduler()
            .accounts()
            .map(|(id, _, _)| id.to_owned())
            .collect();
        assert!(!ids.is_empty());
        assert!(ids.iter().all(|id| pool.scheduler().balance(id).is_none()));
        let back = decode(&encode(&pool)).unwrap();
        assert!(ids.iter().all(|id| back.scheduler().balance(id).is_none()));
        assert_eq!(encode(&back), encode(&pool));
    }

    #[test]
    fn bad_bytes_are_errors() {
        let bytes = encode(&sample_pool());
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n]).is_err(), "prefix of {n} bytes accepted");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(decode(&extra).is_err());
        assert!(matches!(decode(b"nope"), Err(DecodeError::BadMagic(_))));
        for i in 0..bytes.len() {
            for bit in [0, 3, 7] {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                let _ = decode(&b);
            }
        }
    }

    /// What the `snapshot_decode` fuzz target checks, kept in the test
    /// suite: whatever decodes is a usable pool with a canonical encoding.
    fn decoded_is_usable(bytes: &[u8]) -> Result<(), proptest::test_runner::TestCaseError> {
        let Ok(mut pool) = decode(bytes) else {
            return Ok(());
        };
        let again = encode(&pool);
        let back = decode(&again).map_err(|e| {
            proptest::test_runner::TestCaseError::fail(format!("re-encoding does not decode: {e}"))
        })?;
        proptest::prop_assert_eq!(encode(&back), again);
        let time = pool.scheduler().now().add_nanos(700_000_000_000);
        let cmd = Command::Batch(Batch {
            notifies: vec![],
            assigns: vec![AssignCall {
                time,
                bots: vec![IdleBot {
                    id: "b9".into(),
                    labels: vec!["os:linux".into()],
                }],
            }],
        });
        proptest::prop_assert!(pool.apply(&cmd).is_ok());
        Ok(())
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(256))]

        #[test]
        fn arbitrary_bytes_never_panic(
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            prefix in 0usize..64,
        ) {
            // A valid start (magic, version, header fields) lets arbitrary
            // bytes reach the deeper parts of the decoder.
            let valid = encode(&sample_pool());
            let mut bytes = valid[..prefix.min(valid.len())].to_vec();
            bytes.extend_from_slice(&tail);
            decoded_is_usable(&bytes)?;
        }

        #[test]
        fn damaged_snapshots_never_panic(
            edits in proptest::collection::vec(
                (proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()),
                1..4,
            ),
            cut in proptest::option::of(proptest::prelude::any::<usize>()),
        ) {
            let mut bytes = encode(&sample_pool());
            for (at, value) in edits {
                let i = at % bytes.len();
                bytes[i] = value;
            }
            if let Some(n) = cut {
                bytes.truncate(n % (bytes.len() + 1));
            }
            decoded_is_usable(&bytes)?;
        }
    }
}
