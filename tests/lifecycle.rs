//! Integration tests for the tenant lifecycle after creation: list, show,
//! suspend, resume, drop (schemas, roles and registry rows gone), invalid ids,
//! and the `pgtenant` binary's `tenant list` against a config file.

mod common;

use std::time::Instant;

use pgtenant::provision::{self, lifecycle::DropOptions, ProvisionError};
use pgtenant::tenant::{AccessLevel, TenantId};

async fn status(id: &str) -> Option<String> {
    common::admin("tenant_db")
        .await
        .query_opt("SELECT status FROM commons.tenants WHERE id = $1", &[&id])
        .await
        .unwrap()
        .map(|r| r.get(0))
}

#[tokio::test]
async fn list_show_suspend_resume_drop() {
    let t0 = Instant::now();
    let config = common::config();
    let id = common::tenant(&config, "life_a").await;
    let other = common::tenant(&config, "life_b").await;
    let crm = common::admin("crm_db").await;
    crm.batch_execute("INSERT INTO tenant_life_a.contacts (name) VALUES ('x'), ('y')")
        .await
        .unwrap();

    let list = provision::list_tenants(&config).await.unwrap();
    let row = list.iter().find(|t| t.id == "life_a").expect("listed");
    assert_eq!(
        (row.name.as_str(), row.status.as_str(), row.tier.as_str()),
        ("life_a", "active", "shared")
    );
    assert_eq!(row.created.len(), "2026-01-01 00:00:00".len());

    let shown = provision::show_tenant(&config, &id).await.unwrap();
    assert_eq!(shown.summary.status, "active");
    assert_eq!(shown.users, 2);
    assert_eq!(shown.schemas.len(), 2);
    let crm_schema = &shown.schemas[0];
    assert_eq!(crm_schema.database, "crm_db");
    assert!(crm_schema.exists);
    assert_eq!(crm_schema.tables, 1);
    assert!(crm_schema.size_bytes > 0);
    assert_eq!(crm_schema.migrations, ["001_contacts.sql"]);

    provision::suspend_tenant(&config, &id).await.unwrap();
    provision::suspend_tenant(&config, &id).await.unwrap();
    assert_eq!(status("life_a").await.as_deref(), Some("suspended"));
    provision::resume_tenant(&config, &id).await.unwrap();
    assert_eq!(status("life_a").await.as_deref(), Some("active"));
    let ghost = TenantId::parse("life_ghost").unwrap();
    assert!(matches!(
        provision::suspend_tenant(&config, &ghost).await,
        Err(ProvisionError::UnknownTenant(_))
    ));

    // A live session of the tenant role is terminated by the drop.
    let role = id.role(AccessLevel::ReadWrite);
    let b = common::backend();
    let (session, conn) = tokio_postgres::connect(
        &format!(
            "host={} port={} user={role} password={} dbname=crm_db",
            b.host,
            b.port,
            pgtenant::tenant::role_password(&config.backend.tenant_role_secret, &role)
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    session
        .query_one("SELECT count(*) FROM contacts", &[])
        .await
        .unwrap();

    let no_backup = DropOptions::default();
    let report = provision::drop_tenant(&config, &id, &no_backup)
        .await
        .unwrap();
    assert_eq!(report.terminated_sessions, 1);
    assert!(conn.await.unwrap().is_err() || session.is_closed());

    for db in ["crm_db", "product_db"] {
        let c = common::admin(db).await;
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_namespace WHERE nspname = 'tenant_life_a'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "schema gone from {db}");
    }
    let registry = common::admin("tenant_db").await;
    let roles: i64 = registry
        .query_one(
            "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'tenant\\_life\\_a\\_%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(roles, 0, "roles gone");
    for table in ["tenants", "tenant_users", "schema_migrations"] {
        let column = if table == "tenants" {
            "id"
        } else {
            "tenant_id"
        };
        let n: i64 = registry
            .query_one(
                &format!("SELECT count(*) FROM commons.{table} WHERE {column} = 'life_a'"),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "{table} rows gone");
    }
    assert!(matches!(
        provision::drop_tenant(&config, &id, &no_backup).await,
        Err(ProvisionError::UnknownTenant(_))
    ));

    // The other tenant is untouched, and the id can be used again.
    assert_eq!(status("life_b").await.as_deref(), Some("active"));
    let n: i64 = crm
        .query_one("SELECT count(*) FROM tenant_life_b.contacts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    provision::create_tenant(&config, &id, "again")
        .await
        .unwrap();
    provision::drop_tenant(&config, &id, &no_backup)
        .await
        .unwrap();
    provision::drop_tenant(&config, &other, &no_backup)
        .await
        .unwrap();
    eprintln!("lifecycle in {:?}", t0.elapsed());
}

#[tokio::test]
async fn invalid_ids_are_refused() {
    for bad in [
        "Robert'); DROP",
        "ACME",
        &"a".repeat(41),
        "select",
        "user",
        "table",
    ] {
        let e = TenantId::parse(bad).unwrap_err().to_string();
        assert!(e.contains("invalid tenant id"), "{bad}: {e}");
    }
    assert!(TenantId::parse("select")
        .unwrap_err()
        .to_string()
        .contains("reserved word"));
}

fn write_config(dir: &std::path::Path) -> std::path::PathBuf {
    let b = common::backend();
    let path = dir.join("pgtenant.toml");
    let migrations = concat!(env!("CARGO_MANIFEST_DIR"), "/sql");
    std::fs::write(
        &path,
        format!(
            "[backend]\nhost = \"{}\"\nport = {}\nadmin_user = \"{}\"\nadmin_password = \"{}\"\ntenant_role_secret = \"test-secret\"\n\n[provision]\nmigrations_dir = \"{migrations}\"\n",
            b.host, b.port, b.user, b.password
        ),
    )
    .unwrap();
    path
}

/// Runs the built binary with a config file; returns (success, stdout, stderr).
fn pgtenant(config: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgtenant"))
        .arg("--config")
        .arg(config)
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
async fn binary_tenant_commands() {
    let t0 = Instant::now();
    let config = common::config();
    common::tenant(&config, "life_bin").await;
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(dir.path());

    let (ok, out, err) = pgtenant(&file, &["tenant", "list"]);
    assert!(ok, "{err}");
    let header = out.lines().next().unwrap();
    assert!(
        header.starts_with("id") && header.contains("status"),
        "{out}"
    );
    let line = out
        .lines()
        .find(|l| l.starts_with("life_bin "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("active") && line.contains("shared"), "{line}");

    let (ok, out, err) = pgtenant(&file, &["tenant", "show", "life_bin"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("tenant_life_bin") && out.contains("001_contacts.sql"),
        "{out}"
    );

    let (ok, _, err) = pgtenant(&file, &["tenant", "show", "Robert'); DROP"]);
    assert!(!ok);
    assert!(err.contains("invalid tenant id"), "{err}");
    let (ok, _, err) = pgtenant(&file, &["tenant", "suspend", "select"]);
    assert!(!ok);
    assert!(err.contains("reserved word"), "{err}");

    let (ok, _, err) = pgtenant(&file, &["tenant", "drop", "life_bin"]);
    assert!(!ok);
    assert!(err.contains("--yes"), "{err}");
    assert_eq!(status("life_bin").await.as_deref(), Some("active"));
    let (ok, out, err) = pgtenant(
        &file,
        &["tenant", "drop", "life_bin", "--yes", "--no-backup"],
    );
    assert!(ok, "{err}");
    assert!(out.contains("dropped"), "{out}");
    assert_eq!(status("life_bin").await, None);
    eprintln!("binary commands in {:?}", t0.elapsed());
}

#[tokio::test]
async fn interrupted_drop_is_finished_by_running_it_again() {
    let config = common::config();
    let id = common::tenant(&config, "life_resume").await;
    // A drop that died after marking the tenant and dropping one schema.
    common::admin("tenant_db")
        .await
        .batch_execute("UPDATE commons.tenants SET status = 'dropping' WHERE id = 'life_resume'")
        .await
        .unwrap();
    common::admin("crm_db")
        .await
        .batch_execute("DROP SCHEMA tenant_life_resume CASCADE")
        .await
        .unwrap();
    let e = provision::create_tenant(&config, &id, "")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("being dropped"), "{e}");
    let e = provision::resume_tenant(&config, &id).await.unwrap_err();
    assert!(e.to_string().contains("being dropped"), "{e}");
    provision::drop_tenant(&config, &id, &DropOptions::default())
        .await
        .unwrap();
    assert_eq!(status("life_resume").await, None);
    let n: i64 = common::admin("product_db")
        .await
        .query_one(
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'tenant_life_resume'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}
