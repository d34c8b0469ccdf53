//! The settings SHOW CONFIG lists and SET changes, under PgBouncer's names
//! where PgBouncer has the setting (`default_pool_size`, `pool_mode`, ...)
//! and pgtenant's own otherwise (`max_server_connections`). SET applies a
//! changed copy of the configuration in force, as RELOAD does.

use super::rows::{text, ResultSet, Type};
use crate::config::{AuthMethod, Config, PoolMode};

/// Writes a setting's new value into a configuration.
type Setter = fn(&mut Config, &str) -> Result<(), String>;

/// How a setting is read and written.
struct Setting {
    name: &'static str,
    get: fn(&Config) -> String,
    /// `None`: shown, but changes need a restart.
    set: Option<Setter>,
}

fn seconds(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{}", v as i64)
    } else {
        v.to_string()
    }
}

fn parse_seconds(v: &str) -> Result<f64, String> {
    v.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .ok_or_else(|| format!("\"{v}\" is not a number of seconds"))
}

fn parse_count(v: &str) -> Result<usize, String> {
    v.parse::<usize>()
        .map_err(|_| format!("\"{v}\" is not a non-negative integer"))
}

fn parse_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn mode_name(m: PoolMode) -> String {
    super::show::mode_name(m).to_string()
}

fn method_name(m: AuthMethod) -> String {
    match m {
        AuthMethod::ScramSha256 => "scram-sha-256",
        AuthMethod::Md5 => "md5",
        AuthMethod::Trust => "trust",
    }
    .to_string()
}

macro_rules! seconds_setting {
    ($name:literal, $($field:ident).+) => {
        Setting {
            name: $name,
            get: |c| seconds(c.$($field).+),
            set: Some(|c, v| {
                c.$($field).+ = parse_seconds(v)?;
                Ok(())
            }),
        }
    };
}

macro_rules! count_setting {
    ($name:literal, $($field:ident).+) => {
        Setting {
            name: $name,
            get: |c| c.$($field).+.to_string(),
            set: Some(|c, v| {
                c.$($field).+ = parse_count(v)?;
                Ok(())
            }),
        }
    };
}

const SETTINGS: &[Setting] = &[
    Setting {
        name: "admin_users",
        get: |c| c.admin.admin_users.join(","),
        set: Some(|c, v| {
            c.admin.admin_users = parse_list(v);
            Ok(())
        }),
    },
    Setting {
        name: "auth_file",
        get: |c| c.auth.auth_file.clone(),
        set: Some(|c, v| {
            c.auth.auth_file = v.to_string();
            Ok(())
        }),
    },
    Setting {
        name: "auth_type",
        get: |c| method_name(c.auth.method),
        set: Some(|c, v| {
            c.auth.method = match v {
                "scram-sha-256" => AuthMethod::ScramSha256,
                "md5" => AuthMethod::Md5,
                "trust" => AuthMethod::Trust,
                _ => return Err(format!("\"{v}\" is not scram-sha-256, md5 or trust")),
            };
            Ok(())
        }),
    },
    seconds_setting!("client_idle_timeout", pool.client_idle_timeout),
    seconds_setting!("client_login_timeout", listen.client_login_timeout),
    Setting {
        name: "client_tls_sslmode",
        get: |c| format!("{:?}", c.tls.client_tls_sslmode).to_lowercase(),
        set: None,
    },
    count_setting!("default_pool_size", pool.default_pool_size),
    seconds_setting!("idle_transaction_timeout", pool.idle_transaction_timeout),
    Setting {
        name: "listen_addr",
        get: |c| c.listen.addr.ip().to_string(),
        set: None,
    },
    Setting {
        name: "listen_port",
        get: |c| c.listen.addr.port().to_string(),
        set: None,
    },
    count_setting!("max_client_conn", pool.max_client_conn),
    count_setting!("max_db_connections", pool.max_db_connections),
    count_setting!("max_prepared_statements", pool.max_prepared_statements),
    count_setting!("max_server_connections", pool.max_server_connections),
    count_setting!("max_user_connections", pool.max_user_connections),
    Setting {
        name: "pool_mode",
        get: |c| mode_name(c.pool.pool_mode),
        set: Some(|c, v| {
            c.pool.pool_mode = PoolMode::parse(v)
                .ok_or_else(|| format!("\"{v}\" is not session, transaction or statement"))?;
            Ok(())
        }),
    },
    seconds_setting!("query_wait_timeout", pool.query_wait_timeout),
    seconds_setting!("server_connect_timeout", pool.server_connect_timeout),
    seconds_setting!("server_idle_timeout", pool.server_idle_timeout),
    seconds_setting!("server_lifetime", pool.server_lifetime),
    Setting {
        name: "server_reset_query",
        get: |c| c.pool.server_reset_query.clone(),
        set: Some(|c, v| {
            c.pool.server_reset_query = v.to_string();
            Ok(())
        }),
    },
    Setting {
        name: "server_tls_sslmode",
        get: |c| format!("{:?}", c.tls.server_tls_sslmode).to_lowercase(),
        set: None,
    },
    seconds_setting!("stats_period", admin.stats_period),
    Setting {
        name: "stats_users",
        get: |c| c.admin.stats_users.join(","),
        set: Some(|c, v| {
            c.admin.stats_users = parse_list(v);
            Ok(())
        }),
    },
    Setting {
        name: "unix_socket_dir",
        get: |c| c.listen.unix_socket_dir.clone(),
        set: None,
    },
];

/// SHOW CONFIG: key, value, default, changeable.
pub fn show_config(config: &Config) -> ResultSet {
    let defaults = Config::default();
    let mut rs = ResultSet::new(&[
        ("key", Type::Text),
        ("value", Type::Text),
        ("default", Type::Text),
        ("changeable", Type::Text),
    ]);
    for s in SETTINGS {
        rs.push(vec![
            text(s.name),
            text((s.get)(config)),
            text((s.get)(&defaults)),
            text(if s.set.is_some() { "yes" } else { "no" }),
        ]);
    }
    rs
}

/// A copy of `config` with `key` set to `value`, validated.
pub fn set(config: &Config, key: &str, value: &str) -> Result<Config, String> {
    let setting = SETTINGS
        .iter()
        .find(|s| s.name == key)
        .ok_or_else(|| format!("unknown configuration key \"{key}\""))?;
    let set = setting
        .set
        .ok_or_else(|| format!("\"{key}\" cannot be changed while running"))?;
    let mut new = config.clone();
    set(&mut new, value).map_err(|e| format!("{key}: {e}"))?;
    new.validate("SET").map_err(|e| e.to_string())?;
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_changes_one_key_and_validates() {
        let c = Config::default();
        let n = set(&c, "default_pool_size", "7").unwrap();
        assert_eq!(n.pool.default_pool_size, 7);
        let n = set(&c, "pool_mode", "transaction").unwrap();
        assert_eq!(n.pool.pool_mode, PoolMode::Transaction);
        let n = set(&c, "max_db_connections", "3").unwrap();
        assert_eq!(n.pool.max_db_connections, 3);
        let n = set(&c, "max_user_connections", "4").unwrap();
        assert_eq!(n.pool.max_user_connections, 4);
        let n = set(&c, "stats_users", "a, b").unwrap();
        assert_eq!(n.admin.stats_users, ["a", "b"]);
        assert!(set(&c, "nope", "1").unwrap_err().contains("nope"));
        assert!(set(&c, "default_pool_size", "0").is_err());
        assert!(set(&c, "default_pool_size", "x").is_err());
        assert!(set(&c, "query_wait_timeout", "-1").is_err());
        assert!(set(&c, "listen_port", "1")
            .unwrap_err()
            .contains("listen_port"));
    }

    #[test]
    fn config_rows_have_four_columns() {
        let rs = show_config(&Config::default());
        assert!(rs.rows.iter().all(|r| r.len() == 4));
        let pool = rs
            .rows
            .iter()
            .find(|r| r[0].as_deref() == Some("default_pool_size"));
        assert_eq!(pool.unwrap()[1].as_deref(), Some("20"));
    }
}
