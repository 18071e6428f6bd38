//! The data plane's counters and their Prometheus text exposition.
//!
//! Counters live on the listener and backend they count (plain atomics, no registry), so they
//! come and go with those objects and the data path never looks anything up to count.
//! [`render`] walks the live objects and writes the text format (version 0.0.4).

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::listener::ListenerRuntime;
use super::pool::PoolRuntime;
use crate::health::Health;
use fulcrum_model::Algorithm;

/// Why a connection failed, as counted in `fulcrum_*_errors_total{kind}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The pool had no backend able to take the connection.
    NoBackend,
    /// Connecting to a backend failed or timed out.
    ConnectFailed,
    /// A backend was skipped because it was at its connection limit.
    BackendAtLimit,
    /// The connection was closed because no byte moved for the idle timeout.
    IdleTimeout,
    /// Reading or writing either side failed mid-stream.
    Io,
    /// The connection was closed by a drain deadline.
    Drained,
}

impl ErrorKind {
    const ALL: [ErrorKind; 6] = [
        ErrorKind::NoBackend,
        ErrorKind::ConnectFailed,
        ErrorKind::BackendAtLimit,
        ErrorKind::IdleTimeout,
        ErrorKind::Io,
        ErrorKind::Drained,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NoBackend => "no_backend",
            ErrorKind::ConnectFailed => "connect_failed",
            ErrorKind::BackendAtLimit => "backend_at_limit",
            ErrorKind::IdleTimeout => "idle_timeout",
            ErrorKind::Io => "io",
            ErrorKind::Drained => "drained",
        }
    }
}

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

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, count) in self.counts.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let bound = BUCKETS.get(i).map_or("+Inf".to_owned(), |b| b.to_string());
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
}

/// Writes every metric of the given listeners, removed listeners still draining (labelled
/// `state="draining"`, as a moved listener keeps its name), and pools in the Prometheus text
/// format.
pub fn render(
    listeners: &[Arc<ListenerRuntime>],
    retired: &[Arc<ListenerRuntime>],
    pools: &[Arc<PoolRuntime>],
) -> String {
    let backends: Vec<_> = pools
        .iter()
        .flat_map(|p| {
            p.all_backends()
                .into_iter()
                .map(move |b| (format!("pool=\"{}\",backend=\"{}\"", p.name(), b.address()), b))
        })
        .collect();
    let listeners: Vec<_> = listeners
        .iter()
        .map(|l| (format!("listener=\"{}\"", l.name()), Arc::clone(l)))
        .chain(
            retired
                .iter()
                .map(|l| (format!("listener=\"{}\",state=\"draining\"", l.name()), Arc::clone(l))),
        )
        .collect();
    let mut out = String::new();
    let o = &mut out;

    family(
        o,
        "fulcrum_listener_active_connections",
        "gauge",
        "Client connections open now.",
        &listeners,
        |l| l.active() as u64,
    );
    family(
        o,
        "fulcrum_listener_connections_total",
        "counter",
        "Client connections accepted.",
        &listeners,
        |l| l.stats().total.load(Ordering::Relaxed),
    );
    header(o, "fulcrum_listener_bytes_total", "counter", "Bytes forwarded, by direction.");
    for (labels, l) in &listeners {
        write_bytes(o, "fulcrum_listener_bytes_total", labels, l.stats());
    }
    header(o, "fulcrum_listener_connect_seconds", "histogram", "Time to connect to a backend.");
    for (labels, l) in &listeners {
        l.stats().connect_latency.render(o, "fulcrum_listener_connect_seconds", labels);
    }
    header(o, "fulcrum_listener_errors_total", "counter", "Failed connections, by kind.");
    for (labels, l) in &listeners {
        write_errors(o, "fulcrum_listener_errors_total", labels, l.stats());
    }

    header(
        o,
        "fulcrum_route_responses_total",
        "counter",
        "HTTP responses per route, by status class; route=\"\" is the default pool.",
    );
    for (labels, l) in &listeners {
        for (route, stats) in l.all_route_stats() {
            for class in 1..=5 {
                let _ = writeln!(
                    o,
                    "fulcrum_route_responses_total{{{labels},route=\"{route}\",class=\"{class}xx\"}} {}",
                    stats.responses(class)
                );
            }
        }
    }
    header(
        o,
        "fulcrum_route_rate_limited_total",
        "counter",
        "Requests refused with 429 by a rate limit.",
    );
    for (labels, l) in &listeners {
        for (route, stats) in l.all_route_stats() {
            let _ = writeln!(
                o,
                "fulcrum_route_rate_limited_total{{{labels},route=\"{route}\"}} {}",
                stats.rate_limited.load(Ordering::Relaxed)
            );
        }
    }
    header(
        o,
        "fulcrum_route_request_seconds",
        "histogram",
        "Time from request to response headers.",
    );
    for (labels, l) in &listeners {
        for (route, stats) in l.all_route_stats() {
            stats.latency.render(
                o,
                "fulcrum_route_request_seconds",
                &format!("{labels},route=\"{route}\""),
            );
        }
    }
    family(
        o,
        "fulcrum_backend_active_connections",
        "gauge",
        "Connections open to the backend now; for a draining backend, what remains.",
        &backends,
        |b| b.load().active(),
    );
    family(
        o,
        "fulcrum_backend_connections_total",
        "counter",
        "Connections made to the backend.",
        &backends,
        |b| b.stats().total.load(Ordering::Relaxed),
    );
    header(o, "fulcrum_backend_bytes_total", "counter", "Bytes forwarded, by direction.");
    for (labels, b) in &backends {
        write_bytes(o, "fulcrum_backend_bytes_total", labels, b.stats());
    }
    header(
        o,
        "fulcrum_backend_errors_total",
        "counter",
        "Failures attributed to the backend, by kind.",
    );
    for (labels, b) in &backends {
        write_errors(o, "fulcrum_backend_errors_total", labels, b.stats());
    }
    header(o, "fulcrum_backend_connect_seconds", "histogram", "Time to connect to the backend.");
    for (labels, b) in &backends {
        b.stats().connect_latency.render(o, "fulcrum_backend_connect_seconds", labels);
    }
    family(
        o,
        "fulcrum_backend_up",
        "gauge",
        "1 when the backend may take new traffic (healthy, active, not ejected).",
        &backends,
        |b| u64::from(b.is_selectable()),
    );
    header(
        o,
        "fulcrum_backend_health",
        "gauge",
        "Active health-check state: 1 for the current one.",
    );
    for (labels, b) in &backends {
        let current = b.health();
        for state in [Health::Unknown, Health::Up, Health::Down] {
            let _ = writeln!(
                o,
                "fulcrum_backend_health{{{labels},state=\"{state}\"}} {}",
                u8::from(current == state)
            );
        }
    }
    header(o, "fulcrum_backend_health_checks_total", "counter", "Active health checks, by result.");
    for (labels, b) in &backends {
        let (passed, failed) = b.check_results();
        let _ =
            writeln!(o, "fulcrum_backend_health_checks_total{{{labels},result=\"pass\"}} {passed}");
        let _ =
            writeln!(o, "fulcrum_backend_health_checks_total{{{labels},result=\"fail\"}} {failed}");
    }
    family(
        o,
        "fulcrum_backend_ejections_total",
        "counter",
        "Passive ejections after consecutive failures.",
        &backends,
        |b| b.ejections(),
    );
    family(
        o,
        "fulcrum_backend_draining",
        "gauge",
        "1 while the backend drains (set to draining, or removed with connections left).",
        &backends,
        |b| u64::from(b.is_draining()),
    );
    header(
        o,
        "fulcrum_backend_latency_ewma_seconds",
        "gauge",
        "Peak-EWMA connect latency, in pools balanced by it.",
    );
    let now = std::time::Instant::now();
    for pool in pools {
        let Algorithm::PeakEwma { decay } = pool.spec().algorithm else { continue };
        for backend in pool.all_backends() {
            if let Some(latency) = backend.load().ewma_latency(now, decay) {
                let _ = writeln!(
                    o,
                    "fulcrum_backend_latency_ewma_seconds{{pool=\"{}\",backend=\"{}\"}} {}",
                    pool.name(),
                    backend.address(),
                    latency.as_secs_f64()
                );
            }
        }
    }
    out
}

pub(crate) fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A metric with one sample per object, labelled as given.
fn family<T>(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    objects: &[(String, Arc<T>)],
    value: impl Fn(&T) -> u64,
) {
    header(out, name, kind, help);
    for (labels, object) in objects {
        let _ = writeln!(out, "{name}{{{labels}}} {}", value(object));
    }
}

fn write_bytes(out: &mut String, name: &str, labels: &str, stats: &TrafficStats) {
    let bytes_in = stats.bytes_in.load(Ordering::Relaxed);
    let bytes_out = stats.bytes_out.load(Ordering::Relaxed);
    let _ = writeln!(out, "{name}{{{labels},direction=\"in\"}} {bytes_in}");
    let _ = writeln!(out, "{name}{{{labels},direction=\"out\"}} {bytes_out}");
}

fn write_errors(out: &mut String, name: &str, labels: &str, stats: &TrafficStats) {
    for kind in ErrorKind::ALL {
        let _ =
            writeln!(out, "{name}{{{labels},kind=\"{}\"}} {}", kind.as_str(), stats.errors(kind));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_end_in_inf() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let mut out = String::new();
        h.render(&mut out, "x", "a=\"b\"");
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.0005\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"10\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count{a=\"b\"} 3\n"), "{out}");
    }
}
