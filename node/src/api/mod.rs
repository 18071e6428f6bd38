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
use fulcrum_model::Certificate;
use fulcrum_raft_store::port::{Limits, OpenConnections, RefusalLog};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::dataplane::tls::{CertStore, TlsError};

/// The response every endpoint sends.
pub type HttpResponse = hyper::Response<Full<Bytes>>;

/// How long a client may take to send a request's headers, and may idle between requests.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Open connections at most: operators' tools and a few scrapers need far fewer.
const CONNECTION_LIMITS: Limits = Limits { total: 256, per_address: 32 };

/// An endpoint's TLS: its certificate, read again when its files change.
pub struct EndpointTls {
    certificate: Arc<CertStore>,
    acceptor: TlsAcceptor,
}

impl EndpointTls {
    /// Reads the certificate and key.
    pub fn load(files: &Certificate) -> Result<EndpointTls, TlsError> {
        let certificate = Arc::new(CertStore::load(std::slice::from_ref(files))?);
        let acceptor = TlsAcceptor::from(certificate.http1_server_config());
        Ok(EndpointTls { certificate, acceptor })
    }
}

/// Serves `handler` on `listener` (HTTP/1.1, over TLS with `tls`) until the task is dropped;
/// `name` says whose accept failed in the log. A client that never finishes its handshake or
/// headers, or idles, does not hold a connection for long, and one address cannot take all
/// of them.
pub async fn serve<H, F>(
    listener: TcpListener,
    name: &'static str,
    handler: Arc<H>,
    tls: Option<EndpointTls>,
) where
    H: Fn(SocketAddr, hyper::Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = HttpResponse> + Send + 'static,
{
    let open = OpenConnections::new(CONNECTION_LIMITS);
    let refused = RefusalLog::default();
    let refused_handshakes = Arc::new(RefusalLog::default());
    let tls = tls.map(Arc::new);
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
        let (tls, refused_handshakes) = (tls.clone(), Arc::clone(&refused_handshakes));
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |request| {
                let answer = handler(peer, request);
                async move { Ok::<_, Infallible>(answer.await) }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
            let Some(tls) = tls else {
                let _ = http.serve_connection(TokioIo::new(stream), service).await;
                return;
            };
            // A renewed certificate is picked up by the next connection.
            tls.certificate.reload_changed();
            match tokio::time::timeout(HEADER_TIMEOUT, tls.acceptor.accept(stream)).await {
                Ok(Ok(stream)) => {
                    let _ = http.serve_connection(TokioIo::new(stream), service).await;
                }
                Ok(Err(error)) => refused_handshakes.warn(|suppressed| {
                    tracing::warn!(%peer, suppressed, "{name}: TLS handshake refused: {error}");
                }),
                Err(_) => refused_handshakes.warn(|suppressed| {
                    tracing::warn!(%peer, suppressed, "{name}: TLS handshake timed out");
                }),
            }
        });
    }
}
