//! Pools and backends at run time: what the configuration says of them, what health checks
//! and passive failures say, and the balancer over the backends that may take traffic now.
//!
//! A [`PoolRuntime`] lives as long as its pool is configured and a [`BackendRuntime`] as long
//! as its backend is (and then until its last connection ends), so counters, health and
//! balancer state survive configuration changes. The data path reads a pool's
//! [`Selection`] through an `ArcSwap`; every change that alters who may take traffic builds
//! a new one.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use fulcrum_model::api::{BackendStatus, PoolStatus};
use fulcrum_model::{AdminState, Backend, Name, Pool};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use fulcrum_policy::health::next_check_in;
use fulcrum_policy::{Balancer, Health, Hysteresis, Load, Member, PassiveEjection, lock};

use super::fast_map::FastMap;
use super::probe::probe;
use super::stats::TrafficStats;
use super::upstream::{self, UpstreamClient};

/// One backend of one pool.
#[derive(Debug)]
pub struct BackendRuntime {
    address: SocketAddr,
    pool: Name,
    /// What the configuration says of it; replaced on every change.
    spec: ArcSwap<Backend>,
    load: Arc<Load>,
    stats: Arc<TrafficStats>,
    hysteresis: Mutex<Hysteresis>,
    passive: Mutex<PassiveEjection>,
    /// Set while `passive` has failures to forget, so a success needs no lock otherwise.
    failing: AtomicBool,
    checks_passed: AtomicU64,
    checks_failed: AtomicU64,
    ejections: AtomicU64,
    /// Set once it left the configuration; it stays alive while connections hold it.
    removed: AtomicBool,
    /// Cancelled when its open connections must close (drain deadline, disabled); replaced by
    /// a fresh one when the backend becomes active again, so new connections are not closed.
    close: Mutex<CancellationToken>,
    /// The pending close of a drain and when it fires; aborted if the backend becomes active
    /// again, replaced if a shorter drain timeout arrives.
    drain_deadline: Mutex<Option<(tokio::time::Instant, AbortHandle)>>,
}

impl BackendRuntime {
    fn new(pool: &Pool, spec: Backend) -> BackendRuntime {
        let check = pool.health_check.clone().unwrap_or_default();
        BackendRuntime {
            address: spec.address,
            pool: pool.name.clone(),
            spec: ArcSwap::from_pointee(spec),
            load: Arc::default(),
            stats: Arc::default(),
            hysteresis: Mutex::new(Hysteresis::new(check.rise, check.fall)),
            passive: Mutex::default(),
            failing: AtomicBool::new(false),
            checks_passed: AtomicU64::new(0),
            checks_failed: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
            removed: AtomicBool::new(false),
            close: Mutex::new(CancellationToken::new()),
            drain_deadline: Mutex::new(None),
        }
    }

    /// Where it listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Its in-flight count and balancer state.
    pub fn load(&self) -> &Arc<Load> {
        &self.load
    }

    /// Its traffic counters.
    pub fn stats(&self) -> &TrafficStats {
        &self.stats
    }

    /// Its traffic counters, for a response body that outlives the request's borrow.
    pub fn shared_stats(&self) -> Arc<TrafficStats> {
        Arc::clone(&self.stats)
    }

    /// Its configured connection limit.
    pub fn max_connections(&self) -> Option<u32> {
        self.spec.load().max_connections
    }

    /// What active checks say.
    pub fn health(&self) -> Health {
        lock(&self.hysteresis).state()
    }

    /// Active checks passed and failed so far.
    pub fn check_results(&self) -> (u64, u64) {
        (self.checks_passed.load(Ordering::Relaxed), self.checks_failed.load(Ordering::Relaxed))
    }

    /// Passive ejections so far.
    pub fn ejections(&self) -> u64 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// The signal a new connection watches: cancelled when it must close.
    pub fn close_signal(&self) -> CancellationToken {
        lock(&self.close).clone()
    }

    /// How it stands, for the admin API.
    pub fn status(&self) -> BackendStatus {
        let spec = self.spec.load();
        let admin = match (self.removed.load(Ordering::Relaxed), spec.state) {
            (true, _) => "removed",
            (false, AdminState::Active) => "active",
            (false, AdminState::Draining) => "draining",
            (false, AdminState::Disabled) => "disabled",
        };
        let health = match self.health() {
            Health::Unknown => "unchecked",
            Health::Up => "up",
            Health::Down => "down",
        };
        BackendStatus {
            address: self.address,
            health: health.to_owned(),
            admin: admin.to_owned(),
            weight: spec.weight,
            active: self.load.active(),
        }
    }

    /// Whether it takes no new traffic but still has connections to finish.
    pub fn is_draining(&self) -> bool {
        let leaving =
            self.removed.load(Ordering::Relaxed) || self.spec.load().state != AdminState::Active;
        leaving && !lock(&self.close).is_cancelled() && self.load.active() > 0
    }

    /// Whether new traffic may go to it now.
    pub fn is_selectable(&self) -> bool {
        let spec = self.spec.load();
        !self.removed.load(Ordering::Relaxed)
            && spec.state == AdminState::Active
            && spec.weight > 0
            && self.health().takes_traffic()
            && !lock(&self.passive).is_ejected(Instant::now())
    }

    /// Takes a connection outcome from the data path; returns the ejection period when this
    /// failure ejected the backend. `now` is read only for a failure: the usual success reads
    /// no clock.
    pub fn record_connect(
        &self,
        succeeded: bool,
        now: impl FnOnce() -> Instant,
    ) -> Option<Duration> {
        if succeeded && !self.failing.load(Ordering::Relaxed) {
            return None;
        }
        let mut passive = lock(&self.passive);
        self.failing.store(!succeeded, Ordering::Relaxed);
        if succeeded {
            passive.record_success();
            return None;
        }
        let period = passive.record_failure(now())?;
        self.ejections.fetch_add(1, Ordering::Relaxed);
        Some(period)
    }

    /// Takes an active check result; returns the new state when it flipped, and whether a
    /// passive ejection ended.
    fn record_check(&self, passed: bool) -> (Option<Health>, bool) {
        let counter = if passed { &self.checks_passed } else { &self.checks_failed };
        counter.fetch_add(1, Ordering::Relaxed);
        let change = lock(&self.hysteresis).record(passed);
        let mut passive = lock(&self.passive);
        // A passing check outranks an ejection: the backend returns after `rise` checks, not
        // after whatever is left of an ejection from while it was down or restarting.
        let unejected = passed && passive.is_ejected(Instant::now());
        if unejected {
            passive.clear();
            self.failing.store(false, Ordering::Relaxed);
        }
        (change, unejected)
    }

    /// Starts or stops its drain after a configuration change: `Draining` or removed closes
    /// what remains after `timeout`, `Disabled` closes it now, `Active` calls a drain off.
    fn follow_admin_state(self: &Arc<Self>, timeout: Duration) {
        let leaving = self.removed.load(Ordering::Relaxed);
        let state = if leaving { AdminState::Draining } else { self.spec.load().state };
        let mut pending = lock(&self.drain_deadline);
        match state {
            AdminState::Active => {
                if let Some((_, handle)) = pending.take() {
                    handle.abort();
                }
                let mut close = lock(&self.close);
                if close.is_cancelled() {
                    *close = CancellationToken::new();
                }
            }
            AdminState::Disabled => lock(&self.close).cancel(),
            AdminState::Draining => {
                let deadline = crate::time::deadline_after(timeout);
                if lock(&self.close).is_cancelled()
                    || pending.as_ref().is_some_and(|(at, _)| *at <= deadline)
                {
                    return;
                }
                if let Some((_, earlier)) = pending.take() {
                    earlier.abort();
                }
                tracing::info!(pool = %self.pool, backend = %self.address, remaining = self.load.active(), ?timeout, "backend draining");
                let backend = Arc::clone(self);
                let task = tokio::spawn(async move {
                    tokio::time::sleep_until(deadline).await;
                    let remaining = backend.load.active();
                    if remaining > 0 {
                        tracing::warn!(pool = %backend.pool, backend = %backend.address, remaining, "drain timeout: closing the backend's remaining connections");
                    }
                    lock(&backend.close).cancel();
                });
                *pending = Some((deadline, task.abort_handle()));
            }
        }
    }
}

/// A client per backend of `spec`, reusing those of `kept` (and their pooled connections).
fn clients_for(
    spec: &Pool,
    kept: Option<&FastMap<SocketAddr, UpstreamClient>>,
) -> FastMap<SocketAddr, UpstreamClient> {
    spec.backends
        .iter()
        .map(|b| {
            let client = kept.and_then(|k| k.get(&b.address).cloned()).unwrap_or_else(|| {
                upstream::client(b.address, spec.upstream, spec.connect_timeout)
            });
            (b.address, client)
        })
        .collect()
}

/// What one retry costs in the retry budget: retries stay under one per five requests.
const RETRY_COST: i64 = 5;
/// The budget a pool starts with, so a cold pool may still retry a few requests.
const RETRY_RESERVE: i64 = 10 * RETRY_COST;
/// The most the budget saves up.
const RETRY_TOKENS_MAX: i64 = 100 * RETRY_COST;

/// Who may take new traffic in a pool now, with the balancer over them.
#[derive(Debug)]
pub struct Selection {
    /// Index-aligned with the balancer's members.
    pub backends: Vec<Arc<BackendRuntime>>,
    /// The pool's algorithm over `backends`.
    pub balancer: Balancer,
}

/// One pool.
#[derive(Debug)]
pub struct PoolRuntime {
    name: Name,
    spec: ArcSwap<Pool>,
    /// Every configured backend, whatever its state.
    backends: ArcSwap<Vec<Arc<BackendRuntime>>>,
    /// Removed backends whose connections are still open: shown in metrics, and brought back
    /// (connections, load and all) if the same address is added again.
    leaving: Mutex<Vec<Arc<BackendRuntime>>>,
    selection: ArcSwap<Selection>,
    /// Round-robin position, kept across rebuilds so a change does not restart at the first.
    cursor: Arc<AtomicU64>,
    /// Serializes rebuilds of `selection` so a stale one never replaces a newer one.
    rebuild: Mutex<()>,
    /// Pooled HTTP connections per backend, one set per worker so a request and the
    /// connection it uses live on the same thread; kept for unchanged backends.
    clients: Vec<ArcSwap<FastMap<SocketAddr, UpstreamClient>>>,
    /// Retries allowed: each request adds one, each retry costs [`RETRY_COST`], so retries
    /// stay under a fifth of requests (plus a small reserve) even when every backend fails.
    retry_tokens: AtomicI64,
    /// The active-check tasks of the current health-check settings; each holds the pool, so
    /// [`PoolRuntime::retire`] stops them.
    checks: Mutex<Vec<AbortHandle>>,
}

impl PoolRuntime {
    /// A pool as configured, served by `workers` workers; its health checks start with
    /// [`PoolRuntime::start_checks`].
    pub fn new(spec: &Pool, workers: usize) -> Arc<PoolRuntime> {
        let backends: Vec<_> =
            spec.backends.iter().map(|b| Arc::new(BackendRuntime::new(spec, b.clone()))).collect();
        let cursor = Arc::new(AtomicU64::new(0));
        let pool = Arc::new(PoolRuntime {
            name: spec.name.clone(),
            spec: ArcSwap::from_pointee(spec.clone()),
            backends: ArcSwap::from_pointee(backends),
            leaving: Mutex::new(Vec::new()),
            selection: ArcSwap::from_pointee(Selection {
                backends: Vec::new(),
                balancer: Balancer::new(&spec.algorithm, Vec::new(), Arc::clone(&cursor)),
            }),
            cursor,
            rebuild: Mutex::new(()),
            clients: (0..workers.max(1))
                .map(|_| ArcSwap::from_pointee(clients_for(spec, None)))
                .collect(),
            retry_tokens: AtomicI64::new(RETRY_RESERVE),
            checks: Mutex::new(Vec::new()),
        });
        pool.rebuild_selection();
        pool
    }

    /// The pool's name.
    pub fn name(&self) -> &Name {
        &self.name
    }

    /// The pool as configured now.
    pub fn spec(&self) -> Arc<Pool> {
        self.spec.load_full()
    }

    /// Who may take new traffic now.
    pub fn selection(&self) -> Arc<Selection> {
        self.selection.load_full()
    }

    /// The pooled HTTP client of `backend` for the calling worker.
    pub(crate) fn client(&self, backend: SocketAddr) -> Option<UpstreamClient> {
        // Never empty: built with at least one set.
        let index = super::workers::current_index() % self.clients.len();
        self.clients[index].load().get(&backend).cloned()
    }

    /// Counts a request for the retry budget.
    pub fn note_request(&self) {
        // Read first: a full budget (the usual case) is then only read, so the workers share
        // its cache line instead of taking it from each other twice per request.
        if self.retry_tokens.load(Ordering::Relaxed) >= RETRY_TOKENS_MAX {
            return;
        }
        let tokens = self.retry_tokens.fetch_add(1, Ordering::Relaxed);
        if tokens >= RETRY_TOKENS_MAX {
            self.retry_tokens.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Takes a retry from the budget, if there is one left.
    pub fn try_retry(&self) -> bool {
        self.retry_tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                (t >= RETRY_COST).then_some(t - RETRY_COST)
            })
            .is_ok()
    }

    /// Every configured backend, then the removed ones that still have connections.
    pub fn all_backends(&self) -> Vec<Arc<BackendRuntime>> {
        let mut all = self.backends.load().as_ref().clone();
        let mut leaving = lock(&self.leaving);
        leaving.retain(|b| b.load.active() > 0);
        all.extend(leaving.iter().cloned());
        all
    }

    /// Whether some backend may take new traffic now.
    pub fn can_serve(&self) -> bool {
        self.backends.load().iter().any(|b| b.is_selectable())
    }

    /// Its backends as they stand, for the admin API.
    pub fn status(&self) -> PoolStatus {
        PoolStatus {
            name: self.name.to_string(),
            backends: self.all_backends().iter().map(|b| b.status()).collect(),
        }
    }

    /// Whether nothing of the pool is in use any more.
    pub fn is_idle(&self) -> bool {
        self.all_backends().iter().all(|b| b.load.active() == 0)
    }

    /// Applies a new configuration of this pool: backends kept by address (with their
    /// counters and health), new ones added, removed ones drained.
    pub fn update(self: &Arc<Self>, spec: &Pool) {
        let old_spec = self.spec.load_full();
        let old = self.backends.load_full();
        let mut leaving = lock(&self.leaving);
        leaving.retain(|b| b.load.active() > 0);
        let mut next = Vec::with_capacity(spec.backends.len());
        for backend in &spec.backends {
            let kept = match old.iter().find(|b| b.address == backend.address) {
                Some(runtime) => Arc::clone(runtime),
                None => match leaving.iter().position(|b| b.address == backend.address) {
                    Some(index) => {
                        tracing::info!(pool = %self.name, backend = %backend.address, "backend added back: its open connections carry on");
                        leaving.swap_remove(index)
                    }
                    None => {
                        tracing::info!(pool = %self.name, backend = %backend.address, "backend added");
                        Arc::new(BackendRuntime::new(spec, backend.clone()))
                    }
                },
            };
            kept.spec.store(Arc::new(backend.clone()));
            kept.removed.store(false, Ordering::Relaxed);
            next.push(kept);
        }
        for gone in old.iter().filter(|b| spec.backend(b.address).is_none()) {
            tracing::info!(pool = %self.name, backend = %gone.address, remaining = gone.load.active(), "backend removed");
            gone.removed.store(true, Ordering::Relaxed);
            leaving.push(Arc::clone(gone));
        }
        let affected: Vec<_> = leaving.iter().chain(next.iter()).cloned().collect();
        drop(leaving);
        let same_way =
            old_spec.upstream == spec.upstream && old_spec.connect_timeout == spec.connect_timeout;
        for clients in &self.clients {
            let kept = same_way.then(|| clients.load_full());
            clients.store(Arc::new(clients_for(spec, kept.as_deref())));
        }
        self.spec.store(Arc::new(spec.clone()));
        self.backends.store(Arc::new(next));
        for backend in affected {
            backend.follow_admin_state(spec.drain_timeout);
        }
        self.rebuild_selection();
        let checks_changed = old_spec.health_check != spec.health_check
            || old.len() != spec.backends.len()
            || old.iter().any(|b| spec.backend(b.address).is_none())
            || old.iter().any(|b| b.removed.load(Ordering::Relaxed));
        if checks_changed {
            self.start_checks();
        }
    }

    /// The pool left the configuration: it takes nothing new, its checks stop, and its
    /// backends drain.
    pub fn retire(&self) {
        self.stop_checks();
        let timeout = self.spec.load().drain_timeout;
        for backend in self.backends.load().iter() {
            backend.removed.store(true, Ordering::Relaxed);
            backend.follow_admin_state(timeout);
        }
        self.rebuild_selection();
    }

    /// Builds the selection anew from every backend's current state.
    pub fn rebuild_selection(&self) {
        let _serialized = lock(&self.rebuild);
        let spec = self.spec.load();
        let backends: Vec<_> =
            self.backends.load().iter().filter(|b| b.is_selectable()).cloned().collect();
        let members = backends
            .iter()
            .map(|b| Member {
                address: b.address,
                weight: b.spec.load().weight,
                load: Arc::clone(&b.load),
            })
            .collect();
        let balancer = Balancer::new(&spec.algorithm, members, Arc::clone(&self.cursor));
        self.selection.store(Arc::new(Selection { backends, balancer }));
    }

    /// A connection to `backend` failed or succeeded; a failure streak ejects it for a while.
    pub fn record_connect(self: &Arc<Self>, backend: &BackendRuntime, succeeded: bool) {
        let Some(period) = backend.record_connect(succeeded, Instant::now) else {
            return;
        };
        tracing::warn!(pool = %self.name, backend = %backend.address, ejected_for = ?period, "backend ejected after consecutive connection failures");
        // A rebuild can fill a large Maglev table: off the worker serving connections.
        let pool = Arc::clone(self);
        tokio::task::spawn_blocking(move || pool.rebuild_selection());
        let pool = Arc::clone(self);
        let address = backend.address;
        tokio::spawn(async move {
            tokio::time::sleep(period).await;
            tracing::info!(pool = %pool.name, backend = %address, "ejection over: backend may take traffic again");
            let _ = tokio::task::spawn_blocking(move || pool.rebuild_selection()).await;
        });
    }

    /// (Re)starts one active-check task per backend under the current settings.
    pub fn start_checks(self: &Arc<Self>) {
        self.stop_checks();
        let Some(check) = self.spec.load().health_check.clone() else {
            // Without active checks, no earlier verdict may keep a backend out.
            for backend in self.backends.load().iter() {
                *lock(&backend.hysteresis) = Hysteresis::new(1, 1);
            }
            self.rebuild_selection();
            return;
        };
        let mut tasks = lock(&self.checks);
        for backend in self.backends.load().iter() {
            lock(&backend.hysteresis).retune(check.rise, check.fall);
        }
        for backend in self.backends.load().iter() {
            let pool = Arc::clone(self);
            let backend = Arc::clone(backend);
            let check = check.clone();
            let task = tokio::spawn(async move {
                let mut rng = fastrand::Rng::new();
                // The first check runs at once, so an unknown backend is decided quickly.
                loop {
                    let result = probe(backend.address, &check).await;
                    let (change, unejected) = backend.record_check(result.is_ok());
                    match (&result, change) {
                        (Ok(()), Some(state)) => {
                            tracing::info!(pool = %pool.name, backend = %backend.address, %state, "backend health changed: check passed")
                        }
                        (Err(reason), Some(state)) => {
                            tracing::warn!(pool = %pool.name, backend = %backend.address, %state, %reason, "backend health changed: check failed")
                        }
                        (_, None) => {}
                    }
                    if unejected {
                        tracing::info!(pool = %pool.name, backend = %backend.address, "ejection ended early: a health check passed");
                    }
                    if change.is_some() || unejected {
                        pool.rebuild_selection();
                    }
                    tokio::time::sleep(next_check_in(check.interval, &mut rng)).await;
                }
            });
            tasks.push(task.abort_handle());
        }
    }

    fn stop_checks(&self) {
        for task in lock(&self.checks).drain(..) {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_fill_the_retry_budget_up_to_its_cap_and_each_retry_spends_its_cost() {
        let spec: Pool = toml::from_str("name = \"web\"").expect("a pool spec");
        let pool = PoolRuntime::new(&spec, 1);
        let retries =
            |pool: &PoolRuntime| std::iter::from_fn(|| pool.try_retry().then_some(())).count();
        assert_eq!(retries(&pool), (RETRY_RESERVE / RETRY_COST) as usize, "the reserve");
        for _ in 0..RETRY_COST * 3 {
            pool.note_request();
        }
        assert_eq!(retries(&pool), 3, "one retry per five requests");
        for _ in 0..RETRY_TOKENS_MAX * 3 {
            pool.note_request();
        }
        assert_eq!(pool.retry_tokens.load(Ordering::Relaxed), RETRY_TOKENS_MAX, "capped");
        assert_eq!(retries(&pool), (RETRY_TOKENS_MAX / RETRY_COST) as usize);
    }
}
