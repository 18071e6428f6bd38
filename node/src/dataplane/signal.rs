//! A one-way signal, set once and waited on, that lives inside the allocation of what it
//! belongs to: a connection's "first request seen" and "wind down" flags, for which a
//! `CancellationToken` (an allocation and a lock of its own) would cost every idle
//! connection more.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

/// Set once; waiters wake when it is.
#[derive(Debug, Default)]
pub(crate) struct Signal {
    set: AtomicBool,
    waiters: Notify,
}

impl Signal {
    /// Sets the signal; true if this call set it.
    pub(crate) fn fire(&self) -> bool {
        // A load first: once set, later calls only read.
        let first = !self.is_fired() && !self.set.swap(true, Ordering::AcqRel);
        if first {
            self.waiters.notify_waiters();
        }
        first
    }

    pub(crate) fn is_fired(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }

    /// Resolves once the signal is set (at once if it is).
    pub(crate) async fn fired(&self) {
        loop {
            // Made in place: `pin!` of a local would keep the future twice in the state.
            let mut notified = std::pin::pin!(self.waiters.notified());
            // Registered before the flag is read, so a `fire` in between is not missed.
            notified.as_mut().enable();
            if self.is_fired() {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn waiters_wake_when_it_is_set_and_only_the_first_call_sets_it() {
        let signal = Arc::new(Signal::default());
        let waiting = tokio::spawn({
            let signal = Arc::clone(&signal);
            async move { signal.fired().await }
        });
        tokio::task::yield_now().await;
        assert!(!signal.is_fired());
        assert!(signal.fire());
        assert!(!signal.fire(), "set once");
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("the waiter woke")
            .expect("it ran");
        signal.fired().await;
    }
}
