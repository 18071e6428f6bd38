//! The raw IPv4 socket for VRRP (protocol 112): multicast to 224.0.0.18 or unicast to a list
//! of peers, always with TTL 255, driven through tokio's `AsyncFd`.
//!
//! socket2 rather than pnet's transport channel, which can neither join a group nor set the
//! multicast TTL.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddrV4};

use socket2::{Domain, InterfaceIndexOrAddress, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;

use crate::error::DriverError;
use crate::vip::interface_index;
use crate::wire::{IP_PROTOCOL, MULTICAST_GROUP, TTL};

/// Where advertisements go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// The VRRP multicast group.
    Multicast,
    /// Each of these peers, for links without multicast; adverts from others are dropped.
    Unicast(Vec<Ipv4Addr>),
}

impl Destination {
    /// The addresses each advertisement is sent to.
    pub fn targets(&self) -> Vec<Ipv4Addr> {
        match self {
            Destination::Multicast => vec![MULTICAST_GROUP],
            Destination::Unicast(peers) => peers.clone(),
        }
    }

    /// True if an advertisement from `source` may be heard.
    pub fn accepts_from(&self, source: Ipv4Addr) -> bool {
        match self {
            Destination::Multicast => true,
            Destination::Unicast(peers) => peers.contains(&source),
        }
    }
}

/// A raw VRRP socket bound to one interface.
pub(crate) struct AdvertSocket {
    socket: AsyncFd<Socket>,
}

impl AdvertSocket {
    /// Opens the socket on `interface`, sending from `source`.
    pub(crate) fn open(
        interface: &str,
        source: Ipv4Addr,
        destination: &Destination,
    ) -> Result<AdvertSocket, DriverError> {
        let io = |what: &str| {
            let what = format!("{what} (VRRP socket on {interface})");
            move |source| DriverError::Io { what, source }
        };
        let index = interface_index(interface)?;
        let socket =
            Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(i32::from(IP_PROTOCOL))))
                .map_err(io("open raw socket (needs CAP_NET_RAW)"))?;
        socket.bind_device(Some(interface.as_bytes())).map_err(io("bind to device"))?;
        socket.set_nonblocking(true).map_err(io("set non-blocking"))?;
        // TTL 255 either way: receivers drop anything else (RFC 9568 §7.1).
        socket.set_ttl_v4(u32::from(TTL)).map_err(io("set TTL"))?;
        socket.set_multicast_ttl_v4(u32::from(TTL)).map_err(io("set multicast TTL"))?;
        match destination {
            Destination::Multicast => {
                socket
                    .join_multicast_v4_n(&MULTICAST_GROUP, &InterfaceIndexOrAddress::Index(index))
                    .map_err(io("join 224.0.0.18"))?;
                socket.set_multicast_if_v4(&source).map_err(io("set multicast interface"))?;
                socket.set_multicast_loop_v4(false).map_err(io("disable multicast loop"))?;
                // Without this, a socket receives every group any socket on the host joined.
                socket.set_multicast_all_v4(false).map_err(io("disable IP_MULTICAST_ALL"))?;
            }
            // Bound to the primary address, so adverts leave from the address their checksum
            // and the tie-break use (and only adverts sent to it are read).
            Destination::Unicast(_) => socket
                .bind(&SocketAddrV4::new(source, 0).into())
                .map_err(io("bind to the primary address (is it on the interface?)"))?,
        }
        // SAFETY: the AsyncFd takes ownership of the socket, so its descriptor stays open and
        // unchanged for exactly as long as it is registered.
        #[allow(unsafe_code)]
        let socket = unsafe { AsyncFd::register(socket) }
            .map_err(|error| error.into_parts().1)
            .map_err(io("register with the runtime"))?;
        Ok(AdvertSocket { socket })
    }

    /// Receives one packet, IPv4 header included.
    pub(crate) async fn recv(&self, buffer: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let mut ready = self.socket.readable().await?;
            match ready.try_io(|inner| inner.get_ref().read(buffer)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Sends one advertisement (without IPv4 header) to `destination`: the group or a peer.
    pub(crate) async fn send_to(
        &self,
        advertisement: &[u8],
        destination: Ipv4Addr,
    ) -> std::io::Result<()> {
        let address = SocketAddrV4::new(destination, 0).into();
        loop {
            let mut ready = self.socket.writable().await?;
            match ready.try_io(|inner| inner.get_ref().send_to(advertisement, &address)) {
                Ok(result) => return result.map(drop),
                Err(_would_block) => continue,
            }
        }
    }
}
