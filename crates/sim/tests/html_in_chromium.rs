//! The HTML report as a browser shows it: headless Chromium loads a
//! comparison report from disk, and the test checks the DOM it built (every
//! chart is an SVG element with both runs' lines) and the pixels it drew
//! (both runs' colours appear, in lines, not only in the legends).
//!
//! Chromium is required, not optional: without it the test fails and says
//! how to install it (`.ci/run` installs it when missing).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use qscheduler_core::AccountConfig;
use qscheduler_sim::html::{COLOR_A, COLOR_B, page};
use qscheduler_sim::{PoolSetup, SimOptions, Workload, simulate};

const MODEL: &str = r#"
seed = 11
pool = "p"
duration = "2h"
[fleet.linux]
count = 20
labels = ["os:linux"]
[accounts.ci]
tasks_per_hour = 400
duration = { distribution = "exponential", mean = "3m" }
[[accounts.ci.tasks]]
labels = ["os:linux"]
[accounts.try]
tasks_per_hour = 300
daily_cycle = 0.8
duration = { distribution = "lognormal", median = "2m", sigma = 0.7 }
[[accounts.try.tasks]]
labels = ["os:linux"]
"#;

fn chromium() -> PathBuf {
    for candidate in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(candidate).exists() {
            return PathBuf::from(candidate);
        }
    }
    if let Ok(path) = std::env::var("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("chromium");
            if p.exists() {
                return p;
            }
        }
    }
    panic!(
        "this test needs headless Chromium, which is not installed; install it with: \
         apt-get update && apt-get install -y chromium"
    );
}

/// Runs Chromium headless with the flags a closed, root-run machine needs;
/// gives up (and fails) after two minutes.
fn run_chromium(profile: &Path, args: &[String]) -> String {
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match child.try_wait().expect("wait for chromium") {
            Some(status) => {
                assert!(status.success(), "chromium failed: {status}");
                break;
            }
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("chromium did not finish within two minutes");
            }
            None => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    reader.join().expect("read chromium's output")
}

fn rgb(hex: &str) -> [u8; 3] {
    let v = u32::from_str_radix(hex.trim_start_matches('#'), 16).expect("hex colour");
    [(v >> 16) as u8, (v >> 8) as u8, v as u8]
}

#[test]
fn the_report_renders_in_chromium() {
    let w = qscheduler_sim::model::generate("model", MODEL).expect("model");
    let config = |ci: f32, try_: f32| PoolSetup {
        accounts: BTreeMap::from([
            (
                "ci".to_owned(),
                AccountConfig {
                    charge_rate: [ci, 0.0, 0.0, 0.0, 0.0],
                    max_charge_seconds: 600.0,
                    ..Default::default()
                },
            ),
            (
                "try".to_owned(),
                AccountConfig {
                    charge_rate: [try_, 0.0, 0.0, 0.0, 0.0],
                    max_charge_seconds: 600.0,
                    ..Default::default()
                },
            ),
        ]),
        ..Default::default()
    };
    let run = |s: &PoolSetup, label: &str, w: &Workload| {
        simulate(w, s, &SimOptions::default(), label)
            .expect("simulate")
            .report
    };
    let a = run(&config(10.0, 4.0), "current.toml", &w);
    let b = run(&config(4.0, 10.0), "proposed.toml", &w);
    assert_ne!(a, b, "the two configurations should differ");
    let dir = tempfile::tempdir().expect("temp dir");
    let html = dir.path().join("report.html");
    std::fs::write(&html, page(&a, Some(&b))).expect("write report");
    let url = format!("file://{}", html.display());

    // The DOM Chromium built: five charts (fleet, and two per account),
    // each an SVG element with a path per run, and the tables.
    let dom = run_chromium(
        &dir.path().join("profile-dom"),
        &["--dump-dom".into(), url.clone()],
    );
    assert_eq!(dom.matches("<svg").count(), 5, "{dom}");
    assert_eq!(dom.matches(&format!("stroke=\"{COLOR_A}\"")).count(), 5);
    assert_eq!(dom.matches(&format!("stroke=\"{COLOR_B}\"")).count(), 5);
    for needle in [
        "<h3>ci</h3>",
        "<h3>try</h3>",
        "current.toml",
        "proposed.toml",
        "<table>",
    ] {
        assert!(dom.contains(needle), "{needle} missing from the DOM");
    }
    assert!(!dom.contains("<script"));

    // The pixels: both runs' colours, far more of them than the legend
    // swatches (12 × 12 each) could give.
    let shot = dir.path().join("report.png");
    run_chromium(
        &dir.path().join("profile-shot"),
        &[
            "--window-size=1200,2000".into(),
            format!("--screenshot={}", shot.display()),
            url,
        ],
    );
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(&shot).expect("open screenshot"),
    ));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("buffer size")];
    let info = reader.next_frame(&mut buf).expect("decode PNG");
    let channels = info.color_type.samples();
    assert!(channels >= 3, "{:?}", info.color_type);
    assert_eq!((info.width, info.height), (1200, 2000));
    let near = |px: &[u8], c: [u8; 3]| {
        px.iter()
            .zip(c)
            .all(|(&p, q)| (i32::from(p) - i32::from(q)).abs() <= 24)
    };
    let (ca, cb) = (rgb(COLOR_A), rgb(COLOR_B));
    let (mut na, mut nb, mut white) = (0usize, 0usize, 0usize);
    for px in buf[..info.buffer_size()].chunks(channels) {
        if near(px, ca) {
            na += 1;
        }
        if near(px, cb) {
            nb += 1;
        }
        if px[..3] == [255, 255, 255] {
            white += 1;
        }
    }
    let legends = 6 * 144;
    assert!(na > legends + 1000, "run A's lines: {na} pixels");
    assert!(nb > legends + 1000, "run B's lines: {nb} pixels");
    let total = (info.width * info.height) as usize;
    assert!(white < total, "a blank page");
}
