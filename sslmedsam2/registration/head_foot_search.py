"""Slide a support's liver along the head-foot axis to where the query looks like one organ.

Scans of different patients cover different lengths of the body, and on some pairs SyN's linear
start leaves the whole support liver 5-8 slices too high or too low (CHAOS: the worst of 182
pairs land 50-64 mm off): mutual information over the whole image cannot tell the liver's slices
from the kidneys'. The query itself can, with no appearance borrowed from the support: the liver
is one large organ of even intensity, unlike what surrounds it. So the start is shifted along the
head-foot axis to where the query's voxels inside the support's warped liver keep closest to
their median and those in a thin shell around it least (benchmarks/RESULTS.md, few-shot attempt
8).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class HeadFootSearch:
    """The shifts tried and how a shift is judged; ``range_mm`` 0 switches the search off."""

    #: how far up or down the start may move, mm
    range_mm: float = 150.0
    step_mm: float = 10.0
    #: a voxel looks like the organ where its normalised intensity (0..1) is this close to the
    #: median inside the warped liver
    tolerance: float = 0.1
    #: thickness of the shell around the warped liver, voxels of the registration grid
    shell_voxels: int = 3
    #: a shift that leaves less of the warped liver on the query than this share of the unshifted
    #: one is not tried: a liver pushed out of the scan would look even by having few voxels
    min_kept: float = 0.85

    def shifts(self) -> list[float]:
        """The shifts, mm, nearest first, so that a tie keeps the smaller move."""
        count = int(self.range_mm // self.step_mm) if self.range_mm > 0 else 0
        return sorted((float(i * self.step_mm) for i in range(-count, count + 1)), key=lambda s: (abs(s), s))


def organ_contrast(query: np.ndarray, mask: np.ndarray, tolerance: float, shell_voxels: int) -> float:
    """The share of ``mask``'s voxels within ``tolerance`` of their median intensity, less the
    same share in the shell around ``mask``: high where the mask covers one even organ and no
    more; -inf for an empty mask."""
    inside = query[mask]
    if inside.size == 0:
        return float("-inf")
    median = np.median(inside)
    around = query[ndimage.binary_dilation(mask, iterations=shell_voxels) & ~mask]
    alike_around = float(np.mean(np.abs(around - median) < tolerance)) if around.size else 0.0
    return float(np.mean(np.abs(inside - median) < tolerance)) - alike_around


def best_shift(query: np.ndarray, warped_mask: Callable[[float], np.ndarray],
               search: HeadFootSearch) -> float:
    """The head-foot shift, mm, of the support's liver (``warped_mask(shift)``: a boolean mask on
    ``query``'s grid) with the highest :func:`organ_contrast`; 0 unless another beats it."""
    unshifted = warped_mask(0.0)
    least = search.min_kept * int(unshifted.sum())
    best, best_score = 0.0, organ_contrast(query, unshifted, search.tolerance, search.shell_voxels)
    for shift in search.shifts()[1:]:
        mask = warped_mask(shift)
        if mask.sum() < least:
            continue
        score = organ_contrast(query, mask, search.tolerance, search.shell_voxels)
        if score > best_score:
            best, best_score = shift, score
    return best
