//! Where each flow of a BGP VIP belongs (pure): the flows are cut into [`BUCKETS`] buckets by
//! a hash of their addresses and ports, and every node derives the same [`BucketTable`] from
//! the same members and standings, as Unimog and GLB Director do. A bucket's first hop takes
//! its new connections; its second hop is where its older connections may still live.
//!
//! Each bucket ranks the members by rendezvous hashing (highest random weight), so a change
//! of one member moves only the buckets it ranks first in. The first hop is the
//! best-ranked member that announces; the second is whoever held the bucket last before it:
//! of the draining members ranked above it (each held the bucket until it stopped
//! announcing) and the next announcing member (which held it until the first hop began
//! announcing), the one whose hold ended last, by the times the members report. One change
//! at a time keeps every connection, whatever other members drain meanwhile; two changes
//! within one connection's life may lose the connections of the buckets both touched.

use std::collections::BTreeMap;

use xxhash_rust::xxh3::xxh3_64;

/// How many buckets the flows are cut into.
pub const BUCKETS: usize = 256;

/// What a member does with a BGP VIP's flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Standing {
    /// It announces the VIPs: it takes new connections.
    Announcing,
    /// It withdrew them (a tracked pool failed, an operator drained it, or it stops) and
    /// serves the connections it holds.
    Draining,
}

/// A member's standing and since when it holds (its own clock, milliseconds since the Unix
/// epoch: the members' clocks are taken to agree within well under the time between two
/// changes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberState {
    /// Announcing or draining.
    pub standing: Standing,
    /// When it began to.
    pub since_ms: u64,
}

/// A bucket's hops, by node id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hops {
    /// Takes the bucket's new connections.
    pub first: Option<u64>,
    /// May hold the bucket's older connections.
    pub second: Option<u64>,
}

/// Every bucket's hops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketTable {
    hops: Vec<Hops>,
}

impl BucketTable {
    /// The table of `members` (by node id; members not answering are left out).
    pub fn derive(members: &BTreeMap<u64, MemberState>) -> BucketTable {
        let hops = (0..BUCKETS).map(|bucket| hops_of(bucket, members)).collect();
        BucketTable { hops }
    }

    /// The hops of every bucket, in bucket order.
    pub fn hops(&self) -> &[Hops] {
        &self.hops
    }
}

/// Member `node`'s weight in `bucket`: the same on every node and in every release.
fn weight(bucket: usize, node: u64) -> u64 {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&(bucket as u64).to_be_bytes());
    key[8..].copy_from_slice(&node.to_be_bytes());
    xxh3_64(&key)
}

fn hops_of(bucket: usize, members: &BTreeMap<u64, MemberState>) -> Hops {
    let mut ranked: Vec<(u64, MemberState)> = members.iter().map(|(id, m)| (*id, *m)).collect();
    // Ties (as good as impossible) go to the lower id, so the order is total.
    ranked.sort_by_key(|(id, _)| (std::cmp::Reverse(weight(bucket, *id)), *id));
    let announcing = |m: &MemberState| m.standing == Standing::Announcing;
    let Some(first_at) = ranked.iter().position(|(_, m)| announcing(m)) else {
        // Nobody announces: nothing arrives to steer, except from a router that has not
        // heard yet; the best-ranked draining member is the likeliest holder.
        return Hops { first: None, second: ranked.first().map(|(id, _)| *id) };
    };
    let (first, first_state) = ranked[first_at];
    // Every member ranked above the first hop drains; the last to stop held the bucket last.
    let drained_last = ranked[..first_at].iter().max_by_key(|(_, m)| m.since_ms);
    let next_announcing = ranked[first_at + 1..].iter().find(|(_, m)| announcing(m));
    let second = match (drained_last, next_announcing) {
        (Some((_, drained)), Some((next, _))) if first_state.since_ms > drained.since_ms => {
            Some(*next)
        }
        (Some((drained, _)), _) => Some(*drained),
        (None, next) => next.map(|(id, _)| *id),
    };
    Hops { first: Some(first), second }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Standing::{Announcing, Draining};

    /// Members with their standings, each since time 0.
    fn table(members: &[(u64, Standing)]) -> BucketTable {
        timed(&members.iter().map(|&(id, standing)| (id, standing, 0)).collect::<Vec<_>>())
    }

    /// Members with their standings and since when.
    fn timed(members: &[(u64, Standing, u64)]) -> BucketTable {
        let members = members
            .iter()
            .map(|&(id, standing, since_ms)| (id, MemberState { standing, since_ms }))
            .collect();
        BucketTable::derive(&members)
    }

    /// Who takes each bucket's new connections.
    fn owners(table: &BucketTable) -> Vec<Option<u64>> {
        table.hops().iter().map(|h| h.first).collect()
    }

    #[test]
    fn three_announcing_members_share_the_buckets_about_evenly() {
        let table = table(&[(1, Announcing), (2, Announcing), (3, Announcing)]);
        for node in 1..=3 {
            let share = owners(&table).iter().filter(|o| **o == Some(node)).count();
            assert!((60..=110).contains(&share), "node {node} has {share} of {BUCKETS}");
        }
        for hops in table.hops() {
            assert!(hops.second.is_some() && hops.second != hops.first, "{hops:?}");
        }
    }

    #[test]
    fn the_table_depends_only_on_the_members_not_on_their_order() {
        let a = table(&[(1, Announcing), (2, Announcing), (3, Draining)]);
        let b = table(&[(3, Draining), (2, Announcing), (1, Announcing)]);
        assert_eq!(a, b);
    }

    #[test]
    fn a_draining_member_is_second_hop_of_exactly_the_buckets_it_held() {
        let before = table(&[(1, Announcing), (2, Announcing), (3, Announcing)]);
        let after = table(&[(1, Announcing), (2, Announcing), (3, Draining)]);
        for (old, new) in before.hops().iter().zip(after.hops()) {
            if old.first == Some(3) {
                assert_ne!(new.first, Some(3));
                assert_eq!(new.second, Some(3), "its connections are found where they live");
            } else {
                // Nobody else's bucket moves.
                assert_eq!(new.first, old.first);
            }
        }
    }

    #[test]
    fn an_added_member_takes_buckets_whose_second_hop_is_their_last_owner() {
        let before = table(&[(1, Announcing), (2, Announcing)]);
        let after = table(&[(1, Announcing), (2, Announcing), (3, Announcing)]);
        let taken = before.hops().iter().zip(after.hops()).filter(|(old, new)| {
            if new.first == Some(3) {
                assert_eq!(new.second, old.first, "the connections it did not make go on");
                true
            } else {
                assert_eq!(new.first, old.first);
                false
            }
        });
        assert!(taken.count() > 50);
    }

    #[test]
    fn a_member_back_from_draining_takes_its_buckets_back_with_their_owner_second() {
        let drained = table(&[(1, Announcing), (2, Announcing), (3, Draining)]);
        let back = table(&[(1, Announcing), (2, Announcing), (3, Announcing)]);
        for (old, new) in drained.hops().iter().zip(back.hops()) {
            if new.first == Some(3) {
                assert_eq!(new.second, old.first);
            }
        }
    }

    #[test]
    fn a_long_drained_member_does_not_hide_the_last_holder() {
        // Node 9 has drained since time 0; node 3 drains at 100.
        let before =
            timed(&[(1, Announcing, 0), (2, Announcing, 0), (3, Announcing, 0), (9, Draining, 0)]);
        let after =
            timed(&[(1, Announcing, 0), (2, Announcing, 0), (3, Draining, 100), (9, Draining, 0)]);
        for (old, new) in before.hops().iter().zip(after.hops()) {
            if old.first == Some(3) {
                assert_eq!(new.second, Some(3), "{old:?} then {new:?}");
            }
        }
        // Node 3 announces again at 200: its buckets' connections are on their owner of the
        // meantime, not on node 9.
        let back = timed(&[
            (1, Announcing, 0),
            (2, Announcing, 0),
            (3, Announcing, 200),
            (9, Draining, 0),
        ]);
        let mut checked = 0;
        for (meantime, new) in after.hops().iter().zip(back.hops()) {
            if new.first == Some(3) {
                assert_eq!(new.second, meantime.first, "{meantime:?} then {new:?}");
                checked += 1;
            }
        }
        assert!(checked > 30);
        // A member added at 300 likewise takes its buckets from their owner of the moment.
        let added = timed(&[
            (1, Announcing, 0),
            (2, Announcing, 0),
            (3, Announcing, 200),
            (4, Announcing, 300),
            (9, Draining, 0),
        ]);
        for (old, new) in back.hops().iter().zip(added.hops()) {
            if new.first == Some(4) {
                assert_eq!(new.second, old.first, "{old:?} then {new:?}");
            }
        }
    }

    #[test]
    fn a_member_gone_loses_only_its_own_buckets() {
        let before = table(&[(1, Announcing), (2, Announcing), (3, Announcing)]);
        let after = table(&[(1, Announcing), (2, Announcing)]);
        for (old, new) in before.hops().iter().zip(after.hops()) {
            if old.first != Some(3) {
                assert_eq!(new.first, old.first);
            }
            assert!(new.first.is_some() && new.first != Some(3));
        }
    }

    #[test]
    fn with_nobody_announcing_no_bucket_has_a_first_hop() {
        let table = table(&[(1, Draining), (2, Draining)]);
        assert!(table.hops().iter().all(|h| h.first.is_none() && h.second.is_some()));
        let empty = BucketTable::derive(&BTreeMap::new());
        assert!(empty.hops().iter().all(|h| *h == Hops::default()));
    }

    #[test]
    fn weights_are_fixed_across_releases() {
        // Nodes of different releases must derive the same table.
        assert_eq!(weight(0, 1), 4_706_896_644_969_173_947);
    }
}
