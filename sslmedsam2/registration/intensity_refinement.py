"""Correct a warped atlas label with the query's own intensities.

Registration carries a support liver's shape onto the query; across patients it lands a few
millimetres off along the boundary, where the query's image plainly shows the edge. The fused
vote is used as a spatial prior, and the query itself supplies the intensity model: a histogram
of the prior's confident interior (liver) against a ring just outside it (what borders the
liver). Each voxel's posterior log-odds is the smoothed prior's plus the weighted log-likelihood
ratio of its intensity. No training and no support intensities are involved, so it holds across
sequences and scanners. Bowel and vessels beside the liver share its grey level, so the posterior
reaches onto them in thin strands; an in-plane opening cuts those before the largest component
is kept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from sslmedsam2.postprocess import largest_component

EPSILON = 1e-3
#: thinner volumes are not opened (see :func:`opened_in_plane`)
MIN_SLICES_TO_OPEN = 8
#: the opening is undone where its largest piece keeps less than this share of the liver
MIN_KEPT_BY_OPENING = 0.7


@dataclass(frozen=True)
class IntensityRefinement:
    """How far the prior is blurred and how much the intensity evidence weighs against it."""

    #: Gaussian sigma of the prior, mm: how far the boundary may move where intensities insist
    prior_smoothing_mm: float = 12.0
    #: weight of the intensity log-likelihood ratio against the prior's log-odds
    weight: float = 1.5
    #: the interior sample: prior voxels at least this far inside its boundary, mm
    interior_margin_mm: float = 4.0
    #: the ring sample: voxels outside the prior between these distances, mm
    ring_mm: tuple[float, float] = (4.0, 20.0)
    histogram_bins: int = 64
    #: Gaussian sigma of the posterior log-odds, mm: removes single-voxel speckle
    posterior_smoothing_mm: float = 1.5
    #: radius of the in-plane opening of the mask, mm: strands thinner than twice this are cut
    opening_mm: float = 6.0


def refine_by_intensity(image: np.ndarray, probability: np.ndarray, spacing: tuple[float, ...],
                        settings: IntensityRefinement = IntensityRefinement()) -> np.ndarray:
    """Posterior liver probability on the query grid. ``image`` and ``probability`` share one
    array layout; ``spacing`` is in that array's axis order, mm."""
    prior = probability >= 0.5
    if not prior.any():
        return np.asarray(probability, np.float32)
    spacing = tuple(float(s) for s in spacing)
    interior, ring = _samples(prior, spacing, settings)
    if interior.sum() < 100 or ring.sum() < 100:  # too small a label to learn intensities from
        return np.asarray(probability, np.float32)
    smoothed = ndimage.gaussian_filter(np.asarray(probability, np.float32),
                                       [settings.prior_smoothing_mm / s for s in spacing])
    smoothed = np.clip(smoothed, EPSILON, 1 - EPSILON)
    log_odds = np.log(smoothed) - np.log1p(-smoothed)
    log_odds += settings.weight * _likelihood_ratio(np.asarray(image, np.float32), interior, ring,
                                                    settings.histogram_bins)
    log_odds = ndimage.gaussian_filter(log_odds, [settings.posterior_smoothing_mm / s for s in spacing])
    return (1.0 / (1.0 + np.exp(-log_odds))).astype(np.float32)


def refined_mask(posterior: np.ndarray, spacing: tuple[float, ...], opening_mm: float = 0.0) -> np.ndarray:
    """The liver from a posterior: strands thinner than ``2 * opening_mm`` cut, one component, and
    the vessels inside it filled slice by slice across the thickest axis (portal and hepatic veins
    leave the liver, so a 3D fill misses them)."""
    mask = largest_component(posterior >= 0.5).astype(bool)
    if opening_mm > 0:
        opened = largest_component(opened_in_plane(mask, spacing, opening_mm)).astype(bool)
        # cutting strands takes a little; an opening that takes most of the liver (or all of a
        # liver thin everywhere) parted or erased it instead
        if opened.sum() >= MIN_KEPT_BY_OPENING * mask.sum():
            mask = opened
    return _per_slice(mask, _thickest_axis(spacing), ndimage.binary_fill_holes).astype(np.uint8)


def opened_in_plane(mask: np.ndarray, spacing: tuple[float, ...], radius_mm: float) -> np.ndarray:
    """Morphological opening by a disk of ``radius_mm``, slice by slice across the thickest axis
    (slices are often far thicker than a strand, so a 3D ball would be one slice deep). Exact
    Euclidean distances, so the disk is round on anisotropic pixels. A volume of fewer than
    ``MIN_SLICES_TO_OPEN`` slices is returned as it is: a lobe the opening parts from the liver in
    one slice is joined to it through the slices around, and a thin volume has none to rejoin it."""
    mask = np.asarray(mask, bool)
    axis = _thickest_axis(spacing)
    if mask.shape[axis] < MIN_SLICES_TO_OPEN:
        return mask
    plane = tuple(float(s) for a, s in enumerate(spacing) if a != axis)
    return _per_slice(mask, axis, lambda section: _opened(section, plane, radius_mm))


def _thickest_axis(spacing: tuple[float, ...]) -> int:
    return int(np.argmax(spacing))


def _per_slice(volume: np.ndarray, axis: int, operation: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``operation`` applied to each 2D section across ``axis``, stacked back in place."""
    return np.moveaxis(np.stack([operation(s) for s in np.moveaxis(volume, axis, 0)]), 0, axis)


def _opened(section: np.ndarray, spacing: tuple[float, ...], radius_mm: float) -> np.ndarray:
    """Erosion then dilation of one 2D section by a disk, through distance maps."""
    if not section.any():
        return section
    # padded with background, so the image border erodes like any other edge
    inside = ndimage.distance_transform_edt(np.pad(section, 1), sampling=spacing)[1:-1, 1:-1]
    core = inside > radius_mm
    if not core.any():
        return core
    return ndimage.distance_transform_edt(~core, sampling=spacing) <= radius_mm


def _samples(prior: np.ndarray, spacing: tuple[float, ...],
             settings: IntensityRefinement) -> tuple[np.ndarray, np.ndarray]:
    """The prior's confident interior and the ring around it, by distance in mm."""
    inside = ndimage.distance_transform_edt(prior, sampling=spacing)
    outside = ndimage.distance_transform_edt(~prior, sampling=spacing)
    near, far = settings.ring_mm
    return inside >= settings.interior_margin_mm, (outside >= near) & (outside <= far)


def _likelihood_ratio(image: np.ndarray, interior: np.ndarray, ring: np.ndarray,
                      bins: int) -> np.ndarray:
    """log p(intensity | liver) - log p(intensity | surroundings), from smoothed histograms."""
    low, high = np.percentile(image[interior | ring], [0.5, 99.5])
    edges = np.linspace(low, high if high > low else low + 1.0, bins + 1)
    index = np.clip(np.digitize(image, edges) - 1, 0, bins - 1)
    liver = _density(np.bincount(index[interior], minlength=bins))
    surroundings = _density(np.bincount(index[ring], minlength=bins))
    return (np.log(liver) - np.log(surroundings))[index].astype(np.float32)


def _density(counts: np.ndarray) -> np.ndarray:
    """A histogram as a smoothed density with no empty bins (Laplace-smoothed)."""
    density = (counts + 1.0) / (counts.sum() + len(counts))
    return ndimage.gaussian_filter1d(density, 1.5)
