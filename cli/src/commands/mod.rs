//! What the commands that talk to the cluster share: the [`Context`] they run in, the report
//! of a write (and its `--wait`), and reading one object from a file.

pub(crate) mod cert;
pub(crate) mod cluster;
pub(crate) mod config;
pub(crate) mod listener;
pub(crate) mod pool;
pub(crate) mod ratelimit;

use std::io::{self, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use fulcrum_model::api::{Propagation, Written};
use fulcrum_model::{Config, Revision};
use hyper::Method;
use serde::de::DeserializeOwned;

use crate::client::{Body, Client};
use crate::exit::{Exit, Failure};
use crate::output::{self, Table};

/// What every cluster command runs with.
pub(crate) struct Context {
    /// The admin API.
    pub(crate) client: Client,
    /// `-o json` rather than tables.
    pub(crate) json: bool,
    /// How long `--wait` and `wait` wait for a revision.
    pub(crate) wait: Duration,
}

/// The flag every write takes.
#[derive(Args, Clone, Copy, Debug)]
pub(crate) struct WriteArgs {
    /// Then wait (up to --timeout) until every node applies the change, and say how long
    /// that took; exit code 6 if they do not in time
    #[arg(long)]
    pub(crate) wait: bool,
}

impl Context {
    /// The cluster's configuration now.
    pub(crate) async fn config(&self) -> anyhow::Result<Config> {
        self.client.get("/v1/config").await
    }

    /// Sends a write answered by [`Written`] and reports it: `done` says what happened, e.g.
    /// `pool web deleted`.
    pub(crate) async fn write(
        &self,
        method: Method,
        path: &str,
        body: Body,
        done: &str,
        args: WriteArgs,
    ) -> anyhow::Result<()> {
        let written: Written = self.client.write(method, path, body).await?;
        if !args.wait {
            if self.json {
                return output::print_json(&written);
            }
            writeln!(io::stdout(), "{done} (revision {})", written.revision)?;
            return Ok(());
        }
        if !self.json {
            // Said first: whatever happens while waiting, the change is committed.
            writeln!(io::stdout(), "{done} (revision {})", written.revision)?;
        }
        let started = Instant::now();
        let propagation =
            self.client.wait(written.revision, self.wait).await.with_context(|| {
                format!("revision {} is committed, but waiting for it failed", written.revision)
            })?;
        if self.json {
            let both = serde_json::json!({ "written": written, "propagation": propagation });
            output::print_json(&both)?;
        } else {
            print_propagation(&propagation, started.elapsed())?;
        }
        check_complete(&propagation, self.wait)
    }

    /// Waits for `revision` and reports it, as `fulcrumctl wait` does.
    pub(crate) async fn wait_for(&self, revision: Revision) -> anyhow::Result<()> {
        let started = Instant::now();
        let propagation = self.client.wait(revision, self.wait).await?;
        if self.json {
            output::print_json(&propagation)?;
        } else {
            print_propagation(&propagation, started.elapsed())?;
        }
        check_complete(&propagation, self.wait)
    }
}

/// How far a revision spread: one line when it reached every node, else a line per node.
fn print_propagation(propagation: &Propagation, took: Duration) -> io::Result<()> {
    let nodes = propagation.applied.len();
    if propagation.complete {
        writeln!(
            io::stdout(),
            "revision {} applied by all {nodes} nodes in {}",
            propagation.revision,
            output::seconds(took)
        )?;
        return Ok(());
    }
    let mut table = Table::new(&["NODE", "APPLIED"]);
    for (node, applied) in &propagation.applied {
        let applied = applied.map_or_else(|| "no answer".to_owned(), |r| r.to_string());
        table.row(vec![node.to_string(), applied]);
    }
    table.print()
}

/// The exit-6 failure when not every node applied the revision in time.
fn check_complete(propagation: &Propagation, wait: Duration) -> anyhow::Result<()> {
    if propagation.complete {
        return Ok(());
    }
    let behind: Vec<String> = propagation
        .applied
        .iter()
        .filter(|(_, applied)| applied.is_none_or(|r| r < propagation.revision))
        .map(|(node, applied)| match applied {
            Some(r) => format!("node {node} is at revision {r}"),
            None => format!("node {node} did not answer"),
        })
        .collect();
    Err(Failure::new(
        Exit::WaitTimedOut,
        format!(
            "revision {} was not applied by every node within {}: {}\nhint: `fulcrumctl status` \
             shows each node; `fulcrumctl wait {}` waits again",
            propagation.revision,
            output::duration(wait),
            if behind.is_empty() {
                "the cluster did not say which".to_owned()
            } else {
                behind.join(", ")
            },
            propagation.revision
        ),
    )
    .into())
}

/// Reads one object (a pool, a listener, ...) from a JSON file (`.json`, or text starting
/// with `{`) or else a TOML file; `kind` names it in errors.
pub(crate) fn read_object<T: DeserializeOwned>(path: &Path, kind: &str) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {kind} file {}", path.display()))?;
    let is_json =
        path.extension().is_some_and(|e| e == "json") || text.trim_start().starts_with('{');
    let parsed = if is_json {
        serde_json::from_str(&text).map_err(|e| e.to_string())
    } else {
        toml::from_str(&text).map_err(|e| e.to_string())
    };
    // Exit 4, as the server would refuse the same object.
    parsed.map_err(|e| {
        Failure::new(Exit::Refused, format!("{} is not a valid {kind}: {e}", path.display())).into()
    })
}

/// The failure for an object the configuration does not have.
pub(crate) fn not_found(what: String, list_command: &str) -> anyhow::Error {
    Failure::new(Exit::Refused, format!("no {what}\nhint: `{list_command}` lists them")).into()
}

#[cfg(test)]
mod tests {
    use fulcrum_model::{Name, Pool};

    use super::*;

    #[test]
    fn objects_read_from_toml_or_json() {
        let dir = tempfile::tempdir().unwrap();
        let toml_path = dir.path().join("web.toml");
        std::fs::write(
            &toml_path,
            "name = \"web\"\nalgorithm = \"least_connections\"\n\
             backends = [{ address = \"198.18.0.21:8080\" }]\n",
        )
        .unwrap();
        let pool: Pool = read_object(&toml_path, "pool").unwrap();
        assert_eq!(pool.name, "web".parse::<Name>().unwrap());
        assert_eq!(pool.backends.len(), 1);

        let json_path = dir.path().join("web.txt");
        std::fs::write(&json_path, r#" {"name": "web", "drain_timeout": "5s"}"#).unwrap();
        let pool: Pool = read_object(&json_path, "pool").unwrap();
        assert_eq!(pool.drain_timeout, Duration::from_secs(5));

        std::fs::write(&toml_path, "name = \"web\"\nalgoritm = \"random\"\n").unwrap();
        let error = read_object::<Pool>(&toml_path, "pool").unwrap_err();
        assert_eq!(Exit::of(&error), Exit::Refused);
        assert!(error.to_string().contains("algoritm"), "{error}");
    }

    #[test]
    fn an_incomplete_propagation_names_the_laggards() {
        let propagation = Propagation {
            revision: 12,
            complete: false,
            applied: vec![(1, Some(12)), (2, Some(11)), (3, None)],
        };
        let error = check_complete(&propagation, Duration::from_secs(10)).unwrap_err();
        assert_eq!(Exit::of(&error), Exit::WaitTimedOut);
        let message = error.to_string();
        assert!(
            message.contains("within 10s: node 2 is at revision 11, node 3 did not answer"),
            "{message}"
        );
        assert!(!message.contains("node 1"), "{message}");
        let done = Propagation { complete: true, ..propagation };
        assert!(check_complete(&done, Duration::from_secs(10)).is_ok());
    }
}
