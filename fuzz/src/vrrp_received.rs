//! Any bytes read from the raw IPv4 socket pass the receive checks or are dropped with a
//! reason, never a panic; an accepted advertisement emits back to a message that parses to
//! itself.

use std::net::{IpAddr, Ipv4Addr};

use fulcrum_vrrp::wire::{
    Advertisement, DropReason, Family, LocalVrid, Packet, Received, check_received_ipv4,
};

const VIPS: [IpAddr; 1] = [IpAddr::V4(Ipv4Addr::new(198, 18, 0, 100))];

/// Checks the property for one input.
pub fn check(data: &[u8]) {
    round_trips(check_received_ipv4(data, |vrid| local(vrid, &VIPS)), Family::Ipv4);
}

/// Odd VRIDs are configured here, with `vips`; 255 as their owner.
pub(crate) fn local(vrid: u8, vips: &[IpAddr]) -> Option<LocalVrid<'_>> {
    (vrid % 2 == 1).then_some(LocalVrid { vips, address_owner: vrid == 255 })
}

/// An accepted advertisement of `family` emits and parses back to itself, in its form.
pub(crate) fn round_trips(checked: Result<Received, DropReason>, family: Family) {
    let Ok(received) = checked else { return };
    let advertisement = received.advertisement;
    let mut packet = Packet::new_unchecked(vec![0; advertisement.buffer_len()], family);
    advertisement
        .emit(&mut packet, received.src, received.dst, received.checksum_form)
        .expect("an accepted advertisement emits");
    let (again, form) = Advertisement::parse(&packet, received.src, received.dst)
        .expect("an emitted advertisement parses");
    assert_eq!(again, advertisement);
    assert_eq!(form, received.checksum_form);
}
