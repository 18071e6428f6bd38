//! VIPs announced over BGP: three `fulcrumd` cluster nodes announce one VIP through the BIRD
//! each runs to a router namespace running FRR (bgpd, zebra, bfdd), which installs a
//! multipath route hashed on ports. Client flows reach all three nodes; a node withdraws when
//! its tracked pool cannot be served, when an operator drains it and when it stops; a killed
//! fulcrumd takes its BIRD with it; a crashed host is withdrawn by BFD, before BGP's hold
//! time could. Established connections (echo sessions and downloads) live through every
//! planned change of the node set, the router rehashing them meanwhile, because the nodes
//! hand each other their packets (flow steering); a crashed host loses only its own.
//!
//! Not yet (issue 21): rate limits are per node.
//!
//! These tests need root; without it they fail with a message that says so.

#![allow(clippy::unwrap_used)] // In a test, a panic is the failure report.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use fulcrum_lab::bgp::{Router, node_section};
use fulcrum_lab::cluster::{Timing, node_id, web_cluster_file, with_echo_listener};
use fulcrum_lab::process::LabProcess;
use fulcrum_lab::serving::{download_slow, echo_session, metric};
use fulcrum_lab::{Host, HostRole, Lab, Topology};
use nix::sys::signal::Signal;

const LAB_BINARY: &str = env!("CARGO_BIN_EXE_fulcrum-lab");
/// The VIP every node announces (outside the VRRP VIPs of other tests).
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 200);
/// The port of the L4 echo listener.
const ECHO_PORT: u16 = 9000;

struct Announcing {
    lab: Lab,
    lbs: Vec<Host>,
    nodes: Vec<LabProcess>,
    /// Each node's node file, to start it again.
    node_files: Vec<String>,
    client: Host,
    router: Router,
    _backends: Vec<LabProcess>,
}

/// Three cluster nodes announcing [`VIP`] (tracking pool `web`) to FRR on the router, the
/// web cluster file applied, and the client routing the VIP through the router.
fn announcing() -> Announcing {
    let topology = Topology { load_balancers: 3, backends: 1, prefix: None };
    let lab =
        Lab::up(&topology, LAB_BINARY).unwrap_or_else(|e| panic!("cannot build the lab: {e}"));
    let lbs = lab.hosts_of(HostRole::LoadBalancer);
    let backends = lab.start_backends().unwrap();
    let router_host = lab.add_router().unwrap();
    let router = Router::start(&lab, &router_host, &lbs).unwrap();
    let node_files: Vec<String> = lbs
        .iter()
        .map(|lb| {
            // As the operator guide asks: the VIP on lo is not answered for on the LAN.
            for setting in ["net.ipv4.conf.all.arp_ignore=1", "net.ipv4.conf.all.arp_announce=2"] {
                lab.exec(lb, "sysctl", &["-qw", setting]).unwrap();
            }
            let run_dir = lab.log_dir().join(format!("bird-{}", lb.name));
            lab.cluster_node_file(Timing::Lab, lb, &lbs, &[], &["web"]).unwrap()
                + &node_section(lb, &router_host, &[VIP.into()], &["web"], &run_dir)
        })
        .collect();
    let nodes = lbs
        .iter()
        .zip(&node_files)
        .map(|(lb, file)| lab.start_fulcrumd(lb, file).unwrap())
        .collect();
    let client = lab.host("client").unwrap();
    let backend_hosts = lab.hosts_of(HostRole::Backend);
    let backend_refs: Vec<&Host> = backend_hosts.iter().collect();
    let text = with_echo_listener(&web_cluster_file(80, &backend_refs), ECHO_PORT, &backend_refs);
    let file = lab.lab_file("cluster.toml", &text).unwrap();
    let all: Vec<&Host> = lbs.iter().collect();
    lab.fulcrumctl_ok(&client, &all, &["apply", "-f", &file, "--wait"]).unwrap();
    let via = router_host.address.to_string();
    lab.exec(&client, "ip", &["route", "add", &format!("{VIP}/32"), "via", &via]).unwrap();
    Announcing { lab, lbs, nodes, node_files, client, router, _backends: backends }
}

/// Long connections through the VIP, running in the client.
struct LongConnections {
    outcomes: std::thread::JoinHandle<Vec<Result<(), String>>>,
    /// Each node's share of them once all were open.
    per_node: Vec<f64>,
}

impl LongConnections {
    /// Waits for every connection to end; what became of each.
    fn outcomes(self) -> Vec<Result<(), String>> {
        self.outcomes.join().unwrap()
    }

    /// Whether some are still open.
    fn running(&self) -> bool {
        !self.outcomes.is_finished()
    }

    /// Waits for every connection and asserts none was cut, naming `change`.
    fn assert_unbroken(self, change: &str) {
        let outcomes = self.outcomes();
        let failed: Vec<&String> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
        assert!(
            failed.is_empty(),
            "{change}: {} of {} cut: {failed:?}",
            failed.len(),
            outcomes.len()
        );
    }
}

impl Announcing {
    fn addresses(&self, indices: &[usize]) -> Vec<Ipv4Addr> {
        indices.iter().map(|&i| self.lbs[i].address).collect()
    }

    fn wait_next_hops(&self, indices: &[usize], timeout: Duration) {
        let expected = self.addresses(indices);
        self.router.wait_next_hops(&self.lab, VIP.into(), &expected, timeout).unwrap();
    }

    /// Waits up to 5 s until each node of `observers` sees the nodes of `announcing` announcing,
    /// those of `draining` draining and no other node among those sharing the flows.
    fn wait_flow_view(&self, observers: &[usize], announcing: &[usize], draining: &[usize]) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        for &observer in observers {
            loop {
                let metrics = self.lab.admin_metrics(&self.lbs[observer]).unwrap();
                let seen: Vec<Option<f64>> = self
                    .lbs
                    .iter()
                    .map(|lb| {
                        let labels = format!("node=\"{}\"", node_id(lb));
                        metric(&metrics, "fulcrum_bgp_flow_member_announcing", &labels)
                    })
                    .collect();
                let expected: Vec<Option<f64>> = (0..self.lbs.len())
                    .map(|i| match (announcing.contains(&i), draining.contains(&i)) {
                        (true, _) => Some(1.0),
                        (false, true) => Some(0.0),
                        (false, false) => None,
                    })
                    .collect();
                if seen == expected {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{} sees the flow members {seen:?}, not {expected:?}",
                    self.lbs[observer].name
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// Packets the other nodes handed to node `index` so far, as their `/metrics` say.
    fn handed_to(&self, index: usize) -> f64 {
        let labels = format!("to=\"{}\"", node_id(&self.lbs[index]));
        (0..self.lbs.len())
            .filter(|&i| i != index)
            .map(|i| {
                let metrics = self.lab.admin_metrics(&self.lbs[i]).unwrap();
                metric(&metrics, "fulcrum_bgp_handed_packets_total", &labels).unwrap_or(0.0)
            })
            .sum()
    }

    /// Open connections of listeners `front` and `echo` on each node.
    fn open_connections(&self) -> Vec<f64> {
        self.lbs
            .iter()
            .map(|lb| {
                let Ok(metrics) = self.lab.admin_metrics(lb) else { return 0.0 };
                ["front", "echo"]
                    .iter()
                    .filter_map(|listener| {
                        let labels = format!("listener=\"{listener}\"");
                        metric(&metrics, "fulcrum_listener_active_connections", &labels)
                    })
                    .sum()
            })
            .collect()
    }

    /// `echoes` echo sessions (a line every 100 ms, each echo awaited) and `downloads`
    /// `/slow` downloads (checked byte for byte), all of `secs` seconds, through the VIP from
    /// the client; all open when this returns. Each must end within `secs` + 15 s.
    fn long_connections(&self, echoes: usize, downloads: usize, secs: u64) -> LongConnections {
        let before: f64 = self.open_connections().iter().sum();
        let namespace = self.client.namespace.clone();
        let outcomes = std::thread::spawn(move || {
            fulcrum_lab::netns::run_in(&namespace, move || {
                let runtime =
                    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                runtime.block_on(async move {
                    let limit = Duration::from_secs(secs + 15);
                    let mut all = tokio::task::JoinSet::new();
                    for n in 0..echoes {
                        let address = SocketAddr::new(VIP.into(), ECHO_PORT);
                        let lines = usize::try_from(secs * 10).unwrap();
                        let step = Duration::from_millis(100);
                        let session = echo_session(address, lines, step, Duration::from_secs(8));
                        all.spawn(async move {
                            match tokio::time::timeout(limit, session).await {
                                Ok(Ok(_)) => Ok(()),
                                Ok(Err(e)) => Err(format!("echo {n}: {e}")),
                                Err(_) => Err(format!("echo {n}: still open after {limit:?}")),
                            }
                        });
                    }
                    for n in 0..downloads {
                        let download = download_slow(SocketAddr::new(VIP.into(), 80), secs);
                        all.spawn(async move {
                            match tokio::time::timeout(limit, download).await {
                                Ok(Ok(_)) => Ok(()),
                                Ok(Err(e)) => Err(format!("download {n}: {e}")),
                                Err(_) => Err(format!("download {n}: still open after {limit:?}")),
                            }
                        });
                    }
                    all.join_all().await
                })
            })
            .unwrap()
        });
        let wanted = before + (echoes + downloads) as f64;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let per_node = self.open_connections();
            if per_node.iter().sum::<f64>() >= wanted {
                return LongConnections { outcomes, per_node };
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{wanted} connections never opened: {per_node:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Makes node `index`'s health checks fail (new connections to the backend refused, the
    /// established ones kept), or pass again.
    fn fail_health_checks(&self, index: usize, fail: bool) {
        let lb = &self.lbs[index];
        match fail {
            true => {
                let backend = self.lab.hosts_of(HostRole::Backend)[0].http_address();
                let (address, port) = (backend.ip().to_string(), backend.port().to_string());
                let chain = "{ type filter hook output priority 0 ; }";
                for command in [
                    &["add", "table", "ip", "lab_health"][..],
                    &["add", "chain", "ip", "lab_health", "out", chain],
                    &["add", "rule", "ip", "lab_health", "out", "ip", "daddr", &address]
                        .into_iter()
                        .chain(["tcp", "dport", &port, "ct", "state", "new", "drop"])
                        .collect::<Vec<_>>(),
                ] {
                    self.lab.exec(lb, "nft", command).unwrap();
                }
            }
            false => {
                self.lab.exec(lb, "nft", &["delete", "table", "ip", "lab_health"]).unwrap();
            }
        }
    }

    /// Connections accepted by listener `front` on each node.
    fn accepted(&self) -> Vec<f64> {
        self.lbs
            .iter()
            .map(|lb| {
                let metrics = self.lab.admin_metrics(lb).unwrap();
                metric(&metrics, "fulcrum_listener_connections_total", "listener=\"front\"")
                    .unwrap_or(0.0)
            })
            .collect()
    }

    /// Waits up to 5 s until `host`'s metric `name{labels}` is `value`.
    fn wait_metric(&self, host: &Host, name: &str, labels: &str, value: f64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let metrics = self.lab.admin_metrics(host).unwrap();
            let seen = metric(&metrics, name, labels);
            if seen == Some(value) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} {name}{{{labels}}} is {seen:?}, not {value}",
                host.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `count` requests from the client to the VIP, each on a new connection (a new source
    /// port, so a new flow for the router's hash); how many were answered 200.
    fn requests(&self, count: usize) -> usize {
        let address = SocketAddr::new(VIP.into(), 80);
        self.lab
            .run_in(&self.client, move || (0..count).filter(|_| get(address).is_ok()).count())
            .unwrap()
    }
}

/// The PID of the BIRD that fulcrumd runs on `host`.
fn bird_pid(lab: &Lab, host: &Host) -> u32 {
    let file = lab.log_dir().join(format!("bird-{}", host.name)).join("bird.pid");
    std::fs::read_to_string(&file).unwrap().trim().parse().unwrap()
}

fn get(address: SocketAddr) -> std::io::Result<()> {
    let mut stream = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    write!(stream, "GET / HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    if answer.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        Err(std::io::Error::other(answer.lines().next().unwrap_or("").to_owned()))
    }
}

#[test]
fn every_node_announces_the_vip_and_the_router_spreads_client_flows_over_all_three() {
    let mut c = announcing();
    c.wait_next_hops(&[0, 1, 2], Duration::from_secs(30));
    let vip = format!("vip=\"{VIP}\"");
    let router = format!("neighbor=\"{}\"", fulcrum_lab::topology::ROUTER_ADDRESS);
    for lb in &c.lbs {
        c.wait_metric(lb, "fulcrum_bgp_announced", &vip, 1.0);
        c.wait_metric(lb, "fulcrum_bgp_session_established", &router, 1.0);
    }
    let all: Vec<&Host> = c.lbs.iter().collect();
    let shown = c.lab.fulcrumctl_ok(&c.client, &all, &["status"]).unwrap().stdout;
    assert_eq!(shown.matches("announcing 1/1, sessions 1/1 up").count(), 3, "{shown}");
    let before = c.accepted();
    let answered = c.requests(120);
    assert_eq!(answered, 120, "every request through the router is answered");
    let after = c.accepted();
    let share: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert!(share.iter().all(|&n| n > 0.0), "every node takes flows: {share:?}");
    assert_eq!(share.iter().sum::<f64>(), 120.0, "{share:?}");

    // A killed fulcrumd (SIGKILL to it alone) takes its BIRD with it: the kernel stops BIRD,
    // its session closes and its path goes.
    let bird_pid = bird_pid(&c.lab, &c.lbs[2]);
    c.nodes[2].signal(Signal::SIGKILL).unwrap();
    c.wait_next_hops(&[0, 1], Duration::from_secs(5));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::path::Path::new(&format!("/proc/{bird_pid}")).exists() {
        assert!(std::time::Instant::now() < deadline, "BIRD ({bird_pid}) outlived fulcrumd");
        std::thread::sleep(Duration::from_millis(20));
    }
    c.wait_flow_view(&[0, 1], &[0, 1], &[]);
    assert_eq!(c.requests(30), 30, "the two others answer every flow");
}

#[test]
fn a_node_withdraws_when_its_pool_fails_and_when_it_stops_and_bfd_withdraws_a_crashed_host() {
    let mut c = announcing();
    c.wait_next_hops(&[0, 1, 2], Duration::from_secs(30));

    // lb1 can no longer reach the backend: its tracked pool fails its checks there.
    let backend = c.lab.hosts_of(HostRole::Backend)[0].address.to_string();
    let lb1 = c.lbs[0].clone();
    c.lab.exec(&lb1, "ip", &["route", "add", "blackhole", &format!("{backend}/32")]).unwrap();
    c.wait_next_hops(&[1, 2], Duration::from_secs(10));
    c.wait_metric(&lb1, "fulcrum_bgp_announced", &format!("vip=\"{VIP}\""), 0.0);
    c.wait_flow_view(&[0, 1, 2], &[1, 2], &[0]);
    assert_eq!(c.requests(30), 30, "flows go to the nodes that can serve");
    c.lab.exec(&lb1, "ip", &["route", "del", "blackhole", &format!("{backend}/32")]).unwrap();
    c.wait_next_hops(&[0, 1, 2], Duration::from_secs(10));

    // SIGTERM: lb2 withdraws first, its session still up, while it still runs and drains.
    c.router.skip_bgpd_log();
    c.nodes[1].signal(Signal::SIGTERM).unwrap();
    c.wait_next_hops(&[0, 2], Duration::from_secs(5));
    let lb2 = format!("neighbor {}", c.lbs[1].address);
    let lb2_down: Vec<String> =
        c.router.bgpd_log_since_skip().into_iter().filter(|l| l.contains(&lb2)).collect();
    assert!(
        lb2_down.is_empty(),
        "withdrawn by an update, not by closing the session: {lb2_down:?}"
    );
    assert!(c.nodes[1].running(), "withdrawn before the process ended");
    c.nodes[1].wait(Duration::from_secs(20)).unwrap();

    // lb3's host loses power: no FIN or NOTIFICATION leaves it, and BFD takes the path down.
    let lb3 = c.lbs[2].clone();
    c.router.skip_bgpd_log();
    c.lab.crash(&lb3, &mut c.nodes[2]).unwrap();
    c.wait_next_hops(&[0], Duration::from_secs(5));
    c.wait_flow_view(&[0], &[0], &[]);
    let neighbor = format!("neighbor {}", lb3.address);
    let down = c.router.wait_bgpd_log(
        "lb3's session taken down by BFD",
        |l| l.contains(&neighbor) && l.contains("(Cease/BFD Down)"),
        Duration::from_secs(2),
    );
    assert!(down.is_ok(), "bgpd took lb3 down on BFD's word: {down:?}");
    assert_eq!(c.requests(20), 20, "the last node answers every flow");
}

#[test]
fn established_connections_live_through_every_planned_change_of_the_node_set() {
    let mut c = announcing();
    c.wait_next_hops(&[0, 1, 2], Duration::from_secs(30));
    c.wait_flow_view(&[0, 1, 2], &[0, 1, 2], &[]);
    // Shorter than the nodes' shutdown_drain (10 s), so a stopping node serves them out;
    // connections across a node's return last longer, as announcing takes a few seconds.
    const SECS: u64 = 6;
    const RETURN_SECS: u64 = 20;
    let (echoes, downloads) = (16, 8);
    let open = |batch: &LongConnections, change: &str| {
        assert!(batch.running(), "{change} came after the connections ended: nothing was tested");
    };

    // lb1's health checks fail: it withdraws, and serves what it holds.
    let batch = c.long_connections(echoes, downloads, SECS);
    assert!(batch.per_node[0] > 0.0, "lb1 holds some: {:?}", batch.per_node);
    c.fail_health_checks(0, true);
    c.wait_next_hops(&[1, 2], Duration::from_secs(10));
    c.wait_flow_view(&[0, 1, 2], &[1, 2], &[0]);
    open(&batch, "lb1's withdrawal");
    batch.assert_unbroken("lb1 withdrawn by its health checks");

    // They pass again: lb1 takes its buckets back from the nodes that held them meanwhile.
    let batch = c.long_connections(echoes, downloads, RETURN_SECS);
    c.fail_health_checks(0, false);
    c.wait_next_hops(&[0, 1, 2], Duration::from_secs(15));
    c.wait_flow_view(&[0, 1, 2], &[0, 1, 2], &[]);
    open(&batch, "lb1's return");
    batch.assert_unbroken("lb1 announcing again");

    // An operator drains lb2, then lifts the drain. While it drains, it takes no new
    // connection: what the others hand it belongs to the connections it holds.
    let all: Vec<&Host> = c.lbs.iter().collect();
    let lb2 = node_id(&c.lbs[1]).to_string();
    let batch = c.long_connections(echoes, downloads, SECS);
    assert!(batch.per_node[1] > 0.0, "lb2 holds some: {:?}", batch.per_node);
    let drained = c.lab.fulcrumctl_ok(&c.client, &all, &["drain", &lb2]).unwrap().stdout;
    assert!(drained.contains("withdrawn"), "{drained}");
    c.wait_next_hops(&[0, 2], Duration::from_secs(10));
    c.wait_flow_view(&[0, 1, 2], &[0, 2], &[1]);
    // The counters in /metrics are read every second.
    std::thread::sleep(Duration::from_millis(1_200));
    let handed_before = c.handed_to(1);
    let shown = c.lab.fulcrumctl_ok(&c.client, &all, &["status"]).unwrap().stdout;
    assert!(shown.contains("announcing 0/1, sessions 1/1 up, drained"), "{shown}");
    open(&batch, "lb2's drain");
    batch.assert_unbroken("lb2 drained by fulcrumctl");
    std::thread::sleep(Duration::from_millis(1_200));
    assert!(
        c.handed_to(1) > handed_before,
        "the others handed lb2 the packets of its connections while it drained"
    );
    let batch = c.long_connections(echoes, downloads, RETURN_SECS);
    c.lab.fulcrumctl_ok(&c.client, &all, &["drain", &lb2, "--lift"]).unwrap();
    c.wait_next_hops(&[0, 1, 2], Duration::from_secs(15));
    c.wait_flow_view(&[0, 1, 2], &[0, 1, 2], &[]);
    open(&batch, "lb2's drain lifted");
    batch.assert_unbroken("lb2's drain lifted");

    // SIGTERM to lb3: it withdraws, serves what it holds, and stops.
    let batch = c.long_connections(echoes, downloads, SECS);
    assert!(batch.per_node[2] > 0.0, "lb3 holds some: {:?}", batch.per_node);
    c.nodes[2].signal(Signal::SIGTERM).unwrap();
    c.wait_next_hops(&[0, 1], Duration::from_secs(5));
    open(&batch, "lb3's SIGTERM");
    batch.assert_unbroken("lb3 stopped by SIGTERM");
    c.nodes[2].wait(Duration::from_secs(20)).unwrap();
    c.wait_flow_view(&[0, 1], &[0, 1], &[]);

    // lb3 starts again: a node added takes buckets whose connections stay where they are.
    let batch = c.long_connections(echoes, downloads, RETURN_SECS);
    c.nodes[2] = c.lab.start_fulcrumd(&c.lbs[2], &c.node_files[2]).unwrap();
    c.wait_next_hops(&[0, 1, 2], Duration::from_secs(30));
    c.wait_flow_view(&[0, 1, 2], &[0, 1, 2], &[]);
    open(&batch, "lb3's start");
    batch.assert_unbroken("lb3 added");
}

#[test]
fn a_crashed_host_loses_only_the_connections_it_held() {
    let mut c = announcing();
    c.wait_next_hops(&[0, 1, 2], Duration::from_secs(30));
    c.wait_flow_view(&[0, 1, 2], &[0, 1, 2], &[]);
    let batch = c.long_connections(16, 8, 10);
    let held = batch.per_node.clone();
    assert!(held.iter().all(|&n| n > 0.0), "every node holds some: {held:?}");
    let lb3 = c.lbs[2].clone();
    c.lab.crash(&lb3, &mut c.nodes[2]).unwrap();
    c.wait_next_hops(&[0, 1], Duration::from_secs(5));
    let outcomes = batch.outcomes();
    let cut = outcomes.iter().filter(|o| o.is_err()).count();
    assert_eq!(cut as f64, held[2], "exactly lb3's connections are lost: {outcomes:?}");
}

#[test]
fn a_rate_limit_holds_across_the_three_nodes_the_router_spreads_its_flows_over() {
    let c = announcing();
    c.wait_next_hops(&[0, 1, 2], Duration::from_secs(30));
    c.wait_flow_view(&[0, 1, 2], &[0, 1, 2], &[]);
    // One client address, every request on a new connection: its flows spread over the nodes.
    const CAPACITY: f64 = 20.0;
    const REFILL: f64 = 20.0;
    let backends = c.lab.hosts_of(HostRole::Backend);
    let backend_refs: Vec<&Host> = backends.iter().collect();
    let text = web_cluster_file(80, &backend_refs).replacen(
        "default_pool = \"web\"\n",
        "default_pool = \"web\"\nrate_limit = \"per-client\"\n",
        1,
    ) + &format!(
        "\n[[rate_limits]]\nname = \"per-client\"\nkey = \"client_ip\"\nkind = \"token_bucket\"\n\
         capacity = {CAPACITY}\nrefill_per_second = {REFILL}\n"
    );
    let file = c.lab.lab_file("limited.toml", &text).unwrap();
    let all: Vec<&Host> = c.lbs.iter().collect();
    c.lab.fulcrumctl_ok(&c.client, &all, &["apply", "-f", &file, "--wait"]).unwrap();

    // Five times the limit's rate, for five seconds.
    let before = c.accepted();
    let address = SocketAddr::new(VIP.into(), 80);
    let (admitted, refused, elapsed) = c
        .lab
        .run_in(&c.client, move || {
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let start = tokio::time::Instant::now();
                let mut all = tokio::task::JoinSet::new();
                let mut tick = tokio::time::interval(Duration::from_millis(10));
                for _ in 0..500 {
                    tick.tick().await;
                    all.spawn(async move { status_of(address).await });
                }
                let statuses = all.join_all().await;
                let count = |code| statuses.iter().filter(|s| **s == Some(code)).count() as f64;
                (count(200), count(429), start.elapsed())
            })
        })
        .unwrap();
    let after = c.accepted();
    let share: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert!(share.iter().all(|&n| n > 50.0), "every node takes a good share: {share:?}");
    assert_eq!(admitted + refused, 500.0, "every request is answered 200 or 429");
    let allowed = CAPACITY + REFILL * elapsed.as_secs_f64();
    eprintln!("cluster-wide limit: {admitted} admitted, {allowed:.1} allowed, shares {share:?}");
    // Over: at most a bucket's debt (one capacity) plus what the others admit between two
    // reports; per-node limits would admit about three times `allowed`.
    assert!(
        admitted >= 0.9 * allowed && admitted <= allowed + CAPACITY + 0.1 * allowed,
        "{admitted} admitted, {allowed:.0} allowed by the limit over {elapsed:?}"
    );
}

/// The status of one `GET /` on a new connection to `address`, if it was answered.
async fn status_of(address: SocketAddr) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
        let request = format!("GET / HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.ok()?;
        let head = String::from_utf8_lossy(&answer[..answer.len().min(12)]).into_owned();
        head.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(5), exchange).await.ok().flatten()
}
