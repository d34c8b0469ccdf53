//! The life of a client in transaction or statement pooling, after login:
//! wait for its next message without a server connection, check one out,
//! bring it to the client's settings, relay until the connection owes
//! nothing, give it back, repeat. The relaying itself is `txn`'s.

use tokio::io::AsyncWriteExt;
use tracing::debug;

use super::clients::{ClientEntry, ClientState as Listed};
use super::events::{self, Ending};
use super::evict::suspended;
use super::txn::{active, answer_cached_parses, answer_deallocate, ClientState, Period, TxnEnd};
use super::{settings, Context, Ready, SessionError, TenantGate};
use std::sync::Arc;

use crate::config::{optional_seconds, Config, PoolMode};
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

/// Serves a logged-in client in `mode` until it leaves, and says why it left.
pub(super) async fn serve(
    mut client: Stream,
    ready: Box<Ready>,
    ctx: &Context,
    mode: PoolMode,
    entry: &ClientEntry,
) -> Ending {
    // In a block with no await: the login's server connection (a large
    // value) goes back to the pool without taking room in this future.
    let (cache, key, tenant, pool_key, mut pool_limits, client_settings) = {
        let Ready {
            backend,
            key,
            tenant,
            pool_key,
            pool_limits,
            settings,
            ..
        } = unbox(ready);
        let cache = std::sync::Arc::clone(backend.statements());
        backend.release_as_is();
        (cache, key, tenant, pool_key, pool_limits, settings)
    };
    let mut state = ClientState {
        statements: Default::default(),
        params: client_settings,
        dirty: false,
        expect: Default::default(),
    };
    // Small: most messages are small, and idle clients are the many.
    let mut creader = FrameReader::new(1024);
    let config = ctx.config();
    let client_idle_timeout = optional_seconds(config.pool.client_idle_timeout);
    let idle_transaction_timeout = optional_seconds(config.pool.idle_transaction_timeout);
    let mut served_while_draining = false;
    // Suspended between the login's check and the client's listing, when
    // no wake-up could reach it yet. Later ones do: one that comes during
    // a transaction is kept for the wait after it.
    let mut suspended_at_login = suspended(ctx, tenant.as_ref());
    let outcome: Outcome = loop {
        if let Some(error) = suspended_at_login.take() {
            break Err((error, None));
        }
        // Between transactions: no server connection is held.
        let next = async {
            let wait = async {
                // An idle plain client holds no read buffer: wait for bytes
                // first, then read them into a fresh one.
                if creader.buffered().is_empty() {
                    creader.release();
                    client.readable().await?;
                }
                creader.ensure(&mut client, 5).await
            };
            match client_idle_timeout {
                Some(limit) => tokio::time::timeout(limit, wait).await,
                None => Ok(wait.await),
            }
        };
        let got = tokio::select! {
            got = next => match got {
                Ok(r) => r,
                Err(_) => break Err((ErrorFields::client_idle_timeout(), None)),
            },
            error = leave_requested(ctx, entry, tenant.as_ref()) => break Err((error, None)),
        };
        match got {
            Ok(true) => {}
            _ => break Ok("client connection lost"),
        }
        if creader.header().map(|(tag, _)| tag) == Some(b'X') {
            break Ok("client close request");
        }
        // Draining: a client that finished a transaction since gets no other
        // (one that leaves at once, as a reconnecting client does, sees no error).
        if served_while_draining {
            break Err((shutting_down(), None));
        }
        let local = answer_cached_parses(creader.buffered(), &cache, &mut state.statements)
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
        if let Some(tenant) = &tenant {
            let servable = ctx.registry.with_tenant(tenant.as_str(), |info| {
                if info.pool_size != pool_limits.size {
                    pool_limits.size = info.pool_size;
                }
                if info.statement_timeout != pool_limits.statement_timeout {
                    pool_limits
                        .statement_timeout
                        .clone_from(&info.statement_timeout);
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
            pool_key: &pool_key,
            pool_limits: &pool_limits,
            entry,
            key,
            tenant: tenant.as_ref(),
            cache: &cache,
            mode,
            idle_transaction_timeout,
        };
        // Boxed: a transaction's state (checkout, relay, release) is large
        // and lives only while the client holds a server connection; in the
        // session's own future it would make every idle client as large.
        if let Some(outcome) = Box::pin(turn.run(&mut client, &mut creader, &mut state)).await {
            break outcome;
        }
        served_while_draining = ctx.draining.is_cancelled();
    };
    ctx.cancels.remove(key);
    debug!(?outcome, "session ended");
    let ending = match outcome {
        Ok(why) => Ending::Closed(why),
        Err((error, cause)) => {
            ctx.errors.record(error.code.code());
            events::send_error(&mut client, &config.log, &error, cause.as_deref()).await;
            Ending::Failed(error)
        }
    };
    let _ = client.shutdown().await;
    ending
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
        entry.set_state(Listed::Waiting);
        let mut pooled = match ctx.pools.checkout(pool_key, pool_limits).await {
            Ok(b) => b,
            Err(e) => return Some(Err(SessionError::Pool(e).to_client_and_log())),
        };
        entry.set_state(Listed::Active);
        if let Err(e) = settings::apply(pooled.backend(), &state.params).await {
            pooled.release(&config.pool.server_reset_query).await;
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
        entry.set_state(Listed::Idle);
        // Reported parameters changed during the period hold on this connection too.
        let backend = pooled.backend();
        for (name, value) in state.params.iter() {
            if let Some(slot) = backend.params.iter_mut().find(|(n, _)| n == name) {
                if slot.1 != value {
                    value.clone_into(&mut slot.1);
                }
            }
        }
        match end {
            TxnEnd::Idle if state.dirty => {
                state.dirty = false;
                pooled.release(&config.pool.server_reset_query).await;
            }
            TxnEnd::Idle => pooled.release_as_is(),
            TxnEnd::ClientTerminated | TxnEnd::ClientGone | TxnEnd::ClientCorrupt => {
                // The connection may be running the client's query: stop it and close.
                if let Err(e) = crate::pool::send_cancel(&addr, backend_key).await {
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

/// Resolves `DRAIN_IDLE` after draining begins.
async fn drain_idle(draining: &tokio_util::sync::CancellationToken) {
    draining.cancelled().await;
    tokio::time::sleep(DRAIN_IDLE).await;
}

/// Resolves, for a client between transactions, with what it is told when
/// it must leave at this boundary: the proxy is draining (`DRAIN_IDLE`
/// after SIGTERM), or its tenant was suspended (woken through its entry,
/// and confirmed by the registry). Cancel safe.
async fn leave_requested(
    ctx: &Context,
    entry: &ClientEntry,
    tenant: Option<&TenantId>,
) -> ErrorFields {
    let suspend = async {
        if tenant.is_none() {
            std::future::pending::<()>().await;
        }
        loop {
            entry.boundary.notified().await;
            if let Some(error) = suspended(ctx, tenant) {
                return error;
            }
        }
    };
    tokio::select! {
        () = drain_idle(&ctx.draining) => shutting_down(),
        error = suspend => error,
    }
}

/// What a drained client is told.
fn shutting_down() -> ErrorFields {
    ErrorFields::fatal(SqlState::ADMIN_SHUTDOWN, "pgtenant is shutting down")
}
