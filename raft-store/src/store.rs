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
    let log = LogStore::load(&db, dir).map_err(|f| f.in_dir(dir))?;
    let state_machine = StateMachineStore::load(&db).map_err(|f| f.in_dir(dir))?;
    Ok((log, state_machine))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
    use openraft::{CommittedLeaderId, EntryPayload, LogId, Vote};

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

    /// `attempt` again while it fails on sled's lock (for up to 5 s): sled ends an
    /// asynchronous flush on a thread of its own, which holds the database a moment after the
    /// last handle is dropped. Any other outcome is returned as it is.
    fn when_unlocked<T, E: std::fmt::Display>(attempt: impl Fn() -> Result<T, E>) -> Result<T, E> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match attempt() {
                Err(e)
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                outcome => return outcome,
            }
        }
    }

    fn reopen(dir: &Path) -> Result<(LogStore, StateMachineStore), StoreError> {
        when_unlocked(|| open(dir))
    }

    fn blank(term: u64, index: u64) -> openraft::Entry<crate::TypeConfig> {
        openraft::Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    /// Copies the database's files (not the witness) from `from` to `to`.
    fn copy_database(from: &Path, to: &Path) {
        for file in walk(from) {
            if file.file_name().is_some_and(|n| n == crate::witness::FILE_NAME) {
                continue;
            }
            let target = to.join(file.strip_prefix(from).unwrap());
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            std::fs::copy(&file, &target).unwrap();
        }
    }

    #[tokio::test]
    async fn a_store_that_lost_what_it_acknowledged_is_refused_with_the_way_out() {
        let (dir, earlier) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        {
            let (mut log, _) = reopen(dir.path()).unwrap();
            log.blocking_append((1..=3).map(|i| blank(1, i))).await.unwrap();
        }
        copy_database(dir.path(), earlier.path());
        {
            let (mut log, _) = reopen(dir.path()).unwrap();
            log.save_vote(&Vote::new(2, 1)).await.unwrap();
            log.blocking_append((4..=6).map(|i| blank(2, i))).await.unwrap();
        }
        // The database goes back to an earlier state, as a disk that lost its last writes
        // leaves it; it opens without complaint, but the witness remembers.
        for file in walk(dir.path()) {
            if file.file_name().is_some_and(|n| n != crate::witness::FILE_NAME) {
                std::fs::remove_file(file).unwrap();
            }
        }
        copy_database(earlier.path(), dir.path());
        let error = reopen(dir.path()).map(drop).unwrap_err();
        assert!(matches!(error, StoreError::Damaged { .. }), "{error}");
        let message = error.to_string();
        assert!(message.contains("acknowledged a vote in term 2"), "{message}");
        assert!(message.contains("rejoin the node from its peers"), "{message}");

        // Only the vote restored: the missing entries are named.
        {
            let sled = when_unlocked(|| sled::open(dir.path())).unwrap();
            let meta = sled.open_tree(crate::log_store::META_TREE).unwrap();
            meta.insert(b"vote", fulcrum_model::codec::encode(&Vote::<u64>::new(2, 1)).unwrap())
                .unwrap();
            sled.flush().unwrap();
        }
        let message = reopen(dir.path()).map(drop).unwrap_err().to_string();
        assert!(message.contains("acknowledged log entry 6 (term 2)"), "{message}");
        assert!(message.contains("ends at entry 3"), "{message}");
    }

    #[tokio::test]
    async fn a_truncated_log_and_a_directory_without_a_witness_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut log, _) = reopen(dir.path()).unwrap();
            log.blocking_append((1..=5).map(|i| blank(1, i))).await.unwrap();
            // A new leader overwrites entries 4 and 5 that never committed.
            log.truncate(LogId::new(CommittedLeaderId::new(1, 1), 4)).await.unwrap();
        }
        {
            let (mut log, _) = reopen(dir.path()).unwrap();
            log.blocking_append([blank(2, 4)]).await.unwrap();
        }
        drop(reopen(dir.path()).unwrap());
        // A directory written before the witness existed is trusted once, then witnessed.
        let witness = dir.path().join(crate::witness::FILE_NAME);
        std::fs::remove_file(&witness).unwrap();
        drop(reopen(dir.path()).unwrap());
        let (record, _) = crate::witness::WitnessFile::open(dir.path()).unwrap();
        assert_eq!(record.record().last_log.map(|id| (id.leader_id.term, id.index)), Some((2, 4)));
    }

    #[tokio::test]
    async fn a_damaged_witness_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(reopen(dir.path()).unwrap());
        let witness = dir.path().join(crate::witness::FILE_NAME);
        let mut bytes = std::fs::read(&witness).unwrap();
        // Every slot damaged (one is a crash's tear; see the witness's own tests).
        for slot in bytes.chunks_mut(crate::witness::SLOT_BYTES) {
            slot[10] ^= 0x40;
        }
        std::fs::write(&witness, bytes).unwrap();
        let message = reopen(dir.path()).map(drop).unwrap_err().to_string();
        assert!(message.contains("no record in it checks out"), "{message}");
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
