//! The soak run: a three-node cluster at fulcrumd's default settings (100 ms adverts, 30 ms
//! Raft heartbeats, 350 ms lease) under full HTTP load through the VIP (wrk from the client)
//! for a while, counting what must not happen when nothing fails: VRRP transitions, leases
//! running out while master, Raft elections.

use std::time::Duration;

use crate::Host;
use crate::cluster::{Timing, web_cluster_file};
use crate::process::LabProcess;
use crate::routers::Instance;
use crate::topology::{HostRole, Lab, LabError, Topology, vip};

const FRONT_PORT: u16 = 80;

/// What a soak run saw.
#[derive(Clone, Debug, Default)]
pub struct SoakReport {
    /// wrk's summary lines.
    pub load: String,
    /// VRRP state changes logged by any node during the load.
    pub vrrp_transitions: usize,
    /// Leases that ran out while master, by any node.
    pub lease_lapses: usize,
    /// Raft elections: how far the term moved during the load.
    pub elections: u64,
}

impl std::fmt::Display for SoakReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{}", self.load.trim_end())?;
        writeln!(f, "VRRP transitions during the load: {}", self.vrrp_transitions)?;
        writeln!(f, "leases that ran out while master: {}", self.lease_lapses)?;
        write!(f, "Raft elections (term increase): {}", self.elections)
    }
}

/// Lines of `process`'s log after byte `from` that contain `needle`.
fn logged_since(process: &LabProcess, from: u64, needle: &str) -> Result<usize, LabError> {
    let path = process.log_path();
    let text = std::fs::read(path)
        .map_err(|source| LabError::Io { what: format!("read {}", path.display()), source })?;
    let start = usize::try_from(from).unwrap_or(usize::MAX).min(text.len());
    Ok(String::from_utf8_lossy(&text[start..]).lines().filter(|l| l.contains(needle)).count())
}

fn log_length(process: &LabProcess) -> u64 {
    std::fs::metadata(process.log_path()).map(|m| m.len()).unwrap_or(0)
}

fn term(lab: &Lab, client: &Host, node: &Host) -> Result<u64, LabError> {
    let status = lab.fulcrumctl(client, &[node], None, &["-o", "json", "status"])?;
    status.json()?["term"]
        .as_u64()
        .ok_or_else(|| LabError::Invalid(format!("no term in the status of {}", node.name)))
}

/// Runs the load for `duration` and counts.
pub fn soak(lab_binary: &std::path::Path, duration: Duration) -> Result<SoakReport, LabError> {
    let lab = Lab::up(&Topology { load_balancers: 3, backends: 2, prefix: None }, lab_binary)?;
    let result = soak_in(&lab, duration);
    lab.down()?;
    result
}

fn soak_in(lab: &Lab, duration: Duration) -> Result<SoakReport, LabError> {
    let lbs = lab.hosts_of(HostRole::LoadBalancer);
    let client = lab.host("client")?;
    let _backends = lab.start_backends()?;
    let nodes = lbs
        .iter()
        .enumerate()
        .map(|(i, lb)| {
            let instance = Instance::ranked(51, i, &[vip(1)]);
            lab.start_cluster_node(Timing::Defaults, lb, &lbs, &[instance], &[])
        })
        .collect::<Result<Vec<_>, _>>()?;
    let all: Vec<&Host> = lbs.iter().collect();
    lab.agreed_leader(&client, &all, Duration::from_secs(20))?;
    let backends = lab.hosts_of(HostRole::Backend);
    let backend_refs: Vec<&Host> = backends.iter().collect();
    let file = lab.lab_file("soak-cluster.toml", &web_cluster_file(FRONT_PORT, &backend_refs))?;
    let applied = lab.fulcrumctl(&client, &all, None, &["apply", "-f", &file, "--wait"])?;
    if !applied.ok() {
        return Err(LabError::Invalid(format!("the cluster file was not applied: {applied:?}")));
    }
    lab.wait_for_holder(&lbs, &lbs[0], vip(1), Duration::from_secs(20))?;

    let offsets: Vec<u64> = nodes.iter().map(log_length).collect();
    let term_before = term(lab, &client, &lbs[0])?;
    let url = format!("http://{}:{FRONT_PORT}/", vip(1));
    let seconds = format!("{}s", duration.as_secs().max(1));
    let load = lab.exec(&client, "wrk", &["-t2", "-c50", "-d", &seconds, "--latency", &url])?;
    let term_after = term(lab, &client, &lbs[0])?;
    let mut report = SoakReport {
        load: load
            .lines()
            .filter(|l| {
                l.contains("Requests/sec")
                    || l.contains("requests in")
                    || l.contains("Non-2xx")
                    || l.contains("Socket errors")
                    || l.contains(" 99%")
            })
            .map(|l| format!("{}\n", l.trim()))
            .collect(),
        elections: term_after.saturating_sub(term_before),
        ..SoakReport::default()
    };
    for (node, from) in nodes.iter().zip(offsets) {
        report.vrrp_transitions += logged_since(node, from, "VRRP state changed")?;
        report.lease_lapses += logged_since(node, from, "lease ran out while master")?;
    }
    Ok(report)
}
