//! `fulcrumd`: the Fulcrum node daemon.

use std::path::PathBuf;

use clap::Parser;

/// Runs one node of a Fulcrum load-balancer cluster.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// The node file: node id, data dir, cluster name, Raft peers, VRRP instances.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::bail!(
        "cannot run a node from {}: this build has only the configuration model; the node \
         runtime (data plane, VRRP, Raft store) is not built yet",
        args.config.display()
    )
}
