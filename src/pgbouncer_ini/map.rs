//! Parsed ini entries → pgtenant settings: each a TOML section, key and value
//! with the ini lines it came from, plus a [`Warning`] for every key that is
//! not carried over as it is. Values PgBouncer itself would refuse (a bad
//! number, an unknown mode) are errors naming file, line and key. The
//! `[databases]` section is left to `databases`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs as _};
use std::path::Path;

use toml::Value;

use super::databases;
use super::keys::{self, Treatment};
use super::parse::{Entry, IniError, IniFile};
use super::{Origin, Warning};
use crate::config::PoolMode;

/// One pgtenant setting taken from the ini.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    /// TOML section: `listen`, `backend`, `auth`, `tenants`, `pool`, `tls`,
    /// `admin` or `log`.
    pub section: &'static str,
    /// Key within the section.
    pub key: &'static str,
    /// The value, typed as pgtenant's TOML wants it.
    pub value: Value,
    /// The ini lines and keys it was made from.
    pub sources: Vec<(Origin, String)>,
}

impl Setting {
    /// `section.key`, as configuration errors name it.
    pub fn dotted(&self) -> String {
        format!("{}.{}", self.section, self.key)
    }
}

/// What an ini file amounts to in pgtenant's terms.
#[derive(Debug, Clone, Default)]
pub struct Mapped {
    /// Settings, grouped by section in the order `listen`, `backend`,
    /// `auth`, `tenants`, `pool`, `tls`.
    pub settings: Vec<Setting>,
    /// Keys not carried over as they are.
    pub warnings: Vec<Warning>,
}

impl Mapped {
    pub(super) fn set(
        &mut self,
        section: &'static str,
        key: &'static str,
        value: Value,
        e: &Entry,
    ) {
        self.settings.push(Setting {
            section,
            key,
            value,
            sources: vec![(e.origin.clone(), e.key.clone())],
        });
    }

    pub(super) fn warn(&mut self, origin: &Origin, key: &str, message: impl Into<String>) {
        self.warnings.push(Warning {
            origin: origin.clone(),
            key: key.to_string(),
            message: message.into(),
        });
    }
}

/// The pgtenant equivalent of `ini`. `base_listen` is the listen address in
/// force without the ini: `listen_port` alone keeps its IP, `listen_addr`
/// alone its port. `tenants`: the TOML keeps tenant features on
/// (`tenants.mode = "tenant"`); otherwise the ini is served in passthrough
/// mode, as PgBouncer serves it, and the result says so.
pub fn map(ini: &IniFile, base_listen: SocketAddr, tenants: bool) -> Result<Mapped, IniError> {
    let mut out = Mapped::default();
    let mut general: Vec<&Entry> = Vec::new();
    let mut db_entries: Vec<&Entry> = Vec::new();
    for (name, origin) in &ini.sections {
        if !matches!(name.as_str(), "pgbouncer" | "databases") && keys::section(name).is_none() {
            out.warn(
                origin,
                &format!("[{name}]"),
                "unknown section; its keys are ignored",
            );
        }
    }
    for e in &ini.entries {
        match e.section.as_str() {
            "pgbouncer" => general.push(e),
            "databases" => db_entries.push(e),
            "" => out.warn(&e.origin, &e.key, "outside any section; ignored"),
            other => {
                if let Some(why) = keys::section(other) {
                    out.warn(&e.origin, &format!("{other}.{}", e.key), why);
                }
            }
        }
    }
    let general = last_wins(general, &mut out, |e| e.key.to_ascii_lowercase());
    let by_key: HashMap<String, &Entry> = general
        .iter()
        .map(|e| (e.key.to_ascii_lowercase(), *e))
        .collect();
    let db = databases::map(&db_entries, &by_key, tenants, &mut out)?;

    map_listen(&by_key, base_listen, &ini.path, &mut out)?;
    out.settings.extend(db.settings);
    for e in &general {
        let key = e.key.to_ascii_lowercase();
        match keys::pgbouncer_key(&key) {
            None => out.warn(&e.origin, &e.key, "unknown key"),
            Some(Treatment::Ignored(why) | Treatment::Unsupported(why)) => {
                out.warn(&e.origin, &e.key, why)
            }
            Some(Treatment::Mapped) => map_key(&key, e, tenants, &mut out)?,
        }
    }
    if !tenants {
        out.settings.push(passthrough_mode(&ini.path));
    }
    let order = ["listen", "backend", "auth", "tenants", "pool", "tls"];
    out.settings
        .sort_by_key(|s| order.iter().position(|o| *o == s.section));
    // Warnings in reading order: files as first met, then by line.
    let mut files: Vec<&Origin> = Vec::new();
    for origin in ini.entries.iter().map(|e| &e.origin) {
        if !files.iter().any(|f| f.file == origin.file) {
            files.push(origin);
        }
    }
    out.warnings.sort_by_key(|w| {
        let file = files.iter().position(|f| f.file == w.origin.file);
        (file, w.origin.line)
    });
    Ok(out)
}

/// `tenants.mode = "passthrough"`: PgBouncer serves no tenants, so neither
/// does pgtenant serving its file, unless the TOML sets `tenants.mode`
/// itself (see `load`).
fn passthrough_mode(top: &Path) -> Setting {
    let whole = Origin {
        file: std::sync::Arc::new(top.to_path_buf()),
        line: 0,
    };
    Setting {
        section: "tenants",
        key: "mode",
        value: Value::String("passthrough".into()),
        sources: vec![(whole, "(PgBouncer serves no tenants)".into())],
    }
}

/// Keeps the last entry of each key, warning at each earlier one.
pub(super) fn last_wins<'a>(
    entries: Vec<&'a Entry>,
    out: &mut Mapped,
    key_of: impl Fn(&Entry) -> String,
) -> Vec<&'a Entry> {
    let mut kept: Vec<&Entry> = Vec::new();
    for e in entries {
        if let Some(pos) = kept.iter().position(|k| key_of(k) == key_of(e)) {
            let earlier = kept.remove(pos);
            out.warn(
                &earlier.origin,
                &earlier.key,
                format!("given again at {}; that value is used", e.origin),
            );
        }
        kept.push(e);
    }
    kept
}

/// `listen_addr` + `listen_port` → `listen.addr` (one address).
fn map_listen(
    by_key: &HashMap<String, &Entry>,
    base: SocketAddr,
    top: &Path,
    out: &mut Mapped,
) -> Result<(), IniError> {
    let port_entry = by_key.get("listen_port");
    let port = match port_entry {
        Some(e) => number::<u16>(e, "a port number")?,
        None => base.port(),
    };
    let addr_entry = by_key.get("listen_addr").filter(|e| !e.value.is_empty());
    let ip = match addr_entry {
        Some(e) => listen_ip(e, port, out)?,
        None => {
            let whole = Origin {
                file: std::sync::Arc::new(top.to_path_buf()),
                line: 0,
            };
            out.warn(
                &whole,
                "listen_addr",
                format!(
                    "not set: PgBouncer would accept Unix-socket clients only; \
                     pgtenant listens on TCP too, at {}",
                    SocketAddr::new(base.ip(), port)
                ),
            );
            base.ip()
        }
    };
    let mut sources = Vec::new();
    for e in [addr_entry, port_entry].into_iter().flatten() {
        sources.push((e.origin.clone(), e.key.clone()));
    }
    if !sources.is_empty() {
        out.settings.push(Setting {
            section: "listen",
            key: "addr",
            value: Value::String(SocketAddr::new(ip, port).to_string()),
            sources,
        });
    }
    Ok(())
}

/// The one IP pgtenant listens on for a `listen_addr` list.
fn listen_ip(e: &Entry, port: u16, out: &mut Mapped) -> Result<IpAddr, IniError> {
    let list: Vec<&str> = e
        .value
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .collect();
    let first = list.first().copied().unwrap_or("");
    let ip = match first {
        "*" => {
            out.warn(
                &e.origin,
                &e.key,
                "\"*\": pgtenant listens on every IPv4 address (0.0.0.0), not on IPv6 too",
            );
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        }
        "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
        other => match other.parse::<IpAddr>() {
            Ok(ip) => ip,
            Err(_) => (other, port)
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .map(|a| a.ip())
                .ok_or_else(|| value_error(e, format!("cannot resolve {other:?}")))?,
        },
    };
    if list.len() > 1 {
        out.warn(
            &e.origin,
            &e.key,
            format!(
                "pgtenant listens on one address: {ip} (from {first:?}); the others are not used"
            ),
        );
    }
    Ok(ip)
}

/// What a key that keeps its name in pgtenant holds.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// A whole number.
    Count,
    /// Seconds, 0 meaning no limit in both.
    Seconds,
    /// Seconds that pgtenant wants positive (PgBouncer's 0, no limit, is warned about).
    PositiveSeconds,
    /// A PgBouncer sslmode, which pgtenant spells the same.
    SslMode,
    /// A file, relative to the ini file that names it.
    File,
    /// PgBouncer's booleans: 1/0, yes/no, on/off, true/false.
    Bool,
}

/// Keys with the same name in pgtenant: (key, pgtenant section, kind).
const SAME_NAME: &[(&str, &str, Kind)] = &[
    ("default_pool_size", "pool", Kind::Count),
    ("max_client_conn", "pool", Kind::Count),
    ("max_prepared_statements", "pool", Kind::Count),
    ("query_wait_timeout", "pool", Kind::PositiveSeconds),
    ("server_connect_timeout", "pool", Kind::PositiveSeconds),
    ("client_login_timeout", "listen", Kind::PositiveSeconds),
    ("server_idle_timeout", "pool", Kind::Seconds),
    ("server_lifetime", "pool", Kind::Seconds),
    ("idle_transaction_timeout", "pool", Kind::Seconds),
    ("client_idle_timeout", "pool", Kind::Seconds),
    ("client_tls_sslmode", "tls", Kind::SslMode),
    ("server_tls_sslmode", "tls", Kind::SslMode),
    ("client_tls_cert_file", "tls", Kind::File),
    ("client_tls_key_file", "tls", Kind::File),
    ("client_tls_ca_file", "tls", Kind::File),
    ("server_tls_ca_file", "tls", Kind::File),
    ("server_tls_cert_file", "tls", Kind::File),
    ("server_tls_key_file", "tls", Kind::File),
    ("so_reuseport", "listen", Kind::Bool),
    ("stats_period", "admin", Kind::PositiveSeconds),
    ("log_connections", "log", Kind::Bool),
    ("log_disconnections", "log", Kind::Bool),
    ("log_pooler_errors", "log", Kind::Bool),
    ("reserve_pool_size", "pool", Kind::Count),
    ("reserve_pool_timeout", "pool", Kind::Seconds),
    ("min_pool_size", "pool", Kind::Count),
    ("max_db_connections", "pool", Kind::Count),
    ("max_user_connections", "pool", Kind::Count),
];

/// PgBouncer's (and pgtenant's) sslmode names.
const SSL_MODES: [&str; 6] = [
    "disable",
    "allow",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
];

/// A mapped `[pgbouncer]` key other than the listener's.
fn map_key(key: &str, e: &Entry, tenants: bool, out: &mut Mapped) -> Result<(), IniError> {
    let s = |v: &str| Value::String(v.to_string());
    let keeps =
        |what: &str, key: &str| format!("{what} is not supported; pool.{key} keeps its value");
    match key {
        "listen_addr" | "listen_port" => {} // see map_listen
        "unix_socket_dir" if e.value.starts_with('@') => out.warn(
            &e.origin,
            &e.key,
            "not supported: sockets in the abstract namespace; no Unix socket is opened",
        ),
        "unix_socket_dir" => out.set("listen", "unix_socket_dir", s(&e.value), e),
        "admin_users" | "stats_users" => {
            let users = e
                .value
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(s)
                .collect();
            let name = if key == "admin_users" {
                "admin_users"
            } else {
                "stats_users"
            };
            out.set("admin", name, Value::Array(users), e);
        }
        "auth_type" => map_auth_type(e, out),
        "auth_file" => {
            let path = beside(e);
            check_userlist(e, &path, tenants, out);
            out.set("auth", "auth_file", s(&path), e);
        }
        "pool_mode" => {
            let mode = pool_mode(e, &e.value)?;
            out.set("pool", "pool_mode", s(mode), e);
        }
        "max_prepared_statements" if number::<u32>(e, "a whole number")? == 0 => out.warn(
            &e.origin,
            &e.key,
            keeps(
                "0 (off: pgtenant always tracks them in transaction mode)",
                key,
            ),
        ),
        "server_lifetime" if seconds(e)? == 0.0 => out.warn(
            &e.origin,
            &e.key,
            keeps("0 (use each server connection once)", key),
        ),
        "server_reset_query" if e.value.is_empty() => out.warn(
            &e.origin,
            &e.key,
            keeps(
                "empty (no reset: pgtenant must clean a connection between clients)",
                key,
            ),
        ),
        "server_reset_query" => out.set("pool", "server_reset_query", s(&e.value), e),
        _ => match SAME_NAME.iter().find(|(k, ..)| *k == key) {
            Some(&(name, section, kind)) => map_same_name(name, section, kind, e, out)?,
            None => out.warn(&e.origin, &e.key, "not supported"),
        },
    }
    Ok(())
}

/// A key pgtenant has under the same name.
fn map_same_name(
    name: &'static str,
    section: &'static str,
    kind: Kind,
    e: &Entry,
    out: &mut Mapped,
) -> Result<(), IniError> {
    let value = match kind {
        Kind::Count => Value::Integer(i64::from(number::<u32>(e, "a whole number")?)),
        Kind::Seconds => Value::Float(seconds(e)?),
        Kind::PositiveSeconds => match seconds(e)? {
            0.0 => {
                out.warn(
                    &e.origin,
                    &e.key,
                    format!("0 (no limit) is not supported; {section}.{name} keeps its value"),
                );
                return Ok(());
            }
            v => Value::Float(v),
        },
        Kind::SslMode => {
            let mode = e.value.to_ascii_lowercase();
            if !SSL_MODES.contains(&mode.as_str()) {
                return Err(value_error(
                    e,
                    format!("expected one of {}", SSL_MODES.join(", ")),
                ));
            }
            Value::String(mode)
        }
        Kind::File => Value::String(beside(e)),
        Kind::Bool => match e.value.to_ascii_lowercase().as_str() {
            "1" | "yes" | "on" | "true" => Value::Boolean(true),
            "0" | "no" | "off" | "false" => Value::Boolean(false),
            _ => {
                return Err(value_error(
                    e,
                    format!("invalid value {:?}: expected 1 or 0", e.value),
                ))
            }
        },
    };
    out.set(section, name, value, e);
    Ok(())
}

/// `auth_type` → `auth.method`, or a warning saying what is asked instead.
fn map_auth_type(e: &Entry, out: &mut Mapped) {
    let method = match e.value.to_ascii_lowercase().as_str() {
        "scram-sha-256" => "scram-sha-256",
        "md5" => {
            out.warn(
                &e.origin,
                &e.key,
                "md5: clients whose auth_file secret is a SCRAM verifier cannot log in \
                 (PgBouncer switches them to SCRAM; pgtenant does not)",
            );
            "md5"
        }
        "trust" => "trust",
        "plain" => {
            out.warn(
                &e.origin,
                &e.key,
                "plain: pgtenant never asks for clear-text passwords; it asks SCRAM-SHA-256, \
                 which works with plain and SCRAM secrets in auth_file, not md5 ones",
            );
            "scram-sha-256"
        }
        other => {
            out.warn(
                &e.origin,
                &e.key,
                format!(
                    "{other:?} is not supported (pgtenant offers scram-sha-256, md5 and trust); \
                     auth.method keeps its value"
                ),
            );
            return;
        }
    };
    out.set("auth", "method", Value::String(method.into()), e);
}

/// Checks that the auth file can be read; in tenant mode also warns about
/// entries that name no tenant: pgtenant then looks `user@tenant` up, so a
/// bare `"alice"` line never matches (in passthrough mode it is right).
fn check_userlist(e: &Entry, path: &str, tenants: bool, out: &mut Mapped) {
    match crate::auth::auth_file::load(Path::new(path)) {
        Ok(_) if !tenants => {}
        Ok(users) => {
            let mut bare: Vec<&String> = users.keys().filter(|u| !u.contains(['@', '.'])).collect();
            bare.sort();
            if let Some(first) = bare.first() {
                out.warn(
                    &e.origin,
                    &e.key,
                    format!(
                        "{} entr{} without a tenant (e.g. {first:?}) never match: pgtenant \
                         looks up \"user@tenant\"",
                        bare.len(),
                        if bare.len() == 1 { "y" } else { "ies" }
                    ),
                );
            }
        }
        Err(err) => out.warn(&e.origin, &e.key, format!("cannot be read now: {err}")),
    }
}

/// A file named in the ini, relative to that ini file's directory, made absolute.
fn beside(e: &Entry) -> String {
    let p = Path::new(&e.value);
    let joined = match e.origin.file.parent() {
        Some(dir) if p.is_relative() => dir.join(p),
        _ => p.to_path_buf(),
    };
    std::path::absolute(&joined)
        .unwrap_or(joined)
        .display()
        .to_string()
}

pub(super) fn pool_mode(e: &Entry, value: &str) -> Result<&'static str, IniError> {
    match PoolMode::parse(&value.to_ascii_lowercase()) {
        Some(PoolMode::Session) => Ok("session"),
        Some(PoolMode::Transaction) => Ok("transaction"),
        Some(PoolMode::Statement) => Ok("statement"),
        None => Err(value_error(
            e,
            format!("invalid pool_mode {value:?}: expected session, transaction or statement"),
        )),
    }
}

pub(super) fn value_error(e: &Entry, message: String) -> IniError {
    IniError::Value {
        origin: e.origin.clone(),
        key: e.key.clone(),
        message,
    }
}

pub(super) fn number<T: std::str::FromStr>(e: &Entry, what: &str) -> Result<T, IniError> {
    e.value
        .parse::<T>()
        .map_err(|_| value_error(e, format!("invalid value {:?}: expected {what}", e.value)))
}

fn seconds(e: &Entry) -> Result<f64, IniError> {
    let v = number::<f64>(e, "a number of seconds")?;
    if !(v.is_finite() && (0.0..1e9).contains(&v)) {
        return Err(value_error(
            e,
            format!("invalid value {:?}: expected a number of seconds", e.value),
        ));
    }
    Ok(v)
}
