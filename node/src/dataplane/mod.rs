//! The data plane: listeners, L4 forwarding, pools with their balancers and health checks,
//! draining, and the counters behind `/metrics`.
//!
//! It is driven by whole [`Config`]s: [`DataPlane::apply`] diffs each one against what runs.
//! Unchanged listeners keep their sockets and connections, removed ones stop accepting and
//! drain, new ones start; pools and backends keep their counters and health across changes.
//! The data path reads pools through an `ArcSwap` (one atomic load per connection) and never
//! takes a lock or waits on the configuration store or the disk.

mod accept;
pub(crate) mod acme;
pub mod addresses;
mod answer;
mod attempt;
mod boxed;
mod client_clock;
pub mod error;
mod fast_map;
mod gate;
mod h1;
mod http;
mod l4;
pub mod listener;
mod metrics;
pub mod pool;
mod premature;
mod probe;
mod proxy_body;
pub mod proxy_header;
mod shared;
pub mod shared_limits;
mod signal;
mod speculative;
mod splice;
pub mod stats;
pub(crate) mod tls;
mod upstream;
pub mod workers;

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use fulcrum_model::api::PoolStatus;
use fulcrum_model::{ClusterSpec, Config, Listener, Name};
use tokio::task::JoinHandle;

use fulcrum_policy::CookieSigner;
use fulcrum_policy::ratelimit::{DEFAULT_MAX_KEYS, Limiter};

use crate::acme::seal::Sealer;
use crate::time::deadline_after;
use acme::AcmeMaterial;
use addresses::Phase;
use listener::{ListenerError, ListenerRuntime};
use pool::PoolRuntime;
use shared::{LimiterMap, PoolMap, Shared};
use workers::Workers;

/// How long a removed listener's connections may run when its pool is gone too.
const FALLBACK_DRAIN: Duration = Duration::from_secs(30);

/// What a node drain left behind.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Connections still open at the deadline (and then closed), per listener.
    pub closed_at_deadline: Vec<(Name, usize)>,
}

impl DrainReport {
    /// Connections closed at the deadline, over all listeners.
    pub fn total(&self) -> usize {
        self.closed_at_deadline.iter().map(|(_, n)| n).sum()
    }
}

/// A running listener and the tasks accepting on its sockets, one per worker.
#[derive(Debug)]
struct Running {
    runtime: Arc<ListenerRuntime>,
    accepting: Vec<JoinHandle<()>>,
}

/// What `apply` changes; one apply at a time.
#[derive(Debug, Default)]
struct Control {
    listeners: HashMap<Name, Running>,
    /// Set by a node drain: nothing new starts afterwards.
    drained: bool,
}

/// One node's data plane.
#[derive(Debug)]
pub struct DataPlane {
    /// Where connections are accepted and served.
    workers: Workers,
    shared: Arc<Shared>,
    control: tokio::sync::Mutex<Control>,
    /// Removed listeners whose connections are still draining, for metrics and node drain.
    retired: Arc<Mutex<Vec<Arc<ListenerRuntime>>>>,
    /// Removed pools whose backends still have connections: shown in metrics, and brought
    /// back if a pool of the same name is added again.
    retired_pools: Mutex<Vec<Arc<PoolRuntime>>>,
    /// The revision of the configuration last applied: what this node serves.
    served_revision: std::sync::atomic::AtomicU64,
    /// Opens the keys of ACME certificates (a node without a cluster secret has none).
    sealer: Option<Arc<Sealer>>,
    /// Seeds rate limits shared with the other nodes, if they are.
    limit_seeder: Option<shared_limits::LimitSeeder>,
}

impl DataPlane {
    /// A data plane serving nothing yet, with one worker thread per core and sticky cookies
    /// valid for this process only.
    pub fn new() -> io::Result<DataPlane> {
        let key = crate::secret::random_secret()?;
        DataPlane::with_workers(workers::default_count(), CookieSigner::new(&key))
    }

    /// A data plane serving nothing yet, with `count` worker threads (at least one).
    pub fn with_workers(count: usize, signer: CookieSigner) -> io::Result<DataPlane> {
        let workers = Workers::start(count)?;
        Ok(DataPlane {
            shared: Arc::new(Shared {
                pools: ArcSwap::default(),
                limiters: ArcSwap::default(),
                signer,
                addresses: Arc::default(),
                acme: Arc::default(),
                loads: Arc::clone(workers.loads()),
            }),
            workers,
            sealer: None,
            limit_seeder: None,
            control: tokio::sync::Mutex::default(),
            retired: Arc::default(),
            retired_pools: Mutex::default(),
            served_revision: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The same, opening ACME certificates' keys with `sealer`.
    pub fn with_sealer(mut self, sealer: Arc<Sealer>) -> DataPlane {
        self.sealer = Some(sealer);
        self
    }

    /// The same, its rate limits shared with the other nodes (keyed from the cluster
    /// `secret`): see [`shared_limits`].
    pub fn with_shared_limits(mut self, secret: &[u8]) -> DataPlane {
        self.limit_seeder = Some(shared_limits::LimitSeeder::new(secret));
        self
    }

    /// Makes the running data plane match `config`. A listener that cannot start is reported
    /// and the rest still applies: the configuration is already agreed by the cluster.
    /// Returns `None`, changing nothing, once the node has drained.
    pub async fn apply(&self, config: &Config) -> Option<Vec<ListenerError>> {
        let mut control = self.control.lock().await;
        if control.drained {
            return None;
        }
        let spec = &config.spec;
        let old_pools = self.apply_pools(spec);
        self.apply_rate_limits(spec);
        let material =
            AcmeMaterial::build(config, self.sealer.as_deref(), &self.shared.acme.load());
        self.shared.acme.store(Arc::new(material));

        // Stop what goes away first, so its address is free for whatever replaces it.
        let leaving: Vec<Name> = control
            .listeners
            .iter()
            .filter(|(name, running)| match spec.listener(name.as_str()) {
                Some(next) => !same_socket(&running.runtime.spec(), next),
                None => true,
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in leaving {
            if let Some(running) = control.listeners.remove(&name) {
                self.retire_listener(running, &old_pools).await;
            }
        }
        let mut errors = Vec::new();
        for listener in &spec.listeners {
            if let Some(running) = control.listeners.get(&listener.name) {
                if let Err(error) = running.runtime.update(listener) {
                    errors.push(error);
                }
                continue;
            }
            match accept::start(listener, Arc::clone(&self.shared), &self.workers) {
                Ok((runtime, accepting)) => {
                    tracing::info!(listener = %listener.name, bind = %listener.bind, "listener started");
                    control.listeners.insert(listener.name.clone(), Running { runtime, accepting });
                }
                Err(error) => errors.push(error),
            }
        }
        self.served_revision.store(config.revision, std::sync::atomic::Ordering::Release);
        Some(errors)
    }

    /// The revision of the configuration this node serves (the last one applied).
    pub fn served_revision(&self) -> u64 {
        self.served_revision.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Updates, adds and retires pools to match `spec`; returns the pools as they were.
    fn apply_pools(&self, spec: &ClusterSpec) -> Arc<PoolMap> {
        let old_pools = self.shared.pools.load_full();
        let mut retired_pools = fulcrum_policy::lock(&self.retired_pools);
        retired_pools.retain(|p| !p.is_idle());
        let mut pools = PoolMap::with_capacity_and_hasher(spec.pools.len(), Default::default());
        for pool in &spec.pools {
            let runtime = match old_pools.get(&pool.name) {
                Some(runtime) => {
                    if *runtime.spec() != *pool {
                        runtime.update(pool);
                    }
                    Arc::clone(runtime)
                }
                None => match retired_pools.iter().position(|p| p.name() == &pool.name) {
                    Some(index) => {
                        tracing::info!(pool = %pool.name, "pool added back: its open connections carry on");
                        let runtime = retired_pools.swap_remove(index);
                        runtime.update(pool);
                        runtime.start_checks();
                        runtime
                    }
                    None => {
                        tracing::info!(pool = %pool.name, backends = pool.backends.len(), "pool added");
                        let runtime = PoolRuntime::new(pool, self.workers.handles().len());
                        runtime.start_checks();
                        runtime
                    }
                },
            };
            pools.insert(pool.name.clone(), runtime);
        }
        for (name, runtime) in old_pools.iter().filter(|(name, _)| !pools.contains_key(*name)) {
            tracing::info!(pool = %name, "pool removed");
            runtime.retire();
            retired_pools.push(Arc::clone(runtime));
        }
        self.shared.pools.store(Arc::new(pools));
        old_pools
    }

    /// Keeps the counters of unchanged policies; a changed policy starts afresh and applies
    /// to the next request.
    fn apply_rate_limits(&self, spec: &ClusterSpec) {
        let old = self.shared.limiters.load_full();
        let limiters: LimiterMap = spec
            .rate_limits
            .iter()
            .map(|policy| {
                let limiter = match old.get(&policy.name) {
                    Some((previous, limiter)) if previous == policy => Arc::clone(limiter),
                    _ => Arc::new(match &self.limit_seeder {
                        Some(seeder) => {
                            let (seed, _) = seeder.seed(policy);
                            Limiter::shared(&policy.limit, DEFAULT_MAX_KEYS, seed)
                        }
                        None => Limiter::new(&policy.limit, DEFAULT_MAX_KEYS),
                    }),
                };
                (policy.name.clone(), (policy.clone(), limiter))
            })
            .collect();
        self.shared.limiters.store(Arc::new(limiters));
    }

    /// Stops a listener accepting (its socket closed once this returns) and lets its
    /// connections drain in the background for its pool's drain timeout.
    async fn retire_listener(&self, running: Running, pools: &PoolMap) {
        let Running { runtime, accepting } = running;
        let spec = runtime.spec();
        tracing::info!(listener = %spec.name, bind = %spec.bind, open = runtime.active(), "listener removed: draining");
        runtime.stop_accepting();
        for task in accepting {
            let _ = task.await;
        }
        let timeout = spec
            .default_pool
            .as_ref()
            .and_then(|name| pools.get(name))
            .map_or(FALLBACK_DRAIN, |pool| pool.spec().drain_timeout);
        fulcrum_policy::lock(&self.retired).push(Arc::clone(&runtime));
        let retired = Arc::clone(&self.retired);
        tokio::spawn(async move {
            let closed = runtime.drain(deadline_after(timeout)).await;
            if closed > 0 {
                tracing::warn!(listener = %runtime.name(), closed, "drain timeout: closed the removed listener's remaining connections");
            }
            fulcrum_policy::lock(&retired).retain(|r| !Arc::ptr_eq(r, &runtime));
        });
    }

    /// Node drain: stops accepting on every listener, lets open connections finish until
    /// `timeout`, closes what remains and reports it. Nothing starts afterwards.
    pub async fn drain(&self, timeout: Duration) -> DrainReport {
        let deadline = deadline_after(timeout);
        let (mut listeners, accepting): (Vec<_>, Vec<_>) = {
            // Not held while waiting: metrics stay readable during the drain.
            let mut control = self.control.lock().await;
            control.drained = true;
            (control.listeners.values_mut())
                .map(|r| (Arc::clone(&r.runtime), std::mem::take(&mut r.accepting)))
                .unzip()
        };
        // The accept loops end before any drain closes its listener's connections: a
        // connection accepted just before the stop is then already in its listener's
        // tracker, which the drain waits for, and not spawned after the wait saw none.
        for listener in &listeners {
            listener.stop_accepting();
        }
        for task in accepting.into_iter().flatten() {
            let _ = task.await;
        }
        listeners.extend(fulcrum_policy::lock(&self.retired).iter().cloned());
        tracing::info!(
            listeners = listeners.len(),
            open = listeners.iter().map(|l| l.active()).sum::<usize>(),
            ?timeout,
            "draining the node"
        );
        let mut drains = tokio::task::JoinSet::new();
        for listener in listeners {
            drains.spawn(async move {
                let closed = listener.drain(deadline).await;
                (listener.name().clone(), closed)
            });
        }
        let mut report = DrainReport::default();
        while let Some(result) = drains.join_next().await {
            if let Ok((name, closed)) = result
                && closed > 0
            {
                report.closed_at_deadline.push((name, closed));
            }
        }
        report.closed_at_deadline.sort();
        report
    }

    /// Drains the connections clients made to local address `address`, on every listener:
    /// politely with [`Phase::Polite`], at once with [`Phase::Closed`]; `None` forgets the
    /// address, so connections made to it later run normally.
    pub fn drain_address(&self, address: std::net::IpAddr, phase: Option<Phase>) {
        self.shared.addresses.set(address, phase);
    }

    /// The pool called `name`, as it runs now.
    pub fn pool(&self, name: &str) -> Option<Arc<PoolRuntime>> {
        self.shared.pools.load().get(name).cloned()
    }

    /// Every pool as it stands, by name, for the admin API.
    pub fn pool_status(&self) -> Vec<PoolStatus> {
        let mut pools: Vec<PoolStatus> =
            self.shared.pools.load().values().map(|pool| pool.status()).collect();
        pools.sort_by(|a, b| a.name.cmp(&b.name));
        pools
    }

    /// The running listener called `name`.
    pub async fn listener(&self, name: &str) -> Option<Arc<ListenerRuntime>> {
        self.control.lock().await.listeners.get(name).map(|r| Arc::clone(&r.runtime))
    }

    /// Every metric, in the Prometheus text format.
    pub async fn metrics(&self) -> String {
        let mut listeners: Vec<_> =
            self.control.lock().await.listeners.values().map(|r| Arc::clone(&r.runtime)).collect();
        listeners.sort_by(|a, b| a.name().cmp(b.name()));
        let retired = fulcrum_policy::lock(&self.retired).clone();
        let mut pools: Vec<_> = self.shared.pools.load().values().cloned().collect();
        pools.extend(
            fulcrum_policy::lock(&self.retired_pools).iter().filter(|p| !p.is_idle()).cloned(),
        );
        pools.sort_by(|a, b| a.name().cmp(b.name()));
        metrics::render(&listeners, &retired, &pools, &self.shared.acme.load())
    }
}

/// Whether `next` can keep the socket `current` runs on.
fn same_socket(current: &Listener, next: &Listener) -> bool {
    current.bind == next.bind && current.protocol == next.protocol
}
