//! TLS termination: an `https` listener's certificates, its ACME certificate and the PEM
//! files it names, chosen by SNI (the ACME one, then the first file, is the fallback),
//! offered with ALPN `h2` and `http/1.1` over TLS 1.2 and 1.3, and read again when their
//! files change, without a restart. A listener with ACME also answers TLS-ALPN-01
//! validation handshakes (ALPN `acme-tls/1`) with the cluster's validation certificate.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use fulcrum_model::{Certificate, Name};
use fulcrum_raft_store::tls::{PemFileError, load_certified_key};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::ServerName;

use super::acme::{ACME_TLS_ALPN, AcmeMaterial};

/// How often certificate files are checked for changes.
pub(crate) const RELOAD_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Why a certificate could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read, holds no usable PEM, or its key does not fit.
    #[error(transparent)]
    File(#[from] PemFileError),
    /// An https listener without certificates.
    #[error("no certificate given")]
    NoCertificate,
}

/// One certificate chain with its key, and when its files were last changed.
#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    changed: (Option<SystemTime>, Option<SystemTime>),
}

/// Where a listener with ACME finds its certificate and validation answers.
#[derive(Debug)]
pub(crate) struct AcmeSource {
    /// The listener whose certificate to present.
    pub listener: Name,
    /// The cluster's ACME material, swapped on every applied configuration.
    pub material: Arc<ArcSwap<AcmeMaterial>>,
}

/// A listener's certificates; the TLS handshake asks it which to present.
#[derive(Debug)]
pub(crate) struct CertStore {
    files: Vec<Certificate>,
    loaded: ArcSwap<Vec<Loaded>>,
    acme: Option<AcmeSource>,
}

impl CertStore {
    /// Reads every certificate; fails on the first that cannot be used.
    pub(crate) fn load(files: &[Certificate]) -> Result<CertStore, TlsError> {
        CertStore::for_listener(files, None)
    }

    /// The same, for a listener that may also present an ACME certificate (then it may
    /// have no files: until one is issued, only validation handshakes succeed).
    pub(crate) fn for_listener(
        files: &[Certificate],
        acme: Option<AcmeSource>,
    ) -> Result<CertStore, TlsError> {
        if files.is_empty() && acme.is_none() {
            return Err(TlsError::NoCertificate);
        }
        let loaded = files.iter().map(load_one).collect::<Result<Vec<_>, _>>()?;
        Ok(CertStore { files: files.to_vec(), loaded: ArcSwap::from_pointee(loaded), acme })
    }

    /// Whether it presents an ACME certificate.
    pub(crate) fn uses_acme(&self) -> bool {
        self.acme.is_some()
    }

    /// The files this store reads.
    pub(crate) fn files(&self) -> &[Certificate] {
        &self.files
    }

    /// Reads again the certificates whose files changed. A file that no longer loads is
    /// reported and its previous certificate stays in use. Returns how many were replaced.
    pub(crate) fn reload_changed(&self) -> usize {
        let current = self.loaded.load();
        let mut next = Vec::with_capacity(self.files.len());
        let mut replaced = 0;
        for (files, old) in self.files.iter().zip(current.iter()) {
            if modified(&files.cert, &files.key) == old.changed {
                next.push(Loaded { key: Arc::clone(&old.key), changed: old.changed });
                continue;
            }
            match load_one(files) {
                Ok(fresh) => {
                    tracing::info!(cert = %files.cert.display(), "certificate reloaded");
                    replaced += 1;
                    next.push(fresh);
                }
                Err(error) => {
                    tracing::error!("{error}; the previous certificate stays in use");
                    // Not retried until the files change again.
                    next.push(Loaded {
                        key: Arc::clone(&old.key),
                        changed: modified(&files.cert, &files.key),
                    });
                }
            }
        }
        self.loaded.store(Arc::new(next));
        replaced
    }

    /// A TLS server configuration presenting this store's certificates.
    pub(crate) fn server_config(self: &Arc<Self>) -> Arc<rustls::ServerConfig> {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map(|builder| {
            builder
                .with_no_client_auth()
                .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>)
        })
        // The ring provider supports both versions; keep a working config regardless.
        .unwrap_or_else(|_| {
            rustls::ServerConfig::builder()
                .with_no_client_auth()
                .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>)
        });
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        if self.acme.is_some() {
            config.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
        }
        Arc::new(config)
    }

    /// The same, offering HTTP/1.1 only (for the node's own endpoints).
    pub(crate) fn http1_server_config(self: &Arc<Self>) -> Arc<rustls::ServerConfig> {
        let mut config = rustls::ServerConfig::clone(&self.server_config());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let issued = match &self.acme {
            Some(acme) => {
                let material = acme.material.load();
                // RFC 8737 §3: a validation handshake offers acme-tls/1 alone.
                if hello.alpn().is_some_and(|mut offered| {
                    offered.next() == Some(ACME_TLS_ALPN) && offered.next().is_none()
                }) {
                    return hello.server_name().and_then(|name| material.alpn_certificate(name));
                }
                material.issued(&acme.listener)
            }
            None => None,
        };
        let loaded = self.loaded.load();
        let name = hello.server_name().and_then(|name| ServerName::try_from(name).ok());
        if let Some(name) = &name {
            if let Some(issued) = issued.as_ref().filter(|key| valid_for(key, name)) {
                return Some(Arc::clone(issued));
            }
            if let Some(file) = loaded.iter().find(|l| valid_for(&l.key, name)) {
                return Some(Arc::clone(&file.key));
            }
        }
        issued.or_else(|| loaded.first().map(|l| Arc::clone(&l.key)))
    }
}

fn valid_for(key: &CertifiedKey, name: &ServerName<'_>) -> bool {
    key.cert.first().is_some_and(|leaf| {
        webpki::EndEntityCert::try_from(leaf)
            .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(name).is_ok())
    })
}

fn modified(cert: &Path, key: &Path) -> (Option<SystemTime>, Option<SystemTime>) {
    let time = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    (time(cert), time(key))
}

fn load_one(files: &Certificate) -> Result<Loaded, TlsError> {
    let changed = modified(&files.cert, &files.key);
    let key = load_certified_key(&files.cert, &files.key)?;
    Ok(Loaded { key: Arc::new(key), changed })
}
