//! This node as a member of its cluster: the status it reports, what it answers its peers
//! (over the store's authenticated RPC transport), and the cluster-wide views the admin API
//! builds by asking every member — status, how far a revision has spread, and planned VIP
//! moves.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fulcrum_model::api::{
    ClusterStatus, FailoverDone, Member, Members, NodeReport, NodeStatus, Propagation, VipOwner,
    VrrpStatus,
};
use fulcrum_model::{Revision, codec};
use fulcrum_raft_store::ConfigStore;
use fulcrum_vrrp::driver::Vrrp;
use fulcrum_vrrp::machine::OWNER_PRIORITY;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use crate::dataplane::DataPlane;
use crate::dataplane::metrics::header;
use crate::tracking::Priorities;

/// What one node asks another.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum PeerRequest {
    /// Its [`NodeStatus`].
    Status,
    /// The revision its data plane serves.
    Revision,
    /// Take part in moving `vrid` to node `to` (`None` lifts an earlier move): lower this
    /// node's priority unless it is `to`.
    MoveVip { vrid: u8, to: Option<u64> },
    /// Give `vrid` away if master of it.
    Resign { vrid: u8 },
}

/// What it answers.
#[derive(Debug, Serialize, Deserialize)]
enum PeerAnswer {
    Status(Box<NodeStatus>),
    Revision(Revision),
    /// Whether this node runs the VRID.
    Moved(bool),
    /// The request did not decode (a peer of another version).
    Malformed(String),
}

/// How long one peer may take to answer.
const PEER_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between looks while waiting for a revision or a new master.
const POLL: Duration = Duration::from_millis(20);
/// How long a planned move may take to show a new master: well under fulcrumctl's default
/// timeout (10 s), so a slow move is answered rather than retried at another node.
const MOVE_WAIT: Duration = Duration::from_secs(5);

/// Why a VIP move was refused.
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    /// No member runs the VRID.
    #[error("no node runs VRID {0}")]
    UnknownVrid(u8),
    /// The master owns the addresses (priority 255) and cannot give them away.
    #[error("node {node} owns VRID {vrid}'s addresses (priority 255) and always wins it")]
    AddressOwner {
        /// The VRID.
        vrid: u8,
        /// The owner.
        node: u64,
    },
    /// The chosen node did not confirm; nothing was given away.
    #[error(
        "node {node} did not take part in moving VRID {vrid} (down?); the master was left in place"
    )]
    NotTaken {
        /// The VRID.
        vrid: u8,
        /// The chosen node.
        node: u64,
    },
    /// No single master matching the request showed in time.
    #[error("VRID {vrid} did not settle on the chosen node in time; master now {master:?}")]
    Unsettled {
        /// The VRID.
        vrid: u8,
        /// The master seen last, if exactly one.
        master: Option<u64>,
    },
    /// The chosen node does not run it.
    #[error("node {node} does not run VRID {vrid} (nodes that do: {runners:?})")]
    NotARunner {
        /// The VRID.
        vrid: u8,
        /// The node asked for.
        node: u64,
        /// The nodes that run it.
        runners: Vec<u64>,
    },
}

/// One virtual router of this node, as the node file declares it.
#[derive(Clone, Debug)]
pub struct LocalVrid {
    /// The VRID.
    pub vrid: u8,
    /// Its link.
    pub interface: String,
    /// Its addresses.
    pub vips: Vec<Ipv4Addr>,
}

/// The running node, as the admin API and its peers see it.
pub struct Node {
    /// The store.
    pub store: Arc<ConfigStore>,
    /// The data plane.
    pub plane: Arc<DataPlane>,
    vrrp: Option<(Arc<Vrrp>, Arc<Priorities>)>,
    vrids: Vec<LocalVrid>,
    draining: AtomicBool,
    ready: AtomicBool,
}

impl Node {
    /// The node; `vrrp` is its driver with the priorities it controls, if it runs VRRP.
    pub fn new(
        store: Arc<ConfigStore>,
        plane: Arc<DataPlane>,
        vrrp: Option<(Arc<Vrrp>, Arc<Priorities>)>,
        vrids: Vec<LocalVrid>,
    ) -> Arc<Node> {
        Arc::new(Node {
            store,
            plane,
            vrrp,
            vrids,
            draining: AtomicBool::new(false),
            ready: AtomicBool::new(false),
        })
    }

    /// Answers peers from now on.
    pub fn serve_peers(self: &Arc<Self>) {
        let node = Arc::downgrade(self);
        self.store.serve_peers(Arc::new(move |request| {
            let node = node.clone();
            Box::pin(async move {
                let answer = match node.upgrade() {
                    Some(node) => node.answer(&request),
                    None => PeerAnswer::Malformed("the node is stopping".into()),
                };
                codec::encode(&answer).unwrap_or_default()
            })
        }));
    }

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.store.node_id()
    }

    /// Marks the node ready (serving its configuration, VRRP started) or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Why the node is not ready, if it is not.
    pub fn not_ready(&self) -> Option<String> {
        if !self.ready.load(Ordering::Relaxed) {
            return Some("starting".into());
        }
        if self.draining.load(Ordering::Relaxed) {
            return Some("draining before it stops".into());
        }
        if self.store.metrics().leader.is_none() {
            return Some("no Raft leader known: configuration writes would wait".into());
        }
        None
    }

    /// Marks the node as draining: it reports so, and is no longer ready.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// This node's own status.
    pub fn status(&self) -> NodeStatus {
        let store = self.store.metrics();
        let vrrp_status = self.vrrp.as_ref().map(|(vrrp, _)| vrrp.status()).unwrap_or_default();
        let vrrp = self
            .vrids
            .iter()
            .map(|local| {
                let running = vrrp_status.instances.iter().find(|i| i.vrid == local.vrid);
                VrrpStatus {
                    vrid: local.vrid,
                    interface: local.interface.clone(),
                    state: running.map_or("stopped".into(), |i| i.state.as_str().to_owned()),
                    priority: running.map_or(0, |i| i.priority),
                    vips: local.vips.clone(),
                }
            })
            .collect();
        NodeStatus {
            id: self.id(),
            role: store.state.to_lowercase(),
            leader: store.leader,
            term: store.term,
            revision: self.plane.served_revision(),
            vrrp,
            pools: self.plane.pool_status(),
            draining: self.draining.load(Ordering::Relaxed),
        }
    }

    /// The node's own gauges (Raft, revision, VRRP, readiness) in the Prometheus text format;
    /// the data plane renders the rest.
    pub fn metrics(&self) -> String {
        use std::fmt::Write;
        let status = self.status();
        let mut out = String::new();
        let o = &mut out;
        header(o, "fulcrum_raft_term", "gauge", "The Raft term this node is in.");
        let _ = writeln!(o, "fulcrum_raft_term {}", status.term);
        header(o, "fulcrum_raft_leader", "gauge", "1 while this node leads the Raft group.");
        let _ = writeln!(o, "fulcrum_raft_leader {}", u8::from(status.leader == Some(status.id)));
        header(o, "fulcrum_config_revision", "gauge", "The configuration revision served here.");
        let _ = writeln!(o, "fulcrum_config_revision {}", status.revision);
        header(o, "fulcrum_node_ready", "gauge", "1 while /readyz answers ready.");
        let _ = writeln!(o, "fulcrum_node_ready {}", u8::from(self.not_ready().is_none()));
        header(o, "fulcrum_vrrp_master", "gauge", "1 while this node is master of the VRID.");
        for vrrp in &status.vrrp {
            let _ = writeln!(
                o,
                "fulcrum_vrrp_master{{vrid=\"{}\"}} {}",
                vrrp.vrid,
                u8::from(vrrp.state == "master")
            );
        }
        header(
            o,
            "fulcrum_vrrp_priority",
            "gauge",
            "The priority advertised for the VRID, after penalties.",
        );
        for vrrp in &status.vrrp {
            let _ =
                writeln!(o, "fulcrum_vrrp_priority{{vrid=\"{}\"}} {}", vrrp.vrid, vrrp.priority);
        }
        out
    }

    fn answer(&self, request: &[u8]) -> PeerAnswer {
        match codec::decode::<PeerRequest>(request) {
            Ok(PeerRequest::Status) => PeerAnswer::Status(Box::new(self.status())),
            Ok(PeerRequest::Revision) => PeerAnswer::Revision(self.plane.served_revision()),
            Ok(PeerRequest::MoveVip { vrid, to }) => PeerAnswer::Moved(
                self.vrrp.as_ref().is_some_and(|(_, priorities)| priorities.move_to(vrid, to)),
            ),
            Ok(PeerRequest::Resign { vrid }) => PeerAnswer::Moved(
                self.vrrp.as_ref().is_some_and(|(_, priorities)| priorities.resign(vrid)),
            ),
            Err(error) => PeerAnswer::Malformed(error.to_string()),
        }
    }

    /// Asks member `id` (this node answers itself without the network).
    async fn ask(&self, id: u64, request: &PeerRequest) -> Result<PeerAnswer, String> {
        let bytes = codec::encode(request).map_err(|e| e.to_string())?;
        if id == self.id() {
            return Ok(self.answer(&bytes));
        }
        let answer =
            self.store.call_peer(id, bytes, PEER_TIMEOUT).await.map_err(|e| e.to_string())?;
        match codec::decode::<PeerAnswer>(&answer).map_err(|e| e.to_string())? {
            PeerAnswer::Malformed(problem) => {
                Err(format!("node {id} did not understand: {problem}"))
            }
            answer => Ok(answer),
        }
    }

    /// Asks every member at once; answers come back by id.
    async fn ask_all(
        self: &Arc<Self>,
        request: PeerRequest,
    ) -> Vec<(u64, Result<PeerAnswer, String>)> {
        let ids: Vec<u64> = self.store.members().into_iter().map(|(id, _, _)| id).collect();
        self.ask_some(&ids, request).await
    }

    /// Asks each of `ids` at once; answers come back by id.
    async fn ask_some(
        self: &Arc<Self>,
        ids: &[u64],
        request: PeerRequest,
    ) -> Vec<(u64, Result<PeerAnswer, String>)> {
        let mut asking = JoinSet::new();
        for &id in ids {
            let node = Arc::clone(self);
            let request = request.clone();
            asking.spawn(async move { (id, node.ask(id, &request).await) });
        }
        let mut answers = asking.join_all().await;
        answers.sort_by_key(|(id, _)| *id);
        answers
    }

    /// Every member's status, the membership, and who owns each VRID.
    pub async fn cluster_status(self: &Arc<Self>) -> ClusterStatus {
        let nodes: Vec<NodeReport> = self
            .ask_all(PeerRequest::Status)
            .await
            .into_iter()
            .map(|(id, answer)| match answer {
                Ok(PeerAnswer::Status(status)) => {
                    NodeReport { id, status: Some(*status), error: None }
                }
                Ok(other) => NodeReport {
                    id,
                    status: None,
                    error: Some(format!("unexpected answer {other:?}")),
                },
                Err(error) => NodeReport { id, status: None, error: Some(error) },
            })
            .collect();
        let store = self.store.metrics();
        ClusterStatus {
            members: self.members(),
            leader: store.leader,
            term: store.term,
            vips: vip_owners(&nodes),
            nodes,
        }
    }

    /// The membership.
    pub fn members(&self) -> Members {
        Members {
            members: self
                .store
                .members()
                .into_iter()
                .map(|(id, address, voter)| Member { id, address, voter })
                .collect(),
        }
    }

    /// Waits until every member serves `revision` or later, for at most `timeout`.
    pub async fn wait_revision(
        self: &Arc<Self>,
        revision: Revision,
        timeout: Duration,
    ) -> Propagation {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let applied: Vec<(u64, Option<Revision>)> = self
                .ask_all(PeerRequest::Revision)
                .await
                .into_iter()
                .map(|(id, answer)| match answer {
                    Ok(PeerAnswer::Revision(applied)) => (id, Some(applied)),
                    _ => (id, None),
                })
                .collect();
            let complete =
                applied.iter().all(|(_, applied)| applied.is_some_and(|a| a >= revision));
            if complete || tokio::time::Instant::now() >= deadline {
                return Propagation { revision, complete, applied };
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Moves `vrid` to node `to` (or lifts a move with `None`), then waits for a master.
    pub async fn move_vip(
        self: &Arc<Self>,
        vrid: u8,
        to: Option<u64>,
    ) -> Result<FailoverDone, MoveError> {
        let status = self.cluster_status().await;
        let runners: Vec<u64> = status
            .nodes
            .iter()
            .filter_map(|report| report.status.as_ref())
            .filter(|s| s.vrrp.iter().any(|v| v.vrid == vrid))
            .map(|s| s.id)
            .collect();
        if runners.is_empty() {
            return Err(MoveError::UnknownVrid(vrid));
        }
        if let Some(node) = to.filter(|node| !runners.contains(node)) {
            return Err(MoveError::NotARunner { vrid, node, runners });
        }
        let runs = |id: u64| {
            status.nodes.iter().filter_map(|r| r.status.as_ref()).find(|s| s.id == id).and_then(
                |s| s.vrrp.iter().find(|v| v.vrid == vrid).map(|v| (v.state.clone(), v.priority)),
            )
        };
        if let Some(owner) =
            runners.iter().find(|id| runs(**id) == Some(("master".to_owned(), OWNER_PRIORITY)))
        {
            return Err(MoveError::AddressOwner { vrid, node: *owner });
        }
        // Every node lowers its priority (the chosen one keeps its own) before the master
        // resigns, so no other backup outranks the chosen node when the VIP is given away.
        let asked = self.ask_some(&runners, PeerRequest::MoveVip { vrid, to }).await;
        if let Some(to) = to
            && !matches!(
                asked.iter().find(|(id, _)| *id == to),
                Some((_, Ok(PeerAnswer::Moved(true))))
            )
        {
            return Err(MoveError::NotTaken { vrid, node: to });
        }
        let resigning: Vec<u64> = runners.iter().copied().filter(|id| Some(*id) != to).collect();
        if to.is_some() {
            self.ask_some(&resigning, PeerRequest::Resign { vrid }).await;
        }
        let deadline = tokio::time::Instant::now() + MOVE_WAIT;
        loop {
            let owners = vip_owners(&self.cluster_status().await.nodes);
            let masters = owners.iter().find(|o| o.vrid == vrid).map(|o| o.masters.clone());
            let master = masters.filter(|m| m.len() == 1).map(|m| m[0]);
            let settled = match to {
                Some(to) => master == Some(to),
                None => master.is_some(),
            };
            if settled {
                return Ok(FailoverDone { vrid, master });
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(MoveError::Unsettled { vrid, master });
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Who reports being master of each VRID.
fn vip_owners(nodes: &[NodeReport]) -> Vec<VipOwner> {
    let mut owners: Vec<VipOwner> = Vec::new();
    for status in nodes.iter().filter_map(|n| n.status.as_ref()) {
        for vrrp in &status.vrrp {
            let index = match owners.iter().position(|o| o.vrid == vrrp.vrid) {
                Some(index) => index,
                None => {
                    owners.push(VipOwner {
                        vrid: vrrp.vrid,
                        vips: vrrp.vips.clone(),
                        masters: Vec::new(),
                    });
                    owners.len() - 1
                }
            };
            if vrrp.state == "master" {
                owners[index].masters.push(status.id);
            }
        }
    }
    owners.sort_by_key(|o| o.vrid);
    owners
}
