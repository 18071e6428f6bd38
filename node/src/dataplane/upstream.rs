//! The upstream side of L7: each worker's own pool of connections to each backend, HTTP/1.1
//! or h2c as the pool says. A request takes an idle HTTP/1.1 connection (the most recently
//! used, so the rest can age out) or dials a new one, and its connection returns to the pool
//! when the response body has been read to its end; h2c shares one connection per backend
//! and worker. Nothing here crosses threads or waits on a lock held by another request: the
//! pool is per worker, so its mutex is never contended.
//!
//! The response body carries the request's [`InFlight`] and counts the backend's bytes, so a
//! streaming download counts against its backend until its last byte.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Weak;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use fulcrum_model::UpstreamProtocol;
use fulcrum_policy::{InFlight, lock};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::stats::TrafficStats;

/// Errors of a body on its way through.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type both directions are forwarded as.
pub(crate) type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// How long a pooled backend connection may sit idle.
const POOL_IDLE: Duration = Duration::from_secs(90);
/// Idle HTTP/1.1 connections kept per backend and worker: enough for an h2 client's
/// concurrent streams (each needs its own HTTP/1.1 connection upstream) without redialling.
const POOL_MAX_IDLE_PER_BACKEND: usize = 256;

/// Why a request did not get a response head from its backend.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    /// No connection could be made: nothing reached the backend, and the request is given
    /// back so it can be tried elsewhere.
    #[error("cannot connect to {backend}: {source}")]
    Connect {
        /// The backend dialled.
        backend: SocketAddr,
        /// Why the connection failed.
        source: std::io::Error,
        /// The request, unsent.
        request: Box<Request<ProxyBody>>,
    },
    /// The request was sent (or partly sent) and failed.
    #[error("{0}")]
    Http(#[from] hyper::Error),
}

/// One worker's connections to one backend.
#[derive(Debug)]
pub(crate) struct BackendConnections {
    backend: SocketAddr,
    protocol: UpstreamProtocol,
    connect_timeout: Duration,
    /// Ready HTTP/1.1 connections, the most recently used last.
    idle: Mutex<Vec<Idle>>,
    /// The shared h2c connection.
    h2: Mutex<Option<http2::SendRequest<ProxyBody>>>,
    /// Whether the task closing idle connections past [`POOL_IDLE`] runs.
    sweeping: AtomicBool,
}

#[derive(Debug)]
struct Idle {
    sender: http1::SendRequest<ProxyBody>,
    since: Instant,
}

impl Idle {
    /// Open, and idle for less than [`POOL_IDLE`]; dropping one that is not closes it.
    fn usable(&self, now: Instant) -> bool {
        !self.sender.is_closed() && now.duration_since(self.since) < POOL_IDLE
    }
}

/// The pooled connections of one backend (and one worker).
pub(crate) type UpstreamClient = Arc<BackendConnections>;

/// Builds the (empty) pool of one backend.
pub(crate) fn client(
    backend: SocketAddr,
    protocol: UpstreamProtocol,
    connect_timeout: Duration,
) -> UpstreamClient {
    Arc::new(BackendConnections {
        backend,
        protocol,
        connect_timeout,
        idle: Mutex::new(Vec::new()),
        h2: Mutex::new(None),
        sweeping: AtomicBool::new(false),
    })
}

impl BackendConnections {
    /// Sends `request` on a pooled or new connection and returns the response, whose body
    /// holds `in_flight` and counts into `stats` until its end. A request a reused HTTP/1.1
    /// connection could not take (the backend had closed it) is sent again on a new one.
    pub(crate) async fn send(
        self: &Arc<Self>,
        request: Request<ProxyBody>,
        in_flight: InFlight,
        stats: Arc<TrafficStats>,
    ) -> Result<Response<ProxyBody>, UpstreamError> {
        let (response, checkin) = match self.protocol {
            UpstreamProtocol::Http1 => {
                let (response, sender) = self.send_http1(request).await?;
                (response, Some(Checkin { sender, connections: Arc::clone(self) }))
            }
            UpstreamProtocol::Http2 => (self.send_http2(request).await?, None),
        };
        let (parts, body) = response.into_parts();
        let body = CountedBody { inner: body, checkin, in_flight: Some(in_flight), stats };
        Ok(Response::from_parts(parts, body.finish_if_empty().boxed()))
    }

    async fn send_http1(
        &self,
        mut request: Request<ProxyBody>,
    ) -> Result<(Response<Incoming>, http1::SendRequest<ProxyBody>), UpstreamError> {
        while let Some(mut sender) = self.take_idle() {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => return Ok((response, sender)),
                Err(mut failed) => match failed.take_message() {
                    // Closed by the backend before the request went out: try the next.
                    Some(unsent) => request = unsent,
                    None => return Err(failed.into_error().into()),
                },
            }
        }
        // Boxed: a new connection's state would otherwise be part of every request's.
        let mut sender = match Box::pin(self.connect_http1()).await {
            Ok(sender) => sender,
            Err(Connecting::Dial(source)) => return Err(self.connect_failed(source, request)),
            Err(Connecting::Handshake(e)) => return Err(e.into()),
        };
        let response = sender.send_request(request).await?;
        Ok((response, sender))
    }

    /// A new HTTP/1.1 connection, its task spawned.
    async fn connect_http1(&self) -> Result<http1::SendRequest<ProxyBody>, Connecting> {
        let stream = self.dial().await.map_err(Connecting::Dial)?;
        let (sender, connection) =
            http1::Builder::new().handshake(stream).await.map_err(Connecting::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("backend connection ended: {e}");
            }
        });
        Ok(sender)
    }

    async fn send_http2(
        &self,
        request: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let shared = lock(&self.h2).clone().filter(|sender| !sender.is_closed());
        let mut sender = match shared {
            Some(sender) => sender,
            None => match Box::pin(self.connect_http2()).await {
                Ok(sender) => sender,
                Err(Connecting::Dial(source)) => return Err(self.connect_failed(source, request)),
                Err(Connecting::Handshake(e)) => return Err(e.into()),
            },
        };
        sender.ready().await?;
        Ok(sender.send_request(request).await?)
    }

    /// A new h2c connection, its task spawned, shared from now on.
    async fn connect_http2(&self) -> Result<http2::SendRequest<ProxyBody>, Connecting> {
        let stream = self.dial().await.map_err(Connecting::Dial)?;
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(stream)
            .await
            .map_err(Connecting::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("backend h2c connection ended: {e}");
            }
        });
        *lock(&self.h2) = Some(sender.clone());
        Ok(sender)
    }

    /// The error of a failed connect, with the unsent request to try elsewhere.
    fn connect_failed(&self, source: std::io::Error, request: Request<ProxyBody>) -> UpstreamError {
        UpstreamError::Connect { backend: self.backend, source, request: Box::new(request) }
    }

    /// A connection to the backend, within the connect timeout.
    async fn dial(&self) -> std::io::Result<TokioIo<TcpStream>> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(self.backend))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        stream.set_nodelay(true)?;
        Ok(TokioIo::new(stream))
    }

    /// The most recently used idle connection still open and not past [`POOL_IDLE`].
    fn take_idle(&self) -> Option<http1::SendRequest<ProxyBody>> {
        let mut idle = lock(&self.idle);
        let now = Instant::now();
        while let Some(connection) = idle.pop() {
            if connection.usable(now) {
                return Some(connection.sender);
            }
        }
        None
    }

    fn put_back(self: &Arc<Self>, sender: http1::SendRequest<ProxyBody>) {
        if sender.is_closed() {
            return;
        }
        if !self.sweeping.swap(true, Ordering::Relaxed) {
            tokio::spawn(sweep(Arc::downgrade(self)));
        }
        let mut idle = lock(&self.idle);
        if idle.len() >= POOL_MAX_IDLE_PER_BACKEND {
            // The least recently used goes.
            idle.remove(0);
        }
        idle.push(Idle { sender, since: Instant::now() });
    }
}

/// Closes idle connections past [`POOL_IDLE`] of a backend that gets no more requests, until
/// the pool is gone (a removed backend or a changed pool).
async fn sweep(connections: Weak<BackendConnections>) {
    loop {
        tokio::time::sleep(POOL_IDLE / 2).await;
        let Some(connections) = connections.upgrade() else { return };
        let now = Instant::now();
        lock(&connections.idle).retain(|c| c.usable(now));
    }
}

/// Why a new backend connection could not be had.
enum Connecting {
    /// Connecting failed: the request was not sent and may go elsewhere.
    Dial(std::io::Error),
    Handshake(hyper::Error),
}

/// A connection to hand back once its response body ended.
struct Checkin {
    sender: http1::SendRequest<ProxyBody>,
    connections: Arc<BackendConnections>,
}

/// A backend's response body: counts its bytes, holds the request in flight, and returns
/// an HTTP/1.1 connection to the pool at its end (dropped early, the connection closes).
struct CountedBody {
    inner: Incoming,
    checkin: Option<Checkin>,
    in_flight: Option<InFlight>,
    stats: Arc<TrafficStats>,
}

impl CountedBody {
    /// Ends at once a body that is empty from the start (a 204, a HEAD answer).
    fn finish_if_empty(mut self) -> CountedBody {
        if self.inner.is_end_stream() {
            self.finish();
        }
        self
    }

    fn finish(&mut self) {
        self.in_flight = None;
        if let Some(Checkin { sender, connections }) = self.checkin.take() {
            connections.put_back(sender);
        }
    }

    fn boxed(self) -> ProxyBody {
        UnsyncBoxBody::new(self)
    }
}

impl Body for CountedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    self.stats.bytes_out.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                if self.inner.is_end_stream() {
                    self.finish();
                }
            }
            None => self.finish(),
            // A failed body leaves its connection unusable: it closes when dropped.
            Some(Err(_)) => self.checkin = None,
        }
        Poll::Ready(frame.map(|f| f.map_err(BoxError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What a request body met on its way up: the backend its bytes count for (set for each
/// attempt), and whether reading it from the client failed mid-stream: past the listener's
/// body limit, or malformed (a bad chunk) or cut off.
#[derive(Debug, Default)]
pub(crate) struct RequestBytes {
    backend: ArcSwapOption<TrafficStats>,
    over_limit: AtomicBool,
    unreadable: AtomicBool,
}

impl RequestBytes {
    /// Counts what is sent from now on for `backend`.
    pub(crate) fn count_for(&self, backend: Arc<TrafficStats>) {
        self.backend.store(Some(backend));
    }

    /// Whether the body passed the listener's limit (so a failed request is the client's
    /// 413, not the backend's 502).
    pub(crate) fn over_limit(&self) -> bool {
        self.over_limit.load(Ordering::Relaxed)
    }

    /// Whether the client's body could not be read otherwise (so a failed request is the
    /// client's 400, not the backend's 502).
    pub(crate) fn unreadable(&self) -> bool {
        self.unreadable.load(Ordering::Relaxed)
    }
}

/// A request body past the listener's `max_body_bytes`.
#[derive(Debug, thiserror::Error)]
#[error("the request body is over the listener's limit of {0} bytes")]
pub(crate) struct OverLimit(u64);

/// A request body on its way up, held to the listener's limit and counted into
/// [`RequestBytes`].
pub(crate) struct CountingRequestBody {
    inner: ProxyBody,
    bytes: Arc<RequestBytes>,
    /// Bytes the body may still have.
    left: u64,
    limit: u64,
}

impl CountingRequestBody {
    /// `inner`, held to `limit` bytes and counted into `bytes`.
    pub(crate) fn wrap(inner: ProxyBody, limit: u64, bytes: Arc<RequestBytes>) -> ProxyBody {
        UnsyncBoxBody::new(CountingRequestBody { inner, bytes, left: limit, limit })
    }
}

impl Body for CountingRequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let length = data.len() as u64;
                    if length > self.left {
                        self.bytes.over_limit.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(OverLimit(self.limit).into())));
                    }
                    self.left -= length;
                    if let Some(backend) = self.bytes.backend.load().as_ref() {
                        backend.bytes_in.fetch_add(length, Ordering::Relaxed);
                    }
                }
            }
            Some(Err(_)) => self.bytes.unreadable.store(true, Ordering::Relaxed),
            None => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
