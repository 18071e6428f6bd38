//! A linearizability checker for a history of reads and writes of one register, as the
//! chaos suite records them: Wing and Gong's search with Lowe's memoisation (the algorithm of
//! Knossos and Porcupine), pure and tested without a cluster.
//!
//! An operation has the time it was called and, if its outcome is known, the time it
//! returned. A write whose outcome is unknown (a timeout, a lost answer) may have taken
//! effect at any moment after its call, or never; a read whose outcome is unknown tells
//! nothing and is left out. The history is linearizable when every completed operation can
//! be put at one instant between its call and its return, in an order in which each read
//! returns the value of the last write before it.

use std::collections::HashSet;
use std::time::Duration;

/// What an operation did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Wrote the value.
    Write(u64),
    /// Read the value (`None`: the register was never written).
    Read(Option<u64>),
}

/// One operation of the history, with times from one clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// What it did.
    pub op: Op,
    /// When it was called.
    pub call: Duration,
    /// When it returned, if its outcome is known.
    pub ret: Option<Duration>,
}

/// Why a history is not linearizable: the longest prefix of completed operations that could
/// be ordered, and the first operation that could not follow it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// How many completed operations were ordered at best.
    pub ordered: usize,
    /// An operation that could not be placed after them.
    pub stuck_at: Entry,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "not linearizable: after {} operations in order, {:?} (called at {:?}, returned at {:?}) fits nowhere",
            self.ordered, self.stuck_at.op, self.stuck_at.call, self.stuck_at.ret
        )
    }
}

/// Whether `history` is linearizable for a register that starts unwritten; `budget` bounds
/// the states the search may visit (an exhausted budget is reported as an error, not as a
/// verdict).
pub fn check(history: &[Entry], budget: usize) -> Result<Result<(), Violation>, String> {
    // Reads whose outcome is unknown say nothing.
    let mut entries: Vec<Entry> = history
        .iter()
        .copied()
        .filter(|e| !(matches!(e.op, Op::Read(_)) && e.ret.is_none()))
        .collect();
    entries.sort_by_key(|e| e.call);
    let count = entries.len();
    let completed: Vec<usize> = (0..count).filter(|&i| entries[i].ret.is_some()).collect();
    let mut search = Search {
        entries: &entries,
        done: vec![0; count.div_ceil(64)],
        seen: HashSet::new(),
        budget,
        best: (0, None),
    };
    let remaining = completed.len();
    match search.step(None, remaining) {
        Some(true) => Ok(Ok(())),
        Some(false) => {
            let (ordered, stuck) = search.best;
            let stuck_at = stuck.map(|i| entries[i]).or_else(|| entries.first().copied());
            match stuck_at {
                Some(stuck_at) => Ok(Err(Violation { ordered, stuck_at })),
                None => Ok(Ok(())),
            }
        }
        None => Err(format!("the search visited {budget} states without a verdict")),
    }
}

struct Search<'a> {
    entries: &'a [Entry],
    /// Which operations are linearized on the current path, a bit each.
    done: Vec<u64>,
    /// States already explored: (linearized set, register value).
    seen: HashSet<(Vec<u64>, Option<u64>)>,
    budget: usize,
    /// The most completed operations ordered on any path, and an operation that could not
    /// follow there.
    best: (usize, Option<usize>),
}

impl Search<'_> {
    fn is_done(&self, i: usize) -> bool {
        self.done[i / 64] & (1 << (i % 64)) != 0
    }

    fn flip(&mut self, i: usize) {
        self.done[i / 64] ^= 1 << (i % 64);
    }

    /// Tries every operation that may come next from `value` with `remaining` completed
    /// operations still to order: `Some(true)` if one order places them all, `Some(false)` if
    /// none does, `None` when the budget ran out.
    fn step(&mut self, value: Option<u64>, remaining: usize) -> Option<bool> {
        if remaining == 0 {
            return Some(true);
        }
        if !self.seen.insert((self.done.clone(), value)) {
            return Some(false);
        }
        if self.seen.len() > self.budget {
            return None;
        }
        // The next operation must have been called before every operation not yet ordered
        // had returned.
        let first_return = (0..self.entries.len())
            .filter(|&i| !self.is_done(i))
            .filter_map(|i| self.entries[i].ret)
            .min()
            .unwrap_or(Duration::MAX);
        let ordered =
            (0..self.entries.len()).filter(|&i| self.is_done(i) && self.entries[i].ret.is_some());
        let ordered = ordered.count();
        for i in 0..self.entries.len() {
            let entry = self.entries[i];
            if self.is_done(i) || entry.call > first_return {
                continue;
            }
            let next = match entry.op {
                Op::Write(written) => Some(written),
                Op::Read(read) if read == value => value,
                Op::Read(_) => {
                    if ordered >= self.best.0 {
                        self.best = (ordered, Some(i));
                    }
                    continue;
                }
            };
            self.flip(i);
            let left = remaining - usize::from(entry.ret.is_some());
            let found = self.step(next, left);
            self.flip(i);
            match found {
                Some(false) => {}
                other => return other,
            }
        }
        Some(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(value: u64) -> Duration {
        Duration::from_millis(value)
    }

    fn write(value: u64, call: u64, ret: Option<u64>) -> Entry {
        Entry { op: Op::Write(value), call: ms(call), ret: ret.map(ms) }
    }

    fn read(value: Option<u64>, call: u64, ret: u64) -> Entry {
        Entry { op: Op::Read(value), call: ms(call), ret: Some(ms(ret)) }
    }

    #[test]
    fn sequential_reads_of_the_last_write_are_linearizable() {
        let history = [
            read(None, 0, 5),
            write(1, 10, Some(20)),
            read(Some(1), 30, 40),
            write(2, 50, Some(60)),
        ];
        assert_eq!(check(&history, 10_000), Ok(Ok(())));
    }

    #[test]
    fn a_read_concurrent_with_a_write_may_see_either_value() {
        let old = [write(1, 0, Some(10)), write(2, 20, Some(50)), read(Some(1), 30, 40)];
        let new = [write(1, 0, Some(10)), write(2, 20, Some(50)), read(Some(2), 30, 40)];
        assert_eq!(check(&old, 10_000), Ok(Ok(())));
        assert_eq!(check(&new, 10_000), Ok(Ok(())));
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_a_violation() {
        let history = [write(1, 0, Some(10)), write(2, 20, Some(30)), read(Some(1), 40, 50)];
        let verdict = check(&history, 10_000).unwrap();
        let violation = verdict.unwrap_err();
        assert_eq!(violation.stuck_at.op, Op::Read(Some(1)));
    }

    #[test]
    fn a_write_with_an_unknown_outcome_may_land_late_or_never() {
        // Write 2 timed out: a later read may see it, or not.
        let landed = [write(1, 0, Some(10)), write(2, 20, None), read(Some(2), 100, 110)];
        let lost = [write(1, 0, Some(10)), write(2, 20, None), read(Some(1), 100, 110)];
        assert_eq!(check(&landed, 10_000), Ok(Ok(())));
        assert_eq!(check(&lost, 10_000), Ok(Ok(())));
        // But once seen, it cannot be unseen.
        let flicker = [
            write(1, 0, Some(10)),
            write(2, 20, None),
            read(Some(2), 100, 110),
            read(Some(1), 120, 130),
        ];
        assert!(check(&flicker, 10_000).unwrap().is_err());
    }

    #[test]
    fn a_value_never_written_is_a_violation() {
        let history = [write(1, 0, Some(10)), read(Some(7), 20, 30)];
        assert!(check(&history, 10_000).unwrap().is_err());
    }

    #[test]
    fn a_long_history_with_overlaps_is_checked_within_the_budget() {
        // A writer and a reader, each op overlapping the other's, 500 writes.
        let mut history = Vec::new();
        for k in 1..=500u64 {
            let t = k * 100;
            history.push(write(k, t, Some(t + 60)));
            history.push(read(Some(k - 1).filter(|v| *v > 0), t + 10, t + 50));
        }
        assert_eq!(check(&history, 1_000_000), Ok(Ok(())));
    }
}
