"""Weight each support's vote, voxel by voxel, by how closely its warped image matches the query.

With several supports a plain majority vote lets two supports that landed badly outvote the one
that landed well. Where a support's warped image still looks like the query (high local
correlation in a small window), its registration is probably right there; where it does not,
its mask probably lies off the query's anatomy. Locally weighted voting (Artaechevarria et al.,
IEEE TMI 2009) lets each voxel trust the supports that fit it. Correlation is used rather than
intensity differences because MRI intensities differ between patients and scanners by more
than a scale. Only within one sequence: across sequences there is no local likeness to measure.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: a support's weight where it correlates nowhere near the query, so no voxel is left unweighted
FLOOR = 1e-6


@dataclass(frozen=True)
class LocalWeighting:
    """How local the likeness is, and how sharply a better-fitting support wins the voxel."""

    #: Gaussian sigma of the window the correlation is measured in, mm
    window_mm: float = 10.0
    #: weight = correlation ** power (negative correlation counts as none)
    power: float = 6.0


def local_correlation(a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...],
                      window_mm: float) -> np.ndarray:
    """Pearson correlation of ``a`` and ``b`` in a Gaussian window around every voxel."""
    sigma = [window_mm / float(s) for s in spacing]

    def mean(x: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(x, sigma)

    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    mean_a, mean_b = mean(a), mean(b)
    variance_a = np.maximum(mean(a * a) - mean_a * mean_a, 1e-6)
    variance_b = np.maximum(mean(b * b) - mean_b * mean_b, 1e-6)
    return (mean(a * b) - mean_a * mean_b) / np.sqrt(variance_a * variance_b)


def weighted_vote(query: np.ndarray, masks: list[np.ndarray], images: list[np.ndarray],
                  spacing: tuple[float, ...], settings: LocalWeighting = LocalWeighting()) -> np.ndarray:
    """The supports' soft ``masks`` averaged with local weights from their warped ``images``
    (all on the query's grid and in one array layout; ``spacing`` in that layout's axis order)."""
    total = np.zeros(np.shape(query), np.float32)
    votes = np.zeros(np.shape(query), np.float32)
    for mask, image in zip(masks, images, strict=True):
        likeness = np.clip(local_correlation(query, image, spacing, settings.window_mm), 0.0, 1.0)
        weight = likeness ** settings.power + FLOOR
        total += weight
        votes += weight * np.asarray(mask, np.float32)
    return votes / total
