//! The lab itself, on real namespaces: hosts reach each other, VRRP's multicast group passes
//! the bridge, the prober measures an outage, and nothing is left behind.
//!
//! These tests need root; without it they fail with a message that says so.

#![allow(clippy::unwrap_used)] // In a test, a panic is the failure report.

use std::collections::BTreeSet;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use fulcrum_lab::netns;
use fulcrum_lab::probe::{ProbeArgs, ProbeTarget};
use fulcrum_lab::process::{self, ProcessRecord};
use fulcrum_lab::topology::{STATE_DIR, Topology};
use fulcrum_lab::{HostRole, Lab};
use socket2::{Domain, Protocol, Socket, Type};

const LAB_BINARY: &str = env!("CARGO_BIN_EXE_fulcrum-lab");
const VRRP_GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
const VRRP_PROTOCOL: i32 = 112;

fn lab(load_balancers: usize, backends: usize) -> Lab {
    Lab::up(&Topology { load_balancers, backends, prefix: None }, LAB_BINARY)
        .unwrap_or_else(|e| panic!("cannot build the lab: {e}"))
}

fn probe_args(target: &str, attempts: u64) -> ProbeArgs {
    ProbeArgs {
        max_attempts: Some(attempts),
        ..ProbeArgs::new(
            target.parse::<ProbeTarget>().unwrap(),
            Duration::from_millis(20),
            Duration::from_secs(5),
        )
    }
}

fn namespaces_with_prefix(prefix: &str) -> Vec<String> {
    netns::list().unwrap().into_iter().filter(|ns| ns.starts_with(&format!("{prefix}-"))).collect()
}

fn root_links() -> BTreeSet<String> {
    netns::ip(&["-o", "link", "show"])
        .unwrap()
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|name| name.trim().to_owned())
        .collect()
}

#[test]
fn hosts_reach_each_other_across_the_bridge() {
    let lab = lab(2, 2);
    let _backends = lab.start_backends().unwrap();
    let client = lab.host("client").unwrap();
    for backend in lab.hosts_of(HostRole::Backend) {
        let target = format!("http://{}/", backend.http_address());
        let report = lab.probe(&client, &probe_args(&target, 5)).unwrap();
        assert_eq!((report.successes, report.failures), (5, 0), "{report:?}");
        assert_eq!(report.answers.get(&backend.name), Some(&5), "{report:?}");
    }

    // A load balancer reaches a backend's echo server…
    let lb1 = lab.host("lb1").unwrap();
    let be2 = lab.host("be2").unwrap();
    let report = lab.probe(&lb1, &probe_args(&format!("tcp://{}", be2.echo_address()), 5)).unwrap();
    assert_eq!(report.successes, 5, "{report:?}");

    // …and another load balancer.
    let lb2 = lab.host("lb2").unwrap();
    let listen = SocketAddrV4::new(lb2.address, 7000);
    let listener = lab.run_in(&lb2, move || TcpListener::bind(listen)).unwrap().unwrap();
    let connected = lab
        .run_in(&lb1, move || TcpStream::connect_timeout(&listen.into(), Duration::from_secs(2)))
        .unwrap()
        .unwrap();
    let (_, peer) = listener.accept().unwrap();
    assert_eq!(peer, connected.local_addr().unwrap());
    assert_eq!(peer.ip(), lb1.address);
}

#[test]
fn multicast_to_the_vrrp_group_passes_between_hosts() {
    let lab = lab(3, 0);
    let (lb1, lb2, lb3) =
        (lab.host("lb1").unwrap(), lab.host("lb2").unwrap(), lab.host("lb3").unwrap());
    let join = |address: Ipv4Addr| {
        move || -> std::io::Result<Socket> {
            let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(VRRP_PROTOCOL)))?;
            socket.join_multicast_v4(&VRRP_GROUP, &address)?;
            socket.set_read_timeout(Some(Duration::from_secs(2)))?;
            Ok(socket)
        }
    };
    let receivers = [
        lab.run_in(&lb2, join(lb2.address)).unwrap().unwrap(),
        lab.run_in(&lb3, join(lb3.address)).unwrap().unwrap(),
    ];
    let payload = b"fulcrum-lab multicast check";
    let source = lb1.address;
    lab.run_in(&lb1, move || -> std::io::Result<()> {
        let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(VRRP_PROTOCOL)))?;
        socket.set_multicast_if_v4(&source)?;
        socket.set_multicast_ttl_v4(255)?;
        socket.set_multicast_loop_v4(false)?;
        socket.send_to(payload, &SocketAddrV4::new(VRRP_GROUP, 0).into())?;
        Ok(())
    })
    .unwrap()
    .unwrap();

    for mut receiver in receivers {
        let mut packet = [0u8; 1500];
        let n = receiver.read(&mut packet).expect("the advert-sized packet arrives within 2 s");
        let header_len = usize::from(packet[0] & 0x0f) * 4;
        assert_eq!(packet[8], 255, "TTL must survive the bridge unchanged (VRRP requires 255)");
        assert_eq!(i32::from(packet[9]), VRRP_PROTOCOL);
        assert_eq!(Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]), source);
        assert_eq!(Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]), VRRP_GROUP);
        assert_eq!(&packet[header_len..n], payload);
    }
}

#[test]
fn prober_reports_an_outage_while_a_backend_is_gone() {
    let lab = lab(1, 1);
    let be1 = lab.host("be1").unwrap();
    let client = lab.host("client").unwrap();
    let mut backend = lab.start_backend(&be1).unwrap();
    let args = ProbeArgs::new(
        ProbeTarget::Http { address: be1.http_address(), path: "/".into() },
        Duration::from_millis(10),
        Duration::from_secs(3),
    );
    let probe = lab.start_probe(&client, &args).unwrap();

    // Pacing, not waiting for an event: let some requests succeed, then make a gap.
    std::thread::sleep(Duration::from_millis(300));
    backend.stop().unwrap();
    let stopped = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    let _restarted = lab.start_backend(&be1).unwrap();
    let gap = stopped.elapsed();

    let report = probe.finish().unwrap();
    assert!(report.successes > 0 && report.failures > 0, "{report:?}");
    assert_eq!(report.outages, 1, "{report:?}");
    // The prober sends one request at a time, so the stop can catch at most one in flight;
    // every other failure is a refused connection while nothing listens.
    let cut_in_flight: u64 = report
        .failure_kinds
        .iter()
        .filter(|(kind, _)| !kind.starts_with("connect"))
        .map(|(_, count)| count)
        .sum();
    assert!(cut_in_flight <= 1, "{report:?}");
    // The outage covers the gap (less the prober's own resolution) and not the whole run.
    let outage = Duration::from_millis(report.longest_outage_ms);
    assert!(
        outage + Duration::from_millis(100) >= gap,
        "outage {outage:?} < gap {gap:?}: {report:?}"
    );
    assert!(outage < Duration::from_millis(report.elapsed_ms), "{report:?}");
    assert_eq!(report.answers.keys().collect::<Vec<_>>(), ["be1"]);
}

fn recorded_processes(prefix: &str) -> Vec<ProcessRecord> {
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{STATE_DIR}/{prefix}.json")).unwrap())
            .unwrap();
    serde_json::from_value(state["processes"].clone()).unwrap()
}

#[test]
fn up_then_down_leaves_nothing_behind() {
    let links_before = root_links();
    let prefix = format!("fd{:x}", std::process::id());
    let up = Command::new(LAB_BINARY)
        .args(["up", "--load-balancers", "3", "--backends", "2", "--prefix", &prefix])
        .output()
        .unwrap();
    assert!(up.status.success(), "up failed: {}", String::from_utf8_lossy(&up.stderr));
    assert_eq!(namespaces_with_prefix(&prefix).len(), 7, "3 lbs, 2 backends, client, switch");
    let processes = recorded_processes(&prefix);
    assert_eq!(processes.len(), 2);
    assert!(processes.iter().all(process::is_running), "{processes:?}");

    let down = Command::new(LAB_BINARY).args(["down", "--prefix", &prefix]).output().unwrap();
    assert!(down.status.success(), "down failed: {}", String::from_utf8_lossy(&down.stderr));
    assert_eq!(namespaces_with_prefix(&prefix), Vec::<String>::new());
    assert_eq!(root_links(), links_before, "the lab must never touch the root namespace's links");
    assert!(!processes.iter().any(process::is_running), "{processes:?}");
    assert!(!std::path::Path::new(&format!("{STATE_DIR}/{prefix}.json")).exists());
    assert!(!std::path::Path::new(&format!("{STATE_DIR}/{prefix}")).exists());
}

#[test]
fn the_guard_tears_down_when_a_test_panics() {
    let (sender, receiver) = std::sync::mpsc::channel();
    let outcome = std::panic::catch_unwind(move || {
        let lab = lab(1, 1);
        let backends = lab.start_backends().unwrap();
        let records: Vec<ProcessRecord> = backends.iter().map(|b| b.record().clone()).collect();
        sender.send((lab.prefix(), records)).unwrap();
        panic!("a failing test");
    });
    assert!(outcome.is_err());
    let (prefix, records) = receiver.recv().unwrap();
    assert_eq!(namespaces_with_prefix(&prefix), Vec::<String>::new());
    assert!(!records.iter().any(process::is_running), "{records:?}");
    assert!(!std::path::Path::new(&format!("{STATE_DIR}/{prefix}.json")).exists());
}
