//! A compact index from ids to slab slots.
//!
//! A million queued requests make `HashMap<Arc<str>, u32>` cost about 50
//! bytes per request (a fat pointer and a slot, at hash-table load). The id
//! already lives in the slab entry, so the table only needs the slot number:
//! 4 bytes plus one control byte, with the id compared through the slab.

use std::hash::BuildHasher;

use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;

/// Slot numbers keyed by the id stored in each slot.
#[derive(Clone, Debug, Default)]
pub(crate) struct IdIndex {
    table: HashTable<u32>,
}

fn hash(id: &str) -> u64 {
    FxBuildHasher.hash_one(id)
}

impl IdIndex {
    /// The slot holding `id`; `id_of` reads a slot's id.
    pub(crate) fn get<'a>(&self, id: &str, id_of: impl Fn(u32) -> &'a str) -> Option<u32> {
        self.table.find(hash(id), |&i| id_of(i) == id).copied()
    }

    /// Records that `slot` holds `id` (which must not be present).
    pub(crate) fn insert<'a>(&mut self, id: &str, slot: u32, id_of: impl Fn(u32) -> &'a str) {
        self.table
            .insert_unique(hash(id), slot, |&i| hash(id_of(i)));
    }

    /// Forgets `id`.
    pub(crate) fn remove<'a>(&mut self, id: &str, id_of: impl Fn(u32) -> &'a str) {
        if let Ok(e) = self.table.find_entry(hash(id), |&i| id_of(i) == id) {
            e.remove();
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_like_a_map() {
        let mut ids: Vec<String> = (0..1000).map(|i| format!("id-{i}")).collect();
        let mut idx = IdIndex::default();
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
