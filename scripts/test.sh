#!/usr/bin/env bash
# THE test command (README "Quick start", and what .ci/run executes). Run as root on Debian 12, from any cwd.
#
#   1. scripts/deps.sh                     installs missing Debian packages (quick no-op when all are there)
#   2. scripts/build.sh normal, then asan  build/ and build-asan/ (ASan+UBSan, -Dwerror=true)
#   3. LeakSanitizer self-test             a tiny leaking program must be reported (see "LSan" below)
#   4. the suites of both builds, the two builds IN PARALLEL, suites one after another within a build:
#        unit         meson test --suite unit          counted from meson's testlog JSON (cmocka cases)
#        integration  pytest tests/integration         counted from the junit XML
#        compat       node --test in tests/compat      counted from the junit XML (when tests/compat exists)
#        fuzz         scripts/fuzz.sh 20                one test per libFuzzer target (own clang build,
#                                                      build-fuzz/; runs in the normal build only: n/a in asan)
#        docker       scripts/docker-test.sh            one test per check of the container image (podman,
#                                                      buildah; normal build only: n/a in asan)
#   5. a table per build and suite, then the last line exactly "N passed, N failed".
# Exit status: 0 only when nothing failed and every suite that has tests ran. A suite that could not run (build
# failed, runner crashed, no result file, timeout) counts as a failure. A suite with no test files yet shows
# "no tests" and counts nothing. Skipped tests are listed in the table and never counted as passed.
#
# Env knobs:
#   TEST_BUILDS="normal asan"             builds to test
#   TEST_SUITES="unit integration compat fuzz docker" suites to run (a suite is a shell function suite_<name>)
#   TEST_PARALLEL=1                       0: run the builds' suites one build after the other
#   SUITE_TIMEOUT=1800                    seconds per suite before it is killed (counts as failed)
#   PYTEST_ARGS="-k name -x"              extra pytest arguments (e.g. to run one test)
#   SKIP_DEPS=1 / SKIP_BUILD=1            skip steps 1 / 2 (local iteration only)
#   TEST_RESULTS_DIR=build-results        logs, junit XML and meson logs go under <dir>/<build>/
# Each build's suites get: BULKHEAD_BIN=<builddir>/proxy/bulkhead, BULKHEAD_BUILD=normal|asan,
# BULKHEAD_PORT_BASE (20000 for normal, 30000 for asan: tests that need fixed ports should offset from it,
# since both builds run at the same time), BULKHEAD_TEST_TMP (a private scratch folder),
# BULKHEAD_REQUIRE_PG=1 (tests that start their own PostgreSQL fail, not skip, when they cannot), and for
# asan BULKHEAD_SANITIZED=1 with the ASAN_OPTIONS/UBSAN_OPTIONS below.
#
# LSan: LeakSanitizer stops the world with ptrace. It works here as root (CAP_SYS_PTRACE, no Yama, no seccomp);
# it fails with "LeakSanitizer has encountered a fatal error" when the test process is itself being traced
# (strace, gdb; /proc/self/status TracerPid != 0) or ptrace is denied (a container without CAP_SYS_PTRACE /
# with a seccomp profile blocking ptrace, or kernel.yama.ptrace_scope=3). Step 3 detects that; the asan suites
# then run with detect_leaks=0 and the self-test counts as one failure, so a run without leak checking never
# looks green. Fix: run outside the tracer, or give the container --cap-add SYS_PTRACE.
# shellcheck disable=SC2317  # suite_*/prepare_* functions and traps are called indirectly
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root" || exit 2
PY=/usr/bin/python3
export PYTHONDONTWRITEBYTECODE=1

read -r -a BUILDS <<<"${TEST_BUILDS:-normal asan}"
read -r -a SUITES <<<"${TEST_SUITES:-unit integration compat fuzz docker}"
OUT=${TEST_RESULTS_DIR:-$root/build-results}
[[ $OUT == /* ]] || OUT=$root/$OUT
SUITE_TIMEOUT=${SUITE_TIMEOUT:-1800}
ASAN_OPTS_BASE="detect_leaks=1:abort_on_error=0:halt_on_error=1"
UBSAN_OPTS="halt_on_error=1:print_stacktrace=1"

builddir_of() { # absolute path of a build's folder (BUILD_DIR_NORMAL / BUILD_DIR_ASAN override, as in build.sh)
  local d
  case $1 in
    normal) d=${BUILD_DIR_NORMAL:-build} ;;
    asan) d=${BUILD_DIR_ASAN:-build-asan} ;;
  esac
  [[ $d == /* ]] && echo "$d" || echo "$root/$d"
}

T0=$(date +%s)
rm -rf "$OUT"
mkdir -p "$OUT"
for b in "${BUILDS[@]}"; do mkdir -p "$OUT/$b"; done

# ---------------------------------------------------------------------------------------------------------
# Results: one TSV line per (build, suite): build suite status passed failed skipped seconds note
# status: ok | FAILED | NOT RUN | no tests | n/a (a suite that runs in another build only)
record() { # record BUILD SUITE STATUS P F S SECS NOTE
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$OUT/$1/results.tsv"
}
say() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# A suite function suite_<name> BUILD BUILDDIR LOGDIR runs with the build's environment exported and sets:
#   R_STATUS (ok|FAILED|NOT RUN|no tests) R_P R_F R_S (counts) R_NOTE (short text for the table)
# An optional prepare_<name> runs once, before the builds run in parallel (downloads, shared setup).
set_result() { R_STATUS=$1 R_P=$2 R_F=$3 R_S=$4 R_NOTE=${5:-}; }
not_run() { set_result "NOT RUN" 0 1 0 "$1"; }
no_tests() { set_result "no tests" 0 0 0 "$1"; }
from_counts() { # from_counts "P F S NOTE..." -> R_*
  local p f s note
  read -r p f s note <<<"$1"
  [[ $p =~ ^[0-9]+$ && $f =~ ^[0-9]+$ && $s =~ ^[0-9]+$ ]] || { not_run "could not count results"; return; }
  if ((f > 0)); then set_result FAILED "$p" "$f" "$s" "$note"; else set_result ok "$p" "$f" "$s" "$note"; fi
}
timeout_note() { (($1 == 124 || $1 == 137)) && echo "timed out after ${SUITE_TIMEOUT}s"; }

suite_unit() {
  local b=$1 dir=$2 log=$3 rc json extra=()
  [[ $b == asan ]] && extra=(--timeout-multiplier 3)
  rm -f "$dir/meson-logs/unit.json"
  timeout -k 30 "$SUITE_TIMEOUT" meson test -C "$dir" --suite unit --no-rebuild --print-errorlogs \
    --logbase unit "${extra[@]}" >"$log/unit.log" 2>&1
  rc=$?
  json=$dir/meson-logs/unit.json
  if [[ ! -s $json ]]; then
    if grep -q 'No suitable tests defined' "$log/unit.log"; then no_tests "no meson tests in suite unit"
    else not_run "no $json (meson test exit $rc) $(timeout_note "$rc")"; fi
    return
  fi
  cp "$json" "$log/unit.json"
  from_counts "$("$PY" "$root/scripts/testcount.py" meson "$json" "$rc")"
  [[ -n $(timeout_note "$rc") ]] && R_NOTE="$(timeout_note "$rc") $R_NOTE"
}

suite_integration() {
  local b=$1 dir=$2 log=$3 rc xml=$3/integration.xml
  local -a extra
  compgen -G "$root/tests/integration/test_*.py" >/dev/null || { no_tests "no tests/integration/test_*.py"; return; }
  [[ -x $BULKHEAD_BIN ]] || { not_run "no binary $BULKHEAD_BIN"; return; }
  read -r -a extra <<<"${PYTEST_ARGS:-}"
  rm -f "$xml"
  timeout -k 30 "$SUITE_TIMEOUT" "$PY" -m pytest "$root/tests/integration" -q -p no:cacheprovider -rfE \
    --junitxml="$xml" --basetemp="$BULKHEAD_TEST_TMP/pytest" "${extra[@]}" >"$log/integration.log" 2>&1
  rc=$?
  if ((rc == 5)); then no_tests "pytest collected no tests"; return; fi
  [[ -s $xml ]] || { not_run "no junit XML (pytest exit $rc) $(timeout_note "$rc")"; return; }
  from_counts "$("$PY" "$root/scripts/testcount.py" junit "$xml" --rc "$rc")"
  [[ -n $(timeout_note "$rc") ]] && R_NOTE="$(timeout_note "$rc") $R_NOTE"
}

# Compatibility tests with real client libraries (node --test). Dependencies come from tests/compat/package.json
# (npm ci when a package-lock.json exists), installed once in prepare_compat.
compat_files() { find "$root/tests/compat" -path '*/node_modules' -prune -o -type f \
  \( -name '*.test.js' -o -name '*.test.mjs' -o -name '*.test.cjs' -o -name 'test-*.js' -o -name 'test-*.mjs' \) -print 2>/dev/null; }
prepare_compat() {
  local d=$root/tests/compat
  [[ -n $(compat_files) && -f $d/package.json ]] || return 0
  command -v npm >/dev/null 2>&1 || return 0
  say "compat: installing npm packages in tests/compat"
  if [[ -f $d/package-lock.json ]]; then
    (cd "$d" && npm ci --no-audit --no-fund) >"$OUT/npm-install.log" 2>&1
  else
    (cd "$d" && npm install --no-audit --no-fund) >"$OUT/npm-install.log" 2>&1
  fi || say "compat: npm install failed, see $OUT/npm-install.log"
}
suite_compat() {
  local b=$1 dir=$2 log=$3 rc xml=$3/compat.xml
  local -a files
  mapfile -t files < <(compat_files)
  ((${#files[@]})) || { no_tests "no tests/compat/*.test.js"; return; }
  command -v node >/dev/null 2>&1 || { not_run "node not installed"; return; }
  [[ -x $BULKHEAD_BIN ]] || { not_run "no binary $BULKHEAD_BIN"; return; }
  rm -f "$xml"
  (cd "$root/tests/compat" && timeout -k 30 "$SUITE_TIMEOUT" node --test \
    --test-reporter=junit --test-reporter-destination="$xml" \
    --test-reporter=spec --test-reporter-destination=stdout "${files[@]}") >"$log/compat.log" 2>&1
  rc=$?
  [[ -s $xml ]] || { not_run "no junit XML (node exit $rc) $(timeout_note "$rc")"; return; }
  from_counts "$("$PY" "$root/scripts/testcount.py" junit "$xml" --rc "$rc")"
  [[ -n $(timeout_note "$rc") ]] && R_NOTE="$(timeout_note "$rc") $R_NOTE"
}

# libFuzzer targets (tests/fuzz) through scripts/fuzz.sh: each replays its committed corpus, then fuzzes for
# FUZZ_SECONDS (20). The targets have their own clang build (build-fuzz/, ASan+UBSan+libFuzzer), the same
# whichever build is tested, so the suite runs once: in the normal build, and is n/a in asan.
suite_fuzz() {
  local b=$1 dir=$2 log=$3 rc p f
  compgen -G "$root/tests/fuzz/fuzz_*.c" >/dev/null || { no_tests "no tests/fuzz/fuzz_*.c"; return; }
  if [[ $b != normal ]]; then
    set_result "n/a" 0 0 0 "runs once, in the normal build"
    return
  fi
  timeout -k 30 "$SUITE_TIMEOUT" env FUZZ_OUT="$log/fuzz-out" "$root/scripts/fuzz.sh" "${FUZZ_SECONDS:-20}" \
    >"$log/fuzz.log" 2>&1
  rc=$?
  p=$(awk '$1 ~ /^fuzz_/ && $NF == "ok" {n++} END {print n + 0}' "$log/fuzz.log")
  f=$(awk '$1 ~ /^fuzz_/ && NF >= 4 && $NF != "ok" {n++} END {print n + 0}' "$log/fuzz.log")
  if ((p + f == 0)); then not_run "scripts/fuzz.sh exit $rc, no target ran $(timeout_note "$rc")"; return; fi
  ((rc != 0 && f == 0)) && f=1 # fuzz.sh failed after the targets it printed (e.g. a timeout)
  from_counts "$p $f 0 $(awk '$1 ~ /^fuzz_/ && $2 ~ /^[0-9]+$/ {e += $2} END {print e + 0}' "$log/fuzz.log") execs"
  [[ -n $(timeout_note "$rc") ]] && R_NOTE="$(timeout_note "$rc") $R_NOTE"
}

# The container image (docker/Dockerfile) built with buildah and checked with podman by scripts/docker-test.sh,
# which prints "check NAME ok|FAILED ..." per check. The image builds its own binary, whichever build is tested,
# so the suite runs once: in the normal build, and is n/a in asan. A machine that cannot run containers fails
# the "preflight" check, with the reason.
suite_docker() {
  local b=$1 dir=$2 log=$3 rc p f
  if [[ $b != normal ]]; then
    set_result "n/a" 0 0 0 "runs once, in the normal build"
    return
  fi
  timeout -k 30 "$SUITE_TIMEOUT" env DOCKER_TEST_OUT="$log/docker" DOCKER_PORT_BASE=$((BULKHEAD_PORT_BASE + 6000)) \
    "$root/scripts/docker-test.sh" >"$log/docker.log" 2>&1
  rc=$?
  p=$(awk '$1 == "check" && $3 == "ok" {n++} END {print n + 0}' "$log/docker.log")
  f=$(awk '$1 == "check" && $3 != "ok" {n++} END {print n + 0}' "$log/docker.log")
  if ((p + f == 0)); then not_run "scripts/docker-test.sh exit $rc, no check ran $(timeout_note "$rc")"; return; fi
  ((rc != 0 && f == 0)) && f=1 # docker-test.sh failed after the checks it printed (e.g. a timeout)
  from_counts "$p $f 0 $(awk '$1 == "check" && $3 != "ok" {printf "%s%s", (n++ ? "," : ""), $2}' "$log/docker.log")"
  [[ -n $(timeout_note "$rc") ]] && R_NOTE="$(timeout_note "$rc") $R_NOTE"
}

# ---------------------------------------------------------------------------------------------------------
# LeakSanitizer self-test: compile a program that leaks, expect a leak report. Sets LSAN_OK=1|0.
lsan_selftest() {
  local d=$OUT/asan/lsan-selftest out
  mkdir -p "$d"
  printf '#include <stdlib.h>\nint main(void) { volatile char *p = malloc(77); p[0] = 1; p = 0; return 0; }\n' >"$d/leak.c"
  if ! "${CC:-cc}" -fsanitize=address,undefined -g -O0 "$d/leak.c" -o "$d/leak" >"$d/cc.log" 2>&1; then
    LSAN_OK=0 LSAN_NOTE="cannot compile a sanitized program (see $d/cc.log)"
    return
  fi
  out=$(ASAN_OPTIONS=$ASAN_OPTS_BASE "$d/leak" 2>&1)
  printf '%s\n' "$out" >"$d/run.log"
  if grep -q 'LeakSanitizer: detected memory leaks' <<<"$out"; then
    LSAN_OK=1 LSAN_NOTE="leak detection works"
  elif grep -q 'LeakSanitizer has encountered a fatal error' <<<"$out"; then
    LSAN_OK=0
    LSAN_NOTE="LSan fatal error: ptrace denied (TracerPid=$(awk '/TracerPid/ {print $2}' /proc/self/status)"
    LSAN_NOTE+=" ptrace_scope=$(cat /proc/sys/kernel/yama/ptrace_scope 2>/dev/null || echo none)); leaks NOT checked"
  else
    LSAN_OK=0 LSAN_NOTE="leak not reported (see $d/run.log); leaks NOT checked"
  fi
}

# ---------------------------------------------------------------------------------------------------------
# run_build BUILD: all suites of one build, one after another (this runs in a background subshell)
run_build() {
  local b=$1 dir s t0 t1 log
  dir=$(builddir_of "$b")
  log=$OUT/$b
  export BULKHEAD_BIN=$dir/proxy/bulkhead BULKHEAD_BUILD=$b BULKHEAD_TEST_TMP=$log/tmp BULKHEAD_REQUIRE_PG=1
  export BULKHEAD_REQUIRE_SYSTEMD_ANALYZE=1 # systemd is in deps.sh: test_install must not skip in CI
  mkdir -p "$BULKHEAD_TEST_TMP"
  if [[ $b == asan ]]; then
    export BULKHEAD_SANITIZED=1 BULKHEAD_PORT_BASE=30000 UBSAN_OPTIONS=$UBSAN_OPTS
    if ((LSAN_OK)); then export ASAN_OPTIONS=$ASAN_OPTS_BASE
    else export ASAN_OPTIONS=${ASAN_OPTS_BASE/detect_leaks=1/detect_leaks=0}; fi
  else
    export BULKHEAD_PORT_BASE=20000
    unset BULKHEAD_SANITIZED
  fi
  for s in "${SUITES[@]}"; do
    if [[ -n ${BUILD_FAILED[$b]:-} ]]; then
      record "$b" "$s" "NOT RUN" 0 1 0 0 "build failed"
      continue
    fi
    say "[$b] $s: running"
    t0=$(date +%s)
    set_result "NOT RUN" 0 1 0 "suite function missing"
    if declare -F "suite_$s" >/dev/null; then "suite_$s" "$b" "$dir" "$log"; fi
    t1=$(date +%s)
    [[ $b == asan && $LSAN_OK == 0 && $R_STATUS != "no tests" && $R_STATUS != n/a ]] && R_NOTE="leaks not checked; $R_NOTE"
    record "$b" "$s" "$R_STATUS" "$R_P" "$R_F" "$R_S" $((t1 - t0)) "$R_NOTE"
    say "[$b] $s: $R_STATUS, $R_P passed, $R_F failed, $R_S skipped ($((t1 - t0))s) $R_NOTE"
  done
}

# ---------------------------------------------------------------------------------------------------------
pids=()
descendants() { # descendants PID...: every live descendant PID (children first listed after parents)
  local p c
  for p in "$@"; do
    # shellcheck disable=SC2013  # the children files are space-separated PIDs
    for c in $(cat /proc/"$p"/task/*/children 2>/dev/null); do echo "$c"; descendants "$c"; done
  done
}
on_signal() {
  trap - INT TERM
  say "interrupted: stopping suites"
  local p all
  all=$(descendants $$)
  # timeout(1) runs each suite in its own process group, so signal every descendant by PID
  for p in $all; do kill -TERM "$p" 2>/dev/null; done
  wait
  exit 130
}
trap on_signal INT TERM

say "bulkhead test run in $root (builds: ${BUILDS[*]}; suites: ${SUITES[*]}; results: $OUT)"

# 1. dependencies
if [[ ${SKIP_DEPS:-0} != 1 ]]; then
  t0=$(date +%s)
  if "$root/scripts/deps.sh" >"$OUT/deps.log" 2>&1; then
    say "deps: $(tail -n1 "$OUT/deps.log") ($(($(date +%s) - t0))s)"
  else
    say "deps: FAILED, see $OUT/deps.log"; tail -n 20 "$OUT/deps.log"
    record "${BUILDS[0]}" deps FAILED 0 1 0 $(($(date +%s) - t0)) "scripts/deps.sh failed"
  fi
fi

# 2. builds, one after the other (each uses both cores)
declare -A BUILD_FAILED=()
for b in "${BUILDS[@]}"; do
  [[ ${SKIP_BUILD:-0} == 1 ]] && break
  t0=$(date +%s)
  say "[$b] build: scripts/build.sh $b"
  if "$root/scripts/build.sh" "$b" >"$OUT/$b/build.log" 2>&1; then
    say "[$b] build: ok ($(($(date +%s) - t0))s)"
  else
    BUILD_FAILED[$b]=1
    say "[$b] build: FAILED ($(($(date +%s) - t0))s), first errors (full log: $OUT/$b/build.log):"
    grep -E 'error|FAILED' "$OUT/$b/build.log" | head -n 10
    record "$b" build FAILED 0 1 0 $(($(date +%s) - t0)) "see $OUT/$b/build.log"
  fi
done

# 3. LeakSanitizer self-test (only matters for the asan build)
LSAN_OK=1 LSAN_NOTE=""
if [[ " ${BUILDS[*]} " == *" asan "* ]]; then
  lsan_selftest
  say "[asan] LeakSanitizer self-test: $LSAN_NOTE"
  ((LSAN_OK)) || record asan lsan-selftest FAILED 0 1 0 0 "$LSAN_NOTE"
fi

# 4. suites: builds in parallel
for s in "${SUITES[@]}"; do
  if declare -F "prepare_$s" >/dev/null; then "prepare_$s"; fi
done
for b in "${BUILDS[@]}"; do
  if [[ ${TEST_PARALLEL:-1} == 1 ]]; then
    run_build "$b" &
    pids+=($!)
  else
    run_build "$b"
  fi
done
for p in "${pids[@]}"; do wait "$p"; done

# 5. report
total_p=0 total_f=0 total_s=0 bad=0
fmt='%-7s %-14s %-9s %7s %7s %8s %6s  %s\n'
echo
echo "=== bulkhead test results ($(($(date +%s) - T0))s; logs in $OUT) ==="
# shellcheck disable=SC2059
printf "$fmt" build suite status passed failed skipped secs note
for b in "${BUILDS[@]}"; do
  [[ -s $OUT/$b/results.tsv ]] || { record "$b" "(all)" "NOT RUN" 0 1 0 0 "no results recorded"; }
  while IFS=$'\t' read -r rb rs st p f s secs note; do
    # shellcheck disable=SC2059
    printf "$fmt" "$rb" "$rs" "$st" "$p" "$f" "$s" "$secs" "$note"
    total_p=$((total_p + p)) total_f=$((total_f + f)) total_s=$((total_s + s))
    [[ $st == ok || $st == "no tests" || $st == n/a ]] || bad=1
    if [[ $st == FAILED || $st == "NOT RUN" ]]; then
      [[ -s $OUT/$rb/$rs.log ]] && echo "$OUT/$rb/$rs.log" >>"$OUT/failed-logs.txt"
    fi
  done <"$OUT/$b/results.tsv"
done
echo "skipped (not counted as passed): $total_s"
if [[ -s $OUT/failed-logs.txt ]]; then
  while read -r lf; do
    echo
    echo "--- last 40 lines of $lf"
    tail -n 40 "$lf"
  done <"$OUT/failed-logs.txt"
  echo
fi
((total_f > 0)) && bad=1
echo "$total_p passed, $total_f failed"
exit $((bad ? 1 : 0))
