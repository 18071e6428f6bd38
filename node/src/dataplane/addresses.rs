//! Draining by local address: when this node hands a VIP over, the connections clients made
//! to that address close politely (HTTP/1.1 `Connection: close`, HTTP/2 GOAWAY, L4 left to
//! end), and at the handover's deadline they are closed, whatever listener accepted them.

use std::collections::BTreeMap;
use std::net::IpAddr;

use tokio::sync::watch;

/// How far the drain of one address has gone; later phases include earlier ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Finish what is in flight, then close; nothing is cut.
    Polite,
    /// The deadline passed: close now.
    Closed,
}

/// The addresses being drained, watched by every connection to one of them.
#[derive(Debug)]
pub struct AddressDrains {
    phases: watch::Sender<BTreeMap<IpAddr, Phase>>,
}

impl Default for AddressDrains {
    fn default() -> AddressDrains {
        AddressDrains { phases: watch::Sender::new(BTreeMap::new()) }
    }
}

impl AddressDrains {
    /// Moves `address` to `phase`, or forgets it with `None` (connections made later run
    /// normally).
    pub fn set(&self, address: IpAddr, phase: Option<Phase>) {
        self.phases.send_modify(|phases| match phase {
            Some(phase) => {
                phases.insert(address, phase);
            }
            None => {
                phases.remove(&address);
            }
        });
    }

    /// Resolves once `address` reaches `phase` (at once if it has already).
    pub async fn reached(&self, address: IpAddr, phase: Phase) {
        let mut phases = self.phases.subscribe();
        // The sender lives as long as the data plane, so this only ends by the phase.
        if phases.wait_for(|p| p.get(&address).is_some_and(|now| *now >= phase)).await.is_err() {
            std::future::pending::<()>().await;
        }
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
        assert!(!done(drains.reached(VIP, Phase::Polite)));
        drains.set(VIP, Some(Phase::Polite));
        assert!(done(drains.reached(VIP, Phase::Polite)));
        assert!(!done(drains.reached(VIP, Phase::Closed)), "polite is not closed");
        assert!(!done(drains.reached(OTHER, Phase::Polite)), "another address is untouched");
        drains.set(VIP, None);
        assert!(!done(drains.reached(VIP, Phase::Polite)), "a forgotten address runs normally");
    }

    #[tokio::test]
    async fn a_waiting_connection_wakes_when_the_deadline_comes() {
        let drains = std::sync::Arc::new(AddressDrains::default());
        let waiting = tokio::spawn({
            let drains = std::sync::Arc::clone(&drains);
            async move { drains.reached(VIP, Phase::Polite).await }
        });
        tokio::task::yield_now().await;
        drains.set(VIP, Some(Phase::Closed));
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("a later phase includes the earlier one")
            .expect("the waiting task ran");
    }
}
