//! One listener at run time: its configuration (swapped whole), counters, routes, TLS
//! certificates, open connections and their limit, and its stop and drain signals. The
//! sockets and the accept loop that feed it are `accept`'s.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use fulcrum_model::{Listener, Name, Protocol};
use fulcrum_policy::lock;
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::acme::AcmeMaterial;
use super::addresses::Drain;
use super::stats::{RouteStats, TrafficStats};
use super::tls::{AcmeSource, CertStore};
use fulcrum_policy::Router;

/// A listener that could not be started; the rest of the configuration still applies.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    /// The socket could not be bound.
    #[error("listener '{name}' cannot listen on {bind}: {source}")]
    Bind {
        /// The listener.
        name: Name,
        /// Its address.
        bind: SocketAddr,
        /// What the OS said.
        source: io::Error,
    },
    /// Its certificates cannot be used.
    #[error("listener '{name}': {source}")]
    Tls {
        /// The listener.
        name: Name,
        /// What is wrong with the certificates.
        source: super::tls::TlsError,
    },
}

/// One configured listener while it runs (and, once removed, while its connections drain).
#[derive(Debug)]
pub struct ListenerRuntime {
    name: Name,
    /// The listener as configured now; connections read it when they start.
    spec: ArcSwap<Listener>,
    stats: TrafficStats,
    /// Its open connections, so a drain can wait for them and count what remains.
    connections: TaskTracker,
    /// Cancelled to stop accepting.
    stop_accepting: CancellationToken,
    /// Cancelled to close every connection still open.
    close: CancellationToken,
    /// Children of `stop_accepting` and `close`, one pair per worker: a connection waits on
    /// its worker's, so the workers do not take the same token's lock at every connection.
    by_worker: Box<[WorkerSignals]>,
    /// Client connections admitted and not yet ended, held to `max_connections` on every
    /// worker together.
    admitted: AtomicUsize,
    /// Signalled when a connection ends or the limit changes, for accept loops at the limit.
    capacity: Notify,
    /// HTTP routes, rebuilt on every change of the listener.
    router: ArcSwap<Router<Arc<RouteStats>>>,
    /// Request counters per route name (`""` for the default pool), kept across changes.
    route_stats: Mutex<HashMap<String, Arc<RouteStats>>>,
    /// Certificates and the TLS acceptor of an https listener.
    tls: ArcSwap<Option<TlsState>>,
    /// The cluster's ACME certificates and answers, which its TLS may present.
    acme: Arc<ArcSwap<AcmeMaterial>>,
}

/// One worker's view of its listener's stop and close.
#[derive(Debug)]
struct WorkerSignals {
    stopping: CancellationToken,
    closed: CancellationToken,
}

/// An https listener's certificates and the acceptor presenting them.
struct TlsState {
    store: Arc<CertStore>,
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for TlsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsState").field("store", &self.store).finish_non_exhaustive()
    }
}

impl TlsState {
    fn load(
        spec: &Listener,
        acme: &Arc<ArcSwap<AcmeMaterial>>,
    ) -> Result<Option<TlsState>, ListenerError> {
        if spec.protocol != Protocol::Https {
            return Ok(None);
        }
        let files = spec.tls.as_ref().map(|t| t.certificates.as_slice()).unwrap_or_default();
        let acme = spec
            .acme()
            .map(|_| AcmeSource { listener: spec.name.clone(), material: Arc::clone(acme) });
        let store = CertStore::for_listener(files, acme)
            .map_err(|source| ListenerError::Tls { name: spec.name.clone(), source })?;
        let store = Arc::new(store);
        let acceptor = TlsAcceptor::from(store.server_config());
        Ok(Some(TlsState { store, acceptor }))
    }
}

impl ListenerRuntime {
    /// A listener as configured, served by `workers` workers, not accepting yet; fails if
    /// its certificates cannot be used.
    pub(crate) fn new(
        spec: &Listener,
        acme: &Arc<ArcSwap<AcmeMaterial>>,
        workers: usize,
    ) -> Result<Arc<ListenerRuntime>, ListenerError> {
        let tls = TlsState::load(spec, acme)?;
        let stop_accepting = CancellationToken::new();
        let close = CancellationToken::new();
        let by_worker = (0..workers.max(1))
            .map(|_| WorkerSignals {
                stopping: stop_accepting.child_token(),
                closed: close.child_token(),
            })
            .collect();
        let runtime = Arc::new(ListenerRuntime {
            name: spec.name.clone(),
            spec: ArcSwap::from_pointee(spec.clone()),
            stats: TrafficStats::default(),
            connections: TaskTracker::new(),
            stop_accepting,
            close,
            by_worker,
            admitted: AtomicUsize::new(0),
            capacity: Notify::new(),
            router: ArcSwap::default(),
            route_stats: Mutex::default(),
            tls: ArcSwap::from_pointee(tls),
            acme: Arc::clone(acme),
        });
        runtime.router.store(Arc::new(runtime.build_router(spec)));
        Ok(runtime)
    }

    /// The listener's name.
    pub fn name(&self) -> &Name {
        &self.name
    }

    /// The listener as configured now.
    pub fn spec(&self) -> Arc<Listener> {
        self.spec.load_full()
    }

    /// Its current spec, for a read that ends before the task next waits: no reference count
    /// is taken (which the workers would contend for), but a guard held across waits would
    /// use up the thread's few cheap ones.
    pub fn current_spec(&self) -> arc_swap::Guard<Arc<Listener>> {
        self.spec.load()
    }

    /// Its counters.
    pub fn stats(&self) -> &TrafficStats {
        &self.stats
    }

    /// Its open connections (and upgraded tunnels), which drains wait for.
    pub fn connections(&self) -> &TaskTracker {
        &self.connections
    }

    /// Client connections open now.
    pub fn active(&self) -> usize {
        self.connections.len()
    }

    /// Resolves when its connections must close.
    pub fn closed(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.worker_signals().closed.cancelled()
    }

    /// Takes a new configuration of the same socket (same address and protocol). New
    /// certificates that cannot be used are reported and the previous ones stay.
    pub fn update(&self, spec: &Listener) -> Result<(), ListenerError> {
        let files_changed = {
            let tls = self.tls.load();
            let current = tls.as_ref().as_ref().map(|t| (t.store.files(), t.store.uses_acme()));
            let next = spec.tls.as_ref().map(|t| (t.certificates.as_slice(), t.acme.is_some()));
            current != next
        };
        self.spec.store(Arc::new(spec.clone()));
        self.router.store(Arc::new(self.build_router(spec)));
        // A raised or lifted limit lets waiting accept loops go on at once.
        self.capacity.notify_waiters();
        if files_changed {
            self.tls.store(Arc::new(TlsState::load(spec, &self.acme)?));
        } else if let Some(tls) = self.tls.load().as_ref() {
            // Same files named: they may still have new contents.
            tls.store.reload_changed();
        }
        Ok(())
    }

    /// The HTTP routes now.
    pub fn router(&self) -> Arc<Router<Arc<RouteStats>>> {
        self.router.load_full()
    }

    /// The counters of `route`, or of the default pool for `None`.
    pub fn route_stats(&self, route: Option<&Name>) -> Arc<RouteStats> {
        let name = route.map_or("", |r| r.as_str());
        let mut stats = lock(&self.route_stats);
        Arc::clone(stats.entry(name.to_owned()).or_default())
    }

    /// Every route's counters, by route name (`""` for the default pool).
    pub fn all_route_stats(&self) -> Vec<(String, Arc<RouteStats>)> {
        let mut all: Vec<_> =
            lock(&self.route_stats).iter().map(|(k, v)| (k.clone(), Arc::clone(v))).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    fn build_router(&self, spec: &Listener) -> Router<Arc<RouteStats>> {
        // Counters of routes that no longer exist go with them.
        lock(&self.route_stats).retain(|name, _| {
            name.is_empty() || spec.routes.iter().any(|r| r.name.as_str() == name)
        });
        Router::new(spec, |route| self.route_stats(route))
    }

    /// The TLS acceptor of an https listener, with the certificates current now.
    pub fn tls_acceptor(&self) -> Option<TlsAcceptor> {
        self.tls.load().as_ref().as_ref().map(|t| t.acceptor.clone())
    }

    /// Reads an https listener's certificate files again if they changed.
    pub fn reload_certificates(&self) {
        if let Some(tls) = self.tls.load().as_ref() {
            tls.store.reload_changed();
        }
    }

    /// Resolves once the listener stops accepting (removed, or the node drains).
    pub fn stopping(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.worker_signals().stopping.cancelled()
    }

    /// The calling worker's children of the stop and close tokens (the first off the workers).
    fn worker_signals(&self) -> &WorkerSignals {
        &self.by_worker[super::workers::current_index() % self.by_worker.len()]
    }

    /// Stops accepting; open connections go on.
    pub fn stop_accepting(&self) {
        self.stop_accepting.cancel();
    }

    /// Stops accepting and waits for open connections up to `deadline`, then closes what is
    /// left; returns how many connections had to be closed.
    pub async fn drain(&self, deadline: tokio::time::Instant) -> usize {
        self.stop_accepting();
        self.connections.close();
        if tokio::time::timeout_at(deadline, self.connections.wait()).await.is_ok() {
            return 0;
        }
        let remaining = self.connections.len();
        self.close.cancel();
        self.connections.wait().await;
        remaining
    }
}

/// The client's side of one connection.
#[derive(Clone, Copy, Debug)]
pub struct Downstream {
    /// The client.
    pub peer: SocketAddr,
    /// The address it connected to (a VIP, for instance).
    pub local: SocketAddr,
    /// Whether it came through TLS.
    pub tls: bool,
}

impl Downstream {
    /// The local IP address as drains name it: canonical, so an IPv4 client of a dual-stack
    /// listener has its IPv4 address.
    pub fn local_ip(&self) -> IpAddr {
        self.local.ip().to_canonical()
    }
}

/// Resolves once a connection must close now: its listener's drain deadline came, or that
/// of its local address (`drain`, a VIP handed over).
pub async fn must_close(listener: &ListenerRuntime, drain: &Drain) {
    tokio::select! {
        () = listener.closed() => {}
        () = drain.closed() => {}
    }
}

/// One admitted client connection, counted against the listener's limit until dropped.
pub struct Admission(Arc<ListenerRuntime>);

impl Admission {
    /// Admits a connection if the listener is below its `max_connections`.
    fn try_new(listener: &Arc<ListenerRuntime>) -> Option<Admission> {
        let max = listener.spec.load().max_connections.map_or(usize::MAX, |m| m as usize);
        listener
            .admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .ok()?;
        Some(Admission(Arc::clone(listener)))
    }

    /// Waits until a connection may be admitted; `None` once the listener stops accepting.
    pub async fn wait(listener: &Arc<ListenerRuntime>) -> Option<Admission> {
        loop {
            if let Some(admission) = Admission::try_new(listener) {
                return Some(admission);
            }
            if !wait_for_capacity(listener).await {
                return None;
            }
        }
    }
}

/// Waits until the listener is below its limit (without reserving anything); false once it
/// stops accepting.
pub async fn wait_for_capacity(listener: &ListenerRuntime) -> bool {
    let has_room = || {
        let max = listener.spec.load().max_connections.map_or(usize::MAX, |m| m as usize);
        listener.admitted.load(Ordering::Acquire) < max
    };
    loop {
        if has_room() {
            return true;
        }
        let freed = listener.capacity.notified();
        tokio::pin!(freed);
        // Registered before the second look, so a connection ending in between is seen.
        freed.as_mut().enable();
        if has_room() {
            return true;
        }
        tokio::select! {
            () = freed => {}
            () = listener.stop_accepting.cancelled() => return false,
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.admitted.fetch_sub(1, Ordering::AcqRel);
        if self.0.spec.load().max_connections.is_some() {
            self.0.capacity.notify_waiters();
        }
    }
}
