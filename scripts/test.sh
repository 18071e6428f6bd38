#!/usr/bin/env bash
# Runs Fulcrum's whole test suite, the lab tests on real network namespaces included.
# Needs root (the lab creates namespaces); installs what it needs first.
#   scripts/test.sh              everything: format, lints, shipped files, all tests
#   scripts/test.sh -E 'test(x)' extra arguments go to cargo nextest
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/test.sh: the lab tests create network namespaces and need root." >&2
    echo "Run it as root, e.g.: sudo -E env \"PATH=\$PATH\" scripts/test.sh" >&2
    exit 1
fi

# Debian packages the tests use, by the command that shows each is there.
declare -A packages=([ip]=iproute2 [nft]=nftables [keepalived]=keepalived
    [shellcheck]=shellcheck [systemd-analyze]=systemd [vagrant]=vagrant [testssl]=testssl.sh
    [pip3]=python3-pip [tshark]=tshark [sysctl]=procps [pebble]=pebble [bird]=bird2
    [vtysh]=frr)
missing=()
for command in "${!packages[@]}"; do
    command -v "$command" >/dev/null 2>&1 || missing+=("${packages[$command]}")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}"
    # Packages with daemons (keepalived, bird2, frr) must not start them on this host: the
    # tests run their own, inside the lab's namespaces.
    guard=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        guard=/usr/sbin/policy-rc.d
        trap 'rm -f "$guard"' EXIT
        printf '#!/bin/sh\nexit 101\n' > "$guard"
        chmod 755 "$guard"
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    if [ -n "$guard" ]; then
        rm -f "$guard"
        trap - EXIT
    fi
fi
# slowloris, from PyPI, for the attack tests.
if ! command -v slowloris >/dev/null 2>&1; then
    echo "installing slowloris"
    python3 -m pip install --quiet slowloris==0.2.6 2>/dev/null ||
        python3 -m pip install --quiet --break-system-packages slowloris==0.2.6
    hash -r
fi
if ! cargo nextest --version >/dev/null 2>&1; then
    echo "installing cargo-nextest"
    cargo install --locked cargo-nextest
fi

cargo fmt --all -- --check
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The fuzz targets' properties, on stable, over every input the campaigns kept (fuzz/).
CARGO_TARGET_DIR=target cargo clippy --manifest-path fuzz/Cargo.toml --no-default-features \
    --lib --tests --locked -- -D warnings
CARGO_TARGET_DIR=target cargo test --manifest-path fuzz/Cargo.toml --no-default-features \
    --lib --locked
scripts/check-structure.py
# The lab tests run the binaries (fulcrumd next to the test executables); cargo builds a
# package's binaries for tests only when that package has integration tests.
cargo build --workspace --locked
scripts/check-dist.sh
cargo nextest run --workspace --locked --no-fail-fast "$@"
