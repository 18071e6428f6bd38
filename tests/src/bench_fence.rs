//! The fault benchmark: what each kind of fault of the VIP's master costs a client, and how
//! long two load balancers answer for the VIP at once, for Fulcrum at its default settings
//! (quorum fence, 100 ms adverts, 350 ms lease) and for keepalived at the same advert
//! interval, three load balancers each, in the same lab and run.
//!
//! Every load balancer runs a responder on the VIP that answers with its name; the client
//! probes the VIP on new connections every 10 ms while the master (lb1, priority 150) is
//! faulted 300 ms in; the fault is undone 3 s later and the run watched 2 s more. A sampler
//! reads who answers for the VIP (see [`Lab::answers`]) all along. It prints figures and
//! ratios; it never fails on them.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::Host;
use crate::cluster::{Timing, node_id};
use crate::faults::Cut;
use crate::probe::{ProbeArgs, ProbeTarget};
use crate::process::LabProcess;
use crate::routers::{Implementation, Instance};
use crate::topology::{BACKEND_HTTP_PORT, HostRole, Lab, LabError, Topology, vip};

/// When the fault strikes, after the probe starts.
const FAULT_AT: Duration = Duration::from_millis(300);
/// How long the fault lasts before it is undone (a partition healed, a paused process
/// resumed).
const FAULT_FOR: Duration = Duration::from_secs(3);
/// How long the run is watched after the fault is undone.
const AFTER: Duration = Duration::from_secs(2);
const VRID: u8 = 51;

/// A fault of the VIP's master.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The host drops off the link and its router is killed; for Fulcrum, the master is not
    /// the Raft leader.
    HostCrash,
    /// As `HostCrash`, with the master also the Raft leader (Fulcrum only).
    LeaderHostCrash,
    /// The router and the data plane killed with SIGKILL, the host up.
    ProcessCrash,
    /// Every packet between the master and its peers dropped; the client still reaches it.
    Partition,
    /// Only VRRP between the master and its peers dropped.
    VrrpLoss,
    /// The router and the data plane paused with SIGSTOP, then resumed.
    Pause,
}

impl Fault {
    /// Every fault, in the table's order.
    pub const ALL: [Fault; 6] = [
        Fault::HostCrash,
        Fault::LeaderHostCrash,
        Fault::ProcessCrash,
        Fault::Partition,
        Fault::VrrpLoss,
        Fault::Pause,
    ];

    fn applies_to(self, implementation: Implementation) -> bool {
        self != Fault::LeaderHostCrash || implementation == Implementation::Fulcrumd
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Fault::HostCrash => "host crash",
            Fault::LeaderHostCrash => "host crash, master leads Raft",
            Fault::ProcessCrash => "process crash (SIGKILL)",
            Fault::Partition => "master partitioned",
            Fault::VrrpLoss => "VRRP lost only",
            Fault::Pause => "paused 3 s (SIGSTOP)",
        })
    }
}

/// What one run measured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultRun {
    /// The client's longest gap between successes, in milliseconds.
    pub outage_ms: u64,
    /// Probes that failed.
    pub failed: u64,
    /// How long two or more load balancers answered for the VIP at once, in milliseconds.
    pub two_answering_ms: u64,
}

/// The runs of one router under one fault.
#[derive(Clone, Debug)]
pub struct FaultSeries {
    /// The router measured.
    pub implementation: Implementation,
    /// The fault.
    pub fault: Fault,
    /// One entry per run.
    pub runs: Vec<FaultRun>,
}

fn median(mut values: Vec<u64>) -> Option<u64> {
    values.sort_unstable();
    values.get(values.len() / 2).copied()
}

impl FaultSeries {
    /// Median outage, median failed probes, median and longest time with two answering.
    pub fn summary(&self) -> Option<(u64, u64, u64, u64)> {
        let outage = median(self.runs.iter().map(|r| r.outage_ms).collect())?;
        let failed = median(self.runs.iter().map(|r| r.failed).collect())?;
        let two = median(self.runs.iter().map(|r| r.two_answering_ms).collect())?;
        let longest = self.runs.iter().map(|r| r.two_answering_ms).max()?;
        Some((outage, failed, two, longest))
    }
}

/// Runs every fault `runs` times for each router in one fresh lab.
pub fn faults(
    lab_binary: &std::path::Path,
    faults: &[Fault],
    runs: usize,
) -> Result<Vec<FaultSeries>, LabError> {
    let lab = Lab::up(&Topology { load_balancers: 3, backends: 0, prefix: None }, lab_binary)?;
    let lbs = lab.hosts_of(HostRole::LoadBalancer);
    let responder =
        |lb: &Host| lab.start_vip_responder(lb, SocketAddr::from((vip(1), BACKEND_HTTP_PORT)));
    let mut responders = lbs.iter().map(responder).collect::<Result<Vec<_>, _>>()?;
    let mut all = Vec::new();
    for &fault in faults {
        for implementation in [Implementation::Fulcrumd, Implementation::Keepalived] {
            if !fault.applies_to(implementation) {
                continue;
            }
            let mut series = FaultSeries { implementation, fault, runs: Vec::new() };
            for run in 1..=runs {
                let measured = one_run(&lab, implementation, fault, &mut responders);
                reset(&lab, &lbs)?;
                for (lb, process) in lbs.iter().zip(responders.iter_mut()) {
                    if !process.running() {
                        *process = responder(lb)?;
                    }
                }
                let measured = measured?;
                eprintln!(
                    "{implementation}, {fault}: run {run}/{runs}: outage {} ms, {} failed, two answering {} ms",
                    measured.outage_ms, measured.failed, measured.two_answering_ms
                );
                series.runs.push(measured);
            }
            all.push(series);
        }
    }
    lab.down()?;
    Ok(all)
}

/// The routers of a run, lb1's first.
fn start_routers(
    lab: &Lab,
    lbs: &[Host],
    implementation: Implementation,
) -> Result<Vec<LabProcess>, LabError> {
    (0..lbs.len()).map(|index| start_router(lab, lbs, implementation, index)).collect()
}

fn start_router(
    lab: &Lab,
    lbs: &[Host],
    implementation: Implementation,
    index: usize,
) -> Result<LabProcess, LabError> {
    let instances = [Instance::ranked(VRID, index, &[vip(1)])];
    match implementation {
        Implementation::Fulcrumd => {
            lab.start_cluster_node(Timing::Defaults, &lbs[index], lbs, &instances, &[])
        }
        Implementation::Keepalived => lab.start_router(&lbs[index], implementation, &instances),
    }
}

/// For Fulcrum, picks the master to fault so it leads Raft or not, as `leads` says: lb1 if it
/// fits, else the VIP is moved (`fulcrumctl failover --to`) to a node that does. Returns the
/// master's index.
fn choose_master(lab: &Lab, lbs: &[Host], leads: bool) -> Result<usize, LabError> {
    let client = lab.host("client")?;
    let asked: Vec<&Host> = lbs.iter().collect();
    let leader = lab.agreed_leader(&client, &asked, Duration::from_secs(15))?;
    let Some(leader_index) = lbs.iter().position(|lb| node_id(lb) == leader) else {
        return Err(LabError::Invalid(format!("the Raft leader {leader} is no load balancer")));
    };
    let master = match (leads, leader_index) {
        (true, leader) => leader,
        (false, 0) => 1,
        (false, _) => 0,
    };
    if master != 0 {
        let to = node_id(&lbs[master]).to_string();
        let vrid = VRID.to_string();
        let moved =
            lab.fulcrumctl(&client, &[&lbs[0]], None, &["failover", "--vrid", &vrid, "--to", &to])?;
        if !moved.ok() {
            return Err(LabError::Invalid(format!("fulcrumctl failover failed: {moved:?}")));
        }
    }
    Ok(master)
}

/// One run; `responders` serve the VIP on each load balancer, the data plane a process
/// crash or a pause takes down with the router.
fn one_run(
    lab: &Lab,
    implementation: Implementation,
    fault: Fault,
    responders: &mut [LabProcess],
) -> Result<FaultRun, LabError> {
    let lbs = lab.hosts_of(HostRole::LoadBalancer);
    let client = lab.host("client")?;
    let mut routers = start_routers(lab, &lbs, implementation)?;
    wait_for_only(lab, &lbs, &lbs[0], Duration::from_secs(20))?;
    let master = match implementation {
        Implementation::Fulcrumd => choose_master(lab, &lbs, fault == Fault::LeaderHostCrash)?,
        Implementation::Keepalived => 0,
    };
    wait_for_only(lab, &lbs, &lbs[master], Duration::from_secs(20))?;

    let target = ProbeTarget::Http {
        address: SocketAddr::from((vip(1), BACKEND_HTTP_PORT)),
        path: "/".into(),
    };
    let mut args = ProbeArgs::new(target, Duration::from_millis(10), FAULT_AT + FAULT_FOR + AFTER);
    // Short, so a probe that waits on a dead node does not hide when the VIP came back.
    args.timeout = Duration::from_millis(30);
    let probe = lab.start_probe(&client, &args)?;
    let sampling = AtomicBool::new(true);
    let (two_answering, injected) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| time_with_two_answering(lab, &lbs, vip(1), &sampling));
        let processes = [&mut routers[master], &mut responders[master]];
        let injected = inject(lab, &lbs, master, processes, fault);
        sampling.store(false, Ordering::Relaxed);
        (sampler.join(), injected)
    });
    let report = probe.finish()?;
    injected?;
    let two_answering =
        two_answering.map_err(|_| LabError::Invalid("the sampler panicked".into()))??;
    for process in &mut routers {
        let _ = process.signal_group(nix::sys::signal::Signal::SIGCONT);
        let _ = process.stop();
    }
    Ok(FaultRun {
        outage_ms: report.longest_outage_ms,
        failed: report.failures,
        two_answering_ms: two_answering.as_millis() as u64,
    })
}

/// Strikes the master, `lbs[master]`, whose router and data plane are `processes`, with
/// `fault` at [`FAULT_AT`], undoes it [`FAULT_FOR`] later, and returns once the run's watch
/// is over.
fn inject(
    lab: &Lab,
    lbs: &[Host],
    master: usize,
    processes: [&mut LabProcess; 2],
    fault: Fault,
) -> Result<(), LabError> {
    use nix::sys::signal::Signal;
    let started = Instant::now();
    std::thread::sleep(FAULT_AT);
    let master = &lbs[master];
    let [router, data_plane] = processes;
    match fault {
        Fault::HostCrash | Fault::LeaderHostCrash => lab.crash(master, router)?,
        Fault::ProcessCrash => {
            router.crash()?;
            data_plane.crash()?;
        }
        Fault::Partition => lab.partition(master, lbs, Cut::Whole)?,
        Fault::VrrpLoss => lab.partition(master, lbs, Cut::VrrpOnly)?,
        Fault::Pause => {
            router.signal_group(Signal::SIGSTOP)?;
            data_plane.signal_group(Signal::SIGSTOP)?;
        }
    }
    std::thread::sleep((FAULT_AT + FAULT_FOR).saturating_sub(started.elapsed()));
    match fault {
        Fault::Partition | Fault::VrrpLoss => lab.heal(master)?,
        Fault::Pause => {
            router.signal_group(Signal::SIGCONT)?;
            data_plane.signal_group(Signal::SIGCONT)?;
        }
        Fault::HostCrash | Fault::LeaderHostCrash | Fault::ProcessCrash => {}
    }
    std::thread::sleep((FAULT_AT + FAULT_FOR + AFTER).saturating_sub(started.elapsed()));
    Ok(())
}

/// Samples who answers for `vip` while `sampling` is set; each sample with two or more
/// counts for the time since the previous sample.
fn time_with_two_answering(
    lab: &Lab,
    hosts: &[Host],
    vip: Ipv4Addr,
    sampling: &AtomicBool,
) -> Result<Duration, LabError> {
    let mut total = Duration::ZERO;
    let mut last = Instant::now();
    // Bounded: the run ends within seconds; the cap only guards against a stuck flag.
    let deadline = last + FAULT_AT + FAULT_FOR + AFTER + Duration::from_secs(30);
    while sampling.load(Ordering::Relaxed) && Instant::now() < deadline {
        let answering = lab.answering(hosts, vip)?;
        let now = Instant::now();
        if answering.len() >= 2 {
            total += now - last;
        }
        last = now;
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(total)
}

/// Waits until `host` alone of `hosts` answers for the VIP.
fn wait_for_only(
    lab: &Lab,
    hosts: &[Host],
    host: &Host,
    timeout: Duration,
) -> Result<(), LabError> {
    let deadline = Instant::now() + timeout;
    loop {
        let answering = lab.answering(hosts, vip(1))?;
        if answering == [host.name.clone()] {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(LabError::Invalid(format!(
                "{} did not come to answer alone for the VIP within {timeout:?}: {answering:?}",
                host.name
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Back to the start: every host on the link, no partition, no VIP, no fence table, no Raft
/// state, no pid file.
fn reset(lab: &Lab, lbs: &[Host]) -> Result<(), LabError> {
    for lb in lbs {
        lab.heal(lb)?;
        lab.reboot(lb, &[vip(1)])?;
        for family in ["ip", "arp"] {
            let tables = lab.exec(lb, "nft", &["list", "tables", family])?;
            if tables.lines().any(|line| line.trim() == format!("table {family} fulcrum")) {
                lab.exec(lb, "nft", &["delete", "table", family, "fulcrum"])?;
            }
        }
        // A killed keepalived leaves its pid files, and the next one would refuse to start.
        for suffix in ["keepalived.pid", "keepalived-vrrp.pid"] {
            let _ = std::fs::remove_file(lab.log_dir().join(format!("{}-{suffix}", lb.name)));
        }
        let data = lab.raft_data_dir(lb);
        if data.exists() {
            std::fs::remove_dir_all(&data).map_err(|source| LabError::Io {
                what: format!("remove {}", data.display()),
                source,
            })?;
        }
    }
    Ok(())
}

/// The figures as a table: per fault, each router's median outage and failed probes, and
/// the time with two answering (median and longest), with Fulcrum's outage over
/// keepalived's.
pub fn report(series: &[FaultSeries]) -> String {
    let mut text = String::from(
        "| fault | router | outage median ms | failed probes median | two answering median ms | two answering max ms | runs | outage vs keepalived |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for one in series {
        let Some((outage, failed, two, longest)) = one.summary() else { continue };
        let reference = series
            .iter()
            .find(|other| {
                other.implementation == Implementation::Keepalived
                    && (other.fault == one.fault
                        || (one.fault == Fault::LeaderHostCrash && other.fault == Fault::HostCrash))
            })
            .and_then(FaultSeries::summary)
            .map(|(outage, ..)| outage);
        let ratio = match reference {
            Some(reference) if reference > 0 => format!("{:.2}", outage as f64 / reference as f64),
            _ => "-".into(),
        };
        let _ = writeln!(
            text,
            "| {} | {} | {outage} | {failed} | {two} | {longest} | {} | {ratio} |",
            one.fault,
            one.implementation,
            one.runs.len()
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(outage_ms: u64, failed: u64, two_answering_ms: u64) -> FaultRun {
        FaultRun { outage_ms, failed, two_answering_ms }
    }

    #[test]
    fn the_report_gives_medians_the_longest_overlap_and_the_ratio_to_keepalived() {
        let fulcrum = FaultSeries {
            implementation: Implementation::Fulcrumd,
            fault: Fault::LeaderHostCrash,
            runs: vec![run(500, 40, 0), run(400, 30, 0), run(450, 35, 0)],
        };
        let keepalived = FaultSeries {
            implementation: Implementation::Keepalived,
            fault: Fault::HostCrash,
            runs: vec![run(300, 20, 0), run(350, 25, 10), run(900, 60, 0)],
        };
        let table = report(&[fulcrum, keepalived]);
        assert!(
            table.contains(
                "| host crash, master leads Raft | fulcrumd | 450 | 35 | 0 | 0 | 3 | 1.29 |"
            ),
            "{table}"
        );
        assert!(
            table.contains("| host crash | keepalived | 350 | 25 | 0 | 10 | 3 | 1.00 |"),
            "{table}"
        );
    }
}
