//! Fulcrum's VRRPv3 for IPv4 (RFC 9568): it elects which node owns each virtual IP.
//!
//! # Layout
//!
//! - [`wire`]: the advertisement's wire format and checksum, the IPv4 header a raw socket
//!   returns, and the receive checks of RFC 9568 §7.1 with per-reason drop counters. Fuzzed
//!   from `fuzz/`.
//! - [`machine`]: the Initialize/Backup/Master state machine of §6.4 for one virtual router.
//!   Events and the current time go in as values; actions and the next deadline come out.
//! - [`driver`]: runs the instances of a node on their own OS thread and runtime, so load
//!   elsewhere cannot delay an advertisement; the only part that does IO.
//! - [`socket`]: the raw protocol-112 socket (multicast group or unicast peers).
//! - [`garp`]: gratuitous ARP frames and their sender.
//! - [`vip`]: adding and removing the virtual IPs through netlink.
//!
//! `wire` and `machine` are pure: they do no IO and read no clock, and are tested without
//! sockets or sleeps. The crate never depends on the rest of Fulcrum: the node feeds it priorities and reads its
//! state.

pub mod driver;
pub mod garp;
pub mod machine;
pub mod socket;
pub mod vip;
pub mod wire;
