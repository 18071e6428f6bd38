//! VIPs announced over BGP: three `fulcrumd` cluster nodes announce one VIP through the BIRD
//! each runs to a router namespace running FRR (bgpd, zebra, bfdd), which installs a
//! multipath route hashed on ports. Client flows reach all three nodes; a node withdraws when
//! its tracked pool cannot be served, when an operator drains it and when it stops; a killed
//! fulcrumd takes its BIRD with it; a crashed host is withdrawn by BFD, before BGP's hold
//! time could. Established connections (echo sessions and downloads) live through every
//! planned change of the node set, the router rehashing them meanwhile, because the nodes
//! hand each other their packets (flow steering); a crashed host loses only its own. A rate
//! limit holds across the three nodes.
//!
//! These tests need root; without it they fail with a message that says so.

#![allow(clippy::unwrap_used)] // In a test, a panic is the failure report.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::time::Duration;

use fulcrum_lab::cluster::node_id;
use fulcrum_lab::ecmp::{EcmpLab, FulcrumEcmp, HTTP_PORT, LongConnections, VIP};
use fulcrum_lab::serving::metric;
use fulcrum_lab::{Host, HostRole, Lab};
use nix::sys::signal::Signal;

const LAB_BINARY: &str = env!("CARGO_BIN_EXE_fulcrum-lab");

/// The lab's three nodes announcing the VIP, as the tests use them.
struct Announcing(FulcrumEcmp);

impl Deref for Announcing {
    type Target = FulcrumEcmp;
    fn deref(&self) -> &FulcrumEcmp {
        &self.0
    }
}

impl DerefMut for Announcing {
    fn deref_mut(&mut self) -> &mut FulcrumEcmp {
        &mut self.0
    }
}

fn announcing() -> Announcing {
    let ecmp =
        EcmpLab::up(Path::new(LAB_BINARY)).unwrap_or_else(|e| panic!("cannot build the lab: {e}"));
    Announcing(FulcrumEcmp::start(ecmp, "").unwrap())
}

impl Announcing {
    fn lab(&self) -> &Lab {
        &self.ecmp.lab
    }

    fn lbs(&self) -> &[Host] {
        &self.ecmp.lbs
    }

    fn wait_next_hops(&self, indices: &[usize], timeout: Duration) {
        self.ecmp.wait_next_hops(indices, timeout).unwrap();
    }

    fn wait_flow_view(&self, observers: &[usize], announcing: &[usize], draining: &[usize]) {
        self.0.wait_flow_view(observers, announcing, draining).unwrap();
    }

    fn long_connections(&self, echoes: usize, downloads: usize, secs: u64) -> LongConnections {
        self.ecmp.long_connections(echoes, downloads, secs).unwrap()
    }

    /// Waits up to 5 s until `host`'s metric `name{labels}` is `value`.
    fn wait_metric(&self, host: &Host, name: &str, labels: &str, value: f64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let metrics = self.lab().admin_metrics(host).unwrap();
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
        let address = SocketAddr::new(VIP.into(), HTTP_PORT);
        self.lab()
            .run_in(&self.ecmp.client, move || (0..count).filter(|_| get(address).is_ok()).count())
            .unwrap()
    }
}

/// Waits for every connection and asserts none was cut, naming `change`.
fn assert_unbroken(batch: LongConnections, change: &str) {
    let cut = batch.cut();
    assert!(cut.is_empty(), "{change}: {} cut: {cut:?}", cut.len());
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
    for lb in c.lbs() {
        c.wait_metric(lb, "fulcrum_bgp_announced", &vip, 1.0);
        c.wait_metric(lb, "fulcrum_bgp_session_established", &router, 1.0);
        // What the router holds from the node, as far as the node can tell.
        c.wait_metric(lb, "fulcrum_bgp_routes_sent", &router, 1.0);
    }
    let all: Vec<&Host> = c.lbs().iter().collect();
    let shown = c.lab().fulcrumctl_ok(&c.ecmp.client, &all, &["status"]).unwrap().stdout;
    assert_eq!(shown.matches("announcing 1/1, sessions 1/1 up").count(), 3, "{shown}");
    assert_eq!(shown.matches("routes sent 1").count(), 3, "{shown}");
    let before = c.accepted().unwrap();
    let answered = c.requests(120);
    assert_eq!(answered, 120, "every request through the router is answered");
    let after = c.accepted().unwrap();
    let share: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert!(share.iter().all(|&n| n > 0.0), "every node takes flows: {share:?}");
    assert_eq!(share.iter().sum::<f64>(), 120.0, "{share:?}");

    // A killed fulcrumd (SIGKILL to it alone) takes its BIRD with it: the kernel stops BIRD,
    // its session closes and its path goes.
    let bird_pid = bird_pid(c.lab(), &c.lbs()[2]);
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
    let backend = c.lab().hosts_of(HostRole::Backend)[0].address.to_string();
    let lb1 = c.lbs()[0].clone();
    c.lab().exec(&lb1, "ip", &["route", "add", "blackhole", &format!("{backend}/32")]).unwrap();
    c.wait_next_hops(&[1, 2], Duration::from_secs(10));
    c.wait_metric(&lb1, "fulcrum_bgp_announced", &format!("vip=\"{VIP}\""), 0.0);
    let router = format!("neighbor=\"{}\"", fulcrum_lab::topology::ROUTER_ADDRESS);
    c.wait_metric(&lb1, "fulcrum_bgp_routes_sent", &router, 0.0);
    c.wait_flow_view(&[0, 1, 2], &[1, 2], &[0]);
    assert_eq!(c.requests(30), 30, "flows go to the nodes that can serve");
    c.lab().exec(&lb1, "ip", &["route", "del", "blackhole", &format!("{backend}/32")]).unwrap();
    c.wait_next_hops(&[0, 1, 2], Duration::from_secs(10));

    // SIGTERM: lb2 withdraws first, its session still up, while it still runs and drains.
    c.ecmp.router.skip_bgpd_log();
    c.nodes[1].signal(Signal::SIGTERM).unwrap();
    c.wait_next_hops(&[0, 2], Duration::from_secs(5));
    let lb2 = format!("neighbor {}", c.lbs()[1].address);
    let lb2_down: Vec<String> =
        c.ecmp.router.bgpd_log_since_skip().into_iter().filter(|l| l.contains(&lb2)).collect();
    assert!(
        lb2_down.is_empty(),
        "withdrawn by an update, not by closing the session: {lb2_down:?}"
    );
    assert!(c.nodes[1].running(), "withdrawn before the process ended");
    c.nodes[1].wait(Duration::from_secs(20)).unwrap();

    // lb3's host loses power: no FIN or NOTIFICATION leaves it, and BFD takes the path down.
    let lb3 = c.lbs()[2].clone();
    c.ecmp.router.skip_bgpd_log();
    let Announcing(FulcrumEcmp { ecmp, nodes, .. }) = &mut c;
    ecmp.lab.crash(&lb3, &mut nodes[2]).unwrap();
    c.wait_next_hops(&[0], Duration::from_secs(5));
    c.wait_flow_view(&[0], &[0], &[]);
    let neighbor = format!("neighbor {}", lb3.address);
    let down = c.ecmp.router.wait_bgpd_log(
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
    assert!(batch.per_node[0] > 0, "lb1 holds some: {:?}", batch.per_node);
    c.fail_health_checks(0, true).unwrap();
    c.wait_next_hops(&[1, 2], Duration::from_secs(10));
    c.wait_flow_view(&[0, 1, 2], &[1, 2], &[0]);
    open(&batch, "lb1's withdrawal");
    assert_unbroken(batch, "lb1 withdrawn by its health checks");

    // They pass again: lb1 takes its buckets back from the nodes that held them meanwhile.
    let batch = c.long_connections(echoes, downloads, RETURN_SECS);
    c.fail_health_checks(0, false).unwrap();
    c.wait_next_hops(&[0, 1, 2], Duration::from_secs(15));
    c.wait_flow_view(&[0, 1, 2], &[0, 1, 2], &[]);
    open(&batch, "lb1's return");
    assert_unbroken(batch, "lb1 announcing again");

    // An operator drains lb2, then lifts the drain. While it drains, it takes no new
    // connection: what the others hand it belongs to the connections it holds.
    let all: Vec<&Host> = c.lbs().iter().collect();
    let lb2 = node_id(&c.lbs()[1]).to_string();
    let batch = c.long_connections(echoes, downloads, SECS);
    assert!(batch.per_node[1] > 0, "lb2 holds some: {:?}", batch.per_node);
    let drained = c.lab().fulcrumctl_ok(&c.ecmp.client, &all, &["drain", &lb2]).unwrap().stdout;
    assert!(drained.contains("withdrawn"), "{drained}");
    c.wait_next_hops(&[0, 2], Duration::from_secs(10));
    c.wait_flow_view(&[0, 1, 2], &[0, 2], &[1]);
    // The counters in /metrics are read every second: the baseline must postdate the drain,
    // or packets handed to lb2 as first hop before it would count.
    std::thread::sleep(Duration::from_millis(1_200));
    let handed_before = c.handed_to(1).unwrap();
    let shown = c.lab().fulcrumctl_ok(&c.ecmp.client, &all, &["status"]).unwrap().stdout;
    assert!(shown.contains("announcing 0/1, sessions 1/1 up, drained"), "{shown}");
    open(&batch, "lb2's drain");
    assert_unbroken(batch, "lb2 drained by fulcrumctl");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while c.handed_to(1).unwrap() <= handed_before {
        assert!(
            std::time::Instant::now() < deadline,
            "the others handed lb2 the packets of its connections while it drained"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let batch = c.long_connections(echoes, downloads, RETURN_SECS);
    c.lab().fulcrumctl_ok(&c.ecmp.client, &all, &["drain", &lb2, "--lift"]).unwrap();
    c.wait_next_hops(&[0, 1, 2], Duration::from_secs(15));
    c.wait_flow_view(&[0, 1, 2], &[0, 1, 2], &[]);
    open(&batch, "lb2's drain lifted");
    assert_unbroken(batch, "lb2's drain lifted");

    // SIGTERM to lb3: it withdraws, serves what it holds, and stops.
    let batch = c.long_connections(echoes, downloads, SECS);
    assert!(batch.per_node[2] > 0, "lb3 holds some: {:?}", batch.per_node);
    c.nodes[2].signal(Signal::SIGTERM).unwrap();
    c.wait_next_hops(&[0, 1], Duration::from_secs(5));
    open(&batch, "lb3's SIGTERM");
    assert_unbroken(batch, "lb3 stopped by SIGTERM");
    c.nodes[2].wait(Duration::from_secs(20)).unwrap();
    c.wait_flow_view(&[0, 1], &[0, 1], &[]);

    // lb3 starts again: a node added takes buckets whose connections stay where they are.
    let batch = c.long_connections(echoes, downloads, RETURN_SECS);
    c.nodes[2] = c.lab().start_fulcrumd(&c.lbs()[2], &c.node_files[2]).unwrap();
    c.wait_next_hops(&[0, 1, 2], Duration::from_secs(30));
    c.wait_flow_view(&[0, 1, 2], &[0, 1, 2], &[]);
    open(&batch, "lb3's start");
    assert_unbroken(batch, "lb3 added");
}

#[test]
fn a_crashed_host_loses_as_many_connections_as_it_held() {
    let mut c = announcing();
    c.wait_next_hops(&[0, 1, 2], Duration::from_secs(30));
    c.wait_flow_view(&[0, 1, 2], &[0, 1, 2], &[]);
    let batch = c.long_connections(16, 8, 10);
    let held = batch.per_node.clone();
    assert!(held.iter().all(|&n| n > 0), "every node holds some: {held:?}");
    let lb3 = c.lbs()[2].clone();
    let Announcing(FulcrumEcmp { ecmp, nodes, .. }) = &mut c;
    ecmp.lab.crash(&lb3, &mut nodes[2]).unwrap();
    // BFD withdraws it in about 0.3 s once its session is up; on a loaded machine the session
    // may still be coming up, and then the hold time (9 s) does.
    c.wait_next_hops(&[0, 1], Duration::from_secs(15));
    let cut = batch.cut();
    assert_eq!(cut.len(), held[2], "exactly lb3's connections are lost: {cut:?}");
}

#[test]
fn a_rate_limit_holds_across_the_three_nodes_the_router_spreads_its_flows_over() {
    let c = announcing();
    c.wait_next_hops(&[0, 1, 2], Duration::from_secs(30));
    c.wait_flow_view(&[0, 1, 2], &[0, 1, 2], &[]);
    // One client address, every request on a new connection: its flows spread over the nodes.
    const CAPACITY: f64 = 20.0;
    const REFILL: f64 = 20.0;
    c.apply(&c.cluster_file(Some((CAPACITY, REFILL)))).unwrap();

    // Five times the limit's rate, for five seconds.
    let before = c.accepted().unwrap();
    let (admitted, refused, elapsed) = c.ecmp.limited_load(500, Duration::from_millis(10)).unwrap();
    let after = c.accepted().unwrap();
    let share: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert!(share.iter().all(|&n| n > 50.0), "every node takes a good share: {share:?}");
    assert_eq!(admitted + refused, 500, "every request is answered 200 or 429");
    let (admitted, allowed) = (admitted as f64, CAPACITY + REFILL * elapsed.as_secs_f64());
    eprintln!("cluster-wide limit: {admitted} admitted, {allowed:.1} allowed, shares {share:?}");
    // Over: at most a bucket's debt (one capacity) plus what the others admit between two
    // reports; per-node limits would admit about three times `allowed`.
    assert!(
        admitted >= 0.9 * allowed && admitted <= allowed + CAPACITY + 0.1 * allowed,
        "{admitted} admitted, {allowed:.0} allowed by the limit over {elapsed:?}"
    );
}
