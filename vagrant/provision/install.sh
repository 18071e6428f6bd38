#!/usr/bin/env bash
# Installs fulcrumd, fulcrumctl and fulcrum-lab (backends and prober) in /usr/local/bin: the
# release binaries built on the host (target/release, synced to /fulcrum) if they are there,
# else built here from the synced sources.
set -euo pipefail
source_dir="${FULCRUM_SOURCE:-/fulcrum}"
binaries=(fulcrumd fulcrumctl fulcrum-lab)

built=yes
for binary in "${binaries[@]}"; do
    [ -x "$source_dir/target/release/$binary" ] || built=no
done
if [ "$built" = no ]; then
    echo "install.sh: no release binaries in $source_dir/target/release; building them (several minutes)"
    apt-get update -qq
    apt-get install -y -qq build-essential curl ca-certificates >/dev/null
    if ! command -v cargo >/dev/null 2>&1; then
        curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    fi
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
    # Without the release profile's cross-crate optimisation (fat LTO, one codegen unit): it
    # makes the build minutes longer, and its memory use was not measured against a VM's 1 GiB.
    (cd "$source_dir" && CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
        cargo build --release --locked -p fulcrum-node -p fulcrum-cli -p fulcrum-lab)
fi
for binary in "${binaries[@]}"; do
    install -m 0755 "$source_dir/target/release/$binary" /usr/local/bin/
done
# fulcrumd loads its second-chance forwarding rules (connections kept across a planned VIP
# handover) with nft.
if ! command -v nft >/dev/null 2>&1; then
    apt-get update -qq
    apt-get install -y -qq nftables >/dev/null
fi
echo "install.sh: installed ${binaries[*]} in /usr/local/bin"
