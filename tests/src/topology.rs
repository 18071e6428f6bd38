//! The lab topology: load-balancer, backend and client hosts on one bridge, and the [`Lab`]
//! guard that owns them.
//!
//! ```text
//!            <prefix>-sw  (namespace holding bridge br0)
//!        ┌────────┬──────┴──┬─────────┬──────────┐
//!   <prefix>-lb1  …lb2   …be1       …be2     …client       one veth each, eth0 inside
//!   198.18.0.11   .12    198.18.0.21  .22    198.18.0.2   VIPs from 198.18.0.100
//!   2001:db8:18::b …       (the IPv4 address's last byte)                from 2001:db8:18::100
//! ```
//!
//! Every name starts with the run's prefix and every address is in 198.18.0.0/24 or
//! 2001:db8:18::/64 (each host also has its link-local address, without duplicate address
//! detection, so it is usable at once), so runs never collide with each other or with the
//! host. The bridge lives in a namespace of its own:
//! the host's root namespace is never touched.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::netns;
use crate::probe::{ProbeArgs, ProbeReport};
use crate::process::{self, LabProcess, ProcessRecord};

/// Where each lab records what it made, so `fulcrum-lab down` can remove it.
pub const STATE_DIR: &str = "/run/fulcrum-lab";
/// The client host's address.
pub const CLIENT_ADDRESS: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// The router's address, when a test adds one.
pub const ROUTER_ADDRESS: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);
/// The lab's subnet prefix length.
pub const PREFIX_LEN: u8 = 24;
/// The lab's IPv6 subnet, 2001:db8:18::/64 (the documentation range).
const IPV6_SUBNET: [u16; 3] = [0x2001, 0xdb8, 0x18];
/// Port of each lab backend's HTTP server.
pub const BACKEND_HTTP_PORT: u16 = 8080;
/// Port of each lab backend's TCP echo server.
pub const BACKEND_ECHO_PORT: u16 = 9000;
/// The most hosts of each kind: addresses are assigned from fixed ranges of the /24.
pub const MAX_HOSTS_PER_ROLE: usize = 9;
/// How long a lab process may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the lab could not do something.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// Network namespaces need root (CAP_NET_ADMIN and CAP_SYS_ADMIN).
    #[error(
        "the lab needs root to create network namespaces (running as uid {0}); run the tests as root: see scripts/test.sh"
    )]
    NotRoot(u32),
    /// A topology or name the lab does not accept.
    #[error("invalid lab request: {0}")]
    Invalid(String),
    /// A program could not be started.
    #[error("cannot start {what}: {source} (is iproute2 installed?)")]
    Spawn {
        /// What was being started.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A command exited with an error.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A lab process misbehaved.
    #[error("{label} {problem}; its output:\n{output}")]
    Process {
        /// Which process.
        label: String,
        /// What went wrong.
        problem: String,
        /// What it printed.
        output: String,
    },
    /// A file or system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Work run inside a namespace panicked.
    #[error("{0} panicked")]
    Panicked(String),
}

/// What a host is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostRole {
    /// Runs fulcrumd.
    LoadBalancer,
    /// Runs a lab backend.
    Backend,
    /// Runs the prober.
    Client,
    /// Routes between the client and the load balancers (BGP, ECMP), when a test adds one.
    Router,
}

/// One host of the lab: a namespace with one interface, `eth0`, on the bridge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    /// Short name: `lb1`, `be2`, `client`.
    pub name: String,
    /// The network namespace, `<prefix>-<name>`.
    pub namespace: String,
    /// Its address on the lab subnet.
    pub address: Ipv4Addr,
    /// What it is for.
    pub role: HostRole,
}

impl Host {
    /// The socket address of this host's lab backend HTTP server.
    pub fn http_address(&self) -> SocketAddr {
        SocketAddr::from((self.address, BACKEND_HTTP_PORT))
    }

    /// The socket address of this host's lab backend TCP echo server.
    pub fn echo_address(&self) -> SocketAddr {
        SocketAddr::from((self.address, BACKEND_ECHO_PORT))
    }

    /// Its IPv6 address on the lab subnet: the IPv4 address's last byte in 2001:db8:18::/64.
    pub fn address_v6(&self) -> Ipv6Addr {
        lab_ipv6(u16::from(self.address.octets()[3]))
    }
}

fn lab_ipv6(host: u16) -> Ipv6Addr {
    let [a, b, c] = IPV6_SUBNET;
    Ipv6Addr::new(a, b, c, 0, 0, 0, 0, host)
}

/// The shape of a lab.
#[derive(Clone, Debug)]
pub struct Topology {
    /// Number of load-balancer hosts (1 to 9).
    pub load_balancers: usize,
    /// Number of backend hosts (0 to 9).
    pub backends: usize,
    /// Name prefix; a fresh random one when `None`.
    pub prefix: Option<String>,
}

/// What the state file records of a lab.
#[derive(Debug, Default, Serialize, Deserialize)]
struct LabRecord {
    prefix: String,
    switch: String,
    hosts: Vec<Host>,
    processes: Vec<ProcessRecord>,
}

/// A running lab. Dropping it stops its processes and removes its namespaces, also when a
/// test panics; [`Lab::keep`] leaves it up for `fulcrum-lab down` to remove.
pub struct Lab {
    record: Mutex<LabRecord>,
    lab_binary: PathBuf,
    keep: bool,
}

/// The `n`th virtual IP of the lab (from 1): 198.18.0.100 + n - 1.
pub fn vip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 100u8.saturating_add(n.saturating_sub(1)))
}

/// The `n`th IPv6 virtual IP of the lab (from 1): 2001:db8:18::100 + n - 1.
pub fn vip_v6(n: u8) -> Ipv6Addr {
    lab_ipv6(0x100 + u16::from(n.saturating_sub(1)))
}

impl Lab {
    /// Builds the topology. `lab_binary` is the `fulcrum-lab` executable that backends and
    /// probers run as. On any failure, whatever was made is removed again.
    pub fn up(topology: &Topology, lab_binary: impl Into<PathBuf>) -> Result<Lab, LabError> {
        let uid = nix::unistd::geteuid();
        if !uid.is_root() {
            return Err(LabError::NotRoot(uid.as_raw()));
        }
        for (what, n, min) in
            [("load balancers", topology.load_balancers, 1), ("backends", topology.backends, 0)]
        {
            if n < min || n > MAX_HOSTS_PER_ROLE {
                return Err(LabError::Invalid(format!(
                    "{what}: {n} is outside {min}..={MAX_HOSTS_PER_ROLE}"
                )));
            }
        }
        let prefix = match &topology.prefix {
            Some(prefix) => check_prefix(prefix)?,
            None => fresh_prefix()?,
        };
        let mut hosts = Vec::new();
        for i in 1..=topology.load_balancers {
            hosts.push(host(
                &prefix,
                format!("lb{i}"),
                Ipv4Addr::new(198, 18, 0, 10 + i as u8),
                HostRole::LoadBalancer,
            ));
        }
        for i in 1..=topology.backends {
            hosts.push(host(
                &prefix,
                format!("be{i}"),
                Ipv4Addr::new(198, 18, 0, 20 + i as u8),
                HostRole::Backend,
            ));
        }
        hosts.push(host(&prefix, "client".into(), CLIENT_ADDRESS, HostRole::Client));
        let record =
            LabRecord { switch: format!("{prefix}-sw"), prefix, hosts, processes: Vec::new() };
        let lab = Lab { record: Mutex::new(record), lab_binary: lab_binary.into(), keep: false };
        // Record first, so that even a half-built lab can be found and removed.
        lab.save()?;
        lab.build()?; // On error, `lab` is dropped here and tears down what exists.
        Ok(lab)
    }

    fn build(&self) -> Result<(), LabError> {
        let record = self.lock();
        let switch = record.switch.as_str();
        netns::ip(&["netns", "add", switch])?;
        netns::ip(&["-n", switch, "link", "set", "lo", "up"])?;
        netns::ip(&["-n", switch, "link", "add", "br0", "type", "bridge"])?;
        netns::ip(&["-n", switch, "link", "set", "br0", "up"])?;
        for host in &record.hosts {
            attach(switch, host)?;
        }
        Ok(())
    }

    /// Adds a router host (`rtr`, 198.18.0.254 and 2001:db8:18::254) on the bridge,
    /// forwarding IPv4 and IPv6 and hashing multipath routes on ports
    /// (`fib_multipath_hash_policy=1`), without ICMP redirects, since its next hops share
    /// the link with its clients.
    pub fn add_router(&self) -> Result<Host, LabError> {
        let router = {
            let mut record = self.lock();
            let router = host(&record.prefix, "rtr".into(), ROUTER_ADDRESS, HostRole::Router);
            record.hosts.push(router.clone());
            router
        };
        self.save()?;
        attach(&self.switch_namespace(), &router)?;
        for setting in [
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
            "net.ipv4.fib_multipath_hash_policy=1",
            "net.ipv6.fib_multipath_hash_policy=1",
            "net.ipv4.conf.all.send_redirects=0",
            "net.ipv4.conf.eth0.send_redirects=0",
        ] {
            netns::exec(&router.namespace, "sysctl", &["-qw", setting])?;
        }
        Ok(router)
    }
}

/// Makes `host`'s namespace and links its `eth0` to the bridge in `switch`, with its
/// addresses.
fn attach(switch: &str, host: &Host) -> Result<(), LabError> {
    let ns = host.namespace.as_str();
    netns::ip(&["netns", "add", ns])?;
    // Before eth0 exists, so its link-local address skips duplicate address detection
    // too: a tentative address cannot send VRRP adverts or answer neighbours.
    netns::exec(ns, "sysctl", &["-qw", "net.ipv6.conf.all.accept_dad=0"])?;
    netns::exec(ns, "sysctl", &["-qw", "net.ipv6.conf.default.accept_dad=0"])?;
    netns::ip(&["-n", ns, "link", "set", "lo", "up"])?;
    // Created inside the switch namespace with its peer moved straight into the host:
    // neither end ever exists in the root namespace.
    netns::ip(&[
        "-n", switch, "link", "add", &host.name, "type", "veth", "peer", "name", "eth0", "netns",
        ns,
    ])?;
    netns::ip(&["-n", switch, "link", "set", &host.name, "master", "br0", "up"])?;
    let cidr = format!("{}/{PREFIX_LEN}", host.address);
    netns::ip(&["-n", ns, "addr", "add", &cidr, "dev", "eth0"])?;
    let cidr_v6 = format!("{}/64", host.address_v6());
    netns::ip(&["-n", ns, "addr", "add", &cidr_v6, "dev", "eth0", "nodad"])?;
    netns::ip(&["-n", ns, "link", "set", "eth0", "up"])?;
    Ok(())
}

impl Lab {
    /// `host`'s IPv6 link-local address on the lab link (the kernel derives it from the MAC),
    /// found as fulcrumd finds its own.
    pub fn link_local(&self, host: &Host) -> Result<Ipv6Addr, LabError> {
        let found = self.run_in(host, || {
            fulcrum_vrrp::interface_address("eth0", fulcrum_vrrp::Family::Ipv6, &[])
        })?;
        match found {
            Some(std::net::IpAddr::V6(address)) => Ok(address),
            _ => Err(LabError::Invalid(format!("{} has no link-local address", host.name))),
        }
    }

    /// The run's name prefix.
    pub fn prefix(&self) -> String {
        self.lock().prefix.clone()
    }

    /// The namespace that holds the bridge.
    pub fn switch_namespace(&self) -> String {
        self.lock().switch.clone()
    }

    /// Every host, load balancers first, the client last.
    pub fn hosts(&self) -> Vec<Host> {
        self.lock().hosts.clone()
    }

    /// The hosts of one role, in order.
    pub fn hosts_of(&self, role: HostRole) -> Vec<Host> {
        self.lock().hosts.iter().filter(|h| h.role == role).cloned().collect()
    }

    /// The host called `name` (`lb1`, `be2`, `client`).
    pub fn host(&self, name: &str) -> Result<Host, LabError> {
        self.lock()
            .hosts
            .iter()
            .find(|h| h.name == name)
            .cloned()
            .ok_or_else(|| LabError::Invalid(format!("the lab has no host {name:?}")))
    }

    /// Starts `program args` on `host`; it is stopped when the returned handle is dropped, and
    /// at the latest when the lab is torn down.
    pub fn spawn(
        &self,
        host: &Host,
        label: &str,
        program: &Path,
        args: &[String],
    ) -> Result<LabProcess, LabError> {
        let logs = self.log_dir();
        std::fs::create_dir_all(&logs).map_err(|source| LabError::Io {
            what: format!("create {}", logs.display()),
            source,
        })?;
        let file_name: String =
            label.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
        let log = logs.join(format!("{file_name}.log"));
        let process = LabProcess::spawn(&host.namespace, label, program, args, &log)?;
        self.lock().processes.push(process.record().clone());
        self.save()?;
        Ok(process)
    }

    /// Starts a lab backend (HTTP on port 8080, TCP echo on 9000) on `host` and waits until
    /// it is serving.
    pub fn start_backend(&self, host: &Host) -> Result<LabProcess, LabError> {
        self.start_server(host, host.http_address(), Some(host.echo_address()), false)
    }

    /// Starts a lab backend answering with `host`'s name on `vip`, bound whether or not the
    /// host holds the VIP: the prober then sees which load balancer answers.
    pub fn start_vip_responder(
        &self,
        host: &Host,
        vip: SocketAddr,
    ) -> Result<LabProcess, LabError> {
        self.start_server(host, vip, None, true)
    }

    fn start_server(
        &self,
        host: &Host,
        http: SocketAddr,
        echo: Option<SocketAddr>,
        freebind: bool,
    ) -> Result<LabProcess, LabError> {
        let mut args = vec![
            "backend".into(),
            "--name".into(),
            host.name.clone(),
            "--http".into(),
            http.to_string(),
        ];
        if let Some(echo) = echo {
            args.extend(["--tcp-echo".into(), echo.to_string()]);
        }
        if freebind {
            args.push("--freebind".into());
        }
        let label = format!("backend {} on {http}", host.name);
        let mut process = self.spawn(host, &label, &self.lab_binary, &args)?;
        process.wait_for_line("ready", READY_TIMEOUT)?;
        Ok(process)
    }

    /// Starts a lab backend on every backend host.
    pub fn start_backends(&self) -> Result<Vec<LabProcess>, LabError> {
        self.hosts_of(HostRole::Backend).iter().map(|h| self.start_backend(h)).collect()
    }

    /// Starts the prober on `host`; [`RunningProbe::finish`] waits for its report.
    pub fn start_probe(&self, host: &Host, probe: &ProbeArgs) -> Result<RunningProbe, LabError> {
        let mut args = vec!["probe".to_owned()];
        args.extend(probe.to_args());
        let mut process =
            self.spawn(host, &format!("probe from {}", host.name), &self.lab_binary, &args)?;
        process.wait_for_line("probing", READY_TIMEOUT)?;
        Ok(RunningProbe { process, limit: probe.duration + probe.timeout + READY_TIMEOUT })
    }

    /// Runs the prober on `host` to the end and returns its report.
    pub fn probe(&self, host: &Host, probe: &ProbeArgs) -> Result<ProbeReport, LabError> {
        self.start_probe(host, probe)?.finish()
    }

    /// Runs `work` on a thread inside `host`'s network namespace.
    pub fn run_in<T: Send, F: FnOnce() -> T + Send>(
        &self,
        host: &Host,
        work: F,
    ) -> Result<T, LabError> {
        netns::run_in(&host.namespace, work)
    }

    /// Runs a command to completion inside `host`'s namespace and returns its output.
    pub fn exec(&self, host: &Host, program: &str, args: &[&str]) -> Result<String, LabError> {
        netns::exec(&host.namespace, program, args)
    }

    /// Leaves the lab up when this guard is dropped; `fulcrum-lab down` removes it later.
    pub fn keep(mut self) {
        self.keep = true;
    }

    /// Stops the lab's processes and removes its namespaces and state file.
    pub fn down(self) -> Result<(), LabError> {
        // Taking the record leaves nothing for drop to tear down again.
        let record = std::mem::take(&mut *self.lock());
        teardown(&record)
    }

    /// Where the standard error of the lab's processes is written.
    pub fn log_dir(&self) -> PathBuf {
        Path::new(STATE_DIR).join(self.prefix())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LabRecord> {
        // A poisoned lock only means a test panicked while holding it; the record is intact.
        self.record.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn save(&self) -> Result<(), LabError> {
        let record = self.lock();
        std::fs::create_dir_all(STATE_DIR)
            .map_err(|source| LabError::Io { what: format!("create {STATE_DIR}"), source })?;
        let path = state_path(&record.prefix);
        let json = serde_json::to_vec_pretty(&*record)
            .map_err(|e| LabError::Io { what: path.display().to_string(), source: e.into() })?;
        std::fs::write(&path, json)
            .map_err(|source| LabError::Io { what: format!("write {}", path.display()), source })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        let record = std::mem::take(&mut *self.lock());
        if let Err(e) = teardown(&record) {
            eprintln!("fulcrum-lab: tearing down lab {}: {e}", record.prefix);
        }
    }
}

/// A prober running in the background.
pub struct RunningProbe {
    process: LabProcess,
    limit: Duration,
}

impl RunningProbe {
    /// Waits for the prober to finish and returns its report.
    pub fn finish(mut self) -> Result<ProbeReport, LabError> {
        self.process.wait(self.limit)?;
        let output = self.process.output();
        let last = output.last().map(String::as_str).unwrap_or("");
        serde_json::from_str(last).map_err(|e| LabError::Process {
            label: "probe".into(),
            problem: format!("printed no report ({e})"),
            output: output.join("\n"),
        })
    }
}

fn host(prefix: &str, name: String, address: Ipv4Addr, role: HostRole) -> Host {
    Host { namespace: format!("{prefix}-{name}"), name, address, role }
}

fn state_path(prefix: &str) -> PathBuf {
    Path::new(STATE_DIR).join(format!("{prefix}.json"))
}

/// Accepts 2 to 12 lowercase letters and digits, starting with a letter: such a prefix can
/// name nothing outside the lab's own namespaces and files.
fn valid_prefix(prefix: &str) -> Result<&str, LabError> {
    let ok = (2..=12).contains(&prefix.len())
        && prefix.starts_with(|c: char| c.is_ascii_lowercase())
        && prefix.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !ok {
        return Err(LabError::Invalid(format!(
            "prefix {prefix:?}: use 2 to 12 of a-z and 0-9, starting with a letter"
        )));
    }
    Ok(prefix)
}

/// A valid prefix that no namespace uses yet.
fn check_prefix(prefix: &str) -> Result<String, LabError> {
    valid_prefix(prefix)?;
    if netns::list()?.iter().any(|ns| ns.starts_with(&format!("{prefix}-"))) {
        return Err(LabError::Invalid(format!("prefix {prefix:?} is in use by another lab")));
    }
    Ok(prefix.to_owned())
}

/// `fl` and six hex digits from the PID and the clock, retried while taken.
fn fresh_prefix() -> Result<String, LabError> {
    let taken = netns::list()?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut seed = (u64::from(std::process::id()) << 32) ^ u64::from(nanos);
    for _ in 0..16 {
        // splitmix64: spreads nearby seeds (consecutive PIDs) far apart.
        seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        let prefix = format!("fl{:06x}", (z ^ (z >> 31)) & 0xff_ffff);
        if !taken.iter().any(|ns| ns.starts_with(&format!("{prefix}-"))) {
            return Ok(prefix);
        }
    }
    Err(LabError::Invalid("no free lab prefix found".into()))
}

/// Stops a lab's recorded processes, deletes its namespaces and its state file. Carries on
/// past errors so that as much as possible is removed, and reports the first.
fn teardown(record: &LabRecord) -> Result<(), LabError> {
    if record.prefix.is_empty() {
        return Ok(());
    }
    let mut first_error = None;
    let mut note = |result: Result<(), LabError>| {
        if let Err(e) = result {
            first_error.get_or_insert(e);
        }
    };
    for process in &record.processes {
        note(process::stop_recorded(process));
    }
    let existing = netns::list().unwrap_or_default();
    let namespaces =
        record.hosts.iter().map(|h| &h.namespace).chain(std::iter::once(&record.switch));
    for ns in namespaces.filter(|ns| existing.contains(ns)) {
        note(netns::ip(&["netns", "del", ns]).map(drop));
    }
    let logs = Path::new(STATE_DIR).join(&record.prefix);
    for (path, result) in [
        (&logs, std::fs::remove_dir_all(&logs)),
        (&state_path(&record.prefix), std::fs::remove_file(state_path(&record.prefix))),
    ] {
        if let Err(e) = result
            .or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) })
        {
            note(Err(LabError::Io { what: format!("remove {}", path.display()), source: e }));
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// The prefixes of every lab recorded on this host.
pub fn recorded_labs() -> Result<Vec<String>, LabError> {
    let entries = match std::fs::read_dir(STATE_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(LabError::Io { what: format!("read {STATE_DIR}"), source });
        }
    };
    let mut prefixes: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            e.file_name().to_str().and_then(|n| n.strip_suffix(".json")).map(str::to_owned)
        })
        .collect();
    prefixes.sort();
    Ok(prefixes)
}

/// Removes the lab recorded under `prefix`: what `fulcrum-lab down` does.
pub fn remove_recorded(prefix: &str) -> Result<(), LabError> {
    let record = read_record(prefix)?;
    teardown(&record)
}

/// Describes the lab recorded under `prefix`: hosts, addresses, and which processes run.
pub fn describe_recorded(prefix: &str) -> Result<String, LabError> {
    let record = read_record(prefix)?;
    let existing = netns::list()?;
    let mut out = format!("lab {} (bridge in namespace {})\n", record.prefix, record.switch);
    for host in &record.hosts {
        let state = if existing.contains(&host.namespace) { "up" } else { "MISSING" };
        out.push_str(&format!(
            "  {:<7} {:<15} {:?} namespace {} ({state})\n",
            host.name, host.address, host.role, host.namespace
        ));
    }
    for p in &record.processes {
        let state =
            if process::start_time(p.pid) == Some(p.start_time) { "running" } else { "exited" };
        out.push_str(&format!("  process {} pid {} ({state})\n", p.label, p.pid));
    }
    Ok(out)
}

fn read_record(prefix: &str) -> Result<LabRecord, LabError> {
    let path = state_path(valid_prefix(prefix)?);
    let text = std::fs::read(&path)
        .map_err(|source| LabError::Io { what: format!("read {}", path.display()), source })?;
    let record: LabRecord = serde_json::from_slice(&text).map_err(|e| LabError::Io {
        what: format!("parse {}", path.display()),
        source: e.into(),
    })?;
    // Never act on names outside the lab, even if the file was edited.
    let ours = |ns: &str| ns.starts_with(&format!("{prefix}-"));
    if record.prefix != prefix
        || !ours(&record.switch)
        || !record.hosts.iter().all(|h| ours(&h.namespace))
    {
        return Err(LabError::Invalid(format!(
            "{} names namespaces outside lab {prefix}",
            path.display()
        )));
    }
    Ok(record)
}
