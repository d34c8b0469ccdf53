//! Traffic counters per pool, with PgBouncer's `SHOW STATS` meanings: the
//! admin console and `/metrics` read them; the relays write them.
//!
//! Writes are relaxed atomic adds: a byte count per socket read or write and
//! a handful of adds per ReadyForQuery, never per message, never a lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Totals of one pool since it was created (or of the whole process).
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Transactions finished (ReadyForQuery `I` after work).
    pub xact_count: AtomicU64,
    /// Queries finished (ReadyForQuery messages).
    pub query_count: AtomicU64,
    /// Bytes received from clients.
    pub received: AtomicU64,
    /// Bytes sent to clients.
    pub sent: AtomicU64,
    /// Microseconds spent in transactions, first query to ReadyForQuery `I`.
    pub xact_time_us: AtomicU64,
    /// Microseconds spent in queries, client request to ReadyForQuery.
    pub query_time_us: AtomicU64,
    /// Microseconds clients waited for a server connection.
    pub wait_time_us: AtomicU64,
    /// Times a server connection was handed to a client.
    pub server_assignments: AtomicU64,
    /// Checkouts that gave up (`query_wait_timeout`, connect failures).
    pub checkout_errors: AtomicU64,
    /// Query latencies (timed queries only), for `/metrics`.
    pub query_latency: Histogram,
    /// Transaction latencies, for `/metrics`.
    pub xact_latency: Histogram,
    /// Waits for a server connection, for `/metrics`.
    pub wait_latency: Histogram,
}

/// A point-in-time copy of [`PoolStats`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// See [`PoolStats::xact_count`].
    pub xact_count: u64,
    /// See [`PoolStats::query_count`].
    pub query_count: u64,
    /// See [`PoolStats::received`].
    pub received: u64,
    /// See [`PoolStats::sent`].
    pub sent: u64,
    /// See [`PoolStats::xact_time_us`].
    pub xact_time_us: u64,
    /// See [`PoolStats::query_time_us`].
    pub query_time_us: u64,
    /// See [`PoolStats::wait_time_us`].
    pub wait_time_us: u64,
    /// See [`PoolStats::server_assignments`].
    pub server_assignments: u64,
    /// See [`PoolStats::checkout_errors`].
    pub checkout_errors: u64,
}

impl StatsSnapshot {
    /// Field-wise sum, for totals over pools.
    pub fn add(&mut self, other: &StatsSnapshot) {
        self.xact_count += other.xact_count;
        self.query_count += other.query_count;
        self.received += other.received;
        self.sent += other.sent;
        self.xact_time_us += other.xact_time_us;
        self.query_time_us += other.query_time_us;
        self.wait_time_us += other.wait_time_us;
        self.server_assignments += other.server_assignments;
        self.checkout_errors += other.checkout_errors;
    }

    /// Field-wise difference `self - earlier` (counters only grow; a pool
    /// that was recreated in between saturates at zero).
    pub fn since(&self, earlier: &StatsSnapshot) -> StatsSnapshot {
        StatsSnapshot {
            xact_count: self.xact_count.saturating_sub(earlier.xact_count),
            query_count: self.query_count.saturating_sub(earlier.query_count),
            received: self.received.saturating_sub(earlier.received),
            sent: self.sent.saturating_sub(earlier.sent),
            xact_time_us: self.xact_time_us.saturating_sub(earlier.xact_time_us),
            query_time_us: self.query_time_us.saturating_sub(earlier.query_time_us),
            wait_time_us: self.wait_time_us.saturating_sub(earlier.wait_time_us),
            server_assignments: self
                .server_assignments
                .saturating_sub(earlier.server_assignments),
            checkout_errors: self.checkout_errors.saturating_sub(earlier.checkout_errors),
        }
    }
}

impl PoolStats {
    /// Reads every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            xact_count: get(&self.xact_count),
            query_count: get(&self.query_count),
            received: get(&self.received),
            sent: get(&self.sent),
            xact_time_us: get(&self.xact_time_us),
            query_time_us: get(&self.query_time_us),
            wait_time_us: get(&self.wait_time_us),
            server_assignments: get(&self.server_assignments),
            checkout_errors: get(&self.checkout_errors),
        }
    }

    /// Reads the latency histograms.
    pub fn latencies(&self) -> Latencies {
        Latencies {
            query: self.query_latency.snapshot(),
            xact: self.xact_latency.snapshot(),
            wait: self.wait_latency.snapshot(),
        }
    }

    /// A client got a server connection after waiting `waited_us`.
    pub fn assigned(&self, waited_us: u64) {
        self.server_assignments.fetch_add(1, Ordering::Relaxed);
        self.wait_time_us.fetch_add(waited_us, Ordering::Relaxed);
        self.wait_latency.record(waited_us);
    }
}

/// Upper bounds of the latency histograms' buckets, in microseconds (the
/// last bucket, `+Inf`, is implied): 0.5 ms to 30 s.
pub const LATENCY_BUCKETS_US: [u64; 15] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000, 30_000_000,
];

/// A latency histogram with fixed buckets: recording is one bucket search
/// over [`LATENCY_BUCKETS_US`] and two relaxed adds; `/metrics` reads it.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Events per bucket (not cumulative); the last is above every bound.
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    /// Sum of the recorded values, in microseconds.
    sum_us: AtomicU64,
}

/// A point-in-time copy of a [`Histogram`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Events per bucket, not cumulative; see [`LATENCY_BUCKETS_US`].
    pub buckets: [u64; LATENCY_BUCKETS_US.len() + 1],
    /// Sum of the recorded values, in microseconds.
    pub sum_us: u64,
}

impl Histogram {
    /// Records one event that took `us` microseconds.
    pub fn record(&self, us: u64) {
        let i = LATENCY_BUCKETS_US
            .iter()
            .position(|&bound| us <= bound)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        if let Some(bucket) = self.buckets.get(i) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Reads every bucket.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
            sum_us: self.sum_us.load(Ordering::Relaxed),
        }
    }
}

/// A pool's three latency histograms at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Latencies {
    /// See [`PoolStats::query_latency`].
    pub query: HistogramSnapshot,
    /// See [`PoolStats::xact_latency`].
    pub xact: HistogramSnapshot,
    /// See [`PoolStats::wait_latency`].
    pub wait: HistogramSnapshot,
}

impl Latencies {
    /// Histogram-wise sum, for totals over pools.
    pub fn add(&mut self, other: &Latencies) {
        self.query.add(&other.query);
        self.xact.add(&other.xact);
        self.wait.add(&other.wait);
    }
}

impl HistogramSnapshot {
    /// Bucket-wise sum, for totals over pools.
    pub fn add(&mut self, other: &HistogramSnapshot) {
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *mine += theirs;
        }
        self.sum_us += other.sum_us;
    }

    /// Events recorded.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

/// SQLSTATE classes are two characters of `0-9A-Z`.
const CLASS_CHARS: usize = 36;

/// Errors the proxy itself sent to clients, by SQLSTATE class, and refused
/// passwords: one relaxed add per error, read by `/metrics`.
#[derive(Debug)]
pub struct ErrorCounts {
    /// Indexed by the class's two characters, base 36.
    classes: Box<[AtomicU64]>,
    auth_failures: AtomicU64,
}

impl Default for ErrorCounts {
    fn default() -> Self {
        ErrorCounts {
            classes: (0..CLASS_CHARS * CLASS_CHARS)
                .map(|_| AtomicU64::new(0))
                .collect(),
            auth_failures: AtomicU64::new(0),
        }
    }
}

fn class_digit(c: u8) -> Option<usize> {
    match c {
        b'0'..=b'9' => Some((c - b'0') as usize),
        b'A'..=b'Z' => Some((c - b'A') as usize + 10),
        _ => None,
    }
}

impl ErrorCounts {
    /// Counts an error sent with SQLSTATE `code` (e.g. `53300`, class `53`).
    pub fn record(&self, code: &str) {
        let b = code.as_bytes();
        let (Some(hi), Some(lo)) = (
            b.first().copied().and_then(class_digit),
            b.get(1).copied().and_then(class_digit),
        ) else {
            return;
        };
        if let Some(c) = self.classes.get(hi * CLASS_CHARS + lo) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a login refused for a wrong password or an unknown user.
    pub fn auth_failed(&self) {
        self.auth_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Refused logins so far.
    pub fn auth_failures(&self) -> u64 {
        self.auth_failures.load(Ordering::Relaxed)
    }

    /// Every class with errors, and how many.
    pub fn by_class(&self) -> Vec<(String, u64)> {
        const DIGITS: &[u8; CLASS_CHARS] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
        self.classes
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let n = c.load(Ordering::Relaxed);
                let class = [DIGITS[i / CLASS_CHARS], DIGITS[i % CLASS_CHARS]];
                (n > 0).then(|| (String::from_utf8_lossy(&class).into_owned(), n))
            })
            .collect()
    }
}

/// No clock is running.
const STOPPED: u64 = 0;

/// One session's clocks over its pool's counters, kept by the relay: it is
/// told when the client asks for replies (Query, Sync, FunctionCall) and
/// when ReadyForQuery messages come back, and times queries and
/// transactions from that. Shared by the relay's two directions, hence atomics.
#[derive(Debug)]
pub struct Meter<'a> {
    stats: &'a PoolStats,
    /// ReadyForQuery messages the client still awaits.
    owed: AtomicU64,
    /// `clock` reading (plus one) when the running query began.
    query_start: AtomicU64,
    /// `clock` reading (plus one) when the running transaction began.
    xact_start: AtomicU64,
    /// `clock` reading (plus one) at the last ReadyForQuery.
    last_ready: AtomicU64,
}

impl<'a> Meter<'a> {
    /// Clocks stopped, writing into `stats`.
    pub fn new(stats: &'a PoolStats) -> Meter<'a> {
        Meter {
            stats,
            owed: AtomicU64::new(0),
            query_start: AtomicU64::new(STOPPED),
            xact_start: AtomicU64::new(STOPPED),
            last_ready: AtomicU64::new(STOPPED),
        }
    }

    fn now(&self) -> u64 {
        crate::clock::now_us() + 1
    }

    /// The `clock` reading taken at the last ReadyForQuery, if one came:
    /// when the period ended, with no clock read of its own.
    pub fn last_ready(&self) -> Option<u64> {
        match self.last_ready.load(Ordering::Relaxed) {
            STOPPED => None,
            at => Some(at - 1),
        }
    }

    /// `n` bytes came from the client.
    pub fn received(&self, n: usize) {
        self.stats.received.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// `n` bytes went to the client.
    pub fn sent(&self, n: usize) {
        self.stats.sent.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The client sent `count` messages that each end in a ReadyForQuery:
    /// starts the query clock (and the transaction's) unless running.
    pub fn requested(&self, count: u64) {
        if count == 0 {
            return;
        }
        self.owed.fetch_add(count, Ordering::Relaxed);
        if self.query_start.load(Ordering::Relaxed) != STOPPED {
            return;
        }
        let now = self.now();
        self.query_start.store(now, Ordering::Relaxed);
        if self.xact_start.load(Ordering::Relaxed) == STOPPED {
            self.xact_start.store(now, Ordering::Relaxed);
        }
    }

    /// `count` ReadyForQuery messages went to the client, the last with
    /// `status`. While more are owed (pipelining) the clocks run on.
    pub fn ready(&self, count: u64, status: u8) {
        if count == 0 {
            return;
        }
        let now = self.now();
        self.last_ready.store(now, Ordering::Relaxed);
        let owed = self.owed.load(Ordering::Relaxed).saturating_sub(count);
        self.owed.store(owed, Ordering::Relaxed);
        let next = if owed > 0 { now } else { STOPPED };
        self.stats.query_count.fetch_add(count, Ordering::Relaxed);
        let started = self.query_start.swap(next, Ordering::Relaxed);
        if started != STOPPED {
            let took = now.saturating_sub(started);
            self.stats.query_time_us.fetch_add(took, Ordering::Relaxed);
            self.stats.query_latency.record(took);
        }
        if status == b'I' {
            self.stats.xact_count.fetch_add(1, Ordering::Relaxed);
            let began = self.xact_start.swap(next, Ordering::Relaxed);
            if began != STOPPED {
                let took = now.saturating_sub(began);
                self.stats.xact_time_us.fetch_add(took, Ordering::Relaxed);
                self.stats.xact_latency.record(took);
            }
        }
    }
}

/// Counter snapshots taken once per stats period, so per-second averages
/// over the last complete period can be given (PgBouncer's `SHOW STATS`
/// `avg_*`). Keyed by whatever the reader aggregates over (pools).
pub struct History<K> {
    state: std::sync::Mutex<HistoryState<K>>,
}

struct HistoryState<K> {
    previous: Option<(Instant, std::collections::HashMap<K, StatsSnapshot>)>,
    last: Option<(Instant, std::collections::HashMap<K, StatsSnapshot>)>,
}

impl<K> Default for History<K> {
    fn default() -> Self {
        History {
            state: std::sync::Mutex::new(HistoryState {
                previous: None,
                last: None,
            }),
        }
    }
}

impl<K: std::hash::Hash + Eq + Clone> History<K> {
    /// Records the counters at the end of a period.
    pub fn record(&self, at: Instant, counters: std::collections::HashMap<K, StatsSnapshot>) {
        let mut st = match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        st.previous = st.last.take();
        st.last = Some((at, counters));
    }

    /// What each key did during the last complete period, and that
    /// period's length in seconds (0 before two periods were recorded).
    /// A key new in the period counts from zero.
    pub fn last_period(&self) -> (std::collections::HashMap<K, StatsSnapshot>, f64) {
        let st = match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let (Some((t0, before)), Some((t1, after))) = (&st.previous, &st.last) else {
            return (Default::default(), 0.0);
        };
        let deltas = after
            .iter()
            .map(|(k, s)| {
                let zero = StatsSnapshot::default();
                (k.clone(), s.since(before.get(k).unwrap_or(&zero)))
            })
            .collect();
        (deltas, t1.duration_since(*t0).as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_and_a_transaction_are_counted_once() {
        let stats = PoolStats::default();
        let meter = Meter::new(&stats);
        meter.received(10);
        meter.requested(1);
        std::thread::sleep(std::time::Duration::from_millis(2));
        meter.ready(1, b'T');
        meter.requested(1);
        meter.ready(1, b'I');
        meter.sent(30);
        let s = stats.snapshot();
        assert_eq!((s.query_count, s.xact_count), (2, 1));
        assert_eq!((s.received, s.sent), (10, 30));
        assert!(s.xact_time_us >= 2000, "{s:?}");
        assert!(s.xact_time_us >= s.query_time_us);
        let q = stats.query_latency.snapshot();
        assert_eq!((q.count(), q.sum_us), (2, s.query_time_us));
        assert_eq!(stats.xact_latency.snapshot().count(), 1);
    }

    #[test]
    fn errors_are_counted_by_class() {
        let e = ErrorCounts::default();
        e.record("53300");
        e.record("53400");
        e.record("28P01");
        e.record("x");
        assert_eq!(e.by_class(), vec![("28".into(), 1), ("53".into(), 2)]);
    }

    #[test]
    fn histogram_buckets_are_inclusive_upper_bounds() {
        let h = Histogram::default();
        h.record(0);
        h.record(500);
        h.record(501);
        h.record(u64::MAX / 2);
        let s = h.snapshot();
        assert_eq!(s.buckets[0], 2);
        assert_eq!(s.buckets[1], 1);
        assert_eq!(s.buckets[LATENCY_BUCKETS_US.len()], 1);
        assert_eq!(s.count(), 4);
    }

    #[test]
    fn pipelined_replies_keep_the_clock_running() {
        let stats = PoolStats::default();
        let meter = Meter::new(&stats);
        meter.requested(3);
        meter.ready(2, b'I');
        assert_ne!(meter.query_start.load(Ordering::Relaxed), STOPPED);
        meter.ready(1, b'I');
        assert_eq!(meter.query_start.load(Ordering::Relaxed), STOPPED);
        let s = stats.snapshot();
        assert_eq!((s.query_count, s.xact_count), (3, 2));
        // A reply with no request seen still counts, untimed.
        meter.ready(1, b'I');
        assert_eq!(stats.snapshot().query_count, 4);
    }

    #[test]
    fn history_gives_the_last_complete_period() {
        let h: History<&str> = History::default();
        assert_eq!(h.last_period().1, 0.0);
        let t0 = Instant::now();
        let a = StatsSnapshot {
            query_count: 5,
            ..Default::default()
        };
        h.record(t0, [("x", a)].into());
        let mut b = a;
        b.query_count = 35;
        h.record(
            t0 + std::time::Duration::from_secs(15),
            [("x", b), ("y", a)].into(),
        );
        let (d, secs) = h.last_period();
        assert_eq!(secs, 15.0);
        assert_eq!(d["x"].query_count, 30);
        assert_eq!(d["y"].query_count, 5);
    }

    #[test]
    fn snapshots_add_and_subtract() {
        let stats = PoolStats::default();
        stats.assigned(5);
        let a = stats.snapshot();
        stats.assigned(7);
        let b = stats.snapshot();
        let d = b.since(&a);
        assert_eq!((d.server_assignments, d.wait_time_us), (1, 7));
        let mut total = a;
        total.add(&d);
        assert_eq!(total, b);
    }
}
