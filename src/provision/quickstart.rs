//! `pgtenant quickstart`'s database side: find or start a PostgreSQL, then
//! initialise it and provision two demo tenants (`acme`, `globex`) with a user
//! `alice` (password `alice`) and one demo contact each.
//!
//! It leaves starting the proxy and printing instructions to the caller
//! (`main.rs`), and the cluster mechanics to [`crate::provision::cluster`].

use std::path::Path;
use std::time::Duration;

use crate::config::Config;
use crate::tenant::id::{AccessLevel, TenantId};

use super::{
    admin_connect, create_tenant, db_err, init, quote_ident, ClusterOptions, LocalCluster,
    ProvisionError,
};

/// Port the quickstart cluster prefers (0 = any free one when it is taken).
pub const QUICKSTART_PORT: u16 = 54320;

/// Demo tenants: id, display name, demo contact.
const DEMO_TENANTS: [(&str, &str, &str); 2] = [
    ("acme", "Acme Corp", "Acme Corp contact"),
    ("globex", "Globex Corporation", "Globex contact"),
];

/// Makes a PostgreSQL ready for the quickstart and provisions the demo tenants.
///
/// If the configured backend accepts the admin role's login, it is used and
/// `None` is returned. Otherwise, when the server binaries are installed, a
/// private cluster is started in `state_dir` (kept between runs), `config.backend`
/// is pointed at it, and the running cluster is returned: keep it alive as long
/// as the proxy runs (dropping it stops the server). Then `init` runs, tenants
/// `acme` and `globex` are created with user `alice`/`alice` (rw), and each
/// tenant's empty `contacts` table gets one demo row.
pub async fn prepare(
    config: &mut Config,
    state_dir: &Path,
) -> Result<Option<LocalCluster>, ProvisionError> {
    let cluster = match tokio::time::timeout(
        Duration::from_secs(5),
        admin_connect(config, &config.backend.maintenance_database),
    )
    .await
    {
        Ok(Ok(_client)) => {
            tracing::info!(host = %config.backend.host, port = config.backend.port, "using the configured PostgreSQL");
            None
        }
        outcome => {
            let reason = match outcome {
                Ok(Err(e)) => e.to_string(),
                _ => "timed out".to_string(),
            };
            if !super::server_binaries_available() {
                return Err(ProvisionError::Cluster(format!(
                    "cannot log in to PostgreSQL at {}:{} as {} ({reason}), and no PostgreSQL server binaries are installed to start a private one.\n\
                     Either point pgtenant at your PostgreSQL in config/pgtenant.toml:\n\
                     \n  [backend]\n  host = \"127.0.0.1\"\n  port = 5432\n  admin_user = \"marvin\"      # a role with CREATEDB and CREATEROLE, or a superuser\n  admin_password = \"...\"\n\n\
                     or install the server binaries (e.g. `apt-get install postgresql`) and run quickstart again.",
                    config.backend.host, config.backend.port, config.backend.admin_user
                )));
            }
            tracing::info!(%reason, dir = %state_dir.display(), "configured PostgreSQL not reachable; starting a private one");
            Some(start_private(config, state_dir).await?)
        }
    };

    init(config).await?;
    for (id, name, contact) in DEMO_TENANTS {
        let id = TenantId::parse(id).map_err(|e| ProvisionError::Invalid(e.to_string()))?;
        create_tenant(config, &id, name).await?;
        super::add_user(config, &id, "alice", "alice", AccessLevel::ReadWrite).await?;
        seed_contact(config, &id, contact).await?;
    }
    Ok(cluster)
}

/// Starts (or restarts) the quickstart cluster in `state_dir` and points `config` at it.
async fn start_private(
    config: &mut Config,
    state_dir: &Path,
) -> Result<LocalCluster, ProvisionError> {
    if config.backend.admin_password.is_empty() {
        config.backend.admin_password = "marvin".into();
    }
    let port = if std::net::TcpListener::bind(("127.0.0.1", QUICKSTART_PORT)).is_ok() {
        QUICKSTART_PORT
    } else {
        0
    };
    let opts = ClusterOptions {
        dir: state_dir.to_path_buf(),
        port,
        superuser: config.backend.admin_user.clone(),
        password: config.backend.admin_password.clone(),
        remove_on_exit: false,
    };
    let cluster = tokio::task::spawn_blocking(move || LocalCluster::start(opts))
        .await
        .map_err(|e| ProvisionError::Cluster(format!("cluster start task failed: {e}")))??;
    config.backend.host = cluster.host.clone();
    config.backend.port = cluster.port;
    Ok(cluster)
}

/// Inserts one demo contact if the tenant's `contacts` table exists in some
/// service database and is empty.
async fn seed_contact(config: &Config, id: &TenantId, contact: &str) -> Result<(), ProvisionError> {
    let table = format!("{}.contacts", quote_ident(&id.schema()));
    for db in &config.backend.databases {
        let client = admin_connect(config, db).await?;
        let exists: bool = client
            .query_one("SELECT pg_catalog.to_regclass($1) IS NOT NULL", &[&table])
            .await
            .map_err(db_err(format!("looking for {table} in {db}")))?
            .get(0);
        if !exists {
            continue;
        }
        client
            .execute(
                &format!("INSERT INTO {table} (name, email) SELECT $1, $2 WHERE NOT EXISTS (SELECT 1 FROM {table})"),
                &[&contact, &format!("hello@{id}.example")],
            )
            .await
            .map_err(db_err(format!("adding a demo contact to {table} in {db}")))?;
    }
    Ok(())
}
