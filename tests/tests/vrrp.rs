//! VRRP on real namespaces with real `fulcrumd` processes, and keepalived in the same virtual
//! router: election, crash and graceful handover, preemption, unicast mode, two VRIDs, and
//! malformed advertisements from the client host.
//!
//! A crash is SIGKILL plus the host's link going down, as when a machine loses power: a
//! daemon that is merely killed leaves its VIP configured, and the kernel would go on
//! answering ARP for it. A host "reboots" by losing that address and coming back on the link.
//!
//! These tests need root; without it they fail with a message that says so.

#![allow(clippy::unwrap_used)] // In a test, a panic is the failure report.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fulcrum_lab::probe::{ProbeArgs, ProbeReport, ProbeTarget};
use fulcrum_lab::process::LabProcess;
use fulcrum_lab::routers::{Implementation, Instance, fulcrumd_status, holds, packet_sockets};
use fulcrum_lab::topology::{BACKEND_HTTP_PORT, vip, vip_v6};
use fulcrum_lab::{Host, HostRole, Lab, Topology};
use fulcrum_vrrp::wire::{Advertisement, ChecksumForm, Family, Packet, Version};

const LAB_BINARY: &str = env!("CARGO_BIN_EXE_fulcrum-lab");
const INTERVAL: Duration = Duration::from_millis(100);
const SETTLE: Duration = Duration::from_secs(10);

/// A lab of load balancers, each answering HTTP on the first two VIPs and the first IPv6 VIP
/// with its own name (if it holds them), and the client that probes them.
struct Cluster {
    lab: Lab,
    lbs: Vec<Host>,
    client: Host,
    _responders: Vec<LabProcess>,
}

fn cluster(load_balancers: usize) -> Cluster {
    let lab = Lab::up(&Topology { load_balancers, backends: 0, prefix: None }, LAB_BINARY)
        .unwrap_or_else(|e| panic!("cannot build the lab: {e}"));
    let lbs = lab.hosts_of(HostRole::LoadBalancer);
    let mut responders = Vec::new();
    for lb in &lbs {
        for address in [vip(1).into(), vip(2).into(), IpAddr::V6(vip_v6(1))] {
            let address = SocketAddr::from((address, BACKEND_HTTP_PORT));
            responders.push(lab.start_vip_responder(lb, address).unwrap());
        }
    }
    let client = lab.host("client").unwrap();
    Cluster { lab, lbs, client, _responders: responders }
}

impl Cluster {
    fn start(
        &self,
        lb: usize,
        implementation: Implementation,
        instances: &[Instance],
    ) -> LabProcess {
        self.lab.start_router(&self.lbs[lb], implementation, instances).unwrap()
    }

    fn wait_for_holder(&self, lb: usize, vip: impl Into<IpAddr> + Copy) {
        self.lab.wait_for_holder(&self.lbs, &self.lbs[lb], vip, SETTLE).unwrap();
    }

    fn crash(&self, lb: usize, router: &mut LabProcess) {
        self.lab.crash(&self.lbs[lb], router).unwrap();
    }

    fn reboot(&self, lb: usize, vips: &[Ipv4Addr]) {
        self.lab.reboot(&self.lbs[lb], vips).unwrap();
    }

    fn start_probe(
        &self,
        vip: impl Into<IpAddr>,
        duration: Duration,
    ) -> fulcrum_lab::topology::RunningProbe {
        let target = ProbeTarget::Http {
            address: SocketAddr::from((vip.into(), BACKEND_HTTP_PORT)),
            path: "/".into(),
        };
        let mut args = ProbeArgs::new(target, Duration::from_millis(10), duration);
        args.timeout = Duration::from_millis(200);
        self.lab.start_probe(&self.client, &args).unwrap()
    }

    fn probe(&self, vip: impl Into<IpAddr>, attempts: u64) -> ProbeReport {
        let target = ProbeTarget::Http {
            address: SocketAddr::from((vip.into(), BACKEND_HTTP_PORT)),
            path: "/".into(),
        };
        let mut args = ProbeArgs::new(target, Duration::from_millis(10), Duration::from_secs(5));
        args.max_attempts = Some(attempts);
        self.lab.probe(&self.client, &args).unwrap()
    }

    fn client_arp_entry(&self, vip: impl Into<IpAddr>) -> Option<String> {
        self.lab.arp_entry(&self.client, vip).unwrap()
    }

    fn mac(&self, lb: usize) -> String {
        self.lab.mac(&self.lbs[lb]).unwrap()
    }
}

fn instance<A: Into<IpAddr> + Copy>(vrid: u8, priority: u8, vips: &[A]) -> Instance {
    Instance::new(vrid, priority, INTERVAL, vips)
}

/// RFC 9568's Master_Down_Interval for a backup of `priority` at [`INTERVAL`].
fn master_down_interval(priority: u8) -> Duration {
    INTERVAL * 3 + INTERVAL * (256 - u32::from(priority)) / 256
}

/// fulcrumd on lb1, lb2 and lb3 with priorities 150, 120 and 100 for VRID 51 and the first VIP.
fn three_fulcrumds(cluster: &Cluster) -> Vec<LabProcess> {
    [150, 120, 100]
        .iter()
        .enumerate()
        .map(|(lb, &priority)| {
            cluster.start(lb, Implementation::Fulcrumd, &[instance(51, priority, &[vip(1)])])
        })
        .collect()
}

#[test]
fn three_nodes_elect_the_highest_and_the_client_reaches_it() {
    let cluster = cluster(3);
    let _routers = three_fulcrumds(&cluster);

    cluster.wait_for_holder(0, vip(1));
    let report = cluster.probe(vip(1), 10);
    assert_eq!(report.answers.get("lb1"), Some(&10), "{report}");
    assert_eq!(cluster.client_arp_entry(vip(1)), Some(cluster.mac(0)));
    // Still exactly one holder after many advertisement intervals.
    std::thread::sleep(INTERVAL * 10);
    assert_eq!(cluster.lab.holders(&cluster.lbs, vip(1)).unwrap(), ["lb1"]);
    // The announcer's packet socket listens to no ethertype, so no frame of the link is
    // queued for it (a socket of every ethertype would hold a copy of each, unread).
    for lb in &cluster.lbs {
        let sockets = packet_sockets(lb).unwrap();
        assert!(!sockets.is_empty(), "{}: no packet socket", lb.name);
        assert!(
            sockets.iter().all(|(proto, queued)| proto == "0000" && *queued == 0),
            "{}: {sockets:?}",
            lb.name
        );
    }
}

#[test]
fn a_crashed_master_is_replaced_by_the_next_priority_and_the_client_follows() {
    let cluster = cluster(3);
    let mut routers = three_fulcrumds(&cluster);
    cluster.wait_for_holder(0, vip(1));
    assert_eq!(cluster.probe(vip(1), 3).answers.get("lb1"), Some(&3));

    let probe = cluster.start_probe(vip(1), Duration::from_secs(3));
    std::thread::sleep(Duration::from_millis(500));
    cluster.crash(0, &mut routers[0]);
    cluster.wait_for_holder(1, vip(1));
    let report = probe.finish().unwrap();

    assert_eq!(report.switches.len(), 1, "{report}");
    assert_eq!((report.switches[0].from.as_str(), report.switches[0].to.as_str()), ("lb1", "lb2"));
    assert!(report.outages >= 1 && report.longest_outage_ms > 0, "no outage reported: {report}");
    assert_eq!(cluster.client_arp_entry(vip(1)), Some(cluster.mac(1)));
    assert!(!holds(&cluster.lbs[2], vip(1)).unwrap());
}

/// The longest outage the client sees while `disrupt` takes lb1 (priority 150) out and lb2
/// (120) takes over.
fn outage_while(cluster: &Cluster, disrupt: impl FnOnce()) -> Duration {
    let probe = cluster.start_probe(vip(1), Duration::from_secs(3));
    std::thread::sleep(Duration::from_millis(500));
    disrupt();
    cluster.wait_for_holder(1, vip(1));
    let report = probe.finish().unwrap();
    assert_eq!(report.answers.keys().collect::<Vec<_>>(), ["lb1", "lb2"], "{report}");
    Duration::from_millis(report.longest_outage_ms)
}

/// Waits until `router` logs taking VRID 51's VIPs over for `cause` (a `fulcrum_vrrp::Takeover`, as
/// fulcrumd logs it); fails the test if it took over for another reason first.
fn wait_for_takeover(router: &mut LabProcess, cause: &str) {
    let line = router
        .wait_for("a takeover", |line| line.contains(r#""takeover":"Some("#), SETTLE)
        .unwrap();
    let expected = format!(r#""takeover":"Some({cause})""#);
    assert!(line.contains(&expected), "took over otherwise: {line}");
}

#[test]
fn a_stopped_master_resigns_so_the_backup_takes_over_without_waiting_for_silence() {
    let cluster = cluster(2);
    let vips = [vip(1)];
    let high = [instance(51, 150, &vips)];
    // The backup starts once the master holds the VIP, so it never took over before.
    let mut master = cluster.start(0, Implementation::Fulcrumd, &high);
    cluster.wait_for_holder(0, vip(1));
    let mut backup = cluster.start(1, Implementation::Fulcrumd, &[instance(51, 120, &vips)]);

    // A SIGTERM'd master advertises priority 0: the backup waits only Skew_Time (the
    // machine's unit tests pin the timer), not Master_Down_Interval.
    let graceful = outage_while(&cluster, || {
        master.signal(nix::sys::signal::Signal::SIGTERM).unwrap();
    });
    wait_for_takeover(&mut backup, "MasterResigned");
    assert!(master.wait(Duration::from_secs(5)).unwrap().success());
    assert!(!holds(&cluster.lbs[0], vip(1)).unwrap(), "a stopped master keeps its VIP");

    // The master returns, preempts, and then crashes: silence, so Master_Down_Interval.
    let mut master = cluster.start(0, Implementation::Fulcrumd, &high);
    cluster.wait_for_holder(0, vip(1));
    let crash = outage_while(&cluster, || cluster.crash(0, &mut master));
    wait_for_takeover(&mut backup, "MasterSilent");
    eprintln!("outage: graceful {graceful:?}, crash {crash:?}");
}

#[test]
fn a_returning_master_preempts_after_its_delay_and_not_at_all_without_preemption() {
    let cluster = cluster(2);
    let vips = [vip(1)];
    let _backup = cluster.start(1, Implementation::Fulcrumd, &[instance(51, 120, &vips)]);
    let mut master = cluster.start(0, Implementation::Fulcrumd, &[instance(51, 150, &vips)]);
    cluster.wait_for_holder(0, vip(1));
    cluster.crash(0, &mut master);
    cluster.wait_for_holder(1, vip(1));

    // Without preemption the returning node stays backup.
    cluster.reboot(0, &vips);
    let mut patient = instance(51, 150, &vips);
    patient.preempt = false;
    let mut master = cluster.start(0, Implementation::Fulcrumd, &[patient]);
    std::thread::sleep(master_down_interval(150) * 5);
    assert_eq!(cluster.lab.holders(&cluster.lbs, vip(1)).unwrap(), ["lb2"]);
    cluster.crash(0, &mut master);

    // With preemption it takes the VIP back, but not before its preempt delay, counted from
    // its start as a backup: both moments as fulcrumd logged them, so neither the process's
    // start-up nor the test's polling is counted.
    cluster.reboot(0, &vips);
    let mut eager = instance(51, 150, &vips);
    eager.preempt_delay = Duration::from_secs(1);
    let mut master = cluster.start(0, Implementation::Fulcrumd, &[eager]);
    cluster.wait_for_holder(0, vip(1));
    wait_for_takeover(&mut master, "MasterSilent");
    let logged = |to: &str| {
        let line = master.output().iter().find(|l| l.contains(&format!(r#""to":"{to}""#))).cloned();
        let line = line.unwrap_or_else(|| panic!("no change to {to} logged"));
        serde_json::from_str::<serde_json::Value>(&line).unwrap()["timestamp"]
            .as_str()
            .map(|t| humantime::parse_rfc3339(t).unwrap())
            .unwrap()
    };
    let waited = logged("Master").duration_since(logged("Backup")).unwrap();
    assert!(waited >= Duration::from_secs(1), "preempted {waited:?} after starting");
    assert_eq!(cluster.probe(vip(1), 5).answers.get("lb1"), Some(&5));
    assert_eq!(cluster.client_arp_entry(vip(1)), Some(cluster.mac(0)));
}

#[test]
fn unicast_peers_elect_and_fail_over_with_multicast_dropped_on_the_bridge() {
    let cluster = cluster(2);
    let switch = cluster.lab.switch_namespace();
    let rules = "table bridge lab_vrrp {
        chain forward {
            type filter hook forward priority 0;
            ip daddr 224.0.0.18 counter drop
            ip protocol 112 counter
        }
    }";
    let rules_file = cluster.lab.log_dir().join("unicast.nft");
    std::fs::write(&rules_file, rules).unwrap();
    fulcrum_lab::netns::exec(&switch, "nft", &["-f", &rules_file.display().to_string()])
        .unwrap_or_else(|e| panic!("cannot load nftables rules (is nftables installed?): {e}"));

    let vips = [vip(1)];
    let addresses: Vec<Ipv4Addr> = cluster.lbs.iter().map(|lb| lb.address).collect();
    let unicast = |priority: u8, me: usize| {
        let mut instance = instance(51, priority, &vips);
        instance.unicast_peers =
            addresses.iter().copied().filter(|a| *a != addresses[me]).collect();
        instance
    };
    let mut master = cluster.start(0, Implementation::Fulcrumd, &[unicast(150, 0)]);
    let _backup = cluster.start(1, Implementation::Fulcrumd, &[unicast(120, 1)]);
    cluster.wait_for_holder(0, vip(1));
    std::thread::sleep(master_down_interval(120) * 3);
    assert_eq!(cluster.lab.holders(&cluster.lbs, vip(1)).unwrap(), ["lb1"], "backup took over");
    assert_eq!(cluster.probe(vip(1), 5).answers.get("lb1"), Some(&5));

    cluster.crash(0, &mut master);
    cluster.wait_for_holder(1, vip(1));
    assert_eq!(cluster.client_arp_entry(vip(1)), Some(cluster.mac(1)));

    let counters =
        fulcrum_lab::netns::exec(&switch, "nft", &["list", "table", "bridge", "lab_vrrp"]).unwrap();
    let packets = |rule: &str| -> u64 {
        counters
            .lines()
            .find(|line| line.contains(rule))
            .and_then(|line| line.split_whitespace().skip_while(|w| *w != "packets").nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no counter for {rule:?} in\n{counters}"))
    };
    assert!(packets("ip protocol") > 5, "adverts did not cross the bridge by unicast:\n{counters}");
    assert_eq!(packets("224.0.0.18"), 0, "adverts were sent to the group:\n{counters}");
}

#[test]
fn two_vrids_elect_two_different_masters() {
    let cluster = cluster(2);
    let (first, second) = ([vip(1)], [vip(2)]);
    let _lb1 = cluster.start(
        0,
        Implementation::Fulcrumd,
        &[instance(51, 150, &first), instance(52, 100, &second)],
    );
    let _lb2 = cluster.start(
        1,
        Implementation::Fulcrumd,
        &[instance(51, 100, &first), instance(52, 150, &second)],
    );

    cluster.wait_for_holder(0, vip(1));
    cluster.wait_for_holder(1, vip(2));
    assert_eq!(cluster.probe(vip(1), 5).answers.get("lb1"), Some(&5));
    assert_eq!(cluster.probe(vip(2), 5).answers.get("lb2"), Some(&5));
}

/// Samples who holds a VIP among the hosts on the link, every 20 ms, and keeps the longest
/// time two or more held it at once.
struct OverlapWatch {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Duration>,
}

impl OverlapWatch {
    fn start(cluster: &Cluster, vip: IpAddr) -> OverlapWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let hosts = cluster.lbs.clone();
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut longest = Duration::ZERO;
            let mut since: Option<Instant> = None;
            // Bounded: at most five minutes of samples.
            let limit = Instant::now() + Duration::from_secs(300);
            while !flag.load(Ordering::Relaxed) && Instant::now() < limit {
                let holders = hosts.iter().filter(|host| holds(host, vip).unwrap()).count();
                match (holders > 1, since) {
                    (true, None) => since = Some(Instant::now()),
                    (false, Some(start)) => {
                        longest = longest.max(start.elapsed());
                        since = None;
                    }
                    _ => {}
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            longest.max(since.map_or(Duration::ZERO, |start| start.elapsed()))
        });
        OverlapWatch { stop, thread }
    }

    fn finish(self) -> Duration {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// One fulcrumd and one keepalived in one VRID for `vip` (and so its family): `high` has
/// priority 150, the other 120. They elect `high`, hand over on SIGTERM and on a crash, and the
/// VIP is never held twice for longer than one Master_Down_Interval.
fn interop(high: Implementation, low: Implementation, vip: IpAddr) {
    let cluster = cluster(2);
    let vips = [vip];
    let watch = OverlapWatch::start(&cluster, vip);
    let _backup = cluster.start(1, low, &[instance(51, 120, &vips)]);
    let mut master = cluster.start(0, high, &[instance(51, 150, &vips)]);
    cluster.wait_for_holder(0, vip);
    assert_eq!(cluster.probe(vip, 5).answers.get("lb1"), Some(&5));
    assert_eq!(cluster.client_arp_entry(vip), Some(cluster.mac(0)));

    master.signal(nix::sys::signal::Signal::SIGTERM).unwrap();
    cluster.wait_for_holder(1, vip);
    master.wait(Duration::from_secs(10)).unwrap();
    assert_eq!(cluster.probe(vip, 5).answers.get("lb2"), Some(&5));

    let mut master = cluster.start(0, high, &[instance(51, 150, &vips)]);
    cluster.wait_for_holder(0, vip);
    assert_eq!(cluster.probe(vip, 5).answers.get("lb1"), Some(&5));

    cluster.crash(0, &mut master);
    cluster.wait_for_holder(1, vip);
    assert_eq!(cluster.probe(vip, 5).answers.get("lb2"), Some(&5));
    assert_eq!(cluster.client_arp_entry(vip), Some(cluster.mac(1)));

    let overlap = watch.finish();
    assert!(
        overlap <= master_down_interval(120),
        "both held {} for {overlap:?}, more than one Master_Down_Interval",
        vip
    );
}

#[test]
fn fulcrumd_master_and_keepalived_backup_interoperate() {
    interop(Implementation::Fulcrumd, Implementation::Keepalived, vip(1).into());
}

#[test]
fn keepalived_master_and_fulcrumd_backup_interoperate() {
    interop(Implementation::Keepalived, Implementation::Fulcrumd, vip(1).into());
}

#[test]
fn over_ipv6_fulcrumd_master_and_keepalived_backup_interoperate() {
    interop(Implementation::Fulcrumd, Implementation::Keepalived, vip_v6(1).into());
}

#[test]
fn over_ipv6_keepalived_master_and_fulcrumd_backup_interoperate() {
    interop(Implementation::Keepalived, Implementation::Fulcrumd, vip_v6(1).into());
}

#[test]
fn a_dual_stack_vrid_moves_both_addresses_together_on_every_failover() {
    let cluster = cluster(3);
    let vips: [IpAddr; 2] = [vip(1).into(), vip_v6(1).into()];
    let mut routers: Vec<LabProcess> = [150, 120, 100]
        .iter()
        .enumerate()
        .map(|(lb, &priority)| {
            cluster.start(lb, Implementation::Fulcrumd, &[instance(51, priority, &vips)])
        })
        .collect();
    let both_on = |lb: usize| {
        for vip in vips {
            cluster.wait_for_holder(lb, vip);
            let name = cluster.lbs[lb].name.clone();
            assert_eq!(cluster.probe(vip, 3).answers.get(&name), Some(&3), "{vip} on {name}");
        }
    };
    both_on(0);

    // A crash: lb2's IPv4 router takes over, and its IPv6 router follows it.
    cluster.crash(0, &mut routers[0]);
    both_on(1);
    let line = routers[1]
        .wait_for(
            "its IPv6 router following",
            |l| l.contains(r#""takeover":"Some(Leader)""#),
            SETTLE,
        )
        .unwrap();
    assert!(line.contains(r#""to":"Master""#), "{line}");

    // A planned stop: lb2 resigns both, lb3 takes both.
    routers[1].signal(nix::sys::signal::Signal::SIGTERM).unwrap();
    both_on(2);
}

/// Wireshark's fields for what the IPv6 test checks of each captured packet.
const DECODED_FIELDS: [&str; 11] = [
    "eth.src",
    "ipv6.src",
    "ipv6.dst",
    "ipv6.hlim",
    "vrrp.version",
    "vrrp.prio",
    "vrrp.checksum.status",
    "icmpv6.nd.na.target_address",
    "icmpv6.nd.na.flag.o",
    "icmpv6.checksum.status",
    "_ws.expert.severity",
];

#[test]
fn over_ipv6_three_nodes_elect_and_fail_over_with_adverts_and_neighbor_advertisements_wireshark_reads()
 {
    let cluster = cluster(3);
    let vip = vip_v6(1);
    let capture = cluster.lab.capture(&cluster.client, "vrrp6", "ip6 proto 112 or icmp6").unwrap();
    let mut routers: Vec<LabProcess> = [150, 120, 100]
        .iter()
        .enumerate()
        .map(|(lb, &priority)| {
            cluster.start(lb, Implementation::Fulcrumd, &[instance(51, priority, &[vip])])
        })
        .collect();
    cluster.wait_for_holder(0, vip);
    let report = cluster.probe(vip, 10);
    assert_eq!(report.answers.get("lb1"), Some(&10), "{report}");
    assert_eq!(cluster.client_arp_entry(vip), Some(cluster.mac(0)));

    // The master crashes: the next takes over and its Neighbor Advertisement moves the client.
    let probe = cluster.start_probe(vip, Duration::from_secs(3));
    std::thread::sleep(Duration::from_millis(500));
    cluster.crash(0, &mut routers[0]);
    cluster.wait_for_holder(1, vip);
    let report = probe.finish().unwrap();
    assert_eq!(report.switches.len(), 1, "{report}");
    assert_eq!((report.switches[0].from.as_str(), report.switches[0].to.as_str()), ("lb1", "lb2"));
    assert_eq!(cluster.client_arp_entry(vip), Some(cluster.mac(1)));
    assert!(!holds(&cluster.lbs[2], vip).unwrap());

    // The unsolicited advertisements, to all nodes, are fulcrumd's; the kernel answers the
    // client's solicitations itself.
    let packets = capture
        .finish("vrrp || (icmpv6.type == 136 && ipv6.dst == ff02::1)", &DECODED_FIELDS)
        .unwrap();
    let field = |packet: &[String], name: &str| {
        let at = DECODED_FIELDS.iter().position(|f| *f == name).unwrap();
        packet.get(at).cloned().unwrap_or_default()
    };
    let macs: Vec<String> = (0..3).map(|lb| cluster.mac(lb)).collect();
    let from = |lb: usize| {
        let mac = &macs[lb];
        packets.iter().filter(move |p| field(p, "eth.src") == *mac)
    };
    let adverts = |lb: usize| from(lb).filter(|p| !field(p, "vrrp.version").is_empty()).count();
    let announcements = |lb: usize| {
        from(lb).filter(|p| field(p, "icmpv6.nd.na.target_address") == vip.to_string()).count()
    };
    assert!(adverts(0) >= 5 && adverts(1) >= 1, "adverts from lb1 and lb2: {packets:?}");
    assert!(announcements(0) >= 1 && announcements(1) >= 1, "NAs from lb1 and lb2: {packets:?}");
    for packet in &packets {
        // Adverts from the link-local address to ff02::12, NAs from the VIP to all nodes;
        // both with hop limit 255. Checksum status 1 is Wireshark's "good".
        let (src, dst) = (field(packet, "ipv6.src"), field(packet, "ipv6.dst"));
        assert_eq!(field(packet, "ipv6.hlim"), "255", "{packet:?}");
        if field(packet, "vrrp.version").is_empty() {
            assert_eq!(
                (src.as_str(), dst.as_str()),
                (vip.to_string().as_str(), "ff02::1"),
                "{packet:?}"
            );
            assert_eq!(field(packet, "icmpv6.nd.na.flag.o"), "1", "{packet:?}");
            assert_eq!(field(packet, "icmpv6.checksum.status"), "1", "{packet:?}");
        } else {
            assert!(src.starts_with("fe80::") && dst == "ff02::12", "{packet:?}");
            assert_eq!(field(packet, "vrrp.version"), "3", "{packet:?}");
            assert_eq!(field(packet, "vrrp.checksum.status"), "1", "{packet:?}");
        }
        // No expert info of any severity: no malformed packet, no checksum warning.
        assert_eq!(field(packet, "_ws.expert.severity"), "", "{packet:?}");
    }
}

/// Sends `message` from the client to the VRRP group with `ttl`.
fn inject(cluster: &Cluster, message: Vec<u8>, ttl: u32) {
    cluster.lab.send_to_vrrp_group(&cluster.client, message, ttl).unwrap();
}

#[test]
fn malformed_advertisements_change_nothing_and_are_counted() {
    let cluster = cluster(2);
    let vips = [vip(1)];
    let mut master = cluster.start(0, Implementation::Fulcrumd, &[instance(51, 150, &vips)]);
    let mut backup = cluster.start(1, Implementation::Fulcrumd, &[instance(51, 120, &vips)]);
    cluster.wait_for_holder(0, vip(1));
    let before = fulcrumd_status(&mut backup).unwrap();

    // Each would make the client master of VRID 51 at priority 254, were it accepted.
    let (source, group) = (cluster.client.address.into(), Family::Ipv4.multicast_group());
    let good = || {
        let advertisement = Advertisement {
            vrid: 51,
            priority: 254,
            max_advert_interval_cs: 10,
            addresses: vips.iter().map(|vip| (*vip).into()).collect(),
        };
        let mut packet = Packet::new_unchecked(vec![0; advertisement.buffer_len()], Family::Ipv4);
        advertisement.emit(&mut packet, source, group, ChecksumForm::PseudoHeader).unwrap();
        packet
    };
    let mut bad_checksum = good();
    bad_checksum.set_checksum(bad_checksum.checksum() ^ 0x5a5a);
    let mut wrong_version = good();
    wrong_version.set_version(Version::V2);
    wrong_version.fill_checksum(source, group, ChecksumForm::PseudoHeader).unwrap();
    let truncated = good().into_inner()[..6].to_vec();
    let mut count_mismatch = good();
    count_mismatch.set_address_count(0);
    count_mismatch.fill_checksum(source, group, ChecksumForm::PseudoHeader).unwrap();
    let rounds = 3;
    for _ in 0..rounds {
        inject(&cluster, bad_checksum.clone().into_inner(), 255);
        inject(&cluster, good().into_inner(), 64);
        inject(&cluster, wrong_version.clone().into_inner(), 255);
        inject(&cluster, truncated.clone(), 255);
        inject(&cluster, count_mismatch.clone().into_inner(), 255);
    }

    let reasons = ["bad_checksum", "ttl_not_255", "wrong_version", "truncated", "bad_length"];
    for (router, name) in [(&mut master, "master"), (&mut backup, "backup")] {
        // Await the drops being counted (bounded), then check each reason exactly.
        let deadline = Instant::now() + SETTLE;
        let status = loop {
            let status = fulcrumd_status(router).unwrap();
            let counted: u64 =
                reasons.iter().map(|r| status["links"][0]["drops"][r].as_u64().unwrap_or(0)).sum();
            if counted >= rounds * 5 || Instant::now() > deadline {
                break status;
            }
        };
        let drops = &status["links"][0]["drops"];
        for reason in reasons {
            assert_eq!(drops[reason].as_u64(), Some(rounds), "{name}: {reason} in {status}");
        }
        assert_eq!(status["instances"][0]["master"], "198.18.0.11", "{name}: {status}");
    }
    assert_eq!(cluster.lab.holders(&cluster.lbs, vip(1)).unwrap(), ["lb1"]);
    let after = fulcrumd_status(&mut backup).unwrap();
    assert_eq!(after["instances"][0]["transitions"], before["instances"][0]["transitions"]);
    assert_eq!(after["instances"][0]["state"], "backup");
}

/// Removes a lab made by `fulcrum-lab up` when dropped, also when the test fails.
struct LabLeftUp(String);

impl Drop for LabLeftUp {
    fn drop(&mut self) {
        let down =
            std::process::Command::new(LAB_BINARY).args(["down", "--prefix", &self.0]).output();
        if !down.is_ok_and(|out| out.status.success()) {
            eprintln!("cannot remove lab {}: run fulcrum-lab down --all", self.0);
        }
    }
}

#[test]
fn fulcrumd_left_running_by_lab_up_keeps_electing_after_the_command_exits() {
    // Once `up` exits nobody reads the routers' output: they must go on regardless.
    let prefix = format!("fv{:x}", std::process::id());
    let up = std::process::Command::new(LAB_BINARY)
        .args(["up", "--load-balancers", "3", "--backends", "2", "--cluster", "--prefix", &prefix])
        .output()
        .unwrap();
    let _lab = LabLeftUp(prefix.clone());
    assert!(up.status.success(), "up failed: {}", String::from_utf8_lossy(&up.stderr));
    let lbs: Vec<Host> = (1..=3)
        .map(|n| Host {
            name: format!("lb{n}"),
            namespace: format!("{prefix}-lb{n}"),
            address: Ipv4Addr::new(198, 18, 0, 10 + n),
            role: HostRole::LoadBalancer,
        })
        .collect();
    let holders = || -> Vec<&str> {
        lbs.iter().filter(|lb| holds(lb, vip(1)).unwrap()).map(|lb| lb.name.as_str()).collect()
    };
    let deadline = Instant::now() + SETTLE;
    while holders() != ["lb1"] && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for _ in 0..10 {
        assert_eq!(holders(), ["lb1"]);
        std::thread::sleep(INTERVAL * 2);
    }
}

/// A child killed and reaped when dropped, also when the test fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn fulcrumd_keeps_its_vip_and_runs_when_nobody_reads_its_log() {
    let cluster = cluster(1);
    let node_file = cluster.lab.log_dir().join("closed-stderr.toml");
    let instance = instance(51, 150, &[vip(1)]);
    std::fs::write(&node_file, fulcrum_lab::routers::fulcrumd_node_file(1, &[instance])).unwrap();
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", &cluster.lbs[0].namespace])
        .arg(fulcrum_lab::routers::fulcrumd_binary().unwrap())
        .arg("--config")
        .arg(&node_file)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Every log line from now on is written to a pipe with no reader.
    drop(child.stderr.take());
    let mut fulcrumd = KillOnDrop(child);

    cluster.wait_for_holder(0, vip(1));
    std::thread::sleep(INTERVAL * 10);
    assert!(fulcrumd.0.try_wait().unwrap().is_none(), "fulcrumd exited");
    assert_eq!(cluster.lab.holders(&cluster.lbs, vip(1)).unwrap(), ["lb1"]);
}
