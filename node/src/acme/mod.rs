//! ACME certificates for the whole cluster: one node (the Raft leader) orders and renews,
//! everything it learns goes through the store, and every node serves the result.
//!
//! - [`plan`]: when a listener's certificate is due, and how long a failure waits (pure).
//! - [`seal`]: private keys are sealed before they enter the store.
//! - [`certificate`]: keys, signing requests, the TLS-ALPN-01 certificate, validity (pure).
//! - [`client`]: the HTTP client instant-acme speaks through.
//! - [`manager`]: the leader's loop that orders, answers through the store, and installs.

pub mod certificate;
pub mod client;
pub mod manager;
pub mod plan;
pub mod seal;
