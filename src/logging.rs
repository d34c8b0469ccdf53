//! Log output: the process-wide `tracing` subscriber, built from `[log]`
//! (level, text or JSON) with `RUST_LOG` taking precedence. What a session
//! logs about itself is `session`'s business; this module only decides
//! which lines are written and how.
//!
//! One guard applies whatever the level: the PostgreSQL client library used
//! for the registry and provisioning logs every statement it runs at debug
//! (`CREATE ROLE ... PASSWORD '...'` among them), so its debug and trace
//! lines are dropped unless the directives name `tokio_postgres` explicitly.

use std::io::IsTerminal as _;

use tracing::Level;
use tracing_subscriber::filter::{filter_fn, EnvFilter};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;

use crate::config::{LogConfig, LogFormat};

/// The crate whose debug lines carry SQL text, secrets included.
const SQL_CLIENT_TARGET: &str = "tokio_postgres";

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// The configured level is not a valid filter (the config loader checks
    /// it, so this is only reachable with a hand-built config).
    #[error("log.level {level:?}: {message}")]
    Level {
        /// The directives that failed.
        level: String,
        /// The parser's complaint.
        message: String,
    },
    /// A subscriber was installed already.
    #[error("logging is already set up: {0}")]
    Init(String),
}

/// The filter directives in force: `RUST_LOG` when it is set and not empty,
/// else `log.level`. The second value says where they came from.
pub fn directives<'a>(config: &'a LogConfig, rust_log: Option<&'a str>) -> (&'a str, &'static str) {
    match rust_log.map(str::trim).filter(|s| !s.is_empty()) {
        Some(env) => (env, "RUST_LOG"),
        None => (config.level.as_str(), "log.level"),
    }
}

/// Parses filter directives.
pub fn filter(directives: &str) -> Result<EnvFilter, LoggingError> {
    EnvFilter::builder()
        .parse(directives)
        .map_err(|e| LoggingError::Level {
            level: directives.to_string(),
            message: e.to_string(),
        })
}

/// True when a line from `target` at `level` may be written under
/// `directives`: everything except the SQL client's debug and trace lines,
/// unless the directives ask for that crate by name.
pub fn allowed(directives: &str, target: &str, level: &Level) -> bool {
    !(target.starts_with(SQL_CLIENT_TARGET)
        && *level > Level::INFO
        && !directives.contains(SQL_CLIENT_TARGET))
}

/// Installs the subscriber for the rest of the process: lines to standard
/// error, in `config.format`, filtered by `RUST_LOG` or `config.level`. An
/// invalid `RUST_LOG` falls back to `config.level`, with a warning.
pub fn init(config: &LogConfig) -> Result<(), LoggingError> {
    let rust_log = std::env::var("RUST_LOG").ok();
    let (mut chosen, mut source) = directives(config, rust_log.as_deref());
    let mut rejected = None;
    let env_filter = match filter(chosen) {
        Ok(f) => f,
        Err(e) if source == "RUST_LOG" => {
            rejected = Some(e.to_string());
            (chosen, source) = (config.level.as_str(), "log.level");
            filter(chosen)?
        }
        Err(e) => return Err(e),
    };
    let owned = chosen.to_string();
    let guard = filter_fn(move |meta| allowed(&owned, meta.target(), meta.level()));
    let output = match config.format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(env_filter)
        .with(guard)
        .with(output)
        .try_init()
        .map_err(|e| LoggingError::Init(e.to_string()))?;
    if let Some(error) = rejected {
        tracing::warn!(%error, "RUST_LOG ignored; using log.level");
    }
    tracing::debug!(directives = chosen, source, "logging set up");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(level: &str) -> LogConfig {
        LogConfig {
            level: level.into(),
            ..LogConfig::default()
        }
    }

    #[test]
    fn rust_log_wins_when_set() {
        let c = config("warn");
        assert_eq!(directives(&c, None), ("warn", "log.level"));
        assert_eq!(directives(&c, Some("  ")), ("warn", "log.level"));
        assert_eq!(directives(&c, Some("debug")), ("debug", "RUST_LOG"));
    }

    #[test]
    fn bad_directives_are_reported() {
        assert!(filter("info").is_ok());
        assert!(filter("warn,pgtenant::session=trace").is_ok());
        let err = filter("pgtenant=loud").unwrap_err().to_string();
        assert!(err.contains("pgtenant=loud"), "{err}");
    }

    #[test]
    fn sql_client_debug_is_dropped_unless_named() {
        let sql = "tokio_postgres::simple_query";
        assert!(!allowed("debug", sql, &Level::DEBUG));
        assert!(!allowed("trace", sql, &Level::TRACE));
        assert!(allowed("debug", sql, &Level::INFO));
        assert!(allowed("debug", "pgtenant::session", &Level::DEBUG));
        assert!(allowed("info,tokio_postgres=debug", sql, &Level::DEBUG));
    }
}
