#!/usr/bin/env bash
# Counts the user-space instructions fulcrumd executes per HTTP request under the L7
# benchmark's load: fulcrumd runs under callgrind (valgrind), counting is switched on once
# the benchmark aims its load at fulcrumd, and after 10 s the count is divided by the
# requests parsed in that time. Unlike requests per second on a shared VM, the figure moves
# by well under 1 % between runs, so it can judge a change of a few per cent.
#
# Usage (root; valgrind, haproxy, nginx-light and wrk installed; a release build):
#   scripts/count-instructions.sh [http1|close] [path/to/fulcrumd]
set -euo pipefail

load=${1:-http1}
fulcrumd=$(realpath "${2:-target/release/fulcrumd}")
lab=target/release/fulcrum-lab
for tool in valgrind callgrind_control "$lab" "$fulcrumd"; do
    command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 1; }
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The lab starts this wrapper as fulcrumd; it records its PID (kept by exec) for
# callgrind_control.
cat >"$work/fulcrumd" <<WRAPPER
#!/bin/sh
echo \$\$ > "$work/pid"
exec valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/out" "$fulcrumd" "\$@"
WRAPPER
chmod +x "$work/fulcrumd"

FULCRUMD="$work/fulcrumd" RUST_LOG=warn "$lab" bench-l7 --runs 1 --only "$load" --duration 25s \
    >"$work/bench.txt" 2>&1 &
bench=$!
# fulcrumd's turn: the load generator aims at its port (8000). Bounded: 150 s.
for _ in $(seq 1 300); do
    pgrep -f "wrk .*:8000/" >/dev/null && break
    sleep 0.5
done
pid=$(cat "$work/pid")
callgrind_control --instr=on "$pid" >/dev/null 2>&1
sleep 1
callgrind_control --zero "$pid" >/dev/null 2>&1
sleep 10
callgrind_control --dump "$pid" >/dev/null 2>&1
callgrind_control --instr=off "$pid" >/dev/null 2>&1
wait "$bench"

python3 - "$work"/out.* "$load" <<'PY'
import re, sys
path, load = sys.argv[1], sys.argv[2]
names, calls, callee = {}, {}, None
total = 0
for line in open(path):
    if line.startswith("summary:"):
        total = int(line.split()[1])
    match = re.match(r"^(c?fn)=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
    if match:
        kind, ident, name = match.groups()
        if name:
            names[ident] = name
        callee = ident if kind == "cfn" else callee
        continue
    match = re.match(r"^calls=(\d+)", line)
    if match and callee is not None:
        calls[callee] = calls.get(callee, 0) + int(match.group(1))
requests = sum(n for ident, n in calls.items() if "h1::head::parse_request" in names.get(ident, ""))
if not requests:
    sys.exit("no request was parsed while counting: the load did not reach fulcrumd")
print(f"{load}: {total} instructions over {requests} requests: {total // requests} per request")
PY
