//! The admin API over HTTP/1.1, plain or TLS (trusting only the CA file given): the bearer token, the audit and idempotency headers,
//! failover to the next endpoint when one cannot be reached, and error answers turned into
//! messages a person can act on and the exit codes scripts test.
//!
//! Only an endpoint that gives no answer (refused, unreachable, timed out, cut off) makes the
//! client try the next one; an HTTP error status is the cluster's answer and ends the call.
//! Retrying a write elsewhere is safe because it carries the same idempotency key, which the
//! server applies once.

use std::cell::Cell;
use std::error::Error as StdError;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use fulcrum_model::Revision;
use fulcrum_model::api::{ErrorBody, HEADER_ACTOR, Propagation};
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::exit::{Exit, Failure};
use crate::output;
use crate::settings::Endpoint;

/// The header that makes a retried write apply once.
pub(crate) const HEADER_IDEMPOTENCY_KEY: &str = "idempotency-key";

/// A request body.
#[derive(Clone, Debug)]
pub(crate) enum Body {
    /// No body.
    Empty,
    /// A JSON document.
    Json(Bytes),
    /// A cluster file.
    Toml(Bytes),
}

impl Body {
    /// `value` as JSON.
    pub(crate) fn json<T: Serialize>(value: &T) -> anyhow::Result<Body> {
        let bytes = serde_json::to_vec(value).context("cannot write the request as JSON")?;
        Ok(Body::Json(Bytes::from(bytes)))
    }

    fn content_type(&self) -> Option<&'static str> {
        match self {
            Body::Empty => None,
            Body::Json(_) => Some("application/json"),
            Body::Toml(_) => Some("application/toml"),
        }
    }

    fn bytes(&self) -> Bytes {
        match self {
            Body::Empty => Bytes::new(),
            Body::Json(bytes) | Body::Toml(bytes) => bytes.clone(),
        }
    }
}

/// A client of one cluster, for one command.
pub(crate) struct Client {
    endpoints: Vec<Endpoint>,
    authorization: HeaderValue,
    actor: HeaderValue,
    timeout: Duration,
    http: HttpClient<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// The endpoint that answered last: the command's next call starts there rather than
    /// waiting again on one that is down.
    current: Cell<usize>,
}

/// An answer, whatever its status.
struct Answer {
    status: StatusCode,
    body: Bytes,
    endpoint: Endpoint,
}

/// The TLS settings of https endpoints: only the CA in `ca_file` is trusted (none without
/// one; then only http endpoints are given, which settings checks).
fn tls_config(ca_file: Option<&Path>) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(path) = ca_file {
        let unusable = |problem: String| {
            Failure::new(Exit::Usage, format!("--ca-file {}: {problem}", path.display()))
        };
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| unusable(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| unusable(e.to_string()))?;
        if certs.is_empty() {
            return Err(unusable("no PEM certificate in it".into()).into());
        }
        for cert in certs {
            roots.add(cert).map_err(|e| unusable(e.to_string()))?;
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("the TLS provider offers no protocol version")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// The largest answer read: a status or configuration of thousands of objects fits.
const MAX_ANSWER_BYTES: usize = 64 << 20;

/// How long connecting to one endpoint may take before the next one is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

impl Client {
    /// A client trying `endpoints` in order, each request for at most `timeout`; `actor`
    /// names the person in the audit log of writes; https endpoints are trusted if the CA in
    /// `ca_file` signed their certificate.
    pub(crate) fn new(
        endpoints: Vec<Endpoint>,
        token: &str,
        actor: &str,
        timeout: Duration,
        ca_file: Option<&Path>,
    ) -> anyhow::Result<Client> {
        let mut authorization =
            HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                Failure::new(
                    Exit::Usage,
                    "the token holds characters an HTTP header cannot carry: check --token / \
                 FULCRUM_TOKEN",
                )
            })?;
        authorization.set_sensitive(true);
        // The audit log is best effort about names: an odd $USER must not stop a change.
        let actor =
            HeaderValue::from_str(actor).unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        // A node that is down (no answer to the SYN) is given up on quickly, so the next
        // endpoint gets its turn; a slow answer from a live node gets the whole timeout.
        connector.set_connect_timeout(Some(timeout.min(CONNECT_TIMEOUT)));
        connector.enforce_http(false);
        let tls = HttpsConnectorBuilder::new()
            .with_tls_config(tls_config(ca_file)?)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let http = HttpClient::builder(TokioExecutor::new()).build(tls);
        Ok(Client { endpoints, authorization, actor, timeout, http, current: Cell::new(0) })
    }

    /// GETs `path` and decodes its JSON answer.
    pub(crate) async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let answer = self.send(&Method::GET, path, &Body::Empty, None, self.timeout).await?;
        answer.decode(&Method::GET, path)
    }

    /// Sends a write with a fresh idempotency key and decodes its JSON answer.
    pub(crate) async fn write<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Body,
    ) -> anyhow::Result<T> {
        let key = idempotency_key();
        let answer = self.send(&method, path, &body, Some(&key), self.timeout).await?;
        answer.decode(&method, path)
    }

    /// Waits up to `wait` for every member to apply `revision`; an incomplete
    /// [`Propagation`] is an answer, not an error.
    pub(crate) async fn wait(
        &self,
        revision: Revision,
        wait: Duration,
    ) -> anyhow::Result<Propagation> {
        // Milliseconds, because humantime's "1m 30s" would need escaping in a query.
        let path = format!("/v1/revisions/{revision}/wait?timeout={}ms", wait.as_millis());
        // The server answers when `wait` is up, so the request may take that long and more.
        let answer =
            self.send(&Method::GET, &path, &Body::Empty, None, wait + self.timeout).await?;
        if answer.status == StatusCode::GATEWAY_TIMEOUT
            && let Ok(propagation) = serde_json::from_slice::<Propagation>(&answer.body)
        {
            return Ok(propagation);
        }
        answer.decode(&Method::GET, &path)
    }

    /// Sends the request to each endpoint in turn until one answers.
    async fn send(
        &self,
        method: &Method,
        path: &str,
        body: &Body,
        key: Option<&str>,
        timeout: Duration,
    ) -> anyhow::Result<Answer> {
        let count = self.endpoints.len();
        let first = self.current.get();
        let mut failures = Vec::new();
        for index in (0..count).map(|i| (first + i) % count) {
            let endpoint = &self.endpoints[index];
            let request = self.request(method, endpoint, path, body, key)?;
            match tokio::time::timeout(timeout, self.exchange(request)).await {
                Ok(Ok((status, body))) => {
                    self.current.set(index);
                    return Ok(Answer { status, body, endpoint: endpoint.clone() });
                }
                Ok(Err(reason)) => failures.push(format!("{endpoint}: {reason}")),
                Err(_) => failures
                    .push(format!("{endpoint}: no answer within {}", output::duration(timeout))),
            }
        }
        Err(Failure::new(
            Exit::Unreachable,
            format!(
                "no endpoint reachable for {method} {path}:\n  {}\nhint: check --endpoint / \
                 FULCRUM_ENDPOINTS and that fulcrumd runs there (a slow cluster may need a \
                 longer --timeout)",
                failures.join("\n  ")
            ),
        )
        .into())
    }

    fn request(
        &self,
        method: &Method,
        endpoint: &Endpoint,
        path: &str,
        body: &Body,
        key: Option<&str>,
    ) -> anyhow::Result<Request<Full<Bytes>>> {
        let mut builder = Request::builder()
            .method(method.clone())
            .uri(endpoint.url(path))
            .header(AUTHORIZATION, self.authorization.clone())
            .header(ACCEPT, "application/json");
        if let Some(key) = key {
            builder = builder
                .header(HEADER_ACTOR, self.actor.clone())
                .header(HEADER_IDEMPOTENCY_KEY, key);
        }
        if let Some(content_type) = body.content_type() {
            builder = builder.header(CONTENT_TYPE, content_type);
        }
        builder
            .body(Full::new(body.bytes()))
            .with_context(|| format!("cannot build the request {method} {}", endpoint.url(path)))
    }

    /// One request and its whole answer; `Err` says why there is none.
    async fn exchange(&self, request: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), String> {
        let response = self.http.request(request).await.map_err(|e| match e.source() {
            // hyper's own words ("client error (Connect)") add nothing to the cause.
            Some(cause) if e.is_connect() => format!("cannot connect: {}", describe(cause)),
            _ => describe(&e),
        })?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| format!("the answer was cut short: {}", describe(e.as_ref())))?;
        Ok((status, body.to_bytes()))
    }
}

impl Answer {
    /// The JSON body of a successful answer, or the error it stands for.
    fn decode<T: DeserializeOwned>(self, method: &Method, path: &str) -> anyhow::Result<T> {
        if !self.status.is_success() {
            return Err(self.refusal(method, path).into());
        }
        serde_json::from_slice(&self.body).map_err(|e| {
            anyhow::anyhow!(
                "{} answered {method} {path} with JSON fulcrumctl does not understand ({e}); are \
                 fulcrumctl and fulcrumd the same version?",
                self.endpoint
            )
        })
    }

    /// The failure an error status stands for, with the server's reason and a hint.
    fn refusal(&self, method: &Method, path: &str) -> Failure {
        let (error, hint) = match serde_json::from_slice::<ErrorBody>(&self.body) {
            Ok(body) => (body.error, body.hint),
            // Not ours (a proxy, a crash page): show what came.
            Err(_) => (excerpt(&self.body), None),
        };
        let mut message =
            format!("{method} {path}: {} answered {}: {error}", self.endpoint, self.status);
        if let Some(hint) = hint.or_else(|| default_hint(self.status)) {
            message.push_str("\nhint: ");
            message.push_str(&hint);
        }
        Failure::new(Exit::for_status(self.status), message)
    }
}

/// What to do about an error status when the server gave no hint.
fn default_hint(status: StatusCode) -> Option<String> {
    let hint = match status {
        StatusCode::UNAUTHORIZED => {
            "check --token / FULCRUM_TOKEN (or `token` / `token_file` in the config file)"
        }
        StatusCode::FORBIDDEN => "this token may not do that: use one that may",
        s if s.is_server_error() => {
            "the cluster may be electing a leader or short of a quorum: check `fulcrumctl \
             status`, then retry"
        }
        _ => return None,
    };
    Some(hint.to_owned())
}

/// The start of a body that is not JSON, as text.
fn excerpt(body: &[u8]) -> String {
    const MAX_CHARS: usize = 300;
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(empty answer)".to_owned();
    }
    let mut short: String = text.chars().take(MAX_CHARS).collect();
    if short.len() < text.len() {
        short.push_str("...");
    }
    short
}

/// An error and its causes on one line: hyper's own message alone says little.
fn describe(error: &(dyn StdError + 'static)) -> String {
    let mut parts = vec![error.to_string()];
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !parts.iter().any(|part| part.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    parts.join(": ")
}

/// A fresh idempotency key: 128 random bits as 32 lowercase hex digits. What matters is that
/// two commands never share one, not secrecy, so fastrand's per-process seeding is enough.
pub(crate) fn idempotency_key() -> String {
    format!("{:032x}", fastrand::u128(..))
}

/// `text` as one path segment: bytes outside RFC 3986's `pchar` are percent-encoded, so an
/// IPv6 backend `[2001:db8::1]:80` travels as `%5B2001:db8::1%5D:80` while names and IPv4
/// addresses go as they are.
pub(crate) fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use fulcrum_model::api::Written;
    use hyper::body::Incoming;
    use hyper::header::HeaderMap;
    use hyper::service::service_fn;
    use hyper::{Response, Uri};
    use hyper_util::rt::TokioIo;

    use super::*;

    /// What a test server answers.
    #[derive(Clone, Copy)]
    enum Reply {
        Json(u16, &'static str),
        Text(u16, &'static str),
        /// Takes the request and never answers.
        Hang,
    }

    /// A request a test server took.
    struct Seen {
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    }

    type Log = Arc<Mutex<Vec<Seen>>>;

    /// A server on 127.0.0.1 answering every request with `reply` and logging it.
    async fn server(reply: Reply) -> (Endpoint, Log) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let log = Log::default();
        let seen = log.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = seen.clone();
                let service = service_fn(move |request: Request<Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let (parts, body) = request.into_parts();
                        let body = body.collect().await?.to_bytes();
                        seen.lock().unwrap().push(Seen {
                            method: parts.method,
                            uri: parts.uri,
                            headers: parts.headers,
                            body,
                        });
                        let (status, content_type, text) = match reply {
                            Reply::Json(status, text) => (status, "application/json", text),
                            Reply::Text(status, text) => (status, "text/plain", text),
                            Reply::Hang => std::future::pending().await,
                        };
                        let response = Response::builder()
                            .status(status)
                            .header(CONTENT_TYPE, content_type)
                            .body(Full::new(Bytes::from_static(text.as_bytes())))
                            .unwrap();
                        Ok::<_, hyper::Error>(response)
                    }
                });
                tokio::spawn(async move {
                    let connection = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service);
                    let _ = connection.await;
                });
            }
        });
        (Endpoint::parse(&address.to_string()).unwrap(), log)
    }

    /// An address nothing listens on: connecting is refused.
    fn refused() -> Endpoint {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        Endpoint::parse(&address.to_string()).unwrap()
    }

    fn client(endpoints: Vec<Endpoint>, timeout: Duration) -> Client {
        Client::new(endpoints, "s3cret", "alice", timeout, None).unwrap()
    }

    fn header<'a>(seen: &'a Seen, name: &str) -> Option<&'a str> {
        seen.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn is_key(text: &str) -> bool {
        text.len() == 32 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }

    #[test]
    fn idempotency_keys_are_32_lowercase_hex_and_fresh() {
        let keys: Vec<String> = (0..100).map(|_| idempotency_key()).collect();
        assert!(keys.iter().all(|k| is_key(k)), "{keys:?}");
        let mut unique = keys.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), keys.len());
    }

    #[test]
    fn segments_encode_only_what_a_path_cannot_carry() {
        assert_eq!(segment("web-canary.eu_1"), "web-canary.eu_1");
        assert_eq!(segment("198.18.0.21:8080"), "198.18.0.21:8080");
        assert_eq!(segment("[2001:db8::1]:8080"), "%5B2001:db8::1%5D:8080");
        assert_eq!(segment("a/b c%"), "a%2Fb%20c%25");
    }

    #[tokio::test]
    async fn a_refused_endpoint_fails_over_and_writes_carry_every_header() {
        let (good, log) = server(Reply::Json(200, r#"{"revision":7}"#)).await;
        let client = client(vec![refused(), good], Duration::from_secs(5));
        let body = Body::json(&serde_json::json!({"name": "web"})).unwrap();
        let written: Written = client.write(Method::PUT, "/v1/pools/web", body).await.unwrap();
        assert_eq!(written.revision, 7);

        let log = log.lock().unwrap();
        let [seen] = log.as_slice() else { panic!("{} requests", log.len()) };
        assert_eq!(seen.method, Method::PUT);
        assert_eq!(seen.uri.path(), "/v1/pools/web");
        assert_eq!(header(seen, "authorization"), Some("Bearer s3cret"));
        assert_eq!(header(seen, HEADER_ACTOR), Some("alice"));
        assert!(is_key(header(seen, "idempotency-key").unwrap()));
        assert_eq!(header(seen, "content-type"), Some("application/json"));
        assert_eq!(&seen.body[..], br#"{"name":"web"}"#);
    }

    #[tokio::test]
    async fn reads_carry_the_token_but_no_write_headers() {
        let (good, log) = server(Reply::Json(200, r#"{"members":[]}"#)).await;
        let client = client(vec![good], Duration::from_secs(5));
        let members: fulcrum_model::api::Members = client.get("/v1/members").await.unwrap();
        assert!(members.members.is_empty());
        let log = log.lock().unwrap();
        assert_eq!(header(&log[0], "authorization"), Some("Bearer s3cret"));
        assert_eq!(header(&log[0], "idempotency-key"), None);
        assert_eq!(header(&log[0], HEADER_ACTOR), None);
    }

    #[tokio::test]
    async fn a_write_retried_at_the_next_endpoint_keeps_its_key() {
        let (hanging, hung) = server(Reply::Hang).await;
        let (good, answered) = server(Reply::Json(200, r#"{"revision":3}"#)).await;
        let client = client(vec![hanging, good], Duration::from_millis(300));
        let body = Body::Toml(Bytes::from_static(b"[[pools]]\nname = \"web\"\n"));
        let _: Written = client.write(Method::POST, "/v1/config", body).await.unwrap();
        let first_key = {
            let (hung, answered) = (hung.lock().unwrap(), answered.lock().unwrap());
            assert_eq!((hung.len(), answered.len()), (1, 1));
            let key = header(&hung[0], "idempotency-key").unwrap().to_owned();
            assert_eq!(header(&answered[0], "idempotency-key"), Some(key.as_str()));
            assert_eq!(header(&answered[0], "content-type"), Some("application/toml"));
            key
        };

        // The next write is another change, so another key; and it goes straight to the
        // endpoint that answered, not to the one that hung.
        let _: Written = client.write(Method::DELETE, "/v1/pools/web", Body::Empty).await.unwrap();
        assert_eq!(hung.lock().unwrap().len(), 1);
        let answered = answered.lock().unwrap();
        assert_eq!(answered.len(), 2);
        assert_ne!(header(&answered[1], "idempotency-key"), Some(first_key.as_str()));
    }

    #[tokio::test]
    async fn an_error_status_is_the_answer_and_is_not_retried() {
        let (refusing, _) = server(Reply::Json(
            404,
            r#"{"error":"no pool named 'web'","hint":"fulcrumctl pool list shows the pools"}"#,
        ))
        .await;
        let (good, answered) = server(Reply::Json(200, r#"{"revision":1}"#)).await;
        let client = client(vec![refusing, good], Duration::from_secs(5));
        let error = client
            .write::<Written>(Method::DELETE, "/v1/pools/web", Body::Empty)
            .await
            .unwrap_err();
        assert_eq!(Exit::of(&error), Exit::Refused);
        let message = error.to_string();
        assert!(message.contains("404 Not Found: no pool named 'web'"), "{message}");
        assert!(message.contains("hint: fulcrumctl pool list shows the pools"), "{message}");
        assert!(answered.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_bad_token_says_which_flag_to_check() {
        let (server, _) = server(Reply::Json(401, r#"{"error":"bad token"}"#)).await;
        let error = client(vec![server], Duration::from_secs(5))
            .get::<Written>("/v1/config")
            .await
            .unwrap_err();
        assert_eq!(Exit::of(&error), Exit::Refused);
        assert!(error.to_string().contains("check --token / FULCRUM_TOKEN"), "{error}");
    }

    #[tokio::test]
    async fn an_answer_that_is_not_json_shows_status_and_text() {
        let (proxy, _) = server(Reply::Text(502, "upstream went away\n")).await;
        let error = client(vec![proxy], Duration::from_secs(5))
            .get::<Written>("/v1/status")
            .await
            .unwrap_err();
        assert_eq!(Exit::of(&error), Exit::Unavailable);
        assert!(error.to_string().contains("502 Bad Gateway: upstream went away"), "{error}");

        let (odd, _) = server(Reply::Text(200, "hello")).await;
        let error = client(vec![odd], Duration::from_secs(5))
            .get::<Written>("/v1/status")
            .await
            .unwrap_err();
        assert_eq!(Exit::of(&error), Exit::Other);
        assert!(error.to_string().contains("does not understand"), "{error}");
    }

    #[tokio::test]
    async fn no_endpoint_reachable_names_each_one() {
        let (first, second) = (refused(), refused());
        let error = client(vec![first.clone(), second.clone()], Duration::from_secs(5))
            .get::<Written>("/v1/status")
            .await
            .unwrap_err();
        assert_eq!(Exit::of(&error), Exit::Unreachable);
        let message = error.to_string();
        assert!(message.contains(&first.to_string()), "{message}");
        assert!(message.contains(&second.to_string()), "{message}");
    }

    #[tokio::test]
    async fn an_incomplete_propagation_is_an_answer() {
        let body = r#"{"revision":12,"complete":false,"applied":[[1,12],[2,null]]}"#;
        let (server, log) = server(Reply::Json(504, body)).await;
        let propagation = client(vec![server], Duration::from_secs(5))
            .wait(12, Duration::from_millis(1500))
            .await
            .unwrap();
        assert!(!propagation.complete);
        assert_eq!(propagation.applied, vec![(1, Some(12)), (2, None)]);
        let log = log.lock().unwrap();
        assert_eq!(log[0].uri.to_string(), "/v1/revisions/12/wait?timeout=1500ms");
    }
}
