//! The node as a cluster member: what it runs (store, data plane, VRRP with its
//! priorities, second-chance forwarding), its own status and gauges, its readiness, and how
//! it answers its peers. The cluster-wide views, VIP moves and hand-overs are methods of
//! [`Node`] defined in their own modules.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fulcrum_model::api::{LeaseView, NodeStatus, VrrpStatus};
use fulcrum_model::codec;
use fulcrum_raft_store::ConfigStore;
use fulcrum_vrrp::State;
use fulcrum_vrrp::Vrrp;
use tokio_util::task::TaskTracker;

use super::fence::{Arbiter, FenceTimes, Leases};
use super::nftables::Handover;
use super::peer::{PeerAnswer, PeerRequest, Peers};
use super::priorities::Priorities;
use crate::bgp::Bgp;
use crate::dataplane::DataPlane;
use crate::prometheus::Exposition;

/// One virtual router of this node, as the node file declares it.
#[derive(Clone, Debug)]
pub struct LocalVrid {
    /// The VRID.
    pub vrid: u8,
    /// Its link.
    pub interface: String,
    /// Its addresses, IPv4 and IPv6.
    pub vips: Vec<IpAddr>,
}

/// The running node, as the admin API and its peers see it.
pub struct Node {
    /// The store: membership, Raft state, the peer transport.
    pub(super) store: Arc<ConfigStore>,
    /// The data plane, for the revision it serves, its pools and drains by address.
    pub(super) plane: Arc<DataPlane>,
    /// Asks the other members.
    pub(super) peers: Arc<Peers>,
    /// The VRRP driver with the priorities this node controls, if it runs VRRP.
    pub(super) vrrp: Option<(Arc<Vrrp>, Arc<Priorities>)>,
    /// The virtual routers the node file declares.
    pub(super) vrids: Vec<LocalVrid>,
    /// Second-chance forwarding, if on, and how long a handed-over VIP's connections drain.
    pub(super) handover: Option<(Arc<Handover>, Duration)>,
    /// Held while a hand-over prepares (holds the VIP, tells the peers, resigns).
    pub(super) handing_over: tokio::sync::Mutex<()>,
    /// The drains under way, which a stopping node waits for.
    pub(super) drains: TaskTracker,
    /// Set once the node stops: it reports so, and its VRRP no longer says who is master.
    pub(super) draining: AtomicBool,
    /// Set once it serves its configuration with VRRP started.
    ready: AtomicBool,
    /// The fence's timings.
    pub(super) fence_times: FenceTimes,
    /// The leases of a fenced node.
    pub(super) fence: Option<FenceState>,
    /// While this node leads the Raft group: who holds each VRID's lease.
    pub(super) arbiter: std::sync::Mutex<Option<Arbiter>>,
    /// Its BGP announcements, if it makes any.
    bgp: std::sync::OnceLock<Arc<Bgp>>,
}

impl Node {
    /// The node; `vrrp` is its driver with the priorities it controls, if it runs VRRP, and
    /// `handover` its nftables rules (the fence's and second-chance forwarding's) with the
    /// drain time of a handed-over VIP, `fence_times` the fence's timings (a leader
    /// arbitrates with them, fenced or not) and `fenced` whether it holds VIPs only with a
    /// lease. It answers its peers from now on.
    pub fn start(
        store: Arc<ConfigStore>,
        plane: Arc<DataPlane>,
        vrrp: Option<(Arc<Vrrp>, Arc<Priorities>)>,
        vrids: Vec<LocalVrid>,
        handover: Option<(Arc<Handover>, Duration)>,
        fence_times: FenceTimes,
        fenced: bool,
    ) -> Arc<Node> {
        let node = Arc::new(Node {
            fence_times,
            fence: fenced.then(FenceState::default),
            arbiter: std::sync::Mutex::new(None),
            peers: Peers::new(Arc::clone(&store)),
            store,
            plane,
            vrrp,
            vrids,
            handover,
            handing_over: tokio::sync::Mutex::new(()),
            drains: TaskTracker::new(),
            draining: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            bgp: std::sync::OnceLock::new(),
        });
        let weak = Arc::downgrade(&node);
        node.peers.serve(Arc::new(move |request| {
            let node = weak.clone();
            Box::pin(async move {
                let answer = match node.upgrade() {
                    Some(node) => node.answer(&request).await,
                    None => PeerAnswer::Malformed("the node is stopping".into()),
                };
                codec::encode(&answer).unwrap_or_default()
            })
        }));
        node
    }

    // Getters.

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.store.node_id()
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
                    holding: running.is_some_and(|i| i.holding),
                    lease: self.lease_of(local.vrid).map(|(grant, left)| LeaseView {
                        epoch: grant.epoch,
                        left_ms: left.as_millis() as u64,
                    }),
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
            bgp: self.bgp.get().map(|bgp| bgp.status()),
        }
    }

    /// The node's own gauges (Raft, revision, VRRP, readiness) in the Prometheus text format;
    /// the data plane renders the rest.
    pub fn metrics(&self) -> String {
        let status = self.status();
        let mut page = Exposition::default();
        page.family("fulcrum_raft_term", "gauge", "The Raft term this node is in.")
            .sample("", status.term);
        page.family("fulcrum_raft_leader", "gauge", "1 while this node leads the Raft group.")
            .sample("", u8::from(status.leader == Some(status.id)));
        page.family("fulcrum_config_revision", "gauge", "The configuration revision served here.")
            .sample("", status.revision);
        let refused = self.store.metrics().refused_rpcs;
        let mut refusals = page.family(
            "fulcrum_raft_rpc_refused_total",
            "counter",
            "Raft RPC requests refused before they were served, by reason.",
        );
        for (reason, count) in [
            ("missing_header", refused.missing_header),
            ("wrong_cluster", refused.wrong_cluster),
            ("wrong_target", refused.wrong_target),
            ("bad_signature", refused.bad_signature),
            ("stale", refused.stale),
            ("replayed", refused.replayed),
            ("body_mismatch", refused.body_mismatch),
        ] {
            refusals.sample(&format!("reason=\"{reason}\""), count);
        }
        page.family("fulcrum_node_ready", "gauge", "1 while /readyz answers ready.")
            .sample("", u8::from(self.not_ready().is_none()));
        let mut master =
            page.family("fulcrum_vrrp_master", "gauge", "1 while this node is master of the VRID.");
        for vrrp in &status.vrrp {
            master.sample(&format!("vrid=\"{}\"", vrrp.vrid), u8::from(vrrp.state == "master"));
        }
        let mut priority = page.family(
            "fulcrum_vrrp_priority",
            "gauge",
            "The priority advertised for the VRID, after penalties.",
        );
        for vrrp in &status.vrrp {
            priority.sample(&format!("vrid=\"{}\"", vrrp.vrid), vrrp.priority);
        }
        if let Some(bgp) = &status.bgp {
            crate::bgp::write_metrics(&mut page, bgp, status.id);
        }
        page.finish()
    }

    /// Whether VRRP makes this node master of `vrid` now.
    pub(super) fn is_master(&self, vrid: u8) -> bool {
        self.vrrp.as_ref().is_some_and(|(vrrp, _)| {
            vrrp.status().instances.iter().any(|i| i.vrid == vrid && i.state == State::Master)
        })
    }

    // Mutators.

    /// Reports `bgp`'s announcements and sessions in the node's status and metrics, and
    /// steers its VIPs' flows with the other members if it keeps flows.
    pub fn report_bgp(self: &Arc<Self>, bgp: Arc<Bgp>) {
        if self.bgp.set(Arc::clone(&bgp)).is_ok() && bgp.flow_member().is_some() {
            tokio::spawn(Arc::clone(self).steer_flows(bgp));
        }
    }

    /// Marks the node ready (serving its configuration, VRRP started) or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Marks the node as draining: it reports so, and is no longer ready.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    // Peer requests.

    /// Answers one peer request (or this node's own).
    async fn answer(self: &Arc<Self>, request: &[u8]) -> PeerAnswer {
        match codec::decode::<PeerRequest>(request) {
            Ok(PeerRequest::Status) => PeerAnswer::Status(Box::new(self.status())),
            Ok(PeerRequest::Revision) => PeerAnswer::Revision(self.plane.served_revision()),
            Ok(PeerRequest::MoveVip { vrid, to }) => PeerAnswer::Moved(
                self.vrrp.as_ref().is_some_and(|(_, priorities)| priorities.move_to(vrid, to)),
            ),
            Ok(PeerRequest::Resign { vrid }) => PeerAnswer::Moved(self.hand_over(vrid)),
            Ok(PeerRequest::Draining { vrid, vips, via, via_v6, lease_ms }) => {
                self.forward_for(vrid, vips, (via, via_v6), lease_ms).await
            }
            Ok(PeerRequest::Drained { vrid, via }) => {
                if let Some((handover, _)) = &self.handover {
                    handover.peer_drained(vrid, via).await;
                }
                PeerAnswer::Noted(self.handover.is_some())
            }
            Ok(PeerRequest::Lease { vrid, node, claimed, generation, lease_ms }) => {
                let lease = Duration::from_millis(lease_ms);
                PeerAnswer::Lease(self.arbitrate(vrid, node, claimed, generation, lease).await)
            }
            Ok(PeerRequest::FenceCheck) => PeerAnswer::Noted(self.leads_with_quorum().await),
            Ok(PeerRequest::Release { vrid, node, generation }) => {
                self.released(vrid, node, generation);
                PeerAnswer::Noted(true)
            }
            Ok(PeerRequest::Flows) => {
                PeerAnswer::Flows(self.bgp.get().and_then(|bgp| bgp.flow_member()))
            }
            Ok(PeerRequest::RateCounts(reports)) => {
                self.plane.absorb_rate_reports(&reports, std::time::Instant::now());
                PeerAnswer::Noted(true)
            }
            Ok(PeerRequest::DrainBgp(drain)) => {
                let bgp = self.bgp.get();
                if let Some(bgp) = bgp {
                    bgp.set_drained(drain);
                }
                PeerAnswer::Noted(bgp.is_some())
            }
            Err(error) => PeerAnswer::Malformed(error.to_string()),
        }
    }
}

/// A fenced node's lease state.
#[derive(Debug, Default)]
pub(crate) struct FenceState {
    /// The leases by VRID.
    pub(crate) leases: std::sync::Mutex<Leases>,
    /// Woken when a grant arrives, so VIPs are added at once.
    pub(crate) granted: tokio::sync::Notify,
}
