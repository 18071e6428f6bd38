//! Helpers shared by the node's integration tests.

use std::net::SocketAddr;

/// A loopback port reserved for one test: bound (with SO_REUSEPORT, as the data plane's
/// listeners are) but not listening, so no other test gets it, and connecting to it is refused
/// until something listens on it.
pub(crate) struct Port {
    pub(crate) address: SocketAddr,
    _reserved: socket2::Socket,
}

pub(crate) fn free_port() -> Port {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    socket.set_reuse_address(true).expect("SO_REUSEADDR");
    socket.set_reuse_port(true).expect("SO_REUSEPORT");
    socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).expect("bind");
    let address = socket.local_addr().expect("address").as_socket().expect("an IP address");
    Port { address, _reserved: socket }
}
