#!/usr/bin/env bash
# The main job on the bundled example, from nothing: environment, synthetic CARE-like data grown
# from the bundled real MRI (12 training cases of which 3 labelled, 3 test cases), the
# semi-supervised loop (atlas pseudo labels, then nnU-Net rounds on the CPU profile, exported with
# a manifest), the container entrypoint on the test input (GED4 by the SSL nnU-Net, T1 by the atlas
# fallback from the exported supports), then the challenge metrics and an overlay montage.
# Run it again and every finished step is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
PY=.venv/bin/python
RUN=runs/demo   # configs/demo-cpu.toml points here
started=$(date +%s)

mkdir -p "$RUN"
echo "== 1/4 example data -> $RUN/data"
$PY -m sslmedsam2 make-example --out "$RUN/data" --cases 12 --test-cases 3 --labelled-per-vendor 1 \
    --seed 0 --quiet
echo "== 2/4 semi-supervised loop (configs/demo-cpu.toml) -> $RUN/ssl, weights -> $RUN/weights"
$PY -m sslmedsam2 train --config configs/demo-cpu.toml --run "$RUN/ssl" --weights "$RUN/weights"
echo "== 3/4 process.py on the test input -> $RUN/output (GED4: SSL nnU-Net, T1: atlas fallback)"
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
echo "per-round table: $RUN/ssl/report/rounds.csv (montages beside it)"
echo "results: $RUN/results.csv, picture: $RUN/montage_$case.png, masks: $RUN/output/LiSeg_pred"
echo "demo finished in $(( ($(date +%s) - started) / 60 )) min (after setup)"
