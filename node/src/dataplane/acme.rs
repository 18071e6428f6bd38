//! What the data plane serves of the cluster's ACME state: each listener's issued
//! certificate (its key opened with the node's sealer), HTTP-01 answers by token and
//! TLS-ALPN-01 validation certificates by name. Built on every applied configuration,
//! reusing what did not change, and read by the TLS resolver and the HTTP path.

use std::collections::HashMap;
use std::sync::Arc;

use fulcrum_model::acme::ChallengeKind;
use fulcrum_model::{Config, Name};
use rustls::sign::CertifiedKey;

use crate::acme::certificate::{certified_key, tls_alpn_certificate};
use crate::acme::manager::certificate_place;
use crate::acme::seal::Sealer;
use crate::prometheus::Exposition;

/// The ALPN protocol of TLS-ALPN-01 validation (RFC 8737).
pub(crate) const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";
/// Where HTTP-01 answers live (RFC 8555 §8.3).
const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

/// One issued certificate as served, with the chain it came from (to see a change).
#[derive(Clone, Debug)]
struct Issued {
    chain_pem: String,
    key: Arc<CertifiedKey>,
}

/// A TLS-ALPN-01 certificate, with the key authorization it proves.
#[derive(Debug)]
struct AlpnAnswer {
    key_authorization: String,
    certificate: Arc<CertifiedKey>,
}

/// The ACME material every connection may need.
#[derive(Debug, Default)]
pub(crate) struct AcmeMaterial {
    issued: HashMap<Name, Issued>,
    http01: HashMap<String, String>,
    alpn: HashMap<String, AlpnAnswer>,
    /// Per ACME listener: its certificate's end of validity (0: none yet) and the failed
    /// attempts in a row, for `/metrics`.
    status: Vec<(Name, u64, u32)>,
}

impl AcmeMaterial {
    /// The material of `config`, taking from `previous` what is unchanged. A certificate
    /// whose key does not open here is logged and not served (the previous one, if any,
    /// stays).
    pub(crate) fn build(
        config: &Config,
        sealer: Option<&Sealer>,
        previous: &AcmeMaterial,
    ) -> AcmeMaterial {
        let mut issued = HashMap::new();
        for certificate in &config.acme.certificates {
            let listener = &certificate.listener;
            if let Some(old) = previous.issued.get(listener)
                && old.chain_pem == certificate.chain_pem
            {
                issued.insert(listener.clone(), old.clone());
                continue;
            }
            let Some(sealer) = sealer else {
                tracing::error!(%listener, "an ACME certificate was issued but this node has no cluster secret to open its key; it serves none");
                continue;
            };
            let opened = sealer
                .open(&certificate.key, &certificate_place(listener))
                .map_err(|e| e.to_string())
                .and_then(|key| {
                    certified_key(&certificate.chain_pem, &key).map_err(|e| e.to_string())
                });
            match opened {
                Ok(key) => {
                    tracing::info!(%listener, not_after = certificate.not_after, "serving the ACME certificate");
                    issued.insert(
                        listener.clone(),
                        Issued { chain_pem: certificate.chain_pem.clone(), key },
                    );
                }
                Err(error) => {
                    tracing::error!(%listener, "cannot serve the ACME certificate: {error}");
                    if let Some(old) = previous.issued.get(listener) {
                        issued.insert(listener.clone(), old.clone());
                    }
                }
            }
        }
        let mut http01 = HashMap::new();
        let mut alpn = HashMap::new();
        for answer in &config.acme.challenges {
            match answer.kind {
                ChallengeKind::Http01 => {
                    http01.insert(answer.token.clone(), answer.key_authorization.clone());
                }
                ChallengeKind::TlsAlpn01 => {
                    let hostname = answer.hostname.to_ascii_lowercase();
                    let reused = previous
                        .alpn
                        .get(&hostname)
                        .filter(|old| old.key_authorization == answer.key_authorization)
                        .map(|old| Arc::clone(&old.certificate));
                    let certificate = match reused {
                        Some(certificate) => certificate,
                        None => match tls_alpn_certificate(&hostname, &answer.key_authorization) {
                            Ok(certificate) => certificate,
                            Err(error) => {
                                tracing::error!(%hostname, "cannot make the TLS-ALPN-01 certificate: {error}");
                                continue;
                            }
                        },
                    };
                    alpn.insert(
                        hostname,
                        AlpnAnswer {
                            key_authorization: answer.key_authorization.clone(),
                            certificate,
                        },
                    );
                }
            }
        }
        let status = config
            .spec
            .listeners
            .iter()
            .filter(|l| l.acme().is_some())
            .map(|l| {
                let not_after = config.acme.certificate(&l.name).map_or(0, |c| c.not_after);
                let failures = config.acme.order(&l.name).map_or(0, |o| o.failures);
                (l.name.clone(), not_after, failures)
            })
            .collect();
        AcmeMaterial { issued, http01, alpn, status }
    }

    /// Writes the ACME families of `/metrics`.
    pub(crate) fn render(&self, page: &mut Exposition) {
        let labelled = |value: fn(&(Name, u64, u32)) -> u64| -> Vec<(String, u64)> {
            self.status.iter().map(|s| (format!("listener=\"{}\"", s.0), value(s))).collect()
        };
        page.family(
            "fulcrum_acme_certificate_not_after_seconds",
            "gauge",
            "End of validity of the listener's ACME certificate (UNIX seconds; 0 until one is issued).",
        )
        .each(&labelled(|s| s.1), |v| *v);
        page.family(
            "fulcrum_acme_order_failures",
            "gauge",
            "Failed ACME attempts in a row for the listener's certificate.",
        )
        .each(&labelled(|s| u64::from(s.2)), |v| *v);
    }

    /// `listener`'s issued certificate.
    pub(crate) fn issued(&self, listener: &Name) -> Option<Arc<CertifiedKey>> {
        self.issued.get(listener).map(|i| Arc::clone(&i.key))
    }

    /// The TLS-ALPN-01 certificate for `hostname`.
    pub(crate) fn alpn_certificate(&self, hostname: &str) -> Option<Arc<CertifiedKey>> {
        self.alpn.get(&hostname.to_ascii_lowercase()).map(|a| Arc::clone(&a.certificate))
    }

    /// Whether `path` is where HTTP-01 answers live (checked before the material is loaded,
    /// so other requests pay one string comparison).
    pub(crate) fn is_http01_path(path: &str) -> bool {
        path.starts_with(HTTP01_PREFIX)
    }

    /// The HTTP-01 answer for a request `path`, if it asks for a token the cluster holds.
    pub(crate) fn http01_answer(&self, path: &str) -> Option<&str> {
        let token = path.strip_prefix(HTTP01_PREFIX)?;
        self.http01.get(token).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fulcrum_model::acme::ChallengeAnswer;

    fn with_answers(answers: Vec<ChallengeAnswer>) -> Config {
        let mut config = Config::default();
        config.acme.challenges = answers;
        config
    }

    fn answer(kind: ChallengeKind, hostname: &str, token: &str) -> ChallengeAnswer {
        ChallengeAnswer {
            listener: "web".parse().unwrap(),
            kind,
            hostname: hostname.into(),
            token: token.into(),
            key_authorization: format!("{token}.thumbprint"),
        }
    }

    #[test]
    fn http01_answers_only_its_own_path_and_token() {
        let config = with_answers(vec![answer(ChallengeKind::Http01, "a.example.test", "tok")]);
        let material = AcmeMaterial::build(&config, None, &AcmeMaterial::default());
        assert_eq!(
            material.http01_answer("/.well-known/acme-challenge/tok"),
            Some("tok.thumbprint")
        );
        assert_eq!(material.http01_answer("/.well-known/acme-challenge/other"), None);
        assert_eq!(material.http01_answer("/tok"), None);
        assert!(material.alpn_certificate("a.example.test").is_none());
    }

    #[test]
    fn tls_alpn_certificates_are_kept_while_their_answer_is_unchanged() {
        let config = with_answers(vec![answer(ChallengeKind::TlsAlpn01, "A.example.test", "tok")]);
        let first = AcmeMaterial::build(&config, None, &AcmeMaterial::default());
        let made = first.alpn_certificate("a.example.test").expect("made");
        let again = AcmeMaterial::build(&config, None, &first);
        assert!(Arc::ptr_eq(&made, &again.alpn_certificate("a.EXAMPLE.test").unwrap()));
        let changed = with_answers(vec![answer(ChallengeKind::TlsAlpn01, "a.example.test", "new")]);
        let next = AcmeMaterial::build(&changed, None, &again);
        assert!(!Arc::ptr_eq(&made, &next.alpn_certificate("a.example.test").unwrap()));
    }
}
