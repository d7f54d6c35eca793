"""Ways of combining the model and the atlas, scored on saved engine outputs.

``bench_average.py --keep DIR`` saves, per held-out patient, the final model's and the atlas's
liver probabilities and masks. This script combines them by each rule below and prints the
held-out Dice per fold, so a rule can be chosen on some folds and checked on others without
segmenting again. Trains and registers nothing; seconds per patient.

    python benchmarks/bench_average_rules.py DIR [DIR ...] [--json FILE]

Files are named ``<fold>_<case>.npz``; each DIR is one split (e.g. one fold seed).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sslmedsam2.engines.average import SMALLER_FAILED_BELOW, average, on_the_mask_side, organs_alike
from sslmedsam2.engines.base import Segmentation
from sslmedsam2.evaluation.metrics import dice
from sslmedsam2.postprocess import component_most_like, largest_component

Rule = Callable[[Segmentation, Segmentation], np.ndarray]


def weighted(atlas_weight: float) -> Rule:
    """The sided probabilities' weighted mean at one half (0.5: today's average)."""
    def rule(model: Segmentation, atlas: Segmentation) -> np.ndarray:
        mean = ((1 - atlas_weight) * on_the_mask_side(model, atlas.mask)
                + atlas_weight * on_the_mask_side(atlas, model.mask))
        return largest_component(mean >= 0.5)
    return rule


def gated(threshold: float, smaller_failed_below: float = SMALLER_FAILED_BELOW) -> Rule:
    """The average where the two organs agree (Dice >= threshold); where they do not, the
    model's organ alone (``average``'s ``first_alone_below``), or the atlas's where the model's
    is under ``smaller_failed_below`` of its size (0: never)."""
    return lambda model, atlas: average(model, atlas, first_alone_below=threshold,
                                        smaller_failed_below=smaller_failed_below).mask


RULES: dict[str, Rule] = {
    "model, largest": lambda model, atlas: largest_component(model.mask),
    "model, organ by atlas": lambda model, atlas: component_most_like(model.mask, atlas.mask),
    "atlas": lambda model, atlas: largest_component(atlas.mask),
    **{f"average, atlas weight {w}": weighted(w) for w in (0.5, 0.4, 0.3)},
    **{f"gated at {t}": gated(t) for t in (0.7, 0.75, 0.8, 0.85)},
    "gated at 0.7, the model's organ whatever its size": gated(0.7, 0.0),
}


def load(path: Path) -> tuple[Segmentation, Segmentation, np.ndarray, float]:
    """The saved engines, the manual mask and the two organs' agreement, as ``average`` gates on it."""
    saved = np.load(path)
    model, atlas = (Segmentation(saved[f"{e}_mask"], e, None, probability=saved[f"{e}_probability"]
                                 .astype(np.float32)) for e in ("model", "atlas"))
    return model, atlas, saved["truth"] > 0, organs_alike(model.mask, atlas.mask)[1]


def score(folders: list[Path]) -> dict[str, dict[str, dict[str, float]]]:
    """Per split/fold and case: each rule's Dice and the organs' agreement."""
    report: dict[str, dict[str, dict[str, float]]] = {}
    for folder in folders:
        for path in sorted(folder.glob("*.npz")):
            fold, case = path.stem.split("_", 1)
            model, atlas, truth, agreement = load(path)
            row = {name: round(dice(rule(model, atlas) > 0, truth), 4) for name, rule in RULES.items()}
            row["agreement"] = round(agreement, 4)
            report.setdefault(f"{folder.name}/{fold}", {})[case] = row
            print(f"  {folder.name}/{fold} {case}: agreement {agreement:.2f}  " +
                  "  ".join(f"{v:.2f}" for k, v in row.items() if k != "agreement"), flush=True)
    return report


def print_table(report: dict[str, dict[str, dict[str, float]]]) -> None:
    folds = sorted(report)
    print("\n| rule | " + " | ".join(folds) + " | mean |\n|---|" + "---|" * (len(folds) + 1))
    for name in RULES:
        means = [statistics.mean(c[name] for c in report[f].values()) for f in folds]
        print(f"| {name} | " + " | ".join(f"{m:.3f}" for m in means) + f" | {statistics.mean(means):.3f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", type=Path, nargs="+", help="bench_average.py --keep folders")
    parser.add_argument("--json", type=Path, help="write the per-patient figures here")
    args = parser.parse_args()
    report = score(args.folders)
    print_table(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
