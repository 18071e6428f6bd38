//! [`DriverError`]: why the driver, or the socket, VIP manager or announcer it
//! opens, could not start or act. It depends on `machine` alone (for `ConfigError`), so those
//! modules and the driver all use it without importing one another.

use crate::machine::ConfigError;

/// Why the driver could not start or act.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The interface does not exist.
    #[error("interface {0} does not exist")]
    NoInterface(String),
    /// The interface has no MAC address to announce VIPs with.
    #[error("interface {0} has no Ethernet address")]
    NoMac(String),
    /// An instance's configuration is invalid.
    #[error("VRRP instance VRID {vrid}: {source}")]
    Config {
        /// The instance.
        vrid: u8,
        /// What is wrong.
        source: ConfigError,
    },
    /// Two instances of one family on one interface have the same VRID.
    #[error("VRID {vrid} is configured twice for {family} on {interface}")]
    DuplicateVrid {
        /// The VRID.
        vrid: u8,
        /// The interface.
        interface: String,
        /// The family: a VRID may run once for IPv4 and once for IPv6.
        family: crate::wire::Family,
    },
    /// A follower needs an IPv4 router of its VRID on its interface to follow.
    #[error("VRID {vrid} on {interface}: a follower needs the IPv4 router of its VRID to lead it")]
    NoGroupLeader {
        /// The VRID.
        vrid: u8,
        /// The interface.
        interface: String,
    },
    /// A system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A netlink request failed.
    #[error("netlink: {0}")]
    Netlink(String),
}
