//! The data plane in the lab: a real `fulcrumd` on lb1 serving a cluster file (changed with
//! SIGHUP), real lab backends on be1..be3, and the prober on the client host.
//!
//! These tests need root; without it they fail with a message that says so.

#![allow(clippy::unwrap_used)] // In a test, a panic is the failure report.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fulcrum_lab::probe::{ProbeArgs, ProbeReport, ProbeTarget};
use fulcrum_lab::process::LabProcess;
use fulcrum_lab::serving::{ServingNode, download_slow, metric};
use fulcrum_lab::topology::RunningProbe;
use fulcrum_lab::{Host, HostRole, Lab, Topology};

const LAB_BINARY: &str = env!("CARGO_BIN_EXE_fulcrum-lab");
const FRONT_PORT: u16 = 8000;

/// lb1 running fulcrumd, three backends, and the client.
struct Setup {
    lab: Lab,
    node: ServingNode,
    backends: Vec<Host>,
    backend_processes: Vec<LabProcess>,
    client: Host,
}

fn front(node: &ServingNode) -> SocketAddr {
    SocketAddr::from((node.host.address, FRONT_PORT))
}

/// A cluster file: one TCP listener on lb1 to a pool of `backends` (the lab backends' HTTP
/// ports) with `pool_extra` lines added to the pool table.
fn cluster_file(lb: &Host, backends: &[(&Host, &str)], pool_extra: &str) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|(host, extra)| format!("{{ address = \"{}\"{extra} }}", host.http_address()))
        .collect();
    format!(
        "[[listeners]]\nname = \"front\"\nbind = \"{}:{FRONT_PORT}\"\nprotocol = \"tcp\"\ndefault_pool = \"web\"\n\n\
         [[pools]]\nname = \"web\"\nbackends = [{}]\n{pool_extra}\n",
        lb.address,
        list.join(", ")
    )
}

fn setup(pool_extra: &str) -> Setup {
    let lab = Lab::up(&Topology { load_balancers: 1, backends: 3, prefix: None }, LAB_BINARY)
        .unwrap_or_else(|e| panic!("cannot build the lab: {e}"));
    let backends = lab.hosts_of(HostRole::Backend);
    let backend_processes = lab.start_backends().unwrap();
    let lb = lab.host("lb1").unwrap();
    let all: Vec<_> = backends.iter().map(|b| (b, "")).collect();
    let node = lab.start_serving_node(&lb, &cluster_file(&lb, &all, pool_extra), &[]).unwrap();
    let client = lab.host("client").unwrap();
    Setup { lab, node, backends, backend_processes, client }
}

impl Setup {
    /// Starts probing the front end every `interval` for `duration`.
    fn start_probe(&self, interval: Duration, duration: Duration) -> RunningProbe {
        let target = ProbeTarget::Http { address: front(&self.node), path: "/".into() };
        self.lab.start_probe(&self.client, &ProbeArgs::new(target, interval, duration)).unwrap()
    }

    fn probe(&self, attempts: u64, interval: Duration) -> ProbeReport {
        let target = ProbeTarget::Http { address: front(&self.node), path: "/".into() };
        let mut args =
            ProbeArgs::new(target, interval, interval * attempts as u32 + Duration::from_secs(5));
        args.max_attempts = Some(attempts);
        self.lab.probe(&self.client, &args).unwrap()
    }

    fn answers(&self, report: &ProbeReport, backend: usize) -> u64 {
        report.answers.get(&self.backends[backend].name).copied().unwrap_or(0)
    }

    fn reload(&mut self, backends: &[(usize, &str)], pool_extra: &str) {
        let lb = self.node.host.clone();
        let list: Vec<_> = backends.iter().map(|(i, extra)| (&self.backends[*i], *extra)).collect();
        self.node.reload(&cluster_file(&lb, &list, pool_extra)).unwrap();
    }

    /// Backend `i`'s sample of the metric `name`.
    fn backend_metric(&self, name: &str, backend: usize) -> Option<f64> {
        let labels = format!("pool=\"web\",backend=\"{}\"", self.backends[backend].http_address());
        metric(&self.node.metrics().unwrap(), name, &labels)
    }

    fn backend_up(&self, backend: usize) -> Option<f64> {
        self.backend_metric("fulcrum_backend_up", backend)
    }

    /// Polls the metrics until backend `i`'s `fulcrum_backend_up` is `value`; returns when.
    /// Polls the metrics until backend `i`'s active-check state is `state`; returns when.
    fn wait_backend_health(&self, backend: usize, state: &str, within: Duration) -> Duration {
        let labels = format!(
            "pool=\"web\",backend=\"{}\",state=\"{state}\"",
            self.backends[backend].http_address()
        );
        poll_until(&format!("backend {backend} {state}"), within, || {
            metric(&self.node.metrics().unwrap(), "fulcrum_backend_health", &labels) == Some(1.0)
        })
    }

    /// The active health checks of `backend` so far: (failed, passed).
    fn checks(&self, backend: usize) -> (f64, f64) {
        let metrics = self.node.metrics().unwrap();
        let count = |result: &str| {
            let labels = format!(
                "pool=\"web\",backend=\"{}\",result=\"{result}\"",
                self.backends[backend].http_address()
            );
            metric(&metrics, "fulcrum_backend_health_checks_total", &labels).unwrap_or(0.0)
        };
        (count("fail"), count("pass"))
    }

    fn wait_backend_up(&self, backend: usize, value: f64, within: Duration) -> Duration {
        let started = Instant::now();
        while self.backend_up(backend) != Some(value) {
            assert!(
                started.elapsed() < within,
                "backend {backend} not up={value} within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        started.elapsed()
    }
}

/// Polls `condition` every 20 ms until it holds; fails the test after `within`. Returns how
/// long it took.
fn poll_until(what: &str, within: Duration, condition: impl Fn() -> bool) -> Duration {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    started.elapsed()
}

#[test]
fn traffic_spreads_per_algorithm() {
    let mut s = setup("");
    // Round robin over sequential new connections: an exact split.
    let report = s.probe(90, Duration::from_millis(5));
    assert_eq!(report.failures, 0, "{report}");
    for i in 0..3 {
        assert_eq!(s.answers(&report, i), 30, "{report}");
    }

    s.reload(&[(0, ", weight = 3"), (1, ""), (2, "")], "algorithm = \"weighted_round_robin\"");
    let report = s.probe(100, Duration::from_millis(5));
    assert_eq!(
        (s.answers(&report, 0), s.answers(&report, 1), s.answers(&report, 2)),
        (60, 20, 20),
        "{report}"
    );

    // One client address: source-IP hash and consistent hashing pin it to one backend.
    for algorithm in ["\"source_ip_hash\"", "{ kind = \"consistent_hash\", key = \"source_ip\" }"] {
        s.reload(&[(0, ""), (1, ""), (2, "")], &format!("algorithm = {algorithm}"));
        let report = s.probe(30, Duration::from_millis(5));
        assert_eq!(report.failures, 0, "{report}");
        assert_eq!(report.answers.len(), 1, "{algorithm} pins one client: {report}");
    }

    s.reload(&[(0, ""), (1, ""), (2, "")], "algorithm = \"random\"");
    let report = s.probe(150, Duration::from_millis(5));
    for i in 0..3 {
        // Each has probability 1/3: below 15 of 150 is about a 1-in-10^6 event.
        assert!(s.answers(&report, i) >= 15, "{report}");
    }
}

#[test]
fn a_killed_backend_is_ejected_and_traffic_continues_until_it_returns() {
    let interval = Duration::from_millis(200);
    let (rise, fall) = (2u32, 2u32);
    let check = format!(
        "health_check = {{ interval = \"200ms\", timeout = \"100ms\", rise = {rise}, fall = {fall}, http = {{ path = \"/health\" }} }}"
    );
    let mut s = setup(&check);
    for i in 0..3 {
        s.wait_backend_up(i, 1.0, Duration::from_secs(5));
    }
    let probe = s.start_probe(Duration::from_millis(10), Duration::from_secs(4));
    std::thread::sleep(Duration::from_millis(500));

    s.backend_processes[1].crash().unwrap();
    // The probe's refused connections eject be2 passively within milliseconds; what is
    // checked here is the active checks marking it down: after `fall` failed checks, not
    // before (the deadline is generous: timing is the benchmarks' business).
    let ejected = s.wait_backend_health(1, "down", Duration::from_secs(5));
    let (failed, passed) = s.checks(1);
    assert!(failed >= f64::from(fall), "down after {failed} failed checks, fall is {fall}");
    eprintln!("be2 down after {ejected:?} ({interval:?} × {fall} expected)");

    let report = probe.finish().unwrap();
    // A refused connection is retried on the next backend, so no client sees the crash. One
    // exception, which no L4 proxy can retry: a connection whose handshake the backend's
    // kernel completed an instant before the kill (still in its accept queue) is reset once
    // the client's bytes were forwarded. At most one probe can be in that instant.
    let in_flight_reset = "request: connection closed before message completed";
    let others = report.failures - report.failure_kinds.get(in_flight_reset).copied().unwrap_or(0);
    assert_eq!(others, 0, "only an in-flight connection may fail: {report}");
    assert!(report.failures <= 1 && report.outages <= 1, "{report}");
    assert!(s.answers(&report, 0) > 0 && s.answers(&report, 2) > 0, "{report}");

    let restarted = s.lab.start_backend(&s.backends[1]).unwrap();
    s.backend_processes[1] = restarted;
    let back = s.wait_backend_health(1, "up", Duration::from_secs(5));
    s.wait_backend_up(1, 1.0, Duration::from_secs(1));
    let (_, passed_since) = s.checks(1);
    assert!(
        passed_since - passed >= f64::from(rise),
        "up after {} passed checks",
        passed_since - passed
    );
    eprintln!("be2 up after {back:?} ({interval:?} × {rise} expected)");
    let report = s.probe(30, Duration::from_millis(5));
    assert_eq!(s.answers(&report, 1), 10, "back in the rotation: {report}");
}

#[test]
fn a_draining_backend_lets_a_slow_download_finish_while_new_connections_go_elsewhere() {
    let mut s = setup("");
    let address = front(&s.node);
    let namespace = s.client.namespace.clone();
    let download = std::thread::spawn(move || {
        fulcrum_lab::netns::run_in(&namespace, || {
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(download_slow(address, 4))
        })
    });
    // Round robin sends the first connection to be1.
    let be1_active = |s: &Setup| s.backend_metric("fulcrum_backend_active_connections", 0);
    poll_until("the download reaches be1", Duration::from_secs(5), || be1_active(&s) == Some(1.0));

    s.reload(&[(0, ", state = \"draining\""), (1, ""), (2, "")], "");
    let report = s.probe(40, Duration::from_millis(10));
    assert_eq!(report.failures, 0, "{report}");
    assert_eq!(s.answers(&report, 0), 0, "the draining backend takes nothing new: {report}");
    assert_eq!(s.backend_metric("fulcrum_backend_draining", 0), Some(1.0));

    let result = download.join().unwrap().unwrap().unwrap();
    assert_eq!(result.backend, s.backends[0].name);
    assert_eq!(result.bytes, 4 * 10 * 1024, "the whole download arrived");
    // The client has closed; the remaining count falls to zero.
    poll_until("be1's connections end", Duration::from_secs(5), || be1_active(&s) == Some(0.0));
}

#[test]
fn a_config_change_under_load_loses_no_connection() {
    let mut s = setup("");
    let probe = s.start_probe(Duration::from_millis(5), Duration::from_secs(4));
    let algorithms = [
        "\"round_robin\"",
        "\"least_connections\"",
        "\"power_of_two_choices\"",
        "{ kind = \"peak_ewma\" }",
    ];
    let sets: [&[(usize, &str)]; 4] = [
        &[(0, ""), (1, "")],
        &[(1, ""), (2, "")],
        &[(0, ""), (1, ""), (2, "")],
        &[(2, ""), (0, ", weight = 5")],
    ];
    let started = Instant::now();
    let mut changes = 0;
    while started.elapsed() < Duration::from_secs(3) {
        s.reload(
            sets[changes % sets.len()],
            &format!("algorithm = {}", algorithms[changes % algorithms.len()]),
        );
        changes += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let report = probe.finish().unwrap();
    assert!(changes >= 10, "only {changes} changes");
    assert!(report.attempts > 200, "{report}");
    assert_eq!(report.failures, 0, "{changes} changes: {report}");
}

#[test]
fn an_ipv6_vip_serves_http_and_tcp_from_ipv6_backends_checked_over_ipv6() {
    use fulcrum_lab::routers::Instance;
    use fulcrum_lab::topology::{BACKEND_HTTP_PORT, vip_v6};

    let lab = Lab::up(&Topology { load_balancers: 1, backends: 2, prefix: None }, LAB_BINARY)
        .unwrap_or_else(|e| panic!("cannot build the lab: {e}"));
    let backends = lab.hosts_of(HostRole::Backend);
    let _servers: Vec<LabProcess> = backends
        .iter()
        .map(|b| {
            lab.start_vip_responder(b, SocketAddr::from((b.address_v6(), BACKEND_HTTP_PORT)))
                .unwrap()
        })
        .collect();
    let lb = lab.host("lb1").unwrap();
    let vip = vip_v6(1);
    let pool: Vec<String> = backends
        .iter()
        .map(|b| format!("{{ address = \"[{}]:{BACKEND_HTTP_PORT}\" }}", b.address_v6()))
        .collect();
    let cluster_file = format!(
        "[[listeners]]\nname = \"web\"\nbind = \"[{vip}]:{FRONT_PORT}\"\nprotocol = \"http\"\n\
         default_pool = \"web\"\n\n[[listeners]]\nname = \"tcp\"\nbind = \"[{vip}]:{}\"\n\
         protocol = \"tcp\"\ndefault_pool = \"web\"\n\n[[pools]]\nname = \"web\"\nbackends = [{}]\n\n\
         [pools.health_check]\ninterval = \"200ms\"\ntimeout = \"150ms\"\nhttp = {{ path = \"/health\" }}\n",
        FRONT_PORT + 1,
        pool.join(", ")
    );
    let instance = Instance::new(51, 150, Duration::from_millis(100), &[vip]);
    let node = lab.start_serving_node(&lb, &cluster_file, &[instance]).unwrap();
    lab.wait_for_holder(std::slice::from_ref(&lb), &lb, vip, Duration::from_secs(10)).unwrap();
    let client = lab.host("client").unwrap();
    for port in [FRONT_PORT, FRONT_PORT + 1] {
        let target = ProbeTarget::Http { address: SocketAddr::from((vip, port)), path: "/".into() };
        let mut args = ProbeArgs::new(target, Duration::from_millis(20), Duration::from_secs(10));
        args.max_attempts = Some(20);
        let report = lab.probe(&client, &args).unwrap();
        assert_eq!(report.successes, 20, "port {port}: {report}");
        for backend in &backends {
            assert!(report.answers.get(&backend.name).is_some_and(|n| *n > 0), "{report}");
        }
    }
    // Both backends passed their IPv6 health checks.
    let metrics = node.metrics().unwrap();
    for backend in &backends {
        let labels = format!(
            "pool=\"web\",backend=\"[{}]:{BACKEND_HTTP_PORT}\",state=\"up\"",
            backend.address_v6()
        );
        assert_eq!(metric(&metrics, "fulcrum_backend_health", &labels), Some(1.0), "{metrics}");
    }
}
