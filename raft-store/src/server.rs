//! The server side of the Raft RPC: an HTTP/1.1 server (hyper) that authenticates every
//! request before reading it, then hands it to openraft, to the leader's write, read and
//! membership paths for requests forwarded by followers, or to the node's peer handler.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use fulcrum_model::codec;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::rpc::{
    AuthError, PATH_APPEND, PATH_MEMBERS, PATH_PEER, PATH_READ, PATH_SNAPSHOT, PATH_VOTE,
    PATH_WRITE,
};
use crate::shared::{MemberChange, Shared};
use crate::types::{NodeId, Request, TypeConfig};

/// Serves RPCs on `listener` until `stop` turns true.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, _) = tokio::select! {
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
        let _ = stream.set_nodelay(true);
        let shared = Arc::clone(&shared);
        let mut stop = stop.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let shared = Arc::clone(&shared);
                async move { Ok::<_, Infallible>(handle(&shared, request).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = stopped(&mut stop) => {}
            }
        });
        // Reap finished connections so the set does not grow without bound.
        while connections.try_join_next().is_some() {}
    }
    connections.shutdown().await;
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
    let path: &'static str = match request.uri().path() {
        PATH_APPEND => PATH_APPEND,
        PATH_VOTE => PATH_VOTE,
        PATH_SNAPSHOT => PATH_SNAPSHOT,
        PATH_WRITE => PATH_WRITE,
        PATH_READ => PATH_READ,
        PATH_MEMBERS => PATH_MEMBERS,
        PATH_PEER => PATH_PEER,
        other => return text(StatusCode::NOT_FOUND, format!("no RPC at {other}")),
    };
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, codec::MAX_MESSAGE_BYTES).collect().await {
        Ok(body) => body.to_bytes(),
        Err(error) => {
            return text(StatusCode::BAD_REQUEST, format!("cannot read the body: {error}"));
        }
    };
    let header = |name: &'static str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    if let Err(error) = shared.auth.verify(header, shared.node_id, path, &body) {
        shared.auth_counters.record(&error);
        tracing::warn!(path, "Raft RPC refused: {error}");
        let status = match error {
            AuthError::MissingHeader(_) | AuthError::BadSignature => StatusCode::UNAUTHORIZED,
            AuthError::WrongCluster { .. } => StatusCode::FORBIDDEN,
            AuthError::WrongTarget { .. } => StatusCode::MISDIRECTED_REQUEST,
        };
        return text(status, error.to_string());
    }
    let raft = &shared.raft;
    match path {
        PATH_APPEND => {
            answer(&body, |r: AppendEntriesRequest<TypeConfig>| raft.append_entries(r)).await
        }
        PATH_VOTE => answer(&body, |r: VoteRequest<NodeId>| raft.vote(r)).await,
        PATH_SNAPSHOT => {
            answer(&body, |r: InstallSnapshotRequest<TypeConfig>| raft.install_snapshot(r)).await
        }
        PATH_WRITE => answer(&body, |r: Request| shared.write_as_leader(r)).await,
        PATH_MEMBERS => {
            answer(
                &body,
                |c: MemberChange| async move { shared.change_members_as_leader(&c).await },
            )
            .await
        }
        PATH_PEER => answer(&body, |r: Vec<u8>| shared.answer_peer(r)).await,
        _ => answer(&body, |(): ()| shared.read_as_leader()).await,
    }
}

/// Decodes the request, runs `work`, and encodes whatever it returns (errors included: they
/// travel as values for the caller to act on).
async fn answer<Req, Out, F>(body: &[u8], work: impl FnOnce(Req) -> F) -> HttpResponse
where
    Req: DeserializeOwned,
    Out: Serialize,
    F: Future<Output = Out>,
{
    let request = match codec::decode::<Req>(body) {
        Ok(request) => request,
        Err(error) => return text(StatusCode::BAD_REQUEST, format!("malformed RPC body: {error}")),
    };
    match codec::encode(&work(request).await) {
        Ok(bytes) => hyper::Response::new(Full::new(Bytes::from(bytes))),
        Err(error) => {
            text(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode the answer: {error}"))
        }
    }
}
