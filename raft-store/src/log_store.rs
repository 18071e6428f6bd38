//! The Raft log and the Raft metadata (vote, committed log id, last purged log id) in sled.
//!
//! Entries live in one tree keyed by their index in big-endian, so sled's byte order is log
//! order; the metadata lives in a second tree. Every value goes through
//! [`fulcrum_model::codec`]. Every write is flushed to disk before openraft is told it is done:
//! a vote or an entry acknowledged to a peer must survive a crash. What was acknowledged is
//! also recorded in the directory's [`witness`](crate::witness), and checked on open.

// openraft's `StorageError` is large, and its traits return it: the helpers do too.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use fulcrum_model::codec;
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    AnyError, ErrorSubject, ErrorVerb, LogId, LogState, OptionalSend, RaftLogReader, StorageError,
    StorageIOError, Vote,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Failure;
use crate::types::{NodeId, TypeConfig};
use crate::witness::{Held, Record, WitnessFile};

type Entry = openraft::Entry<TypeConfig>;
type StorageResult<T> = Result<T, StorageError<NodeId>>;

/// The tree of log entries.
pub(crate) const LOG_TREE: &str = "raft_log";
/// The tree of the vote, the committed log id and the last purged log id.
pub(crate) const META_TREE: &str = "raft_log_meta";

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";

/// The Raft log and vote of one node. Clones share the same trees: openraft's replication
/// tasks read through clones while the Raft core writes.
#[derive(Clone)]
pub struct LogStore {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    witness: Arc<Mutex<WitnessFile>>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No counts: sled counts by scanning the whole tree.
        f.debug_struct("LogStore").finish_non_exhaustive()
    }
}

impl LogStore {
    /// Opens the log in `db` (in directory `dir`), finishes a purge a crash interrupted, and
    /// checks that the log holds everything the node acknowledged.
    pub(crate) fn load(db: &sled::Db, dir: &Path) -> Result<LogStore, Failure> {
        let log = db.open_tree(LOG_TREE).map_err(|e| Failure::Sled("open the log tree", e))?;
        let meta =
            db.open_tree(META_TREE).map_err(|e| Failure::Sled("open the log metadata tree", e))?;
        let (witness, witnessed) = WitnessFile::open(dir).map_err(Failure::Witness)?;
        let store = LogStore { db: db.clone(), log, meta, witness: Arc::new(Mutex::new(witness)) };
        let last_purged: Option<LogId<NodeId>> = match store.meta.get(KEY_LAST_PURGED) {
            Ok(Some(bytes)) => {
                codec::decode(&bytes).map_err(|e| Failure::Corrupt("the last purged log id", e))?
            }
            Ok(None) => None,
            Err(e) => return Err(Failure::Sled("read the last purged log id", e)),
        };
        // `purge` records the purged id before it deletes: a crash in between leaves entries
        // that no longer count. Delete them now so readers never see them.
        if let Some(purged) = last_purged {
            store
                .remove_range(..=index_key(purged.index))
                .map_err(|e| Failure::Sled("finish an interrupted purge", e))?;
        }
        let held =
            store.held(witnessed.and_then(|w| w.last_log).map(|id| id.index), last_purged)?;
        match witnessed {
            Some(record) => record.check(&held).map_err(Failure::Unacknowledged)?,
            // A new directory, or one from a build before the witness: start witnessing.
            None => store
                .lock_witness()
                .write(Record { vote: held.vote, last_log: held.last_log }, true)
                .map_err(Failure::Witness)?,
        }
        Ok(store)
    }

    /// What the database holds, for the witness's check.
    fn held(&self, index: Option<u64>, purged: Option<LogId<NodeId>>) -> Result<Held, Failure> {
        // A read that fails is an IO error (it may pass); bytes that do not decode are damage.
        let log_id = |read: sled::Result<Option<(sled::IVec, sled::IVec)>>, what| match read {
            Ok(Some((key, bytes))) => decode_entry(&key, &bytes)
                .map(|entry| Some(entry.log_id))
                .map_err(|e| Failure::Unacknowledged(format!("{what} does not decode: {e}"))),
            Ok(None) => Ok(None),
            Err(e) => Err(Failure::Sled(what, e)),
        };
        let vote = match self.meta.get(KEY_VOTE) {
            Ok(Some(bytes)) => {
                Some(codec::decode(&bytes).map_err(|e| Failure::Corrupt("the vote", e))?)
            }
            Ok(None) => None,
            Err(e) => return Err(Failure::Sled("read the vote", e)),
        };
        let at_witnessed_index = match index {
            Some(index) => {
                let read = self
                    .log
                    .get(index_key(index))
                    .map(|v| v.map(|v| (index_key(index).as_slice().into(), v)));
                log_id(read, "read the acknowledged log entry")?
            }
            None => None,
        };
        let last_entry = log_id(self.log.last(), "read the last log entry")?;
        Ok(Held { vote, last_log: last_entry.max(purged), at_witnessed_index, purged })
    }

    fn lock_witness(&self) -> std::sync::MutexGuard<'_, WitnessFile> {
        self.witness.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a change of what the node acknowledged: synced to disk when `durable` (a
    /// step back), else left to the page cache (see [`crate::witness`] on why that is safe).
    fn witness(&self, durable: bool, change: impl FnOnce(&mut Record)) -> io::Result<()> {
        let mut file = self.lock_witness();
        let mut record = file.record();
        change(&mut record);
        file.write(record, durable).map_err(io::Error::other)
    }

    /// The log id of the entry at `index`, if there is one.
    fn entry_id(&self, index: u64) -> StorageResult<Option<LogId<NodeId>>> {
        match self.log.get(index_key(index)) {
            Ok(Some(bytes)) => decode_entry(&index_key(index), &bytes).map(|e| Some(e.log_id)),
            Ok(None) => Ok(None),
            Err(e) => Err(StorageIOError::read_logs(AnyError::new(&e)).into()),
        }
    }

    /// Bytes the whole store directory (log and state machine) takes on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    fn read_meta<T: DeserializeOwned>(
        &self,
        key: &[u8],
        subject: ErrorSubject<NodeId>,
    ) -> StorageResult<Option<T>> {
        let read = |e: &(dyn std::error::Error + 'static)| {
            StorageIOError::new(subject.clone(), ErrorVerb::Read, AnyError::from_dyn(e, None))
        };
        let bytes = self.meta.get(key).map_err(|e| read(&e))?;
        Ok(bytes.map(|bytes| codec::decode(&bytes)).transpose().map_err(|e| read(&e))?)
    }

    async fn write_meta<T: Serialize>(
        &self,
        key: &[u8],
        value: &T,
        subject: ErrorSubject<NodeId>,
    ) -> StorageResult<()> {
        let write = |e: &(dyn std::error::Error + 'static)| {
            StorageIOError::new(subject.clone(), ErrorVerb::Write, AnyError::from_dyn(e, None))
        };
        let bytes = codec::encode(value).map_err(|e| write(&e))?;
        self.meta.insert(key, bytes).map_err(|e| write(&e))?;
        self.flush(subject).await
    }

    async fn flush(&self, subject: ErrorSubject<NodeId>) -> StorageResult<()> {
        match self.db.flush_async().await {
            Ok(_) => Ok(()),
            Err(e) => Err(StorageIOError::new(subject, ErrorVerb::Write, &e).into()),
        }
    }

    /// Removes the entries whose keys fall in `range`, atomically.
    fn remove_range<R: RangeBounds<[u8; 8]>>(&self, range: R) -> sled::Result<()> {
        let mut batch = sled::Batch::default();
        for item in self.log.range(range) {
            let (key, _) = item?;
            batch.remove(key);
        }
        self.log.apply_batch(batch)
    }

    fn last_entry_id(&self) -> StorageResult<Option<LogId<NodeId>>> {
        match self.log.last() {
            Ok(Some((key, bytes))) => decode_entry(&key, &bytes).map(|entry| Some(entry.log_id)),
            Ok(None) => Ok(None),
            Err(e) => Err(StorageIOError::read_logs(AnyError::new(&e)).into()),
        }
    }
}

/// The sled key of log index `index`: big-endian, so byte order is index order.
fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// Decodes the entry stored under `key`, and checks it is the entry for that index.
fn decode_entry(key: &[u8], bytes: &[u8]) -> StorageResult<Entry> {
    let index = <[u8; 8]>::try_from(key).map(u64::from_be_bytes).map_err(|_| {
        StorageIOError::read_logs(AnyError::error(format!("log key of {} bytes", key.len())))
    })?;
    let entry: Entry =
        codec::decode(bytes).map_err(|e| StorageIOError::read_log_at_index(index, &e))?;
    if entry.log_id.index != index {
        let problem = format!("entry {} stored under index {index}", entry.log_id);
        return Err(StorageIOError::read_log_at_index(index, AnyError::error(problem)).into());
    }
    Ok(entry)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry>> {
        let start = match range.start_bound() {
            Bound::Included(&start) => start,
            Bound::Excluded(&start) => match start.checked_add(1) {
                Some(start) => start,
                None => return Ok(Vec::new()),
            },
            Bound::Unbounded => 0,
        };
        // `None`: no upper bound.
        let end = match range.end_bound() {
            Bound::Included(&end) => end.checked_add(1),
            Bound::Excluded(&end) => Some(end),
            Bound::Unbounded => None,
        };
        let items = match end {
            Some(end) if end <= start => return Ok(Vec::new()),
            Some(end) => self.log.range(index_key(start)..index_key(end)),
            None => self.log.range(index_key(start)..),
        };
        items
            .map(|item| {
                let (key, bytes) =
                    item.map_err(|e| StorageIOError::read_logs(AnyError::new(&e)))?;
                decode_entry(&key, &bytes)
            })
            .collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId<NodeId>> =
            self.read_meta(KEY_LAST_PURGED, ErrorSubject::Logs)?.flatten();
        let last_entry = self.last_entry_id()?;
        // No entry at all (or none past the purge point): the last log id is the purged one.
        let last_log_id = last_entry.max(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        self.write_meta(KEY_VOTE, vote, ErrorSubject::Vote).await?;
        self.witness(false, |record| record.vote = Some(*vote))
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        self.read_meta(KEY_VOTE, ErrorSubject::Vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        self.write_meta(KEY_COMMITTED, &committed, ErrorSubject::Store).await
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(self.read_meta(KEY_COMMITTED, ErrorSubject::Store)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // One batch: a crash keeps all of the entries or none, never a hole.
        let mut batch = sled::Batch::default();
        let mut last = None;
        for entry in entries {
            let bytes = codec::encode(&entry)
                .map_err(|e| StorageIOError::write_log_entry(entry.log_id, &e))?;
            batch.insert(&index_key(entry.log_id.index), bytes);
            last = Some(entry.log_id);
        }
        self.log.apply_batch(batch).map_err(|e| StorageIOError::write_logs(&e))?;
        // The entries are readable now; they count as appended only once on disk, and the
        // witness names them only then.
        let mut flushed = self.db.flush_async().await.map(drop).map_err(io::Error::other);
        if let (Ok(()), Some(last)) = (&flushed, last) {
            flushed = self.witness(false, |record| record.last_log = Some(last));
        }
        callback.log_io_completed(flushed);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        // The witness steps back first: after a crash it must not name a removed entry.
        let before = match log_id.index.checked_sub(1) {
            Some(index) => self.entry_id(index)?,
            None => None,
        };
        let before = before.max(self.read_meta(KEY_LAST_PURGED, ErrorSubject::Logs)?.flatten());
        self.witness(true, |record| {
            if record.last_log.is_some_and(|last| last.index >= log_id.index) {
                record.last_log = before;
            }
        })
        .map_err(|e| StorageIOError::write_logs(&e))?;
        // Atomic (one batch), so no hole even if the process dies half-way.
        self.remove_range(index_key(log_id.index)..).map_err(|e| StorageIOError::write_logs(&e))?;
        self.flush(ErrorSubject::Logs).await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        // The purge point first and durably: after a crash the log must not claim entries
        // it has started to delete. `load` finishes the deletion.
        self.write_meta(KEY_LAST_PURGED, &Some(log_id), ErrorSubject::Logs).await?;
        self.remove_range(..=index_key(log_id.index))
            .map_err(|e| StorageIOError::write_logs(&e))?;
        self.flush(ErrorSubject::Logs).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use openraft::storage::RaftLogStorageExt;
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    fn log_id(index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    fn blank(index: u64) -> Entry {
        Entry { log_id: log_id(index), payload: EntryPayload::Blank }
    }

    #[tokio::test]
    async fn a_corrupt_entry_is_a_storage_error() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = crate::store::open(dir.path()).unwrap();
        log.blocking_append((1..=3).map(blank)).await.unwrap();
        log.log.insert(index_key(2), &b"\x01garbage"[..]).unwrap();
        log.log.insert(index_key(4), codec::encode(&blank(5)).unwrap()).unwrap();

        assert!(log.try_get_log_entries(1..=2).await.is_err());
        assert!(log.try_get_log_entries(4..5).await.is_err(), "entry 5 stored under index 4");
        assert!(log.get_log_state().await.is_err(), "the last entry is the misplaced one");
        assert_eq!(log.try_get_log_entries(1..2).await.unwrap(), vec![blank(1)]);
    }

    #[tokio::test]
    async fn an_interrupted_purge_is_finished_on_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut log, _) = crate::store::open(dir.path()).unwrap();
            log.blocking_append((1..=5).map(blank)).await.unwrap();
            // What a crash between recording the purge and deleting leaves.
            log.meta.insert(KEY_LAST_PURGED, codec::encode(&Some(log_id(3))).unwrap()).unwrap();
            log.db.flush_async().await.unwrap();
        }
        let (mut log, _) = crate::store::open(dir.path()).unwrap();
        assert_eq!(log.try_get_log_entries(..).await.unwrap(), vec![blank(4), blank(5)]);
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(3)));
        assert_eq!(state.last_log_id, Some(log_id(5)));
    }

    #[tokio::test]
    async fn odd_ranges_read_nothing_rather_than_panic() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = crate::store::open(dir.path()).unwrap();
        log.blocking_append((1..=3).map(blank)).await.unwrap();
        let (from, to) = (3, 1);
        assert!(log.try_get_log_entries(from..to).await.unwrap().is_empty());
        assert!(log.try_get_log_entries(2..2).await.unwrap().is_empty());
        assert_eq!(log.try_get_log_entries(3..=u64::MAX).await.unwrap(), vec![blank(3)]);
        let after_max = (std::ops::Bound::Excluded(u64::MAX), std::ops::Bound::Unbounded);
        assert!(log.try_get_log_entries(after_max).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn committed_and_vote_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut log, _) = crate::store::open(dir.path()).unwrap();
            assert_eq!(log.read_vote().await.unwrap(), None);
            assert_eq!(log.read_committed().await.unwrap(), None);
            log.save_vote(&Vote::new(4, 2)).await.unwrap();
            log.save_committed(Some(log_id(7))).await.unwrap();
        }
        let (mut log, _) = crate::store::open(dir.path()).unwrap();
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(4, 2)));
        assert_eq!(log.read_committed().await.unwrap(), Some(log_id(7)));
        assert!(log.size_on_disk() > 0);
    }
}
