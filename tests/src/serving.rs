//! fulcrumd serving traffic in the lab: a node started with a cluster file (re-read on
//! SIGHUP) and optionally VRRP, its `/metrics` read from inside the lab, and a `/slow`
//! download through it checked byte for byte.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use nix::sys::signal::Signal;
use tokio::net::TcpStream;

use crate::backend::{SLOW_CHUNKS_PER_SECOND, slow_chunk};
use crate::process::LabProcess;
use crate::routers::{Instance, fulcrumd_binary, fulcrumd_node_file};
use crate::{Host, Lab, LabError};

/// Port of each serving node's metrics endpoint.
pub const METRICS_PORT: u16 = 9100;
/// How long a node may take to apply a re-read cluster file.
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// A fulcrumd serving a cluster file.
pub struct ServingNode {
    /// The process.
    pub process: LabProcess,
    /// The host it runs on.
    pub host: Host,
    cluster_file: PathBuf,
}

impl Lab {
    /// Starts fulcrumd on `host` serving `cluster_file` (TOML) and running the VRRP
    /// `instances`, with metrics on [`METRICS_PORT`], and waits until it has applied the file.
    pub fn start_serving_node(
        &self,
        host: &Host,
        cluster_file: &str,
        instances: &[Instance],
    ) -> Result<ServingNode, LabError> {
        let dir = self.log_dir();
        let write = |name: String, text: &str| -> Result<PathBuf, LabError> {
            let path = dir.join(name);
            std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, text)).map_err(
                |source| LabError::Io { what: format!("write {}", path.display()), source },
            )?;
            Ok(path)
        };
        let node_file = format!(
            "metrics_listen = \"{}:{METRICS_PORT}\"\nshutdown_drain = \"5s\"\n{}",
            host.address,
            fulcrumd_node_file(u64::from(host.address.octets()[3]), instances)
        );
        let node_path = write(format!("{}-node.toml", host.name), &node_file)?;
        let cluster_path = write(format!("{}-cluster.toml", host.name), cluster_file)?;
        let args = vec![
            "--config".to_owned(),
            node_path.display().to_string(),
            "--cluster-file".to_owned(),
            cluster_path.display().to_string(),
        ];
        let label = format!("fulcrumd on {}", host.name);
        let mut process = self.spawn(host, &label, &fulcrumd_binary()?, &args)?;
        process.wait_for(
            "its start message",
            |line| line.contains("fulcrumd running"),
            APPLY_TIMEOUT,
        )?;
        Ok(ServingNode { process, host: host.clone(), cluster_file: cluster_path })
    }
}

impl ServingNode {
    /// Replaces the cluster file, sends SIGHUP and waits until the node has applied it.
    pub fn reload(&mut self, cluster_file: &str) -> Result<(), LabError> {
        std::fs::write(&self.cluster_file, cluster_file).map_err(|source| LabError::Io {
            what: format!("write {}", self.cluster_file.display()),
            source,
        })?;
        self.process.signal(Signal::SIGHUP)?;
        let line = self.process.wait_for(
            "a new configuration applied (or refused)",
            |line| line.contains("configuration applied") || line.contains("unchanged"),
            APPLY_TIMEOUT,
        )?;
        if line.contains("unchanged") {
            return Err(LabError::Invalid(format!("fulcrumd refused the cluster file: {line}")));
        }
        Ok(())
    }

    /// The node's metrics, read from inside its namespace.
    pub fn metrics(&self) -> Result<String, LabError> {
        let address = SocketAddr::from((self.host.address, METRICS_PORT));
        crate::netns::run_in(&self.host.namespace, || fetch_metrics(address, None))?.map_err(
            |source| LabError::Io { what: format!("GET http://{address}/metrics"), source },
        )
    }
}

/// `GET /metrics` at `address` (with a bearer `token` for the admin API): the body of a 200.
pub fn fetch_metrics(address: SocketAddr, token: Option<&str>) -> std::io::Result<String> {
    metrics_over(connect(address)?, token)
}

/// [`fetch_metrics`] over TLS, trusting only the CA in the PEM file `ca` for the server's
/// address.
pub fn fetch_metrics_tls(
    address: SocketAddr,
    token: Option<&str>,
    ca: &std::path::Path,
) -> std::io::Result<String> {
    metrics_over(tls_connect(address, ca)?, token)
}

/// A TLS connection to `address`, trusting only the CA in the PEM file `ca` for the server's
/// address.
pub fn tls_connect(
    address: SocketAddr,
    ca: &std::path::Path,
) -> std::io::Result<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>> {
    tls_over(connect(address)?, address, &tls_client_config(ca, None)?)
}

/// A TLS client's settings trusting only the CA in the PEM file `ca`, presenting the
/// certificate and key in the PEM files `identity` if given.
pub fn tls_client_config(
    ca: &std::path::Path,
    identity: Option<(&std::path::Path, &std::path::Path)>,
) -> std::io::Result<std::sync::Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in fulcrum_raft_store::tls::load_certificates(ca).map_err(std::io::Error::other)? {
        roots.add(cert).map_err(std::io::Error::other)?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => {
            let chain =
                fulcrum_raft_store::tls::load_certificates(cert).map_err(std::io::Error::other)?;
            let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key)
                .map_err(std::io::Error::other)?;
            builder.with_client_auth_cert(chain, key).map_err(std::io::Error::other)?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(std::sync::Arc::new(config))
}

/// TLS over `stream`, connected to `address`, with the client settings `config`; the
/// handshake happens on first use.
pub fn tls_over(
    stream: std::net::TcpStream,
    address: SocketAddr,
    config: &std::sync::Arc<rustls::ClientConfig>,
) -> std::io::Result<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>> {
    let name = rustls::pki_types::ServerName::IpAddress(address.ip().into());
    let connection = rustls::ClientConnection::new(std::sync::Arc::clone(config), name)
        .map_err(std::io::Error::other)?;
    Ok(rustls::StreamOwned::new(connection, stream))
}

/// The body of `GET path` over HTTPS (HTTP/1.1, `Connection: close`) from `address`,
/// trusting only the CA in `ca`; an answer other than 200 is an error.
pub fn https_get(address: SocketAddr, ca: &std::path::Path, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut tls = tls_connect(address, ca)?;
    write!(tls, "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")?;
    let mut answer = Vec::new();
    // A server that closes without close_notify still gave its whole answer.
    if let Err(error) = tls.read_to_end(&mut answer)
        && error.kind() != std::io::ErrorKind::UnexpectedEof
    {
        return Err(error);
    }
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    if !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!(
            "GET {path}: {}",
            head.lines().next().unwrap_or("")
        )));
    }
    Ok(body.to_owned())
}

fn connect(address: SocketAddr) -> std::io::Result<std::net::TcpStream> {
    let stream = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok(stream)
}

fn metrics_over(
    stream: impl std::io::Read + std::io::Write,
    token: Option<&str>,
) -> std::io::Result<String> {
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let response = exchange(stream, format!("GET /metrics HTTP/1.0\r\n{auth}\r\n").as_bytes())?;
    match response.split_once("\r\n\r\n") {
        Some((head, body))
            if head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200") =>
        {
            Ok(body.to_owned())
        }
        _ => Err(std::io::Error::other(format!("unexpected answer: {response:.200}"))),
    }
}

/// Sends `request` (which asks the server to close) and reads the whole answer.
pub fn exchange(
    mut stream: impl std::io::Read + std::io::Write,
    request: &[u8],
) -> std::io::Result<String> {
    stream.write_all(request)?;
    stream.flush()?;
    let mut response = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&buffer[..n]),
            // A TLS peer that closes without close_notify: the answer is complete anyway.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !response.is_empty() => {
                break;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(String::from_utf8_lossy(&response).into_owned())
}

/// Sends `lines` numbered lines to a TCP echo server at `address`, `spacing` apart, on one
/// connection, and checks each echo; every read must finish within `read_timeout`. Returns
/// how many lines came back, or which line failed and how (with the `io::ErrorKind`).
pub async fn echo_session(
    address: SocketAddr,
    lines: usize,
    spacing: Duration,
    read_timeout: Duration,
) -> Result<usize, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream =
        TcpStream::connect(address).await.map_err(|e| format!("connect: {:?}", e.kind()))?;
    for n in 0..lines {
        let line = format!("echo session line {n}\n");
        stream
            .write_all(line.as_bytes())
            .await
            .map_err(|e| format!("line {n}: write: {:?}", e.kind()))?;
        let mut echoed = vec![0; line.len()];
        match tokio::time::timeout(read_timeout, stream.read_exact(&mut echoed)).await {
            Ok(Ok(_)) if echoed == line.as_bytes() => {}
            Ok(Ok(_)) => {
                return Err(format!("line {n}: echoed {:?}", String::from_utf8_lossy(&echoed)));
            }
            Ok(Err(e)) => return Err(format!("line {n}: read: {:?}", e.kind())),
            Err(_) => return Err(format!("line {n}: read: no echo within {read_timeout:?}")),
        }
        tokio::time::sleep(spacing).await;
    }
    Ok(lines)
}

/// The value of the sample `name{labels}` in a metrics text, when present.
pub fn metric(text: &str, name: &str, labels: &str) -> Option<f64> {
    let key = format!("{name}{{{labels}}} ");
    text.lines().find_map(|line| line.strip_prefix(&key)).and_then(|value| value.parse().ok())
}

/// What a `/slow` download received.
#[derive(Debug)]
pub struct Download {
    /// The backend that served it (its `x-backend` header).
    pub backend: String,
    /// Bytes received, every one as the backend sent it.
    pub bytes: usize,
}

/// Downloads `/slow?secs=N` from `address` and checks every byte against what the backend
/// named in `x-backend` sends; an error says what differed or failed.
pub async fn download_slow(address: SocketAddr, secs: u64) -> Result<Download, String> {
    let stream = TcpStream::connect(address).await.map_err(|e| format!("connect: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(connection);
    let request = hyper::Request::get(format!("/slow?secs={secs}"))
        .header(hyper::header::HOST, address.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let response = sender.send_request(request).await.map_err(|e| format!("request: {e}"))?;
    let backend = response
        .headers()
        .get("x-backend")
        .and_then(|v| v.to_str().ok())
        .ok_or("no x-backend header")?
        .to_owned();
    let mut body = response.into_body();
    let mut received = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("body cut after {} bytes: {e}", received.len()))?;
        if let Ok(data) = frame.into_data() {
            received.extend_from_slice(&data);
        }
    }
    let expected: Vec<u8> =
        (0..secs * SLOW_CHUNKS_PER_SECOND).flat_map(|i| slow_chunk(&backend, i)).collect();
    if received != expected {
        let at = received
            .iter()
            .zip(&expected)
            .position(|(a, b)| a != b)
            .unwrap_or(received.len().min(expected.len()));
        return Err(format!(
            "{} bytes received, {} expected; first difference at byte {at}",
            received.len(),
            expected.len()
        ));
    }
    Ok(Download { backend, bytes: received.len() })
}
