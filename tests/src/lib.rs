//! fulcrum-lab: a small virtual network on one Linux host, for Fulcrum's end-to-end tests.
//!
//! It owns the lab topology (network namespaces, veth pairs, one bridge), the processes it
//! starts inside it, the lab backends (HTTP/1.1, h2c and TCP echo) and the client prober. It
//! never touches the host's own network: every namespace, link and address it makes carries
//! a per-run prefix and comes from 198.18.0.0/24 or 2001:db8:18::/64, and it stops only
//! processes it started.
//!
//! # Layout
//! - [`acme`]: pebble, an ACME authority in the lab, with its DNS answering the VIP.
//! - [`bgp`]: a BGP router (FRR) in the lab, and the node file's `[bgp]` for it.
//! - [`ecmp`]: one VIP over BGP ECMP on three load balancers, long connections through it,
//!   and the Fulcrum cluster announcing it; [`bench_ecmp`]: `fulcrum-lab bench-ecmp`.
//! - [`attack`]: the attack tests' attackers: HTTP/2 rapid reset, slow HTTP/2 bodies and
//!   unauthenticated floods.
//! - [`capture`]: packet captures on a host's link with tshark, decoded by Wireshark.
//! - [`netns`]: creating, entering and deleting namespaces through iproute2.
//! - [`process`]: processes started inside a namespace, awaited by their output, stopped by PID.
//! - [`topology`]: the [`Lab`] guard: hosts on a bridge, torn down on drop, recorded on disk so
//!   `fulcrum-lab down` can remove a lab whose test was killed.
//! - [`backend`]: the lab's HTTP and TCP echo backend server.
//! - [`probe`]: the prober that measures successes, failures and outages from the client.
//! - [`bench`]: the failover benchmark, fulcrumd against keepalived.
//! - [`bench_fence`]: what each fault of the master costs a client, and time with two
//!   answering, a fenced Fulcrum cluster against keepalived.
//! - [`bench_handover`]: what planned handovers under load cost the client, Fulcrum against
//!   keepalived + HAProxy.
//! - [`bench_l4`]: the L4 benchmark, fulcrumd against HAProxy and a direct connection.
//! - [`bench_l7`]: the L7 benchmark (wrk, h2load), fulcrumd against HAProxy, nginx and a
//!   direct connection.
//! - [`bench_propagation`]: time from `fulcrumctl backend add --wait` to the backend serving
//!   on every node.
//! - [`bench_raft`]: the configuration-write benchmark, Fulcrum's Raft store against etcd.
//! - [`chaos`]: the chaos suite: seeded faults on a cluster, invariants checked all along.
//! - [`linearizability`]: the checker for the chaos suite's history of reads and writes.
//! - [`cluster`]: whole cluster nodes (Raft, admin API, VRRP) and `fulcrumctl` against them.
//! - [`faults`]: partitions between load balancers, and who answers for a VIP meanwhile.
//! - [`serving`]: `fulcrumd` serving a cluster file, its metrics, and checked `/slow`
//!   downloads through it.
//! - [`soak`]: a cluster at default settings under full HTTP load, counting VRRP transitions,
//!   lease lapses and Raft elections that should not happen.
//! - [`routers`]: VRRP routers (`fulcrumd` or keepalived) on the load-balancer hosts, and who
//!   holds a VIP.

pub mod acme;
pub mod attack;
pub mod backend;
pub mod bench;
pub mod bench_ecmp;
pub mod bench_fence;
pub mod bench_handover;
pub mod bench_l4;
pub mod bench_l7;
pub mod bench_propagation;
pub mod bench_raft;
pub mod bgp;
pub mod capture;
pub mod chaos;
pub mod cluster;
pub mod ecmp;
pub mod faults;
pub mod linearizability;
pub mod netns;
pub mod probe;
pub mod process;
pub mod routers;
pub mod serving;
pub mod soak;
pub mod topology;

pub use topology::{Host, HostRole, Lab, LabError, Topology};
