//! Dense storage with stable `u32` indices and slot reuse.
//!
//! Requests, workers, buckets and friends refer to each other by index
//! instead of by string or pointer: indices are small, copyable and keep the
//! hot structures compact. Freed slots are reused in LIFO order; that order
//! never influences any output (outputs are ordered by ids and keys).

/// A slab of `T` addressed by `u32`.
#[derive(Clone, Debug)]
pub(crate) struct Slab<T> {
    slots: Vec<Option<T>>,
    free: Vec<u32>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Slab<T> {
    pub(crate) fn insert(&mut self, v: T) -> u32 {
        self.len += 1;
        if let Some(i) = self.free.pop() {
            self.slots[i as usize] = Some(v);
            i
        } else {
            self.slots.push(Some(v));
            (self.slots.len() - 1) as u32
        }
    }

    pub(crate) fn remove(&mut self, i: u32) -> Option<T> {
        let v = self.slots.get_mut(i as usize)?.take();
        if v.is_some() {
            self.len -= 1;
            self.free.push(i);
        }
        v
    }

    pub(crate) fn get(&self, i: u32) -> Option<&T> {
        self.slots.get(i as usize)?.as_ref()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &T)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|v| (i as u32, v)))
    }
}

impl<T> std::ops::Index<u32> for Slab<T> {
    type Output = T;
    fn index(&self, i: u32) -> &T {
        match self.slots.get(i as usize) {
            Some(Some(v)) => v,
            // Indices are created by this crate and removed together with
            // every reference to them; a dangling index is a bug here, never
            // a consequence of input.
            _ => panic!("slab index {i} is vacant"),
        }
    }
}

impl<T> std::ops::IndexMut<u32> for Slab<T> {
    fn index_mut(&mut self, i: u32) -> &mut T {
        match self.slots.get_mut(i as usize) {
            Some(Some(v)) => v,
            _ => panic!("slab index {i} is vacant"),
        }
    }
}
