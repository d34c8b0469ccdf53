//! A PgBouncer configuration served by pgtenant: a Debian-style
//! `pgbouncer.ini` (with a `%include` and a `userlist.txt`) pointing at the
//! test PostgreSQL, converted with `pgtenant config convert`, and served
//! both in-process and by `pgtenant serve --pgbouncer-ini`, with a real
//! client showing that the ini's listener, pool mode and auth file are in
//! force. The TOML here keeps tenant features on (`tenants.mode =
//! "tenant"`), so clients name a tenant (`user@tenant`); passthrough, the
//! default for an ini, is `tests/passthrough.rs`'s.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use pgtenant::config::{AuthMethod, Config, PoolMode};
use pgtenant::pgbouncer_ini::{self, Sources};
use tokio_postgres::NoTls;

/// The files of one test.
struct Files {
    _dir: tempfile::TempDir,
    toml: PathBuf,
    ini: PathBuf,
    port: u16,
}

impl Files {
    fn sources(&self) -> Sources {
        Sources {
            toml: Some(self.toml.clone()),
            pgbouncer_ini: Some(self.ini.clone()),
        }
    }
}

/// Writes pgtenant.toml (the tenant side: tenant mode, admin role, role
/// secret, migrations), pgbouncer.ini + pgbouncer-local.ini and userlist.txt with
/// user `bob@<tenant>`.
fn write_files(tenant: &str) -> Files {
    let b = backend();
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let quote = |s: &str| toml::Value::String(s.to_string()).to_string();
    let toml = dir.path().join("pgtenant.toml");
    std::fs::write(
        &toml,
        format!(
            "[backend]\nadmin_user = {}\nadmin_password = {}\ntenant_role_secret = \"test-secret\"\n\
             [provision]\nmigrations_dir = {}\n\
             [tenants]\nmode = \"tenant\"\n\
             [pool]\nquery_wait_timeout = 10\n[http]\nlisten_addr = \"\"\n",
            quote(&b.user),
            quote(&b.password),
            quote(&Path::new(env!("CARGO_MANIFEST_DIR")).join("sql").display().to_string()),
        ),
    )
    .expect("write toml");
    let ini = dir.path().join("pgbouncer.ini");
    std::fs::write(
        &ini,
        format!(
            ";;;\n\
             ;;; PgBouncer configuration file\n\
             ;;;\n\
             \n\
             ;; database name = connect string\n\
             [databases]\n\
             crm_db = host={host} port={pg} dbname=crm_db pool_mode=transaction\n\
             product_db = host={host} port={pg}\n\
             \n\
             ;; User-specific configuration\n\
             [users]\n\
             \n\
             [pgbouncer]\n\
             logfile = {dir}/pgbouncer.log\n\
             pidfile = {dir}/pgbouncer.pid\n\
             \n\
             ;; IP address or * which means all IPs\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             \n\
             auth_type = scram-sha-256\n\
             auth_file = userlist.txt\n\
             ;admin_users = user2, someadmin, otheradmin\n\
             \n\
             pool_mode = session\n\
             server_reset_query = DISCARD ALL\n\
             max_client_conn = 100\n\
             default_pool_size = 1\n\
             \n\
             %include pgbouncer-local.ini\n",
            host = b.host,
            pg = b.port,
            dir = dir.path().display(),
        ),
    )
    .expect("write ini");
    std::fs::write(
        dir.path().join("pgbouncer-local.ini"),
        "; tuning kept apart\nserver_idle_timeout = 300\npkt_buf = 8192\n",
    )
    .expect("write include");
    std::fs::write(
        dir.path().join("userlist.txt"),
        format!("\"bob@{tenant}\" \"bob-pw\"\n"),
    )
    .expect("write userlist");
    Files {
        _dir: dir,
        toml,
        ini,
        port,
    }
}

fn pgtenant() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pgtenant"))
}

#[test]
fn config_convert_prints_toml_that_loads() {
    let files = write_files("ini_convert");
    let out = pgtenant()
        .args(["config", "convert"])
        .arg(&files.ini)
        .env_remove("PGTENANT_CONFIG")
        .output()
        .expect("run pgtenant");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let ini = files.ini.display();
    for warning in [
        format!("warning: {ini}:14: key \"logfile\": not yet supported"),
        format!("warning: {ini}:15: key \"pidfile\": not yet supported"),
        "pgbouncer-local.ini:3: key \"pkt_buf\": ignored: pgtenant sizes buffers itself"
            .to_string(),
    ] {
        assert!(stderr.contains(&warning), "no {warning:?} in:\n{stderr}");
    }
    assert!(
        stdout.contains(&format!("{ini}:19 listen_port\naddr = ")),
        "{stdout}"
    );

    let config = Config::parse(&stdout, "converted").unwrap_or_else(|e| panic!("{e}\n{stdout}"));
    let b = backend();
    assert_eq!(config.listen.addr.port(), files.port);
    assert_eq!(config.backend.host, b.host);
    assert_eq!(config.backend.port, b.port);
    assert_eq!(config.backend.databases, ["crm_db", "product_db"]);
    assert_eq!(config.pool.pool_mode, PoolMode::Session);
    assert_eq!(
        config.pool.database_pool_modes["crm_db"],
        PoolMode::Transaction
    );
    assert_eq!(config.pool.default_pool_size, 1);
    assert_eq!(config.pool.max_client_conn, 100);
    assert_eq!(config.pool.server_idle_timeout, 300.0);
    assert_eq!(config.auth.method, AuthMethod::ScramSha256);
    assert_eq!(
        PathBuf::from(&config.auth.auth_file),
        std::path::absolute(files.ini.with_file_name("userlist.txt")).unwrap()
    );
    // The warnings are in the file too, as comments.
    assert!(stdout.contains("key \"pkt_buf\": ignored"), "{stdout}");

    // A broken ini is an error naming file, line and key.
    std::fs::write(&files.ini, "[pgbouncer]\nmax_client_conn = many\n").unwrap();
    let out = pgtenant()
        .args(["config", "convert"])
        .arg(&files.ini)
        .output()
        .expect("run pgtenant");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{ini}:2: key \"max_client_conn\": invalid value \"many\": expected a whole number"
        )),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_ini_is_served() {
    let files = write_files("ini_serve");
    let loaded = pgbouncer_ini::load(&files.sources()).expect("config loads");
    let config = loaded.config;
    tenant(&config, "ini_serve").await;
    let proxy = start_proxy(config).await;
    // listen_port from the ini.
    assert_eq!(proxy.local_addr().port(), files.port);

    // bob exists only in the ini's auth_file.
    let bob = connect(&proxy, "bob@ini_serve", "bob-pw", "")
        .await
        .unwrap();
    assert_eq!(
        one_value(&bob, "SHOW search_path").await,
        "tenant_ini_serve, commons, public"
    );
    let err = connect(&proxy, "bob@ini_serve", "wrong", "")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "28P01");

    // crm_db: pool_mode=transaction with default_pool_size = 1, both from
    // the ini: two connected clients take turns on one server connection
    // (in session mode the second would wait for the first to leave).
    let alice = connect(&proxy, "alice@ini_serve", "alice-pw", "")
        .await
        .unwrap();
    let pid_bob = one_value(&bob, "SELECT pg_backend_pid()").await;
    let pid_alice = one_value(&alice, "SELECT pg_backend_pid()").await;
    assert_eq!(pid_bob, pid_alice, "one server connection serves both");
    assert_eq!(one_value(&bob, "SELECT 1").await, "1");
    proxy.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn reload_reads_the_ini_again_and_keeps_the_old_on_error() {
    let files = write_files("ini_reload");
    let config = pgbouncer_ini::load(&files.sources())
        .expect("config loads")
        .config;
    tenant(&config, "ini_reload").await;
    let proxy = start_proxy(config).await;
    let sources = files.sources();
    proxy.set_config_source(Arc::new(move || {
        pgbouncer_ini::load(&sources)
            .map(|loaded| loaded.config)
            .map_err(|e| e.to_string())
    }));
    let text = std::fs::read_to_string(&files.ini).unwrap();
    assert!(text.contains("\nmax_client_conn = 100\n"));

    std::fs::write(
        &files.ini,
        text.replace("max_client_conn = 100", "max_client_conn = 7"),
    )
    .unwrap();
    proxy.reload().expect("reload");
    assert_eq!(proxy.context().config().pool.max_client_conn, 7);

    std::fs::write(
        &files.ini,
        text.replace("max_client_conn = 100", "max_client_conn = lots"),
    )
    .unwrap();
    let err = proxy.reload().unwrap_err().to_string();
    assert!(
        err.contains(&format!(
            "{}:28: key \"max_client_conn\": invalid value \"lots\"",
            files.ini.display()
        )),
        "{err}"
    );
    assert_eq!(
        proxy.context().config().pool.max_client_conn,
        7,
        "the old value stays"
    );
    let bob = connect(&proxy, "bob@ini_reload", "bob-pw", "")
        .await
        .unwrap();
    assert_eq!(one_value(&bob, "SELECT 1").await, "1");
    drop(bob);
    proxy.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn pgtenant_serve_with_pgbouncer_ini() {
    let files = write_files("ini_cli");
    let config = pgbouncer_ini::load(&files.sources())
        .expect("config loads")
        .config;
    tenant(&config, "ini_cli").await;
    let child = pgtenant()
        .arg("--config")
        .arg(&files.toml)
        .arg("serve")
        .arg("--pgbouncer-ini")
        .arg(&files.ini)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pgtenant serve");
    let conninfo = format!(
        "host=127.0.0.1 port={} user=bob@ini_cli password=bob-pw dbname=crm_db",
        files.port
    );
    let up = eventually(Duration::from_secs(60), || {
        let conninfo = conninfo.clone();
        async move { tokio_postgres::connect(&conninfo, NoTls).await.is_ok() }
    })
    .await;
    let stop = || {
        // SIGTERM to the child's own pid: the proxy shuts down and exits.
        let _ = Command::new("kill").arg(child.id().to_string()).status();
    };
    if !up {
        stop();
        let out = child.wait_with_output().expect("wait");
        panic!(
            "pgtenant serve never accepted bob: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (client, connection) = tokio_postgres::connect(&conninfo, NoTls)
        .await
        .expect("bob connects");
    let connection = tokio::spawn(connection);
    assert_eq!(
        one_value(&client, "SELECT current_setting('app.current_tenant')").await,
        "ini_cli"
    );
    // Leave properly before the blocking wait below, so nothing holds up shutdown.
    drop(client);
    let _ = connection.await;
    stop();
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // serve logs each key it did not carry over, with its file and line.
    for at in ["pgbouncer.ini:14", "pgbouncer-local.ini:3"] {
        assert!(stderr.contains(at), "no {at} in:\n{stderr}");
    }
    assert!(stderr.contains("pgtenant sizes buffers itself"), "{stderr}");
}

/// PgBouncer itself (Debian's 1.18, which `.ci/run` installs) starts from
/// the very same files.
#[tokio::test]
async fn pgbouncer_accepts_the_same_files() {
    let files = write_files("ini_bouncer");
    let dir = files.ini.parent().expect("dir").to_path_buf();
    let as_root = std::fs::read_to_string("/proc/self/status")
        .expect("status")
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    let mut cmd = if as_root {
        // PgBouncer refuses to run as root.
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status()
            .expect("chown");
        assert!(status.success());
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", "pgbouncer"]);
        c
    } else {
        Command::new("pgbouncer")
    };
    // PgBouncer takes a relative %include from its working directory.
    let child = cmd
        .arg(&files.ini)
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start pgbouncer");
    let log = dir.join("pgbouncer.log");
    let listening = format!("listening on 127.0.0.1:{}", files.port);
    let up = eventually(Duration::from_secs(30), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let done = text.contains(&listening) || text.contains("FATAL");
        async move { done }
    })
    .await;
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait_with_output();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        up && text.contains(&listening),
        "PgBouncer refused the file:\n{text}"
    );
}
