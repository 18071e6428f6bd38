//! Fulcrum's replicated configuration store: fulcrum-model's `Config` replicated through Raft
//! (openraft on sled).
//!
//! It owns the openraft type configuration, the sled log and state machine, snapshots, the
//! authenticated Raft RPC transport and the watch of the applied configuration. It is the only
//! crate, with fulcrum-model, that defines what is persisted; it never moves traffic.
//!
//! # Layout
//! - [`types`]: the openraft type configuration, [`Request`] and [`Response`].
//! - [`log_store`]: the Raft log and vote in sled.
//! - [`state_machine`]: the applied `Config` in sled, snapshots, and the watch.
//! - [`open`]: opens both from one data directory.
//! - [`rpc`]: the RPC paths and the signature every request carries.
//! - [`network`]: the RPC client, openraft's network factory.
//! - `server`: the RPC server.
//! - [`cluster`]: [`ConfigStore`], one running node: writes from any node, local and
//!   linearizable reads, the watch, membership, metrics.

pub mod cluster;
pub mod log_store;
pub mod network;
pub mod rpc;
mod server;
pub mod state_machine;
mod store;
pub mod types;

pub use cluster::{ConfigStore, MembershipError, PeerHandler, RaftTiming, StoreSettings};
pub use store::{StoreError, open};
pub use types::{Applied, IdempotencyKey, NodeId, Raft, Request, Response, TypeConfig};
