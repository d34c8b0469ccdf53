//! `RELOAD` and SIGHUP: read the configuration again and put what can change
//! in a running proxy in force, or keep the old one whole and say why.
//!
//! Live: pool sizes, timeouts and modes, the global server budget,
//! `max_client_conn`, tenant resolution, the auth file, TLS certificate
//! files, the metrics tenant label. Needing a restart (reported, old value
//! kept): listen addresses (the HTTP one too), `tenants.mode`, the backend cluster and its
//! admin role, TLS modes.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use tracing::{info, warn};

use crate::auth::{auth_file, AuthFileError, Secret};
use crate::config::Config;
use crate::session::Context;
use crate::tls::TlsError;

/// Reads the configuration again from wherever the proxy got it.
pub type ConfigSource = Arc<dyn Fn() -> Result<Config, String> + Send + Sync>;

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The configuration could not be read or is invalid.
    #[error("{0}")]
    Config(String),
    /// The auth file named by the new configuration is unreadable.
    #[error(transparent)]
    AuthFile(#[from] AuthFileError),
    /// A TLS file is missing or malformed.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Reads the configuration from the proxy's source (TLS files only when it
/// has none) and applies it. Returns the settings that changed but need a
/// restart; on error nothing changed.
pub fn reload(ctx: &Context) -> Result<Vec<String>, ReloadError> {
    let new = match ctx.config_source.get() {
        Some(source) => source().map_err(ReloadError::Config)?,
        None => (*ctx.config()).clone(),
    };
    apply(ctx, new)
}

/// Puts `new` in force as far as a running proxy can; see the module docs.
/// On error nothing changed.
pub fn apply(ctx: &Context, mut new: Config) -> Result<Vec<String>, ReloadError> {
    let old = ctx.config();
    // Everything fallible first, so a failure leaves the old state whole.
    let auth_file = load_auth_file(&new.auth.auth_file)?;
    if let Some(tls) = &ctx.tls {
        tls.reload_from(&new.tls)?;
    }
    if let Some(tls) = &ctx.server_tls {
        tls.reload_from(&new.tls)?;
    }
    let mut restart = Vec::new();
    if new.listen.addr != old.listen.addr
        || new.listen.unix_socket_dir != old.listen.unix_socket_dir
    {
        restart.push("listen".to_string());
        new.listen.addr = old.listen.addr;
        new.listen.unix_socket_dir = old.listen.unix_socket_dir.clone();
    }
    if new.http.listen_addr != old.http.listen_addr {
        restart.push("http.listen_addr".to_string());
        new.http.listen_addr = old.http.listen_addr.clone();
    }
    if new.tenants.mode != old.tenants.mode {
        // Passthrough started without the registry; tenant mode needs it.
        restart.push("tenants.mode".to_string());
        new.tenants.mode = old.tenants.mode;
    }
    if new.backend != old.backend {
        restart.push("backend".to_string());
        new.backend = old.backend.clone();
    }
    if new.tls.client_tls_sslmode != old.tls.client_tls_sslmode
        || new.tls.server_tls_sslmode != old.tls.server_tls_sslmode
    {
        restart.push("tls modes".to_string());
        new.tls.client_tls_sslmode = old.tls.client_tls_sslmode;
        new.tls.server_tls_sslmode = old.tls.server_tls_sslmode;
    }
    ctx.auth_file.store(Arc::new(auth_file));
    ctx.pools.set_config(new.pool.clone());
    ctx.config.store(Arc::new(new));
    for section in &restart {
        warn!(%section, "configuration changed but needs a restart to apply; the running value stays");
    }
    info!("configuration reloaded");
    Ok(restart)
}

/// The auth file's secrets, or none when no file is configured.
pub fn load_auth_file(path: &str) -> Result<HashMap<String, Secret>, AuthFileError> {
    if path.is_empty() {
        Ok(HashMap::new())
    } else {
        auth_file::load(Path::new(path))
    }
}
