//! The quotascheduler algorithm and its reconciler as a deterministic state
//! machine.
//!
//! This crate is the heart of qscheduler. It owns the scheduling state of
//! one pool (queued requests, workers, accounts and their balances, pending
//! assignments, task errors) and every rule that changes it. It does no I/O,
//! spawns no threads, reads no clock and uses no randomness: every input
//! carries its own time, and **the same inputs in the same order always give
//! the same outputs** — assignments, cancellations, callbacks, events and
//! snapshot bytes. That property is what makes durable logs, crash recovery,
//! replay and simulation work, and the test suite checks it directly.
//!
//! # Layers
//!
//! * [`scheduler::Scheduler`] — the quotascheduler (reference §6): time and
//!   balances, the scheduling pass, notifications.
//! * [`reconciler::Reconciler`] — Swarming's per-bot pull model on top of
//!   the global pass (reference §7): pending assignments, pickup timeouts,
//!   task errors, cancellations.
//! * [`pool::Pool`] — both together, driven by [`command::Command`]s: exactly
//!   the inputs the server logs and replays.
//! * [`snapshot`] — a versioned, canonical binary image of a [`pool::Pool`].
//!
//! # The rules, precisely
//!
//! The behaviour follows the reference of the original system; where it
//! left an order to chance, or had a bug, this crate decides as follows.
//! (The project's `docs/compatibility.md` lists every deliberate difference.)
//!
//! **Labels** are sets of strings: duplicates vanish and order is
//! irrelevant. Wherever labels leave the core (events, views, snapshots) they
//! are sorted by byte order.
//!
//! **Levels.** A request's level is the best priority of its account's
//! balance: the lowest `p` in `0..5` with `balance[p] > 0`, else the free
//! level 5. Unknown (unconfigured) accounts have a zero balance. A request at
//! level 5 whose account disables free tasks is left out of the pass and its
//! examined time does not change. Levels are computed once, at the start of
//! each pass.
//!
//! **Order within a level**: by examined time, then enqueue time (oldest
//! first), then request id (byte order). Idle workers are visited in worker
//! id order. For one worker, candidate requests are ranked by match quality
//! (number of base labels, more is better), then by the order within the
//! level. There is no size cut-off for this ranking.
//!
//! **The pass** at scheduler time `T`, for each level `p` from 0 to 4:
//! 1. each idle worker (in id order) takes its best-ranked request of level
//!    `p` whose base labels it has, whose examined time is not after the
//!    worker's modified time, and whose provisionable labels it also has;
//! 2. then each still idle worker takes its best-ranked such request
//!    without the provisionable requirement;
//! 3. reprioritisation: for each configured account in id order with
//!    `b = balance[p]` and `net = charge_rate[p] - (its tasks running at p)`:
//!    if `b < -600` and `net < 0`, its `min(n, ceil(-net))` cheapest tasks at
//!    `p` (cost in lexicographic order, then worker id) move to `p + 1`; if
//!    `b > 600` and `net > 0`, its `min(n, ceil(net))` costliest tasks
//!    running below `p` (cost descending, then worker id) move to `p`, and
//!    the event names `p` as the new priority;
//! 4. preemption (unless disabled for the pool): the running workers whose
//!    task's level is worse than `p` are the candidates; their tasks'
//!    accounts are banned from preempting at this level. Candidates are
//!    visited by ascending cost (lexicographic), then worker id. Each takes
//!    its best-ranked level-`p` request (no examined-time rule) whose account
//!    is not banned and whose balance is lexicographically greater than the
//!    candidate's cost. A preemption refunds the cost to the preempted
//!    task's account, charges it to the preempting one (each only if
//!    configured), forgets the preempted request, and gives the new task the
//!    old cost. A worker is preempted at most once per pass.
//!
//! Then the free level: steps 1 and 2 with `p = 5`. Finally every request
//! that was in the pass and was not assigned gets examined time `T`.
//!
//! **Fanout** (`max_fanout > 0`): requests of an account with identical
//! labels (base ∪ provisionable, exact) form a group. A group with
//! `max_fanout` or more running tasks (at any level) is throttled: its
//! requests are placed at the free level for the pass (left out if the
//! account disables free tasks). Within a pass, each assignment counts
//! against the group; a group that reaches its limit during the pass leaves
//! its level at once and gets a second chance at the free level of the same
//! pass (ranked by the usual order), unless free tasks are disabled, in
//! which case its examined times are left unchanged. Reprioritisation
//! ignores fanout.
//!
//! **Per-label task limits** (`key → limit`): a worker's label for a key is
//! its smallest label (byte order) that starts with the key. Before the
//! pass, the core counts per account and such label the running tasks of
//! that account; a request of the account is skipped for a worker whose
//! label for some key has reached the limit. Each assignment in the pass
//! adds to the counts; preemptions in the pass do not subtract.
//!
//! **Time** only moves forward: an update to an earlier time changes
//! nothing. An update recharges and charges balances (reference §6.4, in
//! `f32` and in the same order of operations), adds the elapsed time to each
//! running task's cost at its level (not at the free level), then forgets
//! idle workers not confirmed for longer than the pool's bot expiration.
//!
//! **Notifications** follow reference §6.10 with inclusive "not before"
//! checks against confirmed times. An assignment whose bot does not pick it
//! up within 10 minutes is withdrawn (reference §6.11): the bot is forgotten
//! and the request re-queued, unless it was enqueued more than 46 hours
//! before the later of the scheduler's time and the withdrawal's time.
//!
//! **Determinism.** No hash map is ever iterated to produce an output; all
//! outputs come from ordered structures or explicit sorts with a total order
//! ending in an id.

pub mod account;
mod codec;
pub mod command;
pub mod event;
pub mod explain;
pub mod id_rule;
#[cfg(any(test, feature = "model"))]
pub mod model;
pub mod pool;
pub mod reconciler;
pub mod scheduler;
pub mod snapshot;
pub mod time;

#[cfg(test)]
mod conformance;
#[cfg(test)]
mod differential;
#[cfg(test)]
mod replay_props;
#[cfg(test)]
mod snapshot_props;

pub use account::{AccountConfig, Balance, FREE_PRIORITY, NUM_PRIORITIES, PoolSettings};
pub use codec::DecodeError;
pub use command::{
    AccountChanges, AssignCall, BATCH_SIZE_BOUND, Batch, Command, CommandError, Notification,
    NotifyCall, NotifyKind,
};
pub use event::{Assignment, AssignmentKind, CompletedReason, Event, EventKind, Labels};
pub use pool::{Admission, Outcome, Pool, PoolEvent};
pub use reconciler::{BotAssignment, CancelReason, Cancellation, IdleBot, Reconciler};
pub use scheduler::{NewRequest, Scheduler};
pub use time::Time;
