//! Stopping and changing a running `pgtenant serve` without dropping work:
//! SIGHUP under pgbench load, SIGTERM draining (transactions finish, idle
//! clients are told), SIGINT closing at once, and a rolling restart of two
//! processes sharing the port with SO_REUSEPORT.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use pgtenant::config::Config;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A config file for `serve` on `port`: transaction pooling, with extra
/// `[listen]` and `[pool]` keys.
fn write_config(path: &Path, config: &Config, port: u16, listen_extra: &str, pool_extra: &str) {
    let pool =
        format!("[pool]\npool_mode = \"transaction\"\nquery_wait_timeout = 30\n{pool_extra}\n");
    std::fs::write(path, serve_toml(config, port, listen_extra, &pool)).unwrap();
}

/// Starts `pgtenant serve` and waits until it says it accepts clients.
async fn serve(config_file: &Path) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgtenant"))
        .args(["--config", &config_file.display().to_string(), "serve"])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("accepting clients") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(ready, Ok(true), "pgtenant serve starts");
    // Keep draining its log so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

fn signal(child: &Child, name: &str) {
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args([name, &pid])
        .status()
        .unwrap();
    assert!(status.success());
}

async fn connect_to(
    port: u16,
    tenant: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=alice@{tenant} password=alice-pw dbname=crm_db"),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Runs pgbench without judging it: (processed, failed, its stderr).
fn pgbench_counts(port: u16, user: &str, args: &[&str]) -> (u64, u64, String) {
    let run = pgbench_run(port, user, args);
    (run.processed, run.failed, run.stderr)
}

#[tokio::test]
async fn sighup_under_pgbench_load_fails_no_transaction() {
    let config = config();
    tenant(&config, "rs_hup").await;
    pgbench_init("tenant_rs_hup", "tenant_rs_hup_rw");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pgtenant.toml");
    let port = free_port();
    write_config(&file, &config, port, "", "default_pool_size = 2");
    let mut server = serve(&file).await;

    let load = tokio::task::spawn_blocking(move || {
        pgbench_counts(
            port,
            "alice@rs_hup",
            &["-M", "prepared", "-c", "8", "-j", "2", "-T", "6"],
        )
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    // A broken file first: reported, the configuration in force stays.
    std::fs::write(&file, "[pool]\ndefault_pool_size = \"many\"\n").unwrap();
    signal(&server, "-HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    for size in [4, 3, 4] {
        write_config(
            &file,
            &config,
            port,
            "",
            &format!("default_pool_size = {size}"),
        );
        signal(&server, "-HUP");
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let (processed, failed, errors) = load.await.unwrap();
    println!("pgbench through 4 reloads: {processed} transactions, {failed} failed");
    assert!(processed > 0, "{errors}");
    assert_eq!(failed, 0, "{errors}");
    assert!(errors.trim().is_empty(), "pgbench reported: {errors}");

    // The last pool size (4) is in force: 8 busy clients hold 4 connections.
    let admin = admin("crm_db").await;
    let (_, _, _) = tokio::task::spawn_blocking(move || {
        pgbench_counts(
            port,
            "alice@rs_hup",
            &["-S", "-c", "8", "-j", "2", "-T", "1"],
        )
    })
    .await
    .unwrap();
    let open: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'tenant_rs_hup_rw'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(open, 4, "server connections of the reloaded pool size");
    assert!(
        server.try_wait().unwrap().is_none(),
        "SIGHUP keeps it running"
    );
    signal(&server, "-INT");
    server.wait().await.unwrap();
}

#[tokio::test]
async fn sigterm_drains_and_sigint_closes_at_once() {
    let config = config();
    tenant(&config, "rs_term").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pgtenant.toml");
    let port = free_port();
    write_config(&file, &config, port, "shutdown_timeout = 60", "");
    let mut server = serve(&file).await;

    let busy = connect_to(port, "rs_term").await.unwrap();
    let idle = connect_to(port, "rs_term").await.unwrap();
    busy.batch_execute("BEGIN; CREATE TEMP TABLE t (x int)")
        .await
        .unwrap();
    signal(&server, "-TERM");
    // The idle client is told and closed; nobody new gets in.
    assert!(
        eventually(Duration::from_secs(10), || async { idle.is_closed() }).await,
        "an idle client is closed when draining starts"
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            connect_to(port, "rs_term").await.is_err()
        })
        .await,
        "no new clients while draining"
    );
    // The open transaction finishes, then its client is closed and the process ends.
    busy.batch_execute("INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let n = one_value(&busy, "SELECT count(*) FROM t").await;
    assert_eq!(n, "1");
    assert!(server.try_wait().unwrap().is_none(), "still draining");
    busy.batch_execute("COMMIT").await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), server.wait())
        .await
        .expect("the drained process ends before shutdown_timeout")
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(eventually(Duration::from_secs(5), || async { busy.is_closed() }).await);

    // SIGINT: a client inside a transaction does not hold the process.
    let mut server = serve(&file).await;
    let busy = connect_to(port, "rs_term").await.unwrap();
    busy.batch_execute("BEGIN").await.unwrap();
    signal(&server, "-INT");
    let status = tokio::time::timeout(Duration::from_secs(10), server.wait())
        .await
        .expect("SIGINT ends the process at once")
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(busy.simple_query("SELECT 1").await.is_err());
}

#[tokio::test]
async fn rolling_restart_with_so_reuseport() {
    let config = config();
    tenant(&config, "rs_roll").await;
    pgbench_init("tenant_rs_roll", "tenant_rs_roll_rw");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pgtenant.toml");
    let port = free_port();
    write_config(
        &file,
        &config,
        port,
        "so_reuseport = true\nshutdown_timeout = 20",
        "default_pool_size = 4",
    );
    let mut old = serve(&file).await;
    // A new connection per transaction, as a web fleet reconnecting would.
    let load = tokio::task::spawn_blocking(move || {
        pgbench_counts(
            port,
            "alice@rs_roll",
            &["-S", "-C", "-c", "4", "-j", "2", "-T", "6"],
        )
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut new = serve(&file).await;
    signal(&old, "-TERM");
    let status = tokio::time::timeout(Duration::from_secs(30), old.wait())
        .await
        .expect("the old process drains and ends")
        .unwrap();
    assert!(status.success(), "{status:?}");
    let (processed, failed, errors) = load.await.unwrap();
    println!(
        "pgbench -C through a rolling restart: {processed} transactions, {failed} failed, \
         client errors: {:?}",
        errors
    );
    assert!(processed > 0, "{errors}");
    assert_eq!(failed, 0, "{errors}");
    assert!(errors.trim().is_empty(), "no client saw an error: {errors}");
    // The new process serves alone now.
    let client = connect_to(port, "rs_roll").await.unwrap();
    assert_eq!(one_value(&client, "SELECT 1").await, "1");
    assert!(new.try_wait().unwrap().is_none());
    signal(&new, "-INT");
    new.wait().await.unwrap();
}
