#!/usr/bin/env bash
# Configure (when needed) and compile bulkhead.
#
# usage: scripts/build.sh [normal|asan]...      (default: normal)
#   normal -> build/       buildtype=debugoptimized, -Dwerror=true
#   asan   -> build-asan/  the same plus -Db_sanitize=address,undefined -Db_lundef=false
# The binary is <builddir>/proxy/bulkhead; unit tests are the meson suite "unit".
# Env: NINJA_JOBS (ninja -j, default: ninja's own), BUILD_DIR_NORMAL / BUILD_DIR_ASAN (override the folders),
#      MESON_EXTRA (extra "meson setup" arguments, word-split), CC (compiler for a fresh setup).
# An existing build folder is kept; options that differ from the wanted ones are changed with "meson configure".
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

build_one() {
  local kind=$1 dir
  local -a opts
  case $kind in
    normal)
      dir=${BUILD_DIR_NORMAL:-build}
      opts=(-Dbuildtype=debugoptimized -Dwerror=true) ;;
    asan)
      dir=${BUILD_DIR_ASAN:-build-asan}
      # shellcheck disable=SC2054  # the comma belongs to the meson value
      opts=(-Dbuildtype=debugoptimized -Dwerror=true -Db_sanitize=address,undefined -Db_lundef=false) ;;
    *) echo "build.sh: unknown build '$kind' (normal|asan)" >&2; return 2 ;;
  esac
  # shellcheck disable=SC2206
  [[ -n ${MESON_EXTRA:-} ]] && opts+=($MESON_EXTRA)

  if [[ -f $dir/meson-private/coredata.dat ]]; then
    # Reconfigure only when an option differs, so a no-op build stays a no-op.
    local cur want_ok=1 o k v
    cur=$(meson introspect --buildoptions "$dir" 2>/dev/null |
      /usr/bin/python3 -c 'import json,sys
for o in json.load(sys.stdin):
    v = o["value"]
    v = ",".join(v) if isinstance(v, list) else str(v).lower()
    print(o["name"] + "=" + v)' 2>/dev/null) || want_ok=0
    for o in "${opts[@]}"; do
      k=${o#-D}; v=${k#*=}; k=${k%%=*}
      grep -qxF "$k=$v" <<<"$cur" || { want_ok=0; break; }
    done
    if ((!want_ok)); then
      echo "build.sh: [$kind] meson configure $dir ${opts[*]}"
      meson configure "$dir" "${opts[@]}" >/dev/null || {
        echo "build.sh: [$kind] meson configure failed; setting up $dir again (--wipe)"
        meson setup --wipe "$dir" "${opts[@]}"
      }
    fi
  else
    echo "build.sh: [$kind] meson setup $dir ${opts[*]}"
    if [[ -d $dir/meson-private ]]; then
      meson setup --wipe "$dir" "${opts[@]}"
    else
      meson setup "$dir" "${opts[@]}"
    fi
  fi
  echo "build.sh: [$kind] ninja -C $dir"
  ninja -C "$dir" ${NINJA_JOBS:+-j "$NINJA_JOBS"}
}

(($#)) || set -- normal
for kind in "$@"; do build_one "$kind"; done
