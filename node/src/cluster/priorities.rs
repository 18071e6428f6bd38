//! The VRRP priority this node asks for, per VRID: lowered while a tracked pool has no
//! healthy backend here (a node that cannot serve gives the VIP away), and while a planned
//! move (`fulcrumctl failover`) hands the VRID to another node.
//!
//! The penalty is a pure function of those two facts ([`penalty`]); [`Priorities`] keeps them
//! and tells the VRRP driver whenever the sum changes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fulcrum_vrrp::Vrrp;

use crate::dataplane::DataPlane;
use fulcrum_policy::lock;

/// What one VRID tracks, from the node file.
#[derive(Clone, Debug)]
pub struct Tracked {
    /// The VRID.
    pub vrid: u8,
    /// Pools that must be servable here.
    pub pools: Vec<String>,
    /// Subtracted from the priority while one of them is not.
    pub weight: u32,
}

/// A penalty large enough to bring any non-owner priority to 1.
const MOVED_AWAY: u32 = 255;

/// How often pool health is looked at; health itself changes at most once a check interval.
const HEALTH_POLL: Duration = Duration::from_millis(200);

/// What lowers one VRID's priority now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Facts {
    /// A tracked pool has no backend that may take traffic here.
    unservable: bool,
    /// The node a planned move gave the VRID to, if any.
    moved_to: Option<u64>,
    /// The quorum fence cannot reach a Raft leader here, so this node could not hold the
    /// VIPs as master: it steps aside for a node that can.
    unfenced: bool,
}

/// The penalty of `tracked` on node `me` given `facts`.
fn penalty(tracked: &Tracked, facts: Facts, me: u64) -> u32 {
    let health = if facts.unservable { tracked.weight } else { 0 };
    let moved = match facts.moved_to {
        Some(to) if to != me => MOVED_AWAY,
        _ => 0,
    };
    let unfenced = if facts.unfenced { MOVED_AWAY } else { 0 };
    health.saturating_add(moved).saturating_add(unfenced)
}

/// The penalties of this node's virtual routers.
pub struct Priorities {
    me: u64,
    vrrp: Arc<Vrrp>,
    tracked: Vec<Tracked>,
    facts: Mutex<BTreeMap<u8, Facts>>,
}

impl Priorities {
    /// Starts with no penalty; `tracked` has one entry per VRRP instance of this node.
    pub fn new(me: u64, vrrp: Arc<Vrrp>, tracked: Vec<Tracked>) -> Priorities {
        let facts = tracked.iter().map(|t| (t.vrid, Facts::default())).collect();
        Priorities { me, vrrp, tracked, facts: Mutex::new(facts) }
    }

    /// Records a planned move of `vrid` to node `to` (`None` lifts it): unless this node is
    /// the one chosen, its priority drops to 1. Returns false for an unknown VRID.
    pub fn move_to(&self, vrid: u8, to: Option<u64>) -> bool {
        if self.change(vrid, |facts| facts.moved_to = to).is_none() {
            return false;
        }
        tracing::info!(vrid, to = ?to, "planned VRID move");
        true
    }

    /// Records whether the quorum fence can reach a Raft leader for `vrid` here; while it
    /// cannot, the priority drops to 1.
    pub fn set_unfenced(&self, vrid: u8, unfenced: bool) {
        let changed =
            self.change(vrid, |facts| std::mem::replace(&mut facts.unfenced, unfenced) != unfenced);
        if changed == Some(true) && unfenced {
            tracing::warn!(
                vrid,
                "no Raft leader answers the fence here: priority lowered so a node that can hold the VIP takes over"
            );
        } else if changed == Some(true) {
            tracing::info!(vrid, "the fence reaches a Raft leader again: priority restored");
        }
    }

    /// Follows pool health until the task is dropped.
    pub async fn follow_health(self: Arc<Self>, plane: Arc<DataPlane>) {
        let mut tick = tokio::time::interval(HEALTH_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for tracked in &self.tracked {
                let failing: Vec<&str> = tracked
                    .pools
                    .iter()
                    .filter(|pool| !plane.pool(pool).is_some_and(|p| p.can_serve()))
                    .map(String::as_str)
                    .collect();
                let unservable = !failing.is_empty();
                let changed = self.change(tracked.vrid, |facts| {
                    std::mem::replace(&mut facts.unservable, unservable) != unservable
                }) == Some(true);
                if changed && unservable {
                    let (vrid, weight) = (tracked.vrid, tracked.weight);
                    tracing::warn!(vrid, pools = ?failing, weight, "tracked pool unservable here: priority lowered");
                } else if changed {
                    tracing::info!(
                        vrid = tracked.vrid,
                        "tracked pools servable again: priority restored"
                    );
                }
            }
        }
    }

    /// Applies `edit` to `vrid`'s facts and tells VRRP the new penalty if it changed;
    /// `None` for an unknown VRID, else what `edit` returned.
    fn change<R>(&self, vrid: u8, edit: impl FnOnce(&mut Facts) -> R) -> Option<R> {
        let tracked = self.tracked.iter().find(|t| t.vrid == vrid)?;
        let mut facts = lock(&self.facts);
        let current = facts.get_mut(&vrid)?;
        let before = penalty(tracked, *current, self.me);
        let answer = edit(current);
        let after = penalty(tracked, *current, self.me);
        // Sent under the lock, so penalties reach VRRP in the order they were decided.
        if before != after {
            self.vrrp.set_penalty(vrid, after);
        }
        Some(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracked(weight: u32) -> Tracked {
        Tracked { vrid: 51, pools: vec!["web".into()], weight }
    }

    #[test]
    fn an_unservable_pool_costs_its_weight() {
        let facts = Facts { unservable: true, moved_to: None, unfenced: false };
        assert_eq!(penalty(&tracked(50), facts, 1), 50);
        assert_eq!(penalty(&tracked(50), Facts::default(), 1), 0);
    }

    #[test]
    fn a_move_to_another_node_sinks_this_one_and_spares_the_chosen() {
        let moved = |to| Facts { moved_to: Some(to), ..Facts::default() };
        assert_eq!(penalty(&tracked(50), moved(2), 1), MOVED_AWAY);
        assert_eq!(penalty(&tracked(50), moved(1), 1), 0, "the chosen node keeps its priority");
        let both = Facts { unservable: true, moved_to: Some(1), unfenced: false };
        assert_eq!(penalty(&tracked(50), both, 1), 50, "health still counts on the chosen node");
    }

    #[test]
    fn a_node_the_fence_cannot_serve_steps_aside() {
        let unfenced = Facts { unfenced: true, ..Facts::default() };
        assert_eq!(penalty(&tracked(50), unfenced, 1), MOVED_AWAY);
    }
}
