//! The queue index: buckets, containers, cells and the settled marker (see
//! the parent module's docs).
//!
//! Everything here (and in its sibling files) maintains derived structures; none of it decides what the
//! scheduler does. The invariants, checked by `check_invariants` in tests:
//!
//! * a queued request is a member of exactly one bucket, the one for its
//!   (account, base set, provisionable set), placed in its account's normal
//!   or throttled placement according to its fanout group;
//! * a placement has one entry per base set: a lone bucket, or a container
//!   of two or more buckets whose `heads` are their heads; a base set's cell
//!   is derived from its only entry, or stored and holding the head of every
//!   entry, whatever its placement's level;
//! * a request key is settled ([`ExKey::SETTLED`]) iff its examined time
//!   equals its placement's stamp, and explicit keys are strictly earlier.

use super::idmap::hash_ids;
use super::ids::Entry;
use super::*;
use crate::time::Time;
use smallvec::SmallVec;

impl Scheduler {
    // ----------------------------------------------------------- queue index

    pub(super) fn virt_mut(&mut self, v: VirtId) -> &mut Virt {
        &mut self.accounts[v.account()].virt[v.half()]
    }

    pub(crate) fn virt(&self, v: VirtId) -> &Virt {
        &self.accounts[v.account()].virt[v.half()]
    }

    /// Placement `v`'s key `k` as a cell stores it: in pool-wide terms (see
    /// [`super::Cell`]), where a settled key of a placement whose stamp is
    /// older than the last pass carries the stamp, and marked with the
    /// placement.
    pub(crate) fn translate(&self, v: VirtId, k: &QKey) -> QKey {
        let mut k = k.clone();
        k.v = v;
        if k.ex.is_settled() {
            let stamp = self.virt(v).stamp;
            if stamp != self.last_pass {
                k.ex = ExKey::at(stamp);
            }
        }
        k
    }

    /// Queues a detached request, keeping its examined time.
    pub(crate) fn enqueue(&mut self, r: ReqIdx) {
        let (a, base, prov, g, examined) = {
            let req = &self.requests[r];
            (
                req.account,
                req.base,
                req.prov,
                req.group,
                req.examined.detached(),
            )
        };
        self.set_queued(base, true, true);
        self.set_queued(prov, false, true);
        let b = self.bucket_for(a, base, prov, g);
        let v = self.buckets[b].virt;
        if examined > self.virt(v).stamp {
            self.raise_stamp(v, examined);
        }
        let settled = examined == self.virt(v).stamp;
        if settled {
            self.requests[r].examined = Examined::SETTLED;
        }
        self.requests[r].place = Place::Queued(b);
        let key = self.qkey(r);
        let old_head = self.buckets[b].members.first().cloned();
        self.buckets[b].members.insert(key);
        if settled {
            self.virt_mut(v).settled += 1;
        } else {
            self.buckets[b].explicit += 1;
            self.mark_bucket_dirty(b);
        }
        self.bucket_members_changed(b, old_head);
        self.queued += 1;
    }

    /// Takes a queued request out of the queue, leaving it detached with an
    /// explicit examined time.
    pub(crate) fn dequeue(&mut self, r: ReqIdx) {
        let Place::Queued(b) = self.requests[r].place else {
            return;
        };
        let key = self.qkey(r);
        let examined = self.examined(r);
        let old_head = self.buckets[b].members.first().cloned();
        self.buckets[b].members.remove(&key);
        let v = self.buckets[b].virt;
        if self.requests[r].settled() {
            self.virt_mut(v).settled -= 1;
        } else {
            self.buckets[b].explicit -= 1;
        }
        self.bucket_members_changed(b, old_head);
        if self.buckets[b].members.is_empty() {
            self.free_bucket(b);
        }
        let (base, prov) = (self.requests[r].base, self.requests[r].prov);
        self.set_queued(base, true, false);
        self.set_queued(prov, false, false);
        let req = &mut self.requests[r];
        req.examined = Examined::at(examined);
        req.place = Place::Detached;
        self.queued -= 1;
    }

    pub(super) fn mark_bucket_dirty(&mut self, b: BucketId) {
        let bucket = &mut self.buckets[b];
        if !bucket.dirty {
            bucket.dirty = true;
            let v = bucket.virt;
            self.virt_mut(v).dirty.push(b);
        }
    }

    pub(super) fn bucket_for(
        &mut self,
        a: AccountIdx,
        base: SetId,
        prov: SetId,
        g: GroupRef,
    ) -> BucketId {
        let hash = bucket_hash(a, base, prov);
        let buckets = &self.buckets;
        let key_of = |b: &Bucket| (b.account, b.base, b.prov);
        if let Some(b) = self
            .bucket_ids
            .get(hash, |b| key_of(&buckets[b]) == (a, base, prov))
        {
            return b;
        }
        let throttled = g.group().is_some_and(|g| self.groups[g].throttled());
        let v = VirtId::new(a, throttled);
        let b = self.buckets.insert(Bucket {
            virt: v,
            container: None,
            account: a,
            base,
            prov,
            group: g,
            members: Default::default(),
            explicit: 0,
            dirty: false,
        });
        self.attach_bucket(b, v);
        if let Some(g) = g.group() {
            self.groups.add_bucket(g, b);
        }
        let buckets = &self.buckets;
        self.bucket_ids.insert(hash, b, |x| {
            let bucket = &buckets[x];
            bucket_hash(bucket.account, bucket.base, bucket.prov)
        });
        b
    }

    /// The placement of entry `e` (see [`super::Container`]).
    pub(crate) fn entry_virt(&self, e: EntryId) -> VirtId {
        match e.get() {
            Entry::Container(c) => self.containers[c].virt,
            Entry::Bucket(b) => self.buckets[b].virt,
        }
    }

    /// The base set of entry `e`.
    fn entry_base(&self, e: EntryId) -> SetId {
        match e.get() {
            Entry::Container(c) => self.containers[c].base,
            Entry::Bucket(b) => self.buckets[b].base,
        }
    }

    /// The head of entry `e`: the best head of its buckets.
    pub(crate) fn entry_head(&self, e: EntryId) -> Option<&QKey> {
        match e.get() {
            Entry::Container(c) => self.containers[c].heads.first(),
            Entry::Bucket(b) => self.buckets[b].members.first(),
        }
    }

    /// The buckets of entry `e`, as (provisionable set, bucket) sorted by
    /// set.
    pub(crate) fn entry_buckets(&self, e: EntryId) -> impl Iterator<Item = (SetId, BucketId)> + '_ {
        let mut lone = None;
        let mut many: &[(SetId, BucketId)] = &[];
        match e.get() {
            Entry::Container(c) => many = &self.containers[c].buckets,
            Entry::Bucket(b) => lone = Some((self.buckets[b].prov, b)),
        }
        lone.into_iter().chain(many.iter().copied())
    }

    /// Entry `e`'s bucket for provisionable set `prov`, if any.
    pub(crate) fn entry_bucket_for(&self, e: EntryId, prov: SetId) -> Option<BucketId> {
        match e.get() {
            Entry::Container(c) => {
                let buckets = &self.containers[c].buckets;
                let i = buckets.binary_search_by_key(&prov, |&(p, _)| p).ok()?;
                Some(buckets[i].1)
            }
            Entry::Bucket(b) => (self.buckets[b].prov == prov).then_some(b),
        }
    }

    /// The entry bucket `b` belongs to.
    pub(crate) fn entry_of(&self, b: BucketId) -> EntryId {
        match self.buckets[b].container {
            None => EntryId::bucket(b),
            Some(c) => EntryId::container(c),
        }
    }

    /// Counts a new entry in base set `base`'s cell.
    pub(super) fn cell_add_entry(&mut self, base: SetId, e: EntryId) {
        match self.labels[base].cell.kind() {
            CellKind::None => self.labels[base].cell = CellRef::single(e),
            CellKind::Single(e0) => {
                let mut cell = self.derived_cell(e0);
                cell.entries += 1;
                let i = self.cells.insert(cell);
                self.labels[base].cell = CellRef::many(i);
            }
            CellKind::Many(i) => self.cells[i].entries += 1,
        }
    }

    /// Forgets entry `e` of base set `base`'s cell (its head is out).
    pub(super) fn cell_remove_entry(&mut self, base: SetId, e: EntryId) {
        match self.labels[base].cell.kind() {
            CellKind::None => debug_assert!(false, "entry without a cell"),
            CellKind::Single(e0) => {
                debug_assert_eq!(e0, e);
                self.labels[base].cell = CellRef::NONE;
            }
            CellKind::Many(i) => {
                let cell = &mut self.cells[i];
                cell.entries -= 1;
                if cell.entries == 0 {
                    debug_assert!(cell.heads.is_empty() && cell.by_prov.is_empty());
                    self.cells.remove(i);
                    self.labels[base].cell = CellRef::NONE;
                }
            }
        }
    }

    /// Entry `old` of base set `base` becomes `new` (a lone bucket gains a
    /// container or a container goes back to its last bucket). The head,
    /// and so the cell's stored keys, stay the same.
    pub(super) fn cell_rename_entry(&mut self, base: SetId, old: EntryId, new: EntryId) {
        if self.labels[base].cell.kind() == CellKind::Single(old) {
            self.labels[base].cell = CellRef::single(new);
        }
    }

    /// The cell of a base set whose only entry is `e`, as it would be
    /// stored.
    pub(super) fn derived_cell(&self, e: EntryId) -> Cell {
        let v = self.entry_virt(e);
        let mut cell = Cell {
            entries: 1,
            ..Cell::default()
        };
        if let Some(head) = self.entry_head(e) {
            cell.heads.insert(self.translate(v, head));
            cell.per_level[level_slot(self.virt(v).level)] = 1;
        }
        for (prov, b) in self.entry_buckets(e) {
            if let Some(head) = self.buckets[b].members.first() {
                let mut sub = super::ordset::OrdSet::default();
                sub.insert(self.translate(v, head));
                cell.by_prov.push((prov, sub));
            }
        }
        cell
    }

    /// Puts bucket `b` into placement `v`: it becomes the entry for its
    /// base set there, or joins (or creates) that entry's container; its
    /// head goes into the cells.
    pub(super) fn attach_bucket(&mut self, b: BucketId, v: VirtId) {
        let (base, prov) = (self.buckets[b].base, self.buckets[b].prov);
        let bucket = &mut self.buckets[b];
        bucket.virt = v;
        bucket.container = None;
        let e = match self.virt(v).entries.get(&base).map(|e| e.get()) {
            None => {
                let e = EntryId::bucket(b);
                self.virt_mut(v).entries.insert(base, e);
                self.cell_add_entry(base, e);
                e
            }
            Some(Entry::Bucket(b0)) => {
                // A second bucket: the pair needs a container and an order
                // of heads.
                let prov0 = self.buckets[b0].prov;
                let mut heads = super::ordset::OrdSet::default();
                if let Some(head) = self.buckets[b0].members.first() {
                    heads.insert(head.clone());
                }
                let mut buckets: SmallVec<[(SetId, BucketId); 2]> = SmallVec::new();
                buckets.push((prov0, b0));
                buckets.push((prov, b));
                buckets.sort_unstable();
                let c = self.containers.insert(Container {
                    virt: v,
                    base,
                    buckets,
                    heads,
                });
                let e = EntryId::container(c);
                self.buckets[b0].container = Some(c);
                self.buckets[b].container = Some(c);
                self.virt_mut(v).entries.insert(base, e);
                self.cell_rename_entry(base, EntryId::bucket(b0), e);
                e
            }
            Some(Entry::Container(c)) => {
                let cb = &mut self.containers[c].buckets;
                let i = cb.partition_point(|&(p, _)| p < prov);
                cb.insert(i, (prov, b));
                self.buckets[b].container = Some(c);
                EntryId::container(c)
            }
        };
        if let Some(head) = self.buckets[b].members.first().cloned() {
            self.bucket_head_entry(b, None, Some(&head));
            self.entry_head_changed(e, None, Some(head));
        }
    }

    /// Takes bucket `b` out of its placement (and its head out of the
    /// cells), undoing what `attach_bucket` did.
    pub(super) fn detach_bucket(&mut self, b: BucketId) {
        let e = self.entry_of(b);
        if let Some(head) = self.buckets[b].members.first().cloned() {
            self.bucket_head_entry(b, Some(&head), None);
            self.entry_head_changed(e, Some(head), None);
        }
        let bucket = &mut self.buckets[b];
        let (v, base, prov) = (bucket.virt, bucket.base, bucket.prov);
        let Some(c) = bucket.container.take() else {
            self.virt_mut(v).entries.remove(&base);
            self.cell_remove_entry(base, EntryId::bucket(b));
            return;
        };
        let cont = &mut self.containers[c];
        if let Ok(i) = cont.buckets.binary_search_by_key(&prov, |&(p, _)| p) {
            cont.buckets.remove(i);
        }
        if cont.buckets.len() == 1 {
            // The last bucket stands alone again; its head is the
            // container's head already.
            let b1 = cont.buckets[0].1;
            debug_assert!(cont.heads.len() <= 1);
            self.containers.remove(c);
            self.buckets[b1].container = None;
            let e1 = EntryId::bucket(b1);
            self.virt_mut(v).entries.insert(base, e1);
            self.cell_rename_entry(base, EntryId::container(c), e1);
        }
    }

    pub(super) fn free_bucket(&mut self, b: BucketId) {
        self.detach_bucket(b);
        let Some(bucket) = self.buckets.remove(b) else {
            return;
        };
        if let Some(g) = bucket.group.group() {
            self.groups.remove_bucket(g, b);
        }
        self.bucket_ids
            .remove(bucket_hash(bucket.account, bucket.base, bucket.prov), b);
    }

    /// Moves a bucket to another placement of its account (fanout throttling
    /// on or off), keeping every member's examined time.
    pub(super) fn move_bucket(&mut self, b: BucketId, v_new: VirtId) {
        let v_old = self.buckets[b].virt;
        if v_old == v_new {
            return;
        }
        let (old_stamp, new_stamp) = (self.virt(v_old).stamp, self.virt(v_new).stamp);
        self.detach_bucket(b);
        let settled = self.buckets[b].members.len() as u64 - u64::from(self.buckets[b].explicit);
        self.virt_mut(v_old).settled -= settled;
        if old_stamp != new_stamp {
            // Members are stored relative to their placement's stamp;
            // restate them relative to the new one.
            let latest = if settled > 0 {
                old_stamp
            } else {
                let mut latest = Time::EPOCH;
                self.buckets[b].members.for_each_while(|k| {
                    if let Some(ex) = k.ex.explicit() {
                        latest = latest.max(Time::from_nanos(ex));
                    }
                    true
                });
                latest
            };
            if latest > new_stamp {
                self.raise_stamp(v_new, latest);
            }
            let stamp = self.virt(v_new).stamp;
            let members = self.buckets[b].members.to_vec();
            let mut restated = super::ordset::OrdSet::default();
            let mut explicit = 0;
            for mut k in members {
                let t = k.ex.explicit().map_or(old_stamp, Time::from_nanos);
                let req = &mut self.requests[k.req];
                if t == stamp {
                    k.ex = ExKey::SETTLED;
                    req.examined = Examined::SETTLED;
                } else {
                    k.ex = ExKey::at(t);
                    req.examined = Examined::at(t);
                    explicit += 1;
                }
                restated.insert(k);
            }
            let bucket = &mut self.buckets[b];
            bucket.members = restated;
            bucket.explicit = explicit;
        }
        let settled = self.buckets[b].members.len() as u64 - u64::from(self.buckets[b].explicit);
        self.virt_mut(v_new).settled += settled;
        self.attach_bucket(b, v_new);
        // The old placement's dirty list may name this bucket; the new one
        // must, if the bucket has explicit members.
        self.buckets[b].dirty = false;
        if self.buckets[b].explicit > 0 {
            self.mark_bucket_dirty(b);
        }
    }

    /// Makes `t` the stamp of placement `v` (`t` later than its stamp).
    /// Settled members must keep their examined time, so they are first
    /// restated explicitly; a placement without any costs nothing.
    pub(super) fn raise_stamp(&mut self, v: VirtId, t: Time) {
        if self.virt(v).settled > 0 {
            let at = self.virt(v).stamp;
            self.unsettle_virt(v, at);
        }
        self.virt_mut(v).stamp = t;
    }

    /// Propagates a change of bucket `b`'s head (previously `old_head`).
    pub(super) fn bucket_members_changed(&mut self, b: BucketId, old_head: Option<QKey>) {
        let new_head = self.buckets[b].members.first().cloned();
        if old_head == new_head {
            return;
        }
        self.bucket_head_entry(b, old_head.as_ref(), new_head.as_ref());
        self.entry_head_changed(self.entry_of(b), old_head, new_head);
    }

    /// Replaces bucket `b`'s head in its cell's provisionable sub-cell.
    pub(super) fn bucket_head_entry(
        &mut self,
        b: BucketId,
        old: Option<&QKey>,
        new: Option<&QKey>,
    ) {
        let (v, base, prov) = {
            let bucket = &self.buckets[b];
            (bucket.virt, bucket.base, bucket.prov)
        };
        let CellKind::Many(ci) = self.labels[base].cell.kind() else {
            // A derived cell stores nothing.
            return;
        };
        let old = old.map(|k| self.translate(v, k));
        let new = new.map(|k| self.translate(v, k));
        let cell = &mut self.cells[ci];
        let i = match cell.by_prov.binary_search_by_key(&prov, |(p, _)| *p) {
            Ok(i) => i,
            Err(i) => {
                if new.is_none() {
                    return;
                }
                cell.by_prov.insert(i, (prov, Default::default()));
                i
            }
        };
        let sub = &mut cell.by_prov[i].1;
        if let Some(o) = &old {
            sub.remove(o);
        }
        if let Some(n) = new {
            sub.insert(n);
        }
        if sub.is_empty() {
            cell.by_prov.remove(i);
        }
    }

    /// One of entry `e`'s buckets changed its head from `old` to `new`:
    /// keeps the container's order, if any, and the entry's key in the cell.
    pub(super) fn entry_head_changed(&mut self, e: EntryId, old: Option<QKey>, new: Option<QKey>) {
        let Entry::Container(c) = e.get() else {
            // A lone bucket's head is the entry's.
            self.cell_replace(e, old, new);
            return;
        };
        let heads = &mut self.containers[c].heads;
        let before = heads.first().cloned();
        if let Some(o) = &old {
            heads.remove(o);
        }
        if let Some(n) = new {
            heads.insert(n);
        }
        let after = heads.first().cloned();
        if before != after {
            self.cell_replace(e, before, after);
        }
    }

    /// Replaces entry `e`'s head (placement-relative keys) in its base set's
    /// cell.
    pub(super) fn cell_replace(&mut self, e: EntryId, old: Option<QKey>, new: Option<QKey>) {
        let v = self.entry_virt(e);
        let base = self.entry_base(e);
        let level = level_slot(self.virt(v).level);
        let delta: i32 = match (&old, &new) {
            (None, Some(_)) => 1,
            (Some(_), None) => -1,
            _ => 0,
        };
        if let CellKind::Many(ci) = self.labels[base].cell.kind() {
            let old = old.map(|k| self.translate(v, &k));
            let new = new.map(|k| self.translate(v, &k));
            let cell = &mut self.cells[ci];
            if let Some(o) = &old {
                cell.heads.remove(o);
            }
            if let Some(n) = new {
                cell.heads.insert(n);
            }
        }
        if delta != 0 {
            self.count_cell_level(base, level, delta);
        }
    }

    /// Adjusts how many entries of `base`'s cell sit at level slot `level`
    /// (see [`level_slot`]), keeping the per-level count of non-empty cells.
    pub(super) fn count_cell_level(&mut self, base: SetId, level: usize, delta: i32) {
        let (was, now) = match self.labels[base].cell.kind() {
            CellKind::None => return,
            // One entry: its head is the cell's only head.
            CellKind::Single(_) => (u32::from(delta < 0), u32::from(delta > 0)),
            CellKind::Many(ci) => {
                let n = &mut self.cells[ci].per_level[level];
                let was = *n;
                *n = n.wrapping_add_signed(delta);
                (was, *n)
            }
        };
        if level < LEVELS {
            if was == 0 && now > 0 {
                self.nonempty_cells[level] += 1;
            } else if was > 0 && now == 0 {
                self.nonempty_cells[level] -= 1;
            }
        }
    }

    /// Placement `v`'s entries as (base set, entry), for walking them
    /// while changing the index.
    pub(super) fn virt_entries(&self, v: VirtId) -> Vec<(SetId, EntryId)> {
        self.virt(v).entries.iter().map(|(&s, &e)| (s, e)).collect()
    }

    /// Places an account's entries at another level: only counters
    /// change, the cells' order does not depend on levels.
    pub(crate) fn set_virt_level(&mut self, v: VirtId, level: Option<u8>) {
        let old = self.virt(v).level;
        if old == level {
            return;
        }
        self.virt_mut(v).level = level;
        let entries = self.virt_entries(v);
        for (base, e) in entries {
            if self.entry_head(e).is_none() {
                continue;
            }
            self.count_cell_level(base, level_slot(old), -1);
            self.count_cell_level(base, level_slot(level), 1);
        }
    }

    /// Takes every cell entry of placement `v` out (`insert == false`) or
    /// puts it back (`true`), under the current translation. Used around a
    /// change of the placement's stamp or of the last pass's time, which
    /// changes how its settled heads read pool-wide.
    pub(crate) fn virt_cell_entries(&mut self, v: VirtId, insert: bool) {
        let entries = self.virt_entries(v);
        for (base, e) in entries {
            let CellKind::Many(ci) = self.labels[base].cell.kind() else {
                // Derived cells read keys under the current translation.
                continue;
            };
            let buckets: SmallVec<[BucketId; 4]> = self.entry_buckets(e).map(|(_, b)| b).collect();
            for b in buckets {
                if let Some(h) = self.buckets[b].members.first().cloned() {
                    if insert {
                        self.bucket_head_entry(b, None, Some(&h));
                    } else {
                        self.bucket_head_entry(b, Some(&h), None);
                    }
                }
            }
            if let Some(k) = self.entry_head(e).map(|h| self.translate(v, h)) {
                // Entries leave and return at the same level: the counts
                // stay as they are.
                let cell = &mut self.cells[ci];
                if insert {
                    cell.heads.insert(k);
                } else {
                    cell.heads.remove(&k);
                }
            }
        }
    }

    /// The explicit members of bucket `b` become settled (examined at the
    /// placement's stamp). With `propagate`, heads are updated in the cells
    /// too; without, the caller has taken the placement's entries out.
    pub(crate) fn settle_bucket(&mut self, b: BucketId, propagate: bool) {
        let n = u64::from(self.buckets[b].explicit);
        if n == 0 {
            self.buckets[b].dirty = false;
            return;
        }
        let old_head = self.buckets[b].members.first().cloned();
        if n * 4 >= self.buckets[b].members.len() as u64 {
            // Mostly new members (a burst, a restored snapshot): rebuild in
            // O(k log k) rather than re-key k entries of a vector one by one.
            let mut members = std::mem::take(&mut self.buckets[b].members).to_vec();
            for k in members.iter_mut() {
                if !k.ex.is_settled() {
                    k.ex = ExKey::SETTLED;
                    self.requests[k.req].examined = Examined::SETTLED;
                }
            }
            members.sort_unstable();
            self.buckets[b].members = super::ordset::OrdSet::from_sorted(members);
        } else {
            let mut explicit = Vec::new();
            self.buckets[b].members.for_each_while(|k| {
                if k.ex.is_settled() {
                    false
                } else {
                    explicit.push(k.clone());
                    true
                }
            });
            for mut k in explicit {
                self.buckets[b].members.remove(&k);
                self.requests[k.req].examined = Examined::SETTLED;
                k.ex = ExKey::SETTLED;
                self.buckets[b].members.insert(k);
            }
        }
        let bucket = &mut self.buckets[b];
        bucket.explicit = 0;
        bucket.dirty = false;
        let v = bucket.virt;
        self.virt_mut(v).settled += n;
        if propagate {
            self.bucket_members_changed(b, old_head);
        } else {
            let new_head = self.buckets[b].members.first().cloned();
            if old_head != new_head
                && let Some(c) = self.buckets[b].container
            {
                let heads = &mut self.containers[c].heads;
                if let Some(o) = &old_head {
                    heads.remove(o);
                }
                if let Some(n) = new_head {
                    heads.insert(n);
                }
            }
        }
    }

    /// Queues many detached requests at once (loading a snapshot): each
    /// bucket's members are built in one go and its head placed once.
    pub(crate) fn enqueue_many(&mut self, reqs: &[ReqIdx]) {
        let mut by_bucket: Vec<(BucketId, ReqIdx)> = Vec::with_capacity(reqs.len());
        for &r in reqs {
            let (a, base, prov, g, examined) = {
                let req = &self.requests[r];
                (
                    req.account,
                    req.base,
                    req.prov,
                    req.group,
                    req.examined.detached(),
                )
            };
            self.set_queued(base, true, true);
            self.set_queued(prov, false, true);
            let b = self.bucket_for(a, base, prov, g);
            let v = self.buckets[b].virt;
            if examined > self.virt(v).stamp {
                self.raise_stamp(v, examined);
            }
            by_bucket.push((b, r));
        }
        by_bucket.sort_unstable();
        let mut i = 0;
        while i < by_bucket.len() {
            let b = by_bucket[i].0;
            let j = i + by_bucket[i..].partition_point(|&(x, _)| x == b);
            let v = self.buckets[b].virt;
            let stamp = self.virt(v).stamp;
            let old_head = self.buckets[b].members.first().cloned();
            let mut members = std::mem::take(&mut self.buckets[b].members).to_vec();
            let (mut settled, mut explicit) = (0u64, 0u32);
            for &(_, r) in &by_bucket[i..j] {
                let req = &mut self.requests[r];
                let is_settled = req.examined.explicit() == Some(stamp);
                req.place = Place::Queued(b);
                if is_settled {
                    req.examined = Examined::SETTLED;
                    settled += 1;
                } else {
                    explicit += 1;
                }
                members.push(self.qkey(r));
            }
            members.sort_unstable();
            let bucket = &mut self.buckets[b];
            bucket.members = super::ordset::OrdSet::from_sorted(members);
            bucket.explicit += explicit;
            self.virt_mut(v).settled += settled;
            if explicit > 0 {
                self.mark_bucket_dirty(b);
            }
            self.bucket_members_changed(b, old_head);
            self.queued += j - i;
            i = j;
        }
    }

    /// The settled members of placement `v` are restated as explicitly
    /// examined at `at` (its stamp), so that the stamp can change.
    pub(crate) fn unsettle_virt(&mut self, v: VirtId, at: Time) {
        for (_, e) in self.virt_entries(v) {
            let buckets: SmallVec<[BucketId; 4]> = self.entry_buckets(e).map(|(_, b)| b).collect();
            for b in buckets {
                let mut settled = Vec::new();
                self.buckets[b].members.for_each_while(|k| {
                    if k.ex.is_settled() {
                        settled.push(k.clone());
                    }
                    true
                });
                if settled.is_empty() {
                    continue;
                }
                let old_head = self.buckets[b].members.first().cloned();
                let n = settled.len() as u32;
                for mut k in settled {
                    self.buckets[b].members.remove(&k);
                    let req = &mut self.requests[k.req];
                    req.examined = Examined::at(at);
                    k.ex = ExKey::at(at);
                    self.buckets[b].members.insert(k);
                }
                self.buckets[b].explicit += n;
                self.mark_bucket_dirty(b);
                self.bucket_members_changed(b, old_head);
            }
        }
        self.virt_mut(v).settled = 0;
    }
}

/// The hash of a bucket's key in the bucket index.
fn bucket_hash(a: AccountIdx, base: SetId, prov: SetId) -> u64 {
    hash_ids([a.slot(), base.slot(), prov.slot()])
}
