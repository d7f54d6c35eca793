#!/usr/bin/env bash
# Export what a challenge submission uploads:
#   sslmedsam2.tar.gz  the image (docker save | gzip), for Grand Challenge or the CARE organisers
#   model.tar.gz       the contents of weights/ at the archive root: Grand Challenge unpacks it to
#                      /opt/ml/model, where process.py looks before the weights baked into the image
#
#   ./export.sh                  both
#   ./export.sh --weights-only   only model.tar.gz (needs no Docker)
#   ./export.sh --image-only     only sslmedsam2.tar.gz
#   ./export.sh --train-image    only sslmedsam2-train.tar.gz (the training image, ./build.sh --train)
#
# Environment: IMAGE (default sslmedsam2:latest), TRAIN_IMAGE (default sslmedsam2-train:latest), WEIGHTS_DIR (default weights), OUT_DIR (default
# the repository root). Each archive is written under a temporary name and renamed when complete,
# so an interrupted export never leaves a truncated archive behind under the final name.
set -euo pipefail

# Needs bash >= 4.4 (mapfile; empty arrays under set -u). macOS: brew install bash.
((BASH_VERSINFO[0] * 100 + BASH_VERSINFO[1] >= 404)) || { echo "export.sh: needs bash >= 4.4 (this is $BASH_VERSION)" >&2; exit 1; }

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

cd "$(dirname "${BASH_SOURCE[0]}")"
IMAGE="${IMAGE:-sslmedsam2:latest}"
TRAIN_IMAGE="${TRAIN_IMAGE:-sslmedsam2-train:latest}"
WEIGHTS_DIR="${WEIGHTS_DIR:-weights}"
OUT_DIR="${OUT_DIR:-.}"

do_image=1
do_weights=1
ARCHIVE=sslmedsam2.tar.gz
for arg in "$@"; do
    case "$arg" in
        --weights-only) do_image=0 ;;
        --image-only) do_weights=0 ;;
        --train-image) do_weights=0; IMAGE="$TRAIN_IMAGE"; ARCHIVE=sslmedsam2-train.tar.gz ;;
        -h|--help) usage; exit 0 ;;
        *) echo "export.sh: unknown option '$arg'" >&2; usage >&2; exit 2 ;;
    esac
done
if [ "$do_image" = 0 ] && [ "$do_weights" = 0 ]; then
    echo "export.sh: --weights-only and --image-only together leave nothing to do" >&2
    exit 2
fi

mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd -P)"

# Temporary files of this run, removed on any exit; a finished archive is renamed out of this list.
tmp_files=()
cleanup() { [ "${#tmp_files[@]}" -eq 0 ] || rm -f -- "${tmp_files[@]}"; }
trap cleanup EXIT

new_tmp() {  # new_tmp NAME -> a hidden temporary file beside OUT_DIR/NAME (same file system: atomic mv)
    local tmp
    tmp="$(mktemp "$OUT_DIR/.$1.XXXXXX")"
    tmp_files+=("$tmp")
    echo "$tmp"
}

publish() {  # publish TMP NAME: make the finished archive readable like a normal file and rename it
    chmod 644 "$1"
    mv -f -- "$1" "$OUT_DIR/$2"
    echo "export.sh: wrote $OUT_DIR/$2 ($(du -h "$OUT_DIR/$2" | cut -f1))"
}

export_weights() {
    if [ ! -d "$WEIGHTS_DIR" ]; then
        echo "export.sh: weights folder '$WEIGHTS_DIR' does not exist (set WEIGHTS_DIR; see weights/README.md)" >&2
        exit 1
    fi
    local weights_abs
    weights_abs="$(cd "$WEIGHTS_DIR" && pwd -P)"
    case "$OUT_DIR/" in
        "$weights_abs"/*)
            echo "export.sh: OUT_DIR ($OUT_DIR) is inside WEIGHTS_DIR ($weights_abs): the archive would contain itself" >&2
            exit 1 ;;
    esac
    # The folder's entries by name (dot-files too), so members sit at the archive root ("nnunet/...",
    # not "./nnunet/..." or "weights/nnunet/...").
    local entries
    mapfile -t entries < <(cd "$weights_abs" && shopt -s dotglob nullglob && for e in *; do echo "$e"; done)
    if [ "${#entries[@]}" -eq 0 ]; then
        echo "export.sh: weights folder '$WEIGHTS_DIR' is empty: nothing to put in model.tar.gz" >&2
        exit 1
    fi
    if [ -z "$(find "$weights_abs" -type f \( -name '*.pth' -o -name '*.pt' \) -print -quit)" ]; then
        echo "export.sh: warning: no *.pth / *.pt checkpoint under '$WEIGHTS_DIR'; model.tar.gz will hold no model" >&2
    fi
    local tmp
    tmp="$(new_tmp model.tar.gz)"
    tar -C "$weights_abs" -czf "$tmp" -- "${entries[@]}"
    publish "$tmp" model.tar.gz
}

export_image() {
    local tmp
    tmp="$(new_tmp "$ARCHIVE")"
    echo "export.sh: saving $IMAGE (several GB; this takes a few minutes)"
    # pipefail (set above) makes a failing `docker save` fail the export, not just gzip.
    docker save "$IMAGE" | gzip -c > "$tmp"
    publish "$tmp" "$ARCHIVE"
}

# Check Docker before writing anything, so a missing engine does not leave half an export.
if [ "$do_image" = 1 ]; then
    if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then
        echo "export.sh: cannot reach the Docker engine ('docker info' failed); run on a machine with Docker," >&2
        echo "export.sh: or use --weights-only to export model.tar.gz alone." >&2
        exit 1
    fi
    if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
        echo "export.sh: image $IMAGE not found; build it first with ./build.sh (or set IMAGE)" >&2
        exit 1
    fi
fi

[ "$do_weights" = 0 ] || export_weights
[ "$do_image" = 0 ] || export_image
