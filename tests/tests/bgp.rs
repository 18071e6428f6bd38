//! VIPs announced over BGP (issue 21's first step): three `fulcrumd` cluster nodes announce
//! one VIP through the BIRD each runs to a router namespace running FRR (bgpd, zebra, bfdd),
//! which installs a multipath route hashed on ports. Client flows reach all three nodes; a
//! node withdraws when its tracked pool cannot be served and when it stops; a killed
//! fulcrumd takes its BIRD with it; a crashed host is withdrawn by BFD, before BGP's hold
//! time could.
//!
//! Not yet (issue 21): flows are not kept across a change of the node set (the router
//! rehashes them), and rate limits are per node.
//!
//! These tests need root; without it they fail with a message that says so.

#![allow(clippy::unwrap_used)] // In a test, a panic is the failure report.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use fulcrum_lab::bgp::{Router, node_section};
use fulcrum_lab::cluster::{Timing, web_cluster_file};
use fulcrum_lab::process::LabProcess;
use fulcrum_lab::serving::metric;
use fulcrum_lab::{Host, HostRole, Lab, Topology};
use nix::sys::signal::Signal;

const LAB_BINARY: &str = env!("CARGO_BIN_EXE_fulcrum-lab");
/// The VIP every node announces (outside the VRRP VIPs of other tests).
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 200);

struct Announcing {
    lab: Lab,
    lbs: Vec<Host>,
    nodes: Vec<LabProcess>,
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
    let nodes = lbs
        .iter()
        .map(|lb| {
            // As the operator guide asks: the VIP on lo is not answered for on the LAN.
            for setting in ["net.ipv4.conf.all.arp_ignore=1", "net.ipv4.conf.all.arp_announce=2"] {
                lab.exec(lb, "sysctl", &["-qw", setting]).unwrap();
            }
            let run_dir = lab.log_dir().join(format!("bird-{}", lb.name));
            let file = lab.cluster_node_file(Timing::Lab, lb, &lbs, &[], &["web"]).unwrap()
                + &node_section(lb, &router_host, &[VIP.into()], &["web"], &run_dir);
            lab.start_fulcrumd(lb, &file).unwrap()
        })
        .collect();
    let client = lab.host("client").unwrap();
    let backend_hosts = lab.hosts_of(HostRole::Backend);
    let backend_refs: Vec<&Host> = backend_hosts.iter().collect();
    let file = lab.lab_file("cluster.toml", &web_cluster_file(80, &backend_refs)).unwrap();
    let all: Vec<&Host> = lbs.iter().collect();
    lab.fulcrumctl_ok(&client, &all, &["apply", "-f", &file, "--wait"]).unwrap();
    let via = router_host.address.to_string();
    lab.exec(&client, "ip", &["route", "add", &format!("{VIP}/32"), "via", &via]).unwrap();
    Announcing { lab, lbs, nodes, client, router, _backends: backends }
}

impl Announcing {
    fn addresses(&self, indices: &[usize]) -> Vec<Ipv4Addr> {
        indices.iter().map(|&i| self.lbs[i].address).collect()
    }

    fn wait_next_hops(&self, indices: &[usize], timeout: Duration) {
        let expected = self.addresses(indices);
        self.router.wait_next_hops(&self.lab, VIP.into(), &expected, timeout).unwrap();
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
    let neighbor = format!("neighbor {}", lb3.address);
    let down = c.router.wait_bgpd_log(
        "lb3's session taken down by BFD",
        |l| l.contains(&neighbor) && l.contains("(Cease/BFD Down)"),
        Duration::from_secs(2),
    );
    assert!(down.is_ok(), "bgpd took lb3 down on BFD's word: {down:?}");
    assert_eq!(c.requests(20), 20, "the last node answers every flow");
}
