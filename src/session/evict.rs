//! Closes the connections of tenants that may no longer be served, in every
//! pgtenant process: each one watches its own registry cache (kept by
//! LISTEN/NOTIFY), so it does not matter which process, CLI or API made the
//! change.
//!
//! A tenant that is `dropping`, gone from the registry, or `suspended` with
//! `--now` loses its clients at once, whatever they are doing (as the admin
//! console's KILL: a transaction in progress is rolled back by PostgreSQL
//! when its server connection closes), and its pools: idle server
//! connections close now, the others with their clients, so nothing is left
//! logged in as the tenant's roles. A plain suspend refuses new logins
//! (the login path does that) and closes connected clients at their next
//! transaction boundary: this wakes them (`ClientEntry::boundary`), and
//! each then asks the registry at its boundary ([`suspended`]), so a
//! resume before it lets the client go on.

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::clients::ClientEntry;
use super::Context;
use crate::protocol::{ErrorFields, SqlState};
use crate::tenant::{Reloaded, TenantId, TenantStatus};

/// Acts on every registry reload until `shutdown` fires. `changes` must be
/// subscribed before the first client logs in so no change is missed.
pub async fn run(
    ctx: Arc<Context>,
    mut changes: tokio::sync::broadcast::Receiver<Reloaded>,
    shutdown: CancellationToken,
) {
    loop {
        let reloaded = tokio::select! {
            () = shutdown.cancelled() => return,
            r = changes.recv() => match r {
                Ok(r) => r,
                // Some announcements were missed: look at everything.
                Err(RecvError::Lagged(_)) => Reloaded::All,
                Err(RecvError::Closed) => return,
            },
        };
        let only: Option<HashSet<&str>> = match &reloaded {
            Reloaded::All => None,
            Reloaded::Tenants(ids) => Some(ids.iter().map(String::as_str).collect()),
        };
        evict(&ctx, only.as_ref());
        wake_suspended(&ctx, only.as_ref());
    }
}

/// Whether `tenant` is suspended (without `--now`, which `evict` handles):
/// its clients must leave at their next transaction boundary, told so.
pub(super) fn suspended(ctx: &Context, tenant: Option<&TenantId>) -> Option<ErrorFields> {
    let tenant = tenant?;
    let suspended = ctx.registry.with_tenant(tenant.as_str(), |t| {
        t.status == TenantStatus::Suspended && !t.must_disconnect()
    });
    (suspended == Some(true)).then(|| {
        ErrorFields::fatal(
            SqlState::CANNOT_CONNECT_NOW,
            format!("tenant \"{tenant}\" is suspended"),
        )
    })
}

/// Wakes the clients of suspended tenants (of those in `only`, when
/// given), so that idle ones leave now and the others at their boundary.
fn wake_suspended(ctx: &Context, only: Option<&HashSet<&str>>) {
    for client in ctx.client_list.all() {
        let Some(tenant) = client.pool.as_ref().and_then(|p| p.tenant()) else {
            continue;
        };
        if only.is_none_or(|ids| ids.contains(tenant.as_str()))
            && suspended(ctx, Some(tenant)).is_some()
        {
            ctx.call_client(&client);
        }
    }
}

/// Ends a session-pooled client's relay at its next idle boundary while
/// its tenant is suspended.
pub(super) struct SuspendWatch<'a> {
    /// Whom to ask.
    pub ctx: &'a Context,
    /// Where the wake-ups arrive.
    pub entry: &'a ClientEntry,
    /// The client's tenant; `None` (passthrough): never.
    pub tenant: Option<&'a TenantId>,
}

impl super::boundary::Closer for SuspendWatch<'_> {
    async fn requested(&self) {
        if self.tenant.is_none() {
            std::future::pending::<()>().await;
        }
        self.entry.boundary.rung().await;
    }

    fn must_close(&self) -> bool {
        suspended(self.ctx, self.tenant).is_some()
    }
}

/// Whether connections of `tenant` may stay open, by the registry cache now.
fn may_stay(ctx: &Context, tenant: &TenantId) -> bool {
    ctx.registry
        .tenant(tenant.as_str())
        .is_some_and(|t| !t.must_disconnect())
}

/// Disconnects the clients and closes the pools of every tenant (of those
/// in `only`, when given) whose connections may not stay; returns the
/// tenants acted on.
pub fn evict(ctx: &Context, only: Option<&HashSet<&str>>) -> Vec<TenantId> {
    let considered = |t: &TenantId| only.is_none_or(|ids| ids.contains(t.as_str()));
    let mut doomed: Vec<TenantId> = Vec::new();
    let mut verdict = |t: &TenantId| -> bool {
        if doomed.contains(t) {
            return true;
        }
        if may_stay(ctx, t) {
            return false;
        }
        doomed.push(t.clone());
        true
    };
    let mut clients = 0;
    for client in ctx.client_list.all() {
        // Passthrough clients have no tenant to evict them for.
        let Some(tenant) = client.pool.as_ref().and_then(|p| p.tenant()) else {
            continue;
        };
        if considered(tenant) && verdict(tenant) {
            ctx.kill_client(&client);
            clients += 1;
        }
    }
    for view in ctx.pools.views() {
        if let Some(tenant) = view.key.tenant() {
            if considered(tenant) {
                verdict(tenant);
            }
        }
    }
    for tenant in &doomed {
        let servers = ctx.pools.close_tenant(tenant);
        info!(%tenant, idle_servers = servers, "tenant may not be served: connections closed");
    }
    if clients > 0 {
        info!(
            clients,
            "clients of dropped or suspended tenants disconnected"
        );
    }
    doomed
}
