//! Backend pools, one per (tenant, database, access level). Every connection
//! of a pool logs in as the tenant's own role with the tenant's `search_path`
//! and `app.current_tenant` in its startup packet, so they are the session's
//! reset values: `RESET ALL` and `DISCARD ALL` bring them back, never remove them.
//! In passthrough mode (tenant features off) a pool is a (database, user)
//! pair, as in PgBouncer, and its connections log in as that user with the
//! credential its clients brought, with nothing added.
//!
//! Hand-rolled rather than bb8: the pool hands out raw sockets that the relay
//! owns for a whole session or transaction, waits are strictly first come
//! first served with a timeout, connections are shared fairly across pools
//! under one global budget (`budget`), and releasing may run an async reset.

pub mod backend;
pub mod budget;
pub mod caps;
pub mod control;
pub mod statements;

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::oneshot;
use tracing::debug;

pub use budget::Pool;
use budget::{grant, lock, Budget, Grant, PoolState, Waiter};

use crate::auth::Credential;
use crate::config::{seconds, BackendConfig, PoolConfig};
use crate::protocol::SqlState;
use crate::tenant::{role_password, AccessLevel, TenantId};
use crate::tls::ServerTls;

pub use backend::{send_cancel, Backend, BackendAddr, BackendError};

pub use statements::{PreparedSet, Statement, StatementCache};

/// How long the reset query may take before the connection is closed instead.
const RESET_TIMEOUT: Duration = Duration::from_secs(10);

/// The tenants of remembered server pids, one copy each: a tenant's
/// connections come and go, and each one opened is remembered.
static PID_TENANTS: crate::intern::Interner<TenantId> = crate::intern::Interner::new();

/// Bound on remembered server pids (see `Pools::pids`).
const MAX_REMEMBERED_PIDS: usize = 100_000;

/// Identifies a pool.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The database clients asked for (a service database, or in
    /// passthrough a `backend.databases` entry).
    pub database: String,
    /// Whom its connections log in as.
    pub owner: PoolOwner,
}

/// Pool keys held by many (clients, stats), one copy of each.
static SHARED_KEYS: crate::intern::Interner<PoolKey> = crate::intern::Interner::new();

impl PoolKey {
    /// The shared copy of this key: a client or a stats record holds a
    /// pointer, not its own two strings.
    pub fn shared(&self) -> Arc<PoolKey> {
        SHARED_KEYS.of(self)
    }
}

/// Whom a pool's connections log in as.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PoolOwner {
    /// A tenant's role, `tenant_<id>_rw` or `_ro`.
    Tenant {
        /// The tenant every connection belongs to.
        tenant: TenantId,
        /// Read-write or read-only role.
        access: AccessLevel,
    },
    /// Passthrough: the PostgreSQL user the clients logged in as.
    User(String),
}

impl PoolKey {
    /// A tenant pool.
    pub fn for_tenant(tenant: TenantId, database: String, access: AccessLevel) -> PoolKey {
        PoolKey {
            database,
            owner: PoolOwner::Tenant { tenant, access },
        }
    }

    /// A passthrough pool: (database, user), as PgBouncer's.
    pub fn for_user(database: String, user: String) -> PoolKey {
        PoolKey {
            database,
            owner: PoolOwner::User(user),
        }
    }

    /// The tenant, for a tenant pool.
    pub fn tenant(&self) -> Option<&TenantId> {
        match &self.owner {
            PoolOwner::Tenant { tenant, .. } => Some(tenant),
            PoolOwner::User(_) => None,
        }
    }

    /// The access level: a tenant pool's, read-write for a passthrough pool
    /// (PostgreSQL's grants decide).
    pub fn access(&self) -> AccessLevel {
        match &self.owner {
            PoolOwner::Tenant { access, .. } => *access,
            PoolOwner::User(_) => AccessLevel::ReadWrite,
        }
    }

    /// The PostgreSQL role its connections log in as (SHOW POOLS' `user`).
    pub fn user(&self) -> String {
        match &self.owner {
            PoolOwner::Tenant { tenant, access } => tenant.role(*access),
            PoolOwner::User(user) => user.clone(),
        }
    }
}

/// What a client's checkouts need besides the pool key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolLimits {
    /// The tenant's own size for its pools; `None` for `pool.default_pool_size`.
    pub size: Option<usize>,
    /// `statement_timeout` for the tenant's new connections, set in their
    /// startup packet (so `RESET ALL` keeps it), e.g. `30s`.
    pub statement_timeout: Option<String>,
    /// Passthrough: what new connections log in with, from the client's
    /// `auth_file` secret; `None` (no password) for tenant pools, which
    /// derive their role's password.
    pub credential: Option<Arc<Credential>>,
    /// Passthrough: the server database, when it is not `PoolKey::database`.
    pub server_database: Option<String>,
    /// A dedicated tenant's cluster; `None` for `[backend]`.
    pub server: Option<Arc<BackendAddr>>,
}

/// By the plain fields only (a credential or server address rarely tells
/// two limits apart): equal limits hash alike, as sharing them needs.
impl std::hash::Hash for PoolLimits {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.size.hash(state);
        self.statement_timeout.hash(state);
        self.server_database.hash(state);
    }
}

/// One pool as seen at one moment.
#[derive(Debug, Clone)]
pub struct PoolView {
    /// Which pool.
    pub key: PoolKey,
    /// Its current size limit.
    pub size: usize,
    /// Server connections open or opening, idle or in use.
    pub open: usize,
    /// Of those, idle ones.
    pub idle: usize,
    /// Clients waiting for a connection.
    pub waiting: usize,
    /// How long the first waiting client has waited.
    pub max_wait: Duration,
    /// Its counters.
    pub stats: crate::stats::StatsSnapshot,
    /// Its latency histograms.
    pub latencies: crate::stats::Latencies,
}

/// Why no backend could be handed out.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No connection came free within `query_wait_timeout`.
    #[error("no server connection available within query_wait_timeout")]
    WaitTimeout,
    /// Opening a connection took longer than `server_connect_timeout`.
    #[error("server connection timed out")]
    ConnectTimeout,
    /// Opening or logging in failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl PoolError {
    /// The SQLSTATE the client gets.
    pub fn sqlstate(&self) -> SqlState {
        match self {
            PoolError::WaitTimeout => SqlState::TOO_MANY_CONNECTIONS,
            PoolError::ConnectTimeout | PoolError::Backend(_) => {
                SqlState::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION
            }
        }
    }
}

/// All pools of this process.
pub struct Pools {
    pools: crate::HotMap<PoolKey, Arc<Pool>>,
    /// TLS toward the servers, when `server_tls_sslmode` asks for it.
    server_tls: Option<Arc<ServerTls>>,
    /// The global budget of server connections.
    budget: Arc<Budget>,
    /// Which tenant each server process this proxy opened served, kept after
    /// it closes (until its pid is reused), to attribute notifications whose
    /// sender has already gone.
    pids: DashMap<i32, Arc<TenantId>>,
    backend: BackendConfig,
    /// The pool settings in force; `RELOAD` swaps them.
    config: arc_swap::ArcSwap<PoolConfig>,
    /// Pause, disable and the open server connections (the admin console's).
    controls: control::Controls,
}

/// What a checkout gets at once.
enum Admission {
    /// A connection, or a slot to open one.
    Now(Grant),
    /// A place in the pool's line; `queued`: the pool also waits in the
    /// budget's line (a limit beyond its size holds it back).
    Wait {
        rx: oneshot::Receiver<Grant>,
        queued: bool,
    },
}

/// A connection checked out of a pool. Dropping it closes the connection;
/// [`PooledBackend::release`] cleans it and gives it back.
pub struct PooledBackend {
    backend: Option<Backend>,
    pool: Arc<Pool>,
}

impl Pools {
    /// Empty pools for a backend cluster.
    pub fn new(
        backend: BackendConfig,
        config: PoolConfig,
        server_tls: Option<Arc<ServerTls>>,
    ) -> Pools {
        Pools {
            pools: Default::default(),
            server_tls,
            budget: Budget::new(caps::Limits::of(&config)),
            pids: DashMap::new(),
            backend,
            config: arc_swap::ArcSwap::from_pointee(config),
            controls: Default::default(),
        }
    }

    /// Hands out a connection of `key`'s pool, waiting in line (first come,
    /// first served, up to `query_wait_timeout`) when all `size` are busy or
    /// a limit beyond the pool's size (`max_server_connections`,
    /// `max_db_connections`, `max_user_connections`) is reached.
    pub async fn checkout(
        &self,
        key: &PoolKey,
        limits: &PoolLimits,
    ) -> Result<PooledBackend, PoolError> {
        let pool = self.pool(key);
        // Timed only once it may have to wait: a connection handed over at
        // once waited 0 µs, and most checkouts read no clock.
        let mut asked = self.controls.is_paused(&key.database).then(Instant::now);
        // A paused database's clients wait here, outside query_wait_timeout.
        self.controls.wait_resumed(&key.database).await;
        let config = self.config.load();
        let (admission, dead) = {
            let mut st = lock(&pool.state);
            st.size = limits.size.unwrap_or(config.default_pool_size);
            if st.limits.as_ref() != Some(limits) {
                st.limits = Some(limits.clone());
            }
            self.immediate(&pool, &mut st)
        };
        for _ in 0..dead {
            pool.budget.hand_on(&pool);
        }
        let grant = match admission {
            Admission::Now(grant) => grant,
            Admission::Wait { rx, queued } => {
                asked.get_or_insert_with(Instant::now);
                if queued {
                    self.free_idle_for(&pool);
                }
                match self.wait(&pool, rx, &config).await {
                    Some(grant) => grant,
                    None => {
                        pool.stats.checkout_errors.fetch_add(1, Relaxed);
                        return Err(PoolError::WaitTimeout);
                    }
                }
            }
        };
        if matches!(grant, Grant::Slot) {
            // Opening a connection counts as waiting for one.
            asked.get_or_insert_with(Instant::now);
        }
        let backend = match grant {
            Grant::Backend(b) => *b,
            // Boxed: opening is rare and its future large; inline, it would
            // make every checkout's future (moved once per transaction) as large.
            Grant::Slot => {
                match Box::pin(self.open(key, limits, seconds(config.server_connect_timeout))).await
                {
                    Ok(mut b) => {
                        b.generation = pool.generation();
                        b
                    }
                    Err(e) => {
                        pool.slot_freed();
                        pool.stats.checkout_errors.fetch_add(1, Relaxed);
                        return Err(e);
                    }
                }
            }
        };
        pool.stats
            .assigned(asked.map_or(0, |t| t.elapsed().as_micros() as u64));
        Ok(PooledBackend {
            backend: Some(backend),
            pool,
        })
    }

    /// Waits in line for a grant, up to `query_wait_timeout`. After
    /// `reserve_pool_timeout` a waiting client may open one of
    /// `reserve_pool_size` connections beyond the pool's size (PgBouncer's
    /// reserve pool), budget permitting; they close again when released
    /// while nobody waits. `None`: the wait timed out.
    async fn wait(
        &self,
        pool: &Arc<Pool>,
        mut rx: oneshot::Receiver<Grant>,
        config: &PoolConfig,
    ) -> Option<Grant> {
        let deadline = tokio::time::Instant::now() + seconds(config.query_wait_timeout);
        if config.reserve_pool_size > 0 {
            let reserve_at = tokio::time::Instant::now() + seconds(config.reserve_pool_timeout);
            if reserve_at < deadline {
                if let Ok(got) = tokio::time::timeout_at(reserve_at, &mut rx).await {
                    return got.ok();
                }
                let mut st = lock(&pool.state);
                // Grants are sent under this lock: one may have come meanwhile.
                if let Ok(grant) = rx.try_recv() {
                    return Some(grant);
                }
                if st.open < st.size + config.reserve_pool_size && pool.budget.try_take(pool) {
                    st.open += 1;
                    // Leaving the line: the sender left behind is skipped as closed.
                    drop(rx);
                    return Some(Grant::Slot);
                }
            }
        }
        tokio::time::timeout_at(deadline, rx).await.ok()?.ok()
    }

    /// What can be had without waiting: an idle connection or a free slot;
    /// else a place in this pool's line, and in the budget's line of pools
    /// when a limit beyond the pool's size holds it back (`queued`). Also
    /// says how many dead idle connections it dropped, whose slots the
    /// caller hands on once the pool's lock is released.
    fn immediate(&self, pool: &Arc<Pool>, st: &mut PoolState) -> (Admission, usize) {
        let mut dead = 0;
        while let Some(idle) = st.idle.pop() {
            if idle.backend.is_alive() {
                return (Admission::Now(Grant::Backend(Box::new(idle.backend))), dead);
            }
            debug!(pool = %pool.key.user(), "dropping dead idle server connection");
            st.open -= 1;
            dead += 1;
        }
        if st.open < st.size && st.waiters.is_empty() && pool.budget.try_take(pool) {
            st.open += 1;
            return (Admission::Now(Grant::Slot), dead);
        }
        let (tx, rx) = oneshot::channel();
        st.waiters.push_back(Waiter {
            since: Instant::now(),
            tx,
        });
        if st.open >= st.size {
            // One of this pool's own connections comes back to it.
            return (Admission::Wait { rx, queued: false }, dead);
        }
        let queued = !pool.budget.take_or_queue(pool);
        if !queued {
            st.open += 1;
            // The first client in line gets it (this one at the latest, whose
            // receiver is alive), so the grant cannot come back.
            let _ = grant(st, Grant::Slot);
        }
        (Admission::Wait { rx, queued }, dead)
    }

    /// For a pool that a limit holds back: closes an idle connection of
    /// another pool under the same limits, so that the room goes to the
    /// line of waiting pools. Called without any pool's lock held, after
    /// the pool joined the line, so an idle connection given back before
    /// is found here and one given back after sees the pool waiting.
    fn free_idle_for(&self, pool: &Arc<Pool>) {
        let blocked = pool.budget.blocked(pool);
        let taker = pool.holder();
        let donors: Vec<Arc<Pool>> = self
            .pools
            .iter()
            .filter(|p| !Arc::ptr_eq(p.value(), pool))
            .filter(|p| blocked.relieved_by(taker, p.value().holder()))
            .map(|p| Arc::clone(p.value()))
            .collect();
        if let Some(donor) = donors.into_iter().find(|d| d.close_one_idle()) {
            donor.budget.hand_on(&donor);
        }
    }

    /// The pool for `key`, created on first use.
    fn pool(&self, key: &PoolKey) -> Arc<Pool> {
        if let Some(p) = self.pools.get(key) {
            return Arc::clone(p.value());
        }
        Arc::clone(
            self.pools
                .entry(key.clone())
                .or_insert_with(|| {
                    Arc::new(Pool {
                        key: key.clone(),
                        role: key.user(),
                        state: Mutex::new(PoolState {
                            size: 1,
                            open: 0,
                            idle: Vec::new(),
                            waiters: VecDeque::new(),
                            limits: None,
                        }),
                        statements: Arc::default(),
                        budget: Arc::clone(&self.budget),
                        stats: Default::default(),
                        generation: Default::default(),
                    })
                })
                .value(),
        )
    }

    /// Closes connections idle longer than `server_idle_timeout` or older
    /// than `server_lifetime`, so idle tenants' pools shrink to nothing.
    pub fn reap(&self) -> usize {
        let now = Instant::now();
        let config = self.config.load();
        let idle = seconds(config.server_idle_timeout);
        let age = seconds(config.server_lifetime);
        self.pools
            .iter()
            .map(|p| p.value().reap(now, idle, age, config.min_pool_size))
            .sum()
    }

    /// Opens connections in the background for every pool below
    /// `min_pool_size` (or its size, if smaller), as far as the global
    /// budget has free slots and the pool's database is not paused; returns
    /// how many it opened. Pools only exist once a client used them.
    pub async fn warm(&self) -> usize {
        let config = self.config.load_full();
        if config.min_pool_size == 0 {
            return 0;
        }
        let pools: Vec<Arc<Pool>> = self.pools.iter().map(|p| Arc::clone(p.value())).collect();
        let mut opened = 0;
        for pool in pools {
            while !self.controls.is_paused(&pool.key.database) {
                let limits = {
                    let mut st = lock(&pool.state);
                    let Some(limits) = st.limits.clone() else {
                        break;
                    };
                    if st.open >= config.min_pool_size.min(st.size) || !pool.budget.try_take(&pool)
                    {
                        break;
                    }
                    st.open += 1;
                    limits
                };
                let connect = seconds(config.server_connect_timeout);
                match self.open(&pool.key, &limits, connect).await {
                    Ok(mut backend) => {
                        backend.generation = pool.generation();
                        pool.give_back(backend);
                        opened += 1;
                    }
                    Err(e) => {
                        pool.slot_freed();
                        debug!(pool = ?pool.key, error = %e, "min_pool_size: could not open a connection");
                        break;
                    }
                }
            }
        }
        opened
    }

    /// Puts new pool settings in force: sizes and timeouts apply from the
    /// next checkout, the limits beyond pool sizes at once (connections
    /// above a lowered limit close as they come back; clients a raised one
    /// lets through are served).
    pub fn set_config(&self, config: PoolConfig) {
        self.budget.set_limits(caps::Limits::of(&config));
        self.config.store(Arc::new(config));
    }

    /// Server connections open (or opening) in all pools.
    pub fn server_connections(&self) -> usize {
        self.budget.open()
    }

    /// Server connections open (or opening) to `database` in all its pools,
    /// and logged in as `user` in all databases (as `max_db_connections`
    /// and `max_user_connections` count them).
    pub fn server_connections_of(&self, database: &str, user: &str) -> (usize, usize) {
        self.budget.open_of(database, user)
    }

    async fn open(
        &self,
        key: &PoolKey,
        limits: &PoolLimits,
        limit: Duration,
    ) -> Result<Backend, PoolError> {
        let addr = match &limits.server {
            Some(addr) => Arc::clone(addr),
            None => Arc::new(BackendAddr {
                host: self.backend.host.clone(),
                port: self.backend.port,
            }),
        };
        let connect = async {
            match &key.owner {
                PoolOwner::Tenant { tenant, access } => {
                    self.open_tenant(&addr, tenant, *access, &key.database, limits)
                        .await
                }
                PoolOwner::User(user) => {
                    let database = limits.server_database.as_deref().unwrap_or(&key.database);
                    let startup = [("user", user.as_str()), ("database", database)];
                    let tls = self.server_tls.as_deref();
                    let credential = limits.credential.as_deref().unwrap_or(&Credential::None);
                    Backend::connect(&addr, tls, &startup, credential).await
                }
            }
        };
        let mut backend = tokio::time::timeout(limit, connect)
            .await
            .map_err(|_| PoolError::ConnectTimeout)?
            .map_err(PoolError::from)?;
        if self.pids.len() >= MAX_REMEMBERED_PIDS {
            self.pids.clear();
        }
        if let Some(tenant) = key.tenant() {
            self.pids.insert(backend.key.0, PID_TENANTS.of(tenant));
        }
        backend.registration = Some(self.controls.register(control::ServerInfo {
            pool: key.clone(),
            pid: backend.key.0,
            host: addr.host.clone(),
            port: addr.port,
            connected: std::time::SystemTime::now(),
        }));
        Ok(backend)
    }

    /// Logs in as a tenant's role, its `search_path` and `app.current_tenant`
    /// (and `statement_timeout`) in the startup packet.
    async fn open_tenant(
        &self,
        addr: &Arc<BackendAddr>,
        tenant: &TenantId,
        access: AccessLevel,
        database: &str,
        limits: &PoolLimits,
    ) -> Result<Backend, BackendError> {
        let role = tenant.role(access);
        let password = Credential::Password(role_password(&self.backend.tenant_role_secret, &role));
        let mut search_path = vec![tenant.schema()];
        search_path.extend(self.backend.search_path_tail.iter().cloned());
        // `\ ` is an escaped space inside one option, so SHOW search_path
        // reads "tenant_x, commons, public" as if set with SET.
        let mut options = format!(
            "-c search_path={} -c app.current_tenant={}",
            search_path.join(",\\ "),
            tenant
        );
        if let Some(timeout) = &limits.statement_timeout {
            options.push_str(&format!(" -c statement_timeout={timeout}"));
        }
        let startup = [
            ("user", role.as_str()),
            ("database", database),
            ("options", options.as_str()),
        ];
        Backend::connect(addr, self.server_tls.as_deref(), &startup, &password).await
    }

    /// Every pool's state and counters, for the admin console and metrics.
    pub fn views(&self) -> Vec<PoolView> {
        let now = Instant::now();
        self.pools
            .iter()
            .map(|p| {
                let pool = p.value();
                let st = lock(&pool.state);
                let (waiting, max_wait) = st.waiting(now);
                PoolView {
                    key: pool.key.clone(),
                    size: st.size,
                    open: st.open,
                    idle: st.idle.len(),
                    waiting,
                    max_wait,
                    stats: pool.stats.snapshot(),
                    latencies: pool.stats.latencies(),
                }
            })
            .collect()
    }

    /// The tenant whose pool last opened server process `pid`, if this proxy did.
    pub fn tenant_of_pid(&self, pid: i32) -> Option<TenantId> {
        self.pids.get(&pid).map(|t| TenantId::clone(&t))
    }

    /// Number of pools.
    pub fn len(&self) -> usize {
        self.pools.len()
    }

    /// True when no pool exists yet.
    pub fn is_empty(&self) -> bool {
        self.pools.is_empty()
    }
}

impl PooledBackend {
    /// The connection.
    pub fn backend(&mut self) -> &mut Backend {
        match self.backend.as_mut() {
            Some(b) => b,
            None => unreachable!("a PooledBackend holds its connection until release or drop"),
        }
    }

    /// The pool it came from (its counters, its key).
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// The pool's prepared-statement cache.
    pub fn statements(&self) -> &Arc<StatementCache> {
        &self.pool.statements
    }

    /// Returns the connection to its pool as it is, for transaction pooling:
    /// the caller has seen it idle (ReadyForQuery `I`, nothing owed).
    pub fn release_as_is(mut self) {
        if let Some(backend) = self.backend.take() {
            self.pool.give_back(backend);
        }
    }

    /// Cleans the connection with `reset_query` and returns it to its pool;
    /// a connection that fails the reset is closed instead.
    pub async fn release(mut self, reset_query: &str) {
        let Some(mut backend) = self.backend.take() else {
            return;
        };
        let reset = tokio::time::timeout(RESET_TIMEOUT, backend.simple_query(reset_query)).await;
        match reset {
            Ok(Ok(b'I')) => {
                // DISCARD ALL / DEALLOCATE ALL drop every server statement.
                backend.prepared.clear();
                backend.applied.clear();
                backend.settled_for = None;
                self.pool.give_back(backend);
            }
            Ok(other) => {
                debug!(pool = %self.pool.key.user(), result = ?other, "server reset failed; closing");
                backend.close().await;
                self.pool.slot_freed();
            }
            Err(_) => {
                debug!(pool = %self.pool.key.user(), "server reset timed out; closing");
                self.pool.slot_freed();
            }
        }
    }
}

impl Drop for PooledBackend {
    /// A connection not given back is closed, and its slot passed on.
    fn drop(&mut self) {
        if self.backend.take().is_some() {
            self.pool.slot_freed();
        }
    }
}
