//! Scarce server connections: a global budget shared by tenants, a busy
//! tenant that cannot starve a quiet one, idle connections moving to the
//! tenant that waits, and idle pools shrinking to nothing.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use pgtenant::config::PoolMode;

async fn server_connections(roles: &[&str]) -> i64 {
    let admin = admin("postgres").await;
    let roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = ANY($1)",
            &[&roles],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn a_busy_tenant_does_not_starve_a_quiet_one() {
    let mut config = config();
    config.pool.pool_mode = PoolMode::Transaction;
    config.pool.default_pool_size = 20;
    config.pool.max_server_connections = 10;
    config.pool.query_wait_timeout = 5.0;
    tenant(&config, "f_noisy").await;
    tenant(&config, "f_quiet").await;
    let proxy = Arc::new(start_proxy(config).await);

    // 200 clients of one tenant keep every connection busy.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut noisy = Vec::new();
    for _ in 0..200 {
        let (proxy, stop) = (Arc::clone(&proxy), Arc::clone(&stop));
        noisy.push(tokio::spawn(async move {
            let c = connect(&proxy, "alice@f_noisy", "alice-pw", "").await?;
            let mut done = 0u32;
            loop {
                c.batch_execute("SELECT pg_sleep(0.01)").await?;
                done += 1;
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
            }
            Ok::<u32, tokio_postgres::Error>(done)
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let peak_noisy = server_connections(&["tenant_f_noisy_rw"]).await;

    // The quiet tenant's clients are served well within their wait timeout.
    let mut worst = Duration::ZERO;
    let quiet = connect(&proxy, "alice@f_quiet", "alice-pw", "")
        .await
        .expect("quiet tenant logs in");
    for _ in 0..10 {
        let started = Instant::now();
        quiet
            .batch_execute("SELECT 1")
            .await
            .expect("quiet tenant is served");
        worst = worst.max(started.elapsed());
    }
    let both = server_connections(&["tenant_f_noisy_rw", "tenant_f_quiet_rw"]).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut failed = Vec::new();
    for t in noisy {
        if let Err(e) = t.await.unwrap() {
            failed.push(format!(
                "{} {}",
                sqlstate(&e),
                e.as_db_error()
                    .map(|d| d.message().to_string())
                    .unwrap_or_default()
            ));
        }
    }
    assert!(
        failed.is_empty(),
        "noisy clients failed (they may wait, but each must be served): {failed:?}"
    );
    assert!(
        peak_noisy <= 10,
        "{peak_noisy} connections on a budget of 10"
    );
    assert!(both <= 10, "{both} connections on a budget of 10");
    assert!(
        worst < Duration::from_secs(5),
        "quiet tenant waited {worst:?}"
    );
}

#[tokio::test]
async fn an_idle_connection_moves_to_the_tenant_that_waits() {
    let mut config = config();
    config.pool.default_pool_size = 2;
    config.pool.max_server_connections = 2;
    config.pool.query_wait_timeout = 5.0;
    tenant(&config, "f_donor").await;
    tenant(&config, "f_taker").await;
    let proxy = start_proxy(config).await;
    let a = connect(&proxy, "alice@f_donor", "alice-pw", "")
        .await
        .unwrap();
    let b = connect(&proxy, "alice@f_donor", "alice-pw", "")
        .await
        .unwrap();
    drop(b); // one of the donor's two connections goes idle
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let c = connect(&proxy, "alice@f_taker", "alice-pw", "")
        .await
        .expect("the waiting tenant gets the idle one");
    assert!(started.elapsed() < Duration::from_secs(3));
    c.batch_execute("SELECT 1").await.unwrap();
    a.batch_execute("SELECT 1").await.unwrap();
    assert!(server_connections(&["tenant_f_donor_rw", "tenant_f_taker_rw"]).await <= 2);
}

#[tokio::test]
async fn idle_pools_shrink_to_nothing() {
    let mut config = config();
    config.pool.server_idle_timeout = 0.3;
    tenant(&config, "f_shrink").await;
    let proxy = start_proxy(config).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(
            connect(&proxy, "alice@f_shrink", "alice-pw", "")
                .await
                .unwrap(),
        );
    }
    assert_eq!(server_connections(&["tenant_f_shrink_rw"]).await, 3);
    drop(clients);
    assert!(
        eventually(Duration::from_secs(5), || async {
            server_connections(&["tenant_f_shrink_rw"]).await == 0
        })
        .await,
        "idle server connections were kept"
    );
    assert_eq!(proxy.context().pools.server_connections(), 0);
    // And the pool grows again on demand.
    let c = connect(&proxy, "alice@f_shrink", "alice-pw", "")
        .await
        .unwrap();
    c.batch_execute("SELECT 1").await.unwrap();
}
