//! A Fulcrum cluster node: the wiring of the Raft store, VRRP and the data plane.
//!
//! It owns the data plane (`dataplane`: listeners, L4 forwarding, draining, metrics; `balance`:
//! the balancing algorithms; `health`: health checks), the node file, and the handing over of
//! a VIP with its connections (`handover`: second-chance forwarding). It never defines
//! persisted state (that is fulcrum-model and fulcrum-raft-store) and never speaks VRRP itself
//! (fulcrum-vrrp does).

pub mod admin;
pub mod balance;
pub mod dataplane;
pub mod dev;
pub mod handover;
pub mod health;
pub mod metrics_endpoint;
pub mod node_file;
pub mod peers;
pub mod ratelimit;
pub mod tracking;

use std::sync::{Mutex, MutexGuard};

/// Locks a mutex whose data stays consistent even if a holder panicked: every critical
/// section in this crate is a few assignments, never left half done.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// 32 bytes from the operating system's secure random source, for keys and tokens.
pub fn random_secret() -> std::io::Result<[u8; 32]> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(secret)
}
