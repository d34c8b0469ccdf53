//! The tenant registry cache: every tenant row of `commons.tenants`, loaded at
//! start and kept current by `LISTEN pgtenant_registry` on the proxy's own
//! connection, which also answers credential lookups.
//!
//! That connection is opened with `search_path=pg_catalog` and every query
//! names its schema, so nothing a client sends can change what it reads
//! (PgBouncer's CVE-2025-12819 ran its auth query under a client-chosen
//! `search_path`).

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::{stream, StreamExt};
use tokio::sync::{broadcast, mpsc};
use tokio_postgres::{AsyncMessage, Client, NoTls};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{BackendConfig, PoolMode};

use super::id::{AccessLevel, TenantId};

/// The channel the registry trigger notifies.
pub const CHANNEL: &str = "pgtenant_registry";

/// A tenant's lifecycle state, from `commons.tenants.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantStatus {
    /// Being created; not served yet.
    Provisioning,
    /// Served.
    Active,
    /// Refused until resumed.
    Suspended,
    /// Being removed.
    Dropping,
}

impl TenantStatus {
    fn parse(s: &str) -> Option<TenantStatus> {
        Some(match s {
            "provisioning" => TenantStatus::Provisioning,
            "active" => TenantStatus::Active,
            "suspended" => TenantStatus::Suspended,
            "dropping" => TenantStatus::Dropping,
            _ => return None,
        })
    }
}

/// What the proxy knows of one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantInfo {
    /// The id.
    pub id: TenantId,
    /// Its state.
    pub status: TenantStatus,
    /// `config.pool_size`, overriding `pool.default_pool_size`.
    pub pool_size: Option<usize>,
    /// `config.pool_mode`, overriding `pool.pool_mode`.
    pub pool_mode: Option<PoolMode>,
    /// `config.statement_timeout` (e.g. `30s`), for its new server connections.
    pub statement_timeout: Option<String>,
    /// `config.max_clients`: clients of this tenant connected at once.
    pub max_clients: Option<usize>,
    /// `shared` or `dedicated`.
    pub tier: String,
    /// A dedicated tenant's cluster: a `[backends]` name; `None` for the
    /// shared cluster.
    pub backend: Option<String>,
    /// Suspended with `--now`: its connections are closed, not only refused.
    pub disconnect_clients: bool,
}

impl TenantInfo {
    /// Whether connections of this tenant that are already open must close:
    /// it is being dropped, or suspended with `--now`.
    pub fn must_disconnect(&self) -> bool {
        match self.status {
            TenantStatus::Dropping => true,
            TenantStatus::Suspended => self.disconnect_clients,
            TenantStatus::Provisioning | TenantStatus::Active => false,
        }
    }
}

/// Which tenants the cache just reloaded (announced after the cache changed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reloaded {
    /// These ids (each changed, appeared or disappeared).
    Tenants(Arc<[String]>),
    /// Every tenant (at start, after a reconnect, or after many changes).
    All,
}

/// A tenant user's stored credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// The stored secret (SCRAM verifier, md5 hash or plain).
    pub secret: String,
    /// The pool it gets.
    pub access: AccessLevel,
}

/// Why the registry could not answer.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No connection to the registry right now.
    #[error("the tenant registry is not reachable")]
    Unavailable,
    /// A query failed.
    #[error("registry query failed: {0}")]
    Db(#[from] tokio_postgres::Error),
}

/// The live registry cache; cheap to share.
pub struct Registry {
    tenants: crate::HotMap<String, TenantInfo>,
    /// The current connection, replaced on reconnect.
    client: RwLock<Option<Arc<Client>>>,
    /// When the last NOTIFY arrived, for `/metrics`.
    last_notify: std::sync::Mutex<Option<std::time::Instant>>,
    /// Announces each reload, for whoever acts on tenant changes.
    reloaded: broadcast::Sender<Reloaded>,
}

/// Reload announcements kept for a slow listener before it is told it lagged.
const RELOADED_BACKLOG: usize = 256;

/// Read `FROM commons.tenants t`. `disconnect_clients` is read through
/// `to_jsonb` so a registry that `pgtenant init` has not upgraded yet still loads.
const TENANT_COLUMNS: &str = "id, status, (config->>'pool_size'), (config->>'pool_mode'), \
     (config->>'statement_timeout'), (config->>'max_clients'), tier::text, \
     (to_jsonb(t)->>'disconnect_clients'), nullif(backend, '')";

impl Registry {
    /// Connects, loads every tenant, and keeps the cache current until
    /// `shutdown` fires. Fails if the first connection fails.
    pub async fn start(
        backend: &BackendConfig,
        shutdown: CancellationToken,
    ) -> Result<Arc<Registry>, RegistryError> {
        let registry = Arc::new(Registry {
            tenants: Default::default(),
            client: RwLock::new(None),
            last_notify: std::sync::Mutex::new(None),
            reloaded: broadcast::channel(RELOADED_BACKLOG).0,
        });
        let pg = pg_config(backend);
        let (notify_tx, notify_rx) = mpsc::unbounded_channel();
        let connected = registry
            .connect(&pg, notify_tx.clone(), shutdown.clone())
            .await?;
        registry.reload_all().await?;
        tokio::spawn(Arc::clone(&registry).reload_on_notify(notify_rx, shutdown.clone()));
        tokio::spawn(Arc::clone(&registry).stay_connected(pg, connected, notify_tx, shutdown));
        Ok(registry)
    }

    /// Announcements of every reload from now on. A receiver that lags
    /// behind gets `RecvError::Lagged` and should treat it as [`Reloaded::All`].
    pub fn subscribe(&self) -> broadcast::Receiver<Reloaded> {
        self.reloaded.subscribe()
    }

    /// A registry that is never connected and holds no tenant, for
    /// passthrough mode (tenant features off), where none is needed.
    pub fn offline() -> Arc<Registry> {
        Arc::new(Registry {
            tenants: Default::default(),
            client: RwLock::new(None),
            last_notify: std::sync::Mutex::new(None),
            reloaded: broadcast::channel(RELOADED_BACKLOG).0,
        })
    }

    /// The tenant with this id, if registered.
    pub fn tenant(&self, id: &str) -> Option<TenantInfo> {
        self.tenants.get(id).map(|t| t.clone())
    }

    /// Runs `read` on the tenant with this id in place, without copying it
    /// (for the per-transaction check of its settings); `None` when unknown.
    pub fn with_tenant<R>(&self, id: &str, read: impl FnOnce(&TenantInfo) -> R) -> Option<R> {
        self.tenants.get(id).map(|t| read(&t))
    }

    /// Waits until `check` holds for tenant `id`'s cache entry (`None`: not
    /// registered), or `limit` passes; returns whether it held. For commands
    /// that change the registry and answer once this process has heard.
    pub async fn wait_for(
        &self,
        id: &TenantId,
        limit: Duration,
        check: impl Fn(Option<&TenantInfo>) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if check(self.tenant(id.as_str()).as_ref()) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Every tenant in the cache, in id order.
    pub fn all(&self) -> Vec<TenantInfo> {
        let mut all: Vec<TenantInfo> = self.tenants.iter().map(|t| t.value().clone()).collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// Whether a tenant id is registered (any status).
    pub fn is_registered(&self, id: &str) -> bool {
        self.tenants.contains_key(id)
    }

    /// Number of tenants in the cache.
    pub fn len(&self) -> usize {
        self.tenants.len()
    }

    /// True when no tenant is registered.
    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }

    /// Time since the last registry NOTIFY; `None` before the first.
    pub fn last_notify_age(&self) -> Option<Duration> {
        let last = *self.last_notify.lock().unwrap_or_else(|e| e.into_inner());
        last.map(|t| t.elapsed())
    }

    /// Whether the registry connection (which LISTENs) is up now.
    pub fn is_connected(&self) -> bool {
        self.client().is_ok_and(|c| !c.is_closed())
    }

    /// Whether the registry answers a trivial query within `limit`, on the
    /// proxy's registry connection (down while it reconnects).
    pub async fn reachable(&self, limit: Duration) -> bool {
        let Ok(client) = self.client() else {
            return false;
        };
        if client.is_closed() {
            return false;
        }
        matches!(
            tokio::time::timeout(limit, client.simple_query("SELECT 1")).await,
            Ok(Ok(_))
        )
    }

    /// The active credentials of `user` in `tenant`, if any.
    pub async fn user(
        &self,
        tenant: &TenantId,
        user: &str,
    ) -> Result<Option<UserRecord>, RegistryError> {
        let client = self.client()?;
        let row = client
            .query_opt(
                "SELECT secret, access FROM commons.tenant_users \
                 WHERE tenant_id = $1 AND username = $2 AND active",
                &[&tenant.as_str(), &user],
            )
            .await?;
        Ok(row.and_then(|row| {
            let access = AccessLevel::parse(row.get::<_, &str>(1))?;
            Some(UserRecord {
                secret: row.get(0),
                access,
            })
        }))
    }

    /// The login role of the server process `pid`, if it is still running.
    pub async fn role_of_pid(&self, pid: i32) -> Result<Option<String>, RegistryError> {
        let client = self.client()?;
        let row = client
            .query_opt(
                "SELECT usename::text FROM pg_catalog.pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .await?;
        Ok(row.and_then(|r| r.get(0)))
    }

    fn client(&self) -> Result<Arc<Client>, RegistryError> {
        self.client
            .read()
            .map_err(|_| RegistryError::Unavailable)?
            .clone()
            .ok_or(RegistryError::Unavailable)
    }

    /// Opens a connection, starts `LISTEN`, and returns a receiver that fires when it ends.
    async fn connect(
        &self,
        pg: &tokio_postgres::Config,
        notify_tx: mpsc::UnboundedSender<String>,
        shutdown: CancellationToken,
    ) -> Result<tokio::sync::oneshot::Receiver<()>, RegistryError> {
        let (client, mut connection) = pg.connect(NoTls).await?;
        let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut messages = stream::poll_fn(move |cx| connection.poll_message(cx));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    message = messages.next() => match message {
                        Some(Ok(AsyncMessage::Notification(n))) => {
                            let _ = notify_tx.send(n.payload().to_string());
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            warn!(error = %e, "registry connection failed");
                            break;
                        }
                        None => break,
                    }
                }
            }
            let _ = closed_tx.send(());
        });
        client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
        if let Ok(mut slot) = self.client.write() {
            *slot = Some(Arc::new(client));
        }
        Ok(closed_rx)
    }

    /// Reconnects with backoff whenever the connection ends, then reloads everything.
    async fn stay_connected(
        self: Arc<Self>,
        pg: tokio_postgres::Config,
        mut closed: tokio::sync::oneshot::Receiver<()>,
        notify_tx: mpsc::UnboundedSender<String>,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = &mut closed => {}
            }
            if let Ok(mut slot) = self.client.write() {
                *slot = None;
            }
            let mut delay = Duration::from_millis(100);
            loop {
                if shutdown.is_cancelled() {
                    return;
                }
                match self.connect(&pg, notify_tx.clone(), shutdown.clone()).await {
                    Ok(rx) => {
                        closed = rx;
                        break;
                    }
                    Err(e) => {
                        warn!(error = %e, "registry reconnect failed");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
            }
            info!("registry connection restored");
            if let Err(e) = self.reload_all().await {
                warn!(error = %e, "registry reload failed");
            }
        }
    }

    /// Applies notifications: one tenant when the payload names it, else everything.
    async fn reload_on_notify(
        self: Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<String>,
        shutdown: CancellationToken,
    ) {
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => return,
                p = rx.recv() => match p { Some(p) => p, None => return },
            };
            *self.last_notify.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(std::time::Instant::now());
            let mut ids = HashSet::from([first]);
            while let Ok(p) = rx.try_recv() {
                ids.insert(p);
            }
            let result = if ids.len() > 64 || ids.iter().any(|p| TenantId::parse(p).is_err()) {
                self.reload_all().await
            } else {
                self.reload_some(ids.into_iter().collect()).await
            };
            if let Err(e) = result {
                warn!(error = %e, "registry reload failed");
            }
        }
    }

    async fn reload_all(&self) -> Result<(), RegistryError> {
        let client = self.client()?;
        let rows = client
            .query(
                &format!("SELECT {TENANT_COLUMNS} FROM commons.tenants t"),
                &[],
            )
            .await?;
        let fresh: Vec<TenantInfo> = rows.iter().filter_map(tenant_from_row).collect();
        let keep: HashSet<&str> = fresh.iter().map(|t| t.id.as_str()).collect();
        self.tenants.retain(|id, _| keep.contains(id.as_str()));
        for t in fresh {
            self.tenants.insert(t.id.as_str().to_string(), t);
        }
        // Nobody listening is fine.
        let _ = self.reloaded.send(Reloaded::All);
        Ok(())
    }

    async fn reload_some(&self, ids: Vec<String>) -> Result<(), RegistryError> {
        let client = self.client()?;
        let rows = client
            .query(
                &format!("SELECT {TENANT_COLUMNS} FROM commons.tenants t WHERE id = ANY($1)"),
                &[&ids],
            )
            .await?;
        let fresh: Vec<TenantInfo> = rows.iter().filter_map(tenant_from_row).collect();
        for id in &ids {
            if !fresh.iter().any(|t| t.id.as_str() == id) {
                self.tenants.remove(id);
            }
        }
        for t in fresh {
            self.tenants.insert(t.id.as_str().to_string(), t);
        }
        let _ = self.reloaded.send(Reloaded::Tenants(ids.into()));
        Ok(())
    }
}

fn tenant_from_row(row: &tokio_postgres::Row) -> Option<TenantInfo> {
    let id = TenantId::parse(row.get::<_, &str>(0)).ok()?;
    let status = TenantStatus::parse(row.get::<_, &str>(1))?;
    let pool_size = row
        .get::<_, Option<&str>>(2)
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|&n| n > 0);
    let pool_mode = row.get::<_, Option<&str>>(3).and_then(PoolMode::parse);
    // Goes into a startup packet: digits with an optional unit, nothing else.
    let statement_timeout = row
        .get::<_, Option<&str>>(4)
        .filter(|t| {
            let digits = t.trim_end_matches(|c: char| c.is_ascii_lowercase());
            !digits.is_empty()
                && digits.len() < 12
                && digits.bytes().all(|b| b.is_ascii_digit())
                && t.len() - digits.len() <= 3
        })
        .map(str::to_string);
    let max_clients = row
        .get::<_, Option<&str>>(5)
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|&n| n > 0);
    Some(TenantInfo {
        id,
        status,
        pool_size,
        pool_mode,
        statement_timeout,
        max_clients,
        tier: row.get::<_, Option<String>>(6).unwrap_or_default(),
        disconnect_clients: row.get::<_, Option<&str>>(7) == Some("true"),
        backend: row.get(8),
    })
}

/// Connection settings for the proxy's own admin connections: fixed
/// `search_path`, so lookups never depend on anything a client chose.
pub fn pg_config(backend: &BackendConfig) -> tokio_postgres::Config {
    let mut pg = tokio_postgres::Config::new();
    pg.host(&backend.host)
        .port(backend.port)
        .user(&backend.admin_user)
        .dbname(&backend.registry_database)
        .application_name("pgtenant-registry")
        .options("-c search_path=pg_catalog")
        .connect_timeout(Duration::from_secs(10));
    if !backend.admin_password.is_empty() {
        pg.password(&backend.admin_password);
    }
    pg
}
