//! SHOW STATS, STATS_TOTALS and STATS_AVERAGES: the pools' counters
//! summed per service database, and averages over the last complete stats
//! period (`admin.stats_period`), recorded by [`record_stats`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::rows::{num, text, Cell, ResultSet, Type};
use super::CONSOLE_DATABASE;
use crate::config::seconds;
use crate::session::Context;
use crate::stats::StatsSnapshot;

/// Records every pool's counters once per `admin.stats_period` until `shutdown`.
pub async fn record_stats(ctx: Arc<Context>, shutdown: CancellationToken) {
    loop {
        let counters = ctx
            .pools
            .views()
            .into_iter()
            .map(|v| (v.key.shared(), v.stats))
            .collect();
        ctx.stats_history.record(Instant::now(), counters);
        let period = seconds(ctx.config().admin.stats_period).max(Duration::from_millis(100));
        if shutdown
            .run_until_cancelled(tokio::time::sleep(period))
            .await
            .is_none()
        {
            return;
        }
    }
}

/// `count` spread over `secs`, rounded down; 0 when no period is complete.
pub fn per_second(count: u64, secs: f64) -> u64 {
    if secs > 0.0 {
        (count as f64 / secs) as u64
    } else {
        0
    }
}

fn ratio(total: u64, count: u64) -> u64 {
    total.checked_div(count).unwrap_or(0)
}

/// Totals per service database (every configured one, plus the console's).
fn totals(ctx: &Context) -> BTreeMap<String, StatsSnapshot> {
    let mut per: BTreeMap<String, StatsSnapshot> = ctx
        .config()
        .backend
        .databases
        .iter()
        .chain(std::iter::once(&CONSOLE_DATABASE.to_string()))
        .map(|db| (db.clone(), StatsSnapshot::default()))
        .collect();
    for v in ctx.pools.views() {
        per.entry(v.key.database).or_default().add(&v.stats);
    }
    per
}

/// The last complete period per database, and its length in seconds.
fn last_period(ctx: &Context) -> (HashMap<String, StatsSnapshot>, f64) {
    let (deltas, secs) = ctx.stats_history.last_period();
    let mut per: HashMap<String, StatsSnapshot> = HashMap::new();
    for (key, d) in deltas {
        per.entry(key.database.clone()).or_default().add(&d);
    }
    (per, secs)
}

/// PgBouncer's seven averages: per second for counts and bytes, per
/// transaction / query / assignment for times.
fn averages(d: &StatsSnapshot, secs: f64) -> [Cell; 7] {
    [
        num(per_second(d.xact_count, secs)),
        num(per_second(d.query_count, secs)),
        num(per_second(d.received, secs)),
        num(per_second(d.sent, secs)),
        num(ratio(d.xact_time_us, d.xact_count)),
        num(ratio(d.query_time_us, d.query_count)),
        num(ratio(d.wait_time_us, d.server_assignments)),
    ]
}

fn total_cells(t: &StatsSnapshot) -> [Cell; 7] {
    [
        num(t.xact_count),
        num(t.query_count),
        num(t.received),
        num(t.sent),
        num(t.xact_time_us),
        num(t.query_time_us),
        num(t.wait_time_us),
    ]
}

const STATS: &[(&str, Type)] = &[
    ("database", Type::Text),
    ("total_xact_count", Type::Numeric),
    ("total_query_count", Type::Numeric),
    ("total_received", Type::Numeric),
    ("total_sent", Type::Numeric),
    ("total_xact_time", Type::Numeric),
    ("total_query_time", Type::Numeric),
    ("total_wait_time", Type::Numeric),
    ("avg_xact_count", Type::Numeric),
    ("avg_query_count", Type::Numeric),
    ("avg_recv", Type::Numeric),
    ("avg_sent", Type::Numeric),
    ("avg_xact_time", Type::Numeric),
    ("avg_query_time", Type::Numeric),
    ("avg_wait_time", Type::Numeric),
    // PgBouncer before 1.8 called total_query_count this; exporters written
    // for it (Debian's prometheus-pgbouncer-exporter) still read it.
    ("total_requests", Type::Numeric),
];

/// SHOW STATS.
pub fn stats(ctx: &Context) -> ResultSet {
    let (period, secs) = last_period(ctx);
    let mut rs = ResultSet::new(STATS);
    for (db, t) in totals(ctx) {
        let d = period.get(&db).copied().unwrap_or_default();
        let mut row = vec![text(&db)];
        row.extend(total_cells(&t));
        row.extend(averages(&d, secs));
        row.push(num(t.query_count));
        rs.push(row);
    }
    rs
}

const SEVEN: &[(&str, Type)] = &[
    ("database", Type::Text),
    ("xact_count", Type::Numeric),
    ("query_count", Type::Numeric),
    ("bytes_received", Type::Numeric),
    ("bytes_sent", Type::Numeric),
    ("xact_time", Type::Numeric),
    ("query_time", Type::Numeric),
    ("wait_time", Type::Numeric),
];

/// SHOW STATS_TOTALS.
pub fn stats_totals(ctx: &Context) -> ResultSet {
    let mut rs = ResultSet::new(SEVEN);
    for (db, t) in totals(ctx) {
        let mut row = vec![text(&db)];
        row.extend(total_cells(&t));
        rs.push(row);
    }
    rs
}

/// SHOW STATS_AVERAGES.
pub fn stats_averages(ctx: &Context) -> ResultSet {
    let (period, secs) = last_period(ctx);
    let mut rs = ResultSet::new(SEVEN);
    for db in totals(ctx).into_keys() {
        let d = period.get(&db).copied().unwrap_or_default();
        let mut row = vec![text(&db)];
        row.extend(averages(&d, secs));
        rs.push(row);
    }
    rs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averages_are_per_second_and_per_event() {
        let d = StatsSnapshot {
            xact_count: 30,
            query_count: 60,
            received: 1500,
            sent: 3000,
            xact_time_us: 3000,
            query_time_us: 1200,
            wait_time_us: 100,
            server_assignments: 10,
            checkout_errors: 0,
        };
        let cells = averages(&d, 15.0);
        let got: Vec<&str> = cells.iter().map(|c| c.as_deref().unwrap()).collect();
        assert_eq!(got, ["2", "4", "100", "200", "100", "20", "10"]);
        let zero = averages(&StatsSnapshot::default(), 0.0);
        assert!(zero.iter().all(|c| c.as_deref() == Some("0")));
    }
}
