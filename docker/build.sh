#!/bin/bash
# Build one of the vessel-edge images with docker buildx, base images pinned by docker/install/versions.env.
#   device     linux/arm64  edge-run for the RK3399 board (cross-built under QEMU on an x86-64 host)
#   toolchain  linux/amd64  edge-export: torch CPU, ONNX, TVM compiler, aarch64 cross compiler
#   gpu        linux/amd64  edge-bench GPU baselines (CUDA 13)
# Usage: docker/build.sh IMAGE [--tag NAME:TAG] [--push | --load | --output SPEC] [--print] [-- BUILDX_ARGS...]
#   default tag vessel-edge-IMAGE:VERSION (pyproject's version); default output --load (into the local engine)
#   --print   print the buildx command and exit (checks nothing, needs no docker)
# Env: VESSEL_EDGE_BINFMT_DIR  where binfmt_misc is mounted (default /proc/sys/fs/binfmt_misc)
# The platform of each image is the one its Dockerfile fixes in `FROM --platform=...`.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
# shellcheck source=SCRIPTDIR/install/versions.env
source "$HERE/install/versions.env"
IMAGES=(device toolchain gpu)

die() { echo "build.sh: error: $*" >&2; exit 2; }
usage() { sed -n '2,/^set /{/^#/p}' "$0" >&2; exit 2; }

IMAGE=${1:-}
[ -n "$IMAGE" ] || usage
case "$IMAGE" in -h|--help) usage ;; esac
shift
valid=0; for i in "${IMAGES[@]}"; do [ "$i" = "$IMAGE" ] && valid=1; done
[ $valid = 1 ] || die "unknown image '$IMAGE'; choices: ${IMAGES[*]}"

version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$REPO/pyproject.toml" | head -1)
tag="vessel-edge-$IMAGE:${version:-dev}"
output=(--load) print=0 extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) tag=${2:?--tag needs NAME:TAG}; shift 2 ;;
    --push) output=(--push); shift ;;
    --load) output=(--load); shift ;;
    --output) output=(--output "${2:?--output needs a buildx output spec}"); shift 2 ;;
    --print) print=1; shift ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown option '$1' (see docker/build.sh --help)" ;;
  esac
done

dockerfile="$HERE/Dockerfile.$IMAGE"
platform=$(sed -n 's/^FROM --platform=\([^ ]*\) .*/\1/p' "$dockerfile" | sort -u)
[ "$(echo "$platform" | wc -l)" = 1 ] && [ -n "$platform" ] || die "$dockerfile must fix one platform in FROM --platform=..."

# every ARG the Dockerfile declares that versions.env pins is passed from versions.env
build_args=()
for arg in $(sed -n 's/^ARG \([A-Z_][A-Z0-9_]*\)=.*/\1/p' "$dockerfile"); do
  grep -q "^$arg=" "$HERE/install/versions.env" && build_args+=(--build-arg "$arg=${!arg}")
done
cmd=(docker buildx build --platform "$platform" --file "$dockerfile" --tag "$tag" "${build_args[@]}"
     "${output[@]}" "${extra[@]}" "$REPO")
if [ $print = 1 ]; then
  printf '%q ' "${cmd[@]}"; echo
  exit 0
fi

# What a build needs, each with the command that provides it
command -v docker >/dev/null \
  || die "the docker CLI is not on PATH; install Docker Engine + buildx (Debian: sudo apt-get install docker.io docker-buildx; or docker-ce-cli docker-buildx-plugin from download.docker.com)"
docker buildx version >/dev/null 2>&1 \
  || die "docker buildx is missing; install it: sudo apt-get install docker-buildx (or docker-buildx-plugin from download.docker.com)"
docker info >/dev/null 2>&1 \
  || die "no Docker engine answers (docker info failed); start one (sudo systemctl start docker) or point DOCKER_HOST at one"
host_arch=$(uname -m)
binfmt=${VESSEL_EDGE_BINFMT_DIR:-/proc/sys/fs/binfmt_misc}
if [ "$platform" = linux/arm64 ] && [ "$host_arch" != aarch64 ]; then
  if ! grep -qs '^enabled' "$binfmt/qemu-aarch64"; then
    die "building $platform on $host_arch needs QEMU registered with binfmt_misc for arm64; run: docker run --privileged --rm tonistiigi/binfmt --install arm64 (or: sudo apt-get install qemu-user-static binfmt-support && sudo update-binfmts --enable qemu-aarch64)"
  fi
fi
[ -f "$REPO/README.md" ] || die "README.md is missing: the images COPY it (pyproject names it as readme)"
echo "[build.sh] ${cmd[*]}" >&2
exec "${cmd[@]}"
