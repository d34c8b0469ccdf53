//! The HTTP listener (`[http] listen_addr`): Prometheus metrics, health
//! checks and the admin API (`/tenants...`). This module binds and serves;
//! `routes` says what each path answers, `api` holds the admin API's
//! handlers, `auth` its token check, `error` its error bodies. What the
//! metrics contain is `crate::metrics`'s business; what the API does is
//! `crate::provision`'s.

pub mod api;
pub mod auth;
pub mod error;
pub mod routes;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::session::Context;

/// What every route may read.
pub struct HttpState {
    /// The proxy's shared state: pools, registry, counters, configuration.
    pub ctx: Arc<Context>,
    /// Cancelled when the proxy stops accepting clients (not ready any more).
    pub shutdown: CancellationToken,
}

/// Binds the HTTP listener; the error is the bind's.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    Ok((listener, bound))
}

/// Serves `listener` on `tracker` until `state.shutdown` fires; requests in
/// flight then finish, idle connections close.
pub fn spawn(listener: TcpListener, state: Arc<HttpState>, tracker: &TaskTracker) {
    let shutdown = state.shutdown.clone();
    let app = routes::router(state);
    tracker.spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            warn!(error = %e, "HTTP listener failed");
        }
    });
}
