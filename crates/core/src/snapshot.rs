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
//! Layout (version 1): magic `QSCHEDP\0`, `u32` version, then the clock and
//! settings, the label table, the label-set table, the account-id table,
//! configured accounts with balances, queued requests, workers (with their
//! running tasks), pending assignments, task errors.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::account::{AccountConfig, Balance, FREE_PRIORITY, PoolSettings};
use crate::codec::{DecodeError, Reader, Writer};
use crate::command::{read_config, write_config};
use crate::pool::Pool;
use crate::reconciler::{PendingAssignment, Reconciler};
use crate::scheduler::{QueuedView, Scheduler};
use crate::time::Time;

const MAGIC: &[u8; 8] = b"QSCHEDP\0";
const VERSION: u32 = 1;

/// Encodes a pool.
pub fn encode(pool: &Pool) -> Vec<u8> {
    let s = &pool.scheduler;
    let now = s.now();
    let queued = s.queued_requests();
    let workers = s.worker_views();

    // Tables of labels, label sets and account ids, sorted.
    let mut label_set: BTreeSet<&str> = BTreeSet::new();
    let mut sets: BTreeSet<Vec<&str>> = BTreeSet::new();
    let mut account_ids: BTreeSet<&str> = BTreeSet::new();
    let all_requests = queued.iter().chain(
        workers
            .iter()
            .filter_map(|w| w.running.as_ref().map(|r| &r.request)),
    );
    for q in all_requests {
        for set in [q.base_labels, q.provisionable_labels] {
            let v: Vec<&str> = set.iter().map(|l| &**l).collect();
            label_set.extend(v.iter().copied());
            sets.insert(v);
        }
        account_ids.insert(q.account);
    }
    for w in &workers {
        label_set.extend(w.labels.iter().map(|l| &**l));
    }
    let labels: Vec<&str> = label_set.into_iter().collect();
    let label_index = |l: &str| labels.binary_search(&l).unwrap_or(0);
    let sets: Vec<Vec<&str>> = sets.into_iter().collect();
    let accounts: Vec<&str> = account_ids.into_iter().collect();

    let mut w = Writer::default();
    w.bytes(MAGIC);
    w.u32_le(VERSION);
    w.time(now);
    w.bool(s.settings().disable_preemption);
    w.zigzag(s.settings().bot_expiration_nanos);
    w.len(labels.len());
    for l in &labels {
        w.str(l);
    }
    w.len(sets.len());
    for set in &sets {
        w.len(set.len());
        for l in set {
            w.len(label_index(l));
        }
    }
    w.len(accounts.len());
    for a in &accounts {
        w.str(a);
    }
    let configured: Vec<_> = s.accounts().collect();
    w.len(configured.len());
    for (id, cfg, bal) in configured {
        w.str(id);
        write_config(&mut w, cfg);
        bal.0.iter().for_each(|&v| w.f32(v));
    }

    let set_index = |l: &crate::event::Labels| {
        let v: Vec<&str> = l.iter().map(|l| &**l).collect();
        sets.binary_search(&v).unwrap_or(0)
    };
    let account_index = |a: &str| accounts.binary_search(&a).unwrap_or(0);
    let write_request = |w: &mut Writer, q: &QueuedView<'_>| {
        w.str(q.id);
        w.len(account_index(q.account));
        w.len(set_index(q.base_labels));
        w.len(set_index(q.provisionable_labels));
        w.time_rel(q.enqueue_time, now);
        w.time_rel(q.confirmed_time, now);
        w.time_rel(q.examined_time, now);
    };
    w.len(queued.len());
    for q in &queued {
        write_request(&mut w, q);
    }
    w.len(workers.len());
    for wv in &workers {
        w.str(wv.id);
        w.len(wv.labels.len());
        for l in wv.labels.iter() {
            w.len(label_index(l));
        }
        w.time_rel(wv.confirmed_time, now);
        w.time_rel(wv.modified_time, now);
        match &wv.running {
            None => w.bool(false),
            Some(r) => {
                w.bool(true);
                write_request(&mut w, &r.request);
                w.u8(r.priority);
                r.cost.0.iter().for_each(|&v| w.f32(v));
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
    if version != VERSION {
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
    let mut sets: Vec<Vec<String>> = Vec::with_capacity(n);
    for _ in 0..n {
        let k = r.len(1)?;
        let mut set = Vec::with_capacity(k);
        for _ in 0..k {
            let i = r.index(labels.len(), "label")?;
            set.push(labels[i].clone());
        }
        sets.push(set);
    }
    let n = r.len(1)?;
    let mut accounts: Vec<String> = Vec::with_capacity(n);
    for _ in 0..n {
        accounts.push(r.str()?.to_owned());
    }

    let mut configured: Vec<(String, AccountConfig, Balance)> = Vec::new();
    for _ in 0..r.len(1)? {
        let id = r.str()?.to_owned();
        if id.is_empty() || configured.last().is_some_and(|(prev, _, _)| *prev >= id) {
            return Err(bad("configured accounts not sorted or empty id"));
        }
        let cfg = read_config(&mut r)?;
        let mut bal = Balance::ZERO;
        for v in bal.0.iter_mut() {
            *v = r.finite_f32("balance")?;
        }
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
        labels: Vec<String>,
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
            let i = r.index(labels.len(), "label")?;
            wl.push(labels[i].clone());
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

    // Cross-checks before building anything.
    let mut ids: BTreeSet<&str> = BTreeSet::new();
    for q in queued.iter().chain(
        workers
            .iter()
            .filter_map(|w| w.running.as_ref().map(|r| &r.0)),
    ) {
        if !ids.insert(&q.id) {
            return Err(bad("request id appears twice"));
        }
    }
    let mut worker_ids: BTreeSet<&str> = BTreeSet::new();
    for w in &workers {
        if !worker_ids.insert(&w.id) {
            return Err(bad("worker id appears twice"));
        }
    }

    let mut s = Scheduler::new(now);
    s.set_settings(settings);
    for (id, cfg, bal) in configured {
        s.add_account(&id, cfg, Some(bal));
    }
    // Settled requests are those examined at the latest examined time.
    s.last_pass = queued
        .iter()
        .map(|q| q.examined)
        .max()
        .unwrap_or(Time::EPOCH);
    let create = |s: &mut Scheduler, q: &RequestRec| {
        s.create_request(
            &q.id,
            &accounts[q.account],
            &sets[q.base],
            &sets[q.prov],
            q.enqueue,
            q.confirmed,
            q.examined,
        )
    };
    for q in &queued {
        let idx = create(&mut s, q);
        s.enqueue(idx);
    }
    for w in &workers {
        let widx = s.create_worker(&w.id, &w.labels, w.confirmed, w.modified);
        if let Some((q, priority, cost)) = &w.running {
            let ridx = create(&mut s, q);
            s.start_task(ridx, widx, *priority, *cost);
        }
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
}
