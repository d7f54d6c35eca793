"""The head-foot search of SyN's start: it must find where a mask covers one even organ, keep the
start on a tie, skip shifts that push the liver out of the scan, and on a real pair whose
similarity map lands the liver slices off, bring it back."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from test_registration import _patient

from sslmedsam2.registration.head_foot_search import HeadFootSearch, best_shift, organ_contrast

SLICE_MM = 10.0


def _abdomen() -> tuple[np.ndarray, np.ndarray]:
    """A noisy body (z-y-x) holding one even organ in slices 12-19, and that organ's mask."""
    rng = np.random.default_rng(0)
    body = rng.uniform(0.0, 1.0, (40, 24, 24)).astype(np.float32)
    organ = np.zeros(body.shape, bool)
    organ[12:20, 6:18, 6:18] = True
    body[organ] = 0.5 + rng.normal(0.0, 0.02, organ.sum())
    return body, organ


def _slid(organ: np.ndarray, offset_slices: int):
    """A warped support mask lying ``offset_slices`` off the organ; a shift of ``s`` mm moves it
    back by s / SLICE_MM slices."""
    def warped(shift: float) -> np.ndarray:
        return np.roll(organ, offset_slices - int(round(shift / SLICE_MM)), axis=0)
    return warped


def test_the_shift_that_puts_the_mask_back_on_the_organ_wins():
    body, organ = _abdomen()
    search = HeadFootSearch(range_mm=100.0, step_mm=SLICE_MM)
    assert best_shift(body, _slid(organ, 6), search) == 60.0
    assert best_shift(body, _slid(organ, -4), search) == -40.0
    assert best_shift(body, _slid(organ, 0), search) == 0.0


def test_an_even_organ_scores_above_a_mask_half_off_it():
    body, organ = _abdomen()
    on = organ_contrast(body, organ, 0.1, 2)
    assert on > organ_contrast(body, np.roll(organ, 4, axis=0), 0.1, 2)
    assert organ_contrast(body, np.zeros_like(organ), 0.1, 2) == float("-inf")


def test_shifts_are_tried_nearest_first_and_none_when_switched_off():
    assert HeadFootSearch(range_mm=20.0, step_mm=10.0).shifts() == [0.0, -10.0, 10.0, -20.0, 20.0]
    assert HeadFootSearch(range_mm=0.0).shifts() == [0.0]
    body, organ = _abdomen()
    assert best_shift(body, _slid(organ, 6), HeadFootSearch(range_mm=0.0)) == 0.0


def test_a_shift_that_pushes_the_liver_out_of_the_scan_is_not_tried():
    """Pushed past the last slice, a liver keeps only its few most even voxels: it must not win."""
    body, organ = _abdomen()
    body[36:] = 0.5  # an even band at the scan's end, where a pushed-out mask would score high

    def warped(shift: float) -> np.ndarray:
        mask = np.zeros_like(organ)
        top = 12 + int(round(shift / SLICE_MM))
        mask[max(0, top):min(40, top + 8), 6:18, 6:18] = True
        return mask

    assert best_shift(body, warped, HeadFootSearch(range_mm=300.0, step_mm=SLICE_MM)) == 0.0


def test_on_real_patients_the_search_brings_a_liver_landed_slices_off_back(tmp_path):
    """Patient 31 as the support of patient 15 (the dark liver): ANTs' similarity map puts 31's
    liver about 60 mm off 15's (0.28 Dice after it, when measured); the search moves it back."""
    import ants

    from sslmedsam2.registration.label_propagation import _working_image
    from sslmedsam2.registration.syn import _ants_seed, normalised, similarity_start

    (query, truth), (support, liver) = _patient("15"), _patient("31")
    fixed, moving = (ants.from_sitk(normalised(_working_image(i, 2.5))) for i in (query, support))
    soft = ants.from_sitk(sitk.Resample(sitk.Cast(liver > 0, sitk.sitkFloat32), ants.to_sitk(moving),
                                        sitk.Transform(), sitk.sitkLinear))
    reference = ants.from_sitk(sitk.Cast(query, sitk.sitkFloat32))
    true = sitk.GetArrayFromImage(truth) > 0

    def dice(search: HeadFootSearch, name: str) -> float:
        (tmp_path / name).mkdir()
        with _ants_seed(1):
            start = similarity_start(fixed, moving, soft, search, str(tmp_path / name))
        warped = ants.apply_transforms(reference, ants.from_sitk(sitk.Cast(liver > 0, sitk.sitkFloat32)),
                                       start, interpolator="linear")
        mask = sitk.GetArrayFromImage(ants.to_sitk(warped)) > 0.5
        return 2 * (mask & true).sum() / (mask.sum() + true.sum())

    assert dice(HeadFootSearch(), "searched") > dice(HeadFootSearch(range_mm=0.0), "plain") + 0.2
