//! Provisioning and migrating at scale: creates many tenants (each with its
//! schema, migrations, roles and grants in every service database, and the
//! admin views rebuilt) against a throwaway PostgreSQL, then applies one new
//! migration to all of them (and the template), and reports the wall time
//! and the cost per tenant of each phase.
//!
//!     cargo bench --bench tenants
//!     BENCH_TENANTS=200 BENCH_JOBS=8 cargo bench --bench tenants
//!
//! Defaults: 1,000 tenants, 4 at a time. Not a test; prints a table.

use std::time::Instant;

use futures_util::{stream, StreamExt};
use pgtenant::config::Config;
use pgtenant::provision::{self, ClusterOptions, LocalCluster, MigrateOptions};
use pgtenant::tenant::TenantId;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Copies the shipped migrations to `dir`, so the bench can add one.
fn copy_migrations(dir: &std::path::Path) -> anyhow::Result<()> {
    let from = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/sql"));
    for db in ["crm_db", "product_db"] {
        let src = from.join(db).join("migrations");
        let dst = dir.join(db).join("migrations");
        std::fs::create_dir_all(&dst)?;
        for entry in std::fs::read_dir(&src)? {
            let entry = entry?;
            std::fs::copy(entry.path(), dst.join(entry.file_name()))?;
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let tenants = env_or("BENCH_TENANTS", 1_000);
    let jobs = env_or("BENCH_JOBS", 4);

    let dir = tempfile::Builder::new()
        .prefix("pgtenant-scale-")
        .tempdir()?;
    let cluster = LocalCluster::start(ClusterOptions {
        dir: dir.path().join("pg"),
        port: 0,
        superuser: "marvin".into(),
        password: "marvin-bench".into(),
        remove_on_exit: true,
    })?;
    let migrations = dir.path().join("sql");
    copy_migrations(&migrations)?;
    let mut config = Config::parse("", "bench")?;
    config.http.listen_addr = String::new();
    config.backend.host = cluster.host.clone();
    config.backend.port = cluster.port;
    config.backend.admin_user = cluster.superuser.clone();
    config.backend.admin_password = cluster.password.clone();
    config.provision.migrations_dir = migrations.display().to_string();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        provision::init(&config).await?;

        let started = Instant::now();
        let results: Vec<anyhow::Result<()>> = stream::iter(0..tenants)
            .map(|i| {
                let config = &config;
                async move {
                    let id = TenantId::parse(&format!("s{i}"))?;
                    provision::create_tenant(config, &id, "").await?;
                    Ok(())
                }
            })
            .buffer_unordered(jobs)
            .collect()
            .await;
        results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
        let create = started.elapsed();

        // One new migration for every tenant and the template.
        for db in ["crm_db", "product_db"] {
            let table = if db == "crm_db" { "contacts" } else { "products" };
            std::fs::write(
                migrations.join(db).join("migrations").join("900_bench.sql"),
                format!("ALTER TABLE {table} ADD COLUMN bench_note text;\n"),
            )?;
        }
        let options = MigrateOptions {
            tenants: Vec::new(),
            template: true,
            databases: Vec::new(),
            dry_run: false,
            jobs,
        };
        let started = Instant::now();
        let outcomes = provision::migrate(&config, &options, &mut |_| {}).await?;
        let migrate = started.elapsed();
        let failed = provision::migrate::failed(&outcomes);

        let started = Instant::now();
        provision::rebuild_admin_views(&config).await?;
        let views = started.elapsed();

        let per = |d: std::time::Duration| d.as_secs_f64() * 1000.0 / tenants as f64;
        println!();
        println!("{tenants} tenants, 2 service databases, {jobs} at a time");
        println!("| phase | wall time | per tenant |");
        println!("|---|---|---|");
        println!(
            "| create (registry, roles, 2 schemas, migrations, grants, admin views) | {:.1} s | {:.1} ms |",
            create.as_secs_f64(),
            per(create)
        );
        println!(
            "| migrate one new file (+ template; {} failed) | {:.1} s | {:.1} ms |",
            failed,
            migrate.as_secs_f64(),
            per(migrate)
        );
        println!(
            "| rebuild the admin views once | {:.2} s | {:.2} ms |",
            views.as_secs_f64(),
            per(views)
        );
        anyhow::ensure!(failed == 0, "{failed} tenants failed to migrate");
        Ok::<(), anyhow::Error>(())
    })?;
    drop(cluster);
    Ok(())
}
