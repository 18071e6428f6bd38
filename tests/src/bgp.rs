//! A BGP router in the lab: FRR (zebra, bgpd and bfdd, run as Debian's `frr` user) on the
//! router host, peering with the load balancers (eBGP, one peer group, BFD at 100 ms × 3)
//! and installing up to eight equal paths, which the router host hashes on ports. What it
//! installs is read from its kernel table; what it logs is kept for the tests.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::process::LabProcess;
use crate::{Host, Lab, LabError};

/// The router's AS.
pub const ROUTER_AS: u32 = 64500;
/// The load balancers' AS (the same on every node, so their paths are equal).
pub const NODE_AS: u32 = 64512;
const FRR: &str = "/usr/lib/frr";
const READY: Duration = Duration::from_secs(10);

/// FRR's daemons on the router host.
pub struct Router {
    host: Host,
    bgpd: LabProcess,
    /// bgpd's log lines read before the last [`Router::skip_bgpd_log`].
    skipped: usize,
    _bfdd: LabProcess,
    _zebra: LabProcess,
}

/// The directory of FRR's sockets and pid files, open to FRR's user.
fn frr_dir(lab: &Lab) -> Result<PathBuf, LabError> {
    let dir = lab.log_dir().join("frr");
    std::fs::create_dir_all(&dir)
        .map_err(|source| LabError::Io { what: format!("create {}", dir.display()), source })?;
    set_mode(&lab.log_dir(), 0o755)?;
    set_mode(&dir, 0o777)?;
    Ok(dir)
}

/// Sets `path`'s mode: FRR drops to its own user, which must reach its sockets and files.
fn set_mode(path: &Path, mode: u32) -> Result<(), LabError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|source| LabError::Io { what: format!("chmod {}", path.display()), source })
}

impl Router {
    /// Starts FRR on `router`, peering with `nodes`.
    pub fn start(lab: &Lab, router: &Host, nodes: &[Host]) -> Result<Router, LabError> {
        let dir = frr_dir(lab)?;
        let write = |name: &str, text: String| -> Result<PathBuf, LabError> {
            let path = PathBuf::from(lab.lab_file(&format!("frr/{name}"), &text)?);
            set_mode(&path, 0o644)?;
            Ok(path)
        };
        let mut bgp = format!(
            "router bgp {ROUTER_AS}\n bgp router-id {}\n bgp log-neighbor-changes\n no bgp ebgp-requires-policy\n\
             neighbor NODES peer-group\n neighbor NODES remote-as {NODE_AS}\n\
             neighbor NODES bfd\n neighbor NODES bfd profile fast\n neighbor NODES timers 3 9\n\
             neighbor NODES timers connect 1\n",
            router.address
        );
        for node in nodes {
            bgp.push_str(&format!(" neighbor {} peer-group NODES\n", node.address));
        }
        bgp.push_str(" address-family ipv4 unicast\n  maximum-paths 8\n exit-address-family\n!\n");
        let bfd = "bfd\n profile fast\n  receive-interval 100\n  transmit-interval 100\n  \
                   detect-multiplier 3\n !\n!\n"
            .to_owned();
        let configs = [
            ("zebra", write("zebra.conf", "hostname rtr\n".into())?),
            ("bfdd", write("bfdd.conf", bfd)?),
            ("bgpd", write("bgpd.conf", bgp)?),
        ];
        Router::run(lab, router, &dir, configs)
    }

    /// Starts FRR on `router` from one integrated configuration (`frr.conf`, as Debian's FRR
    /// reads it), which each daemon reads for its own part.
    pub fn start_from(lab: &Lab, router: &Host, frr_conf: &Path) -> Result<Router, LabError> {
        let dir = frr_dir(lab)?;
        if let Some(parent) = frr_conf.parent() {
            set_mode(parent, 0o755)?;
        }
        set_mode(frr_conf, 0o644)?;
        let config = frr_conf.to_path_buf();
        Router::run(
            lab,
            router,
            &dir,
            [("zebra", config.clone()), ("bfdd", config.clone()), ("bgpd", config)],
        )
    }

    /// Runs zebra, bfdd and bgpd on `router`, each with its configuration, sockets in `dir`.
    fn run(
        lab: &Lab,
        router: &Host,
        dir: &Path,
        configs: [(&str, PathBuf); 3],
    ) -> Result<Router, LabError> {
        let mut started = Vec::new();
        for (daemon, config) in configs {
            let mut args: Vec<String> =
                ["-u", "frr", "-g", "frr", "-A", "127.0.0.1", "-P", "0", "--log", "stdout"]
                    .iter()
                    .map(|s| s.to_string())
                    .collect();
            let path = |name: &str| dir.join(name).display().to_string();
            args.extend(["-z".into(), path("zserv.api"), "--vty_socket".into(), path("")]);
            args.extend(["-f".into(), config.display().to_string()]);
            args.extend(["-i".into(), path(&format!("{daemon}.pid"))]);
            if daemon == "bfdd" {
                args.extend(["--bfdctl".into(), path("bfdd.sock")]);
            }
            let program = Path::new(FRR).join(daemon);
            let mut process = lab.spawn(router, &format!("frr-{daemon}"), &program, &args)?;
            process.wait_for(&format!("{daemon} starting"), |l| l.contains("starting:"), READY)?;
            started.push(process);
        }
        let mut started = started.into_iter();
        let (zebra, bfdd, bgpd) = match (started.next(), started.next(), started.next()) {
            (Some(z), Some(f), Some(b)) => (z, f, b),
            _ => return Err(LabError::Invalid("FRR's daemons did not all start".into())),
        };
        Ok(Router { host: router.clone(), bgpd, skipped: 0, _bfdd: bfdd, _zebra: zebra })
    }

    /// The next hops the router's kernel has for `vip` now, in address order.
    pub fn next_hops(&self, lab: &Lab, vip: IpAddr) -> Result<Vec<IpAddr>, LabError> {
        let shown = lab.exec(&self.host, "ip", &["-j", "route", "show", &vip.to_string()])?;
        let routes: serde_json::Value = serde_json::from_str(&shown)
            .map_err(|e| LabError::Invalid(format!("ip -j route: {e}: {shown}")))?;
        let mut hops: Vec<IpAddr> = Vec::new();
        for route in routes.as_array().into_iter().flatten() {
            let gateways = match route["nexthops"].as_array() {
                Some(nexthops) => nexthops.iter().map(|n| n["gateway"].clone()).collect(),
                None => vec![route["gateway"].clone()],
            };
            hops.extend(gateways.iter().filter_map(|g| g.as_str()?.parse::<IpAddr>().ok()));
        }
        hops.sort();
        Ok(hops)
    }

    /// Waits up to `timeout` until the router's next hops for `vip` are `expected` (in
    /// address order); returns when they were first seen so.
    pub fn wait_next_hops(
        &self,
        lab: &Lab,
        vip: IpAddr,
        expected: &[Ipv4Addr],
        timeout: Duration,
    ) -> Result<Instant, LabError> {
        let mut expected: Vec<IpAddr> = expected.iter().map(|a| IpAddr::V4(*a)).collect();
        expected.sort();
        let deadline = Instant::now() + timeout;
        loop {
            let hops = self.next_hops(lab, vip)?;
            if hops == expected {
                return Ok(Instant::now());
            }
            if Instant::now() >= deadline {
                return Err(LabError::Invalid(format!(
                    "the router's next hops for {vip} are {hops:?}, not {expected:?}, after {timeout:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Reads what bgpd has logged so far, so that [`Router::wait_bgpd_log`] looks only at
    /// what it logs from now on.
    pub fn skip_bgpd_log(&mut self) {
        self.skipped = self.bgpd.read_available().len();
    }

    /// What bgpd has logged since the last [`Router::skip_bgpd_log`].
    pub fn bgpd_log_since_skip(&mut self) -> Vec<String> {
        self.bgpd.read_available()[self.skipped..].to_vec()
    }

    /// Waits up to `timeout` for bgpd to log, after the last [`Router::skip_bgpd_log`], a
    /// line `matches` accepts; returns it.
    pub fn wait_bgpd_log(
        &mut self,
        what: &str,
        matches: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Result<String, LabError> {
        if let Some(line) = self.bgpd_log_since_skip().into_iter().find(|l| matches(l)) {
            return Ok(line);
        }
        self.bgpd.wait_for(what, matches, timeout)
    }
}

/// A node file's `[bgp]` section announcing `vips` to `router` from `node`, BIRD's files in
/// `run_dir`, tracking `tracked_pools`.
pub fn node_section(
    node: &Host,
    router: &Host,
    vips: &[IpAddr],
    tracked_pools: &[&str],
    run_dir: &Path,
) -> String {
    let vips: Vec<String> = vips.iter().map(|v| format!("\"{v}\"")).collect();
    let pools: Vec<String> = tracked_pools.iter().map(|p| format!("\"{p}\"")).collect();
    format!(
        "\n[bgp]\nlocal_as = {NODE_AS}\nrouter_id = \"{}\"\nvips = [{}]\ntrack_pools = [{}]\n\
         run_dir = {:?}\nneighbors = [{{ address = \"{}\", remote_as = {ROUTER_AS} }}]\n",
        node.address,
        vips.join(", "),
        pools.join(", "),
        run_dir.display().to_string(),
        router.address,
    )
}
