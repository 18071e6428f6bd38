//! Listening sockets: binding (IP_FREEBIND, so a VIP this node does not hold yet can be
//! bound; SO_REUSEPORT, one socket per worker), the accept loop with its connection limit,
//! and stopping to accept when a listener is removed or the node drains.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use fulcrum_model::{Listener, Name, Protocol};
use socket2::{Domain, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::addresses::{AddressDrains, Phase};
use super::metrics::{RouteStats, TrafficStats};
use super::router::Router;
use super::tls::{CertStore, RELOAD_EVERY};
use super::{ListenerError, Shared, http, l4};

/// Connections waiting to be accepted.
const BACKLOG: i32 = 1024;

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
    /// Client connections admitted and not yet ended, held to `max_connections` on every
    /// worker together.
    admitted: AtomicUsize,
    /// Signalled when a connection ends or the limit changes, for accept loops at the limit.
    capacity: Notify,
    /// HTTP routes, rebuilt on every change of the listener.
    router: ArcSwap<Router>,
    /// Request counters per route name (`""` for the default pool), kept across changes.
    route_stats: Mutex<HashMap<String, Arc<RouteStats>>>,
    /// Certificates and the TLS acceptor of an https listener.
    tls: ArcSwap<Option<TlsState>>,
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
    fn load(spec: &Listener) -> Result<Option<TlsState>, ListenerError> {
        if spec.protocol != Protocol::Https {
            return Ok(None);
        }
        let files = spec.tls.as_ref().map(|t| t.certificates.as_slice()).unwrap_or_default();
        let store = CertStore::load(files)
            .map_err(|source| ListenerError::Tls { name: spec.name.clone(), source })?;
        let store = Arc::new(store);
        let acceptor = TlsAcceptor::from(store.server_config());
        Ok(Some(TlsState { store, acceptor }))
    }
}

impl ListenerRuntime {
    /// The listener's name.
    pub fn name(&self) -> &Name {
        &self.name
    }

    /// The listener as configured now.
    pub fn spec(&self) -> Arc<Listener> {
        self.spec.load_full()
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
        self.close.cancelled()
    }

    /// Takes a new configuration of the same socket (same address and protocol). New
    /// certificates that cannot be used are reported and the previous ones stay.
    pub fn update(&self, spec: &Listener) -> Result<(), ListenerError> {
        let files_changed = {
            let tls = self.tls.load();
            let current = tls.as_ref().as_ref().map(|t| t.store.files());
            let next = spec.tls.as_ref().map(|t| t.certificates.as_slice());
            current != next
        };
        self.spec.store(Arc::new(spec.clone()));
        self.router.store(Arc::new(self.build_router(spec)));
        // A raised or lifted limit lets waiting accept loops go on at once.
        self.capacity.notify_waiters();
        if files_changed {
            self.tls.store(Arc::new(TlsState::load(spec)?));
        } else if let Some(tls) = self.tls.load().as_ref() {
            // Same files named: they may still have new contents.
            tls.store.reload_changed();
        }
        Ok(())
    }

    /// The HTTP routes now.
    pub fn router(&self) -> Arc<Router> {
        self.router.load_full()
    }

    /// The counters of `route`, or of the default pool for `None`.
    pub fn route_stats(&self, route: Option<&Name>) -> Arc<RouteStats> {
        let name = route.map_or("", |r| r.as_str());
        let mut stats = crate::lock(&self.route_stats);
        Arc::clone(stats.entry(name.to_owned()).or_default())
    }

    /// Every route's counters, by route name (`""` for the default pool).
    pub fn all_route_stats(&self) -> Vec<(String, Arc<RouteStats>)> {
        let mut all: Vec<_> = crate::lock(&self.route_stats)
            .iter()
            .map(|(k, v)| (k.clone(), Arc::clone(v)))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    fn build_router(&self, spec: &Listener) -> Router {
        // Counters of routes that no longer exist go with them.
        crate::lock(&self.route_stats).retain(|name, _| {
            name.is_empty() || spec.routes.iter().any(|r| r.name.as_str() == name)
        });
        Router::new(spec, |route| self.route_stats(route))
    }

    /// Resolves once the listener stops accepting (removed, or the node drains).
    pub fn stopping(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.stop_accepting.cancelled()
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

/// Resolves once a connection to local address `local` must close now: its listener's drain
/// deadline came, or that of `addresses` for `local` (a VIP handed over).
pub async fn must_close(listener: &ListenerRuntime, addresses: &AddressDrains, local: IpAddr) {
    tokio::select! {
        () = listener.closed() => {}
        () = addresses.reached(local, Phase::Closed) => {}
    }
}

/// One admitted client connection, counted against the listener's limit until dropped.
struct Admission(Arc<ListenerRuntime>);

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
    async fn wait(listener: &Arc<ListenerRuntime>) -> Option<Admission> {
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
async fn wait_for_capacity(listener: &ListenerRuntime) -> bool {
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

/// Binds `spec.bind` once per worker and starts accepting on each; connections are
/// forwarded with the pools current at the time they arrive. The task handles end when the
/// sockets are closed.
pub fn start(
    spec: &Listener,
    shared: Arc<Shared>,
    workers: &[Handle],
) -> Result<(Arc<ListenerRuntime>, Vec<JoinHandle<()>>), ListenerError> {
    let tls = TlsState::load(spec)?;
    // All sockets are bound before any accepts, so a failure leaves nothing behind.
    let sockets = workers.iter().map(|_| bind(spec.bind)).collect::<io::Result<Vec<_>>>().map_err(
        |source| ListenerError::Bind { name: spec.name.clone(), bind: spec.bind, source },
    )?;
    let runtime = Arc::new(ListenerRuntime {
        name: spec.name.clone(),
        spec: ArcSwap::from_pointee(spec.clone()),
        stats: TrafficStats::default(),
        connections: TaskTracker::new(),
        stop_accepting: CancellationToken::new(),
        close: CancellationToken::new(),
        admitted: AtomicUsize::new(0),
        capacity: Notify::new(),
        router: ArcSwap::default(),
        route_stats: Mutex::default(),
        tls: ArcSwap::from_pointee(tls),
    });
    runtime.router.store(Arc::new(runtime.build_router(spec)));
    if spec.protocol == Protocol::Https {
        tokio::spawn(reload_certificates(Arc::clone(&runtime)));
    }
    let accepting = sockets
        .into_iter()
        .zip(workers)
        .map(|(socket, worker)| {
            let listener = Arc::clone(&runtime);
            let shared = Arc::clone(&shared);
            worker.spawn(async move {
                // Registered with this worker's reactor, so its connections stay on it.
                match TcpListener::from_std(socket) {
                    Ok(socket) => accept_loop(socket, listener, shared).await,
                    Err(e) => tracing::error!(listener = %listener.name, "cannot accept: {e}"),
                }
            })
        })
        .collect();
    Ok((runtime, accepting))
}

/// Reads an https listener's certificate files again whenever they change, until it stops.
async fn reload_certificates(listener: Arc<ListenerRuntime>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(RELOAD_EVERY) => {}
            () = listener.stopping() => return,
        }
        if let Some(tls) = listener.tls.load().as_ref() {
            tls.store.reload_changed();
        }
    }
}

/// A listening socket on `address`, one of a SO_REUSEPORT group (one per worker); the address
/// need not be local yet (IP_FREEBIND), so every node binds the VIPs and a takeover needs no
/// rebind.
fn bind(address: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    match address {
        SocketAddr::V4(_) => socket.set_freebind_v4(true)?,
        SocketAddr::V6(_) => socket.set_freebind_v6(true)?,
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

async fn accept_loop(socket: TcpListener, listener: Arc<ListenerRuntime>, shared: Arc<Shared>) {
    loop {
        // A listener at its limit leaves further clients in the kernel's backlog. Each worker
        // reserves its slot only after accepting, so idle workers hold none; at worst a
        // worker holds one accepted client until a slot frees.
        if !wait_for_capacity(&listener).await {
            break;
        }
        let accepted = tokio::select! {
            accepted = socket.accept() => accepted,
            _ = listener.stop_accepting.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning on the error.
                tracing::warn!(listener = %listener.name, "accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(admission) = Admission::wait(&listener).await else { break };
        let connection = Arc::clone(&listener);
        let shared = Arc::clone(&shared);
        listener.connections.spawn(async move {
            serve(stream, peer, connection, shared).await;
            drop(admission);
        });
    }
    tracing::debug!(listener = %listener.name, "stopped accepting");
}

/// Serves one accepted connection by the listener's protocol.
async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    listener: Arc<ListenerRuntime>,
    shared: Arc<Shared>,
) {
    listener.stats.total.fetch_add(1, Ordering::Relaxed);
    // A listener bound to one address is what its connections reached; only a wildcard bind
    // needs asking which address that was.
    let bind = listener.spec().bind;
    let local = match bind.ip().is_unspecified() {
        true => stream.local_addr().unwrap_or(bind),
        false => bind,
    };
    let client = Downstream { peer, local, tls: false };
    match listener.spec.load().protocol {
        Protocol::Tcp => l4::serve(stream, client, &listener, &shared).await,
        Protocol::Http => http::serve(stream, client, listener, shared).await,
        Protocol::Https => {
            let Some(acceptor) = listener.tls.load().as_ref().as_ref().map(|t| t.acceptor.clone())
            else {
                return;
            };
            let _ = stream.set_nodelay(true);
            // The handshake is part of the request head: a client slow to finish it is cut
            // like a slowloris.
            let timeout = listener.spec.load().http.header_timeout;
            match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    http::serve(tls, Downstream { tls: true, ..client }, listener, shared).await
                }
                Ok(Err(e)) => {
                    tracing::debug!(listener = %listener.name, %peer, "TLS handshake failed: {e}")
                }
                Err(_) => {
                    tracing::debug!(listener = %listener.name, %peer, "TLS handshake timed out")
                }
            }
        }
    }
}
