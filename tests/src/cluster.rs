//! Whole cluster nodes in the lab: `fulcrumd` with the Raft store, the admin API and VRRP on
//! the load-balancer hosts, and `fulcrumctl` run from the client host against their admin
//! APIs.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::process::LabProcess;
use crate::routers::{Instance, fulcrumd_node_file};
use crate::serving::fetch_metrics_tls;
use crate::{Host, Lab, LabError};

/// Port of each node's Raft RPC.
pub const RAFT_PORT: u16 = 7000;
/// Port of each node's admin API.
pub const ADMIN_PORT: u16 = 7100;
/// The lab cluster's admin token.
pub const ADMIN_TOKEN: &str = "lab-admin-token-0123456789abcdef";
/// The lab cluster's read-only admin token.
pub const READ_TOKEN: &str = "lab-read-only-token-0123456789ab";

/// A node's certificate files (see [`Lab::ca_file`]).
pub struct NodePki {
    /// The lab CA's certificate.
    pub ca: PathBuf,
    /// The node's certificate (PEM), naming `fulcrum-peer` and the host's address.
    pub cert: PathBuf,
    /// Its key (PEM).
    pub key: PathBuf,
}

/// A node's id in lab clusters: the last octet of its address.
pub fn node_id(host: &Host) -> u64 {
    u64::from(host.address.octets()[3])
}

/// The admin API endpoint of `host`.
pub fn admin_endpoint(host: &Host) -> String {
    format!("https://{}:{ADMIN_PORT}", host.address)
}

/// The fence and Raft timings of a lab cluster node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timing {
    /// Slower Raft (400-800 ms elections) and a 2 s lease, so nodes of several labs at once on
    /// a busy host keep their leaders and leases: the tests' choice.
    Lab,
    /// fulcrumd's defaults (a 350 ms lease, 70-120 ms elections): what the benchmarks and the
    /// chaos suite measure.
    Defaults,
}

/// What `fulcrumctl` did.
#[derive(Debug)]
pub struct CtlOutput {
    /// Its exit code (`None` if a signal ended it).
    pub code: Option<i32>,
    /// What it printed on stdout.
    pub stdout: String,
    /// What it printed on stderr.
    pub stderr: String,
}

impl CtlOutput {
    /// Whether it succeeded.
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// Its stdout as JSON (for `-o json`).
    pub fn json(&self) -> Result<serde_json::Value, LabError> {
        serde_json::from_str(&self.stdout).map_err(|e| {
            LabError::Invalid(format!(
                "fulcrumctl printed no JSON ({e}): {}{}",
                self.stdout, self.stderr
            ))
        })
    }
}

impl Lab {
    fn write_file(&self, name: &str, text: &str) -> Result<PathBuf, LabError> {
        let dir = self.log_dir();
        let path = dir.join(name);
        std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(&path, text))
            .map_err(|source| LabError::Io { what: format!("write {}", path.display()), source })?;
        Ok(path)
    }

    /// The node file of a cluster node on `host` at `timing`: Raft with `members` as initial
    /// members (none for a node that will join), the admin API, and the VRRP `instances`,
    /// each tracking `tracked_pools`.
    pub fn cluster_node_file(
        &self,
        timing: Timing,
        host: &Host,
        members: &[Host],
        instances: &[Instance],
        tracked_pools: &[&str],
    ) -> Result<String, LabError> {
        let secret = self.write_file("cluster.secret", "a lab cluster secret of 32 bytes\n")?;
        let token = self.write_file("admin.token", &format!("{ADMIN_TOKEN}\n"))?;
        let read_token = self.write_file("read.token", &format!("{READ_TOKEN}\n"))?;
        let pki = self.node_pki(host)?;
        let lease = match timing {
            Timing::Lab => "fence_lease = \"2s\"\n",
            Timing::Defaults => "",
        };
        let mut file = format!(
            "shutdown_drain = \"10s\"\n{lease}{}",
            fulcrumd_node_file(node_id(host), instances)
        );
        // Adverts only from the other members count (the fence's defence against forgery):
        // over IPv6 they come from the members' link-local addresses.
        let ipv6 = instances.iter().any(|i| i.vips.iter().any(std::net::IpAddr::is_ipv6));
        let mut others = Vec::new();
        for member in members.iter().filter(|m| m.name != host.name) {
            others.push(format!("\"{}\"", member.address));
            if ipv6 {
                others.push(format!("\"{}\"", self.link_local(member)?));
            }
        }
        if !others.is_empty() {
            file = file
                .replace("[[vrrp]]\n", &format!("[[vrrp]]\nmembers = [{}]\n", others.join(", ")));
        }
        if !tracked_pools.is_empty() {
            let quoted: Vec<String> = tracked_pools.iter().map(|p| format!("{p:?}")).collect();
            file = file.replace(
                "[[vrrp]]\n",
                &format!("[[vrrp]]\ntrack_pools = [{}]\n", quoted.join(", ")),
            );
        }
        file.push_str(&format!(
            "\n[admin]\nlisten = \"{address}:{ADMIN_PORT}\"\ntoken_file = {token:?}\n\
             read_token_file = {read_token:?}\ntls = {{ cert = {cert:?}, key = {key:?} }}\n\n\
             [raft]\nlisten = \"{address}:{RAFT_PORT}\"\ndata_dir = {data:?}\ncluster_name = \"lab\"\n\
             secret_file = {secret:?}\n{raft_timing}",
            raft_timing = match timing {
                Timing::Lab => "heartbeat = \"50ms\"\nelection_timeout_min = \"400ms\"\n\
                                election_timeout_max = \"800ms\"\n",
                Timing::Defaults => "",
            },
            address = host.address,
            token = token.display().to_string(),
            read_token = read_token.display().to_string(),
            cert = pki.cert.display().to_string(),
            key = pki.key.display().to_string(),
            data = self.raft_data_dir(host).display().to_string(),
            secret = secret.display().to_string(),
        ));
        for member in members {
            file.push_str(&format!(
                "[[raft.initial_members]]\nid = {}\naddress = \"{}:{RAFT_PORT}\"\n",
                node_id(member),
                member.address
            ));
        }
        file.push_str(&format!(
            "[raft.tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
            pki.ca.display().to_string(),
            pki.cert.display().to_string(),
            pki.key.display().to_string()
        ));
        Ok(file)
    }

    /// The lab CA's certificate, which signed every node's (mutual TLS between nodes, and
    /// the admin API's TLS).
    pub fn ca_file(&self) -> PathBuf {
        self.log_dir().join("pki").join("ca.pem")
    }

    /// `host`'s certificate files, made by `fulcrumd pki` on first use (with the lab CA),
    /// naming its address for the admin API's clients.
    pub fn node_pki(&self, host: &Host) -> Result<NodePki, LabError> {
        let dir = self.log_dir().join("pki");
        let pki = |args: &[&str]| -> Result<(), LabError> {
            let binary = crate::routers::fulcrumd_binary()?;
            let output = Command::new(&binary)
                .arg("pki")
                .args(args)
                .arg("--out")
                .arg(&dir)
                .output()
                .map_err(|source| LabError::Io {
                    what: format!("run {}", binary.display()),
                    source,
                })?;
            if output.status.success() {
                return Ok(());
            }
            Err(LabError::Invalid(format!(
                "fulcrumd pki {args:?}: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            )))
        };
        let (ca, ca_key) = (self.ca_file(), dir.join("ca.key"));
        if !ca.is_file() {
            pki(&["ca"])?;
        }
        let (cert, key) =
            (dir.join(format!("{}.pem", host.name)), dir.join(format!("{}.key", host.name)));
        if !cert.is_file() {
            let (ca_key, address) = (ca_key.display().to_string(), host.address.to_string());
            pki(&["node", "--ca-key", &ca_key, "--name", &host.name, "--address", &address])?;
        }
        Ok(NodePki { ca, cert, key })
    }

    /// Starts a cluster node on `host` (see [`Lab::cluster_node_file`]) and waits until it
    /// runs.
    pub fn start_cluster_node(
        &self,
        timing: Timing,
        host: &Host,
        members: &[Host],
        instances: &[Instance],
        tracked_pools: &[&str],
    ) -> Result<LabProcess, LabError> {
        self.start_cluster_node_with_tools(timing, host, members, instances, tracked_pools, None)
    }

    /// As [`Lab::start_cluster_node`], with the programs fulcrumd runs looked up in `tools`
    /// first, if given (see [`Lab::start_fulcrumd_with_tools`]).
    pub fn start_cluster_node_with_tools(
        &self,
        timing: Timing,
        host: &Host,
        members: &[Host],
        instances: &[Instance],
        tracked_pools: &[&str],
        tools: Option<&Path>,
    ) -> Result<LabProcess, LabError> {
        let file = self.cluster_node_file(timing, host, members, instances, tracked_pools)?;
        self.start_fulcrumd_with_tools(host, &file, tools)
    }

    /// A cluster node on each of `members`, VRID `vrid` protecting `vips` with priorities
    /// ranked by place (150, 100, 50, …: the first owns the VIPs), each tracking
    /// `tracked_pools`; started in order and each waited for.
    pub fn start_ranked_cluster(
        &self,
        timing: Timing,
        members: &[Host],
        vrid: u8,
        vips: &[IpAddr],
        tracked_pools: &[&str],
    ) -> Result<Vec<LabProcess>, LabError> {
        members
            .iter()
            .enumerate()
            .map(|(i, host)| {
                let instance = Instance::ranked(vrid, i, vips);
                self.start_cluster_node(timing, host, members, &[instance], tracked_pools)
            })
            .collect()
    }

    /// `fulcrumctl args` (see [`Lab::fulcrumctl`]) with the lab's token, which must succeed.
    pub fn fulcrumctl_ok(
        &self,
        host: &Host,
        endpoints: &[&Host],
        args: &[&str],
    ) -> Result<CtlOutput, LabError> {
        let output = self.fulcrumctl(host, endpoints, None, args)?;
        if !output.ok() {
            return Err(LabError::Invalid(format!("fulcrumctl {args:?} failed: {output:?}")));
        }
        Ok(output)
    }

    /// Runs `fulcrumctl args` on `host` against the admin APIs of `endpoints` (tried in
    /// order), with the lab's token unless `token` overrides it.
    pub fn fulcrumctl(
        &self,
        host: &Host,
        endpoints: &[&Host],
        token: Option<&str>,
        args: &[&str],
    ) -> Result<CtlOutput, LabError> {
        let binary = crate::routers::workspace_binary("fulcrumctl", "FULCRUMCTL")?;
        let endpoints: Vec<String> = endpoints.iter().map(|h| admin_endpoint(h)).collect();
        let output = Command::new("ip")
            .args(["netns", "exec", &host.namespace])
            .arg(&binary)
            .args(args)
            .env("FULCRUM_ENDPOINTS", endpoints.join(","))
            .env("FULCRUM_CA_FILE", self.ca_file())
            .env("FULCRUM_TOKEN", token.unwrap_or(ADMIN_TOKEN))
            .env_remove("XDG_CONFIG_HOME")
            .env("HOME", self.log_dir())
            .output()
            .map_err(|source| LabError::Io { what: format!("run {}", binary.display()), source })?;
        Ok(CtlOutput {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    /// The Raft leader every node of `asked` agrees on, asked with `fulcrumctl status` from
    /// `client`, waiting for one for up to `timeout`.
    pub fn agreed_leader(
        &self,
        client: &Host,
        asked: &[&Host],
        timeout: Duration,
    ) -> Result<u64, LabError> {
        let deadline = Instant::now() + timeout;
        loop {
            let leaders: Vec<Option<u64>> = asked
                .iter()
                .map(|host| {
                    let status = self.fulcrumctl(client, &[host], None, &["-o", "json", "status"]);
                    status.ok()?.json().ok()?["leader"].as_u64()
                })
                .collect();
            if let Some(Some(leader)) = leaders.first()
                && leaders.iter().all(|l| l == &Some(*leader))
            {
                return Ok(*leader);
            }
            if Instant::now() >= deadline {
                return Err(LabError::Invalid(format!("no agreed Raft leader: {leaders:?}")));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Where a cluster node on `host` keeps its Raft log and state.
    pub fn raft_data_dir(&self, host: &Host) -> PathBuf {
        self.log_dir().join(format!("{}-raft", host.name))
    }

    /// Writes `text` as a file in the lab's directory and returns its path, for `-f`.
    pub fn lab_file(&self, name: &str, text: &str) -> Result<String, LabError> {
        Ok(self.write_file(name, text)?.display().to_string())
    }

    /// A cluster node's `/metrics` from its admin API (TLS, trusting the lab CA), read with
    /// the read-only token from inside its namespace.
    pub fn admin_metrics(&self, host: &Host) -> Result<String, LabError> {
        let address = SocketAddr::from((host.address, ADMIN_PORT));
        let ca = self.ca_file();
        crate::netns::run_in(&host.namespace, || fetch_metrics_tls(address, Some(READ_TOKEN), &ca))?
            .map_err(|source| LabError::Io {
                what: format!("GET https://{address}/metrics"),
                source,
            })
    }

    /// One admin API call to `host` over TLS (trusting the lab CA) with the admin token:
    /// `method path`, extra `headers`, a JSON `body`; the status and the answer's body.
    pub fn admin_call(
        &self,
        host: &Host,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(u16, String), LabError> {
        let address = SocketAddr::from((host.address, ADMIN_PORT));
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nhost: {address}\r\nauthorization: Bearer {ADMIN_TOKEN}\r\n\
             connection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        let mut request = request.into_bytes();
        request.extend_from_slice(body);
        let ca = self.ca_file();
        let answer = crate::netns::run_in(&host.namespace, || {
            crate::serving::exchange(crate::serving::tls_connect(address, &ca)?, &request)
        })?
        .map_err(|source| LabError::Io {
            what: format!("{method} https://{address}{path}"),
            source,
        })?;
        let status = answer.get(9..12).and_then(|code| code.parse().ok()).unwrap_or(0);
        let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body).to_owned();
        Ok((status, body))
    }

    /// The nftables rules `host` has loaded now.
    pub fn ruleset(&self, host: &Host) -> Result<String, LabError> {
        self.exec(host, "nft", &["list", "ruleset"])
    }

    /// Whether `host` has `address` on any interface (the VIP a drain holds is on `lo`).
    pub fn has_address(&self, host: &Host, address: Ipv4Addr) -> Result<bool, LabError> {
        Ok(self.exec(host, "ip", &["-o", "-4", "addr", "show"])?.contains(&format!(" {address}/")))
    }
}

/// A cluster file: an HTTP listener on every address, port `port`, in front of pool `web`
/// with `backends`; listening on the wildcard lets each node be probed on its own address as
/// well as on the VIP. See [`with_echo_listener`] for an L4 listener as well.
pub fn web_cluster_file(port: u16, backends: &[&Host]) -> String {
    let list: Vec<String> =
        backends.iter().map(|b| format!("{{ address = \"{}\" }}", b.http_address())).collect();
    format!(
        "[[listeners]]\nname = \"front\"\nbind = \"0.0.0.0:{port}\"\nprotocol = \"http\"\n\
         default_pool = \"web\"\n\n[[pools]]\nname = \"web\"\nbackends = [{}]\n\n\
         [pools.health_check]\ninterval = \"200ms\"\ntimeout = \"150ms\"\nhttp = {{ path = \"/health\" }}\n",
        list.join(", ")
    )
}

/// `cluster_file` with an L4 listener on every address, port `port`, in front of pool `echo`:
/// the TCP echo servers of `backends`.
pub fn with_echo_listener(cluster_file: &str, port: u16, backends: &[&Host]) -> String {
    let list: Vec<String> =
        backends.iter().map(|b| format!("{{ address = \"{}\" }}", b.echo_address())).collect();
    format!(
        "[[listeners]]\nname = \"echo\"\nbind = \"0.0.0.0:{port}\"\nprotocol = \"tcp\"\n\
         default_pool = \"echo\"\n\n[[pools]]\nname = \"echo\"\nbackends = [{}]\n\n{cluster_file}",
        list.join(", ")
    )
}
