//! Tenant lifecycle: registry row, backend roles, one schema per service
//! database, per-tenant migrations and grants (`pgtenant tenant create`), and
//! tenant users (`commons.tenant_users`).
//!
//! Every step is idempotent, so a failed or interrupted `create_tenant` is
//! finished by running it again. It leaves reading the registry at runtime to
//! `crate::tenant` and the databases themselves to [`crate::provision::init`].

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio_postgres::Client;

use crate::config::Config;
use crate::tenant::id::{role_password, AccessLevel, TenantId};

use super::migrate::{apply_pending, load_migrations};
use super::{
    admin_connect, cluster_connect, db_err, io_err, quote_ident, quote_literal, tenant_cluster,
    ProvisionError,
};

/// Advisory lock key serialising the grant step of concurrent tenant creations.
pub(crate) const GRANT_LOCK_KEY: i64 = 0x7067_7465_6e02;

/// Where a tenant's schemas and roles live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier<'a> {
    /// The shared cluster (`[backend]`), beside the registry.
    Shared,
    /// A cluster of its own, named in `[backends]`.
    Dedicated(&'a str),
}

impl<'a> Tier<'a> {
    /// The tier asked for by a `--tier` / `--backend` pair (or the API's
    /// `tier` / `backend` fields): `None` when neither is given; a backend
    /// implies `dedicated`, and `dedicated` needs one.
    pub fn requested(
        tier: Option<&str>,
        backend: Option<&'a str>,
    ) -> Result<Option<Tier<'a>>, ProvisionError> {
        match (tier, backend) {
            (None, None) => Ok(None),
            (Some("shared"), None) => Ok(Some(Tier::Shared)),
            (None | Some("dedicated"), Some(name)) => Ok(Some(Tier::Dedicated(name))),
            (Some("dedicated"), None) => Err(ProvisionError::Invalid(
                "a dedicated tenant needs a backend (--backend NAME, one of [backends])".into(),
            )),
            (Some("shared"), Some(_)) => Err(ProvisionError::Invalid(
                "a shared tenant lives on [backend]; a backend name is for --tier dedicated".into(),
            )),
            (Some(other), _) => Err(ProvisionError::Invalid(format!(
                "unknown tier {other:?}: shared or dedicated"
            ))),
        }
    }

    /// The registry's `tier` and `backend` columns.
    fn columns(self) -> (&'static str, Option<String>) {
        match self {
            Tier::Shared => ("shared", None),
            Tier::Dedicated(name) => ("dedicated", Some(name.to_string())),
        }
    }
}

/// Provisions tenant `id` (display name `name`; an empty name keeps the stored
/// one) on the shared cluster, or where it already lives; see [`create_tenant_on`].
pub async fn create_tenant(
    config: &Config,
    id: &TenantId,
    name: &str,
) -> Result<(), ProvisionError> {
    create_tenant_on(config, id, name, None).await
}

/// Provisions tenant `id` on `tier` (`None`: where it already lives, the
/// shared cluster for a new one): registry row (status `provisioning` while
/// new), roles `tenant_<id>_rw` and `tenant_<id>_ro` with passwords derived
/// from `backend.tenant_role_secret`, schema `tenant_<id>` in every service
/// database of its cluster with all pending migrations and the grants, then
/// status `active`. Re-running it on an existing tenant applies only what is
/// missing; a suspended tenant stays suspended. A tenant is never moved to
/// another cluster: a `tier` other than the stored one is refused.
pub async fn create_tenant_on(
    config: &Config,
    id: &TenantId,
    name: &str,
    tier: Option<Tier<'_>>,
) -> Result<(), ProvisionError> {
    let b = &config.backend;
    if let Some(Tier::Dedicated(backend)) = tier {
        if config.cluster(Some(backend)).is_none() {
            return Err(ProvisionError::Invalid(format!(
                "backend {backend:?} is not configured: add [backends.{backend}] with its host and port"
            )));
        }
    }
    let registry = admin_connect(config, &b.registry_database).await?;
    // Session-level lock: one provisioning run per tenant at a time; released on disconnect.
    lock_tenant(&registry, id).await?;

    let (tier_name, backend) = tier.unwrap_or(Tier::Shared).columns();
    let row = registry
        .query_one(
            "INSERT INTO commons.tenants (id, name, status, tier, backend)
             VALUES ($1, $2, 'provisioning', $3, $4)
             ON CONFLICT (id) DO UPDATE
                 SET name = CASE WHEN EXCLUDED.name = '' THEN commons.tenants.name ELSE EXCLUDED.name END
             RETURNING status, tier, backend",
            &[&id.as_str(), &name, &tier_name, &backend],
        )
        .await
        .map_err(db_err(format!("registering tenant {id}")))?;
    let status: String = row.get(0);
    if status == "dropping" {
        return Err(ProvisionError::Invalid(format!(
            "tenant {id} is being dropped; finish the drop before creating it again"
        )));
    }
    let stored: (String, Option<String>) = (row.get(1), row.get(2));
    if tier.is_some() && (stored.0.as_str(), &stored.1) != (tier_name, &backend) {
        return Err(ProvisionError::Invalid(format!(
            "tenant {id} exists as {} tenant{}; moving a tenant to another cluster is not supported",
            stored.0,
            stored.1.map(|n| format!(" on backend {n}")).unwrap_or_default()
        )));
    }
    let cluster = tenant_cluster(config, id.as_str(), stored.1.as_deref())?;
    if cluster.name.is_some() {
        super::init::init_dedicated(config, &cluster).await?;
    }

    // Roles are cluster-wide: made once, where the tenant's schemas live.
    if cluster.name.is_none() {
        ensure_roles(config, &registry, id).await?;
    } else {
        let roles = cluster_connect(&cluster, &cluster.roles_database).await?;
        ensure_roles(config, &roles, id).await?;
    }
    for db in &b.databases {
        let files = load_migrations(config, db)?;
        let mut client = cluster_connect(&cluster, db).await?;
        ensure_schema(&client, db, id, &cluster.admin_user).await?;
        apply_pending(
            &registry,
            &mut client,
            &files,
            db,
            id.as_str(),
            &id.schema(),
            false,
        )
        .await?;
        grant(&mut client, db, id, &cluster.admin_user).await?;
        // Shared tables made since init get their row-level security too.
        run_under_grant_lock(
            &mut client,
            "SELECT commons.apply_tenant_row_security()",
            format!("row-level security on shared tables of {db}"),
        )
        .await?;
    }

    registry
        .execute(
            "UPDATE commons.tenants SET status = 'active' WHERE id = $1 AND status = 'provisioning'",
            &[&id.as_str()],
        )
        .await
        .map_err(db_err(format!("activating tenant {id}")))?;
    super::admin_views::rebuild_admin_views(config).await?;
    tracing::info!(tenant = %id, cluster = %cluster.describe(), "tenant provisioned");
    Ok(())
}

/// Adds or updates a tenant's client user in `commons.tenant_users`, storing a
/// SCRAM-SHA-256 verifier of `password` (never the password) and re-activating
/// the user. The tenant must exist.
pub async fn add_user(
    config: &Config,
    id: &TenantId,
    username: &str,
    password: &str,
    access: AccessLevel,
) -> Result<(), ProvisionError> {
    if username.is_empty() || username.contains('\0') {
        return Err(ProvisionError::Invalid(format!(
            "invalid user name {username:?}"
        )));
    }
    let registry = admin_connect(config, &config.backend.registry_database).await?;
    let secret = postgres_protocol::password::scram_sha_256(password.as_bytes());
    let n = registry
        .execute(
            "INSERT INTO commons.tenant_users (tenant_id, username, secret, access)
             SELECT id, $2, $3, $4 FROM commons.tenants WHERE id = $1
             ON CONFLICT (tenant_id, username) DO UPDATE
                 SET secret = EXCLUDED.secret, access = EXCLUDED.access, active = true",
            &[&id.as_str(), &username, &secret, &access.suffix()],
        )
        .await
        .map_err(db_err(format!("adding user {username} to tenant {id}")))?;
    if n == 0 {
        return Err(ProvisionError::Invalid(format!(
            "tenant {id} does not exist; create it first"
        )));
    }
    Ok(())
}

/// Creates or updates the tenant's two login roles. Roles are cluster-wide, so
/// this runs once, on the registry connection. The password is sent as a
/// SCRAM verifier so the derived password never appears in server logs.
pub(crate) async fn ensure_roles(
    config: &Config,
    client: &Client,
    id: &TenantId,
) -> Result<(), ProvisionError> {
    let tail: Vec<String> = id_search_path(config, id);
    for access in [AccessLevel::ReadWrite, AccessLevel::ReadOnly] {
        let role = id.role(access);
        let verifier = postgres_protocol::password::scram_sha_256(
            role_password(&config.backend.tenant_role_secret, &role).as_bytes(),
        );
        let exists = client
            .query_opt(
                "SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1",
                &[&role],
            )
            .await
            .map_err(db_err(format!("looking up role {role}")))?
            .is_some();
        let verb = if exists { "ALTER" } else { "CREATE" };
        let sql = format!(
            "{verb} ROLE {} LOGIN NOINHERIT NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD {}",
            quote_ident(&role),
            quote_literal(&verifier)
        );
        client
            .batch_execute(&sql)
            .await
            .map_err(db_err(format!("{} role {role}", verb.to_lowercase())))?;
        // A direct login (psql as the tenant role) lands in the tenant's schema too.
        let sql = format!(
            "ALTER ROLE {} SET search_path TO {}",
            quote_ident(&role),
            tail.join(", ")
        );
        client
            .batch_execute(&sql)
            .await
            .map_err(db_err(format!("setting search_path of role {role}")))?;
    }
    Ok(())
}

/// `tenant_<id>` followed by `backend.search_path_tail`, each quoted.
fn id_search_path(config: &Config, id: &TenantId) -> Vec<String> {
    std::iter::once(id.schema())
        .chain(config.backend.search_path_tail.iter().cloned())
        .map(|s| quote_ident(&s))
        .collect()
}

/// `CREATE SCHEMA IF NOT EXISTS tenant_<id>` owned by the admin role.
pub(crate) async fn ensure_schema(
    client: &Client,
    db: &str,
    id: &TenantId,
    admin: &str,
) -> Result<(), ProvisionError> {
    let sql = format!(
        "CREATE SCHEMA IF NOT EXISTS {} AUTHORIZATION {}",
        quote_ident(&id.schema()),
        quote_ident(admin)
    );
    client
        .batch_execute(&sql)
        .await
        .map_err(db_err(format!("creating schema {} in {db}", id.schema())))
}

/// The `*.sql` files of `<root>/<db>/migrations`, sorted by file name; none
/// when the directory does not exist.
pub fn migration_files(root: &Path, db: &str) -> Result<Vec<PathBuf>, ProvisionError> {
    let dir = root.join(db).join("migrations");
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(dir = %dir.display(), "no migrations directory; tenant schemas in {db} stay empty");
            return Ok(Vec::new());
        }
        Err(e) => return Err(io_err(format!("reading {}", dir.display()))(e)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(io_err(format!("reading {}", dir.display())))?
            .path();
        if path.extension().is_some_and(|e| e == "sql") && path.is_file() {
            files.push(path);
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files)
}

/// Lowercase hex SHA-256 of a migration file's content.
pub fn checksum(content: &[u8]) -> String {
    Sha256::digest(content)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Grants the tenant roles what they need in `db` and nothing more: CONNECT
/// (and TEMPORARY) on the database, USAGE on their schema, DML (rw) or SELECT
/// (ro) on its tables, sequences for rw, default privileges for later tables,
/// and read/execute on `commons`. No CREATE anywhere.
pub(crate) async fn grant(
    client: &mut Client,
    db: &str,
    id: &TenantId,
    admin: &str,
) -> Result<(), ProvisionError> {
    let rw = quote_ident(&id.role(AccessLevel::ReadWrite));
    let ro = quote_ident(&id.role(AccessLevel::ReadOnly));
    let schema = quote_ident(&id.schema());
    let admin = quote_ident(admin);
    let dbq = quote_ident(db);
    let sql = format!(
        "GRANT CONNECT, TEMPORARY ON DATABASE {dbq} TO {rw}, {ro};
         GRANT USAGE ON SCHEMA {schema} TO {rw}, {ro};
         GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {rw};
         GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA {schema} TO {rw};
         GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {ro};
         ALTER DEFAULT PRIVILEGES FOR ROLE {admin} IN SCHEMA {schema}
             GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {rw};
         ALTER DEFAULT PRIVILEGES FOR ROLE {admin} IN SCHEMA {schema}
             GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO {rw};
         ALTER DEFAULT PRIVILEGES FOR ROLE {admin} IN SCHEMA {schema}
             GRANT SELECT ON TABLES TO {ro};
         GRANT USAGE ON SCHEMA commons TO {rw}, {ro};
         GRANT SELECT ON ALL TABLES IN SCHEMA commons TO {rw}, {ro};
         GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA commons TO {rw}, {ro};
         ALTER DEFAULT PRIVILEGES FOR ROLE {admin} IN SCHEMA commons
             GRANT SELECT ON TABLES TO {rw}, {ro};
         ALTER DEFAULT PRIVILEGES FOR ROLE {admin} IN SCHEMA commons
             GRANT EXECUTE ON FUNCTIONS TO {rw}, {ro};"
    );
    // GRANTs on the shared database, `commons` and pg_default_acl rows update
    // the same catalog tuples for every tenant; concurrent runs would fail
    // with "tuple concurrently updated", so they take turns.
    let context = format!("granting tenant {id} its rights in {db}");
    run_under_grant_lock(client, &sql, context).await
}

/// Takes the session-level lock that lets one create, drop, restore or
/// single-tenant migrate run per tenant at a time (released on disconnect).
pub(crate) async fn lock_tenant(
    registry: &tokio_postgres::Client,
    id: impl std::fmt::Display,
) -> Result<(), ProvisionError> {
    registry
        .execute(
            "SELECT pg_catalog.pg_advisory_lock(pg_catalog.hashtext($1))",
            &[&format!("pgtenant:tenant:{id}")],
        )
        .await
        .map_err(db_err(format!("locking tenant {id}")))?;
    Ok(())
}

/// Runs `sql` in one transaction holding the grant lock: GRANTs and
/// REVOKEs on shared objects update the same catalog rows for every tenant
/// and would otherwise fail with "tuple concurrently updated".
pub(crate) async fn run_under_grant_lock(
    client: &mut tokio_postgres::Client,
    sql: &str,
    context: String,
) -> Result<(), ProvisionError> {
    // A catalog row can still be updated by what takes no such lock (an
    // ANALYZE, DDL run by hand); the whole transaction was rolled back,
    // so it is run again, a few times at most.
    let mut attempts = 1;
    loop {
        match grant_locked_once(client, sql).await {
            Err(e) if attempts < 3 && is_concurrent_update(&e) => {
                attempts += 1;
                tracing::debug!(%context, "catalog row updated concurrently; again");
                tokio::time::sleep(std::time::Duration::from_millis(50 * attempts)).await;
            }
            result => return result.map_err(db_err(context)),
        }
    }
}

/// PostgreSQL's "tuple concurrently updated": two transactions updated one
/// catalog row; the later one failed.
fn is_concurrent_update(e: &tokio_postgres::Error) -> bool {
    e.as_db_error()
        .is_some_and(|db| db.message() == "tuple concurrently updated")
}

/// One attempt of [`run_under_grant_lock`].
async fn grant_locked_once(
    client: &mut tokio_postgres::Client,
    sql: &str,
) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute(
        "SELECT pg_catalog.pg_advisory_xact_lock($1)",
        &[&GRANT_LOCK_KEY],
    )
    .await?;
    tx.batch_execute(sql).await?;
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requested_tiers() {
        assert_eq!(Tier::requested(None, None).unwrap(), None);
        assert_eq!(
            Tier::requested(Some("shared"), None).unwrap(),
            Some(Tier::Shared)
        );
        assert_eq!(
            Tier::requested(None, Some("eu1")).unwrap(),
            Some(Tier::Dedicated("eu1"))
        );
        assert_eq!(
            Tier::requested(Some("dedicated"), Some("eu1")).unwrap(),
            Some(Tier::Dedicated("eu1"))
        );
        for (tier, backend) in [
            (Some("dedicated"), None),
            (Some("shared"), Some("eu1")),
            (Some("gold"), None),
        ] {
            let e = Tier::requested(tier, backend).unwrap_err().to_string();
            assert!(e.contains("dedicated"), "{e}");
        }
    }

    #[test]
    fn checksum_is_sha256_hex() {
        assert_eq!(
            checksum(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn migration_files_sorted_and_missing_dir_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("crm_db/migrations");
        std::fs::create_dir_all(&m).unwrap();
        for f in ["010_b.sql", "002_a.sql", "notes.txt"] {
            std::fs::write(m.join(f), "").unwrap();
        }
        let names: Vec<String> = migration_files(dir.path(), "crm_db")
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["002_a.sql", "010_b.sql"]);
        assert!(migration_files(dir.path(), "other_db").unwrap().is_empty());
    }
}
