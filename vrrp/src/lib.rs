//! Fulcrum's VRRPv3 for IPv4 and IPv6 (RFC 9568): it elects which node owns each virtual IP.
//!
//! `wire`, `machine`, `garp` and `ndp` are pure: they do no IO and read no clock,
//! and are tested without sockets or sleeps; `wire` is fuzzed from `fuzz/`. The crate never
//! depends on the rest of Fulcrum: the node feeds it priorities and reads its state.
//!
//! # Layout
//!
//! - [`wire`]: the advertisement of either family on the wire, the IPv4 header, and the
//!   receive checks of §7.1.
//! - [`machine`]: the Initialize/Backup/Master state machine of §6.4 for one virtual router.
//! - `driver`: runs a node's routers on an OS thread and runtime of their own, doing the IO.
//! - `socket`: the raw protocol-112 socket of one family (multicast group or unicast peers).
//! - [`garp`]: the gratuitous ARP frame (Ethernet and ARP views, `Repr`).
//! - [`ndp`]: the unsolicited Neighbor Advertisement frame, IPv6's gratuitous ARP.
//! - `announce`: sends either frame on a datalink channel.
//! - `vip`: adding and removing the virtual IPs through netlink.
//! - `error`: [`DriverError`], shared by the driver, the socket, the VIP and announcer modules.

mod announce;
mod driver;
mod error;
pub mod garp;
pub mod machine;
pub mod ndp;
mod socket;
mod vip;
pub mod wire;

pub use driver::{GarpSettings, InstanceSettings, Vrrp};
pub use error::DriverError;
pub use machine::{DEFAULT_PRIORITY, InstanceConfig, OWNER_PRIORITY, State, Takeover};
pub use socket::Destination;
pub use vip::{VipManager, interface_address, interface_mac, interface_networks};
pub use wire::{ChecksumForm, Family};
