//! Three (or four) real `fulcrumd` cluster nodes — Raft store, admin API, VRRP, data plane —
//! on the lab's load balancers, administered with `fulcrumctl` from the client host, with
//! traffic through the VIP and through each node, and planned handovers that keep their
//! connections (second-chance forwarding) while a node that dies mid-drain is not forwarded to.
//! The quorum fence under faults: a master partitioned, paused or killed, VRRP alone lost, a
//! forged advertisement — never two nodes answering for the VIP.
//!
//! These tests need root; without it they fail with a message that says so.

#![allow(clippy::unwrap_used)] // In a test, a panic is the failure report.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use fulcrum_lab::cluster::{CtlOutput, Timing, node_id, web_cluster_file, with_echo_listener};
use fulcrum_lab::faults::Cut;
use fulcrum_lab::probe::{ProbeArgs, ProbeReport, ProbeTarget};
use fulcrum_lab::process::LabProcess;
use fulcrum_lab::routers::Instance;
use fulcrum_lab::serving::{Download, download_slow, echo_session, metric};
use fulcrum_lab::topology::{vip, vip_v6};
use fulcrum_lab::{Host, HostRole, Lab, Topology};

const LAB_BINARY: &str = env!("CARGO_BIN_EXE_fulcrum-lab");
const FRONT_PORT: u16 = 80;
const ECHO_PORT: u16 = 9000;
const VRID: u8 = 51;

struct Cluster {
    lab: Lab,
    lbs: Vec<Host>,
    nodes: Vec<LabProcess>,
    backends: Vec<Host>,
    client: Host,
    _backend_processes: Vec<LabProcess>,
}

/// `voters` cluster nodes (VRRP priorities 150, 100, 50, … so lb1 owns the VIP) out of
/// `load_balancers` hosts, and `backends` lab backends, all started.
fn cluster(load_balancers: usize, voters: usize, backends: usize) -> Cluster {
    cluster_with_witnesses(load_balancers, voters, 0, backends)
}

/// As [`cluster`], but the last `witnesses` voters only vote in Raft: no VRRP, no traffic.
fn cluster_with_witnesses(
    load_balancers: usize,
    voters: usize,
    witnesses: usize,
    backends: usize,
) -> Cluster {
    build_cluster(load_balancers, voters, witnesses, backends, &[vip(1).into()], |_, _| None)
}

/// As [`cluster_with_witnesses`], VRID 51 protecting `vips`, node `i` looking up the programs
/// it runs in `tools(lab, i)` first, if given.
fn build_cluster(
    load_balancers: usize,
    voters: usize,
    witnesses: usize,
    backends: usize,
    vips: &[IpAddr],
    tools: impl Fn(&Lab, usize) -> Option<std::path::PathBuf>,
) -> Cluster {
    let topology = Topology { load_balancers, backends, prefix: None };
    let lab =
        Lab::up(&topology, LAB_BINARY).unwrap_or_else(|e| panic!("cannot build the lab: {e}"));
    let lbs = lab.hosts_of(HostRole::LoadBalancer);
    let backend_processes = lab.start_backends().unwrap();
    let members = &lbs[..voters];
    let nodes = members
        .iter()
        .enumerate()
        .map(|(i, lb)| {
            let instance = Instance::ranked(VRID, i, vips);
            let instances = if i < voters - witnesses { vec![instance] } else { Vec::new() };
            let tools = tools(&lab, i);
            lab.start_cluster_node_with_tools(
                Timing::Lab,
                lb,
                members,
                &instances,
                &["web"],
                tools.as_deref(),
            )
            .unwrap()
        })
        .collect();
    Cluster {
        backends: lab.hosts_of(HostRole::Backend),
        client: lab.host("client").unwrap(),
        lbs,
        nodes,
        lab,
        _backend_processes: backend_processes,
    }
}

impl Cluster {
    fn ctl(&self, endpoints: &[&Host], args: &[&str]) -> CtlOutput {
        self.lab.fulcrumctl(&self.client, endpoints, None, args).unwrap()
    }

    /// `fulcrumctl` that must succeed.
    fn ctl_ok(&self, endpoints: &[&Host], args: &[&str]) -> CtlOutput {
        self.lab.fulcrumctl_ok(&self.client, endpoints, args).unwrap()
    }

    fn status(&self, endpoint: &Host) -> serde_json::Value {
        self.ctl_ok(&[endpoint], &["-o", "json", "status"]).json().unwrap()
    }

    /// The leader every node agrees on, waiting for one for up to 15 s.
    fn leader(&self, asked: &[&Host]) -> u64 {
        self.lab.agreed_leader(&self.client, asked, Duration::from_secs(15)).unwrap()
    }

    fn apply(&self, endpoint: &Host, backends: &[&Host]) -> CtlOutput {
        let file =
            self.lab.lab_file("cluster.toml", &web_cluster_file(FRONT_PORT, backends)).unwrap();
        self.ctl_ok(&[endpoint], &["apply", "-f", &file, "--wait"])
    }

    /// Applies the web cluster file with an L4 echo listener on [`ECHO_PORT`] as well.
    fn apply_with_echo(&self, endpoint: &Host, backends: &[&Host]) {
        let text = with_echo_listener(&web_cluster_file(FRONT_PORT, backends), ECHO_PORT, backends);
        let file = self.lab.lab_file("cluster.toml", &text).unwrap();
        self.ctl_ok(&[endpoint], &["apply", "-f", &file, "--wait"]);
    }

    /// A metric of `listener` on `host`.
    fn listener_metric(&self, host: &Host, name: &str, listener: &str) -> f64 {
        let metrics = self.lab.admin_metrics(host).unwrap();
        metric(&metrics, name, &format!("listener=\"{listener}\"")).unwrap_or(0.0)
    }

    /// An echo session of `secs` seconds through the VIP and, with `download`, a download
    /// of `secs` seconds, open on `host` when this returns.
    fn long_connections(&self, host: &Host, secs: u64, download: bool) -> LongConnections {
        let in_client = |work: Box<dyn FnOnce() -> Result<usize, String> + Send>| {
            let namespace = self.client.namespace.clone();
            std::thread::spawn(move || fulcrum_lab::netns::run_in(&namespace, work).unwrap())
        };
        let download = download.then(|| {
            in_client(Box::new(move || {
                let runtime =
                    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                runtime
                    .block_on(download_slow(SocketAddr::from((vip(1), FRONT_PORT)), secs))
                    .map(|d: Download| d.bytes)
            }))
        });
        let echo = in_client(Box::new(move || {
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let lines = usize::try_from(secs * 10).unwrap();
            let address = SocketAddr::from((vip(1), ECHO_PORT));
            // Longer than a dead node's lease plus retransmissions: a session cut by a reset
            // and one left hanging end differently.
            runtime.block_on(echo_session(
                address,
                lines,
                Duration::from_millis(100),
                Duration::from_secs(8),
            ))
        }));
        let deadline = Instant::now() + Duration::from_secs(10);
        let downloads = if download.is_some() { 1.0 } else { 0.0 };
        while self.listener_metric(host, "fulcrum_listener_active_connections", "front") < downloads
            || self.listener_metric(host, "fulcrum_listener_active_connections", "echo") < 1.0
        {
            assert!(Instant::now() < deadline, "the long connections never reached {}", host.name);
            std::thread::sleep(Duration::from_millis(50));
        }
        LongConnections { download, echo }
    }

    /// Waits until every node's second-chance rules are gone and no node but `master` has
    /// the VIP on any interface (a drain holds it on lo); returns how long that took.
    fn until_drained(&self, running: &[&Host], master: &Host) -> Duration {
        let start = Instant::now();
        loop {
            let leftovers: Vec<String> = running
                .iter()
                .filter_map(|host| {
                    let rules = self.lab.ruleset(host).unwrap();
                    let forwards = rules.contains("dup to");
                    let hides = rules.contains("arp daddr ip");
                    let holds = *host != master && self.lab.has_address(host, vip(1)).unwrap();
                    (forwards || hides || holds).then(|| {
                        format!(
                            "{}: forwarding {forwards}, hiding {hides}, holding {holds}",
                            host.name
                        )
                    })
                })
                .collect();
            if leftovers.is_empty() {
                return start.elapsed();
            }
            assert!(start.elapsed() < Duration::from_secs(30), "drain state left: {leftovers:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `attempts` HTTP requests from the client to `address`, 20 ms apart.
    fn probe(&self, address: SocketAddr, attempts: u64) -> ProbeReport {
        let target = ProbeTarget::Http { address, path: "/".into() };
        let mut args = ProbeArgs::new(target, Duration::from_millis(20), Duration::from_secs(30));
        args.max_attempts = Some(attempts);
        self.lab.probe(&self.client, &args).unwrap()
    }

    /// Probes `address` until `backend` answers, for up to `within`; returns how long it took.
    fn until_routed(&self, address: SocketAddr, backend: &Host, within: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let report = self.probe(address, 6);
            if report.answers.contains_key(&backend.name) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < within,
                "{address} never routed to {}: {report}",
                backend.name
            );
        }
    }

    /// The configuration revision, as a node reports it.
    fn revision(&self, endpoint: &Host) -> u64 {
        let config = self.ctl_ok(&[endpoint], &["get", "config", "-o", "json"]).json().unwrap();
        config["revision"].as_u64().unwrap()
    }
}

/// A download and an echo session running from the client.
struct LongConnections {
    download: Option<std::thread::JoinHandle<Result<usize, String>>>,
    echo: std::thread::JoinHandle<Result<usize, String>>,
}

impl LongConnections {
    /// What each ended with: bytes downloaded (if one ran), lines echoed.
    fn finish(self) -> (Option<Result<usize, String>>, Result<usize, String>) {
        (self.download.map(|d| d.join().unwrap()), self.echo.join().unwrap())
    }
}

/// 200 requests a second from the client through the VIP, each on a new connection.
fn steady_probe(c: &Cluster, duration: Duration) -> fulcrum_lab::topology::RunningProbe {
    steady_probe_of(c, vip(1).into(), duration)
}

/// [`steady_probe`] of `vip`.
fn steady_probe_of(
    c: &Cluster,
    vip: IpAddr,
    duration: Duration,
) -> fulcrum_lab::topology::RunningProbe {
    let target =
        ProbeTarget::Http { address: SocketAddr::from((vip, FRONT_PORT)), path: "/".into() };
    c.lab
        .start_probe(&c.client, &ProbeArgs::new(target, Duration::from_millis(5), duration))
        .unwrap()
}

fn front(host: &Host) -> SocketAddr {
    SocketAddr::from((host.address, FRONT_PORT))
}

#[test]
fn a_cluster_is_administered_as_one_and_refuses_bad_tokens_and_bad_input() {
    let c = cluster(3, 3, 3);
    let all: Vec<&Host> = c.lbs.iter().collect();
    let leader = c.leader(&all);
    c.apply(&c.lbs[0], &[&c.backends[0], &c.backends[1]]);

    // Through the VIP (lb1 has the highest priority), to both backends.
    c.lab.wait_for_holder(&c.lbs, &c.lbs[0], vip(1), Duration::from_secs(10)).unwrap();
    let report = c.probe(SocketAddr::from((vip(1), FRONT_PORT)), 20);
    assert_eq!(report.successes, 20, "{report}");
    assert!(report.answers.contains_key("be1") && report.answers.contains_key("be2"), "{report}");
    let revision = c.revision(&c.lbs[0]);

    // The Raft port speaks mutual TLS only: a plain HTTP request from the client host gets
    // no HTTP answer.
    let raft = SocketAddr::from((c.lbs[0].address, fulcrum_lab::cluster::RAFT_PORT));
    let answer = c
        .lab
        .run_in(&c.client, || {
            use std::io::{Read, Write};
            let mut stream = std::net::TcpStream::connect_timeout(&raft, Duration::from_secs(5))?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            stream
                .write_all(b"POST /raft/read HTTP/1.1\r\nhost: lb\r\ncontent-length: 0\r\n\r\n")?;
            let mut answer = Vec::new();
            let _ = stream.read_to_end(&mut answer);
            Ok::<_, std::io::Error>(answer)
        })
        .unwrap()
        .unwrap();
    assert!(!answer.starts_with(b"HTTP/"), "the Raft port answered plain HTTP: {answer:?}");

    // A wrong token is refused, says what to do, and changes nothing.
    let refused = c
        .lab
        .fulcrumctl(
            &c.client,
            &[&c.lbs[0]],
            Some("not-the-token-at-all"),
            &["backend", "add", "web", &c.backends[2].http_address().to_string()],
        )
        .unwrap();
    assert_eq!(refused.code, Some(4), "{refused:?}");
    assert!(refused.stderr.contains("token"), "{refused:?}");

    // The admin API speaks TLS, trusting the lab CA: a read-only token reads and cannot
    // write; another CA, or plain HTTP, gets nowhere.
    let read_only = |args: &[&str]| {
        c.lab
            .fulcrumctl(&c.client, &[&c.lbs[0]], Some(fulcrum_lab::cluster::READ_TOKEN), args)
            .unwrap()
    };
    assert_eq!(read_only(&["status"]).code, Some(0), "{:?}", read_only(&["status"]));
    let write = read_only(&["backend", "add", "web", &c.backends[2].http_address().to_string()]);
    assert_eq!(write.code, Some(4), "{write:?}");
    assert!(write.stderr.contains("may only read"), "{write:?}");
    let other_ca = fulcrum_raft_store::tls::issue_ca(1).unwrap();
    let other_ca = c.lab.lab_file("other-ca.pem", &other_ca.cert).unwrap();
    let untrusted = c.ctl(&[&c.lbs[0]], &["status", "--ca-file", &other_ca]);
    assert_ne!(untrusted.code, Some(0), "{untrusted:?}");
    assert!(untrusted.stderr.contains("certificate"), "{untrusted:?}");
    let plain = format!("http://{}:{}", c.lbs[0].address, fulcrum_lab::cluster::ADMIN_PORT);
    let plain = c.ctl(&[&c.lbs[0]], &["status", "--endpoint", &plain]);
    assert_ne!(plain.code, Some(0), "plain HTTP was served: {plain:?}");

    // Invalid input: refused with a message that names the problem, and nothing changed.
    let bad_file =
        c.lab.lab_file("bad.toml", "[[pools]]\nname = \"web\"\nalgorithm = \"fastest\"\n").unwrap();
    let cases: [(&[&str], &str); 4] = [
        (&["backend", "add", "web", "not-an-address"], "address"),
        (&["backend", "add", "nosuchpool", "198.18.0.23:8080"], "nosuchpool"),
        (&["backend", "weight", "web", "198.18.0.21:8080", "100000"], "weight"),
        (&["apply", "-f", &bad_file], "fastest"),
    ];
    for (args, mentions) in cases {
        let output = c.ctl(&[&c.lbs[1]], args);
        assert!(matches!(output.code, Some(1 | 2 | 4)), "{args:?}: {output:?}");
        assert!(output.stderr.contains(mentions), "{args:?} should mention {mentions}: {output:?}");
    }
    assert_eq!(c.revision(&c.lbs[0]), revision, "nothing was written");

    // A backend added through a follower reaches every node.
    let follower = c.lbs.iter().find(|h| node_id(h) != leader).unwrap();
    let be3 = c.backends[2].http_address().to_string();
    let started = Instant::now();
    let added = c.ctl_ok(&[follower], &["backend", "add", "web", &be3, "--wait"]);
    let acknowledged = started.elapsed();
    assert!(added.stdout.contains(&be3), "{added:?}");
    for lb in &c.lbs {
        c.until_routed(front(lb), &c.backends[2], Duration::from_secs(5));
    }
    println!(
        "backend add through follower {}: --wait returned after {acknowledged:?}, \
         every node routed to it {:?} after the command started",
        follower.name,
        started.elapsed()
    );
    let status = c.status(&c.lbs[2]);
    let nodes = status["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    for node in nodes {
        assert_eq!(node["status"]["revision"].as_u64(), Some(revision + 1), "{node}");
    }
    let owners = status["vips"].as_array().unwrap();
    assert_eq!(owners[0]["masters"], serde_json::json!([node_id(&c.lbs[0])]), "{status}");

    // An Idempotency-Key sent twice applies once and answers the same; a malformed one is
    // refused before anything is written.
    let before = c.revision(&c.lbs[0]);
    let pool = serde_json::to_vec(&fulcrum_model::Pool::new("once".parse().unwrap())).unwrap();
    let key = [("idempotency-key", "00112233445566778899aabbccddeeff")];
    let first = c.lab.admin_call(&c.lbs[1], "PUT", "/v1/pools/once", &key, &pool).unwrap();
    let again = c.lab.admin_call(&c.lbs[2], "PUT", "/v1/pools/once", &key, &pool).unwrap();
    assert_eq!(first.0, 200, "{first:?}");
    assert_eq!(first, again, "the retry answers as the first call");
    assert_eq!(c.revision(&c.lbs[0]), before + 1, "one change for two calls");
    let bad = [("idempotency-key", "not-hex")];
    let refused = c.lab.admin_call(&c.lbs[0], "PUT", "/v1/pools/twice", &bad, &pool).unwrap();
    assert_eq!(refused.0, 400, "{refused:?}");
    assert!(refused.1.contains("Idempotency-Key"), "{refused:?}");
    assert_eq!(c.revision(&c.lbs[0]), before + 1, "nothing written");
}

#[test]
fn writes_continue_without_the_leader_and_a_lone_survivor_holds_no_vip() {
    let mut c = cluster(3, 3, 3);
    let all: Vec<&Host> = c.lbs.iter().collect();
    c.leader(&all);
    c.apply(&c.lbs[0], &[&c.backends[0], &c.backends[1]]);

    // Kill the Raft leader; a write through the endpoints (the dead one first) still lands.
    let leader = c.leader(&all);
    let leader_index = c.lbs.iter().position(|h| node_id(h) == leader).unwrap();
    c.lab.crash(&c.lbs[leader_index], &mut c.nodes[leader_index]).unwrap();
    let dead = c.lbs[leader_index].clone();
    let mut endpoints = vec![&dead];
    endpoints.extend(c.lbs.iter().filter(|h| h.name != dead.name));
    let be3 = c.backends[2].http_address().to_string();
    c.ctl_ok(&endpoints, &["backend", "add", "web", &be3]);
    let alive: Vec<Host> = c.lbs.iter().filter(|h| h.name != dead.name).cloned().collect();
    for lb in &alive {
        c.until_routed(front(lb), &c.backends[2], Duration::from_secs(10));
    }
    let new_leader = c.leader(&alive.iter().collect::<Vec<_>>());
    assert_ne!(new_leader, leader);

    // The two left are a quorum: exactly one of them holds the VIP and serves the new config.
    let deadline = Instant::now() + Duration::from_secs(10);
    let owner = loop {
        let holders = c.lab.holders(&alive, vip(1)).unwrap();
        if holders.len() == 1 || Instant::now() > deadline {
            assert_eq!(holders.len(), 1, "exactly one holder of two: {holders:?}");
            break holders[0].clone();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let report = c.probe(SocketAddr::from((vip(1), FRONT_PORT)), 30);
    assert_eq!(report.successes, 30, "{report}");
    assert!(report.answers.contains_key("be3"), "the holder serves the added backend: {report}");

    // Kill the holder too: the survivor alone cannot tell a crash from a partition, so the
    // quorum fence keeps it from taking the VIP.
    let owner_index = c.lbs.iter().position(|h| h.name == owner).unwrap();
    c.lab.crash(&c.lbs[owner_index], &mut c.nodes[owner_index]).unwrap();
    let survivor: Vec<Host> = alive.iter().filter(|h| h.name != owner).cloned().collect();
    let watch_until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < watch_until {
        let holders = c.lab.holders(&survivor, vip(1)).unwrap();
        assert!(holders.is_empty(), "a node without a quorum took the VIP: {holders:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_fourth_node_joins_with_member_add_and_the_leader_leaves_with_member_remove() {
    let mut c = cluster(4, 3, 2);
    let voters: Vec<&Host> = c.lbs[..3].iter().collect();
    c.leader(&voters);
    c.apply(&c.lbs[1], &[&c.backends[0], &c.backends[1]]);
    let revision = c.revision(&c.lbs[0]);

    let joiner = c.lbs[3].clone();
    c.nodes.push(c.lab.start_cluster_node(Timing::Lab, &joiner, &[], &[], &[]).unwrap());
    let id = node_id(&joiner).to_string();
    let address = format!("{}:{}", joiner.address, fulcrum_lab::cluster::RAFT_PORT);
    c.ctl_ok(&[&c.lbs[0]], &["member", "add", &id, &address]);
    let promoted = c.ctl(&[&c.lbs[2]], &["member", "promote", &id]);
    assert!(promoted.ok(), "{promoted:?}\n{}", c.nodes[3].output().join("\n"));

    let members = c.ctl_ok(&[&c.lbs[1]], &["-o", "json", "member", "list"]).json().unwrap();
    let joined = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"].as_u64() == Some(node_id(&joiner)));
    assert_eq!(joined.and_then(|m| m["voter"].as_bool()), Some(true), "{members}");
    // The joiner serves the whole configuration: same revision, and traffic to the backends.
    let status = c.status(&joiner);
    let report = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"].as_u64() == Some(node_id(&joiner)))
        .cloned();
    assert_eq!(report.and_then(|n| n["status"]["revision"].as_u64()), Some(revision), "{status}");
    let report = c.probe(front(&joiner), 10);
    assert_eq!(report.successes, 10, "{report}");
    assert!(report.answers.contains_key("be1") && report.answers.contains_key("be2"), "{report}");

    // The leader leaves with `member remove`, asked of another node: the other three elect
    // a leader among themselves, and a write after it reaches all three.
    let all: Vec<&Host> = c.lbs.iter().collect();
    let leader = c.leader(&all);
    let (leaving, staying): (Vec<&Host>, Vec<&Host>) =
        all.iter().partition(|host| node_id(host) == leader);
    c.ctl_ok(&[staying[0]], &["member", "remove", &leader.to_string()]);
    // The removed leader steps down once the change commits; the others then elect one.
    let deadline = Instant::now() + Duration::from_secs(15);
    while c.leader(&staying) == leader && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_ne!(c.leader(&staying), leader, "the removed node still leads");
    let members = c.ctl_ok(&[staying[1]], &["-o", "json", "member", "list"]).json().unwrap();
    let ids: Vec<u64> =
        members["members"].as_array().unwrap().iter().filter_map(|m| m["id"].as_u64()).collect();
    assert_eq!(ids.len(), 3, "{members}");
    assert!(!ids.contains(&leader), "{} is still a member: {members}", leaving[0].name);
    c.apply(staying[2], &[&c.backends[0]]);
    let revision = c.revision(staying[2]);
    for host in &staying {
        let local_revision = || {
            let (status, body) =
                c.lab.admin_call(host, "GET", "/v1/config?local=true", &[], b"").unwrap();
            assert_eq!(status, 200, "{body}");
            serde_json::from_str::<serde_json::Value>(&body).unwrap()["revision"].as_u64()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while local_revision() != Some(revision) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(local_revision(), Some(revision), "{} did not apply the write", host.name);
    }
}

#[test]
fn a_node_that_cannot_serve_gives_the_vip_away_and_failover_moves_it_to_the_named_node() {
    let c = cluster(3, 3, 1);
    let all: Vec<&Host> = c.lbs.iter().collect();
    c.leader(&all);
    c.apply(&c.lbs[0], &[&c.backends[0]]);
    let within = Duration::from_secs(10);
    c.lab.wait_for_holder(&c.lbs, &c.lbs[0], vip(1), within).unwrap();

    // lb1 loses its route to the only backend: its tracked pool fails its checks, its
    // priority drops, and lb2 (the next priority) preempts it.
    let backend = format!("{}/32", c.backends[0].address);
    c.lab.exec(&c.lbs[0], "ip", &["route", "add", "blackhole", &backend]).unwrap();
    let gave = c.lab.wait_for_holder(&c.lbs, &c.lbs[1], vip(1), within).unwrap();
    println!("lb1 gave the VIP to lb2 {gave:?} after losing its backend");
    c.lab.exec(&c.lbs[0], "ip", &["route", "del", "blackhole", &backend]).unwrap();
    c.lab.wait_for_holder(&c.lbs, &c.lbs[0], vip(1), within).unwrap();

    // A planned move to the lowest-priority node, then lifted: priorities decide again.
    let lb3 = node_id(&c.lbs[2]).to_string();
    let moved = c.ctl_ok(&[&c.lbs[1]], &["-o", "json", "failover", "--vrid", "51", "--to", &lb3]);
    assert_eq!(moved.json().unwrap()["master"].as_u64(), Some(node_id(&c.lbs[2])), "{moved:?}");
    c.lab.wait_for_holder(&c.lbs, &c.lbs[2], vip(1), within).unwrap();
    let vips = c.ctl_ok(&[&c.lbs[0]], &["-o", "json", "vip", "status"]).json().unwrap();
    assert!(vips.to_string().contains(&format!("[{lb3}]")), "{vips}");
    c.ctl_ok(&[&c.lbs[0]], &["failover", "--vrid", "51", "--reset"]);
    c.lab.wait_for_holder(&c.lbs, &c.lbs[0], vip(1), within).unwrap();

    let unknown = c.ctl(&[&c.lbs[0]], &["failover", "--vrid", "99", "--to", &lb3]);
    assert_eq!(unknown.code, Some(4), "{unknown:?}");
    assert!(unknown.stderr.contains("VRID 99"), "{unknown:?}");
}

#[test]
fn a_planned_handover_keeps_established_connections_and_loses_no_request() {
    let mut c = cluster(3, 3, 2);
    let all: Vec<&Host> = c.lbs.iter().collect();
    c.leader(&all);
    c.apply_with_echo(&c.lbs[0], &[&c.backends[0], &c.backends[1]]);
    let within = Duration::from_secs(10);
    c.lab.wait_for_holder(&c.lbs, &c.lbs[0], vip(1), within).unwrap();
    const SECS: u64 = 5;
    let whole_download = usize::try_from(SECS * 10 * 1024).unwrap();
    let whole_session = usize::try_from(SECS * 10).unwrap();

    // With no connection open, lb1 -> lb3 and back: the old master holds the VIP until the
    // new one has it, so no new request falls in between.
    for to in [&c.lbs[2], &c.lbs[0]] {
        let probe = steady_probe(&c, Duration::from_secs(2));
        c.ctl_ok(&[to], &["failover", "--vrid", "51", "--to", &node_id(to).to_string()]);
        let report = probe.finish().unwrap();
        assert_eq!(report.failures, 0, "requests failed moving to {}: {report}", to.name);
        c.until_drained(&all, to);
    }

    // fulcrumctl failover lb1 -> lb2, with a download and an echo session open on lb1 and
    // 200 new requests a second.
    let long = c.long_connections(&c.lbs[0], SECS, true);
    let probe = steady_probe(&c, Duration::from_secs(3));
    let lb2 = node_id(&c.lbs[1]).to_string();
    c.ctl_ok(&[&c.lbs[1]], &["failover", "--vrid", "51", "--to", &lb2]);
    let report = probe.finish().unwrap();
    assert_eq!(report.failures, 0, "requests failed during the handover: {report}");
    // New connections land on lb2 while lb1 still serves its old ones.
    let accepted = |host| c.listener_metric(host, "fulcrum_listener_connections_total", "front");
    let (on_lb1, on_lb2) = (accepted(&c.lbs[0]), accepted(&c.lbs[1]));
    let fresh = c.probe(SocketAddr::from((vip(1), FRONT_PORT)), 20);
    assert_eq!(fresh.successes, 20, "{fresh}");
    assert_eq!(accepted(&c.lbs[0]), on_lb1, "lb1 took a new connection after the handover");
    assert_eq!(accepted(&c.lbs[1]), on_lb2 + 20.0, "lb2 took the new connections");
    let (download, echo) = long.finish();
    assert_eq!(download, Some(Ok(whole_download)), "the download through lb1 was cut");
    assert_eq!(echo, Ok(whole_session), "the echo session through lb1 was cut");
    let drained = c.until_drained(&all, &c.lbs[1]);
    println!("failover: drain state gone {drained:?} after the connections ended");

    // SIGTERM to lb2, the master now: the same, to lb1 or lb3.
    let long = c.long_connections(&c.lbs[1], SECS, true);
    let probe = steady_probe(&c, Duration::from_secs(3));
    c.nodes[1].signal(nix::sys::signal::Signal::SIGTERM).unwrap();
    let report = probe.finish().unwrap();
    assert_eq!(report.failures, 0, "requests failed during the stop: {report}");
    let (download, echo) = long.finish();
    assert_eq!(download, Some(Ok(whole_download)), "the download through the stopping lb2 was cut");
    assert_eq!(echo, Ok(whole_session), "the echo session through the stopping lb2 was cut");
    let status = c.nodes[1].wait(Duration::from_secs(20)).unwrap();
    assert!(status.success(), "lb2 stopped with {status}");
    assert!(!c.lab.ruleset(&c.lbs[1]).unwrap().contains("fulcrum"), "lb2 left its tables");
    let running = [&c.lbs[0], &c.lbs[2]];
    let holders = c.lab.holders(&c.lbs, vip(1)).unwrap();
    assert_eq!(holders.len(), 1, "{holders:?}");
    let master = c.lbs.iter().find(|h| h.name == holders[0]).unwrap();
    c.until_drained(&[&c.lbs[1]], master);
    c.until_drained(&running, master);
}

#[test]
fn a_planned_handover_of_a_dual_stack_vip_keeps_an_ipv6_download_and_loses_no_ipv6_request() {
    let vips: [IpAddr; 2] = [vip(1).into(), vip_v6(1).into()];
    let c = build_cluster(3, 3, 0, 2, &vips, |_, _| None);
    let all: Vec<&Host> = c.lbs.iter().collect();
    c.leader(&all);
    // One dual-stack listener on every address, IPv4 and IPv6.
    let text = web_cluster_file(FRONT_PORT, &[&c.backends[0], &c.backends[1]])
        .replace("bind = \"0.0.0.0:", "bind = \"[::]:");
    let file = c.lab.lab_file("cluster.toml", &text).unwrap();
    c.ctl_ok(&[&c.lbs[0]], &["apply", "-f", &file, "--wait"]);
    for vip in vips {
        c.lab.wait_for_holder(&c.lbs, &c.lbs[0], vip, Duration::from_secs(10)).unwrap();
    }

    // A 5 s download over the IPv6 VIP through lb1, then fulcrumctl failover to lb2 with 200
    // new IPv6 requests a second.
    const SECS: u64 = 5;
    let address = SocketAddr::from((vip_v6(1), FRONT_PORT));
    let namespace = c.client.namespace.clone();
    let download = std::thread::spawn(move || {
        fulcrum_lab::netns::run_in(&namespace, || {
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(download_slow(address, SECS)).map(|d: Download| d.bytes)
        })
        .unwrap()
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.listener_metric(&c.lbs[0], "fulcrum_listener_active_connections", "front") < 1.0 {
        assert!(Instant::now() < deadline, "the download never reached lb1");
        std::thread::sleep(Duration::from_millis(50));
    }
    let probe = steady_probe_of(&c, vips[1], Duration::from_secs(3));
    let lb2 = node_id(&c.lbs[1]).to_string();
    c.ctl_ok(&[&c.lbs[1]], &["failover", "--vrid", "51", "--to", &lb2]);
    let report = probe.finish().unwrap();
    assert_eq!(report.failures, 0, "IPv6 requests failed during the handover: {report}");
    for vip in vips {
        c.lab.wait_for_holder(&c.lbs, &c.lbs[1], vip, Duration::from_secs(5)).unwrap();
    }
    // The client's packets now go to lb2 (its Neighbor Advertisement moved the entry), which
    // hands those of the download on to lb1: without that, lb2's kernel would reset it.
    let lb2_mac = c.lab.mac(&c.lbs[1]).unwrap();
    assert_eq!(c.lab.arp_entry(&c.client, vip_v6(1)).unwrap(), Some(lb2_mac.clone()));
    // lb1 keeps the VIP on lo while it drains, but does not answer solicitations for it: a
    // client that forgot the VIP learns lb2 again, every time.
    for _ in 0..3 {
        let vip = vip_v6(1).to_string();
        c.lab.exec(&c.client, "ip", &["neigh", "flush", "to", &vip, "dev", "eth0"]).unwrap();
        let report = c.probe(SocketAddr::from((vip_v6(1), FRONT_PORT)), 2);
        assert_eq!(report.successes, 2, "{report}");
        assert_eq!(c.lab.arp_entry(&c.client, vip_v6(1)).unwrap(), Some(lb2_mac.clone()));
    }
    let whole_download = usize::try_from(SECS * 10 * 1024).unwrap();
    assert_eq!(
        download.join().unwrap(),
        Ok(whole_download),
        "the IPv6 download through lb1 was cut"
    );
    // Once the download ended, the drain ends and no forwarding rule is left.
    let deadline = Instant::now() + Duration::from_secs(15);
    while all.iter().any(|host| c.lab.ruleset(host).unwrap().contains("dup to")) {
        assert!(Instant::now() < deadline, "second-chance rules outlived the drain");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An `nft` that refuses second-chance forwarding rules (`dup to`), as a kernel without
/// `nf_dup_ipv4` would, and passes everything else to the real one.
const REFUSING_NFT: &str = r#"#!/bin/sh
script=$(cat)
case "$script" in
*"dup to"*) echo "Error: Could not process rule: No such file or directory (a lab stand-in)" >&2; exit 1 ;;
esac
printf '%s\n' "$script" | exec REAL_NFT "$@"
"#;

#[test]
fn a_successor_that_cannot_load_its_forwarding_rules_is_reported_and_the_vip_moves_anyway() {
    // lb2 runs with an nft that refuses the forwarding rules.
    let mut c = build_cluster(3, 3, 0, 1, &[vip(1).into()], |lab, i| {
        (i == 1).then(|| {
            let tools = lab.log_dir().join("refusing-nft");
            std::fs::create_dir_all(&tools).unwrap();
            let real_nft = fulcrum_lab::netns::run("sh", &["-c", "command -v nft"]).unwrap();
            let nft = tools.join("nft");
            std::fs::write(&nft, REFUSING_NFT.replace("REAL_NFT", real_nft.trim())).unwrap();
            std::fs::set_permissions(&nft, std::fs::Permissions::from_mode(0o755)).unwrap();
            tools
        })
    });
    let all: Vec<&Host> = c.lbs.iter().collect();
    c.leader(&all);
    c.apply(&c.lbs[0], &[&c.backends[0]]);
    c.lab.wait_for_holder(&c.lbs, &c.lbs[0], vip(1), Duration::from_secs(10)).unwrap();

    // Moving the VIP to lb2, which cannot forward: lb2 says why, lb1 reports it by name and
    // still hands the VIP over (lb3 forwards, so the drain goes on).
    let lb2 = node_id(&c.lbs[1]).to_string();
    c.ctl_ok(&[&c.lbs[0]], &["failover", "--vrid", "51", "--to", &lb2]);
    c.lab.wait_for_holder(&c.lbs, &c.lbs[1], vip(1), Duration::from_secs(10)).unwrap();
    let within = Duration::from_secs(10);
    let refused = c.nodes[1]
        .wait_for("its refusal", |line| line.contains("cannot forward for a peer's drain"), within)
        .unwrap();
    assert!(refused.contains("a lab stand-in"), "the reason is not passed on: {refused}");
    let reported = c.nodes[0]
        .wait_for(
            "the refusal reported",
            |line| line.contains("cannot forward for the drain"),
            within,
        )
        .unwrap();
    assert!(reported.contains(&format!("node {lb2} runs the VRID")), "{reported}");
    assert!(reported.contains("a lab stand-in"), "{reported}");
}

#[test]
fn a_node_that_dies_mid_drain_is_not_forwarded_to() {
    let mut c = cluster(3, 3, 1);
    let all: Vec<&Host> = c.lbs.iter().collect();
    c.leader(&all);
    c.apply_with_echo(&c.lbs[0], &[&c.backends[0]]);
    c.lab.wait_for_holder(&c.lbs, &c.lbs[0], vip(1), Duration::from_secs(10)).unwrap();

    // Only an echo session: a download whose node died waits in silence for data, as it
    // sends nothing a reset could answer.
    let long = c.long_connections(&c.lbs[0], 10, false);
    let lb2 = node_id(&c.lbs[1]).to_string();
    c.ctl_ok(&[&c.lbs[1]], &["failover", "--vrid", "51", "--to", &lb2]);
    let to_lb1 = format!("dup to {}", c.lbs[0].address);
    assert!(
        c.lab.ruleset(&c.lbs[1]).unwrap().contains(&to_lb1),
        "lb2 forwards to the draining lb1"
    );
    // The session goes on through lb1 after the handover: its bytes keep arriving there.
    let echoed = || {
        let labels = "echo\",direction=\"in";
        c.listener_metric(&c.lbs[0], "fulcrum_listener_bytes_total", labels)
    };
    let before = echoed();
    let start = Instant::now();
    while echoed() <= before {
        assert!(start.elapsed() < Duration::from_secs(5), "the session stopped reaching lb1");
        std::thread::sleep(Duration::from_millis(100));
    }

    // lb1 dies mid-drain: lb2 stops forwarding to it once its lease runs out (2 s), and the
    // echo session's next retransmission (about 3 s after the crash) is answered with a reset
    // instead of vanishing, well within the session's 8 s read timeout.
    c.lab.crash(&c.lbs[0], &mut c.nodes[0]).unwrap();
    let start = Instant::now();
    while [&c.lbs[1], &c.lbs[2]].iter().any(|h| c.lab.ruleset(h).unwrap().contains(&to_lb1)) {
        assert!(start.elapsed() < Duration::from_secs(30), "a rule still points at the dead lb1");
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("no rule points at the dead lb1 {:?} after the crash", start.elapsed());
    let (_, echo) = long.finish();
    let cut = echo.expect_err("the session through a dead node cannot go on");
    assert!(cut.contains("ConnectionReset"), "the session should end with a reset: {cut}");
}

/// Three cluster nodes serving one pool of `backends` through the VIP, which lb1 holds.
fn serving_cluster(backends: usize) -> Cluster {
    let c = cluster(3, 3, backends);
    let all: Vec<&Host> = c.lbs.iter().collect();
    c.leader(&all);
    let pool: Vec<&Host> = c.backends.iter().collect();
    c.apply(&c.lbs[0], &pool);
    c.lab.wait_for_holder(&c.lbs, &c.lbs[0], vip(1), Duration::from_secs(10)).unwrap();
    c
}

/// The load balancers that answer for the VIP now.
fn answering(c: &Cluster) -> Vec<String> {
    c.lab.answering(&c.lbs, vip(1)).unwrap()
}

fn partition(c: &Cluster, host: &Host, cut: Cut) {
    c.lab.partition(host, &c.lbs, cut).unwrap();
}

fn heal(c: &Cluster, host: &Host) {
    c.lab.heal(host).unwrap();
}

/// Samples who answers for the VIP for `span`, failing on two at once; returns when each
/// load balancer was first seen as the only one answering.
fn watch_answering(c: &Cluster, span: Duration, what: &str) -> Vec<(String, Duration)> {
    let started = Instant::now();
    let mut first_seen: Vec<(String, Duration)> = Vec::new();
    while started.elapsed() < span {
        let now = answering(c);
        assert!(
            now.len() <= 1,
            "{what}: {now:?} answer for the VIP at once, {:?} in",
            started.elapsed()
        );
        if let [one] = now.as_slice()
            && !first_seen.iter().any(|(name, _)| name == one)
        {
            first_seen.push((one.clone(), started.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    first_seen
}

#[test]
fn a_master_cut_off_from_its_peers_lets_the_vip_go_before_another_takes_it() {
    let c = serving_cluster(2);

    // lb1 loses the quorum: it lets the VIP go, and lb2 (next priority) takes it only then.
    partition(&c, &c.lbs[0], Cut::Whole);
    let started = Instant::now();
    let mut lb1_gone = None;
    let mut lb2_took = None;
    while started.elapsed() < Duration::from_secs(8) {
        let holders = c.lab.holders(&c.lbs, vip(1)).unwrap();
        assert!(
            holders.len() <= 1,
            "two holders {holders:?} {:?} into the partition",
            started.elapsed()
        );
        if lb1_gone.is_none() && !holders.contains(&c.lbs[0].name) {
            lb1_gone = Some(started.elapsed());
        }
        if lb2_took.is_none() && holders == [c.lbs[1].name.clone()] {
            lb2_took = Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("partitioned lb1 let the VIP go after {lb1_gone:?}; lb2 took it after {lb2_took:?}");
    assert!(lb1_gone.is_some() && lb2_took.is_some(), "{lb1_gone:?} {lb2_took:?}");
    let report = c.probe(SocketAddr::from((vip(1), FRONT_PORT)), 20);
    assert_eq!(report.successes, 20, "the majority's holder serves: {report}");

    // Healed: lb1 (the highest priority) takes the VIP back, never with lb2 still holding.
    heal(&c, &c.lbs[0]);
    let seen = watch_answering(&c, Duration::from_secs(6), "after the partition healed");
    println!("after healing, first answering: {seen:?}");
    assert_eq!(answering(&c), [c.lbs[0].name.clone()], "lb1 holds again once healed");
}

#[test]
fn a_killed_master_of_a_dual_stack_vip_stops_answering_for_both_by_itself() {
    let mut c = build_cluster(3, 3, 0, 1, &[vip(1).into(), vip_v6(1).into()], |_, _| None);
    let all: Vec<&Host> = c.lbs.iter().collect();
    c.leader(&all);
    c.apply(&c.lbs[0], &c.backends.iter().collect::<Vec<_>>());
    let vips: [IpAddr; 2] = [vip(1).into(), vip_v6(1).into()];
    let answering = |vip: IpAddr| c.lab.answering(&c.lbs, vip).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while vips.iter().any(|vip| answering(*vip) != [c.lbs[0].name.clone()]) {
        assert!(Instant::now() < deadline, "lb1 does not answer for both VIPs alone");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The IPv6 fence is in the kernel: lb1's ip6 table holds the IPv6 VIP.
    let ruleset = c.lab.ruleset(&c.lbs[0]).unwrap();
    assert!(ruleset.contains("table ip6 fulcrum"), "{ruleset}");

    // Killed with its host up, lb1 leaves both VIPs behind; its kernel stops answering for
    // each when the lease runs out (the address lifetimes and the held sets), and lb2 takes
    // both, never while lb1 still answers for either.
    c.nodes[0].crash().unwrap();
    let started = Instant::now();
    let mut taken = [None, None];
    while started.elapsed() < Duration::from_secs(8) {
        for (index, vip) in vips.iter().enumerate() {
            let now = answering(*vip);
            assert!(now.len() <= 1, "{now:?} answer for {vip} at once, {:?} in", started.elapsed());
            if now == [c.lbs[1].name.clone()] && taken[index].is_none() {
                taken[index] = Some(started.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    println!(
        "lb1 killed; lb2 answered for {} after {:?}, for {} after {:?}",
        vips[0], taken[0], vips[1], taken[1]
    );
    assert!(taken.iter().all(Option::is_some), "lb2 did not take both: {taken:?}");
}

#[test]
fn a_paused_or_killed_master_stops_answering_by_itself() {
    let mut c = serving_cluster(2);

    // Paused, lb1 cannot take its VIP away; its kernel stops answering for it when the lease
    // runs out, before lb2 takes it.
    c.nodes[0].signal(nix::sys::signal::Signal::SIGSTOP).unwrap();
    let seen = watch_answering(&c, Duration::from_secs(6), "lb1 paused");
    println!("lb1 paused; first answering: {seen:?}");
    assert_eq!(answering(&c), [c.lbs[1].name.clone()], "lb2 answers while lb1 is paused");
    let report = c.probe(SocketAddr::from((vip(1), FRONT_PORT)), 20);
    assert_eq!(report.successes, 20, "{report}");

    // Resumed, lb1 finds its lease gone: it never answers while lb2 holds, and takes the VIP
    // back (its priority is higher) only through the fence.
    c.nodes[0].signal(nix::sys::signal::Signal::SIGCONT).unwrap();
    let seen = watch_answering(&c, Duration::from_secs(6), "lb1 resumed");
    println!("lb1 resumed; first answering: {seen:?}");
    assert_eq!(answering(&c), [c.lbs[0].name.clone()]);

    // Killed with its host up, lb1 leaves its VIP and rules behind; the kernel stops
    // answering when the lease runs out, and lb2 takes over.
    c.nodes[0].crash().unwrap();
    let seen = watch_answering(&c, Duration::from_secs(6), "lb1 killed");
    println!("lb1 killed; first answering: {seen:?}");
    assert_eq!(answering(&c), [c.lbs[1].name.clone()], "lb2 answers after lb1 was killed");
    let report = c.probe(SocketAddr::from((vip(1), FRONT_PORT)), 20);
    assert_eq!(report.successes, 20, "{report}");
    // The VIP was added with the lease's lifetime: the dead node's kernel has removed it too.
    let stale = c.lab.holders(std::slice::from_ref(&c.lbs[0]), vip(1)).unwrap();
    assert!(stale.is_empty(), "the killed node still has the VIP on its link");
}

#[test]
fn a_forged_advert_from_a_non_member_takes_nothing_away() {
    use fulcrum_vrrp::wire::{Advertisement, Packet};
    use fulcrum_vrrp::{ChecksumForm, Family};
    let c = serving_cluster(1);

    // The client claims VRID 51 as its owner (priority 255) with the longest interval: were
    // it believed, every node would give the VIP up and wait 123 s.
    let advertisement = Advertisement {
        vrid: VRID,
        priority: 255,
        max_advert_interval_cs: 4095,
        addresses: vec![vip(1).into()],
    };
    let mut packet = Packet::new_unchecked(vec![0; advertisement.buffer_len()], Family::Ipv4);
    let (source, group) = (c.client.address.into(), Family::Ipv4.multicast_group());
    advertisement.emit(&mut packet, source, group, ChecksumForm::PseudoHeader).unwrap();
    let message = packet.into_inner();
    let probe = steady_probe(&c, Duration::from_secs(2));
    for _ in 0..5 {
        c.lab.send_to_vrrp_group(&c.client, message.clone(), 255).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    let report = probe.finish().unwrap();
    assert_eq!(report.failures, 0, "the forged advert cost requests: {report}");
    assert_eq!(c.lab.holders(&c.lbs, vip(1)).unwrap(), [c.lbs[0].name.clone()]);
}

#[test]
fn with_only_vrrp_lost_the_lease_holder_keeps_the_vip_alone() {
    let c = serving_cluster(1);

    // lb2 hears no adverts and becomes VRRP master too, but the leader will not give it the
    // lease lb1 keeps renewing over Raft: lb1 alone answers, and keeps serving.
    partition(&c, &c.lbs[0], Cut::VrrpOnly);
    let probe = steady_probe(&c, Duration::from_secs(5));
    let seen = watch_answering(&c, Duration::from_secs(5), "VRRP partitioned");
    let report = probe.finish().unwrap();
    println!("VRRP-only partition; first answering: {seen:?}");
    assert_eq!(seen.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>(), ["lb1"]);
    assert_eq!(report.failures, 0, "{report}");
    let vips = c.ctl_ok(&[&c.lbs[1]], &["-o", "json", "vip", "status"]).json().unwrap();
    let masters = &vips["vips"][0]["masters"];
    assert_eq!(masters.as_array().map(Vec::len), Some(2), "two VRRP masters, one holder: {vips}");
    heal(&c, &c.lbs[0]);
}

#[test]
fn a_master_cut_off_from_raft_alone_steps_aside_for_one_that_can_hold() {
    let c = serving_cluster(1);
    // VRRP still flows, so lb1's adverts would keep the others backup: lb1, whose lease no
    // leader renews, lowers its priority so lb2 takes over, and never while lb1 answers.
    partition(&c, &c.lbs[0], Cut::RaftOnly);
    let seen = watch_answering(&c, Duration::from_secs(8), "lb1 cut off from Raft");
    println!("Raft-only partition; first answering: {seen:?}");
    assert_eq!(answering(&c), [c.lbs[1].name.clone()], "lb2 holds the VIP");
    let report = c.probe(SocketAddr::from((vip(1), FRONT_PORT)), 20);
    assert_eq!(report.successes, 20, "{report}");
    heal(&c, &c.lbs[0]);
}

#[test]
fn two_load_balancers_and_a_witness_keep_a_quorum_when_one_dies() {
    // lb1 and lb2 run VRRP and serve; lb3 only votes in Raft (no VRRP, no traffic).
    let mut c = cluster_with_witnesses(3, 3, 1, 1);
    let all: Vec<&Host> = c.lbs.iter().collect();
    c.leader(&all);
    c.apply(&c.lbs[0], &[&c.backends[0]]);
    c.lab.wait_for_holder(&c.lbs, &c.lbs[0], vip(1), Duration::from_secs(10)).unwrap();

    // lb1 crashes: lb2 and the witness are a majority, so lb2 is granted the VIP.
    c.lab.crash(&c.lbs[0], &mut c.nodes[0]).unwrap();
    let took = c.lab.wait_for_holder(&c.lbs[1..], &c.lbs[1], vip(1), Duration::from_secs(10));
    println!("with a witness, lb2 took the VIP {took:?} after lb1 crashed");
    took.unwrap();
    let report = c.probe(SocketAddr::from((vip(1), FRONT_PORT)), 20);
    assert_eq!(report.successes, 20, "{report}");
}
