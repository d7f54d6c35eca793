"""Registration-based label propagation: the weight-free few-shot pseudo-labeller.

Each support image is registered to the query (mutual information, so the query may be another
sequence on another grid), by one of two methods:

* ``syn``: ANTs' similarity map, slid head-foot, then SyN (:mod:`sslmedsam2.registration.syn`);
  what holds across real patients, whose livers differ in shape (+0.10 mean Dice over the
  affine on 14 CHAOS patients, benchmarks/RESULTS.md).
* ``affine``: SimpleITK, a moments-centred affine stage, then optionally a B-spline stage; fast,
  and the one that holds across sequences (SyN's deformation lost the liver entirely on a
  GED4-to-T1 test case, where the affine found it).
* ``auto`` (default): syn when query and supports are the same sequence, else affine.

The support masks are carried onto the query grid with linear interpolation, averaged into a
vote fraction (within one sequence, each support weighted voxel by voxel by how well its warped
image matches the query there: :mod:`.local_weighting`), thresholded at 0.5, and the largest
component is kept. The vote disagreement (binary entropy of the fraction) is the uncertainty map.
By default the vote is then a prior that the query's own intensities correct
(:mod:`.intensity_refinement`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

import numpy as np
import SimpleITK as sitk

from sslmedsam2.io import itk_reason
from sslmedsam2.postprocess import binary_entropy, largest_component
from sslmedsam2.registration.intensity_refinement import (
    IntensityRefinement,
    refine_by_intensity,
    refined_mask,
)
from sslmedsam2.registration.local_weighting import LocalWeighting, weighted_vote
from sslmedsam2.registration.syn import SynConfig, normalised, warp_support

log = logging.getLogger(__name__)


class RegistrationError(RuntimeError):
    """No support could be aligned with a query."""


METHODS = ("auto", "syn", "affine")


@dataclass(frozen=True)
class AtlasConfig:
    """Registration method and effort. Defaults suit abdominal MRI at a few mm resolution."""

    method: str = "auto"
    syn: SynConfig = SynConfig()
    affine_iterations: int = 200
    #: The B-spline stage costs 30-80 s per support on 2 cores and did not raise Dice on the
    #: example data (0.943 affine vs 0.936 with it, see benchmarks/RESULTS.md): opt-in.
    deformable: bool = False
    bspline_iterations: int = 50
    bspline_mesh_mm: float = 60.0
    sampling_fraction: float = 0.2
    histogram_bins: int = 32
    #: Registration runs on images resampled to at least this spacing (speed; masks stay exact).
    working_spacing_mm: float = 2.5
    threshold: float = 0.5
    #: weight each support's vote by how its warped image matches the query, voxel by voxel
    #: (within one sequence, with 2 or more supports); off: every support counts the same
    weighted: bool = True
    weighting: LocalWeighting = LocalWeighting()
    #: correct the fused vote with the query's own intensities (``refinement``); off: the vote alone
    intensity: bool = True
    refinement: IntensityRefinement = IntensityRefinement()
    #: sampling seed; must not be 0, which ITK reads as "seed from the clock" (runs would differ)
    seed: int = 1


@dataclass
class FusedLabel:
    mask: np.ndarray
    probability: np.ndarray
    uncertainty: np.ndarray


def _working_image(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """Float image, smoothed and resampled to a coarser grid for registration only."""
    image = sitk.Cast(image, sitk.sitkFloat32)
    spacing = [max(s, spacing_mm) for s in image.GetSpacing()]
    if np.allclose(spacing, image.GetSpacing()):
        return image
    size = [max(2, int(round(n * s / t))) for n, s, t in zip(image.GetSize(), image.GetSpacing(), spacing)]
    sigma = [max(0.5 * s, (t - s) / 2) for s, t in zip(image.GetSpacing(), spacing)]
    if min(image.GetSize()) >= 4:
        smoothed = sitk.SmoothingRecursiveGaussian(image, sigma)
    else:  # the recursive filter needs 4 voxels along every axis; thin volumes get a kernel
        smoothed = sitk.DiscreteGaussian(image, [g * g for g in sigma], 32, 0.01, True)
    return sitk.Resample(smoothed, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(),
                         spacing, image.GetDirection(), 0.0, sitk.sitkFloat32)


def _method(config: AtlasConfig, iterations: int) -> sitk.ImageRegistrationMethod:
    """Mattes mutual information (works across sequences) with a step-size-adapting optimiser."""
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=config.histogram_bins)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(config.sampling_fraction, seed=config.seed or 1)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-3 if iterations < 100 else 1e-4, numberOfIterations=iterations,
        relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return method


def _set_pyramid(method: sitk.ImageRegistrationMethod, images: tuple[sitk.Image, ...],
                 shrinks: list[int], sigmas: list[float]) -> None:
    """The multi-resolution levels, or for a volume thinner than the 4 voxels ITK's smoothing
    needs along every axis, one unsmoothed full-size level."""
    thin = min(min(image.GetSize()) for image in images) < 4
    levels = [(1, 0.0)] if thin else list(zip(shrinks, sigmas))
    method.SetShrinkFactorsPerLevel([f for f, _ in levels])
    method.SetSmoothingSigmasPerLevel([s for _, s in levels])


def register(fixed: sitk.Image, moving: sitk.Image, config: AtlasConfig) -> sitk.Transform:
    """Moving (support) -> fixed (query): a moments-centred affine stage, then optionally
    B-spline. When the intensity moments mislead the start so far that the images no longer
    overlap (ITK stops: "all samples map outside"), it starts again from the images' centres."""
    try:
        return _register(fixed, moving, config, sitk.CenteredTransformInitializerFilter.MOMENTS)
    except RuntimeError as exc:
        log.warning("registration from intensity moments failed (%s); retrying from the image "
                    "centres", itk_reason(str(exc)))
        return _register(fixed, moving, config, sitk.CenteredTransformInitializerFilter.GEOMETRY)


def _register(fixed: sitk.Image, moving: sitk.Image, config: AtlasConfig,
              start: int) -> sitk.Transform:
    initial = sitk.CenteredTransformInitializer(fixed, moving, sitk.AffineTransform(3), start)
    affine = _method(config, config.affine_iterations)
    affine.SetInitialTransform(initial, inPlace=False)
    _set_pyramid(affine, (fixed, moving), [4, 2, 1], [2.0, 1.0, 0.0])
    affine_transform = affine.Execute(fixed, moving)
    if not config.deformable:
        return affine_transform
    mesh = [max(1, int(round(n * s / config.bspline_mesh_mm)))
            for n, s in zip(fixed.GetSize(), fixed.GetSpacing())]
    bspline = sitk.BSplineTransformInitializer(fixed, mesh, order=3)
    deformable = _method(config, config.bspline_iterations)
    deformable.SetMovingInitialTransform(affine_transform)
    deformable.SetInitialTransform(bspline, inPlace=True)
    _set_pyramid(deformable, (fixed, moving), [2, 1], [1.0, 0.0])
    deformable.Execute(fixed, moving)
    return sitk.CompositeTransform([affine_transform, bspline])


@dataclass
class WarpedSupport:
    """One support on the query grid (z-y-x): its soft mask and its normalised image (None where
    nothing compares images: one support, across sequences, or weighting off)."""

    mask: np.ndarray
    image: np.ndarray | None


def _warped(query: sitk.Image, fixed: sitk.Image, support: tuple[sitk.Image, sitk.Image],
            config: AtlasConfig, with_image: bool) -> WarpedSupport:
    """One support carried onto the query grid by the configured method."""
    image, mask = support
    moving = _working_image(image, config.working_spacing_mm)
    if config.method == "syn":
        return WarpedSupport(*warp_support(query, fixed, moving, image, mask, config.syn, with_image))
    transform = register(fixed, moving, config)

    def carried(moved: sitk.Image) -> np.ndarray:
        return sitk.GetArrayFromImage(sitk.Resample(moved, query, transform, sitk.sitkLinear, 0.0,
                                                    sitk.sitkFloat32))

    return WarpedSupport(carried(sitk.Cast(mask > 0, sitk.sitkFloat32)),
                         carried(normalised(image)) if with_image else None)


#: SyN's coarsest level shrinks 8x: volumes thinner than this go to the affine under ``auto``
SYN_MIN_SLICES = 8


def for_sequences(config: AtlasConfig, same_sequence: bool, thin: bool = False) -> AtlasConfig:
    """``config`` with ``auto`` resolved: SyN within a sequence, affine across sequences and for
    volumes too thin for SyN's pyramid."""
    if config.method != "auto":
        return config
    return replace(config, method="syn" if same_sequence and not thin else "affine")


def propagate(query: sitk.Image, supports: list[tuple[sitk.Image, sitk.Image]],
              config: AtlasConfig = AtlasConfig(), same_sequence: bool = True) -> FusedLabel:
    """Register every (image, mask) support to ``query``; fuse the warped masks by their vote,
    locally weighted within a sequence. ``same_sequence``: whether query and supports share a
    sequence (decides ``auto`` and the weighting)."""
    if not supports:
        raise ValueError("atlas propagation needs at least one support")
    thin = min(min(i.GetSize()) for i in [query, *(image for image, _ in supports)]) < SYN_MIN_SLICES
    config = for_sequences(config, same_sequence, thin)
    weighted = config.weighted and same_sequence and len(supports) > 1
    warped = [w for w in warp_supports(query, supports, config, with_images=weighted) if w is not None]
    if not warped:
        raise RegistrationError(f"none of the {len(supports)} support(s) could be registered to "
                                "this volume (no overlap after alignment)")
    if weighted and len(warped) > 1:
        fused = fuse_weighted(warped, query, config.weighting, config.threshold)
    else:
        fused = fuse([w.mask for w in warped], config.threshold)
    return refine(fused, query, config.refinement) if config.intensity else fused


def warp_supports(query: sitk.Image, supports: list[tuple[sitk.Image, sitk.Image]],
                  config: AtlasConfig, with_images: bool = True) -> list[WarpedSupport | None]:
    """Each support on the query grid, with its image only ``with_images``; None where
    registration failed."""
    config = for_sequences(config, same_sequence=True)
    if config.method not in METHODS:
        raise ValueError(f"atlas method {config.method!r}: choose from {', '.join(METHODS)}")
    fixed = _working_image(query, config.working_spacing_mm)
    warped: list[WarpedSupport | None] = []
    for index, support in enumerate(supports, start=1):
        started = time.perf_counter()
        try:
            warped.append(_warped(query, fixed, support, config, with_images))
        except RuntimeError as exc:  # one support that cannot be aligned must not sink the query
            log.warning("support %d/%d could not be registered (%s); left out of the vote", index,
                        len(supports), itk_reason(str(exc)))
            warped.append(None)
            continue
        log.debug("support %d/%d registered in %.1f s", index, len(supports), time.perf_counter() - started)
    return warped


def fuse(warped: list[np.ndarray], threshold: float = 0.5) -> FusedLabel:
    """Majority vote of soft warped masks."""
    return _label(np.mean(warped, axis=0, dtype=np.float32), threshold)


def fuse_weighted(warped: list[WarpedSupport], query: sitk.Image, weighting: LocalWeighting,
                  threshold: float = 0.5) -> FusedLabel:
    """The vote with each support weighted, voxel by voxel, by how its warped image matches the
    query's (:mod:`.local_weighting`)."""
    probability = weighted_vote(sitk.GetArrayFromImage(normalised(query)), [w.mask for w in warped],
                                [w.image for w in warped], query.GetSpacing()[::-1], weighting)
    return _label(probability, threshold)


def _label(probability: np.ndarray, threshold: float) -> FusedLabel:
    """The largest component above ``threshold``; the vote's entropy as uncertainty."""
    mask = largest_component(probability >= threshold)
    return FusedLabel(mask=mask, probability=probability, uncertainty=binary_entropy(probability))


def refine(fused: FusedLabel, query: sitk.Image, settings: IntensityRefinement) -> FusedLabel:
    """The vote corrected by the query's intensities (:mod:`.intensity_refinement`); the vote
    itself where the correction would leave no liver at all (a thin or scattered warp that the
    prior's blur dissolves): it must never erase what the supports found."""
    spacing = query.GetSpacing()[::-1]
    posterior = refine_by_intensity(sitk.GetArrayViewFromImage(query), fused.probability, spacing, settings)
    mask = refined_mask(posterior, spacing, settings.opening_mm)
    if fused.mask.any() and not mask.any():
        log.warning("the intensity correction left no liver; keeping the supports' vote")
        return fused
    return FusedLabel(mask=mask, probability=posterior, uncertainty=binary_entropy(posterior))
