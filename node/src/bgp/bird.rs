//! BIRD 2's configuration for a node's BGP announcements, sans IO: its sessions to the
//! routers (with BFD), and one static protocol per family holding exactly the VIPs announced
//! now, exported to every session with this node as the next hop. A change of the announced
//! set changes only the static protocols, which BIRD reconfigures without touching the
//! sessions. Sessions retry within seconds after an error (BIRD waits a minute by default),
//! since a session that starts before its BFD session is up is closed once.

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::node_file::BgpSection;

/// The BIRD configuration announcing `announced` (a subset of the section's VIPs).
pub fn render(section: &BgpSection, announced: &[IpAddr]) -> String {
    let mut out = String::new();
    let _ =
        writeln!(out, "# Written by fulcrumd from its node file's [bgp]; changes are overwritten.");
    let _ = writeln!(out, "router id {};", section.router_id);
    let _ = writeln!(out, "log stderr {{ warning, error, fatal }};");
    let _ = writeln!(out, "protocol device {{ }}");
    if section.bfd {
        let _ = writeln!(
            out,
            "protocol bfd {{\n  interface \"*\" {{\n    min rx interval {ms} ms;\n    min tx interval {ms} ms;\n    multiplier {multiplier};\n  }};\n}}",
            ms = section.bfd_interval.as_millis(),
            multiplier = section.bfd_multiplier,
        );
    }
    for (protocol, channel, v4) in
        [("fulcrum_vips4", "ipv4", true), ("fulcrum_vips6", "ipv6", false)]
    {
        let _ = writeln!(out, "protocol static {protocol} {{\n  {channel};");
        for vip in announced.iter().filter(|vip| vip.is_ipv4() == v4) {
            let length = if v4 { 32 } else { 128 };
            let _ = writeln!(out, "  route {vip}/{length} blackhole;");
        }
        let _ = writeln!(out, "}}");
    }
    for (index, neighbor) in section.neighbors.iter().enumerate() {
        let (channel, protocol) = match neighbor.address {
            IpAddr::V4(_) => ("ipv4", "fulcrum_vips4"),
            IpAddr::V6(_) => ("ipv6", "fulcrum_vips6"),
        };
        let _ = writeln!(
            out,
            "protocol bgp router{index} {{\n  local as {local};\n  neighbor {address} as {remote};\n  hold time {hold};\n  keepalive time {keepalive};\n  connect delay time 1;\n  connect retry time 2;\n  error wait time 1, 10;{bfd}\n  {channel} {{\n    import none;\n    export where proto = \"{protocol}\";\n    next hop self;\n  }};\n}}",
            local = section.local_as,
            address = neighbor.address,
            remote = neighbor.remote_as,
            hold = section.hold_time.as_secs().max(3),
            keepalive = (section.hold_time.as_secs() / 3).max(1),
            bfd = if section.bfd { "\n  bfd on;" } else { "" },
        );
    }
    out
}

/// The state of each session (`router<index>`) in `birdc show protocols` output: BIRD's
/// protocol state and, when it says one, the BGP state (`up Established`, `start Active`).
pub fn session_states(shown: &str) -> Vec<(usize, String)> {
    shown
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let index = fields.next()?.strip_prefix("router")?.parse().ok()?;
            if fields.next()? != "BGP" {
                return None;
            }
            let _table = fields.next()?;
            let state = fields.next()?.to_owned();
            let _since = fields.next()?;
            let detail: Vec<&str> = fields.collect();
            let state = match detail.first() {
                Some(bgp) => format!("{state} {bgp}"),
                None => state,
            };
            Some((index, state))
        })
        .collect()
}

/// How many routes each session (`router<index>`) has sent its router, from `birdc show
/// protocols all`: the `Routes:` line of its channel (`0 imported, 1 exported, 0 preferred`).
/// A session that is down has no such line and sent none.
pub fn exported_routes(shown: &str) -> Vec<(usize, u32)> {
    let mut exported = Vec::new();
    let mut session: Option<usize> = None;
    for line in shown.lines() {
        if !line.starts_with(' ') {
            // A protocol's first line: `router0    BGP ...`, or another protocol.
            session = line.strip_prefix("router").and_then(|rest| {
                let (index, kind) = rest.split_once(char::is_whitespace)?;
                (kind.trim_start().starts_with("BGP")).then(|| index.parse().ok()).flatten()
            });
            continue;
        }
        let Some(index) = session else { continue };
        let Some(routes) = line.trim_start().strip_prefix("Routes:") else { continue };
        let count = routes
            .split(',')
            .find_map(|part| part.trim().strip_suffix(" exported")?.trim().parse().ok());
        if let Some(count) = count {
            exported.push((index, count));
        }
    }
    exported
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node_file::NodeFile;

    fn section() -> BgpSection {
        let file = NodeFile::parse(
            "node_id = 1\n[bgp]\nlocal_as = 64512\nrouter_id = \"198.18.0.11\"\n\
             vips = [\"198.18.0.200\", \"2001:db8:18::200\"]\n\
             neighbors = [{ address = \"198.18.0.254\", remote_as = 64500 }]\n",
        )
        .unwrap();
        file.bgp.unwrap()
    }

    #[test]
    fn only_the_announced_vips_are_routes_and_every_session_exports_them_with_bfd() {
        let text = render(&section(), &["198.18.0.200".parse().unwrap()]);
        assert!(text.contains("router id 198.18.0.11;"), "{text}");
        assert!(text.contains("  route 198.18.0.200/32 blackhole;"), "{text}");
        assert!(!text.contains("2001:db8:18::200/128"), "{text}");
        assert!(text.contains("neighbor 198.18.0.254 as 64500;"), "{text}");
        assert!(text.contains("local as 64512;"), "{text}");
        assert!(text.contains("bfd on;") && text.contains("min rx interval 100 ms;"), "{text}");
        assert!(text.contains("export where proto = \"fulcrum_vips4\";"), "{text}");
        assert!(text.contains("hold time 9;") && text.contains("keepalive time 3;"), "{text}");
    }

    #[test]
    fn session_states_are_read_from_show_protocols() {
        let shown = "BIRD 2.0.12 ready.\n\
Name       Proto      Table      State  Since         Info\n\
device1    Device     ---        up     01:22:17.802  \n\
fulcrum_vips4 Static     master4    up     01:22:17.802  \n\
router0    BGP        ---        up     01:22:34.908  Established   \n\
router1    BGP        ---        start  01:22:18.663  Idle          Error: BFD session down\n";
        assert_eq!(
            session_states(shown),
            vec![(0, "up Established".to_owned()), (1, "start Idle".to_owned())]
        );
        assert!(session_states("garbage\nrouterx BGP").is_empty());
    }

    #[test]
    fn routes_sent_to_each_router_are_read_from_show_protocols_all() {
        let shown = [
            "BIRD 2.0.12 ready.",
            "Name       Proto      Table      State  Since         Info",
            "fulcrum_vips4 Static     master4    up     01:22:17.802  ",
            "  Channel ipv4",
            "    Routes:         1 imported, 0 exported, 1 preferred",
            "router0    BGP        ---        up     01:22:34.908  Established   ",
            "  BGP state:          Established",
            "    Neighbor address: 198.18.0.254",
            "  Channel ipv4",
            "    State:          UP",
            "    Routes:         0 imported, 1 exported, 0 preferred",
            "router1    BGP        ---        start  04:48:26.489  Active        ",
            "  BGP state:          Active",
            "  Channel ipv4",
            "    State:          DOWN",
        ]
        .join("\n");
        let shown = shown.as_str();
        assert_eq!(exported_routes(shown), vec![(0, 1)]);
        assert!(exported_routes("garbage\n    Routes: 5 exported").is_empty());
    }

    #[test]
    fn nothing_announced_leaves_the_sessions_up_with_empty_static_protocols() {
        let text = render(&section(), &[]);
        assert!(!text.contains("route "), "{text}");
        assert!(text.contains("protocol bgp router0"), "{text}");
        assert!(text.contains("protocol static fulcrum_vips4 {\n  ipv4;\n}"), "{text}");
    }
}
