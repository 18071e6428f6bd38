//! One VIP served by three load balancers over BGP ECMP, for the tests and `bench-ecmp`: the
//! lab with FRR on the router host and the client routing the VIP through it, three
//! `fulcrumd` cluster nodes announcing it ([`FulcrumEcmp`]), and what both the tests and
//! the benchmark do to it: long connections through the VIP (echo sessions and downloads,
//! each checked), connections counted per node with `ss` (so HAProxy's count alike), and a
//! rate-limit load from one client.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::bgp::{Router, node_section};
use crate::cluster::{Timing, node_id, web_cluster_file, with_echo_listener};
use crate::process::LabProcess;
use crate::serving::{download_slow, echo_session, metric};
use crate::{Host, HostRole, Lab, LabError, Topology};

/// The VIP every node announces (outside the VRRP VIPs of other tests).
pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 200);
/// The HTTP listener's port.
pub const HTTP_PORT: u16 = 80;
/// The L4 echo listener's port.
pub const ECHO_PORT: u16 = 9000;

/// The lab around the VIP: three load balancers, one backend, FRR on the router, and the
/// client routing the VIP through the router.
pub struct EcmpLab {
    /// The lab.
    pub lab: Lab,
    /// The load balancers.
    pub lbs: Vec<Host>,
    /// The client.
    pub client: Host,
    /// The router host.
    pub router_host: Host,
    /// FRR on it.
    pub router: Router,
    _backends: Vec<LabProcess>,
}

impl EcmpLab {
    /// Builds it; the load balancers do not answer ARP for addresses on `lo` (the VIP).
    pub fn up(lab_binary: &Path) -> Result<EcmpLab, LabError> {
        let topology = Topology { load_balancers: 3, backends: 1, prefix: None };
        let lab = Lab::up(&topology, lab_binary)?;
        let lbs = lab.hosts_of(HostRole::LoadBalancer);
        let backends = lab.start_backends()?;
        let router_host = lab.add_router()?;
        let router = Router::start(&lab, &router_host, &lbs)?;
        for lb in &lbs {
            for setting in ["net.ipv4.conf.all.arp_ignore=1", "net.ipv4.conf.all.arp_announce=2"] {
                lab.exec(lb, "sysctl", &["-qw", setting])?;
            }
        }
        let client = lab.host("client")?;
        let via = router_host.address.to_string();
        lab.exec(&client, "ip", &["route", "add", &format!("{VIP}/32"), "via", &via])?;
        Ok(EcmpLab { lab, lbs, client, router_host, router, _backends: backends })
    }

    /// Waits until the router's next hops for the VIP are the load balancers `indices`.
    pub fn wait_next_hops(
        &self,
        indices: &[usize],
        timeout: Duration,
    ) -> Result<Instant, LabError> {
        let expected: Vec<Ipv4Addr> = indices.iter().map(|&i| self.lbs[i].address).collect();
        self.router.wait_next_hops(&self.lab, VIP.into(), &expected, timeout)
    }

    /// The client connections to the VIP each load balancer holds now.
    pub fn open_connections(&self) -> Result<Vec<usize>, LabError> {
        self.lbs
            .iter()
            .map(|lb| {
                let listed = self.lab.exec(
                    lb,
                    "ss",
                    &["-Htn", "state", "established", "src", &VIP.to_string()],
                )?;
                Ok(listed.lines().filter(|line| !line.trim().is_empty()).count())
            })
            .collect()
    }

    /// `echoes` echo sessions (a line every 100 ms, each echo awaited) and `downloads`
    /// `/slow` downloads (checked byte for byte), all of `secs` seconds, through the VIP from
    /// the client; all open when this returns. Each must end within `secs` + 15 s.
    pub fn long_connections(
        &self,
        echoes: usize,
        downloads: usize,
        secs: u64,
    ) -> Result<LongConnections, LabError> {
        let before = self.open_connections()?;
        let namespace = self.client.namespace.clone();
        let outcomes = std::thread::spawn(move || {
            crate::netns::run_in(&namespace, move || run_long_connections(echoes, downloads, secs))
                .unwrap_or_else(|e| vec![Err(format!("cannot enter the client: {e}"))])
        });
        let wanted = echoes + downloads;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // Connections of an earlier batch a load balancer still holds are not these.
            let per_node: Vec<usize> = (self.open_connections()?.iter().zip(&before))
                .map(|(now, before)| now.saturating_sub(*before))
                .collect();
            if per_node.iter().sum::<usize>() >= wanted {
                return Ok(LongConnections { outcomes, per_node });
            }
            if outcomes.is_finished() {
                let cut = LongConnections { outcomes, per_node }.cut();
                let first: Vec<&String> = cut.iter().take(3).collect();
                return Err(LabError::Invalid(format!(
                    "the connections ended before all {wanted} were open: {} cut, first {first:?}",
                    cut.len()
                )));
            }
            if Instant::now() >= deadline {
                return Err(LabError::Invalid(format!(
                    "{wanted} connections never opened: {per_node:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `requests` requests from the client, one every `every`, each `GET /` on a new
    /// connection (a new flow for the router's hash): how many were answered 200 and 429,
    /// and how long sending took.
    pub fn limited_load(
        &self,
        requests: usize,
        every: Duration,
    ) -> Result<(usize, usize, Duration), LabError> {
        let address = SocketAddr::new(VIP.into(), HTTP_PORT);
        self.lab.run_in(&self.client, move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|source| LabError::Io { what: "start a runtime".into(), source })?;
            Ok(runtime.block_on(async move {
                let start = tokio::time::Instant::now();
                let mut all = tokio::task::JoinSet::new();
                let mut tick = tokio::time::interval(every);
                for _ in 0..requests {
                    tick.tick().await;
                    all.spawn(status_of(address));
                }
                let statuses = all.join_all().await;
                let count = |code| statuses.iter().filter(|s| **s == Some(code)).count();
                (count(200), count(429), start.elapsed())
            }))
        })?
    }
}

fn run_long_connections(echoes: usize, downloads: usize, secs: u64) -> Vec<Result<(), String>> {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return vec![Err(format!("cannot start a runtime: {e}"))],
    };
    runtime.block_on(async move {
        let limit = Duration::from_secs(secs + 15);
        let mut all = tokio::task::JoinSet::new();
        for n in 0..echoes {
            let address = SocketAddr::new(VIP.into(), ECHO_PORT);
            let lines = usize::try_from(secs * 10).unwrap_or(usize::MAX);
            let step = Duration::from_millis(100);
            let session = echo_session(address, lines, step, Duration::from_secs(8));
            all.spawn(async move {
                match tokio::time::timeout(limit, session).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(format!("echo {n}: {e}")),
                    Err(_) => Err(format!("echo {n}: still open after {limit:?}")),
                }
            });
        }
        for n in 0..downloads {
            let download = download_slow(SocketAddr::new(VIP.into(), HTTP_PORT), secs);
            all.spawn(async move {
                match tokio::time::timeout(limit, download).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(format!("download {n}: {e}")),
                    Err(_) => Err(format!("download {n}: still open after {limit:?}")),
                }
            });
        }
        all.join_all().await
    })
}

/// The status of one `GET /` on a new connection to `address`, if it was answered.
async fn status_of(address: SocketAddr) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
        let request = format!("GET / HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.ok()?;
        let head = String::from_utf8_lossy(&answer[..answer.len().min(12)]).into_owned();
        head.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(5), exchange).await.ok().flatten()
}

/// Long connections through the VIP, running in the client.
pub struct LongConnections {
    outcomes: std::thread::JoinHandle<Vec<Result<(), String>>>,
    /// Each load balancer's share of them once all were open (what it holds beyond what it
    /// held before they opened).
    pub per_node: Vec<usize>,
}

impl LongConnections {
    /// Whether some are still open.
    pub fn running(&self) -> bool {
        !self.outcomes.is_finished()
    }

    /// Waits for every connection to end: why each one cut was.
    pub fn cut(self) -> Vec<String> {
        match self.outcomes.join() {
            Ok(outcomes) => outcomes.into_iter().filter_map(Result::err).collect(),
            Err(_) => vec!["the client thread panicked".into()],
        }
    }
}

/// Three `fulcrumd` cluster nodes announcing [`VIP`] (tracking pool `web`), the web cluster
/// file with an echo listener applied.
pub struct FulcrumEcmp {
    /// The lab around them.
    pub ecmp: EcmpLab,
    /// The nodes, by load balancer.
    pub nodes: Vec<LabProcess>,
    /// Each node's node file, to start it again.
    pub node_files: Vec<String>,
}

impl FulcrumEcmp {
    /// Starts the nodes in `ecmp`, each node file ending with `extra` (in `[bgp]`).
    pub fn start(ecmp: EcmpLab, extra: &str) -> Result<FulcrumEcmp, LabError> {
        let lab = &ecmp.lab;
        let node_files = ecmp
            .lbs
            .iter()
            .map(|lb| {
                let run_dir = lab.log_dir().join(format!("bird-{}", lb.name));
                Ok(lab.cluster_node_file(Timing::Lab, lb, &ecmp.lbs, &[], &["web"])?
                    + &node_section(lb, &ecmp.router_host, &[VIP.into()], &["web"], &run_dir)
                    + extra)
            })
            .collect::<Result<Vec<String>, LabError>>()?;
        let nodes = ecmp
            .lbs
            .iter()
            .zip(&node_files)
            .map(|(lb, file)| lab.start_fulcrumd(lb, file))
            .collect::<Result<Vec<_>, _>>()?;
        let cluster = FulcrumEcmp { ecmp, nodes, node_files };
        cluster.apply(&cluster.cluster_file(None))?;
        Ok(cluster)
    }

    /// The cluster file: listener `front` (HTTP, port [`HTTP_PORT`]) and `echo` (TCP, port
    /// [`ECHO_PORT`]) to the backend, `front` limited per client IP to `limit` (a token
    /// bucket's capacity and refill per second) if given.
    pub fn cluster_file(&self, limit: Option<(f64, f64)>) -> String {
        let backends = self.ecmp.lab.hosts_of(HostRole::Backend);
        let backend_refs: Vec<&Host> = backends.iter().collect();
        let web = web_cluster_file(HTTP_PORT, &backend_refs);
        let web = match limit {
            None => web,
            Some((capacity, refill)) => {
                web.replacen(
                    "default_pool = \"web\"\n",
                    "default_pool = \"web\"\nrate_limit = \"per-client\"\n",
                    1,
                ) + &format!(
                    "\n[[rate_limits]]\nname = \"per-client\"\nkey = \"client_ip\"\n\
                     kind = \"token_bucket\"\ncapacity = {capacity}\nrefill_per_second = {refill}\n"
                )
            }
        };
        with_echo_listener(&web, ECHO_PORT, &backend_refs)
    }

    /// Applies cluster file `text` through `fulcrumctl` and waits until every node serves it.
    pub fn apply(&self, text: &str) -> Result<(), LabError> {
        let file = self.ecmp.lab.lab_file("cluster.toml", text)?;
        self.ctl(&["apply", "-f", &file, "--wait"]).map(drop)
    }

    /// Runs `fulcrumctl` with `args` from the client; what it printed.
    pub fn ctl(&self, args: &[&str]) -> Result<String, LabError> {
        let all: Vec<&Host> = self.ecmp.lbs.iter().collect();
        Ok(self.ecmp.lab.fulcrumctl_ok(&self.ecmp.client, &all, args)?.stdout)
    }

    /// Waits up to 5 s until each node of `observers` sees the nodes of `announcing`
    /// announcing, those of `draining` draining and no other node among those sharing the
    /// flows.
    pub fn wait_flow_view(
        &self,
        observers: &[usize],
        announcing: &[usize],
        draining: &[usize],
    ) -> Result<(), LabError> {
        let lbs = &self.ecmp.lbs;
        let expected: Vec<Option<f64>> = (0..lbs.len())
            .map(|i| match (announcing.contains(&i), draining.contains(&i)) {
                (true, _) => Some(1.0),
                (false, true) => Some(0.0),
                (false, false) => None,
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(5);
        for &observer in observers {
            loop {
                let metrics = self.ecmp.lab.admin_metrics(&lbs[observer])?;
                let seen: Vec<Option<f64>> = lbs
                    .iter()
                    .map(|lb| {
                        let labels = format!("node=\"{}\"", node_id(lb));
                        metric(&metrics, "fulcrum_bgp_flow_member_announcing", &labels)
                    })
                    .collect();
                if seen == expected {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(LabError::Invalid(format!(
                        "{} sees the flow members {seen:?}, not {expected:?}",
                        lbs[observer].name
                    )));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// Packets the other nodes handed to node `index` so far, as their `/metrics` say.
    pub fn handed_to(&self, index: usize) -> Result<f64, LabError> {
        let lbs = &self.ecmp.lbs;
        let labels = format!("to=\"{}\"", node_id(&lbs[index]));
        let mut total = 0.0;
        for (i, lb) in lbs.iter().enumerate().filter(|(i, _)| *i != index) {
            let metrics = self.ecmp.lab.admin_metrics(lb)?;
            total += metric(&metrics, "fulcrum_bgp_handed_packets_total", &labels)
                .ok_or_else(|| LabError::Invalid(format!("no handed packets on lb{}", i + 1)))?;
        }
        Ok(total)
    }

    /// Connections accepted by listener `front` on each node.
    pub fn accepted(&self) -> Result<Vec<f64>, LabError> {
        self.ecmp
            .lbs
            .iter()
            .map(|lb| {
                let metrics = self.ecmp.lab.admin_metrics(lb)?;
                Ok(metric(&metrics, "fulcrum_listener_connections_total", "listener=\"front\"")
                    .unwrap_or(0.0))
            })
            .collect()
    }

    /// Makes node `index`'s health checks fail (new connections to the backend refused, the
    /// established ones kept), or pass again.
    pub fn fail_health_checks(&self, index: usize, fail: bool) -> Result<(), LabError> {
        let lab = &self.ecmp.lab;
        let lb = &self.ecmp.lbs[index];
        if !fail {
            return lab.exec(lb, "nft", &["delete", "table", "ip", "lab_health"]).map(drop);
        }
        let backend = lab.hosts_of(HostRole::Backend)[0].http_address();
        let (address, port) = (backend.ip().to_string(), backend.port().to_string());
        let chain = "{ type filter hook output priority 0 ; }";
        let rule = ["add", "rule", "ip", "lab_health", "out", "ip", "daddr", &address, "tcp"]
            .into_iter()
            .chain(["dport", &port, "ct", "state", "new", "drop"])
            .collect::<Vec<_>>();
        for command in [
            &["add", "table", "ip", "lab_health"][..],
            &["add", "chain", "ip", "lab_health", "out", chain],
            &rule,
        ] {
            lab.exec(lb, "nft", command)?;
        }
        Ok(())
    }
}
