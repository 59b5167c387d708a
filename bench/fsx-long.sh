#!/bin/sh
# Long fsx-rs runs with every operation (tests/fsx/all-ops.toml) through a
# mounted sparefs, several seeds at once, while background programs write,
# read, copy and delete other files on the same mount.
#   bench/fsx-long.sh MOUNTDIR [OPS] [SEEDS...]
# Defaults: 1,000,000 operations, seeds 1 2 3. Prints one line per seed and
# exits non-zero if any failed; artifacts (the failing op log) go to
# MOUNTDIR/../fsx-artifacts. Start a cluster first, e.g. `sparefs up`.
# Room: three seeds and the load leave ~13 GB of replaced fragments a
# cluster may collect only after its --gc-grace (600 s by default); with
# less free space than that above the chunkservers' --reserve, writes end
# in ENOSPC (which fsx-rs answers with a panic). Start the cluster with
# `--gc-grace 120`, or on a disk with room.
set -u
mnt=${1:?usage: bench/fsx-long.sh MOUNTDIR [OPS] [SEEDS...]}
ops=${2:-1000000}
shift 2 2>/dev/null || shift $#
seeds=${*:-1 2 3}
here=$(cd "$(dirname "$0")/.." && pwd)
work="$mnt/fsx-long.$$"
# fsx-rs 0.3.2 never unmaps what a MAPREAD mapped: each one keeps a mapping
# until the process ends. Every truncate and hole punch then walks all of
# them (a run of 1,000,000 operations slowed from 155 to 55 operations/s per
# seed by 500,000), and past vm.max_map_count (65,530 by default: about
# 330,000 operations) mmap fails with ENOMEM, on any file system. Long runs
# use a copy with the missing munmap (tests/fsx/fsx-0.3.2-mapread-munmap.patch),
# built once under target/.
patched_fsx() {
    bin="$here/target/fsx-patched/bin/fsx"
    if [ ! -x "$bin" ]; then
        src=$(ls -d "$HOME"/.cargo/registry/src/*/fsx-0.3.2 2>/dev/null | head -1)
        [ -n "$src" ] || { "$here/scripts/deps.sh" >&2 && src=$(ls -d "$HOME"/.cargo/registry/src/*/fsx-0.3.2 | head -1); }
        # Built outside the workspace (cargo would take it for a member).
        build=$(mktemp -d /tmp/fsx-patched.XXXXXX)
        cp -r "$src" "$build/fsx" &&
            patch -s -d "$build/fsx" -p1 <"$here/tests/fsx/fsx-0.3.2-mapread-munmap.patch" &&
            cargo install -q --path "$build/fsx" --root "$here/target/fsx-patched" >&2
        rc=$?
        rm -rf "$build"
        [ $rc -eq 0 ] || return 1
    fi
    echo "$bin"
}
fsx=${FSX:-$(patched_fsx)} || { echo "fsx-long: could not build the patched fsx-rs" >&2; exit 1; }
art="$(dirname "$mnt")/fsx-artifacts"
mkdir -p "$work/load" "$art"
# Background load: 4 MiB written and synced, read back, copied and deleted,
# and a tree copied in and removed, in a loop.
(
    while [ ! -e "$work/stop" ]; do
        dd if=/dev/urandom of="$work/load/big" bs=1M count=4 conv=fsync status=none
        cat "$work/load/big" >/dev/null
        cp "$work/load/big" "$work/load/big.copy" && rm -f "$work/load/big.copy"
        cp -r /usr/share/doc/apt "$work/load/tree" 2>/dev/null; rm -rf "$work/load/tree"
        sleep 0.2
    done
) &
load=$!
start=$(date +%s)
pids=""
for s in $seeds; do
    ( "$fsx" -f "$here/tests/fsx/all-ops.toml" -N "$ops" -S "$s" -P "$art" "$work/f$s" \
        >"$art/seed-$s.log" 2>&1; echo $? >"$art/seed-$s.rc" ) &
    pids="$pids $!"
done
wait $pids
touch "$work/stop"
wait $load
fail=0
for s in $seeds; do
    rc=$(cat "$art/seed-$s.rc")
    if [ "$rc" = 0 ] && grep -q "A-OK" "$art/seed-$s.log"; then
        echo "seed $s: $ops operations, A-OK"
    else
        echo "seed $s: FAILED (rc $rc), last lines:"; tail -5 "$art/seed-$s.log"; fail=1
    fi
done
echo "fsx-long: seeds [$seeds] x $ops operations in $(( $(date +%s) - start )) s under load"
rm -rf "$work"
exit $fail
