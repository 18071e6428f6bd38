//! Opening a node's data directory: one sled database holding both the Raft log
//! ([`LogStore`]) and the state machine ([`StateMachineStore`]).

use std::path::Path;

use crate::error::StoreError;
use crate::log_store::LogStore;
use crate::state_machine::StateMachineStore;

/// Opens (or creates) the Raft log and state machine stored in `dir`.
///
/// The state machine comes back as it was last applied: it is flushed in every apply, so
/// nothing needs replaying; openraft re-applies the committed entries after it.
pub fn open(dir: &Path) -> Result<(LogStore, StateMachineStore), StoreError> {
    let db = sled::Config::new()
        .path(dir)
        .open()
        .map_err(|source| StoreError::Open { dir: dir.to_path_buf(), source })?;
    let log = LogStore::load(&db).map_err(|f| f.in_dir(dir))?;
    let state_machine = StateMachineStore::load(&db).map_err(|f| f.in_dir(dir))?;
    Ok((log, state_machine))
}
