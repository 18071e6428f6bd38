#!/usr/bin/env bash
# Makes this machine a Fulcrum cluster node: the node file (from vagrant/node.toml.in), the
# cluster secret and admin token, its certificate for mutual TLS and the admin API (issued
# here with `fulcrumd pki` from the cluster CA's key, which is not kept), the systemd unit,
# and fulcrumd started. With APPLY=yes it then applies the demo cluster file
# (vagrant/cluster.toml.in) once a quorum answers. With ROUTER and BGP_VIP, the node also
# announces BGP_VIP to the router over BGP (a [bgp] section; BIRD 2 installed).
#
# The lab runs this same script in network namespaces: FULCRUM_ROOT puts /etc and /var under
# a directory of its own, FULCRUM_SYSTEMD=no leaves starting fulcrumd to the caller, and
# FULCRUMD and FULCRUMCTL name the binaries to use.
set -euo pipefail
: "${NODE_ID:?}" "${ADDRESS:?}" "${PRIORITY:?}" "${MEMBERS:?}" "${VIP:?}" "${BACKENDS:?}"
: "${CLUSTER_SECRET:?}" "${ADMIN_TOKEN:?}" "${CA_KEY:?the cluster CA key, PEM}"
source_dir="${FULCRUM_SOURCE:-/fulcrum}"
root="${FULCRUM_ROOT:-}"
systemd="${FULCRUM_SYSTEMD:-yes}"
fulcrumd="${FULCRUMD:-/usr/local/bin/fulcrumd}"
fulcrumctl="${FULCRUMCTL:-/usr/local/bin/fulcrumctl}"
etc="$root/etc/fulcrum"
data="$root/var/lib/fulcrum"

interface=$(ip -o -4 addr show | awk -v address="$ADDRESS" '{ split($4, a, "/") } a[1] == address { print $2; exit }')
if [ -z "$interface" ]; then
    echo "lb.sh: no interface has the address $ADDRESS" >&2
    exit 1
fi

install -d -m 0755 "$etc"
install -d -m 0700 "$data"
(umask 077 && printf '%s\n' "$CLUSTER_SECRET" > "$etc/cluster.secret" && printf '%s\n' "$ADMIN_TOKEN" > "$etc/admin.token")

# This node's certificate (for its peers, and for fulcrumctl at its address); made once.
pki="$etc/pki"
if [ ! -f "$pki/node.pem" ]; then
    install -d -m 0755 "$pki"
    ca_key=$(mktemp)
    issued=$(mktemp -d)
    trap 'rm -rf "$ca_key" "$issued"' EXIT
    printf '%s\n' "$CA_KEY" > "$ca_key"
    [ -f "$pki/ca.pem" ] || "$fulcrumd" pki ca --key "$ca_key" --out "$pki" >/dev/null
    "$fulcrumd" pki node --ca-key "$ca_key" --name node --address "$ADDRESS" --out "$issued" >/dev/null
    mv "$issued/node.pem" "$issued/node.key" "$pki/"
fi

members=""
for member in ${MEMBERS//,/ }; do
    members+=$'\n'"[[raft.initial_members]]"$'\n'"id = ${member##*.}"$'\n'"address = \"$member:7000\""$'\n'
done
sed -e "s|@NODE_ID@|$NODE_ID|" -e "s|@INTERFACE@|$interface|" -e "s|@PRIORITY@|$PRIORITY|" \
    -e "s|@VIP@|$VIP|" -e "s|@ADDRESS@|$ADDRESS|g" -e "s|@ETC@|$etc|g" -e "s|@DATA@|$data|g" \
    "$source_dir/vagrant/node.toml.in" > "$etc/node.toml"
printf '%s' "$members" >> "$etc/node.toml"

if [ -n "${ROUTER:-}" ]; then
    : "${BGP_VIP:?the VIP announced over BGP}"
    if [ "$systemd" = yes ] && ! command -v bird >/dev/null 2>&1; then
        apt-get update -qq
        apt-get install -y -qq bird2 >/dev/null
        # fulcrumd runs a BIRD of its own.
        systemctl disable --now bird.service
    fi
    cat >> "$etc/node.toml" <<BGP

[bgp]
local_as = 64512
router_id = "$ADDRESS"
vips = ["$BGP_VIP"]
track_pools = ["web"]
neighbors = [{ address = "$ROUTER", remote_as = 64500 }]
run_dir = "$root/run/fulcrum/bgp"
BGP
    # The VIP on lo is reached through the router only: not answered for on the link.
    arp=(net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2)
    sysctl -qw "${arp[@]}"
    if [ "$systemd" = yes ]; then
        printf '%s\n' "${arp[@]}" > /etc/sysctl.d/60-fulcrum-bgp.conf
    fi
fi

backends=""
for backend in ${BACKENDS//,/ }; do
    backends+="${backends:+, }{ address = \"$backend\" }"
done
sed -e "s|@BACKENDS@|$backends|" "$source_dir/vagrant/cluster.toml.in" > "$etc/cluster.toml"
echo "lb.sh: node $NODE_ID on $interface ($ADDRESS): $etc/node.toml"

if [ "$systemd" = yes ]; then
    id fulcrum >/dev/null 2>&1 || useradd --system --home-dir /var/lib/fulcrum --shell /usr/sbin/nologin fulcrum
    chown -R fulcrum:fulcrum "$etc" "$data"
    install -m 0644 "$source_dir/dist/systemd/fulcrumd.service" /etc/systemd/system/fulcrumd.service
    systemctl daemon-reload
    systemctl enable --now fulcrumd.service
fi

if [ "${APPLY:-no}" = yes ]; then
    endpoints=$(echo "$MEMBERS" | tr ',' '\n' | sed 's|.*|https://&:7100|' | paste -sd, -)
    # The first nodes may still be electing a leader: try for up to a minute.
    for attempt in $(seq 1 30); do
        if FULCRUM_ENDPOINTS="$endpoints" FULCRUM_TOKEN="$ADMIN_TOKEN" FULCRUM_CA_FILE="$pki/ca.pem" \
            "$fulcrumctl" apply -f "$etc/cluster.toml" --wait; then
            exit 0
        fi
        echo "lb.sh: apply attempt $attempt failed; retrying in 2 s" >&2
        sleep 2
    done
    echo "lb.sh: could not apply $etc/cluster.toml: is a quorum of load balancers up?" >&2
    exit 1
fi
