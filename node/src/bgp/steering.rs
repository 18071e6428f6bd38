//! Flow steering: the nftables rules that hand a BGP VIP's packets to the node that holds
//! their connection, so a router rehashing flows when the node set changes cuts none.
//!
//! The rules are rendered (pure, [`render`]) from a [`Plan`]: the [`BucketTable`] every node
//! derives alike, this node's id, and where each peer receives on the shared link (its MAC
//! and addresses, which it tells in its [`FlowMember`]). After conntrack, a packet for a VIP:
//! - of a connection this node knows stays here;
//! - from a router: in a bucket this node is first hop of, a new connection (SYN) stays
//!   here and anything else goes on to the second hop; in any other bucket it goes to the
//!   first hop;
//! - from a peer (its source MAC is a peer's): a SYN stays here; anything else goes on to
//!   the second hop if this node is the bucket's first hop and the second hop is not the
//!   peer it came from, and is dropped otherwise: two nodes whose views differ for a moment
//!   cannot pass a packet to and fro;
//! - with nowhere to go, a packet that opens no connection is dropped rather than answered
//!   with a reset, when this node has peers: it may belong to a peer's connection.
//!
//! A packet goes on with nftables' `dup` to the peer's address on the link (the copy's TTL
//! or hop limit one lower) and the original is dropped: the peers must share one link (as
//! VRRP's do). Each peer's packets are counted by a named counter that survives reloads.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use super::buckets::{BUCKETS, BucketTable, Hops, Standing};
use crate::nft::{self, NftError};

/// The nftables table (in the `ip` and `ip6` families) that holds the steering rules.
const TABLE: &str = "fulcrum_bgp";
/// `jhash`'s seed: every node must hash alike.
const SEED: u32 = 0x4655_4c43;

/// Where a node receives the packets handed to it: its end of the link the nodes share.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// The link here (only this node's own is used).
    pub interface: String,
    /// Its MAC address: packets from it are a peer's, not a router's.
    pub mac: [u8; 6],
    /// Its IPv4 address on the link, where IPv4 VIPs' packets go.
    pub ipv4: Option<Ipv4Addr>,
    /// Its IPv6 link-local address, where IPv6 VIPs' packets go.
    pub ipv6: Option<Ipv6Addr>,
}

/// What one member tells of its part in the BGP VIPs' flows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowMember {
    /// Whether it takes new connections.
    pub standing: Standing,
    /// Since when (its clock, milliseconds since the Unix epoch).
    pub since_ms: u64,
    /// The VIPs it announces when it does.
    pub vips: Vec<IpAddr>,
    /// Where it receives packets handed to it.
    pub link: Link,
}

/// Everything the rules are made from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// This node.
    pub me: u64,
    /// Its link.
    pub link: Link,
    /// The VIPs steered.
    pub vips: Vec<IpAddr>,
    /// The members' buckets.
    pub table: BucketTable,
    /// The other members' links, by id.
    pub peers: BTreeMap<u64, Link>,
}

/// Where a packet of one bucket, arriving from a router, goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FromRouter {
    /// Served here.
    Here,
    /// Served here if it opens a connection, else handed to the second hop.
    FirstHere { second: u64 },
    /// Handed to the first hop.
    To(u64),
}

fn from_router(me: u64, hops: Hops, reachable: impl Fn(u64) -> bool) -> FromRouter {
    match hops {
        Hops { first: Some(first), .. } if first != me && reachable(first) => FromRouter::To(first),
        Hops { first: Some(first), second: Some(second) }
            if first == me && second != me && reachable(second) =>
        {
            FromRouter::FirstHere { second }
        }
        _ => FromRouter::Here,
    }
}

/// The `nft -f` script that puts `plan`'s rules in place of this node's steering rules, in
/// one transaction, keeping the counters.
pub fn render(plan: &Plan) -> String {
    let mut script = String::new();
    for family in ["ip", "ip6"] {
        let _ = writeln!(script, "add table {family} {TABLE}\nflush table {family} {TABLE}");
    }
    for family in [Family::V4, Family::V6] {
        render_family(&mut script, plan, family);
    }
    script
}

/// The script that removes the steering rules.
pub fn render_removal() -> String {
    ["ip", "ip6"]
        .iter()
        .map(|family| format!("add table {family} {TABLE}\ndelete table {family} {TABLE}\n"))
        .collect()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn name(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }

    fn of(vip: &IpAddr) -> Family {
        if vip.is_ipv4() { Family::V4 } else { Family::V6 }
    }

    fn address(self, link: &Link) -> Option<IpAddr> {
        match self {
            Family::V4 => link.ipv4.map(IpAddr::V4),
            Family::V6 => link.ipv6.map(IpAddr::V6),
        }
    }
}

fn render_family(s: &mut String, plan: &Plan, family: Family) {
    let name = family.name();
    let vips: Vec<String> =
        plan.vips.iter().filter(|vip| Family::of(vip) == family).map(ToString::to_string).collect();
    let _ = writeln!(s, "table {name} {TABLE} {{");
    if vips.is_empty() {
        let _ = writeln!(s, "}}");
        return;
    }
    let reachable: BTreeMap<u64, IpAddr> = plan
        .peers
        .iter()
        .filter_map(|(id, link)| family.address(link).map(|address| (*id, address)))
        .collect();
    for (id, address) in &reachable {
        let _ = writeln!(s, "\tcounter handed_{id} {{\n\t}}");
        let _ = writeln!(s, "\tchain to_{id} {{");
        let _ = writeln!(
            s,
            "\t\tcounter name \"handed_{id}\" dup to {address} device \"{}\" drop",
            plan.link.interface
        );
        let _ = writeln!(s, "\t}}");
        // A bucket's new connection stays here; the rest of it goes to its second hop.
        let _ = writeln!(s, "\tchain first_here_{id} {{");
        let _ = writeln!(s, "\t\ttcp flags & (syn | ack) == syn accept\n\t\tgoto to_{id}\n\t}}");
    }
    let hash = format!("jhash {name} saddr . tcp sport . tcp dport mod {BUCKETS} seed {SEED:#x}");
    let is_reachable = |id: u64| reachable.contains_key(&id);
    let router: Vec<FromRouter> =
        plan.table.hops().iter().map(|hops| from_router(plan.me, *hops, is_reachable)).collect();
    // A packet of no connection here that has nowhere to go: with peers, it may belong to a
    // connection of a peer this node's view has not caught up with, and a reset would cut it.
    let here = match plan.peers.is_empty() {
        true => "accept",
        false => {
            let _ = writeln!(s, "\tchain here {{");
            let _ = writeln!(s, "\t\ttcp flags & (syn | ack) == syn accept\n\t\tdrop\n\t}}");
            "goto here"
        }
    };
    for id in plan.peers.keys() {
        let _ = writeln!(s, "\tchain from_{id} {{");
        let _ = writeln!(s, "\t\ttcp flags & (syn | ack) == syn accept");
        // Handed on once more only to the second hop, and never back to the peer it came
        // from, so two nodes whose views differ cannot pass a packet to and fro.
        let onward: Vec<String> = router
            .iter()
            .enumerate()
            .filter_map(|(bucket, hop)| match hop {
                FromRouter::FirstHere { second } if second != id => {
                    Some(format!("{bucket} : goto to_{second}"))
                }
                _ => None,
            })
            .collect();
        if !onward.is_empty() {
            let _ = writeln!(s, "\t\t{hash} vmap {{ {} }}", onward.join(", "));
        }
        let _ = writeln!(s, "\t\tdrop\n\t}}");
    }
    let _ = writeln!(s, "\tchain steer {{");
    // After conntrack (-200), so every packet carries its connection's state.
    let _ = writeln!(s, "\t\ttype filter hook prerouting priority mangle; policy accept;");
    let _ = writeln!(s, "\t\t{name} daddr != {{ {} }} accept", vips.join(", "));
    let _ = writeln!(s, "\t\tmeta l4proto != tcp accept");
    let _ = writeln!(s, "\t\tct state established,related accept");
    let peers: Vec<String> = plan
        .peers
        .iter()
        .map(|(id, link)| format!("{} : goto from_{id}", mac(&link.mac)))
        .collect();
    if !peers.is_empty() {
        let _ = writeln!(s, "\t\tether saddr vmap {{ {} }}", peers.join(", "));
    }
    let verdicts: Vec<String> = router
        .iter()
        .enumerate()
        .map(|(bucket, hop)| match hop {
            FromRouter::Here => format!("{bucket} : {here}"),
            FromRouter::FirstHere { second } => format!("{bucket} : goto first_here_{second}"),
            FromRouter::To(first) => format!("{bucket} : goto to_{first}"),
        })
        .collect();
    let _ = writeln!(s, "\t\t{hash} vmap {{ {} }}", verdicts.join(", "));
    let _ = writeln!(s, "\t}}\n}}");
}

fn mac(bytes: &[u8; 6]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// The packets handed to each peer so far, by id, from `nft -j list counters`'s output.
pub fn handed(json: &str) -> BTreeMap<u64, u64> {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(json) else {
        return BTreeMap::new();
    };
    let mut handed = BTreeMap::new();
    let items = value.get("nftables").and_then(|v| v.as_array()).cloned().unwrap_or_default();
    for counter in items.iter().filter_map(|item| item.get("counter")) {
        let id = counter
            .get("name")
            .and_then(|n| n.as_str())
            .and_then(|n| n.strip_prefix("handed_"))
            .and_then(|id| id.parse::<u64>().ok());
        let packets = counter.get("packets").and_then(serde_json::Value::as_u64);
        if let (Some(id), Some(packets)) = (id, packets) {
            *handed.entry(id).or_insert(0) += packets;
        }
    }
    handed
}

/// Loads `plan`'s rules.
pub async fn load(plan: &Plan) -> Result<(), NftError> {
    nft::load(&render(plan)).await
}

/// The packets handed to each peer since the rules were first loaded.
pub async fn read_handed() -> Result<BTreeMap<u64, u64>, NftError> {
    let mut total = BTreeMap::new();
    for family in ["ip", "ip6"] {
        let json = nft::read_json(&["list", "counters", "table", family, TABLE]).await?;
        for (id, packets) in handed(&json) {
            *total.entry(id).or_insert(0) += packets;
        }
    }
    Ok(total)
}

/// Removes the steering rules.
pub async fn remove() -> Result<(), NftError> {
    nft::load(&render_removal()).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bgp::buckets::MemberState;
    use Standing::{Announcing, Draining};

    const VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 200));

    fn link(n: u8) -> Link {
        Link {
            interface: "eth0".into(),
            mac: [2, 0, 0, 0, 0, n],
            ipv4: Some(Ipv4Addr::new(198, 18, 0, 10 + n)),
            ipv6: Some(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, u16::from(n))),
        }
    }

    fn plan(me: u64, members: &[(u64, Standing)], vips: &[IpAddr]) -> Plan {
        let states = members
            .iter()
            .map(|&(id, standing)| (id, MemberState { standing, since_ms: 0 }))
            .collect();
        let table = BucketTable::derive(&states);
        let peers = members
            .iter()
            .filter(|(id, _)| *id != me)
            .map(|(id, _)| (*id, link(*id as u8)))
            .collect();
        Plan { me, link: link(me as u8), vips: vips.to_vec(), table, peers }
    }

    /// The entries (bucket and verdict) of the bucket map in `rules`, if any.
    fn bucket_map(rules: &str) -> Vec<(usize, String)> {
        let Some(at) = rules.find(&format!("mod {BUCKETS} seed")) else { return Vec::new() };
        let map = &rules[at..];
        let map = &map[map.find("vmap {").expect("a bucket map") + 6..];
        let map = &map[..map.find('}').expect("its end")];
        map.split(", ")
            .map(|entry| {
                let (bucket, verdict) = entry.split_once(" : ").unwrap();
                (bucket.trim().parse().unwrap(), verdict.trim().to_owned())
            })
            .collect()
    }

    /// The verdict of each bucket for packets from a router.
    fn router_verdicts(script: &str) -> Vec<String> {
        let steer = &script[script.find("chain steer").expect("a steer chain")..];
        let steer = &steer[steer.find("jhash").expect("the bucket map")..];
        bucket_map(steer).into_iter().map(|(_, verdict)| verdict).collect()
    }

    #[test]
    fn every_bucket_from_a_router_stays_here_only_if_this_node_is_its_first_hop() {
        let members = [(1, Announcing), (2, Announcing), (3, Announcing)];
        let plan = plan(1, &members, &[VIP]);
        let verdicts = router_verdicts(&render(&plan));
        assert_eq!(verdicts.len(), BUCKETS);
        for (hops, verdict) in plan.table.hops().iter().zip(&verdicts) {
            match hops.first {
                Some(1) => {
                    assert_eq!(*verdict, format!("goto first_here_{}", hops.second.unwrap()))
                }
                Some(other) => assert_eq!(*verdict, format!("goto to_{other}")),
                None => unreachable!("three members announce"),
            }
        }
    }

    #[test]
    fn packets_go_on_unchanged_to_the_peer_s_address_and_are_counted() {
        let script = render(&plan(1, &[(1, Announcing), (2, Announcing)], &[VIP]));
        assert!(script.starts_with("add table ip fulcrum_bgp\nflush table ip fulcrum_bgp\n"));
        assert!(
            script.contains("counter name \"handed_2\" dup to 198.18.0.12 device \"eth0\" drop")
        );
        assert!(script.contains("\tcounter handed_2 {"));
        // Known connections first, then peers' packets, then the buckets.
        let known = script.find("ct state established,related accept").unwrap();
        let peers = script.find("ether saddr vmap { 02:00:00:00:00:02 : goto from_2 }").unwrap();
        let buckets = script.rfind("jhash ip saddr . tcp sport . tcp dport mod 256").unwrap();
        assert!(known < peers && peers < buckets);
    }

    /// The rules of chain `name`.
    fn chain<'a>(script: &'a str, name: &str) -> &'a str {
        let chain = &script[script.find(&format!("chain {name} {{")).expect(name)..];
        &chain[..chain.find("\t}").unwrap()]
    }

    #[test]
    fn a_peer_s_packet_is_handed_on_at_most_once_more_and_never_back() {
        let members = [(1, Announcing), (2, Announcing), (3, Draining)];
        let plan = plan(1, &members, &[VIP]);
        let script = render(&plan);
        for (peer, other) in [(2u64, 3u64), (3, 2)] {
            let from = chain(&script, &format!("from_{peer}"));
            assert!(from.contains("tcp flags & (syn | ack) == syn accept"));
            assert!(from.trim_end().ends_with("drop"));
            assert!(!from.contains(&format!("goto to_{peer}")), "never back to {peer}");
            // Only buckets this node is first hop of go on, to a second hop that is not
            // the sender.
            let expected: Vec<(usize, String)> = plan
                .table
                .hops()
                .iter()
                .enumerate()
                .filter(|(_, hops)| hops.first == Some(1) && hops.second == Some(other))
                .map(|(bucket, _)| (bucket, format!("goto to_{other}")))
                .collect();
            assert_eq!(bucket_map(from), expected);
        }
    }

    #[test]
    fn with_peers_a_packet_with_nowhere_to_go_is_dropped_unless_it_opens_a_connection() {
        let mut plan = plan(1, &[(1, Announcing), (2, Announcing)], &[VIP]);
        plan.peers.get_mut(&2).unwrap().ipv4 = None;
        let script = render(&plan);
        assert!(router_verdicts(&script).iter().all(|v| v == "goto here"));
        let here = chain(&script, "here");
        assert!(here.contains("tcp flags & (syn | ack) == syn accept\n\t\tdrop"), "{here}");
    }

    #[test]
    fn a_lone_node_serves_everything_itself() {
        let plan = plan(1, &[(1, Announcing)], &[VIP]);
        let script = render(&plan);
        assert!(router_verdicts(&script).iter().all(|v| v == "accept"));
        assert!(!script.contains("ether saddr"));
    }

    #[test]
    fn a_family_without_vips_has_an_empty_table() {
        let script = render(&plan(1, &[(1, Announcing), (2, Announcing)], &[VIP]));
        let ip6 = &script[script.find("table ip6 fulcrum_bgp {").unwrap()..];
        assert_eq!(ip6.trim_end(), "table ip6 fulcrum_bgp {\n}");
    }

    #[test]
    fn ipv6_vips_go_to_the_peer_s_link_local_address() {
        let vip6: IpAddr = "2001:db8:18::200".parse().unwrap();
        let script = render(&plan(1, &[(1, Announcing), (2, Announcing)], &[VIP, vip6]));
        let ip6 = &script[script.find("table ip6 fulcrum_bgp {").unwrap()..];
        assert!(ip6.contains("ip6 daddr != { 2001:db8:18::200 } accept"));
        assert!(ip6.contains("dup to fe80::2 device \"eth0\" drop"));
        assert!(ip6.contains("jhash ip6 saddr . tcp sport . tcp dport mod 256"));
    }

    #[test]
    fn a_peer_with_no_address_of_the_family_gets_nothing() {
        let mut plan = plan(1, &[(1, Announcing), (2, Announcing)], &[VIP]);
        plan.peers.get_mut(&2).unwrap().ipv4 = None;
        assert!(!render(&plan).contains("to_2"));
    }

    #[test]
    fn handed_packets_are_read_from_nft_s_json() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"counter": {"family": "ip", "name": "handed_2", "table": "fulcrum_bgp", "packets": 5, "bytes": 100}},
            {"counter": {"family": "ip", "name": "handed_3", "table": "fulcrum_bgp", "packets": 0, "bytes": 0}},
            {"counter": {"family": "ip", "name": "other", "table": "fulcrum_bgp", "packets": 9, "bytes": 0}}]}"#;
        assert_eq!(handed(json), BTreeMap::from([(2, 5), (3, 0)]));
        assert!(handed("not json").is_empty());
    }
}
