//! Reports as text tables and JSON documents.
//!
//! One run prints a header (window, fleet, totals) and one table with a row
//! per account and level; two runs (`--compare`) print both side by side
//! with their differences. The JSON document carries the whole
//! [`RunReport`]s (and the differences), for scripts; the HTML report is in
//! [`crate::html`].

use std::fmt::Write as _;

use serde::Serialize;

use crate::clock::human;
use crate::report::{AccountReport, LevelRow, RunReport};

/// Aligned columns, two spaces apart, without trailing spaces; numeric
/// columns are right-aligned.
struct Table {
    header: Vec<String>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(cols: &[(&str, bool)]) -> Table {
        Table {
            header: cols.iter().map(|c| c.0.to_owned()).collect(),
            right: cols.iter().map(|c| c.1).collect(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self) -> String {
        let n = self.header.len();
        let mut widths = vec![0usize; n];
        for row in std::iter::once(&self.header).chain(&self.rows) {
            for (i, c) in row.iter().enumerate().take(n) {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, width) in widths.iter().enumerate() {
                let cell = row.get(i).map(String::as_str).unwrap_or("");
                let pad = width - cell.chars().count();
                if i > 0 {
                    line.push_str("  ");
                }
                if self.right[i] {
                    line.push_str(&" ".repeat(pad));
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    line.push_str(&" ".repeat(pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

fn secs(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |s| human((s * 1e3).round() as i64))
}

fn pct(v: f64) -> String {
    format!("{:.1}%", v * 100.0)
}

fn bot_hours(s: f64) -> String {
    let h = s / 3600.0;
    if h >= 100.0 {
        format!("{h:.0}")
    } else if h >= 1.0 {
        format!("{h:.1}")
    } else {
        format!("{h:.2}")
    }
}

fn account_name(a: &str) -> String {
    if a.is_empty() {
        "(no account)".to_owned()
    } else {
        a.to_owned()
    }
}

fn describe(r: &RunReport) -> String {
    let mut out = String::new();
    let how = match &r.simulation {
        Some(s) => format!(
            "simulated with {} (step {}, poll every {}, cancellations checked {}{})",
            r.label,
            human((s.step_s * 1e3) as i64),
            human((s.poll_s * 1e3) as i64),
            if s.cancel_check_s > 0.0 {
                format!("every {}", human((s.cancel_check_s * 1e3) as i64))
            } else {
                "at the next step".to_owned()
            },
            if s.disable_preemption {
                ", preemption disabled"
            } else {
                ""
            }
        ),
        None => format!("{} (from the event log)", r.label),
    };
    let _ = writeln!(
        out,
        "{}: pool {:?}, {} from {}, {} bots",
        r.label,
        r.pool,
        human((r.duration_s * 1e3) as i64),
        r.start,
        r.fleet.bots
    );
    let _ = writeln!(out, "  {how}");
    let c = &r.counts;
    let _ = writeln!(
        out,
        "  fleet {} busy ({} of {} bot-hours); tasks: {} arrived, {} started, {} waiting and {} running at the end, {} gone before starting",
        pct(r.fleet.utilisation),
        bot_hours(r.fleet.used_bot_s),
        bot_hours(r.fleet.available_bot_s),
        c.arrived,
        c.started,
        c.waiting_at_end,
        c.running_at_end,
        c.gone_before_start
    );
    let _ = writeln!(
        out,
        "  {} preemptions, {} promotions, {} demotions, {} pickup timeouts",
        c.preemptions, c.promotions, c.demotions, c.pickup_timeouts
    );
    let _ = writeln!(out, "  fleet busy over time: {}", over_time(r));
    out
}

/// Fleet utilisation in at most twelve equal parts of the window, each
/// labelled with its start.
fn over_time(r: &RunReport) -> String {
    let series = &r.fleet.utilisation_series;
    let n = series.len();
    if n == 0 {
        return "-".into();
    }
    let parts = n.min(12);
    (0..parts)
        .map(|i| {
            let (from, to) = (i * n / parts, (i + 1) * n / parts);
            let slice = &series[from..to.max(from + 1).min(n)];
            let mean = slice.iter().sum::<f64>() / slice.len() as f64;
            format!(
                "{} {:.0}%",
                human((from as f64 * r.bucket_s * 1e3) as i64),
                mean * 100.0
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn rows(a: &AccountReport) -> impl Iterator<Item = &LevelRow> {
    a.levels.iter().chain(std::iter::once(&a.all))
}

/// One run as text.
pub fn table(r: &RunReport) -> String {
    let mut out = describe(r);
    out.push('\n');
    let mut t = Table::new(&[
        ("ACCOUNT", false),
        ("LEVEL", false),
        ("TASKS", true),
        ("WAIT P50", true),
        ("P95", true),
        ("P99", true),
        ("USED BOT-H", true),
        ("ENTITLED", true),
        ("USED/ENT", true),
        ("FLEET", true),
        ("PREEMPTED", true),
        ("PREEMPTING", true),
        ("PROMOTED", true),
        ("DEMOTED", true),
    ]);
    for a in &r.accounts {
        for (i, l) in rows(a).enumerate() {
            let tasks = if l.waiting_at_end > 0 {
                format!("{} ({} waiting)", l.tasks, l.waiting_at_end)
            } else {
                l.tasks.to_string()
            };
            t.row(vec![
                if i == 0 {
                    account_name(&a.account)
                } else {
                    String::new()
                },
                l.level.clone(),
                tasks,
                secs(l.wait_p50_s),
                secs(l.wait_p95_s),
                secs(l.wait_p99_s),
                bot_hours(l.used_bot_s),
                l.entitled_bot_s.map_or_else(|| "-".into(), bot_hours),
                l.used_of_entitled.map_or_else(|| "-".into(), pct),
                pct(l.fleet_share),
                l.preempted.to_string(),
                l.preempting.to_string(),
                l.promoted.to_string(),
                l.demoted.to_string(),
            ]);
        }
    }
    out.push_str(&t.render());
    out
}

/// The differences of one account and level between two runs (B − A).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Difference {
    /// The account.
    pub account: String,
    /// The level (`P0`..`P4`, `free`, `all`).
    pub level: String,
    /// Tasks in A and B.
    pub tasks: [u64; 2],
    /// Wait p50 in A and B (seconds) and B − A.
    pub wait_p50_s: [Option<f64>; 3],
    /// Wait p95 in A and B (seconds) and B − A.
    pub wait_p95_s: [Option<f64>; 3],
    /// Wait p99 in A and B (seconds) and B − A.
    pub wait_p99_s: [Option<f64>; 3],
    /// Fleet share in A and B and B − A.
    pub fleet_share: [f64; 3],
    /// Used bot-seconds in A and B and B − A.
    pub used_bot_s: [f64; 3],
    /// Preemptions suffered in A and B.
    pub preempted: [u64; 2],
    /// Preemptions caused in A and B.
    pub preempting: [u64; 2],
    /// Promotions in A and B.
    pub promoted: [u64; 2],
    /// Demotions in A and B.
    pub demoted: [u64; 2],
}

fn diff(a: Option<f64>, b: Option<f64>) -> [Option<f64>; 3] {
    [a, b, a.zip(b).map(|(a, b)| b - a)]
}

/// Every account and level of either run, with both figures.
pub fn differences(a: &RunReport, b: &RunReport) -> Vec<Difference> {
    let mut keys: Vec<(String, String)> = Vec::new();
    for r in [a, b] {
        for acc in &r.accounts {
            for l in rows(acc) {
                let k = (acc.account.clone(), l.level.clone());
                if !keys.contains(&k) {
                    keys.push(k);
                }
            }
        }
    }
    let order = |level: &str| match level {
        "all" => 9,
        "free" => 5,
        p => p[1..].parse::<u8>().unwrap_or(8),
    };
    keys.sort_by(|x, y| x.0.cmp(&y.0).then(order(&x.1).cmp(&order(&y.1))));
    let find = |r: &RunReport, acc: &str, level: &str| -> LevelRow {
        r.accounts
            .iter()
            .find(|x| x.account == acc)
            .and_then(|x| rows(x).find(|l| l.level == level).cloned())
            .unwrap_or_default()
    };
    keys.into_iter()
        .map(|(acc, level)| {
            let (x, y) = (find(a, &acc, &level), find(b, &acc, &level));
            Difference {
                tasks: [x.tasks, y.tasks],
                wait_p50_s: diff(x.wait_p50_s, y.wait_p50_s),
                wait_p95_s: diff(x.wait_p95_s, y.wait_p95_s),
                wait_p99_s: diff(x.wait_p99_s, y.wait_p99_s),
                fleet_share: [x.fleet_share, y.fleet_share, y.fleet_share - x.fleet_share],
                used_bot_s: [x.used_bot_s, y.used_bot_s, y.used_bot_s - x.used_bot_s],
                preempted: [x.preempted, y.preempted],
                preempting: [x.preempting, y.preempting],
                promoted: [x.promoted, y.promoted],
                demoted: [x.demoted, y.demoted],
                account: acc,
                level,
            }
        })
        .collect()
}

fn signed_secs(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(s) if s > 0.0 => format!("+{}", human((s * 1e3).round() as i64)),
        Some(s) => human((s * 1e3).round() as i64),
    }
}

fn signed_pct(v: f64) -> String {
    let p = v * 100.0;
    if p.abs() < 0.05 {
        "0.0".into()
    } else {
        format!("{p:+.1}")
    }
}

/// Two runs side by side: A, B and B − A.
pub fn compare_table(a: &RunReport, b: &RunReport) -> String {
    let mut out = String::new();
    out.push_str("A = ");
    out.push_str(&describe(a));
    out.push_str("B = ");
    out.push_str(&describe(b));
    let _ = writeln!(
        out,
        "fleet busy: A {}, B {} ({} points)\n",
        pct(a.fleet.utilisation),
        pct(b.fleet.utilisation),
        signed_pct(b.fleet.utilisation - a.fleet.utilisation)
    );
    let mut t = Table::new(&[
        ("ACCOUNT", false),
        ("LEVEL", false),
        ("TASKS A", true),
        ("B", true),
        ("WAIT P50 A", true),
        ("B", true),
        ("Δ", true),
        ("P95 A", true),
        ("B", true),
        ("Δ", true),
        ("P99 A", true),
        ("B", true),
        ("Δ", true),
        ("FLEET A", true),
        ("B", true),
        ("Δ PTS", true),
        ("PREEMPTED A/B", true),
        ("PREEMPTING A/B", true),
        ("PROMOTED A/B", true),
        ("DEMOTED A/B", true),
    ]);
    let mut last = None;
    for d in differences(a, b) {
        let name = if last.as_ref() == Some(&d.account) {
            String::new()
        } else {
            account_name(&d.account)
        };
        last = Some(d.account.clone());
        t.row(vec![
            name,
            d.level.clone(),
            d.tasks[0].to_string(),
            d.tasks[1].to_string(),
            secs(d.wait_p50_s[0]),
            secs(d.wait_p50_s[1]),
            signed_secs(d.wait_p50_s[2]),
            secs(d.wait_p95_s[0]),
            secs(d.wait_p95_s[1]),
            signed_secs(d.wait_p95_s[2]),
            secs(d.wait_p99_s[0]),
            secs(d.wait_p99_s[1]),
            signed_secs(d.wait_p99_s[2]),
            pct(d.fleet_share[0]),
            pct(d.fleet_share[1]),
            signed_pct(d.fleet_share[2]),
            format!("{}/{}", d.preempted[0], d.preempted[1]),
            format!("{}/{}", d.preempting[0], d.preempting[1]),
            format!("{}/{}", d.promoted[0], d.promoted[1]),
            format!("{}/{}", d.demoted[0], d.demoted[1]),
        ]);
    }
    out.push_str(&t.render());
    out
}

/// The JSON document of `simulate -o json`: the runs and, for two, their
/// differences.
#[derive(Serialize)]
pub struct Document<'a> {
    /// The runs: one, or A and B.
    pub runs: Vec<&'a RunReport>,
    /// B − A per account and level (two runs only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub differences: Option<Vec<Difference>>,
}

impl<'a> Document<'a> {
    /// The document of one run, or of a comparison.
    pub fn new(a: &'a RunReport, b: Option<&'a RunReport>) -> Document<'a> {
        Document {
            runs: std::iter::once(a).chain(b).collect(),
            differences: b.map(|b| differences(a, b)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utilisation_over_time_in_twelve_parts() {
        let r = RunReport {
            bucket_s: 600.0,
            fleet: crate::report::FleetReport {
                utilisation_series: (0..144).map(|i| if i < 72 { 0.5 } else { 1.0 }).collect(),
                ..Default::default()
            },
            ..Default::default()
        };
        let s = over_time(&r);
        assert!(s.starts_with("0s 50%, 2h00m 50%"), "{s}");
        assert!(s.ends_with("22h00m 100%"), "{s}");
        assert_eq!(s.matches('%').count(), 12);
        let short = RunReport {
            bucket_s: 1.0,
            fleet: crate::report::FleetReport {
                utilisation_series: vec![0.25, 0.75],
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(over_time(&short), "0s 25%, 1s 75%");
        assert_eq!(over_time(&RunReport::default()), "-");
    }
}
