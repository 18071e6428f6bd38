//! L4 forwarding: one client connection to one backend, chosen by the pool's balancer, with
//! a bounded number of connect attempts, an optional PROXY protocol v2 header, zero-copy
//! forwarding, an idle timeout, and closing on a drain deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use arc_swap::ArcSwap;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::PoolMap;
use super::listener::ListenerRuntime;
use super::metrics::ErrorKind;
use super::pool::{BackendRuntime, PoolRuntime};
use super::splice::{self, Activity, Direction};
use crate::balance::{InFlight, PickKey};

/// Backends tried for one connection before it is given up.
pub const MAX_CONNECT_ATTEMPTS: usize = 3;

/// Serves one accepted client connection to its end.
pub async fn serve(
    client: TcpStream,
    peer: SocketAddr,
    listener: &ListenerRuntime,
    pools: &ArcSwap<PoolMap>,
) {
    listener.stats().total.fetch_add(1, Ordering::Relaxed);
    let spec = listener.spec();
    let pool = spec.default_pool.as_ref().and_then(|name| pools.load().get(name).cloned());
    let Some(pool) = pool else {
        // Fail fast: the client sees its connection closed, not a hang.
        listener.stats().error(ErrorKind::NoBackend);
        return;
    };
    let Some((backend, mut upstream, _in_flight)) = connect(&pool, peer, listener).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    if spec.proxy_protocol {
        let local = client.local_addr().unwrap_or(spec.bind);
        if let Err(e) = send_proxy_header(&mut upstream, peer, local).await {
            tracing::debug!(listener = %listener.name(), backend = %backend.address(), "PROXY header not sent: {e}");
            backend.stats().error(ErrorKind::Io);
            return;
        }
    }

    let activity = Activity::new();
    let counted = |direction, bytes| {
        let (on_listener, on_backend) = match direction {
            Direction::ToBackend => (&listener.stats().bytes_in, &backend.stats().bytes_in),
            Direction::ToClient => (&listener.stats().bytes_out, &backend.stats().bytes_out),
        };
        on_listener.fetch_add(bytes, Ordering::Relaxed);
        on_backend.fetch_add(bytes, Ordering::Relaxed);
    };
    let ended = tokio::select! {
        result = splice::forward(&client, &upstream, &activity, &counted) => match result {
            Ok(()) => None,
            Err(e) => {
                tracing::debug!(listener = %listener.name(), backend = %backend.address(), %peer, "connection failed: {e}");
                Some(ErrorKind::Io)
            }
        },
        () = activity.idle_for(spec.idle_timeout) => Some(ErrorKind::IdleTimeout),
        () = backend.closed() => Some(ErrorKind::Drained),
        () = listener.closed() => Some(ErrorKind::Drained),
    };
    if let Some(kind) = ended {
        listener.stats().error(kind);
        backend.stats().error(kind);
    }
}

/// Connects to the first backend of the pool's choices that takes the connection, trying at
/// most [`MAX_CONNECT_ATTEMPTS`]; the returned guard counts the connection as in flight.
async fn connect(
    pool: &Arc<PoolRuntime>,
    peer: SocketAddr,
    listener: &ListenerRuntime,
) -> Option<(Arc<BackendRuntime>, TcpStream, InFlight)> {
    let selection = pool.selection();
    let connect_timeout = pool.spec().connect_timeout;
    let key = PickKey { source_ip: peer.ip(), hash_key: None };
    let mut rng = fastrand::Rng::new();
    let mut attempts = 0;
    let mut failure = ErrorKind::NoBackend;
    for index in selection.balancer.choices(&key, Instant::now(), &mut rng) {
        if attempts == MAX_CONNECT_ATTEMPTS {
            break;
        }
        let Some(backend) = selection.backends.get(index) else { continue };
        if backend.max_connections().is_some_and(|max| backend.load().active() >= u64::from(max)) {
            backend.stats().error(ErrorKind::BackendAtLimit);
            failure = ErrorKind::BackendAtLimit;
            continue;
        }
        attempts += 1;
        let in_flight = backend.load().begin();
        let started = Instant::now();
        let outcome =
            tokio::time::timeout(connect_timeout, TcpStream::connect(backend.address())).await;
        match outcome {
            Ok(Ok(stream)) => {
                backend.stats().connect_latency.observe(started.elapsed());
                backend.stats().total.fetch_add(1, Ordering::Relaxed);
                pool.record_connect(backend, true);
                return Some((Arc::clone(backend), stream, in_flight));
            }
            Ok(Err(e)) => {
                tracing::debug!(pool = %pool.name(), backend = %backend.address(), "connect failed: {e}");
            }
            Err(_) => {
                tracing::debug!(pool = %pool.name(), backend = %backend.address(), timeout = ?connect_timeout, "connect timed out");
            }
        }
        backend.stats().error(ErrorKind::ConnectFailed);
        pool.record_connect(backend, false);
        failure = ErrorKind::ConnectFailed;
    }
    tracing::debug!(listener = %listener.name(), pool = %pool.name(), %peer, attempts, reason = failure.as_str(), "no backend took the connection");
    listener.stats().error(failure);
    None
}

/// Writes a PROXY protocol v2 header naming the client and the address it connected to.
async fn send_proxy_header(
    upstream: &mut TcpStream,
    client: SocketAddr,
    local: SocketAddr,
) -> std::io::Result<()> {
    use ppp::v2::{Builder, Command, Protocol, Version};
    let header =
        Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, (client, local))
            .build()?;
    upstream.write_all(&header).await
}
