//! Integration tests for `pgtenant migrate`: many tenants with a bounded
//! number of jobs, one failing tenant not stopping the others, an edited
//! applied file refused, dry runs, the advisory lock, and the binary's
//! `migrate` / `migrate status`.
//!
//! Tests share one cluster, so each uses a service database and a migrations
//! directory of its own, and names its tenants explicitly.

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use pgtenant::config::Config;
use pgtenant::provision::{self, MigrateEvent, MigrateOptions, ProvisionError};
use pgtenant::tenant::TenantId;

const PHONE: &str = "-- Adds a phone number.\nALTER TABLE contacts ADD COLUMN phone text;\n";

/// A config whose only service database is `db`, with `001_contacts.sql` in a
/// temp migrations dir; `init` applied; `n` tenants `<prefix>0..` created.
async fn setup(db: &str, prefix: &str, n: usize) -> (Config, tempfile::TempDir, Vec<TenantId>) {
    let dir = tempfile::tempdir().unwrap();
    let migrations = dir.path().join(db).join("migrations");
    std::fs::create_dir_all(&migrations).unwrap();
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/sql/crm_db/migrations/001_contacts.sql"
        ),
        migrations.join("001_contacts.sql"),
    )
    .unwrap();
    let mut config = common::config();
    config.backend.databases = vec![db.to_string()];
    config.provision.migrations_dir = dir.path().display().to_string();
    provision::init(&config).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(common::tenant(&config, &format!("{prefix}{i}")).await);
    }
    (config, dir, ids)
}

fn add_migration(dir: &Path, db: &str, name: &str, sql: &str) -> PathBuf {
    let path = dir.join(db).join("migrations").join(name);
    std::fs::write(&path, sql).unwrap();
    path
}

async fn has_phone(db: &str, schema: &str) -> bool {
    common::admin(db)
        .await
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM information_schema.columns
              WHERE table_schema = $1 AND table_name = 'contacts' AND column_name = 'phone')",
            &[&schema],
        )
        .await
        .unwrap()
        .get(0)
}

async fn recorded(id: &str, db: &str) -> Vec<String> {
    common::admin("tenant_db")
        .await
        .query(
            "SELECT version FROM commons.schema_migrations WHERE tenant_id = $1 AND database = $2 ORDER BY 1",
            &[&id, &db],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn options(ids: &[TenantId], jobs: usize) -> MigrateOptions {
    MigrateOptions {
        tenants: ids.to_vec(),
        template: true,
        databases: Vec::new(),
        dry_run: false,
        jobs,
    }
}

#[tokio::test]
async fn five_tenants_two_jobs_dry_run_then_real() {
    let t0 = Instant::now();
    let db = "mig_many_db";
    let (config, dir, ids) = setup(db, "mig_many", 5).await;
    add_migration(dir.path(), db, "002_phone.sql", PHONE);

    let mut dry = options(&ids, 2);
    dry.dry_run = true;
    let outcomes = provision::migrate(&config, &dry, &mut |_| {})
        .await
        .unwrap();
    assert_eq!(outcomes.len(), 6, "five tenants and the template");
    for o in &outcomes {
        assert!(o.error.is_none(), "{:?}", o.error);
        let expected: &[&str] = if o.target == "template" {
            &["001_contacts.sql", "002_phone.sql"]
        } else {
            &["002_phone.sql"]
        };
        let got: Vec<&str> = o.applied.iter().map(|(_, v)| v.as_str()).collect();
        assert_eq!(got, expected, "{}", o.target);
    }
    for id in &ids {
        assert!(!has_phone(db, &id.schema()).await, "dry run changed {id}");
        assert_eq!(recorded(id.as_str(), db).await, ["001_contacts.sql"]);
    }
    assert!(recorded("_template", db).await.is_empty());

    let mut started = 0;
    let mut finished = 0;
    let outcomes = provision::migrate(&config, &options(&ids, 2), &mut |e| match e {
        MigrateEvent::Started { targets } => started = targets,
        MigrateEvent::Finished(_) => finished += 1,
    })
    .await
    .unwrap();
    assert_eq!((started, finished), (6, 6));
    assert_eq!(provision::migrate::failed(&outcomes), 0);
    for id in ids.iter().map(|i| i.as_str()).chain(["_template"]) {
        let schema = if id == "_template" {
            "tenant_template".to_string()
        } else {
            format!("tenant_{id}")
        };
        assert!(has_phone(db, &schema).await, "{schema} has the new column");
        assert_eq!(
            recorded(id, db).await,
            ["001_contacts.sql", "002_phone.sql"],
            "{id}"
        );
    }

    // Nothing left to do.
    let again = provision::migrate(&config, &options(&ids, 2), &mut |_| {})
        .await
        .unwrap();
    assert!(again
        .iter()
        .all(|o| o.error.is_none() && o.applied.is_empty()));
    eprintln!("five tenants migrated in {:?}", t0.elapsed());
}

#[tokio::test]
async fn one_failing_tenant_does_not_stop_the_others() {
    let db = "mig_fail_db";
    let (config, dir, ids) = setup(db, "mig_fail", 3).await;
    // Someone altered one tenant by hand: the migration conflicts there.
    common::admin(db)
        .await
        .batch_execute("ALTER TABLE tenant_mig_fail1.contacts ADD COLUMN phone int")
        .await
        .unwrap();
    add_migration(dir.path(), db, "002_phone.sql", PHONE);
    let outcomes = provision::migrate(&config, &options(&ids, 3), &mut |_| {})
        .await
        .unwrap();
    assert_eq!(provision::migrate::failed(&outcomes), 1);
    let bad = outcomes.iter().find(|o| o.target == "mig_fail1").unwrap();
    let msg = bad.error.as_ref().unwrap().to_string();
    for part in [
        "002_phone.sql",
        "tenant_mig_fail1",
        db,
        "already exists",
        "42701",
    ] {
        assert!(msg.contains(part), "{part} missing in: {msg}");
    }
    assert_eq!(recorded("mig_fail1", db).await, ["001_contacts.sql"]);
    for ok in ["mig_fail0", "mig_fail2"] {
        assert!(has_phone(db, &format!("tenant_{ok}")).await);
        assert_eq!(recorded(ok, db).await.len(), 2);
    }
}

#[tokio::test]
async fn edited_applied_migration_is_refused() {
    let db = "mig_edit_db";
    let (config, dir, ids) = setup(db, "mig_edit", 1).await;
    let path = add_migration(dir.path(), db, "002_phone.sql", PHONE);
    provision::migrate(&config, &options(&ids, 1), &mut |_| {})
        .await
        .unwrap();
    std::fs::write(
        &path,
        format!("{PHONE}ALTER TABLE contacts ADD COLUMN fax text;\n"),
    )
    .unwrap();
    add_migration(
        dir.path(),
        db,
        "003_more.sql",
        "CREATE TABLE notes (id int);",
    );
    match provision::migrate(&config, &options(&ids, 1), &mut |_| {}).await {
        Err(ProvisionError::Migration { file, message }) => {
            assert!(file.ends_with("002_phone.sql"), "{file}");
            assert!(
                message.contains("changed after it was applied"),
                "{message}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(recorded("mig_edit0", db).await.len(), 2, "003 not applied");
}

#[tokio::test]
async fn second_migrator_is_refused_at_once() {
    let db = "mig_lock_db";
    let (config, _dir, ids) = setup(db, "mig_lock", 1).await;
    let holder = common::admin("tenant_db").await;
    holder
        .execute(
            "SELECT pg_advisory_lock(hashtext($1))",
            &[&format!("pgtenant:migrate:{db}")],
        )
        .await
        .unwrap();
    let e = provision::migrate(&config, &options(&ids, 1), &mut |_| {})
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("another `pgtenant migrate` is running"),
        "{e}"
    );
    drop(holder);
    // A dry run takes no lock.
    let mut dry = options(&ids, 1);
    dry.dry_run = true;
    provision::migrate(&config, &dry, &mut |_| {})
        .await
        .unwrap();
}

/// Runs the built binary; returns (success, stdout, stderr).
fn pgtenant(config: &Path, args: &[&str]) -> (bool, String, String) {
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
async fn binary_migrate_and_status() {
    let db = "mig_bin_db";
    let (config, dir, _ids) = setup(db, "mig_bin", 2).await;
    add_migration(dir.path(), db, "002_phone.sql", PHONE);
    let b = common::backend();
    let file = dir.path().join("pgtenant.toml");
    std::fs::write(
        &file,
        format!(
            "[backend]\nhost = \"{}\"\nport = {}\nadmin_user = \"{}\"\nadmin_password = \"{}\"\ntenant_role_secret = \"{}\"\ndatabases = [\"{db}\"]\n\n[provision]\nmigrations_dir = \"{}\"\n",
            b.host, b.port, b.user, b.password, config.backend.tenant_role_secret, dir.path().display()
        ),
    )
    .unwrap();

    let (ok, out, err) = pgtenant(
        &file,
        &[
            "migrate", "--tenant", "mig_bin0", "--tenant", "mig_bin1", "--jobs", "2",
        ],
    );
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("mig_bin0: applied mig_bin_db/002_phone.sql"),
        "{out}"
    );
    assert!(
        out.contains("2 target(s): 2 migrated, 0 up to date, 0 failed"),
        "{out}"
    );
    assert!(
        err.contains("migrate: mig_bin1"),
        "plain progress lines off a terminal: {err}"
    );

    let (ok, out, err) = pgtenant(&file, &["migrate", "status"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("mig_bin_db: 2 migration file(s), latest 002_phone.sql"),
        "{out}"
    );
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("002_phone.sql"))
        .unwrap_or_else(|| panic!("{out}"));
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cells, ["002_phone.sql", "2", "0"], "{out}");

    // A failing tenant makes the exit status non-zero.
    common::admin(db)
        .await
        .batch_execute("DROP TABLE tenant_mig_bin1.contacts")
        .await
        .unwrap();
    add_migration(
        dir.path(),
        db,
        "003_index.sql",
        "CREATE INDEX contacts_phone_idx ON contacts (phone);",
    );
    let (ok, out, err) = pgtenant(
        &file,
        &["migrate", "--tenant", "mig_bin0", "--tenant", "mig_bin1"],
    );
    assert!(!ok, "{out}");
    assert!(
        err.contains("FAILED mig_bin1") && err.contains("003_index.sql"),
        "{err}"
    );
    assert!(out.contains("1 migrated, 0 up to date, 1 failed"), "{out}");
}
