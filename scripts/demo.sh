#!/usr/bin/env bash
# A first look at Fulcrum on one Linux host (needs root): builds the lab, starts two backends,
# probes them from the client host, and tears everything down again.
#   scripts/demo.sh          run the demo and clean up
#   scripts/demo.sh --keep   leave the lab up to explore; remove it with `fulcrum-lab down`
#
# Today this shows the lab that Fulcrum's cluster will run in: three load-balancer hosts, two
# backends and a client on one bridge, all inside network namespaces. fulcrumd joins it as
# the node, VRRP and data plane land (see ARCHITECTURE.md).
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
step "building fulcrum-lab"
cargo build --release --locked -p fulcrum-lab
lab=target/release/fulcrum-lab

prefix="demo$(printf '%04x' $((RANDOM % 65536)))"
cleanup() {
    if [ "$keep" = false ]; then
        step "tearing down lab $prefix"
        "$lab" down --prefix "$prefix" || echo "teardown failed: run '$lab down --all'" >&2
    fi
}
trap cleanup EXIT

step "bringing up lab $prefix: 3 load balancers, 2 backends, 1 client"
"$lab" up --load-balancers 3 --backends 2 --prefix "$prefix"

for backend in 198.18.0.21 198.18.0.22; do
    step "probing backend $backend from the client for 1 s (a request every 10 ms)"
    ip netns exec "$prefix-client" "$lab" probe "http://$backend:8080/" --duration 1s --interval 10ms --text
done

if [ "$keep" = true ]; then
    step "the lab stays up; try:"
    echo "  ip netns exec $prefix-client $lab probe http://198.18.0.21:8080/ --max-attempts 1 --text"
    echo "  ip netns exec $prefix-client $lab probe http://198.18.0.22:8080/slow?secs=2 --duration 3s --text"
    echo "  $lab status"
    echo "  $lab down --prefix $prefix"
fi
