//! Worked examples of the rules, run against both implementations.
//!
//! Each example is written once, generically over [`Sched`], and run on the
//! optimized [`Scheduler`] and on the naive [`Model`]: an example that
//! passes on both pins the intended behaviour, and one that passes on only
//! one points at the culprit. The examples come from reference §6.4–§6.14,
//! its Appendix A and the project's deliberate differences (DECISIONS 1–4),
//! and each asserts assignments together with the events and state that
//! should accompany them.

use crate::Scheduler;
use crate::account::{AccountConfig, Balance, PoolSettings};
use crate::event::{Assignment, Event};
use crate::model::Model;
use crate::scheduler::{NewRequest, NotAssigned, StateDump};
use crate::time::Time;

/// The operations both implementations offer.
pub(crate) trait Sched {
    fn new(now: Time) -> Self;
    fn set_settings(&mut self, settings: PoolSettings);
    fn add_account(&mut self, id: &str, config: AccountConfig, balance: Option<Balance>);
    fn update_account_config(&mut self, id: &str, config: AccountConfig) -> bool;
    fn delete_account(&mut self, id: &str);
    fn reset_balance(&mut self, id: &str);
    fn add_request(&mut self, new: &NewRequest, t: Time, tags: &[String]);
    fn mark_idle(&mut self, worker: &str, labels: &[String], t: Time);
    fn notify_running(&mut self, request: &str, worker: &str, t: Time);
    fn notify_absent(&mut self, request: &str, t: Time);
    fn update_time(&mut self, t: Time);
    fn run_once(&mut self) -> Vec<Assignment>;
    fn unassign(&mut self, request: &str, worker: &str, t: Time) -> Result<(), NotAssigned>;
    fn is_assigned(&self, request: &str, worker: &str) -> bool;
    fn take_events(&mut self) -> Vec<Event>;
    fn dump(&self) -> StateDump;
    /// Checks internal consistency, where the implementation has any.
    fn check(&self) {}
}

macro_rules! forward_sched {
    ($t:ty $(, $check:ident)?) => {
        impl Sched for $t {
            fn new(now: Time) -> Self {
                <$t>::new(now)
            }
            fn set_settings(&mut self, settings: PoolSettings) {
                <$t>::set_settings(self, settings)
            }
            fn add_account(&mut self, id: &str, config: AccountConfig, balance: Option<Balance>) {
                <$t>::add_account(self, id, config, balance)
            }
            fn update_account_config(&mut self, id: &str, config: AccountConfig) -> bool {
                <$t>::update_account_config(self, id, config)
            }
            fn delete_account(&mut self, id: &str) {
                <$t>::delete_account(self, id)
            }
            fn reset_balance(&mut self, id: &str) {
                <$t>::reset_balance(self, id)
            }
            fn add_request(&mut self, new: &NewRequest, t: Time, tags: &[String]) {
                <$t>::add_request(self, new, t, tags)
            }
            fn mark_idle(&mut self, worker: &str, labels: &[String], t: Time) {
                <$t>::mark_idle(self, worker, labels, t)
            }
            fn notify_running(&mut self, request: &str, worker: &str, t: Time) {
                <$t>::notify_running(self, request, worker, t)
            }
            fn notify_absent(&mut self, request: &str, t: Time) {
                <$t>::notify_absent(self, request, t)
            }
            fn update_time(&mut self, t: Time) {
                <$t>::update_time(self, t)
            }
            fn run_once(&mut self) -> Vec<Assignment> {
                <$t>::run_once(self)
            }
            fn unassign(&mut self, request: &str, worker: &str, t: Time) -> Result<(), NotAssigned> {
                <$t>::unassign(self, request, worker, t)
            }
            fn is_assigned(&self, request: &str, worker: &str) -> bool {
                <$t>::is_assigned(self, request, worker)
            }
            fn take_events(&mut self) -> Vec<Event> {
                <$t>::take_events(self)
            }
            fn dump(&self) -> StateDump {
                <$t>::dump(self)
            }
            $(
                fn check(&self) {
                    <$t>::$check(self)
                }
            )?
        }
    };
}

forward_sched!(Scheduler, check_invariants);
forward_sched!(Model);
