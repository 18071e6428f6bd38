//! `fulcrumctl`: administers a Fulcrum cluster as one, through any node's admin API.
//!
//! This file owns the command line and its dispatch; `settings` finds the cluster and the
//! token, `client` speaks HTTP to it, `commands` does each command's work, `output` shows the
//! answers and `exit` turns failures into exit codes. Every request and answer type comes
//! from fulcrum-model, so client and server cannot drift.

mod client;
mod commands;
mod exit;
mod output;
mod settings;

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{CommandFactory, Parser, Subcommand};

use crate::client::Client;
use crate::commands::cert::CertCommand;
use crate::commands::cluster::{MemberCommand, VipCommand};
use crate::commands::config::GetCommand;
use crate::commands::listener::{ListenerCommand, RouteCommand};
use crate::commands::pool::{BackendCommand, PoolCommand};
use crate::commands::ratelimit::RateLimitCommand;
use crate::commands::{Context, WriteArgs};
use crate::exit::{EXIT_CODES_HELP, Exit, Failure};
use crate::output::Format;
use crate::settings::ConnectionArgs;

/// Administer a Fulcrum load-balancer cluster.
///
/// Any node's admin API serves the whole cluster: give several endpoints and fulcrumctl
/// tries the next when one is unreachable.
///
/// Example: fulcrumctl --endpoint http://198.18.0.11:7100,http://198.18.0.12:7100 status
#[derive(Parser, Debug)]
#[command(name = "fulcrumctl", version, after_help = EXIT_CODES_HELP)]
struct Cli {
    #[command(flatten)]
    connection: ConnectionArgs,
    /// Output: table (default) or json; `get config` prints toml (default) or json
    #[arg(
        short,
        long,
        value_enum,
        value_name = "FORMAT",
        global = true,
        help_heading = "Global options"
    )]
    output: Option<Format>,
    /// How long a request may take before the next endpoint is tried; also how long
    /// --wait and `wait` wait for a revision
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "10s",
        value_parser = parse_timeout,
        global = true,
        help_heading = "Global options"
    )]
    timeout: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check a cluster file without sending it anywhere.
    ///
    /// Prints every problem with the object and field it concerns, or a summary of what the
    /// file declares.
    ///
    /// Example: fulcrumctl validate -f cluster.toml
    Validate {
        /// The cluster file (TOML)
        #[arg(short, long = "file", value_name = "FILE")]
        file: PathBuf,
    },
    #[command(flatten)]
    Cluster(ClusterCommand),
    /// Print a shell completion script.
    ///
    /// Example: fulcrumctl completions bash > /etc/bash_completion.d/fulcrumctl
    ///
    /// Example: fulcrumctl completions zsh > "${fpath[1]}/_fulcrumctl"
    Completions {
        /// The shell
        shell: clap_complete::Shell,
    },
}

/// The commands that talk to the cluster.
#[derive(Subcommand, Debug)]
enum ClusterCommand {
    /// Show the cluster: its nodes, who holds the VIPs, and pool health.
    ///
    /// One line per node (role, the leader it follows, term, revision served, VRRP
    /// states); then the owner of each VRID; then each pool's backends as each node sees
    /// them, summarised.
    ///
    /// Example: fulcrumctl status
    Status,
    /// Replace the whole configuration with a cluster file.
    ///
    /// The file is checked here first; --dry-run shows what would change without changing
    /// it.
    ///
    /// Example: fulcrumctl apply -f cluster.toml --dry-run
    ///
    /// Example: fulcrumctl apply -f cluster.toml --wait
    Apply {
        /// The cluster file (TOML)
        #[arg(short, long = "file", value_name = "FILE")]
        file: PathBuf,
        /// Show what would change, write nothing
        #[arg(long, conflicts_with = "wait")]
        dry_run: bool,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Print configuration.
    ///
    /// Example: fulcrumctl get config -o json
    Get {
        #[command(subcommand)]
        what: GetCommand,
    },
    /// List, show, create and delete pools.
    ///
    /// Example: fulcrumctl pool show web
    #[command(subcommand)]
    Pool(PoolCommand),
    /// Add, remove, drain, enable, disable and weigh a pool's backends.
    ///
    /// Example: fulcrumctl backend drain web 198.18.0.21:8080 --wait
    #[command(subcommand)]
    Backend(BackendCommand),
    /// List, set and delete listeners.
    ///
    /// Example: fulcrumctl listener list
    #[command(subcommand)]
    Listener(ListenerCommand),
    /// List, set and delete the HTTP routes of listeners.
    ///
    /// Example: fulcrumctl route list public-http
    #[command(subcommand)]
    Route(RouteCommand),
    /// List, set and delete rate-limit policies.
    ///
    /// Example: fulcrumctl ratelimit set per-client --key client_ip --token-bucket 200
    /// --refill 100
    #[command(subcommand)]
    Ratelimit(RateLimitCommand),
    /// List, show and renew the certificates listeners get by ACME.
    ///
    /// Example: fulcrumctl cert list
    #[command(subcommand)]
    Cert(CertCommand),
    /// List, add, promote and remove Raft members.
    ///
    /// Example: fulcrumctl member add 4 198.18.0.14:7200
    #[command(subcommand)]
    Member(MemberCommand),
    /// Show the virtual IPs and their routers.
    ///
    /// Example: fulcrumctl vip status
    #[command(subcommand)]
    Vip(VipCommand),
    /// Move a VRID's mastership to a node, or lift an earlier move.
    ///
    /// With --to, the node becomes master of the VRID (for maintenance of the current
    /// master); --reset lets configured priorities decide again.
    ///
    /// Example: fulcrumctl failover --vrid 51 --to 2
    ///
    /// Example: fulcrumctl failover --vrid 51 --reset
    Failover {
        /// The virtual router
        #[arg(long)]
        vrid: u8,
        /// The node that should be master
        #[arg(long, value_name = "NODE", required_unless_present = "reset")]
        to: Option<u64>,
        /// Lift an earlier move
        #[arg(long, conflicts_with = "to")]
        reset: bool,
    },
    /// Drain a node's BGP VIPs, or lift the drain.
    ///
    /// The node withdraws its BGP VIPs, so the routers send it no new flow, and serves the
    /// connections it holds (the other nodes hand it their packets); new connections go to
    /// the other nodes. The drain lasts until lifted or the node restarts. VRRP VIPs move
    /// with `failover` instead.
    ///
    /// Example: fulcrumctl drain 2
    ///
    /// Example: fulcrumctl drain 2 --lift
    Drain {
        /// The node's id
        node: u64,
        /// Announce the VIPs again
        #[arg(long)]
        lift: bool,
    },
    /// Wait until every node applies a revision (up to --timeout).
    ///
    /// Exit code 6 when some node has not applied it in time.
    ///
    /// Example: fulcrumctl wait 12 --timeout 30s
    Wait {
        /// The configuration revision, as a write reports it
        revision: u64,
    },
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    match fulcrum_model::duration::parse(text)? {
        Duration::ZERO => Err("the timeout must be longer than zero".to_owned()),
        timeout => Ok(timeout),
    }
}

fn main() -> ExitCode {
    // clap exits by itself: 0 for --help and --version, 2 for usage errors.
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`| head`): what it wanted it has, so stop quietly.
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("fulcrumctl: {error:#}");
            ExitCode::from(Exit::of(&error).code())
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let command = match cli.command {
        // The offline commands need neither endpoint nor token.
        Command::Validate { file } => return commands::config::validate(&file),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "fulcrumctl", &mut script);
            return Ok(io::stdout().write_all(&script)?);
        }
        Command::Cluster(command) => command,
    };
    let format = output_format(matches!(command, ClusterCommand::Get { .. }), cli.output)?;
    let settings = settings::resolve(&cli.connection, &|name| std::env::var(name).ok())?;
    let actor = std::env::var("USER").ok().filter(|user| !user.is_empty());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let client = Client::new(
            settings.endpoints,
            &settings.token,
            actor.as_deref().unwrap_or("unknown"),
            cli.timeout,
            settings.ca_file.as_deref(),
        )?;
        let ctx = Context { client, json: format == Format::Json, wait: cli.timeout };
        dispatch(&ctx, command, format).await
    })
}

async fn dispatch(ctx: &Context, command: ClusterCommand, format: Format) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Status => commands::cluster::status(ctx).await,
        ClusterCommand::Apply { file, dry_run, write } => {
            commands::config::apply(ctx, &file, dry_run, write).await
        }
        ClusterCommand::Get { what: GetCommand::Config } => {
            commands::config::get_config(ctx, format).await
        }
        ClusterCommand::Pool(command) => commands::pool::pool(ctx, command).await,
        ClusterCommand::Backend(command) => commands::pool::backend(ctx, command).await,
        ClusterCommand::Listener(command) => commands::listener::listener(ctx, command).await,
        ClusterCommand::Route(command) => commands::listener::route(ctx, command).await,
        ClusterCommand::Ratelimit(command) => commands::ratelimit::ratelimit(ctx, command).await,
        ClusterCommand::Cert(command) => commands::cert::cert(ctx, command).await,
        ClusterCommand::Member(command) => commands::cluster::member(ctx, command).await,
        ClusterCommand::Vip(command) => commands::cluster::vip(ctx, command).await,
        // clap makes --to and --reset exclusive and one of them required: no --to is --reset.
        ClusterCommand::Failover { vrid, to, reset: _ } => {
            commands::cluster::failover(ctx, vrid, to).await
        }
        ClusterCommand::Drain { node, lift } => commands::cluster::drain(ctx, node, !lift).await,
        ClusterCommand::Wait { revision } => ctx.wait_for(revision).await,
    }
}

/// The format `-o` asks for, checked against the command: only `get config` writes TOML,
/// and does by default.
fn output_format(is_get_config: bool, asked: Option<Format>) -> anyhow::Result<Format> {
    match (is_get_config, asked) {
        (true, None) => Ok(Format::Toml),
        (true, Some(Format::Table)) => Err(usage("`get config` prints toml or json")),
        (false, Some(Format::Toml)) => Err(usage("-o toml is for `get config` only")),
        (_, asked) => Ok(asked.unwrap_or(Format::Table)),
    }
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .chain()
        .filter_map(|e| e.downcast_ref::<io::Error>())
        .any(|e| e.kind() == io::ErrorKind::BrokenPipe)
}

fn usage(message: &str) -> anyhow::Error {
    Failure::new(Exit::Usage, message).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Every command below `command`, depth first, with its full name.
    fn subcommands(command: &clap::Command, path: &str) -> Vec<(String, clap::Command)> {
        let mut all = Vec::new();
        for sub in command.get_subcommands() {
            let path = format!("{path} {}", sub.get_name());
            all.push((path.clone(), sub.clone()));
            all.extend(subcommands(sub, &path));
        }
        all
    }

    /// Every command, down to the leaves, has a one-line help and an example.
    #[test]
    fn every_subcommand_has_help_and_an_example() {
        let missing: Vec<String> = subcommands(&Cli::command(), "fulcrumctl")
            .into_iter()
            .filter(|(_, sub)| {
                let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
                let long = sub.get_long_about().map(|a| a.to_string()).unwrap_or_default();
                about.is_empty() || !long.contains("Example: fulcrumctl")
            })
            .map(|(path, _)| path)
            .collect();
        assert!(missing.is_empty(), "without help or example: {missing:?}");
    }

    /// docs/cli.md is the long help of every command, generated from clap; regenerate it with
    /// `FULCRUM_UPDATE_DOCS=1 cargo test -p fulcrum-cli cli_reference`.
    #[test]
    fn the_cli_reference_is_generated_from_clap() {
        let mut root = Cli::command();
        root.build();
        let mut text = String::from(
            "# fulcrumctl reference\n\nGenerated from fulcrumctl's own help by \
             `FULCRUM_UPDATE_DOCS=1 cargo test -p fulcrum-cli cli_reference`; do not edit.\n\n",
        );
        let mut commands = vec![("fulcrumctl".to_owned(), root.clone())];
        commands.extend(subcommands(&root, "fulcrumctl"));
        for (path, mut command) in commands {
            let help = command.render_long_help().to_string();
            text.push_str(&format!("## {path}\n\n```text\n{}\n```\n\n", help.trim_end()));
        }
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/cli.md");
        if std::env::var_os("FULCRUM_UPDATE_DOCS").is_some() {
            std::fs::write(path, &text).unwrap();
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == text,
            "docs/cli.md is out of date: FULCRUM_UPDATE_DOCS=1 cargo test -p fulcrum-cli cli_reference"
        );
    }

    #[test]
    fn global_flags_go_anywhere_and_endpoints_split_on_commas() {
        let cli = Cli::try_parse_from([
            "fulcrumctl",
            "pool",
            "list",
            "--endpoint",
            "198.18.0.11:7100,198.18.0.12:7100",
            "--endpoint=198.18.0.13:7100",
            "-o",
            "json",
        ])
        .unwrap();
        assert_eq!(cli.connection.endpoints.len(), 3);
        assert_eq!(cli.output, Some(Format::Json));

        let cli = Cli::try_parse_from(["fulcrumctl", "wait", "12", "--timeout", "30s"]).unwrap();
        assert_eq!(cli.timeout, Duration::from_secs(30));
        assert!(matches!(cli.command, Command::Cluster(ClusterCommand::Wait { revision: 12 })));
    }

    #[test]
    fn usage_errors_are_clap_errors() {
        for line in [
            &["fulcrumctl", "failover", "--vrid", "51"][..],
            &["fulcrumctl", "failover", "--vrid", "51", "--to", "2", "--reset"],
            &["fulcrumctl", "apply", "-f", "c.toml", "--dry-run", "--wait"],
            &["fulcrumctl", "backend", "add", "web", "not-an-address"],
            &["fulcrumctl", "pool", "create", "Web"],
            &["fulcrumctl", "pool", "create", "web", "--algorithm", "fastest"],
            &["fulcrumctl", "--timeout", "0s", "status"],
            &["fulcrumctl", "--token", "a", "--token-file", "b", "status"],
        ] {
            let error = Cli::try_parse_from(line).unwrap_err();
            assert_eq!(error.exit_code(), 2, "{line:?}");
        }
    }

    #[test]
    fn toml_output_is_for_get_config_only() {
        assert_eq!(output_format(true, None).unwrap(), Format::Toml);
        assert_eq!(output_format(true, Some(Format::Json)).unwrap(), Format::Json);
        assert_eq!(output_format(false, None).unwrap(), Format::Table);
        assert_eq!(output_format(false, Some(Format::Json)).unwrap(), Format::Json);
        for (is_get, asked) in [(true, Format::Table), (false, Format::Toml)] {
            let error = output_format(is_get, Some(asked)).unwrap_err();
            assert_eq!(Exit::of(&error), Exit::Usage);
        }
    }

    #[test]
    fn the_help_lists_the_exit_codes() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("Exit codes:"), "{help}");
        assert!(help.contains("6  --wait"), "{help}");
    }
}
