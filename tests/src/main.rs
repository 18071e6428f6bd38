//! `fulcrum-lab`: bring the lab up and down, and run its backends and prober.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fulcrum_lab::backend::Backend;
use fulcrum_lab::cluster;
use fulcrum_lab::probe::{self, ProbeArgs};
use fulcrum_lab::routers::Instance;
use fulcrum_lab::topology::{self, HostRole, Lab, Topology};
use tokio::net::TcpListener;

/// The port `up --cluster` serves on.
const DEMO_PORT: u16 = 80;

/// Fulcrum's network-namespace lab: load balancers, backends and a client on one bridge.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a lab and leave it running (needs root); prints its hosts.
    ///
    /// Example: fulcrum-lab up --load-balancers 3 --backends 2
    Up {
        /// Load-balancer hosts (1 to 9): lb1 = 198.18.0.11, …
        #[arg(long, default_value_t = 3)]
        load_balancers: usize,
        /// Backend hosts (0 to 9): be1 = 198.18.0.21, …
        #[arg(long, default_value_t = 2)]
        backends: usize,
        /// Name prefix (2 to 12 of a-z0-9); a fresh one by default.
        #[arg(long)]
        prefix: Option<String>,
        /// Do not start a lab backend on the backend hosts.
        #[arg(long)]
        no_backends: bool,
        /// Run a whole fulcrumd cluster node on every load balancer (Raft store over mutual
        /// TLS, admin API over TLS on port 7100 with the lab CA in <lab dir>/pki/ca.pem, VRRP
        /// for VIP 198.18.0.100: VRID 51, every 100 ms, priorities 150,
        /// 140, … from lb1, tracking pool `web`) and apply, with fulcrumctl, an HTTP listener
        /// on port 80 balancing round robin over the backends with health checks.
        #[arg(long)]
        cluster: bool,
    },
    /// Remove a lab: stop its processes, delete its namespaces.
    Down {
        /// The lab to remove.
        #[arg(long, required_unless_present = "all", conflicts_with = "all")]
        prefix: Option<String>,
        /// Remove every lab recorded on this host.
        #[arg(long)]
        all: bool,
    },
    /// Show the labs recorded on this host: hosts, and processes with their PIDs.
    Status {
        /// Show only this lab.
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Run a lab backend (inside a backend host).
    Backend {
        /// The name it answers with.
        #[arg(long)]
        name: String,
        /// Address of the HTTP/1.1 and h2c server.
        #[arg(long)]
        http: SocketAddr,
        /// Address of the TCP echo server.
        #[arg(long)]
        tcp_echo: Option<SocketAddr>,
        /// Bind even if the address is not (yet) on this host: for serving on a VIP.
        #[arg(long)]
        freebind: bool,
    },
    /// Probe a target repeatedly and print a JSON report (inside the client host).
    Probe(ProbeArgs),
    /// Measure configuration-write commit latency and time to apply on all three nodes,
    /// Fulcrum's Raft store against etcd 3.4 (needs root and etcd-server); prints a table.
    ///
    /// Example: fulcrum-lab bench-raft --writes 500
    BenchRaft {
        /// Sequential writes to each cluster.
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=100_000))]
        writes: u64,
    },
    /// Measure one VIP over BGP ECMP on three nodes, Fulcrum against plain ECMP to three
    /// HAProxy nodes announced the same way (needs root, haproxy, bird2 and frr): flows per
    /// node, connections cut by each planned change and by a host's crash, the withdrawal
    /// time after the crash, and the error of a cluster-wide rate limit; prints a table.
    ///
    /// Example: fulcrum-lab bench-ecmp
    BenchEcmp,
    /// Measure L4 bulk throughput and new-connection rate through fulcrumd, through HAProxy
    /// 2.6 in TCP mode and straight to the backend (needs root and haproxy); prints a table.
    ///
    /// Example: fulcrum-lab bench-l4 --runs 5
    BenchL4 {
        /// Runs per path; medians are reported.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=50))]
        runs: u64,
        /// MiB per bulk download.
        #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=65536))]
        bulk_mib: u64,
        /// How long each connection-rate run lasts.
        #[arg(long, default_value = "2s", value_parser = parse_run_time)]
        connection_time: Duration,
    },
    /// Measure HTTP requests/s and latency (wrk for HTTP/1.1 keep-alive, h2load for h2c)
    /// through fulcrumd, HAProxy 2.6, nginx 1.22 and straight to the backend (needs root,
    /// haproxy, nginx-light, wrk and nghttp2-client); prints a table.
    ///
    /// Example: fulcrum-lab bench-l7 --runs 3
    BenchL7 {
        /// Runs per path; medians are reported.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=20))]
        runs: u64,
        /// How long each wrk run lasts.
        #[arg(long, default_value = "5s", value_parser = parse_run_time)]
        duration: Duration,
        /// Open connections per client.
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1000))]
        connections: u32,
        /// Requests per h2load run.
        #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(100..=10_000_000))]
        h2_requests: u64,
        /// Only these measurements (comma-separated; all by default), to profile one.
        #[arg(long, value_enum, value_delimiter = ',')]
        only: Vec<fulcrum_lab::bench_l7::Measure>,
    },
    /// Measure config propagation in a three-node cluster: from `fulcrumctl backend add
    /// --wait` to the new backend serving on every node (needs root); prints a table.
    ///
    /// Example: fulcrum-lab bench-propagation --changes 50
    BenchPropagation {
        /// Timed changes.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=1000))]
        changes: u64,
    },
    /// Measure the client's outage on a VIP failover, fulcrumd against keepalived (needs
    /// root and keepalived); prints a Markdown table. Plain VRRP between two routers by
    /// default; with --faults, three-node Fulcrum clusters at default settings (quorum fence)
    /// under each kind of fault, with the time two nodes answered for the VIP at once.
    ///
    /// Example: fulcrum-lab bench-failover --runs 5 --interval 1s --interval 100ms
    /// Example: fulcrum-lab bench-failover --runs 5 --faults
    BenchFailover {
        /// Runs per configuration.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=100))]
        runs: u64,
        /// Advertisement intervals to measure (repeatable; plain VRRP only).
        #[arg(long = "interval", default_values = ["1s", "100ms"], value_parser = parse_interval)]
        intervals: Vec<Duration>,
        /// Measure fenced clusters under faults instead of plain VRRP.
        #[arg(long)]
        faults: bool,
    },
    /// Strike a three-node cluster at default settings with a seeded random schedule of
    /// faults while a client probes the VIP and a writer and a reader use the configuration;
    /// check that at most one node answers for the VIP, that every acknowledged write
    /// reaches every node and that the history is linearizable (needs root). Prints a table
    /// per fault kind; exits 1 on a violation. The same seed repeats the schedule.
    ///
    /// Example: fulcrum-lab chaos --minutes 10 --seed 7
    Chaos {
        /// How long to run, in minutes.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=600))]
        minutes: u64,
        /// The schedule's seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Run a three-node cluster at default settings under full HTTP load (wrk through the VIP)
    /// and count VRRP transitions, leases that ran out and Raft elections, none of which
    /// should happen without a fault (needs root and wrk).
    ///
    /// Example: fulcrum-lab soak --minutes 10
    Soak {
        /// How long the load lasts, in minutes.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
        minutes: u64,
    },
    /// Count failed requests and cut connections across planned VIP handovers under load,
    /// Fulcrum (`fulcrumctl failover`) against keepalived + HAProxy (needs root, keepalived
    /// and haproxy); prints a Markdown table.
    ///
    /// Example: fulcrum-lab bench-handover --handovers 20
    BenchHandover {
        /// Handovers per implementation.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=200))]
        handovers: u64,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("fulcrum-lab: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Up { load_balancers, backends, prefix, no_backends, cluster } => {
            let exe = std::env::current_exe().context("cannot find the fulcrum-lab executable")?;
            let topology = Topology { load_balancers, backends, prefix };
            let lab = Lab::up(&topology, exe).context("cannot build the lab")?;
            if !no_backends {
                for process in lab.start_backends().context("cannot start the lab backends")? {
                    process.detach();
                }
            }
            if cluster {
                start_cluster(&lab).context("cannot start the cluster on the load balancers")?;
            }
            let prefix = lab.prefix();
            lab.keep();
            print!("{}", topology::describe_recorded(&prefix)?);
            println!("remove it with: fulcrum-lab down --prefix {prefix}");
            Ok(())
        }
        Command::Down { prefix, all } => {
            let prefixes =
                if all { topology::recorded_labs()? } else { prefix.into_iter().collect() };
            for prefix in prefixes {
                topology::remove_recorded(&prefix)
                    .with_context(|| format!("cannot remove lab {prefix}"))?;
                println!("removed lab {prefix}");
            }
            Ok(())
        }
        Command::Status { prefix } => {
            let labs = match prefix {
                Some(prefix) => vec![prefix],
                None => topology::recorded_labs()?,
            };
            if labs.is_empty() {
                println!("no lab is recorded in {}", topology::STATE_DIR);
            }
            for prefix in labs {
                print!("{}", topology::describe_recorded(&prefix)?);
            }
            Ok(())
        }
        Command::Backend { name, http, tcp_echo, freebind } => runtime()?.block_on(async {
            let backend = Backend::new(&name);
            let http_listener = listen(http, freebind)?;
            let echo_listener = tcp_echo.map(|address| listen(address, freebind)).transpose()?;
            // The lab waits for this line; nothing else goes to standard output.
            println!("ready {name} http {http} echo {tcp_echo:?}");
            let echo = async {
                match echo_listener {
                    Some(listener) => Backend::serve_echo(listener).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                result = backend.serve_http(http_listener) => result.context("HTTP server failed"),
                result = echo => result.context("echo server failed"),
                _ = terminated() => Ok(()),
            }
        }),
        Command::BenchFailover { runs, faults: true, .. } => {
            let exe = std::env::current_exe().context("cannot find the fulcrum-lab executable")?;
            let runs = usize::try_from(runs).context("too many runs")?;
            let all = fulcrum_lab::bench_fence::Fault::ALL;
            let series = fulcrum_lab::bench_fence::faults(&exe, &all, runs)
                .context("the fault benchmark failed")?;
            print!("{}", fulcrum_lab::bench_fence::report(&series));
            Ok(())
        }
        Command::BenchFailover { runs, intervals, faults: false } => {
            let exe = std::env::current_exe().context("cannot find the fulcrum-lab executable")?;
            let runs = usize::try_from(runs).context("too many runs")?;
            let series = fulcrum_lab::bench::failover(&exe, &intervals, runs)
                .context("the failover benchmark failed")?;
            print!("{}", fulcrum_lab::bench::report(&series));
            Ok(())
        }
        Command::Chaos { minutes, seed } => {
            let exe = std::env::current_exe().context("cannot find the fulcrum-lab executable")?;
            let duration = Duration::from_secs(minutes * 60);
            let report = fulcrum_lab::chaos::run(&exe, duration, seed)
                .context("the chaos run could not go on")?;
            print!("{}", fulcrum_lab::chaos::table(&report));
            if !report.violations.is_empty() {
                anyhow::bail!("{} invariant violations (seed {seed})", report.violations.len());
            }
            Ok(())
        }
        Command::Soak { minutes } => {
            let exe = std::env::current_exe().context("cannot find the fulcrum-lab executable")?;
            let report = fulcrum_lab::soak::soak(&exe, Duration::from_secs(minutes * 60))
                .context("the soak run failed")?;
            println!("{report}");
            Ok(())
        }
        Command::BenchHandover { handovers } => {
            let exe = std::env::current_exe().context("cannot find the fulcrum-lab executable")?;
            let handovers = usize::try_from(handovers).context("too many handovers")?;
            let tallies = fulcrum_lab::bench_handover::handover(&exe, handovers)
                .context("the handover benchmark failed")?;
            print!("{}", fulcrum_lab::bench_handover::report(&tallies));
            Ok(())
        }
        Command::BenchEcmp => {
            let exe = std::env::current_exe().context("cannot find the fulcrum-lab executable")?;
            let figures =
                fulcrum_lab::bench_ecmp::ecmp(&exe).context("the ECMP benchmark failed")?;
            print!("{}", fulcrum_lab::bench_ecmp::report(&figures));
            Ok(())
        }
        Command::BenchL4 { runs, bulk_mib, connection_time } => {
            let exe = std::env::current_exe().context("cannot find the fulcrum-lab executable")?;
            let settings = fulcrum_lab::bench_l4::Settings {
                runs: usize::try_from(runs).context("too many runs")?,
                bulk_bytes: bulk_mib << 20,
                connection_time,
            };
            let figures =
                fulcrum_lab::bench_l4::l4(&exe, settings).context("the L4 benchmark failed")?;
            print!("{}", fulcrum_lab::bench_l4::report(&figures, &settings));
            Ok(())
        }
        Command::BenchL7 { runs, duration, connections, h2_requests, only } => {
            let exe = std::env::current_exe().context("cannot find the fulcrum-lab executable")?;
            let settings = fulcrum_lab::bench_l7::Settings {
                runs: usize::try_from(runs).context("too many runs")?,
                duration,
                connections,
                h2_requests,
                only,
            };
            let figures = fulcrum_lab::bench_l7::l7(&exe, settings.clone())
                .context("the L7 benchmark failed")?;
            print!("{}", fulcrum_lab::bench_l7::report(&figures, &settings));
            Ok(())
        }
        Command::BenchPropagation { changes } => {
            let exe = std::env::current_exe().context("cannot find the fulcrum-lab executable")?;
            let changes = usize::try_from(changes).context("too many changes")?;
            let figures = fulcrum_lab::bench_propagation::propagation(&exe, changes)
                .context("the propagation benchmark failed")?;
            print!("{}", fulcrum_lab::bench_propagation::report(&figures));
            Ok(())
        }
        Command::BenchRaft { writes } => {
            let exe = std::env::current_exe().context("cannot find the fulcrum-lab executable")?;
            let writes = usize::try_from(writes).context("too many writes")?;
            let (fulcrum, etcd) = fulcrum_lab::bench_raft::commit_latency(&exe, writes)
                .context("the Raft benchmark failed")?;
            print!("{}", fulcrum_lab::bench_raft::report(&fulcrum, &etcd));
            Ok(())
        }
        Command::Probe(args) => runtime()?.block_on(async {
            println!("probing {}", args.target);
            let report = probe::run(&args).await;
            if args.text {
                println!("{report}");
            } else {
                println!("{}", serde_json::to_string(&report)?);
            }
            Ok(())
        }),
    }
}

/// Starts a cluster node on every load balancer and applies the demo cluster file.
fn start_cluster(lab: &Lab) -> anyhow::Result<()> {
    let lbs = lab.hosts_of(HostRole::LoadBalancer);
    let the_vip = topology::vip(1);
    for (n, lb) in lbs.iter().enumerate() {
        let priority = u8::try_from(150 - 10 * n).context("too many load balancers")?;
        let instance = Instance::new(51, priority, Duration::from_millis(100), &[the_vip]);
        lab.start_cluster_node(cluster::Timing::Lab, lb, &lbs, &[instance], &["web"])?.detach();
    }
    let backends = lab.hosts_of(HostRole::Backend);
    let file = cluster::web_cluster_file(DEMO_PORT, &backends.iter().collect::<Vec<_>>());
    let path = lab.lab_file("cluster.toml", &file)?;
    let client = lab.host("client")?;
    // The first write waits (up to 10 s) for the nodes to elect a leader.
    let applied = lab.fulcrumctl(
        &client,
        &lbs.iter().collect::<Vec<_>>(),
        None,
        &["apply", "-f", &path, "--wait"],
    )?;
    anyhow::ensure!(applied.ok(), "fulcrumctl apply failed: {}{}", applied.stdout, applied.stderr);
    print!("{}", applied.stdout);
    // The VIP is held once VRRP has a master and the Raft leader has granted it the lease
    // (a leader just elected first waits out one lease).
    if let Some(first) = lbs.first() {
        lab.wait_for_holder(&lbs, first, the_vip, Duration::from_secs(15))
            .context("no load balancer took the VIP")?;
    }
    Ok(())
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = fulcrum_model::duration::parse(text)?;
    if interval < Duration::from_millis(10) || interval > Duration::from_secs(40) {
        return Err(format!("{text:?} is outside VRRP's 10ms..40s"));
    }
    Ok(interval)
}

fn parse_run_time(text: &str) -> Result<Duration, String> {
    let time = fulcrum_model::duration::parse(text)?;
    if time < Duration::from_millis(100) || time > Duration::from_secs(60) {
        return Err(format!("{text:?} is outside 100ms..60s"));
    }
    Ok(time)
}

/// A listening socket on `address`; with `freebind`, also for an address not on this host.
fn listen(address: SocketAddr, freebind: bool) -> anyhow::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let bind = || -> std::io::Result<TcpListener> {
        let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        match address {
            SocketAddr::V4(_) => socket.set_freebind_v4(freebind)?,
            SocketAddr::V6(_) => socket.set_freebind_v6(freebind)?,
        }
        socket.set_nonblocking(true)?;
        socket.bind(&address.into())?;
        socket.listen(1024)?;
        TcpListener::from_std(socket.into())
    };
    bind().with_context(|| format!("cannot listen on {address}"))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Resolves on SIGTERM or SIGINT.
async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}
