//! The failover benchmark: the outage a client sees when the VIP's master crashes or steps
//! down, for `fulcrumd` and for keepalived measured the same way in the same lab and run.
//!
//! Two load balancers share one VIP (priorities 150 and 120), each answering HTTP on it with
//! its name; the client probes the VIP every 5 ms on new connections while the master is taken
//! out. Each configuration runs over IPv4 and over IPv6 (VRRP's IPv6 router, a VIP announced
//! with Neighbor Advertisements). The outage is the prober's longest gap between successes. It prints figures and
//! ratios; it never fails on them.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::probe::{ProbeArgs, ProbeTarget};
use crate::routers::{Implementation, Instance};
use crate::topology::{BACKEND_HTTP_PORT, HostRole, Lab, LabError, Topology, vip, vip_v6};

/// How the master leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Departure {
    /// SIGKILL and off the link: the backup waits out Master_Down_Interval.
    Crash,
    /// SIGTERM: the master advertises priority 0 and the backup takes over after Skew_Time.
    Graceful,
}

impl std::fmt::Display for Departure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Departure::Crash => "crash",
            Departure::Graceful => "graceful",
        })
    }
}

/// The outages of one configuration, one per run, in milliseconds.
#[derive(Clone, Debug)]
pub struct Series {
    /// The router measured.
    pub implementation: Implementation,
    /// The VIP's family.
    pub family: fulcrum_vrrp::Family,
    /// Its advertisement interval.
    pub interval: Duration,
    /// How the master left.
    pub departure: Departure,
    /// The client-observed outage of each run.
    pub outages_ms: Vec<u64>,
}

impl Series {
    /// Median, min and max, or `None` without runs.
    pub fn summary(&self) -> Option<(u64, u64, u64)> {
        let mut sorted = self.outages_ms.clone();
        sorted.sort_unstable();
        let median = *sorted.get(sorted.len() / 2)?;
        Some((median, *sorted.first()?, *sorted.last()?))
    }
}

/// Runs every configuration `runs` times in one fresh lab and returns the series, in the order
/// interval, family, departure, implementation.
pub fn failover(
    lab_binary: &std::path::Path,
    intervals: &[Duration],
    runs: usize,
) -> Result<Vec<Series>, LabError> {
    let lab = Lab::up(&Topology { load_balancers: 2, backends: 0, prefix: None }, lab_binary)?;
    let lbs = lab.hosts_of(HostRole::LoadBalancer);
    let vips: [IpAddr; 2] = [vip(1).into(), vip_v6(1).into()];
    let mut responders = Vec::new();
    for lb in &lbs {
        for the_vip in vips {
            let address = SocketAddr::from((the_vip, BACKEND_HTTP_PORT));
            responders.push(lab.start_vip_responder(lb, address)?);
        }
    }
    let mut all = Vec::new();
    for &interval in intervals {
        for the_vip in vips {
            let family = fulcrum_vrrp::Family::of(the_vip);
            for departure in [Departure::Crash, Departure::Graceful] {
                for implementation in [Implementation::Fulcrumd, Implementation::Keepalived] {
                    let mut series = Series {
                        implementation,
                        family,
                        interval,
                        departure,
                        outages_ms: Vec::new(),
                    };
                    for run in 1..=runs {
                        let outage = one_run(&lab, implementation, interval, departure, the_vip)?;
                        eprintln!(
                            "{implementation} {family} {departure} at {interval:?}: run {run}/{runs}: {outage} ms"
                        );
                        series.outages_ms.push(outage);
                    }
                    all.push(series);
                }
            }
        }
    }
    lab.down()?;
    Ok(all)
}

fn one_run(
    lab: &Lab,
    implementation: Implementation,
    interval: Duration,
    departure: Departure,
    the_vip: IpAddr,
) -> Result<u64, LabError> {
    let lbs = lab.hosts_of(HostRole::LoadBalancer);
    let (master_host, backup_host) = (&lbs[0], &lbs[1]);
    let client = lab.host("client")?;
    let settle = interval * 5 + Duration::from_secs(5);
    let mut backup = lab.start_router(
        backup_host,
        implementation,
        &[Instance::new(51, 120, interval, &[the_vip])],
    )?;
    let mut master = lab.start_router(
        master_host,
        implementation,
        &[Instance::new(51, 150, interval, &[the_vip])],
    )?;
    lab.wait_for_holder(&lbs, master_host, the_vip, settle)?;

    let target = ProbeTarget::Http {
        address: SocketAddr::from((the_vip, BACKEND_HTTP_PORT)),
        path: "/".into(),
    };
    // Long enough for a crash at the longest interval: Master_Down_Interval is under 4
    // intervals.
    let mut args =
        ProbeArgs::new(target, Duration::from_millis(5), interval * 6 + Duration::from_secs(1));
    args.timeout = Duration::from_millis(50);
    let probe = lab.start_probe(&client, &args)?;
    std::thread::sleep(Duration::from_millis(300));
    match departure {
        Departure::Crash => lab.crash(master_host, &mut master)?,
        Departure::Graceful => master.signal(nix::sys::signal::Signal::SIGTERM)?,
    }
    lab.wait_for_holder(&lbs, backup_host, the_vip, settle)?;
    let report = probe.finish()?;
    if !report.answers.contains_key(&backup_host.name) {
        return Err(LabError::Invalid(format!("the backup never answered: {report}")));
    }

    // Back to the start: no router, no VIP, every host on the link.
    master.stop()?;
    backup.stop()?;
    lab.reboot(master_host, &[the_vip])?;
    Ok(report.longest_outage_ms)
}

/// The figures as a table, with fulcrumd's median over keepalived's for each configuration.
pub fn report(series: &[Series]) -> String {
    let mut text = String::from(
        "| interval | family | departure | router | median ms | min ms | max ms | runs | median vs keepalived |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for one in series {
        let Some((median, min, max)) = one.summary() else { continue };
        let reference = series
            .iter()
            .find(|other| {
                other.implementation == Implementation::Keepalived
                    && other.family == one.family
                    && other.interval == one.interval
                    && other.departure == one.departure
            })
            .and_then(Series::summary)
            .map(|(reference, _, _)| reference);
        let ratio = match reference {
            Some(reference) if reference > 0 => format!("{:.2}", median as f64 / reference as f64),
            _ => "-".into(),
        };
        let _ = writeln!(
            text,
            "| {:?} | {} | {} | {} | {median} | {min} | {max} | {} | {ratio} |",
            one.interval,
            one.family,
            one.departure,
            one.implementation,
            one.outages_ms.len()
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(implementation: Implementation, outages_ms: Vec<u64>) -> Series {
        Series {
            implementation,
            family: fulcrum_vrrp::Family::Ipv6,
            interval: Duration::from_secs(1),
            departure: Departure::Crash,
            outages_ms,
        }
    }

    #[test]
    fn summary_is_median_min_max() {
        let one = series(Implementation::Fulcrumd, vec![30, 10, 50, 20, 40]);
        assert_eq!(one.summary(), Some((30, 10, 50)));
        assert_eq!(series(Implementation::Fulcrumd, vec![]).summary(), None);
    }

    #[test]
    fn report_gives_the_ratio_to_keepalived() {
        let table = report(&[
            series(Implementation::Fulcrumd, vec![300, 310, 320]),
            series(Implementation::Keepalived, vec![600, 610, 620]),
        ]);
        assert!(
            table.contains("| 1s | IPv6 | crash | fulcrumd | 310 | 300 | 320 | 3 | 0.51 |"),
            "{table}"
        );
        assert!(
            table.contains("| 1s | IPv6 | crash | keepalived | 610 | 600 | 620 | 3 | 1.00 |"),
            "{table}"
        );
    }
}
