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
///
/// A damaged directory is an error, never a panic: sled panics on some damage
/// (spacejam/sled#1387), and that panic is caught here and reported.
pub fn open(dir: &Path) -> Result<(LogStore, StateMachineStore), StoreError> {
    let opened = std::panic::catch_unwind(|| sled::Config::new().path(dir).open());
    let db = match opened {
        Ok(opened) => {
            opened.map_err(|source| StoreError::Open { dir: dir.to_path_buf(), source })?
        }
        Err(panic) => {
            let problem = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("no message");
            return Err(StoreError::Damaged {
                dir: dir.to_path_buf(),
                problem: format!("sled failed opening it ({problem})"),
            });
        }
    };
    let log = LogStore::load(&db).map_err(|f| f.in_dir(dir))?;
    let state_machine = StateMachineStore::load(&db).map_err(|f| f.in_dir(dir))?;
    Ok((log, state_machine))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, EntryPayload, LogId};

    use super::*;

    #[tokio::test]
    async fn a_directory_of_garbage_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let (_, mut state_machine) = open(dir.path()).unwrap();
        let blank = openraft::Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), 1),
            payload: EntryPayload::Blank,
        };
        state_machine.apply([blank]).await.unwrap();
        drop(state_machine);
        let mut overwritten = 0;
        let mut rng = fastrand::Rng::with_seed(7);
        for entry in walk(dir.path()) {
            let length = std::fs::metadata(&entry).unwrap().len() as usize;
            let garbage: Vec<u8> = std::iter::repeat_with(|| rng.u8(..)).take(length).collect();
            std::fs::write(&entry, garbage).unwrap();
            overwritten += 1;
        }
        assert!(overwritten > 0, "sled wrote no file");
        let opened = std::panic::catch_unwind(|| open(dir.path()).map(drop));
        let error = opened.expect("open must not panic").unwrap_err();
        assert!(error.to_string().contains(&dir.path().display().to_string()), "{error}");
    }

    fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files.extend(walk(&path));
            } else {
                files.push(path);
            }
        }
        files
    }
}
