//! The admin console: column lists compared with a real PgBouncer 1.18
//! started in the same run, values that must be right, the control
//! commands (PAUSE/RESUME, RECONNECT, DISABLE/ENABLE, KILL, SET, RELOAD,
//! SUSPEND TENANT), who may do what, and Debian's
//! prometheus-pgbouncer-exporter reading pgtenant's console.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pgtenant::config::{Config, PoolMode};
use pgtenant::server::Proxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

const ADMIN_PW: &str = "admin-pw";

/// A proxy whose auth file has console users `admin` (SCRAM secret),
/// `stats` and `nobody` (plain), and whose console admits the first two.
async fn proxy_with(dir: &Path, mode: PoolMode) -> (Proxy, Config) {
    let userlist = dir.join("userlist.txt");
    let scram = postgres_protocol::password::scram_sha_256(ADMIN_PW.as_bytes());
    std::fs::write(
        &userlist,
        format!("\"admin\" \"{scram}\"\n\"stats\" \"stats-pw\"\n\"nobody\" \"nobody-pw\"\n"),
    )
    .unwrap();
    let mut config = common::config();
    config.auth.auth_file = userlist.display().to_string();
    config.admin.admin_users = vec!["admin".into()];
    config.admin.stats_users = vec!["stats".into()];
    config.pool.pool_mode = mode;
    (common::start_proxy(config.clone()).await, config)
}

async fn console_as(proxy: &Proxy, user: &str, pw: &str) -> Result<Client, tokio_postgres::Error> {
    let addr = proxy.local_addr();
    let (client, conn) = tokio_postgres::connect(
        &format!(
            "host={} port={} user={user} password={pw} dbname=pgbouncer",
            addr.ip(),
            addr.port()
        ),
        NoTls,
    )
    .await?;
    tokio::spawn(conn);
    Ok(client)
}

async fn console(proxy: &Proxy) -> Client {
    console_as(proxy, "admin", ADMIN_PW)
        .await
        .expect("admin logs in")
}

/// Column names and rows (as name → value maps) of a SHOW.
async fn show(client: &Client, sql: &str) -> (Vec<String>, Vec<Vec<(String, Option<String>)>>) {
    let mut columns = Vec::new();
    let mut rows = Vec::new();
    for m in client.simple_query(sql).await.expect(sql) {
        match m {
            SimpleQueryMessage::RowDescription(cols) => {
                columns = cols.iter().map(|c| c.name().to_string()).collect();
            }
            SimpleQueryMessage::Row(r) => rows.push(
                (0..r.len())
                    .map(|i| (columns[i].clone(), r.get(i).map(str::to_string)))
                    .collect(),
            ),
            _ => {}
        }
    }
    (columns, rows)
}

fn field<'a>(row: &'a [(String, Option<String>)], name: &str) -> &'a str {
    row.iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v.as_deref())
        .unwrap_or("")
}

/// The row of `sql` whose `key` column is `value` (and `key2` is `value2`).
async fn row_where(
    client: &Client,
    sql: &str,
    key: &str,
    value: &str,
) -> Option<Vec<(String, Option<String>)>> {
    show(client, sql)
        .await
        .1
        .into_iter()
        .find(|r| field(r, key) == value)
}

async fn pool_row(client: &Client, role: &str) -> Vec<(String, Option<String>)> {
    row_where(client, "SHOW POOLS", "user", role)
        .await
        .unwrap_or_else(|| panic!("a pool row for {role}"))
}

/// The server's message of a failed call.
fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| e.to_string())
}

fn tmpdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("pgtenant-admin-")
        .tempdir()
        .unwrap()
}

// ---------------------------------------------------------------- PgBouncer

struct Bouncer {
    child: Child,
    pidfile: PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.pidfile) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Starts Debian's PgBouncer with an admin user, as `postgres` when root
/// (it refuses to run as root). `None` when it is not installed.
async fn start_pgbouncer() -> Option<Bouncer> {
    let binary = Path::new("/usr/sbin/pgbouncer");
    if !binary.exists() {
        return None;
    }
    let b = common::backend();
    let dir = tmpdir();
    let port = common::free_port();
    let d = dir.path();
    std::fs::write(d.join("userlist.txt"), "\"admin\" \"admin-pw\"\n").unwrap();
    std::fs::write(
        d.join("pgbouncer.ini"),
        format!(
            "[databases]\ncrm_db = host={} port={} dbname=crm_db\n\n[pgbouncer]\n\
             listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = plain\nauth_file = {}\nadmin_users = admin\n\
             logfile = {}\npidfile = {}\n",
            b.host,
            b.port,
            d.join("userlist.txt").display(),
            d.join("pgbouncer.log").display(),
            d.join("pgbouncer.pid").display(),
        ),
    )
    .unwrap();
    let mut cmd = if running_as_root() {
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(d)
            .status()
            .unwrap();
        assert!(status.success());
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(binary);
        c
    } else {
        Command::new(binary)
    };
    let child = cmd
        .arg(d.join("pgbouncer.ini"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("pgbouncer starts");
    let bouncer = Bouncer {
        child,
        pidfile: d.join("pgbouncer.pid"),
        port,
        _dir: dir,
    };
    let up = common::eventually(Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    assert!(up, "pgbouncer listens on {port}");
    Some(bouncer)
}

#[tokio::test]
async fn show_columns_match_pgbouncer_1_18() {
    let dir = tmpdir();
    let (proxy, _) = proxy_with(dir.path(), PoolMode::Session).await;
    let ours = console(&proxy).await;
    let Some(bouncer) = start_pgbouncer().await else {
        println!("SKIPPED column comparison: /usr/sbin/pgbouncer is not installed");
        return;
    };
    let (theirs, conn) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=admin password=admin-pw dbname=pgbouncer",
            bouncer.port
        ),
        NoTls,
    )
    .await
    .expect("pgbouncer console");
    tokio::spawn(conn);
    let (version, _) = show(&theirs, "SHOW VERSION").await;
    assert_eq!(version, ["version"]);
    for what in [
        "POOLS",
        "STATS",
        "STATS_TOTALS",
        "STATS_AVERAGES",
        "CLIENTS",
        "SERVERS",
        "DATABASES",
        "USERS",
        "CONFIG",
        "LISTS",
        "VERSION",
        "STATE",
    ] {
        let sql = format!("SHOW {what}");
        let (mine, _) = show(&ours, &sql).await;
        let theirs = match theirs.simple_query(&sql).await {
            Ok(messages) => messages
                .iter()
                .find_map(|m| match m {
                    SimpleQueryMessage::RowDescription(cols) => Some(
                        cols.iter()
                            .map(|c| c.name().to_string())
                            .collect::<Vec<_>>(),
                    ),
                    _ => None,
                })
                .unwrap_or_default(),
            Err(e) => {
                println!(
                    "PgBouncer 1.18 has no {sql} ({}); pgtenant gives {mine:?}",
                    message(&e)
                );
                continue;
            }
        };
        // One documented extra: total_requests, read by older exporters.
        let extra: &[&str] = if what == "STATS" {
            &["total_requests"]
        } else {
            &[]
        };
        assert_eq!(mine[..theirs.len()], theirs[..], "{sql}: columns differ");
        assert_eq!(&mine[theirs.len()..], extra, "{sql}: extra columns");
        println!("{sql}: {} columns match PgBouncer 1.18", theirs.len());
    }
}

#[tokio::test]
async fn pools_stats_clients_and_tenants_show_the_truth() {
    let dir = tmpdir();
    let (proxy, config) = proxy_with(dir.path(), PoolMode::Session).await;
    common::tenant(&config, "adm_vals").await;
    let admin = console(&proxy).await;
    let one = common::connect(&proxy, "alice@adm_vals", "alice-pw", "")
        .await
        .unwrap();
    for _ in 0..5 {
        one.simple_query("SELECT 1").await.unwrap();
    }
    let pool = pool_row(&admin, "tenant_adm_vals_rw").await;
    assert_eq!(field(&pool, "database"), "crm_db");
    assert_eq!(field(&pool, "cl_active"), "1");
    assert_eq!(field(&pool, "cl_waiting"), "0");
    assert_eq!(field(&pool, "sv_active"), "1");
    assert_eq!(field(&pool, "pool_mode"), "session");

    let totals = row_where(&admin, "SHOW STATS_TOTALS", "database", "crm_db")
        .await
        .expect("crm_db totals");
    let queries: u64 = field(&totals, "query_count").parse().unwrap();
    assert!(queries >= 5, "{totals:?}");
    let stats = row_where(&admin, "SHOW STATS", "database", "crm_db")
        .await
        .unwrap();
    assert_eq!(field(&stats, "total_query_count"), queries.to_string());
    assert_eq!(field(&stats, "total_requests"), queries.to_string());

    let client = row_where(&admin, "SHOW CLIENTS", "user", "tenant_adm_vals_rw")
        .await
        .expect("the tenant client is listed");
    assert_eq!(field(&client, "database"), "crm_db");
    assert_eq!(field(&client, "state"), "active");
    assert_eq!(field(&client, "addr"), "127.0.0.1");
    let server = row_where(&admin, "SHOW SERVERS", "user", "tenant_adm_vals_rw")
        .await
        .expect("its server connection is listed");
    assert_eq!(field(&server, "state"), "active");

    let tenant = row_where(&admin, "SHOW TENANTS", "tenant", "adm_vals")
        .await
        .unwrap();
    assert_eq!(field(&tenant, "status"), "active");
    assert_eq!(field(&tenant, "tier"), "shared");
    assert_eq!(field(&tenant, "clients"), "1");
    assert_eq!(field(&tenant, "servers"), "1");

    // One server connection per pool: a second client waits for the first.
    admin
        .simple_query("SET default_pool_size = 1")
        .await
        .unwrap();
    let p = proxy.local_addr();
    let second = tokio::spawn(async move {
        let (c, conn) = tokio_postgres::connect(
            &format!(
                "host={} port={} user=alice@adm_vals password=alice-pw dbname=crm_db",
                p.ip(),
                p.port()
            ),
            NoTls,
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        c.simple_query("SELECT 1").await.unwrap();
    });
    let waits = common::eventually(Duration::from_secs(10), || async {
        field(&pool_row(&admin, "tenant_adm_vals_rw").await, "cl_waiting") == "1"
    })
    .await;
    assert!(waits, "SHOW POOLS counts the waiting client");
    assert!(row_where(&admin, "SHOW CLIENTS", "state", "waiting")
        .await
        .is_some());
    drop(one);
    second.await.unwrap();
}

#[tokio::test]
async fn pause_holds_queries_until_resume() {
    let dir = tmpdir();
    let (proxy, config) = proxy_with(dir.path(), PoolMode::Transaction).await;
    common::tenant(&config, "adm_pause").await;
    let admin = console(&proxy).await;
    let client = common::connect(&proxy, "alice@adm_pause", "alice-pw", "")
        .await
        .unwrap();
    client.simple_query("SELECT 1").await.unwrap();
    admin.simple_query("PAUSE crm_db").await.unwrap();
    let (_, servers) = show(&admin, "SHOW SERVERS").await;
    assert!(
        servers.iter().all(|s| field(s, "database") != "crm_db"),
        "PAUSE closed the idle server connections: {servers:?}"
    );
    let db = row_where(&admin, "SHOW DATABASES", "name", "crm_db")
        .await
        .unwrap();
    assert_eq!(field(&db, "paused"), "1");
    let query = tokio::spawn(async move { common::one_value(&client, "SELECT 42").await });
    let waiting = common::eventually(Duration::from_secs(10), || async {
        row_where(&admin, "SHOW CLIENTS", "user", "tenant_adm_pause_rw")
            .await
            .is_some_and(|c| field(&c, "state") == "waiting")
    })
    .await;
    assert!(waiting, "the client waits while crm_db is paused");
    assert!(!query.is_finished());
    admin.simple_query("RESUME crm_db").await.unwrap();
    assert_eq!(query.await.unwrap(), "42");
    let err = admin.simple_query("RESUME crm_db").await.unwrap_err();
    assert!(message(&err).contains("not paused"), "{err}");
    let err = admin.simple_query("PAUSE nosuch").await.unwrap_err();
    assert_eq!(common::sqlstate(&err), "3D000");
}

#[tokio::test]
async fn reconnect_gives_a_new_server() {
    let dir = tmpdir();
    let (proxy, config) = proxy_with(dir.path(), PoolMode::Transaction).await;
    common::tenant(&config, "adm_reconn").await;
    let admin = console(&proxy).await;
    let client = common::connect(&proxy, "alice@adm_reconn", "alice-pw", "")
        .await
        .unwrap();
    let before = common::one_value(&client, "SELECT pg_backend_pid()").await;
    assert_eq!(
        before,
        common::one_value(&client, "SELECT pg_backend_pid()").await
    );
    admin.simple_query("RECONNECT").await.unwrap();
    let after = common::one_value(&client, "SELECT pg_backend_pid()").await;
    assert_ne!(before, after, "RECONNECT replaced the server connection");
}

#[tokio::test]
async fn disable_enable_and_kill() {
    let dir = tmpdir();
    let (proxy, config) = proxy_with(dir.path(), PoolMode::Session).await;
    common::tenant(&config, "adm_kill").await;
    let admin = console(&proxy).await;
    admin.simple_query("DISABLE crm_db").await.unwrap();
    let err = common::connect(&proxy, "alice@adm_kill", "alice-pw", "")
        .await
        .unwrap_err();
    assert_eq!(common::sqlstate(&err), "57P03");
    assert!(message(&err).contains("crm_db"), "{err}");
    admin.simple_query("ENABLE crm_db").await.unwrap();
    let client = common::connect(&proxy, "alice@adm_kill", "alice-pw", "")
        .await
        .unwrap();
    client.simple_query("SELECT 1").await.unwrap();
    admin.simple_query("KILL crm_db").await.unwrap();
    assert!(
        client.simple_query("SELECT 1").await.is_err(),
        "KILL dropped the client"
    );
    let gone = common::eventually(Duration::from_secs(10), || async {
        row_where(&admin, "SHOW CLIENTS", "user", "tenant_adm_kill_rw")
            .await
            .is_none()
            && row_where(&admin, "SHOW SERVERS", "user", "tenant_adm_kill_rw")
                .await
                .is_none()
    })
    .await;
    assert!(gone, "KILL closed its clients and server connections");
    let err = admin.simple_query("KILL").await.unwrap_err();
    assert!(message(&err).contains("database is required"), "{err}");
}

#[tokio::test]
async fn set_reload_and_errors() {
    let dir = tmpdir();
    let (proxy, _) = proxy_with(dir.path(), PoolMode::Session).await;
    let admin = console(&proxy).await;
    admin
        .simple_query("set default_pool_size = 3;")
        .await
        .unwrap();
    let row = row_where(&admin, "SHOW CONFIG", "key", "default_pool_size")
        .await
        .unwrap();
    assert_eq!(field(&row, "value"), "3");
    assert_eq!(field(&row, "default"), "20");
    assert_eq!(proxy.context().config().pool.default_pool_size, 3);
    let err = admin.simple_query("SET no_such_key = 1").await.unwrap_err();
    assert!(message(&err).contains("no_such_key"), "{err}");
    let err = admin
        .simple_query("SET default_pool_size = 0")
        .await
        .unwrap_err();
    assert_eq!(common::sqlstate(&err), "22023");
    admin.simple_query("RELOAD").await.unwrap();
    let err = admin.simple_query("SHOW NOTHING").await.unwrap_err();
    assert_eq!(common::sqlstate(&err), "08P01");
    assert!(message(&err).contains("invalid command"), "{err}");
    let err = admin
        .simple_query("SHOW POOLS; SHOW STATS")
        .await
        .unwrap_err();
    assert!(message(&err).contains("one command"), "{err}");
    // Extended protocol is refused, and the session goes on.
    let err = admin.query("SHOW POOLS", &[]).await.unwrap_err();
    assert_eq!(common::sqlstate(&err), "0A000");
    let (cols, _) = show(&admin, "show version").await;
    assert_eq!(cols, ["version"]);
    // The alias database name reaches the console too.
    let p = proxy.local_addr();
    let (alias, conn) = tokio_postgres::connect(
        &format!(
            "host={} port={} user=admin password={ADMIN_PW} dbname=pgtenant",
            p.ip(),
            p.port()
        ),
        NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    assert_eq!(show(&alias, "SHOW STATE").await.0, ["key", "value"]);
}

#[tokio::test]
async fn suspend_and_resume_a_tenant() {
    let dir = tmpdir();
    let (proxy, config) = proxy_with(dir.path(), PoolMode::Session).await;
    common::tenant(&config, "adm_susp").await;
    let admin = console(&proxy).await;
    admin.simple_query("SUSPEND TENANT adm_susp").await.unwrap();
    let err = common::connect(&proxy, "alice@adm_susp", "alice-pw", "")
        .await
        .unwrap_err();
    assert_eq!(common::sqlstate(&err), "57P03");
    let row = row_where(&admin, "SHOW TENANTS", "tenant", "adm_susp")
        .await
        .unwrap();
    assert_eq!(field(&row, "status"), "suspended");
    admin.simple_query("RESUME TENANT adm_susp").await.unwrap();
    let client = common::connect(&proxy, "alice@adm_susp", "alice-pw", "")
        .await
        .unwrap();
    // NOW also closes the clients already connected.
    admin
        .simple_query("SUSPEND TENANT adm_susp NOW")
        .await
        .unwrap();
    let closed = common::eventually(std::time::Duration::from_secs(15), || async {
        client.is_closed()
    })
    .await;
    assert!(closed, "SUSPEND TENANT ... NOW left the client connected");
    admin.simple_query("RESUME TENANT adm_susp").await.unwrap();
    let err = admin
        .simple_query("SUSPEND TENANT adm_nosuch")
        .await
        .unwrap_err();
    assert_eq!(common::sqlstate(&err), "3D000");
}

#[tokio::test]
async fn who_may_do_what() {
    let dir = tmpdir();
    let (proxy, _) = proxy_with(dir.path(), PoolMode::Session).await;
    let stats = console_as(&proxy, "stats", "stats-pw").await.unwrap();
    show(&stats, "SHOW POOLS").await;
    let err = stats.simple_query("PAUSE").await.unwrap_err();
    assert_eq!(common::sqlstate(&err), "42501");
    let err = stats.simple_query("SHUTDOWN").await.unwrap_err();
    assert_eq!(common::sqlstate(&err), "42501");
    let err = console_as(&proxy, "nobody", "nobody-pw").await.unwrap_err();
    assert_eq!(common::sqlstate(&err), "28000");
    let err = console_as(&proxy, "admin", "wrong").await.unwrap_err();
    assert_eq!(common::sqlstate(&err), "28P01");
    let err = console_as(&proxy, "ghost", "x").await.unwrap_err();
    assert_eq!(common::sqlstate(&err), "28P01");
    // A tenant user is not a console user.
    let err = console_as(&proxy, "alice@acme", "alice-pw")
        .await
        .unwrap_err();
    assert_eq!(common::sqlstate(&err), "28P01");
}

#[tokio::test]
async fn shutdown_stops_the_proxy() {
    let dir = tmpdir();
    let (proxy, _) = proxy_with(dir.path(), PoolMode::Session).await;
    let admin = console(&proxy).await;
    let _ = admin.simple_query("SHUTDOWN").await;
    assert!(proxy.shutdown_token().is_cancelled());
}

// ------------------------------------------------------------------ exporter

/// GET `path` from 127.0.0.1:`port`; the body, or `None` if not answered.
async fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let req = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    out.starts_with("HTTP/1.0 200").then_some(out)
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn prometheus_pgbouncer_exporter_reads_the_console() {
    let exporter = Path::new("/usr/bin/prometheus-pgbouncer-exporter");
    if !exporter.exists() {
        println!("SKIPPED: prometheus-pgbouncer-exporter is not installed");
        return;
    }
    let dir = tmpdir();
    let (proxy, config) = proxy_with(dir.path(), PoolMode::Session).await;
    common::tenant(&config, "adm_export").await;
    let client = common::connect(&proxy, "alice@adm_export", "alice-pw", "")
        .await
        .unwrap();
    for _ in 0..3 {
        client.simple_query("SELECT 1").await.unwrap();
    }
    let port = common::free_port();
    let child = Command::new(exporter)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--pgbouncer-host", "127.0.0.1"])
        .args(["--pgbouncer-port", &proxy.local_addr().port().to_string()])
        .args(["--pgbouncer-user", "admin"])
        .env("PGPASSWORD", ADMIN_PW)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the exporter starts");
    let _guard = Killed(child);
    let mut metrics = None;
    for _ in 0..300 {
        metrics = http_get(port, "/metrics").await;
        if metrics.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(metrics.is_some(), "the exporter serves /metrics");
    let metrics = metrics.unwrap_or_default();
    for wanted in [
        "pgbouncer_active_clients{database=\"crm_db\",user=\"tenant_adm_export_rw\"} 1.0",
        "pgbouncer_waiting_clients{database=\"crm_db\",user=\"tenant_adm_export_rw\"}",
        "pgbouncer_requests_total{database=\"crm_db\"}",
        "pgbouncer_received_bytes_total{database=\"crm_db\"}",
        "pgbouncer_pool_size{database=\"crm_db\"}",
        "pgbouncer_pools ",
    ] {
        assert!(
            metrics.contains(wanted),
            "{wanted} missing from:\n{metrics}"
        );
    }
    println!(
        "exporter metrics for the tenant pool:\n{}",
        metrics
            .lines()
            .filter(|l| l.contains("crm_db") && !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
