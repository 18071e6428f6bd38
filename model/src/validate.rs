//! Validation of a whole [`ClusterSpec`]: references resolve, names and addresses are unique,
//! values are in range. Each problem is a [`Violation`] that names the object and the field.
//!
//! Validation reports every problem it finds, not only the first, so an operator fixes a
//! cluster file in one pass.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::Name;
use crate::acme::{AcmeSettings, ChallengeKind};
use crate::config::*;

/// The largest Maglev table accepted (the next prime after 2^20 is far above any real pool).
pub const MAX_MAGLEV_TABLE_SIZE: u32 = 1_048_583;

/// One problem in a configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// The object at fault, e.g. `pool 'web'` or `listener 'public' route 'api'`.
    pub object: String,
    /// The field at fault, e.g. `backends[1].weight`.
    pub field: String,
    /// What is wrong, in words an operator can act on.
    pub problem: String,
}

/// The longest timeout accepted anywhere.
const MAX_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: field `{}`: {}", self.object, self.field, self.problem)
    }
}

/// Every problem found in a configuration (never empty).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub struct Violations(pub Vec<Violation>);

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{v}")?;
        }
        Ok(())
    }
}

impl ClusterSpec {
    /// Checks the whole configuration; `Err` lists every problem found.
    pub fn validate(&self) -> Result<(), Violations> {
        let mut check = Checker::default();
        check.unique_names("listener", self.listeners.iter().map(|l| &l.name));
        check.unique_names("pool", self.pools.iter().map(|p| &p.name));
        check.unique_names("rate limit", self.rate_limits.iter().map(|p| &p.name));
        check.distinct_binds(&self.listeners);
        for listener in &self.listeners {
            check.listener(self, listener);
        }
        for pool in &self.pools {
            check.pool(pool);
        }
        for policy in &self.rate_limits {
            check.rate_limit(policy);
        }
        if check.found.is_empty() { Ok(()) } else { Err(Violations(check.found)) }
    }
}

#[derive(Default)]
struct Checker {
    found: Vec<Violation>,
}

impl Checker {
    fn report(
        &mut self,
        object: impl Into<String>,
        field: impl Into<String>,
        problem: impl Into<String>,
    ) {
        self.found.push(Violation {
            object: object.into(),
            field: field.into(),
            problem: problem.into(),
        });
    }

    fn unique_names<'a>(&mut self, kind: &str, names: impl Iterator<Item = &'a Name>) {
        let mut seen = BTreeSet::new();
        for name in names {
            if !seen.insert(name) {
                self.report(
                    format!("{kind} '{name}'"),
                    "name",
                    format!("duplicate name: another {kind} is called '{name}'"),
                );
            }
        }
    }

    /// Two sockets on one port conflict when their addresses are equal or either is a wildcard.
    fn distinct_binds(&mut self, listeners: &[Listener]) {
        let mut by_port: BTreeMap<u16, Vec<&Listener>> = BTreeMap::new();
        for listener in listeners {
            let others = by_port.entry(listener.bind.port()).or_default();
            let clash = others.iter().find(|other| binds_overlap(other.bind, listener.bind));
            if let Some(other) = clash {
                self.report(
                    format!("listener '{}'", listener.name),
                    "bind",
                    format!(
                        "{} overlaps listener '{}' on {}",
                        listener.bind, other.name, other.bind
                    ),
                );
            }
            others.push(listener);
        }
    }

    fn acme(&mut self, spec: &ClusterSpec, listener: &Listener, acme: &AcmeSettings) {
        let object = format!("listener '{}'", listener.name);
        if !acme.directory.starts_with("https://") || acme.directory.len() <= "https://".len() {
            self.report(&object, "tls.acme.directory", "an ACME directory is an https:// URL");
        }
        let names = acme.names_for(listener);
        if names.is_empty() {
            self.report(
                &object,
                "tls.acme.hostnames",
                "no names to certify: list `hostnames`, or give routes an exact `host`",
            );
        }
        for name in names.iter().filter(|name| !is_dns_name(name)) {
            self.report(
                &object,
                "tls.acme.hostnames",
                format!("'{name}' is not a DNS name an ACME authority can validate over HTTP or TLS (wildcards need DNS-01)"),
            );
        }
        // Any port: the authority asks on 80, which may be forwarded to another.
        let answers_http = |l: &Listener| {
            l.protocol == Protocol::Http
                && (l.bind.ip() == listener.bind.ip()
                    || (l.bind.ip().is_unspecified()
                        && l.bind.is_ipv4() == listener.bind.is_ipv4()))
        };
        if acme.challenge == ChallengeKind::Http01 && !spec.listeners.iter().any(answers_http) {
            self.report(
                &object,
                "tls.acme.challenge",
                format!(
                    "http-01 is answered by an http listener: add one on {}:80, or use tls-alpn-01",
                    listener.bind.ip()
                ),
            );
        }
    }

    fn listener(&mut self, spec: &ClusterSpec, listener: &Listener) {
        let object = format!("listener '{}'", listener.name);
        if listener.bind.port() == 0 {
            self.report(&object, "bind", "port 0 is not a port a client can reach");
        }
        if listener.idle_timeout.is_zero() {
            self.report(&object, "idle_timeout", "0 would close every connection at once");
        }
        for (field, value) in [
            ("idle_timeout", listener.idle_timeout),
            ("http.header_timeout", listener.http.header_timeout),
            ("http.keep_alive_timeout", listener.http.keep_alive_timeout),
            ("http.request_timeout", listener.http.request_timeout),
        ] {
            self.at_most_a_year(&object, field, value);
        }
        let http = &listener.http;
        for (field, value) in [
            ("http.header_timeout", http.header_timeout),
            ("http.request_timeout", http.request_timeout),
        ] {
            if value.is_zero() {
                self.report(&object, field, "0 would refuse every request");
            }
        }
        if http.max_header_bytes < 8192 {
            self.report(
                &object,
                "http.max_header_bytes",
                format!(
                    "{} bytes cannot hold ordinary request headers; use at least 8192",
                    http.max_header_bytes
                ),
            );
        }
        match (listener.protocol, &listener.tls) {
            (Protocol::Https, None) => self.report(
                &object,
                "tls",
                "an https listener needs `tls.certificates` or `tls.acme`",
            ),
            (Protocol::Https, Some(tls)) if tls.certificates.is_empty() && tls.acme.is_none() => {
                self.report(
                    &object,
                    "tls.certificates",
                    "an https listener needs at least one certificate, or `tls.acme`",
                )
            }
            (Protocol::Https, Some(tls)) => {
                if let Some(acme) = &tls.acme {
                    self.acme(spec, listener, acme);
                }
            }
            (Protocol::Tcp | Protocol::Http, Some(_)) => self.report(
                &object,
                "tls",
                format!("`tls` applies to https listeners only, this one is {}", listener.protocol),
            ),
            _ => {}
        }
        if listener.protocol == Protocol::Tcp {
            if !listener.routes.is_empty() {
                self.report(
                    &object,
                    "routes",
                    "a tcp listener has no HTTP routes; use `default_pool`",
                );
            }
            if listener.default_pool.is_none() {
                self.report(&object, "default_pool", "a tcp listener needs a `default_pool`");
            }
            let policy = listener.rate_limit.as_ref().and_then(|p| spec.rate_limit(p.as_str()));
            if let Some(RateLimitKey::Header(name)) = policy.map(|p| &p.key) {
                self.report(
                    &object,
                    "rate_limit",
                    format!(
                        "a tcp listener has no header {name} to key by; use a policy keyed by `client_ip` or `route`"
                    ),
                );
            }
        } else if listener.default_pool.is_none() && listener.routes.is_empty() {
            self.report(
                &object,
                "default_pool",
                "an HTTP listener needs a `default_pool` or at least one route",
            );
        }
        if listener.max_connections == Some(0) {
            self.report(
                &object,
                "max_connections",
                "0 would refuse every connection; omit it for no limit",
            );
        }
        if let Some(pool) = &listener.default_pool {
            self.pool_exists(spec, &object, "default_pool", pool);
        }
        if let Some(policy) = &listener.rate_limit {
            self.rate_limit_exists(spec, &object, "rate_limit", policy);
        }
        self.unique_names(&format!("{object} route"), listener.routes.iter().map(|r| &r.name));
        for route in &listener.routes {
            self.route(spec, &format!("{object} route '{}'", route.name), route);
        }
    }

    fn route(&mut self, spec: &ClusterSpec, object: &str, route: &Route) {
        match &route.action {
            RouteAction::Pool(pool) => self.pool_exists(spec, object, "pool", pool),
            RouteAction::Split(targets) => {
                if targets.is_empty() {
                    self.report(object, "split", "a split needs at least one pool");
                } else if targets.iter().all(|t| t.weight == 0) {
                    self.report(object, "split", "every pool of the split has weight 0");
                }
                for (i, target) in targets.iter().enumerate() {
                    self.pool_exists(spec, object, &format!("split[{i}].pool"), &target.pool);
                    if target.weight > MAX_WEIGHT {
                        self.report(
                            object,
                            format!("split[{i}].weight"),
                            format!("{} is above the maximum weight {MAX_WEIGHT}", target.weight),
                        );
                    }
                }
            }
        }
        let matcher = &route.matcher;
        if let Some(host) = &matcher.host
            && (host.is_empty()
                || !host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.*".contains(&b)))
        {
            self.report(object, "host", format!("{host:?} is not a host name"));
        }
        let (field, path) = match &matcher.path {
            Some(PathMatch::Prefix(p)) => ("path_prefix", Some(p)),
            Some(PathMatch::Exact(p)) => ("path", Some(p)),
            None => ("path", None),
        };
        if let Some(path) = path.filter(|p| !p.starts_with('/')) {
            self.report(object, field, format!("{path:?} does not start with '/'"));
        }
        if let Some(method) = &matcher.method
            && (!is_http_token(method) || method.bytes().any(|b| b.is_ascii_lowercase()))
        {
            self.report(object, "method", format!("{method:?} is not an uppercase HTTP method"));
        }
        for (i, header) in matcher.headers.iter().enumerate() {
            if !is_http_token(&header.name) {
                self.report(
                    object,
                    format!("headers[{i}].name"),
                    format!("{:?} is not a header name", header.name),
                );
            }
        }
        if let Some(rewrite) = &route.rewrite_prefix {
            if !matches!(matcher.path, Some(PathMatch::Prefix(_))) {
                self.report(object, "rewrite_prefix", "a rewrite needs a `path_prefix` to replace");
            } else if !rewrite.starts_with('/') {
                self.report(
                    object,
                    "rewrite_prefix",
                    format!("{rewrite:?} does not start with '/'"),
                );
            }
        }
        if let Some(policy) = &route.rate_limit {
            self.rate_limit_exists(spec, object, "rate_limit", policy);
        }
        if let Some(sticky) = &route.sticky {
            if !is_http_token(&sticky.cookie) {
                self.report(
                    object,
                    "sticky.cookie",
                    format!("{:?} is not a cookie name", sticky.cookie),
                );
            }
            if sticky.ttl == Some(std::time::Duration::ZERO) {
                self.report(
                    object,
                    "sticky.ttl",
                    "a ttl of 0 expires the cookie at once; omit it for a session cookie",
                );
            }
        }
    }

    /// Timeouts above a year are surely typos, and would overflow clock arithmetic.
    fn at_most_a_year(&mut self, object: &str, field: &str, value: std::time::Duration) {
        if value > MAX_TIMEOUT {
            self.report(
                object,
                field,
                format!("{} is more than a year", humantime::format_duration(value)),
            );
        }
    }

    fn pool(&mut self, pool: &Pool) {
        let object = format!("pool '{}'", pool.name);
        let mut addresses = BTreeSet::new();
        for (i, backend) in pool.backends.iter().enumerate() {
            if !addresses.insert(backend.address) {
                self.report(
                    &object,
                    format!("backends[{i}].address"),
                    format!("duplicate backend {}", backend.address),
                );
            }
            if backend.address.port() == 0 {
                self.report(
                    &object,
                    format!("backends[{i}].address"),
                    "port 0 is not a port a backend listens on",
                );
            }
            if backend.address.ip().is_unspecified() {
                self.report(
                    &object,
                    format!("backends[{i}].address"),
                    format!("{} is not an address to connect to", backend.address.ip()),
                );
            }
            if backend.weight > MAX_WEIGHT {
                self.report(
                    &object,
                    format!("backends[{i}].weight"),
                    format!("{} is above the maximum weight {MAX_WEIGHT}", backend.weight),
                );
            }
            if backend.max_connections == Some(0) {
                self.report(
                    &object,
                    format!("backends[{i}].max_connections"),
                    "0 would refuse every connection; omit it for no limit",
                );
            }
        }
        for (field, value) in [
            ("connect_timeout", pool.connect_timeout),
            ("response_timeout", pool.response_timeout),
            ("drain_timeout", pool.drain_timeout),
        ] {
            self.at_most_a_year(&object, field, value);
        }
        if let Some(check) = &pool.health_check {
            for (field, value) in
                [("health_check.interval", check.interval), ("health_check.timeout", check.timeout)]
            {
                self.at_most_a_year(&object, field, value);
            }
        }
        if pool.connect_timeout.is_zero() {
            self.report(&object, "connect_timeout", "0 would fail every connection attempt");
        }
        if pool.response_timeout.is_zero() {
            self.report(&object, "response_timeout", "0 would fail every request");
        }
        if !pool.backends.is_empty() && pool.backends.iter().all(|b| b.weight == 0) {
            self.report(
                &object,
                "backends",
                "every backend has weight 0, so the pool could take no traffic",
            );
        }
        match &pool.algorithm {
            Algorithm::ConsistentHash { table_size, .. } => {
                if !is_prime(*table_size) || *table_size > MAX_MAGLEV_TABLE_SIZE {
                    self.report(
                        &object,
                        "algorithm.table_size",
                        format!("{table_size} is not a prime up to {MAX_MAGLEV_TABLE_SIZE}"),
                    );
                } else if (*table_size as usize) < pool.backends.len() * 100 {
                    self.report(&object, "algorithm.table_size", format!("{table_size} is too small for {} backends: use a prime of at least 100 per backend", pool.backends.len()));
                }
            }
            Algorithm::PeakEwma { decay } if decay.is_zero() => {
                self.report(&object, "algorithm.decay", "a decay of 0 keeps no latency history");
            }
            _ => {}
        }
        if let Some(check) = &pool.health_check {
            if check.interval.is_zero() {
                self.report(
                    &object,
                    "health_check.interval",
                    "an interval of 0 would check without pause",
                );
            }
            if check.timeout.is_zero() {
                self.report(&object, "health_check.timeout", "a timeout of 0 fails every check");
            } else if !check.interval.is_zero() && check.timeout > check.interval {
                self.report(
                    &object,
                    "health_check.timeout",
                    format!(
                        "{} is longer than the interval {}",
                        humantime::format_duration(check.timeout),
                        humantime::format_duration(check.interval)
                    ),
                );
            }
            if check.rise == 0 {
                self.report(&object, "health_check.rise", "rise must be at least 1");
            }
            if check.fall == 0 {
                self.report(&object, "health_check.fall", "fall must be at least 1");
            }
            if let Some(http) = &check.http {
                if !http.path.starts_with('/') {
                    self.report(
                        &object,
                        "health_check.http.path",
                        format!("{:?} does not start with '/'", http.path),
                    );
                }
                if !(100..=599).contains(&http.expect_status) {
                    self.report(
                        &object,
                        "health_check.http.expect_status",
                        format!("{} is not an HTTP status", http.expect_status),
                    );
                }
            }
        }
    }

    fn rate_limit(&mut self, policy: &RateLimitPolicy) {
        let object = format!("rate limit '{}'", policy.name);
        match &policy.limit {
            RateLimit::TokenBucket { capacity, refill_per_second } => {
                if *capacity == 0 {
                    self.report(&object, "capacity", "a capacity of 0 refuses every request");
                }
                if !(refill_per_second.is_finite() && *refill_per_second > 0.0) {
                    self.report(&object, "refill_per_second", format!("{refill_per_second} is not a positive rate: a bucket that never refills blocks for ever"));
                }
            }
            RateLimit::SlidingWindow { limit, window } => {
                if *limit == 0 {
                    self.report(&object, "limit", "a limit of 0 refuses every request");
                }
                if window.is_zero() {
                    self.report(&object, "window", "a window of 0 counts nothing");
                }
            }
        }
    }

    fn pool_exists(&mut self, spec: &ClusterSpec, object: &str, field: &str, pool: &Name) {
        if spec.pool(pool.as_str()).is_none() {
            self.report(object, field, format!("pool '{pool}' does not exist"));
        }
    }

    fn rate_limit_exists(&mut self, spec: &ClusterSpec, object: &str, field: &str, policy: &Name) {
        if spec.rate_limit(policy.as_str()).is_none() {
            self.report(object, field, format!("rate limit '{policy}' does not exist"));
        }
    }
}

fn binds_overlap(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn is_prime(n: u32) -> bool {
    n >= 2 && (2..).take_while(|d: &u32| d.saturating_mul(*d) <= n).all(|d| !n.is_multiple_of(d))
}

/// A name an ACME authority can validate by HTTP-01 or TLS-ALPN-01: letters, digits and
/// hyphens in dot-separated labels of at most 63 bytes, 253 in all, no wildcard, and not an
/// IP address (its last label has a letter).
fn is_dns_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').count() >= 2
        && name.rsplit('.').next().is_some_and(|tld| tld.bytes().any(|b| b.is_ascii_alphabetic()))
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}
