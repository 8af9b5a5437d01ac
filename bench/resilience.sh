#!/usr/bin/env bash
# Resilience benchmark (issue 3), in the style of bench/http.sh (same lib.sh helpers, /proc CPU accounting,
# wrk lua report), everything on loopback, every process started here stopped by PID on exit.
#
# Part 1 "overhead": the happy-path cost of the resilience pipeline. wrk -t$THREADS -c64 GET / (6-byte body),
# $DURATION per run, $REPS rounds; in each round bare and full alternate in order (odd rounds bare first, even
# rounds full first), HAProxy is the anchor of the same round:
#   upstream  nginx                    127.0.0.1:18081  (bench/upstream-nginx.sh)
#   haproxy   haproxy, as bench/http.sh 127.0.0.1:18096  (http-reuse always, nbthread 1)
#   bare      bulkhead                 127.0.0.1:18092  retry.attempts 1 (on: []), breaker triggers off
#             (consecutive_failures 0, failure_rate 0), outlier off: the pipeline runs but never acts
#   full      bulkhead                 127.0.0.1:18094  retry attempts 3 on [connect-failure,
#             reset-before-response, gateway-error], budget 20% + 10/s, breaker and outlier with their
#             documented defaults (written out explicitly)
#   Both bulkheads: 1 worker, one upstream 127.0.0.1:18081, balance round_robin, pool 256/256, access log off,
#   limits.max_connections 20000, generated into $BENCH_DIR/resilience/{bare,full}.yaml, checked with --check.
#   Per run: req/s, p50, p99, CPU us/request of the proxy; then full/bare per round and on the mean (the target:
#   within noise, i.e. about the spread between rounds).
#
# Part 2 "kill": one of three endpoints killed midway. Three nginx (127.0.0.1:18181..18183, GET / -> "hello\n",
# same settings as bench/upstream-nginx.sh, run in the foreground so the master PID is ours):
#   bulkhead  127.0.0.1:18190  endpoints = the three, balance round_robin, retry/breaker/outlier defaults
#   bh-rate   127.0.0.1:18190  the same with breaker.consecutive_failures 0 (only the failure-rate trigger):
#             shows what the upstream-wide consecutive-failures trigger does when one endpoint dies under load
#   haproxy   127.0.0.1:18192  the three as servers, balance roundrobin, option redispatch, retries 2,
#             no health checks (no "check"), otherwise as in part 1
# Each proxy is started fresh for its run (all three nginx up, a warm-up first) and stopped after it; per proxy:
#   main   wrk -c64 for $KILL_DURATION over the whole run (lua: counts 2xx, non-2xx by status and Proxy-Status
#          error, socket errors, and a per-second timeline of 2xx/non-2xx);
#   probe  a second wrk of $PROBE_CONNS connections running alongside: "probe-before" from the start until the
#          kill (a third of the run), then "probe-after" started at the kill moment for the rest of the run
#          (ending ~1 s before the main run, so it only sees full load). The two probe windows have the same
#          load, so their p99 compare the latency before and after the kill honestly.
#   kill   when probe-before ends: SIGKILL the master and the worker(s) of the nginx on 18182, by PID; it is
#          restarted afterwards for the next proxy.
# Reported: clients' errors (non-2xx + socket errors: connect, read, write, timeout), total requests, req/s and
# p99 over the main run; p99 of probe-before and probe-after; proxy CPU us/request over the run.
#
# usage: bench/resilience.sh   needs scripts/deps.sh --bench and a normal build (scripts/build.sh normal)
#   e.g. DURATION=10s REPS=2 bench/resilience.sh
# Env (defaults): BULKHEAD_BIN=build/proxy/bulkhead (copied at start, so a rebuild during the run changes
#   nothing) DURATION=10s (part 1 runs) KILL_DURATION=$DURATION (part 2 main runs, at least 6s; whole
#   seconds) THREADS=1 REPS=2 WARMUP=2s PROBE_CONNS=8 PARTS="overhead kill" (run one part only by naming it)
#   KILL_TARGETS="bulkhead bh-rate haproxy"
#   UPSTREAM_WORKERS=1 (every nginx) TRIO_PORTS="18181 18182 18183" (the middle one is killed)
#   TRIO_BH_PORT=18190 TRIO_ADMIN_PORT=18191 TRIO_HAP_PORT=18192 BENCH_DIR=/tmp/bulkhead-bench RESULTS=$BENCH_DIR/results.txt
# Output: rows and summaries printed and appended to $RESULTS; raw wrk output appended to $RESULTS too.
# shellcheck disable=SC2059  # the row format is a variable on purpose, as in bench/http.sh
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/lib.sh
source "$here/lib.sh"
need wrk nginx haproxy curl ss awk

DURATION=${DURATION:-10s}
KILL_DURATION=${KILL_DURATION:-$DURATION}
THREADS=${THREADS:-1}
REPS=${REPS:-2}
WARMUP=${WARMUP:-2s}
PROBE_CONNS=${PROBE_CONNS:-8}
PARTS=${PARTS:-"overhead kill"}
KILL_TARGETS=${KILL_TARGETS:-"bulkhead bh-rate haproxy"}
UPSTREAM_WORKERS=${UPSTREAM_WORKERS:-1}
BULKHEAD_BIN=${BULKHEAD_BIN:-$BENCH_REPO/build/proxy/bulkhead}
UP_PORT=18081
BARE_PORT=18092 BARE_ADMIN=18093 FULL_PORT=18094 FULL_ADMIN=18095 HAP_PORT=18096
# shellcheck disable=SC2206  # a list of three ports, word-split on purpose
TRIO_PORTS=(${TRIO_PORTS:-18181 18182 18183}) KILL_IDX=1
((${#TRIO_PORTS[@]} == 3)) || die "TRIO_PORTS must list three ports"
TBH_PORT=${TRIO_BH_PORT:-18190} TBH_ADMIN=${TRIO_ADMIN_PORT:-18191} THAP_PORT=${TRIO_HAP_PORT:-18192}

raise_nofile

dur_s() { # dur_s 10s|2m|10 -> whole seconds
  case $1 in
    *ms) die "duration $1: use whole seconds" ;;
    *s) echo "${1%s}" ;;
    *m) echo $(( ${1%m} * 60 )) ;;
    *h) echo $(( ${1%h} * 3600 )) ;;
    *) echo "$1" ;;
  esac
}
has_part() { [[ " $PARTS " == *" $1 "* ]]; }
has_part overhead || has_part kill || die "PARTS must name overhead and/or kill (got '$PARTS')"
kill_s=$(dur_s "$KILL_DURATION")
if has_part kill && { ! [[ $kill_s =~ ^[0-9]+$ ]] || ((kill_s < 6)); }; then
  die "KILL_DURATION must be whole seconds, at least 6s (got $KILL_DURATION)"
fi

dir=$ANCHORS/resilience
mkdir -p "$dir/tmp"
bin=$dir/bulkhead
copy_bin "$BULKHEAD_BIN" "$bin"

UP_PID="" HAP_PID="" BARE_PID="" FULL_PID="" TBH_PID="" THAP_PID="" WRK_PIDS=()
TRIO_PID=("" "" "")
cleanup() {
  trap - EXIT INT TERM
  local p
  for p in "${WRK_PIDS[@]}"; do stop_pid "$p"; done
  stop_pid "$THAP_PID"
  stop_pid "$TBH_PID"
  for p in "${TRIO_PID[@]}"; do stop_pid "$p"; done
  stop_pid "$FULL_PID"
  stop_pid "$BARE_PID"
  stop_pid "$HAP_PID"
  stop_pid "$UP_PID"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ports=()
has_part overhead && ports+=("$UP_PORT" "$BARE_PORT" "$BARE_ADMIN" "$FULL_PORT" "$FULL_ADMIN" "$HAP_PORT")
has_part kill && ports+=("${TRIO_PORTS[@]}" "$TBH_PORT" "$TBH_ADMIN" "$THAP_PORT")
ports_free "${ports[@]}"

# --- shared pieces ---------------------------------------------------------------------------------------
# the lua report of bench/http.sh, unchanged (part 1)
lua=$dir/report.lua
wrk_report_lua "$lua"

# part 2: the same RESULT line plus 2xx / non-2xx (by status) / socket errors, and a per-second timeline
klua=$dir/kill-report.lua
cat > "$klua" <<'LUA'
local threads = {}
function setup(thread) table.insert(threads, thread) end
ok, bad, codes, tl_ok, tl_bad = 0, 0, {}, {}, {}
function response(status, headers, body)
  local t = os.time()
  if status >= 200 and status < 300 then
    ok = ok + 1
    tl_ok[t] = (tl_ok[t] or 0) + 1
  else
    bad = bad + 1
    local ps = headers["Proxy-Status"] or headers["proxy-status"]
    local err = ps and ps:match("error=([%w_]+)")
    local k = err and (status .. "/" .. err) or tostring(status)
    codes[k] = (codes[k] or 0) + 1
    tl_bad[t] = (tl_bad[t] or 0) + 1
  end
end
done = function(summary, latency, requests)
  local s = summary.duration / 1e6
  local e = summary.errors
  local nok, nbad, c, tok, tbad = 0, 0, {}, {}, {}
  for _, th in ipairs(threads) do
    nok = nok + th:get("ok")
    nbad = nbad + th:get("bad")
    for k, v in pairs(th:get("codes")) do c[k] = (c[k] or 0) + v end
    for k, v in pairs(th:get("tl_ok")) do tok[k] = (tok[k] or 0) + v end
    for k, v in pairs(th:get("tl_bad")) do tbad[k] = (tbad[k] or 0) + v end
  end
  local sock = e.connect + e.read + e.write + e.timeout
  io.write(string.format(
    "RESULT requests=%d duration_s=%.3f rps=%.1f p50_us=%d p90_us=%d p99_us=%d p999_us=%d max_us=%d errors=%d"
      .. " ok=%d non2xx=%d sock=%d connect=%d read=%d write=%d timeout=%d\n",
    summary.requests, s, summary.requests / s,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, nbad + sock,
    nok, nbad, sock, e.connect, e.read, e.write, e.timeout))
  local cs = {}
  for k, v in pairs(c) do table.insert(cs, k .. ":" .. v) end
  table.sort(cs)
  io.write("CODES " .. (#cs > 0 and table.concat(cs, ",") or "-") .. "\n")
  local ks, seen = {}, {}
  for k in pairs(tok) do if not seen[k] then seen[k] = true; table.insert(ks, k) end end
  for k in pairs(tbad) do if not seen[k] then seen[k] = true; table.insert(ks, k) end end
  table.sort(ks)
  for _, k in ipairs(ks) do io.write(string.format("TL %d %d %d\n", k, tok[k] or 0, tbad[k] or 0)) end
end
LUA

# busy_pct "SNAP_BEFORE" "SNAP_AFTER" SECONDS: busy CPU of all cores together, % of one core (as pct)
busy_pct() {
  awk -v a="$1" -v b="$2" -v s="$3" -v hz="$CLK_TCK" 'BEGIN { n = split(a, x, " "); split(b, y, " ")
    for (i = 1; i <= n; i += 2) t += y[i] - x[i]; if (s <= 0) s = 1; printf "%.0f", 100 * t / hz / s }'
}

# the haproxy of bench/http.sh (nbthread 1); $1 = port, $2 = extra defaults lines, $3 = backend lines
haproxy_cfg() { haproxy_conf "$1" 1 8000 "$3" "$2"; }

# the bulkhead of bench/http.sh (1 worker, access log off, pool 256/256) with balance round_robin:
# $1 = port, $2 = admin port, $3 = endpoints (flow list body), $4 = more upstream lines (resilience settings)
bulkhead_cfg() {
  bulkhead_conf bench/resilience.sh 1 "$1" "$2" off "$(bulkhead_proxy_body "$3" "    balance: round_robin${4:+
$4}")"
}

start_bulkhead() { # start_bulkhead NAME VAR: config $dir/NAME.yaml, log $dir/NAME.log; the PID goes into VAR
  bulkhead_start "$2" "$bin" "$dir/$1.yaml" "$dir/$1.log" || die "bulkhead $1 did not start"
}

{
  echo "=================================================================="
  echo "$(bench_id bench/resilience.sh)$(git -C "$BENCH_REPO" diff --quiet HEAD -- proxy resilience pool conf common 2>/dev/null || echo '+dirty')"
  echo "bulkhead binary: $(bin_id "$BULKHEAD_BIN" "$bin")"
  echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the host makes the figures noisy: see oth%)"
  echo "parts: $PARTS; wrk -t$THREADS --latency; overhead: -c64 -d$DURATION x $REPS rounds; kill: -c64 -d${kill_s}s + probe -c$PROBE_CONNS"
  echo "$(nginx -v 2>&1); $(haproxy -v | head -n1); $(wrk -v 2>&1 | head -n1)"
} | log

# =========================================================================================================
# Part 1: happy-path overhead
# =========================================================================================================
part_overhead() {
  UP_PID=$(UPSTREAM_PORT=$UP_PORT UPSTREAM_WORKERS=$UPSTREAM_WORKERS "$here/upstream-nginx.sh" | tail -n1) ||
    die "upstream failed to start"

  haproxy_cfg "$HAP_PORT" "" "    server up 127.0.0.1:$UP_PORT" > "$dir/haproxy.cfg"
  haproxy_start HAP_PID "$dir/haproxy.cfg" "$dir/haproxy.log"

  bulkhead_cfg "$BARE_PORT" "$BARE_ADMIN" "\"127.0.0.1:$UP_PORT\"" "$(cat <<'YAML'
    retry:
      attempts: 1
      on: []
    breaker:
      consecutive_failures: 0
      failure_rate: 0
    outlier:
      consecutive_failures: 0
YAML
)" > "$dir/bare.yaml"
  bulkhead_cfg "$FULL_PORT" "$FULL_ADMIN" "\"127.0.0.1:$UP_PORT\"" "$(cat <<'YAML'
    retry:
      attempts: 3
      on: [ connect-failure, reset-before-response, gateway-error ]
      budget: { ratio: "20%", min_per_second: 10 }
    breaker:
      consecutive_failures: 5
      failure_rate: "50%"
      window: 10s
      min_requests: 20
      open_for: 5s
      max_open_for: 60s
      half_open_probes: 3
    outlier:
      consecutive_failures: 5
      eject_for: 30s
      max_ejected: "50%"
YAML
)" > "$dir/full.yaml"
  start_bulkhead bare BARE_PID
  start_bulkhead full FULL_PID

  wait_port "$HAP_PORT" 5 || die "haproxy did not start (see $dir/haproxy.log)"
  wait_port "$BARE_PORT" 10 || die "bulkhead bare did not listen on :$BARE_PORT (see $dir/bare.log)"
  wait_port "$FULL_PORT" 10 || die "bulkhead full did not listen on :$FULL_PORT (see $dir/full.log)"

  local -A turl=([haproxy]="http://127.0.0.1:$HAP_PORT/" [bare]="http://127.0.0.1:$BARE_PORT/"
    [full]="http://127.0.0.1:$FULL_PORT/")
  local -A tpid=([haproxy]=$HAP_PID [bare]=$BARE_PID [full]=$FULL_PID)
  local n
  for n in haproxy bare full; do check_hello "${turl[$n]%/}" "$n"; done
  {
    echo
    echo "part 1: happy-path cost of the pipeline (GET /, -c64, -d$DURATION, $REPS rounds)"
    for n in haproxy bare full; do echo "target $n = ${turl[$n]} pid=${tpid[$n]}"; done
    echo "configs: $dir/bare.yaml $dir/full.yaml $dir/haproxy.cfg"
  } | log

  for n in haproxy bare full; do wrk -t"$THREADS" -c64 -d"$WARMUP" "${turl[$n]}" >/dev/null 2>&1; done

  local rows=$dir/overhead-rows.txt fmt='%-8s %3s %9s %7s %7s %6s %5s %5s %5s %7s %5s  %s'
  : > "$rows"
  log "$(printf "$fmt" target rep req/s p50us p99us errors wrk% up% prx% prxus/r oth% cores)"
  local rep order out upc prc row
  for ((rep = 1; rep <= REPS; rep++)); do
    if ((rep % 2)); then order="haproxy bare full"; else order="haproxy full bare"; fi
    for n in $order; do
      out=$dir/wrk.out
      wrk_measure "$out" "$UP_PID" "${tpid[$n]}" -t"$THREADS" -c64 -d"$DURATION" --timeout 5s --latency -s "$lua" "${turl[$n]}"
      upc=$(pct "$M_UT" "$M_EL"); prc=$(pct "$M_PT" "$M_EL")
      row=$(printf "$fmt" "$n" "$rep" "$(printf '%.0f' "$M_RPS")" "$M_P50" "$M_P99" "$M_ERR" "$M_WCPU" "$upc" "$prc" \
        "$(us_per "$M_PT" "$M_NREQ")" $(( $(busy_pct "$M_S0" "$M_S1" "$M_EL") - M_WCPU - upc - prc )) \
        "$(cpu_busy "$M_S0" "$M_S1")")
      echo "$row" >> "$rows"
      echo "$row"
      { echo "--- overhead $n ${turl[$n]} rep=$rep"; cat "$out"; echo "wrk user/sys s: $(cat "$out.time")"; echo "ROW $row"; } | raw
    done
  done

  {
    echo
    echo "part 1 summary (values per round joined by /, then the mean)"
    awk 'function add(a, k, v) { a[k] = a[k] (a[k] == "" ? "" : "/") v }
         { k = $1; if (!(k in seen)) { seen[k] = 1; order[++n] = k }
           add(rps, k, $3); add(p50, k, $4); add(p99, k, $5); add(cus, k, $10)
           srps[k] += $3; sp50[k] += $4; sp99[k] += $5; scus[k] += $10; c[k]++ }
         END { fmt = "%-8s %-32s %-26s %-28s %s\n"
               printf fmt, "target", "req/s", "p50us", "p99us", "prxus/r"
               for (i = 1; i <= n; i++) { k = order[i]
                 printf fmt, k, rps[k] " =" int(srps[k] / c[k] + 0.5), p50[k] " =" int(sp50[k] / c[k] + 0.5),
                   p99[k] " =" int(sp99[k] / c[k] + 0.5), cus[k] " =" sprintf("%.1f", scus[k] / c[k]) } }' "$rows"
    echo
    echo "full / bare (same round; per round joined by /, = mean of the rounds); haproxy / bare for reference"
    awk 'function add(a, k, v) { a[k] = a[k] (a[k] == "" ? "" : "/") v }
         { v[$1 "|" $2 "|rps"] = $3; v[$1 "|" $2 "|p50"] = $4; v[$1 "|" $2 "|p99"] = $5; v[$1 "|" $2 "|cus"] = $10
           if ($2 > maxrep) maxrep = $2 }
         END { split("rps p50 p99 cus", m, " "); split("req/s p50 p99 cpu/req", lab, " ")
               fmt = "%-10s %-36s %s\n"; printf fmt, "metric", "full/bare", "haproxy/bare"
               for (j = 1; j <= 4; j++) { f = ""; h = ""; sf = 0; sh = 0; nf = 0; nh = 0
                 for (r = 1; r <= maxrep; r++) { b = v["bare|" r "|" m[j]] + 0; if (b <= 0) continue
                   x = v["full|" r "|" m[j]] / b; f = f (f == "" ? "" : "/") sprintf("%.3f", x); sf += x; nf++
                   y = v["haproxy|" r "|" m[j]] / b; h = h (h == "" ? "" : "/") sprintf("%.2f", y); sh += y; nh++ }
                 printf fmt, lab[j], f " =" (nf ? sprintf("%.3f", sf / nf) : "-"), h " =" (nh ? sprintf("%.2f", sh / nh) : "-") } }' "$rows"
    echo "spread between rounds of one target (max/min - 1, req/s): noise reference for full/bare"
    awk '{ if (!($1 in mx) || $3 > mx[$1]) mx[$1] = $3; if (!($1 in mn) || $3 < mn[$1]) mn[$1] = $3 }
         END { for (k in mx) if (mn[k] > 0) printf "  %-8s %.1f%%\n", k, 100 * (mx[k] / mn[k] - 1) }' "$rows" | sort
    awk '$6 != "0" { n++ } END { if (n) printf "wrk errors in %d run(s): see the rows above\n", n }' "$rows"
    echo "columns: wrk%/up%/prx% = CPU of wrk / upstream nginx / proxy (100% = one core); prxus/r = proxy CPU"
    echo "  microseconds per request (user+sys from /proc ticks); oth% = CPU of everything else on the host"
    echo "  (busy of all cores - wrk - upstream - proxy; high = a noisy run); cores = busy % of each core"
  } | log

  stop_pid "$FULL_PID"; FULL_PID=""
  stop_pid "$BARE_PID"; BARE_PID=""
  stop_pid "$HAP_PID"; HAP_PID=""
  stop_pid "$UP_PID"; UP_PID=""
}

# =========================================================================================================
# Part 2: one of three endpoints killed midway
# =========================================================================================================
start_trio_one() { # start_trio_one INDEX: nginx in the foreground (master PID = ours), sets TRIO_PID[INDEX]
  local i=$1 port=${TRIO_PORTS[$1]} d=$dir/trio-$1
  mkdir -p "$d/tmp"
  nginx_conf "$d" nginx "$UPSTREAM_WORKERS" 8192 "    server {
        listen 127.0.0.1:$port backlog=4096;
        location = / { default_type text/plain; return 200 \"hello\\n\"; }
    }" > "$d/nginx.conf"
  nginx_start "TRIO_PID[$i]" "$d" nginx
  wait_port "$port" 5 || die "nginx on :$port did not start (see $d/nginx.error.log)"
  check_hello "http://127.0.0.1:$port" "nginx :$port"
}

# kill_tree PID: SIGKILL the nginx master first (so it cannot respawn a worker), then its workers
kill_tree() {
  local -a pids
  mapfile -t pids < <(pid_tree "$1")
  ((${#pids[@]})) && kill -KILL "${pids[@]}" 2>/dev/null
  echo "${pids[*]}"
}

kill_rows=$dir/kill-rows.txt
kill_run() { # kill_run NAME URL PROXY_PID
  local name=$1 kurl=$2 ppid=$3 i pre=$dir/kill-$1
  for i in 0 1 2; do
    [[ -n ${TRIO_PID[i]} ]] && kill -0 "${TRIO_PID[i]}" 2>/dev/null && continue
    start_trio_one "$i"
  done
  check_hello "${kurl%/}" "$name"
  wrk -t"$THREADS" -c64 -d"$WARMUP" "$kurl" >/dev/null 2>&1

  local before_s=$((kill_s / 3)) after_s t0 tk t1 k0 k1 s0 s1 killed mpid bpid apid el
  after_s=$((kill_s - before_s - 1))
  s0=$(cpu_snap); k0=$(proc_ticks "$ppid"); t0=$(date +%s%N)
  wrk -t"$THREADS" -c64 -d"${kill_s}s" --timeout 5s --latency -s "$klua" "$kurl" > "$pre-main.out" 2>&1 &
  mpid=$!; WRK_PIDS+=("$mpid")
  wrk -t"$THREADS" -c"$PROBE_CONNS" -d"${before_s}s" --timeout 5s --latency -s "$klua" "$kurl" > "$pre-before.out" 2>&1 &
  bpid=$!; WRK_PIDS+=("$bpid")
  wait "$bpid"
  wrk -t"$THREADS" -c"$PROBE_CONNS" -d"${after_s}s" --timeout 5s --latency -s "$klua" "$kurl" > "$pre-after.out" 2>&1 &
  apid=$!; WRK_PIDS+=("$apid")
  tk=$(date +%s%N)
  killed=$(kill_tree "${TRIO_PID[KILL_IDX]}")
  wait "${TRIO_PID[KILL_IDX]}" 2>/dev/null
  TRIO_PID[KILL_IDX]=""
  wait "$apid" "$mpid"
  t1=$(date +%s%N); k1=$(proc_ticks "$ppid"); s1=$(cpu_snap)
  WRK_PIDS=()
  el=$(elapsed "$t0" "$t1")

  local rm nm nb na treq
  rm=$(grep '^RESULT' "$pre-main.out")
  [[ -n $rm ]] || die "$name: main wrk run failed: $(head -c 300 "$pre-main.out")"
  nm=$(kv requests "$rm"); nb=$(kv requests "$(grep '^RESULT' "$pre-before.out")")
  na=$(kv requests "$(grep '^RESULT' "$pre-after.out")")
  treq=$(( ${nm:-0} + ${nb:-0} + ${na:-0} ))
  local fmt='%-8s %8s %7s %9s %7s %7s %7s %7s %7s %7s %7s %7s  %s'
  {
    echo
    echo "--- kill: $name $kurl (killed nginx :${TRIO_PORTS[KILL_IDX]} pids $killed at +$(awk -v a="$t0" -v b="$tk" 'BEGIN { printf "%.2f", (b - a) / 1e9 }')s of ${kill_s}s)"
    printf "$fmt\n" run errors non2xx sock requests req/s p50us p99us p999us maxus prx% prxus/r codes
    local lbl f r
    for lbl in main before after; do
      f=$pre-$lbl.out; r=$(grep '^RESULT' "$f")
      if [[ -z $r ]]; then echo "$lbl: wrk failed: $(head -c 200 "$f")"; continue; fi
      local pc=- pu=-
      [[ $lbl == main ]] && { pc=$(pct $((k1 - k0)) "$el"); pu=$(us_per $((k1 - k0)) "$treq"); }
      printf "$fmt\n" "$lbl" "$(kv errors "$r")" "$(kv non2xx "$r")" "$(kv sock "$r")" "$(kv requests "$r")" \
        "$(printf '%.0f' "$(kv rps "$r")")" "$(kv p50_us "$r")" "$(kv p99_us "$r")" "$(kv p999_us "$r")" \
        "$(kv max_us "$r")" "$pc" "$pu" "$(sed -n 's/^CODES //p' "$f")"
      echo "$name $lbl $r" >> "$kill_rows"
    done
    echo "sock = connect/read/write/timeout: $(kv connect "$rm")/$(kv read "$rm")/$(kv write "$rm")/$(kv timeout "$rm") (main)"
    echo "timeline of main (second: 2xx non-2xx; K = the kill second): $(awk -v k="$((tk / 1000000000))" '
      /^TL / { if (!n) f = $2; n++; printf "%s%d:%d/%d", (n > 1 ? " " : ""), $2 - f, $3, $4; if ($2 == k) printf "K" }
      END { print "" }' "$pre-main.out")"
    echo "cores: $(cpu_busy "$s0" "$s1"); all cores busy $(busy_pct "$s0" "$s1" "$el")% of one core, of which the proxy $(pct $((k1 - k0)) "$el")%"
  } | log
  for lbl in main before after; do { echo "--- kill $name $lbl"; cat "$pre-$lbl.out"; } | raw; done
}

part_kill() {
  local i
  for i in 0 1 2; do start_trio_one "$i"; done
  local eps="\"127.0.0.1:${TRIO_PORTS[0]}\", \"127.0.0.1:${TRIO_PORTS[1]}\", \"127.0.0.1:${TRIO_PORTS[2]}\""
  bulkhead_cfg "$TBH_PORT" "$TBH_ADMIN" "$eps" "" > "$dir/trio.yaml"
  bulkhead_cfg "$TBH_PORT" "$TBH_ADMIN" "$eps" "$(cat <<'YAML'
    breaker:
      consecutive_failures: 0
YAML
)" > "$dir/trio-rate.yaml"
  haproxy_cfg "$THAP_PORT" "    option redispatch
    retries 2" "    balance roundrobin
    server s1 127.0.0.1:${TRIO_PORTS[0]}
    server s2 127.0.0.1:${TRIO_PORTS[1]}
    server s3 127.0.0.1:${TRIO_PORTS[2]}" > "$dir/haproxy-trio.cfg"
  : > "$kill_rows"
  {
    echo
    echo "part 2: one of three endpoints (nginx :${TRIO_PORTS[*]}) SIGKILLed at a third of the run"
    echo "main: wrk -c64 -d${kill_s}s; probe-before: -c$PROBE_CONNS -d$((kill_s / 3))s from the start; probe-after:"
    echo "  -c$PROBE_CONNS -d$((kill_s - kill_s / 3 - 1))s started at the kill; errors = non-2xx + socket errors;"
    echo "  codes = non-2xx responses by status/Proxy-Status error"
    echo "bulkhead :$TBH_PORT $dir/trio.yaml: round_robin, retry/breaker/outlier defaults"
    echo "bh-rate  :$TBH_PORT $dir/trio-rate.yaml: the same with breaker.consecutive_failures 0 (rate trigger only)"
    echo "haproxy  :$THAP_PORT $dir/haproxy-trio.cfg: roundrobin, option redispatch, retries 2, no health checks"
    echo "each proxy is started fresh for its run, with the three nginx up, and stopped after it"
  } | log
  local t
  for t in $KILL_TARGETS; do
    case $t in
      bulkhead|bh-rate)
        if [[ $t == bulkhead ]]; then start_bulkhead trio TBH_PID; else start_bulkhead trio-rate TBH_PID; fi
        wait_port "$TBH_PORT" 10 || die "bulkhead ($t) did not listen on :$TBH_PORT (see $dir/trio*.log)"
        kill_run "$t" "http://127.0.0.1:$TBH_PORT/" "$TBH_PID"
        stop_pid "$TBH_PID"; TBH_PID="" ;;
      haproxy)
        haproxy_start THAP_PID "$dir/haproxy-trio.cfg" "$dir/haproxy-trio.log"
        wait_port "$THAP_PORT" 5 || die "haproxy trio did not start (see $dir/haproxy-trio.log)"
        kill_run haproxy "http://127.0.0.1:$THAP_PORT/" "$THAP_PID"
        stop_pid "$THAP_PID"; THAP_PID="" ;;
      *) die "KILL_TARGETS: unknown target '$t' (bulkhead, bh-rate, haproxy)" ;;
    esac
  done

  {
    echo
    echo "part 2 summary: errors clients saw / requests over the main run; p99 us main, probe before -> after"
    awk '$2 == "main" { for (i = 3; i <= NF; i++) { split($i, kv, "="); m[$1 "|" kv[1]] = kv[2] } ; o[++n] = $1 }
         $2 != "main" { for (i = 3; i <= NF; i++) { split($i, kv, "="); if (kv[1] == "p99_us") p[$1 "|" $2] = kv[2] } }
         END { fmt = "%-8s %8s %9s %8s %8s %13s\n"
               printf fmt, "proxy", "errors", "requests", "req/s", "p99 main", "p99 bef->aft"
               for (i = 1; i <= n; i++) { k = o[i]
                 printf fmt, k, m[k "|errors"], m[k "|requests"], int(m[k "|rps"] + 0.5), m[k "|p99_us"],
                   p[k "|before"] "->" p[k "|after"] } }' "$kill_rows"
  } | log
}

has_part overhead && part_overhead
has_part kill && part_kill
log "results appended to $RESULTS"
