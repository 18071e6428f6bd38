//! Limits for a port that faces the network, shared by the Raft RPC server and the node's
//! admin and metrics endpoints: open connections in total and per source address, and refusal
//! log lines at most once a second, so that a flood neither exhausts the node nor its log.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How many connections a port keeps open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// In total.
    pub total: usize,
    /// From one source address.
    pub per_address: usize,
}

impl std::fmt::Display for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} open, or {} from this address", self.total, self.per_address)
    }
}

/// Open connections, in total and by source address.
#[derive(Debug)]
pub struct OpenConnections {
    limits: Limits,
    by_address: Mutex<HashMap<IpAddr, usize>>,
}

/// One open connection's place; given back when dropped.
#[derive(Debug)]
pub struct ConnectionSlot {
    open: Arc<OpenConnections>,
    address: IpAddr,
}

impl OpenConnections {
    /// No connections yet, and these limits.
    pub fn new(limits: Limits) -> Arc<OpenConnections> {
        Arc::new(OpenConnections { limits, by_address: Mutex::default() })
    }

    /// A place for a connection from `address`, unless a limit is reached.
    pub fn take(self: &Arc<Self>, address: IpAddr) -> Option<ConnectionSlot> {
        let mut by_address = self.by_address.lock().unwrap_or_else(|p| p.into_inner());
        let total: usize = by_address.values().sum();
        let from_address = by_address.get(&address).copied().unwrap_or(0);
        if total >= self.limits.total || from_address >= self.limits.per_address {
            return None;
        }
        by_address.insert(address, from_address + 1);
        Some(ConnectionSlot { open: Arc::clone(self), address })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut by_address = self.open.by_address.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = by_address.get_mut(&self.address) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                by_address.remove(&self.address);
            }
        }
    }
}

/// Logs a kind of refusal at most once a second, with how many went unlogged since.
#[derive(Debug, Default)]
pub struct RefusalLog {
    state: Mutex<(Option<Instant>, u64)>,
}

impl RefusalLog {
    /// Calls `log` with the number of refusals suppressed since the last line, unless a line
    /// was written less than a second ago.
    pub fn warn(&self, log: impl FnOnce(u64)) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (last, suppressed) = &mut *state;
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < Duration::from_secs(1)) {
            *suppressed += 1;
            return;
        }
        *last = Some(now);
        log(std::mem::take(suppressed));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn connections_are_bounded_in_total_and_per_address_and_given_back() {
        let open = OpenConnections::new(Limits { total: 3, per_address: 2 });
        let (a, b, c) = ([198, 18, 0, 1].into(), [198, 18, 0, 2].into(), [198, 18, 0, 3].into());
        let first = open.take(a).unwrap();
        let _second = open.take(a).unwrap();
        assert!(open.take(a).is_none(), "a third from one address");
        let _third = open.take(b).unwrap();
        assert!(open.take(c).is_none(), "a fourth in total");
        drop(first);
        assert!(open.take(c).is_some(), "a closed connection gives its place back");
    }

    #[test]
    fn refusals_are_logged_once_a_second_with_the_count_suppressed() {
        let log = RefusalLog::default();
        let mut lines = Vec::new();
        for _ in 0..5 {
            log.warn(|suppressed| lines.push(suppressed));
        }
        assert_eq!(lines, [0], "one line, then silence within the second");
        log.state.lock().unwrap().0 = Some(Instant::now() - Duration::from_secs(2));
        log.warn(|suppressed| lines.push(suppressed));
        assert_eq!(lines, [0, 4]);
    }
}
