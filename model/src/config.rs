//! The configuration schema: everything the cluster replicates.
//!
//! Shapes are checked while parsing (a route names either a pool or a split, a token bucket has
//! a capacity); relations and values are checked by [`crate::validate`] (a route's pool exists,
//! a refill rate is not zero), so a `Config` in memory may be invalid only until validated.
//!
//! Every type serializes the same way to TOML, JSON and the binary log: externally tagged
//! enums and flat "spec" forms, never `untagged` or `flatten`, which bincode cannot read.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Name;

/// A configuration revision: bumped by one for every command applied.
pub type Revision = u64;

/// The cluster's configuration at one revision.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// How many commands have been applied to reach this state.
    pub revision: Revision,
    /// What the operators declared.
    pub spec: ClusterSpec,
    /// ACME accounts, orders and certificates: kept by the cluster, not declared.
    #[serde(default)]
    pub acme: crate::acme::AcmeState,
}

/// The declarative part of the configuration: the content of a cluster file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// Where traffic comes in.
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// Where traffic goes.
    #[serde(default)]
    pub pools: Vec<Pool>,
    /// Rate-limit policies that listeners and routes refer to by name.
    #[serde(default)]
    pub rate_limits: Vec<RateLimitPolicy>,
}

impl ClusterSpec {
    /// The listener called `name`.
    pub fn listener(&self, name: &str) -> Option<&Listener> {
        self.listeners.iter().find(|l| l.name.as_str() == name)
    }

    /// The pool called `name`.
    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.iter().find(|p| p.name.as_str() == name)
    }

    /// The rate-limit policy called `name`.
    pub fn rate_limit(&self, name: &str) -> Option<&RateLimitPolicy> {
        self.rate_limits.iter().find(|p| p.name.as_str() == name)
    }
}

/// A socket on which every node accepts traffic (usually on a VIP).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Unique among listeners.
    pub name: Name,
    /// Address and port to bind; the address may be a VIP this node does not hold yet.
    pub bind: SocketAddr,
    /// What is spoken on the socket.
    pub protocol: Protocol,
    /// Certificates, for `https` only.
    #[serde(default)]
    pub tls: Option<Tls>,
    /// Pool for traffic no route matches (and all traffic of a `tcp` listener).
    #[serde(default)]
    pub default_pool: Option<Name>,
    /// HTTP routes, tried in order; the first match wins.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Rate-limit policy for every request or connection on this listener.
    #[serde(default)]
    pub rate_limit: Option<Name>,
    /// Send a PROXY protocol v2 header to backends so they see the client's address.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// At most this many client connections at once; further ones wait in the backlog.
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// A connection with no bytes moving either way for this long is closed (for HTTP: no
    /// request in flight and none arriving).
    #[serde(default = "default_idle_timeout", with = "crate::duration")]
    pub idle_timeout: Duration,
    /// Settings of `http` and `https` listeners.
    #[serde(default)]
    pub http: HttpOptions,
}

/// How an HTTP listener treats requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpOptions {
    /// A client must send a request's headers within this (slowloris protection), counted
    /// from its connection for the first request and from the first byte for later ones.
    #[serde(default = "default_header_timeout", with = "crate::duration")]
    pub header_timeout: Duration,
    /// An HTTP/1.1 connection may wait this long, idle, for its next request.
    #[serde(default = "default_keep_alive_timeout", with = "crate::duration")]
    pub keep_alive_timeout: Duration,
    /// Clients (other proxies of yours) whose X-Forwarded-For and Forwarded are kept and
    /// appended to; from anyone else those headers are replaced, so a client cannot forge
    /// the address a backend sees.
    #[serde(default)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// A request must be answered (response headers sent) within this, body upload included.
    #[serde(default = "default_request_timeout", with = "crate::duration")]
    pub request_timeout: Duration,
    /// Largest request head (request line and headers); larger gets 431.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: u32,
    /// Largest request body; larger gets 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// Log one structured line per request.
    #[serde(default)]
    pub access_log: bool,
}

fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_keep_alive_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_max_header_bytes() -> u32 {
    32 * 1024
}
fn default_max_body_bytes() -> u64 {
    64 << 20
}

impl Default for HttpOptions {
    fn default() -> HttpOptions {
        HttpOptions {
            header_timeout: default_header_timeout(),
            keep_alive_timeout: default_keep_alive_timeout(),
            trusted_proxies: Vec::new(),
            request_timeout: default_request_timeout(),
            max_header_bytes: default_max_header_bytes(),
            max_body_bytes: default_max_body_bytes(),
            access_log: false,
        }
    }
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(300)
}

impl Listener {
    /// Its ACME settings, if it gets its certificate by ACME.
    pub fn acme(&self) -> Option<&crate::acme::AcmeSettings> {
        self.tls.as_ref()?.acme.as_ref()
    }

    /// A listener with defaults for everything but its name, address, protocol and pool.
    pub fn new(name: Name, bind: SocketAddr, protocol: Protocol, default_pool: Name) -> Listener {
        Listener {
            name,
            bind,
            protocol,
            tls: None,
            default_pool: Some(default_pool),
            routes: Vec::new(),
            rate_limit: None,
            proxy_protocol: false,
            max_connections: None,
            idle_timeout: default_idle_timeout(),
            http: HttpOptions::default(),
        }
    }
}

/// What a listener speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// Layer 4: bytes are copied to one backend per connection.
    Tcp,
    /// HTTP/1.1 and h2c, routed per request.
    Http,
    /// HTTP/1.1 and HTTP/2 over TLS, routed per request.
    Https,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Http => "http",
            Protocol::Https => "https",
        })
    }
}

/// TLS settings of an `https` listener.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// Certificates to choose from by SNI; the first is the fallback after an ACME one.
    #[serde(default)]
    pub certificates: Vec<Certificate>,
    /// Get a certificate from an ACME authority, shared by every node.
    #[serde(default)]
    pub acme: Option<crate::acme::AcmeSettings>,
}

/// A certificate chain and its key, as PEM files present on every node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    /// PEM file with the certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM file with the private key.
    pub key: PathBuf,
}

/// A set of backends and how to spread traffic over them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    /// Unique among pools.
    pub name: Name,
    /// How a backend is chosen.
    #[serde(default)]
    pub algorithm: Algorithm,
    /// The servers; an empty pool fails every request fast.
    #[serde(default)]
    pub backends: Vec<Backend>,
    /// Active health check; without one, only passive checks eject backends.
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    /// How long in-flight work on a draining or removed backend may run before it is closed.
    #[serde(default = "default_drain_timeout", with = "crate::duration")]
    pub drain_timeout: Duration,
    /// How long a connection to a backend may take before the next backend is tried.
    #[serde(default = "default_connect_timeout", with = "crate::duration")]
    pub connect_timeout: Duration,
    /// What HTTP listeners speak to these backends.
    #[serde(default)]
    pub upstream: UpstreamProtocol,
    /// How long a backend may take to send response headers before the client gets 504.
    #[serde(default = "default_response_timeout", with = "crate::duration")]
    pub response_timeout: Duration,
}

/// The HTTP version spoken to a pool's backends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1, with pooled keep-alive connections.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge (h2c), multiplexed; needed for gRPC backends.
    Http2,
}

fn default_response_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_drain_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

impl Pool {
    /// A pool with defaults for everything but its name.
    pub fn new(name: Name) -> Pool {
        Pool {
            name,
            algorithm: Algorithm::default(),
            backends: Vec::new(),
            health_check: None,
            drain_timeout: default_drain_timeout(),
            connect_timeout: default_connect_timeout(),
            upstream: UpstreamProtocol::default(),
            response_timeout: default_response_timeout(),
        }
    }

    /// The backend at `address`.
    pub fn backend(&self, address: SocketAddr) -> Option<&Backend> {
        self.backends.iter().find(|b| b.address == address)
    }
}

/// One server in a pool, identified by its address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    /// Where to connect; unique within its pool.
    pub address: SocketAddr,
    /// Relative share for weighted algorithms; 0 takes no new traffic.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// What operators want of it.
    #[serde(default)]
    pub state: AdminState,
    /// At most this many connections at once to this backend.
    #[serde(default)]
    pub max_connections: Option<u32>,
}

/// The largest weight accepted; keeps weighted sums far from overflow.
pub const MAX_WEIGHT: u32 = 10_000;

fn default_weight() -> u32 {
    1
}

impl Backend {
    /// An active backend of weight 1.
    pub fn new(address: SocketAddr) -> Backend {
        Backend { address, weight: 1, state: AdminState::Active, max_connections: None }
    }
}

/// Whether a backend is to take traffic, as operators set it (health is separate).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminState {
    /// Takes new connections and requests.
    #[default]
    Active,
    /// Takes nothing new; work in flight finishes until the pool's drain timeout.
    Draining,
    /// Takes nothing; work in flight is closed.
    Disabled,
}

/// How a pool chooses a backend.
///
/// Written as a name, `algorithm = "least_connections"`, or as a table with parameters,
/// `algorithm = { kind = "consistent_hash", key = "header:x-user" }`.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Algorithm {
    /// Each backend in turn.
    #[default]
    RoundRobin,
    /// Smooth weighted round robin, as nginx does it.
    WeightedRoundRobin,
    /// The backend with the fewest active connections.
    LeastConnections,
    /// Fewest active connections relative to weight.
    WeightedLeastConnections,
    /// Uniformly at random.
    Random,
    /// The less loaded of two random picks.
    PowerOfTwoChoices,
    /// A hash of the client address, modulo the backends.
    SourceIpHash,
    /// A Maglev table over a request key: few keys move when backends change.
    ConsistentHash {
        /// What is hashed.
        key: HashKey,
        /// Maglev lookup table size: a prime well above the number of backends.
        table_size: u32,
    },
    /// Least response time: peak EWMA of latency times outstanding requests.
    PeakEwma {
        /// How fast old latency samples fade.
        decay: Duration,
    },
}

/// The default Maglev table size: prime, and large enough for hundreds of backends.
pub const DEFAULT_MAGLEV_TABLE_SIZE: u32 = 65_537;
const DEFAULT_EWMA_DECAY: Duration = Duration::from_secs(10);

/// The algorithms by name, as written in files and on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlgorithmKind {
    /// [`Algorithm::RoundRobin`]
    RoundRobin,
    /// [`Algorithm::WeightedRoundRobin`]
    WeightedRoundRobin,
    /// [`Algorithm::LeastConnections`]
    LeastConnections,
    /// [`Algorithm::WeightedLeastConnections`]
    WeightedLeastConnections,
    /// [`Algorithm::Random`]
    Random,
    /// [`Algorithm::PowerOfTwoChoices`]
    PowerOfTwoChoices,
    /// [`Algorithm::SourceIpHash`]
    SourceIpHash,
    /// [`Algorithm::ConsistentHash`]
    ConsistentHash,
    /// [`Algorithm::PeakEwma`]
    PeakEwma,
}

impl AlgorithmKind {
    /// The name used in files and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            AlgorithmKind::RoundRobin => "round_robin",
            AlgorithmKind::WeightedRoundRobin => "weighted_round_robin",
            AlgorithmKind::LeastConnections => "least_connections",
            AlgorithmKind::WeightedLeastConnections => "weighted_least_connections",
            AlgorithmKind::Random => "random",
            AlgorithmKind::PowerOfTwoChoices => "power_of_two_choices",
            AlgorithmKind::SourceIpHash => "source_ip_hash",
            AlgorithmKind::ConsistentHash => "consistent_hash",
            AlgorithmKind::PeakEwma => "peak_ewma",
        }
    }
}

impl Serialize for Algorithm {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let spec = AlgorithmSpec::from(self.clone());
        let has_parameters =
            spec.key.is_some() || spec.table_size.is_some() || spec.decay.is_some();
        if serializer.is_human_readable() && !has_parameters {
            serializer.serialize_str(spec.kind.as_str())
        } else {
            spec.serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for Algorithm {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Algorithm, D::Error> {
        use serde::de::{self, Error as _};

        struct NameOrTable;
        impl<'de> de::Visitor<'de> for NameOrTable {
            type Value = AlgorithmSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an algorithm name such as \"round_robin\", or a table with `kind`")
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<AlgorithmSpec, E> {
                let kind = AlgorithmKind::deserialize(de::value::StrDeserializer::<E>::new(name))?;
                Ok(AlgorithmSpec { kind, key: None, table_size: None, decay: None })
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<AlgorithmSpec, A::Error> {
                AlgorithmSpec::deserialize(de::value::MapAccessDeserializer::new(map))
            }
        }

        // Only self-describing formats can offer the short form; the binary log stores tables.
        let spec = if deserializer.is_human_readable() {
            deserializer.deserialize_any(NameOrTable)?
        } else {
            AlgorithmSpec::deserialize(deserializer)?
        };
        Algorithm::try_from(spec).map_err(D::Error::custom)
    }
}

/// The table form of an [`Algorithm`]: `{ kind = "consistent_hash", key = "header:x-user" }`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlgorithmSpec {
    kind: AlgorithmKind,
    #[serde(default)]
    key: Option<HashKey>,
    #[serde(default)]
    table_size: Option<u32>,
    #[serde(default, with = "crate::duration::option")]
    decay: Option<Duration>,
}

impl TryFrom<AlgorithmSpec> for Algorithm {
    type Error = String;

    fn try_from(spec: AlgorithmSpec) -> Result<Algorithm, String> {
        use AlgorithmKind as K;
        let AlgorithmSpec { kind, key, table_size, decay } = spec;
        let unexpected = [
            ("key", key.is_some()),
            ("table_size", table_size.is_some()),
            ("decay", decay.is_some()),
        ];
        let allowed: &[&str] = match kind {
            K::ConsistentHash => &["key", "table_size"],
            K::PeakEwma => &["decay"],
            _ => &[],
        };
        if let Some((param, _)) = unexpected.iter().find(|(p, set)| *set && !allowed.contains(p)) {
            return Err(format!("unknown parameter `{param}` for algorithm {}", kind.as_str()));
        }
        Ok(match kind {
            K::RoundRobin => Algorithm::RoundRobin,
            K::WeightedRoundRobin => Algorithm::WeightedRoundRobin,
            K::LeastConnections => Algorithm::LeastConnections,
            K::WeightedLeastConnections => Algorithm::WeightedLeastConnections,
            K::Random => Algorithm::Random,
            K::PowerOfTwoChoices => Algorithm::PowerOfTwoChoices,
            K::SourceIpHash => Algorithm::SourceIpHash,
            K::ConsistentHash => Algorithm::ConsistentHash {
                key: key
                    .ok_or("algorithm consistent_hash needs a `key`, e.g. \"header:x-user\"")?,
                table_size: table_size.unwrap_or(DEFAULT_MAGLEV_TABLE_SIZE),
            },
            K::PeakEwma => Algorithm::PeakEwma { decay: decay.unwrap_or(DEFAULT_EWMA_DECAY) },
        })
    }
}

impl From<Algorithm> for AlgorithmSpec {
    fn from(algorithm: Algorithm) -> AlgorithmSpec {
        let plain = |kind| AlgorithmSpec { kind, key: None, table_size: None, decay: None };
        match algorithm {
            Algorithm::RoundRobin => plain(AlgorithmKind::RoundRobin),
            Algorithm::WeightedRoundRobin => plain(AlgorithmKind::WeightedRoundRobin),
            Algorithm::LeastConnections => plain(AlgorithmKind::LeastConnections),
            Algorithm::WeightedLeastConnections => plain(AlgorithmKind::WeightedLeastConnections),
            Algorithm::Random => plain(AlgorithmKind::Random),
            Algorithm::PowerOfTwoChoices => plain(AlgorithmKind::PowerOfTwoChoices),
            Algorithm::SourceIpHash => plain(AlgorithmKind::SourceIpHash),
            Algorithm::ConsistentHash { key, table_size } => AlgorithmSpec {
                key: Some(key),
                table_size: Some(table_size),
                ..plain(AlgorithmKind::ConsistentHash)
            },
            Algorithm::PeakEwma { decay } => {
                AlgorithmSpec { decay: Some(decay), ..plain(AlgorithmKind::PeakEwma) }
            }
        }
    }
}

/// The request property a hash algorithm or rate limit is keyed on.
///
/// Written as `"source_ip"`, `"path"`, `"header:<name>"` or `"cookie:<name>"`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum HashKey {
    /// The client's IP address.
    SourceIp,
    /// The request path.
    Path,
    /// The value of a request header (lowercase name).
    Header(String),
    /// The value of a cookie.
    Cookie(String),
}

impl FromStr for HashKey {
    type Err = String;

    fn from_str(text: &str) -> Result<HashKey, String> {
        match text.split_once(':') {
            None if text == "source_ip" => Ok(HashKey::SourceIp),
            None if text == "path" => Ok(HashKey::Path),
            Some(("header", name)) if is_http_token(name) => {
                Ok(HashKey::Header(name.to_ascii_lowercase()))
            }
            Some(("cookie", name)) if is_http_token(name) => Ok(HashKey::Cookie(name.to_owned())),
            _ => Err(format!(
                "invalid key {text:?}: write \"source_ip\", \"path\", \"header:<name>\" or \"cookie:<name>\""
            )),
        }
    }
}

impl TryFrom<String> for HashKey {
    type Error = String;
    fn try_from(text: String) -> Result<HashKey, String> {
        text.parse()
    }
}

impl fmt::Display for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HashKey::SourceIp => f.write_str("source_ip"),
            HashKey::Path => f.write_str("path"),
            HashKey::Header(name) => write!(f, "header:{name}"),
            HashKey::Cookie(name) => write!(f, "cookie:{name}"),
        }
    }
}

impl From<HashKey> for String {
    fn from(key: HashKey) -> String {
        key.to_string()
    }
}

/// True for a valid HTTP token (RFC 9110 §5.6.2): header names and cookie names.
pub fn is_http_token(text: &str) -> bool {
    !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// An active health check, run by every node against every backend of a pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// Time between checks (each node adds up to 10 % jitter).
    #[serde(default = "default_check_interval", with = "crate::duration")]
    pub interval: Duration,
    /// A check not answered within this fails.
    #[serde(default = "default_check_timeout", with = "crate::duration")]
    pub timeout: Duration,
    /// Consecutive successes that mark a down backend up.
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Consecutive failures that mark an up backend down.
    #[serde(default = "default_fall")]
    pub fall: u32,
    /// An HTTP GET to make; without it the check is a TCP connect.
    #[serde(default)]
    pub http: Option<HttpCheck>,
}

fn default_check_interval() -> Duration {
    Duration::from_secs(2)
}
fn default_check_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    3
}

impl Default for HealthCheck {
    fn default() -> HealthCheck {
        HealthCheck {
            interval: default_check_interval(),
            timeout: default_check_timeout(),
            rise: default_rise(),
            fall: default_fall(),
            http: None,
        }
    }
}

/// The HTTP part of a health check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpCheck {
    /// Path to GET, starting with `/`.
    pub path: String,
    /// The status that means healthy.
    #[serde(default = "default_expect_status")]
    pub expect_status: u16,
}

fn default_expect_status() -> u16 {
    200
}

/// An HTTP route: which requests it takes and where they go.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RouteSpec", into = "RouteSpec")]
pub struct Route {
    /// Unique within its listener.
    pub name: Name,
    /// Which requests match; every given condition must hold.
    pub matcher: RouteMatch,
    /// Where matching requests go.
    pub action: RouteAction,
    /// Replace the matched path prefix with this before forwarding.
    pub rewrite_prefix: Option<String>,
    /// Rate-limit policy for this route's requests.
    pub rate_limit: Option<Name>,
    /// Pin each client to one backend with a signed cookie.
    pub sticky: Option<StickyCookie>,
}

/// The conditions of a route; an empty matcher matches every request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteMatch {
    /// The Host (or :authority) without port, compared case-insensitively.
    pub host: Option<String>,
    /// The path condition.
    pub path: Option<PathMatch>,
    /// The request method, e.g. `GET`.
    pub method: Option<String>,
    /// Headers that must be present with exactly these values.
    pub headers: Vec<HeaderMatch>,
}

/// How a route's path is compared.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PathMatch {
    /// The path starts with this.
    Prefix(String),
    /// The path is exactly this.
    Exact(String),
}

/// A header that must be present with a value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    /// Header name (compared case-insensitively).
    pub name: String,
    /// Exact value.
    pub value: String,
}

/// Where a route sends requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RouteAction {
    /// Everything to one pool.
    Pool(Name),
    /// Spread over pools by weight (a canary is a split of 95 and 5).
    Split(Vec<SplitTarget>),
}

/// One pool of a weighted split.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitTarget {
    /// Pool name.
    pub pool: Name,
    /// Relative share.
    pub weight: u32,
}

/// The cookie of a sticky route.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StickyCookie {
    /// Cookie name.
    pub cookie: String,
    /// Cookie lifetime; without one the cookie lasts the browser session.
    #[serde(default, with = "crate::duration::option")]
    pub ttl: Option<Duration>,
}

/// The flat, file form of a [`Route`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteSpec {
    name: Name,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    path_prefix: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    headers: Vec<HeaderMatch>,
    #[serde(default)]
    pool: Option<Name>,
    #[serde(default)]
    split: Option<Vec<SplitTarget>>,
    #[serde(default)]
    rewrite_prefix: Option<String>,
    #[serde(default)]
    rate_limit: Option<Name>,
    #[serde(default)]
    sticky: Option<StickyCookie>,
}

impl TryFrom<RouteSpec> for Route {
    type Error = String;

    fn try_from(spec: RouteSpec) -> Result<Route, String> {
        let path = match (spec.path_prefix, spec.path) {
            (Some(_), Some(_)) => {
                return Err("give `path_prefix` or `path`, not both".to_owned());
            }
            (Some(prefix), None) => Some(PathMatch::Prefix(prefix)),
            (None, Some(exact)) => Some(PathMatch::Exact(exact)),
            (None, None) => None,
        };
        let action = match (spec.pool, spec.split) {
            (Some(pool), None) => RouteAction::Pool(pool),
            (None, Some(split)) => RouteAction::Split(split),
            _ => return Err("give exactly one of `pool` or `split`".to_owned()),
        };
        Ok(Route {
            name: spec.name,
            matcher: RouteMatch {
                host: spec.host,
                path,
                method: spec.method,
                headers: spec.headers,
            },
            action,
            rewrite_prefix: spec.rewrite_prefix,
            rate_limit: spec.rate_limit,
            sticky: spec.sticky,
        })
    }
}

impl From<Route> for RouteSpec {
    fn from(route: Route) -> RouteSpec {
        let (path_prefix, path) = match route.matcher.path {
            Some(PathMatch::Prefix(p)) => (Some(p), None),
            Some(PathMatch::Exact(p)) => (None, Some(p)),
            None => (None, None),
        };
        let (pool, split) = match route.action {
            RouteAction::Pool(pool) => (Some(pool), None),
            RouteAction::Split(split) => (None, Some(split)),
        };
        RouteSpec {
            name: route.name,
            host: route.matcher.host,
            path_prefix,
            path,
            method: route.matcher.method,
            headers: route.matcher.headers,
            pool,
            split,
            rewrite_prefix: route.rewrite_prefix,
            rate_limit: route.rate_limit,
            sticky: route.sticky,
        }
    }
}

/// A named rate limit that listeners and routes refer to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RateLimitSpec", into = "RateLimitSpec")]
pub struct RateLimitPolicy {
    /// Unique among policies.
    pub name: Name,
    /// What each counter is kept per.
    pub key: RateLimitKey,
    /// The limit itself.
    pub limit: RateLimit,
}

/// What a rate-limit counter is kept per.
///
/// Written as `"client_ip"`, `"route"` or `"header:<name>"`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum RateLimitKey {
    /// One counter per client IP address.
    ClientIp,
    /// One counter per value of a request header (lowercase name).
    Header(String),
    /// One counter for the whole route (or listener).
    Route,
}

impl FromStr for RateLimitKey {
    type Err = String;

    fn from_str(text: &str) -> Result<RateLimitKey, String> {
        match text.split_once(':') {
            None if text == "client_ip" => Ok(RateLimitKey::ClientIp),
            None if text == "route" => Ok(RateLimitKey::Route),
            Some(("header", name)) if is_http_token(name) => {
                Ok(RateLimitKey::Header(name.to_ascii_lowercase()))
            }
            _ => Err(format!(
                "invalid key {text:?}: write \"client_ip\", \"route\" or \"header:<name>\""
            )),
        }
    }
}

impl TryFrom<String> for RateLimitKey {
    type Error = String;
    fn try_from(text: String) -> Result<RateLimitKey, String> {
        text.parse()
    }
}

impl fmt::Display for RateLimitKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RateLimitKey::ClientIp => f.write_str("client_ip"),
            RateLimitKey::Route => f.write_str("route"),
            RateLimitKey::Header(name) => write!(f, "header:{name}"),
        }
    }
}

impl From<RateLimitKey> for String {
    fn from(key: RateLimitKey) -> String {
        key.to_string()
    }
}

/// How requests are counted against a limit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum RateLimit {
    /// Bursts up to `capacity`, sustained `refill_per_second`.
    TokenBucket {
        /// Tokens the bucket holds: the largest burst.
        capacity: u32,
        /// Tokens added per second: the sustained rate.
        refill_per_second: f64,
    },
    /// At most `limit` requests in any `window` (sliding-window counter).
    SlidingWindow {
        /// Requests allowed per window.
        limit: u32,
        /// Window length.
        window: Duration,
    },
}

/// The flat, file form of a [`RateLimitPolicy`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitSpec {
    name: Name,
    kind: RateLimitKind,
    key: RateLimitKey,
    #[serde(default)]
    capacity: Option<u32>,
    #[serde(default)]
    refill_per_second: Option<f64>,
    #[serde(default)]
    limit: Option<u32>,
    #[serde(default, with = "crate::duration::option")]
    window: Option<Duration>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RateLimitKind {
    TokenBucket,
    SlidingWindow,
}

impl TryFrom<RateLimitSpec> for RateLimitPolicy {
    type Error = String;

    fn try_from(spec: RateLimitSpec) -> Result<RateLimitPolicy, String> {
        let missing = |field: &str| format!("`{field}` is required");
        let stray =
            |field: &str, kind: &str| format!("unknown parameter `{field}` for kind {kind}");
        let limit = match spec.kind {
            RateLimitKind::TokenBucket => {
                if spec.limit.is_some() {
                    return Err(stray("limit", "token_bucket"));
                }
                if spec.window.is_some() {
                    return Err(stray("window", "token_bucket"));
                }
                RateLimit::TokenBucket {
                    capacity: spec.capacity.ok_or_else(|| missing("capacity"))?,
                    refill_per_second: spec
                        .refill_per_second
                        .ok_or_else(|| missing("refill_per_second"))?,
                }
            }
            RateLimitKind::SlidingWindow => {
                if spec.capacity.is_some() {
                    return Err(stray("capacity", "sliding_window"));
                }
                if spec.refill_per_second.is_some() {
                    return Err(stray("refill_per_second", "sliding_window"));
                }
                RateLimit::SlidingWindow {
                    limit: spec.limit.ok_or_else(|| missing("limit"))?,
                    window: spec.window.ok_or_else(|| missing("window"))?,
                }
            }
        };
        Ok(RateLimitPolicy { name: spec.name, key: spec.key, limit })
    }
}

impl From<RateLimitPolicy> for RateLimitSpec {
    fn from(policy: RateLimitPolicy) -> RateLimitSpec {
        let base = RateLimitSpec {
            name: policy.name,
            kind: RateLimitKind::TokenBucket,
            key: policy.key,
            capacity: None,
            refill_per_second: None,
            limit: None,
            window: None,
        };
        match policy.limit {
            RateLimit::TokenBucket { capacity, refill_per_second } => RateLimitSpec {
                capacity: Some(capacity),
                refill_per_second: Some(refill_per_second),
                ..base
            },
            RateLimit::SlidingWindow { limit, window } => RateLimitSpec {
                kind: RateLimitKind::SlidingWindow,
                limit: Some(limit),
                window: Some(window),
                ..base
            },
        }
    }
}
