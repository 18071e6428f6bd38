//! The daemon's life: start the node's parts in order, serve signals, stop them in reverse.
//!
//! Start: the configuration store (`[raft]`), the data plane serving the last applied
//! configuration at once (or, on a node without `[raft]`, the cluster file, re-read on
//! SIGHUP), the metrics endpoint and the admin API, second-chance forwarding, then VRRP, and
//! report ready (to systemd too). Stop (SIGTERM, SIGINT): hand over every VIP this node is
//! master of, step down from VRRP (priority 0), keep accepting until another node holds the
//! VIPs, drain for the rest of `shutdown_drain`, then stop the store. SIGUSR1 logs the VRRP
//! status and the store's metrics.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use fulcrum_model::{Command, Config, file};
use fulcrum_node::acme::manager::CertificateManager;
use fulcrum_node::acme::seal::Sealer;
use fulcrum_node::api::{EndpointTls, admin::Admin, metrics};
use fulcrum_node::bgp::Bgp;
use fulcrum_node::cluster::{Handover, LocalVrid, Node, Priorities, Tracked};
use fulcrum_node::dataplane::{DataPlane, workers};
use fulcrum_node::dev;
use fulcrum_node::node_file::{LogFormat, LogSettings, NodeFile};
use fulcrum_node::secret::random_secret;
use fulcrum_node::time::deadline_after;
use fulcrum_policy::CookieSigner;
use fulcrum_raft_store::{ConfigStore, StoreSettings};
use fulcrum_vrrp::interface_address;
use fulcrum_vrrp::{InstanceSettings, Vrrp};
use tokio::net::TcpListener;

/// What the daemon was asked to run.
pub(crate) struct Options {
    /// The node file (or the one `--dev` made).
    pub node: NodeFile,
    /// Where it came from, for error messages.
    pub source: String,
    /// The static cluster file to serve, on a node without `[raft]`.
    pub cluster_file: Option<PathBuf>,
    /// The `--dev` node's data directory, when it is one.
    pub dev_dir: Option<PathBuf>,
}

/// Runs the node until SIGTERM or SIGINT, then stops it.
pub(crate) fn run(options: Options) -> anyhow::Result<()> {
    init_logging(&options.node.log)?;
    check_sections(&options)?;
    raise_open_files();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let _entered = runtime.enter();
    let daemon = runtime.block_on(Daemon::start(&options))?;
    let signal = runtime.block_on(serve_signals(&daemon))?;
    runtime.block_on(daemon.stop(signal, options.node.shutdown_drain));
    Ok(())
}

/// Raises the soft open-file limit to the hard one: every client and backend connection is a
/// descriptor, and the usual soft default of 1024 would refuse connections long before the
/// machine runs out of anything.
fn raise_open_files() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::debug!(from = soft, to = hard, "open-file limit raised"),
            Err(e) => tracing::warn!(soft, hard, "cannot raise the open-file limit: {e}"),
        },
        Ok((soft, _)) => tracing::debug!(limit = soft, "open-file limit"),
        Err(e) => tracing::warn!("cannot read the open-file limit: {e}"),
    }
}

/// Refuses node files whose sections contradict each other or the arguments.
fn check_sections(options: &Options) -> anyhow::Result<()> {
    let (node, source) = (&options.node, &options.source);
    if options.cluster_file.is_some() && node.raft.is_some() {
        anyhow::bail!(
            "--cluster-file serves a static configuration; {source} has a [raft] section, whose store is the configuration: drop one of the two"
        );
    }
    if node.admin.is_some() && node.raft.is_none() {
        anyhow::bail!(
            "{source}: the admin API changes the replicated configuration, so [admin] needs a [raft] section"
        );
    }
    Ok(())
}

/// What runs on this node, each part only when the node file asks for it.
struct Daemon {
    /// The replicated configuration (`[raft]`).
    store: Option<Arc<ConfigStore>>,
    /// Listeners, forwarding, pools.
    plane: Arc<DataPlane>,
    /// Second-chance forwarding, with VRRP and a store.
    handover: Option<Arc<Handover>>,
    /// The VRRP thread (`[[vrrp]]`).
    vrrp: Option<Arc<Vrrp>>,
    /// VIPs announced over BGP (`[bgp]`).
    bgp: Option<Arc<Bgp>>,
    /// The node as a cluster member, with a store.
    node: Option<Arc<Node>>,
    /// Re-read on SIGHUP.
    cluster_file: Option<PathBuf>,
}

impl Daemon {
    /// Starts every part in order; the node is ready when this returns.
    async fn start(options: &Options) -> anyhow::Result<Daemon> {
        let node = &options.node;
        let node_file = || options.source.clone();
        let vrrp_settings: Vec<InstanceSettings> = node
            .vrrp
            .iter()
            .map(|i| {
                let fence = node.fenced().then(|| node.fence_times());
                i.settings(fence, |interface, family| interface_address(interface, family, &i.vips))
            })
            .collect::<Result<Vec<_>, _>>()
            .with_context(node_file)?
            .into_iter()
            .flatten()
            .collect();
        let admin_token =
            node.admin.as_ref().map(|a| a.token()).transpose().with_context(node_file)?;
        let read_token = match &node.admin {
            Some(admin) => admin.read_token().with_context(node_file)?,
            None => None,
        };
        let admin_tls = node
            .admin
            .as_ref()
            .and_then(|admin| admin.tls.as_ref())
            .map(EndpointTls::load)
            .transpose()
            .context("cannot use the admin API's certificate ([admin] tls)")?;
        let store_settings = match &node.raft {
            Some(section) => Some(section.settings(node.node_id).with_context(node_file)?),
            None => None,
        };
        let signer = cookie_signer(store_settings.as_ref())?;
        // ACME keys are sealed under a secret every node has; a node without a store has
        // no ACME.
        let sealer = match &store_settings {
            Some(settings) => {
                let (current, previous) = node
                    .acme
                    .clone()
                    .unwrap_or_default()
                    .seal_secrets(&settings.secret)
                    .with_context(node_file)?;
                Some(Arc::new(Sealer::new(&current, &previous)))
            }
            None => None,
        };
        let shares_limits = node.bgp.as_ref().is_some_and(|b| b.share_rate_limits == Some(true));
        let limits_secret =
            store_settings.as_ref().filter(|_| shares_limits).map(|s| s.secret.clone());
        let store = match store_settings {
            Some(settings) => Some(start_store(settings).await?),
            None => None,
        };
        if let (Some(_), Some(store)) = (&options.dev_dir, &store) {
            seed_dev_cluster(store).await?;
        }
        let workers = node.workers.map_or_else(workers::default_count, |n| n.get());
        let plane = DataPlane::with_workers(workers, signer)
            .context("cannot start the data plane's worker threads")?;
        let plane = match &sealer {
            Some(sealer) => plane.with_sealer(Arc::clone(sealer)),
            None => plane,
        };
        let plane = Arc::new(match &limits_secret {
            Some(secret) => plane.with_shared_limits(secret),
            None => plane,
        });
        serve_configuration(&plane, store.as_ref(), options.cluster_file.as_deref()).await?;
        if let Some(address) = node.metrics_listen {
            let listener = TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot serve metrics on {address} (metrics_listen)"))?;
            tokio::spawn(metrics::serve(listener, Arc::clone(&plane)));
        }
        let admin_listener = match &node.admin {
            Some(section) => Some(TcpListener::bind(section.listen).await.with_context(|| {
                format!("cannot serve the admin API on {} ([admin] listen)", section.listen)
            })?),
            None => None,
        };
        // Before VRRP, so conntrack knows every connection this node accepts as master.
        let handover = match (&store, vrrp_settings.is_empty()) {
            (Some(_), false) => start_handover(node).await?,
            _ => None,
        };
        let vrrp = match vrrp_settings.is_empty() {
            true => None,
            false => Some(Arc::new(Vrrp::start(vrrp_settings).context("cannot start VRRP")?)),
        };
        let bgp = match &node.bgp {
            Some(section) => {
                let bgp = Bgp::start(section.clone())
                    .await
                    .context("cannot start BGP announcements ([bgp])")?;
                tokio::spawn(Arc::clone(&bgp).follow_health(Arc::clone(&plane)));
                Some(bgp)
            }
            None => None,
        };
        let mut daemon = Daemon {
            store,
            plane,
            handover,
            vrrp,
            bgp,
            node: None,
            cluster_file: options.cluster_file.clone(),
        };
        daemon.node = daemon.start_member(node);
        if let (Some(member), Some(bgp)) = (&daemon.node, &daemon.bgp) {
            member.report_bgp(Arc::clone(bgp));
        }
        if let (Some(member), Some(_)) = (&daemon.node, &limits_secret) {
            member.share_rate_limits();
        }
        if let (Some(member), Some(store), Some(sealer)) = (&daemon.node, &daemon.store, sealer) {
            let manager = CertificateManager::new(Arc::clone(store), Arc::clone(member), sealer);
            tokio::spawn(manager.run());
        }
        if let (Some(listener), Some(token), Some(member), Some(store)) =
            (admin_listener, admin_token, &daemon.node, &daemon.store)
        {
            let plane = Arc::clone(&daemon.plane);
            let admin = Admin::new(Arc::clone(member), Arc::clone(store), plane, token, read_token);
            tokio::spawn(admin.serve(listener, admin_tls));
        }
        daemon.report_ready(options);
        Ok(daemon)
    }

    /// The node as a cluster member (with a store): its priorities follow pool health and
    /// planned moves, and it hands a VIP over when it falls below another node's priority.
    fn start_member(&self, node: &NodeFile) -> Option<Arc<Node>> {
        let store = self.store.as_ref()?;
        let priorities = self.vrrp.as_ref().map(|vrrp| {
            let tracked = node
                .vrrp
                .iter()
                .map(|i| Tracked {
                    vrid: i.vrid,
                    pools: i.track_pools.clone(),
                    weight: i.track_weight,
                })
                .collect();
            let priorities = Arc::new(Priorities::new(node.node_id, Arc::clone(vrrp), tracked));
            tokio::spawn(Arc::clone(&priorities).follow_health(Arc::clone(&self.plane)));
            priorities
        });
        let vrids = node
            .vrrp
            .iter()
            .map(|i| LocalVrid {
                vrid: i.vrid,
                interface: i.interface.clone(),
                vips: i.vips.clone(),
            })
            .collect();
        let vrrp = self.vrrp.clone().zip(priorities);
        let handover = self.handover.clone().map(|h| (h, node.shutdown_drain));
        let member = Node::start(
            Arc::clone(store),
            Arc::clone(&self.plane),
            vrrp,
            vrids,
            handover,
            node.fence_times(),
            node.fenced(),
        );
        tokio::spawn(Arc::clone(&member).follow_fence());
        tokio::spawn(Arc::clone(&member).follow_priority());
        Some(member)
    }

    /// Marks the node ready and says so: to the member's `/readyz`, systemd and the log.
    fn report_ready(&self, options: &Options) {
        let node = &options.node;
        if let Some(member) = &self.node {
            member.set_ready(true);
        }
        notify_systemd(sd_notify::NotifyState::Ready);
        tracing::info!(
            node_id = node.node_id,
            vrrp_instances = node.vrrp.len(),
            raft = self.store.is_some(),
            admin = ?node.admin.as_ref().map(|a| a.listen),
            metrics = ?node.metrics_listen,
            "fulcrumd running"
        );
        if let Some(dev_dir) = &options.dev_dir {
            eprintln!(
                "fulcrumd --dev: demo listener http://127.0.0.1:8080 -> 127.0.0.1:8081, :8082\n  \
                 export FULCRUM_ENDPOINTS=http://{} FULCRUM_TOKEN=$(cat {}/admin.token)\n  \
                 then try: fulcrumctl status",
                dev::ADMIN,
                dev_dir.display()
            );
        }
    }

    /// Stops in reverse: the VIPs this node is master of keep their connections (held here
    /// while peers forward) if second-chance forwarding is on; VRRP steps down, so the VIPs
    /// move at once; the data plane drains until `shutdown_drain`; the store stops last.
    async fn stop(self, signal: &str, shutdown_drain: Duration) {
        tracing::info!(signal, "stopping");
        notify_systemd(sd_notify::NotifyState::Stopping);
        if let Some(bgp) = &self.bgp {
            // The routers stop sending new flows here before the listeners stop accepting.
            bgp.withdraw().await;
            tokio::time::sleep(BGP_WITHDRAW_WAIT).await;
        }
        let drains = match &self.node {
            Some(member) => {
                member.set_draining();
                member.prepare_stop().await
            }
            None => Vec::new(),
        };
        let deadline = deadline_after(shutdown_drain);
        if let Some(vrrp) = &self.vrrp {
            vrrp.shutdown();
        }
        if let Some(member) = &self.node {
            member.give_up_leases().await;
        }
        if let (Some(member), false) = (&self.node, drains.is_empty()) {
            member.wait_for_takeover(&drains, TAKEOVER_WAIT).await;
        }
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let (report, ()) = tokio::join!(self.plane.drain(remaining), async {
            if let Some(member) = &self.node {
                member.finish_drains(drains, deadline).await;
            }
        });
        match report.total() {
            0 => tracing::info!("every connection finished"),
            closed => {
                tracing::warn!(closed, per_listener = ?report.closed_at_deadline, "connections still open at the drain deadline were closed")
            }
        }
        if let Some(handover) = &self.handover {
            handover.stop().await;
        }
        if let Some(store) = &self.store {
            store.shutdown().await;
        }
        if let Some(bgp) = &self.bgp {
            bgp.stop().await;
        }
        tracing::info!("fulcrumd stopped");
    }
}

/// Sticky cookies signed with a key every node derives alike from the cluster secret stay
/// valid when the VIP moves; a standalone node's last as long as the process.
fn cookie_signer(store: Option<&StoreSettings>) -> anyhow::Result<CookieSigner> {
    match store {
        Some(settings) => Ok(CookieSigner::new(&settings.secret)),
        None => {
            let key = random_secret().context("cannot make a sticky-cookie key")?;
            Ok(CookieSigner::new(&key))
        }
    }
}

async fn start_store(settings: StoreSettings) -> anyhow::Result<Arc<ConfigStore>> {
    let data_dir = settings.data_dir.display().to_string();
    let store = ConfigStore::start(settings)
        .await
        .with_context(|| format!("cannot start the configuration store in {data_dir}"))?;
    Ok(Arc::new(store))
}

/// Serves the store's last applied configuration at once, leader or not, and every later
/// one; or, without a store, the cluster file.
async fn serve_configuration(
    plane: &Arc<DataPlane>,
    store: Option<&Arc<ConfigStore>>,
    cluster_file: Option<&Path>,
) -> anyhow::Result<()> {
    match (store, cluster_file) {
        (Some(store), _) => {
            let watch = store.watch();
            let (_, config) = watch.borrow().clone();
            apply(plane, &config).await;
            tokio::spawn(follow_store(Arc::clone(plane), watch));
        }
        (None, Some(path)) => {
            let config = read_cluster_file(path)?;
            // At start, a listener that cannot open is this node's problem to report and
            // stop on; later, a cluster-agreed change is applied as far as it can be.
            let errors = plane.apply(&config).await.unwrap_or_default();
            if !errors.is_empty() {
                let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
                anyhow::bail!("cannot serve {}:\n  {}", path.display(), lines.join("\n  "));
            }
            log_applied(&config);
        }
        (None, None) => {}
    }
    Ok(())
}

/// This node's nftables rules for its VRRP links: the quorum fence's kernel side, and
/// second-chance forwarding. A fenced node cannot run without them; an unfenced one still
/// moves its VIPs, only not their connections.
async fn start_handover(node: &NodeFile) -> anyhow::Result<Option<Arc<Handover>>> {
    let interfaces: Vec<String> = node.vrrp.iter().map(|i| i.interface.clone()).collect();
    let vips: Vec<_> = node.vrrp.iter().flat_map(|i| i.vips.iter().copied()).collect();
    let fenced = if node.fenced() { vips.clone() } else { Vec::new() };
    match Handover::start(&interfaces, &vips, &fenced).await {
        Ok(handover) => Ok(Some(handover)),
        Err(error) if node.fenced() => Err(anyhow::anyhow!(
            "the quorum fence needs nftables to stop this node answering for a VIP it has no lease for: {error} (install nftables, or set fence = \"off\" to run on VRRP alone)"
        )),
        Err(error) => {
            tracing::error!(
                "second-chance forwarding is off, so a planned VIP handover resets the connections it carries: {error}"
            );
            Ok(None)
        }
    }
}

/// How long a stopping node keeps accepting after withdrawing its BGP VIPs, for the routers
/// to act on the withdrawal.
const BGP_WITHDRAW_WAIT: Duration = Duration::from_secs(1);

/// How long a stopping node keeps accepting while it waits for another to take its VIPs.
const TAKEOVER_WAIT: Duration = Duration::from_secs(3);

/// How long a dev node waits to become leader of its one-node cluster.
const DEV_LEADER_WAIT: Duration = Duration::from_secs(10);

/// Writes the demo configuration into a dev node's store when it holds nothing yet.
async fn seed_dev_cluster(store: &ConfigStore) -> anyhow::Result<()> {
    if store.config().revision > 0 {
        return Ok(());
    }
    let request = fulcrum_raft_store::Request {
        idempotency_key: None,
        command: Command::Apply(dev::demo_cluster()),
    };
    let revision = tokio::time::timeout(DEV_LEADER_WAIT, store.write(request))
        .await
        .context("the dev node did not become leader of its one-node cluster")?
        .context("cannot write the demo configuration")?;
    tracing::info!(revision, "demo configuration written");
    Ok(())
}

/// Tells systemd (when it started us with `Type=notify`) how we are doing.
fn notify_systemd(state: sd_notify::NotifyState<'_>) {
    if let Err(error) = sd_notify::notify(false, &[state]) {
        tracing::warn!("cannot notify systemd: {error}");
    }
}

/// Applies `config` to the data plane and logs what could not start.
async fn apply(plane: &DataPlane, config: &Config) {
    let Some(errors) = plane.apply(config).await else {
        tracing::info!(
            revision = config.revision,
            "configuration not applied: the node is draining"
        );
        return;
    };
    for error in errors {
        tracing::error!("{error}");
    }
    log_applied(config);
}

fn log_applied(config: &Config) {
    tracing::info!(
        revision = config.revision,
        listeners = config.spec.listeners.len(),
        pools = config.spec.pools.len(),
        "configuration applied"
    );
}

/// Applies each configuration revision the store applies.
async fn follow_store(
    plane: Arc<DataPlane>,
    mut watch: tokio::sync::watch::Receiver<fulcrum_raft_store::Applied>,
) {
    while watch.changed().await.is_ok() {
        let (_, config) = watch.borrow_and_update().clone();
        apply(&plane, &config).await;
    }
}

/// Reads and validates a cluster file.
fn read_cluster_file(path: &Path) -> anyhow::Result<Config> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read cluster file {}", path.display()))?;
    let spec = file::parse(&text)
        .with_context(|| format!("{} is not a valid cluster file", path.display()))?;
    Ok(Config { revision: 0, spec, acme: Default::default() })
}

fn init_logging(settings: &LogSettings) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&settings.level)
        .with_context(|| format!("invalid log level {:?}", settings.level))?;
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        // Otherwise a failed write to a closed stderr is reported with eprintln!, which
        // panics, and would take the VRRP thread with it.
        .log_internal_errors(false)
        .with_env_filter(filter);
    match settings.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    Ok(())
}

/// Waits for SIGTERM or SIGINT and names the one that came. Meanwhile SIGUSR1 logs the VRRP
/// status (state, counters, drops by reason) and the store's metrics, as keepalived dumps its
/// data, and SIGHUP re-reads the cluster file.
async fn serve_signals(daemon: &Daemon) -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut usr1 = signal(SignalKind::user_defined1()).context("cannot handle SIGUSR1")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let mut status = daemon.vrrp.as_ref().map(|vrrp| vrrp.subscribe());
    let vrrp_ended = async {
        match status.as_mut() {
            // The status channel closes only when the VRRP thread has ended.
            Some(status) => while status.changed().await.is_ok() {},
            None => std::future::pending().await,
        }
    };
    tokio::pin!(vrrp_ended);
    loop {
        tokio::select! {
            _ = term.recv() => return Ok("SIGTERM"),
            _ = int.recv() => return Ok("SIGINT"),
            _ = &mut vrrp_ended => {
                anyhow::bail!("VRRP stopped unexpectedly (its VIPs were released); see the log above")
            }
            _ = usr1.recv() => {
                if let Some(vrrp) = &daemon.vrrp {
                    let status = serde_json::to_string(&vrrp.status()).unwrap_or_default();
                    tracing::info!(status = %status, "VRRP status");
                }
                if let Some(store) = &daemon.store {
                    let metrics = serde_json::to_string(&store.metrics()).unwrap_or_default();
                    tracing::info!(metrics = %metrics, "configuration store status");
                }
            }
            _ = hup.recv() => match &daemon.cluster_file {
                Some(path) => match read_cluster_file(path) {
                    Ok(config) => apply(&daemon.plane, &config).await,
                    Err(error) => tracing::error!("{error:#}; the running configuration is unchanged"),
                },
                None => tracing::info!("SIGHUP ignored: there is no --cluster-file to re-read"),
            },
        }
    }
}
