//! The `[databases]` section → `backend.host` / `backend.port` (one cluster:
//! every entry must name the same one), `backend.databases` (the entries'
//! names become the databases pgtenant serves), `backend.server_databases`
//! (`dbname=` aliases, passthrough mode only) and `pool.database_pool_modes`.
//! Options pgtenant has no equivalent for are warned about, each by name.

use std::collections::HashMap;

use toml::Value;

use super::keys::{self, Treatment};
use super::map::{last_wins, number, pool_mode, value_error, Mapped, Setting};
use super::parse::{parse_connstr, Entry, IniError};
use super::Origin;
use crate::config::is_identifier;

/// PgBouncer's `unix_socket_dir` default, where it looks for PostgreSQL's
/// socket when an entry names no host.
const DEFAULT_SOCKET_DIR: &str = "/tmp";

/// What the section yields.
pub(super) struct Databases {
    /// Settings for `backend` and `pool`.
    pub settings: Vec<Setting>,
}

/// Where one entry points.
struct Target<'a> {
    host: String,
    port: u16,
    entry: &'a Entry,
}

/// Maps the `[databases]` entries; `general` is `[pgbouncer]` by lowercase key.
pub(super) fn map(
    entries: &[&Entry],
    general: &HashMap<String, &Entry>,
    tenants: bool,
    out: &mut Mapped,
) -> Result<Databases, IniError> {
    let entries = last_wins(entries.to_vec(), out, |e| e.key.clone());
    let socket_dir = general
        .get("unix_socket_dir")
        .map(|e| e.value.as_str())
        .filter(|d| !d.is_empty() && !d.starts_with('@'))
        .unwrap_or(DEFAULT_SOCKET_DIR);
    let mut cluster: Option<Target> = None;
    let mut names: Vec<(String, &Entry)> = Vec::new();
    let mut modes: Vec<(String, &'static str, &Entry)> = Vec::new();
    let mut aliases: Vec<(String, String, &Entry)> = Vec::new();
    for e in entries {
        if e.key.eq_ignore_ascii_case("pgbouncer") {
            return Err(value_error(
                e,
                "the name is reserved for the admin console".into(),
            ));
        }
        let pairs = parse_connstr(&e.value).map_err(|m| value_error(e, m))?;
        let option = |name: &str| pairs.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v);
        let wildcard = e.key == "*";
        if wildcard {
            out.warn(
                &e.origin,
                &e.key,
                "not supported: pgtenant serves only the databases listed by name",
            );
        } else if !is_identifier(&e.key) {
            return Err(value_error(
                e,
                "pgtenant serves databases whose names are plain identifiers ([a-z_][a-z0-9_]*)"
                    .into(),
            ));
        }
        for (k, _) in &pairs {
            let shown = format!("{}.{k}", e.key);
            match keys::database_option(k) {
                None => out.warn(&e.origin, &shown, "unknown option"),
                Some(Treatment::Ignored(why) | Treatment::Unsupported(why)) => {
                    out.warn(&e.origin, &shown, why)
                }
                Some(Treatment::Mapped) => {}
            }
        }
        if let Some(dbname) = option("dbname").filter(|d| !wildcard && *d != &e.key) {
            if tenants {
                return Err(value_error(
                    e,
                    format!(
                        "dbname={dbname}: in tenant mode pgtenant cannot serve a database \
                         under another name; clients must ask for the database's own name"
                    ),
                ));
            }
            aliases.push((e.key.clone(), dbname.clone(), e));
        }
        let host = match option("host").map(String::as_str) {
            Some(h) if h.contains(',') => {
                return Err(value_error(
                    e,
                    format!(
                        "host={h}: several hosts are not supported; pgtenant serves one cluster"
                    ),
                ))
            }
            Some(h) if !h.is_empty() => h.to_string(),
            _ => socket_dir.to_string(),
        };
        let port = match option("port") {
            Some(p) => {
                let port_entry = Entry {
                    key: format!("{}.port", e.key),
                    value: p.clone(),
                    ..e.clone()
                };
                number::<u16>(&port_entry, "a port number")?
            }
            None => 5432,
        };
        match &cluster {
            None => {
                cluster = Some(Target {
                    host: host.clone(),
                    port,
                    entry: e,
                })
            }
            Some(first) if first.host != host || first.port != port => {
                return Err(value_error(
                    e,
                    format!(
                        "on {host}:{port}, but database \"{}\" ({}) is on {}:{}; pgtenant \
                         serves one PostgreSQL cluster",
                        first.entry.key, first.entry.origin, first.host, first.port
                    ),
                ));
            }
            Some(_) => {}
        }
        if wildcard {
            continue;
        }
        if let Some(mode) = option("pool_mode") {
            modes.push((e.key.clone(), pool_mode(e, mode)?, e));
        }
        names.push((e.key.clone(), e));
    }

    let mut settings = Vec::new();
    if let Some(first) = &cluster {
        let sources = vec![(first.entry.origin.clone(), first.entry.key.clone())];
        settings.push(Setting {
            section: "backend",
            key: "host",
            value: Value::String(first.host.clone()),
            sources: sources.clone(),
        });
        settings.push(Setting {
            section: "backend",
            key: "port",
            value: Value::Integer(i64::from(first.port)),
            sources,
        });
    }
    if !names.is_empty() {
        settings.push(Setting {
            section: "backend",
            key: "databases",
            value: Value::Array(
                names
                    .iter()
                    .map(|(n, _)| Value::String(n.clone()))
                    .collect(),
            ),
            sources: sources_of(names.iter().map(|(_, e)| *e)),
        });
    }
    if !modes.is_empty() {
        let table = modes
            .iter()
            .map(|(n, m, _)| (n.clone(), Value::String((*m).into())))
            .collect();
        settings.push(Setting {
            section: "pool",
            key: "database_pool_modes",
            value: Value::Table(table),
            sources: sources_of(modes.iter().map(|(_, _, e)| *e)),
        });
    }
    if !aliases.is_empty() {
        let table = aliases
            .iter()
            .map(|(n, db, _)| (n.clone(), Value::String(db.clone())))
            .collect();
        settings.push(Setting {
            section: "backend",
            key: "server_databases",
            value: Value::Table(table),
            sources: sources_of(aliases.iter().map(|(_, _, e)| *e)),
        });
    }
    Ok(Databases { settings })
}

fn sources_of<'a>(entries: impl Iterator<Item = &'a Entry>) -> Vec<(Origin, String)> {
    entries.map(|e| (e.origin.clone(), e.key.clone())).collect()
}
