//! `workload generate`: a workload from a small declarative model.
//!
//! A model names a fleet (groups of identical bots) and accounts (arrival
//! rate, optional daily cycle and bursts, a duration distribution and a
//! mix of label sets); [`generate`] turns it into a [`Workload`]. The
//! result depends only on the model and its seed: each account draws from
//! its own stream (seeded from the seed and the account's name, so adding
//! an account leaves the others' tasks unchanged) of the crate's own
//! generator ([`crate::rng`]). `docs/workload.example.toml` is a complete,
//! commented model.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::clock::{MAX_SPAN_MS, parse_duration, parse_rfc3339};
use crate::rng::Rng;
use crate::workload::{Bot, Task, Workload};

/// Most tasks a model may generate: a limit on what a typo in a rate can
/// cost (the file would be gigabytes).
pub const MAX_TASKS: u64 = 20_000_000;
/// Most bots a model may describe.
pub const MAX_BOTS: u64 = 1_000_000;

/// A duration: seconds as a number, or text such as `"15m"`.
#[derive(Deserialize, Clone, Debug)]
#[serde(untagged)]
enum Span {
    Secs(f64),
    Text(String),
}

impl Span {
    fn ms(&self, field: &str) -> Result<i64, String> {
        match self {
            Span::Secs(s) => crate::clock::secs_to_ms(*s, field),
            Span::Text(t) => parse_duration(t).map_err(|e| format!("{field}: {e}")),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelDoc {
    #[serde(default)]
    seed: u64,
    #[serde(default = "default_pool")]
    pool: String,
    #[serde(default = "default_start")]
    start: String,
    duration: Span,
    #[serde(default)]
    fleet: BTreeMap<String, FleetDoc>,
    #[serde(default)]
    accounts: BTreeMap<String, AccountDoc>,
}

fn default_pool() -> String {
    "simulated".into()
}

fn default_start() -> String {
    "2030-01-01T00:00:00Z".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FleetDoc {
    count: u64,
    #[serde(default)]
    labels: Vec<String>,
    /// Bot `i` of the group also gets `rotate[i % len]`.
    #[serde(default)]
    rotate: Vec<String>,
    from: Option<Span>,
    to: Option<Span>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountDoc {
    tasks_per_hour: f64,
    #[serde(default)]
    daily_cycle: f64,
    #[serde(default = "default_peak")]
    peak_hour: f64,
    #[serde(default)]
    bursts: Vec<BurstDoc>,
    duration: DistDoc,
    until_cancelled: Option<CancelDoc>,
    #[serde(default)]
    tasks: Vec<MixDoc>,
}

fn default_peak() -> f64 {
    14.0
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BurstDoc {
    at: Span,
    length: Span,
    times: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelDoc {
    fraction: f64,
    after: Option<DistDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MixDoc {
    #[serde(default = "one")]
    weight: f64,
    #[serde(default)]
    labels: Vec<String>,
    #[serde(default)]
    provisionable: Vec<String>,
}

fn one() -> f64 {
    1.0
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DistDoc {
    distribution: String,
    value: Option<Span>,
    mean: Option<Span>,
    median: Option<Span>,
    sigma: Option<f64>,
    min: Option<Span>,
    max: Option<Span>,
}

/// A checked duration distribution, in milliseconds.
#[derive(Clone, Debug, PartialEq)]
enum Dist {
    Fixed(f64),
    Uniform(f64, f64),
    Exponential(f64),
    LogNormal { median: f64, sigma: f64 },
}

#[derive(Clone, Debug)]
struct Bounded {
    dist: Dist,
    min: f64,
    max: f64,
}

impl Bounded {
    fn parse(d: &DistDoc, field: &str) -> Result<Bounded, String> {
        let need = |v: &Option<Span>, name: &str| -> Result<f64, String> {
            v.as_ref()
                .ok_or_else(|| format!("{field}.{name}: required for {:?}", d.distribution))?
                .ms(&format!("{field}.{name}"))
                .map(|ms| ms as f64)
        };
        let dist = match d.distribution.as_str() {
            "fixed" => Dist::Fixed(need(&d.value, "value")?),
            "uniform" => {
                let (lo, hi) = (need(&d.min, "min")?, need(&d.max, "max")?);
                if hi < lo {
                    return Err(format!("{field}: max is below min"));
                }
                Dist::Uniform(lo, hi)
            }
            "exponential" => Dist::Exponential(need(&d.mean, "mean")?),
            "lognormal" => {
                let sigma = d.sigma.unwrap_or(1.0);
                if !(sigma.is_finite() && (0.0..=5.0).contains(&sigma)) {
                    return Err(format!("{field}.sigma: must be from 0 to 5"));
                }
                Dist::LogNormal {
                    median: need(&d.median, "median")?,
                    sigma,
                }
            }
            other => {
                return Err(format!(
                    "{field}.distribution: {other:?} is not fixed, uniform, exponential or lognormal"
                ));
            }
        };
        let min = match &d.min {
            Some(s) => s.ms(&format!("{field}.min"))? as f64,
            None => 0.0,
        };
        let max = match &d.max {
            Some(s) => s.ms(&format!("{field}.max"))? as f64,
            None => (MAX_SPAN_MS / 10) as f64,
        };
        if max < min {
            return Err(format!("{field}: max is below min"));
        }
        Ok(Bounded { dist, min, max })
    }

    fn draw(&self, r: &mut Rng) -> i64 {
        let v = match self.dist {
            Dist::Fixed(v) => v,
            Dist::Uniform(lo, hi) => lo + (hi - lo) * r.unit(),
            Dist::Exponential(mean) => r.exponential(mean),
            Dist::LogNormal { median, sigma } => median * (sigma * r.normal()).exp(),
        };
        v.clamp(self.min, self.max).round() as i64
    }
}

/// Why a model could not be turned into a workload.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ModelError(pub String);

/// FNV-1a of a name: the account's stream number, stable across versions.
fn stream_of(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

struct Account {
    name: String,
    rate_per_ms: f64,
    cycle: f64,
    peak_ms: f64,
    bursts: Vec<(i64, i64, f64)>,
    duration: Bounded,
    cancel: Option<(f64, Option<Bounded>)>,
    mix: Vec<(f64, Vec<String>, Vec<String>)>,
}

impl Account {
    fn rate_at(&self, t: i64) -> f64 {
        let day = 86_400_000.0;
        let phase = ((t as f64 - self.peak_ms) / day) * std::f64::consts::TAU;
        let mut r = self.rate_per_ms * (1.0 + self.cycle * phase.cos());
        for &(from, to, times) in &self.bursts {
            if (from..to).contains(&t) {
                r *= times;
            }
        }
        r
    }

    fn max_rate(&self) -> f64 {
        let burst = self.bursts.iter().map(|b| b.2).fold(1.0f64, f64::max);
        self.rate_per_ms * (1.0 + self.cycle) * burst
    }
}

/// Parses a model (TOML text; `name` is used in errors) and generates its
/// workload.
pub fn generate(name: &str, text: &str) -> Result<Workload, ModelError> {
    let doc: ModelDoc = toml::from_str(text)
        .map_err(|e| ModelError(format!("{name}: {}", e.to_string().trim_end())))?;
    let err = |m: String| ModelError(format!("{name}: {m}"));
    let start = parse_rfc3339(&doc.start).map_err(|e| err(format!("start: {e}")))?;
    let duration = doc.duration.ms("duration").map_err(err)?;
    if duration <= 0 {
        return Err(err("duration: must be more than 0".into()));
    }
    let (mut w, mut interner) = Workload::new(&doc.pool, start, duration, "generate");
    w.notes
        .push(format!("generated from {name} with seed {}", doc.seed));

    let total_bots: u64 = doc.fleet.values().map(|f| f.count).sum();
    if total_bots > MAX_BOTS {
        return Err(err(format!(
            "fleet: {total_bots} bots; at most {MAX_BOTS} are allowed"
        )));
    }
    for (group, f) in &doc.fleet {
        let field = format!("fleet.{group}");
        if f.labels.iter().chain(&f.rotate).any(String::is_empty) {
            return Err(err(format!("{field}: labels must not be empty")));
        }
        let from = f
            .from
            .as_ref()
            .map(|s| s.ms(&format!("{field}.from")))
            .transpose()
            .map_err(err)?
            .unwrap_or(0);
        let to =
            f.to.as_ref()
                .map(|s| s.ms(&format!("{field}.to")))
                .transpose()
                .map_err(err)?;
        if to.is_some_and(|to| to <= from) {
            return Err(err(format!("{field}.to: must be after from")));
        }
        let width = f.count.max(1).to_string().len();
        for i in 0..f.count {
            let mut labels = f.labels.clone();
            if !f.rotate.is_empty() {
                labels.push(f.rotate[(i % f.rotate.len() as u64) as usize].clone());
            }
            let labels = w.intern_set(&mut interner, labels);
            w.bots.push(Bot {
                id: format!("{group}-{i:0width$}").into(),
                labels,
                from,
                to,
            });
        }
    }

    let mut accounts = Vec::new();
    let mut expected = 0.0f64;
    for (acct, a) in &doc.accounts {
        let field = format!("accounts.{acct}");
        if !(a.tasks_per_hour.is_finite() && a.tasks_per_hour >= 0.0) {
            return Err(err(format!("{field}.tasks_per_hour: must be 0 or more")));
        }
        if !(a.daily_cycle.is_finite() && (0.0..=1.0).contains(&a.daily_cycle)) {
            return Err(err(format!("{field}.daily_cycle: must be from 0 to 1")));
        }
        if !(a.peak_hour.is_finite() && (0.0..24.0).contains(&a.peak_hour)) {
            return Err(err(format!("{field}.peak_hour: must be from 0 to 24")));
        }
        let mut bursts = Vec::new();
        for (i, b) in a.bursts.iter().enumerate() {
            let f = format!("{field}.bursts[{i}]");
            let at = b.at.ms(&format!("{f}.at")).map_err(err)?;
            let len = b.length.ms(&format!("{f}.length")).map_err(err)?;
            if !(b.times.is_finite() && (0.0..=1000.0).contains(&b.times)) {
                return Err(err(format!("{f}.times: must be from 0 to 1000")));
            }
            bursts.push((at, at.saturating_add(len), b.times));
        }
        let dur = Bounded::parse(&a.duration, &format!("{field}.duration")).map_err(err)?;
        let cancel = match &a.until_cancelled {
            None => None,
            Some(c) => {
                if !(c.fraction.is_finite() && (0.0..=1.0).contains(&c.fraction)) {
                    return Err(err(format!(
                        "{field}.until_cancelled.fraction: must be from 0 to 1"
                    )));
                }
                let after = c
                    .after
                    .as_ref()
                    .map(|d| Bounded::parse(d, &format!("{field}.until_cancelled.after")))
                    .transpose()
                    .map_err(err)?;
                Some((c.fraction, after))
            }
        };
        let mut mix = Vec::new();
        for (i, m) in a.tasks.iter().enumerate() {
            if !(m.weight.is_finite() && m.weight > 0.0) {
                return Err(err(format!(
                    "{field}.tasks[{i}].weight: must be more than 0"
                )));
            }
            if m.labels
                .iter()
                .chain(&m.provisionable)
                .any(String::is_empty)
            {
                return Err(err(format!("{field}.tasks[{i}]: labels must not be empty")));
            }
            mix.push((m.weight, m.labels.clone(), m.provisionable.clone()));
        }
        if mix.is_empty() {
            mix.push((1.0, Vec::new(), Vec::new()));
        }
        let acc = Account {
            name: acct.clone(),
            rate_per_ms: a.tasks_per_hour / 3_600_000.0,
            cycle: a.daily_cycle,
            peak_ms: a.peak_hour * 3_600_000.0,
            bursts,
            duration: dur,
            cancel,
            mix,
        };
        expected += acc.max_rate() * duration as f64;
        accounts.push(acc);
    }
    if expected > MAX_TASKS as f64 {
        return Err(err(format!(
            "the accounts' rates allow up to {expected:.0} tasks; at most {MAX_TASKS} are allowed"
        )));
    }

    // Each account's arrivals: a Poisson process at its peak rate, thinned
    // to the rate of the moment.
    // (time, account order, account, labels, provisionable, duration, cancel)
    type Arrival = (i64, u32, u32, u32, u32, Option<i64>, Option<i64>);
    let mut arrivals: Vec<Arrival> = Vec::new();
    for (ai, a) in accounts.iter().enumerate() {
        let mut r = Rng::new(doc.seed, stream_of(&a.name));
        let account = w.intern_account(&mut interner, &a.name);
        let sets: Vec<(f64, u32, u32)> = a
            .mix
            .iter()
            .map(|(wt, l, p)| {
                (
                    *wt,
                    w.intern_set(&mut interner, l.clone()),
                    w.intern_set(&mut interner, p.clone()),
                )
            })
            .collect();
        let total_weight: f64 = sets.iter().map(|s| s.0).sum();
        let peak = a.max_rate();
        if peak <= 0.0 {
            continue;
        }
        let mut t = 0.0f64;
        loop {
            t += r.exponential(1.0 / peak);
            let at = t.round() as i64;
            if at > duration {
                break;
            }
            if r.unit() * peak > a.rate_at(at) {
                continue;
            }
            let mut pick = r.unit() * total_weight;
            let mut which = sets.len() - 1;
            for (i, s) in sets.iter().enumerate() {
                if pick < s.0 {
                    which = i;
                    break;
                }
                pick -= s.0;
            }
            let (labels, prov) = (sets[which].1, sets[which].2);
            let d = a.duration.draw(&mut r);
            let (dur, cancel) = match &a.cancel {
                Some((fraction, after)) if r.unit() < *fraction => (
                    None,
                    after.as_ref().map(|b| at.saturating_add(b.draw(&mut r))),
                ),
                _ => (Some(d), None),
            };
            arrivals.push((at, ai as u32, account, labels, prov, dur, cancel));
        }
    }
    arrivals.sort_by_key(|a| (a.0, a.1));
    let width = arrivals.len().max(1).to_string().len();
    for (n, (at, _, account, labels, provisionable, dur, cancel)) in
        arrivals.into_iter().enumerate()
    {
        w.tasks.push(Task {
            id: format!("t{n:0width$}").into(),
            at,
            account,
            labels,
            provisionable,
            tags: 0,
            duration: dur,
            cancel: cancel.filter(|&c| c <= duration),
        });
    }
    w.validate()
        .map_err(|e| err(format!("generated an invalid workload: {e}")))?;
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODEL: &str = r#"
seed = 7
pool = "ci"
duration = "2h"

[fleet.linux]
count = 10
labels = ["pool:ci", "os:linux"]
rotate = ["cache:a", "cache:b"]

[fleet.mac]
count = 2
labels = ["pool:ci", "os:mac"]
from = "30m"
to = 5400

[accounts.builders]
tasks_per_hour = 600
daily_cycle = 0.5
duration = { distribution = "lognormal", median = "2m", sigma = 0.5, max = "30m" }
bursts = [{ at = "1h", length = "10m", times = 3 }]
[[accounts.builders.tasks]]
weight = 3
labels = ["pool:ci", "os:linux"]
provisionable = ["cache:a"]
[[accounts.builders.tasks]]
labels = ["pool:ci", "os:mac"]

[accounts.try]
tasks_per_hour = 120
duration = { distribution = "exponential", mean = 60 }
until_cancelled = { fraction = 0.1, after = { distribution = "fixed", value = "10m" } }
"#;

    #[test]
    fn same_seed_same_workload() {
        let a = generate("m.toml", MODEL).unwrap();
        let b = generate("m.toml", MODEL).unwrap();
        let (mut x, mut y) = (Vec::new(), Vec::new());
        a.write(&mut x).unwrap();
        b.write(&mut y).unwrap();
        assert_eq!(x, y);
        let c = generate("m.toml", &MODEL.replace("seed = 7", "seed = 8")).unwrap();
        let mut z = Vec::new();
        c.write(&mut z).unwrap();
        assert_ne!(x, z);
    }

    #[test]
    fn follows_the_model() {
        let w = generate("m.toml", MODEL).unwrap();
        assert_eq!(w.pool, "ci");
        assert_eq!(w.duration, 7_200_000);
        assert_eq!(w.bots.len(), 12);
        assert_eq!(&*w.bots[0].id, "linux-00");
        assert_eq!(w.set(w.bots[1].labels), ["cache:b", "os:linux", "pool:ci"]);
        assert_eq!(w.bots[10].from, 1_800_000);
        assert_eq!(w.bots[10].to, Some(5_400_000));
        let count = |name: &str| {
            let id = w.accounts.iter().position(|a| a == name).unwrap() as u32;
            w.tasks.iter().filter(|t| t.account == id).count()
        };
        // builders: 600/h with a burst tripling 10 minutes (+200): about
        // 1,400 in two hours, scaled by the daily cycle at these hours.
        let b = count("builders");
        assert!((700..2000).contains(&b), "{b}");
        let t = count("try");
        assert!((180..300).contains(&t), "{t}");
        // Arrivals are in time order, with ids in that order.
        assert!(
            w.tasks
                .windows(2)
                .all(|p| p[0].at <= p[1].at && p[0].id < p[1].id)
        );
        // Durations within bounds; a tenth of try's tasks until cancelled.
        let cancelled = w.tasks.iter().filter(|t| t.duration.is_none()).count();
        assert!((5..60).contains(&cancelled), "{cancelled}");
        assert!(
            w.tasks
                .iter()
                .all(|t| t.duration.is_none_or(|d| d <= 1_800_000))
        );
        assert!(
            w.tasks
                .iter()
                .filter(|t| t.duration.is_none())
                .all(|t| t.cancel.is_none_or(|c| c == t.at + 600_000))
        );
    }

    #[test]
    fn adding_an_account_keeps_the_others() {
        let a = generate("m.toml", MODEL).unwrap();
        let more = format!(
            "{MODEL}\n[accounts.aaa]\ntasks_per_hour = 50\nduration = {{ distribution = \"fixed\", value = 5 }}\n"
        );
        let b = generate("m.toml", &more).unwrap();
        let of = |w: &Workload, name: &str| -> Vec<(i64, Option<i64>)> {
            let id = w.accounts.iter().position(|a| a == name).unwrap() as u32;
            w.tasks
                .iter()
                .filter(|t| t.account == id)
                .map(|t| (t.at, t.duration))
                .collect()
        };
        assert_eq!(of(&a, "builders"), of(&b, "builders"));
        assert_eq!(of(&a, "try"), of(&b, "try"));
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("duration = \"2h\"\nbogus = 1", "unknown field"),
            ("duration = \"forever\"", "duration"),
            (
                "duration = 10\n[accounts.a]\ntasks_per_hour = -1\nduration = { distribution = \"fixed\", value = 1 }",
                "accounts.a.tasks_per_hour",
            ),
            (
                "duration = 10\n[accounts.a]\ntasks_per_hour = 1\nduration = { distribution = \"zipf\" }",
                "accounts.a.duration.distribution",
            ),
            (
                "duration = 10\n[accounts.a]\ntasks_per_hour = 1\nduration = { distribution = \"lognormal\" }",
                "accounts.a.duration.median",
            ),
            (
                "duration = \"10d\"\n[accounts.a]\ntasks_per_hour = 1e9\nduration = { distribution = \"fixed\", value = 1 }",
                "at most",
            ),
            ("duration = 10\n[fleet.x]\ncount = 2000000", "at most"),
            (
                "duration = 10\n[fleet.x]\ncount = 2\nfrom = 5\nto = 5",
                "fleet.x.to",
            ),
        ];
        for (text, want) in cases {
            let e = generate("m.toml", text).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
