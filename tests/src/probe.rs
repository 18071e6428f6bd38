//! The prober: from the client host, one request (or TCP echo) every few milliseconds for a
//! bounded time, reporting successes, failures, the longest outage and who answered.
//!
//! Every attempt uses a new connection, as a new client would, so a failover shows up as the
//! gap during which no new connection succeeds.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, MissedTickBehavior};

/// The longest a prober may run: every probe loop is bounded.
pub const MAX_DURATION: Duration = Duration::from_secs(3600);

/// What to probe: `http://198.18.0.100:80/path` or `tcp://198.18.0.100:9000` (an echo server).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeTarget {
    /// HTTP/1.1 GET of `path` on `address`; success is status 200.
    Http {
        /// Where to connect.
        address: SocketAddr,
        /// Path and query to request.
        path: String,
    },
    /// Connect, send a line, and expect it echoed back.
    TcpEcho(SocketAddr),
}

impl FromStr for ProbeTarget {
    type Err = String;

    fn from_str(text: &str) -> Result<ProbeTarget, String> {
        let bad = || format!("invalid target {text:?}: write http://IP:PORT/PATH or tcp://IP:PORT");
        if let Some(rest) = text.strip_prefix("http://") {
            let (authority, path) = rest.find('/').map_or((rest, "/"), |i| rest.split_at(i));
            let address = authority.parse().map_err(|_| bad())?;
            Ok(ProbeTarget::Http { address, path: path.to_owned() })
        } else if let Some(rest) = text.strip_prefix("tcp://") {
            Ok(ProbeTarget::TcpEcho(rest.parse().map_err(|_| bad())?))
        } else {
            Err(bad())
        }
    }
}

impl fmt::Display for ProbeTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeTarget::Http { address, path } => write!(f, "http://{address}{path}"),
            ProbeTarget::TcpEcho(address) => write!(f, "tcp://{address}"),
        }
    }
}

/// How to probe; also the `fulcrum-lab probe` command line.
#[derive(Clone, Debug, clap::Args)]
pub struct ProbeArgs {
    /// What to probe: http://IP:PORT/PATH or tcp://IP:PORT (a TCP echo server).
    pub target: ProbeTarget,
    /// Time between the starts of two attempts.
    #[arg(long, default_value = "10ms", value_parser = parse_duration)]
    pub interval: Duration,
    /// How long to probe (at most one hour).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub duration: Duration,
    /// An attempt not done within this fails.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Stop after this many attempts, even before the duration is over.
    #[arg(long)]
    pub max_attempts: Option<u64>,
    /// Print the report for people instead of as one line of JSON.
    #[arg(long)]
    pub text: bool,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = fulcrum_model::duration::parse(text)?;
    if d.is_zero() || d > MAX_DURATION {
        return Err(format!("{text:?} is outside 1ms..1h"));
    }
    Ok(d)
}

impl ProbeArgs {
    /// Probes `target` every `interval` for `duration`, with a 500 ms timeout per attempt.
    pub fn new(target: ProbeTarget, interval: Duration, duration: Duration) -> ProbeArgs {
        ProbeArgs {
            target,
            interval,
            duration,
            timeout: Duration::from_millis(500),
            max_attempts: None,
            text: false,
        }
    }

    /// The command-line form, for running the prober in another namespace.
    pub fn to_args(&self) -> Vec<String> {
        let ms = |d: Duration| format!("{}ms", d.as_millis());
        let mut args = vec![
            self.target.to_string(),
            "--interval".into(),
            ms(self.interval),
            "--duration".into(),
            ms(self.duration),
            "--timeout".into(),
            ms(self.timeout),
        ];
        if let Some(n) = self.max_attempts {
            args.extend(["--max-attempts".into(), n.to_string()]);
        }
        args
    }
}

/// What a probe run saw.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeReport {
    /// The target probed.
    pub target: String,
    /// Attempts made.
    pub attempts: u64,
    /// Attempts that succeeded.
    pub successes: u64,
    /// Attempts that failed.
    pub failures: u64,
    /// Failures by kind (`connect: Connection refused`, `timeout`, `status 503`, …).
    pub failure_kinds: BTreeMap<String, u64>,
    /// Separate outages: runs of consecutive failures.
    pub outages: u64,
    /// The longest outage: from the last success before a failure to the next success (or
    /// the end of the run), in milliseconds; 0 when nothing failed.
    pub longest_outage_ms: u64,
    /// Successful answers per answering host.
    pub answers: BTreeMap<String, u64>,
    /// Each change of answering host, in order.
    pub switches: Vec<Switch>,
    /// How long the run took, in milliseconds.
    pub elapsed_ms: u64,
}

impl fmt::Display for ProbeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} attempts in {} ms, {} ok, {} failed, {} outages (longest {} ms)",
            self.target,
            self.attempts,
            self.elapsed_ms,
            self.successes,
            self.failures,
            self.outages,
            self.longest_outage_ms
        )?;
        for (host, count) in &self.answers {
            write!(f, "\n  answered by {host}: {count}")?;
        }
        for (kind, count) in &self.failure_kinds {
            write!(f, "\n  failed with {kind}: {count}")?;
        }
        // Round robin switches on every answer; the first few say enough.
        const SHOWN: usize = 6;
        for switch in self.switches.iter().take(SHOWN) {
            write!(f, "\n  at {} ms: {} -> {}", switch.at_ms, switch.from, switch.to)?;
        }
        if self.switches.len() > SHOWN {
            write!(f, "\n  … and {} more changes of answering host", self.switches.len() - SHOWN)?;
        }
        Ok(())
    }
}

/// A change of the host that answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Switch {
    /// When, in milliseconds since the run started.
    pub at_ms: u64,
    /// The host that answered before.
    pub from: String,
    /// The host that answers now.
    pub to: String,
}

/// Folds attempt outcomes, with their times as values, into a [`ProbeReport`].
#[derive(Debug, Default)]
pub struct ProbeLog {
    report: ProbeReport,
    last_success_at: Duration,
    outage_since: Option<Duration>,
    last_host: Option<String>,
}

impl ProbeLog {
    /// A log for `target`; the run starts at time zero.
    pub fn new(target: &str) -> ProbeLog {
        ProbeLog {
            report: ProbeReport { target: target.to_owned(), ..ProbeReport::default() },
            ..ProbeLog::default()
        }
    }

    /// Records an attempt that ended at `at`: `Ok(host)` that answered, or `Err(kind)`.
    pub fn record(&mut self, at: Duration, outcome: Result<String, String>) {
        self.report.attempts += 1;
        match outcome {
            Ok(host) => {
                self.report.successes += 1;
                if let Some(since) = self.outage_since.take() {
                    self.extend_longest(at - since.min(at));
                }
                self.last_success_at = at;
                if let Some(previous) = self.last_host.as_ref().filter(|p| **p != host) {
                    self.report.switches.push(Switch {
                        at_ms: millis(at),
                        from: previous.clone(),
                        to: host.clone(),
                    });
                }
                *self.report.answers.entry(host.clone()).or_default() += 1;
                self.last_host = Some(host);
            }
            Err(kind) => {
                self.report.failures += 1;
                *self.report.failure_kinds.entry(kind).or_default() += 1;
                if self.outage_since.is_none() {
                    self.report.outages += 1;
                    self.outage_since = Some(self.last_success_at);
                }
            }
        }
    }

    /// Closes the run at `end`: an outage still going on counts up to `end`.
    pub fn finish(mut self, end: Duration) -> ProbeReport {
        if let Some(since) = self.outage_since.take() {
            self.extend_longest(end - since.min(end));
        }
        self.report.elapsed_ms = millis(end);
        self.report
    }

    fn extend_longest(&mut self, outage: Duration) {
        self.report.longest_outage_ms = self.report.longest_outage_ms.max(millis(outage));
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Runs the probe loop to its end and returns the report.
pub async fn run(args: &ProbeArgs) -> ProbeReport {
    let start = Instant::now();
    let mut log = ProbeLog::new(&args.target.to_string());
    let mut ticks = tokio::time::interval(args.interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let max_attempts = args.max_attempts.unwrap_or(u64::MAX);
    let mut attempt = 0u64;
    while start.elapsed() < args.duration.min(MAX_DURATION) && attempt < max_attempts {
        ticks.tick().await;
        attempt += 1;
        let outcome = match tokio::time::timeout(args.timeout, once(&args.target, attempt)).await {
            Ok(outcome) => outcome,
            Err(_) => Err("timeout".to_owned()),
        };
        log.record(start.elapsed(), outcome);
    }
    log.finish(start.elapsed())
}

/// One attempt: the answering host's name, or the kind of failure.
async fn once(target: &ProbeTarget, attempt: u64) -> Result<String, String> {
    match target {
        ProbeTarget::Http { address, path } => http_once(*address, path).await,
        ProbeTarget::TcpEcho(address) => echo_once(*address, attempt).await,
    }
}

/// One HTTP GET of `path` at `address`: the answering backend's name (its `x-backend` header
/// or body), or the kind of failure.
pub async fn http_once(address: SocketAddr, path: &str) -> Result<String, String> {
    let stream = TcpStream::connect(address).await.map_err(|e| format!("connect: {}", e.kind()))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, address.to_string())
        .header(hyper::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let response = sender.send_request(request).await.map_err(|e| format!("request: {e}"))?;
    let status = response.status();
    let host = response.headers().get("x-backend").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = response.into_body().collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
    if status != hyper::StatusCode::OK {
        return Err(format!("status {}", status.as_u16()));
    }
    Ok(host.unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_owned()))
}

async fn echo_once(address: SocketAddr, attempt: u64) -> Result<String, String> {
    let mut stream =
        TcpStream::connect(address).await.map_err(|e| format!("connect: {}", e.kind()))?;
    let line = format!("fulcrum-lab probe {attempt}\n");
    stream.write_all(line.as_bytes()).await.map_err(|e| format!("write: {}", e.kind()))?;
    let mut echoed = vec![0; line.len()];
    stream.read_exact(&mut echoed).await.map_err(|e| format!("read: {}", e.kind()))?;
    if echoed != line.as_bytes() {
        return Err("echo mismatch".to_owned());
    }
    Ok(address.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn outage_runs_from_last_success_to_next_success() {
        let mut log = ProbeLog::new("t");
        log.record(ms(10), Ok("a".into()));
        log.record(ms(20), Err("timeout".into()));
        log.record(ms(30), Err("connect: ConnectionRefused".into()));
        log.record(ms(45), Ok("b".into()));
        log.record(ms(50), Err("timeout".into()));
        log.record(ms(55), Ok("b".into()));
        let report = log.finish(ms(60));
        assert_eq!((report.attempts, report.successes, report.failures), (6, 3, 3));
        assert_eq!(report.outages, 2);
        assert_eq!(report.longest_outage_ms, 35);
        assert_eq!(report.failure_kinds["timeout"], 2);
        assert_eq!(report.answers["b"], 2);
        assert_eq!(report.switches, vec![Switch { at_ms: 45, from: "a".into(), to: "b".into() }]);
    }

    #[test]
    fn an_outage_at_the_end_lasts_until_the_end() {
        let mut log = ProbeLog::new("t");
        log.record(ms(10), Ok("a".into()));
        log.record(ms(20), Err("timeout".into()));
        assert_eq!(log.finish(ms(100)).longest_outage_ms, 90);
    }

    #[test]
    fn never_answering_is_one_outage_of_the_whole_run() {
        let mut log = ProbeLog::new("t");
        log.record(ms(10), Err("timeout".into()));
        log.record(ms(20), Err("timeout".into()));
        let report = log.finish(ms(25));
        assert_eq!((report.outages, report.longest_outage_ms, report.successes), (1, 25, 0));
    }

    #[test]
    fn targets_parse_and_print_back() {
        for text in [
            "http://198.18.0.100:80/slow?secs=2",
            "http://198.18.0.21:8080/",
            "tcp://198.18.0.21:9000",
        ] {
            assert_eq!(text.parse::<ProbeTarget>().unwrap().to_string(), text);
        }
        assert_eq!(
            "http://198.18.0.100:80".parse::<ProbeTarget>().unwrap().to_string(),
            "http://198.18.0.100:80/"
        );
        assert!("ftp://x".parse::<ProbeTarget>().is_err());
        assert!("http://example.test/".parse::<ProbeTarget>().is_err());
    }

    #[test]
    fn durations_are_bounded() {
        assert_eq!(parse_duration("250ms"), Ok(ms(250)));
        assert!(parse_duration("0ms").is_err());
        assert!(parse_duration("61m").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
