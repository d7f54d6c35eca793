"""Orientation-proof inference: the same scan stored with flipped, permuted or oblique axes gets
the same mask, each on its own input grid (nnU-Net looks at spacing only, never at direction)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import run_process
from test_process import assert_on_grid

from sslmedsam2.orientation import CANONICAL, orientation_code, reorient


def stored_as(image: sitk.Image, kind: str) -> sitk.Image:
    """The same physical scan with its voxel array stored another way (no resampling)."""
    if kind == "as-is":
        return image
    if kind == "flip-xy":
        return sitk.Flip(image, [True, True, False])
    if kind == "flip-z":
        return sitk.Flip(image, [False, False, True])
    if kind == "sagittal-slices":
        return sitk.PermuteAxes(image, [2, 0, 1])
    if kind == "swap-xy-flip-x":
        return sitk.Flip(sitk.PermuteAxes(image, [1, 0, 2]), [True, False, False])
    if kind == "coronal-slices-flipped":
        return sitk.Flip(sitk.PermuteAxes(image, [0, 2, 1]), [True, True, True])
    if kind == "oblique-swapped":
        out = sitk.PermuteAxes(image, [1, 0, 2])
        angle = np.deg2rad(12.0)
        rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                             [0, 0, 1]])
        out.SetDirection((rotation @ np.reshape(out.GetDirection(), (3, 3))).ravel().tolist())
        return out
    raise ValueError(kind)


KINDS = ("as-is", "flip-xy", "flip-z", "sagittal-slices", "swap-xy-flip-x",
         "coronal-slices-flipped", "oblique-swapped")


def as_canonical_array(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(reorient(image).image)


@pytest.mark.parametrize("kind", KINDS)
def test_reorientation_is_lossless_and_inverts_exactly(real_mr, kind):
    stored = stored_as(real_mr, kind)
    moved = reorient(stored)
    assert orientation_code(moved.image) == CANONICAL
    np.testing.assert_array_equal(sitk.GetArrayFromImage(moved.image), sitk.GetArrayFromImage(real_mr))
    np.testing.assert_array_equal(moved.restore(sitk.GetArrayFromImage(moved.image)),
                                  sitk.GetArrayFromImage(stored))
    if kind != "as-is":  # a real change of array layout, or the test proves nothing
        assert sitk.GetArrayViewFromImage(stored).shape != sitk.GetArrayViewFromImage(real_mr).shape \
            or not np.array_equal(sitk.GetArrayViewFromImage(stored), sitk.GetArrayViewFromImage(real_mr))


def test_same_mask_in_every_orientation(tmp_path, trained_weights, real_mr):
    """process.py (nnU-Net) on one scan stored 7 ways: identical masks once mapped to one
    orientation, each written on its own input's grid."""
    root = tmp_path / "input"
    root.mkdir()
    stored = {kind: stored_as(real_mr, kind) for kind in KINDS}
    for kind, image in stored.items():
        sitk.WriteImage(image, str(root / f"{kind}.nii.gz"))
    out = tmp_path / "output"
    result = run_process("--input", root, "--output", out, "--weights", trained_weights)
    assert result.returncode == 0, result.stderr
    masks = {}
    for kind, image in stored.items():
        assert_on_grid(out / f"{kind}_pred.nii.gz", image)
        masks[kind] = as_canonical_array(sitk.ReadImage(str(out / f"{kind}_pred.nii.gz"))) > 0
    reference = masks["as-is"]
    assert 0 < reference.sum() < reference.size  # a real mask, not an empty or full one
    # reorientation is lossless, so nnU-Net sees the same voxels and spacing every time: the
    # masks must be identical, voxel for voxel (a Dice floor lets stray lost voxels through)
    for kind, mask in masks.items():
        np.testing.assert_array_equal(mask, reference, err_msg=f"{kind} against the scan as stored")
    assert "reoriented" in result.stderr  # the log says which inputs were reoriented
