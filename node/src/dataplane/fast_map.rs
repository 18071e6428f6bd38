//! The hash map of the data path's per-request lookups keyed by what the cluster's
//! configuration names (pools, policies, backends), never by what a client chooses: hashed
//! with FxHash, as SipHash's defence against chosen keys is needless there (it was about 2 %
//! of a keep-alive request's instructions). Not for local addresses: on a wildcard listener
//! the client chooses the address it connects to.

use std::collections::HashMap;

/// A `HashMap` hashed with FxHash.
pub(crate) type FastMap<K, V> = HashMap<K, V, rustc_hash::FxBuildHasher>;
