#!/bin/sh
# Takeover time of iSCSI failover: kill -9 of the active target to the
# first write acknowledged on the other one, with default settings.
#
# `sparefs up --no-iscsi` and two target processes of this script on
# 127.0.0.1:PORT and 127.0.0.2:PORT (not `up`'s own target: `up` restarts
# a target it lost within a second, and a restarted target takes its own
# image back at once, which is not what a dead host does); an initiator of ours (tests/c/iscsi-writer.c, over
# libiscsi) writes numbered, checksummed 4 KiB blocks with FUA through
# both portals; each round SIGKILLs whichever target is active, waits for
# the writer, then checks that every acknowledged write is on the LUN.
# The killed target is started again after the round and stands by for
# the next one.
#
# Usage: bench/iscsi-failover.sh [ROUNDS] [OUT_DIR]
# Writes OUT_DIR/results.md (default bench/results/iscsi-failover-DATE);
# KEEP=1 keeps the work directory (logs) for a look afterwards.
set -e
cd "$(dirname "$0")/.."
ROUNDS=${1:-10}
OUT=${2:-bench/results/iscsi-failover-$(date +%Y-%m-%d)}
PORT=${PORT:-3281}
UP_PORT=${UP_PORT:-7480}
mkdir -p "$OUT"
./scripts/deps.sh
cargo build --release -p sparefs-tools >/dev/null
S=$PWD/target/release/sparefs
WORK=$(mktemp -d)
cc -O2 -o "$WORK/iscsi-writer" tests/c/iscsi-writer.c -liscsi
W=$WORK/iscsi-writer

cleanup() {
    [ -n "$T1" ] && kill "$T1" 2>/dev/null || true
    [ -n "$T2" ] && kill "$T2" 2>/dev/null || true
    [ -n "$UP" ] && kill "$UP" 2>/dev/null || true
    sleep 2
    umount -l "$WORK/d/mnt" 2>/dev/null || true
    [ -n "$KEEP" ] || rm -rf "$WORK"
}
trap cleanup EXIT

"$S" up --data "$WORK/d" --port "$UP_PORT" --no-iscsi >"$WORK/up.log" 2>&1 &
UP=$!
for _ in $(seq 1 120); do grep -q ready "$WORK/up.log" && break; sleep 1; done
grep -q ready "$WORK/up.log" || { cat "$WORK/up.log"; exit 1; }
META=$(python3 -c "import json;print(','.join(m['address'] for m in json.load(open('$WORK/d/cluster.json'))['meta']))")
export SPAREFS_META=$META SPAREFS_TLS=$WORK/d/tls/admin
start_t() {
    "$S" --tls "$WORK/d/tls/iscsi" iscsi serve --meta "$META" --listen "127.0.0.$1:$PORT" \
        >>"$WORK/t$1.log" 2>&1 &
    eval "T$1=\$!"
}
start_t 1
start_t 2
"$S" image create /images/failover.img --size 64M >/dev/null
LUN=$("$S" iscsi export /images/failover.img 2>/dev/null | awk '{print $NF}')
IQN=iqn.2026-12.org.sparefs:default
U1=iscsi://127.0.0.1:$PORT/$IQN/$LUN
U2=iscsi://127.0.0.2:$PORT/$IQN/$LUN

active() {
    "$S" iscsi list --json | python3 -c "
import json,sys
v=json.load(sys.stdin)
for e in v['exports']:
    for l in e['luns']:
        if l['lun']==$LUN: print(l['active'] or '')"
}

echo "| round | killed | kill to first acked write on the survivor (ms) | writer saw the failure until it resumed (ms) | acked writes | lost |" >"$WORK/rows.md"
echo "|---|---|---|---|---|---|" >>"$WORK/rows.md"
for r in $(seq 1 "$ROUNDS"); do
    # Both targets up, one active, one standing by.
    for _ in $(seq 1 100); do
        n=$("$S" iscsi list --json | python3 -c "import json,sys;print(sum(1 for t in json.load(sys.stdin)['targets'] if t['up']))")
        a=$(active)
        [ "$n" = 2 ] && [ -n "$a" ] && break
        sleep 0.2
    done
    A=$(active)
    case "$A" in
        "127.0.0.1:$PORT") P=$T1; N=1 ;;
        "127.0.0.2:$PORT") P=$T2; N=2 ;;
        *) echo "no active target: $A"; exit 1 ;;
    esac
    "$W" write "$U1,$U2" 512 10 "$r" >"$WORK/w$r.out" 2>"$WORK/w$r.err" &
    WP=$!
    sleep 3
    KILL_MS=$(python3 -c "import time;print(int(time.monotonic()*1000))")
    kill -9 "$P"
    wait "$WP" || true
    wait "$P" 2>/dev/null || true
    "$W" verify "iscsi://$(active)/$IQN/$LUN" 512 >"$WORK/v$r.out"
    python3 - "$WORK/w$r.out" "$WORK/v$r.out" "$r" "$A" "$KILL_MS" >>"$WORK/rows.md" <<'EOF'
import sys
w, v, r, killed, kill_ms = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
last, acks, resumed, gap, start = {}, 0, None, None, 0
for l in open(w):
    p = l.split()
    if p[0] == "start":
        start = int(p[1])
    elif p[0] == "ack":
        last[int(p[2])] = int(p[1]); acks += 1
    elif p[0] == "resumed" and resumed is None and start + int(p[2]) > kill_ms:
        # (A resumption before the kill is the writer finding the active
        # portal at its start.)
        resumed, gap = int(p[2]), int(p[4])
found = {}
for l in open(v):
    p = l.split()
    if len(p) == 4:
        found[int(p[1])] = (int(p[2]), int(p[3]))
lost = sum(1 for b, s in last.items() if found.get(b) != (r, s))
kill_to_io = start + resumed - kill_ms if resumed is not None else "never"
print(f"| {r} | {killed} | {kill_to_io} | {gap} | {acks} | {lost} |")
EOF
    tail -1 "$WORK/rows.md"
    start_t "$N"
done
{
    echo "# iSCSI failover: takeover time ($(date -u +%Y-%m-%dT%H:%MZ))"
    echo
    echo "\`bench/iscsi-failover.sh $ROUNDS\` on $(nproc) cores: \`sparefs up --no-iscsi\` (3 metas, 3 chunkservers,"
    echo "ec:2+1, TLS) and two target processes; default lease settings (renew 0.5 s, holder stops 2.5 s after its last"
    echo "renewal, standby takes over 3 s after it last saw one). Writer: q1 4 KiB FUA writes, SYNCHRONIZE"
    echo "CACHE every 16th, libiscsi command timeout 3 s. Kill to first write: from SIGKILL of the active"
    echo "target to the first write acknowledged by the survivor (both on CLOCK_MONOTONIC). Lost:"
    echo "acknowledged writes not found on the LUN afterwards."
    echo
    cat "$WORK/rows.md"
} >"$OUT/results.md"
cat "$OUT/results.md"
