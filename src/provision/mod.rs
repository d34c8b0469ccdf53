//! Provisioning: everything that shapes the PostgreSQL side of pgtenant.
//!
//! This module owns `pgtenant init` (registry and service databases, see
//! [`init`]), tenant creation ([`tenant`]), the rest of the tenant lifecycle
//! (list, show, suspend, resume, drop: [`lifecycle`]), migrations across every
//! tenant schema ([`migrate`], [`migrate_status`]), per-tenant backups
//! ([`backup`], [`restore`]), a
//! throwaway local PostgreSQL cluster for tests and quickstart ([`cluster`]), and
//! the quickstart demo setup ([`quickstart`]). The SQL it applies lives in
//! `sql/`. It leaves reading the registry at runtime (cache, LISTEN/NOTIFY) to
//! `crate::tenant`, and backend connections for clients to `crate::pool`.

pub mod admin_views;
pub mod backup;
pub mod cluster;
pub mod drift;
pub mod init;
pub mod lifecycle;
pub mod migrate;
pub mod migrate_status;
pub mod quickstart;
pub mod restore;
pub mod tenant;

pub use admin_views::{rebuild_admin_views, ViewsReport};
pub use backup::backup_tenant;
pub use cluster::{server_binaries_available, ClusterOptions, LocalCluster};
pub use drift::{drift, Difference, TenantDrift};
pub use init::{init, init_dedicated};
pub use lifecycle::{
    drop_tenant, list_tenants, resume_tenant, show_tenant, suspend_tenant, suspend_tenant_now,
    TenantDetails, TenantSummary,
};
pub use migrate::{migrate, MigrateEvent, MigrateOptions, TargetOutcome};
pub use migrate_status::{
    migration_status, tenant_migrations, AppliedMigration, DatabaseStatus, TenantMigrations,
    VersionCount,
};
pub use quickstart::prepare;
pub use restore::restore_tenant;
pub use tenant::{add_user, create_tenant, create_tenant_on, Tier};

use std::time::Duration;

use crate::config::{Cluster, Config};

/// Why a provisioning step failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// A statement or connection failed; `context` says what was being done.
    #[error("{context}: {}", db_message(source))]
    Db {
        /// What was being done, e.g. `creating database crm_db`.
        context: String,
        /// The driver's error.
        source: tokio_postgres::Error,
    },
    /// A file or process could not be handled.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The local PostgreSQL cluster could not be set up or started.
    #[error("{0}")]
    Cluster(String),
    /// A migration file failed or no longer matches what was applied.
    #[error("migration {file}: {message}")]
    Migration {
        /// The migration file (path or name).
        file: String,
        /// What went wrong.
        message: String,
    },
    /// A request that cannot be carried out as asked (e.g. a tenant being dropped).
    #[error("{0}")]
    Invalid(String),
    /// The tenant is not in the registry.
    #[error("tenant {0} does not exist")]
    UnknownTenant(String),
    /// A string given as a tenant id is not one.
    #[error(transparent)]
    InvalidId(#[from] crate::tenant::InvalidTenantId),
}

/// The server's message with its detail and hint, or the driver's text.
pub(crate) fn db_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{} ({})", db.message(), db.code().code());
            if let Some(detail) = db.detail() {
                s.push_str(&format!("; detail: {detail}"));
            }
            if let Some(hint) = db.hint() {
                s.push_str(&format!("; hint: {hint}"));
            }
            s
        }
        None => e.to_string(),
    }
}

/// Adds context to a driver error.
pub(crate) fn db_err(
    context: impl Into<String>,
) -> impl FnOnce(tokio_postgres::Error) -> ProvisionError {
    let context = context.into();
    move |source| ProvisionError::Db { context, source }
}

/// Adds context to an I/O error.
pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ProvisionError {
    let context = context.into();
    move |source| ProvisionError::Io { context, source }
}

/// Quotes an SQL identifier: `"name"` with inner `"` doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes an SQL string literal for statements that take no parameters
/// (`CREATE ROLE ... PASSWORD`): `'...'` with `'` doubled, as `E'...'` when it
/// holds a backslash.
pub fn quote_literal(value: &str) -> String {
    let body = value.replace('\'', "''");
    if body.contains('\\') {
        format!("E'{}'", body.replace('\\', "\\\\"))
    } else {
        format!("'{body}'")
    }
}

/// Connects to `dbname` on the shared cluster (`[backend]`, which holds the
/// registry) as the admin role; see [`cluster_connect`].
pub async fn admin_connect(
    config: &Config,
    dbname: &str,
) -> Result<tokio_postgres::Client, ProvisionError> {
    cluster_connect(&config.backend.shared_cluster(), dbname).await
}

/// Connects to `dbname` on `cluster` as its admin role and spawns the
/// connection task. The host may be a Unix socket directory (a path
/// starting with `/`). Notices below WARNING are suppressed.
pub async fn cluster_connect(
    cluster: &Cluster,
    dbname: &str,
) -> Result<tokio_postgres::Client, ProvisionError> {
    let mut pg = tokio_postgres::Config::new();
    pg.host(&cluster.host)
        .port(cluster.port)
        .user(&cluster.admin_user)
        .dbname(dbname)
        .application_name("pgtenant-provision")
        .options("-c client_min_messages=warning")
        .connect_timeout(Duration::from_secs(10));
    if !cluster.admin_password.is_empty() {
        pg.password(&cluster.admin_password);
    }
    let (client, connection) = pg
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(db_err(format!(
            "connecting to database {dbname} at {}:{} as {}",
            cluster.host, cluster.port, cluster.admin_user
        )))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "provisioning connection closed");
        }
    });
    Ok(client)
}

/// The cluster of tenant `id`, whose registry row names `backend` (`None`:
/// the shared cluster); an error when this configuration has no such
/// `[backends]` entry.
pub(crate) fn tenant_cluster(
    config: &Config,
    id: &str,
    backend: Option<&str>,
) -> Result<Cluster, ProvisionError> {
    config.cluster(backend).ok_or_else(|| {
        ProvisionError::Invalid(format!(
            "tenant {id} lives on backend {:?}, which is not configured: add [backends.{}] to the configuration",
            backend.unwrap_or_default(),
            backend.unwrap_or_default()
        ))
    })
}

/// The `backend` column of tenant `id`'s registry row (`None`: shared, or
/// no such tenant).
pub(crate) async fn registered_backend(
    registry: &tokio_postgres::Client,
    id: &str,
) -> Result<Option<String>, ProvisionError> {
    Ok(registry
        .query_opt("SELECT backend FROM commons.tenants WHERE id = $1", &[&id])
        .await
        .map_err(db_err(format!("reading the backend of tenant {id}")))?
        .and_then(|r| r.get(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("tenant_acme"), "\"tenant_acme\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("a\\b'"), "E'a\\\\b'''");
    }
}
