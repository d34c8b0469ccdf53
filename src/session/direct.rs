//! The life of a client in session pooling, after login: it keeps the
//! server connection it logged in with, the relay runs until either side
//! leaves, and the connection is then cleaned and returned, or closed when
//! it may still be busy. The relaying itself is `relay`'s.

use tokio::io::AsyncWriteExt;
use tracing::debug;

use super::boundary::IdleLimits;
use super::clients::ClientEntry;
use super::events::{self, Ending};
use super::evict::{suspended, SuspendWatch};
use super::relay::{relay, RelayEnd, RelayState};
use super::{Context, Ready, TenantGate};
use crate::config::optional_seconds;
use crate::net::Stream;
use crate::protocol::{ErrorFields, SqlState};

/// Relays until either side leaves (or the client must: idle inside a
/// transaction too long, or its tenant suspended and the session at rest),
/// then returns or closes the backend.
pub(super) async fn serve(
    mut client: Stream,
    ready: Box<Ready>,
    ctx: &Context,
    entry: &ClientEntry,
) -> Ending {
    let Ready {
        mut backend,
        key,
        tenant,
        ..
    } = super::pooled::unbox(ready);
    let (addr, backend_key) = {
        let b = backend.backend();
        (b.addr.clone(), b.key)
    };
    ctx.cancels.attach(key, &addr, backend_key);
    let mut state = RelayState::default();
    state.backend.last_status = b'I';
    let gate = TenantGate {
        registry: &ctx.registry,
        pools: &ctx.pools,
        tenant: tenant.as_ref(),
        admin: &ctx.config().backend.admin_user,
        own_pid: backend_key.0,
    };
    let stats = std::sync::Arc::clone(backend.pool());
    let meter = crate::stats::Meter::new(&stats.stats);
    let pool = &ctx.config().pool;
    let idle = IdleLimits {
        in_transaction: optional_seconds(pool.idle_transaction_timeout),
        outside: optional_seconds(pool.client_idle_timeout),
    };
    let suspend = SuspendWatch {
        ctx,
        entry,
        tenant: tenant.as_ref(),
    };
    let end = relay(
        &mut client,
        &mut backend.backend().stream,
        &mut state,
        &gate,
        &meter,
        idle,
        &suspend,
    )
    .await;
    ctx.cancels.remove(key);
    debug!(?end, "session ended");
    let config = ctx.config();
    let log = &config.log;
    let ending = match end {
        RelayEnd::ClientTerminated | RelayEnd::ClientGone if state.backend_idle() => {
            backend.release(&ctx.config().pool.server_reset_query).await;
            Ending::Closed(relay_reason(&end))
        }
        RelayEnd::Closing => {
            // At rest outside a transaction: the connection is reusable,
            // and the error lands between messages.
            backend.release(&ctx.config().pool.server_reset_query).await;
            let error = suspended(ctx, tenant.as_ref()).unwrap_or_else(|| {
                ErrorFields::fatal(SqlState::CANNOT_CONNECT_NOW, "the tenant is suspended")
            });
            ctx.errors.record(error.code.code());
            events::send_error(&mut client, log, &error, None).await;
            Ending::Failed(error)
        }
        RelayEnd::ClientTerminated | RelayEnd::ClientGone | RelayEnd::ClientCorrupt => {
            let mut ending = Ending::Closed(relay_reason(&end));
            if end == RelayEnd::ClientCorrupt {
                let error =
                    ErrorFields::fatal(SqlState::PROTOCOL_VIOLATION, "invalid message length");
                ctx.errors.record(error.code.code());
                events::send_error(&mut client, log, &error, None).await;
                ending = Ending::Failed(error);
            }
            // The backend may still be running the client's query: stop it,
            // then close the connection rather than return it.
            if state.client.syncs != state.backend.ready {
                if let Err(e) = crate::pool::send_cancel(&addr, backend_key).await {
                    debug!(error = %e, "cancel of abandoned query failed");
                }
            }
            drop(backend);
            ending
        }
        RelayEnd::ClientIdleTimeout => {
            // At rest outside a transaction: the connection is reusable,
            // and the error lands between messages.
            backend.release(&ctx.config().pool.server_reset_query).await;
            let error = ErrorFields::client_idle_timeout();
            ctx.errors.record(error.code.code());
            events::send_error(&mut client, log, &error, None).await;
            Ending::Failed(error)
        }
        RelayEnd::IdleTransactionTimeout => {
            // Between messages both ways: the error cannot land inside one.
            // The connection closes with its transaction, never reused.
            let error = ErrorFields::idle_transaction_timeout();
            ctx.errors.record(error.code.code());
            events::send_error(&mut client, log, &error, None).await;
            drop(backend);
            Ending::Failed(error)
        }
        RelayEnd::BackendGone | RelayEnd::BackendCorrupt => {
            let why = relay_reason(&end);
            let mut ending = Ending::Closed(why);
            if state.backend.at_boundary() {
                let error =
                    ErrorFields::fatal(SqlState::CONNECTION_FAILURE, "server connection lost");
                let cause = (why != error.message).then_some(why);
                ctx.errors.record(error.code.code());
                events::send_error(&mut client, log, &error, cause).await;
                ending = Ending::Failed(error);
            }
            drop(backend);
            ending
        }
    };
    let _ = client.shutdown().await;
    ending
}

/// Why a relay's end closed the client, in a phrase.
fn relay_reason(end: &RelayEnd) -> &'static str {
    match end {
        RelayEnd::ClientTerminated => "client close request",
        RelayEnd::ClientGone => "client connection lost",
        RelayEnd::ClientCorrupt => "client sent a malformed message",
        RelayEnd::BackendGone => "server connection lost",
        RelayEnd::BackendCorrupt => "server sent a malformed message",
        RelayEnd::IdleTransactionTimeout => "idle_transaction_timeout",
        RelayEnd::ClientIdleTimeout => "client_idle_timeout",
        RelayEnd::Closing => "its tenant was suspended",
    }
}
