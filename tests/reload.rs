//! RELOAD / SIGHUP: a re-read configuration applies live (pool sizes,
//! limits, the auth file), a broken one changes nothing, and settings that
//! need a restart are reported and kept.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use pgtenant::config::{Config, PoolMode};
use pgtenant::reload::ConfigSource;

fn source_of(slot: &Arc<Mutex<Result<Config, String>>>) -> ConfigSource {
    let slot = Arc::clone(slot);
    Arc::new(move || slot.lock().unwrap().clone())
}

#[tokio::test]
async fn pool_size_and_client_limit_apply_live_and_errors_change_nothing() {
    let mut config = config();
    config.pool.pool_mode = PoolMode::Transaction;
    config.pool.default_pool_size = 1;
    config.pool.query_wait_timeout = 1.0;
    tenant(&config, "rl_live").await;
    let slot = Arc::new(Mutex::new(Ok(config.clone())));
    let proxy = start_proxy(config.clone()).await;
    proxy.set_config_source(source_of(&slot));

    let a = connect(&proxy, "alice@rl_live", "alice-pw", "")
        .await
        .unwrap();
    let b = connect(&proxy, "alice@rl_live", "alice-pw", "")
        .await
        .unwrap();
    a.batch_execute("BEGIN").await.unwrap();
    // Pool of one, held by a: b waits out query_wait_timeout.
    let err = b.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&err), "53300");
    a.batch_execute("COMMIT").await.unwrap();

    // A broken configuration: reported, nothing changes.
    *slot.lock().unwrap() = Err("pgtenant.toml:3: key \"pool.bogus\": unknown key".into());
    let err = proxy.reload().unwrap_err();
    assert!(err.to_string().contains("pool.bogus"), "{err}");
    assert_eq!(proxy.context().config().pool.default_pool_size, 1);

    // Pool size 2, a new listen address (needs a restart), max_client_conn 3.
    let mut bigger = config.clone();
    bigger.pool.default_pool_size = 2;
    bigger.pool.max_client_conn = 3;
    bigger.listen.addr = "127.0.0.1:1".parse().unwrap();
    *slot.lock().unwrap() = Ok(bigger);
    let restart = proxy.reload().unwrap();
    assert_eq!(restart, vec!["listen".to_string()]);
    assert_eq!(
        proxy.context().config().listen.addr,
        config.listen.addr,
        "the listen address in force stays"
    );

    let b = connect(&proxy, "alice@rl_live", "alice-pw", "")
        .await
        .unwrap();
    a.batch_execute("BEGIN").await.unwrap();
    b.batch_execute("BEGIN").await.unwrap();
    let pids: Vec<String> = [&a, &b]
        .iter()
        .map(|c| c.simple_query("SELECT pg_backend_pid()::text"))
        .collect::<futures_util::future::JoinAll<_>>()
        .await
        .into_iter()
        .map(|r| match &r.unwrap()[1] {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).unwrap().to_string(),
            _ => panic!("a row"),
        })
        .collect();
    assert_ne!(pids[0], pids[1], "two transactions at once on a pool of 2");
    a.batch_execute("COMMIT").await.unwrap();
    b.batch_execute("COMMIT").await.unwrap();

    // The first b was closed by its wait timeout; a, b and c make three,
    // and a fourth is over max_client_conn.
    let _c = connect(&proxy, "alice@rl_live", "alice-pw", "")
        .await
        .unwrap();
    let Err(err) = connect(&proxy, "alice@rl_live", "alice-pw", "").await else {
        panic!("a fourth client is refused");
    };
    assert_eq!(sqlstate(&err), "53300");
}

#[tokio::test]
async fn the_auth_file_is_read_again() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("userlist.txt");
    std::fs::write(&file, "\"bob@rl_auth\" \"first-pw\"\n").unwrap();
    let mut config = config();
    config.auth.auth_file = file.display().to_string();
    tenant(&config, "rl_auth").await;
    let slot = Arc::new(Mutex::new(Ok(config.clone())));
    let proxy = start_proxy(config).await;
    proxy.set_config_source(source_of(&slot));
    connect(&proxy, "bob@rl_auth", "first-pw", "")
        .await
        .unwrap();

    std::fs::write(&file, "\"bob@rl_auth\" \"second-pw\"\n").unwrap();
    proxy.reload().unwrap();
    let Err(err) = connect(&proxy, "bob@rl_auth", "first-pw", "").await else {
        panic!("the old password is refused");
    };
    assert_eq!(sqlstate(&err), "28P01");
    connect(&proxy, "bob@rl_auth", "second-pw", "")
        .await
        .unwrap();

    // An unreadable auth file: the reload fails and the secrets in force stay.
    std::fs::remove_file(&file).unwrap();
    assert!(proxy.reload().is_err());
    connect(&proxy, "bob@rl_auth", "second-pw", "")
        .await
        .unwrap();
}
