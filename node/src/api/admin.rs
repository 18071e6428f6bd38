//! The admin API: HTTP/JSON on hyper, the routes listed in `fulcrum_model::api`.
//!
//! Every route but `/healthz` wants the bearer token, compared in constant time. Writes are
//! checked against the configuration, proposed through Raft from whichever node was asked
//! (the store forwards them to the leader), and logged to the `fulcrum::audit` target with
//! who asked, what, and the revision that resulted. A write may carry an `Idempotency-Key`,
//! so a client retrying it at another node applies it once.

use std::collections::HashMap;
use std::fmt::Display;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fulcrum_model::acme::AcmeCommand;
use fulcrum_model::api::{
    AddMember, BackendStateChange, BackendWeightChange, DryRun, ErrorBody, Failover, HEADER_ACTOR,
    NodeDrain, Written, certificate_statuses,
};
use fulcrum_model::{
    ApplyError, Backend, Command, Listener, Name, Pool, RateLimitPolicy, Route, file,
};
use fulcrum_raft_store::port::RefusalLog;
use fulcrum_raft_store::{ConfigStore, IdempotencyKey, MembershipError, Request};
use fulcrum_raft_store::{ReadError, WriteError};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;

use super::{EndpointTls, HttpResponse};
use crate::cluster::{BgpDrainError, MoveError, Node};
use crate::dataplane::DataPlane;
use crate::prometheus::CONTENT_TYPE;

/// The largest request body read: a cluster file of thousands of objects fits.
const MAX_BODY_BYTES: usize = 8 << 20;
/// How long `wait` waits when the caller does not say.
const DEFAULT_WAIT: Duration = Duration::from_secs(10);
/// The longest `wait` accepted.
const MAX_WAIT: Duration = Duration::from_secs(300);
/// How long a learner may take to catch up before its promotion is refused: inside the
/// store's forwarding budget and fulcrumctl's timeout (both 10 s), so the caller gets the
/// answer instead of retrying.
const CATCH_UP: Duration = Duration::from_secs(5);
/// The header a client names a retried write with: 32 hex digits.
const HEADER_IDEMPOTENCY_KEY: &str = "idempotency-key";

/// A failed call: its status and the [`ErrorBody`] sent with it.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    body: ErrorBody,
}

impl ApiError {
    fn new(status: StatusCode, error: impl Display) -> ApiError {
        ApiError { status, body: ErrorBody { error: error.to_string(), hint: None } }
    }

    fn hint(mut self, hint: impl Display) -> ApiError {
        self.body.hint = Some(hint.to_string());
        self
    }

    fn bad_request(error: impl Display) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, error)
    }
}

impl From<ApplyError> for ApiError {
    fn from(error: ApplyError) -> ApiError {
        let status = match error {
            ApplyError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApplyError::AlreadyExists { .. } => StatusCode::CONFLICT,
            ApplyError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
        };
        ApiError::new(status, error).hint("nothing was changed")
    }
}

impl From<WriteError> for ApiError {
    fn from(error: WriteError) -> ApiError {
        match error {
            WriteError::Rejected(rejected) => rejected.into(),
            other => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, other)
                .hint("is a quorum of nodes up? retry with the same Idempotency-Key"),
        }
    }
}

impl From<ReadError> for ApiError {
    fn from(error: ReadError) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, error)
            .hint("is a quorum of nodes up? GET /v1/config?local=true reads this node's copy")
    }
}

impl From<MembershipError> for ApiError {
    fn from(error: MembershipError) -> ApiError {
        let status = match error {
            MembershipError::NoLeader(_) => StatusCode::SERVICE_UNAVAILABLE,
            MembershipError::NotCaughtUp { .. } => StatusCode::GATEWAY_TIMEOUT,
            MembershipError::Refused(_) => StatusCode::CONFLICT,
        };
        ApiError::new(status, error)
    }
}

impl From<MoveError> for ApiError {
    fn from(error: MoveError) -> ApiError {
        let status = match error {
            MoveError::UnknownVrid(_) | MoveError::NotARunner { .. } => StatusCode::NOT_FOUND,
            MoveError::AddressOwner { .. } => StatusCode::CONFLICT,
            MoveError::NotTaken { .. } => StatusCode::SERVICE_UNAVAILABLE,
            MoveError::Unsettled { .. } => StatusCode::GATEWAY_TIMEOUT,
        };
        ApiError::new(status, error)
            .hint("`fulcrumctl vip status` shows the VRIDs and their routers")
    }
}

impl From<BgpDrainError> for ApiError {
    fn from(error: BgpDrainError) -> ApiError {
        let status = match error {
            BgpDrainError::NotAMember(_) => StatusCode::NOT_FOUND,
            BgpDrainError::NoBgp(_) => StatusCode::CONFLICT,
            BgpDrainError::Unreachable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, error)
            .hint("`fulcrumctl status` shows the nodes and their BGP column")
    }
}

type Reply = Result<HttpResponse, ApiError>;

/// The admin API of one node.
pub struct Admin {
    /// The node as a member: status, cluster views, VIP moves.
    node: Arc<Node>,
    /// The configuration: reads, writes, membership.
    store: Arc<ConfigStore>,
    /// The data plane, for its metrics.
    plane: Arc<DataPlane>,
    /// The bearer token every route but `/healthz` wants.
    token: Vec<u8>,
    /// A token that may only read (GET, `/metrics` included).
    read_token: Option<Vec<u8>>,
    /// Failed logins' log lines, at most one a second.
    refused_logins: RefusalLog,
}

/// One call, as far as handlers care.
struct Call {
    method: Method,
    /// Percent-decoded path segments.
    segments: Vec<String>,
    query: HashMap<String, String>,
    actor: String,
    peer: SocketAddr,
    idempotency_key: Option<IdempotencyKey>,
    body: Bytes,
}

impl Call {
    /// The path, as the audit log shows it.
    fn path(&self) -> String {
        format!("/{}", self.segments.join("/"))
    }
}

impl Admin {
    /// The API of `node` with its store and data plane, guarded by `token`, and by
    /// `read_token` for calls that only read.
    pub fn new(
        node: Arc<Node>,
        store: Arc<ConfigStore>,
        plane: Arc<DataPlane>,
        token: Vec<u8>,
        read_token: Option<Vec<u8>>,
    ) -> Arc<Admin> {
        let refused_logins = RefusalLog::default();
        Arc::new(Admin { node, store, plane, token, read_token, refused_logins })
    }

    /// Serves the API on `listener` (over TLS with `tls`) until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, tls: Option<EndpointTls>) {
        let handler = move |peer, request| {
            let admin = Arc::clone(&self);
            async move { admin.handle(peer, request).await }
        };
        super::serve(listener, "admin API", Arc::new(handler), tls).await;
    }

    async fn handle(&self, peer: SocketAddr, request: hyper::Request<Incoming>) -> HttpResponse {
        if request.method() == Method::GET && request.uri().path() == "/healthz" {
            return text(StatusCode::OK, "ok\n");
        }
        let call = match self.admit(peer, request).await {
            Ok(call) => call,
            Err(error) => return error_response(error),
        };
        // Before the change is made: a client gone before its answer still leaves a line.
        if call.method != Method::GET {
            audit(&call, "accepted", None, None);
        }
        match self.route(&call).await {
            Ok(response) => response,
            Err(error) => {
                if call.method != Method::GET {
                    audit(&call, "change refused", None, Some(&error));
                }
                error_response(error)
            }
        }
    }

    /// Checks the token and reads the call.
    async fn admit(
        &self,
        peer: SocketAddr,
        request: hyper::Request<Incoming>,
    ) -> Result<Call, ApiError> {
        let (parts, body) = request.into_parts();
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .unwrap_or_default();
        let reads_only = parts.method == Method::GET;
        let admin = bool::from(presented.ct_eq(&self.token));
        let reader = self.read_token.as_ref().is_some_and(|t| bool::from(presented.ct_eq(t)));
        if reader && !admin && !reads_only {
            return Err(ApiError::new(StatusCode::FORBIDDEN, "this token may only read")
                .hint("changes need the cluster's admin token, not the read-only one"));
        }
        if !admin && !reader {
            let path = parts.uri.path();
            self.refused_logins.warn(|suppressed| {
                tracing::warn!(
                    target: "fulcrum::audit",
                    %peer,
                    path,
                    suppressed,
                    "refused: bad or missing token"
                );
            });
            return Err(ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong bearer token")
                .hint("pass the cluster's admin token with --token or FULCRUM_TOKEN"));
        }
        let segments = parts
            .uri
            .path()
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned())
            .collect();
        let query = parts
            .uri
            .query()
            .unwrap_or_default()
            .split('&')
            .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
            .filter(|(k, _)| !k.is_empty())
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let header_text = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
        let idempotency_key = header_text(HEADER_IDEMPOTENCY_KEY).map(parse_key).transpose()?;
        let actor = header_text(HEADER_ACTOR).unwrap_or("unknown").chars().take(64).collect();
        let body =
            tokio::time::timeout(super::BODY_TIMEOUT, Limited::new(body, MAX_BODY_BYTES).collect())
                .await
                .map_err(|_| {
                    ApiError::new(
                        StatusCode::REQUEST_TIMEOUT,
                        format!("the body did not arrive within {:?}", super::BODY_TIMEOUT),
                    )
                })?
                .map_err(|e| ApiError::bad_request(format!("cannot read the body: {e}")))?
                .to_bytes();
        Ok(Call { method: parts.method, segments, query, actor, peer, idempotency_key, body })
    }

    async fn route(&self, call: &Call) -> Reply {
        let segments: Vec<&str> = call.segments.iter().map(String::as_str).collect();
        let node = &self.node;
        match (&call.method, segments.as_slice()) {
            (&Method::GET, ["readyz"]) => Ok(match node.not_ready() {
                None => text(StatusCode::OK, "ready\n"),
                Some(why) => text(StatusCode::SERVICE_UNAVAILABLE, &format!("not ready: {why}\n")),
            }),
            (&Method::GET, ["metrics"]) => {
                Ok(metrics(self.plane.metrics().await + &node.metrics()))
            }
            (&Method::GET, ["v1", "status"]) => json(StatusCode::OK, &node.cluster_status().await),
            (&Method::GET, ["v1", "node"]) => json(StatusCode::OK, &node.status()),
            (&Method::GET, ["v1", "config"]) => match call.query.get("local").map(String::as_str) {
                Some("true") => json(StatusCode::OK, &*self.store.config()),
                _ => json(StatusCode::OK, &*self.store.linearizable_config().await?),
            },
            (&Method::POST, ["v1", "config"]) => self.apply_file(call).await,
            (&Method::GET, ["v1", "certificates"]) => {
                let config = self.store.linearizable_config().await?;
                json(StatusCode::OK, &certificate_statuses(&config))
            }
            (&Method::GET, ["v1", "certificates", name]) => {
                let config = self.store.linearizable_config().await?;
                let status = certificate_statuses(&config)
                    .into_iter()
                    .find(|s| s.listener == *name)
                    .ok_or_else(|| {
                        ApiError::new(
                            StatusCode::NOT_FOUND,
                            format!("listener '{name}' does not get its certificate by ACME"),
                        )
                    })?;
                json(StatusCode::OK, &status)
            }
            (&Method::POST, ["v1", "certificates", name, "renew"]) => {
                let renew = AcmeCommand::RequestRenewal(name_of(name)?);
                self.write(call, Command::Acme(renew)).await
            }
            (&Method::PUT, ["v1", "listeners", name]) => {
                let listener = named_body(call, name, |o: &Listener| &o.name)?;
                self.write(call, Command::PutListener(listener)).await
            }
            (&Method::DELETE, ["v1", "listeners", name]) => {
                self.write(call, Command::DeleteListener(name_of(name)?)).await
            }
            (&Method::PUT, ["v1", "listeners", listener, "routes", name]) => {
                let route = named_body(call, name, |o: &Route| &o.name)?;
                self.write(call, Command::PutRoute { listener: name_of(listener)?, route }).await
            }
            (&Method::DELETE, ["v1", "listeners", listener, "routes", name]) => {
                let command =
                    Command::DeleteRoute { listener: name_of(listener)?, route: name_of(name)? };
                self.write(call, command).await
            }
            (&Method::PUT, ["v1", "pools", name]) => {
                let pool = named_body(call, name, |o: &Pool| &o.name)?;
                self.write(call, Command::PutPool(pool)).await
            }
            (&Method::DELETE, ["v1", "pools", name]) => {
                self.write(call, Command::DeletePool(name_of(name)?)).await
            }
            (&Method::POST, ["v1", "pools", pool, "backends"]) => {
                let backend: Backend = body(call)?;
                self.write(call, Command::AddBackend { pool: name_of(pool)?, backend }).await
            }
            (&Method::DELETE, ["v1", "pools", pool, "backends", address]) => {
                let (pool, address) = backend_of(pool, address)?;
                self.write(call, Command::RemoveBackend { pool, address }).await
            }
            (&Method::PUT, ["v1", "pools", pool, "backends", address, "state"]) => {
                let (pool, address) = backend_of(pool, address)?;
                let state = body::<BackendStateChange>(call)?.state;
                self.write(call, Command::SetBackendState { pool, address, state }).await
            }
            (&Method::PUT, ["v1", "pools", pool, "backends", address, "weight"]) => {
                let (pool, address) = backend_of(pool, address)?;
                let weight = body::<BackendWeightChange>(call)?.weight;
                self.write(call, Command::SetBackendWeight { pool, address, weight }).await
            }
            (&Method::PUT, ["v1", "ratelimits", name]) => {
                let policy = named_body(call, name, |o: &RateLimitPolicy| &o.name)?;
                self.write(call, Command::PutRateLimit(policy)).await
            }
            (&Method::DELETE, ["v1", "ratelimits", name]) => {
                self.write(call, Command::DeleteRateLimit(name_of(name)?)).await
            }
            (&Method::GET, ["v1", "members"]) => json(StatusCode::OK, &node.members()),
            (&Method::POST, ["v1", "members"]) => {
                let member: AddMember = body(call)?;
                self.store.add_learner(member.id, &member.address).await?;
                let what = format!("learner {} at {} added", member.id, member.address);
                audit(call, &what, None, None);
                json(StatusCode::OK, &node.members())
            }
            (&Method::POST, ["v1", "members", id, "promote"]) => {
                let id = number::<u64>(id, "node id")?;
                if !node.members().members.iter().any(|m| m.id == id && !m.voter) {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        format!("node {id} is not a learner"),
                    )
                    .hint("`fulcrumctl member list` shows the members; add it first with `member add`"));
                }
                self.store.promote(id, CATCH_UP).await?;
                audit(call, &format!("node {id} promoted to voter"), None, None);
                json(StatusCode::OK, &node.members())
            }
            (&Method::DELETE, ["v1", "members", id]) => {
                let id = number::<u64>(id, "node id")?;
                self.store.remove_node(id).await?;
                audit(call, &format!("node {id} removed"), None, None);
                json(StatusCode::OK, &node.members())
            }
            (&Method::POST, ["v1", "vips", vrid, "failover"]) => {
                let vrid = number::<u8>(vrid, "VRID")?;
                let failover: Failover = body(call)?;
                let done = node.move_vip(vrid, failover.to).await?;
                let what = match failover.to {
                    Some(to) => format!("VRID {vrid} moved to {to}; master now {:?}", done.master),
                    None => format!("VRID {vrid} move lifted; master now {:?}", done.master),
                };
                audit(call, &what, None, None);
                json(StatusCode::OK, &done)
            }
            (&Method::POST, ["v1", "nodes", id, "drain"]) => {
                let id = number::<u64>(id, "node id")?;
                let drain: NodeDrain = body(call)?;
                node.drain_bgp(id, drain.drain).await?;
                let what = match drain.drain {
                    true => format!("node {id} drained: BGP VIPs withdrawn"),
                    false => format!("node {id} drain lifted: BGP VIPs announced"),
                };
                audit(call, &what, None, None);
                json(StatusCode::OK, &drain)
            }
            (&Method::GET, ["v1", "revisions", revision, "wait"]) => {
                let revision = number::<u64>(revision, "revision")?;
                let timeout = match call.query.get("timeout") {
                    Some(text) => fulcrum_model::duration::parse(text)
                        .map_err(|e| ApiError::bad_request(format!("timeout: {e}")))?
                        .min(MAX_WAIT),
                    None => DEFAULT_WAIT,
                };
                let propagation = node.wait_revision(revision, timeout).await;
                let status = match propagation.complete {
                    true => StatusCode::OK,
                    false => StatusCode::GATEWAY_TIMEOUT,
                };
                json(status, &propagation)
            }
            _ => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no route {} {}", call.method, call.path()),
            )
            .hint("the routes are listed in the documentation of fulcrum_model::api")),
        }
    }

    /// `POST /v1/config`: a whole cluster file, or with `dry_run=true` what it would change.
    async fn apply_file(&self, call: &Call) -> Reply {
        let text = std::str::from_utf8(&call.body)
            .map_err(|_| ApiError::bad_request("the cluster file is not UTF-8"))?;
        let spec = file::parse(text).map_err(|e| {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("invalid cluster file:\n{e}"))
                .hint("nothing was changed; `fulcrumctl validate -f FILE` checks a file offline")
        })?;
        if call.query.get("dry_run").is_some_and(|v| v == "true") {
            let current = self.store.linearizable_config().await?;
            let changes = fulcrum_model::diff::diff(&current.spec, &spec);
            return json(StatusCode::OK, &DryRun { revision: current.revision, changes });
        }
        self.write(call, Command::Apply(spec)).await
    }

    /// Proposes `command` and answers the revision that holds it.
    async fn write(&self, call: &Call, command: Command) -> Reply {
        let what = describe(&command);
        let request = Request { idempotency_key: call.idempotency_key, command };
        let revision = self.store.write(request).await?;
        audit(call, &what, Some(revision), None);
        json(StatusCode::OK, &Written { revision })
    }
}

/// One line of the audit log: who asked what, and what came of it.
fn audit(call: &Call, what: &str, revision: Option<u64>, refused: Option<&ApiError>) {
    tracing::info!(
        target: "fulcrum::audit",
        // Debug-formatted: a decoded newline in a path or an actor cannot forge a line.
        actor = ?call.actor,
        peer = %call.peer,
        method = %call.method,
        path = ?call.path(),
        revision,
        status = refused.map(|e| e.status.as_u16()),
        error = refused.map(|e| e.body.error.as_str()),
        "{what}"
    );
}

/// A short account of a command, for the audit log.
fn describe(command: &Command) -> String {
    match command {
        Command::Apply(spec) => format!(
            "cluster file applied ({} listeners, {} pools, {} rate limits)",
            spec.listeners.len(),
            spec.pools.len(),
            spec.rate_limits.len()
        ),
        Command::PutListener(l) => format!("listener {} set", l.name),
        Command::DeleteListener(name) => format!("listener {name} deleted"),
        Command::PutRoute { listener, route } => format!("route {listener}/{} set", route.name),
        Command::DeleteRoute { listener, route } => format!("route {listener}/{route} deleted"),
        Command::PutPool(p) => format!("pool {} set", p.name),
        Command::DeletePool(name) => format!("pool {name} deleted"),
        Command::AddBackend { pool, backend } => {
            format!("backend {pool}/{} added", backend.address)
        }
        Command::RemoveBackend { pool, address } => format!("backend {pool}/{address} removed"),
        Command::SetBackendState { pool, address, state } => {
            format!("backend {pool}/{address} set {state:?}")
        }
        Command::SetBackendWeight { pool, address, weight } => {
            format!("backend {pool}/{address} weight {weight}")
        }
        Command::PutRateLimit(p) => format!("rate limit {} set", p.name),
        Command::DeleteRateLimit(name) => format!("rate limit {name} deleted"),
        Command::Acme(acme) => match acme {
            AcmeCommand::PutAccount(a) => format!("ACME account stored for {}", a.directory),
            AcmeCommand::UpdateAccount(a) => format!("ACME account updated for {}", a.directory),
            AcmeCommand::ResealCertificate { listener, .. } => {
                format!("ACME certificate key of listener {listener} resealed")
            }
            AcmeCommand::PutOrder(o) => format!("ACME order of listener {} stored", o.listener),
            AcmeCommand::PutChallenges { listener, answers } => {
                format!("{} ACME challenge answers of listener {listener} stored", answers.len())
            }
            AcmeCommand::Issued(c) => format!("ACME certificate of listener {} stored", c.listener),
            AcmeCommand::RequestRenewal(listener) => {
                format!("ACME renewal of listener {listener} requested")
            }
        },
    }
}

fn body<T: DeserializeOwned>(call: &Call) -> Result<T, ApiError> {
    let deserializer = &mut serde_json::Deserializer::from_slice(&call.body);
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let field = e.path().to_string();
        ApiError::bad_request(format!("invalid JSON body at `{field}`: {}", e.inner()))
            .hint("nothing was changed")
    })
}

fn name_of(text: &str) -> Result<Name, ApiError> {
    Name::from_str(text).map_err(|e| ApiError::bad_request(format!("invalid name {text:?}: {e}")))
}

/// The body of a `PUT` to a named object, which must carry the name its path gives.
fn named_body<T: DeserializeOwned>(
    call: &Call,
    in_path: &str,
    name: impl Fn(&T) -> &Name,
) -> Result<T, ApiError> {
    let object: T = body(call)?;
    match in_path == name(&object).as_str() {
        true => Ok(object),
        false => Err(ApiError::bad_request(format!(
            "the path names {in_path:?} but the body names {:?}",
            name(&object).as_str()
        ))),
    }
}

/// The pool and backend address a backend's path names.
fn backend_of(pool: &str, address: &str) -> Result<(Name, SocketAddr), ApiError> {
    Ok((name_of(pool)?, address_of(address)?))
}

fn address_of(text: &str) -> Result<SocketAddr, ApiError> {
    SocketAddr::from_str(text).map_err(|_| {
        ApiError::bad_request(format!("invalid backend address {text:?}"))
            .hint("write ip:port, e.g. 198.18.0.21:8080 or [2001:db8::1]:8080")
    })
}

fn number<T: FromStr>(text: &str, what: &str) -> Result<T, ApiError> {
    text.parse().map_err(|_| ApiError::bad_request(format!("invalid {what} {text:?}")))
}

fn parse_key(text: &str) -> Result<IdempotencyKey, ApiError> {
    let invalid = || ApiError::bad_request("Idempotency-Key must be 32 hexadecimal digits");
    if text.len() != 32 {
        return Err(invalid());
    }
    let mut key = [0u8; 16];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2).ok_or_else(invalid)?, 16)
            .map_err(|_| invalid())?;
    }
    Ok(IdempotencyKey(key))
}

fn with_type(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> HttpResponse {
    let mut response = hyper::Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn text(status: StatusCode, body: &str) -> HttpResponse {
    with_type(status, "text/plain; charset=utf-8", body.to_owned())
}

fn metrics(body: String) -> HttpResponse {
    with_type(StatusCode::OK, CONTENT_TYPE, body)
}

fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Reply {
    let mut body = serde_json::to_vec(value).map_err(|e| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode the answer: {e}"))
    })?;
    body.push(b'\n');
    Ok(with_type(status, "application/json", body))
}

fn error_response(error: ApiError) -> HttpResponse {
    json(error.status, &error.body).unwrap_or_else(|_| text(error.status, &error.body.error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_are_32_hex_digits() {
        let key = parse_key("000102030405060708090a0b0c0d0eff").unwrap();
        assert_eq!(key.0[1], 1);
        assert_eq!(key.0[15], 0xff);
        assert!(parse_key("00").is_err());
        assert!(parse_key("zz0102030405060708090a0b0c0d0eff").is_err());
        assert!(
            parse_key("é00102030405060708090a0b0c0d0e").is_err(),
            "multibyte text never panics"
        );
    }

    #[test]
    fn model_rejections_map_to_statuses() {
        let missing = ApplyError::NotFound {
            kind: fulcrum_model::command::ObjectKind::Pool,
            name: "web".into(),
        };
        assert_eq!(ApiError::from(missing).status, StatusCode::NOT_FOUND);
        let taken = ApplyError::AlreadyExists {
            kind: fulcrum_model::command::ObjectKind::Pool,
            name: "web".into(),
        };
        assert_eq!(ApiError::from(taken).status, StatusCode::CONFLICT);
    }

    #[test]
    fn audit_lines_cannot_be_forged_with_a_decoded_newline() {
        #[derive(Clone, Default)]
        struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Captured {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber =
            tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
        let call = Call {
            method: Method::DELETE,
            segments: vec!["pools".into(), "web\n2026-12-06 INFO fulcrum::audit: forged".into()],
            query: HashMap::new(),
            actor: "mallory\nroot".into(),
            peer: SocketAddr::from(([198, 18, 0, 9], 40000)),
            idempotency_key: None,
            body: Bytes::new(),
        };
        tracing::subscriber::with_default(subscriber, || audit(&call, "accepted", None, None));
        let output = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert_eq!(output.lines().count(), 1, "{output}");
        assert!(output.contains(r#"path="/pools/web\n2026"#), "{output}");
        assert!(output.contains(r#"actor="mallory\nroot""#), "{output}");
    }
}
