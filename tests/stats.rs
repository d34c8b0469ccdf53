//! Per-pool traffic counters (what SHOW STATS and /metrics report) count
//! queries, transactions, bytes and waits as PgBouncer does, in session and
//! transaction pooling.

mod common;

use common::*;
use pgtenant::config::PoolMode;
use pgtenant::pool::PoolView;
use pgtenant::server::Proxy;

fn view_of(proxy: &Proxy, tenant: &str) -> PoolView {
    let views = proxy.context().pools.views();
    let mut mine: Vec<_> = views
        .into_iter()
        .filter(|v| v.key.tenant().is_some_and(|t| t.as_str() == tenant))
        .collect();
    assert_eq!(mine.len(), 1, "one pool for {tenant}");
    mine.remove(0)
}

async fn counts_in(mode: PoolMode, tenant_id: &str) {
    let mut config = config();
    config.pool.pool_mode = mode;
    config.pool.default_pool_size = 2;
    tenant(&config, tenant_id).await;
    let proxy = start_proxy(config).await;
    let user = format!("alice@{tenant_id}");
    let client = connect(&proxy, &user, "alice-pw", "").await.unwrap();
    let before = view_of(&proxy, tenant_id).stats;

    // Three autocommit statements, then one explicit transaction of three.
    for _ in 0..3 {
        client.simple_query("SELECT 1").await.unwrap();
    }
    client
        .batch_execute("BEGIN; SELECT pg_sleep(0.02); COMMIT")
        .await
        .unwrap();
    // Extended protocol: one Sync, one query.
    let n: i32 = client
        .query_one("SELECT $1::int + 1", &[&41i32])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 42);

    let after = view_of(&proxy, tenant_id);
    let d = after.stats.since(&before);
    // tokio-postgres' prepare is a Sync of its own: 3 + 1 + prepare + execute.
    assert_eq!(d.query_count, 6, "{mode:?}: {d:?}");
    assert_eq!(d.xact_count, 6, "{mode:?}: {d:?}");
    // PostgreSQL times pg_sleep by the wall clock and the proxy by the
    // monotonic one: a clock being slewed makes them differ by a little.
    assert!(
        d.xact_time_us >= 15_000,
        "{mode:?}: pg_sleep not timed: {d:?}"
    );
    assert!(d.query_time_us >= 15_000, "{mode:?}: {d:?}");
    assert!(d.received > 60 && d.sent > d.received, "{mode:?}: {d:?}");
    assert_eq!((after.open, after.waiting), (1, 0));
    drop(client);
    proxy.shutdown(std::time::Duration::from_secs(1)).await;
}

#[tokio::test]
async fn session_pooling_counts_queries_transactions_and_bytes() {
    counts_in(PoolMode::Session, "st_session").await;
}

#[tokio::test]
async fn transaction_pooling_counts_queries_transactions_and_bytes() {
    counts_in(PoolMode::Transaction, "st_txn").await;
}

#[tokio::test]
async fn waits_are_counted_and_shown() {
    let mut config = config();
    config.pool.pool_mode = PoolMode::Transaction;
    config.pool.default_pool_size = 1;
    tenant(&config, "st_wait").await;
    let proxy = start_proxy(config).await;
    let holder = connect(&proxy, "alice@st_wait", "alice-pw", "")
        .await
        .unwrap();
    let waiter = connect(&proxy, "alice@st_wait", "alice-pw", "")
        .await
        .unwrap();
    holder.batch_execute("BEGIN").await.unwrap();
    let before = view_of(&proxy, "st_wait").stats;
    let waiting = tokio::spawn(async move { waiter.simple_query("SELECT 1").await.map(|_| ()) });
    assert!(
        eventually(std::time::Duration::from_secs(5), || async {
            view_of(&proxy, "st_wait").waiting == 1
        })
        .await,
        "the second client is seen waiting"
    );
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(view_of(&proxy, "st_wait").max_wait >= std::time::Duration::from_millis(50));
    holder.batch_execute("COMMIT").await.unwrap();
    waiting.await.unwrap().unwrap();
    let d = view_of(&proxy, "st_wait").stats.since(&before);
    // The holder kept its connection from BEGIN; only the waiter was assigned one.
    assert_eq!(d.server_assignments, 1, "{d:?}");
    assert!(d.wait_time_us >= 50_000, "{d:?}");
    assert_eq!(view_of(&proxy, "st_wait").waiting, 0);
}
