//! The lab backend: a small, fast HTTP/1.1 and h2c server, and a TCP echo server.
//!
//! Routes (every response carries `x-backend: <name>`):
//! - `GET /health`: 200, or 503 once switched down; `POST /health/down` and `/health/up`
//!   switch it at run time, so tests can fail a health check without killing the process.
//! - `GET /slow?secs=N`: streams N seconds of numbered 1 KiB chunks (10 per second) with a
//!   Content-Length, so a client can check a long download byte for byte.
//! - `/echo`: the request body, streamed back.
//! - anything else: the backend's name.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::time::Sleep;

/// Bytes in one chunk of `/slow`.
pub const SLOW_CHUNK_BYTES: usize = 1024;
/// Chunks per second of `/slow`.
pub const SLOW_CHUNKS_PER_SECOND: u64 = 10;
/// The longest `/slow` download, in seconds: every stream is bounded.
pub const SLOW_MAX_SECS: u64 = 600;

type ResponseBody = BoxBody<Bytes, hyper::Error>;

/// What every connection of one backend shares.
#[derive(Debug)]
pub struct Backend {
    name: String,
    /// What `/health` answers; switched by `POST /health/{up,down}`.
    healthy: AtomicBool,
}

impl Backend {
    /// A healthy backend that answers with `name`.
    pub fn new(name: &str) -> Arc<Backend> {
        Arc::new(Backend { name: name.to_owned(), healthy: AtomicBool::new(true) })
    }

    /// Serves HTTP/1.1 and h2c (prior knowledge) on `listener` until the task is dropped.
    pub async fn serve_http(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        loop {
            let (stream, _) = listener.accept().await?;
            let backend = Arc::clone(&self);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let backend = Arc::clone(&backend);
                    async move { Ok::<_, Infallible>(backend.answer(request)) }
                });
                if let Err(e) = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!("connection ended: {e}");
                }
            });
        }
    }

    /// Echoes every TCP connection on `listener` until the task is dropped.
    pub async fn serve_echo(listener: TcpListener) -> std::io::Result<()> {
        loop {
            let (mut stream, _) = listener.accept().await?;
            tokio::spawn(async move {
                let (mut reader, mut writer) = stream.split();
                if let Err(e) = tokio::io::copy(&mut reader, &mut writer).await {
                    tracing::debug!("echo connection ended: {e}");
                }
            });
        }
    }

    fn answer(&self, request: Request<Incoming>) -> Response<ResponseBody> {
        let path = request.uri().path();
        let response = match (request.method(), path) {
            (&Method::GET, "/health") => {
                if self.healthy.load(Ordering::Relaxed) {
                    text(StatusCode::OK, "ok\n")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "down\n")
                }
            }
            (&Method::POST, "/health/down" | "/health/up") => {
                self.healthy.store(path == "/health/up", Ordering::Relaxed);
                text(StatusCode::OK, "switched\n")
            }
            (&Method::GET, "/slow") => match slow_seconds(request.uri().query()) {
                Ok(secs) => self.slow(secs),
                Err(problem) => text(StatusCode::BAD_REQUEST, problem),
            },
            (_, "/echo") => Response::new(request.into_body().boxed()),
            _ => text(StatusCode::OK, format!("{}\n", self.name)),
        };
        let mut response = response;
        if let Ok(name) = self.name.parse() {
            response.headers_mut().insert("x-backend", name);
        }
        response
    }

    fn slow(&self, secs: u64) -> Response<ResponseBody> {
        let body = SlowBody {
            name: self.name.clone(),
            next: 0,
            total: secs * SLOW_CHUNKS_PER_SECOND,
            tick: Box::pin(tokio::time::sleep(Duration::ZERO)),
        };
        Response::new(body.map_err(|never: Infallible| match never {}).boxed())
    }
}

/// The body of `/slow`: one chunk per tick; its exact size hint becomes the Content-Length.
struct SlowBody {
    name: String,
    next: u64,
    total: u64,
    tick: Pin<Box<Sleep>>,
}

impl hyper::body::Body for SlowBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.next == self.total {
            return Poll::Ready(None);
        }
        ready!(self.tick.as_mut().poll(cx));
        let next_tick = self.tick.deadline() + Duration::from_millis(1000 / SLOW_CHUNKS_PER_SECOND);
        self.tick.as_mut().reset(next_tick);
        let chunk = slow_chunk(&self.name, self.next);
        self.next += 1;
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.next == self.total
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact((self.total - self.next) * SLOW_CHUNK_BYTES as u64)
    }
}

/// Chunk `index` of a `/slow` download from backend `name`: a numbered line padded to 1 KiB.
pub fn slow_chunk(name: &str, index: u64) -> Bytes {
    let mut chunk = format!("{name} chunk {index:08}\n").into_bytes();
    chunk.resize(SLOW_CHUNK_BYTES - 1, b'.');
    chunk.push(b'\n');
    Bytes::from(chunk)
}

fn slow_seconds(query: Option<&str>) -> Result<u64, String> {
    let value = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("secs="))
        .unwrap_or("5");
    match value.parse::<u64>() {
        Ok(secs) if secs <= SLOW_MAX_SECS => Ok(secs),
        _ => Err(format!("secs={value:?}: want a whole number of seconds up to {SLOW_MAX_SECS}\n")),
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<ResponseBody> {
    let body = Full::new(body.into()).map_err(|never: Infallible| match never {}).boxed();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
}
