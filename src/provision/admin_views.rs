//! Cross-tenant views for the admin role (the seeds' `all_products`): in
//! every service database, schema `admin` holds one view per tenant table,
//! `admin.all_<table>`, with a `tenant_id` column followed by the table's
//! columns, over every active or suspended tenant's schema.
//!
//! Rebuilt after each tenant create, drop, restore and migration, under an
//! advisory lock so concurrent runs do not interleave. Only the admin role
//! can read them: it owns schema `admin` and grants nothing on it. The
//! column list of a view is the template's (`tenant_template`) when it has
//! the table, else the first tenant's that has it; a tenant whose table
//! lacks one of those columns, or has it with another type, is left out and
//! reported, not guessed at.

use std::collections::HashMap;

use tokio_postgres::Client;

use crate::config::Config;

use super::migrate::TEMPLATE_SCHEMA;
use super::{admin_connect, cluster_connect, db_err, quote_ident, quote_literal, ProvisionError};

/// Advisory lock key (in the registry database) serialising view rebuilds and drops.
const VIEWS_LOCK_KEY: i64 = 0x7067_7465_6e03;

/// Schema holding the views.
pub const ADMIN_SCHEMA: &str = "admin";

/// What a rebuild did in one database.
#[derive(Debug, Clone, Default)]
pub struct ViewsReport {
    /// The service database, followed by ` (backend NAME)` on a dedicated cluster.
    pub database: String,
    /// Views (re)built, e.g. `admin.all_contacts`.
    pub views: Vec<String>,
    /// Tenants left out of a view: (view, tenant, why).
    pub skipped: Vec<(String, String, String)>,
}

/// Rebuilds the cross-tenant views of every service database, on the
/// shared cluster and on every dedicated cluster a registry row names: each
/// cluster's views cover the tenants that live there. A dedicated cluster
/// that cannot be reached (or is not configured) is logged and skipped, so
/// it never fails the shared cluster's tenants; `[backends]` entries no
/// tenant lives on are not contacted.
pub async fn rebuild_admin_views(config: &Config) -> Result<Vec<ViewsReport>, ProvisionError> {
    let b = &config.backend;
    let registry = admin_connect(config, &b.registry_database).await?;
    // One rebuild or drop at a time, and the tenant list read under the lock,
    // so a rebuild never brings back a tenant that a drop has just left out.
    take_views_lock(&registry).await?;
    // Every tenant, whatever its status: a cluster whose last tenant is
    // being dropped still gets its views rebuilt without it.
    let tenants: Vec<(String, Option<String>, bool)> = registry
        .query(
            "SELECT id, nullif(backend, ''), status IN ('active', 'suspended')
             FROM commons.tenants ORDER BY id",
            &[],
        )
        .await
        .map_err(db_err("listing tenants"))?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let mut clusters: Vec<Option<String>> = vec![None];
    for (_, backend, _) in &tenants {
        if !clusters.contains(backend) {
            clusters.push(backend.clone());
        }
    }
    let mut reports = Vec::new();
    for name in clusters {
        let Some(cluster) = config.cluster(name.as_deref()) else {
            tracing::warn!(backend = ?name, "admin views not rebuilt: backend not configured");
            continue;
        };
        let here: Vec<String> = tenants
            .iter()
            .filter(|(_, backend, served)| *served && *backend == name)
            .map(|(id, _, _)| id.clone())
            .collect();
        for db in &b.databases {
            let rebuilt = async {
                let mut client = cluster_connect(&cluster, db).await?;
                rebuild_in(&mut client, db, &cluster.admin_user, &here).await
            };
            match (rebuilt.await, &name) {
                (Ok(mut report), Some(name)) => {
                    report.database = format!("{db} (backend {name})");
                    reports.push(report);
                }
                (Ok(report), None) => reports.push(report),
                (Err(e), Some(_)) => tracing::warn!(
                    cluster = %cluster.describe(), database = %db, error = %e,
                    "admin views not rebuilt"
                ),
                (Err(e), None) => return Err(e),
            }
        }
    }
    Ok(reports)
}

/// Session lock on the registry connection; released when it closes.
async fn take_views_lock(registry: &Client) -> Result<(), ProvisionError> {
    registry
        .query_one("SELECT pg_advisory_lock($1)", &[&VIEWS_LOCK_KEY])
        .await
        .map_err(db_err("locking the admin views"))?;
    Ok(())
}

/// A column: name and type (`format_type`; a type defined in the schema
/// itself, such as an enum made by a migration, is `None`: read as text).
type Column = (String, Option<String>);

/// A schema's tables, each with its columns.
type Tables = Vec<(String, Vec<Column>)>;

/// Every table's columns, in order, of each of `schemas`, in one catalog
/// query (a rebuild runs after every tenant creation: with a thousand
/// tenants, one query per schema would dominate it).
async fn columns(
    client: &Client,
    schemas: &[String],
) -> Result<HashMap<String, Tables>, ProvisionError> {
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text,
                    array_agg(a.attname::text ORDER BY a.attnum),
                    array_agg(CASE WHEN tn.nspname = n.nspname THEN NULL
                                   ELSE format_type(a.atttypid, a.atttypmod) END
                              ORDER BY a.attnum)
               FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace
               JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
               JOIN pg_type t ON t.oid = a.atttypid
               JOIN pg_namespace tn ON tn.oid = t.typnamespace
              WHERE n.nspname = ANY($1) AND c.relkind IN ('r', 'p')
              GROUP BY n.nspname, c.relname ORDER BY n.nspname, c.relname",
            &[&schemas],
        )
        .await
        .map_err(db_err("reading the tables of the tenant schemas"))?;
    let mut out: HashMap<String, Tables> = HashMap::new();
    for r in &rows {
        let names: Vec<String> = r.get(2);
        let types: Vec<Option<String>> = r.get(3);
        out.entry(r.get(0))
            .or_default()
            .push((r.get(1), names.into_iter().zip(types).collect()));
    }
    Ok(out)
}

/// Each view reads through a function of its own (`admin.all_<table>_rows()`),
/// not the tenant tables directly: PostgreSQL records no dependency on what
/// a PL/pgSQL body reads, so the views never block a migration or an
/// admin's DDL on a tenant table (a view stale until the next rebuild fails
/// on reading, and only the admin reads it).
async fn rebuild_in(
    client: &mut Client,
    db: &str,
    admin: &str,
    tenants: &[String],
) -> Result<ViewsReport, ProvisionError> {
    let mut report = ViewsReport {
        database: db.to_string(),
        ..Default::default()
    };
    let mut schemas: Vec<String> = tenants.iter().map(|t| format!("tenant_{t}")).collect();
    schemas.push(TEMPLATE_SCHEMA.to_string());
    let mut all = columns(client, &schemas).await?;
    let per_tenant: Vec<(String, Tables)> = tenants
        .iter()
        .map(|t| {
            (
                t.clone(),
                all.remove(&format!("tenant_{t}")).unwrap_or_default(),
            )
        })
        .collect();
    // The template's column list of each table, else the first tenant's.
    let mut reference: std::collections::BTreeMap<String, Vec<Column>> = all
        .remove(TEMPLATE_SCHEMA)
        .unwrap_or_default()
        .into_iter()
        .collect();
    for (_, tables) in &per_tenant {
        for (table, cols) in tables {
            reference
                .entry(table.clone())
                .or_insert_with(|| cols.clone());
        }
    }

    let tx = client
        .transaction()
        .await
        .map_err(db_err(format!("starting the view rebuild in {db}")))?;
    // DDL here and the GRANT/REVOKE/DROP OWNED of tenant creation and drop
    // touch shared catalog rows: take turns with them, as they do.
    tx.execute(
        "SELECT pg_catalog.pg_advisory_xact_lock($1)",
        &[&super::tenant::GRANT_LOCK_KEY],
    )
    .await
    .map_err(db_err(format!("locking {db} for the view rebuild")))?;
    let schema = quote_ident(ADMIN_SCHEMA);
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema} AUTHORIZATION {owner};
         REVOKE ALL ON SCHEMA {schema} FROM PUBLIC;",
        owner = quote_ident(admin),
    ))
    .await
    .map_err(db_err(format!("creating schema admin in {db}")))?;
    // Start clean: views (and their functions) of tables that went go too.
    let existing: Vec<String> = tx
        .query(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relkind = 'v' AND c.relname LIKE 'all\\_%'",
            &[&ADMIN_SCHEMA],
        )
        .await
        .map_err(db_err(format!("listing the admin views of {db}")))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for view in existing {
        tx.batch_execute(&format!(
            "DROP VIEW IF EXISTS {schema}.{v};
             DROP FUNCTION IF EXISTS {schema}.{f}();",
            v = quote_ident(&view),
            f = quote_ident(&format!("{view}_rows")),
        ))
        .await
        .map_err(db_err(format!("dropping admin.{view} in {db}")))?;
    }
    for (table, cols) in &reference {
        let view = format!("all_{table}");
        // The schema says whose rows they are; a column of that name is superseded.
        let cols: Vec<&Column> = cols.iter().filter(|(c, _)| c != "tenant_id").collect();
        let mut parts = Vec::new();
        for (tenant, tables) in &per_tenant {
            let Some((_, have)) = tables.iter().find(|(t, _)| t == table) else {
                continue;
            };
            let mismatch =
                cols.iter()
                    .find_map(|(name, ty)| match have.iter().find(|(n, _)| n == name) {
                        None => Some(format!("its {table} has no column {name}")),
                        Some((_, t)) if t != ty => Some(format!(
                            "its {table}.{name} is {}, not {}",
                            t.as_deref().unwrap_or("a type of its own"),
                            ty.as_deref().unwrap_or("a type of its own")
                        )),
                        Some(_) => None,
                    });
            if let Some(why) = mismatch {
                report
                    .skipped
                    .push((format!("{ADMIN_SCHEMA}.{view}"), tenant.clone(), why));
                continue;
            }
            let select: Vec<String> = cols
                .iter()
                .map(|(name, ty)| match ty {
                    Some(_) => format!("t.{}", quote_ident(name)),
                    None => format!("t.{}::text", quote_ident(name)),
                })
                .collect();
            parts.push(format!(
                "SELECT {}::text, {} FROM {}.{} t",
                quote_literal(tenant),
                select.join(", "),
                quote_ident(&format!("tenant_{tenant}")),
                quote_ident(table)
            ));
        }
        if parts.is_empty() {
            continue;
        }
        let returns: Vec<String> = cols
            .iter()
            .map(|(name, ty)| format!("{} {}", quote_ident(name), ty.as_deref().unwrap_or("text")))
            .collect();
        let function = quote_ident(&format!("{view}_rows"));
        tx.batch_execute(&format!(
            "CREATE FUNCTION {schema}.{function}()
                 RETURNS TABLE (tenant_id text, {returns})
                 LANGUAGE plpgsql STABLE AS $body$
             #variable_conflict use_column
             BEGIN
                 RETURN QUERY {union};
             END
             $body$;
             REVOKE ALL ON FUNCTION {schema}.{function}() FROM PUBLIC;
             CREATE VIEW {schema}.{view_name} AS SELECT * FROM {schema}.{function}();",
            returns = returns.join(", "),
            union = parts.join(" UNION ALL "),
            view_name = quote_ident(&view),
        ))
        .await
        .map_err(db_err(format!("creating admin.{view} in {db}")))?;
        report.views.push(format!("{ADMIN_SCHEMA}.{view}"));
    }
    tx.commit()
        .await
        .map_err(db_err(format!("committing the admin views of {db}")))?;
    Ok(report)
}
