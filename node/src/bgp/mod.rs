//! VIPs announced over BGP: every node that can serve them announces them to its routers at
//! once, and the routers spread flows over the nodes (ECMP). A node withdraws when a tracked
//! pool cannot be served here and when it stops; a node that dies takes its BIRD with it.
//!
//! - [`bird`]: BIRD 2's configuration for the sessions and the announced VIPs (pure).
//! - [`speaker`]: the BIRD process, started by fulcrumd and stopped with it.

pub mod bird;
pub mod speaker;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use fulcrum_model::api::{BgpSession, BgpStatus};
use fulcrum_policy::lock;
use fulcrum_vrrp::VipManager;

use crate::DataPlane;
use crate::node_file::BgpSection;
use speaker::{Speaker, SpeakerError};

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
        }))
    }

    /// What it announces now and its sessions (as of the last second).
    pub fn status(&self) -> BgpStatus {
        lock(&self.status).clone()
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
            let servable = failing.is_empty();
            if servable != was_servable {
                match servable {
                    false => {
                        tracing::warn!(pools = ?failing, "tracked pool unservable here: withdrawing the BGP VIPs")
                    }
                    true => tracing::info!("tracked pools servable again: announcing the BGP VIPs"),
                }
                was_servable = servable;
            }
            match self.speaker.announce(&wanted(&self.section.vips, servable)).await {
                Ok(()) => last_error = None,
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
                .map(|(index, neighbor)| BgpSession {
                    neighbor: neighbor.address,
                    state: states
                        .iter()
                        .find(|(i, _)| *i == index)
                        .map_or_else(|| "down".to_owned(), |(_, state)| state.clone()),
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
        if let Err(error) = self.speaker.withdraw().await {
            tracing::error!("cannot withdraw the BGP VIPs: {error}; stopping BIRD instead");
            self.speaker.stop().await;
        }
    }

    /// Stops BIRD and removes the VIPs it added from `lo`.
    pub async fn stop(&self) {
        self.speaker.stop().await;
        for vip in &self.added {
            if let Err(error) = self.loopback.remove(*vip).await {
                tracing::warn!(%vip, "cannot remove the BGP VIP from lo: {error}");
            }
        }
    }
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
}
