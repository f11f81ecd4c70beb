//! Task lifecycle events and assignments, returned as data.
//!
//! The core does no logging and keeps no counters: every state change a
//! user may want to see (reference §11.2) comes back to the caller as an
//! [`Event`], in the order it happened, so the server can write the event
//! log and derive metrics from exactly what the scheduler did.

use std::sync::Arc;

use crate::account::Balance;
use crate::time::Time;

/// A shared, immutable list of label strings, sorted.
pub type Labels = Arc<[Arc<str>]>;

/// Why the scheduler considers a task finished (`CompletedDetails.Reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CompletedReason {
    /// The bot asked for work, so its previous task is over.
    BotIdle = 1,
    /// Swarming reported a queued task gone.
    IdleTaskAbsent = 2,
    /// Swarming reported a running task gone; its bot is forgotten too.
    RunningTaskAbsent = 3,
    /// The task was reported running on another bot.
    InconsistentBotForTask = 4,
    /// The bot was reported running another task.
    InconsistentTaskForBot = 5,
}

impl CompletedReason {
    /// The upstream enum name.
    pub fn name(self) -> &'static str {
        match self {
            CompletedReason::BotIdle => "BOT_IDLE",
            CompletedReason::IdleTaskAbsent => "IDLE_TASK_ABSENT",
            CompletedReason::RunningTaskAbsent => "RUNNING_TASK_ABSENT",
            CompletedReason::InconsistentBotForTask => "INCONSISTENT_BOT_FOR_TASK",
            CompletedReason::InconsistentTaskForBot => "INCONSISTENT_TASK_FOR_BOT",
        }
    }
}

/// What happened, with the type-specific details of reference §11.2.
#[derive(Clone, Debug, PartialEq)]
pub enum EventKind {
    /// `SWARMING_ENQUEUED`: a new queued task.
    Enqueued {
        /// The task's tags (kept only for this event).
        tags: Arc<[String]>,
    },
    /// `SWARMING_COMPLETED`: the scheduler forgot a task.
    Completed {
        /// Why.
        reason: CompletedReason,
        /// For [`CompletedReason::InconsistentTaskForBot`]: the task now on the bot.
        other_task: Option<Arc<str>>,
        /// For [`CompletedReason::InconsistentBotForTask`]: the bot now running the task.
        other_bot: Option<Arc<str>>,
    },
    /// `QSCHEDULER_ASSIGNED`: a task was given a bot.
    Assigned {
        /// The bot lacks some of the task's provisionable labels.
        provision_required: bool,
        /// Level the task runs at (5 = free).
        priority: u8,
        /// The bot was running another task, which is preempted.
        preempting: bool,
        /// Cost of the preempted task (inherited by this one).
        preemption_cost: Option<Balance>,
        /// The preempted task.
        preempted_task_id: Option<Arc<str>>,
    },
    /// `QSCHEDULER_PREEMPTED`: a running task lost its bot.
    Preempted {
        /// Account of the task that took the bot.
        preempting_account_id: Arc<str>,
        /// The task that took the bot.
        preempting_task_id: Arc<str>,
        /// Level the preempted task was running at.
        priority: u8,
        /// Level of the preempting task.
        preempting_priority: u8,
    },
    /// `QSCHEDULER_REPRIORITIZED`: a running task changed level.
    Reprioritized {
        /// Previous level.
        old_priority: u8,
        /// New level.
        new_priority: u8,
    },
    /// `QSCHEDULER_UNASSIGNED`: an assignment was not picked up in time.
    Unassigned,
}

impl EventKind {
    /// The upstream `EventType` name.
    pub fn type_name(&self) -> &'static str {
        match self {
            EventKind::Enqueued { .. } => "SWARMING_ENQUEUED",
            EventKind::Completed { .. } => "SWARMING_COMPLETED",
            EventKind::Assigned { .. } => "QSCHEDULER_ASSIGNED",
            EventKind::Preempted { .. } => "QSCHEDULER_PREEMPTED",
            EventKind::Reprioritized { .. } => "QSCHEDULER_REPRIORITIZED",
            EventKind::Unassigned => "QSCHEDULER_UNASSIGNED",
        }
    }

    /// True for events that describe what Swarming told us
    /// (`CATEGORY_SWARMING`), false for the scheduler's own decisions.
    pub fn is_swarming_category(&self) -> bool {
        matches!(
            self,
            EventKind::Enqueued { .. } | EventKind::Completed { .. }
        )
    }
}

/// One task lifecycle event (`metrics.TaskEvent` without the pool id and
/// the callback flag, which the caller adds).
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Type and details.
    pub kind: EventKind,
    /// The task.
    pub task_id: Arc<str>,
    /// Notification time for Swarming events and unassignments; scheduler
    /// time for the scheduler's decisions.
    pub time: Time,
    /// The task's base labels, sorted.
    pub base_labels: Labels,
    /// The task's provisionable labels, sorted.
    pub provisionable_labels: Labels,
    /// The task's account.
    pub account_id: Arc<str>,
    /// The account has a balance (it is configured).
    pub account_valid: bool,
    /// The account's balance at event time (zeros if invalid); for
    /// preemptions, before the refund and charge.
    pub account_balance: Balance,
    /// The running task's cost, when a bot is involved.
    pub cost: Option<Balance>,
    /// The bot, when one is involved.
    pub bot_id: Option<Arc<str>>,
    /// The bot's labels, sorted (empty when no bot is involved).
    pub bot_dimensions: Labels,
}

/// Whether an assignment takes an idle bot or preempts a running task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AssignmentKind {
    /// The bot was idle.
    Idle,
    /// The bot was running `task_to_abort`, which Swarming must cancel.
    Preempt {
        /// The preempted task.
        task_to_abort: Arc<str>,
    },
}

/// A scheduling decision of one pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    /// Idle or preempting.
    pub kind: AssignmentKind,
    /// The bot.
    pub worker_id: Arc<str>,
    /// The task it should run.
    pub request_id: Arc<str>,
    /// Level the task runs at.
    pub priority: u8,
    /// Scheduler time of the pass.
    pub time: Time,
    /// The bot lacks some of the task's provisionable labels (as known to
    /// the scheduler when it decided).
    pub provision_required: bool,
}
