//! The node file: what belongs to one node and is not replicated — its identity, logging,
//! its VRRP instances (`[[vrrp]]`) and its part in the configuration store (`[raft]`).
//!
//! Parsing names the field at fault (`vrrp[1].priority`) and the line; checks that need the
//! VRRP state machine's rules are left to the VRRP driver, which reports them at start.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use fulcrum_model::file::line_of;
use fulcrum_raft_store::rpc::MIN_SECRET_BYTES;
use fulcrum_raft_store::tls::PeerTlsFiles;
use fulcrum_raft_store::{RaftTiming, StoreSettings};
use fulcrum_vrrp::Destination;
use fulcrum_vrrp::InstanceConfig;
use fulcrum_vrrp::wire::{ChecksumForm, Family};
use fulcrum_vrrp::{GarpSettings, InstanceSettings};
use serde::{Deserialize, Serialize};

use crate::cluster::FenceTimes;

/// The node file.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFile {
    /// This node's id in the cluster, unique among its peers.
    pub node_id: u64,
    /// Where logs go and how much.
    #[serde(default)]
    pub log: LogSettings,
    /// Virtual routers this node takes part in.
    #[serde(default)]
    pub vrrp: Vec<VrrpInstance>,
    /// This node's part in the replicated configuration store; none runs without it.
    #[serde(default)]
    pub raft: Option<RaftSection>,
    /// The admin API; none runs without it.
    #[serde(default)]
    pub admin: Option<AdminSection>,
    /// Where `/metrics` (Prometheus text format) is served, e.g. `198.18.0.11:9100`.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// Data-plane worker threads; one per core by default.
    #[serde(default)]
    pub workers: Option<std::num::NonZeroUsize>,
    /// On shutdown, and after handing a VIP over, how long open connections may finish
    /// before they are closed.
    #[serde(default = "default_shutdown_drain", with = "fulcrum_model::duration")]
    pub shutdown_drain: Duration,
    /// Whether a VRRP master holds its VIPs only with a lease the Raft quorum confirms
    /// (`quorum`, the default with `[raft]`), or on VRRP's word alone (`off`, for a cluster
    /// mixed with keepalived).
    #[serde(default)]
    pub fence: Option<FenceMode>,
    /// How long a fence lease lasts: the same on every node. A crashed master's VIPs move
    /// after about this long; Raft elections must fit in it (checked).
    #[serde(default = "default_fence_lease", with = "fulcrum_model::duration")]
    pub fence_lease: Duration,
    /// How ACME keys are sealed in the store; without it, under the cluster secret.
    #[serde(default)]
    pub acme: Option<AcmeSection>,
    /// VIPs announced to routers over BGP (every healthy node at once, ECMP).
    #[serde(default)]
    pub bgp: Option<BgpSection>,
}

/// The `[bgp]` section: VIPs this node announces to its routers while it can serve them,
/// through a BIRD 2 that fulcrumd runs (and that dies with it).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BgpSection {
    /// This node's AS number (the same on every node, so routers see equal paths).
    pub local_as: u32,
    /// The BGP router id: this node's IPv4 address.
    pub router_id: std::net::Ipv4Addr,
    /// The VIPs announced (as /32 and /128); they are added to `lo` so the node accepts
    /// their traffic.
    pub vips: Vec<IpAddr>,
    /// Pools that must be servable here for the VIPs to be announced.
    #[serde(default)]
    pub track_pools: Vec<String>,
    /// The routers.
    pub neighbors: Vec<BgpNeighbor>,
    /// Bidirectional forwarding detection on every session, so a dead node is withdrawn
    /// within `bfd_interval × bfd_multiplier`.
    #[serde(default = "default_true")]
    pub bfd: bool,
    /// BFD's transmit and receive interval.
    #[serde(default = "default_bfd_interval", with = "fulcrum_model::duration")]
    pub bfd_interval: Duration,
    /// Missed BFD packets before a session is down.
    #[serde(default = "default_bfd_multiplier")]
    pub bfd_multiplier: u8,
    /// BGP hold time (keepalives every third of it).
    #[serde(default = "default_hold_time", with = "fulcrum_model::duration")]
    pub hold_time: Duration,
    /// Where BIRD's configuration, control socket and pid file go (its log goes to
    /// fulcrumd's standard error).
    #[serde(default = "default_bgp_run_dir")]
    pub run_dir: PathBuf,
    /// Keep established connections when the node set changes: packets of a connection
    /// another node holds are handed to it (flow steering, among the Raft members). On by
    /// default with `[raft]`, which it needs; [`NodeFile::parse`] settles it.
    #[serde(default)]
    pub keep_flows: Option<bool>,
    /// Hold rate limits cluster-wide: every node counts what the others admitted (reported
    /// every 100 ms among the Raft members). On by default with `[raft]`, which it needs;
    /// [`NodeFile::parse`] settles it.
    #[serde(default)]
    pub share_rate_limits: Option<bool>,
    /// The link the nodes share, where steered packets cross: by default the one towards
    /// the first neighbor.
    #[serde(default)]
    pub interface: Option<String>,
    /// The BIRD 2 daemon.
    #[serde(default = "default_bird")]
    pub bird: PathBuf,
    /// Its control client.
    #[serde(default = "default_birdc")]
    pub birdc: PathBuf,
}

/// One BGP router.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BgpNeighbor {
    /// Its address (the session's; IPv4 sessions carry IPv4 VIPs, IPv6 ones IPv6 VIPs).
    pub address: IpAddr,
    /// Its AS number.
    pub remote_as: u32,
}

fn default_bfd_interval() -> Duration {
    Duration::from_millis(100)
}
fn default_bfd_multiplier() -> u8 {
    3
}
fn default_hold_time() -> Duration {
    Duration::from_secs(9)
}
fn default_bgp_run_dir() -> PathBuf {
    PathBuf::from("/run/fulcrum/bgp")
}
fn default_bird() -> PathBuf {
    PathBuf::from("/usr/sbin/bird")
}
fn default_birdc() -> PathBuf {
    PathBuf::from("/usr/sbin/birdc")
}

/// The `[acme]` section: the secret that seals ACME account and certificate keys in the
/// replicated store, and the previous ones while a rotation is under way.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeSection {
    /// A file holding the sealing secret (the same on every node); default: the cluster
    /// secret (`[raft] secret_file`).
    #[serde(default)]
    pub seal_key_file: Option<PathBuf>,
    /// Files holding earlier sealing secrets: keys sealed under them still open, and the
    /// leader seals them again under the current one.
    #[serde(default)]
    pub previous_seal_key_files: Vec<PathBuf>,
}

impl AcmeSection {
    /// The current sealing secret (`cluster_secret` unless a file names one) and the
    /// previous ones.
    pub fn seal_secrets(
        &self,
        cluster_secret: &[u8],
    ) -> Result<(Vec<u8>, Vec<Vec<u8>>), NodeFileError> {
        let current = match &self.seal_key_file {
            Some(path) => read_secret(path, "ACME seal key", MIN_SECRET_BYTES)?,
            None => cluster_secret.to_vec(),
        };
        let previous = self
            .previous_seal_key_files
            .iter()
            .map(|path| read_secret(path, "previous ACME seal key", MIN_SECRET_BYTES))
            .collect::<Result<_, _>>()?;
        Ok((current, previous))
    }
}

fn default_fence_lease() -> Duration {
    crate::cluster::DEFAULT_LEASE
}

/// How VIP ownership is fenced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FenceMode {
    /// A master holds its VIPs only with a quorum-confirmed lease.
    Quorum,
    /// A master holds its VIPs on VRRP's word alone.
    Off,
}

fn default_shutdown_drain() -> Duration {
    Duration::from_secs(30)
}

/// The `[admin]` section: where the admin API listens and the token it wants.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// Where the admin API listens, e.g. `198.18.0.11:7100`; keep it on a management network.
    pub listen: SocketAddr,
    /// A file holding the bearer token every call but `/healthz` must present.
    pub token_file: PathBuf,
    /// A file holding a second token that may only read: GET calls, `/metrics` included.
    #[serde(default)]
    pub read_token_file: Option<PathBuf>,
    /// Serve the API over TLS with this certificate (its chain, leaf first) and key, read
    /// again when they change; fulcrumctl then needs the CA that signed it (`--ca-file`).
    #[serde(default)]
    pub tls: Option<fulcrum_model::Certificate>,
}

/// The shortest admin token accepted: 128 bits of base64 or hex is longer than this.
pub const MIN_TOKEN_BYTES: usize = 16;

impl AdminSection {
    /// The token, read from its file (a trailing newline is not part of it).
    pub fn token(&self) -> Result<Vec<u8>, NodeFileError> {
        read_secret(&self.token_file, "admin token", MIN_TOKEN_BYTES)
    }

    /// The read-only token, if the file names one.
    pub fn read_token(&self) -> Result<Option<Vec<u8>>, NodeFileError> {
        let Some(path) = &self.read_token_file else { return Ok(None) };
        let token = read_secret(path, "read-only admin token", MIN_TOKEN_BYTES)?;
        if token == self.token()? {
            return Err(NodeFileError::SameTokens);
        }
        Ok(Some(token))
    }
}

/// Reads a secret from `path`, without a trailing newline, and insists on `min` bytes.
fn read_secret(path: &Path, what: &'static str, min: usize) -> Result<Vec<u8>, NodeFileError> {
    let shown = path.display().to_string();
    let secret = std::fs::read(path).map_err(|source| NodeFileError::Secret {
        what,
        path: shown.clone(),
        source,
    })?;
    // A trailing newline from `echo` or an editor is not part of the secret.
    let secret = secret.trim_ascii_end().to_vec();
    if secret.len() < min {
        return Err(NodeFileError::ShortSecret { what, path: shown, len: secret.len(), min });
    }
    Ok(secret)
}

/// The `[raft]` section: where this node's store listens and keeps its data, and which
/// cluster it belongs to.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RaftSection {
    /// Where the Raft RPC server listens, e.g. `198.18.0.11:7000`.
    pub listen: SocketAddr,
    /// The address peers reach it at; `listen` by default.
    #[serde(default)]
    pub advertise: Option<String>,
    /// The directory of the log and state machine.
    pub data_dir: PathBuf,
    /// The cluster's name; nodes of another cluster are refused.
    pub cluster_name: String,
    /// A file holding the cluster secret (at least 16 bytes), the same on every node.
    pub secret_file: PathBuf,
    /// The members of a brand-new cluster; the one with the lowest id initializes it. Leave
    /// empty on a node that will be added to an existing cluster.
    #[serde(default)]
    pub initial_members: Vec<Member>,
    /// How often the leader sends heartbeats.
    #[serde(default = "default_heartbeat", with = "fulcrum_model::duration")]
    pub heartbeat: Duration,
    /// The shortest time without a leader before an election.
    #[serde(default = "default_election_min", with = "fulcrum_model::duration")]
    pub election_timeout_min: Duration,
    /// The longest.
    #[serde(default = "default_election_max", with = "fulcrum_model::duration")]
    pub election_timeout_max: Duration,
    /// Entries between snapshots.
    #[serde(default = "default_snapshot_every")]
    pub snapshot_every: u64,
    /// Mutual TLS between nodes: the cluster CA, and this node's certificate and key (see
    /// `fulcrumctl pki`). Without it, peer traffic is signed but travels in clear.
    #[serde(default)]
    pub tls: Option<PeerTlsSection>,
}

/// The `[raft.tls]` section: PEM files, read again when they change.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PeerTlsSection {
    /// The cluster CA's certificate (two, while the CA is being replaced).
    pub ca: PathBuf,
    /// This node's certificate, signed by the cluster CA.
    pub cert: PathBuf,
    /// This node's private key.
    pub key: PathBuf,
}

/// One member of a new cluster.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    /// Its node id.
    pub id: u64,
    /// Its Raft address.
    pub address: String,
}

fn default_heartbeat() -> Duration {
    RaftTiming::default().heartbeat
}
fn default_election_min() -> Duration {
    RaftTiming::default().election_timeout.0
}
fn default_election_max() -> Duration {
    RaftTiming::default().election_timeout.1
}
fn default_snapshot_every() -> u64 {
    RaftTiming::default().snapshot_every
}

/// Logging.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// `text` for people, `json` for log collectors.
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter: `info`, `debug`, `fulcrum_vrrp=debug,info`, …
    #[serde(default = "default_level")]
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> LogSettings {
        LogSettings { format: LogFormat::default(), level: default_level() }
    }
}

fn default_level() -> String {
    "info".into()
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// One `[[vrrp]]` instance.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VrrpInstance {
    /// The link, e.g. `eth0`.
    pub interface: String,
    /// Virtual router id, 1 to 255, the same on every node of this virtual router.
    pub vrid: u8,
    /// 1 to 254 (higher wins), or 255 for the owner of the addresses.
    #[serde(default = "default_priority")]
    pub priority: u8,
    /// How often the master advertises: 10ms to 40.95s, in whole centiseconds.
    #[serde(default = "default_advert_interval", with = "fulcrum_model::duration")]
    pub advert_interval: Duration,
    /// The virtual IPs, IPv4 and IPv6: the node runs one virtual router per family with this
    /// VRID (RFC 9568 keeps families apart).
    pub vips: Vec<IpAddr>,
    /// Whether a higher-priority backup takes over from a live master.
    #[serde(default = "default_true")]
    pub preempt: bool,
    /// How long after start a backup holds back from preempting.
    #[serde(default, with = "fulcrum_model::duration")]
    pub preempt_delay: Duration,
    /// This node's IPv4 address on the link; the interface's first IPv4 address by default.
    #[serde(default)]
    pub primary_address: Option<Ipv4Addr>,
    /// This node's IPv6 address on the link, which IPv6 adverts are sent from; the
    /// interface's link-local address by default, as RFC 9568 §5.1.2.1 asks.
    #[serde(default)]
    pub primary_address_v6: Option<Ipv6Addr>,
    /// Advertise to these peers by unicast instead of multicast, and hear only them (each
    /// family's router its own family's peers).
    #[serde(default)]
    pub unicast_peers: Vec<IpAddr>,
    /// The other routers' addresses on the link (IPv6 ones link-local); when set,
    /// advertisements from anyone else are dropped, so a host that is not a member cannot
    /// take the VIPs away.
    #[serde(default)]
    pub members: Vec<IpAddr>,
    /// Gratuitous ARP frames per VIP on becoming master.
    #[serde(default = "default_garp_repeat")]
    pub garp_repeat: u32,
    /// Time between those frames.
    #[serde(default = "default_garp_spacing", with = "fulcrum_model::duration")]
    pub garp_spacing: Duration,
    /// While master, announce again this often (`"0s"` never).
    #[serde(default = "default_garp_refresh", with = "fulcrum_model::duration")]
    pub garp_refresh: Duration,
    /// Checksum of transmitted adverts: `pseudo_header` (RFC 9568, keepalived's default)
    /// or `message_only`. Both forms are accepted on receive.
    #[serde(default)]
    pub checksum: ChecksumChoice,
    /// Pools this node must be able to serve to deserve the VIP: while one of them has no
    /// healthy backend here, the priority drops by `track_weight`.
    #[serde(default)]
    pub track_pools: Vec<String>,
    /// Subtracted from the priority while a tracked pool is unservable; the default drops
    /// it to 1, so any node that can serve wins.
    #[serde(default = "default_track_weight")]
    pub track_weight: u32,
}

/// The transmit checksum form, as written in the node file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChecksumChoice {
    /// Over the IPv4 pseudo-header and the message.
    #[default]
    PseudoHeader,
    /// Over the message alone.
    MessageOnly,
}

fn default_priority() -> u8 {
    fulcrum_vrrp::machine::DEFAULT_PRIORITY
}
fn default_advert_interval() -> Duration {
    // A crashed master's backups notice within about 350 ms (three adverts and the skew).
    Duration::from_millis(100)
}
fn default_track_weight() -> u32 {
    255
}
fn default_true() -> bool {
    true
}
fn default_garp_repeat() -> u32 {
    GarpSettings::default().repeat
}
fn default_garp_spacing() -> Duration {
    GarpSettings::default().spacing
}
fn default_garp_refresh() -> Duration {
    GarpSettings::default().refresh.unwrap_or(Duration::ZERO)
}

/// Why a node file was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum NodeFileError {
    /// The file could not be read.
    #[error("cannot read node file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The text is not TOML.
    #[error("{0}")]
    Syntax(String),
    /// A value has the wrong shape or type.
    #[error("field `{field}` (line {line}): {problem}")]
    Field {
        /// The field at fault, e.g. `vrrp[1].priority`.
        field: String,
        /// The 1-based line where the problem is.
        line: usize,
        /// What is wrong.
        problem: String,
    },
    /// Raft elections could outlast the quorum fence's lease.
    #[error(
        "field `raft.election_timeout_max`: {max:?} is too long for a fence_lease of {lease:?} with a {heartbeat:?} heartbeat (at most {limit:?}, so a Raft election ends within a lease); lower it, raise fence_lease on every node, or set fence = \"off\""
    )]
    FenceTiming {
        /// What the file says.
        max: Duration,
        /// The longest the fence allows.
        limit: Duration,
        /// The lease.
        lease: Duration,
        /// The Raft heartbeat.
        heartbeat: Duration,
    },
    /// The read-only token is the admin token.
    #[error(
        "field `admin.read_token_file`: it holds the admin token itself; give the read-only role a token of its own"
    )]
    SameTokens,
    /// The fence lease is out of range.
    #[error("field `fence_lease`: {0:?} is out of range (100ms to 10s)")]
    FenceLease(Duration),
    /// The quorum fence was asked for without a quorum to ask.
    #[error("field `fence`: \"quorum\" needs a [raft] section (the quorum that confirms leases)")]
    FenceWithoutRaft,
    /// A VRRP instance has no virtual IP.
    #[error("field `vrrp[{index}].vips`: a VRRP instance needs at least one VIP")]
    NoVips {
        /// The instance's position in the file, from 0.
        index: usize,
    },
    /// Unicast peers or members are listed, but none of a family the instance has VIPs of:
    /// that family's router would hear nobody (and hold the VIPs everywhere), or anybody.
    #[error(
        "field `vrrp[{index}].{field}`: the instance has {family} VIPs but lists no {family} \
         address (for IPv6, the other nodes' link-local addresses on the link)"
    )]
    NoAddressOfFamily {
        /// The instance's position in the file, from 0.
        index: usize,
        /// `unicast_peers` or `members`.
        field: &'static str,
        /// The family without addresses.
        family: Family,
    },
    /// A secret file could not be read.
    #[error("cannot read the {what} {path}: {source}")]
    Secret {
        /// Which secret.
        what: &'static str,
        /// The secret file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A secret file holds too few bytes.
    #[error(
        "the {what} in {path} has {len} bytes, it needs at least {min}; \
         make one with: head -c 32 /dev/urandom | base64 > {path}"
    )]
    ShortSecret {
        /// Which secret.
        what: &'static str,
        /// Its file.
        path: String,
        /// How many bytes it has.
        len: usize,
        /// How many it needs.
        min: usize,
    },
    /// The `[raft]` section is inconsistent.
    #[error("[raft]: {0}")]
    Raft(String),
    /// The `[bgp]` section cannot work.
    #[error("[bgp]: {0}")]
    Bgp(String),
    /// The primary address is not given and the interface has none to offer.
    #[error(
        "VRID {vrid}: interface {interface} has no {} address (or does not exist); \
         give {} or configure the interface",
        match family { Family::Ipv4 => "IPv4", Family::Ipv6 => "IPv6 link-local" },
        match family { Family::Ipv4 => "primary_address", Family::Ipv6 => "primary_address_v6" }
    )]
    NoPrimaryAddress {
        /// The virtual router.
        vrid: u8,
        /// Its interface.
        interface: String,
        /// The family of the router that lacks one.
        family: Family,
    },
    /// An error of the file at `path`.
    #[error("node file {path}: {source}")]
    In {
        /// The file.
        path: String,
        /// What is wrong in it.
        source: Box<NodeFileError>,
    },
}

impl NodeFile {
    /// Reads and parses the node file at `path`.
    pub fn load(path: &Path) -> Result<NodeFile, NodeFileError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|source| NodeFileError::Read { path: shown.clone(), source })?;
        NodeFile::parse(&text)
            .map_err(|source| NodeFileError::In { path: shown, source: Box::new(source) })
    }

    /// Parses a node file's text; the error names the field and the line.
    pub fn parse(text: &str) -> Result<NodeFile, NodeFileError> {
        let deserializer = toml::de::Deserializer::parse(text)
            .map_err(|error| NodeFileError::Syntax(error.to_string()))?;
        let mut file: NodeFile =
            serde_path_to_error::deserialize(deserializer).map_err(|error| {
                NodeFileError::Field {
                    field: error.path().to_string(),
                    line: error.inner().span().map_or(1, |span| line_of(text, span.start)),
                    problem: error.inner().message().to_owned(),
                }
            })?;
        if let Some(index) = file.vrrp.iter().position(|instance| instance.vips.is_empty()) {
            return Err(NodeFileError::NoVips { index });
        }
        for (index, instance) in file.vrrp.iter().enumerate() {
            let families = |addresses: &[IpAddr]| -> Vec<Family> {
                addresses.iter().map(|a| Family::of(*a)).collect()
            };
            for (field, listed) in
                [("unicast_peers", &instance.unicast_peers), ("members", &instance.members)]
            {
                let listed = families(listed);
                let missing = families(&instance.vips).into_iter().find(|f| !listed.contains(f));
                if let Some(family) = missing.filter(|_| !listed.is_empty()) {
                    return Err(NodeFileError::NoAddressOfFamily { index, field, family });
                }
            }
        }
        if let Some(bgp) = &file.bgp {
            if bgp.vips.is_empty() || bgp.neighbors.is_empty() {
                return Err(NodeFileError::Bgp("list at least one VIP and one neighbor".into()));
            }
            if bgp.bfd_multiplier == 0 || bgp.bfd_interval < Duration::from_millis(10) {
                return Err(NodeFileError::Bgp(
                    "bfd_multiplier must be at least 1 and bfd_interval at least 10ms".into(),
                ));
            }
            let in_vrrp =
                bgp.vips.iter().find(|vip| file.vrrp.iter().any(|i| i.vips.contains(vip)));
            if let Some(vip) = in_vrrp {
                return Err(NodeFileError::Bgp(format!(
                    "{vip} is also a VRRP VIP: a VIP is announced over BGP or elected by VRRP, not both"
                )));
            }
            if bgp.keep_flows == Some(true) && file.raft.is_none() {
                return Err(NodeFileError::Bgp(
                    "keep_flows needs [raft]: the nodes that share flows are its members".into(),
                ));
            }
            if bgp.share_rate_limits == Some(true) && file.raft.is_none() {
                return Err(NodeFileError::Bgp(
                    "share_rate_limits needs [raft]: the nodes that share limits are its members"
                        .into(),
                ));
            }
        }
        let has_raft = file.raft.is_some();
        if let Some(bgp) = file.bgp.as_mut() {
            bgp.keep_flows = Some(bgp.keep_flows.unwrap_or(has_raft));
            bgp.share_rate_limits = Some(bgp.share_rate_limits.unwrap_or(has_raft));
        }
        if file.fence == Some(FenceMode::Quorum) && file.raft.is_none() {
            return Err(NodeFileError::FenceWithoutRaft);
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(10)).contains(&file.fence_lease) {
            return Err(NodeFileError::FenceLease(file.fence_lease));
        }
        if let Some(raft) = file.raft.as_ref().filter(|_| file.fenced()) {
            let limit = file.fence_times().longest_election_allowed(raft.heartbeat);
            if raft.election_timeout_max > limit {
                return Err(NodeFileError::FenceTiming {
                    max: raft.election_timeout_max,
                    limit,
                    lease: file.fence_lease,
                    heartbeat: raft.heartbeat,
                });
            }
        }
        Ok(file)
    }

    /// The quorum fence's timings.
    pub fn fence_times(&self) -> FenceTimes {
        FenceTimes { lease: self.fence_lease }
    }

    /// Whether this node's VIPs are fenced by the Raft quorum: with `[raft]`, unless
    /// `fence = "off"`.
    pub fn fenced(&self) -> bool {
        self.raft.is_some() && self.fence != Some(FenceMode::Off)
    }
}

impl RaftSection {
    /// The store's settings for node `node_id`, with the secret read from its file.
    pub fn settings(&self, node_id: u64) -> Result<StoreSettings, NodeFileError> {
        let secret = read_secret(&self.secret_file, "cluster secret", MIN_SECRET_BYTES)?;
        if self.election_timeout_min <= self.heartbeat
            || self.election_timeout_max <= self.election_timeout_min
        {
            return Err(NodeFileError::Raft(
                "need heartbeat < election_timeout_min < election_timeout_max".into(),
            ));
        }
        let mut initial_members = BTreeMap::new();
        for member in &self.initial_members {
            if initial_members.insert(member.id, member.address.clone()).is_some() {
                return Err(NodeFileError::Raft(format!(
                    "initial member {} is listed twice",
                    member.id
                )));
            }
        }
        if !initial_members.is_empty() && !initial_members.contains_key(&node_id) {
            return Err(NodeFileError::Raft(format!(
                "initial_members must include this node ({node_id}) or be empty"
            )));
        }
        Ok(StoreSettings {
            node_id,
            listen: self.listen,
            advertise: self.advertise.clone().unwrap_or_else(|| self.listen.to_string()),
            data_dir: self.data_dir.clone(),
            cluster_name: self.cluster_name.clone(),
            secret,
            initial_members,
            tls: self.tls.as_ref().map(|tls| PeerTlsFiles {
                ca: tls.ca.clone(),
                cert: tls.cert.clone(),
                key: tls.key.clone(),
            }),
            timing: RaftTiming {
                heartbeat: self.heartbeat,
                election_timeout: (self.election_timeout_min, self.election_timeout_max),
                snapshot_every: self.snapshot_every,
                ..RaftTiming::default()
            },
        })
    }
}

impl VrrpInstance {
    /// The driver's settings for this instance: one virtual router per family its VIPs are
    /// of, IPv4 first. `interface_address` supplies a primary address the file does not give.
    pub fn settings(
        &self,
        fence: Option<FenceTimes>,
        interface_address: impl Fn(&str, Family) -> Option<IpAddr>,
    ) -> Result<Vec<InstanceSettings>, NodeFileError> {
        [Family::Ipv4, Family::Ipv6]
            .into_iter()
            .filter(|family| self.vips.iter().any(|vip| Family::of(*vip) == *family))
            .map(|family| {
                let given = match family {
                    Family::Ipv4 => self.primary_address.map(IpAddr::V4),
                    Family::Ipv6 => self.primary_address_v6.map(IpAddr::V6),
                };
                let primary_address = given
                    .or_else(|| interface_address(&self.interface, family))
                    .ok_or_else(|| NodeFileError::NoPrimaryAddress {
                        vrid: self.vrid,
                        interface: self.interface.clone(),
                        family,
                    })?;
                Ok(self.family_settings(fence, primary_address))
            })
            .collect()
    }

    /// The router of `primary_address`'s family.
    fn family_settings(
        &self,
        fence: Option<FenceTimes>,
        primary_address: IpAddr,
    ) -> InstanceSettings {
        let family = Family::of(primary_address);
        let of_family = |addresses: &[IpAddr]| -> Vec<IpAddr> {
            addresses.iter().copied().filter(|a| Family::of(*a) == family).collect()
        };
        let mut router = InstanceConfig::new(self.vrid, primary_address, of_family(&self.vips));
        router.priority = self.priority;
        router.advert_interval = self.advert_interval;
        router.preempt = self.preempt;
        router.preempt_delay = self.preempt_delay;
        // Fenced, a forged advertisement claiming a long interval cannot stretch a takeover.
        router.cap_master_interval = fence.is_some();
        // A dual-stack VRID moves as one: its IPv6 router goes where the IPv4 one is master.
        router.follower = family == Family::Ipv6 && self.vips.iter().any(IpAddr::is_ipv4);
        InstanceSettings {
            interface: self.interface.clone(),
            router,
            destination: if self.unicast_peers.is_empty() {
                Destination::Multicast
            } else {
                Destination::Unicast(of_family(&self.unicast_peers))
            },
            checksum: match self.checksum {
                ChecksumChoice::PseudoHeader => ChecksumForm::PseudoHeader,
                ChecksumChoice::MessageOnly => ChecksumForm::MessageOnly,
            },
            garp: GarpSettings {
                repeat: self.garp_repeat,
                spacing: self.garp_spacing,
                refresh: Some(self.garp_refresh).filter(|d| !d.is_zero()),
            },
            fenced: fence.is_some(),
            // The lease in whole seconds, at least one (the kernel counts no finer), so a
            // killed node's kernel removes the address a second or two after its lease; the
            // `held` set has silenced it at the lease's end already.
            address_lifetime: fence
                .map(|times| Duration::from_secs(times.lease.as_secs_f64().ceil().max(1.0) as u64)),
            members: of_family(&self.members),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LB1: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 11));

    fn only(mut settings: Vec<InstanceSettings>) -> InstanceSettings {
        assert_eq!(settings.len(), 1, "{settings:?}");
        settings.remove(0)
    }

    #[test]
    fn a_dual_stack_instance_runs_one_router_per_family() {
        let file = NodeFile::parse(
            "node_id = 1\n[[vrrp]]\ninterface = \"eth0\"\nvrid = 51\n\
             vips = [\"2001:db8::100\", \"198.18.0.100\"]\n\
             members = [\"198.18.0.12\", \"fe80::12\"]\n",
        )
        .unwrap();
        let link_local = IpAddr::from([0xfe80, 0, 0, 0, 0, 0, 0, 0x11u16]);
        let settings = file.vrrp[0]
            .settings(None, |interface, family| {
                assert_eq!(interface, "eth0");
                Some(match family {
                    Family::Ipv4 => LB1,
                    Family::Ipv6 => link_local,
                })
            })
            .unwrap();
        let routers: Vec<_> = settings
            .iter()
            .map(|s| {
                (s.router.vrid, s.router.primary_address, s.router.vips.clone(), s.members.clone())
            })
            .collect();
        assert_eq!(
            routers,
            [
                (
                    51,
                    LB1,
                    vec!["198.18.0.100".parse().unwrap()],
                    vec!["198.18.0.12".parse().unwrap()]
                ),
                (
                    51,
                    link_local,
                    vec!["2001:db8::100".parse().unwrap()],
                    vec!["fe80::12".parse().unwrap()]
                ),
            ]
        );
        // The IPv6 router follows the IPv4 one, so the VRID moves as one.
        assert_eq!(settings.iter().map(|s| s.router.follower).collect::<Vec<_>>(), [false, true]);
        // Without a link-local address on the interface, the IPv6 router is named as missing one.
        let err = file.vrrp[0]
            .settings(None, |_, family| (family == Family::Ipv4).then_some(LB1))
            .unwrap_err();
        assert!(
            matches!(err, NodeFileError::NoPrimaryAddress { family: Family::Ipv6, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("primary_address_v6"), "{err}");
    }

    #[test]
    fn unicast_peers_and_members_must_cover_every_family_of_the_vips() {
        let err = NodeFile::parse(
            "node_id = 1\n[[vrrp]]\ninterface = \"eth0\"\nvrid = 51\n\
             vips = [\"198.18.0.100\", \"2001:db8::100\"]\nunicast_peers = [\"198.18.0.12\"]\n",
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                NodeFileError::NoAddressOfFamily {
                    index: 0,
                    field: "unicast_peers",
                    family: Family::Ipv6
                }
            ),
            "{err}"
        );
        let err = NodeFile::parse(
            "node_id = 1\n[[vrrp]]\ninterface = \"eth0\"\nvrid = 51\n\
             vips = [\"198.18.0.100\", \"2001:db8::100\"]\nmembers = [\"198.18.0.12\"]\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("`vrrp[0].members`"), "{err}");
        assert!(err.to_string().contains("link-local"), "{err}");
    }

    #[test]
    fn a_full_instance_parses_with_defaults() {
        let file = NodeFile::parse(
            r#"
node_id = 1
[log]
format = "json"
[[vrrp]]
interface = "eth0"
vrid = 51
priority = 150
advert_interval = "100ms"
vips = ["198.18.0.100"]
"#,
        )
        .unwrap();
        assert_eq!(file.log.format, LogFormat::Json);
        let settings = only(file.vrrp[0].settings(None, |_, _| Some(LB1)).unwrap());
        assert_eq!(settings.router.priority, 150);
        assert_eq!(settings.router.advert_interval, Duration::from_millis(100));
        assert_eq!(settings.router.primary_address, LB1);
        assert!(settings.router.preempt);
        assert_eq!(settings.destination, Destination::Multicast);
        assert_eq!(settings.checksum, ChecksumForm::PseudoHeader);
    }

    #[test]
    fn errors_name_the_field_and_line() {
        let err =
            NodeFile::parse("node_id = 1\n[[vrrp]]\ninterface = \"eth0\"\nvrid = 300\nvips = []\n")
                .unwrap_err()
                .to_string();
        assert!(err.contains("vrrp[0].vrid") && err.contains("line 4"), "{err}");
        let err =
            NodeFile::parse("node_id = 1\n[[vrrp]]\ninterface = \"eth0\"\nvrid = 3\nvips = []\n")
                .unwrap_err();
        assert!(matches!(err, NodeFileError::NoVips { index: 0 }), "{err}");
        let err = NodeFile::parse("node_id = 1\nbogus = 2\n").unwrap_err().to_string();
        assert!(err.contains("unknown field `bogus`"), "{err}");
    }

    #[test]
    fn the_example_node_file_parses() {
        let file = NodeFile::parse(include_str!("../../examples/node.toml")).unwrap();
        let settings = only(file.vrrp[0].settings(None, |_, _| Some(LB1)).unwrap());
        assert_eq!((settings.router.vrid, settings.router.priority), (51, 150));
        assert_eq!(settings.garp.refresh, Some(Duration::from_secs(60)));
        assert_eq!(
            (file.vrrp[0].track_pools.as_slice(), file.vrrp[0].track_weight),
            (&["web".to_owned()][..], 255)
        );
        assert_eq!(file.admin.unwrap().listen, "198.18.0.11:7100".parse().unwrap());
        let raft = file.raft.unwrap();
        assert_eq!((raft.cluster_name.as_str(), raft.initial_members.len()), ("demo", 3));
    }

    #[test]
    fn a_short_admin_token_is_refused_with_how_to_make_one() {
        let dir = tempfile::TempDir::new().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "short\n").unwrap();
        let admin = AdminSection {
            listen: "127.0.0.1:7100".parse().unwrap(),
            token_file: token,
            read_token_file: None,
            tls: None,
        };
        let error = admin.token().unwrap_err().to_string();
        assert!(error.contains("admin token") && error.contains("has 5 bytes"), "{error}");
        assert!(error.contains("head -c 32 /dev/urandom"), "{error}");
    }

    #[test]
    fn the_read_only_token_must_differ_from_the_admin_token() {
        let dir = tempfile::TempDir::new().unwrap();
        let (token, read) = (dir.path().join("token"), dir.path().join("read"));
        std::fs::write(&token, "an admin token of enough bytes\n").unwrap();
        std::fs::write(&read, "an admin token of enough bytes").unwrap();
        let mut admin = AdminSection {
            listen: "127.0.0.1:7100".parse().unwrap(),
            token_file: token,
            read_token_file: Some(read.clone()),
            tls: None,
        };
        let error = admin.read_token().unwrap_err().to_string();
        assert!(error.contains("admin.read_token_file"), "{error}");
        std::fs::write(&read, "a read-only token of enough bytes").unwrap();
        assert_eq!(admin.read_token().unwrap().unwrap(), b"a read-only token of enough bytes");
        admin.read_token_file = None;
        assert_eq!(admin.read_token().unwrap(), None);
    }

    fn raft_file(secret: &str, members: &str) -> (tempfile::TempDir, NodeFile) {
        let dir = tempfile::TempDir::new().unwrap();
        let secret_file = dir.path().join("secret");
        std::fs::write(&secret_file, secret).unwrap();
        let text = format!(
            "node_id = 2\n[raft]\nlisten = \"198.18.0.12:7000\"\ndata_dir = \"/var/lib/fulcrum\"\n\
             cluster_name = \"lab\"\nsecret_file = {:?}\nelection_timeout_min = \"100ms\"\n{members}",
            secret_file.display().to_string()
        );
        (dir, NodeFile::parse(&text).unwrap())
    }

    #[test]
    fn the_raft_section_becomes_store_settings() {
        let members = "[[raft.initial_members]]\nid = 1\naddress = \"198.18.0.11:7000\"\n\
                       [[raft.initial_members]]\nid = 2\naddress = \"198.18.0.12:7000\"\n";
        let (_dir, file) = raft_file("0123456789abcdef0123\n", members);
        let settings = file.raft.unwrap().settings(2).unwrap();
        assert_eq!(settings.secret, b"0123456789abcdef0123");
        assert_eq!(settings.advertise, "198.18.0.12:7000");
        assert_eq!(settings.initial_members.len(), 2);
        assert_eq!(settings.timing.election_timeout.0, Duration::from_millis(100));
    }

    #[test]
    fn raft_settings_refuse_weak_secrets_and_foreign_member_lists() {
        let (_dir, file) = raft_file("short\n", "");
        let err = file.raft.unwrap().settings(2).unwrap_err().to_string();
        assert!(err.contains("at least 16") && err.contains("/dev/urandom"), "{err}");

        let only_one = "[[raft.initial_members]]\nid = 1\naddress = \"198.18.0.11:7000\"\n";
        let (_dir, file) = raft_file("0123456789abcdef0123", only_one);
        let err = file.raft.unwrap().settings(2).unwrap_err().to_string();
        assert!(err.contains("must include this node (2)"), "{err}");
    }

    #[test]
    fn unicast_peers_switch_the_destination() {
        let file = NodeFile::parse(
            "node_id = 2\n[[vrrp]]\ninterface = \"eth0\"\nvrid = 7\nvips = [\"198.18.0.100\"]\nunicast_peers = [\"198.18.0.12\"]\nprimary_address = \"198.18.0.11\"\n",
        )
        .unwrap();
        let settings = only(file.vrrp[0].settings(None, |_, _| None).unwrap());
        assert_eq!(
            settings.destination,
            Destination::Unicast(vec![IpAddr::from([198, 18, 0, 12])])
        );
    }

    #[test]
    fn the_fence_refuses_raft_elections_longer_than_its_lease() {
        let file = |extra: &str| {
            format!(
                "node_id = 1\n{extra}[raft]\nlisten = \"198.18.0.11:7000\"\ndata_dir = \"/tmp/x\"\n\
                 cluster_name = \"lab\"\nsecret_file = \"/tmp/s\"\nelection_timeout_min = \"1s\"\n\
                 election_timeout_max = \"2s\"\n"
            )
        };
        let error = NodeFile::parse(&file("")).unwrap_err().to_string();
        assert!(error.contains("raft.election_timeout_max") && error.contains("fence"), "{error}");
        NodeFile::parse(&file("fence = \"off\"\n")).expect("without the fence, any timing");
        NodeFile::parse(&file("fence_lease = \"5s\"\n")).expect("a lease that outlives them");
        let error = NodeFile::parse(&file("fence_lease = \"20s\"\n")).unwrap_err().to_string();
        assert!(error.contains("fence_lease"), "{error}");
        let quorum_without_raft = NodeFile::parse("node_id = 1\nfence = \"quorum\"\n");
        // The defaults fit: an election at the default Raft timings ends within the lease.
        let defaults = RaftTiming::default();
        let limit = FenceTimes::default().longest_election_allowed(defaults.heartbeat);
        assert!(
            defaults.election_timeout.1 <= limit,
            "{:?} > {limit:?}",
            defaults.election_timeout
        );
        assert!(matches!(quorum_without_raft, Err(NodeFileError::FenceWithoutRaft)));
    }
}
