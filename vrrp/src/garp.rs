//! Gratuitous ARP: the Ethernet frame that tells a link which MAC now owns a VIP, and the
//! datalink channel (pnet) that sends it.
//!
//! The frame is an ARP request whose sender and target protocol addresses are both the VIP,
//! broadcast — the form keepalived sends and every host updates an existing entry from.

use std::net::Ipv4Addr;

use pnet_datalink::{Channel, DataLinkSender, NetworkInterface};

use crate::driver::DriverError;

/// Bytes in a gratuitous ARP frame (Ethernet II header and ARP body, without padding; the
/// NIC pads to the 60-byte minimum).
pub const FRAME_LEN: usize = 42;

const BROADCAST: [u8; 6] = [0xff; 6];
const ETHERTYPE_ARP: [u8; 2] = [0x08, 0x06];
/// Hardware type Ethernet, protocol IPv4, address lengths 6 and 4, operation request.
const ARP_REQUEST_HEADER: [u8; 8] = [0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01];

/// The gratuitous ARP frame announcing that `mac` owns `vip`.
pub fn frame(mac: [u8; 6], vip: Ipv4Addr) -> [u8; FRAME_LEN] {
    let mut frame = [0u8; FRAME_LEN];
    frame[0..6].copy_from_slice(&BROADCAST);
    frame[6..12].copy_from_slice(&mac);
    frame[12..14].copy_from_slice(&ETHERTYPE_ARP);
    frame[14..22].copy_from_slice(&ARP_REQUEST_HEADER);
    frame[22..28].copy_from_slice(&mac); // sender hardware address
    frame[28..32].copy_from_slice(&vip.octets()); // sender protocol address
    // Target hardware address stays zero: it is a request.
    frame[38..42].copy_from_slice(&vip.octets()); // target protocol address
    frame
}

/// Sends gratuitous ARP frames on one interface.
pub struct GarpSender {
    interface: String,
    mac: [u8; 6],
    sender: Box<dyn DataLinkSender>,
}

impl GarpSender {
    /// Opens a datalink channel on `interface`.
    pub fn open(interface: &str) -> Result<GarpSender, DriverError> {
        let found: Option<NetworkInterface> =
            pnet_datalink::interfaces().into_iter().find(|i| i.name == interface);
        let link = found.ok_or_else(|| DriverError::NoInterface(interface.to_owned()))?;
        let mac = link.mac.ok_or_else(|| DriverError::NoMac(interface.to_owned()))?.octets();
        let config = pnet_datalink::Config::default();
        match pnet_datalink::channel(&link, config) {
            Ok(Channel::Ethernet(sender, _receiver)) => {
                Ok(GarpSender { interface: interface.to_owned(), mac, sender })
            }
            Ok(_) => Err(DriverError::NoMac(interface.to_owned())),
            Err(source) => {
                Err(DriverError::Io { what: format!("datalink channel on {interface}"), source })
            }
        }
    }

    /// The interface's MAC address, which the frames announce.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Sends one gratuitous ARP frame for `vip`.
    pub fn announce(&mut self, vip: Ipv4Addr) -> Result<(), DriverError> {
        let frame = frame(self.mac, vip);
        match self.sender.send_to(&frame, None) {
            Some(Ok(())) => Ok(()),
            Some(Err(source)) => Err(DriverError::Io {
                what: format!("gratuitous ARP on {}", self.interface),
                source,
            }),
            None => Err(DriverError::Io {
                what: format!("gratuitous ARP on {}", self.interface),
                source: std::io::Error::other("the datalink channel accepted no frame"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_is_a_broadcast_arp_request_for_the_vip() {
        let mac = [0x02, 0x00, 0x5e, 0x00, 0x01, 0x33];
        #[rustfmt::skip]
        let expected: [u8; FRAME_LEN] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff,   0x02, 0x00, 0x5e, 0x00, 0x01, 0x33,   0x08, 0x06,
            0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01,
            0x02, 0x00, 0x5e, 0x00, 0x01, 0x33,   198, 18, 0, 100,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00,   198, 18, 0, 100,
        ];
        assert_eq!(frame(mac, Ipv4Addr::new(198, 18, 0, 100)), expected);
    }
}
