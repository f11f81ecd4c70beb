//! How pool ids map to directory names in the data directory.

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
}
