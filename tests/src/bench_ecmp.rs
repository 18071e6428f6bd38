//! `fulcrum-lab bench-ecmp`: one VIP over BGP ECMP on three load balancers, Fulcrum (flow
//! steering, shared rate limits) against plain ECMP to three HAProxy 2.6 nodes announced the
//! same way (each with its own BIRD, the route withdrawn before a planned change), each in a
//! lab of its own built alike, in the same run. It measures the share of flows per node (150
//! concurrent connections, max/min), the long connections (16 echo sessions and 8 downloads,
//! each checked) cut by each planned change (a node withdrawn, announced again, stopped,
//! added) and by a host's crash (next to how many that host held), how long the router took
//! to withdraw the crashed host (BFD at 100 ms × 3), and how far a cluster-wide rate limit
//! (burst 20, 20/s, one client at five times that for 5 s) is from what it allows.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::bench_l4::HAPROXY;
use crate::bgp::{NODE_AS, ROUTER_AS};
use crate::cluster::node_id;
use crate::ecmp::{ECHO_PORT, EcmpLab, FulcrumEcmp, HTTP_PORT, LongConnections, VIP};
use crate::process::LabProcess;
use crate::{HostRole, LabError};

/// Connections kept open across each change: echo sessions, then downloads.
const LONG: (usize, usize) = (16, 8);
/// How long they last across a withdrawal or a stop (within fulcrumd's 10 s drain).
const SHORT_SECS: u64 = 6;
/// How long they last across an announcement (a new session takes a few seconds).
const LONG_SECS: u64 = 20;
/// The rate limit: burst and refill per second.
const LIMIT: (f64, f64) = (20.0, 20.0);
/// Requests sent against it, one every 10 ms.
const REQUESTS: usize = 500;

/// What one change did to the connections open across it.
#[derive(Clone, Debug)]
pub struct Cut {
    /// The change.
    pub change: &'static str,
    /// Connections cut.
    pub cut: usize,
    /// Connections open across it.
    pub open: usize,
    /// For a crash, how many the crashed host held.
    pub held: Option<usize>,
    /// False if the router's change came after the connections had ended.
    pub seen: bool,
}

/// One load balancer's figures.
#[derive(Clone, Debug)]
pub struct Figures {
    /// `fulcrumd` or `haproxy`.
    pub name: &'static str,
    /// Concurrent connections per node.
    pub share: Vec<usize>,
    /// Each change.
    pub cuts: Vec<Cut>,
    /// From the host's crash to the router's withdrawal.
    pub withdrawal: Duration,
    /// Rate limit: requests admitted, refused (429), and what the limit allows over the
    /// time they were sent.
    pub limit: Option<(usize, usize, f64)>,
}

/// Runs the benchmark: Fulcrum's lab, then HAProxy's.
pub fn ecmp(lab_binary: &Path) -> Result<Vec<Figures>, LabError> {
    if !Path::new(HAPROXY).is_file() {
        return Err(LabError::Invalid(format!("{HAPROXY} is missing: apt install haproxy")));
    }
    fn within(name: &'static str) -> impl Fn(LabError) -> LabError {
        move |e| LabError::Invalid(format!("{name}: {e}"))
    }
    let fulcrum = fulcrum(lab_binary).map_err(within("fulcrumd"))?;
    Ok(vec![fulcrum, haproxy(lab_binary).map_err(within("haproxy"))?])
}

/// What both kinds of node do for a change.
trait Nodes {
    fn ecmp(&self) -> &EcmpLab;
    /// Withdraws node `index`'s route; it keeps serving what it holds.
    fn withdraw(&mut self, index: usize) -> Result<(), LabError>;
    /// Announces node `index`'s route again.
    fn announce(&mut self, index: usize) -> Result<(), LabError>;
    /// Stops node `index` the planned way.
    fn stop(&mut self, index: usize) -> Result<(), LabError>;
    /// Starts node `index` again.
    fn start(&mut self, index: usize) -> Result<(), LabError>;
    /// Crashes node `index`'s host.
    fn crash(&mut self, index: usize) -> Result<(), LabError>;
}

/// Every change in turn, the connections counted across each.
fn changes(nodes: &mut dyn Nodes, name: &'static str) -> Result<Figures, LabError> {
    let all = [0, 1, 2];
    nodes.ecmp().wait_next_hops(&all, Duration::from_secs(30))?;
    let share = {
        let batch = nodes.ecmp().long_connections(150, 0, 3)?;
        let share = batch.per_node.clone();
        batch.cut();
        share
    };
    let mut cuts = Vec::new();
    let mut across = |nodes: &mut dyn Nodes,
                      change: &'static str,
                      secs: u64,
                      act: &dyn Fn(&mut dyn Nodes) -> Result<(), LabError>,
                      hops: &[usize]|
     -> Result<(), LabError> {
        let batch = nodes.ecmp().long_connections(LONG.0, LONG.1, secs)?;
        act(nodes)?;
        nodes.ecmp().wait_next_hops(hops, Duration::from_secs(30))?;
        let seen = batch.running();
        cuts.push(count(change, batch, None, seen));
        Ok(())
    };
    across(nodes, "withdrawn (drain)", SHORT_SECS, &|n| n.withdraw(1), &[0, 2])?;
    across(nodes, "announced again", LONG_SECS, &|n| n.announce(1), &all)?;
    across(nodes, "stopped (SIGTERM / soft stop)", SHORT_SECS, &|n| n.stop(2), &[0, 1])?;
    across(nodes, "added (started again)", LONG_SECS, &|n| n.start(2), &all)?;
    let batch = nodes.ecmp().long_connections(LONG.0, LONG.1, SHORT_SECS)?;
    let held = batch.per_node[0];
    let crashed = Instant::now();
    nodes.crash(0)?;
    let withdrawn = nodes.ecmp().wait_next_hops(&[1, 2], Duration::from_secs(10))?;
    let seen = batch.running();
    cuts.push(count("host crashed", batch, Some(held), seen));
    Ok(Figures {
        name,
        share,
        cuts,
        withdrawal: withdrawn.saturating_duration_since(crashed),
        limit: None,
    })
}

fn count(change: &'static str, batch: LongConnections, held: Option<usize>, seen: bool) -> Cut {
    Cut { change, cut: batch.cut().len(), open: LONG.0 + LONG.1, held, seen }
}

/// Fulcrum: three cluster nodes with flow steering and shared rate limits.
fn fulcrum(lab_binary: &Path) -> Result<Figures, LabError> {
    let cluster = FulcrumEcmp::start(EcmpLab::up(lab_binary)?, "")?;
    cluster.wait_flow_view(&[0, 1, 2], &[0, 1, 2], &[])?;
    let limit = {
        let (capacity, refill) = LIMIT;
        cluster.apply(&cluster.cluster_file(Some(LIMIT)))?;
        let (admitted, refused, elapsed) =
            cluster.ecmp.limited_load(REQUESTS, Duration::from_millis(10))?;
        cluster.apply(&cluster.cluster_file(None))?;
        (admitted, refused, capacity + refill * elapsed.as_secs_f64())
    };
    let mut nodes = FulcrumNodes(cluster);
    let mut figures = changes(&mut nodes, "fulcrumd")?;
    figures.limit = Some(limit);
    Ok(figures)
}

struct FulcrumNodes(FulcrumEcmp);

impl FulcrumNodes {
    fn wait_view(&self, observers: &[usize], announcing: &[usize], draining: &[usize]) {
        // The view settles within a second; a slower one shows in the cuts.
        if let Err(error) = self.0.wait_flow_view(observers, announcing, draining) {
            eprintln!("bench-ecmp: {error}");
        }
    }
}

impl Nodes for FulcrumNodes {
    fn ecmp(&self) -> &EcmpLab {
        &self.0.ecmp
    }

    fn withdraw(&mut self, index: usize) -> Result<(), LabError> {
        let id = node_id(&self.0.ecmp.lbs[index]).to_string();
        self.0.ctl(&["drain", &id]).map(drop)
    }

    fn announce(&mut self, index: usize) -> Result<(), LabError> {
        let id = node_id(&self.0.ecmp.lbs[index]).to_string();
        self.0.ctl(&["drain", &id, "--lift"]).map(drop)
    }

    fn stop(&mut self, index: usize) -> Result<(), LabError> {
        self.0.nodes[index].signal(Signal::SIGTERM)
    }

    fn start(&mut self, index: usize) -> Result<(), LabError> {
        self.0.nodes[index].wait(Duration::from_secs(20))?;
        let others: Vec<usize> = (0..3).filter(|&i| i != index).collect();
        self.wait_view(&others, &others, &[]);
        let FulcrumEcmp { ecmp, nodes, node_files } = &mut self.0;
        nodes[index] = ecmp.lab.start_fulcrumd(&ecmp.lbs[index], &node_files[index])?;
        Ok(())
    }

    fn crash(&mut self, index: usize) -> Result<(), LabError> {
        let FulcrumEcmp { ecmp, nodes, .. } = &mut self.0;
        ecmp.lab.crash(&ecmp.lbs[index], &mut nodes[index])
    }
}

/// Plain ECMP: HAProxy on each load balancer, its BIRD announcing the VIP.
struct HaproxyNodes {
    ecmp: EcmpLab,
    haproxies: Vec<Option<LabProcess>>,
    birds: Vec<Option<LabProcess>>,
}

fn haproxy(lab_binary: &Path) -> Result<Figures, LabError> {
    let ecmp = EcmpLab::up(lab_binary)?;
    let mut nodes = HaproxyNodes { ecmp, haproxies: Vec::new(), birds: Vec::new() };
    for index in 0..3 {
        let lb = nodes.ecmp.lbs[index].clone();
        nodes.ecmp.lab.exec(&lb, "ip", &["addr", "add", &format!("{VIP}/32"), "dev", "lo"])?;
        nodes.haproxies.push(Some(nodes.start_haproxy(index)?));
        nodes.birds.push(Some(nodes.start_bird(index)?));
    }
    changes(&mut nodes, "haproxy")
}

impl HaproxyNodes {
    fn file(&self, index: usize, name: &str) -> PathBuf {
        self.ecmp.lab.log_dir().join(format!("{}-{name}", self.ecmp.lbs[index].name))
    }

    fn write(&self, path: &Path, text: &str) -> Result<(), LabError> {
        std::fs::write(path, text)
            .map_err(|source| LabError::Io { what: format!("write {}", path.display()), source })
    }

    fn start_haproxy(&self, index: usize) -> Result<LabProcess, LabError> {
        let backend = self.ecmp.lab.hosts_of(HostRole::Backend)[0].clone();
        let config = format!(
            "global\n    maxconn 4000\n    hard-stop-after 10s\n\ndefaults\n    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n\n\
             frontend web\n    mode http\n    bind {VIP}:{HTTP_PORT}\n    default_backend web\n\n\
             backend web\n    mode http\n    server be {}\n\n\
             listen echo\n    mode tcp\n    bind {VIP}:{ECHO_PORT}\n    server be {}\n",
            backend.http_address(),
            backend.echo_address(),
        );
        let path = self.file(index, "haproxy.cfg");
        self.write(&path, &config)?;
        let lb = &self.ecmp.lbs[index];
        let args = ["-db".to_owned(), "-f".to_owned(), path.display().to_string()];
        let haproxy = self.ecmp.lab.spawn(
            lb,
            &format!("haproxy on {}", lb.name),
            Path::new(HAPROXY),
            &args,
        )?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let listening = self.ecmp.lab.exec(lb, "ss", &["-Htln", "src", &VIP.to_string()])?;
            if listening.lines().count() >= 2 {
                return Ok(haproxy);
            }
            if Instant::now() >= deadline {
                return Err(LabError::Invalid(format!("HAProxy on {} does not listen", lb.name)));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// BIRD's configuration for node `index`, announcing the VIP or not.
    fn bird_config(&self, index: usize, announce: bool) -> String {
        let lb = &self.ecmp.lbs[index];
        let route = if announce { format!("  route {VIP}/32 blackhole;\n") } else { String::new() };
        format!(
            "router id {me};\nlog stderr {{ warning, error, fatal }};\nprotocol device {{ }}\n\
             protocol bfd {{\n  interface \"*\" {{\n    min rx interval 100 ms;\n    min tx interval 100 ms;\n    multiplier 3;\n  }};\n}}\n\
             protocol static vips {{\n  ipv4;\n{route}}}\n\
             protocol bgp router0 {{\n  local as {NODE_AS};\n  neighbor {router} as {ROUTER_AS};\n  hold time 9;\n  keepalive time 3;\n\
               connect delay time 1;\n  connect retry time 2;\n  error wait time 1, 10;\n  bfd on;\n\
               ipv4 {{\n    import none;\n    export where proto = \"vips\";\n    next hop self;\n  }};\n}}\n",
            me = lb.address,
            router = self.ecmp.router_host.address,
        )
    }

    fn start_bird(&self, index: usize) -> Result<LabProcess, LabError> {
        let config = self.file(index, "bird.conf");
        self.write(&config, &self.bird_config(index, true))?;
        let lb = &self.ecmp.lbs[index];
        let args = [
            "-f".to_owned(),
            "-c".to_owned(),
            config.display().to_string(),
            "-s".to_owned(),
            self.file(index, "bird.ctl").display().to_string(),
            "-P".to_owned(),
            self.file(index, "bird.pid").display().to_string(),
        ];
        self.ecmp.lab.spawn(lb, &format!("bird on {}", lb.name), Path::new("/usr/sbin/bird"), &args)
    }

    /// Rewrites node `index`'s BIRD configuration and has BIRD load it.
    fn reannounce(&self, index: usize, announce: bool) -> Result<(), LabError> {
        self.write(&self.file(index, "bird.conf"), &self.bird_config(index, announce))?;
        let socket = self.file(index, "bird.ctl").display().to_string();
        self.ecmp.lab.exec(&self.ecmp.lbs[index], "birdc", &["-s", &socket, "configure"]).map(drop)
    }

    fn process(slot: &mut Option<LabProcess>, index: usize) -> Result<&mut LabProcess, LabError> {
        slot.as_mut().ok_or_else(|| LabError::Invalid(format!("lb{} is not running", index + 1)))
    }
}

impl Nodes for HaproxyNodes {
    fn ecmp(&self) -> &EcmpLab {
        &self.ecmp
    }

    fn withdraw(&mut self, index: usize) -> Result<(), LabError> {
        self.reannounce(index, false)
    }

    fn announce(&mut self, index: usize) -> Result<(), LabError> {
        self.reannounce(index, true)
    }

    /// As an operator would: the route withdrawn, and once the router has dropped it,
    /// HAProxy's soft stop (it serves its connections out) and BIRD stopped.
    fn stop(&mut self, index: usize) -> Result<(), LabError> {
        self.reannounce(index, false)?;
        let others: Vec<usize> = (0..self.ecmp.lbs.len()).filter(|&i| i != index).collect();
        self.ecmp.wait_next_hops(&others, Duration::from_secs(10))?;
        Self::process(&mut self.haproxies[index], index)?.signal(Signal::SIGUSR1)?;
        if let Some(mut bird) = self.birds[index].take() {
            bird.stop()?;
        }
        Ok(())
    }

    fn start(&mut self, index: usize) -> Result<(), LabError> {
        if let Some(mut haproxy) = self.haproxies[index].take() {
            haproxy.wait(Duration::from_secs(30))?;
        }
        self.haproxies[index] = Some(self.start_haproxy(index)?);
        self.birds[index] = Some(self.start_bird(index)?);
        Ok(())
    }

    fn crash(&mut self, index: usize) -> Result<(), LabError> {
        let lb = self.ecmp.lbs[index].clone();
        self.ecmp.lab.crash(&lb, Self::process(&mut self.haproxies[index], index)?)?;
        if let Some(mut bird) = self.birds[index].take() {
            bird.crash()?;
        }
        Ok(())
    }
}

/// The figures as a Markdown table.
pub fn report(figures: &[Figures]) -> String {
    let mut out = String::from("| | ");
    let names: Vec<&str> = figures.iter().map(|f| f.name).collect();
    out.push_str(&names.join(" | "));
    out.push_str(" |\n|---|");
    out.push_str(&"---|".repeat(figures.len()));
    out.push('\n');
    let row = |out: &mut String, label: &str, cells: Vec<String>| {
        out.push_str(&format!("| {label} | {} |\n", cells.join(" | ")));
    };
    row(
        &mut out,
        "flows per node (150 connections), max/min",
        figures
            .iter()
            .map(|f| {
                let (max, min) = (f.share.iter().max(), f.share.iter().min());
                match (max, min) {
                    (Some(&max), Some(&min)) if min > 0 => {
                        format!("{:.2} ({:?})", max as f64 / min as f64, f.share)
                    }
                    _ => format!("{:?}", f.share),
                }
            })
            .collect(),
    );
    let changes = figures.first().map_or(0, |f| f.cuts.len());
    for at in 0..changes {
        let label = figures[0].cuts[at].change;
        row(
            &mut out,
            &format!("connections cut: {label}"),
            figures
                .iter()
                .map(|f| {
                    let cut = &f.cuts[at];
                    let held = cut.held.map_or_else(String::new, |h| format!(", {h} on that host"));
                    let late = if cut.seen { "" } else { " (change after they ended)" };
                    format!("{} of {}{held}{late}", cut.cut, cut.open)
                })
                .collect(),
        );
    }
    row(
        &mut out,
        "host crash to withdrawal (BFD 100 ms × 3)",
        figures.iter().map(|f| format!("{:.2} s", f.withdrawal.as_secs_f64())).collect(),
    );
    row(
        &mut out,
        "rate limit 20/s burst 20, 5 s at 5× from one client",
        figures
            .iter()
            .map(|f| match f.limit {
                Some((admitted, refused, allowed)) => format!(
                    "{admitted} admitted, {allowed:.0} allowed ({:+.1} %); {refused} refused, {} unanswered",
                    (admitted as f64 / allowed - 1.0) * 100.0,
                    REQUESTS.saturating_sub(admitted + refused)
                ),
                None => "not measured".into(),
            })
            .collect(),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_has_a_column_per_balancer_and_a_row_per_change() {
        let cut = |change, cut, held| Cut { change, cut, open: 24, held, seen: true };
        let figures = |name, cuts: Vec<Cut>| Figures {
            name,
            share: vec![50, 48, 52],
            cuts,
            withdrawal: Duration::from_millis(310),
            limit: (name == "fulcrumd").then_some((120, 380, 119.9)),
        };
        let report = report(&[
            figures(
                "fulcrumd",
                vec![cut("withdrawn (drain)", 0, None), cut("host crashed", 8, Some(8))],
            ),
            figures(
                "haproxy",
                vec![cut("withdrawn (drain)", 9, None), cut("host crashed", 10, Some(8))],
            ),
        ]);
        assert!(report.starts_with("| | fulcrumd | haproxy |\n|---|---|---|\n"), "{report}");
        assert!(report.contains("| connections cut: withdrawn (drain) | 0 of 24 | 9 of 24 |"));
        assert!(report.contains(
            "| connections cut: host crashed | 8 of 24, 8 on that host | 10 of 24, 8 on that host |"
        ));
        assert!(report.contains("| 1.08 ([50, 48, 52]) |"));
        assert!(report.contains(
            "120 admitted, 120 allowed (+0.1 %); 380 refused, 0 unanswered | not measured |"
        ));
        assert!(report.contains("| 0.31 s | 0.31 s |"));
    }
}
