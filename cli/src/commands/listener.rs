//! Listeners and their HTTP routes: `listener ...` and `route ...`.

use std::path::PathBuf;

use clap::Subcommand;
use fulcrum_model::{Listener, Name, PathMatch, Route, RouteAction};
use hyper::Method;

use super::{Context, WriteArgs, not_found, read_object};
use crate::client::{Body, segment};
use crate::output::{self, Table};

/// `listener ...`
#[derive(Subcommand, Debug)]
pub(crate) enum ListenerCommand {
    /// List the listeners.
    ///
    /// One line per listener: address, protocol, default pool, number of routes, rate limit.
    ///
    /// Example: fulcrumctl listener list
    List,
    /// Create a listener, or replace one (its routes included), from a file.
    ///
    /// The file holds one listener in the cluster file's form, TOML or JSON, e.g.
    /// `name = "public-http"`, `bind = "198.18.0.100:80"`, `protocol = "http"`,
    /// `default_pool = "web"`, with `[[routes]]` tables for its routes.
    ///
    /// Example: fulcrumctl listener set -f public-http.toml --wait
    Set {
        /// The listener file (TOML, or JSON)
        #[arg(short, long = "file", value_name = "FILE")]
        file: PathBuf,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Delete a listener and its routes.
    ///
    /// Example: fulcrumctl listener delete postgres
    Delete {
        /// The listener.
        name: Name,
        #[command(flatten)]
        write: WriteArgs,
    },
}

/// `route ...`
#[derive(Subcommand, Debug)]
pub(crate) enum RouteCommand {
    /// List the HTTP routes, of every listener or of one, in the order they are tried.
    ///
    /// Example: fulcrumctl route list public-http
    List {
        /// Only this listener's routes.
        listener: Option<Name>,
    },
    /// Create a route of a listener, or replace one, from a file.
    ///
    /// The file holds one route in the cluster file's form, TOML or JSON, e.g.
    /// `name = "api"`, `host = "api.example.test"`, `path_prefix = "/v1/"`, `pool = "api"`.
    ///
    /// Example: fulcrumctl route set public-http -f api-route.toml
    Set {
        /// The listener.
        listener: Name,
        /// The route file (TOML, or JSON)
        #[arg(short, long = "file", value_name = "FILE")]
        file: PathBuf,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Delete a route of a listener.
    ///
    /// Example: fulcrumctl route delete public-http canary
    Delete {
        /// The listener.
        listener: Name,
        /// The route.
        name: Name,
        #[command(flatten)]
        write: WriteArgs,
    },
}

/// Runs a `listener` command.
pub(crate) async fn listener(ctx: &Context, command: ListenerCommand) -> anyhow::Result<()> {
    match command {
        ListenerCommand::List => {
            let config = ctx.config().await?;
            if ctx.json {
                return output::print_json(&config.spec.listeners);
            }
            let mut table =
                Table::new(&["NAME", "BIND", "PROTOCOL", "DEFAULT-POOL", "ROUTES", "RATE-LIMIT"]);
            for listener in &config.spec.listeners {
                table.row(vec![
                    listener.name.to_string(),
                    listener.bind.to_string(),
                    listener.protocol.to_string(),
                    or_dash(listener.default_pool.as_ref()),
                    listener.routes.len().to_string(),
                    or_dash(listener.rate_limit.as_ref()),
                ]);
            }
            table.print()?;
            Ok(())
        }
        ListenerCommand::Set { file, write } => {
            let listener: Listener = read_object(&file, "listener")?;
            let path = format!("/v1/listeners/{}", segment(listener.name.as_str()));
            let done = format!("listener {} saved", listener.name);
            ctx.write(Method::PUT, &path, Body::json(&listener)?, &done, write).await
        }
        ListenerCommand::Delete { name, write } => {
            let path = format!("/v1/listeners/{}", segment(name.as_str()));
            let done = format!("listener {name} deleted");
            ctx.write(Method::DELETE, &path, Body::Empty, &done, write).await
        }
    }
}

/// Runs a `route` command.
pub(crate) async fn route(ctx: &Context, command: RouteCommand) -> anyhow::Result<()> {
    match command {
        RouteCommand::List { listener } => {
            let config = ctx.config().await?;
            let listeners: Vec<&Listener> = match &listener {
                Some(name) => match config.spec.listener(name.as_str()) {
                    Some(listener) => vec![listener],
                    None => {
                        let what = format!("listener named '{name}'");
                        return Err(not_found(what, "fulcrumctl listener list"));
                    }
                },
                None => config.spec.listeners.iter().collect(),
            };
            if ctx.json {
                let routes: Vec<serde_json::Value> = listeners
                    .iter()
                    .map(|l| serde_json::json!({ "listener": l.name, "routes": l.routes }))
                    .collect();
                return output::print_json(&routes);
            }
            let mut table = Table::new(&["LISTENER", "NAME", "MATCH", "TO", "RATE-LIMIT"]);
            for listener in listeners {
                for route in &listener.routes {
                    table.row(vec![
                        listener.name.to_string(),
                        route.name.to_string(),
                        match_text(route),
                        action_text(&route.action),
                        or_dash(route.rate_limit.as_ref()),
                    ]);
                }
            }
            table.print()?;
            Ok(())
        }
        RouteCommand::Set { listener, file, write } => {
            let route: Route = read_object(&file, "route")?;
            let path = route_path(&listener, &route.name);
            let done = format!("route {} of listener {listener} saved", route.name);
            ctx.write(Method::PUT, &path, Body::json(&route)?, &done, write).await
        }
        RouteCommand::Delete { listener, name, write } => {
            let path = route_path(&listener, &name);
            let done = format!("route {name} of listener {listener} deleted");
            ctx.write(Method::DELETE, &path, Body::Empty, &done, write).await
        }
    }
}

fn route_path(listener: &Name, route: &Name) -> String {
    format!("/v1/listeners/{}/routes/{}", segment(listener.as_str()), segment(route.as_str()))
}

fn or_dash(name: Option<&Name>) -> String {
    name.map_or_else(|| "-".to_owned(), Name::to_string)
}

/// A route's conditions in a few words, e.g. `host api.example.test, path /v1/*`.
fn match_text(route: &Route) -> String {
    let matcher = &route.matcher;
    let mut parts = Vec::new();
    if let Some(host) = &matcher.host {
        parts.push(format!("host {host}"));
    }
    match &matcher.path {
        Some(PathMatch::Prefix(prefix)) => parts.push(format!("path {prefix}*")),
        Some(PathMatch::Exact(path)) => parts.push(format!("path {path}")),
        None => {}
    }
    if let Some(method) = &matcher.method {
        parts.push(method.clone());
    }
    for header in &matcher.headers {
        parts.push(format!("{}: {}", header.name, header.value));
    }
    if parts.is_empty() { "everything".to_owned() } else { parts.join(", ") }
}

/// Where a route sends requests: `pool api` or `web 95, web-canary 5`.
fn action_text(action: &RouteAction) -> String {
    match action {
        RouteAction::Pool(pool) => format!("pool {pool}"),
        RouteAction::Split(targets) => targets
            .iter()
            .map(|t| format!("{} {}", t.pool, t.weight))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_read_as_a_line() {
        let route: Route = toml::from_str(
            "name = \"canary\"\nhost = \"api.example.test\"\npath_prefix = \"/v1/\"\n\
             headers = [{ name = \"x-canary\", value = \"1\" }]\n\
             split = [{ pool = \"web\", weight = 95 }, { pool = \"web-canary\", weight = 5 }]\n",
        )
        .unwrap();
        assert_eq!(match_text(&route), "host api.example.test, path /v1/*, x-canary: 1");
        assert_eq!(action_text(&route.action), "web 95, web-canary 5");
        assert_eq!(
            route_path(&"public".parse().unwrap(), &route.name),
            "/v1/listeners/public/routes/canary"
        );
    }
}
