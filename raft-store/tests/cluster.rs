//! Clusters of real store nodes in one process, talking over real sockets on 127.0.0.x:
//! replication to every watch, forwarding from followers, leader failure, restart, membership
//! changes, snapshots to a lagging follower, and refused RPCs.

#![allow(clippy::unwrap_used)] // In a test, a panic is the failure report.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use fulcrum_model::{ApplyError, Command, Name, Pool, Revision};
use fulcrum_raft_store::network::{CallError, RpcClient};
use fulcrum_raft_store::rpc::{ClusterAuth, PATH_VOTE};
use fulcrum_raft_store::{ConfigStore, IdempotencyKey, NodeId, Request, StoreSettings};
use fulcrum_raft_store::{RaftTiming, WriteError};
use tempfile::TempDir;

const SECRET: &[u8] = b"a cluster secret of enough bytes";
const CLUSTER: &str = "test";

fn timing() -> RaftTiming {
    RaftTiming {
        heartbeat: Duration::from_millis(50),
        election_timeout: (Duration::from_millis(400), Duration::from_millis(800)),
        ..RaftTiming::default()
    }
}

/// A free port on 127.0.0.`id`.
fn address(id: NodeId) -> SocketAddr {
    let ip = Ipv4Addr::new(127, 0, 0, u8::try_from(id).unwrap());
    let probe = std::net::TcpListener::bind((ip, 0)).unwrap();
    probe.local_addr().unwrap()
}

struct Cluster {
    dirs: BTreeMap<NodeId, TempDir>,
    addresses: BTreeMap<NodeId, SocketAddr>,
    nodes: BTreeMap<NodeId, ConfigStore>,
    timing: RaftTiming,
    /// The cluster CA and node certificates, when the nodes talk mutual TLS.
    pki: Option<TempDir>,
}

impl Cluster {
    /// Nodes 1..=n, initialized as one cluster.
    async fn start(n: NodeId, timing: RaftTiming) -> Cluster {
        Cluster::start_with(n, timing, None).await
    }

    /// Nodes 1..=n over mutual TLS, with a fresh cluster CA in `pki`.
    async fn start_tls(n: NodeId) -> Cluster {
        let pki = TempDir::new().unwrap();
        let ca = fulcrum_raft_store::tls::issue_ca(1).unwrap();
        std::fs::write(pki.path().join("ca.pem"), &ca.cert).unwrap();
        std::fs::write(pki.path().join("ca.key"), &ca.key).unwrap();
        for id in 1..=n {
            write_node_certificate(pki.path(), id);
        }
        Cluster::start_with(n, timing(), Some(pki)).await
    }

    async fn start_with(n: NodeId, timing: RaftTiming, pki: Option<TempDir>) -> Cluster {
        let addresses: BTreeMap<NodeId, SocketAddr> = (1..=n).map(|id| (id, address(id))).collect();
        let mut cluster =
            Cluster { dirs: BTreeMap::new(), addresses, nodes: BTreeMap::new(), timing, pki };
        let initial = cluster.initial_members();
        for id in 1..=n {
            cluster.dirs.insert(id, TempDir::new().unwrap());
            cluster.boot(id, initial.clone()).await;
        }
        cluster.wait_for_leader(Duration::from_secs(10)).await;
        cluster
    }

    /// The running cluster's members as a node file lists them.
    fn initial_members(&self) -> BTreeMap<NodeId, String> {
        self.addresses.iter().map(|(id, a)| (*id, a.to_string())).collect()
    }

    async fn boot(&mut self, id: NodeId, initial_members: BTreeMap<NodeId, String>) {
        let address = *self.addresses.entry(id).or_insert_with(|| address(id));
        let dir = self.dirs.entry(id).or_insert_with(|| TempDir::new().unwrap());
        let settings = StoreSettings {
            node_id: id,
            listen: address,
            advertise: address.to_string(),
            data_dir: dir.path().to_owned(),
            cluster_name: CLUSTER.into(),
            secret: SECRET.to_vec(),
            initial_members,
            timing: self.timing.clone(),
            tls: self.pki.as_ref().map(|pki| fulcrum_raft_store::tls::PeerTlsFiles {
                ca: pki.path().join("ca.pem"),
                cert: pki.path().join(format!("node-{id}.pem")),
                key: pki.path().join(format!("node-{id}.key")),
            }),
        };
        self.nodes.insert(id, ConfigStore::start(settings).await.unwrap());
    }

    async fn stop(&mut self, id: NodeId) {
        self.nodes.remove(&id).unwrap().shutdown().await;
    }

    fn node(&self, id: NodeId) -> &ConfigStore {
        &self.nodes[&id]
    }

    /// The leader all running nodes agree on, waiting up to `timeout` for one.
    async fn wait_for_leader(&self, timeout: Duration) -> NodeId {
        let deadline = Instant::now() + timeout;
        loop {
            let leaders: Vec<Option<NodeId>> =
                self.nodes.values().map(|node| node.metrics().leader).collect();
            if let Some(Some(leader)) = leaders.first()
                && self.nodes.contains_key(leader)
                && leaders.iter().all(|l| l == &Some(*leader))
            {
                return *leader;
            }
            assert!(Instant::now() < deadline, "no agreed leader within {timeout:?}: {leaders:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn follower(&self, leader: NodeId) -> NodeId {
        *self.nodes.keys().find(|id| **id != leader).unwrap()
    }

    /// Waits until every running node has applied `revision`.
    async fn wait_applied_everywhere(&self, revision: Revision) {
        for (id, node) in &self.nodes {
            let mut watch = node.watch();
            tokio::time::timeout(Duration::from_secs(10), watch.wait_for(|(r, _)| *r >= revision))
                .await
                .unwrap_or_else(|_| panic!("node {id} did not apply revision {revision}"))
                .unwrap();
        }
    }
}

/// Writes node-`id`.pem and .key into `pki`, signed by the CA there (replacing older ones).
fn write_node_certificate(pki: &std::path::Path, id: NodeId) -> String {
    let ca_key = std::fs::read_to_string(pki.join("ca.key")).unwrap();
    let node = fulcrum_raft_store::tls::issue_node(&ca_key, &format!("node-{id}"), &[], 1).unwrap();
    // Key first: a reader that sees the new certificate finds its key.
    std::fs::write(pki.join(format!("node-{id}.key")), &node.key).unwrap();
    std::fs::write(pki.join(format!("node-{id}.pem")), &node.cert).unwrap();
    node.cert
}

/// Three nodes with test timing, their leader, and one follower.
async fn three_nodes() -> (Cluster, NodeId, NodeId) {
    let cluster = Cluster::start(3, timing()).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(5)).await;
    let follower = cluster.follower(leader);
    (cluster, leader, follower)
}

fn put_pool(name: &str) -> Request {
    Request {
        idempotency_key: None,
        command: Command::PutPool(Pool::new(name.parse::<Name>().unwrap())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_from_any_node_commit_and_reach_every_watch() {
    let (cluster, leader, follower) = three_nodes().await;

    let first = cluster.node(follower).write(put_pool("web")).await.unwrap();
    let second = cluster.node(leader).write(put_pool("api")).await.unwrap();
    assert_eq!(second, first + 1);
    cluster.wait_applied_everywhere(second).await;
    for node in cluster.nodes.values() {
        let config = node.config();
        assert!(config.spec.pool("web").is_some() && config.spec.pool("api").is_some());
        assert_eq!(node.watch().borrow().0, second);
    }

    // An invalid command is refused with the model's error and changes nothing.
    let delete_missing = Request {
        idempotency_key: None,
        command: Command::DeletePool("nope".parse::<Name>().unwrap()),
    };
    let refused = cluster.node(follower).write(delete_missing).await.unwrap_err();
    assert!(matches!(refused, WriteError::Rejected(ApplyError::NotFound { .. })), "{refused}");
    assert_eq!(cluster.node(leader).linearizable_config().await.unwrap().revision, second);

    // A retried write (same idempotency key) applies once.
    let mut retried = put_pool("cache");
    retried.idempotency_key = Some(IdempotencyKey([7; 16]));
    let once = cluster.node(follower).write(retried.clone()).await.unwrap();
    let again = cluster.node(leader).write(retried).await.unwrap();
    assert_eq!(once, again);
    let read = cluster.node(follower).linearizable_config().await.unwrap();
    assert_eq!(read.revision, once, "the retry must not make a new revision");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_is_elected_when_the_leader_stops_and_writes_continue() {
    let (mut cluster, old, writer_node) = three_nodes().await;
    cluster.node(writer_node).write(put_pool("before")).await.unwrap();

    let term = cluster.node(writer_node).metrics().term;
    let stopped = Instant::now();
    cluster.stop(old).await;
    // A generous deadline: how fast elections are is the benchmarks' business, not a test's.
    let new = cluster.wait_for_leader(Duration::from_secs(10)).await;
    assert_ne!(new, old);
    assert!(cluster.node(new).metrics().term > term, "the new leader won a new term");
    eprintln!("new leader {new} after {:?}", stopped.elapsed());

    for n in 0..20 {
        cluster.node(writer_node).write(put_pool(&format!("after{n}"))).await.unwrap();
    }
    let config = cluster.node(new).linearizable_config().await.unwrap();
    assert!(config.spec.pool("before").is_some() && config.spec.pool("after19").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_follower_catches_up_from_its_own_data() {
    let (mut cluster, leader, follower) = three_nodes().await;
    cluster.node(leader).write(put_pool("early")).await.unwrap();
    cluster.stop(follower).await;

    let mut last = 0;
    for n in 0..10 {
        last = cluster.node(leader).write(put_pool(&format!("p{n}"))).await.unwrap();
    }
    // Restarted with the same initial members: it has data, so it must not initialize again.
    cluster.boot(follower, cluster.initial_members()).await;
    cluster.wait_applied_everywhere(last).await;
    assert!(cluster.node(follower).config().spec.pool("p9").is_some());
    assert_eq!(cluster.wait_for_leader(Duration::from_secs(5)).await, leader);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_and_wiped_node_rejoins_as_learner_then_voter() {
    let (mut cluster, leader, leaving) = three_nodes().await;
    cluster.node(leader).write(put_pool("kept")).await.unwrap();

    cluster.node(leader).remove_node(leaving).await.unwrap();
    cluster.stop(leaving).await;
    cluster.dirs.remove(&leaving); // wiped
    let voters = |c: &Cluster| {
        c.node(leader)
            .raft()
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect::<Vec<_>>()
    };
    assert!(!voters(&cluster).contains(&leaving));
    let revision = cluster.node(leader).write(put_pool("while-away")).await.unwrap();

    cluster.boot(leaving, BTreeMap::new()).await;
    let address = cluster.addresses[&leaving].to_string();
    cluster.node(leader).add_node(leaving, &address, Duration::from_secs(10)).await.unwrap();
    assert!(voters(&cluster).contains(&leaving));
    cluster.wait_applied_everywhere(revision).await;
    assert!(cluster.node(leaving).config().spec.pool("while-away").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_node_is_added_and_removed_through_a_follower() {
    let (mut cluster, leader, follower) = three_nodes().await;
    let revision = cluster.node(leader).write(put_pool("web")).await.unwrap();

    cluster.boot(4, BTreeMap::new()).await;
    let address = cluster.addresses[&4].to_string();
    // Asked of a follower: forwarded to the leader, which alone knows when 4 has caught up.
    cluster.node(follower).add_node(4, &address, Duration::from_secs(10)).await.unwrap();
    cluster.wait_applied_everywhere(revision).await;
    let membership = || {
        cluster
            .node(leader)
            .raft()
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .count()
    };
    assert_eq!(membership(), 4);
    // A write through the new node commits.
    let written = cluster.node(4).write(put_pool("via-four")).await.unwrap();
    assert_eq!(cluster.node(leader).linearizable_config().await.unwrap().revision, written);

    cluster.node(follower).remove_node(4).await.unwrap();
    assert_eq!(membership(), 3);
    cluster.stop(4).await;
    cluster.node(leader).write(put_pool("after-four")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_follower_is_brought_up_to_date_by_a_snapshot() {
    let timing = RaftTiming { snapshot_every: 10, logs_kept_after_snapshot: 0, ..timing() };
    let mut cluster = Cluster::start(3, timing).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(5)).await;
    let lagging = cluster.follower(leader);
    cluster.stop(lagging).await;

    let mut last = 0;
    for n in 0..40 {
        last = cluster.node(leader).write(put_pool(&format!("p{n}"))).await.unwrap();
    }
    // The leader has snapshotted and purged the entries the lagging node lacks.
    let mut metrics = cluster.node(leader).raft().metrics();
    tokio::time::timeout(Duration::from_secs(10), metrics.wait_for(|m| m.purged.is_some()))
        .await
        .expect("the leader never purged its log")
        .unwrap();

    cluster.boot(lagging, cluster.initial_members()).await;
    cluster.wait_applied_everywhere(last).await;
    let follower = cluster.node(lagging).raft().metrics().borrow().clone();
    assert!(follower.snapshot.is_some(), "caught up without a snapshot: {follower}");
    assert_eq!(cluster.node(lagging).config().spec.pools.len(), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpcs_with_a_wrong_secret_cluster_or_target_are_refused_and_counted() {
    let cluster = Cluster::start(1, timing()).await;
    let node = cluster.node(1);
    let term = node.metrics().term;
    let address = cluster.addresses[&1].to_string();
    let vote = openraft::raft::VoteRequest::<NodeId>::new(openraft::Vote::new(term + 5, 9), None);
    let send = |auth: ClusterAuth, target: NodeId| {
        let address = address.clone();
        let vote = vote.clone();
        async move {
            let client = RpcClient::new(auth, None);
            let answer: Result<
                Result<openraft::raft::VoteResponse<NodeId>, openraft::error::RaftError<NodeId>>,
                CallError,
            > = client.call(target, &address, PATH_VOTE, &vote, Duration::from_secs(2)).await;
            match answer {
                Err(CallError::Refused { status, .. }) => status,
                other => panic!("expected a refusal, got {other:?}"),
            }
        }
    };
    assert_eq!(
        send(ClusterAuth::new(CLUSTER, b"the wrong secret, long enough").unwrap(), 1).await,
        401
    );
    assert_eq!(send(ClusterAuth::new("other", SECRET).unwrap(), 1).await, 403);
    assert_eq!(send(ClusterAuth::new(CLUSTER, SECRET).unwrap(), 2).await, 421);

    let refused = node.metrics().refused_rpcs;
    assert_eq!((refused.bad_signature, refused.wrong_cluster, refused.wrong_target), (1, 1, 1));
    assert_eq!(node.metrics().term, term, "a refused vote request must change nothing");
    assert_eq!(node.metrics().leader, Some(1));
}

/// The RPC port as an outsider finds it: raw bytes over TCP.
mod port {
    use std::net::SocketAddr;
    use std::time::{Duration, SystemTime};

    use fulcrum_raft_store::rpc::{ClusterAuth, PATH_VOTE, unix_ms};
    use fulcrum_raft_store::{NodeId, rpc};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::{CLUSTER, Cluster, SECRET, timing};

    /// Resident memory of this process (nextest runs each test in its own), in KiB.
    fn rss_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Reads until the peer closes (EOF or reset) or `within` passes; returns what arrived
    /// and whether the connection was closed.
    async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
        let mut received = Vec::new();
        let mut buffer = [0u8; 4096];
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
                Ok(Ok(0) | Err(_)) => return (received, true),
                Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
                Err(_) => return (received, false),
            }
        }
    }

    /// A vote request for `term` signed by `auth`, sent at `sent_ms` with `nonce`.
    fn signed_vote(auth: &ClusterAuth, term: u64, sent_ms: u64, nonce: u64) -> Vec<u8> {
        let vote = openraft::raft::VoteRequest::<NodeId>::new(openraft::Vote::new(term, 9), None);
        let body = fulcrum_model::codec::encode(&vote).unwrap();
        let mut request = format!(
            "POST {PATH_VOTE} HTTP/1.1\r\nhost: node\r\nconnection: close\r\ncontent-length: {}\r\n",
            body.len()
        );
        for (name, value) in auth.sign(1, PATH_VOTE, &body, sent_ms, nonce) {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(&body);
        bytes
    }

    async fn status_of(address: SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream.write_all(request).await.unwrap();
        let (answer, closed) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
        assert!(closed, "the node kept a connection: close connection open");
        String::from_utf8_lossy(&answer).lines().next().unwrap_or_default().to_owned()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unsigned_bodies_are_refused_before_they_are_read_and_buffer_nothing() {
        let cluster = Cluster::start(1, timing()).await;
        let address = cluster.addresses[&1];
        // One buffer shared by every attacker, allocated (and touched) before the baseline:
        // the growth measured is the node's, which shares this process.
        let chunk: std::sync::Arc<[u8]> = vec![1u8; 1 << 20].into();
        let before = rss_kib();
        let attackers = (0..20).map(|_| {
            let chunk = std::sync::Arc::clone(&chunk);
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(address).await.unwrap();
                let head =
                    "POST /raft/append HTTP/1.1\r\nhost: node\r\ncontent-length: 67108864\r\n\r\n";
                stream.write_all(head.as_bytes()).await.unwrap();
                // 8 MiB of the declared 64; the node may cut the connection at any point.
                for _ in 0..8 {
                    let write = stream.write_all(&chunk);
                    match tokio::time::timeout(Duration::from_secs(10), write).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) | Err(_) => break,
                    }
                }
                read_until_closed(&mut stream, Duration::from_secs(10)).await.1
            })
        });
        for attacker in attackers.collect::<Vec<_>>() {
            assert!(attacker.await.unwrap(), "a connection with an unsigned body stayed open");
        }
        let grown = rss_kib().saturating_sub(before);
        assert!(
            grown < 8 * 1024,
            "resident memory grew by {grown} KiB under 160 MiB of unsigned bodies"
        );
        let refused = cluster.node(1).metrics().refused_rpcs;
        assert_eq!(refused.missing_header, 20, "{refused:?}");
        assert!(cluster.node(1).metrics().leader == Some(1), "the node lost its leadership");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_that_send_nothing_are_closed_and_one_address_gets_a_bounded_number() {
        let cluster = Cluster::start(1, timing()).await;
        let address = cluster.addresses[&1];
        let mut idle = Vec::new();
        for _ in 0..32 {
            idle.push(TcpStream::connect(address).await.unwrap());
        }
        // Over the per-address limit: closed at once, long before the header deadline.
        let mut extra = TcpStream::connect(address).await.unwrap();
        assert!(
            read_until_closed(&mut extra, Duration::from_secs(2)).await.1,
            "a 33rd connection was kept"
        );
        // The idle ones are closed by the header deadline (5 s), not kept forever.
        for stream in &mut idle {
            let (received, closed) = read_until_closed(stream, Duration::from_secs(10)).await;
            assert!(closed, "a connection that sent nothing stayed open");
            assert!(received.is_empty() || received.starts_with(b"HTTP/1.1 408"), "{received:?}");
        }
        // And the port serves again.
        let auth = ClusterAuth::new(CLUSTER, SECRET).unwrap();
        let term = cluster.node(1).metrics().term;
        let request = signed_vote(&auth, term, unix_ms(SystemTime::now()), 1);
        assert_eq!(status_of(address, &request).await, "HTTP/1.1 200 OK");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replayed_or_stale_request_is_refused() {
        let cluster = Cluster::start(1, timing()).await;
        let address = cluster.addresses[&1];
        let auth = ClusterAuth::new(CLUSTER, SECRET).unwrap();
        let term = cluster.node(1).metrics().term;
        let now = unix_ms(SystemTime::now());
        let captured = signed_vote(&auth, term, now, 42);
        assert_eq!(status_of(address, &captured).await, "HTTP/1.1 200 OK");
        assert_eq!(status_of(address, &captured).await, "HTTP/1.1 401 Unauthorized");
        let window = rpc::FRESHNESS.as_millis() as u64;
        let old = signed_vote(&auth, term, now - window - 1000, 43);
        assert_eq!(status_of(address, &old).await, "HTTP/1.1 401 Unauthorized");
        // A body swapped under a signed head.
        let mut swapped = signed_vote(&auth, term, now, 44);
        let last = swapped.len() - 1;
        swapped[last] ^= 1;
        assert_eq!(status_of(address, &swapped).await, "HTTP/1.1 400 Bad Request");
        let refused = cluster.node(1).metrics().refused_rpcs;
        assert_eq!(
            (refused.replayed, refused.stale, refused.body_mismatch),
            (1, 1, 1),
            "{refused:?}"
        );
    }
}

/// Mutual TLS between nodes, as a stranger and as a peer find it.
mod mutual_tls {
    use std::sync::Arc;
    use std::time::Duration;

    use fulcrum_raft_store::tls::{IssuedPem, PEER_NAME, ca_certificate_for, issue_ca, issue_node};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::{Cluster, put_pool, write_node_certificate};

    const REQUEST: &[u8] =
        b"POST /raft/vote HTTP/1.1\r\nhost: node\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

    /// A TLS client trusting `ca_pem`, presenting `identity` if given.
    fn client(ca_pem: &str, identity: Option<&IssuedPem>) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let config = match identity {
            Some(identity) => {
                let chain = CertificateDer::pem_slice_iter(identity.cert.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap();
                let key = PrivateKeyDer::from_pem_slice(identity.key.as_bytes()).unwrap();
                builder.with_client_auth_cert(chain, key).unwrap()
            }
            None => builder.with_no_client_auth(),
        };
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }

    /// What the node answers `REQUEST` with over TLS from `connector`: the status line, or
    /// the error that ended the exchange.
    async fn exchange(
        connector: &tokio_rustls::TlsConnector,
        address: std::net::SocketAddr,
    ) -> Result<(String, Vec<CertificateDer<'static>>), String> {
        let attempt = async {
            let tcp = TcpStream::connect(address).await.map_err(|e| e.to_string())?;
            let name = ServerName::try_from(PEER_NAME).unwrap();
            let mut tls = connector.connect(name, tcp).await.map_err(|e| e.to_string())?;
            let served = tls.get_ref().1.peer_certificates().unwrap_or_default().to_vec();
            tls.write_all(REQUEST).await.map_err(|e| e.to_string())?;
            let mut answer = Vec::new();
            tls.read_to_end(&mut answer).await.map_err(|e| e.to_string())?;
            let answer =
                String::from_utf8_lossy(&answer).lines().next().unwrap_or_default().to_owned();
            if answer.is_empty() {
                Err("closed without an answer".to_owned())
            } else {
                Ok((answer, served))
            }
        };
        tokio::time::timeout(Duration::from_secs(10), attempt)
            .await
            .map_err(|_| "timed out".to_owned())?
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nodes_replicate_over_mutual_tls_and_a_client_without_a_cluster_certificate_gets_nothing()
     {
        let cluster = Cluster::start_tls(3).await;
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
        let follower = cluster.follower(leader);
        // Forwarded from a follower to the leader and replicated: every hop is TLS.
        let revision = cluster.node(follower).write(put_pool("web")).await.unwrap();
        cluster.wait_applied_everywhere(revision).await;

        let pki = cluster.pki.as_ref().unwrap().path();
        let ca = std::fs::read_to_string(pki.join("ca.pem")).unwrap();
        let address = cluster.addresses[&leader];

        // Plain HTTP: no HTTP answer.
        let mut plain = TcpStream::connect(address).await.unwrap();
        plain.write_all(REQUEST).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut answer)).await;
        assert!(!answer.starts_with(b"HTTP/"), "plain HTTP was answered: {answer:?}");

        // TLS without a client certificate, and with one of another CA: nothing.
        let result = exchange(&client(&ca, None), address).await;
        assert!(result.is_err(), "answered a client without a certificate: {result:?}");
        let stranger_ca = issue_ca(1).unwrap();
        let stranger = issue_node(&stranger_ca.key, "stranger", &[], 1).unwrap();
        let result = exchange(&client(&ca, Some(&stranger)), address).await;
        assert!(result.is_err(), "answered a certificate of another CA: {result:?}");

        // A certificate of the cluster CA reaches HTTP (and its unsigned request is refused).
        let ca_key = std::fs::read_to_string(pki.join("ca.key")).unwrap();
        let member = issue_node(&ca_key, "operator", &[], 1).unwrap();
        let (status, _) = exchange(&client(&ca, Some(&member)), address).await.unwrap();
        assert_eq!(status, "HTTP/1.1 401 Unauthorized");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_certificate_replaced_on_disk_is_served_without_a_restart() {
        let cluster = Cluster::start_tls(3).await;
        let pki = cluster.pki.as_ref().unwrap().path();
        let ca = std::fs::read_to_string(pki.join("ca.pem")).unwrap();
        let ca_key = std::fs::read_to_string(pki.join("ca.key")).unwrap();
        let member = issue_node(&ca_key, "operator", &[], 1).unwrap();
        let connector = client(&ca, Some(&member));
        let address = cluster.addresses[&1];
        let (_, before) = exchange(&connector, address).await.unwrap();

        let renewed = write_node_certificate(pki, 1);
        let renewed = CertificateDer::from_pem_slice(renewed.as_bytes()).unwrap();
        let (_, after) = exchange(&connector, address).await.unwrap();
        assert_ne!(before[0], after[0], "the old certificate is still served");
        assert_eq!(after[0], renewed, "the new file's certificate is served");

        // And the cluster still works with it, every node reading its peers anew.
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
        let revision = cluster.node(leader).write(put_pool("after-rotation")).await.unwrap();
        cluster.wait_applied_everywhere(revision).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_ca_certificate_made_again_from_the_ca_key_trusts_the_same_nodes() {
        let cluster = Cluster::start_tls(3).await;
        let pki = cluster.pki.as_ref().unwrap().path();
        let ca = std::fs::read_to_string(pki.join("ca.pem")).unwrap();
        let ca_key = std::fs::read_to_string(pki.join("ca.key")).unwrap();
        // What a machine that was given only the CA key makes (`fulcrumd pki ca --key`).
        let again = ca_certificate_for(&ca_key, 1).unwrap();
        assert_ne!(again, ca, "the same certificate, not one made again");
        let member = issue_node(&ca_key, "operator", &[], 1).unwrap();
        let (status, _) =
            exchange(&client(&again, Some(&member)), cluster.addresses[&1]).await.unwrap();
        assert_eq!(status, "HTTP/1.1 401 Unauthorized");
    }
}
