#!/usr/bin/env bash
# Which build of bulkhead is fastest (issue 13, "production build"). Builds the variants
#   dbgopt       meson buildtype=debugoptimized (-O2 -g, assertions on)
#   dbgopt-lto   the same with b_lto=true
#   o2           buildtype=release, optimization=2 (-O2, NDEBUG)
#   o2-lto       the same with b_lto=true
#   o3           buildtype=release (meson's release: -O3, NDEBUG)
#   o3-lto       the same with b_lto=true
# into build-bt-<name>/ (reconfigured, not wiped, when they exist), then runs bench/http.sh ONCE with every
# variant as a BH_VARIANTS target, so they are measured in the same rounds as nginx and HAProxy, one after
# the other, and prints per variant and (path, conns): req/s and proxy CPU per request, each as the mean of
# its per-round ratio to HAProxy. CPU per request is the figure to choose by on a noisy 2-core machine.
#
# usage: bench/buildtype.sh      (scripts/deps.sh --bench first)
# Env: VARIANTS="dbgopt o2 ..." (default: all six), and http.sh's knobs, with these defaults here:
#   WORKERS_AXIS=1 CONNS=64 PATHS="/ /16k" REPS=3 DURATION=5s ACCESS_LOG_AXIS=off
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=bench/lib.sh
source "$here/lib.sh"

declare -A OPTS=(
  [dbgopt]="-Dbuildtype=debugoptimized -Db_lto=false"
  [dbgopt-lto]="-Dbuildtype=debugoptimized -Db_lto=true"
  [o2]="-Dbuildtype=release -Doptimization=2 -Db_lto=false"
  [o2-lto]="-Dbuildtype=release -Doptimization=2 -Db_lto=true"
  [o3]="-Dbuildtype=release -Doptimization=3 -Db_lto=false"
  [o3-lto]="-Dbuildtype=release -Doptimization=3 -Db_lto=true"
)
read -r -a names <<<"${VARIANTS:-dbgopt dbgopt-lto o2 o2-lto o3 o3-lto}"

variants=()
for n in "${names[@]}"; do
  [[ -n ${OPTS[$n]:-} ]] || die "unknown variant $n (known: ${!OPTS[*]})"
  d=$root/build-bt-$n
  # shellcheck disable=SC2086  # the options are words
  if [[ -f $d/build.ninja ]]; then
    meson configure "$d" ${OPTS[$n]} -Dtests=false >/dev/null
  else
    meson setup "$d" "$root" ${OPTS[$n]} -Dtests=false >/dev/null
  fi
  ninja -C "$d" proxy/bulkhead >/dev/null || die "build of $n failed"
  echo "built $n: ${OPTS[$n]} ($(stat -c %s "$d/proxy/bulkhead") bytes)"
  variants+=("$n=$d/proxy/bulkhead")
done

export WORKERS_AXIS=${WORKERS_AXIS:-1} CONNS=${CONNS:-64} PATHS=${PATHS:-/ /16k} REPS=${REPS:-3}
export DURATION=${DURATION:-5s} ACCESS_LOG_AXIS=${ACCESS_LOG_AXIS:-off} NO_BULKHEAD=1
BH_VARIANTS="${variants[*]}" "$here/http.sh"

# rows.txt: target wk path conn rep req/s p50 p99 ratio errors wrk% up% prx% prxus/r opens cores
rows=$ANCHORS/http/rows.txt
{
  echo
  echo "build variants vs haproxy (mean over reps of the per-round ratio; cpu = proxy CPU us per request)"
  awk -v list="${names[*]}" '
    BEGIN { n = split(list, vs, " ") }
    { k = $2 " " $3 " " $4 " " $5; rps[$1, k] = $6; cpu[$1, k] = $14; keys[k] = 1 }
    END {
      printf "%-11s %-5s %4s  %13s %13s %9s\n", "variant", "path", "conn", "req/s / hap", "cpu / hap", "cpu us/r"
      for (i = 1; i <= n; i++) {
        v = vs[i]; delete sr; delete sc; delete sa; delete m
        for (k in keys) {
          split(k, f, " "); g = f[2] " " f[3]
          if (rps["haproxy", k] > 0 && cpu["haproxy", k] > 0 && cpu[v, k] != "-" && (v, k) in rps) {
            sr[g] += rps[v, k] / rps["haproxy", k]; sc[g] += cpu[v, k] / cpu["haproxy", k]
            sa[g] += cpu[v, k]; m[g]++
          }
        }
        for (g in m) { split(g, f, " ")
          printf "%-11s %-5s %4s  %13.3f %13.3f %9.1f\n", v, f[1], f[2], sr[g] / m[g], sc[g] / m[g], sa[g] / m[g] }
      }
    }' "$rows"
} | tee -a "$RESULTS"
