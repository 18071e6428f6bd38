//! The errors of loading a data directory: [`StoreError`], which names the directory, and
//! [`Failure`], what the log and state-machine loaders report before the directory is known.
//! A leaf, so `store` and the two loaders use them without importing one another.

use std::path::{Path, PathBuf};

use fulcrum_model::codec::CodecError;

use crate::witness::WitnessError;

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
    /// The directory is damaged: sled could not open it, or something the node acknowledged
    /// is missing. Serving from it could lose committed changes.
    #[error(
        "the Raft store in {} is damaged: {problem}. Move the directory aside and rejoin the \
         node from its peers (fulcrumctl member remove, then member add; see the operator \
         guide, \"A node that lost its directory\")",
        dir.display()
    )]
    Damaged {
        /// The data directory.
        dir: PathBuf,
        /// What is wrong.
        problem: String,
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
    /// The witness of what the node acknowledged could not be read or written.
    #[error("cannot keep the record of what this node acknowledged: {0}")]
    Witness(WitnessError),
}

/// What went wrong while loading, before the directory is known to name it.
#[derive(Debug)]
pub(crate) enum Failure {
    /// sled failed doing this.
    Sled(&'static str, sled::Error),
    /// This did not decode.
    Corrupt(&'static str, CodecError),
    /// This is missing though the store says it was written.
    Missing(&'static str),
    /// Something the node acknowledged is missing (the witness's check).
    Unacknowledged(String),
    /// The witness file failed.
    Witness(WitnessError),
}

impl Failure {
    /// The error opening `dir` reports for this failure.
    pub(crate) fn in_dir(self, dir: &Path) -> StoreError {
        let dir = dir.to_path_buf();
        match self {
            Failure::Sled(what, source) => StoreError::Io { dir, what, source },
            Failure::Corrupt(what, source) => StoreError::Corrupt { dir, what, source },
            Failure::Missing(what) => {
                StoreError::Damaged { dir, problem: format!("{what} is missing") }
            }
            Failure::Unacknowledged(problem) => StoreError::Damaged { dir, problem },
            Failure::Witness(error @ WitnessError::Damaged { .. }) => {
                StoreError::Damaged { dir, problem: error.to_string() }
            }
            Failure::Witness(error) => StoreError::Witness(error),
        }
    }
}
