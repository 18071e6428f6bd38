//! The server side of the Raft RPC: an HTTP/1.1 server (hyper), over mutual TLS when the
//! node has its certificates, that authenticates every
//! request's head before reading its body, then hands it to openraft, to the leader's write,
//! read and membership paths for requests forwarded by followers, or to the node's peer
//! handler.
//!
//! The port faces the network, so everything an unauthenticated sender can make it do is
//! bounded: connections in total and per source address, a deadline for each head and each
//! body, a body length declared up front and within the path's limit, nothing buffered
//! before the signature holds, and refusals logged at most once a second.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use fulcrum_model::codec;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::ServerConfig;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::port::{Limits, OpenConnections, RefusalLog};
use crate::rpc::{
    AuthError, PATH_APPEND, PATH_MEMBERS, PATH_PEER, PATH_READ, PATH_SNAPSHOT, PATH_VOTE,
    PATH_WRITE, RpcRequest, unix_ms,
};
use crate::shared::Shared;

/// Open connections at most, in total and from one address; peers keep a few each.
const CONNECTION_LIMITS: Limits = Limits { total: 512, per_address: 32 };
/// A request's head must arrive within this, and an idle connection is closed after it.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A body gets this long, plus [`BODY_TIME_PER_MIB`] for each MiB it declares.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
const BODY_TIME_PER_MIB: Duration = Duration::from_secs(1);
/// The largest body of a vote or a read, which carry a few numbers.
const SMALL_BODY_BYTES: u64 = 64 * 1024;

/// Serves RPCs on `listener` (over mutual TLS with `tls`) until `stop` turns true.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    tls: Option<Arc<ServerConfig>>,
    mut stop: watch::Receiver<bool>,
) {
    let tls = tls.map(TlsAcceptor::from);
    let refused_handshakes = Arc::new(RefusalLog::default());
    let mut connections = tokio::task::JoinSet::new();
    let open = OpenConnections::new(CONNECTION_LIMITS);
    let refused_connections = RefusalLog::default();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors and the like: pause rather than spin.
                    tracing::warn!("Raft RPC accept failed: {error}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => break,
        };
        // Reap finished connections so the set does not grow without bound.
        while connections.try_join_next().is_some() {}
        let Some(slot) = open.take(peer.ip()) else {
            refused_connections.warn(|suppressed| {
                tracing::warn!(%peer, suppressed, "Raft RPC connection refused: {CONNECTION_LIMITS}");
            });
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = Arc::clone(&shared);
        let stop = stop.clone();
        let tls = tls.clone();
        let refused_handshakes = Arc::clone(&refused_handshakes);
        connections.spawn(async move {
            let _slot = slot;
            let Some(tls) = tls else {
                return serve_connection(stream, shared, stop).await;
            };
            // The handshake gets the header deadline too: a silent client holds nothing.
            match tokio::time::timeout(HEADER_TIMEOUT, tls.accept(stream)).await {
                Ok(Ok(stream)) => serve_connection(stream, shared, stop).await,
                Ok(Err(error)) => refused_handshakes.warn(|suppressed| {
                    tracing::warn!(%peer, suppressed, "Raft RPC TLS handshake refused: {error}");
                }),
                Err(_) => refused_handshakes.warn(|suppressed| {
                    tracing::warn!(%peer, suppressed, "Raft RPC TLS handshake timed out");
                }),
            }
        });
    }
    connections.shutdown().await;
}

/// Serves the RPCs of one connection until it ends or `stop` turns true.
async fn serve_connection<I>(io: I, shared: Arc<Shared>, mut stop: watch::Receiver<bool>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| {
        let shared = Arc::clone(&shared);
        async move { Ok::<_, Infallible>(handle(&shared, request).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        _ = stopped(&mut stop) => {}
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

type HttpResponse = hyper::Response<Full<Bytes>>;

fn text(status: StatusCode, message: String) -> HttpResponse {
    let mut response = hyper::Response::new(Full::new(Bytes::from(message)));
    *response.status_mut() = status;
    response
}

async fn handle(shared: &Shared, request: hyper::Request<Incoming>) -> HttpResponse {
    if request.method() != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "Raft RPCs are POSTs".into());
    }
    let (path, limit): (&'static str, u64) = match request.uri().path() {
        PATH_VOTE => (PATH_VOTE, SMALL_BODY_BYTES),
        PATH_READ => (PATH_READ, SMALL_BODY_BYTES),
        PATH_APPEND => (PATH_APPEND, codec::MAX_MESSAGE_BYTES as u64),
        PATH_SNAPSHOT => (PATH_SNAPSHOT, codec::MAX_MESSAGE_BYTES as u64),
        PATH_WRITE => (PATH_WRITE, codec::MAX_MESSAGE_BYTES as u64),
        PATH_MEMBERS => (PATH_MEMBERS, codec::MAX_MESSAGE_BYTES as u64),
        PATH_PEER => (PATH_PEER, codec::MAX_MESSAGE_BYTES as u64),
        _ => return text(StatusCode::NOT_FOUND, "no such RPC".into()),
    };
    let (parts, body) = request.into_parts();
    let declared = parts
        .headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let length = match declared {
        Some(length) if length <= limit => length,
        Some(length) => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("{path} takes at most {limit} bytes, not {length}"),
            );
        }
        None => return text(StatusCode::LENGTH_REQUIRED, "a Content-Length is required".into()),
    };
    let header = |name: &'static str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let verified = {
        let mut nonces = shared.nonces.lock().unwrap_or_else(|p| p.into_inner());
        let now_ms = unix_ms(SystemTime::now());
        shared.auth.verify_head(header, shared.node_id, path, length, now_ms, &mut nonces)
    };
    let verified = match verified {
        Ok(verified) => verified,
        Err(error) => return refuse(shared, path, error),
    };
    let deadline =
        BODY_TIMEOUT + BODY_TIME_PER_MIB * u32::try_from(length >> 20).unwrap_or(u32::MAX);
    let limited = Limited::new(body, usize::try_from(length).unwrap_or(usize::MAX));
    let body = match tokio::time::timeout(deadline, limited.collect()).await {
        Ok(Ok(body)) => body.to_bytes(),
        Ok(Err(error)) => {
            return text(StatusCode::BAD_REQUEST, format!("cannot read the body: {error}"));
        }
        Err(_) => {
            return text(
                StatusCode::REQUEST_TIMEOUT,
                format!("the body did not arrive within {deadline:?}"),
            );
        }
    };
    if let Err(error) = verified.check_body(&body) {
        return refuse(shared, path, error);
    }
    let request = match RpcRequest::decode(path, &body) {
        Ok(request) => request,
        Err(error) => return text(StatusCode::BAD_REQUEST, error.to_string()),
    };
    let raft = &shared.raft;
    match request {
        RpcRequest::Append(request) => reply(&raft.append_entries(request).await),
        RpcRequest::Vote(request) => reply(&raft.vote(request).await),
        RpcRequest::Snapshot(request) => reply(&raft.install_snapshot(request).await),
        RpcRequest::Write(request) => reply(&shared.write_as_leader(request).await),
        RpcRequest::Read => reply(&shared.read_as_leader().await),
        RpcRequest::Members(change) => reply(&shared.change_members_as_leader(&change).await),
        RpcRequest::Peer(bytes) => reply(&shared.answer_peer(bytes).await),
    }
}

/// Counts and logs (within the log's rate) a refused request, and answers it.
fn refuse(shared: &Shared, path: &'static str, error: AuthError) -> HttpResponse {
    shared.auth_counters.record(&error);
    shared.refusals.warn(|suppressed| {
        tracing::warn!(path, suppressed, "Raft RPC refused: {error}");
    });
    let status = match error {
        AuthError::MissingHeader(_) | AuthError::BadSignature => StatusCode::UNAUTHORIZED,
        AuthError::Stale { .. } | AuthError::Replayed => StatusCode::UNAUTHORIZED,
        AuthError::BodyMismatch => StatusCode::BAD_REQUEST,
        AuthError::WrongCluster { .. } => StatusCode::FORBIDDEN,
        AuthError::WrongTarget { .. } => StatusCode::MISDIRECTED_REQUEST,
    };
    text(status, error.to_string())
}

/// Encodes whatever the work returned (errors included: they travel as values for the
/// caller to act on).
fn reply(value: &impl Serialize) -> HttpResponse {
    match codec::encode(value) {
        Ok(bytes) => hyper::Response::new(Full::new(Bytes::from(bytes))),
        Err(error) => {
            text(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode the answer: {error}"))
        }
    }
}
