#!/bin/sh
# Instructions a mount (`sparefs mount`: the FUSE adapter and the client
# library) spends on a fixed file workload, counted by callgrind, for one
# or more builds of `sparefs`. Every build mounts the same cluster (started
# with the first build by `sparefs up`) and gets the same requests, so two
# builds of the client compare without the noise of a shared machine's
# clock. The companion of bench/meta-instructions.sh.
#   bench/mount-instructions.sh [--files N] BIN...
# Prints, per build: instructions per operation of the workload (creates
# with a 16 KiB write, stats, whole-file reads, unlinks, and one 32 MiB file
# written and read in 1 MiB calls), with the idle rate (lease renewals)
# taken out.
set -eu
files=500
if [ "${1:-}" = "--files" ]; then files=$2; shift 2; fi
[ $# -ge 1 ] || { echo "usage: $0 [--files N] SPAREFS_BIN..." >&2; exit 2; }
. "$(cd "$(dirname "$0")" && pwd)/callgrind-count.sh"
work=$(mktemp -d /tmp/mount-instr.XXXXXX)
port=7680
"$1" up --data "$work/cluster" --port $port --metas 1 >"$work/up.log" 2>&1 &
up=$!
trap 'kill $up 2>/dev/null; wait $up 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 120); do grep -q "sparefs ready" "$work/up.log" && break; sleep 0.5; done
grep -q "sparefs ready" "$work/up.log" || { cat "$work/up.log"; exit 1; }
meta=$(sed -n 's/.*sparefs:\([^ ]*\) on .*/\1/p' /proc/mounts | head -1)
[ -n "$meta" ] || meta=127.0.0.11:$port
workload() {
    python3 - "$1" "$files" <<'EOF'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
os.mkdir(d)
blob = bytes(range(256)) * 64
for i in range(n):
    with open(f"{d}/f{i}", "wb") as f:
        f.write(blob)
for i in range(n):
    os.stat(f"{d}/f{i}")
for i in range(n):
    with open(f"{d}/f{i}", "rb") as f:
        assert f.read() == blob
mib = bytes(range(256)) * 4096
with open(f"{d}/big", "wb") as f:
    for _ in range(32):
        f.write(mib)
    os.fsync(f.fileno())
with open(f"{d}/big", "rb") as f:
    while f.read(1 << 20):
        pass
for i in range(n):
    os.unlink(f"{d}/f{i}")
os.unlink(f"{d}/big")
os.rmdir(d)
EOF
}
k=0
for bin in "$@"; do
    k=$((k + 1))
    mnt="$work/m$k"
    mkdir -p "$mnt"
    valgrind --tool=callgrind --callgrind-out-file="$work/cg$k.%p" \
        "$bin" mount --meta "$meta" "$mnt" >"$work/mount$k.log" 2>&1 &
    vg=$!
    for _ in $(seq 240); do grep -q " $mnt fuse" /proc/mounts && break; sleep 0.5; done
    stat "$mnt" >/dev/null
    count_workload "$vg" "$work/cg$k" $((4 * files + 2)) operation "$bin" workload "$mnt/w$k"
    umount "$mnt"
    wait "$vg" 2>/dev/null || true
done
