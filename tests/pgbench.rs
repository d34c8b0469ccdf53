//! pgbench, the reference PostgreSQL load client, through the proxy: the
//! TPC-B-like script (simple protocol) and the read-only one with prepared
//! statements, no failed transaction in either.

mod common;

use common::*;

#[tokio::test]
async fn pgbench_runs_clean_through_the_proxy() {
    let mut config = config();
    config.pool.default_pool_size = 8;
    tenant(&config, "b_bench").await;
    pgbench_init("tenant_b_bench", "tenant_b_bench_rw");
    let proxy = start_proxy(config).await;
    let port = proxy.local_addr().port();
    let run = |args: &'static [&'static str]| {
        tokio::task::spawn_blocking(move || pgbench(port, "alice@b_bench", args))
    };
    let (done, failed) = run(&["-c", "8", "-j", "2", "-t", "100"]).await.unwrap();
    assert_eq!((done, failed), (800, 0));
    let (done, failed) = run(&["-S", "-M", "prepared", "-c", "4", "-t", "250"])
        .await
        .unwrap();
    assert_eq!((done, failed), (1000, 0));
    // The work landed in the tenant's own schema.
    let admin = admin("crm_db").await;
    let n: i64 = admin
        .query_one("SELECT count(*) FROM tenant_b_bench.pgbench_history", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 800);
}

#[tokio::test]
async fn pgbench_prepared_and_extended_in_transaction_mode() {
    let mut config = config();
    config.pool.default_pool_size = 4;
    config.pool.pool_mode = pgtenant::config::PoolMode::Transaction;
    config.pool.query_wait_timeout = 60.0;
    tenant(&config, "b_txn").await;
    pgbench_init("tenant_b_txn", "tenant_b_txn_rw");
    let proxy = start_proxy(config).await;
    let port = proxy.local_addr().port();
    let run = |args: &'static [&'static str]| {
        tokio::task::spawn_blocking(move || pgbench(port, "alice@b_txn", args))
    };
    // 64 clients share 4 server connections; named statements must survive every switch.
    let (done, failed) = run(&["-M", "prepared", "-c", "64", "-j", "2", "-t", "30"])
        .await
        .unwrap();
    assert_eq!((done, failed), (64 * 30, 0));
    let (done, failed) = run(&["-M", "extended", "-c", "64", "-j", "2", "-t", "30"])
        .await
        .unwrap();
    assert_eq!((done, failed), (64 * 30, 0));
    let (done, failed) = run(&["-S", "-M", "prepared", "-c", "64", "-j", "2", "-t", "50"])
        .await
        .unwrap();
    assert_eq!((done, failed), (64 * 50, 0));
    let admin = admin("postgres").await;
    let n: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'tenant_b_txn_rw'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(n <= 4, "{n} server connections for a pool of 4");
}
