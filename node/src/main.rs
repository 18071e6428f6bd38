//! `fulcrumd`: the Fulcrum node daemon.
//!
//! Today it runs what exists of a node: the VRRP instances of its node file. On SIGTERM or
//! SIGINT it steps down (priority 0, VIPs removed) before it exits, so a backup takes over at
//! once.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use fulcrum_node::node_file::{LogFormat, LogSettings, NodeFile};
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
    tracing::info!(node_id = node.node_id, vrrp_instances = node.vrrp.len(), "fulcrumd running");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let signal = runtime.block_on(serve_signals(vrrp.as_ref()))?;
    tracing::info!(signal, "stopping: stepping down from VRRP");
    if let Some(vrrp) = vrrp {
        vrrp.shutdown();
    }
    tracing::info!("fulcrumd stopped");
    Ok(())
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
async fn serve_signals(vrrp: Option<&Vrrp>) -> anyhow::Result<&'static str> {
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
            }
        }
    }
}
