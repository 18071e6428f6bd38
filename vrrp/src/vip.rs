//! Virtual IPs on an interface, added and removed through netlink (rtnetlink), never by
//! running `ip`.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use futures_util::TryStreamExt;
use rtnetlink::Handle;
use rtnetlink::packet_route::address::{AddressAttribute, CacheInfo};

use crate::error::DriverError;

/// VIPs are host routes: a /32 never changes which subnet the interface is on.
const VIP_PREFIX_LEN: u8 = 32;

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
    pub async fn add(&self, vip: Ipv4Addr) -> Result<(), DriverError> {
        if self.holds(vip).await? {
            return Ok(());
        }
        self.handle
            .address()
            .add(self.index, IpAddr::V4(vip), VIP_PREFIX_LEN)
            .execute()
            .await
            .map_err(|e| self.error("add", vip, e))
    }

    /// Adds `vip`, or refreshes it, to last `lifetime` (whole seconds, at least one) unless
    /// added again: the kernel removes it by itself when nobody renews it.
    pub async fn add_for(&self, vip: Ipv4Addr, lifetime: Duration) -> Result<(), DriverError> {
        let seconds = u32::try_from(lifetime.as_secs().max(1)).unwrap_or(u32::MAX);
        let mut request =
            self.handle.address().add(self.index, IpAddr::V4(vip), VIP_PREFIX_LEN).replace();
        let mut lifetimes = CacheInfo::default();
        lifetimes.ifa_preferred = seconds;
        lifetimes.ifa_valid = seconds;
        request.message_mut().attributes.push(AddressAttribute::CacheInfo(lifetimes));
        request.execute().await.map_err(|e| self.error("add", vip, e))
    }

    /// Removes `vip`; removing one that is not there is not an error.
    pub async fn remove(&self, vip: Ipv4Addr) -> Result<(), DriverError> {
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
    pub async fn holds(&self, vip: Ipv4Addr) -> Result<bool, DriverError> {
        let found = self.find(vip).try_next().await.map_err(|e| self.error("look up", vip, e))?;
        Ok(found.is_some())
    }

    fn find(
        &self,
        vip: Ipv4Addr,
    ) -> impl futures_util::Stream<
        Item = Result<rtnetlink::packet_route::address::AddressMessage, rtnetlink::Error>,
    > + use<> {
        self.handle
            .address()
            .get()
            .set_link_index_filter(self.index)
            .set_address_filter(IpAddr::V4(vip))
            .set_prefix_length_filter(VIP_PREFIX_LEN)
            .execute()
    }

    fn error(&self, what: &str, vip: Ipv4Addr, error: rtnetlink::Error) -> DriverError {
        DriverError::Netlink(format!("{what} VIP {vip} on {}: {error}", self.interface))
    }
}

/// The kernel's index of `interface`.
pub(crate) fn interface_index(interface: &str) -> Result<u32, DriverError> {
    nix::net::if_::if_nametoindex(interface)
        .map_err(|_| DriverError::NoInterface(interface.to_owned()))
}

/// The first IPv4 address on `interface` that is not one of `vips`: the node's own address
/// on the link, even when VIPs from an earlier run are still there.
pub fn interface_address(interface: &str, vips: &[Ipv4Addr]) -> Option<Ipv4Addr> {
    pnet_datalink::interfaces()
        .into_iter()
        .find(|i| i.name == interface)?
        .ips
        .into_iter()
        .filter_map(|network| match network.ip() {
            IpAddr::V4(address) => Some(address),
            IpAddr::V6(_) => None,
        })
        .find(|address| !vips.contains(address))
}
