//! Integration tests for `pgtenant backup` / `restore`: a backup, drop and
//! restore round trip with equal data, and `restore --as` cloning a live
//! tenant (and a dropped one) under a new schema and new roles.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::time::Instant;

use pgtenant::config::Config;
use pgtenant::provision::{self, backup::Manifest, lifecycle::DropOptions, ProvisionError};
use pgtenant::tenant::{role_password, AccessLevel, TenantId};

/// Rows of the tenant's tables in both service databases, as JSON text.
async fn snapshot(schema: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (db, table) in [("crm_db", "contacts"), ("product_db", "products")] {
        let rows = common::admin(db)
            .await
            .query(
                &format!("SELECT row_to_json(t)::text FROM \"{schema}\".{table} t ORDER BY id"),
                &[],
            )
            .await
            .unwrap();
        out.extend(
            rows.iter()
                .map(|r| format!("{db}: {}", r.get::<_, String>(0))),
        );
    }
    out
}

/// The tenant's registry rows, without the tenant id and timestamps of change.
async fn registry_rows(id: &str) -> Vec<String> {
    let registry = common::admin("tenant_db").await;
    let mut out: Vec<String> = registry
        .query(
            "SELECT concat_ws(' ', name, status, tier, config::text, created_at::text) FROM commons.tenants WHERE id = $1
             UNION ALL SELECT * FROM (SELECT concat_ws(' ', username, secret, access, permissions::text, active::text)
                 FROM commons.tenant_users WHERE tenant_id = $1 ORDER BY username) u
             UNION ALL SELECT * FROM (SELECT concat_ws(' ', database, version, checksum, applied_at::text)
                 FROM commons.schema_migrations WHERE tenant_id = $1 ORDER BY database, version) m",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    out.sort();
    out
}

async fn fill(config: &Config, id: &TenantId) {
    let schema = id.schema();
    common::admin("crm_db")
        .await
        .batch_execute(&format!(
            "INSERT INTO {schema}.contacts (name, email) VALUES
                ('Zoë O''Brien', 'zoe@example.com'), ('no mail', NULL), (E'tab\\there', 'x@y')"
        ))
        .await
        .unwrap();
    common::admin("product_db")
        .await
        .batch_execute(&format!(
            "INSERT INTO {schema}.products (sku, name, price) VALUES ('A-1', 'anvil', 12.50), ('B-2', 'rope', NULL)"
        ))
        .await
        .unwrap();
    common::admin("tenant_db")
        .await
        .execute(
            "UPDATE commons.tenants SET config = '{\"pool_size\": 3}' WHERE id = $1",
            &[&id.as_str()],
        )
        .await
        .unwrap();
    let _ = config;
}

/// Logs in as the tenant's rw role and counts its contacts.
async fn rw_count(
    config: &Config,
    id: &TenantId,
    table: &str,
) -> Result<i64, tokio_postgres::Error> {
    let b = common::backend();
    let role = id.role(AccessLevel::ReadWrite);
    let (client, conn) = tokio_postgres::connect(
        &format!(
            "host={} port={} user={role} password={} dbname=crm_db",
            b.host,
            b.port,
            role_password(&config.backend.tenant_role_secret, &role)
        ),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(conn);
    Ok(client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await?
        .get(0))
}

#[tokio::test]
async fn backup_drop_restore_round_trip() {
    let t0 = Instant::now();
    let config = common::config();
    let id = common::tenant(&config, "bk_round").await;
    fill(&config, &id).await;
    let before = snapshot("tenant_bk_round").await;
    let registry_before = registry_rows("bk_round").await;
    assert_eq!(before.len(), 5);

    // A plain backup: manifest, dumps, registry rows, private directory.
    let tmp = tempfile::tempdir().unwrap();
    let dir = provision::backup_tenant(&config, &id, Some(&tmp.path().join("b1")))
        .await
        .unwrap();
    let manifest: Manifest =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest.tenant, "bk_round");
    assert_eq!(manifest.pgtenant_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(manifest.databases.len(), 2);
    for d in &manifest.databases {
        let file = dir.join(d.file.as_ref().unwrap());
        assert!(
            std::fs::metadata(&file).unwrap().len() > 0,
            "{}",
            file.display()
        );
    }
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    let registry_json = std::fs::read_to_string(dir.join("registry.json")).unwrap();
    assert!(registry_json.contains("SCRAM-SHA-256$"));
    assert!(matches!(
        provision::backup_tenant(&config, &id, Some(&dir)).await,
        Err(ProvisionError::Invalid(m)) if m.contains("not empty")
    ));

    // Drop takes its own backup first; restore from that one.
    let drop_dir = tmp.path().join("at-drop");
    let report = provision::drop_tenant(
        &config,
        &id,
        &DropOptions {
            backup: true,
            backup_dir: Some(drop_dir.clone()),
        },
    )
    .await
    .unwrap();
    assert_eq!(report.backup.as_deref(), Some(drop_dir.as_path()));
    assert!(registry_rows("bk_round").await.is_empty());

    let restored = provision::restore_tenant(&config, &drop_dir, None)
        .await
        .unwrap();
    assert_eq!(restored, id);
    assert_eq!(snapshot("tenant_bk_round").await, before);
    assert_eq!(registry_rows("bk_round").await, registry_before);
    // Roles and grants are back: the tenant role reads its rows, and the
    // sequence continues after the restored ids.
    assert_eq!(rw_count(&config, &id, "contacts").await.unwrap(), 3);
    let next: i64 = common::admin("crm_db")
        .await
        .query_one(
            "INSERT INTO tenant_bk_round.contacts (name) VALUES ('new') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(next, 4);
    // Restoring over an existing tenant is refused.
    let e = provision::restore_tenant(&config, &dir, None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("exists"), "{e}");
    eprintln!("round trip in {:?}", t0.elapsed());
}

#[tokio::test]
async fn restore_as_new_id_clones_under_new_schema_and_roles() {
    let t0 = Instant::now();
    let config = common::config();
    let src = common::tenant(&config, "bk_src").await;
    fill(&config, &src).await;
    let before = snapshot("tenant_bk_src").await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = provision::backup_tenant(&config, &src, Some(&tmp.path().join("b")))
        .await
        .unwrap();

    // The source is live: its schema name is taken, so the restore goes
    // through a scratch database.
    let copy = TenantId::parse("bk_copy").unwrap();
    provision::restore_tenant(&config, &dir, Some(&copy))
        .await
        .unwrap();
    assert_eq!(snapshot("tenant_bk_copy").await, before);
    assert_eq!(snapshot("tenant_bk_src").await, before, "source untouched");
    let shown = provision::show_tenant(&config, &copy).await.unwrap();
    assert_eq!(shown.summary.status, "active");
    assert_eq!(shown.users, 2);
    assert_eq!(shown.schemas[0].migrations, ["001_contacts.sql"]);
    assert_eq!(rw_count(&config, &copy, "contacts").await.unwrap(), 3);
    // Each tenant's role reaches only its own schema.
    let denied = rw_count(&config, &src, "tenant_bk_copy.contacts")
        .await
        .unwrap_err();
    assert_eq!(common::sqlstate(&denied), "42501");
    let denied = rw_count(&config, &copy, "tenant_bk_src.contacts")
        .await
        .unwrap_err();
    assert_eq!(common::sqlstate(&denied), "42501");
    let scratch: i64 = common::admin("postgres")
        .await
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'pgtenant\\_restore\\_%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(scratch, 0, "scratch database dropped");

    // With the source gone, --as restores in place and renames.
    provision::drop_tenant(&config, &src, &DropOptions::default())
        .await
        .unwrap();
    let copy2 = TenantId::parse("bk_copy2").unwrap();
    provision::restore_tenant(&config, &dir, Some(&copy2))
        .await
        .unwrap();
    assert_eq!(snapshot("tenant_bk_copy2").await, before);
    assert_eq!(rw_count(&config, &copy2, "contacts").await.unwrap(), 3);
    for db in ["crm_db", "product_db"] {
        let n: i64 = common::admin(db)
            .await
            .query_one(
                "SELECT count(*) FROM pg_namespace WHERE nspname = 'tenant_bk_src'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "no transient schema left in {db}");
    }
    let e = provision::restore_tenant(&config, &dir, Some(&copy))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("tenant bk_copy exists"), "{e}");
    eprintln!("restore --as in {:?}", t0.elapsed());
}

/// Runs the built binary in `cwd`; returns (success, stdout, stderr).
fn pgtenant(cwd: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgtenant"))
        .current_dir(cwd)
        .arg("--config")
        .arg(cwd.join("pgtenant.toml"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn binary_drop_backs_up_and_restore_brings_back() {
    let config = common::config();
    let id = common::tenant(&config, "bk_bin").await;
    fill(&config, &id).await;
    let before = snapshot("tenant_bk_bin").await;
    let cwd = tempfile::tempdir().unwrap();
    let b = common::backend();
    std::fs::write(
        cwd.path().join("pgtenant.toml"),
        format!(
            "[backend]\nhost = \"{}\"\nport = {}\nadmin_user = \"{}\"\nadmin_password = \"{}\"\ntenant_role_secret = \"{}\"\n\n[provision]\nmigrations_dir = \"{}\"\n",
            b.host, b.port, b.user, b.password, config.backend.tenant_role_secret, config.provision.migrations_dir
        ),
    )
    .unwrap();

    // Without --no-backup, drop writes a backup into the current directory.
    let (ok, out, err) = pgtenant(cwd.path(), &["tenant", "drop", "bk_bin", "--yes"]);
    assert!(ok, "{err}");
    let backup = std::fs::read_dir(cwd.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("pgtenant-backup-bk_bin-")
        })
        .unwrap_or_else(|| panic!("no backup directory: {out}"));
    assert!(out.contains("tenant bk_bin dropped"), "{out}");
    assert!(registry_rows("bk_bin").await.is_empty());

    let (ok, out, err) = pgtenant(cwd.path(), &["restore", backup.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("tenant bk_bin restored"), "{out}");
    assert_eq!(snapshot("tenant_bk_bin").await, before);

    let (ok, _, err) = pgtenant(
        cwd.path(),
        &[
            "restore",
            backup.to_str().unwrap(),
            "--as",
            "Robert'); DROP",
        ],
    );
    assert!(!ok);
    assert!(err.contains("invalid tenant id"), "{err}");
    let (ok, out, err) = pgtenant(cwd.path(), &["backup", "bk_bin", "--out", "again"]);
    assert!(ok, "{err}");
    assert!(cwd.path().join("again/manifest.json").is_file(), "{out}");
}
