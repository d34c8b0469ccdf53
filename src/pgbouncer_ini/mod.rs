//! PgBouncer configuration compatibility: reads a `pgbouncer.ini` (with its
//! `%include`s), maps what pgtenant has an equivalent for onto [`Config`],
//! and reports everything else as a [`Warning`] naming file, line and key.
//!
//! - [`parse`]: the ini format itself (sections, comments, `%include`,
//!   `[databases]` connection strings), each value with its file and line.
//! - [`keys`]: which PgBouncer keys exist and what pgtenant does with each.
//! - [`map`]: parsed entries → pgtenant settings (TOML section, key, value).
//! - [`render`]: those settings as a commented TOML file (`config convert`).
//! - [`load`]: a TOML file with an ini on top, and reload that keeps the old
//!   configuration when the new one is wrong.
//!
//! PgBouncer clients name no tenant, so an ini is served with tenant
//! features off (`tenants.mode = "passthrough"`: clients log in as their own
//! PostgreSQL user, pools are (database, user) pairs) unless the TOML sets
//! `tenants.mode` itself; with `"tenant"` the ini's databases become
//! pgtenant's service databases and clients name their tenant
//! (`user@tenant`, ...). Either way its pooling, limits, timeouts, TLS and
//! `auth_file` settings apply.
//!
//! [`Config`]: crate::config::Config

mod databases;
pub mod keys;
pub mod load;
pub mod map;
pub mod parse;
pub mod render;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

pub use load::{convert, load, reload, LoadError, Loaded, Sources};
pub use map::{map, Mapped, Setting};
pub use parse::{parse_file, Entry, IniError, IniFile};

/// Where a value was written: file and 1-based line (0: the file as a whole).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The file, as it was named (the top file) or resolved (`%include`s).
    pub file: Arc<PathBuf>,
    /// 1-based line; 0 when the remark is about the file as a whole.
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.file.display())
        } else {
            write!(f, "{}:{}", self.file.display(), self.line)
        }
    }
}

/// A key pgtenant did not carry over as it is, and why. Displayed as
/// `FILE:LINE: key "name": why`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// Where the key was written.
    pub origin: Origin,
    /// The key as written (for `[databases]` options: `database.option`).
    pub key: String,
    /// What pgtenant does instead.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: key \"{}\": {}", self.origin, self.key, self.message)
    }
}

#[cfg(test)]
mod tests;
