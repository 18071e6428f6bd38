//! The client side of the Raft RPC: openraft's network factory over hyper (over mutual TLS
//! when the node has `[raft.tls]`), and the signed POST that forwarded writes and reads use
//! too.
//!
//! A peer that cannot be reached (connection refused or timed out) is reported to openraft as
//! `Unreachable`, so it backs off instead of retrying in a tight loop; an answer that is not
//! the expected body (a refusal, a decoding error) is a `Network` error; an error raised by the
//! peer's Raft comes back as a `RemoteError`.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use fulcrum_model::codec::{self, CodecError};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use rustls::pki_types::ServerName;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::rpc::{ClusterAuth, PATH_APPEND, PATH_SNAPSHOT, PATH_VOTE, unix_ms};
use crate::tls::{PEER_NAME, PeerIdentity};
use crate::types::{NodeId, TypeConfig};

/// Why an RPC got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The peer could not be reached, or did not answer in time.
    #[error("node {target} at {address} is unreachable: {problem}")]
    Unreachable {
        /// The peer.
        target: NodeId,
        /// Its address.
        address: String,
        /// What happened.
        problem: String,
    },
    /// The peer answered with an error status (it refused the request).
    #[error("node {target} at {address} refused {path}: {status} {message}")]
    Refused {
        /// The peer.
        target: NodeId,
        /// Its address.
        address: String,
        /// The RPC.
        path: &'static str,
        /// The HTTP status.
        status: u16,
        /// The peer's explanation.
        message: String,
    },
    /// The request or the answer could not be encoded or decoded.
    #[error("RPC body: {0}")]
    Codec(#[from] CodecError),
    /// The connection failed after the request was sent.
    #[error("node {target} at {address}: {problem}")]
    Broken {
        /// The peer.
        target: NodeId,
        /// Its address.
        address: String,
        /// What happened.
        problem: String,
    },
}

fn peer_name() -> ServerName<'static> {
    // A constant that is a valid DNS name.
    ServerName::try_from(PEER_NAME)
        .unwrap_or_else(|_| ServerName::IpAddress(Ipv4Addr::LOCALHOST.into()))
}

/// A TLS client configuration trusting nothing, for a client that never uses TLS.
fn plain_client_config() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map(|builder| builder.with_root_certificates(rustls::RootCertStore::empty()))
        .unwrap_or_else(|_| {
            rustls::ClientConfig::builder().with_root_certificates(rustls::RootCertStore::empty())
        })
        .with_no_client_auth()
}

/// Sends signed RPCs to peers; cheap to clone (one connection pool).
#[derive(Clone, Debug)]
pub struct RpcClient {
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    auth: ClusterAuth,
    /// `https` with mutual TLS, `http` without.
    scheme: &'static str,
}

impl RpcClient {
    /// A client signing with `auth`, over mutual TLS as `tls` if given.
    pub fn new(auth: ClusterAuth, tls: Option<&Arc<PeerIdentity>>) -> RpcClient {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_millis(500)));
        connector.enforce_http(false);
        let (config, scheme) = match tls {
            Some(identity) => (identity.client_config(), "https"),
            // Never used for a handshake: the scheme stays `http`.
            None => (plain_client_config(), "http"),
        };
        let builder = HttpsConnectorBuilder::new().with_tls_config(config);
        let builder = if tls.is_some() { builder.https_only() } else { builder.https_or_http() };
        let connector = builder
            .with_server_name_resolver(FixedServerNameResolver::new(peer_name()))
            .enable_http1()
            .wrap_connector(connector);
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        RpcClient { http, auth, scheme }
    }

    /// POSTs `request` to node `target` at `address` and decodes its answer, all within
    /// `timeout`.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        target: NodeId,
        address: &str,
        path: &'static str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let body = codec::encode(request)?;
        let answer = tokio::time::timeout(timeout, self.post(target, address, path, body))
            .await
            .map_err(|_| CallError::Unreachable {
            target,
            address: address.to_owned(),
            problem: format!("no answer within {timeout:?}"),
        })??;
        Ok(codec::decode(&answer)?)
    }

    async fn post(
        &self,
        target: NodeId,
        address: &str,
        path: &'static str,
        body: Vec<u8>,
    ) -> Result<Bytes, CallError> {
        let broken =
            |problem: String| CallError::Broken { target, address: address.to_owned(), problem };
        let mut request = hyper::Request::post(format!("{}://{address}{path}", self.scheme));
        // Signed as it leaves: a retry by the caller is a new request with a new nonce.
        let sent_ms = unix_ms(SystemTime::now());
        for (name, value) in self.auth.sign(target, path, &body, sent_ms, fastrand::u64(..)) {
            request = request.header(name, value);
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| broken(format!("cannot build the request: {e}")))?;
        let response = self.http.request(request).await.map_err(|e| {
            if e.is_connect() {
                CallError::Unreachable {
                    target,
                    address: address.to_owned(),
                    problem: source_chain(&e),
                }
            } else {
                broken(source_chain(&e))
            }
        })?;
        let status = response.status();
        let body = Limited::new(response.into_body(), codec::MAX_MESSAGE_BYTES)
            .collect()
            .await
            .map_err(|e| broken(format!("reading the answer: {e}")))?
            .to_bytes();
        if !status.is_success() {
            return Err(CallError::Refused {
                target,
                address: address.to_owned(),
                path,
                status: status.as_u16(),
                message: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        Ok(body)
    }
}

fn source_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// openraft's view of the network: a [`Connection`] per peer, sharing one client.
#[derive(Clone, Debug)]
pub struct Network {
    client: RpcClient,
}

impl Network {
    /// The network of a node signing with `client`'s auth.
    pub fn new(client: RpcClient) -> Network {
        Network { client }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Connection {
        Connection { client: self.client.clone(), target, node: node.clone() }
    }
}

/// RPCs to one peer.
#[derive(Debug)]
pub struct Connection {
    client: RpcClient,
    target: NodeId,
    node: BasicNode,
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl Connection {
    async fn send<Req, Resp, E>(
        &self,
        path: &'static str,
        request: &Req,
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let answer: Result<Resp, RaftError<NodeId, E>> = self
            .client
            .call(self.target, &self.node.addr, path, request, option.hard_ttl())
            .await
            .map_err(|error| match error {
                CallError::Unreachable { .. } => RPCError::Unreachable(Unreachable::new(&error)),
                other => RPCError::Network(NetworkError::new(&other)),
            })?;
        answer.map_err(|error| {
            RPCError::RemoteError(RemoteError::new_with_node(self.target, self.node.clone(), error))
        })
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        request: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        self.send(PATH_APPEND, &request, &option).await
    }

    async fn install_snapshot(
        &mut self,
        request: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.send(PATH_SNAPSHOT, &request, &option).await
    }

    async fn vote(
        &mut self,
        request: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        self.send(PATH_VOTE, &request, &option).await
    }
}
