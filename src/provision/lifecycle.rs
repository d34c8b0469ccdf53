//! The tenant lifecycle after creation: list, show, suspend, resume and drop
//! (`pgtenant tenant list|show|suspend|resume|drop`).
//!
//! Status changes only touch `commons.tenants`; running proxies learn of them
//! through the registry's NOTIFY trigger and refuse suspended or dropping
//! tenants at once, and close the connections of dropping ones and of those
//! suspended `--now` (`crate::session::evict`). Creation lives in [`crate::provision::tenant`], backups in
//! [`crate::provision::backup`].

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use tokio_postgres::Client;

use crate::config::Config;
use crate::tenant::id::{AccessLevel, TenantId};

use super::tenant::lock_tenant;
use super::tenant::run_under_grant_lock;
use super::{admin_connect, cluster_connect, db_err, quote_ident, tenant_cluster, ProvisionError};

/// How long a drop waits for the tenant roles' sessions to go after they were terminated.
const TERMINATE_WAIT: Duration = Duration::from_secs(10);

/// One line of `pgtenant tenant list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TenantSummary {
    /// Tenant id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// `provisioning`, `active`, `suspended` or `dropping`.
    pub status: String,
    /// `shared` or `dedicated`.
    pub tier: String,
    /// Creation time, UTC, `YYYY-MM-DD HH:MM:SS`.
    pub created: String,
}

/// A tenant's schema in one service database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SchemaDetails {
    /// The service database.
    pub database: String,
    /// The schema name, `tenant_<id>`.
    pub schema: String,
    /// Whether the schema exists.
    pub exists: bool,
    /// Tables in it.
    pub tables: i64,
    /// Bytes used by its tables, indexes and TOAST.
    pub size_bytes: i64,
    /// Applied migrations recorded for this database, in order.
    pub migrations: Vec<String>,
}

/// Server connections logged in as one of a tenant's roles, as PostgreSQL
/// sees them (every proxy's pools, and anyone else logged in as the role).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerConnections {
    /// The service database.
    pub database: String,
    /// `tenant_<id>_rw` or `tenant_<id>_ro`.
    pub role: String,
    /// `pg_stat_activity.state`: `active`, `idle`, `idle in transaction`, ...
    pub state: String,
    /// How many.
    pub count: i64,
}

/// What `pgtenant tenant show` prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TenantDetails {
    /// The registry row's main columns (inline in JSON: `id`, `name`, ...).
    #[serde(flatten)]
    pub summary: TenantSummary,
    /// Backend name of a `dedicated` tenant.
    pub backend: Option<String>,
    /// The tenant's `config` (e.g. `{"pool_size": 5}`).
    pub config: serde_json::Value,
    /// Last change of the registry row, UTC.
    pub updated: String,
    /// Its server connections on its cluster now, by database, role and state.
    pub server_connections: Vec<ServerConnections>,
    /// Client users in `commons.tenant_users`.
    pub users: i64,
    /// One entry per configured service database.
    pub schemas: Vec<SchemaDetails>,
}

/// How `drop_tenant` treats the tenant's data before removing it.
#[derive(Debug, Clone, Default)]
pub struct DropOptions {
    /// Take a backup first (and stop if it fails).
    pub backup: bool,
    /// Where the backup goes; `None` for a new directory under
    /// `provision.backup_dir`.
    pub backup_dir: Option<PathBuf>,
}

/// What a drop did.
#[derive(Debug, Clone, Default)]
pub struct DropReport {
    /// The backup directory, when one was taken.
    pub backup: Option<PathBuf>,
    /// Sessions of the tenant roles that were terminated.
    pub terminated_sessions: i64,
}

const SUMMARY_COLUMNS: &str = "id, name, status, tier,
    to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')";

fn summary(row: &tokio_postgres::Row) -> TenantSummary {
    TenantSummary {
        id: row.get(0),
        name: row.get(1),
        status: row.get(2),
        tier: row.get(3),
        created: row.get(4),
    }
}

/// Every tenant in the registry, ordered by id.
pub async fn list_tenants(config: &Config) -> Result<Vec<TenantSummary>, ProvisionError> {
    let registry = admin_connect(config, &config.backend.registry_database).await?;
    let rows = registry
        .query(
            &format!("SELECT {SUMMARY_COLUMNS} FROM commons.tenants ORDER BY id"),
            &[],
        )
        .await
        .map_err(db_err("listing tenants"))?;
    Ok(rows.iter().map(summary).collect())
}

/// The registry row of tenant `id`, its schemas (existence, tables, size) and
/// applied migrations in every configured service database.
pub async fn show_tenant(config: &Config, id: &TenantId) -> Result<TenantDetails, ProvisionError> {
    let registry = admin_connect(config, &config.backend.registry_database).await?;
    let row = registry
        .query_opt(
            &format!(
                "SELECT {SUMMARY_COLUMNS}, backend, config,
                        to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'),
                        (SELECT count(*) FROM commons.tenant_users u WHERE u.tenant_id = t.id)
                 FROM commons.tenants t WHERE id = $1"
            ),
            &[&id.as_str()],
        )
        .await
        .map_err(db_err(format!("reading tenant {id}")))?
        .ok_or_else(|| ProvisionError::UnknownTenant(id.to_string()))?;
    let migrations = registry
        .query(
            "SELECT database, version FROM commons.schema_migrations
             WHERE tenant_id = $1 ORDER BY database, version",
            &[&id.as_str()],
        )
        .await
        .map_err(db_err(format!("reading migrations of {id}")))?;
    let backend: Option<String> = row.get(5);
    let cluster = tenant_cluster(config, id.as_str(), backend.as_deref())?;
    let mut schemas = Vec::new();
    for db in &config.backend.databases {
        let client = cluster_connect(&cluster, db).await?;
        let stats = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1),
                        count(*) FILTER (WHERE c.relkind IN ('r', 'p')),
                        coalesce(sum(pg_catalog.pg_total_relation_size(c.oid))
                                 FILTER (WHERE c.relkind IN ('r', 'p', 'm')), 0)::bigint
                 FROM pg_catalog.pg_class c
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1",
                &[&id.schema()],
            )
            .await
            .map_err(db_err(format!("measuring schema {} in {db}", id.schema())))?;
        schemas.push(SchemaDetails {
            database: db.clone(),
            schema: id.schema(),
            exists: stats.get(0),
            tables: stats.get(1),
            size_bytes: stats.get(2),
            migrations: migrations
                .iter()
                .filter(|m| m.get::<_, &str>(0) == db)
                .map(|m| m.get(1))
                .collect(),
        });
    }
    let roles = [
        id.role(AccessLevel::ReadWrite),
        id.role(AccessLevel::ReadOnly),
    ];
    let server_connections = cluster_connect(&cluster, &cluster.roles_database)
        .await?
        .query(
            "SELECT datname::text, usename::text, coalesce(state, 'unknown'), count(*)
             FROM pg_catalog.pg_stat_activity WHERE usename = ANY($1)
             GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
            &[&roles.as_slice()],
        )
        .await
        .map_err(db_err(format!("reading the server connections of {id}")))?
        .iter()
        .map(|r| ServerConnections {
            database: r.get(0),
            role: r.get(1),
            state: r.get(2),
            count: r.get(3),
        })
        .collect();
    Ok(TenantDetails {
        summary: summary(&row),
        server_connections,
        backend,
        config: row.get(6),
        updated: row.get(7),
        users: row.get(8),
        schemas,
    })
}

/// Marks an active tenant `suspended`: running proxies refuse its new
/// connections at once and close connected clients at their next
/// transaction boundary. Suspending a suspended tenant is a no-op.
pub async fn suspend_tenant(config: &Config, id: &TenantId) -> Result<(), ProvisionError> {
    set_status(config, id, "suspended", false).await
}

/// [`suspend_tenant`], and every running proxy also closes the tenant's
/// connected clients and server connections at once (`tenant suspend
/// --now`); it stays so until the tenant is resumed.
pub async fn suspend_tenant_now(config: &Config, id: &TenantId) -> Result<(), ProvisionError> {
    set_status(config, id, "suspended", true).await
}

/// Marks a suspended tenant `active` again. Resuming an active tenant is a no-op.
pub async fn resume_tenant(config: &Config, id: &TenantId) -> Result<(), ProvisionError> {
    set_status(config, id, "active", false).await
}

/// Sets `status` (`active` or `suspended`) when the tenant is active or
/// suspended; otherwise explains why not. `disconnect` asks proxies to
/// close a suspended tenant's connections too; a plain suspend of a tenant
/// suspended with it keeps it, a resume clears it.
async fn set_status(
    config: &Config,
    id: &TenantId,
    status: &str,
    disconnect: bool,
) -> Result<(), ProvisionError> {
    let registry = admin_connect(config, &config.backend.registry_database).await?;
    let changed = registry
        .execute(
            "UPDATE commons.tenants
                SET status = $2,
                    disconnect_clients = $2 = 'suspended'
                        AND ($3 OR (status = 'suspended' AND coalesce(disconnect_clients, false)))
              WHERE id = $1 AND status IN ('active', 'suspended')",
            &[&id.as_str(), &status, &disconnect],
        )
        .await
        .map_err(db_err(format!("setting tenant {id} {status}")))?;
    if changed == 1 {
        tracing::info!(tenant = %id, status, disconnect, "tenant status changed");
        return Ok(());
    }
    let current: Option<String> = registry
        .query_opt(
            "SELECT status FROM commons.tenants WHERE id = $1",
            &[&id.as_str()],
        )
        .await
        .map_err(db_err(format!("reading tenant {id}")))?
        .map(|r| r.get(0));
    Err(match current.as_deref() {
        None => ProvisionError::UnknownTenant(id.to_string()),
        Some("provisioning") => ProvisionError::Invalid(format!(
            "tenant {id} is still provisioning; finish it with `pgtenant tenant create {id}` first"
        )),
        Some("dropping") => ProvisionError::Invalid(format!(
            "tenant {id} is being dropped; finish it with `pgtenant tenant drop {id} --yes`"
        )),
        Some(other) => {
            ProvisionError::Invalid(format!("tenant {id} is {other}; cannot make it {status}"))
        }
    })
}

/// Drops tenant `id`: marks it `dropping` (proxies refuse it from then on),
/// takes a backup when asked, terminates the remaining sessions of its roles,
/// drops its schema in every service database, drops its roles (after
/// `REASSIGN OWNED` / `DROP OWNED` in every database), and deletes its registry
/// rows (tenant, users, migration records). An interrupted drop is finished by
/// running it again.
pub async fn drop_tenant(
    config: &Config,
    id: &TenantId,
    options: &DropOptions,
) -> Result<DropReport, ProvisionError> {
    let b = &config.backend;
    let registry = admin_connect(config, &b.registry_database).await?;
    lock_tenant(&registry, id).await?;
    let previous: Option<String> = registry
        .query_opt(
            "SELECT status FROM commons.tenants WHERE id = $1",
            &[&id.as_str()],
        )
        .await
        .map_err(db_err(format!("reading tenant {id}")))?
        .map(|r| r.get(0));
    let backend = super::registered_backend(&registry, id.as_str()).await?;
    let cluster = tenant_cluster(config, id.as_str(), backend.as_deref())?;
    // Roles and sessions are cluster-wide: seen from the tenant's cluster.
    let dedicated = match cluster.name {
        Some(_) => Some(cluster_connect(&cluster, &cluster.roles_database).await?),
        None => None,
    };
    let on_cluster = dedicated.as_ref().unwrap_or(&registry);
    let roles = existing_roles(on_cluster, id).await?;
    if previous.is_none() && roles.is_empty() {
        return Err(ProvisionError::UnknownTenant(id.to_string()));
    }
    registry
        .execute(
            "UPDATE commons.tenants SET status = 'dropping' WHERE id = $1",
            &[&id.as_str()],
        )
        .await
        .map_err(db_err(format!("marking tenant {id} dropping")))?;
    tracing::info!(tenant = %id, "tenant marked dropping");

    let mut report = DropReport::default();
    if options.backup {
        let backup = super::backup::backup_with_status(
            config,
            id,
            options.backup_dir.as_deref(),
            previous.as_deref(),
        );
        match backup.await {
            Ok(dir) => report.backup = Some(dir),
            Err(e) => {
                // Nothing was removed: give the tenant back its status.
                if let Some(status) = previous.filter(|s| s != "dropping") {
                    registry
                        .execute(
                            "UPDATE commons.tenants SET status = $2 WHERE id = $1",
                            &[&id.as_str(), &status],
                        )
                        .await
                        .map_err(db_err(format!("restoring the status of tenant {id}")))?;
                }
                return Err(e);
            }
        }
    }
    report.terminated_sessions = terminate_sessions(on_cluster, id, &roles).await?;
    // Views over the tenant's tables go first (it is `dropping` now, so they
    // leave it out); DROP SCHEMA ... CASCADE would take them whole otherwise.
    super::admin_views::rebuild_admin_views(config).await?;

    let admin = quote_ident(&cluster.admin_user);
    let role_list = roles
        .iter()
        .map(|r| quote_ident(r))
        .collect::<Vec<_>>()
        .join(", ");
    let mut databases: Vec<&String> = b.databases.iter().collect();
    if cluster.name.is_none() && !databases.contains(&&b.registry_database) {
        databases.push(&b.registry_database);
    }
    for db in databases {
        let mut sql = String::new();
        if b.databases.contains(db) {
            sql.push_str(&format!(
                "DROP SCHEMA IF EXISTS {} CASCADE;\n",
                quote_ident(&id.schema())
            ));
        }
        if !roles.is_empty() {
            sql.push_str(&format!(
                "REASSIGN OWNED BY {role_list} TO {admin};\nDROP OWNED BY {role_list};\n"
            ));
        }
        let mut client = cluster_connect(&cluster, db).await?;
        // DROP OWNED revokes rights on the database and in `commons`, the same
        // catalog rows every tenant creation grants on: take turns with them.
        let context = format!("dropping tenant {id} from {db}");
        run_under_grant_lock(&mut client, &sql, context).await?;
    }
    if !roles.is_empty() {
        on_cluster
            .batch_execute(&format!("DROP ROLE IF EXISTS {role_list}"))
            .await
            .map_err(db_err(format!("dropping roles of tenant {id}")))?;
    }
    registry
        .execute(
            "WITH m AS (DELETE FROM commons.schema_migrations WHERE tenant_id = $1),
                  u AS (DELETE FROM commons.tenant_users WHERE tenant_id = $1)
             DELETE FROM commons.tenants WHERE id = $1",
            &[&id.as_str()],
        )
        .await
        .map_err(db_err(format!("deleting registry rows of tenant {id}")))?;
    tracing::info!(tenant = %id, "tenant dropped");
    Ok(report)
}

/// The tenant's login roles that exist.
async fn existing_roles(registry: &Client, id: &TenantId) -> Result<Vec<String>, ProvisionError> {
    let wanted = [
        id.role(AccessLevel::ReadWrite),
        id.role(AccessLevel::ReadOnly),
    ];
    let rows = registry
        .query(
            "SELECT rolname::text FROM pg_catalog.pg_roles WHERE rolname = ANY($1) ORDER BY 1",
            &[&wanted.as_slice()],
        )
        .await
        .map_err(db_err(format!("looking up roles of tenant {id}")))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Terminates every session logged in as one of `roles` and waits until they
/// are gone; returns how many were terminated.
async fn terminate_sessions(
    registry: &Client,
    id: &TenantId,
    roles: &[String],
) -> Result<i64, ProvisionError> {
    if roles.is_empty() {
        return Ok(0);
    }
    let terminated: i64 = registry
        .query_one(
            "SELECT count(*) FILTER (WHERE pg_catalog.pg_terminate_backend(pid))
             FROM pg_catalog.pg_stat_activity WHERE usename = ANY($1)",
            &[&roles],
        )
        .await
        .map_err(db_err(format!("terminating sessions of tenant {id}")))?
        .get(0);
    let deadline = tokio::time::Instant::now() + TERMINATE_WAIT;
    loop {
        let left: i64 = registry
            .query_one(
                "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE usename = ANY($1)",
                &[&roles],
            )
            .await
            .map_err(db_err(format!("counting sessions of tenant {id}")))?
            .get(0);
        if left == 0 {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            return Err(ProvisionError::Invalid(format!(
                "{left} session(s) of tenant {id} are still open after being terminated; run the drop again"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if terminated > 0 {
        tracing::info!(tenant = %id, terminated, "terminated tenant sessions");
    }
    Ok(terminated)
}

/// Tenant `id`'s status in the registry (`provisioning`, `active`,
/// `suspended`, `dropping`); `None` when it is not registered.
pub async fn tenant_status(
    config: &Config,
    id: &TenantId,
) -> Result<Option<String>, ProvisionError> {
    let registry = admin_connect(config, &config.backend.registry_database).await?;
    let row = registry
        .query_opt(
            "SELECT status FROM commons.tenants WHERE id = $1",
            &[&id.as_str()],
        )
        .await
        .map_err(db_err(format!("reading tenant {id}")))?;
    Ok(row.map(|r| r.get(0)))
}

/// Changes tenant `id`'s display name.
pub async fn set_tenant_name(
    config: &Config,
    id: &TenantId,
    name: &str,
) -> Result<(), ProvisionError> {
    let registry = admin_connect(config, &config.backend.registry_database).await?;
    let changed = registry
        .execute(
            "UPDATE commons.tenants SET name = $2 WHERE id = $1",
            &[&id.as_str(), &name],
        )
        .await
        .map_err(db_err(format!("renaming tenant {id}")))?;
    if changed == 0 {
        return Err(ProvisionError::UnknownTenant(id.to_string()));
    }
    Ok(())
}

/// Keys a tenant's `config` may hold, as the proxy reads them.
pub const TENANT_SETTINGS: [&str; 4] =
    ["pool_size", "pool_mode", "statement_timeout", "max_clients"];

/// Checks a tenant `config` object: only [`TENANT_SETTINGS`], each with a
/// value the proxy accepts (a positive count, a pool mode, a duration like
/// `30s` or `500ms`). The message names the offending key.
pub fn validate_tenant_settings(settings: &serde_json::Value) -> Result<(), String> {
    let Some(map) = settings.as_object() else {
        return Err("tenant config must be a JSON object".into());
    };
    for (key, value) in map {
        let positive = || {
            value
                .as_u64()
                .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
                .filter(|&n| n > 0 && n < 1_000_000)
                .is_some()
        };
        let ok = match key.as_str() {
            "pool_size" | "max_clients" => positive(),
            "pool_mode" => value
                .as_str()
                .and_then(crate::config::PoolMode::parse)
                .is_some(),
            "statement_timeout" => value.as_str().is_some_and(is_duration) || value.is_u64(),
            other => {
                return Err(format!(
                    "unknown tenant config key \"{other}\" (known: {})",
                    TENANT_SETTINGS.join(", ")
                ))
            }
        };
        if !ok {
            return Err(format!(
                "tenant config key \"{key}\": invalid value {value}"
            ));
        }
    }
    Ok(())
}

/// Checks settings as given to `tenant configure` or `--settings`: a JSON
/// object whose `null` members mean "remove" and whose other members pass
/// [`validate_tenant_settings`].
pub fn check_settings_change(settings: &serde_json::Value) -> Result<(), String> {
    if !settings.is_object() {
        return Err(format!(
            "tenant settings must be a JSON object, not {settings}"
        ));
    }
    validate_tenant_settings(&strip_nulls(settings))
}

/// `30s`, `500ms`, `2min`, `1h` or plain milliseconds.
fn is_duration(s: &str) -> bool {
    let digits = s.trim_end_matches(|c: char| c.is_ascii_lowercase());
    let unit = &s[digits.len()..];
    !digits.is_empty()
        && digits.len() < 12
        && digits.bytes().all(|b| b.is_ascii_digit())
        && ["", "ms", "s", "min", "h", "d"].contains(&unit)
}

/// Merges `settings` into the tenant's `config` (a `null` value removes a
/// key); running proxies apply it through the registry notification.
pub async fn set_tenant_config(
    config: &Config,
    id: &TenantId,
    settings: &serde_json::Value,
) -> Result<serde_json::Value, ProvisionError> {
    validate_tenant_settings(&strip_nulls(settings)).map_err(ProvisionError::Invalid)?;
    let registry = admin_connect(config, &config.backend.registry_database).await?;
    let row = registry
        .query_opt(
            "UPDATE commons.tenants
                SET config = jsonb_strip_nulls(coalesce(config, '{}'::jsonb) || $2::jsonb)
              WHERE id = $1
          RETURNING config",
            &[&id.as_str(), &settings],
        )
        .await
        .map_err(db_err(format!("setting the config of tenant {id}")))?;
    match row {
        Some(row) => Ok(row.get(0)),
        None => Err(ProvisionError::UnknownTenant(id.to_string())),
    }
}

/// `settings` without its `null` members (they mean "remove").
fn strip_nulls(settings: &serde_json::Value) -> serde_json::Value {
    match settings.as_object() {
        Some(map) => serde_json::Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        None => settings.clone(),
    }
}

#[cfg(test)]
mod settings_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn known_keys_with_good_values_pass() {
        let ok = json!({"pool_size": 5, "pool_mode": "transaction", "statement_timeout": "30s", "max_clients": "100"});
        assert_eq!(validate_tenant_settings(&ok), Ok(()));
    }

    #[test]
    fn bad_keys_and_values_are_named() {
        let err = validate_tenant_settings(&json!({"pool_sise": 5})).unwrap_err();
        assert!(err.contains("pool_sise"), "{err}");
        let err = validate_tenant_settings(&json!({"pool_size": 0})).unwrap_err();
        assert!(err.contains("pool_size"), "{err}");
        let err = validate_tenant_settings(&json!({"statement_timeout": "1; DROP"})).unwrap_err();
        assert!(err.contains("statement_timeout"), "{err}");
        assert!(validate_tenant_settings(&json!([1])).is_err());
    }
}
