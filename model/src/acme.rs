//! ACME (RFC 8555) certificates for https listeners: what a listener asks of a certificate
//! authority ([`AcmeSettings`]), and what the cluster keeps while one node orders for all
//! ([`AcmeState`]: the account, orders in progress, challenge answers, issued certificates).
//!
//! Private keys arrive here already sealed by the node ([`Sealed`]); this crate never sees
//! them in clear. Times are UNIX seconds carried as values: nothing here reads a clock.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::Name;
use crate::command::{ApplyError, ObjectKind};

/// Where and how an https listener gets its certificate from an ACME authority.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeSettings {
    /// The authority's directory URL (https).
    pub directory: String,
    /// Contact URLs for the account, e.g. `mailto:ops@example.com`.
    #[serde(default)]
    pub contact: Vec<String>,
    /// Names the certificate covers; empty takes the exact hosts of the listener's routes.
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// The certificate's key.
    #[serde(default)]
    pub key_type: KeyType,
    /// How the authority checks that the cluster answers for the names.
    #[serde(default)]
    pub challenge: ChallengeKind,
    /// PEM file with the CA that signs the directory's own TLS certificate, present on every
    /// node; without it the system's trust store is used.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

impl AcmeSettings {
    /// The names the certificate must cover for `listener`: the configured ones, or the
    /// exact hosts of its routes (wildcards need DNS-01, which Fulcrum does not answer).
    pub fn names_for(&self, listener: &crate::Listener) -> Vec<String> {
        let mut names: Vec<String> = if self.hostnames.is_empty() {
            listener
                .routes
                .iter()
                .filter_map(|r| r.matcher.host.as_deref())
                .filter(|host| !host.starts_with("*."))
                .map(str::to_ascii_lowercase)
                .collect()
        } else {
            self.hostnames.iter().map(|h| h.to_ascii_lowercase()).collect()
        };
        names.sort();
        names.dedup();
        names
    }
}

/// The key type of an ACME certificate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyType {
    /// ECDSA on P-256 with SHA-256.
    #[default]
    EcdsaP256,
    /// ECDSA on P-384 with SHA-384.
    EcdsaP384,
}

/// The ACME challenge a listener answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChallengeKind {
    /// TLS-ALPN-01 (RFC 8737) on the https listener itself (port 443).
    #[default]
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    /// HTTP-01 on an http listener of the same address on port 80.
    #[serde(rename = "http-01")]
    Http01,
}

impl std::fmt::Display for ChallengeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChallengeKind::TlsAlpn01 => "tls-alpn-01",
            ChallengeKind::Http01 => "http-01",
        })
    }
}

/// Bytes a node encrypted with the cluster's sealing key; opaque to everything else.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed(pub Vec<u8>);

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealed({} bytes)", self.0.len())
    }
}

/// What the cluster keeps of its dealings with ACME authorities.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcmeState {
    /// One account per directory; its key is stored before the authority hears of it, so a
    /// node that takes over finds the same account.
    pub accounts: Vec<AcmeAccount>,
    /// Per listener: the order in progress, failures and the renewal request.
    pub orders: Vec<AcmeOrder>,
    /// Challenge answers every node serves while an order is validated.
    pub challenges: Vec<ChallengeAnswer>,
    /// The certificates in service, one per listener.
    pub certificates: Vec<IssuedCertificate>,
}

/// An ACME account: its directory, its sealed PKCS#8 key, and the contacts registered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcmeAccount {
    /// The directory URL the account belongs to.
    pub directory: String,
    /// The account key (PKCS#8, sealed).
    pub key: Sealed,
    /// The contacts the authority has for the account (updated when the listeners' change).
    pub contact: Vec<String>,
}

/// A listener's certificate order: in progress (with the authority's URL), failed and
/// waiting, or asked for by an operator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcmeOrder {
    /// The listener the certificate is for.
    pub listener: Name,
    /// The names ordered.
    pub hostnames: Vec<String>,
    /// The order's URL at the authority, once placed; a node taking over resumes it.
    pub url: Option<String>,
    /// Failed attempts in a row.
    pub failures: u32,
    /// No new attempt before this (UNIX seconds).
    pub retry_at: u64,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// An operator asked for a new certificate now.
    pub renew_requested: bool,
    /// The key (PKCS#8, sealed) of the signing request the order is finalized with, stored
    /// before the authority receives the request, so a later leader can take the
    /// certificate.
    pub pending_key: Option<Sealed>,
}

/// A challenge answer: for HTTP-01 the key authorization served at
/// `/.well-known/acme-challenge/<token>`; for TLS-ALPN-01 the key authorization whose digest
/// the validation certificate for `hostname` carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChallengeAnswer {
    /// The listener whose order this belongs to.
    pub listener: Name,
    /// Which challenge.
    pub kind: ChallengeKind,
    /// The name being validated.
    pub hostname: String,
    /// The challenge token.
    pub token: String,
    /// `token.thumbprint`.
    pub key_authorization: String,
}

/// A certificate the authority issued, with its sealed key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedCertificate {
    /// The listener that serves it.
    pub listener: Name,
    /// The names it covers.
    pub hostnames: Vec<String>,
    /// The chain, leaf first, as PEM.
    pub chain_pem: String,
    /// The private key (PKCS#8, sealed).
    pub key: Sealed,
    /// Start of validity (UNIX seconds).
    pub not_before: u64,
    /// End of validity (UNIX seconds).
    pub not_after: u64,
}

impl IssuedCertificate {
    /// When it should be renewed: two thirds into its lifetime.
    pub fn renew_at(&self) -> u64 {
        let lifetime = self.not_after.saturating_sub(self.not_before);
        self.not_before.saturating_add(lifetime / 3 * 2)
    }
}

/// A change to [`AcmeState`]: written by the node that orders, or by an operator's renew.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AcmeCommand {
    /// Keep a new account; refused when the directory has one, so two nodes racing to make
    /// one end with the first.
    PutAccount(AcmeAccount),
    /// Replace a kept account: its key sealed under a newer secret, or its contacts.
    UpdateAccount(AcmeAccount),
    /// Create or replace a listener's order.
    PutOrder(AcmeOrder),
    /// Replace a listener's challenge answers.
    PutChallenges {
        /// The listener.
        listener: Name,
        /// Its answers now (empty clears them).
        answers: Vec<ChallengeAnswer>,
    },
    /// A certificate was issued: it replaces the listener's, and the order and its
    /// challenges end.
    Issued(IssuedCertificate),
    /// An operator asks for a new certificate now.
    RequestRenewal(Name),
    /// Replace a certificate's key with the same key sealed under a newer secret.
    ResealCertificate {
        /// The listener whose certificate it is.
        listener: Name,
        /// The key, sealed anew.
        key: Sealed,
    },
}

impl AcmeState {
    /// The account kept for `directory`.
    pub fn account(&self, directory: &str) -> Option<&AcmeAccount> {
        self.accounts.iter().find(|a| a.directory == directory)
    }

    /// `listener`'s order, if any.
    pub fn order(&self, listener: &Name) -> Option<&AcmeOrder> {
        self.orders.iter().find(|o| &o.listener == listener)
    }

    /// `listener`'s certificate, if issued.
    pub fn certificate(&self, listener: &Name) -> Option<&IssuedCertificate> {
        self.certificates.iter().find(|c| &c.listener == listener)
    }

    /// Applies `command` (checked against `spec` for listeners that ask for ACME).
    pub(crate) fn change(
        &mut self,
        spec: &crate::ClusterSpec,
        command: &AcmeCommand,
    ) -> Result<(), ApplyError> {
        let acme_listener = |name: &Name| {
            spec.listener(name.as_str()).filter(|l| l.acme().is_some()).map(|_| ()).ok_or_else(
                || ApplyError::NotFound { kind: ObjectKind::AcmeListener, name: name.to_string() },
            )
        };
        match command {
            AcmeCommand::PutAccount(account) => {
                if self.account(&account.directory).is_some() {
                    return Err(ApplyError::AlreadyExists {
                        kind: ObjectKind::AcmeAccount,
                        name: account.directory.clone(),
                    });
                }
                self.accounts.push(account.clone());
            }
            AcmeCommand::UpdateAccount(account) => {
                let kept = self
                    .accounts
                    .iter_mut()
                    .find(|a| a.directory == account.directory)
                    .ok_or_else(|| ApplyError::NotFound {
                        kind: ObjectKind::AcmeAccount,
                        name: account.directory.clone(),
                    })?;
                *kept = account.clone();
            }
            AcmeCommand::ResealCertificate { listener, key } => {
                let kept =
                    self.certificates.iter_mut().find(|c| &c.listener == listener).ok_or_else(
                        || ApplyError::NotFound {
                            kind: ObjectKind::AcmeListener,
                            name: listener.to_string(),
                        },
                    )?;
                kept.key = key.clone();
            }
            AcmeCommand::PutOrder(order) => {
                acme_listener(&order.listener)?;
                self.orders.retain(|o| o.listener != order.listener);
                self.orders.push(order.clone());
            }
            AcmeCommand::PutChallenges { listener, answers } => {
                acme_listener(listener)?;
                self.challenges.retain(|c| &c.listener != listener);
                self.challenges.extend(
                    answers
                        .iter()
                        .map(|a| ChallengeAnswer { listener: listener.clone(), ..a.clone() }),
                );
            }
            AcmeCommand::Issued(certificate) => {
                acme_listener(&certificate.listener)?;
                let listener = &certificate.listener;
                self.orders.retain(|o| &o.listener != listener);
                self.challenges.retain(|c| &c.listener != listener);
                self.certificates.retain(|c| &c.listener != listener);
                self.certificates.push(certificate.clone());
            }
            AcmeCommand::RequestRenewal(listener) => {
                acme_listener(listener)?;
                match self.orders.iter_mut().find(|o| &o.listener == listener) {
                    Some(order) => {
                        order.renew_requested = true;
                        order.retry_at = 0;
                    }
                    None => self.orders.push(AcmeOrder {
                        listener: listener.clone(),
                        hostnames: Vec::new(),
                        url: None,
                        failures: 0,
                        retry_at: 0,
                        last_error: None,
                        renew_requested: true,
                        pending_key: None,
                    }),
                }
            }
        }
        Ok(())
    }

    /// Forgets orders, answers and certificates of listeners that no longer ask for ACME.
    pub(crate) fn retain_listeners(&mut self, spec: &crate::ClusterSpec) {
        let wanted = |name: &Name| spec.listener(name.as_str()).is_some_and(|l| l.acme().is_some());
        self.orders.retain(|o| wanted(&o.listener));
        self.challenges.retain(|c| wanted(&c.listener));
        self.certificates.retain(|c| wanted(&c.listener));
    }
}
