#!/usr/bin/env bash
# Makes this machine ready for rootful podman and leaves the Debian 12 base
# image localhost/debian:12 in podman's store:
#   1. installs podman, runc and debootstrap (plus the EXTRA_PACKAGES given) from
#      Debian's archive when missing;
#   2. writes /etc/containers/containers.conf with default_ulimits = [] (without
#      it runc fails on setrlimit(RLIMIT_NOFILE) here);
#   3. debootstraps Debian 12 minbase (bookworm, -updates, -security; no docs,
#      man pages or translations, as debian:12-slim; no apt caches or lists;
#      dpkg and apt set up as in the official debian:12 image: unsafe I/O, no
#      .deb kept, no translations) and imports it as localhost/debian:12,
#      since no image registry is reachable. Made once: the image is kept
#      (rebuilt when BASE_VERSION changes), and its tarball is cached in $CACHE.
#   ci/podman_base.sh [EXTRA_PACKAGES...]
# Env: IMAGESEARCH_CACHE (~/.cache/imagesearch), DEBIAN_MIRROR,
#      DEBIAN_SECURITY_MIRROR. Run as root (ci/containers.sh and
#      ci/test_job_in_container.sh call it).
# Use podman as this machine needs it: `podman --runtime runc
# --cgroup-manager=cgroupfs` (crun refuses hybrid cgroups).
set -euo pipefail
[[ "$(id -u)" == 0 ]] || { echo "ci/podman_base.sh: run as root" >&2; exit 1; }
export HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
CACHE="${IMAGESEARCH_CACHE:-$HOME/.cache/imagesearch}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
BASE_IMAGE=localhost/debian:12
# Raise when the recipe below changes: an image of another version is rebuilt.
BASE_VERSION=2
fail() { echo "FAIL: $*" >&2; exit 1; }
pm() { podman --runtime runc --cgroup-manager=cgroupfs "$@"; }

# ---------------------------------------------------------------- tools
# debian-archive-keyring: debootstrap checks bookworm's Release file with it
# (on Ubuntu runners too). catatonit: the init of `podman run --init`.
need=()
for p in podman runc catatonit debootstrap debian-archive-keyring "$@"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if ((${#need[@]})); then
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null 2>&1 ||
    { apt-get update -qq && apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null; } ||
    fail "apt-get install ${need[*]}"
fi
if [[ ! -e /etc/containers/containers.conf ]]; then
  mkdir -p /etc/containers
  printf '[containers]\ndefault_ulimits = []\n' >/etc/containers/containers.conf
elif ! grep -q '^[[:space:]]*default_ulimits' /etc/containers/containers.conf; then
  echo "note: /etc/containers/containers.conf has no default_ulimits; runs may fail on setrlimit"
fi

# ---------------------------------------------------------------- base image
if [[ "$(pm image inspect --format '{{index .Labels "imagesearch.base.version"}}' "$BASE_IMAGE" 2>/dev/null)" == \
      "$BASE_VERSION" ]]; then
  exit 0
fi
TARBALL="$CACHE/debian-12-minbase-$BASE_VERSION.tar"
if [[ ! -s "$TARBALL" ]]; then
  echo "base image: debootstrap --variant=minbase bookworm"
  mkdir -p "$CACHE"
  rootfs="$(mktemp -d /var/tmp/imagesearch-debootstrap.XXXXXX)"
  trap 'rm -rf "$rootfs" "$rootfs.log"' EXIT
  timeout 900 debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR" >"$rootfs.log" 2>&1 ||
    { tail -20 "$rootfs.log"; fail "debootstrap"; }
  rm -f "$rootfs/etc/apt/sources.list"
  cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY_MIRROR
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
    'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' \
    'path-exclude /usr/share/locale/*' 'path-exclude /usr/share/lintian/*' \
    >"$rootfs/etc/dpkg/dpkg.cfg.d/01-nodoc"
  # As the official image (debuerreotype): dpkg skips fsync, apt keeps no .deb
  # files, package caches or translations.
  echo force-unsafe-io >"$rootfs/etc/dpkg/dpkg.cfg.d/docker-apt-speedup"
  cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  echo 'Acquire::Languages "none";' >"$rootfs/etc/apt/apt.conf.d/docker-no-languages"
  echo 'Acquire::GzipIndexes "true";' >"$rootfs/etc/apt/apt.conf.d/docker-gzip-indexes"
  echo 'Apt::AutoRemove::SuggestsImportant "false";' >"$rootfs/etc/apt/apt.conf.d/docker-autoremove-suggests"
  find "$rootfs/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
  find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "${rootfs:?}"/usr/share/{man,info,locale,lintian}/* "${rootfs:?}"/var/cache/apt/archives/*.deb \
    "${rootfs:?}"/var/cache/apt/*.bin "${rootfs:?}"/var/lib/apt/lists/* "${rootfs:?}"/var/log/*.log
  # Host details debootstrap copied; podman provides these at run time.
  : >"$rootfs/etc/resolv.conf"; echo localhost >"$rootfs/etc/hostname"
  tar --numeric-owner -C "$rootfs" -cf "$TARBALL.tmp" . && mv "$TARBALL.tmp" "$TARBALL"
fi
echo "base image: import $TARBALL as $BASE_IMAGE"
pm import -q --change 'CMD ["/bin/bash"]' --change "LABEL imagesearch.base.version=$BASE_VERSION" \
  "$TARBALL" "$BASE_IMAGE" >/dev/null
