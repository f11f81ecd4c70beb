//! The rule every id from outside follows: pool, account, task and bot ids.
//!
//! An id must be present, short enough, and printable: a control character
//! in an id could forge a line of a text log or hide part of the id from an
//! operator reading a table. The rule lives here, once; the server applies
//! it with its configured bounds (and names the field and the setting in
//! its error), the CLI with the default bounds before it sends anything.
//! Pool ids have one more, fixed bound: the store keys pools by id, and
//! refuses longer keys ([`MAX_POOL_ID_BYTES`]).

/// Default most bytes of an id.
pub const DEFAULT_MAX_ID_BYTES: usize = 1024;
/// Default most characters of an id.
pub const DEFAULT_MAX_ID_CHARS: usize = 256;
/// Most bytes of a pool id, whatever the configuration: the store's bound
/// on its keys.
pub const MAX_POOL_ID_BYTES: usize = 1024;

/// How long an id may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdBounds {
    /// Most bytes (UTF-8).
    pub max_bytes: usize,
    /// Most characters (Unicode scalar values).
    pub max_chars: usize,
}

impl Default for IdBounds {
    fn default() -> Self {
        IdBounds {
            max_bytes: DEFAULT_MAX_ID_BYTES,
            max_chars: DEFAULT_MAX_ID_CHARS,
        }
    }
}

impl IdBounds {
    /// These bounds narrowed to what a pool id may be.
    pub fn for_pool(self) -> IdBounds {
        IdBounds {
            max_bytes: self.max_bytes.min(MAX_POOL_ID_BYTES),
            max_chars: self.max_chars,
        }
    }
}

/// Why an id was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The id is empty.
    #[error("is required")]
    Empty,
    /// More bytes than allowed.
    #[error("length {len} bytes exceeds the limit of {limit}")]
    TooManyBytes {
        /// The id's length in bytes.
        len: usize,
        /// The bound.
        limit: usize,
    },
    /// More characters than allowed.
    #[error("length {chars} characters exceeds the limit of {limit}")]
    TooManyChars {
        /// The id's length in characters.
        chars: usize,
        /// The bound.
        limit: usize,
    },
    /// A control character (a newline, a NUL, an escape, ...).
    #[error("control character U+{code:04X} at byte {at}; ids must be printable")]
    Control {
        /// The character's code point.
        code: u32,
        /// Its byte offset in the id.
        at: usize,
    },
}

/// Checks an id against the rule and `bounds`.
pub fn check_id(id: &str, bounds: IdBounds) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty);
    }
    if id.len() > bounds.max_bytes {
        return Err(IdError::TooManyBytes {
            len: id.len(),
            limit: bounds.max_bytes,
        });
    }
    let chars = id.chars().count();
    if chars > bounds.max_chars {
        return Err(IdError::TooManyChars {
            chars,
            limit: bounds.max_chars,
        });
    }
    if let Some((at, c)) = id.char_indices().find(|(_, c)| c.is_control()) {
        return Err(IdError::Control {
            code: u32::from(c),
            at,
        });
    }
    Ok(())
}

/// Checks a pool id: [`check_id`] with `bounds` narrowed by the store's.
pub fn check_pool_id(id: &str, bounds: IdBounds) -> Result<(), IdError> {
    check_id(id, bounds.for_pool())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_ids_within_bounds_pass() {
        let b = IdBounds::default();
        for ok in ["bot-1.example", "ünïcödé", "a b", "x"] {
            assert_eq!(check_id(ok, b), Ok(()), "{ok:?}");
        }
    }

    #[test]
    fn each_refusal_says_why() {
        let b = IdBounds::default();
        assert_eq!(check_id("", b), Err(IdError::Empty));
        assert_eq!(
            check_id(&"x".repeat(1025), b),
            Err(IdError::TooManyBytes {
                len: 1025,
                limit: 1024
            })
        );
        // 257 two-byte characters: within the bytes, over the characters.
        assert_eq!(
            check_id(&"é".repeat(257), b),
            Err(IdError::TooManyChars {
                chars: 257,
                limit: 256
            })
        );
        for (bad, code, at) in [("a\nb", 0x0a, 1), ("\0", 0, 0), ("ab\u{1b}", 0x1b, 2)] {
            assert_eq!(
                check_id(bad, b),
                Err(IdError::Control { code, at }),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn pool_ids_keep_the_store_bound_whatever_the_configuration() {
        let wide = IdBounds {
            max_bytes: 1 << 20,
            max_chars: 1 << 20,
        };
        let long = "p".repeat(MAX_POOL_ID_BYTES + 1);
        assert_eq!(check_id(&long, wide), Ok(()));
        assert_eq!(
            check_pool_id(&long, wide),
            Err(IdError::TooManyBytes {
                len: MAX_POOL_ID_BYTES + 1,
                limit: MAX_POOL_ID_BYTES
            })
        );
    }
}
