//! The quorum fence at work (the logic is `fence`'s): a master asks the Raft leader for its
//! VRID's lease every tenth of a lease, the leader arbitrates after confirming its leadership
//! with a quorum, and the node lets VRRP hold the VIPs, and the kernel answer for them, only
//! while the lease runs. The kernel's side is an nftables set element that times out with
//! the lease (`nftables`), so a paused or killed process stops answering by itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fulcrum_policy::lock;
use fulcrum_vrrp::State;

use super::fence::{Arbiter, Grant, LeaseRefusal, Refusal};
use super::node::Node;
use super::peer::{PeerAnswer, PeerRequest};

/// How often a master without a lease asks again: a VRID given back is taken up at once.
const ACQUIRE_RETRY: Duration = Duration::from_millis(20);

impl Node {
    /// Keeps this node's leases and enforces them until the task is dropped: renews every
    /// tenth of a lease while master (a master without a lease asks every [`ACQUIRE_RETRY`]),
    /// and applies a change the moment VRRP changes state, a grant arrives or a lease runs
    /// out.
    pub async fn follow_fence(self: Arc<Self>) {
        let (Some(fence), Some((vrrp, _))) = (&self.fence, &self.vrrp) else { return };
        let mut status = vrrp.subscribe();
        let mut vrrp_running = true;
        let mut tick = tokio::time::interval(ACQUIRE_RETRY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let expiry = {
                let leases = lock(&fence.leases);
                let now = Instant::now();
                leases
                    .held
                    .values()
                    .filter_map(|l| l.valid(now).map(|_| now + l.remaining(now)))
                    .min()
            };
            let expiry = expiry.map(tokio::time::Instant::from_std);
            tokio::select! {
                _ = tick.tick() => {}
                () = fence.granted.notified() => {}
                changed = status.changed(), if vrrp_running => vrrp_running = changed.is_ok(),
                () = async {
                    match expiry {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {}
            }
            self.enforce_leases().await;
            self.renew_leases();
        }
    }

    /// Asks the leader to renew (or grant) the lease of every VRID this node is master of
    /// and that is due, each in the background.
    fn renew_leases(self: &Arc<Self>) {
        let Some(fence) = &self.fence else { return };
        let times = self.fence_times;
        let leader = self.store.raft().metrics().borrow().current_leader;
        for local in &self.vrids {
            let vrid = local.vrid;
            if !self.is_master(vrid) {
                let stepped_aside = lock(&fence.leases).stepped_aside.contains(&vrid);
                if let (true, Some(leader)) = (stepped_aside, leader) {
                    self.check_back(vrid, leader);
                }
                continue;
            }
            let Some(leader) = leader else {
                self.note_unanswered(vrid);
                continue;
            };
            let sent = Instant::now();
            let (claimed, generation) = {
                let mut leases = lock(&fence.leases);
                let claimed = leases.held.get(&vrid).and_then(|l| l.valid(sent));
                let generation = leases.generation.get(&vrid).copied().unwrap_or_default();
                let every = if claimed.is_some() { times.renew_every() } else { ACQUIRE_RETRY };
                if !leases.start_asking(vrid, leader, sent, every, times.ask_timeout()) {
                    continue;
                }
                (claimed, generation)
            };
            let node = Arc::clone(self);
            tokio::spawn(async move {
                let lease_ms = times.lease.as_millis() as u64;
                let request =
                    PeerRequest::Lease { vrid, node: node.id(), claimed, generation, lease_ms };
                let answer = node.peers.ask(leader, &request, times.ask_timeout()).await;
                node.take_lease_answer(vrid, sent, generation, claimed.is_some(), answer);
            });
        }
    }

    fn take_lease_answer(
        &self,
        vrid: u8,
        sent: Instant,
        generation: u64,
        renewal: bool,
        answer: Result<PeerAnswer, String>,
    ) {
        let Some(fence) = &self.fence else { return };
        let mut leases = lock(&fence.leases);
        leases.done_asking(vrid, sent);
        let current = leases.generation.get(&vrid).copied().unwrap_or_default();
        match answer {
            // Asked for before this node gave the VRID up: it is not held.
            Ok(PeerAnswer::Lease(Ok(_))) if generation != current => {}
            Ok(PeerAnswer::Lease(Ok(grant))) => {
                let validity = self.fence_times.holder_validity();
                let now = Instant::now();
                let lease = leases.held.entry(vrid).or_default();
                lease.handle_grant(now, sent, grant, validity, renewal);
                leases.answered.insert(vrid, Instant::now());
                leases.mismatched.remove(&vrid);
                drop(leases);
                fence.granted.notify_one();
            }
            Ok(PeerAnswer::Lease(Err(LeaseRefusal::Refused(Refusal::LeaseMismatch {
                leader_ms,
            })))) => {
                if leases.mismatched.insert(vrid) {
                    tracing::error!(
                        vrid,
                        "lease refused: the leader's fence_lease is {leader_ms} ms, this node's {} ms; set fence_lease alike on every node",
                        self.fence_times.lease.as_millis()
                    );
                }
                leases.answered.insert(vrid, Instant::now());
            }
            Ok(PeerAnswer::Lease(Err(LeaseRefusal::Refused(refusal)))) => {
                tracing::debug!(vrid, ?refusal, "lease refused");
                leases.answered.insert(vrid, Instant::now());
            }
            // No leader with a quorum answered (a leader cut off from the majority says
            // NotLeader): step aside if that lasts.
            Ok(other) => {
                drop(leases);
                tracing::debug!(vrid, ?other, "no lease from the leader");
                self.note_unanswered(vrid);
            }
            Err(error) => {
                drop(leases);
                tracing::debug!(vrid, "no lease from the leader: {error}");
                self.note_unanswered(vrid);
            }
        }
    }

    /// A master that no leader answered for longer than a takeover wait steps aside (its
    /// priority drops), so a node that can hold the VIPs takes over.
    fn note_unanswered(&self, vrid: u8) {
        let Some(fence) = &self.fence else { return };
        let mut leases = lock(&fence.leases);
        let since = *leases.answered.entry(vrid).or_insert_with(Instant::now);
        drop(leases);
        if since.elapsed() > self.fence_times.takeover_wait()
            && let Some((_, priorities)) = &self.vrrp
        {
            lock(&fence.leases).stepped_aside.insert(vrid);
            priorities.set_unfenced(vrid, true);
        }
    }

    /// A node that stepped aside asks the leader, as a master would, whether a leader with a
    /// quorum answers it now; only then does it take its priority back (its own view of the
    /// Raft leader may be stale, a leader cut off from the majority still thinks it leads).
    fn check_back(self: &Arc<Self>, vrid: u8, leader: u64) {
        let Some(fence) = &self.fence else { return };
        let (every, timeout) = (self.fence_times.renew_every(), self.fence_times.ask_timeout());
        let sent = Instant::now();
        if !lock(&fence.leases).start_asking(vrid, leader, sent, every, timeout) {
            return;
        }
        let node = Arc::clone(self);
        tokio::spawn(async move {
            let answer = node.peers.ask(leader, &PeerRequest::FenceCheck, timeout).await;
            let Some(fence) = &node.fence else { return };
            lock(&fence.leases).done_asking(vrid, sent);
            if matches!(answer, Ok(PeerAnswer::Noted(true)))
                && lock(&fence.leases).stepped_aside.remove(&vrid)
                && let Some((_, priorities)) = &node.vrrp
            {
                priorities.set_unfenced(vrid, false);
            }
        });
    }

    /// Lets VRRP hold each VRID's VIPs, and the kernel answer for them, exactly while this
    /// node is master with a running lease; a lease kept after mastership is given back.
    async fn enforce_leases(self: &Arc<Self>) {
        let (Some(fence), Some((vrrp, priorities))) = (&self.fence, &self.vrrp) else { return };
        let status = vrrp.status();
        for local in &self.vrids {
            let vrid = local.vrid;
            let master =
                status.instances.iter().any(|i| i.vrid == vrid && i.state == State::Master);
            let now = Instant::now();
            let (valid, until, written, given_up) = {
                let mut leases = lock(&fence.leases);
                let lease = leases.held.entry(vrid).or_default();
                let valid = lease.valid(now);
                let until = now + lease.remaining(now);
                let given_up = (valid.is_some() && !master).then(|| leases.give_up(vrid, now).0);
                if master {
                    leases.answered.entry(vrid).or_insert(now);
                } else {
                    leases.answered.remove(&vrid);
                }
                (valid, until, leases.written.get(&vrid).copied(), given_up)
            };
            if master && valid.is_some() && written.is_none_or(|w| w < until) {
                if let Some((handover, _)) = &self.handover {
                    // The kernel first: ARP replies and new connections pass before the VIP
                    // is added and announced.
                    if let Err(error) = handover.hold_fenced(&local.vips, until).await {
                        tracing::error!(vrid, "fence not renewed in the kernel: {error}");
                        continue;
                    }
                }
                {
                    let mut leases = lock(&fence.leases);
                    leases.written.insert(vrid, until);
                    leases.stepped_aside.remove(&vrid);
                }
                priorities.set_unfenced(vrid, false);
                self.permit(vrid, true);
            } else if valid.is_none() || !master {
                self.permit(vrid, false);
                let was_written = lock(&fence.leases).written.remove(&vrid).is_some();
                if was_written && master {
                    tracing::warn!(
                        vrid,
                        "lease ran out while master (no renewal confirmed by a quorum in time): VIPs withdrawn"
                    );
                }
                if (was_written || given_up.is_some())
                    && let Some((handover, _)) = &self.handover
                    && let Err(error) = handover.drop_fenced(&local.vips).await
                {
                    tracing::error!(
                        vrid,
                        "fence not dropped in the kernel (it times out): {error}"
                    );
                }
                if let Some(generation) = given_up {
                    self.give_back(vrid, generation);
                }
            }
        }
    }

    /// Gives `vrid`'s lease up now, as a planned resignation or a stop takes the VIPs away:
    /// they leave the interface and the kernel, and the leader hears of it (waiting for its
    /// answer), so the next master is granted the lease on its first request.
    pub async fn give_up_lease(self: &Arc<Self>, vrid: u8) {
        let (Some(fence), Some(_)) = (&self.fence, &self.vrrp) else { return };
        let (generation, held) = lock(&fence.leases).give_up(vrid, Instant::now());
        self.permit(vrid, false);
        let Some(local) = self.vrids.iter().find(|v| v.vrid == vrid) else { return };
        if let Some((handover, _)) = &self.handover
            && let Err(error) = handover.drop_fenced(&local.vips).await
        {
            tracing::error!(vrid, "fence not dropped in the kernel (it times out): {error}");
        }
        let leader = self.store.raft().metrics().borrow().current_leader;
        if let (true, Some(leader)) = (held, leader) {
            let request = PeerRequest::Release { vrid, node: self.id(), generation };
            let _ = self.peers.ask(leader, &request, self.fence_times.ask_timeout()).await;
        }
    }

    /// Tells VRRP whether `vrid`'s VIPs may be held, only when that changes: VRRP's control
    /// channel carries priorities and resignations too, and must not overflow.
    fn permit(&self, vrid: u8, permitted: bool) {
        let (Some(fence), Some((vrrp, _))) = (&self.fence, &self.vrrp) else { return };
        if lock(&fence.leases).permitted.insert(vrid, permitted) != Some(permitted) {
            vrrp.permit(vrid, permitted);
        }
    }

    /// Gives every lease up, for a stopping node.
    pub async fn give_up_leases(self: &Arc<Self>) {
        for local in &self.vrids {
            self.give_up_lease(local.vrid).await;
        }
    }

    /// Tells the leader this node gave `vrid` up, its VIPs gone, so another may take it now.
    fn give_back(self: &Arc<Self>, vrid: u8, generation: u64) {
        if self.fence.is_none() {
            return;
        }
        let Some(leader) = self.store.raft().metrics().borrow().current_leader else { return };
        let timeout = self.fence_times.ask_timeout();
        let node = Arc::clone(self);
        tokio::spawn(async move {
            let request = PeerRequest::Release { vrid, node: node.id(), generation };
            let _ = node.peers.ask(leader, &request, timeout).await;
        });
    }

    /// Whether this node leads the Raft group with a quorum now (a heartbeat round).
    pub(super) async fn leads_with_quorum(&self) -> bool {
        self.store.is_leader() && self.store.raft().get_read_log_id().await.is_ok()
    }

    /// The leader's answer to node `node` asking for `vrid`'s lease: after this node
    /// confirmed with a quorum that it leads, the arbiter decides.
    pub(super) async fn arbitrate(
        &self,
        vrid: u8,
        node: u64,
        claimed: Option<Grant>,
        generation: u64,
        lease: Duration,
    ) -> Result<Grant, LeaseRefusal> {
        // A heartbeat round to a quorum; the state machine need not catch up for a lease.
        if !self.leads_with_quorum().await {
            return Err(LeaseRefusal::NotLeader);
        }
        let term = self.store.raft().metrics().borrow().current_term;
        let now = Instant::now();
        let mut arbiter = lock(&self.arbiter);
        let arbiter = match arbiter.as_mut() {
            Some(current) if current.term() == term => current,
            _ => arbiter.insert(Arbiter::new(self.fence_times, term, now)),
        };
        arbiter
            .handle_request(now, vrid, node, claimed, generation, lease)
            .map_err(LeaseRefusal::Refused)
    }

    /// Node `node` gave `vrid` up in `generation`.
    pub(super) fn released(&self, vrid: u8, node: u64, generation: u64) {
        if let Some(arbiter) = lock(&self.arbiter).as_mut() {
            arbiter.handle_release(vrid, node, generation);
        }
    }

    /// This node's lease of `vrid`, if one runs: the grant and how long it runs yet.
    pub(super) fn lease_of(&self, vrid: u8) -> Option<(Grant, Duration)> {
        let fence = self.fence.as_ref()?;
        let leases = lock(&fence.leases);
        let lease = leases.held.get(&vrid)?;
        let now = Instant::now();
        lease.valid(now).map(|grant| (grant, lease.remaining(now)))
    }
}
