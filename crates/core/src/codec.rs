//! Binary encoding primitives for snapshots and logged commands.
//!
//! A small hand-written format rather than a general serialization library:
//! the bytes must be canonical (the same state always encodes to the same
//! bytes), compact at a million queued tasks, and decoding must treat its
//! input as hostile — every length and index is checked, and nothing in
//! here can panic on bad bytes.

use crate::time::Time;

/// Why bytes could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ended early.
    #[error("truncated input at byte {0}")]
    Truncated(usize),
    /// The input does not start with the expected magic bytes.
    #[error("not a {0}: bad magic bytes")]
    BadMagic(&'static str),
    /// A format version this build cannot read.
    #[error("unsupported {what} version {version}")]
    Version {
        /// What was being decoded.
        what: &'static str,
        /// The version found.
        version: u32,
    },
    /// A value that is out of range or inconsistent.
    #[error("invalid {0}")]
    Invalid(String),
    /// Bytes left over after the end.
    #[error("{0} trailing bytes")]
    Trailing(usize),
}

/// Appends values to a byte vector.
#[derive(Default)]
pub(crate) struct Writer {
    pub(crate) buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }

    pub(crate) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    pub(crate) fn bool(&mut self, v: bool) {
        self.buf.push(u8::from(v));
    }

    pub(crate) fn u32_le(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub(crate) fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    pub(crate) fn len(&mut self, n: usize) {
        self.varint(n as u64);
    }

    pub(crate) fn zigzag(&mut self, v: i64) {
        self.varint(((v << 1) ^ (v >> 63)) as u64);
    }

    pub(crate) fn f32(&mut self, v: f32) {
        self.buf.extend_from_slice(&v.to_bits().to_le_bytes());
    }

    pub(crate) fn str(&mut self, s: &str) {
        self.len(s.len());
        self.bytes(s.as_bytes());
    }

    /// A time as a signed offset from `base`, small for times near it.
    pub(crate) fn time_rel(&mut self, t: Time, base: Time) {
        self.zigzag(t.nanos_since(base));
    }

    pub(crate) fn time(&mut self, t: Time) {
        self.varint(t.as_nanos() as u64);
    }
}

/// Reads values from a byte slice, checking every step.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::Trailing(n)),
        }
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::Truncated(self.buf.len()));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.bytes(1)?[0])
    }

    pub(crate) fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(DecodeError::Invalid(format!("boolean byte {b}"))),
        }
    }

    pub(crate) fn u32_le(&mut self) -> Result<u32, DecodeError> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            if shift == 63 && b > 1 {
                return Err(DecodeError::Invalid("varint overflows 64 bits".into()));
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError::Invalid("varint longer than 10 bytes".into()))
    }

    /// A count of items that each take at least `min_item_bytes`, checked
    /// against the remaining input so that a corrupt count cannot make the
    /// decoder allocate without bound.
    pub(crate) fn len(&mut self, min_item_bytes: usize) -> Result<usize, DecodeError> {
        let n = self.varint()?;
        let max = self.remaining() / min_item_bytes.max(1);
        if n > max as u64 {
            return Err(DecodeError::Invalid(format!(
                "length {n} exceeds what {} remaining bytes can hold",
                self.remaining()
            )));
        }
        Ok(n as usize)
    }

    /// An index into a table of `bound` entries.
    pub(crate) fn index(&mut self, bound: usize, what: &str) -> Result<usize, DecodeError> {
        let i = self.varint()?;
        if i >= bound as u64 {
            return Err(DecodeError::Invalid(format!(
                "{what} index {i} out of range (table has {bound})"
            )));
        }
        Ok(i as usize)
    }

    pub(crate) fn zigzag(&mut self) -> Result<i64, DecodeError> {
        let v = self.varint()?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }

    pub(crate) fn f32(&mut self) -> Result<f32, DecodeError> {
        let b = self.bytes(4)?;
        Ok(f32::from_bits(u32::from_le_bytes([b[0], b[1], b[2], b[3]])))
    }

    /// A finite `f32` (balances and costs are never NaN or infinite).
    pub(crate) fn finite_f32(&mut self, what: &str) -> Result<f32, DecodeError> {
        let v = self.f32()?;
        if v.is_finite() {
            Ok(v)
        } else {
            Err(DecodeError::Invalid(format!(
                "{what}: non-finite value {v}"
            )))
        }
    }

    pub(crate) fn str(&mut self) -> Result<&'a str, DecodeError> {
        let n = self.len(1)?;
        let b = self.bytes(n)?;
        std::str::from_utf8(b).map_err(|_| DecodeError::Invalid("string is not UTF-8".into()))
    }

    pub(crate) fn time_rel(&mut self, base: Time) -> Result<Time, DecodeError> {
        let d = self.zigzag()?;
        let t = base
            .as_nanos()
            .checked_add(d)
            .filter(|&n| n >= 0)
            .ok_or_else(|| DecodeError::Invalid("time out of range".into()))?;
        Ok(Time::from_nanos(t))
    }

    pub(crate) fn time(&mut self) -> Result<Time, DecodeError> {
        let v = self.varint()?;
        i64::try_from(v)
            .map(Time::from_nanos)
            .map_err(|_| DecodeError::Invalid("time out of range".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trips(a in any::<u64>(), b in any::<i64>(), c in any::<f32>(), s in ".*") {
            let mut w = Writer::default();
            w.varint(a);
            w.zigzag(b);
            w.f32(c);
            w.str(&s);
            let mut r = Reader::new(&w.buf);
            prop_assert_eq!(r.varint().unwrap(), a);
            prop_assert_eq!(r.zigzag().unwrap(), b);
            prop_assert_eq!(r.f32().unwrap().to_bits(), c.to_bits());
            prop_assert_eq!(r.str().unwrap(), s.as_str());
            prop_assert!(r.finish().is_ok());
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut r = Reader::new(&bytes);
            let _ = r.varint();
            let _ = r.str();
            let _ = r.len(1);
            let _ = r.time_rel(Time::EPOCH);
            let _ = r.bool();
        }
    }
}
