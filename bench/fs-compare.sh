#!/bin/sh
# Through-the-mount benchmark of sparefs against a plain local directory and
# MooseFS (../shared/peers), all in the same run with the same fsbench.sh.
# Prints a table with sparefs's ratio to each and writes it under
# bench/results/fs-DATE/. Needs root (mounts, drop_caches). ~15-25 minutes.
set -eu
cd "$(dirname "$0")/.."
PEERS=${PEERS:-../shared/peers}
OUT=${OUT:-bench/results/fs-$(date +%F)}
mkdir -p "$OUT"
./scripts/deps.sh
apt-get install -y fio >/dev/null 2>&1 || true
cargo build --release -p sparefs-tools
bin=$(pwd)/target/release/sparefs

echo "# local directory" >&2
local_dir=$(mktemp -d /var/tmp/fsbench-local.XXXXXX)
"$PEERS/fsbench.sh" "$local_dir" local > "$OUT/local.txt"
rm -rf "$local_dir"

echo "# MooseFS" >&2
if mnt=$("$PEERS/moosefs-up.sh"); then
    "$PEERS/fsbench.sh" "$mnt" moosefs > "$OUT/moosefs.txt" || true
fi
"$PEERS/moosefs-down.sh" --purge || true

echo "# sparefs (sparefs up: 3 metas, 3 chunkservers, ec:2+1)" >&2
. bench/fsbench-sparefs.sh
fsbench_sparefs "$bin" sparefs 7950

python3 - "$OUT" <<'PY'
import sys, os
out = sys.argv[1]
rows, labels = {}, ["local", "moosefs", "sparefs"]
for l in labels:
    path = os.path.join(out, l + ".txt")
    if not os.path.exists(path):
        continue
    for line in open(path):
        parts = line.split()
        if len(parts) == 3:
            rows.setdefault(parts[1], {})[l] = float(parts[2])
lower_better = lambda m: m.endswith("_s") and not m.endswith("_per_s")
lines = ["| metric | local | moosefs | sparefs | sparefs/local | sparefs/moosefs |", "|---|---|---|---|---|---|"]
for m, v in rows.items():
    s = v.get("sparefs")
    def ratio(base):
        b = v.get(base)
        if s is None or not b:
            return "-"
        r = (b / s) if lower_better(m) else (s / b)
        return "%.2f" % r
    fmt = lambda x: "-" if x is None else ("%.1f" % x)
    lines.append("| %s | %s | %s | %s | %s | %s |" % (m, fmt(v.get("local")), fmt(v.get("moosefs")), fmt(s), ratio("local"), ratio("moosefs")))
lines.append("")
lines.append("Ratios above 1 mean sparefs is better (for *_s metrics, times, the ratio is inverted).")
table = "\n".join(lines)
open(os.path.join(out, "table.md"), "w").write(table + "\n")
print(table)
PY
