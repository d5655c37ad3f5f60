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
demo=1
[[ "${1:-}" == "--no-demo" ]] && demo=0

say() { printf '[setup] %s\n' "$*" >&2; }
SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi

# 1. System packages: Python, the aarch64 cross compiler, QEMU user-mode + debootstrap, Chromium (report test).
#    host_toolchain.sh installs only what is missing (the toolchain Dockerfile runs the same script).
$SUDO bash "$here/host_toolchain.sh"

# 2. The virtualenv with the whole toolchain (torch 2.13.0 CPU build, onnx, onnxsim, onnxruntime, TVM 0.27).
cd "$root"
if [[ ! -x .venv/bin/python ]]; then
  say "creating .venv"
  python3 -m venv .venv
fi
stamp=.venv/.vessel-edge-installed
want="$(sha256sum pyproject.toml | cut -c1-16)"
if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]] ||
   ! .venv/bin/python -c "import torch, onnx, onnxsim, onnxruntime, tvm, cv2, skimage, ncnn, MNN, ai_edge_litert, models, edge, export" 2>/dev/null; then
  say "installing the project into .venv (pip install -e '.[dev]')"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[dev]"
  echo "$want" > "$stamp"
fi

# 2b. onnx2tf (ONNX -> TFLite, for the LiteRT XNNPACK peer of edge-bench) in its own venv: TensorFlow's pins clash
#     with TVM's. Pinned by versions.env; redone when that line changes.
# shellcheck source=SCRIPTDIR/versions.env
source "$here/versions.env"
tf_stamp=.venv-onnx2tf/.vessel-edge-installed
tf_want="$(printf '%s' "$ONNX2TF_PIP" | sha256sum | cut -c1-16)"
if [[ "$(cat "$tf_stamp" 2>/dev/null)" != "$tf_want" ]] || [[ ! -x .venv-onnx2tf/bin/onnx2tf ]]; then
  say "installing onnx2tf into .venv-onnx2tf (the TFLite converter; ~1.4 GB with TensorFlow)"
  [[ -x .venv-onnx2tf/bin/python ]] || python3 -m venv .venv-onnx2tf
  # word-splitting of the pin list is intended
  # shellcheck disable=SC2086
  .venv-onnx2tf/bin/python -m pip install -q $ONNX2TF_PIP
  echo "$tf_want" > "$tf_stamp"
fi

# 3. The emulated RK3399 userland (arm64 Debian under QEMU user-mode), provisioned by the device image's script.
$SUDO bash "$root/docker/arm64-userland.sh" build

[[ $demo -eq 1 ]] || { say "ready (no demo asked)"; exit 0; }

# 4. The demo on embedded defaults.
export PATH="$root/.venv/bin:$PATH"
out="$root/out/demo"
mkdir -p "$out"
# The authors' published DRIVE checkpoint when ../shared holds it; else the project's default (announced).
weights=()
drive="$root/../shared/models/m2unet/M2UNetDRIVE.pth"
[[ -f "$drive" ]] && weights=(--weights "$drive")
say "exporting M2U-Net for the RK3399 (arm64) and for this host (x86_64)"
edge-export m2unet --target arm64 "${weights[@]}" --out "$root/packages/m2unet-arm64" --force
edge-export m2unet --target x86_64 "${weights[@]}" --out "$root/packages/m2unet-x86_64" --force
python -c "import cv2, skimage.data as d; cv2.imwrite('$out/retina.png', d.retina()[:, :, ::-1])"
say "segmenting a real fundus photograph (scikit-image retina, CC0) on this host"
edge-run "$out/retina.png" --package "$root/packages/m2unet-x86_64" -o "$out/host" --overlay
say "segmenting it again inside the emulated arm64 userland (QEMU) with the aarch64 package"
$SUDO bash "$root/docker/arm64-userland.sh" run -- edge-run "$out/retina.png" --package "$root/packages/m2unet-arm64" \
  -o "$out/arm64"
say "benchmarking PyTorch, ONNX Runtime, OpenVINO, ncnn, MNN, LiteRT XNNPACK and TVM at 544x544, interleaved (report in $out/bench)"
edge-bench m2unet --sizes 544 --backends torch,onnxruntime,openvino,ncnn,mnn,tflite,tvm --interleave "${weights[@]}" -o "$out/bench"
say "done: outputs in $out"
