//! `pgtenant init`: creates the registry database and the service databases
//! when missing and applies `sql/registry.sql` and `sql/service.sql` to them.
//!
//! It leaves tenants (schemas, roles, migrations) to [`crate::provision::tenant`].
//! Everything here is idempotent: running it again changes nothing.

use crate::config::{Cluster, Config};

use super::{admin_connect, cluster_connect, db_err, quote_ident, ProvisionError};

/// The registry schema, applied to `backend.registry_database`.
pub const REGISTRY_SQL: &str = include_str!("../../sql/registry.sql");

/// Shared `commons` schema and functions, applied to every service database.
pub const SERVICE_SQL: &str = include_str!("../../sql/service.sql");

/// Advisory lock key serialising concurrent `init` runs within one database.
const INIT_LOCK_KEY: i64 = 0x7067_7465_6e01;

/// Creates the registry and service databases if missing, applies the
/// registry and service SQL, and revokes PUBLIC's access to the registry
/// database (it holds password secrets); then the same service databases on
/// every dedicated cluster (`[backends]`). Safe to run any number of times.
pub async fn init(config: &Config) -> Result<(), ProvisionError> {
    init_shared(config).await?;
    for cluster in config.clusters().iter().filter(|c| c.name.is_some()) {
        init_dedicated(config, cluster).await?;
    }
    Ok(())
}

/// The service databases and their `commons` on a dedicated cluster, which
/// holds no registry. Idempotent; `tenant create --tier dedicated` runs it
/// too, so a new `[backends]` entry needs no `init` of its own.
pub async fn init_dedicated(config: &Config, cluster: &Cluster) -> Result<(), ProvisionError> {
    let maintenance = cluster_connect(cluster, &cluster.maintenance_database).await?;
    for db in &config.backend.databases {
        ensure_database(&maintenance, db).await?;
    }
    drop(maintenance);
    for db in &config.backend.databases {
        apply_sql(cluster, db, "sql/service.sql", SERVICE_SQL).await?;
    }
    tracing::info!(cluster = %cluster.describe(), databases = ?config.backend.databases, "init done");
    Ok(())
}

/// The registry and service databases of the shared cluster.
async fn init_shared(config: &Config) -> Result<(), ProvisionError> {
    let b = &config.backend;
    let mut maintenance = admin_connect(config, &b.maintenance_database).await?;
    let mut wanted: Vec<&String> = vec![&b.registry_database];
    wanted.extend(b.databases.iter().filter(|d| **d != b.registry_database));
    for db in &wanted {
        ensure_database(&maintenance, db).await?;
    }
    // Rights on a database are one catalog row that every init (and every
    // tenant's grants) updates: take turns, or concurrent runs fail with
    // "tuple concurrently updated".
    let revoke = format!(
        "REVOKE ALL ON DATABASE {} FROM PUBLIC",
        quote_ident(&b.registry_database)
    );
    let context = format!("revoking PUBLIC access to {}", b.registry_database);
    super::tenant::run_under_grant_lock(&mut maintenance, &revoke, context).await?;
    drop(maintenance);

    let shared = b.shared_cluster();
    apply_sql(
        &shared,
        &b.registry_database,
        "sql/registry.sql",
        REGISTRY_SQL,
    )
    .await?;
    for db in &b.databases {
        apply_sql(&shared, db, "sql/service.sql", SERVICE_SQL).await?;
    }
    tracing::info!(registry = %b.registry_database, databases = ?b.databases, "init done");
    Ok(())
}

/// Creates `db` unless it exists. CREATE DATABASE cannot run in a transaction,
/// so the check and the create are separate; a concurrent creator is tolerated.
async fn ensure_database(client: &tokio_postgres::Client, db: &str) -> Result<(), ProvisionError> {
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_catalog.pg_database WHERE datname = $1",
            &[&db],
        )
        .await
        .map_err(db_err(format!("looking up database {db}")))?
        .is_some();
    if exists {
        return Ok(());
    }
    match client
        .batch_execute(&format!("CREATE DATABASE {}", quote_ident(db)))
        .await
    {
        Ok(()) => {
            tracing::info!(database = db, "created database");
            Ok(())
        }
        // A concurrent creator won: 42P04, or 23505 when both passed the
        // catalog's uniqueness check at once.
        Err(e)
            if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE)
                || e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) =>
        {
            Ok(())
        }
        Err(e) => Err(db_err(format!("creating database {db}"))(e)),
    }
}

/// Runs `sql` in `db` in one transaction, serialised by an advisory lock.
async fn apply_sql(
    cluster: &Cluster,
    db: &str,
    name: &str,
    sql: &str,
) -> Result<(), ProvisionError> {
    let mut client = cluster_connect(cluster, db).await?;
    let tx = client
        .transaction()
        .await
        .map_err(db_err(format!("starting transaction in {db}")))?;
    tx.execute(
        "SELECT pg_catalog.pg_advisory_xact_lock($1)",
        &[&INIT_LOCK_KEY],
    )
    .await
    .map_err(db_err(format!("locking {db} for init")))?;
    tx.batch_execute(sql)
        .await
        .map_err(db_err(format!("applying {name} to {db}")))?;
    tx.commit()
        .await
        .map_err(db_err(format!("committing {name} in {db}")))?;
    Ok(())
}
