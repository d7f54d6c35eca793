"""Atlas pseudo-label quality and speed on a generated CARE-like set.

3 supports (one labelled GED4 case per vendor) label >= 10 unlabelled training cases; GED4-like and
T1-like queries are scored separately against the generator's ground truth (Dice, HD95) with the
time per query case. The fusions side by side: the supports' plain vote, the vote corrected by
each query's intensities, and the default (GED4 queries: each support weighted by its local
likeness to the query, then corrected; T1 queries are never weighted, so the last two agree).

    python benchmarks/bench_atlas.py [--queries 12] [--seed 0] [--method auto] [--deformable]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import SimpleITK as sitk

from sslmedsam2.datasets.example import ExampleConfig, make_example
from sslmedsam2.engines.atlas import AtlasEngine
from sslmedsam2.evaluation.metrics import compute_metrics
from sslmedsam2.registration.label_propagation import METHODS, AtlasConfig
from sslmedsam2.supports import find_supports


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=12,
                        help="unlabelled cases generated and labelled (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated set (default: %(default)s)")
    parser.add_argument("--method", choices=METHODS, default="auto",
                        help="registration: auto (SyN within a sequence, affine across), syn, or affine, "
                             "the demo's (default: %(default)s)")
    parser.add_argument("--deformable", action="store_true",
                        help="add the affine engine's optional B-spline stage")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        dataset = make_example(ExampleConfig(out_dir=Path(tmp), cases=args.queries + 3, test_cases=0,
                                             labelled_per_vendor=1, seed=args.seed), progress=False)
        supports = find_supports(dataset.train_dir)
        config = AtlasConfig(method=args.method, deformable=args.deformable)
        queries = [c for c in dataset.split("train") if not c.labelled]
        print(f"supports: {', '.join(s.case for s in supports)}; queries: {len(queries)}; "
              f"method {args.method}; deformable stage: {args.deformable}\n")
        print("| fusion | sequence | N | Dice mean | Dice min | HD95 mean (mm) | s per query |\n"
              "|---|---|---|---|---|---|---|")
        engines = {"vote": AtlasEngine(supports, replace(config, weighted=False, intensity=False),
                                       max_supports=3),
                   "vote+intensity": AtlasEngine(supports, replace(config, weighted=False), max_supports=3),
                   "weighted+intensity": AtlasEngine(supports, config, max_supports=3)}
        for sequence in ("GED4", "T1"):
            for fusion, engine in engines.items():
                dice, hd95, seconds = [], [], []
                for case in queries:
                    image = sitk.ReadImage(str(case.images[sequence]))
                    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(case.ground_truth[sequence])))
                    started = time.perf_counter()
                    mask = engine.segment(image, sequence).mask  # all 3 vendors' supports
                    seconds.append(time.perf_counter() - started)
                    scores = compute_metrics(mask, truth, image.GetSpacing()[::-1])
                    dice.append(scores.dice)
                    hd95.append(scores.hd95)
                print(f"| {fusion} | {sequence} | {len(dice)} | {statistics.mean(dice):.4f} | "
                      f"{min(dice):.4f} | {statistics.mean(hd95):.1f} | {statistics.mean(seconds):.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
