//! Rate limits held across nodes: every node seeds a policy's limiter alike from the cluster
//! secret (so a client's key has one counter everywhere), reports what it admitted, and counts
//! what the others report (`fulcrum_policy::Limiter::shared`). A policy is known to another
//! node by its name and a fingerprint of its definition, so nodes serving different
//! revisions of it never mix their counts.

use std::time::Instant;

use fulcrum_model::{Name, RateLimitPolicy};
use fulcrum_policy::derived_mac;
use fulcrum_policy::ratelimit::MAX_REPORTED_KEYS;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::DataPlane;

/// Derives each policy's seed and fingerprint from the cluster secret.
#[derive(Clone)]
pub struct LimitSeeder {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for LimitSeeder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LimitSeeder")
    }
}

impl LimitSeeder {
    /// A seeder keyed with `secret` (the cluster secret).
    pub fn new(secret: &[u8]) -> LimitSeeder {
        LimitSeeder { mac: derived_mac(b"fulcrum rate limits\0", secret) }
    }

    /// `policy`'s limiter seed (secret) and fingerprint (told to peers): equal on every node
    /// with the same secret and the same definition of the policy.
    pub fn seed(&self, policy: &RateLimitPolicy) -> (u64, u64) {
        let mut mac = self.mac.clone();
        // JSON of a struct is stable: fields in declaration order.
        mac.update(&serde_json::to_vec(policy).unwrap_or_default());
        let bytes = mac.finalize().into_bytes();
        let word = |at: usize| {
            let mut word = [0u8; 8];
            word.copy_from_slice(&bytes[at..at + 8]);
            u64::from_be_bytes(word)
        };
        (word(0), word(8))
    }
}

/// What one node's limiter of one policy admitted since its last report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateReport {
    /// The policy.
    pub policy: Name,
    /// Its definition's fingerprint ([`LimitSeeder::seed`]).
    pub fingerprint: u64,
    /// Requests admitted, by key hash.
    pub counts: Vec<(u64, u32)>,
}

impl DataPlane {
    /// What this node's shared limiters admitted since the last call (none unless limits are
    /// shared).
    pub fn rate_reports(&self) -> Vec<RateReport> {
        let Some(seeder) = &self.limit_seeder else { return Vec::new() };
        self.shared
            .limiters
            .load()
            .iter()
            .filter_map(|(name, (policy, limiter))| {
                let counts = limiter.take_report();
                let fingerprint = seeder.seed(policy).1;
                (!counts.is_empty()).then(|| RateReport {
                    policy: name.clone(),
                    fingerprint,
                    counts,
                })
            })
            .collect()
    }

    /// Counts, at `now`, what another node reported; a policy this node does not have, or
    /// has in another definition, is skipped.
    pub fn absorb_rate_reports(&self, reports: &[RateReport], now: Instant) {
        let Some(seeder) = &self.limit_seeder else { return };
        let limiters = self.shared.limiters.load();
        // A report is bounded as a sender makes it: a faulty peer cannot make this node
        // track more keys, or work longer, than one report of each policy would.
        let mut seen = std::collections::HashSet::new();
        for report in reports.iter().filter(|report| seen.insert(&report.policy)) {
            match limiters.get(&report.policy) {
                Some((policy, limiter)) if seeder.seed(policy).1 == report.fingerprint => {
                    let counts = &report.counts[..report.counts.len().min(MAX_REPORTED_KEYS)];
                    limiter.absorb(counts, now);
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fulcrum_model::{RateLimit, RateLimitKey};

    fn policy(capacity: u32) -> RateLimitPolicy {
        RateLimitPolicy {
            name: "per-client".parse().unwrap(),
            key: RateLimitKey::ClientIp,
            limit: RateLimit::TokenBucket { capacity, refill_per_second: 1.0 },
        }
    }

    #[test]
    fn nodes_with_one_secret_seed_a_policy_alike_and_a_change_changes_it() {
        let (a, b) = (LimitSeeder::new(b"cluster secret"), LimitSeeder::new(b"cluster secret"));
        assert_eq!(a.seed(&policy(10)), b.seed(&policy(10)));
        assert_ne!(a.seed(&policy(10)), a.seed(&policy(11)));
        assert_ne!(a.seed(&policy(10)), LimitSeeder::new(b"another").seed(&policy(10)));
        let (seed, fingerprint) = a.seed(&policy(10));
        assert_ne!(seed, fingerprint, "the fingerprint told to peers is not the seed");
    }
}
