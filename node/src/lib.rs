//! A Fulcrum cluster node (`fulcrumd`): the wiring of the Raft store, VRRP and the data plane.
//!
//! It never defines persisted state (fulcrum-model and fulcrum-raft-store do), never speaks
//! VRRP itself (fulcrum-vrrp does) and decides no data-path policy (fulcrum-policy does): it
//! does the IO around them.
//!
//! # Layout
//! - [`node_file`]: the node's own, unreplicated file.
//! - [`dev`]: `fulcrumd --dev`, a one-node cluster on loopback.
//! - [`dataplane`]: listeners, L4 and L7 forwarding, pools, health checks, drains, counters.
//! - [`cluster`]: the node as a member: peer RPC, cluster views, VIP moves, priorities,
//!   hand-overs with second-chance forwarding.
//! - [`acme`]: ACME certificates ordered by the leader for every node, keys sealed.
//! - [`api`]: the admin API and the `/metrics` endpoint.
//! - [`bgp`]: VIPs announced to routers over BGP through a BIRD the node runs.
//! - `prometheus`: writing the metrics text format; `nft`: loading and reading nftables
//!   rulesets.
//! - [`time`], [`secret`]: deadlines from operators' durations, random keys.
//!
//! The binary (`src/bin/fulcrumd/`) is `main.rs`, which parses the arguments, over
//! `daemon.rs`, which starts the node's parts in order and stops them in reverse.

pub mod acme;
pub mod api;
pub mod bgp;
pub mod cluster;
pub mod dataplane;
pub mod dev;
mod nft;
pub mod node_file;
mod prometheus;
pub mod secret;
pub mod time;

pub use dataplane::DataPlane;
pub use node_file::NodeFile;
