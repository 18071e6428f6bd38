//! `fulcrumd`: the Fulcrum node daemon.
//!
//! It starts, in order, the configuration store (`[raft]`), the data plane serving the last
//! applied configuration at once (or, on a node without `[raft]`, the cluster file given with
//! `--cluster-file`, re-read on SIGHUP), the metrics endpoint and the admin API, then VRRP,
//! and reports itself ready (to systemd too, with sd_notify). On SIGTERM or SIGINT it steps
//! down from VRRP first (priority 0), so a backup takes over at once, keeping the VIPs'
//! connections with second-chance forwarding ([`fulcrum_node::handover`]), then drains its
//! connections and stops. SIGUSR1 logs the VRRP status and the store's metrics.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use fulcrum_model::{Command, Config, file};
use fulcrum_node::admin::Admin;
use fulcrum_node::dataplane::sticky::CookieSigner;
use fulcrum_node::dataplane::{DataPlane, deadline_after, workers};
use fulcrum_node::handover::Handover;
use fulcrum_node::node_file::{LogFormat, LogSettings, NodeFile};
use fulcrum_node::peers::{LocalVrid, Node};
use fulcrum_node::tracking::{Priorities, Tracked};
use fulcrum_node::{dev, metrics_endpoint};
use fulcrum_raft_store::ConfigStore;
use fulcrum_vrrp::driver::Vrrp;
use fulcrum_vrrp::vip::interface_address;

/// Runs one node of a Fulcrum load-balancer cluster.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// The node file: node id, logging, admin API, VRRP instances, Raft store, metrics.
    #[arg(long, value_name = "FILE", required_unless_present = "dev")]
    config: Option<PathBuf>,
    /// Serve this cluster file instead of a replicated configuration (a node without
    /// `[raft]`); SIGHUP re-reads it, and a file that does not validate changes nothing.
    #[arg(long, value_name = "FILE", conflicts_with = "dev")]
    cluster_file: Option<PathBuf>,
    /// A single-node cluster on loopback for a first try, no root needed: admin API on
    /// 127.0.0.1:7070 (token in DIR/admin.token), a demo HTTP listener on 127.0.0.1:8080 in
    /// front of 127.0.0.1:8081 and :8082, VRRP off.
    #[arg(long, conflicts_with = "config")]
    dev: bool,
    /// With --dev: where the node keeps its data, cluster secret and admin token.
    #[arg(long, value_name = "DIR", default_value = "fulcrum-dev")]
    dev_dir: PathBuf,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("fulcrumd: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// What runs on this node.
struct Daemon {
    vrrp: Option<Arc<Vrrp>>,
    store: Option<Arc<ConfigStore>>,
    node: Option<Arc<Node>>,
    plane: Arc<DataPlane>,
    cluster_file: Option<PathBuf>,
}

fn run(args: Args) -> anyhow::Result<()> {
    let (node, source) = match &args.config {
        Some(path) => (NodeFile::load(path)?, format!("node file {}", path.display())),
        None => (
            dev::node_file(&args.dev_dir).context("cannot prepare the --dev node")?,
            "the --dev node".to_owned(),
        ),
    };
    init_logging(&node.log)?;
    let node_file = || source.clone();
    if args.cluster_file.is_some() && node.raft.is_some() {
        anyhow::bail!(
            "--cluster-file serves a static configuration; {source} has a [raft] section, whose store is the configuration: drop one of the two"
        );
    }
    if node.admin.is_some() && node.raft.is_none() {
        anyhow::bail!(
            "{source}: the admin API changes the replicated configuration, so [admin] needs a [raft] section"
        );
    }
    let vrrp_settings = node
        .vrrp
        .iter()
        .map(|instance| instance.settings(|interface| interface_address(interface, &instance.vips)))
        .collect::<Result<Vec<_>, _>>()
        .with_context(node_file)?;
    let admin_token = node.admin.as_ref().map(|a| a.token()).transpose().with_context(node_file)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let _entered = runtime.enter();

    let store_settings = match &node.raft {
        Some(section) => Some(section.settings(node.node_id).with_context(node_file)?),
        None => None,
    };
    // Sticky cookies signed with a key every node derives alike from the cluster secret
    // stay valid when the VIP moves; a standalone node's last as long as the process.
    let signer = match &store_settings {
        Some(settings) => CookieSigner::new(&settings.secret),
        None => CookieSigner::random().context("cannot make a sticky-cookie key")?,
    };
    let store = match store_settings {
        Some(settings) => {
            let data_dir = settings.data_dir.display().to_string();
            let store = runtime
                .block_on(ConfigStore::start(settings))
                .with_context(|| format!("cannot start the configuration store in {data_dir}"))?;
            Some(Arc::new(store))
        }
        None => None,
    };
    if let (true, Some(store)) = (args.dev, &store) {
        runtime.block_on(seed_dev_cluster(store))?;
    }

    let plane = Arc::new(
        DataPlane::with_workers(
            node.workers.map_or_else(workers::default_count, |n| n.get()),
            signer,
        )
        .context("cannot start the data plane's worker threads")?,
    );
    match (&store, &args.cluster_file) {
        (Some(store), _) => {
            // The last applied configuration is served at once, leader or not.
            let watch = store.watch();
            let (_, config) = watch.borrow().clone();
            runtime.block_on(apply(&plane, &config));
            runtime.spawn(follow_store(Arc::clone(&plane), watch));
        }
        (None, Some(path)) => {
            let config = read_cluster_file(path)?;
            // At start, a listener that cannot open is this node's problem to report and
            // stop on; later, a cluster-agreed change is applied as far as it can be.
            let errors = runtime.block_on(plane.apply(&config)).unwrap_or_default();
            if !errors.is_empty() {
                let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
                anyhow::bail!("cannot serve {}:\n  {}", path.display(), lines.join("\n  "));
            }
            log_applied(&config);
        }
        (None, None) => {}
    }
    if let Some(address) = node.metrics_listen {
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(address))
            .with_context(|| format!("cannot serve metrics on {address} (metrics_listen)"))?;
        runtime.spawn(metrics_endpoint::serve(listener, Arc::clone(&plane)));
    }
    let admin_listener = match &node.admin {
        Some(section) => {
            Some(runtime.block_on(tokio::net::TcpListener::bind(section.listen)).with_context(
                || format!("cannot serve the admin API on {} ([admin] listen)", section.listen),
            )?)
        }
        None => None,
    };
    // Before VRRP, so conntrack knows every connection this node accepts as master.
    let handover = match (&store, vrrp_settings.is_empty()) {
        (Some(_), false) => {
            let interfaces: Vec<String> = node.vrrp.iter().map(|i| i.interface.clone()).collect();
            let vips: Vec<_> = node.vrrp.iter().flat_map(|i| i.vips.iter().copied()).collect();
            match runtime.block_on(Handover::start(&interfaces, &vips)) {
                Ok(handover) => Some(handover),
                Err(error) => {
                    tracing::error!(
                        "second-chance forwarding is off, so a planned VIP handover resets the connections it carries: {error}"
                    );
                    None
                }
            }
        }
        _ => None,
    };
    let vrrp = match vrrp_settings.is_empty() {
        true => None,
        false => Some(Arc::new(Vrrp::start(vrrp_settings).context("cannot start VRRP")?)),
    };
    let priorities = vrrp.as_ref().map(|vrrp| {
        let tracked = node
            .vrrp
            .iter()
            .map(|i| Tracked { vrid: i.vrid, pools: i.track_pools.clone(), weight: i.track_weight })
            .collect();
        let priorities = Arc::new(Priorities::new(node.node_id, Arc::clone(vrrp), tracked));
        runtime.spawn(Arc::clone(&priorities).follow_health(Arc::clone(&plane)));
        priorities
    });
    let cluster_node = store.as_ref().map(|store| {
        let vrids = node
            .vrrp
            .iter()
            .map(|i| LocalVrid {
                vrid: i.vrid,
                interface: i.interface.clone(),
                vips: i.vips.clone(),
            })
            .collect();
        let vrrp = vrrp.clone().zip(priorities.clone());
        let handover = handover.clone().map(|h| (h, node.shutdown_drain));
        let cluster_node = Node::new(Arc::clone(store), Arc::clone(&plane), vrrp, vrids, handover);
        cluster_node.serve_peers();
        runtime.spawn(Arc::clone(&cluster_node).follow_priority());
        cluster_node
    });
    if let (Some(listener), Some(token), Some(cluster_node)) =
        (admin_listener, admin_token, &cluster_node)
    {
        runtime.spawn(Admin::new(Arc::clone(cluster_node), token).serve(listener));
    }
    if let Some(cluster_node) = &cluster_node {
        cluster_node.set_ready(true);
    }
    notify_systemd(sd_notify::NotifyState::Ready);
    tracing::info!(
        node_id = node.node_id,
        vrrp_instances = node.vrrp.len(),
        raft = store.is_some(),
        admin = ?node.admin.as_ref().map(|a| a.listen),
        metrics = ?node.metrics_listen,
        "fulcrumd running"
    );
    if args.dev {
        eprintln!(
            "fulcrumd --dev: demo listener http://127.0.0.1:8080 -> 127.0.0.1:8081, :8082\n  \
             export FULCRUM_ENDPOINTS=http://{} FULCRUM_TOKEN=$(cat {}/admin.token)\n  \
             then try: fulcrumctl status",
            dev::ADMIN,
            args.dev_dir.display()
        );
    }

    let daemon = Daemon { vrrp, store, node: cluster_node, plane, cluster_file: args.cluster_file };
    let signal = runtime.block_on(serve_signals(&daemon))?;
    tracing::info!(signal, "stopping");
    notify_systemd(sd_notify::NotifyState::Stopping);
    let Daemon { vrrp, store, node: cluster_node, plane, .. } = daemon;
    // The VIPs this node is master of keep their connections (held here while peers forward)
    // if second-chance forwarding is on; then VRRP steps down, so the VIPs move at once.
    let drains = match &cluster_node {
        Some(cluster_node) => {
            cluster_node.set_draining();
            runtime.block_on(cluster_node.prepare_stop())
        }
        None => Vec::new(),
    };
    let deadline = deadline_after(node.shutdown_drain);
    if let Some(vrrp) = vrrp {
        vrrp.shutdown();
    }
    if let (Some(cluster_node), false) = (&cluster_node, drains.is_empty()) {
        runtime.block_on(cluster_node.wait_for_takeover(&drains, TAKEOVER_WAIT));
    }
    let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
    let (report, ()) = runtime.block_on(async {
        tokio::join!(plane.drain(remaining), async {
            if let Some(cluster_node) = &cluster_node {
                cluster_node.finish_drains(drains, deadline).await;
            }
        })
    });
    match report.total() {
        0 => tracing::info!("every connection finished"),
        closed => {
            tracing::warn!(closed, per_listener = ?report.closed_at_deadline, "connections still open at the drain deadline were closed")
        }
    }
    if let Some(handover) = handover {
        runtime.block_on(handover.stop());
    }
    if let Some(store) = store {
        runtime.block_on(store.shutdown());
    }
    tracing::info!("fulcrumd stopped");
    Ok(())
}

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
    Ok(Config { revision: 0, spec })
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
