//! Accepting connections: binding a listener's sockets (IP_FREEBIND, so a VIP this node does
//! not hold yet can be bound; SO_REUSEPORT, one socket per worker; TCP_NODELAY and, for HTTP,
//! delayed ACKs, which accepted connections inherit), the accept loop with its connection
//! limit, and handing each connection to L4 or L7 by the listener's protocol.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use fulcrum_model::{Listener, Protocol};
use nix::libc::{SOCK_CLOEXEC, SOCK_NONBLOCK};
use socket2::{Domain, SockRef, Socket, Type};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use super::acme::ACME_TLS_ALPN;
use super::boxed::boxed;
use super::listener::{Admission, Downstream, ListenerError, ListenerRuntime, wait_for_capacity};
use super::shared::Shared;
use super::speculative::SpeculativeTcp;
use super::tls::RELOAD_EVERY;
use super::workers::Workers;
use super::{http, l4};

/// Connections waiting to be accepted.
const BACKLOG: i32 = 1024;

/// Binds `spec.bind` once per worker and starts accepting on each; connections are
/// forwarded with the pools current at the time they arrive. The task handles end when the
/// sockets are closed.
pub(crate) fn start(
    spec: &Listener,
    shared: Arc<Shared>,
    workers: &Workers,
) -> Result<(Arc<ListenerRuntime>, Vec<JoinHandle<()>>), ListenerError> {
    // All sockets are bound before any accepts, so a failure leaves nothing behind.
    let sockets = (workers.handles().iter())
        .map(|_| bind(spec.bind, spec.protocol))
        .collect::<io::Result<Vec<_>>>()
        .map_err(|source| ListenerError::Bind {
            name: spec.name.clone(),
            bind: spec.bind,
            source,
        })?;
    let runtime = ListenerRuntime::new(spec, &shared.acme, workers.handles().len())?;
    if spec.protocol == Protocol::Https {
        tokio::spawn(reload_certificates(Arc::clone(&runtime)));
    }
    let accepting = sockets
        .into_iter()
        .enumerate()
        .map(|(index, socket)| {
            let listener = Arc::clone(&runtime);
            let shared = Arc::clone(&shared);
            let balance = Balance { index, handles: Arc::clone(workers.handles()) };
            workers.handles()[index].spawn(async move {
                // Registered with this worker's reactor: this worker accepts its share of
                // the connections (and serves them, unless it holds more than its share).
                // SAFETY: the listener owns its descriptor, which stays open and the same
                // until the `AsyncFd` holding it is dropped.
                #[allow(unsafe_code)]
                let registered =
                    unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) };
                match registered {
                    Ok(socket) => accept_loop(socket, listener, shared, balance).await,
                    Err(e) => tracing::error!(listener = %listener.name(), "cannot accept: {e}"),
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
        listener.reload_certificates();
    }
}

/// A listening socket on `address` for `protocol`, one of a SO_REUSEPORT group (one per
/// worker); the address need not be local yet (IP_FREEBIND), so every node binds the VIPs and
/// a takeover needs no rebind.
fn bind(address: SocketAddr, protocol: Protocol) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    match address {
        SocketAddr::V4(_) => socket.set_freebind_v4(true)?,
        SocketAddr::V6(_) => socket.set_freebind_v6(true)?,
    }
    // Accepted connections inherit it: heads and bodies are written whole, and nothing is
    // gained by Nagle's wait, nor by a system call per connection to turn it off.
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(BACKLOG)?;
    if protocol != Protocol::Tcp {
        // An HTTP client speaks first and waits for the answer (a TLS one for the server's
        // flight): without an immediate ACK of its first segment the answer carries the ACK,
        // a segment less per connection each way through the kernels (HAProxy does the same
        // in HTTP mode). Accepted connections inherit it. The cost, HAProxy's too: a client
        // with Nagle on that sends its head and body in two writes waits for the delayed ACK
        // (about 40 ms) before the second. L4 is left alone: its protocols are unknown.
        socket.set_tcp_quickack(false)?;
    }
    Ok(socket.into())
}

/// Where an accept loop's connections may run: its own worker (`index`) or, when that one
/// holds more than its share (`Shared::loads`), the least loaded.
struct Balance {
    index: usize,
    handles: Arc<[Handle]>,
}

async fn accept_loop(
    socket: AsyncFd<std::net::TcpListener>,
    listener: Arc<ListenerRuntime>,
    shared: Arc<Shared>,
    balance: Balance,
) {
    loop {
        // A listener at its limit leaves further clients in the kernel's backlog. Each worker
        // reserves its slot only after accepting, so idle workers hold none; at worst a
        // worker holds one accepted client until a slot frees.
        if !wait_for_capacity(&listener).await {
            break;
        }
        let accepted = tokio::select! {
            accepted = accept(&socket) => accepted,
            _ = listener.stopping() => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning on the error.
                tracing::warn!(listener = %listener.name(), "accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(admission) = Admission::wait(&listener).await else { break };
        let worker = shared.loads.pick(balance.index);
        let load = shared.loads.enter(worker);
        let connection = Arc::clone(&listener);
        let shared = Arc::clone(&shared);
        let served = async move {
            // Boxed where it is made: tokio moves a spawned future's whole state into its
            // task's allocation, so what it moves is kept small.
            boxed!(serve(stream, peer, connection, shared)).await;
            drop(admission);
            drop(load);
        };
        // Not registered with any reactor yet, so the worker that serves it registers it
        // (L4 at once, HTTP when it first waits).
        match balance.handles.get(worker).filter(|_| worker != balance.index) {
            Some(other) => drop(listener.connections().spawn_on(served, other)),
            None => drop(listener.connections().spawn(served)),
        }
    }
    tracing::debug!(listener = %listener.name(), "stopped accepting");
}

/// The next connection: non-blocking, and not registered with the reactor (L7 registers it
/// only if it has to wait).
async fn accept(
    socket: &AsyncFd<std::net::TcpListener>,
) -> io::Result<(std::net::TcpStream, SocketAddr)> {
    loop {
        let mut ready = socket.readable().await?;
        let accepted = ready
            .try_io(|socket| SockRef::from(socket.get_ref()).accept4(SOCK_NONBLOCK | SOCK_CLOEXEC));
        if let Ok(accepted) = accepted {
            let (stream, peer) = accepted?;
            let peer = peer.as_socket().ok_or_else(|| io::Error::other("not an IP peer"))?;
            return Ok((stream.into(), peer));
        }
    }
}

/// Serves one accepted connection by the listener's protocol.
async fn serve(
    stream: std::net::TcpStream,
    peer: SocketAddr,
    listener: Arc<ListenerRuntime>,
    shared: Arc<Shared>,
) {
    listener.stats().total.fetch_add(1, Ordering::Relaxed);
    // A listener bound to one address is what its connections reached; only a wildcard bind
    // needs asking which address that was.
    let bind = listener.spec().bind;
    let local = match bind.ip().is_unspecified() {
        true => stream.local_addr().unwrap_or(bind),
        false => bind,
    };
    let client = Downstream { peer, local, tls: false };
    match listener.spec().protocol {
        // Boxed, as HTTPS is: each connection's task is as large as the largest of these.
        Protocol::Tcp => match TcpStream::from_std(stream) {
            Ok(stream) => boxed!(l4::serve(stream, client, &listener, &shared)).await,
            Err(e) => tracing::warn!(listener = %listener.name(), "cannot serve a connection: {e}"),
        },
        Protocol::Http => {
            http::serve(SpeculativeTcp::new(stream), client, listener, shared, false).await
        }
        // Boxed: a handshake and a TLS stream are large, and the task of every plain
        // connection would be as large if they were part of it.
        Protocol::Https => {
            boxed!(serve_tls(SpeculativeTcp::new(stream), client, listener, shared)).await
        }
    }
}

/// Serves a connection to an https listener: the handshake (bounded like a request head),
/// then HTTP over it.
async fn serve_tls(
    stream: SpeculativeTcp,
    client: Downstream,
    listener: Arc<ListenerRuntime>,
    shared: Arc<Shared>,
) {
    let Some(acceptor) = listener.tls_acceptor() else {
        return;
    };
    let peer = client.peer;
    // The handshake is part of the request head: a client slow to finish it is cut like a
    // slowloris.
    let timeout = listener.spec().http.header_timeout;
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => {
            if tls.get_ref().1.alpn_protocol() == Some(ACME_TLS_ALPN) {
                // A TLS-ALPN-01 validation: the certificate was the answer.
                tracing::debug!(listener = %listener.name(), %peer, "ACME TLS-ALPN-01 validation answered");
                return;
            }
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            http::serve(tls, Downstream { tls: true, ..client }, listener, shared, h2).await
        }
        Ok(Err(e)) => {
            tracing::debug!(listener = %listener.name(), %peer, "TLS handshake failed: {e}")
        }
        Err(_) => tracing::debug!(listener = %listener.name(), %peer, "TLS handshake timed out"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether a connection accepted by a listener bound for `protocol` starts with quick
    /// ACKs (an ACK of each segment at once) on.
    fn accepted_quickack(protocol: Protocol) -> bool {
        let listener = bind("127.0.0.1:0".parse().unwrap(), protocol).unwrap();
        listener.set_nonblocking(false).unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        SockRef::from(&accepted).tcp_quickack().unwrap()
    }

    #[test]
    fn http_connections_delay_the_ack_of_the_request_so_the_answer_carries_it() {
        assert!(!accepted_quickack(Protocol::Http));
        assert!(!accepted_quickack(Protocol::Https));
    }

    #[test]
    fn tcp_connections_keep_the_kernels_quick_acks() {
        assert!(accepted_quickack(Protocol::Tcp));
    }
}
