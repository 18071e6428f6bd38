//! `fulcrumd`: the Fulcrum node daemon.
//!
//! Today it runs what exists of a node: the VRRP instances of its node file and, with a
//! `[raft]` section, its node of the replicated configuration store. On SIGTERM or SIGINT it
//! steps down from VRRP (priority 0, VIPs removed) before anything else, so a backup takes
//! over at once. SIGUSR1 logs the VRRP status and the store's metrics.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use fulcrum_node::node_file::{LogFormat, LogSettings, NodeFile};
use fulcrum_raft_store::ConfigStore;
use fulcrum_vrrp::driver::Vrrp;
use fulcrum_vrrp::vip::interface_address;

/// Runs one node of a Fulcrum load-balancer cluster.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// The node file: node id, logging, VRRP instances.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
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

fn run(args: Args) -> anyhow::Result<()> {
    let node = NodeFile::load(&args.config)?;
    init_logging(&node.log)?;
    let settings = node
        .vrrp
        .iter()
        .map(|instance| instance.settings(|interface| interface_address(interface, &instance.vips)))
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("node file {}", args.config.display()))?;
    let vrrp = match settings.is_empty() {
        true => None,
        false => Some(Vrrp::start(settings).context("cannot start VRRP")?),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let store = match &node.raft {
        Some(section) => {
            let settings = section
                .settings(node.node_id)
                .with_context(|| format!("node file {}", args.config.display()))?;
            let data_dir = settings.data_dir.display().to_string();
            let store = runtime
                .block_on(ConfigStore::start(settings))
                .with_context(|| format!("cannot start the configuration store in {data_dir}"))?;
            runtime.spawn(log_applied(store.watch()));
            Some(store)
        }
        None => None,
    };
    tracing::info!(
        node_id = node.node_id,
        vrrp_instances = node.vrrp.len(),
        raft = store.is_some(),
        "fulcrumd running"
    );

    let signal = runtime.block_on(serve_signals(vrrp.as_ref(), store.as_ref()))?;
    tracing::info!(signal, "stopping");
    // VRRP first: the VIP moves to a backup at once, whatever the store does next.
    if let Some(vrrp) = vrrp {
        vrrp.shutdown();
    }
    if let Some(store) = store {
        runtime.block_on(store.shutdown());
    }
    tracing::info!("fulcrumd stopped");
    Ok(())
}

/// Logs each configuration revision this node applies.
async fn log_applied(mut watch: tokio::sync::watch::Receiver<fulcrum_raft_store::Applied>) {
    while watch.changed().await.is_ok() {
        let (revision, config) = watch.borrow_and_update().clone();
        tracing::info!(
            revision,
            listeners = config.spec.listeners.len(),
            pools = config.spec.pools.len(),
            "configuration applied"
        );
    }
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

/// Waits for SIGTERM or SIGINT and names the one that came; on SIGUSR1 meanwhile, logs the
/// VRRP status (state, counters, drops by reason), as keepalived dumps its data.
async fn serve_signals(
    vrrp: Option<&Vrrp>,
    store: Option<&ConfigStore>,
) -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut usr1 = signal(SignalKind::user_defined1()).context("cannot handle SIGUSR1")?;
    let mut status = vrrp.map(Vrrp::subscribe);
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
                if let Some(vrrp) = vrrp {
                    let status = serde_json::to_string(&vrrp.status()).unwrap_or_default();
                    tracing::info!(status = %status, "VRRP status");
                }
                if let Some(store) = store {
                    let metrics = serde_json::to_string(&store.metrics()).unwrap_or_default();
                    tracing::info!(metrics = %metrics, "configuration store status");
                }
            }
        }
    }
}
