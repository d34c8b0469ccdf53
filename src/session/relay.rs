//! The relay: forwards bytes between a client and its backend, both ways at
//! once, looking only at message headers.
//!
//! Hand-rolled on purpose: this is the hot path. Each direction reads into a
//! buffer allocated once per session and writes the same bytes on; a tiny
//! scanner walks the 5-byte headers inside each chunk to learn just what the
//! proxy must know (the client's Terminate, how many replies are owed, the
//! backend's transaction status) without copying or allocating per message.
//! What each direction found is published for the other (`boundary`), so
//! that the relay can tell a client that sits idle inside a transaction
//! (`idle_transaction_timeout`) and end a session at its next idle
//! boundary when asked to (its tenant was suspended).

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::boundary::{read_or_idle, Closer, Idle, IdleLimits, Progress};

use crate::net::Stream;
use crate::protocol::tag;
use crate::stats::Meter;

/// Size of each direction's buffer.
const CHUNK: usize = 16 * 1024;

/// Walks message boundaries across the chunks of one direction.
#[derive(Debug, Default)]
pub struct Scanner {
    header: [u8; 5],
    header_len: usize,
    /// Body bytes of the current message not seen yet.
    body_left: usize,
    /// The current message is a ReadyForQuery whose status byte is next.
    want_status: bool,
    /// Messages that each end with one ReadyForQuery (Query, Sync, FunctionCall).
    pub syncs: u64,
    /// ReadyForQuery messages seen.
    pub ready: u64,
    /// Status byte of the last ReadyForQuery.
    pub last_status: u8,
}

/// What the scanner found in a chunk.
#[derive(Debug, PartialEq, Eq)]
pub enum Scan {
    /// Forward the whole chunk.
    Forward,
    /// A Terminate starts at this offset: forward only what comes before it.
    Terminate(usize),
    /// A NotificationResponse starts at this offset (not consumed): forward
    /// what comes before it, then let the gate decide on the whole message.
    Notification(usize),
    /// A length word below 4: the stream is corrupt.
    Corrupt,
}

impl Scanner {
    /// True between messages.
    pub fn at_boundary(&self) -> bool {
        self.header_len == 0 && self.body_left == 0
    }

    /// Scans one chunk. `client` selects the client-to-server rules.
    pub fn scan(&mut self, chunk: &[u8], client: bool) -> Scan {
        let mut pos = 0;
        while pos < chunk.len() {
            if self.body_left > 0 {
                if self.want_status {
                    self.last_status = chunk[pos];
                    self.want_status = false;
                }
                let take = self.body_left.min(chunk.len() - pos);
                self.body_left -= take;
                pos += take;
                continue;
            }
            if self.header_len == 0 {
                if client && chunk[pos] == tag::TERMINATE {
                    return Scan::Terminate(pos);
                }
                if !client && chunk[pos] == tag::NOTIFICATION_RESPONSE {
                    return Scan::Notification(pos);
                }
            }
            let take = (5 - self.header_len).min(chunk.len() - pos);
            self.header[self.header_len..self.header_len + take]
                .copy_from_slice(&chunk[pos..pos + take]);
            self.header_len += take;
            pos += take;
            if self.header_len < 5 {
                continue;
            }
            self.header_len = 0;
            let len = u32::from_be_bytes([
                self.header[1],
                self.header[2],
                self.header[3],
                self.header[4],
            ]) as usize;
            if len < 4 {
                return Scan::Corrupt;
            }
            self.body_left = len - 4;
            match (client, self.header[0]) {
                (true, b'Q' | b'S' | b'F') => self.syncs += 1,
                (false, tag::READY_FOR_QUERY) => {
                    self.ready += 1;
                    self.want_status = self.body_left > 0;
                }
                _ => {}
            }
        }
        Scan::Forward
    }
}

/// Why the relay stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum RelayEnd {
    /// The client sent Terminate.
    ClientTerminated,
    /// The client's connection closed or failed.
    ClientGone,
    /// The client sent a corrupt length.
    ClientCorrupt,
    /// The backend's connection closed or failed.
    BackendGone,
    /// The backend sent a corrupt length.
    BackendCorrupt,
    /// The client sent nothing for `idle_transaction_timeout` while inside
    /// a transaction, with nothing owed either way.
    IdleTransactionTimeout,
    /// The client sent nothing for `client_idle_timeout` outside a
    /// transaction, with nothing owed either way.
    ClientIdleTimeout,
    /// The `Closer` asked for the end, and the session came to rest outside
    /// a transaction: both ways between messages, nothing owed.
    Closing,
}

/// Both directions' scanners after the relay stopped.
#[derive(Debug, Default)]
pub struct RelayState {
    /// Client to server.
    pub client: Scanner,
    /// Server to client.
    pub backend: Scanner,
}

impl RelayState {
    /// The backend owes nothing and is outside a transaction: safe to reset and reuse.
    pub fn backend_idle(&self) -> bool {
        self.client.at_boundary()
            && self.backend.at_boundary()
            && self.client.syncs == self.backend.ready
            && self.backend.last_status == b'I'
    }
}

/// Decides whether a notification may reach this client: LISTEN/NOTIFY
/// channels are per database in PostgreSQL, shared by every tenant's schema,
/// so a notification sent by another tenant's session must not be delivered.
pub trait NotificationGate: Sync {
    /// Whether a notification from backend process `sender` may be delivered.
    fn allows(&self, sender: i32) -> impl std::future::Future<Output = bool> + Send;
}

/// Largest notification the gate reads whole (PostgreSQL caps payloads at 8000 bytes).
const MAX_NOTIFICATION: usize = 64 * 1024;

/// Relays until either side ends, the client sits without a word for one
/// of `idle` (inside or outside a transaction), or `closer` asks for the
/// end and the session is at rest outside a transaction.
/// `state.backend.last_status` must hold the status of the ReadyForQuery
/// the client was last sent.
pub async fn relay<G: NotificationGate, C: Closer>(
    client: &mut Stream,
    backend: &mut Stream,
    state: &mut RelayState,
    gate: &G,
    meter: &Meter<'_>,
    idle: IdleLimits,
    closer: &C,
) -> RelayEnd {
    let progress = Progress::new(state, idle.any());
    let (mut client_rx, mut client_tx) = client.split();
    let (mut backend_rx, mut backend_tx) = backend.split();
    let mut up = vec![0u8; CHUNK];
    let mut down = vec![0u8; CHUNK];
    let RelayState {
        client: cs,
        backend: bs,
    } = state;
    // Cancel safety: whichever direction loses the race is dropped between or
    // inside a write; the scanners say whether that left the backend mid-message.
    let client_side = Side {
        gate: None::<&G>,
        meter,
        progress: &progress,
        idle_limit: idle,
        closer,
    };
    let backend_side = Side {
        gate: Some(gate),
        meter,
        progress: &progress,
        idle_limit: IdleLimits::default(),
        closer,
    };
    tokio::select! {
        end = pump(&mut client_rx, &mut backend_tx, &mut up, cs, &client_side) => end,
        end = pump(&mut backend_rx, &mut client_tx, &mut down, bs, &backend_side) => end,
        end = super::boundary::watch(closer, &progress) => end,
    }
}

/// What one direction of the relay needs besides its streams.
struct Side<'a, 'm, G, C> {
    /// `Some` for the backend-to-client direction.
    gate: Option<&'a G>,
    meter: &'a Meter<'m>,
    progress: &'a Progress,
    /// The client-to-backend direction: how long the client may be quiet.
    idle_limit: IdleLimits,
    /// Asked at the server's ReadyForQuery when a close is pending.
    closer: &'a C,
}

/// Copies one direction; `side.gate` is `Some` for the backend-to-client one.
async fn pump<R, W, G, C>(
    rx: &mut R,
    tx: &mut W,
    buf: &mut [u8],
    scanner: &mut Scanner,
    side: &Side<'_, '_, G, C>,
) -> RelayEnd
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    G: NotificationGate,
    C: Closer,
{
    let Side {
        gate,
        meter,
        progress,
        idle_limit,
        closer,
    } = *side;
    let client = gate.is_none();
    let (gone_here, gone_there, corrupt) = if client {
        (
            RelayEnd::ClientGone,
            RelayEnd::BackendGone,
            RelayEnd::ClientCorrupt,
        )
    } else {
        (
            RelayEnd::BackendGone,
            RelayEnd::ClientGone,
            RelayEnd::BackendCorrupt,
        )
    };
    let mut reported = scanner.ready;
    loop {
        let n = match read_or_idle(rx, buf, idle_limit, progress).await {
            Err(Idle::InTransaction) => return RelayEnd::IdleTransactionTimeout,
            Err(Idle::Outside) => return RelayEnd::ClientIdleTimeout,
            Ok(Ok(0) | Err(_)) => return gone_here,
            Ok(Ok(n)) => n,
        };
        let syncs = scanner.syncs;
        let mut forwarded = 0;
        let mut start = 0;
        while start < n {
            let chunk = &buf[start..n];
            let (upto, next) = match scanner.scan(chunk, client) {
                Scan::Forward => (chunk.len(), None),
                Scan::Terminate(at) => (at, Some(Err(RelayEnd::ClientTerminated))),
                Scan::Notification(at) => (at, Some(Ok(at))),
                Scan::Corrupt => return corrupt,
            };
            progress.scanned(scanner, client);
            if upto > 0 && tx.write_all(&chunk[..upto]).await.is_err() {
                return gone_there;
            }
            progress.forwarded(scanner, client);
            forwarded += upto;
            match next {
                None => start = n,
                Some(Err(end)) => return end,
                Some(Ok(at)) => {
                    let Some(gate) = gate else { return corrupt };
                    // Rare: a notification is read whole into its own buffer.
                    let mut message = Vec::new();
                    let used = match read_whole(rx, &chunk[at..], &mut message).await {
                        Ok(used) => used,
                        Err(Some(())) => return corrupt,
                        Err(None) => return gone_here,
                    };
                    let sender = message
                        .get(5..9)
                        .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                    if let Some(sender) = sender {
                        if gate.allows(sender).await {
                            if tx.write_all(&message).await.is_err() {
                                return gone_there;
                            }
                            forwarded += message.len();
                        }
                    }
                    start += at + used;
                }
            }
        }
        if client {
            meter.received(forwarded);
            meter.requested(scanner.syncs - syncs);
        } else {
            meter.sent(forwarded);
            // A ReadyForQuery counts once its status byte has been seen.
            if !scanner.want_status {
                meter.ready(scanner.ready - reported, scanner.last_status);
                reported = scanner.ready;
            }
            if super::boundary::closes_here(closer, progress) {
                return RelayEnd::Closing;
            }
        }
    }
}

/// Collects one whole message that starts at `pending[0]` into `out`, reading
/// the rest from `rx`. Returns how many bytes of `pending` it used;
/// `Err(Some(()))` for a bad length, `Err(None)` when the stream ended.
async fn read_whole<R: AsyncRead + Unpin>(
    rx: &mut R,
    pending: &[u8],
    out: &mut Vec<u8>,
) -> Result<usize, Option<()>> {
    let from_pending = pending.len().min(5);
    out.extend_from_slice(&pending[..from_pending]);
    if out.len() < 5 {
        let mut rest = [0u8; 5];
        let missing = 5 - out.len();
        rx.read_exact(&mut rest[..missing])
            .await
            .map_err(|_| None)?;
        out.extend_from_slice(&rest[..missing]);
    }
    let len = u32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize;
    if !(4..=MAX_NOTIFICATION).contains(&len) {
        return Err(Some(()));
    }
    let total = len + 1;
    let more = (total - 5).min(pending.len() - from_pending);
    out.extend_from_slice(&pending[from_pending..from_pending + more]);
    let used = from_pending + more;
    if out.len() < total {
        let already = out.len();
        out.resize(total, 0);
        rx.read_exact(&mut out[already..]).await.map_err(|_| None)?;
    }
    Ok(used)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn counts_syncs_and_ready_across_any_split() {
        let mut client = Vec::new();
        client.extend(msg(b'Q', b"select 1\0"));
        client.extend(msg(b'P', b"\0select 2\0\0\0"));
        client.extend(msg(b'S', b""));
        let mut server = Vec::new();
        server.extend(msg(b'T', b"\0\0"));
        server.extend(msg(b'Z', b"T"));
        server.extend(msg(b'C', b"SELECT 1\0"));
        server.extend(msg(b'Z', b"I"));
        for split in 1..client.len().max(server.len()) {
            let mut c = Scanner::default();
            for chunk in client.chunks(split) {
                assert_eq!(c.scan(chunk, true), Scan::Forward);
            }
            assert_eq!(c.syncs, 2);
            assert!(c.at_boundary());
            let mut s = Scanner::default();
            for chunk in server.chunks(split) {
                assert_eq!(s.scan(chunk, false), Scan::Forward);
            }
            assert_eq!((s.ready, s.last_status), (2, b'I'), "split {split}");
        }
    }

    struct DenySeven;

    impl NotificationGate for DenySeven {
        async fn allows(&self, sender: i32) -> bool {
            sender != 7
        }
    }

    fn notification(pid: i32, payload: &str) -> Vec<u8> {
        let mut body = pid.to_be_bytes().to_vec();
        body.extend_from_slice(b"events\0");
        body.extend_from_slice(payload.as_bytes());
        body.push(0);
        msg(b'A', &body)
    }

    #[tokio::test]
    async fn notifications_from_other_tenants_are_dropped_at_any_split() {
        let mut input = msg(b'D', b"\0\x01\0\0\0\x01x");
        input.extend(notification(7, "leak"));
        input.extend(notification(8, "ok"));
        input.extend(msg(b'Z', b"I"));
        let mut expected = msg(b'D', b"\0\x01\0\0\0\x01x");
        expected.extend(notification(8, "ok"));
        expected.extend(msg(b'Z', b"I"));
        for size in 1..=input.len() {
            let mut rx: &[u8] = &input;
            let mut out = Vec::new();
            let mut buf = vec![0u8; size];
            let mut scanner = Scanner::default();
            let stats = crate::stats::PoolStats::default();
            let meter = Meter::new(&stats);
            let progress = Progress::new(&RelayState::default(), false);
            let side = Side {
                gate: Some(&DenySeven),
                meter: &meter,
                progress: &progress,
                idle_limit: IdleLimits::default(),
                closer: &super::super::boundary::Never,
            };
            let end = pump(&mut rx, &mut out, &mut buf, &mut scanner, &side).await;
            assert_eq!(end, RelayEnd::BackendGone);
            assert_eq!(out, expected, "buffer of {size}");
            assert_eq!((scanner.ready, scanner.last_status), (1, b'I'));
            let counted = stats.snapshot();
            assert_eq!((counted.query_count, counted.xact_count), (1, 1));
            assert_eq!(counted.sent, expected.len() as u64, "bytes sent");
        }
    }

    #[test]
    fn finds_terminate_and_corruption() {
        let mut data = msg(b'Q', b"x\0");
        let at = data.len();
        data.extend(msg(b'X', b""));
        let mut c = Scanner::default();
        assert_eq!(c.scan(&data, true), Scan::Terminate(at));
        // An 'X' byte inside a body is not a Terminate.
        let mut c = Scanner::default();
        assert_eq!(c.scan(&msg(b'Q', b"X\0"), true), Scan::Forward);
        let mut c = Scanner::default();
        assert_eq!(c.scan(b"Q\0\0\0\x02", true), Scan::Corrupt);
    }
}
