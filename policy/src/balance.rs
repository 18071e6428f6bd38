//! Backend selection for one pool: balancers built from the eligible backends that yield
//! choices in fallback order.
//!
//! Sans-IO: nothing here reads a clock, opens a socket or draws its own randomness. Time comes
//! in as an `Instant` and randomness as a `fastrand::Rng`, so tests replay exact sequences.
//! State that must outlive a configuration change (in-flight counts, smooth weighted round
//! robin's current weights, latency estimates, the round-robin cursor) lives in values the
//! caller keeps per backend or per pool and hands to every [`Balancer`] it builds.
//!
//! Weights are clamped to `1..=MAX_WEIGHT`. The caller leaves weight-0 backends out; one passed
//! in anyway is served as weight 1, so "every member eventually" stays true.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fulcrum_model::validate::MAX_MAGLEV_TABLE_SIZE;
use fulcrum_model::{Algorithm, MAX_WEIGHT};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// Latency assumed for a backend without samples: low, so that new backends get tried.
pub const DEFAULT_RTT: Duration = Duration::from_millis(10);

// Two unrelated seeds give each Maglev member independent offset and skip.
const OFFSET_SEED: u64 = 0x6d61_676c_6576_6f66;
const SKIP_SEED: u64 = 0x736b_6970_7365_6564;

/// Live load of one backend, shared across table rebuilds: the caller keeps one per backend
/// address and hands the same Arc to every Balancer it builds, so weight changes and backend
/// churn do not reset counters.
#[derive(Debug, Default)]
pub struct Load {
    active: AtomicU64,
    /// Smooth weighted round robin's current weight; written only under a balancer's lock.
    current: AtomicI64,
    ewma: Mutex<Option<Ewma>>,
}

/// A peak-EWMA latency estimate and when it was last updated.
#[derive(Clone, Copy, Debug)]
struct Ewma {
    nanos: f64,
    at: Instant,
}

impl Ewma {
    /// The estimate decayed to `now`: without samples it fades toward zero, so a backend that
    /// was slow gets tried again once enough time has passed.
    fn at(&self, now: Instant, decay: Duration) -> f64 {
        self.nanos * decay_weight(now.saturating_duration_since(self.at), decay)
    }
}

/// exp(-elapsed/decay): how much of an old estimate survives `elapsed`.
fn decay_weight(elapsed: Duration, decay: Duration) -> f64 {
    if decay.is_zero() {
        // Validation rejects a zero decay; treat it as keeping no history instead of dividing by 0.
        return 0.0;
    }
    (-(elapsed.as_secs_f64() / decay.as_secs_f64())).exp()
}

impl Load {
    /// Connections or requests in flight.
    pub fn active(&self) -> u64 {
        self.active.load(Relaxed)
    }

    /// Counts one more in flight until the returned guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.active.fetch_add(1, Relaxed);
        InFlight { load: Arc::clone(self) }
    }

    /// Like [`Load::begin`], but only while fewer than `limit` are in flight, so concurrent
    /// callers never exceed a connection limit together.
    pub fn try_begin(self: &Arc<Self>, limit: Option<u32>) -> Option<InFlight> {
        let Some(limit) = limit else {
            return Some(self.begin());
        };
        self.active
            .fetch_update(Relaxed, Relaxed, |active| {
                (active < u64::from(limit)).then_some(active + 1)
            })
            .ok()?;
        Some(InFlight { load: Arc::clone(self) })
    }

    /// Records one latency sample (peak EWMA, as tower's PeakEwma for linkerd does it): a sample
    /// above the stored estimate replaces it at once; a lower one is blended in with weight
    /// 1 - exp(-elapsed/decay), so after a long quiet spell it counts almost alone.
    pub fn observe_latency(&self, now: Instant, latency: Duration, decay: Duration) {
        let sample = latency.as_nanos() as f64;
        let mut ewma = crate::lock(&self.ewma);
        *ewma = Some(match *ewma {
            Some(old) if sample <= old.nanos => {
                let w = decay_weight(now.saturating_duration_since(old.at), decay);
                // Samples may arrive out of order; the clock of the estimate never goes back.
                Ewma { nanos: old.nanos * w + sample * (1.0 - w), at: now.max(old.at) }
            }
            Some(old) => Ewma { nanos: sample, at: now.max(old.at) },
            None => Ewma { nanos: sample, at: now },
        });
    }

    /// The latency estimate decayed to `now`, or None before the first sample.
    pub fn ewma_latency(&self, now: Instant, decay: Duration) -> Option<Duration> {
        let ewma = *crate::lock(&self.ewma);
        // `as` saturates (and maps NaN to 0), so this cannot panic.
        ewma.map(|e| Duration::from_nanos(e.at(now, decay) as u64))
    }

    /// Peak-EWMA cost: estimated latency times (in flight + 1).
    fn cost(&self, now: Instant, decay: Duration) -> u128 {
        let estimate = match *crate::lock(&self.ewma) {
            Some(e) => e.at(now, decay) as u64,
            None => DEFAULT_RTT.as_nanos() as u64,
        };
        // A fully decayed estimate still counts in-flight work, so costs never all tie at zero.
        u128::from(estimate.max(1)) * (u128::from(self.active()) + 1)
    }
}

/// One unit of work in flight on a backend: dropping it ends it.
#[must_use = "the backend counts the work as in flight only while the guard lives"]
#[derive(Debug)]
pub struct InFlight {
    load: Arc<Load>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.load.active.fetch_sub(1, Relaxed);
    }
}

/// One eligible backend as the balancer sees it (the caller leaves out unhealthy, draining,
/// disabled and weight-0 backends before building).
#[derive(Clone, Debug)]
pub struct Member {
    /// Where to connect.
    pub address: SocketAddr,
    /// Relative share, `1..=MAX_WEIGHT` (other values are clamped).
    pub weight: u32,
    /// The backend's live load, shared with every other balancer built over it.
    pub load: Arc<Load>,
}

impl Member {
    fn weight(&self) -> u32 {
        self.weight.clamp(1, MAX_WEIGHT)
    }
}

/// What a pick may be keyed on. `hash_key` is the bytes of the pool's consistent-hash key,
/// already extracted by the caller (source IP octets for L4, a header/cookie/path value for L7);
/// None when the request has no such value (then consistent hashing falls back to source_ip).
#[derive(Clone, Copy, Debug)]
pub struct PickKey<'a> {
    /// The client's address.
    pub source_ip: IpAddr,
    /// The consistent-hash key's bytes, if the request has one.
    pub hash_key: Option<&'a [u8]>,
}

/// The algorithm's state for one pool at one moment: built from the eligible members.
#[derive(Debug)]
pub struct Balancer {
    members: Vec<Member>,
    cursor: Arc<AtomicU64>,
    strategy: Strategy,
}

#[derive(Debug)]
enum Strategy {
    RoundRobin,
    /// The lock makes one pick's add-select-subtract over all members atomic: otherwise two
    /// concurrent picks could select from the same currents and lose the smooth interleaving.
    /// It is held for O(n) arithmetic only, never across an await.
    WeightedRoundRobin {
        lock: Mutex<()>,
        total: i64,
    },
    LeastConnections,
    WeightedLeastConnections,
    Random {
        total: u64,
    },
    PowerOfTwoChoices,
    SourceIpHash,
    ConsistentHash(Arc<Maglev>),
    PeakEwma {
        decay: Duration,
    },
}

impl Balancer {
    /// `cursor` is the pool's round-robin position, kept by the caller across rebuilds.
    pub fn new(algorithm: &Algorithm, members: Vec<Member>, cursor: Arc<AtomicU64>) -> Balancer {
        let total: u64 = members.iter().map(|m| u64::from(m.weight())).sum();
        let strategy = match algorithm {
            Algorithm::RoundRobin => Strategy::RoundRobin,
            Algorithm::WeightedRoundRobin => Strategy::WeightedRoundRobin {
                lock: Mutex::new(()),
                total: i64::try_from(total).unwrap_or(i64::MAX),
            },
            Algorithm::LeastConnections => Strategy::LeastConnections,
            Algorithm::WeightedLeastConnections => Strategy::WeightedLeastConnections,
            Algorithm::Random => Strategy::Random { total },
            Algorithm::PowerOfTwoChoices => Strategy::PowerOfTwoChoices,
            Algorithm::SourceIpHash => Strategy::SourceIpHash,
            Algorithm::ConsistentHash { table_size, .. } => {
                Strategy::ConsistentHash(Arc::new(Maglev::build(&members, *table_size)))
            }
            Algorithm::PeakEwma { decay } => Strategy::PeakEwma { decay: *decay },
        };
        Balancer { members, cursor, strategy }
    }

    /// The members, in the order the caller gave them; choices are indices into this.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Member indices in the order to try them: the algorithm's pick first, then fallbacks,
    /// each index at most once, every member eventually. Empty when there are no members.
    pub fn choices(&self, key: &PickKey<'_>, now: Instant, rng: &mut fastrand::Rng) -> Choices {
        let n = self.members.len();
        if n == 0 {
            return Choices::walk(0, None, 0);
        }
        match &self.strategy {
            Strategy::RoundRobin => Choices::walk(self.turn(n), None, n),
            Strategy::WeightedRoundRobin { lock, total } => {
                Choices::walk(self.smooth_pick(lock, *total), None, n)
            }
            Strategy::LeastConnections => self.ranked(|m| (u128::from(m.load.active()), 1)),
            Strategy::WeightedLeastConnections => self.ranked(relative_load),
            Strategy::Random { total } => {
                let mut r = rng.u64(0..(*total).max(1));
                let mut pick = n - 1;
                for (i, m) in self.members.iter().enumerate() {
                    let w = u64::from(m.weight());
                    if r < w {
                        pick = i;
                        break;
                    }
                    r -= w;
                }
                Choices::walk(pick, None, n)
            }
            Strategy::PowerOfTwoChoices => self.two_choices(rng, relative_load),
            Strategy::SourceIpHash => {
                Choices::walk((hash_ip(key.source_ip) % n as u64) as usize, None, n)
            }
            Strategy::ConsistentHash(maglev) => {
                let hash = match key.hash_key {
                    Some(bytes) => xxh3_64(bytes),
                    None => hash_ip(key.source_ip),
                };
                Maglev::choices(maglev, hash, n)
            }
            Strategy::PeakEwma { decay } => {
                self.two_choices(rng, |m| (m.load.cost(now, *decay), 1))
            }
        }
    }

    /// The next round-robin position in `0..n`.
    fn turn(&self, n: usize) -> usize {
        (self.cursor.fetch_add(1, Relaxed) % n as u64) as usize
    }

    /// nginx's smooth weighted round robin over the currents kept in each member's Load.
    fn smooth_pick(&self, lock: &Mutex<()>, total: i64) -> usize {
        let _held = crate::lock(lock);
        let mut best = (0, i64::MIN);
        for (i, m) in self.members.iter().enumerate() {
            // Clamping bounds what a stale current (from before a weight change, or a pick on
            // the balancer this one replaced) can do: at most one cycle's worth of burst.
            let current = m.load.current.load(Relaxed).clamp(-total, total) + i64::from(m.weight());
            m.load.current.store(current, Relaxed);
            if current > best.1 {
                best = (i, current);
            }
        }
        self.members[best.0].load.current.fetch_sub(total, Relaxed);
        best.0
    }

    /// All members ordered by `cost` (a fraction), ties rotated by the cursor so they spread.
    fn ranked(&self, cost: impl Fn(&Member) -> (u128, u128)) -> Choices {
        let n = self.members.len();
        let offset = self.turn(n);
        let ranks = self.members.iter().enumerate().map(|(index, m)| {
            let (num, den) = cost(m);
            Rank { num, den, tie: (index + n - offset) % n, index }
        });
        Choices { inner: Inner::Ranked(ranks.collect()) }
    }

    /// Two distinct random members, the cheaper first, then the other, then the rest.
    fn two_choices(
        &self,
        rng: &mut fastrand::Rng,
        cost: impl Fn(&Member) -> (u128, u128),
    ) -> Choices {
        let n = self.members.len();
        let a = rng.usize(0..n);
        if n == 1 {
            return Choices::walk(a, None, n);
        }
        let mut b = rng.usize(0..n - 1);
        if b >= a {
            b += 1;
        }
        let (ca, cb) = (cost(&self.members[a]), cost(&self.members[b]));
        if less(cb, ca) { Choices::walk(b, Some(a), n) } else { Choices::walk(a, Some(b), n) }
    }
}

/// In flight relative to weight, as (active + 1) / weight: the + 1 (as HAProxy does) lets
/// weights count even when every member is idle.
fn relative_load(m: &Member) -> (u128, u128) {
    (u128::from(m.load.active()) + 1, u128::from(m.weight()))
}

/// a.0/a.1 < b.0/b.1, cross-multiplied (no floats; operands stay far below overflow).
fn less(a: (u128, u128), b: (u128, u128)) -> bool {
    a.0.saturating_mul(b.1) < b.0.saturating_mul(a.1)
}

fn hash_ip(ip: IpAddr) -> u64 {
    // Canonical form: a client seen as ::ffff:a.b.c.d on a dual-stack socket hashes as a.b.c.d.
    match ip.to_canonical() {
        IpAddr::V4(v4) => xxh3_64(&v4.octets()),
        IpAddr::V6(v6) => xxh3_64(&v6.octets()),
    }
}

/// A weighted Maglev lookup table (Eisenbud et al. 2016, §3.4): slot → member index.
struct Maglev {
    table: Vec<u32>,
}

impl fmt::Debug for Maglev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Maglev").field("table_size", &self.table.len()).finish()
    }
}

impl Maglev {
    fn build(members: &[Member], table_size: u32) -> Maglev {
        let n = members.len();
        if n == 0 {
            return Maglev { table: Vec::new() };
        }
        let size = maglev_size(table_size, n);
        // Populate in address order: every node then builds the same table whatever order
        // its members came in, so a VIP moving to another node keeps clients on their backends.
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| members[i].address);
        let mut turns: Vec<Turn> = order
            .into_iter()
            .map(|i| {
                let name = members[i].address.to_string();
                Turn {
                    index: i as u32,
                    slot: xxh3_64_with_seed(name.as_bytes(), OFFSET_SEED) % size,
                    skip: xxh3_64_with_seed(name.as_bytes(), SKIP_SEED) % (size - 1) + 1,
                    weight: u64::from(members[i].weight()),
                    target: 0,
                }
            })
            .collect();
        let max_weight = turns.iter().map(|t| t.weight).max().unwrap_or(1);
        let mut table = vec![u32::MAX; size as usize];
        let mut filled = 0;
        let mut iteration: u64 = 0;
        'fill: loop {
            for turn in &mut turns {
                // Weighted turns as Envoy does them: a member of weight w takes w turns in every
                // max_weight rounds. Every member takes a turn in round 0, and size >= n, so
                // each gets at least one slot.
                if iteration * turn.weight < turn.target {
                    continue;
                }
                turn.target += max_weight;
                // size is prime and 0 < skip < size, so this walks every slot: an empty one is
                // found within size steps while the table is not full.
                while table[turn.slot as usize] != u32::MAX {
                    turn.slot = (turn.slot + turn.skip) % size;
                }
                table[turn.slot as usize] = turn.index;
                filled += 1;
                if filled == size {
                    break 'fill;
                }
            }
            iteration += 1;
        }
        Maglev { table }
    }

    fn choices(this: &Arc<Maglev>, hash: u64, n: usize) -> Choices {
        let start = (hash % this.table.len() as u64) as usize;
        Choices {
            inner: Inner::Maglev {
                table: Arc::clone(this),
                start,
                scanned: 0,
                seen: Vec::new(),
                yielded: 0,
                tail: 0,
                n,
            },
        }
    }
}

/// One member's place in the Maglev permutation while the table is filled.
struct Turn {
    index: u32,
    slot: u64,
    skip: u64,
    weight: u64,
    target: u64,
}

/// The table size to use: the requested one if it is a prime of at least one slot per member
/// (the model guarantees this), otherwise the next prime that is, never above the model's
/// largest unless the members need it.
fn maglev_size(requested: u32, members: usize) -> u64 {
    let n = members as u64;
    let requested = u64::from(requested);
    let wanted = if requested >= n {
        requested.min(u64::from(MAX_MAGLEV_TABLE_SIZE))
    } else {
        n.saturating_mul(7)
    };
    let mut size = wanted.max(n).max(2);
    while !is_prime(size) {
        size += 1;
    }
    size
}

fn is_prime(x: u64) -> bool {
    x >= 2 && (2..).take_while(|d| d * d <= x).all(|d| !x.is_multiple_of(d))
}

/// A member's place in a least-loaded order: cost num/den, then the rotated tie-break.
#[derive(Debug)]
struct Rank {
    num: u128,
    den: u128,
    tie: usize,
    index: usize,
}

impl Rank {
    fn before(&self, other: &Rank) -> bool {
        let (a, b) = (self.num.saturating_mul(other.den), other.num.saturating_mul(self.den));
        a < b || (a == b && self.tie < other.tie)
    }
}

/// Sets member `i`'s bit; true if it was not yet set.
fn mark(seen: &mut [u64], i: usize) -> bool {
    let bit = 1u64 << (i % 64);
    match seen.get_mut(i / 64) {
        Some(word) if *word & bit == 0 => {
            *word |= bit;
            true
        }
        _ => false,
    }
}

/// Member indices in the order to try them; see [`Balancer::choices`].
#[derive(Debug)]
pub struct Choices {
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    /// `first`, then `second` if any, then every other index after `first`, modulo n.
    Walk { first: usize, second: Option<usize>, second_done: bool, step: usize, n: usize },
    /// A cost snapshot taken at pick time; each item is a selection over what remains, so
    /// consuming k items costs O(k·n) and the usual 1–3 never sort the whole list.
    Ranked(Vec<Rank>),
    /// The key's slot, then onward through the table for unseen members, then any left over.
    Maglev {
        table: Arc<Maglev>,
        start: usize,
        scanned: usize,
        /// Bitset of yielded members, allocated only if a fallback is asked for.
        seen: Vec<u64>,
        yielded: usize,
        tail: usize,
        n: usize,
    },
}

impl Choices {
    fn walk(first: usize, second: Option<usize>, n: usize) -> Choices {
        Choices { inner: Inner::Walk { first, second, second_done: false, step: 0, n } }
    }
}

impl Iterator for Choices {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        match &mut self.inner {
            Inner::Walk { first, second, second_done, step, n } => {
                if *step == 0 {
                    *step = 1;
                    return (*n > 0).then_some(*first);
                }
                if !*second_done {
                    *second_done = true;
                    if second.is_some() {
                        return *second;
                    }
                }
                while *step < *n {
                    let i = (*first + *step) % *n;
                    *step += 1;
                    if Some(i) != *second {
                        return Some(i);
                    }
                }
                None
            }
            Inner::Ranked(ranks) => {
                let mut best = 0;
                for (i, rank) in ranks.iter().enumerate().skip(1) {
                    if rank.before(&ranks[best]) {
                        best = i;
                    }
                }
                (!ranks.is_empty()).then(|| ranks.swap_remove(best).index)
            }
            Inner::Maglev { table, start, scanned, seen, yielded, tail, n } => {
                let table = &table.table;
                if *yielded == 0 {
                    *scanned = 1;
                    *yielded = 1;
                    return table.get(*start).map(|&i| i as usize);
                }
                if seen.is_empty() {
                    seen.resize(n.div_ceil(64), 0);
                    mark(seen, table.get(*start).map_or(usize::MAX, |&i| i as usize));
                }
                if *yielded >= *n {
                    return None;
                }
                while *scanned < table.len() {
                    let i = table[(*start + *scanned) % table.len()] as usize;
                    *scanned += 1;
                    if mark(seen, i) {
                        *yielded += 1;
                        return Some(i);
                    }
                }
                while *tail < *n {
                    let i = *tail;
                    *tail += 1;
                    if mark(seen, i) {
                        *yielded += 1;
                        return Some(i);
                    }
                }
                None
            }
        }
    }
}

#[cfg(test)]
#[allow(
    clippy::disallowed_methods,
    reason = "tests take an arbitrary origin for their explicit times"
)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use fulcrum_model::HashKey;

    use super::*;

    fn addr(i: usize) -> SocketAddr {
        SocketAddr::from(([10, 0, (i / 256) as u8, (i % 256) as u8], 8080))
    }

    fn members(weights: &[u32]) -> Vec<Member> {
        let member = |(i, &weight)| Member { address: addr(i), weight, load: Arc::default() };
        weights.iter().enumerate().map(member).collect()
    }

    fn build(algorithm: &Algorithm, members: Vec<Member>) -> Balancer {
        Balancer::new(algorithm, members, Arc::new(AtomicU64::new(0)))
    }

    fn maglev() -> Algorithm {
        Algorithm::ConsistentHash { key: HashKey::Header("x-user".into()), table_size: 65_537 }
    }

    const DECAY: Duration = Duration::from_secs(10);

    fn all() -> Vec<Algorithm> {
        vec![
            Algorithm::RoundRobin,
            Algorithm::WeightedRoundRobin,
            Algorithm::LeastConnections,
            Algorithm::WeightedLeastConnections,
            Algorithm::Random,
            Algorithm::PowerOfTwoChoices,
            Algorithm::SourceIpHash,
            maglev(),
            Algorithm::PeakEwma { decay: DECAY },
        ]
    }

    fn key(ip: [u8; 4]) -> PickKey<'static> {
        PickKey { source_ip: IpAddr::from(ip), hash_key: None }
    }

    fn first(b: &Balancer, key: &PickKey<'_>, now: Instant, rng: &mut fastrand::Rng) -> usize {
        b.choices(key, now, rng).next().expect("members present")
    }

    /// The first choice for a fixed client.
    fn pick(b: &Balancer, now: Instant, rng: &mut fastrand::Rng) -> usize {
        first(b, &key([1; 4]), now, rng)
    }

    fn order(b: &Balancer, now: Instant, rng: &mut fastrand::Rng) -> Vec<usize> {
        b.choices(&key([1; 4]), now, rng).collect()
    }

    /// Counts of first picks over `picks` calls with varying source IPs.
    fn spread(b: &Balancer, picks: u32, rng: &mut fastrand::Rng) -> Vec<u32> {
        let now = Instant::now();
        let mut counts = vec![0; b.members().len()];
        for i in 0..picks {
            counts[first(b, &key(i.to_be_bytes()), now, rng)] += 1;
        }
        counts
    }

    fn assert_near(counts: &[u32], expected: &[f64], tolerance: f64) {
        for (c, e) in counts.iter().zip(expected) {
            assert!((f64::from(*c) - e).abs() <= e * tolerance, "{counts:?} vs {expected:?}");
        }
    }

    #[test]
    fn balancer_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Balancer>();
        check::<Choices>();
    }

    #[test]
    fn no_members_no_choices() {
        let mut rng = fastrand::Rng::with_seed(1);
        for algorithm in all() {
            let b = build(&algorithm, Vec::new());
            assert_eq!(
                b.choices(&key([1, 2, 3, 4]), Instant::now(), &mut rng).count(),
                0,
                "{algorithm:?}"
            );
        }
    }

    #[test]
    fn every_member_once_in_fallback_order() {
        let mut rng = fastrand::Rng::with_seed(2);
        let now = Instant::now();
        for algorithm in all() {
            for n in [1, 2, 3, 7, 70] {
                // Weight 0 and above MAX_WEIGHT are clamped, not rejected.
                let weights: Vec<u32> =
                    (0..n).map(|i| [0, 1, 5, MAX_WEIGHT, u32::MAX][i % 5]).collect();
                let ms = members(&weights);
                let guards: Vec<InFlight> = ms
                    .iter()
                    .enumerate()
                    .flat_map(|(i, m)| (0..i % 4).map(|_| m.load.begin()))
                    .collect();
                ms[0].load.observe_latency(now, Duration::from_millis(3), DECAY);
                let b = build(&algorithm, ms);
                for round in 0..20u8 {
                    let bytes = [round, 7];
                    let k = PickKey {
                        source_ip: IpAddr::from([round, 1, 2, 3]),
                        hash_key: (round % 2 == 0).then_some(&bytes[..]),
                    };
                    let mut order: Vec<usize> = b.choices(&k, now, &mut rng).collect();
                    order.sort_unstable();
                    assert_eq!(order, (0..n).collect::<Vec<_>>(), "{algorithm:?} n={n}");
                }
                drop(guards);
            }
        }
    }

    #[test]
    fn round_robin_cycles_and_continues_after_rebuild() {
        let mut rng = fastrand::Rng::with_seed(3);
        let now = Instant::now();
        let cursor = Arc::new(AtomicU64::new(0));
        let b = Balancer::new(&Algorithm::RoundRobin, members(&[1, 1, 1]), Arc::clone(&cursor));
        let picks: Vec<usize> = (0..5).map(|_| pick(&b, now, &mut rng)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1]);
        assert_eq!(order(&b, now, &mut rng), [2, 0, 1]);
        // Six picks so far: a rebuild over four members continues at 6 % 4, not at member 0.
        let b = Balancer::new(&Algorithm::RoundRobin, members(&[1; 4]), cursor);
        let picks: Vec<usize> = (0..4).map(|_| pick(&b, now, &mut rng)).collect();
        assert_eq!(picks, [2, 3, 0, 1]);
        assert_eq!(spread(&b, 10_000, &mut rng), [2500; 4]);
    }

    fn swrr_picks(b: &Balancer, count: usize) -> String {
        let mut rng = fastrand::Rng::with_seed(0);
        (0..count).map(|_| char::from(b'a' + pick(b, Instant::now(), &mut rng) as u8)).collect()
    }

    #[test]
    fn smooth_weighted_round_robin_matches_nginx() {
        let b = build(&Algorithm::WeightedRoundRobin, members(&[5, 1, 1]));
        assert_eq!(swrr_picks(&b, 14), "aabacaaaabacaa");
    }

    #[test]
    fn smooth_weighted_round_robin_matches_reference() {
        let mut rng = fastrand::Rng::with_seed(4);
        for _ in 0..50 {
            let weights: Vec<u32> = (0..rng.usize(1..8)).map(|_| rng.u32(1..=20)).collect();
            let b = build(&Algorithm::WeightedRoundRobin, members(&weights));
            let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
            let mut current = vec![0i64; weights.len()];
            for _ in 0..200 {
                for (c, w) in current.iter_mut().zip(&weights) {
                    *c += i64::from(*w);
                }
                let best = (0..weights.len())
                    .fold(0, |best, i| if current[i] > current[best] { i } else { best });
                current[best] -= total;
                assert_eq!(pick(&b, Instant::now(), &mut rng), best, "{weights:?}");
            }
        }
    }

    #[test]
    fn smooth_weighted_round_robin_follows_weight_changes() {
        let ms = members(&[5, 1, 1]);
        let b = build(&Algorithm::WeightedRoundRobin, ms.clone());
        assert_eq!(swrr_picks(&b, 7), "aabacaa");
        // A full cycle leaves every current at 0: new weights start their own exact sequence.
        let mut changed = ms.clone();
        changed[0].weight = 1;
        changed[2].weight = 2;
        let b = build(&Algorithm::WeightedRoundRobin, changed.clone());
        assert_eq!(swrr_picks(&b, 8), "cabccabc");
        // Mid-cycle changes and a member leaving still converge on the new shares.
        let b = build(&Algorithm::WeightedRoundRobin, ms.clone());
        swrr_picks(&b, 3);
        let b = build(&Algorithm::WeightedRoundRobin, changed[..2].to_vec());
        let picks = swrr_picks(&b, 1000);
        let a = picks.matches('a').count();
        assert!((499..=501).contains(&a), "{a}");
        let b = build(&Algorithm::WeightedRoundRobin, members(&[3, 2, 1]));
        let counts = spread(&b, 6000, &mut fastrand::Rng::with_seed(5));
        assert_eq!(counts, [3000, 2000, 1000]);
    }

    #[test]
    fn least_connections_follows_in_flight_guards() {
        let mut rng = fastrand::Rng::with_seed(6);
        let now = Instant::now();
        let ms = members(&[1, 1, 1]);
        let b = build(&Algorithm::LeastConnections, ms.clone());
        // Idle ties rotate, so sequential picks spread evenly.
        assert_eq!(spread(&b, 9000, &mut rng), [3000; 3]);
        let mut guards: Vec<Vec<InFlight>> = vec![Vec::new(), Vec::new(), Vec::new()];
        for _ in 0..30 {
            let i = pick(&b, now, &mut rng);
            guards[i].push(ms[i].load.begin());
        }
        assert_eq!(ms.iter().map(|m| m.load.active()).collect::<Vec<_>>(), [10, 10, 10]);
        guards[1].truncate(7);
        guards[2].truncate(4);
        assert_eq!(order(&b, now, &mut rng), [2, 1, 0]);
        // A rebuild over the same loads (plus a newcomer) sees the same counts.
        let mut more = ms.clone();
        more.extend(members(&[1]).into_iter().map(|m| Member { address: addr(9), ..m }));
        let b = build(&Algorithm::LeastConnections, more);
        assert_eq!(order(&b, now, &mut rng), [3, 2, 1, 0]);
        drop(guards);
        assert_eq!(ms.iter().map(|m| m.load.active()).sum::<u64>(), 0);
    }

    #[test]
    fn weighted_least_connections_spreads_by_weight() {
        let mut rng = fastrand::Rng::with_seed(7);
        let now = Instant::now();
        let ms = members(&[3, 1, 0]);
        let b = build(&Algorithm::WeightedLeastConnections, ms.clone());
        let mut guards = Vec::new();
        for _ in 0..50 {
            let i = pick(&b, now, &mut rng);
            guards.push(ms[i].load.begin());
        }
        // Weight 0 is served as weight 1.
        assert_eq!(ms.iter().map(|m| m.load.active()).collect::<Vec<_>>(), [30, 10, 10]);
        guards.clear();
        let held: Vec<InFlight> =
            (0..5).map(|_| ms[0].load.begin()).chain([ms[1].load.begin()]).collect();
        // (5+1)/3 = 2 vs (1+1)/1 = 2 vs (0+1)/1 = 1.
        assert_eq!(b.choices(&key([1; 4]), now, &mut rng).next(), Some(2));
        drop(held);
    }

    #[test]
    fn random_is_weighted() {
        let b = build(&Algorithm::Random, members(&[1, 2, 3, 4]));
        let counts = spread(&b, 10_000, &mut fastrand::Rng::with_seed(8));
        assert_near(&counts, &[1000.0, 2000.0, 3000.0, 4000.0], 0.1);
    }

    #[test]
    fn power_of_two_choices_avoids_loaded_member() {
        let mut rng = fastrand::Rng::with_seed(9);
        let ms = members(&[1, 1, 1, 1]);
        let b = build(&Algorithm::PowerOfTwoChoices, ms.clone());
        assert_near(&spread(&b, 10_000, &mut rng), &[2500.0; 4], 0.1);
        let held: Vec<InFlight> = (0..100).map(|_| ms[0].load.begin()).collect();
        let counts = spread(&b, 10_000, &mut rng);
        assert_eq!(counts[0], 0, "{counts:?}");
        assert_near(&counts[1..], &[3333.0; 3], 0.1);
        drop(held);
    }

    #[test]
    fn source_ip_hash_is_sticky_and_spread() {
        let mut rng = fastrand::Rng::with_seed(10);
        let now = Instant::now();
        let b = build(&Algorithm::SourceIpHash, members(&[1; 5]));
        let counts = spread(&b, 10_000, &mut rng);
        assert_near(&counts, &[2000.0; 5], 0.1);
        let client = Ipv4Addr::new(192, 0, 2, 7);
        let pick = first(&b, &key(client.octets()), now, &mut rng);
        for _ in 0..20 {
            assert_eq!(first(&b, &key(client.octets()), now, &mut rng), pick);
        }
        // The same client through a dual-stack socket lands on the same member.
        let mapped = PickKey { source_ip: IpAddr::V6(client.to_ipv6_mapped()), hash_key: None };
        assert_eq!(first(&b, &mapped, now, &mut rng), pick);
        let v6 = PickKey { source_ip: IpAddr::V6(Ipv6Addr::LOCALHOST), hash_key: None };
        assert!(first(&b, &v6, now, &mut rng) < 5);
    }

    /// Which address each of `keys` hashes to first.
    fn maglev_owners(ms: Vec<Member>, keys: u32) -> Vec<SocketAddr> {
        let b = build(&maglev(), ms);
        let mut rng = fastrand::Rng::with_seed(11);
        (0..keys)
            .map(|k| {
                let bytes = format!("user-{k}");
                let pick =
                    PickKey { source_ip: IpAddr::from([0; 4]), hash_key: Some(bytes.as_bytes()) };
                b.members()[first(&b, &pick, Instant::now(), &mut rng)].address
            })
            .collect()
    }

    #[test]
    fn maglev_spreads_by_weight() {
        let owners = maglev_owners(members(&[1; 10]), 10_000);
        let counts: Vec<u32> =
            (0..10).map(|i| owners.iter().filter(|&&a| a == addr(i)).count() as u32).collect();
        assert_near(&counts, &[1000.0; 10], 0.25);
        let b = build(&maglev(), members(&[1, 3]));
        let Strategy::ConsistentHash(m) = &b.strategy else { panic!("maglev") };
        let heavy = m.table.iter().filter(|&&i| i == 1).count() as f64 / m.table.len() as f64;
        assert!((heavy - 0.75).abs() < 0.01, "{heavy}");
    }

    #[test]
    fn maglev_moves_few_keys() {
        const K: u32 = 10_000;
        let ten = members(&[1; 10]);
        let before = maglev_owners(ten.clone(), K);
        // The table does not depend on the order members are listed in.
        let mut reversed = ten.clone();
        reversed.reverse();
        assert_eq!(maglev_owners(reversed, K), before);

        let gone = addr(4);
        let nine: Vec<Member> = ten.iter().filter(|m| m.address != gone).cloned().collect();
        let after = maglev_owners(nine, K);
        let stray = before.iter().zip(&after).filter(|(b, a)| b != a && **b != gone).count();
        assert!(stray <= K as usize / 100, "{stray} keys moved off surviving members");

        let mut eleven = ten.clone();
        eleven.extend(members(&[1]).into_iter().map(|m| Member { address: addr(10), ..m }));
        let after = maglev_owners(eleven, K);
        let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        let elsewhere =
            before.iter().zip(&after).filter(|(b, a)| b != a && **a != addr(10)).count();
        assert!(moved as f64 <= 1.3 * f64::from(K) / 10.0, "{moved} keys moved");
        assert!(elsewhere <= K as usize / 100, "{elsewhere} keys moved between old members");
    }

    #[test]
    fn maglev_fallbacks_and_odd_table_sizes() {
        let mut rng = fastrand::Rng::with_seed(12);
        let now = Instant::now();
        let b = build(&maglev(), members(&[1; 6]));
        let pick = PickKey { source_ip: IpAddr::from([1; 4]), hash_key: Some(b"alice") };
        let order: Vec<usize> = b.choices(&pick, now, &mut rng).collect();
        assert_eq!(b.choices(&pick, now, &mut rng).collect::<Vec<_>>(), order);
        for table_size in [0, 1, 2, 4, 9, 100, u32::MAX] {
            let algorithm = Algorithm::ConsistentHash { key: HashKey::SourceIp, table_size };
            let b = build(&algorithm, members(&[1; 20]));
            let Strategy::ConsistentHash(m) = &b.strategy else { panic!("maglev") };
            assert!(is_prime(m.table.len() as u64) && m.table.len() >= 20, "{table_size}");
            assert!(m.table.len() <= MAX_MAGLEV_TABLE_SIZE as usize);
            assert_eq!(b.choices(&pick, now, &mut rng).count(), 20);
        }
    }

    #[test]
    fn peak_ewma_prefers_fast_and_recovers() {
        let mut rng = fastrand::Rng::with_seed(13);
        let base = Instant::now();
        let ms = members(&[1, 1]);
        let (slow, fast) = (&ms[0].load, &ms[1].load);
        let algorithm = Algorithm::PeakEwma { decay: DECAY };
        let b = build(&algorithm, ms.clone());
        for s in 0..5 {
            let now = base + Duration::from_secs(s);
            slow.observe_latency(now, Duration::from_millis(50), DECAY);
            fast.observe_latency(now, Duration::from_millis(5), DECAY);
        }
        let at = |s: u64| base + Duration::from_secs(s);
        for _ in 0..100 {
            assert_eq!(order(&b, at(5), &mut rng), [1, 0]);
        }
        // Only the fast member gets traffic and samples; the slow one's estimate fades.
        for s in 5..40 {
            fast.observe_latency(at(s), Duration::from_millis(5), DECAY);
        }
        assert!(slow.ewma_latency(at(40), DECAY).expect("sampled") < Duration::from_millis(3));
        assert_eq!(pick(&b, at(40), &mut rng), 0);
        // It recovered: both near 5 ms, so work in flight decides and traffic spreads over both.
        for s in 40..50 {
            slow.observe_latency(at(s), Duration::from_millis(5), DECAY);
            fast.observe_latency(at(s), Duration::from_millis(5), DECAY);
        }
        let held: Vec<InFlight> =
            (0..20).map(|_| ms[pick(&b, at(50), &mut rng)].load.begin()).collect();
        assert!(slow.active() >= 5 && fast.active() >= 5, "{} {}", slow.active(), fast.active());
        drop(held);
        // One slow sample makes it the second choice at once.
        slow.observe_latency(at(50), Duration::from_millis(200), DECAY);
        assert_eq!(order(&b, at(50), &mut rng), [1, 0]);
        // A new member without samples is costed at DEFAULT_RTT: tried before a slow one.
        let newcomer = members(&[1]).remove(0);
        let b = build(&algorithm, vec![ms[0].clone(), newcomer]);
        assert_eq!(pick(&b, at(50), &mut rng), 1);
    }

    #[test]
    fn peak_ewma_peaks_at_once_and_blends_down() {
        let base = Instant::now();
        let load = Load::default();
        assert_eq!(load.ewma_latency(base, DECAY), None);
        load.observe_latency(base, Duration::from_millis(5), DECAY);
        load.observe_latency(base + Duration::from_millis(10), Duration::from_millis(200), DECAY);
        let at = |ms: u64| base + Duration::from_millis(ms);
        assert_eq!(load.ewma_latency(at(10), DECAY), Some(Duration::from_millis(200)));
        // A low sample one decay later keeps exp(-1) of the old estimate.
        load.observe_latency(at(10_010), Duration::from_millis(5), DECAY);
        let expected = 200.0 * (-1f64).exp() + 5.0 * (1.0 - (-1f64).exp());
        let got = load.ewma_latency(at(10_010), DECAY).expect("sampled").as_secs_f64() * 1000.0;
        assert!((got - expected).abs() < 0.01, "{got} vs {expected}");
        // Out-of-order time and a zero decay do not panic.
        load.observe_latency(base, Duration::MAX, Duration::ZERO);
        assert!(load.ewma_latency(base, Duration::ZERO).is_some());
    }
}
