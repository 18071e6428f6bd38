//! The VRRPv3 state machine of RFC 9568 §6 for one virtual router, without IO.
//!
//! A [`Router`] is driven from outside, as in quinn-proto: the driver hands in events with the
//! current time (`handle_*`), then drains what the router wants done ([`Router::poll_action`])
//! and arms one timer at [`Router::poll_timeout`]. The router reads no clock and touches no
//! socket or address, so every transition is tested with explicit timestamps, and a simulated
//! LAN of routers runs as fast as the CPU allows.
//!
//! # Time
//!
//! A [`Timestamp`] is the [`Duration`] since an origin the driver picks, such as the
//! `Instant` it started at; only differences matter. The RFC's two timers, Master_Down_Timer
//! (Backup) and Adver_Timer (Master), never run together, so a router has at most one
//! deadline. A wake-up before the deadline does nothing; a late one acts once, at its `now`.
//!
//! # Timer arithmetic
//!
//! Intervals are whole centiseconds, as on the wire. [`skew_time`] evaluates
//! `((256 - Priority) * Master_Adver_Interval) / 256` in nanoseconds and truncates; a
//! centisecond being 10^7 ns, what is lost is at most half a nanosecond, and priority 100 with
//! a 1 s interval gives exactly 609.375 ms (keepalived evaluates the same formula in
//! microseconds). Priority there is the effective one, after tracking penalties.
//!
//! # Preempt delay
//!
//! RFC 9568 has no preempt delay; this follows keepalived's `preempt_delay`, counted from
//! [`Router::handle_startup`]. Until the delay is over, a backup with preemption on treats an
//! advertisement from a lower-priority master as if preemption were off: it accepts it and
//! restarts its Master_Down_Timer. After that it discards such advertisements, as the RFC
//! says, and takes over when the timer fires, at most one Master_Down_Interval later. The
//! delay only holds back displacing a live master, so a rebooted node lets its services warm
//! up before it takes the addresses back; a master that falls silent is replaced as usual.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::ops::Add;
use std::time::Duration;

use thiserror::Error;

use crate::wire::{Advertisement, LocalVrid, MAX_ADVERT_INTERVAL_CS};

/// The priority of the router that owns the virtual addresses: always master while up.
pub const OWNER_PRIORITY: u8 = 255;

/// The priority of a backup unless configured otherwise (RFC 9568 §6.1).
pub const DEFAULT_PRIORITY: u8 = 100;

/// The priority a master advertises as it steps down, so that a backup takes over after
/// Skew_Time instead of Master_Down_Interval.
pub const STEP_DOWN_PRIORITY: u8 = 0;

const NANOS_PER_CENTISECOND: u64 = 10_000_000;

/// A point in time, as the [`Duration`] since an origin the driver picks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(Duration);

impl Timestamp {
    /// The origin.
    pub const ZERO: Self = Self(Duration::ZERO);

    /// The point `elapsed` after the origin.
    pub const fn after_origin(elapsed: Duration) -> Self {
        Self(elapsed)
    }

    /// How long after the origin this is.
    pub const fn since_origin(self) -> Duration {
        self.0
    }

    /// How long after `earlier` this is, or zero if it is not later.
    pub fn saturating_duration_since(self, earlier: Self) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
}

impl Add<Duration> for Timestamp {
    type Output = Self;

    /// Saturates: a deadline beyond the representable future simply never comes.
    fn add(self, duration: Duration) -> Self {
        Self(self.0.saturating_add(duration))
    }
}

/// How one virtual router is configured on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceConfig {
    /// The Virtual Router Identifier, 1..=255: which virtual router on the link this is.
    pub vrid: u8,
    /// 1..=254 for a router that backs up the addresses (higher wins), 255 for their owner.
    pub priority: u8,
    /// How often a master advertises: whole centiseconds, 10 ms to 40.95 s.
    pub advert_interval: Duration,
    /// Whether a backup takes over from a live master of lower priority.
    pub preempt: bool,
    /// How long after startup preemption is held back (see the module documentation).
    pub preempt_delay: Duration,
    /// This node's own address on the link (its link-local one over IPv6): the source of its
    /// advertisements, and the tie-break between masters of equal priority. Its family is the
    /// router's.
    pub primary_address: IpAddr,
    /// The virtual addresses this router protects, of the primary address's family.
    pub vips: Vec<IpAddr>,
    /// Whether a master that does not own the addresses accepts packets sent to them
    /// (RFC 9568 §6.1); a load balancer needs this on.
    pub accept_mode: bool,
    /// Whether a backup caps the master's advertised interval at its own when it sets its
    /// Master_Down_Timer (a departure from RFC 9568, for a fenced cluster: an advertisement
    /// claiming a long interval cannot stretch a takeover).
    pub cap_master_interval: bool,
    /// Whether this router follows another instead of electing: the IPv6 router of a
    /// dual-stack VRID, kept on the node where the VRID's IPv4 router (the group's leader) is
    /// master, as a keepalived sync group keeps its members together. It still advertises, answers and
    /// steps down before a better master, but never takes over on its own: see
    /// [`Router::follow`].
    pub follower: bool,
}

impl InstanceConfig {
    /// A backup with the RFC's defaults (priority 100, 1 s interval, preemption on) and no
    /// preempt delay, with accept mode on.
    pub fn new(vrid: u8, primary_address: IpAddr, vips: Vec<IpAddr>) -> Self {
        Self {
            vrid,
            priority: DEFAULT_PRIORITY,
            advert_interval: Duration::from_secs(1),
            preempt: true,
            preempt_delay: Duration::ZERO,
            primary_address,
            vips,
            accept_mode: true,
            cap_master_interval: false,
            follower: false,
        }
    }
}

/// Why an [`InstanceConfig`] cannot run.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// VRID 0 is reserved.
    #[error("VRID 0 is reserved; use 1..=255")]
    ZeroVrid,
    /// Priority 0 means "stepping down" on the wire.
    #[error("priority 0 is reserved for a master stepping down; use 1..=255")]
    ZeroPriority,
    /// The interval goes on the wire in centiseconds.
    #[error("advertisement interval {0:?} is not a whole number of centiseconds")]
    IntervalNotCentiseconds(Duration),
    /// The interval goes on the wire in 12 bits, and zero would never let a backup wait.
    #[error("advertisement interval {0:?} is outside 10ms..=40.95s")]
    IntervalOutOfRange(Duration),
    /// A virtual router protects at least one address.
    #[error("no virtual address configured")]
    NoVips,
    /// The address count goes on the wire in one byte.
    #[error("{0} virtual addresses; an advertisement carries at most 255")]
    TooManyVips(usize),
    /// RFC 9568 runs one virtual router per address family.
    #[error("virtual address {vip} is not of the primary address {primary}'s family")]
    MixedFamilies {
        /// The stray VIP.
        vip: IpAddr,
        /// The router's own address, which sets its family.
        primary: IpAddr,
    },
}

/// The state of a virtual router (RFC 9568 §6.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Not started, or shut down: silent, holds nothing.
    Initialize,
    /// Listening to the master, ready to take over when it falls silent.
    Backup,
    /// Holding the virtual addresses and advertising.
    Master,
}

impl State {
    /// The state's name in lowercase, as logs and the admin API show it.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Initialize => "initialize",
            State::Backup => "backup",
            State::Master => "master",
        }
    }
}

/// What the router asks the driver to do, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send an advertisement with this priority; [`Router::advertisement`] builds it.
    SendAdvert {
        /// The effective priority, or [`STEP_DOWN_PRIORITY`] when stepping down.
        priority: u8,
    },
    /// Add the virtual addresses to the interface.
    AddVips,
    /// Remove the virtual addresses from the interface.
    RemoveVips,
    /// Announce the virtual addresses with gratuitous ARP so hosts and switches learn where
    /// they moved. Sent once; repeating it is the driver's choice.
    SendGratuitousArp,
    /// The state changed; for logs, metrics and notifications.
    StateChanged {
        /// The state left.
        from: State,
        /// The state entered.
        to: State,
    },
}

/// Why a router last became master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Takeover {
    /// It owns the addresses (priority 255) and started.
    Owner,
    /// The master resigned (priority 0), so it waited only Skew_Time.
    MasterResigned,
    /// No advertisement came for Master_Down_Interval: the master fell silent, or this
    /// router outranks it and preempts.
    MasterSilent,
    /// A follower: its group's leading router became master here.
    Leader,
}

/// One virtual router (one VRID) on this node.
#[derive(Debug, Clone)]
pub struct Router {
    config: InstanceConfig,
    /// Advertisement_Interval as it goes on the wire.
    advert_interval_cs: u16,
    /// The configured priority lowered by tracking penalties: what is advertised and compared.
    priority: u8,
    /// The state with the one timer it runs.
    phase: Phase,
    /// Before this, a preempting backup still defers to a lower-priority master.
    preempt_held_until: Timestamp,
    /// Why it last became master.
    takeover: Option<Takeover>,
    /// Actions not yet taken by the driver.
    actions: VecDeque<Action>,
}

/// [`State`] with the timer each state runs, so no state can hold the other's timer.
#[derive(Debug, Clone, Copy)]
enum Phase {
    Initialize,
    Backup {
        /// Learned from the master's advertisements; Master_Down_Interval derives from it.
        master_adver_interval_cs: u16,
        master_down_at: Timestamp,
        /// The master resigned: the timer runs Skew_Time.
        master_resigned: bool,
    },
    Master {
        advert_at: Timestamp,
    },
}

impl Router {
    /// A router in [`State::Initialize`], once the configuration is known to be valid.
    pub fn new(config: InstanceConfig) -> Result<Self, ConfigError> {
        if config.vrid == 0 {
            return Err(ConfigError::ZeroVrid);
        }
        if config.priority == STEP_DOWN_PRIORITY {
            return Err(ConfigError::ZeroPriority);
        }
        let advert_interval_cs = centiseconds(config.advert_interval)?;
        if config.vips.is_empty() {
            return Err(ConfigError::NoVips);
        }
        if u8::try_from(config.vips.len()).is_err() {
            return Err(ConfigError::TooManyVips(config.vips.len()));
        }
        let primary = config.primary_address;
        if let Some(vip) = config.vips.iter().find(|vip| vip.is_ipv4() != primary.is_ipv4()) {
            return Err(ConfigError::MixedFamilies { vip: *vip, primary });
        }
        Ok(Self {
            advert_interval_cs,
            priority: config.priority,
            phase: Phase::Initialize,
            preempt_held_until: Timestamp::ZERO,
            takeover: None,
            actions: VecDeque::new(),
            config,
        })
    }

    /// The configuration the router runs with.
    pub fn config(&self) -> &InstanceConfig {
        &self.config
    }

    /// The current state.
    pub fn state(&self) -> State {
        match self.phase {
            Phase::Initialize => State::Initialize,
            Phase::Backup { .. } => State::Backup,
            Phase::Master { .. } => State::Master,
        }
    }

    /// Why the router last became master; `None` if it never did.
    pub fn takeover(&self) -> Option<Takeover> {
        self.takeover
    }

    /// The effective priority: configured, less tracking penalties.
    pub fn priority(&self) -> u8 {
        self.priority
    }

    /// Whether this router owns the virtual addresses (configured priority 255).
    pub fn is_address_owner(&self) -> bool {
        self.config.priority == OWNER_PRIORITY
    }

    /// Whether the node should accept packets addressed to the virtual addresses now: as
    /// master, if it owns them or accept mode is on (RFC 9568 §6.4.3).
    pub fn accepts_vip_traffic(&self) -> bool {
        self.state() == State::Master && (self.is_address_owner() || self.config.accept_mode)
    }

    /// What the receive checks need to know about this router.
    pub fn local_vrid(&self) -> LocalVrid<'_> {
        LocalVrid { vips: &self.config.vips, address_owner: self.is_address_owner() }
    }

    /// The advertisement to send for [`Action::SendAdvert`].
    pub fn advertisement(&self, priority: u8) -> Advertisement {
        Advertisement {
            vrid: self.config.vrid,
            priority,
            max_advert_interval_cs: self.advert_interval_cs,
            addresses: self.config.vips.clone(),
        }
    }

    /// The Startup event: the owner becomes master at once, anyone else a backup. Ignored
    /// unless in [`State::Initialize`].
    pub fn handle_startup(&mut self, now: Timestamp) {
        if !matches!(self.phase, Phase::Initialize) {
            return;
        }
        self.preempt_held_until = now + self.config.preempt_delay;
        if self.is_address_owner() {
            self.become_master(now);
        } else {
            self.actions
                .push_back(Action::StateChanged { from: State::Initialize, to: State::Backup });
            self.enter_backup(now, self.advert_interval_cs);
        }
    }

    /// An advertisement from `src` that passed [`crate::wire::check_received`].
    ///
    /// Advertisements for another VRID, or looped back from this router's own address, are
    /// ignored.
    pub fn handle_advert(&mut self, now: Timestamp, src: IpAddr, advert: &Advertisement) {
        if advert.vrid != self.config.vrid || src == self.config.primary_address {
            return;
        }
        match self.phase {
            Phase::Initialize => {}
            Phase::Backup { master_adver_interval_cs, .. } => {
                if advert.priority == STEP_DOWN_PRIORITY {
                    self.phase = Phase::Backup {
                        master_adver_interval_cs,
                        master_down_at: now + skew_time(self.priority, master_adver_interval_cs),
                        master_resigned: true,
                    };
                } else if !self.preempts(now) || advert.priority >= self.priority {
                    self.enter_backup(now, self.accepted_interval(advert));
                }
                // Otherwise this router outranks the sender and means to preempt it: ignoring
                // the sender lets the Master_Down_Timer fire.
            }
            Phase::Master { .. } => {
                if advert.priority == STEP_DOWN_PRIORITY {
                    // Whoever stepped down, backups now wait only Skew_Time: reassure them.
                    self.send_advert(now);
                } else if self.is_outranked_by(advert.priority, src) {
                    self.actions.push_back(Action::RemoveVips);
                    self.actions
                        .push_back(Action::StateChanged { from: State::Master, to: State::Backup });
                    self.enter_backup(now, self.accepted_interval(advert));
                } else {
                    // A lesser master: answer now so it steps down now, not at our next timer.
                    self.send_advert(now);
                }
            }
        }
    }

    /// Called at (or after) [`Router::poll_timeout`]: a backup whose master fell silent takes
    /// over, a master advertises.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        match self.phase {
            // A follower waits for its leader, whatever the master of its own family does.
            Phase::Backup { master_down_at, master_adver_interval_cs, .. }
                if now >= master_down_at && self.config.follower =>
            {
                self.enter_backup(now, master_adver_interval_cs)
            }
            Phase::Backup { master_down_at, .. } if now >= master_down_at => {
                self.become_master(now)
            }
            Phase::Master { advert_at } if now >= advert_at => self.send_advert(now),
            _ => {}
        }
    }

    /// Sets the sum of the weights of the failing tracked objects; see [`effective_priority`].
    ///
    /// A master advertises a changed priority at once, so that a preempting backup can stop
    /// accepting it without waiting an interval. A backup uses it from the next time it sets
    /// its Master_Down_Timer.
    pub fn set_priority_penalty(&mut self, now: Timestamp, penalty: u32) {
        let priority = effective_priority(self.config.priority, penalty);
        if priority == self.priority {
            return;
        }
        self.priority = priority;
        if let Phase::Master { .. } = self.phase {
            self.send_advert(now);
        }
    }

    /// Gives mastership away without stopping (a planned move): a master advertises priority
    /// 0, so the backup with the highest priority takes over after its Skew_Time, removes its
    /// VIPs and waits as a backup. Lower this router's priority first (a penalty) or it may
    /// take the VIPs back. The address owner, which always wins, ignores it; so do backups.
    pub fn resign(&mut self, now: Timestamp) {
        if !matches!(self.phase, Phase::Master { .. }) || self.is_address_owner() {
            return;
        }
        self.actions.extend([
            Action::SendAdvert { priority: STEP_DOWN_PRIORITY },
            Action::RemoveVips,
            Action::StateChanged { from: State::Master, to: State::Backup },
        ]);
        self.enter_backup(now, self.advert_interval_cs);
    }

    /// For a follower: takes over at once when its group's leader on this node is master
    /// (`leader_is_master`), and steps down (a priority-0 advertisement, so the new leader's
    /// follower takes over after its Skew_Time at most) when it no longer is. Ignored by a
    /// router that is not a follower, and in [`State::Initialize`].
    pub fn follow(&mut self, now: Timestamp, leader_is_master: bool) {
        if !self.config.follower {
            return;
        }
        match (self.phase, leader_is_master) {
            (Phase::Backup { .. }, true) => {
                self.become_master(now);
                self.takeover = Some(Takeover::Leader);
            }
            (Phase::Master { .. }, false) => {
                self.actions.extend([
                    Action::SendAdvert { priority: STEP_DOWN_PRIORITY },
                    Action::RemoveVips,
                    Action::StateChanged { from: State::Master, to: State::Backup },
                ]);
                self.enter_backup(now, self.advert_interval_cs);
            }
            _ => {}
        }
    }

    /// The Shutdown event: a master steps down with a priority-0 advertisement so a backup
    /// takes over after Skew_Time, and gives up the addresses.
    pub fn handle_shutdown(&mut self) {
        match self.phase {
            Phase::Initialize => return,
            Phase::Backup { .. } => {}
            Phase::Master { .. } => {
                self.actions.push_back(Action::SendAdvert { priority: STEP_DOWN_PRIORITY });
                self.actions.push_back(Action::RemoveVips);
            }
        }
        self.actions.push_back(Action::StateChanged { from: self.state(), to: State::Initialize });
        self.phase = Phase::Initialize;
    }

    /// The next thing to do, oldest first.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When to call [`Router::handle_timeout`]; `None` in [`State::Initialize`].
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        match self.phase {
            Phase::Initialize => None,
            Phase::Backup { master_down_at, .. } => Some(master_down_at),
            Phase::Master { advert_at } => Some(advert_at),
        }
    }

    fn become_master(&mut self, now: Timestamp) {
        let from = self.state();
        self.takeover = Some(match self.phase {
            Phase::Backup { master_resigned: true, .. } => Takeover::MasterResigned,
            Phase::Backup { .. } => Takeover::MasterSilent,
            Phase::Initialize | Phase::Master { .. } => Takeover::Owner,
        });
        self.actions.extend([
            Action::SendAdvert { priority: self.priority },
            Action::AddVips,
            Action::SendGratuitousArp,
            Action::StateChanged { from, to: State::Master },
        ]);
        self.phase =
            Phase::Master { advert_at: now + centiseconds_to_duration(self.advert_interval_cs) };
    }

    /// The master's interval as this backup takes it: as advertised, or capped at its own.
    fn accepted_interval(&self, advert: &Advertisement) -> u16 {
        match self.config.cap_master_interval {
            true => advert.max_advert_interval_cs.min(self.advert_interval_cs),
            false => advert.max_advert_interval_cs,
        }
    }

    fn enter_backup(&mut self, now: Timestamp, master_adver_interval_cs: u16) {
        self.phase = Phase::Backup {
            master_adver_interval_cs,
            master_down_at: now + master_down_interval(self.priority, master_adver_interval_cs),
            master_resigned: false,
        };
    }

    fn send_advert(&mut self, now: Timestamp) {
        self.actions.push_back(Action::SendAdvert { priority: self.priority });
        self.phase =
            Phase::Master { advert_at: now + centiseconds_to_duration(self.advert_interval_cs) };
    }

    fn preempts(&self, now: Timestamp) -> bool {
        self.config.preempt && now >= self.preempt_held_until
    }

    /// RFC 9568 §6.4.3: higher priority wins, then the higher primary address as an integer.
    /// (`IpAddr` orders addresses of one family as integers, and a router hears its own family
    /// only.)
    fn is_outranked_by(&self, priority: u8, src: IpAddr) -> bool {
        priority > self.priority || (priority == self.priority && src > self.config.primary_address)
    }
}

/// Skew_Time: `((256 - priority) * master_adver_interval) / 256`, so that the backup with the
/// highest priority times out first.
pub fn skew_time(priority: u8, master_adver_interval_cs: u16) -> Duration {
    let interval_nanos = u64::from(master_adver_interval_cs) * NANOS_PER_CENTISECOND;
    Duration::from_nanos(interval_nanos * (256 - u64::from(priority)) / 256)
}

/// Master_Down_Interval: `3 * master_adver_interval + skew_time`, how long a backup waits for
/// a silent master.
pub fn master_down_interval(priority: u8, master_adver_interval_cs: u16) -> Duration {
    centiseconds_to_duration(master_adver_interval_cs) * 3
        + skew_time(priority, master_adver_interval_cs)
}

/// The priority to run with: `configured` less `penalty` (the summed weights of failing
/// tracked objects), kept within 1..=254 so that a degraded router still backs up and never
/// claims ownership. The owner stays at 255 whatever fails.
pub fn effective_priority(configured: u8, penalty: u32) -> u8 {
    if configured == OWNER_PRIORITY {
        return OWNER_PRIORITY;
    }
    let penalty = u8::try_from(penalty).unwrap_or(u8::MAX);
    configured.saturating_sub(penalty).clamp(1, OWNER_PRIORITY - 1)
}

fn centiseconds(interval: Duration) -> Result<u16, ConfigError> {
    let nanos = interval.as_nanos();
    let per_cs = u128::from(NANOS_PER_CENTISECOND);
    if !nanos.is_multiple_of(per_cs) {
        return Err(ConfigError::IntervalNotCentiseconds(interval));
    }
    u16::try_from(nanos / per_cs)
        .ok()
        .filter(|cs| (1..=MAX_ADVERT_INTERVAL_CS).contains(cs))
        .ok_or(ConfigError::IntervalOutOfRange(interval))
}

fn centiseconds_to_duration(centiseconds: u16) -> Duration {
    Duration::from_nanos(u64::from(centiseconds) * NANOS_PER_CENTISECOND)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::{Ipv4Addr, Ipv6Addr};

    const PRIMARY: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 11));
    const LOWER_PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 10));
    const HIGHER_PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 12));
    const VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 100));

    fn at(millis: u64) -> Timestamp {
        Timestamp::after_origin(Duration::from_millis(millis))
    }

    fn config(priority: u8) -> InstanceConfig {
        InstanceConfig { priority, ..InstanceConfig::new(51, PRIMARY, vec![VIP]) }
    }

    fn advert(priority: u8, max_advert_interval_cs: u16) -> Advertisement {
        Advertisement { vrid: 51, priority, max_advert_interval_cs, addresses: vec![VIP] }
    }

    fn drain(router: &mut Router) -> Vec<Action> {
        std::iter::from_fn(|| router.poll_action()).collect()
    }

    /// A router started at `now`, in Backup, its actions drained.
    fn backup(config: InstanceConfig, now: Timestamp) -> Router {
        let mut router = Router::new(config).unwrap();
        router.handle_startup(now);
        drain(&mut router);
        assert_eq!(router.state(), State::Backup);
        router
    }

    /// A router that became master at `now` after its Master_Down_Timer fired.
    fn master(config: InstanceConfig, now: Timestamp) -> Router {
        let mut router = backup(config, Timestamp::ZERO);
        router.handle_timeout(now.max(router.poll_timeout().unwrap()));
        drain(&mut router);
        assert_eq!(router.state(), State::Master);
        router
    }

    fn became_master(from: State, priority: u8) -> Vec<Action> {
        vec![
            Action::SendAdvert { priority },
            Action::AddVips,
            Action::SendGratuitousArp,
            Action::StateChanged { from, to: State::Master },
        ]
    }

    #[test]
    fn timer_formulas_are_exact() {
        assert_eq!(skew_time(100, 100), Duration::from_micros(609_375));
        assert_eq!(master_down_interval(100, 100), Duration::from_micros(3_609_375));
        assert_eq!(skew_time(254, 100), Duration::from_nanos(7_812_500));
        assert_eq!(master_down_interval(254, 1), Duration::from_nanos(30_078_125));
        // 4095 cs * 255 / 256 = 40.7900390625 s minus half a nanosecond, truncated.
        assert_eq!(skew_time(1, 4095), Duration::from_nanos(40_790_039_062));
        assert_eq!(skew_time(255, 1), Duration::from_nanos(39_062));
        assert_eq!(skew_time(0, 100), Duration::from_secs(1));
    }

    #[test]
    fn effective_priority_is_clamped_and_spares_the_owner() {
        assert_eq!(effective_priority(100, 0), 100);
        assert_eq!(effective_priority(100, 30), 70);
        assert_eq!(effective_priority(100, 100), 1);
        assert_eq!(effective_priority(100, u32::MAX), 1);
        assert_eq!(effective_priority(254, 0), 254);
        assert_eq!(effective_priority(OWNER_PRIORITY, 200), OWNER_PRIORITY);
    }

    #[test]
    fn invalid_configurations_are_refused() {
        let new = |edit: &dyn Fn(&mut InstanceConfig)| {
            let mut config = config(100);
            edit(&mut config);
            Router::new(config).map(|_| ())
        };
        assert_eq!(new(&|_| {}), Ok(()));
        assert_eq!(new(&|c| c.vrid = 0), Err(ConfigError::ZeroVrid));
        assert_eq!(new(&|c| c.priority = 0), Err(ConfigError::ZeroPriority));
        let odd = Duration::from_millis(1005);
        assert_eq!(
            new(&|c| c.advert_interval = odd),
            Err(ConfigError::IntervalNotCentiseconds(odd))
        );
        assert_eq!(
            new(&|c| c.advert_interval = Duration::ZERO),
            Err(ConfigError::IntervalOutOfRange(Duration::ZERO))
        );
        let too_long = Duration::from_millis(40_960);
        assert_eq!(
            new(&|c| c.advert_interval = too_long),
            Err(ConfigError::IntervalOutOfRange(too_long))
        );
        assert_eq!(new(&|c| c.advert_interval = Duration::from_millis(40_950)), Ok(()));
        assert_eq!(new(&|c| c.advert_interval = Duration::from_millis(10)), Ok(()));
        assert_eq!(new(&|c| c.vips.clear()), Err(ConfigError::NoVips));
        assert_eq!(new(&|c| c.vips = vec![VIP; 256]), Err(ConfigError::TooManyVips(256)));
        let v6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100));
        assert_eq!(
            new(&|c| c.vips.push(v6)),
            Err(ConfigError::MixedFamilies { vip: v6, primary: PRIMARY })
        );
    }

    #[test]
    fn owner_becomes_master_at_startup() {
        let mut router = Router::new(config(OWNER_PRIORITY)).unwrap();
        assert_eq!(router.poll_timeout(), None);
        router.handle_startup(at(5));
        assert_eq!(drain(&mut router), became_master(State::Initialize, 255));
        assert_eq!(router.poll_timeout(), Some(at(1_005)));
    }

    #[test]
    fn others_start_as_backup_for_one_master_down_interval() {
        let mut router = Router::new(config(100)).unwrap();
        router.handle_startup(at(5));
        assert_eq!(
            drain(&mut router),
            [Action::StateChanged { from: State::Initialize, to: State::Backup }]
        );
        assert_eq!(router.poll_timeout(), Some(at(5) + Duration::from_micros(3_609_375)));
        router.handle_startup(at(6));
        assert_eq!(drain(&mut router), [], "a second startup is ignored");
    }

    #[test]
    fn backup_becomes_master_when_the_master_down_timer_fires() {
        let mut router = backup(config(100), Timestamp::ZERO);
        let deadline = router.poll_timeout().unwrap();
        router.handle_timeout(at(3_609));
        assert_eq!(drain(&mut router), [], "an early wake-up does nothing");
        router.handle_timeout(deadline);
        assert_eq!(drain(&mut router), became_master(State::Backup, 100));
        assert_eq!(router.poll_timeout(), Some(deadline + Duration::from_secs(1)));
    }

    #[test]
    fn backup_follows_a_higher_master_and_learns_its_interval() {
        let mut router = backup(config(100), Timestamp::ZERO);
        router.handle_advert(at(500), HIGHER_PEER, &advert(200, 200));
        assert_eq!(drain(&mut router), []);
        // 3 * 2 s + (156 * 2 s) / 256
        assert_eq!(router.poll_timeout(), Some(at(500) + Duration::from_micros(7_218_750)));
    }

    #[test]
    fn a_capped_backup_does_not_let_a_slow_advert_stretch_its_takeover() {
        let capped = InstanceConfig { cap_master_interval: true, ..config(100) };
        let mut router = backup(capped.clone(), Timestamp::ZERO);
        // 40.95 s claimed; the backup keeps its own 1 s.
        router.handle_advert(at(500), HIGHER_PEER, &advert(255, 4095));
        assert_eq!(router.poll_timeout(), Some(at(500) + master_down_interval(100, 100)));
        let mut router = master(capped, at(0));
        router.handle_advert(at(500), HIGHER_PEER, &advert(255, 4095));
        assert_eq!(router.state(), State::Backup);
        assert_eq!(router.poll_timeout(), Some(at(500) + master_down_interval(100, 100)));
    }

    #[test]
    fn backup_follows_an_equal_master_even_when_preempting() {
        let mut router = backup(config(100), Timestamp::ZERO);
        router.handle_advert(at(500), LOWER_PEER, &advert(100, 100));
        assert_eq!(router.poll_timeout(), Some(at(500) + master_down_interval(100, 100)));
    }

    #[test]
    fn backup_without_preemption_follows_a_lower_master() {
        let mut router = backup(InstanceConfig { preempt: false, ..config(200) }, Timestamp::ZERO);
        router.handle_advert(at(500), LOWER_PEER, &advert(50, 100));
        assert_eq!(router.poll_timeout(), Some(at(500) + master_down_interval(200, 100)));
    }

    #[test]
    fn preempting_backup_ignores_a_lower_master_then_takes_over() {
        let mut router = backup(config(200), Timestamp::ZERO);
        let deadline = router.poll_timeout().unwrap();
        router.handle_advert(at(500), LOWER_PEER, &advert(50, 100));
        assert_eq!(router.poll_timeout(), Some(deadline), "timer not restarted");
        router.handle_timeout(deadline);
        assert_eq!(drain(&mut router), became_master(State::Backup, 200));
    }

    #[test]
    fn preempt_delay_defers_to_a_lower_master_until_it_runs_out() {
        let config = InstanceConfig { preempt_delay: Duration::from_secs(10), ..config(200) };
        let mut router = backup(config, at(1_000));
        router.handle_advert(at(10_999), LOWER_PEER, &advert(50, 100));
        let restarted = at(10_999) + master_down_interval(200, 100);
        assert_eq!(router.poll_timeout(), Some(restarted));
        router.handle_advert(at(11_000), LOWER_PEER, &advert(50, 100));
        assert_eq!(router.poll_timeout(), Some(restarted), "delay over: the advert is ignored");
    }

    #[test]
    fn backup_hearing_priority_zero_waits_only_skew_time() {
        let mut router = backup(config(100), Timestamp::ZERO);
        router.handle_advert(at(1_000), HIGHER_PEER, &advert(200, 50));
        router.handle_advert(at(2_000), HIGHER_PEER, &advert(0, 50));
        // Skew_Time from the interval learned from the master: (156 * 0.5 s) / 256.
        let skew = at(2_000) + Duration::from_nanos(304_687_500);
        assert_eq!(router.poll_timeout(), Some(skew));
        assert_eq!(drain(&mut router), []);
        router.handle_timeout(skew);
        assert_eq!(router.takeover(), Some(Takeover::MasterResigned));
    }

    #[test]
    fn a_takeover_says_why() {
        let mut router = backup(config(100), Timestamp::ZERO);
        assert_eq!(router.takeover(), None);
        router.handle_advert(at(1_000), HIGHER_PEER, &advert(200, 50));
        router.handle_advert(at(1_100), HIGHER_PEER, &advert(0, 50));
        // The master came back before Skew_Time ran out: the next takeover is a silence.
        router.handle_advert(at(1_200), HIGHER_PEER, &advert(200, 50));
        router.handle_timeout(at(1_200) + master_down_interval(100, 50));
        assert_eq!(router.takeover(), Some(Takeover::MasterSilent));
        let mut owner = Router::new(config(OWNER_PRIORITY)).unwrap();
        owner.handle_startup(Timestamp::ZERO);
        assert_eq!(owner.takeover(), Some(Takeover::Owner));
    }

    #[test]
    fn a_follower_takes_over_and_steps_down_with_its_leader_never_on_its_own() {
        let follower = InstanceConfig { follower: true, ..config(100) };
        let mut router = backup(follower, Timestamp::ZERO);
        // The master of its own family falls silent: a follower waits on.
        let deadline = router.poll_timeout().unwrap();
        router.handle_timeout(deadline);
        assert_eq!((router.state(), drain(&mut router)), (State::Backup, vec![]));
        assert!(router.poll_timeout().unwrap() > deadline, "the timer runs on");

        router.follow(at(5_000), false);
        assert_eq!(drain(&mut router), []);
        router.follow(at(5_000), true);
        assert_eq!(drain(&mut router), became_master(State::Backup, 100));
        assert_eq!(router.takeover(), Some(Takeover::Leader));
        router.follow(at(5_100), true);
        assert_eq!(drain(&mut router), [], "already master");

        router.follow(at(6_000), false);
        assert_eq!(
            drain(&mut router),
            [
                Action::SendAdvert { priority: 0 },
                Action::RemoveVips,
                Action::StateChanged { from: State::Master, to: State::Backup },
            ]
        );
        // Routers that elect ignore it.
        let mut elects = backup(config(100), Timestamp::ZERO);
        elects.follow(at(5_000), true);
        assert_eq!((elects.state(), drain(&mut elects)), (State::Backup, vec![]));
    }

    #[test]
    fn backup_shutdown_returns_to_initialize() {
        let mut router = backup(config(100), Timestamp::ZERO);
        router.handle_shutdown();
        assert_eq!(
            drain(&mut router),
            [Action::StateChanged { from: State::Backup, to: State::Initialize }]
        );
        assert_eq!(router.poll_timeout(), None);
    }

    #[test]
    fn master_advertises_every_interval() {
        let mut router = master(config(100), at(4_000));
        assert_eq!(router.poll_timeout(), Some(at(5_000)));
        router.handle_timeout(at(4_999));
        assert_eq!(drain(&mut router), []);
        router.handle_timeout(at(5_300));
        assert_eq!(drain(&mut router), [Action::SendAdvert { priority: 100 }]);
        assert_eq!(router.poll_timeout(), Some(at(6_300)), "rearmed from the late wake-up");
    }

    #[test]
    fn master_answers_priority_zero_at_once() {
        let mut router = master(config(100), at(4_000));
        router.handle_advert(at(4_200), HIGHER_PEER, &advert(0, 100));
        assert_eq!(drain(&mut router), [Action::SendAdvert { priority: 100 }]);
        assert_eq!(router.poll_timeout(), Some(at(5_200)));
    }

    #[test]
    fn master_yields_to_a_higher_priority() {
        let mut router = master(config(100), at(4_000));
        router.handle_advert(at(4_200), LOWER_PEER, &advert(150, 200));
        assert_eq!(
            drain(&mut router),
            [Action::RemoveVips, Action::StateChanged { from: State::Master, to: State::Backup }]
        );
        assert_eq!(router.poll_timeout(), Some(at(4_200) + master_down_interval(100, 200)));
    }

    #[test]
    fn equal_priorities_are_broken_by_the_higher_primary_address() {
        let mut router = master(config(100), at(4_000));
        router.handle_advert(at(4_100), LOWER_PEER, &advert(100, 100));
        assert_eq!(drain(&mut router), [Action::SendAdvert { priority: 100 }]);
        assert_eq!(router.state(), State::Master);
        router.handle_advert(at(4_200), HIGHER_PEER, &advert(100, 100));
        assert_eq!(router.state(), State::Backup);
        assert_eq!(drain(&mut router)[0], Action::RemoveVips);
    }

    #[test]
    fn over_ipv6_equal_priorities_are_broken_by_the_higher_link_local_address() {
        let link_local = |last| IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, last));
        let vip = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100));
        let config = InstanceConfig::new(51, link_local(0x11), vec![vip]);
        let advert = Advertisement { addresses: vec![vip], ..advert(100, 100) };
        let mut router = master(config, at(4_000));
        router.handle_advert(at(4_100), link_local(0x10), &advert);
        assert_eq!(router.state(), State::Master);
        // Compared as 128-bit integers: fe80::1:0 is above fe80::11.
        router.handle_advert(
            at(4_200),
            IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 1, 0)),
            &advert,
        );
        assert_eq!(router.state(), State::Backup);
    }

    #[test]
    fn master_answers_a_lower_master_at_once() {
        let mut router = master(config(100), at(4_000));
        router.handle_advert(at(4_300), HIGHER_PEER, &advert(99, 100));
        assert_eq!(drain(&mut router), [Action::SendAdvert { priority: 100 }]);
        assert_eq!(router.state(), State::Master);
        assert_eq!(router.poll_timeout(), Some(at(5_300)));
    }

    #[test]
    fn master_shutdown_steps_down_with_priority_zero() {
        let mut router = master(config(100), at(4_000));
        router.handle_shutdown();
        assert_eq!(
            drain(&mut router),
            [
                Action::SendAdvert { priority: STEP_DOWN_PRIORITY },
                Action::RemoveVips,
                Action::StateChanged { from: State::Master, to: State::Initialize },
            ]
        );
        assert_eq!(router.poll_timeout(), None);
        router.handle_shutdown();
        assert_eq!(drain(&mut router), [], "already down");
        router.handle_startup(at(9_000));
        assert_eq!(router.state(), State::Backup, "it can start again");
    }

    #[test]
    fn a_resigning_master_steps_down_and_waits_as_a_backup() {
        let mut router = master(config(100), at(4_000));
        router.set_priority_penalty(at(4_100), 99);
        assert_eq!(drain(&mut router), [Action::SendAdvert { priority: 1 }]);
        router.resign(at(4_200));
        assert_eq!(
            drain(&mut router),
            [
                Action::SendAdvert { priority: STEP_DOWN_PRIORITY },
                Action::RemoveVips,
                Action::StateChanged { from: State::Master, to: State::Backup },
            ]
        );
        assert_eq!(router.poll_timeout(), Some(at(4_200) + master_down_interval(1, 100)));
        router.resign(at(4_300));
        assert_eq!(drain(&mut router), [], "a backup has nothing to give away");
        router.handle_advert(at(4_400), HIGHER_PEER, &advert(90, 100));
        router.handle_timeout(at(5_000));
        assert_eq!(router.state(), State::Backup, "the new master is heard, so it stays backup");
    }

    #[test]
    fn initialize_ignores_adverts_and_timeouts() {
        let mut router = Router::new(config(100)).unwrap();
        router.handle_advert(at(1), HIGHER_PEER, &advert(200, 100));
        router.handle_timeout(at(100_000));
        assert_eq!(router.state(), State::Initialize);
        assert_eq!(drain(&mut router), []);
    }

    #[test]
    fn own_and_foreign_adverts_are_ignored() {
        let mut router = master(config(100), at(4_000));
        router.handle_advert(at(4_100), PRIMARY, &advert(100, 100));
        router.handle_advert(
            at(4_100),
            HIGHER_PEER,
            &Advertisement { vrid: 52, ..advert(200, 100) },
        );
        assert_eq!(drain(&mut router), []);
        assert_eq!(router.state(), State::Master);
    }

    #[test]
    fn a_penalised_master_advertises_its_lower_priority_at_once() {
        let mut router = master(config(100), at(4_000));
        router.set_priority_penalty(at(4_500), 30);
        assert_eq!(drain(&mut router), [Action::SendAdvert { priority: 70 }]);
        assert_eq!(router.priority(), 70);
        assert_eq!(router.poll_timeout(), Some(at(5_500)));
        router.set_priority_penalty(at(4_600), 30);
        assert_eq!(drain(&mut router), [], "no change, nothing sent");
        router.set_priority_penalty(at(4_700), 0);
        assert_eq!(drain(&mut router), [Action::SendAdvert { priority: 100 }]);
    }

    #[test]
    fn a_penalised_backup_stops_preempting() {
        let mut router = backup(config(100), Timestamp::ZERO);
        router.set_priority_penalty(at(100), 50);
        assert_eq!(drain(&mut router), []);
        router.handle_advert(at(200), LOWER_PEER, &advert(80, 100));
        assert_eq!(router.poll_timeout(), Some(at(200) + master_down_interval(50, 100)));
    }

    #[test]
    fn the_owner_ignores_penalties() {
        let mut router = Router::new(config(OWNER_PRIORITY)).unwrap();
        router.handle_startup(at(0));
        drain(&mut router);
        router.set_priority_penalty(at(10), 100);
        assert_eq!(router.priority(), OWNER_PRIORITY);
        assert_eq!(drain(&mut router), []);
    }

    #[test]
    fn vip_traffic_is_accepted_only_by_a_master_allowed_to() {
        assert!(!backup(config(100), Timestamp::ZERO).accepts_vip_traffic());
        assert!(master(config(100), at(4_000)).accepts_vip_traffic());
        let refusing = InstanceConfig { accept_mode: false, ..config(100) };
        assert!(!master(refusing.clone(), at(4_000)).accepts_vip_traffic());
        let mut owner =
            Router::new(InstanceConfig { priority: OWNER_PRIORITY, ..refusing }).unwrap();
        owner.handle_startup(at(0));
        assert!(owner.accepts_vip_traffic(), "the owner always accepts");
    }

    #[test]
    fn advertisement_and_receive_context_come_from_the_config() {
        let router = Router::new(config(100)).unwrap();
        assert_eq!(router.advertisement(0), advert(0, 100));
        assert_eq!(router.local_vrid(), LocalVrid { vips: &[VIP], address_owner: false });
    }
}
