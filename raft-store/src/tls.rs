//! Mutual TLS between nodes: the cluster's CA, each node's certificate and key, read from PEM
//! files and read again when they change (rotation without a restart), and the rustls
//! configurations of the RPC server (a client certificate of the cluster CA required) and
//! client (the server's certificate checked against the same CA). Also what an operator needs
//! to make them: a cluster CA, and node certificates signed by it.
//!
//! Every node certificate names [`PEER_NAME`], the name a node checks its peer's certificate
//! against: peers are reached by address, and what proves a peer is one of the cluster is the
//! CA's signature, not its address.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};

/// The name every node certificate carries and every node checks.
pub const PEER_NAME: &str = "fulcrum-peer";

/// A PEM file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PemFileError {
    /// The file could not be read or holds no usable PEM.
    #[error("cannot read {path}: {problem}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        problem: String,
    },
    /// The key does not fit the certificate, or is of an unsupported type.
    #[error("the key in {path} cannot be used: {source}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// What rustls said.
        source: rustls::Error,
    },
    /// The CA file holds no certificate rustls accepts as a trust anchor.
    #[error("the CA in {path} cannot be used: {problem}")]
    Ca {
        /// The CA file.
        path: PathBuf,
        /// What went wrong.
        problem: String,
    },
}

/// Reads every certificate in the PEM file at `path` (at least one).
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemFileError> {
    let read_error = |problem: String| PemFileError::Read { path: path.to_owned(), problem };
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| read_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_error(e.to_string()))?;
    if chain.is_empty() {
        return Err(read_error("no PEM certificate in it".into()));
    }
    Ok(chain)
}

/// Reads a certificate chain (leaf first) and its private key, and checks that they match.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, PemFileError> {
    let chain = load_certificates(cert)?;
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| PemFileError::Read { path: key.to_owned(), problem: e.to_string() })?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&private)
        .map_err(|source| PemFileError::Key { path: key.to_owned(), source })?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|source| PemFileError::Key { path: key.to_owned(), source })?;
    Ok(certified)
}

/// Where a node's TLS files are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerTlsFiles {
    /// The cluster CA's certificate (several, to rotate the CA: old and new).
    pub ca: PathBuf,
    /// This node's certificate chain, signed by the cluster CA.
    pub cert: PathBuf,
    /// This node's private key.
    pub key: PathBuf,
}

/// What the files held when last read.
struct Loaded {
    key: Arc<CertifiedKey>,
    client_verifier: Arc<dyn ClientCertVerifier>,
    server_verifier: Arc<WebPkiServerVerifier>,
    changed: [Option<SystemTime>; 3],
}

/// This node's TLS identity and its trust in the cluster CA, kept up to date with its files.
pub struct PeerIdentity {
    files: PeerTlsFiles,
    loaded: ArcSwap<Loaded>,
    /// Held while the files are read again, so one reader does it.
    reloading: Mutex<()>,
}

impl std::fmt::Debug for PeerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerIdentity").field("files", &self.files).finish_non_exhaustive()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The handshake signatures both sides accept: the provider's, as rustls's own verifiers use.
fn signature_algorithms() -> rustls::crypto::WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

fn modified(files: &PeerTlsFiles) -> [Option<SystemTime>; 3] {
    let time = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    [time(&files.ca), time(&files.cert), time(&files.key)]
}

fn load(files: &PeerTlsFiles) -> Result<Loaded, PemFileError> {
    let changed = modified(files);
    let ca_error = |problem: String| PemFileError::Ca { path: files.ca.clone(), problem };
    let mut roots = RootCertStore::empty();
    for cert in load_certificates(&files.ca)? {
        roots.add(cert).map_err(|e| ca_error(e.to_string()))?;
    }
    let roots = Arc::new(roots);
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), provider())
            .build()
            .map_err(|e| ca_error(e.to_string()))?;
    let server_verifier = WebPkiServerVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| ca_error(e.to_string()))?;
    let key = Arc::new(load_certified_key(&files.cert, &files.key)?);
    Ok(Loaded { key, client_verifier, server_verifier, changed })
}

impl PeerIdentity {
    /// Reads the files; fails if any cannot be used.
    pub fn load(files: PeerTlsFiles) -> Result<Arc<PeerIdentity>, PemFileError> {
        let loaded = ArcSwap::from_pointee(load(&files)?);
        Ok(Arc::new(PeerIdentity { files, loaded, reloading: Mutex::new(()) }))
    }

    /// The files as last read, after reading them again if any changed since. Files that no
    /// longer load are reported and the previous identity stays in use until they change
    /// again. Called on every handshake: three `stat`s, cheap next to a handshake.
    fn current(&self) -> Arc<Loaded> {
        let current = self.loaded.load_full();
        let now = modified(&self.files);
        if now == current.changed {
            return current;
        }
        let Ok(_reloading) = self.reloading.try_lock() else { return current };
        match load(&self.files) {
            Ok(fresh) => {
                tracing::info!(cert = %self.files.cert.display(), ca = %self.files.ca.display(), "peer TLS files reloaded");
                let fresh = Arc::new(fresh);
                self.loaded.store(Arc::clone(&fresh));
                fresh
            }
            Err(error) => {
                tracing::error!("{error}; the previous peer TLS files stay in use");
                let kept = Loaded {
                    key: Arc::clone(&current.key),
                    client_verifier: Arc::clone(&current.client_verifier),
                    server_verifier: Arc::clone(&current.server_verifier),
                    changed: now,
                };
                let kept = Arc::new(kept);
                self.loaded.store(Arc::clone(&kept));
                kept
            }
        }
    }

    /// The RPC server's configuration: this node's certificate, and a client certificate
    /// of the cluster CA required. HTTP/1.1 only.
    pub fn server_config(self: &Arc<Self>) -> Arc<ServerConfig> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map(|builder| {
                builder
                    .with_client_cert_verifier(Arc::new(CurrentClientVerifier(Arc::clone(self))))
                    .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>)
            })
            // The ring provider supports TLS 1.3: this branch is not taken.
            .unwrap_or_else(|_| {
                ServerConfig::builder()
                    .with_client_cert_verifier(Arc::new(CurrentClientVerifier(Arc::clone(self))))
                    .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>)
            });
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        // No resumption: every connection proves its certificate against the CA as it is now
        // (peers keep their connections open, so full handshakes are rare).
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Arc::new(config)
    }

    /// The RPC client's configuration: the peer's certificate checked against the cluster
    /// CA for [`PEER_NAME`], and this node's certificate presented.
    pub fn client_config(self: &Arc<Self>) -> ClientConfig {
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map(|builder| {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(CurrentServerVerifier(Arc::clone(
                        self,
                    ))))
                    .with_client_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesClientCert>)
            })
            // As above: not taken.
            .unwrap_or_else(|_| {
                ClientConfig::builder()
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(CurrentServerVerifier(Arc::clone(
                        self,
                    ))))
                    .with_client_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesClientCert>)
            });
        // ALPN is left to the connector (hyper-rustls sets `http/1.1`).
        config.resumption = rustls::client::Resumption::disabled();
        config
    }
}

impl ResolvesServerCert for PeerIdentity {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current().key))
    }
}

impl ResolvesClientCert for PeerIdentity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current().key))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The handshake-signature checks both verifier traits ask for: the provider's algorithms, as
/// rustls's own verifiers use (they do not depend on the CA).
macro_rules! handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &signature_algorithms())
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &signature_algorithms())
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            signature_algorithms().supported_schemes()
        }
    };
}

/// Checks client certificates against the CA as currently loaded. Only the CA decides what
/// is trusted; the verifier is rustls's own (WebPKI), swapped when the CA file changes.
#[derive(Debug)]
struct CurrentClientVerifier(Arc<PeerIdentity>);

impl ClientCertVerifier for CurrentClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The hints name the CA; a client with one certificate needs none.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0.current().client_verifier.verify_client_cert(end_entity, intermediates, now)
    }

    handshake_signatures!();
}

/// Checks a peer's certificate against the CA as currently loaded, for [`PEER_NAME`]
/// whatever address was dialled.
#[derive(Debug)]
struct CurrentServerVerifier(Arc<PeerIdentity>);

impl ServerCertVerifier for CurrentServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let peer = ServerName::try_from(PEER_NAME)
            .map_err(|_| rustls::Error::General("the peer name is not a DNS name".into()))?;
        self.0.current().server_verifier.verify_server_cert(
            end_entity,
            intermediates,
            &peer,
            ocsp_response,
            now,
        )
    }

    handshake_signatures!();
}

/// A certificate and its private key, as PEM text.
#[derive(Clone, Debug)]
pub struct IssuedPem {
    /// The certificate.
    pub cert: String,
    /// The private key (PKCS#8).
    pub key: String,
}

/// Why a certificate could not be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot make the certificate: {0}")]
pub struct IssueError(String);

impl From<rcgen::Error> for IssueError {
    fn from(error: rcgen::Error) -> IssueError {
        IssueError(error.to_string())
    }
}

/// The subject of the CA that [`issue_ca`] makes.
const CA_NAME: &str = "fulcrum cluster CA";

fn ca_params(days: u32) -> rcgen::CertificateParams {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name.push(rcgen::DnType::CommonName, CA_NAME);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    set_validity(&mut params, days);
    params
}

/// A new cluster CA (ECDSA P-256), valid for `days`.
pub fn issue_ca(days: u32) -> Result<IssuedPem, IssueError> {
    let key = rcgen::KeyPair::generate()?;
    let cert = ca_params(days).self_signed(&key)?;
    Ok(IssuedPem { cert: cert.pem(), key: key.serialize_pem() })
}

/// The cluster CA's certificate for an existing CA key (PEM, PKCS#8 ECDSA P-256), valid for
/// `days`: machines that share only the key (made once, elsewhere) each make a certificate
/// that trusts the same node certificates, since a trust anchor is its subject and key.
pub fn ca_certificate_for(ca_key: &str, days: u32) -> Result<String, IssueError> {
    let key = rcgen::KeyPair::from_pem(ca_key)?;
    Ok(ca_params(days).self_signed(&key)?.pem())
}

/// A node certificate (ECDSA P-256) for `node`, signed by the CA of [`issue_ca`] whose
/// private key is `ca_key` (PEM), valid for `days`, usable as TLS server and client, naming
/// [`PEER_NAME`] and `addresses` (IP addresses or DNS names, for the admin API's clients).
pub fn issue_node(
    ca_key: &str,
    node: &str,
    addresses: &[String],
    days: u32,
) -> Result<IssuedPem, IssueError> {
    let ca_key = rcgen::KeyPair::from_pem(ca_key)?;
    // The same subject and key give the same issuer name and key identifier as the CA
    // certificate itself: signed by this, the node certificate chains to that.
    let issuer = ca_params(days).self_signed(&ca_key)?;
    let key = rcgen::KeyPair::generate()?;
    let names: Vec<String> =
        std::iter::once(PEER_NAME.to_owned()).chain(addresses.iter().cloned()).collect();
    let mut params = rcgen::CertificateParams::new(names)?;
    params.distinguished_name.push(rcgen::DnType::CommonName, node);
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    set_validity(&mut params, days);
    let cert = params.signed_by(&key, &issuer, &ca_key)?;
    Ok(IssuedPem { cert: cert.pem(), key: key.serialize_pem() })
}

fn set_validity(params: &mut rcgen::CertificateParams, days: u32) {
    let now = SystemTime::now();
    // An hour back, for clocks a little behind the issuer's.
    params.not_before = (now - std::time::Duration::from_secs(3600)).into();
    params.not_after = (now + std::time::Duration::from_secs(u64::from(days) * 86_400)).into();
}
