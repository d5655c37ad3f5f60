#!/usr/bin/env bash
# One command for a fresh Debian/Ubuntu host: system packages (apt-get, needs root or sudo), the project's
# virtualenv (.venv), the emulated arm64 RK3399 userland (cached in ~/.cache/vessel-edge), then the demo:
# export M2U-Net for arm64 and x86_64, segment a real fundus image (on the host and inside the arm64
# userland), and write a latency report. Idempotent: a second run only re-does what is missing.
#   bash docker/install/setup.sh             # everything + demo
#   bash docker/install/setup.sh --no-demo   # everything the tests need (what .ci/run calls)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
# shellcheck source=docker/install/versions.env
. "$here/versions.env"
demo=1
[[ "${1:-}" == "--no-demo" ]] && demo=0

say() { printf '[setup] %s\n' "$*" >&2; }
SUDO=""
[[ $(id -u) -ne 0 ]] && SUDO="sudo"

# 1. System packages: Python, the aarch64 cross compiler, QEMU user-mode + debootstrap, Chromium (report test).
pkgs="$HOST_APT_BASE $HOST_APT_CROSS $HOST_APT_EMULATION $HOST_APT_REPORT"
missing=""
for p in $pkgs; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"; done
if [[ -n "$missing" ]]; then
  say "installing system packages:$missing"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends $missing
fi

# 2. The virtualenv with the whole toolchain (torch 2.13.0 CPU build, onnx, onnxsim, onnxruntime, TVM 0.27).
cd "$root"
if [[ ! -x .venv/bin/python ]]; then
  say "creating .venv"
  python3 -m venv .venv
fi
stamp=.venv/.vessel-edge-installed
want="$(sha256sum pyproject.toml | cut -c1-16)"
if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]] ||
   ! .venv/bin/python -c "import torch, onnx, onnxsim, onnxruntime, tvm, cv2, skimage, models, edge, export" 2>/dev/null; then
  say "installing the project into .venv (pip install -e '.[dev]')"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[dev]"
  echo "$want" > "$stamp"
fi

# 3. The emulated RK3399 userland (arm64 Debian under QEMU user-mode), provisioned by the device image's script.
if [[ -x "$root/docker/arm64-userland.sh" ]]; then
  bash "$root/docker/arm64-userland.sh" build
fi

[[ $demo -eq 1 ]] || { say "ready (no demo asked)"; exit 0; }

# 4. The demo on embedded defaults.
export PATH="$root/.venv/bin:$PATH"
out="$root/out/demo"
mkdir -p "$out"
say "exporting M2U-Net for the RK3399 (arm64) and for this host (x86_64)"
edge-export m2unet --target arm64 --out "$root/packages/m2unet-arm64" --force
edge-export m2unet --target x86_64 --out "$root/packages/m2unet-x86_64" --force
python -c "import cv2, skimage.data as d; cv2.imwrite('$out/retina.png', d.retina()[:, :, ::-1])"
say "segmenting a real fundus photograph (scikit-image retina, CC0) on this host"
edge-run "$out/retina.png" --package "$root/packages/m2unet-x86_64" -o "$out/host" --overlay
if [[ -x "$root/docker/arm64-userland.sh" ]]; then
  say "segmenting it again inside the emulated arm64 userland with the aarch64 package"
  bash "$root/docker/arm64-userland.sh" run -- edge-run "$out/retina.png" --package "$root/packages/m2unet-arm64" -o "$out/arm64"
fi
say "benchmarking PyTorch, ONNX Runtime and TVM at 544x544 (report in $out/bench)"
edge-bench m2unet --sizes 544 --backends torch,onnxruntime,tvm -o "$out/bench"
say "done: outputs in $out"
