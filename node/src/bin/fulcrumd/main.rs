//! `fulcrumd`: the Fulcrum node daemon. This file parses the arguments; `daemon` runs the
//! node, `pki` makes the certificates of mutual TLS between nodes.

mod daemon;
mod pki;

/// mimalloc's per-thread free lists suit the data path's many short-lived buffers and
/// futures: `fulcrum-lab bench-l7` measured glibc malloc and free at ~6 % of fulcrumd's CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use fulcrum_node::{NodeFile, dev};

/// Runs one node of a Fulcrum load-balancer cluster.
#[derive(Parser)]
#[command(version, about, subcommand_negates_reqs = true)]
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
    #[command(subcommand)]
    command: Option<pki::Command>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let outcome = match args.command {
        Some(command) => pki::run(command),
        None => options(args).and_then(daemon::run),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("fulcrumd: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// What the arguments ask the daemon to run.
fn options(args: Args) -> anyhow::Result<daemon::Options> {
    let (node, source) = match &args.config {
        Some(path) => (NodeFile::load(path)?, format!("node file {}", path.display())),
        None => (
            dev::node_file(&args.dev_dir).context("cannot prepare the --dev node")?,
            "the --dev node".to_owned(),
        ),
    };
    Ok(daemon::Options {
        node,
        source,
        cluster_file: args.cluster_file,
        dev_dir: args.dev.then_some(args.dev_dir),
    })
}
