//! The quorum fence, as pure logic: who may hold each VRID's VIPs, decided by the Raft leader
//! and confirmed by a quorum, with time as a value.
//!
//! A node holds a VRID's VIPs only while VRRP makes it master *and* it holds a lease for the
//! VRID. Leases are granted by the Raft leader, and only after the leader confirmed its
//! leadership with a quorum (a heartbeat round) since the request was sent, so a leader cut
//! off from the majority grants nothing. The [`Arbiter`] (the leader's side) grants a VRID to
//! a new holder only once the last holder's lease has run out by the leader's own clock,
//! allowing for clock-rate differences; a new leader, which does not know what its
//! predecessor granted, waits out one whole lease before granting a VRID to anyone who does
//! not already hold it. The [`Lease`] (the holder's side) counts its lease from when it sent
//! the request, shortened by the same allowance, so it always ends before the leader may
//! grant the VRID to another node. The kernel keeps the holder's end even if the process is
//! paused or killed: the VIP's nftables set element times out with the lease.
//!
//! Between two honest nodes this gives: at most one node holds a lease for a VRID at any
//! moment, assuming clocks run at rates within [`DRIFT`] of each other and a majority of the
//! voters is the same majority across a leader change (Raft's).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The largest relative difference of two nodes' clock rates allowed for (NTP keeps real
/// clocks within 0.05 %; this leaves room for a virtual machine's clock).
pub(crate) const DRIFT: f64 = 0.02;
/// Added to the leader's wait for timer and scheduling delays, and for the time `nft` takes
/// to set the kernel's timeout after the holder reads its clock (beyond the 30 ms by which
/// the kernel's element ends before the lease).
pub(crate) const SAFETY: Duration = Duration::from_millis(40);
/// The default lease: it outlives a Raft election at the default Raft timings (see
/// [`FenceTimes::longest_election_allowed`]), and a crashed holder's VRID goes to the next
/// master within half a second.
pub const DEFAULT_LEASE: Duration = Duration::from_millis(350);

/// The fence's timings, all derived from the lease, which every node of a cluster must set
/// alike (a leader refuses a request for a lease of another length).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FenceTimes {
    /// How long a lease lasts, from the moment its holder asked for it.
    pub lease: Duration,
}

impl Default for FenceTimes {
    fn default() -> FenceTimes {
        FenceTimes { lease: DEFAULT_LEASE }
    }
}

impl FenceTimes {
    /// How often a holder renews: many renewals may be lost before the lease runs out.
    pub(crate) fn renew_every(&self) -> Duration {
        (self.lease / 10).max(Duration::from_millis(20))
    }

    /// How long a lease request may take before another is sent: several fit in one lease.
    pub(crate) fn ask_timeout(&self) -> Duration {
        self.lease / 4
    }

    /// How long the leader waits after the last grant to a holder before the VRID may go to
    /// another node: the lease stretched by the clock allowance, plus the safety margin.
    pub(crate) fn takeover_wait(&self) -> Duration {
        self.lease.mul_f64(1.0 + DRIFT) + SAFETY
    }

    /// How long a holder counts its lease: shortened by the clock allowance.
    pub(crate) fn holder_validity(&self) -> Duration {
        self.lease.mul_f64(1.0 - DRIFT)
    }

    /// The longest Raft `election_timeout_max` a holder outlives when the leader dies: openraft
    /// refuses votes for `election_timeout_max` after the last heartbeat and starts an
    /// election up to `election_timeout_max` later, on a tick of 1.5 heartbeats; the holder's
    /// last renewal may be one renewal interval old, and the new leader's grant takes a round
    /// trip (20 ms allowed). It leaves out the kernel's 30 ms lead and the vote's round trip:
    /// the worst election at the limit can cost the holder its VIPs for a moment (never a
    /// second holder).
    pub fn longest_election_allowed(&self, heartbeat: Duration) -> Duration {
        let spent = heartbeat.mul_f64(1.5) + self.renew_every() + Duration::from_millis(20);
        self.holder_validity().saturating_sub(spent) / 2
    }
}

/// A grant: node `holder` may hold the VRID under `epoch` (which changes with every new
/// holder, so a status can tell a renewal from a takeover).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Grant {
    /// The node.
    pub holder: u64,
    /// The epoch of this holding: `(leader term, count)`.
    pub epoch: (u64, u64),
}

/// Why a lease was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum Refusal {
    /// Another node holds the VRID, and may for this long yet.
    HeldElsewhere {
        /// The node holding it.
        holder: u64,
        /// How long until the leader may give it away, in milliseconds.
        for_ms: u64,
    },
    /// This leader is new and waits out leases its predecessor may have granted.
    NewLeader {
        /// How long it still waits, in milliseconds.
        for_ms: u64,
    },
    /// The request's lease is not the leader's: the nodes' `fence_lease` settings differ.
    LeaseMismatch {
        /// The leader's lease, in milliseconds.
        leader_ms: u64,
    },
    /// The request was sent before the node gave the VRID up (it arrived late).
    GivenUp,
}

/// Why the leader gave no lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum LeaseRefusal {
    /// The node asked does not lead with a quorum now.
    NotLeader,
    /// The arbiter said no.
    Refused(Refusal),
}

/// The leader's side: the holder of each VRID and when it was last granted.
#[derive(Debug)]
pub(crate) struct Arbiter {
    times: FenceTimes,
    term: u64,
    /// When this node became leader of `term`.
    since: Instant,
    holders: BTreeMap<u8, (Grant, Instant)>,
    grants: u64,
    /// The last generation each node gave each VRID up in, by (VRID, node): a request of
    /// that generation or older arrived after the give-up and grants nothing.
    given_up: BTreeMap<(u8, u64), u64>,
}

impl Arbiter {
    /// A leader of `term` with the fence timings `times`, leading since `since`, that knows
    /// of no holder yet.
    pub(crate) fn new(times: FenceTimes, term: u64, since: Instant) -> Arbiter {
        Arbiter {
            times,
            term,
            since,
            holders: BTreeMap::new(),
            grants: 0,
            given_up: BTreeMap::new(),
        }
    }

    /// The term this arbiter serves.
    pub(crate) fn term(&self) -> u64 {
        self.term
    }

    /// Node `node` asks for `vrid` at `now`, the request having been confirmed by a quorum
    /// after it was sent; `claimed` is the grant it holds now, if any (a holder whose lease
    /// runs renews it, across leader changes too), `generation` counts the node's give-ups
    /// of the VRID so far, and `lease` is the lease the node counts.
    pub(crate) fn handle_request(
        &mut self,
        now: Instant,
        vrid: u8,
        node: u64,
        claimed: Option<Grant>,
        generation: u64,
        lease: Duration,
    ) -> Result<Grant, Refusal> {
        if lease != self.times.lease {
            return Err(Refusal::LeaseMismatch { leader_ms: self.times.lease.as_millis() as u64 });
        }
        if self.given_up.get(&(vrid, node)).is_some_and(|given_up| generation <= *given_up) {
            return Err(Refusal::GivenUp);
        }
        let wait = self.times.takeover_wait();
        if let Some((grant, at)) = self.holders.get(&vrid).copied() {
            let elapsed = now.saturating_duration_since(at);
            if grant.holder == node {
                self.holders.insert(vrid, (grant, now));
                return Ok(grant);
            }
            if elapsed < wait {
                let for_ms = (wait - elapsed).as_millis() as u64;
                return Err(Refusal::HeldElsewhere { holder: grant.holder, for_ms });
            }
        } else if let Some(claimed) = claimed.filter(|c| c.holder == node) {
            // A holder of an earlier leader's grant: it still counts its lease, so renewing
            // it keeps the one holder there is.
            self.holders.insert(vrid, (claimed, now));
            return Ok(claimed);
        }
        let leading = now.saturating_duration_since(self.since);
        if leading < wait {
            return Err(Refusal::NewLeader { for_ms: (wait - leading).as_millis() as u64 });
        }
        self.grants += 1;
        let grant = Grant { holder: node, epoch: (self.term, self.grants) };
        self.holders.insert(vrid, (grant, now));
        Ok(grant)
    }

    /// Node `node` gave `vrid` up in `generation`, its VIPs already gone (it stopped being
    /// master, or is stopping): the VRID may go to another node at once, and no request of
    /// that generation still on its way renews it.
    pub(crate) fn handle_release(&mut self, vrid: u8, node: u64, generation: u64) {
        let given_up = self.given_up.entry((vrid, node)).or_default();
        *given_up = (*given_up).max(generation);
        if self.holders.get(&vrid).is_some_and(|(grant, _)| grant.holder == node) {
            self.holders.remove(&vrid);
        }
    }
}

/// The holder's side of one VRID's lease.
#[derive(Clone, Debug, Default)]
pub(crate) struct Lease {
    held: Option<(Grant, Instant)>,
}

impl Lease {
    /// A grant answered, at `now`, a request sent at `sent`: the lease runs for `validity`
    /// (the holder's) from `sent`. An answer to a request older than the lease held is
    /// ignored, and so is one renewing a claimed lease (`renewal`) that ran out before the
    /// answer came: a new leader takes a claim on trust, and a lease that ran out meanwhile
    /// may have gone to another node.
    pub(crate) fn handle_grant(
        &mut self,
        now: Instant,
        sent: Instant,
        grant: Grant,
        validity: Duration,
        renewal: bool,
    ) {
        if renewal && self.valid(now).is_none() {
            return;
        }
        let until = sent + validity;
        if self.held.is_none_or(|(_, current)| until > current) {
            self.held = Some((grant, until));
        }
    }

    /// The grant held at `now`, if the lease still runs.
    pub(crate) fn valid(&self, now: Instant) -> Option<Grant> {
        self.held.filter(|(_, until)| now < *until).map(|(grant, _)| grant)
    }

    /// How long the lease runs after `now` (zero once it ended): what the kernel's timeout
    /// for the VIP is set to.
    pub(crate) fn remaining(&self, now: Instant) -> Duration {
        self.held.map_or(Duration::ZERO, |(_, until)| until.saturating_duration_since(now))
    }
}

/// A fenced node's leases, one per VRID it runs.
#[derive(Debug, Default)]
pub(crate) struct Leases {
    pub(crate) held: BTreeMap<u8, Lease>,
    /// When a leader last answered (grant or refusal), per VRID.
    pub(crate) answered: BTreeMap<u8, Instant>,
    /// How long each VRID's kernel element was last set to run, so it is written only when
    /// a grant moved it.
    pub(crate) written: BTreeMap<u8, Instant>,
    /// When each VRID's request in flight was sent, and to which leader.
    pub(crate) asking: BTreeMap<u8, (Instant, u64)>,
    /// When each VRID was last asked for, and of which leader.
    pub(crate) asked: BTreeMap<u8, (Instant, u64)>,
    /// The permit last given to VRRP for each VRID, so it is sent only when it changes.
    pub(crate) permitted: BTreeMap<u8, bool>,
    /// VRIDs whose priority this node lowered because no leader answered it; it takes the
    /// priority back once a leader with a quorum does.
    pub(crate) stepped_aside: std::collections::BTreeSet<u8>,
    /// VRIDs whose last answer was a refusal for another `fence_lease`, so the error is
    /// logged once, not on every request.
    pub(crate) mismatched: std::collections::BTreeSet<u8>,
    /// How many times each VRID's lease was given up: a request carries it, so one sent
    /// before a give-up and answered after it renews nothing.
    pub(crate) generation: BTreeMap<u8, u64>,
}

impl Leases {
    /// Whether a request for `vrid` may go to `leader` at `now`: the last went `every` ago
    /// or more, or to another leader, and none to this leader is in flight (one older than
    /// `timeout` counts as lost). So a new leader is asked at once. If so, it is marked sent.
    pub(crate) fn start_asking(
        &mut self,
        vrid: u8,
        leader: u64,
        now: Instant,
        every: Duration,
        timeout: Duration,
    ) -> bool {
        let due = self.asked.get(&vrid).is_none_or(|(at, to)| *to != leader || now - *at >= every);
        let in_flight =
            self.asking.get(&vrid).is_some_and(|(at, to)| *to == leader && now - *at < timeout);
        if !due || in_flight {
            return false;
        }
        self.asked.insert(vrid, (now, leader));
        self.asking.insert(vrid, (now, leader));
        true
    }

    /// The request for `vrid` sent at `sent` was answered (or failed): it is no longer in
    /// flight, unless a later one to another leader is.
    pub(crate) fn done_asking(&mut self, vrid: u8, sent: Instant) {
        if self.asking.get(&vrid).is_some_and(|(at, _)| *at == sent) {
            self.asking.remove(&vrid);
        }
    }

    /// Gives `vrid`'s lease up: returns the generation given up, and whether a lease ran.
    pub(crate) fn give_up(&mut self, vrid: u8, now: Instant) -> (u64, bool) {
        let held = self.held.remove(&vrid).and_then(|l| l.valid(now)).is_some();
        self.written.remove(&vrid);
        let generation = self.generation.entry(vrid).or_default();
        let given_up = *generation;
        *generation += 1;
        (given_up, held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMES: FenceTimes = FenceTimes { lease: DEFAULT_LEASE };

    fn ask(
        arbiter: &mut Arbiter,
        now: Instant,
        vrid: u8,
        node: u64,
        claimed: Option<Grant>,
        generation: u64,
    ) -> Result<Grant, Refusal> {
        arbiter.handle_request(now, vrid, node, claimed, generation, TIMES.lease)
    }

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    fn settled(t0: Instant) -> Arbiter {
        // A leader long enough in office to grant at once.
        Arbiter::new(TIMES, 3, t0 - TIMES.takeover_wait())
    }

    #[test]
    fn one_holder_at_a_time_and_the_next_only_after_the_lease_ran_out() {
        let t0 = Instant::now();
        let mut arbiter = settled(t0);
        let a = ask(&mut arbiter, t0, 7, 1, None, 0).expect("first holder");
        assert_eq!(a, Grant { holder: 1, epoch: (3, 1) });
        assert_eq!(ask(&mut arbiter, at(t0, 100), 7, 1, Some(a), 0), Ok(a), "renewed");
        let refused = ask(&mut arbiter, at(t0, 150), 7, 2, None, 0);
        assert!(matches!(refused, Err(Refusal::HeldElsewhere { holder: 1, .. })), "{refused:?}");
        // Node 1 stops renewing at 100 ms; node 2 gets the VRID one takeover wait later.
        let almost = at(t0, 100) + TIMES.takeover_wait() - Duration::from_millis(1);
        assert!(ask(&mut arbiter, almost, 7, 2, None, 0).is_err());
        let b = ask(&mut arbiter, at(t0, 100) + TIMES.takeover_wait(), 7, 2, None, 0);
        assert_eq!(b, Ok(Grant { holder: 2, epoch: (3, 2) }));
    }

    #[test]
    fn the_holders_lease_ends_before_the_leader_may_give_the_vrid_away() {
        // The worst case: the slowest leader clock against the fastest holder clock.
        let holder_lasts = TIMES.holder_validity().mul_f64(1.0 + DRIFT);
        let leader_waits = TIMES.takeover_wait().mul_f64(1.0 - DRIFT);
        assert!(holder_lasts + SAFETY / 2 < leader_waits, "{holder_lasts:?} vs {leader_waits:?}");
        let t0 = Instant::now();
        let mut lease = Lease::default();
        lease.handle_grant(
            t0,
            t0,
            Grant { holder: 1, epoch: (1, 1) },
            TIMES.holder_validity(),
            false,
        );
        assert!(lease.valid(at(t0, 1)).is_some());
        assert!(lease.valid(t0 + TIMES.holder_validity()).is_none());
        assert_eq!(lease.remaining(t0 + TIMES.lease), Duration::ZERO);
    }

    #[test]
    fn a_new_leader_renews_a_running_lease_but_grants_no_new_holder_until_it_waited() {
        let t0 = Instant::now();
        let mut arbiter = Arbiter::new(TIMES, 4, t0);
        let held = Grant { holder: 1, epoch: (3, 9) };
        assert_eq!(ask(&mut arbiter, at(t0, 10), 7, 1, Some(held), 0), Ok(held));
        assert!(matches!(
            ask(&mut arbiter, at(t0, 20), 9, 2, None, 0),
            Err(Refusal::NewLeader { .. })
        ));
        // Node 2 cannot pass itself off as the holder another node renews.
        let forged = Grant { holder: 1, epoch: (3, 9) };
        assert!(matches!(
            ask(&mut arbiter, at(t0, 30), 7, 2, Some(forged), 0),
            Err(Refusal::HeldElsewhere { holder: 1, .. })
        ));
        let later = t0 + TIMES.takeover_wait();
        assert_eq!(ask(&mut arbiter, later, 9, 2, None, 0), Ok(Grant { holder: 2, epoch: (4, 1) }));
    }

    #[test]
    fn a_released_vrid_goes_to_the_next_node_at_once() {
        let t0 = Instant::now();
        let mut arbiter = settled(t0);
        ask(&mut arbiter, t0, 7, 1, None, 0).expect("first holder");
        arbiter.handle_release(7, 2, 0);
        assert!(
            matches!(
                ask(&mut arbiter, at(t0, 10), 7, 2, None, 1),
                Err(Refusal::HeldElsewhere { holder: 1, .. })
            ),
            "only the holder releases"
        );
        arbiter.handle_release(7, 1, 0);
        assert_eq!(ask(&mut arbiter, at(t0, 20), 7, 2, None, 1).map(|g| g.holder), Ok(2));
        // Node 2 gives the VRID up; its renewal, sent before, arrives late and renews nothing.
        arbiter.handle_release(7, 2, 1);
        let late = Grant { holder: 2, epoch: (3, 2) };
        assert_eq!(ask(&mut arbiter, at(t0, 30), 7, 2, Some(late), 1), Err(Refusal::GivenUp));
        assert_eq!(ask(&mut arbiter, at(t0, 40), 7, 2, None, 2).map(|g| g.holder), Ok(2));
    }

    #[test]
    fn a_late_answer_never_shortens_or_stretches_a_newer_lease() {
        let t0 = Instant::now();
        let grant = Grant { holder: 1, epoch: (1, 1) };
        let mut lease = Lease::default();
        lease.handle_grant(at(t0, 210), at(t0, 200), grant, TIMES.holder_validity(), false);
        lease.handle_grant(at(t0, 220), at(t0, 100), grant, TIMES.holder_validity(), true);
        assert_eq!(lease.remaining(at(t0, 200)), TIMES.holder_validity());
    }

    #[test]
    fn a_lease_of_another_length_is_refused() {
        let t0 = Instant::now();
        let mut arbiter = settled(t0);
        let longer = TIMES.lease * 2;
        assert_eq!(
            arbiter.handle_request(t0, 7, 1, None, 0, longer),
            Err(Refusal::LeaseMismatch { leader_ms: TIMES.lease.as_millis() as u64 })
        );
        assert!(ask(&mut arbiter, t0, 7, 1, None, 0).is_ok(), "the VRID is still free");
    }

    #[test]
    fn a_new_leader_is_asked_at_once_while_a_request_to_the_old_one_hangs() {
        let t0 = Instant::now();
        let mut leases = Leases::default();
        let (every, timeout) = (TIMES.renew_every(), TIMES.ask_timeout());
        assert!(leases.start_asking(7, 1, t0, every, timeout));
        assert!(
            !leases.start_asking(7, 1, t0 + every, every, timeout),
            "one in flight to leader 1"
        );
        assert!(leases.start_asking(7, 2, t0 + every, every, timeout), "leader 2 asked at once");
        assert!(leases.start_asking(7, 2, t0 + every + timeout, every, timeout), "a lost request");
    }

    #[test]
    fn a_late_renewal_never_revives_a_lease_that_ran_out() {
        // The holder claimed its lease at 0 ms; the answer comes after the lease ended, from a
        // leader that took the claim on trust: the VRID may be another node's by now.
        let t0 = Instant::now();
        let grant = Grant { holder: 1, epoch: (1, 1) };
        let validity = TIMES.holder_validity();
        let mut lease = Lease::default();
        lease.handle_grant(t0, t0, grant, validity, false);
        let late = t0 + validity + Duration::from_millis(1);
        lease.handle_grant(late, t0 + Duration::from_millis(50), grant, validity, true);
        assert!(lease.valid(late).is_none(), "revived");
        // In time, the same renewal extends it.
        let mut lease = Lease::default();
        lease.handle_grant(t0, t0, grant, validity, false);
        lease.handle_grant(at(t0, 100), at(t0, 50), grant, validity, true);
        assert_eq!(lease.remaining(at(t0, 100)), validity - Duration::from_millis(50));
    }
}
