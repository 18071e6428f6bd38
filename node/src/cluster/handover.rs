//! Handing a VIP over with its connections (second-chance forwarding, the node's side): the
//! old master holds the VIP here hidden from ARP (`nftables`), tells every peer to forward
//! what is not theirs under a lease it renews, resigns, and drains by local address until
//! `drain` says the drain ends; a peer told of a drain loads the forwarding rules. Also the
//! hand-over a master starts on its own when it falls below another node's priority.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fulcrum_vrrp::{Family, interface_address};
use fulcrum_vrrp::{OWNER_PRIORITY, State};
use tokio_util::sync::CancellationToken;

use super::drain::{DrainProgress, EndReason, Look, Mastership, Verdict};
use super::nftables::open_connections;
use super::node::{LocalVrid, Node};
use super::peer::{PeerAnswer, PeerRequest};
use super::views::{POLL, vip_owners};
use crate::dataplane::addresses::Phase;
use crate::time::deadline_after;

/// How long one peer may take to hear of a drain: short, as the VIP waits for it.
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long peers forward for a drain unless it is renewed: the longest a dead old master's
/// clients wait for their reset.
const DRAIN_LEASE: Duration = Duration::from_secs(2);
/// How often a drain is renewed, so a lost renewal or two do not end it.
const DRAIN_RENEW: Duration = Duration::from_millis(500);
/// How often a drain looks at what is left of its connections.
const DRAIN_POLL: Duration = Duration::from_millis(200);
/// The longest lease a peer's announcement is taken for.
const MAX_LEASE: Duration = Duration::from_secs(10);

/// A VIP drain this node started, until its connections end.
#[derive(Debug)]
pub struct Drain {
    vrid: u8,
    vips: Vec<IpAddr>,
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
            let drain = node.start_drain(local).await;
            vrrp.resign(vrid);
            // Given back as the VIPs leave, so the node that takes over is granted the lease
            // on its first request.
            node.give_up_lease(vrid).await;
            match drain {
                DrainStart::Started(drain) => {
                    let time = node.handover.as_ref().map_or(Duration::ZERO, |(_, time)| *time);
                    node.drains.spawn(Arc::clone(&node).follow_drain(drain, deadline_after(time)));
                }
                // Master again while its last drain goes on: that drain takes in what this
                // mastership accepted.
                DrainStart::UnderWay | DrainStart::Unavailable => {}
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

    /// Waits, for at most `timeout`, until another node holds the VIPs of each of `drains`'
    /// VRIDs (is master, with its lease if fenced): until then clients still reach this node
    /// for new connections, so a stopping node keeps accepting them.
    pub async fn wait_for_takeover(self: &Arc<Self>, drains: &[Drain], timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        let me = self.id();
        while tokio::time::Instant::now() < deadline {
            let owners = vip_owners(&self.cluster_status().await.nodes);
            let taken = drains.iter().all(|drain| {
                owners.iter().any(|o| o.vrid == drain.vrid && o.holders.iter().any(|m| *m != me))
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

    /// Holds `local`'s VIPs here, hidden from ARP, and tells every peer to forward; if no
    /// peer will, the VIP moves without its connections.
    async fn start_drain(self: &Arc<Self>, local: &LocalVrid) -> DrainStart {
        let Some((handover, _)) = &self.handover else { return DrainStart::Unavailable };
        let vrid = local.vrid;
        let all_vips: Vec<IpAddr> = self.vrids.iter().flat_map(|v| v.vips.clone()).collect();
        let Some(IpAddr::V4(via)) = interface_address(&local.interface, Family::Ipv4, &all_vips)
        else {
            tracing::warn!(vrid, interface = %local.interface, "no IPv4 address of this node's own on the link to forward to: the VIP moves without its connections");
            return DrainStart::Unavailable;
        };
        let via_v6 = match interface_address(&local.interface, Family::Ipv6, &all_vips) {
            Some(IpAddr::V6(link_local)) => Some(link_local),
            _ => None,
        };
        let vips: Vec<IpAddr> =
            local.vips.iter().copied().filter(|vip| vip.is_ipv4() || via_v6.is_some()).collect();
        if vips.len() < local.vips.len() {
            tracing::warn!(vrid, interface = %local.interface, "no IPv6 link-local address of this node's own on the link to forward to: the VRID's IPv6 VIPs move without their connections");
        }
        match handover.hold(vrid, &vips, via).await {
            Ok(true) => {}
            Ok(false) => return DrainStart::UnderWay,
            Err(error) => {
                tracing::error!(vrid, "the VIP moves without its connections: {error}");
                return DrainStart::Unavailable;
            }
        }
        let request = PeerRequest::Draining {
            vrid,
            vips: vips.clone(),
            via,
            via_v6,
            lease_ms: DRAIN_LEASE.as_millis() as u64,
        };
        let (forwarding, refusing) = self.announce(request.clone()).await;
        for (node, why) in &refusing {
            // If that node becomes master, the connections draining here are reset.
            tracing::warn!(
                vrid,
                node,
                "node {node} runs the VRID but cannot forward for the drain ({why}): connections draining here are lost if it takes the VIP"
            );
        }
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
        let drain = Drain { vrid, vips, via, stop_renewing, renewals };
        tracing::info!(vrid, vips = ?drain.vips, peers_forwarding = ?forwarding, "handing the VIP over: its connections drain here");
        DrainStart::Started(drain)
    }

    /// Tells every peer of a drain (`Draining`, renewing its lease); returns those that
    /// forward for it, and those that run the VRID but cannot, with why.
    async fn announce(self: &Arc<Self>, request: PeerRequest) -> (Vec<u64>, Vec<(u64, String)>) {
        let peers = self.peers.peer_ids();
        let (mut forwarding, mut refusing) = (Vec::new(), Vec::new());
        for (id, answer) in self.peers.ask_within(&peers, request, ANNOUNCE_TIMEOUT).await {
            match answer {
                Ok(PeerAnswer::Noted(true)) => forwarding.push(id),
                Ok(PeerAnswer::CannotForward(why)) => refusing.push((id, why)),
                _ => {}
            }
        }
        (forwarding, refusing)
    }

    /// Renews `drain` and waits until no connection to its VIPs needs the client any more,
    /// this node is master again, or `deadline` (then they are closed); then ends it here and
    /// at every peer.
    async fn follow_drain(self: Arc<Self>, drain: Drain, deadline: tokio::time::Instant) {
        let vrid = drain.vrid;
        for vip in &drain.vips {
            self.plane.drain_address(*vip, Some(Phase::Polite));
        }
        let mut look = tokio::time::interval(DRAIN_POLL);
        let stopping = self.draining.load(Ordering::Relaxed);
        let now = tokio::time::Instant::now().into_std();
        let mut progress = DrainProgress::new(now, deadline.into_std(), stopping);
        let ended = loop {
            look.tick().await;
            let open = count_open(&drain.vips).await;
            let observed = Look { vrrp: self.mastership(vrid, drain.via), open };
            match progress.handle_look(tokio::time::Instant::now().into_std(), observed) {
                Verdict::Keep => {}
                Verdict::CloseNow => {
                    // Closed, then still held a moment, so the FINs reach the clients.
                    for vip in &drain.vips {
                        self.plane.drain_address(*vip, Some(Phase::Closed));
                    }
                    tracing::warn!(
                        vrid,
                        open,
                        "drain deadline: closing the handed-over VIP's remaining connections"
                    );
                }
                Verdict::End(reason) => {
                    if reason == EndReason::DeadlinePassed {
                        tracing::warn!(
                            vrid,
                            open,
                            "connections of the handed-over VIP still open after the drain deadline; giving them up"
                        );
                    }
                    break reason;
                }
            }
        };
        drain.stop_renewing.cancel();
        let _ = drain.renewals.await;
        for vip in &drain.vips {
            self.plane.drain_address(*vip, None);
        }
        if let Some((handover, _)) = &self.handover {
            handover.release(vrid).await;
        }
        let peers = self.peers.peer_ids();
        self.peers
            .ask_within(&peers, PeerRequest::Drained { vrid, via: drain.via }, ANNOUNCE_TIMEOUT)
            .await;
        tracing::info!(vrid, why = ended.as_str(), "drain of the handed-over VIP ended");
    }

    /// Forwards for a peer's drain of `vrid` if this node runs it; only the VIPs this node
    /// knows for the VRID are forwarded. The answer says whether it does, or why it cannot
    /// although it runs the VRID (its rules did not load), so the draining node can say so.
    pub(super) async fn forward_for(
        &self,
        vrid: u8,
        vips: Vec<IpAddr>,
        (via, via_v6): (Ipv4Addr, Option<Ipv6Addr>),
        lease_ms: u64,
    ) -> PeerAnswer {
        let (Some((handover, _)), Some(local)) =
            (&self.handover, self.vrids.iter().find(|v| v.vrid == vrid))
        else {
            return PeerAnswer::Noted(false);
        };
        let vips: Vec<IpAddr> = vips.into_iter().filter(|vip| local.vips.contains(vip)).collect();
        if vips.is_empty() {
            return PeerAnswer::Noted(false);
        }
        let lease = Duration::from_millis(lease_ms).min(MAX_LEASE);
        let interface = local.interface.clone();
        match handover.peer_draining(vrid, vips, (via, via_v6), interface, lease).await {
            Ok(()) => PeerAnswer::Noted(true),
            Err(error) => {
                tracing::error!(vrid, %via, "cannot forward for a peer's drain: {error}");
                PeerAnswer::CannotForward(error.to_string())
            }
        }
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
        let peers = self.peers.peer_ids();
        self.peers.ask_some(&peers, PeerRequest::Status).await.into_iter().any(|(_, answer)| {
            let Ok(PeerAnswer::Status(status)) = answer else { return false };
            status
                .vrrp
                .iter()
                .any(|v| v.vrid == vrid && v.state != "stopped" && v.priority > priority)
        })
    }
}

impl Node {
    /// What VRRP says of `vrid`, for a drain at `via`; `None` once the node is stopping (its
    /// VRRP has stopped and no longer says who is master).
    fn mastership(&self, vrid: u8, via: Ipv4Addr) -> Option<Mastership> {
        if self.draining.load(Ordering::Relaxed) {
            return None;
        }
        let status = self.vrrp.as_ref().map(|(vrrp, _)| vrrp.status()).unwrap_or_default();
        let instance = status.instances.iter().find(|i| i.vrid == vrid);
        Some(Mastership {
            here: instance.is_some_and(|i| i.state == State::Master),
            elsewhere: instance.and_then(|i| i.master).is_some_and(|m| m != via),
        })
    }
}

/// This node's open TCP connections to `vips`, from `/proc/net/tcp{,6}`; `None` when they
/// cannot be read (the drain then runs to its deadline).
async fn count_open(vips: &[IpAddr]) -> Option<usize> {
    let vips = vips.to_vec();
    let counted = tokio::task::spawn_blocking(move || {
        ["/proc/net/tcp", "/proc/net/tcp6"]
            .iter()
            .map(|table| std::fs::read_to_string(table).map(|t| open_connections(&t, &vips)))
            .sum::<std::io::Result<usize>>()
    })
    .await;
    match counted {
        Ok(Ok(open)) => Some(open),
        Ok(Err(error)) => {
            tracing::warn!("cannot read /proc/net/tcp, so the drain runs to its deadline: {error}");
            None
        }
        Err(error) => {
            tracing::warn!(
                "cannot count open connections, so the drain runs to its deadline: {error}"
            );
            None
        }
    }
}
