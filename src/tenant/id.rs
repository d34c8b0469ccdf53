//! Tenant identity: the validated tenant id, access levels, and the names
//! derived from them (schema, backend roles, role passwords).

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Longest tenant id: `tenant_<id>_rw` must fit PostgreSQL's 63-byte names.
pub const MAX_TENANT_ID_LEN: usize = 40;

/// A tenant id: `[a-z][a-z0-9_]*`, at most [`MAX_TENANT_ID_LEN`] bytes, so it can
/// be put into schema and role names without quoting.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

/// Words a tenant id may not be: PostgreSQL's reserved key words (those that
/// cannot be a table or column name), so an id is always safe wherever it ends
/// up unquoted, plus `template`, whose schema `tenant_template` is the
/// migration reference kept by `pgtenant migrate`.
pub const RESERVED_IDS: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "authorization",
    "binary",
    "both",
    "case",
    "cast",
    "check",
    "collate",
    "collation",
    "column",
    "concurrently",
    "constraint",
    "create",
    "cross",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "false",
    "fetch",
    "for",
    "foreign",
    "freeze",
    "from",
    "full",
    "grant",
    "group",
    "having",
    "ilike",
    "in",
    "initially",
    "inner",
    "intersect",
    "into",
    "is",
    "isnull",
    "join",
    "lateral",
    "leading",
    "left",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "natural",
    "not",
    "notnull",
    "null",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "outer",
    "overlaps",
    "placing",
    "primary",
    "references",
    "returning",
    "right",
    "select",
    "session_user",
    "similar",
    "some",
    "symmetric",
    "system_user",
    "table",
    "tablesample",
    "then",
    "to",
    "trailing",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "variadic",
    "verbose",
    "when",
    "where",
    "window",
    "with",
    "template",
];

/// Why a string is not a tenant id.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidTenantId {
    /// Not `[a-z][a-z0-9_]*` of at most 40 bytes.
    #[error("invalid tenant id {0:?}: use a lowercase letter followed by lowercase letters, digits or '_', at most 40 characters")]
    Syntax(String),
    /// One of [`RESERVED_IDS`].
    #[error("invalid tenant id {0:?}: it is a reserved word; choose another id")]
    Reserved(String),
}

impl TenantId {
    /// Validates `id`.
    pub fn parse(id: &str) -> Result<TenantId, InvalidTenantId> {
        let mut chars = id.chars();
        let ok = matches!(chars.next(), Some('a'..='z'))
            && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
            && id.len() <= MAX_TENANT_ID_LEN;
        if !ok {
            Err(InvalidTenantId::Syntax(id.to_string()))
        } else if RESERVED_IDS.contains(&id) {
            Err(InvalidTenantId::Reserved(id.to_string()))
        } else {
            Ok(TenantId(id.to_string()))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The tenant's schema in every service database: `tenant_<id>`.
    pub fn schema(&self) -> String {
        format!("tenant_{}", self.0)
    }

    /// The backend login role for an access level: `tenant_<id>_rw` / `_ro`.
    pub fn role(&self, access: AccessLevel) -> String {
        format!("tenant_{}_{}", self.0, access.suffix())
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a tenant's client may do; each level has its own backend role and pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccessLevel {
    /// Read and write the tenant's tables.
    ReadWrite,
    /// Read only.
    ReadOnly,
}

impl AccessLevel {
    /// Parses the registry's `access` column (`rw` / `ro`).
    pub fn parse(s: &str) -> Option<AccessLevel> {
        match s {
            "rw" => Some(AccessLevel::ReadWrite),
            "ro" => Some(AccessLevel::ReadOnly),
            _ => None,
        }
    }

    /// `rw` or `ro`, as in role names and the registry.
    pub fn suffix(self) -> &'static str {
        match self {
            AccessLevel::ReadWrite => "rw",
            AccessLevel::ReadOnly => "ro",
        }
    }
}

/// The login password of a tenant backend role, derived from the configured
/// secret so that no per-tenant password has to be stored: hex HMAC-SHA-256 of
/// the role name keyed by `backend.tenant_role_secret`.
pub fn role_password(secret: &str, role: &str) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    mac.update(role.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids() {
        assert!(TenantId::parse("acme").is_ok());
        assert!(TenantId::parse("acme_2").is_ok());
        for bad in ["", "Acme", "2acme", "a-b", "x'); drop", &"a".repeat(41)] {
            assert!(
                matches!(TenantId::parse(bad), Err(InvalidTenantId::Syntax(_))),
                "{bad}"
            );
        }
        for bad in ["select", "user", "table", "template"] {
            let e = TenantId::parse(bad).unwrap_err();
            assert_eq!(e, InvalidTenantId::Reserved(bad.into()));
            assert!(e.to_string().contains("reserved word"), "{e}");
        }
        assert!(TenantId::parse("selection").is_ok());
        let t = TenantId::parse("acme").unwrap();
        assert_eq!(t.schema(), "tenant_acme");
        assert_eq!(t.role(AccessLevel::ReadOnly), "tenant_acme_ro");
    }

    #[test]
    fn role_passwords_differ_by_role_and_secret() {
        let a = role_password("s", "tenant_a_rw");
        assert_eq!(a.len(), 64);
        assert_eq!(a, role_password("s", "tenant_a_rw"));
        assert_ne!(a, role_password("s", "tenant_b_rw"));
        assert_ne!(a, role_password("t", "tenant_a_rw"));
    }
}
