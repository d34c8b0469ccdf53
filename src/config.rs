//! Configuration: the TOML file's types, their defaults, loading and validation.
//!
//! Every struct denies unknown keys, so a typo is an error that names the file,
//! line and key instead of a silently ignored setting. Values are parsed into
//! typed fields (`SocketAddr`, enums) by serde, so a bad value is reported with
//! its position too. Durations are written in seconds (fractions allowed), as
//! PgBouncer users are used to.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod backends;

pub use backends::{Cluster, DedicatedBackend};

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file that was read.
        path: String,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or a key or value is wrong; the message names line and key.
    #[error("{path}: {message}")]
    Parse {
        /// The file that was read.
        path: String,
        /// toml's message, with line, column and key.
        message: String,
    },
    /// The values parse but do not make sense together.
    #[error("{path}: {key}: {message}")]
    Invalid {
        /// The file that was read.
        path: String,
        /// The dotted key that is wrong.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where clients connect.
    pub listen: ListenConfig,
    /// The PostgreSQL cluster behind the proxy.
    pub backend: BackendConfig,
    /// The clusters of dedicated tenants, by name (`[backends.NAME]`).
    pub backends: std::collections::BTreeMap<String, DedicatedBackend>,
    /// How clients prove who they are.
    pub auth: AuthConfig,
    /// How the tenant is found in the startup packet.
    pub tenants: TenantsConfig,
    /// Backend pools.
    pub pool: PoolConfig,
    /// Provisioning: where migrations live.
    pub provision: ProvisionConfig,
    /// TLS towards clients and towards PostgreSQL.
    pub tls: TlsConfig,
    /// What is logged, and how.
    pub log: LogConfig,
    /// The admin console.
    pub admin: AdminConfig,
    /// The HTTP listener: `/metrics`, `/healthz`, `/readyz`.
    pub http: HttpConfig,
}

/// How log lines are written to standard error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event, the client span's fields in front.
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, the event's
    /// fields at the top level, and the client span's fields under `span`.
    Json,
}

/// `[log]`: log output and PgBouncer's per-connection log switches. Read at
/// start only.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Level or `tracing` filter directives (`info`, `warn,pgtenant=debug`).
    /// `RUST_LOG`, when set, takes its place. Default `info`.
    pub level: String,
    /// `text` or `json`. Default `text`.
    pub format: LogFormat,
    /// An info line when a client has logged in: tenant, database, user,
    /// client address, TLS. Default true.
    pub log_connections: bool,
    /// An info line when a client leaves: how long it stayed and why. Default true.
    pub log_disconnections: bool,
    /// Every error the proxy itself sends a client, logged at warn. Default true.
    pub log_pooler_errors: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
            log_connections: true,
            log_disconnections: true,
            log_pooler_errors: true,
        }
    }
}

/// How `/metrics` labels series by tenant (`http.metrics_tenant_label`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantLabel {
    /// One series per tenant.
    All,
    /// The `metrics_top_n` tenants with most queries get their own series;
    /// the others are summed into `tenant="_other"`.
    TopN,
    /// No tenant label: series are summed per database and user.
    None,
}

/// `[http]`: the HTTP listener for metrics and health checks.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address to serve HTTP on; empty for no listener. Default
    /// `127.0.0.1:9930`. Takes effect at start only.
    pub listen_addr: String,
    /// Tenant label on `/metrics`: `all`, `top_n` or `none`. Default `top_n`. Reload applies.
    pub metrics_tenant_label: TenantLabel,
    /// Tenants with their own series under `top_n`. Default 20. Reload applies.
    pub metrics_top_n: usize,
    /// Bearer token the admin API (`/tenants...`) requires in
    /// `Authorization: Bearer <token>`. Default empty: no token asked, and
    /// then the API answers only when `listen_addr` is a loopback address.
    /// `/metrics`, `/healthz` and `/readyz` never ask for it. Reload applies.
    pub api_token: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen_addr: "127.0.0.1:9930".into(),
            metrics_tenant_label: TenantLabel::TopN,
            metrics_top_n: 20,
            api_token: String::new(),
        }
    }
}

/// `[admin]`: the admin console, the virtual database `pgbouncer` (alias
/// `pgtenant`). Users authenticate with their entry in `auth.auth_file`
/// under their bare name. Reload applies.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Users who may run every console command. Default none.
    pub admin_users: Vec<String>,
    /// Users who may run the SHOW commands only. Default none.
    pub stats_users: Vec<String>,
    /// Seconds over which SHOW STATS averages are taken (PgBouncer's
    /// `stats_period`). Default 15; a new value applies from the next period.
    pub stats_period: f64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            admin_users: Vec::new(),
            stats_users: Vec::new(),
            stats_period: 15.0,
        }
    }
}

impl HttpConfig {
    /// The address to listen on; `None` when the listener is disabled.
    /// Validation has checked that a non-empty value parses.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.listen_addr.parse().ok()
    }
}

/// PgBouncer's `*_tls_sslmode` values, with libpq's meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// No TLS: clients' SSLRequest is answered `N`; servers are not asked.
    Disable,
    /// Clients: TLS offered, plain accepted. Servers: plain (no SSLRequest sent).
    Allow,
    /// Clients: TLS offered, plain accepted. Servers: TLS when the server offers it.
    Prefer,
    /// TLS or nothing; certificates are not checked.
    Require,
    /// TLS with a certificate signed by the configured CA (clients must present one).
    VerifyCa,
    /// As `verify-ca`; servers' certificates must also name the host connected to.
    VerifyFull,
}

/// `[tls]`: TLS, with PgBouncer's key names. Files are read at start and again
/// on SIGHUP (existing connections keep the certificates they started with);
/// the modes themselves take effect at start only.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// TLS for clients. Default `disable`. `require` and above refuse plain
    /// TCP clients (Unix-socket clients are never asked for TLS).
    pub client_tls_sslmode: SslMode,
    /// PEM certificate chain the proxy shows clients. Needed unless `disable`.
    pub client_tls_cert_file: String,
    /// PEM private key of `client_tls_cert_file`.
    pub client_tls_key_file: String,
    /// PEM CA certificates that sign client certificates; needed for `verify-ca`/`verify-full`.
    pub client_tls_ca_file: String,
    /// TLS towards PostgreSQL. Default `disable` (PgBouncer's is `prefer`).
    pub server_tls_sslmode: SslMode,
    /// PEM CA certificates that sign the server's; needed for `verify-ca`/`verify-full`.
    pub server_tls_ca_file: String,
    /// Optional PEM client certificate the proxy presents to PostgreSQL.
    pub server_tls_cert_file: String,
    /// Private key of `server_tls_cert_file`.
    pub server_tls_key_file: String,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            client_tls_sslmode: SslMode::Disable,
            client_tls_cert_file: String::new(),
            client_tls_key_file: String::new(),
            client_tls_ca_file: String::new(),
            server_tls_sslmode: SslMode::Disable,
            server_tls_ca_file: String::new(),
            server_tls_cert_file: String::new(),
            server_tls_key_file: String::new(),
        }
    }
}

impl TlsConfig {
    /// Checks that each mode has the files it needs (their contents are checked
    /// when they are loaded).
    fn validate(&self) -> Result<(), (&'static str, String)> {
        let client = self.client_tls_sslmode;
        if client != SslMode::Disable {
            for (key, value) in [
                ("tls.client_tls_cert_file", &self.client_tls_cert_file),
                ("tls.client_tls_key_file", &self.client_tls_key_file),
            ] {
                if value.is_empty() {
                    return Err((key, "needed when client_tls_sslmode is not disable".into()));
                }
            }
        }
        if client >= SslMode::VerifyCa && self.client_tls_ca_file.is_empty() {
            return Err((
                "tls.client_tls_ca_file",
                "needed when client_tls_sslmode is verify-ca or verify-full".into(),
            ));
        }
        if self.server_tls_sslmode >= SslMode::VerifyCa && self.server_tls_ca_file.is_empty() {
            return Err((
                "tls.server_tls_ca_file",
                "needed when server_tls_sslmode is verify-ca or verify-full".into(),
            ));
        }
        if self.server_tls_cert_file.is_empty() != self.server_tls_key_file.is_empty() {
            return Err((
                "tls.server_tls_key_file",
                "server_tls_cert_file and server_tls_key_file go together".into(),
            ));
        }
        Ok(())
    }

    fn files_mut(&mut self) -> [&mut String; 6] {
        [
            &mut self.client_tls_cert_file,
            &mut self.client_tls_key_file,
            &mut self.client_tls_ca_file,
            &mut self.server_tls_ca_file,
            &mut self.server_tls_cert_file,
            &mut self.server_tls_key_file,
        ]
    }
}

/// `[provision]`: tenant provisioning.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProvisionConfig {
    /// Directory holding `<database>/migrations/*.sql`. Relative paths are taken
    /// from the current directory. Default `sql`.
    pub migrations_dir: String,
    /// Directory in which backups taken without an explicit directory
    /// (`pgtenant backup`, `tenant drop`, the admin API's DELETE) get their
    /// own new `pgtenant-backup-<id>-<time>` directory; created when missing.
    /// Default empty: the current directory.
    pub backup_dir: String,
}

impl Default for ProvisionConfig {
    fn default() -> Self {
        Self {
            migrations_dir: "sql".into(),
            backup_dir: String::new(),
        }
    }
}

/// `[listen]`: the client-facing listeners.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// TCP address to accept clients on. Default `127.0.0.1:6432`.
    pub addr: SocketAddr,
    /// Directory for the Unix socket `.s.PGSQL.<port>`; empty for none. Default empty.
    pub unix_socket_dir: String,
    /// Seconds a client has to finish startup and authentication. Default 15.
    pub client_login_timeout: f64,
    /// Largest accepted startup packet, in bytes. Default 10000.
    pub max_startup_packet: usize,
    /// Seconds SIGTERM (`pgtenant` drains) waits for clients to finish their
    /// transactions before closing what is left. Default 30.
    pub shutdown_timeout: f64,
    /// Bind the TCP listener with `SO_REUSEPORT`, so a second pgtenant can
    /// listen on the same port for a rolling restart. Default false.
    pub so_reuseport: bool,
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 6432)),
            unix_socket_dir: String::new(),
            client_login_timeout: 15.0,
            max_startup_packet: 10_000,
            shutdown_timeout: 30.0,
            so_reuseport: false,
        }
    }
}

/// `[backend]`: the PostgreSQL cluster, its admin role and its databases.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackendConfig {
    /// Host name, IP address, or a directory holding the Unix socket. Default `127.0.0.1`.
    pub host: String,
    /// Port. Default 5432.
    pub port: u16,
    /// Admin role for the registry, provisioning and migrations. Default `marvin`.
    pub admin_user: String,
    /// The admin role's password (may be empty for trust/peer). Default empty.
    pub admin_password: String,
    /// A database that always exists, used to create the others. Default `postgres`.
    pub maintenance_database: String,
    /// Database holding the tenant registry (`commons.tenants`). Default `tenant_db`.
    pub registry_database: String,
    /// Service databases that hold one `tenant_<id>` schema per tenant. Default `crm_db`, `product_db`.
    pub databases: Vec<String>,
    /// Secret from which each tenant role's login password is derived, so no
    /// per-tenant password is stored anywhere. Change it before production.
    pub tenant_role_secret: String,
    /// Schemas after the tenant's own in every backend's `search_path`. Default `commons`, `public`.
    pub search_path_tail: Vec<String>,
    /// Passthrough mode only: the server database a served database stands
    /// for, when the names differ (PgBouncer's `dbname=`), e.g.
    /// `{ bardb = "bazdb" }`. Keys are `databases` entries. Default empty.
    pub server_databases: std::collections::BTreeMap<String, String>,
}

impl Default for BackendConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 5432,
            admin_user: "marvin".into(),
            admin_password: String::new(),
            maintenance_database: "postgres".into(),
            registry_database: "tenant_db".into(),
            databases: vec!["crm_db".into(), "product_db".into()],
            tenant_role_secret: "pgtenant-demo-secret".into(),
            search_path_tail: vec!["commons".into(), "public".into()],
            server_databases: Default::default(),
        }
    }
}

/// Client authentication methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMethod {
    /// SCRAM-SHA-256, the default.
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// PostgreSQL's md5 challenge (needs a plain or md5 secret).
    Md5,
    /// No password at all; for local development only.
    Trust,
}

/// `[auth]`: client authentication.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Method asked of every client. Default `scram-sha-256`.
    pub method: AuthMethod,
    /// PgBouncer-format `userlist.txt`, keyed by `user@tenant`; consulted before
    /// the registry's `commons.tenant_users`. Empty for none. Relative paths are
    /// taken from the config file's directory.
    pub auth_file: String,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            method: AuthMethod::ScramSha256,
            auth_file: String::new(),
        }
    }
}

/// Places in the startup packet a tenant can be named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TenantSource {
    /// `alice@acme` or `alice.acme`.
    User,
    /// `options=-c tenant=acme`, `--tenant=acme` or `reference=acme`.
    Options,
    /// The database name is the tenant id.
    Database,
    /// The TLS server name (SNI) less `tenants.sni_suffix`: `acme.db.example.com` names `acme`.
    Sni,
}

/// Whether pgtenant's tenant features are on (`tenants.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TenantMode {
    /// Every client names a tenant; server connections log in as the
    /// tenant's role with its `search_path` and `app.current_tenant`.
    Tenant,
    /// Tenant features off, as PgBouncer: no registry, no tenant resolution;
    /// a client's `user` and `database` are used as they are, pools are
    /// (database, user) pairs, and server connections log in as the
    /// client's user with its `auth_file` secret.
    Passthrough,
}

/// `[tenants]`: tenant resolution and registry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantsConfig {
    /// `tenant` (default) or `passthrough`. Serving a `pgbouncer.ini` makes
    /// it `passthrough` unless the TOML sets it. Takes effect at start only.
    pub mode: TenantMode,
    /// Sources in the order they are consulted. Default `user`, `options`, `database`.
    pub sources: Vec<TenantSource>,
    /// Characters that split `name<sep>tenant` in the user name, at the last one found. Default `@` and `.`.
    pub user_separators: Vec<char>,
    /// Service database used when the database name itself names the tenant. Default: the first of `backend.databases`.
    pub default_database: String,
    /// Domain suffix stripped from the TLS server name to give the tenant, e.g.
    /// `.db.example.com`; a name without it names no tenant. Needed for the `sni` source.
    pub sni_suffix: String,
}

impl TenantsConfig {
    /// True when tenant features are off (`mode = "passthrough"`).
    pub fn passthrough(&self) -> bool {
        self.mode == TenantMode::Passthrough
    }
}

impl Default for TenantsConfig {
    fn default() -> Self {
        Self {
            mode: TenantMode::Tenant,
            sources: vec![
                TenantSource::User,
                TenantSource::Options,
                TenantSource::Database,
            ],
            user_separators: vec!['@', '.'],
            default_database: String::new(),
            sni_suffix: String::new(),
        }
    }
}

/// `[pool]`: backend pools.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// Backends per (tenant, database, access level) pool; a tenant's
    /// `config.pool_size` overrides it. Default 20.
    pub default_pool_size: usize,
    /// Seconds a client may wait for a backend before it gets an error. Default 120.
    pub query_wait_timeout: f64,
    /// Seconds to open and log in a backend. Default 15.
    pub server_connect_timeout: f64,
    /// Query that cleans a backend before it serves the next client in
    /// session mode (and in transaction mode when the client left session
    /// state behind). Default `DISCARD ALL`.
    pub server_reset_query: String,
    /// When a client's backend goes back to the pool. Default `session`; a
    /// tenant's `config.pool_mode` or `database_pool_modes` override it.
    pub pool_mode: PoolMode,
    /// Pool mode per service database, e.g. `{ crm_db = "transaction" }`.
    pub database_pool_modes: std::collections::BTreeMap<String, PoolMode>,
    /// Server connections in all, shared fairly by every pool (see
    /// `pool::budget`); 0 for no limit. Default 0.
    pub max_server_connections: usize,
    /// Server connections to one database, in all its pools (every tenant's,
    /// or in passthrough every user's), as PgBouncer's `max_db_connections`;
    /// a client whose checkout would exceed it waits (up to
    /// `query_wait_timeout`). 0 for no limit. Default 0. Reload applies.
    pub max_db_connections: usize,
    /// Server connections logged in as one PostgreSQL role, in all
    /// databases (a tenant pool's `tenant_<id>_rw` / `_ro`; in passthrough
    /// the client's user), as PgBouncer's `max_user_connections`; a client
    /// whose checkout would exceed it waits. 0 for no limit. Default 0.
    /// Reload applies.
    pub max_user_connections: usize,
    /// Seconds an idle server connection is kept; idle tenants' pools shrink
    /// to nothing. 0: forever. Default 600.
    pub server_idle_timeout: f64,
    /// Seconds after which an idle server connection is closed however busy
    /// it was. 0: forever. Default 3600.
    pub server_lifetime: f64,
    /// Seconds a client may sit inside a transaction without sending
    /// anything (with no reply owed) before it is disconnected (25P03) and
    /// its server connection closed, in every pool mode. 0: no limit.
    /// Default 0. Reload applies to clients that log in afterwards.
    pub idle_transaction_timeout: f64,
    /// Seconds a client may stay connected without sending anything between
    /// transactions, before it is disconnected (57P05), in every pool mode
    /// (in session mode its server connection, at rest, is kept in the
    /// pool). 0: no limit. Default 0; reload applies to new sessions.
    pub client_idle_timeout: f64,
    /// Most clients connected at once; more are refused with 53300. Default 10000.
    pub max_client_conn: usize,
    /// Prepared statements kept per server connection in transaction and
    /// statement mode; the least recently used one is closed beyond it. Default 200.
    pub max_prepared_statements: usize,
    /// Server connections each pool keeps open once it has been used, even
    /// when idle (capped by its size); 0 lets idle pools shrink to nothing.
    /// Default 0.
    pub min_pool_size: usize,
    /// Extra connections a pool may open for clients that waited longer
    /// than `reserve_pool_timeout` (PgBouncer's reserve pool). Default 0.
    pub reserve_pool_size: usize,
    /// Seconds a client waits before the reserve pool is used. Default 5.
    pub reserve_pool_timeout: f64,
}

/// When a backend is returned to its pool (PgBouncer's `pool_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// When the client disconnects.
    Session,
    /// At the end of each transaction.
    Transaction,
    /// After each statement; transactions of several statements are refused.
    Statement,
}

impl PoolMode {
    /// Parses `session` / `transaction` / `statement`.
    pub fn parse(s: &str) -> Option<PoolMode> {
        match s {
            "session" => Some(PoolMode::Session),
            "transaction" => Some(PoolMode::Transaction),
            "statement" => Some(PoolMode::Statement),
            _ => None,
        }
    }
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            default_pool_size: 20,
            query_wait_timeout: 120.0,
            server_connect_timeout: 15.0,
            server_reset_query: "DISCARD ALL".into(),
            pool_mode: PoolMode::Session,
            database_pool_modes: Default::default(),
            max_prepared_statements: 200,
            min_pool_size: 0,
            reserve_pool_size: 0,
            reserve_pool_timeout: 5.0,
            max_server_connections: 0,
            max_db_connections: 0,
            max_user_connections: 0,
            server_idle_timeout: 600.0,
            server_lifetime: 3600.0,
            idle_transaction_timeout: 0.0,
            client_idle_timeout: 0.0,
            max_client_conn: 10_000,
        }
    }
}

/// A timeout where 0 means none.
pub fn optional_seconds(value: f64) -> Option<Duration> {
    (value > 0.0).then(|| seconds(value))
}

/// Seconds from the config as a `Duration` (validation has ruled out bad values).
pub fn seconds(value: f64) -> Duration {
    Duration::from_secs_f64(value.max(0.0))
}

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let mut config = Config::parse(&text, &path.display().to_string())?;
        if let Some(dir) = path.parent() {
            config.resolve_relative_paths(dir);
        }
        Ok(config)
    }

    /// Parses and validates configuration text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        config.validate(origin)?;
        Ok(config)
    }

    /// Deserializes and validates an already parsed TOML table (a file's,
    /// with settings from elsewhere laid on top); relative paths are taken
    /// from `dir`, as [`Config::load`] takes them from the file's directory.
    pub fn from_table(
        table: toml::Table,
        origin: &str,
        dir: Option<&Path>,
    ) -> Result<Config, ConfigError> {
        let mut config: Config =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    path: origin.to_string(),
                    message: e.to_string().trim_end().to_string(),
                })?;
        if let Some(dir) = dir {
            config.resolve_relative_paths(dir);
        }
        config.validate(origin)?;
        Ok(config)
    }

    fn resolve_relative_paths(&mut self, dir: &Path) {
        let tls = self.tls.files_mut();
        for file in std::iter::once(&mut self.auth.auth_file).chain(tls) {
            if !file.is_empty() {
                let p = PathBuf::from(&*file);
                if p.is_relative() {
                    *file = dir.join(p).display().to_string();
                }
            }
        }
    }

    /// Checks values that parse but may not make sense, filling in derived
    /// defaults; `origin` names the source in errors.
    pub fn validate(&mut self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: origin.to_string(),
            key: key.to_string(),
            message,
        };
        for (key, value) in [
            (
                "listen.client_login_timeout",
                self.listen.client_login_timeout,
            ),
            ("pool.query_wait_timeout", self.pool.query_wait_timeout),
            (
                "pool.server_connect_timeout",
                self.pool.server_connect_timeout,
            ),
            ("admin.stats_period", self.admin.stats_period),
        ] {
            if !(value.is_finite() && value > 0.0 && value < 1e9) {
                return Err(invalid(
                    key,
                    format!("must be a positive number of seconds, not {value}"),
                ));
            }
        }
        for (key, value) in [
            ("listen.shutdown_timeout", self.listen.shutdown_timeout),
            ("pool.reserve_pool_timeout", self.pool.reserve_pool_timeout),
            ("pool.server_idle_timeout", self.pool.server_idle_timeout),
            ("pool.server_lifetime", self.pool.server_lifetime),
            (
                "pool.idle_transaction_timeout",
                self.pool.idle_transaction_timeout,
            ),
            ("pool.client_idle_timeout", self.pool.client_idle_timeout),
        ] {
            if !(value.is_finite() && (0.0..1e9).contains(&value)) {
                return Err(invalid(
                    key,
                    format!("must be 0 or a positive number of seconds, not {value}"),
                ));
            }
        }
        if self.listen.max_startup_packet < 64 {
            return Err(invalid(
                "listen.max_startup_packet",
                "must be at least 64".into(),
            ));
        }
        if self.pool.default_pool_size == 0 {
            return Err(invalid(
                "pool.default_pool_size",
                "must be at least 1".into(),
            ));
        }
        if self.pool.max_prepared_statements == 0 {
            return Err(invalid(
                "pool.max_prepared_statements",
                "must be at least 1".into(),
            ));
        }
        for db in self.pool.database_pool_modes.keys() {
            if !self.backend.databases.contains(db) {
                return Err(invalid(
                    "pool.database_pool_modes",
                    format!("{db:?} is not one of backend.databases"),
                ));
            }
        }
        for (db, server) in &self.backend.server_databases {
            if !self.tenants.passthrough() {
                return Err(invalid(
                    "backend.server_databases",
                    "only for tenants.mode = \"passthrough\"".into(),
                ));
            }
            if !self.backend.databases.contains(db) {
                return Err(invalid(
                    "backend.server_databases",
                    format!("{db:?} is not one of backend.databases"),
                ));
            }
            if server.is_empty() || server.contains('\0') {
                return Err(invalid(
                    "backend.server_databases",
                    format!("{db:?}: the server database name must not be empty"),
                ));
            }
        }
        if self.backend.databases.is_empty() {
            return Err(invalid(
                "backend.databases",
                "name at least one service database".into(),
            ));
        }
        for db in self
            .backend
            .databases
            .iter()
            .chain([&self.backend.registry_database])
        {
            if !is_identifier(db) {
                return Err(invalid(
                    "backend.databases",
                    format!("{db:?} is not a plain identifier ([a-z_][a-z0-9_]*)"),
                ));
            }
        }
        if !is_identifier(&self.backend.admin_user) {
            return Err(invalid(
                "backend.admin_user",
                "must be a plain identifier".into(),
            ));
        }
        for schema in &self.backend.search_path_tail {
            if !is_identifier(schema) {
                return Err(invalid(
                    "backend.search_path_tail",
                    format!("{schema:?} is not a plain identifier"),
                ));
            }
        }
        if self.backend.tenant_role_secret.is_empty() {
            return Err(invalid(
                "backend.tenant_role_secret",
                "must not be empty".into(),
            ));
        }
        backends::validate(&self.backends).map_err(|(key, message)| invalid(&key, message))?;
        if self.tenants.sources.is_empty() {
            return Err(invalid(
                "tenants.sources",
                "name at least one source".into(),
            ));
        }
        if !self.tenants.passthrough() && self.tenants.sources.contains(&TenantSource::Sni) {
            if self.tenants.sni_suffix.is_empty() {
                return Err(invalid(
                    "tenants.sni_suffix",
                    "needed when tenants.sources has sni".into(),
                ));
            }
            if self.tls.client_tls_sslmode == SslMode::Disable {
                return Err(invalid(
                    "tenants.sources",
                    "sni needs tls.client_tls_sslmode other than disable".into(),
                ));
            }
        }
        self.tls
            .validate()
            .map_err(|(key, message)| invalid(key, message))?;
        if self.log.level.trim().is_empty() {
            return Err(invalid(
                "log.level",
                "must not be empty (e.g. \"info\")".into(),
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&self.log.level) {
            return Err(invalid("log.level", format!("{:?}: {e}", self.log.level)));
        }
        if !self.http.listen_addr.is_empty() && self.http.addr().is_none() {
            return Err(invalid(
                "http.listen_addr",
                format!(
                    "{:?} is not an address like 127.0.0.1:9930 (empty disables the listener)",
                    self.http.listen_addr
                ),
            ));
        }
        if self.tenants.default_database.is_empty() {
            self.tenants.default_database = self.backend.databases[0].clone();
        } else if !self
            .backend
            .databases
            .contains(&self.tenants.default_database)
        {
            return Err(invalid(
                "tenants.default_database",
                format!(
                    "{:?} is not one of backend.databases",
                    self.tenants.default_database
                ),
            ));
        }
        Ok(())
    }
}

impl Config {
    /// The cluster of a tenant whose registry row names `backend` (`None`
    /// or empty: the shared cluster); `None` when no `[backends]` entry has
    /// that name.
    pub fn cluster(&self, backend: Option<&str>) -> Option<Cluster> {
        match backend.filter(|name| !name.is_empty()) {
            None => Some(self.backend.shared_cluster()),
            Some(name) => self
                .backends
                .get(name)
                .map(|b| self.backend.dedicated_cluster(name, b)),
        }
    }

    /// Every configured cluster, the shared one first.
    pub fn clusters(&self) -> Vec<Cluster> {
        std::iter::once(self.backend.shared_cluster())
            .chain(
                self.backends
                    .iter()
                    .map(|(name, b)| self.backend.dedicated_cluster(name, b)),
            )
            .collect()
    }
}

/// True for names pgtenant interpolates into SQL unquoted: `[a-z_][a-z0-9_]*`, at most 63 bytes.
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z' | '_'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
        && name.len() <= 63
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::parse("", "t.toml").unwrap();
        assert_eq!(c.listen.addr.port(), 6432);
        assert_eq!(c.tenants.default_database, "crm_db");
        assert_eq!(c.auth.method, AuthMethod::ScramSha256);
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let err = Config::parse(
            "[pool]\ndefault_pool_size = 3\ndefualt_pool_mode = 1\n",
            "p.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("p.toml"), "{err}");
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("defualt_pool_mode"), "{err}");
    }

    #[test]
    fn bad_value_is_reported() {
        let err = Config::parse("[listen]\naddr = \"nowhere\"\n", "p.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
        let err = Config::parse("[auth]\nmethod = \"plain\"\n", "p.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("method") || err.contains("line 2"), "{err}");
        let err = Config::parse("[pool]\nquery_wait_timeout = -1\n", "p.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("pool.query_wait_timeout"), "{err}");
        let err = Config::parse("[backend]\ndatabases = [\"Bad-Name\"]\n", "p.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("backend.databases"), "{err}");
    }

    #[test]
    fn tls_needs_its_files() {
        let err = Config::parse("[tls]\nclient_tls_sslmode = \"require\"\n", "p.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("tls.client_tls_cert_file"), "{err}");
        let err = Config::parse("[tls]\nserver_tls_sslmode = \"verify-full\"\n", "p.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("tls.server_tls_ca_file"), "{err}");
        let err = Config::parse("[tls]\nclient_tls_sslmode = \"sometimes\"\n", "p.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
        let err = Config::parse("[tenants]\nsources = [\"sni\"]\n", "p.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("tenants.sni_suffix"), "{err}");
        let c = Config::parse(
            "[tls]\nclient_tls_sslmode = \"verify-full\"\nclient_tls_cert_file = \"a\"\n\
             client_tls_key_file = \"b\"\nclient_tls_ca_file = \"c\"\n",
            "p.toml",
        )
        .unwrap();
        assert_eq!(c.tls.client_tls_sslmode, SslMode::VerifyFull);
    }

    #[test]
    fn log_section() {
        let c = Config::parse("", "p.toml").unwrap();
        assert_eq!(c.log.level, "info");
        assert_eq!(c.log.format, LogFormat::Text);
        assert!(c.log.log_connections && c.log.log_disconnections && c.log.log_pooler_errors);
        let c = Config::parse(
            "[log]\nlevel = \"warn,pgtenant=debug\"\nformat = \"json\"\nlog_connections = false\n",
            "p.toml",
        )
        .unwrap();
        assert_eq!(c.log.format, LogFormat::Json);
        assert!(!c.log.log_connections && c.log.log_disconnections);
        let err = Config::parse("[log]\nformat = \"xml\"\n", "p.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
        let err = Config::parse("[log]\nlevel = \"pgtenant=loud\"\n", "p.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("log.level"), "{err}");
        let err = Config::parse("[log]\nlog_connection = true\n", "p.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("log_connection"), "{err}");
    }

    #[test]
    fn http_section() {
        let c = Config::parse("", "p.toml").unwrap();
        assert_eq!(c.http.addr(), Some("127.0.0.1:9930".parse().unwrap()));
        assert_eq!(c.http.metrics_tenant_label, TenantLabel::TopN);
        let c = Config::parse(
            "[http]\nlisten_addr = \"\"\nmetrics_tenant_label = \"none\"\n",
            "p.toml",
        )
        .unwrap();
        assert_eq!(c.http.addr(), None);
        assert_eq!(c.http.metrics_tenant_label, TenantLabel::None);
        let err = Config::parse("[http]\nlisten_addr = \"localhost\"\n", "p.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("http.listen_addr"), "{err}");
        let err = Config::parse("[http]\nmetrics_tenant_label = \"some\"\n", "p.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn identifiers() {
        assert!(is_identifier("tenant_acme"));
        assert!(!is_identifier("Acme"));
        assert!(!is_identifier("a;drop"));
        assert!(!is_identifier(""));
        assert!(!is_identifier("1abc"));
    }
}

#[cfg(test)]
mod example_file {
    use super::*;

    #[test]
    fn shipped_example_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/pgtenant.toml");
        let config = Config::load(&path).unwrap();
        assert_eq!(config.listen.addr.port(), 6432);
        assert_eq!(config.backend.admin_password, "marvin");
        assert_eq!(config.log.format, LogFormat::Text);
        assert!(config.log.log_connections);
        assert_eq!(config.admin.admin_users, ["admin"]);
        assert_eq!(config.admin.stats_users, ["stats"]);
        assert_eq!(config.admin.stats_period, 15.0);
        assert_eq!(config.http.api_token, "");
        assert_eq!(config.provision.backup_dir, "backups");
    }
}
