#!/usr/bin/env bash
# Makes this machine the demo's BGP router: FRR (bgpd, bfdd, zebra) peering with the load
# balancers (eBGP, AS 64500 to their 64512, BFD at 100 ms x 3), installing up to eight equal
# paths to the VIP they announce and hashing flows on ports, and forwarding.
#
# The lab runs this same script in a network namespace: FULCRUM_ROOT puts /etc under a
# directory of its own and FULCRUM_SYSTEMD=no leaves installing and starting FRR to the caller.
set -euo pipefail
: "${ADDRESS:?the address of this router}" "${PEERS:?the load balancer addresses, comma-separated}"
root="${FULCRUM_ROOT:-}"
systemd="${FULCRUM_SYSTEMD:-yes}"
conf_dir="$root/etc/frr"

if [ "$systemd" = yes ] && ! [ -x /usr/lib/frr/bgpd ]; then
    apt-get update -qq
    apt-get install -y -qq frr >/dev/null
fi

neighbors=""
for peer in ${PEERS//,/ }; do
    neighbors+=" neighbor $peer peer-group NODES"$'\n'
done
install -d -m 0755 "$conf_dir"
cat > "$conf_dir/frr.conf" <<CONF
frr defaults traditional
hostname router
!
bfd
 profile fast
  receive-interval 100
  transmit-interval 100
  detect-multiplier 3
 !
!
router bgp 64500
 bgp router-id $ADDRESS
 bgp log-neighbor-changes
 no bgp ebgp-requires-policy
 neighbor NODES peer-group
 neighbor NODES remote-as 64512
 neighbor NODES bfd
 neighbor NODES bfd profile fast
 neighbor NODES timers 3 9
 neighbor NODES timers connect 1
$neighbors address-family ipv4 unicast
  maximum-paths 8
 exit-address-family
!
CONF

# Forwarding, flows hashed on ports, and no redirects: the client and the load balancers
# share the link, and a redirect would send the client straight to one of them.
settings=(net.ipv4.ip_forward=1 net.ipv4.fib_multipath_hash_policy=1
    net.ipv4.conf.all.send_redirects=0 net.ipv4.conf.default.send_redirects=0)
sysctl -qw "${settings[@]}"
for interface in /proc/sys/net/ipv4/conf/*/send_redirects; do
    echo 0 > "$interface"
done

if [ "$systemd" = yes ]; then
    printf '%s\n' "${settings[@]}" > /etc/sysctl.d/60-fulcrum-router.conf
    sed -i -e 's/^bgpd=no/bgpd=yes/' -e 's/^bfdd=no/bfdd=yes/' /etc/frr/daemons
    chown frr:frr "$conf_dir/frr.conf"
    chmod 0640 "$conf_dir/frr.conf"
    systemctl enable frr.service
    systemctl restart frr.service
fi
echo "router.sh: FRR peers with $PEERS from $ADDRESS: $conf_dir/frr.conf"
