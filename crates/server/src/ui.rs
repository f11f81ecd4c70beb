//! The read-only web dashboard at `/ui/`, on the server's port.
//!
//! Pages are rendered on the server with `maud` (templates checked at
//! compile time, every interpolated value escaped) and charts are inline
//! SVG, so the pages need no JavaScript, no build step and no external
//! asset; the pool page refreshes itself with a `<meta>` tag. Each page
//! reads the same state the RPCs do, through [`Insight`]: the pool through
//! [`crate::pool::PoolRef::view`], the figures through the reports. A pool
//! served by another replica is not proxied; the page names its owner.
//!
//! Pages: `/ui/` (pools), `/ui/pool?id=P` (accounts, levels, charts, idle
//! bots), `/ui/task?pool=P&id=T` (the explanation), `/ui/account?pool=P&id=A`
//! (the report), and with `[auth]` `/ui/signin` (a form that takes a token
//! and starts a session, [`crate::auth::session`]) and `/ui/signout`.
//!
//! With `[auth]` the auth layer admits a page only for a principal with
//! `view` on some pool and leaves its [`Access`]; each page then checks the
//! pool it shows, and the pools page lists only the pools the principal may
//! view, exactly as the RPCs do. The token typed into the sign-in form is
//! checked and forgotten: it is never logged, stored or shown again.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Form, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, routing::post};
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;

use qscheduler_core::explain::{Eta, Explanation, TaskState};
use qscheduler_core::{FREE_PRIORITY, NUM_PRIORITIES, Time};

use crate::auth::layer::{PolicyCell, SIGN_IN, SIGN_OUT};
use crate::auth::session::{self, Sessions, SignInError};
use crate::auth::{Access, check_pool};
use crate::insight::{DEFAULT_REPORT_WINDOW_SECS, Insight, report_window};
use crate::pool::PoolRef;
use crate::registry::{Location, PoolStatus, Registry};
use crate::report::{MINUTE_NANOS, Report};

#[derive(Clone)]
struct Ui {
    insight: Arc<Insight>,
    registry: Arc<Registry>,
    /// `[auth]`, when the server has it.
    policy: Option<Arc<PolicyCell>>,
    sessions: Arc<Sessions>,
}

/// Bytes a sign-in form may take (a token is at most 16 KiB).
const SIGN_IN_BODY_LIMIT: usize = 64 * 1024;

/// The dashboard's routes: the pages, and the sign-in and sign-out that
/// start and end `sessions` under `policy` (`None`: no `[auth]`).
pub fn router(
    insight: Arc<Insight>,
    registry: Arc<Registry>,
    policy: Option<Arc<PolicyCell>>,
    sessions: Arc<Sessions>,
) -> axum::Router {
    axum::Router::new()
        .route(
            "/ui",
            get(|| async { axum::response::Redirect::permanent("/ui/") }),
        )
        .route("/ui/", get(pools_page))
        .route("/ui/pool", get(pool_page))
        .route("/ui/task", get(task_page))
        .route("/ui/account", get(account_page))
        .route(
            SIGN_IN,
            get(sign_in_page)
                .post(sign_in)
                .layer(DefaultBodyLimit::max(SIGN_IN_BODY_LIMIT)),
        )
        .route(
            SIGN_OUT,
            post(sign_out).layer(DefaultBodyLimit::max(SIGN_IN_BODY_LIMIT)),
        )
        .with_state(Ui {
            insight,
            registry,
            policy,
            sessions,
        })
}

/// The caller of a page, as the auth layer found it.
type Caller = Option<Extension<Access>>;

fn caller_name(c: &Caller) -> Option<&str> {
    c.as_ref().map(|Extension(a)| a.principal.name.as_str())
}

#[derive(Deserialize)]
struct PoolQuery {
    id: String,
}

#[derive(Deserialize)]
struct ItemQuery {
    pool: String,
    id: String,
    window: Option<String>,
}

/// Percent-encodes a query value.
pub(crate) fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1200px}\
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}\
th{background:#f3f3f3}td.l,th.l{text-align:left}h1 a{color:inherit;text-decoration:none}\
.reason{background:#fff6e0;border-left:4px solid #e0a000;padding:.4em .8em;margin:.3em 0}\
.code{font-family:monospace;color:#555}.neg{color:#b00020}.pos{color:#006a00}\
.bar{display:inline-block;height:.8em;background:#4a7bd0;vertical-align:middle}\
figure{display:inline-block;margin:0 1em 1em 0}figcaption{font-size:.9em;color:#555}\
nav form.signout{display:inline;float:right;font-size:.9em;color:#555}";

fn page(title: &str, refresh: Option<u32>, body: Markup) -> Response {
    page_as(None, title, refresh, body)
}

/// A page for a signed-in `user` (who gets a sign-out button).
fn page_as(user: Option<&str>, title: &str, refresh: Option<u32>, body: Markup) -> Response {
    let doc = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                @if let Some(r) = refresh { meta http-equiv="refresh" content=(r); }
                title { (title) " · qscheduler" }
                style { (maud::PreEscaped(STYLE)) }
            }
            body {
                nav {
                    a href="/ui/" { "qscheduler" }
                    @if let Some(u) = user {
                        form.signout method="post" action=(SIGN_OUT) {
                            "signed in as " (u) " "
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                (body)
            }
        }
    };
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        doc.into_string(),
    )
        .into_response()
}

fn error_page(status: StatusCode, msg: &str) -> Response {
    let mut r = page("error", None, html! { h1 { "Error" } p { (msg) } });
    *r.status_mut() = status;
    r
}

/// The pool if it is served here and the caller may view it, else the
/// page to show instead.
async fn local_pool(ui: &Ui, caller: &Caller, id: &str) -> Result<PoolRef, Response> {
    if let Err(s) = crate::translate::pool_id(id, "pool id", ui.insight.limits()) {
        return Err(error_page(StatusCode::BAD_REQUEST, s.message()));
    }
    // Before looking the pool up: who may not view it does not learn
    // whether it exists.
    let access = caller.as_ref().map(|Extension(a)| a);
    if let Err(s) = check_pool(access, ui.policy.is_some(), id) {
        return Err(error_page(StatusCode::FORBIDDEN, s.message()));
    }
    match ui.registry.locate(id, 0).await {
        Ok(Location::Local(p)) => Ok(p),
        Ok(Location::Remote(owner)) => Err(error_page(
            StatusCode::OK,
            &format!(
                "pool {id} is served by replica {} at {}: open its dashboard there",
                owner.replica_id, owner.address
            ),
        )),
        Err(e) => Err(error_page(
            StatusCode::NOT_FOUND,
            &format!("pool {id}: {e}"),
        )),
    }
}

fn time(t: Time) -> String {
    let (y, m, d, rem) = qscheduler_core::time::civil_from_unix(t.to_unix().0);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn dur(secs: f64) -> String {
    if !secs.is_finite() {
        return "–".into();
    }
    let s = secs.abs();
    let sign = if secs < 0.0 { "-" } else { "" };
    if s < 120.0 {
        format!("{sign}{s:.0} s")
    } else if s < 7200.0 {
        format!("{sign}{:.1} min", s / 60.0)
    } else {
        format!("{sign}{:.1} h", s / 3600.0)
    }
}

fn level_name(l: i32) -> String {
    match l {
        -1 => "sits out".into(),
        l if l == i32::from(FREE_PRIORITY) => "free".into(),
        l => format!("P{l}"),
    }
}

async fn pools_page(State(ui): State<Ui>, caller: Caller) -> Response {
    let access = caller.as_ref().map(|Extension(a)| a);
    if access.is_none() && ui.policy.is_some() {
        return error_page(StatusCode::UNAUTHORIZED, "sign in first");
    }
    let pools = match ui.registry.list().await {
        Ok(p) => p,
        Err(e) => return error_page(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    // Only the pools the caller may view, as ListPools answers.
    let pools: Vec<_> = pools
        .into_iter()
        .filter(|(id, _)| access.is_none_or(|a| a.check_pool(id).is_ok()))
        .collect();
    page_as(
        caller_name(&caller),
        "pools",
        None,
        html! {
            h1 { "Pools" }
            table {
                tr { th.l { "pool" } th.l { "state" } }
                @for (id, status) in &pools {
                    tr {
                        td.l { a href={ "/ui/pool?id=" (enc(id)) } { (id) } }
                        td.l { (match status {
                            PoolStatus::Serving { replica_id } => format!("serving on {replica_id}"),
                            PoolStatus::Unowned => "unowned".into(),
                            PoolStatus::Failed { error } => format!("failed: {error}"),
                        }) }
                    }
                }
            }
            @if pools.is_empty() { p { "No pools yet." } }
        },
    )
}

/// One series of a chart.
struct Series {
    name: String,
    color: &'static str,
    points: Vec<(f64, f64)>,
}

const COLORS: [&str; 8] = [
    "#4a7bd0", "#d0604a", "#3a9a5b", "#9a5bd0", "#d0a040", "#40a0c0", "#c04a8a", "#707070",
];

/// A line chart of `series` over x (seconds before the end) as inline SVG.
fn line_chart(caption: &str, y_unit: &str, series: &[Series]) -> Markup {
    let (w, h, left, bottom) = (420.0, 180.0, 56.0, 22.0);
    let pts = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, 0.0f64, f64::MIN);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    let empty = x1 < x0;
    if empty || x1 == x0 {
        x0 -= 60.0;
        x1 += 0.0;
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    let sx = |x: f64| left + (x - x0) / (x1 - x0).max(1e-9) * (w - left - 8.0);
    let sy = |y: f64| 8.0 + (y1 - y) / (y1 - y0) * (h - bottom - 8.0);
    html! {
        figure {
            svg xmlns="http://www.w3.org/2000/svg" width=(w) height=(h) viewBox={ "0 0 " (w) " " (h) } role="img" {
                title { (caption) }
                rect x=(left) y="8" width=(w - left - 8.0) height=(h - bottom - 8.0) fill="#fafafa" stroke="#ddd" {}
                text x=(left - 4.0) y="16" text-anchor="end" font-size="10" { (format!("{y1:.0}")) }
                text x=(left - 4.0) y=(h - bottom) text-anchor="end" font-size="10" { (format!("{y0:.0}")) }
                @if y0 < 0.0 {
                    line x1=(left) x2=(w - 8.0) y1=(sy(0.0)) y2=(sy(0.0)) stroke="#999" stroke-dasharray="3,3" {}
                }
                text x=(left) y=(h - 6.0) font-size="10" { (format!("-{}", dur(x1 - x0))) }
                text x=(w - 8.0) y=(h - 6.0) font-size="10" text-anchor="end" { "now" }
                text x="4" y=(h / 2.0) font-size="10" { (y_unit) }
                @for s in series {
                    @if !s.points.is_empty() {
                        polyline fill="none" stroke=(s.color) stroke-width="1.5"
                            points=(s.points.iter().map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y))).collect::<Vec<_>>().join(" ")) {}
                    }
                }
            }
            figcaption {
                (caption) ": "
                @for s in series {
                    span style={ "color:" (s.color) } { "■ " } (s.name) " "
                }
                @if empty { "(no data yet)" }
            }
        }
    }
}

async fn pool_page(State(ui): State<Ui>, caller: Caller, Query(q): Query<PoolQuery>) -> Response {
    let pool = match local_pool(&ui, &caller, &q.id).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let ov = ui.insight.overview_local(&pool).await;
    let report = ui
        .insight
        .report_local(&pool, DEFAULT_REPORT_WINDOW_SECS)
        .await;
    let figures = ui.insight.reports().pool(pool.id());
    let now = ov
        .pool_time
        .as_ref()
        .and_then(|t| Time::from_unix(t.seconds, t.nanos).ok())
        .unwrap_or(Time::EPOCH);
    let day_ago = now.add_nanos(-24 * 60 * MINUTE_NANOS);
    let (balances, minutes) = match &figures {
        Some(f) => {
            let f = f.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            (f.balances(day_ago, now), f.minutes(day_ago, now))
        }
        None => Default::default(),
    };
    let ago = |t: Time| -(now.nanos_since(t) as f64 / 1e9);
    let balance_series: Vec<Series> = balances
        .iter()
        .enumerate()
        .map(|(i, (acc, pts))| Series {
            name: format!("{acc} P0"),
            color: COLORS[i % COLORS.len()],
            points: pts
                .iter()
                .map(|(t, b)| (ago(*t), f64::from(b[0])))
                .collect(),
        })
        .collect();
    let flow = |name: &str, color, f: fn(&crate::report::PoolMinute) -> u64| Series {
        name: name.into(),
        color,
        points: minutes
            .iter()
            .map(|(t, m)| (ago(*t), f(m) as f64))
            .collect(),
    };
    let flow_series = vec![
        flow("assigned", COLORS[0], |m| m.assigned),
        flow("completed", COLORS[2], |m| m.completed),
        flow("enqueued", COLORS[4], |m| m.enqueued),
        flow("preempted", COLORS[1], |m| m.preempted),
    ];
    let id = ov.pool_id.clone();
    page_as(
        caller_name(&caller),
        &format!("pool {id}"),
        Some(15),
        html! {
            h1 { "Pool " (id) }
            p {
                "Pool time " (time(now)) " · " (ov.queued) " queued · " (ov.running) " running · "
                (ov.idle_bots) " idle of " (ov.bots) " bots · preemption "
                (if ov.disable_preemption { "off" } else { "on" })
            }
            form action="/ui/task" method="get" {
                input type="hidden" name="pool" value=(id);
                label { "Why is my task waiting? Task id: " input type="text" name="id" required; }
                " " button type="submit" { "Explain" }
            }
            h2 { "Accounts" }
            table {
                tr {
                    th.l { "account" } th { "level" }
                    @for p in 0..NUM_PRIORITIES { th { "P" (p) " balance / cap" } }
                    th { "charge rate" }
                    @for p in 0..=NUM_PRIORITIES { th { "running " (level_name(p as i32)) } }
                    th { "queued" }
                }
                @for a in &ov.accounts {
                    tr {
                        td.l { a href={ "/ui/account?pool=" (enc(&id)) "&id=" (enc(&a.account_id)) } { (if a.account_id.is_empty() { "(none)" } else { &a.account_id }) } }
                        td { (level_name(a.level)) }
                        @for p in 0..NUM_PRIORITIES {
                            @let b = a.balance.get(p).copied().unwrap_or(0.0);
                            @let cap = a.charge_rate.get(p).copied().unwrap_or(0.0) * a.max_charge_seconds;
                            td class=(if b < 0.0 { "neg" } else if b > 0.0 { "pos" } else { "" }) {
                                (format!("{b:.0}")) " / " (format!("{cap:.0}"))
                            }
                        }
                        td { (a.charge_rate.iter().map(|r| format!("{r}")).collect::<Vec<_>>().join(", ")) }
                        @for p in 0..=NUM_PRIORITIES { td { (a.running_by_level.get(p).copied().unwrap_or(0)) } }
                        td { (a.queued) }
                    }
                }
            }
            h2 { "Last 24 hours" }
            (line_chart("Balance at P0 (bot-seconds)", "bot-s", &balance_series))
            (line_chart("Tasks per minute", "tasks", &flow_series))
            h2 { "Waits and usage (24 h)" }
            p { "Figures cover " (dur(report.covered_secs)) " of the window." }
            (report_table(&id, &report))
            h2 { "Idle bots by labels" }
            table {
                tr { th.l { "labels" } th { "idle bots" } }
                @for g in &ov.idle_bot_groups {
                    tr { td.l { (g.labels.join(", ")) } td { (g.bots) } }
                }
            }
            h2 { "Recent minutes" }
            table {
                tr { th.l { "minute" } th { "enqueued" } th { "assigned" } th { "completed" } th { "preempted" } }
                @for m in ov.minutes.iter().rev().take(15) {
                    tr {
                        td.l { (m.start.as_ref().and_then(|t| Time::from_unix(t.seconds, t.nanos).ok()).map(time).unwrap_or_default()) }
                        td { (m.enqueued) } td { (m.assigned) } td { (m.completed) } td { (m.preempted) }
                    }
                }
            }
        },
    )
}

fn report_table(pool: &str, r: &Report) -> Markup {
    html! {
        table {
            tr {
                th.l { "account" } th { "used (bot-s)" } th { "share" } th { "completed" }
                th { "free-level time" } th { "promoted / demoted" } th { "preempted / preempting" }
                th { "P0 entitlement" } th { "P0 wait p50 / p95 / p99" } th { "free wait p50 / p95 / p99" }
            }
            @for a in &r.accounts {
                tr {
                    td.l { a href={ "/ui/account?pool=" (enc(pool)) "&id=" (enc(&a.account)) } { (a.account) } }
                    td { (format!("{:.0}", a.used)) }
                    td { span.bar style={ "width:" (format!("{:.0}", a.share * 60.0)) "px" } {} " " (format!("{:.0}%", a.share * 100.0)) }
                    td { (a.completed) }
                    td { (dur(a.free_level_secs)) }
                    td { (a.promotions) " / " (a.demotions) }
                    td { (a.preemptions_suffered) " / " (a.preemptions_caused) }
                    td { (format!("{:.0}", a.levels[0].entitlement)) }
                    @for l in [0usize, NUM_PRIORITIES] {
                        td { @if a.levels[l].wait.count == 0 { "–" } @else {
                            (dur(a.levels[l].wait.p50)) " / " (dur(a.levels[l].wait.p95)) " / " (dur(a.levels[l].wait.p99))
                        } }
                    }
                }
            }
        }
    }
}

async fn task_page(State(ui): State<Ui>, caller: Caller, Query(q): Query<ItemQuery>) -> Response {
    if let Err(s) = crate::limits::check_id(&q.id, "task id", ui.insight.limits()) {
        return error_page(StatusCode::BAD_REQUEST, s.message());
    }
    let pool = match local_pool(&ui, &caller, &q.pool).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let e = ui.insight.explain_local(&pool, q.id.clone()).await;
    page_as(
        caller_name(&caller),
        &format!("task {}", q.id),
        None,
        explanation_html(&q.pool, &e),
    )
}

fn explanation_html(pool: &str, e: &Explanation) -> Markup {
    let state = match &e.state {
        TaskState::Queued => "queued".to_owned(),
        TaskState::AssignedAwaitingPickup { bot, since } => {
            format!(
                "assigned to bot {bot} at {}, waiting for the bot to pick it up",
                time(*since)
            )
        }
        TaskState::Running { bot, level } => {
            format!("running on bot {bot} at {}", level_name(i32::from(*level)))
        }
        TaskState::Unknown => "unknown to the pool".to_owned(),
    };
    html! {
        h1 { "Task " (e.task_id) }
        p { "Pool " a href={ "/ui/pool?id=" (enc(pool)) } { (pool) } " at pool time " (time(e.now)) "." }
        p.state { "State: " strong { (state) } }
        @if let Some(l) = &e.level {
            h2 { "Account and level" }
            p {
                "Account " a href={ "/ui/account?pool=" (enc(pool)) "&id=" (enc(&l.account)) } { (if l.account.is_empty() { "(none)" } else { &l.account }) }
                @if l.config.is_none() { " is not configured, so its tasks run at the free level." }
                @else {
                    ": the next pass places this task at "
                    strong { (l.level.map_or("no level (it sits out)".into(), |p| level_name(i32::from(p)))) } "."
                }
                @if l.fanout_throttled { " Its fanout limit is reached, which puts it at the free level." }
            }
            @if let (Some(c), Some(b)) = (&l.config, &l.balance) {
                table {
                    tr { th.l { "" } @for p in 0..NUM_PRIORITIES { th { "P" (p) } } }
                    tr { td.l { "balance" } @for v in b.0 { td class=(if v > 0.0 { "pos" } else { "neg" }) { (format!("{v:.1}")) } } }
                    tr { td.l { "charge rate" } @for v in c.charge_rate { td { (v) } } }
                    tr { td.l { "cap" } @for v in c.charge_rate { td { (format!("{:.0}", v * c.max_charge_seconds)) } } }
                    tr { td.l { "running" } @for p in 0..NUM_PRIORITIES { td { (l.running_by_level[p]) } } }
                }
                p {
                    "A level is the best one with a positive balance; with none the account is at the free level"
                    @if c.disable_free_tasks { ", which it disables" } "."
                    @if let Some(ch) = &l.pending_change {
                        " At today's rates it moves to " strong { (level_name(i32::from(ch.to))) } " in " (dur(ch.in_secs)) "."
                    }
                }
            }
        }
        h2 { "Bots" }
        p {
            (e.bots.matching) " bots have its base labels (" (e.bots.idle) " idle, " (e.bots.busy) " busy); "
            (e.bots.provisioned) " also have its provisionable labels (" (e.bots.provisioned_idle) " idle)."
        }
        h2 { "What blocks it" }
        @if e.reasons.is_empty() { p { "Nothing: it runs, or starts at the next pass." } }
        @for r in &e.reasons {
            div.reason {
                (r.message())
                " " span.code { "[" (r.code())
                    @for (k, v) in r.numbers() { " " (k) "=" (v) }
                "]" }
            }
        }
        @if let (Some(st), Some(pos), true) = (&e.standing, e.position, e.bots.matching > 0) {
            h2 { "Position" }
            p {
                "Number " strong { (pos) } " among " (st.competing + 1) " queued tasks competing for the same bots: "
                (st.ahead_better_level) " ahead at a better level, " (st.ahead_same_level) " ahead at its level, "
                (st.sitting_out) " sitting out"
                @if st.estimated { " (its place among identical tasks is estimated from enqueue times)" }
                "."
            }
        }
        h2 { "When will it run?" }
        @match &e.eta {
            Eta::Known { secs, method, inputs } => p {
                "In about " strong { (dur(*secs)) } " (method " span.code { (method) } "; "
                (inputs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")) ")."
            },
            Eta::Unknown { why } => p { "Unknown: " (why) "." },
        }
    }
}

async fn account_page(
    State(ui): State<Ui>,
    caller: Caller,
    Query(q): Query<ItemQuery>,
) -> Response {
    let window = match q.window.as_deref().map(parse_window) {
        None => DEFAULT_REPORT_WINDOW_SECS,
        Some(Some(w)) => match report_window(w) {
            Ok(w) => w,
            Err(e) => return error_page(StatusCode::BAD_REQUEST, e.message()),
        },
        Some(None) => {
            return error_page(
                StatusCode::BAD_REQUEST,
                "window: a duration such as 1h, 30m or 7d",
            );
        }
    };
    let pool = match local_pool(&ui, &caller, &q.pool).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let r = ui.insight.report_local(&pool, window).await;
    let Some(a) = r.accounts.iter().find(|a| a.account == q.id) else {
        return error_page(
            StatusCode::NOT_FOUND,
            &format!("no figures for account {} in pool {}", q.id, q.pool),
        );
    };
    page_as(
        caller_name(&caller),
        &format!("account {}", q.id),
        None,
        html! {
            h1 { "Account " (q.id) }
            p {
                "Pool " a href={ "/ui/pool?id=" (enc(&q.pool)) } { (q.pool) } " · window " (dur(r.window_secs as f64))
                " ending " (time(r.window_end)) " · figures cover " (dur(r.covered_secs)) "."
            }
            form action="/ui/account" method="get" {
                input type="hidden" name="pool" value=(q.pool);
                input type="hidden" name="id" value=(q.id);
                label { "Window: " input type="text" name="window" value=(q.window.clone().unwrap_or_else(|| "24h".into())); }
                " " button type="submit" { "Show" }
            }
            p {
                "Used " strong { (format!("{:.0}", a.used)) } " bot-seconds, " (format!("{:.1}%", a.share * 100.0))
                " of the pool; " (a.completed) " tasks completed; " (dur(a.free_level_secs)) " at the free level; "
                (a.promotions) " promotions, " (a.demotions) " demotions; " (a.preemptions_suffered) " of its tasks preempted, "
                (a.preemptions_caused) " preempted by it; " (a.refunds) " refunds (" (format!("{:.0}", a.refunded)) " bot-seconds)."
            }
            table {
                tr { th.l { "level" } th { "entitlement" } th { "cap" } th { "used" } th { "share of level" } th { "assigned" } th { "wait p50" } th { "p95" } th { "p99" } }
                @for l in &a.levels {
                    tr {
                        td.l { (level_name(i32::from(l.level))) }
                        td { (format!("{:.0}", l.entitlement)) } td { (format!("{:.0}", l.balance_cap)) }
                        td { (format!("{:.0}", l.used)) } td { (format!("{:.0}%", l.share * 100.0)) }
                        td { (l.assigned) }
                        @if l.wait.count == 0 { td { "–" } td { "–" } td { "–" } }
                        @else { td { (dur(l.wait.p50)) } td { (dur(l.wait.p95)) } td { (dur(l.wait.p99)) } }
                    }
                }
            }
        },
    )
}

#[derive(Deserialize)]
struct NextQuery {
    next: Option<String>,
}

#[derive(Deserialize)]
struct SignInForm {
    token: String,
    #[serde(default)]
    next: String,
}

/// Where to go after signing in: a dashboard page of this server, nothing
/// else (no open redirect).
fn safe_next(next: &str) -> &str {
    let ok = (next == "/ui" || next.starts_with("/ui/"))
        && !next.contains("//")
        && !next.contains('\\')
        && next.bytes().all(|b| b.is_ascii_graphic());
    if ok { next } else { "/ui/" }
}

fn sign_in_form(status: StatusCode, next: &str, error: Option<&str>) -> Response {
    let mut r = page(
        "sign in",
        None,
        html! {
            h1 { "Sign in" }
            p { "This server requires authorization. Enter a token that holds the "
                span.code { "view" } " role for the pools you want to see. "
                "It is checked, not kept: the browser gets a session cookie instead." }
            @if let Some(e) = error { p.reason { (e) } }
            form method="post" action=(SIGN_IN) {
                input type="hidden" name="next" value=(safe_next(next));
                label { "Token: " input type="password" name="token" autocomplete="off" required; }
                " " button type="submit" { "Sign in" }
            }
        },
    );
    *r.status_mut() = status;
    r
}

async fn sign_in_page(State(ui): State<Ui>, Query(q): Query<NextQuery>) -> Response {
    if ui.policy.is_none() {
        return page(
            "sign in",
            None,
            html! { h1 { "Sign in" } p { "This server runs without authorization: "
            a href="/ui/" { "the dashboard" } " is open." } },
        );
    }
    sign_in_form(StatusCode::OK, q.next.as_deref().unwrap_or("/ui/"), None)
}

/// Checks the token with the same code as every call and starts a session.
/// The token is never logged nor shown again, not even on failure.
async fn sign_in(State(ui): State<Ui>, Form(f): Form<SignInForm>) -> Response {
    let Some(policy) = ui.policy.as_ref().map(|p| p.get()) else {
        return axum::response::Redirect::to("/ui/").into_response();
    };
    let token = f.token.trim();
    if token.is_empty() {
        return sign_in_form(StatusCode::UNAUTHORIZED, &f.next, Some("Enter a token."));
    }
    match ui.sessions.sign_in(&policy, token) {
        Ok((id, ttl)) => (
            StatusCode::SEE_OTHER,
            [
                (header::LOCATION, safe_next(&f.next).to_owned()),
                (header::SET_COOKIE, session::set_cookie(&id, ttl)),
                (header::CACHE_CONTROL, "no-store".to_owned()),
            ],
        )
            .into_response(),
        Err(SignInError::Random(e)) => {
            tracing::error!(error = %e, "no randomness for a dashboard session id");
            sign_in_form(
                StatusCode::SERVICE_UNAVAILABLE,
                &f.next,
                Some("The server cannot start a session now; try again."),
            )
        }
        Err(SignInError::Auth(crate::auth::AuthError::Malformed)) => sign_in_form(
            StatusCode::UNAUTHORIZED,
            &f.next,
            Some("A token is one word of printable characters."),
        ),
        Err(e) => sign_in_form(StatusCode::UNAUTHORIZED, &f.next, Some(&e.to_string())),
    }
}

/// Ends the session and sends the browser to the sign-in page.
async fn sign_out(State(ui): State<Ui>, headers: HeaderMap) -> Response {
    if let Some(id) = session::session_cookie(&headers) {
        ui.sessions.end(id);
    }
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, SIGN_IN.to_owned()),
            (header::SET_COOKIE, session::clear_cookie()),
            (header::CACHE_CONTROL, "no-store".to_owned()),
        ],
    )
        .into_response()
}

/// `90s`, `30m`, `1h`, `7d` or plain seconds.
pub fn parse_window(s: &str) -> Option<i64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, 's') => (&s[..i], 1),
        (i, 'm') => (&s[..i], 60),
        (i, 'h') => (&s[..i], 3600),
        (i, 'd') => (&s[..i], 86_400),
        _ => (s, 1),
    };
    num.parse::<i64>().ok()?.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(enc("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }

    #[test]
    fn windows_parse() {
        assert_eq!(parse_window("1h"), Some(3600));
        assert_eq!(parse_window("30m"), Some(1800));
        assert_eq!(parse_window("7d"), Some(604_800));
        assert_eq!(parse_window("90"), Some(90));
        assert_eq!(parse_window("x"), None);
        assert_eq!(parse_window(""), None);
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(time(Time::from_secs(0)), "1970-01-01 00:00:00 UTC");
        assert_eq!(
            time(Time::from_secs(1_700_000_000)),
            "2023-11-14 22:13:20 UTC"
        );
    }

    #[test]
    fn values_are_escaped() {
        let e = qscheduler_core::explain::explain(
            &qscheduler_core::Pool::new(Time::from_secs(1)),
            "<script>x</script>",
            None,
        );
        let s = explanation_html("p\"><b>", &e).into_string();
        assert!(!s.contains("<script>"));
        assert!(!s.contains("\"><b>"));
        assert!(s.contains("&lt;script&gt;"));
    }
}
