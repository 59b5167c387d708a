#!/bin/sh
# Same-run comparison of two sparefs builds through the mount: `sparefs up`
# with binary A, fsbench.sh, down; the same with B; ROUNDS times, A and B
# interleaved so the machine's noise falls on both. For refactors that must
# not move performance.
#   bench/ab-compare.sh OLD_SPAREFS NEW_SPAREFS [ROUNDS]
# Prints one table per round and the median ratio new/old per metric (>1 is
# better for the new build, whichever way the metric points); results go to
# bench/results/ab-DATE/. Needs root. FSBENCH_STEPS etc. pass through.
set -eu
cd "$(dirname "$0")/.."
old=${1:?usage: bench/ab-compare.sh OLD_SPAREFS NEW_SPAREFS [ROUNDS]}
new=${2:?usage: bench/ab-compare.sh OLD_SPAREFS NEW_SPAREFS [ROUNDS]}
rounds=${3:-2}
PEERS=${PEERS:-../shared/peers}
OUT=${OUT:-bench/results/ab-$(date +%F)}
mkdir -p "$OUT"
apt-get install -y fio >/dev/null 2>&1 || true

. bench/fsbench-sparefs.sh

r=1
while [ $r -le "$rounds" ]; do
    echo "# round $r: old" >&2; fsbench_sparefs "$old" "old-$r" 7960
    echo "# round $r: new" >&2; fsbench_sparefs "$new" "new-$r" 7960
    r=$((r + 1))
done

python3 - "$OUT" "$rounds" <<'PY'
import os, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def load(label):
    rows = {}
    path = os.path.join(out, label + ".txt")
    if os.path.exists(path):
        for line in open(path):
            p = line.split()
            if len(p) == 3:
                rows[p[1]] = float(p[2])
    return rows
lower_better = lambda m: m.endswith("_s") and not m.endswith("_per_s")
ratios = {}
for r in range(1, rounds + 1):
    old, new = load(f"old-{r}"), load(f"new-{r}")
    for m in old:
        if m in new and old[m] and new[m]:
            ratios.setdefault(m, []).append(old[m] / new[m] if lower_better(m) else new[m] / old[m])
lines = ["| metric | new/old per round | median |", "|---|---|---|"]
for m, rs in ratios.items():
    lines.append(f"| {m} | {' '.join(f'{x:.2f}' for x in rs)} | {statistics.median(rs):.2f} |")
table = "\n".join(lines)
open(os.path.join(out, "table.md"), "w").write(table + "\n")
print(table)
PY
