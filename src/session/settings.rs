//! Client settings at checkout: the startup parameters and `options -c`
//! settings a client sent (`application_name`, `DateStyle`, `TimeZone`, ...)
//! are applied to its backend with `set_config`, once, when they differ from
//! what the backend reports. The reset query at release takes them away again.

use std::sync::Arc;

use crate::intern::Interner;

use crate::pool::Backend;
use crate::protocol::{SqlState, StartupParams};

use super::{is_connection_param, SessionError};

/// A client's settings: (name, value) pairs packed into one string as
/// `name\0value\0...`, shared by every client with the same settings. An
/// idle client holds its settings for its whole session and idle clients
/// are the many, where a `Vec<(String, String)>` would cost one allocation
/// per name and per value, and most clients of an application send the
/// same ones. Names and values come from NUL-terminated protocol strings,
/// so they hold no NUL themselves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    packed: Arc<str>,
}

/// The packed settings clients hold, one copy per distinct string.
static SHARED: Interner<str> = Interner::new();

/// The shared copy of `packed`, made if there is none.
fn shared(packed: String) -> Arc<str> {
    if packed.is_empty() {
        return Arc::default();
    }
    SHARED.get(packed.as_str(), || packed.as_str().into())
}

impl Settings {
    /// Packs `pairs`; a later pair replaces an earlier one of the same
    /// name. A name or value holding a NUL is left out.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Settings {
        let mut kept: Vec<(&str, &str)> = Vec::new();
        for (name, value) in pairs {
            if name.contains('\0') || value.contains('\0') {
                continue;
            }
            match kept.iter_mut().find(|(n, _)| *n == name) {
                Some(slot) => slot.1 = value,
                None => kept.push((name, value)),
            }
        }
        let mut packed =
            String::with_capacity(kept.iter().map(|(n, v)| n.len() + v.len() + 2).sum());
        for (name, value) in kept {
            packed.push_str(name);
            packed.push('\0');
            packed.push_str(value);
            packed.push('\0');
        }
        Settings {
            packed: shared(packed),
        }
    }

    /// Every (name, value), in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        pairs_of(&self.packed)
    }

    /// The value of `name` (exact name, as the server reports it).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// Sets `name` to `value`, replacing its old value or adding it last.
    /// Rare (a `ParameterStatus` that changed), so it repacks.
    pub fn set(&mut self, name: &str, value: &str) {
        if self.get(name) != Some(value) {
            let updated = Settings::from_pairs(self.iter().chain([(name, value)]));
            *self = updated;
        }
    }
}

/// The (name, value) pairs of a packed string.
fn pairs_of(packed: &str) -> impl Iterator<Item = (&str, &str)> {
    let mut parts = packed.split_terminator('\0');
    std::iter::from_fn(move || Some((parts.next()?, parts.next()?)))
}

/// The settings a client asked for, checked: names are plain GUC names and
/// none is in `protected` (the tenant-confining settings in tenant mode,
/// none in passthrough). `Err` carries the message for the client.
pub(crate) fn wanted(
    params: &StartupParams,
    option_settings: &[(String, String)],
    protected: &[&str],
) -> Result<Settings, String> {
    let mut out: Vec<(&str, &str)> = Vec::new();
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
        out.push((name, value));
    }
    Ok(Settings::from_pairs(out))
}

/// Brings the backend's settings to `wanted` in one round trip: sets those
/// that differ from what the backend reports (or what the proxy set on it
/// earlier), and resets settings an earlier client had the proxy set.
pub(crate) async fn apply(backend: &mut Backend, wanted: &Settings) -> Result<(), SessionError> {
    // At almost every checkout the connection already has the client's
    // settings, and often it was last found so for the same settings.
    if backend.settled_for.as_ref() == Some(&wanted.packed) {
        return Ok(());
    }
    let sets: Vec<(&str, &str)> = wanted
        .iter()
        .filter(|(name, value)| current(backend, name) != Some(value))
        .collect();
    let resets: Vec<String> = backend
        .applied
        .iter()
        .filter(|(n, _)| !wanted.iter().any(|(w, _)| w.eq_ignore_ascii_case(n)))
        .map(|(n, _)| n.clone())
        .collect();
    if sets.is_empty() && resets.is_empty() {
        backend.settled_for = Some(Arc::clone(&wanted.packed));
        return Ok(());
    }
    // What it is found to have changes now.
    backend.settled_for = None;
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
                    backend.applied.push((name.to_string(), value.to_string()));
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
        assert_eq!(w.iter().count(), 3);
        let p = startup_params(&[("user", "a"), ("search_path", "tenant_other")]);
        let err = wanted(&p, &[], PROTECTED_SETTINGS).unwrap_err();
        assert!(err.contains("managed by pgtenant"));
        // Passthrough protects nothing: the client's search_path is its own.
        assert_eq!(wanted(&p, &[], &[]).unwrap().iter().count(), 1);
        let p = startup_params(&[("user", "a"), ("bad name';--", "x")]);
        assert!(wanted(&p, &[], &[]).is_err());
        assert_eq!(literal("it's"), "'it''s'");
    }

    #[test]
    fn equal_settings_are_shared_and_unused_ones_swept() {
        let pairs = [("application_name", "shared-test"), ("TimeZone", "UTC")];
        let a = Settings::from_pairs(pairs);
        let b = Settings::from_pairs(pairs);
        assert!(Arc::ptr_eq(&a.packed, &b.packed));
        let mut c = b.clone();
        c.set("TimeZone", "Europe/Paris");
        assert!(!Arc::ptr_eq(&a.packed, &c.packed));
        assert_eq!(
            (a.get("TimeZone"), c.get("TimeZone")),
            (Some("UTC"), Some("Europe/Paris"))
        );
        for i in 0..300 {
            drop(Settings::from_pairs([(
                "application_name",
                &*format!("sweep-test-{i}"),
            )]));
        }
        let left = SHARED.len();
        assert!(left < 300, "{left} settings kept, most of them unused");
        assert!(
            Arc::ptr_eq(&Settings::from_pairs(pairs).packed, &a.packed),
            "in use: kept"
        );
    }

    #[test]
    fn packed_settings() {
        let mut s = Settings::from_pairs([("a", "1"), ("TimeZone", "UTC"), ("a", "2"), ("e", "")]);
        assert_eq!(
            s.iter().collect::<Vec<_>>(),
            [("a", "2"), ("TimeZone", "UTC"), ("e", "")]
        );
        assert_eq!(s.get("TimeZone"), Some("UTC"));
        assert_eq!(s.get("timezone"), None);
        s.set("TimeZone", "Europe/Paris");
        s.set("new", "x");
        s.set("bad\0name", "x");
        assert_eq!(
            s.iter().collect::<Vec<_>>(),
            [
                ("a", "2"),
                ("TimeZone", "Europe/Paris"),
                ("e", ""),
                ("new", "x")
            ]
        );
        assert_eq!(Settings::default().iter().count(), 0);
    }
}
