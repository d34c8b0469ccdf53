//! Mapping, conversion and loading tests (the parser's are beside it).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::parse::parse_text;
use super::*;
use crate::config::{AuthMethod, Config, PoolMode, SslMode};

fn base() -> SocketAddr {
    "127.0.0.1:6432".parse().unwrap()
}

fn mapped(text: &str) -> Mapped {
    map(
        &parse_text(text, Path::new("p.ini")).unwrap(),
        base(),
        false,
    )
    .unwrap()
}

fn map_err(text: &str) -> String {
    map(
        &parse_text(text, Path::new("p.ini")).unwrap(),
        base(),
        false,
    )
    .unwrap_err()
    .to_string()
}

fn warnings(m: &Mapped) -> Vec<String> {
    m.warnings.iter().map(ToString::to_string).collect()
}

fn has_warning(m: &Mapped, prefix: &str) -> bool {
    warnings(m).iter().any(|w| w.starts_with(prefix))
}

fn value(m: &Mapped, dotted: &str) -> Option<toml::Value> {
    m.settings
        .iter()
        .find(|s| s.dotted() == dotted)
        .map(|s| s.value.clone())
}

/// A Debian-like file: what maps, what is warned about, and the TOML it gives.
#[test]
fn debian_like_file() {
    let m = mapped(
        "[databases]\n\
         crm_db = host=db.internal port=5433 dbname=crm_db pool_mode=transaction\n\
         product_db = host=db.internal port=5433 pool_size=50 user=app\n\
         [users]\n\
         alice = pool_mode=session\n\
         [pgbouncer]\n\
         logfile = /var/log/postgresql/pgbouncer.log\n\
         listen_addr = localhost\n\
         listen_port = 6543\n\
         unix_socket_dir = /var/run/postgresql\n\
         auth_type = scram-sha-256\n\
         pool_mode = session\n\
         default_pool_size = 7\n\
         max_client_conn = 300\n\
         max_db_connections = 40\n\
         server_reset_query = DISCARD ALL\n\
         query_wait_timeout = 30\n\
         server_idle_timeout = 0.5\n\
         client_tls_sslmode = prefer\n\
         client_tls_cert_file = /etc/ssl/server.pem\n\
         client_tls_key_file = server.key\n\
         client_tls_ciphers = fast\n\
         pkt_buf = 8192\n\
         pool_mod = transaction\n\
         so_reuseport = 1\n\
         max_user_connections = 9\n",
    );
    let v = |k: &str| value(&m, k).unwrap_or_else(|| panic!("{k} not mapped"));
    assert_eq!(v("listen.addr").as_str(), Some("127.0.0.1:6543"));
    assert_eq!(
        v("listen.unix_socket_dir").as_str(),
        Some("/var/run/postgresql")
    );
    assert_eq!(v("backend.host").as_str(), Some("db.internal"));
    assert_eq!(v("backend.port").as_integer(), Some(5433));
    assert_eq!(
        v("backend.databases").to_string(),
        r#"["crm_db", "product_db"]"#
    );
    assert_eq!(
        v("pool.database_pool_modes").to_string(),
        r#"{ crm_db = "transaction" }"#
    );
    assert_eq!(v("pool.default_pool_size").as_integer(), Some(7));
    assert_eq!(v("pool.max_db_connections").as_integer(), Some(40));
    assert_eq!(v("pool.max_user_connections").as_integer(), Some(9));
    assert!(value(&m, "pool.max_server_connections").is_none());
    assert_eq!(v("pool.query_wait_timeout").as_float(), Some(30.0));
    assert_eq!(v("pool.server_idle_timeout").as_float(), Some(0.5));
    assert_eq!(v("tls.client_tls_sslmode").as_str(), Some("prefer"));
    assert_eq!(v("listen.so_reuseport").as_bool(), Some(true));
    let key_file = v("tls.client_tls_key_file");
    assert!(Path::new(key_file.as_str().unwrap()).is_absolute());
    assert!(key_file.as_str().unwrap().ends_with("server.key"));

    for prefix in [
        "p.ini:3: key \"product_db.pool_size\": not supported per database",
        "p.ini:3: key \"product_db.user\": not supported",
        "p.ini:5: key \"users.alice\": not supported: per-user settings",
        "p.ini:7: key \"logfile\": not yet supported",
        "p.ini:22: key \"client_tls_ciphers\": ignored",
        "p.ini:23: key \"pkt_buf\": ignored: pgtenant sizes buffers itself",
        "p.ini:24: key \"pool_mod\": unknown key",
    ] {
        assert!(
            has_warning(&m, prefix),
            "no warning {prefix:?} in {:#?}",
            warnings(&m)
        );
    }
    // Mapped keys are not warned about.
    for key in [
        "default_pool_size",
        "max_db_connections",
        "max_user_connections",
    ] {
        assert!(!warnings(&m)
            .iter()
            .any(|w| w.contains(&format!("\"{key}\""))));
    }

    // The converted TOML loads and carries the values.
    let text = render::to_toml(&m, Path::new("p.ini"));
    let c = Config::parse(&text, "converted.toml").unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(c.listen.addr, "127.0.0.1:6543".parse().unwrap());
    assert_eq!(c.backend.databases, ["crm_db", "product_db"]);
    assert_eq!(c.pool.database_pool_modes["crm_db"], PoolMode::Transaction);
    assert_eq!(c.pool.pool_mode, PoolMode::Session);
    assert_eq!(c.pool.max_client_conn, 300);
    assert_eq!(c.tls.client_tls_sslmode, SslMode::Prefer);
    assert!(c.listen.so_reuseport);
    assert_eq!(c.tenants.default_database, "crm_db");
    assert!(
        text.contains("# p.ini:8 listen_addr, p.ini:9 listen_port\naddr = "),
        "{text}"
    );
    assert!(
        text.contains("# p.ini:2 crm_db, p.ini:3 product_db\ndatabases = "),
        "{text}"
    );
    assert!(
        text.contains("#   p.ini:23: key \"pkt_buf\": ignored"),
        "{text}"
    );
}

#[test]
fn bad_values_name_file_line_and_key() {
    assert_eq!(
        map_err("[pgbouncer]\nlisten_addr = 127.0.0.1\nmax_client_conn = 12x\n"),
        "p.ini:3: key \"max_client_conn\": invalid value \"12x\": expected a whole number"
    );
    assert_eq!(
        map_err("[pgbouncer]\nlisten_port = \"6432\"\n"),
        "p.ini:2: key \"listen_port\": invalid value \"\\\"6432\\\"\": expected a port number"
    );
    assert_eq!(
        map_err("[pgbouncer]\nquery_wait_timeout = -1\n"),
        "p.ini:2: key \"query_wait_timeout\": invalid value \"-1\": expected a number of seconds"
    );
    assert_eq!(
        map_err("[pgbouncer]\npool_mode = sometimes\n"),
        "p.ini:2: key \"pool_mode\": invalid pool_mode \"sometimes\": expected session, \
         transaction or statement"
    );
    assert!(map_err("[pgbouncer]\nclient_tls_sslmode = maybe\n")
        .starts_with("p.ini:2: key \"client_tls_sslmode\": expected one of disable, allow"));
    assert_eq!(
        map_err("[pgbouncer]\nso_reuseport = maybe\n"),
        "p.ini:2: key \"so_reuseport\": invalid value \"maybe\": expected 1 or 0"
    );
    assert_eq!(
        map_err("[databases]\ncrm_db = port=54x\n"),
        "p.ini:2: key \"crm_db.port\": invalid value \"54x\": expected a port number"
    );
    assert_eq!(
        map_err("[databases]\ncrm_db = host='open\n"),
        "p.ini:2: key \"crm_db\": unterminated quoted value of host"
    );
    assert_eq!(
        map_err("[databases]\ncrm_db = pool_mode=never\n"),
        "p.ini:2: key \"crm_db\": invalid pool_mode \"never\": expected session, transaction \
         or statement"
    );
}

#[test]
fn duplicate_keys_keep_the_last_and_say_so() {
    let m = mapped(
        "[databases]\ncrm_db = port=5432\ncrm_db = port=5433\n\
         [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = 7000\nLISTEN_PORT = 7001\n",
    );
    assert_eq!(
        value(&m, "listen.addr").unwrap().as_str(),
        Some("127.0.0.1:7001")
    );
    assert_eq!(value(&m, "backend.port").unwrap().as_integer(), Some(5433));
    assert!(has_warning(
        &m,
        "p.ini:6: key \"listen_port\": given again at p.ini:7"
    ));
    assert!(has_warning(
        &m,
        "p.ini:2: key \"crm_db\": given again at p.ini:3"
    ));
}

#[test]
fn one_cluster_only() {
    assert_eq!(
        map_err("[databases]\na = host=db1\n\nb = host=db2 port=5432\n"),
        "p.ini:4: key \"b\": on db2:5432, but database \"a\" (p.ini:2) is on db1:5432; \
         pgtenant serves one PostgreSQL cluster"
    );
    assert!(map_err("[databases]\na = host=db1,db2\n").contains("several hosts"));
    // No host: PostgreSQL's socket in unix_socket_dir, as PgBouncer connects.
    let m = mapped("[databases]\na =\n[pgbouncer]\nunix_socket_dir = /run/pg\n");
    assert_eq!(value(&m, "backend.host").unwrap().as_str(), Some("/run/pg"));
    let m = mapped("[databases]\na = port=5444\n");
    assert_eq!(value(&m, "backend.host").unwrap().as_str(), Some("/tmp"));
}

#[test]
fn database_names() {
    // The fallback database is warned about; its host still names the cluster.
    let m = mapped("[databases]\n* = host=10.0.0.9 port=6000\n");
    assert!(has_warning(&m, "p.ini:2: key \"*\": not supported"));
    assert_eq!(
        value(&m, "backend.host").unwrap().as_str(),
        Some("10.0.0.9")
    );
    assert_eq!(value(&m, "backend.databases"), None);
    // dbname= aliases a database in passthrough mode, and is refused in tenant mode.
    let m = mapped("[databases]\nfoo = dbname=bar\n");
    let aliases = value(&m, "backend.server_databases").unwrap();
    assert_eq!(aliases["foo"].as_str(), Some("bar"));
    let ini = parse_text("[databases]\nfoo = dbname=bar\n", Path::new("p.ini")).unwrap();
    let err = map(&ini, base(), true).unwrap_err().to_string();
    assert!(
        err.starts_with("p.ini:2: key \"foo\": dbname=bar: in tenant mode pgtenant cannot serve"),
        "{err}"
    );
    assert!(map_err("[databases]\n\"My-Db\" = host=h\n").contains("plain identifiers"));
    assert!(map_err("[databases]\npgbouncer = host=h\n").contains("reserved"));
    let m = mapped("[databases]\ncrm_db = host=h sslmode=require\n");
    assert!(has_warning(
        &m,
        "p.ini:2: key \"crm_db.sslmode\": unknown option"
    ));
}

#[test]
fn auth_settings() {
    let m = mapped("[pgbouncer]\nauth_type = plain\n");
    assert_eq!(
        value(&m, "auth.method").unwrap().as_str(),
        Some("scram-sha-256")
    );
    assert!(has_warning(
        &m,
        "p.ini:2: key \"auth_type\": plain: pgtenant never asks"
    ));
    let m = mapped("[pgbouncer]\nauth_type = hba\nauth_query = SELECT 1\n");
    assert_eq!(value(&m, "auth.method"), None);
    assert!(has_warning(
        &m,
        "p.ini:2: key \"auth_type\": \"hba\" is not supported"
    ));
    assert!(has_warning(
        &m,
        "p.ini:3: key \"auth_query\": not supported"
    ));

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("userlist.txt"),
        "\"alice@acme\" \"pw\"\n\"bob\" \"pw\"\n\"carol\" \"pw\"\n",
    )
    .unwrap();
    let ini = dir.path().join("pgbouncer.ini");
    std::fs::write(&ini, "[pgbouncer]\nauth_file = userlist.txt\n").unwrap();
    // Passthrough (the default for an ini): bare names are what it looks up.
    let m = map(&parse_file(&ini).unwrap(), base(), false).unwrap();
    assert!(!warnings(&m).iter().any(|w| w.contains("never match")));
    assert_eq!(
        value(&m, "tenants.mode").unwrap().as_str(),
        Some("passthrough")
    );
    let m = map(&parse_file(&ini).unwrap(), base(), true).unwrap();
    assert_eq!(value(&m, "tenants.mode"), None);
    let file = value(&m, "auth.auth_file").unwrap();
    assert_eq!(
        PathBuf::from(file.as_str().unwrap()),
        std::path::absolute(dir.path().join("userlist.txt")).unwrap()
    );
    assert!(
        warnings(&m).iter().any(|w| w.ends_with(
            "2 entries without a tenant (e.g. \"bob\") never match: \
                 pgtenant looks up \"user@tenant\""
        )),
        "{:?}",
        warnings(&m)
    );
}

#[test]
fn listener() {
    let m = mapped("[pgbouncer]\nlisten_port = 7432\n");
    assert_eq!(
        value(&m, "listen.addr").unwrap().as_str(),
        Some("127.0.0.1:7432")
    );
    assert!(has_warning(
        &m,
        "p.ini: key \"listen_addr\": not set: PgBouncer would accept"
    ));
    let m = mapped("[pgbouncer]\nlisten_addr = *\n");
    assert_eq!(
        value(&m, "listen.addr").unwrap().as_str(),
        Some("0.0.0.0:6432")
    );
    let m = mapped("[pgbouncer]\nlisten_addr = ::1, 127.0.0.1\nlisten_port=1\n");
    assert_eq!(value(&m, "listen.addr").unwrap().as_str(), Some("[::1]:1"));
    assert!(has_warning(
        &m,
        "p.ini:2: key \"listen_addr\": pgtenant listens on one address"
    ));
}

#[test]
fn values_pgtenant_cannot_take_are_warned_not_mapped() {
    let m = mapped(
        "[pgbouncer]\nlisten_addr = 127.0.0.1\nserver_lifetime = 0\nserver_reset_query =\n\
         query_wait_timeout = 0\nmax_prepared_statements = 0\nstray = 1\n",
    );
    let mapped_keys: Vec<String> = m.settings.iter().map(|s| s.dotted()).collect();
    assert_eq!(mapped_keys, ["listen.addr", "tenants.mode"]);
    for prefix in [
        "p.ini:3: key \"server_lifetime\": 0 (use each server connection once)",
        "p.ini:4: key \"server_reset_query\": empty (no reset: pgtenant must clean",
        "p.ini:5: key \"query_wait_timeout\": 0 (no limit) is not supported",
        "p.ini:6: key \"max_prepared_statements\": 0 (off: pgtenant always tracks",
        "p.ini:7: key \"stray\": unknown key",
    ] {
        assert!(
            has_warning(&m, prefix),
            "no {prefix:?} in {:#?}",
            warnings(&m)
        );
    }
    let m = mapped("stray = 1\n[weird]\nx = 1\n");
    assert!(has_warning(
        &m,
        "p.ini:1: key \"stray\": outside any section"
    ));
    assert!(has_warning(&m, "p.ini:2: key \"[weird]\": unknown section"));
}

/// Writes `files` (name, text) into a new directory.
fn files(list: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in list {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

#[test]
fn the_ini_lies_over_the_toml() {
    let dir = files(&[
        (
            "pgtenant.toml",
            "[listen]\naddr = \"127.0.0.2:7000\"\n[backend]\nadmin_user = \"boss\"\n\
             databases = [\"crm_db\", \"product_db\"]\n\
             [pool]\ndefault_pool_size = 3\nmax_client_conn = 9\n\
             database_pool_modes = { product_db = \"statement\" }\n",
        ),
        (
            "pgbouncer.ini",
            "[databases]\ncrm_db = host=10.1.1.1 pool_mode=transaction\nproduct_db = host=10.1.1.1\n\
             [pgbouncer]\nlisten_port = 7001\ndefault_pool_size = 5\n",
        ),
    ]);
    let sources = Sources {
        toml: Some(dir.path().join("pgtenant.toml")),
        pgbouncer_ini: Some(dir.path().join("pgbouncer.ini")),
    };
    let loaded = load(&sources).unwrap();
    let c = &loaded.config;
    // The ini's port on the TOML's address; the ini's pool size; the TOML's
    // admin role and client limit, which the ini does not set.
    assert_eq!(c.listen.addr, "127.0.0.2:7001".parse().unwrap());
    assert_eq!(c.pool.default_pool_size, 5);
    assert_eq!(c.pool.max_client_conn, 9);
    assert_eq!(c.backend.admin_user, "boss");
    assert_eq!(c.backend.host, "10.1.1.1");
    assert_eq!(c.pool.database_pool_modes["crm_db"], PoolMode::Transaction);
    assert_eq!(
        c.pool.database_pool_modes["product_db"],
        PoolMode::Statement
    );
    assert_eq!(c.auth.method, AuthMethod::ScramSha256);
    assert!(loaded.warnings.iter().any(|w| w.key == "listen_addr"));
}

#[test]
fn validation_errors_point_at_the_ini_line() {
    let dir = files(&[
        ("pgtenant.toml", "[pool]\nmax_client_conn = 9\n"),
        ("pgbouncer.ini", "[pgbouncer]\n\ndefault_pool_size = 0\n"),
    ]);
    let ini = dir.path().join("pgbouncer.ini");
    let sources = Sources {
        toml: Some(dir.path().join("pgtenant.toml")),
        pgbouncer_ini: Some(ini.clone()),
    };
    let err = load(&sources).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "{}:3: key \"default_pool_size\": pool.default_pool_size: must be at least 1",
            ini.display()
        )
    );
    // A TOML mistake is still reported with the TOML's line.
    std::fs::write(
        dir.path().join("pgtenant.toml"),
        "[pool]\n\nmax_client_con = 9\n",
    )
    .unwrap();
    let err = load(&sources).unwrap_err().to_string();
    assert!(
        err.contains("pgtenant.toml") && err.contains("line 3"),
        "{err}"
    );
    assert!(err.contains("max_client_con"), "{err}");
}

#[test]
fn reload_keeps_the_old_config_on_error() {
    let dir = files(&[(
        "pgbouncer.ini",
        "[databases]\ncrm_db = host=127.0.0.1\n[pgbouncer]\nlisten_addr = 127.0.0.1\n\
         listen_port = 7100\nmax_client_conn = 50\n",
    )]);
    let ini = dir.path().join("pgbouncer.ini");
    let sources = Sources {
        toml: None,
        pgbouncer_ini: Some(ini.clone()),
    };
    let mut config = load(&sources).unwrap().config;
    assert_eq!(config.pool.max_client_conn, 50);

    std::fs::write(
        &ini,
        "[databases]\ncrm_db = host=127.0.0.1\n[pgbouncer]\nlisten_addr = 127.0.0.1\n\
         listen_port = 7100\nmax_client_conn = 60\n",
    )
    .unwrap();
    reload(&mut config, &sources).unwrap();
    assert_eq!(config.pool.max_client_conn, 60);

    std::fs::write(
        &ini,
        "[databases]\ncrm_db = host=127.0.0.1\n[pgbouncer]\nlisten_addr = 127.0.0.1\n\
         listen_port = 7100\nmax_client_conn = lots\n",
    )
    .unwrap();
    let err = reload(&mut config, &sources).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "{}:6: key \"max_client_conn\": invalid value \"lots\": expected a whole number",
            ini.display()
        )
    );
    assert_eq!(config.pool.max_client_conn, 60, "the old value stays");
    assert_eq!(config.listen.addr.port(), 7100);

    // A missing include is an error too, naming the %include line.
    std::fs::write(&ini, "[pgbouncer]\n%include gone.ini\n").unwrap();
    let err = reload(&mut config, &sources).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("{}:2: %include ", ini.display())),
        "{err}"
    );
    assert_eq!(config.pool.max_client_conn, 60);

    // Without an ini, the TOML alone is reloaded the same way.
    let toml = dir.path().join("pgtenant.toml");
    std::fs::write(&toml, "[pool]\nmax_client_conn = \"many\"\n").unwrap();
    let toml_only = Sources {
        toml: Some(toml),
        pgbouncer_ini: None,
    };
    let err = reload(&mut config, &toml_only).unwrap_err().to_string();
    assert!(err.contains("line 2"), "{err}");
    assert_eq!(config.pool.max_client_conn, 60);
}

/// Every key `keys` calls mapped is mapped by `map` (with a plausible value).
#[test]
fn every_mapped_key_is_mapped() {
    let mut text = String::from("[pgbouncer]\n");
    let names = keys::MAPPED;
    for key in names {
        assert_eq!(keys::pgbouncer_key(key), Some(keys::Treatment::Mapped));
        let value = match *key {
            "listen_addr" => "127.0.0.1",
            "auth_type" => "trust",
            "pool_mode" => "transaction",
            k if k.ends_with("sslmode") => "disable",
            k if k.ends_with("_file") || k.ends_with("_dir") => "/nonexistent",
            "server_reset_query" => "DISCARD ALL",
            "so_reuseport" | "log_connections" | "log_disconnections" | "log_pooler_errors" => "1",
            "admin_users" | "stats_users" => "admin, ops",
            _ => "5",
        };
        text.push_str(&format!("{key} = {value}\n"));
    }
    assert_eq!(names.len(), 37, "{names:?}");
    let m = mapped(&text);
    let unmapped: Vec<String> = warnings(&m)
        .into_iter()
        .filter(|w| w.ends_with("\": not supported"))
        .collect();
    assert!(unmapped.is_empty(), "{unmapped:?}");
    // One setting per key, the listener's two keys making one, plus the
    // passthrough mode every ini gives.
    assert_eq!(m.settings.len(), names.len(), "{:#?}", m.settings);
}
