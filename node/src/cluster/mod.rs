//! This node as a member of its cluster: what it tells its peers and answers them, the
//! cluster-wide views, planned VIP moves, the VRRP priorities it asks for, and handing a VIP
//! over with its connections.
//!
//! # Layout
//! - `node`: [`Node`], what the member runs; its own status, gauges and readiness; how it
//!   answers a peer.
//! - `peer`: the peer requests and answers, and asking one, some or all members at once.
//! - `views`: cluster status with each VRID's masters, membership, a revision's spread.
//! - `moves`: planned VIP moves and why one is refused ([`MoveError`]).
//! - `priorities`: the priority per VRID, lowered by tracked pools and planned moves.
//! - `handover`: the old master's side of a hand-over and a peer's forwarding for it.
//! - `drain`: when a hand-over's drain ends, as a pure function of observations and time.
//! - `fence`: the quorum fence's leases, as pure logic: the leader's arbiter, the holder's
//!   lease, and the timings that keep one holder per VRID.
//! - `fencing`: the fence at work: renewing leases, arbitrating them on the leader, and
//!   letting VRRP and the kernel hold a VIP only while its lease runs.
//! - `flows`: BGP VIPs' flows kept across node changes: the members' standings asked for,
//!   the bucket table derived and its steering rules loaded.
//! - `nftables`: this node's nftables ruleset (second-chance forwarding and the fence's
//!   `fenced` and `held` sets), rendered whole and loaded with `nft`.

mod drain;
mod fence;
mod fencing;
mod flows;
mod handover;
mod moves;
mod nftables;
mod node;
mod peer;
mod priorities;
mod views;

pub use fence::{DEFAULT_LEASE, FenceTimes};
pub use flows::BgpDrainError;
pub use handover::Drain;
pub use moves::MoveError;
pub use nftables::{Handover, HandoverError};
pub use node::{LocalVrid, Node};
pub use priorities::{Priorities, Tracked};
