#!/bin/sh
# What mutual TLS costs through the mount: the same sparefs binary, `sparefs
# up` plaintext (--no-tls) against `sparefs up` with TLS (its default), run
# by bench/ab-compare.sh in interleaved rounds. The table's "new/old" is
# TLS/plaintext: 0.95 means TLS is 5% slower on that row (issue 14's goal:
# under 10% on the sequential rows).
#   bench/tls-cost.sh [SPAREFS] [ROUNDS]
# Defaults: target/release/sparefs, 2 rounds; FSBENCH_STEPS defaults to
# "seq rand" here (the rows where the bytes go through TLS). Needs root.
set -eu
cd "$(dirname "$0")/.."
bin=$(realpath "${1:-target/release/sparefs}")
rounds=${2:-2}
export FSBENCH_STEPS="${FSBENCH_STEPS:-seq rand}"
export OUT="${OUT:-bench/results/tls-cost-$(date +%F)}"
mkdir -p "$OUT"
plain="$OUT/sparefs-no-tls"
# `sparefs up ... --no-tls`: the wrapper is the "old" binary.
printf '#!/bin/sh\nexec "%s" "$@" --no-tls\n' "$bin" >"$plain"
chmod +x "$plain"
exec bench/ab-compare.sh "$plain" "$bin" "$rounds"
