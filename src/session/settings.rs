//! Client settings at checkout: the startup parameters and `options -c`
//! settings a client sent (`application_name`, `DateStyle`, `TimeZone`, ...)
//! are applied to its backend with `set_config`, once, when they differ from
//! what the backend reports. The reset query at release takes them away again.

use crate::pool::Backend;
use crate::protocol::{SqlState, StartupParams};

use super::{is_connection_param, SessionError};

/// The settings a client asked for, checked: names are plain GUC names and
/// none is in `protected` (the tenant-confining settings in tenant mode,
/// none in passthrough). `Err` carries the message for the client.
pub(crate) fn wanted(
    params: &StartupParams,
    option_settings: &[(String, String)],
    protected: &[&str],
) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    let from_startup = params.0.iter().filter(|(k, _)| !is_connection_param(k));
    for (name, value) in from_startup.chain(option_settings.iter()) {
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
        if !valid {
            return Err(format!("invalid setting name {name:?}"));
        }
        if protected.iter().any(|p| p.eq_ignore_ascii_case(name)) {
            return Err(format!(
                "setting {name:?} is managed by pgtenant and cannot be set at startup"
            ));
        }
        out.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        out.push((name.clone(), value.clone()));
    }
    Ok(out)
}

/// Brings the backend's settings to `wanted` in one round trip: sets those
/// that differ from what the backend reports (or what the proxy set on it
/// earlier), and resets settings an earlier client had the proxy set.
pub(crate) async fn apply(
    backend: &mut Backend,
    wanted: &[(String, String)],
) -> Result<(), SessionError> {
    let sets: Vec<&(String, String)> = wanted
        .iter()
        .filter(|(name, value)| current(backend, name) != Some(value.as_str()))
        .collect();
    let resets: Vec<String> = backend
        .applied
        .iter()
        .filter(|(n, _)| !wanted.iter().any(|(w, _)| w.eq_ignore_ascii_case(n)))
        .map(|(n, _)| n.clone())
        .collect();
    if sets.is_empty() && resets.is_empty() {
        return Ok(());
    }
    let mut sql = String::new();
    if !sets.is_empty() {
        let calls: Vec<String> = sets
            .iter()
            .map(|(name, value)| {
                format!(
                    "pg_catalog.set_config({}, {}, false)",
                    literal(name),
                    literal(value)
                )
            })
            .collect();
        sql = format!("SELECT {}", calls.join(", "));
    }
    for name in &resets {
        // Names were checked to be plain GUC names when they were set.
        sql.push_str(&format!("; RESET {name}"));
    }
    let result = backend.simple_query(sql.trim_start_matches("; ")).await;
    match result {
        Ok(_) => {
            backend.applied.retain(|(n, _)| !resets.contains(n));
            for (name, value) in sets {
                // Reported parameters are tracked from ParameterStatus instead.
                if backend.param(name).is_none() {
                    backend
                        .applied
                        .retain(|(n, _)| !n.eq_ignore_ascii_case(name));
                    backend.applied.push((name.clone(), value.clone()));
                }
            }
            Ok(())
        }
        Err(crate::pool::BackendError::Server { code, message }) => Err(SessionError::Setting {
            code: known_code(&code),
            message,
        }),
        Err(e) => Err(SessionError::Pool(e.into())),
    }
}

/// What the backend has for `name`: its report, or what the proxy set on it.
fn current<'a>(backend: &'a Backend, name: &str) -> Option<&'a str> {
    backend.param(name).or_else(|| {
        backend
            .applied
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    })
}

/// A SQL string literal (`standard_conforming_strings` is on in every backend).
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Keeps the server's SQLSTATE when it is one of ours, else 22023.
fn known_code(code: &str) -> SqlState {
    match code {
        "42501" => SqlState::INSUFFICIENT_PRIVILEGE,
        "42704" => SqlState("42704"),
        _ => SqlState::INVALID_PARAMETER_VALUE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::startup_params;
    use crate::tenant::resolve::PROTECTED_SETTINGS;

    #[test]
    fn wanted_settings() {
        let p = startup_params(&[
            ("user", "a"),
            ("database", "d"),
            ("application_name", "psql"),
            ("DateStyle", "ISO"),
        ]);
        let timeout = [("statement_timeout".into(), "5s".into())];
        let w = wanted(&p, &timeout, PROTECTED_SETTINGS).unwrap();
        assert_eq!(w.len(), 3);
        let p = startup_params(&[("user", "a"), ("search_path", "tenant_other")]);
        let err = wanted(&p, &[], PROTECTED_SETTINGS).unwrap_err();
        assert!(err.contains("managed by pgtenant"));
        // Passthrough protects nothing: the client's search_path is its own.
        assert_eq!(wanted(&p, &[], &[]).unwrap().len(), 1);
        let p = startup_params(&[("user", "a"), ("bad name';--", "x")]);
        assert!(wanted(&p, &[], &[]).is_err());
        assert_eq!(literal("it's"), "'it''s'");
    }
}
