#!/usr/bin/env bash
# A first look at Fulcrum on one Linux host (needs root). It builds the release binaries and a
# lab of network namespaces: three fulcrumd cluster nodes (Raft store, admin API, VRRP for the
# VIP 198.18.0.100), two backends and a client. It applies a cluster file with fulcrumctl,
# shows the cluster's status and runs traffic through the VIP. Then it kills the master and
# prints the outage and the new owner, makes a planned handover with fulcrumctl and shows
# that no request failed, and tears everything down.
#   scripts/demo.sh          run the demo and clean up
#   scripts/demo.sh --keep   leave the lab up to explore with fulcrumctl; remove it with
#                            `target/release/fulcrum-lab down --prefix <prefix>`
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
missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v nft >/dev/null 2>&1 || missing+=(nftables) # second-chance forwarding
command -v curl >/dev/null 2>&1 || missing+=(curl)
if [ "${#missing[@]}" -gt 0 ]; then
    apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
fi

current="starting"
step() { current="$*"; printf '\n==> %s\n' "$*"; }

step "building fulcrum-lab, fulcrumd and fulcrumctl (release)"
cargo build --release --locked -p fulcrum-lab -p fulcrum-node -p fulcrum-cli
lab="$PWD/target/release/fulcrum-lab"
ctl="$PWD/target/release/fulcrumctl"
vip=198.18.0.100
prefix="demo$(printf '%04x' $((RANDOM % 65536)))"
up=false

finish() {
    status=$?
    if [ "$status" -ne 0 ]; then
        echo >&2
        echo "scripts/demo.sh: the step \"$current\" failed (exit $status)" >&2
    fi
    # A failed demo leaves nothing behind, even with --keep.
    if [ "$up" = true ] && { [ "$keep" = false ] || [ "$status" -ne 0 ]; }; then
        printf '\n==> tearing down lab %s\n' "$prefix"
        "$lab" down --prefix "$prefix" || echo "teardown failed: run '$lab down --all'" >&2
    fi
}
trap finish EXIT

step "bringing up lab $prefix: lb1..lb3 run fulcrumd (VRRP priorities 150, 140, 130), be1 and be2 serve HTTP, the client probes"
up=true
"$lab" up --load-balancers 3 --backends 2 --prefix "$prefix" --cluster

# The lab's nodes serve the admin API over TLS with certificates of the lab's own CA.
endpoints="https://198.18.0.11:7100,https://198.18.0.12:7100,https://198.18.0.13:7100"
token="$(cat "/run/fulcrum-lab/$prefix/admin.token")"
ca="/run/fulcrum-lab/$prefix/pki/ca.pem"
fulcrumctl() {
    ip netns exec "$prefix-client" env FULCRUM_ENDPOINTS="$endpoints" FULCRUM_TOKEN="$token" \
        FULCRUM_CA_FILE="$ca" "$ctl" "$@"
}
probe() { ip netns exec "$prefix-client" "$lab" probe "http://$vip:80/" --interval 10ms --timeout 200ms --text "$@"; }
holders() {
    for host in lb1 lb2 lb3; do
        printf '  %s holds: %s\n' "$host" \
            "$(ip netns exec "$prefix-$host" ip -o -4 addr show dev eth0 up | awk '{print $4}' | tr '\n' ' ')"
    done
}

step "fulcrumctl status: one Raft leader, every node on the same revision, lb1 master of VRID 51"
fulcrumctl status

step "traffic through the VIP $vip:80 (lb1), round robin over be1 and be2"
probe --duration 1s

step "killing lb1's fulcrumd (SIGKILL, link down: a crash) while probing for 6 s"
master=$("$lab" status --prefix "$prefix" | awk '/process fulcrumd on lb1 pid/ {print $6}')
probe --duration 6s &
prober=$!
sleep 0.5
kill -KILL "$master"
ip netns exec "$prefix-lb1" ip link set dev eth0 down
wait "$prober"
echo "the outage above is the time lb2 needed to notice (3 missed adverts) and to be granted"
echo "the VIP's lease once lb1's had run out (the quorum fence: about 2 s, longer if lb1 also"
echo "led the Raft group, which first elects a new leader):"
holders

step "planned handover with fulcrumctl: VRID 51 from lb2 to lb3, while probing for 3 s and downloading for 4 s"
ip netns exec "$prefix-client" curl -sS -o /dev/null -w 'download across the handover: HTTP %{http_code}, %{size_download} of 40960 bytes\n' "http://$vip/slow?secs=4" &
download=$!
probe --duration 3s &
prober=$!
sleep 0.5
fulcrumctl failover --vrid 51 --to 13
wait "$prober"
wait "$download"
echo "lb2 resigned with a priority-0 advertisement and lb3 took over at once; the download lb2"
echo "was serving went on to the end (lb3 forwarded its packets to lb2 while it drained):"
holders

step "fulcrumctl status after both failovers (lb1 is down)"
fulcrumctl status || true

if [ "$keep" = true ]; then
    step "the lab stays up; try:"
    echo "  alias fulcrumctl='ip netns exec $prefix-client env FULCRUM_ENDPOINTS=$endpoints FULCRUM_TOKEN=$token FULCRUM_CA_FILE=$ca $ctl'"
    echo "  fulcrumctl pool show web"
    echo "  fulcrumctl backend drain web 198.18.0.21:8080 --wait"
    echo "  fulcrumctl failover --vrid 51 --reset"
    echo "  ip netns exec $prefix-client $lab probe http://$vip:80/ --duration 1s --text"
    echo "  $lab status --prefix $prefix"
    echo "  $lab down --prefix $prefix"
fi
