//! openraft's own storage test suite, run against the sled log and state machine.

#![allow(clippy::unwrap_used)]

use fulcrum_raft_store::TypeConfig;
use fulcrum_raft_store::log_store::LogStore;
use fulcrum_raft_store::state_machine::StateMachineStore;
use openraft::testing::{StoreBuilder, Suite};
use openraft::{AnyError, StorageError, StorageIOError};
use tempfile::TempDir;

/// Opens a fresh store in a new temporary directory; the directory lives as long as the
/// guard the suite keeps.
struct FreshStore;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for FreshStore {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<u64>> {
        let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(&e))?;
        let (log, state_machine) = fulcrum_raft_store::open(dir.path())
            .map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
        Ok((dir, log, state_machine))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(FreshStore).unwrap();
}
