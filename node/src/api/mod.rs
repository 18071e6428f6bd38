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
use fulcrum_raft_store::port::{Limits, OpenConnections, RefusalLog};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

/// The response every endpoint sends.
pub type HttpResponse = hyper::Response<Full<Bytes>>;

/// How long a client may take to send a request's headers, and may idle between requests.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Open connections at most: operators' tools and a few scrapers need far fewer.
const CONNECTION_LIMITS: Limits = Limits { total: 256, per_address: 32 };

/// Serves `handler` on `listener` (HTTP/1.1) until the task is dropped; `name` says whose
/// accept failed in the log. A client that never finishes its headers, or idles, does not
/// hold a connection for long, and one address cannot take all of them.
pub async fn serve<H, F>(listener: TcpListener, name: &'static str, handler: Arc<H>)
where
    H: Fn(SocketAddr, hyper::Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = HttpResponse> + Send + 'static,
{
    let open = OpenConnections::new(CONNECTION_LIMITS);
    let refused = RefusalLog::default();
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
        let Some(slot) = open.take(peer.ip()) else {
            refused.warn(|suppressed| {
                tracing::warn!(%peer, suppressed, "{name}: connection refused: {CONNECTION_LIMITS}");
            });
            continue;
        };
        let handler = Arc::clone(&handler);
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |request| {
                let answer = handler(peer, request);
                async move { Ok::<_, Infallible>(answer.await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let _ = connection.await;
        });
    }
}
