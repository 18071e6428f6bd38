#!/usr/bin/env bash
# Builds fulcrumd optimised with a profile of its own data path (profile-guided optimisation):
# an instrumented build serves the L7 and L4 benchmarks' traffic in the lab, and the final
# build lays out and inlines code by the counts that run wrote. Why: fulcrumd executes fewer
# instructions per request than HAProxy yet spent more time on them (README, Benchmarks).
# Result: target/pgo/fulcrumd; the training's output is in target/pgo/training.log.
# Needs what the benchmarks need (root; haproxy, nginx-light, wrk, nghttp2-client), and
# llvm-profdata of rustc's own LLVM version (Debian's llvm-<major>, installed if missing).
# About 20 minutes on two cores: two release builds of fulcrumd, one of fulcrum-lab when it is
# not built, and about 3 minutes of traffic.
set -euo pipefail
cd "$(dirname "$0")/.."

major=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
profdata=/usr/lib/llvm-$major/bin/llvm-profdata
if [ ! -x "$profdata" ]; then
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "llvm-$major"; } \
        >/dev/null || {
        echo "build-pgo: llvm-profdata for rustc's LLVM $major is missing and apt-get could not" \
            "install llvm-$major; install it (or LLVM $major's llvm-profdata at $profdata)" >&2
        exit 1
    }
fi

work=$PWD/target/pgo
mkdir -p "$work"
# Target directories of their own: other RUSTFLAGS would make cargo rebuild the usual release
# tree on its next build.
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$work/profiles" cargo build --release --locked \
    -p fulcrum-node --bin fulcrumd --target-dir "$work/generate"
# Only the training's counts: the instrumented build scripts wrote theirs here too.
rm -rf "$work/profiles"
cargo build --release --locked -p fulcrum-lab
echo "build-pgo: training (logged to $work/training.log)"
FULCRUMD=$work/generate/release/fulcrumd RUST_LOG=warn target/release/fulcrum-lab bench-l7 \
    --runs 1 --duration 3s > "$work/training.log"
FULCRUMD=$work/generate/release/fulcrumd RUST_LOG=warn target/release/fulcrum-lab bench-l4 \
    --runs 1 --bulk-mib 256 >> "$work/training.log"
# fulcrumd writes its counts when it exits (runs of one binary merge into one file); a fulcrumd
# the lab had to kill wrote none.
shopt -s nullglob
profiles=("$work"/profiles/*.profraw)
if [ "${#profiles[@]}" -eq 0 ]; then
    echo "build-pgo: the training wrote no profile to $work/profiles (see $work/training.log)" >&2
    exit 1
fi
"$profdata" merge -o "$work/fulcrumd.profdata" "${profiles[@]}"
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$work/fulcrumd.profdata" cargo build --release --locked \
    -p fulcrum-node --bin fulcrumd --target-dir "$work/use"
cp "$work/use/release/fulcrumd" "$work/fulcrumd"
echo "build-pgo: built $work/fulcrumd"
