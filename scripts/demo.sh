#!/usr/bin/env bash
# THE demo command (README "Quick start"). Run as root on Debian 12, from any cwd:
#   installs what is missing (scripts/deps.sh), builds build/ (scripts/build.sh normal), starts
#     examples/demo-upstream.py                   127.0.0.1:8081   a small HTTP/1.1 keep-alive service
#     a throwaway PostgreSQL 15 (initdb + pg_ctl as the OS user "postgres", data in a temp dir under /tmp)
#                                                 127.0.0.1:$PGPORT (first free port from 54329) role demo,
#                                                 database demo with a table "items"; scram-sha-256
#     build/proxy/bulkhead -c conf/examples/demo.yaml
#                                                 127.0.0.1:8080   the proxy (admin 127.0.0.1:9901)
#                                                 127.0.0.1:8443   the same over HTTPS, with a self-signed
#                                                 ECDSA certificate for localhost made at start
#                                                 ($DEMO_LOG_DIR/tls/demo.crt)
#   waits until every port accepts, prints commands to try, and runs until Ctrl-C (SIGINT/SIGTERM), when it
#   stops everything it started (Postgres included; its temp dir is removed). bulkhead's own output (access
#   log) shows in this terminal.
# Env: DEMO_CONFIG (default conf/examples/demo.yaml), BULKHEAD_BIN (default build/proxy/bulkhead),
#      DEMO_SKIP_DEPS=1 / DEMO_SKIP_BUILD=1, DEMO_LOG_DIR (default build/demo; the upstream's log goes there),
#      DEMO_PG_BIN (default /usr/lib/postgresql/15/bin), DEMO_PG_PORT (first port tried, default 54329).
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root" || exit 2

CONFIG=${DEMO_CONFIG:-$root/conf/examples/demo.yaml}
BIN=${BULKHEAD_BIN:-$root/build/proxy/bulkhead}
LOG_DIR=${DEMO_LOG_DIR:-$root/build/demo}
PROXY_PORT=8080 TLS_PORT=8443 UPSTREAM_PORT=8081 ADMIN_PORT=9901
PG_BIN=${DEMO_PG_BIN:-/usr/lib/postgresql/15/bin}
PG_USER=demo PG_PASSWORD=demo-secret PG_DB=demo   # the role the SQL examples connect as (URL-safe password)

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
# Postgres is started by pg_ctl (it detaches into its own session, so it is no child of this script and a
# Ctrl-C in the terminal does not reach it): it is stopped with pg_ctl after the others, and its dir removed.
pids=() names=() pg_dir=""
stop_all() {
  trap - EXIT
  trap '' INT TERM   # a second Ctrl-C must not cut the cleanup short (Postgres would be left running)
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
  stop_postgres
}
trap stop_all EXIT
trap 'echo; exit 0' INT TERM
# Ctrl-C also reaches a pager or `| tee` this script writes to; a write to the dead pipe must not kill the
# script before stop_all has run (a no-op handler, unlike an ignored signal, is not inherited by children).
trap ':' PIPE
started() { pids+=("$1"); names+=("$2"); }

# as_pg CMD...: run a PostgreSQL tool as the OS user "postgres" (initdb refuses root), from the Postgres dir
as_pg() {
  if ((EUID == 0)); then (cd "$pg_dir" && runuser -u postgres -- "$@"); else (cd "$pg_dir" && "$@"); fi
}
postmaster_pid() { [[ -n $pg_dir && -r $pg_dir/data/postmaster.pid ]] && head -n 1 "$pg_dir/data/postmaster.pid"; }
stop_postgres() {
  [[ -n $pg_dir ]] || return 0
  local p i
  if p=$(postmaster_pid) && [[ -n $p ]] && kill -0 "$p" 2>/dev/null; then
    say "stopping postgres (pid $p)"
    # pg_ctl -w returns once postmaster.pid is gone, a moment before the process itself exits
    as_pg "$PG_BIN/pg_ctl" -D "$pg_dir/data" -m fast -w -t 10 stop >/dev/null 2>&1 \
      || { say "pg_ctl stop failed, immediate shutdown"; kill -QUIT "$p" 2>/dev/null; }
    for ((i = 0; i < 100; i++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
    kill -0 "$p" 2>/dev/null && { say "postgres (pid $p) is still running, killing it"; kill -KILL "$p" 2>/dev/null; }
  fi
  rm -rf "$pg_dir"
  pg_dir=""
}

# --- 1. dependencies and build -----------------------------------------------------------------------------
if [[ ${DEMO_SKIP_DEPS:-0} != 1 ]]; then "$root/scripts/deps.sh" || die "scripts/deps.sh failed"; fi
if [[ ${DEMO_SKIP_BUILD:-0} != 1 ]]; then "$root/scripts/build.sh" normal || die "build failed"; fi
[[ -x $BIN ]] || die "no binary at $BIN"
[[ -f $CONFIG ]] || die "no config at $CONFIG (set DEMO_CONFIG)"
for p in $PROXY_PORT $TLS_PORT $UPSTREAM_PORT $ADMIN_PORT; do
  port_in_use "$p" && die "port $p is already in use (another demo still running?)"
done
mkdir -p "$LOG_DIR"

# --- 2. the demo upstream ----------------------------------------------------------------------------------
/usr/bin/python3 "$root/examples/demo-upstream.py" --port "$UPSTREAM_PORT" >"$LOG_DIR/upstream.log" 2>&1 &
started $! demo-upstream
wait_port "$UPSTREAM_PORT" "${pids[-1]}" "demo-upstream (log: $LOG_DIR/upstream.log)" \
  || die "demo-upstream did not listen on :$UPSTREAM_PORT within 15 s"

# --- 3. a throwaway Postgres for SQL over HTTP --------------------------------------------------------------
# initdb into a temp dir owned by "postgres"; 127.0.0.1 only, on the first free port from DEMO_PG_PORT; local
# (unix socket, in the temp dir) trust for the setup below, TCP scram-sha-256 (what bulkhead uses).
[[ -x $PG_BIN/initdb && -x $PG_BIN/pg_ctl ]] || die "no PostgreSQL at $PG_BIN (Debian's postgresql package; set DEMO_PG_BIN)"
PGPORT=${DEMO_PG_PORT:-54329}
for ((i = 0; i < 200; i++)); do port_in_use "$PGPORT" || break; PGPORT=$((PGPORT + 1)); done
port_in_use "$PGPORT" && die "no free port for Postgres from ${DEMO_PG_PORT:-54329}"
export PGPORT   # conf/examples/demo.yaml: server: "host=127.0.0.1 port=${PGPORT:-5432}"
pg_dir=$(mktemp -d /tmp/bulkhead-demo-pg.XXXXXX) || die "mktemp failed"
chmod 700 "$pg_dir"
((EUID == 0)) && { chown postgres:postgres "$pg_dir" || die "no OS user 'postgres' (Debian's postgresql package)"; }
say "starting postgres on 127.0.0.1:$PGPORT (data in $pg_dir)"
as_pg "$PG_BIN/initdb" -D "$pg_dir/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
  -E UTF8 --no-locale --no-sync --no-instructions >"$LOG_DIR/initdb.log" 2>&1 \
  || die "initdb failed: $(tail -n 5 "$LOG_DIR/initdb.log")"
cat >>"$pg_dir/data/postgresql.conf" <<EOF

# bulkhead demo (scripts/demo.sh): throwaway, loopback only
listen_addresses = '127.0.0.1'
port = $PGPORT
unix_socket_directories = '$pg_dir'
password_encryption = 'scram-sha-256'
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
# pg_ctl -w polls until the server accepts connections (no fixed sleep)
as_pg "$PG_BIN/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/postgres.log" -w -t 30 start >/dev/null 2>&1 \
  || die "postgres did not start: $(tail -n 5 "$pg_dir/postgres.log" 2>/dev/null)"
pg_pid=$(postmaster_pid) || die "postgres started but wrote no postmaster.pid"
wait_port "$PGPORT" "$pg_pid" postgres || die "postgres did not listen on :$PGPORT within 15 s"
as_pg "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$pg_dir" -p "$PGPORT" -U postgres -d postgres >/dev/null <<EOF \
  || die "could not create the demo role and database"
CREATE ROLE $PG_USER LOGIN PASSWORD '$PG_PASSWORD';
CREATE DATABASE $PG_DB OWNER $PG_USER;
\\connect $PG_DB
SET ROLE $PG_USER;
CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, price numeric(8,2) NOT NULL, tags text[],
                    added timestamptz NOT NULL DEFAULT now());
INSERT INTO items (id, name, price, tags) VALUES
  (1, 'bulkhead door', 1299.00, '{steel,watertight}'),
  (2, 'porthole', 349.50, '{brass}'),
  (3, 'rivet', 0.12, NULL);
EOF

# --- 4. bulkhead -------------------------------------------------------------------------------------------
# A self-signed certificate for the HTTPS listener (conf/examples/demo.yaml reads DEMO_TLS_CERT/KEY).
mkdir -p "$LOG_DIR/tls"
export DEMO_TLS_CERT=$LOG_DIR/tls/demo.crt DEMO_TLS_KEY=$LOG_DIR/tls/demo.key
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout "$DEMO_TLS_KEY" -out "$DEMO_TLS_CERT" \
  >"$LOG_DIR/tls/openssl.log" 2>&1 || die "openssl could not make the demo certificate"
say "starting $BIN -c $CONFIG"
"$BIN" -c "$CONFIG" &
started $! bulkhead
wait_port "$PROXY_PORT" "${pids[-1]}" bulkhead || die "bulkhead did not listen on :$PROXY_PORT within 15 s"
admin_note=""
wait_port "$ADMIN_PORT" "${pids[-1]}" "bulkhead admin" 5 || admin_note="   (not listening yet: the admin lines below will fail)"

# --- 5. what to try ----------------------------------------------------------------------------------------
P=http://127.0.0.1:$PROXY_PORT
CONN=postgresql://$PG_USER:$PG_PASSWORD@localhost/$PG_DB
cat <<EOF

  bulkhead     $P   (config $CONFIG)
               https://localhost:$TLS_PORT   (self-signed: $DEMO_TLS_CERT)
  upstream     http://127.0.0.1:$UPSTREAM_PORT   (examples/demo-upstream.py, log $LOG_DIR/upstream.log)
  admin        http://127.0.0.1:$ADMIN_PORT$admin_note
  postgres     127.0.0.1:$PGPORT   (throwaway: $pg_dir, log $pg_dir/postgres.log)

Try, in another terminal:
  curl -i $P/                               # proxied to the upstream over a pooled keep-alive connection
  curl -s $P/headers                        # what the upstream saw: X-Forwarded-For, X-Forwarded-Proto, Via
  curl -s --cacert $DEMO_TLS_CERT https://localhost:$TLS_PORT/headers   # over HTTPS: X-Forwarded-Proto: https
  curl -i "$P/slow?ms=500"                  # a slow answer that fits in the timeouts
  curl -i "$P/slow?ms=20000"                # longer than timeouts.first_byte (15s in demo.yaml): 504 + Proxy-Status
  curl -i $P/status/503                     # upstream errors: retried, counted by the breaker
  curl -i $P/nope                           # the upstream's 404, passed through
  curl -i --http1.1 -H \$'Bad\\x01: x' $P/    # invalid header byte: 400 + Proxy-Status, never forwarded
  printf 'GET / HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: 1\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n' | nc -q 2 127.0.0.1 $PROXY_PORT
                                            # conflicting framing (request smuggling attempt): 400
  curl -s http://127.0.0.1:$ADMIN_PORT/metrics | grep -i pool   # pool sizes, waiters, breaker state
  curl -s http://127.0.0.1:$ADMIN_PORT/stats

SQL over HTTP (the Neon protocol) on Postgres 127.0.0.1:$PGPORT, role $PG_USER, database $PG_DB, table items:
  curl -s $P/sql -H 'Neon-Connection-String: $CONN' \\
    -H 'Neon-Raw-Text-Output: true' -H 'Neon-Array-Mode: true' \\
    --data-binary '{"query":"SELECT id, name, price FROM items WHERE price < \$1 ORDER BY id","params":["500"]}'
  curl -s $P/sql -H 'Neon-Connection-String: postgresql://$PG_USER:wrong@localhost/$PG_DB' \\
    --data-binary '{"query":"SELECT 1"}'      # wrong password: 400, "code":"28P01" (Postgres checks it)

The same from Node (npm install @neondatabase/serverless; save as demo.mjs; node demo.mjs):
  import { neon, neonConfig } from '@neondatabase/serverless';
  neonConfig.fetchEndpoint = '$P/sql';
  const sql = neon('$CONN');
  const rows = await sql\`SELECT id, name, price FROM items WHERE price < \${500} ORDER BY id\`;
  console.log(rows);

Ctrl-C stops everything this script started (Postgres included).
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
