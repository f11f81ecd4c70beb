//! Requests: creation and removal, and their place (queued, running or
//! detached for a moment). Queuing goes through the queue index
//! (`queue/`), which is handed the requests and the label table it reads
//! and writes; this file keeps the other parts in step with it (the label
//! table's queued counts, the fanout groups' buckets, the queued count).

use super::ids::GroupKind;
use super::queue::Outside;
use super::*;
use crate::time::Time;
use std::sync::Arc;

impl Scheduler {
    // -------------------------------------------------------------- requests

    /// Creates a detached request (not queued, not running).
    // One argument per stored field reads better at the call sites (new
    // requests and snapshot loading) than a one-off struct.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn create_request(
        &mut self,
        id: &str,
        account: &str,
        base_labels: &[String],
        provisionable_labels: &[String],
        enqueue: Time,
        confirmed: Time,
        examined: Time,
    ) -> ReqIdx {
        let a = self.account_named(account);
        let base = self.labels.intern_set(base_labels);
        let prov = self.labels.intern_set(provisionable_labels);
        self.create_request_interned(id, a, base, prov, enqueue, confirmed, examined)
    }

    /// Creates a detached request from interned parts; takes over one
    /// reference to each of `base` and `prov`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn create_request_interned(
        &mut self,
        id: &str,
        a: AccountIdx,
        base: SetId,
        prov: SetId,
        enqueue: Time,
        confirmed: Time,
        examined: Time,
    ) -> ReqIdx {
        self.accounts.add_request(a);
        self.set_request_ref(base, true);
        self.set_request_ref(prov, true);
        let id: Arc<str> = Arc::from(id);
        let r = self.requests.insert(Request {
            id: id.clone(),
            account: a,
            base,
            prov,
            group: GroupRef::NO_FANOUT,
            enqueue,
            confirmed,
            examined: Examined::at(examined),
            place: Place::Detached,
        });
        let requests = &self.requests;
        self.request_ids.insert(&id, r, |x| &requests[x].id);
        if self.max_fanout(a) > 0 {
            self.requests[r].group = self.group_ref(r);
        }
        r
    }

    /// Forgets a detached request.
    pub(crate) fn free_request(&mut self, r: ReqIdx) {
        let Some(id) = self.requests.get(r).map(|req| req.id.clone()) else {
            return;
        };
        match self.requests[r].group.kind() {
            GroupKind::NoFanout => {}
            // Before its sets go: they make its key.
            GroupKind::Lone => self.lone_forget(r),
            GroupKind::Group(g) => self.group_unref(g),
        }
        let requests = &self.requests;
        self.request_ids.remove(&id, |x| &requests[x].id);
        let Some(req) = self.requests.remove(r) else {
            return;
        };
        debug_assert_eq!(req.place, Place::Detached);
        self.set_request_ref(req.base, false);
        self.set_request_ref(req.prov, false);
        self.labels.release_set(req.base);
        self.labels.release_set(req.prov);
        self.accounts.remove_request(req.account);
        self.maybe_free_account(req.account);
    }

    /// The request's examined time, resolving the settled marker.
    pub(crate) fn examined(&self, r: ReqIdx) -> Time {
        let req = &self.requests[r];
        match req.place {
            Place::Queued(b) if req.settled() => self.index.bucket_stamp(b),
            _ => req.examined.detached(),
        }
    }

    /// The effective examined time encoded in a key (in pool-wide terms:
    /// settled means the last pass).
    pub(crate) fn key_examined(&self, k: &QKey) -> i64 {
        k.ex.explicit().unwrap_or(self.last_pass.as_nanos())
    }

    // ---------------------------------------------------------- the queue

    /// The queue index with the parts it reads and writes.
    pub(super) fn index_parts(&mut self) -> (&mut QueueIndex, Outside<'_>) {
        let cx = Outside {
            requests: &mut self.requests,
            labels: &mut self.labels,
            last_pass: self.last_pass,
        };
        (&mut self.index, cx)
    }

    /// The bucket that detached request `r` joins, made (and listed in its
    /// fanout group) if there is none; counts `r`'s sets as queued.
    fn bucket_to_join(&mut self, r: ReqIdx) -> BucketId {
        let (a, base, prov, g) = {
            let req = &self.requests[r];
            (req.account, req.base, req.prov, req.group)
        };
        self.set_queued(base, true, true);
        self.set_queued(prov, false, true);
        let mut cx = Outside {
            requests: &mut self.requests,
            labels: &mut self.labels,
            last_pass: self.last_pass,
        };
        let groups = &self.groups;
        let throttled = || g.group().is_some_and(|g| groups[g].throttled());
        let (b, new) = self.index.bucket_for(&mut cx, a, base, prov, g, throttled);
        if new && let Some(g) = g.group() {
            self.groups.add_bucket(g, b);
        }
        b
    }

    /// Queues a detached request, keeping its examined time.
    pub(crate) fn enqueue(&mut self, r: ReqIdx) {
        let b = self.bucket_to_join(r);
        let (index, mut cx) = self.index_parts();
        index.enqueue(&mut cx, r, b);
        self.queued += 1;
    }

    /// Queues many detached requests at once (loading a snapshot): each
    /// bucket's members are built in one go and its head placed once.
    pub(crate) fn enqueue_many(&mut self, reqs: &[ReqIdx]) {
        let mut by_bucket: Vec<(BucketId, ReqIdx)> = Vec::with_capacity(reqs.len());
        for &r in reqs {
            let examined = self.requests[r].examined.detached();
            let b = self.bucket_to_join(r);
            let (index, mut cx) = self.index_parts();
            index.admit_examined(&mut cx, b, examined);
            by_bucket.push((b, r));
        }
        let (index, mut cx) = self.index_parts();
        index.enqueue_many(&mut cx, by_bucket);
        self.queued += reqs.len();
    }

    /// Takes a queued request out of the queue, leaving it detached with an
    /// explicit examined time.
    pub(crate) fn dequeue(&mut self, r: ReqIdx) {
        if !matches!(self.requests[r].place, Place::Queued(_)) {
            return;
        }
        let (index, mut cx) = self.index_parts();
        let gone = index.dequeue(&mut cx, r);
        if let Some((g, b)) = gone {
            self.groups.remove_bucket(g, b);
        }
        let (base, prov) = (self.requests[r].base, self.requests[r].prov);
        self.set_queued(base, true, false);
        self.set_queued(prov, false, false);
        self.queued -= 1;
    }

    /// Moves a bucket to another placement of its account (fanout
    /// throttling on or off), keeping every member's examined time.
    pub(super) fn move_bucket(&mut self, b: BucketId, v: VirtId) {
        let (index, mut cx) = self.index_parts();
        index.move_bucket(&mut cx, b, v);
    }

    /// Places account placement `v` at `level` (`None`: it sits out
    /// passes).
    pub(super) fn set_virt_level(&mut self, v: VirtId, level: Option<u8>) {
        let (index, _) = self.index_parts();
        index.set_virt_level(v, level);
    }
}
