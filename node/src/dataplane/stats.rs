//! The data plane's counters: plain atomics living on the listener, route and backend they
//! count (no registry), so they come and go with those objects and the data path never looks
//! anything up to count. `metrics` renders them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::error::ErrorKind;

/// Counters shared by listeners and backends.
#[derive(Debug, Default)]
pub struct TrafficStats {
    /// Connections (or requests) begun.
    pub total: AtomicU64,
    /// Bytes from clients to backends.
    pub bytes_in: AtomicU64,
    /// Bytes from backends to clients.
    pub bytes_out: AtomicU64,
    errors: [AtomicU64; ErrorKind::ALL.len()],
    /// Time to connect to a backend.
    pub connect_latency: Histogram,
}

impl TrafficStats {
    /// Counts one error.
    pub fn error(&self, kind: ErrorKind) {
        self.errors[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// How many errors of `kind` were counted.
    pub fn errors(&self, kind: ErrorKind) -> u64 {
        self.errors[kind as usize].load(Ordering::Relaxed)
    }
}

/// Counters of one HTTP route (or a listener's default route).
#[derive(Debug, Default)]
pub struct RouteStats {
    /// Responses by status class: 1xx..5xx at indexes 0..=4.
    responses: [AtomicU64; 5],
    /// Requests refused by a rate limit (also counted as 4xx).
    pub rate_limited: AtomicU64,
    /// Time from request to response headers.
    pub latency: Histogram,
}

impl RouteStats {
    /// Counts one response.
    pub fn response(&self, status: u16, latency: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.responses[class].fetch_add(1, Ordering::Relaxed);
        self.latency.observe(latency);
    }

    /// Responses counted in the status class `class` (1 to 5).
    pub fn responses(&self, class: usize) -> u64 {
        self.responses.get(class.wrapping_sub(1)).map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A latency histogram with fixed buckets; recording is two relaxed atomic adds.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per bucket (not cumulative); the last slot is +Inf.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, value: Duration) {
        let seconds = value.as_secs_f64();
        let bucket = BUCKETS.iter().position(|&bound| seconds <= bound).unwrap_or(BUCKETS.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(value.as_micros() as u64, Ordering::Relaxed);
    }

    /// Each bucket's upper bound (`None` for +Inf) with the count of observations at or
    /// below it, and the sum of all observations in seconds.
    pub fn cumulative(&self) -> (Vec<(Option<f64>, u64)>, f64) {
        let mut cumulative = 0;
        let buckets = self
            .counts
            .iter()
            .enumerate()
            .map(|(i, count)| {
                cumulative += count.load(Ordering::Relaxed);
                (BUCKETS.get(i).copied(), cumulative)
            })
            .collect();
        (buckets, self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6)
    }
}
