//! One test per validation rule: each breaks one thing in a valid configuration and checks
//! that validation names the object and the field, and reports nothing else.

#![allow(clippy::unwrap_used)] // In a test, a panic is the failure report.

use std::time::Duration;

use fulcrum_model::file;
use fulcrum_model::*;

/// A small valid configuration that each test breaks in one way.
fn base() -> ClusterSpec {
    file::parse(
        r#"
[[listeners]]
name = "public"
bind = "198.18.0.100:80"
protocol = "http"
default_pool = "web"
[[listeners.routes]]
name = "api"
path_prefix = "/api/"
pool = "api"

[[listeners]]
name = "db"
bind = "198.18.0.100:5432"
protocol = "tcp"
default_pool = "api"

[[pools]]
name = "web"
backends = [{ address = "198.18.0.21:8080" }, { address = "198.18.0.22:8080" }]
health_check = { http = { path = "/health" } }

[[pools]]
name = "api"
backends = [{ address = "198.18.0.21:9090" }]

[[rate_limits]]
name = "per-client"
kind = "token_bucket"
key = "client_ip"
capacity = 10
refill_per_second = 5.0
"#,
    )
    .expect("base configuration is valid")
}

/// A way to break one field of a valid object.
type Breaker<T> = fn(&mut T);

fn name(text: &str) -> Name {
    text.parse().unwrap()
}

/// Asserts that `spec` has exactly one violation, on `object` and `field`.
fn only_violation(spec: &ClusterSpec, object: &str, field: &str) -> String {
    let violations = spec.validate().expect_err("the configuration must be rejected").0;
    assert_eq!(violations.len(), 1, "{violations:#?}");
    assert_eq!((violations[0].object.as_str(), violations[0].field.as_str()), (object, field));
    violations[0].to_string()
}

#[test]
fn base_is_valid() {
    base().validate().unwrap();
}

#[test]
fn route_to_missing_pool() {
    let mut spec = base();
    spec.listeners[0].routes[0].action = RouteAction::Pool(name("nope"));
    let message = only_violation(&spec, "listener 'public' route 'api'", "pool");
    assert!(message.contains("pool 'nope' does not exist"), "{message}");
}

#[test]
fn split_to_missing_pool() {
    let mut spec = base();
    spec.listeners[0].routes[0].action = RouteAction::Split(vec![
        SplitTarget { pool: name("web"), weight: 95 },
        SplitTarget { pool: name("canary"), weight: 5 },
    ]);
    only_violation(&spec, "listener 'public' route 'api'", "split[1].pool");
}

#[test]
fn split_with_all_weights_zero() {
    let mut spec = base();
    spec.listeners[0].routes[0].action =
        RouteAction::Split(vec![SplitTarget { pool: name("web"), weight: 0 }]);
    only_violation(&spec, "listener 'public' route 'api'", "split");
}

#[test]
fn default_pool_missing() {
    let mut spec = base();
    spec.listeners[1].default_pool = Some(name("gone"));
    only_violation(&spec, "listener 'db'", "default_pool");
}

#[test]
fn rate_limit_missing() {
    let mut spec = base();
    spec.listeners[0].routes[0].rate_limit = Some(name("nope"));
    only_violation(&spec, "listener 'public' route 'api'", "rate_limit");
}

#[test]
fn two_listeners_on_one_address() {
    let mut spec = base();
    spec.listeners[1].bind = "198.18.0.100:80".parse().unwrap();
    spec.listeners[1].protocol = Protocol::Tcp;
    let message = only_violation(&spec, "listener 'db'", "bind");
    assert!(message.contains("listener 'public'"), "{message}");
}

#[test]
fn wildcard_overlaps_a_specific_address() {
    let mut spec = base();
    spec.listeners[1].bind = "0.0.0.0:80".parse().unwrap();
    only_violation(&spec, "listener 'db'", "bind");
}

#[test]
fn duplicate_listener_name() {
    let mut spec = base();
    spec.listeners[1].name = name("public");
    only_violation(&spec, "listener 'public'", "name");
}

#[test]
fn duplicate_pool_name() {
    let mut spec = base();
    let mut copy = spec.pools[0].clone();
    copy.backends.clear();
    spec.pools.push(copy);
    only_violation(&spec, "pool 'web'", "name");
}

#[test]
fn duplicate_route_name() {
    let mut spec = base();
    let route = spec.listeners[0].routes[0].clone();
    spec.listeners[0].routes.push(route);
    only_violation(&spec, "listener 'public' route 'api'", "name");
}

#[test]
fn duplicate_rate_limit_name() {
    let mut spec = base();
    spec.rate_limits.push(spec.rate_limits[0].clone());
    only_violation(&spec, "rate limit 'per-client'", "name");
}

#[test]
fn duplicate_backend_address() {
    let mut spec = base();
    spec.pools[0].backends[1].address = spec.pools[0].backends[0].address;
    only_violation(&spec, "pool 'web'", "backends[1].address");
}

#[test]
fn all_backend_weights_zero() {
    let mut spec = base();
    for backend in &mut spec.pools[0].backends {
        backend.weight = 0;
    }
    let message = only_violation(&spec, "pool 'web'", "backends");
    assert!(message.contains("weight 0"), "{message}");
}

#[test]
fn weight_above_maximum() {
    let mut spec = base();
    spec.pools[0].backends[0].weight = MAX_WEIGHT + 1;
    only_violation(&spec, "pool 'web'", "backends[0].weight");
}

#[test]
fn backend_on_port_zero_or_wildcard() {
    let mut spec = base();
    spec.pools[1].backends[0].address = "198.18.0.21:0".parse().unwrap();
    only_violation(&spec, "pool 'api'", "backends[0].address");
    spec.pools[1].backends[0].address = "0.0.0.0:80".parse().unwrap();
    only_violation(&spec, "pool 'api'", "backends[0].address");
}

#[test]
fn listener_on_port_zero() {
    let mut spec = base();
    spec.listeners[1].bind = "198.18.0.100:0".parse().unwrap();
    only_violation(&spec, "listener 'db'", "bind");
}

#[test]
fn zero_refill_rate() {
    let mut spec = base();
    spec.rate_limits[0].limit = RateLimit::TokenBucket { capacity: 10, refill_per_second: 0.0 };
    let message = only_violation(&spec, "rate limit 'per-client'", "refill_per_second");
    assert!(message.contains("never refills"), "{message}");
}

#[test]
fn non_finite_refill_rate() {
    let mut spec = base();
    spec.rate_limits[0].limit =
        RateLimit::TokenBucket { capacity: 10, refill_per_second: f64::NAN };
    only_violation(&spec, "rate limit 'per-client'", "refill_per_second");
}

#[test]
fn zero_capacity() {
    let mut spec = base();
    spec.rate_limits[0].limit = RateLimit::TokenBucket { capacity: 0, refill_per_second: 1.0 };
    only_violation(&spec, "rate limit 'per-client'", "capacity");
}

#[test]
fn sliding_window_zero_limit_and_window() {
    let mut spec = base();
    spec.rate_limits[0].limit =
        RateLimit::SlidingWindow { limit: 0, window: Duration::from_secs(1) };
    only_violation(&spec, "rate limit 'per-client'", "limit");
    spec.rate_limits[0].limit = RateLimit::SlidingWindow { limit: 5, window: Duration::ZERO };
    only_violation(&spec, "rate limit 'per-client'", "window");
}

#[test]
fn tcp_listener_with_routes() {
    let mut spec = base();
    let route = spec.listeners[0].routes[0].clone();
    spec.listeners[1].routes.push(route);
    only_violation(&spec, "listener 'db'", "routes");
}

#[test]
fn tcp_listener_rate_limited_by_a_header() {
    let mut spec = base();
    spec.listeners[1].rate_limit = Some(name("per-client"));
    spec.validate().expect("a client_ip policy suits a tcp listener");
    spec.rate_limits[0].key = RateLimitKey::Header("x-api-key".parse().unwrap());
    let message = only_violation(&spec, "listener 'db'", "rate_limit");
    assert!(message.contains("client_ip"), "{message}");
}

#[test]
fn tcp_listener_without_default_pool() {
    let mut spec = base();
    spec.listeners[1].default_pool = None;
    only_violation(&spec, "listener 'db'", "default_pool");
}

#[test]
fn http_listener_without_default_pool_or_routes() {
    let mut spec = base();
    spec.listeners[0].default_pool = None;
    spec.listeners[0].routes.clear();
    only_violation(&spec, "listener 'public'", "default_pool");
}

#[test]
fn https_listener_without_certificates() {
    let mut spec = base();
    spec.listeners[0].protocol = Protocol::Https;
    only_violation(&spec, "listener 'public'", "tls");
    spec.listeners[0].tls = Some(Tls { certificates: vec![], acme: None });
    only_violation(&spec, "listener 'public'", "tls.certificates");
}

#[test]
fn tls_on_a_plain_listener() {
    let mut spec = base();
    spec.listeners[0].tls = Some(Tls {
        certificates: vec![Certificate { cert: "a.pem".into(), key: "a.key".into() }],
        acme: None,
    });
    only_violation(&spec, "listener 'public'", "tls");
}

#[test]
fn zero_max_connections() {
    let mut spec = base();
    spec.listeners[1].max_connections = Some(0);
    only_violation(&spec, "listener 'db'", "max_connections");
    let mut spec = base();
    spec.pools[0].backends[0].max_connections = Some(0);
    only_violation(&spec, "pool 'web'", "backends[0].max_connections");
}

#[test]
fn health_check_timing() {
    let cases: [(Breaker<HealthCheck>, &str); 5] = [
        (|c| c.interval = Duration::ZERO, "health_check.interval"),
        (|c| c.timeout = Duration::ZERO, "health_check.timeout"),
        (|c| c.timeout = c.interval * 2, "health_check.timeout"),
        (|c| c.rise = 0, "health_check.rise"),
        (|c| c.fall = 0, "health_check.fall"),
    ];
    for (breaks, field) in cases {
        let mut spec = base();
        breaks(spec.pools[0].health_check.as_mut().unwrap());
        only_violation(&spec, "pool 'web'", field);
    }
}

#[test]
fn health_check_http_path_and_status() {
    let mut spec = base();
    spec.pools[0].health_check.as_mut().unwrap().http.as_mut().unwrap().path = "health".into();
    only_violation(&spec, "pool 'web'", "health_check.http.path");
    let mut spec = base();
    spec.pools[0].health_check.as_mut().unwrap().http.as_mut().unwrap().expect_status = 42;
    only_violation(&spec, "pool 'web'", "health_check.http.expect_status");
}

#[test]
fn maglev_table_not_prime_or_too_small() {
    let mut spec = base();
    spec.pools[0].algorithm =
        Algorithm::ConsistentHash { key: HashKey::SourceIp, table_size: 65_536 };
    only_violation(&spec, "pool 'web'", "algorithm.table_size");
    spec.pools[0].algorithm = Algorithm::ConsistentHash { key: HashKey::SourceIp, table_size: 101 };
    only_violation(&spec, "pool 'web'", "algorithm.table_size");
}

#[test]
fn peak_ewma_zero_decay() {
    let mut spec = base();
    spec.pools[0].algorithm = Algorithm::PeakEwma { decay: Duration::ZERO };
    only_violation(&spec, "pool 'web'", "algorithm.decay");
}

#[test]
fn route_match_values() {
    let cases: [(Breaker<Route>, &str); 6] = [
        (|r| r.matcher.path = Some(PathMatch::Prefix("api".into())), "path_prefix"),
        (|r| r.matcher.path = Some(PathMatch::Exact("x".into())), "path"),
        (|r| r.matcher.host = Some("bad host".into()), "host"),
        (|r| r.matcher.method = Some("get".into()), "method"),
        (
            |r| r.matcher.headers = vec![HeaderMatch { name: "x y".into(), value: "1".into() }],
            "headers[0].name",
        ),
        (|r| r.rewrite_prefix = Some("v2/".into()), "rewrite_prefix"),
    ];
    for (breaks, field) in cases {
        let mut spec = base();
        breaks(&mut spec.listeners[0].routes[0]);
        only_violation(&spec, "listener 'public' route 'api'", field);
    }
}

#[test]
fn rewrite_without_prefix_match() {
    let mut spec = base();
    let route = &mut spec.listeners[0].routes[0];
    route.matcher.path = None;
    route.rewrite_prefix = Some("/".into());
    only_violation(&spec, "listener 'public' route 'api'", "rewrite_prefix");
}

#[test]
fn sticky_cookie_values() {
    let mut spec = base();
    spec.listeners[0].routes[0].sticky = Some(StickyCookie { cookie: "a b".into(), ttl: None });
    only_violation(&spec, "listener 'public' route 'api'", "sticky.cookie");
    spec.listeners[0].routes[0].sticky =
        Some(StickyCookie { cookie: "pin".into(), ttl: Some(Duration::ZERO) });
    only_violation(&spec, "listener 'public' route 'api'", "sticky.ttl");
}

#[test]
fn every_problem_is_reported_at_once() {
    let mut spec = base();
    spec.listeners[1].default_pool = Some(name("gone"));
    spec.rate_limits[0].limit = RateLimit::TokenBucket { capacity: 0, refill_per_second: 0.0 };
    assert_eq!(spec.validate().unwrap_err().0.len(), 3);
}

#[test]
fn timeouts_beyond_a_year_and_tiny_header_limits() {
    let mut spec = base();
    spec.pools[1].drain_timeout = std::time::Duration::from_secs(400 * 24 * 3600);
    let message = only_violation(&spec, "pool 'api'", "drain_timeout");
    assert!(message.contains("more than a year"), "{message}");
    let mut spec = base();
    spec.listeners[1].http.header_timeout = std::time::Duration::MAX;
    only_violation(&spec, "listener 'db'", "http.header_timeout");
    let mut spec = base();
    spec.listeners[1].http.keep_alive_timeout = std::time::Duration::MAX;
    only_violation(&spec, "listener 'db'", "http.keep_alive_timeout");
    let mut spec = base();
    spec.listeners[1].http.max_header_bytes = 4096;
    only_violation(&spec, "listener 'db'", "http.max_header_bytes");
}
