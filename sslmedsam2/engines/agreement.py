"""Two engines voting on every voxel: the liver where both say liver, full doubt where they differ.

Self-training learns the mistakes of its teacher. Two teachers that fail differently (a few-shot
registration that keeps the shape but misses the boundary, an nnU-Net trained on the labelled
cases alone that knows the intensities but strays to other organs) are mostly wrong in different
places, so where they agree the label is far more often right. The disagreement is the entropy of
a two-vote fusion at 50/50 (1 bit), which ``ignore_uncertainty_above`` turns into nnU-Net's
``ignore`` label: the next model is trained on the agreement and left free where they differ.
"""

from __future__ import annotations

import numpy as np

from sslmedsam2.engines.base import Segmentation
from sslmedsam2.engines.pair import EnginePair

#: Binary entropy of two votes split one-one.
DISAGREEMENT = 1.0


class AgreementEngine(EnginePair):
    """``first`` and ``second`` segment every volume; the mask is their intersection."""

    name = "agreement"

    def combine(self, a: Segmentation, b: Segmentation) -> Segmentation:
        return agree(a, b)


def agree(a: Segmentation, b: Segmentation) -> Segmentation:
    """The intersection of two masks; uncertainty is the larger of theirs, and 1 bit wherever
    one says liver and the other does not."""
    first, second = a.mask > 0, b.mask > 0
    doubt = np.zeros(first.shape, np.float32)
    for own in (a.uncertainty, b.uncertainty):
        if own is not None:
            np.maximum(doubt, own, out=doubt)
    doubt[first != second] = DISAGREEMENT
    both = float(np.logical_and(first, second).sum())
    union = float(np.logical_or(first, second).sum())
    detail = (f"agreement of {a.detail} and {b.detail} "
              f"({both / union if union else 1.0:.0%} of their union)")
    return Segmentation((first & second).astype(np.uint8), detail, doubt,
                        device=b.device, precision=b.precision)
