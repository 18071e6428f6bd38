//! `fulcrumd`: the Fulcrum node daemon.
//!
//! It starts, in order, the configuration store (`[raft]`), the data plane serving the last
//! applied configuration at once (or, on a node without `[raft]`, the cluster file given with
//! `--cluster-file`, re-read on SIGHUP), the metrics endpoint, and VRRP. On SIGTERM or SIGINT
//! it steps down from VRRP first (priority 0, VIPs removed), so a backup takes over at once,
//! then drains its connections and stops. SIGUSR1 logs the VRRP status and the store's
//! metrics.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use fulcrum_model::{Config, file};
use fulcrum_node::dataplane::sticky::CookieSigner;
use fulcrum_node::dataplane::{DataPlane, workers};
use fulcrum_node::metrics_endpoint;
use fulcrum_node::node_file::{LogFormat, LogSettings, NodeFile};
use fulcrum_raft_store::ConfigStore;
use fulcrum_vrrp::driver::Vrrp;
use fulcrum_vrrp::vip::interface_address;

/// Runs one node of a Fulcrum load-balancer cluster.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// The node file: node id, logging, VRRP instances, Raft store, metrics.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Serve this cluster file instead of a replicated configuration (a node without
    /// `[raft]`); SIGHUP re-reads it, and a file that does not validate changes nothing.
    #[arg(long, value_name = "FILE")]
    cluster_file: Option<PathBuf>,
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
    vrrp: Option<Vrrp>,
    store: Option<ConfigStore>,
    plane: Arc<DataPlane>,
    cluster_file: Option<PathBuf>,
}

fn run(args: Args) -> anyhow::Result<()> {
    let node = NodeFile::load(&args.config)?;
    init_logging(&node.log)?;
    let node_file = || format!("node file {}", args.config.display());
    if args.cluster_file.is_some() && node.raft.is_some() {
        anyhow::bail!(
            "--cluster-file serves a static configuration; {} has a [raft] section, whose store is the configuration: drop one of the two",
            args.config.display()
        );
    }
    let vrrp_settings = node
        .vrrp
        .iter()
        .map(|instance| instance.settings(|interface| interface_address(interface, &instance.vips)))
        .collect::<Result<Vec<_>, _>>()
        .with_context(node_file)?;
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
    let signer = store_settings
        .as_ref()
        .map_or_else(CookieSigner::random, |settings| CookieSigner::new(&settings.secret));
    let store = match store_settings {
        Some(settings) => {
            let data_dir = settings.data_dir.display().to_string();
            let store = runtime
                .block_on(ConfigStore::start(settings))
                .with_context(|| format!("cannot start the configuration store in {data_dir}"))?;
            Some(store)
        }
        None => None,
    };

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
    let vrrp = match vrrp_settings.is_empty() {
        true => None,
        false => Some(Vrrp::start(vrrp_settings).context("cannot start VRRP")?),
    };
    tracing::info!(
        node_id = node.node_id,
        vrrp_instances = node.vrrp.len(),
        raft = store.is_some(),
        metrics = ?node.metrics_listen,
        "fulcrumd running"
    );

    let daemon = Daemon { vrrp, store, plane, cluster_file: args.cluster_file };
    let signal = runtime.block_on(serve_signals(&daemon))?;
    tracing::info!(signal, "stopping");
    let Daemon { vrrp, store, plane, .. } = daemon;
    // VRRP first: the VIP moves to a backup at once, whatever happens next.
    if let Some(vrrp) = vrrp {
        vrrp.shutdown();
    }
    let report = runtime.block_on(plane.drain(node.shutdown_drain));
    match report.total() {
        0 => tracing::info!("every connection finished"),
        closed => {
            tracing::warn!(closed, per_listener = ?report.closed_at_deadline, "connections still open at the drain deadline were closed")
        }
    }
    if let Some(store) = store {
        runtime.block_on(store.shutdown());
    }
    tracing::info!("fulcrumd stopped");
    Ok(())
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
    let mut status = daemon.vrrp.as_ref().map(Vrrp::subscribe);
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
