//! The node's own HTTP endpoints, served apart from the data plane: the admin API
//! (`admin`) and the Prometheus `/metrics` endpoint (`metrics`), on one accept loop.

pub mod admin;
pub mod metrics;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// The response every endpoint sends.
pub type HttpResponse = hyper::Response<Full<Bytes>>;

/// How long a client may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `handler` on `listener` (HTTP/1.1 and h2c) until the task is dropped; `name` says
/// whose accept failed in the log. A client that never finishes its headers does not hold a
/// connection forever.
pub async fn serve<H, F>(listener: TcpListener, name: &'static str, handler: Arc<H>)
where
    H: Fn(SocketAddr, hyper::Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = HttpResponse> + Send + 'static,
{
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning on the error.
                tracing::warn!("{name}: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let handler = Arc::clone(&handler);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let answer = handler(peer, request);
                async move { Ok::<_, Infallible>(answer.await) }
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
