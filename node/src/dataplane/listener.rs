//! Listening sockets: binding (IP_FREEBIND, so a VIP this node does not hold yet can be
//! bound; SO_REUSEPORT, one socket per worker), the accept loop with its connection limit,
//! and stopping to accept when a listener is removed or the node drains.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arc_swap::ArcSwap;
use fulcrum_model::{Listener, Name};
use socket2::{Domain, Socket, Type};
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::metrics::TrafficStats;
use super::{PoolMap, l4};

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

    /// Client connections open now.
    pub fn active(&self) -> usize {
        self.connections.len()
    }

    /// Resolves when its connections must close.
    pub fn closed(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.close.cancelled()
    }

    /// Takes a new configuration of the same socket (same address and protocol).
    pub fn update(&self, spec: &Listener) {
        self.spec.store(Arc::new(spec.clone()));
        // A raised or lifted limit lets waiting accept loops go on at once.
        self.capacity.notify_waiters();
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
    pools: Arc<ArcSwap<PoolMap>>,
    workers: &[Handle],
) -> io::Result<(Arc<ListenerRuntime>, Vec<JoinHandle<()>>)> {
    // All sockets are bound before any accepts, so a failure leaves nothing behind.
    let sockets = workers.iter().map(|_| bind(spec.bind)).collect::<io::Result<Vec<_>>>()?;
    let runtime = Arc::new(ListenerRuntime {
        name: spec.name.clone(),
        spec: ArcSwap::from_pointee(spec.clone()),
        stats: TrafficStats::default(),
        connections: TaskTracker::new(),
        stop_accepting: CancellationToken::new(),
        close: CancellationToken::new(),
        admitted: AtomicUsize::new(0),
        capacity: Notify::new(),
    });
    let accepting = sockets
        .into_iter()
        .zip(workers)
        .map(|(socket, worker)| {
            let listener = Arc::clone(&runtime);
            let pools = Arc::clone(&pools);
            worker.spawn(async move {
                // Registered with this worker's reactor, so its connections stay on it.
                match TcpListener::from_std(socket) {
                    Ok(socket) => accept_loop(socket, listener, pools).await,
                    Err(e) => tracing::error!(listener = %listener.name, "cannot accept: {e}"),
                }
            })
        })
        .collect();
    Ok((runtime, accepting))
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

async fn accept_loop(
    socket: TcpListener,
    listener: Arc<ListenerRuntime>,
    pools: Arc<ArcSwap<PoolMap>>,
) {
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
        let pools = Arc::clone(&pools);
        listener.connections.spawn(async move {
            l4::serve(stream, peer, &connection, &pools).await;
            drop(admission);
        });
    }
    tracing::debug!(listener = %listener.name, "stopped accepting");
}
