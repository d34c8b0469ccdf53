//! The console's command language: PgBouncer's commands, case-insensitive,
//! one per query string with an optional trailing `;`, plus pgtenant's
//! `SHOW TENANTS`, `SUSPEND TENANT id [NOW]` and `RESUME TENANT id`.

/// What a SHOW asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    /// SHOW POOLS.
    Pools,
    /// SHOW STATS.
    Stats,
    /// SHOW STATS_TOTALS.
    StatsTotals,
    /// SHOW STATS_AVERAGES.
    StatsAverages,
    /// SHOW CLIENTS.
    Clients,
    /// SHOW SERVERS.
    Servers,
    /// SHOW DATABASES.
    Databases,
    /// SHOW USERS.
    Users,
    /// SHOW CONFIG.
    Config,
    /// SHOW LISTS.
    Lists,
    /// SHOW VERSION.
    Version,
    /// SHOW STATE.
    State,
    /// SHOW TENANTS.
    Tenants,
    /// SHOW HELP.
    Help,
}

/// One console command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// A SHOW.
    Show(Show),
    /// PAUSE [db].
    Pause(Option<String>),
    /// RESUME [db].
    Resume(Option<String>),
    /// RECONNECT [db].
    Reconnect(Option<String>),
    /// DISABLE db.
    Disable(String),
    /// ENABLE db.
    Enable(String),
    /// KILL db.
    Kill(String),
    /// RELOAD.
    Reload,
    /// SET key = value.
    Set {
        /// The setting.
        key: String,
        /// Its new value, unquoted.
        value: String,
    },
    /// SHUTDOWN.
    Shutdown,
    /// SUSPEND TENANT id [NOW].
    SuspendTenant {
        /// The tenant.
        id: String,
        /// NOW: its connected clients are closed too.
        now: bool,
    },
    /// RESUME TENANT id.
    ResumeTenant(String),
}

impl Command {
    /// Whether a stats user may run it (SHOW commands only).
    pub fn read_only(&self) -> bool {
        matches!(self, Command::Show(_))
    }
}

/// Why a query string is not a command; the message is PgBouncer's where it has one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not a command at all.
    #[error("invalid command '{0}', use SHOW HELP;")]
    Invalid(String),
    /// A command that needs a database got none.
    #[error("a database is required")]
    NeedsDatabase,
    /// More than one command in one query string.
    #[error("only one command per query string is supported")]
    Several,
}

/// Parses one query string. `Ok(None)` for an empty one.
pub fn parse(sql: &str) -> Result<Option<Command>, ParseError> {
    let trimmed = sql.trim();
    let body = trimmed.strip_suffix(';').unwrap_or(trimmed).trim_end();
    if body.is_empty() {
        return Ok(None);
    }
    let invalid = || ParseError::Invalid(trimmed.to_string());
    let upper = body.to_ascii_uppercase();
    let words: Vec<&str> = body.split_whitespace().collect();
    let verb = upper.split_whitespace().next().unwrap_or_default();
    if verb == "SET" {
        return parse_set(body).map(Some).ok_or_else(invalid);
    }
    if body.contains(';') {
        return Err(if looks_like_several(body) {
            ParseError::Several
        } else {
            invalid()
        });
    }
    let arg = |i: usize| words.get(i).map(|w| unquote_ident(w));
    let at_most = |n: usize| {
        if words.len() > n {
            Err(invalid())
        } else {
            Ok(())
        }
    };
    let second = words.get(1).map(|w| w.to_ascii_uppercase());
    let command = match (verb, second.as_deref()) {
        ("SHOW", Some(what)) => {
            at_most(2)?;
            Command::Show(parse_show(what).ok_or_else(invalid)?)
        }
        ("PAUSE", _) => {
            at_most(2)?;
            Command::Pause(arg(1))
        }
        ("RESUME", Some("TENANT")) if words.len() == 3 => {
            Command::ResumeTenant(arg(2).unwrap_or_default())
        }
        ("RESUME", _) => {
            at_most(2)?;
            Command::Resume(arg(1))
        }
        ("SUSPEND", Some("TENANT")) if words.len() == 3 => Command::SuspendTenant {
            id: arg(2).unwrap_or_default(),
            now: false,
        },
        ("SUSPEND", Some("TENANT")) if words.len() == 4 && words[3].eq_ignore_ascii_case("NOW") => {
            Command::SuspendTenant {
                id: arg(2).unwrap_or_default(),
                now: true,
            }
        }
        ("RECONNECT", _) => {
            at_most(2)?;
            Command::Reconnect(arg(1))
        }
        ("DISABLE" | "ENABLE" | "KILL", _) => {
            at_most(2)?;
            let db = arg(1).ok_or(ParseError::NeedsDatabase)?;
            match verb {
                "DISABLE" => Command::Disable(db),
                "ENABLE" => Command::Enable(db),
                _ => Command::Kill(db),
            }
        }
        ("RELOAD", None) => Command::Reload,
        ("SHUTDOWN", None) => Command::Shutdown,
        _ => return Err(invalid()),
    };
    Ok(Some(command))
}

fn parse_show(what: &str) -> Option<Show> {
    Some(match what {
        "POOLS" => Show::Pools,
        "STATS" => Show::Stats,
        "STATS_TOTALS" => Show::StatsTotals,
        "STATS_AVERAGES" => Show::StatsAverages,
        "CLIENTS" => Show::Clients,
        "SERVERS" => Show::Servers,
        "DATABASES" => Show::Databases,
        "USERS" => Show::Users,
        "CONFIG" => Show::Config,
        "LISTS" => Show::Lists,
        "VERSION" => Show::Version,
        "STATE" => Show::State,
        "TENANTS" => Show::Tenants,
        "HELP" => Show::Help,
        _ => return None,
    })
}

/// `SET key = value` or `SET key TO value`; the value may be single-quoted.
fn parse_set(body: &str) -> Option<Command> {
    let rest = body.get(3..)?.trim_start();
    let (key, value) = match rest.find('=') {
        Some(i) => (rest[..i].trim(), rest[i + 1..].trim()),
        None => {
            let mut parts = rest.splitn(2, char::is_whitespace);
            let key = parts.next()?;
            let tail = parts.next()?.trim_start();
            let value = tail
                .get(..2)
                .filter(|w| w.eq_ignore_ascii_case("to"))
                .and_then(|_| tail.get(2..))?;
            if !value.starts_with(char::is_whitespace) {
                return None;
            }
            (key, value.trim())
        }
    };
    if key.is_empty() || key.contains(char::is_whitespace) || value.is_empty() {
        return None;
    }
    let value = match value.strip_prefix('\'') {
        Some(inner) => inner.strip_suffix('\'')?.replace("''", "'"),
        None if value.contains(char::is_whitespace) || value.contains(';') => return None,
        None => value.to_string(),
    };
    Some(Command::Set {
        key: key.to_ascii_lowercase(),
        value,
    })
}

/// Whether `body` reads as commands separated by `;`.
fn looks_like_several(body: &str) -> bool {
    body.split(';')
        .filter(|p| !p.trim().is_empty())
        .all(|p| matches!(parse(p), Ok(Some(_))))
}

/// A database or tenant name: `"quoted"` keeps its case, a bare name is as written.
fn unquote_ident(word: &str) -> String {
    word.strip_prefix('"')
        .and_then(|w| w.strip_suffix('"'))
        .unwrap_or(word)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_any_case_with_or_without_semicolon() {
        assert_eq!(parse("SHOW POOLS"), Ok(Some(Command::Show(Show::Pools))));
        assert_eq!(
            parse("  show   stats_totals ;  "),
            Ok(Some(Command::Show(Show::StatsTotals)))
        );
        assert_eq!(
            parse("Show Tenants;"),
            Ok(Some(Command::Show(Show::Tenants)))
        );
        assert_eq!(parse(""), Ok(None));
        assert_eq!(parse(" ; "), Ok(None));
    }

    #[test]
    fn controls() {
        assert_eq!(parse("pause"), Ok(Some(Command::Pause(None))));
        assert_eq!(
            parse("PAUSE crm_db;"),
            Ok(Some(Command::Pause(Some("crm_db".into()))))
        );
        assert_eq!(parse("KILL"), Err(ParseError::NeedsDatabase));
        assert_eq!(
            parse("disable \"crm_db\""),
            Ok(Some(Command::Disable("crm_db".into())))
        );
        assert_eq!(
            parse("SUSPEND TENANT acme"),
            Ok(Some(Command::SuspendTenant {
                id: "acme".into(),
                now: false
            }))
        );
        assert_eq!(
            parse("suspend tenant acme now;"),
            Ok(Some(Command::SuspendTenant {
                id: "acme".into(),
                now: true
            }))
        );
        assert!(parse("SUSPEND TENANT acme LATER").is_err());
        assert_eq!(
            parse("resume tenant acme"),
            Ok(Some(Command::ResumeTenant("acme".into())))
        );
        assert_eq!(parse("RELOAD"), Ok(Some(Command::Reload)));
        assert_eq!(parse("SHUTDOWN;"), Ok(Some(Command::Shutdown)));
    }

    #[test]
    fn set_forms() {
        let set = |k: &str, v: &str| {
            Ok(Some(Command::Set {
                key: k.into(),
                value: v.into(),
            }))
        };
        assert_eq!(
            parse("SET default_pool_size = 7"),
            set("default_pool_size", "7")
        );
        assert_eq!(
            parse("set Pool_Mode to 'transaction';"),
            set("pool_mode", "transaction")
        );
        assert_eq!(parse("SET a='it''s'"), set("a", "it's"));
        assert_eq!(
            parse("SET server_reset_query = 'DISCARD ALL'"),
            set("server_reset_query", "DISCARD ALL")
        );
        assert!(parse("SET x").is_err());
        assert!(parse("SET = 3").is_err());
        assert!(parse("SET a = b c").is_err());
    }

    #[test]
    fn errors_name_the_input() {
        let e = parse("SELECT 1").unwrap_err();
        assert_eq!(e.to_string(), "invalid command 'SELECT 1', use SHOW HELP;");
        assert!(parse("SHOW FOO").is_err());
        assert!(parse("SHOW POOLS extra").is_err());
        assert!(parse("PAUSE a b").is_err());
        assert_eq!(parse("SHOW POOLS; SHOW STATS"), Err(ParseError::Several));
        assert!(matches!(parse("SHOW; DROP"), Err(ParseError::Invalid(_))));
        for junk in [
            "\0",
            "SET",
            "SET '",
            "SET a = '",
            "RESUME TENANT",
            "ÿÿ;;;",
            "SET a TO",
        ] {
            let _ = parse(junk);
        }
    }
}
