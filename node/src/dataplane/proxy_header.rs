//! The PROXY protocol v2 header a listener sends ahead of a connection's bytes, telling the
//! backend who the client is and which address it dialled. Sans IO.

use std::net::{SocketAddr, SocketAddrV6};

use ppp::v2::{Builder, Command, Protocol, Version};

/// The header for a TCP connection from `client` to `local`.
///
/// The header holds both addresses in one family, so they are put in one: an IPv4-mapped
/// IPv6 address (what a dual-stack socket reports for an IPv4 peer) is written as the IPv4
/// address it maps, and when the families still differ the IPv4 side is written mapped into
/// IPv6. Without that, the header would say "unknown" and the backend would lose the client.
pub fn encode(client: SocketAddr, local: SocketAddr) -> std::io::Result<Vec<u8>> {
    let addresses = match (canonical(client), canonical(local)) {
        (client @ SocketAddr::V4(_), local @ SocketAddr::V6(_)) => (mapped(client), local),
        (client @ SocketAddr::V6(_), local @ SocketAddr::V4(_)) => (client, mapped(local)),
        same_family => same_family,
    };
    Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, addresses).build()
}

fn canonical(address: SocketAddr) -> SocketAddr {
    SocketAddr::new(address.ip().to_canonical(), address.port())
}

fn mapped(address: SocketAddr) -> SocketAddr {
    match address {
        SocketAddr::V4(v4) => SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0).into(),
        v6 => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ppp::v2::{Addresses, Header};

    fn addresses(client: &str, local: &str) -> Addresses {
        let (client, local) = (client.parse().expect("client"), local.parse().expect("local"));
        let bytes = encode(client, local).expect("header");
        Header::try_from(&bytes[..]).expect("a PROXY v2 header").addresses
    }

    #[test]
    fn one_family_is_written_as_is() {
        let Addresses::IPv4(v4) = addresses("198.18.0.5:40000", "198.18.0.100:80") else {
            panic!("an IPv4 header")
        };
        assert_eq!((v4.source_address.to_string(), v4.source_port), ("198.18.0.5".into(), 40000));
        assert_eq!(v4.destination_address.to_string(), "198.18.0.100");
        let Addresses::IPv6(v6) = addresses("[2001:db8::5]:40000", "[2001:db8::100]:80") else {
            panic!("an IPv6 header")
        };
        assert_eq!(v6.source_address.to_string(), "2001:db8::5");
    }

    #[test]
    fn a_dual_stack_socket_s_mapped_addresses_are_written_as_ipv4() {
        let Addresses::IPv4(v4) =
            addresses("[::ffff:198.18.0.5]:40000", "[::ffff:198.18.0.100]:80")
        else {
            panic!("an IPv4 header")
        };
        assert_eq!(v4.source_address.to_string(), "198.18.0.5");
        assert_eq!(v4.destination_address.to_string(), "198.18.0.100");
    }

    #[test]
    fn mixed_families_are_written_in_ipv6_rather_than_as_unknown() {
        let Addresses::IPv6(v6) = addresses("198.18.0.5:40000", "[2001:db8::100]:80") else {
            panic!("an IPv6 header")
        };
        assert_eq!(v6.source_address.to_string(), "::ffff:198.18.0.5");
        assert_eq!(v6.destination_address.to_string(), "2001:db8::100");
    }
}
