//! Dense storage with stable slot numbers and slot reuse.
//!
//! Requests, workers, buckets and friends refer to each other by index
//! instead of by string or pointer: indices are small, copyable and keep the
//! hot structures compact. Freed slots are reused in LIFO order; that order
//! never influences any output (outputs are ordered by ids and keys).

use std::marker::PhantomData;

use super::ids::SlotId;

/// Slots per chunk (a power of two).
const CHUNK_BITS: u32 = 10;
const CHUNK: usize = 1 << CHUNK_BITS;

/// A slab of `T` addressed by the typed id `I` (see `ids.rs`).
///
/// Slots live in chunks of [`CHUNK`] rather than in one vector: a vector
/// that doubles holds up to twice the memory it needs, and while it moves to
/// a larger allocation both copies are resident. With a million requests
/// that was a large share of the memory the slabs used. Only the first chunk grows
/// gradually, so a small pool stays small.
#[derive(Clone, Debug)]
pub(crate) struct Slab<I, T> {
    chunks: Vec<Vec<Option<T>>>,
    free: Vec<u32>,
    len: usize,
    id: PhantomData<fn(I) -> I>,
}

impl<I, T> Default for Slab<I, T> {
    fn default() -> Self {
        Slab {
            chunks: Vec::new(),
            free: Vec::new(),
            len: 0,
            id: PhantomData,
        }
    }
}

fn split(i: u32) -> (usize, usize) {
    ((i >> CHUNK_BITS) as usize, i as usize & (CHUNK - 1))
}

impl<I: SlotId, T> Slab<I, T> {
    pub(crate) fn insert(&mut self, v: T) -> I {
        self.len += 1;
        if let Some(i) = self.free.pop() {
            let (c, o) = split(i);
            self.chunks[c][o] = Some(v);
            return I::from_slot(i);
        }
        if self.chunks.last().is_none_or(|c| c.len() == CHUNK) {
            // Later chunks are allocated whole: untouched capacity costs no
            // resident memory.
            let cap = if self.chunks.is_empty() { 0 } else { CHUNK };
            self.chunks.push(Vec::with_capacity(cap));
        }
        let c = self.chunks.len() - 1;
        let chunk = &mut self.chunks[c];
        chunk.push(Some(v));
        I::from_slot(((c << CHUNK_BITS) + chunk.len() - 1) as u32)
    }

    pub(crate) fn remove(&mut self, id: I) -> Option<T> {
        let i = id.slot();
        let (c, o) = split(i);
        let v = self.chunks.get_mut(c)?.get_mut(o)?.take();
        if v.is_some() {
            self.len -= 1;
            self.free.push(i);
        }
        v
    }

    pub(crate) fn get(&self, id: I) -> Option<&T> {
        let (c, o) = split(id.slot());
        self.chunks.get(c)?.get(o)?.as_ref()
    }

    fn get_mut(&mut self, id: I) -> Option<&mut T> {
        let (c, o) = split(id.slot());
        self.chunks.get_mut(c)?.get_mut(o)?.as_mut()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Occupied slots in slot order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (I, &T)> {
        self.chunks
            .iter()
            .flatten()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|v| (I::from_slot(i as u32), v)))
    }
}

impl<I: SlotId, T> std::ops::Index<I> for Slab<I, T> {
    type Output = T;
    fn index(&self, i: I) -> &T {
        match self.get(i) {
            Some(v) => v,
            // Indices are created by this crate and removed together with
            // every reference to them; a dangling index is a bug here, never
            // a consequence of input.
            None => panic!("slab index {} is vacant", i.slot()),
        }
    }
}

impl<I: SlotId, T> std::ops::IndexMut<I> for Slab<I, T> {
    fn index_mut(&mut self, i: I) -> &mut T {
        match self.get_mut(i) {
            Some(v) => v,
            None => panic!("slab index {} is vacant", i.slot()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_are_stable_across_chunks_and_reused() {
        let mut s: Slab<u32, u32> = Slab::default();
        let n = 3 * CHUNK as u32 + 5;
        for i in 0..n {
            assert_eq!(s.insert(i), i);
        }
        assert_eq!(s.len(), n as usize);
        assert_eq!(s[CHUNK as u32], CHUNK as u32);
        assert_eq!(s.remove(CHUNK as u32 + 1), Some(CHUNK as u32 + 1));
        assert_eq!(s.remove(CHUNK as u32 + 1), None);
        assert_eq!(s.get(CHUNK as u32 + 1), None);
        assert_eq!(s.get(n), None);
        assert_eq!(s.insert(7), CHUNK as u32 + 1);
        s[5] = 50;
        let all: Vec<(u32, u32)> = s.iter().map(|(i, &v)| (i, v)).collect();
        assert_eq!(all.len(), n as usize);
        assert_eq!(all[5], (5, 50));
        assert_eq!(all[CHUNK + 1], (CHUNK as u32 + 1, 7));
        assert!(all.windows(2).all(|w| w[0].0 < w[1].0));
    }
}
