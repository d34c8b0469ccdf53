//! Test harness: one throwaway PostgreSQL per test binary (initdb in a temp
//! dir, random port, SCRAM in pg_hba, removed when the binary exits), or the
//! server named by `PGTENANT_TEST_PG` ("host:port:user:password"); an
//! in-process proxy per test on 127.0.0.1:0; and unique tenants per test so
//! tests run in parallel without seeing each other.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use pgtenant::config::Config;
use pgtenant::provision::{self, ClusterOptions, LocalCluster};
use pgtenant::server::Proxy;
use pgtenant::tenant::{AccessLevel, TenantId};
use tokio_postgres::NoTls;

/// The PostgreSQL every test of this binary uses.
pub struct Backend {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    _cluster: Option<LocalCluster>,
}

static BACKEND: OnceLock<Backend> = OnceLock::new();

/// Starts (once) and returns the test PostgreSQL, with `pgtenant init` applied.
pub fn backend() -> &'static Backend {
    BACKEND.get_or_init(|| {
        let backend = match std::env::var("PGTENANT_TEST_PG") {
            Ok(spec) => {
                let parts: Vec<&str> = spec.splitn(4, ':').collect();
                assert_eq!(
                    parts.len(),
                    4,
                    "PGTENANT_TEST_PG must be host:port:user:password"
                );
                Backend {
                    host: parts[0].into(),
                    port: parts[1].parse().expect("port"),
                    user: parts[2].into(),
                    password: parts[3].into(),
                    _cluster: None,
                }
            }
            Err(_) => {
                let dir = tempfile::Builder::new()
                    .prefix("pgtenant-test-")
                    .tempdir()
                    .expect("temp dir")
                    .keep();
                let cluster = LocalCluster::start(ClusterOptions {
                    dir,
                    port: 0,
                    superuser: "marvin".into(),
                    password: "marvin-test".into(),
                    remove_on_exit: true,
                })
                .expect("start a throwaway PostgreSQL");
                Backend {
                    host: cluster.host.clone(),
                    port: cluster.port,
                    user: cluster.superuser.clone(),
                    password: cluster.password.clone(),
                    _cluster: Some(cluster),
                }
            }
        };
        let config = base_config_for(&backend);
        // Tests call this from inside their own runtime, which cannot block:
        // run init on a thread of its own.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            rt.block_on(provision::init(&config))
                .expect("pgtenant init");
        })
        .join()
        .expect("init thread");
        backend
    })
}

fn base_config_for(b: &Backend) -> Config {
    let mut c = Config::parse("", "test").expect("defaults");
    c.listen.addr = "127.0.0.1:0".parse().expect("addr");
    // Every test proxy serves HTTP on a port of its own.
    c.http.listen_addr = "127.0.0.1:0".into();
    c.backend.host = b.host.clone();
    c.backend.port = b.port;
    c.backend.admin_user = b.user.clone();
    c.backend.admin_password = b.password.clone();
    c.backend.tenant_role_secret = "test-secret".into();
    c.provision.migrations_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("sql")
        .display()
        .to_string();
    c.pool.query_wait_timeout = 10.0;
    c
}

/// A config pointing at the test PostgreSQL, listening on a free port.
pub fn config() -> Config {
    base_config_for(backend())
}

/// Starts a proxy with `config`.
pub async fn start_proxy(config: Config) -> Proxy {
    Proxy::start(config).await.expect("proxy starts")
}

/// Creates an active tenant `id` with user `alice` / password `alice-pw` (rw)
/// and `reader` / `reader-pw` (ro).
pub async fn tenant(config: &Config, id: &str) -> TenantId {
    let id = TenantId::parse(id).expect("tenant id");
    provision::create_tenant(config, &id, id.as_str())
        .await
        .expect("create tenant");
    provision::add_user(config, &id, "alice", "alice-pw", AccessLevel::ReadWrite)
        .await
        .expect("add alice");
    provision::add_user(config, &id, "reader", "reader-pw", AccessLevel::ReadOnly)
        .await
        .expect("add reader");
    id
}

/// A connection string to the proxy.
pub fn conninfo(proxy: &Proxy, user: &str, password: &str, extra: &str) -> String {
    let addr = proxy.local_addr();
    format!(
        "host={} port={} user={user} password={password} dbname=crm_db {extra}",
        addr.ip(),
        addr.port()
    )
}

/// Connects with tokio-postgres through the proxy.
pub async fn connect(
    proxy: &Proxy,
    user: &str,
    password: &str,
    extra: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) =
        tokio_postgres::connect(&conninfo(proxy, user, password, extra), NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// A client connection's task: how the proxy closed the connection.
pub type Watched = tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>;

/// `alice` of `tenant` through the proxy, with her connection's task.
pub async fn watched(proxy: &Proxy, tenant: &str) -> (tokio_postgres::Client, Watched) {
    let info = conninfo(proxy, &format!("alice@{tenant}"), "alice-pw", "");
    let (client, connection) = tokio_postgres::connect(&info, NoTls)
        .await
        .expect("client connects");
    (client, tokio::spawn(connection))
}

/// Connects straight to PostgreSQL as the admin role.
pub async fn admin(dbname: &str) -> tokio_postgres::Client {
    let b = backend();
    connect_direct(&b.host, b.port, &b.user, &b.password, dbname).await
}

/// Connects straight to a PostgreSQL server (the harness's or another one
/// a test started), spawning the connection task.
pub async fn connect_direct(
    host: &str,
    port: u16,
    user: &str,
    password: &str,
    dbname: &str,
) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(
        &format!("host={host} port={port} user={user} password={password} dbname={dbname}"),
        NoTls,
    )
    .await
    .unwrap_or_else(|e| panic!("connect to {host}:{port}/{dbname} as {user}: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// The SQLSTATE of a failed call.
pub fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| format!("no code: {e}"))
}

/// Polls `check` every 20 ms until it is true or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The first column of the first row of a simple query, as text.
pub async fn one_value(client: &tokio_postgres::Client, sql: &str) -> String {
    let rows = client.simple_query(sql).await.expect(sql);
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("").to_string()),
            _ => None,
        })
        .expect("a row")
}

/// Creates pgbench's tables in the tenant's schema as the admin role and lets
/// the tenant's role use them.
pub fn pgbench_init(schema: &str, role: &str) {
    let b = backend();
    pgbench_init_on(&b.host, b.port, &b.user, &b.password, schema, role);
}

/// As [`pgbench_init`], on the PostgreSQL at `host:port` as `user`.
pub fn pgbench_init_on(
    host: &str,
    port: u16,
    user: &str,
    password: &str,
    schema: &str,
    role: &str,
) {
    let port = port.to_string();
    let out = std::process::Command::new("pgbench")
        .args([
            "-i", "-q", "-s", "1", "-h", host, "-p", &port, "-U", user, "crm_db",
        ])
        .env("PGPASSWORD", password)
        .env("PGOPTIONS", format!("-c search_path={schema}"))
        .output()
        .expect("pgbench runs");
    assert!(
        out.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let grant = format!("GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA {schema} TO {role}");
    let out = std::process::Command::new("psql")
        .args([
            "-X", "-q", "-h", host, "-p", &port, "-U", user, "-d", "crm_db", "-c", &grant,
        ])
        .env("PGPASSWORD", password)
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "grant: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What a pgbench run reported.
pub struct PgbenchRun {
    /// It exited 0.
    pub ok: bool,
    /// Transactions processed.
    pub processed: u64,
    /// Failed transactions.
    pub failed: u64,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error (connection errors, aborted clients).
    pub stderr: String,
}

/// Runs pgbench (database crm_db, password `alice-pw`) through the proxy
/// on `port` as `user`, without judging the outcome.
pub fn pgbench_run(port: u16, user: &str, args: &[&str]) -> PgbenchRun {
    let out = std::process::Command::new("pgbench")
        .args(["-n", "-h", "127.0.0.1", "-p", &port.to_string(), "-U", user])
        .args(args)
        .arg("crm_db")
        .env("PGPASSWORD", "alice-pw")
        .output()
        .expect("pgbench runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let number = |prefix: &str| {
        stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|rest| {
                rest.split(|c: char| !c.is_ascii_digit())
                    .find(|s| !s.is_empty())
            })
            .and_then(|n| n.parse().ok())
    };
    PgbenchRun {
        ok: out.status.success(),
        processed: number("number of transactions actually processed: ").unwrap_or(0),
        failed: number("number of failed transactions: ").unwrap_or(0),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        stdout,
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A TOML configuration for `pgtenant serve` on `port` against the test
/// PostgreSQL (HTTP listener off, so parallel tests never race for its
/// port): `listen_extra` goes into `[listen]`, `extra` after everything.
pub fn serve_toml(config: &Config, port: u16, listen_extra: &str, extra: &str) -> String {
    let b = &config.backend;
    format!(
        "[http]\nlisten_addr = \"\"\n[listen]\naddr = \"127.0.0.1:{port}\"\n{listen_extra}\n\
         [backend]\nhost = \"{}\"\nport = {}\nadmin_user = \"{}\"\nadmin_password = \"{}\"\n\
         tenant_role_secret = \"{}\"\n{extra}",
        b.host, b.port, b.admin_user, b.admin_password, b.tenant_role_secret
    )
}

/// Runs pgbench through the proxy; returns (transactions processed, failed).
/// Fails the test if pgbench does.
pub fn pgbench(port: u16, user: &str, args: &[&str]) -> (u64, u64) {
    let run = pgbench_run(port, user, args);
    assert!(run.ok, "pgbench {args:?}: {}{}", run.stderr, run.stdout);
    assert!(
        run.stdout
            .contains("number of transactions actually processed: "),
        "no count in pgbench output:\n{}",
        run.stdout
    );
    (run.processed, run.failed)
}

/// An HTTP response, as the tests read it.
pub struct HttpReply {
    /// The status code.
    pub status: u16,
    /// The status line and headers.
    pub head: String,
    /// The body.
    pub body: String,
}

/// One HTTP/1.1 request over a fresh connection (the proxy's HTTP
/// listener), with extra `headers` and an optional JSON `body`.
pub async fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> HttpReply {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to HTTP");
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: pgtenant\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() {
        request.push_str("Content-Type: application/json\r\n");
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(request.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("receive");
    let text = String::from_utf8(raw).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("headers end");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    HttpReply {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

/// A GET over a fresh connection: (status, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let reply = http_request(addr, "GET", path, &[], None).await;
    (reply.status, reply.body)
}
