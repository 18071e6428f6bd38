//! Draining by local address: when this node hands a VIP over, the connections clients made
//! to that address close politely (HTTP/1.1 `Connection: close`, HTTP/2 GOAWAY, L4 left to
//! end), and at the handover's deadline they are closed, whatever listener accepted them.
//! Each address's phases are cancellation tokens a connection takes at its start (children
//! per worker, so workers do not take the same token's lock; the map of addresses is one
//! lock, taken once per connection): waiting on one costs a connection a few dozen bytes,
//! which matters to ten thousand idle ones.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// How far the drain of one address has gone; later phases include earlier ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Finish what is in flight, then close; nothing is cut.
    Polite,
    /// The deadline passed: close now.
    Closed,
}

/// The addresses being drained, as signals every connection to one of them holds.
#[derive(Debug, Default)]
pub struct AddressDrains {
    drains: Mutex<HashMap<IpAddr, AddressDrain>>,
}

/// One address's drain, and its children per worker: a connection waits on its worker's, so
/// the workers do not take the same token's lock at every connection.
#[derive(Debug, Default)]
struct AddressDrain {
    whole: Drain,
    /// Made when a worker first asks; emptied when `whole` gets a fresh token.
    by_worker: Vec<Option<Drain>>,
}

impl AddressDrain {
    fn for_worker(&mut self, index: usize) -> Drain {
        if self.by_worker.len() <= index {
            self.by_worker.resize(index + 1, None);
        }
        let whole = &self.whole;
        let drain = self.by_worker[index].get_or_insert_with(|| Drain {
            polite: whole.polite.child_token(),
            closed: whole.closed.child_token(),
        });
        drain.clone()
    }
}

/// One address's drain, as a connection to it sees it.
#[derive(Clone, Debug, Default)]
pub struct Drain {
    polite: CancellationToken,
    closed: CancellationToken,
}

impl Drain {
    /// Resolves once the address is drained politely (or closed).
    pub fn polite(&self) -> WaitForCancellationFuture<'_> {
        self.polite.cancelled()
    }

    /// Resolves once the address's drain deadline has come.
    pub fn closed(&self) -> WaitForCancellationFuture<'_> {
        self.closed.cancelled()
    }
}

impl AddressDrains {
    /// Moves `address` to `phase`, or forgets it with `None` (connections made later run
    /// normally; those made before keep the signals not yet given, for a later drain).
    pub fn set(&self, address: IpAddr, phase: Option<Phase>) {
        let mut drains = self.drains.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let address_drain = drains.entry(address).or_default();
        let drain = &mut address_drain.whole;
        let mut refreshed = false;
        let mut fresh = |token: &mut CancellationToken| {
            if token.is_cancelled() {
                *token = CancellationToken::new();
                refreshed = true;
            }
        };
        match phase {
            Some(Phase::Polite) => {
                fresh(&mut drain.closed);
                drain.polite.cancel();
            }
            Some(Phase::Closed) => {
                drain.polite.cancel();
                drain.closed.cancel();
            }
            None => {
                fresh(&mut drain.polite);
                fresh(&mut drain.closed);
            }
        }
        if refreshed {
            // Connections made from now on take children of the fresh tokens.
            address_drain.by_worker.clear();
        }
    }

    /// The drain of `address`, for a connection made to it now on the calling worker.
    pub fn drain_of(&self, address: IpAddr) -> Drain {
        let worker = super::workers::current_index();
        let mut drains = self.drains.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        drains.entry(address).or_default().for_worker(worker)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const VIP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 18, 0, 100));
    const OTHER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 18, 0, 101));

    fn done(future: impl std::future::Future<Output = ()>) -> bool {
        futures_util::FutureExt::now_or_never(future).is_some()
    }

    #[tokio::test]
    async fn a_connection_sees_its_address_reach_each_phase_and_no_other() {
        let drains = AddressDrains::default();
        let before = drains.drain_of(VIP);
        assert!(!done(before.polite()));
        drains.set(VIP, Some(Phase::Polite));
        assert!(done(before.polite()), "a connection made before sees the drain");
        let during = drains.drain_of(VIP);
        assert!(done(during.polite()), "and so does one made during it");
        assert!(!done(during.closed()), "polite is not closed");
        assert!(!done(drains.drain_of(OTHER).polite()), "another address is untouched");
        drains.set(VIP, None);
        let after = drains.drain_of(VIP);
        assert!(!done(after.polite()), "a forgotten address runs normally");
        drains.set(VIP, Some(Phase::Closed));
        for drain in [&before, &during, &after] {
            assert!(done(drain.closed()), "a later drain reaches every connection");
        }
    }

    #[test]
    fn every_worker_sees_each_phase_and_a_fresh_drain_after_it() {
        let drains = AddressDrains::default();
        let mut address = AddressDrain::default();
        let on = [address.for_worker(0), address.for_worker(3), address.for_worker(3)];
        address.whole.polite.cancel();
        assert!(on.iter().all(|d| done(d.polite()) && !done(d.closed())));
        address.whole.closed.cancel();
        assert!(on.iter().all(|d| done(d.closed())));

        // A worker that took its children before a finished drain gets fresh ones after it.
        let on_worker = |drains: &AddressDrains| {
            let mut lock = drains.drains.lock().expect("lock");
            lock.entry(VIP).or_default().for_worker(1)
        };
        let before = on_worker(&drains);
        drains.set(VIP, Some(Phase::Closed));
        assert!(done(before.closed()));
        drains.set(VIP, None);
        let after = on_worker(&drains);
        assert!(!done(after.polite()) && !done(after.closed()), "children of the fresh tokens");
    }

    #[tokio::test]
    async fn a_waiting_connection_wakes_when_the_deadline_comes() {
        let drains = std::sync::Arc::new(AddressDrains::default());
        let drain = drains.drain_of(VIP);
        let waiting = tokio::spawn(async move { drain.polite().await });
        tokio::task::yield_now().await;
        drains.set(VIP, Some(Phase::Closed));
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("a later phase includes the earlier one")
            .expect("the waiting task ran");
    }
}
