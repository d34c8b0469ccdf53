//! What the session relay knows of message boundaries across its two
//! directions: each publishes, in a few relaxed atomics, what it has
//! forwarded whole (`Progress`), so that one side can tell when nothing is
//! under way either way. On that rest the client's idle time inside a
//! transaction (`idle_transaction_timeout`) and outside one
//! (`client_idle_timeout`), and requests to end a session at its next idle
//! boundary (`Closer`). No lock is taken per message.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

use super::relay::{RelayEnd, RelayState, Scanner};

/// Asked by the relay whether a session must end at its next idle boundary
/// (between messages both ways, nothing owed, outside a transaction).
pub trait Closer: Sync {
    /// Resolves when the answer of `must_close` may have changed. Cancel safe.
    fn requested(&self) -> impl Future<Output = ()> + Send;
    /// Whether the session must end once idle. Asked again at the boundary
    /// itself, so a request withdrawn meanwhile lets it go on.
    fn must_close(&self) -> bool;
}

/// A session nothing asks to end early.
pub struct Never;

impl Closer for Never {
    async fn requested(&self) {
        std::future::pending::<()>().await
    }

    fn must_close(&self) -> bool {
        false
    }
}

/// What each direction last published for the other: written after each
/// chunk is scanned (marked unsettled) and again once it is forwarded, so a
/// reader never takes half-forwarded bytes for a boundary. Relaxed atomics:
/// both directions run in one task, and no lock is taken per message.
#[derive(Debug)]
pub(super) struct Progress {
    /// Whether the time of each ReadyForQuery is wanted (a timeout is set).
    timed: bool,
    started: Instant,
    /// Client to server: messages that each end with one ReadyForQuery.
    syncs: AtomicU64,
    /// The client's messages so far were forwarded whole.
    client_settled: AtomicBool,
    /// Server to client: ReadyForQuery messages forwarded.
    ready: AtomicU64,
    /// The status byte of the last one.
    status: AtomicU8,
    /// The server's messages so far were forwarded whole.
    backend_settled: AtomicBool,
    /// When the last ReadyForQuery was forwarded, in microseconds after `started`.
    ready_at_us: AtomicU64,
    /// A `Closer` asked for the end at the next idle boundary.
    closing: AtomicBool,
}

impl Progress {
    pub(super) fn new(state: &RelayState, timed: bool) -> Progress {
        Progress {
            timed,
            started: Instant::now(),
            syncs: AtomicU64::new(state.client.syncs),
            client_settled: AtomicBool::new(state.client.at_boundary()),
            ready: AtomicU64::new(state.backend.ready),
            status: AtomicU8::new(state.backend.last_status),
            backend_settled: AtomicBool::new(state.backend.at_boundary()),
            ready_at_us: AtomicU64::new(0),
            closing: AtomicBool::new(false),
        }
    }

    /// A chunk was scanned and is about to be forwarded.
    pub(super) fn scanned(&self, scanner: &Scanner, client: bool) {
        if client {
            self.syncs.store(scanner.syncs, Relaxed);
            self.client_settled.store(false, Relaxed);
        } else {
            self.backend_settled.store(false, Relaxed);
        }
    }

    /// What was scanned has been forwarded.
    pub(super) fn forwarded(&self, scanner: &Scanner, client: bool) {
        if client {
            self.client_settled.store(scanner.at_boundary(), Relaxed);
            return;
        }
        if self.timed && self.ready.load(Relaxed) != scanner.ready {
            let at = self.started.elapsed().as_micros() as u64;
            self.ready_at_us.store(at, Relaxed);
        }
        self.ready.store(scanner.ready, Relaxed);
        self.status.store(scanner.last_status, Relaxed);
        self.backend_settled.store(scanner.at_boundary(), Relaxed);
    }

    /// The server's transaction status when nothing is owed either way and
    /// both directions are between messages; `None` while anything is under way.
    fn settled(&self) -> Option<u8> {
        let quiet = self.client_settled.load(Relaxed)
            && self.backend_settled.load(Relaxed)
            && self.syncs.load(Relaxed) == self.ready.load(Relaxed);
        quiet.then(|| self.status.load(Relaxed))
    }

    /// When the last ReadyForQuery was forwarded.
    fn ready_at(&self) -> Instant {
        self.started + Duration::from_micros(self.ready_at_us.load(Relaxed))
    }
}

/// How long a session client may send nothing while the server owes it
/// nothing: inside a transaction (`idle_transaction_timeout`) and outside
/// one (`client_idle_timeout`); `None`: no limit.
#[derive(Debug, Clone, Copy, Default)]
pub struct IdleLimits {
    /// Inside a transaction (the server last said `T` or `E`).
    pub in_transaction: Option<Duration>,
    /// Outside one (the server last said `I`).
    pub outside: Option<Duration>,
}

impl IdleLimits {
    /// Whether any limit is set (the relay then times ReadyForQuery).
    pub fn any(&self) -> bool {
        self.in_transaction.is_some() || self.outside.is_some()
    }

    /// The limit for a session at rest with transaction status `status`.
    fn at(&self, status: u8) -> Option<Duration> {
        match status {
            b'T' | b'E' => self.in_transaction,
            _ => self.outside,
        }
    }

    /// The shortest limit set.
    fn shortest(&self) -> Option<Duration> {
        match (self.in_transaction, self.outside) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Which limit a quiet client passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Idle {
    /// `idle_transaction_timeout`.
    InTransaction,
    /// `client_idle_timeout`.
    Outside,
}

/// Reads the next bytes from `rx` (the client's side). `Err` once the
/// client has sent nothing for one of `limits` while nothing is owed
/// either way: the limit for its transaction status at that rest. Cancel safe.
pub(super) async fn read_or_idle<R: AsyncRead + Unpin>(
    rx: &mut R,
    buf: &mut [u8],
    limits: IdleLimits,
    progress: &Progress,
) -> Result<std::io::Result<usize>, Idle> {
    let Some(shortest) = limits.shortest() else {
        return Ok(rx.read(buf).await);
    };
    let since = Instant::now();
    let mut wait = shortest;
    loop {
        if let Ok(read) = tokio::time::timeout(wait, rx.read(buf)).await {
            return Ok(read);
        }
        wait = shortest;
        let Some(status) = progress.settled() else {
            continue;
        };
        if let Some(limit) = limits.at(status) {
            let quiet = since.max(progress.ready_at()).elapsed();
            if quiet >= limit {
                return Err(match status {
                    b'T' | b'E' => Idle::InTransaction,
                    _ => Idle::Outside,
                });
            }
            wait = limit - quiet;
        }
    }
}

/// Watches `closer` for the whole relay: ends it at once when the session
/// is idle, else marks it closing, for the server's next ReadyForQuery `I`
/// (`closes_here`). Cancel safe.
pub(super) async fn watch<C: Closer>(closer: &C, progress: &Progress) -> RelayEnd {
    loop {
        if closer.must_close() {
            progress.closing.store(true, Relaxed);
            if progress.settled() == Some(b'I') {
                return RelayEnd::Closing;
            }
        }
        closer.requested().await;
    }
}

/// After the server's messages were forwarded: whether a pending close
/// happens now, the session having come to rest outside a transaction.
pub(super) fn closes_here<C: Closer>(closer: &C, progress: &Progress) -> bool {
    if !progress.closing.load(Relaxed) || progress.settled() != Some(b'I') {
        return false;
    }
    if closer.must_close() {
        return true;
    }
    // Withdrawn before the boundary: the session goes on.
    progress.closing.store(false, Relaxed);
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_quiet_client_is_found_idle_by_its_transaction_status() {
        let fifty = Some(Duration::from_millis(50));
        let in_transaction = IdleLimits {
            in_transaction: fifty,
            outside: None,
        };
        let outside = IdleLimits {
            in_transaction: None,
            outside: fifty,
        };
        let (mut quiet, _keep) = tokio::io::duplex(64);
        let mut buf = [0u8; 16];
        for (status, limits, found) in [
            (b'T', in_transaction, Idle::InTransaction),
            (b'E', in_transaction, Idle::InTransaction),
            (b'I', outside, Idle::Outside),
        ] {
            let mut state = RelayState::default();
            state.backend.last_status = status;
            let progress = Progress::new(&state, true);
            let read = read_or_idle(&mut quiet, &mut buf, limits, &progress).await;
            assert_eq!(read.err(), Some(found), "status {status}");
        }
        // The other status, or a reply owed: it waits on.
        for (status, syncs, limits) in [
            (b'I', 0, in_transaction),
            (b'T', 0, outside),
            (b'T', 1, in_transaction),
            (b'I', 1, outside),
        ] {
            let mut state = RelayState::default();
            state.backend.last_status = status;
            state.client.syncs = syncs;
            let progress = Progress::new(&state, true);
            let read = tokio::time::timeout(
                Duration::from_millis(300),
                read_or_idle(&mut quiet, &mut buf, limits, &progress),
            )
            .await;
            assert!(read.is_err(), "status {status}, syncs {syncs}");
        }
    }
}
