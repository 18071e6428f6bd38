//! L4 forwarding: one client connection to one backend, chosen by the pool's balancer, with
//! the listener's rate limit counted per connection, a bounded number of connect attempts
//! (`attempt`), an optional PROXY protocol v2 header, zero-copy forwarding, an idle timeout,
//! and closing on a drain deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use fulcrum_model::RateLimitKey;
use fulcrum_policy::{InFlight, PickKey, client_key};
use tokio_util::sync::CancellationToken;

use super::attempt::Attempts;
use super::error::ErrorKind;
use super::listener::{Downstream, ListenerRuntime, must_close};
use super::pool::{BackendRuntime, PoolRuntime};
use super::proxy_header;
use super::shared::Shared;
use super::splice::{self, Activity, Direction};

/// Serves one accepted client connection to its end.
pub(crate) async fn serve(
    client: TcpStream,
    from: Downstream,
    listener: &ListenerRuntime,
    shared: &Shared,
) {
    let spec = listener.spec();
    let peer = from.peer;
    if !admitted_by_rate_limit(listener, shared, peer) {
        return;
    }
    let pool = spec.default_pool.as_ref().and_then(|name| shared.pools.load().get(name).cloned());
    // A drain deadline, of the listener or of the address (a VIP handed over), closes it.
    let drain = shared.addresses.drain_of(from.local_ip());
    let closing = || must_close(listener, &drain);
    let Some(pool) = pool else {
        // Fail fast: the client sees its connection closed, not a hang.
        listener.stats().error(ErrorKind::NoBackend);
        return;
    };
    // A node drain's deadline also cuts connections still connecting.
    let connected = tokio::select! {
        connected = connect(&pool, peer, listener) => connected,
        () = closing() => {
            listener.stats().error(ErrorKind::Drained);
            return;
        }
    };
    let Some(Connected { backend, mut upstream, close, in_flight: _in_flight }) = connected else {
        return;
    };
    // The client's connection has it from the listening socket.
    let _ = upstream.set_nodelay(true);
    if spec.proxy_protocol {
        let sent = tokio::select! {
            sent = send_proxy_header(&mut upstream, peer, from.local) => sent,
            () = closing() => Err(std::io::ErrorKind::Interrupted.into()),
        };
        if let Err(e) = sent {
            tracing::debug!(listener = %listener.name(), backend = %backend.address(), "PROXY header not sent: {e}");
            listener.stats().error(ErrorKind::Io);
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
        () = close.cancelled() => Some(ErrorKind::Drained),
        () = closing() => Some(ErrorKind::Drained),
    };
    if let Some(kind) = ended {
        listener.stats().error(kind);
        backend.stats().error(kind);
    }
}

/// Counts a new connection against the listener's rate limit: per client address, or one
/// counter for the whole listener (`route`; validation refuses a header key on TCP). A
/// refused connection is closed before any backend is tried.
fn admitted_by_rate_limit(listener: &ListenerRuntime, shared: &Shared, peer: SocketAddr) -> bool {
    let Some(policy) = &listener.spec().rate_limit else { return true };
    let Some((kind, limiter)) = shared.limiter(policy) else { return true };
    let client;
    let key: &[u8] = match kind {
        RateLimitKey::Route | RateLimitKey::Header(_) => listener.name().as_str().as_bytes(),
        RateLimitKey::ClientIp => {
            client = client_key(peer.ip());
            &client
        }
    };
    if limiter.check(key, Instant::now()).allowed {
        return true;
    }
    listener.stats().error(ErrorKind::RateLimited);
    tracing::debug!(listener = %listener.name(), %policy, %peer, "connection refused: rate limit");
    false
}

/// A connection made to a backend.
struct Connected {
    backend: Arc<BackendRuntime>,
    upstream: TcpStream,
    /// The backend's close signal as of the connect.
    close: CancellationToken,
    /// Counts the connection against the backend while it lives.
    in_flight: InFlight,
}

/// Connects to the first of the pool's choices that takes the connection (see `attempt`).
async fn connect(
    pool: &Arc<PoolRuntime>,
    peer: SocketAddr,
    listener: &ListenerRuntime,
) -> Option<Connected> {
    let selection = pool.selection();
    let pool_spec = pool.spec();
    let connect_timeout = pool_spec.connect_timeout;
    let key = PickKey { source_ip: peer.ip(), hash_key: None };
    let mut attempts = Attempts::new(&selection, &pool_spec, None, &key, Instant::now());
    let mut failure = None;
    for attempt in attempts.by_ref() {
        let backend = attempt.backend;
        let close = backend.close_signal();
        let started = Instant::now();
        match tokio::time::timeout(connect_timeout, TcpStream::connect(backend.address())).await {
            Ok(Ok(upstream)) => {
                let elapsed = started.elapsed();
                attempt.answered(pool, elapsed, true);
                listener.stats().connect_latency.observe(elapsed);
                backend.stats().total.fetch_add(1, Ordering::Relaxed);
                return Some(Connected {
                    backend: Arc::clone(backend),
                    upstream,
                    close,
                    in_flight: attempt.in_flight,
                });
            }
            Ok(Err(e)) => {
                tracing::debug!(pool = %pool.name(), backend = %backend.address(), "connect failed: {e}");
            }
            Err(_) => {
                tracing::debug!(pool = %pool.name(), backend = %backend.address(), timeout = ?connect_timeout, "connect timed out");
            }
        }
        attempt.failed(pool, ErrorKind::ConnectFailed);
        failure = Some(ErrorKind::ConnectFailed);
    }
    let failure = attempts.exhausted(failure);
    tracing::debug!(listener = %listener.name(), pool = %pool.name(), %peer, reason = failure.as_str(), fault = ?failure.fault(), "no backend took the connection");
    listener.stats().error(failure);
    None
}

/// Writes a PROXY protocol v2 header naming the client and the address it connected to.
async fn send_proxy_header(
    upstream: &mut TcpStream,
    client: SocketAddr,
    local: SocketAddr,
) -> std::io::Result<()> {
    upstream.write_all(&proxy_header::encode(client, local)?).await
}
