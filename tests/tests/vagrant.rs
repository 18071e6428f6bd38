//! The Vagrant provisioning, exercised in the lab: `vagrant/provision/lb.sh` writes each load
//! balancer's node file from the one template (in a directory of the lab's, without systemd),
//! `fulcrumd` runs on those files (mutual TLS between nodes and TLS on the admin API, with
//! certificates the script issues from the cluster CA's key), the same script applies the
//! demo cluster file, and traffic through the VIP reaches both backends.
//! `vagrant/provision/router.sh` writes the router VM's FRR configuration, FRR runs on it, the
//! load balancers announce the BGP VIP to it (their `[bgp]` written by `lb.sh`), and traffic
//! through the router reaches both backends too.
//!
//! These tests need root; without it they fail with a message that says so.

#![allow(clippy::unwrap_used)] // In a test, a panic is the failure report.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use fulcrum_lab::bgp::Router;
use fulcrum_lab::probe::{ProbeArgs, ProbeTarget};
use fulcrum_lab::routers::workspace_binary;
use fulcrum_lab::topology::vip;
use fulcrum_lab::{Host, HostRole, Lab, Topology};

const LAB_BINARY: &str = env!("CARGO_BIN_EXE_fulcrum-lab");

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The VIP the load balancers announce over BGP, as the Vagrantfile names it.
const BGP_VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 200);

/// Runs `lb.sh` for `host` inside its namespace, its files under `root`, with the cluster
/// CA's key `ca_key` (PEM) and the BGP router `router`, as the Vagrantfile gives them.
fn provision(
    lbs: &[Host],
    backends: &[Host],
    router: &Host,
    host: &Host,
    root: &Path,
    ca_key: &str,
    apply: bool,
) {
    let index = lbs.iter().position(|h| h == host).unwrap();
    let members: Vec<String> = lbs.iter().map(|h| h.address.to_string()).collect();
    let backends: Vec<String> = backends.iter().map(|b| b.http_address().to_string()).collect();
    let output = Command::new("ip")
        .args(["netns", "exec", &host.namespace, "bash"])
        .arg(repository().join("vagrant/provision/lb.sh"))
        .env("NODE_ID", host.address.octets()[3].to_string())
        .env("ADDRESS", host.address.to_string())
        .env("PRIORITY", (150 - 10 * index).to_string())
        .env("MEMBERS", members.join(","))
        .env("VIP", vip(1).to_string())
        .env("BACKENDS", backends.join(","))
        .env("CLUSTER_SECRET", "a lab cluster secret of 32 bytes")
        .env("ADMIN_TOKEN", "a lab admin token of 32 bytes!!!")
        .env("CA_KEY", ca_key)
        .env("FULCRUMD", workspace_binary("fulcrumd", "FULCRUMD").unwrap())
        .env("FULCRUM_SOURCE", repository())
        .env("FULCRUM_ROOT", root)
        .env("FULCRUM_SYSTEMD", "no")
        .env("FULCRUMCTL", workspace_binary("fulcrumctl", "FULCRUMCTL").unwrap())
        .env("APPLY", if apply { "yes" } else { "no" })
        .env("ROUTER", router.address.to_string())
        .env("BGP_VIP", BGP_VIP.to_string())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "lb.sh on {} failed: {}{}",
        host.name,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_vagrant_provisioning_makes_a_working_cluster_in_the_lab() {
    let lab = Lab::up(&Topology { load_balancers: 3, backends: 2, prefix: None }, LAB_BINARY)
        .unwrap_or_else(|e| panic!("cannot build the lab: {e}"));
    let lbs = lab.hosts_of(HostRole::LoadBalancer);
    let backends = lab.hosts_of(HostRole::Backend);
    let _backends = lab.start_backends().unwrap();
    let roots: Vec<PathBuf> =
        lbs.iter().map(|lb| lab.log_dir().join(format!("{}-root", lb.name))).collect();

    // The router VM: FRR from the configuration router.sh writes.
    let router = lab.add_router().unwrap();
    let router_root = lab.log_dir().join("router-root");
    let peers: Vec<String> = lbs.iter().map(|h| h.address.to_string()).collect();
    let output = Command::new("ip")
        .args(["netns", "exec", &router.namespace, "bash"])
        .arg(repository().join("vagrant/provision/router.sh"))
        .env("ADDRESS", router.address.to_string())
        .env("PEERS", peers.join(","))
        .env("FULCRUM_ROOT", &router_root)
        .env("FULCRUM_SYSTEMD", "no")
        .output()
        .unwrap();
    assert!(output.status.success(), "router.sh failed: {output:?}");
    let frr = Router::start_from(&lab, &router, &router_root.join("etc/frr/frr.conf")).unwrap();

    // The cluster CA's key, as the Vagrantfile makes it once on the host.
    let ca_dir = lab.log_dir().join("vagrant-ca");
    let made = Command::new(workspace_binary("fulcrumd", "FULCRUMD").unwrap())
        .args(["pki", "ca", "--out"])
        .arg(&ca_dir)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let ca_key = std::fs::read_to_string(ca_dir.join("ca.key")).unwrap();

    let mut nodes = Vec::new();
    for (lb, root) in lbs.iter().zip(&roots) {
        provision(&lbs, &backends, &router, lb, root, &ca_key, false);
        let node_file = std::fs::read_to_string(root.join("etc/fulcrum/node.toml")).unwrap();
        assert!(
            node_file.contains("interface = \"eth0\""),
            "the interface is found by address: {node_file}"
        );
        // Mutual TLS between the nodes and TLS on the admin API, with a certificate of its own.
        assert!(node_file.contains("[raft.tls]"), "{node_file}");
        assert!(root.join("etc/fulcrum/pki/node.key").is_file(), "no key issued on {}", lb.name);
        assert!(node_file.contains("[bgp]"), "{node_file}");
        nodes.push(lab.start_fulcrumd(lb, &node_file).unwrap());
    }
    // Provisioned again with APPLY=yes, the last node applies the demo cluster file (with
    // fulcrumctl over https, trusting the CA).
    provision(&lbs, &backends, &router, &lbs[2], &roots[2], &ca_key, true);

    lab.wait_for_holder(&lbs, &lbs[0], vip(1), Duration::from_secs(10)).unwrap();
    let target = ProbeTarget::Http { address: SocketAddr::from((vip(1), 80)), path: "/".into() };
    let mut args = ProbeArgs::new(target, Duration::from_millis(20), Duration::from_secs(10));
    args.max_attempts = Some(20);
    let client = lab.host("client").unwrap();
    let report = lab.probe(&client, &args).unwrap();
    assert_eq!(report.successes, 20, "{report}");
    assert!(report.answers.contains_key("be1") && report.answers.contains_key("be2"), "{report}");

    // Every node announces the BGP VIP; through the router, it reaches both backends too.
    let addresses: Vec<Ipv4Addr> = lbs.iter().map(|lb| lb.address).collect();
    frr.wait_next_hops(&lab, BGP_VIP.into(), &addresses, Duration::from_secs(60)).unwrap();
    let via = router.address.to_string();
    lab.exec(&client, "ip", &["route", "add", &format!("{BGP_VIP}/32"), "via", &via]).unwrap();
    let target = ProbeTarget::Http { address: SocketAddr::from((BGP_VIP, 80)), path: "/".into() };
    let mut args = ProbeArgs::new(target, Duration::from_millis(20), Duration::from_secs(10));
    args.max_attempts = Some(20);
    let report = lab.probe(&client, &args).unwrap();
    assert_eq!(report.successes, 20, "{report}");
    assert!(report.answers.contains_key("be1") && report.answers.contains_key("be2"), "{report}");
    drop(nodes);
}
