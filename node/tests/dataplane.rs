//! The data plane on loopback: real listeners, real backends, real client connections.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fulcrum_model::{
    AdminState, Algorithm, Backend, ClusterSpec, Config, HealthCheck, Listener, Name, Pool,
    Protocol,
};
use fulcrum_node::dataplane::DataPlane;
use fulcrum_policy::Health;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

mod support;

use support::free_port;

/// A bound on every wait, so a broken proxy fails a test instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(10);

fn name(text: &str) -> Name {
    text.parse().expect("valid name")
}

/// A backend that greets each connection with its name and a newline, then echoes.
struct TestBackend {
    name: String,
    address: SocketAddr,
    task: JoinHandle<()>,
}

impl TestBackend {
    async fn start(name: &str) -> TestBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind backend");
        TestBackend::serve(name, listener)
    }

    async fn start_on(name: &str, address: SocketAddr) -> TestBackend {
        let listener = TcpListener::bind(address).await.expect("rebind backend");
        TestBackend::serve(name, listener)
    }

    fn serve(name: &str, listener: TcpListener) -> TestBackend {
        let address = listener.local_addr().expect("address");
        let greeting = format!("{name}\n");
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                let greeting = greeting.clone();
                connections.spawn(async move {
                    if stream.write_all(greeting.as_bytes()).await.is_ok() {
                        let (mut r, mut w) = stream.split();
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                    }
                });
            }
        });
        TestBackend { name: name.to_owned(), address, task }
    }

    /// Stops listening and drops every connection it had.
    fn kill(self) -> SocketAddr {
        self.task.abort();
        self.address
    }
}

fn pool(pool_name: &str, algorithm: Algorithm, backends: &[&TestBackend]) -> Pool {
    let mut pool = Pool::new(name(pool_name));
    pool.algorithm = algorithm;
    pool.backends = backends.iter().map(|b| Backend::new(b.address)).collect();
    pool
}

fn config(listeners: Vec<Listener>, pools: Vec<Pool>) -> Config {
    Config {
        revision: 1,
        spec: ClusterSpec { listeners, pools, rate_limits: vec![] },
        acme: Default::default(),
    }
}

fn tcp_listener(bind: SocketAddr, pool_name: &str) -> Listener {
    Listener::new(name("front"), bind, Protocol::Tcp, name(pool_name))
}

/// A data plane with one TCP listener on `front` to the pool `web`.
async fn serve(front: SocketAddr, web: Pool) -> DataPlane {
    let plane = DataPlane::new().expect("workers start");
    apply(&plane, &config(vec![tcp_listener(front, "web")], vec![web])).await;
    plane
}

async fn apply(plane: &DataPlane, config: &Config) {
    let errors = plane.apply(config).await.expect("not drained");
    assert!(errors.is_empty(), "{errors:?}");
}

/// An open client connection through the proxy, greeted by its backend.
struct Session {
    backend: String,
    reader: BufReader<TcpStream>,
}

impl Session {
    async fn open(front: SocketAddr) -> Result<Session, String> {
        let exchange = async {
            let stream = TcpStream::connect(front).await.map_err(|e| format!("connect: {e}"))?;
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            reader.read_line(&mut line).await.map_err(|e| format!("greeting: {e}"))?;
            match line.strip_suffix('\n') {
                Some(backend) => Ok(Session { backend: backend.to_owned(), reader }),
                None => Err(format!("closed before a greeting (got {line:?})")),
            }
        };
        tokio::time::timeout(PATIENCE, exchange).await.map_err(|_| "timed out".to_owned())?
    }

    /// Sends a line and expects it echoed.
    async fn echo(&mut self, text: &str) -> Result<(), String> {
        let exchange = async {
            let line = format!("{text}\n");
            self.reader
                .get_mut()
                .write_all(line.as_bytes())
                .await
                .map_err(|e| format!("send: {e}"))?;
            let mut back = String::new();
            self.reader.read_line(&mut back).await.map_err(|e| format!("echo: {e}"))?;
            if back == line { Ok(()) } else { Err(format!("echoed {back:?}, sent {line:?}")) }
        };
        tokio::time::timeout(PATIENCE, exchange).await.map_err(|_| "timed out".to_owned())?
    }

    /// Waits for the proxy to close the connection.
    async fn closed(mut self) -> bool {
        let mut rest = Vec::new();
        matches!(
            tokio::time::timeout(PATIENCE, self.reader.read_to_end(&mut rest)).await,
            Ok(Ok(_)) | Ok(Err(_))
        )
    }
}

/// Opens `n` sessions one after another and counts them per backend.
async fn spread(front: SocketAddr, n: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let session = Session::open(front).await.expect("session through the proxy");
        *counts.entry(session.backend).or_insert(0) += 1;
    }
    counts
}

/// The value of the sample `name{labels}`; fails the test when there is none.
fn sample(metrics: &str, name: &str, labels: &str) -> f64 {
    let key = format!("{name}{{{labels}}} ");
    let value = metrics.lines().find_map(|line| line.strip_prefix(&key));
    value.and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no {key} in\n{metrics}"))
}

/// Polls `condition` every 20 ms until it holds or `PATIENCE` passes.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) -> Duration {
    let started = tokio::time::Instant::now();
    while !condition() {
        assert!(started.elapsed() < PATIENCE, "{what}: not within {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

fn selected(plane: &DataPlane, pool: &str) -> Vec<SocketAddr> {
    let pool = plane.pool(pool).expect("pool runs");
    pool.selection().backends.iter().map(|b| b.address()).collect()
}

#[tokio::test]
async fn round_robin_spreads_connections_evenly() {
    let backends = [
        TestBackend::start("a").await,
        TestBackend::start("b").await,
        TestBackend::start("c").await,
    ];
    let front_port = free_port();
    let front = front_port.address;
    let plane = DataPlane::new().expect("workers start");
    let refs: Vec<_> = backends.iter().collect();
    apply(
        &plane,
        &config(vec![tcp_listener(front, "web")], vec![pool("web", Algorithm::RoundRobin, &refs)]),
    )
    .await;
    let counts = spread(front, 300).await;
    for b in &backends {
        assert_eq!(counts.get(&b.name), Some(&100), "{counts:?}");
    }
}

#[tokio::test]
async fn weighted_round_robin_follows_weights() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let front_port = free_port();
    let front = front_port.address;
    let mut web = pool("web", Algorithm::WeightedRoundRobin, &[&a, &b]);
    web.backends[0].weight = 3;
    let _plane = serve(front, web).await;
    let counts = spread(front, 400).await;
    assert_eq!((counts.get("a"), counts.get("b")), (Some(&300), Some(&100)), "{counts:?}");
}

#[tokio::test]
async fn least_connections_avoids_the_busy_backend() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let front_port = free_port();
    let front = front_port.address;
    let plane = DataPlane::new().expect("workers start");
    apply(
        &plane,
        &config(
            vec![tcp_listener(front, "web")],
            vec![pool("web", Algorithm::LeastConnections, &[&a, &b])],
        ),
    )
    .await;
    // Hold ten connections open; least connections keeps them level.
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(Session::open(front).await.expect("session"));
    }
    let on_a = held.iter().filter(|s| s.backend == "a").count();
    assert_eq!(on_a, 5, "open connections are spread evenly");
    // Close the five on `a`: the next five all go there.
    held.retain(|s| s.backend == "b");
    let a_pool = plane.pool("web").expect("pool");
    eventually("a's connections end", || a_pool.all_backends()[0].load().active() == 0).await;
    let counts = spread_held(front, 5).await;
    assert_eq!(counts.get("a"), Some(&5), "{counts:?}");
}

/// Opens `n` sessions and keeps them all open while counting.
async fn spread_held(front: SocketAddr, n: usize) -> HashMap<String, usize> {
    let mut sessions = Vec::new();
    for _ in 0..n {
        sessions.push(Session::open(front).await.expect("session"));
    }
    let mut counts = HashMap::new();
    for s in &sessions {
        *counts.entry(s.backend.clone()).or_insert(0) += 1;
    }
    counts
}

#[tokio::test]
async fn config_changes_under_load_lose_no_connection() {
    let backends = [
        TestBackend::start("a").await,
        TestBackend::start("b").await,
        TestBackend::start("c").await,
    ];
    let front_port = free_port();
    let front = front_port.address;
    let plane = Arc::new(DataPlane::new().expect("workers start"));
    let all: Vec<_> = backends.iter().collect();
    apply(
        &plane,
        &config(vec![tcp_listener(front, "web")], vec![pool("web", Algorithm::RoundRobin, &all)]),
    )
    .await;

    let clients: Vec<_> = (0..4)
        .map(|client| {
            tokio::spawn(async move {
                let mut failures = Vec::new();
                for i in 0..150 {
                    let result = async {
                        let mut session = Session::open(front).await?;
                        session.echo(&format!("client {client} exchange {i}")).await
                    };
                    if let Err(e) = result.await {
                        failures.push(e);
                    }
                }
                failures
            })
        })
        .collect();
    // Meanwhile: backends come and go, the algorithm and the listener's settings change.
    let algorithms = [
        Algorithm::RoundRobin,
        Algorithm::LeastConnections,
        Algorithm::Random,
        Algorithm::PowerOfTwoChoices,
    ];
    for round in 0..40 {
        let members: Vec<_> = all.iter().copied().skip(round % 3).collect();
        let mut listener = tcp_listener(front, "web");
        listener.idle_timeout = Duration::from_secs(60 + round as u64);
        let web = pool("web", algorithms[round % algorithms.len()].clone(), &members);
        apply(&plane, &config(vec![listener], vec![web])).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for client in clients {
        let failures = client.await.expect("client task");
        assert!(failures.is_empty(), "lost exchanges: {failures:?}");
    }
}

#[tokio::test]
async fn a_draining_backend_finishes_its_connections_and_takes_no_new_ones() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let front_port = free_port();
    let front = front_port.address;
    let plane = serve(front, pool("web", Algorithm::RoundRobin, &[&a])).await;
    let mut long = Session::open(front).await.expect("session");
    assert_eq!(long.backend, "a");

    let mut draining = pool("web", Algorithm::RoundRobin, &[&a, &b]);
    draining.backends[0].state = AdminState::Draining;
    apply(&plane, &config(vec![tcp_listener(front, "web")], vec![draining.clone()])).await;
    let counts = spread(front, 20).await;
    assert_eq!(
        counts.get("b"),
        Some(&20),
        "new connections avoid the draining backend: {counts:?}"
    );
    long.echo("still flowing while draining").await.expect("in-flight connection lives on");
    let metrics = plane.metrics().await;
    let draining_line =
        format!("fulcrum_backend_draining{{pool=\"web\",backend=\"{}\"}} 1", a.address);
    assert!(metrics.contains(&draining_line), "{metrics}");

    // Removing it drains the same way; the drain deadline then closes what is left.
    let mut removed = pool("web", Algorithm::RoundRobin, &[&b]);
    removed.drain_timeout = Duration::from_millis(300);
    apply(&plane, &config(vec![tcp_listener(front, "web")], vec![removed])).await;
    long.echo("still flowing after removal").await.expect("in-flight connection lives on");
    let started = tokio::time::Instant::now();
    assert!(long.closed().await, "the drain deadline closes the connection");
    assert!(started.elapsed() < PATIENCE);
}

#[tokio::test]
async fn disabling_a_backend_closes_its_connections_at_once() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let front_port = free_port();
    let front = front_port.address;
    let plane = serve(front, pool("web", Algorithm::RoundRobin, &[&a])).await;
    let long = Session::open(front).await.expect("session");
    let mut disabled = pool("web", Algorithm::RoundRobin, &[&a, &b]);
    disabled.backends[0].state = AdminState::Disabled;
    apply(&plane, &config(vec![tcp_listener(front, "web")], vec![disabled])).await;
    assert!(long.closed().await);
    assert_eq!(spread(front, 5).await.get("b"), Some(&5));
}

#[tokio::test]
async fn active_checks_eject_a_dead_backend_and_bring_it_back() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let front_port = free_port();
    let front = front_port.address;
    let check = HealthCheck {
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(100),
        rise: 2,
        fall: 2,
        http: None,
    };
    let mut web = pool("web", Algorithm::RoundRobin, &[&a, &b]);
    web.health_check = Some(check.clone());
    let plane = serve(front, web).await;
    let web_pool = plane.pool("web").expect("pool runs");
    eventually("both backends checked up", || {
        web_pool.all_backends().iter().all(|b| b.health() == Health::Up)
    })
    .await;

    let b_address = b.kill();
    let b_checks = |result: &str| {
        let labels = format!("pool=\"web\",backend=\"{b_address}\",result=\"{result}\"");
        let pool = plane.pool("web").expect("pool runs");
        let backend = pool.all_backends().into_iter().find(|b| b.address() == b_address);
        let (passed, failed) = backend.expect("b is in the pool").check_results();
        (labels, if result == "pass" { passed } else { failed })
    };
    // Ejected after `fall` failed checks, not before; how fast is the benchmarks' business.
    eventually("b ejected", || selected(&plane, "web") == vec![a.address]).await;
    let (_, failed) = b_checks("fail");
    assert!(failed >= u64::from(check.fall), "ejected after {failed} failed checks");
    let (_, passed) = b_checks("pass");
    let counts = spread(front, 20).await;
    assert_eq!(counts.get("a"), Some(&20), "traffic continues on a: {counts:?}");

    let _b = TestBackend::start_on("b", b_address).await;
    eventually("b back", || selected(&plane, "web").len() == 2).await;
    let (_, passed_since) = b_checks("pass");
    assert!(
        passed_since - passed >= u64::from(check.rise),
        "back after {} passed checks",
        passed_since - passed
    );
    let metrics = plane.metrics().await;
    let (failed_labels, failed) = b_checks("fail");
    assert_eq!(
        sample(&metrics, "fulcrum_backend_health_checks_total", &failed_labels),
        failed as f64
    );
}

#[tokio::test]
async fn connect_failures_try_the_next_backend_and_eject_passively() {
    let a = TestBackend::start("a").await;
    let dead_port = free_port();
    let dead = dead_port.address;
    let front_port = free_port();
    let front = front_port.address;
    let mut web = pool("web", Algorithm::RoundRobin, &[&a]);
    web.backends.push(Backend::new(dead));
    let plane = serve(front, web).await;
    // Every connection succeeds: the dead backend's refusals send it on to `a`.
    let counts = spread(front, 10).await;
    assert_eq!(counts.get("a"), Some(&10), "{counts:?}");
    eventually("dead backend ejected", || selected(&plane, "web") == vec![a.address]).await;
}

#[tokio::test]
async fn a_pool_with_nothing_healthy_fails_fast() {
    let dead_port = free_port();
    let dead = dead_port.address;
    let front_port = free_port();
    let front = front_port.address;
    let mut web = Pool::new(name("web"));
    web.backends.push(Backend::new(dead));
    let plane = serve(front, web).await;
    for _ in 0..3 {
        let started = tokio::time::Instant::now();
        let outcome = Session::open(front).await;
        assert!(outcome.is_err(), "no backend: the connection is closed");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "closed, not hung: {:?}",
            started.elapsed()
        );
    }
    let metrics = plane.metrics().await;
    let failed = "listener=\"front\",kind=\"connect_failed\"";
    assert_eq!(sample(&metrics, "fulcrum_listener_errors_total", failed), 3.0, "{metrics}");
}

#[tokio::test]
async fn backend_connection_limit_sends_the_rest_elsewhere() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let front_port = free_port();
    let front = front_port.address;
    let mut web = pool("web", Algorithm::RoundRobin, &[&a, &b]);
    web.backends[0].max_connections = Some(2);
    let _plane = serve(front, web).await;
    let counts = spread_held(front, 10).await;
    assert_eq!((counts.get("a"), counts.get("b")), (Some(&2), Some(&8)), "{counts:?}");
}

/// A TCP listener with the PROXY protocol on `listen`, dialled at `dial`: what the backend
/// reads as (source, destination), the client's own address, and the payload after the header.
async fn proxy_header_through(
    listen: SocketAddr,
    dial: SocketAddr,
) -> (SocketAddr, SocketAddr, SocketAddr, Vec<u8>) {
    let backend = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let backend_address = backend.local_addr().expect("address");
    let mut listener = tcp_listener(listen, "web");
    listener.proxy_protocol = true;
    let mut web = Pool::new(name("web"));
    web.backends.push(Backend::new(backend_address));
    let plane = DataPlane::new().expect("workers start");
    apply(&plane, &config(vec![listener], vec![web])).await;

    let mut client = TcpStream::connect(dial).await.expect("connect");
    client.write_all(b"hello").await.expect("send");
    let client_address = client.local_addr().expect("address");
    let (mut upstream, _) =
        tokio::time::timeout(PATIENCE, backend.accept()).await.expect("in time").expect("accept");
    let mut received = vec![0; 16 + 12 + 5];
    upstream.read_exact(&mut received).await.expect("header and payload");
    let header = ppp::v2::Header::try_from(&received[..28]).expect("a PROXY v2 header");
    let ppp::v2::Addresses::IPv4(addresses) = header.addresses else {
        panic!("unexpected addresses {:?}", header.addresses);
    };
    let source = SocketAddr::from((addresses.source_address, addresses.source_port));
    let destination = SocketAddr::from((addresses.destination_address, addresses.destination_port));
    (source, destination, client_address, received[28..].to_vec())
}

#[tokio::test]
async fn proxy_protocol_v2_tells_the_backend_who_the_client_is() {
    let front = free_port().address;
    let (source, destination, client, payload) = proxy_header_through(front, front).await;
    assert_eq!((source, destination), (client, front));
    assert_eq!(payload, b"hello");
}

#[tokio::test]
async fn proxy_protocol_v2_on_a_wildcard_bind_names_the_address_the_client_dialled() {
    let reserved = free_port();
    let port = reserved.address.port();
    let wildcard = SocketAddr::from(([0, 0, 0, 0], port));
    // Not the address the port was found on: the header must name the one dialled.
    let dialled = SocketAddr::from(([127, 0, 0, 2], port));
    let (source, destination, client, payload) = proxy_header_through(wildcard, dialled).await;
    assert_eq!((source, destination), (client, dialled));
    assert_eq!(payload, b"hello");
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let a = TestBackend::start("a").await;
    let front_port = free_port();
    let front = front_port.address;
    let mut listener = tcp_listener(front, "web");
    listener.idle_timeout = Duration::from_millis(300);
    let plane = DataPlane::new().expect("workers start");
    apply(&plane, &config(vec![listener], vec![pool("web", Algorithm::RoundRobin, &[&a])])).await;
    let mut session = Session::open(front).await.expect("session");
    session.echo("active").await.expect("echo");
    assert!(session.closed().await);
    let metrics = plane.metrics().await;
    assert!(
        metrics
            .contains("fulcrum_listener_errors_total{listener=\"front\",kind=\"idle_timeout\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_listener_moved_to_another_address_keeps_its_connections() {
    let a = TestBackend::start("a").await;
    let first_port = free_port();
    let first = first_port.address;
    let second_port = free_port();
    let second = second_port.address;
    let web = pool("web", Algorithm::RoundRobin, &[&a]);
    let plane = DataPlane::new().expect("workers start");
    apply(&plane, &config(vec![tcp_listener(first, "web")], vec![web.clone()])).await;
    let mut old = Session::open(first).await.expect("session");

    // Same name, new address: the old socket closes, its connection drains, the new one serves.
    apply(&plane, &config(vec![tcp_listener(second, "web")], vec![web.clone()])).await;
    assert!(TcpStream::connect(first).await.is_err(), "the old address no longer accepts");
    Session::open(second).await.expect("the new address serves");
    old.echo("the old connection lives on").await.expect("echo");

    // And back: the first address is free again at once.
    apply(&plane, &config(vec![tcp_listener(first, "web")], vec![web])).await;
    Session::open(first).await.expect("the first address serves again");
}

#[tokio::test]
async fn node_drain_waits_for_connections_then_reports_what_remained() {
    let a = TestBackend::start("a").await;
    let front_port = free_port();
    let front = front_port.address;
    let plane = Arc::new(DataPlane::new().expect("workers start"));
    apply(
        &plane,
        &config(vec![tcp_listener(front, "web")], vec![pool("web", Algorithm::RoundRobin, &[&a])]),
    )
    .await;

    // A connection that ends within the deadline is waited for.
    let mut short = Session::open(front).await.expect("session");
    let mut long = Session::open(front).await.expect("session");
    let drain = tokio::spawn({
        let plane = Arc::clone(&plane);
        async move { plane.drain(Duration::from_millis(500)).await }
    });
    eventually("no longer accepting", || std::net::TcpStream::connect(front).is_err()).await;
    short.echo("in flight during the drain").await.expect("echo");
    drop(short);
    long.echo("in flight during the drain").await.expect("echo");
    let report = drain.await.expect("drain task");
    assert_eq!(report.total(), 1, "only the long connection was cut: {report:?}");
    assert!(long.closed().await);
}

#[tokio::test]
async fn metrics_count_connections_bytes_and_latency() {
    let a = TestBackend::start("a").await;
    let front_port = free_port();
    let front = front_port.address;
    let plane = serve(front, pool("web", Algorithm::RoundRobin, &[&a])).await;
    for i in 0..5 {
        let mut session = Session::open(front).await.expect("session");
        session.echo(&format!("message {i}")).await.expect("echo");
    }
    let listener = plane.listener("front").await.expect("listener runs");
    eventually("sessions end", || listener.active() == 0).await;
    let metrics = plane.metrics().await;
    let backend = format!("pool=\"web\",backend=\"{}\"", a.address);
    // Each session sends "message N\n" (10 bytes) and gets "a\n" plus its echo back.
    for line in [
        "fulcrum_listener_connections_total{listener=\"front\"} 5".to_owned(),
        "fulcrum_listener_bytes_total{listener=\"front\",direction=\"in\"} 50".to_owned(),
        "fulcrum_listener_bytes_total{listener=\"front\",direction=\"out\"} 60".to_owned(),
        "fulcrum_listener_connect_seconds_count{listener=\"front\"} 5".to_owned(),
        "fulcrum_listener_active_connections{listener=\"front\"} 0".to_owned(),
        format!("fulcrum_backend_connections_total{{{backend}}} 5"),
        format!("fulcrum_backend_bytes_total{{{backend},direction=\"in\"}} 50"),
        format!("fulcrum_backend_connect_seconds_count{{{backend}}} 5"),
        format!("fulcrum_backend_up{{{backend}}} 1"),
        format!("fulcrum_backend_health{{{backend},state=\"unknown\"}} 1"),
    ] {
        assert!(metrics.contains(&format!("{line}\n")), "missing {line:?} in\n{metrics}");
    }
}

#[tokio::test]
async fn a_backend_enabled_again_takes_traffic_again() {
    let a = TestBackend::start("a").await;
    let front_port = free_port();
    let front = front_port.address;
    let web = pool("web", Algorithm::RoundRobin, &[&a]);
    let plane = serve(front, web.clone()).await;
    let mut disabled = web.clone();
    disabled.backends[0].state = AdminState::Disabled;
    apply(&plane, &config(vec![tcp_listener(front, "web")], vec![disabled])).await;
    assert!(Session::open(front).await.is_err(), "a disabled backend takes nothing");

    apply(&plane, &config(vec![tcp_listener(front, "web")], vec![web])).await;
    let mut session = Session::open(front).await.expect("enabled again");
    session.echo("not closed by the earlier disable").await.expect("echo");
}

#[tokio::test]
async fn a_backend_removed_and_added_back_keeps_its_open_connections() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let front_port = free_port();
    let front = front_port.address;
    let mut both = pool("web", Algorithm::RoundRobin, &[&a, &b]);
    both.drain_timeout = Duration::from_millis(300);
    let plane = serve(front, both.clone()).await;
    let mut long = Session::open(front).await.expect("session");
    assert_eq!(long.backend, "a");

    let mut only_b = pool("web", Algorithm::RoundRobin, &[&b]);
    only_b.drain_timeout = Duration::from_millis(300);
    apply(&plane, &config(vec![tcp_listener(front, "web")], vec![only_b])).await;
    let metrics = plane.metrics().await;
    let labels = format!("pool=\"web\",backend=\"{}\"", a.address);
    assert_eq!(sample(&metrics, "fulcrum_backend_draining", &labels), 1.0, "{metrics}");
    assert_eq!(sample(&metrics, "fulcrum_backend_active_connections", &labels), 1.0);

    apply(&plane, &config(vec![tcp_listener(front, "web")], vec![both])).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    long.echo("the removal's drain deadline was called off").await.expect("echo");
    let metrics = plane.metrics().await;
    assert_eq!(sample(&metrics, "fulcrum_backend_active_connections", &labels), 1.0);
    assert_eq!(metrics.matches(&format!("fulcrum_backend_up{{{labels}}}")).count(), 1);
}

#[tokio::test]
async fn a_listener_at_its_limit_leaves_clients_in_the_backlog() {
    let a = TestBackend::start("a").await;
    let front_port = free_port();
    let front = front_port.address;
    let mut listener = tcp_listener(front, "web");
    listener.max_connections = Some(2);
    let plane = DataPlane::new().expect("workers start");
    apply(&plane, &config(vec![listener], vec![pool("web", Algorithm::RoundRobin, &[&a])])).await;
    let first = Session::open(front).await.expect("session");
    let _second = Session::open(front).await.expect("session");

    // The kernel completes the third handshake, but nobody accepts it yet.
    let third = tokio::spawn(Session::open(front));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!third.is_finished(), "the third client was served beyond the limit");
    drop(first);
    let third = tokio::time::timeout(PATIENCE, third).await.expect("served").expect("task");
    third.expect("the third client is served once the first leaves");
}

#[tokio::test]
async fn a_tcp_listener_rate_limit_refuses_connections_per_client_before_any_backend() {
    use fulcrum_model::{RateLimit, RateLimitKey, RateLimitPolicy};
    let backend = TestBackend::start("a").await;
    let front = free_port().address;
    let mut listener = tcp_listener(front, "web");
    listener.rate_limit = Some(name("two"));
    let policy = RateLimitPolicy {
        name: name("two"),
        key: RateLimitKey::ClientIp,
        limit: RateLimit::TokenBucket { capacity: 2, refill_per_second: 0.001 },
    };
    let plane = DataPlane::new().expect("workers start");
    let mut config = config(vec![listener], vec![pool("web", Algorithm::RoundRobin, &[&backend])]);
    config.spec.rate_limits = vec![policy];
    apply(&plane, &config).await;

    for _ in 0..2 {
        let mut session = Session::open(front).await.expect("within the limit");
        session.echo("hello").await.expect("forwarded");
    }
    let refused = Session::open(front).await;
    assert!(refused.is_err(), "a third connection from one client got through");
    // Another client address has its own counter.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::from(([127, 0, 0, 2], 0))).expect("bind 127.0.0.2");
    let mut other = BufReader::new(socket.connect(front).await.expect("connect"));
    let mut greeting = String::new();
    tokio::time::timeout(PATIENCE, other.read_line(&mut greeting)).await.expect("in time").ok();
    assert_eq!(greeting, "a\n", "another client is counted apart");
    let metrics = plane.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "fulcrum_listener_errors_total",
            "listener=\"front\",kind=\"rate_limited\""
        ),
        1.0
    );
}
