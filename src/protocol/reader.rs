//! A reusable read buffer that yields protocol messages one header at a
//! time. Every wait on the socket stores what it read in the buffer before
//! returning, so waiting is cancel safe: a `select!` that drops the wait
//! loses no bytes.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

/// Bytes read from a socket and not yet consumed.
pub struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The size it was made with: it grows to at least this once it must grow.
    base: usize,
}

impl std::fmt::Debug for FrameReader {
    /// Sizes only: the bytes may be anyone's data.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameReader")
            .field("capacity", &self.buf.len())
            .field("buffered", &(self.end - self.start))
            .finish()
    }
}

impl FrameReader {
    /// A reader with `capacity` bytes of buffer (it grows only for whole
    /// messages the proxy must see at once).
    pub fn new(capacity: usize) -> Self {
        Self {
            buf: vec![0; capacity],
            start: 0,
            end: 0,
            base: capacity,
        }
    }

    /// A reader that allocates its `capacity` bytes only when it first
    /// reads: a client that logs in and sits idle holds no buffer.
    pub fn unallocated(capacity: usize) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            end: 0,
            base: capacity,
        }
    }

    /// Whether it holds no buffer yet (see [`FrameReader::unallocated`]).
    pub fn is_unallocated(&self) -> bool {
        self.buf.is_empty()
    }

    /// Gives back memory a large message made the buffer grow to, once it
    /// is empty, so idle clients stay small.
    pub fn shrink_to(&mut self, capacity: usize) {
        if self.start == self.end && self.buf.len() > capacity {
            self.buf = vec![0; capacity];
            self.start = 0;
            self.end = 0;
        }
    }

    /// The unconsumed bytes.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Marks `n` buffered bytes as used.
    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// The next message's tag and length word, if its header is buffered.
    pub fn header(&self) -> Option<(u8, usize)> {
        let b = self.buffered();
        let h = b.get(..5)?;
        Some((h[0], u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize))
    }

    /// Reads until at least `n` bytes are buffered; `Ok(false)` if the peer
    /// closed first. Cancel safe.
    pub async fn ensure<R: AsyncRead + Unpin>(&mut self, rx: &mut R, n: usize) -> io::Result<bool> {
        while self.end - self.start < n {
            if self.buf.len() - self.start < n {
                // Move the unconsumed bytes to the front, growing if one message needs it.
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
                if self.buf.len() < n {
                    self.buf.resize(n.max(self.base), 0);
                }
            }
            let read = rx.read(&mut self.buf[self.end..]).await?;
            if read == 0 {
                return Ok(false);
            }
            self.end += read;
        }
        Ok(true)
    }

    /// Reads whatever arrives next (at least one byte); `Ok(false)` on close. Cancel safe.
    pub async fn fill<R: AsyncRead + Unpin>(&mut self, rx: &mut R) -> io::Result<bool> {
        let want = self.end - self.start + 1;
        self.ensure(rx, want).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ensures_consumes_and_grows() {
        let data: Vec<u8> = (0..100u8).collect();
        let mut rx: &[u8] = &data;
        let mut r = FrameReader::new(8);
        assert!(r.ensure(&mut rx, 5).await.unwrap());
        assert_eq!(r.buffered()[0], 0);
        r.consume(3);
        assert!(r.ensure(&mut rx, 20).await.unwrap());
        assert_eq!(r.buffered()[0], 3);
        assert!(r.buffered().len() >= 20);
        assert!(r.ensure(&mut rx, 97).await.unwrap());
        r.consume(97);
        assert!(r.buffered().is_empty());
        assert!(!r.ensure(&mut rx, 5).await.unwrap());
    }

    #[tokio::test]
    async fn an_unallocated_reader_allocates_its_size_at_the_first_read() {
        let data: Vec<u8> = (0..50u8).collect();
        let mut rx: &[u8] = &data;
        let mut r = FrameReader::unallocated(16);
        assert!(r.is_unallocated());
        assert_eq!(format!("{r:?}"), "FrameReader { capacity: 0, buffered: 0 }");
        assert!(r.ensure(&mut rx, 5).await.unwrap());
        assert!(!r.is_unallocated());
        assert_eq!(r.buffered()[..5], [0, 1, 2, 3, 4]);
        // It came at its own size, not just the 5 bytes asked for.
        assert_eq!(r.buffered().len(), 16);
    }
}
