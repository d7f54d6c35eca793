"""Intensity refinement of a warped atlas label: the query's own image pulls a misplaced liver
boundary back onto the real one."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import SEED_DIR
from scipy import ndimage
from test_atlas import _dice, _shifted

from sslmedsam2.registration.intensity_refinement import (
    MIN_SLICES_TO_OPEN,
    IntensityRefinement,
    opened_in_plane,
    refine_by_intensity,
    refined_mask,
)
from sslmedsam2.registration.label_propagation import fuse, refine

SPACING = (3.0, 3.0, 3.0)  # the seed MRI's, z-y-x


@pytest.fixture(scope="module")
def seed() -> tuple[np.ndarray, np.ndarray]:
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(SEED_DIR / "image.nii.gz"))).astype(np.float32)
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(SEED_DIR / "liver.nii.gz"))) > 0
    return image, truth


@pytest.mark.parametrize(("step", "axis"), [(3, 1), (-3, 2)])
def test_a_misplaced_prior_moves_onto_the_liver(seed, step, axis):
    """A soft prior 9 mm off the real liver, as registration across patients leaves it; on the
    seed MRI refinement measured +0.05 to +0.10 Dice for such shifts."""
    image, truth = seed
    prior = ndimage.gaussian_filter(_shifted(truth.astype(np.float32), step, axis), 1.0)
    before = _dice(prior >= 0.5, truth)
    after = _dice(refined_mask(refine_by_intensity(image, prior, SPACING), SPACING), truth)
    assert after >= before + 0.03, f"Dice {before:.3f} -> {after:.3f}"


def test_an_undersized_prior_grows_to_the_liver(seed):
    image, truth = seed
    prior = ndimage.binary_erosion(truth, iterations=2).astype(np.float32)
    after = _dice(refined_mask(refine_by_intensity(image, prior, SPACING), SPACING), truth)
    assert after >= _dice(prior, truth) + 0.05


@pytest.mark.parametrize("voxels", [0, 20])
def test_a_prior_too_small_to_learn_from_is_kept(seed, voxels):
    image, _ = seed
    prior = np.zeros(image.shape, np.float32)
    prior.flat[:voxels] = 1.0
    posterior = refine_by_intensity(image, prior, SPACING)
    assert posterior.dtype == np.float32 and np.array_equal(posterior, prior)


@pytest.mark.parametrize("axis", [0, 2])
def test_vessels_are_filled_across_the_thickest_axis(axis):
    """A vessel runs through the whole liver along the slice axis (open at both ends, so a 3D
    fill leaves it): filled on every slice, whichever array axis the slices are."""
    liver = np.zeros((12, 20, 20), bool)
    liver[2:10, 4:16, 4:16] = True
    liver[:, 9:11, 9:11] = False  # along axis 0
    liver = np.moveaxis(liver, 0, axis)
    spacing = tuple(5.0 if a == axis else 1.0 for a in range(3))
    mask = refined_mask(liver.astype(np.float32), spacing)
    assert ndimage.binary_fill_holes(liver).sum() == liver.sum()
    assert mask.sum() == liver.sum() + 8 * 4
    assert mask.dtype == np.uint8


@pytest.mark.parametrize("flag", [True, False])
def test_the_loop_config_switches_the_correction_and_the_weighting(tmp_path, flag):
    from sslmedsam2.ssl.config import build_config
    from sslmedsam2.ssl.loop import fewshot_engine

    config = build_config({"data": {"train": str(tmp_path), "layout": "care"},
                           "pseudo_labels": {"atlas_intensity": flag, "atlas_weighting": not flag}}, tmp_path)
    atlas = fewshot_engine(config, []).config
    assert atlas.intensity is flag and atlas.weighted is not flag


def test_a_correction_that_would_erase_the_liver_keeps_the_vote(seed):
    """A prior blurred far beyond its size, with intensities too weak to raise it, falls below 0.5
    everywhere: the vote stands."""
    image, truth = seed
    query = sitk.GetImageFromArray(image)
    query.SetSpacing(SPACING)
    vote = fuse([truth.astype(np.float32)])
    dissolving = IntensityRefinement(prior_smoothing_mm=300.0, interior_margin_mm=0.1, weight=1.0)
    assert not refined_mask(refine_by_intensity(image, vote.probability, SPACING, dissolving), SPACING).any()
    kept = refine(vote, query, dissolving)
    assert np.array_equal(kept.mask, vote.mask) and kept.mask.any()
    corrected = refine(vote, query, IntensityRefinement())
    assert corrected.mask.any() and not np.array_equal(corrected.mask, vote.mask)


@pytest.mark.parametrize("axis", [0, 2])
def test_a_thin_strand_off_the_liver_is_cut(axis):
    """A liver with a 3 mm strand reaching 30 mm out to a blob, as the posterior reaches onto
    bowel of the liver's grey level: the opening cuts the strand, the largest component drops the
    blob, and the liver's body is kept whichever array axis the slices are."""
    liver = np.zeros((10, 80, 80), bool)
    liver[1:9, 10:50, 10:50] = True  # 40 x 40 mm body
    liver[1:9, 28:31, 50:66] = True  # the strand
    liver[1:9, 22:36, 66:78] = True  # what it reaches: smaller than the body
    liver = np.moveaxis(liver, 0, axis)
    spacing = tuple(7.7 if a == axis else 1.0 for a in range(3))
    body = np.moveaxis(np.pad(np.ones((8, 40, 40), bool), ((1, 1), (10, 30), (10, 30))), 0, axis)
    beyond = np.zeros((10, 80, 80), bool)
    beyond[..., 52:] = True  # more than 2 mm off the body: the strand's root may stay, as in any opening
    mask = refined_mask(liver.astype(np.float32), spacing, opening_mm=4.0) > 0
    assert not (mask & np.moveaxis(beyond, 0, axis)).any()
    assert _dice(mask, body) > 0.98
    kept = refined_mask(liver.astype(np.float32), spacing) > 0
    assert np.array_equal(kept, liver)  # no opening asked: the strand and blob stay connected


def test_the_opening_is_round_on_anisotropic_pixels():
    """A 10 x 10 mm square on 0.5 x 2 mm pixels opened by a 3 mm disk keeps its centre and loses
    its corners alike along both axes."""
    square = np.zeros((MIN_SLICES_TO_OPEN, 40, 10), bool)
    square[:, 10:30, 2:7] = True
    opened = opened_in_plane(square, (5.0, 0.5, 2.0), 3.0)
    assert opened[:, 20, 4].all() and not opened[:, 10, 2].any() and not opened[:, 29, 6].any()
    assert opened.sum() < square.sum() and not (opened & ~square).any()


def test_an_opening_that_would_erase_everything_keeps_the_mask():
    """A label 2 mm wide everywhere is not a liver with strands off it: the opening erases it, so
    the mask keeps it whole."""
    thin = np.zeros((MIN_SLICES_TO_OPEN, 30, 30), bool)
    thin[1:-1, 5:25, 14:16] = True
    assert not opened_in_plane(thin, (5.0, 1.0, 1.0), 4.0).any()
    assert np.array_equal(refined_mask(thin.astype(np.float32), (5.0, 1.0, 1.0), opening_mm=4.0) > 0, thin)


def test_a_thin_volume_is_not_opened():
    """Parted in-plane, a lobe of a volume this thin has no neighbouring slices to rejoin it."""
    square = np.zeros((MIN_SLICES_TO_OPEN - 1, 40, 40), bool)
    square[:, 10:30, 10:30] = True
    assert np.array_equal(opened_in_plane(square, (5.0, 1.0, 1.0), 3.0), square)
    assert not np.array_equal(opened_in_plane(np.pad(square, ((0, 1), (0, 0), (0, 0))), (5.0, 1.0, 1.0), 3.0),
                              np.pad(square, ((0, 1), (0, 0), (0, 0))))


def test_an_opening_that_parts_the_liver_in_two_is_undone():
    """Two lobes joined by a 3 mm isthmus (coarse pixels make real isthmuses this thin): the
    opening would part them and keep the larger, under 60% of the liver, so the mask stays whole."""
    liver = np.zeros((MIN_SLICES_TO_OPEN + 2, 40, 70), bool)
    liver[1:-1, 5:35, 5:30] = True
    liver[1:-1, 5:35, 40:60] = True
    liver[1:-1, 18:21, 30:40] = True
    mask = refined_mask(liver.astype(np.float32), (7.7, 1.0, 1.0), opening_mm=4.0) > 0
    assert np.array_equal(mask, liver)
