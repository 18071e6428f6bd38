//! Any bytes read from the raw socket pass the receive checks or are dropped with a reason,
//! never a panic; an accepted advertisement emits back to a message that parses to itself.

use std::net::Ipv4Addr;

use fulcrum_vrrp::wire::{Advertisement, LocalVrid, Packet, check_received};

const VIPS: [Ipv4Addr; 1] = [Ipv4Addr::new(198, 18, 0, 100)];

/// Checks the property for one input.
pub fn check(data: &[u8]) {
    let local =
        |vrid: u8| (vrid % 2 == 1).then_some(LocalVrid { vips: &VIPS, address_owner: vrid == 255 });
    let Ok(received) = check_received(data, local) else { return };
    let advertisement = received.advertisement;
    let mut packet = Packet::new_unchecked(vec![0; advertisement.buffer_len()]);
    advertisement
        .emit(&mut packet, received.src, received.dst, received.checksum_form)
        .expect("an accepted advertisement emits");
    let (again, form) = Advertisement::parse(&packet, received.src, received.dst)
        .expect("an emitted advertisement parses");
    assert_eq!(again, advertisement);
    assert_eq!(form, received.checksum_form);
}
