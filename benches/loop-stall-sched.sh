#!/bin/sh
# The event loop's stall histogram (holdenctl stats) with N services crash-looping, the
# orchestrator under the default policy and under the shipped unit's SCHED_FIFO 1 (ResetOnFork),
# alternating in one run so that foreign load hits both alike.
#
#   benches/loop-stall-sched.sh [N] [ROUNDS] [SECONDS]     (defaults: 4 3 5; root: chrt -f)
#
# Uses the static release binaries of `cargo xtask dist` (or BIN=dir). Prints one line per run:
# completions, restarts and the stall p50/p99/p99.9/max in µs (bucket tops) over the whole run.
set -eu
n=${1:-4}
rounds=${2:-3}
seconds=${3:-5}
bin=${BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/$(uname -m)-unknown-linux-musl/release}
for b in holden-orchestrator holdenctl; do
    [ -x "$bin/$b" ] || { echo "loop-stall-sched: $bin/$b missing (run cargo xtask dist)" >&2; exit 1; }
done
dir=$(mktemp -d /tmp/holden-loop-stall.XXXXXX)
orch=
cleanup() {
    if [ -n "$orch" ]; then kill "$orch" 2>/dev/null || true; wait "$orch" 2>/dev/null || true; fi
    rm -rf "$dir"
}
trap cleanup EXIT INT TERM
{
    printf 'slots = %d\nlog_level = "warn"\nruntime_dir = "%s/run"\n[control]\nsocket = "%s/control.sock"\n' $((n + 4)) "$dir" "$dir"
    i=1
    while [ "$i" -le "$n" ]; do
        printf '[[service]]\nname = "s%d"\npartition = "local"\nargv = ["/bin/true"]\n' "$i"
        printf 'restart = "always"\nrestart_delay = "0"\nstart_limit = { burst = 0, interval = "0" }\n'
        i=$((i + 1))
    done
} > "$dir/orchestrator.toml"

field() { sed -n "s/.*\"$1\": *\([0-9]*\).*/\1/p" "$dir/stats.json"; }
us() { echo "$1" | awk '{ printf "%.1f", $1 / 1000 }'; }

run() {
    label=$1
    shift
    "$@" "$bin/holden-orchestrator" --config "$dir/orchestrator.toml" 2> "$dir/orchestrator.log" &
    orch=$!
    sleep "$seconds"
    "$bin/holdenctl" --socket "$dir/control.sock" stats --json > "$dir/stats.json" || { cat "$dir/orchestrator.log" >&2; exit 1; }
    kill "$orch"
    wait "$orch" || true
    orch=
    printf '%-28s completions %8s restarts %8s stall p50 %6s p99 %6s p99.9 %7s max %8s µs\n' \
        "$label" "$(field completions)" "$(field spawned_local)" "$(us "$(field stall_p50_ns)")" \
        "$(us "$(field stall_p99_ns)")" "$(us "$(field stall_p999_ns)")" "$(us "$(field stall_max_ns)")"
}

echo "N=$n crash-looping /bin/true, $seconds s per run, $(nproc) CPUs, kernel $(uname -r)"
r=1
while [ "$r" -le "$rounds" ]; do
    run "default policy" env
    run "SCHED_FIFO 1, reset-on-fork" chrt --fifo --reset-on-fork 1
    r=$((r + 1))
done
