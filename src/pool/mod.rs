//! Backend pools, one per (tenant, database, access level). Every connection
//! of a pool logs in as the tenant's own role with the tenant's `search_path`
//! and `app.current_tenant` in its startup packet, so they are the session's
//! reset values: `RESET ALL` and `DISCARD ALL` bring them back, never remove them.
//!
//! Hand-rolled rather than bb8: the pool hands out raw sockets that the relay
//! owns for a whole session, waits are strictly FIFO (tokio's `Semaphore` is
//! fair) with a timeout, and releasing runs an async reset first.

pub mod backend;
pub mod statements;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::debug;

use crate::config::{seconds, BackendConfig, PoolConfig};
use crate::protocol::SqlState;
use crate::tenant::{role_password, AccessLevel, TenantId};

pub use backend::{send_cancel, Backend, BackendAddr, BackendError};
pub use statements::{PreparedSet, Statement, StatementCache};

/// How long the reset query may take before the connection is closed instead.
const RESET_TIMEOUT: Duration = Duration::from_secs(10);

/// Bound on remembered server pids (see `Pools::pids`).
const MAX_REMEMBERED_PIDS: usize = 100_000;

/// Identifies a pool.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The tenant every connection belongs to.
    pub tenant: TenantId,
    /// The service database.
    pub database: String,
    /// Read-write or read-only role.
    pub access: AccessLevel,
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

/// One pool's state.
struct Pool {
    key: PoolKey,
    /// One permit per connection the pool may have; waiters queue FIFO here.
    permits: Arc<Semaphore>,
    /// Current size, to grow or shrink when the tenant's setting changes.
    size: AtomicUsize,
    /// Clean, logged-in connections nobody uses.
    idle: Mutex<Vec<Backend>>,
    /// Server-side prepared statements of this pool (transaction pooling).
    statements: Arc<StatementCache>,
}

/// All pools of this process.
pub struct Pools {
    pools: DashMap<PoolKey, Arc<Pool>>,
    /// Which tenant each server process this proxy opened served, kept after
    /// it closes (until its pid is reused), to attribute notifications whose
    /// sender has already gone.
    pids: DashMap<i32, TenantId>,
    backend: BackendConfig,
    config: PoolConfig,
}

/// A connection checked out of a pool. Dropping it closes the connection;
/// [`PooledBackend::release`] cleans it and gives it back.
pub struct PooledBackend {
    backend: Option<Backend>,
    pool: Arc<Pool>,
    _permit: OwnedSemaphorePermit,
}

impl Pools {
    /// Empty pools for a backend cluster.
    pub fn new(backend: BackendConfig, config: PoolConfig) -> Pools {
        Pools {
            pools: DashMap::new(),
            pids: DashMap::new(),
            backend,
            config,
        }
    }

    /// Hands out a connection of `key`'s pool, waiting in line if all `size`
    /// connections are busy.
    pub async fn checkout(&self, key: &PoolKey, size: usize) -> Result<PooledBackend, PoolError> {
        let pool = self.pool(key, size);
        let wait = seconds(self.config.query_wait_timeout);
        let permit = tokio::time::timeout(wait, Arc::clone(&pool.permits).acquire_owned())
            .await
            .map_err(|_| PoolError::WaitTimeout)?
            .map_err(|_| PoolError::WaitTimeout)?;
        loop {
            let candidate = pool.idle.lock().ok().and_then(|mut idle| idle.pop());
            match candidate {
                Some(b) if b.is_alive() => {
                    return Ok(PooledBackend {
                        backend: Some(b),
                        pool,
                        _permit: permit,
                    })
                }
                Some(_) => debug!(tenant = %key.tenant, "dropping dead idle server connection"),
                None => break,
            }
        }
        let backend = self
            .open(key, seconds(self.config.server_connect_timeout))
            .await?;
        Ok(PooledBackend {
            backend: Some(backend),
            pool,
            _permit: permit,
        })
    }

    /// The pool for `key`, created on first use, resized if `size` changed.
    fn pool(&self, key: &PoolKey, size: usize) -> Arc<Pool> {
        let pool = Arc::clone(
            self.pools
                .entry(key.clone())
                .or_insert_with(|| {
                    Arc::new(Pool {
                        key: key.clone(),
                        permits: Arc::new(Semaphore::new(size)),
                        size: AtomicUsize::new(size),
                        idle: Mutex::new(Vec::new()),
                        statements: Arc::default(),
                    })
                })
                .value(),
        );
        let current = pool.size.load(Ordering::Acquire);
        if size > current
            && pool
                .size
                .compare_exchange(current, size, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            pool.permits.add_permits(size - current);
        } else if size < current {
            // Shrinks by the permits free right now; the rest as they come back.
            let forgotten = pool.permits.forget_permits(current - size);
            pool.size.fetch_sub(forgotten, Ordering::AcqRel);
        }
        pool
    }

    async fn open(&self, key: &PoolKey, limit: Duration) -> Result<Backend, PoolError> {
        let role = key.tenant.role(key.access);
        let password = role_password(&self.backend.tenant_role_secret, &role);
        let mut search_path = vec![key.tenant.schema()];
        search_path.extend(self.backend.search_path_tail.iter().cloned());
        // `\ ` is an escaped space inside one option, so SHOW search_path
        // reads "tenant_x, commons, public" as if set with SET.
        let options = format!(
            "-c search_path={} -c app.current_tenant={}",
            search_path.join(",\\ "),
            key.tenant
        );
        let addr = BackendAddr {
            host: self.backend.host.clone(),
            port: self.backend.port,
        };
        let startup = [
            ("user", role.as_str()),
            ("database", key.database.as_str()),
            ("options", options.as_str()),
        ];
        let backend = tokio::time::timeout(limit, Backend::connect(&addr, &startup, &password))
            .await
            .map_err(|_| PoolError::ConnectTimeout)?
            .map_err(PoolError::from)?;
        if self.pids.len() >= MAX_REMEMBERED_PIDS {
            self.pids.clear();
        }
        self.pids.insert(backend.key.0, key.tenant.clone());
        Ok(backend)
    }

    /// The tenant whose pool last opened server process `pid`, if this proxy did.
    pub fn tenant_of_pid(&self, pid: i32) -> Option<TenantId> {
        self.pids.get(&pid).map(|t| t.clone())
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

    /// The pool's prepared-statement cache.
    pub fn statements(&self) -> &Arc<StatementCache> {
        &self.pool.statements
    }

    /// Returns the connection to its pool as it is, for transaction pooling:
    /// the caller has seen it idle (ReadyForQuery `I`, nothing owed).
    pub fn release_as_is(mut self) {
        if let Some(backend) = self.backend.take() {
            if let Ok(mut idle) = self.pool.idle.lock() {
                idle.push(backend);
            }
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
                if let Ok(mut idle) = self.pool.idle.lock() {
                    idle.push(backend);
                }
            }
            Ok(other) => {
                debug!(tenant = %self.pool.key.tenant, result = ?other, "server reset failed; closing");
                backend.close().await;
            }
            Err(_) => debug!(tenant = %self.pool.key.tenant, "server reset timed out; closing"),
        }
    }
}
