//! PgBouncer's key names (up to 1.25) and what pgtenant does with each: maps
//! it onto its own configuration, ignores it because pgtenant needs no such
//! knob, or does not support it (yet). A key not listed is not a PgBouncer
//! key at all. The mapping of the mapped keys lives in `map`.

/// What pgtenant does with a PgBouncer key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Treatment {
    /// Mapped onto pgtenant's configuration (see `map`).
    Mapped,
    /// Accepted and ignored; the text says why no equivalent is needed.
    Ignored(&'static str),
    /// pgtenant has no equivalent; the text says what it does instead.
    Unsupported(&'static str),
}

const BUFFERS: &str = "ignored: pgtenant sizes buffers itself";
const NETWORK: &str = "ignored: pgtenant uses the operating system's socket defaults";
const KEEPALIVE: &str =
    "not supported: pgtenant uses the operating system's TCP keepalive settings";
const TLS_TUNING: &str =
    "ignored: pgtenant uses rustls's protocol versions (TLS 1.2, 1.3) and cipher suites";
const LOGGING: &str = "not yet supported: pgtenant logs to stderr; RUST_LOG sets what is logged";
const AUTH_QUERY: &str = "not supported: pgtenant looks users up in auth_file, then in its \
     registry (commons.tenant_users), never with a query";
const USER_LIMITS: &str = "not supported: pgtenant limits client connections in all \
     (pool.max_client_conn) and per tenant (config.max_clients)";
const DNS: &str = "ignored: pgtenant resolves the backend host at each connection";
const NOT_YET: &str = "not yet supported";

/// The `[pgbouncer]` keys `map` carries over onto pgtenant's configuration.
pub const MAPPED: &[&str] = &[
    "listen_addr",
    "listen_port",
    "unix_socket_dir",
    "auth_type",
    "auth_file",
    "pool_mode",
    "default_pool_size",
    "max_client_conn",
    "max_db_connections",
    "max_user_connections",
    "server_reset_query",
    "query_wait_timeout",
    "server_connect_timeout",
    "server_idle_timeout",
    "server_lifetime",
    "idle_transaction_timeout",
    "client_idle_timeout",
    "client_login_timeout",
    "max_prepared_statements",
    "client_tls_sslmode",
    "client_tls_key_file",
    "client_tls_cert_file",
    "client_tls_ca_file",
    "server_tls_sslmode",
    "server_tls_ca_file",
    "server_tls_key_file",
    "server_tls_cert_file",
    "so_reuseport",
    "admin_users",
    "stats_users",
    "stats_period",
    "log_connections",
    "log_disconnections",
    "log_pooler_errors",
    "reserve_pool_size",
    "reserve_pool_timeout",
    "min_pool_size",
];

/// How pgtenant treats `[pgbouncer]` key `key` (lowercase); `None`: not a
/// PgBouncer key.
pub fn pgbouncer_key(key: &str) -> Option<Treatment> {
    use Treatment::*;
    Some(match key {
        k if MAPPED.contains(&k) => Mapped,

        "pkt_buf" | "sbuf_loopcnt" | "tcp_socket_buffer" => Ignored(BUFFERS),
        "listen_backlog" | "tcp_defer_accept" => Ignored(NETWORK),
        "max_packet_size" => Unsupported(
            "not supported: pgtenant sets its own message limits (startup packets: \
             listen.max_startup_packet)",
        ),
        "tcp_keepalive" | "tcp_keepcnt" | "tcp_keepidle" | "tcp_keepintvl"
        | "tcp_user_timeout" => Unsupported(KEEPALIVE),
        "client_tls_protocols"
        | "client_tls_ciphers"
        | "client_tls13_ciphers"
        | "client_tls_ecdhcurve"
        | "client_tls_dheparams"
        | "server_tls_protocols"
        | "server_tls_ciphers"
        | "server_tls13_ciphers" => Ignored(TLS_TUNING),

        "logfile" | "syslog" | "syslog_ident" | "syslog_facility" | "log_stats" | "verbose" => {
            Unsupported(LOGGING)
        }
        "pidfile" => Unsupported("not yet supported: pgtenant writes no pid file"),
        "user" => Unsupported(
            "not supported: pgtenant does not change its Unix user; start it as the user it should run as",
        ),
        "unix_socket_mode" | "unix_socket_group" => Unsupported(
            "not yet supported: the socket gets the process's umask and group",
        ),
        "conffile" | "service_name" | "job_name" => Ignored("ignored: PgBouncer-only process setting"),

        "auth_user" | "auth_query" | "auth_dbname" => Unsupported(AUTH_QUERY),
        "auth_hba_file" | "auth_ident_file" | "auth_ldap_options" => Unsupported(
            "not supported: pgtenant asks every client the one method in auth.method",
        ),
        "scram_iterations" => Unsupported(
            "not supported: SCRAM secrets keep the iteration count they were made with",
        ),

        "max_user_client_connections" | "max_db_client_connections" => Unsupported(USER_LIMITS),
        "server_round_robin" => Unsupported(
            "not supported: each pool hands out its connections in its own order",
        ),
        "server_reset_query_always" => Unsupported(
            "not supported: pgtenant runs server_reset_query in session mode, and in \
             transaction mode after every transaction that may leave session state behind",
        ),
        "server_check_query" | "server_check_delay" => Unsupported(
            "not yet supported: idle server connections are not checked before use; \
             a broken one is closed when it fails",
        ),
        "server_fast_close" | "server_login_retry" | "suspend_timeout" | "peer_id"
        | "query_wait_notify" | "cancel_wait_timeout" | "autodb_idle_timeout" => {
            Unsupported(NOT_YET)
        }
        "query_timeout" | "transaction_timeout" => Unsupported(
            "not yet supported: use PostgreSQL's statement_timeout / transaction_timeout \
             (a tenant's config.statement_timeout is applied to its pools)",
        ),
        "dns_max_ttl" | "dns_nxdomain_ttl" | "dns_zone_check_period" | "resolv_conf" => {
            Ignored(DNS)
        }
        "ignore_startup_parameters" => Ignored(
            "ignored: pgtenant applies startup parameters such as extra_float_digits to \
             the server connection instead of refusing them",
        ),
        "track_extra_parameters" => Ignored(
            "ignored: in transaction mode pgtenant carries a client's startup settings to \
             every server connection it gets",
        ),
        "disable_pqexec" | "application_name_add_host" => Unsupported(NOT_YET),
        _ => return None,
    })
}

/// How pgtenant treats option `key` (lowercase) of a `[databases]`
/// connection string; `None`: not a PgBouncer option.
pub fn database_option(key: &str) -> Option<Treatment> {
    use Treatment::*;
    Some(match key {
        "dbname" | "host" | "port" | "pool_mode" => Mapped,
        "user" | "password" => Unsupported(
            "not supported: pgtenant logs in to PostgreSQL as the client's own user \
             (or, in tenant mode, the tenant's role), not as a fixed user",
        ),
        "auth_user" | "auth_query" | "auth_dbname" => Unsupported(AUTH_QUERY),
        "pool_size" => Unsupported(
            "not supported per database: pool.default_pool_size applies to every pool \
             (a tenant's config.pool_size overrides it)",
        ),
        "max_db_connections" => Unsupported(
            "not supported per database: pool.max_db_connections applies to every \
             database alike",
        ),
        "min_pool_size" => {
            Unsupported("not supported per database: pool.min_pool_size applies to every pool")
        }
        "reserve_pool" | "reserve_pool_size" => {
            Unsupported("not supported per database: pool.reserve_pool_size applies to every pool")
        }
        "max_db_client_connections" => Unsupported(USER_LIMITS),
        "connect_query" => Unsupported(NOT_YET),
        "client_encoding" | "datestyle" | "timezone" | "application_name" => {
            Unsupported("not supported: set it with ALTER DATABASE ... SET, or in the client")
        }
        "load_balance_hosts" | "server_lifetime" => Unsupported(NOT_YET),
        _ => return None,
    })
}

/// How pgtenant treats a whole section other than `[pgbouncer]` and
/// `[databases]`; `None`: not a PgBouncer section.
pub fn section(name: &str) -> Option<&'static str> {
    match name {
        "users" => Some(
            "not supported: per-user settings; pgtenant sets pool_mode and pool_size per \
             tenant (commons.tenants.config)",
        ),
        "peers" => Some("not yet supported: cancel requests are not forwarded between processes"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_debian_example_keys_are_known() {
        // Every key in the commented-out Debian example, plus later releases'.
        for key in [
            "logfile",
            "pidfile",
            "listen_addr",
            "listen_port",
            "unix_socket_dir",
            "unix_socket_mode",
            "unix_socket_group",
            "client_tls_sslmode",
            "client_tls_ca_file",
            "client_tls_key_file",
            "client_tls_cert_file",
            "client_tls_ciphers",
            "client_tls_protocols",
            "client_tls_dheparams",
            "client_tls_ecdhcurve",
            "server_tls_sslmode",
            "server_tls_ca_file",
            "server_tls_key_file",
            "server_tls_cert_file",
            "server_tls_protocols",
            "server_tls_ciphers",
            "auth_type",
            "auth_file",
            "auth_hba_file",
            "auth_query",
            "admin_users",
            "stats_users",
            "pool_mode",
            "server_reset_query",
            "server_reset_query_always",
            "ignore_startup_parameters",
            "server_check_query",
            "server_check_delay",
            "server_fast_close",
            "application_name_add_host",
            "stats_period",
            "max_client_conn",
            "default_pool_size",
            "min_pool_size",
            "reserve_pool_size",
            "reserve_pool_timeout",
            "max_db_connections",
            "max_user_connections",
            "server_round_robin",
            "syslog",
            "syslog_facility",
            "syslog_ident",
            "log_connections",
            "log_disconnections",
            "log_pooler_errors",
            "log_stats",
            "verbose",
            "server_lifetime",
            "server_idle_timeout",
            "server_connect_timeout",
            "server_login_retry",
            "query_timeout",
            "query_wait_timeout",
            "client_idle_timeout",
            "client_login_timeout",
            "autodb_idle_timeout",
            "idle_transaction_timeout",
            "suspend_timeout",
            "pkt_buf",
            "listen_backlog",
            "sbuf_loopcnt",
            "max_packet_size",
            "so_reuseport",
            "tcp_defer_accept",
            "tcp_socket_buffer",
            "tcp_keepalive",
            "tcp_keepcnt",
            "tcp_keepidle",
            "tcp_keepintvl",
            "tcp_user_timeout",
            "dns_max_ttl",
            "dns_zone_check_period",
            "dns_nxdomain_ttl",
            "resolv_conf",
            "disable_pqexec",
            "conffile",
            "service_name",
            "job_name",
            "max_prepared_statements",
            "track_extra_parameters",
            "auth_user",
            "auth_dbname",
            "peer_id",
            "transaction_timeout",
            "scram_iterations",
        ] {
            assert!(pgbouncer_key(key).is_some(), "{key}");
        }
        assert_eq!(pgbouncer_key("pool_mod"), None);
        assert_eq!(pgbouncer_key("pkt_buf"), Some(Treatment::Ignored(BUFFERS)));
    }

    #[test]
    fn database_options() {
        for key in [
            "dbname",
            "host",
            "port",
            "user",
            "password",
            "auth_user",
            "client_encoding",
            "datestyle",
            "timezone",
            "pool_size",
            "reserve_pool",
            "max_db_connections",
            "pool_mode",
            "connect_query",
            "application_name",
        ] {
            assert!(database_option(key).is_some(), "{key}");
        }
        assert_eq!(database_option("sslmode"), None);
    }
}
