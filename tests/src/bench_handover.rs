//! The handover benchmark: what a client loses across planned VIP handovers under load, for
//! a Fulcrum cluster (`fulcrumctl failover`, with second-chance forwarding) and, in the same
//! lab and run, for keepalived + HAProxy (the master's keepalived stopped, then started again,
//! so it preempts the VIP back).
//!
//! Each handover happens while the client sends 200 requests a second on new connections and
//! holds long connections through the VIP (echo sessions over L4 and `/slow` downloads over
//! HTTP) that started before it and end after it. It counts failed requests and connections
//! cut (reset, closed early or stalled). It prints figures; it never fails on them.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::cluster::{Timing, node_id, web_cluster_file, with_echo_listener};
use crate::probe::{ProbeArgs, ProbeReport, ProbeTarget};
use crate::process::LabProcess;
use crate::routers::{Implementation, Instance};
use crate::serving::{download_slow, echo_session};
use crate::topology::{Host, HostRole, Lab, LabError, Topology, vip};

const HTTP_PORT: u16 = 80;
const ECHO_PORT: u16 = 9000;
const VRID: u8 = 51;
/// Advertisement interval of both implementations.
const ADVERT: Duration = Duration::from_millis(100);
/// How long each long connection lasts; the handover comes in its first second.
const LONG_SECS: u64 = 3;
/// Long connections per handover: echo sessions and downloads.
const ECHO_SESSIONS: usize = 4;
const DOWNLOADS: usize = 2;

/// What one implementation's handovers cost the client.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// `fulcrum` or `keepalived + haproxy`.
    pub name: String,
    /// Handovers done.
    pub handovers: usize,
    /// Requests the prober sent, and those that failed.
    pub requests: u64,
    /// Requests that failed.
    pub failed_requests: u64,
    /// Long connections open across a handover, and those cut.
    pub long_connections: usize,
    /// Long connections cut.
    pub cut_connections: usize,
    /// The prober's longest gap between successes, per handover, in milliseconds.
    pub outages_ms: Vec<u64>,
    /// How connections were cut, with counts.
    pub cuts: std::collections::BTreeMap<String, usize>,
}

impl Tally {
    /// Counts handover `run` (of `of`) between `hosts`, and logs it.
    fn add(
        &mut self,
        report: &ProbeReport,
        long: Vec<Result<usize, String>>,
        (run, of): (usize, usize),
        (from, to): (&Host, &Host),
    ) {
        eprintln!(
            "{} handover {run}/{of} {} -> {}: {} of {} requests failed, {} of {} long connections cut",
            self.name,
            from.name,
            to.name,
            report.failures,
            report.attempts,
            long.iter().filter(|l| l.is_err()).count(),
            long.len()
        );
        self.handovers += 1;
        self.requests += report.attempts;
        self.failed_requests += report.failures;
        self.outages_ms.push(report.longest_outage_ms);
        self.long_connections += long.len();
        for cut in long.into_iter().filter_map(Result::err) {
            self.cut_connections += 1;
            // "line 3: read: ConnectionReset" and the like, by kind.
            let kind = cut.rsplit(": ").next().unwrap_or(&cut).to_owned();
            *self.cuts.entry(kind).or_default() += 1;
        }
    }

    fn median_outage(&self) -> u64 {
        let mut sorted = self.outages_ms.clone();
        sorted.sort_unstable();
        sorted.get(sorted.len() / 2).copied().unwrap_or(0)
    }
}

/// Runs `handovers` planned handovers under load for each implementation, in one lab.
pub fn handover(lab_binary: &Path, handovers: usize) -> Result<Vec<Tally>, LabError> {
    for program in ["/usr/sbin/keepalived", crate::bench_l4::HAPROXY] {
        if !Path::new(program).is_file() {
            return Err(LabError::Invalid(format!(
                "{program} is not installed: apt-get install keepalived haproxy"
            )));
        }
    }
    let lab = Lab::up(&Topology { load_balancers: 3, backends: 2, prefix: None }, lab_binary)?;
    let _backends = lab.start_backends()?;
    let fulcrum = fulcrum_handovers(&lab, handovers)?;
    let reference = keepalived_handovers(&lab, handovers)?;
    lab.down()?;
    Ok(vec![fulcrum, reference])
}

fn fulcrum_handovers(lab: &Lab, handovers: usize) -> Result<Tally, LabError> {
    let lbs = lab.hosts_of(HostRole::LoadBalancer);
    let backends = lab.hosts_of(HostRole::Backend);
    let client = lab.host("client")?;
    let mut nodes: Vec<LabProcess> = lbs
        .iter()
        .zip([150, 120, 100])
        .map(|(lb, priority)| {
            let instance = Instance::new(VRID, priority, ADVERT, &[vip(1)]);
            lab.start_cluster_node(Timing::Lab, lb, &lbs, &[instance], &[])
        })
        .collect::<Result<_, _>>()?;
    let backend_refs: Vec<&Host> = backends.iter().collect();
    let text =
        with_echo_listener(&web_cluster_file(HTTP_PORT, &backend_refs), ECHO_PORT, &backend_refs);
    let file = lab.lab_file("cluster.toml", &text)?;
    let endpoints: Vec<&Host> = lbs.iter().collect();
    // The first write waits for a leader.
    let mut applied = false;
    for _ in 0..50 {
        if lab.fulcrumctl(&client, &endpoints, None, &["apply", "-f", &file, "--wait"])?.ok() {
            applied = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if !applied {
        return Err(LabError::Invalid("the cluster never took its configuration".into()));
    }
    lab.wait_for_holder(&lbs, &lbs[0], vip(1), Duration::from_secs(10))?;

    let mut tally = Tally { name: "fulcrum".into(), ..Tally::default() };
    for run in 0..handovers {
        let (from, to) = if run % 2 == 0 { (&lbs[0], &lbs[1]) } else { (&lbs[1], &lbs[0]) };
        let to_id = node_id(to).to_string();
        let (report, long) = under_load(lab, &client, || {
            let moved = lab.fulcrumctl(
                &client,
                &endpoints,
                None,
                &["failover", "--vrid", "51", "--to", &to_id],
            )?;
            if !moved.ok() {
                return Err(LabError::Invalid(format!(
                    "failover {} -> {}: {moved:?}",
                    from.name, to.name
                )));
            }
            lab.wait_for_holder(&lbs, to, vip(1), Duration::from_secs(10)).map(drop)
        })?;
        tally.add(&report, long, (run + 1, handovers), (from, to));
    }
    for node in &mut nodes {
        node.stop()?;
    }
    // A node killed after its stop grace would leave its tables (and a VIP on lo) to skew the
    // reference run on the same hosts.
    for lb in &lbs {
        for family in ["ip", "arp"] {
            let _ = lab.exec(lb, "nft", &["delete", "table", family, "fulcrum"]);
        }
        let _ = lab.exec(lb, "ip", &["addr", "del", &format!("{}/32", vip(1)), "dev", "lo"]);
    }
    Ok(tally)
}

fn keepalived_handovers(lab: &Lab, handovers: usize) -> Result<Tally, LabError> {
    let lbs = lab.hosts_of(HostRole::LoadBalancer);
    let backends = lab.hosts_of(HostRole::Backend);
    let client = lab.host("client")?;
    let (first, second) = (&lbs[0], &lbs[1]);
    let _haproxies = [first, second]
        .into_iter()
        .map(|lb| start_haproxy(lab, lb, &backends))
        .collect::<Result<Vec<_>, _>>()?;
    let instance = |priority| [Instance::new(VRID, priority, ADVERT, &[vip(1)])];
    let _backup = lab.start_router(second, Implementation::Keepalived, &instance(120))?;
    let mut master = Some(lab.start_router(first, Implementation::Keepalived, &instance(150))?);
    lab.wait_for_holder(&lbs, first, vip(1), Duration::from_secs(10))?;

    let mut tally = Tally { name: "keepalived + haproxy".into(), ..Tally::default() };
    for run in 0..handovers {
        let stepping_down = master.is_some();
        let (report, long) = under_load(lab, &client, || match master.take() {
            // Stopped: keepalived advertises priority 0 and the backup takes over at once.
            Some(mut running) => {
                running.stop()?;
                lab.wait_for_holder(&lbs, second, vip(1), Duration::from_secs(10)).map(drop)
            }
            // Started again: the higher priority preempts the VIP back.
            None => {
                master =
                    Some(lab.start_router(first, Implementation::Keepalived, &instance(150))?);
                lab.wait_for_holder(&lbs, first, vip(1), Duration::from_secs(10)).map(drop)
            }
        })?;
        let (from, to) = if stepping_down { (first, second) } else { (second, first) };
        tally.add(&report, long, (run + 1, handovers), (from, to));
    }
    if let Some(mut running) = master {
        running.stop()?;
    }
    Ok(tally)
}

/// Opens the long connections and the prober, runs `handover` a moment later, and returns
/// what the prober saw and how each long connection ended.
fn under_load(
    lab: &Lab,
    client: &Host,
    handover: impl FnOnce() -> Result<(), LabError>,
) -> Result<(ProbeReport, Vec<Result<usize, String>>), LabError> {
    let namespace = client.namespace.clone();
    let long = std::thread::spawn(move || {
        crate::netns::run_in(&namespace, || {
            crate::bench_l4::in_runtime(async {
                let mut open = tokio::task::JoinSet::new();
                let echo = SocketAddr::from((vip(1), ECHO_PORT));
                let http = SocketAddr::from((vip(1), HTTP_PORT));
                let lines = usize::try_from(LONG_SECS * 10).unwrap_or(30);
                for _ in 0..ECHO_SESSIONS {
                    open.spawn(echo_session(
                        echo,
                        lines,
                        Duration::from_millis(100),
                        Duration::from_secs(5),
                    ));
                }
                for _ in 0..DOWNLOADS {
                    open.spawn(async move {
                        let download = download_slow(http, LONG_SECS);
                        match tokio::time::timeout(Duration::from_secs(LONG_SECS + 5), download)
                            .await
                        {
                            Ok(done) => done.map(|d| d.bytes),
                            Err(_) => Err("download: stalled".into()),
                        }
                    });
                }
                Ok(open.join_all().await)
            })
        })
    });
    let target =
        ProbeTarget::Http { address: SocketAddr::from((vip(1), HTTP_PORT)), path: "/".into() };
    let probe = lab.start_probe(
        client,
        &ProbeArgs::new(target, Duration::from_millis(5), Duration::from_secs(2)),
    )?;
    std::thread::sleep(Duration::from_millis(700));
    handover()?;
    let report = probe.finish()?;
    let long = long
        .join()
        .map_err(|_| LabError::Invalid("the long connections' thread panicked".into()))???;
    // Drains end a moment after their last connection; the next handover starts clean.
    std::thread::sleep(Duration::from_millis(500));
    Ok((report, long))
}

fn start_haproxy(lab: &Lab, lb: &Host, backends: &[Host]) -> Result<LabProcess, LabError> {
    let servers = |port: fn(&Host) -> SocketAddr| -> String {
        backends.iter().map(|b| format!("    server {} {}\n", b.name, port(b))).collect()
    };
    let config = format!(
        "global\n    nbthread 2\n\ndefaults\n    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n\n\
         frontend web\n    mode http\n    bind :{HTTP_PORT}\n    default_backend web\n\n\
         backend web\n    mode http\n    balance roundrobin\n{}\n\
         listen echo\n    mode tcp\n    bind :{ECHO_PORT}\n{}",
        servers(Host::http_address),
        servers(Host::echo_address),
    );
    let name = format!("{}-haproxy-handover.cfg", lb.name);
    let path = lab.lab_file(&name, &config)?;
    let args = vec!["-db".to_owned(), "-f".to_owned(), path];
    lab.spawn(lb, &format!("haproxy on {}", lb.name), Path::new(crate::bench_l4::HAPROXY), &args)
}

/// The figures as a table.
pub fn report(tallies: &[Tally]) -> String {
    let mut text = String::from(
        "| load balancer | handovers | requests | failed requests | long connections | cut | median longest outage ms | how cut |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for tally in tallies {
        let cuts: Vec<String> = tally.cuts.iter().map(|(kind, n)| format!("{kind} ×{n}")).collect();
        let _ = writeln!(
            text,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            tally.name,
            tally.handovers,
            tally.requests,
            tally.failed_requests,
            tally.long_connections,
            tally.cut_connections,
            tally.median_outage(),
            if cuts.is_empty() { "-".to_owned() } else { cuts.join(", ") }
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_counts_failures_cuts_by_kind_and_the_median_outage() {
        let mut tally = Tally { name: "x".into(), ..Tally::default() };
        let report = |attempts, failures, longest_outage_ms| ProbeReport {
            attempts,
            failures,
            longest_outage_ms,
            ..ProbeReport::default()
        };
        let host = |name: &str| Host {
            name: name.into(),
            namespace: format!("test-{name}"),
            address: std::net::Ipv4Addr::new(198, 18, 0, 11),
            role: HostRole::LoadBalancer,
        };
        let (lb1, lb2) = (host("lb1"), host("lb2"));
        let hosts = (&lb1, &lb2);
        tally.add(&report(400, 0, 0), vec![Ok(30), Ok(30)], (1, 3), hosts);
        let cut = vec![Ok(30), Err("line 9: read: ConnectionReset".into())];
        tally.add(&report(400, 12, 90), cut, (2, 3), hosts);
        let cut = vec![Err("line 2: read: ConnectionReset".into())];
        tally.add(&report(400, 3, 40), cut, (3, 3), hosts);
        assert_eq!((tally.handovers, tally.requests, tally.failed_requests), (3, 1200, 15));
        assert_eq!((tally.long_connections, tally.cut_connections), (5, 2));
        assert_eq!(tally.cuts.get("ConnectionReset"), Some(&2));
        assert_eq!(tally.median_outage(), 40);
        let table = report_table(&tally);
        assert!(
            table.contains("| x | 3 | 1200 | 15 | 5 | 2 | 40 | ConnectionReset ×2 |"),
            "{table}"
        );
    }

    fn report_table(tally: &Tally) -> String {
        report(std::slice::from_ref(tally))
    }
}
