#!/bin/bash
# apt packages of the x86-64 host (and of docker/Dockerfile.toolchain), by group; versions.env names them.
#   base       python3, venv, git, CA certificates
#   cross      g++-aarch64-linux-gnu: links TVM libraries for the RK3399 (edge-export --target arm64)
#   emulation  qemu-user-static, binfmt-support, debootstrap: the emulated RK3399 userland
#   report     chromium: renders benchmark reports to PDF/PNG in the report tests
# Usage (root): host_toolchain.sh [GROUP...]   (no group = all). Installs only what is missing: a second run
# does no apt-get update and returns at once. Images delete /var/lib/apt/lists themselves.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=SCRIPTDIR/versions.env
source "$HERE/versions.env"

groups=("$@")
[ ${#groups[@]} -eq 0 ] && groups=(base cross emulation report)
packages=()
for g in "${groups[@]}"; do
  # the package lists are split into words on purpose
  # shellcheck disable=SC2206
  case "$g" in
    base) packages+=($HOST_APT_BASE) ;;
    cross) packages+=($HOST_APT_CROSS) ;;
    emulation) packages+=($HOST_APT_EMULATION) ;;
    report) packages+=($HOST_APT_REPORT) ;;
    *) echo "host_toolchain.sh: unknown group '$g'; choices: base cross emulation report" >&2; exit 2 ;;
  esac
done

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "[host_toolchain] present: ${packages[*]}" >&2
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "host_toolchain.sh: missing ${missing[*]}; install them as root: sudo apt-get install ${missing[*]}" >&2
  exit 2
fi
echo "[host_toolchain] apt-get install ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
