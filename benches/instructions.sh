#!/usr/bin/env bash
# Instructions per renewal: the `scale` bench under valgrind's callgrind, which counts every
# instruction the process executes. CPU time on a shared machine varies by ±20 % from run to
# run; this count repeats to within about 1 % (in `current` thread mode), so it is what shows a
# change in the cost of a renewal.
#
# The process runs twice, with a steady window of 4 s and of 16 s; the difference of the two
# totals, divided by the difference of the writes the two runs made (renewals; the releases
# at shutdown are the same in both), is the cost of one renewal: start-up, the bare
# compare-and-swap loop and shutdown cancel out.
#
#   benches/instructions.sh [BENCH_BINARY]
#
# Without an argument it builds `cargo bench --bench scale` and measures that binary; give an
# older build's binary to compare. Env: DSYNC_SCALE_ELECTIONS (default 1000),
# DSYNC_SCALE_REPLICAS (default 2), DSYNC_SCALE_THREAD (default `current`: every replica's
# actors on one thread, which makes the count repeatable; `dedicated` varies by ±20 % under
# valgrind, as cross-thread wake-ups batch differently). Needs valgrind (apt install valgrind).
set -euo pipefail

cd "$(dirname "$0")/.."
bin=${1:-}
if [[ -z $bin ]]; then
    bin=$(cargo bench --bench scale --no-run --message-format=json 2>/dev/null |
        sed -n 's/.*"executable":"\([^"]*scale[^"]*\)".*/\1/p' | tail -1)
fi
[[ -x $bin ]] || { echo "no bench binary: $bin" >&2; exit 2; }
command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; exit 2; }

export DSYNC_SCALE_ELECTIONS=${DSYNC_SCALE_ELECTIONS:-1000}
export DSYNC_SCALE_REPLICAS=${DSYNC_SCALE_REPLICAS:-2}
export DSYNC_SCALE_THREAD=${DSYNC_SCALE_THREAD:-current}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

declare -A instructions renewals
for window in 4 16; do
    DSYNC_SCALE_SECONDS=$window valgrind --tool=callgrind \
        --callgrind-out-file="$out/callgrind.$window" "$bin" --bench >"$out/log.$window" 2>&1
    instructions[$window]=$(sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$out/log.$window")
    renewals[$window]=$(sed -n 's/^replaces in the whole run: \([0-9]*\).*/\1/p' "$out/log.$window")
    echo "window ${window} s: ${instructions[$window]} instructions, ${renewals[$window]} writes in the run" \
        "($(grep -o 'allocations per renewal: [0-9.]*' "$out/log.$window"))"
done
echo "elections: $DSYNC_SCALE_ELECTIONS, replicas: $DSYNC_SCALE_REPLICAS, threads: $DSYNC_SCALE_THREAD"
echo "instructions per renewal: $(( (instructions[16] - instructions[4]) / (renewals[16] - renewals[4]) ))"
