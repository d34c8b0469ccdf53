//! End-to-end throughput with pgbench, in one run against one throwaway
//! cluster, interleaved so the figures compare like with like:
//!
//! - direct: pgbench logs in as the tenant's role straight to PostgreSQL;
//! - pgtenant: through the proxy, transaction pooling;
//! - pgbouncer: Debian's PgBouncer (installed when missing), transaction
//!   pooling, the same pool size, logging in as the same tenant role.
//!
//! Workloads: `-S` (simple), `-S -M prepared`, TPC-B at 32 and 256 clients,
//! and a single client running `SELECT 1` (latency).
//!
//!     cargo bench --bench pgbench
//!     PGBENCH_SECONDS=20 PGBENCH_ROUNDS=3 PGBENCH_POOL=16 cargo bench --bench pgbench
//!
//! With `PGBENCH_HOLD=1` it prints how to reach the three targets instead
//! and keeps them up until its standard input closes, for profiling one of
//! them by hand (`perf`, `strace -c`) under a pgbench of one's own.
//!
//! Not a test; prints a table.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pgtenant::config::{Config, PoolMode};
use pgtenant::provision::{self, ClusterOptions, LocalCluster};
use pgtenant::server::Proxy;
use pgtenant::tenant::{role_password, AccessLevel, TenantId};

fn env_or(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Target {
    name: &'static str,
    host: String,
    port: u16,
    user: String,
    password: String,
}

struct Workload {
    name: &'static str,
    args: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let seconds = env_or("PGBENCH_SECONDS", 10);
    let rounds = env_or("PGBENCH_ROUNDS", 2);
    let pool = env_or("PGBENCH_POOL", 16);

    let dir = tempfile::Builder::new()
        .prefix("pgtenant-bench-")
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
    config.listen.addr = "127.0.0.1:0".parse()?;
    config.http.listen_addr = "127.0.0.1:0".into();
    config.backend.host = cluster.host.clone();
    config.backend.port = cluster.port;
    config.backend.admin_user = cluster.superuser.clone();
    config.backend.admin_password = cluster.password.clone();
    config.pool.pool_mode = PoolMode::Transaction;
    config.pool.default_pool_size = pool as usize;
    config.pool.max_client_conn = 2_000;
    config.provision.migrations_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/sql").into();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let tenant = TenantId::parse("bench")?;
    let proxy = runtime.block_on(async {
        provision::init(&config).await?;
        provision::create_tenant(&config, &tenant, "bench").await?;
        provision::add_user(&config, &tenant, "alice", "alice", AccessLevel::ReadWrite).await?;
        anyhow::Ok(Proxy::start(config.clone()).await?)
    })?;

    // pgbench's tables in the tenant's schema, created by the admin role.
    let admin_env = [("PGPASSWORD", cluster.password.as_str())];
    let port = cluster.port.to_string();
    run(Command::new("pgbench")
        .args([
            "-i",
            "-q",
            "-s",
            "10",
            "-h",
            &cluster.host,
            "-p",
            &port,
            "-U",
            &cluster.superuser,
            "crm_db",
        ])
        .env("PGOPTIONS", "-c search_path=tenant_bench")
        .envs(admin_env))?;
    run(Command::new("psql")
        .args([
            "-X",
            "-q",
            "-h",
            &cluster.host,
            "-p",
            &port,
            "-U",
            &cluster.superuser,
            "crm_db",
        ])
        .args([
            "-c",
            "GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA tenant_bench TO tenant_bench_rw",
        ])
        .envs(admin_env))?;
    let select1 = dir.join("select1.sql");
    std::fs::write(&select1, "SELECT 1;\n")?;

    let role = tenant.role(AccessLevel::ReadWrite);
    let role_pw = role_password(&config.backend.tenant_role_secret, &role);
    let (bouncer, bouncer_port) = start_pgbouncer(&dir, &cluster, &role, &role_pw, pool)?;
    let targets = [
        Target {
            name: "direct",
            host: cluster.host.clone(),
            port: cluster.port,
            user: role.clone(),
            password: role_pw.clone(),
        },
        Target {
            name: "pgtenant",
            host: proxy.local_addr().ip().to_string(),
            port: proxy.local_addr().port(),
            user: "alice@bench".into(),
            password: "alice".into(),
        },
        Target {
            name: "pgbouncer",
            host: "127.0.0.1".into(),
            port: bouncer_port,
            user: role.clone(),
            password: role_pw.clone(),
        },
    ];
    if std::env::var_os("PGBENCH_HOLD").is_some() {
        for t in &targets {
            println!(
                "{:<10} PGPASSWORD={} pgbench -n -h {} -p {} -U {} crm_db",
                t.name, t.password, t.host, t.port, t.user
            );
        }
        println!(
            "pgtenant pid {}; holding until stdin closes",
            std::process::id()
        );
        let mut line = String::new();
        while std::io::stdin()
            .read_line(&mut line)
            .map(|n| n > 0)
            .unwrap_or(false)
        {}
    } else {
        run_workloads(&targets, &select1, seconds, rounds, pool)?;
    }
    drop(bouncer);
    runtime.block_on(proxy.shutdown(Duration::from_secs(2)));
    drop(cluster);
    Ok(())
}

/// Runs every workload against every target, interleaved, and prints the table.
fn run_workloads(
    targets: &[Target],
    select1: &Path,
    seconds: u32,
    rounds: u32,
    pool: u32,
) -> anyhow::Result<()> {
    let args = |s: &[&str]| s.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    let workloads = [
        Workload {
            name: "-S c=32",
            args: args(&["-S", "-c", "32", "-j", "2"]),
        },
        Workload {
            name: "-S -M prepared c=32",
            args: args(&["-S", "-M", "prepared", "-c", "32", "-j", "2"]),
        },
        Workload {
            name: "TPC-B c=32",
            args: args(&["-c", "32", "-j", "2"]),
        },
        Workload {
            name: "TPC-B c=256",
            args: args(&["-c", "256", "-j", "2"]),
        },
        Workload {
            name: "SELECT 1 c=1",
            args: vec![
                "-c".into(),
                "1".into(),
                "-f".into(),
                select1.display().to_string(),
            ],
        },
    ];

    println!("pgbench, {seconds} s a run, {rounds} rounds interleaved, pool {pool} (transaction pooling)");
    println!(
        "{:<22} {:>10} {:>10} {:>10} {:>12} {:>12}",
        "workload", "direct", "pgtenant", "pgbouncer", "pgt/bouncer", "pgt/direct"
    );
    for w in &workloads {
        let mut tps = [0.0f64; 3];
        let mut lat = [0.0f64; 3];
        for _ in 0..rounds {
            for (i, t) in targets.iter().enumerate() {
                // PgBouncer before 1.21 cannot run named prepared statements in
                // transaction mode: a failed run counts as nothing done.
                match pgbench(t, &w.args, seconds) {
                    Ok((x, l)) => {
                        tps[i] += x / rounds as f64;
                        lat[i] += l / rounds as f64;
                    }
                    Err(e) if t.name == "pgbouncer" => {
                        eprintln!(
                            "{} via pgbouncer: {}",
                            w.name,
                            e.to_string().lines().next().unwrap_or("")
                        )
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        println!(
            "{:<22} {:>10.0} {:>10.0} {:>10.0} {:>11.2}x {:>11.2}x   tps (0: failed)",
            w.name,
            tps[0],
            tps[1],
            tps[2],
            tps[1] / tps[2],
            tps[1] / tps[0]
        );
        println!(
            "{:<22} {:>10.3} {:>10.3} {:>10.3}                             ms latency avg",
            "", lat[0], lat[1], lat[2]
        );
    }
    Ok(())
}

/// Starts PgBouncer in transaction mode in front of the cluster, as the
/// `postgres` OS user (it refuses to run as root). Killed when dropped.
fn start_pgbouncer(
    dir: &Path,
    cluster: &LocalCluster,
    user: &str,
    password: &str,
    pool: u32,
) -> anyhow::Result<(ChildGuard, u16)> {
    if Command::new("pgbouncer").arg("--version").output().is_err() {
        run(Command::new("apt-get").args(["install", "-y", "-qq", "pgbouncer"]))?;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let bdir = dir.join("pgbouncer");
    std::fs::create_dir_all(&bdir)?;
    std::fs::write(
        bdir.join("userlist.txt"),
        format!("\"{user}\" \"{password}\"\n"),
    )?;
    std::fs::write(
        bdir.join("pgbouncer.ini"),
        format!(
            "[databases]\ncrm_db = host=127.0.0.1 port={} dbname=crm_db\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
             unix_socket_dir =\nauth_type = scram-sha-256\nauth_file = {}\npool_mode = transaction\ndefault_pool_size = {pool}\n\
             max_client_conn = 2000\nlogfile = {}\npidfile = {}\n",
            cluster.port,
            bdir.join("userlist.txt").display(),
            bdir.join("pgbouncer.log").display(),
            bdir.join("pgbouncer.pid").display(),
        ),
    )?;
    let as_root = std::fs::read_to_string("/proc/self/status")?
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    if as_root {
        run(Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&bdir))?;
    }
    let mut cmd = if as_root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", "pgbouncer"]);
        c
    } else {
        Command::new("pgbouncer")
    };
    let child = cmd
        .arg(bdir.join("pgbouncer.ini"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(500));
    Ok((ChildGuard(child), port))
}

struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = Command::new("pkill")
            .args(["-INT", "-P", &self.0.id().to_string()])
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs pgbench; returns (tps, average latency in ms).
fn pgbench(t: &Target, args: &[String], seconds: u32) -> anyhow::Result<(f64, f64)> {
    let out = Command::new("pgbench")
        .args(["-n", "-T", &seconds.to_string()])
        .args(args)
        .args([
            "-h",
            &t.host,
            "-p",
            &t.port.to_string(),
            "-U",
            &t.user,
            "crm_db",
        ])
        .env("PGPASSWORD", &t.password)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        anyhow::bail!(
            "pgbench against {} failed: {}{text}",
            t.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    match (field("tps = "), field("latency average = ")) {
        (Some(tps), Some(lat)) => Ok((tps, lat)),
        _ => anyhow::bail!("no tps in pgbench output of {}: {text}", t.name),
    }
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output()?;
    if !out.status.success() {
        anyhow::bail!("{:?} failed: {}", cmd, String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}
