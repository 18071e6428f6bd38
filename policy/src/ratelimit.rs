//! Edge rate limiting, sans IO: time comes in as an `Instant` argument; nothing here reads a
//! clock or touches a socket.
//!
//! A [`Limiter`] enforces one [`RateLimit`] per key (client IP, header value, or one key for a
//! whole route) and answers every request with a [`Decision`] carrying what the
//! `X-RateLimit-*` and `Retry-After` headers say.
//!
//! - Token bucket: a new key starts full; an allowed request takes one token; tokens refill
//!   continuously at `refill_per_second`, capped at `capacity`. A non-finite or non-positive
//!   refill counts as 0: the bucket never refills, so `retry_after` is `None` once it is empty
//!   and `reset` is `Duration::MAX` ("never").
//! - Sliding window counter (Cloudflare's approximation): counts in the current fixed window
//!   and the previous one; the estimate is `previous × (1 − elapsed/window) + current`, computed
//!   exactly in integer nanoseconds. Windows are multiples of `window` from the limiter's epoch,
//!   the `now` of its first check (so every key rolls over at the same instants). `reset` is the
//!   time until the estimate is 0 (the end of the next window if the current one has requests).
//!   A zero window counts as [`MIN_WINDOW`]. If time goes backwards, the stored window stays
//!   current and the previous one counts fully (the conservative reading).
//! - A capacity or limit of 0 refuses everything without tracking a key: `retry_after` is `None`
//!   (waiting never helps) and `reset` is zero.
//!
//! Shared counters ([`Limiter::shared`]): limiters of one policy on several nodes, under one
//! seed, hash keys alike; each keeps what it admitted for its next [`Limiter::take_report`]
//! (the busiest [`MAX_REPORTED_KEYS`] keys), and counts what the others report with
//! [`Limiter::absorb`]: a bucket loses the tokens they took (down to a debt of one capacity,
//! repaid by refill), a window counts their requests in its current window. Every node then
//! holds about the cluster's count, behind by what the others admitted since their last
//! report.
//!
//! Storage: keys are hashed with xxh3 under a random per-limiter seed and only the 64-bit hash is
//! kept. Two keys share a counter with probability ~2^-64 per pair (harmless: one client is
//! limited a little early), and since the seed is secret no one can craft keys that collide with
//! another's. Counters live in up to 16 shards, each a mutex around a map, so connections on
//! different threads rarely contend. Memory is bounded: at most `max(max_keys, 1)` keys in all
//! (about 100 bytes each). A full shard first drops keys that are idle at `now` (their counter
//! equals a fresh one, so forgetting them changes nothing); if none of up to 8 randomly sampled
//! keys is idle, it evicts the least recently seen of them. Flooding distinct keys can therefore
//! evict (reset) counters of keys seen less recently than the flood, rarely a busy one's.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use fulcrum_model::RateLimit;
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// The most keys one report carries: the busiest.
pub const MAX_REPORTED_KEYS: usize = 4096;

/// The default bound on tracked keys per policy.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// The shortest sliding window; a zero window in a policy counts as this.
pub const MIN_WINDOW: Duration = Duration::from_millis(1);

const MAX_SHARDS: usize = 16;
/// Limiters with few keys get fewer shards, so that each shard holds at least this many.
const MIN_KEYS_PER_SHARD: usize = 256;
/// Keys examined when a full shard needs room.
const SAMPLE: usize = 8;
/// Token-count slack, so that a request at exactly `now + retry_after` is allowed despite
/// floating-point rounding.
const TOKEN_EPSILON: f64 = 1e-9;

/// The outcome of one request against a limit, with what the X-RateLimit-* headers say.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decision {
    /// Whether the request may proceed (it has been counted).
    pub allowed: bool,
    /// X-RateLimit-Limit: the burst capacity (token bucket) or the per-window limit.
    pub limit: u32,
    /// X-RateLimit-Remaining after this request.
    pub remaining: u32,
    /// X-RateLimit-Reset: time until the limit is fully available again (bucket full / window
    /// rolled); `Duration::MAX` if that never happens (a bucket that does not refill).
    pub reset: Duration,
    /// When refused: how long until one request would be allowed (Retry-After before jitter);
    /// `None` when allowed, or when waiting never helps (limit 0, bucket without refill).
    pub retry_after: Option<Duration>,
}

/// The counter key of a client address: an IPv4 address, or an IPv6 client's whole /64
/// (keying by /128 would hand one client endless fresh keys), tagged by family.
pub fn client_key(ip: std::net::IpAddr) -> [u8; 9] {
    let mut key = [0u8; 9];
    match ip.to_canonical() {
        std::net::IpAddr::V4(ip) => {
            key[0] = 4;
            key[1..5].copy_from_slice(&ip.octets());
        }
        std::net::IpAddr::V6(ip) => {
            key[0] = 6;
            key[1..].copy_from_slice(&ip.octets()[..8]);
        }
    }
    key
}

/// The narrower of two decisions on one request: a refusal, else the one with less left.
pub fn narrower(a: Decision, b: Decision) -> Decision {
    match (a.allowed, b.allowed) {
        (false, _) => a,
        (true, false) => b,
        (true, true) if b.remaining < a.remaining => b,
        (true, true) => a,
    }
}

/// One policy's counters, keyed (client IP, header value, or one key for a whole route).
///
/// Send + Sync: one limiter per policy is shared by all connections of a node.
pub struct Limiter {
    policy: Policy,
    seed: u64,
    max_keys: usize,
    /// Origin of the sliding windows: the `now` of the first check.
    epoch: OnceLock<Instant>,
    shards: Box<[Mutex<Shard>]>,
    /// Whether admitted requests are kept for [`Limiter::take_report`].
    shared: bool,
}

impl Limiter {
    /// A limiter for `limit` that tracks at most `max(max_keys, 1)` keys.
    pub fn new(limit: &RateLimit, max_keys: usize) -> Limiter {
        let max_keys = max_keys.max(1);
        let count = (max_keys / MIN_KEYS_PER_SHARD).clamp(1, MAX_SHARDS);
        let seed = fastrand::u64(..);
        let shards = (0..count)
            .map(|_| {
                Mutex::new(Shard {
                    index: KeyMap::default(),
                    unreported: CountMap::default(),
                    slots: Vec::new(),
                    capacity: max_keys / count,
                    rng: fastrand::Rng::with_seed(fastrand::u64(..)),
                })
            })
            .collect();
        Limiter {
            policy: Policy::new(limit),
            seed,
            max_keys,
            epoch: OnceLock::new(),
            shards,
            shared: false,
        }
    }

    /// A limiter sharing its counters with the limiters of the same policy and `seed` on
    /// other nodes (see the module's doc); `seed` must be secret, as the random one is.
    pub fn shared(limit: &RateLimit, max_keys: usize, seed: u64) -> Limiter {
        Limiter { seed, shared: true, ..Limiter::new(limit, max_keys) }
    }

    /// What this limiter admitted since the last report, by key hash: the busiest
    /// [`MAX_REPORTED_KEYS`] keys (the others' counts are dropped). Empty unless shared.
    pub fn take_report(&self) -> Vec<(u64, u32)> {
        let mut report: Vec<(u64, u32)> = Vec::new();
        for shard in self.shards.iter() {
            report.extend(crate::lock(shard).unreported.drain());
        }
        if report.len() > MAX_REPORTED_KEYS {
            report.select_nth_unstable_by(MAX_REPORTED_KEYS, |a, b| b.1.cmp(&a.1));
            report.truncate(MAX_REPORTED_KEYS);
        }
        report
    }

    /// Counts, at `now`, what another node's limiter of this policy reported it admitted.
    pub fn absorb(&self, report: &[(u64, u32)], now: Instant) {
        if self.policy.limit() == 0 {
            return;
        }
        let epoch = *self.epoch.get_or_init(|| now);
        for &(hash, count) in report {
            let shard = &self.shards[(hash >> 32) as usize % self.shards.len()];
            crate::lock(shard).absorb(hash, count, now, &self.policy, epoch);
        }
    }

    /// Counts a request for `key` at `now` if the limit allows it, and says what to answer.
    pub fn check(&self, key: &[u8], now: Instant) -> Decision {
        let limit = self.policy.limit();
        if limit == 0 {
            return Decision {
                allowed: false,
                limit,
                remaining: 0,
                reset: Duration::ZERO,
                retry_after: None,
            };
        }
        let epoch = *self.epoch.get_or_init(|| now);
        let hash = xxh3_64_with_seed(key, self.seed);
        // Bits the shard's own map uses neither for its bucket index nor for its tags.
        let shard = &self.shards[(hash >> 32) as usize % self.shards.len()];
        let mut shard = crate::lock(shard);
        let decision = shard.check(hash, now, &self.policy, epoch);
        if self.shared && decision.allowed {
            let count = shard.unreported.entry(hash).or_insert(0);
            *count = count.saturating_add(1);
        }
        decision
    }

    /// How many keys are tracked now.
    pub fn keys(&self) -> usize {
        self.shards.iter().map(|shard| crate::lock(shard).slots.len()).sum()
    }
}

impl fmt::Debug for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limiter")
            .field("policy", &self.policy)
            .field("max_keys", &self.max_keys)
            .field("shards", &self.shards.len())
            .field("keys", &self.keys())
            .finish_non_exhaustive()
    }
}

/// Retry-After in whole seconds with jitter: ceil(retry_after) plus 0..=max(1, 10%) seconds, so
/// refused clients do not all come back at once.
pub fn retry_after_seconds(retry_after: Duration, rng: &mut fastrand::Rng) -> u64 {
    let secs = retry_after.as_secs().saturating_add(u64::from(retry_after.subsec_nanos() > 0));
    secs.saturating_add(rng.u64(0..=(secs / 10).max(1)))
}

/// A sanitized [`RateLimit`].
#[derive(Clone, Copy, Debug)]
enum Policy {
    /// `rate` is finite and ≥ 0.
    Bucket { capacity: u32, rate: f64 },
    /// `window` in nanoseconds, at least [`MIN_WINDOW`].
    Window { limit: u32, window: u128 },
}

impl Policy {
    fn new(limit: &RateLimit) -> Policy {
        match *limit {
            RateLimit::TokenBucket { capacity, refill_per_second: rate } => Policy::Bucket {
                capacity,
                rate: if rate.is_finite() && rate > 0.0 { rate } else { 0.0 },
            },
            RateLimit::SlidingWindow { limit, window } => {
                Policy::Window { limit, window: window.max(MIN_WINDOW).as_nanos() }
            }
        }
    }

    fn limit(&self) -> u32 {
        match *self {
            Policy::Bucket { capacity, .. } => capacity,
            Policy::Window { limit, .. } => limit,
        }
    }

    fn fresh(&self, key: u64, now: Instant, epoch: Instant) -> Slot {
        let (tokens, window) = match *self {
            Policy::Bucket { capacity, .. } => (f64::from(capacity), 0),
            Policy::Window { window, .. } => (0.0, position(now, epoch, window).0),
        };
        Slot { key, last_seen: now, tokens, window, current: 0, previous: 0 }
    }

    /// Brings `slot` to `now` (refill, or window roll-over); returns the offset of `now` in the
    /// current window (sliding window only).
    fn settle(&self, slot: &mut Slot, now: Instant, epoch: Instant) -> u128 {
        let mut offset = 0;
        match *self {
            Policy::Bucket { capacity, rate } => {
                let elapsed = now.saturating_duration_since(slot.last_seen).as_secs_f64();
                slot.tokens = (slot.tokens + elapsed * rate).min(f64::from(capacity));
            }
            Policy::Window { window, .. } => {
                let (index, at) = position(now, epoch, window);
                if index > slot.window {
                    slot.previous = if index - slot.window == 1 { slot.current } else { 0 };
                    slot.current = 0;
                    slot.window = index;
                }
                if index == slot.window {
                    offset = at;
                }
            }
        }
        slot.last_seen = slot.last_seen.max(now);
        offset
    }

    /// Counts `count` requests another node admitted, after [`Policy::settle`].
    fn consume(&self, slot: &mut Slot, count: u32) {
        match *self {
            Policy::Bucket { capacity, .. } => {
                slot.tokens = (slot.tokens - f64::from(count)).max(-f64::from(capacity));
            }
            Policy::Window { .. } => slot.current = slot.current.saturating_add(count),
        }
    }

    /// Whether the key's counter at `now` equals a fresh one, so forgetting it changes nothing.
    fn idle(&self, slot: &Slot, now: Instant, epoch: Instant) -> bool {
        let mut slot = *slot;
        self.settle(&mut slot, now, epoch);
        match *self {
            Policy::Bucket { capacity, .. } => slot.tokens >= f64::from(capacity),
            Policy::Window { .. } => slot.current == 0 && slot.previous == 0,
        }
    }

    fn decide(&self, slot: &mut Slot, now: Instant, epoch: Instant) -> Decision {
        let offset = self.settle(slot, now, epoch);
        match *self {
            Policy::Bucket { capacity, rate } => {
                let allowed = slot.tokens + TOKEN_EPSILON >= 1.0;
                if allowed {
                    slot.tokens = (slot.tokens - 1.0).max(0.0);
                }
                Decision {
                    allowed,
                    limit: capacity,
                    remaining: slot.tokens as u32,
                    reset: refill_time(f64::from(capacity) - slot.tokens, rate)
                        .unwrap_or(Duration::MAX),
                    retry_after: if allowed { None } else { refill_time(1.0 - slot.tokens, rate) },
                }
            }
            Policy::Window { limit, window: w } => {
                let (prev, cur) = (u128::from(slot.previous), u128::from(slot.current));
                let full = u128::from(limit) * w;
                // The estimate times w: exact integers, no rounding at the boundaries.
                let mut used = (prev * (w - offset)).saturating_add(cur * w);
                let allowed = used.saturating_add(w) <= full;
                if allowed {
                    slot.current = slot.current.saturating_add(1);
                    used = used.saturating_add(w);
                }
                let reset = if slot.current > 0 {
                    2 * w - offset
                } else if slot.previous > 0 {
                    w - offset
                } else {
                    0
                };
                Decision {
                    allowed,
                    limit,
                    remaining: u32::try_from(full.saturating_sub(used) / w).unwrap_or(u32::MAX),
                    reset: from_nanos(reset),
                    retry_after: if allowed {
                        None
                    } else {
                        Some(from_nanos(window_wait(limit, w, offset, slot.previous, slot.current)))
                    },
                }
            }
        }
    }
}

/// The index of the window holding `now` and the offset of `now` in it (nanoseconds < window).
fn position(now: Instant, epoch: Instant, window: u128) -> (u64, u128) {
    let since = now.saturating_duration_since(epoch).as_nanos();
    (u64::try_from(since / window).unwrap_or(u64::MAX), since % window)
}

/// Nanoseconds until a request would be allowed, `offset` into a window of `w` with these
/// counts, if nothing else is counted meanwhile (`limit` ≥ 1). The estimate only decreases.
fn window_wait(limit: u32, w: u128, offset: u128, previous: u32, current: u32) -> u128 {
    let (limit, prev, cur) = (u128::from(limit), u128::from(previous), u128::from(current));
    // Next window, where `current` becomes the previous count: allowed once
    // cur × (w − at) ≤ (limit − 1) × w. Two windows on, both counts are 0: always allowed.
    let at =
        (limit.saturating_sub(1) * w).checked_div(cur).map_or(0, |room| w.saturating_sub(room));
    let mut wait = (w - offset) + at;
    // This window, if `current` alone leaves room: once
    // prev × (w − offset) ≤ (limit − cur − 1) × w.
    if prev > 0 && cur < limit {
        let room = ((limit - cur - 1) * w) / prev;
        if room > 0 {
            wait = wait.min(w.saturating_sub(room).saturating_sub(offset));
        }
    }
    wait
}

/// Time for `rate` tokens per second to refill `deficit` tokens, rounded up to the nanosecond;
/// `None` if it never happens.
fn refill_time(deficit: f64, rate: f64) -> Option<Duration> {
    if deficit <= 0.0 {
        return Some(Duration::ZERO);
    }
    if rate <= 0.0 {
        return None;
    }
    let nanos = (deficit / rate * 1e9).ceil();
    // `as` saturates; u64 nanoseconds reach 584 years.
    Some(if nanos < u64::MAX as f64 { Duration::from_nanos(nanos as u64) } else { Duration::MAX })
}

fn from_nanos(nanos: u128) -> Duration {
    let secs = u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX);
    Duration::new(secs, (nanos % 1_000_000_000) as u32)
}

/// One key's counter.
#[derive(Clone, Copy, Debug)]
struct Slot {
    key: u64,
    /// Latest `now` seen; also the time `tokens` was computed at.
    last_seen: Instant,
    /// Token bucket only.
    tokens: f64,
    /// Sliding window only: the current window's index from the epoch, and the counts.
    window: u64,
    current: u32,
    previous: u32,
}

/// The keys are already seeded xxh3 hashes: the map uses them as they are.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type KeyMap = HashMap<u64, usize, BuildHasherDefault<KeyHasher>>;
type CountMap = HashMap<u64, u32, BuildHasherDefault<KeyHasher>>;

/// Some of a limiter's keys: `slots` densely, `index` from key hash to position in `slots`.
struct Shard {
    index: KeyMap,
    /// A shared limiter's admissions since its last report, by key.
    unreported: CountMap,
    slots: Vec<Slot>,
    capacity: usize,
    rng: fastrand::Rng,
}

impl Shard {
    fn check(&mut self, key: u64, now: Instant, policy: &Policy, epoch: Instant) -> Decision {
        let at = self.slot(key, now, policy, epoch);
        policy.decide(&mut self.slots[at], now, epoch)
    }

    fn absorb(&mut self, key: u64, count: u32, now: Instant, policy: &Policy, epoch: Instant) {
        let at = self.slot(key, now, policy, epoch);
        let slot = &mut self.slots[at];
        policy.settle(slot, now, epoch);
        policy.consume(slot, count);
    }

    /// Where `key`'s counter is, made fresh (room made) if it is not tracked.
    fn slot(&mut self, key: u64, now: Instant, policy: &Policy, epoch: Instant) -> usize {
        match self.index.get(&key) {
            Some(&at) => at,
            None => {
                if self.slots.len() >= self.capacity {
                    self.make_room(now, policy, epoch);
                }
                self.index.insert(key, self.slots.len());
                self.slots.push(policy.fresh(key, now, epoch));
                self.slots.len() - 1
            }
        }
    }

    /// Drops the idle keys among a sample (every key if there are few), or else the least
    /// recently seen key of the sample. Removes at least one key from a non-empty shard.
    fn make_room(&mut self, now: Instant, policy: &Policy, epoch: Instant) {
        let len = self.slots.len();
        let mut idle = [0u64; SAMPLE];
        let mut idle_count = 0;
        let mut oldest: Option<(Instant, u64)> = None;
        for i in 0..SAMPLE.min(len) {
            let at = if len <= SAMPLE { i } else { self.rng.usize(..len) };
            let slot = &self.slots[at];
            if policy.idle(slot, now, epoch) {
                idle[idle_count] = slot.key;
                idle_count += 1;
            } else if oldest.is_none_or(|(seen, _)| slot.last_seen < seen) {
                oldest = Some((slot.last_seen, slot.key));
            }
        }
        if let (0, Some((_, key))) = (idle_count, oldest) {
            self.remove(key);
        }
        for &key in &idle[..idle_count] {
            // A key sampled twice is simply not found the second time.
            self.remove(key);
        }
    }

    fn remove(&mut self, key: u64) {
        if let Some(at) = self.index.remove(&key) {
            self.slots.swap_remove(at);
            if let Some(moved) = self.slots.get(at) {
                self.index.insert(moved.key, at);
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
    use super::*;

    fn bucket(capacity: u32, refill_per_second: f64) -> Limiter {
        Limiter::new(&RateLimit::TokenBucket { capacity, refill_per_second }, DEFAULT_MAX_KEYS)
    }

    fn window(limit: u32, window: Duration) -> Limiter {
        Limiter::new(&RateLimit::SlidingWindow { limit, window }, DEFAULT_MAX_KEYS)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn shared_buckets_admit_the_capacity_once_across_nodes() {
        let limit = RateLimit::TokenBucket { capacity: 10, refill_per_second: 0.0 };
        let (a, b) = (Limiter::shared(&limit, 100, 7), Limiter::shared(&limit, 100, 7));
        let now = Instant::now();
        assert_eq!(burst(&a, b"client", now, 6), 6);
        b.absorb(&a.take_report(), now);
        assert_eq!(burst(&b, b"client", now, 10), 4, "b counts what a admitted");
        a.absorb(&b.take_report(), now);
        assert_eq!(burst(&a, b"client", now, 10), 0, "and a what b admitted");
        // Another key is untouched.
        assert_eq!(burst(&a, b"other", now, 3), 3);
    }

    #[test]
    fn a_shared_bucket_repays_a_debt_before_it_admits_again() {
        let limit = RateLimit::TokenBucket { capacity: 4, refill_per_second: 1.0 };
        let (a, b) = (Limiter::shared(&limit, 100, 1), Limiter::shared(&limit, 100, 1));
        let now = Instant::now();
        assert_eq!(burst(&a, b"k", now, 4), 4);
        assert_eq!(burst(&b, b"k", now, 4), 4, "both admitted before hearing of the other");
        a.absorb(&b.take_report(), now);
        // Four tokens of debt: the fifth second's refill is the first one usable.
        assert_eq!(burst(&a, b"k", now + ms(4_500), 1), 0);
        assert_eq!(burst(&a, b"k", now + ms(5_000), 1), 1);
        // A debt is bounded by one capacity.
        let huge = [(xxh3_64_with_seed(b"k", 1), 1_000)];
        a.absorb(&huge, now + ms(5_000));
        assert_eq!(burst(&a, b"k", now + ms(9_000), 1), 0);
        assert_eq!(burst(&a, b"k", now + ms(10_000), 1), 1);
    }

    #[test]
    fn shared_windows_count_what_the_others_admitted() {
        let limit = RateLimit::SlidingWindow { limit: 10, window: ms(1_000) };
        let (a, b) = (Limiter::shared(&limit, 100, 3), Limiter::shared(&limit, 100, 3));
        let now = Instant::now();
        assert_eq!(burst(&a, b"k", now, 7), 7);
        b.absorb(&a.take_report(), now);
        assert_eq!(burst(&b, b"k", now, 10), 3);
    }

    #[test]
    fn an_unshared_limiter_reports_nothing_and_a_report_is_taken_once() {
        let limit = RateLimit::TokenBucket { capacity: 10, refill_per_second: 1.0 };
        let now = Instant::now();
        let alone = Limiter::new(&limit, 100);
        burst(&alone, b"k", now, 3);
        assert!(alone.take_report().is_empty());
        let shared = Limiter::shared(&limit, 100, 9);
        burst(&shared, b"k", now, 3);
        burst(&shared, b"k", now, 20); // Refusals are not reported.
        assert_eq!(shared.take_report(), vec![(xxh3_64_with_seed(b"k", 9), 10)]);
        assert!(shared.take_report().is_empty());
    }

    #[test]
    fn a_report_keeps_the_busiest_keys() {
        let limit = RateLimit::TokenBucket { capacity: 10, refill_per_second: 1.0 };
        let limiter = Limiter::shared(&limit, 2 * MAX_REPORTED_KEYS, 5);
        let now = Instant::now();
        for n in 0..MAX_REPORTED_KEYS + 10 {
            burst(&limiter, &(n as u64).to_be_bytes(), now, 1);
        }
        burst(&limiter, b"busy", now, 5);
        let report = limiter.take_report();
        assert_eq!(report.len(), MAX_REPORTED_KEYS);
        assert!(report.contains(&(xxh3_64_with_seed(b"busy", 5), 5)));
    }

    /// Checks `n` times at `now`; returns how many were allowed, checking every decision's sanity.
    fn burst(limiter: &Limiter, key: &[u8], now: Instant, n: u32) -> u32 {
        (0..n).map(|_| sane(limiter.check(key, now))).filter(|d| d.allowed).count() as u32
    }

    fn sane(d: Decision) -> Decision {
        assert!(d.remaining <= d.limit, "{d:?}");
        if d.allowed {
            assert_eq!(d.retry_after, None, "{d:?}");
        }
        d
    }

    /// A steady attack: one request every `step` for `span`. Checks that retry_after is exact:
    /// after a refusal, the next allowed request is the first step at or after the time it
    /// gave. Returns the times of allowed requests.
    fn attack(limiter: &Limiter, t0: Instant, step: Duration, span: Duration) -> Vec<Instant> {
        let (mut allowed, mut promised) = (Vec::new(), None);
        let mut now = t0;
        while now < t0 + span {
            let d = sane(limiter.check(b"attacker", now));
            if d.allowed {
                allowed.push(now);
                if let Some(at) = promised.take() {
                    assert!(now >= at && now < at + step, "allowed at {now:?}, promised {at:?}");
                }
            } else {
                promised.get_or_insert(now + d.retry_after.expect("refills"));
            }
            now += step;
        }
        allowed
    }

    #[test]
    fn token_bucket_burst_refill_and_reset() {
        let (limiter, t0) = (bucket(5, 2.0), Instant::now());
        for k in 1..=5 {
            let d = limiter.check(b"a", t0);
            assert!(d.allowed);
            assert_eq!((d.limit, d.remaining), (5, 5 - k));
            assert_eq!(d.reset, ms(500) * k, "time to full refill");
        }
        let d = limiter.check(b"a", t0);
        let full = Decision {
            allowed: false,
            limit: 5,
            remaining: 0,
            reset: ms(2500),
            retry_after: Some(ms(500)),
        };
        assert_eq!(d, full);
        assert_eq!(limiter.check(b"a", t0 + ms(250)).retry_after, Some(ms(250)));
        let d = limiter.check(b"a", t0 + ms(500));
        assert!(d.allowed && d.remaining == 0 && d.reset == ms(2500));
        assert!(!limiter.check(b"a", t0 + ms(500)).allowed);
        // Full again 2.5 s later, and never above capacity however long the wait.
        assert_eq!(burst(&limiter, b"a", t0 + ms(3000), 10), 5);
        assert_eq!(burst(&limiter, b"a", t0 + Duration::from_secs(3600), 10), 5);
    }

    #[test]
    fn token_bucket_steady_attack_gets_the_refill_rate() {
        let (limiter, t0) = (bucket(5, 10.0), Instant::now());
        let allowed = attack(&limiter, t0, ms(7), Duration::from_secs(10));
        // The burst, then 10 per second.
        assert!((104..=106).contains(&allowed.len()), "{}", allowed.len());
    }

    #[test]
    fn sliding_window_boundary() {
        let (limiter, t0) = (window(10, Duration::from_secs(1)), Instant::now());
        limiter.check(b"epoch", t0); // windows are [0, 1 s), [1 s, 2 s), ...
        for k in 1..=10 {
            let d = limiter.check(b"a", t0 + ms(900));
            assert!(d.allowed);
            assert_eq!((d.remaining, d.reset), (10 - k, ms(1100)));
        }
        let d = limiter.check(b"a", t0 + ms(900));
        assert_eq!((d.allowed, d.retry_after), (false, Some(ms(200))));
        // A fixed window would allow 10 more at 1.0 s: 20 within 100 ms.
        assert_eq!(burst(&limiter, b"a", t0 + ms(1000), 10), 0);
        // At 1.1 s: 10 × 0.9 = 9, so exactly one more.
        let d = limiter.check(b"a", t0 + ms(1100));
        assert_eq!((d.allowed, d.remaining, d.reset), (true, 0, ms(1900)));
        let d = limiter.check(b"a", t0 + ms(1100));
        assert_eq!((d.allowed, d.retry_after), (false, Some(ms(100))));
        assert!(limiter.check(b"a", t0 + ms(1200)).allowed);
        // At 2.0 s window 1 weighs nothing, but window 2's two requests weigh fully.
        assert_eq!(burst(&limiter, b"a", t0 + ms(2000), 20), 8);
        // A key quiet in window 2 gets the whole limit at 2.0 s.
        assert_eq!(burst(&limiter, b"b", t0 + ms(900), 20), 10);
        assert_eq!(burst(&limiter, b"b", t0 + ms(2000), 20), 10);
        assert_eq!(limiter.check(b"b", t0 + ms(2000)).reset, ms(2000));
    }

    #[test]
    fn sliding_window_steady_attack_stays_near_limit() {
        let (limiter, t0) = (window(10, Duration::from_secs(1)), Instant::now());
        let allowed = attack(&limiter, t0, ms(10), Duration::from_secs(10));
        for (i, &start) in allowed.iter().enumerate() {
            let in_span = allowed[i..].iter().take_while(|&&t| t < start + ms(1000)).count();
            assert!(in_span <= 11, "{in_span} allowed in 1 s from {:?}", start - t0);
        }
        // 10 in the first window, then 9 or 10 per window (the last slot of a window is
        // refused while the previous window still weighs a little).
        assert!((90..=101).contains(&allowed.len()), "{}", allowed.len());
    }

    #[test]
    fn keys_are_independent_and_a_route_key_is_shared() {
        let (limiter, t0) = (bucket(2, 1.0), Instant::now());
        assert_eq!(burst(&limiter, b"10.0.0.1", t0, 3), 2);
        assert_eq!(burst(&limiter, b"10.0.0.2", t0, 3), 2);
        // Two connections checking the route-wide key draw from one bucket.
        assert!(limiter.check(b"route", t0).allowed);
        assert!(limiter.check(b"route", t0).allowed);
        assert!(!limiter.check(b"route", t0).allowed);
        assert_eq!(limiter.keys(), 3);
    }

    #[test]
    fn shared_across_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Limiter>();
        let (limiter, t0) = (bucket(1000, 0.0), Instant::now());
        let allowed: u32 = std::thread::scope(|s| {
            let threads: Vec<_> =
                (0..8).map(|_| s.spawn(|| burst(&limiter, b"route", t0, 200))).collect();
            threads.into_iter().map(|t| t.join().expect("thread")).sum()
        });
        assert_eq!(allowed, 1000);
    }

    #[test]
    fn flood_of_distinct_keys_stays_bounded_and_spares_busy_keys() {
        let limiter = Limiter::new(
            &RateLimit::TokenBucket { capacity: 10, refill_per_second: 0.001 },
            10_000,
        );
        let t0 = Instant::now();
        for i in 0u64..1_000_000 {
            let now = t0 + Duration::from_micros(i);
            limiter.check(&i.to_le_bytes(), now);
            if i % 100 == 0 {
                // A busy key, drained: were it evicted it would come back full.
                assert_eq!(limiter.check(b"busy", now).allowed, i < 1000, "at {i}");
            }
        }
        assert!(limiter.keys() <= 10_000, "{}", limiter.keys());
        assert!(limiter.keys() >= 9_000, "{}", limiter.keys());
    }

    #[test]
    fn idle_keys_are_dropped_before_least_recently_seen() {
        let limiter =
            Limiter::new(&RateLimit::TokenBucket { capacity: 2, refill_per_second: 1.0 }, 4);
        let t0 = Instant::now();
        for key in [b"b", b"c", b"d"] {
            assert_eq!(burst(&limiter, key, t0, 2), 2); // empty until t0 + 2 s
        }
        assert!(limiter.check(b"a", t0 + ms(500)).allowed); // full again at 1.5 s
        assert_eq!(limiter.keys(), 4);
        // "a" is the most recently seen key but the only idle one: it goes.
        assert!(limiter.check(b"e", t0 + ms(1600)).allowed);
        assert_eq!(limiter.keys(), 4);
        let d = limiter.check(b"b", t0 + ms(1600)); // 1.6 tokens: its counter was kept
        assert_eq!((d.allowed, d.remaining), (true, 0));
        // "a" starts fresh; none is idle now, so the least recently seen ("c" or "d") goes.
        let d = limiter.check(b"a", t0 + ms(1700));
        assert_eq!((d.allowed, d.remaining), (true, 1));
        assert_eq!(limiter.keys(), 4);
        // "b" and "e" were kept (a fresh one would have 1 token to spare).
        assert!(!limiter.check(b"b", t0 + ms(1700)).allowed);
        let d = limiter.check(b"e", t0 + ms(1700));
        assert_eq!((d.allowed, d.remaining), (true, 0));
    }

    #[test]
    fn idle_sliding_window_key_is_forgotten() {
        let limiter =
            Limiter::new(&RateLimit::SlidingWindow { limit: 3, window: Duration::from_secs(1) }, 1);
        let t0 = Instant::now();
        assert_eq!(burst(&limiter, b"a", t0, 3), 3);
        // At 2.5 s both of "a"'s windows are over: it is idle and makes room for "b".
        assert!(limiter.check(b"b", t0 + ms(2500)).allowed);
        assert_eq!(limiter.keys(), 1);
        assert_eq!(burst(&limiter, b"a", t0 + ms(2500), 5), 3, "a starts fresh");
    }

    #[test]
    fn degenerate_policies_do_not_panic() {
        let t0 = Instant::now();
        let never = Decision {
            allowed: false,
            limit: 0,
            remaining: 0,
            reset: Duration::ZERO,
            retry_after: None,
        };
        for limiter in [bucket(0, 1.0), window(0, Duration::from_secs(1))] {
            assert_eq!(limiter.check(b"a", t0), never);
            assert_eq!(limiter.check(b"a", t0 + Duration::from_secs(3600)), never);
            assert_eq!(limiter.keys(), 0);
        }
        for refill in [0.0, -1.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let limiter = bucket(3, refill);
            assert_eq!(burst(&limiter, b"a", t0, 3), 3);
            let d = limiter.check(b"a", t0 + Duration::from_secs(3600));
            let no_refill = Decision {
                allowed: false,
                limit: 3,
                remaining: 0,
                reset: Duration::MAX,
                retry_after: None,
            };
            assert_eq!(d, no_refill, "refill {refill}");
        }
        // A huge refill rate refills a token in a nanosecond.
        let limiter = bucket(u32::MAX, 1e300);
        assert_eq!(limiter.check(b"a", t0).remaining, u32::MAX - 1);
        assert!(limiter.check(b"a", t0 + Duration::from_secs(1 << 40)).allowed);
        let limiter = bucket(1, 1e300);
        assert!(limiter.check(b"a", t0).allowed);
        assert_eq!(limiter.check(b"a", t0).retry_after, Some(Duration::from_nanos(1)));
        assert!(limiter.check(b"a", t0 + Duration::from_nanos(1)).allowed);
        // A zero window counts as 1 ms.
        let limiter = window(2, Duration::ZERO);
        assert_eq!(burst(&limiter, b"a", t0, 3), 2);
        let retry = limiter.check(b"a", t0).retry_after.expect("window rolls");
        assert!(retry <= MIN_WINDOW * 2, "{retry:?}");
        assert!(limiter.check(b"a", t0 + retry).allowed);
        // Huge windows, limits and times.
        let limiter = window(u32::MAX, Duration::MAX);
        assert_eq!(burst(&limiter, b"a", t0, 2), 2);
        let d = sane(limiter.check(b"a", t0 + Duration::from_secs(1 << 40)));
        assert_eq!(d.remaining, u32::MAX - 3);
        let limiter = window(1, Duration::MAX);
        assert!(limiter.check(b"a", t0).allowed);
        let d = sane(limiter.check(b"a", t0 + Duration::from_secs(1 << 40)));
        assert!(!d.allowed && d.retry_after.is_some());
        // Time going backwards, and max_keys 0.
        for limiter in [bucket(2, 1.0), window(2, Duration::from_secs(1))] {
            let late = t0 + Duration::from_secs(10);
            assert_eq!(burst(&limiter, b"a", late, 1), 1);
            assert_eq!(burst(&limiter, b"a", t0, 3), 1);
            assert_eq!(burst(&limiter, b"b", t0, 3), 2);
        }
        let limiter =
            Limiter::new(&RateLimit::TokenBucket { capacity: 1, refill_per_second: 1.0 }, 0);
        assert_eq!(burst(&limiter, b"a", t0, 1) + burst(&limiter, b"b", t0, 1), 2);
        assert_eq!(limiter.keys(), 1);
    }

    #[test]
    fn retry_after_seconds_is_ceil_plus_jitter() {
        let mut rng = fastrand::Rng::with_seed(7);
        for (retry, base, jitter) in [
            (Duration::ZERO, 0, 1),
            (ms(200), 1, 1),
            (Duration::from_secs(2), 2, 1),
            (ms(94_001), 95, 9),
        ] {
            let seen: Vec<u64> = (0..1000).map(|_| retry_after_seconds(retry, &mut rng)).collect();
            assert!(seen.iter().all(|s| (base..=base + jitter).contains(s)), "{retry:?}");
            assert!(seen.contains(&base) && seen.contains(&(base + jitter)), "{retry:?}");
        }
        assert_eq!(retry_after_seconds(Duration::MAX, &mut rng), u64::MAX);
    }

    #[test]
    fn client_keys_cover_an_ipv6_slash_64_and_keep_families_apart() {
        use std::net::IpAddr;
        let key = |text: &str| client_key(text.parse::<IpAddr>().unwrap());
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:198.18.0.1"), key("198.18.0.1"), "a mapped address is its IPv4 one");
        assert_ne!(key("198.18.0.1"), key("0400:c612:0001::"), "families never share a key");
    }

    #[test]
    fn the_narrower_decision_is_a_refusal_or_the_one_with_less_left() {
        let decision = |allowed, remaining| Decision {
            allowed,
            limit: 10,
            remaining,
            reset: Duration::ZERO,
            retry_after: None,
        };
        assert_eq!(narrower(decision(true, 5), decision(true, 2)).remaining, 2);
        assert_eq!(narrower(decision(true, 1), decision(true, 2)).remaining, 1);
        assert!(!narrower(decision(true, 5), decision(false, 0)).allowed);
        assert!(!narrower(decision(false, 0), decision(true, 9)).allowed);
    }
}
