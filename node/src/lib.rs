//! A Fulcrum cluster node: the wiring of the Raft store, VRRP and the data plane.
//!
//! It will own the data plane (listeners, L4 and L7 forwarding, balancing, health checks, rate
//! limiting, draining), the admin API and metrics. It never defines persisted state (that is
//! fulcrum-model and fulcrum-raft-store) and never speaks VRRP itself (fulcrum-vrrp does).

pub mod node_file;
