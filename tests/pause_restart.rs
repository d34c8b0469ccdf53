//! A DBA restarts PostgreSQL under load without clients noticing: the admin
//! console's PAUSE waits for transactions to finish and closes the server
//! connections, PostgreSQL restarts, RESUME lets the waiting clients on.
//! pgbench runs throughout and must see zero failed transactions.
//!
//! This binary runs its own PostgreSQL (it is restarted), not the shared one.

mod common;

use std::time::Duration;

use pgtenant::config::{Config, PoolMode};
use pgtenant::provision::{self, ClusterOptions, LocalCluster};
use pgtenant::server::Proxy;
use pgtenant::tenant::{AccessLevel, TenantId};
use tokio_postgres::NoTls;

const ADMIN_PW: &str = "console-pw";

#[tokio::test]
async fn pause_restart_resume_under_pgbench_fails_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cluster_dir = dir.path().join("pg");
    let mut cluster = tokio::task::spawn_blocking(move || {
        LocalCluster::start(ClusterOptions {
            dir: cluster_dir,
            port: 0,
            superuser: "marvin".into(),
            password: "marvin-restart".into(),
            remove_on_exit: false,
        })
    })
    .await
    .unwrap()
    .expect("a PostgreSQL of this test's own");

    let userlist = dir.path().join("userlist.txt");
    let scram = postgres_protocol::password::scram_sha_256(ADMIN_PW.as_bytes());
    std::fs::write(&userlist, format!("\"admin\" \"{scram}\"\n")).unwrap();
    let mut config = Config::parse("", "test").unwrap();
    config.listen.addr = "127.0.0.1:0".parse().unwrap();
    config.http.listen_addr = String::new();
    config.backend.host = cluster.host.clone();
    config.backend.port = cluster.port;
    config.backend.admin_user = cluster.superuser.clone();
    config.backend.admin_password = cluster.password.clone();
    config.backend.tenant_role_secret = "test-secret".into();
    config.provision.migrations_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/sql").into();
    config.auth.auth_file = userlist.display().to_string();
    config.admin.admin_users = vec!["admin".into()];
    config.pool.pool_mode = PoolMode::Transaction;
    config.pool.default_pool_size = 4;
    config.pool.query_wait_timeout = 30.0;
    provision::init(&config).await.unwrap();
    let id = TenantId::parse("pr").unwrap();
    provision::create_tenant(&config, &id, "pr").await.unwrap();
    provision::add_user(&config, &id, "alice", "alice-pw", AccessLevel::ReadWrite)
        .await
        .unwrap();
    cluster = tokio::task::spawn_blocking(move || {
        let c = &cluster;
        common::pgbench_init_on(
            &c.host,
            c.port,
            &c.superuser,
            &c.password,
            "tenant_pr",
            "tenant_pr_rw",
        );
        cluster
    })
    .await
    .unwrap();

    let proxy = Proxy::start(config).await.unwrap();
    let port = proxy.local_addr().port();
    let load = tokio::task::spawn_blocking(move || {
        common::pgbench_run(
            port,
            "alice@pr",
            &["-M", "prepared", "-c", "8", "-j", "2", "-T", "8"],
        )
    });
    tokio::time::sleep(Duration::from_secs(2)).await;

    let (console, connection) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=admin password={ADMIN_PW} dbname=pgbouncer"),
        NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    // PAUSE returns once every server connection of crm_db is idle and closed.
    console.simple_query("PAUSE crm_db").await.unwrap();
    let old_pid = cluster.server_pid();
    cluster = tokio::task::spawn_blocking(move || {
        cluster.restart().expect("PostgreSQL restarts");
        cluster
    })
    .await
    .unwrap();
    assert_ne!(cluster.server_pid(), old_pid, "a new postmaster");
    console.simple_query("RESUME crm_db").await.unwrap();

    let run = load.await.unwrap();
    println!(
        "pgbench through PAUSE, PostgreSQL restart, RESUME: {} transactions, {} failed",
        run.processed, run.failed
    );
    assert!(run.ok, "pgbench: {}{}", run.stderr, run.stdout);
    assert!(run.processed > 0);
    assert_eq!(run.failed, 0, "{}", run.stderr);
    assert!(
        run.stderr.trim().is_empty(),
        "pgbench saw errors: {}",
        run.stderr
    );
    proxy.shutdown(Duration::from_secs(2)).await;
    drop(cluster);
}
