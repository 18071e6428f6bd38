//! Backend health: the hysteresis of active checks, passive ejection after consecutive
//! failures, and the check probes themselves (TCP connect, or HTTP GET of a path).
//!
//! [`Hysteresis`] and [`PassiveEjection`] are small synchronous types that take results and
//! time as values and say when a backend flips; [`probe`] is the only part that does IO.

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fulcrum_model::HealthCheck;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// What active checks say of a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// No check has answered yet. Traffic still goes to it, so a configuration change never
    /// blackholes a pool while its first checks run; the first result decides at once.
    Unknown,
    /// `rise` consecutive checks passed.
    Up,
    /// `fall` consecutive checks failed.
    Down,
}

impl Health {
    /// Whether traffic may go to a backend in this state.
    pub fn takes_traffic(self) -> bool {
        self != Health::Down
    }

    /// The name used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Up => "up",
            Health::Down => "down",
        }
    }
}

/// Rise/fall hysteresis over check results: one result never flips an established state.
#[derive(Clone, Debug)]
pub struct Hysteresis {
    rise: u32,
    fall: u32,
    state: Health,
    /// Consecutive results that disagree with `state`.
    streak: u32,
}

impl Hysteresis {
    /// A backend not checked yet; `rise` and `fall` below 1 count as 1.
    pub fn new(rise: u32, fall: u32) -> Hysteresis {
        Hysteresis { rise: rise.max(1), fall: fall.max(1), state: Health::Unknown, streak: 0 }
    }

    /// New thresholds for the next transitions; the current state stays.
    pub fn retune(&mut self, rise: u32, fall: u32) {
        self.rise = rise.max(1);
        self.fall = fall.max(1);
    }

    /// The current state.
    pub fn state(&self) -> Health {
        self.state
    }

    /// Takes one check result; returns the new state when it changed.
    pub fn record(&mut self, passed: bool) -> Option<Health> {
        let next = match (self.state, passed) {
            (Health::Unknown, true) => Some(Health::Up),
            (Health::Unknown, false) => Some(Health::Down),
            (Health::Up, true) | (Health::Down, false) => {
                self.streak = 0;
                None
            }
            (Health::Up, false) => {
                self.streak += 1;
                (self.streak >= self.fall).then_some(Health::Down)
            }
            (Health::Down, true) => {
                self.streak += 1;
                (self.streak >= self.rise).then_some(Health::Up)
            }
        };
        if let Some(state) = next {
            self.state = state;
            self.streak = 0;
        }
        next
    }
}

/// Consecutive connection failures before a backend is ejected.
pub const PASSIVE_FAILURES_TO_EJECT: u32 = 3;
/// The first ejection's length; each ejection in a row doubles it, up to [`MAX_EJECTION`].
pub const FIRST_EJECTION: Duration = Duration::from_secs(5);
/// The longest ejection.
pub const MAX_EJECTION: Duration = Duration::from_secs(60);

/// Passive checking: real traffic's failures eject a backend for a back-off period.
#[derive(Clone, Debug, Default)]
pub struct PassiveEjection {
    consecutive_failures: u32,
    /// Ejections since the last success, for the back-off.
    ejections: u32,
    ejected_until: Option<Instant>,
}

impl PassiveEjection {
    /// A failure at `now`; returns how long the backend is ejected for when this one ejects it.
    pub fn record_failure(&mut self, now: Instant) -> Option<Duration> {
        if self.is_ejected(now) {
            return None;
        }
        self.consecutive_failures += 1;
        if self.consecutive_failures < PASSIVE_FAILURES_TO_EJECT {
            return None;
        }
        let period = FIRST_EJECTION.saturating_mul(1 << self.ejections.min(8)).min(MAX_EJECTION);
        self.ejections += 1;
        self.consecutive_failures = 0;
        self.ejected_until = Some(now + period);
        Some(period)
    }

    /// A success: the failure streak and the back-off start over.
    pub fn record_success(&mut self) {
        self.consecutive_failures = 0;
        self.ejections = 0;
    }

    /// Active checks say the backend is back: the ejection ends now and the back-off resets.
    pub fn clear(&mut self) {
        *self = PassiveEjection::default();
    }

    /// Whether the backend is ejected at `now`.
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|until| now < until)
    }
}

/// Why a check failed, for the log line of a transition.
#[derive(Debug, thiserror::Error)]
pub enum CheckFailure {
    /// No answer within the check's timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The TCP connection failed.
    #[error("connect failed: {0}")]
    Connect(std::io::Error),
    /// The HTTP exchange failed.
    #[error("HTTP error: {0}")]
    Http(hyper::Error),
    /// The backend answered with another status.
    #[error("status {got}, expected {expected}")]
    Status {
        /// What came back.
        got: u16,
        /// What the check expects.
        expected: u16,
    },
}

/// Runs one check of `address`: a TCP connect, or an HTTP/1.1 GET when the check has `http`.
pub async fn probe(address: SocketAddr, check: &HealthCheck) -> Result<(), CheckFailure> {
    match tokio::time::timeout(check.timeout, exchange(address, check)).await {
        Ok(result) => result,
        Err(_) => Err(CheckFailure::Timeout(check.timeout)),
    }
}

async fn exchange(address: SocketAddr, check: &HealthCheck) -> Result<(), CheckFailure> {
    let stream = TcpStream::connect(address).await.map_err(CheckFailure::Connect)?;
    let Some(http) = &check.http else {
        return Ok(());
    };
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Empty<bytes::Bytes>>(TokioIo::new(stream))
            .await
            .map_err(CheckFailure::Http)?;
    // The connection future drives the exchange; it ends with the request's scope.
    let connection = tokio::spawn(connection);
    let request = hyper::Request::get(http.path.as_str())
        .header(hyper::header::HOST, address.to_string())
        .header(hyper::header::USER_AGENT, "fulcrum-health-check")
        .header(hyper::header::CONNECTION, "close")
        .body(Empty::new());
    let result = match request {
        Ok(request) => sender.send_request(request).await.map_err(CheckFailure::Http),
        // The model validates the path; an unusable one fails the check rather than panic.
        Err(_) => Err(CheckFailure::Status { got: 0, expected: http.expect_status }),
    };
    connection.abort();
    let got = result?.status().as_u16();
    match got == http.expect_status {
        true => Ok(()),
        false => Err(CheckFailure::Status { got, expected: http.expect_status }),
    }
}

/// The interval until the next check: `interval` plus up to 10 % jitter, so the nodes of a
/// cluster (and the backends of a pool) do not check in lockstep.
pub fn next_check_in(interval: Duration, rng: &mut fastrand::Rng) -> Duration {
    let jitter_ms = u64::try_from(interval.as_millis() / 10).unwrap_or(u64::MAX);
    interval.saturating_add(Duration::from_millis(rng.u64(0..=jitter_ms)))
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_result_decides_then_rise_and_fall_apply() {
        let mut h = Hysteresis::new(2, 3);
        assert_eq!(h.state(), Health::Unknown);
        assert!(h.state().takes_traffic());
        assert_eq!(h.record(true), Some(Health::Up));
        assert_eq!(h.record(false), None);
        assert_eq!(h.record(false), None);
        assert_eq!(h.record(false), Some(Health::Down));
        assert!(!h.state().takes_traffic());
        assert_eq!(h.record(true), None);
        assert_eq!(h.record(true), Some(Health::Up));
    }

    #[test]
    fn a_good_result_resets_the_failure_streak() {
        let mut h = Hysteresis::new(2, 3);
        h.record(true);
        for _ in 0..10 {
            assert_eq!(h.record(false), None);
            assert_eq!(h.record(false), None);
            assert_eq!(h.record(true), None, "two failures then a success never flip");
        }
        assert_eq!(h.state(), Health::Up);
    }

    #[test]
    fn unknown_backend_failing_its_first_check_goes_down_at_once() {
        let mut h = Hysteresis::new(3, 3);
        assert_eq!(h.record(false), Some(Health::Down));
        assert_eq!(h.record(true), None);
        assert_eq!(h.record(false), None, "a failure resets the rise streak");
        assert_eq!(h.record(true), None);
        assert_eq!(h.record(true), None);
        assert_eq!(h.record(true), Some(Health::Up));
    }

    #[test]
    fn zero_thresholds_count_as_one() {
        let mut h = Hysteresis::new(0, 0);
        h.record(true);
        assert_eq!(h.record(false), Some(Health::Down));
        assert_eq!(h.record(true), Some(Health::Up));
    }

    #[test]
    fn passive_ejection_backs_off_and_resets_on_success() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut p = PassiveEjection::default();
        assert_eq!(p.record_failure(at(0)), None);
        assert_eq!(p.record_failure(at(1)), None);
        assert_eq!(p.record_failure(at(2)), Some(FIRST_EJECTION));
        assert!(p.is_ejected(at(3)));
        // Failures of connections started before the ejection do not extend it.
        assert_eq!(p.record_failure(at(4)), None);
        let after = 2 + FIRST_EJECTION.as_millis() as u64;
        assert!(!p.is_ejected(at(after)));
        for n in 0..2 {
            assert_eq!(p.record_failure(at(after + n)), None);
        }
        assert_eq!(p.record_failure(at(after + 2)), Some(FIRST_EJECTION * 2));
        let much_later = at(after + 600_000);
        for _ in 0..20 {
            p.record_failure(much_later);
        }
        p.record_success();
        let later_still = much_later + MAX_EJECTION * 2;
        p.record_failure(later_still);
        p.record_failure(later_still);
        assert_eq!(p.record_failure(later_still), Some(FIRST_EJECTION));
    }

    #[test]
    fn back_off_is_capped() {
        let mut p = PassiveEjection::default();
        let mut now = Instant::now();
        let mut last = Duration::ZERO;
        for _ in 0..40 {
            for _ in 0..PASSIVE_FAILURES_TO_EJECT {
                if let Some(period) = p.record_failure(now) {
                    last = period;
                }
            }
            now += MAX_EJECTION;
        }
        assert_eq!(last, MAX_EJECTION);
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let mut rng = fastrand::Rng::with_seed(7);
        let interval = Duration::from_secs(2);
        for _ in 0..1000 {
            let next = next_check_in(interval, &mut rng);
            assert!(next >= interval && next <= interval + Duration::from_millis(200));
        }
    }

    #[tokio::test]
    async fn probes_report_why_they_failed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let tcp = HealthCheck { timeout: Duration::from_secs(2), ..HealthCheck::default() };
        probe(address, &tcp).await.expect("a listening port passes a TCP check");

        // An HTTP check against a server answering 503.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let server = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut request = vec![0; 1024];
            let _ = stream.read(&mut request).await;
            let _ = stream
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
                .await;
        });
        let http = HealthCheck {
            http: Some(fulcrum_model::HttpCheck { path: "/health".into(), expect_status: 200 }),
            ..tcp.clone()
        };
        let failure = probe(address, &http).await.expect_err("503 is not 200");
        assert!(matches!(failure, CheckFailure::Status { got: 503, expected: 200 }), "{failure}");
        server.await.expect("server task");

        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("address")
        };
        let failure = probe(closed, &tcp).await.expect_err("nothing listens");
        assert!(matches!(failure, CheckFailure::Connect(_)), "{failure}");
    }
}
