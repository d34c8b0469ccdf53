//! Memory per idle client: the real `pgtenant serve` process (transaction
//! pooling) and PgBouncer (Debian's, installed when missing), each holding
//! the same number of idle clients spread over the same tenants, measured as
//! the growth of the process's resident set while the clients connect.
//!
//!     cargo bench --bench idle_memory
//!     IDLE_CLIENTS=2000 IDLE_TENANTS=200 cargo bench --bench idle_memory
//!
//! Defaults: 10,000 clients over 1,000 tenants. Not a test; prints a table.
//! `IDLE_HOLD=SECONDS` keeps each proxy holding its clients that long after
//! the measurement (its pid is printed), to look at it from outside.
//! `IDLE_WRAPPER="valgrind --tool=dhat"` starts pgtenant under that command
//! (split at spaces), to see where its memory goes.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{stream, StreamExt};
use pgtenant::config::Config;
use pgtenant::provision::{self, ClusterOptions, LocalCluster};
use pgtenant::tenant::{role_password, AccessLevel, TenantId};
use tokio_postgres::NoTls;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    let clients = env_or("IDLE_CLIENTS", 10_000);
    let tenants = env_or("IDLE_TENANTS", 1_000);
    let budget = 40;

    let dir = tempfile::Builder::new()
        .prefix("pgtenant-idle-")
        .tempdir()?
        .keep();
    let cluster = LocalCluster::start(ClusterOptions {
        dir: dir.clone(),
        port: 0,
        superuser: "marvin".into(),
        password: "marvin-bench".into(),
        remove_on_exit: true,
    })?;
    let mut config = Config::parse("", "bench")?;
    config.http.listen_addr = String::new();
    config.backend.host = cluster.host.clone();
    config.backend.port = cluster.port;
    config.backend.admin_user = cluster.superuser.clone();
    config.backend.admin_password = cluster.password.clone();
    config.provision.migrations_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/sql").into();
    let secret = config.backend.tenant_role_secret.clone();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    runtime.block_on(async {
        provision::init(&config).await?;
        let results: Vec<anyhow::Result<()>> = stream::iter(0..tenants)
            .map(|i| {
                let config = &config;
                async move {
                    let id = TenantId::parse(&format!("t{i}"))?;
                    provision::create_tenant(config, &id, "").await?;
                    provision::add_user(config, &id, "alice", "alice", AccessLevel::ReadWrite)
                        .await?;
                    Ok(())
                }
            })
            .buffer_unordered(8)
            .collect()
            .await;
        results.into_iter().collect::<anyhow::Result<Vec<()>>>()
    })?;
    println!(
        "{tenants} tenants provisioned in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // pgtenant, as its own process.
    let port = free_port()?;
    let toml = format!(
        "[listen]\naddr = \"127.0.0.1:{port}\"\nclient_login_timeout = 120\n\
         [backend]\nhost = \"{}\"\nport = {}\nadmin_user = \"{}\"\nadmin_password = \"{}\"\n\
         [pool]\npool_mode = \"transaction\"\ndefault_pool_size = 1\nmax_server_connections = {budget}\n\
         max_client_conn = {}\nquery_wait_timeout = 120\n",
        cluster.host,
        cluster.port,
        cluster.superuser,
        cluster.password,
        clients + 100
    );
    let config_path = dir.join("pgtenant.toml");
    std::fs::write(&config_path, toml)?;
    let wrapper = std::env::var("IDLE_WRAPPER").unwrap_or_default();
    let mut words = wrapper.split_whitespace();
    let mut command = match words.next() {
        Some(program) => {
            let mut c = Command::new(program);
            c.args(words).arg(env!("CARGO_BIN_EXE_pgtenant"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_pgtenant")),
    };
    let proxy = Guard(
        command
            .arg("--config")
            .arg(&config_path)
            .arg("serve")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?,
    );
    let pgtenant = runtime.block_on(measure(proxy.0.id(), port, clients, |i| {
        (format!("alice@t{}", i % tenants), "alice".to_string())
    }))?;
    drop(proxy);

    // PgBouncer, one pool per tenant role.
    let port = free_port()?;
    let bdir = dir.join("pgbouncer");
    std::fs::create_dir_all(&bdir)?;
    let mut users = String::new();
    for i in 0..tenants {
        let role = format!("tenant_t{i}_rw");
        users.push_str(&format!(
            "\"{role}\" \"{}\"\n",
            role_password(&secret, &role)
        ));
    }
    std::fs::write(bdir.join("userlist.txt"), users)?;
    std::fs::write(
        bdir.join("pgbouncer.ini"),
        format!(
            "[databases]\ncrm_db = host=127.0.0.1 port={} dbname=crm_db\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\n\
             listen_port = {port}\nunix_socket_dir =\nauth_type = scram-sha-256\nauth_file = {}\npool_mode = transaction\n\
             default_pool_size = 1\nmax_db_connections = {budget}\nmax_client_conn = {}\nlogfile = {}\n",
            cluster.port,
            bdir.join("userlist.txt").display(),
            clients + 100,
            bdir.join("pgbouncer.log").display(),
        ),
    )?;
    if Command::new("pgbouncer").arg("--version").output().is_err() {
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "pgbouncer"])
            .status()?;
    }
    Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(&bdir)
        .status()?;
    let bouncer = Guard(
        // runuser starts from the login limits: raise the soft fd limit to the hard one.
        Command::new("runuser")
            .args([
                "-u",
                "postgres",
                "--",
                "sh",
                "-c",
                "ulimit -n \"$(ulimit -Hn)\"; exec pgbouncer \"$0\"",
            ])
            .arg(bdir.join("pgbouncer.ini"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    std::thread::sleep(Duration::from_millis(500));
    let bouncer_pid = bouncer_pid(bouncer.0.id()).unwrap_or(bouncer.0.id());
    let pgbouncer = runtime.block_on(measure(bouncer_pid, port, clients, |i| {
        let role = format!("tenant_t{}_rw", i % tenants);
        let pw = role_password(&secret, &role);
        (role, pw)
    }))?;
    drop(bouncer);

    println!("{clients} idle clients over {tenants} tenants, transaction pooling, {budget} server connections");
    println!(
        "{:<10} {:>12} {:>12} {:>16}",
        "", "RSS before", "RSS after", "per idle client"
    );
    for (name, (before, after)) in [("pgtenant", pgtenant), ("pgbouncer", pgbouncer)] {
        println!(
            "{name:<10} {:>9} kB {:>9} kB {:>13.2} kB",
            before,
            after,
            (after as f64 - before as f64) / clients as f64
        );
    }
    drop(cluster);
    Ok(())
}

/// Connects `clients` idle clients to `port` and returns the RSS of `pid`
/// before and after, in kB.
async fn measure(
    pid: u32,
    port: u16,
    clients: usize,
    login: impl Fn(usize) -> (String, String),
) -> anyhow::Result<(u64, u64)> {
    wait_for_port(port).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_kb(pid)?;
    let logins: Vec<(String, String)> = (0..clients).map(&login).collect();
    let connected: Vec<anyhow::Result<tokio_postgres::Client>> = stream::iter(logins)
        .map(|(user, password)| async move {
            let (client, conn) = tokio_postgres::connect(
                &format!(
                    "host=127.0.0.1 port={port} user={user} password={password} dbname=crm_db"
                ),
                NoTls,
            )
            .await?;
            tokio::spawn(conn);
            Ok(client)
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let held: Vec<tokio_postgres::Client> = connected.into_iter().collect::<anyhow::Result<_>>()?;
    // Idle clients of pgtenant park after a second or two (PgBouncer's stay
    // as they are): both are measured once settled.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = rss_kb(pid)?;
    if let Ok(secs) = std::env::var("IDLE_HOLD") {
        eprintln!("HOLD pid {pid} rss {after}");
        tokio::time::sleep(Duration::from_secs(secs.parse().unwrap_or(60))).await;
    }
    drop(held);
    Ok((before, after))
}

fn rss_kb(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for {pid}"))
}

/// PgBouncer runs as a child of `runuser` (its shell execs it): its own pid.
fn bouncer_pid(parent: u32) -> Option<u32> {
    let out = Command::new("pgrep")
        .args(["-P", &parent.to_string()])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

async fn wait_for_port(port: u16) -> anyhow::Result<()> {
    for _ in 0..1200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("nothing listens on {port}")
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = Command::new("pkill")
            .args(["-INT", "-P", &self.0.id().to_string()])
            .status();
        // Asked to stop first (SIGTERM: pgtenant's drain, quick once the
        // clients are gone), so that a wrapper (a profiler) writes its report.
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        for _ in 0..600 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
