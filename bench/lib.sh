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

# ==========================================================================================================
# Below: helpers shared by bench/http.sh, bench/resilience.sh, bench/sql.sh and bench/idle-rss.sh (not in
# shared/bench/lib.sh). The config writers print to stdout; the configs they print are the ones the scripts
# wrote inline before, so the figures stay comparable with earlier runs.

BENCH_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# bench_id SCRIPT: "SCRIPT <date> host=<host> cpus=<n> git=<short commit>" for a run's header
bench_id() {
  echo "$1 $(date -Is) host=$(hostname) cpus=$NCPU git=$(git -C "$BENCH_REPO" rev-parse --short HEAD 2>/dev/null || echo -)"
}

# raise_nofile: ulimit -n 65536 (or the hard limit) for this shell and its children
raise_nofile() { ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"; }

# ports_free PORT...: die when one of them is already listened on
ports_free() { local p; for p in "$@"; do port_in_use "$p" && die "port $p already in use"; done; return 0; }

# wait_port_free PORT [TIMEOUT_S]: wait until nothing listens on PORT (after stopping its owner)
wait_port_free() {
  local i n=$(( ${2:-10} * 20 ))
  for ((i = 0; i < n; i++)); do port_in_use "$1" || return 0; sleep 0.05; done
  return 1
}

# kv KEY LINE: the value of KEY in a "RESULT k=v k=v ..." line
kv() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }

# elapsed T0 T1: seconds between two `date +%s%N` readings, 3 decimals
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", (b - a) / 1e9 }'; }

# tcp_opens: TCP active opens of the host so far (/proc/net/snmp)
tcp_opens() { awk '/^Tcp:/ { if (h) print $6; h = 1 }' /proc/net/snmp; }

# copy_bin SRC DEST: run a copy of the binary, so a rebuild during the run changes nothing
copy_bin() {
  [[ -x $1 ]] || die "no bulkhead binary at $1 (scripts/build.sh normal)"
  cp -f "$1" "$2" || die "cannot copy $1"
}

# bin_id BIN COPY: "BIN (mtime, sha256 of COPY)"
bin_id() { echo "$1 ($(date -r "$1" -Is), sha256 $(sha256sum < "$2" | cut -c1-12))"; }

# body_problem URL [16k]: "" when URL/ answers "hello" (and, with 16k, URL/16k has 16384 bytes), else why not
body_problem() {
  local b n
  b=$(curl -fsS --max-time 3 "$1/" 2>&1) || { echo "GET / failed: $b"; return; }
  [[ $b == hello ]] || { echo "GET / returned '${b:0:80}'"; return; }
  [[ ${2:-} == 16k ]] || return 0
  n=$(curl -fsS --max-time 3 "$1/16k" | wc -c)
  [[ $n == 16384 ]] || echo "GET /16k returned $n bytes"
}

# check_hello URL NAME: die unless URL/ answers "hello"
check_hello() { local why; why=$(body_problem "$1"); [[ -z $why ]] || die "$2: $why"; }

# wrk_report_lua FILE: the wrk script of shared/bench/http-anchors.sh, printing one RESULT line
wrk_report_lua() {
  cat > "$1" <<'LUA'
done = function(summary, latency, requests)
  local s = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_s=%.3f rps=%.1f p50_us=%d p90_us=%d p99_us=%d p999_us=%d max_us=%d errors=%d\n",
    summary.requests, s, summary.requests / s,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max,
    e.connect + e.read + e.write + e.status + e.timeout))
end
LUA
}

# wrk_measure OUT UP_PID PROXY_PID WRK_ARGS...: run `wrk WRK_ARGS...` (output into OUT, its user/sys seconds
# into OUT.time) and read the CPU accounting around it, as shared/bench/http-anchors.sh does. Sets
#   M_EL   seconds the run took          M_WCPU  wrk CPU, % of one core
#   M_UT   upstream ticks used (UP_PID)  M_PT    proxy ticks used (PROXY_PID; 0 when empty)
#   M_S0 M_S1  cpu_snap before / after   M_OPENS TCP active opens of the host during the run
#   M_RESULT the RESULT line; M_RPS M_P50 M_P99 M_ERR M_NREQ from it (0 and err=fail without one)
wrk_measure() {
  local out=$1 up=$2 px=$3 u0=0 u1=0 p0=0 p1=0 o0 o1 t0 t1 TIMEFORMAT='%U %S'
  shift 3
  M_S0=$(cpu_snap); [[ -n $up ]] && u0=$(proc_ticks "$up"); [[ -n $px ]] && p0=$(proc_ticks "$px")
  o0=$(tcp_opens); t0=$(date +%s%N)
  { time wrk "$@" >"$out" 2>&1; } 2>"$out.time"
  t1=$(date +%s%N); o1=$(tcp_opens)
  M_S1=$(cpu_snap); [[ -n $up ]] && u1=$(proc_ticks "$up"); [[ -n $px ]] && p1=$(proc_ticks "$px")
  M_EL=$(elapsed "$t0" "$t1")
  M_WCPU=$(awk -v el="$M_EL" '{ printf "%.0f", 100 * ($1 + $2) / el }' "$out.time")
  M_UT=$((u1 - u0)) M_PT=$((p1 - p0)) M_OPENS=$((o1 - o0))
  M_RESULT=$(grep '^RESULT' "$out")
  M_RPS=$(kv rps "$M_RESULT") M_P50=$(kv p50_us "$M_RESULT") M_P99=$(kv p99_us "$M_RESULT")
  M_ERR=$(kv errors "$M_RESULT") M_NREQ=$(kv requests "$M_RESULT")
  [[ -n $M_RPS ]] || { M_RPS=0 M_P50=0 M_P99=0 M_ERR=fail M_NREQ=0; }
}

# --- nginx -------------------------------------------------------------------------------------------------
# nginx_conf DIR NAME WORKERS WORKER_CONNECTIONS HTTP_BODY [MAIN_LINES]: an nginx running in the foreground
# (daemon off, so the PID we hold is the master), pid DIR/NAME.pid, error log DIR/NAME.error.log, temp paths
# under DIR/tmp, access log off, keep-alive effectively unlimited; HTTP_BODY goes inside http { }.
nginx_conf() {
  cat <<CONF
daemon off;
worker_processes $3;${6:+
$6}
pid $1/$2.pid;
error_log $1/$2.error.log warn;
events { worker_connections $4; multi_accept on; }
http {
    access_log off;
    tcp_nodelay on;
    keepalive_timeout 65s;
    keepalive_requests 10000000;
    client_body_temp_path $1/tmp/body;
    proxy_temp_path $1/tmp/proxy;
    fastcgi_temp_path $1/tmp/fastcgi;
    uwsgi_temp_path $1/tmp/uwsgi;
    scgi_temp_path $1/tmp/scgi;
$5
}
CONF
}

# nginx_proxy_body PORT UP_PORT: the anchor reverse proxy of shared/bench/http-anchors.sh (upstream keepalive 64)
nginx_proxy_body() {
  cat <<CONF
    upstream up {
        server 127.0.0.1:$2;
        keepalive 64;
        keepalive_requests 10000000;
        keepalive_timeout 60s;
    }
    server {
        listen 127.0.0.1:$1 backlog=4096;
        location / {
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
CONF
}

# nginx_start VAR DIR NAME: start nginx with DIR/NAME.conf in the background; its master PID goes into VAR
nginx_start() {
  mkdir -p "$2/tmp"
  nginx -p "$2" -c "$2/$3.conf" -e "$2/$3.error.log" &
  printf -v "$1" '%s' "$!"
}

# --- haproxy -----------------------------------------------------------------------------------------------
# haproxy_conf PORT NBTHREAD MAXCONN BACKEND_LINES [DEFAULTS_LINES] [GLOBAL_LINES] [CLIENT_TIMEOUT] [BIND_OPTIONS]:
# the anchor haproxy of shared/bench/http-anchors.sh (http-reuse always, 60s timeouts; CLIENT_TIMEOUT sets the
# client and keep-alive ones), one frontend on 127.0.0.1:PORT (BIND_OPTIONS appended to its bind line, e.g.
# "ssl crt FILE"), backend "be" made of BACKEND_LINES.
haproxy_conf() {
  cat <<CONF
global
    nbthread $2
    maxconn $3${6:+
$6}
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client ${7:-60s}
    timeout server 60s
    timeout http-keep-alive ${7:-60s}${5:+
$5}
frontend fe
    bind 127.0.0.1:$1 backlog 4096${8:+ $8}
    default_backend be
backend be
$4
CONF
}

# haproxy_start VAR CFG LOG: start haproxy -db (foreground) with CFG in the background; its PID goes into VAR
haproxy_start() {
  haproxy -db -f "$2" > "$3" 2>&1 &
  printf -v "$1" '%s' "$!"
}

# --- bulkhead ----------------------------------------------------------------------------------------------
# bulkhead_conf GENERATOR WORKERS PORT ADMIN_PORT ACCESS BODY [LIMITS_LINES]: a bulkhead config as the benches
# run it: one listener on 127.0.0.1:PORT, limits.max_connections 20000 (plus LIMITS_LINES), admin on
# 127.0.0.1:ADMIN_PORT, log level warn, log.access ACCESS ("off", "stdout" or a file), then BODY (the
# upstreams or databases, and the routes).
bulkhead_conf() {
  cat <<CONF
# generated by $1
workers: $2
listeners:
  - name: bench
    address: "127.0.0.1:$3"
limits:
  max_connections: 20000${7:+
$7}
admin:
  address: "127.0.0.1:$4"
log:
  level: warn
  access: "$5"
$6
CONF
}

# bulkhead_proxy_body ENDPOINTS [UPSTREAM_LINES]: upstream "origin" (ENDPOINTS = the inside of a flow list,
# e.g. "127.0.0.1:18081"), pool max_connections 256 / max_idle 256, plus UPSTREAM_LINES (more keys
# of the upstream, indented by 4); route / -> origin
bulkhead_proxy_body() {
  cat <<CONF
upstreams:
  origin:
    endpoints: [ $1 ]
    pool:
      max_connections: 256
      max_idle: 256${2:+
$2}
routes:
  - match: { path_prefix: / }
    upstream: origin
CONF
}

# bulkhead_start VAR BIN CONF LOG: check CONF with BIN --check, then start BIN -c CONF in the background (its
# PID goes into VAR); returns 1, with the reason on stderr, when the check fails
bulkhead_start() {
  local out
  out=$("$2" --check "$3" 2>&1) || { echo "bulkhead --check $3: $out" >&2; return 1; }
  "$2" -c "$3" > "$4" 2>&1 &
  printf -v "$1" '%s' "$!"
}
