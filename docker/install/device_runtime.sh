#!/bin/bash
# Install the vessel-edge device runtime into a Debian arm64 system (the RK3399 board, the device image, the
# emulated userland): python3 + a venv at $DEVICE_PREFIX/venv holding the project with its base deps, the TVM
# runtime and ONNX Runtime, all from aarch64 wheels. No torch, no onnx, no TVM compiler (DEVICE_TVM_SLIM=1).
#
# Usage (root):
#   device_runtime.sh SRC                 everything: apt packages, venv, wheels, the project from SRC, slimming
#   device_runtime.sh --system-only       only the apt packages a venv copied from a build stage needs
#   device_runtime.sh --project-only SRC  reinstall just the project from SRC into the existing venv
# Env: VESSEL_EDGE_WHEELHOUSE=DIR  install offline from the aarch64 wheels in DIR (else from the package index)
#      DEVICE_TVM_SLIM=0|1          overrides versions.env
# The venv has no pip of its own (13 MB the board never uses): pip runs from Debian's wheel (python3-venv ships it).
# Writes $DEVICE_PREFIX/provenance.json last: its install_sha256 (this script + versions.env) is the stamp that
# docker/arm64-userland.sh and the tests compare; no provenance.json means an unfinished install.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
slim_from_env=${DEVICE_TVM_SLIM:-}
# shellcheck source=SCRIPTDIR/versions.env
source "$HERE/versions.env"
DEVICE_TVM_SLIM=${slim_from_env:-$DEVICE_TVM_SLIM}
MODE=all
case "${1:-}" in
  --system-only) MODE=system; shift ;;
  --project-only) MODE=project; shift ;;
  -h|--help) sed -n '2,/^set /{/^#/p}' "$0"; exit 0 ;;
esac
SRC=${1:-}
if [ "$MODE" != system ] && [ -z "$SRC" ]; then
  echo "device_runtime.sh: give the project source directory (pyproject.toml) as argument" >&2; exit 2
fi
if [ -n "$SRC" ] && [ ! -f "$SRC/pyproject.toml" ]; then
  echo "device_runtime.sh: $SRC has no pyproject.toml; give the vessel-edge source directory" >&2; exit 2
fi

VENV="$DEVICE_PREFIX/venv"
PROVENANCE="$DEVICE_PREFIX/provenance.json"
INSTALL_SHA256=$(cat "$HERE/device_runtime.sh" "$HERE/versions.env" | sha256sum | cut -d' ' -f1)
log() { echo "[device_runtime] $*" >&2; }
vpip() {  # pip acting on the venv, run from Debian's pip wheel (a zip on sys.path runs as is)
  local whl
  whl=$(find /usr/share/python-wheels -name 'pip-*.whl' 2>/dev/null | sort | tail -1)
  [ -n "$whl" ] || { log "no pip wheel in /usr/share/python-wheels: apt-get install $DEVICE_APT_BUILD"; exit 2; }
  PYTHONPATH="$whl" "$VENV/bin/python" -m pip --disable-pip-version-check "$@"
}

apt_install() {  # install the named packages unless all are there already (apt-get update is slow emulated)
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && { log "apt packages present: $*"; return 0; }
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
  rm -rf /var/lib/apt/lists/*
}

# word-splitting of the pin lists is intended below
# shellcheck disable=SC2086
pip_install() {
  if [ -n "${VESSEL_EDGE_WHEELHOUSE:-}" ]; then
    vpip install --no-cache-dir --no-index --find-links "$VESSEL_EDGE_WHEELHOUSE" "$@"
  else
    vpip install --no-cache-dir --only-binary=:all: "$@"
  fi
}

install_project() {
  # setuptools builds the pure-Python project wheel, then leaves (the device does not need it)
  # shellcheck disable=SC2086
  pip_install $DEVICE_BUILD_PIP
  vpip install --no-cache-dir --no-deps --no-build-isolation --force-reinstall "$SRC"
  vpip uninstall -y -q setuptools wheel
}

slim() {
  local site
  site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  log "slimming TVM to its runtime: removing libtvm_compiler.so, 3rdparty/, include/, src/ from $site/tvm"
  rm -rf "$site/tvm/lib/libtvm_compiler.so" "$site/tvm/3rdparty" "$site/tvm/include" "$site/tvm/src"
  log "removing the test suites the wheels ship ($site/*/**/tests)"
  find "$site" -mindepth 2 -type d -name tests -prune -exec rm -rf {} +
}

check_runtime() {
  # What edge-run and the RPC server need: the runtime library alone, the Relax VM, module loading, RPC.
  "$VENV/bin/python" - "$DEVICE_TVM_SLIM" <<'PY'
import sys
import tvm
import tvm.rpc
from tvm.runtime.vm import VirtualMachine  # relax.VirtualMachine is this class
import numpy, PIL, psutil, tqdm  # noqa: F401
import edge
# QEMU 7.2 user mode (docker buildx on an x86 host) shows the host's x86 /proc/cpuinfo, on which ONNX Runtime's
# cpuinfo library crashes at import; a board, and the emulated userland (it binds an A72 text), show an ARM one.
if "CPU implementer" in open("/proc/cpuinfo").read():
    import onnxruntime
    ort = onnxruntime.__version__
else:
    ort = "not imported (non-ARM /proc/cpuinfo: emulated build)"
    print("[device_runtime] notice: skipped importing onnxruntime: /proc/cpuinfo is not an ARM one "
          "(QEMU passes the build host's through), where its import crashes", file=sys.stderr)
slim = sys.argv[1] == "1"
if slim and not tvm.base._RUNTIME_ONLY:
    sys.exit("TVM still loads its compiler library after slimming")
for banned in ("torch", "onnx", "cv2"):
    try:
        __import__(banned)
    except ImportError:
        continue
    sys.exit(f"{banned} is importable in the device runtime; it must not be installed there")
print("runtime check ok: tvm", tvm.__version__, "runtime-only" if tvm.base._RUNTIME_ONLY else "with compiler",
      "| onnxruntime", ort, "| numpy", numpy.__version__, file=sys.stderr)
PY
}

footprint_json() {  # bytes of the venv, and of each top-level entry of site-packages
  "$VENV/bin/python" - "$VENV" <<'PY'
import json, os, sys, sysconfig
venv = sys.argv[1]
def size(p):
    if os.path.islink(p) or os.path.isfile(p):
        return os.lstat(p).st_size
    return sum(os.lstat(os.path.join(d, f)).st_size for d, _, fs in os.walk(p) for f in fs)
site = sysconfig.get_paths()["purelib"]
parts = {e: size(os.path.join(site, e)) for e in os.listdir(site)}
top = dict(sorted(parts.items(), key=lambda kv: -kv[1])[:12])
print(json.dumps({"venv_bytes": size(venv), "site_packages_bytes": sum(parts.values()), "largest": top}))
PY
}

write_provenance() {  # $1 = footprint JSON before slimming, $2 = after
  local tmp="$PROVENANCE.tmp"
  local freeze
  freeze=$(vpip freeze --all)
  "$VENV/bin/python" - "$1" "$2" "$INSTALL_SHA256" "$DEVICE_TVM_SLIM" "${VESSEL_EDGE_WHEELHOUSE:-index}" \
      "$SRC" "$freeze" > "$tmp" <<'PY'
import json, platform, sys, datetime
before, after, sha, slim, source, src, freeze = sys.argv[1:8]
print(json.dumps({
    "install_sha256": sha,
    "install_files": ["docker/install/device_runtime.sh", "docker/install/versions.env"],
    "installed_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "machine": platform.machine(),
    "python": platform.python_version(),
    "tvm_slim": slim == "1",
    "wheels_from": source,
    "project_source": src,
    "packages": freeze.split(),
    "footprint_before_slim": json.loads(before),
    "footprint": json.loads(after),
}, indent=2))
PY
  mv "$tmp" "$PROVENANCE"
}

case "$MODE" in
  system)
    # shellcheck disable=SC2086
    apt_install $DEVICE_APT
    ;;
  project)
    [ -x "$VENV/bin/python" ] || { log "no venv at $VENV: run device_runtime.sh SRC first"; exit 2; }
    install_project
    check_runtime
    ;;
  all)
    # shellcheck disable=SC2086
    apt_install $DEVICE_APT $DEVICE_APT_BUILD
    rm -f "$PROVENANCE"
    rm -rf "$VENV"
    mkdir -p "$DEVICE_PREFIX"
    python3 -m venv --without-pip "$VENV"
    # shellcheck disable=SC2086
    pip_install $DEVICE_PIP
    install_project
    vpip check
    before=$(footprint_json)
    [ "$DEVICE_TVM_SLIM" = 1 ] && slim
    check_runtime
    after=$(footprint_json)
    write_provenance "$before" "$after"
    log "installed into $VENV ($(du -sh "$VENV" | cut -f1)); provenance in $PROVENANCE"
    ;;
esac
