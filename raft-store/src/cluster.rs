//! One node of the configuration store: its Raft, its RPC server, and what the rest of the
//! node asks of it — write a command (from any node), read the applied configuration (local,
//! or linearizable), watch it change, change the membership, and report metrics.
//!
//! A follower forwards a write to the leader; every write carries an idempotency key (the
//! caller's, or one made here), so a write retried across a timeout or a leader change
//! applies once. Commands are validated against the local configuration before they are
//! proposed; applying stays the authority, and stays deterministic.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fulcrum_model::{ApplyError, Config, Revision};
use openraft::{BasicNode, SnapshotPolicy};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::StoreError;
use crate::log_store::LogStore;
use crate::network::{CallError, Network, RpcClient};
use crate::port::RefusalLog;
use crate::rpc::MemberChange;
use crate::rpc::{
    AuthCounters, AuthCounts, ClusterAuth, PATH_MEMBERS, PATH_PEER, PATH_READ, PATH_WRITE,
    WeakSecret,
};
use crate::server::serve;
use crate::shared::{MembershipError, PeerHandler, Redirect, Shared};
use crate::store::open;
use crate::tls::{PeerIdentity, PeerTlsFiles, PemFileError};
use crate::types::{Applied, IdempotencyKey, NodeId, Raft, Request};

/// How a node takes part in the store.
#[derive(Clone, Debug)]
pub struct StoreSettings {
    /// This node's id, unique in the cluster.
    pub node_id: NodeId,
    /// Where the Raft RPC server listens.
    pub listen: SocketAddr,
    /// The address peers reach it at (usually `listen`).
    pub advertise: String,
    /// Where the log and state machine live.
    pub data_dir: PathBuf,
    /// The cluster's name: requests from another cluster are refused.
    pub cluster_name: String,
    /// The cluster secret (at least 16 bytes) that signs every RPC.
    pub secret: Vec<u8>,
    /// The members a brand-new cluster starts with (id → address). The member with the lowest
    /// id initializes the cluster, once; a node with data never initializes again. Empty for
    /// a node that joins an existing cluster.
    pub initial_members: BTreeMap<NodeId, String>,
    /// Raft timing and snapshots.
    pub timing: RaftTiming,
    /// Mutual TLS between nodes; `None` for plain TCP.
    pub tls: Option<PeerTlsFiles>,
}

/// Raft timing; the defaults suit one LAN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftTiming {
    /// How often the leader sends heartbeats.
    pub heartbeat: Duration,
    /// A follower that hears no leader for a random time in this range starts an election.
    pub election_timeout: (Duration, Duration),
    /// A snapshot is taken after this many entries since the last one.
    pub snapshot_every: u64,
    /// Entries kept in the log behind a snapshot, for followers that are only a little behind;
    /// one further behind gets the snapshot.
    pub logs_kept_after_snapshot: u64,
    /// How long an RPC to a peer may take before it counts as unreachable.
    pub rpc_timeout: Duration,
}

impl Default for RaftTiming {
    fn default() -> RaftTiming {
        RaftTiming {
            // Elections inside the quorum fence's 350 ms lease: openraft refuses votes for
            // election_timeout_max after the last heartbeat, so an election takes up to
            // twice that (fulcrumd checks the fit).
            heartbeat: Duration::from_millis(30),
            election_timeout: (Duration::from_millis(70), Duration::from_millis(120)),
            snapshot_every: 5000,
            logs_kept_after_snapshot: 1000,
            rpc_timeout: Duration::from_secs(2),
        }
    }
}

/// Why the store could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The secret is too short.
    #[error(transparent)]
    Secret(#[from] WeakSecret),
    /// The Raft settings are inconsistent.
    #[error("invalid Raft settings: {0}")]
    Settings(#[from] openraft::ConfigError),
    /// The data directory could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The RPC address could not be bound.
    #[error("cannot listen for Raft RPCs on {address}: {source}")]
    Listen {
        /// The address.
        address: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// openraft refused to start or to initialize.
    #[error("Raft: {0}")]
    Raft(String),
    /// The peer TLS files cannot be used.
    #[error("peer TLS: {0}")]
    Tls(#[from] PemFileError),
}

/// Why a write did not happen. Nothing changed, except perhaps for
/// [`WriteError::Unavailable`] and [`WriteError::Timeout`], where a retry with the same
/// idempotency key tells.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum WriteError {
    /// The model rejected the command.
    #[error(transparent)]
    Rejected(#[from] ApplyError),
    /// No leader could take the write in time.
    #[error("no leader accepted the write within {0:?}; retry it with the same idempotency key")]
    Timeout(Duration),
    /// The store is shutting down or failed.
    #[error("the configuration store is unavailable: {0}")]
    Unavailable(String),
}

/// Why a linearizable read did not happen.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ReadError {
    /// No leader confirmed its leadership in time.
    #[error("no leader confirmed a read within {0:?}")]
    Timeout(Duration),
    /// The store is shutting down or failed.
    #[error("the configuration store is unavailable: {0}")]
    Unavailable(String),
}

/// How long a write or a linearizable read may look for a leader.
const LEADER_WAIT: Duration = Duration::from_secs(10);
/// Pause between attempts while no leader is known.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// A running node of the configuration store.
pub struct ConfigStore {
    shared: Arc<Shared>,
    client: RpcClient,
    stop: watch::Sender<bool>,
    /// Taken by the first shutdown.
    server: std::sync::Mutex<Option<JoinHandle<()>>>,
    log_store: LogStore,
    commit_latency: LatencyHistogram,
    next_key: AtomicU64,
}

impl ConfigStore {
    /// Opens the data directory, starts the RPC server and Raft, and initializes a brand-new
    /// cluster if this node is its first initial member.
    pub async fn start(settings: StoreSettings) -> Result<ConfigStore, StartError> {
        let auth = ClusterAuth::new(&settings.cluster_name, &settings.secret)?;
        let timing = &settings.timing;
        let config = openraft::Config {
            cluster_name: settings.cluster_name.clone(),
            heartbeat_interval: millis(timing.heartbeat),
            election_timeout_min: millis(timing.election_timeout.0),
            election_timeout_max: millis(timing.election_timeout.1),
            install_snapshot_timeout: millis(timing.rpc_timeout),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(timing.snapshot_every),
            max_in_snapshot_log_to_keep: timing.logs_kept_after_snapshot,
            ..openraft::Config::default()
        }
        .validate()?;
        let (log_store, state_machine) = open(&settings.data_dir)?;
        let tls = settings.tls.clone().map(PeerIdentity::load).transpose()?;
        let client = RpcClient::new(auth.clone(), tls.as_ref());
        let raft = Raft::new(
            settings.node_id,
            Arc::new(config),
            Network::new(client.clone()),
            log_store.clone(),
            state_machine.clone(),
        )
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;
        let listener = TcpListener::bind(settings.listen)
            .await
            .map_err(|source| StartError::Listen { address: settings.listen, source })?;
        let shared = Arc::new(Shared {
            node_id: settings.node_id,
            raft: raft.clone(),
            auth,
            auth_counters: AuthCounters::default(),
            nonces: std::sync::Mutex::default(),
            refusals: RefusalLog::default(),
            state_machine,
            peer_handler: OnceLock::new(),
        });
        let (stop, stopped) = watch::channel(false);
        let tls = tls.map(|identity| identity.server_config());
        let server = tokio::spawn(serve(listener, Arc::clone(&shared), tls, stopped));
        let store = ConfigStore {
            shared,
            client,
            stop,
            server: std::sync::Mutex::new(Some(server)),
            log_store,
            commit_latency: LatencyHistogram::default(),
            next_key: AtomicU64::new(0),
        };
        store.bootstrap(&settings).await?;
        Ok(store)
    }

    async fn bootstrap(&self, settings: &StoreSettings) -> Result<(), StartError> {
        let raft = &self.shared.raft;
        let first = settings.initial_members.keys().next().copied();
        if first != Some(settings.node_id) {
            return Ok(());
        }
        if raft.is_initialized().await.map_err(|e| StartError::Raft(e.to_string()))? {
            tracing::info!(node_id = settings.node_id, "Raft data found: not initializing again");
            return Ok(());
        }
        let members: BTreeMap<NodeId, BasicNode> = settings
            .initial_members
            .iter()
            .map(|(id, address)| (*id, BasicNode::new(address)))
            .collect();
        tracing::info!(?members, "initializing a new cluster");
        raft.initialize(members).await.map_err(|e| StartError::Raft(e.to_string()))
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.shared.node_id
    }

    /// Whether this node leads the Raft group, as far as it knows.
    pub fn is_leader(&self) -> bool {
        self.raft().metrics().borrow().current_leader == Some(self.node_id())
    }

    /// The Raft handle, for what this API does not cover.
    pub fn raft(&self) -> &Raft {
        &self.shared.raft
    }

    /// The configuration this node has applied: what its data plane serves. It may trail the
    /// leader by a heartbeat.
    pub fn config(&self) -> Arc<Config> {
        self.shared.state_machine.config()
    }

    /// Fires with (revision, config) after every apply and snapshot install.
    pub fn watch(&self) -> watch::Receiver<Applied> {
        self.shared.state_machine.watch()
    }

    /// Applies `command` through Raft from any node, and returns the new revision. A request
    /// without an idempotency key gets one, so the retries made here apply it once.
    pub async fn write(&self, mut request: Request) -> Result<Revision, WriteError> {
        // Rejected here, before it costs a log entry; applying checks again. Not for a write
        // the client may be retrying: if its first attempt committed, only the leader's
        // idempotency table knows, and a check against this copy would call it refused.
        if request.idempotency_key.is_none() {
            self.config().spec.with(&request.command)?;
        }
        request.idempotency_key.get_or_insert_with(|| self.fresh_key());
        let started = Instant::now();
        let response = self
            .through_leader(PATH_WRITE, &request, || self.shared.write_as_leader(request.clone()))
            .await
            .map_err(|failure| match failure {
                None => WriteError::Timeout(LEADER_WAIT),
                Some(problem) => WriteError::Unavailable(problem),
            })?;
        self.commit_latency.record(started.elapsed());
        Ok(response.result?)
    }

    /// The configuration as of now, cluster-wide: confirmed by the leader with a quorum
    /// (openraft's `ensure_linearizable`), asked of the leader if this node is not it.
    pub async fn linearizable_config(&self) -> Result<Arc<Config>, ReadError> {
        self.through_leader(PATH_READ, &(), || self.shared.read_as_leader())
            .await
            .map(Arc::new)
            .map_err(|failure| match failure {
                None => ReadError::Timeout(LEADER_WAIT),
                Some(problem) => ReadError::Unavailable(problem),
            })
    }

    /// Serves a request here if this node leads (`here`), else at the leader through `path`,
    /// following the leader as it changes, for up to [`LEADER_WAIT`]. The error is `None` when
    /// no leader served it in time, and the reason when one failed for good.
    async fn through_leader<T, Req, Fut>(
        &self,
        path: &'static str,
        request: &Req,
        here: impl Fn() -> Fut,
    ) -> Result<T, Option<String>>
    where
        T: DeserializeOwned,
        Req: Serialize,
        Fut: Future<Output = Result<T, Redirect>>,
    {
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            // A leader cut off from its quorum would wait here until the partition heals.
            let remaining = deadline.saturating_duration_since(Instant::now());
            let Ok(here) = tokio::time::timeout(remaining, here()).await else {
                return Err(None);
            };
            let leader = match here {
                Ok(answer) => return Ok(answer),
                Err(Redirect::Failed(problem)) => return Err(Some(problem)),
                Err(Redirect::NotLeader(leader)) => leader,
            };
            if let Some((id, address)) = leader.filter(|(id, _)| *id != self.node_id()) {
                let remaining = deadline.saturating_duration_since(Instant::now());
                let answer: Result<Result<T, Redirect>, CallError> =
                    self.client.call(id, &address, path, request, remaining).await;
                match answer {
                    Ok(Ok(answer)) => return Ok(answer),
                    Ok(Err(Redirect::Failed(problem))) => return Err(Some(problem)),
                    Ok(Err(Redirect::NotLeader(_))) => {}
                    Err(error) => tracing::debug!(path, "forwarding to the leader: {error}"),
                }
            }
            if Instant::now() >= deadline {
                return Err(None);
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Adds node `id` at `address`: as a learner first, then, once it has caught up with the
    /// leader's log (within `catch_up`), as a voter. Served by the leader, from any node.
    pub async fn add_node(
        &self,
        id: NodeId,
        address: &str,
        catch_up: Duration,
    ) -> Result<(), MembershipError> {
        self.add_learner(id, address).await?;
        self.promote(id, catch_up).await
    }

    /// Adds node `id` at `address` as a learner: it receives the log but does not vote.
    pub async fn add_learner(&self, id: NodeId, address: &str) -> Result<(), MembershipError> {
        self.change_members(MemberChange::AddLearner { id, address: address.to_owned() }).await
    }

    /// Makes learner `id` a voter once it has caught up with the leader (within `catch_up`).
    pub async fn promote(&self, id: NodeId, catch_up: Duration) -> Result<(), MembershipError> {
        self.change_members(MemberChange::Promote { id, catch_up }).await
    }

    /// Removes node `id` from the cluster, voter or learner.
    pub async fn remove_node(&self, id: NodeId) -> Result<(), MembershipError> {
        self.change_members(MemberChange::Remove { id }).await
    }

    /// Changes the membership at the leader, wherever it is.
    async fn change_members(&self, change: MemberChange) -> Result<(), MembershipError> {
        self.through_leader(PATH_MEMBERS, &change, || self.shared.change_members_as_leader(&change))
            .await
            .map_err(|failure| match failure {
                None => MembershipError::NoLeader(LEADER_WAIT),
                Some(problem) => MembershipError::Refused(problem),
            })?
    }

    /// Every member (id, Raft address, voter or learner), by id.
    pub fn members(&self) -> Vec<(NodeId, String, bool)> {
        let metrics = self.shared.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        membership.nodes().map(|(id, node)| (*id, node.addr.clone(), voters.contains(id))).collect()
    }

    /// Sends `request` to the peer handler of node `id` (see [`ConfigStore::serve_peers`])
    /// over the authenticated RPC transport, and returns its answer.
    pub async fn call_peer(
        &self,
        id: NodeId,
        request: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, CallError> {
        let address = self
            .members()
            .into_iter()
            .find_map(|(member, address, _)| (member == id).then_some(address))
            .ok_or_else(|| CallError::Unreachable {
                target: id,
                address: String::new(),
                problem: format!("node {id} is not a member"),
            })?;
        let answer: Result<Vec<u8>, String> =
            self.client.call(id, &address, PATH_PEER, &request, timeout).await?;
        answer.map_err(|problem| CallError::Broken { target: id, address, problem })
    }

    /// Answers peer requests (opaque bytes, authenticated like Raft's) with `handler`: the
    /// rest of the node installs it to serve what its peers ask of it.
    pub fn serve_peers(&self, handler: PeerHandler) {
        if self.shared.peer_handler.set(handler).is_err() {
            tracing::warn!("a peer handler was installed already; the first one stays");
        }
    }

    /// Leader, term, log and apply positions, replication lag, commit latency, size on disk,
    /// refused RPCs.
    pub fn metrics(&self) -> StoreMetrics {
        let raft = self.shared.raft.metrics().borrow().clone();
        let last_log_index = raft.last_log_index.unwrap_or(0);
        let replication_lag = raft
            .replication
            .iter()
            .flatten()
            .map(|(id, matched)| {
                (*id, last_log_index.saturating_sub(matched.map_or(0, |m| m.index)))
            })
            .collect();
        StoreMetrics {
            node_id: self.node_id(),
            state: format!("{:?}", raft.state),
            leader: raft.current_leader,
            term: raft.current_term,
            last_log_index,
            applied_index: raft.last_applied.map_or(0, |log_id| log_id.index),
            revision: self.config().revision,
            replication_lag,
            commit_latency: self.commit_latency.snapshot(),
            size_on_disk_bytes: self.log_store.size_on_disk(),
            refused_rpcs: self.shared.auth_counters.snapshot(),
        }
    }

    /// Stops Raft and the RPC server; later calls do nothing.
    pub async fn shutdown(&self) {
        let server = self.server.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        let Some(server) = server else { return };
        let _ = self.stop.send(true);
        if let Err(error) = self.shared.raft.shutdown().await {
            tracing::warn!("Raft did not stop cleanly: {error}");
        }
        let _ = server.await;
    }

    fn fresh_key(&self) -> IdempotencyKey {
        // Unique per node and write: the node id, the time, and a counter.
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        let count = self.next_key.fetch_add(1, Ordering::Relaxed);
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&self.node_id().to_be_bytes());
        key[8..].copy_from_slice(&(nanos ^ count.rotate_left(48)).to_be_bytes());
        IdempotencyKey(key)
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A point-in-time view of a node of the store.
#[derive(Clone, Debug, Serialize)]
pub struct StoreMetrics {
    /// This node.
    pub node_id: NodeId,
    /// Leader, Follower, Candidate or Learner.
    pub state: String,
    /// The leader this node knows of.
    pub leader: Option<NodeId>,
    /// The current term.
    pub term: u64,
    /// The index of the last entry in this node's log.
    pub last_log_index: u64,
    /// The index of the last entry applied here.
    pub applied_index: u64,
    /// The revision of the applied configuration.
    pub revision: Revision,
    /// On the leader: how many entries each peer is behind.
    pub replication_lag: BTreeMap<NodeId, u64>,
    /// Writes made through this node, by commit latency.
    pub commit_latency: LatencyCounts,
    /// The sled database's size on disk.
    pub size_on_disk_bytes: u64,
    /// RPCs refused by reason.
    pub refused_rpcs: AuthCounts,
}

/// Upper bounds of the commit-latency buckets, in milliseconds; the last bucket is unbounded.
pub(crate) const LATENCY_BUCKETS_MS: [u64; 10] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000];

/// A commit-latency histogram with fixed buckets.
#[derive(Debug, Default)]
struct LatencyHistogram {
    counts: [AtomicU64; LATENCY_BUCKETS_MS.len() + 1],
}

impl LatencyHistogram {
    fn record(&self, latency: Duration) {
        let ms = millis(latency);
        let bucket = LATENCY_BUCKETS_MS
            .iter()
            .position(|bound| ms <= *bound)
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        if let Some(count) = self.counts.get(bucket) {
            count.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn snapshot(&self) -> LatencyCounts {
        LatencyCounts { counts: self.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect() }
    }
}

/// Counts per bucket of [`LATENCY_BUCKETS_MS`], then one for anything slower.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LatencyCounts {
    /// Writes per bucket.
    pub counts: Vec<u64>,
}
