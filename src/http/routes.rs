//! What each HTTP path answers: one table, [`table`], from which the router
//! is built and the route list ([`paths`]) is read, so the two cannot
//! differ. Add a route there, with its handler.
//!
//! Monitoring, open to anyone who reaches the listener:
//! - `GET /healthz`: 200 while the process runs (for `pgtenant healthcheck`).
//! - `GET /readyz`: 200 when the registry answers (tenant mode) and clients
//!   are accepted, else 503 with the reason.
//! - `GET /metrics`: the Prometheus text format (see `crate::metrics`).
//!
//! The admin API (`/tenants...`, handlers in `api`), behind `auth`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::handler::Handler;
use axum::http::{header, Method, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::Router;

use super::{api, auth, HttpState};

/// How long `/readyz` waits for the registry to answer.
const REGISTRY_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// One route.
pub struct Route {
    /// Its method.
    pub method: Method,
    /// Its path, `{name}` for a path parameter.
    pub path: &'static str,
    /// Whether it is part of the admin API (needs `auth`).
    pub api: bool,
    handler: MethodRouter<Arc<HttpState>>,
}

fn route<H, T>(method: Method, path: &'static str, api: bool, handler: H) -> Route
where
    H: Handler<T, Arc<HttpState>>,
    T: 'static,
{
    let filter = match MethodFilter::try_from(method.clone()) {
        Ok(filter) => filter,
        Err(_) => unreachable!("the table uses standard methods only"),
    };
    Route {
        method,
        path,
        api,
        handler: on(filter, handler),
    }
}

/// Every route.
pub fn table() -> Vec<Route> {
    vec![
        route(Method::GET, "/healthz", false, healthz),
        route(Method::GET, "/readyz", false, readyz),
        route(Method::GET, "/metrics", false, metrics),
        route(Method::GET, "/tenants", true, api::list),
        route(Method::POST, "/tenants", true, api::create),
        route(Method::GET, "/tenants/{id}", true, api::show),
        route(Method::PATCH, "/tenants/{id}", true, api::update),
        route(Method::DELETE, "/tenants/{id}", true, api::drop),
        route(Method::POST, "/tenants/{id}/suspend", true, api::suspend),
        route(Method::POST, "/tenants/{id}/resume", true, api::resume),
        route(
            Method::GET,
            "/tenants/{id}/migrations",
            true,
            api::migrations,
        ),
    ]
}

/// Method and path of every route, in table order.
pub fn paths() -> Vec<(Method, &'static str)> {
    table().into_iter().map(|r| (r.method, r.path)).collect()
}

/// Every route, sharing `state`; the API's behind the token check.
pub fn router(state: Arc<HttpState>) -> Router {
    let mut open = Router::new();
    let mut api = Router::new();
    for r in table() {
        if r.api {
            api = api.route(r.path, r.handler);
        } else {
            open = open.route(r.path, r.handler);
        }
    }
    let guard = axum::middleware::from_fn_with_state(Arc::clone(&state), auth::require_token);
    open.merge(api.route_layer(guard)).with_state(state)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_and_path_once() {
        let all = paths();
        for (i, a) in all.iter().enumerate() {
            assert!(
                !all[i + 1..].contains(a),
                "{} {} is in the table twice",
                a.0,
                a.1
            );
        }
        assert!(all.contains(&(Method::DELETE, "/tenants/{id}")));
    }
}
