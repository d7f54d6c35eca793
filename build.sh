#!/usr/bin/env bash
# Build the sslmedsam2 container image.
#
#   ./build.sh [--train] [extra docker build options, e.g. --no-cache]
#
# --train also builds the training image (Dockerfile.train) on top of the inference image.
# Environment: IMAGE (default sslmedsam2:latest), TRAIN_IMAGE (default sslmedsam2-train:latest),
# PLATFORM (default linux/amd64: what Grand Challenge and the CARE organisers run, also when
# building on an ARM laptop).
set -euo pipefail

# Build from the repository root whatever the caller's working directory.
cd "$(dirname "${BASH_SOURCE[0]}")"

IMAGE="${IMAGE:-sslmedsam2:latest}"
TRAIN_IMAGE="${TRAIN_IMAGE:-sslmedsam2-train:latest}"
PLATFORM="${PLATFORM:-linux/amd64}"

train=0
build_args=()
for arg in "$@"; do
    if [ "$arg" = "--train" ]; then train=1; else build_args+=("$arg"); fi
done

# Fail early and clearly: without a reachable engine `docker build` prints a long, obscure error.
if ! command -v docker >/dev/null 2>&1; then
    echo "build.sh: the docker command is not installed; install Docker to build $IMAGE." >&2
    exit 1
fi
if ! docker_error=$(docker info 2>&1 >/dev/null); then
    echo "build.sh: cannot reach the Docker engine ('docker info' failed), so $IMAGE cannot be built here." >&2
    echo "build.sh: start the Docker daemon (or set DOCKER_HOST), or build on a machine that has one." >&2
    [ -n "$docker_error" ] && printf 'build.sh: docker said: %s\n' "$docker_error" | tail -n 3 >&2
    exit 1
fi

echo "build.sh: building $IMAGE for $PLATFORM from $(pwd)"
docker build --platform "$PLATFORM" -t "$IMAGE" ${build_args[@]+"${build_args[@]}"} .
echo "build.sh: built $IMAGE; next: ./test.sh, then ./export.sh"
if [ "$train" = 1 ]; then
    echo "build.sh: building $TRAIN_IMAGE on top of $IMAGE"
    docker build --platform "$PLATFORM" -f Dockerfile.train --build-arg "BASE_IMAGE=$IMAGE" \
        -t "$TRAIN_IMAGE" ${build_args[@]+"${build_args[@]}"} .
    echo "build.sh: built $TRAIN_IMAGE; run it with /data (CARE training root) and /output mounted"
fi
