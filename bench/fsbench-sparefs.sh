# Sourced by the bench scripts: fsbench_sparefs BIN LABEL PORT runs
# ../shared/peers/fsbench.sh through a fresh `sparefs up` mount (3 metas,
# 3 chunkservers, ec:2+1) made by BIN, writing $OUT/LABEL.txt (figures)
# and $OUT/LABEL.up.log, then stops it and removes its data.
fsbench_sparefs() {
    data=$(mktemp -d /var/tmp/sparefs-bench.XXXXXX)
    "$1" up --data "$data" --port "$3" > "$OUT/$2.up.log" 2>&1 &
    up=$!
    i=0
    until grep -q ready "$OUT/$2.up.log"; do
        i=$((i + 1)); [ $i -lt 600 ] || { echo "sparefs up ($2) did not get ready" >&2; kill $up; exit 1; }
        sleep 0.1
    done
    "$PEERS/fsbench.sh" "$data/mnt" "$2" > "$OUT/$2.txt" || true
    kill -TERM $up; wait $up || true
    rm -rf "$data"
}
