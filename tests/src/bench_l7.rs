//! The L7 benchmark: HTTP/1.1 keep-alive with wrk, h2c with h2load, new connections over
//! HTTP and over TLS 1.3, and memory per idle connection, small responses, through fulcrumd,
//! HAProxy 2.6 (mode http), nginx 1.22 (proxy_pass with upstream keep-alive) and straight to
//! the backend, all in one lab run, with the same lab backend behind them.
//!
//! Every proxy gets two threads or workers (the VM has two cores, shared with the client and
//! the backend), so the ratios matter more than the absolute figures, and every proxy adds
//! the four forwarding fields fulcrumd always adds (`X-Forwarded-For`, `-Proto`, `-Host` and
//! `Forwarded`), so each does the same work per request and the backend parses the same.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::bench_l4::{
    HAPROXY, at, in_runtime, peak_rss_kib, stop, wait_connectable, widen_port_range,
};
use crate::bench_raft::percentile;
use crate::process::LabProcess;
use crate::topology::{Host, HostRole, Lab, LabError, Topology};

const NGINX: &str = "/usr/sbin/nginx";
const WRK: &str = "/usr/bin/wrk";
const H2LOAD: &str = "/usr/bin/h2load";
/// Front ports: (HTTP/1.1, h2c, HTTPS) per proxy; fulcrumd serves both protocols on one.
const FULCRUM_PORTS: (u16, u16) = (8000, 8443);
const HAPROXY_PORTS: (u16, u16, u16) = (8100, 8101, 8102);
const NGINX_PORTS: (u16, u16, u16) = (8200, 8201, 8202);
/// The benchmark's certificate: ECDSA P-256, the common choice for fast handshakes.
const CERT_FILE: &str = "bench-cert.pem";
const KEY_FILE: &str = "bench-key.pem";

/// What the benchmark measures, and how much.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Runs per measurement; medians are reported.
    pub runs: usize,
    /// How long each wrk run lasts.
    pub duration: Duration,
    /// Open connections of each client.
    pub connections: u32,
    /// Requests per h2load run.
    pub h2_requests: u64,
    /// What to measure (all when empty).
    pub only: Vec<Measure>,
}

/// One of the benchmark's measurements, to run alone (to profile it, say).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Measure {
    /// HTTP/1.1 keep-alive (wrk).
    Http1,
    /// h2c (h2load).
    H2c,
    /// HTTP/1.1 with a new connection per request.
    Close,
    /// HTTPS with a new connection (a TLS 1.3 handshake) per request.
    Tls,
    /// Memory per idle keep-alive connection.
    Idle,
}

impl Settings {
    fn measures(&self, measure: Measure) -> bool {
        self.only.is_empty() || self.only.contains(&measure)
    }
}

/// One measurement: requests per second and latency percentiles in microseconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Run {
    /// Requests per second.
    pub rps: u64,
    /// Median latency.
    pub p50_us: u64,
    /// 99th percentile latency.
    pub p99_us: u64,
    /// The proxy's CPU time per request, user and system, in nanoseconds (from its
    /// `/proc/<pid>/stat` before and after the run; not for nginx, whose workers are other
    /// processes, nor for the direct path).
    pub cpu_ns_per_request: Option<(u64, u64)>,
}

/// One path to the backend and what it achieved.
#[derive(Clone, Debug)]
pub struct Figures {
    /// `direct`, `fulcrumd`, `haproxy` or `nginx`.
    pub path: &'static str,
    /// HTTP/1.1 keep-alive runs (wrk).
    pub http1: Vec<Run>,
    /// h2c runs (h2load).
    pub h2: Vec<Run>,
    /// HTTP/1.1 runs with `Connection: close`: a new connection per request.
    pub closing: Vec<Run>,
    /// HTTPS runs with `Connection: close`: a full TLS 1.3 handshake per request.
    pub handshakes: Vec<Run>,
    /// Resident memory added per idle keep-alive client connection, in bytes.
    pub idle_bytes_per_connection: Option<u64>,
    /// The proxy's peak resident memory after the runs, in KiB.
    pub peak_rss_kib: Option<u64>,
}

/// Runs the benchmark in a fresh lab and returns the figures of every path.
pub fn l7(lab_binary: &Path, settings: Settings) -> Result<Vec<Figures>, LabError> {
    for (program, package) in
        [(HAPROXY, "haproxy"), (NGINX, "nginx-light"), (WRK, "wrk"), (H2LOAD, "nghttp2-client")]
    {
        if !Path::new(program).is_file() {
            return Err(LabError::Invalid(format!(
                "{program} is missing: apt-get install {package}"
            )));
        }
    }
    // Room for the idle-connection count on every side (children inherit the limit).
    raise_open_files(IDLE_CONNECTIONS as u64 + 1000)?;
    let lab = Lab::up(&Topology { load_balancers: 1, backends: 1, prefix: None }, lab_binary)?;
    let lb = lab.host("lb1")?;
    let backend = lab.hosts_of(HostRole::Backend).remove(0);
    let client = lab.host("client")?;
    for host in [&lb, &client] {
        widen_port_range(host)?;
    }
    let _backend = lab.start_backend(&backend)?;
    let upstream = backend.http_address();

    write_certificate(&lab)?;
    let mut node = lab.start_serving_node(&lb, &fulcrum_cluster_file(&lab, &lb, upstream), &[])?;
    let mut haproxy = start_haproxy(&lab, &lb, upstream)?;
    let mut nginx = start_nginx(&lab, &lb, upstream)?;
    let fulcrum = at(&lb, FULCRUM_PORTS.0);
    let paths = [
        Entry { name: "direct", http1: upstream, h2: upstream, https: None, pid: None },
        Entry {
            name: "fulcrumd",
            http1: fulcrum,
            h2: fulcrum,
            https: Some(at(&lb, FULCRUM_PORTS.1)),
            pid: Some(node.process.pid()),
        },
        Entry {
            name: "haproxy",
            http1: at(&lb, HAPROXY_PORTS.0),
            h2: at(&lb, HAPROXY_PORTS.1),
            https: Some(at(&lb, HAPROXY_PORTS.2)),
            pid: Some(haproxy.pid()),
        },
        Entry {
            name: "nginx",
            http1: at(&lb, NGINX_PORTS.0),
            h2: at(&lb, NGINX_PORTS.1),
            https: Some(at(&lb, NGINX_PORTS.2)),
            pid: Some(nginx.pid()),
        },
    ];
    for path in &paths {
        for address in [Some(path.http1), Some(path.h2), path.https].into_iter().flatten() {
            lab.run_in(&client, || in_runtime(wait_connectable(address)))?.map_err(|e| {
                LabError::Invalid(format!(
                    "{} does not serve: {e} (logs in {})",
                    path.name,
                    lab.log_dir().display()
                ))
            })?;
        }
    }
    let mut figures: Vec<Figures> = paths
        .iter()
        .map(|path| Figures {
            path: path.name,
            http1: Vec::new(),
            h2: Vec::new(),
            closing: Vec::new(),
            handshakes: Vec::new(),
            idle_bytes_per_connection: None,
            peak_rss_kib: None,
        })
        .collect();
    let close = ["-H", "Connection: close"];
    // Interleaved, so a slow phase of the machine hits every path alike.
    for run in 0..settings.runs {
        for (path, figures) in paths.iter().zip(&mut figures) {
            let context = |error| context(path.name, error);
            let http1 = format!("http://{}/", path.http1);
            // The proxy's own CPU is counted; nginx's workers are processes of their own.
            let pid = path.pid.filter(|_| path.name != "nginx");
            if settings.measures(Measure::Http1) {
                let run = with_cpu(pid, || wrk(&lab, &client, &http1, &settings, &[]));
                figures.http1.push(run.map_err(context)?);
            }
            if settings.measures(Measure::H2c) {
                let log = lab.log_dir().join(format!("h2load-{}-{run}.log", path.name));
                let run = with_cpu(pid, || h2load(&lab, &client, path.h2, &settings, &log));
                figures.h2.push(run.map_err(context)?);
            }
            if settings.measures(Measure::Close) {
                let run = with_cpu(pid, || wrk(&lab, &client, &http1, &settings, &close));
                figures.closing.push(run.map_err(context)?);
            }
            if let Some(https) = path.https.filter(|_| settings.measures(Measure::Tls)) {
                let url = format!("https://{https}/");
                figures
                    .handshakes
                    .push(wrk(&lab, &client, &url, &settings, &close).map_err(context)?);
            }
        }
    }
    for (path, figures) in paths.iter().zip(&mut figures) {
        figures.peak_rss_kib = path.pid.and_then(peak_rss_kib);
    }
    // After the peaks are read, so they are the traffic's, not the idle connections'.
    for (path, figures) in paths.iter().zip(&mut figures) {
        if let (Some(pid), "fulcrumd" | "haproxy", true) =
            (path.pid, path.name, settings.measures(Measure::Idle))
        {
            figures.idle_bytes_per_connection = Some(
                lab.run_in(&client, || in_runtime(idle_memory(path.http1, pid)))?
                    .map_err(|e| context(path.name, e))?,
            );
        }
    }
    stop(&mut node, &mut [&mut haproxy, &mut nginx]);
    Ok(figures)
}

/// One path to the backend: its front addresses and the proxy's process.
struct Entry {
    name: &'static str,
    http1: SocketAddr,
    h2: SocketAddr,
    /// HTTPS front (TLS terminated by the proxy); the backend itself serves none.
    https: Option<SocketAddr>,
    pid: Option<u32>,
}

fn context(path: &str, error: LabError) -> LabError {
    LabError::Invalid(format!("{path}: {error}"))
}

/// Writes [`CERT_FILE`] and [`KEY_FILE`] into the lab's log directory, and the two in one file
/// for HAProxy, with openssl (which HAProxy and nginx depend on).
fn write_certificate(lab: &Lab) -> Result<(), LabError> {
    let dir = lab.log_dir();
    let (cert, key) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
    let output = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
        .args(["-nodes", "-days", "2", "-subj", "/CN=bench.fulcrum.test"])
        .args(["-addext", "subjectAltName=DNS:bench.fulcrum.test", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .map_err(|source| LabError::Io { what: "run openssl".into(), source })?;
    if !output.status.success() {
        return Err(LabError::Invalid(format!(
            "openssl could not make the benchmark's certificate: {}",
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    let read = |path: &Path| {
        std::fs::read_to_string(path)
            .map_err(|source| LabError::Io { what: format!("read {}", path.display()), source })
    };
    let combined = format!("{}{}", read(&cert)?, read(&key)?);
    write_config(lab, "bench-combined.pem", &combined).map(drop)
}

fn fulcrum_cluster_file(lab: &Lab, lb: &Host, upstream: SocketAddr) -> String {
    let dir = lab.log_dir();
    format!(
        "[[listeners]]\nname = \"web\"\nbind = \"{lb}:{}\"\nprotocol = \"http\"\ndefault_pool = \"web\"\n\n\
         [[listeners]]\nname = \"secure\"\nbind = \"{lb}:{}\"\nprotocol = \"https\"\ndefault_pool = \"web\"\n\
         tls = {{ certificates = [{{ cert = \"{}\", key = \"{}\" }}] }}\n\n\
         [[pools]]\nname = \"web\"\nbackends = [{{ address = \"{upstream}\" }}]\n",
        FULCRUM_PORTS.0,
        FULCRUM_PORTS.1,
        dir.join(CERT_FILE).display(),
        dir.join(KEY_FILE).display(),
        lb = lb.address,
    )
}

fn write_config(lab: &Lab, name: &str, text: &str) -> Result<std::path::PathBuf, LabError> {
    let path = lab.log_dir().join(name);
    std::fs::write(&path, text)
        .map_err(|source| LabError::Io { what: format!("write {}", path.display()), source })?;
    Ok(path)
}

fn start_haproxy(lab: &Lab, lb: &Host, upstream: SocketAddr) -> Result<LabProcess, LabError> {
    let config = format!(
        "global\n    nbthread 2\n    maxconn {maxconn}\n    no strict-limits\n\ndefaults\n    mode http\n    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n    option http-keep-alive\n\n\
         frontend web\n    bind {lb}:{}\n    bind {lb}:{} proto h2\n    bind {lb}:{} ssl crt {pem}\n\
             option forwardfor\n    http-request set-header X-Forwarded-Proto %[ssl_fc,iif(https,http)]\n\
             http-request set-header X-Forwarded-Host %[req.hdr(host)]\n\
             http-request set-header Forwarded \"for=%[src];proto=%[ssl_fc,iif(https,http)];host=\\\"%[req.hdr(host)]\\\"\"\n\
             default_backend web\n\n\
         backend web\n    http-reuse always\n    server be {upstream}\n",
        HAPROXY_PORTS.0,
        HAPROXY_PORTS.1,
        HAPROXY_PORTS.2,
        lb = lb.address,
        pem = lab.log_dir().join("bench-combined.pem").display(),
        maxconn = IDLE_CONNECTIONS + 1000,
    );
    let path = write_config(lab, "haproxy-l7.cfg", &config)?;
    lab.spawn(
        lb,
        "haproxy on lb1",
        Path::new(HAPROXY),
        &["-db".to_owned(), "-f".to_owned(), path.display().to_string()],
    )
}

fn start_nginx(lab: &Lab, lb: &Host, upstream: SocketAddr) -> Result<LabProcess, LabError> {
    let dir = lab.log_dir();
    let config = format!(
        "user root;\nworker_processes 2;\npid {dir}/nginx.pid;\nerror_log stderr warn;\nevents {{ worker_connections 20000; }}\n\
         http {{\n    access_log off;\n    keepalive_requests 1000000;\n    client_body_temp_path {dir}/nginx-body;\n    proxy_temp_path {dir}/nginx-proxy;\n\
             fastcgi_temp_path {dir}/nginx-fastcgi;\n    uwsgi_temp_path {dir}/nginx-uwsgi;\n    scgi_temp_path {dir}/nginx-scgi;\n\
             upstream web {{ server {upstream}; keepalive 64; }}\n\
             server {{\n        listen {lb}:{};\n        listen {lb}:{} http2;\n        listen {lb}:{} ssl;\n\
                     ssl_certificate {dir}/{CERT_FILE};\n        ssl_certificate_key {dir}/{KEY_FILE};\n        location / {{\n            proxy_pass http://web;\n\
                     proxy_http_version 1.1;\n            proxy_set_header Connection \"\";\n\
                     proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n            proxy_set_header X-Forwarded-Proto $scheme;\n\
                     proxy_set_header X-Forwarded-Host $http_host;\n            proxy_set_header Forwarded \"for=$remote_addr;proto=$scheme;host=\\\"$http_host\\\"\";\n        }}\n    }}\n}}\n",
        NGINX_PORTS.0,
        NGINX_PORTS.1,
        NGINX_PORTS.2,
        dir = dir.display(),
        lb = lb.address,
    );
    let path = write_config(lab, "nginx.conf", &config)?;
    let args =
        ["-c".to_owned(), path.display().to_string(), "-g".to_owned(), "daemon off;".to_owned()];
    lab.spawn(lb, "nginx on lb1", Path::new(NGINX), &args)
}

/// Idle keep-alive connections opened to measure memory per connection.
const IDLE_CONNECTIONS: usize = 10_000;

/// Raises this process's soft open-file limit to its hard one, for the proxies and clients
/// it starts (they inherit it), and checks that it leaves room for `wanted`.
fn raise_open_files(wanted: u64) -> Result<(), LabError> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)
        .map_err(|e| LabError::Invalid(format!("read the open-file limit: {e}")))?;
    if hard < wanted {
        return Err(LabError::Invalid(format!(
            "the open-file limit is {hard}; the idle-connection run needs {wanted}: raise it (ulimit -Hn)"
        )));
    }
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
            .map_err(|e| LabError::Invalid(format!("raise the open-file limit to {hard}: {e}")))?;
    }
    Ok(())
}

/// Resident memory of `pid` now, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Opens [`IDLE_CONNECTIONS`] keep-alive connections to `address`, each after one answered
/// request, and returns the growth of `pid`'s resident memory divided by their number.
async fn idle_memory(address: SocketAddr, pid: u32) -> Result<u64, LabError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!("GET / HTTP/1.1\r\nhost: {address}\r\n\r\n");
    let before = rss_kib(pid).ok_or_else(|| LabError::Invalid(format!("no process {pid}")))?;
    let mut open = Vec::with_capacity(IDLE_CONNECTIONS);
    for _ in 0..IDLE_CONNECTIONS {
        let mut stream = tokio::net::TcpStream::connect(address).await.map_err(|source| {
            LabError::Io { what: format!("idle connection {} to {address}", open.len()), source }
        })?;
        let exchange = async {
            stream.write_all(request.as_bytes()).await?;
            let mut answer = [0u8; 4096];
            let n = stream.read(&mut answer).await?;
            Ok::<_, std::io::Error>(answer[..n].starts_with(b"HTTP/1.1 200"))
        };
        match tokio::time::timeout(Duration::from_secs(5), exchange).await {
            Ok(Ok(true)) => open.push(stream),
            _ => {
                return Err(LabError::Invalid(format!(
                    "no answer on idle connection {}",
                    open.len()
                )));
            }
        }
    }
    // Let the proxy settle into its idle state.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib(pid).ok_or_else(|| LabError::Invalid(format!("no process {pid}")))?;
    drop(open);
    Ok(after.saturating_sub(before) * 1024 / IDLE_CONNECTIONS as u64)
}

/// `measure`'s run, with the CPU time `pid` spent in it per request.
fn with_cpu(
    pid: Option<u32>,
    measure: impl FnOnce() -> Result<Run, LabError>,
) -> Result<Run, LabError> {
    let before = pid.and_then(cpu_ticks);
    let started = std::time::Instant::now();
    let mut run = measure()?;
    let requests = run.rps as f64 * started.elapsed().as_secs_f64();
    if let (Some(before), Some(after)) = (before, pid.and_then(cpu_ticks))
        && requests >= 1.0
    {
        let tick_ns = 1e9 / clock_ticks_per_second() as f64;
        let per_request = |ticks: u64| (ticks as f64 * tick_ns / requests) as u64;
        run.cpu_ns_per_request =
            Some((per_request(after.0 - before.0), per_request(after.1 - before.1)));
    }
    Ok(run)
}

/// A process's user and system CPU time so far, in clock ticks (`/proc/<pid>/stat`).
fn cpu_ticks(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces), from the 3rd: utime is the 14th.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
}

fn clock_ticks_per_second() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|ticks| u64::try_from(ticks).ok())
        .unwrap_or(100)
}

/// One wrk run from the client host to `url`: HTTP/1.1 keep-alive, or with `extra` arguments
/// (a `Connection: close` header for a new connection per request).
fn wrk(
    lab: &Lab,
    client: &Host,
    url: &str,
    settings: &Settings,
    extra: &[&str],
) -> Result<Run, LabError> {
    let seconds = format!("{}s", settings.duration.as_secs().max(1));
    let connections = settings.connections.to_string();
    let mut args = vec!["-t2", "-c", &connections, "-d", &seconds, "--latency"];
    args.extend_from_slice(extra);
    args.push(url);
    let output = lab.exec(client, WRK, &args)?;
    parse_wrk(&output).ok_or_else(|| LabError::Invalid(format!("unexpected wrk output:\n{output}")))
}

/// Requests/s and the 50th and 99th percentile latencies from wrk's `--latency` report.
pub fn parse_wrk(output: &str) -> Option<Run> {
    let rps = output
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))?
        .trim()
        .parse::<f64>()
        .ok()?;
    let percentile_us = |label: &str| {
        output.lines().find_map(|l| {
            let mut fields = l.split_whitespace();
            (fields.next() == Some(label)).then(|| fields.next().and_then(duration_us)).flatten()
        })
    };
    if output.contains("Non-2xx or 3xx responses") || output.contains("Socket errors") {
        return None;
    }
    Some(Run {
        rps: rps as u64,
        p50_us: percentile_us("50%")?,
        p99_us: percentile_us("99%")?,
        cpu_ns_per_request: None,
    })
}

/// wrk's durations: `812.00us`, `1.23ms`, `2.01s`.
fn duration_us(text: &str) -> Option<u64> {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1e6)
    } else {
        return None;
    };
    Some((number.parse::<f64>().ok()? * scale).round() as u64)
}

/// One h2load run (h2c, prior knowledge) from the client host; latencies from its log.
fn h2load(
    lab: &Lab,
    client: &Host,
    address: SocketAddr,
    settings: &Settings,
    log: &Path,
) -> Result<Run, LabError> {
    let url = format!("http://{address}/");
    let requests = settings.h2_requests.to_string();
    let connections = settings.connections.min(16).to_string();
    let log_arg = format!("--log-file={}", log.display());
    let output = lab.exec(
        client,
        H2LOAD,
        &["-n", &requests, "-c", &connections, "-m", "10", "-t", "2", &log_arg, &url],
    )?;
    let failed = output
        .lines()
        .find(|l| l.trim_start().starts_with("requests:"))
        .is_some_and(|l| !l.contains(" 0 failed"));
    let rps = output
        .lines()
        .find_map(|l| l.trim().strip_prefix("finished in "))
        .and_then(|rest| rest.split(", ").nth(1))
        .and_then(|r| r.strip_suffix(" req/s"))
        .and_then(|r| r.trim().parse::<f64>().ok());
    let durations: Vec<u64> = std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split('\t').nth(2)?.trim().parse().ok())
        .collect();
    match (rps, failed, durations.is_empty()) {
        (Some(rps), false, false) => Ok(Run {
            rps: rps as u64,
            p50_us: percentile(&durations, 50),
            p99_us: percentile(&durations, 99),
            cpu_ns_per_request: None,
        }),
        _ => Err(LabError::Invalid(format!("unexpected h2load result:\n{output}"))),
    }
}

/// The figures as a Markdown table: medians, and the ratio of requests/s to HAProxy's.
pub fn report(figures: &[Figures], settings: &Settings) -> String {
    let median = |runs: &[Run], pick: fn(&Run) -> u64| {
        percentile(&runs.iter().map(pick).collect::<Vec<_>>(), 50)
    };
    let haproxy = figures.iter().find(|f| f.path == "haproxy");
    let mut out = format!(
        "L7 benchmark: medians of {} runs; wrk -t2 -c{} for {:?} (HTTP/1.1 keep-alive), h2load -n{} -c{} -m10 (h2c)\n\n",
        settings.runs,
        settings.connections,
        settings.duration,
        settings.h2_requests,
        settings.connections.min(16)
    );
    out.push_str("| path | protocol | req/s | vs HAProxy | p50 ms | p99 ms | CPU µs/request (user + system) | peak RSS |\n|---|---|---|---|---|---|---|---|\n");
    for (protocol, runs_of) in [
        ("HTTP/1.1", (|f: &Figures| f.http1.clone()) as fn(&Figures) -> Vec<Run>),
        ("h2c", |f: &Figures| f.h2.clone()),
        ("HTTP/1.1 new connection each", |f: &Figures| f.closing.clone()),
        ("HTTPS (TLS 1.3) new connection each", |f: &Figures| f.handshakes.clone()),
    ] {
        let reference = haproxy.map(|h| median(&runs_of(h), |r| r.rps));
        for f in figures {
            let runs = runs_of(f);
            if runs.is_empty() {
                continue;
            }
            let rps = median(&runs, |r| r.rps);
            let ratio = match reference {
                Some(r) if r > 0 => format!("{:.2}", rps as f64 / r as f64),
                _ => "-".into(),
            };
            let cpu = match runs.iter().all(|r| r.cpu_ns_per_request.is_some()) {
                true => {
                    let user = median(&runs, |r| r.cpu_ns_per_request.map_or(0, |c| c.0));
                    let system = median(&runs, |r| r.cpu_ns_per_request.map_or(0, |c| c.1));
                    format!("{:.1} + {:.1}", user as f64 / 1000.0, system as f64 / 1000.0)
                }
                false => "-".to_owned(),
            };
            let _ = writeln!(
                out,
                "| {} | {protocol} | {rps} | {ratio} | {:.2} | {:.2} | {cpu} | {} |",
                f.path,
                median(&runs, |r| r.p50_us) as f64 / 1000.0,
                median(&runs, |r| r.p99_us) as f64 / 1000.0,
                f.peak_rss_kib
                    .map_or("-".to_owned(), |kib| format!("{:.1} MiB", kib as f64 / 1024.0)),
            );
        }
    }
    if figures.iter().all(|f| f.idle_bytes_per_connection.is_none()) {
        return out;
    }
    let _ = writeln!(
        out,
        "\nMemory per idle keep-alive client connection ({IDLE_CONNECTIONS} open, resident memory growth divided):\n"
    );
    for f in figures {
        if let Some(bytes) = f.idle_bytes_per_connection {
            let _ = writeln!(out, "- {}: {:.1} KiB", f.path, bytes as f64 / 1024.0);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_reports_are_read() {
        let output = "Running 5s test @ http://198.18.0.11:8000/\n  2 threads and 64 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency     1.10ms  400.00us   9.00ms   80.00%\n  Latency Distribution\n     50%  812.00us\n     75%    1.20ms\n     90%    1.80ms\n     99%    2.01s\n  100000 requests in 5.00s, 10.00MB read\nRequests/sec:  20000.50\nTransfer/sec:      2.00MB\n";
        let run = parse_wrk(output).expect("parsed");
        assert_eq!((run.rps, run.p50_us, run.p99_us), (20000, 812, 2_010_000));
        assert!(
            parse_wrk(&format!("{output}  Non-2xx or 3xx responses: 5\n")).is_none(),
            "errors fail the run"
        );
    }
}
