//! Backend health as policy: the rise/fall hysteresis of active checks, passive ejection
//! after consecutive failures, and the jittered check interval. Small synchronous types that
//! take results and time as values and say when a backend flips; the node's probe does the IO.

use std::fmt;
use std::time::{Duration, Instant};

/// What active checks say of a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// No check has answered yet. Traffic still goes to it, so a configuration change never
    /// blackholes a pool while its first checks run; the first result decides at once.
    Unknown,
    /// `rise` consecutive checks passed.
    Up,
    /// `fall` consecutive checks failed.
    Down,
}

impl Health {
    /// Whether traffic may go to a backend in this state.
    pub fn takes_traffic(self) -> bool {
        self != Health::Down
    }

    /// The name used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Up => "up",
            Health::Down => "down",
        }
    }
}

/// Rise/fall hysteresis over check results: one result never flips an established state.
#[derive(Clone, Debug)]
pub struct Hysteresis {
    rise: u32,
    fall: u32,
    state: Health,
    /// Consecutive results that disagree with `state`.
    streak: u32,
}

impl Hysteresis {
    /// A backend not checked yet; `rise` and `fall` below 1 count as 1.
    pub fn new(rise: u32, fall: u32) -> Hysteresis {
        Hysteresis { rise: rise.max(1), fall: fall.max(1), state: Health::Unknown, streak: 0 }
    }

    /// New thresholds for the next transitions; the current state stays.
    pub fn retune(&mut self, rise: u32, fall: u32) {
        self.rise = rise.max(1);
        self.fall = fall.max(1);
    }

    /// The current state.
    pub fn state(&self) -> Health {
        self.state
    }

    /// Takes one check result; returns the new state when it changed.
    pub fn record(&mut self, passed: bool) -> Option<Health> {
        let next = match (self.state, passed) {
            (Health::Unknown, true) => Some(Health::Up),
            (Health::Unknown, false) => Some(Health::Down),
            (Health::Up, true) | (Health::Down, false) => {
                self.streak = 0;
                None
            }
            (Health::Up, false) => {
                self.streak += 1;
                (self.streak >= self.fall).then_some(Health::Down)
            }
            (Health::Down, true) => {
                self.streak += 1;
                (self.streak >= self.rise).then_some(Health::Up)
            }
        };
        if let Some(state) = next {
            self.state = state;
            self.streak = 0;
        }
        next
    }
}

/// Consecutive connection failures before a backend is ejected.
pub const PASSIVE_FAILURES_TO_EJECT: u32 = 3;
/// The first ejection's length; each ejection in a row doubles it, up to [`MAX_EJECTION`].
pub const FIRST_EJECTION: Duration = Duration::from_secs(5);
/// The longest ejection.
pub const MAX_EJECTION: Duration = Duration::from_secs(60);

/// Passive checking: real traffic's failures eject a backend for a back-off period.
#[derive(Clone, Debug, Default)]
pub struct PassiveEjection {
    consecutive_failures: u32,
    /// Ejections since the last success, for the back-off.
    ejections: u32,
    ejected_until: Option<Instant>,
}

impl PassiveEjection {
    /// A failure at `now`; returns how long the backend is ejected for when this one ejects it.
    pub fn record_failure(&mut self, now: Instant) -> Option<Duration> {
        if self.is_ejected(now) {
            return None;
        }
        self.consecutive_failures += 1;
        if self.consecutive_failures < PASSIVE_FAILURES_TO_EJECT {
            return None;
        }
        let period = FIRST_EJECTION.saturating_mul(1 << self.ejections.min(8)).min(MAX_EJECTION);
        self.ejections += 1;
        self.consecutive_failures = 0;
        self.ejected_until = Some(now + period);
        Some(period)
    }

    /// A success: the failure streak and the back-off start over.
    pub fn record_success(&mut self) {
        self.consecutive_failures = 0;
        self.ejections = 0;
    }

    /// Active checks say the backend is back: the ejection ends now and the back-off resets.
    pub fn clear(&mut self) {
        *self = PassiveEjection::default();
    }

    /// Whether the backend is ejected at `now`.
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|until| now < until)
    }
}

/// The interval until the next check: `interval` plus up to 10 % jitter, so the nodes of a
/// cluster (and the backends of a pool) do not check in lockstep.
pub fn next_check_in(interval: Duration, rng: &mut fastrand::Rng) -> Duration {
    let jitter_ms = u64::try_from(interval.as_millis() / 10).unwrap_or(u64::MAX);
    interval.saturating_add(Duration::from_millis(rng.u64(0..=jitter_ms)))
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
#[allow(
    clippy::disallowed_methods,
    reason = "tests take an arbitrary origin for their explicit times"
)]
mod tests {
    use super::*;

    #[test]
    fn first_result_decides_then_rise_and_fall_apply() {
        let mut h = Hysteresis::new(2, 3);
        assert_eq!(h.state(), Health::Unknown);
        assert!(h.state().takes_traffic());
        assert_eq!(h.record(true), Some(Health::Up));
        assert_eq!(h.record(false), None);
        assert_eq!(h.record(false), None);
        assert_eq!(h.record(false), Some(Health::Down));
        assert!(!h.state().takes_traffic());
        assert_eq!(h.record(true), None);
        assert_eq!(h.record(true), Some(Health::Up));
    }

    #[test]
    fn a_good_result_resets_the_failure_streak() {
        let mut h = Hysteresis::new(2, 3);
        h.record(true);
        for _ in 0..10 {
            assert_eq!(h.record(false), None);
            assert_eq!(h.record(false), None);
            assert_eq!(h.record(true), None, "two failures then a success never flip");
        }
        assert_eq!(h.state(), Health::Up);
    }

    #[test]
    fn unknown_backend_failing_its_first_check_goes_down_at_once() {
        let mut h = Hysteresis::new(3, 3);
        assert_eq!(h.record(false), Some(Health::Down));
        assert_eq!(h.record(true), None);
        assert_eq!(h.record(false), None, "a failure resets the rise streak");
        assert_eq!(h.record(true), None);
        assert_eq!(h.record(true), None);
        assert_eq!(h.record(true), Some(Health::Up));
    }

    #[test]
    fn zero_thresholds_count_as_one() {
        let mut h = Hysteresis::new(0, 0);
        h.record(true);
        assert_eq!(h.record(false), Some(Health::Down));
        assert_eq!(h.record(true), Some(Health::Up));
    }

    #[test]
    fn passive_ejection_backs_off_and_resets_on_success() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut p = PassiveEjection::default();
        assert_eq!(p.record_failure(at(0)), None);
        assert_eq!(p.record_failure(at(1)), None);
        assert_eq!(p.record_failure(at(2)), Some(FIRST_EJECTION));
        assert!(p.is_ejected(at(3)));
        // Failures of connections started before the ejection do not extend it.
        assert_eq!(p.record_failure(at(4)), None);
        let after = 2 + FIRST_EJECTION.as_millis() as u64;
        assert!(!p.is_ejected(at(after)));
        for n in 0..2 {
            assert_eq!(p.record_failure(at(after + n)), None);
        }
        assert_eq!(p.record_failure(at(after + 2)), Some(FIRST_EJECTION * 2));
        let much_later = at(after + 600_000);
        for _ in 0..20 {
            p.record_failure(much_later);
        }
        p.record_success();
        let later_still = much_later + MAX_EJECTION * 2;
        p.record_failure(later_still);
        p.record_failure(later_still);
        assert_eq!(p.record_failure(later_still), Some(FIRST_EJECTION));
    }

    #[test]
    fn back_off_is_capped() {
        let mut p = PassiveEjection::default();
        let mut now = Instant::now();
        let mut last = Duration::ZERO;
        for _ in 0..40 {
            for _ in 0..PASSIVE_FAILURES_TO_EJECT {
                if let Some(period) = p.record_failure(now) {
                    last = period;
                }
            }
            now += MAX_EJECTION;
        }
        assert_eq!(last, MAX_EJECTION);
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let mut rng = fastrand::Rng::with_seed(7);
        let interval = Duration::from_secs(2);
        for _ in 0..1000 {
            let next = next_check_in(interval, &mut rng);
            assert!(next >= interval && next <= interval + Duration::from_millis(200));
        }
    }
}
