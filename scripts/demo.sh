#!/usr/bin/env bash
# A first look at Fulcrum on one Linux host (needs root): builds the lab, runs fulcrumd on three
# load-balancer hosts (VRRP for the VIP 198.18.0.100, and an L4 listener on the VIP's port 80
# balancing over two backends), probes the VIP from the client host, stops the master and shows
# the backup taking over, then tears everything down again.
#   scripts/demo.sh          run the demo and clean up
#   scripts/demo.sh --keep   leave the lab up to explore; remove it with `fulcrum-lab down`
#
# The Raft store and fulcrumctl join the demo as they land (see ARCHITECTURE.md); today every
# node serves the same cluster file.
set -euo pipefail
cd "$(dirname "$0")/.."

keep=false
case "${1:-}" in
    --keep) keep=true ;;
    "") ;;
    *) echo "usage: scripts/demo.sh [--keep]" >&2; exit 2 ;;
esac
if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/demo.sh: the lab creates network namespaces and needs root." >&2
    echo "Run it as root, e.g.: sudo -E env \"PATH=\$PATH\" scripts/demo.sh" >&2
    exit 1
fi
command -v ip >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq iproute2 >/dev/null; }

step() { printf '\n==> %s\n' "$*"; }
step "building fulcrum-lab and fulcrumd"
cargo build --release --locked -p fulcrum-lab -p fulcrum-node
lab=target/release/fulcrum-lab
vip=198.18.0.100

prefix="demo$(printf '%04x' $((RANDOM % 65536)))"
cleanup() {
    if [ "$keep" = false ]; then
        step "tearing down lab $prefix"
        "$lab" down --prefix "$prefix" || echo "teardown failed: run '$lab down --all'" >&2
    fi
}
trap cleanup EXIT

step "bringing up lab $prefix: 3 load balancers running fulcrumd (VRRP priorities 150, 140, 130; $vip:80 -> be1, be2), 2 backends, 1 client"
"$lab" up --load-balancers 3 --backends 2 --prefix "$prefix" --vrrp
probe() { ip netns exec "$prefix-client" "$lab" probe "http://$vip:80/" --interval 10ms --timeout 100ms --text "$@"; }

sleep 1
step "lb1, the VRRP master, balances the VIP $vip round robin over be1 and be2"
probe --duration 1s

step "stopping lb1's fulcrumd (SIGTERM) while probing for 2 s: it advertises priority 0, lb2 takes over the VIP and keeps balancing"
master=$("$lab" status --prefix "$prefix" | awk '/process fulcrumd on lb1 pid/ {print $6}')
probe --duration 2s &
prober=$!
sleep 0.5
kill -TERM "$master"
wait "$prober"

for host in lb1 lb2 lb3; do
    printf '%s holds: %s\n' "$host" "$(ip netns exec "$prefix-$host" ip -o -4 addr show dev eth0 | awk '{print $4}' | tr '\n' ' ')"
done

if [ "$keep" = true ]; then
    step "the lab stays up; try:"
    echo "  ip netns exec $prefix-client $lab probe http://$vip:80/ --duration 1s --text"
    echo "  ip netns exec $prefix-lb2 curl -s http://198.18.0.12:9100/metrics | grep fulcrum_backend"
    echo "  ip netns exec $prefix-client $lab probe http://198.18.0.21:8080/slow?secs=2 --duration 3s --text"
    echo "  $lab status --prefix $prefix"
    echo "  $lab down --prefix $prefix"
fi
