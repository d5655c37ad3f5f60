#!/bin/bash
# The Python environment of an x86-64 image or host, pinned by versions.env.
#   export  what edge-export needs: torch (CPU build), onnx, onnxsim, onnxruntime, the TVM compiler
#   gpu     what edge-bench needs for GPU baselines: torch (PyPI's CUDA 13 build), TVM (CUDA runtime inside),
#           onnxruntime, plotting
# Usage: host_python.sh PROFILE VENV SRC     (creates VENV when missing; SRC = the project source directory)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=SCRIPTDIR/versions.env
source "$HERE/versions.env"
PROFILE=${1:?usage: host_python.sh export|gpu VENV SRC}
VENV=${2:?usage: host_python.sh PROFILE VENV SRC}
SRC=${3:?usage: host_python.sh PROFILE VENV SRC}
[ -f "$SRC/pyproject.toml" ] || { echo "host_python.sh: $SRC has no pyproject.toml" >&2; exit 2; }

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
pip=("$VENV/bin/pip" install --no-cache-dir)
# word-splitting of the pin lists is intended below
# shellcheck disable=SC2086
case "$PROFILE" in
  export)
    "${pip[@]}" "torch==$TORCH_VERSION" --index-url "$TORCH_CPU_INDEX"
    "${pip[@]}" $TVM_PIP $EXPORT_PIP
    "${pip[@]}" --no-deps "$SRC"
    ;;
  gpu)
    "${pip[@]}" "torch==$TORCH_VERSION"
    "${pip[@]}" $TVM_PIP $EXPORT_PIP $BENCH_PIP
    "${pip[@]}" --no-deps "$SRC"
    ;;
  *) echo "host_python.sh: unknown profile '$PROFILE'; choices: export gpu" >&2; exit 2 ;;
esac
"$VENV/bin/pip" check
