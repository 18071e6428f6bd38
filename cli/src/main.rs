//! `fulcrumctl`: administers a Fulcrum cluster as one.
//!
//! It owns the command line only; every request and response type comes from fulcrum-model.
//! Today it checks cluster files offline; the commands that talk to a node's admin API come
//! with the node.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fulcrum_model::file::{self, FileError};

/// Administer a Fulcrum load-balancer cluster.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a cluster file without sending it anywhere.
    ///
    /// Prints every problem with the object and field it concerns, or a summary of what the
    /// file declares.
    ///
    /// Example: fulcrumctl validate -f cluster.toml
    Validate {
        /// The cluster file (TOML).
        #[arg(short, long = "file", value_name = "FILE")]
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("fulcrumctl: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Validate { file: path } => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read cluster file {}", path.display()))?;
            let spec = file::parse(&text).map_err(|error| match error {
                FileError::Invalid(violations) => anyhow::anyhow!(
                    "{} is not a valid cluster file ({} problems):\n{violations}",
                    path.display(),
                    violations.0.len()
                ),
                other => {
                    anyhow::anyhow!("{} is not a valid cluster file:\n{other}", path.display())
                }
            })?;
            let routes: usize = spec.listeners.iter().map(|l| l.routes.len()).sum();
            let backends: usize = spec.pools.iter().map(|p| p.backends.len()).sum();
            println!(
                "{}: valid: {} listeners, {} routes, {} pools, {} backends, {} rate limits",
                path.display(),
                spec.listeners.len(),
                routes,
                spec.pools.len(),
                backends,
                spec.rate_limits.len()
            );
            Ok(())
        }
    }
}
