//! Pools and their backends: `pool ...` and `backend ...`.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Subcommand;
use fulcrum_model::api::{BackendStateChange, BackendWeightChange, ClusterStatus};
use fulcrum_model::{AdminState, Algorithm, Backend, HealthCheck, Name, Pool};
use hyper::Method;

use super::{Context, WriteArgs, not_found, read_object};
use crate::client::{Body, segment};
use crate::exit::{Exit, Failure};
use crate::output::{self, Table};

/// `pool ...`
#[derive(Subcommand, Debug)]
pub(crate) enum PoolCommand {
    /// List the pools.
    ///
    /// One line per pool: its algorithm, how many backends it declares, its health check.
    ///
    /// Example: fulcrumctl pool list
    List,
    /// Show one pool: its settings and each backend as every node sees it.
    ///
    /// For each backend and node: health (up, down, unchecked), administrative state
    /// (active, draining, disabled, removed), weight and active connections or requests.
    ///
    /// Example: fulcrumctl pool show web
    Show {
        /// The pool.
        name: Name,
    },
    /// Create a pool, or replace one (with all its backends).
    ///
    /// Either give the name with --algorithm and --backend for a plain pool, or a file
    /// holding one pool in the cluster file's form, TOML or JSON (e.g. `name = "web"`,
    /// `algorithm = "least_connections"`, `backends = [{ address = "198.18.0.21:8080" }]`).
    ///
    /// Example: fulcrumctl pool create web --algorithm least_connections --backend
    /// 198.18.0.21:8080 --backend 198.18.0.22:8080
    ///
    /// Example: fulcrumctl pool create -f web.toml --wait
    Create {
        /// The pool's name (optional with -f, which names it; if both are given they must
        /// match).
        #[arg(required_unless_present = "file")]
        name: Option<Name>,
        /// round_robin (default), weighted_round_robin, least_connections,
        /// weighted_least_connections, random, power_of_two_choices, source_ip_hash,
        /// peak_ewma; algorithms with parameters (consistent_hash) need -f
        #[arg(
            long,
            value_name = "ALGORITHM",
            value_parser = parse_algorithm,
            conflicts_with = "file"
        )]
        algorithm: Option<Algorithm>,
        /// A backend's address (weight 1, active); repeat for more
        #[arg(long = "backend", value_name = "ADDR", conflicts_with = "file")]
        backends: Vec<SocketAddr>,
        /// Read the pool from FILE (TOML, or JSON)
        #[arg(short, long = "file", value_name = "FILE")]
        file: Option<PathBuf>,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Delete a pool (no listener or route may still use it).
    ///
    /// Example: fulcrumctl pool delete web-canary
    Delete {
        /// The pool.
        name: Name,
        #[command(flatten)]
        write: WriteArgs,
    },
}

/// `backend ...`
#[derive(Subcommand, Debug)]
pub(crate) enum BackendCommand {
    /// Add a backend to a pool.
    ///
    /// Example: fulcrumctl backend add web 198.18.0.24:8080 --weight 2
    Add {
        /// The pool.
        pool: Name,
        /// The backend's address, e.g. 198.18.0.24:8080 or [2001:db8::24]:8080.
        address: SocketAddr,
        /// Its share for weighted algorithms
        #[arg(long, default_value_t = 1)]
        weight: u32,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Remove a backend: it drains first, for the pool's drain timeout.
    ///
    /// Example: fulcrumctl backend remove web 198.18.0.24:8080
    Remove {
        /// The pool.
        pool: Name,
        /// The backend's address.
        address: SocketAddr,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Drain a backend: it takes nothing new, and work in flight finishes.
    ///
    /// `pool show` tells when its active connections reach zero.
    ///
    /// Example: fulcrumctl backend drain web 198.18.0.21:8080 --wait
    Drain {
        /// The pool.
        pool: Name,
        /// The backend's address.
        address: SocketAddr,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Make a drained or disabled backend take traffic again.
    ///
    /// Example: fulcrumctl backend enable web 198.18.0.21:8080
    Enable {
        /// The pool.
        pool: Name,
        /// The backend's address.
        address: SocketAddr,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Disable a backend at once: work in flight on it is closed.
    ///
    /// Example: fulcrumctl backend disable web 198.18.0.21:8080
    Disable {
        /// The pool.
        pool: Name,
        /// The backend's address.
        address: SocketAddr,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Set a backend's weight (0 takes no new traffic).
    ///
    /// Example: fulcrumctl backend weight web 198.18.0.21:8080 5
    Weight {
        /// The pool.
        pool: Name,
        /// The backend's address.
        address: SocketAddr,
        /// The new weight.
        weight: u32,
        #[command(flatten)]
        write: WriteArgs,
    },
}

/// An algorithm without parameters, by name.
fn parse_algorithm(text: &str) -> Result<Algorithm, String> {
    serde_json::from_value(serde_json::Value::String(text.to_owned()))
        .map_err(|e| format!("{e} (an algorithm with parameters needs -f FILE)"))
}

/// Runs a `pool` command.
pub(crate) async fn pool(ctx: &Context, command: PoolCommand) -> anyhow::Result<()> {
    match command {
        PoolCommand::List => list(ctx).await,
        PoolCommand::Show { name } => show(ctx, &name).await,
        PoolCommand::Create { name, algorithm, backends, file, write } => {
            let pool = pool_to_create(name, algorithm, backends, file)?;
            let path = format!("/v1/pools/{}", segment(pool.name.as_str()));
            let done = format!("pool {} saved with {} backends", pool.name, pool.backends.len());
            ctx.write(Method::PUT, &path, Body::json(&pool)?, &done, write).await
        }
        PoolCommand::Delete { name, write } => {
            let path = format!("/v1/pools/{}", segment(name.as_str()));
            ctx.write(Method::DELETE, &path, Body::Empty, &format!("pool {name} deleted"), write)
                .await
        }
    }
}

/// The pool `pool create` describes, from its file or its flags.
fn pool_to_create(
    name: Option<Name>,
    algorithm: Option<Algorithm>,
    backends: Vec<SocketAddr>,
    file: Option<PathBuf>,
) -> anyhow::Result<Pool> {
    let Some(path) = file else {
        let Some(name) = name else {
            return Err(Failure::new(Exit::Usage, "give the pool's name or -f FILE").into());
        };
        return Ok(Pool {
            algorithm: algorithm.unwrap_or_default(),
            backends: backends.into_iter().map(Backend::new).collect(),
            ..Pool::new(name)
        });
    };
    let pool: Pool = read_object(&path, "pool")?;
    match name {
        Some(name) if name != pool.name => Err(Failure::new(
            Exit::Usage,
            format!(
                "{} describes pool '{}', not '{name}': give no name, or the same",
                path.display(),
                pool.name
            ),
        )
        .into()),
        _ => Ok(pool),
    }
}

/// Runs a `backend` command.
pub(crate) async fn backend(ctx: &Context, command: BackendCommand) -> anyhow::Result<()> {
    match command {
        BackendCommand::Add { pool, address, weight, write } => {
            let backend = Backend { weight, ..Backend::new(address) };
            let path = format!("/v1/pools/{}/backends", segment(pool.as_str()));
            let done = format!("backend {address} added to pool {pool}");
            ctx.write(Method::POST, &path, Body::json(&backend)?, &done, write).await
        }
        BackendCommand::Remove { pool, address, write } => {
            let path = backend_path(&pool, address, "");
            let done = format!("backend {address} removed from pool {pool}");
            ctx.write(Method::DELETE, &path, Body::Empty, &done, write).await
        }
        BackendCommand::Drain { pool, address, write } => {
            set_state(ctx, &pool, address, AdminState::Draining, "draining", write).await
        }
        BackendCommand::Enable { pool, address, write } => {
            set_state(ctx, &pool, address, AdminState::Active, "active", write).await
        }
        BackendCommand::Disable { pool, address, write } => {
            set_state(ctx, &pool, address, AdminState::Disabled, "disabled", write).await
        }
        BackendCommand::Weight { pool, address, weight, write } => {
            let path = backend_path(&pool, address, "/weight");
            let body = Body::json(&BackendWeightChange { weight })?;
            let done = format!("backend {address} of pool {pool} has weight {weight}");
            ctx.write(Method::PUT, &path, body, &done, write).await
        }
    }
}

/// `/v1/pools/{pool}/backends/{address}` followed by `suffix`.
fn backend_path(pool: &Name, address: SocketAddr, suffix: &str) -> String {
    format!(
        "/v1/pools/{}/backends/{}{suffix}",
        segment(pool.as_str()),
        segment(&address.to_string())
    )
}

async fn set_state(
    ctx: &Context,
    pool: &Name,
    address: SocketAddr,
    state: AdminState,
    word: &str,
    write: WriteArgs,
) -> anyhow::Result<()> {
    let path = backend_path(pool, address, "/state");
    let body = Body::json(&BackendStateChange { state })?;
    let done = format!("backend {address} of pool {pool} is {word}");
    ctx.write(Method::PUT, &path, body, &done, write).await
}

async fn list(ctx: &Context) -> anyhow::Result<()> {
    let config = ctx.config().await?;
    if ctx.json {
        return output::print_json(&config.spec.pools);
    }
    let mut table = Table::new(&["NAME", "ALGORITHM", "BACKENDS", "HEALTH-CHECK", "UPSTREAM"]);
    for pool in &config.spec.pools {
        table.row(vec![
            pool.name.to_string(),
            algorithm_text(&pool.algorithm),
            pool.backends.len().to_string(),
            pool.health_check.as_ref().map_or_else(|| "-".to_owned(), health_check_text),
            format!("{:?}", pool.upstream).to_lowercase(),
        ]);
    }
    table.print()?;
    Ok(())
}

async fn show(ctx: &Context, name: &Name) -> anyhow::Result<()> {
    let config = ctx.config().await?;
    let Some(pool) = config.spec.pool(name.as_str()) else {
        return Err(not_found(format!("pool named '{name}'"), "fulcrumctl pool list"));
    };
    let status: ClusterStatus = ctx.client.get("/v1/status").await?;
    if ctx.json {
        let nodes: Vec<serde_json::Value> = status
            .nodes
            .iter()
            .map(|report| {
                let backends = report.status.as_ref().and_then(|s| {
                    s.pools.iter().find(|p| p.name == name.as_str()).map(|p| &p.backends)
                });
                serde_json::json!({ "id": report.id, "backends": backends, "error": report.error })
            })
            .collect();
        return output::print_json(&serde_json::json!({ "pool": pool, "nodes": nodes }));
    }

    let mut settings = Table::new(&[]);
    let mut setting = |key: &str, value: String| settings.row(vec![format!("{key}:"), value]);
    setting("pool", pool.name.to_string());
    setting("algorithm", algorithm_text(&pool.algorithm));
    setting(
        "health check",
        pool.health_check.as_ref().map_or_else(|| "-".into(), health_check_text),
    );
    setting("upstream", format!("{:?}", pool.upstream).to_lowercase());
    setting("connect timeout", output::duration(pool.connect_timeout));
    setting("response timeout", output::duration(pool.response_timeout));
    setting("drain timeout", output::duration(pool.drain_timeout));
    settings.print()?;
    writeln!(io::stdout())?;

    let mut declared = Table::new(&["BACKEND", "WEIGHT", "STATE", "MAX-CONNECTIONS"]);
    for backend in &pool.backends {
        declared.row(vec![
            backend.address.to_string(),
            backend.weight.to_string(),
            format!("{:?}", backend.state).to_lowercase(),
            backend.max_connections.map_or_else(|| "-".into(), |n| n.to_string()),
        ]);
    }
    declared.print()?;
    writeln!(io::stdout())?;

    // Declared backends first, then any a node still drains after their removal.
    let mut addresses: Vec<SocketAddr> = pool.backends.iter().map(|b| b.address).collect();
    let node_pools: Vec<_> = status
        .nodes
        .iter()
        .map(|report| {
            let pool = report
                .status
                .as_ref()
                .and_then(|s| s.pools.iter().find(|p| p.name == name.as_str()));
            (report, pool)
        })
        .collect();
    for backend in node_pools.iter().filter_map(|(_, p)| *p).flat_map(|p| &p.backends) {
        if !addresses.contains(&backend.address) {
            addresses.push(backend.address);
        }
    }
    let mut seen = Table::new(&["BACKEND", "NODE", "HEALTH", "ADMIN", "WEIGHT", "ACTIVE"]);
    for address in &addresses {
        for (report, node_pool) in &node_pools {
            let mut row = vec![address.to_string(), report.id.to_string()];
            match (
                report.status.as_ref(),
                node_pool.and_then(|p| p.backends.iter().find(|b| b.address == *address)),
            ) {
                (None, _) => row.push(format!(
                    "no answer: {}",
                    report.error.as_deref().unwrap_or("no reason given")
                )),
                (Some(_), None) => row.push("not known to this node yet".to_owned()),
                (Some(_), Some(b)) => row.extend([
                    b.health.clone(),
                    b.admin.clone(),
                    b.weight.to_string(),
                    b.active.to_string(),
                ]),
            }
            seen.row(row);
        }
    }
    seen.print()?;
    Ok(())
}

/// An algorithm with its parameters, e.g. `consistent_hash (key header:x-user, table 65537)`.
pub(crate) fn algorithm_text(algorithm: &Algorithm) -> String {
    match algorithm {
        Algorithm::RoundRobin => "round_robin".into(),
        Algorithm::WeightedRoundRobin => "weighted_round_robin".into(),
        Algorithm::LeastConnections => "least_connections".into(),
        Algorithm::WeightedLeastConnections => "weighted_least_connections".into(),
        Algorithm::Random => "random".into(),
        Algorithm::PowerOfTwoChoices => "power_of_two_choices".into(),
        Algorithm::SourceIpHash => "source_ip_hash".into(),
        Algorithm::ConsistentHash { key, table_size } => {
            format!("consistent_hash (key {key}, table {table_size})")
        }
        Algorithm::PeakEwma { decay } => format!("peak_ewma (decay {})", output::duration(*decay)),
    }
}

/// A health check in a few words: `http /health every 2s` or `tcp every 1s`.
fn health_check_text(check: &HealthCheck) -> String {
    let probe = match &check.http {
        Some(http) => format!("http {} ({})", http.path, http.expect_status),
        None => "tcp".to_owned(),
    };
    format!(
        "{probe} every {}, timeout {}, rise {}, fall {}",
        output::duration(check.interval),
        output::duration(check.timeout),
        check.rise,
        check.fall
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_from_flags_or_from_a_file() {
        let web: Name = "web".parse().unwrap();
        let backends = vec!["198.18.0.21:8080".parse().unwrap()];
        let pool =
            pool_to_create(Some(web.clone()), Some(Algorithm::Random), backends, None).unwrap();
        assert_eq!(pool.algorithm, Algorithm::Random);
        assert_eq!(pool.backends, vec![Backend::new("198.18.0.21:8080".parse().unwrap())]);
        assert_eq!(pool.drain_timeout, Pool::new(web.clone()).drain_timeout);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.toml");
        std::fs::write(&path, "name = \"web\"\nalgorithm = \"least_connections\"\n").unwrap();
        let from_file = pool_to_create(None, None, vec![], Some(path.clone())).unwrap();
        assert_eq!(from_file.algorithm, Algorithm::LeastConnections);
        assert!(pool_to_create(Some(web), None, vec![], Some(path.clone())).is_ok());
        let other = pool_to_create(Some("api".parse().unwrap()), None, vec![], Some(path));
        let error = other.unwrap_err();
        assert_eq!(Exit::of(&error), Exit::Usage);
        assert!(error.to_string().contains("describes pool 'web', not 'api'"), "{error}");
    }

    #[test]
    fn backend_paths_carry_ipv6_addresses_encoded() {
        let web: Name = "web".parse().unwrap();
        let v4: SocketAddr = "198.18.0.21:8080".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::21]:8080".parse().unwrap();
        assert_eq!(backend_path(&web, v4, ""), "/v1/pools/web/backends/198.18.0.21:8080");
        assert_eq!(
            backend_path(&web, v6, "/state"),
            "/v1/pools/web/backends/%5B2001:db8::21%5D:8080/state"
        );
    }

    #[test]
    fn algorithms_by_name_and_their_errors() {
        assert_eq!(parse_algorithm("least_connections").unwrap(), Algorithm::LeastConnections);
        let error = parse_algorithm("consistent_hash").unwrap_err();
        assert!(error.contains("needs a `key`") && error.contains("-f FILE"), "{error}");
        assert!(parse_algorithm("fastest").unwrap_err().contains("unknown variant"));
        let hashed =
            Algorithm::ConsistentHash { key: "header:x-user".parse().unwrap(), table_size: 65_537 };
        assert_eq!(algorithm_text(&hashed), "consistent_hash (key header:x-user, table 65537)");
    }
}
