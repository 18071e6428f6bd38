//! The unsolicited Neighbor Advertisement (RFC 4861 §7.2.6): IPv6's gratuitous ARP, the frame
//! that tells a link which MAC now owns an IPv6 VIP.
//!
//! Built the way Linux announces its own addresses (`ndisc_send_unsol_na`): from the VIP
//! itself to all nodes (ff02::1), hop limit 255, Override set and Solicited clear, with the
//! target link-layer address option. The Router flag stays clear: a VIP is a service address,
//! not a next hop (RFC 9568 sets it because its virtual router is a gateway). Pure: the
//! announcer sends the frame.

use std::net::Ipv6Addr;

use crate::garp::{ETHERNET_HEADER_LEN, EtherType, EthernetFrame};
use crate::wire::{ipv6_pseudo_header_sum, ones_complement_add, ones_complement_sum};

/// The ICMPv6 next-header value.
pub const ICMPV6: u8 = 58;

/// The ICMPv6 type of a Neighbor Advertisement.
pub const NEIGHBOR_ADVERTISEMENT: u8 = 136;

/// The all-nodes link-local multicast group unsolicited advertisements go to.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// The Ethernet address IPv6 maps ff02::1 to (RFC 2464 §7: 33:33 and the group's last 32 bits).
pub const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];

/// Override: replace a cached link-layer address (RFC 4861 §4.4).
pub const OVERRIDE_FLAG: u8 = 0x20;

/// Bytes in the IPv6 header.
const IPV6_HEADER_LEN: usize = 40;

/// Bytes in the ICMPv6 message: type, code, checksum, flags and reserved, target, and the
/// 8-byte target link-layer address option.
pub const NA_LEN: usize = 24 + 8;

/// Bytes in the whole frame.
pub const FRAME_LEN: usize = ETHERNET_HEADER_LEN + IPV6_HEADER_LEN + NA_LEN;

/// Byte offsets within the ICMPv6 message.
mod field {
    use std::ops::Range;

    pub(super) const TYPE: usize = 0;
    pub(super) const CHECKSUM: Range<usize> = 2..4;
    pub(super) const FLAGS: usize = 4;
    pub(super) const TARGET: Range<usize> = 8..24;
    pub(super) const OPTION_TYPE: usize = 24;
    pub(super) const OPTION_LEN: usize = 25;
    pub(super) const OPTION_MAC: Range<usize> = 26..32;
}

/// Option type 2: the target's link-layer address.
const TARGET_LINK_LAYER_ADDRESS: u8 = 2;

/// The unsolicited Neighbor Advertisement announcing that `mac` owns `vip`, in an Ethernet
/// frame from `mac` to all nodes.
pub fn frame(mac: [u8; 6], vip: Ipv6Addr) -> [u8; FRAME_LEN] {
    let mut bytes = [0u8; FRAME_LEN];
    let mut frame = EthernetFrame::new_unchecked(&mut bytes[..]);
    frame.set_dst_addr(ALL_NODES_MAC);
    frame.set_src_addr(mac);
    frame.set_ethertype(EtherType::Ipv6);
    let (header, message) = frame.payload_mut().split_at_mut(IPV6_HEADER_LEN);
    // Version 6, traffic class and flow label zero.
    header[0] = 0x60;
    header[4..6].copy_from_slice(&(NA_LEN as u16).to_be_bytes());
    header[6] = ICMPV6;
    // 255, so receivers know it did not cross a router (RFC 4861 §7.1.2).
    header[7] = 255;
    header[8..24].copy_from_slice(&vip.octets());
    header[24..40].copy_from_slice(&ALL_NODES.octets());

    message[field::TYPE] = NEIGHBOR_ADVERTISEMENT;
    message[field::FLAGS] = OVERRIDE_FLAG;
    message[field::TARGET].copy_from_slice(&vip.octets());
    message[field::OPTION_TYPE] = TARGET_LINK_LAYER_ADDRESS;
    // In units of 8 bytes.
    message[field::OPTION_LEN] = 1;
    message[field::OPTION_MAC].copy_from_slice(&mac);
    let sum = ones_complement_add(
        ipv6_pseudo_header_sum(vip, ALL_NODES, ICMPV6, NA_LEN),
        ones_complement_sum(message),
    );
    message[field::CHECKSUM].copy_from_slice(&(!sum).to_be_bytes());
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x10, 0x00, 0x01];
    const VIP: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100);

    /// The frame for 2001:db8::100 at 02:00:5e:10:00:01, ICMPv6 checksum 0x991c worked out
    /// independently (a short Python script over the RFC 8200 §8.1 pseudo-header).
    #[rustfmt::skip]
    const EXPECTED: [u8; FRAME_LEN] = [
        0x33, 0x33, 0, 0, 0, 1, // to all nodes
        0x02, 0x00, 0x5e, 0x10, 0x00, 0x01, // from the MAC
        0x86, 0xdd, // IPv6
        0x60, 0, 0, 0, 0, 32, 58, 255, // version 6, 32 bytes of ICMPv6, hop limit 255
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x00, // from the VIP
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, // to ff02::1
        136, 0, 0x99, 0x1c, // Neighbor Advertisement, code 0, checksum
        0x20, 0, 0, 0, // Override only
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x00, // target: the VIP
        2, 1, 0x02, 0x00, 0x5e, 0x10, 0x00, 0x01, // target link-layer address: the MAC
    ];

    #[test]
    fn the_frame_is_an_unsolicited_override_to_all_nodes() {
        assert_eq!(frame(MAC, VIP), EXPECTED);
    }

    #[test]
    fn the_checksum_sums_to_all_ones_with_the_pseudo_header() {
        let frame = frame(MAC, Ipv6Addr::new(0x2001, 0xdb8, 0x18, 0, 0, 0, 0xabcd, 0xffff));
        let message = &frame[ETHERNET_HEADER_LEN + IPV6_HEADER_LEN..];
        let src = Ipv6Addr::from(<[u8; 16]>::try_from(&frame[22..38]).unwrap());
        let total = ones_complement_add(
            ipv6_pseudo_header_sum(src, ALL_NODES, ICMPV6, message.len()),
            ones_complement_sum(message),
        );
        assert_eq!(total, 0xffff);
    }
}
