//! Every metric `/metrics` shows, in one place: names, labels, help texts,
//! and how the tenant label is kept bounded (`http.metrics_tenant_label`).
//!
//! Nothing here runs on the relay path. A scrape reads what already exists
//! (pool views and their counters, client counts, the registry cache, the
//! error counts) into a fresh `metrics-exporter-prometheus` recorder, so
//! series of pools and tenants that are gone disappear with them, and
//! renders it. The latency histograms are fixed-bucket atomics kept in each
//! pool's [`PoolStats`](crate::stats::PoolStats); the exporter only builds
//! histograms from raw samples, so they are written here, in the same text
//! format. Histograms never carry the tenant label.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::Duration;

use metrics::{Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};

use crate::config::TenantLabel;
use crate::pool::{PoolKey, PoolOwner, PoolView};
use crate::session::Context;
use crate::stats::{HistogramSnapshot, Latencies, StatsSnapshot, LATENCY_BUCKETS_US};

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The `tenant` value of the tenants summed together under `top_n`.
pub const OTHER_TENANTS: &str = "_other";

const METADATA: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, None);

/// Help texts, by metric name; also the list of counters and gauges shown.
const COUNTERS: &[(&str, &str)] = &[
    (
        "pgtenant_queries_total",
        "Queries finished (ReadyForQuery messages sent to clients).",
    ),
    (
        "pgtenant_transactions_total",
        "Transactions finished (ReadyForQuery I after work).",
    ),
    (
        "pgtenant_server_assignments_total",
        "Times a server connection was handed to a client.",
    ),
    (
        "pgtenant_checkout_errors_total",
        "Waits for a server connection that gave up (timeout, connect failure).",
    ),
    (
        "pgtenant_bytes_total",
        "Bytes relayed: direction in from clients, out to clients.",
    ),
    (
        "pgtenant_errors_total",
        "Errors the proxy itself sent to clients, by SQLSTATE class.",
    ),
    (
        "pgtenant_auth_failures_total",
        "Logins refused for a wrong password or an unknown user.",
    ),
];

/// Counters of seconds: floats, which the exporter's integer counters cannot hold.
const SECONDS_COUNTERS: [(&str, &str); 3] = [
    (
        "pgtenant_query_seconds_total",
        "Time spent in queries, client request to ReadyForQuery.",
    ),
    (
        "pgtenant_transaction_seconds_total",
        "Time spent in transactions, first query to ReadyForQuery I.",
    ),
    (
        "pgtenant_wait_seconds_total",
        "Time clients waited for a server connection.",
    ),
];

const GAUGES: &[(&str, &str)] = &[
    ("pgtenant_build_info", "pgtenant's version; always 1."),
    ("pgtenant_clients", "Client connections: login (not logged in yet), active (logged in), waiting (for a server connection)."),
    ("pgtenant_servers", "Server connections: active (in use or opening) or idle."),
    ("pgtenant_pool_size", "Largest number of server connections of the pools."),
    ("pgtenant_pool_waiting_clients", "Clients waiting for a server connection of the pools."),
    ("pgtenant_pool_max_wait_seconds", "How long the longest-waiting client of the pools has waited."),
    ("pgtenant_server_connections", "Server connections open in all pools, against max_server_connections."),
    ("pgtenant_server_connections_limit", "pool.max_server_connections; 0 for no limit."),
    ("pgtenant_registry_tenants", "Tenants in the registry cache."),
    ("pgtenant_registry_up", "1 while the registry connection (LISTEN) is up."),
    ("pgtenant_registry_last_notify_age_seconds", "Seconds since the last registry NOTIFY (absent before the first)."),
];

const HISTOGRAMS: [(&str, &str); 3] = [
    (
        "pgtenant_query_duration_seconds",
        "Query latency, client request to ReadyForQuery.",
    ),
    (
        "pgtenant_transaction_duration_seconds",
        "Transaction latency, first query to ReadyForQuery I.",
    ),
    (
        "pgtenant_client_wait_seconds",
        "Time a client waited for a server connection.",
    ),
];

/// The `user` label of a pool: its tenant role's access level.
fn user_label(key: &PoolKey) -> Cow<'static, str> {
    match &key.owner {
        PoolOwner::Tenant { access, .. } => Cow::Borrowed(access.suffix()),
        // Passthrough: the pool's user, as PgBouncer exporters label it.
        PoolOwner::User(user) => Cow::Owned(user.clone()),
    }
}

/// Decides each tenant's label value under the configured mode.
struct TenantLabels {
    mode: TenantLabel,
    /// Under `top_n`: the tenants that keep their own series.
    top: std::collections::HashSet<String>,
}

impl TenantLabels {
    /// Ranks tenants by queries (most first, then by id) for `top_n`.
    fn new(mode: TenantLabel, n: usize, queries: &HashMap<String, u64>) -> TenantLabels {
        let mut top = std::collections::HashSet::new();
        if mode == TenantLabel::TopN {
            let mut ranked: Vec<(&String, &u64)> = queries.iter().collect();
            ranked.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
            top = ranked.into_iter().take(n).map(|(t, _)| t.clone()).collect();
        }
        TenantLabels { mode, top }
    }

    /// The label value for `tenant`; `None`: no tenant label at all.
    fn of(&self, tenant: &str) -> Option<String> {
        match self.mode {
            TenantLabel::All => Some(tenant.to_string()),
            TenantLabel::None => None,
            TenantLabel::TopN if self.top.contains(tenant) => Some(tenant.to_string()),
            TenantLabel::TopN => Some(OTHER_TENANTS.to_string()),
        }
    }
}

/// Pools summed under one label set.
#[derive(Default)]
struct PoolSums {
    size: usize,
    open: usize,
    idle: usize,
    waiting: usize,
    max_wait: Duration,
    stats: StatsSnapshot,
}

impl PoolSums {
    fn add(&mut self, v: &PoolView) {
        self.size += v.size;
        self.open += v.open;
        self.idle += v.idle;
        self.waiting += v.waiting;
        self.max_wait = self.max_wait.max(v.max_wait);
        self.stats.add(&v.stats);
    }
}

/// (tenant label, database, user) of a pool series.
type PoolLabels = (Option<String>, String, Cow<'static, str>);

/// Builds series into a recorder made for one scrape.
struct Series {
    recorder: PrometheusRecorder,
}

impl Series {
    fn new() -> Series {
        let recorder = PrometheusBuilder::new().build_recorder();
        for (name, help) in COUNTERS {
            recorder.describe_counter((*name).into(), None, (*help).into());
        }
        for (name, help) in GAUGES {
            recorder.describe_gauge((*name).into(), None, (*help).into());
        }
        Series { recorder }
    }

    fn counter(&self, name: &'static str, labels: Vec<Label>, value: u64) {
        let key = Key::from_parts(name, labels);
        self.recorder
            .register_counter(&key, &METADATA)
            .absolute(value);
    }

    fn gauge(&self, name: &'static str, labels: Vec<Label>, value: f64) {
        let key = Key::from_parts(name, labels);
        self.recorder.register_gauge(&key, &METADATA).set(value);
    }

    fn render(&self) -> String {
        self.recorder.handle().render()
    }
}

fn pool_labels((tenant, database, user): &PoolLabels) -> Vec<Label> {
    let mut labels = Vec::with_capacity(3);
    if let Some(t) = tenant {
        labels.push(Label::new("tenant", t.clone()));
    }
    labels.push(Label::new("database", database.clone()));
    labels.push(Label::new("user", user.to_string()));
    labels
}

fn with(mut labels: Vec<Label>, key: &'static str, value: &'static str) -> Vec<Label> {
    labels.push(Label::new(key, value));
    labels
}

fn us_to_seconds(us: u64) -> f64 {
    us as f64 / 1e6
}

/// Renders every metric in the Prometheus text format.
pub fn render(ctx: &Context) -> String {
    let config = ctx.config();
    let views = ctx.pools.views();
    let tenant_clients: Vec<(String, usize)> = ctx
        .tenant_clients
        .iter()
        .map(|e| (e.key().as_str().to_string(), *e.value()))
        .collect();

    let mut queries: HashMap<String, u64> = HashMap::new();
    for v in &views {
        if let Some(tenant) = v.key.tenant() {
            *queries.entry(tenant.as_str().to_string()).or_default() += v.stats.query_count;
        }
    }
    for (tenant, _) in &tenant_clients {
        queries.entry(tenant.clone()).or_default();
    }
    let labels = TenantLabels::new(
        config.http.metrics_tenant_label,
        config.http.metrics_top_n,
        &queries,
    );

    let mut pools: BTreeMap<PoolLabels, PoolSums> = BTreeMap::new();
    let mut latencies: BTreeMap<(String, Cow<'static, str>), Latencies> = BTreeMap::new();
    // Per tenant label: clients waiting.
    let mut waiting: BTreeMap<Option<String>, usize> = BTreeMap::new();
    for v in &views {
        let tenant = v.key.tenant().and_then(|t| labels.of(t.as_str()));
        let user = user_label(&v.key);
        *waiting.entry(tenant.clone()).or_default() += v.waiting;
        pools
            .entry((tenant, v.key.database.clone(), user.clone()))
            .or_default()
            .add(v);
        latencies
            .entry((v.key.database.clone(), user))
            .or_default()
            .add(&v.latencies);
    }

    let series = Series::new();
    series.gauge(
        "pgtenant_build_info",
        vec![Label::new("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );
    clients(&series, ctx, &labels, &tenant_clients, &waiting);
    for (key, sums) in &pools {
        pool_series(&series, key, sums);
    }
    process_series(&series, ctx, config.pool.max_server_connections);

    let mut out = series.render();
    for (i, (name, help)) in SECONDS_COUNTERS.iter().enumerate() {
        let rows: Vec<(Vec<(&str, &str)>, f64)> = pools
            .iter()
            .map(|((tenant, database, user), s)| {
                let mut labels = Vec::with_capacity(3);
                if let Some(t) = tenant {
                    labels.push(("tenant", t.as_str()));
                }
                labels.push(("database", database.as_str()));
                labels.push(("user", user.as_ref()));
                let us = match i {
                    0 => s.stats.query_time_us,
                    1 => s.stats.xact_time_us,
                    _ => s.stats.wait_time_us,
                };
                (labels, us_to_seconds(us))
            })
            .collect();
        write_seconds_counter(&mut out, name, help, &rows);
    }
    for (i, (name, help)) in HISTOGRAMS.iter().enumerate() {
        let rows: Vec<(Vec<(&str, &str)>, &HistogramSnapshot)> = latencies
            .iter()
            .map(|((database, user), l)| {
                let h = match i {
                    0 => &l.query,
                    1 => &l.xact,
                    _ => &l.wait,
                };
                (
                    vec![("database", database.as_str()), ("user", user.as_ref())],
                    h,
                )
            })
            .collect();
        write_histogram(&mut out, name, help, &rows);
    }
    out
}

/// Clients by state: `login` (no tenant yet), and per tenant label `active` and `waiting`.
fn clients(
    series: &Series,
    ctx: &Context,
    labels: &TenantLabels,
    tenant_clients: &[(String, usize)],
    waiting: &BTreeMap<Option<String>, usize>,
) {
    let mut connected: BTreeMap<Option<String>, usize> = BTreeMap::new();
    for (tenant, n) in tenant_clients {
        *connected.entry(labels.of(tenant)).or_default() += n;
    }
    let logged_in: usize = connected.values().sum();
    let all = ctx.clients.load(std::sync::atomic::Ordering::Relaxed);
    series.gauge(
        "pgtenant_clients",
        vec![Label::new("state", "login")],
        all.saturating_sub(logged_in) as f64,
    );
    let tenants: std::collections::BTreeSet<&Option<String>> =
        connected.keys().chain(waiting.keys()).collect();
    for tenant in tenants {
        let base: Vec<Label> = tenant
            .iter()
            .map(|t| Label::new("tenant", t.clone()))
            .collect();
        let wait = waiting.get(tenant).copied().unwrap_or(0);
        let active = connected
            .get(tenant)
            .copied()
            .unwrap_or(0)
            .saturating_sub(wait);
        series.gauge(
            "pgtenant_clients",
            with(base.clone(), "state", "active"),
            active as f64,
        );
        series.gauge(
            "pgtenant_clients",
            with(base, "state", "waiting"),
            wait as f64,
        );
    }
}

/// Pool state and traffic counters of one label set.
fn pool_series(series: &Series, key: &PoolLabels, s: &PoolSums) {
    let base = pool_labels(key);
    let l = || base.clone();
    series.gauge(
        "pgtenant_servers",
        with(l(), "state", "active"),
        s.open.saturating_sub(s.idle) as f64,
    );
    series.gauge(
        "pgtenant_servers",
        with(l(), "state", "idle"),
        s.idle as f64,
    );
    series.gauge("pgtenant_pool_size", l(), s.size as f64);
    series.gauge("pgtenant_pool_waiting_clients", l(), s.waiting as f64);
    series.gauge(
        "pgtenant_pool_max_wait_seconds",
        l(),
        s.max_wait.as_secs_f64(),
    );
    let st = &s.stats;
    series.counter("pgtenant_queries_total", l(), st.query_count);
    series.counter("pgtenant_transactions_total", l(), st.xact_count);
    series.counter(
        "pgtenant_server_assignments_total",
        l(),
        st.server_assignments,
    );
    series.counter("pgtenant_checkout_errors_total", l(), st.checkout_errors);
    series.counter(
        "pgtenant_bytes_total",
        with(l(), "direction", "in"),
        st.received,
    );
    series.counter(
        "pgtenant_bytes_total",
        with(l(), "direction", "out"),
        st.sent,
    );
}

/// Process-wide series: the server budget, errors, the registry (tenant mode).
fn process_series(series: &Series, ctx: &Context, limit: usize) {
    series.gauge(
        "pgtenant_server_connections",
        vec![],
        ctx.pools.server_connections() as f64,
    );
    series.gauge("pgtenant_server_connections_limit", vec![], limit as f64);
    for (class, n) in ctx.errors.by_class() {
        series.counter(
            "pgtenant_errors_total",
            vec![
                Label::new("source", "proxy"),
                Label::new("sqlstate_class", class),
            ],
            n,
        );
    }
    series.counter(
        "pgtenant_auth_failures_total",
        vec![],
        ctx.errors.auth_failures(),
    );
    if ctx.config().tenants.passthrough() {
        // No registry in passthrough mode.
        return;
    }
    series.gauge(
        "pgtenant_registry_tenants",
        vec![],
        ctx.registry.len() as f64,
    );
    series.gauge(
        "pgtenant_registry_up",
        vec![],
        if ctx.registry.is_connected() {
            1.0
        } else {
            0.0
        },
    );
    if let Some(age) = ctx.registry.last_notify_age() {
        series.gauge(
            "pgtenant_registry_last_notify_age_seconds",
            vec![],
            age.as_secs_f64(),
        );
    }
}

/// Escapes a label value for the text format.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `k="v",` for each label.
fn label_text(labels: &[(&str, &str)]) -> String {
    let mut text = String::new();
    for (k, v) in labels {
        let _ = write!(text, "{k}=\"{}\",", escape(v));
    }
    text
}

/// Writes one counter family of float seconds.
fn write_seconds_counter(
    out: &mut String,
    name: &str,
    help: &str,
    rows: &[(Vec<(&str, &str)>, f64)],
) {
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} counter");
    for (labels, value) in rows {
        let text = label_text(labels);
        let _ = writeln!(out, "{name}{{{}}} {value}", text.trim_end_matches(','));
    }
    out.push('\n');
}

/// Writes one histogram family (cumulative buckets, `_sum` in seconds, `_count`).
fn write_histogram(
    out: &mut String,
    name: &str,
    help: &str,
    rows: &[(Vec<(&str, &str)>, &HistogramSnapshot)],
) {
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} histogram");
    for (labels, h) in rows {
        let base = label_text(labels);
        let mut cumulative = 0;
        for (bound, n) in LATENCY_BUCKETS_US.iter().zip(h.buckets.iter()) {
            cumulative += n;
            let le = us_to_seconds(*bound);
            let _ = writeln!(out, "{name}_bucket{{{base}le=\"{le}\"}} {cumulative}");
        }
        let count = h.count();
        let _ = writeln!(out, "{name}_bucket{{{base}le=\"+Inf\"}} {count}");
        let trimmed = base.trim_end_matches(',');
        let _ = writeln!(out, "{name}_sum{{{trimmed}}} {}", us_to_seconds(h.sum_us));
        let _ = writeln!(out, "{name}_count{{{trimmed}}} {count}");
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_n_keeps_the_busiest_and_sums_the_rest() {
        let queries = HashMap::from([
            ("a".to_string(), 5),
            ("b".to_string(), 50),
            ("c".to_string(), 50),
            ("d".to_string(), 1),
        ]);
        let l = TenantLabels::new(TenantLabel::TopN, 2, &queries);
        assert_eq!(l.of("b").as_deref(), Some("b"));
        assert_eq!(l.of("c").as_deref(), Some("c"));
        assert_eq!(l.of("a").as_deref(), Some(OTHER_TENANTS));
        let l = TenantLabels::new(TenantLabel::None, 2, &queries);
        assert_eq!(l.of("b"), None);
        let l = TenantLabels::new(TenantLabel::All, 0, &queries);
        assert_eq!(l.of("d").as_deref(), Some("d"));
    }

    #[test]
    fn histograms_are_cumulative_with_sum_and_count() {
        let h = crate::stats::Histogram::default();
        h.record(700);
        h.record(40_000_000);
        let snap = h.snapshot();
        let mut out = String::new();
        write_histogram(
            &mut out,
            "x_seconds",
            "help",
            &[(vec![("database", "crm_db"), ("user", "rw")], &snap)],
        );
        assert!(out.contains("# TYPE x_seconds histogram\n"), "{out}");
        assert!(
            out.contains("x_seconds_bucket{database=\"crm_db\",user=\"rw\",le=\"0.0005\"} 0\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{database=\"crm_db\",user=\"rw\",le=\"0.001\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{database=\"crm_db\",user=\"rw\",le=\"30\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{database=\"crm_db\",user=\"rw\",le=\"+Inf\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_sum{database=\"crm_db\",user=\"rw\"} 40.0007\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_count{database=\"crm_db\",user=\"rw\"} 2\n"),
            "{out}"
        );
    }
}
