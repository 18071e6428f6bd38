//! TLS termination: an `https` listener's certificates, read from the PEM files it names,
//! chosen by SNI (the first is the fallback), offered with ALPN `h2` and `http/1.1` over TLS
//! 1.2 and 1.3, and read again when their files change, without a restart.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use fulcrum_model::Certificate;
use fulcrum_raft_store::tls::{PemFileError, load_certified_key};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::ServerName;

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

/// A listener's certificates; the TLS handshake asks it which to present.
#[derive(Debug)]
pub(crate) struct CertStore {
    files: Vec<Certificate>,
    loaded: ArcSwap<Vec<Loaded>>,
}

impl CertStore {
    /// Reads every certificate; fails on the first that cannot be used.
    pub(crate) fn load(files: &[Certificate]) -> Result<CertStore, TlsError> {
        if files.is_empty() {
            return Err(TlsError::NoCertificate);
        }
        let loaded = files.iter().map(load_one).collect::<Result<Vec<_>, _>>()?;
        Ok(CertStore { files: files.to_vec(), loaded: ArcSwap::from_pointee(loaded) })
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
        let loaded = self.loaded.load();
        let by_name = hello.server_name().and_then(|name| {
            let name = ServerName::try_from(name).ok()?;
            loaded.iter().find(|l| valid_for(&l.key, &name))
        });
        by_name.or_else(|| loaded.first()).map(|l| Arc::clone(&l.key))
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
