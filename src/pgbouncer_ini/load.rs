//! The configuration from its files: a TOML file (or the built-in defaults)
//! and, optionally, a `pgbouncer.ini` laid on top of it. The TOML gives what
//! the ini cannot say (the tenant registry, the admin role, tenant
//! resolution); every setting the ini does say replaces the TOML's. An ini
//! turns tenant features off (`tenants.mode = "passthrough"`) unless the
//! TOML sets `tenants.mode` itself.
//!
//! [`reload`] reads the files again and swaps the new configuration in only
//! when all of it is valid, so a broken file leaves the one in force alone.
//! Applying a new configuration to a running proxy is not done here.

use std::path::{Path, PathBuf};

use toml::{Table, Value};

use super::map::{map, Setting};
use super::parse::{parse_file, IniError};
use super::render::to_toml;
use super::{Origin, Warning};
use crate::config::{Config, ConfigError};

/// The files a configuration is read from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sources {
    /// pgtenant's TOML file; `None`: the built-in defaults.
    pub toml: Option<PathBuf>,
    /// A PgBouncer ini whose settings replace the TOML's.
    pub pgbouncer_ini: Option<PathBuf>,
}

/// A loaded configuration and what its ini did not carry over.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The validated configuration.
    pub config: Config,
    /// One per ini key not carried over as it is.
    pub warnings: Vec<Warning>,
}

/// Why a configuration could not be loaded; every variant names the file,
/// and the line and key where there is one.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The TOML file is unreadable or wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The ini (or a file it includes) is unreadable or wrong.
    #[error(transparent)]
    Ini(#[from] IniError),
    /// A value from the ini is one pgtenant's validation refuses.
    #[error("{origin}: key \"{key}\": {message}")]
    Setting {
        /// The ini line it came from.
        origin: Origin,
        /// The ini key.
        key: String,
        /// The validation message, with pgtenant's key.
        message: String,
    },
}

/// Reads, maps and validates the configuration named by `sources`.
pub fn load(sources: &Sources) -> Result<Loaded, LoadError> {
    let Some(ini_path) = &sources.pgbouncer_ini else {
        let config = match &sources.toml {
            Some(path) => Config::load(path)?,
            None => Config::parse("", "built-in defaults")?,
        };
        return Ok(Loaded {
            config,
            warnings: Vec::new(),
        });
    };
    let (origin, text) = match &sources.toml {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
                path: path.display().to_string(),
                source,
            })?;
            (path.display().to_string(), text)
        }
        None => ("built-in defaults".to_string(), String::new()),
    };
    let parse_error = |e: toml::de::Error| ConfigError::Parse {
        path: origin.clone(),
        message: e.to_string().trim_end().to_string(),
    };
    // The TOML on its own first, so its mistakes are reported with its lines.
    let base: Config = toml::from_str(&text).map_err(parse_error)?;
    let mut table: Table = toml::from_str(&text).map_err(parse_error)?;

    let ini = parse_file(ini_path)?;
    // Tenant features stay as the TOML says when it says; else they are off.
    let tenants = base_mode_set(&table) && !base.tenants.passthrough();
    let mapped = map(&ini, base.listen.addr, tenants)?;
    for setting in &mapped.settings {
        lay_over(&mut table, setting);
    }
    let both = format!("{origin} with {}", ini_path.display());
    let dir = sources.toml.as_deref().and_then(Path::parent);
    match Config::from_table(table, &both, dir) {
        Ok(config) => Ok(Loaded {
            config,
            warnings: mapped.warnings,
        }),
        Err(e) => Err(attribute(e, &mapped.settings)),
    }
}

/// `pgtenant config convert`: the TOML text for the ini at `ini`, checked
/// to load on its own, and the warnings.
pub fn convert(ini: &Path) -> Result<(String, Vec<Warning>), LoadError> {
    let defaults = Config::parse("", "built-in defaults")?;
    let mapped = map(&parse_file(ini)?, defaults.listen.addr, false)?;
    let text = to_toml(&mapped, ini);
    Config::parse(&text, &format!("TOML converted from {}", ini.display()))
        .map_err(|e| attribute(e, &mapped.settings))?;
    Ok((text, mapped.warnings))
}

/// A validation error about a key the ini set, told at the ini's line.
fn attribute(error: ConfigError, settings: &[Setting]) -> LoadError {
    if let ConfigError::Invalid { key, message, .. } = &error {
        let source = settings
            .iter()
            .find(|s| s.dotted() == *key)
            .and_then(|s| s.sources.first());
        if let Some((origin, ini_key)) = source {
            return LoadError::Setting {
                origin: origin.clone(),
                key: ini_key.clone(),
                message: format!("{key}: {message}"),
            };
        }
    }
    error.into()
}

/// Reads the configuration again; on success replaces `*current` and
/// returns the new warnings, on error leaves `*current` as it was.
pub fn reload(current: &mut Config, sources: &Sources) -> Result<Vec<Warning>, LoadError> {
    let loaded = load(sources)?;
    *current = loaded.config;
    Ok(loaded.warnings)
}

/// Whether the TOML sets `tenants.mode` itself.
fn base_mode_set(table: &Table) -> bool {
    table
        .get("tenants")
        .and_then(Value::as_table)
        .is_some_and(|t| t.contains_key("mode"))
}

/// Puts `setting` into the TOML table; a table value (per-database pool
/// modes) is merged key by key into the TOML's own.
fn lay_over(table: &mut Table, setting: &Setting) {
    let section = table
        .entry(setting.section)
        .or_insert_with(|| Value::Table(Table::new()));
    let Value::Table(section) = section else {
        // Not a table: the TOML check above has already refused that.
        return;
    };
    match (&setting.value, section.get_mut(setting.key)) {
        (Value::Table(new), Some(Value::Table(old))) => {
            for (k, v) in new {
                old.insert(k.clone(), v.clone());
            }
        }
        (value, _) => {
            section.insert(setting.key.to_string(), value.clone());
        }
    }
}
