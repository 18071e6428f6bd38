//! The L4 benchmark: bulk throughput (a large download through the proxy) and the rate of
//! new connections, through fulcrumd, through HAProxy 2.6 in TCP mode on the same host, and
//! straight to the backend, in one lab run.
//!
//! The backend's servers run in the backend host (a source that sends N bytes on request, and
//! a greeter that sends one byte and closes); the client runs in the client host. Everything
//! shares the machine's cores, so the ratios matter more than the absolute figures.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use crate::bench_raft::percentile;
use crate::process::LabProcess;
use crate::serving::ServingNode;
use crate::topology::{Host, HostRole, Lab, LabError, Topology};

pub(crate) const HAPROXY: &str = "/usr/sbin/haproxy";
const SOURCE_PORT: u16 = 9101;
const GREETER_PORT: u16 = 9102;
/// Front ports: Fulcrum's on 8000/8001, HAProxy's on 8100/8101.
const FULCRUM_PORTS: (u16, u16) = (8000, 8001);
const HAPROXY_PORTS: (u16, u16) = (8100, 8101);
/// Concurrent clients opening connections in the connection-rate test.
const CONNECTION_CLIENTS: usize = 16;
/// The largest request a source serves, so every transfer is bounded.
const MAX_BULK_BYTES: u64 = 64 << 30;

/// What the benchmark measures, and how much.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Runs per measurement; medians are reported.
    pub runs: usize,
    /// Bytes per bulk download.
    pub bulk_bytes: u64,
    /// How long each connection-rate run lasts.
    pub connection_time: Duration,
}

/// One path to the backend and what it achieved.
#[derive(Clone, Debug)]
pub struct Figures {
    /// `direct`, `fulcrumd` or `haproxy`.
    pub path: &'static str,
    /// Bulk throughput per run, in Mbit/s.
    pub bulk_mbps: Vec<u64>,
    /// New connections per second, per run.
    pub connections_per_second: Vec<u64>,
    /// The proxy's peak resident memory after the runs, in KiB (none for `direct`).
    pub peak_rss_kib: Option<u64>,
}

/// Runs the benchmark in a fresh lab and returns the figures of every path.
pub fn l4(lab_binary: &std::path::Path, settings: Settings) -> Result<Vec<Figures>, LabError> {
    if !std::path::Path::new(HAPROXY).is_file() {
        return Err(LabError::Invalid("HAProxy is not installed: apt-get install haproxy".into()));
    }
    if settings.bulk_bytes > MAX_BULK_BYTES {
        return Err(LabError::Invalid(format!("at most {MAX_BULK_BYTES} bytes per download")));
    }
    let lab = Lab::up(&Topology { load_balancers: 1, backends: 1, prefix: None }, lab_binary)?;
    let lb = lab.host("lb1")?;
    let backend = lab.hosts_of(HostRole::Backend).remove(0);
    let client = lab.host("client")?;
    for host in [&lb, &client] {
        widen_port_range(host)?;
    }
    let _servers = BackendServers::start(&backend)?;
    let source = SocketAddr::from((backend.address, SOURCE_PORT));
    let greeter = SocketAddr::from((backend.address, GREETER_PORT));

    let mut node = lab.start_serving_node(&lb, &fulcrum_cluster_file(&lb, source, greeter), &[])?;
    let mut haproxy = start_haproxy(&lab, &lb, source, greeter)?;
    let paths = [
        ("direct", source, greeter, None),
        ("fulcrumd", at(&lb, FULCRUM_PORTS.0), at(&lb, FULCRUM_PORTS.1), Some(node.process.pid())),
        ("haproxy", at(&lb, HAPROXY_PORTS.0), at(&lb, HAPROXY_PORTS.1), Some(haproxy.pid())),
    ];
    let mut figures: Vec<Figures> = paths
        .iter()
        .map(|(path, ..)| Figures {
            path,
            bulk_mbps: Vec::new(),
            connections_per_second: Vec::new(),
            peak_rss_kib: None,
        })
        .collect();
    for (path, bulk, connect, _) in &paths {
        for address in [bulk, connect] {
            lab.run_in(&client, || in_runtime(wait_connectable(*address)))?.map_err(|e| {
                let logs = lab.log_dir();
                LabError::Invalid(format!(
                    "{path} does not serve: {e} (logs in {})",
                    logs.display()
                ))
            })?;
        }
    }
    // Interleaved, so a slow phase of the machine hits every path alike.
    for _ in 0..settings.runs {
        for ((_, bulk, connect, _), figures) in paths.iter().zip(&mut figures) {
            let mbps =
                lab.run_in(&client, || in_runtime(download(*bulk, settings.bulk_bytes)))??;
            figures.bulk_mbps.push(mbps);
            let rate = lab.run_in(&client, || {
                in_runtime(connection_rate(*connect, settings.connection_time))
            })??;
            figures.connections_per_second.push(rate);
        }
    }
    for ((_, _, _, pid), figures) in paths.iter().zip(&mut figures) {
        figures.peak_rss_kib = pid.and_then(peak_rss_kib);
    }
    stop(&mut node, &mut [&mut haproxy]);
    Ok(figures)
}

pub(crate) fn stop(node: &mut ServingNode, others: &mut [&mut LabProcess]) {
    for process in std::iter::once(&mut node.process).chain(others.iter_mut().map(|p| &mut **p)) {
        if let Err(e) = process.stop() {
            tracing::warn!("{e}");
        }
    }
}

pub(crate) fn at(host: &Host, port: u16) -> SocketAddr {
    SocketAddr::from((host.address, port))
}

/// More ephemeral ports, so the connection-rate runs never run out (the lab host's own
/// namespace only).
pub(crate) fn widen_port_range(host: &Host) -> Result<(), LabError> {
    crate::netns::run_in(&host.namespace, || {
        std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "1024 65000")
    })?
    .map_err(|source| LabError::Io {
        what: format!("widen the port range on {}", host.name),
        source,
    })
}

fn fulcrum_cluster_file(lb: &Host, source: SocketAddr, greeter: SocketAddr) -> String {
    let listener = |name: &str, port: u16| {
        format!(
            "[[listeners]]\nname = \"{name}\"\nbind = \"{}:{port}\"\nprotocol = \"tcp\"\ndefault_pool = \"{name}\"\n\n",
            lb.address
        )
    };
    let pool = |name: &str, backend: SocketAddr| {
        format!("[[pools]]\nname = \"{name}\"\nbackends = [{{ address = \"{backend}\" }}]\n\n")
    };
    [
        listener("bulk", FULCRUM_PORTS.0),
        listener("connect", FULCRUM_PORTS.1),
        pool("bulk", source),
        pool("connect", greeter),
    ]
    .concat()
}

fn start_haproxy(
    lab: &Lab,
    lb: &Host,
    source: SocketAddr,
    greeter: SocketAddr,
) -> Result<LabProcess, LabError> {
    // Two threads, as fulcrumd has two workers here; TCP mode with timeouts like fulcrumd's
    // defaults, and splice-auto, HAProxy's own splice-where-it-pays.
    let config = format!(
        "global\n    nbthread 2\n    maxconn 4000\n\ndefaults\n    mode tcp\n    timeout connect 5s\n    timeout client 300s\n    timeout server 300s\n    option splice-auto\n\n\
         listen bulk\n    bind {}:{}\n    server be {source}\n\n\
         listen connect\n    bind {}:{}\n    server be {greeter}\n",
        lb.address, HAPROXY_PORTS.0, lb.address, HAPROXY_PORTS.1
    );
    let path = lab.log_dir().join("haproxy.cfg");
    std::fs::write(&path, config)
        .map_err(|source| LabError::Io { what: format!("write {}", path.display()), source })?;
    let args = vec!["-db".to_owned(), "-f".to_owned(), path.display().to_string()];
    lab.spawn(lb, "haproxy on lb1", std::path::Path::new(HAPROXY), &args)
}

/// The peak resident set size of a process, from /proc.
pub(crate) fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

pub(crate) fn in_runtime<T>(
    work: impl std::future::Future<Output = Result<T, LabError>>,
) -> Result<T, LabError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| LabError::Io { what: "start a runtime".into(), source })?
        .block_on(work)
}

fn io_error(what: String) -> impl FnOnce(std::io::Error) -> LabError {
    move |source| LabError::Io { what, source }
}

pub(crate) async fn wait_connectable(address: SocketAddr) -> Result<(), LabError> {
    let started = Instant::now();
    loop {
        match TcpStream::connect(address).await {
            Ok(_) => return Ok(()),
            Err(e) if started.elapsed() > Duration::from_secs(10) => {
                return Err(io_error(format!("{address} never accepted"))(e));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Asks the source behind `address` for `bytes` and returns the throughput in Mbit/s.
async fn download(address: SocketAddr, bytes: u64) -> Result<u64, LabError> {
    let started = Instant::now();
    let mut stream =
        TcpStream::connect(address).await.map_err(io_error(format!("connect to {address}")))?;
    stream
        .write_all(format!("{bytes}\n").as_bytes())
        .await
        .map_err(io_error(format!("ask {address}")))?;
    let mut buffer = vec![0; 256 * 1024];
    let mut received = 0u64;
    loop {
        let n =
            stream.read(&mut buffer).await.map_err(io_error(format!("download from {address}")))?;
        if n == 0 {
            break;
        }
        received += n as u64;
    }
    if received != bytes {
        return Err(LabError::Invalid(format!("{address}: {received} of {bytes} bytes arrived")));
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok((bytes as f64 * 8.0 / seconds / 1e6) as u64)
}

/// Opens connections to the greeter behind `address` from [`CONNECTION_CLIENTS`] clients for
/// `time`, each reading the greeting to the end; returns completed connections per second.
async fn connection_rate(address: SocketAddr, time: Duration) -> Result<u64, LabError> {
    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..CONNECTION_CLIENTS {
        clients.spawn(async move {
            let mut completed = 0u64;
            let mut failed = 0u64;
            while started.elapsed() < time {
                let once = async {
                    let mut stream = TcpStream::connect(address).await?;
                    let mut greeting = Vec::new();
                    stream.read_to_end(&mut greeting).await?;
                    Ok::<_, std::io::Error>(greeting.len() == 1)
                };
                match tokio::time::timeout(Duration::from_secs(2), once).await {
                    Ok(Ok(true)) => completed += 1,
                    _ => failed += 1,
                }
            }
            (completed, failed)
        });
    }
    let (mut completed, mut failed) = (0, 0);
    while let Some(result) = clients.join_next().await {
        let (c, f) = result.map_err(|e| LabError::Invalid(format!("client task: {e}")))?;
        completed += c;
        failed += f;
    }
    if failed > completed / 100 {
        return Err(LabError::Invalid(format!(
            "{address}: {failed} of {} connections failed",
            completed + failed
        )));
    }
    Ok((completed as f64 / started.elapsed().as_secs_f64()) as u64)
}

/// The source and greeter servers, running in the backend host until dropped.
struct BackendServers {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BackendServers {
    fn start(host: &Host) -> Result<BackendServers, LabError> {
        let namespace = host.namespace.clone();
        let address = host.address;
        let (stop, stopped) = oneshot::channel::<()>();
        let (ready_tx, ready) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let served = crate::netns::run_in(&namespace, move || {
                in_runtime(async move {
                    let source = TcpListener::bind((address, SOURCE_PORT))
                        .await
                        .map_err(io_error("bind the source".into()))?;
                    let greeter = TcpListener::bind((address, GREETER_PORT))
                        .await
                        .map_err(io_error("bind the greeter".into()))?;
                    let _ = ready_tx.send(());
                    tokio::select! {
                        () = serve_source(source) => {}
                        () = serve_greeter(greeter) => {}
                        _ = stopped => {}
                    }
                    Ok(())
                })
            });
            if let Err(e) | Ok(Err(e)) = served {
                tracing::warn!("benchmark servers: {e}");
            }
        });
        let servers = BackendServers { stop: Some(stop), thread: Some(thread) };
        match ready.recv_timeout(Duration::from_secs(10)) {
            Ok(()) => Ok(servers),
            _ => Err(LabError::Invalid("the benchmark's backend servers did not start".into())),
        }
    }
}

impl Drop for BackendServers {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Sends each connection the number of zero bytes it asks for (a decimal line), then closes.
async fn serve_source(listener: TcpListener) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(async move {
            let mut stream = BufReader::new(stream);
            let mut line = String::new();
            if stream.read_line(&mut line).await.is_err() {
                return;
            }
            let Ok(mut left) = line.trim().parse::<u64>() else { return };
            left = left.min(MAX_BULK_BYTES);
            let chunk = vec![0u8; 256 * 1024];
            let stream = stream.get_mut();
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                if stream.write_all(&chunk[..n]).await.is_err() {
                    return;
                }
                left -= n as u64;
            }
            let _ = stream.shutdown().await;
        });
    }
}

/// Sends each connection one byte and closes it.
async fn serve_greeter(listener: TcpListener) {
    while let Ok((mut stream, _)) = listener.accept().await {
        tokio::spawn(async move {
            let _ = stream.write_all(b"x").await;
        });
    }
}

/// The figures as a Markdown table with medians and ratios to HAProxy and to direct.
pub fn report(figures: &[Figures], settings: &Settings) -> String {
    let median = |values: &[u64]| percentile(values, 50);
    let find = |path: &str| figures.iter().find(|f| f.path == path);
    let ratio = |value: u64, reference: Option<u64>| match reference {
        Some(r) if r > 0 => format!("{:.2}", value as f64 / r as f64),
        _ => "-".to_owned(),
    };
    let haproxy = find("haproxy");
    let direct = find("direct");
    let mut out = format!(
        "L4 benchmark: medians of {} runs; bulk = one {} MiB download per run, connections = {} clients for {:?} per run\n\n",
        settings.runs,
        settings.bulk_bytes >> 20,
        CONNECTION_CLIENTS,
        settings.connection_time
    );
    out.push_str("| path | bulk Mbit/s | vs HAProxy | vs direct | new conn/s | vs HAProxy | vs direct | peak RSS |\n");
    out.push_str("|---|---|---|---|---|---|---|---|\n");
    for f in figures {
        let bulk = median(&f.bulk_mbps);
        let rate = median(&f.connections_per_second);
        let _ = writeln!(
            out,
            "| {} | {bulk} | {} | {} | {rate} | {} | {} | {} |",
            f.path,
            ratio(bulk, haproxy.map(|h| median(&h.bulk_mbps))),
            ratio(bulk, direct.map(|d| median(&d.bulk_mbps))),
            ratio(rate, haproxy.map(|h| median(&h.connections_per_second))),
            ratio(rate, direct.map(|d| median(&d.connections_per_second))),
            f.peak_rss_kib.map_or("-".to_owned(), |kib| format!("{:.1} MiB", kib as f64 / 1024.0)),
        );
    }
    out
}
