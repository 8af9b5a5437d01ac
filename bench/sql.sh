#!/usr/bin/env bash
# SQL-over-HTTP benchmark (issue 4): point selects by primary key on a pgbench table, in ONE run, at the
# same client counts, through
#   direct    pgbench -S straight to Postgres                     127.0.0.1:$PG_PORT   (-M extended, -M prepared,
#                                                                                       -M simple)
#   bouncer   pgbench -S via PgBouncer, pool_mode=transaction,
#             default_pool_size=$POOL                             127.0.0.1:$PGB_PORT  (-M extended, -M simple)
#   bulkhead  wrk + bench/sql.lua posting the Neon body to /sql   127.0.0.1:$BH_PORT
#             {"query":"SELECT abalance FROM pgbench_accounts WHERE aid = $1","params":["<1..100000*SCALE>"]}
#             with Neon-Raw-Text-Output/Neon-Array-Mode: true; bulkhead runs it with PQsendQueryParams,
#             the same server-side work as pgbench -M extended (Parse/Bind/Describe/Execute/Sync).
#             Two bulkhead processes (issue 10, section D): bulkhead:http with databases.main.statement_cache: 0
#             on 127.0.0.1:$BH_PORT, bulkhead:cached with statement_cache: 256 on 127.0.0.1:$BH2_PORT, both
#             with reset: auto written out.
# The cluster is made like shared/bench/pg-anchors.sh does (initdb as the postgres OS user, trust auth on
# 127.0.0.1, fsync off, pgbench -i -s $SCALE, PgBouncer with the same settings), on ports of its own.
# Each path logs in to Postgres as its own role, so the server connections it holds are counted apart:
#   direct = postgres, bouncer = pgb (forced by PgBouncer's [databases] user=), bulkhead:http = bh,
#   bulkhead:cached = bhc (from the Neon-Connection-String, auth: passthrough; trust auth, so the password is
#   not checked).
# bulkhead: workers 1, access log off, databases.main (hosts "*", pool max_connections = max_idle = $POOL,
# reset: auto, statement_cache 0 or 256), route /sql [POST, OPTIONS] -> main; each config is checked with
# bulkhead --check first. A binary that rejects statement_cache/reset (before issue 10 D): bulkhead:http runs
# without those keys (today's behaviour: reset after every request, no cache) and says so; bulkhead:cached is
# skipped with the reason.
#
# usage: bench/sql.sh      needs scripts/deps.sh --bench (postgresql, pgbouncer, wrk) and a normal build
# Env (defaults): BULKHEAD_BIN=build/proxy/bulkhead DURATION=10 (s) REPS=2 CONNS="32 256" SCALE=10 POOL=16
#   JOBS=2 (pgbench -j) THREADS=1 (wrk -t) WARMUP=2 (s, per target, not recorded) SAMPLE=0.05 (pgbench
#   log sampling for p50/p99)
#   RUNS="direct:extended direct:prepared bouncer:extended bulkhead:http bulkhead:cached direct:simple bouncer:simple"
#   DIAG=1 (also, per rep: direct -M simple with $POOL clients, without and with bulkhead's per-release
#   session reset after each select: what Postgres alone allows at that pool size)
#   PROFILE=auto (perf record -g of bulkhead during one extra $DURATION run at c=32 when a target is missed,
#   with the top 15 symbols by self %; 1 = always, 0 = never)
#   PG_PORT=15532 PGB_PORT=16532 BH_PORT=18290 BH_ADMIN_PORT=18291 BH2_PORT=18292 BH2_ADMIN_PORT=18293
#   BENCH_DIR=/tmp/bulkhead-bench RESULTS=$BENCH_DIR/results.txt KEEP_DATA=0
# Output: one row per run (CPU per query of the proxy and of Postgres in each), a summary, and at each client
# count the targets of issue 10 D, each MET or MISSED: bulkhead:http vs PgBouncer extended (>= 1.1x) and vs
# direct extended (>= 0.8x), bulkhead:cached vs direct extended (>= 1.2x), bulkhead's CPU per query vs
# PgBouncer's (<= 1.0x). Everything is printed and appended to $RESULTS; every process started here is
# stopped by its PID on exit.
# shellcheck disable=SC2059  # the row format is a variable on purpose, as in the anchor scripts
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/lib.sh
source "$here/lib.sh"
need wrk pgbench psql pgbouncer setpriv curl ss awk sort

# shellcheck disable=SC2012
PGBIN=${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)}
[[ -x $PGBIN/initdb ]] || die "no initdb under /usr/lib/postgresql/*/bin (apt-get install postgresql)"
DURATION=${DURATION:-10}
DURATION=${DURATION%s}
REPS=${REPS:-2}
CONNS=${CONNS:-"32 256"}
SCALE=${SCALE:-10}
POOL=${POOL:-16}
JOBS=${JOBS:-2}
THREADS=${THREADS:-1}
WARMUP=${WARMUP:-2}
WARMUP=${WARMUP%s}
SAMPLE=${SAMPLE:-0.05}
RUNS=${RUNS:-"direct:extended direct:prepared bouncer:extended bulkhead:http bulkhead:cached direct:simple bouncer:simple"}
DIAG=${DIAG:-1}
PROFILE=${PROFILE:-auto}
PG_PORT=${PG_PORT:-15532}
PGB_PORT=${PGB_PORT:-16532}
BH_PORT=${BH_PORT:-18290}
BH_ADMIN_PORT=${BH_ADMIN_PORT:-18291}
BH2_PORT=${BH2_PORT:-18292}
BH2_ADMIN_PORT=${BH2_ADMIN_PORT:-18293}
BULKHEAD_BIN=${BULKHEAD_BIN:-$BENCH_REPO/build/proxy/bulkhead}
ACCOUNTS=$((100000 * SCALE))
BH_CONNSTR="postgresql://bh:bench@localhost/bench"
BH2_CONNSTR="postgresql://bhc:bench@localhost/bench"
LUA=$here/sql.lua

raise_nofile
[[ -x $BULKHEAD_BIN ]] || die "no bulkhead binary at $BULKHEAD_BIN (scripts/build.sh normal)"
[[ -r $LUA ]] || die "missing $LUA"

dir=$ANCHORS/sql
PG_PID="" PGB_PID="" BH_PID="" BH2_PID="" SAMPLER_PID=""
cleanup() {
  trap - EXIT INT TERM
  [[ -n $SAMPLER_PID ]] && { : > "$dir/sampler.stop"; stop_pid "$SAMPLER_PID"; }
  stop_pid "$BH_PID"
  stop_pid "$BH2_PID"
  stop_pid "$PGB_PID"          # SIGTERM: immediate shutdown
  stop_pid "$PG_PID" INT       # SIGINT: fast shutdown
  [[ ${KEEP_DATA:-0} == 1 ]] || rm -rf "$dir/data"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ports_free "$PG_PORT" "$PGB_PORT" "$BH_PORT" "$BH_ADMIN_PORT" "$BH2_PORT" "$BH2_ADMIN_PORT"
# run as the postgres OS user (initdb refuses root); setpriv and env exec, so $! is the server itself
as_pg=(setpriv --reuid=postgres --regid=postgres --init-groups -- env HOME="$dir")
check_comm() { [[ $(cat /proc/"$1"/comm 2>/dev/null) == "$2" ]] || die "pid $1 is not $2"; }

# --- cluster -----------------------------------------------------------------
rm -rf "$dir"
mkdir -p "$dir/data" "$dir/log"
chown -R postgres:postgres "$dir"
"${as_pg[@]}" "$PGBIN/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --no-sync >"$dir/initdb.log" 2>&1 \
  || die "initdb failed, see $dir/initdb.log"
# max_connections 400: 256 direct clients while PgBouncer's and both bulkheads' pools ($POOL each) stay open
"${as_pg[@]}" "$PGBIN/postgres" -D "$dir/data" \
  -c port="$PG_PORT" -c listen_addresses=127.0.0.1 -c unix_socket_directories="$dir" \
  -c max_connections=400 -c shared_buffers=256MB \
  -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
  -c logging_collector=off -c log_min_messages=warning \
  >"$dir/postgres.log" 2>&1 &
PG_PID=$!
for _ in $(seq 100); do "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" && break; sleep 0.1; done
"$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" || die "postgres did not start, see $dir/postgres.log"
check_comm "$PG_PID" postgres
pg() { psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres "$@"; }
pg -d postgres -c 'CREATE DATABASE bench' || die "createdb failed"
t0=$(date +%s%N)
pgbench -h 127.0.0.1 -p "$PG_PORT" -U postgres -i -s "$SCALE" -q bench >"$dir/pgbench-init.log" 2>&1 \
  || die "pgbench -i failed, see $dir/pgbench-init.log"
init_s=$(awk -v a="$t0" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')
# one role per path, so pg_stat_activity tells their server connections apart
pg -d bench -c 'CREATE ROLE pgb LOGIN; CREATE ROLE bh LOGIN; CREATE ROLE bhc LOGIN; GRANT pg_read_all_data TO pgb, bh, bhc' \
  || die "creating the roles failed"

# --- pgbouncer (as pg-anchors.sh, plus user=pgb for the server logins) ---------
printf '"postgres" ""\n"pgb" ""\n' > "$dir/userlist.txt"
cat > "$dir/pgbouncer.ini" <<CONF
[databases]
bench = host=127.0.0.1 port=$PG_PORT dbname=bench user=pgb
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGB_PORT
unix_socket_dir =
auth_type = trust
auth_file = $dir/userlist.txt
admin_users = postgres
pool_mode = transaction
default_pool_size = $POOL
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = 2000
max_db_connections = 0
ignore_startup_parameters = extra_float_digits
log_connections = 0
log_disconnections = 0
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
CONF
chown postgres:postgres "$dir/userlist.txt" "$dir/pgbouncer.ini"
"${as_pg[@]}" pgbouncer "$dir/pgbouncer.ini" >"$dir/pgbouncer.stdout" 2>&1 &
PGB_PID=$!
wait_port "$PGB_PORT" 5 || die "pgbouncer did not start, see $dir/pgbouncer.log"
check_comm "$PGB_PID" pgbouncer

# --- bulkhead (a copy of the binary, so a rebuild during the run changes nothing) --
copy_bin "$BULKHEAD_BIN" "$dir/bulkhead"
# bh_yaml PORT ADMIN_PORT CACHE [NEW_KEYS]: databases.main with the pool of $POOL; NEW_KEYS=0 leaves out the keys of
# issue 10 D (reset, statement_cache) for a binary that does not know them yet
bh_yaml() {
  local extra=""
  [[ ${4:-1} == 1 ]] && extra="
    reset: auto
    statement_cache: $3"
  bulkhead_conf bench/sql.sh 1 "$1" "$2" off "$(cat <<CONF
databases:
  main:
    hosts: [ "*" ]
    server: "host=127.0.0.1 port=$PG_PORT"$extra
    pool:
      max_connections: $POOL
      max_idle: $POOL
routes:
  - match: { path_prefix: /sql, methods: [ POST, OPTIONS ] }
    database: main
CONF
)"
}
# check_reason OUTPUT: the message of a --check error without its FILE:LINE:COL and list of expected keys
check_reason() { sed -n 's/.*:[0-9]*:[0-9]*: \([^,]*\).*/\1/p' <<<"$1" | head -n1; }
# bulkhead:http, statement cache off. Before issue 10 D, --check rejects reset/statement_cache: run without them
# (then it is today's bulkhead: reset after every request, no cache) rather than not at all, and say so.
BH_NOTE="reset: auto, statement_cache: 0"
bh_yaml "$BH_PORT" "$BH_ADMIN_PORT" 0 > "$dir/bulkhead.yaml"
if ! out=$("$dir/bulkhead" --check "$dir/bulkhead.yaml" 2>&1); then
  BH_NOTE="without reset/statement_cache ($(check_reason "$out"): this binary predates them), i.e. a reset after every request"
  echo "note: bulkhead:http runs $BH_NOTE" >&2
  bh_yaml "$BH_PORT" "$BH_ADMIN_PORT" 0 0 > "$dir/bulkhead.yaml"
fi
bulkhead_start BH_PID "$dir/bulkhead" "$dir/bulkhead.yaml" "$dir/bulkhead.log" || die "bulkhead --check rejected $dir/bulkhead.yaml"
wait_port "$BH_PORT" 10 || die "bulkhead did not listen on :$BH_PORT, see $dir/bulkhead.log"
# bulkhead:cached, statement_cache: 256: skipped (every run of it) when this binary rejects the key
BH2_NOTE="reset: auto, statement_cache: 256"
bh_yaml "$BH2_PORT" "$BH2_ADMIN_PORT" 256 > "$dir/bulkhead-cached.yaml"
if bulkhead_start BH2_PID "$dir/bulkhead" "$dir/bulkhead-cached.yaml" "$dir/bulkhead-cached.log" 2>"$dir/bulkhead-cached.check"; then
  wait_port "$BH2_PORT" 10 || die "bulkhead (cached) did not listen on :$BH2_PORT, see $dir/bulkhead-cached.log"
else
  BH2_NOTE="SKIPPED, this binary rejects statement_cache: $(check_reason "$(cat "$dir/bulkhead-cached.check")")"
  echo "note: bulkhead:cached $BH2_NOTE" >&2
fi

# --- sanity: every path answers the query ------------------------------------
for t in direct:postgres:$PG_PORT bouncer:postgres:$PGB_PORT; do
  IFS=: read -r name user port <<<"$t"
  [[ $(psql -X -tA -h 127.0.0.1 -p "$port" -U "$user" -d bench -c 'select count(*) from pgbench_branches') == "$SCALE" ]] \
    || die "$name (:$port): sanity query failed"
done
# bh_sanity PORT CONNSTR: one point select through that bulkhead must answer the row
bh_sanity() {
  local body
  # shellcheck disable=SC2016  # $1 is SQL
  body=$(curl -sS --max-time 5 -o - -w '\n%{http_code}' -X POST "http://127.0.0.1:$1/sql" \
    -H "Neon-Connection-String: $2" -H 'Neon-Raw-Text-Output: true' -H 'Neon-Array-Mode: true' \
    --data-raw '{"query":"SELECT abalance FROM pgbench_accounts WHERE aid = $1","params":["42"]}')
  [[ ${body##*$'\n'} == 200 && $body == *'"rows":[["0"]],"command":"SELECT","rowCount":1,'* ]] \
    || die "bulkhead (:$1) /sql sanity query failed: ${body//$'\n'/ }"
}
bh_sanity "$BH_PORT" "$BH_CONNSTR"
[[ -n $BH2_PID ]] && bh_sanity "$BH2_PORT" "$BH2_CONNSTR"

# --- server connections: one psql session samples pg_stat_activity every 0.2 s --
# Lines "usename total active"; connections to database bench only (the sampler itself is on postgres).
: > "$dir/activity.txt"
(
  while [[ ! -e $dir/sampler.stop ]]; do
    echo "select '#', extract(epoch from now())::bigint;"
    echo "select usename, count(*), count(*) filter (where state <> 'idle') from pg_stat_activity
          where datname = 'bench' and backend_type = 'client backend' group by 1;"
    sleep 0.2
  done
) | psql -X -tA -F' ' -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres >>"$dir/activity.txt" 2>"$dir/sampler.err" &
SAMPLER_PID=$!
act_mark() { wc -l < "$dir/activity.txt"; }
# act_max LINE0 USER -> "max_total max_active" over the samples since LINE0
act_max() { tail -n +"$(( $1 + 1 ))" "$dir/activity.txt" |
  awk -v u="$2" '$1 == u { if ($2 > t) t = $2; if ($3 > a) a = $3 } END { printf "%d %d", t, a }'; }

# TARGET [MODE]: bulkhead:cached is the second bulkhead (statement_cache: 256), every other bulkhead mode the first
role_of() { case $1:${2:-} in direct:*) echo postgres ;; bouncer:*) echo pgb ;; bulkhead:cached) echo bhc ;; bulkhead:*) echo bh ;; esac; }
port_of() { case $1:${2:-} in direct:*) echo "$PG_PORT" ;; bouncer:*) echo "$PGB_PORT" ;; bulkhead:cached) echo "$BH2_PORT" ;; bulkhead:*) echo "$BH_PORT" ;; esac; }
cpid_of() { case $1:${2:-} in bouncer:*) echo "$PGB_PID" ;; bulkhead:cached) echo "$BH2_PID" ;; bulkhead:*) echo "$BH_PID" ;; esac; }
connstr_of() { case ${1:-} in cached) echo "$BH2_CONNSTR" ;; *) echo "$BH_CONNSTR" ;; esac; }
ms() { awk -v u="$1" 'BEGIN { printf "%.3f", u / 1000 }'; }

{
  echo "=================================================================="
  echo "$(bench_id bench/sql.sh) load=$(cut -d' ' -f1-3 /proc/loadavg)"
  echo "$("$PGBIN/postgres" --version); $(pgbench --version); $(pgbouncer --version | head -n1); $(wrk -v 2>&1 | head -n1 | cut -d' ' -f1-2)"
  echo "bulkhead: $BULKHEAD_BIN ($(stat -c %y "$BULKHEAD_BIN" | cut -d. -f1)) $("$dir/bulkhead" --version 2>&1 | head -n1); workers 1; databases.main pool max_connections=max_idle=$POOL"
  echo "  bulkhead:http   :$BH_PORT pid $BH_PID, role bh: $BH_NOTE"
  echo "  bulkhead:cached :$BH2_PORT pid ${BH2_PID:--}, role bhc: $BH2_NOTE"
  echo "pgbench -i -s $SCALE took ${init_s}s; pgbench -n -S -j $JOBS -T $DURATION -M {extended,prepared,simple} -c N;"
  echo "  pgbouncer pool_mode=transaction default_pool_size=$POOL; wrk -t$THREADS -c N -d${DURATION}s -s bench/sql.lua (POST /sql, aid 1..$ACCOUNTS)"
  echo "postgres: shared_buffers=256MB fsync=off synchronous_commit=off max_connections=400; all connections TCP 127.0.0.1"
  echo "conns: $CONNS; runs: $RUNS; reps: $REPS; warm-up ${WARMUP}s per target (not recorded)"
  echo "NOTE: shared, noisy host ($NCPU cores, other work running): compare rows of the same round only"
} | log

# --- one measured run ------------------------------------------------------------
# run_one TARGET LABEL CONNS REP [PGBENCH_ARGS...] -> prints and records a row (LABEL: the mode column)
rows=$dir/rows.txt
: > "$rows"
fmt='%-8s %-9s %4s %3s %8s %7s %7s %5s %5s %6s %6s %5s %5s %5s %7s %6s  %s'
hdr=$(printf "$fmt" target mode conn rep qps p50_ms p99_ms vs_dx vs_bx errors srv:act cli% prx% pg% prxus/q pgus/q cores)
declare -A base
run_one() {
  local t=$1 mode=$2 c=$3 rep=$4; shift 4
  local port cpid tag rc el qps p50 p99 nq errs cli pcpu pus pgus mark srv act r
  port=$(port_of "$t" "$mode") cpid=$(cpid_of "$t" "$mode")
  tag=$dir/log/$t-$mode-$c-$rep
  rm -f "$tag".*
  mark=$(act_mark)
  local s0 g0 p0=0 t0 t1 s1 g1 p1=0
  s0=$(cpu_snap); g0=$(proc_ticks "$PG_PID"); [[ -n $cpid ]] && p0=$(proc_ticks "$cpid")
  t0=$(date +%s%N)
  if [[ $t == bulkhead ]]; then
    { TIMEFORMAT='%U %S'; time SQL_CONNSTR=$(connstr_of "$mode") SQL_ACCOUNTS=$ACCOUNTS wrk -t"$THREADS" -c"$c" -d"${DURATION}s" \
        --timeout 5s --latency -s "$LUA" "http://127.0.0.1:$port/sql" >"$tag.out" 2>&1; } 2>"$tag.time"
    rc=$?
  else
    { TIMEFORMAT='%U %S'; time pgbench -h 127.0.0.1 -p "$port" -U postgres -n -c "$c" -j "$JOBS" \
        -T "$DURATION" -l --sampling-rate="$SAMPLE" --log-prefix="$tag" "$@" bench >"$tag.out" 2>&1; } 2>"$tag.time"
    rc=$?
  fi
  t1=$(date +%s%N)
  s1=$(cpu_snap); g1=$(proc_ticks "$PG_PID"); [[ -n $cpid ]] && p1=$(proc_ticks "$cpid")
  sleep 0.3   # one more activity sample after the run
  read -r srv act <<<"$(act_max "$mark" "$(role_of "$t" "$mode")")"
  el=$(elapsed "$t0" "$t1")
  cli=$(awk -v el="$el" '{ printf "%.0f", 100 * ($1 + $2) / el }' "$tag.time")
  if [[ $t == bulkhead ]]; then
    r=$(grep '^RESULT' "$tag.out")
    qps=$(kv qps "$r") p50=$(kv p50_us "$r") p99=$(kv p99_us "$r") nq=$(kv ok "$r")
    local se n2 bb
    se=$(kv sockerr "$r") n2=$(kv non200 "$r") bb=$(kv badbody "$r")
    errs=$(( ${se:-0} + ${n2:-0} + ${bb:-0} ))
    [[ -n $qps ]] || { qps=0 p50=0 p99=0 nq=0 errs="rc$rc"; }
  else
    qps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$tag.out" | head -n1)
    nq=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$tag.out" | head -n1)
    local aborted failed
    aborted=$(grep -c 'aborted' "$tag.out")
    failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$tag.out" | head -n1)
    errs=$(( ${failed:-0} + aborted ))
    (( rc != 0 && errs == 0 )) && errs="rc$rc"
    read -r p50 p99 < <(cat "$tag".[0-9]* 2>/dev/null | awk '{ print $3 }' | sort -n |
      awk '{ v[NR] = $1 } END { if (NR == 0) { print "0 0"; exit }
           i50 = int(0.50 * NR + 0.5); i99 = int(0.99 * NR + 0.5); if (i50 < 1) i50 = 1; if (i99 < 1) i99 = 1
           print v[i50], v[i99] }')
    [[ -n $qps ]] || qps=0
  fi
  local key="$rep|$c" vdx=- vbx=-
  [[ $t == direct && $mode == extended ]] && base[dx$key]=$qps
  [[ $t == bouncer && $mode == extended ]] && base[bx$key]=$qps
  if [[ $t != direct || $mode != extended ]]; then vdx=$(ratio "$qps" "${base[dx$key]:-0}"); fi
  if [[ $t != bouncer || $mode != extended ]]; then vbx=$(ratio "$qps" "${base[bx$key]:-0}"); fi
  pcpu=- pus=-
  [[ -n $cpid ]] && { pcpu=$(pct $((p1 - p0)) "$el"); pus=$(us_per $((p1 - p0)) "${nq:-0}"); }
  pgus=$(us_per $((g1 - g0)) "${nq:-0}")
  local row
  row=$(printf "$fmt" "$t" "$mode" "$c" "$rep" "$(printf '%.0f' "$qps")" "$(ms "${p50:-0}")" "$(ms "${p99:-0}")" \
    "$vdx" "$vbx" "$errs" "$srv:$act" "$cli" "$pcpu" "$(pct $((g1 - g0)) "$el")" "$pus" "$pgus" "$(cpu_busy "$s0" "$s1")")
  echo "$row" >> "$rows"
  echo "$row"
  { echo "--- $t :$port mode=$mode c=$c rep=$rep rc=$rc"
    grep -v -e '^progress' -e 'error:' -e 'aborted' "$tag.out"
    grep -e 'error:' -e 'aborted' "$tag.out" | sed 's/client [0-9]*/client N/' | sort | uniq -c | head -n5
    echo "client user/sys s: $(cat "$tag.time")"; echo "ROW $row"; } | raw
  rm -f "$tag".[0-9]*
}

# warm-up: open the pools (PgBouncer's and bulkhead's server connections) and the caches, not recorded
for t in direct bouncer; do
  pgbench -h 127.0.0.1 -p "$(port_of $t)" -U postgres -n -S -M extended -c 32 -j "$JOBS" -T "$WARMUP" bench >/dev/null 2>&1
done
for mode in http cached; do
  [[ -n $(cpid_of bulkhead $mode) ]] || continue
  SQL_CONNSTR=$(connstr_of $mode) SQL_ACCOUNTS=$ACCOUNTS wrk -t"$THREADS" -c32 -d"${WARMUP}s" -s "$LUA" \
    "http://127.0.0.1:$(port_of bulkhead $mode)/sql" >"$dir/warmup-$mode.out" 2>&1
  grep -q 'non200=0 badbody=0' "$dir/warmup-$mode.out" ||
    { echo "warning: bulkhead:$mode warm-up had errors:" >&2; cat "$dir/warmup-$mode.out" >&2; }
done

# bulkhead's release path (pool/bh_pg_conn.c RESET_SQL), run after each select in the DIAG rows
reset_sql="CLOSE ALL \\; SET SESSION AUTHORIZATION DEFAULT \\; RESET ALL \\; DEALLOCATE ALL \\; UNLISTEN * \\; SELECT pg_advisory_unlock_all() \\; DISCARD TEMP \\; DISCARD SEQUENCES;"
printf '\\set aid random(1, 100000 * :scale)\nSELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n%s\n' "$reset_sql" \
  > "$dir/select-reset.sql"

log "$hdr"
for ((rep = 1; rep <= REPS; rep++)); do
  for c in $CONNS; do
    for run in $RUNS; do
      t=${run%%:*} mode=${run##*:}
      case $t in
        bulkhead)
          case $mode in http|cached) ;; *) die "unknown bulkhead mode in RUNS: $run (http, cached)" ;; esac
          if [[ -z $(cpid_of bulkhead "$mode") ]]; then log "skip bulkhead:$mode c=$c rep=$rep: $BH2_NOTE"; continue; fi
          run_one bulkhead "$mode" "$c" "$rep" ;;
        direct|bouncer) run_one "$t" "$mode" "$c" "$rep" -M "$mode" -S ;;
        *) die "unknown target in RUNS: $run" ;;
      esac
    done
  done
  if [[ $DIAG == 1 ]]; then
    run_one direct simple "$POOL" "$rep" -M simple -S
    run_one direct sel+reset "$POOL" "$rep" -M simple -f "$dir/select-reset.sql"
  fi
done

# --- summary ----------------------------------------------------------------------
verdicts=$dir/verdicts.txt
{
  echo
  echo "summary (values per rep, joined by /; vs_dx / vs_bx = qps / direct extended / PgBouncer extended qps, same conns, same round)"
  awk 'function add(a, k, v) { a[k] = a[k] (a[k] == "" ? "" : "/") v }
       { k = $1 " " $2 " " $3; if (!(k in seen)) { seen[k] = 1; order[++n] = k }
         add(q, k, $5); add(p50, k, $6); add(p99, k, $7); add(dx, k, $8); add(bx, k, $9); add(er, k, $10)
         add(sv, k, $11); add(cu, k, $15); add(gu, k, $16) }
       END { fmt = "%-8s %-9s %4s  %-13s %-13s %-15s %-9s %-9s %-7s %-9s %-11s %s\n"
             printf fmt, "target", "mode", "conn", "qps", "p50_ms", "p99_ms", "vs_dx", "vs_bx", "errors", "srv:act", "prxus/q", "pgus/q"
             for (i = 1; i <= n; i++) { k = order[i]; split(k, f, " ")
               printf fmt, f[1], f[2], f[3], q[k], p50[k], p99[k], dx[k], bx[k], er[k], sv[k], cu[k], gu[k] } }' "$rows"
  echo "modes: direct/bouncer extended, prepared, simple = pgbench -M that; bulkhead http = $BH_NOTE,"
  echo "  bulkhead cached = $BH2_NOTE"
  echo "columns: qps = queries (= pgbench transactions, = HTTP 200 responses with one row) per second;"
  echo "  p50/p99: wrk's latency histogram for bulkhead, a ${SAMPLE} sample of pgbench's per-transaction log otherwise;"
  echo "  errors = failed + aborted pgbench clients, or wrk socket errors + non-200 + 200 without one row;"
  echo "  srv:act = max server connections of that path in pg_stat_activity (open / not idle), sampled every 0.2 s"
  echo "  (for direct: pgbench's own connections); cli% = pgbench or wrk CPU, prx% = PgBouncer or bulkhead CPU,"
  echo "  pg% = postgres (postmaster + backends) CPU, 100% = one core; prxus/q = proxy CPU us per query;"
  echo "  pgus/q = postgres CPU us per query; cores = busy % of each core over the run"
  echo "  direct at high client counts: each pgbench run opens that many fresh backends, whose warm-up (page faults"
  echo "  on shared_buffers, catalog caches) can dominate a short run on a small host: check pgus/q before reading vs_dx there"
  [[ $DIAG == 1 ]] && echo "  DIAG rows (conn $POOL): direct simple -S, and sel+reset = the same select followed by bulkhead's session reset (pool/bh_pg_conn.c RESET_SQL) on the same connection, both -M simple"
  echo
  echo "issue 10 D targets (ratio per rep, joined by /; verdict on the mean; CPU = prxus/q of the same round)"
  echo "  bulkhead:http = $BH_NOTE; bulkhead:cached = $BH2_NOTE"
  awk '{ c = $3; r = $4 }
       $1 == "bulkhead" { if (!(c in seenc)) { seenc[c] = 1; conns[++nc] = c } if (!(r in seenr)) { seenr[r] = 1; reps[++nr] = r } }
       $1 == "bulkhead" && $2 == "http" { v["http_bx", c, r] = $9; v["http_dx", c, r] = $8; v["http_cpu", c, r] = $15 }
       $1 == "bulkhead" && $2 == "cached" { v["cached_dx", c, r] = $8; v["cached_cpu", c, r] = $15 }
       $1 == "bouncer" && $2 == "extended" { v["pgb_cpu", c, r] = $15 }
       # one target: the ratio per rep (CPU: over PgBouncer extended of the same round), its mean, MET or MISSED
       function line(c, name, label, target, at_least,    i, r, x, s, n, list, m) {
         for (i = 1; i <= nr; i++) { r = reps[i]; x = ""
           if (!((name, c, r) in v) || v[name, c, r] == "n/a" || v[name, c, r] == "-") continue
           if (name ~ /_cpu$/) {
             if (!(("pgb_cpu", c, r) in v) || v["pgb_cpu", c, r] == "-" || v["pgb_cpu", c, r] + 0 <= 0) continue
             x = sprintf("%.2f", v[name, c, r] / v["pgb_cpu", c, r])
           } else x = v[name, c, r]
           list = list (list == "" ? "" : "/") x; s += x; n++ }
         if (!n) { printf fmt, c, label, "-", "-", "NOT RUN"; return }
         m = s / n
         printf fmt, c, label, list, sprintf("%.2f", m), ((at_least ? m >= target : m <= target) ? "MET" : "MISSED") }
       END { fmt = "%4s  %-48s %-15s %-6s %s\n"
             printf fmt, "conn", "target", "per rep", "mean", "verdict"
             for (j = 1; j <= nc; j++) { c = conns[j]
               line(c, "http_bx", "bulkhead:http / PgBouncer extended >= 1.10", 1.10, 1)
               line(c, "http_dx", "bulkhead:http / direct extended >= 0.80", 0.80, 1)
               line(c, "cached_dx", "bulkhead:cached / direct extended >= 1.20", 1.20, 1)
               line(c, "http_cpu", "bulkhead:http CPU/q / PgBouncer CPU/q <= 1.00", 1.00, 0)
               line(c, "cached_cpu", "bulkhead:cached CPU/q / PgBouncer CPU/q <= 1.00", 1.00, 0) } }' "$rows" | tee "$verdicts"
  awk '$1 == "bulkhead" && $10 != "0" { n++ } END { if (n) printf "bulkhead had errors in %d run(s): see the rows above\n", n }' "$rows"
} | log

# --- profile bulkhead when a target is missed (an extra run, not in the figures above) --
if [[ $PROFILE == 1 || ($PROFILE == auto && $(grep -c MISSED "$verdicts") -gt 0) ]]; then
  if command -v perf >/dev/null 2>&1; then
    c=${CONNS%% *}
    # profile_bh MODE: perf record of that bulkhead under wrk -c$c; self time by object, the top 15 symbols
    # (self %, perf report --no-children), and every symbol >= 1%
    profile_bh() {
      local mode=$1 pid port data
      pid=$(cpid_of bulkhead "$mode") port=$(port_of bulkhead "$mode") data=$dir/perf-$1.data
      SQL_CONNSTR=$(connstr_of "$mode") SQL_ACCOUNTS=$ACCOUNTS wrk -t"$THREADS" -c"$c" -d"$((DURATION + 2))s" --timeout 5s \
        -s "$LUA" "http://127.0.0.1:$port/sql" >"$dir/perf-wrk-$mode.out" 2>&1 &
      local wrk_pid=$!
      sleep 1
      perf record -g -F 999 -p "$pid" -o "$data" -- sleep "$DURATION" >"$dir/perf-record-$mode.log" 2>&1
      wait "$wrk_pid"
      {
        echo
        echo "perf profile of bulkhead:$mode (pid $pid) under wrk -c$c for ${DURATION}s: $(grep '^RESULT' "$dir/perf-wrk-$mode.out" | cut -d' ' -f2-5)"
        [[ -s $data ]] || { echo "  no profile: $(tail -n2 "$dir/perf-record-$mode.log" | tr '\n' ' ')"; return; }
        echo "self time by shared object:"
        perf report -i "$data" --stdio --no-children --sort dso -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -n 12
        echo "top 15 symbols of bulkhead:$mode (self %, perf report --no-children --stdio):"
        perf report -i "$data" --stdio --no-children --sort sym -g none 2>/dev/null |
          grep -v '^#' | grep -v '^$' | head -n 15
        echo "top 15 symbols in the bulkhead binary itself (self %):"
        perf report -i "$data" --stdio --no-children --dsos bulkhead --sort sym -g none 2>/dev/null |
          grep -v '^#' | grep -v '^$' | head -n 15
        echo "self time by symbol (>= 1%):"
        perf report -i "$data" --stdio --no-children --sort dso,sym -g none --percent-limit 1 2>/dev/null |
          grep -v '^#' | grep -v '^$' | head -n 40
        echo "(perf data: $data; perf report -i it for call graphs)"
      } | log
    }
    profile_bh http
    [[ -n $BH2_PID ]] && profile_bh cached
    # syscalls per query, bulkhead vs PgBouncer (perf trace -s; the tracing slows both, the counts hold)
    T=$(( DURATION < 5 ? DURATION : 5 ))
    trace_q() { # trace_q NAME PID -- CLIENT... : "queries" and the per-syscall summary in $dir/trace-NAME.txt
      local name=$1 pid=$2; shift 3
      perf trace -s -p "$pid" -o "$dir/trace-$name.txt" -- sleep $((T + 1)) >/dev/null 2>&1 &
      local tp=$!
      sleep 0.5
      "$@" >"$dir/trace-$name.out" 2>&1
      wait "$tp"
    }
    trace_q bulkhead "$BH_PID" -- env SQL_CONNSTR="$BH_CONNSTR" SQL_ACCOUNTS="$ACCOUNTS" \
      wrk -t"$THREADS" -c"$c" -d"${T}s" --timeout 5s -s "$LUA" "http://127.0.0.1:$BH_PORT/sql"
    trace_q bouncer "$PGB_PID" -- pgbench -h 127.0.0.1 -p "$PGB_PORT" -U postgres -n -S -M extended -c "$c" -j "$JOBS" -T "$T" bench
    nb=$(kv ok "$(grep '^RESULT' "$dir/trace-bulkhead.out")")
    np=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$dir/trace-bouncer.out")
    {
      echo
      echo "syscalls per query under perf trace (c=$c, ${T}s; bulkhead $nb queries, PgBouncer extended $np):"
      printf "  %-16s %10s %10s\n" syscall bulkhead pgbouncer
      awk -v nb="${nb:-0}" -v np="${np:-0}" '
        FNR == 1 { f++ }
        NF >= 8 && $2 ~ /^[0-9]+$/ && $1 ~ /^[a-z_0-9]+$/ { if (f == 1) b[$1] += $2; else p[$1] += $2; all[$1] = 1 }
        END { for (k in all) { tb += b[k]; tp += p[k] }
              for (k in all) if ((nb && b[k] / nb >= 0.05) || (np && p[k] / np >= 0.05))
                printf "  %-16s %10.2f %10.2f\n", k, nb ? b[k] / nb : 0, np ? p[k] / np : 0
              printf "  %-16s %10.2f %10.2f\n", "total", nb ? tb / nb : 0, np ? tp / np : 0 }' \
        "$dir/trace-bulkhead.txt" "$dir/trace-bouncer.txt" | sort -k2 -n -r
    } | log
  else
    log "perf not installed: no profile"
  fi
fi
log "results appended to $RESULTS"
