//! The openraft type configuration and what travels through the log: a [`Request`] carrying
//! one fulcrum-model [`Command`], and the [`Response`] its application gives.

use std::io::Cursor;
use std::sync::Arc;

use fulcrum_model::{ApplyError, Command, Config, Revision};
use serde::{Deserialize, Serialize};

/// A node's id in the cluster.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Fulcrum's Raft types: requests carry commands, nodes are known by their RPC address.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The Raft handle of a Fulcrum node.
pub type Raft = openraft::Raft<TypeConfig>;

/// Identifies one write across retries, so a write retried after a timeout or a leader change
/// applies once: the client picks it (16 random bytes) and reuses it for every retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct IdempotencyKey(pub [u8; 16]);

/// One write in the Raft log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Set by clients that may retry; `None` applies every time it is committed.
    pub idempotency_key: Option<IdempotencyKey>,
    /// The change.
    pub command: Command,
}

/// What applying a [`Request`] gave: the new revision, or the model's reason for changing
/// nothing. A retried request gets the response of its first application.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// The revision after the change, or why it was rejected.
    pub result: Result<Revision, ApplyError>,
}

/// The applied configuration as the watch publishes it.
pub type Applied = (Revision, Arc<Config>);
