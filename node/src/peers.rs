//! This node as a member of its cluster: the status it reports, what it answers its peers
//! (over the store's authenticated RPC transport), and the cluster-wide views the admin API
//! builds by asking every member — status, how far a revision has spread, and planned VIP
//! moves — and the handing over of a VIP with its connections ([`Node::hand_over`], with
//! [`crate::handover`]'s second-chance forwarding).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
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
use fulcrum_vrrp::machine::{OWNER_PRIORITY, State};
use fulcrum_vrrp::vip::interface_address;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::dataplane::addresses::Phase;
use crate::dataplane::metrics::header;
use crate::dataplane::{DataPlane, deadline_after};
use crate::handover::{Handover, open_connections};
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
    /// Give `vrid` away if master of it, keeping its connections.
    Resign { vrid: u8 },
    /// The sender (at `via` on `vrid`'s link) drains the connections to `vips` for
    /// `lease_ms` more: hand it their packets.
    Draining { vrid: u8, vips: Vec<Ipv4Addr>, via: Ipv4Addr, lease_ms: u64 },
    /// That drain ended.
    Drained { vrid: u8, via: Ipv4Addr },
}

/// What it answers.
#[derive(Debug, Serialize, Deserialize)]
enum PeerAnswer {
    Status(Box<NodeStatus>),
    Revision(Revision),
    /// Whether this node runs the VRID.
    Moved(bool),
    /// Whether this node forwards for the drain (it runs the VRID, with second-chance
    /// forwarding on).
    Noted(bool),
    /// The request did not decode (a peer of another version).
    Malformed(String),
}

/// Answers from several members, by id.
type Answers = Vec<(u64, Result<PeerAnswer, String>)>;

/// How long one peer may take to answer.
const PEER_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between looks while waiting for a revision or a new master.
const POLL: Duration = Duration::from_millis(20);
/// How long one peer may take to hear of a drain: short, as the VIP waits for it.
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long peers forward for a drain unless it is renewed: the longest a dead old master's
/// clients wait for their reset.
const DRAIN_LEASE: Duration = Duration::from_secs(2);
/// How often a drain is renewed, so a lost renewal or two do not end it.
const DRAIN_RENEW: Duration = Duration::from_millis(500);
/// How long a drain holds on after another node is seen as master, even with no connection
/// left: until then clients may still send a SYN here.
const TAKEOVER_SETTLE: Duration = Duration::from_millis(500);
/// How often a drain looks at what is left of its connections.
const DRAIN_POLL: Duration = Duration::from_millis(200);
/// How long connections closed at a drain's deadline are still held, so their close
/// reaches the clients.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// The longest lease a peer's announcement is taken for.
const MAX_LEASE: Duration = Duration::from_secs(10);
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
    /// Second-chance forwarding, if on, and how long a handed-over VIP's connections drain.
    handover: Option<(Arc<Handover>, Duration)>,
    /// Held while a hand-over prepares (holds the VIP, tells the peers, resigns).
    handing_over: tokio::sync::Mutex<()>,
    /// The drains under way, which a stopping node waits for.
    drains: TaskTracker,
    draining: AtomicBool,
    ready: AtomicBool,
}

/// A VIP drain this node started, until its connections end.
#[derive(Debug)]
pub struct Drain {
    vrid: u8,
    vips: Vec<Ipv4Addr>,
    /// This node's address on the VRID's link, where peers forward.
    via: Ipv4Addr,
    /// Cancelled to stop the renewals; the task ends once a renewal in flight is answered.
    stop_renewing: CancellationToken,
    renewals: tokio::task::JoinHandle<()>,
}

/// What starting a drain came to.
enum DrainStart {
    Started(Drain),
    /// This node already drains the VRID.
    UnderWay,
    /// Second-chance forwarding is off or failed: the VIP moves without it.
    Unavailable,
}

impl Node {
    /// The node; `vrrp` is its driver with the priorities it controls, if it runs VRRP, and
    /// `handover` its second-chance forwarding with the drain time of a handed-over VIP.
    pub fn new(
        store: Arc<ConfigStore>,
        plane: Arc<DataPlane>,
        vrrp: Option<(Arc<Vrrp>, Arc<Priorities>)>,
        vrids: Vec<LocalVrid>,
        handover: Option<(Arc<Handover>, Duration)>,
    ) -> Arc<Node> {
        Arc::new(Node {
            store,
            plane,
            vrrp,
            vrids,
            handover,
            handing_over: tokio::sync::Mutex::new(()),
            drains: TaskTracker::new(),
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
                    Some(node) => node.answer(&request).await,
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

    async fn answer(self: &Arc<Self>, request: &[u8]) -> PeerAnswer {
        match codec::decode::<PeerRequest>(request) {
            Ok(PeerRequest::Status) => PeerAnswer::Status(Box::new(self.status())),
            Ok(PeerRequest::Revision) => PeerAnswer::Revision(self.plane.served_revision()),
            Ok(PeerRequest::MoveVip { vrid, to }) => PeerAnswer::Moved(
                self.vrrp.as_ref().is_some_and(|(_, priorities)| priorities.move_to(vrid, to)),
            ),
            Ok(PeerRequest::Resign { vrid }) => PeerAnswer::Moved(self.hand_over(vrid)),
            Ok(PeerRequest::Draining { vrid, vips, via, lease_ms }) => {
                PeerAnswer::Noted(self.forward_for(vrid, vips, via, lease_ms).await)
            }
            Ok(PeerRequest::Drained { vrid, via }) => {
                if let Some((handover, _)) = &self.handover {
                    handover.peer_drained(vrid, via).await;
                }
                PeerAnswer::Noted(self.handover.is_some())
            }
            Err(error) => PeerAnswer::Malformed(error.to_string()),
        }
    }

    /// Asks member `id` (this node answers itself without the network), waiting at most
    /// `timeout`.
    async fn ask(
        self: &Arc<Self>,
        id: u64,
        request: &PeerRequest,
        timeout: Duration,
    ) -> Result<PeerAnswer, String> {
        let bytes = codec::encode(request).map_err(|e| e.to_string())?;
        if id == self.id() {
            return Ok(self.answer(&bytes).await);
        }
        let answer = self.store.call_peer(id, bytes, timeout).await.map_err(|e| e.to_string())?;
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
        self.ask_within(ids, request, PEER_TIMEOUT).await
    }

    /// Asks each of `ids` at once, each answer within `timeout`; answers come back by id.
    /// Boxed as a `Send` future: answering a peer may ask peers in turn (a hand-over tells
    /// them of its drain), and that recursion needs a named type.
    fn ask_within<'a>(
        self: &'a Arc<Self>,
        ids: &'a [u64],
        request: PeerRequest,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = Answers> + Send + 'a>> {
        Box::pin(async move {
            let mut asking = JoinSet::new();
            for &id in ids {
                let node = Arc::clone(self);
                let request = request.clone();
                asking.spawn(async move { (id, node.ask(id, &request, timeout).await) });
            }
            let mut answers = asking.join_all().await;
            answers.sort_by_key(|(id, _)| *id);
            answers
        })
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

impl Node {
    /// Gives `vrid` away if master of it (a priority-0 advertisement, so the best backup
    /// takes over at once), keeping the connections clients made to its VIPs: they drain
    /// here while peers forward their packets (second-chance forwarding), for at most the
    /// node's drain time. Without second-chance forwarding the VIP moves all the same. False
    /// for a VRID this node does not run; otherwise the hand-over runs on its own, whatever
    /// becomes of the caller.
    pub fn hand_over(self: &Arc<Self>, vrid: u8) -> bool {
        if self.vrrp.is_none() || !self.vrids.iter().any(|v| v.vrid == vrid) {
            return false;
        }
        let node = Arc::clone(self);
        tokio::spawn(async move {
            // One at a time: a second hand-over must not resign before the first has told
            // the peers.
            let _one = node.handing_over.lock().await;
            let Some((local, (vrrp, _))) =
                node.vrids.iter().find(|v| v.vrid == vrid).zip(node.vrrp.as_ref())
            else {
                return;
            };
            let status = vrrp.status();
            let running = status.instances.iter().find(|i| i.vrid == vrid);
            // The address owner never gives its VIP away (resigning does nothing for it).
            if !running.is_some_and(|i| i.state == State::Master && i.priority != OWNER_PRIORITY) {
                return;
            }
            match node.start_drain(local).await {
                DrainStart::Started(drain) => {
                    vrrp.resign(vrid);
                    let time = node.handover.as_ref().map_or(Duration::ZERO, |(_, time)| *time);
                    node.drains.spawn(Arc::clone(&node).follow_drain(drain, deadline_after(time)));
                }
                // Master again while its last drain goes on: that drain takes in what this
                // mastership accepted.
                DrainStart::UnderWay | DrainStart::Unavailable => vrrp.resign(vrid),
            }
        });
        true
    }

    /// Before the node stops: every VRID it is master of starts draining (as in
    /// [`Node::hand_over`], short of resigning, which stopping VRRP does for all at once).
    pub async fn prepare_stop(self: &Arc<Self>) -> Vec<Drain> {
        let _one = self.handing_over.lock().await;
        let mut drains = Vec::new();
        for local in self.vrids.iter().filter(|local| self.is_master(local.vrid)) {
            if let DrainStart::Started(drain) = self.start_drain(local).await {
                drains.push(drain);
            }
        }
        drains
    }

    /// Waits, for at most `timeout`, until another node is master of each of `drains`' VRIDs:
    /// until then clients still reach this node for new connections, so a stopping node
    /// keeps accepting them.
    pub async fn wait_for_takeover(self: &Arc<Self>, drains: &[Drain], timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        let me = self.id();
        while tokio::time::Instant::now() < deadline {
            let owners = vip_owners(&self.cluster_status().await.nodes);
            let taken = drains.iter().all(|drain| {
                owners.iter().any(|o| o.vrid == drain.vrid && o.masters.iter().any(|m| *m != me))
            });
            if taken {
                return;
            }
            tokio::time::sleep(POLL).await;
        }
        tracing::warn!(?timeout, "no other node took the VIPs over in time");
    }

    /// Follows `drains` to their end, at `deadline` at the latest, together with any drain
    /// a hand-over started earlier (each ends by its own deadline).
    pub async fn finish_drains(
        self: &Arc<Self>,
        drains: Vec<Drain>,
        deadline: tokio::time::Instant,
    ) {
        for drain in drains {
            self.drains.spawn(Arc::clone(self).follow_drain(drain, deadline));
        }
        self.drains.close();
        self.drains.wait().await;
    }

    fn is_master(&self, vrid: u8) -> bool {
        self.vrrp.as_ref().is_some_and(|(vrrp, _)| {
            vrrp.status().instances.iter().any(|i| i.vrid == vrid && i.state == State::Master)
        })
    }

    /// Holds `local`'s VIPs here, hidden from ARP, and tells every peer to forward; if no
    /// peer will, the VIP moves without its connections.
    async fn start_drain(self: &Arc<Self>, local: &LocalVrid) -> DrainStart {
        let Some((handover, _)) = &self.handover else { return DrainStart::Unavailable };
        let vrid = local.vrid;
        let all_vips: Vec<Ipv4Addr> = self.vrids.iter().flat_map(|v| v.vips.clone()).collect();
        let Some(via) = interface_address(&local.interface, &all_vips) else {
            tracing::warn!(vrid, interface = %local.interface, "no IPv4 address of this node's own on the link to forward to: the VIP moves without its connections");
            return DrainStart::Unavailable;
        };
        match handover.hold(vrid, &local.vips, via).await {
            Ok(true) => {}
            Ok(false) => return DrainStart::UnderWay,
            Err(error) => {
                tracing::error!(vrid, "the VIP moves without its connections: {error}");
                return DrainStart::Unavailable;
            }
        }
        let request = PeerRequest::Draining {
            vrid,
            vips: local.vips.clone(),
            via,
            lease_ms: DRAIN_LEASE.as_millis() as u64,
        };
        let forwarding = self.announce(request.clone()).await;
        if forwarding.is_empty() {
            tracing::warn!(
                vrid,
                "no peer forwards for the drain: the VIP moves without its connections"
            );
            handover.release(vrid).await;
            return DrainStart::Unavailable;
        }
        // Renewed from now on, in order, by one task; stopped only between renewals, so the
        // end of the drain is told after the last renewal was answered.
        let stop_renewing = CancellationToken::new();
        let renewals = tokio::spawn({
            let (node, stop) = (Arc::clone(self), stop_renewing.clone());
            async move {
                let mut renew = tokio::time::interval(DRAIN_RENEW);
                renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                renew.tick().await; // announced just now
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        _ = renew.tick() => {}
                    }
                    node.announce(request.clone()).await;
                }
            }
        });
        let drain = Drain { vrid, vips: local.vips.clone(), via, stop_renewing, renewals };
        tracing::info!(vrid, vips = ?drain.vips, peers_forwarding = ?forwarding, "handing the VIP over: its connections drain here");
        DrainStart::Started(drain)
    }

    /// Tells every peer of a drain (`Draining`, renewing its lease); returns those that
    /// forward for it.
    async fn announce(self: &Arc<Self>, request: PeerRequest) -> Vec<u64> {
        let peers = self.peer_ids();
        self.ask_within(&peers, request, ANNOUNCE_TIMEOUT)
            .await
            .into_iter()
            .filter(|(_, answer)| matches!(answer, Ok(PeerAnswer::Noted(true))))
            .map(|(id, _)| id)
            .collect()
    }

    fn peer_ids(&self) -> Vec<u64> {
        let me = self.id();
        self.store.members().into_iter().map(|(id, _, _)| id).filter(|id| *id != me).collect()
    }

    /// Renews `drain` and waits until no connection to its VIPs needs the client any more,
    /// this node is master again, or `deadline` (then they are closed); then ends it here and
    /// at every peer.
    async fn follow_drain(self: Arc<Self>, drain: Drain, deadline: tokio::time::Instant) {
        let vrid = drain.vrid;
        for vip in &drain.vips {
            self.plane.drain_address(IpAddr::V4(*vip), Some(Phase::Polite));
        }
        let mut look = tokio::time::interval(DRAIN_POLL);
        let mut closing = false;
        // VRRP reports the resignation a moment after it: "master again" counts only once
        // this node has been seen as backup.
        let mut left = false;
        // When another node was first seen as master; a stopping node waited for that.
        let mut taken_over = self.draining.load(Ordering::Relaxed).then(tokio::time::Instant::now);
        let ended = loop {
            look.tick().await;
            // A stopping node's VRRP has stopped and no longer says who is master.
            if !self.draining.load(Ordering::Relaxed) {
                let status = self.vrrp.as_ref().map(|(vrrp, _)| vrrp.status()).unwrap_or_default();
                let instance = status.instances.iter().find(|i| i.vrid == vrid);
                let master = instance.is_some_and(|i| i.state == State::Master);
                if left && master {
                    break "this node is master again";
                }
                left |= !master;
                let other = instance.and_then(|i| i.master).is_some_and(|m| m != drain.via);
                if taken_over.is_none() && !master && other {
                    taken_over = Some(tokio::time::Instant::now());
                }
            }
            let vips = drain.vips.clone();
            let open = tokio::task::spawn_blocking(move || {
                ["/proc/net/tcp", "/proc/net/tcp6"]
                    .iter()
                    .map(|table| {
                        std::fs::read_to_string(table).map(|t| open_connections(&t, &vips))
                    })
                    .sum::<std::io::Result<usize>>()
            })
            .await;
            let open = match open {
                Ok(Ok(open)) => open,
                Ok(Err(error)) => {
                    tracing::warn!(
                        "cannot read /proc/net/tcp, so the drain runs to its deadline: {error}"
                    );
                    usize::MAX
                }
                Err(error) => {
                    tracing::warn!(
                        "cannot count open connections, so the drain runs to its deadline: {error}"
                    );
                    usize::MAX
                }
            };
            let settled = taken_over.is_some_and(|at| at.elapsed() >= TAKEOVER_SETTLE);
            if open == 0 && settled {
                break "every connection ended";
            }
            let now = tokio::time::Instant::now();
            if now >= deadline + CLOSE_GRACE {
                tracing::warn!(
                    vrid,
                    open,
                    "connections of the handed-over VIP still open after the drain deadline; giving them up"
                );
                break "the drain deadline passed";
            }
            if now >= deadline && !closing {
                // Closed, then still held a moment, so the FINs reach the clients.
                closing = true;
                for vip in &drain.vips {
                    self.plane.drain_address(IpAddr::V4(*vip), Some(Phase::Closed));
                }
                tracing::warn!(
                    vrid,
                    open,
                    "drain deadline: closing the handed-over VIP's remaining connections"
                );
            }
        };
        drain.stop_renewing.cancel();
        let _ = drain.renewals.await;
        for vip in &drain.vips {
            self.plane.drain_address(IpAddr::V4(*vip), None);
        }
        if let Some((handover, _)) = &self.handover {
            handover.release(vrid).await;
        }
        let peers = self.peer_ids();
        self.ask_within(&peers, PeerRequest::Drained { vrid, via: drain.via }, ANNOUNCE_TIMEOUT)
            .await;
        tracing::info!(vrid, why = ended, "drain of the handed-over VIP ended");
    }

    /// Forwards for a peer's drain of `vrid` if this node runs it; only the VIPs this node
    /// knows for the VRID are forwarded.
    async fn forward_for(
        &self,
        vrid: u8,
        vips: Vec<Ipv4Addr>,
        via: Ipv4Addr,
        lease_ms: u64,
    ) -> bool {
        let (Some((handover, _)), Some(local)) =
            (&self.handover, self.vrids.iter().find(|v| v.vrid == vrid))
        else {
            return false;
        };
        let vips: Vec<Ipv4Addr> = vips.into_iter().filter(|vip| local.vips.contains(vip)).collect();
        if vips.is_empty() {
            return false;
        }
        let lease = Duration::from_millis(lease_ms).min(MAX_LEASE);
        handover.peer_draining(vrid, vips, via, local.interface.clone(), lease).await;
        true
    }

    /// Hands a VRID over as soon as this node, its master, falls below another node's
    /// priority (a tracked pool failed here, or a planned move), rather than leaving the
    /// other node to preempt after its master-down interval and the connections to reset.
    pub async fn follow_priority(self: Arc<Self>) {
        let Some((vrrp, _)) = &self.vrrp else { return };
        let mut status = vrrp.subscribe();
        let mut as_master: BTreeMap<u8, u8> = BTreeMap::new();
        while status.changed().await.is_ok() {
            let instances = status.borrow_and_update().instances.clone();
            for instance in instances {
                let before = as_master.remove(&instance.vrid);
                if instance.state != State::Master {
                    continue;
                }
                as_master.insert(instance.vrid, instance.priority);
                if before.is_some_and(|before| instance.priority < before) {
                    let node = Arc::clone(&self);
                    tokio::spawn(async move {
                        if node.outranked(instance.vrid, instance.priority).await {
                            node.hand_over(instance.vrid);
                        }
                    });
                }
            }
        }
    }

    /// Whether another node that runs `vrid` asks for more than `priority`.
    async fn outranked(self: &Arc<Self>, vrid: u8, priority: u8) -> bool {
        let peers = self.peer_ids();
        self.ask_some(&peers, PeerRequest::Status).await.into_iter().any(|(_, answer)| {
            let Ok(PeerAnswer::Status(status)) = answer else { return false };
            status
                .vrrp
                .iter()
                .any(|v| v.vrid == vrid && v.state != "stopped" && v.priority > priority)
        })
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
