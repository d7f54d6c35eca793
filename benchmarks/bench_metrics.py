"""Time sslmedsam2.evaluation.metrics.compute_metrics against grand-challenge-metrics on a CARE-size pair.

The pair: a 640 x 520 x 64 (x, y, z) grid at 0.59 x 0.59 x 3.5 mm (CARE GED4, vendor A), a smooth
liver-like blob as ground truth and a shifted, reshaped copy of it as prediction. Both sides compute
Dice, HD (maximum) and HD95; the values must agree, and the script exits 1 when they do not.

    python benchmarks/bench_metrics.py [--repeats N] [--seed S]
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Callable

import numpy as np
from grand_challenge_metrics import stats

from sslmedsam2.evaluation.metrics import PairMetrics, compute_metrics

SHAPE_ZYX = (64, 520, 640)
SPACING_ZYX = (3.5, 0.59, 0.59)


def liver_like(
    rng: np.random.Generator, shift_mm: tuple[float, float, float], wobble: float
) -> np.ndarray:
    """An ellipsoid (about 180 x 160 x 220 mm) whose radius is modulated by smooth random waves."""
    z, y, x = (np.arange(n, dtype=np.float32) * s for n, s in zip(SHAPE_ZYX, SPACING_ZYX))
    centre = (0.5 * SHAPE_ZYX[0] * SPACING_ZYX[0], 0.5 * SHAPE_ZYX[1] * SPACING_ZYX[1],
              0.42 * SHAPE_ZYX[2] * SPACING_ZYX[2])
    zz, yy, xx = (c - (m + d) for c, m, d in zip((z, y, x), centre, shift_mm))
    zz, yy, xx = zz[:, None, None], yy[None, :, None], xx[None, None, :]
    radius = (zz / 90.0) ** 2 + (yy / 80.0) ** 2 + (xx / 110.0) ** 2
    for _ in range(4):
        k = rng.uniform(1 / 60, 1 / 25, size=3).astype(np.float32)
        phase = rng.uniform(0, 2 * np.pi, size=3).astype(np.float32)
        radius = radius + wobble * (np.sin(k[0] * zz + phase[0]) * np.sin(k[1] * yy + phase[1])
                                    * np.cos(k[2] * xx + phase[2]))
    return radius < 1.0


def gc_metrics(pred: np.ndarray, gt: np.ndarray) -> PairMetrics:
    """What the platform code computes, one call per metric."""
    dice = stats.dice_from_confusion_matrix(stats.calculate_confusion_matrix(gt, pred, [0, 1]))[1]
    return PairMetrics(
        dice=float(dice),
        hd=float(stats.hausdorff_distance(pred, gt, SPACING_ZYX)),
        hd95=float(stats.percentile_hausdorff_distance(pred, gt, 0.95, SPACING_ZYX)),
    )


def best_time(func: Callable[[], PairMetrics], repeats: int) -> tuple[float, PairMetrics]:
    """Fastest of ``repeats`` runs (the least disturbed by other load) and the result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = func()
        times.append(time.perf_counter() - start)
    return min(times), result


def agree(a: PairMetrics, b: PairMetrics) -> bool:
    """Distances must match to rounding; gc-metrics' Dice is float32."""
    return (abs(a.dice - b.dice) <= 1e-6 * max(a.dice, 1e-12)
            and abs(a.hd - b.hd) <= 1e-9 * max(a.hd, 1.0)
            and abs(a.hd95 - b.hd95) <= 1e-9 * max(a.hd95, 1.0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per method (best is shown)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the blob shapes")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    gt = liver_like(rng, shift_mm=(0.0, 0.0, 0.0), wobble=0.08)
    pred = liver_like(rng, shift_mm=(3.5, -2.0, 3.0), wobble=0.08)
    print(f"pair: {SHAPE_ZYX[::-1]} (x, y, z) voxels at {SPACING_ZYX[::-1]} mm; "
          f"gt {int(gt.sum()):,} voxels, prediction {int(pred.sum()):,} voxels; best of {args.repeats}")
    ours_s, ours = best_time(lambda: compute_metrics(pred, gt, SPACING_ZYX), args.repeats)
    theirs_s, theirs = best_time(lambda: gc_metrics(pred, gt), args.repeats)
    rows = [("sslmedsam2 compute_metrics", ours_s, ours), ("grand-challenge-metrics", theirs_s, theirs)]
    print(f"{'method':<27} {'seconds':>8} {'Dice':>9} {'HD mm':>9} {'HD95 mm':>9}")
    for name, seconds, m in rows:
        print(f"{name:<27} {seconds:8.2f} {m.dice:9.6f} {m.hd:9.4f} {m.hd95:9.4f}")
    same = agree(ours, theirs)
    print(f"speed-up: {theirs_s / ours_s:.1f}x; values agree: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
