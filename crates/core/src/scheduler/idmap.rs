//! A compact index from ids to slab slots.
//!
//! A million queued requests make `HashMap<Arc<str>, u32>` cost about 50
//! bytes per request (a fat pointer and a slot, at hash-table load). The id
//! already lives in the slab entry, so the table only needs the slot number:
//! 4 bytes plus one control byte, with the id compared through the slab.

use std::hash::BuildHasher;

use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;

/// Slots keyed by the id stored in each slot.
#[derive(Clone, Debug)]
pub(crate) struct IdIndex<I> {
    table: HashTable<I>,
}

impl<I> Default for IdIndex<I> {
    fn default() -> Self {
        IdIndex {
            table: HashTable::new(),
        }
    }
}

fn hash(id: &str) -> u64 {
    FxBuildHasher.hash_one(id)
}

impl<I: Copy + Eq> IdIndex<I> {
    /// The slot holding `id`; `id_of` reads a slot's id.
    pub(crate) fn get<'a>(&self, id: &str, id_of: impl Fn(I) -> &'a str) -> Option<I> {
        self.table.find(hash(id), |&i| id_of(i) == id).copied()
    }

    /// Records that `slot` holds `id` (which must not be present).
    pub(crate) fn insert<'a>(&mut self, id: &str, slot: I, id_of: impl Fn(I) -> &'a str) {
        self.table
            .insert_unique(hash(id), slot, |&i| hash(id_of(i)));
    }

    /// Makes room for `additional` more ids, so that a bulk load (a
    /// snapshot decode) does not rehash the table as it grows.
    pub(crate) fn reserve<'a>(&mut self, additional: usize, id_of: impl Fn(I) -> &'a str) {
        self.table.reserve(additional, |&i| hash(id_of(i)));
    }

    /// Forgets `id`.
    pub(crate) fn remove<'a>(&mut self, id: &str, id_of: impl Fn(I) -> &'a str) {
        if let Ok(e) = self.table.find_entry(hash(id), |&i| id_of(i) == id) {
            e.remove();
        }
    }

    #[cfg(any(test, debug_assertions))]
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }
}

/// Slot numbers keyed by something each slot can produce (a label set's
/// labels, a fanout group's label union), hashed with `u64` hashes computed
/// by the caller. Like [`IdIndex`], it stores only the slot: the key lives in
/// the slot, so the table costs about 5 bytes per entry instead of a second
/// copy of the key.
#[derive(Clone, Debug)]
pub(crate) struct SlotIndex<I> {
    table: HashTable<I>,
}

impl<I> Default for SlotIndex<I> {
    fn default() -> Self {
        SlotIndex {
            table: HashTable::new(),
        }
    }
}

impl<I: Copy + Eq> SlotIndex<I> {
    /// The slot whose key has hash `hash` and for which `is_key` holds.
    pub(crate) fn get(&self, hash: u64, is_key: impl Fn(I) -> bool) -> Option<I> {
        self.table.find(hash, |&i| is_key(i)).copied()
    }

    /// Records `slot` under `hash`; `hash_of` recomputes any slot's hash
    /// when the table grows.
    pub(crate) fn insert(&mut self, hash: u64, slot: I, hash_of: impl Fn(I) -> u64) {
        self.table.insert_unique(hash, slot, |&i| hash_of(i));
    }

    /// Makes room for `additional` more slots (see [`IdIndex::reserve`]).
    pub(crate) fn reserve(&mut self, additional: usize, hash_of: impl Fn(I) -> u64) {
        self.table.reserve(additional, |&i| hash_of(i));
    }

    /// Forgets `slot`, recorded under `hash`.
    pub(crate) fn remove(&mut self, hash: u64, slot: I) {
        if let Ok(e) = self.table.find_entry(hash, |&i| i == slot) {
            e.remove();
        }
    }

    #[cfg(any(test, debug_assertions))]
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }
}

/// The hash of a sorted label-id sequence.
pub(crate) fn hash_ids(ids: impl IntoIterator<Item = u32>) -> u64 {
    use std::hash::Hasher;
    let mut h = FxBuildHasher.build_hasher();
    let mut n = 0u64;
    for id in ids {
        h.write_u32(id);
        n += 1;
    }
    h.write_u64(n);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_like_a_map() {
        let mut ids: Vec<String> = (0..1000).map(|i| format!("id-{i}")).collect();
        let mut idx: IdIndex<u32> = IdIndex::default();
        for (i, id) in ids.iter().enumerate() {
            idx.insert(id, i as u32, |s| &ids[s as usize]);
        }
        assert_eq!(idx.len(), 1000);
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(idx.get(id, |s| &ids[s as usize]), Some(i as u32));
        }
        assert_eq!(idx.get("nope", |s| &ids[s as usize]), None);
        for id in ids.iter().step_by(2) {
            idx.remove(id, |s| &ids[s as usize]);
        }
        assert_eq!(idx.len(), 500);
        assert_eq!(idx.get("id-2", |s| &ids[s as usize]), None);
        assert_eq!(idx.get("id-3", |s| &ids[s as usize]), Some(3));
        ids.clear();
    }
}
