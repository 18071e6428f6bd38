//! Opening a node's data directory: one sled database holding both the Raft log
//! ([`LogStore`]) and the state machine ([`StateMachineStore`]), and the errors opening it
//! can give.

use std::path::{Path, PathBuf};

use fulcrum_model::codec::CodecError;

use crate::log_store::LogStore;
use crate::state_machine::StateMachineStore;

/// Why the data directory could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled could not open the directory (missing permission, locked by another process...).
    #[error("cannot open the Raft store in {}: {source}", dir.display())]
    Open {
        /// The data directory.
        dir: PathBuf,
        /// sled's error.
        source: sled::Error,
    },
    /// sled failed while loading what the directory holds.
    #[error("cannot {what} in the Raft store in {}: {source}", dir.display())]
    Io {
        /// The data directory.
        dir: PathBuf,
        /// What was being done.
        what: &'static str,
        /// sled's error.
        source: sled::Error,
    },
    /// Stored bytes do not decode: the directory is damaged or written by another version.
    #[error("corrupt data in the Raft store in {}: {what}: {source}", dir.display())]
    Corrupt {
        /// The data directory.
        dir: PathBuf,
        /// What did not decode.
        what: &'static str,
        /// The codec's error.
        source: CodecError,
    },
}

/// What went wrong while loading, before the directory is known to name it.
#[derive(Debug)]
pub(crate) enum Failure {
    /// sled failed doing this.
    Sled(&'static str, sled::Error),
    /// This did not decode.
    Corrupt(&'static str, CodecError),
}

impl Failure {
    fn in_dir(self, dir: &Path) -> StoreError {
        let dir = dir.to_path_buf();
        match self {
            Failure::Sled(what, source) => StoreError::Io { dir, what, source },
            Failure::Corrupt(what, source) => StoreError::Corrupt { dir, what, source },
        }
    }
}

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
