//! Requests a client cancels soon after sending them, before they are answered, counted per
//! connection, to end the connections that abuse HTTP/2's cheap stream resets: the
//! rapid-reset attack (CVE-2023-44487) opens a stream and resets it at once, over and over,
//! so each costs the proxy a routed (maybe forwarded) request and the client almost nothing.
//! h2's own guard counts only streams reset before the server accepted them, and fulcrumd
//! accepts at once. Like Envoy's premature-reset check, only a cancel within
//! [`PREMATURE`] of the request counts (a deadline or a long poll given up later does not),
//! and a connection is closed once most of its requests, and at least [`MIN_CANCELLED`],
//! were cancelled so.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// Premature cancels a connection may have before the ratio is looked at: a browser cancels
/// a few of its streams now and then.
pub(crate) const MIN_CANCELLED: u64 = 100;

/// A request cancelled within this of its start counts as premature.
pub(crate) const PREMATURE: Duration = Duration::from_secs(1);

/// One connection's requests: started, cancelled before their answer; and the signal that
/// the connection must close.
#[derive(Debug, Default)]
pub(crate) struct PrematureResets {
    started: AtomicU64,
    cancelled: AtomicU64,
    abusive: CancellationToken,
}

impl PrematureResets {
    /// Counts a request starting at `now`; the guard counts it cancelled if dropped before
    /// [`Pending::answered`] within [`PREMATURE`].
    pub(crate) fn start(self: &Arc<Self>, now: Instant) -> Pending {
        self.started.fetch_add(1, Ordering::Relaxed);
        Pending { resets: Some(Arc::clone(self)), started: now }
    }

    /// Resolves once the connection has cancelled too many requests.
    pub(crate) async fn abusive(&self) {
        self.abusive.cancelled().await;
    }

    fn cancelled(&self) {
        let cancelled = self.cancelled.fetch_add(1, Ordering::Relaxed) + 1;
        if too_many(cancelled, self.started.load(Ordering::Relaxed)) {
            self.abusive.cancel();
        }
    }
}

/// Whether `cancelled` of `started` requests is abuse: at least [`MIN_CANCELLED`], and over
/// half of them.
fn too_many(cancelled: u64, started: u64) -> bool {
    cancelled >= MIN_CANCELLED && cancelled * 2 > started
}

/// A request in flight on a connection.
#[derive(Debug)]
pub(crate) struct Pending {
    resets: Option<Arc<PrematureResets>>,
    started: Instant,
}

impl Pending {
    /// The request got its answer (its response head went to hyper).
    pub(crate) fn answered(mut self) {
        self.resets = None;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(resets) = self.resets.take()
            && self.started.elapsed() < PREMATURE
        {
            resets.cancelled();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_cancels_or_a_minority_of_them_are_normal() {
        assert!(!too_many(MIN_CANCELLED - 1, MIN_CANCELLED - 1));
        assert!(!too_many(MIN_CANCELLED, MIN_CANCELLED * 2));
        assert!(too_many(MIN_CANCELLED, MIN_CANCELLED * 2 - 1));
    }

    #[test]
    fn requests_dropped_soon_before_their_answer_end_the_connection() {
        let resets = Arc::new(PrematureResets::default());
        let now = Instant::now();
        for _ in 0..MIN_CANCELLED {
            resets.start(now).answered();
        }
        for _ in 0..MIN_CANCELLED {
            drop(resets.start(now));
        }
        assert!(!resets.abusive.is_cancelled(), "half cancelled is not over half");
        drop(resets.start(now));
        assert!(resets.abusive.is_cancelled());
    }

    #[test]
    fn requests_given_up_after_a_while_do_not_count() {
        let resets = Arc::new(PrematureResets::default());
        let long_ago = Instant::now().checked_sub(PREMATURE).expect("a clock past its start");
        for _ in 0..MIN_CANCELLED * 3 {
            drop(resets.start(long_ago));
        }
        assert!(!resets.abusive.is_cancelled());
    }
}
