//! When a hand-over's drain ends, as a pure function of what the old master observes and
//! when: its connections to the VIP, who VRRP says is master, and the drain deadline. Sans IO
//! in the style of `vrrp::machine`: the caller looks every so often, feeds one [`Look`] with
//! the time, and acts on the [`Verdict`].

use std::time::{Duration, Instant};

/// How long a drain holds on after another node is seen as master, even with no connection
/// left: until then clients may still send a SYN here.
pub(crate) const TAKEOVER_SETTLE: Duration = Duration::from_millis(500);
/// How long connections closed at a drain's deadline are still held, so their close
/// reaches the clients.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// What VRRP says of the drained VRID at one look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Mastership {
    /// This node is master of it.
    pub here: bool,
    /// Another node is known as master.
    pub elsewhere: bool,
}

/// One look at the drain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Look {
    /// What VRRP says; `None` once the node is stopping (its VRRP has stopped).
    pub vrrp: Option<Mastership>,
    /// Connections to the VIPs still open here; `None` when they could not be counted (the
    /// drain then runs to its deadline).
    pub open: Option<usize>,
}

/// What to do after a look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Keep draining.
    Keep,
    /// The deadline came: close the remaining connections now, and keep holding the VIP a
    /// moment so their close reaches the clients.
    CloseNow,
    /// Stop draining, for this reason.
    End(EndReason),
}

/// Why a drain ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EndReason {
    /// VRRP made this node master again: its connections are simply its own again.
    MasterAgain,
    /// Another node took over and no connection needs this node any more.
    EveryConnectionEnded,
    /// The deadline and the close grace passed with connections still open.
    DeadlinePassed,
}

impl EndReason {
    /// The reason as logged.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EndReason::MasterAgain => "this node is master again",
            EndReason::EveryConnectionEnded => "every connection ended",
            EndReason::DeadlinePassed => "the drain deadline passed",
        }
    }
}

/// One drain's progress.
#[derive(Clone, Debug)]
pub(crate) struct DrainProgress {
    deadline: Instant,
    /// VRRP reports a resignation a moment after it: "master again" counts only once this
    /// node has been seen as backup.
    left: bool,
    /// When another node was first seen as master (for a stopping node: when the drain
    /// began, as stopping waited for that).
    taken_over: Option<Instant>,
    closing: bool,
}

impl DrainProgress {
    /// A drain starting at `now` that ends at `deadline` at the latest; `stopping` when the
    /// node already waited for another to take over before it began.
    pub(crate) fn new(now: Instant, deadline: Instant, stopping: bool) -> DrainProgress {
        DrainProgress { deadline, left: false, taken_over: stopping.then_some(now), closing: false }
    }

    /// Takes one look, made at `now`.
    pub(crate) fn handle_look(&mut self, now: Instant, look: Look) -> Verdict {
        if let Some(vrrp) = look.vrrp {
            if self.left && vrrp.here {
                return Verdict::End(EndReason::MasterAgain);
            }
            self.left |= !vrrp.here;
            if self.taken_over.is_none() && !vrrp.here && vrrp.elsewhere {
                self.taken_over = Some(now);
            }
        }
        let settled =
            self.taken_over.is_some_and(|at| now.saturating_duration_since(at) >= TAKEOVER_SETTLE);
        if look.open == Some(0) && settled {
            return Verdict::End(EndReason::EveryConnectionEnded);
        }
        if now >= self.deadline + CLOSE_GRACE {
            return Verdict::End(EndReason::DeadlinePassed);
        }
        if now >= self.deadline && !self.closing {
            self.closing = true;
            return Verdict::CloseNow;
        }
        Verdict::Keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACKUP: Option<Mastership> = Some(Mastership { here: false, elsewhere: false });
    const TAKEN: Option<Mastership> = Some(Mastership { here: false, elsewhere: true });
    const MASTER: Option<Mastership> = Some(Mastership { here: true, elsewhere: false });

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    #[test]
    fn ends_once_taken_over_settled_and_no_connection_is_left() {
        let t0 = Instant::now();
        let mut drain = DrainProgress::new(t0, at(t0, 10_000), false);
        // Still master right after resigning: VRRP has not reported it yet.
        assert_eq!(
            drain.handle_look(at(t0, 0), Look { vrrp: MASTER, open: Some(0) }),
            Verdict::Keep
        );
        assert_eq!(
            drain.handle_look(at(t0, 200), Look { vrrp: TAKEN, open: Some(2) }),
            Verdict::Keep
        );
        // No connection left, but clients may still send SYNs here until the takeover settles.
        assert_eq!(
            drain.handle_look(at(t0, 400), Look { vrrp: TAKEN, open: Some(0) }),
            Verdict::Keep
        );
        assert_eq!(
            drain.handle_look(at(t0, 700), Look { vrrp: TAKEN, open: Some(0) }),
            Verdict::End(EndReason::EveryConnectionEnded)
        );
    }

    #[test]
    fn master_again_ends_the_drain_only_after_it_was_seen_leaving() {
        let t0 = Instant::now();
        let mut drain = DrainProgress::new(t0, at(t0, 10_000), false);
        assert_eq!(
            drain.handle_look(at(t0, 0), Look { vrrp: MASTER, open: Some(3) }),
            Verdict::Keep
        );
        assert_eq!(
            drain.handle_look(at(t0, 200), Look { vrrp: BACKUP, open: Some(3) }),
            Verdict::Keep
        );
        assert_eq!(
            drain.handle_look(at(t0, 400), Look { vrrp: MASTER, open: Some(3) }),
            Verdict::End(EndReason::MasterAgain)
        );
    }

    #[test]
    fn the_deadline_closes_once_then_gives_up_after_the_grace() {
        let t0 = Instant::now();
        let mut drain = DrainProgress::new(t0, at(t0, 1_000), false);
        let open = Look { vrrp: TAKEN, open: Some(5) };
        assert_eq!(drain.handle_look(at(t0, 900), open), Verdict::Keep);
        assert_eq!(drain.handle_look(at(t0, 1_000), open), Verdict::CloseNow);
        assert_eq!(drain.handle_look(at(t0, 1_500), open), Verdict::Keep, "closed once");
        assert_eq!(drain.handle_look(at(t0, 2_000), open), Verdict::End(EndReason::DeadlinePassed));
    }

    #[test]
    fn uncounted_connections_keep_the_drain_until_its_deadline() {
        let t0 = Instant::now();
        let mut drain = DrainProgress::new(t0, at(t0, 1_000), false);
        let unknown = Look { vrrp: TAKEN, open: None };
        assert_eq!(drain.handle_look(at(t0, 0), unknown), Verdict::Keep);
        assert_eq!(drain.handle_look(at(t0, 800), unknown), Verdict::Keep);
        assert_eq!(drain.handle_look(at(t0, 1_000), unknown), Verdict::CloseNow);
    }

    #[test]
    fn a_stopping_node_counts_the_takeover_from_the_start() {
        let t0 = Instant::now();
        let mut drain = DrainProgress::new(t0, at(t0, 10_000), true);
        let idle = Look { vrrp: None, open: Some(0) };
        assert_eq!(drain.handle_look(at(t0, 200), idle), Verdict::Keep);
        assert_eq!(
            drain.handle_look(at(t0, 500), idle),
            Verdict::End(EndReason::EveryConnectionEnded)
        );
    }
}
