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
    sigma = _sigma(spacing, window_mm)
    a = np.asarray(a, np.float32)
    return _correlation(a, _moments(a, sigma), np.asarray(b, np.float32), sigma)


def weighted_vote(query: np.ndarray, masks: list[np.ndarray], images: list[np.ndarray],
                  spacing: tuple[float, ...], settings: LocalWeighting = LocalWeighting()) -> np.ndarray:
    """The supports' soft ``masks`` averaged with local weights from their warped ``images``
    (all on the query's grid and in one array layout; ``spacing`` in that layout's axis order)."""
    sigma = _sigma(spacing, settings.window_mm)
    query = np.asarray(query, np.float32)
    query_moments = _moments(query, sigma)  # once per query, not once per support
    total = np.zeros(query.shape, np.float32)
    votes = np.zeros(query.shape, np.float32)
    for mask, image in zip(masks, images, strict=True):
        correlation = _correlation(query, query_moments, np.asarray(image, np.float32), sigma)
        weight = np.clip(correlation, 0.0, 1.0) ** settings.power + FLOOR
        total += weight
        votes += weight * np.asarray(mask, np.float32)
    return votes / total


def _sigma(spacing: tuple[float, ...], window_mm: float) -> list[float]:
    return [window_mm / float(s) for s in spacing]


def _moments(x: np.ndarray, sigma: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Local mean and variance (floored, so flat regions do not divide by zero)."""
    mean = ndimage.gaussian_filter(x, sigma)
    return mean, np.maximum(ndimage.gaussian_filter(x * x, sigma) - mean * mean, 1e-6)


def _correlation(a: np.ndarray, a_moments: tuple[np.ndarray, np.ndarray], b: np.ndarray,
                 sigma: list[float]) -> np.ndarray:
    (mean_a, variance_a), (mean_b, variance_b) = a_moments, _moments(b, sigma)
    return (ndimage.gaussian_filter(a * b, sigma) - mean_a * mean_b) / np.sqrt(variance_a * variance_b)
