"""Locally weighted voting: supports whose warped image fits the query win the voxels they fit."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from sslmedsam2.registration.label_propagation import WarpedSupport, fuse, fuse_weighted
from sslmedsam2.registration.local_weighting import LocalWeighting, local_correlation, weighted_vote

SPACING = (3.0, 1.5, 1.5)


def _scene(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A textured volume with a brighter organ, and the organ's mask."""
    rng = np.random.default_rng(seed)
    texture = ndimage.gaussian_filter(rng.normal(size=(20, 64, 64)), 1.0)
    zz, yy, xx = np.indices(texture.shape)
    organ = ((zz - 10) / 6.0) ** 2 + ((yy - 32) / 16.0) ** 2 + ((xx - 30) / 18.0) ** 2 <= 1.0
    return (texture + 2.0 * organ).astype(np.float32), organ


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float(np.logical_and(a, b).sum()) / float(a.sum() + b.sum())


def test_correlation_is_one_for_a_rescaled_copy_and_low_for_a_shifted_one():
    image, _ = _scene()
    window = 6.0
    same = local_correlation(image, 3.0 * image + 7.0, SPACING, window)
    shifted = local_correlation(image, np.roll(image, 6, axis=2), SPACING, window)
    assert np.allclose(same[2:-2, 8:-8, 8:-8], 1.0, atol=1e-3)
    assert np.median(shifted) < 0.5


def test_two_agreeing_but_misplaced_supports_no_longer_outvote_the_one_that_fits():
    """A plain majority vote follows the two supports that landed 6 voxels off; the weighted vote
    follows the one whose warped image matches the query."""
    query, organ = _scene()
    right = (organ.astype(np.float32), query)
    wrong = [(np.roll(organ, s, axis=2).astype(np.float32), np.roll(query, s, axis=2)) for s in (6, 7)]
    masks, images = zip(right, *wrong, strict=True)
    plain = fuse(list(masks)).mask > 0
    weighted = weighted_vote(query, list(masks), list(images), SPACING, LocalWeighting(window_mm=6.0)) >= 0.5
    assert _dice(plain, organ) < 0.85
    assert _dice(weighted, organ) > 0.97


def test_equally_good_supports_give_the_plain_vote():
    query, organ = _scene()
    masks = [organ.astype(np.float32), np.roll(organ, 1, axis=0).astype(np.float32)]
    probability = weighted_vote(query, masks, [query, query], SPACING)
    np.testing.assert_allclose(probability, np.mean(masks, axis=0), atol=1e-5)


def test_fuse_weighted_reads_the_query_on_its_own_grid():
    """The query's spacing reaches the window in physical units, and the label keeps its shape."""
    array, organ = _scene()
    query = sitk.GetImageFromArray(array)
    query.SetSpacing(SPACING[::-1])
    warped = [WarpedSupport(mask=np.roll(organ, s, axis=2).astype(np.float32),
                            image=np.roll(array, s, axis=2)) for s in (0, 6, 7)]
    fused = fuse_weighted(warped, query, LocalWeighting(window_mm=6.0))
    assert fused.mask.shape == organ.shape and fused.mask.dtype == np.uint8
    assert _dice(fused.mask > 0, organ) > 0.97
    assert fused.uncertainty.shape == organ.shape
