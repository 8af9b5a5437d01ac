#!/usr/bin/env bash
# THE demo command (README "Quick start"). Run as root on Debian 12, from any cwd:
#   installs what is missing (scripts/deps.sh), builds build/ (scripts/build.sh normal), starts
#     examples/demo-upstream.py                   127.0.0.1:8081   a small HTTP/1.1 keep-alive service
#     build/proxy/bulkhead -c conf/examples/demo.yaml
#                                                 127.0.0.1:8080   the proxy (admin 127.0.0.1:9901)
#   waits until every port accepts, prints commands to try, and runs until Ctrl-C (SIGINT/SIGTERM), when it
#   stops everything it started. bulkhead's own output (access log) shows in this terminal.
# Env: DEMO_CONFIG (default conf/examples/demo.yaml), BULKHEAD_BIN (default build/proxy/bulkhead),
#      DEMO_SKIP_DEPS=1 / DEMO_SKIP_BUILD=1, DEMO_LOG_DIR (default build/demo; the upstream's log goes there).
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root" || exit 2

CONFIG=${DEMO_CONFIG:-$root/conf/examples/demo.yaml}
BIN=${BULKHEAD_BIN:-$root/build/proxy/bulkhead}
LOG_DIR=${DEMO_LOG_DIR:-$root/build/demo}
PROXY_PORT=8080 UPSTREAM_PORT=8081 ADMIN_PORT=9901
# PG_PORT=54329   # (later) the throwaway Postgres for the SQL-over-HTTP part of the demo

say() { printf '\033[1mdemo:\033[0m %s\n' "$*"; }
die() { printf 'demo: error: %s\n' "$*" >&2; exit 1; }

port_in_use() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }
wait_port() { # wait_port PORT PID WHAT [SECONDS]: poll until PORT accepts; dies if PID exits; 1 on time-out
  local i
  for ((i = 0; i < ${4:-15} * 20; i++)); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || die "$3 exited before listening on :$1"
    sleep 0.05
  done
  return 1
}

# --- everything started here is stopped here, by PID ------------------------------------------------------
pids=() names=()
stop_all() {
  trap - EXIT INT TERM
  local i p
  ((${#pids[@]})) && say "stopping ${names[*]}"
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do   # reverse start order: proxy first
    p=${pids[i]}
    kill -0 "$p" 2>/dev/null && kill -TERM "$p" 2>/dev/null
  done
  for p in "${pids[@]}"; do
    for ((i = 0; i < 100; i++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
    kill -0 "$p" 2>/dev/null && { say "pid $p ignored SIGTERM for 5 s, killing it"; kill -KILL "$p" 2>/dev/null; }
    wait "$p" 2>/dev/null
  done
  pids=()
}
trap stop_all EXIT
trap 'echo; exit 0' INT TERM
started() { pids+=("$1"); names+=("$2"); }

# --- 1. dependencies and build -----------------------------------------------------------------------------
if [[ ${DEMO_SKIP_DEPS:-0} != 1 ]]; then "$root/scripts/deps.sh" || die "scripts/deps.sh failed"; fi
if [[ ${DEMO_SKIP_BUILD:-0} != 1 ]]; then "$root/scripts/build.sh" normal || die "build failed"; fi
[[ -x $BIN ]] || die "no binary at $BIN"
[[ -f $CONFIG ]] || die "no config at $CONFIG (set DEMO_CONFIG)"
for p in $PROXY_PORT $UPSTREAM_PORT $ADMIN_PORT; do
  port_in_use "$p" && die "port $p is already in use (another demo still running?)"
done
mkdir -p "$LOG_DIR"

# --- 2. the demo upstream ----------------------------------------------------------------------------------
/usr/bin/python3 "$root/examples/demo-upstream.py" --port "$UPSTREAM_PORT" >"$LOG_DIR/upstream.log" 2>&1 &
started $! demo-upstream
wait_port "$UPSTREAM_PORT" "${pids[-1]}" "demo-upstream (log: $LOG_DIR/upstream.log)" \
  || die "demo-upstream did not listen on :$UPSTREAM_PORT within 15 s"

# --- 3. (later) a throwaway Postgres for SQL over HTTP -------------------------------------------------------
# start_postgres: initdb into $LOG_DIR/pg as the OS user "postgres" (setpriv), start postgres on
# 127.0.0.1:$PG_PORT in the foreground (backgrounded here), started $! postgres, wait with pg_isready,
# create a demo table; conf/examples/demo.yaml then gets a databases: entry and a /sql route, and step 5
# prints a `curl -X POST /sql -H 'Neon-Connection-String: postgres://...' -d '{"query":"select 1"}'` line.

# --- 4. bulkhead -------------------------------------------------------------------------------------------
say "starting $BIN -c $CONFIG"
"$BIN" -c "$CONFIG" &
started $! bulkhead
wait_port "$PROXY_PORT" "${pids[-1]}" bulkhead || die "bulkhead did not listen on :$PROXY_PORT within 15 s"
admin_note=""
wait_port "$ADMIN_PORT" "${pids[-1]}" "bulkhead admin" 5 || admin_note="   (not listening yet: the admin lines below will fail)"

# --- 5. what to try ----------------------------------------------------------------------------------------
P=http://127.0.0.1:$PROXY_PORT
cat <<EOF

  bulkhead     $P   (config $CONFIG)
  upstream     http://127.0.0.1:$UPSTREAM_PORT   (examples/demo-upstream.py, log $LOG_DIR/upstream.log)
  admin        http://127.0.0.1:$ADMIN_PORT$admin_note

Try, in another terminal:
  curl -i $P/                               # proxied to the upstream over a pooled keep-alive connection
  curl -s $P/headers                        # what the upstream saw: X-Forwarded-For, X-Forwarded-Proto, Via
  curl -i "$P/slow?ms=500"                  # a slow answer that fits in the timeouts
  curl -i "$P/slow?ms=20000"                # longer than timeouts.first_byte (15s in demo.yaml): 504 + Proxy-Status
  curl -i $P/status/503                     # upstream errors: retried, counted by the breaker
  curl -i $P/nope                           # the upstream's 404, passed through
  curl -i --http1.1 -H \$'Bad\\x01: x' $P/    # invalid header byte: 400 + Proxy-Status, never forwarded
  printf 'GET / HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: 1\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n' | nc -q 2 127.0.0.1 $PROXY_PORT
                                            # conflicting framing (request smuggling attempt): 400
  curl -s http://127.0.0.1:$ADMIN_PORT/metrics | grep -i pool   # pool sizes, waiters, breaker state
  curl -s http://127.0.0.1:$ADMIN_PORT/stats

Ctrl-C stops everything this script started.
EOF

# --- 6. run until interrupted, or until one of the processes dies -------------------------------------------
while :; do
  wait -n "${pids[@]}"
  for i in "${!pids[@]}"; do
    if ! kill -0 "${pids[i]}" 2>/dev/null; then
      say "${names[i]} (pid ${pids[i]}) exited; stopping the demo"
      exit 1
    fi
  done
done
