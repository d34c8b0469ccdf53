//! A wake-up for one waiting task, kept until it is taken (as
//! `tokio::sync::Notify::notify_one` keeps a permit), made of a flag and a
//! waker: neither ringing nor waiting takes a lock. The per-transaction path
//! waits on two of these (the client's between transactions, the relay's
//! between its directions), where a `Notify` costs two lock round trips per
//! wait for its waiter list.

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

use futures_util::task::AtomicWaker;

/// See the module documentation. One task at a time may wait on it: the
/// last to poll is the one woken.
#[derive(Debug, Default)]
pub struct Bell {
    rung: AtomicBool,
    waiter: AtomicWaker,
}

impl Bell {
    /// Wakes the waiting task, or the next one to wait.
    pub fn ring(&self) {
        self.rung.store(true, Ordering::Release);
        self.waiter.wake();
    }

    /// Resolves once the bell was rung since the last time it resolved.
    /// Cancel safe: a ring is taken only when this resolves.
    pub async fn rung(&self) {
        poll_fn(|cx| {
            if self.rung.swap(false, Ordering::AcqRel) {
                return Poll::Ready(());
            }
            self.waiter.register(cx.waker());
            // Rung between the check and the registration: not woken.
            if self.rung.swap(false, Ordering::AcqRel) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn a_ring_is_kept_until_taken_once() {
        let bell = Bell::default();
        assert!(bell.rung().now_or_never().is_none(), "not rung yet");
        bell.ring();
        bell.ring();
        assert!(bell.rung().now_or_never().is_some(), "a kept ring");
        // Two rings before a wait are one wake-up, as with Notify's permit.
        assert!(bell.rung().now_or_never().is_none());
    }

    #[tokio::test]
    async fn a_waiting_task_is_woken() {
        let bell = Arc::new(Bell::default());
        let waiter = tokio::spawn({
            let bell = Arc::clone(&bell);
            async move { bell.rung().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        bell.ring();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
    }
}
