//! Commands: every change the cluster accepts, and how one is applied.
//!
//! Applying is all-or-nothing: the command is applied to a copy, the copy is validated, and
//! only a valid result replaces the configuration. A rejected command changes nothing, so
//! every node that applies the same log stays identical.

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::config::*;
use crate::{Name, Violations};

/// One change to the configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Replace the whole declared configuration (`fulcrumctl apply -f`).
    Apply(ClusterSpec),
    /// Create a listener, or replace the one of the same name.
    PutListener(Listener),
    /// Delete a listener.
    DeleteListener(Name),
    /// Create or replace one route of a listener (appended when new).
    PutRoute {
        /// The listener the route belongs to.
        listener: Name,
        /// The route.
        route: Route,
    },
    /// Delete one route of a listener.
    DeleteRoute {
        /// The listener the route belongs to.
        listener: Name,
        /// The route's name.
        route: Name,
    },
    /// Create a pool, or replace the one of the same name.
    PutPool(Pool),
    /// Delete a pool that nothing refers to.
    DeletePool(Name),
    /// Add a backend to a pool.
    AddBackend {
        /// The pool.
        pool: Name,
        /// The new backend; its address must be new to the pool.
        backend: Backend,
    },
    /// Remove a backend from a pool; its connections drain.
    RemoveBackend {
        /// The pool.
        pool: Name,
        /// The backend's address.
        address: SocketAddr,
    },
    /// Set a backend's administrative state (drain, enable, disable).
    SetBackendState {
        /// The pool.
        pool: Name,
        /// The backend's address.
        address: SocketAddr,
        /// The new state.
        state: AdminState,
    },
    /// Set a backend's weight.
    SetBackendWeight {
        /// The pool.
        pool: Name,
        /// The backend's address.
        address: SocketAddr,
        /// The new weight.
        weight: u32,
    },
    /// Create a rate-limit policy, or replace the one of the same name.
    PutRateLimit(RateLimitPolicy),
    /// Delete a rate-limit policy that nothing refers to.
    DeleteRateLimit(Name),
    /// A step of ACME certificate management (state kept beside the declared configuration).
    Acme(crate::acme::AcmeCommand),
}

/// The kinds of object a command can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectKind {
    /// A listener.
    Listener,
    /// A route of a listener.
    Route,
    /// A pool.
    Pool,
    /// A backend of a pool.
    Backend,
    /// A rate-limit policy.
    RateLimit,
    /// An https listener that gets its certificate by ACME.
    AcmeListener,
    /// An ACME account (named by its directory).
    AcmeAccount,
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ObjectKind::Listener => "listener",
            ObjectKind::Route => "route",
            ObjectKind::Pool => "pool",
            ObjectKind::Backend => "backend",
            ObjectKind::RateLimit => "rate limit",
            ObjectKind::AcmeListener => "ACME listener",
            ObjectKind::AcmeAccount => "ACME account for",
        })
    }
}

/// Why a command was rejected; the configuration is unchanged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ApplyError {
    /// The command names an object that does not exist.
    #[error("{kind} '{name}' does not exist")]
    NotFound {
        /// What kind of object.
        kind: ObjectKind,
        /// Its name (for a backend, `pool/address`).
        name: String,
    },
    /// The command would create an object that exists already.
    #[error("{kind} '{name}' already exists")]
    AlreadyExists {
        /// What kind of object.
        kind: ObjectKind,
        /// Its name (for a backend, `pool/address`).
        name: String,
    },
    /// The configuration the command would produce is invalid.
    #[error("the change would make the configuration invalid:\n{0}")]
    Invalid(Violations),
}

impl Config {
    /// Applies `command`: on success the revision goes up by one and is returned; on error
    /// nothing changes.
    pub fn apply(&mut self, command: &Command) -> Result<Revision, ApplyError> {
        if let Command::Acme(acme) = command {
            let mut state = self.acme.clone();
            state.change(&self.spec, acme)?;
            self.acme = state;
        } else {
            self.spec = self.spec.with(command)?;
            self.acme.retain_listeners(&self.spec);
        }
        self.revision += 1;
        Ok(self.revision)
    }
}

impl ClusterSpec {
    /// The configuration `command` would produce, validated; `self` is left as it was.
    pub fn with(&self, command: &Command) -> Result<ClusterSpec, ApplyError> {
        let mut next = self.clone();
        next.change(command)?;
        next.validate().map_err(ApplyError::Invalid)?;
        Ok(next)
    }

    fn change(&mut self, command: &Command) -> Result<(), ApplyError> {
        match command {
            Command::Apply(spec) => *self = spec.clone(),
            // Kept beside the declared configuration (`Config::apply`).
            Command::Acme(_) => {}
            Command::PutListener(listener) => {
                put(&mut self.listeners, listener.clone(), |l| &l.name)
            }
            Command::DeleteListener(name) => {
                delete(&mut self.listeners, name, |l| &l.name, ObjectKind::Listener)?
            }
            Command::PutRoute { listener, route } => {
                let listener =
                    find_mut(&mut self.listeners, listener, |l| &l.name, ObjectKind::Listener)?;
                put(&mut listener.routes, route.clone(), |r| &r.name);
            }
            Command::DeleteRoute { listener, route } => {
                let listener =
                    find_mut(&mut self.listeners, listener, |l| &l.name, ObjectKind::Listener)?;
                delete(&mut listener.routes, route, |r| &r.name, ObjectKind::Route)?;
            }
            Command::PutPool(pool) => put(&mut self.pools, pool.clone(), |p| &p.name),
            Command::DeletePool(name) => {
                delete(&mut self.pools, name, |p| &p.name, ObjectKind::Pool)?
            }
            Command::AddBackend { pool, backend } => {
                let pool = find_mut(&mut self.pools, pool, |p| &p.name, ObjectKind::Pool)?;
                if pool.backend(backend.address).is_some() {
                    return Err(ApplyError::AlreadyExists {
                        kind: ObjectKind::Backend,
                        name: format!("{}/{}", pool.name, backend.address),
                    });
                }
                pool.backends.push(backend.clone());
            }
            Command::RemoveBackend { pool, address } => {
                let pool = find_mut(&mut self.pools, pool, |p| &p.name, ObjectKind::Pool)?;
                let index = backend_index(pool, *address)?;
                pool.backends.remove(index);
            }
            Command::SetBackendState { pool, address, state } => {
                let pool = find_mut(&mut self.pools, pool, |p| &p.name, ObjectKind::Pool)?;
                let index = backend_index(pool, *address)?;
                pool.backends[index].state = *state;
            }
            Command::SetBackendWeight { pool, address, weight } => {
                let pool = find_mut(&mut self.pools, pool, |p| &p.name, ObjectKind::Pool)?;
                let index = backend_index(pool, *address)?;
                pool.backends[index].weight = *weight;
            }
            Command::PutRateLimit(policy) => {
                put(&mut self.rate_limits, policy.clone(), |p| &p.name)
            }
            Command::DeleteRateLimit(name) => {
                delete(&mut self.rate_limits, name, |p| &p.name, ObjectKind::RateLimit)?
            }
        }
        Ok(())
    }
}

/// Replaces the item of the same name in place (keeping its position), or appends it.
fn put<T>(items: &mut Vec<T>, item: T, name: impl Fn(&T) -> &Name) {
    match items.iter_mut().find(|existing| name(existing) == name(&item)) {
        Some(existing) => *existing = item,
        None => items.push(item),
    }
}

fn find_mut<'a, T>(
    items: &'a mut [T],
    wanted: &Name,
    name: impl Fn(&T) -> &Name,
    kind: ObjectKind,
) -> Result<&'a mut T, ApplyError> {
    items
        .iter_mut()
        .find(|item| name(item) == wanted)
        .ok_or_else(|| ApplyError::NotFound { kind, name: wanted.to_string() })
}

fn delete<T>(
    items: &mut Vec<T>,
    wanted: &Name,
    name: impl Fn(&T) -> &Name,
    kind: ObjectKind,
) -> Result<(), ApplyError> {
    let before = items.len();
    items.retain(|item| name(item) != wanted);
    if items.len() == before {
        return Err(ApplyError::NotFound { kind, name: wanted.to_string() });
    }
    Ok(())
}

fn backend_index(pool: &Pool, address: SocketAddr) -> Result<usize, ApplyError> {
    pool.backends.iter().position(|b| b.address == address).ok_or_else(|| ApplyError::NotFound {
        kind: ObjectKind::Backend,
        name: format!("{}/{}", pool.name, address),
    })
}
