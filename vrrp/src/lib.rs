//! Fulcrum's VRRPv3 for IPv4 (RFC 9568): it elects which node owns each virtual IP.
//!
//! `wire`, `machine` and the frame half of `garp` are pure: they do no IO and read no clock,
//! and are tested without sockets or sleeps; `wire` is fuzzed from `fuzz/`. The crate never
//! depends on the rest of Fulcrum: the node feeds it priorities and reads its state.
//!
//! # Layout
//!
//! - [`wire`]: the advertisement and IPv4 header on the wire, and the receive checks of §7.1.
//! - [`machine`]: the Initialize/Backup/Master state machine of §6.4 for one virtual router.
//! - `driver`: runs a node's routers on an OS thread and runtime of their own, doing the IO.
//! - `socket`: the raw protocol-112 socket (multicast group or unicast peers).
//! - [`garp`]: the gratuitous ARP frame (Ethernet and ARP views, `Repr`) and its sender.
//! - `vip`: adding and removing the virtual IPs through netlink.
//! - `error`: [`DriverError`], shared by the driver, the socket, the VIP and ARP modules.

mod driver;
mod error;
pub mod garp;
pub mod machine;
mod socket;
mod vip;
pub mod wire;

pub use driver::{GarpSettings, InstanceSettings, Vrrp};
pub use error::DriverError;
pub use machine::{DEFAULT_PRIORITY, InstanceConfig, OWNER_PRIORITY, State, Takeover};
pub use socket::Destination;
pub use vip::{VipManager, interface_address};
pub use wire::ChecksumForm;
