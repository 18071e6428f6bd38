//! The configuration-write benchmark: commit latency of a write, and the time until all three
//! nodes have applied it, for Fulcrum's Raft store and for etcd 3.4 measured the same way in
//! the same run.
//!
//! Both clusters run on the loopback of one lab host (so nothing leaves the lab), three nodes
//! each, with their default LAN timing (100 ms heartbeats). Writes are sequential, through the
//! leader. "Applied everywhere" is the moment the last node has the write: Fulcrum's nodes are
//! watched (they publish each apply); etcd's are polled with serializable reads, as a client of
//! each member would see it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use fulcrum_model::{Command, Name, Pool};
use fulcrum_raft_store::{ConfigStore, RaftTiming, Request, StoreSettings};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::process::LabProcess;
use crate::topology::{Host, HostRole, Lab, LabError, Topology};

const ETCD: &str = "/usr/bin/etcd";

/// Latencies of one system, in microseconds.
#[derive(Clone, Debug, Default)]
pub struct Latencies {
    /// Per write: from sending it to the leader's answer that it committed.
    pub commit_us: Vec<u64>,
    /// Per write: from sending it until every node has applied it.
    pub applied_everywhere_us: Vec<u64>,
}

/// The `p`th percentile (0..=100) of `values`, or 0 without values.
pub fn percentile(values: &[u64], p: usize) -> u64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let rank = (sorted.len() * p.min(100)).div_ceil(100).max(1);
    sorted.get(rank - 1).copied().unwrap_or(0)
}

/// Runs `writes` writes against a Fulcrum store cluster and an etcd cluster, both in one fresh
/// lab host, and returns (fulcrum, etcd).
pub fn commit_latency(
    lab_binary: &std::path::Path,
    writes: usize,
) -> Result<(Latencies, Latencies), LabError> {
    if !std::path::Path::new(ETCD).is_file() {
        return Err(LabError::Invalid("etcd is not installed: apt-get install etcd-server".into()));
    }
    let lab = Lab::up(&Topology { load_balancers: 1, backends: 0, prefix: None }, lab_binary)?;
    let host = lab.hosts_of(HostRole::LoadBalancer).remove(0);
    let dir = lab.log_dir();
    let fulcrum = lab.run_in(&host, || in_runtime(fulcrum_run(&dir, writes)))??;
    let etcd_members = start_etcd(&lab, &host)?;
    let etcd = lab.run_in(&host, || in_runtime(etcd_run(writes)))??;
    drop(etcd_members);
    lab.down()?;
    Ok((fulcrum, etcd))
}

fn in_runtime<T>(work: impl Future<Output = Result<T, LabError>>) -> Result<T, LabError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|source| LabError::Io { what: "benchmark runtime".into(), source })?
        .block_on(work)
}

fn failed(what: &str) -> impl Fn(String) -> LabError + '_ {
    move |problem| LabError::Invalid(format!("{what}: {problem}"))
}

async fn fulcrum_run(dir: &std::path::Path, writes: usize) -> Result<Latencies, LabError> {
    let addresses: BTreeMap<u64, String> =
        (1..=3).map(|id| (id, format!("127.0.0.1:{}", 7100 + id))).collect();
    let mut nodes = Vec::new();
    for (id, address) in &addresses {
        let listen: SocketAddr = address.parse().map_err(|e| failed("address")(format!("{e}")))?;
        let settings = StoreSettings {
            node_id: *id,
            listen,
            advertise: address.clone(),
            data_dir: dir.join(format!("raft-bench-{id}")),
            cluster_name: "bench".into(),
            secret: b"benchmark secret, 32 bytes long!".to_vec(),
            initial_members: addresses.clone(),
            timing: RaftTiming::default(),
            tls: None,
        };
        nodes.push(ConfigStore::start(settings).await.map_err(|e| failed("start")(e.to_string()))?);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let leader = loop {
        if let Some(leader) = nodes.iter().find(|n| n.metrics().leader == Some(n.node_id())) {
            break leader;
        }
        if Instant::now() > deadline {
            return Err(failed("Fulcrum")("no leader within 20 s".into()));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let mut watches: Vec<_> = nodes.iter().map(ConfigStore::watch).collect();
    let mut latencies = Latencies::default();
    for n in 0..writes {
        let name: Name = format!("pool{n}").parse().map_err(|e| failed("name")(format!("{e}")))?;
        let request = Request { idempotency_key: None, command: Command::PutPool(Pool::new(name)) };
        let started = Instant::now();
        let revision =
            leader.write(request).await.map_err(|e| failed("Fulcrum write")(e.to_string()))?;
        latencies.commit_us.push(micros(started.elapsed()));
        for watch in &mut watches {
            tokio::time::timeout(Duration::from_secs(10), watch.wait_for(|(r, _)| *r >= revision))
                .await
                .map_err(|_| failed("Fulcrum")("a node did not apply a write in 10 s".into()))?
                .map_err(|e| failed("Fulcrum")(e.to_string()))?;
        }
        latencies.applied_everywhere_us.push(micros(started.elapsed()));
    }
    for node in nodes {
        node.shutdown().await;
    }
    Ok(latencies)
}

fn start_etcd(lab: &Lab, host: &Host) -> Result<Vec<LabProcess>, LabError> {
    let dir = lab.log_dir();
    let cluster: Vec<String> =
        (1..=3).map(|n| format!("e{n}=http://127.0.0.1:{}", 2380 + 10 * n)).collect();
    let mut members = Vec::new();
    for n in 1..=3u16 {
        let client = format!("http://127.0.0.1:{}", 2379 + 10 * n);
        let peer = format!("http://127.0.0.1:{}", 2380 + 10 * n);
        let args: Vec<String> = [
            "--name",
            &format!("e{n}"),
            "--data-dir",
            &dir.join(format!("etcd-{n}")).display().to_string(),
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &cluster.join(","),
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            "fulcrum-bench",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        members.push(lab.spawn(host, &format!("etcd e{n}"), std::path::Path::new(ETCD), &args)?);
    }
    for member in &mut members {
        member.wait_for(
            "readiness",
            |line| line.contains("ready to serve client requests"),
            Duration::from_secs(20),
        )?;
    }
    Ok(members)
}

/// One HTTP/1.1 connection to an etcd member's JSON gateway.
struct EtcdClient {
    port: u16,
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl EtcdClient {
    async fn connect(port: u16) -> Result<EtcdClient, LabError> {
        Ok(EtcdClient { port, sender: EtcdClient::handshake(port).await? })
    }

    async fn handshake(
        port: u16,
    ) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, LabError> {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| failed("etcd connect")(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| failed("etcd handshake")(e.to_string()))?;
        tokio::spawn(connection);
        Ok(sender)
    }

    async fn post(
        &mut self,
        path: &str,
        body: serde_json::Value,
    ) -> Result<serde_json::Value, LabError> {
        let request = hyper::Request::post(path)
            .header(hyper::header::HOST, "127.0.0.1")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| failed("etcd request")(e.to_string()))?;
        // The gateway may close a connection between requests: open another then.
        if self.sender.ready().await.is_err() {
            self.sender = EtcdClient::handshake(self.port).await?;
        }
        let response =
            self.sender.send_request(request).await.map_err(|e| failed("etcd")(e.to_string()))?;
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| failed("etcd body")(e.to_string()))?
            .to_bytes();
        serde_json::from_slice(&body).map_err(|e| failed("etcd answer")(e.to_string()))
    }
}

fn revision_of(answer: &serde_json::Value) -> u64 {
    answer["header"]["revision"].as_str().and_then(|r| r.parse().ok()).unwrap_or(0)
}

async fn etcd_run(writes: usize) -> Result<Latencies, LabError> {
    let mut clients = Vec::new();
    for n in 1..=3u16 {
        clients.push(EtcdClient::connect(2379 + 10 * n).await?);
    }
    // Find the leader: the member whose status names itself.
    let mut leader = 0;
    for (index, client) in clients.iter_mut().enumerate() {
        let status = client.post("/v3/maintenance/status", serde_json::json!({})).await?;
        if status["leader"] == status["header"]["member_id"] {
            leader = index;
        }
    }
    let mut latencies = Latencies::default();
    for n in 0..writes {
        let key = BASE64.encode(format!("pools/pool{n}").as_bytes());
        let value = BASE64.encode(format!("{{\"name\":\"pool{n}\",\"backends\":[]}}").as_bytes());
        let started = Instant::now();
        let put = clients[leader]
            .post("/v3/kv/put", serde_json::json!({"key": key, "value": value}))
            .await?;
        latencies.commit_us.push(micros(started.elapsed()));
        let revision = revision_of(&put);
        let deadline = started + Duration::from_secs(10);
        for client in &mut clients {
            // Bounded: ten seconds at most per write.
            while Instant::now() < deadline {
                let range = client
                    .post("/v3/kv/range", serde_json::json!({"key": key, "serializable": true}))
                    .await?;
                if revision_of(&range) >= revision {
                    break;
                }
            }
        }
        latencies.applied_everywhere_us.push(micros(started.elapsed()));
    }
    Ok(latencies)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The figures as a Markdown table, with Fulcrum over etcd.
pub fn report(fulcrum: &Latencies, etcd: &Latencies) -> String {
    let ms = |us: u64| format!("{:.2}", us as f64 / 1000.0);
    let ratio = |a: u64, b: u64| {
        if b == 0 { "-".to_owned() } else { format!("{:.2}", a as f64 / b as f64) }
    };
    let mut text = String::from(
        "| measure | Fulcrum p50 ms | Fulcrum p99 ms | etcd p50 ms | etcd p99 ms | p50 vs etcd |\n|---|---|---|---|---|---|\n",
    );
    for (name, ours, theirs) in [
        ("commit", &fulcrum.commit_us, &etcd.commit_us),
        ("applied on all 3", &fulcrum.applied_everywhere_us, &etcd.applied_everywhere_us),
    ] {
        let (p50, p99) = (percentile(ours, 50), percentile(ours, 99));
        let (e50, e99) = (percentile(theirs, 50), percentile(theirs, 99));
        text.push_str(&format!(
            "| {name} | {} | {} | {} | {} | {} |\n",
            ms(p50),
            ms(p99),
            ms(e50),
            ms(e99),
            ratio(p50, e50)
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&values, 50), 50);
        assert_eq!(percentile(&values, 99), 99);
        assert_eq!(percentile(&[7], 99), 7);
        assert_eq!(percentile(&[], 50), 0);
    }
}
