//! What Raft RPC requests look like on the wire: their paths, and the authentication every
//! request carries. Bodies are encoded with `fulcrum_model::codec` (bincode 2 behind a format
//! version byte and a size limit) on both sides.
//!
//! Each request names the cluster and the node it is meant for, and is signed with
//! HMAC-SHA256 over those, the path and the body, keyed by the cluster secret; the secret never
//! crosses the network and signatures are compared in constant time. A node of another
//! cluster, a request meant for another node (say, after an address was reused) and a wrong
//! secret are each told apart, counted and refused before the body is decoded.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

use crate::types::NodeId;

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

/// The cluster's name.
pub const HEADER_CLUSTER: &str = "x-fulcrum-cluster";
/// The id of the node the request is meant for.
pub const HEADER_TARGET: &str = "x-fulcrum-target";
/// Hex HMAC-SHA256 of cluster, target, path and body.
pub const HEADER_SIGNATURE: &str = "x-fulcrum-signature";

/// The shortest secret accepted: 128 bits.
pub const MIN_SECRET_BYTES: usize = 16;

/// Why a request was refused before it was read.
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
}

impl AuthCounters {
    /// Counts one refusal.
    pub fn record(&self, error: &AuthError) {
        let counter = match error {
            AuthError::MissingHeader(_) => &self.missing_header,
            AuthError::WrongCluster { .. } => &self.wrong_cluster,
            AuthError::WrongTarget { .. } => &self.wrong_target,
            AuthError::BadSignature => &self.bad_signature,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn snapshot(&self) -> AuthCounts {
        AuthCounts {
            missing_header: self.missing_header.load(Ordering::Relaxed),
            wrong_cluster: self.wrong_cluster.load(Ordering::Relaxed),
            wrong_target: self.wrong_target.load(Ordering::Relaxed),
            bad_signature: self.bad_signature.load(Ordering::Relaxed),
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
}

/// A secret shorter than [`MIN_SECRET_BYTES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the cluster secret has {0} bytes; it needs at least {MIN_SECRET_BYTES}")]
pub struct WeakSecret(pub usize);

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

    /// The signature header's value for a request to `target` at `path` with `body`.
    pub fn sign(&self, target: NodeId, path: &str, body: &[u8]) -> String {
        let mac = self.mac(&self.cluster, &target.to_string(), path, body);
        mac.finalize().into_bytes().iter().map(|byte| format!("{byte:02x}")).collect()
    }

    /// Checks a request's headers, as `name -> value`, against this node (`local`).
    pub fn verify<'a>(
        &self,
        header: impl Fn(&'static str) -> Option<&'a str>,
        local: NodeId,
        path: &str,
        body: &[u8],
    ) -> Result<(), AuthError> {
        let get = |name| header(name).ok_or(AuthError::MissingHeader(name));
        let cluster = get(HEADER_CLUSTER)?;
        let target = get(HEADER_TARGET)?;
        let signature = get(HEADER_SIGNATURE)?;
        let signature = decode_hex(signature).ok_or(AuthError::BadSignature)?;
        // The signature first: an unauthenticated sender learns nothing about this node.
        self.mac(cluster, target, path, body)
            .verify_slice(&signature)
            .map_err(|_| AuthError::BadSignature)?;
        if cluster != &*self.cluster {
            return Err(AuthError::WrongCluster {
                expected: self.cluster.to_string(),
                got: cluster.to_owned(),
            });
        }
        if target != local.to_string() {
            return Err(AuthError::WrongTarget { expected: local, got: target.to_owned() });
        }
        Ok(())
    }

    fn mac(&self, cluster: &str, target: &str, path: &str, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.keyed.clone();
        // Lengths first, so no two different tuples sign the same bytes.
        for part in [cluster.as_bytes(), target.as_bytes(), path.as_bytes()] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.update(body);
        mac
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
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

    fn headers(cluster: &str, target: NodeId, signature: String) -> Vec<(&'static str, String)> {
        vec![
            (HEADER_CLUSTER, cluster.to_owned()),
            (HEADER_TARGET, target.to_string()),
            (HEADER_SIGNATURE, signature),
        ]
    }

    fn verify(
        auth: &ClusterAuth,
        headers: &[(&'static str, String)],
        body: &[u8],
    ) -> Result<(), AuthError> {
        let lookup =
            |name| headers.iter().find(|(n, _)| *n == name).map(|(_, value)| value.as_str());
        auth.verify(lookup, 2, PATH_APPEND, body)
    }

    #[test]
    fn a_signed_request_verifies() {
        let auth = ClusterAuth::new("prod", SECRET).unwrap();
        let signature = auth.sign(2, PATH_APPEND, b"body");
        assert_eq!(verify(&auth, &headers("prod", 2, signature), b"body"), Ok(()));
    }

    #[test]
    fn each_mismatch_is_its_own_error() {
        let auth = ClusterAuth::new("prod", SECRET).unwrap();
        let other_secret = ClusterAuth::new("prod", b"another secret of enough bytes").unwrap();
        let other_cluster = ClusterAuth::new("staging", SECRET).unwrap();

        let signature = other_secret.sign(2, PATH_APPEND, b"body");
        assert_eq!(
            verify(&auth, &headers("prod", 2, signature), b"body"),
            Err(AuthError::BadSignature)
        );

        let signature = auth.sign(2, PATH_APPEND, b"body");
        assert_eq!(
            verify(&auth, &headers("prod", 2, signature), b"altered"),
            Err(AuthError::BadSignature)
        );

        let signature = other_cluster.sign(2, PATH_APPEND, b"body");
        assert!(matches!(
            verify(&auth, &headers("staging", 2, signature), b"body"),
            Err(AuthError::WrongCluster { .. })
        ));

        let signature = auth.sign(3, PATH_APPEND, b"body");
        assert_eq!(
            verify(&auth, &headers("prod", 3, signature), b"body"),
            Err(AuthError::WrongTarget { expected: 2, got: "3".into() })
        );

        assert_eq!(verify(&auth, &[], b"body"), Err(AuthError::MissingHeader(HEADER_CLUSTER)));
        assert_eq!(
            verify(&auth, &headers("prod", 2, "zz".into()), b"body"),
            Err(AuthError::BadSignature)
        );
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
