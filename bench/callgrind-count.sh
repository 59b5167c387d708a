# Sourced by bench/*-instructions.sh: counts what a process under
# `valgrind --tool=callgrind --callgrind-out-file=PREFIX.%p` spends on one
# workload, with what it spends idle (timers) taken out.
#   count_workload PID PREFIX N UNIT LABEL COMMAND...
# runs COMMAND (N operations of UNIT) and prints LABEL's instructions per
# operation. Callgrind's counts do not move with the machine's load.
command -v valgrind >/dev/null || apt-get install -y -q valgrind >/dev/null

# Runs a command without its output.
quiet() { "$@" >/dev/null; }

# Total instructions of a callgrind dump.
callgrind_ir() { awk '/^(summary|totals):/ { print $2; exit }' "$1"; }

count_workload() {
    cw_pid=$1 cw_prefix=$2 cw_n=$3 cw_unit=$4 cw_label=$5
    shift 5
    # Idle: what timers cost per second, to take out of the loaded count.
    callgrind_control -z "$cw_pid" >/dev/null 2>&1
    sleep 10
    callgrind_control -d idle "$cw_pid" >/dev/null 2>&1
    cw_t0=$(date +%s.%N)
    callgrind_control -z "$cw_pid" >/dev/null 2>&1
    "$@"
    callgrind_control -d load "$cw_pid" >/dev/null 2>&1
    cw_t1=$(date +%s.%N)
    cw_idle=$(callgrind_ir "$(ls "$cw_prefix".*.1 | head -1)")
    cw_load=$(callgrind_ir "$(ls "$cw_prefix".*.2 | head -1)")
    awk -v b="$cw_label" -v i="$cw_idle" -v l="$cw_load" -v t0="$cw_t0" -v t1="$cw_t1" \
        -v n="$cw_n" -v u="$cw_unit" 'BEGIN {
        secs = t1 - t0; ticks = i / 10 * secs;
        printf "%s: %.0f instructions/%s (%d in %.0f s; idle %.0f instructions/s taken out)\n",
            b, (l - ticks) / n, u, n, secs, i / 10 }'
}
