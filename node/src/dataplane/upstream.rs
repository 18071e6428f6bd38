//! The upstream side of L7: one pooled hyper client per backend (and per worker), HTTP/1.1
//! or h2c as the pool says, dialling that backend whatever authority a request names.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use fulcrum_model::UpstreamProtocol;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

/// Errors of a body on its way through.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type both directions are forwarded as.
pub(crate) type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;
/// The pooled client of one backend.
pub(crate) type UpstreamClient = Client<BackendConnector, ProxyBody>;

/// Dials one backend whatever authority a request names, so the client's own authority
/// travels upstream (in `Host`, or HTTP/2's `:authority`) and connections are pooled per
/// backend.
#[derive(Clone, Debug)]
pub struct BackendConnector {
    inner: HttpConnector,
    backend: Uri,
}

impl tower_service::Service<Uri> for BackendConnector {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        tower_service::Service::<Uri>::poll_ready(&mut self.inner, cx).map_err(Into::into)
    }

    fn call(&mut self, _requested: Uri) -> Self::Future {
        let connecting = self.inner.call(self.backend.clone());
        Box::pin(async move { connecting.await.map_err(Into::into) })
    }
}

/// How long a pooled backend connection may sit idle.
const POOL_IDLE: Duration = Duration::from_secs(90);
/// Idle pooled connections kept per backend (and per worker).
const POOL_MAX_IDLE_PER_BACKEND: usize = 64;

/// Builds the pooled client for one backend.
pub(crate) fn client(
    backend: SocketAddr,
    upstream: UpstreamProtocol,
    connect_timeout: Duration,
) -> UpstreamClient {
    let mut inner = HttpConnector::new();
    inner.set_connect_timeout(Some(connect_timeout));
    inner.set_nodelay(true);
    // A socket address always makes a valid authority.
    let backend = Uri::try_from(format!("http://{backend}")).unwrap_or_default();
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_idle_timeout(POOL_IDLE)
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_BACKEND)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new());
    if upstream == UpstreamProtocol::Http2 {
        builder.http2_only(true);
    }
    builder.build(BackendConnector { inner, backend })
}
