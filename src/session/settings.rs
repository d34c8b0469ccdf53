//! Client settings at checkout: the startup parameters and `options -c`
//! settings a client sent (`application_name`, `DateStyle`, `TimeZone`, ...)
//! are applied to its backend with `set_config`, once, when they differ from
//! what the backend reports. The reset query at release takes them away again.

use crate::pool::Backend;
use crate::protocol::{SqlState, StartupParams};

use super::{is_connection_param, SessionError};

/// Settings the client may not set: they confine it to its tenant.
const PROTECTED: &[&str] = &[
    "search_path",
    "app.current_tenant",
    "role",
    "session_authorization",
];

/// The settings a client asked for, checked: names are plain GUC names and
/// none is protected. `Err` carries the message for the client.
pub(crate) fn wanted(
    params: &StartupParams,
    option_settings: &[(String, String)],
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
        if PROTECTED.iter().any(|p| p.eq_ignore_ascii_case(name)) {
            return Err(format!(
                "setting {name:?} is managed by pgtenant and cannot be set at startup"
            ));
        }
        out.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        out.push((name.clone(), value.clone()));
    }
    Ok(out)
}

/// Applies the settings whose values differ from the backend's in one round trip.
pub(crate) async fn apply(
    backend: &mut Backend,
    wanted: &[(String, String)],
) -> Result<(), SessionError> {
    let calls: Vec<String> = wanted
        .iter()
        .filter(|(name, value)| backend.param(name) != Some(value.as_str()))
        .map(|(name, value)| {
            format!(
                "pg_catalog.set_config({}, {}, false)",
                literal(name),
                literal(value)
            )
        })
        .collect();
    if calls.is_empty() {
        return Ok(());
    }
    let sql = format!("SELECT {}", calls.join(", "));
    match backend.simple_query(&sql).await {
        Ok(_) => Ok(()),
        Err(crate::pool::BackendError::Server { code, message }) => Err(SessionError::Setting {
            code: known_code(&code),
            message,
        }),
        Err(e) => Err(SessionError::Pool(e.into())),
    }
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

    #[test]
    fn wanted_settings() {
        let p = startup_params(&[
            ("user", "a"),
            ("database", "d"),
            ("application_name", "psql"),
            ("DateStyle", "ISO"),
        ]);
        let w = wanted(&p, &[("statement_timeout".into(), "5s".into())]).unwrap();
        assert_eq!(w.len(), 3);
        let p = startup_params(&[("user", "a"), ("search_path", "tenant_other")]);
        assert!(wanted(&p, &[]).unwrap_err().contains("managed by pgtenant"));
        let p = startup_params(&[("user", "a"), ("bad name';--", "x")]);
        assert!(wanted(&p, &[]).is_err());
        assert_eq!(literal("it's"), "'it''s'");
    }
}
