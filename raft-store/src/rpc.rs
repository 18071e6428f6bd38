//! What Raft RPC requests look like on the wire: their paths, and the authentication every
//! request carries. Bodies are encoded with `fulcrum_model::codec` (bincode 2 behind a format
//! version byte and a size limit) on both sides.
//!
//! Each request's head names the cluster and the node it is meant for, the time it was sent
//! and a nonce, and carries the body's length and SHA-256; an HMAC-SHA256 over all of those,
//! keyed by the cluster secret, signs the head. So the receiver authenticates a request
//! before it reads a byte of its body (nobody without the secret can make a node buffer
//! anything), then checks the body against the signed digest. A head older or newer than
//! [`FRESHNESS`] is refused, and so is a nonce seen within it: a captured request cannot be
//! replayed. The secret never crosses the network and signatures are compared in constant
//! time. Every refusal has its own reason, counted for metrics.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fulcrum_model::codec::{self, CodecError};
use hmac::{Hmac, Mac};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::types::{NodeId, Request, TypeConfig};

/// Append entries.
pub const PATH_APPEND: &str = "/raft/append";
/// Request a vote.
pub const PATH_VOTE: &str = "/raft/vote";
/// A chunk of a snapshot.
pub const PATH_SNAPSHOT: &str = "/raft/snapshot";
/// A write forwarded by a follower to the leader.
pub const PATH_WRITE: &str = "/raft/write";
/// A linearizable read of the configuration, served by the leader.
pub const PATH_READ: &str = "/raft/read";
/// A membership change forwarded by a follower to the leader.
pub const PATH_MEMBERS: &str = "/raft/members";
/// A request for the rest of the node (status, VRRP moves), answered by its peer handler.
pub const PATH_PEER: &str = "/raft/peer";

/// A membership change, as forwarded to the leader.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum MemberChange {
    /// Add a learner.
    AddLearner {
        /// Its id.
        id: NodeId,
        /// Its RPC address.
        address: String,
    },
    /// Make a caught-up learner a voter.
    Promote {
        /// Its id.
        id: NodeId,
        /// How long it may take to catch up.
        catch_up: Duration,
    },
    /// Remove a voter or learner.
    Remove {
        /// Its id.
        id: NodeId,
    },
}

/// A request's body, decoded by the path it was sent to.
#[derive(Debug)]
pub enum RpcRequest {
    /// [`PATH_APPEND`].
    Append(AppendEntriesRequest<TypeConfig>),
    /// [`PATH_VOTE`].
    Vote(VoteRequest<NodeId>),
    /// [`PATH_SNAPSHOT`].
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    /// [`PATH_WRITE`].
    Write(Request),
    /// [`PATH_READ`].
    Read,
    /// [`PATH_MEMBERS`].
    Members(MemberChange),
    /// [`PATH_PEER`]: bytes for the node's peer handler.
    Peer(Vec<u8>),
}

/// Why a request's body was not decoded.
#[derive(Debug, thiserror::Error)]
pub enum RpcDecodeError {
    /// No request is served at this path.
    #[error("no Raft RPC is served at {0:?}")]
    UnknownPath(String),
    /// The body is not what the path expects.
    #[error("malformed RPC body: {0}")]
    Body(#[from] CodecError),
}

impl RpcRequest {
    /// Decodes `body` as the request `path` takes; any bytes give a request or an error.
    pub fn decode(path: &str, body: &[u8]) -> Result<RpcRequest, RpcDecodeError> {
        Ok(match path {
            PATH_APPEND => RpcRequest::Append(codec::decode(body)?),
            PATH_VOTE => RpcRequest::Vote(codec::decode(body)?),
            PATH_SNAPSHOT => RpcRequest::Snapshot(codec::decode(body)?),
            PATH_WRITE => RpcRequest::Write(codec::decode(body)?),
            PATH_READ => {
                codec::decode::<()>(body)?;
                RpcRequest::Read
            }
            PATH_MEMBERS => RpcRequest::Members(codec::decode(body)?),
            PATH_PEER => RpcRequest::Peer(codec::decode(body)?),
            other => return Err(RpcDecodeError::UnknownPath(other.to_owned())),
        })
    }
}

/// The cluster's name.
pub const HEADER_CLUSTER: &str = "x-fulcrum-cluster";
/// The id of the node the request is meant for.
pub const HEADER_TARGET: &str = "x-fulcrum-target";
/// When the request was sent: milliseconds since the Unix epoch, by the sender's clock.
pub const HEADER_SENT: &str = "x-fulcrum-sent";
/// A random number, never sent twice.
pub const HEADER_NONCE: &str = "x-fulcrum-nonce";
/// Hex SHA-256 of the body.
pub const HEADER_BODY_DIGEST: &str = "x-fulcrum-body-sha256";
/// Hex HMAC-SHA256 of cluster, target, path, sent, nonce, body length and body digest.
pub const HEADER_SIGNATURE: &str = "x-fulcrum-signature";

/// The shortest secret accepted: 128 bits.
pub const MIN_SECRET_BYTES: usize = 16;

/// How far a request's sending time may be from the receiver's clock, either way: the
/// window a captured request could be replayed in, were nonces not remembered for as long,
/// and the clock difference between nodes that is tolerated (NTP keeps it to milliseconds).
pub const FRESHNESS: Duration = Duration::from_secs(30);

/// Nonces remembered at most; past it, requests are refused until old ones expire. Peers
/// send a few hundred requests a second at most, so only a flood of valid requests (from a
/// holder of the secret) fills it.
const MAX_REMEMBERED_NONCES: usize = 1 << 20;

/// Why a request was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// A header is missing or not text.
    #[error("missing or malformed header {0}")]
    MissingHeader(&'static str),
    /// Sent by a node of another cluster.
    #[error("request for cluster {got:?}, this node is in cluster {expected:?}")]
    WrongCluster {
        /// This node's cluster.
        expected: String,
        /// The request's.
        got: String,
    },
    /// Meant for another node.
    #[error("request for node {got}, this is node {expected}")]
    WrongTarget {
        /// This node's id.
        expected: NodeId,
        /// The request's target.
        got: String,
    },
    /// Signed with another secret, or altered on the way.
    #[error("bad signature: the cluster secrets differ, or the request was altered")]
    BadSignature,
    /// Sent too long ago or too far ahead: an old capture, or clocks that disagree.
    #[error(
        "the request was sent {skew_ms} ms from this node's clock, more than the {} s allowed: a replay, or the nodes' clocks differ (check NTP)",
        FRESHNESS.as_secs()
    )]
    Stale {
        /// Sender's time minus this node's, in milliseconds.
        skew_ms: i64,
    },
    /// The nonce was seen before: a replay.
    #[error("the request's nonce was already used: a replay")]
    Replayed,
    /// The body's length or digest differs from the signed ones.
    #[error("the body does not match the signed length and digest")]
    BodyMismatch,
}

/// Refused requests, by reason, for metrics.
#[derive(Debug, Default)]
pub struct AuthCounters {
    /// [`AuthError::MissingHeader`].
    pub missing_header: AtomicU64,
    /// [`AuthError::WrongCluster`].
    pub wrong_cluster: AtomicU64,
    /// [`AuthError::WrongTarget`].
    pub wrong_target: AtomicU64,
    /// [`AuthError::BadSignature`].
    pub bad_signature: AtomicU64,
    /// [`AuthError::Stale`].
    pub stale: AtomicU64,
    /// [`AuthError::Replayed`].
    pub replayed: AtomicU64,
    /// [`AuthError::BodyMismatch`].
    pub body_mismatch: AtomicU64,
}

impl AuthCounters {
    /// Counts one refusal.
    pub fn record(&self, error: &AuthError) {
        let counter = match error {
            AuthError::MissingHeader(_) => &self.missing_header,
            AuthError::WrongCluster { .. } => &self.wrong_cluster,
            AuthError::WrongTarget { .. } => &self.wrong_target,
            AuthError::BadSignature => &self.bad_signature,
            AuthError::Stale { .. } => &self.stale,
            AuthError::Replayed => &self.replayed,
            AuthError::BodyMismatch => &self.body_mismatch,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn snapshot(&self) -> AuthCounts {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        AuthCounts {
            missing_header: load(&self.missing_header),
            wrong_cluster: load(&self.wrong_cluster),
            wrong_target: load(&self.wrong_target),
            bad_signature: load(&self.bad_signature),
            stale: load(&self.stale),
            replayed: load(&self.replayed),
            body_mismatch: load(&self.body_mismatch),
        }
    }
}

/// A copy of [`AuthCounters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AuthCounts {
    /// Requests without the headers.
    pub missing_header: u64,
    /// Requests from another cluster.
    pub wrong_cluster: u64,
    /// Requests meant for another node.
    pub wrong_target: u64,
    /// Requests with a bad signature.
    pub bad_signature: u64,
    /// Requests sent outside the freshness window.
    pub stale: u64,
    /// Requests whose nonce was used before.
    pub replayed: u64,
    /// Requests whose body differs from the signed digest.
    pub body_mismatch: u64,
}

/// A secret shorter than [`MIN_SECRET_BYTES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the cluster secret has {0} bytes; it needs at least {MIN_SECRET_BYTES}")]
pub struct WeakSecret(pub usize);

/// The headers that authenticate one request, as `(name, value)`.
pub type SignedHead = [(&'static str, String); 6];

/// The cluster's name and secret: signs outgoing requests and checks incoming ones.
#[derive(Clone)]
pub struct ClusterAuth {
    cluster: Arc<str>,
    /// Keyed once; each request clones it rather than keying again.
    keyed: Hmac<Sha256>,
}

impl std::fmt::Debug for ClusterAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("ClusterAuth").field("cluster", &self.cluster).finish_non_exhaustive()
    }
}

/// What a verified head promises about its body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifiedHead {
    /// The body's length.
    pub length: u64,
    digest: [u8; 32],
}

impl VerifiedHead {
    /// Checks that `body` is the one the head was signed for.
    pub fn check_body(&self, body: &[u8]) -> Result<(), AuthError> {
        let matches = body.len() as u64 == self.length && Sha256::digest(body)[..] == self.digest;
        if matches { Ok(()) } else { Err(AuthError::BodyMismatch) }
    }
}

impl ClusterAuth {
    /// Auth for cluster `cluster` with `secret`.
    pub fn new(cluster: &str, secret: &[u8]) -> Result<ClusterAuth, WeakSecret> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(WeakSecret(secret.len()));
        }
        let keyed =
            <Hmac<Sha256> as Mac>::new_from_slice(secret).map_err(|_| WeakSecret(secret.len()))?;
        Ok(ClusterAuth { cluster: cluster.into(), keyed })
    }

    /// The cluster's name.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The authenticating headers of a request to `target` at `path` with `body`, sent at
    /// `sent_ms` (milliseconds since the Unix epoch) with a `nonce` never used before.
    pub fn sign(
        &self,
        target: NodeId,
        path: &str,
        body: &[u8],
        sent_ms: u64,
        nonce: u64,
    ) -> SignedHead {
        let digest = Sha256::digest(body);
        let (target, sent, nonce) =
            (target.to_string(), sent_ms.to_string(), hex(&nonce.to_be_bytes()));
        let head = Head {
            cluster: &self.cluster,
            target: &target,
            path,
            sent: &sent,
            nonce: &nonce,
            length: body.len() as u64,
            digest: &digest,
        };
        let signature = hex(&self.mac(&head).finalize().into_bytes());
        [
            (HEADER_CLUSTER, self.cluster.to_string()),
            (HEADER_TARGET, target),
            (HEADER_SENT, sent),
            (HEADER_NONCE, nonce),
            (HEADER_BODY_DIGEST, hex(&digest)),
            (HEADER_SIGNATURE, signature),
        ]
    }

    /// Checks a request's head, its headers as `name -> value` and its declared body
    /// `length`, against this node (`local`) at `now_ms`; the nonce is checked and
    /// remembered by `nonces` once the signature holds, so forged requests fill nothing.
    pub fn verify_head<'a>(
        &self,
        header: impl Fn(&'static str) -> Option<&'a str>,
        local: NodeId,
        path: &str,
        length: u64,
        now_ms: u64,
        nonces: &mut NonceMemory,
    ) -> Result<VerifiedHead, AuthError> {
        let get = |name| header(name).ok_or(AuthError::MissingHeader(name));
        let cluster = get(HEADER_CLUSTER)?;
        let target = get(HEADER_TARGET)?;
        let sent = get(HEADER_SENT)?;
        let nonce = get(HEADER_NONCE)?;
        let digest: [u8; 32] = decode_hex(get(HEADER_BODY_DIGEST)?)
            .and_then(|d| d.try_into().ok())
            .ok_or(AuthError::MissingHeader(HEADER_BODY_DIGEST))?;
        let signature = decode_hex(get(HEADER_SIGNATURE)?).ok_or(AuthError::BadSignature)?;
        let head = Head { cluster, target, path, sent, nonce, length, digest: &digest };
        // The signature first: an unauthenticated sender learns nothing about this node.
        self.mac(&head).verify_slice(&signature).map_err(|_| AuthError::BadSignature)?;
        if cluster != &*self.cluster {
            return Err(AuthError::WrongCluster {
                expected: self.cluster.to_string(),
                got: cluster.to_owned(),
            });
        }
        if target != local.to_string() {
            return Err(AuthError::WrongTarget { expected: local, got: target.to_owned() });
        }
        let sent_ms: u64 = sent.parse().map_err(|_| AuthError::MissingHeader(HEADER_SENT))?;
        let nonce = decode_hex(nonce)
            .and_then(|n| <[u8; 8]>::try_from(n).ok())
            .map(u64::from_be_bytes)
            .ok_or(AuthError::MissingHeader(HEADER_NONCE))?;
        nonces.admit(nonce, sent_ms, now_ms)?;
        Ok(VerifiedHead { length, digest })
    }

    fn mac(&self, head: &Head<'_>) -> Hmac<Sha256> {
        let mut mac = self.keyed.clone();
        // Lengths first, so no two different tuples sign the same bytes.
        for part in [head.cluster, head.target, head.path, head.sent, head.nonce] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        mac.update(&head.length.to_be_bytes());
        mac.update(head.digest);
        mac
    }
}

/// The signed fields of a request's head, as sent.
struct Head<'a> {
    cluster: &'a str,
    target: &'a str,
    path: &'a str,
    sent: &'a str,
    nonce: &'a str,
    length: u64,
    digest: &'a [u8],
}

/// The nonces of requests accepted within the freshness window: a nonce seen again is a
/// replay. Entries leave once their request is too old to be accepted anyway.
#[derive(Debug, Default)]
pub struct NonceMemory {
    seen: HashSet<u64>,
    /// (sent_ms, nonce) in the order accepted.
    order: VecDeque<(u64, u64)>,
}

impl NonceMemory {
    /// Accepts a request sent at `sent_ms` with `nonce` if it is fresh at `now_ms` and the
    /// nonce is new, and remembers the nonce.
    pub fn admit(&mut self, nonce: u64, sent_ms: u64, now_ms: u64) -> Result<(), AuthError> {
        let window = FRESHNESS.as_millis() as u64;
        let skew_ms = i64::try_from(sent_ms)
            .unwrap_or(i64::MAX)
            .saturating_sub(i64::try_from(now_ms).unwrap_or(i64::MAX));
        if skew_ms.unsigned_abs() > window {
            return Err(AuthError::Stale { skew_ms });
        }
        while let Some(&(sent, old)) = self.order.front() {
            if sent.saturating_add(window) >= now_ms {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&old);
        }
        if self.seen.len() >= MAX_REMEMBERED_NONCES || !self.seen.insert(nonce) {
            return Err(AuthError::Replayed);
        }
        self.order.push_back((sent_ms, nonce));
        Ok(())
    }
}

/// Milliseconds since the Unix epoch now, by this node's clock (0 if it is set before 1970).
pub fn unix_ms(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| text.get(i..i + 2).and_then(|pair| u8::from_str_radix(pair, 16).ok()))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const NOW: u64 = 1_800_000_000_000;

    fn verify(
        auth: &ClusterAuth,
        headers: &[(&'static str, String)],
        body: &[u8],
        nonces: &mut NonceMemory,
    ) -> Result<(), AuthError> {
        let lookup =
            |name| headers.iter().find(|(n, _)| *n == name).map(|(_, value)| value.as_str());
        auth.verify_head(lookup, 2, PATH_APPEND, body.len() as u64, NOW, nonces)?.check_body(body)
    }

    fn signed(auth: &ClusterAuth, target: NodeId, body: &[u8], nonce: u64) -> SignedHead {
        auth.sign(target, PATH_APPEND, body, NOW, nonce)
    }

    #[test]
    fn a_signed_request_verifies_once() {
        let auth = ClusterAuth::new("prod", SECRET).unwrap();
        let mut nonces = NonceMemory::default();
        let head = signed(&auth, 2, b"body", 7);
        assert_eq!(verify(&auth, &head, b"body", &mut nonces), Ok(()));
        assert_eq!(verify(&auth, &head, b"body", &mut nonces), Err(AuthError::Replayed));
        let next = signed(&auth, 2, b"body", 8);
        assert_eq!(verify(&auth, &next, b"body", &mut nonces), Ok(()));
    }

    #[test]
    fn each_mismatch_is_its_own_error() {
        let auth = ClusterAuth::new("prod", SECRET).unwrap();
        let other_secret = ClusterAuth::new("prod", b"another secret of enough bytes").unwrap();
        let other_cluster = ClusterAuth::new("staging", SECRET).unwrap();
        let mut nonces = NonceMemory::default();

        let head = signed(&other_secret, 2, b"body", 1);
        assert_eq!(verify(&auth, &head, b"body", &mut nonces), Err(AuthError::BadSignature));

        // Same length, other bytes: the head verifies, the body does not.
        let head = signed(&auth, 2, b"body", 2);
        assert_eq!(verify(&auth, &head, b"bodz", &mut nonces), Err(AuthError::BodyMismatch));
        // Another length changes the signed head itself.
        let head = signed(&auth, 2, b"body", 3);
        assert_eq!(verify(&auth, &head, b"altered", &mut nonces), Err(AuthError::BadSignature));

        let head = signed(&other_cluster, 2, b"body", 4);
        assert!(matches!(
            verify(&auth, &head, b"body", &mut nonces),
            Err(AuthError::WrongCluster { .. })
        ));

        let head = signed(&auth, 3, b"body", 5);
        assert_eq!(
            verify(&auth, &head, b"body", &mut nonces),
            Err(AuthError::WrongTarget { expected: 2, got: "3".into() })
        );

        assert_eq!(
            verify(&auth, &[], b"body", &mut nonces),
            Err(AuthError::MissingHeader(HEADER_CLUSTER))
        );
        let mut head = signed(&auth, 2, b"body", 6);
        head[5].1 = "zz".into();
        assert_eq!(verify(&auth, &head, b"body", &mut nonces), Err(AuthError::BadSignature));
    }

    #[test]
    fn a_forged_request_leaves_no_nonce_behind() {
        let auth = ClusterAuth::new("prod", SECRET).unwrap();
        let forger = ClusterAuth::new("prod", b"a guessed secret, long enough").unwrap();
        let mut nonces = NonceMemory::default();
        let forged = signed(&forger, 2, b"body", 9);
        assert_eq!(verify(&auth, &forged, b"body", &mut nonces), Err(AuthError::BadSignature));
        assert_eq!(verify(&auth, &signed(&auth, 2, b"body", 9), b"body", &mut nonces), Ok(()));
    }

    #[test]
    fn requests_outside_the_window_are_stale_and_old_nonces_are_forgotten() {
        let window = FRESHNESS.as_millis() as u64;
        let mut nonces = NonceMemory::default();
        assert_eq!(nonces.admit(1, NOW - window, NOW), Ok(()));
        assert_eq!(nonces.admit(2, NOW + window, NOW), Ok(()));
        assert_eq!(
            nonces.admit(3, NOW - window - 1, NOW),
            Err(AuthError::Stale { skew_ms: -(window as i64) - 1 })
        );
        assert_eq!(
            nonces.admit(4, NOW + window + 1, NOW),
            Err(AuthError::Stale { skew_ms: window as i64 + 1 })
        );
        assert_eq!(nonces.admit(1, NOW, NOW), Err(AuthError::Replayed));
        // Once nonce 1's request could no longer be accepted, it is forgotten.
        assert_eq!(nonces.admit(5, NOW + 1, NOW + 1), Ok(()));
        assert!(!nonces.seen.contains(&1) && nonces.seen.contains(&2));
        assert_eq!(nonces.order.len(), nonces.seen.len());
    }

    #[test]
    fn short_secrets_are_refused() {
        assert_eq!(ClusterAuth::new("prod", b"short").unwrap_err(), WeakSecret(5));
    }

    #[test]
    fn the_secret_is_never_printed() {
        let auth = ClusterAuth::new("prod", SECRET).unwrap();
        assert!(!format!("{auth:?}").contains("0123456789"));
    }
}
