//! [`Mapped`] settings as a pgtenant TOML file (`pgtenant config convert`):
//! each key under a comment naming the ini lines it came from, and every
//! warning listed as a comment at the end. The text loads with
//! [`Config::parse`](crate::config::Config::parse).

use std::fmt::Write as _;
use std::path::Path;

use toml::Value;

use super::map::Mapped;

/// The TOML text for `mapped`, read from the ini file `ini`.
pub fn to_toml(mapped: &Mapped, ini: &Path) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# pgtenant configuration converted from {}.\n\
         # Each key names the ini line(s) it came from. Tenant features are off\n\
         # ([tenants] mode = \"passthrough\"): clients log in to PostgreSQL as\n\
         # their own user, as through PgBouncer. To serve tenants instead, set\n\
         # mode = \"tenant\" and add the tenant settings ([backend] admin_user,\n\
         # admin_password, tenant_role_secret, registry_database; [tenants]).",
        ini.display()
    );
    let mut section = "";
    for s in &mapped.settings {
        if s.section != section {
            section = s.section;
            let _ = writeln!(out, "\n[{section}]");
        }
        let from: Vec<String> = s
            .sources
            .iter()
            .map(|(origin, key)| format!("{origin} {key}"))
            .collect();
        let _ = writeln!(out, "# {}", from.join(", "));
        let _ = writeln!(out, "{} = {}", s.key, inline(&s.value));
    }
    if !mapped.warnings.is_empty() {
        let _ = writeln!(out, "\n# Not carried over as they are:");
        for w in &mapped.warnings {
            let _ = writeln!(out, "#   {}", w.to_string().replace('\n', " "));
        }
    }
    out
}

/// A value on one line, tables inline (`{ crm_db = "transaction" }`).
fn inline(value: &Value) -> String {
    match value {
        Value::Table(table) => {
            let items: Vec<String> = table
                .iter()
                .map(|(k, v)| format!("{} = {}", key(k), inline(v)))
                .collect();
            format!("{{ {} }}", items.join(", "))
        }
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(inline).collect();
            format!("[{}]", items.join(", "))
        }
        other => other.to_string(),
    }
}

/// A table key, quoted unless bare.
fn key(k: &str) -> String {
    let bare = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        k.to_string()
    } else {
        Value::String(k.to_string()).to_string()
    }
}
