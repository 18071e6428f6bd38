//! L7 forwarding: HTTP/1.1 and HTTP/2 from clients (h2 by ALPN on TLS, h2c with prior
//! knowledge on plain), routed per request to a pool, and forwarded to one backend over
//! pooled HTTP/1.1 or h2c connections.
//!
//! Per request: the path in normal form, route, rate limits (429 with Retry-After and
//! X-RateLimit-*), body limit (413), sticky cookie or the pool's balancer, forwarding headers
//! (X-Forwarded-*, Forwarded) with hop-by-hop headers stripped, a bounded and budgeted retry
//! on another backend when connecting fails (nothing was sent, so any request may go again),
//! timeouts (502/503/504 with a short body and a log line that says why), upgrades
//! (WebSocket) tunnelled, trailers (gRPC) passed through. A connection closes
//! gracefully when its listener drains: HTTP/1.1 with `Connection: close` after the request in
//! flight, HTTP/2 with GOAWAY.

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use fulcrum_model::{Algorithm, HashKey, RateLimitKey, UpstreamProtocol};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use fulcrum_policy::ratelimit::{Decision, retry_after_seconds};
use fulcrum_policy::{PickKey, client_key, narrower};

use super::acme::AcmeMaterial;
use super::addresses::Drain;
use super::answer::error_response;
use super::attempt::Attempts;
use super::boxed::boxed;
use super::client_clock::ClientClock;
use super::error::ErrorKind;
use super::gate::Gated;
use super::h1;
use super::h1::io::ClientUpgrade;
use super::listener::{Downstream, ListenerRuntime, must_close};
use super::pool::{BackendRuntime, PoolRuntime};
use super::premature::PrematureResets;
use super::proxy_body::{BoxError, ProxyBody};
use super::shared::Shared;
use super::stats::RouteStats;
use super::upstream::{CountingRequestBody, RequestBytes, UpstreamError};

/// How long a connection closed for a reset flood may finish its requests in flight.
const RESET_FLOOD_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// The first bytes of an HTTP/2 connection with prior knowledge (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves one accepted client connection (already through TLS for https, `h2` if its ALPN
/// chose HTTP/2) to its end: HTTP/2 by hyper's server, HTTP/1.1 by the proxy's own loop.
// Not an `async fn`: those keep a second copy of their arguments in the future, and this
// future is every connection's task, idle ones included.
#[allow(clippy::manual_async_fn)]
pub(crate) fn serve<I>(
    io: I,
    downstream: Downstream,
    listener: Arc<ListenerRuntime>,
    shared: Arc<Shared>,
    h2: bool,
) -> impl Future<Output = ()> + Send
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    async move {
        let connected = tokio::time::Instant::now();
        let spec = listener.spec();
        let clock = Arc::new(ClientClock::default());
        let mut io = Tracked { inner: io, clock: Arc::clone(&clock) };
        let mut read = BytesMut::new();
        let connection = Connection {
            listener: Arc::clone(&listener),
            drain: shared.addresses.drain_of(downstream.local_ip()),
            downstream,
            clock: Arc::clone(&clock),
        };
        // A client that has sent nothing yet is closed by a stop or a drain deadline, as an
        // idle one is.
        let h2 = h2 || {
            // Biased: a request there at once is taken without polling (and so registering)
            // the other watchers. Each future is made in place (see `Connection::drive`).
            tokio::select! {
                biased;
                sniffed = tokio::time::timeout_at(
                    connected + spec.http.header_timeout,
                    sniff_preface(&mut io, &mut read),
                ) => match sniffed {
                    Ok(Some(h2)) => h2,
                    _ => return,
                },
                () = listener.stopping() => return,
                () = must_close(&listener, &connection.drain) => return,
            }
        };
        let service_clock = Arc::clone(&clock);
        let on_request = move || {
            service_clock.requested();
        };
        if h2 {
            // Boxed: HTTP/2's connection state is large, and every HTTP/1.1 connection's task
            // would be as large if it were part of it.
            let io = h1::io::Rewound::new(h1::io::detach(read), io);
            boxed!(serve_h2(io, connection, shared, on_request)).await;
        } else {
            let limits = h1::Limits {
                max_head: spec.http.max_header_bytes as usize,
                header_timeout: spec.http.header_timeout,
                keep_alive_timeout: spec.http.keep_alive_timeout,
            };
            // Borrowed, not cloned per request: the workers would bounce the counts' cache
            // lines between them.
            let (listener, shared) = (&listener, &shared);
            // Made in place: a local moved into `pin!` keeps a second slot of its size.
            let served =
                std::pin::pin!(h1::serve(io, read, connected, limits, clock, move |request| {
                    on_request();
                    handle(request, downstream, listener, shared)
                }));
            connection.drive(served, None).await;
        }
    }
}

/// Serves HTTP/2 on `io` with hyper's server; `on_request` is told of each request.
async fn serve_h2<I>(
    io: I,
    connection: Connection,
    shared: Arc<Shared>,
    on_request: impl Fn() + Send + Clone + 'static,
) where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let listener = Arc::clone(&connection.listener);
    let downstream = connection.downstream;
    let clock = Arc::clone(&connection.clock);
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder.timer(TokioTimer::new()).max_header_list_size(listener.spec().http.max_header_bytes);
    let resets = Arc::new(PrematureResets::default());
    let service_resets = Arc::clone(&resets);
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        on_request();
        let listener = Arc::clone(&listener);
        let shared = Arc::clone(&shared);
        let pending = service_resets.start(Instant::now());
        let request = request.map(boxed_body);
        // Boxed: hyper spawns each stream as a task, which moves the future several times.
        boxed!(async move {
            let response = handle(request, downstream, &listener, &shared).await;
            pending.answered();
            Ok::<_, Infallible>(response)
        })
    });
    // Futures made where they are pinned: a local moved into `pin!` would keep a second slot
    // of its size (hyper's connection state) in the connection's boxed HTTP/2 state.
    let served = std::pin::pin!(async move {
        let mut served = std::pin::pin!(builder.serve_connection(TokioIo::new(io), service));
        let result = tokio::select! {
            result = served.as_mut() => result,
            () = clock.wind_down.fired() => {
                served.as_mut().graceful_shutdown();
                served.await
            }
        };
        if let Err(e) = result {
            tracing::debug!(peer = %downstream.peer, "HTTP/2 connection ended: {e}");
        }
    });
    connection.drive(served, Some(&resets)).await;
}

/// A body from hyper as the proxy's own body type.
fn boxed_body(body: Incoming) -> ProxyBody {
    body.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync()
}

/// Reads until the connection's first bytes tell HTTP/2's preface from an HTTP/1.1 request;
/// `None` if the client closed first. What was read stays in `read`.
async fn sniff_preface<I: AsyncRead + Unpin>(io: &mut I, read: &mut BytesMut) -> Option<bool> {
    let mut reader = h1::io::Reader { io, buf: std::mem::take(read) };
    let h2 = loop {
        let seen = reader.buf.len().min(H2_PREFACE.len());
        if reader.buf[..seen] != H2_PREFACE[..seen] {
            break Some(false);
        }
        if seen == H2_PREFACE.len() {
            break Some(true);
        }
        match std::future::poll_fn(|cx| reader.poll_fill(cx)).await {
            Ok(0) | Err(_) => break None,
            Ok(_) => {}
        }
    };
    *read = reader.buf;
    h2
}

/// What ends a client connection besides its protocol: the idle timeout, a reset flood, a
/// drain (polite, then by its deadline) and the listener stopping.
struct Connection {
    listener: Arc<ListenerRuntime>,
    /// The drain of the local address the client reached.
    drain: Drain,
    downstream: Downstream,
    clock: Arc<ClientClock>,
}

impl Connection {
    /// Drives `served` to its end, or until something ends it.
    async fn drive<F: Future<Output = ()>>(
        &self,
        mut served: Pin<&mut F>,
        resets: Option<&PrematureResets>,
    ) {
        let Connection { listener, drain, downstream, clock } = self;
        let spec = listener.spec();
        let closing = || must_close(listener, drain);
        /// What ended the connection, if not its protocol.
        enum Ended {
            Idle,
            Abusive,
            WindDown,
            Closing,
        }
        // Each future is made where it is polled: one made beforehand and moved in would keep
        // a second slot of its size in the connection's state, idle connections included.
        let mut watchers = std::pin::pin!(async {
            tokio::select! {
                () = clock.activity.idle_for(spec.idle_timeout) => Ended::Idle,
                () = async {
                    match resets {
                        Some(resets) => resets.abusive().await,
                        None => std::future::pending().await,
                    }
                } => Ended::Abusive,
                // A graceful shutdown closes an HTTP/1.1 connection whose request is not read
                // yet. A client that connected to a VIP just handed over (its ARP entry not yet
                // updated) would see that cut, so such a connection is wound down once it has
                // its first request. A stopping listener winds down at once: a stopping node
                // stops accepting only once another node holds its VIPs, and a removed
                // listener has no reason to wait.
                () = async {
                    tokio::select! {
                        () = listener.stopping() => {}
                        () = async {
                            drain.polite().await;
                            clock.first_request.fired().await;
                        } => {}
                    }
                } => Ended::WindDown,
                () = closing() => Ended::Closing,
            }
        });
        let ended = tokio::select! {
            biased;
            () = served.as_mut() => return,
            ended = Gated::new(watchers.as_mut()) => ended,
        };
        match ended {
            Ended::Idle => listener.stats().error(ErrorKind::IdleTimeout),
            Ended::Abusive => {
                tracing::warn!(listener = %listener.name(), peer = %downstream.peer, "HTTP connection closed: the client cancelled most of its requests right after sending them (HTTP/2 rapid reset)");
                listener.stats().error(ErrorKind::ResetFlood);
                // GOAWAY, and a moment for what is in flight; then the connection goes.
                clock.wind_down.fire();
                let _ = tokio::time::timeout(RESET_FLOOD_GRACE, served.as_mut()).await;
            }
            Ended::WindDown => {
                // Drain: finish what is in flight, close politely, until the drain deadline.
                clock.wind_down.fire();
                tokio::select! {
                    () = served.as_mut() => {}
                    () = closing() => listener.stats().error(ErrorKind::Drained),
                }
            }
            Ended::Closing => listener.stats().error(ErrorKind::Drained),
        }
    }
}

/// What one request needs to know of where it goes.
struct Target<'a> {
    /// The listener's spec as the request found it.
    listener_spec: &'a fulcrum_model::Listener,
    pool: Arc<PoolRuntime>,
    route_name: &'a str,
    rewritten: Option<String>,
    sticky: Option<&'a fulcrum_model::StickyCookie>,
    /// When the request began to be handled: its backend is chosen as of then (one clock
    /// read less).
    started: Instant,
    /// When the listener's `request_timeout` runs out.
    deadline: tokio::time::Instant,
}

async fn handle(
    request: Request<ProxyBody>,
    downstream: Downstream,
    listener: &Arc<ListenerRuntime>,
    shared: &Shared,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let logged = listener
        .current_spec()
        .http
        .access_log
        .then(|| (request.method().clone(), request.uri().path().to_owned()));
    // Boxed where it is made, as is `forward`'s: awaiting a nested future moves all of it
    // (kilobytes) into its caller's; the box costs an allocation instead.
    let response = boxed!(route_and_forward(request, started, downstream, listener, shared)).await;
    if let Some((method, path)) = logged {
        tracing::info!(
            target: "fulcrum::access",
            listener = %listener.name(),
            client = %downstream.peer.ip(),
            %method,
            path,
            status = response.status().as_u16(),
            duration_us = started.elapsed().as_micros() as u64,
            "request"
        );
    }
    response
}

async fn route_and_forward(
    mut request: Request<ProxyBody>,
    started: Instant,
    downstream: Downstream,
    listener: &Arc<ListenerRuntime>,
    shared: &Shared,
) -> Response<ProxyBody> {
    let spec = listener.spec();
    // An ACME HTTP-01 validation: the cluster answers it, whichever node it reaches.
    if !downstream.tls
        && AcmeMaterial::is_http01_path(request.uri().path())
        && let Some(answer) = shared.acme.load().http01_answer(request.uri().path())
    {
        return acme_answer(answer);
    }
    let router = listener.router();
    // Routes and rate limits see the path in normal form, and so does the backend.
    match fulcrum_policy::path::normalize(request.uri().path()) {
        Ok(Cow::Borrowed(_)) => {}
        Ok(Cow::Owned(normal)) => match with_path(request.uri(), &normal) {
            Some(uri) => *request.uri_mut() = uri,
            None => return bad_path(router.default_stats(), started, "cannot be rebuilt"),
        },
        Err(e) => return bad_path(router.default_stats(), started, &e.to_string()),
    }
    let mut rng = fastrand::Rng::new();
    let routed = router.route(
        request_host(&request),
        request.method().as_str(),
        request.uri().path(),
        request.headers(),
        &mut rng,
    );
    let route = routed.as_ref().and_then(|r| r.route);
    let stats: &RouteStats = route.map_or(router.default_stats(), |r| &r.stats);
    let route_name = route.map_or("(default)", |r| r.spec.name.as_str());

    // Rate limits: the listener's (on every request, routed or not), then the route's; the
    // headers speak of the narrower one.
    let mut shown: Option<Decision> = None;
    let client = client_key(downstream.peer.ip());
    for policy in [spec.rate_limit.as_ref(), route.and_then(|r| r.spec.rate_limit.as_ref())]
        .into_iter()
        .flatten()
    {
        let Some((key_kind, limiter)) = shared.limiter(policy) else { continue };
        let (key, second) = rate_keys(&key_kind, &client, &request, route_name);
        // Counted as of when the request began to be handled: a clock read less.
        let mut decision = limiter.check(key, started);
        if let (true, Some(second)) = (decision.allowed, second) {
            decision = narrower(decision, limiter.check(second, started));
        }
        shown = Some(decision);
        if !decision.allowed {
            stats.rate_limited.fetch_add(1, Ordering::Relaxed);
            let retry =
                retry_after_seconds(decision.retry_after.unwrap_or(decision.reset), &mut rng);
            let mut response = error_response(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded");
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry));
            rate_headers(response.headers_mut(), &decision);
            tracing::debug!(listener = %listener.name(), route = route_name, policy = %policy, client = %downstream.peer.ip(), "429: rate limit");
            return finish(stats, started, response);
        }
    }
    let Some(routed) = routed else {
        let response = error_response(StatusCode::NOT_FOUND, "no route for this request");
        return finish(stats, started, with_rate_headers(response, shown.as_ref()));
    };

    if body_too_large(&request, spec.http.max_body_bytes) {
        let response = error_response(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
        return finish(stats, started, with_rate_headers(response, shown.as_ref()));
    }
    let Some(pool) = shared.pools.load().get(routed.pool).cloned() else {
        tracing::warn!(listener = %listener.name(), route = route_name, pool = %routed.pool, "503: the route's pool is not configured");
        let response = error_response(StatusCode::SERVICE_UNAVAILABLE, "no such pool");
        return finish(stats, started, with_rate_headers(response, shown.as_ref()));
    };
    let rewritten = routed.route.and_then(|r| {
        let path_and_query = request.uri().path_and_query().map_or("/", |p| p.as_str());
        match r.rewrite(path_and_query) {
            std::borrow::Cow::Owned(path) => Some(path),
            std::borrow::Cow::Borrowed(_) => None,
        }
    });
    let target = Target {
        listener_spec: &spec,
        pool,
        route_name,
        rewritten,
        sticky: routed.route.and_then(|r| r.spec.sticky.as_ref()),
        started,
        // From when the request began to be handled: a clock read less.
        deadline: tokio::time::Instant::from_std(started) + spec.http.request_timeout,
    };
    let upgrade = request.extensions_mut().remove::<ClientUpgrade>();
    // The request's deadline bounds each wait in `forward` (one timer per wait, not two).
    let response = boxed!(forward(request, upgrade, downstream, listener, shared, &target)).await;
    finish(stats, started, with_rate_headers(response, shown.as_ref()))
}

async fn forward(
    request: Request<ProxyBody>,
    upgrade: Option<ClientUpgrade>,
    downstream: Downstream,
    listener: &Arc<ListenerRuntime>,
    shared: &Shared,
    target: &Target<'_>,
) -> Response<ProxyBody> {
    let pool = &target.pool;
    let pool_spec = pool.spec();
    let selection = pool.selection();
    // A valid cookie naming a backend that may take traffic wins; otherwise the balancer.
    let pinned = target.sticky.and_then(|sticky| {
        let value = fulcrum_policy::sticky::cookie(request.headers(), &sticky.cookie)?;
        let address = shared.signer.pick(
            pool.name().as_str(),
            value,
            selection.backends.iter().map(|b| b.address()),
        )?;
        selection.backends.iter().position(|b| b.address() == address)
    });
    let hash_bytes = match &pool_spec.algorithm {
        Algorithm::ConsistentHash { key, .. } => hash_key(key, &request, downstream.peer),
        _ => None,
    };
    let key = PickKey { source_ip: downstream.peer.ip(), hash_key: hash_bytes.as_deref() };
    let mut attempts = Attempts::new(&selection, &pool_spec, pinned, &key, target.started);
    // A body is limited and counted; a request without one pays for neither (an empty body
    // boxes without allocating).
    let request_bytes = (!request_has_no_body(&request)).then(|| Arc::new(RequestBytes::default()));
    let (parts, body) = request.into_parts();
    let body = match &request_bytes {
        Some(bytes) => {
            let limit = target.listener_spec.http.max_body_bytes;
            CountingRequestBody::wrap(body, limit, Arc::clone(bytes))
        }
        None => http_body_util::Empty::new().map_err(|never| match never {}).boxed_unsync(),
    };
    let trusted = &target.listener_spec.http.trusted_proxies;
    let hop = Hop {
        h2: pool_spec.upstream == UpstreamProtocol::Http2,
        upgrading: upgrade.is_some(),
        rewritten: target.rewritten.as_deref(),
        keeps_forwarded: trusted.iter().any(|net| net.contains(&downstream.peer.ip())),
    };
    // Built once: a connect failure hands the unsent request back for the next backend.
    let mut upstream = match upstream_request(parts, body, &hop, downstream.peer, downstream.tls) {
        Ok(upstream) => upstream,
        Err(e) => {
            return error_response(StatusCode::BAD_REQUEST, &format!("cannot forward: {e}"));
        }
    };
    pool.note_request();
    let mut failure = None;
    for attempt in attempts.by_ref() {
        let backend = attempt.backend;
        // Only a failed connect leads here again, with the request unsent: any request may
        // be retried, within the pool's budget.
        if attempt.number > 0 && !pool.try_retry() {
            break;
        }
        let Some(client) = pool.client(backend.address()) else { continue };
        if hop.h2 && upstream.uri().authority().is_none() {
            // HTTP/2 needs an :authority; a client that named none gets the backend's.
            set_authority(&mut upstream, &backend.address().to_string());
        }
        backend.stats().total.fetch_add(1, Ordering::Relaxed);
        let sent = Instant::now();
        if let Some(on_client_upgrade) = upgrade {
            // Boxed: upgrades are rare, and every request's state would be as large.
            let tunnelled = boxed!(tunnel(
                upstream,
                on_client_upgrade,
                backend,
                pool,
                listener,
                downstream,
                shared
            ));
            return match tokio::time::timeout_at(target.deadline, tunnelled).await {
                Ok(response) => response,
                Err(_) => request_timed_out(listener, target),
            };
        }
        let stats = backend.shared_stats();
        if let Some(bytes) = &request_bytes {
            bytes.count_for(Arc::clone(&stats));
        }
        let tried = attempt.tried();
        let index = attempt.index;
        // The response body holds the request in flight until its last byte.
        let sending = std::pin::pin!(client.send(upstream, attempt.in_flight, stats));
        // The pool's response timeout, within what is left of the request's.
        let answer_by =
            target.deadline.min(tokio::time::Instant::from_std(sent) + pool_spec.response_timeout);
        match tokio::time::timeout_at(answer_by, sending).await {
            Ok(Ok(mut response)) => {
                // A 5xx counts against the backend like a refused connection.
                tried.answered(pool, sent.elapsed(), !response.status().is_server_error());
                downstream_headers(response.headers_mut());
                if let Some(sticky) = target.sticky
                    && pinned != Some(index)
                {
                    set_sticky_cookie(
                        response.headers_mut(),
                        sticky,
                        &shared.signer.sign(pool.name().as_str(), backend.address()),
                        downstream.tls,
                    );
                }
                return response;
            }
            Ok(Err(UpstreamError::Connect { backend: address, source, request })) => {
                tracing::debug!(pool = %pool.name(), backend = %address, "connect failed: {source}");
                tried.failed(pool, ErrorKind::ConnectFailed);
                failure = Some(ErrorKind::ConnectFailed);
                upstream = *request;
            }
            Ok(Err(UpstreamError::Failed(e))) => {
                if request_bytes.as_ref().is_some_and(|bytes| bytes.over_limit()) {
                    return error_response(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
                }
                if request_bytes.as_ref().is_some_and(|bytes| bytes.unreadable()) {
                    tracing::debug!(listener = %listener.name(), peer = %downstream.peer, "400: the request body could not be read: {e}");
                    return error_response(
                        StatusCode::BAD_REQUEST,
                        "malformed or cut-off request body",
                    );
                }
                // Not counted against the backend: the client (an aborted upload) may be at fault.
                tracing::warn!(listener = %listener.name(), route = target.route_name, pool = %pool.name(), backend = %backend.address(), "502: {e}");
                backend.stats().error(ErrorKind::Io);
                return error_response(StatusCode::BAD_GATEWAY, "the backend failed");
            }
            Err(_) if answer_by == target.deadline => return request_timed_out(listener, target),
            Err(_) => {
                tracing::warn!(listener = %listener.name(), route = target.route_name, pool = %pool.name(), backend = %backend.address(), timeout = ?pool_spec.response_timeout, "504: no response within the pool's response_timeout");
                pool.record_connect(backend, false);
                return error_response(
                    StatusCode::GATEWAY_TIMEOUT,
                    "the backend did not answer in time",
                );
            }
        }
    }
    match attempts.exhausted(failure) {
        ErrorKind::NoBackend => {
            tracing::warn!(listener = %listener.name(), route = target.route_name, pool = %pool.name(), "503: no healthy backend");
            listener.stats().error(ErrorKind::NoBackend);
            error_response(StatusCode::SERVICE_UNAVAILABLE, "no healthy backend")
        }
        failure => {
            tracing::warn!(listener = %listener.name(), route = target.route_name, pool = %pool.name(), fault = ?failure.fault(), "502: {failure}");
            listener.stats().error(ErrorKind::ConnectFailed);
            error_response(StatusCode::BAD_GATEWAY, "no backend could be reached")
        }
    }
}

/// The 504 of a request not answered within its listener's `request_timeout`.
fn request_timed_out(listener: &ListenerRuntime, target: &Target<'_>) -> Response<ProxyBody> {
    // The timeout the deadline was set from, even if the listener changed since.
    let timeout = target.listener_spec.http.request_timeout;
    tracing::warn!(listener = %listener.name(), route = target.route_name, pool = %target.pool.name(), ?timeout, "504: request not answered within the listener's request_timeout");
    error_response(StatusCode::GATEWAY_TIMEOUT, "request timed out")
}

/// Forwards an upgrade request (WebSocket) on a connection of its own and, once the backend
/// agrees (101), joins the two upgraded connections.
async fn tunnel(
    upstream: Request<ProxyBody>,
    on_client_upgrade: ClientUpgrade,
    backend: &Arc<BackendRuntime>,
    pool: &Arc<PoolRuntime>,
    listener: &Arc<ListenerRuntime>,
    downstream: Downstream,
    shared: &Shared,
) -> Response<ProxyBody> {
    let failed = |why: &str| {
        tracing::warn!(listener = %listener.name(), pool = %pool.name(), backend = %backend.address(), "502 on an upgrade: {why}");
        error_response(StatusCode::BAD_GATEWAY, why)
    };
    let connect = tokio::time::timeout(
        pool.spec().connect_timeout,
        tokio::net::TcpStream::connect(backend.address()),
    );
    let Ok(Ok(stream)) = connect.await else {
        pool.record_connect(backend, false);
        return failed("cannot connect to the backend");
    };
    let Ok((mut sender, connection)) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    else {
        return failed("the backend failed");
    };
    tokio::spawn(connection.with_upgrades());
    let Ok(mut response) = sender.send_request(upstream).await else {
        return failed("the backend failed");
    };
    pool.record_connect(backend, !response.status().is_server_error());
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return downstream_response(response);
    }
    let on_backend_upgrade = hyper::upgrade::on(&mut response);
    let in_flight = backend.load().begin();
    let close = backend.close_signal();
    let tunnel_listener = Arc::clone(listener);
    let drain = shared.addresses.drain_of(downstream.local_ip());
    // Tracked with the listener's connections, so drains wait for it and then close it, and
    // an idle tunnel is closed like any idle connection.
    let loads = Arc::clone(&shared.loads);
    listener.connections().spawn(async move {
        let _in_flight = in_flight;
        // Counted on its worker, which new connections are balanced against: the client's
        // connection task, which counted it until now, has ended.
        let _load = loads.enter(super::workers::current_index());
        let (Some(client), Ok(upstream)) =
            tokio::join!(on_client_upgrade.upgraded(), on_backend_upgrade)
        else {
            return;
        };
        let clock = Arc::new(ClientClock::default());
        let mut client = Tracked { inner: client, clock: Arc::clone(&clock) };
        let mut upstream = TokioIo::new(upstream);
        let idle = tunnel_listener.spec().idle_timeout;
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
            () = clock.activity.idle_for(idle) => {
                tunnel_listener.stats().error(ErrorKind::IdleTimeout)
            }
            () = close.cancelled() => tunnel_listener.stats().error(ErrorKind::Drained),
            () = must_close(&tunnel_listener, &drain) => {
                tunnel_listener.stats().error(ErrorKind::Drained)
            }
        }
    });
    // Upgrade and Connection stay: they are the answer to the client's upgrade.
    response.map(|body| body.map_err(BoxError::from).boxed_unsync())
}

/// How one request goes upstream.
struct Hop<'a> {
    /// The pool speaks HTTP/2 to its backends.
    h2: bool,
    /// The request is an upgrade (WebSocket) and keeps its Upgrade header.
    upgrading: bool,
    /// The path after the route's prefix rewrite, if it changed.
    rewritten: Option<&'a str>,
    /// The client is a trusted proxy: its X-Forwarded-For and Forwarded are appended to,
    /// not replaced.
    keeps_forwarded: bool,
}

/// The client's request made ready to go upstream, changed in place: hop-by-hop headers
/// out, forwarding headers in, the authority the client named (HTTP/2's `:authority` before
/// `Host`, RFC 9113 §8.3.1) in `Host` for HTTP/1.1 and in the URI for HTTP/2.
fn upstream_request(
    mut parts: hyper::http::request::Parts,
    body: ProxyBody,
    hop: &Hop<'_>,
    peer: SocketAddr,
    tls: bool,
) -> Result<Request<ProxyBody>, hyper::http::Error> {
    let Hop { h2, upgrading, rewritten, keeps_forwarded } = *hop;
    let authority = match parts.uri.authority() {
        Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
        None => parts.headers.get(header::HOST).cloned(),
    };
    let found = Rewritten::of(&parts.headers);
    let headers = &mut parts.headers;
    if found.hop_by_hop {
        let upgrade = headers.remove(header::UPGRADE).filter(|_| upgrading);
        strip_hop_by_hop(headers);
        if let Some(upgrade) = upgrade {
            headers.insert(header::UPGRADE, upgrade);
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
    }
    if found.cookies {
        merge_cookies(headers);
    }
    match (&authority, h2) {
        // HTTP/2 says it in :authority; a Host field as well would be redundant.
        (_, true) => drop(headers.remove(header::HOST)),
        // One Host, the one routed by, whatever the client sent.
        (Some(host), false) => drop(headers.insert(header::HOST, host.clone())),
        (None, false) => {}
    }
    let mut prior_forwarding = found.forwarding;
    if prior_forwarding && !keeps_forwarded {
        headers.remove(&X_FORWARDED_FOR);
        headers.remove(header::FORWARDED);
    }
    prior_forwarding &= keeps_forwarded || headers.contains_key(&X_FORWARDED_HOST);
    forwarding_headers(headers, peer, tls, authority.as_ref(), prior_forwarding);
    let path = rewritten.unwrap_or_else(|| parts.uri.path_and_query().map_or("/", |p| p.as_str()));
    // Only HTTP/2 carries the authority in the URI (parsing it allocates).
    let valid_authority = authority
        .as_ref()
        .filter(|_| h2)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<hyper::http::uri::Authority>().ok());
    parts.uri = match (h2, valid_authority) {
        (true, Some(authority)) => hyper::Uri::builder()
            .scheme("http")
            .authority(authority)
            .path_and_query(path)
            .build()?,
        // Origin form; an h2 backend's authority is filled in per backend.
        _ if rewritten.is_none() && parts.uri.scheme().is_none() => parts.uri,
        _ => hyper::Uri::builder().path_and_query(path).build()?,
    };
    parts.version = if h2 { Version::HTTP_2 } else { Version::HTTP_11 };
    Ok(Request::from_parts(parts, body))
}

/// Gives an HTTP/2 request that named no authority the backend's.
fn set_authority(request: &mut Request<ProxyBody>, authority: &str) {
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    if let Ok(uri) =
        hyper::Uri::builder().scheme("http").authority(authority).path_and_query(path).build()
    {
        *request.uri_mut() = uri;
    }
}

/// Joins several Cookie fields (as HTTP/2 clients send them) into one, as HTTP/1.1 backends
/// expect (RFC 9113 §8.2.3).
fn merge_cookies(headers: &mut HeaderMap) {
    if headers.get_all(header::COOKIE).iter().nth(1).is_none() {
        return;
    }
    let joined: Vec<&[u8]> =
        headers.get_all(header::COOKIE).iter().map(HeaderValue::as_bytes).collect();
    if let Ok(value) = HeaderValue::from_bytes(&joined.join(&b"; "[..])) {
        headers.insert(header::COOKIE, value);
    }
}

/// Writes every value of a header, each followed by `, ` (what a proxy appends its own
/// element to).
fn write_earlier(value: &mut String, headers: &HeaderMap, name: &HeaderName) {
    for earlier in headers.get_all(name).iter().filter_map(|v| v.to_str().ok()) {
        value.push_str(earlier);
        value.push_str(", ");
    }
}

/// A header value formatted by `format` in a per-thread scratch string and copied once: a
/// `String` of its own would grow a few times, and becoming a header would cost it one more
/// allocation unless it were exactly full.
fn formatted_value(format: impl FnOnce(&mut String)) -> Option<HeaderValue> {
    thread_local! {
        static SCRATCH: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
    }
    SCRATCH.with_borrow_mut(|scratch| {
        scratch.clear();
        format(scratch);
        HeaderValue::from_str(scratch).ok()
    })
}

/// Adds X-Forwarded-For and Forwarded (appended to what is left of them, if `prior`: the
/// request may have some), X-Forwarded-Proto and X-Forwarded-Host.
fn forwarding_headers(
    headers: &mut HeaderMap,
    peer: SocketAddr,
    tls: bool,
    host: Option<&HeaderValue>,
    prior: bool,
) {
    let client = peer.ip();
    let proto = if tls { "https" } else { "http" };
    let xff = formatted_value(|value| {
        if prior {
            write_earlier(value, headers, &X_FORWARDED_FOR);
        }
        push_ip(value, client);
    });
    if let Some(value) = xff {
        headers.insert(X_FORWARDED_FOR, value);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    // Only a host that is a valid authority is passed on: a quote or comma in it could
    // otherwise forge a Forwarded element.
    let host = host.filter(|h| is_plain_authority(h.as_bytes()));
    match host {
        Some(value) => drop(headers.insert(X_FORWARDED_HOST, value.clone())),
        None if prior => drop(headers.remove(&X_FORWARDED_HOST)),
        None => {}
    };
    let forwarded = formatted_value(|value| {
        if prior {
            write_earlier(value, headers, &header::FORWARDED);
        }
        // RFC 7239: IPv6 addresses are quoted and bracketed.
        match client {
            IpAddr::V6(_) => {
                value.push_str("for=\"[");
                push_ip(value, client);
                value.push_str("]\"");
            }
            IpAddr::V4(_) => {
                value.push_str("for=");
                push_ip(value, client);
            }
        }
        value.push_str(";proto=");
        value.push_str(proto);
        if let Some(host) = host.and_then(|h| h.to_str().ok()) {
            value.push_str(";host=\"");
            value.push_str(host);
            value.push('"');
        }
    });
    if let Some(value) = forwarded {
        headers.insert(header::FORWARDED, value);
    }
}

/// Appends `ip` as text. IPv4 digit by digit: through `Display` the two addresses of every
/// request took about 2,500 instructions (a tenth of a keep-alive request's).
fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(ip) => {
            let mut digits = itoa::Buffer::new();
            for (index, octet) in ip.octets().into_iter().enumerate() {
                if index > 0 {
                    out.push('.');
                }
                out.push_str(digits.format(octet));
            }
        }
        IpAddr::V6(ip) => {
            use std::fmt::Write as _;
            let _ = write!(out, "{ip}");
        }
    }
}

/// Whether `host` is an authority (RFC 3986 §3.2: host and port, no user info) with none of
/// the characters that delimit a Forwarded element (`"`, `,`, `;`). Checked by its bytes:
/// parsing it as a URI authority would allocate for every request.
fn is_plain_authority(host: &[u8]) -> bool {
    !host.is_empty()
        && host.iter().all(|&b| {
            b.is_ascii_alphanumeric()
                || matches!(b, b'-' | b'.' | b'_' | b'~' | b'%' | b'!' | b'$' | b'&' | b'\'')
                || matches!(b, b'(' | b')' | b'*' | b'+' | b'=' | b':' | b'[' | b']')
        })
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Which of the fields the proxy rewrites a message has, found in one pass over its names:
/// most messages have none, and looking each up by name costs a hash and a probe.
#[derive(Debug, Default)]
struct Rewritten {
    /// Hop-by-hop fields (or Connection, which may name more).
    hop_by_hop: bool,
    cookies: bool,
    /// X-Forwarded-For, -Host or Forwarded from an earlier hop.
    forwarding: bool,
}

impl Rewritten {
    fn of(headers: &HeaderMap) -> Rewritten {
        let mut found = Rewritten::default();
        for name in headers.keys() {
            if HOP_BY_HOP.contains(name) {
                found.hop_by_hop = true;
            } else if *name == header::COOKIE {
                found.cookies = true;
            } else if *name == X_FORWARDED_FOR
                || *name == X_FORWARDED_HOST
                || *name == header::FORWARDED
            {
                found.forwarding = true;
            }
        }
        found
    }
}

/// Removes the headers meant for one hop only (RFC 9110 §7.6.1), and those the Connection
/// header names; `TE: trailers` stays, gRPC needs it.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let tokens = |name: HeaderName| {
        let values = headers.get_all(name).into_iter();
        values.flat_map(|v| v.as_bytes().split(|b| *b == b',').map(<[u8]>::trim_ascii))
    };
    let keeps_trailers = tokens(header::TE).any(|t| t.eq_ignore_ascii_case(b"trailers"));
    // Only the names present are removed: a removal hashes and probes even for a name the
    // map lacks. The fixed ones are found in one pass over the names; each name Connection
    // lists is looked up once (without making a name of it unless present), so a long list
    // costs a lookup per entry, not one per entry and field.
    let mut doomed: Vec<HeaderName> =
        headers.keys().filter(|name| HOP_BY_HOP.contains(name)).cloned().collect();
    for token in tokens(header::CONNECTION) {
        let Ok(token) = std::str::from_utf8(token) else { continue };
        if headers.contains_key(token)
            && let Ok(name) = HeaderName::from_bytes(token.as_bytes())
            && !doomed.contains(&name)
        {
            doomed.push(name);
        }
    }
    for name in doomed {
        headers.remove(name);
    }
    if keeps_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// The hop-by-hop fields of RFC 9110 §7.6.1, and the older ones still seen.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// A backend's response headers made ready for the client: hop-by-hop headers out.
fn downstream_headers(headers: &mut HeaderMap) {
    if Rewritten::of(headers).hop_by_hop {
        strip_hop_by_hop(headers);
        headers.remove(header::TE);
    }
}

fn downstream_response(response: Response<Incoming>) -> Response<ProxyBody> {
    let (mut parts, body) = response.into_parts();
    downstream_headers(&mut parts.headers);
    Response::from_parts(parts, body.map_err(BoxError::from).boxed_unsync())
}

fn set_sticky_cookie(
    headers: &mut HeaderMap,
    sticky: &fulcrum_model::StickyCookie,
    value: &str,
    tls: bool,
) {
    let mut cookie = format!("{}={value}; Path=/; HttpOnly; SameSite=Lax", sticky.cookie);
    if let Some(ttl) = sticky.ttl {
        cookie.push_str(&format!("; Max-Age={}", ttl.as_secs()));
    }
    if tls {
        cookie.push_str("; Secure");
    }
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        headers.append(header::SET_COOKIE, value);
    }
}

/// The counters a request is counted in under a policy keyed by `kind`, borrowed (no
/// allocation per request). A header key counts the header's value and, apart, the `client`:
/// varying the header cannot multiply one client's allowance, and a request without the
/// header is counted by its client alone. A client key starts with byte 4 or 6, which no
/// header value can (control bytes are not allowed in one), so the two never meet.
fn rate_keys<'a>(
    kind: &RateLimitKey,
    client: &'a [u8; 9],
    request: &'a Request<ProxyBody>,
    route: &'a str,
) -> (&'a [u8], Option<&'a [u8]>) {
    match kind {
        RateLimitKey::ClientIp => (client, None),
        RateLimitKey::Header(name) => {
            (client, request.headers().get(name.as_str()).map(HeaderValue::as_bytes))
        }
        RateLimitKey::Route => (route.as_bytes(), None),
    }
}

fn hash_key(key: &HashKey, request: &Request<ProxyBody>, peer: SocketAddr) -> Option<Vec<u8>> {
    match key {
        HashKey::SourceIp => Some(peer.ip().to_string().into_bytes()),
        HashKey::Path => Some(request.uri().path().as_bytes().to_vec()),
        HashKey::Header(name) => {
            request.headers().get(name.as_str()).map(|v| v.as_bytes().to_vec())
        }
        HashKey::Cookie(name) => {
            fulcrum_policy::sticky::cookie(request.headers(), name).map(|v| v.as_bytes().to_vec())
        }
    }
}

fn rate_headers(headers: &mut HeaderMap, decision: &Decision) {
    headers.insert("x-ratelimit-limit", HeaderValue::from(decision.limit));
    headers.insert("x-ratelimit-remaining", HeaderValue::from(decision.remaining));
    headers
        .insert("x-ratelimit-reset", HeaderValue::from(decision.reset.as_secs_f64().ceil() as u64));
}

fn with_rate_headers(
    mut response: Response<ProxyBody>,
    decision: Option<&Decision>,
) -> Response<ProxyBody> {
    if let Some(decision) = decision {
        rate_headers(response.headers_mut(), decision);
    }
    response
}

fn finish(
    stats: &RouteStats,
    started: Instant,
    response: Response<ProxyBody>,
) -> Response<ProxyBody> {
    stats.response(response.status().as_u16(), started.elapsed());
    response
}

/// The key authorization an HTTP-01 validation asks for (RFC 8555 §8.3).
fn acme_answer(key_authorization: &str) -> Response<ProxyBody> {
    let body = Bytes::copy_from_slice(key_authorization.as_bytes());
    let mut response =
        Response::new(Full::new(body).map_err(|never| match never {}).boxed_unsync());
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    response
}

/// The authority the client asked for: HTTP/2's `:authority` (or an absolute-form target)
/// before `Host` (RFC 9113 §8.3.1, RFC 9112 §3.2.2).
fn request_host(request: &Request<ProxyBody>) -> Option<&str> {
    request
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| request.headers().get(header::HOST).and_then(|h| h.to_str().ok()))
}

/// `uri` with its path replaced by `path` (query kept).
fn with_path(uri: &hyper::Uri, path: &str) -> Option<hyper::Uri> {
    let path_and_query = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse().ok()?);
    hyper::Uri::from_parts(parts).ok()
}

/// A 400 for a path that cannot be put in normal form.
fn bad_path(stats: &RouteStats, started: Instant, why: &str) -> Response<ProxyBody> {
    finish(stats, started, error_response(StatusCode::BAD_REQUEST, &format!("the path has {why}")))
}

fn body_too_large(request: &Request<ProxyBody>, limit: u64) -> bool {
    request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|length| length > limit)
}

fn request_has_no_body(request: &Request<ProxyBody>) -> bool {
    use hyper::body::Body as _;
    request.body().is_end_stream() || request.body().size_hint().exact() == Some(0)
}

/// Client IO that notes when bytes move, for the idle timeout.
struct Tracked<I> {
    inner: I,
    clock: Arc<ClientClock>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.clock.activity.touch();
        }
        result
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.clock.activity.touch();
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.clock.activity.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_and_te_trailers_stays() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "secret"),
            ("te", "trailers, deflate"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-connection", "keep-alive"),
            ("x-kept", "yes"),
        ] {
            headers.append(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
        strip_hop_by_hop(&mut headers);
        let left: Vec<_> =
            headers.iter().map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or(""))).collect();
        assert_eq!(left, vec!["x-kept: yes", "te: trailers"]);
    }

    #[test]
    fn te_trailers_stays_even_when_connection_names_te() {
        // RFC 9110 §10.1.4: a sender of TE also lists it in Connection.
        let mut headers = HeaderMap::new();
        headers.append(header::CONNECTION, HeaderValue::from_static("TE, X-Private, close"));
        headers.append(header::TE, HeaderValue::from_static("trailers"));
        headers.append(HeaderName::from_static("x-private"), HeaderValue::from_static("1"));
        headers.append(header::HOST, HeaderValue::from_static("a.test"));
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<_> =
            headers.iter().map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or(""))).collect();
        left.sort();
        assert_eq!(left, vec!["host: a.test", "te: trailers"]);
    }

    #[test]
    fn only_a_plain_authority_is_passed_on_as_the_host() {
        for host in ["www.example.test", "198.18.0.1:8080", "[2001:db8::1]:443", "a-b_c~d"] {
            assert!(is_plain_authority(host.as_bytes()), "{host}");
        }
        for host in ["", "a b", "a\",b", "a;b", "a,b", "user@host", "a/b", "a\tb"] {
            assert!(!is_plain_authority(host.as_bytes()), "{host:?}");
        }
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for text in [
            "0.0.0.0",
            "255.255.255.255",
            "198.18.10.1",
            "9.99.100.0",
            "2001:db8::1",
            "::ffff:198.18.0.1",
        ] {
            let ip: IpAddr = text.parse().expect("address");
            let mut out = String::from("x=");
            push_ip(&mut out, ip);
            assert_eq!(out, format!("x={ip}"));
        }
    }

    #[test]
    fn forwarding_headers_append_to_what_came_before() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        let peer: SocketAddr = "198.18.0.2:5555".parse().expect("address");
        let host = HeaderValue::from_static("www.example.test");
        forwarding_headers(&mut headers, peer, true, Some(&host), true);
        assert_eq!(headers["x-forwarded-for"], "203.0.113.9, 198.18.0.2");
        assert_eq!(headers["x-forwarded-proto"], "https");
        assert_eq!(headers["x-forwarded-host"], "www.example.test");
        assert_eq!(headers["forwarded"], "for=198.18.0.2;proto=https;host=\"www.example.test\"");
        let v6: SocketAddr = "[2001:db8::1]:5555".parse().expect("address");
        let mut headers = HeaderMap::new();
        forwarding_headers(&mut headers, v6, false, None, false);
        assert_eq!(headers["forwarded"], "for=\"[2001:db8::1]\";proto=http");

        // A Host that would forge a Forwarded element is left out.
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-host", HeaderValue::from_static("spoofed"));
        let forged = HeaderValue::from_static("a\", for=10.0.0.1;proto=https;host=\"b");
        forwarding_headers(&mut headers, peer, false, Some(&forged), true);
        assert_eq!(headers["forwarded"], "for=198.18.0.2;proto=http");
        assert!(headers.get("x-forwarded-host").is_none());

        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("a=1"));
        headers.append(header::COOKIE, HeaderValue::from_static("b=2"));
        merge_cookies(&mut headers);
        assert_eq!(headers.get_all(header::COOKIE).iter().collect::<Vec<_>>(), ["a=1; b=2"]);
    }
}
