#!/usr/bin/env bash
# Fairness of the pool across workers (issue 9): far more clients than pooled connections, an upstream whose
# latency (not its CPU) limits the throughput, and bulkhead with 1 and 2 workers. With a FIFO of waiters that
# spans the workers, every request waits about as long as the others (p99 close to p50, close to the ideal
# CONNS / (CAP / DELAY) seconds) and none reaches acquire_timeout; a worker that served its own waiters first
# showed a long tail and 503s at acquire_timeout with 2 workers.
#   upstream  bench/delay-upstream.py  127.0.0.1:18401  answers every request after DELAY_MS (keep-alive)
#   bulkhead  127.0.0.1:18410 (admin 18411), workers W, one upstream with
#             pool { max_connections: CAP, max_pending: PENDING, acquire_timeout: ACQUIRE }, route / -> it,
#             access log off, limits.max_connections 20000 (config in $BENCH_DIR/fairness/bulkhead.yaml)
#   load      wrk -t$THREADS -c$CONNS -d$DURATION --timeout 30s --latency /  (lua: status counts)
# For each binary (BULKHEAD_BIN as "after", and BEFORE_BIN as "before" when set: e.g. a build of the branch
# point) and each W in WORKERS_AXIS, REPS runs, each on a freshly started bulkhead. Per run: requests, req/s,
# p50, p99, max, 2xx, 503 (and other statuses, socket errors), and up_conns: connections bulkhead opened to the
# upstream during the run (a permit handed to another worker costs one: connections cannot move between loops).
#
# usage: bench/fairness.sh      needs wrk (scripts/deps.sh --bench) and a normal build (scripts/build.sh normal)
#   e.g. BEFORE_BIN=/tmp/bh-base/build/proxy/bulkhead bench/fairness.sh
# Env (defaults): BULKHEAD_BIN=build/proxy/bulkhead BEFORE_BIN= (none) WORKERS_AXIS="1 2" THREADS=2 CONNS=1000
#   DURATION=10s REPS=1 DELAY_MS=20 CAP=16 PENDING=2000 ACQUIRE=5s BENCH_DIR=/tmp/bulkhead-bench
#   RESULTS=$BENCH_DIR/results.txt FAIR_UPSTREAM_PORT=18401 FAIR_PORT=18410 (admin: +1).
#   Binaries are copied at start, so a rebuild during the run changes nothing.
# Output: one row per run, printed and appended to $RESULTS (with the raw wrk output); every process started
# here is stopped by PID on exit.
# shellcheck disable=SC2059,SC2119  # the row format is a variable on purpose; log reads stdin (as in bench/http.sh)
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/lib.sh
source "$here/lib.sh"
need wrk curl ss awk /usr/bin/python3

BULKHEAD_BIN=${BULKHEAD_BIN:-$BENCH_REPO/build/proxy/bulkhead}
BEFORE_BIN=${BEFORE_BIN:-}
WORKERS_AXIS=${WORKERS_AXIS:-1 2}
THREADS=${THREADS:-2}
CONNS=${CONNS:-1000}
DURATION=${DURATION:-10s}
REPS=${REPS:-1}
DELAY_MS=${DELAY_MS:-20}
CAP=${CAP:-16}
PENDING=${PENDING:-2000}
ACQUIRE=${ACQUIRE:-5s}
UP_PORT=${FAIR_UPSTREAM_PORT:-18401} BH_PORT=${FAIR_PORT:-18410} BH_ADMIN=$((BH_PORT + 1))

for w in $WORKERS_AXIS; do [[ $w =~ ^[1-9][0-9]*$ ]] || die "WORKERS_AXIS: '$w' is not a worker count"; done
raise_nofile
dir=$ANCHORS/fairness
mkdir -p "$dir"

labels=(after)
copy_bin "$BULKHEAD_BIN" "$dir/bulkhead-after"
if [[ -n $BEFORE_BIN ]]; then
  labels=(before after)
  copy_bin "$BEFORE_BIN" "$dir/bulkhead-before"
fi

UP_PID="" BH_PID=""
cleanup() {
  trap - EXIT INT TERM
  stop_pid "$BH_PID"
  stop_pid "$UP_PID"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
ports_free "$UP_PORT" "$BH_PORT" "$BH_ADMIN"

lua=$dir/report.lua
cat > "$lua" <<'LUA'
local threads = {}
function setup(thread) table.insert(threads, thread) end
ok, s503, other = 0, 0, 0
function response(status, headers, body)
  if status >= 200 and status < 300 then ok = ok + 1
  elseif status == 503 then s503 = s503 + 1
  else other = other + 1 end
end
done = function(summary, latency, requests)
  local nok, n503, nother = 0, 0, 0
  for _, th in ipairs(threads) do
    nok = nok + th:get("ok"); n503 = n503 + th:get("s503"); nother = nother + th:get("other")
  end
  local e = summary.errors
  local s = summary.duration / 1e6
  io.write(string.format(
    "RESULT requests=%d duration_s=%.3f rps=%.1f p50_us=%d p90_us=%d p99_us=%d max_us=%d ok=%d s503=%d other=%d sock=%d\n",
    summary.requests, s, summary.requests / s, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, nok, n503, nother, e.connect + e.read + e.write + e.timeout))
end
LUA

/usr/bin/python3 "$here/delay-upstream.py" --port "$UP_PORT" --delay-ms "$DELAY_MS" > "$dir/upstream.log" 2>&1 &
UP_PID=$!
wait_port "$UP_PORT" 10 || die "the delay upstream did not start (see $dir/upstream.log)"

{
  echo "=================================================================="
  echo "$(bench_id bench/fairness.sh)$(git -C "$BENCH_REPO" diff --quiet HEAD -- pool proxy 2>/dev/null || echo '+dirty')"
  for l in "${labels[@]}"; do
    src=$BULKHEAD_BIN; [[ $l == before ]] && src=$BEFORE_BIN
    echo "$l: $(bin_id "$src" "$dir/bulkhead-$l")"
  done
  echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "wrk -t$THREADS -c$CONNS -d$DURATION --timeout 30s; upstream answers in ${DELAY_MS} ms;" \
       "pool { max_connections: $CAP, max_pending: $PENDING, acquire_timeout: $ACQUIRE };" \
       "ideal wait with a FIFO: $(awk -v c="$CONNS" -v k="$CAP" -v d="$DELAY_MS" 'BEGIN { printf "%.2f s", c * d / k / 1000 }')"
} | log

fmt="%-7s %2s %3s %8s %8s %9s %9s %9s %8s %6s %6s %5s %8s\n"
printf "$fmt" binary wk run requests req/s p50_ms p99_ms max_ms 2xx 503 other sock up_conns | log
up_conns() { curl -fsS --max-time 5 "http://127.0.0.1:$UP_PORT/__conns" || echo 0; }

ms() { awk -v u="$1" 'BEGIN { printf "%.0f", u / 1000 }'; }

for l in "${labels[@]}"; do
  for w in $WORKERS_AXIS; do
    for ((rep = 1; rep <= REPS; rep++)); do
      bulkhead_conf bench/fairness.sh "$w" "$BH_PORT" "$BH_ADMIN" off "upstreams:
  origin:
    endpoints: [ 127.0.0.1:$UP_PORT ]
    pool: { max_connections: $CAP, max_pending: $PENDING, acquire_timeout: $ACQUIRE }
routes:
  - match: { path_prefix: / }
    upstream: origin" > "$dir/bulkhead.yaml"
      bulkhead_start BH_PID "$dir/bulkhead-$l" "$dir/bulkhead.yaml" "$dir/bulkhead-$l.log" ||
        die "bulkhead ($l) rejected $dir/bulkhead.yaml"
      wait_port "$BH_PORT" 10 || die "bulkhead ($l) did not start (see $dir/bulkhead-$l.log)"
      curl -fsS --max-time 5 "http://127.0.0.1:$BH_PORT/" > /dev/null || die "bulkhead ($l) does not answer /"
      out=$dir/wrk-$l-w$w-$rep.txt
      c0=$(up_conns)
      wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --timeout 30s --latency -s "$lua" \
        "http://127.0.0.1:$BH_PORT/" > "$out" 2>&1
      opened=$(( $(up_conns) - c0 - 1 ))  # connections bulkhead opened to the upstream during the run
      { echo "--- $l workers=$w run=$rep"; cat "$out"; } | raw
      r=$(grep '^RESULT' "$out")
      if [[ -z $r ]]; then
        printf "$fmt" "$l" "$w" "$rep" fail - - - - - - - - "$opened" | log
      else
        printf "$fmt" "$l" "$w" "$rep" "$(kv requests "$r")" "$(kv rps "$r")" "$(ms "$(kv p50_us "$r")")" \
          "$(ms "$(kv p99_us "$r")")" "$(ms "$(kv max_us "$r")")" "$(kv ok "$r")" "$(kv s503 "$r")" \
          "$(kv other "$r")" "$(kv sock "$r")" "$opened" | log
      fi
      stop_pid "$BH_PID"
      BH_PID=""
      wait_port_free "$BH_PORT" 10 || die "port $BH_PORT still in use after bulkhead stopped"
    done
  done
done
