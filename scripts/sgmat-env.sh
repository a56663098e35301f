#!/usr/bin/env bash
# A Debian trixie root with Mesa 26.1 lavapipe (trixie-backports), whose Vulkan driver implements
# VK_KHR_cooperative_matrix, so Dawn offers `chromium-experimental-subgroup-matrix` on the CPU.
# Bookworm's Mesa 25.0 lacks it. Used by .ci/run and by hand:
#
#   scripts/sgmat-env.sh ensure           build the root if it is missing (minutes; reused afterwards)
#   scripts/sgmat-env.sh run CMD [ARG…]   run CMD inside the root, cwd = this checkout (same absolute path)
#   scripts/sgmat-env.sh path             print the root's directory
#
# STEP1X_TRIXIE_ROOT overrides the cache directory (default /var/cache/step1x-trixie). Needs root (or
# sudo) for debootstrap, mount and chroot. The checkout, the real target of node_modules when it is a
# symlink, and ../shared when present are bind-mounted at their own paths in a private mount namespace,
# so nothing stays mounted after the command ends. The host's `node` binary is copied in (and refreshed
# when the host's changes); a node that does not run there is replaced by trixie's nodejs package.
set -euo pipefail
ROOT="${STEP1X_TRIXIE_ROOT:-/var/cache/step1x-trixie}"
STAMP="$ROOT/.step1x-ready"
STAMP_VERSION="1"   # bump when the package set below changes
REPO="$(cd "$(dirname "$0")/.." && pwd -P)"
SUDO=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "sgmat-env: needs root or sudo (debootstrap, mount, chroot)" >&2; exit 1; }
  SUDO="sudo"
fi

host_mirror() {
  # The host's own Debian mirror (deb822 or one-line format), so the root builds where the host's apt works.
  local uri
  uri=$(grep -rhs '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | awk '{print $2}' | grep -m1 debian || true)
  [ -n "$uri" ] || uri=$(grep -hs '^deb ' /etc/apt/sources.list 2>/dev/null | grep -v security | awk '{print $2}' | grep -m1 debian || true)
  echo "${uri:-http://deb.debian.org/debian}"
}

build_root() {
  local t0=$SECONDS mirror
  mirror=$(host_mirror)
  if ! command -v debootstrap >/dev/null; then
    echo "sgmat-env: installing debootstrap"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  fi
  echo "sgmat-env: building a Debian trixie root in $ROOT from $mirror"
  # A half-built root from an interrupted run is discarded rather than patched.
  $SUDO rm -rf "$ROOT.partial"
  $SUDO mkdir -p "$(dirname "$ROOT")"
  $SUDO debootstrap --variant=minbase trixie "$ROOT.partial" "$mirror" >"${TMPDIR:-/tmp}/step1x-debootstrap.log" 2>&1 \
    || { echo "sgmat-env: debootstrap failed, last lines of ${TMPDIR:-/tmp}/step1x-debootstrap.log:" >&2; tail -20 "${TMPDIR:-/tmp}/step1x-debootstrap.log" >&2; exit 1; }
  printf 'deb %s trixie main\ndeb %s trixie-updates main\ndeb %s trixie-backports main\n' "$mirror" "$mirror" "$mirror" \
    | $SUDO tee "$ROOT.partial/etc/apt/sources.list" >/dev/null
  $SUDO cp /etc/resolv.conf "$ROOT.partial/etc/resolv.conf" 2>/dev/null || true
  $SUDO chroot "$ROOT.partial" apt-get update -qq
  $SUDO chroot "$ROOT.partial" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends -t trixie-backports mesa-vulkan-drivers libvulkan1 >/dev/null
  $SUDO chroot "$ROOT.partial" apt-get clean
  $SUDO mv "$ROOT.partial" "$ROOT"
  echo "$STAMP_VERSION $(chroot_mesa_version)" | $SUDO tee "$STAMP" >/dev/null
  echo "sgmat-env: root ready in $((SECONDS - t0)) s (mesa-vulkan-drivers $(chroot_mesa_version))"
}

chroot_mesa_version() {
  local r="$ROOT"; [ -d "$ROOT.partial" ] && r="$ROOT.partial"
  $SUDO chroot "$r" dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null || echo unknown
}

ensure() {
  if [ -f "$STAMP" ] && [ "$(cut -d' ' -f1 "$STAMP")" = "$STAMP_VERSION" ]; then
    :
  else
    [ -d "$ROOT" ] && { echo "sgmat-env: $ROOT is stale or incomplete, rebuilding"; $SUDO rm -rf "$ROOT"; }
    build_root
  fi
  # The host's node, refreshed when it changed (the root has no Node of its own). A node that needs
  # shared libraries the root lacks (Debian's nodejs package links libnode) cannot run there: then the
  # root gets trixie's own nodejs instead, once (marker file).
  [ -f "$ROOT/.step1x-own-node" ] && return 0
  local node; node="$(command -v node)"
  if ! cmp -s "$node" "$ROOT/usr/local/bin/node"; then
    $SUDO install -m 0755 "$node" "$ROOT/usr/local/bin/node"
  fi
  if ! $SUDO chroot "$ROOT" /usr/local/bin/node --version >/dev/null 2>&1; then
    echo "sgmat-env: the host's node does not run in the root; installing trixie's nodejs there"
    $SUDO rm -f "$ROOT/usr/local/bin/node"
    $SUDO chroot "$ROOT" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs >/dev/null
    $SUDO touch "$ROOT/.step1x-own-node"
  fi
}

run_inside() {
  ensure
  local mounts=("$REPO") nm shared
  if [ -L "$REPO/node_modules" ]; then
    nm="$(readlink -f "$REPO/node_modules")"; mounts+=("$nm")
  fi
  shared="$(cd "$REPO/.." && pwd -P)/shared"
  [ -d "$shared" ] && mounts+=("$shared")
  # The private /tmp goes first: a checkout (or ../shared) under /tmp is bind-mounted on top of it, not hidden by it.
  local script='set -e; R="$1"; shift; n="$1"; shift
    mount -t proc proc "$R/proc"; mount --rbind /dev "$R/dev"; mount -t tmpfs tmpfs "$R/tmp"
    for ((i = 0; i < n; i++)); do mkdir -p "$R$1"; mount --rbind "$1" "$R$1"; shift; done
    cwd="$1"; shift
    exec chroot "$R" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/tmp XDG_RUNTIME_DIR=/tmp \
      XDG_CACHE_HOME=/tmp/.cache STEP1X_SGMAT_ENV=trixie ${STEP1X_KERNELS:+STEP1X_KERNELS=$STEP1X_KERNELS} \
      ${STEP1X_PRECISION:+STEP1X_PRECISION=$STEP1X_PRECISION} ${CI:+CI=$CI} \
      /bin/sh -c "cd \"\$0\" && exec \"\$@\"" "$cwd" "$@"'
  $SUDO unshare --mount --propagation private /bin/bash -c "$script" sgmat "$ROOT" "${#mounts[@]}" "${mounts[@]}" "$(pwd -P)" "$@"
}

case "${1:-}" in
  ensure) ensure ;;
  path) echo "$ROOT" ;;
  run) shift; [ $# -gt 0 ] || { echo "usage: $0 run CMD [ARG…]" >&2; exit 2; }; run_inside "$@" ;;
  *) echo "usage: $0 ensure | run CMD [ARG…] | path" >&2; exit 2 ;;
esac
