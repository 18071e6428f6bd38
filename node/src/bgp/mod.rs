//! VIPs announced over BGP: every node that can serve them announces them to its routers at
//! once, and the routers spread flows over the nodes (ECMP). A node withdraws when a tracked
//! pool cannot be served here, when an operator drains it and when it stops; a node that
//! dies takes its BIRD with it. With `keep_flows`, the nodes hand each other the packets of
//! connections they hold, so a router rehashing flows cuts none.
//!
//! - [`bird`]: BIRD 2's configuration for the sessions and the announced VIPs (pure).
//! - [`speaker`]: the BIRD process, started by fulcrumd and stopped with it.
//! - [`buckets`]: which node each flow belongs to, derived alike on every node (pure).
//! - [`steering`]: the nftables rules that hand packets to that node.

pub mod bird;
pub mod buckets;
pub mod speaker;
pub mod steering;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fulcrum_model::api::{BgpSession, BgpStatus, FlowMemberStatus};
use fulcrum_policy::lock;
use fulcrum_vrrp::{Family, VipManager, interface_address, interface_mac, interface_networks};

use crate::DataPlane;
use crate::node_file::BgpSection;
use buckets::Standing;
use speaker::{Speaker, SpeakerError};
use steering::{FlowMember, Link, Plan};

use crate::nft::NftError;
use crate::prometheus::Exposition;

/// How often tracked pools are looked at.
const HEALTH_POLL: Duration = Duration::from_millis(100);
/// How often BIRD is checked on and its sessions' states asked for.
const SESSIONS_POLL: Duration = Duration::from_secs(1);

/// Why BGP could not start.
#[derive(Debug, thiserror::Error)]
pub enum BgpError {
    /// A VIP could not be added to `lo`.
    #[error("cannot add the BGP VIPs to lo: {0}")]
    Loopback(#[from] fulcrum_vrrp::DriverError),
    /// BIRD could not be started.
    #[error(transparent)]
    Speaker(#[from] SpeakerError),
    /// The link steered packets cross could not be found.
    #[error("[bgp] keep_flows: {0}")]
    Link(String),
}

/// What this node announces, and why.
pub struct Bgp {
    section: BgpSection,
    speaker: Speaker,
    loopback: VipManager,
    /// The VIPs this node added to `lo` (and removes when it stops).
    added: Vec<IpAddr>,
    /// What `status` reports: refreshed every second.
    status: std::sync::Mutex<BgpStatus>,
    /// Where packets handed to this node arrive, with flow steering on.
    link: Option<Link>,
    /// That link's IPv4 networks (address and prefix length).
    link_networks: Vec<(std::net::Ipv4Addr, u8)>,
    /// Whether it announces the VIPs now (it takes new connections), and since when.
    standing: std::sync::Mutex<(Standing, u64)>,
    /// Set by an operator's drain: nothing is announced until it is lifted.
    drained: AtomicBool,
    /// Set once the steering rules hold every member that answers (at once without flow
    /// steering): a node announces only then, so it never resets a peer's connection.
    steering_ready: AtomicBool,
    /// Held while the steering rules change; true once they are removed for good.
    steering_removed: tokio::sync::Mutex<bool>,
}

/// The VIPs to announce: all of them while every tracked pool can be served here, else none.
pub fn wanted(vips: &[IpAddr], servable: bool) -> Vec<IpAddr> {
    if servable { vips.to_vec() } else { Vec::new() }
}

impl std::fmt::Debug for Bgp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bgp").field("speaker", &self.speaker).finish_non_exhaustive()
    }
}

impl Bgp {
    /// Adds the VIPs to `lo` (so their traffic is accepted here) and starts BIRD announcing
    /// nothing yet; [`Bgp::follow_health`] decides what to announce.
    pub async fn start(section: BgpSection) -> Result<Arc<Bgp>, BgpError> {
        let link = match section.keep_flows.unwrap_or(false) {
            true => Some(shared_link(&section).await?),
            false => {
                // Rules a run with keep_flows left behind would hand packets on.
                let _ = steering::remove().await;
                None
            }
        };
        let loopback = VipManager::open("lo")?;
        let mut added = Vec::new();
        for vip in &section.vips {
            if !loopback.holds(*vip).await? {
                loopback.add(*vip).await?;
                added.push(*vip);
            }
        }
        let speaker = match Speaker::start(section.clone()).await {
            Ok(speaker) => speaker,
            Err(error) => {
                for vip in &added {
                    let _ = loopback.remove(*vip).await;
                }
                return Err(error.into());
            }
        };
        let status = BgpStatus { vips: section.vips.clone(), ..BgpStatus::default() };
        Ok(Arc::new(Bgp {
            section,
            speaker,
            loopback,
            added,
            status: std::sync::Mutex::new(status),
            steering_ready: AtomicBool::new(link.is_none()),
            link_networks: link
                .as_ref()
                .map(|l| interface_networks(&l.interface))
                .unwrap_or_default(),
            link,
            // Since 0: a node that has just started held nothing, so it is nobody's last holder.
            standing: std::sync::Mutex::new((Standing::Draining, 0)),
            drained: AtomicBool::new(false),
            steering_removed: tokio::sync::Mutex::new(false),
        }))
    }

    /// What this node tells the others of its part in the flows, with flow steering on.
    pub fn flow_member(&self) -> Option<FlowMember> {
        let (standing, since_ms) = *lock(&self.standing);
        let link = self.link.clone()?;
        Some(FlowMember { standing, since_ms, vips: self.section.vips.clone(), link })
    }

    /// Records whether the node announces: never again once it stopped.
    fn set_announcing(&self, announcing: bool) {
        let mut standing = lock(&self.standing);
        // Read under the lock, so a late health tick cannot undo the withdrawal.
        let now = match announcing && !self.speaker.withdrawn() {
            true => Standing::Announcing,
            false => Standing::Draining,
        };
        if standing.0 != now {
            *standing = (now, unix_ms());
        }
    }

    /// Drains the node (withdraws the VIPs, serving the connections it holds) or lifts the
    /// drain; takes effect within [`HEALTH_POLL`].
    pub fn set_drained(&self, drained: bool) {
        if self.drained.swap(drained, Ordering::AcqRel) != drained {
            tracing::info!(drained, "BGP drain set by an operator");
        }
    }

    /// Puts `plan`'s steering rules in place, unless the node stopped steering.
    pub(crate) async fn steer(&self, plan: &Plan) -> Result<(), NftError> {
        let removed = self.steering_removed.lock().await;
        match *removed {
            true => Ok(()),
            false => steering::load(plan).await,
        }
    }

    /// The rules loaded hold every member, as all answered: the node may announce.
    pub(crate) fn steering_ready(&self) {
        if !self.steering_ready.swap(true, Ordering::AcqRel) {
            tracing::info!("flow steering rules hold every member: announcing may start");
        }
    }

    /// Whether `address` is on the link the nodes share (packets are handed over on it).
    pub(crate) fn on_link(&self, address: std::net::Ipv4Addr) -> bool {
        in_networks(&self.link_networks, address)
    }

    /// The packets handed to each peer so far, if they can be read.
    pub(crate) async fn handed(&self) -> Option<std::collections::BTreeMap<u64, u64>> {
        steering::read_handed()
            .await
            .map_err(|error| tracing::debug!("cannot read the flow steering counters: {error}"))
            .ok()
    }

    /// Keeps the flow members' view and what was handed to each for the status.
    pub fn report_flows(&self, members: Vec<FlowMemberStatus>) {
        lock(&self.status).flow_members = members;
    }

    /// What it announces now and its sessions (as of the last second).
    pub fn status(&self) -> BgpStatus {
        let mut status = lock(&self.status).clone();
        status.drained = self.drained.load(Ordering::Acquire);
        status
    }

    /// Announces the VIPs while every tracked pool can be served here; runs until the
    /// process ends.
    pub async fn follow_health(self: Arc<Self>, plane: Arc<DataPlane>) {
        tokio::spawn(Arc::clone(&self).follow_sessions());
        let mut tick = tokio::time::interval(HEALTH_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_error: Option<String> = None;
        let mut was_servable = true;
        loop {
            tick.tick().await;
            let failing: Vec<&String> = self
                .section
                .track_pools
                .iter()
                .filter(|pool| !plane.pool(pool).is_some_and(|p| p.can_serve()))
                .collect();
            let drained = self.drained.load(Ordering::Acquire);
            let ready = self.steering_ready.load(Ordering::Acquire);
            let servable = failing.is_empty() && !drained && ready;
            if servable != was_servable {
                match (servable, failing.is_empty(), drained) {
                    (true, _, _) => tracing::info!("announcing the BGP VIPs"),
                    (false, false, _) => {
                        tracing::warn!(pools = ?failing, "tracked pool unservable here: withdrawing the BGP VIPs")
                    }
                    (false, true, true) => tracing::info!("drained: withdrawing the BGP VIPs"),
                    (false, true, false) => {
                        tracing::info!("waiting for the flow steering rules before announcing")
                    }
                }
                was_servable = servable;
            }
            let vips = wanted(&self.section.vips, servable);
            if vips.is_empty() {
                // Draining before the routers hear of it: peers stop sending new flows here.
                self.set_announcing(false);
            }
            match self.speaker.announce(&vips).await {
                Ok(()) => {
                    last_error = None;
                    self.set_announcing(!self.speaker.announced().await.is_empty());
                }
                Err(error) => {
                    let error = error.to_string();
                    if last_error.as_ref() != Some(&error) {
                        tracing::error!("cannot change the BGP announcements: {error}");
                    }
                    last_error = Some(error);
                }
            }
        }
    }

    /// Every second: starts BIRD again if it exited, and keeps the sessions' states for the
    /// status (apart from the health loop, so a slow `birdc` never delays a withdrawal).
    async fn follow_sessions(self: Arc<Self>) {
        let mut tick = tokio::time::interval(SESSIONS_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(error) = self.speaker.revive().await {
                tracing::error!("cannot start BIRD again: {error}");
            }
            let states = self.speaker.sessions().await.unwrap_or_else(|error| {
                tracing::debug!("cannot read BIRD's sessions: {error}");
                Vec::new()
            });
            let sessions = self
                .section
                .neighbors
                .iter()
                .enumerate()
                .map(|(index, neighbor)| {
                    let found = states.iter().find(|(i, _, _)| *i == index);
                    BgpSession {
                        neighbor: neighbor.address,
                        state: found.map_or_else(|| "down".to_owned(), |(_, s, _)| s.clone()),
                        routes_sent: found.map_or(0, |(_, _, sent)| *sent),
                    }
                })
                .collect();
            let announced = self.speaker.announced().await;
            let mut status = lock(&self.status);
            status.announced = announced;
            status.sessions = sessions;
        }
    }

    /// Withdraws every VIP for good (the node stops); the routers stop sending new flows
    /// here.
    pub async fn withdraw(&self) {
        // Before BIRD hears of it: the peers stop handing this node new connections at once.
        self.speaker.stop_announcing();
        self.set_announcing(false);
        if let Err(error) = self.speaker.withdraw().await {
            tracing::error!("cannot withdraw the BGP VIPs: {error}; stopping BIRD instead");
            self.speaker.stop().await;
        }
    }

    /// Stops BIRD, removes the steering rules and the VIPs it added to `lo`.
    pub async fn stop(&self) {
        self.speaker.stop().await;
        let mut removed = self.steering_removed.lock().await;
        if self.link.is_some()
            && !*removed
            && let Err(error) = steering::remove().await
        {
            tracing::warn!("cannot remove the flow steering rules: {error}");
        }
        *removed = true;
        for vip in &self.added {
            if let Err(error) = self.loopback.remove(*vip).await {
                tracing::warn!(%vip, "cannot remove the BGP VIP from lo: {error}");
            }
        }
    }
}

/// The BGP families of `/metrics`, from node `me`'s status `bgp`.
pub(crate) fn write_metrics(page: &mut Exposition, bgp: &BgpStatus, me: u64) {
    let mut announced = page.family(
        "fulcrum_bgp_announced",
        "gauge",
        "1 while this node announces the VIP over BGP.",
    );
    for vip in &bgp.vips {
        announced.sample(&format!("vip=\"{vip}\""), u8::from(bgp.announced.contains(vip)));
    }
    let mut sessions = page.family(
        "fulcrum_bgp_session_established",
        "gauge",
        "1 while the BGP session to the router is established.",
    );
    for session in &bgp.sessions {
        let up = u8::from(session.state.ends_with("Established"));
        sessions.sample(&format!("neighbor=\"{}\"", session.neighbor), up);
    }
    let mut sent = page.family(
        "fulcrum_bgp_routes_sent",
        "gauge",
        "Routes this node's session has sent the router: what the router holds from it.",
    );
    for session in &bgp.sessions {
        sent.sample(&format!("neighbor=\"{}\"", session.neighbor), session.routes_sent);
    }
    let mut standing = page.family(
        "fulcrum_bgp_flow_member_announcing",
        "gauge",
        "Members sharing the BGP VIPs' flows as this node sees them: 1 announcing, 0 draining.",
    );
    for member in &bgp.flow_members {
        let announcing = u8::from(member.standing == "announcing");
        standing.sample(&format!("node=\"{}\"", member.node), announcing);
    }
    let mut handed = page.family(
        "fulcrum_bgp_handed_packets_total",
        "counter",
        "Packets of BGP VIPs this node handed to the member holding their connection.",
    );
    for member in bgp.flow_members.iter().filter(|m| m.node != me) {
        handed.sample(&format!("to=\"{}\"", member.node), member.handed_packets);
    }
}

/// Whether `address` is in one of `networks` (address and prefix length).
fn in_networks(networks: &[(std::net::Ipv4Addr, u8)], address: std::net::Ipv4Addr) -> bool {
    networks.iter().any(|(network, prefix)| {
        let mask = u32::MAX.checked_shl(32 - u32::from(*prefix).min(32)).unwrap_or(0);
        u32::from(*network) & mask == u32::from(address) & mask
    })
}

/// Now, in milliseconds since the Unix epoch (0 for a clock before it).
fn unix_ms() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since.map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

/// This node's end of the link the nodes share: `interface`, or the one towards the first
/// neighbor.
async fn shared_link(section: &BgpSection) -> Result<Link, BgpError> {
    let interface = match &section.interface {
        Some(interface) => interface.clone(),
        None => {
            let neighbor = section.neighbors.first().map(|n| n.address.to_string());
            let neighbor = neighbor.ok_or_else(|| BgpError::Link("no neighbor".into()))?;
            let output = tokio::process::Command::new("ip")
                .args(["-j", "route", "get", &neighbor])
                .output()
                .await
                .map_err(|e| BgpError::Link(format!("cannot run ip route get: {e}")))?;
            route_device(&String::from_utf8_lossy(&output.stdout)).ok_or_else(|| {
                BgpError::Link(format!(
                    "no route to the neighbor {neighbor}: name the shared link with interface"
                ))
            })?
        }
    };
    if !crate::nft::quotable(&interface) {
        return Err(BgpError::Link(format!(
            "interface name {interface:?} cannot be written in an nftables rule"
        )));
    }
    let mac = interface_mac(&interface).ok_or_else(|| {
        BgpError::Link(format!("interface {interface:?} has no MAC address (or does not exist)"))
    })?;
    let address = |family| interface_address(&interface, family, &section.vips);
    let ipv4 = match address(Family::Ipv4) {
        Some(IpAddr::V4(v4)) => Some(v4),
        _ => None,
    };
    let ipv6 = match address(Family::Ipv6) {
        Some(IpAddr::V6(v6)) => Some(v6),
        _ => None,
    };
    Ok(Link { interface, mac, ipv4, ipv6 })
}

/// The device of `ip -j route get`'s answer.
fn route_device(json: &str) -> Option<String> {
    let routes: serde_json::Value = serde_json::from_str(json).ok()?;
    Some(routes.get(0)?.get("dev")?.as_str()?.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_vip_is_announced_only_while_servable() {
        let vips: Vec<IpAddr> = vec!["198.18.0.200".parse().unwrap()];
        assert_eq!(wanted(&vips, true), vips);
        assert!(wanted(&vips, false).is_empty());
    }

    #[test]
    fn a_peer_is_on_the_link_if_an_address_of_the_link_covers_it() {
        let networks = [("198.18.0.11".parse().unwrap(), 24), ("10.0.0.1".parse().unwrap(), 32)];
        assert!(in_networks(&networks, "198.18.0.12".parse().unwrap()));
        assert!(in_networks(&networks, "10.0.0.1".parse().unwrap()));
        assert!(!in_networks(&networks, "198.18.1.12".parse().unwrap()));
        assert!(!in_networks(&networks, "10.0.0.2".parse().unwrap()));
        assert!(in_networks(&[("0.0.0.0".parse().unwrap(), 0)], "192.0.2.1".parse().unwrap()));
        assert!(!in_networks(&[], "192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn the_shared_link_is_the_route_s_device() {
        let json = r#"[{"dst":"198.18.0.254","dev":"eth0","prefsrc":"198.18.0.11","flags":[],"uid":0,"cache":[]}]"#;
        assert_eq!(route_device(json).as_deref(), Some("eth0"));
        assert_eq!(route_device("[]"), None);
        assert_eq!(route_device("RTNETLINK answers: Network is unreachable"), None);
    }
}
