//! Tenant resolution: turns a startup packet's `user`, `database` and
//! `options`, and the TLS server name (SNI), into a tenant, a bare user name
//! and a service database.
//! Does not authenticate (see `auth`) and does not check the tenant's status
//! (see `registry`); it only asks whether a name is a registered tenant.

use crate::config::{TenantSource, TenantsConfig};
use crate::protocol::{SqlState, StartupParams};

use super::id::TenantId;

/// Settings a client may not choose: they are what confines it to its tenant.
pub const PROTECTED_SETTINGS: &[&str] = &[
    "search_path",
    "app.current_tenant",
    "role",
    "session_authorization",
];

/// The outcome of resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The tenant.
    pub tenant: TenantId,
    /// The user name without its tenant part, as authenticated.
    pub user: String,
    /// The service database to connect to.
    pub database: String,
    /// Other `-c key=value` settings from `options`, applied on the backend at checkout.
    pub settings: Vec<(String, String)>,
}

/// Why no tenant could be chosen; each variant knows its SQLSTATE.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// No user name in the startup packet.
    #[error("no user name in the startup packet")]
    NoUser,
    /// No source named a tenant.
    #[error("no tenant given: connect as user@tenant or with options=-c tenant=<id>")]
    NoTenant,
    /// Two sources named different tenants.
    #[error("the startup packet names two tenants, {0:?} and {1:?}")]
    Conflict(String, String),
    /// The named tenant is not a valid id.
    #[error("tenant {0:?} does not exist")]
    InvalidTenant(String),
    /// The database is not a service database.
    #[error("database {0:?} does not exist")]
    UnknownDatabase(String),
    /// `options` could not be parsed.
    #[error("unsupported options startup parameter: {0}")]
    BadOptions(String),
    /// `options` tried to set a setting the proxy owns.
    #[error("setting {0:?} is managed by pgtenant and cannot be set in options")]
    Protected(String),
}

impl ResolveError {
    /// The SQLSTATE the client gets.
    pub fn sqlstate(&self) -> SqlState {
        match self {
            Self::NoUser | Self::NoTenant | Self::Conflict(..) => {
                SqlState::INVALID_AUTHORIZATION_SPECIFICATION
            }
            Self::InvalidTenant(_) | Self::UnknownDatabase(_) => SqlState::INVALID_CATALOG_NAME,
            Self::BadOptions(_) => SqlState::PROTOCOL_VIOLATION,
            Self::Protected(_) => SqlState::INSUFFICIENT_PRIVILEGE,
        }
    }
}

/// What the `options` parameter said.
#[derive(Debug, Default, PartialEq, Eq)]
struct ParsedOptions {
    tenant: Option<String>,
    settings: Vec<(String, String)>,
}

/// Resolves the tenant of a startup packet. `sni` is the server name a TLS
/// client asked for; `databases` are the service databases; `registered`
/// says whether a tenant id is in the registry.
pub fn resolve(
    params: &StartupParams,
    sni: Option<&str>,
    config: &TenantsConfig,
    databases: &[String],
    registered: &dyn Fn(&str) -> bool,
) -> Result<Resolved, ResolveError> {
    let raw_user = params
        .get("user")
        .filter(|u| !u.is_empty())
        .ok_or(ResolveError::NoUser)?;
    let options = parse_options(params.get("options").unwrap_or(""), true)?;
    // libpq sends the user name as the database when none was given.
    let database = params
        .get("database")
        .filter(|d| !d.is_empty() && *d != raw_user);
    let db_candidate = database.filter(|d| !databases.iter().any(|s| s == d));
    let mut user_candidate = split_user(raw_user, &config.user_separators);
    let sni_candidate = sni
        .filter(|_| config.sources.contains(&TenantSource::Sni))
        .and_then(|host| sni_tenant(host, &config.sni_suffix));

    let strong_named = options.tenant.is_some()
        || sni_candidate.is_some()
        || (config.sources.contains(&TenantSource::Database) && db_candidate.is_some());
    if let Some((_, tenant)) = user_candidate {
        // A user name that merely contains a separator ("first.last") does not
        // name a tenant when another source does and it is not registered.
        if strong_named && !registered(tenant) {
            user_candidate = None;
        }
    }

    let mut chosen: Option<(TenantSource, &str)> = None;
    for &source in &config.sources {
        let candidate = match source {
            TenantSource::User => user_candidate.map(|(_, t)| t),
            TenantSource::Options => options.tenant.as_deref(),
            TenantSource::Database => db_candidate,
            TenantSource::Sni => sni_candidate.as_deref(),
        };
        let Some(candidate) = candidate else { continue };
        match chosen {
            None => chosen = Some((source, candidate)),
            Some((_, c)) if c == candidate => {}
            Some((_, c)) => {
                return Err(ResolveError::Conflict(c.to_string(), candidate.to_string()))
            }
        }
    }
    let (source_used, tenant) = chosen.ok_or(ResolveError::NoTenant)?;
    let tenant =
        TenantId::parse(tenant).map_err(|_| ResolveError::InvalidTenant(tenant.to_string()))?;

    let user = match user_candidate {
        Some((bare, _)) if config.sources.contains(&TenantSource::User) => bare.to_string(),
        _ => raw_user.to_string(),
    };
    let database = match database {
        Some(d) if databases.iter().any(|s| s == d) => d.to_string(),
        Some(d)
            if !(source_used == TenantSource::Database
                || db_candidate == Some(tenant.as_str())) =>
        {
            return Err(ResolveError::UnknownDatabase(d.to_string()))
        }
        _ => config.default_database.clone(),
    };
    Ok(Resolved {
        tenant,
        user,
        database,
        settings: options.settings,
    })
}

/// The tenant a TLS server name names: the name less `suffix` (compared
/// without regard to case, as DNS does), or `None` when it lacks the suffix.
fn sni_tenant(host: &str, suffix: &str) -> Option<String> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let suffix = suffix.to_ascii_lowercase();
    if suffix.is_empty() {
        return None;
    }
    let tenant = host.strip_suffix(suffix.as_str())?;
    // A suffix given without its leading dot still splits at a label.
    let tenant = tenant.strip_suffix('.').unwrap_or(tenant);
    (!tenant.is_empty()).then(|| tenant.to_string())
}

/// Splits `name<sep>tenant` at the last separator; both parts must be non-empty.
fn split_user<'a>(user: &'a str, separators: &[char]) -> Option<(&'a str, &'a str)> {
    let at = user.rfind(|c| separators.contains(&c))?;
    let (name, rest) = user.split_at(at);
    let tenant = rest.get(1..)?;
    (!name.is_empty() && !tenant.is_empty()).then_some((name, tenant))
}

/// Splits `options` the way PostgreSQL does: on whitespace, with `\` escaping the next character.
fn split_words(options: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => word.extend(chars.next()),
            c if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// Passthrough mode (no tenants): the `-c key=value` / `--key=value`
/// settings of `options`, none protected and none naming a tenant.
pub fn passthrough_settings(params: &StartupParams) -> Result<Vec<(String, String)>, ResolveError> {
    Ok(parse_options(params.get("options").unwrap_or(""), false)?.settings)
}

/// Parses `options`; `tenants`: tenant mode, where `tenant=`/`reference=`
/// name the tenant and the protected settings are refused.
fn parse_options(options: &str, tenants: bool) -> Result<ParsedOptions, ResolveError> {
    let mut parsed = ParsedOptions::default();
    let mut words = split_words(options).into_iter();
    while let Some(word) = words.next() {
        let assignment = if word == "-c" {
            words
                .next()
                .ok_or_else(|| ResolveError::BadOptions("-c without a setting".into()))?
        } else if let Some(rest) = word.strip_prefix("-c") {
            rest.to_string()
        } else if let Some(rest) = word.strip_prefix("--") {
            rest.to_string()
        } else if tenants && word.starts_with("reference=") {
            word
        } else {
            return Err(ResolveError::BadOptions(
                "only '-c key=value', '--key=value' and 'reference=<tenant>' are allowed".into(),
            ));
        };
        let (key, value) = assignment
            .split_once('=')
            .ok_or_else(|| ResolveError::BadOptions(format!("{assignment:?} is not key=value")))?;
        // PostgreSQL reads "--some-name" as "some_name".
        let key = key.replace('-', "_").to_ascii_lowercase();
        if tenants && (key == "tenant" || key == "reference") {
            match &parsed.tenant {
                Some(t) if t != value => {
                    return Err(ResolveError::Conflict(t.clone(), value.to_string()))
                }
                _ => parsed.tenant = Some(value.to_string()),
            }
        } else if tenants && PROTECTED_SETTINGS.contains(&key.as_str()) {
            return Err(ResolveError::Protected(key));
        } else if key.is_empty() {
            return Err(ResolveError::BadOptions("empty setting name".into()));
        } else {
            parsed.settings.push((key, value.to_string()));
        }
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> StartupParams {
        StartupParams(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn run(pairs: &[(&str, &str)]) -> Result<Resolved, ResolveError> {
        let config = TenantsConfig {
            default_database: "crm_db".into(),
            ..Default::default()
        };
        let dbs = vec!["crm_db".to_string(), "product_db".to_string()];
        resolve(&params(pairs), None, &config, &dbs, &|t| {
            t == "acme" || t == "globex"
        })
    }

    fn run_sni(pairs: &[(&str, &str)], sni: &str) -> Result<Resolved, ResolveError> {
        let config = TenantsConfig {
            default_database: "crm_db".into(),
            sources: vec![
                TenantSource::Sni,
                TenantSource::User,
                TenantSource::Options,
                TenantSource::Database,
            ],
            sni_suffix: ".db.example.com".into(),
            ..Default::default()
        };
        let dbs = vec!["crm_db".to_string()];
        resolve(&params(pairs), Some(sni), &config, &dbs, &|t| {
            t == "acme" || t == "globex"
        })
    }

    #[test]
    fn sni_names_the_tenant() {
        let r = run_sni(&[("user", "alice")], "acme.db.example.com").unwrap();
        assert_eq!((r.tenant.as_str(), r.user.as_str()), ("acme", "alice"));
        let r = run_sni(&[("user", "alice")], "ACME.DB.Example.com.").unwrap();
        assert_eq!(r.tenant.as_str(), "acme");
        // Agreeing sources are fine; a dotted user name is not a tenant here.
        let r = run_sni(&[("user", "alice@acme")], "acme.db.example.com").unwrap();
        assert_eq!((r.tenant.as_str(), r.user.as_str()), ("acme", "alice"));
        let r = run_sni(&[("user", "first.last")], "globex.db.example.com").unwrap();
        assert_eq!(
            (r.tenant.as_str(), r.user.as_str()),
            ("globex", "first.last")
        );
        // A name without the suffix names nothing.
        let e = run_sni(&[("user", "alice")], "acme.example.org").unwrap_err();
        assert_eq!(e, ResolveError::NoTenant);
        let e = run_sni(&[("user", "alice")], "db.example.com").unwrap_err();
        assert_eq!(e, ResolveError::NoTenant);
        let r = run_sni(&[("user", "alice@acme")], "localhost").unwrap();
        assert_eq!(r.tenant.as_str(), "acme");
        // Not consulted unless listed.
        let config = TenantsConfig {
            sni_suffix: ".db.example.com".into(),
            default_database: "crm_db".into(),
            ..Default::default()
        };
        let e = resolve(
            &params(&[("user", "alice")]),
            Some("acme.db.example.com"),
            &config,
            &["crm_db".to_string()],
            &|_| true,
        )
        .unwrap_err();
        assert_eq!(e, ResolveError::NoTenant);
    }

    #[test]
    fn sni_disagreeing_with_another_source_is_refused() {
        for pairs in [
            &[("user", "alice@globex")][..],
            &[("user", "alice"), ("options", "-c tenant=globex")][..],
            &[("user", "alice"), ("database", "globex")][..],
        ] {
            let e = run_sni(pairs, "acme.db.example.com").unwrap_err();
            assert!(matches!(e, ResolveError::Conflict(..)), "{pairs:?}: {e:?}");
            assert_eq!(e.sqlstate().code(), "28000");
        }
    }

    #[test]
    fn user_forms() {
        let r = run(&[("user", "alice@acme"), ("database", "product_db")]).unwrap();
        assert_eq!(
            (r.tenant.as_str(), r.user.as_str(), r.database.as_str()),
            ("acme", "alice", "product_db")
        );
        let r = run(&[("user", "alice.globex"), ("database", "alice.globex")]).unwrap();
        assert_eq!(
            (r.tenant.as_str(), r.user.as_str(), r.database.as_str()),
            ("globex", "alice", "crm_db")
        );
        // Split at the last separator.
        let r = run(&[("user", "a.b@acme")]).unwrap();
        assert_eq!((r.tenant.as_str(), r.user.as_str()), ("acme", "a.b"));
    }

    #[test]
    fn options_forms() {
        for opts in [
            "-c tenant=globex",
            "-ctenant=globex",
            "--tenant=globex",
            "reference=globex",
        ] {
            let r = run(&[("user", "alice"), ("database", "crm_db"), ("options", opts)]).unwrap();
            assert_eq!(
                (r.tenant.as_str(), r.user.as_str()),
                ("globex", "alice"),
                "{opts}"
            );
            assert!(r.settings.is_empty());
        }
        let r = run(&[
            ("user", "alice"),
            (
                "options",
                "-c tenant=acme -c statement_timeout=5s --work-mem=4MB",
            ),
        ])
        .unwrap();
        assert_eq!(
            r.settings,
            vec![
                ("statement_timeout".into(), "5s".into()),
                ("work_mem".into(), "4MB".into())
            ]
        );
    }

    #[test]
    fn database_form() {
        let r = run(&[("user", "alice"), ("database", "acme")]).unwrap();
        assert_eq!((r.tenant.as_str(), r.database.as_str()), ("acme", "crm_db"));
    }

    #[test]
    fn disagreement_is_refused() {
        let e = run(&[("user", "alice@acme"), ("options", "-c tenant=globex")]).unwrap_err();
        assert!(matches!(e, ResolveError::Conflict(..)), "{e:?}");
        let e = run(&[
            ("user", "alice"),
            ("database", "acme"),
            ("options", "-c tenant=globex"),
        ])
        .unwrap_err();
        assert!(matches!(e, ResolveError::Conflict(..)), "{e:?}");
        let e = run(&[
            ("user", "alice"),
            ("options", "-c tenant=acme reference=globex"),
        ])
        .unwrap_err();
        assert!(matches!(e, ResolveError::Conflict(..)), "{e:?}");
    }

    #[test]
    fn dotted_user_with_explicit_tenant() {
        let r = run(&[("user", "first.last"), ("options", "-c tenant=acme")]).unwrap();
        assert_eq!((r.tenant.as_str(), r.user.as_str()), ("acme", "first.last"));
    }

    #[test]
    fn errors() {
        assert_eq!(
            run(&[("user", "alice")]).unwrap_err(),
            ResolveError::NoTenant
        );
        assert_eq!(run(&[]).unwrap_err(), ResolveError::NoUser);
        assert!(matches!(
            run(&[("user", "a@Bad-Id")]).unwrap_err(),
            ResolveError::InvalidTenant(_)
        ));
        let e = run(&[("user", "alice@acme"), ("database", "nope_db")]).unwrap_err();
        assert!(
            matches!(
                e,
                ResolveError::Conflict(..) | ResolveError::UnknownDatabase(_)
            ),
            "{e:?}"
        );
        for (opt, code) in [
            ("-c search_path=tenant_globex", "42501"),
            ("--app.current-tenant=globex", "42501"),
            ("-c role=postgres", "42501"),
            ("garbage", "08P01"),
            ("-c", "08P01"),
            ("-c novalue", "08P01"),
        ] {
            let e = run(&[("user", "alice@acme"), ("options", opt)]).unwrap_err();
            assert_eq!(e.sqlstate().code(), code, "{opt}: {e:?}");
        }
    }

    #[test]
    fn escaped_spaces() {
        let r = run(&[
            ("user", "alice@acme"),
            ("options", r"-c application_name=a\ b"),
        ])
        .unwrap();
        assert_eq!(r.settings, vec![("application_name".into(), "a b".into())]);
    }
}
