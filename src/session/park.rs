//! The parking lot: clients of transaction and statement pooling that have
//! been idle a while wait here for their next message without a task of
//! their own. A parked client is its socket in one epoll set (through mio)
//! and the little it keeps between transactions; its task, the task's
//! future and tokio's registration of the socket are gone until it is
//! handed back ([`Resume`]):
//!
//! - when its socket turns readable (a message, or a hang-up);
//! - when it is called back ([`ParkingLot::unpark`]: KILL, its tenant
//!   suspended or dropped) or every client is ([`ParkingLot::close`]: a drain);
//! - when its deadline (`client_idle_timeout`) passes.
//!
//! Hand-rolled rather than a task per client on purpose: a tokio task with
//! a session's future is kilobytes, and idle clients are the many (PgBouncer
//! holds one in under a kilobyte). One thread waits on the epoll set and
//! hands clients back to the runtime; it checks deadlines once a second.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token, Waker};

/// A parked client's socket, in blocking-agnostic std form (non-blocking).
#[derive(Debug)]
pub enum Socket {
    /// TCP.
    Tcp(std::net::TcpStream),
    /// Unix-domain socket.
    Unix(std::os::unix::net::UnixStream),
}

/// The socket as the epoll set holds it.
enum Source {
    Tcp(mio::net::TcpStream),
    Unix(mio::net::UnixStream),
}

impl Source {
    fn from_socket(socket: Socket) -> Source {
        match socket {
            Socket::Tcp(s) => Source::Tcp(mio::net::TcpStream::from_std(s)),
            Socket::Unix(s) => Source::Unix(mio::net::UnixStream::from_std(s)),
        }
    }

    fn into_socket(self) -> Socket {
        match self {
            Source::Tcp(s) => Socket::Tcp(s.into()),
            Source::Unix(s) => Socket::Unix(s.into()),
        }
    }

    fn source(&mut self) -> &mut dyn mio::event::Source {
        match self {
            Source::Tcp(s) => s,
            Source::Unix(s) => s,
        }
    }
}

/// What a parked client becomes again when it is handed back.
pub trait Resume: Send + 'static {
    /// Goes on serving the client on `socket`. Called inside the runtime's
    /// context (it may spawn), on the lot's thread or a caller's; it must
    /// not block.
    fn resume(self, socket: Socket);
}

/// One parked client.
struct Slot<T> {
    source: Source,
    item: T,
    deadline: Option<Instant>,
}

/// Where the parked are kept, shared by the lot's thread and its users.
struct Lot<T> {
    registry: mio::Registry,
    waker: Waker,
    /// Boxed: the map is sized for its peak and keeps some slack, which
    /// costs a pointer per bucket rather than a whole slot.
    parked: Mutex<HashMap<u64, Box<Slot<T>>>>,
    /// No more parking: a drain began, or the runtime went away.
    closed: AtomicBool,
    /// The thread should end.
    stopped: AtomicBool,
    runtime: tokio::runtime::Handle,
}

/// The token the waker uses; client ids start at 1.
const WAKER: Token = Token(0);
/// How often deadlines are checked.
const TICK: Duration = Duration::from_secs(1);

/// Idle clients waiting without tasks, keyed by client id (never 0).
pub struct ParkingLot<T: Resume> {
    lot: Arc<Lot<T>>,
}

impl<T: Resume> ParkingLot<T> {
    /// Starts the lot's thread. Must be called inside a tokio runtime:
    /// clients are handed back to it, and when it shuts down the clients
    /// still parked are dropped.
    pub fn start() -> io::Result<ParkingLot<T>> {
        let poll = Poll::new()?;
        let lot = Arc::new(Lot {
            registry: poll.registry().try_clone()?,
            waker: Waker::new(poll.registry(), WAKER)?,
            parked: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            runtime: tokio::runtime::Handle::current(),
        });
        let weak = Arc::downgrade(&lot);
        std::thread::Builder::new()
            .name("pgtenant-park".into())
            .spawn(move || watch(poll, weak))?;
        // A runtime dropped without a drain drops its tasks; this one's
        // guard then drops the parked too (they hold what the tasks held).
        let guard = StopWith(Arc::downgrade(&lot));
        lot.runtime.spawn(async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        });
        Ok(ParkingLot { lot })
    }

    /// Parks `item` with its `socket` under `id` until its socket is
    /// readable, it is unparked, or `deadline` passes. Refused, and both
    /// given back, once the lot is closed or when the socket cannot be
    /// registered.
    pub fn park(
        &self,
        id: u64,
        socket: Socket,
        item: T,
        deadline: Option<Instant>,
    ) -> Result<(), (Socket, T)> {
        let mut source = Source::from_socket(socket);
        let mut parked = self.lot.lock();
        if self.lot.closed.load(Ordering::Acquire) {
            return Err((source.into_socket(), item));
        }
        // Registered under the lock: an event that comes at once waits for
        // the slot to be there.
        if let Err(e) =
            self.lot
                .registry
                .register(source.source(), Token(id as usize), Interest::READABLE)
        {
            tracing::debug!(error = %e, "cannot park a client");
            return Err((source.into_socket(), item));
        }
        parked.insert(
            id,
            Box::new(Slot {
                source,
                item,
                deadline,
            }),
        );
        Ok(())
    }

    /// Hands client `id` back now, if it is parked; says whether it was.
    pub fn unpark(&self, id: u64) -> bool {
        let slot = self.lot.lock().remove(&id);
        match slot {
            Some(slot) => {
                self.lot.hand_back(slot);
                true
            }
            None => false,
        }
    }

    /// Refuses further parking and hands every parked client back (a drain).
    pub fn close(&self) {
        self.lot.closed.store(true, Ordering::Release);
        let all: Vec<Box<Slot<T>>> = self.lot.lock().drain().map(|(_, s)| s).collect();
        for slot in all {
            self.lot.hand_back(slot);
        }
    }

    /// Clients parked now.
    pub fn len(&self) -> usize {
        self.lot.lock().len()
    }

    /// True when no client is parked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T: Resume> Drop for ParkingLot<T> {
    fn drop(&mut self) {
        self.lot.stop();
    }
}

impl<T: Resume> Lot<T> {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Box<Slot<T>>>> {
        match self.parked.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Takes a removed slot's socket out of the epoll set and resumes it.
    // The box is what the map held; it is freed here, as the client leaves.
    #[allow(clippy::boxed_local)]
    fn hand_back(&self, slot: Box<Slot<T>>) {
        let Slot {
            mut source, item, ..
        } = *slot;
        let _ = self.registry.deregister(source.source());
        let _entered = self.runtime.enter();
        item.resume(source.into_socket());
    }

    /// Ends the thread and drops the parked without resuming them.
    fn stop(&self) {
        self.closed.store(true, Ordering::Release);
        self.stopped.store(true, Ordering::Release);
        let all: Vec<Box<Slot<T>>> = self.lock().drain().map(|(_, s)| s).collect();
        drop(all);
        let _ = self.waker.wake();
    }
}

/// Stops the lot when dropped (with the runtime's tasks).
struct StopWith<T: Resume>(Weak<Lot<T>>);

impl<T: Resume> Drop for StopWith<T> {
    fn drop(&mut self) {
        if let Some(lot) = self.0.upgrade() {
            lot.stop();
        }
    }
}

/// The lot's thread: hands back clients whose sockets turned readable and
/// those past their deadline, until the lot is stopped or gone.
fn watch<T: Resume>(mut poll: Poll, lot: Weak<Lot<T>>) {
    let mut events = Events::with_capacity(256);
    let mut next_sweep = Instant::now() + TICK;
    loop {
        let timeout = next_sweep.saturating_duration_since(Instant::now());
        if let Err(e) = poll.poll(&mut events, Some(timeout)) {
            if e.kind() != io::ErrorKind::Interrupted {
                tracing::warn!(error = %e, "parking lot: waiting failed");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let Some(lot) = lot.upgrade() else { return };
        if lot.stopped.load(Ordering::Acquire) {
            return;
        }
        for event in events.iter() {
            if event.token() == WAKER {
                continue;
            }
            let slot = lot.lock().remove(&(event.token().0 as u64));
            if let Some(slot) = slot {
                lot.hand_back(slot);
            }
        }
        let now = Instant::now();
        if now >= next_sweep {
            next_sweep = now + TICK;
            let due: Vec<Box<Slot<T>>> = {
                let mut parked = lot.lock();
                let ids: Vec<u64> = parked
                    .iter()
                    .filter(|(_, s)| s.deadline.is_some_and(|d| d <= now))
                    .map(|(id, _)| *id)
                    .collect();
                ids.iter().filter_map(|id| parked.remove(id)).collect()
            };
            for slot in due {
                lot.hand_back(slot);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::sync::mpsc;

    /// Reports each hand-back with its id.
    struct Probe(u64, mpsc::Sender<(u64, Socket)>);

    impl Resume for Probe {
        fn resume(self, socket: Socket) {
            let _ = self.1.send((self.0, socket));
        }
    }

    fn pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let near = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (far, _) = listener.accept().unwrap();
        far.set_nonblocking(true).unwrap();
        (near, far)
    }

    #[tokio::test]
    async fn readable_unparked_and_due_clients_come_back_once() {
        let lot: ParkingLot<Probe> = ParkingLot::start().unwrap();
        let (tx, rx) = mpsc::channel();
        let (mut near1, far1) = pair();
        let (_near2, far2) = pair();
        let (_near3, far3) = pair();
        for (id, far, deadline) in [
            (1, far1, None),
            (2, far2, None),
            (3, far3, Some(Instant::now())),
        ] {
            lot.park(id, Socket::Tcp(far), Probe(id, tx.clone()), deadline)
                .map_err(|_| "refused")
                .unwrap();
        }
        assert_eq!(lot.len(), 3);
        near1.write_all(b"Q").unwrap();
        let (id, socket) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        let (id3, _) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        let mut got = [id, id3];
        got.sort();
        assert_eq!(
            got,
            [1, 3],
            "the readable one and the one past its deadline"
        );
        if let (1, Socket::Tcp(mut s)) = (id, socket) {
            s.set_nonblocking(false).unwrap();
            let mut byte = [0u8; 1];
            s.read_exact(&mut byte).unwrap();
            assert_eq!(&byte, b"Q", "the socket comes back with its bytes unread");
        }
        assert!(lot.unpark(2));
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap().0, 2);
        assert!(!lot.unpark(2), "a client comes back once");
        assert!(lot.is_empty());
    }

    #[tokio::test]
    async fn a_closed_lot_hands_everyone_back_and_refuses_more() {
        let lot: ParkingLot<Probe> = ParkingLot::start().unwrap();
        let (tx, rx) = mpsc::channel();
        let (_near, far) = pair();
        lot.park(7, Socket::Tcp(far), Probe(7, tx.clone()), None)
            .map_err(|_| "refused")
            .unwrap();
        lot.close();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap().0, 7);
        let (_near, far) = pair();
        assert!(lot.park(8, Socket::Tcp(far), Probe(8, tx), None).is_err());
    }
}
