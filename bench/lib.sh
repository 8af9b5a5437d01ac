# shellcheck shell=bash
# shellcheck disable=SC2034,SC2013,SC2086,SC2206  # as in shared/bench/lib.sh: deliberate word splitting
# Shared helpers for the benchmarks (sourced, not executed). Copied from the anchor
# benchmarks (shared/bench/lib.sh) so bench/http.sh measures exactly as they do.
# Everything lives under $ANCHORS (default /tmp/bulkhead-bench, or $BENCH_DIR);
# nothing is installed as a system service and every process is stopped by its own PID.

ANCHORS=${ANCHORS:-${BENCH_DIR:-/tmp/bulkhead-bench}}
RESULTS=${RESULTS:-$ANCHORS/results.txt}
CLK_TCK=$(getconf CLK_TCK)
NCPU=$(nproc)

mkdir -p "$ANCHORS"

# log: print to stdout and append to the raw results file (args, or stdin if none)
log() { if (($#)); then printf '%s\n' "$*"; else cat; fi | tee -a "$RESULTS"; }
# raw: append only to the raw results file
raw() { cat >> "$RESULTS"; }

die() { echo "error: $*" >&2; exit 1; }

need() { for c in "$@"; do command -v "$c" >/dev/null 2>&1 || die "missing $c (run scripts/deps.sh --bench)"; done; }

port_in_use() { ss -Hltn "sport = :$1" | grep -q .; }

wait_port() { # wait_port PORT [TIMEOUT_S]
  local i n=$(( ${2:-10} * 20 ))
  for ((i = 0; i < n; i++)); do port_in_use "$1" && return 0; sleep 0.05; done
  return 1
}

# stop_pid PID [SIG]: signal one PID, wait up to 10 s for it to go, then SIGKILL it.
stop_pid() {
  local pid=$1 sig=${2:-TERM} i
  [[ -n $pid ]] || return 0
  kill -0 "$pid" 2>/dev/null || return 0
  kill "-$sig" "$pid" 2>/dev/null
  for ((i = 0; i < 200; i++)); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.05; done
  echo "warning: pid $pid did not exit on SIG$sig, sending SIGKILL" >&2
  kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null || true
}

# pid_tree PID: PID and all its descendants (via /proc/*/task/*/children)
pid_tree() {
  local p c
  for p in "$@"; do
    [[ -d /proc/$p ]] || continue
    echo "$p"
    for c in $(cat /proc/"$p"/task/*/children 2>/dev/null); do pid_tree "$c"; done
  done
}

# proc_ticks PID...: CPU clock ticks used so far by the PIDs and their descendants:
# utime+stime of every live process in the tree plus cutime+cstime (children
# that already exited and were reaped, e.g. finished postgres backends).
# The delta of two readings is the CPU the tree used in between.
proc_ticks() {
  local total=0 p f
  for p in $(pid_tree "$@"); do
    f=$(cat /proc/"$p"/stat 2>/dev/null) || continue
    f=${f##*) }                     # drop "pid (comm) "
    set -- $f                       # $1 = field 3 (state), so field N is $((N-2))
    total=$(( total + ${12} + ${13} + ${14} + ${15} ))   # utime stime cutime cstime
  done
  echo "$total"
}

# cpu_snap: "busy0 total0 busy1 total1 ..." per core from /proc/stat
cpu_snap() {
  awk '/^cpu[0-9]/ { idle = $5 + $6; tot = 0; for (i = 2; i <= 9; i++) tot += $i; printf "%d %d ", tot - idle, tot }' /proc/stat
}

# cpu_busy "SNAP_BEFORE" "SNAP_AFTER": "cpu0=NN% cpu1=NN%"
cpu_busy() {
  local -a a=($1) b=($2); local i out=""
  for ((i = 0; i < ${#a[@]}; i += 2)); do
    local db=$(( b[i] - a[i] )) dt=$(( b[i+1] - a[i+1] ))
    (( dt > 0 )) || dt=1
    out+="cpu$((i / 2))=$(( 100 * db / dt ))% "
  done
  echo "${out% }"
}

# us_per TICKS COUNT: CPU microseconds per unit (e.g. per request)
us_per() { awk -v t="$1" -v n="$2" -v hz="$CLK_TCK" 'BEGIN { if (n + 0 <= 0) print "-"; else printf "%.1f", 1e6 * t / hz / n }'; }

# pct TICKS SECONDS: CPU% of one core
pct() { awk -v t="$1" -v s="$2" -v hz="$CLK_TCK" 'BEGIN { if (s <= 0) s = 1; printf "%.0f", 100 * t / hz / s }'; }

# ratio A B -> A/B with 2 decimals
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print "n/a"; else printf "%.2f", a / b }'; }

# start_target_cmd: start $TARGET_CMD (a proxy under test) in the background,
# sets TARGET_PID. It should run in the foreground (no self-daemonising) so the
# PID we hold is the process we later stop.
TARGET_PID=""
start_target_cmd() {
  [[ -n ${TARGET_CMD:-} ]] || return 0
  bash -c "exec $TARGET_CMD" >"$ANCHORS/target.log" 2>&1 &
  TARGET_PID=$!
  echo "started TARGET_CMD as pid $TARGET_PID: $TARGET_CMD (log: $ANCHORS/target.log)"
  sleep "${TARGET_START_WAIT:-1}"
  kill -0 "$TARGET_PID" 2>/dev/null || die "TARGET_CMD exited early, see $ANCHORS/target.log"
}
