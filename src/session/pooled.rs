//! The life of a client in transaction or statement pooling, after login:
//! wait for its next message without a server connection, check one out,
//! bring it to the client's settings, relay until the connection owes
//! nothing, give it back, repeat. The relaying itself is `txn`'s.

use std::time::Instant;

use tokio::io::AsyncWriteExt;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tracing::{debug, info_span, Instrument};

use super::clients::{ClientEntry, ClientState as Listed};
use super::events::{self, Ending};
use super::evict::suspended;
use super::park::{Resume, Socket};
use super::txn::{active, answer_cached_parses, answer_deallocate, ClientState, Period, TxnEnd};
use super::{settings, Context, Ready, Seat, SessionError, TenantGate};
use std::sync::Arc;

use crate::config::{optional_seconds, Config, PoolMode};
use crate::intern::Interner;
use crate::net::Stream;
use crate::pool::{PoolKey, PoolLimits, StatementCache};
use crate::protocol::FrameReader;
use crate::protocol::{ErrorFields, SqlState};
use crate::stats::Meter;
use crate::tenant::{TenantId, TenantStatus};

/// How a pooled client's life ended. `Ok`: why it left; `Err`: the error it
/// is sent, and the detail behind it that only the log gets.
type Outcome = Result<&'static str, (ErrorFields, Option<String>)>;

/// An error of the proxy's own for the client, with no hidden detail.
fn fatal(code: SqlState, message: &str) -> (ErrorFields, Option<String>) {
    (ErrorFields::fatal(code, message), None)
}

/// Moves a `Ready` out of its box and frees the box now: moving fields out
/// of a box in place would keep its allocation until the session ends.
pub(super) fn unbox(ready: Box<Ready>) -> Ready {
    *ready
}

/// The limits pooled clients hold, one copy of each.
static LIMITS: Interner<PoolLimits> = Interner::new();

/// How a pooled client's time in one task ended.
pub(super) enum Served {
    /// The client is gone, so.
    Ended(Ending),
    /// It has been idle a while: it may wait parked, holding this.
    Park(Socket, Box<Between>),
}

/// What a pooled client keeps between transactions: all it needs to go on,
/// owned, so that it can wait parked without a task.
pub(super) struct Between {
    cache: Arc<StatementCache>,
    key: (i32, i32),
    /// A copy shared by the clients with the same limits.
    pool_limits: Arc<PoolLimits>,
    state: ClientState,
    mode: PoolMode,
    /// Since when it waits for its next message (`client_idle_timeout`).
    idle_since: Instant,
}

/// Serves a logged-in client in `mode`, from its login's server connection on.
pub(super) async fn start(
    client: Stream,
    ready: Box<Ready>,
    ctx: &Context,
    mode: PoolMode,
    entry: &ClientEntry,
) -> Served {
    // In a block with no await: the login's server connection (a large
    // value) goes back to the pool without taking room in this future.
    let between = {
        let Ready {
            backend,
            key,
            pool_limits,
            settings,
            ..
        } = unbox(ready);
        let cache = Arc::clone(backend.statements());
        backend.release_as_is();
        Box::new(Between {
            cache,
            key,
            pool_limits: LIMITS.of(&pool_limits),
            state: ClientState {
                statements: Default::default(),
                params: settings,
                dirty: false,
            },
            mode,
            idle_since: Instant::now(),
        })
    };
    // Suspended between the login's check and the client's listing, when
    // no wake-up could reach it yet. Later ones do: one that comes during
    // a transaction is kept for the wait after it.
    if let Some(error) = suspended(ctx, entry.tenant()) {
        return Served::Ended(end(client, ctx, &between, Err((error, None))).await);
    }
    // Parked at its first wait unless its first message is there: a new
    // client often sits idle (an application's pool opening its
    // connections), and the task it logged in with is kilobytes.
    entry.request_park();
    serve(client, between, ctx, entry).await
}

/// Serves a pooled client until it leaves or may park.
async fn serve(
    mut client: Stream,
    mut between: Box<Between>,
    ctx: &Context,
    entry: &ClientEntry,
) -> Served {
    // Small: most messages are small, and idle clients are the many; made
    // at the first message, so a client that logs in (or comes back from
    // the parking lot) and sits idle holds none.
    let mut creader = FrameReader::unallocated(1024);
    let config = ctx.config();
    let client_idle_timeout = optional_seconds(config.pool.client_idle_timeout);
    let idle_transaction_timeout = optional_seconds(config.pool.idle_transaction_timeout);
    let mut served_while_draining = false;
    // A park request still open when the first message comes is moot:
    // the client is busy (one that logs in and asks at once, say).
    let mut first_message = true;
    // Its pool (the entry's: it is the same for the client's whole life).
    let Some(pool_key) = entry.pool.as_ref() else {
        let outcome = Err(fatal(SqlState::INTERNAL_ERROR, "client without a pool"));
        return Served::Ended(end(client, ctx, &between, outcome).await);
    };
    let tenant = pool_key.tenant();
    let outcome: Outcome = loop {
        // Between transactions: no server connection is held.
        let idle_deadline = client_idle_timeout.map(|limit| between.idle_since + limit);
        let woke = {
            let next = async {
                // Once made, the read buffer stays for the next message: a
                // busy client allocates none per transaction, and one that
                // sits idle long enough parks and holds none.
                let wait = async {
                    if creader.is_unallocated() {
                        client.readable().await?;
                    }
                    creader.ensure(&mut client, 5).await
                };
                match idle_deadline {
                    Some(at) => tokio::time::timeout_at(at.into(), wait).await,
                    None => Ok(wait.await),
                }
            };
            tokio::select! {
                // Polled in this order: no random draw per poll.
                biased;
                got = next => got.map_err(|_| Leave::Told(ErrorFields::client_idle_timeout())),
                leave = leave_requested(ctx, entry, tenant) => Err(leave),
            }
        };
        let got = match woke {
            Ok(got) => got,
            Err(Leave::Told(error)) => break Err((error, None)),
            Err(Leave::Park) => {
                let plain = matches!(client, Stream::Tcp(_) | Stream::Unix(_));
                if plain && creader.buffered().is_empty() && !ctx.draining.is_cancelled() {
                    return match into_socket(client) {
                        Ok(socket) => {
                            // What an idle client's statement map grew goes back first.
                            between.state.statements.trim();
                            Served::Park(socket, between)
                        }
                        Err(e) => {
                            debug!(error = %e, "client cannot be parked");
                            ctx.cancels.remove(between.key);
                            Served::Ended(Ending::Closed("client connection lost"))
                        }
                    };
                }
                continue;
            }
        };
        match got {
            Ok(true) => {}
            _ => break Ok("client connection lost"),
        }
        if std::mem::take(&mut first_message) {
            entry.take_park_request();
        }
        if creader.header().map(|(tag, _)| tag) == Some(b'X') {
            break Ok("client close request");
        }
        // Draining: a client that finished a transaction since gets no other
        // (one that leaves at once, as a reconnecting client does, sees no error).
        if served_while_draining {
            break Err((shutting_down(), None));
        }
        let Between {
            cache,
            key,
            pool_limits,
            state,
            mode,
            idle_since,
        } = &mut *between;
        let local = answer_cached_parses(creader.buffered(), cache, &mut state.statements)
            .or_else(|| answer_deallocate(creader.buffered(), &mut state.statements));
        if let Some((used, reply)) = local {
            creader.consume(used);
            if client.write_all(&reply).await.is_err() {
                break Ok("client connection lost");
            }
            continue;
        }
        // The tenant's settings as the registry says now, so a changed
        // pool_size applies to connected clients too; read in place and
        // copied only when they changed (no allocation per transaction).
        // Passthrough clients have no tenant: their login limits stand.
        if let Some(tenant) = tenant {
            let servable = ctx.registry.with_tenant(tenant.as_str(), |info| {
                if info.pool_size != pool_limits.size
                    || info.statement_timeout != pool_limits.statement_timeout
                {
                    let mut changed = PoolLimits::clone(pool_limits);
                    changed.size = info.pool_size;
                    changed
                        .statement_timeout
                        .clone_from(&info.statement_timeout);
                    *pool_limits = LIMITS.of(&changed);
                }
                match info.status {
                    _ if info.must_disconnect() => Servable::No,
                    // Suspended while its next message was on the way.
                    TenantStatus::Suspended => Servable::Suspended,
                    _ => Servable::Yes,
                }
            });
            match servable {
                Some(Servable::Yes) => {}
                Some(Servable::Suspended) => {
                    break Err(fatal(
                        SqlState::CANNOT_CONNECT_NOW,
                        &format!("tenant \"{tenant}\" is suspended"),
                    ))
                }
                _ => {
                    break Err(fatal(
                        SqlState::CANNOT_CONNECT_NOW,
                        &format!("tenant \"{tenant}\" is not available"),
                    ))
                }
            }
        }
        let turn = Turn {
            ctx,
            config: &config,
            pool_key,
            pool_limits,
            entry,
            key: *key,
            tenant,
            cache,
            mode: *mode,
            idle_transaction_timeout,
        };
        // Boxed: a transaction's state (checkout, relay, release) is large
        // and lives only while the client holds a server connection; in the
        // session's own future it would make every idle client as large.
        if let Some(outcome) = Box::pin(turn.run(&mut client, &mut creader, state)).await {
            break outcome;
        }
        *idle_since = entry.since_instant();
        served_while_draining = ctx.drain_began().is_some();
    };
    Served::Ended(end(client, ctx, &between, outcome).await)
}

/// The end of a pooled client: its cancel key forgotten, its error (if
/// any) sent and counted, its socket shut.
async fn end(mut client: Stream, ctx: &Context, between: &Between, outcome: Outcome) -> Ending {
    ctx.cancels.remove(between.key);
    debug!(?outcome, "session ended");
    let ending = match outcome {
        Ok(why) => Ending::Closed(why),
        Err((error, cause)) => {
            ctx.errors.record(error.code.code());
            events::send_error(&mut client, &ctx.config().log, &error, cause.as_deref()).await;
            Ending::Failed(error)
        }
    };
    let _ = client.shutdown().await;
    ending
}

/// A plain client's socket, out of the runtime, for the parking lot.
fn into_socket(client: Stream) -> std::io::Result<Socket> {
    match client {
        Stream::Tcp(s) => s.into_std().map(Socket::Tcp),
        Stream::Unix(s) => s.into_std().map(Socket::Unix),
        _ => Err(std::io::Error::other("a TLS client cannot be parked")),
    }
}

/// The client again as the relay drives it, from its parked socket.
fn unparked(socket: Socket) -> std::io::Result<Stream> {
    Ok(match socket {
        Socket::Tcp(s) => Stream::Tcp(tokio::net::TcpStream::from_std(s)?),
        Socket::Unix(s) => Stream::Unix(tokio::net::UnixStream::from_std(s)?),
    })
}

/// A client waiting in the parking lot: what it keeps between
/// transactions, its places, and its age for the disconnection line.
pub struct Parked {
    seat: Seat,
    /// Out of its box: the lot boxes the whole of a parked client once.
    between: Between,
    started: tokio::time::Instant,
    /// Keeps a drain waiting for the client, which has no task to wait for.
    _tracked: TaskTrackerToken,
}

/// Ends a pooled client's task: `Some` when the client is gone (its places
/// given back), `None` when it was parked.
pub(super) fn settle(served: Served, seat: Seat, started: tokio::time::Instant) -> Option<Ending> {
    match served {
        Served::Ended(ending) => {
            drop(seat);
            Some(ending)
        }
        Served::Park(socket, between) => {
            park(seat, socket, between, started);
            None
        }
    }
}

/// Puts a client in the parking lot, or goes on serving it in a new task
/// when the lot refuses it (a drain began). Its `Between` leaves its box,
/// which is freed: the lot boxes the parked client whole.
#[allow(clippy::boxed_local)]
fn park(seat: Seat, socket: Socket, between: Box<Between>, started: tokio::time::Instant) {
    let ctx = Arc::clone(&seat.ctx);
    let Some(entry) = seat.entry.clone() else {
        return;
    };
    let deadline = optional_seconds(ctx.config().pool.client_idle_timeout)
        .map(|limit| between.idle_since + limit);
    entry.set_parked(true);
    let parked = Parked {
        seat,
        between: *between,
        started,
        _tracked: ctx.tracker.token(),
    };
    match ctx.parking.park(entry.id, socket, parked, deadline) {
        // A KILL, suspension or drain that came before the client was in
        // the lot could not call it back: it is called back now.
        Ok(()) => {
            let must_leave = entry.kill.is_pulled()
                || ctx.draining.is_cancelled()
                || suspended(&ctx, entry.tenant()).is_some();
            if must_leave {
                ctx.parking.unpark(entry.id);
            }
        }
        Err((socket, parked)) => parked.resume(socket),
    }
}

impl Resume for Parked {
    fn resume(self, socket: Socket) {
        let tracker = self.seat.ctx.tracker.clone();
        tracker.spawn(resumed(self, socket));
    }
}

/// A parked client's next task: served from where it waited, in a span
/// like its first task's.
async fn resumed(parked: Parked, socket: Socket) {
    let Parked {
        seat,
        between,
        started,
        _tracked,
    } = parked;
    drop(_tracked);
    let between = Box::new(between);
    let Some(entry) = seat.entry.clone() else {
        return;
    };
    let ctx = Arc::clone(&seat.ctx);
    let span = info_span!(
        "client",
        peer = %entry.peer,
        tenant = entry.tenant().map(TenantId::as_str),
        db = entry.database(),
        user = %entry.user,
    );
    async move {
        entry.set_parked(false);
        let served = match unparked(socket) {
            Ok(client) => {
                tokio::select! {
                    // Polled in this order: no random draw per poll.
                    biased;
                    served = serve(client, between, &ctx, &entry) => served,
                    () = entry.kill.pulled() => Served::Ended(Ending::Closed(super::KILLED)),
                }
            }
            Err(e) => {
                debug!(error = %e, "parked client cannot be resumed");
                ctx.cancels.remove(between.key);
                Served::Ended(Ending::Closed("client connection lost"))
            }
        };
        if let Some(ending) = settle(served, seat, started) {
            events::closed(&ctx.config().log, started.elapsed(), &ending);
        }
    }
    .instrument(span)
    .await
}

/// Whether a client's tenant may have its next transaction.
enum Servable {
    Yes,
    /// Suspended: the client leaves at this boundary.
    Suspended,
    /// Dropping, gone, or suspended `--now`.
    No,
}

/// What one transaction needs to know of its session.
struct Turn<'a> {
    ctx: &'a Context,
    config: &'a Config,
    pool_key: &'a PoolKey,
    pool_limits: &'a PoolLimits,
    entry: &'a ClientEntry,
    key: (i32, i32),
    tenant: Option<&'a TenantId>,
    cache: &'a Arc<StatementCache>,
    mode: PoolMode,
    idle_transaction_timeout: Option<std::time::Duration>,
}

impl Turn<'_> {
    /// One transaction (or statement): a server connection checked out and
    /// brought to the client's settings, the relay until it owes nothing,
    /// and its return. `Some`: the session ends so.
    async fn run(
        self,
        client: &mut Stream,
        creader: &mut FrameReader,
        state: &mut ClientState,
    ) -> Option<Outcome> {
        let Turn {
            ctx,
            config,
            pool_key,
            pool_limits,
            entry,
            key,
            tenant,
            cache,
            mode,
            idle_transaction_timeout,
        } = self;
        // Listed as waiting only when it has to wait: most checkouts are
        // done at their first poll. In a future of its own, dropped once
        // it is done, not held beside the relay's state.
        let checked_out = async {
            let mut checkout = std::pin::pin!(ctx.pools.checkout(pool_key, pool_limits));
            match futures_util::poll!(checkout.as_mut()) {
                std::task::Poll::Ready(r) => r,
                std::task::Poll::Pending => {
                    entry.set_state(Listed::Waiting);
                    checkout.await
                }
            }
        };
        let mut pooled = match checked_out.await {
            Ok(b) => b,
            Err(e) => return Some(Err(SessionError::Pool(e).to_client_and_log())),
        };
        entry.set_state(Listed::Active);
        if let Err(e) = settings::apply(pooled.backend(), &state.params).await {
            // Boxed, as after the relay: rare, and large inline.
            Box::pin(pooled.release(&config.pool.server_reset_query)).await;
            return Some(Err(e.to_client_and_log()));
        }
        let backend = pooled.backend();
        let (addr, backend_key) = (backend.addr.clone(), backend.key);
        ctx.cancels.attach(key, &addr, backend_key);
        let gate = TenantGate {
            registry: &ctx.registry,
            pools: &ctx.pools,
            tenant,
            admin: &config.backend.admin_user,
            own_pid: backend_key.0,
        };
        let pool = std::sync::Arc::clone(pooled.pool());
        let meter = Meter::new(&pool.stats);
        let period = Period {
            mode,
            cache,
            max_prepared: config.pool.max_prepared_statements,
            gate: &gate,
            idle_transaction_timeout,
            meter: &meter,
        };
        let end = {
            let (mut crx, mut ctx_w) = client.split();
            active(
                &mut crx,
                &mut ctx_w,
                creader,
                pooled.backend(),
                state,
                &period,
            )
            .await
        };
        ctx.cancels.detach(key);
        // Idle since the last ReadyForQuery: the meter read the clock then.
        match meter.last_ready() {
            Some(at) => entry.set_state_at(Listed::Idle, at),
            None => entry.set_state(Listed::Idle),
        }
        match end {
            TxnEnd::Idle if state.dirty => {
                state.dirty = false;
                // Boxed: a reset holds the connection in its future, which
                // inline would make every transaction's future as large.
                Box::pin(pooled.release(&config.pool.server_reset_query)).await;
            }
            TxnEnd::Idle => pooled.release_as_is(),
            TxnEnd::ClientTerminated | TxnEnd::ClientGone | TxnEnd::ClientCorrupt => {
                // The connection may be running the client's query: stop it and close.
                if let Err(e) = Box::pin(crate::pool::send_cancel(&addr, backend_key)).await {
                    debug!(error = %e, "cancel of abandoned query failed");
                }
                drop(pooled);
                return Some(match end {
                    TxnEnd::ClientCorrupt => {
                        Err(fatal(SqlState::PROTOCOL_VIOLATION, "invalid message"))
                    }
                    TxnEnd::ClientTerminated => Ok("client close request"),
                    _ => Ok("client connection lost"),
                });
            }
            TxnEnd::BackendGone | TxnEnd::BackendCorrupt => {
                drop(pooled);
                return Some(Err(fatal(
                    SqlState::CONNECTION_FAILURE,
                    "server connection lost",
                )));
            }
            TxnEnd::IdleTransactionTimeout => {
                drop(pooled);
                return Some(Err((ErrorFields::idle_transaction_timeout(), None)));
            }
            TxnEnd::TransactionInStatementMode => {
                drop(pooled);
                return Some(Err(fatal(
                    SqlState::FEATURE_NOT_SUPPORTED,
                    "transaction blocks are not allowed in statement pooling mode",
                )));
            }
        }
        None
    }
}

/// How long a client between transactions may stay once draining began,
/// so one that has just logged in (or is about to send) gets its
/// transaction done instead of an error.
const DRAIN_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

/// Why a client between transactions is woken.
enum Leave {
    /// It must leave, told this.
    Told(ErrorFields),
    /// It was asked to park.
    Park,
}

/// Resolves, for a client between transactions, when it must leave at
/// this boundary (`DRAIN_IDLE` after a drain began, or its tenant was
/// suspended, confirmed by the registry) or was asked to park; all of these
/// wake it through its entry. Cancel safe.
async fn leave_requested(ctx: &Context, entry: &ClientEntry, tenant: Option<&TenantId>) -> Leave {
    loop {
        if let Some(began) = ctx.drain_began() {
            tokio::time::sleep_until(began + DRAIN_IDLE).await;
            return Leave::Told(shutting_down());
        }
        entry.boundary.rung().await;
        if let Some(error) = suspended(ctx, tenant) {
            return Leave::Told(error);
        }
        if entry.take_park_request() {
            return Leave::Park;
        }
    }
}

/// What a drained client is told.
fn shutting_down() -> ErrorFields {
    ErrorFields::fatal(SqlState::ADMIN_SHUTDOWN, "pgtenant is shutting down")
}
