//! Announcing a takeover to the link: a gratuitous ARP frame for an IPv4 VIP, an unsolicited
//! Neighbor Advertisement for an IPv6 one, sent on a send-only datalink channel (pnet).

use std::net::IpAddr;
use std::os::fd::IntoRawFd;

use pnet_datalink::{Channel, ChannelType, DataLinkSender, NetworkInterface};
use socket2::{Domain, Socket, Type};

use crate::error::DriverError;
use crate::{garp, ndp};

/// Sends announcements on one interface.
pub(crate) struct Announcer {
    interface: String,
    mac: [u8; 6],
    sender: Box<dyn DataLinkSender>,
}

impl Announcer {
    /// Opens a datalink channel on `interface`.
    pub(crate) fn open(interface: &str) -> Result<Announcer, DriverError> {
        let found: Option<NetworkInterface> =
            pnet_datalink::interfaces().into_iter().find(|i| i.name == interface);
        let link = found.ok_or_else(|| DriverError::NoInterface(interface.to_owned()))?;
        let mac = link.mac.ok_or_else(|| DriverError::NoMac(interface.to_owned()))?.octets();
        // Send-only. pnet's own socket listens to every ethertype (ETH_P_ALL), so the kernel
        // would queue a copy of every frame on the link for a socket nobody reads; one bound
        // to protocol 0 hooks none and receives nothing, and the kernel reads each sent
        // frame's ethertype from its header. Promiscuous mode (pnet's default) stays off too.
        let socket = Socket::new(Domain::PACKET, Type::RAW, None).map_err(|source| {
            DriverError::Io { what: format!("packet socket on {interface}"), source }
        })?;
        let config = pnet_datalink::Config {
            promiscuous: false,
            // Layer 3 only makes pnet bind to protocol 0; the socket is raw, so frames go out
            // with the Ethernet header they are written with.
            channel_type: ChannelType::Layer3(0),
            // pnet owns (and closes) the descriptor from here on.
            socket_fd: Some(socket.into_raw_fd()),
            ..Default::default()
        };
        match pnet_datalink::channel(&link, config) {
            Ok(Channel::Ethernet(sender, _receiver)) => {
                Ok(Announcer { interface: interface.to_owned(), mac, sender })
            }
            Ok(_) => Err(DriverError::NoMac(interface.to_owned())),
            Err(source) => {
                Err(DriverError::Io { what: format!("datalink channel on {interface}"), source })
            }
        }
    }

    /// Sends one announcement for `vip`: gratuitous ARP or a Neighbor Advertisement.
    pub(crate) fn announce(&mut self, vip: IpAddr) -> Result<(), DriverError> {
        let (sent, what) = match vip {
            IpAddr::V4(vip) => {
                (self.sender.send_to(&garp::frame(self.mac, vip), None), "gratuitous ARP")
            }
            IpAddr::V6(vip) => {
                (self.sender.send_to(&ndp::frame(self.mac, vip), None), "neighbor advertisement")
            }
        };
        let error =
            |source| DriverError::Io { what: format!("{what} on {}", self.interface), source };
        match sent {
            Some(Ok(())) => Ok(()),
            Some(Err(source)) => Err(error(source)),
            None => Err(error(std::io::Error::other("the datalink channel accepted no frame"))),
        }
    }
}
