//! Planned VIP moves (`fulcrumctl failover`): every other runner lowers its priority, then
//! the master resigns, so the chosen node takes over after its skew time; a move the address
//! owner holds, or the chosen node does not confirm, is refused.

use std::sync::Arc;
use std::time::Duration;

use fulcrum_model::api::FailoverDone;
use fulcrum_vrrp::OWNER_PRIORITY;

use super::node::Node;
use super::peer::{PeerAnswer, PeerRequest};
use super::views::{POLL, vip_owners};

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

impl Node {
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
        let asked = self.peers.ask_some(&runners, PeerRequest::MoveVip { vrid, to }).await;
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
            self.peers.ask_some(&resigning, PeerRequest::Resign { vrid }).await;
        }
        let deadline = tokio::time::Instant::now() + MOVE_WAIT;
        loop {
            let owners = vip_owners(&self.cluster_status().await.nodes);
            // Settled once one node both is master and has the VIPs (with the fence, a new
            // master holds them only once its lease is granted).
            let owner = owners.iter().find(|o| o.vrid == vrid);
            let master = owner
                .filter(|o| o.masters.len() == 1 && o.holders == o.masters)
                .map(|o| o.masters[0]);
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
