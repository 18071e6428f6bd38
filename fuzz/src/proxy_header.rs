//! Whatever addresses a connection has, the PROXY v2 header written for it parses back and
//! names both of them, in one address family.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ppp::v2::{Addresses, Header};

/// An address from 19 bytes: a family byte, 16 address bytes (4 used for IPv4), a port.
fn address(bytes: &[u8]) -> SocketAddr {
    let port = u16::from_be_bytes([bytes[17], bytes[18]]);
    let ip: IpAddr = match bytes[0] % 2 {
        0 => Ipv4Addr::new(bytes[1], bytes[2], bytes[3], bytes[4]).into(),
        _ => Ipv6Addr::from(<[u8; 16]>::try_from(&bytes[1..17]).expect("16 bytes")).into(),
    };
    SocketAddr::new(ip, port)
}

fn named(address: SocketAddr) -> SocketAddr {
    SocketAddr::new(address.ip().to_canonical(), address.port())
}

/// Checks the property for one input.
pub fn check(data: &[u8]) {
    if data.len() < 38 {
        return;
    }
    let (client, local) = (address(&data[..19]), address(&data[19..38]));
    let bytes = fulcrum_node::dataplane::proxy_header::encode(client, local).expect("a header");
    let header = Header::try_from(&bytes[..]).expect("the header parses");
    let (source, destination) = match header.addresses {
        Addresses::IPv4(v4) => (
            SocketAddr::new(v4.source_address.into(), v4.source_port),
            SocketAddr::new(v4.destination_address.into(), v4.destination_port),
        ),
        Addresses::IPv6(v6) => (
            SocketAddr::new(v6.source_address.into(), v6.source_port),
            SocketAddr::new(v6.destination_address.into(), v6.destination_port),
        ),
        other => panic!("{client} -> {local} written as {other:?}"),
    };
    assert_eq!((named(source), named(destination)), (named(client), named(local)));
}
