//! The console's commands that change things: PAUSE, RESUME, RECONNECT,
//! DISABLE, ENABLE, KILL, RELOAD, SET, SHUTDOWN, SUSPEND TENANT and
//! RESUME TENANT. Each returns its CommandComplete tag or an error.

use std::time::Duration;

use tracing::info;

use super::{settings, AdminError};
use crate::protocol::SqlState;
use crate::session::Context;
use crate::tenant::{TenantId, TenantStatus};

/// Checks that `database` is a service database.
fn service_database(ctx: &Context, database: &str) -> Result<(), AdminError> {
    if ctx.config().backend.databases.iter().any(|d| d == database) {
        Ok(())
    } else {
        Err(AdminError::new(
            SqlState::INVALID_CATALOG_NAME,
            format!("no such database: {database}"),
        ))
    }
}

fn checked<'a>(ctx: &Context, database: Option<&'a str>) -> Result<Option<&'a str>, AdminError> {
    if let Some(db) = database {
        service_database(ctx, db)?;
    }
    Ok(database)
}

/// PAUSE [db]: new checkouts wait; returns once every server connection of
/// those pools is idle, and closes them.
pub async fn pause(ctx: &Context, database: Option<&str>) -> Result<&'static str, AdminError> {
    let database = checked(ctx, database)?;
    ctx.pools.controls().pause(database);
    info!(
        database = database.unwrap_or("*"),
        "PAUSE: waiting for server connections to go idle"
    );
    ctx.pools.drain(database).await;
    info!(database = database.unwrap_or("*"), "PAUSE: done");
    Ok("PAUSE")
}

/// RESUME [db].
pub fn resume(ctx: &Context, database: Option<&str>) -> Result<&'static str, AdminError> {
    let database = checked(ctx, database)?;
    if !ctx.pools.controls().resume(database) {
        let what = database.map_or("pooler".to_string(), |db| format!("database {db}"));
        return Err(AdminError::protocol(format!("{what} is not paused")));
    }
    info!(database = database.unwrap_or("*"), "RESUME");
    Ok("RESUME")
}

/// RECONNECT [db]: every server connection closes when next released.
pub fn reconnect(ctx: &Context, database: Option<&str>) -> Result<&'static str, AdminError> {
    let database = checked(ctx, database)?;
    ctx.pools.reconnect(database);
    Ok("RECONNECT")
}

/// DISABLE db / ENABLE db.
pub fn disable(ctx: &Context, database: &str, disabled: bool) -> Result<&'static str, AdminError> {
    service_database(ctx, database)?;
    if disabled {
        ctx.pools.controls().disable(database);
        Ok("DISABLE")
    } else {
        ctx.pools.controls().enable(database);
        Ok("ENABLE")
    }
}

/// KILL db: its clients are disconnected and its server connections closed now.
pub fn kill(ctx: &Context, database: &str) -> Result<&'static str, AdminError> {
    service_database(ctx, database)?;
    let mut killed = 0;
    for c in ctx.client_list.all() {
        if c.pool.as_ref().is_some_and(|p| p.database == database) {
            ctx.kill_client(&c);
            killed += 1;
        }
    }
    let closed = ctx.pools.close_idle(Some(database));
    info!(database, clients = killed, idle_servers = closed, "KILL");
    Ok("KILL")
}

/// RELOAD.
pub fn reload(ctx: &Context) -> Result<&'static str, AdminError> {
    crate::reload::reload(ctx).map_err(|e| AdminError::protocol(format!("RELOAD failed: {e}")))?;
    Ok("RELOAD")
}

/// SET key = value.
pub fn set(ctx: &Context, key: &str, value: &str) -> Result<&'static str, AdminError> {
    let new = settings::set(&ctx.config(), key, value)
        .map_err(|e| AdminError::new(SqlState::INVALID_PARAMETER_VALUE, e))?;
    crate::reload::apply(ctx, new).map_err(|e| AdminError::protocol(format!("SET failed: {e}")))?;
    info!(key, value, "SET");
    Ok("SET")
}

/// SHUTDOWN: the proxy stops.
pub fn shutdown(ctx: &Context) -> &'static str {
    info!("SHUTDOWN from the admin console");
    ctx.shutdown.cancel();
    "SHUTDOWN"
}

/// SUSPEND TENANT id [NOW], through the registry (as `pgtenant tenant
/// suspend [--now]` does); returns once this proxy has heard of the change.
pub async fn suspend_tenant(
    ctx: &Context,
    id: &str,
    now: bool,
) -> Result<&'static str, AdminError> {
    tenant_status(ctx, id, Some(now)).await?;
    Ok("SUSPEND")
}

/// RESUME TENANT id, as `pgtenant tenant resume`; returns once this proxy
/// has heard of the change.
pub async fn resume_tenant(ctx: &Context, id: &str) -> Result<&'static str, AdminError> {
    tenant_status(ctx, id, None).await?;
    Ok("RESUME")
}

/// Suspends (`Some(now)`) or resumes (`None`) tenant `id`.
async fn tenant_status(ctx: &Context, id: &str, suspend: Option<bool>) -> Result<(), AdminError> {
    let id = TenantId::parse(id)
        .map_err(|e| AdminError::new(SqlState::INVALID_PARAMETER_VALUE, e.to_string()))?;
    let config = ctx.config();
    let result = match suspend {
        Some(false) => crate::provision::suspend_tenant(&config, &id).await,
        Some(true) => crate::provision::suspend_tenant_now(&config, &id).await,
        None => crate::provision::resume_tenant(&config, &id).await,
    };
    result.map_err(|e| match e {
        crate::provision::ProvisionError::UnknownTenant(_) => AdminError::new(
            SqlState::INVALID_CATALOG_NAME,
            format!("tenant \"{id}\" does not exist"),
        ),
        other => AdminError::protocol(other.to_string()),
    })?;
    let wanted = match suspend {
        Some(_) => TenantStatus::Suspended,
        None => TenantStatus::Active,
    };
    // The registry's NOTIFY normally arrives at once; don't wait forever.
    ctx.registry
        .wait_for(&id, HEAR_LIMIT, |t| t.is_some_and(|t| t.status == wanted))
        .await;
    Ok(())
}

/// How long a tenant command waits for this proxy to hear of its change.
const HEAR_LIMIT: Duration = Duration::from_secs(5);
