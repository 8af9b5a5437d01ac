#!/usr/bin/env bash
# Request-smuggling comparison (issue 8): the corpus of tests/integration/smuggling (corpus.py) through bulkhead,
# HAProxy and nginx, each in front of the same strict recording upstream, judged by the same code as the
# integration test (runner.py). Not a CI step. Everything on loopback; every process started here is stopped
# by its PID on exit.
#
#   strict upstream  tests/integration/smuggling/strict_upstream.py  127.0.0.1:18301 (control 18302)
#   bulkhead         127.0.0.1:18303 (admin 18304): 1 worker, route / -> the strict upstream, retry.attempts 1,
#                    breaker and outlier out of the way, timeouts connect 2s / first_byte 5s / total 10s
#   haproxy          127.0.0.1:18305: bench/lib.sh's anchor config (http-reuse always), option forwardfor,
#                    otherwise HAProxy's defaults (no accept-invalid-http-request)
#   nginx            127.0.0.1:18306: bench/lib.sh's config, upstream keepalive, proxy_http_version 1.1,
#                    Connection "", Host $host, X-Forwarded-For $proxy_add_x_forwarded_for
#
# Each case runs on a fresh client connection. bulkhead is half-closed once it is settled (a fence request and
# its pool gauges, as in the test); HAProxy and nginx expose no such state, so they get a quiet period
# (QUIET seconds without any new byte at the upstream) before the half-close. A case that leaves the upstream
# side dirty is followed by a reset (upstream connections closed, one plain GET through the proxy).
#
# Output: the per-case table (outcome per proxy: refused(status), forwarded(n), UNSAFE(reason), closed,
# timeout; "!" = the outcome misses the case's expectation, with bulkhead's own stricter rules for bulkhead),
# then counts per category and in total. Printed, appended to $RESULTS, written to $OUT; the raw results as
# JSON in $BENCH_DIR/smuggling/results.json.
#
# usage: bench/smuggling.sh   needs scripts/deps.sh --bench and a normal build (scripts/build.sh normal)
# Env (defaults): BULKHEAD_BIN=build/proxy/bulkhead (copied at start) QUIET=0.25 ONLY= (cases whose name
#   contains it) OUT=$BENCH_DIR/smuggling/results.txt BENCH_DIR=/tmp/bulkhead-bench RESULTS=$BENCH_DIR/results.txt
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/lib.sh
source "$here/lib.sh"
need nginx haproxy ss

PY=/usr/bin/python3
SM=$BENCH_REPO/tests/integration/smuggling
BULKHEAD_BIN=${BULKHEAD_BIN:-$BENCH_REPO/build/proxy/bulkhead}
QUIET=${QUIET:-0.25}
UP_PORT=18301 UP_CTL=18302 BH_PORT=18303 BH_ADMIN=18304 HAP_PORT=18305 NGX_PORT=18306
dir=$ANCHORS/smuggling
OUT=${OUT:-$dir/results.txt}
mkdir -p "$dir/tmp"

UP_PID="" BH_PID="" HAP_PID="" NGX_PID=""
cleanup() {
  trap - EXIT INT TERM
  stop_pid "$BH_PID"; stop_pid "$HAP_PID"; stop_pid "$NGX_PID"; stop_pid "$UP_PID"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ports_free $UP_PORT $UP_CTL $BH_PORT $BH_ADMIN $HAP_PORT $NGX_PORT
bin=$dir/bulkhead
copy_bin "$BULKHEAD_BIN" "$bin"

"$PY" "$SM/strict_upstream.py" --port $UP_PORT --control-port $UP_CTL > "$dir/strict-upstream.log" 2>&1 &
UP_PID=$!
wait_port $UP_CTL || die "the strict upstream did not start, see $dir/strict-upstream.log"

body=$(bulkhead_proxy_body "\"127.0.0.1:$UP_PORT\"" "    retry: { attempts: 1 }
    breaker: { consecutive_failures: 1000000, min_requests: 1000000 }
    outlier: { consecutive_failures: 1000000 }
    timeouts: { connect: 2s, first_byte: 5s, idle: 5s, total: 10s }")
bulkhead_conf bench/smuggling.sh 1 $BH_PORT $BH_ADMIN off "$body" > "$dir/bulkhead.yaml"
bulkhead_start BH_PID "$bin" "$dir/bulkhead.yaml" "$dir/bulkhead.log" || die "$dir/bulkhead.yaml rejected"

haproxy_conf $HAP_PORT 1 1000 "    option forwardfor
    server up 127.0.0.1:$UP_PORT" > "$dir/haproxy.cfg"
haproxy_start HAP_PID "$dir/haproxy.cfg" "$dir/haproxy.log"

nginx_conf "$dir" nginx 1 1024 "    upstream up {
        server 127.0.0.1:$UP_PORT;
        keepalive 16;
    }
    server {
        listen 127.0.0.1:$NGX_PORT;
        location / {
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
        }
    }" > "$dir/nginx.conf"
nginx_start NGX_PID "$dir" nginx

for p in $BH_PORT $BH_ADMIN $HAP_PORT $NGX_PORT; do
  wait_port "$p" || die "nothing listens on $p (logs in $dir)"
done

{
  echo "=================================================================="
  bench_id bench/smuggling.sh
  echo "$(nginx -v 2>&1); $(haproxy -v | head -n1); bulkhead $(bin_id "$BULKHEAD_BIN" "$bin")"
  echo "corpus: $SM/corpus.py; quiet period for haproxy and nginx: ${QUIET}s${ONLY:+; only cases matching $ONLY}"
} | log

"$PY" "$SM/runner.py" --upstream-control $UP_CTL --quiet "$QUIET" ${ONLY:+--only "$ONLY"} \
  --target "bulkhead:$BH_PORT:$BH_ADMIN" --target "haproxy:$HAP_PORT" --target "nginx:$NGX_PORT" \
  --json "$dir/results.json" > "$dir/table.txt" 2> "$dir/progress.log" || die "runner failed, see $dir/progress.log"
log < "$dir/table.txt"
[[ $OUT == "$dir/table.txt" ]] || cp "$dir/table.txt" "$OUT"
echo "raw results: $dir/results.json; table: $OUT"
