//! What every connection of the data plane reads: the pools, the rate-limit policies, the
//! sticky-cookie signer, the local addresses being drained and the ACME material. Swapped whole by
//! `DataPlane::apply`, never locked on the data path.

use std::sync::Arc;

use arc_swap::ArcSwap;
use fulcrum_model::{Name, RateLimitKey, RateLimitPolicy};
use fulcrum_policy::{CookieSigner, Limiter};

use super::acme::AcmeMaterial;
use super::addresses::AddressDrains;
use super::fast_map::FastMap;
use super::pool::PoolRuntime;
use super::workers::Loads;

/// The pools by name, as the data path sees them.
pub(crate) type PoolMap = FastMap<Name, Arc<PoolRuntime>>;

/// Rate-limit policies by name, each with its counters.
pub(crate) type LimiterMap = FastMap<Name, (RateLimitPolicy, Arc<Limiter>)>;

/// What every connection reads: swapped whole by `apply`, never locked.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The pools.
    pub pools: ArcSwap<PoolMap>,
    /// The rate-limit policies.
    pub limiters: ArcSwap<LimiterMap>,
    /// Signs and checks sticky cookies, alike on every node of the cluster.
    pub signer: CookieSigner,
    /// Local addresses (VIPs handed over) whose connections drain.
    pub addresses: Arc<AddressDrains>,
    /// ACME certificates and challenge answers.
    pub acme: Arc<ArcSwap<AcmeMaterial>>,
    /// How many client connections and tunnels each worker holds.
    pub loads: Arc<Loads>,
}

impl Shared {
    /// The rate-limit policy called `name`: what it is keyed on, and its counters.
    pub(crate) fn limiter(&self, name: &Name) -> Option<(RateLimitKey, Arc<Limiter>)> {
        self.limiters
            .load()
            .get(name)
            .map(|(policy, limiter)| (policy.key.clone(), Arc::clone(limiter)))
    }
}
