//! The chaos suite: a seeded random schedule of faults on a three-node Fulcrum cluster at its
//! default settings, with the invariants checked all along.
//!
//! While faults strike (a node partitioned whole, VRRP-only loss, one-way loss, SIGSTOP then
//! SIGCONT, SIGKILL then restart, a host crash then its return, the Raft leader killed, a node
//! whose data directory was wiped removed from the membership and added back), the
//! client probes the VIP on new connections every 10 ms, a writer changes one configuration
//! value with `fulcrumctl ... --wait` and a reader reads it back, and a sampler reads who
//! answers for the VIP on every node. The invariants:
//! - at most one node answers for the VIP at any sample;
//! - every acknowledged write is applied on every node at the end;
//! - the history of reads and writes is linearizable ([`crate::linearizability`]).
//!
//! Each fault is undone after 1 to 3 s, and the next starts once the cluster recovered (one
//! node answering, one Raft leader). The same seed gives the same schedule.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::Host;
use crate::cluster::{Timing, node_id, web_cluster_file};
use crate::faults::Cut;
use crate::linearizability::{self, Entry, Op};
use crate::probe::{ProbeArgs, ProbeTarget};
use crate::process::LabProcess;
use crate::routers::Instance;
use crate::topology::{HostRole, Lab, LabError, Topology, vip};

const VRID: u8 = 51;
const FRONT_PORT: u16 = 80;
/// The rate-limit policy whose limit is the register the writer and reader use.
const REGISTER: &str = "chaos";
/// How long the cluster may take to recover from a fault before that counts against it.
const RECOVERY: Duration = Duration::from_secs(20);
/// The most faults one run schedules, whatever its length.
const MAX_FAULTS: usize = 1000;

/// A kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ChaosFault {
    /// A node cut off from its peers, whole.
    Partition,
    /// Only VRRP lost between a node and its peers.
    VrrpLoss,
    /// A node hears nothing from its peers; they still hear it.
    OneWayLoss,
    /// A node's fulcrumd paused, then resumed.
    Pause,
    /// A node's fulcrumd killed, then started again.
    KillRestart,
    /// A node's host off the link with fulcrumd killed, then back and started again.
    HostCrash,
    /// The Raft leader's fulcrumd killed, then started again.
    LeaderKill,
    /// A node killed, removed from the Raft membership and its data directory wiped, then
    /// started empty and added back (`fulcrumctl member add`, `member promote`), as the
    /// operator guide says to bring back a node that lost its disk.
    WipeRejoin,
}

impl ChaosFault {
    const ALL: [ChaosFault; 8] = [
        ChaosFault::Partition,
        ChaosFault::VrrpLoss,
        ChaosFault::OneWayLoss,
        ChaosFault::Pause,
        ChaosFault::KillRestart,
        ChaosFault::HostCrash,
        ChaosFault::LeaderKill,
        ChaosFault::WipeRejoin,
    ];
}

impl std::fmt::Display for ChaosFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChaosFault::Partition => "partition",
            ChaosFault::VrrpLoss => "VRRP-only loss",
            ChaosFault::OneWayLoss => "one-way loss",
            ChaosFault::Pause => "SIGSTOP/SIGCONT",
            ChaosFault::KillRestart => "SIGKILL, restart",
            ChaosFault::HostCrash => "host crash, return",
            ChaosFault::LeaderKill => "Raft leader killed",
            ChaosFault::WipeRejoin => "data wiped, rejoined",
        })
    }
}

/// What one fault cost.
#[derive(Clone, Debug)]
pub struct FaultOutcome {
    /// The fault.
    pub fault: ChaosFault,
    /// The node struck.
    pub target: String,
    /// The longest stretch two nodes answered for the VIP, in milliseconds.
    pub two_answering_ms: u64,
    /// The client's longest gap between successes, in milliseconds.
    pub outage_ms: u64,
    /// Probes that failed.
    pub failed: u64,
    /// Whether the cluster recovered within [`RECOVERY`] after the fault was undone.
    pub recovered: bool,
}

/// A whole run's findings.
#[derive(Clone, Debug, Default)]
pub struct ChaosReport {
    /// The seed.
    pub seed: u64,
    /// Every fault, in order.
    pub faults: Vec<FaultOutcome>,
    /// Each broken invariant, said in words.
    pub violations: Vec<String>,
    /// Reads and writes recorded, and how many of the writes were acknowledged.
    pub operations: (usize, usize),
    /// Samples of who answers, and their median spacing in milliseconds.
    pub samples: (usize, u64),
}

/// The reads and writes of the register, with times from the run's start.
struct History {
    started: Instant,
    entries: Mutex<Vec<Entry>>,
    /// The highest revision an acknowledged write reported.
    acknowledged: Mutex<u64>,
}

impl History {
    fn record(&self, entry: Entry) {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).push(entry);
    }
}

/// Clears `running` when dropped, so the helper threads end even if the schedule fails.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// Runs the chaos suite for `duration` with `seed`.
pub fn run(
    lab_binary: &std::path::Path,
    duration: Duration,
    seed: u64,
) -> Result<ChaosReport, LabError> {
    let lab = Lab::up(&Topology { load_balancers: 3, backends: 1, prefix: None }, lab_binary)?;
    let result = run_in(&lab, duration, seed);
    lab.down()?;
    result
}

fn start_node(lab: &Lab, lbs: &[Host], index: usize) -> Result<LabProcess, LabError> {
    let instance = Instance::ranked(VRID, index, &[vip(1)]);
    lab.start_cluster_node(Timing::Defaults, &lbs[index], lbs, &[instance], &[])
}

fn run_in(lab: &Lab, duration: Duration, seed: u64) -> Result<ChaosReport, LabError> {
    let lbs = lab.hosts_of(HostRole::LoadBalancer);
    let client = lab.host("client")?;
    let _backends = lab.start_backends()?;
    let backends = lab.hosts_of(HostRole::Backend);
    let mut nodes =
        (0..lbs.len()).map(|i| start_node(lab, &lbs, i)).collect::<Result<Vec<_>, _>>()?;
    let all: Vec<&Host> = lbs.iter().collect();
    lab.agreed_leader(&client, &all, Duration::from_secs(20))?;
    let backend_refs: Vec<&Host> = backends.iter().collect();
    let file = lab.lab_file("chaos-cluster.toml", &web_cluster_file(FRONT_PORT, &backend_refs))?;
    let applied = lab.fulcrumctl(&client, &all, None, &["apply", "-f", &file, "--wait"])?;
    if !applied.ok() {
        return Err(LabError::Invalid(format!("the cluster file was not applied: {applied:?}")));
    }
    wait_recovered(lab, &lbs, &client, RECOVERY)?;

    let mut report = ChaosReport { seed, ..ChaosReport::default() };
    let history = History {
        started: Instant::now(),
        entries: Mutex::new(Vec::new()),
        acknowledged: Mutex::new(0),
    };
    let running = AtomicBool::new(true);
    let answering_log: Mutex<Vec<(Duration, usize)>> = Mutex::new(Vec::new());
    let scheduled = std::thread::scope(|scope| {
        let sampler =
            scope.spawn(|| sample_answering(lab, &lbs, &history, &running, &answering_log));
        let writer = scope.spawn(|| write_register(lab, &client, &lbs, &history, &running));
        let reader = scope.spawn(|| read_register(lab, &client, &lbs, &history, &running));
        let stop = StopOnDrop(&running);
        let faults =
            schedule(lab, &lbs, &client, &mut nodes, duration, seed, &history, &answering_log);
        drop(stop);
        let joined = |thread: std::thread::ScopedJoinHandle<'_, Result<(), LabError>>, what| {
            thread.join().unwrap_or_else(|_| Err(LabError::Invalid(format!("the {what} panicked"))))
        };
        let helpers =
            [joined(sampler, "sampler"), joined(writer, "writer"), joined(reader, "reader")];
        (faults, helpers)
    });
    let (faults, helpers) = scheduled;
    report.faults = faults?;
    for helper in helpers {
        helper?;
    }

    // Two answering at any sample is a violation.
    let log = answering_log.into_inner().unwrap_or_default();
    for (at, count) in log.iter().filter(|(_, count)| *count >= 2) {
        report.violations.push(format!("{count} nodes answered for the VIP at {at:?}"));
    }
    let mut spacing: Vec<u64> =
        log.windows(2).map(|w| (w[1].0.saturating_sub(w[0].0)).as_millis() as u64).collect();
    spacing.sort_unstable();
    report.samples = (log.len(), spacing.get(spacing.len() / 2).copied().unwrap_or(0));

    // Every acknowledged write on every node.
    let acknowledged = *history.acknowledged.lock().unwrap_or_else(|e| e.into_inner());
    for (lb, revision) in lbs.iter().zip(revisions_at_least(lab, &client, &lbs, acknowledged)) {
        if revision < acknowledged {
            report.violations.push(format!(
                "{} serves revision {revision}, older than the acknowledged {acknowledged}",
                lb.name
            ));
        }
    }

    let entries = history.entries.into_inner().unwrap_or_else(|e| e.into_inner());
    let writes = entries.iter().filter(|e| matches!(e.op, Op::Write(_)) && e.ret.is_some());
    report.operations = (entries.len(), writes.count());
    match check_in_thread(entries) {
        Ok(Ok(())) => {}
        Ok(Err(violation)) => report.violations.push(violation.to_string()),
        Err(error) => report.violations.push(format!("linearizability not decided: {error}")),
    }
    for node in &mut nodes {
        let _ = node.signal(Signal::SIGCONT);
        let _ = node.stop();
    }
    Ok(report)
}

/// The linearizability check, on a thread with a stack for a deep search.
fn check_in_thread(entries: Vec<Entry>) -> Result<Result<(), linearizability::Violation>, String> {
    std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(move || linearizability::check(&entries, 5_000_000))
        .map_err(|e| format!("no thread for the check: {e}"))?
        .join()
        .map_err(|_| "the check panicked".to_owned())?
}

/// Each node's served revision, as `fulcrumctl status` reports them, waiting up to 15 s for
/// all to reach `wanted`.
fn revisions_at_least(lab: &Lab, client: &Host, lbs: &[Host], wanted: u64) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let all: Vec<&Host> = lbs.iter().collect();
    loop {
        let status = lab
            .fulcrumctl(client, &all, None, &["-o", "json", "status"])
            .ok()
            .and_then(|output| output.json().ok());
        let nodes = status.as_ref().and_then(|s| s["nodes"].as_array().cloned());
        let nodes = nodes.unwrap_or_default();
        let revisions: Vec<u64> = lbs
            .iter()
            .map(|lb| {
                nodes
                    .iter()
                    .find(|node| node["id"].as_u64() == Some(node_id(lb)))
                    .and_then(|node| node["status"]["revision"].as_u64())
                    .unwrap_or(0)
            })
            .collect();
        if revisions.iter().all(|r| *r >= wanted) || Instant::now() >= deadline {
            return revisions;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Samples who answers for the VIP, every node at once, as fast as the commands allow, until
/// `running` clears. An overlap shorter than the time between samples can go unseen.
fn sample_answering(
    lab: &Lab,
    lbs: &[Host],
    history: &History,
    running: &AtomicBool,
    log: &Mutex<Vec<(Duration, usize)>>,
) -> Result<(), LabError> {
    while running.load(Ordering::Relaxed) {
        let answering = lab.answering(lbs, vip(1))?.len();
        let at = history.started.elapsed();
        log.lock().unwrap_or_else(|e| e.into_inner()).push((at, answering));
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// The nodes in the order the `turn`th call tries them: each call starts at another node.
fn rotated(lbs: &[Host], turn: usize) -> Vec<&Host> {
    (0..lbs.len()).map(|i| &lbs[(turn + i) % lbs.len()]).collect()
}

/// Writes 1, 2, 3, … to the register with `fulcrumctl ... --wait` until `running` clears,
/// recording every call and outcome.
fn write_register(
    lab: &Lab,
    client: &Host,
    lbs: &[Host],
    history: &History,
    running: &AtomicBool,
) -> Result<(), LabError> {
    let mut value = 0u64;
    while running.load(Ordering::Relaxed) {
        value += 1;
        let limit = value.to_string();
        let args = [
            "--timeout",
            "2s",
            "ratelimit",
            "set",
            REGISTER,
            "--key",
            "client_ip",
            "--sliding-window",
            &limit,
            "--window",
            "1s",
            "--wait",
        ];
        let call = history.started.elapsed();
        let output = lab.fulcrumctl(client, &rotated(lbs, value as usize), None, &args)?;
        // A reported revision means committed (exit code 6 only says some node had not
        // applied it in time); otherwise the outcome is unknown.
        let revision = output
            .stdout
            .split("(revision ")
            .nth(1)
            .and_then(|rest| rest.split(')').next())
            .and_then(|r| r.parse::<u64>().ok());
        let ret = revision.map(|revision| {
            let mut acknowledged = history.acknowledged.lock().unwrap_or_else(|e| e.into_inner());
            *acknowledged = (*acknowledged).max(revision);
            history.started.elapsed()
        });
        history.record(Entry { op: Op::Write(value), call, ret });
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Reads the register with `fulcrumctl ratelimit list` until `running` clears, while the
/// writer writes, recording every call and outcome.
fn read_register(
    lab: &Lab,
    client: &Host,
    lbs: &[Host],
    history: &History,
    running: &AtomicBool,
) -> Result<(), LabError> {
    let mut turn = 0usize;
    while running.load(Ordering::Relaxed) {
        turn += 1;
        let args = ["--timeout", "2s", "-o", "json", "ratelimit", "list"];
        let call = history.started.elapsed();
        let output = lab.fulcrumctl(client, &rotated(lbs, turn), None, &args)?;
        let read = output.ok().then(|| output.json().ok()).flatten().map(|policies| {
            policies.as_array().and_then(|all| {
                all.iter().find(|p| p["name"] == REGISTER).and_then(|p| p["limit"].as_u64())
            })
        });
        let ret = read.is_some().then(|| history.started.elapsed());
        history.record(Entry { op: Op::Read(read.flatten()), call, ret });
        std::thread::sleep(Duration::from_millis(30));
    }
    Ok(())
}

/// Waits until one node answers for the VIP and the nodes agree on a Raft leader.
fn wait_recovered(
    lab: &Lab,
    lbs: &[Host],
    client: &Host,
    within: Duration,
) -> Result<(), LabError> {
    let deadline = Instant::now() + within;
    loop {
        let answering = lab.answering(lbs, vip(1))?;
        let all: Vec<&Host> = lbs.iter().collect();
        if answering.len() == 1 && lab.agreed_leader(client, &all, Duration::ZERO).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(LabError::Invalid(format!(
                "not recovered within {within:?}: {answering:?} answer for the VIP"
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Strikes the cluster with faults until `duration` has passed, one at a time.
#[allow(clippy::too_many_arguments)] // The run's shared parts, passed rather than bundled once.
fn schedule(
    lab: &Lab,
    lbs: &[Host],
    client: &Host,
    nodes: &mut [LabProcess],
    duration: Duration,
    seed: u64,
    history: &History,
    answering_log: &Mutex<Vec<(Duration, usize)>>,
) -> Result<Vec<FaultOutcome>, LabError> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let started = Instant::now();
    let mut outcomes = Vec::new();
    // Every kind once per round, in a shuffled order, so a short run sees them all.
    let mut round: Vec<ChaosFault> = Vec::new();
    while started.elapsed() < duration && outcomes.len() < MAX_FAULTS {
        if round.is_empty() {
            round = ChaosFault::ALL.to_vec();
            rng.shuffle(&mut round);
        }
        let fault = round.pop().unwrap_or(ChaosFault::Partition);
        let hold = Duration::from_millis(rng.u64(1000..=3000));
        let target = match fault {
            ChaosFault::LeaderKill => {
                let all: Vec<&Host> = lbs.iter().collect();
                let leader = lab.agreed_leader(client, &all, Duration::from_secs(5))?;
                lbs.iter().position(|lb| node_id(lb) == leader).unwrap_or(0)
            }
            _ => rng.usize(..lbs.len()),
        };
        eprintln!(
            "chaos: {:?} in: {fault} on {} for {hold:?}",
            started.elapsed(),
            lbs[target].name
        );
        let target_address = SocketAddr::from((vip(1), FRONT_PORT));
        let mut args = ProbeArgs::new(
            ProbeTarget::Http { address: target_address, path: "/".into() },
            Duration::from_millis(10),
            hold + Duration::from_secs(4),
        );
        args.timeout = Duration::from_millis(100);
        let probe = lab.start_probe(client, &args)?;
        let from = history.started.elapsed();
        strike(lab, lbs, client, nodes, target, fault, true)?;
        std::thread::sleep(hold);
        strike(lab, lbs, client, nodes, target, fault, false)?;
        let recovered = wait_recovered(lab, lbs, client, RECOVERY);
        let report = probe.finish()?;
        let to = history.started.elapsed();
        if let Err(error) = &recovered {
            eprintln!("chaos: {error}");
        }
        let log = answering_log.lock().unwrap_or_else(|e| e.into_inner());
        outcomes.push(FaultOutcome {
            fault,
            target: lbs[target].name.clone(),
            two_answering_ms: longest_two_answering(&log, from, to).as_millis() as u64,
            outage_ms: report.longest_outage_ms,
            failed: report.failures,
            recovered: recovered.is_ok(),
        });
        drop(log);
        std::thread::sleep(Duration::from_millis(rng.u64(500..=1500)));
    }
    Ok(outcomes)
}

/// The longest run of samples with two or more answering between `from` and `to`, from its
/// first such sample to the next sample with fewer (or `to`).
fn longest_two_answering(log: &[(Duration, usize)], from: Duration, to: Duration) -> Duration {
    let mut longest = Duration::ZERO;
    let mut since: Option<Duration> = None;
    for &(at, count) in log.iter().filter(|(at, _)| *at >= from && *at <= to) {
        match (count >= 2, since) {
            (true, None) => since = Some(at),
            (false, Some(start)) => {
                longest = longest.max(at - start);
                since = None;
            }
            _ => {}
        }
    }
    since.map_or(longest, |start| longest.max(to.saturating_sub(start)))
}

/// Applies (`on`) or undoes a fault on `lbs[target]`; `client` runs `fulcrumctl`.
fn strike(
    lab: &Lab,
    lbs: &[Host],
    client: &Host,
    nodes: &mut [LabProcess],
    target: usize,
    fault: ChaosFault,
    on: bool,
) -> Result<(), LabError> {
    let host = &lbs[target];
    let others: Vec<&Host> = lbs.iter().filter(|h| h.name != host.name).collect();
    let ctl = |args: &[&str]| -> Result<(), LabError> {
        let output = lab.fulcrumctl(client, &others, None, args)?;
        if output.ok() {
            Ok(())
        } else {
            Err(LabError::Invalid(format!("fulcrumctl {args:?} failed: {output:?}")))
        }
    };
    let id = node_id(host).to_string();
    match (fault, on) {
        (ChaosFault::WipeRejoin, true) => {
            nodes[target].crash()?;
            ctl(&["member", "remove", &id])?;
            let data = lab.raft_data_dir(host);
            std::fs::remove_dir_all(&data).map_err(|source| LabError::Io {
                what: format!("remove {}", data.display()),
                source,
            })
        }
        (ChaosFault::WipeRejoin, false) => {
            let instance = Instance::ranked(VRID, target, &[vip(1)]);
            // Empty, it joins rather than starting a cluster of its own.
            nodes[target] =
                lab.start_cluster_node(Timing::Defaults, host, &[], &[instance], &[])?;
            let address = format!("{}:{}", host.address, crate::cluster::RAFT_PORT);
            ctl(&["member", "add", &id, &address])?;
            // A learner is promoted once it caught up: a few tries.
            let mut promoted = ctl(&["member", "promote", &id]);
            for _ in 0..20 {
                if promoted.is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(500));
                promoted = ctl(&["member", "promote", &id]);
            }
            promoted
        }
        (ChaosFault::Partition, true) => lab.partition(host, lbs, Cut::Whole),
        (ChaosFault::VrrpLoss, true) => lab.partition(host, lbs, Cut::VrrpOnly),
        (ChaosFault::OneWayLoss, true) => lab.partition(host, lbs, Cut::Incoming),
        (ChaosFault::Partition | ChaosFault::VrrpLoss | ChaosFault::OneWayLoss, false) => {
            lab.heal(host)
        }
        (ChaosFault::Pause, true) => nodes[target].signal(Signal::SIGSTOP),
        (ChaosFault::Pause, false) => nodes[target].signal(Signal::SIGCONT),
        (ChaosFault::KillRestart | ChaosFault::LeaderKill, true) => nodes[target].crash().map(drop),
        (ChaosFault::HostCrash, true) => lab.crash(host, &mut nodes[target]),
        (ChaosFault::KillRestart | ChaosFault::LeaderKill, false) => {
            nodes[target] = start_node(lab, lbs, target)?;
            Ok(())
        }
        (ChaosFault::HostCrash, false) => {
            lab.reboot(host, &[vip(1)])?;
            nodes[target] = start_node(lab, lbs, target)?;
            Ok(())
        }
    }
}

/// The run as a table per fault kind, then the violations.
pub fn table(report: &ChaosReport) -> String {
    let mut text = format!(
        "chaos run, seed {}: {} faults, {} operations ({} acknowledged writes), {} samples of who answers (median spacing {} ms)\n\n\
         | fault | count | longest two answering ms | outage p50 ms | outage max ms | failed requests | not recovered in 20 s |\n\
         |---|---|---|---|---|---|---|\n",
        report.seed,
        report.faults.len(),
        report.operations.0,
        report.operations.1,
        report.samples.0,
        report.samples.1,
    );
    for kind in ChaosFault::ALL {
        let of_kind: Vec<&FaultOutcome> =
            report.faults.iter().filter(|f| f.fault == kind).collect();
        if of_kind.is_empty() {
            continue;
        }
        let mut outages: Vec<u64> = of_kind.iter().map(|f| f.outage_ms).collect();
        outages.sort_unstable();
        let _ = writeln!(
            text,
            "| {kind} | {} | {} | {} | {} | {} | {} |",
            of_kind.len(),
            of_kind.iter().map(|f| f.two_answering_ms).max().unwrap_or(0),
            outages[outages.len() / 2],
            outages.last().copied().unwrap_or(0),
            of_kind.iter().map(|f| f.failed).sum::<u64>(),
            of_kind.iter().filter(|f| !f.recovered).count(),
        );
    }
    let _ = writeln!(text, "\nviolations: {}", report.violations.len());
    for violation in &report.violations {
        let _ = writeln!(text, "- {violation}");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overlap_lasts_from_its_first_sample_to_the_next_without() {
        let ms = Duration::from_millis;
        let log = [(ms(0), 1), (ms(10), 2), (ms(20), 2), (ms(35), 2), (ms(40), 1), (ms(50), 2)];
        assert_eq!(longest_two_answering(&log, ms(0), ms(45)), ms(30));
        assert_eq!(longest_two_answering(&log, ms(0), ms(100)), ms(50), "still two at the end");
        assert_eq!(longest_two_answering(&log, ms(40), ms(49)), Duration::ZERO);
    }
}
