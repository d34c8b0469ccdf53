//! A second driver that prepares by default, psycopg 3 with
//! `prepare_threshold=0`, through transaction pooling: its statements,
//! DEALLOCATEs from its statement cache, and transactions across backend
//! switches. Needs python3 with psycopg (`.ci/run` installs it).

mod common;

use common::*;
use pgtenant::config::PoolMode;

#[tokio::test]
async fn psycopg_prepared_statements_survive_transaction_pooling() {
    let mut config = config();
    config.pool.pool_mode = PoolMode::Transaction;
    config.pool.default_pool_size = 2;
    config.pool.query_wait_timeout = 30.0;
    tenant(&config, "d_psycopg").await;
    let proxy = start_proxy(config).await;
    let addr = proxy.local_addr();
    let conninfo = format!(
        "host={} port={} user=alice@d_psycopg password=alice-pw dbname=crm_db",
        addr.ip(),
        addr.port()
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/drivers/psycopg_txn.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .arg(&conninfo)
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "psycopg run failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.starts_with("ok 6 "), "{stdout}");
    assert!(
        !stdout.contains("switched=0"),
        "no connection ever moved: {stdout}"
    );
}
