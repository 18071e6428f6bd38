//! Fulcrum's replicated configuration: what the cluster agrees on through Raft.
//!
//! This crate owns the schema (listeners, pools, backends, routes, rate-limit policies, health
//! checks), the [`Command`]s that change it, the validation that keeps it consistent, the TOML
//! form people write ([`file`]) and the compact binary form of the Raft log ([`codec`]).
//!
//! It never does IO and never reads a clock: every function here is a pure transformation of
//! values, so every node that applies the same commands reaches the same [`Config`].

pub mod acme;
pub mod api;
pub mod codec;
pub mod command;
pub mod config;
pub mod diff;
pub mod duration;
pub mod file;
pub mod name;
pub mod validate;

pub use command::{ApplyError, Command};
pub use config::*;
pub use name::{InvalidName, Name};
pub use validate::{Violation, Violations};
