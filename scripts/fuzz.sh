#!/usr/bin/env bash
# Runs every fuzz target for a bounded time each (default 60 s), one after
# the other, and stops at the first crash (cargo-fuzz leaves the input in
# fuzz/artifacts/<target>/; turn it into a regression test).
#
#   scripts/fuzz.sh [seconds per target] [target...]
#
# Needs a nightly toolchain and cargo-fuzz (cargo install cargo-fuzz).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-60}
shift || true
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "error: fuzzing needs a nightly toolchain (rustup toolchain install nightly)" >&2
    exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "error: fuzzing needs cargo-fuzz (cargo install cargo-fuzz)" >&2
    exit 2
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for target in "${targets[@]}"; do
    echo "== $target: ${secs}s"
    mkdir -p "corpus/$target" "seeds/$target"
    # The seed corpus starts the search from real inputs; what the run
    # finds goes to corpus/ (not committed).
    status=0
    cargo +nightly fuzz run "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1 || status=$?
    grep -E "^(Done|stat::number_of_executed_units|stat::peak_rss_mb|SUMMARY)" "$log" || true
    if [ "$status" -ne 0 ]; then
        tail -40 "$log" >&2
        echo "error: $target failed (exit $status); a crashing input is in fuzz/artifacts/$target/" >&2
        exit 1
    fi
done
echo "every target ran ${secs}s with no crash"
