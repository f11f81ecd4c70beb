//! On-disk formats of the embedded backend: log segments, log frames, snapshot files and the
//! mapping from pool ids to directory names. All integers are little-endian.
//!
//! Segment file `log-<first seq, 20 digits>.seg`:
//! ```text
//! header (24 bytes): magic "QSLOGv1\n" | first_seq u64 | crc32c(magic, first_seq) u32 | 0 u32
//! frames...
//! ```
//! Frame (32-byte header + payload):
//! ```text
//! len u32 | crc u32 | seq u64 | batch_first u64 | batch_last u64 | payload[len]
//! crc = crc32c(len, seq, batch_first, batch_last, payload)
//! ```
//! `batch_first..=batch_last` are the seqs of the append the frame was written by. They make an
//! append all-or-nothing on recovery (a batch whose last frame is missing was never acknowledged
//! and is dropped whole), and they tell a torn tail (damage confined to the last append) from damage
//! in the middle of the log (valid frames of later appends follow the damage).
//!
//! Snapshot file `snap-<seq, 20 digits>.snap`:
//! ```text
//! magic "QSSNPv1\n" | seq u64 | len u64 | crc32c(seq, payload) u32 | crc32c(bytes 0..28) u32 | payload[len]
//! ```

pub(crate) const SEGMENT_MAGIC: &[u8; 8] = b"QSLOGv1\n";
pub(crate) const SEGMENT_HEADER: usize = 24;
pub(crate) const FRAME_HEADER: usize = 32;
pub(crate) const SNAPSHOT_MAGIC: &[u8; 8] = b"QSSNPv1\n";
pub(crate) const SNAPSHOT_HEADER: usize = 32;

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

pub(crate) fn segment_name(first_seq: u64) -> String {
    format!("log-{first_seq:020}.seg")
}

pub(crate) fn snapshot_name(seq: u64) -> String {
    format!("snap-{seq:020}.snap")
}

/// Parses `log-<n>.seg` or `snap-<n>.snap`. Seqs start at 1 and stay far below `i64::MAX` (the
/// PostgreSQL backend's limit), so other numbers are not ours and the file is ignored; this also
/// keeps `seq + 1` arithmetic in recovery from overflowing on a hostile name.
pub(crate) fn parse_numbered(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits
        .parse()
        .ok()
        .filter(|&n| n >= 1 && n < i64::MAX as u64)
}

pub(crate) fn encode_segment_header(first_seq: u64) -> [u8; SEGMENT_HEADER] {
    let mut h = [0u8; SEGMENT_HEADER];
    h[..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..16].copy_from_slice(&first_seq.to_le_bytes());
    let crc = crc32c::crc32c(&h[..16]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Checks a segment header; returns the first seq it declares.
pub(crate) fn decode_segment_header(b: &[u8]) -> Result<u64, String> {
    if b.len() < SEGMENT_HEADER {
        return Err(format!(
            "segment header incomplete ({} of {SEGMENT_HEADER} bytes)",
            b.len()
        ));
    }
    if &b[..8] != SEGMENT_MAGIC {
        return Err("not a log segment (bad magic)".into());
    }
    let crc = u32_at(b, 16).unwrap_or(0);
    if crc32c::crc32c(&b[..16]) != crc {
        return Err("segment header checksum mismatch".into());
    }
    u64_at(b, 8).ok_or_else(|| "segment header unreadable".into())
}

/// Appends the frame of one record to `out`.
pub(crate) fn encode_frame(out: &mut Vec<u8>, seq: u64, batch: (u64, u64), payload: &[u8]) {
    let len = payload.len() as u32;
    let mut tail = [0u8; FRAME_HEADER - 8];
    tail[..8].copy_from_slice(&seq.to_le_bytes());
    tail[8..16].copy_from_slice(&batch.0.to_le_bytes());
    tail[16..].copy_from_slice(&batch.1.to_le_bytes());
    let mut crc = crc32c::crc32c(&len.to_le_bytes());
    crc = crc32c::crc32c_append(crc, &tail);
    crc = crc32c::crc32c_append(crc, payload);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&tail);
    out.extend_from_slice(payload);
}

/// A frame that passed its checksum.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Frame {
    pub seq: u64,
    pub batch_first: u64,
    pub batch_last: u64,
    /// Offset of the payload in the segment buffer.
    pub payload_at: usize,
    pub len: usize,
}

impl Frame {
    pub fn end(&self) -> usize {
        self.payload_at + self.len
    }
}

/// Why a frame could not be read.
#[derive(Debug)]
pub(crate) enum BadFrame {
    /// The frame runs past the end of the file.
    Truncated,
    /// Length field larger than any record we write.
    ImplausibleLength(u64),
    ChecksumMismatch,
}

impl std::fmt::Display for BadFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadFrame::Truncated => write!(f, "record runs past the end of the segment"),
            BadFrame::ImplausibleLength(n) => write!(f, "implausible record length {n}"),
            BadFrame::ChecksumMismatch => write!(f, "record checksum mismatch"),
        }
    }
}

/// Reads the frame at `at`.
pub(crate) fn read_frame(b: &[u8], at: usize) -> Result<Frame, BadFrame> {
    let (Some(len), Some(crc), Some(seq), Some(batch_first), Some(batch_last)) = (
        u32_at(b, at),
        u32_at(b, at + 4),
        u64_at(b, at + 8),
        u64_at(b, at + 16),
        u64_at(b, at + 24),
    ) else {
        return Err(BadFrame::Truncated);
    };
    let len = len as usize;
    if len > crate::MAX_RECORD_BYTES {
        return Err(BadFrame::ImplausibleLength(len as u64));
    }
    let payload_at = at + FRAME_HEADER;
    let Some(payload) = b.get(payload_at..payload_at + len) else {
        return Err(BadFrame::Truncated);
    };
    let mut c = crc32c::crc32c(&b[at..at + 4]);
    c = crc32c::crc32c_append(c, &b[at + 8..at + FRAME_HEADER]);
    c = crc32c::crc32c_append(c, payload);
    if c != crc {
        return Err(BadFrame::ChecksumMismatch);
    }
    Ok(Frame {
        seq,
        batch_first,
        batch_last,
        payload_at,
        len,
    })
}

/// Finds the next frame after offset `from` that passes its checksum and could follow
/// `last_good_seq`, scanning byte by byte. Only used on the error path, so the cheap plausibility
/// checks before the CRC keep it fast enough even over a large segment.
pub(crate) fn scan_for_frame(b: &[u8], from: usize, last_good_seq: u64) -> Option<Frame> {
    let mut at = from;
    while at + FRAME_HEADER <= b.len() {
        let remaining = (b.len() - at) as u64;
        let plausible = match (
            u32_at(b, at),
            u64_at(b, at + 8),
            u64_at(b, at + 16),
            u64_at(b, at + 24),
        ) {
            (Some(len), Some(seq), Some(first), Some(last)) => {
                (len as u64) + FRAME_HEADER as u64 <= remaining
                    && seq > last_good_seq
                    && seq - last_good_seq <= remaining / FRAME_HEADER as u64 + 1
                    && first <= seq
                    && seq <= last
            }
            _ => false,
        };
        if plausible && let Ok(f) = read_frame(b, at) {
            return Some(f);
        }
        at += 1;
    }
    None
}

pub(crate) fn encode_snapshot_header(seq: u64, payload: &[u8]) -> [u8; SNAPSHOT_HEADER] {
    let mut h = [0u8; SNAPSHOT_HEADER];
    h[..8].copy_from_slice(SNAPSHOT_MAGIC);
    h[8..16].copy_from_slice(&seq.to_le_bytes());
    h[16..24].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    h[24..28].copy_from_slice(&crate::checksum(seq, payload).to_le_bytes());
    let hcrc = crc32c::crc32c(&h[..28]);
    h[28..32].copy_from_slice(&hcrc.to_le_bytes());
    h
}

/// Checks a whole snapshot file (`file`) against the seq its name declares and returns the payload
/// range.
pub(crate) fn check_snapshot(file: &[u8], seq: u64) -> Result<std::ops::Range<usize>, String> {
    if file.len() < SNAPSHOT_HEADER {
        return Err(format!(
            "snapshot file is {} bytes, shorter than its header",
            file.len()
        ));
    }
    if &file[..8] != SNAPSHOT_MAGIC {
        return Err("not a snapshot file (bad magic)".into());
    }
    let hcrc = u32_at(file, 28).unwrap_or(0);
    if crc32c::crc32c(&file[..28]) != hcrc {
        return Err("snapshot header checksum mismatch".into());
    }
    let stored_seq = u64_at(file, 8).unwrap_or(0);
    if stored_seq != seq {
        return Err(format!(
            "snapshot file named for seq {seq} holds seq {stored_seq}"
        ));
    }
    let len = u64_at(file, 16).unwrap_or(0);
    let actual = (file.len() - SNAPSHOT_HEADER) as u64;
    if len != actual {
        return Err(format!(
            "snapshot should hold {len} bytes, file holds {actual}"
        ));
    }
    let range = SNAPSHOT_HEADER..file.len();
    let crc = u32_at(file, 24).unwrap_or(0);
    if crate::checksum(seq, &file[range.clone()]) != crc {
        return Err("snapshot checksum mismatch".into());
    }
    Ok(range)
}

/// Longest directory name we produce; file systems allow 255 bytes per component.
const MAX_DIR_NAME: usize = 200;

/// Maps a pool id to a directory name: bytes in `[a-z0-9_-]` stay, everything else becomes
/// `%XX` (upper-case hex). No two ids give the same name, even on a case-insensitive file
/// system, and no name is `.`/`..` or contains a separator. Ids whose escaped form is too long
/// keep an escaped prefix plus `~` and a 64-bit FNV-1a hash of the id (`~` is always escaped, so
/// these cannot clash with short names); the pool directory also stores the id itself, which is
/// checked on open, so a hash collision is detected instead of mixing two pools.
pub(crate) fn pool_dir_name(pool: &str) -> String {
    let mut out = String::with_capacity(pool.len());
    for b in pool.bytes() {
        if b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.len() <= MAX_DIR_NAME {
        return out;
    }
    let mut cut = 150;
    // Do not split an escape.
    if let Some(p) = out[..cut].rfind('%')
        && p + 3 > cut
    {
        cut = p;
    }
    out.truncate(cut);
    out.push_str(&format!("~{:016x}", fnv1a64(pool.as_bytes())));
    out
}

/// Inverse of [`pool_dir_name`] for names without a hash; `None` otherwise.
pub(crate) fn pool_from_dir_name(name: &str) -> Option<String> {
    if name.contains('~') {
        return None;
    }
    let b = name.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = name.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// FNV-1a: stable forever (unlike `std`'s hasher), which a name stored on disk needs.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_names_round_trip_and_are_safe() {
        for id in [
            "pool", "Chrome", "a/b", "..", ".", "ü", "a%41", "x y", "-_09az",
        ] {
            let n = pool_dir_name(id);
            assert!(!n.contains('/') && n != "." && n != "..", "{id} -> {n}");
            assert_eq!(pool_from_dir_name(&n).as_deref(), Some(id));
        }
        assert_ne!(pool_dir_name("A"), pool_dir_name("a"));
    }

    #[test]
    fn long_dir_names_are_bounded_and_distinct() {
        let a = "Ä".repeat(300);
        let b = format!("{}x", "Ä".repeat(299));
        let (na, nb) = (pool_dir_name(&a), pool_dir_name(&b));
        assert!(na.len() <= MAX_DIR_NAME && nb.len() <= MAX_DIR_NAME);
        assert_ne!(na, nb);
        assert_eq!(pool_from_dir_name(&na), None);
    }

    #[test]
    fn numbered_names() {
        assert_eq!(parse_numbered(&segment_name(42), "log-", ".seg"), Some(42));
        assert_eq!(parse_numbered(&snapshot_name(7), "snap-", ".snap"), Some(7));
        assert_eq!(parse_numbered(&segment_name(0), "log-", ".seg"), None);
        assert_eq!(
            parse_numbered(&segment_name(u64::MAX), "log-", ".seg"),
            None
        );
        assert_eq!(parse_numbered("log-42.seg", "log-", ".seg"), None);
    }

    #[test]
    fn frames_round_trip_and_detect_damage() {
        let mut b = Vec::new();
        encode_frame(&mut b, 7, (6, 8), b"hello");
        let f = read_frame(&b, 0).expect("valid frame");
        assert_eq!(
            (
                f.seq,
                f.batch_first,
                f.batch_last,
                &b[f.payload_at..f.end()]
            ),
            (7, 6, 8, &b"hello"[..])
        );
        let mut bad = b.clone();
        bad[FRAME_HEADER + 1] ^= 1;
        assert!(matches!(
            read_frame(&bad, 0),
            Err(BadFrame::ChecksumMismatch)
        ));
        assert!(matches!(
            read_frame(&b[..b.len() - 1], 0),
            Err(BadFrame::Truncated)
        ));
    }
}
