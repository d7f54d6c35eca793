"""Post hoc: could a one-label run have seen that its pseudo labels would not beat labelled-only?

With one labelled patient the export choice has nothing to cross-validate on. A check that needs
no second label would compare, on the unlabelled training patients, round 0's atlas pseudo
labels with what the labelled-only model predicts there. This script measures that agreement
beside what the run could not see: each one's true Dice (the CHAOS collection masks every
patient). It reads the folders ``bench_ssl_real.py`` leaves (``--work``, 1-label arms) and runs
the labelled-only model once per unlabelled patient (about 20 s each on 2 cores); it registers
and trains nothing.

    python benchmarks/posthoc_round0_agreement.py --work /work/bench/seed1 [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from sslmedsam2.engines.base import RuntimeOptions
from sslmedsam2.engines.nnunet import NnUNetEngine
from sslmedsam2.evaluation.metrics import dice
from sslmedsam2.io import read_volume
from sslmedsam2.orientation import segment_in_orientation
from sslmedsam2.postprocess import largest_component

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "chaos-mr-t2"
SEQUENCE = "T2SPIR"


def mask_of(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))) > 0


def score_fold(fold: Path, data: Path) -> dict[str, dict[str, float]]:
    """Per unlabelled training patient: atlas vs labelled-only agreement, and each one's truth."""
    model = NnUNetEngine(fold / "labelled_only_L1" / "weights", RuntimeOptions(device="cpu"))
    model.load(SEQUENCE)
    rows = {}
    for case_dir in sorted((fold / "ssl_L1" / SEQUENCE / "round_00" / "pseudo").glob("chaos_mr_t2_*")):
        case = case_dir.name
        truth = mask_of(data / f"{case}_liver.nii.gz")
        atlas = mask_of(case_dir / f"{SEQUENCE}.nii.gz")
        image = read_volume(data / f"{case}_image.nii.gz")
        predicted = largest_component(segment_in_orientation(model, image, SEQUENCE, None).mask) > 0
        rows[case] = {"agreement": round(dice(atlas, predicted), 4),
                      "atlas_true": round(dice(atlas, truth), 4),
                      "labelled_only_true": round(dice(predicted, truth), 4)}
        figures = "  ".join(f"{k} {v:.3f}" for k, v in rows[case].items())
        print(f"  {fold.name} {case}: {figures}", flush=True)
    return rows


def main() -> int:
    args = parse_args()
    folds = sorted(f for f in args.work.glob("fold*")
                   if (f / "labelled_only_L1" / "weights").is_dir() and (f / "ssl_L1").is_dir())
    if not folds:
        raise SystemExit(f"{args.work}: no fold with labelled_only_L1/weights and ssl_L1")
    report = {fold.name: score_fold(fold, args.data) for fold in folds}
    print("\n| fold | agreement | atlas pseudo labels, true Dice | labelled-only there, true Dice |\n"
          "|---|---|---|---|")
    for name, rows in report.items():
        means = [statistics.mean(r[k] for r in rows.values())
                 for k in ("agreement", "atlas_true", "labelled_only_true")]
        print(f"| {name} | " + " | ".join(f"{m:.3f}" for m in means) + " |")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="bench_ssl_real.py's --work folder")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="the collection, for the true masks (default: %(default)s)")
    parser.add_argument("--json", type=Path, help="write the per-patient figures here")
    return parser.parse_args()


if __name__ == "__main__":
    raise SystemExit(main())
