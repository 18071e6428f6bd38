//! ACME certificates: `cert list|show|renew`.

use std::io::{self, Write};
use std::time::{Duration, UNIX_EPOCH};

use clap::Subcommand;
use fulcrum_model::Name;
use fulcrum_model::api::CertificateStatus;
use hyper::Method;

use super::{Context, WriteArgs};
use crate::client::{Body, segment};
use crate::output::{self, Table};

/// `cert ...`
#[derive(Subcommand, Debug)]
pub(crate) enum CertCommand {
    /// List the listeners that get their certificate by ACME: names, expiry, order state.
    ///
    /// Example: fulcrumctl cert list
    List,
    /// Show one listener's certificate: validity, the order in progress or the last
    /// failure, and the chain (PEM).
    ///
    /// Example: fulcrumctl cert show public-https
    Show {
        /// The https listener.
        listener: Name,
    },
    /// Ask for a new certificate now (the Raft leader orders it; the current one keeps
    /// serving until the new one is issued).
    ///
    /// Example: fulcrumctl cert renew public-https
    Renew {
        /// The https listener.
        listener: Name,
        #[command(flatten)]
        write: WriteArgs,
    },
}

/// Runs a `cert` command.
pub(crate) async fn cert(ctx: &Context, command: CertCommand) -> anyhow::Result<()> {
    match command {
        CertCommand::List => {
            let statuses: Vec<CertificateStatus> = ctx.client.get("/v1/certificates").await?;
            if ctx.json {
                return output::print_json(&statuses);
            }
            let mut table = Table::new(&["LISTENER", "NAMES", "NOT AFTER", "RENEW AT", "STATE"]);
            for status in &statuses {
                let issued = status.issued.as_ref();
                table.row(vec![
                    status.listener.clone(),
                    status.hostnames.join(","),
                    issued.map_or_else(|| "-".into(), |i| time(i.not_after)),
                    issued.map_or_else(|| "-".into(), |i| time(i.renew_at)),
                    state(status),
                ]);
            }
            table.print()?;
            Ok(())
        }
        CertCommand::Show { listener } => {
            let path = format!("/v1/certificates/{}", segment(listener.as_str()));
            let status: CertificateStatus = ctx.client.get(&path).await?;
            if ctx.json {
                return output::print_json(&status);
            }
            let mut out = io::stdout().lock();
            writeln!(out, "listener:   {}", status.listener)?;
            writeln!(out, "directory:  {}", status.directory)?;
            writeln!(out, "challenge:  {}", status.challenge)?;
            writeln!(out, "names:      {}", status.hostnames.join(", "))?;
            writeln!(out, "state:      {}", state(&status))?;
            if let Some(order) = &status.order {
                if let Some(url) = &order.url {
                    writeln!(out, "order:      {url}")?;
                }
                if let Some(error) = &order.last_error {
                    writeln!(out, "last error: {error}")?;
                    writeln!(out, "next try:   {}", time(order.retry_at))?;
                }
            }
            if let Some(issued) = &status.issued {
                writeln!(out, "issued for: {}", issued.hostnames.join(", "))?;
                writeln!(out, "not before: {}", time(issued.not_before))?;
                writeln!(out, "not after:  {}", time(issued.not_after))?;
                writeln!(out, "renew at:   {}", time(issued.renew_at))?;
                write!(out, "{}", issued.chain_pem)?;
            }
            Ok(())
        }
        CertCommand::Renew { listener, write } => {
            let path = format!("/v1/certificates/{}/renew", segment(listener.as_str()));
            let done = format!("renewal of listener {listener}'s certificate requested");
            ctx.write(Method::POST, &path, Body::Empty, &done, write).await
        }
    }
}

/// One word or phrase for where a listener's certificate stands.
fn state(status: &CertificateStatus) -> String {
    match (&status.issued, &status.order) {
        (_, Some(order)) if order.failures > 0 => format!("failing ({} in a row)", order.failures),
        (_, Some(order)) if order.url.is_some() => "ordering".into(),
        (_, Some(order)) if order.renew_requested => "renewal requested".into(),
        (Some(_), _) => "issued".into(),
        (None, _) => "waiting for the leader".into(),
    }
}

fn time(unix: u64) -> String {
    let at = UNIX_EPOCH + Duration::from_secs(unix);
    humantime::format_rfc3339_seconds(at).to_string()
}
