#!/usr/bin/env bash
# A first look at Fulcrum on one Linux host (needs root): builds the lab, runs fulcrumd's VRRP
# on three load-balancer hosts for the VIP 198.18.0.100, probes the VIP from the client host,
# stops the master and shows the backup taking over, then tears everything down again.
#   scripts/demo.sh          run the demo and clean up
#   scripts/demo.sh --keep   leave the lab up to explore; remove it with `fulcrum-lab down`
#
# The data plane, the Raft store and fulcrumctl join the demo as they land (see
# ARCHITECTURE.md); today each load balancer answers on the VIP with its own name.
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

step "bringing up lab $prefix: 3 load balancers running fulcrumd (VRRP priorities 150, 140, 130), 2 backends, 1 client"
"$lab" up --load-balancers 3 --backends 2 --prefix "$prefix" --vrrp
probe() { ip netns exec "$prefix-client" "$lab" probe "http://$vip:8080/" --interval 10ms --timeout 100ms --text "$@"; }

sleep 1
step "the VIP $vip answers from its VRRP master, lb1"
probe --duration 1s

step "stopping lb1's fulcrumd (SIGTERM) while probing for 2 s: it advertises priority 0 and lb2 takes over"
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
    echo "  ip netns exec $prefix-client $lab probe http://$vip:8080/ --duration 1s --text"
    echo "  ip netns exec $prefix-client $lab probe http://198.18.0.21:8080/slow?secs=2 --duration 3s --text"
    echo "  $lab status --prefix $prefix"
    echo "  $lab down --prefix $prefix"
fi
