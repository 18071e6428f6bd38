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
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fulcrum_model::api::{BgpSession, BgpStatus};
use fulcrum_policy::lock;
use fulcrum_vrrp::VipManager;

use crate::DataPlane;
use crate::node_file::BgpSection;
use speaker::{Speaker, SpeakerError};

/// How often tracked pools are looked at.
const HEALTH_POLL: Duration = Duration::from_millis(100);
/// How often the sessions' states are asked of BIRD, in health polls.
const SESSIONS_EVERY: u32 = 10;

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
    /// Set when the node stops: nothing is announced any more.
    withdrawn: AtomicBool,
    /// What `status` reports: refreshed by the health loop.
    status: std::sync::Mutex<BgpStatus>,
}

/// The VIPs to announce: all of them while every tracked pool can be served here and the
/// node is not stopping, else none.
pub fn wanted(vips: &[IpAddr], servable: bool, stopping: bool) -> Vec<IpAddr> {
    if servable && !stopping { vips.to_vec() } else { Vec::new() }
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
        for vip in &section.vips {
            if !loopback.holds(*vip).await? {
                loopback.add(*vip).await?;
            }
        }
        let speaker = Speaker::start(section.clone()).await?;
        let status = BgpStatus { vips: section.vips.clone(), ..BgpStatus::default() };
        Ok(Arc::new(Bgp {
            section,
            speaker,
            loopback,
            withdrawn: AtomicBool::new(false),
            status: std::sync::Mutex::new(status),
        }))
    }

    /// What it announces now and its sessions (as of the last second).
    pub fn status(&self) -> BgpStatus {
        lock(&self.status).clone()
    }

    /// Asks BIRD for the sessions' states and keeps them with what is announced.
    async fn refresh_status(&self) {
        let sessions = match self.speaker.sessions().await {
            Ok(states) => self
                .section
                .neighbors
                .iter()
                .enumerate()
                .map(|(index, neighbor)| BgpSession {
                    neighbor: neighbor.address,
                    state: states
                        .iter()
                        .find(|(i, _)| *i == index)
                        .map_or_else(|| "unknown".to_owned(), |(_, state)| state.clone()),
                })
                .collect(),
            Err(error) => {
                tracing::debug!("cannot read BIRD's sessions: {error}");
                Vec::new()
            }
        };
        let announced = self.speaker.announced().await;
        let mut status = lock(&self.status);
        status.announced = announced;
        status.sessions = sessions;
    }

    /// Announces the VIPs while every tracked pool can be served here; runs until the
    /// process ends.
    pub async fn follow_health(self: Arc<Self>, plane: Arc<DataPlane>) {
        let mut tick = tokio::time::interval(HEALTH_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_error: Option<String> = None;
        let mut polls = 0u32;
        loop {
            tick.tick().await;
            polls = polls.wrapping_add(1);
            if polls.is_multiple_of(SESSIONS_EVERY) {
                self.refresh_status().await;
            }
            let failing: Vec<&String> = self
                .section
                .track_pools
                .iter()
                .filter(|pool| !plane.pool(pool).is_some_and(|p| p.can_serve()))
                .collect();
            let stopping = self.withdrawn.load(Ordering::Acquire);
            let wanted = wanted(&self.section.vips, failing.is_empty(), stopping);
            if self.speaker.announced().await == wanted {
                continue;
            }
            if wanted.is_empty() && !stopping {
                tracing::warn!(pools = ?failing, "tracked pool unservable here: withdrawing the BGP VIPs");
            }
            match self.speaker.announce(&wanted).await {
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

    /// Withdraws every VIP (the node stops); the routers stop sending new flows here.
    pub async fn withdraw(&self) {
        self.withdrawn.store(true, Ordering::Release);
        if let Err(error) = self.speaker.announce(&[]).await {
            tracing::error!("cannot withdraw the BGP VIPs: {error}; stopping BIRD instead");
            self.speaker.stop().await;
        }
    }

    /// Stops BIRD and removes the VIPs from `lo`.
    pub async fn stop(&self) {
        self.speaker.stop().await;
        for vip in &self.section.vips {
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
    fn every_vip_is_announced_only_while_servable_and_not_stopping() {
        let vips: Vec<IpAddr> = vec!["198.18.0.200".parse().unwrap()];
        assert_eq!(wanted(&vips, true, false), vips);
        assert!(wanted(&vips, false, false).is_empty());
        assert!(wanted(&vips, true, true).is_empty());
    }
}
