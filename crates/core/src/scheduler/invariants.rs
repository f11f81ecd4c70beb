//! `check_invariants`: every derived structure recomputed from scratch and
//! compared. Each part checks its own invariants (`check_invariants` of the
//! label table, workers, accounts and queue index, and the groups' and
//! eligibility's checks); this file checks what spans parts and calls
//! them. Tests run it after every operation; debug builds after every
//! command on small pools (see `Pool::apply`).

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
                    let bucket = self.index.bucket(b);
                    assert_eq!(
                        (
                            bucket.account(),
                            bucket.base(),
                            bucket.prov(),
                            bucket.group()
                        ),
                        (req.account, req.base, req.prov, req.group)
                    );
                    let key = bucket.members().to_vec().into_iter().find(|k| k.req == r);
                    let key = key.expect("a queued request in its bucket");
                    assert_eq!(
                        key.ex.explicit(),
                        req.examined.explicit().map(|t| t.as_nanos()),
                        "key of request {}",
                        req.id
                    );
                    assert_eq!(key.enq, req.enqueue.as_nanos());
                    assert_eq!(key.id, req.id);
                    let throttled = req
                        .group
                        .group()
                        .is_some_and(|g| self.groups[g].throttled());
                    assert_eq!(bucket.virt(), VirtId::new(req.account, throttled));
                    if let Some(examined) = req.examined.explicit() {
                        assert!(
                            examined < self.index.bucket_stamp(b),
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
        let members: usize = self.index.buckets().map(|(_, b)| b.members().len()).sum();
        assert_eq!(members, self.queued, "bucket members that are not queued");
        assert_eq!(self.request_ids.len(), self.requests.len());
        self.index.check_invariants(&self.labels, self.last_pass);
        let mut uses_of: BTreeMap<SetId, u32> = BTreeMap::new();
        for (_, r) in self.requests.iter() {
            *uses_of.entry(r.base).or_default() += 1;
            *uses_of.entry(r.prov).or_default() += 1;
        }
        for (s, set) in self.labels.iter_sets() {
            let uses = uses_of.get(&s).copied().unwrap_or(0);
            assert_eq!(uses, set.req_refs, "request references of set {s}");
        }
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
