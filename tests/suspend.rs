//! A plain `tenant suspend`: new logins are refused (57P03) and connected
//! clients are closed at their next transaction boundary, told why: one
//! idle between transactions at once, one inside a transaction once it
//! ends; a resume before the boundary lets the client go on.

mod common;

use std::time::Duration;

use common::*;
use pgtenant::config::PoolMode;
use pgtenant::provision;
use pgtenant::server::Proxy;
use pgtenant::tenant::{TenantId, TenantStatus};

const LIMIT: Duration = Duration::from_secs(15);

type Connection = Watched;

/// Waits (bounded) for the proxy to close `connection`; its SQLSTATE and message.
async fn closed_with(connection: Connection) -> (String, String) {
    let ended = tokio::time::timeout(LIMIT, connection)
        .await
        .expect("the proxy closes the client")
        .unwrap();
    let e = ended.expect_err("closed with an error");
    let message = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    (sqlstate(&e), message)
}

/// Changes the tenant's status and waits until this proxy has heard of it.
async fn set_status(proxy: &Proxy, tenant: &TenantId, suspend: bool) {
    let config = proxy.context().config();
    let (wanted, changed) = if suspend {
        let r = provision::suspend_tenant(&config, tenant).await;
        (TenantStatus::Suspended, r)
    } else {
        let r = provision::resume_tenant(&config, tenant).await;
        (TenantStatus::Active, r)
    };
    changed.expect("status changed");
    let heard = proxy
        .context()
        .registry
        .wait_for(tenant, LIMIT, |t| t.is_some_and(|t| t.status == wanted))
        .await;
    assert!(heard, "the proxy heard of the change");
}

async fn new_login(proxy: &Proxy, tenant: &str) -> Result<tokio_postgres::Client, String> {
    connect(proxy, &format!("alice@{tenant}"), "alice-pw", "")
        .await
        .map_err(|e| sqlstate(&e))
}

async fn suspend_closes_clients_at_their_boundary(id: &str, mode: PoolMode) {
    let mut config = config();
    config.pool.pool_mode = mode;
    let tenant = tenant(&config, id).await;
    let proxy = start_proxy(config).await;
    let (busy, busy_conn) = watched(&proxy, id).await;
    let (idle, idle_conn) = watched(&proxy, id).await;
    assert_eq!(one_value(&idle, "SELECT 1").await, "1");
    busy.batch_execute("BEGIN; INSERT INTO contacts (name) VALUES ('kept')")
        .await
        .unwrap();

    set_status(&proxy, &tenant, true).await;
    // The idle client goes at once, told why.
    let (code, message) = closed_with(idle_conn).await;
    assert_eq!(code, "57P03");
    assert_eq!(message, format!("tenant \"{id}\" is suspended"));
    // The one inside a transaction finishes it first...
    let n = one_value(&busy, "SELECT count(*) FROM contacts").await;
    assert_eq!(n, "1");
    busy.batch_execute("COMMIT")
        .await
        .expect("the open transaction commits");
    // ... then goes.
    assert_eq!(closed_with(busy_conn).await.0, "57P03");
    assert!(busy.simple_query("SELECT 1").await.is_err());
    assert_eq!(new_login(&proxy, id).await.err().as_deref(), Some("57P03"));
    let kept: i64 = admin("crm_db")
        .await
        .query_one(
            &format!("SELECT count(*) FROM tenant_{id}.contacts WHERE name = 'kept'"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 1, "the transaction was committed, not rolled back");

    set_status(&proxy, &tenant, false).await;
    let again = new_login(&proxy, id).await.expect("resumed: logins work");
    assert_eq!(one_value(&again, "SELECT 2").await, "2");
    proxy.shutdown(Duration::ZERO).await;
}

#[tokio::test]
async fn suspend_closes_transaction_pooled_clients_at_their_boundary() {
    suspend_closes_clients_at_their_boundary("sus_tx", PoolMode::Transaction).await;
}

#[tokio::test]
async fn suspend_closes_session_pooled_clients_at_their_boundary() {
    suspend_closes_clients_at_their_boundary("sus_sess", PoolMode::Session).await;
}

async fn resume_before_the_boundary_keeps_the_client(id: &str, mode: PoolMode) {
    let mut config = config();
    config.pool.pool_mode = mode;
    let tenant = tenant(&config, id).await;
    let proxy = start_proxy(config).await;
    let (busy, busy_conn) = watched(&proxy, id).await;
    busy.batch_execute("BEGIN; SELECT 1").await.unwrap();

    set_status(&proxy, &tenant, true).await;
    assert_eq!(new_login(&proxy, id).await.err().as_deref(), Some("57P03"));
    set_status(&proxy, &tenant, false).await;
    busy.batch_execute("COMMIT").await.unwrap();
    // Past its boundary, with the wake-up of the suspension already had.
    for i in 0..5 {
        let got = one_value(&busy, &format!("SELECT {i}")).await;
        assert_eq!(got, i.to_string());
    }
    assert!(
        !busy_conn.is_finished(),
        "the resumed tenant's client stays"
    );
    proxy.shutdown(Duration::ZERO).await;
}

#[tokio::test]
async fn resume_before_the_boundary_keeps_a_transaction_pooled_client() {
    resume_before_the_boundary_keeps_the_client("sus_res_tx", PoolMode::Transaction).await;
}

#[tokio::test]
async fn resume_before_the_boundary_keeps_a_session_pooled_client() {
    resume_before_the_boundary_keeps_the_client("sus_res_sess", PoolMode::Session).await;
}
