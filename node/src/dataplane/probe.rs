//! Active health-check probes: one TCP connect, or an HTTP/1.1 GET of a path expecting a
//! status, within the check's timeout. The hysteresis that decides from their results is
//! fulcrum-policy's.

use std::net::SocketAddr;
use std::time::Duration;

use fulcrum_model::HealthCheck;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Why a check failed, for the log line of a transition.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CheckFailure {
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
pub(crate) async fn probe(address: SocketAddr, check: &HealthCheck) -> Result<(), CheckFailure> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
