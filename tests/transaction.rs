//! Transaction and statement pooling: clients move between server
//! connections at every transaction, and keep their prepared statements and
//! reported settings; session state they leave behind never reaches another
//! client; two tenants (or two clients) using one statement name with
//! different texts each run their own.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use pgtenant::config::{Config, PoolMode};
use tokio_postgres::SimpleQueryMessage;

fn txn_config(pool_size: usize) -> Config {
    let mut config = config();
    config.pool.pool_mode = PoolMode::Transaction;
    config.pool.default_pool_size = pool_size;
    config.pool.query_wait_timeout = 30.0;
    config
}

#[tokio::test]
async fn clients_switch_backends_and_keep_their_statements() {
    let config = txn_config(2);
    tenant(&config, "t_switch").await;
    let proxy = Arc::new(start_proxy(config).await);
    let mut tasks = Vec::new();
    for i in 0..8i32 {
        let proxy = Arc::clone(&proxy);
        tasks.push(tokio::spawn(async move {
            let c = connect(&proxy, "alice@t_switch", "alice-pw", "")
                .await
                .unwrap();
            // Each client's first statement has the same driver name ("s0") and its own text.
            let stmt = c
                .prepare(&format!("SELECT $1::int * {} , pg_backend_pid()", i + 1))
                .await
                .unwrap();
            let mut pids = std::collections::HashSet::new();
            for n in 0..40i32 {
                let row = c.query_one(&stmt, &[&n]).await.unwrap();
                assert_eq!(
                    row.get::<_, i32>(0),
                    n * (i + 1),
                    "client {i} ran another text"
                );
                pids.insert(row.get::<_, i32>(1));
                if n % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            // Describe-only use and closing work too.
            let again = c.prepare("SELECT 'x'::text || $1::text").await.unwrap();
            assert_eq!(again.params().len(), 1);
            drop(again);
            let row = c
                .query_one("SELECT 'x'::text || $1::text", &[&"y"])
                .await
                .unwrap();
            assert_eq!(row.get::<_, &str>(0), "xy");
            pids.len()
        }));
    }
    let mut switched = 0;
    for t in tasks {
        if t.await.unwrap() > 1 {
            switched += 1;
        }
    }
    assert!(switched > 0, "no client ever moved to another backend");
    let admin = admin("postgres").await;
    let n: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'tenant_t_switch_rw'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(n <= 2, "{n} server connections for a pool of 2");
}

#[tokio::test]
async fn one_statement_name_in_two_tenants_runs_each_text() {
    let config = txn_config(1);
    tenant(&config, "t_name_a").await;
    tenant(&config, "t_name_b").await;
    let proxy = start_proxy(config).await;
    let a = connect(&proxy, "alice@t_name_a", "alice-pw", "")
        .await
        .unwrap();
    let b = connect(&proxy, "alice@t_name_b", "alice-pw", "")
        .await
        .unwrap();
    a.batch_execute("INSERT INTO contacts(name) VALUES ('only in a')")
        .await
        .unwrap();
    // Same statement name (tokio-postgres' first, "s0"), same text, different tenants.
    let sa = a.prepare("SELECT count(*) FROM contacts").await.unwrap();
    let sb = b.prepare("SELECT count(*) FROM contacts").await.unwrap();
    for _ in 0..5 {
        assert_eq!(a.query_one(&sa, &[]).await.unwrap().get::<_, i64>(0), 1);
        assert_eq!(b.query_one(&sb, &[]).await.unwrap().get::<_, i64>(0), 0);
    }
}

#[tokio::test]
async fn session_state_never_reaches_another_client() {
    let config = txn_config(1);
    tenant(&config, "t_state").await;
    let proxy = start_proxy(config).await;
    let a = connect(
        &proxy,
        "alice@t_state",
        "alice-pw",
        "options='-c application_name=client_a'",
    )
    .await
    .unwrap();
    let b = connect(
        &proxy,
        "alice@t_state",
        "alice-pw",
        "options='-c application_name=client_b'",
    )
    .await
    .unwrap();
    let pid_a = one_value(&a, "SELECT pg_backend_pid()").await;
    let pid_b = one_value(&b, "SELECT pg_backend_pid()").await;
    assert_eq!(pid_a, pid_b, "one server connection serves both");
    // Reported parameters follow each client.
    assert_eq!(one_value(&a, "SHOW application_name").await, "client_a");
    assert_eq!(one_value(&b, "SHOW application_name").await, "client_b");
    a.batch_execute("SET TimeZone = 'Asia/Tokyo'")
        .await
        .unwrap();
    assert_eq!(
        one_value(&b, "SHOW TimeZone").await,
        one_value(&b, "SELECT current_setting('TimeZone')").await
    );
    assert_ne!(one_value(&b, "SHOW TimeZone").await, "Asia/Tokyo");
    assert_eq!(one_value(&a, "SHOW TimeZone").await, "Asia/Tokyo");
    // Unreported settings, temp tables, LISTEN and SQL PREPARE are cleaned away.
    a.batch_execute("SET work_mem = '7MB'").await.unwrap();
    a.batch_execute("CREATE TEMP TABLE scratch(x int)")
        .await
        .unwrap();
    a.batch_execute("LISTEN a_channel").await.unwrap();
    a.batch_execute("PREPARE mine AS SELECT 'a'").await.unwrap();
    assert_ne!(one_value(&b, "SHOW work_mem").await, "7MB");
    assert_eq!(
        one_value(
            &b,
            "SELECT count(*) FROM pg_class WHERE relname = 'scratch'"
        )
        .await,
        "0"
    );
    assert_eq!(
        one_value(&b, "SELECT count(*) FROM pg_listening_channels()").await,
        "0"
    );
    // SQL-level EXECUTE of a statement prepared in an earlier transaction is a clear error, never another's statement.
    b.batch_execute("PREPARE mine AS SELECT 'b'").await.unwrap();
    let e = a.batch_execute("EXECUTE mine").await.unwrap_err();
    assert_eq!(sqlstate(&e), "26000");
    // Inside one transaction it works.
    let rows = a
        .simple_query("BEGIN; PREPARE p2 AS SELECT 'a2'; EXECUTE p2; COMMIT")
        .await
        .unwrap();
    assert!(rows
        .iter()
        .any(|m| matches!(m, SimpleQueryMessage::Row(r) if r.get(0) == Some("a2"))));
}

#[tokio::test]
async fn a_transaction_keeps_its_backend_and_errors_in_pipelines_behave() {
    let config = txn_config(2);
    tenant(&config, "t_tx").await;
    let proxy = start_proxy(config).await;
    let c = connect(&proxy, "alice@t_tx", "alice-pw", "").await.unwrap();
    let other = connect(&proxy, "alice@t_tx", "alice-pw", "").await.unwrap();
    c.batch_execute("BEGIN").await.unwrap();
    let pid = one_value(&c, "SELECT pg_backend_pid()").await;
    c.batch_execute("INSERT INTO contacts(name) VALUES ('in tx')")
        .await
        .unwrap();
    // Another client works meanwhile on the other connection.
    assert_eq!(
        one_value(&other, "SELECT count(*) FROM contacts").await,
        "0"
    );
    assert_eq!(one_value(&c, "SELECT pg_backend_pid()").await, pid);
    c.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        one_value(&other, "SELECT count(*) FROM contacts").await,
        "1"
    );
    // A failing statement inside a pipeline: the next ones are skipped, then all is well.
    let stmt = c.prepare("SELECT 10 / $1::int").await.unwrap();
    let (ok, bad, after) = tokio::join!(
        c.query_one(&stmt, &[&2i32]),
        c.query_one(&stmt, &[&0i32]),
        c.query_one(&stmt, &[&5i32])
    );
    assert_eq!(ok.unwrap().get::<_, i32>(0), 5);
    assert_eq!(sqlstate(&bad.unwrap_err()), "22012");
    assert_eq!(after.unwrap().get::<_, i32>(0), 2);
    let e = c.prepare("SELECT * FROM no_such_table").await.unwrap_err();
    assert_eq!(sqlstate(&e), "42P01");
    assert_eq!(
        c.query_one(&stmt, &[&1i32]).await.unwrap().get::<_, i32>(0),
        10
    );
}

#[tokio::test]
async fn statement_mode_refuses_transaction_blocks() {
    let mut config = txn_config(2);
    config.pool.pool_mode = PoolMode::Statement;
    tenant(&config, "t_stmt").await;
    let proxy = start_proxy(config).await;
    let c = connect(&proxy, "alice@t_stmt", "alice-pw", "")
        .await
        .unwrap();
    assert_eq!(one_value(&c, "SELECT 1").await, "1");
    let e = c.batch_execute("BEGIN").await;
    let e2 = c.batch_execute("SELECT 1").await;
    assert!(e.is_err() || e2.is_err(), "a transaction block was allowed");
    let c2 = connect(&proxy, "alice@t_stmt", "alice-pw", "")
        .await
        .unwrap();
    assert_eq!(one_value(&c2, "SELECT 2").await, "2");
}

#[tokio::test]
async fn pool_mode_per_tenant_from_the_registry() {
    let mut config = config();
    config.pool.default_pool_size = 1;
    config.pool.query_wait_timeout = 0.5;
    tenant(&config, "t_mode").await;
    let registry = admin("tenant_db").await;
    registry
        .execute("UPDATE commons.tenants SET config = '{\"pool_mode\": \"transaction\"}' WHERE id = 't_mode'", &[])
        .await
        .unwrap();
    let proxy = start_proxy(config).await;
    // In session mode the second client would wait out its timeout on a pool of one.
    let a = connect(&proxy, "alice@t_mode", "alice-pw", "")
        .await
        .unwrap();
    let b = connect(&proxy, "alice@t_mode", "alice-pw", "")
        .await
        .unwrap();
    assert_eq!(one_value(&a, "SELECT 1").await, "1");
    assert_eq!(one_value(&b, "SELECT 2").await, "2");
}

#[tokio::test]
async fn idle_transaction_and_client_idle_timeouts() {
    let mut config = txn_config(2);
    config.pool.idle_transaction_timeout = 0.4;
    config.pool.client_idle_timeout = 1.5;
    tenant(&config, "t_timeouts").await;
    let proxy = start_proxy(config).await;
    // A long query inside a transaction is not idleness.
    let busy = connect(&proxy, "alice@t_timeouts", "alice-pw", "")
        .await
        .unwrap();
    busy.batch_execute("BEGIN").await.unwrap();
    busy.batch_execute("SELECT pg_sleep(1)")
        .await
        .expect("a running query is not idle");
    busy.batch_execute("COMMIT").await.unwrap();
    // Sitting inside a transaction is.
    let idle_tx = connect(&proxy, "alice@t_timeouts", "alice-pw", "")
        .await
        .unwrap();
    idle_tx.batch_execute("BEGIN").await.unwrap();
    tokio::time::sleep(Duration::from_millis(900)).await;
    let e = idle_tx.batch_execute("SELECT 1").await.unwrap_err();
    assert!(e.is_closed() || sqlstate(&e) == "25P03", "{e}");
    // Its connection was freed: a pool of two still serves two clients.
    let a = connect(&proxy, "alice@t_timeouts", "alice-pw", "")
        .await
        .unwrap();
    a.batch_execute("BEGIN").await.unwrap();
    let b = connect(&proxy, "alice@t_timeouts", "alice-pw", "")
        .await
        .unwrap();
    assert_eq!(one_value(&b, "SELECT 2").await, "2");
    a.batch_execute("COMMIT").await.unwrap();
    // A client idle between transactions past client_idle_timeout is closed.
    let sleepy = connect(&proxy, "alice@t_timeouts", "alice-pw", "")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let e = sleepy.batch_execute("SELECT 1").await.unwrap_err();
    assert!(e.is_closed() || sqlstate(&e) == "57P05", "{e}");
}

#[tokio::test]
async fn max_client_conn_refuses_the_extra_client() {
    let mut config = txn_config(2);
    config.pool.max_client_conn = 2;
    tenant(&config, "t_maxconn").await;
    let proxy = start_proxy(config).await;
    let a = connect(&proxy, "alice@t_maxconn", "alice-pw", "")
        .await
        .unwrap();
    let b = connect(&proxy, "alice@t_maxconn", "alice-pw", "")
        .await
        .unwrap();
    let e = connect(&proxy, "alice@t_maxconn", "alice-pw", "")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "53300");
    drop(a);
    assert!(
        eventually(Duration::from_secs(3), || async {
            connect(&proxy, "alice@t_maxconn", "alice-pw", "")
                .await
                .is_ok()
        })
        .await
    );
    drop(b);
}
