//! The admin API's handlers: the tenant lifecycle over HTTP, JSON in and
//! out. Each one parses and checks the request, then calls the same
//! `crate::provision` function as the matching `pgtenant tenant` command;
//! errors become [`ApiError`]s. Routing and authentication are `routes`'
//! and `auth`'s; `docs/openapi.yaml` describes every route.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::HttpState;
use crate::provision::{self, lifecycle};
use crate::tenant::{TenantId, TenantStatus};

/// One of a tenant's pools in the proxy that answers `GET /tenants/{id}`.
#[derive(Debug, Serialize)]
struct PoolState {
    database: String,
    /// `rw` or `ro`.
    access: &'static str,
    size: usize,
    /// Server connections open or opening.
    server_connections: usize,
    idle: usize,
    /// Clients waiting for a server connection.
    waiting: usize,
    /// Clients logged in to this pool.
    clients: usize,
}

/// `tenant show`'s answer plus this proxy's pools of the tenant.
#[derive(Debug, Serialize)]
struct Shown {
    #[serde(flatten)]
    details: lifecycle::TenantDetails,
    pools: Vec<PoolState>,
}

/// This proxy's pools of tenant `id`, by database and access level.
fn pool_states(state: &HttpState, id: &TenantId) -> Vec<PoolState> {
    let clients = state.ctx.client_list.all();
    let mut pools: Vec<PoolState> = state
        .ctx
        .pools
        .views()
        .into_iter()
        .filter(|v| v.key.tenant() == Some(id))
        .map(|v| PoolState {
            access: v.key.access().suffix(),
            size: v.size,
            server_connections: v.open,
            idle: v.idle,
            waiting: v.waiting,
            clients: clients
                .iter()
                .filter(|c| c.pool.as_deref() == Some(&v.key))
                .count(),
            database: v.key.database,
        })
        .collect();
    pools.sort_by(|a, b| (&a.database, a.access).cmp(&(&b.database, b.access)));
    pools
}

/// How long a status change waits for this proxy to hear of it before answering.
const HEAR_LIMIT: Duration = Duration::from_secs(5);

/// `POST /tenants`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    id: String,
    #[serde(default)]
    name: String,
    settings: Option<serde_json::Value>,
    /// `shared` or `dedicated`, as `tenant create --tier`.
    tier: Option<String>,
    /// A dedicated tenant's `[backends]` name, as `tenant create --backend`.
    backend: Option<String>,
}

/// `PATCH /tenants/{id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchBody {
    name: Option<String>,
    settings: Option<serde_json::Value>,
}

/// The answer to suspend and resume.
#[derive(Debug, Serialize)]
struct StatusReply {
    id: String,
    status: &'static str,
    /// Whether proxies close the tenant's connections (suspend `now`).
    disconnect_clients: bool,
}

/// The answer to a delete.
#[derive(Debug, Serialize)]
struct DropReply {
    id: String,
    dropped: bool,
    /// The backup directory, on the proxy's host; `null` without a backup.
    backup: Option<String>,
    terminated_sessions: i64,
}

type ApiResult = Result<Response, ApiError>;

/// `value` as a JSON response with `status`.
fn json(status: StatusCode, value: &impl Serialize) -> ApiResult {
    let body = serde_json::to_string(value).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding the answer: {e}"),
        )
    })?;
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// The request body as `T`; a body that is not JSON of that shape is a 400.
fn body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::bad_request(
            "the request needs a JSON object as its body",
        ));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}

fn tenant_id(id: &str) -> Result<TenantId, ApiError> {
    TenantId::parse(id).map_err(|e| ApiError::bad_request(e.to_string()))
}

fn check_settings(settings: &serde_json::Value) -> Result<(), ApiError> {
    lifecycle::check_settings_change(settings).map_err(ApiError::bad_request)
}

/// The boolean query parameter `name` (`true`/`false`, `1`/`0`; bare
/// `?name` is true), `default` when absent. Other parameters are refused.
pub fn flag(query: Option<&str>, name: &str, default: bool) -> Result<bool, ApiError> {
    let mut value = default;
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (key, given) = pair.split_once('=').unwrap_or((pair, "true"));
        if key != name {
            return Err(ApiError::bad_request(format!(
                "unknown query parameter \"{key}\" (this route takes \"{name}\")"
            )));
        }
        value = match given.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "" => true,
            "false" | "0" | "no" => false,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "query parameter \"{name}\" must be true or false, not \"{given}\""
                )))
            }
        };
    }
    Ok(value)
}

/// Refuses a query string on routes that take none.
fn no_query(query: Option<&str>) -> Result<(), ApiError> {
    match query {
        Some(q) if !q.is_empty() => Err(ApiError::bad_request(format!(
            "this route takes no query parameters (got \"{q}\")"
        ))),
        _ => Ok(()),
    }
}

/// `GET /tenants`: every tenant, by id.
pub async fn list(State(state): State<Arc<HttpState>>, RawQuery(q): RawQuery) -> ApiResult {
    no_query(q.as_deref())?;
    let tenants = provision::list_tenants(&state.ctx.config()).await?;
    json(StatusCode::OK, &tenants)
}

/// `POST /tenants`: creates a tenant (as `tenant create --settings`).
/// An existing active or suspended tenant is a conflict; one whose creation
/// was interrupted is finished.
pub async fn create(State(state): State<Arc<HttpState>>, bytes: Bytes) -> ApiResult {
    let request: CreateBody = body(&bytes)?;
    let id = tenant_id(&request.id)?;
    if let Some(settings) = &request.settings {
        check_settings(settings)?;
    }
    let tier = provision::Tier::requested(request.tier.as_deref(), request.backend.as_deref())
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    let config = state.ctx.config();
    if let Some(provision::Tier::Dedicated(name)) = tier {
        if config.cluster(Some(name)).is_none() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("backend {name:?} is not configured"),
            ));
        }
    }
    if let Some(status @ ("active" | "suspended")) =
        lifecycle::tenant_status(&config, &id).await?.as_deref()
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("tenant {id} already exists ({status})"),
        ));
    }
    provision::create_tenant_on(&config, &id, &request.name, tier).await?;
    if let Some(settings) = &request.settings {
        lifecycle::set_tenant_config(&config, &id, settings).await?;
    }
    let details = provision::show_tenant(&config, &id).await?;
    let mut response = json(StatusCode::CREATED, &details)?;
    if let Ok(location) = HeaderValue::from_str(&format!("/tenants/{id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// `GET /tenants/{id}`: as `tenant show`.
pub async fn show(
    State(state): State<Arc<HttpState>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    no_query(q.as_deref())?;
    let id = tenant_id(&id)?;
    let details = provision::show_tenant(&state.ctx.config(), &id).await?;
    let pools = pool_states(&state, &id);
    json(StatusCode::OK, &Shown { details, pools })
}

/// `PATCH /tenants/{id}`: a new name and/or settings merged into the
/// tenant's config (`null` removes a key), as `tenant configure`.
pub async fn update(
    State(state): State<Arc<HttpState>>,
    Path(id): Path<String>,
    bytes: Bytes,
) -> ApiResult {
    let id = tenant_id(&id)?;
    let request: PatchBody = body(&bytes)?;
    if let Some(settings) = &request.settings {
        check_settings(settings)?;
    }
    let config = state.ctx.config();
    if let Some(name) = &request.name {
        lifecycle::set_tenant_name(&config, &id, name).await?;
    }
    if let Some(settings) = &request.settings {
        lifecycle::set_tenant_config(&config, &id, settings).await?;
    }
    let details = provision::show_tenant(&config, &id).await?;
    json(StatusCode::OK, &details)
}

/// `DELETE /tenants/{id}[?backup=false]`: as `tenant drop --yes`, with a
/// backup under `provision.backup_dir` first unless `backup=false`.
pub async fn drop(
    State(state): State<Arc<HttpState>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let id = tenant_id(&id)?;
    let backup = flag(q.as_deref(), "backup", true)?;
    let options = lifecycle::DropOptions {
        backup,
        backup_dir: None,
    };
    let report = provision::drop_tenant(&state.ctx.config(), &id, &options).await?;
    state
        .ctx
        .registry
        .wait_for(&id, HEAR_LIMIT, |t| t.is_none())
        .await;
    json(
        StatusCode::OK,
        &DropReply {
            id: id.to_string(),
            dropped: true,
            backup: report.backup.map(|p| p.display().to_string()),
            terminated_sessions: report.terminated_sessions,
        },
    )
}

/// `POST /tenants/{id}/suspend[?now=true]`: as `tenant suspend [--now]`;
/// answers once this proxy has heard of it.
pub async fn suspend(
    State(state): State<Arc<HttpState>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let id = tenant_id(&id)?;
    let now = flag(q.as_deref(), "now", false)?;
    let config = state.ctx.config();
    if now {
        provision::suspend_tenant_now(&config, &id).await?;
    } else {
        provision::suspend_tenant(&config, &id).await?;
    }
    state
        .ctx
        .registry
        .wait_for(&id, HEAR_LIMIT, |t| {
            t.is_some_and(|t| t.status == TenantStatus::Suspended && (!now || t.disconnect_clients))
        })
        .await;
    let disconnect = state
        .ctx
        .registry
        .tenant(id.as_str())
        .is_some_and(|t| t.disconnect_clients);
    json(
        StatusCode::OK,
        &StatusReply {
            id: id.to_string(),
            status: "suspended",
            disconnect_clients: disconnect || now,
        },
    )
}

/// `POST /tenants/{id}/resume`: as `tenant resume`; answers once this
/// proxy has heard of it.
pub async fn resume(
    State(state): State<Arc<HttpState>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    no_query(q.as_deref())?;
    let id = tenant_id(&id)?;
    provision::resume_tenant(&state.ctx.config(), &id).await?;
    state
        .ctx
        .registry
        .wait_for(&id, HEAR_LIMIT, |t| {
            t.is_some_and(|t| t.status == TenantStatus::Active)
        })
        .await;
    json(
        StatusCode::OK,
        &StatusReply {
            id: id.to_string(),
            status: "active",
            disconnect_clients: false,
        },
    )
}

/// `GET /tenants/{id}/migrations`: per service database, the migrations
/// applied to the tenant and those still pending.
pub async fn migrations(
    State(state): State<Arc<HttpState>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    no_query(q.as_deref())?;
    let id = tenant_id(&id)?;
    let status = provision::tenant_migrations(&state.ctx.config(), &id).await?;
    json(StatusCode::OK, &status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags() {
        assert_eq!(flag(None, "now", false), Ok(false));
        assert_eq!(flag(Some("now=true"), "now", false), Ok(true));
        assert_eq!(flag(Some("now"), "now", false), Ok(true));
        assert_eq!(flag(Some("backup=false"), "backup", true), Ok(false));
        assert_eq!(flag(Some("backup=0"), "backup", true), Ok(false));
        let e = flag(Some("now=maybe"), "now", false).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let e = flag(Some("later=1"), "now", false).unwrap_err();
        assert!(e.message.contains("later"), "{}", e.message);
    }

    #[test]
    fn bodies() {
        let ok: CreateBody = body(&Bytes::from_static(br#"{"id": "acme"}"#)).unwrap();
        assert_eq!(ok.id, "acme");
        assert!(ok.settings.is_none());
        let e =
            body::<CreateBody>(&Bytes::from_static(br#"{"id": "a", "nmae": "x"}"#)).unwrap_err();
        assert!(e.message.contains("nmae"), "{}", e.message);
        assert!(body::<PatchBody>(&Bytes::new()).is_err());
        assert!(body::<PatchBody>(&Bytes::from_static(b"[1")).is_err());
    }
}
