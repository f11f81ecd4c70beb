//! Accounts: configuration, balances, and what each account has queued
//! and running.
//!
//! [`Accounts`] owns the account table and is the only code that changes
//! an account's configuration, balance or counts, so that the table of
//! configured accounts and the running counts cannot drift. An account's
//! two placements in the queue are the queue index's (`queue/`), which the
//! scheduler opens and closes with the account.
//!
//! Invariants (`Accounts::check_invariants`): every account is found by
//! its id; the configured table lists exactly the accounts with a
//! configuration; an account is kept only while it is configured or has
//! requests; its running counts per level add up to its running workers,
//! and it has no balance while unconfigured.

use std::collections::BTreeMap;
use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};

use super::ids::{AccountIdx, WorkerIdx};
use super::slab::Slab;
use super::{LEVELS, Scheduler};
use crate::account::{AccountConfig, Balance, NUM_PRIORITIES};

#[derive(Clone, Debug)]
pub(crate) struct Account {
    id: Arc<str>,
    config: Option<AccountConfig>,
    /// Meaningful only when configured; zero while `balance_listed` is
    /// false.
    balance: Balance,
    /// Whether the pool holds a balance for this configured account. After
    /// a wipe it holds none until the next clock update creates them
    /// (reference §6.4 step 4); passes read a missing balance as zero.
    balance_listed: bool,
    /// Requests (queued or running) of this account.
    requests: u32,
    running_by_prio: [u32; LEVELS],
    running: FxHashSet<WorkerIdx>,
}

impl Account {
    pub(crate) fn id(&self) -> &Arc<str> {
        &self.id
    }

    pub(crate) fn config(&self) -> Option<&AccountConfig> {
        self.config.as_ref()
    }

    /// The balance (zero unless configured, and while the pool holds none).
    pub(crate) fn balance(&self) -> &Balance {
        &self.balance
    }

    /// Tasks running per level.
    pub(crate) fn running_by_prio(&self) -> &[u32; LEVELS] {
        &self.running_by_prio
    }

    /// Workers running its tasks, in no particular order.
    pub(crate) fn running(&self) -> &FxHashSet<WorkerIdx> {
        &self.running
    }

    /// Its `max_fanout`, 0 if unconfigured.
    pub(crate) fn max_fanout(&self) -> i32 {
        self.config.as_ref().map_or(0, |c| c.max_fanout)
    }
}

/// The accounts of a pool (see the module docs).
#[derive(Clone, Debug, Default)]
pub(crate) struct Accounts {
    ids: FxHashMap<Arc<str>, AccountIdx>,
    slab: Slab<AccountIdx, Account>,
    /// Configured accounts by id.
    configured: BTreeMap<Arc<str>, AccountIdx>,
}

impl std::ops::Index<AccountIdx> for Accounts {
    type Output = Account;
    fn index(&self, a: AccountIdx) -> &Account {
        &self.slab[a]
    }
}

impl std::ops::IndexMut<AccountIdx> for Accounts {
    fn index_mut(&mut self, a: AccountIdx) -> &mut Account {
        &mut self.slab[a]
    }
}

impl Accounts {
    /// The account with id `id`.
    pub(crate) fn find(&self, id: &str) -> Option<AccountIdx> {
        self.ids.get(id).copied()
    }

    pub(crate) fn get(&self, a: AccountIdx) -> Option<&Account> {
        self.slab.get(a)
    }

    /// Accounts in slot order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (AccountIdx, &Account)> {
        self.slab.iter()
    }

    /// Configured accounts in id order.
    pub(crate) fn configured(&self) -> impl Iterator<Item = AccountIdx> + '_ {
        self.configured.values().copied()
    }

    /// The configured account with id `id`.
    pub(crate) fn find_configured(&self, id: &str) -> Option<AccountIdx> {
        self.configured.get(id).copied()
    }

    /// The account with id `id`, created unconfigured if unknown; and
    /// whether it is new.
    pub(crate) fn get_or_create(&mut self, id: &str) -> (AccountIdx, bool) {
        if let Some(&a) = self.ids.get(id) {
            return (a, false);
        }
        let id: Arc<str> = Arc::from(id);
        let a = self.slab.insert(Account {
            id: id.clone(),
            config: None,
            balance: Balance::ZERO,
            balance_listed: false,
            requests: 0,
            running_by_prio: [0; LEVELS],
            running: FxHashSet::default(),
        });
        self.ids.insert(id, a);
        (a, true)
    }

    /// Forgets an account that is unconfigured and has no requests;
    /// returns whether it did.
    pub(crate) fn maybe_free(&mut self, a: AccountIdx) -> bool {
        let acc = &self.slab[a];
        if acc.requests == 0 && acc.config.is_none() {
            let id = acc.id.clone();
            self.ids.remove(&id);
            self.slab.remove(a);
            true
        } else {
            false
        }
    }

    /// Sets or removes the configuration; returns the previous one. An
    /// account that loses its configuration loses its balance too.
    pub(crate) fn set_config(
        &mut self,
        a: AccountIdx,
        config: Option<AccountConfig>,
    ) -> Option<AccountConfig> {
        let acc = &mut self.slab[a];
        match &config {
            Some(_) => {
                self.configured.insert(acc.id.clone(), a);
            }
            None => {
                self.configured.remove(&acc.id);
                acc.balance = Balance::ZERO;
                acc.balance_listed = false;
            }
        }
        std::mem::replace(&mut acc.config, config)
    }

    /// Gives a configured account a balance.
    pub(crate) fn set_balance(&mut self, a: AccountIdx, balance: Balance) {
        let acc = &mut self.slab[a];
        if acc.config.is_some() {
            acc.balance = balance;
            acc.balance_listed = true;
        }
    }

    /// The pool holds no balance for the account until the next clock
    /// update.
    pub(crate) fn forget_balance(&mut self, a: AccountIdx) {
        let acc = &mut self.slab[a];
        acc.balance = Balance::ZERO;
        acc.balance_listed = false;
    }

    /// The balance of a configured account, if the pool holds one.
    pub(crate) fn listed_balance(&self, a: AccountIdx) -> Option<Balance> {
        let acc = &self.slab[a];
        acc.config
            .as_ref()
            .filter(|_| acc.balance_listed)
            .map(|_| acc.balance)
    }

    /// Adds `cost` to a configured account's balance (a refund).
    pub(crate) fn credit(&mut self, a: AccountIdx, cost: &Balance) {
        let acc = &mut self.slab[a];
        if acc.config.is_some() {
            acc.balance.add(cost);
        }
    }

    /// Takes `cost` from a configured account's balance (a charge).
    pub(crate) fn debit(&mut self, a: AccountIdx, cost: &Balance) {
        let acc = &mut self.slab[a];
        if acc.config.is_some() {
            acc.balance.sub(cost);
        }
    }

    /// Recharges every configured account for `elapsed` seconds (reference
    /// §6.4), which gives each a balance.
    pub(crate) fn recharge(&mut self, elapsed: f32) {
        for &a in self.configured.values() {
            let acc = &mut self.slab[a];
            if let Some(cfg) = acc.config.as_ref() {
                let mut running = [0u32; NUM_PRIORITIES];
                running.copy_from_slice(&acc.running_by_prio[..NUM_PRIORITIES]);
                cfg.recharge(&mut acc.balance, elapsed, &running);
                acc.balance_listed = true;
            }
        }
    }

    /// Counts a new request of the account.
    pub(crate) fn add_request(&mut self, a: AccountIdx) {
        self.slab[a].requests += 1;
    }

    /// Stops counting a request of the account.
    pub(crate) fn remove_request(&mut self, a: AccountIdx) {
        self.slab[a].requests -= 1;
    }

    /// A task of the account starts on worker `w` at `priority`.
    pub(crate) fn task_started(&mut self, a: AccountIdx, w: WorkerIdx, priority: u8) {
        let acc = &mut self.slab[a];
        acc.running_by_prio[priority as usize] += 1;
        acc.running.insert(w);
    }

    /// A task of the account at `priority` leaves worker `w`.
    pub(crate) fn task_stopped(&mut self, a: AccountIdx, w: WorkerIdx, priority: u8) {
        let acc = &mut self.slab[a];
        acc.running_by_prio[priority as usize] -= 1;
        acc.running.remove(&w);
    }

    /// A task of the account moves from level `old` to `new`.
    pub(crate) fn task_moved(&mut self, a: AccountIdx, old: u8, new: u8) {
        let acc = &mut self.slab[a];
        acc.running_by_prio[old as usize] -= 1;
        acc.running_by_prio[new as usize] += 1;
    }

    /// Checks the tables against the accounts; `requests` and `running`
    /// count each account's requests and its running tasks per level.
    #[cfg(any(test, debug_assertions))]
    pub(crate) fn check_invariants(
        &self,
        requests: &BTreeMap<AccountIdx, u32>,
        running: &BTreeMap<AccountIdx, [u32; LEVELS]>,
    ) {
        assert_eq!(self.ids.len(), self.slab.len(), "account index entries");
        let mut configured = 0;
        for (a, acc) in self.slab.iter() {
            assert_eq!(self.find(&acc.id), Some(a), "account {} by id", acc.id);
            let n = requests.get(&a).copied().unwrap_or(0);
            assert_eq!(acc.requests, n, "requests of account {}", acc.id);
            let by_prio = running.get(&a).copied().unwrap_or_default();
            assert_eq!(
                acc.running_by_prio, by_prio,
                "running of account {}",
                acc.id
            );
            let total: u32 = by_prio.iter().sum();
            assert_eq!(
                acc.running.len(),
                total as usize,
                "workers of account {}",
                acc.id
            );
            match acc.config {
                Some(_) => {
                    configured += 1;
                    assert_eq!(self.configured.get(&acc.id), Some(&a));
                }
                None => {
                    assert!(n > 0, "unconfigured account {} without requests", acc.id);
                    assert!(!acc.balance_listed, "balance of unconfigured {}", acc.id);
                }
            }
        }
        assert_eq!(self.configured.len(), configured, "configured accounts");
    }
}

impl Scheduler {
    /// The account with id `id`, created unconfigured (with its placements
    /// in the queue index) if unknown.
    pub(crate) fn account_named(&mut self, id: &str) -> AccountIdx {
        let (a, new) = self.accounts.get_or_create(id);
        if new {
            self.index.open_account(a);
        }
        a
    }

    /// Forgets account `a` (and its placements) if it is unconfigured and
    /// has no requests.
    pub(crate) fn maybe_free_account(&mut self, a: AccountIdx) {
        if self.accounts.maybe_free(a) {
            self.index.close_account(a);
        }
    }

    /// Sets or removes account `a`'s configuration, building or dropping
    /// its fanout groups when fanout starts or stops.
    pub(crate) fn set_account_config(&mut self, a: AccountIdx, config: Option<AccountConfig>) {
        let fanout = |c: &Option<AccountConfig>| c.as_ref().map_or(0, |c| c.max_fanout);
        let new = fanout(&config);
        let old = fanout(&self.accounts.set_config(a, config));
        if old == new {
            return;
        }
        self.fanout_changed(a, old, new);
    }

    pub(crate) fn max_fanout(&self, a: AccountIdx) -> i32 {
        self.accounts[a].max_fanout()
    }
}
