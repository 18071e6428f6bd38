//! Second-chance forwarding: the connections of a VIP handed over in a planned way live on
//! at the old master until they end.
//!
//! Once a client's ARP entry names the new master, the client's packets of a connection the
//! old master holds reach the new master, whose kernel would answer them with a reset. So,
//! while the old master drains:
//! - it keeps each VIP as a local address on `lo`, hidden from ARP: requests for it are
//!   dropped, and its own ARP requests name its link address rather than the VIP, so no
//!   client's entry turns back to it;
//! - every peer told of the drain hands each packet for the VIP that belongs to no local
//!   connection (not a SYN, new to its conntrack, which picks up connections mid-stream as
//!   with the default `nf_conntrack_tcp_loose = 1`, or invalid to it: a FIN or RST it
//!   cannot place, a packet outside the window of a closed connection of its own) on to
//!   the old master, unchanged, with nftables' `dup` to the old master's link address and a
//!   drop of the original; the old master answers the client directly. Only the newest drain of a VIP is forwarded to: an
//!   older one's packets reach it through the newer, which does not know them either.
//!
//! Peers hold a drain for a lease the old master renews, so the rules of an old master that
//! died are gone within the lease and its clients get resets rather than silence. Every
//! rule of this node is one nftables ruleset ([`render`]) loaded whole with `nft -f -`, so a
//! change is atomic; loading it at start also removes anything a killed fulcrumd left.
//! Conntrack is kept on from start (the ruleset always uses it), so a connection this node
//! accepted before any drain began is known as its own and never handed on.
//!
//! The same tables carry the quorum fence's kernel side: the `fenced` set (the VIPs under the
//! fence) and the `held` set (those this node holds a lease for, each element timing out with
//! the lease); ARP replies and new connections for a fenced VIP pass only while it is held.
//! IPv6 VIPs have both in an `ip6` table of their own: the fence (new connections, and
//! Neighbor Advertisements, which the kernel sends from the VIP itself) and the forwarding to
//! the old master's link-local address. An IPv6 VIP on `lo` needs no hiding: the kernel
//! answers a solicitation only for an address on the interface it came in on, and does not
//! pick an address of another interface as the source of its own solicitations.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fulcrum_vrrp::VipManager;
use tokio::time::Instant;

use fulcrum_policy::lock;

use crate::nft::{NftError, load, quotable};

/// The nftables table (in the `ip`, `ip6` and `arp` families) that holds this node's rules.
const TABLE: &str = "fulcrum";
/// How much earlier than the lease a fenced VIP's `held` element is set to end: room for
/// `nft` to apply it late without the kernel answering past the lease.
const KERNEL_LEAD: Duration = Duration::from_millis(30);
/// The longest `nft` may take to set a lease's timeout: the lead above plus half the
/// leader's safety margin (`fence::SAFETY`), so the element still ends before the leader may
/// give the VRID away.
const SLOWEST_LOAD: Duration = Duration::from_millis(50);
/// How many times a lease's timeout is written before a slow `nft` costs the VIPs.
const SLOW_LOAD_TRIES: usize = 3;
/// How often lapsed leases are looked for.
const EXPIRY_CHECK: Duration = Duration::from_millis(250);

/// Why second-chance forwarding could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    /// `nft` failed.
    #[error("second-chance rules: {0}")]
    Nft(#[from] NftError),
    /// `nft` took longer than the fence allows to set a lease's timeout, again and again.
    #[error("nft took over {0:?} to set a lease's timeout on every try: the VIPs are dropped")]
    NftSlow(Duration),
    /// An interface name nftables could not take quoted.
    #[error("interface name {0:?} cannot be written in an nftables rule")]
    Interface(String),
    /// The VIP could not be kept on or taken off `lo`.
    #[error("cannot keep a VIP on lo: {0}")]
    Loopback(#[from] fulcrum_vrrp::DriverError),
}

/// Packets for `vip` that belong to no local connection go on to `to`, out of `interface`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Forward {
    /// The VIP.
    pub vip: IpAddr,
    /// The old master's address of the VIP's family on the VIP's link.
    pub to: IpAddr,
    /// That link here.
    pub interface: String,
}

/// `vip` is held here while draining: exempt from the fence, and an IPv4 one hidden from ARP,
/// with `source` (this node's link address) named in its ARP requests instead.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Hidden {
    /// The VIP.
    pub vip: IpAddr,
    /// This node's IPv4 address on the VIP's link.
    pub source: Ipv4Addr,
}

/// Everything this node's ruleset does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Rules {
    /// Forwarding for peers' drains.
    pub forward: Vec<Forward>,
    /// VIPs this node drains.
    pub hidden: Vec<Hidden>,
    /// VIPs under the quorum fence: ARP replies or Neighbor Advertisements for them leave,
    /// and new connections to them come in, only while they are in the `held` set, whose
    /// elements time out with the lease (see `fence`).
    pub fenced: Vec<IpAddr>,
}

/// The `held` set's elements: a fenced VIP this node holds a lease for, with how long the
/// lease runs yet.
pub(crate) type Held = [(IpAddr, Duration)];

/// The tables an IPv4 VIP's fence elements go in, or an IPv6 VIP's.
fn fence_tables(vip: IpAddr) -> &'static [&'static str] {
    match vip {
        IpAddr::V4(_) => &["ip", "arp"],
        IpAddr::V6(_) => &["ip6"],
    }
}

/// Every table family this node writes.
const TABLE_FAMILIES: [&str; 3] = ["ip", "ip6", "arp"];

/// The name of the set of fenced VIPs this node may answer for, in both tables.
const HELD: &str = "held";

/// The `nft -f` script that replaces this node's tables with `rules`, in one transaction,
/// with `held` in the `held` set.
pub(crate) fn render(rules: &Rules, held: &Held) -> String {
    let mut script = String::new();
    let s = &mut script;
    s.push_str(&render_removal());
    let _ = writeln!(s, "table ip {TABLE} {{");
    render_fence_sets(s, "ip", rules, held);
    render_fence_and_forwarding(s, "ip", rules);
    let _ = writeln!(s, "}}");
    let _ = writeln!(s, "table ip6 {TABLE} {{");
    render_fence_sets(s, "ip6", rules, held);
    render_fence_and_forwarding(s, "ip6", rules);
    let _ = writeln!(s, "\tchain fence_announce {{");
    let _ = writeln!(s, "\t\ttype filter hook output priority filter; policy accept;");
    // The kernel answers a solicitation for an address of its own from that address.
    let _ = writeln!(
        s,
        "\t\ticmpv6 type nd-neighbor-advert ip6 saddr @fenced ip6 saddr != @{HELD} drop"
    );
    let _ = writeln!(s, "\t}}\n}}");
    let _ = writeln!(s, "table arp {TABLE} {{");
    render_fence_sets(s, "arp", rules, held);
    let _ = writeln!(s, "\tchain fence {{");
    let _ = writeln!(s, "\t\ttype filter hook output priority filter; policy accept;");
    let _ =
        writeln!(s, "\t\tarp operation reply arp saddr ip @fenced arp saddr ip != @{HELD} drop");
    let _ = writeln!(s, "\t}}");
    let _ = writeln!(s, "\tchain hide_requests {{");
    let _ = writeln!(s, "\t\ttype filter hook input priority filter; policy accept;");
    let hidden_v4 = || rules.hidden.iter().filter(|hidden| hidden.vip.is_ipv4());
    for hidden in hidden_v4() {
        let _ = writeln!(s, "\t\tarp operation request arp daddr ip {} drop", hidden.vip);
    }
    let _ = writeln!(s, "\t}}\n\tchain hide_source {{");
    let _ = writeln!(s, "\t\ttype filter hook output priority filter; policy accept;");
    for hidden in hidden_v4() {
        let _ = writeln!(s, "\t\tarp saddr ip {} arp saddr ip set {}", hidden.vip, hidden.source);
    }
    let _ = writeln!(s, "\t}}\n}}");
    script
}

/// The `fence` and `second_chance` chains of the `ip` or `ip6` table, for the VIPs of that
/// family.
fn render_fence_and_forwarding(s: &mut String, family: &str, rules: &Rules) {
    let here = |vip: &IpAddr| fence_tables(*vip).contains(&family);
    let _ = writeln!(s, "\tchain fence {{");
    // After conntrack: a connection established while this node held the VIP (or one it
    // drains after a hand-over) carries on; nothing new starts here without the lease.
    let _ = writeln!(s, "\t\ttype filter hook prerouting priority mangle; policy accept;");
    // A VIP this node drains after a planned hand-over (on lo) still takes the clients whose
    // neighbour entry names this node until the new master's announcement reaches them:
    // that is what keeps a planned move from losing a request.
    for hidden in rules.hidden.iter().filter(|hidden| here(&hidden.vip)) {
        let _ = writeln!(s, "\t\t{family} daddr {} accept", hidden.vip);
    }
    let _ = writeln!(s, "\t\t{family} daddr @fenced {family} daddr != @{HELD} ct state new drop");
    let _ = writeln!(s, "\t}}");
    let _ = writeln!(s, "\tchain second_chance {{");
    // After conntrack (-200), so every packet carries its connection's state.
    let _ = writeln!(s, "\t\ttype filter hook prerouting priority mangle; policy accept;");
    let _ = writeln!(s, "\t\tct state established,related accept");
    for forward in rules.forward.iter().filter(|forward| here(&forward.vip)) {
        let (vip, to, interface) = (forward.vip, forward.to, &forward.interface);
        let hand_on = format!("dup to {to} device \"{interface}\" drop");
        // New: picked up mid-stream, a connection this node does not know. Invalid: a FIN or
        // RST conntrack will not pick up (without it the old master never learns its client
        // closed), or a packet out of the window of an entry this node keeps from a closed
        // connection of its own on the same addresses and ports (a client port reused).
        let _ = writeln!(
            s,
            "\t\tct state new,invalid {family} daddr {vip} tcp flags & (syn | ack) != syn {hand_on}"
        );
    }
    let _ = writeln!(s, "\t}}");
}

/// The `fenced` and `held` sets of the table of `family`, with the VIPs that go in it.
fn render_fence_sets(s: &mut String, family: &str, rules: &Rules, held: &Held) {
    let here = |vip: &IpAddr| fence_tables(*vip).contains(&family);
    let address_type = if family == "ip6" { "ipv6_addr" } else { "ipv4_addr" };
    let _ = writeln!(s, "\tset fenced {{\n\t\ttype {address_type}");
    let fenced: Vec<&IpAddr> = rules.fenced.iter().filter(|vip| here(vip)).collect();
    if !fenced.is_empty() {
        let _ = writeln!(s, "\t\telements = {{ {} }}", list(fenced.iter()));
    }
    let _ = writeln!(s, "\t}}\n\tset {HELD} {{\n\t\ttype {address_type}\n\t\tflags timeout");
    let live: Vec<String> = held
        .iter()
        .filter(|(vip, left)| here(vip) && left.as_millis() > 0)
        .map(|(vip, left)| format!("{vip} timeout {}ms", left.as_millis()))
        .collect();
    if !live.is_empty() {
        let _ = writeln!(s, "\t\telements = {{ {} }}", live.join(", "));
    }
    let _ = writeln!(s, "\t}}");
}

/// The script that puts `held` in the `held` sets with fresh timeouts (an element's timeout
/// is set only when it is added, so each is added, deleted and added again, all in one
/// transaction) and takes `dropped` out.
pub(crate) fn render_held(held: &Held, dropped: &[IpAddr]) -> String {
    let mut script = String::new();
    let gone = dropped.iter().map(|vip| (*vip, Duration::ZERO));
    let elements: Vec<(IpAddr, Duration)> = held.iter().copied().chain(gone).collect();
    for family in TABLE_FAMILIES {
        let set = format!("{family} {TABLE} {HELD}");
        for (vip, left) in elements.iter().filter(|(vip, _)| fence_tables(*vip).contains(&family)) {
            let _ = writeln!(script, "add element {set} {{ {vip} }}");
            let _ = writeln!(script, "delete element {set} {{ {vip} }}");
            if left.as_millis() > 0 {
                let _ = writeln!(
                    script,
                    "add element {set} {{ {vip} timeout {}ms }}",
                    left.as_millis()
                );
            }
        }
    }
    script
}

fn list<T: std::fmt::Display>(items: impl Iterator<Item = T>) -> String {
    items.map(|item| item.to_string()).collect::<Vec<_>>().join(", ")
}

/// The script that removes this node's tables.
fn render_removal() -> String {
    // Adding first makes the delete valid whether or not the table exists.
    TABLE_FAMILIES
        .iter()
        .map(|family| format!("add table {family} {TABLE}\ndelete table {family} {TABLE}\n"))
        .collect()
}

/// TCP states (`/proc/net/tcp`'s `st`, hex) in which the client still has to reach this
/// node: established, SYN received, FIN wait 1 (our data or FIN not yet acknowledged),
/// close wait, last ACK, closing. FIN wait 2 and TIME_WAIT are not: everything sent arrived.
const STILL_TALKING: [&str; 6] = ["01", "03", "04", "08", "09", "0B"];

/// How many sockets in a `/proc/net/tcp` or `/proc/net/tcp6` table (where an IPv4 client of
/// a dual-stack listener shows as `::ffff:a.b.c.d`) have a local address among `vips` and
/// still need the client's packets.
pub(crate) fn open_connections(table: &str, vips: &[IpAddr]) -> usize {
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let mut fields = line.split_whitespace();
            let (Some(_slot), Some(local), Some(_remote), Some(state)) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return false;
            };
            let address = local.split_once(':').and_then(|(hex, _port)| local_address(hex));
            address.is_some_and(|a| vips.contains(&a)) && STILL_TALKING.contains(&state)
        })
        .count()
}

/// The address in a `/proc/net/tcp{,6}` address field (an IPv4-mapped one as IPv4): the
/// kernel prints each 32-bit word as it sits in memory, read as a host integer.
fn local_address(hex: &str) -> Option<IpAddr> {
    let word = |i: usize| {
        hex.get(i * 8..i * 8 + 8)
            .and_then(|w| u32::from_str_radix(w, 16).ok())
            .map(u32::to_ne_bytes)
    };
    match hex.len() {
        8 => word(0).map(|bytes| IpAddr::V4(bytes.into())),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            Some(IpAddr::V6(Ipv6Addr::from(bytes)).to_canonical())
        }
        _ => None,
    }
}

/// A peer's drain, as told to this node.
#[derive(Clone, Debug)]
struct PeerDrain {
    vips: Vec<IpAddr>,
    /// The old master's IPv6 address on the link, where its IPv6 VIPs' packets go.
    via_v6: Option<Ipv6Addr>,
    interface: String,
    /// When this node first heard of it: the newest drain of a VIP wins.
    since: Instant,
    until: Instant,
}

/// A drain of this node's own.
#[derive(Clone, Debug)]
struct OwnDrain {
    vips: Vec<IpAddr>,
    source: Ipv4Addr,
}

#[derive(Debug, Default)]
struct State {
    /// By VRID and the old master's link address.
    peers: BTreeMap<(u8, Ipv4Addr), PeerDrain>,
    /// By VRID.
    own: BTreeMap<u8, OwnDrain>,
    /// The VIPs under the quorum fence.
    fenced: Vec<IpAddr>,
    /// The fenced VIPs this node may answer for, until when.
    held: BTreeMap<IpAddr, Instant>,
}

impl State {
    fn rules(&self, now: Instant) -> Rules {
        let mut newest: BTreeMap<IpAddr, (Instant, Forward)> = BTreeMap::new();
        for ((_, via), drain) in self.peers.iter().filter(|(_, d)| d.until > now) {
            for vip in &drain.vips {
                let to = match vip {
                    IpAddr::V4(_) => IpAddr::V4(*via),
                    IpAddr::V6(_) => match drain.via_v6 {
                        Some(via_v6) => IpAddr::V6(via_v6),
                        None => continue,
                    },
                };
                let forward = Forward { vip: *vip, to, interface: drain.interface.clone() };
                if newest.get(vip).is_none_or(|(since, _)| *since < drain.since) {
                    newest.insert(*vip, (drain.since, forward));
                }
            }
        }
        let mut rules = Rules {
            forward: newest.into_values().map(|(_, forward)| forward).collect(),
            hidden: Vec::new(),
            fenced: self.fenced.clone(),
        };
        for drain in self.own.values() {
            rules
                .hidden
                .extend(drain.vips.iter().map(|vip| Hidden { vip: *vip, source: drain.source }));
        }
        rules.hidden.sort();
        rules.hidden.dedup();
        rules
    }

    /// The held set as of `now`: each VIP with how long it may still be answered for.
    fn held(&self, now: Instant) -> Vec<(IpAddr, Duration)> {
        self.held.iter().map(|(vip, until)| (*vip, until.saturating_duration_since(now))).collect()
    }
}

/// This node's part in second-chance forwarding: its drains, its peers' drains, and the
/// ruleset that follows from them.
pub struct Handover {
    loopback: VipManager,
    state: Mutex<State>,
    /// Set by [`Handover::stop`]: nothing is loaded afterwards.
    stopped: AtomicBool,
    /// The rules loaded last; held while loading, so loads happen one at a time and in order.
    loaded: tokio::sync::Mutex<Option<Rules>>,
}

impl Handover {
    /// Loads the empty ruleset and takes `vips` off `lo` (replacing whatever a killed run
    /// left), then keeps the rules up to date: peers' lapsed drains are dropped and a failed
    /// load is retried. `interfaces` are the VRRP links, whose names go into rules; `fenced`
    /// the VIPs this node may answer for only while it holds a lease.
    pub async fn start(
        interfaces: &[String],
        vips: &[IpAddr],
        fenced: &[IpAddr],
    ) -> Result<Arc<Handover>, HandoverError> {
        if let Some(bad) = interfaces.iter().find(|i| !quotable(i)) {
            return Err(HandoverError::Interface(bad.clone()));
        }
        let state = State { fenced: fenced.to_vec(), ..State::default() };
        let handover = Arc::new(Handover {
            loopback: VipManager::open("lo")?,
            state: Mutex::new(state),
            stopped: AtomicBool::new(false),
            loaded: tokio::sync::Mutex::new(None),
        });
        handover.reconcile().await?;
        for vip in vips {
            handover.loopback.remove(*vip).await?;
        }
        let weak = Arc::downgrade(&handover);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(EXPIRY_CHECK);
            loop {
                tick.tick().await;
                let Some(handover) = weak.upgrade() else { return };
                handover.expire();
                handover.reconcile_or_log().await;
            }
        });
        Ok(handover)
    }

    /// Starts draining `vrid` here: its `vips` stay local (on `lo`) and leave ARP to the new
    /// master, with `source` (this node's link address) in this node's ARP requests. False,
    /// changing nothing, if `vrid` is draining already.
    pub async fn hold(
        &self,
        vrid: u8,
        vips: &[IpAddr],
        source: Ipv4Addr,
    ) -> Result<bool, HandoverError> {
        {
            let mut state = lock(&self.state);
            if state.own.contains_key(&vrid) {
                return Ok(false);
            }
            state.own.insert(vrid, OwnDrain { vips: vips.to_vec(), source });
        }
        for vip in vips {
            if let Err(error) = self.loopback.add(*vip).await {
                self.release(vrid).await;
                return Err(error.into());
            }
        }
        if let Err(error) = self.reconcile().await {
            self.release(vrid).await;
            return Err(error);
        }
        Ok(true)
    }

    /// Ends this node's drain of `vrid`: the VIPs leave `lo` and ARP is left alone (but a
    /// VIP that could not leave `lo` stays hidden, or this node would answer ARP for it).
    pub async fn release(&self, vrid: u8) {
        let Some(drain) = lock(&self.state).own.get(&vrid).cloned() else { return };
        let mut kept = Vec::new();
        for vip in &drain.vips {
            if let Err(error) = self.loopback.remove(*vip).await {
                tracing::error!(vrid, %vip, "cannot take a drained VIP off lo, so it stays hidden from ARP: {error}");
                kept.push(*vip);
            }
        }
        {
            let mut state = lock(&self.state);
            if kept.is_empty() {
                state.own.remove(&vrid);
            } else {
                state.own.insert(vrid, OwnDrain { vips: kept, source: drain.source });
            }
        }
        self.reconcile_or_log().await;
    }

    /// A peer (at `via` on the link) drains `vrid`'s `vips` for `lease` more: forward to it
    /// out of `interface`. An error if the rules could not be loaded: then this node does
    /// not forward for a drain it newly heard of, and the peer must be told.
    pub async fn peer_draining(
        &self,
        vrid: u8,
        vips: Vec<IpAddr>,
        (via, via_v6): (Ipv4Addr, Option<Ipv6Addr>),
        interface: String,
        lease: Duration,
    ) -> Result<(), HandoverError> {
        let known = {
            let now = Instant::now();
            let mut state = lock(&self.state);
            let known = state.peers.get(&(vrid, via)).map(|known| known.since);
            let since = known.unwrap_or(now);
            let drain = PeerDrain { vips, via_v6, interface, since, until: now + lease };
            state.peers.insert((vrid, via), drain);
            known.is_some()
        };
        let loaded = self.reconcile().await;
        if loaded.is_err() && !known {
            lock(&self.state).peers.remove(&(vrid, via));
        }
        loaded
    }

    /// The peer at `via` finished draining `vrid`.
    pub async fn peer_drained(&self, vrid: u8, via: Ipv4Addr) {
        lock(&self.state).peers.remove(&(vrid, via));
        self.reconcile_or_log().await;
    }

    /// Drops peers' drains whose lease ran out (a peer that died mid-drain).
    fn expire(&self) {
        let now = Instant::now();
        lock(&self.state).peers.retain(|(vrid, via), drain| {
            let live = drain.until > now;
            if !live {
                tracing::warn!(vrid, %via, "a peer's drain lease ran out (peer down?): no longer forwarding to it");
            }
            live
        });
    }

    /// Removes this node's tables and any VIP it still holds on `lo`, for good; for a
    /// stopping node.
    pub async fn stop(&self) {
        let own: Vec<u8> = lock(&self.state).own.keys().copied().collect();
        for vrid in own {
            self.release(vrid).await;
        }
        let mut loaded = self.loaded.lock().await;
        self.stopped.store(true, Ordering::Relaxed);
        *loaded = None;
        if let Err(error) = load(&render_removal()).await {
            tracing::error!("cannot remove the second-chance ruleset: {error}");
        }
    }

    /// Lets this node answer for the fenced `vips` until `lease_end` (when its lease runs
    /// out), in the kernel: the elements time out by themselves if nothing renews them. The
    /// time left is taken as late as possible, just before `nft` runs.
    pub(crate) async fn hold_fenced(
        &self,
        vips: &[IpAddr],
        lease_end: std::time::Instant,
    ) -> Result<(), HandoverError> {
        let loaded = self.loaded.lock().await;
        // The element ends a little before the lease, so the time `nft` takes to set it
        // does not carry it past the lease's end; a load slower than the margins allow is
        // written again with the time then left (a few tries), and failing that the VIPs
        // are dropped.
        for _ in 0..SLOW_LOAD_TRIES {
            let started = std::time::Instant::now();
            let left = lease_end.saturating_duration_since(started).saturating_sub(KERNEL_LEAD);
            let until = Instant::now() + left;
            lock(&self.state).held.extend(vips.iter().map(|vip| (*vip, until)));
            if loaded.is_none() {
                return Ok(());
            }
            let held: Vec<_> = vips.iter().map(|vip| (*vip, left)).collect();
            load(&render_held(&held, &[])).await?;
            if started.elapsed() <= SLOWEST_LOAD {
                return Ok(());
            }
        }
        lock(&self.state).held.retain(|vip, _| !vips.contains(vip));
        load(&render_held(&[], vips)).await?;
        Err(HandoverError::NftSlow(SLOWEST_LOAD))
    }

    /// Stops this node answering for the fenced `vips`, at once.
    pub async fn drop_fenced(&self, vips: &[IpAddr]) -> Result<(), HandoverError> {
        let loaded = self.loaded.lock().await;
        lock(&self.state).held.retain(|vip, _| !vips.contains(vip));
        if loaded.is_none() {
            return Ok(());
        }
        Ok(load(&render_held(&[], vips)).await?)
    }

    async fn reconcile_or_log(&self) {
        if let Err(error) = self.reconcile().await {
            tracing::error!("second-chance forwarding not updated: {error}");
        }
    }

    /// Loads the rules the state calls for, if they differ from those loaded.
    async fn reconcile(&self) -> Result<(), HandoverError> {
        let mut loaded = self.loaded.lock().await;
        let wanted = lock(&self.state).rules(Instant::now());
        if loaded.as_ref() == Some(&wanted) || self.stopped.load(Ordering::Relaxed) {
            return Ok(());
        }
        let held = lock(&self.state).held(Instant::now());
        load(&render(&wanted, &held)).await?;
        tracing::info!(forward = ?wanted.forward, hidden = ?wanted.hidden, "second-chance rules loaded");
        *loaded = Some(wanted);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIP4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
    const VIP: IpAddr = IpAddr::V4(VIP4);
    const VIP6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x18, 0, 0, 0, 0, 0x100));
    const OLD_MASTER_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x11);
    const OLD_MASTER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);

    #[test]
    fn the_empty_ruleset_keeps_conntrack_on_and_forwards_nothing() {
        let script = render(&Rules::default(), &[]);
        assert!(script.starts_with("add table ip fulcrum\ndelete table ip fulcrum\n"));
        assert!(script.contains("ct state established,related accept"));
        assert!(!script.contains("dup"));
        assert!(!script.contains("elements"), "nothing fenced, held or hidden: {script}");
    }

    #[test]
    fn a_peer_drain_forwards_what_is_not_a_new_connection() {
        let rules = Rules {
            forward: vec![Forward { vip: VIP, to: OLD_MASTER.into(), interface: "eth0".into() }],
            ..Rules::default()
        };
        let script = render(&rules, &[]);
        assert!(script.contains(
            "ct state new,invalid ip daddr 198.18.0.100 tcp flags & (syn | ack) != syn dup to 198.18.0.11 device \"eth0\" drop"
        ));
        let established = script.find("ct state established").expect("established first");
        assert!(established < script.find("dup to").expect("then the forward"));
    }

    #[test]
    fn a_held_vip_answers_no_arp_and_is_never_an_arp_source() {
        let rules =
            Rules { hidden: vec![Hidden { vip: VIP, source: OLD_MASTER }], ..Rules::default() };
        let script = render(&rules, &[]);
        assert!(script.contains("arp operation request arp daddr ip 198.18.0.100 drop"));
        assert!(script.contains("arp saddr ip 198.18.0.100 arp saddr ip set 198.18.0.11"));
        let exempt = script.find("ip daddr 198.18.0.100 accept").expect("a drained VIP is exempt");
        assert!(exempt < script.find("ip daddr @fenced").expect("before the fence's drop"));
    }

    #[test]
    fn a_fenced_vip_is_answered_only_while_held() {
        let rules = Rules { fenced: vec![VIP], ..Rules::default() };
        let script = render(&rules, &[(VIP, Duration::from_millis(480))]);
        assert_eq!(script.matches("elements = { 198.18.0.100 }").count(), 2, "{script}");
        assert_eq!(script.matches("elements = { 198.18.0.100 timeout 480ms }").count(), 2);
        assert!(script.contains("ip daddr @fenced ip daddr != @held ct state new drop"));
        assert!(
            script.contains("arp operation reply arp saddr ip @fenced arp saddr ip != @held drop")
        );
        let lapsed = render(&rules, &[(VIP, Duration::ZERO)]);
        assert!(!lapsed.contains("timeout 0ms"), "a lapsed lease is not written back: {lapsed}");
    }

    #[test]
    fn a_fenced_ipv6_vip_is_answered_and_announced_only_while_held() {
        let v6: IpAddr = "2001:db8:18::100".parse().unwrap();
        let rules = Rules { fenced: vec![VIP, v6], ..Rules::default() };
        let script = render(&rules, &[(v6, Duration::from_millis(480))]);
        let ip6 = &script[script.find("table ip6 fulcrum {").expect("an ip6 table")..];
        let ip6 = &ip6[..ip6.find("table arp").expect("then the arp table")];
        assert!(ip6.contains("type ipv6_addr\n\t\telements = { 2001:db8:18::100 }"), "{ip6}");
        assert!(ip6.contains("elements = { 2001:db8:18::100 timeout 480ms }"), "{ip6}");
        assert!(ip6.contains("ip6 daddr @fenced ip6 daddr != @held ct state new drop"));
        assert!(
            ip6.contains(
                "icmpv6 type nd-neighbor-advert ip6 saddr @fenced ip6 saddr != @held drop"
            )
        );
        // Each address in its own family's tables only.
        assert_eq!(script.matches("2001:db8:18::100").count(), 2, "{script}");
        assert_eq!(script.matches("elements = { 198.18.0.100 }").count(), 2, "{script}");
        let held = render_held(&[(v6, Duration::from_millis(300))], &[VIP]);
        assert!(held.contains("add element ip6 fulcrum held { 2001:db8:18::100 timeout 300ms }"));
        assert!(
            !held.contains("ip fulcrum held { 2001") && !held.contains("ip6 fulcrum held { 198")
        );
        assert!(held.contains("delete element arp fulcrum held { 198.18.0.100 }"), "{held}");
    }

    #[test]
    fn a_renewal_replaces_the_element_in_both_tables_in_one_script() {
        let other = IpAddr::from([198, 18, 0, 101]);
        let script = render_held(&[(VIP, Duration::from_millis(588))], &[other]);
        for family in ["ip", "arp"] {
            let set = format!("{family} fulcrum held");
            let renewal = format!(
                "add element {set} {{ 198.18.0.100 }}\ndelete element {set} {{ 198.18.0.100 }}\nadd element {set} {{ 198.18.0.100 timeout 588ms }}\n"
            );
            assert!(script.contains(&renewal), "{script}");
            let removal = format!(
                "add element {set} {{ 198.18.0.101 }}\ndelete element {set} {{ 198.18.0.101 }}\n"
            );
            assert!(script.contains(&removal), "{script}");
        }
    }

    #[test]
    fn interface_names_that_would_break_the_script_are_refused() {
        assert!(quotable("eth0"));
        assert!(quotable("br-lab.10"));
        assert!(!quotable("eth\"0"));
        assert!(!quotable(""));
    }

    #[test]
    fn only_the_newest_drain_of_a_vip_is_forwarded_to() {
        let now = Instant::now();
        let later = now + Duration::from_secs(1);
        let until = now + Duration::from_secs(5);
        let drain = |since| PeerDrain {
            vips: vec![VIP],
            via_v6: None,
            interface: "eth0".into(),
            since,
            until,
        };
        let mut state = State::default();
        let newer = Ipv4Addr::new(198, 18, 0, 12);
        state.peers.insert((51, OLD_MASTER), drain(now));
        state.peers.insert((51, newer), drain(later));
        let forward = state.rules(later).forward;
        assert_eq!(forward.len(), 1, "{forward:?}");
        assert_eq!(forward[0].to, IpAddr::V4(newer));
    }

    #[test]
    fn lapsed_peer_drains_make_no_rules() {
        let now = Instant::now();
        let mut state = State::default();
        let drain = |until| PeerDrain {
            vips: vec![VIP],
            via_v6: None,
            interface: "eth0".into(),
            since: now,
            until,
        };
        state.peers.insert((51, OLD_MASTER), drain(now + Duration::from_secs(1)));
        assert_eq!(state.rules(now).forward.len(), 1);
        assert!(state.rules(now + Duration::from_secs(2)).forward.is_empty());
    }

    /// One `/proc/net/tcp` line: the kernel prints an address as it sits in memory, read as
    /// a host integer.
    fn socket_line(slot: u32, local: Ipv4Addr, state: &str) -> String {
        let hex = u32::from_ne_bytes(local.octets());
        format!(
            "{slot:>4}: {hex:08X}:0050 010012C6:A1B2 {state} 00000000:00000000 00:00000000 00000000     0        0 {slot} 1 0000000000000000 20 4 30 10 -1"
        )
    }

    #[test]
    fn open_connections_count_what_still_needs_the_client_on_the_vip() {
        let own = Ipv4Addr::new(198, 18, 0, 11);
        let mut table = vec![
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode".to_owned(),
        ];
        // A listener, established, TIME_WAIT, FIN wait 1, FIN wait 2 on the VIP, and an
        // established connection on the node's own address.
        for (slot, (local, state)) in
            [(VIP4, "0A"), (VIP4, "01"), (VIP4, "06"), (VIP4, "04"), (VIP4, "05"), (own, "01")]
                .into_iter()
                .enumerate()
        {
            table.push(socket_line(slot as u32, local, state));
        }
        let table = table.join("\n");
        assert_eq!(open_connections(&table, &[VIP]), 2, "established and FIN wait 1 only");
        assert_eq!(open_connections(&table, &[IpAddr::from([198, 18, 0, 101])]), 0);
        assert_eq!(open_connections("garbage\n1: zz:zz", &[VIP]), 0);

        // tcp6: a dual-stack listener's IPv4 client, ::ffff:198.18.0.100, established.
        let mapped: Vec<String> = [0u32, 0, u32::from_be_bytes([0, 0, 0xff, 0xff])]
            .iter()
            .map(|w| format!("{:08X}", u32::from_ne_bytes(w.to_be_bytes())))
            .chain(std::iter::once(format!("{:08X}", u32::from_ne_bytes(VIP4.octets()))))
            .collect();
        let line =
            format!("   0: {}:0050 00000000000000000000000000000000:0000 01 0", mapped.concat());
        assert_eq!(open_connections(&format!("header\n{line}"), &[VIP]), 1);

        // tcp6: a connection to an IPv6 VIP, established.
        let IpAddr::V6(vip6) = VIP6 else { unreachable!() };
        let words: Vec<String> = vip6
            .octets()
            .chunks(4)
            .map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
            .collect();
        let line = format!("   0: {}:0050 {}:A1B2 01 0", words.concat(), words.concat());
        assert_eq!(open_connections(&format!("header\n{line}"), &[VIP6]), 1);
        assert_eq!(open_connections(&format!("header\n{line}"), &[VIP]), 0);
    }

    #[test]
    fn an_ipv6_vip_is_forwarded_to_the_old_master_s_link_local_address_in_the_ip6_table() {
        let now = Instant::now();
        let mut state = State::default();
        let drain = |via_v6| PeerDrain {
            vips: vec![VIP, VIP6],
            via_v6,
            interface: "eth0".into(),
            since: now,
            until: now + Duration::from_secs(1),
        };
        state.peers.insert((51, OLD_MASTER), drain(None));
        let forward = state.rules(now).forward;
        assert_eq!(
            forward.iter().map(|f| f.vip).collect::<Vec<_>>(),
            [VIP],
            "no IPv6 address to forward to"
        );
        state.peers.insert((51, OLD_MASTER), drain(Some(OLD_MASTER_V6)));
        let rules = state.rules(now);
        let script = render(&rules, &[]);
        let ip6 = &script[script.find("table ip6 fulcrum {").expect("an ip6 table")..];
        assert!(ip6.contains(
            "ct state new,invalid ip6 daddr 2001:db8:18::100 tcp flags & (syn | ack) != syn dup to fe80::11 device \"eth0\" drop"
        ), "{ip6}");
        assert!(!ip6.contains("198.18.0.100"), "the IPv4 VIP is forwarded in the ip table: {ip6}");

        // This node's own drain of an IPv6 VIP: exempt from the fence, nothing for ARP.
        let own =
            Rules { hidden: vec![Hidden { vip: VIP6, source: OLD_MASTER }], ..Rules::default() };
        let script = render(&own, &[]);
        let exempt = script.find("ip6 daddr 2001:db8:18::100 accept").expect("exempt");
        assert!(exempt < script.find("ip6 daddr @fenced").expect("before the fence's drop"));
        assert!(!script.contains("arp daddr ip 2001"), "{script}");
    }
}
