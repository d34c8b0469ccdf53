//! Dedicated tenants: a tenant created with `--tier dedicated --backend
//! NAME` lives on a second PostgreSQL cluster (started here, beside the
//! harness's shared one) for its whole life — provisioning, the proxy's
//! server connections, migrations, drift, show, backup, drop and restore —
//! while the registry stays on the shared cluster.

mod common;

use std::sync::OnceLock;

use pgtenant::config::{Config, DedicatedBackend};
use pgtenant::provision::{
    self, lifecycle::DropOptions, ClusterOptions, LocalCluster, MigrateOptions, Tier,
};
use pgtenant::tenant::{AccessLevel, TenantId};

/// The dedicated cluster, started once for this binary.
fn dedicated() -> &'static LocalCluster {
    static CLUSTER: OnceLock<LocalCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("pgtenant-dedicated-")
            .tempdir()
            .expect("temp dir")
            .keep();
        LocalCluster::start(ClusterOptions {
            dir,
            port: 0,
            superuser: "marvin".into(),
            password: "marvin-dedicated".into(),
            remove_on_exit: true,
        })
        .expect("start the dedicated PostgreSQL")
    })
}

/// The harness's config with `[backends.eu1]` naming the dedicated cluster.
fn config_with_eu1() -> Config {
    let d = dedicated();
    let mut config = common::config();
    config.backends.insert(
        "eu1".into(),
        DedicatedBackend {
            host: d.host.clone(),
            port: d.port,
            admin_user: Some(d.superuser.clone()),
            admin_password: Some(d.password.clone()),
            maintenance_database: None,
        },
    );
    config
}

/// A connection to `db` on the dedicated cluster as its superuser.
async fn on_dedicated(db: &str) -> tokio_postgres::Client {
    let d = dedicated();
    common::connect_direct(&d.host, d.port, &d.superuser, &d.password, db).await
}

async fn schema_exists(client: &tokio_postgres::Client, schema: &str) -> bool {
    client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
            &[&schema],
        )
        .await
        .unwrap()
        .get(0)
}

async fn role_exists(client: &tokio_postgres::Client, role: &str) -> bool {
    client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)",
            &[&role],
        )
        .await
        .unwrap()
        .get(0)
}

async fn create_dedicated(config: &Config, id: &str) -> TenantId {
    let id = TenantId::parse(id).unwrap();
    provision::create_tenant_on(config, &id, "Dedicated", Some(Tier::Dedicated("eu1")))
        .await
        .expect("create a dedicated tenant");
    provision::add_user(config, &id, "alice", "alice-pw", AccessLevel::ReadWrite)
        .await
        .unwrap();
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dedicated_tenant_lives_and_is_served_on_its_own_cluster() {
    let config = config_with_eu1();
    let id = create_dedicated(&config, "ded_life").await;
    let shared_tenant = common::tenant(&config, "ded_shared_one").await;
    let schema = id.schema();
    let role = id.role(AccessLevel::ReadWrite);

    // Provisioned on the dedicated cluster only; registered on the shared one.
    for db in ["crm_db", "product_db"] {
        assert!(
            schema_exists(&on_dedicated(db).await, &schema).await,
            "{db}"
        );
        assert!(
            !schema_exists(&common::admin(db).await, &schema).await,
            "{db}"
        );
    }
    assert!(role_exists(&on_dedicated("postgres").await, &role).await);
    assert!(!role_exists(&common::admin("postgres").await, &role).await);
    let row = common::admin("tenant_db")
        .await
        .query_one(
            "SELECT tier, backend, status FROM commons.tenants WHERE id = $1",
            &[&id.as_str()],
        )
        .await
        .unwrap();
    let (tier, backend, status): (String, Option<String>, String) =
        (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        (tier.as_str(), backend.as_deref()),
        ("dedicated", Some("eu1"))
    );
    assert_eq!(status, "active");

    // The proxy sends its clients to the cluster where their tenant lives.
    let proxy = common::start_proxy(config.clone()).await;
    let client = common::connect(&proxy, "alice@ded_life", "alice-pw", "")
        .await
        .expect("a dedicated tenant's client logs in");
    let port = common::one_value(&client, "SELECT inet_server_port()").await;
    assert_eq!(port, dedicated().port.to_string());
    assert_eq!(
        common::one_value(&client, "SELECT current_user").await,
        role
    );
    assert_eq!(
        common::one_value(&client, "SHOW search_path").await,
        format!("{schema}, commons, public")
    );
    client
        .batch_execute("INSERT INTO contacts (name, email) VALUES ('on eu1', 'a@eu1')")
        .await
        .unwrap();
    let shared = common::connect(&proxy, "alice@ded_shared_one", "alice-pw", "")
        .await
        .unwrap();
    assert_eq!(
        common::one_value(&shared, "SELECT inet_server_port()").await,
        common::backend().port.to_string()
    );
    let stored: i64 = on_dedicated("crm_db")
        .await
        .query_one(&format!("SELECT count(*) FROM {schema}.contacts"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 1);

    // Migrations, drift and show reach the dedicated schema.
    let outcomes = provision::migrate(
        &config,
        &MigrateOptions {
            tenants: vec![id.clone()],
            ..MigrateOptions::default()
        },
        &mut |_| {},
    )
    .await
    .unwrap();
    assert_eq!(provision::migrate::failed(&outcomes), 0, "{outcomes:?}");
    let drift = provision::drift(&config, Some(&id)).await.unwrap();
    assert_eq!(drift.len(), 2, "{drift:?}");
    assert!(drift.iter().all(|d| d.differences.is_empty()), "{drift:?}");
    on_dedicated("crm_db")
        .await
        .batch_execute(&format!(
            "ALTER TABLE {schema}.contacts ADD COLUMN extra int"
        ))
        .await
        .unwrap();
    let drift = provision::drift(&config, Some(&id)).await.unwrap();
    let crm = drift.iter().find(|d| d.database == "crm_db").unwrap();
    assert!(
        crm.differences
            .iter()
            .any(|d| d.to_string().contains("contacts.extra")),
        "{crm:?}"
    );
    let shown = provision::show_tenant(&config, &id).await.unwrap();
    assert_eq!(shown.backend.as_deref(), Some("eu1"));
    assert!(
        shown.schemas.iter().all(|s| s.exists && s.tables > 0),
        "{:?}",
        shown.schemas
    );

    // Backup, drop and restore, all on the dedicated cluster.
    drop((client, shared));
    let backups = tempfile::tempdir().unwrap();
    let report = provision::drop_tenant(
        &config,
        &id,
        &DropOptions {
            backup: true,
            backup_dir: Some(backups.path().to_path_buf()),
        },
    )
    .await
    .expect("drop a dedicated tenant");
    let backup = report.backup.expect("a backup was taken");
    assert!(!schema_exists(&on_dedicated("crm_db").await, &schema).await);
    assert!(!role_exists(&on_dedicated("postgres").await, &role).await);

    let restored = provision::restore_tenant(&config, &backup, None)
        .await
        .expect("restore a dedicated tenant");
    assert_eq!(restored, id);
    assert!(!schema_exists(&common::admin("crm_db").await, &schema).await);
    let names: Vec<String> = on_dedicated("crm_db")
        .await
        .query(&format!("SELECT name FROM {schema}.contacts"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(names, ["on eu1"]);
    assert!(
        common::eventually(std::time::Duration::from_secs(5), || async {
            proxy.context().registry.is_registered(id.as_str())
        })
        .await
    );
    let client = common::connect(&proxy, "alice@ded_life", "alice-pw", "")
        .await
        .expect("the restored tenant's users log in again");
    assert_eq!(
        common::one_value(&client, "SELECT inet_server_port()").await,
        dedicated().port.to_string()
    );
    let _ = shared_tenant;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_backends_and_moves_are_refused() {
    let config = config_with_eu1();
    let id = TenantId::parse("ded_refused").unwrap();

    let e = provision::create_tenant_on(&config, &id, "", Some(Tier::Dedicated("nowhere")))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("nowhere") && e.contains("[backends.nowhere]"),
        "{e}"
    );
    assert!(provision::lifecycle::tenant_status(&config, &id)
        .await
        .unwrap()
        .is_none());

    let id = create_dedicated(&config, "ded_moved").await;
    let e = provision::create_tenant_on(&config, &id, "", Some(Tier::Shared))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("moving a tenant"), "{e}");
    // Without a tier, re-running create finishes it where it lives.
    provision::create_tenant(&config, &id, "").await.unwrap();
    assert!(!schema_exists(&common::admin("crm_db").await, &id.schema()).await);

    // A proxy that does not know the tenant's cluster refuses its clients
    // with 08001, after authentication, and keeps serving the others.
    let shared = common::tenant(&config, "ded_neighbour").await;
    let mut without = config.clone();
    without.backends.clear();
    let proxy = common::start_proxy(without).await;
    let e = common::connect(&proxy, "alice@ded_moved", "alice-pw", "")
        .await
        .unwrap_err();
    assert_eq!(common::sqlstate(&e), "08001", "{e}");
    let e = common::connect(&proxy, "alice@ded_moved", "wrong", "")
        .await
        .unwrap_err();
    assert_eq!(common::sqlstate(&e), "28P01", "{e}");
    let other = common::connect(&proxy, &format!("alice@{shared}"), "alice-pw", "")
        .await
        .expect("other tenants are still served");
    assert_eq!(common::one_value(&other, "SELECT 1").await, "1");

    // Lifecycle commands name the missing entry.
    let e = provision::show_tenant(&without_backends(&config), &id)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("[backends.eu1]"), "{e}");
}

fn without_backends(config: &Config) -> Config {
    let mut c = config.clone();
    c.backends.clear();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_creates_dedicated_tenants() {
    let proxy = common::start_proxy(config_with_eu1()).await;
    let http = proxy.http_addr().expect("HTTP listener");
    let created = common::http_request(
        http,
        "POST",
        "/tenants",
        &[],
        Some(r#"{"id": "ded_api", "backend": "eu1"}"#),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let shown: serde_json::Value = serde_json::from_str(&created.body).unwrap();
    assert_eq!(shown["tier"], "dedicated", "{shown}");
    assert_eq!(shown["backend"], "eu1", "{shown}");
    assert!(schema_exists(&on_dedicated("product_db").await, "tenant_ded_api").await);

    for (body, wanted) in [
        (r#"{"id": "ded_api2", "backend": "nowhere"}"#, "nowhere"),
        (
            r#"{"id": "ded_api2", "tier": "dedicated"}"#,
            "needs a backend",
        ),
        (
            r#"{"id": "ded_api2", "tier": "shared", "backend": "eu1"}"#,
            "backend",
        ),
    ] {
        let refused = common::http_request(http, "POST", "/tenants", &[], Some(body)).await;
        assert_eq!(refused.status, 400, "{body}: {}", refused.body);
        assert!(refused.body.contains(wanted), "{body}: {}", refused.body);
    }
    let (status, _) = common::http_get(http, "/tenants/ded_api2").await;
    assert_eq!(status, 404, "nothing was created by the refused requests");
}
