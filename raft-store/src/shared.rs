//! What a node's RPC server serves, shared with its `ConfigStore`: the [`Shared`] state (Raft,
//! authentication, the applied state, the peer handler) and the leader's side of the writes,
//! linearizable reads and membership changes followers forward, with the messages those travel
//! as ([`Redirect`]) and the errors they give.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use fulcrum_model::Config;
use openraft::error::{CheckIsLeaderError, ClientWriteError, ForwardToLeader, RaftError};
use openraft::{BasicNode, ChangeMembers};
use serde::{Deserialize, Serialize};

use crate::port::RefusalLog;
use crate::rpc::{AuthCounters, ClusterAuth, MemberChange, NonceMemory};
use crate::state_machine::StateMachineStore;
use crate::types::{NodeId, Raft, Request, Response};

/// Why a membership change did not happen.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub enum MembershipError {
    /// No leader took the change in time.
    #[error("no leader took the membership change within {0:?}")]
    NoLeader(Duration),
    /// The learner did not catch up in time.
    #[error("node {node} did not catch up within {timeout:?}")]
    NotCaughtUp {
        /// The learner.
        node: NodeId,
        /// How long it was given.
        timeout: Duration,
    },
    /// openraft refused the change.
    #[error("membership change refused: {0}")]
    Refused(String),
}

/// Answers one peer request: the bytes a peer sent, in; the bytes to send back, out.
pub type PeerHandler =
    Arc<dyn Fn(Vec<u8>) -> Pin<Box<dyn Future<Output = Vec<u8>> + Send>> + Send + Sync>;

/// What a leader answers a forwarded write or read with, when it cannot serve it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum Redirect {
    /// It is not (or no longer) the leader; the leader it knows of, if any.
    NotLeader(Option<(NodeId, String)>),
    /// It failed for good.
    Failed(String),
}

/// The state the RPC server shares with the store.
pub(crate) struct Shared {
    pub(crate) node_id: NodeId,
    pub(crate) raft: Raft,
    pub(crate) auth: ClusterAuth,
    pub(crate) auth_counters: AuthCounters,
    /// Nonces of the requests accepted within the freshness window.
    pub(crate) nonces: std::sync::Mutex<NonceMemory>,
    /// Refused requests' log lines, at most one a second.
    pub(crate) refusals: RefusalLog,
    pub(crate) state_machine: StateMachineStore,
    pub(crate) peer_handler: OnceLock<PeerHandler>,
}

impl Shared {
    /// Proposes `request` on this node, which must be the leader.
    pub(crate) async fn write_as_leader(&self, request: Request) -> Result<Response, Redirect> {
        match self.raft.client_write(request).await {
            Ok(written) => Ok(written.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                Err(Redirect::NotLeader(leader_of(forward)))
            }
            Err(other) => Err(Redirect::Failed(other.to_string())),
        }
    }

    /// The configuration, once this node has confirmed it leads and applied everything
    /// committed before the read.
    pub(crate) async fn read_as_leader(&self) -> Result<Config, Redirect> {
        match self.raft.ensure_linearizable().await {
            Ok(_) => Ok(Config::clone(&self.state_machine.config())),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward))) => {
                Err(Redirect::NotLeader(leader_of(forward)))
            }
            // No quorum answered: maybe an election is under way; the caller retries.
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => {
                Err(Redirect::NotLeader(None))
            }
            Err(other) => Err(Redirect::Failed(other.to_string())),
        }
    }

    /// Changes the membership on this node, which must be the leader.
    pub(crate) async fn change_members_as_leader(
        &self,
        change: &MemberChange,
    ) -> Result<Result<(), MembershipError>, Redirect> {
        let raft = &self.raft;
        let outcome = match change {
            MemberChange::AddLearner { id, address } => {
                raft.add_learner(*id, BasicNode::new(address), false).await.map(drop)
            }
            MemberChange::Promote { id, catch_up } => {
                // Only the leader knows how far a learner got: elsewhere the wait would last
                // its whole timeout before the change itself found out who leads.
                let metrics = raft.metrics().borrow().clone();
                if metrics.current_leader != Some(self.node_id) {
                    let leader = metrics.current_leader.and_then(|leader| {
                        let node = metrics.membership_config.membership().get_node(&leader)?;
                        Some((leader, node.addr.clone()))
                    });
                    return Err(Redirect::NotLeader(leader));
                }
                if let Err(error) = self.wait_caught_up(*id, *catch_up).await {
                    return Ok(Err(error));
                }
                raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([*id])), false)
                    .await
                    .map(drop)
            }
            MemberChange::Remove { id } => {
                let is_voter = raft
                    .metrics()
                    .borrow()
                    .membership_config
                    .membership()
                    .voter_ids()
                    .any(|v| v == *id);
                // One change: with `retain` false, a removed voter leaves the membership
                // altogether. A second change right after, removing the node, would reach a
                // leader that just removed itself, and openraft 0.9 panics on that.
                let change = match is_voter {
                    true => ChangeMembers::RemoveVoters(BTreeSet::from([*id])),
                    false => ChangeMembers::RemoveNodes(BTreeSet::from([*id])),
                };
                raft.change_membership(change, false).await.map(drop)
            }
        };
        match outcome {
            Ok(()) => Ok(Ok(())),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                Err(Redirect::NotLeader(leader_of(forward)))
            }
            Err(other) => Ok(Err(MembershipError::Refused(other.to_string()))),
        }
    }

    /// Waits until this leader has replicated its whole log to `id`.
    async fn wait_caught_up(&self, id: NodeId, timeout: Duration) -> Result<(), MembershipError> {
        let mut metrics = self.raft.metrics();
        let caught_up = |m: &openraft::RaftMetrics<NodeId, BasicNode>| {
            let matched = m.replication.as_ref().and_then(|r| r.get(&id).cloned().flatten());
            matched.map(|log_id| log_id.index) >= m.last_log_index
        };
        tokio::time::timeout(timeout, metrics.wait_for(caught_up))
            .await
            .map_err(|_| MembershipError::NotCaughtUp { node: id, timeout })?
            .map(drop)
            .map_err(|_| MembershipError::Refused("Raft stopped".into()))
    }

    /// Answers a peer request with the installed handler.
    pub(crate) async fn answer_peer(&self, request: Vec<u8>) -> Result<Vec<u8>, String> {
        match self.peer_handler.get() {
            Some(handler) => Ok(handler(request).await),
            None => Err(format!("node {} serves no peer requests yet", self.node_id)),
        }
    }
}

fn leader_of(forward: ForwardToLeader<NodeId, BasicNode>) -> Option<(NodeId, String)> {
    forward.leader_id.zip(forward.leader_node.map(|node| node.addr))
}
