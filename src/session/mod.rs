//! One client's life: pre-startup requests (SSLRequest and direct TLS
//! included), the startup packet, tenant resolution (or, in passthrough
//! mode, the client's own user and database: `passthrough`),
//! authentication, backend checkout, the relay, and release. Pools, auth exchanges, the registry and
//! TLS certificates are used, not owned, here.

pub mod bell;
pub mod boundary;
pub mod cancel;
pub mod clients;
mod direct;
mod events;
pub mod evict;
pub mod park;
mod passthrough;
mod pooled;
pub mod relay;
mod settings;
pub mod state;
pub mod txn;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tracing::field::{display, Empty};
use tracing::{debug, info_span, warn, Instrument};

use crate::auth::{self, AuthError, Secret};
use crate::config::{seconds, Config, PoolMode, SslMode};
use crate::net::Stream;
use crate::pool::{BackendAddr, PoolError, PoolKey, PoolLimits, PooledBackend, Pools};
use crate::protocol::{
    messages, read_startup, ErrorFields, ProtocolError, SqlState, StartupPacket, StartupParams,
};
use crate::tenant::resolve::PROTECTED_SETTINGS;
use crate::tenant::{
    self, AccessLevel, Registry, RegistryError, ResolveError, TenantId, TenantStatus,
};
use crate::tls::{ClientTls, ALPN_POSTGRESQL};

pub use cancel::CancelMap;
use events::Ending;
use relay::NotificationGate;

/// Everything sessions share.
pub struct Context {
    /// The configuration in force; `RELOAD` swaps it. Sessions read it
    /// through [`Context::config`] as they go.
    pub config: arc_swap::ArcSwap<Config>,
    /// Tenant cache and credential lookups.
    pub registry: Arc<Registry>,
    /// Backend pools.
    pub pools: Pools,
    /// Proxy-issued cancel keys.
    pub cancels: CancelMap,
    /// Secrets from `auth.auth_file`, keyed by `user@tenant`; `RELOAD` swaps them.
    pub auth_file: arc_swap::ArcSwap<HashMap<String, Secret>>,
    /// Keys the mock secrets of unknown users.
    pub server_key: Vec<u8>,
    /// TLS for clients; `None` when `client_tls_sslmode` is `disable`.
    pub tls: Option<Arc<ClientTls>>,
    /// TLS towards PostgreSQL; `None` when not used.
    pub server_tls: Option<Arc<crate::tls::ServerTls>>,
    /// Cancelled when the proxy starts draining (SIGTERM): clients between
    /// transactions are told and closed; the others finish theirs first.
    pub draining: tokio_util::sync::CancellationToken,
    /// When the drain began, once [`Context::begin_drain`] has run: read
    /// at every transaction boundary, where `draining.is_cancelled()`
    /// would take the token's lock, shared by every client.
    pub(crate) drain_began: std::sync::OnceLock<tokio::time::Instant>,
    /// Where `RELOAD` reads the configuration again; unset: TLS files only.
    pub config_source: std::sync::OnceLock<crate::reload::ConfigSource>,
    /// Clients connected now, against `pool.max_client_conn`.
    pub clients: std::sync::atomic::AtomicUsize,
    /// Clients connected now per tenant, against the tenant's `config.max_clients`.
    pub tenant_clients: dashmap::DashMap<TenantId, usize>,
    /// Logged-in clients, for the admin console (SHOW CLIENTS, KILL).
    pub client_list: clients::ClientList,
    /// Cancelled to stop the whole proxy (the admin console's SHUTDOWN).
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Earlier counter snapshots, for the console's per-second averages.
    pub stats_history: crate::stats::History<Arc<PoolKey>>,
    /// Errors sent to clients by the proxy itself, and refused passwords.
    pub errors: crate::stats::ErrorCounts,
    /// Every session task (a drain waits for them).
    pub tracker: tokio_util::task::TaskTracker,
    /// Idle pooled clients waiting without a task.
    pub(crate) parking: park::ParkingLot<pooled::Parked>,
}

impl Context {
    /// The configuration in force now.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Starts the parking lot for a context being built (inside the runtime).
    pub fn parking_lot() -> std::io::Result<park::ParkingLot<pooled::Parked>> {
        park::ParkingLot::start()
    }

    /// Clients waiting parked now, without a task.
    pub fn parked_clients(&self) -> usize {
        self.parking.len()
    }

    /// Asks every pooled client idle at least `idle` to park.
    pub fn park_idle_clients(&self, idle: std::time::Duration) -> usize {
        let mut asked = 0;
        for client in self.client_list.all() {
            if client.may_park(idle) {
                client.request_park();
                asked += 1;
            }
        }
        asked
    }

    /// Wakes a client at its transaction boundary (its tenant was
    /// suspended), parked or not; it then asks the registry why.
    pub fn call_client(&self, client: &clients::ClientEntry) {
        client.boundary.ring();
        self.parking.unpark(client.id);
    }

    /// Ends a client's session now (KILL, a dropped tenant), parked or not.
    pub fn kill_client(&self, client: &clients::ClientEntry) {
        client.kill.pull();
        self.parking.unpark(client.id);
    }

    /// A drain began (`draining` is cancelled): clients between
    /// transactions are woken to be told, parked ones are handed back, and
    /// no client parks any more.
    pub fn begin_drain(&self) {
        let _ = self.drain_began.set(tokio::time::Instant::now());
        // A client listed after this sees `drain_began` before it waits.
        for client in self.client_list.all() {
            client.boundary.ring();
        }
        self.parking.close();
    }

    /// When the drain began, if it has (see [`Context::begin_drain`]).
    pub fn drain_began(&self) -> Option<tokio::time::Instant> {
        self.drain_began.get().copied()
    }
}

/// A connected client's places: its count against `pool.max_client_conn`,
/// against its tenant's `max_clients`, and its entry in the client list.
/// Owned rather than borrowed from the session, so a parked client keeps
/// them without a task; given back when dropped.
pub(crate) struct Seat {
    ctx: Arc<Context>,
    /// Listed under this entry, and counted against its pool's tenant.
    entry: Option<Arc<clients::ClientEntry>>,
}

impl Seat {
    /// Counts a new client; returns the seat and the count with it.
    fn take(ctx: &Arc<Context>) -> (Seat, usize) {
        let connected = ctx
            .clients
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel)
            + 1;
        let seat = Seat {
            ctx: Arc::clone(ctx),
            entry: None,
        };
        (seat, connected)
    }

    /// Counts the client against its pool's tenant, unless `max` are
    /// counted already (`None` then), and lists it until the seat is dropped.
    fn list(
        &mut self,
        new: clients::NewClient,
        max: Option<usize>,
    ) -> Option<Arc<clients::ClientEntry>> {
        if let Some(tenant) = new.pool.and_then(PoolKey::tenant) {
            let mut count = self.ctx.tenant_clients.entry(tenant.clone()).or_insert(0);
            if max.is_some_and(|m| *count >= m) {
                return None;
            }
            *count += 1;
        }
        let entry = self.ctx.client_list.insert(new);
        self.entry = Some(Arc::clone(&entry));
        Some(entry)
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        if let Some(entry) = &self.entry {
            self.ctx.client_list.remove(entry.id);
            if let Some(tenant) = entry.tenant() {
                self.ctx.tenant_clients.remove_if_mut(tenant, |_, n| {
                    *n -= 1;
                    *n == 0
                });
            }
        }
        self.ctx
            .clients
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Why a session ended before the relay; each variant knows what the client sees.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("{0}")]
    Unsupported(&'static str),
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error("tenant \"{0}\" does not exist")]
    UnknownTenant(String),
    #[error("tenant \"{0}\" is {1}")]
    Unavailable(String, &'static str),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error("{message}")]
    Setting { code: SqlState, message: String },
    #[error("client_login_timeout expired before startup finished")]
    LoginTimeout,
    #[error("SSL required")]
    SslRequired,
    #[error("database \"{0}\" does not allow connections now (DISABLE)")]
    Disabled(String),
    #[error("user \"{0}\" is not allowed to use the admin console")]
    NotConsoleUser(String),
    #[error("no such database: {0}")]
    UnknownDatabase(String),
    /// A dedicated tenant whose `[backends]` entry this proxy lacks.
    #[error("tenant \"{0}\" lives on backend {1:?}, which this proxy has no [backends] entry for")]
    UnknownBackend(String, String),
}

impl SessionError {
    /// What the client is told, and the detail behind it when that differs
    /// (for the log only).
    fn to_client_and_log(&self) -> (ErrorFields, Option<String>) {
        let told = self.to_client();
        let detail = self.to_string();
        let cause = (detail != told.message).then_some(detail);
        (told, cause)
    }

    fn to_client(&self) -> ErrorFields {
        let code = match self {
            Self::Protocol(_) => SqlState::PROTOCOL_VIOLATION,
            Self::Unsupported(_) => SqlState::FEATURE_NOT_SUPPORTED,
            Self::Resolve(e) => e.sqlstate(),
            Self::UnknownTenant(_) | Self::UnknownDatabase(_) => SqlState::INVALID_CATALOG_NAME,
            Self::Unavailable(..) | Self::Registry(_) => SqlState::CANNOT_CONNECT_NOW,
            Self::Auth(e) => e.sqlstate(),
            Self::Pool(e) => e.sqlstate(),
            Self::Setting { code, .. } => *code,
            Self::LoginTimeout => SqlState::PROTOCOL_VIOLATION,
            Self::SslRequired | Self::NotConsoleUser(_) => {
                SqlState::INVALID_AUTHORIZATION_SPECIFICATION
            }
            Self::Disabled(_) => SqlState::CANNOT_CONNECT_NOW,
            Self::UnknownBackend(..) => SqlState::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
        };
        // Internals (hosts, server messages at login) stay in the log.
        let message = match self {
            Self::Pool(PoolError::Backend(_)) | Self::Pool(PoolError::ConnectTimeout) => {
                "could not open a server connection".to_string()
            }
            Self::Registry(_) => "the tenant registry is not reachable; try again".to_string(),
            Self::UnknownBackend(..) => "could not open a server connection".to_string(),
            other => other.to_string(),
        };
        ErrorFields::fatal(code, message)
    }
}

/// A client that finished login and holds a backend.
struct Ready {
    backend: PooledBackend,
    key: (i32, i32),
    /// Its tenant; `None` in passthrough mode.
    tenant: Option<TenantId>,
    /// The pool it draws from.
    pool_key: PoolKey,
    /// The limits it logged in with: in passthrough its server credential;
    /// a tenant's limits are read again at each checkout.
    pool_limits: PoolLimits,
    /// Its settings: startup ones plus every reported parameter's value.
    settings: settings::Settings,
    /// When its backend goes back to the pool.
    mode: PoolMode,
}

/// Lets through only notifications sent by the client's own tenant (or the
/// admin role): PostgreSQL's channels are per database, not per schema.
/// Without a tenant (passthrough) every notification goes through, as in
/// PostgreSQL.
struct TenantGate<'a> {
    registry: &'a Registry,
    pools: &'a Pools,
    tenant: Option<&'a TenantId>,
    admin: &'a str,
    own_pid: i32,
}

impl NotificationGate for TenantGate<'_> {
    async fn allows(&self, sender: i32) -> bool {
        let Some(tenant) = self.tenant else {
            return true;
        };
        if sender == self.own_pid {
            return true;
        }
        match self.registry.role_of_pid(sender).await {
            Ok(Some(role)) => {
                role == self.admin
                    || role == tenant.role(AccessLevel::ReadWrite)
                    || role == tenant.role(AccessLevel::ReadOnly)
            }
            // The sender has gone: trust only this proxy's own record of it.
            Ok(None) => self.pools.tenant_of_pid(sender).as_ref() == Some(tenant),
            Err(e) => {
                warn!(error = %e, "cannot check a notification's sender; dropping it");
                false
            }
        }
    }
}

/// Serves one client connection to its end. Never panics on client input;
/// every failure is reported to the client (when it is still there) and
/// logged. Every line logged on its behalf carries the `client` span: its
/// address, and its tenant, database and user once they are known.
pub async fn run(client: Stream, peer: clients::Peer, ctx: Arc<Context>) {
    let span = info_span!("client", %peer, tenant = Empty, db = Empty, user = Empty);
    async move {
        let started = tokio::time::Instant::now();
        // `None`: the client was parked; its session goes on in another task.
        if let Some(ending) = session(client, &ctx, peer, started).await {
            events::closed(&ctx.config().log, started.elapsed(), &ending);
        }
    }
    .instrument(span)
    .await
}

/// What the log says of a client closed by KILL or an eviction.
const KILLED: &str = "closed by KILL, or its tenant was dropped or suspended --now";

/// A client's life from accept to close, and why it ended; `None` when it
/// was parked (it ends in the task that takes it back).
async fn session(
    mut client: Stream,
    ctx: &Arc<Context>,
    peer: clients::Peer,
    started: tokio::time::Instant,
) -> Option<Ending> {
    let (mut seat, connected) = Seat::take(ctx);
    if connected > ctx.config().pool.max_client_conn {
        let full = SessionError::Setting {
            code: SqlState::TOO_MANY_CONNECTIONS,
            message: "no more connections allowed (max_client_conn)".into(),
        };
        return Some(refuse(&mut client, ctx, full).await);
    }
    let limit = seconds(ctx.config().listen.client_login_timeout);
    let deadline = tokio::time::Instant::now() + limit;
    // The TLS certificate's channel binding data, once TLS is up.
    let mut binding: Option<Vec<u8>> = None;
    let authed = loop {
        // Boxed, as every step that ends before the client goes idle: a
        // future is as large as its largest state, and idle clients are many.
        let attempt = Box::pin(login(&mut client, ctx, binding.as_deref()));
        match tokio::time::timeout_at(deadline, attempt).await {
            // Kept boxed: the session's future holds it until attach.
            Ok(Ok(Login::Done(authed))) => break authed,
            Ok(Ok(Login::Cancel)) => return Some(Ending::CancelRequest),
            Ok(Ok(Login::Console(user))) => {
                let listed = ctx.client_list.add(clients::NewClient {
                    peer,
                    pool: None,
                    user: &user.name,
                    tls: client.is_tls(),
                    state: clients::ClientState::Active,
                });
                Box::pin(crate::admin::serve(client, ctx, *user, &listed.entry)).await;
                return Some(Ending::Closed("admin console session ended"));
            }
            Ok(Ok(Login::StartTls { direct })) => {
                match tokio::time::timeout_at(deadline, Box::pin(start_tls(client, ctx, direct)))
                    .await
                {
                    Ok(Some((tls, end_point))) => {
                        client = tls;
                        binding = Some(end_point);
                    }
                    Ok(None) => return Some(Ending::Closed("TLS handshake failed")),
                    Err(_) => {
                        return Some(Ending::Closed(
                            "client_login_timeout expired in the TLS handshake",
                        ))
                    }
                }
            }
            Ok(Err(e)) => return Some(refuse(&mut client, ctx, e).await),
            Err(_) => return Some(refuse(&mut client, ctx, SessionError::LoginTimeout).await),
        }
    };
    let listed = seat.list(
        clients::NewClient {
            peer,
            pool: Some(&authed.pool_key),
            user: &authed.user,
            tls: client.is_tls(),
            state: clients::ClientState::Waiting,
        },
        authed.max_clients,
    );
    let Some(entry) = listed else {
        let tenant = authed.tenant.as_ref().map_or("", TenantId::as_str);
        let full = SessionError::Setting {
            code: SqlState::TOO_MANY_CONNECTIONS,
            message: format!("too many clients for tenant \"{tenant}\""),
        };
        return Some(refuse(&mut client, ctx, full).await);
    };
    let served = async {
        let ready = match Box::pin(attach(&mut client, ctx, authed)).await {
            Ok(ready) => ready,
            Err(e) => return pooled::Served::Ended(refuse(&mut client, ctx, e).await),
        };
        let tls = matches!(client, Stream::Tls(_));
        events::logged_in(&ctx.config().log, tls, ready.pool_key.access(), ready.mode);
        match ready.mode {
            PoolMode::Session => {
                entry.set_state(clients::ClientState::Active);
                pooled::Served::Ended(Box::pin(direct::serve(client, ready, ctx, &entry)).await)
            }
            mode => {
                entry.set_state(clients::ClientState::Idle);
                pooled::start(client, ready, ctx, mode, &entry).await
            }
        }
    };
    let served = tokio::select! {
        // Polled in this order: no random draw per poll.
        biased;
        served = served => served,
        () = entry.kill.pulled() => pooled::Served::Ended(Ending::Closed(KILLED)),
    };
    pooled::settle(served, seat, started)
}

/// Tells the client why it is refused, logs it, and closes.
async fn refuse(client: &mut Stream, ctx: &Context, error: SessionError) -> Ending {
    if let SessionError::Auth(AuthError::Failed(_)) = &error {
        ctx.errors.auth_failed();
    }
    if let SessionError::Protocol(ProtocolError::Closed) = error {
        return Ending::Closed("client left during login");
    }
    // The detail the client is not shown (hosts, server messages) goes in the log.
    let (told, cause) = error.to_client_and_log();
    ctx.errors.record(told.code.code());
    events::send_error(client, &ctx.config().log, &told, cause.as_deref()).await;
    let _ = client.shutdown().await;
    Ending::Refused(told)
}

/// How far `login` got.
enum Login {
    /// Authenticated (boxed: it is far larger than the other outcomes).
    Done(Box<Authenticated>),
    /// Authenticated for the admin console.
    Console(Box<crate::admin::ConsoleUser>),
    /// A cancel request was served.
    Cancel,
    /// The client wants TLS: after an SSLRequest (answered `S`), or at once
    /// (`direct`, PostgreSQL 17's `sslnegotiation=direct`). Login starts over
    /// on the encrypted stream.
    StartTls { direct: bool },
}

/// The first byte of a TLS record carrying a handshake (a ClientHello).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Runs the TLS handshake on a client that asked for it. `None` when it
/// failed: that ends this connection only, and is logged, not answered
/// (the client is not speaking the protocol in clear any more).
async fn start_tls(client: Stream, ctx: &Context, direct: bool) -> Option<(Stream, Vec<u8>)> {
    let (Stream::Tcp(socket), Some(tls)) = (client, ctx.tls.as_ref()) else {
        return None;
    };
    match tls.accept(socket).await {
        Ok(crate::tls::Accepted { stream, end_point }) => {
            let alpn = stream.get_ref().1.alpn_protocol();
            // As PostgreSQL: direct TLS without ALPN `postgresql` could be a
            // confused HTTPS client, so it is refused.
            if direct && alpn != Some(ALPN_POSTGRESQL) {
                debug!("direct TLS without ALPN postgresql; closing");
                return None;
            }
            Some((Stream::Tls(Box::new(stream)), end_point))
        }
        Err(e) => {
            debug!(error = %e, "client TLS handshake failed");
            None
        }
    }
}

/// Whether this plain connection may still switch to TLS.
fn tls_offered(client: &Stream, ctx: &Context) -> bool {
    matches!(client, Stream::Tcp(_)) && ctx.tls.is_some()
}

/// Startup, resolution and authentication. `binding`: the TLS channel
/// binding data, which makes SCRAM-SHA-256-PLUS offered.
async fn login(
    client: &mut Stream,
    ctx: &Context,
    binding: Option<&[u8]>,
) -> Result<Login, SessionError> {
    let config = ctx.config();
    if let Stream::Tcp(socket) = &*client {
        if ctx.tls.is_some() {
            let mut first = [0u8; 1];
            let n = socket.peek(&mut first).await.map_err(ProtocolError::from)?;
            if n == 1 && first[0] == TLS_HANDSHAKE_RECORD {
                return Ok(Login::StartTls { direct: true });
            }
        }
    }
    let (minor, mut params) = loop {
        match read_startup(client, config.listen.max_startup_packet).await? {
            StartupPacket::SslRequest if tls_offered(client, ctx) => {
                client.write_all(b"S").await.map_err(ProtocolError::from)?;
                return Ok(Login::StartTls { direct: false });
            }
            StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
                client.write_all(b"N").await.map_err(ProtocolError::from)?;
            }
            StartupPacket::CancelRequest { pid, secret } => {
                ctx.cancels.cancel((pid, secret)).await;
                return Ok(Login::Cancel);
            }
            StartupPacket::Startup { .. }
                if tls_offered(client, ctx)
                    && ctx
                        .tls
                        .as_ref()
                        .is_some_and(|t| t.mode() >= SslMode::Require) =>
            {
                return Err(SessionError::SslRequired)
            }
            StartupPacket::Startup {
                major: 3,
                minor,
                params,
            } => break (minor, params),
            StartupPacket::Startup { .. } => {
                return Err(SessionError::Unsupported("only protocol 3 is supported"))
            }
        }
    };
    let mut buf = BytesMut::with_capacity(1024);
    // Protocol options (`_pq_.*`) are not supported; say so as PostgreSQL does.
    let unknown: Vec<String> = params
        .0
        .iter()
        .filter(|(k, _)| k.starts_with("_pq_."))
        .map(|(k, _)| k.clone())
        .collect();
    params.0.retain(|(k, _)| !k.starts_with("_pq_."));
    if minor > 0 || !unknown.is_empty() {
        let names: Vec<&str> = unknown.iter().map(String::as_str).collect();
        messages::negotiate_protocol_version(&mut buf, &names);
    }
    if params
        .get("replication")
        .is_some_and(|v| v != "false" && v != "off" && v != "0")
    {
        return Err(SessionError::Unsupported(
            "replication connections are not supported",
        ));
    }

    if params
        .get("database")
        .is_some_and(crate::admin::is_console_database)
    {
        if !buf.is_empty() {
            client.write_all(&buf).await.map_err(ProtocolError::from)?;
        }
        return console_login(client, ctx, &params, binding).await;
    }
    if config.tenants.passthrough() {
        return passthrough::login(client, ctx, &params, buf, binding).await;
    }

    let resolved = tenant::resolve(
        &params,
        client.sni(),
        &config.tenants,
        &config.backend.databases,
        &|t| ctx.registry.is_registered(t),
    )?;
    let span = tracing::Span::current();
    // As display values, so text output shows them unquoted, like `peer`.
    span.record("tenant", display(&resolved.tenant));
    span.record("db", display(&resolved.database));
    span.record("user", display(&resolved.user));

    if ctx.pools.controls().is_disabled(&resolved.database) {
        return Err(SessionError::Disabled(resolved.database.clone()));
    }
    let info = ctx
        .registry
        .tenant(resolved.tenant.as_str())
        .ok_or_else(|| SessionError::UnknownTenant(resolved.tenant.to_string()))?;
    let unavailable = |why| SessionError::Unavailable(resolved.tenant.to_string(), why);
    match info.status {
        TenantStatus::Active => {}
        TenantStatus::Provisioning => return Err(unavailable("still being provisioned")),
        TenantStatus::Suspended => return Err(unavailable("suspended")),
        TenantStatus::Dropping => return Err(unavailable("being dropped")),
    }

    let wanted =
        settings::wanted(&params, &resolved.settings, PROTECTED_SETTINGS).map_err(|message| {
            SessionError::Setting {
                code: SqlState::INSUFFICIENT_PRIVILEGE,
                message,
            }
        })?;
    let (secret, access) = lookup_secret(ctx, &resolved).await?;
    if !buf.is_empty() {
        client.write_all(&buf).await.map_err(ProtocolError::from)?;
        buf.clear();
    }
    // md5 salts with the name the client logged in as, so use it as sent.
    let login_name = params.get("user").unwrap_or_default();
    auth::authenticate(
        client,
        config.auth.method,
        login_name,
        secret.as_ref(),
        &ctx.server_key,
        binding,
    )
    .await?;
    if secret.is_none() {
        // Only reachable with `trust`: the user must still exist.
        return Err(AuthError::Failed(resolved.user.clone()).into());
    }

    let server = match &info.backend {
        None => None,
        Some(name) => {
            let cluster = config.cluster(Some(name)).ok_or_else(|| {
                SessionError::UnknownBackend(resolved.tenant.to_string(), name.clone())
            })?;
            Some(Arc::new(BackendAddr {
                host: cluster.host,
                port: cluster.port,
            }))
        }
    };
    let limits = PoolLimits {
        size: info.pool_size,
        statement_timeout: info.statement_timeout.clone(),
        server,
        ..PoolLimits::default()
    };
    Ok(Login::Done(Box::new(Authenticated {
        pool_key: PoolKey::for_tenant(resolved.tenant.clone(), resolved.database, access),
        limits,
        tenant: Some(resolved.tenant),
        max_clients: info.max_clients,
        pool_mode: info.pool_mode,
        user: resolved.user,
        wanted,
    })))
}

/// Authenticates an admin console user: its secret is the auth file's
/// entry under its bare name, the exchange the same as for tenant clients;
/// a user in neither `admin.admin_users` nor `admin.stats_users` is refused
/// after it.
async fn console_login(
    client: &mut Stream,
    ctx: &Context,
    params: &StartupParams,
    binding: Option<&[u8]>,
) -> Result<Login, SessionError> {
    let config = ctx.config();
    let name = params.get("user").unwrap_or_default().to_string();
    tracing::Span::current().record("db", crate::admin::CONSOLE_DATABASE);
    tracing::Span::current().record("user", name.as_str());
    let secret = ctx.auth_file.load().get(&name).cloned();
    auth::authenticate(
        client,
        config.auth.method,
        &name,
        secret.as_ref(),
        &ctx.server_key,
        binding,
    )
    .await?;
    if secret.is_none() {
        return Err(AuthError::Failed(name).into());
    }
    match crate::admin::ConsoleUser::new(&config.admin, name) {
        Ok(user) => Ok(Login::Console(Box::new(user))),
        Err(name) => Err(SessionError::NotConsoleUser(name)),
    }
}

/// A client that has proved who it is and has no backend yet.
struct Authenticated {
    /// The pool it draws from.
    pool_key: PoolKey,
    /// What its checkouts need besides the key (tenant limits, or its
    /// server credential in passthrough).
    limits: PoolLimits,
    /// Its tenant; `None` in passthrough mode.
    tenant: Option<TenantId>,
    /// Its tenant's `config.max_clients`.
    max_clients: Option<usize>,
    /// Its tenant's own pool mode.
    pool_mode: Option<PoolMode>,
    /// The user name it authenticated as (without its tenant part).
    user: String,
    /// Its checked settings.
    wanted: settings::Settings,
}

/// Gets the authenticated client its first backend (waiting in the pool's
/// line, bounded by `query_wait_timeout`, not by `client_login_timeout`),
/// applies its settings, and finishes the login handshake.
async fn attach(
    client: &mut Stream,
    ctx: &Context,
    authed: Box<Authenticated>,
) -> Result<Box<Ready>, SessionError> {
    let config = ctx.config();
    let Authenticated {
        pool_key: key,
        limits,
        tenant,
        pool_mode,
        wanted,
        ..
    } = *authed;
    let mut buf = BytesMut::with_capacity(1024);
    let mut backend = ctx.pools.checkout(&key, &limits).await?;
    if let Err(e) = settings::apply(backend.backend(), &wanted).await {
        backend.release(&config.pool.server_reset_query).await;
        return Err(e);
    }

    let cancel_key = ctx.cancels.issue();
    messages::auth_ok(&mut buf);
    for (name, value) in &backend.backend().params {
        messages::parameter_status(&mut buf, name, value);
    }
    messages::backend_key_data(&mut buf, cancel_key.0, cancel_key.1);
    messages::ready_for_query(&mut buf, b'I');
    if let Err(e) = client.write_all(&buf).await {
        ctx.cancels.remove(cancel_key);
        backend.release(&config.pool.server_reset_query).await;
        return Err(ProtocolError::from(e).into());
    }
    // The client now has every reported value it was sent; in transaction
    // pooling they follow it to each backend it gets.
    let reported = backend.backend().params.iter().filter(|(name, _)| {
        txn::TRACKED_PARAMS.contains(&name.as_str()) && wanted.get(name).is_none()
    });
    let settings = settings::Settings::from_pairs(
        wanted
            .iter()
            .chain(reported.map(|(n, v)| (n.as_str(), v.as_str()))),
    );
    let mode = pool_mode
        .or_else(|| config.pool.database_pool_modes.get(&key.database).copied())
        .unwrap_or(config.pool.pool_mode);
    // Boxed: the session's future would otherwise keep room for it
    // while the client is served.
    Ok(Box::new(Ready {
        backend,
        key: cancel_key,
        tenant,
        pool_key: key,
        pool_limits: limits,
        settings,
        mode,
    }))
}

/// Finds the user's secret: the auth file first, then the registry.
async fn lookup_secret(
    ctx: &Context,
    resolved: &tenant::Resolved,
) -> Result<(Option<Secret>, AccessLevel), SessionError> {
    let file_key = format!("{}@{}", resolved.user, resolved.tenant);
    if let Some(secret) = ctx.auth_file.load().get(&file_key) {
        return Ok((Some(secret.clone()), AccessLevel::ReadWrite));
    }
    match ctx.registry.user(&resolved.tenant, &resolved.user).await? {
        Some(record) => match Secret::parse(&record.secret) {
            Ok(secret) => Ok((Some(secret), record.access)),
            Err(e) => {
                warn!(error = %e, "stored secret is malformed; treating the user as unknown");
                Ok((None, record.access))
            }
        },
        None => Ok((None, AccessLevel::ReadWrite)),
    }
}

/// Startup parameters handled by the proxy itself, never applied as settings.
pub(crate) fn is_connection_param(name: &str) -> bool {
    matches!(name, "user" | "database" | "options" | "replication")
}

/// A startup packet's parameters, for tests and tools.
pub fn startup_params(pairs: &[(&str, &str)]) -> StartupParams {
    StartupParams(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}
