#!/usr/bin/env bash
# The main job on the bundled example, from nothing: environment, synthetic CARE-like data grown
# from the bundled real MRI, a quick CPU nnU-Net on the labelled cases, the container entrypoint on
# the test input (GED4 by nnU-Net, T1 by the atlas fallback), then the challenge metrics and an
# overlay montage.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
PY=.venv/bin/python
RUN=${RUN_DIR:-runs/demo}
PROFILE=${PROFILE:-cpu-quick}

mkdir -p "$RUN"
echo "== 1/4 example data -> $RUN/data"
$PY -m sslmedsam2 make-example --out "$RUN/data" --cases 9 --test-cases 3 --seed 0
echo "== 2/4 nnU-Net ($PROFILE) on the labelled cases -> $RUN/weights"
$PY -m sslmedsam2 train --data "$RUN/data/train" --weights "$RUN/weights" --work "$RUN/nnunet" \
    --profile "$PROFILE"
# The labelled cases also serve as supports: sequences without an nnU-Net model (T1 here) are
# segmented few-shot from them by the atlas engine.
rm -rf "$RUN/weights/supports"
for mask in "$RUN"/data/train/*/*/mask_GED4.nii.gz; do
    case_dir=$(dirname "$mask")
    mkdir -p "$RUN/weights/supports/$(basename "$case_dir")"
    cp "$case_dir/GED4.nii.gz" "$mask" "$RUN/weights/supports/$(basename "$case_dir")/"
done
echo "== 3/4 process.py on the test input -> $RUN/output (GED4: nnU-Net, T1: atlas fallback)"
rm -rf "$RUN/output"
$PY process.py --input "$RUN/data/test/input" --output "$RUN/output" --weights "$RUN/weights"
echo "== 4/4 evaluation against the ground truth"
$PY -m sslmedsam2 evaluate --pred "$RUN/output" --gt "$RUN/data/ground_truth/test" \
    --sequences GED4,T1 --out "$RUN/results.csv" --quiet
case_dir=$(find "$RUN/data/test/input" -mindepth 2 -maxdepth 2 -type d | sort | head -n 1)
case=$(basename "$case_dir")
$PY -m sslmedsam2 montage --image "$case_dir/GED4.nii.gz" \
    --mask "prediction=$RUN/output/LiSeg_pred/$case/GED4_pred.nii.gz" \
    --mask "ground truth=$(find "$RUN/data/ground_truth/test" -path "*/$case/mask_GED4.nii.gz")" \
    --out "$RUN/montage_$case.png" --title "$case GED4"
echo "results: $RUN/results.csv, picture: $RUN/montage_$case.png, masks: $RUN/output/LiSeg_pred"
