//! Cross-tenant admin views (`admin.all_<table>`), `pgtenant drift` against
//! `tenant_template`, and tenant settings given at creation. Each test uses
//! a service database of its own, so the views it checks see only its tenants.

mod common;

use pgtenant::config::Config;
use pgtenant::provision::{self, Difference, MigrateOptions};
use pgtenant::tenant::TenantId;

/// A config whose only service database is `db`; `init` applied; tenants `ids` created.
async fn setup(db: &str, ids: &[&str]) -> (Config, Vec<TenantId>) {
    let mut config = common::config();
    config.backend.databases = vec![db.to_string()];
    config.tenants.default_database = db.to_string();
    let migrations = tempfile::tempdir().unwrap().keep();
    std::fs::create_dir_all(migrations.join(db).join("migrations")).unwrap();
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/sql/crm_db/migrations/001_contacts.sql"
        ),
        migrations
            .join(db)
            .join("migrations")
            .join("001_contacts.sql"),
    )
    .unwrap();
    config.provision.migrations_dir = migrations.display().to_string();
    provision::init(&config).await.unwrap();
    let mut tenants = Vec::new();
    for id in ids {
        tenants.push(common::tenant(&config, id).await);
    }
    (config, tenants)
}

async fn tenant_ids_in_view(db: &str) -> Vec<(String, i64)> {
    common::admin(db)
        .await
        .query(
            "SELECT tenant_id, count(*) FROM admin.all_contacts GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test]
async fn views_cover_every_tenant_and_only_the_admin_reads_them() {
    let db = "views_db";
    let (config, ids) = setup(db, &["av_one", "av_two"]).await;
    let admin = common::admin(db).await;
    for (id, rows) in [("av_one", 2), ("av_two", 3)] {
        admin
            .execute(
                &format!(
                    "INSERT INTO tenant_{id}.contacts (name) SELECT 'c' || g FROM generate_series(1, {rows}) g"
                ),
                &[],
            )
            .await
            .unwrap();
    }
    assert_eq!(
        tenant_ids_in_view(db).await,
        [("av_one".to_string(), 2), ("av_two".to_string(), 3)]
    );

    // A tenant's own role (through the proxy) cannot read them.
    let proxy = common::start_proxy(config.clone()).await;
    let client = common::connect(&proxy, "alice@av_one", "alice-pw", &format!("dbname={db}"))
        .await
        .unwrap();
    let err = client
        .simple_query("SELECT count(*) FROM admin.all_contacts")
        .await
        .unwrap_err();
    assert_eq!(common::sqlstate(&err), "42501");

    // Dropping a tenant takes its rows out; the others stay.
    provision::drop_tenant(&config, &ids[1], &Default::default())
        .await
        .unwrap();
    assert_eq!(tenant_ids_in_view(db).await, [("av_one".to_string(), 2)]);
    // A new tenant appears at once.
    common::tenant(&config, "av_three").await;
    admin
        .execute(
            "INSERT INTO tenant_av_three.contacts (name) VALUES ('x')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        tenant_ids_in_view(db).await,
        [("av_one".to_string(), 2), ("av_three".to_string(), 1)]
    );
    // An admin's DDL on a tenant table is not blocked by the views.
    admin
        .batch_execute("ALTER TABLE tenant_av_one.contacts ALTER COLUMN name TYPE varchar(300)")
        .await
        .unwrap();
}

#[tokio::test]
async fn drift_names_what_differs_from_the_template_and_migrations_keep_views() {
    let db = "drift_db";
    let (config, ids) = setup(db, &["dr_same", "dr_col", "dr_idx"]).await;
    let options = MigrateOptions {
        tenants: ids.clone(),
        template: true,
        databases: Vec::new(),
        dry_run: false,
        jobs: 2,
    };
    provision::migrate(&config, &options, &mut |_| {})
        .await
        .unwrap();
    let clean = provision::drift(&config, None).await.unwrap();
    let mine: Vec<_> = clean
        .iter()
        .filter(|t| t.tenant.starts_with("dr_"))
        .collect();
    assert_eq!(mine.len(), 3);
    assert!(mine.iter().all(|t| t.differences.is_empty()), "{mine:?}");

    let admin = common::admin(db).await;
    admin
        .batch_execute(
            "ALTER TABLE tenant_dr_col.contacts ADD COLUMN nickname text;
             CREATE INDEX contacts_name_idx ON tenant_dr_idx.contacts (name);",
        )
        .await
        .unwrap();
    let report = provision::drift(&config, None).await.unwrap();
    let of = |id: &str| {
        report
            .iter()
            .find(|t| t.tenant == id)
            .unwrap()
            .differences
            .clone()
    };
    assert!(of("dr_same").is_empty());
    assert_eq!(
        of("dr_col"),
        [Difference::Extra {
            kind: "column".into(),
            name: "contacts.nickname".into()
        }]
    );
    assert_eq!(
        of("dr_idx"),
        [Difference::Extra {
            kind: "index".into(),
            name: "contacts_name_idx".into()
        }]
    );

    // The binary says so and fails.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pgtenant.toml");
    let b = &config.backend;
    std::fs::write(
        &file,
        format!(
            "[backend]\nhost = \"{}\"\nport = {}\nadmin_user = \"{}\"\nadmin_password = \"{}\"\n\
             tenant_role_secret = \"{}\"\ndatabases = [\"{db}\"]\n",
            b.host, b.port, b.admin_user, b.admin_password, b.tenant_role_secret
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgtenant"))
        .args([
            "--config",
            &file.display().to_string(),
            "drift",
            "--tenant",
            "dr_col",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        stdout.contains("extra column contacts.nickname"),
        "{stdout}"
    );

    // A migration that changes a column the views read still applies.
    let migrations = std::path::Path::new(&config.provision.migrations_dir)
        .join(db)
        .join("migrations");
    std::fs::write(
        migrations.join("002_widen.sql"),
        "ALTER TABLE contacts ALTER COLUMN name TYPE varchar(500);\n",
    )
    .unwrap();
    let outcomes = provision::migrate(&config, &options, &mut |_| {})
        .await
        .unwrap();
    assert_eq!(provision::migrate::failed(&outcomes), 0, "{outcomes:?}");
    let views: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_views WHERE schemaname = 'admin' AND viewname = 'all_contacts'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(views, 1, "rebuilt after the migration");
}

#[tokio::test]
async fn tenant_settings_are_checked_and_applied_live() {
    let db = "settings_db";
    let (config, ids) = setup(db, &["ts_one"]).await;
    let id = &ids[0];
    let err =
        provision::lifecycle::set_tenant_config(&config, id, &serde_json::json!({"pool_sise": 3}))
            .await
            .unwrap_err();
    assert!(err.to_string().contains("pool_sise"), "{err}");

    let proxy = common::start_proxy(config.clone()).await;
    provision::lifecycle::set_tenant_config(
        &config,
        id,
        &serde_json::json!({"pool_size": 3, "max_clients": 1}),
    )
    .await
    .unwrap();
    let seen = common::eventually(std::time::Duration::from_secs(5), || async {
        proxy
            .context()
            .registry
            .tenant("ts_one")
            .is_some_and(|t| t.pool_size == Some(3) && t.max_clients == Some(1))
    })
    .await;
    assert!(seen, "the running proxy applies the new settings");
    let extra = format!("dbname={db}");
    let _first = common::connect(&proxy, "alice@ts_one", "alice-pw", &extra)
        .await
        .unwrap();
    let Err(err) = common::connect(&proxy, "alice@ts_one", "alice-pw", &extra).await else {
        panic!("max_clients 1 refuses a second client");
    };
    assert_eq!(common::sqlstate(&err), "53300");
    // null removes a key.
    let now = provision::lifecycle::set_tenant_config(
        &config,
        id,
        &serde_json::json!({"max_clients": null}),
    )
    .await
    .unwrap();
    assert_eq!(now, serde_json::json!({"pool_size": 3}));
}

#[tokio::test]
async fn shared_tables_with_tenant_id_show_each_tenant_its_own_rows() {
    let db = "rls_db";
    let (config, _) = setup(db, &["rl_one"]).await;
    let admin = common::admin(db).await;
    admin
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS commons.notices (tenant_id text NOT NULL, body text);
             INSERT INTO commons.notices VALUES ('rl_one', 'for one'), ('rl_two', 'for two'),
                                                ('rl_two', 'also two'), ('other', 'nobody');",
        )
        .await
        .unwrap();
    // The next tenant creation (or init) puts the policy on the new table.
    common::tenant(&config, "rl_two").await;
    let proxy = common::start_proxy(config.clone()).await;
    let extra = format!("dbname={db}");
    for (tenant, expected) in [
        ("rl_one", vec!["for one"]),
        ("rl_two", vec!["also two", "for two"]),
    ] {
        let client = common::connect(&proxy, &format!("alice@{tenant}"), "alice-pw", &extra)
            .await
            .unwrap();
        let rows = client
            .query("SELECT body FROM commons.notices ORDER BY body", &[])
            .await
            .unwrap();
        let bodies: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        assert_eq!(bodies, expected, "{tenant} sees its own rows only");
        // Neither a setting nor a role change reaches other rows.
        client
            .batch_execute("SET app.current_tenant = 'other'")
            .await
            .unwrap();
        let n: i64 = client
            .query_one("SELECT count(*) FROM commons.notices", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n as usize, expected.len());
        let err = client
            .batch_execute("SET ROLE tenant_rl_one_rw")
            .await
            .err();
        if tenant == "rl_two" {
            assert_eq!(common::sqlstate(&err.expect("refused")), "42501");
        }
    }
    let all: i64 = admin
        .query_one("SELECT count(*) FROM commons.notices", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(all, 4, "the owner (admin) sees every row");
}
