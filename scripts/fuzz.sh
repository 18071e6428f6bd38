#!/usr/bin/env bash
# Runs Fulcrum's fuzzing campaign: every cargo-fuzz target in fuzz/ for a given time, one
# after the other, growing the corpora kept in fuzz/corpus/ and printing one line of figures
# per target. Installs the nightly toolchain and cargo-fuzz when they are missing.
#   scripts/fuzz.sh                     every target for 10 minutes
#   scripts/fuzz.sh --time 60 route     one target for a minute
# A crash leaves its input in fuzz/artifacts/<target>/ and makes the script exit 1; turn it
# into a regression: fix the bug, then keep the input in fuzz/regressions/<target>/ (the
# test command replays it; README.md, "Fuzzing").
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=600
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --time) seconds="$2"; shift 2 ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        -*) echo "scripts/fuzz.sh: unknown option $1" >&2; exit 2 ;;
        *) targets+=("$1"); shift ;;
    esac
done

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "installing the nightly toolchain (cargo-fuzz needs it)"
    rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi

target_dir=target/fuzz
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
cargo +nightly fuzz build --target-dir "$target_dir"

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
touch "$logs/started"
failed=()
printf '%-14s %8s %14s %10s %8s %8s\n' target seconds executions "exec/s" corpus crashes
for target in "${targets[@]}"; do
    corpus="fuzz/corpus/$target"
    mkdir -p "$corpus"
    status=0
    # -timeout: an input that takes over 10 s is a hang, reported like a crash.
    cargo +nightly fuzz run --target-dir "$target_dir" "$target" "$corpus" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$logs/$target" 2>&1 || status=$?
    executions=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$target" | tail -1)
    per_second=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$logs/$target" | tail -1)
    # Only this run's findings: an earlier campaign's artifacts stay until removed by hand.
    crashes=$({ find "fuzz/artifacts/$target" -type f -newer "$logs/started" 2>/dev/null || true; } | wc -l)
    # Keep the corpus small: the fewest inputs that still cover every feature reached.
    cargo +nightly fuzz cmin --target-dir "$target_dir" "$target" "$corpus" -- \
        -set_cover_merge=1 >"$logs/$target.cmin" 2>&1 ||
        echo "could not minimise $corpus: $(tail -n 1 "$logs/$target.cmin")" >&2
    # The time it ran: less than asked when a crash ended it.
    ran=$(awk -v n="${executions:-0}" -v r="${per_second:-0}" 'BEGIN { print (r > 0 ? int(n / r) : "?") }')
    printf '%-14s %8s %14s %10s %8s %8s\n' "$target" "$ran" "${executions:-?}" \
        "${per_second:-?}" "$(find "$corpus" -type f | wc -l)" "$crashes"
    if [ "$status" -ne 0 ] || [ "$crashes" -gt 0 ]; then
        failed+=("$target")
        grep -m 5 -E 'panicked|ERROR|SUMMARY' "$logs/$target" >&2 || tail -n 20 "$logs/$target" >&2
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "crashes in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
