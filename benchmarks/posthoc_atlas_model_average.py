"""Post hoc: would averaging round 0's atlas with the final model, at prediction, score more?

Reads the run folders that ``bench_ssl_real.py`` leaves (``--work``); trains and registers
nothing. Per held-out patient each step keeps its mask and the binary entropy of its liver
probability, from which the probability follows (the entropy gives its distance from 0.5, the
mask its side; reconstructed, not the engines' own). Prints, per fold, the held-out Dice of the
atlas, the final model, their averaged probability thresholded at 0.5, and the masks'
intersection. The held-out patients are the ones the benchmark scores: a lead to test on a fresh
split, never a figure to choose a default by.

    python benchmarks/posthoc_atlas_model_average.py --work /work/bench/ssl60 --labels 1 [--json F]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from sslmedsam2.evaluation.metrics import compute_metrics
from sslmedsam2.postprocess import binary_entropy

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "chaos-mr-t2"
SEQUENCE = "T2SPIR"
#: p in (0, 0.5] against its binary entropy, for inverting the stored uncertainty maps
_P = np.linspace(1e-6, 0.5, 4001)
_ENTROPY = binary_entropy(_P)


def probability(mask: np.ndarray, entropy: np.ndarray) -> np.ndarray:
    """The liver probability a mask and its binary-entropy map imply."""
    distance = np.interp(np.clip(entropy, 0.0, 1.0), _ENTROPY, _P)
    return np.where(mask, 1.0 - distance, distance)


def read_step(folder: Path, case: str) -> tuple[np.ndarray, np.ndarray]:
    """A held-out patient's mask and implied probability from one step's ``holdout`` folder."""
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / case / f"{SEQUENCE}.nii.gz"))) > 0
    entropy = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / case / f"{SEQUENCE}_uncertainty.nii.gz")))
    return mask, probability(mask, entropy.astype(np.float32))


def final_holdout(run: Path) -> Path:
    """The final step's held-out predictions: its own, or those of the round it reuses."""
    step = json.loads((run / "final" / "step.json").read_text())
    own = run / "final" / "holdout"
    return own if own.is_dir() else run / step["based_on"] / "holdout"


def score_fold(run: Path, data: Path) -> dict[str, dict[str, float]]:
    """Per held-out patient: Dice of the atlas, the final model, their average, their intersection."""
    atlas_dir, final_dir = run / "round_00" / "holdout", final_holdout(run)
    scores: dict[str, dict[str, float]] = {}
    for case in sorted(p.name for p in atlas_dir.iterdir() if p.is_dir()):
        truth_image = sitk.ReadImage(str(data / f"{case}_liver.nii.gz"))
        truth, spacing = sitk.GetArrayFromImage(truth_image) > 0, truth_image.GetSpacing()[::-1]
        (atlas, p_atlas), (final, p_final) = read_step(atlas_dir, case), read_step(final_dir, case)
        candidates = {"atlas": atlas, "final": final, "average": (p_atlas + p_final) / 2 >= 0.5,
                      "intersection": atlas & final}
        scores[case] = {name: round(compute_metrics(mask, truth, spacing).dice, 4)
                        for name, mask in candidates.items()}
    return scores


def main() -> int:
    args = parse_args()
    report: dict[str, dict[str, dict[str, float]]] = {}
    for fold_dir in sorted(args.work.glob("fold*")):
        run = fold_dir / f"ssl_L{args.labels}" / SEQUENCE
        if (run / "final" / "step.json").is_file():
            report[fold_dir.name] = score_fold(run, args.data)
    if not report:
        raise SystemExit(f"{args.work}: no finished ssl_L{args.labels} run under fold*/")
    print(f"| {args.labels} label(s) | atlas | final | average | intersection |\n|---|---|---|---|---|")
    for fold, cases in report.items():
        means = {name: statistics.mean(c[name] for c in cases.values()) for name in next(iter(cases.values()))}
        print(f"| {fold} | " + " | ".join(f"{v:.3f}" for v in means.values()) + " |")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="bench_ssl_real.py's --work folder")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the collection's masks "
                        "(<case>_liver.nii.gz; default: ../shared/data/chaos-mr-t2)")
    parser.add_argument("--labels", type=int, default=1, help="which arm: ssl_L<labels> (default 1)")
    parser.add_argument("--json", type=Path, help="write the per-patient Dice here")
    return parser.parse_args()


if __name__ == "__main__":
    raise SystemExit(main())
