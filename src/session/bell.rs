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
        wait_on(&self.waiter, || self.rung.swap(false, Ordering::AcqRel)).await
    }

    /// Whether it was rung, leaving the ring in place (for a bell that
    /// is rung once for good, as a kill switch).
    pub fn is_rung(&self) -> bool {
        self.rung.load(Ordering::Acquire)
    }

    /// Resolves once it is rung, leaving the ring in place.
    pub async fn stays_rung(&self) {
        wait_on(&self.waiter, || self.is_rung()).await
    }
}

/// Waits, woken through `waiter`, until `ready` says so; `ready` is asked
/// again after each registration, so a wake between the check and the
/// registration is not lost.
async fn wait_on(waiter: &AtomicWaker, mut ready: impl FnMut() -> bool) {
    let _forget = ForgetWaker(waiter);
    poll_fn(|cx| {
        if ready() {
            return Poll::Ready(());
        }
        waiter.register(cx.waker());
        if ready() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await
}

/// Drops the waker a wait registered once the wait ends or is dropped. A
/// waker kept in a long-lived place (a client's entry) would keep its task's
/// whole allocation alive after the task ended: a parked client's first
/// task, a couple of kilobytes, for as long as the client is parked.
struct ForgetWaker<'a>(&'a AtomicWaker);

impl Drop for ForgetWaker<'_> {
    fn drop(&mut self) {
        drop(self.0.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use std::future::Future;
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
        bell.ring();
        assert!(bell.stays_rung().now_or_never().is_some());
        assert!(bell.is_rung(), "left in place");
    }

    #[test]
    fn a_finished_wait_keeps_no_waker() {
        use std::task::{Context, Wake, Waker};
        struct Count;
        impl Wake for Count {
            fn wake(self: Arc<Self>) {}
        }
        let counted = Arc::new(Count);
        let waker = Waker::from(Arc::clone(&counted));
        let bell = Bell::default();
        {
            let mut wait = std::pin::pin!(bell.rung());
            assert!(wait
                .as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_pending());
            assert_eq!(Arc::strong_count(&counted), 3, "registered while waiting");
        }
        assert_eq!(Arc::strong_count(&counted), 2, "given back when dropped");
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
