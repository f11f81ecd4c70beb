//! The audit log: one JSON line per administrative call (QSchedulerAdmin),
//! whoever made it and whatever came of it — time, principal, method,
//! pool, a summary of the request and the result code — in files of their
//! own (`audit-<unix nanos>.jsonl` under the audit directory, a new file
//! past a size, the oldest deleted past a count), and the counter
//! `qscheduler_admin_calls_total{method,code}`.
//!
//! Three places know a part of a record, so they share an [`AuditSlot`]
//! through the request's extensions: the RPC layer creates it and writes
//! the record when the call ends (it knows the result code, for gRPC from
//! the trailers), the auth layer fills in the principal, and the handler
//! the pool and the summary once it has validated them ([`note`]).
//! Records are written synchronously: administrative calls are rare, and
//! a record must not be lost to a queue.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// Where the audit files go, and how many.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditOptions {
    /// Their directory (created if missing).
    pub dir: PathBuf,
    /// A new file once the current one reaches this size.
    pub max_file_bytes: u64,
    /// Files kept, the current one included.
    pub max_files: usize,
}

impl AuditOptions {
    /// The defaults, in `dir`.
    pub fn new(dir: PathBuf) -> Self {
        AuditOptions {
            dir,
            max_file_bytes: 64 << 20,
            max_files: 16,
        }
    }
}

/// Labels of `qscheduler_admin_calls_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdminCallLabels {
    /// The QSchedulerAdmin method (one of seven).
    pub method: String,
    /// The gRPC status code name.
    pub code: &'static str,
}

/// The counter family.
pub type AdminCalls = Family<AdminCallLabels, Counter>;

/// What the handler and the auth layer add to a call's record.
#[derive(Clone, Debug, Default)]
pub struct AuditNote {
    /// `kind:name` of the caller, when known.
    pub principal: Option<String>,
    /// The pool the call named.
    pub pool: Option<String>,
    /// A short description of the request.
    pub summary: Option<String>,
}

/// A call's note, shared through the request's extensions.
#[derive(Clone, Debug, Default)]
pub struct AuditSlot(pub Arc<Mutex<AuditNote>>);

impl AuditSlot {
    /// Changes the note.
    pub fn update(&self, f: impl FnOnce(&mut AuditNote)) {
        f(&mut self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner));
    }
}

/// Notes the pool and a summary of an administrative call (no-op when the
/// call is not audited).
pub fn note<T: std::fmt::Debug>(request: &tonic::Request<T>, pool: &str) {
    if let Some(slot) = request.extensions().get::<AuditSlot>() {
        let mut summary = format!("{:?}", request.get_ref());
        if summary.len() > 1024 {
            let mut cut = 1024;
            while !summary.is_char_boundary(cut) {
                cut -= 1;
            }
            summary.truncate(cut);
            summary.push('…');
        }
        slot.update(|n| {
            n.pool = Some(pool.chars().take(256).collect());
            n.summary = Some(summary);
        });
    }
}

struct Current {
    file: File,
    bytes: u64,
}

/// The sink.
pub struct AuditLog {
    options: Option<AuditOptions>,
    current: Mutex<Option<Current>>,
    calls: Option<AdminCalls>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

impl AuditLog {
    /// Writes into `options.dir` (none: only counts), counting into
    /// `calls`. The directory is created now, so that a server that
    /// cannot keep an audit log does not start.
    pub fn new(
        options: Option<AuditOptions>,
        calls: Option<AdminCalls>,
    ) -> std::io::Result<Arc<AuditLog>> {
        if let Some(o) = &options {
            std::fs::create_dir_all(&o.dir)?;
        }
        Ok(Arc::new(AuditLog {
            options,
            current: Mutex::new(None),
            calls,
        }))
    }

    /// Records one call that ended with `code`.
    pub fn record(&self, method: &str, code: &'static str, slot: &AuditSlot) {
        if let Some(c) = &self.calls {
            c.get_or_create(&AdminCallLabels {
                method: method.to_owned(),
                code,
            })
            .inc();
        }
        let Some(options) = &self.options else {
            return;
        };
        let note = slot
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let time = humantime_rfc3339(SystemTime::now());
        let line = serde_json::json!({
            "time": time,
            "principal": note.principal.unwrap_or_else(|| "anonymous".to_owned()),
            "method": method,
            "pool": note.pool,
            "request": note.summary,
            "code": code,
        });
        if let Err(e) = self.write(options, &format!("{line}\n")) {
            tracing::error!(error = %e, dir = %options.dir.display(), "cannot write the audit log");
        }
    }

    fn write(&self, options: &AuditOptions, line: &str) -> std::io::Result<()> {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if current
            .as_ref()
            .is_none_or(|c| c.bytes + line.len() as u64 > options.max_file_bytes)
        {
            let path = options.dir.join(format!("audit-{}.jsonl", unix_nanos()));
            let file = OpenOptions::new().create(true).append(true).open(&path)?;
            *current = Some(Current { file, bytes: 0 });
            prune(&options.dir, options.max_files);
        }
        if let Some(c) = current.as_mut() {
            c.file.write_all(line.as_bytes())?;
            c.bytes += line.len() as u64;
        }
        Ok(())
    }
}

/// Deletes the oldest audit files beyond `keep`.
fn prune(dir: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("audit-") && n.ends_with(".jsonl"))
        })
        .collect();
    // Names hold the creation time in nanoseconds: all the same width for
    // centuries, so they sort by age.
    files.sort();
    let excess = files.len().saturating_sub(keep.max(1));
    for f in files.into_iter().take(excess) {
        let _ = std::fs::remove_file(f);
    }
}

/// RFC 3339 UTC with milliseconds, from the civil-from-days algorithm.
fn humantime_rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_764_931_200_123);
        assert_eq!(humantime_rfc3339(t), "2025-12-05T10:40:00.123Z");
        assert_eq!(
            humantime_rfc3339(SystemTime::UNIX_EPOCH),
            "1970-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn files_rotate_and_the_oldest_go() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::new(
            Some(AuditOptions {
                dir: dir.path().to_owned(),
                max_file_bytes: 200,
                max_files: 3,
            }),
            None,
        )
        .unwrap();
        let slot = AuditSlot::default();
        slot.update(|n| n.pool = Some("p".into()));
        for _ in 0..20 {
            log.record("Wipe", "OK", &slot);
        }
        let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(files.len(), 3);
        for f in files {
            let text = std::fs::read_to_string(f.unwrap().path()).unwrap();
            for line in text.lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                assert_eq!(v["method"], "Wipe");
                assert_eq!(v["principal"], "anonymous");
                assert_eq!(v["pool"], "p");
            }
        }
    }
}
