//! HTTP routing: a listener's routes compiled for matching, tried in order, first match wins,
//! then the listener's default pool. Sans IO: a request is described by its parts, and a
//! split's randomness is an argument. Each route carries a value of the caller's (the node's
//! request counters), kept by route name across rebuilds.

use fulcrum_model::{Listener, Name, PathMatch, Route, RouteAction};
use http::HeaderMap;

/// What a route decided for one request.
#[derive(Clone, Debug)]
pub struct Routed<'a, S> {
    /// The matching route; `None` for the listener's default pool.
    pub route: Option<&'a CompiledRoute<S>>,
    /// The pool chosen (for a split, the drawn one).
    pub pool: &'a Name,
}

/// One route, ready to match.
#[derive(Debug)]
pub struct CompiledRoute<S> {
    /// The route as configured.
    pub spec: Route,
    /// The host to match, lowercased, without port.
    host: Option<String>,
    /// Header names lowercased.
    headers: Vec<(String, String)>,
    /// Split targets with cumulative weights, for one draw.
    split: Vec<(u64, Name)>,
    /// The caller's value for this route (its request counters).
    pub stats: S,
}

/// A listener's routes.
#[derive(Debug, Default)]
pub struct Router<S> {
    routes: Vec<CompiledRoute<S>>,
    default_pool: Option<Name>,
    /// The caller's value for requests no route takes.
    default_stats: S,
}

impl<S> Router<S> {
    /// Compiles a listener's routes; `stats` gives each route its (kept) value, and the
    /// default pool's for `None`.
    pub fn new(listener: &Listener, mut stats: impl FnMut(Option<&Name>) -> S) -> Router<S> {
        let routes = listener
            .routes
            .iter()
            .map(|route| {
                let split = match &route.action {
                    RouteAction::Pool(_) => Vec::new(),
                    RouteAction::Split(targets) => targets
                        .iter()
                        .filter(|t| t.weight > 0)
                        .scan(0u64, |total, t| {
                            *total += u64::from(t.weight);
                            Some((*total, t.pool.clone()))
                        })
                        .collect(),
                };
                CompiledRoute {
                    host: route
                        .matcher
                        .host
                        .as_deref()
                        .map(|h| host_without_port(h).to_ascii_lowercase()),
                    headers: route
                        .matcher
                        .headers
                        .iter()
                        .map(|h| (h.name.to_ascii_lowercase(), h.value.clone()))
                        .collect(),
                    split,
                    stats: stats(Some(&route.name)),
                    spec: route.clone(),
                }
            })
            .collect();
        Router { routes, default_pool: listener.default_pool.clone(), default_stats: stats(None) }
    }

    /// The value for requests no route takes.
    pub fn default_stats(&self) -> &S {
        &self.default_stats
    }

    /// Routes a request: the first route whose every condition holds, else the default pool;
    /// `None` when nothing matches and there is no default pool.
    pub fn route<'a>(
        &'a self,
        host: Option<&str>,
        method: &str,
        path: &str,
        headers: &HeaderMap,
        rng: &mut fastrand::Rng,
    ) -> Option<Routed<'a, S>> {
        let host = host.map(host_without_port);
        for route in &self.routes {
            if route.matches(host, method, path, headers) {
                let pool = match &route.spec.action {
                    RouteAction::Pool(pool) => pool,
                    RouteAction::Split(_) => route.draw(rng)?,
                };
                return Some(Routed { route: Some(route), pool });
            }
        }
        self.default_pool.as_ref().map(|pool| Routed { route: None, pool })
    }
}

impl<S> CompiledRoute<S> {
    fn matches(&self, host: Option<&str>, method: &str, path: &str, headers: &HeaderMap) -> bool {
        let matcher = &self.spec.matcher;
        if let Some(want) = &self.host
            && !host.is_some_and(|h| host_matches(want, h))
        {
            return false;
        }
        if let Some(want) = &matcher.method
            && want != method
        {
            return false;
        }
        let path_ok = match &matcher.path {
            None => true,
            Some(PathMatch::Prefix(prefix)) => path.starts_with(prefix.as_str()),
            Some(PathMatch::Exact(exact)) => path == exact,
        };
        path_ok
            && self.headers.iter().all(|(name, value)| {
                headers.get_all(name.as_str()).iter().any(|v| v.as_bytes() == value.as_bytes())
            })
    }

    /// One weighted draw among the split's pools.
    fn draw(&self, rng: &mut fastrand::Rng) -> Option<&Name> {
        let total = self.split.last()?.0;
        let ticket = rng.u64(0..total);
        self.split.iter().find(|(bound, _)| ticket < *bound).map(|(_, pool)| pool)
    }

    /// The path to send upstream: the matched prefix replaced by `rewrite_prefix`, if any.
    pub fn rewrite<'p>(&self, path: &'p str) -> std::borrow::Cow<'p, str> {
        match (&self.spec.rewrite_prefix, &self.spec.matcher.path) {
            (Some(replacement), Some(PathMatch::Prefix(prefix) | PathMatch::Exact(prefix))) => {
                match path.strip_prefix(prefix.as_str()) {
                    Some(rest) => {
                        let mut rewritten = replacement.clone();
                        // "/api/" → "/" on "/api/users" gives "/users", never "//users".
                        if rewritten.ends_with('/') && rest.starts_with('/') {
                            rewritten.pop();
                        }
                        rewritten.push_str(rest);
                        if !rewritten.starts_with('/') {
                            rewritten.insert(0, '/');
                        }
                        std::borrow::Cow::Owned(rewritten)
                    }
                    None => std::borrow::Cow::Borrowed(path),
                }
            }
            _ => std::borrow::Cow::Borrowed(path),
        }
    }
}

/// `want` is a host or `*.suffix`, which matches any name ending in `.suffix` (not `suffix`
/// itself); compared case-insensitively.
fn host_matches(want: &str, host: &str) -> bool {
    match want.strip_prefix("*.") {
        Some(suffix) => {
            host.len() > suffix.len() + 1
                && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
                && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
        }
        None => host.eq_ignore_ascii_case(want),
    }
}

/// `example.com:8080` → `example.com`; `[::1]:80` → `[::1]`.
fn host_without_port(host: &str) -> &str {
    match host.rfind(':') {
        Some(i)
            if !host[i..].contains(']') && host[i + 1..].bytes().all(|b| b.is_ascii_digit()) =>
        {
            &host[..i]
        }
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fulcrum_model::{HeaderMatch, Protocol, RouteMatch, SplitTarget};

    fn name(text: &str) -> Name {
        text.parse().expect("name")
    }

    fn route(route_name: &str, matcher: RouteMatch, pool: &str) -> Route {
        Route {
            name: name(route_name),
            matcher,
            action: RouteAction::Pool(name(pool)),
            rewrite_prefix: None,
            rate_limit: None,
            sticky: None,
        }
    }

    fn router(routes: Vec<Route>, default_pool: Option<&str>) -> Router<()> {
        let mut listener = Listener::new(
            name("web"),
            "127.0.0.1:80".parse().expect("addr"),
            Protocol::Http,
            name("default"),
        );
        listener.default_pool = default_pool.map(name);
        listener.routes = routes;
        Router::new(&listener, |_| ())
    }

    fn pick(
        router: &Router<()>,
        host: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Option<String> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        let mut rng = fastrand::Rng::with_seed(1);
        router.route(Some(host), method, path, &map, &mut rng).map(|r| {
            let route = r.route.map_or("-".to_owned(), |r| r.spec.name.to_string());
            format!("{route}:{}", r.pool)
        })
    }

    #[test]
    fn routes_are_tried_in_order_and_the_first_match_wins() {
        let api_host =
            RouteMatch { host: Some("API.example.test".into()), ..RouteMatch::default() };
        let users =
            RouteMatch { path: Some(PathMatch::Prefix("/users".into())), ..RouteMatch::default() };
        let exact =
            RouteMatch { path: Some(PathMatch::Exact("/health".into())), ..RouteMatch::default() };
        let post = RouteMatch { method: Some("POST".into()), ..RouteMatch::default() };
        let canary = RouteMatch {
            headers: vec![HeaderMatch { name: "X-Canary".into(), value: "1".into() }],
            ..RouteMatch::default()
        };
        let r = router(
            vec![
                route("canary", canary, "canary"),
                route("api", api_host, "api"),
                route("health", exact, "health"),
                route("users", users, "users"),
                route("writes", post, "writes"),
            ],
            Some("default"),
        );
        let cases = [
            ("api.example.test:8080", "GET", "/users/1", vec![], "api:api"),
            ("www.example.test", "GET", "/users/1", vec![], "users:users"),
            ("www.example.test", "GET", "/health", vec![], "health:health"),
            ("www.example.test", "GET", "/health/deep", vec![], "-:default"),
            ("www.example.test", "POST", "/health/deep", vec![], "writes:writes"),
            ("api.example.test", "GET", "/", vec![("x-canary", "1")], "canary:canary"),
            ("api.example.test", "GET", "/", vec![("x-canary", "0")], "api:api"),
            (
                "www.example.test",
                "GET",
                "/",
                vec![("x-canary", "2"), ("x-canary", "1")],
                "canary:canary",
            ),
            ("www.example.test", "GET", "/usersX", vec![], "users:users"),
            ("www.example.test", "GET", "/user", vec![], "-:default"),
        ];
        for (host, method, path, headers, want) in cases {
            assert_eq!(
                pick(&r, host, method, path, &headers).as_deref(),
                Some(want),
                "{method} {host}{path} {headers:?}"
            );
        }
    }

    #[test]
    fn without_a_default_pool_unmatched_requests_have_no_route() {
        let only =
            RouteMatch { path: Some(PathMatch::Prefix("/a".into())), ..RouteMatch::default() };
        let r = router(vec![route("a", only, "a")], None);
        assert_eq!(pick(&r, "h", "GET", "/b", &[]), None);
        assert_eq!(pick(&r, "h", "GET", "/a", &[]).as_deref(), Some("a:a"));
    }

    #[test]
    fn a_split_draws_pools_by_weight() {
        let mut split = route("canary", RouteMatch::default(), "x");
        split.action = RouteAction::Split(vec![
            SplitTarget { pool: name("stable"), weight: 95 },
            SplitTarget { pool: name("canary"), weight: 5 },
            SplitTarget { pool: name("off"), weight: 0 },
        ]);
        let r = router(vec![split], None);
        let mut rng = fastrand::Rng::with_seed(42);
        let mut canary = 0;
        for _ in 0..100_000 {
            let routed =
                r.route(Some("h"), "GET", "/", &HeaderMap::new(), &mut rng).expect("routed");
            assert_ne!(routed.pool.as_str(), "off");
            canary += usize::from(routed.pool.as_str() == "canary");
        }
        assert!((4_500..5_500).contains(&canary), "{canary} of 100000");
    }

    #[test]
    fn prefix_rewrite_replaces_the_matched_prefix() {
        let mut api = route(
            "api",
            RouteMatch { path: Some(PathMatch::Prefix("/v1/".into())), ..RouteMatch::default() },
            "api",
        );
        api.rewrite_prefix = Some("/".into());
        let r = router(vec![api.clone()], None);
        let compiled = &r.routes[0];
        assert_eq!(compiled.rewrite("/v1/users?x=1"), "/users?x=1");
        assert_eq!(compiled.rewrite("/v1/"), "/");
        api.rewrite_prefix = Some("/internal".into());
        let r = router(vec![api], None);
        assert_eq!(r.routes[0].rewrite("/v1/users"), "/internalusers");
    }

    #[test]
    fn wildcard_hosts_match_subdomains_only() {
        assert!(host_matches("*.example.test", "a.example.test"));
        assert!(host_matches("*.example.test", "A.B.EXAMPLE.test"));
        assert!(!host_matches("*.example.test", "example.test"));
        assert!(!host_matches("*.example.test", "aexample.test"));
        assert!(!host_matches("*.example.test", "é"));
        assert!(host_matches("www.example.test", "WWW.example.test"));
    }

    #[test]
    fn hosts_lose_their_port() {
        assert_eq!(host_without_port("a.test:8080"), "a.test");
        assert_eq!(host_without_port("a.test"), "a.test");
        assert_eq!(host_without_port("[::1]:80"), "[::1]");
        assert_eq!(host_without_port("[::1]"), "[::1]");
    }
}
