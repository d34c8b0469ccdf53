//! Tenants: identity, the registry cache kept current by `LISTEN`, and the
//! resolver that finds the tenant in a startup packet.

pub mod id;

pub use id::{role_password, AccessLevel, InvalidTenantId, TenantId};
pub mod resolve;

pub use resolve::{resolve, ResolveError, Resolved};
pub mod registry;

pub use registry::{Registry, RegistryError, Reloaded, TenantInfo, TenantStatus, UserRecord};
