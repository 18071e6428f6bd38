//! The leader's side of ACME. Every second the Raft leader looks at each listener that asks
//! for ACME and orders when [`plan::due`] says so; other nodes only serve what it stores.
//!
//! Each step that a successor must not repeat is written to the store before the authority
//! hears of it: the account key before the account is registered (so a new leader registers
//! the same key and the authority returns the same account), the order's URL as soon as it
//! exists (so a new leader resumes it instead of placing another), the challenge answers
//! before the authority is told to validate (and once every node serves them, so the
//! validation request may reach any node), the certificate's key before the order is
//! finalized (so a new leader can take the certificate). Only the leader writes, each write
//! checking first. A failure is recorded with its reason and the time of the next attempt,
//! doubling from 10 s to an hour.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fulcrum_model::acme::{
    AcmeAccount, AcmeCommand, AcmeOrder, AcmeSettings, ChallengeAnswer, ChallengeKind,
    IssuedCertificate, Sealed,
};
use fulcrum_model::{ApplyError, Command, Config, Listener, Name};
use fulcrum_raft_store::{ConfigStore, Request, WriteError};
use instant_acme::{
    Account, AuthorizationStatus, ChallengeStatus, ChallengeType, Identifier, Key, NewOrder, Order,
    OrderStatus, RetryPolicy,
};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use super::certificate::{self, CertificateError};
use super::client::{AcmeHttp, ClientError};
use super::plan::{self, Due};
use super::seal::{SealError, Sealer};
use crate::cluster::Node;

/// How often the leader looks for due certificates.
const TICK: Duration = Duration::from_secs(1);
/// How long the leader waits for every node to serve new challenge answers before it asks
/// the authority to validate anyway (a node that is down cannot be asked).
const PROPAGATION_WAIT: Duration = Duration::from_secs(5);
/// How long one order may take, validation and issuance included.
const ORDER_TIMEOUT: Duration = Duration::from_secs(180);
/// How long the authority may take to validate, and then to issue.
const POLL: RetryPolicy = RetryPolicy::new().timeout(Duration::from_secs(60));

/// Why an attempt did not give a certificate.
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    /// The authority refused, or could not be reached.
    #[error("ACME: {0}")]
    Acme(#[from] instant_acme::Error),
    /// The authority found the order or a challenge invalid.
    #[error("the order is invalid: {0}")]
    Invalid(String),
    /// The directory's CA file could not be used.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A sealed key could not be opened or a key sealed.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// A key, request or the issued chain was unusable.
    #[error(transparent)]
    Certificate(#[from] CertificateError),
    /// The store did not take a step.
    #[error("the configuration store did not take the step: {0}")]
    Store(#[from] WriteError),
    /// This node stopped leading; the next leader resumes.
    #[error("this node is no longer the Raft leader")]
    NotLeader,
    /// The whole attempt took too long.
    #[error("the order did not complete within {0:?}")]
    Timeout(Duration),
}

/// Orders and renews every ACME listener's certificate while this node leads.
pub struct CertificateManager {
    store: Arc<ConfigStore>,
    node: Arc<Node>,
    sealer: Arc<Sealer>,
}

impl std::fmt::Debug for CertificateManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateManager").field("sealer", &self.sealer).finish_non_exhaustive()
    }
}

impl CertificateManager {
    /// A manager writing through `store`, sealing with `sealer`.
    pub fn new(store: Arc<ConfigStore>, node: Arc<Node>, sealer: Arc<Sealer>) -> Arc<Self> {
        Arc::new(CertificateManager { store, node, sealer })
    }

    /// Runs until the process ends.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !self.store.is_leader() {
                continue;
            }
            let config = self.store.config();
            for listener in &config.spec.listeners {
                let Some(acme) = listener.acme() else {
                    continue;
                };
                let names = acme.names_for(listener);
                if let Some(due) = plan::due(unix_now(), &listener.name, &names, &config.acme) {
                    self.attempt(listener, acme, names, due).await;
                }
            }
            self.reseal(&self.store.config()).await;
        }
    }

    /// One attempt at `listener`'s certificate; its outcome is written to the store.
    async fn attempt(
        &self,
        listener: &Listener,
        acme: &AcmeSettings,
        names: Vec<String>,
        due: Due,
    ) {
        tracing::info!(listener = %listener.name, ?due, names = ?names, directory = %acme.directory, "ordering a certificate");
        let outcome = tokio::time::timeout(ORDER_TIMEOUT, self.order(&listener.name, acme, &names))
            .await
            .unwrap_or(Err(OrderError::Timeout(ORDER_TIMEOUT)));
        match outcome {
            Ok(issued) => {
                let not_after = issued.not_after;
                match self.write(AcmeCommand::Issued(issued)).await {
                    Ok(revision) => {
                        tracing::info!(listener = %listener.name, revision, not_after, "certificate issued and stored; every node serves it");
                    }
                    Err(error) => {
                        tracing::warn!(listener = %listener.name, "certificate issued but not stored: {error}; the order is resumed")
                    }
                }
            }
            Err(OrderError::NotLeader) => {
                tracing::info!(listener = %listener.name, "stopped ordering: this node no longer leads; the next leader resumes the order");
            }
            Err(error) => {
                self.record_failure(&listener.name, names, &error).await;
            }
        }
    }

    /// Keeps the failure, its reason and the next attempt's time; an order the authority
    /// found invalid is forgotten, any other is resumed then.
    async fn record_failure(&self, listener: &Name, names: Vec<String>, error: &OrderError) {
        if !self.store.is_leader() {
            tracing::info!(%listener, "order failed after this node stopped leading ({error}); the next leader resumes it");
            return;
        }
        let config = self.store.config();
        let previous = config.acme.order(listener);
        let failures = previous.map_or(0, |o| o.failures).saturating_add(1);
        let retry_at = plan::retry_at(unix_now(), failures);
        let (url, pending_key) = match error {
            OrderError::Invalid(_) => (None, None),
            _ => {
                (previous.and_then(|o| o.url.clone()), previous.and_then(|o| o.pending_key.clone()))
            }
        };
        tracing::warn!(%listener, failures, retry_in = retry_at.saturating_sub(unix_now()), "certificate order failed: {error}; the certificate in service (if any) stays");
        let order = AcmeOrder {
            listener: listener.clone(),
            hostnames: names,
            url,
            failures,
            retry_at,
            last_error: Some(error.to_string()),
            renew_requested: previous.is_some_and(|o| o.renew_requested),
            pending_key,
        };
        if let Err(error) = self.write(AcmeCommand::PutOrder(order)).await {
            tracing::warn!(%listener, "cannot record the failed order: {error}");
        }
    }

    /// Places or resumes the order and sees it through to a certificate.
    async fn order(
        &self,
        listener: &Name,
        acme: &AcmeSettings,
        names: &[String],
    ) -> Result<IssuedCertificate, OrderError> {
        let http = AcmeHttp::new(acme.ca_file.as_deref())?;
        let account = self.account(acme, http).await?;
        let mut order = self.place_or_resume(&account, listener, names).await?;
        let place = certificate_place(listener);
        let (key, sealed) = match self.finalized_key(&mut order, listener)? {
            // Finalized by a leader before this one: its key was stored first.
            Some(sealed) => (self.sealer.open(&sealed, &place)?, sealed),
            None => {
                self.authorize(&mut order, listener, acme.challenge).await?;
                let status = order.poll_ready(&POLL).await?;
                if status != OrderStatus::Ready {
                    return Err(invalid(&mut order, status).await);
                }
                let (key, request) = certificate::key_and_request(acme.key_type, names)?;
                let sealed = self.sealer.seal(&key, &place)?;
                // Stored before the authority hears of it, so whoever leads next can take
                // the certificate this request brings.
                self.keep_order_key(listener, sealed.clone()).await?;
                order.finalize_csr(&request).await?;
                (key, sealed)
            }
        };
        let chain_pem = order.poll_certificate(&POLL).await?;
        let (not_before, not_after) = certificate::validity(&chain_pem)?;
        // The chain and key must serve before they are stored for every node. They do not
        // fit if a deposed leader's finalize won the race: that order is of no use, and the
        // next attempt orders anew.
        certificate::certified_key(&chain_pem, &key).map_err(|error| {
            OrderError::Invalid(format!(
                "the issued certificate does not fit the stored key: {error}"
            ))
        })?;
        Ok(IssuedCertificate {
            listener: listener.clone(),
            hostnames: names.to_vec(),
            chain_pem,
            key: sealed,
            not_before,
            not_after,
        })
    }

    /// The stored key of `order` if it was finalized already (processing or valid at the
    /// authority); `None` for an order still to authorize and finalize.
    fn finalized_key(
        &self,
        order: &mut Order,
        listener: &Name,
    ) -> Result<Option<Sealed>, OrderError> {
        if !matches!(order.state().status, OrderStatus::Processing | OrderStatus::Valid) {
            return Ok(None);
        }
        let config = self.store.config();
        let key = config.acme.order(listener).and_then(|o| o.pending_key.clone());
        // `place_or_resume` resumes a finalized order only with its key.
        key.map(Some).ok_or_else(|| OrderError::Invalid("finalized without a stored key".into()))
    }

    /// Stores the sealed key a finalize request is about to be made with.
    async fn keep_order_key(&self, listener: &Name, key: Sealed) -> Result<(), OrderError> {
        let config = self.store.config();
        let mut order = config
            .acme
            .order(listener)
            .cloned()
            .ok_or_else(|| OrderError::Invalid("the stored order vanished".into()))?;
        order.pending_key = Some(key);
        self.write(AcmeCommand::PutOrder(order)).await?;
        Ok(())
    }

    /// The cluster's account at `acme.directory`: its key stored first, then registered
    /// (registering a known key returns the existing account); its contacts brought in
    /// line with the listener's.
    async fn account(&self, acme: &AcmeSettings, http: AcmeHttp) -> Result<Account, OrderError> {
        let place = account_place(&acme.directory);
        let stored = match self.store.config().acme.account(&acme.directory).cloned() {
            Some(account) => account,
            None => {
                let (_, pkcs8) = Key::generate_pkcs8()?;
                let key = self.sealer.seal(pkcs8.secret_pkcs8_der(), &place)?;
                let account =
                    AcmeAccount { directory: acme.directory.clone(), key, contact: Vec::new() };
                match self.write(AcmeCommand::PutAccount(account.clone())).await {
                    Ok(_) => account,
                    // Another node stored one first: use that.
                    Err(OrderError::Store(WriteError::Rejected(ApplyError::AlreadyExists {
                        ..
                    }))) => {
                        self.store.config().acme.account(&acme.directory).cloned().ok_or_else(
                            || OrderError::Invalid("the stored account vanished".into()),
                        )?
                    }
                    Err(error) => return Err(error),
                }
            }
        };
        let pkcs8 = self.sealer.open(&stored.key, &place)?;
        let key = Key::from_pkcs8_der(PrivatePkcs8KeyDer::from(pkcs8.as_slice()))?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8));
        let (account, _) = Account::builder_with_http(Box::new(http))
            .create_from_key((key, der), acme.directory.clone())
            .await?;
        if stored.contact != acme.contact {
            let contact: Vec<&str> = acme.contact.iter().map(String::as_str).collect();
            account.update_contacts(&contact).await?;
            let updated = AcmeAccount { contact: acme.contact.clone(), ..stored };
            self.write(AcmeCommand::UpdateAccount(updated)).await?;
            tracing::info!(directory = %acme.directory, account = account.id(), contact = ?acme.contact, "ACME account contacts registered");
        }
        Ok(account)
    }

    /// Resumes the stored order for these names if the authority still has it pending or
    /// ready; otherwise places a new one and stores its URL at once.
    async fn place_or_resume(
        &self,
        account: &Account,
        listener: &Name,
        names: &[String],
    ) -> Result<Order, OrderError> {
        let previous = self.store.config().acme.order(listener).cloned();
        if let Some(url) =
            previous.as_ref().filter(|o| o.hostnames == names).and_then(|o| o.url.clone())
        {
            let key_stored = previous.as_ref().is_some_and(|o| o.pending_key.is_some());
            match account.order(url.clone()).await {
                Ok(mut order) => {
                    // A finalized order is taken up only with the key its request was made
                    // with; without it, its certificate is of no use.
                    let status = order.state().status;
                    let resumable = match status {
                        OrderStatus::Pending | OrderStatus::Ready => true,
                        OrderStatus::Processing | OrderStatus::Valid => key_stored,
                        _ => false,
                    };
                    if resumable {
                        tracing::info!(%listener, %url, ?status, "resuming the stored order");
                        return Ok(order);
                    }
                    tracing::info!(%listener, %url, ?status, "the stored order cannot be finished here; placing a new one");
                }
                Err(error) => {
                    tracing::info!(%listener, %url, "the stored order cannot be read ({error}); placing a new one")
                }
            }
        }
        self.still_leading()?;
        let identifiers: Vec<Identifier> =
            names.iter().map(|n| Identifier::Dns(n.clone())).collect();
        let order = account.new_order(&NewOrder::new(&identifiers)).await?;
        tracing::info!(%listener, url = order.url(), "order placed");
        let stored = AcmeOrder {
            listener: listener.clone(),
            hostnames: names.to_vec(),
            url: Some(order.url().to_owned()),
            failures: previous.as_ref().map_or(0, |o| o.failures),
            retry_at: 0,
            last_error: previous.as_ref().and_then(|o| o.last_error.clone()),
            renew_requested: previous.is_some_and(|o| o.renew_requested),
            pending_key: None,
        };
        self.write(AcmeCommand::PutOrder(stored)).await?;
        Ok(order)
    }

    /// Stores an answer for every pending authorization, waits for every node to serve
    /// them, then tells the authority to validate each challenge not yet under way.
    async fn authorize(
        &self,
        order: &mut Order,
        listener: &Name,
        kind: ChallengeKind,
    ) -> Result<(), OrderError> {
        let challenge_type = match kind {
            ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
            ChallengeKind::Http01 => ChallengeType::Http01,
        };
        let mut answers = Vec::new();
        let mut authorizations = order.authorizations();
        while let Some(authorization) = authorizations.next().await {
            let mut authorization = authorization?;
            if authorization.status != AuthorizationStatus::Pending {
                continue;
            }
            let hostname = authorization.identifier().to_string();
            let challenge = authorization.challenge(challenge_type.clone()).ok_or_else(|| {
                OrderError::Invalid(format!(
                    "the authority offers no {kind} challenge for {hostname}"
                ))
            })?;
            answers.push(ChallengeAnswer {
                listener: listener.clone(),
                kind,
                hostname,
                token: challenge.token.clone(),
                key_authorization: challenge.key_authorization().as_str().to_owned(),
            });
        }
        if answers.is_empty() {
            return Ok(());
        }
        self.still_leading()?;
        let revision =
            self.write(AcmeCommand::PutChallenges { listener: listener.clone(), answers }).await?;
        let propagation = self.node.wait_revision(revision, PROPAGATION_WAIT).await;
        if !propagation.complete {
            tracing::warn!(%listener, revision, "not every node serves the challenge answers yet; validating anyway (a validation that reaches a node without them fails and is retried)");
        }
        let mut authorizations = order.authorizations();
        while let Some(authorization) = authorizations.next().await {
            let mut authorization = authorization?;
            if authorization.status != AuthorizationStatus::Pending {
                continue;
            }
            if let Some(mut challenge) = authorization.challenge(challenge_type.clone())
                && challenge.status == ChallengeStatus::Pending
            {
                challenge.set_ready().await?;
            }
        }
        Ok(())
    }

    /// Seals again, under the current secret, every stored key sealed under a previous one
    /// this node has (see `[acme] previous_seal_key_files`).
    async fn reseal(&self, config: &Config) {
        for account in &config.acme.accounts {
            let place = account_place(&account.directory);
            let Some(key) = self.resealed(&account.key, &place) else { continue };
            let account = AcmeAccount { key, ..account.clone() };
            match self.write(AcmeCommand::UpdateAccount(account)).await {
                Ok(_) => tracing::info!(%place, "key sealed again under the current seal key"),
                Err(error) => tracing::warn!(%place, "cannot store the key sealed again: {error}"),
            }
        }
        for issued in &config.acme.certificates {
            let place = certificate_place(&issued.listener);
            let Some(key) = self.resealed(&issued.key, &place) else { continue };
            let listener = issued.listener.clone();
            match self.write(AcmeCommand::ResealCertificate { listener, key }).await {
                Ok(_) => tracing::info!(%place, "key sealed again under the current seal key"),
                Err(error) => tracing::warn!(%place, "cannot store the key sealed again: {error}"),
            }
        }
    }

    /// `sealed` sealed under the current secret, if it is under a previous one this node has.
    fn resealed(&self, sealed: &Sealed, place: &str) -> Option<Sealed> {
        if self.sealer.is_current(sealed) || !self.sealer.knows(sealed) {
            return None;
        }
        match self.sealer.open(sealed, place).and_then(|key| self.sealer.seal(&key, place)) {
            Ok(resealed) => Some(resealed),
            Err(error) => {
                tracing::warn!(%place, "cannot seal the key again: {error}");
                None
            }
        }
    }

    fn still_leading(&self) -> Result<(), OrderError> {
        if self.store.is_leader() { Ok(()) } else { Err(OrderError::NotLeader) }
    }

    /// Writes `command` if this node still leads: a deposed leader stops short, and the
    /// next one resumes from what the store holds.
    async fn write(&self, command: AcmeCommand) -> Result<u64, OrderError> {
        self.still_leading()?;
        let request = Request { idempotency_key: None, command: Command::Acme(command) };
        Ok(self.store.write(request).await?)
    }
}

/// Where an account key is sealed for: a blob moved to another place does not open.
pub fn account_place(directory: &str) -> String {
    format!("acme account {directory}")
}

/// Where a certificate key is sealed for.
pub fn certificate_place(listener: &Name) -> String {
    format!("acme certificate {listener}")
}

/// The reason an order is not ready, from the authority's own words where it gave some.
async fn invalid(order: &mut Order, status: OrderStatus) -> OrderError {
    let mut reasons = Vec::new();
    if let Some(problem) = &order.state().error {
        reasons.push(problem.to_string());
    }
    let mut authorizations = order.authorizations();
    while let Some(Ok(authorization)) = authorizations.next().await {
        let hostname = authorization.identifier().to_string();
        for challenge in &authorization.challenges {
            if let Some(problem) = &challenge.error {
                reasons.push(format!("{hostname}: {problem}"));
            }
        }
    }
    if reasons.is_empty() {
        reasons.push(format!("status {status:?}"));
    }
    OrderError::Invalid(reasons.join("; "))
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
