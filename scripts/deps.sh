#!/usr/bin/env bash
# Install, as root, every Debian 12 package bulkhead needs. Idempotent and quick: packages are checked with
# dpkg-query first; apt-get update + install run only when something is missing.
#
# usage: scripts/deps.sh [--bench] [--docker] [--build-only | --runtime] [--check]
#   (default)     build + test packages
#   --bench       also the benchmark peers: wrk nginx haproxy pgbouncer (+ iproute2 for ss, gnuplot-nox for
#                 bench/soak.sh's plot)
#   --docker      also what the docker suite (scripts/docker-test.sh) needs: podman, buildah and runc to build
#                 and run the image as root without a registry, debootstrap for the local debian:12-slim,
#                 iproute2 for its private network namespace, python3-yaml for scripts/docker/compose.py
#   --build-only  only what compiling needs (Docker build stage)
#   --runtime     only the shared libraries the binary links (Docker runtime stage)
#   --check       install nothing; list what is missing, exit 1 if anything is
#
# Debian's postgresql/nginx/haproxy/pgbouncer packages start a system service when installed: the install runs
# behind a temporary /usr/sbin/policy-rc.d that forbids it, and any such service found running is stopped
# afterwards. Tests and benchmarks start their own processes on their own ports.
set -euo pipefail

BUILD_PKGS=(build-essential meson ninja-build pkg-config libuv1-dev node-llhttp libssl-dev openssl libpq-dev
  libyaml-dev libjansson-dev libcmocka-dev)
# pandoc: bulkhead.yaml(5) is generated from docs/configuration.md when the build finds it (meson option
# man=auto, so the Docker build stage needs none); tests/integration/test_install.py checks the installed page.
# chromium: tests/integration/test_dashboard.py renders the admin dashboard headless.
TEST_PKGS=(python3 python3-pytest python3-requests python3-websocket python3-psycopg python3-yaml postgresql
  curl clang libclang-rt-14-dev netcat-openbsd iproute2 procps prometheus nginx pandoc systemd chromium)
BENCH_PKGS=(wrk nginx haproxy pgbouncer iproute2 procps gnuplot-nox)
DOCKER_PKGS=(podman buildah runc debootstrap iproute2 curl python3 python3-yaml)
RUNTIME_PKGS=(libuv1 libssl3 libpq5 libyaml-0-2 libjansson4 ca-certificates)

mode=default bench=0 docker=0 check=0
for a in "$@"; do
  case $a in
    --bench) bench=1 ;;
    --docker) docker=1 ;;
    --build-only) mode=build ;;
    --runtime) mode=runtime ;;
    --check) check=1 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "deps.sh: unknown argument $a" >&2; exit 2 ;;
  esac
done

case $mode in
  default) want=("${BUILD_PKGS[@]}" "${TEST_PKGS[@]}") ;;
  build) want=("${BUILD_PKGS[@]}") ;;
  runtime) want=("${RUNTIME_PKGS[@]}") ;;
esac
((bench)) && want+=("${BENCH_PKGS[@]}")
((docker)) && want+=("${DOCKER_PKGS[@]}")

missing=()
for p in "${want[@]}"; do
  st=$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)
  [[ $st == ii* ]] || missing+=("$p")
done
# de-duplicate (iproute2/procps appear in two lists)
if ((${#missing[@]})); then mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u); fi

# stop_services: no packaged service may stay running (they would also hold 5432/80 and confuse tests).
stop_services() {
  local ver cl port status rest svc pidf
  if command -v pg_lsclusters >/dev/null 2>&1; then
    while read -r ver cl port status rest; do
      [[ $status == online* ]] || continue
      echo "deps.sh: stopping packaged PostgreSQL cluster $ver/$cl (port $port)"
      pg_ctlcluster "$ver" "$cl" stop -m fast || true
    done < <(pg_lsclusters -h 2>/dev/null)
  fi
  for svc in nginx haproxy pgbouncer; do
    case $svc in
      nginx) pidf=/run/nginx.pid ;;
      haproxy) pidf=/run/haproxy.pid ;;
      pgbouncer) pidf=/run/postgresql/pgbouncer.pid ;;
    esac
    if [[ -d /run/systemd/system ]] && systemctl is-active --quiet "$svc" 2>/dev/null; then
      echo "deps.sh: stopping system service $svc"
      systemctl stop "$svc" || true
    elif [[ -s $pidf ]] && kill -0 "$(cat "$pidf")" 2>/dev/null; then
      echo "deps.sh: stopping system service $svc (pid $(cat "$pidf"))"
      if command -v service >/dev/null 2>&1; then service "$svc" stop >/dev/null 2>&1 || true; fi
      if kill -0 "$(cat "$pidf" 2>/dev/null)" 2>/dev/null; then kill "$(cat "$pidf")" 2>/dev/null || true; fi
    fi
  done
}

if ((${#missing[@]} == 0)); then
  ((check)) || { [[ $(id -u) == 0 ]] && stop_services; }
  echo "deps.sh: all $(printf '%s\n' "${want[@]}" | sort -u | wc -l) packages present"
  exit 0
fi
if ((check)); then
  echo "deps.sh: missing: ${missing[*]}"
  exit 1
fi

SUDO=()
if [[ $(id -u) != 0 ]]; then
  command -v sudo >/dev/null 2>&1 || { echo "deps.sh: missing ${missing[*]}; run as root" >&2; exit 1; }
  SUDO=(sudo)
fi

echo "deps.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Keep packaged services from starting during the install (Debian's policy-rc.d mechanism; exit 101 =
# "action forbidden"). Only installed when none exists, and removed again afterwards.
policy=/usr/sbin/policy-rc.d
own_policy=0
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\n# temporary, written by bulkhead scripts/deps.sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
  "${SUDO[@]}" chmod 755 "$policy"
  own_policy=1
fi
restore_policy() { ((own_policy)) && "${SUDO[@]}" rm -f "$policy"; own_policy=0; }
trap restore_policy EXIT

# DPkg::Lock::Timeout: wait for a concurrent apt/dpkg (e.g. unattended-upgrades on a fresh machine) to finish
apt_opts=(-y -q -o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold
  -o Dpkg::Use-Pty=0)
# A failing extra repository must not stop the install from Debian's own lists.
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q -o DPkg::Lock::Timeout=300 \
  || echo "deps.sh: warning: apt-get update reported errors; trying the install anyway" >&2
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install "${apt_opts[@]}" --no-install-recommends "${missing[@]}"
restore_policy
if [[ $mode == runtime ]]; then
  "${SUDO[@]}" rm -rf /var/lib/apt/lists/*
else
  if [[ $(id -u) == 0 ]]; then stop_services; else "${SUDO[@]}" bash -c "$(declare -f stop_services); stop_services"; fi
fi
echo "deps.sh: done"
