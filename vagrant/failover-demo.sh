#!/usr/bin/env bash
# The failover demo on the Vagrant cluster (run from vagrant/ after `vagrant up`): traffic
# from the client VM through the VIP, a crash of the master (fulcrumd killed) with the outage
# and the new owner, then a planned handover with fulcrumctl, with zero failed requests.
set -euo pipefail
cd "$(dirname "$0")"
vip=198.18.0.100

step() { printf '\n==> %s\n' "$*"; }
on() { local vm=$1; shift; vagrant ssh "$vm" -c "$*" -- -q; }
probe() { on client "fulcrum-lab probe http://$vip/ --interval 10ms --timeout 200ms --text --duration $1"; }
holder() {
    for vm in lb1 lb2 lb3; do
        if on "$vm" "ip -o -4 addr show | grep -q ' $vip/'"; then echo "$vm"; fi
    done
}

step "cluster status"
on client "fulcrumctl status"

step "traffic through the VIP $vip, held by $(holder | paste -sd' ' -)"
probe 2s

master=$(holder | head -n 1)
step "killing fulcrumd on $master (SIGKILL) while probing for 5 s"
probe 5s &
prober=$!
sleep 1
on "$master" "sudo systemctl kill --signal=KILL fulcrumd.service"
wait "$prober"
echo "the VIP is now held by: $(holder | paste -sd' ' -)"
on "$master" "sudo systemctl start fulcrumd.service"

new=$(holder | head -n 1)
target=lb3
[ "$new" = lb3 ] && target=lb2
# Node ids are the last octet of the address: lb2 is node 12.
step "planned handover from $new to $target with fulcrumctl, while probing for 5 s"
probe 5s &
prober=$!
sleep 1
on client "fulcrumctl failover --vrid 51 --to 1${target#lb}" >/dev/null
on client "fulcrumctl vip status"
wait "$prober"
echo "the VIP is now held by: $(holder | paste -sd' ' -)"
on client "fulcrumctl failover --vrid 51 --reset" >/dev/null
