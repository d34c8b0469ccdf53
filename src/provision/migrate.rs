//! `pgtenant migrate`: applies pending files of `sql/<db>/migrations/` to every
//! tenant schema (and to the `tenant_template` reference schema), several
//! tenants at a time, and `pgtenant migrate status`.
//!
//! Each (tenant, database) pair is migrated in one transaction with
//! `SET LOCAL search_path = tenant_<id>`; what was applied is recorded in
//! `commons.schema_migrations` with a checksum. One tenant's failure is
//! reported and does not stop the others. Finding and reading the files is
//! shared with tenant creation ([`crate::provision::tenant`]); how progress is
//! shown is left to the caller (the CLI).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use tokio_postgres::Client;

use crate::config::Config;
use crate::tenant::id::TenantId;

use super::tenant::lock_tenant;
use super::tenant::{checksum, migration_files};
use super::{
    admin_connect, cluster_connect, db_err, io_err, quote_ident, tenant_cluster, ProvisionError,
};

/// The reference schema kept in every service database, migrated like a
/// tenant. `template` is a reserved tenant id, so no tenant can own it.
pub const TEMPLATE_SCHEMA: &str = "tenant_template";

/// The `tenant_id` under which the template's migrations are recorded. It is
/// not a valid tenant id, so it can never be a tenant or be served.
pub const TEMPLATE_ID: &str = "_template";

/// One migration file, read once per run.
#[derive(Debug, Clone)]
pub struct Migration {
    /// The file name, e.g. `002_phone.sql`: the version recorded in the registry.
    pub version: String,
    /// The path, for messages.
    pub file: String,
    /// The SQL text.
    pub sql: String,
    /// Hex SHA-256 of the text.
    pub checksum: String,
}

/// Reads the migrations of `db` under `config.provision.migrations_dir`, in order.
pub fn load_migrations(config: &Config, db: &str) -> Result<Vec<Migration>, ProvisionError> {
    let root = PathBuf::from(&config.provision.migrations_dir);
    let mut out = Vec::new();
    for path in migration_files(&root, db)? {
        let file = path.display().to_string();
        let bytes = std::fs::read(&path).map_err(io_err(format!("reading {file}")))?;
        let checksum = checksum(&bytes);
        let sql = String::from_utf8(bytes).map_err(|_| ProvisionError::Migration {
            file: file.clone(),
            message: "not valid UTF-8".into(),
        })?;
        let version = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.push(Migration {
            version,
            file,
            sql,
            checksum,
        });
    }
    Ok(out)
}

/// What `migrate` should do.
#[derive(Debug, Clone)]
pub struct MigrateOptions {
    /// Only these tenants; empty for every active or suspended tenant.
    pub tenants: Vec<TenantId>,
    /// Also migrate the `tenant_template` reference schema.
    pub template: bool,
    /// Only these service databases; empty for all configured ones.
    pub databases: Vec<String>,
    /// Report what would be applied, change nothing.
    pub dry_run: bool,
    /// Tenants migrated at a time (at least 1).
    pub jobs: usize,
}

impl Default for MigrateOptions {
    fn default() -> Self {
        Self {
            tenants: Vec::new(),
            template: true,
            databases: Vec::new(),
            dry_run: false,
            jobs: 4,
        }
    }
}

/// What happened to one tenant (or the template).
#[derive(Debug)]
pub struct TargetOutcome {
    /// The tenant id, or `template`.
    pub target: String,
    /// `(database, version)` applied (or, in a dry run, pending), in order.
    pub applied: Vec<(String, String)>,
    /// Why this target failed; earlier databases may have been migrated.
    pub error: Option<ProvisionError>,
}

/// Progress reported while `migrate` runs.
#[derive(Debug)]
pub enum MigrateEvent<'a> {
    /// The targets are known and work starts.
    Started {
        /// How many targets (tenants plus the template) will be visited.
        targets: usize,
    },
    /// One target is done.
    Finished(&'a TargetOutcome),
}

/// Who a migration run is for.
#[derive(Debug, Clone)]
enum Target {
    Template,
    /// A tenant, with its registry row's `backend` (`None`: shared cluster).
    Tenant(TenantId, Option<String>),
}

impl Target {
    fn tracking_id(&self) -> &str {
        match self {
            Target::Template => TEMPLATE_ID,
            Target::Tenant(id, _) => id.as_str(),
        }
    }
    fn schema(&self) -> String {
        match self {
            Target::Template => TEMPLATE_SCHEMA.to_string(),
            Target::Tenant(id, _) => id.schema(),
        }
    }
    fn label(&self) -> String {
        match self {
            Target::Template => "template".to_string(),
            Target::Tenant(id, _) => id.to_string(),
        }
    }
}

/// Applies pending migrations to the selected tenants (see [`MigrateOptions`]),
/// `jobs` tenants at a time, calling `on_event` as targets finish. Returns
/// every target's outcome, sorted by name; check [`failed`] for the verdict.
///
/// Refused as a whole, before anything runs: an unknown database or tenant,
/// an applied migration whose file changed since (the file is named), and a
/// second migrator on the same database: the run holds a session advisory
/// lock per database and fails at once, without waiting, when another holds it.
pub async fn migrate(
    config: &Config,
    options: &MigrateOptions,
    on_event: &mut (dyn FnMut(MigrateEvent<'_>) + Send),
) -> Result<Vec<TargetOutcome>, ProvisionError> {
    let b = &config.backend;
    let databases = if options.databases.is_empty() {
        b.databases.clone()
    } else {
        for db in &options.databases {
            if !b.databases.contains(db) {
                return Err(ProvisionError::Invalid(format!(
                    "{db} is not a configured service database ({})",
                    b.databases.join(", ")
                )));
            }
        }
        options.databases.clone()
    };
    let mut files = HashMap::new();
    for db in &databases {
        files.insert(db.clone(), load_migrations(config, db)?);
    }
    let registry = admin_connect(config, &b.registry_database).await?;
    if !options.dry_run {
        for db in &databases {
            let locked: bool = registry
                .query_one(
                    "SELECT pg_catalog.pg_try_advisory_lock(pg_catalog.hashtext($1))",
                    &[&format!("pgtenant:migrate:{db}")],
                )
                .await
                .map_err(db_err(format!("locking {db} for migration")))?
                .get(0);
            if !locked {
                return Err(ProvisionError::Invalid(format!(
                    "another `pgtenant migrate` is running on {db}; try again when it has finished"
                )));
            }
        }
    }
    for db in &databases {
        check_unchanged(&registry, db, &files[db]).await?;
    }
    let mut targets = select_targets(&registry, &options.tenants).await?;
    if options.template {
        targets.insert(0, Target::Template);
    }
    on_event(MigrateEvent::Started {
        targets: targets.len(),
    });

    let config = Arc::new(config.clone());
    let files = Arc::new(files);
    let databases = Arc::new(databases);
    let permits = Arc::new(tokio::sync::Semaphore::new(options.jobs.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for target in targets {
        let (config, files, databases, permits) = (
            Arc::clone(&config),
            Arc::clone(&files),
            Arc::clone(&databases),
            Arc::clone(&permits),
        );
        let dry_run = options.dry_run;
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let mut outcome = TargetOutcome {
                target: target.label(),
                applied: Vec::new(),
                error: None,
            };
            if let Err(e) =
                migrate_target(&config, &target, &databases, &files, dry_run, &mut outcome).await
            {
                outcome.error = Some(e);
            }
            outcome
        });
    }
    let mut outcomes = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let outcome = done.unwrap_or_else(|e| TargetOutcome {
            target: "?".into(),
            applied: Vec::new(),
            error: Some(ProvisionError::Invalid(format!(
                "migration task failed: {e}"
            ))),
        });
        on_event(MigrateEvent::Finished(&outcome));
        outcomes.push(outcome);
    }
    outcomes.sort_by(|a, b| a.target.cmp(&b.target));
    drop(registry);
    if !options.dry_run {
        super::admin_views::rebuild_admin_views(&config).await?;
    }
    Ok(outcomes)
}

/// How many outcomes carry an error.
pub fn failed(outcomes: &[TargetOutcome]) -> usize {
    outcomes.iter().filter(|o| o.error.is_some()).count()
}

/// Refuses the run when a recorded migration of `db` no longer matches its file.
async fn check_unchanged(
    registry: &Client,
    db: &str,
    files: &[Migration],
) -> Result<(), ProvisionError> {
    for m in files {
        let rows = registry
            .query(
                "SELECT tenant_id FROM commons.schema_migrations
                 WHERE database = $1 AND version = $2 AND checksum <> $3 ORDER BY tenant_id",
                &[&db, &m.version, &m.checksum],
            )
            .await
            .map_err(db_err(format!("checking applied migrations of {db}")))?;
        if let Some(first) = rows.first() {
            let first: String = first.get(0);
            return Err(ProvisionError::Migration {
                file: m.file.clone(),
                message: format!(
                    "changed after it was applied in {db} (to {} schema(s), e.g. {first}); nothing was migrated. Restore the file and add a new migration instead",
                    rows.len()
                ),
            });
        }
    }
    Ok(())
}

/// The active or suspended tenants, or exactly `only`, each of which must be
/// active or suspended.
async fn select_targets(
    registry: &Client,
    only: &[TenantId],
) -> Result<Vec<Target>, ProvisionError> {
    let rows = registry
        .query(
            "SELECT id, status, nullif(backend, '') FROM commons.tenants ORDER BY id",
            &[],
        )
        .await
        .map_err(db_err("listing tenants to migrate"))?;
    let status: HashMap<String, (String, Option<String>)> = rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    let servable = |s: &str| s == "active" || s == "suspended";
    if only.is_empty() {
        let mut targets = Vec::new();
        for r in &rows {
            let (id, s): (String, String) = (r.get(0), r.get(1));
            if !servable(&s) {
                continue;
            }
            match TenantId::parse(&id) {
                Ok(id) => targets.push(Target::Tenant(id, r.get(2))),
                // Inserted by hand past the registry's check; never served either.
                Err(e) => tracing::warn!(error = %e, "registry row skipped"),
            }
        }
        return Ok(targets);
    }
    let mut targets = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for id in only.iter().filter(|id| seen.insert(id.as_str())) {
        match status.get(id.as_str()) {
            None => return Err(ProvisionError::UnknownTenant(id.to_string())),
            Some((s, _)) if !servable(s) => {
                return Err(ProvisionError::Invalid(format!(
                    "tenant {id} is {s}; only active or suspended tenants are migrated (`pgtenant tenant create {id}` finishes a provisioning one)"
                )))
            }
            Some((_, backend)) => targets.push(Target::Tenant(id.clone(), backend.clone())),
        }
    }
    Ok(targets)
}

/// Migrates one target in every database, stopping at its first failure.
async fn migrate_target(
    config: &Config,
    target: &Target,
    databases: &[String],
    files: &HashMap<String, Vec<Migration>>,
    dry_run: bool,
    outcome: &mut TargetOutcome,
) -> Result<(), ProvisionError> {
    let registry = admin_connect(config, &config.backend.registry_database).await?;
    let cluster = match target {
        Target::Template => config.backend.shared_cluster(),
        Target::Tenant(id, backend) => {
            // The same lock as `tenant create` and `tenant drop`: never both at once.
            lock_tenant(&registry, id).await?;
            tenant_cluster(config, id.as_str(), backend.as_deref())?
        }
    };
    let schema = target.schema();
    for db in databases {
        let mut client = cluster_connect(&cluster, db).await?;
        let exists: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1)",
                &[&schema],
            )
            .await
            .map_err(db_err(format!("looking up schema {schema} in {db}")))?
            .get(0);
        if !exists {
            match target {
                Target::Template if !dry_run => client
                    .batch_execute(&format!(
                        "CREATE SCHEMA IF NOT EXISTS {} AUTHORIZATION {}",
                        quote_ident(&schema),
                        quote_ident(&config.backend.admin_user)
                    ))
                    .await
                    .map_err(db_err(format!("creating schema {schema} in {db}")))?,
                Target::Template => {}
                Target::Tenant(id, _) => {
                    return Err(ProvisionError::Invalid(format!(
                        "tenant {id}: schema {schema} is missing in {db}; `pgtenant tenant create {id}` recreates it"
                    )))
                }
            }
        }
        let applied = apply_pending(
            &registry,
            &mut client,
            &files[db],
            db,
            target.tracking_id(),
            &schema,
            dry_run,
        )
        .await?;
        outcome
            .applied
            .extend(applied.into_iter().map(|v| (db.clone(), v)));
    }
    Ok(())
}

/// Applies the migrations of `db` not yet recorded under `tracking_id` to
/// `schema`, all in one transaction (each file after `SET LOCAL search_path`),
/// then records them. Returns the versions applied, or in a dry run the ones
/// pending. A recorded file whose content changed is refused, naming it. The
/// record lives in another database, so a crash between commit and record
/// re-applies those files next time: write migrations re-runnable.
pub(crate) async fn apply_pending(
    registry: &Client,
    client: &mut Client,
    files: &[Migration],
    db: &str,
    tracking_id: &str,
    schema: &str,
    dry_run: bool,
) -> Result<Vec<String>, ProvisionError> {
    let recorded: HashMap<String, String> = registry
        .query(
            "SELECT version, checksum FROM commons.schema_migrations WHERE tenant_id = $1 AND database = $2",
            &[&tracking_id, &db],
        )
        .await
        .map_err(db_err(format!("reading applied migrations of {tracking_id} in {db}")))?
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut pending = Vec::new();
    for m in files {
        match recorded.get(&m.version) {
            Some(sum) if *sum != m.checksum => {
                return Err(ProvisionError::Migration {
                    file: m.file.clone(),
                    message: format!(
                        "changed after it was applied to {schema} in {db} (recorded checksum {sum}, now {}); add a new migration instead",
                        m.checksum
                    ),
                })
            }
            Some(_) => {}
            None => pending.push(m),
        }
    }
    if dry_run || pending.is_empty() {
        return Ok(pending.iter().map(|m| m.version.clone()).collect());
    }
    let set_path = format!("SET LOCAL search_path = {}", quote_ident(schema));
    let tx = client
        .transaction()
        .await
        .map_err(db_err(format!("starting a transaction in {db}")))?;
    for m in &pending {
        let failed = |e: tokio_postgres::Error| ProvisionError::Migration {
            file: m.file.clone(),
            message: format!("{schema} in {db}: {}", super::db_message(&e)),
        };
        tx.batch_execute(&set_path).await.map_err(failed)?;
        tx.batch_execute(&m.sql).await.map_err(failed)?;
    }
    tx.commit()
        .await
        .map_err(db_err(format!("committing migrations of {schema} in {db}")))?;
    let versions: Vec<String> = pending.iter().map(|m| m.version.clone()).collect();
    let sums: Vec<String> = pending.iter().map(|m| m.checksum.clone()).collect();
    registry
        .execute(
            "INSERT INTO commons.schema_migrations (tenant_id, database, version, checksum)
             SELECT $1, $2, v, c FROM unnest($3::text[], $4::text[]) AS x(v, c)
             ON CONFLICT DO NOTHING",
            &[&tracking_id, &db, &versions, &sums],
        )
        .await
        .map_err(db_err(format!("recording migrations of {schema} in {db}")))?;
    tracing::debug!(schema, database = db, ?versions, "migrations applied");
    Ok(versions)
}
