#!/usr/bin/env bash
# The docker suite (scripts/test.sh runs it once, in the normal build): build the image with buildah and run
# it with podman, as root, without a Docker engine or a registry, then check it. Runnable by hand:
#   scripts/docker-test.sh                      (as root on Debian 12; logs in $DOCKER_TEST_OUT)
# Steps: scripts/deps.sh --docker; a containers.conf for this machine; the local debian:12-slim
# (scripts/docker/base-image.sh, cached in podman's store); the stand-ins postgres:15 and python:3.11-slim
# (docker/standins/, rebuilt when their files change); bulkhead:local from docker/Dockerfile (buildah --layers,
# so an unchanged tree rebuilds from cache). Then one line per check, "check NAME ok|FAILED [why]":
#   preflight          this machine can build and run containers (if not: why, and the suite fails)
#   check_config       `podman run bulkhead:local --check` validates the baked config
#   proxy_request      in a private network namespace (loopback only): a request through bulkhead to an
#                      upstream (tests/integration/upstream.py) in the same namespace, and /healthz
#   unprivileged_user  the bulkhead process (PID 1, the entrypoint exec'd it) runs as the image's user
#   healthcheck        docker/compose.yaml's healthcheck command passes inside the running container
#   sql                POST /sql through the container to a Postgres the test starts in the namespace
#   sigterm_drain      `podman stop` while a request is held at the upstream: the request still gets its
#                      response after the stop began, and the container's exit code is 0
#   compose_up         docker/compose.yaml up with the stand-ins (scripts/docker/compose.py follows
#                      depends_on: condition: service_healthy), in its own namespace
#   compose_traffic    /healthz, a request to the demo upstream and one /sql through the compose project
#   compose_down       compose down: bulkhead exits 0 and every container of the project is removed
# Last line: "N passed, N failed". Exit 0 only when every check passed.
# Env: DOCKER_TEST_OUT (logs, default build-results/docker), DOCKER_PORT_BASE (46000: fixed ports inside the
# private namespaces), DOCKER_REBUILD_BASE=1 (make debian:12-slim again), BUILDTYPE (image's meson buildtype).
# shellcheck disable=SC2317  # cleanup runs from a trap
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root" || exit 2
OUT=${DOCKER_TEST_OUT:-$root/build-results/docker}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PORT=${DOCKER_PORT_BASE:-46000}
UP_PORT=$((PORT + 81)) UP_CTL=$((PORT + 82)) PG_PORT=$((PORT + 432))
NS=bh-docker-$$ CNS=bh-compose-$$ CT=bh-docker-test-$$ PROJECT=bh-compose-$$
PG_USER=bulkhead PG_PW='docker-test pw' PG_DB=bhdocker
T0=$(date +%s)
passed=0 failed=0
pids=()

say() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
result() { # result NAME ok|FAILED [why]
  printf 'check %s %s%s\n' "$1" "$2" "${3:+ $3}"
  if [[ $2 == ok ]]; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
}
finish() {
  say "docker suite: $(($(date +%s) - T0))s; logs in $OUT"
  echo "$passed passed, $failed failed"
  exit $((failed > 0 || passed == 0))
}
# poll CMD... until it succeeds, for at most $WAIT seconds (default 30); 1 when it never did
poll() {
  local deadline=$(($(date +%s) + ${WAIT:-30}))
  until "$@" >/dev/null 2>&1; do
    (($(date +%s) < deadline)) || return 1
    sleep 0.2
  done
}
in_ns() { ip netns exec "$NS" "$@"; }
step() { # step NAME CMD...: a timed setup step, its output in $OUT/NAME.log
  local t rc
  t=$(date +%s)
  "${@:2}" >"$OUT/$1.log" 2>&1
  rc=$?
  say "$1: $([[ $rc == 0 ]] && echo ok || echo "FAILED (exit $rc)") ($(($(date +%s) - t))s)"
  return $rc
}

cleanup() {
  podman rm -f -t 0 "$CT" >/dev/null 2>&1
  [[ -e /run/netns/$CNS ]] && "$root/scripts/docker/compose.py" -f docker/compose.yaml -p "$PROJECT" --netns "$CNS" down \
    >>"$OUT/compose-down.log" 2>&1
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  [[ -n ${PGDATA_DIR:-} && -d $PGDATA_DIR ]] && {
    runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D "$PGDATA_DIR/data" -m immediate stop >/dev/null 2>&1
    cp "$PGDATA_DIR/postgres.log" "$OUT/postgres.log" 2>/dev/null
    rm -rf "$PGDATA_DIR"
  }
  ip netns del "$NS" 2>/dev/null
  ip netns del "$CNS" 2>/dev/null
  [[ -n ${CONF_DIR:-} ]] && rm -rf "$CONF_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------------------
# preflight: packages, podman configuration, a container that runs, a network namespace. Runs in this shell
# (it exports CONTAINERS_CONF); on failure WHY says what is missing.
preflight() {
  local hard
  [[ $(id -u) == 0 ]] || { WHY="must run as root (podman/buildah/ip netns as root here; got uid $(id -u))"; return 1; }
  step deps "$root/scripts/deps.sh" --docker ||
    { WHY="scripts/deps.sh --docker failed: $(tail -n 3 "$OUT/deps.log" | tr '\n' ' ')"; return 1; }
  # crun refuses this kernel's hybrid cgroup layout: runc. podman's default ulimits are refused: give the
  # machine's own hard nofile limit. No systemd here: cgroupfs and a file event log.
  CONF_DIR=$(mktemp -d /tmp/bulkhead-containers.XXXXXX)
  hard=$(ulimit -Hn)
  [[ $hard == unlimited ]] && hard=1048576
  cat >"$CONF_DIR/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$hard:$hard", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
  export CONTAINERS_CONF=$CONF_DIR/containers.conf
  podman info >"$OUT/podman-info.log" 2>&1 ||
    { WHY="podman info fails: $(tail -n 2 "$OUT/podman-info.log" | tr '\n' ' ')"; return 1; }
  if ! { ip netns add "$NS" && ip -n "$NS" link set lo up && ip netns add "$CNS" && ip -n "$CNS" link set lo up; } \
    2>"$OUT/netns.log"; then
    WHY="cannot make a network namespace (ip netns add): $(cat "$OUT/netns.log")"
    return 1
  fi
  step base-image "$root/scripts/docker/base-image.sh" ${DOCKER_REBUILD_BASE:+--rebuild} ||
    { WHY="no debian:12-slim: $(tail -n 3 "$OUT/base-image.log" | tr '\n' ' ')"; return 1; }
  # the runtime works at all: the smallest container, in the private namespace
  podman run --rm --pull=never --network "ns:/run/netns/$NS" debian:12-slim true >"$OUT/hello.log" 2>&1 ||
    { WHY="podman cannot run a container: $(tail -n 3 "$OUT/hello.log" | tr '\n' ' ')"; return 1; }
}

# build_standin NAME TAG: docker/standins/NAME -> TAG, skipped when the image carries the hash of those files
build_standin() {
  local dir=docker/standins/$1 tag=$2 sum have
  sum=$(find "$dir" -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
  have=$(podman image inspect -f '{{index .Labels "org.bulkhead.standin"}}' "$tag" 2>/dev/null)
  if [[ $have == "$sum" ]]; then echo "$tag: cached ($sum)"; return 0; fi
  buildah bud --isolation chroot --pull=never --format docker --label "org.bulkhead.standin=$sum" \
    -f "$dir/Dockerfile" -t "$tag" .
}
build_image() { # niced: under scripts/test.sh the asan build's suites run at the same time
  local -a bud=(nice -n 10 buildah bud --isolation chroot --pull=never --layers --format docker
    --ignorefile docker/Dockerfile.dockerignore ${BUILDTYPE:+--build-arg "BUILDTYPE=$BUILDTYPE"} -f docker/Dockerfile)
  # The build stage gets a tag of its own, so that the prune below keeps it as the next run's cache while
  # the stages and images of earlier runs (untagged now) go: the store does not grow run after run.
  "${bud[@]}" --target build -t bulkhead-build:cache . && "${bud[@]}" -t bulkhead:local . &&
    podman image prune -f
}
WHY=""
if ! preflight; then
  result preflight FAILED "this machine cannot run the containers: $WHY"
  finish
fi
result preflight ok
# the stand-ins (mostly apt downloads) build while bulkhead compiles
step build-standins bash -c "$(declare -f build_standin); build_standin postgres postgres:15 &&
  build_standin python python:3.11-slim" &
standins=$!
if ! step build-image build_image; then
  wait "$standins"
  result build FAILED "bulkhead:local did not build: $(grep -m3 -iE 'error|fail' "$OUT/build-image.log" | tr '\n' ' ')"
  finish
fi
if ! wait "$standins"; then
  result compose_up FAILED "stand-in images did not build (see $OUT/build-standins.log)"
  STANDINS_FAILED=1
fi
say "images: debian:12-slim $(podman image inspect -f '{{.Size}}' debian:12-slim) B," \
  "bulkhead:local $(podman image inspect -f '{{.Size}}' bulkhead:local) B"

# ---------------------------------------------------------------------------------------------------------
# checks on one container in the private namespace
out=$(podman run --rm --pull=never --network none bulkhead:local --check 2>&1)
if [[ $? == 0 && $out == *"/etc/bulkhead/bulkhead.yaml: ok"* ]]; then result check_config ok
else result check_config FAILED "$(tr '\n' ' ' <<<"$out")"; fi

# the upstream and Postgres, inside the namespace
in_ns /usr/bin/python3 tests/integration/upstream.py --port "$UP_PORT" --control-port "$UP_CTL" --name docker-up \
  >"$OUT/upstream.log" 2>&1 &
pids+=($!)
PGDATA_DIR=$(mktemp -d /var/tmp/bulkhead-docker-pg.XXXXXX)
chown postgres: "$PGDATA_DIR"
printf '%s\n' "$PG_PW" >"$PGDATA_DIR/pw"
pg() { runuser -u postgres -- "/usr/lib/postgresql/15/bin/$1" "${@:2}"; }
{
  pg initdb -D "$PGDATA_DIR/data" -U "$PG_USER" --pwfile="$PGDATA_DIR/pw" --auth=scram-sha-256 -E UTF8 &&
  in_ns runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D "$PGDATA_DIR/data" -l "$PGDATA_DIR/postgres.log" -w \
    -o "-h 127.0.0.1 -p $PG_PORT -k $PGDATA_DIR" start &&
  PGPASSWORD=$PG_PW in_ns runuser -u postgres -- /usr/lib/postgresql/15/bin/createdb -h 127.0.0.1 \
    -p "$PG_PORT" -U "$PG_USER" "$PG_DB"
} >"$OUT/postgres-setup.log" 2>&1 || say "postgres: setup failed, see $OUT/postgres-setup.log"

podman run -d --pull=never --name "$CT" --network "ns:/run/netns/$NS" -e UPSTREAM=127.0.0.1:$UP_PORT \
  -e PGHOST=127.0.0.1 -e PGPORT=$PG_PORT -e BULKHEAD_WORKERS=2 bulkhead:local >"$OUT/run.log" 2>&1
healthz() { in_ns curl -sf -o /dev/null "http://127.0.0.1:9901/healthz"; }
if ! WAIT=30 poll healthz; then
  podman logs "$CT" >"$OUT/container.log" 2>&1
  say "bulkhead container not healthy: $(tail -n 5 "$OUT/container.log" | tr '\n' ' ')"
fi

body=$(in_ns curl -s -D "$OUT/proxy-head.txt" "http://127.0.0.1:8080/echo-head?from=docker-test")
if grep -qi '^x-upstream: docker-up' "$OUT/proxy-head.txt" && [[ $body == *from=docker-test* ]] && healthz; then
  result proxy_request ok
else
  result proxy_request FAILED "through bulkhead: $(head -n1 "$OUT/proxy-head.txt" 2>/dev/null) body=${body:0:200}"
fi

status=$(podman exec "$CT" cat /proc/1/status 2>&1)
uid=$(awk '/^Uid:/ {print $2 "," $3 "," $4 "," $5}' <<<"$status")
want=$(podman exec "$CT" id -u bulkhead 2>&1)
comm=$(awk '/^Name:/ {print $2}' <<<"$status")
if [[ $comm == bulkhead && $want =~ ^[1-9][0-9]*$ && $uid == "$want,$want,$want,$want" ]]; then
  result unprivileged_user ok
else result unprivileged_user FAILED "PID 1 is '$comm' with uids $uid; user bulkhead is '$want'"; fi

# the compose file's healthcheck, exactly as docker would run it
hc=$(/usr/bin/python3 -c 'import json, sys, yaml
t = yaml.safe_load(open(sys.argv[1]))["services"]["bulkhead"]["healthcheck"]["test"]
t = ["CMD-SHELL", t] if isinstance(t, str) else t
print(json.dumps(t[1:] if t[0] == "CMD" else ["/bin/sh", "-c", t[1]]))' docker/compose.yaml)
mapfile -t hcargv < <(/usr/bin/python3 -c 'import json, sys; print("\n".join(json.loads(sys.argv[1])))' "$hc")
if out=$(podman exec "$CT" "${hcargv[@]}" 2>&1); then result healthcheck ok
else result healthcheck FAILED "'${hcargv[*]}' in the container: $out"; fi
# ... and it can fail: on a port where nothing listens
if podman exec -e BULKHEAD_ADMIN_PORT=1 "$CT" "${hcargv[@]}" >/dev/null 2>&1; then
  result healthcheck_fails_when_down FAILED "the healthcheck passed against a closed port"
else result healthcheck_fails_when_down ok; fi

# sql_query NETNS CONNSTRING: POST /sql via bulkhead on 127.0.0.1:8080 in NETNS; prints the JSON answer
sql_query() { # shellcheck disable=SC2016  # $1 is the SQL parameter, not a shell variable
  ip netns exec "$1" curl -s -X POST "http://127.0.0.1:8080/sql" -H "Neon-Connection-String: $2" \
    -H 'Neon-Raw-Text-Output: true' -H 'Neon-Array-Mode: true' -H 'Content-Type: text/plain;charset=UTF-8' \
    --data-binary '{"query":"SELECT $1::int + 1 AS answer, current_database() AS db","params":[41]}'
}
sql_ok() { # sql_ok JSON DB: the answer row is [42, DB] (raw text output: "42")
  /usr/bin/python3 -c 'import json, sys
d = json.loads(sys.argv[1])
assert [str(v) for v in d["rows"][0]] == ["42", sys.argv[2]], d' "$1" "$2" 2>/dev/null
}
enc_pw=$(/usr/bin/python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$PG_PW")
ans=$(sql_query "$NS" "postgresql://$PG_USER:$enc_pw@db.example/$PG_DB")
if sql_ok "$ans" "$PG_DB"; then result sql ok
else result sql FAILED "answer: ${ans:0:300}"; fi

# SIGTERM: a request held at the upstream when `podman stop` begins still gets its response; exit code 0
holding() { in_ns curl -sf "http://127.0.0.1:$UP_CTL/stats" | grep -q '"holding": *1'; }
in_ns curl -s -o "$OUT/held-body.txt" -w '%{http_code}' "http://127.0.0.1:8080/hold?id=drain" >"$OUT/held-status.txt" 2>&1 &
held=$!
if WAIT=20 poll holding; then
  podman stop -t 30 "$CT" >"$OUT/stop.log" 2>&1 &
  stopper=$!
  draining() { podman logs "$CT" 2>&1 | grep -q 'draining'; }
  WAIT=20 poll draining || say "sigterm_drain: no 'draining' line in the container's log"
  in_ns curl -sf "http://127.0.0.1:$UP_CTL/release?id=drain" >/dev/null
  wait "$held"
  wait "$stopper"
  stop_rc=$?
  code=$(podman inspect -f '{{.State.ExitCode}}' "$CT" 2>&1)
  podman logs "$CT" >"$OUT/container.log" 2>&1
  if [[ $(cat "$OUT/held-status.txt") == 200 && $(cat "$OUT/held-body.txt") == released && $stop_rc == 0 && $code == 0 ]]; then
    result sigterm_drain ok
  else
    result sigterm_drain FAILED "held request: $(cat "$OUT/held-status.txt") '$(head -c 100 "$OUT/held-body.txt")'; podman stop exit $stop_rc; container exit '$code'"
  fi
else
  kill "$held" 2>/dev/null
  result sigterm_drain FAILED "the held request never reached the upstream"
fi

# ---------------------------------------------------------------------------------------------------------
# compose: the project with the stand-ins, in its own namespace
# (the compose file's own defaults: PGPASSWORD bulkhead-demo, no admin token)
compose() { env -u PGPASSWORD -u BULKHEAD_ADMIN_TOKEN "$root/scripts/docker/compose.py" -f docker/compose.yaml \
  -p "$PROJECT" --netns "$CNS" "$@"; }
if [[ -z ${STANDINS_FAILED:-} ]]; then
  t=$(date +%s)
  if compose up --timeout 90 >"$OUT/compose-up.log" 2>&1; then
    result compose_up ok "($(($(date +%s) - t))s)"
    head_ok=0
    ip netns exec "$CNS" curl -s -D "$OUT/compose-head.txt" -o /dev/null "http://127.0.0.1:8080/headers" &&
      head -n1 "$OUT/compose-head.txt" | grep -q ' 200' && head_ok=1
    hz=$(ip netns exec "$CNS" curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:9901/healthz")
    ans=$(sql_query "$CNS" "postgresql://app:bulkhead-demo@db.example/app")
    if ((head_ok)) && [[ $hz == 200 ]] && sql_ok "$ans" app; then result compose_traffic ok
    else result compose_traffic FAILED "/headers: $(head -n1 "$OUT/compose-head.txt") /healthz: $hz /sql: ${ans:0:200}"; fi
  else
    result compose_up FAILED "$(tail -n 8 "$OUT/compose-up.log" | tr '\n' ' ')"
  fi
  # bulkhead drains and exits 0 (the demo upstream, python, dies of SIGTERM: 143 there is normal)
  if compose down >"$OUT/compose-down.log" 2>&1 && grep -q "stopped $PROJECT-bulkhead-1 (exit 0)" "$OUT/compose-down.log" &&
    [[ -z $(podman ps -aq --filter "label=com.docker.compose.project=$PROJECT") ]]; then
    result compose_down ok
  else result compose_down FAILED "$(tr '\n' ' ' <"$OUT/compose-down.log")"; fi
fi
finish
