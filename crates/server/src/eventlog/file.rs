//! The file sink: JSON lines appended to rotated files in one directory,
//! within a number of files, a disk budget and a floor of free disk space
//! (below it events are dropped and counted rather than written).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use tracing::{debug, warn};

use super::json::civil;
use super::{Queue, Throttle, encode_chunk};

/// Rotated JSON-lines files.
#[derive(Clone, Debug)]
pub struct FileSinkOptions {
    /// The directory (created if missing).
    pub dir: PathBuf,
    /// A new file is started once the current one reaches this size.
    pub max_file_bytes: u64,
    /// ...or is this old.
    pub max_file_age: Duration,
    /// Files kept, the current one included; the oldest are deleted.
    pub max_files: usize,
    /// The disk budget of the files together: the oldest are deleted to
    /// stay under it.
    pub max_total_bytes: u64,
    /// Events are dropped (and counted) rather than written while the
    /// directory's file system has less free space than this, so the event
    /// log never takes the last of a disk the store may share.
    pub min_free_disk_bytes: u64,
}

impl FileSinkOptions {
    /// Files in `dir` with the default rotation: 64 MiB or one hour, 48
    /// files, 1 GiB in all, writing only while 1 GiB of disk stays free.
    pub fn new(dir: PathBuf) -> Self {
        FileSinkOptions {
            dir,
            max_file_bytes: 64 << 20,
            max_file_age: Duration::from_secs(3600),
            max_files: 48,
            max_total_bytes: 1 << 30,
            min_free_disk_bytes: 1 << 30,
        }
    }
}

/// Free bytes for unprivileged writers on the file system holding `dir`.
fn free_disk_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statvfs only reads the NUL-terminated path and writes the
    // struct we pass; both live across the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // The field types differ between platforms (u32 on some).
    #[allow(clippy::useless_conversion)]
    Ok(u64::from(st.f_bavail).saturating_mul(u64::from(st.f_frsize)))
}

const FILE_PREFIX: &str = "task-events-";
const FILE_SUFFIX: &str = ".jsonl";

struct CurrentFile {
    out: std::io::BufWriter<std::fs::File>,
    bytes: u64,
    opened: Instant,
}

/// Appends lines to the current file, rotating by size and age and keeping
/// at most `max_files` files.
///
/// Files are named `task-events-<sequence>-<UTC start time>.jsonl`; the
/// sequence number orders them even when the clock jumps, and continues
/// after a restart (which always starts a new file, so a file is never
/// appended to by two processes' lifetimes).
pub(super) struct FileWriter {
    options: FileSinkOptions,
    current: Option<CurrentFile>,
    next_seq: u64,
}

impl FileWriter {
    pub(super) fn open(options: FileSinkOptions) -> std::io::Result<FileWriter> {
        std::fs::create_dir_all(&options.dir)?;
        let next_seq = list_files(&options.dir)?
            .last()
            .map(|(seq, _)| seq + 1)
            .unwrap_or(1);
        Ok(FileWriter {
            options,
            current: None,
            next_seq,
        })
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.close()?;
        let name = format!(
            "{FILE_PREFIX}{:08}-{}{FILE_SUFFIX}",
            self.next_seq,
            utc_stamp(SystemTime::now())
        );
        self.next_seq += 1;
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(self.options.dir.join(&name))?;
        debug!(file = %name, "event log: new file");
        self.current = Some(CurrentFile {
            out: std::io::BufWriter::with_capacity(256 << 10, file),
            bytes: 0,
            opened: Instant::now(),
        });
        self.prune()
    }

    /// Deletes the oldest files beyond `max_files`, and beyond the disk
    /// budget: the current file counts as full, so writing it to its size
    /// limit keeps the files within `max_total_bytes`.
    fn prune(&self) -> std::io::Result<()> {
        let files = list_files(&self.options.dir)?;
        let excess = files.len().saturating_sub(self.options.max_files.max(1));
        let sizes: Vec<u64> = files
            .iter()
            .map(|(_, p)| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .collect();
        // The newest file is the current one.
        let mut total: u64 = sizes.iter().rev().skip(1).sum::<u64>() + self.options.max_file_bytes;
        for (i, (_, path)) in files.iter().enumerate() {
            let last = i + 1 == files.len();
            if last || (i >= excess && total <= self.options.max_total_bytes) {
                break;
            }
            match std::fs::remove_file(path) {
                Ok(()) => total = total.saturating_sub(sizes[i]),
                Err(e) => {
                    warn!(file = %path.display(), error = %e, "event log: cannot delete an old file")
                }
            }
        }
        Ok(())
    }

    /// True if the disk has room to write (see
    /// [`FileSinkOptions::min_free_disk_bytes`]).
    fn disk_has_room(&self) -> bool {
        match free_disk_bytes(&self.options.dir) {
            Ok(free) => free >= self.options.min_free_disk_bytes,
            // Unknown: let the write itself fail if it must.
            Err(_) => true,
        }
    }

    fn write_lines<'a>(&mut self, lines: impl Iterator<Item = &'a str>) -> std::io::Result<()> {
        for line in lines {
            let len = line.len() as u64 + 1;
            let rotate = match &self.current {
                None => true,
                Some(c) => {
                    (c.bytes > 0 && c.bytes + len > self.options.max_file_bytes)
                        || c.opened.elapsed() >= self.options.max_file_age
                }
            };
            if rotate {
                self.rotate()?;
            }
            if let Some(c) = &mut self.current {
                c.out.write_all(line.as_bytes())?;
                c.out.write_all(b"\n")?;
                c.bytes += len;
            }
        }
        // One sync per chunk: a crash loses at most the chunk in flight.
        if let Some(c) = &mut self.current {
            c.out.flush()?;
            c.out.get_ref().sync_data()?;
        }
        Ok(())
    }

    fn close(&mut self) -> std::io::Result<()> {
        if let Some(mut c) = self.current.take() {
            c.out.flush()?;
            c.out.get_ref().sync_all()?;
        }
        Ok(())
    }
}

/// The event files in `dir`, oldest (lowest sequence) first.
fn list_files(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name
            .strip_prefix(FILE_PREFIX)
            .filter(|_| name.ends_with(FILE_SUFFIX))
        else {
            continue;
        };
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if let Ok(seq) = digits.parse::<u64>() {
            files.push((seq, entry.path()));
        }
    }
    files.sort();
    Ok(files)
}

/// `YYYYMMDDTHHMMSSZ` for a wall-clock time.
fn utc_stamp(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (y, m, d, rem) = civil(secs);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

pub(super) async fn run_file_sink(queue: Arc<Queue>, writer: FileWriter) {
    let mut writer = Some(writer);
    let mut throttle = Throttle(None);
    while let Some(chunk) = queue.next_chunk(4096).await {
        let Some(mut w) = writer.take() else { break };
        let stats = queue.stats.clone();
        let n = chunk.len() as u64;
        let res = tokio::task::spawn_blocking(move || {
            if !w.disk_has_room() {
                let err = std::io::Error::other(format!(
                    "less than {} bytes free on the disk (event_log.files.min_free_disk); \
                     events are dropped until there is room",
                    w.options.min_free_disk_bytes
                ));
                return (w, Err(err), chunk.len() as u64);
            }
            let lines = encode_chunk(&chunk, &stats);
            let res = w.write_lines(lines.iter().map(|(_, l)| l.as_str()));
            if res.is_err() {
                // The file's end is unknown after a failed write; the next
                // chunk starts a new file.
                w.current = None;
            }
            (w, res, lines.len() as u64)
        })
        .await;
        match res {
            Ok((w, Ok(()), written)) => {
                queue.stats.written.fetch_add(written, Ordering::Relaxed);
                writer = Some(w);
            }
            Ok((w, Err(e), written)) => {
                queue.stats.errors.fetch_add(1, Ordering::Relaxed);
                queue.stats.dropped.fetch_add(written, Ordering::Relaxed);
                if throttle.ready() {
                    warn!(error = %e, dir = %w.options.dir.display(), "event log: write failed; events lost");
                }
                writer = Some(w);
            }
            Err(e) => {
                queue.stats.errors.fetch_add(1, Ordering::Relaxed);
                queue.stats.dropped.fetch_add(n, Ordering::Relaxed);
                warn!(error = %e, "event log: file writer failed; no more events go to files");
                return;
            }
        }
    }
    if let Some(mut w) = writer {
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = w.close() {
                warn!(error = %e, "event log: closing the current file failed");
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eventlog::SinkStats;
    use crate::eventlog::test_event as event;
    use qscheduler_core::EventKind;

    #[test]
    fn stamps_are_utc_civil_times() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_893_456_005);
        assert_eq!(utc_stamp(t), "20300101T000005Z");
        assert_eq!(utc_stamp(SystemTime::UNIX_EPOCH), "19700101T000000Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(utc_stamp(leap), "20000229T000000Z");
    }

    #[test]
    fn files_stay_within_their_disk_budget() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = FileSinkOptions::new(dir.path().to_owned());
        options.max_file_bytes = 25;
        options.max_files = 100;
        // Room for the current file (counted as full) and two more.
        options.max_total_bytes = 3 * 15 + 25;
        let mut w = FileWriter::open(options).unwrap();
        let lines: Vec<String> = (0..10).map(|i| format!("line number {i:02}")).collect();
        w.write_lines(lines.iter().map(String::as_str)).unwrap();
        w.close().unwrap();
        let files = list_files(dir.path()).unwrap();
        let total: u64 = files
            .iter()
            .map(|(_, p)| std::fs::metadata(p).unwrap().len())
            .sum();
        assert!(
            total <= 3 * 15 + 25,
            "{total} bytes in {} files",
            files.len()
        );
        assert_eq!(files.last().unwrap().0, 10, "the newest file is kept");
    }

    #[tokio::test]
    async fn a_disk_without_room_drops_events_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = FileSinkOptions::new(dir.path().to_owned());
        // No disk has this much free.
        options.min_free_disk_bytes = u64::MAX;
        let stats = SinkStats::new("files");
        let queue = Queue::new(100, stats.clone());
        let writer = FileWriter::open(options).unwrap();
        let sink = tokio::spawn(run_file_sink(queue.clone(), writer));
        let pool: Arc<str> = Arc::from("p");
        queue.push(
            &pool,
            &[event(EventKind::Enqueued {
                tags: Arc::from(Vec::<String>::new()),
            })],
        );
        queue.closed.send_replace(true);
        sink.await.unwrap();
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 1);
        assert_eq!(stats.written.load(Ordering::Relaxed), 0);
        let files = list_files(dir.path()).unwrap();
        assert!(files.is_empty(), "{files:?}");
    }

    #[test]
    fn files_rotate_by_size_and_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = FileSinkOptions::new(dir.path().to_owned());
        options.max_file_bytes = 25;
        options.max_files = 3;
        let mut w = FileWriter::open(options.clone()).unwrap();
        let lines: Vec<String> = (0..10).map(|i| format!("line number {i:02}")).collect();
        w.write_lines(lines.iter().map(String::as_str)).unwrap();
        w.close().unwrap();
        // 15 bytes per line: one line per file, only the last three kept.
        let files = list_files(dir.path()).unwrap();
        assert_eq!(
            files.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            vec![8, 9, 10]
        );
        let last = std::fs::read_to_string(&files[2].1).unwrap();
        assert_eq!(last, "line number 09\n");
        // A restart continues the sequence.
        let mut w = FileWriter::open(options).unwrap();
        w.write_lines(["again"].into_iter()).unwrap();
        w.close().unwrap();
        let files = list_files(dir.path()).unwrap();
        assert_eq!(files.last().unwrap().0, 11);
        assert_eq!(files.len(), 3);
    }
}
