//! `pgtenant backup`: one tenant's schemas (`pg_dump -n tenant_<id>`, custom
//! format, one file per service database), its registry rows as JSON, and a
//! `manifest.json`, in one directory; plus running the PostgreSQL client tools.
//!
//! Bringing a backup back is [`crate::provision::restore`]'s job. Dumps carry
//! no owners and no grants: a restore re-creates both for whatever tenant id
//! it restores as, so a copy can never grant the original tenant's roles
//! anything.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use tokio::process::Command;

use serde::{Deserialize, Serialize};

use crate::config::{Cluster, Config};
use crate::tenant::id::TenantId;

use super::{admin_connect, db_err, io_err, ProvisionError};

/// The manifest's file name in a backup directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The registry rows' file name in a backup directory.
pub const REGISTRY_FILE: &str = "registry.json";
/// Version of the backup layout; a restore refuses other versions.
pub const BACKUP_FORMAT: u32 = 1;

/// `manifest.json`: what a backup directory holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    /// Layout version, [`BACKUP_FORMAT`].
    pub format: u32,
    /// The tenant id backed up.
    pub tenant: String,
    /// The pgtenant version that wrote it.
    pub pgtenant_version: String,
    /// When, UTC, ISO 8601.
    pub created_at: String,
    /// One entry per service database.
    pub databases: Vec<DatabaseDump>,
    /// File holding the registry rows (tenant, users, migrations).
    pub registry_file: String,
}

/// One service database's dump.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DatabaseDump {
    /// The service database.
    pub database: String,
    /// The schema dumped, `tenant_<id>`.
    pub schema: String,
    /// The dump file (pg_dump custom format), `None` when the schema did not exist.
    pub file: Option<String>,
}

/// `registry.json`: the tenant's rows in the registry, as `to_jsonb` gives them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RegistryRows {
    /// The `commons.tenants` row.
    pub tenant: serde_json::Value,
    /// Its `commons.tenant_users` rows (with their SCRAM verifiers).
    pub users: Vec<serde_json::Value>,
    /// Its `commons.schema_migrations` rows.
    pub migrations: Vec<serde_json::Value>,
}

/// Backs tenant `id` up into `out` (created; must be empty if it exists), or
/// into `pgtenant-backup-<id>-<UTC time>` under `provision.backup_dir` (the
/// current directory when empty). Returns
/// the directory. It holds password verifiers, so it is made private (0700).
pub async fn backup_tenant(
    config: &Config,
    id: &TenantId,
    out: Option<&Path>,
) -> Result<PathBuf, ProvisionError> {
    backup_with_status(config, id, out, None).await
}

/// [`backup_tenant`], recording `status` instead of the current one (a drop
/// backs up a tenant it already marked `dropping`).
pub(crate) async fn backup_with_status(
    config: &Config,
    id: &TenantId,
    out: Option<&Path>,
    status: Option<&str>,
) -> Result<PathBuf, ProvisionError> {
    let b = &config.backend;
    let registry = admin_connect(config, &b.registry_database).await?;
    let mut rows = read_registry_rows(&registry, id).await?;
    if let (Some(status), Some(obj)) = (status, rows.tenant.as_object_mut()) {
        obj.insert("status".into(), status.into());
    }
    let stamp = registry
        .query_one(
            "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYYMMDD\"T\"HH24MISS\"Z\"'),
                    to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')",
            &[],
        )
        .await
        .map_err(db_err("reading the server's clock"))?;
    let (compact, iso): (String, String) = (stamp.get(0), stamp.get(1));
    let dir = match out {
        Some(dir) => dir.to_path_buf(),
        None => {
            Path::new(&config.provision.backup_dir).join(format!("pgtenant-backup-{id}-{compact}"))
        }
    };
    let backend = super::registered_backend(&registry, id.as_str()).await?;
    let cluster = super::tenant_cluster(config, id.as_str(), backend.as_deref())?;
    prepare_dir(&dir)?;

    let mut databases = Vec::new();
    for db in &b.databases {
        let client = super::cluster_connect(&cluster, db).await?;
        let exists: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1)",
                &[&id.schema()],
            )
            .await
            .map_err(db_err(format!("looking up schema {} in {db}", id.schema())))?
            .get(0);
        let file = if exists {
            let name = format!("{db}.dump");
            dump_schema(&cluster, db, &id.schema(), &dir.join(&name)).await?;
            Some(name)
        } else {
            tracing::warn!(tenant = %id, database = %db, "no schema to back up");
            None
        };
        databases.push(DatabaseDump {
            database: db.clone(),
            schema: id.schema(),
            file,
        });
    }
    write_json(&dir.join(REGISTRY_FILE), &rows)?;
    let manifest = Manifest {
        format: BACKUP_FORMAT,
        tenant: id.to_string(),
        pgtenant_version: env!("CARGO_PKG_VERSION").to_string(),
        created_at: iso,
        databases,
        registry_file: REGISTRY_FILE.to_string(),
    };
    write_json(&dir.join(MANIFEST_FILE), &manifest)?;
    tracing::info!(tenant = %id, dir = %dir.display(), "backup written");
    Ok(dir)
}

/// The tenant's registry rows; an unknown tenant is an error.
async fn read_registry_rows(
    registry: &tokio_postgres::Client,
    id: &TenantId,
) -> Result<RegistryRows, ProvisionError> {
    let row = registry
        .query_opt(
            "SELECT to_jsonb(t),
                    (SELECT coalesce(jsonb_agg(to_jsonb(u) ORDER BY u.username), '[]')
                     FROM commons.tenant_users u WHERE u.tenant_id = t.id),
                    (SELECT coalesce(jsonb_agg(to_jsonb(m) ORDER BY m.database, m.version), '[]')
                     FROM commons.schema_migrations m WHERE m.tenant_id = t.id)
             FROM commons.tenants t WHERE t.id = $1",
            &[&id.as_str()],
        )
        .await
        .map_err(db_err(format!("reading registry rows of tenant {id}")))?
        .ok_or_else(|| ProvisionError::UnknownTenant(id.to_string()))?;
    let list = |v: serde_json::Value| match v {
        serde_json::Value::Array(items) => items,
        _ => Vec::new(),
    };
    Ok(RegistryRows {
        tenant: row.get(0),
        users: list(row.get(1)),
        migrations: list(row.get(2)),
    })
}

/// Creates `dir` (mode 0700) or accepts an existing empty one.
fn prepare_dir(dir: &Path) -> Result<(), ProvisionError> {
    if dir.exists() {
        let mut entries =
            std::fs::read_dir(dir).map_err(io_err(format!("reading {}", dir.display())))?;
        if entries.next().is_some() {
            return Err(ProvisionError::Invalid(format!(
                "backup directory {} is not empty; choose a new one",
                dir.display()
            )));
        }
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(format!("creating {}", dir.display())))
}

/// Writes pretty JSON to a new private (0600) file.
fn write_json(path: &Path, value: &impl Serialize) -> Result<(), ProvisionError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| ProvisionError::Invalid(format!("encoding {}: {e}", path.display())))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(format!("writing {}", path.display())))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.write_all(b"\n"))
        .map_err(io_err(format!("writing {}", path.display())))
}

/// `pg_dump` of one schema of `db`, custom format, without owners or grants.
pub(crate) async fn dump_schema(
    cluster: &Cluster,
    db: &str,
    schema: &str,
    file: &Path,
) -> Result<(), ProvisionError> {
    let mut cmd = pg_tool(cluster, "pg_dump", db);
    // A quoted pattern matches exactly this name.
    cmd.arg(format!("--schema=\"{schema}\""))
        .args(["--format=custom", "--no-owner", "--no-privileges"])
        .arg(format!("--file={}", file.display()));
    run_tool(cmd, "pg_dump", &format!("dumping {schema} from {db}")).await
}

/// A PostgreSQL client tool connected to `db` on `cluster` as its admin
/// role: the binary next to the server binaries when installed, else from
/// PATH. The password goes in `PGPASSWORD`, never on the command line.
pub(crate) fn pg_tool(b: &Cluster, program: &str, db: &str) -> Command {
    let path = super::cluster::server_bin_dir()
        .map(|dir| dir.join(program))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(program));
    let mut cmd = Command::new(path);
    cmd.arg(format!("--host={}", b.host))
        .arg(format!("--port={}", b.port))
        .arg(format!("--username={}", b.admin_user))
        .arg(format!("--dbname={db}"))
        .arg("--no-password")
        .env("PGAPPNAME", "pgtenant-backup")
        .env_remove("PGPASSWORD");
    if !b.admin_password.is_empty() {
        cmd.env("PGPASSWORD", &b.admin_password);
    }
    cmd
}

/// Runs a tool to completion; a failure carries its stderr.
pub(crate) async fn run_tool(
    mut cmd: Command,
    program: &str,
    what: &str,
) -> Result<(), ProvisionError> {
    let out = cmd.output().await.map_err(io_err(format!(
        "running {program} ({what}); is it installed?"
    )))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ProvisionError::Invalid(format!(
            "{what}: {program} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}
