//! Virtual IPs on an interface, IPv4 and IPv6, added and removed through netlink
//! (rtnetlink), never by running `ip`.

use std::net::IpAddr;
use std::time::Duration;

use futures_util::TryStreamExt;
use rtnetlink::Handle;
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, CacheInfo,
};

use crate::error::DriverError;
use crate::wire::Family;

/// VIPs are host routes: a /32 or /128 never changes which subnet the interface is on.
fn prefix_len(vip: IpAddr) -> u8 {
    match vip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// An IPv6 VIP skips duplicate address detection: a takeover cannot wait a second for it,
/// and the address is meant to move between nodes (keepalived adds its VIPs the same way).
fn skip_duplicate_address_detection(message: &mut AddressMessage) {
    if message.header.family == rtnetlink::packet_route::AddressFamily::Inet6 {
        message.header.flags |= AddressHeaderFlags::Nodad;
        message.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
}

/// Adds and removes VIPs on one interface.
#[derive(Clone)]
pub struct VipManager {
    handle: Handle,
    interface: String,
    index: u32,
}

impl VipManager {
    /// Opens a netlink connection (served on the current tokio runtime) for `interface`.
    pub fn open(interface: &str) -> Result<VipManager, DriverError> {
        let index = interface_index(interface)?;
        let (connection, handle, _) = rtnetlink::new_connection()
            .map_err(|source| DriverError::Io { what: "netlink socket".into(), source })?;
        tokio::spawn(connection);
        Ok(VipManager { handle, interface: interface.to_owned(), index })
    }

    /// Adds `vip`; adding one that is there already is not an error.
    pub async fn add(&self, vip: IpAddr) -> Result<(), DriverError> {
        if self.holds(vip).await? {
            return Ok(());
        }
        let mut request = self.handle.address().add(self.index, vip, prefix_len(vip));
        skip_duplicate_address_detection(request.message_mut());
        request.execute().await.map_err(|e| self.error("add", vip, e))
    }

    /// Adds `vip`, or refreshes it, to last `lifetime` (whole seconds, at least one) unless
    /// added again: the kernel removes it by itself when nobody renews it.
    pub async fn add_for(&self, vip: IpAddr, lifetime: Duration) -> Result<(), DriverError> {
        let seconds = u32::try_from(lifetime.as_secs().max(1)).unwrap_or(u32::MAX);
        let mut request = self.handle.address().add(self.index, vip, prefix_len(vip)).replace();
        skip_duplicate_address_detection(request.message_mut());
        let mut lifetimes = CacheInfo::default();
        lifetimes.ifa_preferred = seconds;
        lifetimes.ifa_valid = seconds;
        request.message_mut().attributes.push(AddressAttribute::CacheInfo(lifetimes));
        request.execute().await.map_err(|e| self.error("add", vip, e))
    }

    /// Removes `vip`; removing one that is not there is not an error.
    pub async fn remove(&self, vip: IpAddr) -> Result<(), DriverError> {
        let mut found = self.find(vip);
        while let Some(message) =
            found.try_next().await.map_err(|e| self.error("look up", vip, e))?
        {
            self.handle
                .address()
                .del(message)
                .execute()
                .await
                .map_err(|e| self.error("remove", vip, e))?;
        }
        Ok(())
    }

    /// True if `vip` is on the interface.
    pub async fn holds(&self, vip: IpAddr) -> Result<bool, DriverError> {
        let found = self.find(vip).try_next().await.map_err(|e| self.error("look up", vip, e))?;
        Ok(found.is_some())
    }

    fn find(
        &self,
        vip: IpAddr,
    ) -> impl futures_util::Stream<Item = Result<AddressMessage, rtnetlink::Error>> + use<> {
        self.handle
            .address()
            .get()
            .set_link_index_filter(self.index)
            .set_address_filter(vip)
            .set_prefix_length_filter(prefix_len(vip))
            .execute()
    }

    fn error(&self, what: &str, vip: IpAddr, error: rtnetlink::Error) -> DriverError {
        DriverError::Netlink(format!("{what} VIP {vip} on {}: {error}", self.interface))
    }
}

/// The kernel's index of `interface`.
pub(crate) fn interface_index(interface: &str) -> Result<u32, DriverError> {
    nix::net::if_::if_nametoindex(interface)
        .map_err(|_| DriverError::NoInterface(interface.to_owned()))
}

/// The IPv4 networks of `interface`: each address with its prefix length.
pub fn interface_networks(interface: &str) -> Vec<(std::net::Ipv4Addr, u8)> {
    let Some(found) = pnet_datalink::interfaces().into_iter().find(|i| i.name == interface) else {
        return Vec::new();
    };
    found
        .ips
        .into_iter()
        .filter_map(|network| match network.ip() {
            IpAddr::V4(address) => Some((address, network.prefix())),
            IpAddr::V6(_) => None,
        })
        .collect()
}

/// The MAC address of `interface`, if it has one.
pub fn interface_mac(interface: &str) -> Option<[u8; 6]> {
    let mac = pnet_datalink::interfaces().into_iter().find(|i| i.name == interface)?.mac?;
    Some(mac.octets())
}

/// The node's own address of `family` on `interface`: the first IPv4 address that is not
/// one of `vips` (VIPs from an earlier run may still be there), or the IPv6 link-local address
/// VRRP advertises from (RFC 9568 §5.1.2.1).
pub fn interface_address(interface: &str, family: Family, vips: &[IpAddr]) -> Option<IpAddr> {
    pnet_datalink::interfaces()
        .into_iter()
        .find(|i| i.name == interface)?
        .ips
        .into_iter()
        .map(|network| network.ip())
        .find(|address| match address {
            IpAddr::V4(_) => family == Family::Ipv4 && !vips.contains(address),
            IpAddr::V6(v6) => family == Family::Ipv6 && v6.is_unicast_link_local(),
        })
}
