"""The model-and-atlas average engine, scored on the folds ``bench_ssl_real.py`` trained.

Per fold, ``AverageEngine`` is built from what an SSL arm exported (``<arm>_L<n>/weights``, e.g.
``ssl_L1`` or ``ssl_share0.5_L1``: its final
nnU-Net, and its labelled patients as atlas supports), exactly as ``process.py --engines average``
builds it, and segments the fold's held-out patients. Prints per fold the held-out Dice and HD95 of
the model alone, the atlas alone and their average with either engine first where the two part
(``model first``: the model's organ alone, the atlas's where they are different objects; ``atlas
first``: the atlas's organ alone, round 0's rule) and ``served``, the one of the two the weights ask
for (``UNTAUGHT_BELOW``), all from one pass of the two engines,
beside the labelled-only control the benchmark trained in the same fold (``labelled_only_L<n>``),
and writes the per-patient figures to --json (folds already in that file and not scored now are
kept, so folds trained in different sessions end in one file). Registers on one ANTs thread, as the
run did, so ``served`` repeats the run's own served figure. Trains nothing; about a minute per
patient on 2 cores.

    python benchmarks/bench_average.py --work /work/bench/seed1 --labels 1 [--arm ssl_share0.5]
        [--only-folds 1 2] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from sslmedsam2.engines.atlas import AtlasEngine
from sslmedsam2.engines.average import AverageEngine
from sslmedsam2.engines.base import RuntimeOptions, Segmentation
from sslmedsam2.evaluation.metrics import compute_metrics
from sslmedsam2.io import read_volume
from sslmedsam2.orientation import segment_in_orientation
from sslmedsam2.postprocess import largest_component
from sslmedsam2.registration.syn import pin_registration_threads

SEQUENCE = "T2SPIR"
ARMS = ("model", "atlas", "model first", "atlas first", "served")


def score_fold(fold: Path, weights: Path, keep: Path | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """Per held-out patient and arm: Dice, HD95 and seconds. With ``keep``, each patient's two
    probabilities, masks and manual mask are saved there (``<fold>_<case>.npz``), so other ways
    of combining the engines can be scored without segmenting again (``bench_average_rules.py``)."""
    engine = AverageEngine.from_weights(weights, RuntimeOptions(device="cpu"))
    engine.load(SEQUENCE)
    atlas_first = isinstance(engine.first, AtlasEngine)
    model_engine, atlas_engine = ((engine.second, engine.first) if atlas_first
                                  else (engine.first, engine.second))
    print(f"  {fold.name}: the weights serve the {'atlas' if atlas_first else 'model'} first", flush=True)
    scores: dict[str, dict[str, dict[str, float]]] = {}
    for image_path in sorted((fold / "holdout").glob("*_image.nii.gz")):
        case = image_path.name.removesuffix("_image.nii.gz")
        image = read_volume(image_path)
        truth = sitk.GetArrayFromImage(sitk.ReadImage(str(fold / "holdout" / f"{case}_liver.nii.gz"))) > 0
        start = time.perf_counter()
        # in the orientation the model was trained in, as the loop and process.py call engines
        model = segment_in_orientation(model_engine, image, SEQUENCE, None)
        middle = time.perf_counter()
        atlas = segment_in_orientation(atlas_engine, image, SEQUENCE, None)
        end = time.perf_counter()
        seconds = {"model": middle - start, "atlas": end - middle}
        # largest components, as the loop's held-out predictions and process.py keep them
        masks = {"model": largest_component(model.mask), "atlas": largest_component(atlas.mask)}
        # both orders by the served engine's own rules; "served" is the one these weights chose
        for arm, first_is_atlas in (("model first", False), ("atlas first", True)):
            pair = AverageEngine.ordered(model_engine, atlas_engine, atlas_first=first_is_atlas)
            masks[arm] = pair.combine(*((atlas, model) if first_is_atlas else (model, atlas))).mask
        masks["served"] = masks["atlas first" if atlas_first else "model first"]
        seconds.update({arm: seconds["model"] + seconds["atlas"] for arm in ARMS[2:]})
        if keep is not None:
            save_engines(keep / f"{fold.name}_{case}.npz", model, atlas, truth, image.GetSpacing()[::-1])
        scores[case] = {}
        for arm, mask in masks.items():
            metrics = compute_metrics(mask > 0, truth, image.GetSpacing()[::-1])
            scores[case][arm] = {"dice": round(metrics.dice, 4), "hd95": round(metrics.hd95, 2),
                                 "seconds": round(seconds[arm], 1)}
        print(f"  {fold.name} {case}: " + "  ".join(f"{a} {scores[case][a]['dice']:.3f}" for a in ARMS),
              flush=True)
    return scores


def save_engines(path: Path, model: Segmentation, atlas: Segmentation, truth: np.ndarray,
                 spacing: tuple[float, ...]) -> None:
    """The two engines' outputs for one patient, compressed (probabilities as float16)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, model_probability=np.asarray(model.probability, np.float16),
                        model_mask=model.mask.astype(np.uint8),
                        atlas_probability=np.asarray(atlas.probability, np.float16),
                        atlas_mask=atlas.mask.astype(np.uint8), truth=truth.astype(np.uint8),
                        spacing=np.asarray(spacing, np.float64))


def control_dice(fold: Path, labels: int) -> float | None:
    """The labelled-only arm's held-out Dice in this fold, as the benchmark recorded it."""
    step = fold / f"labelled_only_L{labels}" / SEQUENCE / "final" / "step.json"
    return json.loads(step.read_text())["holdout_dice_mean"] if step.is_file() else None


def main() -> int:
    args = parse_args()
    # one ANTs thread, as the SSL run that made the weights registered (loop.deterministic_registration):
    # with ITK's threads a hard pair's warp can differ, and the served figure with it
    if not pin_registration_threads():
        raise SystemExit("ANTs was loaded before its threads could be pinned")
    weights = f"{args.arm}_L{args.labels}/weights"
    folds = sorted(f for f in args.work.glob("fold*") if (f / weights).is_dir()
                   and (args.only_folds is None or int(f.name.removeprefix("fold")) in args.only_folds))
    if not folds:
        raise SystemExit(f"{args.work}: no fold*/{weights} (run bench_ssl_real.py first)")
    report = json.loads(args.json.read_text()) if args.json and args.json.is_file() else {}
    for fold in folds:
        cases = score_fold(fold, fold / weights, args.keep)
        means = {arm: statistics.mean(c[arm]["dice"] for c in cases.values()) for arm in ARMS}
        report[fold.name] = {"cases": cases, "mean_dice": means,
                             "labelled_only": control_dice(fold, args.labels)}
    print("\n| fold | labelled-only | " + " | ".join(ARMS) + " | served - labelled-only |\n"
          "|---|---|---|---|---|---|---|---|")
    for name, fold in sorted(report.items()):
        control, means = fold["labelled_only"], fold["mean_dice"]
        margin = "n/a" if control is None else f"{means['served'] - control:+.3f}"
        print(f"| {name} | {control if control is not None else 'n/a'} | " +
              " | ".join(f"{means[a]:.3f}" for a in ARMS) + f" | {margin} |")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="bench_ssl_real.py's --work folder")
    parser.add_argument("--labels", type=int, default=1, help="which arm: <arm>_L<labels> (default 1)")
    parser.add_argument("--arm", default="ssl",
                        help="the SSL arm's folder prefix, e.g. ssl_share0.5 for bench_ssl_real.py "
                             "--labelled-share 0.5 (default: ssl)")
    parser.add_argument("--only-folds", type=int, nargs="+", default=None,
                        help="score these fold indices only (default: every trained fold)")
    parser.add_argument("--json", type=Path,
                        help="write the per-patient figures here (its other folds are kept)")
    parser.add_argument("--keep", type=Path,
                        help="save each patient's two probabilities and masks in this folder "
                             "(for bench_average_rules.py)")
    return parser.parse_args()


if __name__ == "__main__":
    raise SystemExit(main())
