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
//! The record and the check are values ([`Record`], [`Record::check`]); only [`WitnessFile`]
//! touches the disk.

use std::fs::File;
use std::io::Write;
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

impl Record {
    /// The file's bytes: the record (model codec), then its SHA-256.
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        let mut bytes = fulcrum_model::codec::encode(self)?;
        let digest = Sha256::digest(&bytes);
        bytes.extend_from_slice(&digest);
        Ok(bytes)
    }

    /// Reads what [`Record::encode`] wrote; `None` for bytes that are not such a record.
    pub fn decode(bytes: &[u8]) -> Option<Record> {
        let split = bytes.len().checked_sub(32)?;
        let (record, digest) = bytes.split_at(split);
        if Sha256::digest(record).as_slice() != digest {
            return None;
        }
        fulcrum_model::codec::decode(record).ok()
    }

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
    record: Record,
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
    /// The file is not a record this build wrote.
    #[error("{} is damaged (its checksum does not hold)", path.display())]
    Damaged {
        /// The file.
        path: PathBuf,
    },
}

impl WitnessFile {
    /// Reads the witness of `dir`; `None` as the record when there is no file yet (a new
    /// directory, or one written by a build before the witness).
    pub fn open(dir: &Path) -> Result<(WitnessFile, Option<Record>), WitnessError> {
        let path = dir.join(FILE_NAME);
        let record = match std::fs::read(&path) {
            Ok(bytes) => Some(
                Record::decode(&bytes)
                    .ok_or_else(|| WitnessError::Damaged { path: path.clone() })?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Err(WitnessError::Io { what: "read", path, source }),
        };
        Ok((WitnessFile { path, record: record.unwrap_or_default() }, record))
    }

    /// The record last written.
    pub fn record(&self) -> Record {
        self.record
    }

    /// Replaces the record on disk: written to a temporary file, synced, renamed over the
    /// old one and the directory synced, so a crash leaves the old record or the new one.
    pub fn write(&mut self, record: Record) -> Result<(), WitnessError> {
        if record == self.record && self.path.exists() {
            return Ok(());
        }
        let path = self.path.clone();
        let io = |what| {
            let path = path.clone();
            move |source| WitnessError::Io { what, path, source }
        };
        let temporary = self.path.with_extension("new");
        let mut file = File::create(&temporary).map_err(io("create a temporary file beside"))?;
        let bytes = record
            .encode()
            .map_err(|source| WitnessError::Encode { path: self.path.clone(), source })?;
        file.write_all(&bytes).map_err(io("write"))?;
        file.sync_all().map_err(io("sync"))?;
        std::fs::rename(&temporary, &self.path).map_err(io("replace"))?;
        if let Some(dir) = self.path.parent() {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io("sync the directory of"))?;
        }
        self.record = record;
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
    fn a_record_round_trips_and_any_flipped_bit_is_noticed() {
        let bytes = witnessed(5, 42).encode().expect("encodes");
        assert_eq!(Record::decode(&bytes), Some(witnessed(5, 42)));
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(Record::decode(&flipped), None, "bit {bit}");
        }
        assert_eq!(Record::decode(&bytes[..bytes.len() - 1]), None);
        assert_eq!(Record::decode(b""), None);
    }
}
