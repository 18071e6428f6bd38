//! The raw VRRP socket (IP protocol 112) of one family on one interface: multicast to
//! 224.0.0.18 or ff02::12, or unicast to a list of peers, always with TTL or hop limit 255,
//! driven through tokio's `AsyncFd`.
//!
//! socket2 rather than pnet's transport channel, which can neither join a group nor set the
//! multicast TTL. An IPv6 raw socket hands back the payload alone: the hop limit and the
//! destination come as ancillary data (nix's `recvmsg`), and the source (the link-local
//! address, which the checksum covers) is set on every send the same way.

use std::io::{IoSlice, IoSliceMut, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, SockaddrIn6, recvmsg, sendmsg, setsockopt,
    sockopt,
};
use socket2::{Domain, InterfaceIndexOrAddress, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;

use crate::error::DriverError;
use crate::vip::interface_index;
use crate::wire::{
    Datagram, Family, IP_PROTOCOL, Ipv4Error, MULTICAST_GROUP, MULTICAST_GROUP_V6, TTL,
};

/// Where advertisements go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// The VRRP multicast group of the router's family.
    Multicast,
    /// Each of these peers (those of the router's family), for links without multicast;
    /// adverts from others are dropped.
    Unicast(Vec<IpAddr>),
}

impl Destination {
    /// The addresses each advertisement of `family` is sent to.
    pub fn targets(&self, family: Family) -> Vec<IpAddr> {
        match self {
            Destination::Multicast => vec![family.multicast_group()],
            Destination::Unicast(peers) => {
                peers.iter().copied().filter(|peer| Family::of(*peer) == family).collect()
            }
        }
    }

    /// True if an advertisement from `source` may be heard.
    pub fn accepts_from(&self, source: IpAddr) -> bool {
        match self {
            Destination::Multicast => true,
            Destination::Unicast(peers) => peers.contains(&source),
        }
    }
}

/// A raw VRRP socket of one family bound to one interface.
pub(crate) struct AdvertSocket {
    socket: AsyncFd<Socket>,
    /// The source every IPv6 advertisement is sent from, and the interface, as ancillary data.
    ipv6_source: Option<nix::libc::in6_pktinfo>,
}

impl AdvertSocket {
    /// Opens the socket on `interface`, sending from `source`, whose family is the socket's.
    pub(crate) fn open(
        interface: &str,
        source: IpAddr,
        destination: &Destination,
    ) -> Result<AdvertSocket, DriverError> {
        let io = |what: &str| {
            let what = format!("{what} (VRRP socket on {interface})");
            move |source| DriverError::Io { what, source }
        };
        let index = interface_index(interface)?;
        let domain = match source {
            IpAddr::V4(_) => Domain::IPV4,
            IpAddr::V6(_) => Domain::IPV6,
        };
        let socket = Socket::new(domain, Type::RAW, Some(Protocol::from(i32::from(IP_PROTOCOL))))
            .map_err(io("open raw socket (needs CAP_NET_RAW)"))?;
        socket.bind_device(Some(interface.as_bytes())).map_err(io("bind to device"))?;
        socket.set_nonblocking(true).map_err(io("set non-blocking"))?;
        let ipv6_source = match source {
            IpAddr::V4(source) => {
                open_ipv4(&socket, index, source, destination).map_err(io("set up IPv4"))?;
                None
            }
            IpAddr::V6(source) => {
                open_ipv6(&socket, index, source, destination).map_err(io("set up IPv6"))?;
                Some(nix::libc::in6_pktinfo {
                    ipi6_addr: nix::libc::in6_addr { s6_addr: source.octets() },
                    ipi6_ifindex: index,
                })
            }
        };
        // SAFETY: the AsyncFd takes ownership of the socket, so its descriptor stays open and
        // unchanged for exactly as long as it is registered.
        #[allow(unsafe_code)]
        let socket = unsafe { AsyncFd::register(socket) }
            .map_err(|error| error.into_parts().1)
            .map_err(io("register with the runtime"))?;
        Ok(AdvertSocket { socket, ipv6_source })
    }

    /// Receives one datagram into `buffer`: its IP header fields and the VRRP message. An
    /// IPv4 header that cannot be read is the inner error.
    pub(crate) async fn recv<'b>(
        &self,
        buffer: &'b mut [u8],
    ) -> std::io::Result<Result<Datagram<'b>, Ipv4Error>> {
        if self.ipv6_source.is_none() {
            let length = self.read(|mut socket| socket.read(buffer)).await?;
            return Ok(Datagram::parse_ipv4(&buffer[..length]));
        }
        let (length, src, dst, hop_limit) = self.read(|socket| recv_ipv6(socket, buffer)).await?;
        Ok(Ok(Datagram {
            src: IpAddr::V6(src),
            dst: IpAddr::V6(dst),
            ttl: hop_limit,
            protocol: IP_PROTOCOL,
            payload: &buffer[..length],
        }))
    }

    async fn read<T>(
        &self,
        mut read: impl FnMut(&Socket) -> std::io::Result<T>,
    ) -> std::io::Result<T> {
        loop {
            let mut ready = self.socket.readable().await?;
            match ready.try_io(|inner| read(inner.get_ref())) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Sends one advertisement (without IP header) to `destination`: the group or a peer.
    pub(crate) async fn send_to(
        &self,
        advertisement: &[u8],
        destination: IpAddr,
    ) -> std::io::Result<()> {
        loop {
            let mut ready = self.socket.writable().await?;
            let sent = ready.try_io(|inner| match (destination, &self.ipv6_source) {
                (IpAddr::V6(destination), Some(source)) => {
                    let fd = inner.get_ref().as_raw_fd();
                    let address = SockaddrIn6::from(SocketAddrV6::new(
                        destination,
                        0,
                        0,
                        source.ipi6_ifindex,
                    ));
                    let source = [ControlMessage::Ipv6PacketInfo(source)];
                    let payload = [IoSlice::new(advertisement)];
                    sendmsg(fd, &payload, &source, MsgFlags::empty(), Some(&address))
                        .map(drop)
                        .map_err(std::io::Error::from)
                }
                (IpAddr::V4(destination), None) => inner
                    .get_ref()
                    .send_to(advertisement, &SocketAddrV4::new(destination, 0).into())
                    .map(drop),
                (destination, _) => Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("{destination} is not of the socket's family"),
                )),
            });
            match sent {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }
}

fn open_ipv4(
    socket: &Socket,
    index: u32,
    source: Ipv4Addr,
    destination: &Destination,
) -> std::io::Result<()> {
    // TTL 255 either way: receivers drop anything else (RFC 9568 §7.1).
    socket.set_ttl_v4(u32::from(TTL))?;
    socket.set_multicast_ttl_v4(u32::from(TTL))?;
    match destination {
        Destination::Multicast => {
            socket.join_multicast_v4_n(&MULTICAST_GROUP, &InterfaceIndexOrAddress::Index(index))?;
            socket.set_multicast_if_v4(&source)?;
            socket.set_multicast_loop_v4(false)?;
            // Without this, a socket receives every group any socket on the host joined.
            socket.set_multicast_all_v4(false)
        }
        // Bound to the primary address, so adverts leave from the address their checksum
        // and the tie-break use (and only adverts sent to it are read).
        Destination::Unicast(_) => socket.bind(&SocketAddrV4::new(source, 0).into()),
    }
}

fn open_ipv6(
    socket: &Socket,
    index: u32,
    source: Ipv6Addr,
    destination: &Destination,
) -> std::io::Result<()> {
    socket.set_unicast_hops_v6(u32::from(TTL))?;
    socket.set_multicast_hops_v6(u32::from(TTL))?;
    // The receive checks need the hop limit and the checksum the destination.
    socket.set_recv_hoplimit_v6(true)?;
    setsockopt(socket, sockopt::Ipv6RecvPacketInfo, &true)?;
    match destination {
        Destination::Multicast => {
            socket.join_multicast_v6(&MULTICAST_GROUP_V6, index)?;
            socket.set_multicast_if_v6(index)?;
            socket.set_multicast_loop_v6(false)?;
            socket.set_multicast_all_v6(false)
        }
        Destination::Unicast(_) => {
            let scope = if source.is_unicast_link_local() { index } else { 0 };
            socket.bind(&SocketAddrV6::new(source, 0, 0, scope).into())
        }
    }
}

/// One `recvmsg` on an IPv6 raw socket: the payload's length, its source, its destination and
/// hop limit from the ancillary data (0 if missing, which the receive checks drop).
fn recv_ipv6(
    socket: &Socket,
    buffer: &mut [u8],
) -> std::io::Result<(usize, Ipv6Addr, Ipv6Addr, u8)> {
    let mut ancillary = nix::cmsg_space!(nix::libc::in6_pktinfo, nix::libc::c_int);
    let mut payload = [IoSliceMut::new(buffer)];
    let message = recvmsg::<SockaddrIn6>(
        socket.as_raw_fd(),
        &mut payload,
        Some(&mut ancillary),
        MsgFlags::empty(),
    )?;
    let mut destination = Ipv6Addr::UNSPECIFIED;
    let mut hop_limit = 0;
    for control in message.cmsgs()? {
        match control {
            ControlMessageOwned::Ipv6PacketInfo(info) => {
                destination = Ipv6Addr::from(info.ipi6_addr.s6_addr);
            }
            ControlMessageOwned::Ipv6HopLimit(limit) => {
                hop_limit = u8::try_from(limit).unwrap_or(0);
            }
            _ => {}
        }
    }
    let source = message.address.map_or(Ipv6Addr::UNSPECIFIED, |address| address.ip());
    Ok((message.bytes, source, destination, hop_limit))
}
