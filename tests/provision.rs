//! Integration test for `pgtenant::provision`: one throwaway PostgreSQL cluster
//! for the whole file, `init` and `create_tenant` run twice, then real logins
//! as the tenant roles check what they can and cannot do.
//!
//! Skipped (with a message) when the PostgreSQL server binaries are missing.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use pgtenant::config::Config;
use pgtenant::provision::{self, ClusterOptions, LocalCluster, ProvisionError};
use pgtenant::tenant::id::{role_password, AccessLevel, TenantId};
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, Client, NoTls};

async fn login(
    cluster: &LocalCluster,
    user: &str,
    password: &str,
    db: &str,
) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::Config::new()
        .host(&cluster.host)
        .port(cluster.port)
        .user(user)
        .password(password)
        .dbname(db)
        .connect(NoTls)
        .await?;
    tokio::spawn(conn);
    Ok(client)
}

async fn tenant_login(
    cluster: &LocalCluster,
    config: &Config,
    id: &TenantId,
    access: AccessLevel,
    db: &str,
) -> Result<Client, tokio_postgres::Error> {
    let role = id.role(access);
    login(
        cluster,
        &role,
        &role_password(&config.backend.tenant_role_secret, &role),
        db,
    )
    .await
}

fn assert_denied(result: Result<impl std::fmt::Debug, tokio_postgres::Error>, what: &str) {
    match result {
        Ok(v) => panic!("{what}: expected permission denied, got {v:?}"),
        Err(e) => assert_eq!(
            e.code(),
            Some(&SqlState::INSUFFICIENT_PRIVILEGE),
            "{what}: {e:?}"
        ),
    }
}

#[tokio::test]
async fn provisioning_end_to_end() {
    if !provision::server_binaries_available() {
        eprintln!("skipping: PostgreSQL server binaries not installed");
        return;
    }
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(ClusterOptions {
        dir: tmp.path().join("pg"),
        port: 0,
        superuser: "marvin".into(),
        password: "s3cret'\\pw".into(),
        remove_on_exit: true,
    })
    .unwrap();
    eprintln!("cluster up on port {} in {:?}", cluster.port, t0.elapsed());

    let mut config = Config::default();
    config.backend.host = cluster.host.clone();
    config.backend.port = cluster.port;
    config.backend.admin_user = cluster.superuser.clone();
    config.backend.admin_password = cluster.password.clone();
    config.provision.migrations_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/sql").into();

    let t = Instant::now();
    provision::init(&config).await.unwrap();
    provision::init(&config).await.unwrap();
    eprintln!("init x2 in {:?}", t.elapsed());

    let acme = TenantId::parse("acme").unwrap();
    let globex = TenantId::parse("globex").unwrap();
    let t = Instant::now();
    provision::create_tenant(&config, &acme, "Acme Corp")
        .await
        .unwrap();
    provision::create_tenant(&config, &acme, "").await.unwrap();
    provision::create_tenant(&config, &globex, "Globex")
        .await
        .unwrap();
    provision::add_user(&config, &acme, "alice", "alice", AccessLevel::ReadWrite)
        .await
        .unwrap();
    provision::add_user(&config, &acme, "alice", "alice2", AccessLevel::ReadOnly)
        .await
        .unwrap();
    // Concurrent creations of different tenants must not trip over shared catalog rows.
    let many: Vec<TenantId> = (0..6)
        .map(|i| TenantId::parse(&format!("par{i}")).unwrap())
        .collect();
    let results = futures_util::future::join_all(
        many.iter()
            .map(|id| provision::create_tenant(&config, id, "")),
    )
    .await;
    for r in results {
        r.unwrap();
    }
    let nobody = TenantId::parse("nobody").unwrap();
    assert!(
        provision::add_user(&config, &nobody, "bob", "x", AccessLevel::ReadWrite)
            .await
            .is_err()
    );
    eprintln!("tenants in {:?}", t.elapsed());

    // Registry contents.
    let registry = provision::admin_connect(&config, "tenant_db")
        .await
        .unwrap();
    let row = registry
        .query_one(
            "SELECT name, status FROM commons.tenants WHERE id = 'acme'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, String>(1)),
        ("Acme Corp".into(), "active".into())
    );
    let row = registry
        .query_one("SELECT secret, access FROM commons.tenant_users WHERE tenant_id = 'acme' AND username = 'alice'", &[])
        .await
        .unwrap();
    assert!(row.get::<_, String>(0).starts_with("SCRAM-SHA-256$"));
    assert_eq!(row.get::<_, String>(1), "ro");
    let n: i64 = registry
        .query_one(
            "SELECT count(*) FROM commons.schema_migrations WHERE tenant_id = 'acme'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2, "one migration per service database, recorded once");

    // Registry changes are announced.
    let (listener, mut conn) = tokio_postgres::connect(&cluster.conninfo("tenant_db"), NoTls)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(msg)) = messages.next().await {
            if let AsyncMessage::Notification(n) = msg {
                let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
            }
        }
    });
    listener
        .batch_execute("LISTEN pgtenant_registry")
        .await
        .unwrap();
    registry
        .execute(
            "UPDATE commons.tenants SET config = '{\"pool_size\": 3}' WHERE id = 'globex'",
            &[],
        )
        .await
        .unwrap();
    let note = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(note, ("pgtenant_registry".into(), "globex".into()));

    // Schemas and tables exist.
    let crm_admin = provision::admin_connect(&config, "crm_db").await.unwrap();
    for (db, table) in [
        ("crm_db", "tenant_acme.contacts"),
        ("crm_db", "tenant_globex.contacts"),
        ("product_db", "tenant_acme.products"),
    ] {
        let c = provision::admin_connect(&config, db).await.unwrap();
        let found: bool = c
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
            .await
            .unwrap()
            .get(0);
        assert!(found, "{table} in {db}");
    }
    crm_admin
        .batch_execute("INSERT INTO tenant_globex.contacts (name) VALUES ('globex secret')")
        .await
        .unwrap();

    // The rw role works on its own schema, unqualified (role search_path) and qualified.
    let rw = tenant_login(&cluster, &config, &acme, AccessLevel::ReadWrite, "crm_db")
        .await
        .unwrap();
    rw.execute(
        "INSERT INTO contacts (name, email) VALUES ($1, $2)",
        &[&"Wile E.", &"wile@acme.example"],
    )
    .await
    .unwrap();
    let names: Vec<String> = rw
        .query("SELECT name FROM tenant_acme.contacts", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(names, ["Wile E."]);
    let countries: i64 = rw
        .query_one("SELECT count(*) FROM commons.countries", &[])
        .await
        .unwrap()
        .get(0);
    assert!(countries > 0);

    // ... and nothing else.
    assert_denied(
        rw.query("SELECT * FROM tenant_globex.contacts", &[]).await,
        "other tenant's table",
    );
    assert_denied(
        rw.batch_execute("CREATE TABLE tenant_acme.evil (i int)")
            .await,
        "CREATE in own schema",
    );
    assert_denied(
        rw.batch_execute("CREATE TABLE public.evil (i int)").await,
        "CREATE in public",
    );
    assert_denied(
        rw.batch_execute("CREATE TABLE commons.evil (i int)").await,
        "CREATE in commons",
    );
    assert_denied(
        rw.batch_execute("CREATE SCHEMA evil").await,
        "CREATE SCHEMA",
    );
    assert_denied(
        rw.execute("DELETE FROM commons.countries", &[]).await,
        "write commons",
    );
    assert_denied(
        tenant_login(
            &cluster,
            &config,
            &acme,
            AccessLevel::ReadWrite,
            "tenant_db",
        )
        .await
        .map(|_| ()),
        "connect to registry",
    );

    // The ro role reads only.
    let ro = tenant_login(&cluster, &config, &acme, AccessLevel::ReadOnly, "crm_db")
        .await
        .unwrap();
    let n: i64 = ro
        .query_one("SELECT count(*) FROM contacts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    assert_denied(
        ro.execute("INSERT INTO contacts (name) VALUES ('x')", &[])
            .await,
        "ro insert",
    );
    let pr = tenant_login(
        &cluster,
        &config,
        &acme,
        AccessLevel::ReadWrite,
        "product_db",
    )
    .await
    .unwrap();
    pr.execute(
        "INSERT INTO products (sku, name, price) VALUES ('A-1', 'Anvil', 9.99)",
        &[],
    )
    .await
    .unwrap();

    // Tenant context and permission functions.
    let err = rw
        .query_one("SELECT commons.get_current_tenant()", &[])
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("app.current_tenant")
            || format!("{err:?}").contains("app.current_tenant"),
        "{err:?}"
    );
    rw.batch_execute("SET app.current_tenant = 'acme'")
        .await
        .unwrap();
    let current: String = rw
        .query_one("SELECT commons.get_current_tenant()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(current, "acme");
    let no: bool = rw
        .query_one("SELECT commons.has_permission('contacts.read')", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!no);
    rw.batch_execute(r#"SET app.permissions = '["contacts.read"]'"#)
        .await
        .unwrap();
    let row = rw
        .query_one("SELECT commons.has_permission('contacts.read'), commons.has_permission('contacts.write')", &[])
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0) && !row.get::<_, bool>(1));
    rw.batch_execute(r#"SET app.permissions = '{"contacts.write": true, "contacts.read": false}'"#)
        .await
        .unwrap();
    let row = rw
        .query_one("SELECT commons.has_permission('contacts.read'), commons.has_permission('contacts.write')", &[])
        .await
        .unwrap();
    assert!(!row.get::<_, bool>(0) && row.get::<_, bool>(1));

    // A changed migration is refused, naming the file.
    let other = tempfile::tempdir().unwrap();
    let mdir = other.path().join("crm_db/migrations");
    std::fs::create_dir_all(&mdir).unwrap();
    std::fs::write(
        mdir.join("001_contacts.sql"),
        "CREATE TABLE IF NOT EXISTS contacts (id int);",
    )
    .unwrap();
    let mut changed = config.clone();
    changed.provision.migrations_dir = other.path().display().to_string();
    match provision::create_tenant(&changed, &acme, "").await {
        Err(ProvisionError::Migration { file, message }) => {
            assert!(file.ends_with("001_contacts.sql"), "{file}: {message}");
        }
        other => panic!("expected a migration error, got {other:?}"),
    }

    // Dropping the cluster stops the server and removes its directory.
    drop((rw, ro, pr, registry, listener, crm_admin));
    let pid = cluster.server_pid().expect("postmaster.pid");
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    let dir = tmp.path().join("pg");
    let t = Instant::now();
    drop(cluster);
    eprintln!("cluster stopped in {:?}", t.elapsed());
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "postgres {pid} still running"
    );
    assert!(!dir.exists(), "cluster dir not removed");
    eprintln!("total {:?}", t0.elapsed());
}
