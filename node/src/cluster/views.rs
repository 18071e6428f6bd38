//! The cluster-wide views the admin API shows, built by asking every member at once: status
//! with who is master of each VRID, the membership, and how far a revision has spread.

use std::sync::Arc;
use std::time::Duration;

use fulcrum_model::Revision;
use fulcrum_model::api::{ClusterStatus, Member, Members, NodeReport, Propagation, VipOwner};

use super::node::Node;
use super::peer::{PeerAnswer, PeerRequest};

/// Pause between looks while waiting for a revision or a new master.
pub(super) const POLL: Duration = Duration::from_millis(20);

impl Node {
    /// Every member's status, the membership, and who owns each VRID.
    pub async fn cluster_status(self: &Arc<Self>) -> ClusterStatus {
        let nodes: Vec<NodeReport> = self
            .peers
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
                .peers
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
}

/// Who reports being master of each VRID.
pub(super) fn vip_owners(nodes: &[NodeReport]) -> Vec<VipOwner> {
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
                        holders: Vec::new(),
                        lease: None,
                    });
                    owners.len() - 1
                }
            };
            let owner = &mut owners[index];
            if vrrp.state == "master" {
                owner.masters.push(status.id);
            }
            if vrrp.holding {
                owner.holders.push(status.id);
                owner.lease = vrrp.lease.clone();
            }
        }
    }
    owners.sort_by_key(|o| o.vrid);
    owners
}
