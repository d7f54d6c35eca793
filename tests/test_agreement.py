"""Two engines' agreement: the intersection, and a full bit of doubt where they differ."""

from __future__ import annotations

import numpy as np

from sslmedsam2.engines.agreement import DISAGREEMENT, agree
from sslmedsam2.engines.base import Segmentation


def _seg(mask: np.ndarray, uncertainty: np.ndarray | None = None) -> Segmentation:
    return Segmentation(mask.astype(np.uint8), "test", uncertainty)


def test_the_mask_is_the_intersection_and_disagreement_is_one_bit():
    a, b = np.zeros((4, 6, 6), bool), np.zeros((4, 6, 6), bool)
    a[1:3, 1:4, 1:4] = True
    b[1:3, 2:5, 2:5] = True
    doubt = np.full(a.shape, 0.2, np.float32)
    fused = agree(_seg(a, doubt), _seg(b))
    np.testing.assert_array_equal(fused.mask, (a & b).astype(np.uint8))
    np.testing.assert_array_equal(fused.uncertainty[a != b], DISAGREEMENT)
    np.testing.assert_allclose(fused.uncertainty[a == b], 0.2)  # the larger of the two
    assert "agreement of test and test" in fused.detail


def test_identical_masks_keep_their_own_uncertainty():
    a = np.zeros((3, 5, 5), bool)
    a[1, 1:4, 1:4] = True
    fused = agree(_seg(a), _seg(a))
    np.testing.assert_array_equal(fused.mask, a.astype(np.uint8))
    assert fused.uncertainty.max() == 0.0 and "(100% of their union)" in fused.detail
