//! Fulcrum's replicated configuration store: fulcrum-model's `Config` replicated through Raft
//! (openraft on sled).
//!
//! It owns the openraft type configuration, the sled log and state machine, snapshots, the
//! authenticated Raft RPC transport and the watch of the applied configuration. It is the only
//! crate, with fulcrum-model, that defines what is persisted; it never moves traffic.
//!
//! # Layout
//!
//! - [`types`]: the openraft type configuration, [`Request`] and [`Response`].
//! - `error`: [`StoreError`] and the loaders' failures, when a data directory cannot be opened.
//! - [`log_store`]: the Raft log and vote in sled.
//! - [`state_machine`]: the applied `Config` in sled, snapshots, and the watch.
//! - `store`: [`open`], which opens both from one data directory.
//! - [`rpc`]: the RPC paths and the signature every request carries.
//! - [`network`]: the RPC client, openraft's network factory.
//! - [`port`]: connection limits and refusal logs for ports that face the network.
//! - [`tls`]: mutual TLS between nodes, and the cluster CA and node certificates it needs.
//! - `shared`: the state the RPC server serves from, and the leader's side of forwarded calls.
//! - `server`: the RPC server.
//! - `cluster`: [`ConfigStore`], one running node: writes, reads, watch, membership, metrics.

mod cluster;
mod error;
pub mod log_store;
pub mod network;
pub mod port;
pub mod rpc;
mod server;
mod shared;
pub mod state_machine;
mod store;
pub mod tls;
pub mod types;
pub mod witness;

pub use cluster::{ConfigStore, RaftTiming, ReadError, StoreSettings, WriteError};
pub use error::StoreError;
pub use network::CallError;
pub use rpc::MIN_SECRET_BYTES;
pub use shared::{MembershipError, PeerHandler};
pub use store::open;
pub use types::{Applied, IdempotencyKey, NodeId, Raft, Request, Response, TypeConfig};
