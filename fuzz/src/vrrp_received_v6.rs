//! What a raw IPv6 socket reads (the hop limit, from the ancillary data, in the first byte; the
//! message after it), from a link-local peer to ff02::12, passes the receive checks or is
//! dropped with a reason, never a panic; an accepted advertisement round-trips.

use std::net::{IpAddr, Ipv6Addr};

use fulcrum_vrrp::wire::{Datagram, Family, IP_PROTOCOL, check_received};

use crate::vrrp_received::{local, round_trips};

const VIPS: [IpAddr; 1] = [IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100))];
const PEER: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x12));

/// Checks the property for one input.
pub fn check(data: &[u8]) {
    let Some((&hop_limit, message)) = data.split_first() else { return };
    let datagram = Datagram {
        src: PEER,
        dst: Family::Ipv6.multicast_group(),
        ttl: hop_limit,
        protocol: IP_PROTOCOL,
        payload: message,
    };
    round_trips(check_received(datagram, |vrid| local(vrid, &VIPS)), Family::Ipv6);
}
