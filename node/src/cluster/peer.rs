//! What nodes tell each other: the peer requests and answers, carried over the configuration
//! store's authenticated RPC transport (`ConfigStore::call_peer`), and asking one, some or
//! every member at once. A node asks itself without the network.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use fulcrum_model::api::NodeStatus;
use fulcrum_model::{Revision, codec};
use fulcrum_raft_store::{ConfigStore, PeerHandler};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use super::fence::{Grant, LeaseRefusal};
use crate::bgp::steering::FlowMember;
use crate::dataplane::shared_limits::RateReport;

/// What one node asks another.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum PeerRequest {
    /// Its [`NodeStatus`].
    Status,
    /// The revision its data plane serves.
    Revision,
    /// Take part in moving `vrid` to node `to` (`None` lifts an earlier move): lower this
    /// node's priority unless it is `to`.
    MoveVip {
        /// The VRID.
        vrid: u8,
        /// The node chosen.
        to: Option<u64>,
    },
    /// Give `vrid` away if master of it, keeping its connections.
    Resign {
        /// The VRID.
        vrid: u8,
    },
    /// The sender (at `via` on `vrid`'s link) drains the connections to `vips` for
    /// `lease_ms` more: hand it their packets.
    Draining {
        /// The VRID.
        vrid: u8,
        /// Its addresses being drained.
        vips: Vec<IpAddr>,
        /// The sender's own IPv4 address on the link: where IPv4 VIPs' packets go, and what
        /// names the drain.
        via: Ipv4Addr,
        /// The sender's IPv6 link-local address on the link, where IPv6 VIPs' packets go.
        via_v6: Option<Ipv6Addr>,
        /// How long to forward unless renewed.
        lease_ms: u64,
    },
    /// That drain ended.
    Drained {
        /// The VRID.
        vrid: u8,
        /// The sender's own address on the link.
        via: Ipv4Addr,
    },
    /// Node `node`, master of `vrid`, asks the leader for its lease (holding `claimed`).
    Lease {
        /// The VRID.
        vrid: u8,
        /// The node asking.
        node: u64,
        /// The grant it holds now, if its lease runs.
        claimed: Option<Grant>,
        /// How many times it gave the VRID up so far.
        generation: u64,
        /// The lease it counts, in milliseconds (the leader's must be the same).
        lease_ms: u64,
    },
    /// Whether the node asked leads the Raft group with a quorum now (`Noted`).
    FenceCheck,
    /// Node `node` gave `vrid` up, its VIPs gone.
    Release {
        /// The VRID.
        vrid: u8,
        /// The node.
        node: u64,
        /// The generation given up: requests of it still on their way grant nothing.
        generation: u64,
    },
    /// Its part in the BGP VIPs' flows (`Flows`).
    Flows,
    /// Withdraw the BGP VIPs and serve only the connections held (`true`), or announce
    /// again (`false`).
    DrainBgp(bool),
    /// What the sender's shared rate limits admitted since its last report (`Noted`).
    RateCounts(Vec<RateReport>),
}

/// What it answers.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum PeerAnswer {
    /// Its status.
    Status(Box<NodeStatus>),
    /// The revision it serves.
    Revision(Revision),
    /// Whether this node runs the VRID.
    Moved(bool),
    /// Whether this node forwards for the drain (it runs the VRID, with second-chance
    /// forwarding on).
    Noted(bool),
    /// The leader's answer to a lease request.
    Lease(Result<Grant, LeaseRefusal>),
    /// The request did not decode (a peer of another version).
    Malformed(String),
    /// This node runs the VRID but cannot forward for the drain: why (its nftables rules
    /// did not load).
    CannotForward(String),
    /// Its part in the BGP VIPs' flows; `None` without BGP or flow steering.
    Flows(Option<FlowMember>),
}

/// Answers from several members, by id.
pub(crate) type Answers = Vec<(u64, Result<PeerAnswer, String>)>;

/// How long one peer may take to answer.
pub(crate) const PEER_TIMEOUT: Duration = Duration::from_secs(2);

/// Asks the cluster's members.
pub(crate) struct Peers {
    store: Arc<ConfigStore>,
    /// This node's own answers, so asking itself needs no network.
    local: OnceLock<PeerHandler>,
}

impl Peers {
    /// Asks through `store`'s transport; answers nothing until [`Peers::serve`].
    pub(crate) fn new(store: Arc<ConfigStore>) -> Arc<Peers> {
        Arc::new(Peers { store, local: OnceLock::new() })
    }

    /// Answers peers (and this node itself) with `answer` from now on.
    pub(crate) fn serve(&self, answer: PeerHandler) {
        if self.local.set(Arc::clone(&answer)).is_ok() {
            self.store.serve_peers(answer);
        }
    }

    /// This node's id.
    pub(crate) fn me(&self) -> u64 {
        self.store.node_id()
    }

    /// Every member's id.
    pub(crate) fn member_ids(&self) -> Vec<u64> {
        self.store.members().into_iter().map(|(id, _, _)| id).collect()
    }

    /// Every other member's id.
    pub(crate) fn peer_ids(&self) -> Vec<u64> {
        let me = self.me();
        self.member_ids().into_iter().filter(|id| *id != me).collect()
    }

    /// Asks member `id`, waiting at most `timeout`.
    pub(crate) async fn ask(
        &self,
        id: u64,
        request: &PeerRequest,
        timeout: Duration,
    ) -> Result<PeerAnswer, String> {
        let bytes = codec::encode(request).map_err(|e| e.to_string())?;
        let answer = match (id == self.me(), self.local.get()) {
            (true, Some(local)) => local(bytes).await,
            (true, None) => return Err("this node does not answer yet".into()),
            (false, _) => {
                self.store.call_peer(id, bytes, timeout).await.map_err(|e| e.to_string())?
            }
        };
        match codec::decode::<PeerAnswer>(&answer).map_err(|e| e.to_string())? {
            PeerAnswer::Malformed(problem) => {
                Err(format!("node {id} did not understand: {problem}"))
            }
            answer => Ok(answer),
        }
    }

    /// Asks every member at once, each within [`PEER_TIMEOUT`]; answers come back by id.
    pub(crate) async fn ask_all(self: &Arc<Self>, request: PeerRequest) -> Answers {
        self.ask_within(&self.member_ids(), request, PEER_TIMEOUT).await
    }

    /// Asks each of `ids` at once, each within [`PEER_TIMEOUT`]; answers come back by id.
    pub(crate) async fn ask_some(self: &Arc<Self>, ids: &[u64], request: PeerRequest) -> Answers {
        self.ask_within(ids, request, PEER_TIMEOUT).await
    }

    /// Asks each of `ids` at once, each answer within `timeout`; answers come back by id.
    pub(crate) async fn ask_within(
        self: &Arc<Self>,
        ids: &[u64],
        request: PeerRequest,
        timeout: Duration,
    ) -> Answers {
        let mut asking = JoinSet::new();
        for &id in ids {
            let peers = Arc::clone(self);
            let request = request.clone();
            asking.spawn(async move { (id, peers.ask(id, &request, timeout).await) });
        }
        let mut answers = asking.join_all().await;
        answers.sort_by_key(|(id, _)| *id);
        answers
    }
}
