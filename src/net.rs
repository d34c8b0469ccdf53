//! Sockets: one type for a TCP, Unix-domain or TLS stream, with borrowed
//! halves so the relay can read one direction while writing the other.
//! Handshakes and certificates are `tls`'s; this module only carries the result.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{tcp, unix, TcpStream, UnixStream};

/// A client's TLS connection to the proxy.
type ServerTlsStream = tokio_rustls::server::TlsStream<TcpStream>;
/// The proxy's TLS connection to PostgreSQL.
type ClientTlsStream = tokio_rustls::client::TlsStream<TcpStream>;

/// A connected stream socket.
#[derive(Debug)]
pub enum Stream {
    /// TCP.
    Tcp(TcpStream),
    /// Unix-domain socket.
    Unix(UnixStream),
    /// TLS from a client, after the handshake (boxed: rustls' state is large).
    Tls(Box<ServerTlsStream>),
    /// TLS to PostgreSQL, after the handshake.
    TlsClient(Box<ClientTlsStream>),
}

/// The reading half of a borrowed [`Stream`].
pub enum ReadHalf<'a> {
    /// TCP.
    Tcp(tcp::ReadHalf<'a>),
    /// Unix-domain socket.
    Unix(unix::ReadHalf<'a>),
    /// TLS from a client.
    Tls(tokio::io::ReadHalf<&'a mut ServerTlsStream>),
    /// TLS to PostgreSQL.
    TlsClient(tokio::io::ReadHalf<&'a mut ClientTlsStream>),
}

/// The writing half of a borrowed [`Stream`].
pub enum WriteHalf<'a> {
    /// TCP.
    Tcp(tcp::WriteHalf<'a>),
    /// Unix-domain socket.
    Unix(unix::WriteHalf<'a>),
    /// TLS from a client.
    Tls(TlsWriteHalf<'a, ServerTlsStream>),
    /// TLS to PostgreSQL.
    TlsClient(TlsWriteHalf<'a, ClientTlsStream>),
}

/// The writing half of a TLS stream, writing through: a write is reported
/// done only once its records are on the socket.
///
/// rustls takes plaintext into its own buffer and tokio-rustls may report a
/// write complete while the encrypted records still wait there for a
/// writable socket; they leave only on the next write or a flush. The relay
/// writes whole messages with `write_all` and then waits on the other side,
/// without flushing (a socket needs none), so under backpressure the tail of
/// a result could sit in rustls while the client waits for it. Here a write
/// whose records could not all be sent yet returns `Pending`, and the retry
/// (which `write_all` makes with the same bytes) finishes the flush and
/// reports the count taken the first time, without taking the bytes again.
pub struct TlsWriteHalf<'a, T> {
    half: tokio::io::WriteHalf<&'a mut T>,
    /// Bytes taken by rustls whose records are not yet all on the socket.
    unflushed: usize,
}

impl<'a, T> TlsWriteHalf<'a, T> {
    /// Wraps the writing half of `tokio::io::split` on a TLS stream.
    pub(crate) fn new(half: tokio::io::WriteHalf<&'a mut T>) -> Self {
        TlsWriteHalf { half, unflushed: 0 }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsWriteHalf<'_, T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.unflushed > 0 {
            return match Pin::new(&mut this.half).poll_flush(cx) {
                Poll::Ready(Ok(())) => Poll::Ready(Ok(std::mem::take(&mut this.unflushed))),
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            };
        }
        let n = match Pin::new(&mut this.half).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => n,
            other => return other,
        };
        match Pin::new(&mut this.half).poll_flush(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(n)),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                this.unflushed = n;
                Poll::Pending
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().half).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().half).poll_shutdown(cx)
    }
}

impl Stream {
    /// Borrows both halves at once.
    ///
    /// A TLS session is one state machine for both directions (a read may
    /// have to send an alert or a key update; a write needs the same record
    /// keys), so it cannot be cut in two like a socket. `tokio::io::split`
    /// shares it between the halves behind a small lock that each poll holds
    /// only for the call; the relay polls both halves from one task, so the
    /// lock is never contended and the halves keep the same shape as the
    /// socket ones (the relay stays generic over AsyncRead/AsyncWrite).
    pub fn split(&mut self) -> (ReadHalf<'_>, WriteHalf<'_>) {
        match self {
            Stream::Tls(s) => {
                let (r, w) = tokio::io::split(&mut **s);
                (ReadHalf::Tls(r), WriteHalf::Tls(TlsWriteHalf::new(w)))
            }
            Stream::TlsClient(s) => {
                let (r, w) = tokio::io::split(&mut **s);
                (
                    ReadHalf::TlsClient(r),
                    WriteHalf::TlsClient(TlsWriteHalf::new(w)),
                )
            }
            Stream::Tcp(s) => {
                let (r, w) = s.split();
                (ReadHalf::Tcp(r), WriteHalf::Tcp(w))
            }
            Stream::Unix(s) => {
                let (r, w) = s.split();
                (ReadHalf::Unix(r), WriteHalf::Unix(w))
            }
        }
    }

    /// Reads what is already buffered without waiting: `Ok(0)` means the peer
    /// closed, `WouldBlock` means nothing is pending. Used to check idle
    /// pooled connections.
    /// On TLS this reads the raw socket: any bytes there (an alert, a
    /// close_notify) mean the connection is not idle, and it is dropped.
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.try_read(buf),
            Stream::Unix(s) => s.try_read(buf),
            Stream::Tls(s) => s.get_ref().0.try_read(buf),
            Stream::TlsClient(s) => s.get_ref().0.try_read(buf),
        }
    }

    /// Waits until a plain socket has something to read (or is closed),
    /// without a buffer, so an idle client holds none. TLS streams return
    /// at once: rustls may already hold decrypted bytes.
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.readable().await,
            Stream::Unix(s) => s.readable().await,
            Stream::Tls(_) | Stream::TlsClient(_) => Ok(()),
        }
    }

    /// Sets TCP_NODELAY on TCP sockets; the relay writes whole messages and
    /// must not wait for Nagle.
    pub fn set_nodelay(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_nodelay(true),
            Stream::Unix(_) => Ok(()),
            Stream::Tls(s) => s.get_ref().0.set_nodelay(true),
            Stream::TlsClient(s) => s.get_ref().0.set_nodelay(true),
        }
    }

    /// Whether the stream is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_) | Stream::TlsClient(_))
    }

    /// The server name (SNI) a TLS client asked for, if any.
    pub fn sni(&self) -> Option<&str> {
        match self {
            Stream::Tls(s) => s.get_ref().1.server_name(),
            _ => None,
        }
    }
}

macro_rules! delegate_read {
    ($ty:ty) => {
        impl AsyncRead for $ty {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
                    Self::Unix(s) => Pin::new(s).poll_read(cx, buf),
                    Self::Tls(s) => Pin::new(s).poll_read(cx, buf),
                    Self::TlsClient(s) => Pin::new(s).poll_read(cx, buf),
                }
            }
        }
    };
}

macro_rules! delegate_write {
    ($ty:ty) => {
        impl AsyncWrite for $ty {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    Self::Tcp(s) => Pin::new(s).poll_write(cx, buf),
                    Self::Unix(s) => Pin::new(s).poll_write(cx, buf),
                    Self::Tls(s) => Pin::new(s).poll_write(cx, buf),
                    Self::TlsClient(s) => Pin::new(s).poll_write(cx, buf),
                }
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    Self::Tcp(s) => Pin::new(s).poll_flush(cx),
                    Self::Unix(s) => Pin::new(s).poll_flush(cx),
                    Self::Tls(s) => Pin::new(s).poll_flush(cx),
                    Self::TlsClient(s) => Pin::new(s).poll_flush(cx),
                }
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
                    Self::Unix(s) => Pin::new(s).poll_shutdown(cx),
                    Self::Tls(s) => Pin::new(s).poll_shutdown(cx),
                    Self::TlsClient(s) => Pin::new(s).poll_shutdown(cx),
                }
            }
        }
    };
}

delegate_read!(Stream);

/// Writes on a whole TLS stream (login-time messages, the proxy's own
/// queries) also push the records out as far as the socket takes them: a
/// stream has nowhere to keep [`TlsWriteHalf`]'s count, and these writes are
/// small, so a socket too full to take them is not a case that arises.
fn poll_write_tls<T: AsyncWrite + Unpin>(
    s: &mut T,
    cx: &mut Context<'_>,
    buf: &[u8],
) -> Poll<io::Result<usize>> {
    match Pin::new(&mut *s).poll_flush(cx) {
        Poll::Ready(Ok(())) => {}
        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
        Poll::Pending => return Poll::Pending,
    }
    let written = Pin::new(&mut *s).poll_write(cx, buf);
    if matches!(written, Poll::Ready(Ok(_))) {
        let _ = Pin::new(&mut *s).poll_flush(cx);
    }
    written
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Self::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => poll_write_tls(s, cx, buf),
            Self::TlsClient(s) => poll_write_tls(s, cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_flush(cx),
            Self::Unix(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s).poll_flush(cx),
            Self::TlsClient(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Self::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s).poll_shutdown(cx),
            Self::TlsClient(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
delegate_read!(ReadHalf<'_>);
delegate_write!(WriteHalf<'_>);
