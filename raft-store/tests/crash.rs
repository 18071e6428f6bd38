//! Crash tests with a real child process: the test binary runs itself again in a "child"
//! mode that writes to a store, the parent SIGKILLs it (no destructor, no final flush), and
//! reopens the store to check that everything acknowledged as durable is there.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Lines};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command as Process, Stdio};
use std::time::{Duration, Instant};

use fulcrum_model::command::ObjectKind;
use fulcrum_model::{ApplyError, Command, Pool};
use fulcrum_raft_store::{IdempotencyKey, NodeId, Request, Response, TypeConfig};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{
    BasicNode, CommittedLeaderId, EntryPayload, LogId, Membership, RaftLogReader, Vote,
};

type Entry = openraft::Entry<TypeConfig>;

/// Set in the child: the store directory it writes to.
const CHILD_DIR: &str = "FULCRUM_RAFT_STORE_CRASH_CHILD_DIR";
/// How many appends the parent waits for before it kills the log writer.
const FLUSHED_BEFORE_KILL: u64 = 200;
/// The child's own bound, in case the parent never kills it.
const CHILD_DEADLINE: Duration = Duration::from_secs(20);

fn log_id(index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(3, 1), index)
}

fn key(n: u8) -> IdempotencyKey {
    IdempotencyKey([n; 16])
}

fn put_pool(name: &str) -> Command {
    Command::PutPool(Pool::new(name.parse().unwrap()))
}

fn normal(index: u64, idempotency_key: Option<IdempotencyKey>, command: Command) -> Entry {
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(Request { idempotency_key, command }),
    }
}

/// The log writer's entry at `index`.
fn log_entry(index: u64) -> Entry {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&index.to_be_bytes());
    normal(index, Some(IdempotencyKey(bytes)), put_pool(&format!("pool-{index}")))
}

fn the_vote() -> Vote<NodeId> {
    Vote::new(3, 1)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Runs this binary's test `test` as a child writing to `dir`, its stdout piped.
fn spawn_child(test: &str, dir: &Path) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child = Process::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR, dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    (child, BufReader::new(stdout).lines())
}

/// SIGKILLs the child and reaps it.
fn kill(mut child: Child) {
    child.kill().unwrap(); // SIGKILL on Unix
    let status = child.wait().unwrap();
    assert!(!status.success(), "the child was killed, not finished: {status}");
}

/// Marks the child's reports: libtest prints its own text on the same lines.
const MARK: &str = "@@child: ";

/// Reports `what` to the parent.
fn say(what: &str) {
    println!("\n{MARK}{what}");
}

/// What the child said on `line`, if anything.
fn said(line: &str) -> Option<&str> {
    line.split_once(MARK).map(|(_, what)| what)
}

fn child_dir() -> Option<PathBuf> {
    std::env::var_os(CHILD_DIR).map(PathBuf::from)
}

/// The child of `flushed_log_entries_survive_sigkill`: saves a vote, then appends and reports
/// each flushed entry until killed.
fn child_log_writer(dir: &Path) {
    runtime().block_on(async {
        let (mut log, _) = fulcrum_raft_store::open(dir).unwrap();
        log.save_vote(&the_vote()).await.unwrap();
        say("vote saved");
        let started = Instant::now();
        for index in 1..=100_000 {
            if started.elapsed() > CHILD_DEADLINE {
                break;
            }
            // Returns once the flush callback has reported success.
            log.blocking_append([log_entry(index)]).await.unwrap();
            say(&format!("flushed {index}"));
        }
    });
}

#[test]
fn flushed_log_entries_survive_sigkill() {
    if let Some(dir) = child_dir() {
        return child_log_writer(&dir);
    }
    let dir = tempfile::tempdir().unwrap();
    let (child, lines) = spawn_child("flushed_log_entries_survive_sigkill", dir.path());
    let mut vote_saved = false;
    let mut last_flushed = 0;
    for line in lines {
        let line = line.unwrap();
        let Some(line) = said(&line) else { continue };
        if line == "vote saved" {
            vote_saved = true;
        } else if let Some(index) = line.strip_prefix("flushed ") {
            let index: u64 = index.parse().unwrap();
            assert_eq!(index, last_flushed + 1, "appends are reported in order");
            last_flushed = index;
            if last_flushed >= FLUSHED_BEFORE_KILL {
                break;
            }
        }
    }
    // Killed while it keeps appending: some append is likely in flight.
    kill(child);
    assert!(vote_saved, "the child never saved its vote");
    assert!(last_flushed >= FLUSHED_BEFORE_KILL, "the child stopped after {last_flushed} appends");

    runtime().block_on(async {
        let (mut log, _) = fulcrum_raft_store::open(dir.path()).unwrap();
        assert_eq!(log.read_vote().await.unwrap(), Some(the_vote()));
        let entries = log.try_get_log_entries(1..=last_flushed).await.unwrap();
        assert_eq!(entries.len() as u64, last_flushed, "a flushed entry is missing");
        for (entry, index) in entries.iter().zip(1..) {
            assert_eq!(*entry, log_entry(index));
        }
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, None);
        let last = state.last_log_id.unwrap();
        assert!(last.index >= last_flushed, "last log id {last} is before {last_flushed}");
        // No hole after the reported ones either: whatever survived is contiguous.
        let all = log.try_get_log_entries(1..).await.unwrap();
        assert_eq!(all.len() as u64, last.index);
    });
}

fn membership_entry(index: u64, ids: &[NodeId]) -> Entry {
    let nodes: BTreeMap<NodeId, BasicNode> =
        ids.iter().map(|id| (*id, BasicNode::new(format!("10.0.0.{id}:7000")))).collect();
    let members = Membership::new(vec![ids.iter().copied().collect()], nodes);
    Entry { log_id: log_id(index), payload: EntryPayload::Membership(members) }
}

fn missing_pool() -> ApplyError {
    ApplyError::NotFound { kind: ObjectKind::Pool, name: "missing".into() }
}

/// The child of `applied_state_survives_sigkill`: applies three batches, reports them, and
/// waits to be killed.
fn child_state_machine_applier(dir: &Path) {
    runtime().block_on(async {
        let (_, mut sm) = fulcrum_raft_store::open(dir).unwrap();
        let batches = [
            vec![membership_entry(1, &[1, 2, 3]), normal(2, Some(key(1)), put_pool("web"))],
            vec![
                // Rejected: still advances last-applied.
                normal(3, Some(key(2)), Command::DeletePool("missing".parse().unwrap())),
                // A retry of index 2 carrying another command: must not apply.
                normal(4, Some(key(1)), put_pool("dup")),
            ],
            vec![normal(5, None, put_pool("api"))],
        ];
        for batch in batches {
            let responses = sm.apply(batch).await.unwrap();
            say(&format!("applied {responses:?}"));
        }
        say("done");
        // Wait to be killed; the parent checks nothing here ran a clean shutdown.
        tokio::time::sleep(CHILD_DEADLINE).await;
    });
}

#[test]
fn applied_state_survives_sigkill() {
    if let Some(dir) = child_dir() {
        return child_state_machine_applier(&dir);
    }
    let dir = tempfile::tempdir().unwrap();
    let (child, lines) = spawn_child("applied_state_survives_sigkill", dir.path());
    let mut reported = Vec::new();
    for line in lines {
        let line = line.unwrap();
        let Some(line) = said(&line) else { continue };
        if line == "done" {
            break;
        }
        if let Some(responses) = line.strip_prefix("applied ") {
            reported.push(responses.to_owned());
        }
    }
    kill(child);
    let ok = |revision| Response { result: Ok(revision) };
    let expected =
        [vec![ok(0), ok(1)], vec![Response { result: Err(missing_pool()) }, ok(1)], vec![ok(2)]];
    let expected: Vec<String> = expected.iter().map(|batch| format!("{batch:?}")).collect();
    assert_eq!(reported, expected, "the child's responses");

    runtime().block_on(async {
        let (_, mut sm) = fulcrum_raft_store::open(dir.path()).unwrap();
        let config = sm.config();
        assert_eq!(config.revision, 2, "the duplicate applied once, the rejection not at all");
        let pools: Vec<&str> = config.spec.pools.iter().map(|pool| pool.name.as_str()).collect();
        assert_eq!(pools, ["web", "api"]);
        assert_eq!(sm.watch().borrow().0, 2);

        let (last_applied, membership) = sm.applied_state().await.unwrap();
        assert_eq!(last_applied, Some(log_id(5)));
        assert_eq!(membership.log_id(), &Some(log_id(1)));
        assert_eq!(membership.voter_ids().collect::<Vec<_>>(), [1, 2, 3]);

        // The idempotency table survived too: both keys still answer as the first time.
        let retries = sm
            .apply([
                normal(6, Some(key(1)), put_pool("db")),
                normal(7, Some(key(2)), put_pool("db")),
            ])
            .await
            .unwrap();
        assert_eq!(retries, vec![ok(1), Response { result: Err(missing_pool()) }]);
        assert_eq!(sm.config().revision, 2);
    });
}
