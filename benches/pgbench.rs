//! End-to-end throughput: `pgbench -S` (read-only, simple protocol) run
//! direct to PostgreSQL and through pgtenant, interleaved in one run against
//! one throwaway cluster, so the figures compare like with like.
//!
//!     cargo bench --bench pgbench            # defaults: 8 clients, 10 s, 3 rounds
//!     PGBENCH_CLIENTS=32 PGBENCH_SECONDS=20 PGBENCH_ROUNDS=2 cargo bench --bench pgbench
//!
//! Session pooling: each pgbench client keeps one server connection, so the
//! pool is sized to the client count. Not a test; prints a table.

use std::process::Command;
use std::time::Duration;

use pgtenant::config::Config;
use pgtenant::provision::{self, ClusterOptions, LocalCluster};
use pgtenant::server::Proxy;
use pgtenant::tenant::{role_password, AccessLevel, TenantId};

fn env_or(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes --bench; nothing else is accepted.
    let clients = env_or("PGBENCH_CLIENTS", 8);
    let seconds = env_or("PGBENCH_SECONDS", 10);
    let rounds = env_or("PGBENCH_ROUNDS", 3);

    let dir = tempfile::Builder::new()
        .prefix("pgtenant-bench-")
        .tempdir()?
        .keep();
    let cluster = LocalCluster::start(ClusterOptions {
        dir,
        port: 0,
        superuser: "marvin".into(),
        password: "marvin-bench".into(),
        remove_on_exit: true,
    })?;
    let mut config = Config::parse("", "bench")?;
    config.listen.addr = "127.0.0.1:0".parse()?;
    config.backend.host = cluster.host.clone();
    config.backend.port = cluster.port;
    config.backend.admin_user = cluster.superuser.clone();
    config.backend.admin_password = cluster.password.clone();
    config.pool.default_pool_size = clients as usize;
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
    run(Command::new("pgbench")
        .args([
            "-i",
            "-q",
            "-s",
            "10",
            "-h",
            &cluster.host,
            "-p",
            &cluster.port.to_string(),
        ])
        .args(["-U", &cluster.superuser, "crm_db"])
        .env("PGOPTIONS", "-c search_path=tenant_bench")
        .envs(admin_env))?;
    run(Command::new("psql")
        .args([
            "-X",
            "-q",
            "-h",
            &cluster.host,
            "-p",
            &cluster.port.to_string(),
            "-U",
            &cluster.superuser,
            "crm_db",
        ])
        .args([
            "-c",
            "GRANT SELECT ON ALL TABLES IN SCHEMA tenant_bench TO tenant_bench_rw",
        ])
        .envs(admin_env))?;

    let role = tenant.role(AccessLevel::ReadWrite);
    let role_pw = role_password(&config.backend.tenant_role_secret, &role);
    let direct = Target {
        name: "direct",
        host: cluster.host.clone(),
        port: cluster.port,
        user: role.clone(),
        password: role_pw,
        options: "-c search_path=tenant_bench,commons,public -c app.current_tenant=bench".into(),
    };
    let via_proxy = Target {
        name: "pgtenant",
        host: proxy.local_addr().ip().to_string(),
        port: proxy.local_addr().port(),
        user: "alice@bench".into(),
        password: "alice".into(),
        options: String::new(),
    };

    println!("pgbench -S -c {clients} -j 2 -T {seconds}, {rounds} rounds, interleaved");
    let mut totals = [0.0f64; 2];
    for round in 1..=rounds {
        for (i, target) in [&direct, &via_proxy].into_iter().enumerate() {
            let tps = pgbench(target, clients, seconds)?;
            totals[i] += tps;
            println!("round {round}  {:<9} {tps:>10.0} tps", target.name);
        }
    }
    let (d, p) = (totals[0] / rounds as f64, totals[1] / rounds as f64);
    println!("mean      direct    {d:>10.0} tps");
    println!(
        "mean      pgtenant  {p:>10.0} tps  ({:.0}% of direct)",
        100.0 * p / d
    );
    runtime.block_on(proxy.shutdown(Duration::from_secs(2)));
    drop(cluster);
    Ok(())
}

struct Target {
    name: &'static str,
    host: String,
    port: u16,
    user: String,
    password: String,
    options: String,
}

fn pgbench(t: &Target, clients: u32, seconds: u32) -> anyhow::Result<f64> {
    let out = Command::new("pgbench")
        .args([
            "-S",
            "-n",
            "-j",
            "2",
            "-c",
            &clients.to_string(),
            "-T",
            &seconds.to_string(),
        ])
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
        .env("PGOPTIONS", &t.options)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        anyhow::bail!(
            "pgbench against {} failed: {}",
            t.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    text.lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no tps in pgbench output: {text}"))
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output()?;
    if !out.status.success() {
        anyhow::bail!("{:?} failed: {}", cmd, String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}
