//! The driver: runs virtual routers on real links, on an OS thread and runtime of its own so
//! that no data-plane load can delay an advertisement.
//!
//! One task per interface and address family owns that link's raw socket, its VIP manager,
//! its announcer (gratuitous ARP or Neighbor Advertisements) and every [`Router`] of that
//! family on it; it feeds the routers packets, timer expiries and
//! control messages with the current time, and carries out the actions they return. The
//! routers decide; this module only does what they say.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::announce::Announcer;
use crate::error::DriverError;
use crate::machine::{Action, InstanceConfig, Router, State, Timestamp};
use crate::socket::{AdvertSocket, Destination};
use crate::vip::VipManager;
use crate::wire::{ChecksumForm, DropCounters, DropReason, Family, Packet, check_received};

/// How a router announces its VIPs: gratuitous ARP for IPv4, unsolicited Neighbor
/// Advertisements for IPv6.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GarpSettings {
    /// Frames per VIP on becoming master.
    pub repeat: u32,
    /// Time between those frames.
    pub spacing: Duration,
    /// While master, announce again this often; `None` never.
    pub refresh: Option<Duration>,
}

impl Default for GarpSettings {
    fn default() -> GarpSettings {
        GarpSettings {
            repeat: 3,
            spacing: Duration::from_millis(100),
            refresh: Some(Duration::from_secs(60)),
        }
    }
}

/// One virtual router on one interface.
#[derive(Clone, Debug)]
pub struct InstanceSettings {
    /// The link.
    pub interface: String,
    /// The state machine's configuration.
    pub router: InstanceConfig,
    /// Multicast, or unicast to listed peers.
    pub destination: Destination,
    /// How transmitted advertisements are checksummed.
    pub checksum: ChecksumForm,
    /// Announcement behaviour (gratuitous ARP or Neighbor Advertisements).
    pub garp: GarpSettings,
    /// The VIPs wait for a permit ([`Vrrp::permit`]) besides mastership: a fenced master
    /// adds them, and announces them, only while permitted, and removes them when the permit
    /// goes. An unfenced one holds them whenever it is master.
    pub fenced: bool,
    /// With the fence: how long the VIPs are added for, refreshed every third of it while
    /// held, so the kernel removes them by itself when this process dies.
    pub address_lifetime: Option<Duration>,
    /// The other routers' addresses on the link: when not empty, advertisements from any
    /// other source are dropped (counted as from an unknown peer), so a host that is not a
    /// member cannot take the VIPs away.
    pub members: Vec<IpAddr>,
}

impl InstanceSettings {
    /// The router's address family, which its primary address sets.
    pub fn family(&self) -> Family {
        Family::of(self.router.primary_address)
    }
}

/// What one virtual router is doing, for logs, the admin API and metrics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InstanceStatus {
    /// The link.
    pub interface: String,
    /// The address family: a VRID runs once per family.
    pub family: Family,
    /// The VRID.
    pub vrid: u8,
    /// Initialize, Backup or Master.
    #[serde(serialize_with = "state_name")]
    pub state: State,
    /// The priority advertised now (after penalties).
    pub priority: u8,
    /// The master last heard from, while backup.
    pub master: Option<IpAddr>,
    /// Advertisements sent.
    pub adverts_sent: u64,
    /// Advertisements accepted for this VRID.
    pub adverts_received: u64,
    /// State changes since start.
    pub transitions: u64,
    /// Whether its VIPs are on the interface now (master, and permitted if fenced).
    pub holding: bool,
}

/// Packets one link dropped, by reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LinkStatus {
    /// The link.
    pub interface: String,
    /// The family of the VRRP socket the counts are for.
    pub family: Family,
    /// Drops by the receive checks of RFC 9568 §7.1.
    #[serde(serialize_with = "drop_counts")]
    pub drops: DropCounters,
    /// Advertisements from a source that is not a configured unicast peer or member.
    pub unknown_peer: u64,
}

/// Everything the driver reports.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Status {
    /// Each virtual router.
    pub instances: Vec<InstanceStatus>,
    /// Each link.
    pub links: Vec<LinkStatus>,
}

fn state_name<S: serde::Serializer>(state: &State, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(state.as_str())
}

fn drop_counts<S: serde::Serializer>(
    drops: &DropCounters,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_map(drops.iter())
}

#[derive(Clone, Debug)]
enum Control {
    Penalty { vrid: u8, penalty: u32 },
    Permit { vrid: u8, permitted: bool },
    Resign { vrid: u8 },
    Shutdown,
}

/// The running VRRP driver.
pub struct Vrrp {
    control: broadcast::Sender<Control>,
    status: watch::Receiver<Status>,
    /// Taken by the first stop.
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// How long startup (sockets, netlink, datalink channels) may take before it is reported failed.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

impl Vrrp {
    /// Checks the instances, opens every link and starts the routers. Errors (an unknown
    /// interface, a missing capability, an invalid instance) are reported before anything runs.
    pub fn start(instances: Vec<InstanceSettings>) -> Result<Vrrp, DriverError> {
        let mut links: Vec<(LinkKey, Vec<InstanceSettings>)> = Vec::new();
        for settings in instances {
            Router::new(settings.router.clone())
                .map_err(|source| DriverError::Config { vrid: settings.router.vrid, source })?;
            let key = LinkKey { interface: settings.interface.clone(), family: settings.family() };
            match links.iter_mut().find(|(link, _)| *link == key) {
                Some((_, list)) if list.iter().any(|s| s.router.vrid == settings.router.vrid) => {
                    return Err(DriverError::DuplicateVrid {
                        vrid: settings.router.vrid,
                        interface: settings.interface,
                        family: key.family,
                    });
                }
                Some((_, list)) => list.push(settings),
                None => links.push((key, vec![settings])),
            }
        }
        // A follower needs its VRID's IPv4 router, one that elects, on its interface.
        let leads = |interface: &str, vrid: u8| {
            links.iter().any(|(key, list)| {
                key.interface == interface
                    && key.family == Family::Ipv4
                    && list.iter().any(|s| s.router.vrid == vrid && !s.router.follower)
            })
        };
        for (key, list) in &links {
            let orphan = list.iter().find(|s| {
                s.router.follower
                    && (key.family == Family::Ipv4 || !leads(&key.interface, s.router.vrid))
            });
            if let Some(orphan) = orphan {
                return Err(DriverError::NoGroupLeader {
                    vrid: orphan.router.vrid,
                    interface: key.interface.clone(),
                });
            }
        }
        let initial = Status {
            instances: links
                .iter()
                .flat_map(|(_, list)| list)
                .map(|s| InstanceStatus {
                    interface: s.interface.clone(),
                    family: s.family(),
                    vrid: s.router.vrid,
                    state: State::Initialize,
                    priority: s.router.priority,
                    master: None,
                    adverts_sent: 0,
                    adverts_received: 0,
                    transitions: 0,
                    holding: false,
                })
                .collect(),
            links: links
                .iter()
                .map(|(key, _)| LinkStatus {
                    interface: key.interface.clone(),
                    family: key.family,
                    drops: DropCounters::default(),
                    unknown_peer: 0,
                })
                .collect(),
        };
        let (status_sender, status) = watch::channel(initial);
        let (control, _) = broadcast::channel(64);
        let control_for_thread = control.clone();
        let (ready_sender, ready) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("vrrp".into())
            .spawn(move || {
                let runtime =
                    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                        Ok(runtime) => runtime,
                        Err(source) => {
                            let _ = ready_sender
                                .send(Err(DriverError::Io { what: "VRRP runtime".into(), source }));
                            return;
                        }
                    };
                runtime.block_on(run(
                    links,
                    control_for_thread,
                    Arc::new(status_sender),
                    ready_sender,
                ));
            })
            .map_err(|source| DriverError::Io { what: "VRRP thread".into(), source })?;
        match ready.recv_timeout(STARTUP_TIMEOUT) {
            Ok(Ok(())) => Ok(Vrrp { control, status, thread: std::sync::Mutex::new(Some(thread)) }),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(DriverError::Io {
                what: "VRRP startup".into(),
                source: std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "links did not open in time",
                ),
            }),
        }
    }

    /// The current status.
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change.
    pub fn subscribe(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// Lowers `vrid`'s priority by `penalty` (the sum of failing tracked weights; 0 restores it).
    pub fn set_penalty(&self, vrid: u8, penalty: u32) {
        let _ = self.control.send(Control::Penalty { vrid, penalty });
    }

    /// If master of `vrid`, gives it away at once (a priority-0 advertisement) and stays a
    /// backup; see [`crate::machine::Router::resign`].
    pub fn resign(&self, vrid: u8) {
        let _ = self.control.send(Control::Resign { vrid });
    }

    /// Lets a fenced VRID's VIPs be held while master (`true`), or takes them away at once
    /// (`false`); an unfenced VRID ignores it.
    pub fn permit(&self, vrid: u8, permitted: bool) {
        let _ = self.control.send(Control::Permit { vrid, permitted });
    }

    /// Steps down: every master advertises priority 0 and removes its VIPs; then the thread
    /// ends. Returns once that is done.
    pub fn shutdown(&self) {
        let _ = self.control.send(Control::Shutdown);
        let thread = self.thread.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl Drop for Vrrp {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A link's task: one interface, one family.
#[derive(Clone, Debug, PartialEq, Eq)]
struct LinkKey {
    interface: String,
    family: Family,
}

async fn run(
    links: Vec<(LinkKey, Vec<InstanceSettings>)>,
    control: broadcast::Sender<Control>,
    status: Arc<watch::Sender<Status>>,
    ready: std::sync::mpsc::Sender<Result<(), DriverError>>,
) {
    let origin = Instant::now();
    let mut opened = Vec::new();
    for (key, instances) in links {
        match Link::open(key, instances, origin, Arc::clone(&status)) {
            Ok(link) => opened.push(link),
            Err(error) => {
                let _ = ready.send(Err(error));
                return;
            }
        }
    }
    // Subscribed before `start` returns, so no control message sent after it can be missed.
    let subscribed: Vec<_> = opened.into_iter().map(|link| (link, control.subscribe())).collect();
    if ready.send(Ok(())).is_err() {
        // `start` gave up waiting and reported failure: this late start must not run.
        tracing::error!("VRRP links opened after startup timed out; not starting them");
        return;
    }
    let supervised: Vec<_> = subscribed
        .into_iter()
        .map(|(link, control)| {
            let interface = link.interface.clone();
            let vips: Vec<IpAddr> =
                link.instances.iter().flat_map(|i| i.router.config().vips.clone()).collect();
            let task = tokio::spawn(link.run(control));
            async move {
                if let Err(failure) = task.await {
                    release_after_failure(&interface, &vips, failure).await;
                }
            }
        })
        .collect();
    futures_util::future::join_all(supervised).await;
}

/// A link task that died (a bug: it panicked) can no longer advertise, so it must not go on
/// holding VIPs a backup is about to take: release them, as keepalived's parent does for a
/// dead VRRP child. The thread then ends, which the node sees as the status channel closing.
async fn release_after_failure(interface: &str, vips: &[IpAddr], failure: tokio::task::JoinError) {
    tracing::error!(%interface, "VRRP stopped on this link after a failure: {failure}");
    let manager = match VipManager::open(interface) {
        Ok(manager) => manager,
        Err(error) => {
            tracing::error!(%interface, "cannot release the VIPs: {error}");
            return;
        }
    };
    for vip in vips {
        if let Err(error) = manager.remove(*vip).await {
            tracing::error!(%interface, %vip, "cannot release VIP: {error}");
        }
    }
}

struct Instance {
    router: Router,
    settings: InstanceSettings,
    /// The announcement burst in progress, aborted when mastership is lost.
    garp_burst: Option<JoinHandle<()>>,
    next_garp_refresh: Option<Instant>,
    master: Option<IpAddr>,
    adverts_sent: u64,
    adverts_received: u64,
    transitions: u64,
    /// The state machine wants the VIPs held (it is master).
    wants_vips: bool,
    /// The VIPs are on the interface.
    holding: bool,
    /// A fenced instance's permit; always true for an unfenced one.
    permitted: bool,
    /// When the VIPs' lifetime is next refreshed, while held.
    next_lifetime_refresh: Option<Instant>,
}

struct Link {
    interface: String,
    family: Family,
    socket: AdvertSocket,
    vips: VipManager,
    announcer: Arc<Mutex<Announcer>>,
    instances: Vec<Instance>,
    drops: DropCounters,
    unknown_peer: u64,
    /// Drops, receive errors, send errors and VIP-list mismatches are each logged at most once
    /// a second.
    drop_log: LogLimiter,
    receive_error_log: LogLimiter,
    send_error_log: LogLimiter,
    mismatch_log: LogLimiter,
    origin: Instant,
    status: Arc<watch::Sender<Status>>,
}

/// The largest datagram read: an IPv4 header with options and 255 IPv4 addresses fit, and
/// 127 IPv6 ones (a larger list is dropped as truncated).
const RECEIVE_BUFFER: usize = 2048;
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(1);
const RECEIVE_ERROR_PAUSE: Duration = Duration::from_millis(5);

impl Link {
    fn open(
        key: LinkKey,
        settings: Vec<InstanceSettings>,
        origin: Instant,
        status: Arc<watch::Sender<Status>>,
    ) -> Result<Link, DriverError> {
        let LinkKey { interface, family } = key;
        let first = settings.first().ok_or_else(|| DriverError::NoInterface(interface.clone()))?;
        let socket =
            AdvertSocket::open(&interface, first.router.primary_address, &first.destination)?;
        let vips = VipManager::open(&interface)?;
        let announcer = Arc::new(Mutex::new(Announcer::open(&interface)?));
        let instances = settings
            .into_iter()
            .map(|settings| {
                let router = Router::new(settings.router.clone())
                    .map_err(|source| DriverError::Config { vrid: settings.router.vrid, source })?;
                Ok(Instance {
                    router,
                    garp_burst: None,
                    next_garp_refresh: None,
                    master: None,
                    adverts_sent: 0,
                    adverts_received: 0,
                    transitions: 0,
                    wants_vips: false,
                    holding: false,
                    permitted: !settings.fenced,
                    next_lifetime_refresh: None,
                    settings,
                })
            })
            .collect::<Result<_, DriverError>>()?;
        Ok(Link {
            interface,
            family,
            socket,
            vips,
            announcer,
            instances,
            drops: DropCounters::default(),
            unknown_peer: 0,
            drop_log: LogLimiter::default(),
            receive_error_log: LogLimiter::default(),
            send_error_log: LogLimiter::default(),
            mismatch_log: LogLimiter::default(),
            origin,
            status,
        })
    }

    fn now(&self) -> Timestamp {
        Timestamp::after_origin(self.origin.elapsed())
    }

    fn instant_of(&self, timestamp: Timestamp) -> Instant {
        self.origin + timestamp.since_origin()
    }

    async fn run(mut self, mut control: broadcast::Receiver<Control>) {
        // A node that crashed as master left its VIPs behind; it starts holding none.
        let stale: Vec<IpAddr> =
            self.instances.iter().flat_map(|i| i.router.config().vips.clone()).collect();
        for vip in stale {
            if let Err(e) = self.vips.remove(vip).await {
                tracing::error!(interface = %self.interface, "cannot clear stale VIP: {e}");
            }
        }
        let now = self.now();
        for index in 0..self.instances.len() {
            self.instances[index].router.handle_startup(now);
            self.carry_out(index).await;
        }
        self.publish();
        let mut leaders = self.status.subscribe();
        let follows = self.instances.iter().any(|i| i.router.config().follower);
        let mut buffer = vec![0u8; RECEIVE_BUFFER];
        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                changed = leaders.changed(), if follows => match changed {
                    Ok(()) => self.follow_leaders().await,
                    // The sender lives as long as the driver: nothing to follow any more.
                    Err(_) => return,
                },
                message = control.recv() => match message {
                    Ok(Control::Penalty { vrid, penalty }) => {
                        let now = self.now();
                        if let Some(index) = self.instances.iter().position(|i| i.router.config().vrid == vrid) {
                            self.instances[index].router.set_priority_penalty(now, penalty);
                            self.carry_out(index).await;
                        }
                    }
                    Ok(Control::Permit { vrid, permitted }) => {
                        if let Some(index) = self.instances.iter().position(|i| i.router.config().vrid == vrid) {
                            self.set_permit(index, permitted).await;
                        }
                    }
                    Ok(Control::Resign { vrid }) => {
                        let now = self.now();
                        if let Some(index) = self.instances.iter().position(|i| i.router.config().vrid == vrid) {
                            self.instances[index].router.resign(now);
                            self.carry_out(index).await;
                        }
                    }
                    // Missed penalties are superseded by the ones still queued.
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(interface = %self.interface, missed, "VRRP control messages skipped");
                    }
                    // A closed channel means the owner is gone: step down.
                    Ok(Control::Shutdown) | Err(broadcast::error::RecvError::Closed) => {
                        for index in 0..self.instances.len() {
                            self.instances[index].router.handle_shutdown();
                            self.carry_out(index).await;
                        }
                        self.publish();
                        tracing::info!(interface = %self.interface, "VRRP stopped");
                        return;
                    }
                },
                received = self.socket.recv(&mut buffer) => match received {
                    Ok(datagram) => self.on_datagram(datagram.map_err(DropReason::from)).await,
                    Err(error) => {
                        self.log_receive_error(&error);
                        // An error that repeats at once must not spin the thread; timers
                        // stay within a few milliseconds.
                        tokio::time::sleep(RECEIVE_ERROR_PAUSE).await;
                    }
                },
                _ = sleep_until(deadline) => self.on_timer().await,
            }
            self.publish();
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.instances
            .iter()
            .flat_map(|i| {
                [
                    i.router.poll_timeout().map(|t| self.instant_of(t)),
                    i.next_garp_refresh,
                    i.next_lifetime_refresh,
                ]
            })
            .flatten()
            .min()
    }

    async fn on_timer(&mut self) {
        let now = self.now();
        let wall = Instant::now();
        for index in 0..self.instances.len() {
            if self.instances[index].router.poll_timeout().is_some_and(|t| t <= now) {
                self.instances[index].router.handle_timeout(now);
                self.carry_out(index).await;
            }
            if self.instances[index].next_lifetime_refresh.is_some_and(|at| at <= wall) {
                self.add_vips(index).await;
            }
            let instance = &mut self.instances[index];
            if instance.next_garp_refresh.is_some_and(|at| at <= wall) {
                instance.next_garp_refresh =
                    instance.settings.garp.refresh.and_then(|every| wall.checked_add(every));
                self.announce(index, 1);
            }
        }
    }

    async fn on_datagram(&mut self, datagram: Result<crate::wire::Datagram<'_>, DropReason>) {
        let instances = &self.instances;
        let checked = datagram.and_then(|datagram| {
            check_received(datagram, |vrid| {
                instances
                    .iter()
                    .find(|i| i.router.config().vrid == vrid)
                    .map(|i| i.router.local_vrid())
            })
        });
        let received = match checked {
            Ok(received) => received,
            Err(reason) => {
                self.drops.record(reason);
                self.log_drop(&reason.to_string());
                return;
            }
        };
        let vrid = received.advertisement.vrid;
        let Some(index) = self.instances.iter().position(|i| i.router.config().vrid == vrid) else {
            return;
        };
        let settings = &self.instances[index].settings;
        if !settings.destination.accepts_from(received.src)
            || !(settings.members.is_empty() || settings.members.contains(&received.src))
        {
            self.unknown_peer += 1;
            self.log_drop(&format!(
                "advertisement from {}, not a configured peer or member",
                received.src
            ));
            return;
        }
        if !received.addresses_match && self.mismatch_log.allow() {
            tracing::warn!(
                interface = %self.interface, vrid, source = %received.src,
                advertised = ?received.advertisement.addresses,
                "advertised VIPs differ from the configured ones (accepted, RFC 9568 §7.1)"
            );
        }
        let now = self.now();
        let instance = &mut self.instances[index];
        instance.adverts_received += 1;
        instance.router.handle_advert(now, received.src, &received.advertisement);
        // Only a sender this router now follows is the master, not one it is about to preempt.
        if instance.router.state() == State::Backup
            && received.advertisement.priority >= instance.router.priority()
        {
            instance.master = Some(received.src);
        }
        self.carry_out(index).await;
    }

    fn log_receive_error(&mut self, error: &std::io::Error) {
        if self.receive_error_log.allow() {
            tracing::warn!(interface = %self.interface, "VRRP receive failed: {error}");
        }
    }

    fn log_drop(&mut self, what: &str) {
        if !self.drop_log.allow() {
            return;
        }
        let totals: Vec<String> = self
            .drops
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(reason, n)| format!("{reason}={n}"))
            .collect();
        tracing::warn!(
            interface = %self.interface,
            drops = %totals.join(" "),
            unknown_peer = self.unknown_peer,
            "VRRP packet dropped: {what}"
        );
    }

    /// Carries out what router `index` asks for, in order.
    async fn carry_out(&mut self, index: usize) {
        while let Some(action) = self.instances[index].router.poll_action() {
            let instance = &mut self.instances[index];
            let vrid = instance.router.config().vrid;
            match action {
                Action::SendAdvert { priority } => {
                    let advertisement = instance.router.advertisement(priority);
                    let source = instance.router.config().primary_address;
                    let checksum = instance.settings.checksum;
                    for target in instance.settings.destination.targets(self.family) {
                        let mut bytes = vec![0u8; advertisement.buffer_len()];
                        let emitted = advertisement.emit(
                            &mut Packet::new_unchecked(&mut bytes, self.family),
                            source,
                            target,
                            checksum,
                        );
                        let sent = match emitted {
                            Ok(()) => self.socket.send_to(&bytes, target).await,
                            Err(e) => Err(std::io::Error::other(e)),
                        };
                        match sent {
                            Ok(()) => self.instances[index].adverts_sent += 1,
                            Err(e) if self.send_error_log.allow() => {
                                tracing::warn!(interface = %self.interface, vrid, "advertisement to {target} not sent: {e}")
                            }
                            Err(_) => {}
                        }
                    }
                }
                Action::AddVips => {
                    instance.wants_vips = true;
                    if instance.permitted {
                        self.add_vips(index).await;
                    } else {
                        tracing::info!(interface = %self.interface, vrid, "master without a permit: VIPs wait for the fence");
                    }
                }
                Action::RemoveVips => {
                    instance.wants_vips = false;
                    self.remove_vips(index).await;
                }
                // Only a holder announces; a permit that comes later announces then.
                Action::SendGratuitousArp if instance.holding => self.start_announcing(index),
                Action::SendGratuitousArp => {}
                Action::StateChanged { from, to } => {
                    instance.transitions += 1;
                    if to == State::Master {
                        instance.master = Some(instance.router.config().primary_address);
                    }
                    let takeover = (to == State::Master).then(|| instance.router.takeover());
                    tracing::info!(
                        interface = %self.interface, vrid, priority = instance.router.priority(),
                        from = ?from, to = ?to, takeover = ?takeover.flatten(), "VRRP state changed"
                    );
                }
            }
        }
    }

    /// Grants or takes away router `index`'s permit, adding or removing its VIPs as they
    /// are now due.
    async fn set_permit(&mut self, index: usize, permitted: bool) {
        let instance = &mut self.instances[index];
        if !instance.settings.fenced || instance.permitted == permitted {
            return;
        }
        instance.permitted = permitted;
        let vrid = instance.router.config().vrid;
        match (permitted, instance.wants_vips, instance.holding) {
            (true, true, false) => {
                tracing::info!(interface = %self.interface, vrid, "fence permits: VIPs added");
                self.add_vips(index).await;
                self.start_announcing(index);
            }
            (false, _, true) => {
                tracing::warn!(interface = %self.interface, vrid, "fence withdrawn: VIPs removed");
                self.remove_vips(index).await;
            }
            _ => {}
        }
    }

    /// Adds router `index`'s VIPs, or refreshes their lifetime.
    async fn add_vips(&mut self, index: usize) {
        let instance = &mut self.instances[index];
        let vrid = instance.router.config().vrid;
        instance.holding = true;
        let lifetime = instance.settings.address_lifetime;
        instance.next_lifetime_refresh =
            lifetime.and_then(|lifetime| Instant::now().checked_add(lifetime / 3));
        for vip in instance.router.config().vips.clone() {
            let added = match lifetime {
                Some(lifetime) => self.vips.add_for(vip, lifetime).await,
                None => self.vips.add(vip).await,
            };
            if let Err(e) = added {
                tracing::error!(vrid, "{e}");
            }
        }
    }

    async fn remove_vips(&mut self, index: usize) {
        let instance = &mut self.instances[index];
        let vrid = instance.router.config().vrid;
        if let Some(burst) = instance.garp_burst.take() {
            burst.abort();
        }
        instance.next_garp_refresh = None;
        instance.next_lifetime_refresh = None;
        if !std::mem::replace(&mut instance.holding, false) {
            return;
        }
        for vip in instance.router.config().vips.clone() {
            if let Err(e) = self.vips.remove(vip).await {
                tracing::error!(vrid, "{e}");
            }
        }
    }

    /// Announces router `index`'s VIPs now (a burst) and then every refresh interval.
    fn start_announcing(&mut self, index: usize) {
        let instance = &mut self.instances[index];
        let repeat = instance.settings.garp.repeat;
        instance.next_garp_refresh =
            instance.settings.garp.refresh.and_then(|every| Instant::now().checked_add(every));
        self.announce(index, repeat);
    }

    /// Sends `repeat` rounds of announcements for every VIP of router `index`, spaced out,
    /// in the background.
    fn announce(&mut self, index: usize, repeat: u32) {
        let instance = &mut self.instances[index];
        let vips = instance.router.config().vips.clone();
        let spacing = instance.settings.garp.spacing;
        let announcer = Arc::clone(&self.announcer);
        let interface = self.interface.clone();
        if let Some(previous) = instance.garp_burst.take() {
            previous.abort();
        }
        instance.garp_burst = Some(tokio::spawn(async move {
            for round in 0..repeat {
                if round > 0 {
                    tokio::time::sleep(spacing).await;
                }
                for vip in &vips {
                    let sent = announcer
                        .lock()
                        .map_err(|_| "announcer poisoned".to_owned())
                        .and_then(|mut a| a.announce(*vip).map_err(|e| e.to_string()));
                    if let Err(e) = sent {
                        tracing::warn!(%interface, "announcement of {vip} not sent: {e}");
                    }
                }
            }
        }));
    }

    /// Publishes this link's part of the status; watchers (the node, and the other family's
    /// link when it has followers) wake only when something changed.
    fn publish(&self) {
        self.status.send_if_modified(|status| {
            let mut modified = false;
            for instance in &self.instances {
                let vrid = instance.router.config().vrid;
                let entry = status.instances.iter_mut().find(|s| {
                    s.interface == self.interface && s.family == self.family && s.vrid == vrid
                });
                if let Some(entry) = entry {
                    let now = InstanceStatus {
                        state: instance.router.state(),
                        priority: instance.router.priority(),
                        master: match instance.router.state() {
                            State::Initialize => None,
                            _ => instance.master,
                        },
                        adverts_sent: instance.adverts_sent,
                        adverts_received: instance.adverts_received,
                        transitions: instance.transitions,
                        holding: instance.holding,
                        ..entry.clone()
                    };
                    modified |= *entry != now;
                    *entry = now;
                }
            }
            let link = status
                .links
                .iter_mut()
                .find(|l| l.interface == self.interface && l.family == self.family);
            if let Some(link) = link {
                modified |= link.drops != self.drops || link.unknown_peer != self.unknown_peer;
                link.drops = self.drops;
                link.unknown_peer = self.unknown_peer;
            }
            modified
        });
    }

    /// Moves each follower to where its leader is: master with it, backup without it.
    async fn follow_leaders(&mut self) {
        let now = self.now();
        let leaders: Vec<(u8, bool)> = self
            .status
            .borrow()
            .instances
            .iter()
            .filter(|s| s.interface == self.interface && s.family == Family::Ipv4)
            .map(|s| (s.vrid, s.state == State::Master))
            .collect();
        for index in 0..self.instances.len() {
            let config = self.instances[index].router.config();
            if !config.follower {
                continue;
            }
            let vrid = config.vrid;
            let leader_is_master = leaders.iter().any(|(v, master)| *v == vrid && *master);
            self.instances[index].router.follow(now, leader_is_master);
            self.carry_out(index).await;
        }
    }
}

/// Lets a repeated log line through at most once per [`DROP_LOG_INTERVAL`].
#[derive(Debug, Default)]
struct LogLimiter {
    last: Option<Instant>,
}

impl LogLimiter {
    fn allow(&mut self) -> bool {
        let now = Instant::now();
        if self.last.is_some_and(|at| now.duration_since(at) < DROP_LOG_INTERVAL) {
            return false;
        }
        self.last = Some(now);
        true
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
