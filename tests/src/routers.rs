//! VRRP routers in the lab: `fulcrumd` and keepalived started on load-balancer hosts from one
//! description of their instances, so tests and the failover benchmark treat both alike, and
//! the observations they need: who holds a VIP, whose MAC the client has for it.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::process::LabProcess;
use crate::topology::{Host, Lab, LabError};

/// The lab's link on every host.
pub(crate) const INTERFACE: &str = "eth0";

/// How long a router gets to start.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Which VRRP implementation a router runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Implementation {
    /// Fulcrum's own, `fulcrumd`.
    Fulcrumd,
    /// keepalived, as Debian ships it.
    Keepalived,
}

impl std::fmt::Display for Implementation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Implementation::Fulcrumd => "fulcrumd",
            Implementation::Keepalived => "keepalived",
        })
    }
}

/// One VRRP instance of a router, in the terms both implementations share.
#[derive(Clone, Debug)]
pub struct Instance {
    /// Virtual router id.
    pub vrid: u8,
    /// 1 to 254.
    pub priority: u8,
    /// How often a master advertises.
    pub advert_interval: Duration,
    /// The virtual IPs, IPv4 or IPv6 (keepalived takes one family per instance).
    pub vips: Vec<IpAddr>,
    /// Whether a higher priority takes over from a live master.
    pub preempt: bool,
    /// How long after start a router holds back from preempting.
    pub preempt_delay: Duration,
    /// Unicast peers instead of multicast, when not empty.
    pub unicast_peers: Vec<Ipv4Addr>,
}

impl Instance {
    /// An instance with preemption on and no delay, over multicast.
    pub fn new<A: Into<IpAddr> + Copy>(
        vrid: u8,
        priority: u8,
        advert_interval: Duration,
        vips: &[A],
    ) -> Instance {
        Instance {
            vrid,
            priority,
            advert_interval,
            vips: vips.iter().map(|vip| (*vip).into()).collect(),
            preempt: true,
            preempt_delay: Duration::ZERO,
            unicast_peers: Vec::new(),
        }
    }

    /// The instance of the `rank`th load balancer of a lab cluster (0 first): priority 150,
    /// 100, 50, … (at least 1; the first owns the VIPs), 100 ms advertisements.
    pub fn ranked<A: Into<IpAddr> + Copy>(vrid: u8, rank: usize, vips: &[A]) -> Instance {
        let lowered = u8::try_from(rank).unwrap_or(u8::MAX).saturating_mul(50);
        let priority = 150u8.saturating_sub(lowered).max(1);
        Instance::new(vrid, priority, Duration::from_millis(100), vips)
    }
}

/// The `fulcrumd` executable: `$FULCRUMD`, or the one built next to this program.
pub fn fulcrumd_binary() -> Result<PathBuf, LabError> {
    workspace_binary("fulcrumd", "FULCRUMD")
}

/// A workspace executable: the path in environment variable `variable`, or the one built
/// next to this program (a test or `fulcrum-lab` itself, in `target/<profile>/` or its
/// `deps/`).
pub fn workspace_binary(name: &str, variable: &str) -> Result<PathBuf, LabError> {
    if let Some(path) = std::env::var_os(variable) {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()
        .map_err(|source| LabError::Io { what: "find the running executable".into(), source })?;
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            LabError::Invalid(format!(
                "no {name} next to {}: build it with `cargo build --workspace` \
                 (or set {variable} to its path)",
                exe.display()
            ))
        })
}

/// The node file `fulcrumd` reads, with one `[[vrrp]]` per instance. Logs are JSON, so the
/// lab can read the status fulcrumd logs on SIGUSR1.
pub fn fulcrumd_node_file(node_id: u64, instances: &[Instance]) -> String {
    let mut file = format!("node_id = {node_id}\n\n[log]\nformat = \"json\"\nlevel = \"info\"\n");
    for instance in instances {
        let _ = write!(
            file,
            "\n[[vrrp]]\ninterface = \"{INTERFACE}\"\nvrid = {}\npriority = {}\n\
             advert_interval = \"{}ms\"\nvips = {}\npreempt = {}\npreempt_delay = \"{}ms\"\n\
             unicast_peers = {}\n",
            instance.vrid,
            instance.priority,
            instance.advert_interval.as_millis(),
            quoted_list(&instance.vips),
            instance.preempt,
            instance.preempt_delay.as_millis(),
            quoted_list(&instance.unicast_peers),
        );
    }
    file
}

fn quoted_list<A: std::fmt::Display>(addresses: &[A]) -> String {
    let quoted: Vec<String> = addresses.iter().map(|a| format!("\"{a}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

/// keepalived's configuration for the same instances, speaking VRRPv3.
pub fn keepalived_config(host: &Host, instances: &[Instance]) -> String {
    let mut config = format!(
        "global_defs {{\n    router_id {}\n    vrrp_version 3\n    vrrp_garp_master_delay 0\n}}\n",
        host.name
    );
    for instance in instances {
        let interval = instance.advert_interval.as_secs_f64();
        let _ = write!(
            config,
            "\nvrrp_instance VI_{vrid} {{\n    state BACKUP\n    interface {INTERFACE}\n    \
             virtual_router_id {vrid}\n    priority {}\n    advert_int {interval}\n    \
             accept\n",
            instance.priority,
            vrid = instance.vrid,
        );
        if instance.preempt {
            let delay = instance.preempt_delay.as_secs();
            let _ = writeln!(config, "    preempt_delay {delay}");
        } else {
            config.push_str("    nopreempt\n");
        }
        if !instance.unicast_peers.is_empty() {
            let _ = writeln!(config, "    unicast_src_ip {}", host.address);
            config.push_str("    unicast_peer {\n");
            for peer in &instance.unicast_peers {
                let _ = writeln!(config, "        {peer}");
            }
            config.push_str("    }\n");
        }
        config.push_str("    virtual_ipaddress {\n");
        for vip in &instance.vips {
            let _ = writeln!(config, "        {vip}/{} dev {INTERFACE}", host_prefix_len(*vip));
        }
        config.push_str("    }\n}\n");
    }
    config
}

/// A VIP's prefix length: a host route, /32 or /128.
fn host_prefix_len(vip: IpAddr) -> u8 {
    if vip.is_ipv4() { 32 } else { 128 }
}

/// VRRP's multicast group (RFC 9568 §5.1.1.2).
const VRRP_GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);

impl Lab {
    /// Sends the raw VRRP `message` from `host` to the VRRP group with `ttl`, as any host on
    /// the link could (a forger, in the tests).
    pub fn send_to_vrrp_group(
        &self,
        host: &Host,
        message: Vec<u8>,
        ttl: u32,
    ) -> Result<(), LabError> {
        use socket2::{Domain, Protocol, Socket, Type};
        let source = host.address;
        self.run_in(host, move || {
            let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(112)))?;
            socket.set_multicast_ttl_v4(ttl)?;
            socket.set_multicast_if_v4(&source)?;
            socket.send_to(&message, &std::net::SocketAddrV4::new(VRRP_GROUP, 0).into()).map(drop)
        })?
        .map_err(|source| LabError::Io { what: format!("send VRRP from {}", host.name), source })
    }

    /// Starts a VRRP router of `implementation` on `host` with `instances`, and waits until it
    /// has started (fulcrumd: running; keepalived: its instances entered a state).
    pub fn start_router(
        &self,
        host: &Host,
        implementation: Implementation,
        instances: &[Instance],
    ) -> Result<LabProcess, LabError> {
        let dir = self.log_dir();
        let label = format!("{implementation} on {}", host.name);
        let write = |name: &str, text: String| -> Result<PathBuf, LabError> {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(|source| LabError::Io {
                what: format!("write {}", path.display()),
                source,
            })?;
            Ok(path)
        };
        std::fs::create_dir_all(&dir)
            .map_err(|source| LabError::Io { what: format!("create {}", dir.display()), source })?;
        match implementation {
            Implementation::Fulcrumd => {
                let node_id = u64::from(host.address.octets()[3]);
                self.start_fulcrumd(host, &fulcrumd_node_file(node_id, instances))
            }
            Implementation::Keepalived => {
                let config = write(
                    &format!("{}-keepalived.conf", host.name),
                    keepalived_config(host, instances),
                )?;
                let path = |suffix: &str| dir.join(format!("{}-{suffix}", host.name));
                let args = [
                    "--dont-fork".to_owned(),
                    "--log-console".to_owned(),
                    "--log-detail".to_owned(),
                    "--vrrp".to_owned(),
                    format!("--use-file={}", config.display()),
                    format!("--pid={}", path("keepalived.pid").display()),
                    format!("--vrrp_pid={}", path("keepalived-vrrp.pid").display()),
                ];
                let program = PathBuf::from("/usr/sbin/keepalived");
                if !program.is_file() {
                    return Err(LabError::Invalid(
                        "keepalived is not installed: apt-get install keepalived \
                         (scripts/test.sh does this)"
                            .into(),
                    ));
                }
                let mut process = self.spawn(host, &label, &program, &args)?;
                for _ in instances {
                    process.wait_for(
                        "an instance entering a state",
                        |line| line.contains("Entering"),
                        START_TIMEOUT,
                    )?;
                }
                Ok(process)
            }
        }
    }

    /// Starts `fulcrumd` on `host` with the node file `node_file` (written to the lab's log
    /// directory as `<host>-node.toml`) and waits until it runs.
    pub fn start_fulcrumd(&self, host: &Host, node_file: &str) -> Result<LabProcess, LabError> {
        self.start_fulcrumd_with_tools(host, node_file, None)
    }

    /// As [`Lab::start_fulcrumd`], with the programs fulcrumd runs (`nft`) looked up in
    /// `tools` first: a test's stand-ins for them.
    pub fn start_fulcrumd_with_tools(
        &self,
        host: &Host,
        node_file: &str,
        tools: Option<&Path>,
    ) -> Result<LabProcess, LabError> {
        let dir = self.log_dir();
        let path = dir.join(format!("{}-node.toml", host.name));
        std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(&path, node_file))
            .map_err(|source| LabError::Io { what: format!("write {}", path.display()), source })?;
        let mut args = vec!["--config".to_owned(), path.display().to_string()];
        let label = format!("fulcrumd on {}", host.name);
        let mut program = fulcrumd_binary()?;
        if let Some(tools) = tools {
            let search =
                format!("PATH={}:{}", tools.display(), std::env::var("PATH").unwrap_or_default());
            args.splice(0..0, [search, program.display().to_string()]);
            program = PathBuf::from("/usr/bin/env");
        }
        let mut process = self.spawn(host, &label, &program, &args)?;
        process.wait_for(
            "its start message",
            |line| line.contains("fulcrumd running"),
            START_TIMEOUT,
        )?;
        Ok(process)
    }

    /// Those of `hosts` that hold `vip`.
    pub fn holders(
        &self,
        hosts: &[Host],
        vip: impl Into<IpAddr> + Copy,
    ) -> Result<Vec<String>, LabError> {
        let mut holders = Vec::new();
        for host in hosts {
            if holds(host, vip)? {
                holders.push(host.name.clone());
            }
        }
        Ok(holders)
    }

    /// The MAC address of `host`'s link.
    pub fn mac(&self, host: &Host) -> Result<String, LabError> {
        let output = self.exec(host, "ip", &["-o", "link", "show", "dev", INTERFACE])?;
        output
            .split_whitespace()
            .skip_while(|word| *word != "link/ether")
            .nth(1)
            .map(str::to_owned)
            .ok_or_else(|| LabError::Invalid(format!("no MAC in {output:?}")))
    }

    /// The MAC address `host` has in its ARP or neighbour cache for `address`, if any (in any
    /// state but FAILED or INCOMPLETE).
    pub fn arp_entry(
        &self,
        host: &Host,
        address: impl Into<IpAddr>,
    ) -> Result<Option<String>, LabError> {
        let address = address.into().to_string();
        let output = self.exec(host, "ip", &["neigh", "show", &address, "dev", INTERFACE])?;
        Ok(output.split_whitespace().skip_while(|word| *word != "lladdr").nth(1).map(str::to_owned))
    }

    /// Crashes `host` as a power cut would: the host drops off the link and its router is
    /// killed with SIGKILL (no priority-0 advertisement, no cleanup). Only killing the daemon
    /// would leave its VIPs configured, and the kernel answering ARP for them; the link goes
    /// first, so not even the FINs the kernel sends for a killed process's sockets get out.
    pub fn crash(&self, host: &Host, router: &mut LabProcess) -> Result<(), LabError> {
        self.set_link(host, false)?;
        router.crash().map(drop)
    }

    /// Brings a crashed `host` back on the link as after a reboot, which lost the `vips` the
    /// crash left configured.
    pub fn reboot<A: Into<IpAddr> + Copy>(&self, host: &Host, vips: &[A]) -> Result<(), LabError> {
        for vip in vips.iter().map(|vip| (*vip).into()) {
            if holds_configured(host, vip, false)? {
                let cidr = format!("{vip}/{}", host_prefix_len(vip));
                self.exec(host, "ip", &["addr", "del", &cidr, "dev", INTERFACE])?;
            }
        }
        self.set_link(host, true)?;
        // Linux drops a link's IPv6 addresses when it goes down (IPv4 ones stay); a rebooted
        // host configures its own again.
        let own = format!("{}/64", host.address_v6());
        self.exec(host, "ip", &["addr", "replace", &own, "dev", INTERFACE, "nodad"]).map(drop)
    }

    fn set_link(&self, host: &Host, up: bool) -> Result<(), LabError> {
        let state = if up { "up" } else { "down" };
        self.exec(host, "ip", &["link", "set", "dev", INTERFACE, state]).map(drop)
    }

    /// Waits until exactly `host` of `hosts` holds `vip`, polling every 20 ms; returns how
    /// long that took.
    pub fn wait_for_holder(
        &self,
        hosts: &[Host],
        host: &Host,
        vip: impl Into<IpAddr> + Copy,
        timeout: Duration,
    ) -> Result<Duration, LabError> {
        let vip = vip.into();
        let start = Instant::now();
        loop {
            let holders = self.holders(hosts, vip)?;
            if holders == [host.name.clone()] {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                return Err(LabError::Invalid(format!(
                    "{vip} is held by {holders:?}, not only {}, after {timeout:?}",
                    host.name
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Whether `host` has `vip` on its link (and the link is up).
pub fn holds(host: &Host, vip: impl Into<IpAddr>) -> Result<bool, LabError> {
    holds_configured(host, vip.into(), true)
}

/// Whether `vip` is configured on `host`'s link; with `up`, only if the link is up too.
fn holds_configured(host: &Host, vip: IpAddr, up: bool) -> Result<bool, LabError> {
    let family = if vip.is_ipv4() { "-4" } else { "-6" };
    let mut show = vec!["-o", family, "addr", "show", "dev", INTERFACE];
    if up {
        show.push("up");
    }
    Ok(crate::netns::exec(&host.namespace, "ip", &show)?.contains(&format!(" {vip}/")))
}

/// The packet sockets open in `host`'s namespace, as `/proc/net/packet` lists them: the
/// protocol each listens to (in hex, as the kernel prints it; 0003 is every ethertype) and
/// the bytes queued for it.
pub fn packet_sockets(host: &Host) -> Result<Vec<(String, u64)>, LabError> {
    let table = crate::netns::exec(&host.namespace, "cat", &["/proc/net/packet"])?;
    Ok(table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            Some((fields.get(3)?.to_string(), fields.get(6)?.parse().ok()?))
        })
        .collect())
}

/// Asks a running `fulcrumd` for its VRRP status (SIGUSR1) and returns it as JSON: instances
/// with state, priority and counters, and per-link drops by reason.
pub fn fulcrumd_status(process: &mut LabProcess) -> Result<serde_json::Value, LabError> {
    process.signal(nix::sys::signal::Signal::SIGUSR1)?;
    let line = process.wait_for(
        "its VRRP status",
        |line| line.contains("\"VRRP status\""),
        START_TIMEOUT,
    )?;
    let bad =
        |problem: String| LabError::Invalid(format!("fulcrumd status line {line:?}: {problem}"));
    let event: serde_json::Value = serde_json::from_str(&line).map_err(|e| bad(e.to_string()))?;
    let status = event["status"].as_str().ok_or_else(|| bad("no status field".into()))?;
    serde_json::from_str(status).map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::HostRole;

    fn lb1() -> Host {
        Host {
            name: "lb1".into(),
            namespace: "flx-lb1".into(),
            address: Ipv4Addr::new(198, 18, 0, 11),
            role: HostRole::LoadBalancer,
        }
    }

    #[test]
    fn node_file_carries_every_instance_setting() {
        let mut instance =
            Instance::new(51, 150, Duration::from_millis(100), &[Ipv4Addr::new(198, 18, 0, 100)]);
        instance.preempt = false;
        instance.unicast_peers = vec![Ipv4Addr::new(198, 18, 0, 12)];
        let file = fulcrumd_node_file(11, &[instance]);
        for expected in [
            "vrid = 51",
            "priority = 150",
            "advert_interval = \"100ms\"",
            "vips = [\"198.18.0.100\"]",
            "preempt = false",
            "unicast_peers = [\"198.18.0.12\"]",
        ] {
            assert!(file.contains(expected), "{expected:?} missing from\n{file}");
        }
    }

    #[test]
    fn keepalived_config_speaks_vrrpv3_with_the_same_settings() {
        let mut instance =
            Instance::new(7, 120, Duration::from_millis(100), &[Ipv4Addr::new(198, 18, 0, 101)]);
        instance.preempt_delay = Duration::from_secs(2);
        instance.unicast_peers = vec![Ipv4Addr::new(198, 18, 0, 12)];
        let config = keepalived_config(&lb1(), &[instance]);
        for expected in [
            "vrrp_version 3",
            "virtual_router_id 7",
            "priority 120",
            "advert_int 0.1",
            "preempt_delay 2",
            "unicast_src_ip 198.18.0.11",
            "198.18.0.101/32 dev eth0",
        ] {
            assert!(config.contains(expected), "{expected:?} missing from\n{config}");
        }
        assert!(!config.contains("nopreempt"));
    }
}
