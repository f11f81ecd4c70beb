//! `QueueIndex::check_invariants`: the index's entries, cells and counts
//! recomputed from its buckets and compared (see the module docs).

use std::collections::BTreeMap;

use super::{Cell, QueueIndex, bucket_hash, level_slot};
use crate::scheduler::LEVELS;
use crate::scheduler::QKey;
use crate::scheduler::ids::{AccountIdx, CellKind, Entry, EntryId, SetId, SlotId, VirtId};
use crate::scheduler::labels::LabelTable;
use crate::time::Time;

/// What the entries say each base set's cell should hold: the translated
/// head, entry and level slot of each entry.
type ExpectCells = BTreeMap<SetId, Vec<(QKey, EntryId, usize)>>;
/// What the buckets say each provisionable sub-cell should hold.
type ExpectProvs = BTreeMap<(SetId, SetId), Vec<QKey>>;

// Invariant checks panic on a broken invariant: that is their purpose.
#[allow(clippy::unwrap_used, clippy::expect_used)]
impl QueueIndex {
    /// Recomputes the entries, cells and counts from the buckets and
    /// compares; `labels` holds each base set's cell reference and
    /// `last_pass` is the time of the last pass.
    pub(crate) fn check_invariants(&self, labels: &LabelTable, last_pass: Time) {
        // Entries: lone buckets and containers, reached through their
        // placements.
        let mut expect_cells = ExpectCells::new();
        let mut expect_provs = ExpectProvs::new();
        let mut entries_of: BTreeMap<SetId, u32> = BTreeMap::new();
        let (mut buckets_seen, mut containers_seen) = (0, 0);
        let mut headed_at = [0u64; LEVELS + 1];
        for (i, placements) in self.placements.iter().enumerate() {
            let a = AccountIdx::from_slot(i as u32);
            for (half, virt) in placements.iter().enumerate() {
                let v = VirtId::new(a, half == 1);
                if !virt.entries.is_empty() {
                    assert!(
                        virt.stamp <= last_pass,
                        "a placement stamp after the last pass"
                    );
                }
                let mut settled = 0u64;
                // Every entry has a head: its buckets are non-empty.
                assert_eq!(virt.headed, virt.entries.len() as u64, "heads of {v:?}");
                headed_at[level_slot(virt.level)] += virt.headed;
                for (&base, &e) in &virt.entries {
                    *entries_of.entry(base).or_default() += 1;
                    assert_eq!(self.entry_virt(e), v);
                    if let Entry::Container(c) = e.get() {
                        containers_seen += 1;
                        let cont = &self.containers[c];
                        assert_eq!(cont.base, base);
                        assert!(
                            cont.buckets.len() >= 2,
                            "container {c} of fewer than two buckets"
                        );
                        assert!(cont.buckets.windows(2).all(|w| w[0].0 < w[1].0));
                    }
                    let mut heads = Vec::new();
                    for (prov, b) in self.entry_buckets(e) {
                        buckets_seen += 1;
                        let bucket = &self.buckets[b];
                        assert_eq!(self.entry_of(b), e);
                        assert_eq!((bucket.base, bucket.prov, bucket.virt), (base, prov, v));
                        assert_eq!(bucket.account, a, "bucket {b} of another account");
                        assert!(!bucket.members.is_empty());
                        let hash = bucket_hash(bucket.account, bucket.base, bucket.prov);
                        assert_eq!(
                            self.bucket_ids.get(hash, |x| x == b),
                            Some(b),
                            "bucket {b} not findable by its key"
                        );
                        let explicit = bucket
                            .members
                            .to_vec()
                            .iter()
                            .filter(|k| !k.ex.is_settled())
                            .count();
                        assert_eq!(explicit as u32, bucket.explicit);
                        settled += (bucket.members.len() - explicit) as u64;
                        if explicit > 0 {
                            assert!(bucket.dirty);
                            assert!(virt.dirty.contains(&b));
                        }
                        let head = bucket.members.first().cloned().unwrap();
                        let t = self.translate(last_pass, v, &head);
                        expect_provs.entry((base, prov)).or_default().push(t);
                        heads.push(head);
                    }
                    heads.sort();
                    if let Entry::Container(c) = e.get() {
                        assert_eq!(heads, self.containers[c].heads.to_vec());
                    }
                    let t = self.translate(last_pass, v, self.entry_head(e).unwrap());
                    expect_cells
                        .entry(base)
                        .or_default()
                        .push((t, e, level_slot(virt.level)));
                }
                assert_eq!(virt.settled, settled, "settled members of {v:?}");
            }
        }
        assert_eq!(
            buckets_seen,
            self.buckets.len(),
            "buckets outside their placement"
        );
        assert_eq!(self.bucket_ids.len(), self.buckets.len(), "bucket index");
        assert_eq!(
            containers_seen,
            self.containers.len(),
            "containers outside their placement"
        );
        assert_eq!(headed_at, self.headed_at, "entry heads per level");
        // Cells: derived from a lone entry, or stored.
        let mut stored_cells = 0;
        for (s, set) in labels.iter_sets() {
            let n_entries = entries_of.get(&s).copied().unwrap_or(0);
            match set.cell.kind() {
                CellKind::None => {
                    assert_eq!(n_entries, 0, "entries of set {s} without a cell")
                }
                CellKind::Single(e) => {
                    assert_eq!(n_entries, 1, "derived cell of set {s}");
                    let want = expect_cells.remove(&s).unwrap_or_default();
                    assert_eq!(want.len(), 1);
                    assert_eq!(want[0].1, e);
                    for (prov, _) in self.entry_buckets(e) {
                        assert!(expect_provs.remove(&(s, prov)).is_some());
                    }
                }
                CellKind::Many(ci) => {
                    stored_cells += 1;
                    let cell = &self.cells[ci];
                    assert_eq!(cell.entries, n_entries, "entries of cell {s}");
                    check_stored_cell(s, cell, &mut expect_cells, &mut expect_provs);
                }
            }
        }
        assert_eq!(stored_cells, self.cells.len(), "stored cells without a set");
        assert!(expect_cells.is_empty());
        assert!(expect_provs.is_empty(), "missing provisionable sub-cells");
    }
}

/// Compares a stored cell with what its entries say it should hold.
fn check_stored_cell(
    s: SetId,
    cell: &Cell,
    expect_cells: &mut ExpectCells,
    expect_provs: &mut ExpectProvs,
) {
    let mut want = expect_cells.remove(&s).unwrap_or_default();
    want.sort_by(|a, b| a.0.cmp(&b.0));
    let have = cell.heads.to_vec();
    assert_eq!(have.len(), want.len(), "cell of set {s}");
    for (h, (k, _, _)) in have.iter().zip(&want) {
        assert_eq!(h, k, "cell of set {s}");
        assert_eq!(h.v, k.v, "cell entry names its placement");
    }
    for (prov, sub) in &cell.by_prov {
        let mut want = expect_provs.remove(&(s, *prov)).unwrap_or_default();
        want.sort();
        let have = sub.to_vec();
        assert_eq!(have, want, "provisionable sub-cell ({s}, {prov})");
        for (h, k) in have.iter().zip(&want) {
            assert_eq!(h.v, k.v, "sub-cell entry names its placement");
        }
    }
}
