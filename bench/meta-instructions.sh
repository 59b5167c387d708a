#!/bin/sh
# Instructions a one-replica meta spends per namespace request, counted by
# callgrind, for one or more builds of `sparefs`: the same fixed requests
# (bench/src/bin/meta-ops.rs) against each. Instruction counts do not move
# with the machine's load, so two builds compare without noise where
# timed benchmarks on a shared 2-core host differ by +-15% run to run.
#   bench/meta-instructions.sh [--ops N] BIN...
# Needs valgrind and a release build of meta-ops (cargo build --release
# -p sparefs-bench --bin meta-ops). Prints, per build: instructions per
# request under load, and the idle rate (Raft ticks) it was corrected for.
set -eu
ops=2000
if [ "${1:-}" = "--ops" ]; then ops=$2; shift 2; fi
[ $# -ge 1 ] || { echo "usage: $0 [--ops N] SPAREFS_BIN..." >&2; exit 2; }
here=$(cd "$(dirname "$0")/.." && pwd)
load=${META_OPS:-$here/target/release/meta-ops}
. "$here/bench/callgrind-count.sh"
port=7690
for bin in "$@"; do
    work=$(mktemp -d /tmp/meta-instr.XXXXXX)
    port=$((port + 1))
    addr=127.0.0.1:$port
    valgrind --tool=callgrind --callgrind-out-file="$work/cg.%p" \
        "$bin" meta --id 1 --listen "$addr" --data "$work/meta" --peers "1=$addr" \
        >"$work/meta.log" 2>&1 &
    vg=$!
    # Election and the first request under valgrind: wait for an answer.
    "$load" --meta "$addr" --ops 1 --dir warmup >/dev/null
    count_workload "$vg" "$work/cg" $((3 * ops + 1)) request "$bin" \
        quiet "$load" --meta "$addr" --ops "$ops"
    kill "$vg"; wait "$vg" 2>/dev/null || true
    rm -rf "$work"
done
