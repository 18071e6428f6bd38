//! ACME certificates for the whole cluster, against pebble (Debian's ACME test server) whose
//! DNS answers every name with the VIP: three `fulcrumd` cluster nodes, one ordering (the
//! Raft leader), every one serving. Issuance with TLS-ALPN-01 validated by a node that did
//! not order, the certificate served by every node and across a failover; HTTP-01 renewal
//! before expiry with short-lived certificates, a failed renewal retried with backoff while
//! the old certificate serves; the leader killed in the middle of an order, which the next
//! leader finishes without a second account or order.
//!
//! These tests need root; without it they fail with a message that says so.

#![allow(clippy::unwrap_used)] // In a test, a panic is the failure report.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fulcrum_lab::acme::Pebble;
use fulcrum_lab::cluster::{CtlOutput, Timing, node_id, web_cluster_file};
use fulcrum_lab::process::LabProcess;
use fulcrum_lab::routers::Instance;
use fulcrum_lab::serving::metric;
use fulcrum_lab::topology::vip;
use fulcrum_lab::{Host, HostRole, Lab, Topology};
use nix::sys::signal::Signal;

const LAB_BINARY: &str = env!("CARGO_BIN_EXE_fulcrum-lab");
const VRID: u8 = 51;
const HOSTNAME: &str = "www.fulcrum.test";
const LISTENER: &str = "secure";

struct AcmeCluster {
    lab: Lab,
    lbs: Vec<Host>,
    nodes: Vec<LabProcess>,
    client: Host,
    backends: Vec<Host>,
    pebble: Option<Pebble>,
    _backend_processes: Vec<LabProcess>,
}

/// Three cluster nodes (lb1 owns the VIP), one backend, and pebble on the client host
/// issuing certificates valid for `validity`.
fn acme_cluster(validity: Duration) -> AcmeCluster {
    let topology = Topology { load_balancers: 3, backends: 1, prefix: None };
    let lab =
        Lab::up(&topology, LAB_BINARY).unwrap_or_else(|e| panic!("cannot build the lab: {e}"));
    let lbs = lab.hosts_of(HostRole::LoadBalancer);
    let backend_processes = lab.start_backends().unwrap();
    let nodes =
        lab.start_ranked_cluster(Timing::Lab, &lbs, VRID, &[vip(1).into()], &["web"]).unwrap();
    let client = lab.host("client").unwrap();
    let pebble = Pebble::start(&lab, &client, vip(1), validity).unwrap();
    AcmeCluster {
        backends: lab.hosts_of(HostRole::Backend),
        client,
        lbs,
        nodes,
        pebble: Some(pebble),
        lab,
        _backend_processes: backend_processes,
    }
}

impl AcmeCluster {
    fn ctl_ok(&self, endpoints: &[&Host], args: &[&str]) -> CtlOutput {
        self.lab.fulcrumctl_ok(&self.client, endpoints, args).unwrap()
    }

    fn pebble(&mut self) -> &mut Pebble {
        self.pebble.as_mut().unwrap()
    }

    /// Applies the web cluster file plus an https listener on every address, port 443,
    /// whose certificate comes from pebble by `challenge`.
    fn apply(&self, endpoint: &Host, challenge: &str, wait: bool) {
        let pebble = self.pebble.as_ref().unwrap();
        let backends: Vec<&Host> = self.backends.iter().collect();
        let text = format!(
            "{}\n[[listeners]]\nname = \"{LISTENER}\"\nbind = \"0.0.0.0:443\"\nprotocol = \"https\"\n\
             default_pool = \"web\"\n\n[listeners.tls.acme]\ndirectory = \"{}\"\n\
             contact = [\"mailto:ops@fulcrum.test\"]\nhostnames = [\"{HOSTNAME}\"]\n\
             challenge = \"{challenge}\"\nca_file = {:?}\n",
            web_cluster_file(80, &backends),
            pebble.directory(),
            pebble.api_ca().display().to_string(),
        );
        let file = self.lab.lab_file("cluster.toml", &text).unwrap();
        let mut args = vec!["apply", "-f", &file];
        if wait {
            args.push("--wait");
        }
        self.ctl_ok(&[endpoint], &args);
    }

    /// `cert show` as JSON, asked of the first of `endpoints` that answers.
    fn certificate(&self, endpoints: &[&Host]) -> serde_json::Value {
        self.ctl_ok(endpoints, &["-o", "json", "cert", "show", LISTENER]).json().unwrap()
    }

    /// Waits up to `timeout` until `check` holds for the certificate status; returns it.
    fn wait_certificate(
        &self,
        endpoints: &[&Host],
        timeout: Duration,
        what: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.certificate(endpoints);
            if check(&status) {
                return status;
            }
            assert!(Instant::now() < deadline, "{what} within {timeout:?}: {status}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn leader(&self, asked: &[&Host]) -> u64 {
        self.lab.agreed_leader(&self.client, asked, Duration::from_secs(15)).unwrap()
    }

    /// The leaf certificate served at `address` for [`HOSTNAME`], verified against `root`.
    fn served(&self, address: IpAddr, root: &str) -> Result<Vec<u8>, String> {
        let root_file = self.lab.lab_file("issuing-root.pem", root).unwrap();
        self.lab
            .run_in(&self.client, move || served_leaf(SocketAddr::new(address, 443), &root_file))
            .unwrap()
    }

    /// Waits up to `timeout` until `address` serves a certificate `root` verifies.
    fn wait_served(&self, address: IpAddr, root: &str, timeout: Duration) -> Vec<u8> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.served(address, root) {
                Ok(leaf) => return leaf,
                Err(error) => {
                    assert!(
                        Instant::now() < deadline,
                        "{address} serves no valid certificate within {timeout:?}: {error}"
                    )
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn index_of(&self, id: u64) -> usize {
        self.lbs.iter().position(|lb| node_id(lb) == id).unwrap()
    }

    fn log(&self, index: usize) -> String {
        std::fs::read_to_string(self.nodes[index].log_path()).unwrap_or_default()
    }
}

/// A TLS handshake with SNI [`HOSTNAME`] to `address`, trusting only `root`: the leaf's DER.
fn served_leaf(address: SocketAddr, root: &str) -> Result<Vec<u8>, String> {
    let config = fulcrum_lab::serving::tls_client_config(std::path::Path::new(root), None)
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from(HOSTNAME).unwrap();
    let mut connection =
        rustls::ClientConnection::new(Arc::clone(&config), name).map_err(|e| e.to_string())?;
    let mut stream = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(2))
        .map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(3))).map_err(|e| e.to_string())?;
    while connection.is_handshaking() {
        connection.complete_io(&mut stream).map_err(|e| e.to_string())?;
    }
    let leaf = connection.peer_certificates().and_then(|c| c.first()).ok_or("no certificate")?;
    Ok(leaf.as_ref().to_vec())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn issued(status: &serde_json::Value) -> bool {
    status["issued"].is_object()
}

#[test]
fn a_certificate_is_ordered_once_validated_by_a_node_that_did_not_order_and_served_by_every_node_and_after_a_failover()
 {
    let mut c = acme_cluster(Duration::from_secs(3600));
    let lbs = c.lbs.clone();
    let all: Vec<&Host> = lbs.iter().collect();
    let leader = c.leader(&all);
    // The VIP (and so every validation request) goes to a node that does not order; the
    // pools come first, so every node's tracked pool is healthy for the move.
    let backends: Vec<&Host> = c.backends.iter().collect();
    let web = c.lab.lab_file("web.toml", &web_cluster_file(80, &backends)).unwrap();
    c.ctl_ok(&all, &["apply", "-f", &web, "--wait"]);
    if leader == node_id(&c.lbs[0]) {
        let to = node_id(&c.lbs[1]).to_string();
        c.ctl_ok(&all, &["failover", "--vrid", "51", "--to", &to]);
    }
    let status = c.ctl_ok(&all, &["-o", "json", "status"]).json().unwrap();
    let masters = status["vips"][0]["masters"].as_array().unwrap().clone();
    assert_eq!(masters.len(), 1, "{status}");
    let master = c.index_of(masters[0].as_u64().unwrap());
    assert_ne!(node_id(&c.lbs[master]), leader, "the VIP master orders nothing");

    c.apply(&c.lbs[0], "tls-alpn-01", true);
    let status = c.wait_certificate(&all, Duration::from_secs(60), "a certificate", issued);
    assert_eq!(status["issued"]["hostnames"], serde_json::json!([HOSTNAME]), "{status}");
    assert_eq!(status["challenge"], "tls-alpn-01");
    let root = c.pebble.as_ref().unwrap().issuing_root(&c.lab).unwrap();

    // Every node serves the one certificate, on its own address and on the VIP.
    let on_vip = c.wait_served(vip(1).into(), &root, Duration::from_secs(10));
    for lb in &c.lbs {
        let leaf = c.wait_served(lb.address.into(), &root, Duration::from_secs(10));
        assert_eq!(leaf, on_vip, "{} serves another certificate", lb.name);
    }
    let leader_index = c.index_of(leader);
    assert!(c.log(leader_index).contains("order placed"), "the leader ordered");
    assert!(!c.log(master).contains("order placed"), "the validating node did not order");
    assert_eq!(c.pebble().counts(), (1, 1), "one account and one order at the authority");
    let listed = c.ctl_ok(&all, &["cert", "list"]).stdout;
    assert!(listed.contains(LISTENER) && listed.contains("issued"), "{listed}");
    let not_after = status["issued"]["not_after"].as_u64().unwrap();
    for lb in &c.lbs {
        let metrics = c.lab.admin_metrics(lb).unwrap();
        let labels = format!("listener=\"{LISTENER}\"");
        let shown = metric(&metrics, "fulcrum_acme_certificate_not_after_seconds", &labels);
        assert_eq!(shown, Some(not_after as f64), "{} reports the expiry", lb.name);
    }

    // An operator's renewal: a new certificate, on every node.
    c.ctl_ok(&all, &["cert", "renew", LISTENER]);
    c.wait_certificate(&all, Duration::from_secs(60), "a renewed certificate", |s| {
        issued(s)
            && s["order"].is_null()
            && s["issued"]["chain_pem"] != status["issued"]["chain_pem"]
    });
    let on_vip = c.wait_served(vip(1).into(), &root, Duration::from_secs(10));
    for lb in &c.lbs {
        assert_eq!(c.served(lb.address.into(), &root), Ok(on_vip.clone()), "{} renewed", lb.name);
    }
    assert_eq!(c.pebble().counts(), (1, 2), "the same account, a second order");

    // The VIP's master dies: the next one serves the same certificate.
    c.nodes[master].crash().unwrap();
    let after = c.wait_served(vip(1).into(), &root, Duration::from_secs(15));
    assert_eq!(after, on_vip, "the certificate survives the failover");
    assert_eq!(c.pebble().counts(), (1, 2), "no new order after the failover");
}

#[test]
fn http01_renews_before_expiry_and_a_failed_renewal_backs_off_while_the_old_certificate_serves() {
    let validity = Duration::from_secs(60);
    let mut c = acme_cluster(validity);
    let lbs = c.lbs.clone();
    let all: Vec<&Host> = lbs.iter().collect();
    c.apply(&c.lbs[0], "http-01", true);
    let first = c.wait_certificate(&all, Duration::from_secs(60), "a certificate", issued);
    assert_eq!(first["challenge"], "http-01");
    let root = c.pebble.as_ref().unwrap().issuing_root(&c.lab).unwrap();
    let first_leaf = c.wait_served(vip(1).into(), &root, Duration::from_secs(10));
    let (not_before, not_after) = (
        first["issued"]["not_before"].as_u64().unwrap(),
        first["issued"]["not_after"].as_u64().unwrap(),
    );
    let renew_at = first["issued"]["renew_at"].as_u64().unwrap();
    assert_eq!(renew_at, not_before + (not_after - not_before) / 3 * 2, "{first}");

    // Renewed two thirds in, before the first one expires, and served by every node.
    let second = c.wait_certificate(&all, validity, "a renewal", |s| {
        s["issued"]["not_after"].as_u64().is_some_and(|n| n != not_after)
    });
    assert!(unix_now() < not_after, "renewed before expiry: {second}");
    let second_leaf = c.wait_served(vip(1).into(), &root, Duration::from_secs(10));
    assert_ne!(second_leaf, first_leaf, "the renewed certificate is served");
    let (first_leaf, not_after) = (second_leaf, second["issued"]["not_after"].as_u64().unwrap());

    // The authority goes away before the renewal: two failed attempts, 10 s apart, while
    // the first certificate is still served.
    c.pebble.take().unwrap().stop().unwrap();
    let failing = c.wait_certificate(&all, validity, "two failed renewals", |s| {
        s["order"]["failures"].as_u64().is_some_and(|f| f >= 2)
    });
    assert!(failing["order"]["last_error"].is_string(), "{failing}");
    let retry_at = failing["order"]["retry_at"].as_u64().unwrap();
    assert!(retry_at >= unix_now() + 5, "the third attempt waits about 20 s: {failing}");
    assert_eq!(failing["issued"]["not_after"].as_u64(), Some(not_after), "{failing}");
    assert_eq!(
        c.served(vip(1).into(), &root),
        Ok(first_leaf.clone()),
        "the old certificate serves"
    );
    let shown = c.ctl_ok(&all, &["cert", "show", LISTENER]).stdout;
    assert!(shown.contains("failing") && shown.contains("last error"), "{shown}");

    // The authority is back (a new one: new root, no accounts): the retry renews.
    let pebble = Pebble::start(&c.lab, &c.client, vip(1), validity).unwrap();
    c.pebble = Some(pebble);
    let renewed = c.wait_certificate(&all, Duration::from_secs(60), "a renewed certificate", |s| {
        s["issued"]["not_after"].as_u64().is_some_and(|n| n != not_after)
    });
    assert!(renewed["order"].is_null(), "the order ended: {renewed}");
    let root = c.pebble.as_ref().unwrap().issuing_root(&c.lab).unwrap();
    for address in
        std::iter::once(IpAddr::from(vip(1))).chain(c.lbs.iter().map(|lb| lb.address.into()))
    {
        let leaf = c.wait_served(address, &root, Duration::from_secs(10));
        assert_ne!(leaf, first_leaf, "{address} serves the renewed certificate");
    }
}

#[test]
fn the_leader_killed_in_the_middle_of_an_order_leaves_it_to_the_next_leader_without_a_second_account_or_order()
 {
    let mut c = acme_cluster(Duration::from_secs(3600));
    let lbs = c.lbs.clone();
    let all: Vec<&Host> = lbs.iter().collect();
    let leader = c.index_of(c.leader(&all));
    let (paused, survivor) = match leader {
        0 => (1, 2),
        1 => (2, 0),
        _ => (0, 1),
    };
    // A paused member holds the leader in its wait for every node to serve the challenge
    // answers (5 s), so the order is surely in flight when the leader dies.
    c.nodes[paused].signal(Signal::SIGSTOP).unwrap();
    c.apply(&c.lbs[survivor], "tls-alpn-01", false);
    let live = [&lbs[survivor], &lbs[leader]];
    let ordering = c.wait_certificate(&live, Duration::from_secs(30), "an order in flight", |s| {
        s["order"]["url"].is_string() && !issued(s)
    });
    c.nodes[leader].crash().unwrap();
    c.nodes[paused].signal(Signal::SIGCONT).unwrap();

    let rest = [&lbs[survivor], &lbs[paused]];
    let done = c.wait_certificate(&rest, Duration::from_secs(90), "the certificate", issued);
    assert_eq!(done["issued"]["hostnames"], serde_json::json!([HOSTNAME]), "{done}");
    assert_eq!(c.pebble().counts(), (1, 1), "one account and one order: {ordering}");
    let resumed =
        [survivor, paused].iter().any(|&i| c.log(i).contains("resuming the stored order"));
    assert!(resumed, "the next leader resumed the stored order");
    let root = c.pebble.as_ref().unwrap().issuing_root(&c.lab).unwrap();
    c.wait_served(vip(1).into(), &root, Duration::from_secs(15));
}

#[test]
fn the_seal_key_is_rotated_node_by_node_and_the_leader_seals_the_stored_keys_again() {
    let mut c = acme_cluster(Duration::from_secs(3600));
    let lbs = c.lbs.clone();
    let all: Vec<&Host> = lbs.iter().collect();
    c.apply(&c.lbs[0], "tls-alpn-01", true);
    c.wait_certificate(&all, Duration::from_secs(60), "a certificate", issued);
    let root = c.pebble.as_ref().unwrap().issuing_root(&c.lab).unwrap();
    let leaf = c.wait_served(vip(1).into(), &root, Duration::from_secs(10));

    // Sealed under the cluster secret until now. First every node gets the new seal key
    // with the cluster secret as the previous one; then the previous one goes.
    let new_key = c.lab.lab_file("acme-seal.key", "a new ACME seal key of 32 bytes!\n").unwrap();
    let old_key = c.lab.log_dir().join("cluster.secret").display().to_string();
    let rotating =
        format!("\n[acme]\nseal_key_file = {new_key:?}\nprevious_seal_key_files = [{old_key:?}]\n");
    let rotated = format!("\n[acme]\nseal_key_file = {new_key:?}\n");
    for (phase, extra) in [("rotating", &rotating), ("rotated", &rotated)] {
        for (i, lb) in lbs.iter().enumerate() {
            c.nodes[i].stop().unwrap();
            let instance = Instance::ranked(VRID, i, &[vip(1)]);
            let file =
                c.lab.cluster_node_file(Timing::Lab, lb, &lbs, &[instance], &["web"]).unwrap();
            c.nodes[i] = c.lab.start_fulcrumd(lb, &(file + extra)).unwrap();
            c.leader(&all);
            // A restarted node opens the stored key again, or it could not serve.
            let served = c.wait_served(lb.address.into(), &root, Duration::from_secs(15));
            assert_eq!(served, leaf, "{} serves the certificate ({phase})", lb.name);
        }
        if phase == "rotating" {
            // The leader (by now on the new key) seals the account and certificate keys again.
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let resealed: usize = (0..3)
                    .map(|i| {
                        c.log(i).matches("key sealed again under the current seal key").count()
                    })
                    .sum();
                if resealed >= 2 {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the stored keys were sealed again: {resealed} of 2"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    assert_eq!(c.served(vip(1).into(), &root), Ok(leaf), "the VIP serves the certificate");
    assert_eq!(c.pebble().counts(), (1, 1), "rotation orders nothing");
}
