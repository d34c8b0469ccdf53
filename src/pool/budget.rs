//! Who gets a server connection when connections are scarce: each pool's own
//! line of waiting clients (first come, first served), and a global budget of
//! server connections shared by every pool, handed out fairly.
//!
//! Fairness, in the terms of PgBouncer's failure modes (one pool per tenant
//! starving others by name order, logins churning): a pool that needs a new
//! connection while the budget is spent joins a round-robin line of pools; a
//! freed connection slot goes to the pool at the head of that line, which
//! rejoins at the back if it still waits. A connection moves from one tenant
//! to another only when another pool is waiting: an idle one is taken at
//! once, and a busy pool gives one up at release only while it holds more
//! than its fair share (budget / pools in contention). Hot tenants keep what
//! is theirs; nobody waits behind the whole queue.
//!
//! Locks: a pool's state may be held while taking the budget's, never the
//! other way round; another pool's state is only ever `try_lock`ed.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::oneshot;

use super::backend::Backend;
use super::PoolKey;
use super::StatementCache;

/// What a waiting client is given.
pub enum Grant {
    /// A logged-in idle connection (boxed: the enum travels through channels).
    Backend(Box<Backend>),
    /// Permission to open a new connection, already counted.
    Slot,
}

/// An idle connection and when it became idle.
pub struct Idle {
    /// The connection.
    pub backend: Backend,
    /// Since when nobody used it.
    pub since: Instant,
}

/// One pool's mutable state.
pub struct PoolState {
    /// Largest number of connections (open + opening).
    pub size: usize,
    /// Connections that exist or are being opened, idle or in use.
    pub open: usize,
    /// Idle connections, most recently used last.
    pub idle: Vec<Idle>,
    /// Clients waiting, first come first served.
    pub waiters: VecDeque<Waiter>,
    /// The tenant's limits at the last checkout, for connections opened in
    /// the background (`min_pool_size`).
    pub limits: Option<super::PoolLimits>,
}

/// A client in a pool's line.
pub struct Waiter {
    /// When it joined the line.
    pub since: Instant,
    /// Where its grant goes; closed when it gave up.
    pub tx: oneshot::Sender<Grant>,
}

impl PoolState {
    /// Clients still waiting (those that gave up are skipped) and how long
    /// the first of them has waited.
    pub fn waiting(&self, now: Instant) -> (usize, std::time::Duration) {
        let mut live = self.waiters.iter().filter(|w| !w.tx.is_closed());
        match live.next() {
            Some(first) => (1 + live.count(), now.duration_since(first.since)),
            None => (0, std::time::Duration::ZERO),
        }
    }
}

/// One pool.
pub struct Pool {
    /// Which pool.
    pub key: PoolKey,
    /// Its state.
    pub state: Mutex<PoolState>,
    /// Its prepared statements.
    pub statements: Arc<StatementCache>,
    /// The budget it draws from.
    pub budget: Arc<Budget>,
    /// Its traffic counters.
    pub stats: crate::stats::PoolStats,
    /// Bumped by RECONNECT: a connection of an older generation is closed
    /// when it comes back instead of being reused.
    pub generation: std::sync::atomic::AtomicU64,
}

/// The global budget of server connections.
pub struct Budget {
    /// Largest number of server connections in all; 0 for no limit.
    limit: std::sync::atomic::AtomicUsize,
    state: Mutex<BudgetState>,
}

struct BudgetState {
    open: usize,
    /// Pools waiting for a slot, round robin.
    line: VecDeque<Arc<Pool>>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl Budget {
    /// A budget of `limit` connections (0: unlimited).
    pub fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget {
            limit: limit.into(),
            state: Mutex::new(BudgetState {
                open: 0,
                line: VecDeque::new(),
            }),
        })
    }

    /// Changes the limit (0: none).
    pub fn set_limit(&self, limit: usize) {
        self.limit
            .store(limit, std::sync::atomic::Ordering::Relaxed);
    }

    fn limit(&self) -> usize {
        self.limit.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Takes a slot if one is free.
    pub fn try_take(&self) -> bool {
        let limit = self.limit();
        let mut st = lock(&self.state);
        if limit == 0 || st.open < limit {
            st.open += 1;
            true
        } else {
            false
        }
    }

    /// Puts `pool` in the line for slots (once).
    pub fn wait_for_slot(&self, pool: &Arc<Pool>) {
        let mut st = lock(&self.state);
        if !st.line.iter().any(|p| Arc::ptr_eq(p, pool)) {
            st.line.push_back(Arc::clone(pool));
        }
    }

    /// Whether a pool other than `pool` waits for a slot, and the fair share
    /// of connections per pool while it does.
    fn contention(&self, pool: &Arc<Pool>) -> Option<usize> {
        let st = lock(&self.state);
        let others = st.line.iter().filter(|p| !Arc::ptr_eq(p, pool)).count();
        let limit = self.limit();
        (limit > 0 && others > 0).then(|| (limit / (others + 1)).max(1))
    }

    /// A slot was freed: it goes to the next pool in line that still has a
    /// waiting client, or back to the budget.
    pub fn hand_on(&self) {
        loop {
            let next = lock(&self.state).line.pop_front();
            let Some(pool) = next else {
                let mut st = lock(&self.state);
                st.open = st.open.saturating_sub(1);
                return;
            };
            let mut ps = lock(&pool.state);
            if ps.open >= ps.size {
                continue;
            }
            if grant(&mut ps, Grant::Slot).is_ok() {
                ps.open += 1;
                let still_waiting = !ps.waiters.is_empty() && ps.open < ps.size;
                drop(ps);
                if still_waiting {
                    self.wait_for_slot(&pool);
                }
                return;
            }
        }
    }

    /// Connections counted against the budget.
    pub fn open(&self) -> usize {
        lock(&self.state).open
    }
}

/// Gives `g` to the first client still waiting; hands it back if none is.
pub fn grant(state: &mut PoolState, mut g: Grant) -> Result<(), Grant> {
    while let Some(waiter) = state.waiters.pop_front() {
        match waiter.tx.send(g) {
            Ok(()) => return Ok(()),
            Err(back) => g = back,
        }
    }
    Err(g)
}

impl Pool {
    /// A connection comes back clean: to the next waiting client of this
    /// pool, to another pool if this one holds more than its fair share while
    /// others wait, or to the idle list.
    pub fn give_back(self: &Arc<Self>, backend: Backend) {
        if backend.generation != self.generation() {
            drop(backend);
            self.slot_freed();
            return;
        }
        let mut st = lock(&self.state);
        // Above the pool's size (reserve connections, or a size lowered by
        // RELOAD) and nobody of this pool waiting: close it.
        if st.open > st.size && st.waiting(Instant::now()).0 == 0 {
            st.open -= 1;
            drop(st);
            drop(backend);
            self.budget.hand_on();
            return;
        }
        if let Some(fair) = self.budget.contention(self) {
            if st.open > fair || st.waiters.is_empty() {
                st.open -= 1;
                let own_waiters = !st.waiters.is_empty();
                drop(st);
                drop(backend);
                if own_waiters {
                    self.budget.wait_for_slot(self);
                }
                self.budget.hand_on();
                return;
            }
        }
        if let Err(Grant::Backend(backend)) = grant(&mut st, Grant::Backend(Box::new(backend))) {
            st.idle.push(Idle {
                backend: *backend,
                since: Instant::now(),
            });
        }
    }

    /// A connection of this pool closed (broken, reset failed, or its login
    /// failed): its slot goes to this pool's next client, or on.
    pub fn slot_freed(self: &Arc<Self>) {
        let mut st = lock(&self.state);
        st.open = st.open.saturating_sub(1);
        let wanted = !st.waiters.is_empty() && st.open < st.size;
        if wanted && self.budget.contention(self).is_none() {
            if grant(&mut st, Grant::Slot).is_ok() {
                st.open += 1;
                return;
            }
        } else if wanted {
            // Others are waiting too: queue up with them, in turn.
            drop(st);
            self.budget.wait_for_slot(self);
            self.budget.hand_on();
            return;
        }
        drop(st);
        self.budget.hand_on();
    }

    /// Closes idle connections that are idle longer than `max_idle` (while
    /// more than `min` are open) or older than `max_age` (zero: no limit);
    /// returns how many.
    pub fn reap(
        self: &Arc<Self>,
        now: Instant,
        max_idle: std::time::Duration,
        max_age: std::time::Duration,
        min: usize,
    ) -> usize {
        let mut st = lock(&self.state);
        let before = st.idle.len();
        // Idle ones are closed down to `min` (oldest first); old ones always
        // (the warmer replaces them).
        let mut open = st.open;
        st.idle.retain(|i| {
            let idle_too_long =
                !max_idle.is_zero() && now.duration_since(i.since) >= max_idle && open > min;
            let too_old = !max_age.is_zero() && now.duration_since(i.backend.opened) >= max_age;
            let close = idle_too_long || too_old;
            open -= usize::from(close);
            !close
        });
        let closed = before - st.idle.len();
        st.open -= closed;
        drop(st);
        for _ in 0..closed {
            self.budget.hand_on();
        }
        closed
    }

    /// The current generation (see [`Pool::generation`]'s field).
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Closes every idle connection of this pool and passes their slots
    /// on; returns how many.
    pub fn close_idle(&self) -> usize {
        let idle = {
            let mut st = lock(&self.state);
            let idle = std::mem::take(&mut st.idle);
            st.open -= idle.len();
            idle
        };
        for _ in &idle {
            self.budget.hand_on();
        }
        idle.len()
    }

    /// Takes one idle connection away from this pool for another, if it has
    /// one and its state is not busy right now.
    pub fn donate_idle(&self) -> bool {
        let Ok(mut st) = self.state.try_lock() else {
            return false;
        };
        match st.idle.pop() {
            Some(_closed) => {
                st.open -= 1;
                true
            }
            None => false,
        }
    }
}
