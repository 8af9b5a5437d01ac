#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz, -Dfuzz=true, Debian's clang) when missing or stale and runs each
# for SECONDS (default 20):
#   1. regression: every committed file of tests/fuzz/corpus/<target>/ once (`target file...`);
#   2. fuzzing: the corpus copied to a temp dir (the committed one is never written), with the target's
#      dictionary tests/fuzz/<target>.dict when there is one, -max_total_time=SECONDS -rss_limit_mb=2048.
# Prints one line per target: name, execs, exec/s, result (ok | CRASH | LEAK | INVARIANT | TIMEOUT | OOM |
# REGRESSION | NOT RUN), then the reproducer path of each failure. Exit status 0 only when every target is ok.
# tests/fuzz/regressions/<target>/ holds inputs of known, not yet fixed bugs: never run here.
#
#   scripts/fuzz.sh [SECONDS]
# Env: FUZZ_BUILD_DIR=build-fuzz, FUZZ_TARGETS="fuzz_config ..." (default: every tests/fuzz/fuzz_*.c),
#      FUZZ_OUT=<build dir>/fuzz-out (logs and crash inputs; emptied per run), FUZZ_JOBS=2 (ninja -j),
#      FUZZ_ARGS="..." (extra libFuzzer flags for the fuzzing run).
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root" || exit 2
SECS=${1:-20}
[[ $SECS =~ ^[0-9]+$ ]] || { echo "usage: $0 [SECONDS]" >&2; exit 2; }
BUILD=${FUZZ_BUILD_DIR:-build-fuzz}
[[ $BUILD == /* ]] || BUILD=$root/$BUILD
OUTDIR=${FUZZ_OUT:-$BUILD/fuzz-out}

# 1. build
if ! command -v clang >/dev/null 2>&1; then
  echo "fuzz: clang not found (Debian: apt-get install clang libclang-rt-14-dev, see scripts/deps.sh)" >&2
  exit 2
fi
if [[ ! -f $BUILD/build.ninja ]]; then
  rm -rf "$BUILD"
  if ! CC=clang CXX=clang++ meson setup "$BUILD" -Dbuildtype=debugoptimized -Dfuzz=true -Dtests=false >"$root/.fuzz-setup.log" 2>&1; then
    cat "$root/.fuzz-setup.log" >&2; rm -f "$root/.fuzz-setup.log"
    echo "fuzz: meson setup failed" >&2
    exit 2
  fi
  rm -f "$root/.fuzz-setup.log"
fi
mkdir -p "$BUILD"
if ! ninja -C "$BUILD" -j"${FUZZ_JOBS:-2}" >"$BUILD/fuzz-build.log" 2>&1; then
  tail -n 30 "$BUILD/fuzz-build.log" >&2
  echo "fuzz: build failed (full log: $BUILD/fuzz-build.log)" >&2
  exit 2
fi

# 2. run
if [[ -n ${FUZZ_TARGETS:-} ]]; then
  read -r -a targets <<<"$FUZZ_TARGETS"
else
  targets=()
  for f in "$root"/tests/fuzz/fuzz_*.c; do targets+=("$(basename "$f" .c)"); done
fi
rm -rf "$OUTDIR"
mkdir -p "$OUTDIR"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export ASAN_OPTIONS=${FUZZ_ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:allocator_may_return_null=1}
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
read -r -a extra <<<"${FUZZ_ARGS:-}"

classify() { # classify LOG RC -> result word
  local log=$1 rc=$2
  if grep -q 'invariant:' "$log"; then echo INVARIANT
  elif grep -q 'ERROR: LeakSanitizer' "$log"; then echo LEAK
  elif grep -q 'ERROR: libFuzzer: timeout' "$log"; then echo TIMEOUT
  elif grep -q 'ERROR: libFuzzer: out-of-memory' "$log"; then echo OOM
  elif ((rc != 0)); then echo CRASH
  else echo ok; fi
}

bad=0 failures=()
printf '%-16s %12s %10s  %s\n' target execs exec/s result
for t in "${targets[@]}"; do
  bin=$BUILD/tests/fuzz/$t
  log=$OUTDIR/$t.log
  if [[ ! -x $bin ]]; then
    printf '%-16s %12s %10s  %s\n' "$t" - - "NOT RUN (no $bin)"
    bad=1; continue
  fi
  corpus=$root/tests/fuzz/corpus/$t
  # regression: each committed corpus file once
  files=()
  [[ -d $corpus ]] && mapfile -t files < <(find "$corpus" -type f | sort)
  if ((${#files[@]})); then
    "$bin" "${files[@]}" </dev/null >"$OUTDIR/$t.regress.log" 2>&1
    rc=$?
    if ((rc != 0)); then
      res=$(classify "$OUTDIR/$t.regress.log" "$rc")
      last=$(grep -o 'Running: .*' "$OUTDIR/$t.regress.log" | tail -n1 | cut -d' ' -f2-)
      printf '%-16s %12s %10s  %s\n' "$t" - - "REGRESSION $res"
      failures+=("$t: committed corpus file ${last:-?} fails ($res), log $OUTDIR/$t.regress.log")
      bad=1; continue
    fi
  fi
  # fuzzing
  work=$tmp/$t
  mkdir -p "$work/corpus" "$OUTDIR/$t-artifacts"
  ((${#files[@]})) && cp "${files[@]}" "$work/corpus/"
  dict=()
  [[ -f $root/tests/fuzz/$t.dict ]] && dict=(-dict="$root/tests/fuzz/$t.dict")
  (cd "$work" && "$bin" -max_total_time="$SECS" -rss_limit_mb=2048 -timeout=25 -print_final_stats=1 \
    -artifact_prefix="$OUTDIR/$t-artifacts/" "${dict[@]}" "${extra[@]}" corpus) </dev/null >"$log" 2>&1
  rc=$?
  res=$(classify "$log" "$rc")
  execs=$(awk -F': *' '/stat::number_of_executed_units/ {print $2}' "$log" | tail -n1)
  eps=$(awk -F': *' '/stat::average_exec_per_sec/ {print $2}' "$log" | tail -n1)
  if [[ -z $execs ]]; then # a crash ends the run before the final stats: the last status line
    execs=$(grep -oE '^#[0-9]+' "$log" | tail -n1 | tr -d '#')
    eps=$(grep -oE 'exec/s: [0-9]+' "$log" | tail -n1 | awk '{print $2}')
  fi
  printf '%-16s %12s %10s  %s\n' "$t" "${execs:-?}" "${eps:-?}" "$res"
  if [[ $res != ok ]]; then
    bad=1
    repro=$(grep -oE 'Test unit written to .*' "$log" | tail -n1 | sed 's/Test unit written to //')
    failures+=("$t: $res, reproduce with: $bin ${repro:-<no artifact>} (log $log)")
  fi
done
for f in "${failures[@]}"; do echo "FAILED $f"; done
exit $((bad ? 1 : 0))
