//! Any request target and Host go through path normalisation and routing without a panic,
//! and normalisation keeps a path's meaning: the path a backend would see after decoding
//! every escape and resolving dot segments is the same for the request as sent and for its
//! normal form, so a route (and its rate limit) written for `/admin` sees every request a
//! backend would serve as `/admin`.

use std::sync::LazyLock;

use fulcrum_model::{Protocol, file};
use fulcrum_policy::{Router, path};
use http::HeaderMap;

const LISTENER: &str = r#"
[[listeners]]
name = "web"
bind = "198.18.0.100:80"
protocol = "http"
default_pool = "other"

[[listeners.routes]]
name = "admin"
host = "*.example.test"
path_prefix = "/admin"
pool = "admin"

[[listeners.routes]]
name = "exact"
path = "/login"
pool = "login"

[[pools]]
name = "admin"
backends = [{ address = "198.18.1.1:8080" }]

[[pools]]
name = "login"
backends = [{ address = "198.18.1.2:8080" }]

[[pools]]
name = "other"
backends = [{ address = "198.18.1.3:8080" }]
"#;

/// What a backend that decodes everything makes of a path: its segments, escapes decoded,
/// empty and `.` segments dropped, `..` taking one back.
fn backend_view(path: &str) -> Vec<Vec<u8>> {
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(high), Some(low)) => {
                decoded.push((high * 16 + low) as u8);
                i += 3;
            }
            (byte, _, _) => {
                decoded.push(byte);
                i += 1;
            }
        }
    }
    let mut segments: Vec<Vec<u8>> = Vec::new();
    for segment in decoded.split(|&b| b == b'/') {
        match segment {
            b"" | b"." => {}
            b".." => {
                segments.pop();
            }
            other => segments.push(other.to_vec()),
        }
    }
    segments
}

/// The listener's router, compiled once for every input.
static ROUTER: LazyLock<Router<()>> = LazyLock::new(|| {
    let spec = file::parse(LISTENER).expect("the listener parses");
    let listener = &spec.listeners[0];
    assert_eq!(listener.protocol, Protocol::Http);
    Router::new(listener, |_| ())
});

/// Checks the property for one input.
pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (host, target) = text.split_once('\n').unwrap_or(("", text));
    let request_path = target.split('?').next().unwrap_or_default();
    let Ok(normal) = path::normalize(request_path) else { return };
    assert_eq!(path::normalize(&normal).expect("a normal form normalises"), normal);
    if request_path.starts_with('/') {
        assert!(normal.starts_with('/'), "{request_path:?} lost its leading slash: {normal:?}");
        assert!(!normal.contains("//"), "{normal:?} keeps a doubled slash");
        assert!(
            !normal.split('/').any(|segment| segment == "." || segment == ".."),
            "{normal:?} keeps a dot segment"
        );
        assert_eq!(
            backend_view(request_path),
            backend_view(&normal),
            "{request_path:?} changed meaning"
        );
    }
    let router = &*ROUTER;
    let mut rng = fastrand::Rng::with_seed(7);
    let headers = HeaderMap::new();
    let host = (!host.is_empty()).then_some(host);
    let routed = router.route(host, "GET", &normal, &headers, &mut rng).expect("a default pool");
    if routed.pool.as_str() == "admin" {
        let segments = backend_view(&normal);
        assert!(segments.first().is_some_and(|first| first.starts_with(b"admin")));
    }
    // What a backend would serve as /admin... is routed to the admin route, whatever
    // escapes, dot segments or doubled slashes the request used to get there.
    if request_path.starts_with('/')
        && backend_view(request_path).first().is_some_and(|first| first.starts_with(b"admin"))
    {
        let admin_host = Some("a.example.test");
        let routed = router.route(admin_host, "GET", &normal, &headers, &mut rng).expect("a pool");
        assert_eq!(routed.pool.as_str(), "admin", "{request_path:?} slipped past the admin route");
    }
}
