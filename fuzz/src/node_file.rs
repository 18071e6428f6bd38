//! Any text given as a node file (`/etc/fulcrum/node.toml`) is accepted or refused with an
//! error naming the problem, never a panic; what is accepted yields its derived settings.

/// Checks the property for one input.
pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(file) = fulcrum_node::NodeFile::parse(text) else { return };
    let times = file.fence_times();
    if let Some(raft) = &file.raft {
        let _ = times.longest_election_allowed(raft.heartbeat);
    }
    let _ = file.fenced();
}
