//! `pgtenant restore DIR [--as NEW_ID]`: brings back a backup written by
//! [`crate::provision::backup`], under its own id or as a new tenant.
//!
//! Where each schema is restored (the dump names `tenant_<orig>` throughout,
//! and data is never rewritten as text):
//! - same id: straight into `tenant_<orig>`, which must not exist;
//! - `--as NEW`, `tenant_<orig>` absent from that database (the original was
//!   dropped): restored as `tenant_<orig>`, then `ALTER SCHEMA ... RENAME TO
//!   tenant_<new>`; the registry has no `<orig>` row meanwhile, so nothing
//!   serves the transient name;
//! - `--as NEW`, `tenant_<orig>` still exists (a live tenant is being cloned):
//!   restored into a scratch database (with pgtenant's `commons` applied),
//!   renamed there, dumped again and restored into the service database; the
//!   live schema is never touched. The scratch database is dropped afterwards.
//!
//! Roles and grants are made by the tenant-creation code for the id restored
//! as, never taken from the dump.

use std::path::Path;

use crate::config::{Cluster, Config};
use crate::tenant::id::TenantId;

use super::backup::{
    dump_schema, pg_tool, run_tool, Manifest, RegistryRows, BACKUP_FORMAT, MANIFEST_FILE,
};
use super::init::SERVICE_SQL;
use super::tenant::lock_tenant;
use super::tenant::{ensure_roles, grant};
use super::{
    admin_connect, cluster_connect, db_err, io_err, quote_ident, tenant_cluster, ProvisionError,
};

/// Restores the backup in `dir` as tenant `as_id` (default: the id backed
/// up), which must not exist yet: registry row (status `provisioning` until
/// the end), roles, schemas, grants, users and migration records, then the
/// backed-up status (`suspended` stays suspended, anything else becomes
/// `active`). Returns the tenant id restored as.
pub async fn restore_tenant(
    config: &Config,
    dir: &Path,
    as_id: Option<&TenantId>,
) -> Result<TenantId, ProvisionError> {
    let manifest: Manifest = read_json(&dir.join(MANIFEST_FILE))?;
    if manifest.format != BACKUP_FORMAT {
        return Err(ProvisionError::Invalid(format!(
            "{} has backup format {}; this pgtenant reads format {BACKUP_FORMAT}",
            dir.join(MANIFEST_FILE).display(),
            manifest.format
        )));
    }
    let rows: RegistryRows = read_json(&dir.join(&manifest.registry_file))?;
    let orig = TenantId::parse(&manifest.tenant)?;
    let new = as_id.cloned().unwrap_or_else(|| orig.clone());
    let b = &config.backend;
    for d in &manifest.databases {
        if !b.databases.contains(&d.database) {
            return Err(ProvisionError::Invalid(format!(
                "the backup holds database {}, which is not a configured service database",
                d.database
            )));
        }
    }

    let backend = rows.tenant.get("backend").and_then(|v| v.as_str());
    let cluster = tenant_cluster(config, new.as_str(), backend)?;
    let registry = admin_connect(config, &b.registry_database).await?;
    let mut locks = vec![orig.to_string(), new.to_string()];
    locks.sort();
    locks.dedup();
    for id in &locks {
        lock_tenant(&registry, id).await?;
    }
    let exists = registry
        .query_opt(
            "SELECT 1 FROM commons.tenants WHERE id = $1",
            &[&new.as_str()],
        )
        .await
        .map_err(db_err(format!("looking up tenant {new}")))?
        .is_some();
    if exists {
        return Err(ProvisionError::Invalid(format!(
            "tenant {new} exists; drop it first, or restore as another id (--as)"
        )));
    }
    for d in &manifest.databases {
        if schema_exists(&cluster, &d.database, &new.schema()).await? {
            return Err(ProvisionError::Invalid(format!(
                "schema {} already exists in {} though tenant {new} is not registered; drop it first",
                new.schema(),
                d.database
            )));
        }
    }

    let final_status = match rows.tenant.get("status").and_then(|s| s.as_str()) {
        Some("suspended") => "suspended",
        _ => "active",
    };
    let mut tenant = rows.tenant.clone();
    if let Some(obj) = tenant.as_object_mut() {
        obj.insert("id".into(), new.as_str().into());
        obj.insert("status".into(), "provisioning".into());
    }
    registry
        .execute(
            "INSERT INTO commons.tenants SELECT * FROM jsonb_populate_record(NULL::commons.tenants, $1)",
            &[&tenant],
        )
        .await
        .map_err(db_err(format!("registering tenant {new}")))?;
    // Roles are cluster-wide: made where the tenant's schemas go.
    match cluster.name {
        None => ensure_roles(config, &registry, &new).await?,
        Some(_) => {
            let roles = cluster_connect(&cluster, &cluster.roles_database).await?;
            ensure_roles(config, &roles, &new).await?;
        }
    }

    for d in &manifest.databases {
        let db = &d.database;
        if let Some(file) = &d.file {
            let file = dir.join(file);
            if new == orig || !schema_exists(&cluster, db, &orig.schema()).await? {
                restore_file(&cluster, db, &file).await?;
                if new != orig {
                    rename_schema(&cluster, db, &orig.schema(), &new.schema()).await?;
                }
            } else {
                restore_via_scratch(&cluster, db, &file, &orig, &new).await?;
            }
        } else {
            // The tenant had no schema there; give it an empty one, as create would.
            let client = cluster_connect(&cluster, db).await?;
            super::tenant::ensure_schema(&client, db, &new, &cluster.admin_user).await?;
        }
        let mut client = cluster_connect(&cluster, db).await?;
        grant(&mut client, db, &new, &cluster.admin_user).await?;
    }

    let retag = |items: &[serde_json::Value]| -> serde_json::Value {
        items
            .iter()
            .cloned()
            .map(|mut v| {
                if let Some(obj) = v.as_object_mut() {
                    obj.insert("tenant_id".into(), new.as_str().into());
                }
                v
            })
            .collect()
    };
    registry
        .execute(
            "INSERT INTO commons.tenant_users
             SELECT * FROM jsonb_populate_recordset(NULL::commons.tenant_users, $1)",
            &[&retag(&rows.users)],
        )
        .await
        .map_err(db_err(format!("restoring the users of tenant {new}")))?;
    registry
        .execute(
            "INSERT INTO commons.schema_migrations
             SELECT * FROM jsonb_populate_recordset(NULL::commons.schema_migrations, $1)",
            &[&retag(&rows.migrations)],
        )
        .await
        .map_err(db_err(format!(
            "restoring the migration records of tenant {new}"
        )))?;
    registry
        .execute(
            "UPDATE commons.tenants SET status = $2 WHERE id = $1",
            &[&new.as_str(), &final_status],
        )
        .await
        .map_err(db_err(format!("activating tenant {new}")))?;
    super::admin_views::rebuild_admin_views(config).await?;
    tracing::info!(tenant = %new, from = %orig, dir = %dir.display(), "tenant restored");
    Ok(new)
}

/// Reads and decodes a JSON file of a backup.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ProvisionError> {
    let text =
        std::fs::read_to_string(path).map_err(io_err(format!("reading {}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| {
        ProvisionError::Invalid(format!(
            "{} is not a pgtenant backup file: {e}",
            path.display()
        ))
    })
}

async fn schema_exists(cluster: &Cluster, db: &str, schema: &str) -> Result<bool, ProvisionError> {
    let client = cluster_connect(cluster, db).await?;
    Ok(client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1)",
            &[&schema],
        )
        .await
        .map_err(db_err(format!("looking up schema {schema} in {db}")))?
        .get(0))
}

/// `pg_restore` of a dump into `db`, in one transaction, stopping at the first error.
async fn restore_file(cluster: &Cluster, db: &str, file: &Path) -> Result<(), ProvisionError> {
    let mut cmd = pg_tool(cluster, "pg_restore", db);
    cmd.args([
        "--single-transaction",
        "--exit-on-error",
        "--no-owner",
        "--no-privileges",
    ])
    .arg(file);
    run_tool(
        cmd,
        "pg_restore",
        &format!("restoring {} into {db}", file.display()),
    )
    .await
}

async fn rename_schema(
    cluster: &Cluster,
    db: &str,
    from: &str,
    to: &str,
) -> Result<(), ProvisionError> {
    cluster_connect(cluster, db)
        .await?
        .batch_execute(&format!(
            "ALTER SCHEMA {} RENAME TO {}",
            quote_ident(from),
            quote_ident(to)
        ))
        .await
        .map_err(db_err(format!("renaming schema {from} to {to} in {db}")))
}

/// Restores `file` as `tenant_<new>` into `db` through a scratch database,
/// for when `tenant_<orig>` is in use in `db`.
async fn restore_via_scratch(
    cluster: &Cluster,
    db: &str,
    file: &Path,
    orig: &TenantId,
    new: &TenantId,
) -> Result<(), ProvisionError> {
    let suffix: u32 = rand::random();
    let scratch = format!("pgtenant_restore_{}_{suffix:08x}", std::process::id());
    let renamed = std::env::temp_dir().join(format!("{scratch}.dump"));
    let maintenance = cluster_connect(cluster, &cluster.maintenance_database).await?;
    maintenance
        .batch_execute(&format!("CREATE DATABASE {}", quote_ident(&scratch)))
        .await
        .map_err(db_err(format!("creating scratch database {scratch}")))?;
    let result = async {
        cluster_connect(cluster, &scratch)
            .await?
            .batch_execute(SERVICE_SQL)
            .await
            .map_err(db_err(format!("preparing scratch database {scratch}")))?;
        restore_file(cluster, &scratch, file).await?;
        rename_schema(cluster, &scratch, &orig.schema(), &new.schema()).await?;
        dump_schema(cluster, &scratch, &new.schema(), &renamed).await?;
        restore_file(cluster, db, &renamed).await
    }
    .await;
    let _ = std::fs::remove_file(&renamed);
    let dropped = maintenance
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_ident(&scratch)
        ))
        .await;
    if let Err(e) = dropped {
        tracing::warn!(database = %scratch, error = %super::db_message(&e), "could not drop the scratch database; drop it by hand");
    }
    result
}
