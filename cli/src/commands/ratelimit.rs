//! Rate-limit policies: `ratelimit ...`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Subcommand};
use fulcrum_model::{Name, RateLimit, RateLimitKey, RateLimitPolicy};
use hyper::Method;

use super::{Context, WriteArgs, read_object};
use crate::client::{Body, segment};
use crate::exit::{Exit, Failure};
use crate::output::{self, Table};

/// `ratelimit ...`
#[derive(Subcommand, Debug)]
pub(crate) enum RateLimitCommand {
    /// List the rate-limit policies.
    ///
    /// Example: fulcrumctl ratelimit list
    List,
    /// Create a policy, or replace one: from flags, or from a file.
    ///
    /// A token bucket allows bursts of CAPACITY requests and PER_SECOND sustained; a sliding
    /// window allows LIMIT requests in any window. The key says what each counter is kept
    /// per: client_ip, route, or header:<name>. The file form is the cluster file's, e.g.
    /// `name = "per-client"`, `kind = "token_bucket"`, `key = "client_ip"`,
    /// `capacity = 200`, `refill_per_second = 100.0`.
    ///
    /// Example: fulcrumctl ratelimit set per-client --key client_ip --token-bucket 200
    /// --refill 100
    ///
    /// Example: fulcrumctl ratelimit set api-total --key route --sliding-window 1000 --window 1s
    ///
    /// Example: fulcrumctl ratelimit set -f per-client.toml
    #[command(group(ArgGroup::new("limit").args(["token_bucket", "sliding_window"])))]
    Set {
        /// The policy's name (give it with --key and a limit, or give -f instead)
        #[arg(required_unless_present = "file", requires_all = ["key", "limit"])]
        name: Option<Name>,
        /// What each counter is kept per: client_ip, route or header:<name>
        #[arg(long, value_name = "KEY", requires = "name")]
        key: Option<RateLimitKey>,
        /// A token bucket holding CAPACITY tokens (the largest burst)
        #[arg(long, value_name = "CAPACITY", requires_all = ["name", "refill"])]
        token_bucket: Option<u32>,
        /// Tokens added per second to the token bucket (the sustained rate)
        #[arg(long, value_name = "PER_SECOND", requires = "token_bucket")]
        refill: Option<f64>,
        /// A sliding window allowing LIMIT requests per --window
        #[arg(long, value_name = "LIMIT", requires_all = ["name", "window"])]
        sliding_window: Option<u32>,
        /// The sliding window's length, e.g. 1s or 1m
        #[arg(
            long,
            value_name = "DURATION",
            value_parser = parse_window,
            requires = "sliding_window"
        )]
        window: Option<Duration>,
        /// Read the policy from FILE (TOML, or JSON)
        #[arg(
            short,
            long = "file",
            value_name = "FILE",
            conflicts_with_all = ["name", "key", "limit", "refill", "window"]
        )]
        file: Option<PathBuf>,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Delete a policy (no listener or route may still use it).
    ///
    /// Example: fulcrumctl ratelimit delete per-client
    Delete {
        /// The policy.
        name: Name,
        #[command(flatten)]
        write: WriteArgs,
    },
}

fn parse_window(text: &str) -> Result<Duration, String> {
    fulcrum_model::duration::parse(text)
}

/// The policy that `set NAME --key ... --token-bucket ... --refill ...` (or
/// `--sliding-window ... --window ...`) describes.
fn policy_from_flags(
    name: Option<Name>,
    key: Option<RateLimitKey>,
    bucket: (Option<u32>, Option<f64>),
    window: (Option<u32>, Option<Duration>),
) -> anyhow::Result<RateLimitPolicy> {
    let limit = match (bucket, window) {
        ((Some(capacity), Some(refill_per_second)), (None, None)) => {
            RateLimit::TokenBucket { capacity, refill_per_second }
        }
        ((None, None), (Some(limit), Some(window))) => RateLimit::SlidingWindow { limit, window },
        // clap's rules rule these out; said again in case they change.
        _ => {
            return Err(Failure::new(
                Exit::Usage,
                "give --token-bucket CAPACITY --refill PER_SECOND, or --sliding-window LIMIT \
                 --window DURATION",
            )
            .into());
        }
    };
    match (name, key) {
        (Some(name), Some(key)) => Ok(RateLimitPolicy { name, key, limit }),
        _ => Err(Failure::new(Exit::Usage, "give the policy's NAME and --key, or -f FILE").into()),
    }
}

/// Runs a `ratelimit` command.
pub(crate) async fn ratelimit(ctx: &Context, command: RateLimitCommand) -> anyhow::Result<()> {
    match command {
        RateLimitCommand::List => {
            let config = ctx.config().await?;
            if ctx.json {
                return output::print_json(&config.spec.rate_limits);
            }
            let mut table = Table::new(&["NAME", "KEY", "LIMIT"]);
            for policy in &config.spec.rate_limits {
                table.row(vec![
                    policy.name.to_string(),
                    policy.key.to_string(),
                    limit_text(&policy.limit),
                ]);
            }
            table.print()?;
            Ok(())
        }
        RateLimitCommand::Set {
            name,
            key,
            token_bucket,
            refill,
            sliding_window,
            window,
            file,
            write,
        } => {
            let policy = match file {
                Some(path) => read_object(&path, "rate-limit policy")?,
                None => {
                    policy_from_flags(name, key, (token_bucket, refill), (sliding_window, window))?
                }
            };
            let path = format!("/v1/ratelimits/{}", segment(policy.name.as_str()));
            let done = format!("rate limit {} saved: {}", policy.name, limit_text(&policy.limit));
            ctx.write(Method::PUT, &path, Body::json(&policy)?, &done, write).await
        }
        RateLimitCommand::Delete { name, write } => {
            let path = format!("/v1/ratelimits/{}", segment(name.as_str()));
            let done = format!("rate limit {name} deleted");
            ctx.write(Method::DELETE, &path, Body::Empty, &done, write).await
        }
    }
}

/// A limit in words: `token bucket: burst 200, 100/s`.
fn limit_text(limit: &RateLimit) -> String {
    match limit {
        RateLimit::TokenBucket { capacity, refill_per_second } => {
            format!("token bucket: burst {capacity}, {refill_per_second}/s")
        }
        RateLimit::SlidingWindow { limit, window } => {
            format!("sliding window: {limit} per {}", output::duration(*window))
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Line {
        #[command(subcommand)]
        command: RateLimitCommand,
    }

    /// The policy `fulcrumctl ratelimit set ARGS` sends.
    fn parse_set(args: &[&str]) -> Result<RateLimitPolicy, String> {
        let line = ["ratelimit", "set"].iter().chain(args);
        let parsed = Line::try_parse_from(line).map_err(|e| e.to_string())?;
        let RateLimitCommand::Set {
            name,
            key,
            token_bucket,
            refill,
            sliding_window,
            window,
            file,
            ..
        } = parsed.command
        else {
            unreachable!("parsed `set`");
        };
        assert!(file.is_none());
        policy_from_flags(name, key, (token_bucket, refill), (sliding_window, window))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_token_bucket_from_flags() {
        let policy = parse_set(&[
            "per-client",
            "--key",
            "client_ip",
            "--token-bucket",
            "200",
            "--refill",
            "100",
        ]);
        assert_eq!(
            policy.unwrap(),
            RateLimitPolicy {
                name: "per-client".parse().unwrap(),
                key: RateLimitKey::ClientIp,
                limit: RateLimit::TokenBucket { capacity: 200, refill_per_second: 100.0 },
            }
        );
    }

    #[test]
    fn a_sliding_window_from_flags() {
        let policy = parse_set(&[
            "api-total",
            "--key",
            "route",
            "--sliding-window",
            "1000",
            "--window",
            "1s",
        ]);
        assert_eq!(
            policy.unwrap(),
            RateLimitPolicy {
                name: "api-total".parse().unwrap(),
                key: RateLimitKey::Route,
                limit: RateLimit::SlidingWindow { limit: 1000, window: Duration::from_secs(1) },
            }
        );
        let by_header = parse_set(&[
            "k",
            "--key",
            "header:X-Api-Key",
            "--sliding-window",
            "5",
            "--window",
            "1m",
        ]);
        assert_eq!(by_header.unwrap().key, RateLimitKey::Header("x-api-key".into()));
    }

    #[test]
    fn incomplete_or_mixed_flags_are_refused() {
        for (args, complaint) in [
            (&["p", "--key", "client_ip", "--token-bucket", "200"][..], "--refill"),
            (&["p", "--key", "client_ip", "--sliding-window", "5"][..], "--window"),
            (&["p", "--token-bucket", "1", "--refill", "1"][..], "--key"),
            (&["p", "--key", "client_ip"][..], "--token-bucket"),
            (
                &[
                    "p",
                    "--key",
                    "route",
                    "--token-bucket",
                    "1",
                    "--refill",
                    "1",
                    "--sliding-window",
                    "1",
                    "--window",
                    "1s",
                ][..],
                "cannot be used with",
            ),
            (&["p", "--key", "nobody", "--token-bucket", "1", "--refill", "1"][..], "invalid key"),
            (
                &["p", "--key", "route", "--sliding-window", "1", "--window", "soon"][..],
                "invalid duration",
            ),
            (&["-f", "x.toml", "--key", "route"][..], "cannot be used with"),
        ] {
            let error = parse_set(args).unwrap_err();
            assert!(error.contains(complaint), "{args:?}: {error}");
        }
    }

    #[test]
    fn a_file_alone_is_enough() {
        let parsed = Line::try_parse_from(["ratelimit", "set", "-f", "policy.toml"]).unwrap();
        assert!(matches!(parsed.command, RateLimitCommand::Set { file: Some(_), name: None, .. }));
    }
}
