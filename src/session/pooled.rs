//! The life of a client in transaction or statement pooling, after login:
//! wait for its next message without a server connection, check one out,
//! bring it to the client's settings, relay until the connection owes
//! nothing, give it back, repeat. The relaying itself is `txn`'s.

use tokio::io::AsyncWriteExt;
use tracing::debug;

use super::clients::{ClientEntry, ClientState as Listed};
use super::events::{self, Ending};
use super::txn::{active, answer_cached_parses, answer_deallocate, ClientState, Period, TxnEnd};
use super::{settings, Context, Ready, SessionError, TenantGate};
use crate::config::{optional_seconds, PoolMode};
use crate::net::Stream;
use crate::protocol::FrameReader;
use crate::protocol::{ErrorFields, SqlState};
use crate::stats::Meter;

/// How a pooled client's life ended. `Ok`: why it left; `Err`: the error it
/// is sent, and the detail behind it that only the log gets.
type Outcome = Result<&'static str, (ErrorFields, Option<String>)>;

/// An error of the proxy's own for the client, with no hidden detail.
fn fatal(code: SqlState, message: &str) -> (ErrorFields, Option<String>) {
    (ErrorFields::fatal(code, message), None)
}

/// Serves a logged-in client in `mode` until it leaves, and says why it left.
pub(super) async fn serve(
    mut client: Stream,
    ready: Ready,
    ctx: &Context,
    mode: PoolMode,
    entry: &ClientEntry,
) -> Ending {
    let Ready {
        backend,
        key,
        tenant,
        pool_key,
        pool_limits,
        settings: client_settings,
        ..
    } = ready;
    let cache = std::sync::Arc::clone(backend.statements());
    backend.release_as_is();
    let mut state = ClientState {
        statements: Default::default(),
        params: client_settings,
        dirty: false,
        expect: Default::default(),
    };
    // Small: most messages are small, and idle clients are the many.
    let mut creader = FrameReader::new(1024);
    let config = ctx.config();
    let reset_query = &config.pool.server_reset_query;
    let client_idle_timeout = optional_seconds(config.pool.client_idle_timeout);
    let idle_transaction_timeout = optional_seconds(config.pool.idle_transaction_timeout);
    let mut served_while_draining = false;
    let outcome: Outcome = loop {
        // Between transactions: no server connection is held.
        let next = async {
            match client_idle_timeout {
                Some(limit) => tokio::time::timeout(limit, creader.ensure(&mut client, 5)).await,
                None => Ok(creader.ensure(&mut client, 5).await),
            }
        };
        let got = tokio::select! {
            got = next => match got {
                Ok(r) => r,
                Err(_) => {
                    break Err(fatal(
                        SqlState("57P05"),
                        "client_idle_timeout: closing an idle connection",
                    ))
                }
            },
            _ = drain_idle(&ctx.draining) => break Err((shutting_down(), None)),
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
        entry.set_state(Listed::Waiting);
        let mut pooled = match ctx.pools.checkout(&pool_key, &pool_limits).await {
            Ok(b) => b,
            Err(e) => break Err(SessionError::Pool(e).to_client_and_log()),
        };
        entry.set_state(Listed::Active);
        if let Err(e) = settings::apply(pooled.backend(), &state.params).await {
            pooled.release(reset_query).await;
            break Err(e.to_client_and_log());
        }
        let backend = pooled.backend();
        let (addr, backend_key) = (backend.addr.clone(), backend.key);
        ctx.cancels.attach(key, &addr, backend_key);
        let gate = TenantGate {
            registry: &ctx.registry,
            pools: &ctx.pools,
            tenant: tenant.as_ref(),
            admin: &config.backend.admin_user,
            own_pid: backend_key.0,
        };
        let pool = std::sync::Arc::clone(pooled.pool());
        let meter = Meter::new(&pool.stats);
        let period = Period {
            mode,
            cache: &cache,
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
                &mut creader,
                pooled.backend(),
                &mut state,
                &period,
            )
            .await
        };
        ctx.cancels.detach(key);
        served_while_draining = ctx.draining.is_cancelled();
        entry.set_state(Listed::Idle);
        // Reported parameters changed during the period hold on this connection too.
        let backend = pooled.backend();
        for (name, value) in &state.params {
            if let Some(slot) = backend.params.iter_mut().find(|(n, _)| n == name) {
                slot.1.clone_from(value);
            }
        }
        match end {
            TxnEnd::Idle if state.dirty => {
                state.dirty = false;
                pooled.release(reset_query).await;
            }
            TxnEnd::Idle => pooled.release_as_is(),
            TxnEnd::ClientTerminated | TxnEnd::ClientGone | TxnEnd::ClientCorrupt => {
                // The connection may be running the client's query: stop it and close.
                if let Err(e) = crate::pool::send_cancel(&addr, backend_key).await {
                    debug!(error = %e, "cancel of abandoned query failed");
                }
                drop(pooled);
                break match end {
                    TxnEnd::ClientCorrupt => {
                        Err(fatal(SqlState::PROTOCOL_VIOLATION, "invalid message"))
                    }
                    TxnEnd::ClientTerminated => Ok("client close request"),
                    _ => Ok("client connection lost"),
                };
            }
            TxnEnd::BackendGone | TxnEnd::BackendCorrupt => {
                drop(pooled);
                break Err(fatal(
                    SqlState::CONNECTION_FAILURE,
                    "server connection lost",
                ));
            }
            TxnEnd::IdleTransactionTimeout => {
                drop(pooled);
                break Err(fatal(
                    SqlState("25P03"),
                    "idle_transaction_timeout: closing a connection idle inside a transaction",
                ));
            }
            TxnEnd::TransactionInStatementMode => {
                drop(pooled);
                break Err(fatal(
                    SqlState::FEATURE_NOT_SUPPORTED,
                    "transaction blocks are not allowed in statement pooling mode",
                ));
            }
        }
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

/// How long a client between transactions may stay once draining began,
/// so one that has just logged in (or is about to send) gets its
/// transaction done instead of an error.
const DRAIN_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

/// Resolves `DRAIN_IDLE` after draining begins.
async fn drain_idle(draining: &tokio_util::sync::CancellationToken) {
    draining.cancelled().await;
    tokio::time::sleep(DRAIN_IDLE).await;
}

/// What a drained client is told.
fn shutting_down() -> ErrorFields {
    ErrorFields::fatal(SqlState::ADMIN_SHUTDOWN, "pgtenant is shutting down")
}
