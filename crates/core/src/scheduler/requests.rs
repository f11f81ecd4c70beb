//! Requests: creation and removal, and their place (queued, running or
//! detached for a moment).

use super::ids::GroupKind;
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
        let a = self.accounts.get_or_create(account);
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
        self.accounts.maybe_free(req.account);
    }

    /// The request's examined time, resolving the settled marker.
    pub(crate) fn examined(&self, r: ReqIdx) -> Time {
        let req = &self.requests[r];
        match req.place {
            Place::Queued(b) if req.settled() => self.virt(self.buckets[b].virt).stamp,
            _ => req.examined.detached(),
        }
    }

    pub(super) fn qkey(&self, r: ReqIdx) -> QKey {
        let req = &self.requests[r];
        QKey {
            ex: req.examined.explicit().map_or(ExKey::SETTLED, ExKey::at),
            enq: req.enqueue.as_nanos(),
            id: req.id.clone(),
            req: r,
            v: VirtId::default(),
        }
    }

    /// The effective examined time encoded in a key (in pool-wide terms:
    /// settled means the last pass).
    pub(crate) fn key_examined(&self, k: &QKey) -> i64 {
        k.ex.explicit().unwrap_or(self.last_pass.as_nanos())
    }
}
