//! `pgtenant migrate status`: per service database, how many tenants are at
//! each migration version, and where the `tenant_template` reference stands.
//!
//! Also one tenant's applied and pending migrations ([`tenant_migrations`]).
//! Reads only the registry and the migration files; applying migrations is
//! [`crate::provision::migrate`]'s job.

use serde::Serialize;

use crate::config::Config;
use crate::tenant::TenantId;

use super::migrate::{load_migrations, TEMPLATE_ID};
use super::{admin_connect, db_err, ProvisionError};

/// Tenants sharing one latest applied version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionCount {
    /// The latest applied migration file, `None` for none at all.
    pub version: Option<String>,
    /// Active or suspended tenants at that version.
    pub tenants: i64,
    /// Migration files after that version, still to apply.
    pub pending: usize,
}

/// The migration state of one service database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DatabaseStatus {
    /// The service database.
    pub database: String,
    /// Migration files found for it, in order.
    pub files: Vec<String>,
    /// Where `tenant_template` stands (`None`: never migrated).
    pub template: Option<String>,
    /// Tenants grouped by latest applied version (file names compared
    /// bytewise, as the files are ordered), newest first.
    pub versions: Vec<VersionCount>,
}

/// For every configured service database: the migration files, the
/// template's version, and how many active or suspended tenants are at each
/// version.
pub async fn migration_status(config: &Config) -> Result<Vec<DatabaseStatus>, ProvisionError> {
    let registry = admin_connect(config, &config.backend.registry_database).await?;
    let mut out = Vec::new();
    for db in &config.backend.databases {
        let files: Vec<String> = load_migrations(config, db)?
            .into_iter()
            .map(|m| m.version)
            .collect();
        let rows = registry
            .query(
                "SELECT v, count(*) FROM (
                     SELECT max(m.version COLLATE \"C\") AS v
                     FROM commons.tenants t
                     LEFT JOIN commons.schema_migrations m
                            ON m.tenant_id = t.id AND m.database = $1
                     WHERE t.status IN ('active', 'suspended')
                     GROUP BY t.id) s
                 GROUP BY v ORDER BY v DESC NULLS LAST",
                &[db],
            )
            .await
            .map_err(db_err(format!("reading migration versions in {db}")))?;
        let template: Option<String> = registry
            .query_one(
                "SELECT max(version COLLATE \"C\") FROM commons.schema_migrations WHERE tenant_id = $1 AND database = $2",
                &[&TEMPLATE_ID, db],
            )
            .await
            .map_err(db_err(format!("reading the template's version in {db}")))?
            .get(0);
        let versions = rows
            .iter()
            .map(|r| {
                let version: Option<String> = r.get(0);
                let pending = files
                    .iter()
                    .filter(|f| version.as_deref().is_none_or(|v| f.as_str() > v))
                    .count();
                VersionCount {
                    version,
                    tenants: r.get(1),
                    pending,
                }
            })
            .collect();
        out.push(DatabaseStatus {
            database: db.clone(),
            files,
            template,
            versions,
        });
    }
    Ok(out)
}

/// One migration recorded as applied to a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppliedMigration {
    /// The migration file's name.
    pub version: String,
    /// When it was applied, UTC, `YYYY-MM-DD HH:MM:SS`.
    pub applied_at: String,
}

/// A tenant's migrations in one service database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TenantMigrations {
    /// The service database.
    pub database: String,
    /// Applied migrations, in order.
    pub applied: Vec<AppliedMigration>,
    /// Migration files not applied yet, in order.
    pub pending: Vec<String>,
}

/// Per configured service database: the migrations applied to tenant `id`
/// and the files still pending for it.
pub async fn tenant_migrations(
    config: &Config,
    id: &TenantId,
) -> Result<Vec<TenantMigrations>, ProvisionError> {
    let registry = admin_connect(config, &config.backend.registry_database).await?;
    let known = registry
        .query_opt(
            "SELECT 1 FROM commons.tenants WHERE id = $1",
            &[&id.as_str()],
        )
        .await
        .map_err(db_err(format!("reading tenant {id}")))?;
    if known.is_none() {
        return Err(ProvisionError::UnknownTenant(id.to_string()));
    }
    let rows = registry
        .query(
            "SELECT database, version,
                    to_char(applied_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')
             FROM commons.schema_migrations
             WHERE tenant_id = $1 ORDER BY database, version COLLATE \"C\"",
            &[&id.as_str()],
        )
        .await
        .map_err(db_err(format!("reading migrations of {id}")))?;
    let mut out = Vec::new();
    for db in &config.backend.databases {
        let applied: Vec<AppliedMigration> = rows
            .iter()
            .filter(|r| r.get::<_, &str>(0) == db)
            .map(|r| AppliedMigration {
                version: r.get(1),
                applied_at: r.get(2),
            })
            .collect();
        let pending = load_migrations(config, db)?
            .into_iter()
            .map(|m| m.version)
            .filter(|v| !applied.iter().any(|a| &a.version == v))
            .collect();
        out.push(TenantMigrations {
            database: db.clone(),
            applied,
            pending,
        });
    }
    Ok(out)
}
