//! Passthrough mode: a `pgbouncer.ini` + `userlist.txt` served as PgBouncer
//! serves them, with no tenant anywhere. Plain PostgreSQL roles log in to
//! `crm_db` through the proxy as themselves, authenticated against the
//! userlist (plain password, md5 hash, or the SCRAM verifier copied from
//! `pg_authid`, passed through to the server), in-process and through
//! `pgtenant serve --pgbouncer-ini`; the admin console and `/metrics` show
//! the (database, user) pools. Each test has its own roles and ports.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use pgtenant::pgbouncer_ini::{self, Sources};
use pgtenant::server::Proxy;
use tokio_postgres::{NoTls, SimpleQueryMessage};

/// A port nobody listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Creates login role `role` with `password` (stored as the cluster's
/// `password_encryption` says unless `md5`) and a table `<role>_items` it may use.
async fn app_role(role: &str, password: &str, md5: bool) {
    // Grants on one database or schema at once from parallel tests would
    // update the same catalog row concurrently.
    static CATALOG: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _one_at_a_time = CATALOG.lock().await;
    let admin = admin("crm_db").await;
    let encryption = if md5 { "md5" } else { "scram-sha-256" };
    admin
        .batch_execute(&format!(
            "DO $$ BEGIN CREATE ROLE {role} LOGIN; \
               EXCEPTION WHEN duplicate_object THEN NULL; END $$;\n\
             SET password_encryption = '{encryption}';\n\
             ALTER ROLE {role} PASSWORD '{password}';\n\
             GRANT CONNECT ON DATABASE crm_db TO {role};\n\
             GRANT USAGE ON SCHEMA public TO {role};\n\
             DROP TABLE IF EXISTS public.{role}_items;\n\
             CREATE TABLE public.{role}_items (id int PRIMARY KEY, name text);\n\
             INSERT INTO public.{role}_items VALUES (1, 'one');\n\
             GRANT SELECT, INSERT ON public.{role}_items TO {role};"
        ))
        .await
        .expect("create the application role");
}

/// The files of one test.
struct Files {
    dir: tempfile::TempDir,
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

/// Writes a pgbouncer.ini (crm_db in transaction pooling, `app_alias`
/// standing for crm_db, one server connection per pool), its userlist and a
/// TOML that says nothing about tenants or the registry.
fn write_files(auth_type: &str, userlist: &str, http: &str) -> Files {
    let b = backend();
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let toml = dir.path().join("pgtenant.toml");
    std::fs::write(
        &toml,
        format!("[http]\nlisten_addr = \"{http}\"\n[pool]\nquery_wait_timeout = 10\n"),
    )
    .expect("write toml");
    let ini = dir.path().join("pgbouncer.ini");
    std::fs::write(
        &ini,
        format!(
            "[databases]\n\
             crm_db = host={host} port={pg} dbname=crm_db pool_mode=transaction\n\
             app_alias = host={host} port={pg} dbname=crm_db\n\
             \n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = {auth_type}\n\
             auth_file = userlist.txt\n\
             admin_users = ptadmin\n\
             pool_mode = session\n\
             default_pool_size = 1\n",
            host = b.host,
            pg = b.port,
        ),
    )
    .expect("write ini");
    std::fs::write(
        dir.path().join("userlist.txt"),
        format!("{userlist}\"ptadmin\" \"admin-pw\"\n"),
    )
    .expect("write userlist");
    Files {
        dir,
        toml,
        ini,
        port,
    }
}

/// Starts the proxy for `files` in-process.
async fn serve(files: &Files) -> Proxy {
    let loaded = pgbouncer_ini::load(&files.sources()).expect("config loads");
    assert!(loaded.config.tenants.passthrough(), "an ini is passthrough");
    start_proxy(loaded.config).await
}

/// Connects to `dbname` through the proxy.
async fn connect_db(
    proxy: &Proxy,
    user: &str,
    password: &str,
    dbname: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let addr = proxy.local_addr();
    let (client, connection) = tokio_postgres::connect(
        &format!(
            "host={} port={} user={user} password={password} dbname={dbname}",
            addr.ip(),
            addr.port()
        ),
        NoTls,
    )
    .await?;
    tokio::spawn(connection);
    Ok(client)
}

/// The rows of a console SHOW as (column, value) pairs.
async fn show(client: &tokio_postgres::Client, sql: &str) -> Vec<Vec<(String, String)>> {
    let mut rows = Vec::new();
    for m in client.simple_query(sql).await.expect(sql) {
        if let SimpleQueryMessage::Row(r) = m {
            let row = (0..r.len())
                .map(|i| {
                    let name = r.columns()[i].name().to_string();
                    (name, r.get(i).unwrap_or("").to_string())
                })
                .collect();
            rows.push(row);
        }
    }
    rows
}

/// A GET over a fresh connection: (status, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    common::http_get(addr, path).await
}

/// psql through the proxy: the output of one query.
fn psql(port: u16, user: &str, password: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args(["-X", "-A", "-t", "-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-U", user, "-d", "crm_db", "-c", sql])
        .env("PGPASSWORD", password)
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

// psql and pgbench block a thread while the proxy serves them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_password_in_the_userlist() {
    app_role("pt_plain", "app-pw", false).await;
    let files = write_files("scram-sha-256", "\"pt_plain\" \"app-pw\"\n", "127.0.0.1:0");
    let proxy = serve(&files).await;
    assert_eq!(proxy.local_addr().port(), files.port);

    // No tenant anywhere: the role's own login, search_path and table.
    let a = connect_db(&proxy, "pt_plain", "app-pw", "crm_db")
        .await
        .unwrap();
    assert_eq!(one_value(&a, "SELECT current_user").await, "pt_plain");
    assert_eq!(one_value(&a, "SHOW search_path").await, "\"$user\", public");
    assert_eq!(
        one_value(&a, "SELECT name FROM pt_plain_items WHERE id = 1").await,
        "one"
    );
    // Transaction pooling with one server connection: both clients share it.
    let b = connect_db(&proxy, "pt_plain", "app-pw", "crm_db")
        .await
        .unwrap();
    let pid_a = one_value(&a, "SELECT pg_backend_pid()").await;
    let pid_b = one_value(&b, "SELECT pg_backend_pid()").await;
    assert_eq!(pid_a, pid_b, "one server connection serves both");
    b.batch_execute("INSERT INTO pt_plain_items VALUES (2, 'two')")
        .await
        .unwrap();
    assert_eq!(
        one_value(&a, "SELECT count(*) FROM pt_plain_items").await,
        "2"
    );

    // dbname= in [databases]: app_alias is crm_db on the server.
    let alias = connect_db(&proxy, "pt_plain", "app-pw", "app_alias")
        .await
        .unwrap();
    assert_eq!(
        one_value(&alias, "SELECT current_database()").await,
        "crm_db"
    );

    for (user, password, db, code) in [
        ("pt_plain", "wrong", "crm_db", "28P01"),
        ("pt_nobody", "app-pw", "crm_db", "28P01"),
        ("pt_plain", "app-pw", "postgres", "3D000"),
    ] {
        let err = connect_db(&proxy, user, password, db).await.unwrap_err();
        assert_eq!(sqlstate(&err), code, "{user}/{db}: {err}");
    }
    assert_eq!(
        psql(files.port, "pt_plain", "app-pw", "SELECT current_user"),
        "pt_plain"
    );

    // The console: the (crm_db, pt_plain) pool; tenant commands say why not.
    let console = connect_db(&proxy, "ptadmin", "admin-pw", "pgbouncer")
        .await
        .unwrap();
    let pools = show(&console, "SHOW POOLS").await;
    let has_pool = |db: &str| {
        pools.iter().any(|row| {
            row.contains(&("database".into(), db.into()))
                && row.contains(&("user".into(), "pt_plain".into()))
        })
    };
    assert!(has_pool("crm_db") && has_pool("app_alias"), "{pools:?}");
    let clients = show(&console, "SHOW CLIENTS").await;
    assert!(
        clients
            .iter()
            .any(|row| row.contains(&("user".into(), "pt_plain".into()))),
        "{clients:?}"
    );
    let err = console.simple_query("SHOW TENANTS").await.unwrap_err();
    assert_eq!(sqlstate(&err), "0A000");
    let message = err.as_db_error().map(|e| e.message()).unwrap_or("");
    assert!(message.contains("passthrough"), "{err:?}");

    // /metrics labels the pools by database and user; /readyz needs no registry.
    let http = proxy.http_addr().expect("http listener");
    let (status, body) = get(http, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        body.lines().any(|l| l.starts_with("pgtenant_")
            && l.contains("database=\"crm_db\"")
            && l.contains("user=\"pt_plain\"")),
        "{body}"
    );
    assert!(!body.contains("tenant=\""), "{body}");
    assert_eq!(get(http, "/readyz").await.0, 200);
    drop((a, b, alias, console));
    proxy.shutdown(Duration::from_secs(5)).await;
}

// psql and pgbench block a thread while the proxy serves them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_verifier_is_passed_through_and_pgbench_runs() {
    app_role("pt_scram", "scram-pw", false).await;
    let admin = admin("crm_db").await;
    let verifier = admin
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'pt_scram'",
            &[],
        )
        .await
        .expect("read the verifier")
        .get::<_, String>(0);
    assert!(verifier.starts_with("SCRAM-SHA-256$"), "{verifier}");
    // pgbench's tables in a schema of their own, found through the role's search_path.
    admin
        .batch_execute(
            "DROP SCHEMA IF EXISTS pt_bench CASCADE; CREATE SCHEMA pt_bench;\n\
             GRANT USAGE ON SCHEMA pt_bench TO pt_scram;\n\
             ALTER ROLE pt_scram SET search_path = pt_bench, public;",
        )
        .await
        .unwrap();
    pgbench_init("pt_bench", "pt_scram");

    let files = write_files(
        "scram-sha-256",
        &format!("\"pt_scram\" \"{verifier}\"\n"),
        "",
    );
    let proxy = serve(&files).await;
    let a = connect_db(&proxy, "pt_scram", "scram-pw", "crm_db")
        .await
        .expect("SCRAM pass-through logs in");
    assert_eq!(one_value(&a, "SELECT current_user").await, "pt_scram");
    assert_eq!(
        one_value(&a, "SELECT name FROM public.pt_scram_items").await,
        "one"
    );
    let err = connect_db(&proxy, "pt_scram", "wrong", "crm_db")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "28P01");
    drop(a);

    let out = Command::new("pgbench")
        .args(["-n", "-h", "127.0.0.1", "-p", &files.port.to_string()])
        .args(["-U", "pt_scram", "-c", "4", "-j", "2", "-t", "50", "crm_db"])
        .env("PGPASSWORD", "scram-pw")
        .output()
        .expect("pgbench runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "pgbench: {}{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("number of transactions actually processed: 200/200"),
        "{text}"
    );
    let failed = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("number of failed transactions: "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or("0");
    assert_eq!(failed, "0", "{text}");
    proxy.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn md5_hash_in_the_userlist() {
    // An md5 hash answers only a server that asks md5: the role's password
    // is stored as md5 and pg_hba asks md5 of it (a line for this role only).
    let (role, password) = ("pt_md5", "md5-pw");
    app_role(role, password, true).await;
    let admin = admin("crm_db").await;
    let hba = one_value(&admin, "SHOW hba_file").await;
    let Ok(text) = std::fs::read_to_string(&hba) else {
        eprintln!("skipped: cannot read {hba} (a server not started by the harness)");
        return;
    };
    let line = format!("host crm_db {role} 127.0.0.1/32 md5\n");
    if !text.contains(&line) {
        std::fs::write(&hba, format!("{line}{text}")).expect("write pg_hba.conf");
    }
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();

    let hash = {
        use md5::{Digest as _, Md5};
        let mut h = Md5::new();
        h.update(password.as_bytes());
        h.update(role.as_bytes());
        format!("md5{:x}", h.finalize())
    };
    let files = write_files("md5", &format!("\"{role}\" \"{hash}\"\n"), "");
    let proxy = serve(&files).await;
    // The server reads pg_hba.conf again in its own time.
    let logged_in = eventually(Duration::from_secs(30), || {
        let proxy = &proxy;
        async move {
            match connect_db(proxy, role, password, "crm_db").await {
                Ok(c) => c.simple_query("SELECT 1").await.is_ok(),
                Err(_) => false,
            }
        }
    })
    .await;
    assert!(logged_in, "the md5 hash logs in to the server");
    let c = connect_db(&proxy, role, password, "crm_db").await.unwrap();
    assert_eq!(one_value(&c, "SELECT current_user").await, role);
    let err = connect_db(&proxy, role, "wrong", "crm_db")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "28P01");
    drop(c);
    proxy.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn pgtenant_serve_pgbouncer_ini_without_a_registry() {
    app_role("pt_cli", "cli-pw", false).await;
    let files = write_files("scram-sha-256", "\"pt_cli\" \"cli-pw\"\n", "");
    // The TOML names no registry, admin role or tenant: none is needed.
    let child = Command::new(env!("CARGO_BIN_EXE_pgtenant"))
        .arg("--config")
        .arg(&files.toml)
        .arg("serve")
        .arg("--pgbouncer-ini")
        .arg(&files.ini)
        .current_dir(files.dir.path())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pgtenant serve");
    let conninfo = format!(
        "host=127.0.0.1 port={} user=pt_cli password=cli-pw dbname=crm_db",
        files.port
    );
    let up = eventually(Duration::from_secs(60), || {
        let conninfo = conninfo.clone();
        async move { tokio_postgres::connect(&conninfo, NoTls).await.is_ok() }
    })
    .await;
    let stop = || {
        let _ = Command::new("kill").arg(child.id().to_string()).status();
    };
    if !up {
        stop();
        let out = child.wait_with_output().expect("wait");
        panic!(
            "pgtenant serve never accepted pt_cli: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (client, connection) = tokio_postgres::connect(&conninfo, NoTls)
        .await
        .expect("pt_cli connects");
    let connection = tokio::spawn(connection);
    assert_eq!(one_value(&client, "SELECT current_user").await, "pt_cli");
    let psql_user = psql(files.port, "pt_cli", "cli-pw", "SELECT current_user");
    assert_eq!(psql_user, "pt_cli");
    drop(client);
    let _ = connection.await;
    stop();
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("mode=\"passthrough\""), "{stderr}");
    assert!(!stderr.contains("registry"), "{stderr}");
}
