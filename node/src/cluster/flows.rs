//! What the nodes serving BGP VIPs share: their rate limits' counts (every node reports what
//! its shared limiters admitted to every other member every 100 ms), an operator's drain of
//! one node, and their connections across node changes.
//!
//! Keeping the connections (the member's side of flow steering):
//! every [`POLL`] the node asks every Raft member its part in the flows, derives the bucket
//! table from those that answer with the same VIPs, and loads the steering rules when they
//! change. A member that does not answer [`MISSES`] times in a row is left out (it died or
//! stopped): its buckets go to the others, its connections are lost with it. A member whose
//! address is not on this node's link gets no packet from it (and an error in the log).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use fulcrum_model::api::FlowMemberStatus;

use super::node::Node;
use super::peer::{PeerAnswer, PeerRequest};
use crate::bgp::Bgp;
use crate::bgp::buckets::{BucketTable, MemberState, Standing};
use crate::bgp::steering::{FlowMember, Plan};

/// How often the members are asked.
const POLL: Duration = Duration::from_millis(100);
/// How long one member may take to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_millis(250);
/// Unanswered polls in a row before a member is left out (about a second).
const MISSES: u32 = 3;
/// How often the handed packets are read for the status.
const COUNTERS_EVERY: u32 = 10;

/// How often shared rate limits report what they admitted.
const RATE_REPORT_EVERY: Duration = Duration::from_millis(100);

/// Why a node's BGP drain could not be set.
#[derive(Debug, thiserror::Error)]
pub enum BgpDrainError {
    /// No such member.
    #[error("node {0} is not a member")]
    NotAMember(u64),
    /// It announces no VIP over BGP.
    #[error("node {0} announces no VIP over BGP")]
    NoBgp(u64),
    /// It did not answer.
    #[error("node {node} did not answer: {error}")]
    Unreachable {
        /// The node.
        node: u64,
        /// What asking it came to.
        error: String,
    },
}

/// Whether every member answered the last poll or is taken for gone (unanswered polls in a
/// row, by member): the rules then hold every member that can hold connections.
fn settled(silent: &BTreeMap<u64, u32>) -> bool {
    silent.values().all(|&misses| misses == 0 || misses >= MISSES)
}

/// What this node knows of one member.
struct Known {
    member: FlowMember,
    misses: u32,
}

impl Node {
    /// Every [`RATE_REPORT_EVERY`], tells every other member what this node's shared rate
    /// limits admitted, so each counts the cluster's requests; runs until the process ends.
    pub fn share_rate_limits(self: &Arc<Self>) {
        let node = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RATE_REPORT_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let reports = node.plane.rate_reports();
                if reports.is_empty() {
                    continue;
                }
                let peers = Arc::clone(&node.peers);
                // Apart from the cadence: a peer that does not answer delays no report.
                tokio::spawn(async move {
                    let ids = peers.peer_ids();
                    let request = PeerRequest::RateCounts(reports);
                    peers.ask_within(&ids, request, RATE_REPORT_EVERY).await;
                });
            }
        });
    }

    /// Drains node `id`'s BGP VIPs (`drain`) or lifts its drain. Not kept across its
    /// restart: a node starts announcing.
    pub async fn drain_bgp(self: &Arc<Self>, id: u64, drain: bool) -> Result<(), BgpDrainError> {
        if !self.peers.member_ids().contains(&id) {
            return Err(BgpDrainError::NotAMember(id));
        }
        let timeout = super::peer::PEER_TIMEOUT;
        match self.peers.ask(id, &PeerRequest::DrainBgp(drain), timeout).await {
            Ok(PeerAnswer::Noted(true)) => Ok(()),
            Ok(_) => Err(BgpDrainError::NoBgp(id)),
            Err(error) => Err(BgpDrainError::Unreachable { node: id, error }),
        }
    }

    /// Steers the BGP VIPs' flows until the node stops; `bgp` steers (it has a link).
    pub(super) async fn steer_flows(self: Arc<Self>, bgp: Arc<Bgp>) {
        let Some(own) = bgp.flow_member() else { return };
        let mut known: BTreeMap<u64, Known> = BTreeMap::new();
        // Unanswered polls in a row of every member, known or not.
        let mut silent: BTreeMap<u64, u32> = BTreeMap::new();
        let mut off_link: BTreeSet<u64> = BTreeSet::new();
        let mut loaded: Option<Plan> = None;
        let mut last_error: Option<String> = None;
        let mut handed: BTreeMap<u64, u64> = BTreeMap::new();
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut round: u32 = 0;
        loop {
            tick.tick().await;
            round = round.wrapping_add(1);
            let ids = self.peers.member_ids();
            let answers = self.peers.ask_within(&ids, PeerRequest::Flows, ANSWER_TIMEOUT).await;
            for (id, answer) in &answers {
                let count = silent.entry(*id).or_insert(0);
                *count = if answer.is_ok() { 0 } else { count.saturating_add(1) };
            }
            silent.retain(|id, _| ids.contains(id));
            let complete = settled(&silent);
            known.retain(|id, _| ids.contains(id));
            for (id, answer) in answers {
                match answer {
                    Ok(PeerAnswer::Flows(Some(mut member))) => {
                        if member.vips != own.vips && !known.contains_key(&id) {
                            tracing::warn!(node = id, vips = ?member.vips, "member announces other BGP VIPs: its flows are not shared");
                        }
                        // Handed over by MAC: an address not on this node's link is useless.
                        let reachable = member.link.ipv4.is_none_or(|a| bgp.on_link(a));
                        if !reachable && off_link.insert(id) {
                            tracing::error!(node = id, address = ?member.link.ipv4, "member's address is not on this node's link: its IPv4 flows cannot be handed to it (set [bgp] interface, or keep_flows = false)");
                        }
                        if !reachable {
                            member.link.ipv4 = None;
                        }
                        known.insert(id, Known { member, misses: 0 });
                    }
                    Ok(_) => {
                        known.remove(&id);
                    }
                    Err(_) => {
                        let gone = known.get_mut(&id).is_some_and(|k| {
                            k.misses += 1;
                            k.misses >= MISSES
                        });
                        if gone && known.remove(&id).is_some() {
                            tracing::warn!(
                                node = id,
                                "member no longer answers: its BGP flows are left out"
                            );
                        }
                    }
                }
            }
            let me = self.id();
            let sharing: BTreeMap<u64, &FlowMember> = known
                .iter()
                .filter(|(id, k)| k.member.vips == own.vips || **id == me)
                .map(|(id, k)| (*id, &k.member))
                .collect();
            let states: BTreeMap<u64, MemberState> = sharing
                .iter()
                .map(|(id, m)| (*id, MemberState { standing: m.standing, since_ms: m.since_ms }))
                .collect();
            let plan = Plan {
                me,
                link: own.link.clone(),
                vips: own.vips.clone(),
                table: BucketTable::derive(&states),
                peers: sharing
                    .iter()
                    .filter(|(id, _)| **id != me)
                    .map(|(id, m)| (*id, m.link.clone()))
                    .collect(),
            };
            if loaded.as_ref() != Some(&plan) {
                match bgp.steer(&plan).await {
                    Ok(()) => {
                        let standings: BTreeMap<u64, Standing> =
                            states.iter().map(|(id, s)| (*id, s.standing)).collect();
                        tracing::info!(members = ?standings, "flow steering rules loaded");
                        loaded = Some(plan);
                        last_error = None;
                    }
                    Err(error) => {
                        let error = error.to_string();
                        if last_error.as_ref() != Some(&error) {
                            tracing::error!("cannot load the flow steering rules: {error}");
                        }
                        last_error = Some(error);
                    }
                }
            }
            if complete && loaded.is_some() && last_error.is_none() {
                bgp.steering_ready();
            }
            if round.is_multiple_of(COUNTERS_EVERY) {
                // Kept when they cannot be read, so the counters never seem to go back.
                if let Some(now) = bgp.handed().await {
                    handed = now;
                }
                let members = states
                    .iter()
                    .map(|(id, state)| FlowMemberStatus {
                        node: *id,
                        standing: match state.standing {
                            Standing::Announcing => "announcing".into(),
                            Standing::Draining => "draining".into(),
                        },
                        handed_packets: handed.get(id).copied().unwrap_or(0),
                    })
                    .collect();
                bgp.report_flows(members);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_down_holds_up_announcing_only_until_it_is_taken_for_gone() {
        let silent =
            |misses: &[u32]| misses.iter().enumerate().map(|(i, m)| (i as u64, *m)).collect();
        assert!(settled(&silent(&[0, 0, 0])));
        assert!(!settled(&silent(&[0, 1, 0])), "one poll missed may be a slow answer");
        assert!(!settled(&silent(&[0, MISSES - 1, 0])));
        assert!(settled(&silent(&[0, MISSES, 0])), "a dead member does not hold it forever");
        assert!(settled(&silent(&[0, u32::MAX, 0])));
    }
}
