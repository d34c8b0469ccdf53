//! End-to-end tests of the proxy core against a real PostgreSQL: tenant
//! resolution, isolation, authentication, the registry kept live, and the
//! relay (simple and extended protocol, COPY, notices, notifications,
//! cancel, disconnects, many clients on a small pool).

mod common;

use common::*;
use tokio_postgres::NoTls;

#[tokio::test]
async fn user_at_tenant_lands_in_its_schema() {
    let config = config();
    tenant(&config, "p_acme").await;
    let proxy = start_proxy(config).await;
    let client = connect(&proxy, "alice@p_acme", "alice-pw", "")
        .await
        .unwrap();
    assert_eq!(
        one_value(&client, "SHOW search_path").await,
        "tenant_p_acme, commons, public"
    );
    assert_eq!(
        one_value(&client, "SELECT current_setting('app.current_tenant')").await,
        "p_acme"
    );
    assert_eq!(
        one_value(&client, "SELECT current_user").await,
        "tenant_p_acme_rw"
    );
    assert_eq!(
        one_value(&client, "SELECT commons.get_current_tenant()").await,
        "p_acme"
    );
    // RESET ALL and DISCARD ALL keep the tenant's settings: they are the session defaults.
    for sql in ["SET search_path = public", "RESET ALL", "DISCARD ALL"] {
        client.batch_execute(sql).await.unwrap();
    }
    assert_eq!(
        one_value(&client, "SHOW search_path").await,
        "tenant_p_acme, commons, public"
    );
    assert_eq!(
        one_value(&client, "SELECT current_setting('app.current_tenant')").await,
        "p_acme"
    );
}

#[tokio::test]
async fn every_resolution_style_reaches_the_same_tenant() {
    let config = config();
    tenant(&config, "p_styles").await;
    let proxy = start_proxy(config).await;
    for (user, extra) in [
        ("alice@p_styles", ""),
        ("alice.p_styles", ""),
        ("alice", "options='-c tenant=p_styles'"),
        ("alice", "options='--tenant=p_styles'"),
        ("alice", "options='reference=p_styles'"),
    ] {
        let client = connect(&proxy, user, "alice-pw", extra)
            .await
            .unwrap_or_else(|e| panic!("{user} {extra}: {e}"));
        assert_eq!(
            one_value(&client, "SELECT current_setting('app.current_tenant')").await,
            "p_styles"
        );
    }
    // The database name as tenant: lands in the default service database.
    let addr = proxy.local_addr();
    let (client, conn) = tokio_postgres::connect(
        &format!(
            "host={} port={} user=alice password=alice-pw dbname=p_styles",
            addr.ip(),
            addr.port()
        ),
        NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    assert_eq!(
        one_value(&client, "SELECT current_database()").await,
        "crm_db"
    );
    // A second service database, chosen by name.
    let client = connect(&proxy, "alice@p_styles", "alice-pw", "dbname=product_db")
        .await
        .unwrap();
    assert_eq!(
        one_value(&client, "SELECT current_database()").await,
        "product_db"
    );
    assert_eq!(
        one_value(&client, "SELECT count(*) FROM products").await,
        "0"
    );
}

#[tokio::test]
async fn disagreeing_sources_and_bad_names_are_refused() {
    let config = config();
    tenant(&config, "p_dis_a").await;
    tenant(&config, "p_dis_b").await;
    let proxy = start_proxy(config).await;
    let e = connect(
        &proxy,
        "alice@p_dis_a",
        "alice-pw",
        "options='-c tenant=p_dis_b'",
    )
    .await
    .unwrap_err();
    assert_eq!(sqlstate(&e), "28000");
    let e = connect(&proxy, "alice@p_nope", "alice-pw", "")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "3D000");
    let e = connect(&proxy, "alice", "alice-pw", "").await.unwrap_err();
    assert_eq!(sqlstate(&e), "28000");
    let e = connect(&proxy, "alice@p_dis_a", "alice-pw", "dbname=other_db")
        .await
        .unwrap_err();
    assert!(["3D000", "28000"].contains(&sqlstate(&e).as_str()), "{e}");
    // Settings that confine the client are not the client's to choose.
    for opt in [
        "options='-c search_path=tenant_p_dis_b'",
        "options='-c app.current_tenant=p_dis_b'",
        "options='-c role=marvin'",
    ] {
        let e = connect(&proxy, "alice@p_dis_a", "alice-pw", opt)
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{opt}");
    }
}

#[tokio::test]
async fn a_tenant_cannot_reach_another_tenants_data() {
    let config = config();
    tenant(&config, "p_iso_a").await;
    tenant(&config, "p_iso_b").await;
    let proxy = start_proxy(config).await;
    let b = connect(&proxy, "alice@p_iso_b", "alice-pw", "")
        .await
        .unwrap();
    b.batch_execute("INSERT INTO contacts(name) VALUES ('secret of b')")
        .await
        .unwrap();

    let a = connect(&proxy, "alice@p_iso_a", "alice-pw", "")
        .await
        .unwrap();
    assert_eq!(one_value(&a, "SELECT count(*) FROM contacts").await, "0");
    for sql in [
        "SELECT * FROM tenant_p_iso_b.contacts",
        "INSERT INTO tenant_p_iso_b.contacts(name) VALUES ('x')",
        "SET ROLE tenant_p_iso_b_rw",
        "SET SESSION AUTHORIZATION tenant_p_iso_b_rw",
        "CREATE TABLE sneaky(x int)",
    ] {
        a.batch_execute("RESET ALL").await.unwrap();
        let e = a.batch_execute(sql).await.expect_err(sql);
        assert_eq!(sqlstate(&e), "42501", "{sql}: {e}");
    }
    // Pointing search_path at b's schema finds nothing: PostgreSQL skips
    // schemas the role may not use.
    a.batch_execute("SET search_path = tenant_p_iso_b")
        .await
        .unwrap();
    let e = a.batch_execute("SELECT * FROM contacts").await.unwrap_err();
    assert_eq!(sqlstate(&e), "42P01");
    a.batch_execute("RESET search_path").await.unwrap();
    // Claiming to be b in the GUC gives nothing either.
    a.batch_execute("SET app.current_tenant = 'p_iso_b'")
        .await
        .unwrap();
    let e = a
        .batch_execute("SELECT * FROM tenant_p_iso_b.contacts")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    // The registry database (it holds password secrets) is out of reach.
    let e = connect(&proxy, "alice@p_iso_a", "alice-pw", "dbname=tenant_db")
        .await
        .unwrap_err();
    assert!(["3D000", "28000"].contains(&sqlstate(&e).as_str()), "{e}");
    // b's row is intact.
    assert_eq!(
        one_value(&b, "SELECT name FROM contacts").await,
        "secret of b"
    );
}

#[tokio::test]
async fn wrong_password_and_unknown_user_look_the_same() {
    let config = config();
    tenant(&config, "p_auth").await;
    let proxy = start_proxy(config).await;
    let wrong = connect(&proxy, "alice@p_auth", "nope", "")
        .await
        .unwrap_err();
    let unknown = connect(&proxy, "mallory@p_auth", "nope", "")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&wrong), "28P01");
    assert_eq!(sqlstate(&unknown), "28P01");
    let msg = |e: &tokio_postgres::Error| {
        e.as_db_error()
            .map(|d| d.message().replace("mallory", "alice"))
            .unwrap_or_default()
    };
    assert_eq!(msg(&wrong), msg(&unknown));
    // The read-only user gets the read-only role.
    let reader = connect(&proxy, "reader@p_auth", "reader-pw", "")
        .await
        .unwrap();
    assert_eq!(
        one_value(&reader, "SELECT current_user").await,
        "tenant_p_auth_ro"
    );
    let e = reader
        .batch_execute("INSERT INTO contacts(name) VALUES ('x')")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
}

#[tokio::test]
async fn md5_and_auth_file() {
    let mut config = config();
    tenant(&config, "p_md5").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("userlist.txt");
    let md5 = postgres_protocol::password::md5(b"bob-pw", "bob@p_md5");
    std::fs::write(
        &file,
        format!("; comment\n\"bob@p_md5\" \"{md5}\"\n\"carol@p_md5\" \"carol-pw\"\n"),
    )
    .unwrap();
    config.auth.auth_file = file.display().to_string();
    config.auth.method = pgtenant::config::AuthMethod::Md5;
    let proxy = start_proxy(config).await;
    // md5 secrets are salted with the full name the client logs in as.
    let bob = connect(&proxy, "bob@p_md5", "bob-pw", "").await.unwrap();
    assert_eq!(
        one_value(&bob, "SELECT current_setting('app.current_tenant')").await,
        "p_md5"
    );
    let carol = connect(&proxy, "carol@p_md5", "carol-pw", "").await;
    assert!(carol.is_ok(), "{carol:?}");
    let e = connect(&proxy, "carol@p_md5", "wrong", "")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "28P01");
}
