#!/usr/bin/env bash
# Make the local stand-in for debian:12-slim when podman's store does not have it (no registry is reachable):
#   debootstrap --variant=minbase bookworm from the mirror this machine's apt sources use
#   (scripts/docker/apt-mirror.py), trimmed like the official slim image (docs, man pages and locales
#   excluded by a dpkg path-exclude config, apt's docker-clean config, no apt lists or caches), then
#   `podman import` as debian:12-slim with CMD ["bash"].
# The image stays in podman's store (/var/lib/containers/storage), so later runs on the same machine reuse it.
# usage: scripts/docker/base-image.sh [--rebuild]       (env BASE_IMAGE=debian:12-slim, WORK=scratch folder)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
image=${BASE_IMAGE:-debian:12-slim}
label=org.bulkhead.base=debootstrap-minbase-bookworm

if [[ ${1:-} != --rebuild ]] && podman image exists "$image"; then
  echo "base-image: $image present ($(podman image inspect -f '{{.Size}}' "$image") bytes), reused"
  exit 0
fi
mirror=$("$here/apt-mirror.py" --suite bookworm)
work=${WORK:-$(mktemp -d /var/tmp/bulkhead-base.XXXXXX)}
rootfs=$work/rootfs
cleanup() { # debootstrap mounts /proc and /sys inside the root fs: unmount before deleting, never cross into them
  awk -v r="$rootfs" 'index($2, r "/") == 1 {print $2}' /proc/mounts | sort -r |
    while read -r m; do umount -l "$m" || true; done
  rm -rf --one-file-system "$rootfs"
}
trap cleanup EXIT
cleanup
mkdir -p "$rootfs"

# The slim trim as a dpkg config, in place before debootstrap's second stage unpacks anything, so later
# apt-get installs in derived images stay trimmed too (what the official slim image's dpkg.cfg.d does).
mkdir -p "$rootfs/etc/dpkg/dpkg.cfg.d"
cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'CFG'
# like debian:*-slim: no documentation, man pages or translations (copyright files stay)
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
CFG

echo "base-image: debootstrap --variant=minbase bookworm from $mirror"
debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 || {
  tail -n 20 "$work/debootstrap.log" >&2
  echo "base-image: debootstrap failed (log: $work/debootstrap.log)" >&2
  trap - EXIT
  exit 1
}

# apt as in the official image: no caches kept, no translations, gzip'd lists, no suggests.
cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'CFG'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CFG
echo 'Acquire::Languages "none";' >"$rootfs/etc/apt/apt.conf.d/docker-no-languages"
echo 'Acquire::GzipIndexes "true";' >"$rootfs/etc/apt/apt.conf.d/docker-gzip-indexes"
echo 'APT::AutoRemove::SuggestsImportant "false";' >"$rootfs/etc/apt/apt.conf.d/docker-autoremove-suggests"
"$here/apt-mirror.py" --suite bookworm --lines >"$rootfs/etc/apt/sources.list"
# what the first stage unpacked before the dpkg config applied, and what the install left behind
rm -rf "$rootfs"/usr/share/doc/*/{changelog*,NEWS*,README*,*.gz} "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
  "$rootfs"/usr/share/lintian/* "$rootfs"/usr/share/groff/* \
  "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
  "$rootfs"/var/cache/debconf/*-old "$rootfs"/var/lib/dpkg/*-old "$rootfs"/var/log/* "$rootfs"/tmp/* \
  "$rootfs"/debootstrap
find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
: >"$rootfs/etc/hostname"
: >"$rootfs/etc/resolv.conf"

podman rmi -f "$image" >/dev/null 2>&1 || true
tar --numeric-owner -C "$rootfs" -c . |
  podman import --quiet --change 'CMD ["bash"]' --change "LABEL $label" - "$image" >/dev/null
echo "base-image: imported $image ($(du -sxh --apparent-size "$rootfs" | cut -f1) root fs," \
  "$(podman image inspect -f '{{.Size}}' "$image") bytes)"
[[ -n ${WORK:-} ]] || { cleanup; rm -rf "$work"; }
