//! What each HTTP path answers. Add a route here, with its handler.
//!
//! - `GET /healthz`: 200 while the process runs (for `pgtenant healthcheck`).
//! - `GET /readyz`: 200 when the registry answers (tenant mode) and clients
//!   are accepted, else 503 with the reason.
//! - `GET /metrics`: the Prometheus text format (see `crate::metrics`).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::HttpState;

/// How long `/readyz` waits for the registry to answer.
const REGISTRY_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Every route, sharing `state`.
pub fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<Arc<HttpState>>) -> (StatusCode, &'static str) {
    if state.shutdown.is_cancelled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not accepting clients: shutting down\n",
        );
    }
    let needs_registry = !state.ctx.config().tenants.passthrough();
    if needs_registry && !state.ctx.registry.reachable(REGISTRY_CHECK_TIMEOUT).await {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the tenant registry is not reachable\n",
        );
    }
    (StatusCode::OK, "ready\n")
}

async fn metrics(State(state): State<Arc<HttpState>>) -> impl IntoResponse {
    let body = crate::metrics::render(&state.ctx);
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], body)
}
