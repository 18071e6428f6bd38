//! The data plane's `/metrics` page: every listener, route and backend counter (see `stats`)
//! written in the Prometheus text format, walking the live objects.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use fulcrum_model::Algorithm;
use fulcrum_policy::Health;

use super::acme::AcmeMaterial;
use super::error::ErrorKind;
use super::listener::ListenerRuntime;
use super::pool::PoolRuntime;
use super::stats::TrafficStats;
use crate::prometheus::{Exposition, Family};

/// Writes every metric of the given listeners, removed listeners still draining (labelled
/// `state="draining"`, as a moved listener keeps its name), and pools in the Prometheus text
/// format.
pub(crate) fn render(
    listeners: &[Arc<ListenerRuntime>],
    retired: &[Arc<ListenerRuntime>],
    pools: &[Arc<PoolRuntime>],
    acme: &AcmeMaterial,
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
    let routes: Vec<_> = listeners
        .iter()
        .flat_map(|(labels, l)| {
            l.all_route_stats()
                .into_iter()
                .map(move |(route, stats)| (format!("{labels},route=\"{route}\""), stats))
        })
        .collect();
    let mut page = Exposition::default();
    let p = &mut page;

    p.family("fulcrum_listener_active_connections", "gauge", "Client connections open now.")
        .each(&listeners, |l| l.active());
    p.family("fulcrum_listener_connections_total", "counter", "Client connections accepted.")
        .each(&listeners, |l| l.stats().total.load(Ordering::Relaxed));
    let mut bytes =
        p.family("fulcrum_listener_bytes_total", "counter", "Bytes forwarded, by direction.");
    for (labels, l) in &listeners {
        write_bytes(&mut bytes, labels, l.stats());
    }
    let mut connect =
        p.family("fulcrum_listener_connect_seconds", "histogram", "Time to connect to a backend.");
    for (labels, l) in &listeners {
        connect.histogram(labels, &l.stats().connect_latency);
    }
    let mut errors =
        p.family("fulcrum_listener_errors_total", "counter", "Failed connections, by kind.");
    for (labels, l) in &listeners {
        write_errors(&mut errors, labels, l.stats());
    }

    let mut responses = p.family(
        "fulcrum_route_responses_total",
        "counter",
        "HTTP responses per route, by status class; route=\"\" is the default pool.",
    );
    for (labels, stats) in &routes {
        for class in 1..=5 {
            responses.sample(&format!("{labels},class=\"{class}xx\""), stats.responses(class));
        }
    }
    p.family(
        "fulcrum_route_rate_limited_total",
        "counter",
        "Requests refused with 429 by a rate limit.",
    )
    .each(&routes, |stats| stats.rate_limited.load(Ordering::Relaxed));
    let mut latency = p.family(
        "fulcrum_route_request_seconds",
        "histogram",
        "Time from request to response headers.",
    );
    for (labels, stats) in &routes {
        latency.histogram(labels, &stats.latency);
    }

    p.family(
        "fulcrum_backend_active_connections",
        "gauge",
        "Connections open to the backend now; for a draining backend, what remains.",
    )
    .each(&backends, |b| b.load().active());
    p.family("fulcrum_backend_connections_total", "counter", "Connections made to the backend.")
        .each(&backends, |b| b.stats().total.load(Ordering::Relaxed));
    let mut bytes =
        p.family("fulcrum_backend_bytes_total", "counter", "Bytes forwarded, by direction.");
    for (labels, b) in &backends {
        write_bytes(&mut bytes, labels, b.stats());
    }
    let mut errors = p.family(
        "fulcrum_backend_errors_total",
        "counter",
        "Failures attributed to the backend, by kind.",
    );
    for (labels, b) in &backends {
        write_errors(&mut errors, labels, b.stats());
    }
    let mut connect =
        p.family("fulcrum_backend_connect_seconds", "histogram", "Time to connect to the backend.");
    for (labels, b) in &backends {
        connect.histogram(labels, &b.stats().connect_latency);
    }
    p.family(
        "fulcrum_backend_up",
        "gauge",
        "1 when the backend may take new traffic (healthy, active, not ejected).",
    )
    .each(&backends, |b| u64::from(b.is_selectable()));
    let mut health = p.family(
        "fulcrum_backend_health",
        "gauge",
        "Active health-check state: 1 for the current one.",
    );
    for (labels, b) in &backends {
        let current = b.health();
        for state in [Health::Unknown, Health::Up, Health::Down] {
            health.sample(&format!("{labels},state=\"{state}\""), u8::from(current == state));
        }
    }
    let mut checks = p.family(
        "fulcrum_backend_health_checks_total",
        "counter",
        "Active health checks, by result.",
    );
    for (labels, b) in &backends {
        let (passed, failed) = b.check_results();
        checks.sample(&format!("{labels},result=\"pass\""), passed);
        checks.sample(&format!("{labels},result=\"fail\""), failed);
    }
    p.family(
        "fulcrum_backend_ejections_total",
        "counter",
        "Passive ejections after consecutive failures.",
    )
    .each(&backends, |b| b.ejections());
    p.family(
        "fulcrum_backend_draining",
        "gauge",
        "1 while the backend drains (set to draining, or removed with connections left).",
    )
    .each(&backends, |b| u64::from(b.is_draining()));
    let mut ewma = p.family(
        "fulcrum_backend_latency_ewma_seconds",
        "gauge",
        "Peak-EWMA connect latency, in pools balanced by it.",
    );
    let now = std::time::Instant::now();
    for pool in pools {
        let Algorithm::PeakEwma { decay } = pool.spec().algorithm else { continue };
        for backend in pool.all_backends() {
            if let Some(latency) = backend.load().ewma_latency(now, decay) {
                let labels = format!("pool=\"{}\",backend=\"{}\"", pool.name(), backend.address());
                ewma.sample(&labels, latency.as_secs_f64());
            }
        }
    }
    acme.render(&mut page);
    page.finish()
}

fn write_bytes(family: &mut Family<'_>, labels: &str, stats: &TrafficStats) {
    family.sample(&format!("{labels},direction=\"in\""), stats.bytes_in.load(Ordering::Relaxed));
    family.sample(&format!("{labels},direction=\"out\""), stats.bytes_out.load(Ordering::Relaxed));
}

fn write_errors(family: &mut Family<'_>, labels: &str, stats: &TrafficStats) {
    for kind in ErrorKind::ALL {
        family.sample(&format!("{labels},kind=\"{}\"", kind.as_str()), stats.errors(kind));
    }
}
