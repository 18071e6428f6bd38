//! The L7 data plane on loopback: real hyper backends, real HTTP/1.1, h2, TLS and WebSocket
//! clients through real listeners.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fulcrum_model::{
    Backend, Certificate, ClusterSpec, Config, Listener, Name, PathMatch, Pool, Protocol,
    RateLimit, RateLimitKey, RateLimitPolicy, Route, RouteAction, RouteMatch, SplitTarget,
    StickyCookie, Tls,
};
use fulcrum_node::dataplane::DataPlane;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod support;

use support::free_port;

const PATIENCE: Duration = Duration::from_secs(10);

fn name(text: &str) -> Name {
    text.parse().expect("valid name")
}

/// A hyper backend (HTTP/1.1 and h2c) answering with its name in `x-backend` and the body
/// `<name> <method> <path> <x-forwarded-for> <x-forwarded-proto> <forwarded>`; `/slow` waits
/// 2 s; `/status/N` answers N; `/ws` accepts a WebSocket-style upgrade and echoes.
struct HttpBackend {
    address: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl HttpBackend {
    async fn start(backend_name: &'static str) -> HttpBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |request| answer(backend_name, request));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        HttpBackend { address, task }
    }
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    backend: &'static str,
    mut request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path().to_owned();
    let header = |name: &str| {
        request.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned()
    };
    let mut response = Response::new(Full::new(Bytes::new()));
    response.headers_mut().insert("x-backend", backend.parse().expect("value"));
    if path == "/slow" {
        tokio::time::sleep(Duration::from_secs(2)).await;
    } else if path == "/consume" {
        // Answers only once the whole request body arrived.
        let received = request.body_mut().collect().await.map(|b| b.to_bytes().len());
        *response.body_mut() = Full::new(Bytes::from(format!("{received:?}")));
        return Ok(response);
    } else if let Some(code) = path.strip_prefix("/status/") {
        *response.status_mut() = StatusCode::from_u16(code.parse().unwrap_or(500))
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    } else if path == "/ws" {
        let upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let mut io = TokioIo::new(upgraded);
                let mut buffer = [0u8; 64];
                while let Ok(n) = io.read(&mut buffer).await {
                    if n == 0 || io.write_all(&buffer[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        response.headers_mut().insert("upgrade", "websocket".parse().expect("value"));
        response.headers_mut().insert("connection", "upgrade".parse().expect("value"));
        return Ok(response);
    }
    let body = format!(
        "{backend} {} {} {} {} {}",
        request.method(),
        request.uri().path_and_query().map_or("/", |p| p.as_str()),
        header("x-forwarded-for"),
        header("x-forwarded-proto"),
        header("forwarded"),
    );
    *response.body_mut() = Full::new(Bytes::from(body));
    Ok(response)
}

fn pool(pool_name: &str, backends: &[&HttpBackend]) -> Pool {
    let mut pool = Pool::new(name(pool_name));
    pool.backends = backends.iter().map(|b| Backend::new(b.address)).collect();
    pool
}

fn http_listener(bind: SocketAddr, default_pool: &str) -> Listener {
    Listener::new(name("web"), bind, Protocol::Http, name(default_pool))
}

fn route(route_name: &str, prefix: &str, pool: &str) -> Route {
    Route {
        name: name(route_name),
        matcher: RouteMatch {
            path: Some(PathMatch::Prefix(prefix.into())),
            ..RouteMatch::default()
        },
        action: RouteAction::Pool(name(pool)),
        rewrite_prefix: None,
        rate_limit: None,
        sticky: None,
    }
}

async fn serve(
    listeners: Vec<Listener>,
    pools: Vec<Pool>,
    rate_limits: Vec<RateLimitPolicy>,
) -> DataPlane {
    let plane = DataPlane::new().expect("workers start");
    let config = Config {
        revision: 1,
        spec: ClusterSpec { listeners, pools, rate_limits },
        acme: Default::default(),
    };
    let errors = plane.apply(&config).await.expect("not drained");
    assert!(errors.is_empty(), "{errors:?}");
    plane
}

/// One HTTP/1.1 request on a new connection: status, headers, body.
async fn get(
    front: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, hyper::HeaderMap, String) {
    let exchange = async {
        let stream = TcpStream::connect(front).await.expect("connect");
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
        tokio::spawn(connection);
        let mut request = Request::get(path).header("host", "www.example.test");
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = sender
            .send_request(request.body(http_body_util::Empty::<Bytes>::new()).expect("request"))
            .await
            .expect("response");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        (parts.status, parts.headers, String::from_utf8_lossy(&body).into_owned())
    };
    tokio::time::timeout(PATIENCE, exchange).await.expect("answered in time")
}

#[tokio::test]
async fn requests_are_routed_rewritten_and_carry_forwarding_headers() {
    let web = HttpBackend::start("web").await;
    let api = HttpBackend::start("api").await;
    let port = free_port();
    let mut listener = http_listener(port.address, "web");
    let mut api_route = route("api", "/api/", "api");
    api_route.rewrite_prefix = Some("/".into());
    listener.routes = vec![api_route];
    let _plane =
        serve(vec![listener], vec![pool("web", &[&web]), pool("api", &[&api])], vec![]).await;

    // A client that is no trusted proxy cannot put words in the backend's mouth.
    let forged = [("x-forwarded-for", "203.0.113.9"), ("forwarded", "for=203.0.113.9")];
    let (status, headers, body) = get(port.address, "/api/users?id=7", &forged).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-backend"], "api");
    assert_eq!(
        body,
        "api GET /users?id=7 127.0.0.1 http for=127.0.0.1;proto=http;host=\"www.example.test\""
    );
    let (_, headers, body) = get(port.address, "/other", &[]).await;
    assert_eq!(headers["x-backend"], "web");
    assert!(body.starts_with("web GET /other 127.0.0.1 http"), "{body}");
}

#[tokio::test]
async fn a_weighted_split_sends_its_share_to_the_canary() {
    let stable = HttpBackend::start("stable").await;
    let canary = HttpBackend::start("canary").await;
    let port = free_port();
    let mut listener = http_listener(port.address, "stable");
    let mut split = route("split", "/", "stable");
    split.action = RouteAction::Split(vec![
        SplitTarget { pool: name("stable"), weight: 95 },
        SplitTarget { pool: name("canary"), weight: 5 },
    ]);
    listener.routes = vec![split];
    let _plane =
        serve(vec![listener], vec![pool("stable", &[&stable]), pool("canary", &[&canary])], vec![])
            .await;

    // Keep-alive, as a real client would: one connection, 2,000 requests.
    let stream = TcpStream::connect(port.address).await.expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(connection);
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..2000 {
        let request = Request::get("/")
            .header("host", "x")
            .body(http_body_util::Empty::<Bytes>::new())
            .expect("request");
        let response = sender.send_request(request).await.expect("response");
        let backend = response.headers()["x-backend"].to_str().expect("text").to_owned();
        response.into_body().collect().await.expect("body");
        *counts.entry(backend).or_default() += 1;
    }
    let canary = counts.get("canary").copied().unwrap_or(0);
    // 5 % of 2,000 is 100; the binomial standard deviation is under 10.
    assert!((60..=140).contains(&canary), "{counts:?}");
}

#[tokio::test]
async fn a_sticky_cookie_is_honoured_then_re_pinned_when_its_backend_fails() {
    let a = HttpBackend::start("a").await;
    let b = HttpBackend::start("b").await;
    let port = free_port();
    let mut listener = http_listener(port.address, "web");
    let mut sticky = route("app", "/", "web");
    sticky.sticky =
        Some(StickyCookie { cookie: "pin".into(), ttl: Some(Duration::from_secs(3600)) });
    listener.routes = vec![sticky];
    let plane = serve(vec![listener], vec![pool("web", &[&a, &b])], vec![]).await;

    let (_, headers, _) = get(port.address, "/", &[]).await;
    let set_cookie = headers["set-cookie"].to_str().expect("text").to_owned();
    assert!(set_cookie.contains("Max-Age=3600") && set_cookie.contains("HttpOnly"), "{set_cookie}");
    let cookie = set_cookie.split(';').next().expect("pair").to_owned();
    let pinned = headers["x-backend"].to_str().expect("text").to_owned();
    for _ in 0..10 {
        let (_, headers, _) = get(port.address, "/", &[("cookie", &cookie)]).await;
        assert_eq!(headers["x-backend"], pinned.as_str(), "round robin would alternate");
        assert!(headers.get("set-cookie").is_none(), "an honoured cookie is not set again");
    }
    let forged = format!("pin={}", "ZmFrZQ.AAAAAAAAAAAAAAAAAAAAAA");
    let (status, _, _) = get(port.address, "/", &[("cookie", &forged)]).await;
    assert_eq!(status, StatusCode::OK, "a forged cookie is ignored, not an error");

    // The pinned backend leaves: the client is re-pinned to the other one.
    let (gone, stays) = if pinned == "a" { (&a, "b") } else { (&b, "a") };
    let mut web = pool("web", &[&a, &b]);
    web.backends.retain(|backend| backend.address != gone.address);
    let mut listener = http_listener(port.address, "web");
    let mut sticky = route("app", "/", "web");
    sticky.sticky = Some(StickyCookie { cookie: "pin".into(), ttl: None });
    listener.routes = vec![sticky];
    let config = Config {
        revision: 2,
        spec: ClusterSpec { listeners: vec![listener], pools: vec![web], rate_limits: vec![] },
        acme: Default::default(),
    };
    plane.apply(&config).await.expect("applied");
    let (_, headers, _) = get(port.address, "/", &[("cookie", &cookie)]).await;
    assert_eq!(headers["x-backend"], stays);
    let repinned = headers["set-cookie"].to_str().expect("text");
    assert!(repinned.starts_with("pin=") && !repinned.contains(&cookie), "{repinned}");
}

#[tokio::test]
async fn a_sticky_cookie_survives_a_config_change_that_keeps_its_backend_and_moves_to_another_node()
{
    let backends = [
        HttpBackend::start("a").await,
        HttpBackend::start("b").await,
        HttpBackend::start("c").await,
    ];
    let [a, b, c] = &backends;
    let config = |port: SocketAddr, members: &[&HttpBackend], revision| {
        let mut listener = http_listener(port, "web");
        let mut sticky = route("app", "/", "web");
        sticky.sticky = Some(StickyCookie { cookie: "pin".into(), ttl: None });
        listener.routes = vec![sticky];
        let spec = ClusterSpec {
            listeners: vec![listener],
            pools: vec![pool("web", members)],
            rate_limits: vec![],
        };
        Config { revision, spec, acme: Default::default() }
    };
    // Two nodes of one cluster: the cookie key comes from the cluster secret.
    let signer = || fulcrum_policy::CookieSigner::new(b"one cluster secret of 32 bytes!!");
    let (one, two) = (free_port(), free_port());
    let node_one = DataPlane::with_workers(2, signer()).expect("workers start");
    let node_two = DataPlane::with_workers(2, signer()).expect("workers start");
    assert!(node_one.apply(&config(one.address, &[a, b], 1)).await.expect("applied").is_empty());
    assert!(node_two.apply(&config(two.address, &[a, b], 1)).await.expect("applied").is_empty());

    let (_, headers, _) = get(one.address, "/", &[]).await;
    let cookie =
        headers["set-cookie"].to_str().expect("text").split(';').next().expect("pair").to_owned();
    let pinned = headers["x-backend"].to_str().expect("text").to_owned();

    // A backend added: the pin holds, and the cookie is not set again.
    assert!(node_one.apply(&config(one.address, &[a, b, c], 2)).await.expect("applied").is_empty());
    for _ in 0..6 {
        let (_, headers, _) = get(one.address, "/", &[("cookie", &cookie)]).await;
        assert_eq!(headers["x-backend"], pinned.as_str(), "the pin survives the change");
        assert!(headers.get("set-cookie").is_none());
    }
    // After a failover the client reaches the other node, which honours the same cookie.
    for _ in 0..6 {
        let (_, headers, _) = get(two.address, "/", &[("cookie", &cookie)]).await;
        assert_eq!(headers["x-backend"], pinned.as_str(), "the other node honours the pin");
        assert!(headers.get("set-cookie").is_none());
    }
}

#[tokio::test]
async fn over_the_limit_answers_429_with_retry_after_and_refills() {
    let a = HttpBackend::start("a").await;
    let port = free_port();
    let mut listener = http_listener(port.address, "web");
    let mut limited = route("limited", "/", "web");
    limited.rate_limit = Some(name("per-client"));
    listener.routes = vec![limited];
    let policy = RateLimitPolicy {
        name: name("per-client"),
        key: RateLimitKey::ClientIp,
        limit: RateLimit::TokenBucket { capacity: 3, refill_per_second: 1.0 },
    };
    let plane = serve(vec![listener], vec![pool("web", &[&a])], vec![policy]).await;

    // Reset: whole seconds until the bucket is full again, one per token spent at 1/s.
    for (remaining, reset) in [("2", "1"), ("1", "2"), ("0", "3")] {
        let (status, headers, _) = get(port.address, "/", &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["x-ratelimit-limit"], "3");
        assert_eq!(headers["x-ratelimit-remaining"], remaining);
        assert_eq!(headers["x-ratelimit-reset"], reset);
    }
    let (status, headers, _) = get(port.address, "/", &[]).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = headers["retry-after"].to_str().expect("text").parse().expect("seconds");
    assert!((1..=2).contains(&retry), "one token takes 1 s; ceil plus jitter: {retry}");
    assert_eq!(headers["x-ratelimit-remaining"], "0");

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _, _) = get(port.address, "/", &[]).await;
    assert_eq!(status, StatusCode::OK, "a token refilled");
    let metrics = plane.metrics().await;
    assert!(
        metrics
            .contains("fulcrum_route_rate_limited_total{listener=\"web\",route=\"limited\"} 1\n"),
        "{metrics}"
    );
}

#[tokio::test]
async fn proxy_errors_say_what_happened() {
    let a = HttpBackend::start("a").await;
    let dead = free_port();
    let port = free_port();
    let mut listener = http_listener(port.address, "web");
    listener.routes = vec![route("dead", "/dead", "dead"), route("empty", "/empty", "empty")];
    // A listener whose requests run out of time before its pool's response timeout does.
    let hurried = free_port();
    let mut hurried_listener = http_listener(hurried.address, "web");
    hurried_listener.name = name("hurried");
    hurried_listener.http.request_timeout = Duration::from_millis(150);
    let mut dead_pool = Pool::new(name("dead"));
    dead_pool.backends = vec![Backend::new(dead.address)];
    let mut web = pool("web", &[&a]);
    web.response_timeout = Duration::from_millis(300);
    let _plane = serve(
        vec![listener, hurried_listener],
        vec![web, dead_pool, Pool::new(name("empty"))],
        vec![],
    )
    .await;

    let (status, _, body) = get(port.address, "/dead", &[]).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    let (status, _, body) = get(port.address, "/empty", &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("no healthy backend"), "{body}");
    let (status, _, body) = get(port.address, "/slow", &[]).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert!(body.contains("the backend did not answer in time"), "{body}");
    let (status, _, body) = get(hurried.address, "/slow", &[]).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert!(body.contains("request timed out"), "the listener's timeout came first: {body}");
    let (status, _, _) = get(port.address, "/status/503", &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "a backend's own status passes through");
}

#[tokio::test]
async fn oversized_headers_get_431_and_oversized_bodies_413() {
    let a = HttpBackend::start("a").await;
    let port = free_port();
    let mut listener = http_listener(port.address, "web");
    listener.http.max_header_bytes = 8192;
    listener.http.max_body_bytes = 1000;
    let _plane = serve(vec![listener], vec![pool("web", &[&a])], vec![]).await;

    let mut stream = TcpStream::connect(port.address).await.expect("connect");
    let big = "x".repeat(20_000);
    let request = format!("GET / HTTP/1.1\r\nhost: a\r\nx-big: {big}\r\n\r\n");
    let _ = stream.write_all(request.as_bytes()).await;
    let mut answer = vec![0; 64];
    let n = tokio::time::timeout(PATIENCE, stream.read(&mut answer))
        .await
        .expect("answered")
        .expect("read");
    assert!(
        String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 431"),
        "{:?}",
        String::from_utf8_lossy(&answer[..n])
    );

    let mut stream = TcpStream::connect(port.address).await.expect("connect");
    let body = "y".repeat(5000);
    let request =
        format!("POST / HTTP/1.1\r\nhost: a\r\ncontent-length: {}\r\n\r\n{body}", body.len());
    let _ = stream.write_all(request.as_bytes()).await;
    let n = tokio::time::timeout(PATIENCE, stream.read(&mut answer))
        .await
        .expect("answered")
        .expect("read");
    assert!(
        String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 413"),
        "{:?}",
        String::from_utf8_lossy(&answer[..n])
    );
}

#[tokio::test]
async fn a_slowloris_connection_is_closed_after_the_header_timeout() {
    let a = HttpBackend::start("a").await;
    let port = free_port();
    let mut listener = http_listener(port.address, "web");
    listener.http.header_timeout = Duration::from_millis(500);
    let _plane = serve(vec![listener], vec![pool("web", &[&a])], vec![]).await;

    let mut stream = TcpStream::connect(port.address).await.expect("connect");
    let started = tokio::time::Instant::now();
    stream.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n").await.expect("first bytes");
    // Trickle a header byte every 100 ms, never finishing the head.
    let mut closed = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if stream.write_all(b"x").await.is_err() {
            closed = true;
            break;
        }
        let mut probe = [0u8; 256];
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(1), stream.read(&mut probe)).await
        {
            closed = n == 0 || String::from_utf8_lossy(&probe[..n]).starts_with("HTTP/1.1 408");
            if closed {
                break;
            }
        }
    }
    assert!(closed, "the connection stayed open");
    assert!(started.elapsed() < Duration::from_secs(3), "closed after {:?}", started.elapsed());
}

#[tokio::test]
async fn h2c_and_websocket_go_through() {
    let a = HttpBackend::start("a").await;
    let port = free_port();
    let _plane =
        serve(vec![http_listener(port.address, "web")], vec![pool("web", &[&a])], vec![]).await;

    // h2c with prior knowledge.
    let stream = TcpStream::connect(port.address).await.expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(connection);
    let request = Request::get("http://www.example.test/h2")
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("request");
    let response = sender.send_request(request).await.expect("h2 response");
    assert_eq!(response.version(), hyper::Version::HTTP_2);
    assert_eq!(response.headers()["x-backend"], "a");

    // An upgrade, then raw bytes both ways.
    let mut stream = TcpStream::connect(port.address).await.expect("connect");
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nhost: a\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
        )
        .await
        .expect("upgrade request");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tokio::time::timeout(PATIENCE, stream.read_exact(&mut byte))
            .await
            .expect("in time")
            .expect("head");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    stream.write_all(b"ping over the tunnel").await.expect("send");
    let mut echoed = [0u8; 20];
    tokio::time::timeout(PATIENCE, stream.read_exact(&mut echoed))
        .await
        .expect("in time")
        .expect("echo");
    assert_eq!(&echoed, b"ping over the tunnel");
}

#[tokio::test]
async fn tls_chooses_the_certificate_by_sni_and_speaks_h2_by_alpn() {
    let a = HttpBackend::start("a").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut roots = rustls::RootCertStore::empty();
    let mut certificates = Vec::new();
    for host in ["one.example.test", "two.example.test"] {
        let (files, root) = write_certificate(dir.path(), host);
        roots.add(root).expect("root");
        certificates.push(files);
    }
    let port = free_port();
    let mut listener = Listener::new(name("web"), port.address, Protocol::Https, name("web"));
    listener.tls = Some(Tls { certificates, acme: None });
    let _plane = serve(vec![listener], vec![pool("web", &[&a])], vec![]).await;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    for host in ["one.example.test", "two.example.test"] {
        let stream = TcpStream::connect(port.address).await.expect("connect");
        let server_name = rustls_pki_types::ServerName::try_from(host.to_owned()).expect("name");
        // The handshake verifies the certificate against this host's own self-signed root.
        let tls = connector
            .connect(server_name, stream)
            .await
            .expect("handshake with the right certificate");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .expect("h2");
        tokio::spawn(connection);
        let request = Request::get(format!("https://{host}/"))
            .body(http_body_util::Empty::<Bytes>::new())
            .expect("request");
        let response = sender.send_request(request).await.expect("response");
        let body = response.into_body().collect().await.expect("body").to_bytes();
        assert!(String::from_utf8_lossy(&body).contains(" https "), "X-Forwarded-Proto says https");
    }
}

/// A data plane with one HTTP listener to one backend, for the drain tests.
async fn one_backend() -> (HttpBackend, SocketAddr, Arc<DataPlane>) {
    let a = HttpBackend::start("a").await;
    let port = free_port();
    let plane = Arc::new(
        serve(vec![http_listener(port.address, "web")], vec![pool("web", &[&a])], vec![]).await,
    );
    (a, port.address, plane)
}

/// Waits until the pool `web`'s backend counts a request in flight.
async fn until_in_flight(plane: &DataPlane) {
    let web = plane.pool("web").expect("pool runs");
    let started = tokio::time::Instant::now();
    while web.all_backends().iter().all(|b| b.load().active() == 0) {
        assert!(started.elapsed() < PATIENCE, "the request never reached the backend");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn draining_closes_keep_alive_connections_politely() {
    let (_a, front, plane) = one_backend().await;
    let stream = TcpStream::connect(front).await.expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
    let connection = tokio::spawn(connection);
    // A slow request is in flight when the drain starts; it completes with Connection: close.
    let request = Request::get("/slow")
        .header("host", "a")
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("request");
    let in_flight = tokio::spawn(async move { sender.send_request(request).await });
    until_in_flight(&plane).await;
    let drain = tokio::spawn({
        let plane = Arc::clone(&plane);
        async move { plane.drain(Duration::from_secs(5)).await }
    });
    let response = in_flight.await.expect("task").expect("the in-flight request completes");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["connection"], "close");
    let report = drain.await.expect("drain");
    assert_eq!(report.total(), 0, "nothing had to be cut: {report:?}");
    tokio::time::timeout(PATIENCE, connection)
        .await
        .expect("the connection ends")
        .expect("task")
        .ok();
}

#[tokio::test]
async fn draining_an_h2_connection_finishes_its_stream_in_flight_and_refuses_new_ones() {
    let (_a, front, plane) = one_backend().await;
    let stream = TcpStream::connect(front).await.expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    let connection = tokio::spawn(connection);
    let get = |path: &str| {
        Request::get(format!("http://a{path}"))
            .body(http_body_util::Empty::<Bytes>::new())
            .expect("request")
    };
    let in_flight = tokio::spawn({
        let mut sender = sender.clone();
        let request = get("/slow");
        async move { sender.send_request(request).await }
    });
    until_in_flight(&plane).await;
    let drain = tokio::spawn({
        let plane = Arc::clone(&plane);
        async move { plane.drain(Duration::from_secs(5)).await }
    });
    // GOAWAY: the connection takes no new stream...
    let refused = tokio::time::timeout(PATIENCE, async {
        loop {
            match sender.send_request(get("/after")).await {
                // Sent before the GOAWAY arrived; try again.
                Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                Err(error) => break error,
            }
        }
    })
    .await
    .expect("a new stream is refused once the drain began");
    assert!(!refused.is_timeout(), "{refused}");
    // ...and the one in flight completes.
    let response = in_flight.await.expect("task").expect("the stream in flight completes");
    assert_eq!(response.status(), StatusCode::OK);
    let report = drain.await.expect("drain");
    assert_eq!(report.total(), 0, "nothing had to be cut: {report:?}");
    tokio::time::timeout(PATIENCE, connection).await.expect("the connection ends").ok();
}

#[tokio::test]
async fn grpc_style_trailers_pass_through_h2_end_to_end() {
    // A backend answering every request with a body and trailers, as gRPC does.
    let backend = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let backend_address = backend.local_addr().expect("address");
    let server = tokio::spawn(async move {
        while let Ok((stream, _)) = backend.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|request: Request<Incoming>| async move {
                    let te = request.headers().get("te").map(|v| v.as_bytes().to_vec());
                    let authority =
                        request.uri().authority().map(|a| a.to_string()).unwrap_or_default();
                    let mut trailers = hyper::HeaderMap::new();
                    trailers.insert("grpc-status", "0".parse().expect("value"));
                    trailers.insert("x-authority", authority.parse().expect("value"));
                    trailers.insert(
                        "x-saw-te-trailers",
                        if te.as_deref() == Some(b"trailers") { "yes" } else { "no" }
                            .parse()
                            .expect("value"),
                    );
                    let frames = vec![
                        Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from_static(
                            b"\0\0\0\0\x02hi",
                        ))),
                        Ok(hyper::body::Frame::trailers(trailers)),
                    ];
                    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
                    Ok::<_, Infallible>(Response::new(body))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let port = free_port();
    let mut grpc = Pool::new(name("grpc"));
    grpc.backends = vec![Backend::new(backend_address)];
    grpc.upstream = fulcrum_model::UpstreamProtocol::Http2;
    let _plane = serve(vec![http_listener(port.address, "grpc")], vec![grpc], vec![]).await;

    let stream = TcpStream::connect(port.address).await.expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2");
    tokio::spawn(connection);
    let request = Request::post("http://svc.example.test/pkg.Service/Method")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    let collected = response.into_body().collect().await.expect("body");
    let trailers = collected.trailers().cloned().expect("trailers arrived");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["x-saw-te-trailers"], "yes", "TE: trailers reached the backend");
    assert_eq!(
        trailers["x-authority"], "svc.example.test",
        "the client's :authority, not the backend's address"
    );
    assert_eq!(&collected.to_bytes()[..], b"\0\0\0\0\x02hi");
    server.abort();
}

/// A self-signed certificate for `host`, written as PEM files; returns its DER for a root store.
fn write_certificate(
    dir: &std::path::Path,
    host: &str,
) -> (Certificate, rustls_pki_types::CertificateDer<'static>) {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec![host.to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let files =
        Certificate { cert: dir.join(format!("{host}.pem")), key: dir.join(format!("{host}.key")) };
    std::fs::write(&files.cert, cert.pem()).expect("write cert");
    std::fs::write(&files.key, key.serialize_pem()).expect("write key");
    (files, cert.der().clone())
}

async fn handshake(
    front: SocketAddr,
    host: &str,
    root: rustls_pki_types::CertificateDer<'static>,
) -> Result<(), std::io::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root).expect("root");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let stream = TcpStream::connect(front).await?;
    let name = rustls_pki_types::ServerName::try_from(host.to_owned()).expect("name");
    tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, stream).await.map(drop)
}

#[tokio::test]
async fn a_changed_certificate_is_served_without_a_restart() {
    let a = HttpBackend::start("a").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (files, old_root) = write_certificate(dir.path(), "one.example.test");
    let port = free_port();
    let mut listener = Listener::new(name("web"), port.address, Protocol::Https, name("web"));
    listener.tls = Some(Tls { certificates: vec![files.clone()], acme: None });
    let config = Config {
        revision: 1,
        spec: ClusterSpec {
            listeners: vec![listener],
            pools: vec![pool("web", &[&a])],
            rate_limits: vec![],
        },
        acme: Default::default(),
    };
    let plane = DataPlane::new().expect("workers start");
    assert!(plane.apply(&config).await.expect("applied").is_empty());
    handshake(port.address, "one.example.test", old_root.clone())
        .await
        .expect("the first certificate");

    // Renewed in place, as certbot would; the file times move on so the change is seen.
    let (_, new_root) = write_certificate(dir.path(), "one.example.test");
    let later = std::time::SystemTime::now() + Duration::from_secs(2);
    for path in [&files.cert, &files.key] {
        std::fs::File::options()
            .write(true)
            .open(path)
            .and_then(|f| f.set_modified(later))
            .expect("touch");
    }
    // The periodic check would find it within seconds; re-applying the config checks at once.
    assert!(plane.apply(&config).await.expect("applied").is_empty());
    handshake(port.address, "one.example.test", new_root.clone())
        .await
        .expect("the renewed certificate");
    assert!(
        handshake(port.address, "one.example.test", old_root).await.is_err(),
        "the old one is gone"
    );

    // A broken renewal (a half-written file) keeps the certificate that works.
    std::fs::write(&files.cert, "-----BEGIN CERTIFICATE-----\ntruncated").expect("write");
    let later = std::time::SystemTime::now() + Duration::from_secs(4);
    std::fs::File::options()
        .write(true)
        .open(&files.cert)
        .and_then(|f| f.set_modified(later))
        .expect("touch");
    let _ = plane.apply(&config).await.expect("applied");
    handshake(port.address, "one.example.test", new_root)
        .await
        .expect("the last good certificate is still served");
}

/// One raw HTTP/1.1 exchange on a new connection (`request` sent as is, `Connection: close`
/// expected in it): the status code and the whole answer.
async fn raw_exchange(front: SocketAddr, request: &str) -> (u16, String) {
    raw_exchange_from([127, 0, 0, 1].into(), front, request).await
}

/// [`raw_exchange`] from the client address `source` (any of 127.0.0.0/8).
async fn raw_exchange_from(
    source: std::net::IpAddr,
    front: SocketAddr,
    request: &str,
) -> (u16, String) {
    let exchange = async {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind(SocketAddr::new(source, 0)).expect("bind the client address");
        let mut stream = socket.connect(front).await.expect("connect");
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        let answer = String::from_utf8_lossy(&answer).into_owned();
        let status = answer.get(9..12).and_then(|code| code.parse().ok()).unwrap_or(0);
        (status, answer)
    };
    tokio::time::timeout(PATIENCE, exchange).await.expect("answered in time")
}

async fn raw_get(front: SocketAddr, target: &str) -> (u16, String) {
    raw_exchange(front, &format!("GET {target} HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n"))
        .await
}

/// The value of the sample of `family` whose labels contain `labels`.
fn sample(metrics: &str, family: &str, labels: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|line| line.starts_with(family) && line[family.len()..].starts_with('{'))
        .find(|line| line.contains(labels))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

#[tokio::test]
async fn paths_are_normalised_before_routes_and_rate_limits_and_odd_ones_refused() {
    let web = HttpBackend::start("web").await;
    let api = HttpBackend::start("api").await;
    let port = free_port();
    let mut listener = http_listener(port.address, "web");
    let mut api_route = route("api", "/api/", "api");
    api_route.rate_limit = Some(name("two"));
    listener.routes = vec![api_route];
    let policy = RateLimitPolicy {
        name: name("two"),
        key: RateLimitKey::ClientIp,
        limit: RateLimit::TokenBucket { capacity: 2, refill_per_second: 0.001 },
    };
    let _plane =
        serve(vec![listener], vec![pool("web", &[&web]), pool("api", &[&api])], vec![policy]).await;

    let (status, answer) = raw_get(port.address, "//api//users?id=1").await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer.contains("api GET /api/users?id=1 "),
        "the backend sees the normal form: {answer}"
    );
    let (status, answer) = raw_get(port.address, "/x/../%61pi/./users").await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("api GET /api/users "), "{answer}");
    // Two tokens spent: no spelling of /api gets past the route's limit.
    for target in ["/api/users", "//api/users", "/%61pi/users", "/x/../api/users", "/API/../api/"] {
        let (status, answer) = raw_get(port.address, target).await;
        assert_eq!(status, 429, "{target}: {answer}");
    }
    for target in ["/api%2Fusers", "/api%2fusers", "/a%5Cb", "/a%zz", "/a%00"] {
        let (status, answer) = raw_get(port.address, target).await;
        assert_eq!(status, 400, "{target}: {answer}");
    }
    let (status, answer) = raw_get(port.address, "/other/./page").await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("web GET /other/page "), "{answer}");
}

#[tokio::test]
async fn a_listener_rate_limit_counts_requests_that_match_no_route() {
    let api = HttpBackend::start("api").await;
    let port = free_port();
    let mut listener = http_listener(port.address, "api");
    listener.default_pool = None;
    listener.routes = vec![route("api", "/api/", "api")];
    listener.rate_limit = Some(name("two"));
    let policy = RateLimitPolicy {
        name: name("two"),
        key: RateLimitKey::ClientIp,
        limit: RateLimit::TokenBucket { capacity: 2, refill_per_second: 0.001 },
    };
    let _plane = serve(vec![listener], vec![pool("api", &[&api])], vec![policy]).await;

    for remaining in ["1", "0"] {
        let (status, headers, _) = get(port.address, "/nowhere", &[]).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(headers["x-ratelimit-remaining"], remaining);
    }
    let (status, _, _) = get(port.address, "/nowhere", &[]).await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "unrouted requests spend the listener's tokens"
    );
    let (status, _, _) = get(port.address, "/api/x", &[]).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "and so do routed ones");
}

#[tokio::test]
async fn a_header_keyed_limit_counts_each_value_and_each_client_so_varying_it_gains_nothing() {
    let web = HttpBackend::start("web").await;
    let port = free_port();
    let mut listener = http_listener(port.address, "web");
    listener.rate_limit = Some(name("per-key"));
    let policy = RateLimitPolicy {
        name: name("per-key"),
        key: RateLimitKey::Header("x-api-key".parse().expect("header name")),
        limit: RateLimit::TokenBucket { capacity: 2, refill_per_second: 0.001 },
    };
    let _plane = serve(vec![listener], vec![pool("web", &[&web])], vec![policy]).await;
    let ask = |client: [u8; 4], key: &str| {
        let request =
            format!("GET / HTTP/1.1\r\nhost: a\r\nx-api-key: {key}\r\nconnection: close\r\n\r\n");
        async move { raw_exchange_from(client.into(), port.address, &request).await.0 }
    };
    let (one, two, three) = ([127, 0, 0, 1], [127, 0, 0, 2], [127, 0, 0, 3]);
    assert_eq!((ask(one, "k1").await, ask(one, "k1").await), (200, 200));
    assert_eq!(ask(one, "k2").await, 429, "a fresh header value does not refill this client");
    assert_eq!(ask(two, "k1").await, 429, "the value's own limit holds from another client");
    assert_eq!(ask(two, "k3").await, 200, "another client with another value is counted apart");
    // Without the header, a client is counted by its address alone: not in one shared
    // counter with every other client that sends none.
    let bare = "GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n";
    assert_eq!(raw_exchange_from(three.into(), port.address, bare).await.0, 200);
    assert_eq!(raw_exchange_from(three.into(), port.address, bare).await.0, 200);
    assert_eq!(raw_exchange_from(three.into(), port.address, bare).await.0, 429);
}

#[tokio::test]
async fn ambiguous_request_framing_is_refused_or_read_one_way_and_nothing_is_smuggled() {
    let web = HttpBackend::start("web").await;
    let port = free_port();
    let _plane =
        serve(vec![http_listener(port.address, "web")], vec![pool("web", &[&web])], vec![]).await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nhost: a\r\n\r\n";
    let head = "POST /consume HTTP/1.1\r\nhost: a\r\nconnection: close\r\n";
    // Each answered once, and never with the smuggled request's answer.
    let cases = [
        // Transfer-Encoding and Content-Length: chunked wins (RFC 9112 6.3), Content-Length is
        // not passed on, and what follows the last chunk is not a request.
        (
            "te and cl",
            format!(
                "{head}content-length: 40\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "two lengths",
            format!("{head}content-length: 5\r\ncontent-length: 6\r\n\r\nhello!{smuggled}"),
        ),
        (
            "obs-fold",
            format!("{head}content-length: 5\r\nx-folded: a\r\n b\r\n\r\nhello{smuggled}"),
        ),
        (
            "chunked not last",
            format!(
                "{head}transfer-encoding: chunked, identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "bad chunk size",
            format!("{head}transfer-encoding: chunked\r\n\r\n5;x\r\nhello\r\nzz\r\n\r\n{smuggled}"),
        ),
    ];
    for (case, request) in cases {
        let (status, answer) = raw_exchange(port.address, &request).await;
        assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{case}: {answer}");
        assert!(
            !answer.contains("/smuggled"),
            "{case}: the smuggled request was forwarded: {answer}"
        );
        match case {
            "te and cl" => assert!(
                status == 400 || (status == 200 && answer.ends_with("Ok(5)")),
                "{case}: {answer}"
            ),
            _ => assert_eq!(status, 400, "{case}: {answer}"),
        }
    }
}

#[tokio::test]
async fn the_h2_authority_wins_over_a_host_header() {
    let web = HttpBackend::start("web").await;
    let right = HttpBackend::start("right").await;
    let port = free_port();
    let mut listener = http_listener(port.address, "web");
    let mut by_host = route("right", "/", "right");
    by_host.matcher.host = Some("right.example.test".into());
    listener.routes = vec![by_host];
    let _plane =
        serve(vec![listener], vec![pool("web", &[&web]), pool("right", &[&right])], vec![]).await;

    let stream = TcpStream::connect(port.address).await.expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2c");
    tokio::spawn(connection);
    let request = Request::get("http://right.example.test/")
        .header("host", "wrong.example.test")
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("request");
    let response = tokio::time::timeout(PATIENCE, sender.send_request(request))
        .await
        .expect("in time")
        .expect("response");
    assert_eq!(response.headers()["x-backend"], "right", "routed by :authority (RFC 9113 §8.3.1)");
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_gets_413_from_either_upstream_protocol() {
    let a = HttpBackend::start("a").await;
    for upstream in [fulcrum_model::UpstreamProtocol::Http1, fulcrum_model::UpstreamProtocol::Http2]
    {
        let port = free_port();
        let mut listener = http_listener(port.address, "web");
        listener.http.max_body_bytes = 1000;
        let mut web = pool("web", &[&a]);
        web.upstream = upstream;
        let _plane = serve(vec![listener], vec![web], vec![]).await;

        let chunk = "y".repeat(600);
        let request = format!(
            "POST /consume HTTP/1.1\r\nhost: a\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n\
             258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
        );
        let (status, answer) = raw_exchange(port.address, &request).await;
        assert_eq!(status, 413, "{upstream:?}: {answer}");
        let small = format!(
            "POST /consume HTTP/1.1\r\nhost: a\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n\
             258\r\n{chunk}\r\n0\r\n\r\n"
        );
        let (status, answer) = raw_exchange(port.address, &small).await;
        assert_eq!(status, 200, "{upstream:?}: {answer}");
        assert!(answer.ends_with("Ok(600)"), "{upstream:?}: {answer}");
    }
}

#[tokio::test]
async fn a_streaming_response_counts_in_flight_until_its_last_byte_and_its_bytes_are_counted() {
    // A backend that sends half its body, then the rest once told to.
    let backend = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = backend.local_addr().expect("address");
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let (mut stream, _) = backend.accept().await.expect("accept");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && stream.read_exact(&mut byte).await.is_ok() {
            head.push(byte[0]);
        }
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello")
            .await
            .expect("head");
        let _ = released.await;
        stream.write_all(b"world").await.expect("rest");
        // Held open until the proxy closes it: the connection went back to its pool.
        let _ = stream.read(&mut byte).await;
    });
    let port = free_port();
    let mut web = Pool::new(name("web"));
    web.backends = vec![Backend::new(address)];
    let plane = serve(vec![http_listener(port.address, "web")], vec![web], vec![]).await;
    let labels = format!("backend=\"{address}\"");
    let active = |metrics: &str| sample(metrics, "fulcrum_backend_active_connections", &labels);

    let stream = TcpStream::connect(port.address).await.expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(connection);
    let request = Request::get("/download")
        .header("host", "a")
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("request");
    let response = tokio::time::timeout(PATIENCE, sender.send_request(request))
        .await
        .expect("in time")
        .expect("response head");
    let mut body = response.into_body();
    let first = tokio::time::timeout(PATIENCE, body.frame()).await.expect("in time");
    let first = first.expect("a frame").expect("data").into_data().expect("data");
    assert_eq!(&first[..], b"hello");
    assert_eq!(active(&plane.metrics().await), Some(1.0), "in flight while the body streams");

    release.send(()).expect("backend waiting");
    let rest =
        tokio::time::timeout(PATIENCE, body.collect()).await.expect("in time").expect("body");
    assert_eq!(&rest.to_bytes()[..], b"world");
    let metrics = plane.metrics().await;
    assert_eq!(active(&metrics), Some(0.0), "{metrics}");
    assert_eq!(
        sample(&metrics, "fulcrum_backend_bytes_total", &format!("{labels},direction=\"out\"")),
        Some(10.0),
        "{metrics}"
    );
    server.abort();
}

#[tokio::test]
async fn tls_1_2_clients_get_a_forward_secret_aead_suite() {
    let a = HttpBackend::start("a").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (files, root) = write_certificate(dir.path(), "one.example.test");
    let port = free_port();
    let mut listener = Listener::new(name("web"), port.address, Protocol::Https, name("web"));
    listener.tls = Some(Tls { certificates: vec![files], acme: None });
    let _plane = serve(vec![listener], vec![pool("web", &[&a])], vec![]).await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(root).expect("root");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .expect("TLS 1.2")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let stream = TcpStream::connect(port.address).await.expect("connect");
    let server_name = rustls_pki_types::ServerName::try_from("one.example.test").expect("name");
    let mut tls = tokio::time::timeout(
        PATIENCE,
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(server_name, stream),
    )
    .await
    .expect("in time")
    .expect("a TLS 1.2 handshake");
    let session = tls.get_ref().1;
    assert_eq!(session.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_2));
    let suite = format!("{:?}", session.negotiated_cipher_suite().expect("a suite").suite());
    assert!(
        suite.starts_with("TLS_ECDHE_") && (suite.contains("_GCM_") || suite.contains("CHACHA20")),
        "{suite}"
    );
    tls.write_all(b"GET / HTTP/1.1\r\nhost: one.example.test\r\nconnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, tls.read_to_end(&mut answer)).await.expect("in time");
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
}

#[tokio::test]
async fn a_post_whose_backend_refuses_the_connection_goes_to_another_with_its_body() {
    let a = HttpBackend::start("a").await;
    let dead = free_port();
    let port = free_port();
    let mut web = Pool::new(name("web"));
    // Round robin offers the dead backend first to every other request.
    web.backends = vec![Backend::new(dead.address), Backend::new(a.address)];
    let _plane = serve(vec![http_listener(port.address, "web")], vec![web], vec![]).await;

    let body = "z".repeat(600);
    for _ in 0..4 {
        let request = format!(
            "POST /consume HTTP/1.1\r\nhost: a\r\nconnection: close\r\ncontent-length: 600\r\n\r\n{body}"
        );
        let (status, answer) = raw_exchange(port.address, &request).await;
        assert_eq!(status, 200, "{answer}");
        assert!(answer.ends_with("Ok(600)"), "the whole body reached the live backend: {answer}");
    }
}

#[tokio::test]
async fn a_trusted_proxys_forwarding_headers_are_appended_to() {
    let web = HttpBackend::start("web").await;
    let port = free_port();
    let mut listener = http_listener(port.address, "web");
    listener.http.trusted_proxies = vec!["127.0.0.0/8".parse().expect("network")];
    let _plane = serve(vec![listener], vec![pool("web", &[&web])], vec![]).await;

    let forwarded = [("x-forwarded-for", "203.0.113.9"), ("forwarded", "for=203.0.113.9")];
    let (status, _, body) = get(port.address, "/", &forwarded).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        "web GET / 203.0.113.9, 127.0.0.1 http for=203.0.113.9, for=127.0.0.1;proto=http;host=\"www.example.test\""
    );
}

/// A plane with one HTTP listener in front of `web`, with these head timeouts.
async fn with_head_timeouts(
    web: &HttpBackend,
    header: Duration,
    keep_alive: Duration,
) -> (DataPlane, SocketAddr) {
    let port = free_port();
    let mut listener = http_listener(port.address, "web");
    listener.http.header_timeout = header;
    listener.http.keep_alive_timeout = keep_alive;
    (serve(vec![listener], vec![pool("web", &[web])], vec![]).await, port.address)
}

/// Sends one keep-alive request on `stream` and checks the answer is a 200.
async fn keep_alive_get(stream: &mut TcpStream) {
    stream.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await.expect("the connection is open");
    let mut answer = [0u8; 1024];
    let n = tokio::time::timeout(PATIENCE, stream.read(&mut answer))
        .await
        .expect("answered in time")
        .expect("read");
    assert!(
        answer[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&answer[..n])
    );
}

/// Waits for the proxy to close `stream` (a 408 first is allowed), within [`PATIENCE`].
async fn closed_by_the_proxy(stream: &mut TcpStream) {
    let mut answer = [0u8; 1024];
    let n = tokio::time::timeout(PATIENCE, stream.read(&mut answer))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert!(
        n == 0 || answer[..n].starts_with(b"HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&answer[..n])
    );
}

#[tokio::test]
async fn a_keep_alive_connection_may_idle_past_the_header_timeout_but_not_send_a_head_slowly() {
    let web = HttpBackend::start("web").await;
    // A keep-alive timeout far beyond the test's patience: only the header timeout can act.
    let (_plane, front) =
        with_head_timeouts(&web, Duration::from_millis(300), Duration::from_secs(60)).await;
    let mut stream = TcpStream::connect(front).await.expect("connect");
    keep_alive_get(&mut stream).await;
    // Idle for longer than the header timeout: still open.
    tokio::time::sleep(Duration::from_millis(900)).await;
    keep_alive_get(&mut stream).await;
    // A head begun and never finished is cut off.
    stream.write_all(b"GET / HTTP/1.1\r\n").await.expect("first bytes");
    closed_by_the_proxy(&mut stream).await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_keep_alive_timeout() {
    let web = HttpBackend::start("web").await;
    // A header timeout far beyond the test's patience: only the keep-alive timeout can act.
    let (_plane, front) =
        with_head_timeouts(&web, Duration::from_secs(60), Duration::from_millis(300)).await;
    let mut stream = TcpStream::connect(front).await.expect("connect");
    keep_alive_get(&mut stream).await;
    closed_by_the_proxy(&mut stream).await;
}

/// Reads from `stream` until `needle` has arrived, within [`PATIENCE`]; returns all read.
async fn read_until(stream: &mut TcpStream, needle: &str) -> String {
    let mut seen = Vec::new();
    let mut chunk = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !String::from_utf8_lossy(&seen).contains(needle) {
        let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .unwrap_or_else(|_| {
                panic!("no {needle:?} in time: {:?}", String::from_utf8_lossy(&seen))
            })
            .expect("read");
        assert!(n > 0, "closed before {needle:?}: {:?}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[tokio::test]
async fn a_client_waiting_for_100_continue_gets_it_from_a_backend_that_answers_while_it_reads() {
    // A backend that answers as soon as it has the head, then echoes the body it reads.
    let backend = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = backend.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = backend.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).await.unwrap_or(0) == 1
                {
                    head.push(byte[0]);
                }
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n").await;
                let mut body = [0u8; 5];
                if stream.read_exact(&mut body).await.is_ok() {
                    let _ = stream.write_all(&body).await;
                }
            });
        }
    });
    let port = free_port();
    let mut pool = Pool::new(name("web"));
    pool.backends = vec![Backend::new(address)];
    let _plane = serve(vec![http_listener(port.address, "web")], vec![pool], vec![]).await;

    let mut client = TcpStream::connect(port.address).await.expect("connect");
    client
        .write_all(
            b"POST /echo HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n",
        )
        .await
        .expect("head");
    let first = read_until(&mut client, "\r\n\r\n").await;
    assert!(first.starts_with("HTTP/1.1 100 Continue\r\n\r\n"), "{first:?}");
    client.write_all(b"hello").await.expect("body");
    let answer = read_until(&mut client, "hello").await;
    assert!(format!("{first}{answer}").contains("HTTP/1.1 200 OK"), "{first}{answer}");
}
