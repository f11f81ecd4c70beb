//! The HTML report: one self-contained page with SVG charts.
//!
//! The page carries everything inline (styles, charts as SVG) and no
//! scripts, so it can be mailed, attached to a design review, or opened
//! from disk years later. It shows, for one run or two compared (A in blue,
//! B in orange): fleet utilisation over time; per account, the bots it used
//! and the 95th percentile wait of its tasks by arrival time; and the
//! per-account, per-level table of the text report.

use std::fmt::Write as _;

use crate::clock::human;
use crate::render::differences;
use crate::report::{LevelRow, RunReport};

/// The colour of run A's lines.
pub const COLOR_A: &str = "#1f77b4";
/// The colour of run B's lines.
pub const COLOR_B: &str = "#ff7f0e";

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn account_name(a: &str) -> String {
    if a.is_empty() {
        "(no account)".to_owned()
    } else {
        a.to_owned()
    }
}

/// A "nice" upper bound and step for an axis from 0 to `max`.
fn nice_axis(max: f64) -> (f64, f64) {
    if !(max.is_finite() && max > 0.0) {
        return (1.0, 0.25);
    }
    let raw = max / 4.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    ((max / step).ceil() * step, step)
}

/// Time tick spacing (seconds) for a window.
fn time_step(duration_s: f64) -> f64 {
    const STEPS: [f64; 12] = [
        10.0, 30.0, 60.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 10800.0, 21600.0, 43200.0,
    ];
    STEPS
        .iter()
        .copied()
        .find(|s| duration_s / s <= 8.0)
        .unwrap_or(86_400.0)
}

struct Series<'a> {
    name: &'a str,
    color: &'a str,
    values: Vec<Option<f64>>,
}

/// A round upper bound and step for a time axis (seconds) from 0 to `max`.
fn time_axis(max: f64) -> (f64, f64) {
    const STEPS: [f64; 16] = [
        1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0,
        14400.0, 43200.0,
    ];
    if !(max.is_finite() && max > 0.0) {
        return (4.0, 1.0);
    }
    let step = STEPS
        .iter()
        .copied()
        .find(|s| max / s <= 5.0)
        .unwrap_or_else(|| (max / 5.0 / 86_400.0).ceil() * 86_400.0);
    ((max / step).ceil().max(1.0) * step, step)
}

/// How a chart's y axis is scaled.
enum Axis {
    /// From 0 to this value, in quarters.
    Fixed(f64),
    /// Round numbers.
    Count,
    /// Round durations (values in seconds).
    Time,
}

/// An SVG line chart `width` wide; `fmt` formats y-axis values.
fn line_chart(
    title: &str,
    width: f64,
    bucket_s: f64,
    duration_s: f64,
    series: &[Series<'_>],
    fmt: &dyn Fn(f64) -> String,
    axis: Axis,
) -> String {
    let (w, h) = (width, 240.0);
    let (left, right, top, bottom) = (64.0, 28.0, 30.0, 34.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let data_max = series
        .iter()
        .flat_map(|s| s.values.iter().flatten())
        .fold(0.0f64, |m, &v| m.max(v));
    let (ymax, ystep) = match axis {
        Axis::Fixed(m) => (m, m / 4.0),
        Axis::Count => nice_axis(data_max),
        Axis::Time => time_axis(data_max),
    };
    let x = |t: f64| left + pw * (t / duration_s).clamp(0.0, 1.0);
    let y = |v: f64| top + ph * (1.0 - (v / ymax).clamp(0.0, 1.0));
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{t}">"#,
        t = esc(title)
    );
    let _ = write!(
        s,
        r#"<text x="{left}" y="18" class="ctitle">{}</text>"#,
        esc(title)
    );
    // Grid and y labels.
    let mut v = 0.0;
    while v <= ymax + ystep * 0.01 {
        let yy = y(v);
        let _ = write!(
            s,
            r##"<line x1="{left}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#ddd" stroke-width="1"/><text x="{:.1}" y="{:.1}" class="ylab">{}</text>"##,
            left + pw,
            left - 6.0,
            yy + 4.0,
            esc(&fmt(v))
        );
        v += ystep;
    }
    // Time ticks.
    let step = time_step(duration_s);
    let mut t = 0.0;
    while t <= duration_s + 1e-9 {
        let xx = x(t);
        let _ = write!(
            s,
            r##"<line x1="{xx:.1}" y1="{:.1}" x2="{xx:.1}" y2="{:.1}" stroke="#999" stroke-width="1"/><text x="{xx:.1}" y="{:.1}" class="xlab">{}</text>"##,
            top + ph,
            top + ph + 4.0,
            top + ph + 18.0,
            esc(&human((t * 1e3) as i64))
        );
        t += step;
    }
    let _ = write!(
        s,
        r##"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999" stroke-width="1"/>"##
    );
    // Lines: one path per run of consecutive values, each point at the
    // middle of its bucket.
    for se in series {
        let mut d = String::new();
        let mut pen_down = false;
        for (i, v) in se.values.iter().enumerate() {
            match v {
                Some(v) => {
                    let tx = ((i as f64 + 0.5) * bucket_s).min(duration_s);
                    let _ = write!(
                        d,
                        "{}{:.1},{:.1} ",
                        if pen_down { "L" } else { "M" },
                        x(tx),
                        y(*v)
                    );
                    pen_down = true;
                }
                None => pen_down = false,
            }
        }
        if !d.is_empty() {
            let _ = write!(
                s,
                r#"<path d="{}" fill="none" stroke="{}" stroke-width="2.5" stroke-linejoin="round"/>"#,
                d.trim_end(),
                se.color
            );
        }
    }
    // Legend.
    let mut lx = left + pw - 12.0;
    for se in series.iter().rev() {
        let label_w = 8.0 * se.name.chars().count() as f64 + 24.0;
        lx -= label_w;
        let _ = write!(
            s,
            r#"<rect x="{lx:.1}" y="8" width="12" height="12" fill="{}"/><text x="{:.1}" y="18" class="legend">{}</text>"#,
            se.color,
            lx + 16.0,
            esc(se.name)
        );
    }
    s.push_str("</svg>");
    s
}

fn secs(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_owned(), |s| human((s * 1e3).round() as i64))
}

fn pct(v: f64) -> String {
    format!("{:.1}%", v * 100.0)
}

const STYLE: &str = "
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:24px auto;max-width:1100px;color:#222;padding:0 16px}
h1{font-size:1.5em;margin-bottom:4px}h2{font-size:1.2em;margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:1.05em;margin:20px 0 4px}
.runs{margin:8px 0 16px;padding:0;list-style:none}.runs li{margin:2px 0}
.swatch{display:inline-block;width:12px;height:12px;margin-right:6px;vertical-align:-1px}
.chart{display:block;margin:8px 0;max-width:100%;height:auto}
.ctitle{font-size:13px;font-weight:600;fill:#222}.ylab{font-size:11px;fill:#555;text-anchor:end}
.xlab{font-size:11px;fill:#555;text-anchor:middle}.legend{font-size:12px;fill:#222}
table{border-collapse:collapse;font-size:13px;margin:8px 0}th,td{padding:3px 8px;border-bottom:1px solid #eee;text-align:right;white-space:nowrap}
th{background:#f6f6f6;position:sticky;top:0}td.l,th.l{text-align:left}
.worse{color:#b00020}.better{color:#1b7f3b}.note{color:#555;font-size:13px}
.grid{display:flex;flex-wrap:wrap;gap:8px}.grid .chart{flex:1 1 480px}
";

fn describe(r: &RunReport) -> String {
    match &r.simulation {
        Some(s) => format!(
            "simulated with {}: step {}, idle bots poll every {}, {}{}",
            r.label,
            human((s.step_s * 1e3) as i64),
            human((s.poll_s * 1e3) as i64),
            if s.cancel_check_s > 0.0 {
                format!(
                    "cancellations checked every {}",
                    human((s.cancel_check_s * 1e3) as i64)
                )
            } else {
                "cancellations heard at the next step".to_owned()
            },
            if s.disable_preemption {
                ", preemption disabled"
            } else {
                ""
            }
        ),
        None => "recorded in the event log".to_owned(),
    }
}

fn delta_class(d: Option<f64>, higher_is_worse: bool) -> &'static str {
    match d {
        Some(d) if d.abs() < 1e-9 => "",
        Some(d) if (d > 0.0) == higher_is_worse => "worse",
        Some(_) => "better",
        None => "",
    }
}

fn signed_secs(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(s) if s > 0.0 => format!("+{}", human((s * 1e3).round() as i64)),
        Some(s) => human((s * 1e3).round() as i64),
    }
}

fn single_table(r: &RunReport) -> String {
    let mut s = String::from(
        "<table><thead><tr><th class=l>Account</th><th class=l>Level</th><th>Tasks</th><th>Wait p50</th><th>p95</th><th>p99</th><th>Used bot-h</th><th>Entitled bot-h</th><th>Used/entitled</th><th>Fleet share</th><th>Preempted</th><th>Preempting</th><th>Promoted</th><th>Demoted</th></tr></thead><tbody>",
    );
    for a in &r.accounts {
        let rows: Vec<&LevelRow> = a.levels.iter().chain(std::iter::once(&a.all)).collect();
        for (i, l) in rows.iter().enumerate() {
            let _ = write!(
                s,
                "<tr><td class=l>{}</td><td class=l>{}</td><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                if i == 0 {
                    esc(&account_name(&a.account))
                } else {
                    String::new()
                },
                esc(&l.level),
                l.tasks,
                if l.waiting_at_end > 0 {
                    format!(" ({} waiting)", l.waiting_at_end)
                } else {
                    String::new()
                },
                secs(l.wait_p50_s),
                secs(l.wait_p95_s),
                secs(l.wait_p99_s),
                l.used_bot_s / 3600.0,
                l.entitled_bot_s
                    .map_or_else(|| "–".into(), |e| format!("{:.1}", e / 3600.0)),
                l.used_of_entitled.map_or_else(|| "–".into(), pct),
                pct(l.fleet_share),
                l.preempted,
                l.preempting,
                l.promoted,
                l.demoted
            );
        }
    }
    s.push_str("</tbody></table>");
    s
}

fn compare_table(a: &RunReport, b: &RunReport) -> String {
    let mut s = String::from(
        "<table><thead><tr><th class=l>Account</th><th class=l>Level</th><th>Tasks A</th><th>B</th><th>Wait p50 A</th><th>B</th><th>Δ</th><th>p95 A</th><th>B</th><th>Δ</th><th>p99 A</th><th>B</th><th>Δ</th><th>Fleet A</th><th>B</th><th>Preempted A/B</th><th>Preempting A/B</th><th>Promoted A/B</th><th>Demoted A/B</th></tr></thead><tbody>",
    );
    let mut last = None;
    for d in differences(a, b) {
        let name = if last.as_ref() == Some(&d.account) {
            String::new()
        } else {
            esc(&account_name(&d.account))
        };
        last = Some(d.account.clone());
        let _ = write!(
            s,
            "<tr><td class=l>{name}</td><td class=l>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td>{}</td><td>{}</td><td>{}/{}</td><td>{}/{}</td><td>{}/{}</td><td>{}/{}</td></tr>",
            esc(&d.level),
            d.tasks[0],
            d.tasks[1],
            secs(d.wait_p50_s[0]),
            secs(d.wait_p50_s[1]),
            delta_class(d.wait_p50_s[2], true),
            signed_secs(d.wait_p50_s[2]),
            secs(d.wait_p95_s[0]),
            secs(d.wait_p95_s[1]),
            delta_class(d.wait_p95_s[2], true),
            signed_secs(d.wait_p95_s[2]),
            secs(d.wait_p99_s[0]),
            secs(d.wait_p99_s[1]),
            delta_class(d.wait_p99_s[2], true),
            signed_secs(d.wait_p99_s[2]),
            pct(d.fleet_share[0]),
            pct(d.fleet_share[1]),
            d.preempted[0],
            d.preempted[1],
            d.preempting[0],
            d.preempting[1],
            d.promoted[0],
            d.promoted[1],
            d.demoted[0],
            d.demoted[1]
        );
    }
    s.push_str("</tbody></table>");
    s
}

/// A self-contained page for one run, or two compared.
pub fn page(a: &RunReport, b: Option<&RunReport>) -> String {
    let runs: Vec<(&str, &str, &RunReport)> = std::iter::once(("A", COLOR_A, a))
        .chain(b.map(|b| ("B", COLOR_B, b)))
        .collect();
    let mut s = String::new();
    let title = match b {
        Some(_) => format!(
            "Pool {}: {} against {}",
            a.pool,
            a.label,
            b.map_or("", |b| &b.label)
        ),
        None => format!("Pool {}: {}", a.pool, a.label),
    };
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{}</title><style>{STYLE}</style></head><body>",
        esc(&title)
    );
    let _ = write!(s, "<h1>{}</h1>", esc(&title));
    let _ = write!(
        s,
        "<p class=note>{} from {}, {} bots, {} tasks. Time on the charts is from the start of the window; a point is a {} bucket.</p><ul class=runs>",
        human((a.duration_s * 1e3) as i64),
        esc(&a.start),
        a.fleet.bots,
        a.counts.arrived,
        human((a.bucket_s * 1e3) as i64)
    );
    for (name, color, r) in &runs {
        let c = &r.counts;
        let _ = write!(
            s,
            "<li><span class=swatch style=\"background:{color}\"></span><b>{name}</b> — {}: fleet {} busy; {} started, {} waiting and {} running at the end; {} preemptions, {} promotions, {} demotions, {} pickup timeouts.</li>",
            esc(&describe(r)),
            pct(r.fleet.utilisation),
            c.started,
            c.waiting_at_end,
            c.running_at_end,
            c.preemptions,
            c.promotions,
            c.demotions,
            c.pickup_timeouts
        );
    }
    s.push_str("</ul>");

    s.push_str("<h2>Fleet</h2>");
    let util: Vec<Series<'_>> = runs
        .iter()
        .map(|(name, color, r)| Series {
            name,
            color,
            values: r
                .fleet
                .utilisation_series
                .iter()
                .map(|v| Some(v * 100.0))
                .collect(),
        })
        .collect();
    s.push_str(&line_chart(
        "Fleet utilisation (% of available bots busy)",
        1060.0,
        a.bucket_s,
        a.duration_s,
        &util,
        &|v| format!("{v:.0}%"),
        Axis::Fixed(100.0),
    ));

    s.push_str("<h2>Accounts</h2>");
    let mut names: Vec<String> = Vec::new();
    for (_, _, r) in &runs {
        for acc in &r.accounts {
            if !names.contains(&acc.account) {
                names.push(acc.account.clone());
            }
        }
    }
    for name in &names {
        let _ = write!(s, "<h3>{}</h3><div class=grid>", esc(&account_name(name)));
        let find = |r: &RunReport| r.accounts.iter().find(|x| &x.account == name).cloned();
        let usage: Vec<Series<'_>> = runs
            .iter()
            .map(|(n, c, r)| Series {
                name: n,
                color: c,
                values: find(r)
                    .map_or_else(Vec::new, |x| x.usage_series.into_iter().map(Some).collect()),
            })
            .collect();
        s.push_str(&line_chart(
            "Bots used (average per bucket)",
            526.0,
            a.bucket_s,
            a.duration_s,
            &usage,
            &|v| format!("{v}"),
            Axis::Count,
        ));
        let waits: Vec<Series<'_>> = runs
            .iter()
            .map(|(n, c, r)| Series {
                name: n,
                color: c,
                values: find(r).map_or_else(Vec::new, |x| x.wait_p95_series),
            })
            .collect();
        s.push_str(&line_chart(
            "Wait p95 of the tasks arriving in each bucket",
            526.0,
            a.bucket_s,
            a.duration_s,
            &waits,
            &|v| human((v * 1e3).round() as i64),
            Axis::Time,
        ));
        s.push_str("</div>");
    }

    s.push_str("<h2>Per account and level</h2>");
    match b {
        Some(b) => s.push_str(&compare_table(a, b)),
        None => s.push_str(&single_table(a)),
    }
    s.push_str(
        "<p class=note>Wait: time queued before running, summed over a task's spells in the queue; tasks still waiting at the end count with what they waited so far. Level: the level of a task's first run. Used: bot-seconds from assignment to completion or preemption. Entitled: charge rate × window. Preempting: preemptions caused, at the preempting task's level. Promoted: into the level; demoted: out of it. Δ = B − A.</p>",
    );
    s.push_str("</body></html>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{AccountReport, FleetReport};

    fn report(label: &str) -> RunReport {
        RunReport {
            label: label.into(),
            pool: "p<&>".into(),
            start: "2030-01-01T00:00:00Z".into(),
            duration_s: 3600.0,
            bucket_s: 900.0,
            fleet: FleetReport {
                bots: 3,
                utilisation_series: vec![0.5, 0.7, 1.0, 0.2],
                ..Default::default()
            },
            accounts: vec![AccountReport {
                account: "a\"b".into(),
                usage_series: vec![1.0, 2.0, 3.0, 0.5],
                wait_p95_series: vec![Some(10.0), None, Some(30.0), Some(5.0)],
                all: LevelRow {
                    level: "all".into(),
                    ..Default::default()
                },
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn escapes_and_draws() {
        let a = report("now.toml");
        let b = report("<script>");
        let p = page(&a, Some(&b));
        assert!(!p.contains("<script>"));
        assert!(p.contains("&lt;script&gt;"));
        assert!(p.contains("p&lt;&amp;&gt;"));
        assert!(p.contains("a&quot;b"));
        // Three charts (fleet, usage, waits), each with both runs' lines.
        assert_eq!(p.matches("<svg").count(), 3);
        assert_eq!(p.matches(&format!("stroke=\"{COLOR_A}\"")).count(), 3);
        assert_eq!(p.matches(&format!("stroke=\"{COLOR_B}\"")).count(), 3);
        // The wait series has a gap: two path pieces.
        assert!(p.contains(" M"), "{p}");
        let single = page(&a, None);
        assert!(!single.contains(COLOR_B));
    }

    #[test]
    fn axes_are_round() {
        assert_eq!(nice_axis(7.0), (8.0, 2.0));
        assert_eq!(nice_axis(95.0), (100.0, 25.0));
        assert_eq!(nice_axis(0.0), (1.0, 0.25));
        assert_eq!(time_step(86_400.0), 10800.0);
        assert_eq!(time_step(3600.0), 600.0);
        assert_eq!(time_axis(3900.0), (4500.0, 900.0));
        assert_eq!(time_axis(50.0), (50.0, 10.0));
        assert_eq!(time_axis(0.0), (4.0, 1.0));
    }
}
