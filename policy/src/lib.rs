//! Fulcrum's data-path policy, without IO: which backend gets a connection or request, whether
//! a client is over its rate limit, when a backend counts as up or ejected, which route a
//! request takes, and which backend a sticky cookie names.
//!
//! Nothing here touches a socket, spawns a task or reads a clock: time and randomness are
//! arguments (clippy's `disallowed-methods` keeps `Instant::now` out), so every decision is
//! tested with explicit values. The node's data plane does the IO and calls in.
//!
//! # Layout
//! - [`balance`]: the balancing algorithms behind one [`Balancer`] that yields choices in
//!   fallback order, and the per-backend [`Load`] they read.
//! - [`ratelimit`]: token bucket and sliding window over hashed keys, bounded in memory.
//! - [`health`]: rise/fall [`Hysteresis`], [`PassiveEjection`] and the check interval.
//! - [`path`]: a request path in normal form before routing, or why it cannot be.
//! - [`router`]: a listener's routes compiled for first-match routing and weighted splits.
//! - [`sticky`]: the signed sticky-session cookie and finding it among a request's cookies,
//!   and [`derived_mac`], the keyed MAC each purpose derives from the cluster secret.

pub mod balance;
pub mod health;
pub mod path;
pub mod ratelimit;
pub mod router;
pub mod sticky;

pub use balance::{Balancer, InFlight, Load, Member, PickKey};
pub use health::{Health, Hysteresis, PassiveEjection};
pub use ratelimit::{Decision, Limiter, client_key, narrower};
pub use router::{CompiledRoute, Routed, Router};
pub use sticky::{CookieSigner, derived_mac};

use std::sync::{Mutex, MutexGuard};

/// Locks a mutex whose data stays consistent even if a holder panicked: every critical
/// section that uses it is a few assignments, never left half done.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
