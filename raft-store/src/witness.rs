//! The witness of what a node acknowledged: its last vote and the id of the last log entry
//! it told a leader was on disk, kept in a small checksummed file beside the sled database
//! and checked when the store opens.
//!
//! A damaged database can open without complaint and be missing its last writes (its files
//! truncated, or put back from an older copy). Raft's safety rests on every acknowledged
//! entry and vote surviving, so a node that forgot them could vote twice in a term or help
//! elect a leader without a committed change. The witness is written after sled flushed
//! and before openraft is told, so it never claims more than the database held; on open the
//! database must hold at least what the witness names. It shares the directory, so a
//! rollback of the whole directory (a reverted VM snapshot) takes it back too, undetected.
//!
//! The file holds two slots, written in turn, each a numbered record with its SHA-256; the
//! newest slot that checks out is the record. A record that only rises (a new vote, entries
//! appended) is not synced: written after the database's own flush, a record lost or torn by
//! a crash only names less (the other slot, older, still checks out) and never more than the
//! database holds. That keeps the Raft write path at one fsync, the database's. A record
//! that steps back (before entries are truncated) is synced before the database changes, so
//! after a crash it cannot name what the database removed.
//!
//! The record and the check are values ([`Record`], [`Record::check`], [`encode_slot`],
//! [`decode_slot`]); only [`WitnessFile`] touches the disk.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use fulcrum_model::codec::CodecError;
use openraft::{LogId, Vote};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::types::NodeId;

/// The file's name in the data directory.
pub const FILE_NAME: &str = "fulcrum-acknowledged";

/// What the node acknowledged: nothing may be missing from its store after a restart.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The last vote saved.
    pub vote: Option<Vote<NodeId>>,
    /// The last log entry acknowledged as on disk.
    pub last_log: Option<LogId<NodeId>>,
}

/// What the database holds, as far as the check needs it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Held {
    /// The vote in the database.
    pub vote: Option<Vote<NodeId>>,
    /// The last log id: the last entry's, or the purge point's if no entry is past it.
    pub last_log: Option<LogId<NodeId>>,
    /// The log id of the entry at the witnessed index, if the database has that entry.
    pub at_witnessed_index: Option<LogId<NodeId>>,
    /// The last purged log id.
    pub purged: Option<LogId<NodeId>>,
}

/// Bytes per slot; a slot's record is far smaller.
pub const SLOT_BYTES: usize = 128;

/// One slot: the length of the encoded `(sequence, record)`, those bytes, their SHA-256, and
/// zeros up to [`SLOT_BYTES`].
pub fn encode_slot(sequence: u64, record: &Record) -> Result<[u8; SLOT_BYTES], CodecError> {
    let bytes = fulcrum_model::codec::encode(&(sequence, record))?;
    let mut slot = [0u8; SLOT_BYTES];
    let end = 2 + bytes.len() + 32;
    if end > SLOT_BYTES {
        return Err(CodecError::TooLarge(end));
    }
    slot[..2].copy_from_slice(&(bytes.len() as u16).to_be_bytes());
    slot[2..2 + bytes.len()].copy_from_slice(&bytes);
    slot[2 + bytes.len()..end].copy_from_slice(&Sha256::digest(&bytes));
    Ok(slot)
}

/// Reads what [`encode_slot`] wrote: the sequence number and the record; `None` for bytes
/// that are not such a slot (never written, torn, damaged).
pub fn decode_slot(slot: &[u8]) -> Option<(u64, Record)> {
    let length = usize::from(u16::from_be_bytes([*slot.first()?, *slot.get(1)?]));
    let bytes = slot.get(2..2 + length)?;
    let digest = slot.get(2 + length..2 + length + 32)?;
    if length == 0 || Sha256::digest(bytes).as_slice() != digest {
        return None;
    }
    fulcrum_model::codec::decode(bytes).ok()
}

impl Record {
    /// Checks that the database holds everything this record names; the error says what is
    /// missing.
    pub fn check(&self, held: &Held) -> Result<(), String> {
        if let Some(vote) = self.vote
            && !held.vote.is_some_and(|held| held >= vote)
        {
            return Err(format!(
                "the node acknowledged a vote in term {} but the store holds {}",
                vote.leader_id.term,
                held.vote.map_or("no vote".into(), |v| format!("one of term {}", v.leader_id.term))
            ));
        }
        let Some(acknowledged) = self.last_log else { return Ok(()) };
        let purged_past = held.purged.is_some_and(|p| p.index >= acknowledged.index);
        let entry_matches = held.at_witnessed_index == Some(acknowledged);
        if purged_past || entry_matches {
            return Ok(());
        }
        Err(format!(
            "the node acknowledged log entry {} (term {}) but the store {}",
            acknowledged.index,
            acknowledged.leader_id.term,
            match (held.at_witnessed_index, held.last_log) {
                (Some(other), _) => format!("holds term {} at that index", other.leader_id.term),
                (None, Some(last)) => format!("ends at entry {}", last.index),
                (None, None) => "holds no entry".into(),
            }
        ))
    }
}

/// The witness file of one data directory, and the record last written to it.
#[derive(Debug)]
pub struct WitnessFile {
    path: PathBuf,
    file: File,
    record: Record,
    /// The sequence number of the record last written; the next goes in the other slot.
    sequence: u64,
}

/// Why the witness could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    /// Reading or writing the file failed.
    #[error("cannot {what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The system's error.
        source: std::io::Error,
    },
    /// The record did not encode.
    #[error("cannot encode the record for {}: {source}", path.display())]
    Encode {
        /// The file.
        path: PathBuf,
        /// The codec's error.
        source: CodecError,
    },
    /// Neither slot of the file holds a record this build wrote.
    #[error("{} is damaged (no record in it checks out)", path.display())]
    Damaged {
        /// The file.
        path: PathBuf,
    },
}

impl WitnessFile {
    /// Opens (or creates) the witness of `dir`; `None` as the record when it held none yet (a
    /// new directory, or one written by a build before the witness).
    pub fn open(dir: &Path) -> Result<(WitnessFile, Option<Record>), WitnessError> {
        let path = dir.join(FILE_NAME);
        let io = |what| {
            let path = path.clone();
            move |source| WitnessError::Io { what, path, source }
        };
        let existed = path.exists();
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io("open"))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io("read"))?;
        let newest = bytes.chunks(SLOT_BYTES).filter_map(decode_slot).max_by_key(|(n, _)| *n);
        let (sequence, record) = match (newest, existed && !bytes.is_empty()) {
            (Some((sequence, record)), _) => (sequence, Some(record)),
            (None, true) => return Err(WitnessError::Damaged { path }),
            (None, false) => (0, None),
        };
        let witness = WitnessFile { path, file, record: record.unwrap_or_default(), sequence };
        Ok((witness, record))
    }

    /// The record last written.
    pub fn record(&self) -> Record {
        self.record
    }

    /// Writes `record` into the slot not holding the newest one; synced to disk only when
    /// `durable` (see the module's documentation for when that is needed).
    pub fn write(&mut self, record: Record, durable: bool) -> Result<(), WitnessError> {
        if record == self.record && self.sequence > 0 {
            return Ok(());
        }
        let sequence = self.sequence + 1;
        let slot = encode_slot(sequence, &record)
            .map_err(|source| WitnessError::Encode { path: self.path.clone(), source })?;
        let offset = (sequence % 2) * SLOT_BYTES as u64;
        let io = |what| {
            let path = self.path.clone();
            move |source| WitnessError::Io { what, path, source }
        };
        self.file.write_all_at(&slot, offset).map_err(io("write"))?;
        if durable {
            self.file.sync_data().map_err(io("sync"))?;
        }
        (self.record, self.sequence) = (record, sequence);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    fn log_id(term: u64, index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn witnessed(term: u64, index: u64) -> Record {
        Record { vote: Some(Vote::new(term, 1)), last_log: Some(log_id(term, index)) }
    }

    fn holding(term: u64, last: u64, at: Option<LogId<NodeId>>) -> Held {
        Held {
            vote: Some(Vote::new(term, 1)),
            last_log: Some(log_id(term, last)),
            at_witnessed_index: at,
            purged: None,
        }
    }

    #[test]
    fn a_store_holding_what_was_acknowledged_passes() {
        assert_eq!(witnessed(2, 6).check(&holding(2, 6, Some(log_id(2, 6)))), Ok(()));
        assert_eq!(witnessed(2, 6).check(&holding(3, 9, Some(log_id(2, 6)))), Ok(()));
        assert_eq!(Record::default().check(&Held::default()), Ok(()));
    }

    #[test]
    fn a_store_missing_acknowledged_entries_or_votes_fails_naming_them() {
        let short = witnessed(2, 6).check(&holding(2, 3, None)).unwrap_err();
        assert!(short.contains("entry 6") && short.contains("ends at entry 3"), "{short}");
        let empty = witnessed(2, 6).check(&Held::default()).unwrap_err();
        assert!(empty.contains("term 2") && empty.contains("no vote"), "{empty}");
        let rewritten = witnessed(2, 6).check(&holding(2, 6, Some(log_id(1, 6)))).unwrap_err();
        assert!(rewritten.contains("holds term 1 at that index"), "{rewritten}");
        let older_vote = Held { vote: Some(Vote::new(1, 1)), ..holding(2, 6, Some(log_id(2, 6))) };
        assert!(witnessed(2, 6).check(&older_vote).unwrap_err().contains("one of term 1"));
    }

    #[test]
    fn entries_purged_into_a_snapshot_still_count_as_held() {
        let held =
            Held { purged: Some(log_id(2, 8)), at_witnessed_index: None, ..holding(2, 8, None) };
        assert_eq!(witnessed(2, 6).check(&held), Ok(()));
    }

    #[test]
    fn a_slot_round_trips_and_any_flipped_bit_is_noticed() {
        let slot = encode_slot(7, &witnessed(5, 42)).expect("encodes");
        assert_eq!(decode_slot(&slot), Some((7, witnessed(5, 42))));
        let used = 2 + usize::from(u16::from_be_bytes([slot[0], slot[1]])) + 32;
        for bit in 0..used * 8 {
            let mut flipped = slot;
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(decode_slot(&flipped), None, "bit {bit}");
        }
        assert_eq!(decode_slot(&[0u8; SLOT_BYTES]), None, "a slot never written");
        assert_eq!(decode_slot(&slot[..used - 1]), None, "a torn slot");
    }

    #[test]
    fn the_newest_slot_that_checks_out_is_the_record() {
        let dir = tempfile::tempdir().expect("a directory");
        let (mut witness, none) = WitnessFile::open(dir.path()).expect("opens");
        assert_eq!(none, None);
        for index in 1..=5 {
            witness.write(witnessed(2, index), false).expect("written");
        }
        drop(witness);
        let (_, newest) = WitnessFile::open(dir.path()).expect("opens");
        assert_eq!(newest, Some(witnessed(2, 5)));
        // The newest slot torn by a crash: the other, one write older, is the record.
        let path = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).expect("readable");
        bytes[SLOT_BYTES + 10] ^= 0xff;
        std::fs::write(&path, &bytes).expect("writable");
        let (_, older) = WitnessFile::open(dir.path()).expect("opens");
        assert_eq!(older, Some(witnessed(2, 4)));
        // Both damaged: refused.
        bytes[10] ^= 0xff;
        std::fs::write(&path, &bytes).expect("writable");
        assert!(matches!(WitnessFile::open(dir.path()), Err(WitnessError::Damaged { .. })));
    }
}
