//! The proxy's monotonic clock, in microseconds since its first reading.
//!
//! Made for the per-transaction path: one reading there serves the pool's
//! timings, the client's state-change time and its idle deadline, because a
//! reading converts to an [`Instant`] (deadlines) and, for display, to a
//! wall-clock time without reading a clock again.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

/// The first reading, on both clocks.
struct Origin {
    instant: Instant,
    system: SystemTime,
}

static ORIGIN: OnceLock<Origin> = OnceLock::new();

fn origin() -> &'static Origin {
    ORIGIN.get_or_init(|| Origin {
        instant: Instant::now(),
        system: SystemTime::now(),
    })
}

/// Reads the clock: microseconds since the first reading.
pub fn now_us() -> u64 {
    origin().instant.elapsed().as_micros() as u64
}

/// The moment of reading `us`, for deadlines.
pub fn instant(us: u64) -> Instant {
    origin().instant + Duration::from_micros(us)
}

/// The wall-clock time of reading `us`, as the process's start time plus
/// the monotonic time since (for display: a step of the system clock
/// later on does not move it).
pub fn system(us: u64) -> SystemTime {
    origin().system + Duration::from_micros(us)
}

/// How long ago reading `us` was taken.
pub fn age(us: u64) -> Duration {
    Duration::from_micros(now_us().saturating_sub(us))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_convert_to_both_clocks() {
        let before = Instant::now();
        let us = now_us();
        let after = Instant::now();
        assert!(instant(us) + Duration::from_micros(1) >= before && instant(us) <= after);
        let later = now_us();
        assert!(later >= us);
        assert_eq!(
            system(later).duration_since(system(us)).unwrap(),
            Duration::from_micros(later - us)
        );
        assert!(age(us) >= Duration::from_micros(later - us));
    }
}
