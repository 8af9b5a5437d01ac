#!/usr/bin/env bash
# TLS termination benchmark (issue 11): bulkhead, HAProxy and nginx terminating HTTPS in the same run, 1 worker /
# thread / process each, with one ECDSA P-256 self-signed certificate made here (openssl CLI, temp dir), all in
# front of the same plain upstream (bench/upstream-nginx.sh, GET / = "hello\n"). Loopback only; ports are the
# first free ones from PORT_BASE. nginx: listen ssl, ssl_session_tickets on, upstream keepalive 64. HAProxy:
# bind ssl crt <cert+key>, http-reuse always. bulkhead: listeners[0].tls.certificates, upstream pool 256.
# Phase 1, the three running side by side, measured back to back, REPS rounds (order rotated per round):
#   ka      wrk -t1 -c$CONNS over https: req/s, p99, terminator CPU µs per request;
#   full    bench/tlsconn.c (built here: cc -O2 ... -lssl -lcrypto): HS_CONNS concurrent connections, each
#           connect, full TLS handshake, GET / with Connection: close, read to the close: conn/s, terminator
#           CPU µs per connection, and the client's own CPU;
#   resume  the same, each connection resuming with the ticket its slot's previous connection received (the
#           share really resumed is printed).
#   CPU = utime+stime of the terminator's process tree from /proc over exactly the measured window. The client's
#   share of a handshake costs as much CPU as the server's or more, so on 2 cores conn/s is bound by the client
#   (a row says "client-bound" when the terminator used < SATURATED% of its core); the "capacity" rows
#   (1e6 / CPU µs per connection: what one busy core would give) are the comparison that holds then.
# Phase 2, one freshly started terminator at a time: KiB per idle TLS connection. After 1 s of handshakes at
#   IDLE_WINDOW concurrent connections (one-off costs and the allocator's high-water mark of that many handshakes
#   in flight), RSS (and PSS) of the tree; tlsconn -m idle opens IDLE_N/2 connections, IDLE_WINDOW at a time
#   (handshake + one keep-alive GET each, then idle); RSS; IDLE_N/2 more; RSS.
#   KiB/conn = (after - before) / IDLE_N; slope = the second batch alone.
# Output: a row per measurement, then means with bulkhead/HAProxy and bulkhead/nginx ratios, per-round ratios,
# and the issue's targets (CPU per keep-alive request <= HAProxy's; full and resumed handshakes/s >= 0.9x
# HAProxy's; idle KiB per TLS connection <= HAProxy's) as MET / MISSED. All of it is appended to $RESULTS.
#
# usage: bench/tls.sh     needs scripts/deps.sh --bench (wrk nginx haproxy openssl) and cc + libssl-dev
#   e.g. DURATION=5 REPS=1 SKIP_BULKHEAD=1 bench/tls.sh
# Env (defaults): DURATION=10 (s per measured run) WARMUP=2 (s, not counted) REPS=2 CONNS=64 (wrk)
#   HS_CONNS=64 HS_THREADS=max(1, cores-1) (tlsconn) IDLE_N=2000 IDLE_WINDOW=100 SETTLE=2 (s before an RSS reading)
#   TESTS="ka full resume idle" TARGETS="nginx haproxy bulkhead" SATURATED=90 NOISY=50 (other CPU % that marks a
#   round as noisy) PORT_BASE=18181
#   BULKHEAD_BIN=build/proxy/bulkhead (copied at start) SKIP_BULKHEAD=1 (anchors only; bulkhead also shows n/a
#   when it is missing, fails --check or does not answer over TLS) CONTROL=1 (adds haproxy2, a second identical
#   HAProxy, and an A/A column haproxy2/haproxy: the noise of the run) TLS_GROUPS (tlsconn -G, e.g. P-256; default
#   OpenSSL's, X25519 first) KEEP=1 (keep the temp dir) BENCH_DIR=/tmp/bulkhead-bench RESULTS=$BENCH_DIR/results.txt
# shellcheck disable=SC2059  # the row format is a variable on purpose
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/lib.sh
source "$here/lib.sh"
need wrk nginx haproxy openssl cc curl ss awk

secs() { local v=${1%s}; [[ $v =~ ^[0-9]+([.][0-9]+)?$ ]] || die "$2: '$1' is not a number of seconds"; echo "$v"; }
DURATION=$(secs "${DURATION:-10}" DURATION)
WARMUP=$(secs "${WARMUP:-2}" WARMUP)
SETTLE=$(secs "${SETTLE:-2}" SETTLE)
REPS=${REPS:-2}
CONNS=${CONNS:-64}
HS_CONNS=${HS_CONNS:-64}
HS_THREADS=${HS_THREADS:-$(( NCPU > 1 ? NCPU - 1 : 1 ))}
IDLE_N=${IDLE_N:-2000}
IDLE_WINDOW=${IDLE_WINDOW:-100}
TARGETS=${TARGETS:-"nginx haproxy bulkhead"}
TESTS=${TESTS:-"ka full resume idle"}
SATURATED=${SATURATED:-90}
NOISY=${NOISY:-50}
PORT_BASE=${PORT_BASE:-18181}
BULKHEAD_BIN=${BULKHEAD_BIN:-$BENCH_REPO/build/proxy/bulkhead}
for v in REPS CONNS HS_CONNS HS_THREADS IDLE_N IDLE_WINDOW SATURATED NOISY PORT_BASE; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v: '${!v}' is not a positive integer"
done
((IDLE_N >= 2)) || die "IDLE_N must be >= 2"
[[ ${CONTROL:-0} == 1 && " $TARGETS " != *" haproxy2 "* ]] && TARGETS+=" haproxy2"
for t in $TARGETS; do [[ $t =~ ^(nginx|haproxy|haproxy2|bulkhead)$ ]] || die "TARGETS: unknown target '$t'"; done
for t in $TESTS; do [[ $t =~ ^(ka|full|resume|idle)$ ]] || die "TESTS: unknown test '$t'"; done
[[ ${SKIP_BULKHEAD:-0} == 1 ]] && TARGETS=$(tr ' ' '\n' <<<"$TARGETS" | grep -vx bulkhead | paste -sd' ')

raise_nofile
(( $(ulimit -n) >= IDLE_N + 1000 )) || die "ulimit -n is $(ulimit -n); IDLE_N=$IDLE_N needs $((IDLE_N + 1000))"

work=$(mktemp -d "${TMPDIR:-/tmp}/bulkhead-tls.XXXXXX") || die "mktemp failed"
chmod 755 "$work"   # nginx workers run as another user when started by root
ANCHORS=$work   # bench/upstream-nginx.sh keeps its files under $ANCHORS/upstream-nginx
export ANCHORS
ok_exit=0
declare -A PID PORT
UP_PID="" IDLE_CL=""
cleanup() {
  trap - EXIT INT TERM
  [[ -n $IDLE_CL ]] && kill "$IDLE_CL" 2>/dev/null
  local t
  for t in "${!PID[@]}"; do stop_pid "${PID[$t]}"; done
  stop_pid "$UP_PID"
  if ((ok_exit)) && [[ ${KEEP:-0} != 1 ]]; then rm -rf "$work"; else echo "files kept in $work" >&2; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# free_port START: the first port >= START that nothing listens on and that no earlier call handed out
declare -A TAKEN
free_port() {
  local p=$1
  while port_in_use "$p" || [[ -n ${TAKEN[$p]:-} ]]; do ((p++)); ((p < $1 + 200)) || die "no free port from $1"; done
  TAKEN[$p]=1
  echo "$p"
}
UP_PORT=$(free_port "$PORT_BASE") || exit 1; TAKEN[$UP_PORT]=1
PORT[nginx]=$(free_port $((UP_PORT + 1))) || exit 1; TAKEN[${PORT[nginx]}]=1
PORT[haproxy]=$(free_port $((PORT[nginx] + 1))) || exit 1; TAKEN[${PORT[haproxy]}]=1
PORT[bulkhead]=$(free_port $((PORT[haproxy] + 1))) || exit 1; TAKEN[${PORT[bulkhead]}]=1
BH_ADMIN=$(free_port $((PORT[bulkhead] + 1))) || exit 1; TAKEN[$BH_ADMIN]=1
PORT[haproxy2]=$(free_port $((BH_ADMIN + 1))) || exit 1; TAKEN[${PORT[haproxy2]}]=1

# --- the certificate, the client, the bulkhead copy --------------------------------------------------------
cert=$work/cert.pem key=$work/key.pem
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$key" -out "$cert" -days 7 \
  -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" >"$work/openssl.log" 2>&1 \
  || die "openssl req failed: $(cat "$work/openssl.log")"
cat "$cert" "$key" > "$work/haproxy.pem"
chmod a+r "$cert" "$key" "$work/haproxy.pem"
tlsconn=$work/tlsconn
cc -O2 -o "$tlsconn" "$here/tlsconn.c" -lssl -lcrypto -lpthread 2>"$work/cc.log" \
  || die "building bench/tlsconn.c failed (libssl-dev installed?): $(head -5 "$work/cc.log")"

bh_skip="" bin=$work/bulkhead
if [[ ${SKIP_BULKHEAD:-0} == 1 ]]; then bh_skip="SKIP_BULKHEAD=1"
elif [[ " $TARGETS " != *" bulkhead "* ]]; then bh_skip="not in TARGETS"
elif [[ ! -x $BULKHEAD_BIN ]]; then bh_skip="no binary at $BULKHEAD_BIN (scripts/build.sh normal)"
else copy_bin "$BULKHEAD_BIN" "$bin"
fi
declare -A WHY   # why a target is not measured
[[ -n $bh_skip ]] && WHY[bulkhead]=$bh_skip

# --- configs -----------------------------------------------------------------------------------------------
# conf_nginx MAXCONN, conf_haproxy MAXCONN, conf_bulkhead: write the target's config into $work
conf_nginx() {
  nginx_conf "$work" nginx-tls 1 "$1" "    upstream up {
        server 127.0.0.1:$UP_PORT;
        keepalive 64;
        keepalive_requests 10000000;
        keepalive_timeout 60s;
    }
    server {
        listen 127.0.0.1:${PORT[nginx]} ssl backlog=4096;
        ssl_certificate $cert;
        ssl_certificate_key $key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_tickets on;
        location / {
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }
    }" "worker_rlimit_nofile $(ulimit -n);" > "$work/nginx-tls.conf"
}
conf_haproxy() { # conf_haproxy NAME MAXCONN (haproxy2: the A/A control, the same config on its own port)
  haproxy_conf "${PORT[$1]}" 1 "$2" "    server up 127.0.0.1:$UP_PORT" "" \
    "    ulimit-n $(ulimit -n)
    no strict-limits" 120s "ssl crt $work/haproxy.pem alpn http/1.1" > "$work/$1.cfg"
}
conf_bulkhead() {
  cat > "$work/bulkhead.yaml" <<CONF
# generated by bench/tls.sh
workers: 1
listeners:
  - name: tls
    address: "127.0.0.1:${PORT[bulkhead]}"
    tls:
      certificates:
        - { cert: "$cert", key: "$key" }
limits:
  max_connections: 20000
  keepalive_timeout: 120s
admin:
  address: "127.0.0.1:$BH_ADMIN"
log:
  level: warn
  access: "off"
$(bulkhead_proxy_body "\"127.0.0.1:$UP_PORT\"")
CONF
}

# https_problem PORT: "" when https://127.0.0.1:PORT/ answers "hello" over TLS, else why not
https_problem() {
  local b
  b=$(curl -ksS --max-time 3 "https://127.0.0.1:$1/" 2>&1) || { echo "GET https://127.0.0.1:$1/ failed: ${b:0:200}"; return; }
  [[ $b == hello ]] || echo "GET https://127.0.0.1:$1/ returned '${b:0:80}'"
}

# start_target NAME MAXCONN: start it (PID[NAME]), wait for its port and a TLS "hello"; 1 (WHY[NAME] set) if not
start_target() {
  local t=$1 why
  [[ -n ${WHY[$t]:-} ]] && return 1
  case $t in
    nginx) conf_nginx "$2"; nginx_start "PID[nginx]" "$work" nginx-tls ;;
    haproxy|haproxy2) conf_haproxy "$t" "$2"; haproxy_start "PID[$t]" "$work/$t.cfg" "$work/$t.log" ;;
    bulkhead)
      conf_bulkhead
      if ! bulkhead_start "PID[bulkhead]" "$bin" "$work/bulkhead.yaml" "$work/bulkhead.log" 2>"$work/bulkhead.check"; then
        WHY[bulkhead]="config rejected: $(head -c 300 "$work/bulkhead.check" | tr '\n' ' ')"
        PID[bulkhead]=""
        return 1
      fi ;;
  esac
  if ! wait_port "${PORT[$t]}" 10; then
    why="did not listen on :${PORT[$t]} (logs in $work)"
  else
    why=$(https_problem "${PORT[$t]}")
  fi
  if [[ -n $why ]]; then
    stop_pid "${PID[$t]}"; PID[$t]=""
    [[ $t == bulkhead ]] || die "$t: $why"
    WHY[$t]=$why
    return 1
  fi
  return 0
}
stop_target() {
  stop_pid "${PID[$1]:-}"; PID[$1]=""
  wait_port_free "${PORT[$1]}" 10 || die "port ${PORT[$1]} still in use after $1 stopped"
}
pids_csv() { pid_tree "$@" | paste -sd,; }

# --- run ---------------------------------------------------------------------------------------------------
UP_PID=$(UPSTREAM_PORT=$UP_PORT "$here/upstream-nginx.sh" 2>"$work/upstream.log" | tail -n1)
[[ $UP_PID =~ ^[0-9]+$ ]] || die "upstream failed to start: $(cat "$work/upstream.log")"
check_hello "http://127.0.0.1:$UP_PORT" upstream

rows=$work/rows.txt
: > "$rows"
{
  echo "=================================================================="
  bench_id bench/tls.sh
  echo "tests: $TESTS; targets: $TARGETS; reps: $REPS; duration ${DURATION}s (+${WARMUP}s warm-up); wrk -t1 -c$CONNS;"
  echo "  tlsconn -c$HS_CONNS -t$HS_THREADS${TLS_GROUPS:+ -G $TLS_GROUPS}; idle: $IDLE_N conns; ulimit -n $(ulimit -n);" \
    "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "certificate: ECDSA P-256 self-signed ($(openssl x509 -in "$cert" -noout -subject | sed 's/^subject=//'))"
  echo "ports: upstream $UP_PORT, nginx ${PORT[nginx]}, haproxy ${PORT[haproxy]}, bulkhead ${PORT[bulkhead]} (admin $BH_ADMIN)$([[ " $TARGETS " == *" haproxy2 "* ]] && echo ", haproxy2 (A/A control) ${PORT[haproxy2]}")"
  echo "$(nginx -v 2>&1); $(haproxy -v | head -n1); $(wrk -v 2>&1 | head -n1); $(openssl version)"
  if [[ -z $bh_skip ]]; then echo "bulkhead binary: $(bin_id "$BULKHEAD_BIN" "$bin")"; else echo "bulkhead not measured: $bh_skip"; fi
} | log

lua=$work/report.lua
wrk_report_lua "$lua"
groups_opt=()
[[ -n ${TLS_GROUPS:-} ]] && groups_opt=(-G "$TLS_GROUPS")

# row TARGET TEST REP V1 .. V8 (the per-test columns, see the format lines below) -> $rows
row() { echo "$*" >> "$rows"; }
fmt_ka='%-8s %-6s %3s  req/s %8.0f  p99 %6s us  cpu %6.1f us/req  terminator %3s%%  wrk %3s%%  upstream %3s%%  other %3s%%  errors %s'
fmt_hs='%-8s %-6s %3s  conn/s %7.0f  p99 %6s us  cpu %6.1f us/conn  terminator %3s%%  client %3s%% (%5.1f us/conn)  upstream %3s%%  other %3s%%  resumed %5.1f%%  failed %s%s'
fmt_id='%-8s %-6s %3s  %5s conns (%s failed)  rss %6s -> %6s -> %6s KiB  pss %6s -> %6s KiB  %6s KiB/conn  slope %6s  pss %6s KiB/conn  %s'

phase1=0
for t in ka full resume; do [[ " $TESTS " == *" $t "* ]] && phase1=1; done
if ((phase1)); then
  live=()
  for t in $TARGETS; do
    if start_target "$t" 20000; then live+=("$t"); else log "$t: not measured: ${WHY[$t]}"; fi
  done
  { for t in "${live[@]}"; do echo "target $t = https://127.0.0.1:${PORT[$t]}/ pids $(pids_csv "${PID[$t]}")"; done; } | log
  # warm-up, not recorded: keep-alive and handshakes through each
  for t in "${live[@]}"; do
    wrk -t1 -c"$CONNS" -d"${WARMUP}s" "https://127.0.0.1:${PORT[$t]}/" >/dev/null 2>&1
    "$tlsconn" -c "$HS_CONNS" -t "$HS_THREADS" -d "$WARMUP" -w 0 "${groups_opt[@]}" 127.0.0.1 "${PORT[$t]}" >/dev/null 2>&1
  done
  n=${#live[@]}
  for ((rep = 1; rep <= REPS; rep++)); do
    order=()
    for ((i = 0; i < n; i++)); do order+=("${live[(i + rep - 1) % n]}"); done
    for test in ka full resume; do
      [[ " $TESTS " == *" $test "* ]] || continue
      for t in "${order[@]}"; do
        port=${PORT[$t]}
        if [[ $test == ka ]]; then
          out=$work/wrk.out
          wrk_measure "$out" "$UP_PID" "${PID[$t]}" -t1 -c"$CONNS" -d"${DURATION}s" --timeout 5s --latency -s "$lua" \
            "https://127.0.0.1:$port/"
          usr=$(us_per "$M_PT" "$M_NREQ")
          # other = busy CPU of the host - wrk - upstream - terminator (% of one core): other work on the machine
          other=$(awk -v b="$(cpu_busy "$M_S0" "$M_S1")" -v w="$M_WCPU" -v u="$(pct "$M_UT" "$M_EL")" -v p="$(pct "$M_PT" "$M_EL")" \
            'BEGIN { n = split(b, x, " "); s = 0; for (i = 1; i <= n; i++) { split(x[i], y, "[=%]"); s += y[2] }
                     o = s - w - u - p; printf "%.0f", o < 0 ? 0 : o }')
          r=$(printf "$fmt_ka" "$t" ka "$rep" "$M_RPS" "$M_P99" "${usr/-/0}" "$(pct "$M_PT" "$M_EL")" "$M_WCPU" \
            "$(pct "$M_UT" "$M_EL")" "$other" "$M_ERR")
          row "$t" ka "$rep" "$M_RPS" "$M_P99" "${usr/-/0}" "$(pct "$M_PT" "$M_EL")" "$M_WCPU" "$M_ERR" "$other"
          { echo "--- $t ka rep=$rep"; cat "$out"; echo "wrk user/sys s: $(cat "$out.time")"; } | raw
        else
          ropt=()
          [[ $test == resume ]] && ropt=(-r)
          res=$("$tlsconn" -c "$HS_CONNS" -t "$HS_THREADS" -d "$DURATION" -w "$WARMUP" "${ropt[@]}" "${groups_opt[@]}" \
            -P "$(pids_csv "${PID[$t]}")" -U "$(pids_csv "$UP_PID")" 127.0.0.1 "$port" 2>"$work/tlsconn.err" | grep '^RESULT')
          { echo "--- $t $test rep=$rep"; echo "$res"; cat "$work/tlsconn.err"; } | raw
          if [[ -z $res ]]; then
            log "$t $test rep=$rep: tlsconn gave no result: $(head -3 "$work/tlsconn.err")"
            continue
          fi
          read -r cps p99 sus spct cpct cus upct other rpct failed info < <(awk -v l="$res" 'function max0(x) { return x < 0 ? 0 : x }
            BEGIN {
            n = split(l, f, " "); for (i = 2; i <= n; i++) { split(f[i], kv, "="); v[kv[1]] = kv[2] }
            c = v["conns"] + 0; d = v["duration_s"] + 0; if (d <= 0) d = 1
            printf "%.1f %d %.1f %.0f %.0f %.1f %.0f %.0f %.1f %d %s/%s/%s\n", v["cps"], v["p99_us"],
              c ? 1e6 * v["server_cpu_s"] / c : 0, 100 * v["server_cpu_s"] / d, 100 * v["client_cpu_s"] / d,
              c ? 1e6 * v["client_cpu_s"] / c : 0, 100 * v["up_cpu_s"] / d,
              max0(v["busy_pct"] - 100 * (v["server_cpu_s"] + v["client_cpu_s"] + v["up_cpu_s"]) / d), c ? 100 * v["resumed"] / c : 0,
              v["failed"], v["version"], v["cipher"], v["group"] }')
          note=""
          ((spct < SATURATED)) && note="  client-bound (terminator < ${SATURATED}%)"
          [[ $test == resume ]] && awk -v r="$rpct" 'BEGIN { exit !(r < 99) }' && note+="  WARNING: only $rpct% resumed"
          ((failed > 0)) && note+="  $(head -c 200 "$work/tlsconn.err" | tr '\n' ' ')"
          r=$(printf "$fmt_hs" "$t" "$test" "$rep" "$cps" "$p99" "$sus" "$spct" "$cpct" "$cus" "$upct" "$other" "$rpct" "$failed" "$note")
          row "$t" "$test" "$rep" "$cps" "$p99" "$sus" "$spct" "$cpct" "$cus" "$rpct" "$failed" "$info" "$other"
        fi
        log "$r"
      done
    done
  done
  for t in "${live[@]}"; do stop_target "$t"; done
fi

# --- phase 2: idle memory, one fresh terminator at a time --------------------------------------------------
# rss_kib PID: "RSS_KiB PSS_KiB" summed over the process tree
rss_kib() {
  local r=0 s=0 p v
  for p in $(pid_tree "$1"); do
    v=$(awk '/^VmRSS:/ { print $2 }' /proc/"$p"/status 2>/dev/null) && r=$((r + ${v:-0}))
    v=$(awk '/^Pss:/ { print $2 }' /proc/"$p"/smaps_rollup 2>/dev/null) && s=$((s + ${v:-0}))
  done
  echo "$r $s"
}
if [[ " $TESTS " == *" idle "* ]]; then
  log "idle: $IDLE_N TLS connections in two batches, each connection: handshake + one keep-alive GET, then idle"
  for t in $TARGETS; do
    if ! start_target "$t" $((IDLE_N + 1000)); then log "$t: idle not measured: ${WHY[$t]}"; continue; fi
    # warm-up at the concurrency the idle client opens with: the one-off costs, and the allocator's high-water
    # mark of IDLE_WINDOW handshakes in flight, land before the "before" reading
    "$tlsconn" -c "$IDLE_WINDOW" -d 1 -w 0 "${groups_opt[@]}" 127.0.0.1 "${PORT[$t]}" >/dev/null 2>&1
    sleep "$SETTLE"
    read -r rb pb <<<"$(rss_kib "${PID[$t]}")"
    half=$((IDLE_N / 2))
    { coproc IDL { exec "$tlsconn" -m idle -W "$IDLE_WINDOW" "${groups_opt[@]}" 127.0.0.1 "${PORT[$t]}" 2>"$work/idle.err"; }; } 2>/dev/null
    IDLE_CL=$IDL_PID
    exec {i_out}<&"${IDL[0]}" {i_in}>&"${IDL[1]}"
    echo "open $half" >&"$i_in"
    r1="" r2="" dn=""
    read -r -t 300 r1 <&"$i_out"
    sleep "$SETTLE"
    read -r rh _ <<<"$(rss_kib "${PID[$t]}")"
    echo "open $((IDLE_N - half))" >&"$i_in"
    read -r -t 300 r2 <&"$i_out"
    sleep "$SETTLE"
    read -r ra pa <<<"$(rss_kib "${PID[$t]}")"
    estab=$(ss -Htn state established "( sport = :${PORT[$t]} )" | wc -l)
    echo quit >&"$i_in"
    read -r -t 60 dn <&"$i_out"
    exec {i_in}>&- {i_out}<&-
    wait "$IDLE_CL" 2>/dev/null
    IDLE_CL=""
    read -r _ ok1 _ _ <<<"$r1"
    read -r _ ok failed _ <<<"$r2"
    ok=${ok:-0} failed=${failed:-?} ok1=${ok1:-0}
    per=$(awk -v a="$ra" -v b="$rb" -v n="$ok" 'BEGIN { if (n + 0 <= 0) print "-"; else printf "%.2f", (a - b) / n }')
    slope=$(awk -v a="$ra" -v h="$rh" -v n="$((ok - ok1))" 'BEGIN { if (n + 0 <= 0) print "-"; else printf "%.2f", (a - h) / n }')
    pper=$(awk -v a="$pa" -v b="$pb" -v n="$ok" 'BEGIN { if (n + 0 <= 0) print "-"; else printf "%.2f", (a - b) / n }')
    note="established at reading: $estab; ${dn#DONE }"
    [[ -s $work/idle.err ]] && note+="; $(head -c 200 "$work/idle.err" | tr '\n' ' ')"
    log "$(printf "$fmt_id" "$t" idle 1 "$ok" "$failed" "$rb" "$rh" "$ra" "$pb" "$pa" "$per" "$slope" "$pper" "$note")"
    [[ $per != - ]] && row "$t" idle 1 "$per" "$slope" "$pper" "$ok" "$failed"
    stop_target "$t"
  done
fi

# --- summary -----------------------------------------------------------------------------------------------
{
  echo
  echo "summary: means over the rounds (per-round rows above); ratio = bulkhead / other, of the means; n/a = not measured;"
  echo "  per-round bh/hap = the ratio in each round (same round, back to back), to judge the noise; * = a round in which"
  echo "  other work on the host took more than ${NOISY}% of a core during one of the two runs (see \"other\" in the rows)"
  awk -v why="${WHY[bulkhead]:-}" -v noisy="$NOISY" -v sat="$SATURATED" '
    { k = $1 SUBSEP $2; if ($3 + 0 > nr) nr = $3 + 0
      if (($2 == "full" || $2 == "resume") && ($1 == "bulkhead" || $1 == "haproxy") && $7 + 0 < sat) bound[$2] = 1
      if ($2 == "ka") oth[k, $3] = $10; else if ($2 == "full" || $2 == "resume") oth[k, $3] = $13
      for (i = 4; i <= 11 && i <= NF; i++) if ($i ~ /^-?[0-9.]+$/) { s[k, i] += $i; c[k, i]++; v[k, $3, i] = $i } }
    function m(t, test, col) { return (c[t, test, col] ? s[t, test, col] / c[t, test, col] : "") }
    function f(x, d) { return x == "" ? "n/a" : sprintf("%." d "f", x) }
    function r(a, b) { return (a == "" || b == "" || b + 0 == 0) ? "n/a" : sprintf("%.2f", a / b) }
    function inv(x) { return (x + 0 > 0) ? 1e6 / x : "" }
    # per-round T/haproxy ratios joined by "/" (cap: of 1e6/x)
    function rounds(t, test, col, cap,    j, a, h, o) {
      o = ""
      for (j = 1; j <= nr; j++) {
        a = ((t SUBSEP test SUBSEP j SUBSEP col) in v) ? v[t, test, j, col] : ""
        h = (("haproxy" SUBSEP test SUBSEP j SUBSEP col) in v) ? v["haproxy", test, j, col] : ""
        if (cap) { a = inv(a); h = inv(h) }
        if (a == "" || h == "") continue
        o = o (o == "" ? "" : "/") r(a, h) ((oth[t, test, j] + 0 > noisy || oth["haproxy", test, j] + 0 > noisy) ? "*" : "")
      }
      return o == "" ? "-" : o
    }
    function out(name, b, h, a, c, d, tgt, le, lim, rl, rc,    rh, vd) {
      if (a == "" && b == "" && h == "") return   # a test not run
      rh = r(a, h)
      vd = (tgt == "" ? "" : (rh == "n/a" ? "n/a" : ((le ? rh + 0 <= lim : rh + 0 >= lim) ? "MET" : "MISSED")))
      printf "%-34s %9s %9s %9s %7s %7s  %-17s %-6s %-15s", name, f(b, d), f(h, d), f(a, d), rh, r(a, b), tgt, vd, rl
      if (aa) printf " %6s %-15s", r(c, h), rc
      if (note != "") printf " %s", note
      printf "\n"
    }
    function line(name, test, col, d, tgt, le, lim) {
      note = (tgt != "" && col == 4 && (test in bound)) ? "client-bound: read the capacity row" : ""
      out(name, m("nginx", test, col), m("haproxy", test, col), m("bulkhead", test, col), m("haproxy2", test, col), d,
          tgt, le, lim, tgt == "" ? "" : rounds("bulkhead", test, col, 0), tgt == "" ? "" : rounds("haproxy2", test, col, 0))
    }
    # capacity: the conn/s one fully busy core would give = 1e6 / terminator CPU us per conn
    function capline(name, test) {
      note = ""
      out(name, inv(m("nginx", test, 6)), inv(m("haproxy", test, 6)), inv(m("bulkhead", test, 6)),
          inv(m("haproxy2", test, 6)), 0, ">= 0.90x HAProxy", 0, 0.9, rounds("bulkhead", test, 6, 1),
          rounds("haproxy2", test, 6, 1))
    }
    END {
      for (x in c) if (x ~ /^haproxy2/) aa = 1
      printf "%-34s %9s %9s %9s %7s %7s  %-17s %-6s %-15s", "figure", "nginx", "haproxy", "bulkhead", "bh/hap", "bh/ngx",
        "target", "verdict", "per-round bh/hap"
      if (aa) printf " %6s %s", "A/A", "per-round A/A"
      printf "\n"
      line("keep-alive req/s", "ka", 4, 0)
      line("keep-alive p99 us", "ka", 5, 0)
      line("keep-alive CPU us/req", "ka", 6, 1, "<= HAProxy", 1, 1.0)
      line("full handshakes conn/s", "full", 4, 0, ">= 0.90x HAProxy", 0, 0.9)
      line("full handshake CPU us/conn", "full", 6, 1)
      capline("full: capacity conn/s (1 core)", "full")
      line("full: terminator CPU %", "full", 7, 0)
      line("full: client CPU us/conn", "full", 9, 1)
      line("resumed handshakes conn/s", "resume", 4, 0, ">= 0.90x HAProxy", 0, 0.9)
      line("resumed handshake CPU us/conn", "resume", 6, 1)
      capline("resumed: capacity conn/s (1 core)", "resume")
      line("resumed: terminator CPU %", "resume", 7, 0)
      line("resumed: share resumed %", "resume", 10, 1)
      line("idle KiB per TLS conn", "idle", 4, 2, "<= HAProxy", 1, 1.0)
      line("idle KiB per TLS conn (slope)", "idle", 5, 2, "<= HAProxy", 1, 1.0)
      line("idle PSS KiB per TLS conn", "idle", 6, 2)
      if (why != "") print "bulkhead: n/a (" why ")"
      if (aa) print "A/A = haproxy2 / haproxy: a second, identical HAProxy measured in the same rounds (CONTROL=1); " \
        "its distance from 1.00 is the noise of this run"
    }' "$rows"
  # client-bound notes
  awk -v sat="$SATURATED" '($2 == "full" || $2 == "resume") && $7 + 0 < sat { cb[$2] = cb[$2] " " $1 "/r" $3 "=" $7 "%" }
    END { for (t in cb) printf "%s: terminator below %d%% of a core in:%s -> conn/s there is bound by the client/host; " \
      "compare the capacity rows (CPU per connection) instead\n", t, sat, cb[t] }' "$rows"
  awk '$2 == "full" || $2 == "resume" { split($12, x, "/"); v[$1 " " x[1] " " x[2] " " x[3]] = 1 }
    END { for (k in v) print "negotiated (target version cipher group): " k }' "$rows" | sort
  echo "columns: CPU = utime+stime of the terminator's process tree (/proc ticks) over the measured window;"
  echo "  keep-alive CPU includes proxying the request to the plain upstream; conn/s: each connection = TCP connect +"
  echo "  TLS handshake + one proxied GET + close. This VM is 2 cores shared with other work: compare within a run."
  echo "results appended to $RESULTS"
} | log
ok_exit=1
