//! `pgtenant drift`: compares each tenant schema's tables, columns, indexes
//! and constraints with the `tenant_template` reference schema, so a hand
//! change or a half-applied migration in one tenant shows up by name.
//!
//! Each schema is read from the catalog as a set of (kind, name, definition)
//! items, schema names stripped from definitions, and the sets are compared.

use std::collections::BTreeMap;

use tokio_postgres::Client;

use crate::config::Config;
use crate::tenant::TenantId;

use super::migrate::TEMPLATE_SCHEMA;
use super::{admin_connect, cluster_connect, db_err, tenant_cluster, ProvisionError};

/// One difference between a tenant schema and the template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    /// The template has it, the tenant does not.
    Missing {
        /// `table`, `column`, `index` or `constraint`.
        kind: String,
        /// E.g. `contacts.email`.
        name: String,
    },
    /// The tenant has it, the template does not.
    Extra {
        /// `table`, `column`, `index` or `constraint`.
        kind: String,
        /// E.g. `contacts_email_idx`.
        name: String,
    },
    /// Both have it, defined differently.
    Changed {
        /// `column`, `index` or `constraint`.
        kind: String,
        /// Its name.
        name: String,
        /// The template's definition.
        template: String,
        /// The tenant's definition.
        tenant: String,
    },
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Difference::Missing { kind, name } => write!(f, "missing {kind} {name}"),
            Difference::Extra { kind, name } => write!(f, "extra {kind} {name}"),
            Difference::Changed {
                kind,
                name,
                template,
                tenant,
            } => write!(
                f,
                "{kind} {name} differs: template `{template}`, tenant `{tenant}`"
            ),
        }
    }
}

/// The differences of one tenant in one database.
#[derive(Debug, Clone)]
pub struct TenantDrift {
    /// The service database.
    pub database: String,
    /// The tenant.
    pub tenant: String,
    /// What differs; empty when the schema matches the template.
    pub differences: Vec<Difference>,
}

/// Compares every active or suspended tenant (or only `only`) with
/// `tenant_template` in every service database. The template must exist:
/// `pgtenant migrate` builds it, on the shared cluster; a dedicated
/// tenant's schema is read on its own cluster and compared with that one.
pub async fn drift(
    config: &Config,
    only: Option<&TenantId>,
) -> Result<Vec<TenantDrift>, ProvisionError> {
    let b = &config.backend;
    let registry = admin_connect(config, &b.registry_database).await?;
    let tenants: Vec<(String, Option<String>)> = registry
        .query(
            "SELECT id, nullif(backend, '') FROM commons.tenants
             WHERE status IN ('active', 'suspended') AND ($1::text IS NULL OR id = $1)
             ORDER BY id",
            &[&only.map(|t| t.as_str())],
        )
        .await
        .map_err(db_err("listing tenants"))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    if let Some(id) = only {
        if tenants.is_empty() {
            return Err(ProvisionError::UnknownTenant(id.to_string()));
        }
    }
    let mut report = Vec::new();
    for db in &b.databases {
        let client = admin_connect(config, db).await?;
        let template = schema_items(&client, TEMPLATE_SCHEMA).await?;
        if template.is_empty() {
            return Err(ProvisionError::Invalid(format!(
                "{db} has no {TEMPLATE_SCHEMA} schema to compare with; run `pgtenant migrate` first"
            )));
        }
        for (tenant, backend) in &tenants {
            let schema = format!("tenant_{tenant}");
            let items = match backend {
                None => schema_items(&client, &schema).await?,
                Some(_) => {
                    let cluster = tenant_cluster(config, tenant, backend.as_deref())?;
                    let there = cluster_connect(&cluster, db).await?;
                    schema_items(&there, &schema).await?
                }
            };
            report.push(TenantDrift {
                database: db.clone(),
                tenant: tenant.clone(),
                differences: compare(&template, &items),
            });
        }
    }
    Ok(report)
}

/// (kind, name) → definition.
type Items = BTreeMap<(String, String), String>;

/// Reads a schema's tables, columns, indexes and constraints.
async fn schema_items(client: &Client, schema: &str) -> Result<Items, ProvisionError> {
    let rows = client
        .query(
            "SELECT 'table', c.relname, c.relkind::text
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
             UNION ALL
             SELECT 'column', c.relname || '.' || a.attname,
                    format_type(a.atttypid, a.atttypmod)
                    || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
                    || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
               FROM pg_attribute a
               JOIN pg_class c ON c.oid = a.attrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
               LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
              WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
                AND a.attnum > 0 AND NOT a.attisdropped
             UNION ALL
             SELECT 'index', i.relname, pg_get_indexdef(i.oid)
               FROM pg_index x
               JOIN pg_class i ON i.oid = x.indexrelid
               JOIN pg_namespace n ON n.oid = i.relnamespace
              WHERE n.nspname = $1
             UNION ALL
             SELECT 'constraint', c.relname || '.' || k.conname, pg_get_constraintdef(k.oid)
               FROM pg_constraint k
               JOIN pg_class c ON c.oid = k.conrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1",
            &[&schema],
        )
        .await
        .map_err(db_err(format!("reading the catalog of schema {schema}")))?;
    // Definitions name their own schema (`ON tenant_acme.contacts`,
    // sequence defaults): strip it so schemas compare.
    let own = format!("{schema}.");
    Ok(rows
        .iter()
        .map(|r| {
            let def: String = r.get(2);
            (
                (r.get::<_, String>(0), r.get::<_, String>(1)),
                def.replace(&own, ""),
            )
        })
        .collect())
}

/// The differences of `tenant` against `template`, in a stable order.
fn compare(template: &Items, tenant: &Items) -> Vec<Difference> {
    let mut out = Vec::new();
    for ((kind, name), def) in template {
        match tenant.get(&(kind.clone(), name.clone())) {
            None => out.push(Difference::Missing {
                kind: kind.clone(),
                name: name.clone(),
            }),
            Some(other) if other != def => out.push(Difference::Changed {
                kind: kind.clone(),
                name: name.clone(),
                template: def.clone(),
                tenant: other.clone(),
            }),
            Some(_) => {}
        }
    }
    for (kind, name) in tenant.keys() {
        if !template.contains_key(&(kind.clone(), name.clone())) {
            out.push(Difference::Extra {
                kind: kind.clone(),
                name: name.clone(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(list: &[(&str, &str, &str)]) -> Items {
        list.iter()
            .map(|(k, n, d)| ((k.to_string(), n.to_string()), d.to_string()))
            .collect()
    }

    #[test]
    fn missing_extra_and_changed_are_named() {
        let template = items(&[
            ("table", "contacts", "r"),
            ("column", "contacts.id", "integer not null"),
            ("column", "contacts.email", "text"),
        ]);
        let tenant = items(&[
            ("table", "contacts", "r"),
            ("column", "contacts.id", "bigint not null"),
            ("index", "contacts_name_idx", "CREATE INDEX ..."),
        ]);
        let d = compare(&template, &tenant);
        let text: Vec<String> = d.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "missing column contacts.email",
                "column contacts.id differs: template `integer not null`, tenant `bigint not null`",
                "extra index contacts_name_idx",
            ]
        );
        assert!(compare(&template, &template).is_empty());
    }
}
