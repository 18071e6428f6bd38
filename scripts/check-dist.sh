#!/usr/bin/env bash
# Checks what ships beside the binaries, which no Rust test reads: every shell script must
# pass shellcheck, the systemd unit `systemd-analyze verify`, and the Vagrantfile `vagrant
# validate` (VMs cannot boot here; the provisioning itself runs in the lab tests).
# Expects shellcheck, systemd-analyze and vagrant installed (scripts/test.sh installs them) and
# target/debug/fulcrumd built.
set -euo pipefail
cd "$(dirname "$0")/.."

mapfile -t scripts < <(git ls-files '*.sh')
shellcheck "${scripts[@]}"
echo "shellcheck: ${#scripts[@]} scripts clean"

# verify wants the unit's ExecStart to exist: check a copy pointing at the built binary.
unit=$(mktemp -d)
trap 'rm -rf "$unit"' EXIT
sed "s|^ExecStart=/usr/local/bin/fulcrumd |ExecStart=$PWD/target/debug/fulcrumd |" \
    dist/systemd/fulcrumd.service > "$unit/fulcrumd.service"
systemd-analyze verify "$unit/fulcrumd.service"
echo "systemd-analyze verify: dist/systemd/fulcrumd.service clean"

(cd vagrant && vagrant validate)
