//! Parked clients: a transaction-pooled client idle for a second or two
//! waits in the parking lot, without a task, and comes back whole when it
//! sends something: its prepared statements, its reported settings, its
//! tenant. Whatever reaches an idle client reaches a parked one too: its
//! own hang-up, KILL, a suspended tenant, `client_idle_timeout`, a drain.

mod common;

use std::time::Duration;

use common::*;
use pgtenant::config::{Config, PoolMode};
use pgtenant::server::Proxy;

const LIMIT: Duration = Duration::from_secs(15);

type Connection = Watched;

/// A proxy in transaction pooling with tenant `id`.
async fn proxy_for(id: &str, adjust: impl FnOnce(&mut Config)) -> (Proxy, Config) {
    let mut config = config();
    config.pool.pool_mode = PoolMode::Transaction;
    config.pool.default_pool_size = 2;
    adjust(&mut config);
    tenant(&config, id).await;
    (start_proxy(config.clone()).await, config)
}

/// Waits until `n` clients are parked.
async fn parked(proxy: &Proxy, n: usize) {
    let ctx = proxy.context();
    let got = eventually(LIMIT, || async { ctx.parked_clients() == n }).await;
    assert!(
        got,
        "{n} clients parked (now {})",
        proxy.context().parked_clients()
    );
}

/// Waits (bounded) for the proxy to close `connection`; its SQLSTATE.
async fn closed_with(connection: Connection) -> String {
    let ended = tokio::time::timeout(LIMIT, connection)
        .await
        .expect("the proxy closes the client")
        .unwrap();
    sqlstate(&ended.expect_err("closed with an error"))
}

#[tokio::test]
async fn a_parked_client_comes_back_with_its_statements_settings_and_tenant() {
    let (proxy, _config) = proxy_for("pk_whole", |_| {}).await;
    let (client, _conn) = watched(&proxy, "pk_whole").await;
    let plus = client.prepare("SELECT $1::int4 + 1").await.unwrap();
    client
        .batch_execute("SET application_name = 'parked_app'")
        .await
        .unwrap();
    parked(&proxy, 1).await;
    // Listed and counted all along, as idle.
    assert_eq!(proxy.context().client_list.len(), 1);

    let row = client.query_one(&plus, &[&41i32]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42, "the prepared statement survived");
    assert_eq!(
        one_value(&client, "SHOW application_name").await,
        "parked_app"
    );
    assert_eq!(
        one_value(&client, "SELECT current_setting('app.current_tenant')").await,
        "pk_whole"
    );
    // Parked and back again, many times over: still the same client.
    parked(&proxy, 1).await;
    let row = client.query_one(&plus, &[&1i32]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 2);
    assert_eq!(proxy.context().client_list.len(), 1);
}

#[tokio::test]
async fn a_parked_client_that_leaves_gives_back_its_places() {
    let (proxy, _config) = proxy_for("pk_leave", |_| {}).await;
    let ctx = proxy.context();
    let (polite, _c1) = watched(&proxy, "pk_leave").await;
    let (rude, rude_conn) = watched(&proxy, "pk_leave").await;
    assert_eq!(one_value(&rude, "SELECT 1").await, "1");
    parked(&proxy, 2).await;
    // Terminate from one, a bare hang-up (no Terminate) from the other.
    drop(polite);
    rude_conn.abort();
    let gone = eventually(LIMIT, || async {
        ctx.parked_clients() == 0
            && ctx.client_list.is_empty()
            && ctx.clients.load(std::sync::atomic::Ordering::Acquire) == 0
            && ctx.tenant_clients.is_empty()
    })
    .await;
    assert!(
        gone,
        "parked {}, listed {}",
        ctx.parked_clients(),
        ctx.client_list.len()
    );
    drop(rude);
}

#[tokio::test]
async fn kill_and_suspend_reach_parked_clients() {
    let (proxy, config) = proxy_for("pk_kill", |_| {}).await;
    let (_k, killed) = watched(&proxy, "pk_kill").await;
    parked(&proxy, 1).await;
    pgtenant::provision::suspend_tenant_now(
        &config,
        &pgtenant::tenant::TenantId::parse("pk_kill").unwrap(),
    )
    .await
    .unwrap();
    let ended = tokio::time::timeout(LIMIT, killed)
        .await
        .expect("the parked client is closed")
        .unwrap();
    // KILL and evictions close without an error message.
    assert!(ended.is_err(), "the connection was closed by the proxy");
    assert!(eventually(LIMIT, || async { proxy.context().client_list.is_empty() }).await);

    let (proxy, config) = proxy_for("pk_susp", |_| {}).await;
    let (_s, suspended) = watched(&proxy, "pk_susp").await;
    parked(&proxy, 1).await;
    pgtenant::provision::suspend_tenant(
        &config,
        &pgtenant::tenant::TenantId::parse("pk_susp").unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(closed_with(suspended).await, "57P03");
}

#[tokio::test]
async fn client_idle_timeout_ends_a_parked_client() {
    let (proxy, _config) = proxy_for("pk_cidle", |c| c.pool.client_idle_timeout = 4.0).await;
    let (_client, connection) = watched(&proxy, "pk_cidle").await;
    let since = std::time::Instant::now();
    parked(&proxy, 1).await;
    assert!(
        since.elapsed() < Duration::from_secs(4),
        "parked before its timeout"
    );
    assert_eq!(closed_with(connection).await, "57P05");
    assert!(
        since.elapsed() >= Duration::from_secs(4),
        "not before its timeout"
    );
    assert_eq!(proxy.context().parked_clients(), 0);
}

#[tokio::test]
async fn a_drain_tells_parked_clients_and_waits_for_them() {
    let (proxy, _config) = proxy_for("pk_drain", |_| {}).await;
    let (_client, connection) = watched(&proxy, "pk_drain").await;
    parked(&proxy, 1).await;
    let ctx = std::sync::Arc::clone(proxy.context());
    let drained = tokio::spawn(proxy.shutdown(LIMIT));
    assert_eq!(closed_with(connection).await, "57P01");
    tokio::time::timeout(LIMIT, drained)
        .await
        .expect("the drain ends")
        .unwrap();
    assert!(ctx.client_list.is_empty(), "the drained client left");
}
