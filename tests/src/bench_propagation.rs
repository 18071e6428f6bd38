//! The config-propagation benchmark: how long from `fulcrumctl backend add --wait` to the new
//! backend serving traffic on every node of a three-node cluster, over many changes.
//!
//! Each change adds be2 to a pool that holds only be1 (round robin, so a node routing to be2
//! shows it within two requests), through a different node each time, and then removes it
//! again (not timed). For scale, the same run measures a `fulcrumctl status` round trip: the
//! cost of starting the CLI and one admin call.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::bench_raft::percentile;
use crate::cluster::{CtlOutput, Timing, web_cluster_file};
use crate::probe::http_once;
use crate::{HostRole, Lab, LabError, Topology};

const FRONT_PORT: u16 = 80;
/// How long one change may take to show on every node before the run is abandoned.
const SERVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Microseconds of each sample.
#[derive(Debug, Default)]
pub struct Figures {
    /// `fulcrumctl backend add --wait` until it returned (every node applied).
    pub acknowledged_us: Vec<u64>,
    /// The same start until every node had routed a request to the new backend.
    pub serving_us: Vec<u64>,
    /// `fulcrumctl status` round trips.
    pub status_us: Vec<u64>,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn check(output: CtlOutput, what: &str) -> Result<(), LabError> {
    match output.ok() {
        true => Ok(()),
        false => Err(LabError::Invalid(format!("{what} failed: {output:?}"))),
    }
}

/// Runs `changes` timed changes in a fresh lab.
pub fn propagation(lab_binary: &std::path::Path, changes: usize) -> Result<Figures, LabError> {
    let lab = Lab::up(&Topology { load_balancers: 3, backends: 2, prefix: None }, lab_binary)?;
    let lbs = lab.hosts_of(HostRole::LoadBalancer);
    let backends = lab.hosts_of(HostRole::Backend);
    let client = lab.host("client")?;
    let _backends = lab.start_backends()?;
    let _nodes: Vec<_> = lbs
        .iter()
        .map(|lb| lab.start_cluster_node(Timing::Lab, lb, &lbs, &[], &[]))
        .collect::<Result<_, _>>()?;
    let file = lab.lab_file("cluster.toml", &web_cluster_file(FRONT_PORT, &[&backends[0]]))?;
    let all: Vec<_> = lbs.iter().collect();
    check(lab.fulcrumctl(&client, &all, None, &["apply", "-f", &file, "--wait"])?, "apply")?;
    let be2 = backends[1].http_address().to_string();
    let fronts: Vec<SocketAddr> =
        lbs.iter().map(|lb| SocketAddr::from((lb.address, FRONT_PORT))).collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| LabError::Io { what: "start a runtime".into(), source })?;
    let mut figures = Figures::default();
    for change in 0..changes {
        let via = &lbs[change % lbs.len()];
        let started = Instant::now();
        check(
            lab.fulcrumctl(&client, &[via], None, &["backend", "add", "web", &be2, "--wait"])?,
            "backend add",
        )?;
        figures.acknowledged_us.push(micros(started.elapsed()));
        for front in &fronts {
            lab.run_in(&client, || {
                runtime.block_on(until_answered_by(*front, &backends[1].name))
            })??;
        }
        figures.serving_us.push(micros(started.elapsed()));
        check(
            lab.fulcrumctl(&client, &[via], None, &["backend", "remove", "web", &be2, "--wait"])?,
            "backend remove",
        )?;
        let asked = Instant::now();
        check(lab.fulcrumctl(&client, &[via], None, &["status"])?, "status")?;
        figures.status_us.push(micros(asked.elapsed()));
    }
    Ok(figures)
}

/// Requests `front` until `backend` answers one.
async fn until_answered_by(front: SocketAddr, backend: &str) -> Result<(), LabError> {
    let deadline = Instant::now() + SERVE_TIMEOUT;
    loop {
        if http_once(front, "/").await.is_ok_and(|answered| answered == backend) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(LabError::Invalid(format!(
                "{front} did not route to {backend} within {SERVE_TIMEOUT:?}"
            )));
        }
    }
}

/// The figures as a Markdown table.
pub fn report(figures: &Figures) -> String {
    let ms = |us: u64| us as f64 / 1000.0;
    let row = |name: &str, values: &[u64]| {
        format!(
            "| {name} | {} | {:.1} | {:.1} |\n",
            values.len(),
            ms(percentile(values, 50)),
            ms(percentile(values, 99))
        )
    };
    let mut out = String::from(
        "Config propagation, three fulcrumd nodes (each change through the next node)\n\n",
    );
    out.push_str("| measure | samples | p50 ms | p99 ms |\n|---|---|---|---|\n");
    out.push_str(&row(
        "`backend add --wait` returned (all nodes applied)",
        &figures.acknowledged_us,
    ));
    out.push_str(&row("new backend served by every node", &figures.serving_us));
    out.push_str(&row("reference: `fulcrumctl status` round trip", &figures.status_us));
    let ratio = percentile(&figures.serving_us, 50) as f64
        / percentile(&figures.status_us, 50).max(1) as f64;
    out.push_str(&format!(
        "\nserved everywhere at the median after {ratio:.1} status round trips\n"
    ));
    out
}
