//! Changes to the queue index: requests in and out, buckets between
//! placements, placements between levels, and settling after a pass.

use smallvec::SmallVec;

use super::{Bucket, Cell, Container, Outside, QueueIndex, bucket_hash, level_slot, qkey};
use crate::scheduler::ids::{
    AccountIdx, BucketId, CellKind, CellRef, Entry, EntryId, GroupId, GroupRef, ReqIdx, SetId,
    VirtId,
};
use crate::scheduler::ordset::OrdSet;
use crate::scheduler::{ExKey, Examined, Place, QKey};
use crate::time::Time;

impl QueueIndex {
    /// The bucket for (`a`, `base`, `prov`), made if there is none: a new
    /// bucket holds requests of fanout group `g` and goes into the
    /// account's throttled placement if `throttled()` says so. Returns
    /// whether it is new, for the caller to list it in its group.
    pub(crate) fn bucket_for(
        &mut self,
        cx: &mut Outside<'_>,
        a: AccountIdx,
        base: SetId,
        prov: SetId,
        g: GroupRef,
        throttled: impl FnOnce() -> bool,
    ) -> (BucketId, bool) {
        let hash = bucket_hash(a, base, prov);
        let buckets = &self.buckets;
        let key_of = |b: &Bucket| (b.account, b.base, b.prov);
        if let Some(b) = self
            .bucket_ids
            .get(hash, |b| key_of(&buckets[b]) == (a, base, prov))
        {
            return (b, false);
        }
        let v = VirtId::new(a, throttled());
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
        self.attach_bucket(cx, b, v);
        let buckets = &self.buckets;
        self.bucket_ids.insert(hash, b, |x| {
            let bucket = &buckets[x];
            bucket_hash(bucket.account, bucket.base, bucket.prov)
        });
        (b, true)
    }

    /// Makes `examined` the stamp of bucket `b`'s placement if it is later
    /// than the stamp, so that a request examined then can join `b`.
    pub(crate) fn admit_examined(&mut self, cx: &mut Outside<'_>, b: BucketId, examined: Time) {
        let v = self.buckets[b].virt;
        if examined > self.placement(v).stamp {
            self.raise_stamp(cx, v, examined);
        }
    }

    /// Queues detached request `r` in bucket `b` (its bucket, from
    /// [`QueueIndex::bucket_for`]), keeping its examined time.
    pub(crate) fn enqueue(&mut self, cx: &mut Outside<'_>, r: ReqIdx, b: BucketId) {
        let examined = cx.requests[r].examined.detached();
        self.admit_examined(cx, b, examined);
        let v = self.buckets[b].virt;
        let settled = examined == self.placement(v).stamp;
        let req = &mut cx.requests[r];
        if settled {
            req.examined = Examined::SETTLED;
        }
        req.place = Place::Queued(b);
        let key = qkey(req, r);
        let old_head = self.buckets[b].members.first().cloned();
        self.buckets[b].members.insert(key);
        if settled {
            self.placement_mut(v).settled += 1;
        } else {
            self.buckets[b].explicit += 1;
            self.mark_bucket_dirty(b);
        }
        self.bucket_members_changed(cx, b, old_head);
    }

    /// Queues many detached requests at once (loading a snapshot), each
    /// given with its bucket and with its examined time admitted (see
    /// [`QueueIndex::admit_examined`]): each bucket's members are built in
    /// one go and its head placed once.
    pub(crate) fn enqueue_many(
        &mut self,
        cx: &mut Outside<'_>,
        mut by_bucket: Vec<(BucketId, ReqIdx)>,
    ) {
        by_bucket.sort_unstable();
        let mut i = 0;
        while i < by_bucket.len() {
            let b = by_bucket[i].0;
            let j = i + by_bucket[i..].partition_point(|&(x, _)| x == b);
            let v = self.buckets[b].virt;
            let stamp = self.placement(v).stamp;
            let old_head = self.buckets[b].members.first().cloned();
            let mut members = std::mem::take(&mut self.buckets[b].members).to_vec();
            let (mut settled, mut explicit) = (0u64, 0u32);
            for &(_, r) in &by_bucket[i..j] {
                let req = &mut cx.requests[r];
                let is_settled = req.examined.explicit() == Some(stamp);
                req.place = Place::Queued(b);
                if is_settled {
                    req.examined = Examined::SETTLED;
                    settled += 1;
                } else {
                    explicit += 1;
                }
                members.push(qkey(req, r));
            }
            members.sort_unstable();
            let bucket = &mut self.buckets[b];
            bucket.members = OrdSet::from_sorted(members);
            bucket.explicit += explicit;
            self.placement_mut(v).settled += settled;
            if explicit > 0 {
                self.mark_bucket_dirty(b);
            }
            self.bucket_members_changed(cx, b, old_head);
            i = j;
        }
    }

    /// Takes queued request `r` out of its bucket, leaving it detached with
    /// an explicit examined time. Returns the bucket, with its fanout
    /// group, if that emptied it and it is gone (the caller unlists it from
    /// its group).
    pub(crate) fn dequeue(
        &mut self,
        cx: &mut Outside<'_>,
        r: ReqIdx,
    ) -> Option<(GroupId, BucketId)> {
        let req = &cx.requests[r];
        let Place::Queued(b) = req.place else {
            return None;
        };
        let key = qkey(req, r);
        let v = self.buckets[b].virt;
        let settled = req.settled();
        let examined = if settled {
            self.placement(v).stamp
        } else {
            req.examined.detached()
        };
        let old_head = self.buckets[b].members.first().cloned();
        self.buckets[b].members.remove(&key);
        if settled {
            self.placement_mut(v).settled -= 1;
        } else {
            self.buckets[b].explicit -= 1;
        }
        self.bucket_members_changed(cx, b, old_head);
        let gone = if self.buckets[b].members.is_empty() {
            self.free_bucket(cx, b).map(|g| (g, b))
        } else {
            None
        };
        let req = &mut cx.requests[r];
        req.examined = Examined::at(examined);
        req.place = Place::Detached;
        gone
    }

    fn mark_bucket_dirty(&mut self, b: BucketId) {
        let bucket = &mut self.buckets[b];
        if !bucket.dirty {
            bucket.dirty = true;
            let v = bucket.virt;
            self.placement_mut(v).dirty.push(b);
        }
    }

    /// Counts a new entry in base set `base`'s cell.
    fn cell_add_entry(&mut self, cx: &mut Outside<'_>, base: SetId, e: EntryId) {
        match cx.labels[base].cell.kind() {
            CellKind::None => cx.labels[base].cell = CellRef::single(e),
            CellKind::Single(e0) => {
                let mut cell = self.derived_cell(cx, e0);
                cell.entries += 1;
                let i = self.cells.insert(cell);
                cx.labels[base].cell = CellRef::many(i);
            }
            CellKind::Many(i) => self.cells[i].entries += 1,
        }
    }

    /// Forgets entry `e` of base set `base`'s cell (its head is out).
    fn cell_remove_entry(&mut self, cx: &mut Outside<'_>, base: SetId, e: EntryId) {
        match cx.labels[base].cell.kind() {
            CellKind::None => debug_assert!(false, "entry without a cell"),
            CellKind::Single(e0) => {
                debug_assert_eq!(e0, e);
                cx.labels[base].cell = CellRef::NONE;
            }
            CellKind::Many(i) => {
                let cell = &mut self.cells[i];
                cell.entries -= 1;
                if cell.entries == 0 {
                    debug_assert!(cell.heads.is_empty() && cell.by_prov.is_empty());
                    self.cells.remove(i);
                    cx.labels[base].cell = CellRef::NONE;
                }
            }
        }
    }

    /// Entry `old` of base set `base` becomes `new` (a lone bucket gains a
    /// container or a container goes back to its last bucket). The head,
    /// and so the cell's stored keys, stay the same.
    fn cell_rename_entry(cx: &mut Outside<'_>, base: SetId, old: EntryId, new: EntryId) {
        if cx.labels[base].cell.kind() == CellKind::Single(old) {
            cx.labels[base].cell = CellRef::single(new);
        }
    }

    /// The cell of a base set whose only entry is `e`, as it would be
    /// stored.
    fn derived_cell(&self, cx: &Outside<'_>, e: EntryId) -> Cell {
        let v = self.entry_virt(e);
        let mut cell = Cell {
            entries: 1,
            ..Cell::default()
        };
        if let Some(head) = self.entry_head(e) {
            cell.heads.insert(self.translate(cx.last_pass, v, head));
        }
        for (prov, b) in self.entry_buckets(e) {
            if let Some(head) = self.buckets[b].members.first() {
                let mut sub = OrdSet::default();
                sub.insert(self.translate(cx.last_pass, v, head));
                cell.by_prov.push((prov, sub));
            }
        }
        cell
    }

    /// Puts bucket `b` into placement `v`: it becomes the entry for its
    /// base set there, or joins (or creates) that entry's container; its
    /// head goes into the cells.
    fn attach_bucket(&mut self, cx: &mut Outside<'_>, b: BucketId, v: VirtId) {
        let (base, prov) = (self.buckets[b].base, self.buckets[b].prov);
        let bucket = &mut self.buckets[b];
        bucket.virt = v;
        bucket.container = None;
        let e = match self.placement(v).entries.get(&base).map(|e| e.get()) {
            None => {
                let e = EntryId::bucket(b);
                self.placement_mut(v).entries.insert(base, e);
                self.cell_add_entry(cx, base, e);
                e
            }
            Some(Entry::Bucket(b0)) => {
                // A second bucket: the pair needs a container and an order
                // of heads.
                let prov0 = self.buckets[b0].prov;
                let mut heads = OrdSet::default();
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
                self.placement_mut(v).entries.insert(base, e);
                Self::cell_rename_entry(cx, base, EntryId::bucket(b0), e);
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
            self.bucket_head_entry(cx, b, None, Some(&head));
            self.entry_head_changed(cx, e, None, Some(head));
        }
    }

    /// Takes bucket `b` out of its placement (and its head out of the
    /// cells), undoing what `attach_bucket` did.
    fn detach_bucket(&mut self, cx: &mut Outside<'_>, b: BucketId) {
        let e = self.entry_of(b);
        if let Some(head) = self.buckets[b].members.first().cloned() {
            self.bucket_head_entry(cx, b, Some(&head), None);
            self.entry_head_changed(cx, e, Some(head), None);
        }
        let bucket = &mut self.buckets[b];
        let (v, base, prov) = (bucket.virt, bucket.base, bucket.prov);
        let Some(c) = bucket.container.take() else {
            self.placement_mut(v).entries.remove(&base);
            self.cell_remove_entry(cx, base, EntryId::bucket(b));
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
            self.placement_mut(v).entries.insert(base, e1);
            Self::cell_rename_entry(cx, base, EntryId::container(c), e1);
        }
    }

    /// Frees empty bucket `b`; returns its fanout group, if any.
    fn free_bucket(&mut self, cx: &mut Outside<'_>, b: BucketId) -> Option<GroupId> {
        self.detach_bucket(cx, b);
        let bucket = self.buckets.remove(b)?;
        self.bucket_ids
            .remove(bucket_hash(bucket.account, bucket.base, bucket.prov), b);
        bucket.group.group()
    }

    /// Moves a bucket to another placement of its account (fanout throttling
    /// on or off), keeping every member's examined time.
    pub(crate) fn move_bucket(&mut self, cx: &mut Outside<'_>, b: BucketId, v_new: VirtId) {
        let v_old = self.buckets[b].virt;
        if v_old == v_new {
            return;
        }
        let (old_stamp, new_stamp) = (self.placement(v_old).stamp, self.placement(v_new).stamp);
        self.detach_bucket(cx, b);
        let settled = self.buckets[b].members.len() as u64 - u64::from(self.buckets[b].explicit);
        self.placement_mut(v_old).settled -= settled;
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
                self.raise_stamp(cx, v_new, latest);
            }
            let stamp = self.placement(v_new).stamp;
            let members = self.buckets[b].members.to_vec();
            let mut restated = OrdSet::default();
            let mut explicit = 0;
            for mut k in members {
                let t = k.ex.explicit().map_or(old_stamp, Time::from_nanos);
                let req = &mut cx.requests[k.req];
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
        self.placement_mut(v_new).settled += settled;
        self.attach_bucket(cx, b, v_new);
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
    fn raise_stamp(&mut self, cx: &mut Outside<'_>, v: VirtId, t: Time) {
        if self.placement(v).settled > 0 {
            let at = self.placement(v).stamp;
            self.unsettle_virt(cx, v, at);
        }
        self.placement_mut(v).stamp = t;
    }

    /// Sets the stamp of placement `v`, which has no settled member, while
    /// loading a snapshot.
    pub(crate) fn load_stamp(&mut self, v: VirtId, t: Time) {
        debug_assert_eq!(self.placement(v).settled, 0);
        self.placement_mut(v).stamp = t;
    }

    /// Propagates a change of bucket `b`'s head (previously `old_head`).
    fn bucket_members_changed(&mut self, cx: &Outside<'_>, b: BucketId, old_head: Option<QKey>) {
        let new_head = self.buckets[b].members.first().cloned();
        if old_head == new_head {
            return;
        }
        self.bucket_head_entry(cx, b, old_head.as_ref(), new_head.as_ref());
        self.entry_head_changed(cx, self.entry_of(b), old_head, new_head);
    }

    /// Replaces bucket `b`'s head in its cell's provisionable sub-cell.
    fn bucket_head_entry(
        &mut self,
        cx: &Outside<'_>,
        b: BucketId,
        old: Option<&QKey>,
        new: Option<&QKey>,
    ) {
        let (v, base, prov) = {
            let bucket = &self.buckets[b];
            (bucket.virt, bucket.base, bucket.prov)
        };
        let CellKind::Many(ci) = cx.labels[base].cell.kind() else {
            // A derived cell stores nothing.
            return;
        };
        let old = old.map(|k| self.translate(cx.last_pass, v, k));
        let new = new.map(|k| self.translate(cx.last_pass, v, k));
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
    fn entry_head_changed(
        &mut self,
        cx: &Outside<'_>,
        e: EntryId,
        old: Option<QKey>,
        new: Option<QKey>,
    ) {
        let Entry::Container(c) = e.get() else {
            // A lone bucket's head is the entry's.
            self.cell_replace(cx, e, old, new);
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
            self.cell_replace(cx, e, before, after);
        }
    }

    /// Replaces entry `e`'s head (placement-relative keys) in its base set's
    /// cell.
    fn cell_replace(&mut self, cx: &Outside<'_>, e: EntryId, old: Option<QKey>, new: Option<QKey>) {
        let v = self.entry_virt(e);
        let base = self.entry_base(e);
        let delta: i64 = match (&old, &new) {
            (None, Some(_)) => 1,
            (Some(_), None) => -1,
            _ => 0,
        };
        if let CellKind::Many(ci) = cx.labels[base].cell.kind() {
            let old = old.map(|k| self.translate(cx.last_pass, v, &k));
            let new = new.map(|k| self.translate(cx.last_pass, v, &k));
            let cell = &mut self.cells[ci];
            if let Some(o) = &old {
                cell.heads.remove(o);
            }
            if let Some(n) = new {
                cell.heads.insert(n);
            }
        }
        if delta != 0 {
            self.count_heads(v, delta);
        }
    }

    /// Placement `v` gained (`delta` 1) or lost (-1) an entry head.
    fn count_heads(&mut self, v: VirtId, delta: i64) {
        let slot = level_slot(self.placement(v).level);
        let p = self.placement_mut(v);
        p.headed = p.headed.wrapping_add_signed(delta);
        self.headed_at[slot] = self.headed_at[slot].wrapping_add_signed(delta);
    }

    /// Places a placement's entries at another level. Cells keep no
    /// per-level counts, so only the placement and the pool-wide count
    /// change: constant time, however many label sets the account has
    /// queued.
    pub(crate) fn set_virt_level(&mut self, v: VirtId, level: Option<u8>) {
        let p = self.placement_mut(v);
        let old = p.level;
        if old == level {
            return;
        }
        p.level = level;
        let n = p.headed;
        self.headed_at[level_slot(old)] -= n;
        self.headed_at[level_slot(level)] += n;
    }

    /// Takes every cell entry of placement `v` out (`insert == false`) or
    /// puts it back (`true`), under the current translation. Used around a
    /// change of the placement's stamp or of the last pass's time, which
    /// changes how its settled heads read pool-wide.
    fn virt_cell_entries(&mut self, cx: &Outside<'_>, v: VirtId, insert: bool) {
        let entries = self.virt_entries(v);
        for (base, e) in entries {
            let CellKind::Many(ci) = cx.labels[base].cell.kind() else {
                // Derived cells read keys under the current translation.
                continue;
            };
            let buckets: SmallVec<[BucketId; 4]> = self.entry_buckets(e).map(|(_, b)| b).collect();
            for b in buckets {
                if let Some(h) = self.buckets[b].members.first().cloned() {
                    if insert {
                        self.bucket_head_entry(cx, b, None, Some(&h));
                    } else {
                        self.bucket_head_entry(cx, b, Some(&h), None);
                    }
                }
            }
            if let Some(k) = self
                .entry_head(e)
                .map(|h| self.translate(cx.last_pass, v, h))
            {
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
    fn settle_bucket(&mut self, cx: &mut Outside<'_>, b: BucketId, propagate: bool) {
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
                    cx.requests[k.req].examined = Examined::SETTLED;
                }
            }
            members.sort_unstable();
            self.buckets[b].members = OrdSet::from_sorted(members);
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
                cx.requests[k.req].examined = Examined::SETTLED;
                k.ex = ExKey::SETTLED;
                self.buckets[b].members.insert(k);
            }
        }
        let bucket = &mut self.buckets[b];
        bucket.explicit = 0;
        bucket.dirty = false;
        let v = bucket.virt;
        self.placement_mut(v).settled += n;
        if propagate {
            self.bucket_members_changed(cx, b, old_head);
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

    /// The settled members of placement `v` are restated as explicitly
    /// examined at `at` (its stamp), so that the stamp can change.
    fn unsettle_virt(&mut self, cx: &mut Outside<'_>, v: VirtId, at: Time) {
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
                    cx.requests[k.req].examined = Examined::at(at);
                    k.ex = ExKey::at(at);
                    self.buckets[b].members.insert(k);
                }
                self.buckets[b].explicit += n;
                self.mark_bucket_dirty(b);
                self.bucket_members_changed(cx, b, old_head);
            }
        }
        self.placement_mut(v).settled = 0;
    }

    /// Step 5 of a pass at time `t` (see `Scheduler::finish_pass`): the
    /// placements of `accounts` (every account, in slot order) that took
    /// part settle their explicit members and take `t` as their stamp;
    /// placements whose settled heads read differently once the last pass
    /// is `t` are restated in the cells. `cx.last_pass` is the previous
    /// pass's time on entry and `t` on return.
    pub(crate) fn settle_pass(&mut self, cx: &mut Outside<'_>, accounts: &[AccountIdx], t: Time) {
        let old_last = cx.last_pass;
        let mut restate: Vec<VirtId> = Vec::new();
        for &a in accounts {
            for throttled in [false, true] {
                let v = VirtId::new(a, throttled);
                let virt = self.placement(v);
                let (listed, stamp, settled) = (virt.level.is_some(), virt.stamp, virt.settled);
                if listed {
                    let stale = stamp != old_last;
                    if stale {
                        self.virt_cell_entries(cx, v, false);
                        restate.push(v);
                    }
                    let dirty = std::mem::take(&mut self.placement_mut(v).dirty);
                    for b in dirty {
                        let live = self
                            .buckets
                            .get(b)
                            .is_some_and(|bucket| bucket.virt == v && bucket.dirty);
                        if live {
                            self.settle_bucket(cx, b, !stale);
                        }
                    }
                } else if t != old_last && stamp == old_last && settled > 0 {
                    self.virt_cell_entries(cx, v, false);
                    restate.push(v);
                }
            }
        }
        cx.last_pass = t;
        for &a in accounts {
            for throttled in [false, true] {
                let virt = self.placement_mut(VirtId::new(a, throttled));
                if virt.level.is_some() {
                    virt.stamp = t;
                }
            }
        }
        for v in restate {
            self.virt_cell_entries(cx, v, true);
        }
    }
}
