"""Two engines voting on every voxel: the liver where both say liver, full doubt where they differ.

Self-training learns the mistakes of its teacher. Two teachers that fail differently (a few-shot
registration that keeps the shape but misses the boundary, an nnU-Net trained on the labelled
cases alone that knows the intensities but strays to other organs) are mostly wrong in different
places, so where they agree the label is far more often right. The disagreement is the entropy of
a two-vote fusion at 50/50 (1 bit), which ``ignore_uncertainty_above`` turns into nnU-Net's
``ignore`` label: the next model is trained on the agreement and left free where they differ.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import SimpleITK as sitk

from sslmedsam2.engines.base import Engine, Segmentation

#: Binary entropy of two votes split one-one.
DISAGREEMENT = 1.0


class AgreementEngine:
    """``first`` and ``second`` segment every volume; the mask is their intersection."""

    name = "agreement"

    def __init__(self, first: Engine, second: Engine) -> None:
        self.first, self.second = first, second

    @classmethod
    def of(cls, make_first: Callable[[], Engine], make_second: Callable[[], Engine]) -> AgreementEngine:
        """Built from two recipes, so a picklable recipe of it can travel to a worker."""
        return cls(make_first(), make_second())

    def can_segment(self, sequence: str) -> bool:
        return self.first.can_segment(sequence) and self.second.can_segment(sequence)

    def missing(self, sequence: str) -> str:
        return "; ".join(e.missing(sequence) for e in (self.first, self.second)
                         if not e.can_segment(sequence))

    def load(self, sequence: str) -> None:
        self.first.load(sequence)
        self.second.load(sequence)

    def over_budget(self, image: sitk.Image, sequence: str, vendor: str | None = None) -> str | None:
        return (self.first.over_budget(image, sequence, vendor)
                or self.second.over_budget(image, sequence, vendor))

    def segment(self, image: sitk.Image, sequence: str, vendor: str | None = None) -> Segmentation:
        a = self.first.segment(image, sequence, vendor)
        b = self.second.segment(image, sequence, vendor)
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
