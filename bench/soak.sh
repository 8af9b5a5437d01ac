#!/usr/bin/env bash
# Soak (issue 12, section 3): mixed load through one bulkhead for DURATION, sampling its memory, fds, pools
# and the Postgres backends every 10 s; fails when RSS or fds grow after warm-up. Not part of CI.
#
# usage: bench/soak.sh [DURATION]     DURATION: 90s, 10m, 1h or plain seconds (default 30m)
#   needs scripts/deps.sh --bench (wrk, gnuplot-nox, postgresql) and a normal build (built when missing)
#
# What runs (everything on 127.0.0.1, ports from SOAK_PORT_BASE, default 45000):
#   bulkhead   BULKHEAD_BIN (default build/proxy/bulkhead, copied first), 2 workers, :BASE+1, admin :BASE+3
#   fast       bench/delay-upstream.py :BASE+11 (1 ms)             route /        -> upstream "fast"
#   big        tests/integration/upstream.py :BASE+13 (ctl +15)    route /big/    -> upstream "big"
#   flaky      tests/integration/upstream.py :BASE+17 (ctl +19)    route /flaky/  -> upstream "flaky"
#   postgres   a throwaway cluster (initdb as the postgres OS user) :BASE+33, database/role soak,
#              table counters(64 rows)                              route /sql     -> database "pg"
# Load parts (SOAK_PARTS, all by default; name a subset to bisect a growth):
#   keepalive  wrk -t1 -c8 GET / (keep-alive), each connection pausing 10 ms between requests
#   close      wrk -t1 -c4 GET / with "Connection: close": a new client connection per request, 20 ms pauses
#   slow       bench/soak-clients.py slow-head (a head trickled byte by byte), slowloris (408 after
#              header_timeout), slow-read (8 MiB read at ~1.6 MB/s), slow-upload (1 MiB in 64 KiB pieces)
#   bodies     bench/soak-clients.py download (4 MiB) and upload (8 MiB, Content-Length and chunked)
#   flaky      wrk -t1 -c4 GET /flaky/delay?ms=2, 20 ms pauses, while the upstream cycles every 60 s:
#              30 s ok; 10 s one 503 per second (retried: the client sees 200); 10 s every request reset
#              (retries fail, the breaker opens: fast 503s); 5 s all 503 (half-open probes fail); ok again
#   sql        wrk -t1 -c4 POST /sql (bench/soak-sql.lua): Neon batches of 3 queries, a 2,000-row query
#              every 10th, a failing batch (400) every 25th; 20 ms pauses
#   reload     SIGHUP every 60 s, alternating two configs that differ in the "big" upstream's and the
#              database's pool idle_timeout and in limits.keepalive_timeout (so both pools start afresh)
# Samples (every SOAK_SAMPLE=10 s) into $BENCH_DIR/soak/samples.csv: RSS of the bulkhead process (one
# process, worker threads), its open fds (the mean of 5 readings over 1 s), client connections, pooled upstream and Postgres connections
# (admin /metrics), Postgres backends of role soak (pg_stat_activity), requests, 4xx and 5xx answers
# (cumulative and per second) and reloads done.
# At the end: a summary (requests, errors by kind, reloads, min/max of each series), the plot
# (SOAK_PNG, default docs/img/soak.png, via bench/soak-plot.gp) and the verdict of bench/soak-judge.py: a
# least-squares line over the second half of the samples; RSS or fds growing by >= SOAK_LIMIT_PCT (2) % of
# their mean over that half fails (exit 1). Exit 2 when the setup fails or the run is too short to judge.
# Env: BULKHEAD_BIN, SOAK_PARTS, SOAK_SAMPLE, SOAK_PORT_BASE, SOAK_PNG, SOAK_LIMIT_PCT, BENCH_DIR,
#   SOAK_ACCESS_LOG (log.access; default /dev/null: every line goes through the access-log writer thread and
#   its queue, and costs no disk)
#   (/tmp/bulkhead-bench), RESULTS ($BENCH_DIR/results.txt; the summary is appended to it), KEEP_DATA=1.
# shellcheck disable=SC2317  # cleanup and the loops run from traps and in the background
set -uo pipefail
{ # the whole script is one compound command: bash reads it all before running, so editing the file during a
  # long soak cannot break the run
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/lib.sh
source "$here/lib.sh"
need wrk gnuplot curl ss awk setpriv psql

# --- arguments and settings ----------------------------------------------------------------------------
secs_of() { # secs_of 90s|10m|1h|N -> seconds
  case $1 in
    *[0-9]s) echo "${1%s}" ;;
    *[0-9]m) echo $(( ${1%m} * 60 )) ;;
    *[0-9]h) echo $(( ${1%h} * 3600 )) ;;
    *[0-9]) echo "$1" ;;
    *) return 1 ;;
  esac
}
DURATION=${1:-30m}
DUR_S=$(secs_of "$DURATION") || DUR_S=""
if [[ ! $DUR_S =~ ^[0-9]+$ ]] || ((DUR_S < 30)); then
  echo "usage: bench/soak.sh [DURATION]   (e.g. 90s, 10m, 1h; at least 30s)" >&2
  exit 2
fi
PARTS=" ${SOAK_PARTS:-keepalive close slow bodies flaky sql reload} "
SAMPLE=${SOAK_SAMPLE:-10}
LIMIT_PCT=${SOAK_LIMIT_PCT:-2}
BASE=${SOAK_PORT_BASE:-45000}
SOAK_ACCESS_LOG=${SOAK_ACCESS_LOG:-/dev/null}
# odd offsets: Linux gives outgoing connections even ephemeral ports first, so odd ones are seldom held by
# another program's connection (a TIME-WAIT of a client socket blocks a bind() to its port)
BH_PORT=$((BASE + 1)) ADMIN_PORT=$((BASE + 3))
FAST_PORT=$((BASE + 11)) BIG_PORT=$((BASE + 13)) BIG_CTL=$((BASE + 15))
FLAKY_PORT=$((BASE + 17)) FLAKY_CTL=$((BASE + 19)) PG_PORT=$((BASE + 33))
PNG=${SOAK_PNG:-$BENCH_REPO/docs/img/soak.png}
BULKHEAD_BIN=${BULKHEAD_BIN:-$BENCH_REPO/build/proxy/bulkhead}
# shellcheck disable=SC2012
PGBIN=${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)}
[[ -x $PGBIN/initdb ]] || die "no initdb under /usr/lib/postgresql/*/bin (apt-get install postgresql)"
CONNSTR="postgresql://soak:soak@localhost/soak"
has() { [[ $PARTS == *" $1 "* ]]; }

if [[ ! -x $BULKHEAD_BIN ]]; then
  echo "no binary at $BULKHEAD_BIN: scripts/build.sh normal"
  "$BENCH_REPO/scripts/build.sh" normal >/dev/null || die "scripts/build.sh normal failed"
fi
raise_nofile
dir=$ANCHORS/soak
ports_free "$BH_PORT" "$ADMIN_PORT" "$FAST_PORT" "$BIG_PORT" "$BIG_CTL" "$FLAKY_PORT" "$FLAKY_CTL" "$PG_PORT"

# start_listening VAR LOG PORT... -- CMD...: start CMD in the background (output appended to LOG) and wait until
# it listens on every PORT; its PID goes into VAR. The fixed ports lie in the kernel's ephemeral range, so on a
# busy machine another program's outgoing connection may hold one for a moment: when CMD dies without listening
# (EADDRINUSE), it is started again, up to 5 times, 2 s apart.
start_listening() {
  local var=$1 logf=$2 ports=() p i k sl_pid ok
  shift 2
  while [[ $1 != -- ]]; do ports+=("$1"); shift; done
  shift
  for ((i = 1; i <= 5; i++)); do
    "$@" >>"$logf" 2>&1 &
    sl_pid=$!
    printf -v "$var" '%s' "$sl_pid"
    for ((k = 0; k < 200; k++)); do
      ok=1
      for p in "${ports[@]}"; do port_in_use "$p" || ok=0; done
      ((ok)) && return 0
      kill -0 "$sl_pid" 2>/dev/null || break
      sleep 0.05
    done
    if kill -0 "$sl_pid" 2>/dev/null; then   # alive but not listening after 10 s
      stop_pid "$sl_pid"
      return 1
    fi
    wait "$sl_pid" 2>/dev/null
    echo "start of $1 failed (try $i; ports ${ports[*]}: $(tail -n1 "$logf")); again in 2 s" >&2
    sleep 2
  done
  return 1
}

# --- cleanup: every process started here, by PID ------------------------------------------------------------
PIDS=() PG_PID="" BH_PID=""
cleanup() {
  trap - EXIT INT TERM
  : > "$dir/stop"
  local p
  for p in "${PIDS[@]}"; do stop_pid "$p"; done
  stop_pid "$BH_PID"
  stop_pid "$PG_PID" INT       # SIGINT: fast shutdown
  [[ ${KEEP_DATA:-0} == 1 ]] || rm -rf "$dir/data"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
rm -rf "$dir"
mkdir -p "$dir/data"

# --- postgres (as bench/sql.sh: initdb as the postgres OS user, trust on 127.0.0.1) ----------------------------
as_pg=(setpriv --reuid=postgres --regid=postgres --init-groups -- env HOME="$dir")
chown -R postgres:postgres "$dir/data"
chmod 755 "$dir"
"${as_pg[@]}" "$PGBIN/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --no-sync >"$dir/initdb.log" 2>&1 \
  || die "initdb failed, see $dir/initdb.log"
start_listening PG_PID "$dir/postgres.log" "$PG_PORT" -- "${as_pg[@]}" "$PGBIN/postgres" -D "$dir/data" \
  -c port="$PG_PORT" -c listen_addresses=127.0.0.1 -c unix_socket_directories="$dir/data" \
  -c max_connections=50 -c shared_buffers=32MB -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
  -c logging_collector=off -c log_min_messages=warning || die "postgres did not start, see $dir/postgres.log"
for _ in $(seq 100); do "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" && break; sleep 0.1; done
"$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" || die "postgres did not get ready, see $dir/postgres.log"
pg() { psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres "$@"; }
pg -d postgres -c "CREATE ROLE soak LOGIN PASSWORD 'soak'" -c 'CREATE DATABASE soak OWNER soak' \
  || die "creating role/database soak failed"
psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U soak -d soak \
  -c 'CREATE TABLE counters (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0)' \
  -c 'INSERT INTO counters (id) SELECT generate_series(1, 64)' || die "creating table counters failed"

# --- upstreams -----------------------------------------------------------------------------------------------
start_listening pid "$dir/fast.log" "$FAST_PORT" -- /usr/bin/python3 "$here/delay-upstream.py" \
  --port "$FAST_PORT" --delay-ms 1 || die "upstream fast did not start, see $dir/fast.log"
PIDS+=("$pid")
start_listening pid "$dir/big.log" "$BIG_PORT" "$BIG_CTL" -- /usr/bin/python3 "$BENCH_REPO/tests/integration/upstream.py" \
  --port "$BIG_PORT" --control-port "$BIG_CTL" --name big || die "upstream big did not start, see $dir/big.log"
PIDS+=("$pid")
start_listening pid "$dir/flaky.log" "$FLAKY_PORT" "$FLAKY_CTL" -- /usr/bin/python3 "$BENCH_REPO/tests/integration/upstream.py" \
  --port "$FLAKY_PORT" --control-port "$FLAKY_CTL" --name flaky || die "upstream flaky did not start, see $dir/flaky.log"
PIDS+=("$pid")

# --- bulkhead: two configs that differ slightly (variant 0 and 1) -------------------------------------------------
# soak_conf VARIANT: the config; variant 1 changes the big upstream's and the database's pool idle_timeout and the
# client keep-alive timeout, so each reload really starts those two pools afresh and changes the limits
soak_conf() {
  local v=$1
  bulkhead_conf bench/soak.sh 2 "$BH_PORT" "$ADMIN_PORT" "$SOAK_ACCESS_LOG" "$(cat <<CONF
upstreams:
  fast:
    endpoints: [ "127.0.0.1:$FAST_PORT" ]
    pool: { max_connections: 32, max_idle: 32 }
  big:
    endpoints: [ "127.0.0.1:$BIG_PORT" ]
    pool: { max_connections: 16, idle_timeout: $((4 + v))s }
  flaky:
    endpoints: [ "127.0.0.1:$FLAKY_PORT" ]
    pool: { max_connections: 16 }
    timeouts: { connect: 1s, first_byte: 5s, total: 10s }
    retry:
      attempts: 3
      on: [ connect-failure, reset-before-response, gateway-error ]
      honor_retry_after: false
    breaker:
      consecutive_failures: 5
      open_for: 2s
      max_open_for: 8s
      count: [ connect-failure, timeout, 5xx, reset ]
databases:
  pg:
    hosts: [ "*" ]
    server: "host=127.0.0.1 port=$PG_PORT"
    pool: { max_connections: 8, idle_timeout: $((60 + v))s }
routes:
  - match: { path_prefix: /sql, methods: [ POST, OPTIONS ] }
    database: pg
  - match: { path_prefix: /big/ }
    upstream: big
    strip_prefix: true
  - match: { path_prefix: /flaky/ }
    upstream: flaky
    strip_prefix: true
  - match: { path_prefix: / }
    upstream: fast
CONF
)" "  header_timeout: 8s
  max_body_bytes: 64MiB
  keepalive_timeout: $((60 - 5 * v))s"
}
BH=$dir/bulkhead
copy_bin "$BULKHEAD_BIN" "$BH"
for v in 0 1; do
  soak_conf $v > "$dir/bulkhead-$v.yaml"
  out=$("$BH" --check "$dir/bulkhead-$v.yaml" 2>&1) || die "bulkhead --check $dir/bulkhead-$v.yaml: $out"
done
cp "$dir/bulkhead-0.yaml" "$dir/bulkhead.yaml"
start_listening BH_PID "$dir/bulkhead.log" "$BH_PORT" "$ADMIN_PORT" -- "$BH" -c "$dir/bulkhead.yaml" \
  || die "bulkhead did not start, see $dir/bulkhead.log"

# smoke: every route answers before the load starts
url=http://127.0.0.1:$BH_PORT
[[ $(curl -s --max-time 5 "$url/") == ok ]] || die "GET / through bulkhead failed"
[[ $(curl -s --max-time 5 "$url/big/bytes?n=1000" | wc -c) == 1000 ]] || die "GET /big/bytes failed"
[[ $(curl -s --max-time 5 -o /dev/null -w '%{http_code}' "$url/flaky/delay?ms=1") == 200 ]] || die "GET /flaky failed"
curl -s --max-time 5 "$url/sql" -H "Neon-Connection-String: $CONNSTR" \
  --data-binary '{"query":"SELECT count(*) FROM counters","params":[]}' | grep -q '"rowCount":1' || die "POST /sql failed"

{
  echo "=================================================================="
  bench_id bench/soak.sh
  echo "soak for ${DUR_S}s, parts:$PARTS; samples every ${SAMPLE}s; bulkhead $(bin_id "$BULKHEAD_BIN" "$BH")"
  echo "bulkhead pid $BH_PID on :$BH_PORT (2 workers), logs and samples in $dir"
} | log

# --- load --------------------------------------------------------------------------------------------------------
T0=$(date +%s)
END=$((T0 + DUR_S))
TICKS0_ALL=$(proc_ticks $$) TICKS0_BH=$(proc_ticks "$BH_PID")
# wrk_part NAME DELAY_MS ARGS...: a paced wrk for the whole run (5 s more, so the last sample still sees the
# full load), its output in $dir/wrk-NAME.out
wrk_part() {
  local name=$1 pause=$2; shift 2
  SOAK_PART=$name SOAK_DELAY_MS=$pause SQL_CONNSTR=$CONNSTR \
    wrk -t1 -d"$((DUR_S + 5))s" --timeout 10s "$@" >"$dir/wrk-$name.out" 2>&1 &
  PIDS+=($!)
}
has keepalive && wrk_part keepalive 10 -c8 -s "$here/soak-http.lua" "$url/"
has close && wrk_part close 20 -c4 -H "Connection: close" -s "$here/soak-http.lua" "$url/"
has flaky && wrk_part flaky 20 -c4 -s "$here/soak-http.lua" "$url/flaky/delay?ms=2"
has sql && wrk_part sql 20 -c4 -s "$here/soak-sql.lua" "$url/sql"
kinds=""
has slow && kinds+="slow-head,slowloris,slow-read,slow-upload,"
has bodies && kinds+="download,upload,"
if [[ -n $kinds ]]; then
  /usr/bin/python3 "$here/soak-clients.py" 127.0.0.1 "$BH_PORT" "$dir/clients.json" --kinds "${kinds%,}" \
    >"$dir/clients.log" 2>&1 &
  PIDS+=($!)
fi

# flaky_cycle: the flaky upstream's failure modes, a 60 s cycle (see the header), until the end or the stop file
ctl() { curl -s --max-time 2 -o /dev/null "http://127.0.0.1:$FLAKY_CTL/control?$1"; }
flaky_cycle() {
  local s
  while [[ ! -e $dir/stop ]] && (($(date +%s) < END)); do
    s=$(( ($(date +%s) - T0) % 60 ))
    if ((s < 30)); then ctl "mode=ok"
    elif ((s < 40)); then ctl "mode=fail-503&count=1"
    elif ((s < 50)); then ctl "mode=reset"
    elif ((s < 55)); then ctl "mode=fail-503"
    else ctl "mode=ok"; fi
    sleep 1
  done
  ctl "mode=ok"
}
has flaky && { flaky_cycle & PIDS+=($!); }

# reloader: SIGHUP every 60 s (at 30 s, 90 s, ...: half-way through the flaky cycle), alternating the configs
reloader() {
  local n=0 next=$((T0 + 30))
  while [[ ! -e $dir/stop ]] && ((next < END)); do
    while (($(date +%s) < next)); do [[ -e $dir/stop ]] && return; sleep 0.5; done
    n=$((n + 1))
    cp "$dir/bulkhead-$((n % 2)).yaml" "$dir/bulkhead.yaml.new" && mv "$dir/bulkhead.yaml.new" "$dir/bulkhead.yaml"
    kill -HUP "$BH_PID" 2>/dev/null || return
    echo "$n $(($(date +%s) - T0))" >> "$dir/reloads.txt"
    next=$((next + 60))
  done
}
has reload && { reloader & PIDS+=($!); }

# --- sampling ------------------------------------------------------------------------------------------------------
# sample T: one CSV row from /proc, the admin /metrics and pg_stat_activity
csv=$dir/samples.csv
echo "t_s,rss_kib,fds,clients,pool_http,pool_pg,pg_backends,requests,errors_4xx,errors_5xx,req_rate,err4xx_rate,err5xx_rate,reloads" > "$csv"
prev_t="" prev_req=0 prev_4=0 prev_5=0
sample() {
  local t=$1 rss fds m be
  rss=$(awk '/^VmRSS:/ { print $2 }' /proc/"$BH_PID"/status 2>/dev/null) || return 1
  # fds: the mean of 5 readings 0.2 s apart (client connections come and go within milliseconds)
  fds=$(for _ in 1 2 3 4 5; do find /proc/"$BH_PID"/fd -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; sleep 0.2; done |
    awk '{ s += $1 } END { printf "%.1f", s / NR }')
  m=$(curl -s --max-time 5 "http://127.0.0.1:$ADMIN_PORT/metrics" | awk '
    /^bulkhead_client_connections / { cl = $2 }
    /^bulkhead_pool_connections\{/ { if ($0 ~ /pool="pg"/) pg += $2; else http += $2 }
    /^bulkhead_requests_total\{/ { req += $2; if ($0 ~ /code="4/) e4 += $2; if ($0 ~ /code="5/) e5 += $2 }
    /^bulkhead_config_reloads_total\{result="success"\}/ { rl = $2 }
    END { printf "%d %d %d %d %d %d %d", cl, http, pg, req, e4, e5, rl }')
  be=$(psql -X -tA -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres \
    -c "SELECT count(*) FROM pg_stat_activity WHERE usename = 'soak'" 2>/dev/null)
  local cl http pgc req e4 e5 rl
  read -r cl http pgc req e4 e5 rl <<<"$m"
  local r1="" r4="" r5=""
  if [[ -n $prev_t ]]; then
    r1=$(awk -v a="$prev_req" -v b="$req" -v dt=$((t - prev_t)) 'BEGIN { printf "%.1f", (b - a) / (dt ? dt : 1) }')
    r4=$(awk -v a="$prev_4" -v b="$e4" -v dt=$((t - prev_t)) 'BEGIN { printf "%.2f", (b - a) / (dt ? dt : 1) }')
    r5=$(awk -v a="$prev_5" -v b="$e5" -v dt=$((t - prev_t)) 'BEGIN { printf "%.2f", (b - a) / (dt ? dt : 1) }')
  fi
  prev_t=$t prev_req=$req prev_4=$e4 prev_5=$e5
  echo "$t,$rss,$fds,$cl,$http,$pgc,${be:-0},$req,$e4,$e5,$r1,$r4,$r5,$rl" >> "$csv"
}
echo "running until $(date -u -d "@$END" +%H:%M:%S) UTC; samples in $csv"
next=$T0
while :; do
  now=$(date +%s)
  ((now >= END)) && break
  if ((now >= next)); then
    sample $((now - T0)) || die "bulkhead (pid $BH_PID) is gone: see $dir/bulkhead.log"
    n=$(($(wc -l < "$csv") - 1))
    ((n % 6 == 1)) && tail -n1 "$csv" | awk -F, '{ printf "  t=%4ds rss=%.1fMiB fds=%.1f clients=%d pool_http=%d pool_pg=%d backends=%d requests=%d 4xx=%d 5xx=%d reloads=%d\n", $1, $2 / 1024, $3, $4, $5, $6, $7, $8, $9, $10, $14 }'
    next=$((next + SAMPLE))
  fi
  sleep 0.5
done
sample $(($(date +%s) - T0)) || die "bulkhead (pid $BH_PID) is gone: see $dir/bulkhead.log"
curl -s --max-time 5 "http://127.0.0.1:$ADMIN_PORT/metrics" > "$dir/metrics-end.txt"
ticks_all=$(( $(proc_ticks $$) - TICKS0_ALL )) ticks_bh=$(( $(proc_ticks "$BH_PID") - TICKS0_BH ))
el=$(( $(date +%s) - T0 ))

# --- stop the load, collect --------------------------------------------------------------------------------------
: > "$dir/stop"
for p in "${PIDS[@]:3}"; do
  # wrk ends by itself at -d; the clients and the loops end on SIGTERM
  for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; [[ $(cat /proc/"$p"/comm 2>/dev/null) == wrk ]] || break; sleep 0.1; done
  stop_pid "$p"
done
alive=$(kill -0 "$BH_PID" 2>/dev/null && echo yes || echo no)

# --- summary, plot, verdict -----------------------------------------------------------------------------------------
judge=$(/usr/bin/python3 "$here/soak-judge.py" "$csv" "$LIMIT_PCT"); judge_rc=$?
verdict=$(sed -n 's/^RESULT verdict=\([A-Z]*\).*/\1/p' <<<"$judge")
half_t=$(awk -F, 'NR > 1 { t[++n] = $1 } END { print t[int(n / 2) + 1] + 0 }' "$csv")
{
  echo "--- summary (${DUR_S}s, parts:$PARTS) ---"
  echo "client side (wrk: status:count; socket errors):"
  for f in "$dir"/wrk-*.out; do
    [[ -e $f ]] || continue
    r=$(grep '^RESULT' "$f") || r="no RESULT line: $(tail -n2 "$f" | tr '\n' ' ')"
    echo "  ${r#RESULT }"
  done
  [[ -s $dir/clients.json ]] && echo "  slow clients and bodies: $(cat "$dir/clients.json")"
  echo "bulkhead (admin /metrics at the end):"
  awk 'function lab(k,  r) { r = ""; if (match($1, k "=\"[^\"]*\"")) r = substr($1, RSTART + length(k) + 2, RLENGTH - length(k) - 3); return r }
       /^bulkhead_requests_total\{/ { r = lab("route"); by[(r == "" ? "(no route)" : r) ":" lab("code")] += $2; tot += $2 }
       END { printf "  requests answered: %d; by route and status:", tot
             n = 0; for (k in by) keys[++n] = k
             for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (keys[j] < keys[i]) { x = keys[i]; keys[i] = keys[j]; keys[j] = x }
             for (i = 1; i <= n; i++) printf " %s=%d", keys[i], by[keys[i]]; printf "\n" }' "$dir/metrics-end.txt"
  awk '/^bulkhead_upstream_attempts_total\{/ && $2 > 0 { split($1, a, "\""); printf " %s/%s=%d", a[2], a[4], $2 }
       BEGIN { printf "  attempts by upstream/outcome:" } END { printf "\n" }' "$dir/metrics-end.txt"
  awk '/^bulkhead_(retries_total|retry_budget_exhausted_total|config_reloads_total)/ && $2 > 0 { printf "  %s %s\n", $1, $2 }' "$dir/metrics-end.txt"
  echo "  CPU over the run (100 % = one core): bulkhead $(pct "$ticks_bh" "$el") %, everything the soak started (load, upstreams, Postgres, bulkhead) $(pct "$ticks_all" "$el") %"
  echo "  reloads sent: $(wc -l 2>/dev/null < "$dir/reloads.txt" || echo 0); bulkhead alive at the end: $alive"
  awk -F, 'NR > 1 { n++; for (i = 2; i <= 7; i++) { if (n == 1 || $i < mn[i]) mn[i] = $i; if (n == 1 || $i > mx[i]) mx[i] = $i }
                    if (n == 1) first = $2; last = $2 }
           NR == 1 { for (i = 2; i <= 7; i++) h[i] = $i }
           END { printf "  RSS: first %.1f MiB, last %.1f MiB, min %.1f, max %.1f MiB\n", first / 1024, last / 1024, mn[2] / 1024, mx[2] / 1024
                 for (i = 3; i <= 7; i++) printf "  %s: min %s, max %s\n", h[i], mn[i], mx[i] }' "$csv"
  echo "growth after warm-up (bench/soak-judge.py):"
  grep -v "^FIT " <<<"$judge"
} | log

if ((DUR_S % 60)); then dur_txt="${DUR_S}s"; else dur_txt="$((DUR_S / 60)) min"; fi
title="bench/soak.sh $dur_txt, $(date -u +%Y-%m-%d), git $(git -C "$BENCH_REPO" rev-parse --short HEAD 2>/dev/null): ${verdict:-?}"
mkdir -p "$(dirname "$PNG")"
fits=$(awk '$1 == "FIT" { printf "%s_a=%s; %s_b=%s; ", $2, $3, $2, $4 }' <<<"$judge")
if gnuplot -e "csv='$csv'; out='$PNG'; title='$title'; half=$half_t; ${fits}" "$here/soak-plot.gp" 2>"$dir/gnuplot.err"; then
  log "plot: $PNG"
else
  log "gnuplot failed: $(head -n3 "$dir/gnuplot.err")"
fi
[[ $alive == yes ]] || { log "FAIL: bulkhead exited during the soak, see $dir/bulkhead.log"; exit 1; }
case $judge_rc in
  0) log "PASS: RSS and fds stay flat after warm-up (growth < $LIMIT_PCT % over the second half)" ;;
  1) log "FAIL: $(grep -o '^ *[a-z_]* .*FAIL' <<<"$judge" | awk '{ print $1 }' | paste -sd' ') grew by $LIMIT_PCT % or more over the second half (see above; samples in $csv)" ;;
  *) log "too short to judge: $judge" ;;
esac
exit "$judge_rc"
}
