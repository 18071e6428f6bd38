//! The chaos suite's short form: three minutes of seeded faults (partitions, one-way and
//! VRRP-only loss, pauses, kills, host crashes, the Raft leader killed) on a three-node cluster
//! at fulcrumd's default settings, with no invariant broken: never two nodes answering for
//! the VIP, every acknowledged write on every node, a linearizable history of reads and
//! writes. `fulcrum-lab chaos --minutes 3 --seed 1` runs the same schedule.
//!
//! It needs root; without it, it fails with a message that says so.

#![allow(clippy::unwrap_used)] // In a test, a panic is the failure report.

use std::path::Path;
use std::time::Duration;

use fulcrum_lab::chaos;

const LAB_BINARY: &str = env!("CARGO_BIN_EXE_fulcrum-lab");

#[test]
fn three_minutes_of_faults_break_no_invariant() {
    let report = chaos::run(Path::new(LAB_BINARY), Duration::from_secs(180), 1)
        .unwrap_or_else(|e| panic!("the chaos run could not go on: {e}"));
    let table = chaos::table(&report);
    println!("{table}");
    assert!(report.violations.is_empty(), "invariants broken:\n{table}");
    assert!(report.faults.len() >= 10, "too few faults to mean much:\n{table}");
    assert!(report.operations.1 >= 20, "too few acknowledged writes:\n{table}");
    let unrecovered: Vec<_> = report.faults.iter().filter(|f| !f.recovered).collect();
    assert!(unrecovered.is_empty(), "the cluster did not recover from {unrecovered:?}:\n{table}");
}
