//! The admin API's request and response bodies (JSON), shared by `fulcrumd`, which serves
//! them, and `fulcrumctl`, which sends them: one definition, so the two cannot drift.
//!
//! Routes (all under a bearer token but `/healthz`):
//!
//! | method and path | body | answer |
//! |---|---|---|
//! | `GET /healthz`, `GET /readyz` | | text |
//! | `GET /metrics` | | Prometheus text |
//! | `GET /v1/status` | | [`ClusterStatus`] |
//! | `GET /v1/node` | | [`NodeStatus`] of the node asked |
//! | `GET /v1/config[?local=true]` | | [`Config`] (linearizable; `local`: this node's copy) |
//! | `POST /v1/config[?dry_run=true]` | cluster file (TOML) | [`Written`] or [`DryRun`] |
//! | `PUT /v1/listeners/{name}` | [`Listener`](crate::Listener) | [`Written`] |
//! | `DELETE /v1/listeners/{name}` | | [`Written`] |
//! | `PUT /v1/listeners/{listener}/routes/{name}` | [`Route`](crate::Route) | [`Written`] |
//! | `DELETE /v1/listeners/{listener}/routes/{name}` | | [`Written`] |
//! | `PUT /v1/pools/{name}` | [`Pool`](crate::Pool) | [`Written`] |
//! | `DELETE /v1/pools/{name}` | | [`Written`] |
//! | `POST /v1/pools/{pool}/backends` | [`Backend`](crate::Backend) | [`Written`] |
//! | `DELETE /v1/pools/{pool}/backends/{address}` | | [`Written`] |
//! | `PUT /v1/pools/{pool}/backends/{address}/state` | [`BackendStateChange`] | [`Written`] |
//! | `PUT /v1/pools/{pool}/backends/{address}/weight` | [`BackendWeightChange`] | [`Written`] |
//! | `PUT /v1/ratelimits/{name}` | [`RateLimitPolicy`](crate::RateLimitPolicy) | [`Written`] |
//! | `DELETE /v1/ratelimits/{name}` | | [`Written`] |
//! | `GET /v1/members` | | [`Members`] |
//! | `POST /v1/members` | [`AddMember`] | [`Members`] |
//! | `POST /v1/members/{id}/promote`, `DELETE /v1/members/{id}` | | [`Members`] |
//! | `POST /v1/vips/{vrid}/failover` | [`Failover`] | [`FailoverDone`] |
//! | `POST /v1/nodes/{id}/drain` | [`NodeDrain`] | [`NodeDrain`] |
//! | `GET /v1/revisions/{revision}/wait[?timeout=10s]` | | [`Propagation`] (504 if incomplete) |
//! | `GET /v1/certificates` | | list of [`CertificateStatus`] |
//! | `GET /v1/certificates/{listener}` | | [`CertificateStatus`] |
//! | `POST /v1/certificates/{listener}/renew` | | [`Written`] |
//!
//! Every error is an [`ErrorBody`] with a 4xx or 5xx status.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::{AdminState, Revision};

/// The header naming who makes a change, for the audit log (the token says it is allowed).
pub const HEADER_ACTOR: &str = "x-fulcrum-actor";

/// What every failed call answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, for a person.
    pub error: String,
    /// What to do about it, when the server knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// A change was committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Written {
    /// The configuration revision that holds it.
    pub revision: Revision,
}

/// What applying a cluster file would change, without changing it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DryRun {
    /// The revision the comparison was made against.
    pub revision: Revision,
    /// One line per object added (`+`), removed (`-`) or changed (`~`); empty when the file
    /// matches what runs.
    pub changes: Vec<String>,
}

/// A backend's new administrative state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendStateChange {
    /// Active, draining or disabled.
    pub state: AdminState,
}

/// A backend's new weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendWeightChange {
    /// The weight (validated like a cluster file's).
    pub weight: u32,
}

/// One node of the cluster as its own admin API reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node's id.
    pub id: u64,
    /// leader, follower, candidate or learner.
    pub role: String,
    /// The leader this node follows, if it knows one.
    pub leader: Option<u64>,
    /// The Raft term it is in.
    pub term: u64,
    /// The configuration revision its data plane serves.
    pub revision: Revision,
    /// Its virtual routers.
    pub vrrp: Vec<VrrpStatus>,
    /// Its view of each pool.
    pub pools: Vec<PoolStatus>,
    /// True while it drains before stopping.
    pub draining: bool,
    /// Its BGP announcements and sessions, if it announces VIPs over BGP.
    #[serde(default)]
    pub bgp: Option<BgpStatus>,
}

/// What a node announces over BGP, and its sessions to the routers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BgpStatus {
    /// The VIPs announced now (none while a tracked pool cannot be served, or stopping).
    pub announced: Vec<IpAddr>,
    /// The VIPs it would announce.
    pub vips: Vec<IpAddr>,
    /// One per router.
    pub sessions: Vec<BgpSession>,
    /// Whether an operator drained the node (`fulcrumctl drain`): it announces nothing.
    #[serde(default)]
    pub drained: bool,
    /// With flow steering (`keep_flows`): the members sharing the flows, as this node sees
    /// them, itself included.
    #[serde(default)]
    pub flow_members: Vec<FlowMemberStatus>,
}

/// One member sharing a BGP VIP's flows, as one node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowMemberStatus {
    /// Its id.
    pub node: u64,
    /// `announcing` (takes new connections) or `draining` (serves those it holds).
    pub standing: String,
    /// Packets this node handed to it so far (its connections, or its new ones).
    pub handed_packets: u64,
}

/// One BGP session, as the node's BIRD reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BgpSession {
    /// The router's address.
    pub neighbor: IpAddr,
    /// BIRD's protocol state (`up`, `start`, `down`) and BGP state (`Established`, `Active`…).
    pub state: String,
    /// Routes this node's session has sent the router (what the router holds from this
    /// node, as far as the node can tell).
    #[serde(default)]
    pub routes_sent: u32,
}

/// One virtual router on one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VrrpStatus {
    /// The VRID.
    pub vrid: u8,
    /// The link.
    pub interface: String,
    /// initialize, backup or master.
    pub state: String,
    /// The priority advertised now, after penalties.
    pub priority: u8,
    /// Its virtual addresses.
    pub vips: Vec<IpAddr>,
    /// Whether the VIPs are on this node's interface now (master, and with a lease if
    /// fenced).
    #[serde(default)]
    pub holding: bool,
    /// The quorum fence's lease this node holds for the VRID, if one runs.
    #[serde(default)]
    pub lease: Option<LeaseView>,
}

/// A quorum-fence lease as a status shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseView {
    /// The holding's epoch: the Raft term of the leader that granted it, and its count of
    /// grants to a new holder.
    pub epoch: (u64, u64),
    /// How long the lease runs yet, in milliseconds.
    pub left_ms: u64,
}

/// One pool as one node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStatus {
    /// The pool's name.
    pub name: String,
    /// Its backends, declared and still draining.
    pub backends: Vec<BackendStatus>,
}

/// One backend as one node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendStatus {
    /// Its address.
    pub address: SocketAddr,
    /// up, down, or unchecked (no result yet).
    pub health: String,
    /// active, draining, disabled, or removed (draining after removal).
    pub admin: String,
    /// Its weight.
    pub weight: u32,
    /// Connections (L4) or requests (L7) open now; a draining backend's falls to zero.
    pub active: u64,
}

/// The whole cluster: the membership, and each node's own report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The members.
    pub members: Members,
    /// The leader the answering node knows.
    pub leader: Option<u64>,
    /// The answering node's term.
    pub term: u64,
    /// The owner of each VRID, when exactly one node is master of it.
    pub vips: Vec<VipOwner>,
    /// Each member's report, or why it gave none.
    pub nodes: Vec<NodeReport>,
}

/// Who holds a VRID.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipOwner {
    /// The VRID.
    pub vrid: u8,
    /// Its addresses.
    pub vips: Vec<IpAddr>,
    /// The nodes that report being VRRP master: one when all is well, none during an
    /// election; two while VRRP is partitioned (the fence then lets only one hold the VIPs).
    pub masters: Vec<u64>,
    /// The nodes that have the VIPs on their interface: one when all is well, two in a split
    /// brain.
    #[serde(default)]
    pub holders: Vec<u64>,
    /// The holder's lease, when fenced.
    #[serde(default)]
    pub lease: Option<LeaseView>,
}

/// A member's answer to the status fan-out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    /// The member's id.
    pub id: u64,
    /// Its status, if it answered.
    pub status: Option<NodeStatus>,
    /// Why it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The Raft membership.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Members {
    /// Every member, voters and learners, by id.
    pub members: Vec<Member>,
}

/// One member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its id.
    pub id: u64,
    /// Its Raft RPC address.
    pub address: String,
    /// True for a voter, false for a learner.
    pub voter: bool,
}

/// Adds a node as a learner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddMember {
    /// The new node's id.
    pub id: u64,
    /// Its Raft RPC address (`host:port`).
    pub address: String,
}

/// Moves a VRID's mastership.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failover {
    /// The node that should own the VRID; `None` lifts an earlier move, so configured
    /// priorities decide again.
    pub to: Option<u64>,
}

/// A failover request was carried out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverDone {
    /// The VRID.
    pub vrid: u8,
    /// The node now master of it, if one was seen within the wait.
    pub master: Option<u64>,
}

/// Drain a node's BGP VIPs (it withdraws them and serves only the connections it holds),
/// or lift the drain; also the answer, once the node took it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeDrain {
    /// True to drain, false to announce again.
    pub drain: bool,
}

/// How far a revision has spread.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Propagation {
    /// The revision waited for.
    pub revision: Revision,
    /// True when every member had applied it in time.
    pub complete: bool,
    /// Each member's applied revision (`None` when it did not answer).
    pub applied: Vec<(u64, Option<Revision>)>,
}

/// An ACME listener's certificate as the cluster keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateStatus {
    /// The listener.
    pub listener: String,
    /// The directory it orders from.
    pub directory: String,
    /// The challenge it answers.
    pub challenge: String,
    /// The names it should cover now.
    pub hostnames: Vec<String>,
    /// The certificate in service, if one was issued.
    pub issued: Option<IssuedStatus>,
    /// The order in progress or waiting after a failure, if any.
    pub order: Option<OrderStatus>,
}

/// A certificate in service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedStatus {
    /// The names it covers.
    pub hostnames: Vec<String>,
    /// Start of validity (UNIX seconds).
    pub not_before: u64,
    /// End of validity (UNIX seconds).
    pub not_after: u64,
    /// When it is due for renewal (UNIX seconds).
    pub renew_at: u64,
    /// The chain, leaf first, as PEM.
    pub chain_pem: String,
}

/// An order in progress, failed and waiting, or asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderStatus {
    /// The authority's order URL, once placed.
    pub url: Option<String>,
    /// Failed attempts in a row.
    pub failures: u32,
    /// No new attempt before this (UNIX seconds).
    pub retry_at: u64,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// An operator asked for a new certificate.
    pub renew_requested: bool,
}

/// Every ACME listener's certificate status in `config`, in listener order.
pub fn certificate_statuses(config: &crate::Config) -> Vec<CertificateStatus> {
    config
        .spec
        .listeners
        .iter()
        .filter_map(|listener| {
            let acme = listener.acme()?;
            let issued = config.acme.certificate(&listener.name).map(|c| IssuedStatus {
                hostnames: c.hostnames.clone(),
                not_before: c.not_before,
                not_after: c.not_after,
                renew_at: c.renew_at(),
                chain_pem: c.chain_pem.clone(),
            });
            let order = config.acme.order(&listener.name).map(|o| OrderStatus {
                url: o.url.clone(),
                failures: o.failures,
                retry_at: o.retry_at,
                last_error: o.last_error.clone(),
                renew_requested: o.renew_requested,
            });
            Some(CertificateStatus {
                listener: listener.name.to_string(),
                directory: acme.directory.clone(),
                challenge: acme.challenge.to_string(),
                hostnames: acme.names_for(listener),
                issued,
                order,
            })
        })
        .collect()
}
