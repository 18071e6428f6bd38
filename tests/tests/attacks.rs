//! Attacks with real tools and real attack patterns against a real `fulcrumd` in the lab,
//! while a prober on another connection checks that ordinary clients are still served:
//! slowloris (PyPI) with thousands of sockets against an HTTP and an HTTPS listener, the
//! HTTP/2 rapid-reset pattern, slow HTTP/2 bodies on many streams, an unauthenticated flood
//! on a cluster's admin and Raft ports, and testssl.sh against an HTTPS listener and the
//! admin API.
//!
//! These tests need root; without it they fail with a message that says so.

#![allow(clippy::unwrap_used)] // In a test, a panic is the failure report.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fulcrum_lab::attack::{self, FloodControl, H2Outcome};
use fulcrum_lab::cluster::{ADMIN_PORT, RAFT_PORT, Timing, node_id, web_cluster_file};
use fulcrum_lab::probe::{ProbeArgs, ProbeReport, ProbeTarget};
use fulcrum_lab::serving::{ServingNode, exchange, metric, tls_client_config, tls_over};
use fulcrum_lab::topology::{RunningProbe, vip};
use fulcrum_lab::{Host, HostRole, Lab, Topology};

/// An address in the lab's range where nothing answers: a connection to it waits, so a
/// request routed there is not answered before its client gives up on it.
const STUCK_BACKEND: &str = "198.18.0.250:9";
/// HTTP/2's error code for a graceful close.
const NO_ERROR: u32 = 0;
/// HTTP/2's error code for a peer that misbehaves.
const ENHANCE_YOUR_CALM: u32 = 0xb;
const LAB_BINARY: &str = env!("CARGO_BIN_EXE_fulcrum-lab");
const HTTP_PORT: u16 = 80;
const HTTPS_PORT: u16 = 443;
const VRID: u8 = 51;
/// The HTTP listener's deadline for a whole request, body included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Sockets slowloris holds: thousands, well over the 1024 a default process may open.
const SLOWLORIS_SOCKETS: usize = 3000;

struct Setup {
    lab: Lab,
    node: ServingNode,
    client: Host,
    _backends: Vec<fulcrum_lab::process::LabProcess>,
}

fn setup() -> Setup {
    let lab = Lab::up(&Topology { load_balancers: 1, backends: 2, prefix: None }, LAB_BINARY)
        .unwrap_or_else(|e| panic!("cannot build the lab: {e}"));
    let backends = lab.start_backends().unwrap();
    let lb = lab.host("lb1").unwrap();
    let pki = lab.node_pki(&lb).unwrap();
    let pool: Vec<String> = lab
        .hosts_of(HostRole::Backend)
        .iter()
        .map(|b| format!("{{ address = \"{}\" }}", b.http_address()))
        .collect();
    let cluster_file = format!(
        "[[listeners]]\nname = \"web\"\nbind = \"{lb}:{HTTP_PORT}\"\nprotocol = \"http\"\n\
         default_pool = \"web\"\nhttp = {{ request_timeout = \"{}s\" }}\n\n\
         [[listeners.routes]]\nname = \"stuck\"\npath_prefix = \"/stuck\"\npool = \"stuck\"\n\n\
         [[listeners]]\nname = \"secure\"\nbind = \"{lb}:{HTTPS_PORT}\"\nprotocol = \"https\"\n\
         default_pool = \"web\"\ntls = {{ certificates = [{{ cert = {:?}, key = {:?} }}] }}\n\n\
         [[pools]]\nname = \"web\"\nbackends = [{}]\n\n\
         [[pools]]\nname = \"stuck\"\nbackends = [{{ address = \"{STUCK_BACKEND}\" }}]\n",
        REQUEST_TIMEOUT.as_secs(),
        pki.cert.display().to_string(),
        pki.key.display().to_string(),
        pool.join(", "),
        lb = lb.address,
    );
    let node = lab.start_serving_node(&lb, &cluster_file, &[]).unwrap();
    let client = lab.host("client").unwrap();
    Setup { lab, node, client, _backends: backends }
}

impl Setup {
    fn address(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.node.host.address, port))
    }

    /// Probes the HTTP listener every 20 ms for `duration`, on its own connections.
    fn start_probe(&self, duration: Duration) -> RunningProbe {
        let target = ProbeTarget::Http { address: self.address(HTTP_PORT), path: "/".into() };
        let args = ProbeArgs::new(target, Duration::from_millis(20), duration);
        self.lab.start_probe(&self.client, &args).unwrap()
    }

    /// Runs `attack` on four connections at once from the client.
    fn four_attackers(
        &self,
        attack: impl Fn() -> std::io::Result<H2Outcome> + Sync,
    ) -> Vec<H2Outcome> {
        self.lab
            .run_in(&self.client, || {
                std::thread::scope(|scope| {
                    let attackers: Vec<_> = (0..4).map(|_| scope.spawn(&attack)).collect();
                    attackers.into_iter().map(|a| a.join().unwrap().unwrap()).collect()
                })
            })
            .unwrap()
    }

    /// The HTTP listener's `fulcrum_listener_errors_total` of `kind`.
    fn listener_metric_of_kind(&self, kind: &str) -> f64 {
        let metrics = self.node.metrics().unwrap();
        let labels = format!("listener=\"web\",kind=\"{kind}\"");
        metric(&metrics, "fulcrum_listener_errors_total", &labels).unwrap_or(0.0)
    }

    fn listener_metric(&self, name: &str, listener: &str) -> f64 {
        let metrics = self.node.metrics().unwrap();
        metric(&metrics, name, &format!("listener=\"{listener}\"")).unwrap_or(0.0)
    }

    /// Runs slowloris from the client against `port` until the node holds most of its
    /// sockets and has closed many on the header deadline; checks a prober meanwhile.
    fn slowloris(&self, port: u16, listener: &str, https: bool) {
        let accepted_before = self.listener_metric("fulcrum_listener_connections_total", listener);
        let command = format!(
            "ulimit -n {}; exec slowloris {} -p {port} -s {SLOWLORIS_SOCKETS} --sleeptime 2{}",
            SLOWLORIS_SOCKETS * 2,
            self.node.host.address,
            if https { " --https" } else { "" },
        );
        let mut attacker = self
            .lab
            .spawn(
                &self.client,
                &format!("slowloris on {listener}"),
                std::path::Path::new("/bin/sh"),
                &["-c".to_owned(), command],
            )
            .unwrap();
        // Hold on until slowloris has opened its thousands of sockets: it says so when it
        // starts sending its keep-alive lines. (Over TLS it opens them slowly, one handshake
        // after another, so the deadline is generous.)
        let accepted = || {
            self.listener_metric("fulcrum_listener_connections_total", listener) - accepted_before
        };
        attacker
            .wait_for(
                "its sockets all opened",
                |line| line.contains("Sending keep-alive headers"),
                Duration::from_secs(300),
            )
            .unwrap();
        // fulcrumd accepts them from the kernel's queue a moment later. (Slowloris's opening
        // stops at the first socket that fails, to be retried later: most get through.)
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while accepted() < (SLOWLORIS_SOCKETS / 2) as f64 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            accepted() >= (SLOWLORIS_SOCKETS / 2) as f64,
            "slowloris opened only {} connections to {listener}",
            accepted()
        );
        let active = self.listener_metric("fulcrum_listener_active_connections", listener);
        let at_strength = accepted();
        let report = self.start_probe(Duration::from_secs(15)).finish().unwrap();
        // Open connections first: one is counted as accepted as soon as its task starts.
        let active_at_end = self.listener_metric("fulcrum_listener_active_connections", listener);
        let at_end = accepted();
        assert!(attacker.running(), "slowloris stopped before the probe ended");
        attacker.stop().unwrap();
        println!(
            "slowloris on {listener}: {active} connections open at full strength, \
             {at_strength} accepted by then, {at_end} by the end of the probe, \
             {active_at_end} open then"
        );
        assert_served(&report, &format!("slowloris on {listener}"));
        // The header deadline (10 s) closes slowloris's sockets however often it sends a
        // line: none open at full strength is still open after the 15 s probe, so whatever
        // is open then was accepted during the probe. (How fast slowloris opens new ones
        // is its own business: over TLS on a slow machine it manages a few a second.)
        assert!(
            active_at_end <= at_end - at_strength,
            "slowloris kept its sockets: {active} open at full strength, {active_at_end} \
             open 15 s later though only {} were accepted meanwhile",
            at_end - at_strength
        );
    }
}

fn assert_served(report: &ProbeReport, during: &str) {
    assert!(report.attempts >= 100, "the probe barely ran during {during}: {report:?}");
    assert_eq!(report.failures, 0, "ordinary requests failed during {during}: {report:?}");
}

#[test]
fn slowloris_with_thousands_of_sockets_does_not_starve_other_clients() {
    let setup = setup();
    setup.slowloris(HTTP_PORT, "web", false);
    setup.slowloris(HTTPS_PORT, "secure", true);
}

#[test]
fn http2_rapid_reset_and_slow_streams_do_not_starve_other_clients() {
    let setup = setup();
    let target = setup.address(HTTP_PORT);

    // Rapid reset: four connections, each opening and cancelling streams as fast as it can.
    let probe = setup.start_probe(Duration::from_secs(10));
    let outcomes = setup.four_attackers(|| {
        attack::h2_rapid_reset(target, "/", Duration::ZERO, Duration::from_secs(8), 200_000)
    });
    let report = probe.finish().unwrap();
    println!("rapid reset: {outcomes:?}");
    assert_served(&report, "the rapid-reset attack");
    for outcome in &outcomes {
        // Closed early, with a GOAWAY: h2's ENHANCE_YOUR_CALM for streams reset before
        // fulcrumd accepted them, or fulcrumd's graceful one for most requests cancelled
        // right after they were sent.
        assert!(outcome.closed, "{outcome:?}");
        assert!(matches!(outcome.goaway, Some(ENHANCE_YOUR_CALM | NO_ERROR)), "{outcome:?}");
    }

    // Streams accepted, routed to a backend that does not answer, and cancelled 5 ms later:
    // h2's guard sees nothing wrong, fulcrumd's closes each connection.
    let closed_before = setup.listener_metric_of_kind("reset_flood");
    let probe = setup.start_probe(Duration::from_secs(10));
    let outcomes = setup.four_attackers(|| {
        let pause = Duration::from_millis(5);
        attack::h2_rapid_reset(target, "/stuck", pause, Duration::from_secs(8), 2_000)
    });
    let report = probe.finish().unwrap();
    println!("rapid reset after 5 ms: {outcomes:?}");
    assert_served(&report, "the delayed rapid-reset attack");
    for outcome in &outcomes {
        assert!(outcome.closed && outcome.goaway == Some(NO_ERROR), "{outcome:?}");
        assert!(outcome.streams < 2_000, "let go on for every stream: {outcome:?}");
    }
    let closed = setup.listener_metric_of_kind("reset_flood") - closed_before;
    assert_eq!(closed, outcomes.len() as f64, "{outcomes:?}");

    // Slow bodies: four connections holding 100 streams each, a byte per stream a second.
    let probe = setup.start_probe(Duration::from_secs(12));
    let outcomes = setup.four_attackers(|| {
        attack::h2_slow_bodies(target, 100, Duration::from_secs(1), Duration::from_secs(10))
    });
    let report = probe.finish().unwrap();
    println!("slow bodies: {outcomes:?}");
    assert_served(&report, "the slow-body attack");
    // A body that trickles in cannot hold its stream (and a backend connection) past the
    // request deadline: every stream was answered while the attacker was still sending.
    for outcome in &outcomes {
        assert_eq!((outcome.streams, outcome.answered), (100, 100), "{outcome:?}");
    }
}

/// testssl.sh's findings at `address`, as (id, severity, finding). It runs its protocol,
/// cipher-category, forward-secrecy and vulnerability checks from the client.
pub fn testssl(lab: &Lab, client: &Host, address: SocketAddr) -> Vec<(String, String, String)> {
    let json = lab.log_dir().join(format!("testssl-{}-{}.json", address.ip(), address.port()));
    let target = address.to_string();
    let json_arg = json.display().to_string();
    let args = [
        "--quiet",
        "--color",
        "0",
        "--warnings",
        "off",
        "--ip",
        "one",
        "--jsonfile",
        &json_arg,
        "-p",
        "-s",
        "-f",
        "-U",
        &target,
    ];
    let output = lab.exec(client, "testssl", &args);
    let text = std::fs::read_to_string(&json)
        .unwrap_or_else(|e| panic!("testssl wrote no report ({e}): {output:?}"));
    let findings: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    let field = |f: &serde_json::Value, key: &str| f[key].as_str().unwrap_or_default().to_owned();
    findings.iter().map(|f| (field(f, "id"), field(f, "severity"), field(f, "finding"))).collect()
}

/// Checks a testssl.sh report: it ran (TLS 1.2 and 1.3 seen offered, SSLv3 not), and it
/// flagged nothing at severity LOW or worse.
pub fn assert_nothing_weak(findings: &[(String, String, String)], what: &str) {
    let finding = |id: &str| {
        findings.iter().find(|(i, _, _)| i == id).map(|(_, _, f)| f.as_str()).unwrap_or("")
    };
    println!("testssl on {what}:");
    for (id, severity, text) in findings {
        println!("  {id} ({severity}): {text}");
    }
    assert!(finding("TLS1_3").starts_with("offered"), "TLS 1.3: {:?}", finding("TLS1_3"));
    assert!(finding("TLS1_2").starts_with("offered"), "TLS 1.2: {:?}", finding("TLS1_2"));
    assert_eq!(finding("SSLv3"), "not offered");
    let flagged: Vec<_> = findings
        .iter()
        .filter(|(_, severity, _)| !matches!(severity.as_str(), "OK" | "INFO" | "DEBUG"))
        .collect();
    assert!(flagged.is_empty(), "testssl flagged on {what}: {flagged:#?}");
}

#[test]
fn testssl_finds_no_weak_protocol_or_cipher_on_an_https_listener() {
    let setup = setup();
    let findings = testssl(&setup.lab, &setup.client, setup.address(HTTPS_PORT));
    assert_nothing_weak(&findings, "an HTTPS listener");
}

/// A node's `fulcrum_raft_term`, read from its admin API.
fn raft_term(lab: &Lab, host: &Host) -> f64 {
    let metrics = lab.admin_metrics(host).unwrap();
    let value = metrics.lines().find_map(|line| line.strip_prefix("fulcrum_raft_term "));
    value.and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no fulcrum_raft_term: {metrics}"))
}

#[test]
fn an_unauthenticated_flood_on_the_admin_and_raft_ports_changes_nothing() {
    let lab = Lab::up(&Topology { load_balancers: 3, backends: 1, prefix: None }, LAB_BINARY)
        .unwrap_or_else(|e| panic!("cannot build the lab: {e}"));
    let _backends = lab.start_backends().unwrap();
    let lbs = lab.hosts_of(HostRole::LoadBalancer);
    let _nodes =
        lab.start_ranked_cluster(Timing::Lab, &lbs, VRID, &[vip(1).into()], &["web"]).unwrap();
    let client = lab.host("client").unwrap();
    let all: Vec<&Host> = lbs.iter().collect();
    let leader_id = lab.agreed_leader(&client, &all, Duration::from_secs(30)).unwrap();
    let leader = lbs.iter().find(|h| node_id(h) == leader_id).unwrap().clone();
    let backends = lab.hosts_of(HostRole::Backend);
    let file = lab.lab_file("cluster.toml", &web_cluster_file(HTTP_PORT, &[&backends[0]])).unwrap();
    let applied = lab.fulcrumctl(&client, &[&leader], None, &["apply", "-f", &file, "--wait"]);
    assert!(applied.as_ref().unwrap().ok(), "{applied:?}");
    lab.wait_for_holder(&lbs, &lbs[0], vip(1), Duration::from_secs(10)).unwrap();
    let term = raft_term(&lab, &leader);

    let target =
        ProbeTarget::Http { address: SocketAddr::from((vip(1), HTTP_PORT)), path: "/".into() };
    let probe = lab
        .start_probe(
            &client,
            &ProbeArgs::new(target, Duration::from_millis(20), Duration::from_secs(15)),
        )
        .unwrap();
    let admin = SocketAddr::from((leader.address, ADMIN_PORT));
    let raft = SocketAddr::from((leader.address, RAFT_PORT));
    let tls = tls_client_config(&lab.ca_file(), None).unwrap();
    let wrong_token = b"GET /v1/config HTTP/1.1\r\nhost: lb\r\nauthorization: Bearer not-the-token-0123456789abcdef\r\n\r\n";
    // Unsigned, and declaring the largest body a Raft request may have.
    let unsigned_vote =
        b"POST /raft/append HTTP/1.1\r\nhost: lb\r\ncontent-length: 67108864\r\n\r\n";
    let control = FloodControl::default();
    let (admin_flood, raft_flood, raft_plain_flood, write) = std::thread::scope(|scope| {
        let admin_flood = scope.spawn(|| {
            lab.run_in(&client, || {
                attack::flood(admin, 4, &control, wrong_token, |tcp| tls_over(tcp, admin, &tls))
            })
        });
        // No client certificate: the handshake itself is refused.
        let raft_flood = scope.spawn(|| {
            lab.run_in(&client, || {
                attack::flood(raft, 4, &control, unsigned_vote, |tcp| tls_over(tcp, raft, &tls))
            })
        });
        let raft_plain_flood = scope
            .spawn(|| lab.run_in(&client, || attack::flood(raft, 2, &control, unsigned_vote, Ok)));
        // Once the flood is under way, an operator's change; the flood goes on until the
        // change is done and has lasted 10 s.
        let started = Instant::now();
        while control.connections() < 300 && started.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let flooding = control.connections();
        let write = lab.fulcrumctl(&client, &[&leader], None, &["apply", "-f", &file, "--wait"]);
        std::thread::sleep(Duration::from_secs(10).saturating_sub(started.elapsed()));
        control.stop();
        assert!(flooding >= 300, "the flood did not get under way: {flooding} connections");
        (
            admin_flood.join().unwrap().unwrap(),
            raft_flood.join().unwrap().unwrap(),
            raft_plain_flood.join().unwrap().unwrap(),
            write.unwrap(),
        )
    });
    let report = probe.finish().unwrap();
    println!(
        "admin: {admin_flood:?}\nraft (TLS): {raft_flood:?}\nraft (plain): {raft_plain_flood:?}"
    );

    assert!(write.ok(), "a change during the flood failed: {write:?}");
    assert_served(&report, "the flood");
    assert!(admin_flood.connections >= 100, "the admin flood barely ran: {admin_flood:?}");
    assert_eq!(admin_flood.unanswered, 0, "the admin API left some unanswered: {admin_flood:?}");
    assert_eq!(
        admin_flood.statuses.keys().collect::<Vec<_>>(),
        [&401],
        "the admin API answered the flood with something else than 401: {admin_flood:?}"
    );
    for flood in [&raft_flood, &raft_plain_flood] {
        assert!(flood.connections >= 100, "the Raft flood barely ran: {flood:?}");
        assert_eq!(flood.answered, 0, "the Raft port answered a stranger: {flood:?}");
    }
    assert_eq!(lab.agreed_leader(&client, &all, Duration::from_secs(10)).unwrap(), leader_id);
    assert_eq!(raft_term(&lab, &leader), term, "an election happened during the flood");

    // An insider with a certificate of the cluster CA but without the cluster secret gets
    // through TLS, and its unsigned request is refused and counted by reason.
    let pki = lab.log_dir().join("pki");
    let ca_key = std::fs::read_to_string(pki.join("ca.key")).unwrap();
    let insider = fulcrum_raft_store::tls::issue_node(&ca_key, "insider", &[], 1).unwrap();
    let (cert, key) = (pki.join("insider.pem"), pki.join("insider.key"));
    std::fs::write(&cert, &insider.cert).unwrap();
    std::fs::write(&key, &insider.key).unwrap();
    let insider = tls_client_config(&lab.ca_file(), Some((&cert, &key))).unwrap();
    let unsigned =
        b"POST /raft/vote HTTP/1.1\r\nhost: lb\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
    let answer = lab
        .run_in(&client, || {
            let tcp = std::net::TcpStream::connect(raft)?;
            tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
            exchange(tls_over(tcp, raft, &insider)?, unsigned)
        })
        .unwrap()
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    let refused = metric(
        &lab.admin_metrics(&leader).unwrap(),
        "fulcrum_raft_rpc_refused_total",
        "reason=\"missing_header\"",
    );
    assert_eq!(refused, Some(1.0), "the refusal is not counted");

    let findings = testssl(&lab, &client, admin);
    assert_nothing_weak(&findings, "the admin API");
}
