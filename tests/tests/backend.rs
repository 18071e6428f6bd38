//! The lab backend on loopback: every route, over HTTP/1.1 and h2c, and the TCP echo server.
//! These need no root.

#![allow(clippy::unwrap_used)] // In a test, a panic is the failure report.

use std::net::SocketAddr;

use bytes::Bytes;
use fulcrum_lab::backend::{Backend, SLOW_CHUNK_BYTES, slow_chunk};
use http_body_util::{BodyExt, Empty, Full};
use hyper::http::response::Parts;
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn start(name: &str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(Backend::new(name).serve_http(listener));
    address
}

/// One HTTP/1.1 request on a new connection: the response head and whole body.
async fn exchange(
    address: SocketAddr,
    method: &str,
    path: &str,
    body: &'static [u8],
) -> (Parts, Bytes) {
    let stream = TcpStream::connect(address).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "lab")
        .body(Full::new(Bytes::from_static(body)))
        .unwrap();
    let (head, body) = sender.send_request(request).await.unwrap().into_parts();
    (head, body.collect().await.unwrap().to_bytes())
}

/// One HTTP/1.1 request on a new connection: status, `x-backend`, body.
async fn request(
    address: SocketAddr,
    method: &str,
    path: &str,
    body: &'static [u8],
) -> (StatusCode, String, Bytes) {
    let (head, body) = exchange(address, method, path, body).await;
    let backend = head.headers["x-backend"].to_str().unwrap().to_owned();
    (head.status, backend, body)
}

#[tokio::test]
async fn answers_with_its_name() {
    let address = start("be7").await;
    let (status, backend, body) = request(address, "GET", "/anything", b"").await;
    assert_eq!((status, backend.as_str(), &body[..]), (StatusCode::OK, "be7", &b"be7\n"[..]));
}

#[tokio::test]
async fn health_can_be_switched_down_and_up() {
    let address = start("be1").await;
    assert_eq!(request(address, "GET", "/health", b"").await.0, StatusCode::OK);
    assert_eq!(request(address, "POST", "/health/down", b"").await.0, StatusCode::OK);
    assert_eq!(request(address, "GET", "/health", b"").await.0, StatusCode::SERVICE_UNAVAILABLE);
    // Other routes keep answering: only the health check is failed.
    assert_eq!(request(address, "GET", "/", b"").await.0, StatusCode::OK);
    request(address, "POST", "/health/up", b"").await;
    assert_eq!(request(address, "GET", "/health", b"").await.0, StatusCode::OK);
}

#[tokio::test]
async fn slow_streams_numbered_chunks_with_a_content_length() {
    let address = start("be2").await;
    let (head, body) = exchange(address, "GET", "/slow?secs=1", b"").await;
    assert_eq!(head.headers["content-length"], (10 * SLOW_CHUNK_BYTES).to_string().as_str());
    let expected: Vec<u8> = (0..10).flat_map(|i| slow_chunk("be2", i)).collect();
    assert_eq!(body, expected);
}

#[tokio::test]
async fn slow_rejects_a_bad_or_unbounded_duration() {
    let address = start("be2").await;
    assert_eq!(request(address, "GET", "/slow?secs=soon", b"").await.0, StatusCode::BAD_REQUEST);
    assert_eq!(request(address, "GET", "/slow?secs=100000", b"").await.0, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn echo_returns_the_body() {
    let address = start("be3").await;
    let (status, _, body) = request(address, "POST", "/echo", b"hello through fulcrum").await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"hello through fulcrum"[..]));
}

#[tokio::test]
async fn speaks_h2c_with_prior_knowledge() {
    let address = start("be4").await;
    let stream = TcpStream::connect(address).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = Request::get(format!("http://{address}/")).body(Empty::<Bytes>::new()).unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.version(), hyper::Version::HTTP_2);
    assert_eq!(response.headers()["x-backend"], "be4");
}

#[tokio::test]
async fn tcp_echo_returns_every_byte() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(Backend::serve_echo(listener));
    let mut stream = TcpStream::connect(address).await.unwrap();
    let sent: Vec<u8> = (0..=255u8).cycle().take(256 * 1024).collect();
    let (mut reader, mut writer) = stream.split();
    let write = async {
        writer.write_all(&sent).await.unwrap();
        writer.shutdown().await.unwrap();
    };
    let mut received = Vec::new();
    let read = reader.read_to_end(&mut received);
    let (_, read) = tokio::join!(write, read);
    read.unwrap();
    assert_eq!(received, sent);
}
