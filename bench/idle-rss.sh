#!/usr/bin/env bash
# Idle keep-alive memory: the RSS of each proxy before and after N (10,000) client connections that each
# completed one request and then stay open and idle, and the KiB each connection added.
#   nginx    reverse proxy on 127.0.0.1:18082 (the anchor config, worker_connections raised)
#   haproxy  127.0.0.1:18083 (the anchor config, maxconn raised)
#   bulkhead 127.0.0.1:18090 (the bench/http.sh config)
# all in front of the upstream nginx on 127.0.0.1:18081 (bench/upstream-nginx.sh); one proxy at a time.
# Target: bulkhead <= 40 MiB RSS in total with the connections open (ARCHITECTURE.md: <= 0.5 KiB/connection;
# nginx 1.22 measured ~0.64, HAProxy 2.6 ~1.24 KiB/connection). The clients come in two batches of N/2, so that
# the slope (the cost of one more idle connection) shows apart from the first burst's one-off costs.
#
# usage: bench/idle-rss.sh     needs scripts/deps.sh --bench and a normal build (scripts/build.sh normal)
# Env (defaults): N=10000 TARGETS="nginx haproxy bulkhead" BULKHEAD_BIN=build/proxy/bulkhead PROXY_WORKERS=1
#   SETTLE=2 (seconds between the last response and the "after" reading) BENCH_DIR=/tmp/bulkhead-bench
#   RESULTS=$BENCH_DIR/results.txt
# RSS = VmRSS summed over the proxy's process tree (nginx: master + workers); PSS (smaps_rollup) alongside,
# which does not double-count pages shared between nginx's master and workers.
# shellcheck disable=SC2059  # the row format is a variable on purpose
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/lib.sh
source "$here/lib.sh"
need nginx haproxy curl ss awk

N=${N:-10000}
TARGETS=${TARGETS:-"nginx haproxy bulkhead"}
PROXY_WORKERS=${PROXY_WORKERS:-1}
SETTLE=${SETTLE:-2}
UP_PORT=${UPSTREAM_PORT:-18081}
BULKHEAD_BIN=${BULKHEAD_BIN:-$BENCH_REPO/build/proxy/bulkhead}
TARGET_MIB=40

# Every proxy needs N client sockets + upstream sockets + its own: raise the limit for this shell and children.
raise_nofile
(( $(ulimit -n) >= N + 1000 )) || die "ulimit -n is $(ulimit -n); need at least $((N + 1000)) (run as root)"

dir=$ANCHORS/idle-rss
mkdir -p "$dir/tmp"
UP_PID="" PX_PID=""
cleanup() {
  trap - EXIT INT TERM
  [[ -n ${CLIENT_PID:-} ]] && kill "$CLIENT_PID" 2>/dev/null
  [[ -n ${CLIENT2_PID:-} ]] && kill "$CLIENT2_PID" 2>/dev/null
  stop_pid "$PX_PID"
  stop_pid "$UP_PID"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ports_free 18082 18083 18090 18091
UP_PID=$("$here/upstream-nginx.sh" | tail -n1) || die "upstream failed to start"

# rss_kib PID: "RSS_KiB PSS_KiB" summed over the process tree
rss_kib() {
  local r=0 s=0 p v
  for p in $(pid_tree "$1"); do
    v=$(awk '/^VmRSS:/ { print $2 }' /proc/"$p"/status 2>/dev/null) && r=$((r + ${v:-0}))
    v=$(awk '/^Pss:/ { print $2 }' /proc/"$p"/smaps_rollup 2>/dev/null) && s=$((s + ${v:-0}))
  done
  echo "$r $s"
}

start_proxy() { # start_proxy NAME -> PX_PID, PX_PORT
  case $1 in
    nginx)
      PX_PORT=18082
      nginx_conf "$dir" nginx-proxy "$PROXY_WORKERS" $((N + 4096)) "$(nginx_proxy_body $PX_PORT "$UP_PORT")" \
        "worker_rlimit_nofile 65536;" > "$dir/nginx-proxy.conf"
      nginx_start PX_PID "$dir" nginx-proxy ;;
    haproxy)
      PX_PORT=18083
      # haproxy wants 2 fds per maxconn; client sockets dominate here (http-reuse always), so cap it at our limit
      haproxy_conf $PX_PORT "$PROXY_WORKERS" $((N + 100)) "    server up 127.0.0.1:$UP_PORT" "" \
        "    ulimit-n $(ulimit -n)
    no strict-limits" 120s > "$dir/haproxy.cfg"
      haproxy_start PX_PID "$dir/haproxy.cfg" "$dir/haproxy.log" ;;
    bulkhead)
      PX_PORT=18090
      [[ -x $BULKHEAD_BIN ]] || { echo "no binary at $BULKHEAD_BIN" >&2; return 1; }
      bulkhead_conf bench/idle-rss.sh "$PROXY_WORKERS" $PX_PORT 18091 off \
        "$(bulkhead_proxy_body "\"127.0.0.1:$UP_PORT\"")" "  keepalive_timeout: 120s" > "$dir/bulkhead.yaml"
      bulkhead_start PX_PID "$BULKHEAD_BIN" "$dir/bulkhead.yaml" "$dir/bulkhead.log" || return 1 ;;
    *) echo "unknown target $1" >&2; return 1 ;;
  esac
  wait_port "$PX_PORT" 10 || { echo "$1 did not listen on :$PX_PORT (logs in $dir)" >&2; return 1; }
  local why
  why=$(body_problem "http://127.0.0.1:$PX_PORT")
  [[ -z $why ]] || { echo "$1: $why" >&2; return 1; }
}

{
  echo "=================================================================="
  bench_id bench/idle-rss.sh
  echo "$N idle keep-alive client connections, each after one GET /; proxy workers/threads: $PROXY_WORKERS; ulimit -n $(ulimit -n)"
} | log
fmt='%-9s %7s %7s %11s %11s %11s %11s %9s  %s'
log "$(printf "$fmt" target conns failed rss_before rss_after pss_before pss_after KiB/conn note)"
declare -A after_kib slope_kib
for t in $TARGETS; do
  PX_PID=""
  if ! start_proxy "$t"; then
    stop_pid "$PX_PID"; PX_PID=""
    log "$(printf "$fmt" "$t" - - - - - - - "did not start")"
    continue
  fi
  sleep 0.5
  read -r rb pb <<<"$(rss_kib "$PX_PID")"
  # Two batches of N/2: the first pays the proxy's one-off costs of a burst (buffers, upstream
  # connections, caches grown to the window of concurrent requests); the second shows what one more
  # idle connection costs (the slope).
  half=$((N / 2))
  { coproc CLA { exec /usr/bin/python3 "$here/idle-clients.py" 127.0.0.1 "$PX_PORT" "$half"; }; } 2>/dev/null
  CLIENT_PID=$CLA_PID
  exec {a_out}<&"${CLA[0]}" {a_in}>&"${CLA[1]}"   # keep our own copies: bash drops CLA[] when it exits
  ready=""
  read -r -t 300 ready <&"$a_out" || ready=""
  read -r _ ok1 failed1 secs1 <<<"$ready"
  sleep "$SETTLE"
  read -r rh _ <<<"$(rss_kib "$PX_PID")"
  { coproc CLB { exec /usr/bin/python3 "$here/idle-clients.py" 127.0.0.1 "$PX_PORT" "$((N - half))"; }; } 2>/dev/null
  CLIENT2_PID=$CLB_PID
  exec {b_out}<&"${CLB[0]}" {b_in}>&"${CLB[1]}"
  ready=""
  read -r -t 300 ready <&"$b_out" || ready=""
  read -r _ ok2 failed2 secs2 <<<"$ready"
  sleep "$SETTLE"
  read -r ra pa <<<"$(rss_kib "$PX_PID")"
  estab=$(ss -Htn state established "( sport = :$PX_PORT )" | wc -l)
  ok=$(( ${ok1:-0} + ${ok2:-0} )); failed=$(( ${failed1:-0} + ${failed2:-0} ))
  done_line="" done2=""
  echo quit >&"$a_in"; read -r -t 60 done_line <&"$a_out" || true
  echo quit >&"$b_in"; read -r -t 60 done2 <&"$b_out" || true
  exec {a_in}>&- {a_out}<&- {b_in}>&- {b_out}<&-
  wait "$CLIENT_PID" "$CLIENT2_PID" 2>/dev/null
  CLIENT_PID="" CLIENT2_PID=""
  per=$(awk -v a="$ra" -v b="$rb" -v n="$ok" 'BEGIN { if (n + 0 <= 0) print "-"; else printf "%.2f", (a - b) / n }')
  slope=$(awk -v a="$ra" -v h="$rh" -v n="${ok2:-0}" 'BEGIN { if (n + 0 <= 0) print "-"; else printf "%.2f", (a - h) / n }')
  after_kib[$t]=$ra
  slope_kib[$t]=$slope
  note="slope $slope KiB/conn (rss at $half: $rh); open ${secs1:-?}+${secs2:-?}s; established at reading: $estab; ${done_line#DONE }"
  log "$(printf "$fmt" "$t" "$ok" "$failed" "$rb" "$ra" "$pb" "$pa" "$per" "$note")"
  stop_pid "$PX_PID"; PX_PID=""
  sleep 1
done
{
  echo "columns: rss/pss in KiB summed over the proxy's processes; KiB/conn = (rss_after - rss_before) / conns;"
  echo "  slope = (rss_after - rss at N/2) / (N/2): one more idle connection, without the first burst's one-off costs"
  for t in $TARGETS; do
    [[ -n ${slope_kib[$t]:-} ]] && echo "  $t: ${slope_kib[$t]} KiB per additional idle connection (target for bulkhead: <= 0.5)"
  done
  if [[ -n ${after_kib[bulkhead]:-} ]]; then
    awk -v k="${after_kib[bulkhead]}" -v lim="$TARGET_MIB" 'BEGIN { m = k / 1024
      printf "bulkhead total RSS with the connections open: %.1f MiB (target <= %d MiB): %s\n", m, lim, (m <= lim ? "MET" : "MISSED") }'
  else
    echo "bulkhead: not measured"
  fi
  echo "results appended to $RESULTS"
} | log
