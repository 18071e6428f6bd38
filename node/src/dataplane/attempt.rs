//! Which backends one connection or request tries, in order, and what each try came to: the
//! backend a sticky cookie pins first, then the balancer's choices in fallback order,
//! skipping backends at their connection limit, at most [`MAX_ATTEMPTS`]. L4 and L7 share
//! it, so both count, eject and learn latencies alike.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fulcrum_model::{Algorithm, Pool};
use fulcrum_policy::balance::Choices;
use fulcrum_policy::{InFlight, PickKey};

use super::error::ErrorKind;
use super::pool::{BackendRuntime, PoolRuntime, Selection};

/// Backends tried for one connection or request before it is given up.
pub(crate) const MAX_ATTEMPTS: usize = 3;

/// The backends to try, in order; each one yielded is counted against its connection limit
/// for as long as its [`Attempt`] (or the `InFlight` taken from it) lives.
#[derive(Debug)]
pub(crate) struct Attempts<'a> {
    selection: &'a Selection,
    /// Tried first, once.
    pinned: Option<usize>,
    /// Skipped among the balancer's choices: it came first already.
    pinned_index: Option<usize>,
    choices: Choices,
    made: usize,
    /// Why the last candidate passed over was not tried.
    passed_over: Option<ErrorKind>,
    /// What each attempt records, read once from the pool's configuration.
    learning: Learning,
}

/// What an attempt's outcome teaches the pool, from its configuration.
#[derive(Clone, Copy, Debug)]
struct Learning {
    /// Peak EWMA's decay, when the pool balances by it.
    ewma_decay: Option<Duration>,
    /// What a failed try counts as for peak EWMA.
    connect_timeout: Duration,
}

/// One backend being tried.
#[derive(Debug)]
pub(crate) struct Attempt<'a> {
    /// The backend.
    pub backend: &'a Arc<BackendRuntime>,
    /// Its index in the selection (and the balancer).
    pub index: usize,
    /// 0 for the first backend tried, 1 for the first retry, and so on.
    pub number: usize,
    /// Counts the connection or request against the backend while it lives.
    pub in_flight: InFlight,
    learning: Learning,
}

impl<'a> Attempts<'a> {
    /// The backends of `selection` (of the pool configured as `pool`) for a client described
    /// by `key`, `pinned` first.
    pub(crate) fn new(
        selection: &'a Selection,
        pool: &Pool,
        pinned: Option<usize>,
        key: &PickKey<'_>,
        now: Instant,
    ) -> Attempts<'a> {
        let choices = selection.balancer.choices(key, now, &mut fastrand::Rng::new());
        let ewma_decay = match pool.algorithm {
            Algorithm::PeakEwma { decay } => Some(decay),
            _ => None,
        };
        let learning = Learning { ewma_decay, connect_timeout: pool.connect_timeout };
        Attempts {
            selection,
            pinned,
            pinned_index: pinned,
            choices,
            made: 0,
            passed_over: None,
            learning,
        }
    }

    /// Why nothing (more) could be tried: the last failure of a backend tried, else a backend
    /// passed over at its limit, else an empty pool.
    pub(crate) fn exhausted(&self, last_failure: Option<ErrorKind>) -> ErrorKind {
        last_failure.or(self.passed_over).unwrap_or(ErrorKind::NoBackend)
    }
}

impl<'a> Iterator for Attempts<'a> {
    type Item = Attempt<'a>;

    fn next(&mut self) -> Option<Attempt<'a>> {
        while self.made < MAX_ATTEMPTS {
            let index = match self.pinned.take() {
                Some(index) => index,
                None => {
                    let pinned = self.pinned_index;
                    self.choices.find(|i| Some(*i) != pinned)?
                }
            };
            let Some(backend) = self.selection.backends.get(index) else { continue };
            let Some(in_flight) = backend.load().try_begin(backend.max_connections()) else {
                backend.stats().error(ErrorKind::BackendAtLimit);
                self.passed_over = Some(ErrorKind::BackendAtLimit);
                continue;
            };
            let number = self.made;
            self.made += 1;
            return Some(Attempt { backend, index, number, in_flight, learning: self.learning });
        }
        None
    }
}

impl<'a> Attempt<'a> {
    /// What the attempt needs to report its outcome once its in-flight guard has moved on
    /// (into a response body that streams after the outcome is known).
    pub(crate) fn tried(&self) -> Tried<'a> {
        Tried { backend: self.backend, learning: self.learning }
    }

    /// See [`Tried::answered`].
    pub(crate) fn answered(&self, pool: &Arc<PoolRuntime>, elapsed: Duration, healthy: bool) {
        self.tried().answered(pool, elapsed, healthy);
    }

    /// See [`Tried::failed`].
    pub(crate) fn failed(&self, pool: &Arc<PoolRuntime>, kind: ErrorKind) {
        self.tried().failed(pool, kind);
    }
}

/// A backend tried, without its in-flight guard.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tried<'a> {
    backend: &'a Arc<BackendRuntime>,
    learning: Learning,
}

impl Tried<'_> {
    /// The backend answered (connected, or sent a response head) `elapsed` after the try
    /// began; `healthy` is false for an answer that counts against it (a 5xx).
    pub(crate) fn answered(&self, pool: &Arc<PoolRuntime>, elapsed: Duration, healthy: bool) {
        self.backend.stats().connect_latency.observe(elapsed);
        self.learn_latency(elapsed);
        pool.record_connect(self.backend, healthy);
    }

    /// The try failed before anything reached the backend; for peak EWMA it took the whole
    /// connect timeout.
    pub(crate) fn failed(&self, pool: &Arc<PoolRuntime>, kind: ErrorKind) {
        self.backend.stats().error(kind);
        self.learn_latency(self.learning.connect_timeout);
        pool.record_connect(self.backend, false);
    }

    fn learn_latency(&self, sample: Duration) {
        if let Some(decay) = self.learning.ewma_decay {
            self.backend.load().observe_latency(Instant::now(), sample, decay);
        }
    }
}
