//! pgtenant: a PostgreSQL wire-protocol proxy for schema-per-tenant databases.
//!
//! A client connects as it would to PgBouncer; the proxy finds its tenant in
//! the startup packet, authenticates it, and relays it to a backend that
//! PostgreSQL already confines to the tenant. The modules, bottom up:
//!
//! - [`protocol`]: framing and the few messages the proxy reads or writes.
//! - [`net`]: TCP, Unix and TLS streams behind one type.
//! - [`tls`]: certificates, handshakes and their reload (rustls), both sides.
//! - [`config`]: the TOML configuration, validated.
//! - [`logging`]: the log subscriber (text or JSON, level from config or `RUST_LOG`).
//! - [`pgbouncer_ini`]: PgBouncer's `pgbouncer.ini`, read and mapped onto the configuration.
//! - [`auth`]: client authentication (SCRAM-SHA-256, md5, trust) and secrets.
//! - [`tenant`]: tenant ids, the registry cache (kept current by NOTIFY), resolution.
//! - [`pool`]: per-tenant backend pools and server logins.
//! - [`session`]: one client's life, the relay, cancel keys.
//! - [`stats`]: per-pool traffic counters (PgBouncer's SHOW STATS), latency
//!   histograms, error counts.
//! - [`metrics`]: what `/metrics` shows, read from the above at scrape time.
//! - [`http`]: the HTTP listener: `/metrics`, `/healthz`, `/readyz`.
//! - [`server`]: listeners and the running proxy.
//! - [`reload`]: applying a re-read configuration to the running proxy.
//! - [`admin`]: the admin console (PgBouncer's SHOW, PAUSE, RESUME, ...).
//! - [`provision`]: init, tenant creation, migrations, local clusters.
//! - [`healthcheck`]: the `/healthz` probe behind `pgtenant healthcheck`.

#![warn(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

/// A concurrent map read on every transaction (pools, tenants, cancel
/// keys): foldhash, seeded per map, instead of SipHash, which showed in
/// profiles. Its keys are the proxy's own (registered tenants, logged-in
/// users, issued cancel keys); clients only look them up.
pub type HotMap<K, V> = dashmap::DashMap<K, V, foldhash::fast::RandomState>;

pub mod admin;
pub mod auth;
pub mod clock;
pub mod config;
pub mod healthcheck;
pub mod http;
pub mod intern;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod pgbouncer_ini;
pub mod pool;
pub mod protocol;
pub mod provision;
pub mod reload;
pub mod server;
pub mod session;
pub mod stats;
pub mod tenant;
pub mod tls;
