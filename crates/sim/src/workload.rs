//! Workloads: what a pool was asked to do, as a versioned JSON Lines file.
//!
//! A workload is the input of a simulation and nothing else: the tasks that
//! arrive (when, for which account, with which labels, how long they run)
//! and the fleet of bots (their labels and when each is available). It says
//! nothing about quotas: the same workload is simulated under any pool
//! configuration. `docs/workload-format.md` describes every field; this
//! module is its one reader and writer.
//!
//! The file is JSON Lines: a header object first, then one object per bot
//! and per task, in any order. Times are seconds from the header's `start`,
//! kept to the millisecond. In memory, strings that repeat (accounts, label
//! sets, tags) are interned, so a million tasks take tens of megabytes.
//!
//! Must not: accept a file that would make a simulation fail half-way. Every
//! line is checked as it is read, and errors name the line and the field.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};

use qscheduler_core::{NUM_PRIORITIES, Time};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::clock::{MAX_SPAN_MS, format_rfc3339, ms_to_secs, parse_rfc3339, secs_to_ms};

/// The format name in the header.
pub const FORMAT: &str = "qscheduler-workload";
/// The format version this build reads and writes.
pub const VERSION: u32 = 1;

/// Most bytes of one line: a limit for input that could otherwise exhaust
/// memory (a task with a million labels is not a workload, it is a mistake).
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// Index of an interned string list (labels or tags) in [`Workload::sets`].
pub type SetId = u32;
/// Index of an account in [`Workload::accounts`].
pub type AccountId = u32;

/// A task as the workload describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Task {
    /// The task id (unique in the workload).
    pub id: Box<str>,
    /// Arrival: milliseconds from the start.
    pub at: i64,
    /// Its account.
    pub account: AccountId,
    /// Base labels (a bot must have them all).
    pub labels: SetId,
    /// Provisionable labels (preferred, not required).
    pub provisionable: SetId,
    /// Swarming tags (only shown in events).
    pub tags: SetId,
    /// Run time in milliseconds; `None`: runs until cancelled (or the end).
    pub duration: Option<i64>,
    /// When Swarming cancels it (milliseconds from the start), if ever.
    pub cancel: Option<i64>,
}

/// A bot and when it is available.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bot {
    /// The bot id (unique in the workload).
    pub id: Box<str>,
    /// Its labels (dimensions).
    pub labels: SetId,
    /// It starts asking for work at this time (milliseconds from the start).
    pub from: i64,
    /// It stops asking for work at this time; a task it runs then is
    /// finished first. `None`: until the end.
    pub to: Option<i64>,
}

/// A whole workload.
#[derive(Clone, Debug, PartialEq)]
pub struct Workload {
    /// The pool it was recorded in or generated for (informational).
    pub pool: String,
    /// The instant that time 0 stands for.
    pub start: Time,
    /// Milliseconds covered; the simulation stops here.
    pub duration: i64,
    /// Where it came from (`generate`, `extract`, or anything a tool writes).
    pub source: String,
    /// What the producer had to estimate or wants a reader to know.
    pub notes: Vec<String>,
    /// Balances of accounts at the start (extracted from the event log);
    /// accounts not listed start at zero.
    pub balances: BTreeMap<String, [f32; NUM_PRIORITIES]>,
    /// Interned account ids.
    pub accounts: Vec<String>,
    /// Interned, sorted, de-duplicated string sets (labels and tags).
    pub sets: Vec<Vec<String>>,
    /// Bots, in file order.
    pub bots: Vec<Bot>,
    /// Tasks, in file order.
    pub tasks: Vec<Task>,
    /// The outcome measured when the workload was recorded (a report of the
    /// same shape `simulate -o json` prints for one run), if the producer
    /// could measure one.
    pub recorded: Option<serde_json::Value>,
}

/// Why a workload could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A line is not valid.
    #[error("line {line}: {message}")]
    Line {
        /// 1-based line number.
        line: u64,
        /// What is wrong, naming the field.
        message: String,
    },
    /// The file as a whole is not valid.
    #[error("{0}")]
    Invalid(String),
}

fn line_err(line: u64, message: impl Into<String>) -> WorkloadError {
    WorkloadError::Line {
        line,
        message: message.into(),
    }
}

// ---- the lines as JSON ----

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderLine {
    format: String,
    version: u32,
    #[serde(default)]
    pool: String,
    start: String,
    duration: f64,
    #[serde(default)]
    source: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    notes: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    balances: BTreeMap<String, Vec<f32>>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BotLine {
    bot: String,
    #[serde(default)]
    labels: Vec<String>,
    #[serde(default)]
    from: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    to: Option<f64>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskLine {
    task: String,
    at: f64,
    #[serde(default)]
    account: String,
    #[serde(default)]
    labels: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    provisionable: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    tags: Vec<String>,
    /// `null` or absent: until cancelled.
    #[serde(default)]
    duration: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cancel: Option<f64>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordedLine {
    recorded: serde_json::Value,
}

/// Which kind of line an object is, from its first distinguishing key.
#[derive(Deserialize)]
struct Probe {
    format: Option<serde::de::IgnoredAny>,
    bot: Option<serde::de::IgnoredAny>,
    task: Option<serde::de::IgnoredAny>,
    recorded: Option<serde::de::IgnoredAny>,
}

/// Interns strings and string sets while a workload is built.
#[derive(Default)]
pub struct Interner {
    accounts: FxHashMap<String, AccountId>,
    sets: FxHashMap<Vec<String>, SetId>,
}

impl Workload {
    /// An empty workload: no bots, no tasks.
    pub fn new(pool: &str, start: Time, duration: i64, source: &str) -> (Workload, Interner) {
        let mut w = Workload {
            pool: pool.to_owned(),
            start,
            duration,
            source: source.to_owned(),
            notes: Vec::new(),
            balances: BTreeMap::new(),
            accounts: Vec::new(),
            sets: Vec::new(),
            bots: Vec::new(),
            tasks: Vec::new(),
            recorded: None,
        };
        let mut i = Interner::default();
        // Set 0 is the empty set, used by most tasks' provisionable labels
        // and tags.
        w.intern_set(&mut i, Vec::new());
        (w, i)
    }

    /// The id of account `name`, adding it if new.
    pub fn intern_account(&mut self, i: &mut Interner, name: &str) -> AccountId {
        if let Some(&id) = i.accounts.get(name) {
            return id;
        }
        let id = self.accounts.len() as AccountId;
        self.accounts.push(name.to_owned());
        i.accounts.insert(name.to_owned(), id);
        id
    }

    /// The id of a string set (sorted and de-duplicated first).
    pub fn intern_set(&mut self, i: &mut Interner, mut v: Vec<String>) -> SetId {
        v.sort_unstable();
        v.dedup();
        if let Some(&id) = i.sets.get(&v) {
            return id;
        }
        let id = self.sets.len() as SetId;
        self.sets.push(v.clone());
        i.sets.insert(v, id);
        id
    }

    /// The strings of a set.
    pub fn set(&self, id: SetId) -> &[String] {
        &self.sets[id as usize]
    }

    /// Checks what single lines cannot: unique ids, times within the
    /// workload.
    pub fn validate(&self) -> Result<(), WorkloadError> {
        let mut seen: FxHashMap<&str, ()> = FxHashMap::default();
        for b in &self.bots {
            if seen.insert(&b.id, ()).is_some() {
                return Err(WorkloadError::Invalid(format!(
                    "bot {:?} is listed twice; give each bot one line",
                    b.id
                )));
            }
        }
        seen.clear();
        for t in &self.tasks {
            if seen.insert(&t.id, ()).is_some() {
                return Err(WorkloadError::Invalid(format!(
                    "task {:?} is listed twice; task ids must be unique",
                    t.id
                )));
            }
            if t.at > self.duration {
                return Err(WorkloadError::Invalid(format!(
                    "task {:?} arrives at {} s, after the workload's end ({} s)",
                    t.id,
                    ms_to_secs(t.at),
                    ms_to_secs(self.duration)
                )));
            }
        }
        Ok(())
    }

    /// Reads a workload; errors name the line.
    pub fn read(input: impl BufRead) -> Result<Workload, WorkloadError> {
        let mut lines = LineReader::new(input);
        let Some((n, first)) = lines.next_line()? else {
            return Err(WorkloadError::Invalid(
                "the file is empty; a workload starts with a header line".into(),
            ));
        };
        let probe: Probe = serde_json::from_str(&first)
            .map_err(|e| line_err(n, format!("not a JSON object: {e}")))?;
        if probe.format.is_none() {
            return Err(line_err(
                n,
                format!(
                    "the first line must be the header {{\"format\":\"{FORMAT}\",\"version\":{VERSION},...}}"
                ),
            ));
        }
        let h: HeaderLine =
            serde_json::from_str(&first).map_err(|e| line_err(n, format!("header: {e}")))?;
        if h.format != FORMAT {
            return Err(line_err(
                n,
                format!("format: {:?} is not {FORMAT:?}", h.format),
            ));
        }
        if h.version != VERSION {
            return Err(line_err(
                n,
                format!(
                    "version: this build reads version {VERSION} of the workload format, not {}",
                    h.version
                ),
            ));
        }
        let start = parse_rfc3339(&h.start).map_err(|e| line_err(n, format!("start: {e}")))?;
        let duration = secs_to_ms(h.duration, "duration").map_err(|e| line_err(n, e))?;
        if duration == 0 {
            return Err(line_err(n, "duration: must be more than 0 seconds"));
        }
        if start.as_nanos().checked_add(duration * 1_000_000).is_none() || duration > MAX_SPAN_MS {
            return Err(line_err(n, "duration: the workload would end after 2262"));
        }
        let (mut w, mut i) = Workload::new(&h.pool, start, duration, &h.source);
        w.notes = h.notes;
        for (acct, b) in h.balances {
            if b.len() > NUM_PRIORITIES || b.iter().any(|v| !v.is_finite()) {
                return Err(line_err(
                    n,
                    format!("balances.{acct}: at most {NUM_PRIORITIES} finite numbers"),
                ));
            }
            let mut arr = [0.0; NUM_PRIORITIES];
            arr[..b.len()].copy_from_slice(&b);
            w.balances.insert(acct, arr);
        }
        while let Some((n, line)) = lines.next_line()? {
            let probe: Probe = serde_json::from_str(&line)
                .map_err(|e| line_err(n, format!("not a JSON object: {e}")))?;
            if probe.task.is_some() {
                let t: TaskLine =
                    serde_json::from_str(&line).map_err(|e| line_err(n, format!("task: {e}")))?;
                let task = w.task_from_line(&mut i, t).map_err(|e| line_err(n, e))?;
                w.tasks.push(task);
            } else if probe.bot.is_some() {
                let b: BotLine =
                    serde_json::from_str(&line).map_err(|e| line_err(n, format!("bot: {e}")))?;
                let bot = w.bot_from_line(&mut i, b).map_err(|e| line_err(n, e))?;
                w.bots.push(bot);
            } else if probe.recorded.is_some() {
                let r: RecordedLine = serde_json::from_str(&line)
                    .map_err(|e| line_err(n, format!("recorded: {e}")))?;
                if w.recorded.is_some() {
                    return Err(line_err(n, "recorded: given twice"));
                }
                w.recorded = Some(r.recorded);
            } else if probe.format.is_some() {
                return Err(line_err(n, "a second header; a workload has one"));
            } else {
                return Err(line_err(
                    n,
                    "unknown line: expected an object with \"task\", \"bot\" or \"recorded\"",
                ));
            }
        }
        w.validate()?;
        Ok(w)
    }

    fn task_from_line(&mut self, i: &mut Interner, t: TaskLine) -> Result<Task, String> {
        if t.task.is_empty() {
            return Err("task: the id must not be empty".into());
        }
        let at = secs_to_ms(t.at, "at")?;
        let duration = t.duration.map(|d| secs_to_ms(d, "duration")).transpose()?;
        let cancel = t.cancel.map(|c| secs_to_ms(c, "cancel")).transpose()?;
        if let Some(c) = cancel
            && c < at
        {
            return Err(format!(
                "cancel: {} s is before the task arrives ({} s)",
                ms_to_secs(c),
                ms_to_secs(at)
            ));
        }
        check_labels(&t.labels, "labels")?;
        check_labels(&t.provisionable, "provisionable")?;
        let account = self.intern_account(i, &t.account);
        Ok(Task {
            id: t.task.into_boxed_str(),
            at,
            account,
            labels: self.intern_set(i, t.labels),
            provisionable: self.intern_set(i, t.provisionable),
            tags: self.intern_set(i, t.tags),
            duration,
            cancel,
        })
    }

    fn bot_from_line(&mut self, i: &mut Interner, b: BotLine) -> Result<Bot, String> {
        if b.bot.is_empty() {
            return Err("bot: the id must not be empty".into());
        }
        let from = secs_to_ms(b.from, "from")?;
        let to = b.to.map(|t| secs_to_ms(t, "to")).transpose()?;
        if let Some(to) = to
            && to <= from
        {
            return Err(format!(
                "to: {} s is not after from ({} s)",
                ms_to_secs(to),
                ms_to_secs(from)
            ));
        }
        check_labels(&b.labels, "labels")?;
        Ok(Bot {
            id: b.bot.into_boxed_str(),
            labels: self.intern_set(i, b.labels),
            from,
            to,
        })
    }

    /// Writes the workload: header, bots, tasks, then the recorded outcome.
    pub fn write(&self, mut out: impl Write) -> Result<(), WorkloadError> {
        let header = HeaderLine {
            format: FORMAT.into(),
            version: VERSION,
            pool: self.pool.clone(),
            start: format_rfc3339(self.start),
            duration: ms_to_secs(self.duration),
            source: self.source.clone(),
            notes: self.notes.clone(),
            balances: self
                .balances
                .iter()
                .map(|(k, v)| (k.clone(), v.to_vec()))
                .collect(),
        };
        serde_json::to_writer(&mut out, &header).map_err(std::io::Error::from)?;
        out.write_all(b"\n")?;
        for b in &self.bots {
            let line = BotLine {
                bot: b.id.to_string(),
                labels: self.set(b.labels).to_vec(),
                from: ms_to_secs(b.from),
                to: b.to.map(ms_to_secs),
            };
            serde_json::to_writer(&mut out, &line).map_err(std::io::Error::from)?;
            out.write_all(b"\n")?;
        }
        for t in &self.tasks {
            let line = TaskLine {
                task: t.id.to_string(),
                at: ms_to_secs(t.at),
                account: self.accounts[t.account as usize].clone(),
                labels: self.set(t.labels).to_vec(),
                provisionable: self.set(t.provisionable).to_vec(),
                tags: self.set(t.tags).to_vec(),
                duration: t.duration.map(ms_to_secs),
                cancel: t.cancel.map(ms_to_secs),
            };
            serde_json::to_writer(&mut out, &line).map_err(std::io::Error::from)?;
            out.write_all(b"\n")?;
        }
        if let Some(r) = &self.recorded {
            serde_json::to_writer(
                &mut out,
                &RecordedLine {
                    recorded: r.clone(),
                },
            )
            .map_err(std::io::Error::from)?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
        Ok(())
    }
}

fn check_labels(v: &[String], field: &str) -> Result<(), String> {
    if let Some(i) = v.iter().position(String::is_empty) {
        return Err(format!("{field}[{i}]: a label must not be empty"));
    }
    Ok(())
}

/// Reads lines with a size limit, skipping blank ones.
struct LineReader<R> {
    input: R,
    n: u64,
    buf: Vec<u8>,
}

impl<R: BufRead> LineReader<R> {
    fn new(input: R) -> Self {
        LineReader {
            input,
            n: 0,
            buf: Vec::new(),
        }
    }

    fn next_line(&mut self) -> Result<Option<(u64, String)>, WorkloadError> {
        loop {
            self.buf.clear();
            let mut limited = std::io::Read::take(&mut self.input, MAX_LINE_BYTES as u64 + 1);
            let got = limited.read_until(b'\n', &mut self.buf)?;
            if got == 0 {
                return Ok(None);
            }
            self.n += 1;
            if self.buf.len() > MAX_LINE_BYTES {
                return Err(line_err(
                    self.n,
                    format!("longer than {MAX_LINE_BYTES} bytes"),
                ));
            }
            let text = std::str::from_utf8(&self.buf)
                .map_err(|_| line_err(self.n, "not UTF-8 text"))?
                .trim();
            if !text.is_empty() {
                return Ok(Some((self.n, text.to_owned())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<Workload, WorkloadError> {
        Workload::read(text.as_bytes())
    }

    const SMALL: &str = r#"{"format":"qscheduler-workload","version":1,"pool":"p","start":"2030-01-01T00:00:00Z","duration":3600,"source":"hand","balances":{"a":[10,0.5]}}
{"bot":"b1","labels":["os:linux","pool:p"]}
{"bot":"b2","labels":["pool:p","os:linux"],"from":60,"to":1800.5}
{"task":"t1","at":0,"account":"a","labels":["os:linux"],"duration":30}
{"task":"t2","at":1.25,"account":"","labels":["os:linux"],"provisionable":["cache:x"],"tags":["k:v"],"duration":null,"cancel":100}
{"recorded":{"anything":[1,2]}}
"#;

    #[test]
    fn reads_every_field() {
        let w = read(SMALL).unwrap();
        assert_eq!(w.pool, "p");
        assert_eq!(w.duration, 3_600_000);
        assert_eq!(w.balances["a"], [10.0, 0.5, 0.0, 0.0, 0.0]);
        assert_eq!(w.bots.len(), 2);
        // Label sets are interned: both bots share one.
        assert_eq!(w.bots[0].labels, w.bots[1].labels);
        assert_eq!(w.bots[1].from, 60_000);
        assert_eq!(w.bots[1].to, Some(1_800_500));
        assert_eq!(w.tasks[1].at, 1250);
        assert_eq!(w.tasks[1].duration, None);
        assert_eq!(w.tasks[1].cancel, Some(100_000));
        assert_eq!(w.set(w.tasks[1].provisionable), ["cache:x"]);
        assert_eq!(w.accounts, ["a", ""]);
        assert!(w.recorded.is_some());
    }

    #[test]
    fn round_trips_exactly() {
        let w = read(SMALL).unwrap();
        let mut out = Vec::new();
        w.write(&mut out).unwrap();
        let again = Workload::read(out.as_slice()).unwrap();
        assert_eq!(w, again);
        let mut out2 = Vec::new();
        again.write(&mut out2).unwrap();
        assert_eq!(out, out2);
    }

    #[test]
    fn errors_name_the_line_and_field() {
        let cases = [
            ("", "empty"),
            (
                "{\"bot\":\"b\"}",
                "line 1: the first line must be the header",
            ),
            (
                "{\"format\":\"x\",\"version\":1,\"start\":\"2030-01-01T00:00:00Z\",\"duration\":1}",
                "line 1: format",
            ),
            (
                "{\"format\":\"qscheduler-workload\",\"version\":2,\"start\":\"2030-01-01T00:00:00Z\",\"duration\":1}",
                "line 1: version",
            ),
            (
                "{\"format\":\"qscheduler-workload\",\"version\":1,\"start\":\"yesterday\",\"duration\":1}",
                "line 1: start",
            ),
            (
                "{\"format\":\"qscheduler-workload\",\"version\":1,\"start\":\"2030-01-01T00:00:00Z\",\"duration\":0}",
                "line 1: duration",
            ),
        ];
        for (text, want) in cases {
            let e = read(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
        let head = "{\"format\":\"qscheduler-workload\",\"version\":1,\"start\":\"2030-01-01T00:00:00Z\",\"duration\":100}\n";
        let body_cases = [
            ("{\"task\":\"t\",\"at\":-1}", "line 2: at"),
            (
                "{\"task\":\"t\",\"at\":1,\"duration\":\"x\"}",
                "line 2: task",
            ),
            ("{\"task\":\"\",\"at\":1}", "line 2: task: the id"),
            ("{\"task\":\"t\",\"at\":5,\"cancel\":4}", "line 2: cancel"),
            (
                "{\"task\":\"t\",\"at\":5,\"labels\":[\"\"]}",
                "line 2: labels[0]",
            ),
            (
                "{\"task\":\"t\",\"at\":5,\"color\":1}",
                "unknown field `color`",
            ),
            ("{\"bot\":\"b\",\"from\":5,\"to\":5}", "line 2: to"),
            ("{\"thing\":1}", "line 2: unknown line"),
            ("[1]", "line 2: not a JSON object"),
            ("{\"task\":\"t\",\"at\":500}", "after the workload's end"),
            (
                "{\"task\":\"t\",\"at\":5}\n{\"task\":\"t\",\"at\":6}",
                "listed twice",
            ),
            ("{\"bot\":\"b\"}\n\n{\"bot\":\"b\"}", "listed twice"),
        ];
        for (body, want) in body_cases {
            let text = format!("{head}{body}\n");
            let e = read(&text).unwrap_err().to_string();
            assert!(e.contains(want), "{body}: {e}");
        }
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        fn label() -> impl Strategy<Value = String> {
            "[a-z]{1,3}:[a-z0-9\\-\"é]{0,4}"
        }

        fn labels() -> impl Strategy<Value = Vec<String>> {
            proptest::collection::vec(label(), 0..4)
        }

        prop_compose! {
            fn arb_workload()(
                pool in "[a-z\\-]{0,8}",
                start in 0i64..4_000_000_000,
                duration in 1i64..10_000_000_000,
                notes in proptest::collection::vec(".{0,12}", 0..3),
                balances in proptest::collection::btree_map("[a-z]{0,4}", proptest::array::uniform5(-1e6f32..1e6), 0..3),
                bots in proptest::collection::vec((labels(), 0i64..10_000_000, proptest::option::of(1i64..10_000_000)), 0..6),
                tasks in proptest::collection::vec(
                    ("[a-z]{0,3}", labels(), labels(), labels(), 0.0f64..1.0, proptest::option::of(0i64..100_000_000), proptest::option::of(0i64..1_000_000)),
                    0..12,
                ),
            ) -> Workload {
                let (mut w, mut i) = Workload::new(&pool, Time::from_secs(start), duration, "prop");
                w.notes = notes;
                w.balances = balances;
                for (n, (l, from, len)) in bots.into_iter().enumerate() {
                    let labels = w.intern_set(&mut i, l);
                    w.bots.push(Bot { id: format!("b{n}").into(), labels, from, to: len.map(|d| from + d) });
                }
                for (n, (acc, l, p, tags, frac, dur, cancel_after)) in tasks.into_iter().enumerate() {
                    let at = (frac * duration as f64) as i64;
                    let account = w.intern_account(&mut i, &acc);
                    let labels = w.intern_set(&mut i, l);
                    let provisionable = w.intern_set(&mut i, p);
                    let tags = w.intern_set(&mut i, tags);
                    w.tasks.push(Task {
                        id: format!("t{n}").into(),
                        at,
                        account,
                        labels,
                        provisionable,
                        tags,
                        duration: dur,
                        cancel: cancel_after.map(|c| at + c),
                    });
                }
                w
            }
        }

        proptest! {
            /// Any workload written and read back is the same workload,
            /// and writing it again gives the same bytes.
            #[test]
            fn round_trips(w in arb_workload()) {
                let mut bytes = Vec::new();
                w.write(&mut bytes).unwrap();
                let again = Workload::read(bytes.as_slice()).unwrap();
                // Interning order may differ; compare what the tasks and
                // bots say.
                prop_assert_eq!(&w.pool, &again.pool);
                prop_assert_eq!(w.start, again.start);
                prop_assert_eq!(w.duration, again.duration);
                prop_assert_eq!(&w.notes, &again.notes);
                prop_assert_eq!(&w.balances, &again.balances);
                prop_assert_eq!(w.tasks.len(), again.tasks.len());
                for (a, b) in w.tasks.iter().zip(&again.tasks) {
                    prop_assert_eq!(&a.id, &b.id);
                    prop_assert_eq!(a.at, b.at);
                    prop_assert_eq!(a.duration, b.duration);
                    prop_assert_eq!(a.cancel, b.cancel);
                    prop_assert_eq!(&w.accounts[a.account as usize], &again.accounts[b.account as usize]);
                    prop_assert_eq!(w.set(a.labels), again.set(b.labels));
                    prop_assert_eq!(w.set(a.provisionable), again.set(b.provisionable));
                    prop_assert_eq!(w.set(a.tags), again.set(b.tags));
                }
                prop_assert_eq!(w.bots.len(), again.bots.len());
                for (a, b) in w.bots.iter().zip(&again.bots) {
                    prop_assert_eq!(&a.id, &b.id);
                    prop_assert_eq!((a.from, a.to), (b.from, b.to));
                    prop_assert_eq!(w.set(a.labels), again.set(b.labels));
                }
                let mut bytes2 = Vec::new();
                again.write(&mut bytes2).unwrap();
                prop_assert_eq!(bytes, bytes2);
            }
        }
    }

    #[test]
    fn long_lines_are_refused_before_parsing() {
        let head = "{\"format\":\"qscheduler-workload\",\"version\":1,\"start\":\"2030-01-01T00:00:00Z\",\"duration\":100}\n";
        let text = format!("{head}{}\n", "x".repeat(MAX_LINE_BYTES + 10));
        let e = read(&text).unwrap_err().to_string();
        assert!(e.contains("line 2: longer than"), "{e}");
    }
}
