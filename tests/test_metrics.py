"""compute_metrics must equal grand-challenge-metrics, and an independent brute-force computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from grand_challenge_metrics import stats
from scipy.ndimage import gaussian_filter
from scipy.spatial.distance import cdist

from sslmedsam2.evaluation.metrics import PairMetrics, compute_metrics, image_diagonal_mm

SPACING = (3.5, 0.59, 0.8)  # z, y, x: anisotropic like CARE GED4
SHAPE = (20, 40, 40)


def random_blobs(seed: int, shape=SHAPE, level: float = 0.15) -> np.ndarray:
    """Smooth random blobs: several components, some cut by the image border."""
    rng = np.random.default_rng(seed)
    field = gaussian_filter(rng.standard_normal(shape), sigma=(1.5, 3.0, 3.0))
    return field > level * field.std() * 3


def gc_metrics(pred: np.ndarray, gt: np.ndarray, spacing) -> PairMetrics:
    """The reference: grand-challenge-metrics, one call per metric."""
    cm = stats.calculate_confusion_matrix(gt, pred, [0, 1])
    return PairMetrics(
        dice=float(stats.dice_from_confusion_matrix(cm)[1]),
        hd=float(stats.hausdorff_distance(pred, gt, spacing)),
        hd95=float(stats.percentile_hausdorff_distance(pred, gt, 0.95, spacing)),
    )


def assert_equal_to_gc(pred: np.ndarray, gt: np.ndarray, spacing=SPACING) -> PairMetrics:
    ours, ref = compute_metrics(pred, gt, spacing), gc_metrics(pred, gt, spacing)
    assert ours.dice == pytest.approx(ref.dice, rel=1e-6)  # theirs is float32
    assert ours.hd == pytest.approx(ref.hd, rel=1e-12, abs=1e-12)
    assert ours.hd95 == pytest.approx(ref.hd95, rel=1e-12, abs=1e-12)
    return ours


def brute_force_surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of the mask with a 6-neighbour outside it (outside the image counts as outside)."""
    padded = np.pad(mask, 1, constant_values=False)
    core = tuple(slice(1, -1) for _ in range(mask.ndim))
    interior = np.ones_like(mask)
    for axis in range(mask.ndim):
        for step in (-1, 1):
            interior &= np.roll(padded, step, axis=axis)[core]
    return mask & ~interior


def brute_force_metrics(pred: np.ndarray, gt: np.ndarray, spacing) -> tuple[float, float]:
    """HD and HD95 from all pairwise distances between surface voxels (no distance transform)."""
    pts_p = np.argwhere(brute_force_surface(pred)) * np.asarray(spacing)
    pts_g = np.argwhere(brute_force_surface(gt)) * np.asarray(spacing)
    pairwise = cdist(pts_p, pts_g)
    p_to_g, g_to_p = np.sort(pairwise.min(axis=1)), np.sort(pairwise.min(axis=0))
    hd = max(p_to_g[-1], g_to_p[-1])
    hd95 = max(p_to_g[int((len(p_to_g) - 1) * 0.95)], g_to_p[int((len(g_to_p) - 1) * 0.95)])
    return hd, hd95


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_grand_challenge_metrics_on_random_blobs(seed):
    pred, gt = random_blobs(seed), random_blobs(seed + 100)
    assert pred.any() and gt.any()
    assert_equal_to_gc(pred, gt)


def test_equals_gc_on_blobs_touching_the_border():
    gt = random_blobs(7, level=-0.2)  # large blobs, cut by several faces of the image
    pred = gt.copy()
    pred[0] = True  # a full slab on the first slice
    pred[:, :, -3:] = False
    for mask in (gt, pred):
        assert mask[0].any() and mask[-1].any() and mask[:, :, 0].any()
    assert_equal_to_gc(pred, gt)


def test_equals_gc_on_separate_components_in_opposite_corners():
    gt = np.zeros(SHAPE, dtype=bool)
    gt[:4, :6, :6] = True
    gt[-5:, -7:, -4:] = True
    pred = np.zeros(SHAPE, dtype=bool)
    pred[1:5, 2:7, 1:6] = True
    pred[10:12, 20:25, 20:22] = True  # a false positive in the middle
    assert_equal_to_gc(pred, gt)


def test_equals_gc_with_one_voxel_masks():
    blob = random_blobs(3)
    one = np.zeros(SHAPE, dtype=bool)
    one[10, 12, 30] = True
    other = np.zeros(SHAPE, dtype=bool)
    other[0, 39, 0] = True
    assert_equal_to_gc(one, blob)
    assert_equal_to_gc(blob, one)
    assert_equal_to_gc(one, other)
    assert_equal_to_gc(one, one).hd == 0.0


def test_matches_brute_force_pairwise_distances():
    for seed in (4, 5):
        small = (8, 14, 12)
        pred, gt = random_blobs(seed, small, level=0.0), random_blobs(seed + 50, small, level=0.0)
        ours = compute_metrics(pred, gt, SPACING)
        hd, hd95 = brute_force_metrics(pred, gt, SPACING)
        assert ours.hd == pytest.approx(hd, rel=1e-12)
        assert ours.hd95 == pytest.approx(hd95, rel=1e-12)


@pytest.mark.parametrize("axis,k", [(0, 1), (0, 3), (1, 2), (2, 5)])
def test_shifted_cube_has_hd_of_the_shift(axis, k):
    gt = np.zeros(SHAPE, dtype=bool)
    gt[4:12, 10:28, 10:28] = True
    pred = np.roll(gt, k, axis=axis)
    ours = compute_metrics(pred, gt, SPACING)
    assert ours.hd == pytest.approx(k * SPACING[axis], rel=1e-12)
    assert 0.0 < ours.hd95 <= ours.hd
    extent = {0: 8, 1: 18, 2: 18}[axis]
    assert ours.dice == pytest.approx((extent - k) / extent)


def test_identical_masks_are_perfect():
    gt = random_blobs(9)
    assert compute_metrics(gt, gt, SPACING) == PairMetrics(dice=1.0, hd=0.0, hd95=0.0)


def test_any_nonzero_value_is_object():
    gt = random_blobs(11)
    labels = gt.astype(np.uint8) * 2
    floats = gt * 0.5
    assert compute_metrics(labels, floats, SPACING) == PairMetrics(1.0, 0.0, 0.0)


def test_both_empty_is_perfect():
    empty = np.zeros(SHAPE, dtype=np.uint8)
    assert compute_metrics(empty, empty, SPACING) == PairMetrics(dice=1.0, hd=0.0, hd95=0.0)


def test_one_empty_scores_dice_zero_and_the_image_diagonal():
    empty, blob = np.zeros(SHAPE, dtype=bool), random_blobs(12)
    diagonal = math.sqrt(sum((n * s) ** 2 for n, s in zip(SHAPE, SPACING)))
    assert image_diagonal_mm(SHAPE, SPACING) == pytest.approx(diagonal)
    for pred, gt in ((empty, blob), (blob, empty)):
        assert compute_metrics(pred, gt, SPACING) == PairMetrics(dice=0.0, hd=diagonal, hd95=diagonal)
    corner, opposite = np.zeros(SHAPE, dtype=bool), np.zeros(SHAPE, dtype=bool)
    corner[0, 0, 0] = opposite[-1, -1, -1] = True
    worst_real = compute_metrics(corner, opposite, SPACING)  # the farthest two voxels can be
    assert worst_real.hd < diagonal


def test_rejects_mismatched_shapes_and_bad_spacing():
    gt = random_blobs(13)
    with pytest.raises(ValueError, match="shape"):
        compute_metrics(gt[:-1], gt, SPACING)
    with pytest.raises(ValueError, match="spacing"):
        compute_metrics(gt, gt, SPACING[:2])
    with pytest.raises(ValueError, match="positive"):
        compute_metrics(gt, gt, (0.0, 1.0, 1.0))
