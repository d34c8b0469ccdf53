//! The life of a client in transaction or statement pooling, after login:
//! wait for its next message without a server connection, check one out,
//! bring it to the client's settings, relay until the connection owes
//! nothing, give it back, repeat. The relaying itself is `txn`'s.

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tracing::debug;

use super::txn::{active, answer_cached_parses, answer_deallocate, ClientState, Period, TxnEnd};
use super::{settings, Context, Ready, TenantGate};
use crate::config::{optional_seconds, PoolMode};
use crate::net::Stream;
use crate::protocol::FrameReader;
use crate::protocol::{ErrorFields, SqlState};
use crate::stats::Meter;

/// Serves a logged-in client in `mode` until it leaves.
pub(super) async fn serve(mut client: Stream, ready: Ready, ctx: &Context, mode: PoolMode) {
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
    let failure = loop {
        // Between transactions: no server connection is held.
        let next = creader.ensure(&mut client, 5);
        let got = match client_idle_timeout {
            Some(limit) => match tokio::time::timeout(limit, next).await {
                Ok(r) => r,
                Err(_) => {
                    break Some(ErrorFields::fatal(
                        SqlState("57P05"),
                        "client_idle_timeout: closing an idle connection",
                    ))
                }
            },
            None => next.await,
        };
        match got {
            Ok(true) => {}
            _ => break None,
        }
        if creader.header().map(|(tag, _)| tag) == Some(b'X') {
            break None;
        }
        let local = answer_cached_parses(creader.buffered(), &cache, &mut state.statements)
            .or_else(|| answer_deallocate(creader.buffered(), &mut state.statements));
        if let Some((used, reply)) = local {
            creader.consume(used);
            if client.write_all(&reply).await.is_err() {
                break None;
            }
            continue;
        }
        let mut pooled = match ctx.pools.checkout(&pool_key, &pool_limits).await {
            Ok(b) => b,
            Err(e) => break Some(ErrorFields::fatal(e.sqlstate(), e.to_string())),
        };
        if let Err(e) = settings::apply(pooled.backend(), &state.params).await {
            pooled.release(reset_query).await;
            break Some(e.to_client());
        }
        let backend = pooled.backend();
        let (addr, backend_key) = (backend.addr.clone(), backend.key);
        ctx.cancels.attach(key, &addr, backend_key);
        let gate = TenantGate {
            registry: &ctx.registry,
            pools: &ctx.pools,
            tenant: &tenant,
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
                break (end == TxnEnd::ClientCorrupt)
                    .then(|| ErrorFields::fatal(SqlState::PROTOCOL_VIOLATION, "invalid message"));
            }
            TxnEnd::BackendGone | TxnEnd::BackendCorrupt => {
                drop(pooled);
                break Some(ErrorFields::fatal(
                    SqlState::CONNECTION_FAILURE,
                    "server connection lost",
                ));
            }
            TxnEnd::IdleTransactionTimeout => {
                drop(pooled);
                break Some(ErrorFields::fatal(
                    SqlState("25P03"),
                    "idle_transaction_timeout: closing a connection idle inside a transaction",
                ));
            }
            TxnEnd::TransactionInStatementMode => {
                drop(pooled);
                break Some(ErrorFields::fatal(
                    SqlState::FEATURE_NOT_SUPPORTED,
                    "transaction blocks are not allowed in statement pooling mode",
                ));
            }
        }
    };
    ctx.cancels.remove(key);
    debug!(?failure, "session ended");
    if let Some(error) = failure {
        ctx.errors.record(error.code.code());
        let mut buf = BytesMut::new();
        error.encode(&mut buf);
        let _ = client.write_all(&buf).await;
    }
    let _ = client.shutdown().await;
}
