#!/usr/bin/env bash
# HTTP benchmark: bulkhead against the anchors, all in the SAME run, wrk on loopback:
#   direct   upstream nginx            127.0.0.1:18081  (bench/upstream-nginx.sh, UPSTREAM_WORKERS, started once)
#   nginx    nginx reverse proxy       127.0.0.1:18082  (upstream keepalive 64; worker_processes = W)
#   haproxy  haproxy                   127.0.0.1:18083  (http-reuse always; nbthread = W)
#   bulkhead bulkhead                  127.0.0.1:18090  (config generated into $BENCH_DIR/http/bulkhead.yaml:
#            workers W, one upstream 127.0.0.1:18081, pool max_connections 256 / max_idle 256,
#            route / -> it, access log off, limits.max_connections 20000)
#   bh-alog  bulkhead, the same config with log.access = $BENCH_DIR/http/access.log (a file, truncated before each
#            run), on 127.0.0.1:18098; only at W = ACCESS_LOG_WORKERS and only when ACCESS_LOG_AXIS lists "on"
# Workers axis: for each W in WORKERS_AXIS the three proxies are started with W workers / processes / threads,
# measured in their own rounds (direct too, as the ratio base of each round), then stopped; so every
# bulkhead/HAProxy ratio compares the two at the same W. bh-alog runs in the same rounds as bulkhead (off),
# right after it, so the access log off/on ratio is taken in the same run, round by round.
# The anchors are measured exactly as shared/bench/http-anchors.sh does (same configs, wrk flags, lua report,
# /proc CPU accounting); bulkhead is one more target in the same rounds.
#
# usage: bench/http.sh            needs scripts/deps.sh --bench and a normal build (scripts/build.sh normal)
#   e.g. BULKHEAD_BIN=build-rel/proxy/bulkhead DURATION=5s REPS=1 CONNS=64 bench/http.sh
# Env (defaults): BULKHEAD_BIN=build/proxy/bulkhead (copied at start, so a rebuild during the run changes
#   nothing) DURATION=10s THREADS=1 CONNS="64 256" REPS=2 PATHS="/ /16k" WARMUP=2s
#   WORKERS_AXIS="1 2" (worker counts; for each: nginx worker_processes / haproxy nbthread / bulkhead workers;
#     PROXY_WORKERS=N, the old knob, still means WORKERS_AXIS=N when WORKERS_AXIS is not set)
#   ACCESS_LOG_AXIS="off on" (bulkhead's log.access: "off" is the bulkhead target, always measured; "on" adds
#     bh-alog; ACCESS_LOG_AXIS=off skips it) ACCESS_LOG_WORKERS=1 (the W at which bh-alog runs)
#   UPSTREAM_WORKERS=1 BENCH_DIR=/tmp/bulkhead-bench RESULTS=$BENCH_DIR/results.txt
#   NO_BULKHEAD=1 measures the anchors only.
#   BH_VARIANTS="name=BIN ..." more bulkhead binaries (other build types: bench/buildtype.sh), each one more
#     target with bulkhead's config, in the same rounds (ports 18100, 18102, ...); the summary gives each one's
#     ratios to haproxy like bulkhead's.
# Output: one row per wrk run (column wk = the worker count of its round); a per-(target, wk) summary; the
#   req/s per worker count side by side; bulkhead vs HAProxy per worker count against the targets
#   CPU/request <= 0.85x HAProxy, req/s >= 1.15x HAProxy, p99 <= HAProxy; and bulkhead with the access log
#   on vs off (req/s, CPU/request and p99 ratios per round, logged lines per request).
# Everything is printed and appended to $RESULTS; every process started here is stopped by PID on exit.
# shellcheck disable=SC2059,SC2119  # the row format is a variable on purpose, as in the anchor script; log reads stdin
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/lib.sh
source "$here/lib.sh"
need wrk nginx haproxy curl ss awk

DURATION=${DURATION:-10s}
THREADS=${THREADS:-1}
CONNS=${CONNS:-"64 256"}
REPS=${REPS:-2}
PATHS=${PATHS:-"/ /16k"}
WARMUP=${WARMUP:-2s}
WORKERS_AXIS=${WORKERS_AXIS:-${PROXY_WORKERS:-1 2}}
ACCESS_LOG_AXIS=${ACCESS_LOG_AXIS:-off on}
ACCESS_LOG_WORKERS=${ACCESS_LOG_WORKERS:-1}
UP_PORT=${UPSTREAM_PORT:-18081}
NGX_PORT=18082
HAP_PORT=18083
BH_PORT=18090
BH_ADMIN_PORT=18091
AL_PORT=18098
AL_ADMIN_PORT=18099
BULKHEAD_BIN=${BULKHEAD_BIN:-$BENCH_REPO/build/proxy/bulkhead}

for w in $WORKERS_AXIS; do [[ $w =~ ^[1-9][0-9]*$ ]] || die "WORKERS_AXIS: '$w' is not a worker count"; done
[[ -n ${WORKERS_AXIS// /} ]] || die "WORKERS_AXIS is empty"
alog_on=0
for a in $ACCESS_LOG_AXIS; do
  case $a in off) ;; on) alog_on=1 ;; *) die "ACCESS_LOG_AXIS: '$a' is neither off nor on" ;; esac
done
alog_note=""
if ((alog_on)) && [[ " $WORKERS_AXIS " != *" $ACCESS_LOG_WORKERS "* ]]; then
  alog_note="ACCESS_LOG_WORKERS=$ACCESS_LOG_WORKERS is not in WORKERS_AXIS ($WORKERS_AXIS)"; alog_on=0
fi

raise_nofile

dir=$ANCHORS/http
mkdir -p "$dir/tmp"
alog=$dir/access.log
UP_PID="" NGX_PID="" HAP_PID="" BH_PID="" AL_PID=""
VAR_PIDS=()
stop_proxies() {
  local p
  for p in "${VAR_PIDS[@]}"; do stop_pid "$p"; done
  stop_pid "$AL_PID"; stop_pid "$BH_PID"; stop_pid "$HAP_PID"; stop_pid "$NGX_PID"
  AL_PID="" BH_PID="" HAP_PID="" NGX_PID="" VAR_PIDS=()
}
cleanup() {
  trap - EXIT INT TERM
  stop_proxies
  stop_pid "$UP_PID"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ports_free $NGX_PORT $HAP_PORT $BH_PORT $BH_ADMIN_PORT $AL_PORT $AL_ADMIN_PORT

bh_skip="" bin=$dir/bulkhead
if [[ ${NO_BULKHEAD:-0} == 1 ]]; then
  bh_skip="NO_BULKHEAD=1"
elif [[ ! -x $BULKHEAD_BIN ]]; then
  bh_skip="no binary at $BULKHEAD_BIN (scripts/build.sh normal)"
else
  copy_bin "$BULKHEAD_BIN" "$bin"
fi
((alog_on)) && [[ -n $bh_skip ]] && { alog_on=0; alog_note="bulkhead not measured"; }
read -r -a VARIANTS <<<"${BH_VARIANTS:-}"
for v in "${VARIANTS[@]}"; do
  [[ $v == ?*=?* && -x ${v#*=} ]] || die "BH_VARIANTS: '$v' is not name=EXECUTABLE"
  copy_bin "${v#*=}" "$dir/variant-${v%%=*}"
done

# --- upstream (one for the whole run) ----------------------------------------
UP_PID=$("$here/upstream-nginx.sh" | tail -n1) || die "upstream failed to start"

lua=$dir/report.lua
wrk_report_lua "$lua"

{
  echo "=================================================================="
  bench_id bench/http.sh
  echo "wrk -t$THREADS -d$DURATION --latency; conns: $CONNS; paths: $PATHS; reps: $REPS; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "workers axis (nginx worker_processes / haproxy nbthread / bulkhead workers): $WORKERS_AXIS; upstream nginx workers: ${UPSTREAM_WORKERS:-1}"
  if ((alog_on)); then
    echo "access-log axis: $ACCESS_LOG_AXIS -> bulkhead (log.access off) and bh-alog (log.access $alog) at wk=$ACCESS_LOG_WORKERS"
  else
    echo "access-log axis: $ACCESS_LOG_AXIS -> not measured${alog_note:+ ($alog_note)}"
  fi
  echo "$(nginx -v 2>&1); $(haproxy -v | head -n1); $(wrk -v 2>&1 | head -n1)"
  if [[ -z $bh_skip ]]; then echo "bulkhead binary: $(bin_id "$BULKHEAD_BIN" "$bin")"; else echo "bulkhead not measured: $bh_skip"; fi
} | log

# start_variants W BODY: each BH_VARIANTS binary with bulkhead's config on its own ports, as one more target
start_variants() {
  local k pid port name
  for k in "${!VARIANTS[@]}"; do
    name=${VARIANTS[k]%%=*} port=$((18100 + 2 * k))
    bulkhead_conf bench/http.sh "$1" $port $((port + 1)) off "$2" > "$dir/$name.yaml"
    bulkhead_start pid "$dir/variant-$name" "$dir/$name.yaml" "$dir/$name.log" || die "$name: config rejected"
    VAR_PIDS+=("$pid")
    wait_port $port 10 || die "$name did not listen on :$port (see $dir/$name.log)"
    names+=("$name"); urls+=("http://127.0.0.1:$port"); cpids+=("$pid")
  done
}

# start_proxies W: nginx, haproxy and bulkhead (and bh-alog at ACCESS_LOG_WORKERS) with W workers; sets the
# target lists names/urls/cpids and bh_why (why bulkhead is not measured at this W, or "")
start_proxies() {
  local w=$1 i why
  nginx_conf "$dir" nginx-proxy "$w" 16384 "$(nginx_proxy_body $NGX_PORT "$UP_PORT")" > "$dir/nginx-proxy.conf"
  nginx_start NGX_PID "$dir" nginx-proxy
  haproxy_conf $HAP_PORT "$w" 8000 "    server up 127.0.0.1:$UP_PORT" > "$dir/haproxy.cfg"
  haproxy_start HAP_PID "$dir/haproxy.cfg" "$dir/haproxy.log"
  bh_why=$bh_skip
  local body
  body=$(bulkhead_proxy_body "\"127.0.0.1:$UP_PORT\"")
  if [[ -z $bh_why ]]; then
    bulkhead_conf bench/http.sh "$w" $BH_PORT $BH_ADMIN_PORT off "$body" > "$dir/bulkhead.yaml"
    bulkhead_start BH_PID "$bin" "$dir/bulkhead.yaml" "$dir/bulkhead.log" || bh_why="$dir/bulkhead.yaml rejected"
  fi
  local al=0
  if [[ -z $bh_why && $alog_on == 1 && $w == "$ACCESS_LOG_WORKERS" ]]; then
    al=1
    : > "$alog"
    bulkhead_conf bench/http.sh "$w" $AL_PORT $AL_ADMIN_PORT "$alog" "$body" > "$dir/bulkhead-alog.yaml"
    bulkhead_start AL_PID "$bin" "$dir/bulkhead-alog.yaml" "$dir/bulkhead-alog.log" || al=0
  fi

  wait_port $NGX_PORT 5 || die "nginx proxy did not start (see $dir/nginx-proxy.error.log)"
  wait_port $HAP_PORT 5 || die "haproxy did not start (see $dir/haproxy.log)"
  if [[ -n $BH_PID ]] && ! wait_port $BH_PORT 10; then
    bh_why="bulkhead did not listen on :$BH_PORT (see $dir/bulkhead.log)"
    stop_pid "$BH_PID"; BH_PID=""
  fi
  if [[ -n $AL_PID ]] && ! wait_port $AL_PORT 10; then
    echo "warning: bh-alog did not listen on :$AL_PORT (see $dir/bulkhead-alog.log)" >&2
    stop_pid "$AL_PID"; AL_PID="" al=0
  fi

  # targets: name, base url, pid whose CPU is counted as "proxy"
  names=(direct nginx haproxy)
  urls=("http://127.0.0.1:$UP_PORT" "http://127.0.0.1:$NGX_PORT" "http://127.0.0.1:$HAP_PORT")
  cpids=("" "$NGX_PID" "$HAP_PID")
  if [[ -n $BH_PID ]]; then names+=(bulkhead); urls+=("http://127.0.0.1:$BH_PORT"); cpids+=("$BH_PID"); fi
  if [[ -n $AL_PID ]] && ((al)); then names+=(bh-alog); urls+=("http://127.0.0.1:$AL_PORT"); cpids+=("$AL_PID"); fi

  start_variants "$w" "$body"

  # sanity: every target returns the right bodies (bulkhead is dropped, loudly, when it does not)
  for i in "${!names[@]}"; do
    why=$(body_problem "${urls[i]}" 16k)
    [[ -z $why ]] && continue
    case ${names[i]} in
      bulkhead) bh_why="bulkhead: $why"; stop_pid "$BH_PID"; BH_PID="" ;;
      bh-alog) echo "warning: bh-alog not measured: $why" >&2; stop_pid "$AL_PID"; AL_PID="" ;;
      *) die "${names[i]}: $why" ;;
    esac
    unset 'names[i]' 'urls[i]' 'cpids[i]'
  done
  [[ -n $bh_why ]] && echo "warning: bulkhead not measured at wk=$w: $bh_why" >&2
  return 0
}

rows=$dir/rows.txt
alrows=$dir/alog-rows.txt   # wk path conn rep requests logged_lines log_bytes
: > "$rows"; : > "$alrows"
fmt='%-8s %2s %-5s %4s %3s %9s %7s %7s %6s %6s %5s %5s %5s %7s %6s  %s'
declare -A base
for w in $WORKERS_AXIS; do
  start_proxies "$w"
  {
    echo "--- wk=$w: nginx worker_processes $w, haproxy nbthread $w, bulkhead workers $w"
    for i in "${!names[@]}"; do echo "target ${names[i]} = ${urls[i]} pid=${cpids[i]:--}"; done
    [[ -n $bh_why ]] && echo "bulkhead not measured at wk=$w: $bh_why"
    printf "$fmt\n" target wk path conn rep req/s p50us p99us ratio errors wrk% up% prx% prxus/r opens cores
  } | log

  # warm-up (not recorded)
  for i in "${!names[@]}"; do
    wrk -t"$THREADS" -c64 -d"$WARMUP" "${urls[i]}/" >/dev/null 2>&1
  done

  for ((rep = 1; rep <= REPS; rep++)); do
    for path in $PATHS; do
      for c in $CONNS; do
        for i in "${!names[@]}"; do
          name=${names[i]} url=${urls[i]}$path cpid=${cpids[i]}
          out=$dir/wrk.out
          [[ $name == bh-alog ]] && : > "$alog"   # O_APPEND: bulkhead's next write lands at the new end
          wrk_measure "$out" "$UP_PID" "$cpid" -t"$THREADS" -c"$c" -d"$DURATION" --timeout 5s --latency -s "$lua" "$url"
          if [[ $name == bh-alog ]]; then
            sleep 0.3   # bulkhead flushes its access log buffer 200 ms after the first line in it
            echo "$w $path $c $rep $M_NREQ $(wc -l < "$alog") $(stat -c %s "$alog")" >> "$alrows"
          fi
          key="$w|$rep|$path|$c"
          [[ $name == direct ]] && base[$key]=$M_RPS
          rat=$(ratio "$M_RPS" "${base[$key]:-0}")
          pcpu=- pusr=-
          [[ -n $cpid ]] && { pcpu=$(pct "$M_PT" "$M_EL"); pusr=$(us_per "$M_PT" "$M_NREQ"); }
          row=$(printf "$fmt" "$name" "$w" "$path" "$c" "$rep" "$(printf '%.0f' "$M_RPS")" "$M_P50" "$M_P99" "$rat" \
            "$M_ERR" "$M_WCPU" "$(pct "$M_UT" "$M_EL")" "$pcpu" "$pusr" "$M_OPENS" "$(cpu_busy "$M_S0" "$M_S1")")
          echo "$row" >> "$rows"
          echo "$row"
          { echo "--- $name wk=$w $url c=$c rep=$rep"; cat "$out"; echo "wrk user/sys s: $(cat "$out.time")"; echo "ROW $row"; } | raw
        done
      done
    done
  done
  stop_proxies
  for p in $NGX_PORT $HAP_PORT $BH_PORT $AL_PORT; do wait_port_free "$p" 10 || die "port $p still in use after its proxy stopped"; done
done

# summary: per (target, wk, path, conns) the value of each rep, joined by '/'
{
  echo
  echo "summary (values per rep, joined by /; ratio = target req/s / direct req/s in the same round; wk = workers)"
  awk 'function add(a, k, v) { a[k] = a[k] (a[k] == "" ? "" : "/") v }
       { k = $1 " " $2 " " $3 " " $4; if (!(k in seen)) { seen[k] = 1; order[++n] = k }
         add(rps, k, $6); add(p50, k, $7); add(p99, k, $8); add(rat, k, $9); add(cus, k, $14) }
       END { fmt = "%-8s %2s %-5s %4s  %-15s %-11s %-11s %-9s %s\n"
             printf fmt, "target", "wk", "path", "conn", "req/s", "p50us", "p99us", "ratio", "prxus/r"
             for (i = 1; i <= n; i++) { k = order[i]; split(k, f, " ")
               printf fmt, f[1], f[2], f[3], f[4], rps[k], p50[k], p99[k], rat[k], cus[k] } }' "$rows"
  echo "columns: wrk%/up%/prx% = CPU of wrk / upstream nginx / proxy (100% = one core over the run);"
  echo "  prxus/r = proxy CPU microseconds per request (user+sys, from /proc ticks, the whole process tree);"
  echo "  opens = TCP active opens on the host during the run (wrk's own conns + proxy->upstream connects);"
  echo "  cores = busy % of each core over the run (/proc/stat)"
  # other work on the host: busy of all cores - wrk - upstream - proxy, % of one core (high = a noisy run)
  awk '{ b = 0; for (i = 16; i <= NF; i++) { split($i, x, "[=%]"); b += x[2] }
         o = b - $11 - $12 - ($13 == "-" ? 0 : $13); if (!($2 in n)) wl[++nw] = $2
         n[$2]++; s[$2] += o; if (o > m[$2]) m[$2] = o; if (o > 30) hi[$2]++ }
       END { printf "other CPU on the host during the runs (busy of all cores - wrk - upstream - proxy, %% of one core):"
             for (j = 1; j <= nw; j++) { w = wl[j]; printf " wk=%s mean %.0f%% max %d%% (%d of %d runs > 30%%);", w, s[w] / n[w], m[w], hi[w], n[w] }
             print " compare rows of quiet runs" }' "$rows"
  echo
  echo "per worker count (mean over the reps): req/s and prxus/r; direct is the same upstream in every block"
  awk '{ k = $1 " " $3 " " $4; if (!(k in seen)) { seen[k] = 1; order[++n] = k }
         if (!($2 in ws)) { ws[$2] = 1; wl[++nw] = $2 }
         r[k "|" $2] += $6; c[k "|" $2]++; if ($14 != "-") { u[k "|" $2] += $14; cu[k "|" $2]++ } }
       END { printf "%-8s %-5s %4s", "target", "path", "conn"
             for (j = 1; j <= nw; j++) printf "  %18s", "wk=" wl[j] " req/s  us/r"
             if (nw > 1) printf "  %s", "req/s wk=" wl[nw] "/wk=" wl[1]
             print ""
             for (i = 1; i <= n; i++) { k = order[i]; split(k, f, " "); printf "%-8s %-5s %4s", f[1], f[2], f[3]
               for (j = 1; j <= nw; j++) { x = k "|" wl[j]
                 if (c[x]) printf "  %11.0f %6s", r[x] / c[x], (cu[x] ? sprintf("%.1f", u[x] / cu[x]) : "-")
                 else printf "  %18s", "-" }
               a = k "|" wl[1]; b = k "|" wl[nw]
               if (nw > 1) printf "  %s", (c[a] && c[b] && r[a] > 0) ? sprintf("%.2f", (r[b] / c[b]) / (r[a] / c[a])) : "-"
               print "" } }' "$rows"
} | log

# bulkhead vs HAProxy: per (wk, path, conns), the ratio of each rep (same round), their mean, and the target
{
  echo
  if ! grep -q '^bulkhead ' "$rows"; then
    echo "bulkhead vs haproxy: not measured${bh_skip:+ ($bh_skip)}"
  else
    echo "bulkhead vs haproxy at the same worker count (ratio = bulkhead / haproxy per rep, joined by /, x = a failed run;"
    echo "  verdict on the mean)"
    awk 'function add(a, k, v) { a[k] = a[k] (a[k] == "" ? "" : "/") v }
         function verdict(m, lim, le) { if (m == "") return "-"; return (le ? m <= lim : m >= lim) ? "MET" : "MISSED" }
         { k = $2 " " $3 " " $4 " " $5 }
         $1 == "haproxy"  { h_rps[k] = $6; h_p99[k] = $8; h_cus[k] = $14 }
         $1 == "bulkhead" { b_rps[k] = $6; b_p99[k] = $8; b_cus[k] = $14; keys[++nk] = k
                            g = $2 " " $3 " " $4; if (!(g in seen)) { seen[g] = 1; order[++n] = g } }
         END {
           for (j = 1; j <= nk; j++) { k = keys[j]; if (!(k in h_rps)) continue; split(k, f, " "); g = f[1] " " f[2] " " f[3]
             if (b_rps[k] + 0 <= 0 || h_rps[k] + 0 <= 0) { add(cs, g, "x"); add(rs, g, "x"); add(ps, g, "x"); continue }
             if (h_cus[k] + 0 > 0 && b_cus[k] != "-") { r = b_cus[k] / h_cus[k]; add(cs, g, sprintf("%.2f", r)); csum[g] += r; cn[g]++ }
             if (h_rps[k] + 0 > 0) { r = b_rps[k] / h_rps[k]; add(rs, g, sprintf("%.2f", r)); rsum[g] += r; rn[g]++ }
             if (h_p99[k] + 0 > 0) { r = b_p99[k] / h_p99[k]; add(ps, g, sprintf("%.2f", r)); psum[g] += r; pn[g]++ } }
           fmt = "%2s %-5s %4s  %-24s %-24s %-24s\n"
           printf fmt, "wk", "path", "conn", "cpu/req (<=0.85)", "req/s (>=1.15)", "p99 (<=1.00)"
           for (i = 1; i <= n; i++) { g = order[i]; split(g, f, " ")
             cm = cn[g] ? sprintf("%.2f", csum[g] / cn[g]) : ""; rm = rn[g] ? sprintf("%.2f", rsum[g] / rn[g]) : ""
             pm = pn[g] ? sprintf("%.2f", psum[g] / pn[g]) : ""
             printf fmt, f[1], f[2], f[3], cs[g] " =" cm " " verdict(cm, 0.85, 1), rs[g] " =" rm " " verdict(rm, 1.15, 0),
               ps[g] " =" pm " " verdict(pm, 1.0, 1) } }' "$rows"
    awk '$1 == "bulkhead" && $10 != "0" { n++ } END { if (n) printf "bulkhead had wrk errors in %d run(s): see the rows above\n", n }' "$rows"
  fi
} | log

# access log on vs off: bh-alog / bulkhead per (path, conns), same round
{
  echo
  if ! grep -q '^bh-alog ' "$rows"; then
    echo "access log on vs off: not measured (ACCESS_LOG_AXIS=$ACCESS_LOG_AXIS${alog_note:+; $alog_note})"
  else
    echo "bulkhead access log on vs off at wk=$ACCESS_LOG_WORKERS (ratio = bh-alog (log.access file) / bulkhead (log.access off),"
    echo "  per rep joined by /, then the mean; lines/req = access log lines written per request wrk counted, B/line = bytes per line)"
    awk 'function add(a, k, v) { a[k] = a[k] (a[k] == "" ? "" : "/") v }
         FNR == 1 { f++ }
         f == 1 { k = $2 " " $3 " " $4 " " $5 }
         f == 1 && $1 == "bulkhead" { o_rps[k] = $6; o_p99[k] = $8; o_cus[k] = $14 }
         f == 1 && $1 == "bh-alog"  { a_rps[k] = $6; a_p99[k] = $8; a_cus[k] = $14; keys[++nk] = k
                                      g = $3 " " $4; if (!(g in seen)) { seen[g] = 1; order[++n] = g }
                                      add(rv_on, g, $6); add(cv_on, g, $14) }
         f == 1 && $1 == "bulkhead" { add(rv_off, $3 " " $4, $6); add(cv_off, $3 " " $4, $14) }
         f == 2 { g = $2 " " $3; if ($5 > 0) { lr[g] += $6 / $5; ln[g]++ } if ($6 > 0) { bl[g] += $7 / $6; bn[g]++ } }
         END {
           for (j = 1; j <= nk; j++) { k = keys[j]; if (!(k in o_rps)) continue; split(k, x, " "); g = x[2] " " x[3]
             if (o_rps[k] + 0 > 0 && a_rps[k] + 0 > 0) { r = a_rps[k] / o_rps[k]; add(rs, g, sprintf("%.3f", r)); rsum[g] += r; rn[g]++ }
             if (o_cus[k] + 0 > 0 && a_cus[k] != "-") { r = a_cus[k] / o_cus[k]; add(cs, g, sprintf("%.3f", r)); csum[g] += r; cn[g]++ }
             if (o_p99[k] + 0 > 0) { r = a_p99[k] / o_p99[k]; add(ps, g, sprintf("%.2f", r)); psum[g] += r; pn[g]++ } }
           fmt = "%-5s %4s  %-15s %-15s %-22s %-15s %-15s %-22s %-18s %9s %6s\n"
           printf fmt, "path", "conn", "req/s off", "req/s on", "req/s on/off", "us/r off", "us/r on", "cpu/req on/off", "p99 on/off", "lines/req", "B/line"
           for (i = 1; i <= n; i++) { g = order[i]; split(g, x, " ")
             printf fmt, x[1], x[2], rv_off[g], rv_on[g], rs[g] " =" (rn[g] ? sprintf("%.3f", rsum[g] / rn[g]) : "-"),
               cv_off[g], cv_on[g], cs[g] " =" (cn[g] ? sprintf("%.3f", csum[g] / cn[g]) : "-"),
               ps[g] " =" (pn[g] ? sprintf("%.2f", psum[g] / pn[g]) : "-"),
               ln[g] ? sprintf("%.3f", lr[g] / ln[g]) : "-", bn[g] ? sprintf("%.0f", bl[g] / bn[g]) : "-" } }' \
      <(awk -v w="$ACCESS_LOG_WORKERS" '$2 == w' "$rows") "$alrows"
    awk '$1 == "bh-alog" && $10 != "0" { n++ } END { if (n) printf "bh-alog had wrk errors in %d run(s): see the rows above\n", n }' "$rows"
  fi
  echo "results appended to $RESULTS"
} | log
