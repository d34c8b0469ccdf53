//! `[backends.NAME]`: the PostgreSQL clusters of `dedicated` tenants, and
//! [`Cluster`], the address and admin login of any cluster pgtenant
//! provisions or serves: `[backend]` (the shared cluster, which also holds
//! the registry) or one of `[backends]`.
//!
//! A dedicated cluster has the same service databases, tenant role secret
//! and `search_path` tail as `[backend]`; only where it is and how the
//! admin logs in differ. Which cluster a tenant lives on is its registry
//! row's `backend` column, set by `tenant create --tier dedicated --backend NAME`.

use serde::Deserialize;

use super::{is_identifier, BackendConfig};

/// One `[backends.NAME]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedicatedBackend {
    /// Host name, IP address, or a directory holding the Unix socket. Required.
    pub host: String,
    /// Port. Default 5432.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Admin role on that cluster; default `backend.admin_user`.
    pub admin_user: Option<String>,
    /// Its password; default `backend.admin_password`.
    pub admin_password: Option<String>,
    /// A database that always exists there; default `backend.maintenance_database`.
    pub maintenance_database: Option<String>,
}

fn default_port() -> u16 {
    5432
}

/// A cluster pgtenant connects to, with everything needed to log in as its
/// admin role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// `None` for the shared cluster (`[backend]`), else the `[backends]` name.
    pub name: Option<String>,
    /// Host name, IP address, or Unix socket directory.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Admin role for provisioning, migrations and backups.
    pub admin_user: String,
    /// Its password (may be empty for trust/peer).
    pub admin_password: String,
    /// A database that always exists.
    pub maintenance_database: String,
    /// Where cluster-wide statements run (roles, `pg_stat_activity`): the
    /// registry database on the shared cluster, the maintenance database on
    /// a dedicated one.
    pub roles_database: String,
}

impl Cluster {
    /// `name (host:port)`, or `the shared cluster (host:port)`, for messages.
    pub fn describe(&self) -> String {
        match &self.name {
            Some(name) => format!("backend {name} ({}:{})", self.host, self.port),
            None => format!("the shared cluster ({}:{})", self.host, self.port),
        }
    }
}

impl BackendConfig {
    /// The shared cluster itself.
    pub fn shared_cluster(&self) -> Cluster {
        Cluster {
            name: None,
            host: self.host.clone(),
            port: self.port,
            admin_user: self.admin_user.clone(),
            admin_password: self.admin_password.clone(),
            maintenance_database: self.maintenance_database.clone(),
            roles_database: self.registry_database.clone(),
        }
    }

    /// Dedicated backend `name`, its unset keys taken from this `[backend]`.
    pub fn dedicated_cluster(&self, name: &str, b: &DedicatedBackend) -> Cluster {
        let maintenance = b
            .maintenance_database
            .clone()
            .unwrap_or_else(|| self.maintenance_database.clone());
        Cluster {
            name: Some(name.to_string()),
            host: b.host.clone(),
            port: b.port,
            admin_user: b
                .admin_user
                .clone()
                .unwrap_or_else(|| self.admin_user.clone()),
            admin_password: b
                .admin_password
                .clone()
                .unwrap_or_else(|| self.admin_password.clone()),
            roles_database: maintenance.clone(),
            maintenance_database: maintenance,
        }
    }
}

/// Checks the `[backends]` tables; the error is (key, message).
pub(super) fn validate(
    backends: &std::collections::BTreeMap<String, DedicatedBackend>,
) -> Result<(), (String, String)> {
    for (name, b) in backends {
        let key = |field: &str| format!("backends.{name}.{field}");
        if !is_identifier(name) || name.len() > 40 {
            return Err((
                format!("backends.{name}"),
                "a backend name is a plain identifier ([a-z_][a-z0-9_]*, at most 40 characters)"
                    .into(),
            ));
        }
        if b.host.is_empty() {
            return Err((key("host"), "must not be empty".into()));
        }
        if let Some(user) = &b.admin_user {
            if !is_identifier(user) {
                return Err((key("admin_user"), "must be a plain identifier".into()));
            }
        }
        if let Some(db) = &b.maintenance_database {
            if db.is_empty() || db.contains('\0') {
                return Err((key("maintenance_database"), "must not be empty".into()));
            }
        }
    }
    Ok(())
}
