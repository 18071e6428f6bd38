//! Faults the lab injects between load balancers, and who answers for a VIP meanwhile.
//!
//! A partition is an nftables table of the lab's own (`lab_partition`) in one host's
//! namespace, dropping that host's packets to and from its peers: all of them, only VRRP, or
//! only those coming in (one-way loss). `heal` removes it. A host *answers* for a VIP when
//! its link is up, the address is on it, and its kernel lets ARP replies for it out: a node
//! with the quorum fence does so only while the VIP is in its `held` set.

use std::net::IpAddr;

use crate::routers::INTERFACE;
use crate::{Host, Lab, LabError};

/// The VRRP multicast group.
const VRRP_GROUP: &str = "224.0.0.18";

/// Which of a host's packets a partition drops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// Everything between the host and its peers (and its adverts to the VRRP group).
    Whole,
    /// Only VRRP, both ways; Raft and the rest flow.
    VrrpOnly,
    /// Only TCP (Raft and the peer requests), both ways; VRRP flows.
    RaftOnly,
    /// Only what the peers send to the host; the host's own packets still reach them.
    Incoming,
}

impl Lab {
    /// Drops, in `host`'s namespace, the packets in that match `incoming` and those out that
    /// match `outgoing` (an empty rule matches nothing), in a table of the lab's own that
    /// [`Lab::heal`] removes.
    pub fn isolate(&self, host: &Host, incoming: &str, outgoing: &str) -> Result<(), LabError> {
        let chain = |name: &str, hook: &str, rule: &str| {
            let rule = if rule.is_empty() { String::new() } else { format!(" {rule} drop;") };
            format!("\tchain {name} {{ type filter hook {hook} priority -300;{rule} }}\n")
        };
        let script = format!(
            "table ip lab_partition {{\n{}{}}}\n",
            chain("incoming", "input", incoming),
            chain("outgoing", "output", outgoing)
        );
        let path = self.log_dir().join(format!("partition-{}.nft", host.name));
        std::fs::write(&path, script)
            .map_err(|source| LabError::Io { what: format!("write {}", path.display()), source })?;
        // A partition already in place is replaced, not stacked.
        self.heal(host)?;
        self.exec(host, "nft", &["-f", &path.display().to_string()]).map(drop)
    }

    /// Cuts `host` off from `peers` as `cut` says; the client still reaches it.
    pub fn partition(&self, host: &Host, peers: &[Host], cut: Cut) -> Result<(), LabError> {
        let addresses: Vec<String> = peers
            .iter()
            .filter(|peer| peer.name != host.name)
            .map(|peer| peer.address.to_string())
            .collect();
        let set = format!("{{ {} }}", addresses.join(", "));
        let with_group = format!("{{ {}, {VRRP_GROUP} }}", addresses.join(", "));
        match cut {
            Cut::Whole => {
                self.isolate(host, &format!("ip saddr {set}"), &format!("ip daddr {with_group}"))
            }
            Cut::VrrpOnly => {
                self.isolate(host, &format!("ip saddr {set} ip protocol 112"), "ip protocol 112")
            }
            Cut::RaftOnly => self.isolate(
                host,
                &format!("ip saddr {set} ip protocol tcp"),
                &format!("ip daddr {set} ip protocol tcp"),
            ),
            Cut::Incoming => self.isolate(host, &format!("ip saddr {set}"), ""),
        }
    }

    /// Removes `host`'s partition, if it has one.
    pub fn heal(&self, host: &Host) -> Result<(), LabError> {
        let tables = self.exec(host, "nft", &["list", "tables", "ip"])?;
        if tables.lines().any(|line| line.trim() == "table ip lab_partition") {
            self.exec(host, "nft", &["delete", "table", "ip", "lab_partition"])?;
        }
        Ok(())
    }

    /// Whether `host` answers for `vip` now: its link is up, the address is on it, and its
    /// kernel lets ARP replies or Neighbor Advertisements for it through (a fenced node's
    /// `held` set holds it; a host without the fence's table answers whenever it has the
    /// address; an `nft` that fails on a fenced host is an error, not a guess). One command,
    /// so sampling stays fast.
    pub fn answers(&self, host: &Host, vip: impl Into<IpAddr>) -> Result<bool, LabError> {
        let vip = vip.into();
        let (family, table) = if vip.is_ipv4() { ("-4", "arp") } else { ("-6", "ip6") };
        let script = format!(
            "ip -o link show dev {INTERFACE}; ip -o {family} addr show dev {INTERFACE}; echo '--'; \
             if nft list table {table} fulcrum >/dev/null 2>&1; then nft list set {table} fulcrum held; \
             else echo 'no fence'; fi"
        );
        let output = self.exec(host, "sh", &["-c", &script])?;
        let (interface, fence) = output.split_once("\n--\n").unwrap_or((&output, ""));
        let link_up = interface.lines().next().is_some_and(|link| link.contains(",UP"));
        let has_address = interface.contains(&format!(" {vip}/"));
        let vip_text = vip.to_string();
        let fence_lets_through = fence.trim() == "no fence"
            || fence.split(|c: char| c.is_whitespace() || ",{}".contains(c)).any(|w| w == vip_text);
        Ok(link_up && has_address && fence_lets_through)
    }

    /// Those of `hosts` that answer for `vip` now, each asked at the same time (one thread
    /// per host), so the answers are close together in time.
    pub fn answering(
        &self,
        hosts: &[Host],
        vip: impl Into<IpAddr> + Copy + Send,
    ) -> Result<Vec<String>, LabError> {
        let answers: Vec<Result<bool, LabError>> = std::thread::scope(|scope| {
            let asked: Vec<_> =
                hosts.iter().map(|host| scope.spawn(move || self.answers(host, vip))).collect();
            asked
                .into_iter()
                .map(|thread| {
                    thread
                        .join()
                        .unwrap_or_else(|_| Err(LabError::Invalid("a probe panicked".into())))
                })
                .collect()
        });
        let mut answering = Vec::new();
        for (host, answers) in hosts.iter().zip(answers) {
            if answers? {
                answering.push(host.name.clone());
            }
        }
        Ok(answering)
    }
}
