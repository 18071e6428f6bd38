//! Fulcrum's replicated configuration store: fulcrum-model's `Config` replicated through Raft.
//!
//! It will own the openraft type configuration, the sled log and state machine, snapshots,
//! the authenticated Raft RPC transport and the watch of the applied configuration. It is the
//! only crate, with fulcrum-model, that defines what is persisted; it never moves traffic.
