//! The scheduling pass (reference §6.5–§6.9, with the crate's rules).

use rustc_hash::FxHashMap;

use super::ids::{
    AccountIdx, CellKind, EntryId, GroupId, LabelId, ReqIdx, SetId, SlotId, VirtId, WorkerIdx,
};
use super::labels::is_subset;
use super::queue::Cell;
use super::{LEVELS, QKey, Scheduler};
use crate::account::{Balance, DEMOTE_THRESHOLD, FREE_PRIORITY, NUM_PRIORITIES, PROMOTE_THRESHOLD};
use crate::event::{Assignment, AssignmentKind, EventKind};

/// Per-pass counts for per-label task limits: (account, worker label id)
/// → running tasks of the account on workers with that label. Label ids
/// name labels one to one while they are interned, which a pass does not
/// change, so counting by id counts by name without hashing strings.
type LabelCounts = FxHashMap<(AccountIdx, LabelId), u32>;

/// State that lives for one pass.
struct PassCtx {
    out: Vec<Assignment>,
    /// Idle workers in id order; assigned ones are removed as the pass goes.
    idle: Vec<WorkerIdx>,
    limits: Limits,
    /// Scratch space: a worker's eligible provisionable sets.
    provs: Vec<SetId>,
}

/// A base set's cell as a pass reads it.
enum CellView<'a> {
    Stored(&'a Cell),
    /// Derived from the set's only entry (see `super::queue::Container`), whose
    /// head is at the level being looked at.
    Derived(EntryId),
}

/// Per-label task limits for one pass.
#[derive(Default)]
struct Limits {
    counts: LabelCounts,
    /// Accounts with per-label limits, by account index.
    limited: Vec<bool>,
}

impl Scheduler {
    /// Runs one scheduling pass at the scheduler's current time and returns
    /// the assignments in the order they were made.
    pub fn run_once(&mut self) -> Vec<Assignment> {
        self.pass_no += 1;
        self.refresh_placement();
        let idle: Vec<WorkerIdx> = self.workers.idle().collect();
        for &w in &idle {
            self.list_worker(w);
        }
        let mut cx = PassCtx {
            out: Vec::new(),
            idle,
            limits: Limits::default(),
            provs: Vec::new(),
        };
        self.count_label_limits(&mut cx.limits);
        for p in 0..NUM_PRIORITIES as u8 {
            self.assign_idle(&mut cx, p, true);
            self.assign_idle(&mut cx, p, false);
            self.reprioritize(p);
            if !self.settings.disable_preemption {
                self.preempt(&mut cx, p);
            }
        }
        self.assign_idle(&mut cx, FREE_PRIORITY, true);
        self.assign_idle(&mut cx, FREE_PRIORITY, false);
        self.finish_pass();
        cx.out
    }

    /// Places every account's requests at the level its balance gives, and
    /// applies fanout throttling decided by running counts.
    fn refresh_placement(&mut self) {
        for g in self.groups.take_dirty() {
            let Some(group) = self.groups.get(g) else {
                continue;
            };
            let max = self.max_fanout(group.account());
            let throttled = max > 0 && group.running() >= max as u32;
            self.set_group_throttled(g, throttled);
        }
        let accounts: Vec<AccountIdx> = self.accounts.iter().map(|(a, _)| a).collect();
        for a in accounts {
            let acc = &self.accounts[a];
            let (normal, throttled) = match acc.config() {
                Some(cfg) => {
                    let p = acc.balance().best_priority();
                    let omit_free = cfg.disable_free_tasks;
                    let normal = if p == FREE_PRIORITY && omit_free {
                        None
                    } else {
                        Some(p)
                    };
                    (normal, if omit_free { None } else { Some(FREE_PRIORITY) })
                }
                None => (Some(FREE_PRIORITY), Some(FREE_PRIORITY)),
            };
            self.set_virt_level(VirtId::new(a, false), normal);
            self.set_virt_level(VirtId::new(a, true), throttled);
        }
    }

    fn count_label_limits(&self, cx: &mut Limits) {
        cx.limited = Vec::new();
        for (a, acc) in self.accounts.iter() {
            let Some(cfg) = acc.config() else { continue };
            if cfg.per_label_task_limits.is_empty() {
                continue;
            }
            if cx.limited.len() <= a.index() {
                cx.limited.resize(a.index() + 1, false);
            }
            cx.limited[a.index()] = true;
            for &w in acc.running() {
                for key in cfg.per_label_task_limits.keys() {
                    if let Some(label) = self.label_for_key(w, key) {
                        *cx.counts.entry((a, label)).or_insert(0) += 1;
                    }
                }
            }
        }
    }

    /// True if account `a` has reached a per-label limit on worker `w`.
    fn label_blocked(&self, cx: &Limits, a: AccountIdx, w: WorkerIdx) -> bool {
        if !cx.limited.get(a.index()).copied().unwrap_or(false) {
            return false;
        }
        let Some(cfg) = self.accounts[a].config() else {
            return false;
        };
        cfg.per_label_task_limits.iter().any(|(key, &limit)| {
            self.label_for_key(w, key).is_some_and(|label| {
                cx.counts.get(&(a, label)).copied().unwrap_or(0) >= limit as u32
            })
        })
    }

    fn count_label_assignment(&self, cx: &mut Limits, a: AccountIdx, w: WorkerIdx) {
        if !cx.limited.get(a.index()).copied().unwrap_or(false) {
            return;
        }
        let Some(cfg) = self.accounts[a].config() else {
            return;
        };
        for key in cfg.per_label_task_limits.keys() {
            if let Some(label) = self.label_for_key(w, key) {
                *cx.counts.entry((a, label)).or_insert(0) += 1;
            }
        }
    }

    /// Candidate base sets for worker `w`: the empty set (if it is in use
    /// as base labels) and the worker's eligible sets.
    fn base_candidates(&self, w: WorkerIdx) -> impl Iterator<Item = SetId> + '_ {
        let empty = self.labels.empty_set();
        let has_empty = self.labels[empty].cell.is_some();
        has_empty
            .then_some(empty)
            .into_iter()
            .chain(self.workers[w].eligible.iter().copied())
    }

    /// Steps 1 (`require_provision`) and 2 at level `p`.
    fn assign_idle(&mut self, cx: &mut PassCtx, p: u8, require_provision: bool) {
        if !self.index.has_cells_at(p) || cx.idle.is_empty() {
            return;
        }
        let mut idle = std::mem::take(&mut cx.idle);
        idle.retain(
            |&w| match self.best_idle_match(cx, w, p, require_provision) {
                Some(r) => {
                    self.assign_to_idle(cx, w, r, p);
                    false
                }
                None => true,
            },
        );
        cx.idle = idle;
    }

    /// Base set `s`'s cell, unless it surely has no entry at level `p`.
    fn cell_at_level(&self, s: SetId, p: u8) -> Option<CellView<'_>> {
        match self.labels[s].cell.kind() {
            CellKind::None => None,
            CellKind::Many(ci) => {
                let cell = self.index.cell(ci);
                // Heads at other levels are skipped by the scan itself.
                (!cell.heads().is_empty()).then_some(CellView::Stored(cell))
            }
            CellKind::Single(e) => (self.index.level(self.index.entry_virt(e)) == Some(p)
                && self.index.entry_head(e).is_some())
            .then_some(CellView::Derived(e)),
        }
    }

    /// `head` (a key of entry `e`) as a cell would store it.
    fn cell_key(&self, e: EntryId, head: &QKey) -> QKey {
        self.index
            .translate(self.last_pass, self.index.entry_virt(e), head)
    }

    /// The best match at level `p` for worker `w` among the heads of the
    /// cells of the base sets it can run: the most base labels first, then
    /// the earliest key. With `provs`, only heads of buckets with one of
    /// those provisionable sets count. Each cell is read in key order until
    /// `stop` holds for a head (no later head can do) or a head at level `p`
    /// is `acceptable`.
    fn best_in_cells(
        &self,
        w: WorkerIdx,
        p: u8,
        provs: Option<&[SetId]>,
        stop: impl Fn(&QKey) -> bool,
        acceptable: impl Fn(&QKey) -> bool,
    ) -> Option<ReqIdx> {
        let mut best: Option<(usize, QKey)> = None;
        // Offers a head as a candidate of quality `q`; returns whether later
        // heads of the same cell could still be better.
        let offer = |head: &QKey, q: usize, best: &mut Option<(usize, QKey)>| {
            if stop(head) {
                return false;
            }
            if let Some((bq, bk)) = best.as_ref()
                && *bq == q
                && head >= bk
            {
                return false;
            }
            if self.index.level(head.v) != Some(p) || !acceptable(head) {
                return true;
            }
            *best = Some((q, head.clone()));
            false
        };
        let scan =
            |heads: &super::ordset::OrdSet<QKey>, q: usize, best: &mut Option<(usize, QKey)>| {
                heads.for_each_while(|head| offer(head, q, best));
            };
        for s in self.base_candidates(w) {
            let Some(view) = self.cell_at_level(s, p) else {
                continue;
            };
            let q = self.labels[s].labels().len();
            if best.as_ref().is_some_and(|(bq, _)| q < *bq) {
                continue;
            }
            match (view, provs) {
                (CellView::Stored(cell), None) => scan(cell.heads(), q, &mut best),
                (CellView::Stored(cell), Some(provs)) => {
                    for &prov in provs {
                        if let Some(heads) = cell.prov_heads(prov) {
                            scan(heads, q, &mut best);
                        }
                    }
                }
                (CellView::Derived(e), None) => {
                    if let Some(head) = self.index.entry_head(e) {
                        offer(&self.cell_key(e, head), q, &mut best);
                    }
                }
                (CellView::Derived(e), Some(provs)) => {
                    for &prov in provs {
                        if let Some(head) = self.index.entry_prov_head(e, prov) {
                            offer(&self.cell_key(e, head), q, &mut best);
                        }
                    }
                }
            }
        }
        best.map(|(_, k)| k.req)
    }

    /// The best-ranked request at level `p` for idle worker `w`.
    fn best_idle_match(
        &self,
        cx: &mut PassCtx,
        w: WorkerIdx,
        p: u8,
        require_provision: bool,
    ) -> Option<ReqIdx> {
        let worker = &self.workers[w];
        let modified = worker.modified.as_nanos();
        let provs = &mut cx.provs;
        provs.clear();
        if require_provision {
            provs.push(self.labels.empty_set());
            provs.extend(
                worker
                    .eligible
                    .iter()
                    .copied()
                    .filter(|&s| self.labels[s].queued_prov > 0),
            );
        }
        let limits = &cx.limits;
        self.best_in_cells(
            w,
            p,
            require_provision.then_some(&cx.provs[..]),
            |head| self.key_examined(head) > modified,
            |head| !self.label_blocked(limits, self.requests[head.req].account, w),
        )
    }

    fn assign_to_idle(&mut self, cx: &mut PassCtx, w: WorkerIdx, r: ReqIdx, p: u8) {
        let provision_required = !self.provision_matches(r, w);
        let a = self.requests[r].account;
        self.count_fanout(r, p);
        self.count_label_assignment(&mut cx.limits, a, w);
        self.start_task(r, w, p, Balance::ZERO);
        let t = self.now;
        self.emit(
            EventKind::Assigned {
                provision_required,
                priority: p,
                preempting: false,
                preemption_cost: None,
                preempted_task_id: None,
            },
            r,
            t,
            Some(w),
            Some(Balance::ZERO),
        );
        cx.out.push(Assignment {
            kind: AssignmentKind::Idle,
            worker_id: self.workers[w].id().clone(),
            request_id: self.requests[r].id.clone(),
            priority: p,
            time: t,
            provision_required,
        });
    }

    fn provision_matches(&self, r: ReqIdx, w: WorkerIdx) -> bool {
        is_subset(
            self.labels[self.requests[r].prov].labels(),
            &self.workers[w].labels,
        )
    }

    /// Counts an assignment at a paid level against the request's fanout
    /// group, throttling the group at once when it reaches its limit.
    fn count_fanout(&mut self, r: ReqIdx, p: u8) {
        let Some(g) = self.requests[r].group.group() else {
            return;
        };
        let max = self.max_fanout(self.groups[g].account());
        if max <= 0 || p >= FREE_PRIORITY {
            return;
        }
        self.fanout_snapshot(g);
        let group = &mut self.groups[g];
        group.pass_assigned += 1;
        if group.pass_base + group.pass_assigned >= max as u32 {
            self.set_group_throttled(g, true);
        }
    }

    /// Records group `g`'s running count as the base of its fanout count
    /// for this pass, unless already done. The base must be the count at the
    /// start of the pass, so this runs before the first change to it in the
    /// pass: the group's first assignment, or a preemption of one of its
    /// tasks (which does not give the group its slot back until the next
    /// pass).
    fn fanout_snapshot(&mut self, g: GroupId) {
        let pass_no = self.pass_no;
        let group = &mut self.groups[g];
        if group.pass_stamp != pass_no {
            group.pass_stamp = pass_no;
            group.pass_base = group.running();
            group.pass_assigned = 0;
        }
    }

    /// Step 3 at level `p`.
    fn reprioritize(&mut self, p: u8) {
        let pi = p as usize;
        let accounts: Vec<AccountIdx> = self.accounts.configured().collect();
        for a in accounts {
            let acc = &self.accounts[a];
            let Some(cfg) = acc.config() else { continue };
            let b = acc.balance().0[pi];
            let at_p = acc.running_by_prio()[pi];
            let net = cfg.charge_rate[pi] - at_p as f32;
            if b < DEMOTE_THRESHOLD && net < 0.0 {
                let mut tasks: Vec<WorkerIdx> = acc
                    .running()
                    .iter()
                    .copied()
                    .filter(|&w| self.task_priority(w) == p)
                    .collect();
                tasks.sort_by(|&x, &y| {
                    self.task_cost(x)
                        .lex_cmp(&self.task_cost(y))
                        .then_with(|| self.workers[x].id().cmp(self.workers[y].id()))
                });
                let n = ceil_count(-net, tasks.len());
                for &w in &tasks[..n] {
                    self.change_priority(w, p + 1);
                }
            } else if b > PROMOTE_THRESHOLD && net > 0.0 {
                let mut tasks: Vec<WorkerIdx> = acc
                    .running()
                    .iter()
                    .copied()
                    .filter(|&w| self.task_priority(w) > p)
                    .collect();
                tasks.sort_by(|&x, &y| {
                    self.task_cost(y)
                        .lex_cmp(&self.task_cost(x))
                        .then_with(|| self.workers[x].id().cmp(self.workers[y].id()))
                });
                let n = ceil_count(net, tasks.len());
                for &w in &tasks[..n] {
                    self.change_priority(w, p);
                }
            }
        }
    }

    fn task_priority(&self, w: WorkerIdx) -> u8 {
        self.workers[w]
            .running()
            .map_or(FREE_PRIORITY, |r| r.priority)
    }

    fn task_cost(&self, w: WorkerIdx) -> Balance {
        self.workers[w].running().map_or(Balance::ZERO, |r| r.cost)
    }

    fn change_priority(&mut self, w: WorkerIdx, new: u8) {
        let Some(run) = self.workers[w].running().cloned() else {
            return;
        };
        self.set_task_priority(w, new);
        let t = self.now;
        self.emit(
            EventKind::Reprioritized {
                old_priority: run.priority,
                new_priority: new,
            },
            run.req,
            t,
            Some(w),
            Some(run.cost),
        );
    }

    /// The balance an account offers in the preemption test (zero if
    /// unconfigured).
    fn offered_balance(&self, a: AccountIdx) -> Balance {
        let acc = &self.accounts[a];
        if acc.config().is_some() {
            *acc.balance()
        } else {
            Balance::ZERO
        }
    }

    /// Step 4 at level `p`.
    fn preempt(&mut self, cx: &mut PassCtx, p: u8) {
        let pi = p as usize;
        if !self.index.has_cells_at(p) {
            return;
        }
        let banned: Vec<bool> = {
            let mut v = vec![false; self.accounts_capacity()];
            for (a, acc) in self.accounts.iter() {
                v[a.index()] = acc.running_by_prio()[pi + 1..].iter().any(|&n| n > 0);
            }
            v
        };
        // Accounts that could preempt at all: at this level, not banned,
        // with something queued. Without one, skip building candidates.
        let mut best_offer: Option<Balance> = None;
        for (a, acc) in self.accounts.iter() {
            if banned[a.index()] || acc.config().is_none() {
                continue;
            }
            let normal = self.index.placement(VirtId::new(a, false));
            if normal.level() != Some(p) || !normal.has_entries() {
                continue;
            }
            let bal = *acc.balance();
            if best_offer.is_none_or(|b| b.lex_less(&bal)) {
                best_offer = Some(bal);
            }
        }
        let Some(best_offer) = best_offer else {
            return;
        };
        let mut candidates: Vec<WorkerIdx> = Vec::new();
        for q in pi + 1..LEVELS {
            for w in self.workers.running_at(q) {
                if self.task_cost(w).lex_less(&best_offer) {
                    candidates.push(w);
                }
            }
        }
        candidates.sort_by(|&x, &y| {
            self.task_cost(x)
                .lex_cmp(&self.task_cost(y))
                .then_with(|| self.workers[x].id().cmp(self.workers[y].id()))
        });
        for w in candidates {
            self.list_worker(w);
            if let Some(r) = self.best_preempt_match(cx, w, p, &banned) {
                self.preempt_worker(cx, w, r, p);
            }
        }
    }

    fn accounts_capacity(&self) -> usize {
        self.accounts
            .iter()
            .map(|(a, _)| a.index() + 1)
            .max()
            .unwrap_or(0)
    }

    fn best_preempt_match(
        &self,
        cx: &PassCtx,
        w: WorkerIdx,
        p: u8,
        banned: &[bool],
    ) -> Option<ReqIdx> {
        let cost = self.task_cost(w);
        self.best_in_cells(
            w,
            p,
            None,
            |_| false,
            |head| {
                let a = self.requests[head.req].account;
                !banned.get(a.index()).copied().unwrap_or(false)
                    && cost.lex_less(&self.offered_balance(a))
                    && !self.label_blocked(&cx.limits, a, w)
            },
        )
    }

    fn preempt_worker(&mut self, cx: &mut PassCtx, w: WorkerIdx, r: ReqIdx, p: u8) {
        let Some(old) = self.workers[w].running().cloned() else {
            return;
        };
        let t = self.now;
        let provision_required = !self.provision_matches(r, w);
        let old_id = self.requests[old.req].id.clone();
        self.emit(
            EventKind::Assigned {
                provision_required,
                priority: p,
                preempting: true,
                preemption_cost: Some(old.cost),
                preempted_task_id: Some(old_id.clone()),
            },
            r,
            t,
            Some(w),
            Some(old.cost),
        );
        let (new_acc, old_acc) = (self.requests[r].account, self.requests[old.req].account);
        self.emit(
            EventKind::Preempted {
                preempting_account_id: self.accounts[new_acc].id().clone(),
                preempting_task_id: self.requests[r].id.clone(),
                priority: old.priority,
                preempting_priority: p,
            },
            old.req,
            t,
            Some(w),
            Some(old.cost),
        );
        self.accounts.credit(old_acc, &old.cost);
        self.accounts.debit(new_acc, &old.cost);
        if let Some(g) = self.requests[old.req].group.group() {
            self.fanout_snapshot(g);
        }
        if let Some(old_r) = self.stop_task(w) {
            self.free_request(old_r);
        }
        self.count_fanout(r, p);
        self.count_label_assignment(&mut cx.limits, new_acc, w);
        self.start_task(r, w, p, old.cost);
        cx.out.push(Assignment {
            kind: AssignmentKind::Preempt {
                task_to_abort: old_id,
            },
            worker_id: self.workers[w].id().clone(),
            request_id: self.requests[r].id.clone(),
            priority: p,
            time: t,
            provision_required,
        });
    }

    /// Step 5: every request that was in the pass and is still queued was
    /// examined now. Settled requests of placements in the pass follow their
    /// placement's stamp, which moves to now; only requests that joined since
    /// the last pass change keys. Placements that sat out keep their stamp,
    /// and only their cell entries are restated when the pool-wide "last
    /// pass" moves past it.
    fn finish_pass(&mut self) {
        let t = self.now;
        let accounts: Vec<AccountIdx> = self.accounts.iter().map(|(a, _)| a).collect();
        let (index, mut cx) = self.index_parts();
        index.settle_pass(&mut cx, &accounts, t);
        self.last_pass = t;
    }
}

/// `min(len, ceil(x))` for a positive `f32` count.
fn ceil_count(x: f32, len: usize) -> usize {
    let c = x.ceil();
    if c >= len as f32 {
        len
    } else {
        c.max(0.0) as usize
    }
}
