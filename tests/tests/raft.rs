//! The configuration store run by real `fulcrumd` processes from their node files, on the
//! lab's load balancers: exactly one node initializes the cluster, all agree on a leader, and a
//! restarted node finds its data and does not initialize again.
//!
//! These tests need root; without it they fail with a message that says so.

#![allow(clippy::unwrap_used)] // In a test, a panic is the failure report.

use std::time::{Duration, Instant};

use fulcrum_lab::cluster::Timing;
use fulcrum_lab::process::LabProcess;
use fulcrum_lab::{Host, HostRole, Lab, Topology};

const LAB_BINARY: &str = env!("CARGO_BIN_EXE_fulcrum-lab");

fn node_file(lab: &Lab, host: &Host, members: &[Host]) -> String {
    lab.cluster_node_file(Timing::Lab, host, members, &[], &[]).unwrap()
}

/// The store metrics a node logs on SIGUSR1.
fn metrics(node: &mut LabProcess) -> serde_json::Value {
    node.signal(nix::sys::signal::Signal::SIGUSR1).unwrap();
    let line = node
        .wait_for(
            "store metrics",
            |l| l.contains("configuration store status"),
            Duration::from_secs(5),
        )
        .unwrap();
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    serde_json::from_str(event["metrics"].as_str().unwrap()).unwrap()
}

/// Waits until every node names the same leader, and returns it.
fn agreed_leader(nodes: &mut [LabProcess]) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let leaders: Vec<Option<u64>> =
            nodes.iter_mut().map(|node| metrics(node)["leader"].as_u64()).collect();
        if let Some(Some(leader)) = leaders.first()
            && leaders.iter().all(|l| l == &Some(*leader))
        {
            return *leader;
        }
        assert!(Instant::now() < deadline, "no agreed leader: {leaders:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn three_fulcrumds_bootstrap_one_cluster_from_their_node_files() {
    let lab = Lab::up(&Topology { load_balancers: 3, backends: 0, prefix: None }, LAB_BINARY)
        .unwrap_or_else(|e| panic!("cannot build the lab: {e}"));
    let lbs = lab.hosts_of(HostRole::LoadBalancer);
    let mut nodes: Vec<LabProcess> =
        lbs.iter().map(|lb| lab.start_fulcrumd(lb, &node_file(&lab, lb, &lbs)).unwrap()).collect();

    let leader = agreed_leader(&mut nodes);
    assert!((11..=13).contains(&leader), "leader {leader}");
    let initialized: Vec<bool> = nodes
        .iter()
        .map(|node| node.output().iter().any(|l| l.contains("initializing a new cluster")))
        .collect();
    assert_eq!(initialized, [true, false, false], "only the lowest id initializes");

    // Restarted with the same node file: its data is there, so it must not initialize again.
    nodes[0].stop().unwrap();
    let restarted = lab.start_fulcrumd(&lbs[0], &node_file(&lab, &lbs[0], &lbs)).unwrap();
    // Both are logged before fulcrumd says it runs, so they are in the output already.
    let said = |what: &str| restarted.output().iter().any(|l| l.contains(what));
    assert!(said("not initializing again") && !said("initializing a new cluster"));
    nodes[0] = restarted;
    agreed_leader(&mut nodes);
}
