//! The HTTP client instant-acme talks to the authority with: hyper over rustls (ring),
//! trusting the listener's `ca_file` or the system's trust store, every request bounded in
//! time and every answer in size.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// Where Debian and most distributions keep the system's trusted CAs.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// One request and its answer, connecting included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer read (a certificate chain or a directory is a few KiB).
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// Why the client could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The CA file could not be read or holds no certificate.
    #[error("cannot read the ACME directory's CA from {path}: {reason}")]
    Ca {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// instant-acme's transport.
#[derive(Clone)]
pub struct AcmeHttp {
    client: Client<HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>,
}

impl AcmeHttp {
    /// A client trusting the CAs in `ca_file`, or the system's.
    pub fn new(ca_file: Option<&Path>) -> Result<AcmeHttp, ClientError> {
        let path = ca_file.unwrap_or(Path::new(SYSTEM_CA_BUNDLE));
        let failed = |reason: String| ClientError::Ca { path: path.display().to_string(), reason };
        let mut roots = rustls::RootCertStore::empty();
        for certificate in CertificateDer::pem_file_iter(path).map_err(|e| failed(e.to_string()))? {
            let certificate = certificate.map_err(|e| failed(e.to_string()))?;
            roots.add(certificate).map_err(|e| failed(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(failed("no certificate in it".into()));
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| failed(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(REQUEST_TIMEOUT));
        connector.enforce_http(false);
        let https = HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_only()
            .enable_http1()
            .wrap_connector(connector);
        Ok(AcmeHttp { client: Client::builder(TokioExecutor::new()).build(https) })
    }
}

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        request: hyper::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let client = self.client.clone();
        Box::pin(async move {
            let exchange = async {
                let response = client.request(request).await.map_err(other)?;
                let (parts, body) = response.into_parts();
                let body = Limited::new(body, MAX_ANSWER_BYTES).collect().await.map_err(|e| {
                    instant_acme::Error::Other(format!("reading the answer: {e}").into())
                })?;
                Ok(BytesResponse { parts, body: Box::new(body.to_bytes()) })
            };
            tokio::time::timeout(REQUEST_TIMEOUT, exchange).await.unwrap_or_else(|_| {
                Err(instant_acme::Error::Other("the ACME server did not answer in 30 s".into()))
            })
        })
    }
}

fn other(error: hyper_util::client::legacy::Error) -> instant_acme::Error {
    instant_acme::Error::Other(Box::new(error))
}
