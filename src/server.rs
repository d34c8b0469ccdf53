//! The running proxy: builds the shared context, binds the TCP and Unix
//! listeners, and spawns one session task per client until shut down.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use tokio::net::{TcpListener, TcpSocket, UnixListener};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::auth::AuthFileError;
use crate::config::Config;
use crate::net::Stream;
use crate::pool::Pools;
use crate::session::clients::Peer;
use crate::session::{self, CancelMap, Context};
use crate::tenant::{role_password, Registry, RegistryError};
use crate::tls::{ClientTls, ServerTls, TlsError};

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A listener could not be bound.
    #[error("cannot listen on {what}: {source}")]
    Bind {
        /// The address or socket path.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The registry could not be reached at start.
    #[error("cannot load the tenant registry: {0}")]
    Registry(#[from] RegistryError),
    /// The auth file is unreadable or malformed.
    #[error(transparent)]
    AuthFile(#[from] AuthFileError),
    /// A TLS certificate, key or CA file is missing or malformed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The parking lot for idle clients could not start.
    #[error("cannot start the parking lot for idle clients: {0}")]
    Parking(std::io::Error),
}

/// A started proxy. Dropping it does not stop it; call [`Proxy::shutdown`].
pub struct Proxy {
    addr: SocketAddr,
    /// Where `/metrics` and the health checks are served, when enabled.
    http_addr: Option<SocketAddr>,
    unix_path: Option<PathBuf>,
    shutdown: CancellationToken,
    /// Stops the registry's LISTEN connection, after the drain: sessions
    /// still logging in while draining need it.
    registry_stop: CancellationToken,
    tracker: TaskTracker,
    context: Arc<Context>,
    /// TLS towards PostgreSQL, kept here to reload it.
    server_tls: Option<Arc<ServerTls>>,
}

impl Proxy {
    /// Loads the registry (not in passthrough mode), binds the listeners and
    /// starts accepting clients.
    pub async fn start(config: Config) -> Result<Proxy, ServeError> {
        // Certificates first: a bad file should stop the start before anything connects.
        let client_tls = ClientTls::load(&config.tls)?.map(Arc::new);
        let server_tls = ServerTls::load(&config.tls)?.map(Arc::new);
        let shutdown = CancellationToken::new();
        let registry_stop = CancellationToken::new();
        // Passthrough serves no tenants: no registry database is needed.
        let registry = if config.tenants.passthrough() {
            Registry::offline()
        } else {
            Registry::start(&config.backend, registry_stop.clone()).await?
        };
        let evictions = registry.subscribe();
        let auth_file = crate::reload::load_auth_file(&config.auth.auth_file)?;
        let server_key =
            role_password(&config.backend.tenant_role_secret, "pgtenant mock secrets").into_bytes();
        let tracker = TaskTracker::new();
        let parking = Context::parking_lot().map_err(ServeError::Parking)?;
        let context = Arc::new(Context {
            pools: Pools::new(
                config.backend.clone(),
                config.pool.clone(),
                server_tls.clone(),
            ),
            registry,
            cancels: CancelMap::default(),
            auth_file: arc_swap::ArcSwap::from_pointee(auth_file),
            server_key,
            tls: client_tls,
            server_tls: server_tls.clone(),
            draining: shutdown.child_token(),
            drain_began: Default::default(),
            config_source: Default::default(),
            clients: Default::default(),
            tenant_clients: Default::default(),
            client_list: Default::default(),
            shutdown: shutdown.clone(),
            stats_history: Default::default(),
            errors: Default::default(),
            tracker: tracker.clone(),
            parking,
            config: arc_swap::ArcSwap::from_pointee(config),
        });

        let listen = context.config().listen.clone();
        let tcp =
            bind_tcp(listen.addr, listen.so_reuseport).map_err(|source| ServeError::Bind {
                what: listen.addr.to_string(),
                source,
            })?;
        let addr = tcp.local_addr().map_err(|source| ServeError::Bind {
            what: listen.addr.to_string(),
            source,
        })?;
        let http = match context.config().http.addr() {
            Some(wanted) => Some(crate::http::bind(wanted).await.map_err(|source| {
                shutdown.cancel();
                ServeError::Bind {
                    what: format!("{wanted} (http.listen_addr)"),
                    source,
                }
            })?),
            None => None,
        };
        tracker.spawn(accept_tcp(
            tcp,
            Arc::clone(&context),
            tracker.clone(),
            shutdown.clone(),
        ));

        let mut unix_path = None;
        if !listen.unix_socket_dir.is_empty() {
            let path =
                PathBuf::from(&listen.unix_socket_dir).join(format!(".s.PGSQL.{}", addr.port()));
            // A socket file left by an earlier run would make bind fail.
            let _ = std::fs::remove_file(&path);
            let unix = UnixListener::bind(&path).map_err(|source| ServeError::Bind {
                what: path.display().to_string(),
                source,
            })?;
            tracker.spawn(accept_unix(
                unix,
                Arc::clone(&context),
                tracker.clone(),
                shutdown.clone(),
            ));
            unix_path = Some(path);
        }
        let mut http_addr = None;
        if let Some((listener, bound)) = http {
            let state = Arc::new(crate::http::HttpState {
                ctx: Arc::clone(&context),
                shutdown: shutdown.clone(),
            });
            crate::http::spawn(listener, state, &tracker);
            info!(addr = %bound, "serving /metrics, /healthz, /readyz and the admin API");
            http_addr = Some(bound);
        }
        tracker.spawn(reap_idle_servers(Arc::clone(&context), shutdown.clone()));
        tracker.spawn(warm_pools(Arc::clone(&context), shutdown.clone()));
        tracker.spawn(park_idle_clients(Arc::clone(&context)));
        // Off the tracker: it keeps acting on tenant changes while draining.
        tokio::spawn(session::evict::run(
            Arc::clone(&context),
            evictions,
            registry_stop.clone(),
        ));
        tracker.spawn(crate::admin::record_stats(
            Arc::clone(&context),
            shutdown.clone(),
        ));
        let mode = if context.config().tenants.passthrough() {
            "passthrough"
        } else {
            "tenant"
        };
        info!(%addr, mode, tenants = context.registry.len(), "pgtenant is accepting clients");
        Ok(Proxy {
            addr,
            http_addr,
            unix_path,
            shutdown,
            registry_stop,
            tracker,
            context,
            server_tls,
        })
    }

    /// Where [`Proxy::reload`] reads the configuration again (once).
    pub fn set_config_source(&self, source: crate::reload::ConfigSource) {
        let _ = self.context.config_source.set(source);
    }

    /// Reads the configuration again and applies it (see [`crate::reload`]);
    /// returns the changed settings that need a restart. On error nothing changed.
    pub fn reload(&self) -> Result<Vec<String>, crate::reload::ReloadError> {
        crate::reload::reload(&self.context)
    }

    /// Reads the TLS certificate, key and CA files again, both sides; new
    /// handshakes use them, open connections keep theirs. On error the
    /// certificates in force stay and the error is returned.
    pub fn reload_tls(&self) -> Result<(), TlsError> {
        if let Some(tls) = &self.context.tls {
            tls.reload()?;
        }
        if let Some(tls) = &self.server_tls {
            tls.reload()?;
        }
        Ok(())
    }

    /// The TCP address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The HTTP address (`/metrics`, `/healthz`, `/readyz`), when enabled.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The Unix socket path, when one is configured.
    pub fn unix_socket(&self) -> Option<&Path> {
        self.unix_path.as_deref()
    }

    /// The shared session context (pools, registry), for inspection.
    pub fn context(&self) -> &Arc<Context> {
        &self.context
    }

    /// A token that stops the proxy when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Drains: stops accepting, closes clients that are between
    /// transactions (and the others as they finish theirs), and returns once
    /// every session has ended or `grace` has passed. Sessions still open
    /// then end with the process.
    pub async fn shutdown(self, grace: Duration) {
        self.shutdown.cancel();
        self.context.begin_drain();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            warn!(
                sessions = self.tracker.len(),
                "sessions still open at the end of the shutdown timeout"
            );
        }
        self.registry_stop.cancel();
        if let Some(path) = &self.unix_path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The client listener: `SO_REUSEADDR` always, `SO_REUSEPORT` on request
/// (rolling restarts), and a backlog deep enough for connection storms.
fn bind_tcp(addr: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if reuse_port {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    socket.listen(4096)
}

async fn accept_tcp(
    listener: TcpListener,
    ctx: Arc<Context>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let start = |socket: tokio::net::TcpStream, peer: SocketAddr| {
        let stream = Stream::Tcp(socket);
        let _ = stream.set_nodelay();
        tracker.spawn(session::run(stream, Peer::Tcp(peer), Arc::clone(&ctx)));
    };
    while let Some(accepted) = shutdown.run_until_cancelled(listener.accept()).await {
        match accepted {
            Ok((socket, peer)) => start(socket, peer),
            Err(e) => accept_failed(e).await,
        }
    }
    // Connections the kernel already queued would be reset when the
    // listener closes (with SO_REUSEPORT they are not moved to the new
    // process): take them in too; they are drained like the others.
    while let Some(Ok((socket, peer))) = listener.accept().now_or_never() {
        start(socket, peer);
    }
}

async fn accept_unix(
    listener: UnixListener,
    ctx: Arc<Context>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    while let Some(accepted) = shutdown.run_until_cancelled(listener.accept()).await {
        match accepted {
            Ok((socket, _)) => {
                tracker.spawn(session::run(
                    Stream::Unix(socket),
                    Peer::Unix,
                    Arc::clone(&ctx),
                ));
            }
            Err(e) => accept_failed(e).await,
        }
    }
}

/// How long a pooled client stays idle in its task before it parks.
const PARK_AFTER: Duration = Duration::from_secs(1);

/// Asks pooled clients idle for `PARK_AFTER` to park, once a second, until
/// a drain begins; then wakes the idle and the parked so they are told.
async fn park_idle_clients(ctx: Arc<Context>) {
    let mut tick = tokio::time::interval(PARK_AFTER);
    while ctx
        .draining
        .run_until_cancelled(tick.tick())
        .await
        .is_some()
    {
        let asked = ctx.park_idle_clients(PARK_AFTER);
        if asked > 0 {
            tracing::trace!(asked, "idle clients asked to park");
        }
    }
    ctx.begin_drain();
}

/// Closes idle server connections past `server_idle_timeout` / `server_lifetime`, once a second.
async fn reap_idle_servers(ctx: Arc<Context>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while shutdown.run_until_cancelled(tick.tick()).await.is_some() {
        let closed = ctx.pools.reap();
        if closed > 0 {
            tracing::debug!(closed, "closed idle server connections");
        }
    }
}

/// Tops pools up to `min_pool_size` once a second, in a task of its own: a
/// server that is slow to answer delays this, never the reaper.
async fn warm_pools(ctx: Arc<Context>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while shutdown.run_until_cancelled(tick.tick()).await.is_some() {
        let opened = ctx.pools.warm().await;
        if opened > 0 {
            tracing::debug!(opened, "opened server connections for min_pool_size");
        }
    }
}

/// Out of file descriptors and the like: log, and back off briefly instead of spinning.
async fn accept_failed(e: std::io::Error) {
    warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}
