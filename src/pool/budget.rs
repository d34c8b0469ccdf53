//! Who gets a server connection when connections are scarce: each pool's own
//! line of waiting clients (first come, first served), and the limits beyond
//! a pool's size (`caps`: in all, per database, per role), whose connections
//! are handed out fairly among the pools that wait for them.
//!
//! Fairness, in the terms of PgBouncer's failure modes (one pool per tenant
//! starving others by name order, logins churning): a pool that needs a new
//! connection while a limit holds it back joins a round-robin line of pools;
//! room freed under a limit goes to the first pool in that line that it
//! lets through, which rejoins at the back if it still waits. A connection
//! moves from one tenant to another only when another pool is waiting for
//! what it holds (the same limit): an idle one is taken at once, and a busy
//! pool gives one up at release only while it holds more than its fair
//! share (the limit / the pools waiting under it). Hot tenants keep what is
//! theirs; nobody waits behind the whole queue.
//!
//! Locks: a pool's state may be held while taking the budget's, never the
//! other way round, and no other pool's state is taken while one is held.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::oneshot;

use super::backend::Backend;
use super::caps::{Blocked, Counts, Holder, Limits};
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
    /// The role its connections log in as, counted against
    /// `max_user_connections`.
    pub role: String,
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

/// The server connections in all, per database and per role, against their
/// limits, and the pools waiting for one.
pub struct Budget {
    state: Mutex<BudgetState>,
}

struct BudgetState {
    limits: Limits,
    counts: Counts,
    /// Pools waiting for a connection that a limit holds back, round robin.
    line: VecDeque<Arc<Pool>>,
}

/// How hard a limit presses on a pool that gives a connection back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pressure {
    /// Nobody waits for what it holds.
    None,
    /// Pools it could make room for are waiting; it may keep this many.
    Share(usize),
    /// It holds more than a (lowered) limit allows.
    Over,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl BudgetState {
    fn blocked(&self, pool: &Pool) -> Blocked {
        self.counts.blocked(pool.holder(), self.limits)
    }

    /// Takes the first pool in line that a connection may be opened for.
    fn next_in_line(&mut self) -> Option<Arc<Pool>> {
        let at = self.line.iter().position(|p| !self.blocked(p).any())?;
        let pool = self.line.remove(at)?;
        self.counts.add(pool.holder());
        Some(pool)
    }
}

impl Budget {
    /// A budget with `limits`.
    pub fn new(limits: Limits) -> Arc<Budget> {
        Arc::new(Budget {
            state: Mutex::new(BudgetState {
                limits,
                counts: Counts::default(),
                line: VecDeque::new(),
            }),
        })
    }

    /// Changes the limits; pools that a raised limit lets through are served.
    pub fn set_limits(&self, limits: Limits) {
        lock(&self.state).limits = limits;
        self.serve();
    }

    /// Counts a new connection of `pool` if no limit holds it back.
    pub fn try_take(&self, pool: &Pool) -> bool {
        let mut st = lock(&self.state);
        if st.blocked(pool).any() {
            return false;
        }
        st.counts.add(pool.holder());
        true
    }

    /// As `try_take`, else puts `pool` in line, in one step: a connection
    /// closed meanwhile is handed to the line, so none is missed.
    pub fn take_or_queue(&self, pool: &Arc<Pool>) -> bool {
        let mut st = lock(&self.state);
        if !st.blocked(pool).any() {
            st.counts.add(pool.holder());
            return true;
        }
        if !st.line.iter().any(|p| Arc::ptr_eq(p, pool)) {
            st.line.push_back(Arc::clone(pool));
        }
        false
    }

    /// Puts `pool` in the line for connections (once).
    pub fn wait_for_slot(&self, pool: &Arc<Pool>) {
        let mut st = lock(&self.state);
        if !st.line.iter().any(|p| Arc::ptr_eq(p, pool)) {
            st.line.push_back(Arc::clone(pool));
        }
    }

    /// Which limits hold `pool` back now.
    pub fn blocked(&self, pool: &Pool) -> Blocked {
        lock(&self.state).blocked(pool)
    }

    /// Whether pools that one fewer connection of `pool` would make room
    /// for are waiting, and the fair share of each while they do: a limit
    /// divided by the pools that wait under it, this one included.
    pub fn pressure(&self, pool: &Arc<Pool>) -> Pressure {
        let st = lock(&self.state);
        let me = pool.holder();
        if st.counts.over(me, st.limits) {
            return Pressure::Over;
        }
        let (mut total, mut database, mut user) = (0, 0, 0);
        for other in st.line.iter().filter(|p| !Arc::ptr_eq(p, pool)) {
            let taker = other.holder();
            if st.blocked(other).relieved_by(taker, me) {
                total += 1;
                database += usize::from(taker.database == me.database);
                user += usize::from(taker.user == me.user);
            }
        }
        if total == 0 {
            return Pressure::None;
        }
        let share = |limit: usize, n: usize| (limit > 0 && n > 0).then(|| (limit / (n + 1)).max(1));
        let limits = st.limits;
        let fair = [
            share(limits.total, total),
            share(limits.per_database, database),
            share(limits.per_user, user),
        ];
        Pressure::Share(fair.into_iter().flatten().min().unwrap_or(1))
    }

    /// A connection of `from` closed: it no longer counts, and the room it
    /// leaves goes to the first pool in line that may use it.
    pub fn hand_on(&self, from: &Pool) {
        lock(&self.state).counts.remove(from.holder());
        self.serve();
    }

    /// Grants new connections to pools in line, in turn, while limits allow;
    /// a pool whose clients have all gone leaves the line.
    fn serve(&self) {
        loop {
            let Some(pool) = lock(&self.state).next_in_line() else {
                return;
            };
            let mut ps = lock(&pool.state);
            if ps.open < ps.size && grant(&mut ps, Grant::Slot).is_ok() {
                ps.open += 1;
                if !ps.waiters.is_empty() && ps.open < ps.size {
                    // Back of the line, while still holding the pool's lock.
                    self.wait_for_slot(&pool);
                }
                continue;
            }
            drop(ps);
            lock(&self.state).counts.remove(pool.holder());
        }
    }

    /// Connections counted in all.
    pub fn open(&self) -> usize {
        lock(&self.state).counts.total()
    }

    /// Connections counted for `database`, and for `user`.
    pub fn open_of(&self, database: &str, user: &str) -> (usize, usize) {
        let st = lock(&self.state);
        (st.counts.of_database(database), st.counts.of_user(user))
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
    /// What its connections count against.
    pub fn holder(&self) -> Holder<'_> {
        Holder {
            database: &self.key.database,
            user: &self.role,
        }
    }

    /// A connection comes back clean: to the next waiting client of this
    /// pool, to another pool if this one holds more than its fair share while
    /// others wait (or more than a lowered limit allows), or to the idle list.
    pub fn give_back(self: &Arc<Self>, backend: Backend) {
        if backend.generation != self.generation() {
            drop(backend);
            self.slot_freed();
            return;
        }
        let mut st = lock(&self.state);
        // Above the pool's size (reserve connections, or a size lowered by
        // RELOAD) and nobody of this pool waiting: close it.
        let close = match self.budget.pressure(self) {
            _ if st.open > st.size && st.waiting(Instant::now()).0 == 0 => true,
            Pressure::Over => true,
            Pressure::Share(fair) => st.open > fair || st.waiters.is_empty(),
            Pressure::None => false,
        };
        if close {
            st.open -= 1;
            if !st.waiters.is_empty() {
                // Its own clients wait in turn with the others.
                self.budget.wait_for_slot(self);
            }
            drop(st);
            drop(backend);
            self.budget.hand_on(self);
            return;
        }
        // Boxed only to travel to a waiting client: with none, it goes
        // straight to the idle list (no allocation per release).
        let backend = if st.waiters.is_empty() {
            backend
        } else {
            match grant(&mut st, Grant::Backend(Box::new(backend))) {
                Err(Grant::Backend(backend)) => *backend,
                _ => return,
            }
        };
        st.idle.push(Idle {
            backend,
            since: Instant::now(),
        });
    }

    /// A connection of this pool closed (broken, reset failed, or its login
    /// failed): its slot goes to this pool's next client, or on.
    pub fn slot_freed(self: &Arc<Self>) {
        let mut st = lock(&self.state);
        st.open = st.open.saturating_sub(1);
        let wanted = !st.waiters.is_empty() && st.open < st.size;
        if wanted {
            if self.budget.pressure(self) == Pressure::None {
                if grant(&mut st, Grant::Slot).is_ok() {
                    st.open += 1;
                    return;
                }
            } else {
                // Others are waiting too (or a limit was lowered): queue up
                // with them, in turn.
                self.budget.wait_for_slot(self);
            }
        }
        drop(st);
        self.budget.hand_on(self);
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
        // A list that (mostly) emptied gives its room back: connections are
        // large, and the pools of idle tenants are the many.
        if st.idle.len() * 2 < st.idle.capacity() {
            st.idle.shrink_to_fit();
        }
        drop(st);
        for _ in 0..closed {
            self.budget.hand_on(self);
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
        let closed = idle.len();
        drop(idle);
        for _ in 0..closed {
            self.budget.hand_on(self);
        }
        closed
    }

    /// Closes one idle connection, if there is one, so that another pool
    /// may open its own; the caller hands its slot on.
    pub fn close_one_idle(&self) -> bool {
        let mut st = lock(&self.state);
        match st.idle.pop() {
            Some(_closed) => {
                st.open -= 1;
                true
            }
            None => false,
        }
    }
}
