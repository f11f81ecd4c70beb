//! `check_invariants`: every derived structure recomputed from scratch and
//! compared. Tests run it after every operation; debug builds after every
//! command on small pools (see `Pool::apply`).

use super::ids::Entry;
use super::*;

#[cfg(any(test, debug_assertions))]
// Invariant checks panic on a broken invariant: that is their purpose.
#[allow(clippy::unwrap_used, clippy::expect_used)]
impl Scheduler {
    /// Recomputes every derived structure from scratch and compares.
    pub(crate) fn check_invariants(&self) {
        use std::collections::BTreeMap;
        // Requests: each queued one in its bucket, with the right key.
        let mut queued = 0;
        for (r, req) in self.requests.iter() {
            assert_eq!(self.request_idx(&req.id), Some(r));
            match req.place {
                Place::Queued(b) => {
                    queued += 1;
                    let bucket = &self.buckets[b];
                    assert_eq!(
                        (bucket.account, bucket.base, bucket.prov, bucket.group),
                        (req.account, req.base, req.prov, req.group)
                    );
                    assert!(bucket.members.to_vec().iter().any(|k| k.req == r));
                    let throttled = req
                        .group
                        .group()
                        .is_some_and(|g| self.groups[g].throttled());
                    assert_eq!(bucket.virt, VirtId::new(req.account, throttled));
                    let stamp = self.virt(bucket.virt).stamp;
                    assert!(
                        stamp <= self.last_pass,
                        "a placement stamp after the last pass"
                    );
                    if let Some(examined) = req.examined.explicit() {
                        assert!(
                            examined < stamp,
                            "explicit examined time not earlier than its placement's stamp"
                        );
                    }
                }
                Place::Running(w) => {
                    assert_eq!(self.workers[w].running().map(|t| t.req), Some(r));
                }
                Place::Detached => panic!("detached request {} between operations", req.id),
            }
        }
        assert_eq!(queued, self.queued);
        assert_eq!(self.request_ids.len(), self.requests.len());
        // Entries: lone buckets and containers, reached through their
        // placements.
        let mut expect_cells: BTreeMap<SetId, Vec<(QKey, EntryId, usize)>> = BTreeMap::new();
        let mut expect_provs: BTreeMap<(SetId, SetId), Vec<QKey>> = BTreeMap::new();
        let mut entries_of: BTreeMap<SetId, u32> = BTreeMap::new();
        let (mut buckets_seen, mut containers_seen) = (0, 0);
        for (a, acc) in self.accounts.iter() {
            for (half, virt) in acc.virt.iter().enumerate() {
                let v = VirtId::new(a, half == 1);
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
                        assert!(!bucket.members.is_empty());
                        let explicit = bucket
                            .members
                            .to_vec()
                            .iter()
                            .filter(|k| !k.ex.is_settled())
                            .count();
                        assert_eq!(explicit as u32, bucket.explicit);
                        if explicit > 0 {
                            assert!(bucket.dirty);
                            assert!(self.virt(bucket.virt).dirty.contains(&b));
                        }
                        let head = bucket.members.first().cloned().unwrap();
                        let t = self.translate(v, &head);
                        expect_provs.entry((base, prov)).or_default().push(t);
                        heads.push(head);
                    }
                    heads.sort();
                    if let Entry::Container(c) = e.get() {
                        assert_eq!(heads, self.containers[c].heads.to_vec());
                    }
                    let t = self.translate(v, self.entry_head(e).unwrap());
                    expect_cells
                        .entry(base)
                        .or_default()
                        .push((t, e, level_slot(virt.level)));
                }
            }
        }
        assert_eq!(
            buckets_seen,
            self.buckets.len(),
            "buckets outside their placement"
        );
        assert_eq!(
            containers_seen,
            self.containers.len(),
            "containers outside their placement"
        );
        let mut nonempty = [0usize; LEVELS];
        let mut stored_cells = 0;
        let mut uses_of: BTreeMap<SetId, u32> = BTreeMap::new();
        for (_, r) in self.requests.iter() {
            *uses_of.entry(r.base).or_default() += 1;
            *uses_of.entry(r.prov).or_default() += 1;
        }
        for (s, set) in self.labels.iter_sets() {
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
                    if want[0].2 < LEVELS {
                        nonempty[want[0].2] += 1;
                    }
                    for (prov, _) in self.entry_buckets(e) {
                        assert!(expect_provs.remove(&(s, prov)).is_some());
                    }
                }
                CellKind::Many(ci) => {
                    stored_cells += 1;
                    let cell = &self.cells[ci];
                    assert_eq!(cell.entries, n_entries, "entries of cell {s}");
                    self.check_stored_cell(
                        s,
                        cell,
                        &mut expect_cells,
                        &mut expect_provs,
                        &mut nonempty,
                    );
                }
            }
            let uses = uses_of.get(&s).copied().unwrap_or(0);
            assert_eq!(uses, set.req_refs, "request references of set {s}");
        }
        assert_eq!(stored_cells, self.cells.len(), "stored cells without a set");
        assert!(expect_cells.is_empty());
        assert!(expect_provs.is_empty(), "missing provisionable sub-cells");
        assert_eq!(nonempty, self.nonempty_cells);
        let mut set_refs = uses_of;
        for (_, g) in self.groups.iter() {
            let (base, prov) = g.sets();
            *set_refs.entry(base).or_default() += 1;
            *set_refs.entry(prov).or_default() += 1;
        }
        self.labels
            .check_invariants(self.workers.iter().map(|(_, w)| &*w.labels), &set_refs);
        self.check_workers_and_groups();
    }

    /// Compares a stored cell with what its entries say it should hold.
    #[allow(clippy::type_complexity)]
    pub(super) fn check_stored_cell(
        &self,
        s: SetId,
        cell: &Cell,
        expect_cells: &mut std::collections::BTreeMap<SetId, Vec<(QKey, EntryId, usize)>>,
        expect_provs: &mut std::collections::BTreeMap<(SetId, SetId), Vec<QKey>>,
        nonempty: &mut [usize; LEVELS],
    ) {
        let mut want = expect_cells.remove(&s).unwrap_or_default();
        want.sort_by(|a, b| a.0.cmp(&b.0));
        let have = cell.heads.to_vec();
        assert_eq!(have.len(), want.len(), "cell of set {s}");
        let mut per_level = [0u32; LEVELS + 1];
        for (h, (k, _, level)) in have.iter().zip(&want) {
            assert_eq!(h, k, "cell of set {s}");
            assert_eq!(h.v, k.v, "cell entry names its placement");
            per_level[*level] += 1;
        }
        assert_eq!(per_level, cell.per_level, "cell level counts of set {s}");
        for (prov, sub) in &cell.by_prov {
            let mut want = expect_provs.remove(&(s, *prov)).unwrap_or_default();
            want.sort();
            let have = sub.to_vec();
            assert_eq!(have, want, "provisionable sub-cell ({s}, {prov})");
            for (h, k) in have.iter().zip(&want) {
                assert_eq!(h.v, k.v, "sub-cell entry names its placement");
            }
        }
        for level in 0..LEVELS {
            if per_level[level] > 0 {
                nonempty[level] += 1;
            }
        }
    }

    pub(super) fn check_workers_and_groups(&self) {
        use std::collections::BTreeMap;
        self.check_groups();
        self.check_eligibility();
        self.workers.check_invariants();
        // Running counts.
        let mut by_account: BTreeMap<AccountIdx, [u32; LEVELS]> = BTreeMap::new();
        for (_, worker) in self.workers.iter() {
            if let Some(run) = worker.running() {
                let req = &self.requests[run.req];
                by_account.entry(req.account).or_default()[run.priority as usize] += 1;
            }
        }
        let mut requests: BTreeMap<AccountIdx, u32> = BTreeMap::new();
        for (_, req) in self.requests.iter() {
            *requests.entry(req.account).or_default() += 1;
        }
        self.accounts.check_invariants(&requests, &by_account);
    }
}
