#!/usr/bin/env bash
# Run the container on the test input the way the CARE organisers / Grand Challenge do (no network,
# read-only input, non-root, limited memory), then check that every expected case has its mask and
# that the masks match the ground truth. Unlike the old evalutils test.sh, any failed run, missing
# output, off-grid mask or Dice below MIN_DICE makes this script exit non-zero.
#
#   ./test.sh                  docker run the image (build it first: ./build.sh)
#   ./test.sh --no-docker      run process.py with this machine's Python (.venv/bin/python, else python3)
#   ./test.sh --keep           keep the output folder and print its path
#   ./test.sh [...] -- ARGS    pass ARGS on to process.py, e.g. ./test.sh -- --fast
#
# Environment:
#   IMAGE               image to test (default sslmedsam2:latest)
#   MIN_DICE            smallest acceptable Dice per mask (default 0.5)
#   INPUT_DIR, GT_DIR   test data (default tests/container/input, tests/container/ground_truth)
#   SSLMEDSAM2_WEIGHTS  --no-docker only: weights folder (default weights)
#   MODEL_DIR           docker only: a folder to mount at /opt/ml/model, as Grand Challenge does with
#                       model.tar.gz (default: none, the image's baked-in weights are used)
#   GPUS                docker only: value for --gpus ('all', ...) or 'none'; default: 'all' when the
#                       engine has the nvidia runtime, else none
#   MEMORY              docker only: memory limit (default 16g, no swap on top)
set -euo pipefail

# Needs bash >= 4.4 (mapfile; empty arrays under set -u). macOS: brew install bash.
((BASH_VERSINFO[0] * 100 + BASH_VERSINFO[1] >= 404)) || { echo "test.sh: needs bash >= 4.4 (this is $BASH_VERSION)" >&2; exit 1; }

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
say() { echo "test.sh: $*"; }
fail() { echo "test.sh: ERROR: $*" >&2; exit 1; }

cd "$(dirname "${BASH_SOURCE[0]}")"
IMAGE="${IMAGE:-sslmedsam2:latest}"
MIN_DICE="${MIN_DICE:-0.5}"
INPUT_DIR="${INPUT_DIR:-tests/container/input}"
GT_DIR="${GT_DIR:-tests/container/ground_truth}"
MEMORY="${MEMORY:-16g}"

use_docker=1
keep=0
extra_args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --no-docker) use_docker=0 ;;
        --keep) keep=1 ;;
        -h|--help) usage; exit 0 ;;
        --) shift; extra_args=("$@"); break ;;
        *) echo "test.sh: unknown option '$1' (process.py options go after --)" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

# --- Test data: say how to make it rather than fail obscurely later. ---------------------------------
for pair in "input:$INPUT_DIR" "ground truth:$GT_DIR"; do
    what="${pair%%:*}" dir="${pair#*:}"
    if [ ! -d "$dir" ] || [ -z "$(ls -A "$dir")" ]; then
        fail "no test $what in '$dir'.
  Create the example test set (CARE layout: input/Vendor_X/<case>/GED4.nii.gz + info.csv, and
  ground_truth/Vendor_X/<case>/mask_GED4.nii.gz) with the package's generator, see
      python -m sslmedsam2 make-example --help
  or point INPUT_DIR and GT_DIR at your own data."
    fi
done
INPUT_DIR="$(cd "$INPUT_DIR" && pwd -P)"
GT_DIR="$(cd "$GT_DIR" && pwd -P)"

# Expected outputs (CARE: <out>/LiSeg_pred/<case>/<SEQ>_pred.nii.gz): one per ground-truth mask
# (<gt>/**/<case>/mask_<SEQ>.nii.gz) and a GED4 mask for every input case (CARE requires it).
mapfile -t expected < <({
    find "$GT_DIR" -type f -name 'mask_*.nii.gz' | while read -r f; do
        seq="$(basename "$f" .nii.gz)"
        echo "LiSeg_pred/$(basename "$(dirname "$f")")/${seq#mask_}_pred.nii.gz"
    done
    find "$INPUT_DIR" -type f -name 'GED4.nii.gz' | while read -r f; do
        echo "LiSeg_pred/$(basename "$(dirname "$f")")/GED4_pred.nii.gz"
    done
} | sort -u)
if [ "${#expected[@]}" -eq 0 ]; then
    fail "found no mask_<SEQ>.nii.gz under $GT_DIR and no GED4.nii.gz under $INPUT_DIR: not a CARE-layout test set"
fi
say "${#expected[@]} expected output masks (input $INPUT_DIR, ground truth $GT_DIR)"

# --- Docker checks before creating anything. ------------------------------------------------------------
if [ "$use_docker" = 1 ]; then
    if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then
        fail "cannot reach the Docker engine ('docker info' failed). Start it, or test without Docker: ./test.sh --no-docker"
    fi
    docker image inspect "$IMAGE" >/dev/null 2>&1 || fail "image $IMAGE not found; build it first: ./build.sh"
    gpu_args=()
    gpus="${GPUS:-auto}"
    if [ "$gpus" = auto ]; then
        case "$(docker info --format '{{range $name, $_ := .Runtimes}}{{$name}} {{end}}')" in
            *nvidia*) gpus=all ;;
            *) gpus=none ;;
        esac
    fi
    [ "$gpus" = none ] || gpu_args=(--gpus "$gpus")
    say "GPUs: $gpus"
fi

# --- A fresh work folder: output/ (the predictions), results.csv (the evaluation). ------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/sslmedsam2-test.XXXXXX")"
OUT="$WORK/output"
mkdir -p "$OUT"

cleanup() {
    if [ "$keep" = 1 ]; then
        say "kept the outputs in $WORK (predictions in $OUT, metrics in $WORK/results.csv)"
        return
    fi
    # Files written by the container belong to uid 1000; if that is not us (nor root), delete them
    # from inside a container running as that user.
    if ! rm -rf "$WORK" 2>/dev/null && [ "$use_docker" = 1 ]; then
        docker run --rm --network none --user 1000:1000 -v "$WORK:/work" --entrypoint find "$IMAGE" \
            /work -mindepth 1 -user 1000 -delete >/dev/null 2>&1 || true
        rm -rf "$WORK" 2>/dev/null || true
    fi
    [ ! -e "$WORK" ] || echo "test.sh: could not remove $WORK; delete it by hand" >&2
}
trap cleanup EXIT

run_rc=0
eval_rc=0
if [ "$use_docker" = 1 ]; then
    # The container user (uid 1000) must be able to write the output folder, as on the platforms.
    chmod 777 "$WORK" "$OUT"
    model_args=()
    if [ -n "${MODEL_DIR:-}" ]; then
        model_args=(-v "$(cd "$MODEL_DIR" && pwd -P):/opt/ml/model:ro")
    fi
    # As the organisers run it: no network, read-only input. On top, what Grand Challenge enforces:
    # non-root, no capabilities, a memory limit with no swap, only /output and /tmp writable.
    # /dev/shm keeps Docker's 64 MB default on purpose: the organisers' command does not raise it.
    run_cmd=(docker run --rm --network none
        --memory="$MEMORY" --memory-swap="$MEMORY"
        --cap-drop=ALL --security-opt=no-new-privileges
        --user 1000:1000 --read-only --tmpfs /tmp
        "${gpu_args[@]}"
        -v "$INPUT_DIR:/input:ro" -v "$OUT:/output" "${model_args[@]}"
        "$IMAGE" "${extra_args[@]}")
    eval_cmd=(docker run --rm --network none --cap-drop=ALL --security-opt=no-new-privileges
        --user 1000:1000 --read-only --tmpfs /tmp
        -v "$OUT:/pred:ro" -v "$GT_DIR:/gt:ro" -v "$WORK:/work"
        --entrypoint python "$IMAGE"
        -m sslmedsam2 evaluate --pred /pred --gt /gt --out /work/results.csv --min-dice "$MIN_DICE")
else
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
    [ -f process.py ] || fail "process.py (the entrypoint) not found in $(pwd)"
    # Like the container: no network when this machine allows it (unshare -n works as root).
    netns=()
    if command -v unshare >/dev/null 2>&1 && unshare -n true 2>/dev/null; then
        netns=(unshare -n)
        say "running without network (unshare -n)"
    fi
    run_cmd=("${netns[@]}" "$PY" process.py --input "$INPUT_DIR" --output "$OUT"
        --weights "${SSLMEDSAM2_WEIGHTS:-weights}" "${extra_args[@]}")
    eval_cmd=("$PY" -m sslmedsam2 evaluate --pred "$OUT" --gt "$GT_DIR" --out "$WORK/results.csv"
        --min-dice "$MIN_DICE")
fi

# --- 1. Segment. A failure here is recorded, and the checks still run to show which cases failed. ---------
say "running: ${run_cmd[*]}"
"${run_cmd[@]}" || run_rc=$?
[ "$run_rc" = 0 ] || echo "test.sh: the segmentation run exited with code $run_rc" >&2

# --- 2. Every expected mask is there. ----------------------------------------------------------------------
missing=()
for rel in "${expected[@]}"; do
    [ -s "$OUT/$rel" ] || missing+=("$rel")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "test.sh: ${#missing[@]} of ${#expected[@]} expected masks are missing:" >&2
    printf '  %s\n' "${missing[@]}" >&2
else
    say "all ${#expected[@]} expected masks were written"
fi

# --- 3. Compare with the ground truth (grid, Dice >= MIN_DICE; HD and HD95 reported). -----------------------
say "evaluating: ${eval_cmd[*]}"
"${eval_cmd[@]}" || eval_rc=$?
[ "$eval_rc" = 0 ] || echo "test.sh: the evaluation exited with code $eval_rc (see its messages above)" >&2

if [ "$run_rc" != 0 ] || [ "${#missing[@]}" -gt 0 ] || [ "$eval_rc" != 0 ]; then
    echo "test.sh: FAILED (run exit $run_rc, ${#missing[@]} missing masks, evaluation exit $eval_rc)" >&2
    exit 1
fi
say "PASSED: ${#expected[@]} masks, each Dice >= $MIN_DICE"
