#!/bin/bash
# The emulated RK3399 userland: an arm64 Debian (versions.env: DEBIAN_SUITE) root filesystem run under
# qemu-aarch64 (binfmt_misc), provisioned by docker/install/device_runtime.sh, the script the device image runs.
#
# Usage (root):
#   arm64-userland.sh build [--rebuild]     bootstrap + provision + install the project; fast when up to date
#   arm64-userland.sh run [--bind DIR]... [--cwd DIR] [--env K=V]... -- CMD [ARG...]
#                                           run CMD inside (edge-run, python3 are the device venv's); this
#                                           repository, ../shared and each DIR are bound at the same paths
#                                           inside; CMD starts in --cwd (default: $PWD when bound, else /);
#                                           exit status is CMD's
#   arm64-userland.sh status                what is built, what is stale; exit 0 only when ready to run
#   arm64-userland.sh check                 can this machine emulate arm64? (registers qemu-aarch64 if needed)
#   arm64-userland.sh footprint             size of the device runtime (venv), before and after slimming
#   arm64-userland.sh clean                 delete the userland (the debootstrap package cache is kept)
# Env: VESSEL_EDGE_USERLAND=DIR  where it lives (default ~/.cache/vessel-edge/arm64-bookworm)
#      VESSEL_EDGE_DEBIAN_MIRROR  Debian mirror (default from versions.env)
# Inside, VESSEL_EDGE_EMULATED=qemu-aarch64 (environment) and /etc/vessel-edge-emulated (a file) say "emulated"
# (benchmarks label timings with it), and /proc/cpuinfo reads as the RK3399's two Cortex-A72 (QEMU would pass
# the host's x86 text through, on which ONNX Runtime crashes at import).
# Mounts (/proc, /sys, /dev, binds) live in a private mount namespace (unshare -m): they vanish with the process.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
INSTALL="$HERE/install"
# shellcheck source=SCRIPTDIR/install/versions.env
source "$INSTALL/versions.env"
CACHE=${VESSEL_EDGE_USERLAND:-$HOME/.cache/vessel-edge/arm64-${DEBIAN_SUITE}}
ROOT="$CACHE/rootfs"
MIRROR=${VESSEL_EDGE_DEBIAN_MIRROR:-$DEBIAN_MIRROR}
BASE_STAMP="$CACHE/base.stamp"          # debootstrap finished (its content: what was bootstrapped)
PROJECT_STAMP="$CACHE/project.sha256"   # sha256 of the project sources installed last
PROVENANCE="$ROOT$DEVICE_PREFIX/provenance.json"  # written last by device_runtime.sh: the provisioning stamp
WHEELS="$CACHE/wheels"
# Project files copied in for installation (pyproject's packages + what setuptools reads)
PROJECT_PATHS=(pyproject.toml README.md models edge export benchmarks)

say() { echo "[arm64-userland] $*" >&2; }
die() { echo "arm64-userland: error: $*" >&2; exit 2; }

install_sha256() { cat "$INSTALL/device_runtime.sh" "$INSTALL/versions.env" | sha256sum | cut -d' ' -f1; }
base_wanted() { echo "suite=$DEBIAN_SUITE mirror=$MIRROR include=${DEVICE_APT// /,},${DEVICE_APT_BUILD// /,}"; }

project_files() {  # NUL-separated, sorted, relative to the repo; git's view when there is one (skips ignored files)
  if git -C "$REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git -C "$REPO" ls-files -z -co --exclude-standard -- "${PROJECT_PATHS[@]}" \
      | while IFS= read -r -d '' f; do [ -f "$REPO/$f" ] && printf '%s\0' "$f"; done | sort -z
  else
    (cd "$REPO" && find "${PROJECT_PATHS[@]}" -type f ! -path '*/__pycache__/*' -print0 2>/dev/null | sort -z)
  fi
}
project_sha256() {
  (cd "$REPO" && project_files | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
}
installed_sha256() { sed -n 's/.*"install_sha256": "\([0-9a-f]*\)".*/\1/p' "$PROVENANCE" 2>/dev/null || true; }

# --- emulation ---------------------------------------------------------------------------------------------
binfmt_ready() { [ -r /proc/sys/fs/binfmt_misc/qemu-aarch64 ] && grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64; }

ensure_binfmt() {
  binfmt_ready && return 0
  if ! command -v qemu-aarch64-static >/dev/null || ! command -v update-binfmts >/dev/null; then
    die "arm64 emulation needs QEMU user mode + binfmt: sudo apt-get install qemu-user-static binfmt-support (or: bash docker/install/host_toolchain.sh emulation)"
  fi
  [ "$(id -u)" = 0 ] || die "registering qemu-aarch64 with binfmt_misc needs root: sudo $0 build"
  if ! grep -q ' /proc/sys/fs/binfmt_misc ' /proc/mounts; then
    say "mounting binfmt_misc"
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc \
      || die "cannot mount binfmt_misc (a container without privileges?); on the host run: sudo mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc"
  fi
  say "enabling qemu-aarch64 in binfmt_misc"
  update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
  if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] && [ -r /usr/lib/binfmt.d/qemu-aarch64.conf ]; then
    cat /usr/lib/binfmt.d/qemu-aarch64.conf > /proc/sys/fs/binfmt_misc/register
  fi
  binfmt_ready || die "qemu-aarch64 is not registered with binfmt_misc; run: sudo update-binfmts --enable qemu-aarch64"
}

# --- the root filesystem -----------------------------------------------------------------------------------
assert_unmounted() {  # never delete through a live bind mount
  if grep -q " $ROOT/" /proc/mounts; then
    die "something is still mounted under $ROOT (see /proc/mounts); unmount it before rebuilding"
  fi
}

# The private mount namespace every command inside runs in: ROOT's /proc (with the A72 cpuinfo over it), /sys,
# /dev, optionally a fresh /tmp, and host directories bound at the same paths. Args: TMPFS(0|1) NBINDS BINDS... CMD...
NS_SCRIPT='set -e; R=$1 CPUINFO=$2 TMPFS=$3 NB=$4; shift 4
  mount --bind /proc "$R/proc"; mount --rbind /sys "$R/sys"; mount --rbind /dev "$R/dev"
  mount --bind "$CPUINFO" "$R/proc/cpuinfo"
  if [ "$TMPFS" = 1 ]; then mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"; fi
  for ((i = 0; i < NB; i++)); do mkdir -p "$R$1"; mount --bind "$1" "$R$1"; shift; done
  exec "$@"'
in_namespace() {  # in_namespace TMPFS NBINDS [BIND...] CMD...
  unshare -m --propagation private -- /bin/bash -c "$NS_SCRIPT" arm64-userland "$ROOT" "$CACHE/cpuinfo" "$@"
}

bootstrap() {
  assert_unmounted
  if [ -e "$ROOT" ]; then
    say "found a half-built userland at $ROOT (debootstrap never finished): removing it and bootstrapping again"
    rm -rf "$ROOT"
  fi
  command -v debootstrap >/dev/null || die "debootstrap is missing: sudo apt-get install debootstrap"
  mkdir -p "$CACHE/debs" "$ROOT"
  local t0=$SECONDS include="${DEVICE_APT// /,},${DEVICE_APT_BUILD// /,}"
  say "debootstrap --foreign: arm64 $DEBIAN_SUITE from $MIRROR into $ROOT (first stage: download + unpack)"
  nice -n 10 debootstrap --arch=arm64 --foreign --variant=minbase --include="$include" \
    --cache-dir="$CACHE/debs" "$DEBIAN_SUITE" "$ROOT" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
    || die "debootstrap (first stage) failed; see $CACHE/debootstrap.log"
  say "debootstrap --second-stage under qemu-aarch64 (configures the packages, slow)"
  in_namespace 0 0 nice -n 10 chroot "$ROOT" /debootstrap/debootstrap --second-stage >>"$CACHE/debootstrap.log" 2>&1 \
    || die "debootstrap (second stage) failed; see $CACHE/debootstrap.log (rerun build: it starts over)"
  base_wanted > "$BASE_STAMP"
  say "bootstrapped in $((SECONDS - t0)) s"
}

download_wheels() {  # the aarch64 wheels, fetched by the host's pip (fast, cached) for the emulated pip to install
  local pip=(python3 -m pip)
  [ -x "$REPO/.venv/bin/python" ] && pip=("$REPO/.venv/bin/python" -m pip)
  mkdir -p "$WHEELS"
  say "downloading the aarch64 wheels (cp${DEVICE_PYTHON/./}) into $WHEELS"
  local plats=() v
  # every manylinux tag up to bookworm's glibc 2.36 (pip does not expand a given tag downwards)
  for v in $(seq 36 -1 17); do plats+=(--platform "manylinux_2_${v}_aarch64"); done
  # shellcheck disable=SC2086
  "${pip[@]}" download -q --disable-pip-version-check --only-binary=:all: -d "$WHEELS" \
    "${plats[@]}" --platform manylinux2014_aarch64 --python-version "$DEVICE_PYTHON" --implementation cp \
    $DEVICE_PIP $DEVICE_BUILD_PIP || die "pip download of the aarch64 wheels failed (is the package index reachable?)"
}

stage_sources() {  # copy the install scripts and the project into the userland's /tmp
  rm -rf "$ROOT/tmp/vessel-edge"
  mkdir -p "$ROOT/tmp/vessel-edge/src" "$ROOT/tmp/vessel-edge/wheels"
  cp -a "$INSTALL" "$ROOT/tmp/vessel-edge/install"
  (cd "$REPO" && project_files | xargs -0 cp --parents -t "$ROOT/tmp/vessel-edge/src")
  if [ ! -f "$ROOT/tmp/vessel-edge/src/README.md" ]; then
    say "README.md is missing from the project: installing with an empty one (pyproject names it as readme)"
    : > "$ROOT/tmp/vessel-edge/src/README.md"
  fi
  cp -a "$WHEELS/." "$ROOT/tmp/vessel-edge/wheels/"
  cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
}

run_installer() {  # device_runtime.sh with ARGS inside the userland, offline from the staged wheels
  in_namespace 0 0 nice -n 10 chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    LANG=C.UTF-8 VESSEL_EDGE_WHEELHOUSE=/tmp/vessel-edge/wheels \
    /bin/bash /tmp/vessel-edge/install/device_runtime.sh "$@"
}

provision() {
  local t0=$SECONDS
  download_wheels
  stage_sources
  say "running docker/install/device_runtime.sh inside the userland (the device image runs the same script)"
  run_installer /tmp/vessel-edge/src || die "device_runtime.sh failed inside the userland (output above)"
  project_sha256 > "$PROJECT_STAMP"
  rm -rf "$ROOT/tmp/vessel-edge"
  say "provisioned in $((SECONDS - t0)) s"
}

refresh_project() {
  local t0=$SECONDS
  stage_sources
  say "project sources changed since the last install: reinstalling the project (device_runtime.sh --project-only)"
  run_installer --project-only /tmp/vessel-edge/src || die "reinstalling the project failed (output above)"
  project_sha256 > "$PROJECT_STAMP"
  rm -rf "$ROOT/tmp/vessel-edge"
  say "project reinstalled in $((SECONDS - t0)) s"
}

write_emulation_files() {
  # /proc/cpuinfo as an RK3399 big cluster reports it: ONNX Runtime's cpuinfo library crashes on the host's x86
  # text, which QEMU 7.2 passes through. Bound over /proc/cpuinfo in every namespace (see NS_SCRIPT).
  local i
  for i in 0 1; do
    printf 'processor\t: %s\nBogoMIPS\t: 48.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid\n' "$i"
    printf 'CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 2\n\n'
  done > "$CACHE/cpuinfo"
  # A regular file that says "emulated" (benchmarks/remote.py reads it over TVM RPC; procfs does not come through)
  [ -d "$ROOT/etc" ] && echo "qemu-aarch64 user-mode emulation on an $(uname -m) host (docker/arm64-userland.sh)" \
    > "$ROOT/etc/vessel-edge-emulated"
  return 0
}

# --- commands ----------------------------------------------------------------------------------------------
cmd_build() {
  [ "$(id -u)" = 0 ] || die "building the userland needs root (debootstrap, chroot, mounts): sudo $0 build"
  ensure_binfmt
  mkdir -p "$CACHE"
  exec 9>"$CACHE/.lock"
  flock -w 1800 9 || die "another build or a run holds $CACHE/.lock for 30 min; is one stuck?"
  if [ "${1:-}" = "--rebuild" ]; then
    assert_unmounted
    say "--rebuild: deleting $ROOT"
    rm -rf "$ROOT" "$BASE_STAMP" "$PROJECT_STAMP"
  fi
  write_emulation_files
  if [ ! -f "$BASE_STAMP" ] || [ "$(cat "$BASE_STAMP")" != "$(base_wanted)" ]; then
    [ -f "$BASE_STAMP" ] && { say "base changed ($(cat "$BASE_STAMP") -> $(base_wanted)): bootstrapping again"; rm -f "$BASE_STAMP"; }
    bootstrap
  fi
  local want have
  want=$(install_sha256); have=$(installed_sha256)
  if [ -z "$have" ]; then
    [ -d "$ROOT$DEVICE_PREFIX" ] && say "found a half-provisioned userland (no $DEVICE_PREFIX/provenance.json): provisioning again"
    provision
  elif [ "$have" != "$want" ]; then
    say "install scripts changed (stamp ${have:0:12} -> ${want:0:12}): provisioning again"
    provision
  elif [ "$(cat "$PROJECT_STAMP" 2>/dev/null)" != "$(project_sha256)" ]; then
    refresh_project
  else
    say "up to date: $ROOT (install ${want:0:12})"
  fi
  write_emulation_files
}

cmd_status() {
  local ok=0
  echo "userland:   $ROOT"
  if binfmt_ready; then echo "binfmt:     qemu-aarch64 enabled"; else echo "binfmt:     qemu-aarch64 NOT enabled (build enables it)"; ok=1; fi
  if [ ! -e "$ROOT" ]; then echo "base:       absent"; ok=1
  elif [ ! -f "$BASE_STAMP" ]; then echo "base:       half-built (debootstrap unfinished; build starts it over)"; ok=1
  elif [ "$(cat "$BASE_STAMP")" != "$(base_wanted)" ]; then echo "base:       stale ($(cat "$BASE_STAMP"))"; ok=1
  else echo "base:       $(cat "$BASE_STAMP")"; fi
  local want have
  want=$(install_sha256); have=$(installed_sha256)
  if [ -z "$have" ]; then echo "provision:  not provisioned (no $DEVICE_PREFIX/provenance.json)"; ok=1
  elif [ "$have" != "$want" ]; then echo "provision:  stale (stamp $have, install scripts $want)"; ok=1
  else echo "provision:  install_sha256 $have (current)"; fi
  if [ "$(cat "$PROJECT_STAMP" 2>/dev/null)" = "$(project_sha256)" ]; then echo "project:    current"
  else echo "project:    stale (build reinstalls it)"; ok=1; fi
  [ $ok = 0 ] && echo "ready" || echo "not ready: run $0 build"
  return $ok
}

cmd_footprint() {
  [ -f "$PROVENANCE" ] || die "not provisioned: run $0 build"
  python3 - "$PROVENANCE" "$ROOT$DEVICE_PREFIX/venv" <<'PY'
import json, os, sys
p = json.load(open(sys.argv[1]))
mb = lambda b: f"{b / 1e6:.1f} MB"
for label, key in (("before slimming", "footprint_before_slim"), ("installed", "footprint")):
    f = p[key]
    print(f"{label:16s} venv {mb(f['venv_bytes'])}, site-packages {mb(f['site_packages_bytes'])}")
print("largest site-packages entries (installed):")
for name, b in p["footprint"]["largest"].items():
    print(f"  {mb(b):>9s}  {name}")
live = sum(os.lstat(os.path.join(d, f)).st_size for d, _, fs in os.walk(sys.argv[2]) for f in fs)
print(f"venv now        {mb(live)} (TVM slim: {p['tvm_slim']})")
PY
}

cmd_run() {
  local binds=("$REPO") envs=() cwd=""
  [ -d "$REPO/../shared" ] && binds+=("$(realpath "$REPO/../shared")")
  while [ $# -gt 0 ]; do
    case "$1" in
      --bind) binds+=("$(realpath "${2:?--bind needs a directory}")"); shift 2 ;;
      --cwd) cwd=$2; shift 2 ;;
      --env) envs+=("${2:?--env needs K=V}"); shift 2 ;;
      --) shift; break ;;
      *) die "run: unknown option $1 (usage: run [--bind DIR]... [--cwd DIR] [--env K=V]... -- CMD...)" ;;
    esac
  done
  [ $# -gt 0 ] || die "run: no command (usage: run [--bind DIR]... -- CMD...)"
  [ "$(id -u)" = 0 ] || die "running inside the userland needs root (chroot, mounts)"
  ensure_binfmt
  [ -n "$(installed_sha256)" ] || die "the userland at $ROOT is not provisioned: run $0 build"
  [ "$(installed_sha256)" = "$(install_sha256)" ] || say "warning: the userland is stale (install scripts changed): run $0 build"
  [ -f "$CACHE/cpuinfo" ] && [ -f "$ROOT/etc/vessel-edge-emulated" ] || write_emulation_files
  for b in "${binds[@]}"; do
    [ -d "$b" ] || die "run: --bind $b is not a directory"
    [ -z "$cwd" ] && case "$PWD/" in "$b"/*) cwd=$PWD ;; esac
  done
  cwd=${cwd:-/}
  exec 9>"$CACHE/.lock"
  flock -s -w 1800 9 || die "a build holds $CACHE/.lock"
  exec unshare -m --propagation private -- /bin/bash -c "$NS_SCRIPT" arm64-userland "$ROOT" "$CACHE/cpuinfo" \
    1 "${#binds[@]}" "${binds[@]}" \
    chroot "$ROOT" /usr/bin/env -i PATH="$DEVICE_PREFIX/venv/bin:/usr/sbin:/usr/bin:/sbin:/bin" HOME=/root \
    LANG=C.UTF-8 VESSEL_EDGE_EMULATED=qemu-aarch64 "${envs[@]}" /bin/sh -c 'cd "$0" && exec "$@"' "$cwd" "$@"
}

cmd_clean() {
  [ -d "$CACHE" ] || { say "nothing to clean at $CACHE"; return 0; }
  exec 9>"$CACHE/.lock"
  flock -w 60 9 || die "a build or a run uses $CACHE; stop it first"
  assert_unmounted
  say "deleting $ROOT and its stamps (keeping the package caches $CACHE/debs, $WHEELS)"
  rm -rf "$ROOT" "$BASE_STAMP" "$PROJECT_STAMP" "$CACHE/cpuinfo"
}

case "${1:-}" in
  build) shift; cmd_build "$@" ;;
  run) shift; cmd_run "$@" ;;
  status) shift; cmd_status ;;
  check) shift; [ "$(id -u)" = 0 ] || die "the userland needs root (debootstrap, chroot, mounts)"
    command -v unshare >/dev/null || die "unshare is missing: sudo apt-get install util-linux"
    ensure_binfmt; echo "arm64 emulation available: $(head -1 /proc/sys/fs/binfmt_misc/qemu-aarch64), $(qemu-aarch64-static --version | head -1)" ;;
  footprint) shift; cmd_footprint ;;
  clean) shift; cmd_clean ;;
  -h|--help|help) sed -n '2,/^set /{/^#/p}' "$0" ;;
  *) echo "usage: $0 {build [--rebuild] | run [--bind DIR]... [--cwd DIR] [--env K=V]... -- CMD... | status | check | footprint | clean}" >&2; exit 2 ;;
esac
