//! `workload extract`: a workload, and the outcome that was recorded, from
//! a server's task event log.
//!
//! The event log (`metrics.TaskEvent` as JSON lines, in rotated files or a
//! PostgreSQL table) records every enqueue, assignment, preemption,
//! reprioritisation and completion with the task's labels and account and
//! the bot's dimensions. From one pool's events in a window this module
//! derives:
//!
//! * **arrivals**: a task's first `SWARMING_ENQUEUED` (time, account,
//!   labels, tags);
//! * **run durations**: the time from each assignment to the task's
//!   completion or preemption, summed over its runs (so a preempted task
//!   needs the rest of its time when it runs again);
//! * **cancellations**: a task that went away while waiting
//!   (`IDLE_TASK_ABSENT`);
//! * **the fleet**: every bot an event names, with its latest dimensions;
//! * **starting balances**: each account's balance at the window's start
//!   (its last event before it, or else its first in it);
//! * **the recorded outcome**: the same [`RunReport`] a simulation
//!   produces, measured from the same events by the same [`Ledger`].
//!
//! What the log cannot tell is estimated and reported in the workload's
//! notes: durations of tasks still running at the end (what they ran so
//! far, a lower bound) or that never ran (the median of their account's
//! finished tasks); tasks already queued or running when the window starts
//! (treated as arriving at its start); bots that are never named because
//! they were idle all along (missing: add them by hand), bots never seen
//! idle, and bot availability (every bot is taken as present for the
//! whole window, since idle bots leave no events).
//!
//! Events are taken in log order (commit order), not sorted by time:
//! notification times and pass times within a batch may interleave, and
//! the log order is the order the scheduler saw.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use qscheduler_core::{NUM_PRIORITIES, Time};
use rustc_hash::FxHashMap;
use serde::Deserialize;

use crate::clock::parse_rfc3339;
use crate::ledger::{Kind, Ledger, LedgerEvent};
use crate::report::bucket_for;
use crate::workload::{Bot, Interner, Task, Workload};

/// Most bytes of one event line (the server's events are far smaller).
pub const MAX_EVENT_BYTES: usize = 1 << 20;

/// Why events could not be turned into a workload.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// Reading failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// An event is malformed.
    #[error("{source_name}:{line}: {message}")]
    Event {
        /// File (or table) it came from.
        source_name: String,
        /// Line (or row) number.
        line: u64,
        /// What is wrong.
        message: String,
    },
    /// Nothing usable, or an ambiguous choice.
    #[error("{0}")]
    Invalid(String),
}

#[derive(Deserialize)]
struct RawEvent {
    event_type: String,
    #[serde(default)]
    scheduler_id: String,
    #[serde(default)]
    task_id: String,
    time: Option<String>,
    #[serde(default)]
    base_labels: Vec<String>,
    #[serde(default)]
    provisionable_labels: Vec<String>,
    #[serde(default)]
    account_id: String,
    #[serde(default)]
    account_valid: bool,
    #[serde(default)]
    account_balance: Vec<serde_json::Value>,
    #[serde(default)]
    bot_id: String,
    #[serde(default)]
    bot_dimensions: Vec<String>,
    enqueued_details: Option<EnqueuedDetails>,
    assigned_details: Option<AssignedDetails>,
    preempted_details: Option<PreemptedDetails>,
    reprioritized_details: Option<ReprioritizedDetails>,
    completed_details: Option<CompletedDetails>,
}

#[derive(Deserialize)]
struct EnqueuedDetails {
    #[serde(default)]
    tags: Vec<String>,
}

#[derive(Deserialize)]
struct AssignedDetails {
    #[serde(default)]
    priority: i32,
    #[serde(default)]
    preempting: bool,
}

#[derive(Deserialize)]
struct PreemptedDetails {
    #[serde(default)]
    preempting_account_id: String,
    #[serde(default)]
    priority: i32,
    #[serde(default)]
    preempting_priority: i32,
}

#[derive(Deserialize)]
struct ReprioritizedDetails {
    #[serde(default)]
    old_priority: i32,
    #[serde(default)]
    new_priority: i32,
}

#[derive(Deserialize)]
struct CompletedDetails {
    #[serde(default)]
    reason: String,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Ev {
    Enqueued {
        labels: u32,
        prov: u32,
        tags: u32,
    },
    Assigned {
        level: u8,
        idle_bot: bool,
    },
    Preempted {
        level: u8,
        by_account: u32,
        by_level: u8,
    },
    Reprioritized {
        old: u8,
        new: u8,
    },
    /// Gone; `waiting` for IDLE_TASK_ABSENT.
    Completed {
        waiting: bool,
        polled: bool,
    },
    Unassigned,
}

#[derive(Clone, Copy, Debug)]
struct Event {
    t: i64,
    task: u32,
    account: u32,
    bot: u32,
    balance: Option<[f32; NUM_PRIORITIES]>,
    ev: Ev,
}

const NONE: u32 = u32::MAX;

/// One pool's events, compact.
#[derive(Default)]
struct PoolEvents {
    events: Vec<Event>,
}

/// Reads events and derives a workload; see the module docs.
pub struct Extractor {
    pools: BTreeMap<String, PoolEvents>,
    tasks: Vec<String>,
    task_ids: FxHashMap<String, u32>,
    accounts: Vec<String>,
    account_ids: FxHashMap<String, u32>,
    bots: Vec<(String, u32)>,
    bot_ids: FxHashMap<String, u32>,
    sets: (Workload, Interner),
    lines: u64,
    skipped: u64,
}

impl Default for Extractor {
    fn default() -> Self {
        Extractor::new()
    }
}

fn intern(map: &mut FxHashMap<String, u32>, list: &mut Vec<String>, s: &str) -> u32 {
    if let Some(&i) = map.get(s) {
        return i;
    }
    let i = list.len() as u32;
    list.push(s.to_owned());
    map.insert(s.to_owned(), i);
    i
}

fn level(p: i32) -> u8 {
    p.clamp(0, NUM_PRIORITIES as i32) as u8
}

/// What [`Extractor::finish`] needs to know.
#[derive(Clone, Debug, Default)]
pub struct ExtractOptions {
    /// The pool (required when the log holds several).
    pub pool: Option<String>,
    /// Start of the window (default: the pool's first event).
    pub from: Option<Time>,
    /// End of the window (default: the pool's last event).
    pub to: Option<Time>,
}

/// The result: a workload with its recorded outcome, and what had to be
/// estimated (also in the workload's notes).
pub struct Extracted {
    /// The workload.
    pub workload: Workload,
    /// Events read for the pool in the window.
    pub events: u64,
    /// What was estimated, for people.
    pub estimates: Vec<String>,
}

impl Extractor {
    /// An empty extractor.
    pub fn new() -> Extractor {
        Extractor {
            pools: BTreeMap::new(),
            tasks: Vec::new(),
            task_ids: FxHashMap::default(),
            accounts: Vec::new(),
            account_ids: FxHashMap::default(),
            bots: Vec::new(),
            bot_ids: FxHashMap::default(),
            sets: Workload::new("", Time::EPOCH, 1, ""),
            lines: 0,
            skipped: 0,
        }
    }

    /// Adds one JSON line of the event log. Blank lines are skipped;
    /// events of unknown types are counted and skipped (a newer server may
    /// log more kinds).
    pub fn add_line(&mut self, source: &str, line_no: u64, text: &str) -> Result<(), ExtractError> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(());
        }
        let err = |m: String| ExtractError::Event {
            source_name: source.to_owned(),
            line: line_no,
            message: m,
        };
        if text.len() > MAX_EVENT_BYTES {
            return Err(err(format!("longer than {MAX_EVENT_BYTES} bytes")));
        }
        let raw: RawEvent =
            serde_json::from_str(text).map_err(|e| err(format!("not a task event: {e}")))?;
        self.lines += 1;
        let time = raw
            .time
            .as_deref()
            .ok_or_else(|| err("time: missing".into()))
            .and_then(|t| parse_rfc3339(t).map_err(|e| err(format!("time: {e}"))))?;
        if raw.task_id.is_empty() {
            return Err(err("task_id: missing".into()));
        }
        let ev = match raw.event_type.as_str() {
            "SWARMING_ENQUEUED" => {
                let (w, i) = &mut self.sets;
                let tags = raw.enqueued_details.map(|d| d.tags).unwrap_or_default();
                Ev::Enqueued {
                    labels: w.intern_set(i, raw.base_labels),
                    prov: w.intern_set(i, raw.provisionable_labels),
                    tags: w.intern_set(i, tags),
                }
            }
            "QSCHEDULER_ASSIGNED" => {
                let d = raw
                    .assigned_details
                    .ok_or_else(|| err("assigned_details: missing".into()))?;
                Ev::Assigned {
                    level: level(d.priority),
                    idle_bot: !d.preempting,
                }
            }
            "QSCHEDULER_PREEMPTED" => {
                let d = raw
                    .preempted_details
                    .ok_or_else(|| err("preempted_details: missing".into()))?;
                Ev::Preempted {
                    level: level(d.priority),
                    by_account: intern(
                        &mut self.account_ids,
                        &mut self.accounts,
                        &d.preempting_account_id,
                    ),
                    by_level: level(d.preempting_priority),
                }
            }
            "QSCHEDULER_REPRIORITIZED" => {
                let d = raw
                    .reprioritized_details
                    .ok_or_else(|| err("reprioritized_details: missing".into()))?;
                Ev::Reprioritized {
                    old: level(d.old_priority),
                    new: level(d.new_priority),
                }
            }
            "SWARMING_COMPLETED" => {
                let reason = raw.completed_details.map(|d| d.reason).unwrap_or_default();
                Ev::Completed {
                    waiting: reason == "IDLE_TASK_ABSENT",
                    polled: reason == "BOT_IDLE",
                }
            }
            "QSCHEDULER_UNASSIGNED" => Ev::Unassigned,
            _ => {
                self.skipped += 1;
                return Ok(());
            }
        };
        let task = intern(&mut self.task_ids, &mut self.tasks, &raw.task_id);
        let account = intern(&mut self.account_ids, &mut self.accounts, &raw.account_id);
        let bot = if raw.bot_id.is_empty() {
            NONE
        } else {
            let b = match self.bot_ids.get(&raw.bot_id) {
                Some(&b) => b,
                None => {
                    let b = self.bots.len() as u32;
                    self.bots.push((raw.bot_id.clone(), 0));
                    self.bot_ids.insert(raw.bot_id.clone(), b);
                    b
                }
            };
            if !raw.bot_dimensions.is_empty() {
                let (w, i) = &mut self.sets;
                self.bots[b as usize].1 = w.intern_set(i, raw.bot_dimensions);
            }
            b
        };
        let balance = if raw.account_valid && !raw.account_balance.is_empty() {
            let mut b = [0.0f32; NUM_PRIORITIES];
            for (k, v) in raw.account_balance.iter().take(NUM_PRIORITIES).enumerate() {
                b[k] = v.as_f64().unwrap_or(0.0) as f32;
            }
            Some(b)
        } else {
            None
        };
        self.pools
            .entry(raw.scheduler_id)
            .or_default()
            .events
            .push(Event {
                t: time.as_nanos(),
                task,
                account,
                bot,
                balance,
                ev,
            });
        Ok(())
    }

    /// Adds every `task-events-*.jsonl` file of `dir`, oldest first.
    pub fn add_dir(&mut self, dir: &Path) -> Result<usize, ExtractError> {
        let files = event_files(dir)?;
        if files.is_empty() {
            return Err(ExtractError::Invalid(format!(
                "{} has no event log files (task-events-*.jsonl)",
                dir.display()
            )));
        }
        for path in &files {
            self.add_file(path)?;
        }
        Ok(files.len())
    }

    /// Adds one JSON lines file.
    pub fn add_file(&mut self, path: &Path) -> Result<(), ExtractError> {
        use std::io::BufRead;
        let name = path.display().to_string();
        let file = std::fs::File::open(path)
            .map_err(|e| ExtractError::Invalid(format!("cannot open {name}: {e}")))?;
        let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
        let mut buf = Vec::new();
        let mut n = 0u64;
        loop {
            buf.clear();
            let mut limited = std::io::Read::take(&mut reader, MAX_EVENT_BYTES as u64 + 1);
            if limited.read_until(b'\n', &mut buf)? == 0 {
                break;
            }
            n += 1;
            if !buf.ends_with(b"\n") && buf.len() > MAX_EVENT_BYTES {
                return Err(ExtractError::Event {
                    source_name: name,
                    line: n,
                    message: format!("longer than {MAX_EVENT_BYTES} bytes"),
                });
            }
            let Ok(text) = std::str::from_utf8(&buf) else {
                return Err(ExtractError::Event {
                    source_name: name,
                    line: n,
                    message: "not UTF-8".into(),
                });
            };
            // The file being written may end in a partial line; a line
            // without its newline at the very end is not an error.
            if !text.ends_with('\n') && serde_json::from_str::<serde_json::Value>(text).is_err() {
                break;
            }
            self.add_line(&name, n, text)?;
        }
        Ok(())
    }

    /// The pools seen, with their event counts.
    pub fn pools(&self) -> Vec<(String, usize)> {
        self.pools
            .iter()
            .map(|(k, v)| (k.clone(), v.events.len()))
            .collect()
    }

    /// Derives the workload of one pool in the window.
    pub fn finish(mut self, o: &ExtractOptions) -> Result<Extracted, ExtractError> {
        let pool = match &o.pool {
            Some(p) => p.clone(),
            None => match self.pools.len() {
                0 => return Err(ExtractError::Invalid("the event log has no events".into())),
                1 => self.pools.keys().next().cloned().unwrap_or_default(),
                _ => {
                    return Err(ExtractError::Invalid(format!(
                        "the event log holds several pools ({}); choose one with --pool",
                        self.pools
                            .iter()
                            .map(|(k, v)| format!("{k:?}: {} events", v.events.len()))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            },
        };
        let Some(events) = self.pools.remove(&pool).map(|p| p.events) else {
            return Err(ExtractError::Invalid(format!(
                "the event log has no events of pool {pool:?} (it has {})",
                self.pools
                    .keys()
                    .map(|k| format!("{k:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        let first = events.iter().map(|e| e.t).min().unwrap_or(0);
        let last = events.iter().map(|e| e.t).max().unwrap_or(0);
        let from = o.from.map_or(first, Time::as_nanos);
        let to = o.to.map_or(last, Time::as_nanos);
        if to <= from {
            return Err(ExtractError::Invalid(format!(
                "the window is empty: it ends ({}) before it starts ({})",
                crate::clock::format_rfc3339(Time::from_nanos(to)),
                crate::clock::format_rfc3339(Time::from_nanos(from))
            )));
        }
        // Whole milliseconds, rounded up so the last event is inside.
        let duration = (to - from + 999_999) / 1_000_000;
        let ms = |t: i64| ((t - from) / 1_000_000).clamp(0, duration);

        let (sets, _) = std::mem::replace(&mut self.sets, Workload::new("", Time::EPOCH, 1, ""));
        let (mut w, mut interner) =
            Workload::new(&pool, Time::from_nanos(from), duration, "extract");
        // Re-intern the sets the events use into the workload.
        let mut set_map: FxHashMap<u32, u32> = FxHashMap::default();
        let mut remap = |w: &mut Workload, i: &mut Interner, s: u32| -> u32 {
            *set_map
                .entry(s)
                .or_insert_with(|| w.intern_set(i, sets.sets[s as usize].clone()))
        };

        #[derive(Clone, Copy, Default)]
        struct T {
            seen: bool,
            enqueued: bool,
            arrival: i64,
            account: u32,
            labels: u32,
            prov: u32,
            tags: u32,
            before: bool,
            running_since: Option<i64>,
            run_level: u8,
            ran: i64,
            finished: bool,
            cancel: Option<i64>,
            waiting: bool,
        }
        let mut tasks: Vec<T> = vec![T::default(); self.tasks.len()];
        let mut start_balance: BTreeMap<u32, (bool, [f32; NUM_PRIORITIES])> = BTreeMap::new();
        let mut bots_in_window: Vec<bool> = vec![false; self.bots.len()];
        let mut bot_idle_seen: Vec<bool> = vec![false; self.bots.len()];
        let mut in_window: Vec<Event> = Vec::new();
        for e in &events {
            let t = &mut tasks[e.task as usize];
            if let Some(b) = e.balance {
                let entry = start_balance.entry(e.account);
                if e.t <= from {
                    entry.insert_entry((true, b));
                } else {
                    entry.or_insert((false, b));
                }
            }
            if e.t < from {
                // Before the window: only the state at its start matters.
                if let Ev::Enqueued { labels, prov, tags } = e.ev {
                    t.labels = labels;
                    t.prov = prov;
                    t.tags = tags;
                    t.account = e.account;
                    t.seen = true;
                    t.waiting = true;
                }
                match e.ev {
                    Ev::Assigned { level, .. } => {
                        t.running_since = Some(e.t);
                        t.run_level = level;
                        t.waiting = false;
                    }
                    Ev::Reprioritized { new, .. } => t.run_level = new,
                    Ev::Preempted { .. } | Ev::Completed { .. } => {
                        t.running_since = None;
                        t.waiting = false;
                    }
                    Ev::Unassigned => {
                        t.running_since = None;
                        t.waiting = true;
                    }
                    Ev::Enqueued { .. } => {}
                }
                continue;
            }
            if e.t > to {
                continue;
            }
            in_window.push(*e);
        }
        // Tasks live at the window's start arrive at 0.
        let mut ledger_events: Vec<LedgerEvent> = Vec::new();
        let mut from_before = 0u64;
        for (i, t) in tasks.iter_mut().enumerate() {
            if t.seen && (t.waiting || t.running_since.is_some()) {
                t.before = true;
                t.enqueued = true;
                t.arrival = 0;
                from_before += 1;
                ledger_events.push(LedgerEvent {
                    t: 0,
                    task: i as u32,
                    kind: Kind::Enqueued { account: t.account },
                });
                if t.running_since.is_some() {
                    t.running_since = Some(from);
                    ledger_events.push(LedgerEvent {
                        t: 0,
                        task: i as u32,
                        kind: Kind::Assigned { level: t.run_level },
                    });
                }
            } else {
                t.running_since = None;
            }
        }
        let mut not_enqueued = 0u64;
        for e in &in_window {
            if e.bot != NONE {
                bots_in_window[e.bot as usize] = true;
            }
            let t = &mut tasks[e.task as usize];
            let at = ms(e.t);
            if !t.enqueued {
                // The first event of a task not seen before: it arrives now.
                t.enqueued = true;
                t.arrival = at;
                t.account = e.account;
                match e.ev {
                    Ev::Enqueued { labels, prov, tags } => {
                        t.labels = labels;
                        t.prov = prov;
                        t.tags = tags;
                    }
                    _ => {
                        not_enqueued += 1;
                        t.before = true;
                        ledger_events.push(LedgerEvent {
                            t: at,
                            task: e.task,
                            kind: Kind::Enqueued { account: e.account },
                        });
                    }
                }
            }
            let kind = match e.ev {
                Ev::Enqueued { .. } => Kind::Enqueued { account: t.account },
                Ev::Assigned { level, idle_bot } => {
                    if idle_bot && e.bot != NONE {
                        bot_idle_seen[e.bot as usize] = true;
                    }
                    t.running_since = Some(e.t);
                    Kind::Assigned { level }
                }
                Ev::Preempted {
                    level,
                    by_account,
                    by_level,
                } => {
                    if let Some(s) = t.running_since.take() {
                        t.ran += (e.t - s) / 1_000_000;
                    }
                    Kind::Preempted {
                        level,
                        by_account: Some(by_account),
                        by_level,
                    }
                }
                Ev::Reprioritized { old, new } => Kind::Reprioritized { old, new },
                Ev::Completed { waiting, polled } => {
                    if polled && e.bot != NONE {
                        bot_idle_seen[e.bot as usize] = true;
                    }
                    if let Some(s) = t.running_since.take() {
                        t.ran += (e.t - s) / 1_000_000;
                        t.finished = true;
                    } else if waiting && !t.finished {
                        t.cancel = Some(at);
                    }
                    Kind::Completed
                }
                Ev::Unassigned => {
                    t.running_since = None;
                    Kind::Unassigned
                }
            };
            ledger_events.push(LedgerEvent {
                t: at,
                task: e.task,
                kind,
            });
        }

        // Durations: finished tasks as measured; the others estimated.
        let mut finished_by_account: BTreeMap<u32, Vec<i64>> = BTreeMap::new();
        for t in tasks.iter().filter(|t| t.enqueued && t.finished) {
            finished_by_account
                .entry(t.account)
                .or_default()
                .push(t.ran);
        }
        let mut all_finished: Vec<i64> = finished_by_account.values().flatten().copied().collect();
        all_finished.sort_unstable();
        let median_all = all_finished
            .get(all_finished.len() / 2)
            .copied()
            .unwrap_or(60_000);
        let medians: BTreeMap<u32, i64> = finished_by_account
            .into_iter()
            .map(|(a, mut v)| {
                v.sort_unstable();
                (a, v[v.len() / 2])
            })
            .collect();
        let (mut still_running, mut never_ran) = (0u64, 0u64);
        let mut account_map: FxHashMap<u32, u32> = FxHashMap::default();
        let mut task_index: Vec<u32> = vec![NONE; tasks.len()];
        for (i, t) in tasks.iter().enumerate() {
            if !t.enqueued {
                continue;
            }
            let duration_ms = if let Some(s) = t.running_since {
                still_running += 1;
                t.ran + (to - s) / 1_000_000
            } else if t.finished {
                t.ran
            } else {
                if t.cancel.is_none() {
                    never_ran += 1;
                }
                t.ran + medians.get(&t.account).copied().unwrap_or(median_all)
            };
            let account = *account_map.entry(t.account).or_insert_with(|| {
                w.intern_account(&mut interner, &self.accounts[t.account as usize])
            });
            let labels = remap(&mut w, &mut interner, t.labels);
            let prov = remap(&mut w, &mut interner, t.prov);
            let tags = remap(&mut w, &mut interner, t.tags);
            task_index[i] = w.tasks.len() as u32;
            w.tasks.push(Task {
                id: self.tasks[i].clone().into_boxed_str(),
                at: t.arrival,
                account,
                labels,
                provisionable: prov,
                tags,
                duration: Some(duration_ms.max(0)),
                cancel: t.cancel,
            });
        }
        // Accounts named only as preemptors still need an id in the ledger.
        for e in &in_window {
            if let Ev::Preempted { by_account, .. } = e.ev {
                account_map.entry(by_account).or_insert_with(|| {
                    w.intern_account(&mut interner, &self.accounts[by_account as usize])
                });
            }
        }
        let (mut bots_total, mut never_idle) = (0u64, 0u64);
        for (b, (id, dims)) in self.bots.iter().enumerate() {
            if !bots_in_window[b] {
                continue;
            }
            bots_total += 1;
            if !bot_idle_seen[b] {
                never_idle += 1;
            }
            let labels = remap(&mut w, &mut interner, *dims);
            w.bots.push(Bot {
                id: id.clone().into_boxed_str(),
                labels,
                from: 0,
                to: None,
            });
        }
        for (a, (_, b)) in &start_balance {
            if let Some(&id) = account_map.get(a) {
                w.balances.insert(w.accounts[id as usize].clone(), *b);
            }
        }
        // Tasks in workload order: by arrival (ties in log order).
        let mut order: Vec<usize> = (0..w.tasks.len()).collect();
        order.sort_by_key(|&i| (w.tasks[i].at, i));
        let mut new_pos = vec![0u32; w.tasks.len()];
        for (pos, &i) in order.iter().enumerate() {
            new_pos[i] = pos as u32;
        }
        let old = std::mem::take(&mut w.tasks);
        let mut slots: Vec<Option<Task>> = old.into_iter().map(Some).collect();
        w.tasks = order.iter().filter_map(|&i| slots[i].take()).collect();

        // The recorded outcome, measured as a simulation's is.
        let mut ledger = Ledger::new(
            w.accounts.clone(),
            vec![None; w.accounts.len()],
            duration,
            bucket_for(duration),
            w.tasks.len(),
        );
        for e in &ledger_events {
            let idx = task_index[e.task as usize];
            if idx == NONE {
                continue;
            }
            let kind = match e.kind {
                Kind::Enqueued { account } => Kind::Enqueued {
                    account: account_map.get(&account).copied().unwrap_or(u32::MAX),
                },
                Kind::Preempted {
                    level,
                    by_account,
                    by_level,
                } => Kind::Preempted {
                    level,
                    by_account: by_account.and_then(|a| account_map.get(&a).copied()),
                    by_level,
                },
                k => k,
            };
            ledger.record(LedgerEvent {
                t: e.t,
                task: new_pos[idx as usize],
                kind,
            });
        }
        let report = ledger.finish(&w, "recorded");
        w.recorded = serde_json::to_value(&report).ok();

        let mut estimates = Vec::new();
        if still_running > 0 {
            estimates.push(format!(
                "{still_running} tasks were still running at the end: their durations are what they ran so far (a lower bound)"
            ));
        }
        if never_ran > 0 {
            estimates.push(format!(
                "{never_ran} tasks never ran: their durations are the median of their account's finished tasks"
            ));
        }
        if from_before + not_enqueued > 0 {
            estimates.push(format!(
                "{} tasks were already queued or running when the window starts: they arrive at its start",
                from_before + not_enqueued
            ));
        }
        estimates.push(format!(
            "{bots_total} bots are named by events; each is taken as available for the whole window (idle bots leave no events, so bots idle throughout are missing)"
        ));
        if never_idle > 0 {
            estimates.push(format!(
                "{never_idle} bots were never seen idle (only running tasks, or assigned by preemption)"
            ));
        }
        if self.skipped > 0 {
            estimates.push(format!(
                "{} events of unknown types were skipped",
                self.skipped
            ));
        }
        w.notes = estimates.clone();
        w.validate()
            .map_err(|e| ExtractError::Invalid(format!("the derived workload is invalid: {e}")))?;
        Ok(Extracted {
            workload: w,
            events: in_window.len() as u64,
            estimates,
        })
    }
}

/// The event log files of `dir`, by sequence number.
pub fn event_files(dir: &Path) -> Result<Vec<PathBuf>, ExtractError> {
    let mut files = Vec::new();
    let entries = std::fs::read_dir(dir)
        .map_err(|e| ExtractError::Invalid(format!("cannot read {}: {e}", dir.display())))?;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name
            .strip_prefix("task-events-")
            .filter(|_| name.ends_with(".jsonl"))
        else {
            continue;
        };
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if let Ok(seq) = digits.parse::<u64>() {
            files.push((seq, entry.path()));
        }
    }
    files.sort();
    Ok(files.into_iter().map(|(_, p)| p).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: i64) -> String {
        crate::clock::format_rfc3339(Time::from_secs(1_900_000_000 + s))
    }

    fn event(
        kind: &str,
        pool: &str,
        task: &str,
        at: i64,
        account: &str,
        bot: &str,
        details: &str,
    ) -> String {
        format!(
            "{{\"event_type\":\"{kind}\",\"scheduler_id\":\"{pool}\",\"task_id\":\"{task}\",\"time\":\"{}\",\"base_labels\":[\"os:linux\"],\"provisionable_labels\":[],\"account_id\":\"{account}\",\"account_valid\":{},\"account_balance\":[{}],\"cost\":[],\"bot_id\":\"{bot}\",\"bot_dimensions\":[{}],\"category\":\"CATEGORY_QSCHEDULER\",\"is_callback\":false{details}}}",
            ts(at),
            !account.is_empty(),
            if account.is_empty() {
                ""
            } else {
                "100.0,0.0,0.0,0.0,0.0"
            },
            if bot.is_empty() {
                String::new()
            } else {
                "\"os:linux\"".to_owned()
            },
        )
    }

    fn log() -> Vec<String> {
        let enq = ",\"enqueued_details\":{\"tags\":[\"k:v\"]}";
        let asg = |p: i32| {
            format!(
                ",\"assigned_details\":{{\"provision_required\":false,\"priority\":{p},\"preempting\":false,\"preemption_cost\":[],\"preempted_task_id\":\"\"}}"
            )
        };
        let done = |r: &str| {
            format!(
                ",\"completed_details\":{{\"reason\":\"{r}\",\"other_task\":\"\",\"other_bot\":\"\"}}"
            )
        };
        let pre = ",\"preempted_details\":{\"preempting_account_id\":\"a\",\"preempting_task_id\":\"x\",\"priority\":5,\"preempting_priority\":0}";
        vec![
            event("SWARMING_ENQUEUED", "p", "t1", 0, "a", "", enq),
            event("QSCHEDULER_ASSIGNED", "p", "t1", 1, "a", "b1", &asg(0)),
            event("SWARMING_ENQUEUED", "other", "z", 1, "", "", enq),
            event("SWARMING_ENQUEUED", "p", "t2", 2, "", "", enq),
            event("QSCHEDULER_ASSIGNED", "p", "t2", 3, "", "b2", &asg(5)),
            event("SWARMING_ENQUEUED", "p", "t3", 4, "", "", enq),
            event("QSCHEDULER_PREEMPTED", "p", "t2", 5, "", "b2", pre),
            event("SWARMING_ENQUEUED", "p", "t2", 6, "", "", enq),
            event("SWARMING_ENQUEUED", "p", "t4", 6, "a", "", enq),
            event("QSCHEDULER_ASSIGNED", "p", "t2", 7, "", "b2", &asg(5)),
            event(
                "SWARMING_COMPLETED",
                "p",
                "t3",
                8,
                "",
                "",
                &done("IDLE_TASK_ABSENT"),
            ),
            event(
                "SWARMING_COMPLETED",
                "p",
                "t2",
                9,
                "",
                "b2",
                &done("BOT_IDLE"),
            ),
            event(
                "SWARMING_COMPLETED",
                "p",
                "t1",
                11,
                "a",
                "b1",
                &done("BOT_IDLE"),
            ),
            event("SWARMING_ENQUEUED", "p", "t5", 12, "a", "", enq),
        ]
    }

    fn extract(o: &ExtractOptions) -> Result<Extracted, ExtractError> {
        let mut x = Extractor::new();
        for (i, line) in log().iter().enumerate() {
            x.add_line("log", i as u64 + 1, line)?;
        }
        x.finish(o)
    }

    fn task<'a>(w: &'a Workload, id: &str) -> &'a Task {
        w.tasks
            .iter()
            .find(|t| &*t.id == id)
            .unwrap_or_else(|| panic!("no task {id}"))
    }

    #[test]
    fn derives_arrivals_durations_and_the_fleet() {
        let e = extract(&ExtractOptions {
            pool: Some("p".into()),
            ..Default::default()
        })
        .unwrap();
        let w = &e.workload;
        assert_eq!(w.pool, "p");
        assert_eq!(w.duration, 12_000);
        assert_eq!(w.tasks.len(), 5);
        let t1 = task(w, "t1");
        assert_eq!((t1.at, t1.duration, t1.cancel), (0, Some(10_000), None));
        assert_eq!(w.accounts[t1.account as usize], "a");
        assert_eq!(w.set(t1.tags), ["k:v"]);
        // t2 ran 3→5 and 7→9: 4 s of work.
        let t2 = task(w, "t2");
        assert_eq!((t2.at, t2.duration), (2_000, Some(4_000)));
        // t3 went away while waiting.
        assert_eq!(task(w, "t3").cancel, Some(8_000));
        // t4 never ran: its account's median (t1's 10 s); t5 too.
        assert_eq!(task(w, "t4").duration, Some(10_000));
        assert_eq!(task(w, "t5").at, 12_000);
        assert_eq!(w.bots.len(), 2);
        assert_eq!(w.set(w.bots[0].labels), ["os:linux"]);
        assert_eq!(w.balances["a"], [100.0, 0.0, 0.0, 0.0, 0.0]);
        assert!(
            e.estimates.iter().any(|n| n.contains("2 tasks never ran")),
            "{:?}",
            e.estimates
        );
        // The recorded outcome: t1 waited 1 s, t2 1 + 1 s.
        let r: crate::report::RunReport =
            serde_json::from_value(w.recorded.clone().unwrap()).unwrap();
        assert_eq!(r.label, "recorded");
        assert_eq!(r.counts.arrived, 5);
        assert_eq!(r.counts.preemptions, 1);
        assert_eq!(r.counts.gone_before_start, 1);
        let a = r.accounts.iter().find(|x| x.account == "a").unwrap();
        assert_eq!(a.levels[0].wait_p50_s, Some(1.0));
        assert_eq!(a.levels[0].preempting, 1);
        let none = r.accounts.iter().find(|x| x.account.is_empty()).unwrap();
        assert_eq!(none.levels[0].level, "free");
        assert_eq!(none.levels[0].wait_p50_s, Some(2.0));
        assert_eq!(none.levels[0].used_bot_s, 4.0);
    }

    #[test]
    fn a_window_starts_with_what_was_live() {
        let e = extract(&ExtractOptions {
            pool: Some("p".into()),
            from: Some(Time::from_secs(1_900_000_006)),
            to: Some(Time::from_secs(1_900_000_010)),
        })
        .unwrap();
        let w = &e.workload;
        // t1 was running at 6 s and finished at 11 s, after the window: it
        // arrives at the start and is still running at the end (4 s so far).
        let t1 = task(w, "t1");
        assert_eq!((t1.at, t1.duration), (0, Some(4_000)));
        // t3 was waiting at 6 s and went away at 8 s.
        assert_eq!(task(w, "t3").cancel, Some(2_000));
        assert!(w.tasks.iter().all(|t| &*t.id != "t5"));
        assert!(
            e.estimates
                .iter()
                .any(|n| n.contains("already queued or running")),
            "{:?}",
            e.estimates
        );
    }

    #[test]
    fn choices_and_errors() {
        let err = |o: &ExtractOptions| extract(o).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err(&ExtractOptions::default()).contains("several pools"));
        assert!(
            err(&ExtractOptions {
                pool: Some("nope".into()),
                ..Default::default()
            })
            .contains("no events of pool \"nope\"")
        );
        assert!(
            err(&ExtractOptions {
                pool: Some("p".into()),
                from: Some(Time::from_secs(1_900_000_010)),
                to: Some(Time::from_secs(1_900_000_005)),
            })
            .contains("the window is empty")
        );
        let mut x = Extractor::new();
        let e = x
            .add_line(
                "f",
                3,
                "{\"event_type\":\"SWARMING_ENQUEUED\",\"task_id\":\"t\"}",
            )
            .unwrap_err();
        assert_eq!(e.to_string(), "f:3: time: missing");
        let e = x.add_line("f", 4, "not json").unwrap_err();
        assert!(e.to_string().starts_with("f:4: not a task event"));
        // Unknown event types are skipped, not errors.
        x.add_line("f", 5, &event("SOMETHING_NEW", "p", "t", 0, "", "", ""))
            .unwrap();
    }
}
