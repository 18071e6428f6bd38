//! The cluster itself: `status`, `vip status`, `failover` and `member ...`.

use std::io::{self, Write};

use clap::Subcommand;
#[cfg(test)]
use fulcrum_model::api::LeaseView;
use fulcrum_model::api::{
    AddMember, ClusterStatus, Failover, FailoverDone, Members, NodeDrain, VipOwner,
};
use hyper::Method;

use super::Context;
use crate::client::Body;
use crate::output::{self, Table};

/// `vip ...`
#[derive(Subcommand, Debug)]
pub(crate) enum VipCommand {
    /// Show who holds each virtual IP, and every node's virtual routers.
    ///
    /// A VRID with no master is electing one; one with two holders (nodes with its VIPs on
    /// their interface) is a split brain. With the quorum fence, LEASE shows the holder's
    /// epoch and how long its lease runs yet.
    ///
    /// Example: fulcrumctl vip status
    Status,
}

/// `member ...`
#[derive(Subcommand, Debug)]
pub(crate) enum MemberCommand {
    /// List the Raft members: voters and learners.
    ///
    /// Example: fulcrumctl member list
    List,
    /// Add a node as a learner: it receives the log but does not vote until promoted.
    ///
    /// Example: fulcrumctl member add 4 198.18.0.14:7200
    Add {
        /// The new node's id (from its node file).
        id: u64,
        /// Its Raft RPC address, host:port.
        raft_address: String,
    },
    /// Make a learner a voter, once it has caught up.
    ///
    /// Example: fulcrumctl member promote 4
    Promote {
        /// The node's id.
        id: u64,
    },
    /// Remove a node from the cluster.
    ///
    /// Example: fulcrumctl member remove 4
    Remove {
        /// The node's id.
        id: u64,
    },
}

/// A node's BGP column: how many of its VIPs it announces, its sessions established,
/// whether an operator drained it, with flow steering the members it shares flows with, and
/// the routes its sessions sent the routers.
fn bgp_summary(bgp: &fulcrum_model::api::BgpStatus) -> String {
    let established = bgp.sessions.iter().filter(|s| s.state.ends_with("Established")).count();
    let mut summary = format!(
        "announcing {}/{}, sessions {established}/{} up",
        bgp.announced.len(),
        bgp.vips.len(),
        bgp.sessions.len()
    );
    if bgp.drained {
        summary.push_str(", drained");
    }
    if !bgp.flow_members.is_empty() {
        let members: Vec<String> = bgp
            .flow_members
            .iter()
            .map(|m| match m.standing.as_str() {
                "announcing" => m.node.to_string(),
                _ => format!("{} (draining)", m.node),
            })
            .collect();
        summary.push_str(&format!(", flows shared with {}", members.join(" ")));
    }
    // What the routers hold from this node, as far as it can tell: the routes it sent them.
    let sent: u32 = bgp.sessions.iter().map(|s| s.routes_sent).sum();
    summary.push_str(&format!(", routes sent {sent}"));
    summary
}

/// `status`: every node, the VIP owners, and pool health per node.
pub(crate) async fn status(ctx: &Context) -> anyhow::Result<()> {
    let status: ClusterStatus = ctx.client.get("/v1/status").await?;
    if ctx.json {
        return output::print_json(&status);
    }
    let leader = status.leader.map_or_else(|| "none known".to_owned(), |id| format!("node {id}"));
    writeln!(
        io::stdout(),
        "leader: {leader}, term {}, {} members",
        status.term,
        status.members.members.len()
    )?;
    writeln!(io::stdout())?;

    let bgp = status.nodes.iter().any(|r| r.status.as_ref().is_some_and(|s| s.bgp.is_some()));
    let mut header = vec!["NODE", "ADDRESS", "ROLE", "LEADER", "TERM", "REVISION", "VRRP"];
    if bgp {
        header.push("BGP");
    }
    let mut nodes = Table::new(&header);
    for report in &status.nodes {
        let address = status
            .members
            .members
            .iter()
            .find(|m| m.id == report.id)
            .map_or_else(|| "-".to_owned(), |m| m.address.clone());
        let mut row = vec![report.id.to_string(), address];
        match &report.status {
            Some(node) => {
                let role = if node.draining {
                    format!("{} (draining)", node.role)
                } else {
                    node.role.clone()
                };
                let vrrp: Vec<String> =
                    node.vrrp.iter().map(|v| format!("vrid {} {}", v.vrid, v.state)).collect();
                row.extend([
                    role,
                    node.leader.map_or_else(|| "-".to_owned(), |id| id.to_string()),
                    node.term.to_string(),
                    node.revision.to_string(),
                    if vrrp.is_empty() { "-".to_owned() } else { vrrp.join(", ") },
                ]);
                if bgp {
                    row.push(node.bgp.as_ref().map_or_else(|| "-".to_owned(), bgp_summary));
                }
            }
            None => row.push(no_answer(report.error.as_deref())),
        }
        nodes.row(row);
    }
    nodes.print()?;

    if !status.vips.is_empty() {
        writeln!(io::stdout())?;
        vip_owners(&status.vips).print()?;
    }

    let mut rows = Vec::new();
    for report in &status.nodes {
        let Some(node) = &report.status else { continue };
        for pool in &node.pools {
            let backends = &pool.backends;
            rows.push(vec![
                pool.name.clone(),
                report.id.to_string(),
                backends.len().to_string(),
                output::tally(
                    backends.iter().map(|b| b.health.as_str()),
                    &["up", "down", "unchecked"],
                ),
                output::tally(
                    backends.iter().map(|b| b.admin.as_str()),
                    &["active", "draining", "disabled", "removed"],
                ),
                backends.iter().map(|b| b.active).sum::<u64>().to_string(),
            ]);
        }
    }
    if !rows.is_empty() {
        // By pool, so one pool's nodes stand together (stable: nodes stay in order).
        rows.sort_by(|a, b| a[0].cmp(&b[0]));
        let mut pools = Table::new(&["POOL", "NODE", "BACKENDS", "HEALTH", "ADMIN", "ACTIVE"]);
        for row in rows {
            pools.row(row);
        }
        writeln!(io::stdout())?;
        pools.print()?;
    }
    Ok(())
}

/// `vip status`.
pub(crate) async fn vip(ctx: &Context, command: VipCommand) -> anyhow::Result<()> {
    let VipCommand::Status = command;
    let status: ClusterStatus = ctx.client.get("/v1/status").await?;
    if ctx.json {
        let routers: Vec<serde_json::Value> = status
            .nodes
            .iter()
            .map(|r| {
                let vrrp = r.status.as_ref().map(|s| &s.vrrp);
                serde_json::json!({ "id": r.id, "vrrp": vrrp, "error": r.error })
            })
            .collect();
        return output::print_json(&serde_json::json!({ "vips": status.vips, "nodes": routers }));
    }
    vip_owners(&status.vips).print()?;
    writeln!(io::stdout())?;
    let mut routers = Table::new(&["NODE", "VRID", "INTERFACE", "STATE", "PRIORITY"]);
    for report in &status.nodes {
        match &report.status {
            Some(node) => {
                for router in &node.vrrp {
                    routers.row(vec![
                        report.id.to_string(),
                        router.vrid.to_string(),
                        router.interface.clone(),
                        router.state.clone(),
                        router.priority.to_string(),
                    ]);
                }
            }
            None => routers.row(vec![report.id.to_string(), no_answer(report.error.as_deref())]),
        }
    }
    routers.print()?;
    Ok(())
}

/// `failover --vrid N --to NODE` or `--reset`.
pub(crate) async fn failover(ctx: &Context, vrid: u8, to: Option<u64>) -> anyhow::Result<()> {
    let path = format!("/v1/vips/{vrid}/failover");
    let done: FailoverDone =
        ctx.client.write(Method::POST, &path, Body::json(&Failover { to })?).await?;
    if ctx.json {
        return output::print_json(&done);
    }
    let master = done
        .master
        .map_or_else(|| "no master seen yet".to_owned(), |id| format!("node {id} is master"));
    match to {
        Some(node) if done.master != Some(node) => writeln!(
            io::stdout(),
            "vrid {vrid}: moving to node {node} requested, but {master}; check `fulcrumctl vip \
             status`"
        ),
        Some(_) => writeln!(io::stdout(), "vrid {vrid}: moved; {master}"),
        None => {
            writeln!(io::stdout(), "vrid {vrid}: earlier moves lifted, priorities decide; {master}")
        }
    }?;
    Ok(())
}

/// `drain NODE [--lift]`.
pub(crate) async fn drain(ctx: &Context, node: u64, drain: bool) -> anyhow::Result<()> {
    let path = format!("/v1/nodes/{node}/drain");
    let done: NodeDrain =
        ctx.client.write(Method::POST, &path, Body::json(&NodeDrain { drain })?).await?;
    if ctx.json {
        return output::print_json(&done);
    }
    match done.drain {
        true => writeln!(
            io::stdout(),
            "node {node}: BGP VIPs withdrawn; it serves the connections it holds"
        ),
        false => writeln!(io::stdout(), "node {node}: BGP VIPs announced again"),
    }?;
    Ok(())
}

/// Runs a `member` command.
pub(crate) async fn member(ctx: &Context, command: MemberCommand) -> anyhow::Result<()> {
    let (members, done): (Members, String) = match command {
        MemberCommand::List => (ctx.client.get("/v1/members").await?, String::new()),
        MemberCommand::Add { id, raft_address } => {
            let body = Body::json(&AddMember { id, address: raft_address.clone() })?;
            let members = ctx.client.write(Method::POST, "/v1/members", body).await?;
            (members, format!("node {id} added as a learner at {raft_address}"))
        }
        MemberCommand::Promote { id } => {
            let path = format!("/v1/members/{id}/promote");
            (
                ctx.client.write(Method::POST, &path, Body::Empty).await?,
                format!("node {id} is a voter"),
            )
        }
        MemberCommand::Remove { id } => {
            let path = format!("/v1/members/{id}");
            (
                ctx.client.write(Method::DELETE, &path, Body::Empty).await?,
                format!("node {id} removed"),
            )
        }
    };
    if ctx.json {
        return output::print_json(&members);
    }
    if !done.is_empty() {
        writeln!(io::stdout(), "{done}")?;
        writeln!(io::stdout())?;
    }
    let mut table = Table::new(&["ID", "ADDRESS", "ROLE"]);
    for member in &members.members {
        let role = if member.voter { "voter" } else { "learner" };
        table.row(vec![member.id.to_string(), member.address.clone(), role.to_owned()]);
    }
    table.print()?;
    Ok(())
}

/// Who holds each VRID, a split brain or an election said in words: the VRRP masters, the
/// nodes with the VIPs on their interface, and the holder's quorum lease.
fn vip_owners(vips: &[VipOwner]) -> Table {
    let mut table = Table::new(&["VRID", "VIPS", "MASTER", "HOLDER", "LEASE"]);
    let nodes = |ids: &[u64]| ids.iter().map(|id| id.to_string()).collect::<Vec<_>>().join(", ");
    for owner in vips {
        let addresses: Vec<String> = owner.vips.iter().map(|a| a.to_string()).collect();
        let master = match owner.masters.as_slice() {
            [] => "none (election under way?)".to_owned(),
            [one] => format!("node {one}"),
            many => format!("nodes {}", nodes(many)),
        };
        let holder = match owner.holders.as_slice() {
            [] => "none".to_owned(),
            [one] => format!("node {one}"),
            many => format!("SPLIT BRAIN: nodes {}", nodes(many)),
        };
        let lease = owner.lease.as_ref().map_or("-".to_owned(), |lease| {
            format!("epoch {}.{}, {} ms left", lease.epoch.0, lease.epoch.1, lease.left_ms)
        });
        table.row(vec![owner.vrid.to_string(), addresses.join(", "), master, holder, lease]);
    }
    table
}

fn no_answer(error: Option<&str>) -> String {
    format!("no answer: {}", error.unwrap_or("no reason given"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_bgp_column_says_drained_and_who_shares_the_flows() {
        use fulcrum_model::api::{BgpSession, BgpStatus, FlowMemberStatus};
        let member = |node, standing: &str| FlowMemberStatus {
            node,
            standing: standing.into(),
            handed_packets: 0,
        };
        let bgp = BgpStatus {
            announced: vec![],
            vips: vec!["198.18.0.200".parse().unwrap()],
            sessions: vec![BgpSession {
                neighbor: "198.18.0.254".parse().unwrap(),
                state: "up Established".into(),
                routes_sent: 0,
            }],
            drained: true,
            flow_members: vec![member(1, "announcing"), member(2, "draining")],
        };
        assert_eq!(
            super::bgp_summary(&bgp),
            "announcing 0/1, sessions 1/1 up, drained, flows shared with 1 2 (draining), routes sent 0"
        );
    }

    use super::*;

    #[test]
    fn vip_owners_show_elections_and_split_brains() {
        let owner = |vrid, masters: &[u64], holders: &[u64]| VipOwner {
            vrid,
            vips: vec!["198.18.0.100".parse().unwrap()],
            masters: masters.to_vec(),
            holders: holders.to_vec(),
            lease: (holders.len() == 1).then_some(LeaseView { epoch: (3, 1), left_ms: 540 }),
        };
        let table = vip_owners(&[
            owner(51, &[1], &[1]),
            owner(52, &[], &[]),
            owner(53, &[1, 2], &[1]),
            owner(54, &[1, 2], &[1, 2]),
        ]);
        assert_eq!(
            table.render(),
            "VRID  VIPS          MASTER                      HOLDER                   LEASE\n\
             51    198.18.0.100  node 1                      node 1                   epoch 3.1, 540 ms left\n\
             52    198.18.0.100  none (election under way?)  none                     -\n\
             53    198.18.0.100  nodes 1, 2                  node 1                   epoch 3.1, 540 ms left\n\
             54    198.18.0.100  nodes 1, 2                  SPLIT BRAIN: nodes 1, 2  -\n"
        );
    }
}
