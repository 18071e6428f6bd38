//! The upstream side of L7: each worker's own pool of connections to each backend, HTTP/1.1
//! or h2c as the pool says. A request takes an idle HTTP/1.1 connection (the most recently
//! used, so the rest can age out) or dials a new one, and its connection returns to the pool
//! when the response body has been read to its end. HTTP/1.1 is the proxy's own client
//! (`h1::client`), run in the requesting connection's task; h2c is hyper's, one shared
//! connection per backend and worker. Nothing here crosses threads or waits on a lock held
//! by another request: the pool is per worker, so its mutex is never contended.
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
use hyper::client::conn::http2;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::boxed::boxed;
use super::h1::client::{BackendConnection, ExchangeError, ResponseBody, SendError};
use super::proxy_body::{BoxError, ProxyBody};
use super::stats::TrafficStats;

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
    Failed(BoxError),
}

impl From<hyper::Error> for UpstreamError {
    fn from(error: hyper::Error) -> Self {
        UpstreamError::Failed(error.into())
    }
}

impl From<ExchangeError> for UpstreamError {
    fn from(error: ExchangeError) -> Self {
        UpstreamError::Failed(error.into())
    }
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
    connection: BackendConnection,
    since: Instant,
}

impl Idle {
    /// Open, and idle for less than [`POOL_IDLE`]; dropping one that is not closes it.
    fn usable(&self, now: Instant) -> bool {
        now.duration_since(self.since) < POOL_IDLE && self.connection.is_open_and_quiet()
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
        let (parts, body) = match self.protocol {
            UpstreamProtocol::Http1 => {
                let (parts, body) = self.send_http1(request).await?.into_parts();
                let checkin = Some(Arc::clone(self));
                (parts, Answer::Http1 { body, checkin })
            }
            UpstreamProtocol::Http2 => {
                let (parts, body) = self.send_http2(request).await?.into_parts();
                (parts, Answer::Http2(body))
            }
        };
        let body = CountedBody { inner: body, in_flight: Some(in_flight), stats };
        Ok(Response::from_parts(parts, body.finish_if_empty().boxed()))
    }

    async fn send_http1(
        &self,
        mut request: Request<ProxyBody>,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        if let Some(connection) = self.take_idle() {
            match connection.send(request, true).await {
                Ok(response) => return Ok(response),
                // Closed by the backend meanwhile: once more, on a new connection (at most
                // once, so a request that makes the backend close is not sent on and on).
                Err(SendError::Stale(unsent)) => request = *unsent,
                Err(SendError::Failed(e)) => return Err(e.into()),
            }
        }
        // Boxed: a new connection's state would otherwise be part of every request's.
        let stream = match boxed!(self.dial()).await {
            Ok(stream) => stream,
            Err(source) => return Err(self.connect_failed(source, request)),
        };
        match BackendConnection::new(stream).send(request, false).await {
            Ok(response) => Ok(response),
            Err(SendError::Failed(e)) => Err(e.into()),
            Err(SendError::Stale(_)) => Err(ExchangeError::Closed.into()),
        }
    }

    async fn send_http2(
        &self,
        request: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let shared = lock(&self.h2).clone().filter(|sender| !sender.is_closed());
        let mut sender = match shared {
            Some(sender) => sender,
            None => match boxed!(self.connect_http2()).await {
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
            .handshake(TokioIo::new(stream))
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
    async fn dial(&self) -> std::io::Result<TcpStream> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(self.backend))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// The most recently used idle connection still open and not past [`POOL_IDLE`].
    fn take_idle(&self) -> Option<BackendConnection> {
        let mut idle = lock(&self.idle);
        let now = Instant::now();
        while let Some(idle) = idle.pop() {
            if idle.usable(now) {
                return Some(idle.connection);
            }
        }
        None
    }

    fn put_back(self: &Arc<Self>, connection: BackendConnection) {
        if !self.sweeping.swap(true, Ordering::Relaxed) {
            tokio::spawn(sweep(Arc::downgrade(self)));
        }
        let mut idle = lock(&self.idle);
        if idle.len() >= POOL_MAX_IDLE_PER_BACKEND {
            // The least recently used goes.
            idle.remove(0);
        }
        idle.push(Idle { connection, since: Instant::now() });
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

/// A backend's response body as its protocol gives it.
enum Answer {
    /// With the pool its connection returns to at its end.
    Http1 {
        body: ResponseBody,
        checkin: Option<Arc<BackendConnections>>,
    },
    Http2(Incoming),
}

impl Answer {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = match self {
            Answer::Http1 { body, .. } => {
                ready!(Pin::new(body).poll_frame(cx)).map(|f| f.map_err(BoxError::from))
            }
            Answer::Http2(body) => {
                ready!(Pin::new(body).poll_frame(cx)).map(|f| f.map_err(BoxError::from))
            }
        };
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Answer::Http1 { body, .. } => body.is_end_stream(),
            Answer::Http2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Answer::Http1 { body, .. } => body.size_hint(),
            Answer::Http2(body) => body.size_hint(),
        }
    }

    /// At the body's end: its HTTP/1.1 connection back to the pool, if it can be reused.
    fn check_in(&mut self) {
        if let Answer::Http1 { body, checkin } = self
            && let Some(connections) = checkin.take()
            && let Some(connection) = body.take_reusable()
        {
            connections.put_back(connection);
        }
    }

    /// A failed body's connection is not reused: it closes with the body.
    fn forget_connection(&mut self) {
        if let Answer::Http1 { checkin, .. } = self {
            *checkin = None;
        }
    }
}

/// A backend's response body: counts its bytes, holds the request in flight, and returns
/// an HTTP/1.1 connection to the pool at its end (dropped early, the connection closes).
struct CountedBody {
    inner: Answer,
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
        self.inner.check_in();
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
        let frame = ready!(self.inner.poll_frame(cx));
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
            Some(Err(_)) => self.inner.forget_connection(),
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
