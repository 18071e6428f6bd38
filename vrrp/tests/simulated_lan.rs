//! A simulated LAN of VRRP routers that checks the election as a whole: a virtual clock, a
//! multicast bus with latency, optional loss and partitions, and a deterministic RNG.
//!
//! Every advertisement goes through the real wire format: emitted, wrapped in an IPv4 header,
//! and run through `check_received_ipv4` at each receiver before the router sees it.

#![allow(clippy::unwrap_used)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use fulcrum_vrrp::machine::{
    Action, InstanceConfig, Router, State, Timestamp, master_down_interval, skew_time,
};
use fulcrum_vrrp::wire::{self, ChecksumForm, Family, Packet, check_received_ipv4};

/// One-way delay of the simulated link.
const LATENCY: Duration = Duration::from_millis(1);
const VRID: u8 = 51;
const VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 100));
/// Every router here advertises once a second.
const INTERVAL_CS: u16 = 100;

/// Marsaglia's xorshift64: deterministic, and plenty to pick losses and partitions.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        // Zero is the one state xorshift never leaves.
        Self(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    fn percent(&mut self, chance: u64) -> bool {
        self.below(100) < chance
    }
}

struct Node {
    router: Router,
    /// Down nodes neither send nor receive: crashed, shut down, or not started.
    up: bool,
    /// Nodes hear each other only within the same segment.
    segment: u64,
    /// Tracked from AddVips/RemoveVips, to check the actions agree with the state.
    holds_vips: bool,
    last_advert_sent: Option<Timestamp>,
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    deliver_at: Timestamp,
    /// Keeps delivery in send order when times are equal.
    sequence: u64,
    to: usize,
    datagram: Vec<u8>,
}

struct Lan {
    now: Timestamp,
    nodes: Vec<Node>,
    in_flight: BinaryHeap<Reverse<InFlight>>,
    sequence: u64,
    rng: XorShift,
    loss_percent: u64,
    /// The set of masters after each instant at which it changed.
    masters_timeline: Vec<(Timestamp, Vec<usize>)>,
    /// Every state change: when, which node, and to what.
    transitions: Vec<(Timestamp, usize, State)>,
}

impl Lan {
    fn new(seed: u64) -> Self {
        Self {
            now: Timestamp::ZERO,
            nodes: Vec::new(),
            in_flight: BinaryHeap::new(),
            sequence: 0,
            rng: XorShift::new(seed),
            loss_percent: 0,
            masters_timeline: vec![(Timestamp::ZERO, Vec::new())],
            transitions: Vec::new(),
        }
    }

    /// Adds a router, not yet started, on 198.18.0.11 upward.
    fn add(&mut self, priority: u8, edit: impl FnOnce(&mut InstanceConfig)) -> usize {
        let index = self.nodes.len();
        let address = IpAddr::from([198, 18, 0, 11 + u8::try_from(index).unwrap()]);
        let mut config =
            InstanceConfig { priority, ..InstanceConfig::new(VRID, address, vec![VIP]) };
        edit(&mut config);
        self.nodes.push(Node {
            router: Router::new(config).unwrap(),
            up: false,
            segment: 0,
            holds_vips: false,
            last_advert_sent: None,
        });
        index
    }

    fn start(&mut self, node: usize) {
        self.nodes[node].up = true;
        self.nodes[node].router.handle_startup(self.now);
        self.drain(node);
        self.record_masters();
    }

    /// The node stops dead: no goodbye, and its addresses go with it.
    fn crash(&mut self, node: usize) {
        self.nodes[node].up = false;
        self.nodes[node].holds_vips = false;
        self.record_masters();
    }

    /// A planned stop: the router steps down first.
    fn shutdown(&mut self, node: usize) {
        self.nodes[node].router.handle_shutdown();
        self.drain(node);
        self.nodes[node].up = false;
        self.record_masters();
    }

    fn run_for(&mut self, duration: Duration) {
        let end = self.now + duration;
        loop {
            let next_timer = self
                .nodes
                .iter()
                .filter(|node| node.up)
                .filter_map(|node| node.router.poll_timeout())
                .min();
            let next_delivery = self.in_flight.peek().map(|Reverse(message)| message.deliver_at);
            match next_timer.into_iter().chain(next_delivery).min() {
                Some(next) if next <= end => self.now = next,
                _ => break,
            }
            while self
                .in_flight
                .peek()
                .is_some_and(|Reverse(message)| message.deliver_at <= self.now)
            {
                let Reverse(message) = self.in_flight.pop().unwrap();
                self.deliver(message);
            }
            for node in 0..self.nodes.len() {
                let due = self.nodes[node].router.poll_timeout().is_some_and(|at| at <= self.now);
                if self.nodes[node].up && due {
                    self.nodes[node].router.handle_timeout(self.now);
                    self.drain(node);
                }
            }
            self.record_masters();
        }
        self.now = end;
    }

    fn deliver(&mut self, message: InFlight) {
        let node = &mut self.nodes[message.to];
        if !node.up {
            return;
        }
        let received = check_received_ipv4(&message.datagram, |vrid| {
            (vrid == VRID).then(|| node.router.local_vrid())
        })
        .unwrap();
        assert!(received.addresses_match);
        node.router.handle_advert(self.now, received.src, &received.advertisement);
        self.drain(message.to);
    }

    /// Carries out the node's actions, checking they agree with its state.
    fn drain(&mut self, node: usize) {
        while let Some(action) = self.nodes[node].router.poll_action() {
            match action {
                Action::SendAdvert { priority } => self.multicast(node, priority),
                Action::AddVips => {
                    assert!(!self.nodes[node].holds_vips, "node {node} added its VIPs twice");
                    self.nodes[node].holds_vips = true;
                }
                Action::RemoveVips => {
                    assert!(self.nodes[node].holds_vips, "node {node} removed VIPs it lacked");
                    self.nodes[node].holds_vips = false;
                }
                Action::SendGratuitousArp => {
                    assert!(self.nodes[node].holds_vips, "node {node} announced VIPs it lacks");
                }
                Action::StateChanged { to, .. } => self.transitions.push((self.now, node, to)),
            }
        }
        let node = &self.nodes[node];
        assert_eq!(node.holds_vips, node.router.state() == State::Master);
    }

    fn multicast(&mut self, from: usize, priority: u8) {
        let router = &self.nodes[from].router;
        let advertisement = router.advertisement(priority);
        let src = router.config().primary_address;
        let mut vrrp = vec![0; advertisement.buffer_len()];
        let mut packet = Packet::new_unchecked(&mut vrrp, Family::Ipv4);
        advertisement
            .emit(&mut packet, src, Family::Ipv4.multicast_group(), ChecksumForm::PseudoHeader)
            .unwrap();
        let datagram = ipv4_datagram(src, &vrrp);
        self.nodes[from].last_advert_sent = Some(self.now);
        for to in 0..self.nodes.len() {
            let same_segment = self.nodes[to].segment == self.nodes[from].segment;
            if to != from && same_segment && !self.rng.percent(self.loss_percent) {
                self.sequence += 1;
                self.in_flight.push(Reverse(InFlight {
                    deliver_at: self.now + LATENCY,
                    sequence: self.sequence,
                    to,
                    datagram: datagram.clone(),
                }));
            }
        }
    }

    fn masters(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&node| self.nodes[node].up && self.nodes[node].router.state() == State::Master)
            .collect()
    }

    fn record_masters(&mut self) {
        let masters = self.masters();
        let (last_at, last) = self.masters_timeline.last_mut().unwrap();
        if *last_at == self.now {
            *last = masters;
        } else if *last != masters {
            self.masters_timeline.push((self.now, masters));
        }
    }

    /// Every set of masters that held at some instant in `[from, to]`.
    fn master_sets_between(&self, from: Timestamp, to: Timestamp) -> Vec<&[usize]> {
        let timeline = &self.masters_timeline;
        (0..timeline.len())
            .filter(|&i| {
                let ends = timeline.get(i + 1).map(|(at, _)| *at);
                timeline[i].0 <= to && ends.is_none_or(|end| end > from)
            })
            .map(|i| timeline[i].1.as_slice())
            .collect()
    }

    fn most_masters_between(&self, from: Timestamp, to: Timestamp) -> usize {
        self.master_sets_between(from, to).iter().map(|masters| masters.len()).max().unwrap()
    }

    /// When `node` first became master at or after `since`.
    fn became_master(&self, node: usize, since: Timestamp) -> Option<Timestamp> {
        self.transitions
            .iter()
            .find(|&&(at, who, to)| at >= since && who == node && to == State::Master)
            .map(|&(at, ..)| at)
    }

    fn transitions_since(&self, since: Timestamp) -> usize {
        self.transitions.iter().filter(|(at, ..)| *at >= since).count()
    }
}

/// The IPv4 header the receiving kernel hands to a raw socket, in front of `payload`.
fn ipv4_datagram(src: IpAddr, payload: &[u8]) -> Vec<u8> {
    let IpAddr::V4(src) = src else { panic!("{src} is not IPv4") };
    let total = u16::try_from(20 + payload.len()).unwrap();
    let mut datagram = vec![0x45, 0xc0];
    datagram.extend_from_slice(&total.to_be_bytes());
    datagram.extend_from_slice(&[0, 0, 0, 0, wire::TTL, wire::IP_PROTOCOL, 0, 0]);
    datagram.extend_from_slice(&src.octets());
    datagram.extend_from_slice(&wire::MULTICAST_GROUP.octets());
    datagram.extend_from_slice(payload);
    datagram
}

fn seconds(seconds: u64) -> Duration {
    Duration::from_secs(seconds)
}

/// Priorities 100, 150 and 200, started a few milliseconds apart and given time to settle.
fn three_routers() -> (Lan, [usize; 3]) {
    let mut lan = Lan::new(1);
    let nodes = [lan.add(100, |_| {}), lan.add(150, |_| {}), lan.add(200, |_| {})];
    for node in nodes {
        lan.start(node);
        lan.run_for(Duration::from_millis(7));
    }
    lan.run_for(seconds(20));
    (lan, nodes)
}

/// A master of priority 100 that has held the link for 10 s, then a newcomer of priority 200
/// (configured by `edit`) that starts at the returned time; the LAN has run `then` after that.
fn newcomer_joins(
    edit: impl FnOnce(&mut InstanceConfig),
    then: Duration,
) -> (Lan, usize, usize, Timestamp) {
    let mut lan = Lan::new(1);
    let incumbent = lan.add(100, |_| {});
    let newcomer = lan.add(200, edit);
    lan.start(incumbent);
    lan.run_for(seconds(10));
    let joined = lan.now;
    lan.start(newcomer);
    lan.run_for(then);
    (lan, incumbent, newcomer, joined)
}

#[test]
fn election_settles_on_the_highest_priority_and_holds() {
    let (mut lan, [_, _, high]) = three_routers();
    lan.run_for(seconds(120));
    // Backups time out in priority order, so there was never a second master.
    assert_eq!(lan.most_masters_between(Timestamp::ZERO, lan.now), 1);
    let settled = Timestamp::ZERO + Duration::from_millis(14) + master_down_interval(200, 100);
    assert_eq!(lan.master_sets_between(settled + LATENCY, lan.now), [[high]]);
}

#[test]
fn partitions_heal_to_one_master_within_master_down_interval() {
    let mut seeds_with_split_brain = 0;
    for seed in 1..=40 {
        let mut lan = Lan::new(seed);
        let count = 2 + lan.rng.below(4);
        let mut lowest_priority = u8::MAX;
        for _ in 0..count {
            let priority = u8::try_from(1 + lan.rng.below(254)).unwrap();
            let preempt = lan.rng.percent(50);
            lowest_priority = lowest_priority.min(priority);
            lan.add(priority, |config| config.preempt = preempt);
        }
        for node in 0..lan.nodes.len() {
            lan.start(node);
            let stagger = Duration::from_millis(lan.rng.below(3_000));
            lan.run_for(stagger);
        }
        // A minute of lossy links and shifting partitions.
        lan.loss_percent = 20;
        let chaos = lan.now;
        for _ in 0..12 {
            for node in 0..lan.nodes.len() {
                lan.nodes[node].segment = lan.rng.below(3);
            }
            lan.run_for(seconds(5));
        }
        lan.loss_percent = 0;
        for node in &mut lan.nodes {
            node.segment = 0;
        }
        let healed = lan.now;
        if lan.most_masters_between(chaos, healed) > 1 {
            seeds_with_split_brain += 1;
        }
        lan.run_for(seconds(60));

        // The slowest backup's Master_Down_Interval, and one hop for the loser to hear it.
        let settled = healed + master_down_interval(lowest_priority, INTERVAL_CS) + LATENCY;
        let sets = lan.master_sets_between(settled, lan.now);
        assert!(sets.iter().all(|masters| masters.len() == 1), "seed {seed}: {sets:?}");
        assert_eq!(lan.transitions_since(settled + Duration::from_nanos(1)), 0, "seed {seed}");
    }
    // Otherwise the partitions tested nothing.
    assert!(seeds_with_split_brain > 10, "only {seeds_with_split_brain} seeds split");
}

#[test]
fn a_crashed_master_is_replaced_by_the_next_highest_within_master_down_interval() {
    let (mut lan, [low, mid, high]) = three_routers();
    assert_eq!(lan.masters(), [high]);
    let last_heard = lan.nodes[high].last_advert_sent.unwrap() + LATENCY;
    let crashed = lan.now;
    lan.crash(high);
    lan.run_for(seconds(30));

    let takeover = lan.became_master(mid, crashed).unwrap();
    // The backup restarted its timer on the last advertisement it heard.
    assert_eq!(takeover, last_heard + master_down_interval(150, INTERVAL_CS));
    assert!(takeover.saturating_duration_since(crashed) <= master_down_interval(150, INTERVAL_CS));
    assert_eq!(lan.became_master(low, crashed), None);
    assert_eq!(lan.most_masters_between(crashed, lan.now), 1);
    assert_eq!(lan.masters(), [mid]);
}

#[test]
fn without_preemption_a_live_master_is_never_displaced() {
    let (lan, incumbent, newcomer, joined) =
        newcomer_joins(|config| config.preempt = false, seconds(300));

    assert_eq!(lan.master_sets_between(joined, lan.now), [[incumbent]]);
    assert_eq!(lan.became_master(newcomer, joined), None);
}

#[test]
fn with_preemption_a_higher_newcomer_takes_over_after_its_preempt_delay() {
    let preempt_delay = seconds(5);
    let (lan, incumbent, newcomer, joined) =
        newcomer_joins(|config| config.preempt_delay = preempt_delay, seconds(60));

    let takeover = lan.became_master(newcomer, joined).unwrap();
    let mdi = master_down_interval(200, INTERVAL_CS);
    assert!(takeover >= joined + preempt_delay, "took over during its preempt delay");
    assert!(takeover <= joined + preempt_delay + mdi);
    // The old master steps down as soon as it hears the new one.
    let just_before = Timestamp::after_origin(takeover.since_origin() - Duration::from_nanos(1));
    assert_eq!(lan.master_sets_between(joined, just_before), [[incumbent]]);
    assert_eq!(lan.master_sets_between(takeover + LATENCY, lan.now), [[newcomer]]);
}

#[test]
fn with_preemption_and_no_delay_a_higher_newcomer_takes_over_after_master_down_interval() {
    let (lan, _, newcomer, joined) = newcomer_joins(|_| {}, seconds(60));

    let takeover = lan.became_master(newcomer, joined).unwrap();
    assert_eq!(takeover, joined + master_down_interval(200, INTERVAL_CS));
    assert_eq!(lan.most_masters_between(takeover + LATENCY, lan.now), 1);
    assert_eq!(lan.masters(), [newcomer]);
}

#[test]
fn a_master_shutting_down_hands_over_within_skew_time() {
    let (mut lan, [low, mid, high]) = three_routers();
    let stopped = lan.now;
    lan.shutdown(high);
    lan.run_for(seconds(30));

    let takeover = lan.became_master(mid, stopped).unwrap();
    assert_eq!(takeover, stopped + LATENCY + skew_time(150, INTERVAL_CS));
    assert_eq!(lan.became_master(low, stopped), None);
    assert_eq!(lan.most_masters_between(stopped, lan.now), 1);
    assert_eq!(lan.masters(), [mid]);
}

#[test]
fn equal_priorities_started_together_elect_the_higher_address() {
    let mut lan = Lan::new(1);
    let lower = lan.add(100, |_| {});
    let higher = lan.add(100, |_| {});
    lan.start(lower);
    lan.start(higher);
    lan.run_for(seconds(30));

    // Both time out at the same instant; the lower address yields one hop later.
    let both = Timestamp::ZERO + master_down_interval(100, INTERVAL_CS);
    assert_eq!(lan.became_master(lower, Timestamp::ZERO), Some(both));
    assert_eq!(lan.became_master(higher, Timestamp::ZERO), Some(both));
    assert_eq!(lan.master_sets_between(both + LATENCY, lan.now), [[higher]]);
}
