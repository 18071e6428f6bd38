//! The whole cluster file: `validate` (offline), `apply` and `get config`.

use std::io::{self, Write};
use std::path::Path;

use anyhow::Context as _;
use bytes::Bytes;
use clap::Subcommand;
use fulcrum_model::api::DryRun;
use fulcrum_model::file::{self, FileError};
use fulcrum_model::{ClusterSpec, Config};
use hyper::Method;

use super::{Context, WriteArgs};
use crate::client::Body;
use crate::exit::{Exit, Failure};
use crate::output::{self, Format};

/// What `get` shows.
#[derive(Subcommand, Debug)]
pub(crate) enum GetCommand {
    /// Print the running configuration as a cluster file (or as JSON with -o json).
    ///
    /// The TOML form is what `apply -f` takes back, so editing it and applying it is a way
    /// to change the cluster. The JSON form is the API's `Config`, with its revision.
    ///
    /// Example: fulcrumctl get config > cluster.toml
    Config,
}

/// Reads and checks a cluster file; an invalid one is exit code 4, as the server would
/// refuse it.
pub(crate) fn read_cluster_file(path: &Path) -> anyhow::Result<(String, ClusterSpec)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read cluster file {}", path.display()))?;
    let spec = file::parse(&text).map_err(|error| {
        let message = match error {
            FileError::Invalid(violations) => format!(
                "{} is not a valid cluster file ({} problems):\n{violations}",
                path.display(),
                violations.0.len()
            ),
            other => format!("{} is not a valid cluster file:\n{other}", path.display()),
        };
        Failure::new(Exit::Refused, message)
    })?;
    Ok((text, spec))
}

/// `validate -f FILE`: checks a cluster file without sending it.
pub(crate) fn validate(path: &Path) -> anyhow::Result<()> {
    let (_, spec) = read_cluster_file(path)?;
    let routes: usize = spec.listeners.iter().map(|l| l.routes.len()).sum();
    let backends: usize = spec.pools.iter().map(|p| p.backends.len()).sum();
    writeln!(
        io::stdout(),
        "{}: valid: {} listeners, {} routes, {} pools, {} backends, {} rate limits",
        path.display(),
        spec.listeners.len(),
        routes,
        spec.pools.len(),
        backends,
        spec.rate_limits.len()
    )?;
    Ok(())
}

/// `apply -f FILE [--dry-run]`: checks the file here, then replaces the configuration.
pub(crate) async fn apply(
    ctx: &Context,
    path: &Path,
    dry_run: bool,
    args: WriteArgs,
) -> anyhow::Result<()> {
    let (text, _) = read_cluster_file(path)?;
    let body = Body::Toml(Bytes::from(text));
    if !dry_run {
        let done = format!("{} applied", path.display());
        return ctx.write(Method::POST, "/v1/config", body, &done, args).await;
    }
    let answer: DryRun = ctx.client.write(Method::POST, "/v1/config?dry_run=true", body).await?;
    if ctx.json {
        return output::print_json(&answer);
    }
    if answer.changes.is_empty() {
        writeln!(
            io::stdout(),
            "{} matches revision {}: nothing to change",
            path.display(),
            answer.revision
        )?;
        return Ok(());
    }
    for change in &answer.changes {
        writeln!(io::stdout(), "{change}")?;
    }
    writeln!(
        io::stdout(),
        "{} changes against revision {}; dry run: nothing was written",
        answer.changes.len(),
        answer.revision
    )?;
    Ok(())
}

/// `get config`: the running configuration as TOML or JSON.
pub(crate) async fn get_config(ctx: &Context, format: Format) -> anyhow::Result<()> {
    let config: Config = ctx.config().await?;
    if format == Format::Json {
        return output::print_json(&config);
    }
    let text = file::render(&config.spec).context("cannot write the configuration as TOML")?;
    // A comment, so the file still applies as it is.
    writeln!(io::stdout(), "# Fulcrum cluster configuration at revision {}", config.revision)?;
    write!(io::stdout(), "{text}")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_cluster_file_is_refused_with_its_problems() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.toml");
        std::fs::write(
            &path,
            "[[listeners]]\nname = \"public\"\nbind = \"198.18.0.100:80\"\nprotocol = \"http\"\n\
             default_pool = \"missing\"\n",
        )
        .unwrap();
        let error = read_cluster_file(&path).unwrap_err();
        assert_eq!(Exit::of(&error), Exit::Refused);
        assert!(error.to_string().contains("listener 'public'"), "{error}");

        std::fs::write(&path, "[[pools]]\nname = \"web\"\n").unwrap();
        let (text, spec) = read_cluster_file(&path).unwrap();
        assert!(text.contains("web"));
        assert_eq!(spec.pools.len(), 1);
    }
}
